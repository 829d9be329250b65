//! Issue 14, bodies through the proxy, end to end: request bodies larger
//! than `--max-body-bytes` stream to the backend (with their length, or
//! re-chunked) and never sit whole in the server; 100 MiB each way with the
//! server's resident memory bounded; a backend that answers while it still
//! reads (an echo) relays both ways at once; a handler that does not proxy
//! a streamed body answers without reading it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use keystone_tests::{assert_no_panic, RawClient, Server};

/// What the backend saw of each request: its head and body length.
#[derive(Default)]
struct Seen {
    heads: Mutex<Vec<String>>,
}

/// The byte at position `i` of every test body (a pattern a cut, a
/// duplicate or a reorder would break).
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) % 251) as u8
}

/// FNV-1a over `bytes`, continued from `hash`.
fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100_0000_01b3);
    }
    hash
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn pattern_hash(len: u64) -> u64 {
    let mut hash = FNV_START;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(chunk.len() as u64) as usize;
        for (k, byte) in chunk[..n].iter_mut().enumerate() {
            *byte = pattern(at + k as u64);
        }
        hash = fnv(hash, &chunk[..n]);
        at += n as u64;
    }
    hash
}

/// A backend: `/count` reads the body (length or chunked) and answers its
/// length and hash; `/echo` answers at once with the request's length and
/// sends each piece of the body back as it reads it; `/download/N` sends
/// N pattern bytes; `/early` answers 413 before reading anything and
/// closes.
fn backend() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let shared = Arc::clone(&seen);
    let addr = keystone_tests::spawn_backend(move |stream| serve(stream, &shared));
    (addr, seen)
}

fn serve(stream: TcpStream, seen: &Seen) {
    let mut reader = BufReader::with_capacity(256 * 1024, stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let Some(head) = keystone_tests::read_head(&mut reader) else {
            return;
        };
        seen.heads.lock().unwrap().push(head.clone());
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let lower = head.to_ascii_lowercase();
        let length: Option<u64> = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map(|v| v.trim().parse().unwrap());
        let chunked = lower.contains("transfer-encoding: chunked");
        if path == "/early" {
            let _ = out.write_all(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n",
            );
            // A lingering close, as a careful server does: closing with
            // unread bytes would reset the connection, and a reset can
            // overtake the answer.
            let _ = out.shutdown(std::net::Shutdown::Write);
            let _ = out.set_read_timeout(Some(Duration::from_secs(2)));
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
            return;
        }
        if let Some(size) = path.strip_prefix("/download/") {
            let size: u64 = size.parse().unwrap();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
            if out.write_all(head.as_bytes()).is_err() {
                return;
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let mut at = 0;
            while at < size {
                let n = (size - at).min(chunk.len() as u64) as usize;
                for (k, byte) in chunk[..n].iter_mut().enumerate() {
                    *byte = pattern(at + k as u64);
                }
                if out.write_all(&chunk[..n]).is_err() {
                    return;
                }
                at += n as u64;
            }
            continue;
        }
        let echo = path == "/echo";
        if echo {
            let length = length.expect("the echo test sends a length");
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n");
            if out.write_all(head.as_bytes()).is_err() {
                return;
            }
        }
        let mut hash = FNV_START;
        let mut total = 0u64;
        let mut take = |bytes: &[u8], out: &mut TcpStream| -> bool {
            hash = fnv(hash, bytes);
            total += bytes.len() as u64;
            !echo || out.write_all(bytes).is_ok()
        };
        let mut buf = vec![0u8; 64 * 1024];
        if chunked {
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let size = u64::from_str_radix(line.trim_end(), 16).expect("a chunk-size line");
                if size == 0 {
                    let mut end = String::new();
                    let _ = reader.read_line(&mut end);
                    break;
                }
                let mut left = size;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    if reader.read_exact(&mut buf[..n]).is_err() {
                        return;
                    }
                    if !take(&buf[..n], &mut out) {
                        return;
                    }
                    left -= n as u64;
                }
                let mut crlf = [0u8; 2];
                if reader.read_exact(&mut crlf).is_err() || &crlf != b"\r\n" {
                    return;
                }
            }
        } else {
            let mut left = length.unwrap_or(0);
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                let got = match reader.read(&mut buf[..n]) {
                    Ok(0) | Err(_) => return,
                    Ok(got) => got,
                };
                if !take(&buf[..got], &mut out) {
                    return;
                }
                left -= got as u64;
            }
        }
        if !echo {
            let framing = if chunked { "chunked" } else { "length" };
            let body = format!("len={total} hash={hash:x} framing={framing}");
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if out.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    }
}

fn app(backend: SocketAddr) -> String {
    format!(
        r#"return {{
  upstreams = {{
    api = {{ peers = {{ "{backend}" }}, keepalive = 8, read_timeout = 20 }},
  }},
  routes = {{
    ["* /up/{{*rest}}"] = function(ctx)
      ctx.upstream = "api"
      ctx.upstream_path = "/" .. ctx.params.rest
      ctx.upstream_headers["X-Body-Seen"] = tostring(ctx.request.body and #ctx.request.body)
    end,
    ["POST /guarded"] = function(ctx)
      if ctx.request.headers["authorization"] ~= "Bearer ok" then
        ctx.status = 401
        ctx.body = "who are you?"
        return
      end
      ctx.upstream = "api"
      ctx.upstream_path = "/count"
    end,
    ["POST /local"] = function(ctx)
      ctx.body = "local " .. tostring(ctx.request.body and #ctx.request.body)
    end,
  }},
}}"#
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Writes `len` pattern bytes, with chunked framing (pieces of `piece`
/// bytes) when `chunked`.
fn write_body(stream: &mut TcpStream, len: u64, chunked: bool, piece: usize) {
    let mut chunk = vec![0u8; piece];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(piece as u64) as usize;
        for (k, byte) in chunk[..n].iter_mut().enumerate() {
            *byte = pattern(at + k as u64);
        }
        if chunked {
            stream.write_all(format!("{n:x}\r\n").as_bytes()).unwrap();
            stream.write_all(&chunk[..n]).unwrap();
            stream.write_all(b"\r\n").unwrap();
        } else {
            stream.write_all(&chunk[..n]).unwrap();
        }
        at += n as u64;
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n").unwrap();
    }
}

fn upload(server: &Server, path: &str, len: u64, chunked: bool) -> keystone_tests::Response {
    let mut client = server.raw();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {len}")
    };
    client.send(format!("POST {path} HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n").as_bytes());
    let mut stream = client.clone_stream();
    let writer = thread::spawn(move || write_body(&mut stream, len, chunked, 256 * 1024));
    let response = client.read_response();
    writer.join().unwrap();
    response
}

#[test]
fn a_hundred_mib_body_streams_upstream_with_memory_bounded() {
    let (addr, seen) = backend();
    let server = Server::start(Some(&app(addr)), &[]);
    let before = rss_kib(server.pid());
    let len = 100 * 1024 * 1024;
    let response = upload(&server, "/up/count", len, false);
    assert_eq!(response.status, 200, "{}", server.log());
    assert_eq!(
        response.body_str(),
        format!("len={len} hash={:x} framing=length", pattern_hash(len))
    );
    let head = seen.heads.lock().unwrap().last().cloned().unwrap();
    assert!(
        head.contains(&format!("Content-Length: {len}\r\n")),
        "{head}"
    );
    // The handler saw no body (it is not buffered).
    assert!(head.contains("X-Body-Seen: nil\r\n"), "{head}");
    let grown = rss_kib(server.pid()).saturating_sub(before);
    eprintln!("server RSS: {before} KiB before, grew by {grown} KiB");
    assert!(
        grown < 24 * 1024,
        "server RSS grew by {grown} KiB for a 100 MiB upload"
    );
    assert_no_panic(&server.log(), "100 MiB upload");
}

#[test]
fn a_hundred_mib_response_streams_to_the_client_with_memory_bounded() {
    let (addr, _) = backend();
    let (server, admin) = Server::start_with_admin(Some(&app(addr)), &[]);
    let before = rss_kib(server.pid());
    let len: u64 = 100 * 1024 * 1024;
    let mut client = server.raw();
    client.send(b"GET /up/download/104857600 HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut stream = client.clone_stream();
    // Read the head by hand, then the body in pieces (never whole here).
    let mut reader = BufReader::new(&mut stream);
    let head = keystone_tests::read_head(&mut reader).expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {len}\r\n"))
            || head.contains(&format!("Content-Length: {len}\r\n")),
        "{head}"
    );
    let mut hash = FNV_START;
    let mut got = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut peak = 0;
    while got < len {
        let want = (len - got).min(buf.len() as u64) as usize;
        let n = reader.read(&mut buf[..want]).unwrap();
        assert!(n > 0, "the body ended after {got} bytes");
        hash = fnv(hash, &buf[..n]);
        got += n as u64;
        if got % (16 << 20) < n as u64 {
            peak = peak.max(rss_kib(server.pid()));
        }
    }
    assert_eq!(hash, pattern_hash(len));
    // Past what came with the head, the body moved by splice.
    let metrics = keystone_tests::curl(&[&format!("http://{admin}/metrics")]).body_str();
    let spliced: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keystone_proxied_spliced_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the splice counter");
    assert!(
        spliced > len - 256 * 1024 && spliced <= len,
        "{spliced} of {len} bytes spliced"
    );
    let grown = peak.max(rss_kib(server.pid())).saturating_sub(before);
    eprintln!("server RSS: {before} KiB before, grew by {grown} KiB");
    assert!(
        grown < 24 * 1024,
        "server RSS grew by {grown} KiB for a 100 MiB download"
    );
}

#[test]
fn a_chunked_body_past_the_limit_is_forwarded_chunked() {
    let (addr, seen) = backend();
    let server = Server::start(Some(&app(addr)), &["--max-body-bytes", "65536"]);
    let len = 3 * 1024 * 1024 + 17;
    let response = upload(&server, "/up/count", len, true);
    assert_eq!(response.status, 200, "{}", server.log());
    assert_eq!(
        response.body_str(),
        format!("len={len} hash={:x} framing=chunked", pattern_hash(len))
    );
    let head = seen.heads.lock().unwrap().last().cloned().unwrap();
    assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
    assert!(!head.contains("Content-Length"), "{head}");
    // A small chunked body is still buffered whole and sent with its length.
    let response = upload(&server, "/up/count", 1000, true);
    assert_eq!(
        response.body_str(),
        format!("len=1000 hash={:x} framing=length", pattern_hash(1000))
    );
    let head = seen.heads.lock().unwrap().last().cloned().unwrap();
    assert!(head.contains("X-Body-Seen: 1000\r\n"), "{head}");
}

#[test]
fn a_chunked_body_past_the_limit_in_one_read_is_still_past_the_limit() {
    let (addr, seen) = backend();
    let server = Server::start(Some(&app(addr)), &["--max-body-bytes", "4096"]);
    let body = vec![b'x'; 5000];
    let mut framed = format!("{:x}\r\n", body.len()).into_bytes();
    framed.extend_from_slice(&body);
    framed.extend_from_slice(b"\r\n0\r\n\r\n");
    // Head and whole body in one write: the handler is not shown 5000
    // bytes under a 4096-byte limit, as for a `Content-Length` body.
    let mut client = server.raw();
    let mut request =
        b"POST /local HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    request.extend_from_slice(&framed);
    client.send(&request);
    assert_eq!(client.read_response().body_str(), "local nil");
    // Proxied: streamed, so forwarded chunked, and the handler saw no body.
    let mut client = server.raw();
    let mut request =
        b"POST /up/count HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    request.extend_from_slice(&framed);
    client.send(&request);
    let response = client.read_response();
    assert_eq!(response.status, 200, "{}", server.log());
    assert_eq!(
        response.body_str(),
        format!("len=5000 hash={:x} framing=chunked", fnv(FNV_START, &body))
    );
    let head = seen.heads.lock().unwrap().last().cloned().unwrap();
    assert!(head.contains("X-Body-Seen: nil\r\n"), "{head}");
    // The same connection goes on: a pipelined request behind a streamed
    // body keeps its place.
    client.send(b"POST /up/count HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(
        client.read_response().body_str(),
        format!("len=3 hash={:x} framing=length", fnv(FNV_START, b"abc"))
    );
    // An app without upstreams refuses it with 413, as before.
    let local = Server::start(
        Some(
            r#"return { routes = { ["POST /local"] = function(ctx) ctx.body = "local " .. tostring(ctx.request.body and #ctx.request.body) end } }"#,
        ),
        &["--max-body-bytes", "4096"],
    );
    let mut client = local.raw();
    let mut request =
        b"POST /local HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    request.extend_from_slice(&framed);
    client.send(&request);
    assert_eq!(client.read_response().status, 413);
}

#[test]
fn an_echo_backend_relays_both_ways_at_once() {
    let (addr, _) = backend();
    let server = Server::start(Some(&app(addr)), &[]);
    let len: u64 = 32 * 1024 * 1024;
    let mut client = server.raw();
    client.send(
        format!("POST /up/echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
    );
    let mut stream = client.clone_stream();
    let writer = thread::spawn(move || write_body(&mut stream, len, false, 64 * 1024));
    let reader = client.clone_stream();
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(reader);
    let head = keystone_tests::read_head(&mut reader).expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut hash = FNV_START;
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while got < len {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "the echo ended after {got} bytes: {}", server.log());
        hash = fnv(hash, &buf[..n]);
        got += n as u64;
    }
    writer.join().unwrap();
    assert_eq!(got, len);
    assert_eq!(hash, pattern_hash(len));
    // The connection is still good for another request.
    let mut client = client;
    client.send(b"POST /up/count HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    let response = client.read_response();
    assert_eq!(
        response.body_str(),
        format!("len=3 hash={:x} framing=length", fnv(FNV_START, b"abc"))
    );
}

#[test]
fn a_streamed_body_that_is_not_proxied_is_answered_unread() {
    let (addr, seen) = backend();
    let server = Server::start(Some(&app(addr)), &["--max-body-bytes", "4096"]);
    // The gateway's auth check refuses before the body is wanted: no
    // `100 Continue`, the 401, then the connection closes.
    let mut client = server.raw();
    client.send(
        b"POST /guarded HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\nExpect: 100-continue\r\n\r\n",
    );
    let response = client.read_response();
    assert_eq!(response.status, 401);
    assert_eq!(response.body_str(), "who are you?");
    assert!(response.closes(), "the answer says it closes: {response:?}");
    client.expect_closed("a streamed body that was not read");
    // Allowed: `100 Continue`, then the body goes through.
    let mut client = server.raw();
    client.send(
        b"POST /guarded HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer ok\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n",
    );
    let mut stream = client.clone_stream();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    write_body(&mut stream, 100_000, false, 8192);
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(
        response.body_str(),
        format!("len=100000 hash={:x} framing=length", pattern_hash(100_000))
    );
    // A handler that wants the body of a streamed request gets nil.
    let mut client = server.raw();
    client.send(b"POST /local HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n");
    let response = client.read_response();
    assert_eq!(response.body_str(), "local nil");
    // The engine's own answers to one (no route, a route without the
    // method) say so too: the body is never read, the connection closes.
    for (request, status) in [
        (
            &b"POST /nowhere HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n"[..],
            404,
        ),
        (
            &b"PUT /guarded HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n"[..],
            405,
        ),
    ] {
        let mut client = server.raw();
        client.send(request);
        let response = client.read_response();
        assert_eq!(response.status, status);
        assert!(response.closes(), "the answer says it closes: {response:?}");
        client.expect_closed("a streamed body the engine answered");
    }
    // Past --max-proxy-body-bytes: 413 before anything reaches the backend.
    let server = Server::start(
        Some(&app(addr)),
        &[
            "--max-body-bytes",
            "4096",
            "--max-proxy-body-bytes",
            "100000",
        ],
    );
    let heads_before = seen.heads.lock().unwrap().len();
    let mut client = server.raw();
    client.send(b"POST /up/count HTTP/1.1\r\nHost: t\r\nContent-Length: 100001\r\n\r\n");
    assert_eq!(client.read_response().status, 413);
    assert_eq!(seen.heads.lock().unwrap().len(), heads_before);
}

#[test]
fn a_backend_that_refuses_early_or_a_client_that_leaves_mid_body() {
    let (addr, seen) = backend();
    let server = Server::start(Some(&app(addr)), &["--max-body-bytes", "4096"]);
    // The backend answers 413 before reading: relayed, then closed.
    let mut client = server.raw();
    client.send(b"POST /up/early HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000\r\n\r\n");
    let mut stream = client.clone_stream();
    let _writer = thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..800 {
            if stream.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let response = client.read_response();
    assert_eq!(response.status, 413);
    assert_eq!(response.body_str(), "too big\n");
    // A client that leaves in the middle of its body: the backend's
    // connection is closed, never left waiting for the rest, and the
    // worker goes on serving.
    let heads_before = seen.heads.lock().unwrap().len();
    let mut client = RawClient::connect(server.addr());
    client.send(b"POST /up/count HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n");
    client.send(&vec![b'y'; 300_000]);
    thread::sleep(Duration::from_millis(300));
    drop(client);
    server.wait_for_log(
        "in the middle of a streamed request body",
        Duration::from_secs(5),
    );
    assert!(seen.heads.lock().unwrap().len() > heads_before);
    let response = upload(&server, "/up/count", 10_000, false);
    assert_eq!(response.status, 200);
    assert_no_panic(&server.log(), "early answers and broken uploads");
}

#[test]
fn a_broken_streamed_body_is_refused_before_the_upstream_answers() {
    let (addr, seen) = backend();
    let server = Server::start(
        Some(&app(addr)),
        &["--max-body-bytes", "4096", "--body-timeout", "1"],
    );
    // Bad chunk framing past the buffered limit: the upstream request is
    // abandoned (its connection closed) and the client gets 400, closed.
    let mut client = server.raw();
    client.send(b"POST /up/count HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    client.send(format!("{:x}\r\n", 8000).as_bytes());
    client.send(&[b'c'; 8000]);
    client.send(b"\r\nzz-not-hex\r\n");
    let response = client.read_response();
    assert_eq!(response.status, 400);
    client.expect_closed("a refused streamed body");
    // A client that stalls in the middle of its body past --body-timeout:
    // 408, closed.
    let mut client = server.raw();
    client.send(b"POST /up/count HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n");
    client.send(&[b's'; 10_000]);
    let started = std::time::Instant::now();
    let response = client.read_response();
    assert_eq!(response.status, 408);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Neither cut body was answered by the backend as if whole.
    thread::sleep(Duration::from_millis(200));
    let heads = seen.heads.lock().unwrap().len();
    assert!(heads <= 2, "{heads} heads reached the backend");
    // The worker goes on.
    let response = upload(&server, "/up/count", 50_000, false);
    assert_eq!(response.status, 200);
    assert_no_panic(&server.log(), "broken streamed bodies");
}

#[test]
fn a_streamed_body_to_a_dead_pool_is_502_at_once() {
    let dead = keystone_tests::free_port();
    let app = format!(
        r#"return {{
  upstreams = {{ gone = {{ peers = {{ "127.0.0.1:{dead}" }}, retries = 0 }} }},
  routes = {{ ["POST /"] = function(ctx) ctx.upstream = "gone" end }},
}}"#
    );
    let server = Server::start(Some(&app), &["--max-body-bytes", "4096"]);
    let mut client = server.raw();
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n");
    client.send(&[b'd'; 20_000]);
    let response = client.read_response();
    assert_eq!(response.status, 502);
    client.expect_closed("a streamed body nobody takes");
}
