//! `keystone serve` with no app serves the bundled example: the headline
//! check a person runs first, seen through curl, ureq and raw TCP.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use keystone_tests::{
    curl, curl_body, from_ureq, get_request, read_log, request, spawn_logged, ureq_agent,
    wait_timeout, Response, Server, STARTUP_TIMEOUT,
};

#[test]
fn headline_curl_users_7() {
    // Exactly the README's first command: `curl -s localhost:PORT/users/7` prints `{"id":7}`.
    // `localhost` (not 127.0.0.1) on purpose: curl must find the server through name resolution.
    let server = Server::start(None, &[]);
    let printed = curl_body(&[&format!("localhost:{}/users/7", server.port())]);
    assert_eq!(printed, r#"{"id":7}"#);
}

/// One request to the bundled app and the response it must get.
struct Case {
    method: &'static str,
    path: &'static str,
    status: u16,
    content_type: Option<&'static str>,
    body: &'static str,
}

const CASES: &[Case] = &[
    Case {
        method: "GET",
        path: "/",
        status: 200,
        content_type: Some("text/plain; charset=utf-8"),
        body: "Hello, World!",
    },
    Case {
        method: "GET",
        path: "/json",
        status: 200,
        content_type: Some("application/json"),
        body: r#"{"message":"Hello, World!"}"#,
    },
    Case {
        method: "GET",
        path: "/users/7",
        status: 200,
        content_type: Some("application/json"),
        body: r#"{"id":7}"#,
    },
    Case {
        method: "GET",
        path: "/users/1234567",
        status: 200,
        content_type: Some("application/json"),
        body: r#"{"id":1234567}"#,
    },
    Case {
        method: "GET",
        path: "/json?pretty=1",
        status: 200,
        content_type: Some("application/json"),
        body: r#"{"message":"Hello, World!"}"#,
    },
    Case {
        method: "GET",
        path: "/no/such/page",
        status: 404,
        content_type: None,
        body: "",
    },
    Case {
        method: "POST",
        path: "/json",
        status: 405,
        content_type: None,
        body: "",
    },
];

fn check(client: &str, case: &Case, response: &Response) {
    let what = format!("{client}: {} {}", case.method, case.path);
    assert_eq!(response.status, case.status, "{what}");
    if let Some(content_type) = case.content_type {
        assert_eq!(
            response.header("content-type"),
            Some(content_type),
            "{what}"
        );
    }
    if case.status == 200 {
        assert_eq!(response.body_str(), case.body, "{what}");
    }
    if case.status == 405 {
        let allow = response
            .header("allow")
            .unwrap_or_else(|| panic!("{what}: 405 without Allow"));
        assert!(allow.contains("GET"), "{what}: Allow {allow:?} lacks GET");
    }
    assert_eq!(response.header("server"), Some("keystone"), "{what}");
}

#[test]
fn bundled_routes_through_three_clients() {
    let server = Server::start(None, &[]);
    let agent = ureq_agent();
    for case in CASES {
        let url = server.url(case.path);
        check("curl", case, &curl(&["-X", case.method, &url]));
        let ureq_response = match case.method {
            "GET" => agent.get(&url).call(),
            "POST" => agent.post(&url).send_empty(),
            other => unreachable!("no {other} case"),
        };
        check(
            "ureq",
            case,
            &from_ureq(ureq_response.expect("ureq request")),
        );
        let raw = format!(
            "{} {} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            case.method, case.path
        );
        check("raw", case, &request(server.addr(), &raw));
    }
}

#[test]
fn listen_defaults_to_127_0_0_1_8080() {
    // The default address is part of the contract, but 8080 is a popular port:
    // when something else holds it this test cannot tell anything, so it says so and stops.
    let default: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
    if TcpListener::bind(default).is_err() {
        eprintln!("note: 127.0.0.1:8080 is in use here; skipping the default --listen check");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_logged(
        &["serve".into(), "--workers".into(), "1".into()],
        dir.path(),
    );
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut connected = false;
    while Instant::now() < deadline && child.try_wait().expect("try_wait").is_none() {
        if TcpStream::connect_timeout(&default, Duration::from_millis(200)).is_ok() {
            connected = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let response = connected.then(|| request(default, &get_request("/")));
    let _ = child.kill();
    let _ = wait_timeout(&mut child, Duration::from_secs(5));
    assert!(
        connected,
        "nothing listened on {default}; log:\n{}",
        read_log(dir.path())
    );
    let response = response.expect("response");
    assert_eq!(response.status, 200);
    assert_eq!(response.body_str(), "Hello, World!");
}
