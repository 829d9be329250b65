//! Issue 14, Keystone as a reverse proxy, end to end: a real backend the
//! test starts (a small Rust HTTP/1.1 server on a thread, with faults on
//! demand, and Python's `http.server`), real client connections, and the
//! engine in between: forwarding, re-framing, keep-alive reuse counted by
//! the backend, failover, and each failure's status (refused, silent, slow
//! and stalled heads, malformed heads, truncated and reset bodies, a slow
//! reader).

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use keystone_tests::{assert_no_panic, curl, free_port, RawClient, Server};

/// What the backend saw: connections accepted and the requests' heads.
#[derive(Default)]
struct Seen {
    connections: AtomicU32,
    heads: Mutex<Vec<String>>,
    /// `/health` answers 503 while set.
    sick: std::sync::atomic::AtomicBool,
    /// Health checks seen.
    checks: AtomicU32,
    /// `/waitclose`: how long after the request the proxy hung up.
    hung_up_after: Mutex<Option<Duration>>,
}

/// A keep-alive HTTP/1.1 backend; the path picks the behaviour.
fn backend() -> (SocketAddr, Arc<Seen>) {
    backend_named("rust")
}

/// A backend whose answers carry `X-Backend: name`.
fn backend_named(name: &'static str) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let shared = Arc::clone(&seen);
    let addr = keystone_tests::spawn_backend(move |stream| {
        shared.connections.fetch_add(1, Ordering::SeqCst);
        serve(stream, &shared, name);
    });
    (addr, seen)
}

fn serve(stream: TcpStream, seen: &Seen, name: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    let mut served = 0;
    loop {
        let Some(head) = keystone_tests::read_head(&mut reader) else {
            return;
        };
        seen.heads.lock().unwrap().push(head.clone());
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        // A HEAD gets the GET's head without its body (RFC 9110 §9.3.2).
        let head_request = head.starts_with("HEAD ");
        let reply = |out: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nX-Backend: {name}\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n{extra}\r\n",
                body.len()
            );
            let body = if head_request { &[][..] } else { body };
            out.write_all(head.as_bytes())
                .and_then(|()| out.write_all(body))
        };
        served += 1;
        let written = match path.as_str() {
            // A kept-alive connection the backend drops instead of answering
            // (as when its keep-alive timeout races a reuse).
            "/stale" if served > 1 => return,
            "/health" => {
                seen.checks.fetch_add(1, Ordering::SeqCst);
                if seen.sick.load(Ordering::SeqCst) {
                    reply(&mut out, "503 Service Unavailable", "", b"sick")
                } else {
                    reply(&mut out, "200 OK", "", b"fine")
                }
            }
            "/chunked" => out.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
            ),
            "/close" => {
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end");
                return;
            }
            "/slow" => {
                thread::sleep(Duration::from_secs(4));
                reply(&mut out, "200 OK", "", b"late")
            }
            "/pause" => {
                thread::sleep(Duration::from_millis(1500));
                reply(&mut out, "200 OK", "", b"after a pause")
            }
            "/malformed" => {
                let _ = out.write_all(b"SSH-2.0-not-http\r\n\r\n");
                return;
            }
            "/truncated" => {
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b");
                return;
            }
            "/big" => {
                let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
                reply(&mut out, "200 OK", "Content-Type: application/octet-stream\r\n", &big)
            }
            "/head" => reply(&mut out, "200 OK", "", b""),
            // A head that trickles in, each piece well within read_timeout.
            "/slowhead" => {
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Backend: rust\r\n\r\nslow";
                for piece in head.chunks(12) {
                    thread::sleep(Duration::from_millis(250));
                    if out.write_all(piece).is_err() {
                        return;
                    }
                }
                Ok(())
            }
            // No answer: waits (up to 5 s) for the proxy to hang up.
            "/waitclose" => {
                let asked = Instant::now();
                let stream = reader.get_mut();
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut byte = [0u8; 1];
                if matches!(stream.read(&mut byte), Ok(0)) {
                    *seen.hung_up_after.lock().unwrap() = Some(asked.elapsed());
                }
                return;
            }
            // The head and half the body at once, the rest 700 ms later
            // (within the pool's 1-s read_timeout).
            "/slowbody" => {
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nslow");
                thread::sleep(Duration::from_millis(700));
                out.write_all(b"ly, ")
            }
            // Half a head, then silence past read_timeout.
            "/stallhead" => {
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Le");
                thread::sleep(Duration::from_secs(3));
                return;
            }
            // Part of the body, then a reset (SO_LINGER 0 and close).
            "/reset" => {
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
                let _ = out.write_all(&[b'r'; 1000]);
                thread::sleep(Duration::from_millis(100));
                reset(&out);
                return;
            }
            "/nocontent" => out.write_all(b"HTTP/1.1 204 No Content\r\nX-Backend: rust\r\n\r\n"),
            // Interim answers before the final one, each in a write (a
            // segment) of its own: an unasked 100 Continue and 103 Early
            // Hints, as application servers send them.
            "/interim" => {
                let interims: [&[u8]; 2] = [
                    b"HTTP/1.1 100 Continue\r\n\r\n",
                    b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n",
                ];
                for interim in interims {
                    if out.write_all(interim).is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                let mut text = format!("{} {}|", head.split(' ').next().unwrap(), path).into_bytes();
                text.extend_from_slice(&body);
                reply(&mut out, "200 OK", "Content-Type: text/plain\r\n", &text)
            }
            _ => {
                let mut text = format!("{} {}", head.split(' ').next().unwrap(), path).into_bytes();
                text.extend_from_slice(b"|");
                text.extend_from_slice(&body);
                reply(&mut out, "200 OK", "Content-Type: text/plain\r\n", &text)
            }
        };
        if written.is_err() {
            return;
        }
    }
}

/// Makes `stream`'s close a reset: SO_LINGER with a zero timeout (the
/// socket closes, with a reset, when the caller drops its handles).
fn reset(stream: &TcpStream) {
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
}

fn app(backend: SocketAddr, dead: u16) -> String {
    format!(
        r#"return {{
  upstreams = {{
    api = {{ peers = {{ "{backend}" }}, read_timeout = 1, keepalive = 8, max_fails = 0 }},
    pair = {{ peers = {{ "127.0.0.1:{dead}", "{backend}" }}, retries = 1, max_fails = 1 }},
    dead = {{ peers = {{ "127.0.0.1:{dead}" }}, retries = 0 }},
  }},
  routes = {{
    ["* /api/{{*rest}}"] = function(ctx)
      ctx.upstream = "api"
      ctx.upstream_path = "/" .. ctx.params.rest .. (ctx.query ~= "" and ("?" .. ctx.query) or "")
      ctx.upstream_headers["X-User"] = "alice"
      ctx.upstream_headers["X-Secret-Token"] = nil
    end,
    ["GET /pair"] = function(ctx) ctx.upstream = "pair" end,
    ["GET /hooked/{{*rest}}"] = function(ctx)
      ctx.upstream = "api"
      ctx.upstream_path = "/" .. ctx.params.rest
      ctx.on_response = function(ctx)
        ctx.headers["X-Upstream-Status"] = ctx.upstream_response.status
        ctx.headers["X-Seen-Backend"] = ctx.upstream_response.headers["x-backend"]
        ctx.headers["X-Backend"] = nil
        ctx.headers["X-Peer"] = ctx.upstream_addr
        ctx.headers["Access-Control-Allow-Origin"] = "*"
        ctx.headers["X-Path"] = ctx.path
      end
    end,
    ["GET /replaced"] = function(ctx)
      ctx.upstream = "api"
      ctx.upstream_path = "/x"
      ctx.on_response = function(ctx)
        ctx.status = 418
        ctx.headers["Content-Type"] = "text/plain"
        ctx.body = "replaced " .. ctx.upstream_response.status
      end
    end,
    ["GET /buffered/{{*rest}}"] = function(ctx)
      ctx.upstream = "api"
      ctx.upstream_path = "/" .. ctx.params.rest
      ctx.upstream_buffer = tonumber(ctx.args.limit) or 65536
      ctx.on_response = function(ctx)
        local body = ctx.upstream_response.body
        ctx.headers["X-Body-Length"] = #body
        if ctx.args.transform then
          ctx.headers["Content-Type"] = "application/json"
          ctx.body = '{{"upstream":"' .. body:upper() .. '"}}'
        end
      end
    end,
    ["GET /hook-fails"] = function(ctx)
      ctx.upstream = "api"
      ctx.on_response = function(ctx) error("hook boom") end
    end,
    ["GET /hook-file"] = function(ctx)
      ctx.upstream = "api"
      ctx.on_response = function(ctx) ctx.body = {{ file = "index.html" }} end
    end,
    ["GET /hook-stream"] = function(ctx)
      ctx.upstream = "api"
      ctx.on_response = function(ctx) ctx.body = function() return nil end end
    end,
    ["GET /no-upstream-response"] = function(ctx)
      ctx.body = tostring(ctx.upstream_response) .. "," .. tostring(ctx.upstream_addr)
    end,
    ["GET /dead"] = function(ctx) ctx.upstream = "dead" end,
    ["GET /ping"] = function(ctx) ctx.body = "pong" end,
  }},
}}"#
    )
}

fn start() -> (Server, Arc<Seen>) {
    start_with(&[])
}

fn start_with(flags: &[&str]) -> (Server, Arc<Seen>) {
    let (addr, seen) = backend();
    let dead = free_port();
    let server = Server::start(Some(&app(addr, dead)), flags);
    (server, seen)
}

fn get(client: &mut RawClient, path: &str, extra: &str) -> keystone_tests::Response {
    client.send(format!("GET {path} HTTP/1.1\r\nHost: front.example\r\n{extra}\r\n").as_bytes());
    client.read_response()
}

#[test]
fn requests_are_forwarded_rebuilt_and_answered() {
    let (server, seen) = start();
    let mut client = server.raw();
    let response = get(
        &mut client,
        "/api/users/7?x=1",
        "Connection: keep-alive, X-Drop\r\nX-Drop: hop\r\nKeep-Alive: timeout=5\r\nX-Secret-Token: t\r\nX-Forwarded-For: 203.0.113.9\r\n",
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body_str(), "GET /users/7?x=1|");
    assert_eq!(response.header("x-backend"), Some("rust"));
    // The upstream's hop-by-hop fields never reach the client.
    assert_eq!(response.header("x-hop"), None);
    assert_eq!(response.header("server"), Some("keystone"));
    let head = seen.heads.lock().unwrap().last().cloned().unwrap();
    assert!(head.starts_with("GET /users/7?x=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nHost: front.example\r\n"), "{head}");
    assert!(head.contains("\r\nX-User: alice\r\n"), "{head}");
    assert!(
        head.contains("\r\nX-Forwarded-For: 203.0.113.9, 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nX-Forwarded-Proto: http\r\n"), "{head}");
    for dropped in ["X-Drop", "Keep-Alive", "X-Secret-Token", "Connection"] {
        assert!(
            !head.contains(&format!("{dropped}:")),
            "{dropped} reached the backend: {head}"
        );
    }
    // A body goes through, framed by its length.
    client.send(b"POST /api/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello there");
    let response = client.read_response();
    assert_eq!(response.body_str(), "POST /echo|hello there");
    // A chunked client body is decoded, then forwarded with its length.
    client.send(b"POST /api/echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\n!!!\r\n0\r\n\r\n");
    let response = client.read_response();
    assert_eq!(response.body_str(), "POST /echo|hello!!!");
    let head = seen.heads.lock().unwrap().last().cloned().unwrap();
    assert!(
        head.contains("Content-Length: 8\r\n") && !head.contains("Transfer-Encoding"),
        "{head}"
    );
    // The client connection stays usable for local routes too.
    assert_eq!(get(&mut client, "/ping", "").body_str(), "pong");
    // An HTTP/1.0 request may come without Host; it goes upstream as
    // HTTP/1.1, which needs one: the pool's name, as nginx's `$proxy_host`.
    let mut old = server.raw();
    old.send(b"GET /api/users/8 HTTP/1.0\r\n\r\n");
    let bytes = old.expect_closed("an HTTP/1.0 request without Host");
    assert!(bytes.starts_with(b"HTTP/1.1 200 OK\r\n"), "{bytes:?}");
    let head = seen.heads.lock().unwrap().last().cloned().unwrap();
    assert!(
        head.starts_with("GET /users/8 HTTP/1.1\r\nHost: api\r\n"),
        "{head}"
    );
    // An absolute-form target's authority is the host, whatever Host says
    // (RFC 9112 §3.2.2): the backend never sees the client's other name.
    for host in ["Host: evil.example\r\n", "Host:\r\n"] {
        let mut absolute = server.raw();
        absolute.send(
            format!(
                "GET http://good.example/api/users/9 HTTP/1.1\r\n{host}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        let bytes = absolute.expect_closed("an absolute-form request");
        assert!(
            bytes.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "{host:?}: {bytes:?}"
        );
        let head = seen.heads.lock().unwrap().last().cloned().unwrap();
        assert!(head.starts_with("GET /users/9 HTTP/1.1\r\n"), "{head}");
        assert!(
            head.contains("\r\nHost: good.example\r\n"),
            "{host:?}: {head}"
        );
        assert!(!head.contains("evil"), "{head}");
    }
    assert_no_panic(&server.log(), "after proxying");
}

#[test]
fn interim_answers_from_the_backend_are_skipped_and_expect_is_not_forwarded() {
    let (server, seen) = start();
    let mut client = server.raw();
    client.send(
        b"PUT /api/interim HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    // The engine answers the client's Expect itself ...
    let interim = client.read_response();
    assert_eq!(interim.status, 100, "{interim:?}");
    client.send(b"hello");
    // ... and relays only the backend's final answer, whatever segments
    // its interim ones came in.
    let response = client.read_response();
    assert_eq!(response.status, 200, "{response:?}\n{}", server.log());
    assert_eq!(response.body_str(), "PUT /interim|hello");
    assert_eq!(
        response.header("link"),
        None,
        "an interim answer's fields leaked"
    );
    // The connections on both sides are still in step.
    let again = get(&mut client, "/api/interim", "");
    assert_eq!(again.status, 200);
    assert_eq!(again.body_str(), "GET /interim|");
    let heads = seen.heads.lock().unwrap();
    assert_eq!(heads.len(), 2);
    assert!(
        heads
            .iter()
            .all(|head| !head.to_ascii_lowercase().contains("\nexpect:")),
        "the client's Expect reached the backend: {heads:?}"
    );
}

#[test]
fn upstream_connections_are_reused() {
    let (server, seen) = start();
    for _ in 0..3 {
        let mut client = server.raw();
        for i in 0..20 {
            let response = get(&mut client, &format!("/api/n/{i}"), "");
            assert_eq!(response.body_str(), format!("GET /n/{i}|"));
        }
    }
    let connections = seen.connections.load(Ordering::SeqCst);
    assert_eq!(
        connections, 1,
        "60 sequential requests over one kept-alive upstream connection"
    );
}

#[test]
fn bodies_are_re_framed_for_the_client() {
    let (server, seen) = start();
    let mut client = server.raw();
    // Chunked upstream → chunked for HTTP/1.1.
    let response = get(&mut client, "/api/chunked", "");
    assert_eq!(response.body_str(), "hello, world");
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    // Close-delimited upstream → chunked too, and the client connection
    // stays open.
    let response = get(&mut client, "/api/close", "");
    assert_eq!(response.body_str(), "until the end");
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(get(&mut client, "/ping?after-close", "").body_str(), "pong");
    // HTTP/1.0 client: close-delimited.
    let mut old = server.raw();
    old.send(b"GET /api/chunked HTTP/1.0\r\n\r\n");
    let bytes = old.expect_closed("an HTTP/1.0 client of a chunked upstream");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello, world"), "{text}");
    // 204 and HEAD carry no body.
    let response = get(&mut client, "/api/nocontent", "");
    assert_eq!(response.status, 204);
    assert_eq!(response.header("x-backend"), Some("rust"));
    client.send(b"HEAD /api/big HTTP/1.1\r\nHost: h\r\n\r\n");
    let response = client.read_response_to("HEAD");
    assert_eq!(response.header("content-length"), Some("2000000"));
    assert!(response.body.is_empty());
    // A 2 MB body streams through the 64 KiB window intact (past what
    // came with its head, by splice), and its upstream connection is
    // reused afterwards: the splice left it at the end of the body.
    let response = get(&mut client, "/api/big", "");
    let expected: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(response.body.len(), expected.len(), "{}", server.log());
    assert!(response.body == expected, "big body differs");
    let connections = seen.connections.load(Ordering::SeqCst);
    for _ in 0..3 {
        let response = get(&mut client, "/api/big", "");
        assert!(response.body == expected, "big body differs");
        assert_eq!(get(&mut client, "/api/small", "").body_str(), "GET /small|");
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), connections);
    assert_eq!(get(&mut client, "/ping?after-big", "").body_str(), "pong");
}

#[test]
fn failures_answer_precisely_and_are_logged() {
    let (server, _) = start();
    // Nothing listens: refused → 502, logged with the peer.
    let response = curl(&[&server.url("/dead")]);
    assert_eq!(response.status, 502);
    // The pair's first peer is refused: the request goes to the second.
    let response = curl(&[&server.url("/pair")]);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body_str(), "GET /pair|");
    // A malformed head → 502; a silent upstream → 504 after read_timeout.
    assert_eq!(curl(&[&server.url("/api/malformed")]).status, 502);
    let started = Instant::now();
    assert_eq!(curl(&[&server.url("/api/slow")]).status, 504);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // A body cut short: the client's connection closes with no false end.
    let mut client = server.raw();
    client.send(b"GET /api/truncated HTTP/1.1\r\nHost: h\r\n\r\n");
    let bytes = client.expect_closed("a truncated upstream body");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Content-Length: 100\r\n"), "{text}");
    assert!(text.ends_with("only ten b"), "{text}");
    // A head that trickles in within read_timeout per wait: served. One
    // that stalls halfway past it: 504.
    let response = curl(&[&server.url("/api/slowhead")]);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body_str(), "slow");
    assert_eq!(curl(&[&server.url("/api/stallhead")]).status, 504);
    // A reset in the middle of the body: the client's connection closes,
    // the length left short.
    let mut client = server.raw();
    client.send(b"GET /api/reset HTTP/1.1\r\nHost: h\r\n\r\n");
    let bytes = client.expect_closed("an upstream reset mid-body");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("Content-Length: 100000\r\n"), "{text}");
    let body = &bytes[text.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(body, &[b'r'; 1000][..]);
    // Passive health never takes a pool's only peer out (nginx: "such a
    // server will never be considered unavailable"): it is tried again.
    assert_eq!(curl(&[&server.url("/dead")]).status, 502);
    // The worker is fine.
    assert_eq!(curl(&[&server.url("/ping")]).body_str(), "pong");
    let log = server.wait_for_log("read timed out", Duration::from_secs(5));
    assert!(log.contains("connection refused"), "{log}");
    assert!(log.contains("malformed response head"), "{log}");
    assert!(log.contains("response body cut short"), "{log}");
    assert_eq!(
        log.matches("upstream dead: peer").count(),
        2,
        "the only peer is tried each time:\n{log}"
    );
    assert!(!log.contains("upstream dead: no live peer"), "{log}");
    assert_no_panic(&log, "after upstream failures");
}

#[test]
fn smuggling_attempts_never_reach_the_backend() {
    let (server, seen) = start();
    let vectors: &[&[u8]] = &[
        b"POST /api/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /api/echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;\nhello\r\n0\r\n\r\n",
        b"POST /api/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET /api/x HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
    ];
    for vector in vectors {
        let mut client = server.raw();
        client.send(vector);
        let response = client.read_response();
        assert_eq!(response.status, 400, "{}", String::from_utf8_lossy(vector));
    }
    assert!(
        seen.heads.lock().unwrap().is_empty(),
        "a smuggling vector reached the backend"
    );
}

#[test]
fn python_http_server_as_the_backend() {
    if !keystone_tests::require_tool("python3", "Debian package python3") {
        return;
    }
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "from python\n").unwrap();
    let mut python = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "python http.server did not start"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let app = format!(
        r#"return {{
      upstreams = {{ files = {{ peers = {{ "127.0.0.1:{port}" }} }} }},
      routes = {{ ["GET /py/{{*path}}"] = function(ctx)
        ctx.upstream = "files"
        ctx.upstream_path = "/" .. ctx.params.path
      end }},
    }}"#
    );
    let server = Server::start(Some(&app), &[]);
    let response = curl(&[&server.url("/py/hello.txt")]);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body_str(), "from python\n");
    assert_eq!(curl(&[&server.url("/py/missing.txt")]).status, 404);
    let _ = python.kill();
    let _ = python.wait();
}

#[test]
fn keystone_as_its_own_upstream() {
    let inner = Server::start(
        Some(
            r#"return { routes = { ["GET /inner"] = function(ctx)
          ctx.body = "inner saw " .. tostring(ctx.request.headers["x-forwarded-for"])
        end } }"#,
        ),
        &[],
    );
    let app = format!(
        r#"return {{
      upstreams = {{ inner = {{ peers = {{ "{}" }} }} }},
      routes = {{ ["GET /outer"] = function(ctx)
        ctx.upstream = "inner"
        ctx.upstream_path = "/inner"
      end }},
    }}"#,
        inner.addr()
    );
    let outer = Server::start(Some(&app), &[]);
    let mut client = outer.raw();
    for _ in 0..3 {
        let response = get(&mut client, "/outer", "");
        assert_eq!(response.body_str(), "inner saw 127.0.0.1");
    }
}

#[test]
fn the_access_log_names_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let (server, _) = start_with(&["--access-log", path.to_str().unwrap()]);
    assert_eq!(curl(&[&server.url("/api/users/1")]).status, 200);
    assert_eq!(curl(&[&server.url("/dead")]).status, 502);
    assert_eq!(curl(&[&server.url("/ping")]).body_str(), "pong");
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= 3 || Instant::now() > deadline {
            break text;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let upstream = |line: &str| -> Vec<String> {
        line.rsplitn(4, ' ')
            .take(3)
            .map(str::to_string)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    };
    let proxied = upstream(lines[0]);
    assert!(proxied[0].starts_with("127.0.0.1:"), "{}", lines[0]);
    assert_eq!(proxied[1], "200", "{}", lines[0]);
    let seconds: f64 = proxied[2].parse().unwrap();
    assert!((0.0..5.0).contains(&seconds), "{}", lines[0]);
    let failed = upstream(lines[1]);
    assert_eq!(failed[1], "502", "{}", lines[1]);
    assert_eq!(upstream(lines[2]), ["-", "-", "-"], "{}", lines[2]);
}

/// A proxied body's line is written when the body is over, as nginx
/// writes it: `$body_bytes_sent` is what went out (a body cut short shows
/// it) and `$request_time` runs to the end of the body, while
/// `$upstream_response_time` stays the time to the upstream's head.
#[test]
fn a_proxied_line_is_written_when_its_body_is_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let (server, _) = start_with(&["--access-log", path.to_str().unwrap()]);
    let big = curl(&[&server.url("/api/big")]);
    assert_eq!((big.status, big.body.len()), (200, 2_000_000));
    let mut client = server.raw();
    client.send(b"GET /api/truncated HTTP/1.1\r\nHost: h\r\n\r\n");
    let keystone_tests::Ending::Closed(cut) = client.read_to_end() else {
        panic!("a cut body closes the connection")
    };
    assert!(
        cut.ends_with(b"only ten b"),
        "{}",
        String::from_utf8_lossy(&cut)
    );
    assert_eq!(curl(&[&server.url("/api/slowbody")]).body_str(), "slowly, ");
    assert_eq!(
        curl(&[&server.url("/api/chunked")]).body_str(),
        "hello, world"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= 4 || Instant::now() > deadline {
            break text;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    // `"GET /x HTTP/1.1" 200 BYTES "-" "agent" TIME PEER STATUS TIME`
    let fields = |line: &str| -> (u64, f64, f64) {
        let after = line.split("HTTP/1.1\" ").nth(1).unwrap();
        let bytes = after.split(' ').nth(1).unwrap().parse().unwrap();
        let tail: Vec<&str> = line.rsplitn(5, ' ').collect();
        (bytes, tail[3].parse().unwrap(), tail[0].parse().unwrap())
    };
    assert!(lines[0].contains("/api/big"), "{}", lines[0]);
    assert_eq!(fields(lines[0]).0, 2_000_000, "{}", lines[0]);
    assert!(lines[1].contains("/api/truncated"), "{}", lines[1]);
    assert!(
        lines[1].contains("\" 200 10 "),
        "the ten bytes sent: {}",
        lines[1]
    );
    let (bytes, request_time, upstream_time) = fields(lines[2]);
    assert_eq!(bytes, 8, "{}", lines[2]);
    assert!(request_time >= 0.65, "to the body's end: {}", lines[2]);
    assert!(upstream_time < 0.5, "to the upstream's head: {}", lines[2]);
    assert_eq!(
        fields(lines[3]).0,
        12,
        "a chunked relay's payload: {}",
        lines[3]
    );
}

/// A client that goes away while its request waits for the upstream is
/// seen at once (a receive stays armed while proxying): the upstream
/// connection is closed instead of waited on, the line says 499 as nginx's
/// does, and the peer is not blamed. Bytes a pipelining client sends
/// meanwhile wait for their turn.
#[test]
fn a_client_that_leaves_before_the_upstream_answers_is_logged_499() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let (server, seen) = start_with(&["--access-log", path.to_str().unwrap()]);
    let mut client = server.raw();
    client.send(b"GET /api/waitclose HTTP/1.1\r\nHost: h\r\n\r\n");
    thread::sleep(Duration::from_millis(300));
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(4);
    while seen.hung_up_after.lock().unwrap().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let hung_up = seen
        .hung_up_after
        .lock()
        .unwrap()
        .expect("the proxy hung up");
    assert!(hung_up < Duration::from_secs(2), "after {hung_up:?}");
    // A pipelined request behind a slow one is answered in its turn.
    let mut client = server.raw();
    client.send(b"GET /api/pause HTTP/1.1\r\nHost: h\r\n\r\n");
    thread::sleep(Duration::from_millis(200));
    client.send(b"GET /api/after HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(client.read_response().body_str(), "after a pause");
    assert_eq!(client.read_response().body_str(), "GET /after|");
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= 3 || Instant::now() > deadline {
            break text;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("/api/waitclose HTTP/1.1\" 499 0 "),
        "{text}"
    );
    let fields: Vec<&str> = lines[0].rsplitn(4, ' ').collect();
    assert!(fields[2].starts_with("127.0.0.1:"), "{}", lines[0]);
    assert_eq!(fields[1], "-", "no upstream status: {}", lines[0]);
    assert!(lines[1].contains("/api/pause HTTP/1.1\" 200 13 "), "{text}");
    assert!(lines[2].contains("/api/after HTTP/1.1\" 200 "), "{text}");
}

#[test]
fn a_reload_moves_new_requests_and_lets_old_ones_finish() {
    let (first, _) = backend_named("first");
    let (second, _) = backend_named("second");
    let app = |peer: SocketAddr| {
        format!(
            r#"return {{
      upstreams = {{ pool = {{ peers = {{ "{peer}" }}, read_timeout = 10 }} }},
      routes = {{ ["GET /{{*p}}"] = function(ctx) ctx.upstream = "pool" end }},
    }}"#
        )
    };
    let server = Server::start(Some(&app(first)), &[]);
    let mut client = server.raw();
    assert_eq!(
        get(&mut client, "/x", "").header("x-backend"),
        Some("first")
    );
    // A request in flight across the reload.
    let mut slow = server.raw();
    slow.send(b"GET /pause HTTP/1.1\r\nHost: h\r\n\r\n");
    thread::sleep(Duration::from_millis(200));
    std::fs::write(server.app_path(), app(second)).unwrap();
    server.hangup();
    server.wait_for_log("reloaded", Duration::from_secs(10));
    let paused = slow.read_response();
    assert_eq!(paused.body_str(), "after a pause");
    assert_eq!(
        paused.header("x-backend"),
        Some("first"),
        "finished on its old pool"
    );
    // New requests, on old and new client connections, go to the new pool.
    assert_eq!(
        get(&mut client, "/y", "").header("x-backend"),
        Some("second")
    );
    assert_eq!(
        get(&mut server.raw(), "/z", "").header("x-backend"),
        Some("second")
    );
    assert_no_panic(&server.log(), "after a reload with proxying");
}

#[test]
fn hash_balancing_keeps_a_key_on_its_peer() {
    let (a, _) = backend_named("a");
    let (b, _) = backend_named("b");
    let (c, _) = backend_named("c");
    let app = format!(
        r#"return {{
      upstreams = {{ sticky = {{ peers = {{ "{a}", "{b}", "{c}" }}, balance = "hash" }} }},
      routes = {{ ["GET /u/{{id}}"] = function(ctx)
        ctx.upstream = "sticky"
        ctx.upstream_key = ctx.params.id
      end }},
    }}"#
    );
    let server = Server::start(Some(&app), &[]);
    let mut client = server.raw();
    let mut seen = std::collections::HashMap::new();
    for round in 0..3 {
        for user in 0..30 {
            let response = get(&mut client, &format!("/u/{user}"), "");
            let peer = response.header("x-backend").unwrap().to_string();
            let first = seen.entry(user).or_insert_with(|| peer.clone());
            assert_eq!(*first, peer, "user {user} moved in round {round}");
        }
    }
    let peers: std::collections::HashSet<&String> = seen.values().collect();
    assert_eq!(peers.len(), 3, "30 keys spread over every peer: {seen:?}");
}

#[test]
fn a_reused_connection_that_was_dropped_is_retried_fresh_when_idempotent() {
    let (server, seen) = start();
    let mut client = server.raw();
    assert_eq!(get(&mut client, "/api/warm", "").status, 200);
    // Reuses the pooled connection, which the backend drops: the GET goes
    // again on a fresh connection and the client never sees the failure.
    let response = get(&mut client, "/api/stale", "");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body_str(), "GET /stale|");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    // A POST is not sent twice: 502.
    assert_eq!(get(&mut client, "/api/warm", "").status, 200);
    client.send(b"POST /api/stale HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab");
    assert_eq!(client.read_response().status, 502);
    let log = server.wait_for_log("closed before the response head", Duration::from_secs(5));
    assert_no_panic(&log, "after stale connections");
}

#[test]
fn active_health_checks_take_a_sick_peer_out_and_bring_it_back() {
    let (a, seen_a) = backend_named("a");
    let (b, _) = backend_named("b");
    seen_a.sick.store(true, Ordering::SeqCst);
    let app = format!(
        r#"return {{
      upstreams = {{ checked = {{
        peers = {{ "{a}", "{b}" }},
        max_fails = 0, fail_timeout = 30,
        health_check = {{ path = "/health", interval = 1 }},
      }} }},
      routes = {{ ["GET /{{*p}}"] = function(ctx) ctx.upstream = "checked" end }},
    }}"#
    );
    let server = Server::start(Some(&app), &[]);
    // The first checks run at the first tick: a is sick, so only b answers.
    server.wait_for_log("health check /health answered 503", Duration::from_secs(5));
    let mut client = server.raw();
    for _ in 0..10 {
        assert_eq!(get(&mut client, "/x", "").header("x-backend"), Some("b"));
    }
    // a recovers: the next passing check brings it back into rotation.
    seen_a.sick.store(false, Ordering::SeqCst);
    let checks = seen_a.checks.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen_a.checks.load(Ordering::SeqCst) < checks + 2 {
        assert!(Instant::now() < deadline, "no more health checks");
        thread::sleep(Duration::from_millis(100));
    }
    let peers: std::collections::HashSet<String> = (0..10)
        .map(|_| {
            get(&mut client, "/x", "")
                .header("x-backend")
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(peers.len(), 2, "both peers serve again: {peers:?}");
    // The checks never reached a client: every answer above was a proxied one.
    assert_no_panic(&server.log(), "after health checks");
}

#[test]
fn metrics_count_per_upstream_peer() {
    let (addr, _) = backend();
    let dead = free_port();
    let (server, admin) = Server::start_with_admin(Some(&app(addr, dead)), &[]);
    let mut client = server.raw();
    for i in 0..3 {
        assert_eq!(get(&mut client, &format!("/api/ok/{i}"), "").status, 200);
    }
    assert_eq!(get(&mut client, "/api/malformed", "").status, 502);
    // The malformed answer's connection is closed; this one goes back.
    assert_eq!(get(&mut client, "/api/ok/again", "").status, 200);
    assert_eq!(get(&mut server.raw(), "/dead", "").status, 502);
    let metrics = curl(&[&format!("http://{admin}/metrics")]).body_str();
    let value = |line_start: &str| -> u64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{metrics}"))
    };
    let api = format!("upstream=\"api\",peer=\"{addr}\"");
    assert_eq!(
        value(&format!("keystone_upstream_requests_total{{{api}}}")),
        5
    );
    assert_eq!(
        value(&format!(
            "keystone_upstream_responses_total{{{api},class=\"2xx\"}}"
        )),
        4
    );
    assert_eq!(
        value(&format!(
            "keystone_upstream_failures_total{{{api},reason=\"bad_head\"}}"
        )),
        1
    );
    assert_eq!(
        value(&format!("keystone_upstream_idle_connections{{{api}}}")),
        1
    );
    let dead = format!("upstream=\"dead\",peer=\"127.0.0.1:{dead}\"");
    assert_eq!(
        value(&format!(
            "keystone_upstream_failures_total{{{dead},reason=\"connect\"}}"
        )),
        1
    );
    assert_eq!(value("keystone_proxied_requests_total"), 6);
    // Small bodies are copied, never spliced.
    assert_eq!(value("keystone_proxied_spliced_bytes_total"), 0);
    // Nothing is in progress now.
    assert_eq!(
        value(&format!("keystone_upstream_active_requests{{{api}}}")),
        0
    );
    // Histograms: the api peer's connections (the first, and the one
    // after the malformed answer closed its predecessor) and its five
    // response heads (the malformed head is none); the dead peer never
    // connected. Loopback connects land in the first bucket's range.
    let float = |line_start: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{metrics}"))
    };
    assert_eq!(
        value(&format!("keystone_upstream_connect_seconds_count{{{api}}}")),
        2
    );
    assert_eq!(
        value(&format!(
            "keystone_upstream_connect_seconds_bucket{{{api},le=\"+Inf\"}}"
        )),
        2
    );
    assert_eq!(
        value(&format!(
            "keystone_upstream_connect_seconds_bucket{{{api},le=\"0.25\"}}"
        )),
        2
    );
    assert_eq!(
        value(&format!(
            "keystone_upstream_response_seconds_count{{{api}}}"
        )),
        4
    );
    let sum = float(&format!("keystone_upstream_response_seconds_sum{{{api}}}"));
    assert!(sum > 0.0 && sum < 4.0, "response time sum {sum}");
    assert_eq!(
        value(&format!(
            "keystone_upstream_connect_seconds_count{{{dead}}}"
        )),
        0
    );
    // The exposition parses as Prometheus text, histograms included.
    let parsed = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition");
    assert!(parsed
        .samples
        .iter()
        .any(|sample| sample.metric == "keystone_upstream_response_seconds"));
}

#[test]
fn on_response_sees_the_upstream_answer_and_changes_it() {
    let (addr, _) = backend();
    let dead = free_port();
    let server = Server::start(Some(&app(addr, dead)), &[]);
    let mut client = server.raw();
    let response = get(&mut client, "/hooked/users/9", "");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body_str(), "GET /users/9|");
    assert_eq!(response.header("x-upstream-status"), Some("200"));
    assert_eq!(response.header("x-seen-backend"), Some("rust"));
    assert_eq!(response.header("x-backend"), None, "removed by on_response");
    assert_eq!(response.header("x-peer"), Some(addr.to_string().as_str()));
    assert_eq!(response.header("access-control-allow-origin"), Some("*"));
    assert_eq!(response.header("x-path"), Some("/hooked/users/9"));
    assert_eq!(
        response.header("content-type"),
        Some("text/plain"),
        "the upstream's, kept"
    );
    // A body set in on_response replaces the upstream's; the upstream's
    // headers stay (the hook's writes win by name), its framing and
    // hop-by-hop fields do not.
    let response = get(&mut client, "/replaced", "");
    assert_eq!(response.status, 418);
    assert_eq!(response.body_str(), "replaced 200");
    assert_eq!(response.header("x-backend"), Some("rust"), "{response:?}");
    assert_eq!(response.header("x-hop"), None, "{response:?}");
    assert_eq!(response.header("content-length"), Some("12"));
    let content_types = response
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .count();
    assert_eq!(content_types, 1, "{response:?}");
    // A failing hook: 500, logged; the connection goes on.
    let response = get(&mut client, "/hook-fails", "");
    assert_eq!(response.status, 500);
    // A file or generator body is a handler's: in on_response it is an
    // error at the assignment (500), never the path sent as the body or
    // the generator dropped for the upstream's body.
    for path in ["/hook-file", "/hook-stream"] {
        let response = get(&mut client, path, "");
        assert_eq!(response.status, 500, "{path}: {response:?}");
        assert!(!response.body_str().contains("index.html"), "{path}");
    }
    assert_eq!(get(&mut client, "/ping", "").body_str(), "pong");
    assert_eq!(
        get(&mut client, "/no-upstream-response", "").body_str(),
        "nil,nil"
    );
    // Over and over on one connection: nothing leaks between requests.
    for i in 0..50 {
        let response = get(&mut client, &format!("/hooked/n/{i}"), "");
        assert_eq!(response.body_str(), format!("GET /n/{i}|"));
        assert_eq!(
            response.header("x-path"),
            Some(format!("/hooked/n/{i}").as_str())
        );
    }
    let log = server.wait_for_log("ctx.on_response failed", Duration::from_secs(5));
    assert!(log.contains("hook boom"), "{log}");
    for got in ["{ file = ... }", "a generator function"] {
        assert!(
            log.contains(&format!(
                "ctx.body in ctx.on_response must be a string or nil, got {got}"
            )),
            "{log}"
        );
    }
    assert_no_panic(&log, "after on_response");
}

#[test]
fn a_slow_reader_holds_its_upstream_to_one_window_and_others_go_on() {
    let (server, _) = start();
    let rss = || -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let before = rss();
    let mut slow = server.raw();
    slow.send(b"GET /api/big HTTP/1.1\r\nHost: h\r\n\r\n");
    // The slow client reads nothing for a while; the worker serves others.
    thread::sleep(Duration::from_millis(800));
    for i in 0..20 {
        let response = curl(&[&server.url(&format!("/api/other/{i}"))]);
        assert_eq!(response.status, 200);
    }
    assert_eq!(curl(&[&server.url("/ping")]).body_str(), "pong");
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "RSS grew {grown} KiB while a reader stalled"
    );
    // Then it reads: every byte, in order.
    let response = slow.read_response();
    assert_eq!(response.status, 200);
    let expected: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    assert!(response.body == expected, "the slow reader's body differs");
}

#[test]
fn upstream_buffer_shows_on_response_the_whole_body() {
    let (server, _) = start();
    // A chunked body, read whole: the hook sees it and replaces it.
    let response = curl(&[&server.url("/buffered/chunked?transform=1")]);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("x-body-length"), Some("12"));
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.body_str(), r#"{"upstream":"HELLO, WORLD"}"#);
    // Seen but not replaced: the upstream's body goes on to the client.
    let response = curl(&[&server.url("/buffered/chunked")]);
    assert_eq!(response.header("x-body-length"), Some("12"));
    assert_eq!(response.body_str(), "hello, world");
    // 2 MB in a 1 MiB-capped buffer... and within it.
    let response = curl(&[&server.url("/buffered/big?limit=1048576")]);
    assert_eq!(response.status, 502);
    let response = curl(&[&server.url("/buffered/api/x?limit=100")]);
    assert_eq!(response.status, 200);
    assert_eq!(response.body_str(), "GET /api/x|");
    assert_eq!(curl(&[&server.url("/buffered/big?limit=1000")]).status, 502);
    let log = server.wait_for_log("larger than ctx.upstream_buffer", Duration::from_secs(5));
    assert_no_panic(&log, "upstream_buffer");
    // A bad value is a handler error naming the field.
    let app = r#"return {
  upstreams = { api = { peers = { "127.0.0.1:9" } } },
  routes = { ["GET /"] = function(ctx) ctx.upstream = "api"; ctx.upstream_buffer = 2^40 end },
}"#;
    let other = Server::start(Some(app), &[]);
    assert_eq!(curl(&[&other.url("/")]).status, 500);
    let log = other.wait_for_log("ctx.upstream_buffer must be", Duration::from_secs(5));
    assert!(log.contains("from 1 to 1048576"), "{log}");
}
