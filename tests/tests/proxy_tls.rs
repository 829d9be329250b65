//! Upstream TLS end to end: a pool with `tls = true` talks HTTPS to real
//! HTTPS backends — second `keystone serve` processes with a TLS listener,
//! their certificates made by `openssl` and signed by a throwaway test CA
//! (tests/src/tls.rs). The backend counts its handshakes
//! (`keystone_tls_connections_total` on its admin listener) and echoes
//! what it saw of TLS (`ctx.scheme`, `ctx.tls.sni`).

use std::net::SocketAddr;
use std::time::Duration;

use keystone_tests::tls::{Authority, KeyKind, TlsServer};
use keystone_tests::{
    assert_no_panic, free_port, metric, run_keystone, write_file, RawClient, Server,
};

/// What the backends answer: the scheme and SNI they saw, a request
/// body's length and first bytes, a body far larger than one TLS record.
const BACKEND: &str = r#"return { routes = {
  ["GET /hello"] = function(ctx)
    ctx.body = "hello over " .. ctx.scheme .. " sni=" .. tostring(ctx.tls and ctx.tls.sni)
  end,
  ["POST /echo"] = function(ctx)
    local body = ctx.request.body
    ctx.body = "got " .. #body .. " " .. body:sub(1, 12)
  end,
  ["GET /big"] = function(ctx) ctx.body = string.rep("0123456789", 100000) end,
} }"#;

/// The metric line counting a keystone's completed TLS handshakes.
const HANDSHAKES: &str = "keystone_tls_connections_total{path=\"userspace\"}";

/// A backend with a TLS listener serving `pair`, and its admin address.
fn backend(pair: &keystone_tests::tls::CertPair) -> (TlsServer, SocketAddr) {
    backend_with(pair, &[])
}

fn backend_with(pair: &keystone_tests::tls::CertPair, extra: &[&str]) -> (TlsServer, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin_arg = admin.to_string();
    let mut args = vec!["--admin", &admin_arg];
    args.extend_from_slice(extra);
    let server = TlsServer::start(BACKEND, &[pair], &args);
    (server, admin)
}

/// A front keystone whose routes all go to pool `pool`, declared as
/// `declaration` (the inside of `upstreams = { ... }`).
fn front(declaration: &str, pool: &str) -> (Server, SocketAddr) {
    let app = format!(
        r#"return {{
      upstreams = {{ {declaration} }},
      routes = {{
        ["GET /{{*path}}"] = function(ctx) ctx.upstream = "{pool}" end,
        ["POST /{{*path}}"] = function(ctx) ctx.upstream = "{pool}" end,
      }},
    }}"#
    );
    Server::start_with_admin(Some(&app), &[])
}

fn lua_path(path: &std::path::Path) -> String {
    path.to_str().expect("a UTF-8 path").replace('\\', "\\\\")
}

fn get(client: &mut RawClient, path: &str) -> keystone_tests::Response {
    client.send(format!("GET {path} HTTP/1.1\r\nHost: front\r\n\r\n").as_bytes());
    client.read_response()
}

#[test]
fn a_tls_pool_proxies_gets_and_bodies_over_few_reused_connections() {
    let ca = Authority::new();
    let pair = ca.issue("backend", KeyKind::EcdsaP256, &["backend.test"]);
    let (backend, backend_admin) = backend(&pair);
    let declaration = format!(
        r#"secure = {{ peers = {{ "127.0.0.1:{}" }}, tls = true, sni = "backend.test", ca = "{}", keepalive = 4 }}"#,
        backend.tls_port(),
        lua_path(ca.cert())
    );
    let (front, front_admin) = front(&declaration, "secure");

    // GETs over one client connection, then over fresh ones: every one
    // reuses the kept-alive upstream connection.
    for round in 0..3 {
        let mut client = front.raw();
        for _ in 0..10 {
            let response = get(&mut client, "/hello");
            assert_eq!(response.status, 200, "round {round}: {response:?}");
            assert_eq!(response.body_str(), "hello over https sni=backend.test");
        }
    }
    // A request body larger than a TLS record goes up encrypted.
    let mut client = front.raw();
    let body = "b".repeat(100_000);
    client.send(
        format!(
            "POST /echo HTTP/1.1\r\nHost: front\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let response = client.read_response();
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body_str(), "got 100000 bbbbbbbbbbbb");
    // A 1 MB answer comes down through the buffer: a TLS upstream's bytes
    // are ciphertext on its socket, so nothing is spliced.
    let response = get(&mut client, "/big");
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 1_000_000);
    assert!(response.body.chunks(10).all(|ten| ten == b"0123456789"));
    assert_eq!(
        metric(front_admin, "keystone_proxied_spliced_bytes_total"),
        0
    );

    let handshakes = metric(backend_admin, HANDSHAKES);
    assert!(
        (1..=2).contains(&handshakes),
        "32 proxied requests took {handshakes} upstream handshakes"
    );
    assert_no_panic(&front.log(), "the front");
    assert_no_panic(&backend.log(), "the backend");
}

#[test]
fn verification_failures_answer_502_and_log_why() {
    let ca = Authority::new();
    let stranger = Authority::new();
    let pair = ca.issue("backend", KeyKind::EcdsaP256, &["backend.test"]);
    let (backend, _) = backend(&pair);
    let port = backend.tls_port();
    let declaration = format!(
        r#"
        untrusted = {{ peers = {{ "127.0.0.1:{port}" }}, tls = true, sni = "backend.test", ca = "{stranger}" }},
        misnamed = {{ peers = {{ "127.0.0.1:{port}" }}, tls = true, sni = "other.test", ca = "{ca}" }},
        system = {{ peers = {{ "127.0.0.1:{port}" }}, tls = true, sni = "backend.test" }},
        "#,
        stranger = lua_path(stranger.cert()),
        ca = lua_path(ca.cert()),
    );
    let app = format!(
        r#"return {{
      upstreams = {{ {declaration} }},
      routes = {{ ["GET /{{pool}}"] = function(ctx) ctx.upstream = ctx.params.pool end }},
    }}"#
    );
    let (front, admin) = Server::start_with_admin(Some(&app), &[]);
    for pool in ["untrusted", "misnamed", "system"] {
        let response = keystone_tests::curl(&[&front.url(&format!("/{pool}"))]);
        assert_eq!(response.status, 502, "{pool}: {response:?}");
    }
    let log = front.wait_for_log("upstream system: peer", Duration::from_secs(5));
    let line = |pool: &str| {
        log.lines()
            .find(|line| line.contains(&format!("upstream {pool}: peer 127.0.0.1:{port}: ")))
            .unwrap_or_else(|| panic!("no log line for {pool}: {log}"))
    };
    // Another CA's certificate (the test CAs share a name, so webpki
    // finds the signature bad rather than the issuer unknown).
    assert!(
        line("untrusted").contains("TLS handshake failed: invalid peer certificate: "),
        "{log}"
    );
    assert!(
        line("misnamed").contains(
            "TLS handshake failed: invalid peer certificate: certificate not valid for name \"other.test\""
        ),
        "{log}"
    );
    assert!(
        line("system").contains("TLS handshake failed: invalid peer certificate: UnknownIssuer"),
        "the system roots do not know the test CA: {log}"
    );
    let metrics_line = format!("keystone_upstream_failures_total{{upstream=\"untrusted\",peer=\"127.0.0.1:{port}\",reason=\"tls\"}}");
    assert_eq!(metric(admin, &metrics_line), 1);
    assert_no_panic(&log, "after verification failures");
}

#[test]
fn a_failed_handshake_moves_on_to_another_peer() {
    let ca = Authority::new();
    let stranger = Authority::new();
    let good = ca.issue("good", KeyKind::EcdsaP256, &["backend.test"]);
    let bad = stranger.issue("bad", KeyKind::EcdsaP256, &["backend.test"]);
    let (good, _) = backend(&good);
    let (bad, _) = backend(&bad);
    let declaration = format!(
        r#"pair = {{ peers = {{ "127.0.0.1:{}", "127.0.0.1:{}" }}, tls = true, sni = "backend.test", ca = "{}", retries = 1 }}"#,
        bad.tls_port(),
        good.tls_port(),
        lua_path(ca.cert())
    );
    let (front, _) = front(&declaration, "pair");
    // Whichever peer round robin picks first, every answer is the good
    // one's: the untrusted peer fails its handshake (and is taken out).
    for _ in 0..4 {
        let response = keystone_tests::curl(&[&front.url("/hello")]);
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.body_str(), "hello over https sni=backend.test");
    }
    let log = front.wait_for_log("TLS handshake failed", Duration::from_secs(5));
    assert!(
        log.contains(&format!(
            "peer 127.0.0.1:{}: TLS handshake failed",
            bad.tls_port()
        )),
        "{log}"
    );
}

#[test]
fn verify_false_takes_any_certificate_and_warns_at_load() {
    let stranger = Authority::new();
    let pair = stranger.issue("backend", KeyKind::EcdsaP256, &["somewhere.else"]);
    let (backend, _) = backend(&pair);
    let declaration = format!(
        r#"open = {{ peers = {{ "127.0.0.1:{}" }}, tls = true, verify = false }}"#,
        backend.tls_port()
    );
    let (front, _) = front(&declaration, "open");
    let mut client = front.raw();
    for _ in 0..3 {
        let response = get(&mut client, "/hello");
        assert_eq!(response.status, 200, "{response:?}");
        // An IP literal peer without `sni`: no SNI is sent.
        assert_eq!(response.body_str(), "hello over https sni=nil");
    }
    let log = front.log();
    assert!(
        log.contains("upstream open: verify = false: its peers' TLS certificates are not checked"),
        "{log}"
    );
}

#[test]
fn the_sni_is_the_peers_host_name_unless_declared() {
    let ca = Authority::new();
    let pair = ca.issue(
        "backend",
        KeyKind::EcdsaP256,
        &["localhost", "backend.test"],
    );
    let (backend, _) = backend(&pair);
    let ca_path = lua_path(ca.cert());
    let port = backend.tls_port();
    let app = format!(
        r#"return {{
      upstreams = {{
        by_host = {{ peers = {{ "localhost:{port}" }}, tls = true, ca = "{ca_path}" }},
        declared = {{ peers = {{ "localhost:{port}" }}, tls = true, sni = "backend.test", ca = "{ca_path}" }},
      }},
      routes = {{ ["GET /{{pool}}"] = function(ctx)
        ctx.upstream = ctx.params.pool
        ctx.upstream_path = "/hello"
      end }},
    }}"#
    );
    let front = Server::start(Some(&app), &[]);
    let seen = |pool: &str| keystone_tests::curl(&[&front.url(&format!("/{pool}"))]).body_str();
    assert_eq!(seen("by_host"), "hello over https sni=localhost");
    assert_eq!(seen("declared"), "hello over https sni=backend.test");
}

#[test]
fn check_lists_tls_pools_and_an_unreadable_ca_fails_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new();
    std::fs::copy(ca.cert(), dir.path().join("ca.pem")).unwrap();
    // `ca` is relative to the app's directory.
    let app = write_file(
        dir.path(),
        "app.lua",
        r#"return {
          upstreams = {
            api = { peers = { "127.0.0.1:8443" }, tls = true, sni = "api.test", ca = "ca.pem" },
            open = { peers = { "localhost:8444" }, tls = true, verify = false },
          },
          routes = {},
        }"#,
    );
    let out = run_keystone(&["check", app.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let ca_in_dir = dir.path().join("ca.pem");
    assert!(
        out.stdout.contains(&format!(
            "upstream api (RoundRobin, keepalive 32, retries 1, tls (sni api.test, verified against {})): 127.0.0.1:8443",
            ca_in_dir.display()
        )),
        "{}",
        out.all()
    );
    assert!(
        out.stdout.contains("tls (sni per peer, verify off)"),
        "{}",
        out.all()
    );

    let app = write_file(
        dir.path(),
        "missing.lua",
        r#"return {
          upstreams = { api = { peers = { "127.0.0.1:8443" }, tls = true, ca = "nowhere/ca.pem" } },
          routes = {},
        }"#,
    );
    let out = run_keystone(&["check", app.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    let missing = dir.path().join("nowhere/ca.pem");
    assert!(
        out.stderr.contains(&format!(
            "upstreams.api.ca: cannot read {}",
            missing.display()
        )),
        "{}",
        out.all()
    );
}

#[test]
fn a_pooled_connection_the_backend_closed_is_not_reused() {
    let ca = Authority::new();
    let pair = ca.issue("backend", KeyKind::EcdsaP256, &["backend.test"]);
    // The backend closes idle connections after a second: close_notify,
    // then its FIN, which the pooled connection's probe receive reads.
    let (backend, admin) = backend_with(&pair, &["--keepalive-timeout", "1"]);
    let declaration = format!(
        r#"secure = {{ peers = {{ "127.0.0.1:{}" }}, tls = true, sni = "backend.test", ca = "{}" }}"#,
        backend.tls_port(),
        lua_path(ca.cert())
    );
    let (front, _) = front(&declaration, "secure");
    let mut client = front.raw();
    assert_eq!(get(&mut client, "/hello").status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    for _ in 0..3 {
        let response = get(&mut client, "/hello");
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.body_str(), "hello over https sni=backend.test");
    }
    assert_eq!(
        metric(admin, HANDSHAKES),
        2,
        "one new connection after the close"
    );
    assert_no_panic(&front.log(), "after the backend closed a pooled connection");
}

#[test]
fn a_handshake_that_never_answers_is_a_connect_timeout() {
    // A peer that accepts the TCP connection and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // It holds the connection well past the 1 s timeout (6 s), so a
    // response that only came when the peer hung up is told apart even on
    // a loaded machine.
    let silent = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(6));
        drop(stream);
    });
    let declaration = format!(
        r#"silent = {{ peers = {{ "127.0.0.1:{port}" }}, tls = true, sni = "backend.test", connect_timeout = 1, retries = 0 }}"#
    );
    let (front, _) = front(&declaration, "silent");
    let started = std::time::Instant::now();
    let response = keystone_tests::curl(&[&front.url("/hello")]);
    assert_eq!(response.status, 504, "{response:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let log = front.wait_for_log("connect timed out", Duration::from_secs(5));
    assert!(
        log.contains(&format!(
            "upstream silent: peer 127.0.0.1:{port}: connect timed out (in the TLS handshake)"
        )),
        "{log}"
    );
    silent.join().unwrap();
}

#[test]
fn active_health_checks_speak_tls_too() {
    let ca = Authority::new();
    let stranger = Authority::new();
    let pair = ca.issue("backend", KeyKind::EcdsaP256, &["backend.test"]);
    let (backend, admin) = backend(&pair);
    let port = backend.tls_port();
    let app = format!(
        r#"return {{
      upstreams = {{
        good = {{ peers = {{ "127.0.0.1:{port}" }}, tls = true, sni = "backend.test", ca = "{ca}",
                 health_check = {{ path = "/hello", interval = 0.3 }} }},
        bad = {{ peers = {{ "127.0.0.1:{port}" }}, tls = true, sni = "backend.test", ca = "{stranger}",
                health_check = {{ path = "/hello", interval = 0.3 }} }},
      }},
      routes = {{ ["GET /{{pool}}"] = function(ctx)
        ctx.upstream = ctx.params.pool
        ctx.upstream_path = "/hello"
      end }},
    }}"#,
        ca = lua_path(ca.cert()),
        stranger = lua_path(stranger.cert()),
    );
    let front = Server::start(Some(&app), &[]);
    let log = front.wait_for_log(
        "health check /hello TLS handshake failed",
        Duration::from_secs(5),
    );
    assert!(
        log.contains(&format!(
            "upstream bad: peer 127.0.0.1:{port}: health check /hello TLS handshake failed: invalid peer certificate"
        )),
        "{log}"
    );
    assert!(!log.contains("upstream good: peer"), "{log}");
    // The good pool's checks (run from the once-a-second tick, each on a
    // connection of its own) shook hands: within a tick or two, later on a
    // loaded machine (a fixed 1.5 s wait failed under CI's load).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(admin, HANDSHAKES) < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "no health check handshake in 10 s\n{}",
            front.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let response = keystone_tests::curl(&[&front.url("/good")]);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body_str(), "hello over https sni=backend.test");
    // The bad pool's only peer is out of rotation: 502 without a connect.
    assert_eq!(keystone_tests::curl(&[&front.url("/bad")]).status, 502);
    assert!(
        front.log().contains("upstream bad: no live peer"),
        "{}",
        front.log()
    );
}
