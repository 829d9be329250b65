//! Issue 7 end to end: the admin listener (Prometheus metrics parsed by a
//! real exposition parser, health through the drain sequence), the access
//! log checked field by field, `keystone stats`, and the eBPF observers
//! loaded into the real kernel.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use keystone_tests::{run_keystone, Server};

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_get(addr, path).unwrap_or_else(|err| panic!("GET {path} from the admin listener: {err}"))
}

fn try_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn samples(text: &str) -> Vec<prometheus_parse::Sample> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .expect("valid Prometheus exposition")
        .samples
}

fn value(samples: &[prometheus_parse::Sample], metric: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .find(|s| s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{metric} is not a plain value"),
        })
        .unwrap_or_else(|| panic!("no sample {metric} {label:?} in\n{samples:?}"))
}

const APP: &str = r#"return { routes = {
  ["GET /users/{id}"] = function(ctx) ctx.body = ctx.params.id end,
  ["GET /boom"] = function(ctx) error("boom") end,
  ["GET /slow"] = function(ctx) local t = os.clock(); while os.clock() - t < 0.3 do end; ctx.body = "slow" end,
} }"#;

#[test]
fn metrics_are_valid_prometheus_and_move_with_traffic() {
    let (server, admin) = Server::start_with_admin(Some(APP), &["--workers", "2"]);
    for i in 0..10 {
        let response = keystone_tests::request(
            server.addr(),
            &keystone_tests::get_request(&format!("/users/{i}")),
        );
        assert_eq!(response.status, 200);
    }
    keystone_tests::request(server.addr(), &keystone_tests::get_request("/boom"));
    keystone_tests::request(server.addr(), &keystone_tests::get_request("/nope"));
    let (status, text) = get(admin, "/metrics");
    assert_eq!(status, 200);
    let samples = samples(&text);
    assert_eq!(
        value(&samples, "keystone_responses_total", Some(("class", "2xx"))),
        10.0
    );
    assert_eq!(
        value(&samples, "keystone_responses_total", Some(("class", "5xx"))),
        1.0
    );
    assert_eq!(
        value(&samples, "keystone_responses_total", Some(("class", "4xx"))),
        1.0
    );
    // prometheus-parse drops samples whose label values hold braces (valid
    // in the exposition format); check that route's line directly.
    assert!(
        text.contains("keystone_route_requests_total{route=\"GET /users/{id}\"} 10\n"),
        "{text}"
    );
    assert_eq!(
        value(
            &samples,
            "keystone_route_requests_total",
            Some(("route", "GET /boom"))
        ),
        1.0
    );
    assert_eq!(value(&samples, "keystone_lua_errors_total", None), 1.0);
    // 12 requests, plus the harness's readiness probe.
    assert!(value(&samples, "keystone_connections_accepted_total", None) >= 12.0);
    assert!(value(&samples, "keystone_received_bytes_total", None) > 0.0);
    assert!(value(&samples, "keystone_sent_bytes_total", None) > 0.0);
    let per_worker: f64 = ["0", "1"]
        .iter()
        .map(|w| {
            value(
                &samples,
                "keystone_worker_responses_total",
                Some(("worker", w)),
            )
        })
        .sum();
    assert_eq!(per_worker, 12.0, "per-worker counters sum to the total");
    assert_eq!(value(&samples, "keystone_draining", None), 0.0);
    assert_eq!(get(admin, "/health"), (200, "ok\n".to_owned()));
    assert_eq!(get(admin, "/nope").0, 404);

    let stats = run_keystone(&[
        "stats",
        "--admin",
        &admin.to_string(),
        "--json",
        "--count",
        "1",
    ]);
    assert_eq!(stats.code, Some(0), "{}", stats.all());
    let json: serde_json::Value =
        serde_json::from_str(stats.stdout.trim()).expect("stats --json is JSON");
    let requests: u64 = json["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 12);
    let table = run_keystone(&["stats", "--pid", &server.pid().to_string(), "--count", "1"]);
    assert_eq!(table.code, Some(0), "{}", table.all());
    assert!(
        table.stdout.contains("req/s") && table.stdout.contains("requests"),
        "{}",
        table.stdout
    );
    let bad = run_keystone(&["stats", "--pid", "1", "--count", "1"]);
    assert_eq!(bad.code, Some(2));
    assert!(bad.all().contains("--admin"), "{}", bad.all());
}

#[test]
fn drain_sequence_health_turns_503_in_flight_finishes_exit_0() {
    let (mut server, admin) = Server::start_with_admin(Some(APP), &["--drain-timeout", "5"]);
    server.wait_for_log("listening on", Duration::from_secs(10));
    let mut slow = server.raw();
    slow.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    std::thread::sleep(Duration::from_millis(50));
    server.terminate();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut saw_503 = false;
    let mut answers = Vec::new();
    while Instant::now() < deadline && !saw_503 {
        match try_get(admin, "/health") {
            Ok((status, _)) => {
                answers.push(status);
                saw_503 = status == 503;
            }
            Err(err) => {
                answers.push(0);
                if err.kind() == std::io::ErrorKind::ConnectionRefused {
                    break; // the process is gone
                }
            }
        }
    }
    println!("health answers while draining: {answers:?}");
    assert!(
        saw_503,
        "/health never answered 503 while draining; log:\n{}",
        server.log()
    );
    let response = slow.read_response();
    assert_eq!(
        response.body_str(),
        "slow",
        "the in-flight request finished"
    );
    let status = server
        .wait_exit(Duration::from_secs(6))
        .expect("exits after the drain");
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
}

#[test]
fn access_log_lines_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let server = Server::start(Some(APP), &["--access-log", path.to_str().unwrap()]);
    let mut raw = server.raw();
    raw.send(b"GET /users/7?x=1 HTTP/1.1\r\nHost: t\r\nReferer: http://ref.example/\r\nUser-Agent: tester \"quoted\"\r\n\r\n");
    assert_eq!(raw.read_response().body_str(), "7");
    raw.send(b"GET /nope HTTP/1.0\r\n\r\n");
    assert_eq!(raw.read_response().status, 404);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut text = String::new();
    while Instant::now() < deadline && text.lines().count() < 2 {
        std::thread::sleep(Duration::from_millis(100));
        text = std::fs::read_to_string(&path).unwrap_or_default();
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    // 127.0.0.1 - - [24/Nov/2026:20:57:21 +0000] "GET /users/7?x=1 HTTP/1.1" 200 1 "http://ref.example/" "tester \x22quoted\x22" 0.000
    let first = lines[0];
    let (addr, rest) = first.split_once(" - - [").unwrap();
    assert_eq!(addr, "127.0.0.1");
    let (time, rest) = rest.split_once("] ").unwrap();
    assert_eq!(time.len(), 26, "{time}");
    assert!(
        time.ends_with(" +0000") && time.as_bytes()[2] == b'/',
        "{time}"
    );
    let fields: Vec<&str> = rest.split('"').collect();
    assert_eq!(fields[1], "GET /users/7?x=1 HTTP/1.1");
    assert_eq!(fields[2].trim(), "200 1");
    assert_eq!(fields[3], "http://ref.example/");
    assert_eq!(fields[5], "tester \\x22quoted\\x22");
    let tail: Vec<&str> = fields[6].split_whitespace().collect();
    let seconds: f64 = tail[0].parse().expect("request time");
    assert!((0.0..5.0).contains(&seconds));
    // Not proxied: the three upstream fields are "-".
    assert_eq!(tail[1..], ["-", "-", "-"], "{first}");
    assert!(
        lines[1].contains("\"GET /nope HTTP/1.0\" 404 10 \"-\" \"-\""),
        "{}",
        lines[1]
    );
}

#[test]
fn access_log_that_cannot_be_opened_exits_2() {
    let output = run_keystone(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--access-log",
        "/nonexistent/dir/access.log",
    ]);
    assert_eq!(output.code, Some(2), "{}", output.all());
    assert!(
        output.all().contains("/nonexistent/dir/access.log"),
        "{}",
        output.all()
    );
}

/// The observers load into the real kernel (root, BPF allowed) and their
/// counters move when requests are served.
#[test]
fn ebpf_observers_count_syscalls_and_latency() {
    if std::env::var_os("KEYSTONE_SKIP_BPF_TESTS").is_some() {
        println!("KEYSTONE_SKIP_BPF_TESTS set: skipping the eBPF observer test");
        return;
    }
    let (server, admin) = Server::start_with_admin(Some(APP), &["--observe"]);
    let log = server.wait_for_log("listening on", Duration::from_secs(10));
    assert!(
        log.contains("eBPF observers attached"),
        "observers did not attach (root and BPF required):\n{log}"
    );
    let mut raw = server.raw();
    for i in 0..50 {
        raw.send(format!("GET /users/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        raw.read_response();
    }
    let samples = samples(&get(admin, "/metrics").1);
    assert!(value(&samples, "keystone_io_uring_enter_total", None) >= 50.0);
    let worker_syscalls = samples
        .iter()
        .find(|s| {
            s.metric == "keystone_syscalls_total" && s.labels.get("thread") == Some("keystone-w0")
        })
        .expect("worker thread syscalls");
    assert!(matches!(worker_syscalls.value, prometheus_parse::Value::Counter(v) if v >= 50.0));
    let count = samples
        .iter()
        .find(|s| s.metric == "keystone_kernel_latency_seconds")
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            _ => 0.0,
        })
        .expect("latency histogram");
    assert!(count >= 50.0, "latency samples: {count}");

    // The turns were answered by one worker: its thread entry has
    // percentiles, and `keystone stats` shows them in its row.
    let (status, body) = get(admin, "/stats.json");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("/stats.json is JSON");
    let threads = json["observe"]["threads"].as_array().expect("threads");
    let answered = threads
        .iter()
        .find(|t| {
            t["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("keystone-w"))
                && t["p50_us"].as_f64().is_some_and(|v| v > 0.0)
        })
        .unwrap_or_else(|| panic!("no worker thread with a p50: {threads:?}"));
    assert!(answered["p99_us"].as_f64().unwrap() >= answered["p50_us"].as_f64().unwrap());
    assert!(
        threads
            .iter()
            .all(|t| t["p50_us"].is_number() && t["p99_us"].is_number()),
        "{threads:?}"
    );
    let table = run_keystone(&["stats", "--admin", &admin.to_string(), "--count", "1"]);
    assert_eq!(table.code, Some(0), "{}", table.all());
    assert!(
        table.stdout.contains("p50 µs") && table.stdout.contains('≤'),
        "{}",
        table.stdout
    );
}
