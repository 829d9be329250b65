//! TLS end to end: `--tls-listen` with `--tls-cert`/`--tls-key` pairs.
//! Certificates come from a throwaway CA made with the `openssl` command;
//! the clients are curl, `openssl s_client` and python3's `ssl` module.
//!
//! What is pinned: TLS 1.2 and 1.3; ALPN offers http/1.1 only (a client
//! offering only h2 is refused with `no_application_protocol`); SNI picks
//! the pair whose names match, the first pair otherwise; tickets resume
//! sessions on any worker; static files and streamed bodies arrive byte
//! for byte; `ctx.scheme` and `ctx.tls` report the connection; cleartext
//! sent to the TLS port gets a 400 in the clear; a broken ClientHello
//! closes only its connection, and a stalled one is closed by the header
//! timeout; a bad pair at start is exit 2 naming the
//! file; SIGHUP re-reads the pairs under load without failing a request,
//! and keeps the old pair when the new one is bad; one process serves
//! cleartext and TLS listeners side by side.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keystone_tests::tls::{
    client_hello, python, Authority, CertPair, Handshake, KeyKind, TlsServer,
};
use keystone_tests::{
    assert_no_panic, free_port, run_keystone, wait_timeout, RawClient, APP_FILE_NAME,
    COMMAND_TIMEOUT, IO_TIMEOUT, STARTUP_TIMEOUT,
};

/// Chunks the `/stream` generator yields, each `STREAM_CHUNK_BYTES` long:
/// 1 MiB in all, many TLS records' worth.
const STREAM_CHUNKS: usize = 256;
const STREAM_CHUNK_BYTES: usize = 4096;
/// The static file: 1 MiB, so it spans many records and many sends.
const STATIC_FILE_BYTES: usize = 1024 * 1024;
/// Bound on how long a SIGHUP may take to reach every worker.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// `/tls` echoes what the handler sees of the connection; `/sum` hashes the
/// request body (as `receive.rs` does) so a body read over TLS is checked
/// without echoing it.
fn app(public: &Path) -> String {
    format!(
        r#"return {{
  static = {{ ["/files/"] = "{public}" }},
  routes = {{
    ["GET /hello"] = function(ctx) ctx.body = "hello over " .. ctx.scheme end,
    ["GET /n/{{n}}"] = function(ctx) ctx.body = "n=" .. ctx.params.n end,
    ["GET /worker"] = function(ctx) ctx.body = "worker=" .. ctx.worker end,
    ["GET /tls"] = function(ctx)
      local tls = ctx.tls
      ctx.body = ctx.scheme .. " " .. tostring(tls and tls.sni) .. " "
        .. tostring(tls and tls.protocol) .. " " .. tostring(tls and tls.cipher)
    end,
    ["POST /sum"] = function(ctx)
      local body, sum = ctx.request.body, 0
      for i = 1, #body do sum = (sum * 31 + body:byte(i)) % 1000000007 end
      ctx.body = #body .. ":" .. sum
    end,
    ["GET /stream"] = function(ctx)
      local n = 0
      ctx.body = function()
        n = n + 1
        if n > {STREAM_CHUNKS} then return nil end
        return string.format("%08d", n) .. string.rep("s", {STREAM_CHUNK_BYTES} - 9) .. "\n"
      end
    end,
  }},
}}"#,
        public = public.display()
    )
}

/// What `/stream` sends, byte for byte.
fn expected_stream() -> Vec<u8> {
    let mut body = Vec::with_capacity(STREAM_CHUNKS * STREAM_CHUNK_BYTES);
    for n in 1..=STREAM_CHUNKS {
        body.extend_from_slice(format!("{n:08}").as_bytes());
        body.extend(std::iter::repeat_n(b's', STREAM_CHUNK_BYTES - 9));
        body.push(b'\n');
    }
    body
}

/// The `/sum` hash of `body`.
fn sum(body: &[u8]) -> String {
    let hash = body.iter().fold(0u64, |sum, &byte| {
        (sum * 31 + u64::from(byte)) % 1_000_000_007
    });
    format!("{}:{hash}", body.len())
}

/// A CA, a site folder, and two leaves: `a` (EC P-256, a.test) and `b`
/// (RSA 2048, b.test and *.b.test).
struct Fixture {
    ca: Authority,
    site: tempfile::TempDir,
    a: CertPair,
    b: CertPair,
}

impl Fixture {
    fn new() -> Fixture {
        let ca = Authority::new();
        let a = ca.issue("a", KeyKind::EcdsaP256, &["a.test"]);
        let b = ca.issue("b", KeyKind::Rsa2048, &["b.test", "*.b.test"]);
        let site = tempfile::tempdir().expect("tempdir");
        Fixture { ca, site, a, b }
    }

    fn app(&self) -> String {
        app(self.site.path())
    }

    /// A server with the pairs `a` then `b`, and `extra` flags.
    fn start(&self, extra: &[&str]) -> TlsServer {
        TlsServer::start(&self.app(), &[&self.a, &self.b], extra)
    }

    fn ca_path(&self) -> &str {
        self.ca.cert().to_str().expect("UTF-8 path")
    }

    /// s_client flags that send SNI `name` and verify the chain and name.
    fn verifying(&self, name: &str) -> Vec<String> {
        [
            "-servername",
            name,
            "-CAfile",
            self.ca_path(),
            "-verify_hostname",
            name,
            "-verify_return_error",
        ]
        .map(String::from)
        .to_vec()
    }
}

/// `GET path` ending the connection, as s_client input.
fn closing_get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").into_bytes()
}

fn strings(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The one response of a handshake that must have completed.
fn only_response(handshake: &Handshake, what: &str) -> keystone_tests::Response {
    let mut responses = handshake.responses();
    assert_eq!(
        responses.len(),
        1,
        "{what}: expected one response (s_client timed out: {}):\n{}",
        handshake.timed_out,
        handshake.all()
    );
    responses.remove(0)
}

// ---------------------------------------------------------------------------
// Clients.

/// curl verifies the chain against the CA and gets the Lua body; so does a
/// curl that offers h2 first (ALPN settles on http/1.1).
#[test]
fn curl_gets_the_lua_body_over_tls() {
    let fixture = Fixture::new();
    let server = fixture.start(&[]);
    let response = server.curl(fixture.ca.cert(), "a.test", "/hello", &[]);
    assert_eq!(response.status, 200);
    assert_eq!(response.version, "HTTP/1.1");
    assert_eq!(response.body_str(), "hello over https");

    let offered_h2 = server.curl(fixture.ca.cert(), "a.test", "/hello", &["--http2"]);
    assert_eq!(offered_h2.status, 200);
    assert_eq!(
        offered_h2.version, "HTTP/1.1",
        "ALPN must not pick h2: only http/1.1 is served"
    );
    assert_eq!(offered_h2.body_str(), "hello over https");
    assert_no_panic(&server.log(), "curl over TLS");
}

/// s_client pinned to TLS 1.2 and to TLS 1.3: each negotiates the version
/// asked for, verifies, and gets three pipelined responses in order.
#[test]
fn s_client_negotiates_tls12_and_tls13() {
    let fixture = Fixture::new();
    let server = fixture.start(&[]);
    let pipelined = b"GET /n/0 HTTP/1.1\r\nHost: a.test\r\n\r\n\
        GET /n/1 HTTP/1.1\r\nHost: a.test\r\n\r\n\
        GET /n/2 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    for (flag, protocol) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let mut args = fixture.verifying("a.test");
        args.push(flag.into());
        let handshake = server.s_client(&strings(&args), pipelined);
        assert_eq!(
            handshake.protocol(),
            Some(protocol),
            "{flag}:\n{}",
            handshake.all()
        );
        assert!(
            handshake.verified(),
            "{flag}: not verified:\n{}",
            handshake.all()
        );
        let bodies: Vec<String> = handshake
            .responses()
            .iter()
            .map(|response| format!("{} {}", response.status, response.body_str()))
            .collect();
        assert_eq!(
            bodies,
            ["200 n=0", "200 n=1", "200 n=2"],
            "{flag}:\n{}",
            handshake.all()
        );
        assert!(!handshake.timed_out, "{flag}: the server never closed");
    }
}

/// ALPN: http/1.1 is chosen when offered (alone or after h2); no ALPN at
/// all still works; a client offering only h2 is refused with the
/// `no_application_protocol` alert (RFC 7301 section 3.2; what rustls
/// does), and h2 is never negotiated.
#[test]
fn alpn_offers_only_http11() {
    let fixture = Fixture::new();
    let server = fixture.start(&[]);
    for (offer, chosen) in [
        (Some("http/1.1"), Some("http/1.1")),
        (Some("h2,http/1.1"), Some("http/1.1")),
        (None, None),
    ] {
        let mut args = fixture.verifying("a.test");
        if let Some(offer) = offer {
            args.extend(["-alpn".into(), offer.into()]);
        }
        let handshake = server.s_client(&strings(&args), &closing_get("/hello"));
        assert_eq!(
            handshake.alpn(),
            chosen,
            "offer {offer:?}:\n{}",
            handshake.all()
        );
        let response = only_response(&handshake, "ALPN");
        assert_eq!(response.body_str(), "hello over https");
    }

    let mut args = fixture.verifying("a.test");
    args.extend(["-alpn".into(), "h2".into()]);
    let handshake = server.s_client(&strings(&args), &closing_get("/hello"));
    assert_ne!(
        handshake.alpn(),
        Some("h2"),
        "h2 negotiated:\n{}",
        handshake.all()
    );
    assert!(
        handshake.all().contains("no application protocol"),
        "an h2-only offer was not refused with no_application_protocol:\n{}",
        handshake.all()
    );
    assert!(
        handshake.responses().is_empty(),
        "an h2-only client got HTTP/1.1 bytes:\n{}",
        handshake.all()
    );
    // The refusal is per connection.
    let after = server.curl(fixture.ca.cert(), "a.test", "/hello", &[]);
    assert_eq!(after.body_str(), "hello over https");
}

/// SNI picks the pair whose names match (exact names); an unknown name and
/// no SNI at all get the first pair. `a` is EC and `b` RSA, so the key
/// size tells them apart as well as the subject.
#[test]
fn sni_picks_the_certificate() {
    let fixture = Fixture::new();
    let server = fixture.start(&[]);
    let cases: [(Option<&str>, &str, KeyKind); 4] = [
        (Some("a.test"), "CN = a.test", KeyKind::EcdsaP256),
        (Some("b.test"), "CN = b.test", KeyKind::Rsa2048),
        (Some("c.test"), "CN = a.test", KeyKind::EcdsaP256),
        (None, "CN = a.test", KeyKind::EcdsaP256),
    ];
    for (name, subject, kind) in cases {
        let args: Vec<String> = match name {
            Some(name @ ("a.test" | "b.test")) => fixture.verifying(name),
            Some(name) => vec!["-servername".into(), name.into()],
            None => vec!["-noservername".into()],
        };
        let handshake = server.s_client(&strings(&args), &closing_get("/hello"));
        let what = format!("SNI {name:?}");
        assert_eq!(
            handshake.subject(),
            Some(subject),
            "{what}:\n{}",
            handshake.all()
        );
        assert_eq!(
            handshake.public_key_bits(),
            Some(kind.public_key_bits()),
            "{what}:\n{}",
            handshake.all()
        );
        if matches!(name, Some("a.test" | "b.test")) {
            assert!(
                handshake.verified(),
                "{what}: not verified:\n{}",
                handshake.all()
            );
        }
        assert_eq!(
            only_response(&handshake, &what).body_str(),
            "hello over https"
        );
    }
}

/// A name under a wildcard SAN (`*.b.test`) matches that pair, as
/// certificate name matching (RFC 6125 section 6.4.3) says it does.
#[test]
fn sni_matches_a_wildcard_name() {
    let fixture = Fixture::new();
    let server = fixture.start(&[]);
    let handshake = server.s_client(
        &strings(&fixture.verifying("www.b.test")),
        &closing_get("/hello"),
    );
    assert_eq!(
        handshake.subject(),
        Some("CN = b.test"),
        "www.b.test did not get the *.b.test pair:\n{}",
        handshake.all()
    );
    assert!(handshake.verified(), "not verified:\n{}", handshake.all());
    assert_eq!(
        only_response(&handshake, "www.b.test").body_str(),
        "hello over https"
    );
}

/// TLS 1.3 session tickets resume on either worker.
#[test]
fn tls13_sessions_resume_across_workers() {
    sessions_resume_across_workers("-tls1_3");
}

/// TLS 1.2 session tickets resume on either worker. In the abbreviated
/// handshake the client speaks last (its Finished, then at once its
/// request), unlike a full TLS 1.2 handshake.
#[test]
fn tls12_sessions_resume_across_workers() {
    sessions_resume_across_workers("-tls1_2");
}

/// Each connection (s_client `flag`) resumes the session the previous one
/// was given, and gets its response, until both workers have resumed one.
fn sessions_resume_across_workers(flag: &str) {
    /// Enough that missing a worker by chance (1 in 2^15 with kernel
    /// hashing) is not a flake.
    const ATTEMPTS_MAX: usize = 16;
    let fixture = Fixture::new();
    let server = fixture.start(&["--workers", "2"]);
    let sessions = tempfile::tempdir().expect("tempdir");
    let session = |n: usize| {
        let path = sessions.path().join(format!("{flag}-{n}.pem"));
        path.to_str().expect("UTF-8 path").to_string()
    };
    let mut args = fixture.verifying("a.test");
    args.extend([flag.into(), "-sess_out".into(), session(0)]);
    let first = server.s_client(&strings(&args), &closing_get("/worker"));
    assert!(
        !first.reused(),
        "{flag}: the first handshake cannot resume:\n{}",
        first.all()
    );
    only_response(&first, flag);

    let mut workers = BTreeSet::new();
    let mut attempts = 0;
    // A resumed TLS 1.2 session gets a fresh ticket only if the server
    // renews it; without one, s_client writes no -sess_out and the
    // ticket in hand is used again.
    let mut current = session(0);
    while attempts < ATTEMPTS_MAX && workers.len() < 2 {
        attempts += 1;
        let mut args = fixture.verifying("a.test");
        args.extend([flag.into(), "-sess_in".into(), current.clone()]);
        args.extend(["-sess_out".into(), session(attempts)]);
        let handshake = server.s_client(&strings(&args), &closing_get("/worker"));
        if Path::new(&session(attempts)).exists() {
            current = session(attempts);
        }
        let what = format!("{flag} attempt {attempts}");
        assert!(
            handshake.reused(),
            "{what}: not resumed:\n{}",
            handshake.all()
        );
        let body = only_response(&handshake, &what).body_str();
        let worker = body
            .strip_prefix("worker=")
            .unwrap_or_else(|| panic!("{what}: body {body:?}"));
        workers.insert(worker.to_string());
    }
    assert_eq!(
        workers.len(),
        2,
        "{flag}: {attempts} resumed connections all reached workers {workers:?}"
    );
}

/// python3's `ssl`: one TLS connection carries 20 GETs and two 100 kB
/// POSTs, never reconnecting; it reports TLS 1.3 and ALPN http/1.1.
#[test]
fn python_keeps_one_tls_connection_alive() {
    const SCRIPT: &str = r#"
import http.client, json, socket, ssl, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=cafile)
context.set_alpn_protocols(["http/1.1"])
tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="a.test")
connection = http.client.HTTPConnection("a.test", port, timeout=10)
connection.sock = tls
results = []
def exchange(method, path, body=None):
    connection.request(method, path, body=body)
    response = connection.getresponse()
    text = response.read().decode()
    if connection.sock is not tls:
        raise SystemExit(f"the server closed the connection after {method} {path}")
    results.append(f"{response.status} {text}")
for i in range(20):
    exchange("GET", f"/n/{i}")
    if i in (7, 15):
        exchange("POST", "/sum", bytes((j * 7) % 251 for j in range(100000)))
print(json.dumps({"version": tls.version(), "alpn": tls.selected_alpn_protocol(), "results": results}))
"#;
    let fixture = Fixture::new();
    let server = fixture.start(&[]);
    let port = server.tls_port().to_string();
    let output = python(SCRIPT, &[&port, fixture.ca_path()], COMMAND_TIMEOUT);
    assert_eq!(output.code, Some(0), "python client:\n{}", output.all());
    let report: serde_json::Value = serde_json::from_str(output.stdout.trim())
        .unwrap_or_else(|error| panic!("python printed {:?}: {error}", output.stdout));
    assert_eq!(report["version"], "TLSv1.3");
    assert_eq!(report["alpn"], "http/1.1");
    let body: Vec<u8> = (0..100_000u32).map(|j| ((j * 7) % 251) as u8).collect();
    let mut expected = Vec::new();
    for i in 0..20 {
        expected.push(format!("200 n={i}"));
        if i == 7 || i == 15 {
            expected.push(format!("200 {}", sum(&body)));
        }
    }
    let results: Vec<String> = report["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|result| result.as_str().expect("a string").to_string())
        .collect();
    assert_eq!(results, expected);
}

// ---------------------------------------------------------------------------
// Bodies.

/// A 1 MiB static file arrives byte for byte, whole and as a range.
#[test]
fn static_file_over_tls_is_byte_exact() {
    let fixture = Fixture::new();
    let bytes: Vec<u8> = (0..STATIC_FILE_BYTES as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(fixture.site.path().join("big.bin"), &bytes).expect("writing big.bin");
    let server = fixture.start(&[]);

    let whole = server.curl(fixture.ca.cert(), "a.test", "/files/big.bin", &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(
        whole.header("content-length"),
        Some(STATIC_FILE_BYTES.to_string().as_str())
    );
    assert_same_bytes(&whole.body, &bytes, "the whole file");

    let range = server.curl(
        fixture.ca.cert(),
        "a.test",
        "/files/big.bin",
        &["-r", "500000-700000"],
    );
    assert_eq!(range.status, 206);
    assert_same_bytes(&range.body, &bytes[500_000..=700_000], "a range");
    assert_no_panic(&server.log(), "static file over TLS");
}

/// Clients that give up on a large download (they close with the file
/// still coming: their kernel resets the connection) leave no connection
/// behind: each one's failed send, shutdown and close complete and its
/// slot and descriptor go back. They used to wait for ever for a shutdown
/// the broken link never asked for.
#[test]
fn clients_that_reset_mid_download_leave_no_connection_behind() {
    const SCRIPT: &str = r#"
import socket, ssl, sys, time
port, cafile = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=cafile)
for i in range(8):
    tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="a.test")
    tls.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: a.test\r\n\r\n")
    tls.recv(1000)
    # The server fills the socket buffers and waits on its send; then
    # the client closes with most of the file unread (a reset).
    time.sleep(0.2)
    tls.close()
print("gave up 8 times")
"#;
    let fixture = Fixture::new();
    fs::write(
        fixture.site.path().join("big.bin"),
        vec![7u8; STATIC_FILE_BYTES],
    )
    .expect("writing big.bin");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin_arg = admin.to_string();
    let server = fixture.start(&["--admin", &admin_arg]);
    let port = server.tls_port().to_string();
    let output = python(SCRIPT, &[&port, fixture.ca_path()], COMMAND_TIMEOUT);
    assert_eq!(output.code, Some(0), "python client:\n{}", output.all());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = keystone_tests::metric(admin, "keystone_connections_open");
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connections still open 10 s after their clients reset\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    // The server goes on serving the file whole.
    let whole = server.curl(fixture.ca.cert(), "a.test", "/files/big.bin", &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body.len(), STATIC_FILE_BYTES);
    assert_no_panic(&server.log(), "clients that reset mid-download");
}

/// Compares two bodies, reporting lengths and the first difference rather
/// than a megabyte of bytes.
fn assert_same_bytes(got: &[u8], expected: &[u8], what: &str) {
    let first_difference = got.iter().zip(expected).position(|(a, b)| a != b);
    assert!(
        got.len() == expected.len() && first_difference.is_none(),
        "{what}: got {} bytes, expected {}; first difference at {first_difference:?}",
        got.len(),
        expected.len()
    );
}

/// A Lua generator's 1 MiB, streamed over TLS, arrives byte for byte.
#[test]
fn streamed_body_over_tls_is_byte_exact() {
    let fixture = Fixture::new();
    let server = fixture.start(&[]);
    let response = server.curl(fixture.ca.cert(), "a.test", "/stream", &[]);
    assert_eq!(response.status, 200);
    assert_same_bytes(&response.body, &expected_stream(), "the stream");
    // And the next request is served.
    let after = server.curl(fixture.ca.cert(), "a.test", "/hello", &[]);
    assert_eq!(after.body_str(), "hello over https");
    assert_no_panic(&server.log(), "stream over TLS");
}

// ---------------------------------------------------------------------------
// The Lua view.

/// `ctx.scheme`, `ctx.tls.sni`, `.protocol` and `.cipher` (OpenSSL's
/// names) for pinned versions and suites; `ctx.tls` is nil in the clear.
#[test]
fn ctx_reports_scheme_and_tls() {
    let fixture = Fixture::new();
    let server = fixture.start(&[]);
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "-servername",
                "a.test",
                "-tls1_3",
                "-ciphersuites",
                "TLS_AES_128_GCM_SHA256",
            ],
            "https a.test TLSv1.3 TLS_AES_128_GCM_SHA256",
        ),
        (
            &[
                "-noservername",
                "-tls1_3",
                "-ciphersuites",
                "TLS_CHACHA20_POLY1305_SHA256",
            ],
            "https nil TLSv1.3 TLS_CHACHA20_POLY1305_SHA256",
        ),
        (
            &[
                "-servername",
                "a.test",
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-AES128-GCM-SHA256",
            ],
            "https a.test TLSv1.2 ECDHE-ECDSA-AES128-GCM-SHA256",
        ),
        (
            &[
                "-servername",
                "a.test",
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
            ],
            "https a.test TLSv1.2 ECDHE-ECDSA-CHACHA20-POLY1305",
        ),
        (
            &[
                "-servername",
                "b.test",
                "-tls1_2",
                "-cipher",
                "ECDHE-RSA-AES256-GCM-SHA384",
            ],
            "https b.test TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384",
        ),
    ];
    for (args, expected) in cases {
        let handshake = server.s_client(args, &closing_get("/tls"));
        let what = format!("s_client {args:?}");
        let body = only_response(&handshake, &what).body_str();
        assert_eq!(body, *expected, "{what}");
        // What Lua sees is what the client negotiated.
        let cipher = expected.rsplit(' ').next().expect("a cipher");
        assert_eq!(
            handshake.cipher(),
            Some(cipher),
            "{what}:\n{}",
            handshake.all()
        );
    }
    let mut clear = server.raw();
    clear.send(b"GET /tls HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(clear.read_response().body_str(), "http nil nil nil");
}

// ---------------------------------------------------------------------------
// Hostile and mistaken peers.

/// Cleartext HTTP sent to the TLS port: a 400 in the clear saying so
/// (nginx: "The plain HTTP request was sent to HTTPS port"), then close.
/// Each such request counts once in `keystone_tls_plain_http_total`; a
/// HEAD gets the 400's head alone.
#[test]
fn cleartext_request_to_tls_port_gets_400() {
    let fixture = Fixture::new();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin_arg = admin.to_string();
    let server = fixture.start(&["--admin", &admin_arg]);
    for n in 1..=3 {
        let mut client = RawClient::connect(server.tls_addr());
        client.send(b"GET /hello HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let response = client.read_response();
        assert_eq!(response.status, 400, "{response:?}");
        assert!(
            response
                .body_str()
                .to_ascii_lowercase()
                .contains("https port"),
            "the 400 does not say the port is HTTPS: {:?}",
            response.body_str()
        );
        client.expect_closed("after the plain-HTTP 400");
        assert_eq!(
            keystone_tests::metric(admin, "keystone_tls_plain_http_total"),
            n,
            "counted once per cleartext request"
        );
    }
    let mut client = RawClient::connect(server.tls_addr());
    client.send(b"HEAD /hello HTTP/1.0\r\n\r\n");
    let response = client.read_response_to("HEAD");
    assert_eq!(response.status, 400, "{response:?}");
    let rest = client.expect_closed("after the plain-HTTP 400 to a HEAD");
    assert!(rest.is_empty(), "a HEAD's 400 carries a body: {rest:?}");
    let after = server.curl(fixture.ca.cert(), "a.test", "/hello", &[]);
    assert_eq!(after.body_str(), "hello over https");
}

/// Records that are not a ClientHello, one too long to be a record, and a
/// real ClientHello cut in half: each connection is closed (after at most
/// an alert, never HTTP), and the one worker goes on serving.
#[test]
fn broken_client_hellos_are_closed() {
    let fixture = Fixture::new();
    let server = fixture.start(&[]);
    let hello = client_hello("a.test");
    let mut junk_record = vec![0x16, 0x03, 0x01, 0x00, 0x20];
    junk_record.extend([0xAB; 32]);
    let mut oversized_record = vec![0x16, 0x03, 0x01, 0xFF, 0xFF];
    oversized_record.extend([0x5A; 64]);
    let mut bad_version = vec![0x16, 0xDE, 0xAD, 0x00, 0x10];
    bad_version.extend([0x00; 16]);
    let cases: [(&str, &[u8], bool); 4] = [
        ("a handshake record of junk", &junk_record, false),
        ("a record longer than TLS allows", &oversized_record, false),
        ("a record with a nonsense version", &bad_version, false),
        (
            "half a ClientHello, then EOF",
            &hello[..hello.len() / 2],
            true,
        ),
    ];
    for (what, bytes, then_eof) in cases {
        let mut client = RawClient::connect(server.tls_addr());
        client.send(bytes);
        if then_eof {
            client.shutdown_write();
        }
        let sent = client.expect_closed(what);
        assert!(
            sent.is_empty() || sent[0] == 0x15,
            "{what}: answered with something other than an alert: {:?}",
            String::from_utf8_lossy(&sent)
        );
        let after = server.curl(fixture.ca.cert(), "a.test", "/hello", &[]);
        assert_eq!(after.body_str(), "hello over https", "after {what}");
    }
    assert_no_panic(&server.log(), "broken ClientHellos");
}

/// Half a ClientHello and then silence: the header timeout covers the
/// handshake, so a stalled one is closed, not held forever.
#[test]
fn stalled_handshake_is_closed_by_the_header_timeout() {
    let fixture = Fixture::new();
    let server = fixture.start(&["--header-timeout", "1"]);
    let hello = client_hello("a.test");
    let mut client = RawClient::connect(server.tls_addr());
    client.send(&hello[..hello.len() / 2]);
    let started = Instant::now();
    client.expect_closed("a stalled handshake");
    assert!(
        started.elapsed() < IO_TIMEOUT,
        "closed only after {:?}",
        started.elapsed()
    );
    let after = server.curl(fixture.ca.cert(), "a.test", "/hello", &[]);
    assert_eq!(after.body_str(), "hello over https");
}

// ---------------------------------------------------------------------------
// Start-up errors.

/// A pair that cannot be used at start is exit 2 with a message naming the
/// file; so are a cert without a key and a TLS listener without a pair.
#[test]
fn bad_pairs_at_start_exit_2_naming_the_file() {
    let fixture = Fixture::new();
    let dir = fixture.ca.dir();
    let app = keystone_tests::write_file(dir, APP_FILE_NAME, &fixture.app());
    let garbage = keystone_tests::write_file(dir, "garbage.pem", "this is not PEM\n");
    let missing = dir.join("missing.pem");
    let paths = |pair: &CertPair| (pair.cert.clone(), pair.key.clone());
    let (a_cert, a_key) = paths(&fixture.a);
    let (b_cert, _) = paths(&fixture.b);
    // (what, cert/key flags, paths of which the message must name one)
    let cases: Vec<(&str, Vec<PathBuf>, Vec<PathBuf>)> = vec![
        (
            "a missing cert",
            vec![missing.clone(), a_key.clone()],
            vec![missing.clone()],
        ),
        (
            "a missing key",
            vec![a_cert.clone(), missing.clone()],
            vec![missing.clone()],
        ),
        (
            "a cert file that is not PEM",
            vec![garbage.clone(), a_key.clone()],
            vec![garbage.clone()],
        ),
        (
            "a key file that is not PEM",
            vec![a_cert.clone(), garbage.clone()],
            vec![garbage.clone()],
        ),
        (
            "a key that is not the cert's",
            vec![b_cert.clone(), a_key.clone()],
            vec![b_cert.clone(), a_key.clone()],
        ),
        ("a cert without a key", vec![a_cert.clone()], vec![]),
        ("a TLS listener without a pair", vec![], vec![]),
    ];
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(what, files, named)| {
            let app = app.clone();
            thread::spawn(move || {
                let mut args: Vec<String> = vec!["serve".into(), app.display().to_string()];
                args.extend(["--listen".into(), format!("127.0.0.1:{}", free_port())]);
                args.extend(["--tls-listen".into(), format!("127.0.0.1:{}", free_port())]);
                args.extend(["--workers".into(), "1".into()]);
                for (index, file) in files.iter().enumerate() {
                    let flag = if index % 2 == 0 {
                        "--tls-cert"
                    } else {
                        "--tls-key"
                    };
                    args.extend([flag.into(), file.display().to_string()]);
                }
                let output = run_keystone(&strings(&args));
                (what, named, output)
            })
        })
        .collect();
    for run in runs {
        let (what, named, output) = run.join().expect("a start-up case panicked");
        assert!(
            !output.timed_out,
            "{what}: keystone served instead of exiting"
        );
        assert_eq!(output.code, Some(2), "{what}:\n{}", output.all());
        assert_no_panic(&output.all(), what);
        if !named.is_empty() {
            assert!(
                named
                    .iter()
                    .any(|path| output.all().contains(&path.display().to_string())),
                "{what}: the message names none of {named:?}:\n{}",
                output.all()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Reload.

/// A python client that opens a fresh TLS connection per request, and
/// keeps one more connection alive from before the reload, printing a JSON
/// line per request (flushed, so the test can watch) until `STOP` exists.
const RELOAD_CLIENT: &str = r#"
import http.client, json, os, socket, ssl, sys, time
port, cafile, old_path, new_path, stop = int(sys.argv[1]), *sys.argv[2:6]
der = lambda path: ssl.PEM_cert_to_DER_cert(open(path).read())
certs = {der(old_path): "old", der(new_path): "new"}
context = ssl.create_default_context(cafile=cafile)
def connect():
    tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="a.test")
    connection = http.client.HTTPConnection("a.test", port, timeout=10)
    connection.sock = tls
    return connection, certs.get(tls.getpeercert(binary_form=True), "other")
def exchange(connection, path):
    if connection.sock is None:
        raise RuntimeError("the connection was closed")
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read().decode()
def report(line):
    print(json.dumps(line), flush=True)
kept, kept_cert = connect()
started, n = time.time(), 0
while not os.path.exists(stop) and time.time() - started < 30:
    n += 1
    t = time.time()
    try:
        connection, cert = connect()
        status, body = exchange(connection, "/worker")
        connection.close()
        report({"t": t, "kind": "fresh", "cert": cert, "status": status, "body": body})
    except Exception as error:
        report({"t": t, "kind": "fresh", "error": repr(error)})
    t = time.time()
    try:
        status, body = exchange(kept, f"/n/{n}")
        report({"t": t, "kind": "kept", "cert": kept_cert, "status": status, "body": body, "expected": f"n={n}"})
    except Exception as error:
        report({"t": t, "kind": "kept", "error": repr(error)})
"#;

/// One line of [`RELOAD_CLIENT`]'s report.
struct ReloadLine {
    time_s: f64,
    kept: bool,
    value: serde_json::Value,
}

/// The reload client running in the background, its report in a file.
struct ReloadClient {
    child: Child,
    dir: tempfile::TempDir,
}

impl ReloadClient {
    fn spawn(
        server: &TlsServer,
        fixture: &Fixture,
        old: &CertPair,
        new: &CertPair,
    ) -> ReloadClient {
        assert!(
            keystone_tests::require_tool("python3", "Debian package python3"),
            "the reload client is python3"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let stop = dir.path().join("stop");
        let stdout = fs::File::create(dir.path().join("report")).expect("report file");
        let stderr = fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let child = Command::new("python3")
            .arg("-c")
            .arg(RELOAD_CLIENT)
            .arg(server.tls_port().to_string())
            .args([fixture.ca.cert(), &old.cert, &new.cert, &stop])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawning python3");
        ReloadClient { child, dir }
    }

    fn lines(&self) -> Vec<ReloadLine> {
        let file = fs::File::open(self.dir.path().join("report")).expect("report file");
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            // The line being written may be incomplete; it is read next time.
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
            .map(|value| ReloadLine {
                time_s: value["t"].as_f64().expect("t"),
                kept: value["kind"] == "kept",
                value,
            })
            .collect()
    }

    /// Waits (bounded) until `enough` holds for the lines so far.
    fn wait_until(&self, what: &str, enough: impl Fn(&[ReloadLine]) -> bool) {
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        while !enough(&self.lines()) {
            assert!(Instant::now() < deadline, "reload client: never {what}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the client and returns every line it reported.
    fn finish(mut self) -> Vec<ReloadLine> {
        fs::write(self.dir.path().join("stop"), "").expect("writing the stop file");
        let status = wait_timeout(&mut self.child, COMMAND_TIMEOUT);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let stderr = fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
        assert!(
            status.is_some_and(|status| status.success()),
            "reload client ended with {status:?}:\n{stderr}"
        );
        self.lines()
    }
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Waits (bounded) until a new handshake is sent `pair`'s certificate.
fn wait_serving(server: &TlsServer, fixture: &Fixture, pair: &CertPair) {
    let expected = pair.cert_pem();
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        let handshake = server.s_client(
            &strings(&fixture.verifying("a.test")),
            &closing_get("/hello"),
        );
        if handshake.certificate_pem().as_deref() == Some(expected.as_str()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} not served {RELOAD_TIMEOUT:?} after SIGHUP:\n{}\nlog:\n{}",
            pair.cert.display(),
            handshake.all(),
            server.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The cert and key files at fixed paths the server was started with.
fn live_pair(fixture: &Fixture, first: &CertPair) -> CertPair {
    let live = CertPair {
        cert: fixture.ca.dir().join("live.crt"),
        key: fixture.ca.dir().join("live.key"),
    };
    first.install_as(&live);
    live
}

/// SIGHUP under load: the files are replaced by a new pair while a client
/// makes a fresh handshake per request and another keeps one connection
/// open. No request fails; new handshakes get the new certificate on both
/// workers; the open connection carries on with the old one.
#[test]
fn sighup_swaps_certificates_under_load() {
    let fixture = Fixture::new();
    let old = fixture.ca.issue("old", KeyKind::EcdsaP256, &["a.test"]);
    let new = fixture.ca.issue("new", KeyKind::EcdsaP256, &["a.test"]);
    let live = live_pair(&fixture, &old);
    let server = TlsServer::start(&fixture.app(), &[&live], &["--workers", "2"]);
    let client = ReloadClient::spawn(&server, &fixture, &old, &new);
    client.wait_until("made 20 requests", |lines| lines.len() >= 20);

    // Every line reported so far finished before the files changed.
    let before = client.lines().len();
    new.install_as(&live);
    server.hangup();
    wait_serving(&server, &fixture, &new);
    // Every worker has had time to take the signal; from here on every
    // fresh handshake must see the new pair.
    thread::sleep(Duration::from_millis(300));
    let settled_s = now_s();
    let after = |line: &ReloadLine| line.time_s > settled_s;
    client.wait_until("reached both workers after the reload", |lines| {
        let workers: BTreeSet<&str> = lines
            .iter()
            .filter(|line| after(line) && !line.kept)
            .filter_map(|line| line.value["body"].as_str())
            .collect();
        workers.len() >= 2 && lines.iter().filter(|line| after(line) && line.kept).count() >= 10
    });
    check_reload_report(&client.finish(), before, settled_s);
    assert_no_panic(&server.log(), "reload under load");
}

/// No request failed; the kept connection kept the old certificate and
/// answered in order; fresh handshakes got the old pair in the first
/// `before` lines, the new one after `settled_s`, and never a third.
fn check_reload_report(lines: &[ReloadLine], before: usize, settled_s: f64) {
    let failures: Vec<&serde_json::Value> = lines
        .iter()
        .map(|line| &line.value)
        .filter(|value| value.get("error").is_some() || value["status"] != 200)
        .collect();
    assert!(
        failures.is_empty(),
        "requests failed across the reload: {failures:?}"
    );
    for (index, line) in lines.iter().enumerate() {
        let cert = line.value["cert"].as_str().expect("cert");
        let expected = if line.kept {
            assert_eq!(line.value["body"], line.value["expected"]);
            Some("old")
        } else if index < before {
            Some("old")
        } else if line.time_s > settled_s {
            Some("new")
        } else {
            None
        };
        match expected {
            Some(expected) => assert_eq!(cert, expected, "{:?}", line.value),
            None => assert_ne!(cert, "other", "{:?}", line.value),
        }
    }
}

/// How many times the log names `path`.
fn mentions(server: &TlsServer, path: &Path) -> usize {
    server.log().matches(&path.display().to_string()).count()
}

/// Sends SIGHUP and waits (bounded) until the log names one of `paths`
/// more often than it did; returns the log.
fn hangup_and_wait_logged(server: &TlsServer, paths: &[&Path]) -> String {
    let before: usize = paths.iter().map(|path| mentions(server, path)).sum();
    server.hangup();
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        let now: usize = paths.iter().map(|path| mentions(server, path)).sum();
        if now > before {
            return server.log();
        }
        assert!(
            Instant::now() < deadline,
            "a bad pair at reload was not logged naming {paths:?}:\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A bad pair at reload (a key that is not the cert's, then a cert file
/// that is not PEM) is logged naming the file and the old pair goes on
/// serving; a good pair after that is taken.
#[test]
fn bad_pair_at_reload_keeps_the_old_certificate() {
    let fixture = Fixture::new();
    let first = fixture.ca.issue("first", KeyKind::EcdsaP256, &["a.test"]);
    let second = fixture.ca.issue("second", KeyKind::EcdsaP256, &["a.test"]);
    let live = live_pair(&fixture, &first);
    let server = TlsServer::start(&fixture.app(), &[&live], &[]);
    wait_serving(&server, &fixture, &first);

    keystone_tests::tls::replace_file(&second.cert, &live.cert);
    hangup_and_wait_logged(&server, &[&live.cert, &live.key]);
    wait_serving(&server, &fixture, &first);

    fs::write(&live.cert, "not a certificate\n").expect("breaking the cert file");
    hangup_and_wait_logged(&server, &[&live.cert]);
    wait_serving(&server, &fixture, &first);

    second.install_as(&live);
    server.hangup();
    wait_serving(&server, &fixture, &second);
    assert_no_panic(&server.log(), "bad pairs at reload");
}

// ---------------------------------------------------------------------------
// Listeners.

/// One process serves a cleartext listener and a TLS listener at once,
/// each connection reporting its own scheme, interleaved on two workers.
#[test]
fn cleartext_and_tls_listeners_in_one_process() {
    let fixture = Fixture::new();
    let server = fixture.start(&["--workers", "2"]);
    let mut clear = server.raw();
    for round in 0..3 {
        clear.send(b"GET /tls HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(
            clear.read_response().body_str(),
            "http nil nil nil",
            "round {round}"
        );
        let secure = server.curl(fixture.ca.cert(), "a.test", "/tls", &[]);
        let body = secure.body_str();
        assert!(
            body.starts_with("https a.test TLSv1.3 TLS_"),
            "round {round}: {body:?}"
        );
    }
}

/// `--listen` and `--tls-listen` repeat: two of each, all served, each
/// with its own scheme.
#[test]
fn listen_flags_repeat() {
    let fixture = Fixture::new();
    let second_clear: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let second_tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let clear_arg = second_clear.to_string();
    let tls_arg = second_tls.to_string();
    let server = fixture.start(&["--listen", &clear_arg, "--tls-listen", &tls_arg]);
    wait_accepting(second_clear, &server);
    wait_accepting(second_tls, &server);
    for addr in [server.addr(), second_clear] {
        let mut client = RawClient::connect(addr);
        client.send(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(
            client.read_response().body_str(),
            "hello over http",
            "{addr}"
        );
    }
    for addr in [server.tls_addr(), second_tls] {
        let handshake = keystone_tests::tls::s_client(
            addr,
            &strings(&fixture.verifying("a.test")),
            &closing_get("/hello"),
        );
        let what = format!("TLS listener {addr}");
        assert_eq!(
            only_response(&handshake, &what).body_str(),
            "hello over https"
        );
    }
}

/// Waits (bounded) until `addr` accepts TCP.
fn wait_accepting(addr: SocketAddr, server: &TlsServer) {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{addr} never accepted; log:\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(25));
    }
}
