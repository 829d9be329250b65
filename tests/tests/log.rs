//! The engine's log end to end: a destination that does not drain never
//! stops the server; repeated failures are coalesced (one traceback per
//! site and window, then one summary, counts exact); distinct errors all
//! appear; dropped lines are counted and reported; `--log` and
//! `--access-log` are reopened on SIGHUP; `--log-format json` and
//! `--log-level`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use keystone_tests::{free_port, keystone_bin, metric, RawClient, Server};

const APP: &str = r#"return { routes = {
  ["GET /"] = function(ctx) ctx.body = "ok" end,
  ["GET /boom"] = function(ctx) error("soak error") end,
  -- A distinct first line per request, no location: every failure its own
  -- site, each ~2 KB with its traceback.
  ["GET /distinct/{i}"] = function(ctx)
    error(string.rep("distinct ", 200) .. ctx.params.i, 0)
  end,
  ["GET /line/{i}"] = function(ctx)
    error("numbered " .. ctx.params.i, 0)
  end,
} }"#;

/// One keep-alive request; the status code.
fn status(client: &mut RawClient, path: &str) -> u16 {
    client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    client.read_response().status
}

/// Sums `— repeated N times` over the log's summary lines.
fn repeated(log: &str, needle: &str) -> u64 {
    log.lines()
        .filter(|line| line.contains(needle))
        .filter_map(|line| {
            let count = line.split("— repeated ").nth(1)?.split(' ').next()?;
            count.replace(',', "").parse::<u64>().ok()
        })
        .sum()
}

/// Starts `keystone serve APP --listen … ARGS` with standard output and
/// error going into pipes nobody reads.
fn start_undrained(app: &std::path::Path, args: &[&str]) -> (std::process::Child, SocketAddr) {
    start_into(app, args, Stdio::piped(), Stdio::piped())
}

/// Starts `keystone serve APP --listen … ARGS` (one worker unless ARGS say
/// otherwise) with its standard output and error into `stdout` and
/// `stderr`; waits until it accepts.
fn start_into(
    app: &std::path::Path,
    args: &[&str],
    stdout: Stdio,
    stderr: Stdio,
) -> (std::process::Child, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let workers = if args.contains(&"--workers") {
        &[][..]
    } else {
        &["--workers", "1"][..]
    };
    let child = Command::new(keystone_bin())
        .arg("serve")
        .arg(app)
        .args(["--listen", &addr.to_string()])
        .args(workers)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("keystone starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "keystone did not start");
        thread::sleep(Duration::from_millis(20));
    }
    (child, addr)
}

#[test]
fn a_log_nobody_reads_never_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.lua");
    std::fs::write(&app, APP).unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (mut child, addr) = start_undrained(&app, &["--admin", &admin.to_string()]);
    // Thousands of distinct failures, each a ~2 KB line with its traceback:
    // megabytes for a 64 KiB pipe nobody reads (and no coalescing to help).
    let mut client = RawClient::connect(addr);
    for i in 0..3000 {
        assert_eq!(status(&mut client, &format!("/distinct/{i}")), 500);
    }
    // Healthy requests are still answered at once, on the same connection
    // and on new ones.
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(status(&mut client, "/"), 200);
        assert_eq!(status(&mut RawClient::connect(addr), "/"), 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a healthy request waited"
        );
    }
    let dropped = metric(admin, "keystone_log_dropped_total");
    assert!(dropped > 0, "lines were dropped, and counted: {dropped}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn repeated_failures_give_one_traceback_per_window_and_exact_counts() {
    let server = Server::start(Some(APP), &[]);
    let mut client = server.raw();
    const FAILURES: u64 = 2000;
    for _ in 0..FAILURES {
        assert_eq!(status(&mut client, "/boom"), 500);
    }
    // The last window's summary comes with the next tick after it ends.
    server.wait_for_log("repeated", Duration::from_secs(4));
    thread::sleep(Duration::from_millis(2200));
    let log = server.log();
    let reported = log
        .lines()
        .filter(|line| line.contains("GET /boom: handler failed:") && !line.contains("repeated"))
        .count() as u64;
    let tracebacks = log.matches("stack traceback:").count() as u64;
    assert!(reported >= 1);
    assert_eq!(tracebacks, reported, "one traceback per reported failure");
    assert!(
        reported <= 10,
        "{reported} failures reported whole in a few seconds"
    );
    let counted = repeated(&log, "GET /boom: handler failed:");
    assert_eq!(
        reported + counted,
        FAILURES,
        "every failure reported or counted:\n{log}"
    );
    let summary = log
        .lines()
        .find(|line| line.contains("repeated"))
        .expect("a summary");
    assert!(
        summary.contains("GET /boom: handler failed: ")
            && summary.contains("app.lua:3: soak error — repeated "),
        "{summary}"
    );
    assert!(summary.ends_with("times in the last 1 s"), "{summary}");
}

#[test]
fn fifty_distinct_errors_all_appear() {
    let server = Server::start(Some(APP), &[]);
    let mut client = server.raw();
    for round in 0..3 {
        for i in 0..50 {
            assert_eq!(
                status(&mut client, &format!("/line/{i}")),
                500,
                "round {round}"
            );
        }
    }
    thread::sleep(Duration::from_millis(2500));
    let log = server.log();
    for i in 0..50 {
        let needle = format!("handler failed: numbered {i}\n");
        assert!(log.contains(&needle), "numbered {i} is missing:\n{log}");
    }
    for i in 0..50 {
        let summary = format!("handler failed: numbered {i} — repeated 2 times");
        assert!(log.contains(&summary), "no summary for {i}:\n{log}");
    }
}

#[test]
fn dropped_lines_are_counted_then_reported_once_the_log_drains() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.lua");
    std::fs::write(&app, APP).unwrap();
    let fifo = dir.path().join("log.fifo");
    let status_code = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status_code.success());
    // Open the FIFO's reading end first (else the server's open blocks),
    // and read nothing for now.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(&fifo)
        .expect("fifo");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (mut child, addr) = start_undrained(
        &app,
        &[
            "--log",
            fifo.to_str().unwrap(),
            "--admin",
            &admin.to_string(),
        ],
    );
    let mut client = RawClient::connect(addr);
    for i in 0..2000 {
        assert_eq!(status(&mut client, &format!("/distinct/{i}")), 500);
    }
    let dropped = metric(admin, "keystone_log_dropped_total");
    assert!(dropped > 0);
    // Now drain it: the lines that fit come out, then one line saying how
    // many were lost.
    let reader = set_blocking(reader);
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    // Another failure once the pipe flows makes a batch written after the
    // drops, which the report follows.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut report = None;
    while report.is_none() && Instant::now() < deadline {
        assert_eq!(status(&mut client, "/distinct/again"), 500);
        while let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(50)) {
            if line.contains("log lines were dropped") {
                report = Some(line);
                break;
            }
        }
    }
    let report = report.expect("a line says how many lines were lost");
    let lost: u64 = report
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .expect("a count");
    assert!(
        lost > 0 && lost <= metric(admin, "keystone_log_dropped_total"),
        "{report}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

trait NonBlocking {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlocking for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

/// The FIFO's reading end, blocking again (reopened through /proc).
fn set_blocking(file: std::fs::File) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let blocking = std::fs::File::open(path).expect("reopen the fifo");
    drop(file);
    blocking
}

#[test]
fn the_log_and_the_access_log_are_reopened_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("keystone.log");
    let access = dir.path().join("access.log");
    let server = Server::start(
        Some(APP),
        &[
            "--log",
            log.to_str().unwrap(),
            "--access-log",
            access.to_str().unwrap(),
        ],
    );
    let mut client = server.raw();
    assert_eq!(status(&mut client, "/line/before"), 500);
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(read(&log).contains("numbered before") && read(&access).contains("/line/before")) {
        assert!(Instant::now() < deadline, "lines before the rotation");
        thread::sleep(Duration::from_millis(20));
    }
    // logrotate: rename, then SIGHUP.
    std::fs::rename(&log, dir.path().join("keystone.log.1")).unwrap();
    std::fs::rename(&access, dir.path().join("access.log.1")).unwrap();
    server.hangup();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.exists() {
        assert!(Instant::now() < deadline, "the log was not reopened");
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&mut client, "/line/after"), 500);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(read(&log).contains("numbered after") && read(&access).contains("/line/after")) {
        assert!(
            Instant::now() < deadline,
            "lines after the rotation: {:?} / {:?}",
            read(&log),
            read(&access)
        );
        thread::sleep(Duration::from_millis(20));
    }
    let rotated = read(&dir.path().join("keystone.log.1"));
    assert!(rotated.contains("numbered before") && !rotated.contains("numbered after"));
    let rotated = read(&dir.path().join("access.log.1"));
    assert!(rotated.contains("/line/before") && !rotated.contains("/line/after"));
}

#[test]
fn json_lines_and_the_level_filter() {
    let server = Server::start(Some(APP), &["--log-format", "json", "--log-level", "error"]);
    let mut client = server.raw();
    for _ in 0..5 {
        assert_eq!(status(&mut client, "/boom"), 500);
    }
    let log = server.wait_for_log("repeated", Duration::from_secs(4));
    let objects: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
    assert!(
        objects.iter().all(|o| o["level"] == "error"),
        "--log-level error keeps errors only:\n{log}"
    );
    let first = &objects[0];
    assert_eq!(first["route"], "GET /boom");
    assert_eq!(first["worker"], 0);
    assert_eq!(first["count"], 1);
    assert!(first["message"]
        .as_str()
        .unwrap()
        .starts_with("handler failed: "));
    assert!(first["message"]
        .as_str()
        .unwrap()
        .contains("stack traceback:"));
    let summary = objects
        .iter()
        .find(|o| o["message"].as_str().unwrap().contains("repeated"))
        .expect("a summary");
    assert_eq!(summary["count"], 4);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn bad_log_flags_exit_2_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--log-level", "debug"],
            "'debug' is not a log level (error, warn or info)",
        ),
        (
            &["--log-format", "xml"],
            "'xml' is not a log format (text or json)",
        ),
        (
            &["--log", "/nonexistent-dir/keystone.log"],
            "cannot open --log /nonexistent-dir/keystone.log",
        ),
    ];
    for (args, message) in cases {
        let output = Command::new(keystone_bin())
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(*args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// Standard error redirected to a file opened without `O_APPEND` (a
/// shell's `2> file`), two workers and the main thread logging at once:
/// every line lands whole, none overwrites another (io_uring writes "at
/// the current position" do not serialize that position; the server puts
/// such a file in append mode).
#[test]
fn several_threads_logging_into_a_plain_file_lose_no_line() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.lua");
    std::fs::write(&app, APP).unwrap();
    let path = dir.path().join("stderr.log");
    let file = std::fs::File::create(&path).unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (mut child, addr) = start_into(
        &app,
        &["--workers", "2", "--admin", &admin.to_string()],
        file.try_clone().unwrap().into(),
        file.into(),
    );
    const CLIENTS: u32 = 4;
    const EACH: u32 = 150;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            thread::spawn(move || {
                for i in 0..EACH {
                    // A new connection each time, so both workers serve.
                    let mut raw = RawClient::connect(addr);
                    let n = client * 1000 + i;
                    assert_eq!(status(&mut raw, &format!("/line/{n}")), 500);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    thread::sleep(Duration::from_millis(500));
    let dropped = metric(admin, "keystone_log_dropped_total");
    let terminated = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(&path).unwrap();
    let mut missing = 0;
    for client in 0..CLIENTS {
        for i in 0..EACH {
            let n = client * 1000 + i;
            if !log.contains(&format!("handler failed: numbered {n}\n")) {
                missing += 1;
            }
        }
    }
    assert_eq!(missing, dropped, "lines lost without being counted:\n{log}");
    assert_eq!(dropped, 0, "a file takes every line");
    for line in ["listening on", "drained; exiting"] {
        assert_eq!(log.matches(line).count(), 1, "{line}:\n{log}");
    }
    for line in log.lines() {
        assert!(
            line.starts_with("20") || line.starts_with('\t') || line == "stack traceback:",
            "a line cut or overwritten: {line:?}"
        );
    }
}
