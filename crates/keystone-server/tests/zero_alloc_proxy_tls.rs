//! "No allocation per request" through a TLS upstream: the real server runs
//! in this process under a counting global allocator, proxying to a pool
//! with `tls = true` (a certificate signed by a test CA, `ca = ...`, an
//! explicit `sni`). The backend is a second `keystone serve` with a TLS
//! listener, in its own process (its allocations are not ours). After the
//! upstream handshake and a warm-up, 2,000 keep-alive proxied requests —
//! each sealed and opened by keystone-tls' record layer on the upstream
//! connection the pool kept — and 200 with a 40 KB answer (several
//! records per response) must cause zero heap allocations. The handshake
//! allocates (rustls builds its state per connection): reported, not
//! asserted.
//!
//! The client speaks cleartext HTTP to the front from fixed buffers, so
//! it allocates nothing either.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;

#[path = "support/counting.rs"]
mod counting;
use counting::ALLOCATIONS;

/// The backend: a short answer and one of several TLS records.
const BACKEND: &str = r#"
local big = string.rep("0123456789", 4000)
return { routes = {
  ["GET /small"] = function(ctx) ctx.body = "over tls " .. ctx.tls.sni end,
  ["GET /big"] = function(ctx) ctx.body = big end,
} }
"#;

const FRONT: &str = r#"
return {
  upstreams = { secure = {
    peers = { "127.0.0.1:{port}" }, tls = true, sni = "backend.test", ca = "ca.pem", keepalive = 4,
  } },
  routes = {
    ["GET /small"] = function(ctx) ctx.upstream = "secure" end,
    ["GET /big"] = function(ctx) ctx.upstream = "secure" end,
    ["GET /ping"] = function(ctx) ctx.body = "pong" end,
  },
}
"#;

const PING: &[u8] = b"GET /ping HTTP/1.1\r\nHost: test\r\n\r\n";
const SMALL: &[u8] = b"GET /small HTTP/1.1\r\nHost: test\r\nUser-Agent: zero-alloc\r\n\r\n";
const BIG: &[u8] = b"GET /big HTTP/1.1\r\nHost: test\r\nUser-Agent: zero-alloc\r\n\r\n";
const SMALL_REQUESTS: u64 = 2_000;
const BIG_REQUESTS: u64 = 200;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_accepting(port: u16, what: &str, child: Option<&mut Child>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut child = child;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(child) = child.as_deref_mut() {
            assert!(child.try_wait().unwrap().is_none(), "{what} exited");
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The backend process, killed when the test ends.
struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A test CA and a leaf for `backend.test` it signs, the CA in
/// `dir/ca.pem`, the leaf's pair in `dir/leaf.pem` and `dir/leaf.key`.
fn certificates(dir: &std::path::Path) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "zero-alloc test CA");
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["backend.test".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("leaf.key"), key.serialize_pem()).unwrap();
}

/// Starts the backend (a process) and the front (in this process);
/// returns the front's port and the backend.
fn start() -> (u16, Backend) {
    let dir = std::env::temp_dir().join(format!(
        "keystone-zero-alloc-proxy-tls-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    std::fs::write(dir.join("backend.lua"), BACKEND).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let tls_port = free_port();
    let backend_listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_keystone"))
        .args(["serve", &path("backend.lua"), "--listen", &backend_listen])
        .args(["--tls-listen", &format!("127.0.0.1:{tls_port}")])
        .args([
            "--tls-cert",
            &path("leaf.pem"),
            "--tls-key",
            &path("leaf.key"),
        ])
        .args(["--workers", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning the backend");
    wait_accepting(tls_port, "the TLS backend", Some(&mut child));
    let backend = Backend(child);

    std::fs::write(
        dir.join("front.lua"),
        FRONT.replace("{port}", &tls_port.to_string()),
    )
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let front = path("front.lua");
    let args = [
        "keystone",
        "serve",
        front.as_str(),
        "--listen",
        &listen,
        "--workers",
        "1",
    ];
    let cli = keystone_server::cli::Cli::parse_from(args);
    std::thread::spawn(move || keystone_server::run(cli));
    wait_accepting(port, "the front", None);
    (port, backend)
}

/// Sends `request` and reads one response of exactly `response.len()`
/// bytes (every answer of a route has the same length).
fn exchange(stream: &mut TcpStream, request: &[u8], response: &mut [u8]) {
    stream.write_all(request).unwrap();
    stream.read_exact(response).unwrap();
}

fn allocations_in(count: u64, stream: &mut TcpStream, request: &[u8], response: &mut [u8]) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..count {
        exchange(stream, request, response);
    }
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

/// One response of unknown length (warm-up only; allocates).
fn response_len(stream: &mut TcpStream, request: &[u8]) -> (usize, Vec<u8>) {
    stream.write_all(request).unwrap();
    let mut buf = vec![0u8; 128 * 1024];
    let mut got = 0;
    loop {
        let n = stream.read(&mut buf[got..]).unwrap();
        assert!(n > 0, "the front closed the connection");
        got += n;
        let Some(end) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |n| n.trim().parse().unwrap());
        if got >= end + 4 + length {
            return (end + 4 + length, buf[end + 4..end + 4 + length].to_vec());
        }
    }
}

#[test]
fn proxied_requests_over_a_tls_upstream_allocate_nothing() {
    let (port, _backend) = start();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The server's start-up (steering attached after the listeners are
    // bound, its heap returned) is over before the handshake is counted.
    let (ping_len, _) = response_len(&mut stream, PING);
    let mut ping = vec![0u8; ping_len];
    for _ in 0..100 {
        exchange(&mut stream, PING, &mut ping);
    }
    std::thread::sleep(Duration::from_secs(1));
    // The first proxied request makes the upstream connection: its
    // handshake (the front's side of it; the backend is another process).
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let (small_len, body) = response_len(&mut stream, SMALL);
    let handshake = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(body, b"over tls backend.test");
    println!("the first request, with the upstream TLS handshake: {handshake} heap allocations");
    let (big_len, body) = response_len(&mut stream, BIG);
    assert_eq!(body.len(), 40_000);

    let mut small = vec![0u8; small_len];
    let mut big = vec![0u8; big_len];
    for _ in 0..200 {
        exchange(&mut stream, SMALL, &mut small);
        exchange(&mut stream, BIG, &mut big);
    }
    let allocations = allocations_in(SMALL_REQUESTS, &mut stream, SMALL, &mut small);
    println!("{SMALL_REQUESTS} proxied requests over TLS: {allocations} heap allocations");
    assert!(small.ends_with(b"\r\n\r\nover tls backend.test"));
    assert_eq!(
        allocations, 0,
        "heap allocations in {SMALL_REQUESTS} requests through a TLS upstream"
    );
    let allocations = allocations_in(BIG_REQUESTS, &mut stream, BIG, &mut big);
    println!("{BIG_REQUESTS} proxied 40 KB answers over TLS: {allocations} heap allocations");
    assert!(big.ends_with(b"0123456789"));
    assert_eq!(
        allocations, 0,
        "heap allocations in {BIG_REQUESTS} 40 KB answers through a TLS upstream"
    );
}
