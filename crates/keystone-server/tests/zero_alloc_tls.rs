//! "No allocation per request" over TLS: the real server runs in this
//! process under a counting global allocator with a TLS listener; after
//! the handshake and a warm-up, 5,000 keep-alive requests (a Lua route
//! reading `ctx.scheme` and `ctx.tls`, and a 4 KiB static file) must cause
//! zero heap allocations. Handshakes allocate (rustls builds its state per
//! connection): their count is reported separately, per handshake.
//!
//! The count is process-wide, so the client must not allocate either: it
//! shakes hands with rustls, then takes the session's keys over
//! (`dangerous_extract_secrets`) and seals and opens its records with
//! keystone-tls' record layer, into fixed buffers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use keystone_tls::records::{record_len, RecordLayer, CONTENT_APPLICATION_DATA, HEADER_BYTES};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

#[path = "support/counting.rs"]
mod counting;
use counting::ALLOCATIONS;

const APP: &str = r#"
return { static = { ["/assets/"] = "assets" },
routes = {
  ["GET /users/{id}"] = function(ctx)
    ctx.headers["X-Scheme"] = ctx.scheme
    ctx.headers["X-Proto"] = ctx.tls.protocol
    ctx.body = "user " .. ctx.params.id .. " over " .. ctx.tls.cipher
  end,
} }
"#;

const REQUEST: &[u8] = b"GET /users/42 HTTP/1.1\r\nHost: a.test\r\n\r\n";
const FILE_REQUEST: &[u8] = b"GET /assets/file.bin HTTP/1.1\r\nHost: a.test\r\n\r\n";
const REQUESTS: u64 = 5_000;
const FILE_REQUESTS: u64 = 1_000;
const HANDSHAKES: u64 = 50;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the server in-process with a TLS listener; returns its port and
/// the roots that trust its certificate.
fn start_server() -> (u16, RootCertStore) {
    let dir = std::env::temp_dir().join(format!("keystone-zero-alloc-tls-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("app.lua"), APP).unwrap();
    std::fs::write(dir.join("assets/file.bin"), vec![b'f'; 4096]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let port = free_port();
    let tls_listen = format!("127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{}", free_port());
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let args = [
        "keystone".to_owned(),
        "serve".into(),
        path("app.lua"),
        "--listen".into(),
        listen,
        "--tls-listen".into(),
        tls_listen,
        "--tls-cert".into(),
        path("cert.pem"),
        "--tls-key".into(),
        path("key.pem"),
        "--workers".into(),
        "1".into(),
    ];
    let cli = keystone_server::cli::Cli::parse_from(args);
    std::thread::spawn(move || keystone_server::run(cli));
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (port, roots)
}

/// A client connection whose records, after the handshake, are sealed
/// and opened without allocating.
struct Client {
    socket: TcpStream,
    layer: RecordLayer,
    out: Vec<u8>,
    incoming: Vec<u8>,
    filled: usize,
}

/// Shakes hands with rustls and sends `warm_up` through it (its answer
/// read whole, which also takes in the session tickets sent before it),
/// then takes the keys over.
fn connect(port: u16, roots: &RootCertStore, warm_up: &[u8]) -> (Client, Vec<u8>) {
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.enable_secret_extraction = true;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut tls =
        ClientConnection::new(Arc::new(config), ServerName::try_from("a.test").unwrap()).unwrap();
    let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    tls.writer().write_all(warm_up).unwrap();
    let mut answer = Vec::new();
    while !complete(&answer) {
        tls.complete_io(&mut socket).unwrap();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = tls.reader().read(&mut chunk) {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
    }
    let version = u16::from(tls.protocol_version().unwrap());
    let layer = RecordLayer::new(version, tls.dangerous_extract_secrets().unwrap()).unwrap();
    let client = Client {
        socket,
        layer,
        out: vec![0; 32 * 1024],
        incoming: vec![0; 64 * 1024],
        filled: 0,
    };
    (client, answer)
}

/// Whether `bytes` hold a whole response framed by Content-Length.
fn complete(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]);
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |n| n.trim().parse().unwrap());
    bytes.len() >= end + 4 + length
}

impl Client {
    /// Sends `request` and reads `response.len()` plaintext bytes of the
    /// answer into `response`, through fixed buffers only.
    fn exchange(&mut self, request: &[u8], response: &mut [u8]) {
        let n = self
            .layer
            .seal(CONTENT_APPLICATION_DATA, request, &mut self.out)
            .unwrap();
        self.socket.write_all(&self.out[..n]).unwrap();
        let mut got = 0;
        while got < response.len() {
            let whole = loop {
                match record_len(&self.incoming[..self.filled]).unwrap() {
                    Some(len) if self.filled >= HEADER_BYTES + len => break HEADER_BYTES + len,
                    _ => {
                        let n = self.socket.read(&mut self.incoming[self.filled..]).unwrap();
                        assert!(n > 0, "the server closed the connection");
                        self.filled += n;
                    }
                }
            };
            let opened = self
                .layer
                .open(&mut self.incoming[..whole])
                .unwrap()
                .expect("a whole record");
            assert_eq!(opened.content_type, CONTENT_APPLICATION_DATA);
            let plain = &self.incoming[opened.start..opened.start + opened.len];
            response[got..got + plain.len()].copy_from_slice(plain);
            got += plain.len();
            self.incoming.copy_within(whole..self.filled, 0);
            self.filled -= whole;
        }
    }
}

/// The same response but for the `Date` value (a second may pass).
fn assert_same(got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len());
    let date = want
        .windows(6)
        .position(|w| w == b"Date: ")
        .expect("a Date line")
        + 6;
    let end = date + "Tue, 01 Dec 2026 18:39:33 GMT".len();
    assert_eq!(got[..date], want[..date]);
    assert_eq!(got[end..], want[end..], "{}", String::from_utf8_lossy(got));
}

#[test]
fn tls_keep_alive_requests_allocate_nothing_after_the_handshake() {
    let (port, roots) = start_server();
    let (mut client, answer) = connect(port, &roots, REQUEST);
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("X-Scheme: https\r\n"), "{text}");
    assert!(text.contains("X-Proto: TLSv1.3\r\n"), "{text}");
    assert!(
        text.ends_with("user 42 over TLS_AES_256_GCM_SHA384"),
        "{text}"
    );
    let mut response = vec![0u8; answer.len()];
    for _ in 0..500 {
        client.exchange(REQUEST, &mut response);
    }
    assert_same(&response, &answer);

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..REQUESTS {
        client.exchange(REQUEST, &mut response);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_same(&response, &answer);

    // A static file over TLS: read into the send buffer, sealed, sent.
    let (mut files, file_answer) = connect(port, &roots, FILE_REQUEST);
    assert!(file_answer.ends_with(&[b'f'; 4096]));
    let mut file_response = vec![0u8; file_answer.len()];
    for _ in 0..100 {
        files.exchange(FILE_REQUEST, &mut file_response);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..FILE_REQUESTS {
        files.exchange(FILE_REQUEST, &mut file_response);
    }
    let file_allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_same(&file_response, &file_answer);

    // Handshakes, client and server together (both in this process).
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..HANDSHAKES {
        let (_fresh, answer) = connect(port, &roots, REQUEST);
        assert!(answer.ends_with(b"TLS_AES_256_GCM_SHA384"));
    }
    let handshake_allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!(
        "TLS: {REQUESTS} keep-alive requests: {allocations} heap allocations; \
         {FILE_REQUESTS} static files: {file_allocations}; \
         a handshake (client and server, with one request through rustls): {} allocations",
        handshake_allocations / HANDSHAKES
    );
    assert_eq!(
        allocations, 0,
        "heap allocations in {REQUESTS} TLS requests"
    );
    assert_eq!(
        file_allocations, 0,
        "heap allocations in {FILE_REQUESTS} static files over TLS"
    );
}
