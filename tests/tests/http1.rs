//! HTTP/1.1 on the wire: keep-alive and `Connection: close`, HTTP/1.0,
//! pipelining (including requests split at odd byte boundaries), HEAD,
//! request bodies and their limit, malformed requests, and handler errors.

use std::time::Duration;

use keystone_tests::{line_of, request, RawClient, Response, Server};

const APP: &str = r#"return {
  routes = {
    ["GET /"] = function(ctx) ctx.body = "root" end,
    ["GET /n/{n}"] = function(ctx) ctx.body = "n=" .. ctx.params.n end,
    ["POST /echo"] = function(ctx) ctx.body = ctx.request.body end,
    ["GET /fail"] = function(ctx)
      ctx.headers["X-Leak"] = "from-the-failing-request"
      ctx.status = 299
      error("deliberate handler failure")
    end,
    ["GET /clean"] = function(ctx) ctx.body = "clean" end,
  },
}
"#;

/// How long a connection must stay quiet and open to count as kept alive.
const QUIET: Duration = Duration::from_millis(200);

fn get(path: &str, extra_headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra_headers}\r\n")
}

fn post_echo(body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[test]
fn keep_alive_is_the_default_in_http_1_1() {
    let server = Server::start(Some(APP), &[]);
    let mut client = server.raw();
    for i in 0..5 {
        client.send(get(&format!("/n/{i}"), "").as_bytes());
        let response = client.read_response();
        assert_eq!(response.body_str(), format!("n={i}"));
        assert!(!response.closes(), "request {i} got Connection: close");
    }
    client.expect_open(QUIET, "after five keep-alive requests");
}

/// A request's version and Connection header, and whether the server must close after it.
struct ConnectionCase {
    request: &'static str,
    closes: bool,
}

const CONNECTION_CASES: &[ConnectionCase] = &[
    ConnectionCase {
        request: "GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        closes: false,
    },
    ConnectionCase {
        request: "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        closes: true,
    },
    ConnectionCase {
        request: "GET / HTTP/1.1\r\nHost: t\r\nConnection: Close\r\n\r\n",
        closes: true,
    },
    ConnectionCase {
        request: "GET / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n",
        closes: false,
    },
    ConnectionCase {
        request: "GET / HTTP/1.0\r\n\r\n",
        closes: true,
    },
    ConnectionCase {
        request: "GET / HTTP/1.0\r\nHost: t\r\n\r\n",
        closes: true,
    },
    ConnectionCase {
        request: "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        closes: false,
    },
    ConnectionCase {
        request: "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        closes: false,
    },
];

fn check_connection(server: &Server, case: &ConnectionCase) {
    let mut client = server.raw();
    client.send(case.request.as_bytes());
    let response = client.read_response();
    assert_eq!(response.status, 200, "{:?}", case.request);
    assert_eq!(response.body_str(), "root", "{:?}", case.request);
    if case.closes {
        // The server says so and then does so, with nothing after the response.
        assert!(
            response.closes(),
            "{:?}: response lacks Connection: close",
            case.request
        );
        let rest = client.expect_closed(case.request);
        assert!(
            rest.is_empty(),
            "{:?}: bytes after a closing response",
            case.request
        );
    } else {
        assert!(
            !response.closes(),
            "{:?}: response says close",
            case.request
        );
        // Still usable: a second request on it is answered.
        client.send(case.request.as_bytes());
        assert_eq!(
            client.read_response().body_str(),
            "root",
            "{:?}: second request",
            case.request
        );
    }
}

#[test]
fn connection_header_and_http_1_0() {
    let server = Server::start(Some(APP), &[]);
    for case in CONNECTION_CASES {
        check_connection(&server, case);
    }
}

/// `count` requests alternating GET and POST-with-body, and the body each response must carry.
fn pipeline(count: usize) -> (Vec<u8>, Vec<String>) {
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for i in 0..count {
        if i % 2 == 0 {
            bytes.extend_from_slice(get(&format!("/n/{i}"), "").as_bytes());
            expected.push(format!("n={i}"));
        } else {
            let body = format!("body number {i} {}", "x".repeat(i * 7));
            bytes.extend_from_slice(&post_echo(body.as_bytes()));
            expected.push(body);
        }
    }
    (bytes, expected)
}

/// A pipelined batch: how many requests, and where the writes are cut
/// (`None` = one write; `Some(step)` = a cut every `step` bytes).
struct PipelineCase {
    count: usize,
    cut_every_bytes: Option<usize>,
}

const PIPELINE_CASES: &[PipelineCase] = &[
    PipelineCase {
        count: 3,
        cut_every_bytes: None,
    },
    PipelineCase {
        count: 8,
        cut_every_bytes: None,
    },
    PipelineCase {
        count: 16,
        cut_every_bytes: None,
    },
    // Odd steps land cuts inside request lines, header names, the blank line and bodies.
    PipelineCase {
        count: 3,
        cut_every_bytes: Some(1),
    },
    PipelineCase {
        count: 5,
        cut_every_bytes: Some(7),
    },
    PipelineCase {
        count: 16,
        cut_every_bytes: Some(37),
    },
    PipelineCase {
        count: 16,
        cut_every_bytes: Some(101),
    },
];

fn check_pipeline(server: &Server, case: &PipelineCase) {
    let (bytes, expected) = pipeline(case.count);
    let mut client = server.raw();
    match case.cut_every_bytes {
        None => client.send(&bytes),
        Some(step) => {
            let cuts: Vec<usize> = (step..bytes.len()).step_by(step).collect();
            // Cutting every byte of a large batch would take seconds of pauses; the
            // one-byte case is kept small for that reason.
            assert!(cuts.len() < 400, "too many cuts for a quick test");
            client.send_split(&bytes, &cuts);
        }
    }
    for (i, body) in expected.iter().enumerate() {
        let response = client.try_read_response_to("GET").unwrap_or_else(|error| {
            panic!(
                "count {} cut {:?}: response {i} of {}: {error}",
                case.count,
                case.cut_every_bytes,
                expected.len()
            )
        });
        assert_eq!(
            response.status, 200,
            "count {} cut {:?}: response {i}",
            case.count, case.cut_every_bytes
        );
        assert_eq!(
            &response.body_str(),
            body,
            "count {} cut {:?}: response {i} out of order",
            case.count,
            case.cut_every_bytes
        );
    }
    client.expect_open(QUIET, "after a pipelined batch");
}

#[test]
fn pipelined_requests_answered_in_order() {
    let server = Server::start(Some(APP), &[]);
    for case in PIPELINE_CASES {
        check_pipeline(&server, case);
    }
}

#[test]
fn head_sends_headers_only() {
    let server = Server::start(Some(APP), &[]);
    let mut client = server.raw();
    // HEAD then GET in one write: if the HEAD response carried body bytes, the
    // GET's status line would be read out of "root".
    client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET /n/2 HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = client.read_response_to("HEAD");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some("4"),
        "HEAD must carry the GET's length"
    );
    assert_eq!(
        head.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let get = client.read_response();
    assert_eq!(get.status, 200);
    assert_eq!(get.body_str(), "n=2");
    // Last, HEAD with Connection: close: nothing at all may follow its head.
    client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let _ = client.read_response_to("HEAD");
    assert!(
        client.expect_closed("HEAD with close").is_empty(),
        "HEAD response carried body bytes"
    );
}

/// A body limit (None = the default of 1 MiB), a body size, and the status it gets.
struct BodyCase {
    limit_bytes: Option<usize>,
    body_bytes: usize,
    status: u16,
}

const MIB: usize = 1024 * 1024;

const BODY_CASES: &[BodyCase] = &[
    BodyCase {
        limit_bytes: None,
        body_bytes: 0,
        status: 200,
    },
    BodyCase {
        limit_bytes: None,
        body_bytes: 1,
        status: 200,
    },
    BodyCase {
        limit_bytes: None,
        body_bytes: 4096,
        status: 200,
    },
    BodyCase {
        limit_bytes: None,
        body_bytes: 100_000,
        status: 200,
    },
    BodyCase {
        limit_bytes: None,
        body_bytes: MIB,
        status: 200,
    },
    BodyCase {
        limit_bytes: None,
        body_bytes: MIB + 1,
        status: 413,
    },
    BodyCase {
        limit_bytes: Some(16),
        body_bytes: 16,
        status: 200,
    },
    BodyCase {
        limit_bytes: Some(16),
        body_bytes: 17,
        status: 413,
    },
    BodyCase {
        limit_bytes: Some(16),
        body_bytes: 100 * MIB,
        status: 413,
    },
];

/// A body of `len` bytes that is not all one byte, so an offset mistake shows.
fn body_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

fn check_body(server: &Server, case: &BodyCase) {
    let what = format!(
        "limit {:?}, body {} bytes",
        case.limit_bytes, case.body_bytes
    );
    let mut client = server.raw();
    if case.status == 413 {
        // Only the head goes out: the server can refuse on Content-Length alone,
        // and may close before a body it will not read arrives.
        client.send(
            format!(
                "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                case.body_bytes
            )
            .as_bytes(),
        );
        let response = client.read_response();
        assert_eq!(response.status, 413, "{what}");
        return;
    }
    let body = body_of(case.body_bytes);
    client.send(&post_echo(&body));
    let response = client.read_response();
    assert_eq!(response.status, 200, "{what}");
    assert_eq!(response.body.len(), body.len(), "{what}: echoed length");
    assert!(response.body == body, "{what}: echoed bytes differ");
    // The connection is still in step: another request on it is answered.
    client.send(get("/n/1", "").as_bytes());
    assert_eq!(
        client.read_response().body_str(),
        "n=1",
        "{what}: request after the body"
    );
}

#[test]
fn request_bodies_and_the_body_limit() {
    let default_server = Server::start(Some(APP), &[]);
    let small_server = Server::start(Some(APP), &["--max-body-bytes", "16"]);
    for case in BODY_CASES {
        let server = if case.limit_bytes.is_some() {
            &small_server
        } else {
            &default_server
        };
        check_body(server, case);
    }
}

#[test]
fn body_arriving_in_many_pieces() {
    let server = Server::start(Some(APP), &[]);
    let body = body_of(50_000);
    let request = post_echo(&body);
    let mut client = server.raw();
    // Cuts inside the head and at several points of the body.
    client.send_split(&request, &[3, 40, 61, 999, 20_001, 49_999]);
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert!(
        response.body == body,
        "body reassembled wrongly ({} bytes back)",
        response.body.len()
    );
}

/// Bytes that are not a valid HTTP/1.x request; each gets 400 and a close.
/// Each carries a valid `Host` so that its one defect, not a missing Host, is what is refused.
const MALFORMED: &[&[u8]] = &[
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nNo-Colon-Here\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"GET / HTTP/1.1\r\nHost: t\r\nBad Header Name: x\r\n\r\n",
    b"\x00\x01\x02\x03\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\nHost: t\r\n\r\n",
    b"GET / HTTX/1.1\r\nHost: t\r\n\r\n",
    // RFC 9112 section 3.2: an HTTP/1.1 request without Host gets 400.
    b"GET / HTTP/1.1\r\n\r\n",
];

fn check_malformed(server: &Server, input: &[u8]) {
    let what = String::from_utf8_lossy(input).into_owned();
    let mut client = server.raw();
    client.send(input);
    let response = client
        .try_read_response_to("GET")
        .unwrap_or_else(|e| panic!("{what:?}: no 400 response: {e}"));
    assert_eq!(response.status, 400, "{what:?}");
    client.expect_closed(&format!("{what:?} after 400"));
}

#[test]
fn malformed_requests_get_400_and_close() {
    let server = Server::start(Some(APP), &[]);
    for input in MALFORMED {
        check_malformed(&server, input);
    }
    // A good request after a bad one, on a valid connection: one peer's garbage
    // does not hurt the worker.
    let mut client = server.raw();
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response().body_str(), "root");
    keystone_tests::assert_no_panic(&server.log(), "after malformed requests");
}

#[test]
fn malformed_request_after_good_ones_in_a_pipeline() {
    // The good requests ahead of the bad one are answered, in order; then 400; then close.
    let server = Server::start(Some(APP), &[]);
    let mut client = server.raw();
    client.send(b"GET /n/1 HTTP/1.1\r\nHost: t\r\n\r\nGET /n/2 HTTP/1.1\r\nHost: t\r\n\r\nNOT HTTP AT ALL\r\n\r\n");
    assert_eq!(client.read_response().body_str(), "n=1");
    assert_eq!(client.read_response().body_str(), "n=2");
    assert_eq!(client.read_response().status, 400);
    client.expect_closed("after the malformed request");
}

fn check_failure_response(response: &Response) {
    assert_eq!(response.status, 500);
    let body = response.body_str();
    assert!(
        body.len() < 256,
        "500 body is not short ({} bytes): {body:?}",
        body.len()
    );
    assert!(
        !body.to_ascii_lowercase().contains("traceback"),
        "500 body leaks the traceback: {body:?}"
    );
    assert!(
        !body.contains("app.lua"),
        "500 body leaks the app's file name: {body:?}"
    );
    assert!(
        response.header("x-leak").is_none(),
        "500 carries a header the failed handler set"
    );
}

#[test]
fn handler_error_is_500_logged_and_the_connection_stays_clean() {
    let server = Server::start(Some(APP), &[]);
    let mut client = server.raw();
    client.send(get("/fail", "").as_bytes());
    check_failure_response(&client.read_response());

    // The next request on the same keep-alive connection gets a clean ctx:
    // nothing the failed handler set (header, status) reaches it.
    client.send(get("/clean", "").as_bytes());
    let next = client.read_response();
    assert_eq!(next.status, 200);
    assert_eq!(next.body_str(), "clean");
    assert!(
        next.header("x-leak").is_none(),
        "header from the failed request leaked: {next:?}"
    );

    // The traceback is in the log, pointing at the line that failed.
    let line = line_of(APP, "deliberate handler failure");
    let needle = format!("app.lua:{line}");
    let log = server.wait_for_log(&needle, Duration::from_secs(2));
    assert!(log.contains(&needle), "log lacks {needle}:\n{log}");
    assert!(
        log.contains("deliberate handler failure"),
        "log lacks the error message:\n{log}"
    );

    // Failures repeat without wearing the worker down, on new connections too.
    for _ in 0..20 {
        check_failure_response(&request(
            server.addr(),
            &get("/fail", "Connection: close\r\n"),
        ));
    }
    let after = request(server.addr(), &get("/clean", "Connection: close\r\n"));
    assert_eq!(after.body_str(), "clean");
}

#[test]
fn handler_error_inside_a_pipeline() {
    let server = Server::start(Some(APP), &[]);
    let mut client = RawClient::connect(server.addr());
    let batch = [
        get("/n/1", ""),
        get("/fail", ""),
        get("/clean", ""),
        get("/fail", ""),
        get("/n/5", ""),
    ]
    .concat();
    client.send(batch.as_bytes());
    assert_eq!(client.read_response().body_str(), "n=1");
    check_failure_response(&client.read_response());
    let clean = client.read_response();
    assert_eq!(clean.body_str(), "clean");
    assert!(
        clean.header("x-leak").is_none(),
        "leaked header in a pipeline"
    );
    check_failure_response(&client.read_response());
    assert_eq!(client.read_response().body_str(), "n=5");
}

#[test]
fn connection_slots_are_recycled_under_max_connections() {
    // With room for only two connections, fifty in a row must all be served:
    // a slot left behind by a closed connection (clean close, client reset, or a
    // close after 400) would run the server out within a few.
    let server = Server::start(Some(APP), &["--max-connections", "2"]);
    for i in 0..50 {
        let mut client = server.raw();
        match i % 3 {
            0 => {
                client.send(get(&format!("/n/{i}"), "Connection: close\r\n").as_bytes());
                assert_eq!(
                    client.read_response().body_str(),
                    format!("n={i}"),
                    "connection {i}"
                );
                client.expect_closed("Connection: close");
            }
            1 => {
                // The client walks away from a keep-alive connection after one answer.
                client.send(get(&format!("/n/{i}"), "").as_bytes());
                assert_eq!(
                    client.read_response().body_str(),
                    format!("n={i}"),
                    "connection {i}"
                );
            }
            _ => {
                client.send(b"NOT HTTP\r\n\r\n");
                assert_eq!(client.read_response().status, 400, "connection {i}");
                client.expect_closed("after 400");
            }
        }
    }
}
