//! Issue 4, hostile peers end to end: request framing (RFC 9112) and smuggling
//! vectors, response framing, the limit flags at limit and limit+1, the
//! timeouts (slowloris, stalled body, idle keep-alive, a client that never
//! reads), and how failing Lua is contained (errors, runaway loops, malformed
//! response headers or statuses never reaching the wire).
//!
//! Every vector is one table row with its exact status and whether the
//! connection must close. A closing row is sent with a valid request right
//! behind it in the same write: nothing may ever answer those bytes.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use keystone_tests::vectors::{assert_framing, check_vector, row, Vector, FOLLOW, QUIET};
use keystone_tests::{assert_no_panic, line_of, Ending, RawClient, Server};

const APP: &str = r#"return {
  routes = {
    ["GET /ping"] = function(ctx) ctx.body = "pong" end,
    ["POST /echo"] = function(ctx) ctx.body = ctx.request.body end,
    ["POST /trailer"] = function(ctx)
      ctx.body = ctx.request.body .. "|" .. tostring(ctx.request.headers["x-trailer"])
    end,
    ["GET /status/{code}"] = function(ctx) ctx.status = tonumber(ctx.params.code) end,
    ["GET /status-with-body/{code}"] = function(ctx)
      ctx.status = tonumber(ctx.params.code)
      ctx.body = "a body the status forbids"
    end,
    ["GET /big"] = function(ctx) ctx.body = string.rep("x", 8 * 1024 * 1024) end,
    ["GET /fail"] = function(ctx)
      ctx.headers["X-Leak"] = "from-the-failing-request"
      error("deliberate failure in a handler")
    end,
    ["GET /clean"] = function(ctx)
      ctx.body = "clean " .. ctx.status .. " " .. tostring(ctx.headers["X-Leak"])
    end,
    ["GET /spin"] = function(ctx) while true do end end,
    ["GET /spin-jit"] = function(ctx) local x = 0 while true do x = x + 1 end end,
    ["GET /spin-pcall"] = function(ctx)
      while true do pcall(function() local y = 0 while true do y = y + 1 end end) end
    end,
    ["GET /header-crlf"] = function(ctx) ctx.headers["X-A"] = "a\r\nX-Injected: crlf" end,
    ["GET /header-lf"] = function(ctx) ctx.headers["X-A"] = "a\nX-Injected: lf" end,
    ["GET /header-nul"] = function(ctx) ctx.headers["X-A"] = "a\0X-Injected: nul" end,
    ["GET /header-name-space"] = function(ctx) ctx.headers["X-Injected Name"] = "v" end,
    ["GET /header-name-colon"] = function(ctx) ctx.headers["X-Injected: x\r\nY"] = "v" end,
    ["GET /status-1000"] = function(ctx) ctx.status = 1000 end,
    ["GET /status-99"] = function(ctx) ctx.status = 99 end,
    ["GET /status-100"] = function(ctx) ctx.status = 100 ctx.body = "X-Injected: interim" end,
    -- Recursion through C functions that call back into Lua: LuaJIT does
    -- not bound the C stack, the engine does (a 500, never a dead process).
    ["GET /c-gsub"] = function(ctx) local function f(s) return (s:gsub(".", f)) end ctx.body = f("x") end,
    ["GET /c-gsub-table"] = function(ctx)
      local t; t = setmetatable({}, { __index = function() return (string.gsub("x", ".", t)) end })
      ctx.body = string.gsub("x", ".", t)
    end,
    ["GET /c-format"] = function(ctx)
      local mt = {}; mt.__tostring = function(v) return ("%s"):format(v) end
      ctx.body = string.format("%s", setmetatable({}, mt))
    end,
    ["GET /c-sort"] = function(ctx) local function f() table.sort({ 3, 2, 1 }, function(a, b) f() return a < b end) end f() end,
    ["GET /c-resume"] = function(ctx)
      local function f() local ok, err = coroutine.resume(coroutine.create(f)) if not ok then error(err, 0) end end
      f()
    end,
    ["GET /c-wrap"] = function(ctx) local function f() coroutine.wrap(f)() end f() end,
  },
}
"#;

const FRAMING: &[Vector] = &[
    row(
        "Content-Length body",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        200,
        Some("hello"),
        false,
    ),
    row(
        "Content-Length 0",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        200,
        Some(""),
        false,
    ),
    row(
        "chunked with extensions and a trailer",
        b"POST /trailer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1;flag\r\nhello\r\n6;q=\"a;b\"\r\n world\r\n0\r\nX-Trailer: dropped\r\n\r\n",
        200,
        Some("hello world|nil"),
        false,
    ),
    row(
        "chunked, coding name in another case",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
        200,
        Some("a"),
        false,
    ),
    row(
        "chunked, empty body",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        200,
        Some(""),
        false,
    ),
    row(
        "Content-Length and Transfer-Encoding",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "Transfer-Encoding and Content-Length",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "differing Content-Length headers",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        400,
        None,
        true,
    ),
    row(
        "differing Content-Length list",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 2\r\n\r\nab",
        400,
        None,
        true,
    ),
    row(
        "non-numeric Content-Length",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "negative Content-Length",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "signed Content-Length",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello",
        400,
        None,
        true,
    ),
    row(
        "hex Content-Length",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0x5\r\n\r\nhello",
        400,
        None,
        true,
    ),
    row(
        "overflowing Content-Length",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        400,
        None,
        true,
    ),
    // Only chunked is decoded: any other coding is 501 (nginx too), never
    // a compressed body handed on as if it were plain.
    row(
        "Transfer-Encoding gzip alone",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
        None,
        true,
    ),
    row(
        "gzip then chunked",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        501,
        None,
        true,
    ),
    row(
        "chunked not the final coding",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
        501,
        None,
        true,
    ),
    row(
        "chunked applied twice",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "unknown coding before chunked",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n",
        501,
        None,
        true,
    ),
    row(
        "invalid chunk size",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "chunk size overflowing 64 bits",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000001\r\na\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "chunk size of many digits",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffffffffff\r\na\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "chunk size over the body limit",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\n",
        413,
        None,
        true,
    ),
    row(
        "missing CRLF after chunk data",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "obs-fold",
        b"GET /ping HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n folded\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "obs-fold with a tab",
        b"GET /ping HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\tfolded\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "NUL in a header value",
        b"GET /ping HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "bare CR in a header value",
        b"GET /ping HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "control byte in a header value",
        b"GET /ping HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "DEL in a header value",
        b"GET /ping HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "tab inside a header value is fine",
        b"GET /ping HTTP/1.1\r\nHost: t\r\nX-A: a\tb\r\n\r\n",
        200,
        Some("pong"),
        false,
    ),
    row(
        "space between header name and colon",
        b"GET /ping HTTP/1.1\r\nHost : t\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "tab between header name and colon",
        b"GET /ping HTTP/1.1\r\nHost: t\r\nX-A\t: b\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "HTTP/1.1 without Host",
        b"GET /ping HTTP/1.1\r\nX-A: b\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "two Host headers",
        b"GET /ping HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "absolute-form target",
        b"GET http://example.com/ping HTTP/1.1\r\nHost: example.com\r\n\r\n",
        200,
        Some("pong"),
        false,
    ),
    row(
        "HTTP/2.0 request line",
        b"GET /ping HTTP/2.0\r\nHost: t\r\n\r\n",
        505,
        None,
        true,
    ),
    row(
        "HTTP/1.2 request line",
        b"GET /ping HTTP/1.2\r\nHost: t\r\n\r\n",
        505,
        None,
        true,
    ),
    row(
        "an expectation other than 100-continue",
        b"GET /ping HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\n\r\n",
        417,
        None,
        true,
    ),
];

#[test]
fn framing_vectors() {
    let server = Server::start(Some(APP), &["--header-timeout", "2", "--body-timeout", "2"]);
    for vector in FRAMING {
        check_vector(&server, vector);
    }
    assert_no_panic(&server.log(), "after the framing vectors");
}

#[test]
fn chunked_body_split_across_writes() {
    let server = Server::start(Some(APP), &[]);
    let request: &[u8] = b"POST /trailer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=v\r\nWiki\r\n5\r\npedia\r\ne\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: t\r\n\r\n";
    // Cuts inside the size line, the extension, the data, the CRLFs and the trailer.
    let cuts = [64, 66, 69, 72, 75, 77, 80, 83, 85, 90, 100, 104, 106, 110];
    let mut client = server.raw();
    client.send_split(request, &cuts);
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.body_str(), "Wikipedia in\r\n\r\nchunks.|nil");
    client.send(FOLLOW);
    assert_eq!(client.read_response().body_str(), "pong");
}

#[test]
fn expect_100_continue() {
    let server = Server::start(Some(APP), &["--max-body-bytes", "1024"]);
    // The interim answer comes before the client sends any body byte.
    let mut client = server.raw();
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = client.read_response();
    assert_eq!(interim.status, 100, "{interim:?}");
    assert_eq!(interim.version, "HTTP/1.1");
    client.send(b"hello");
    let last = client.read_response();
    assert_eq!(last.status, 200);
    assert_eq!(last.body_str(), "hello");
    client.send(FOLLOW);
    assert_eq!(client.read_response().body_str(), "pong");

    // Over the body limit: 413 straight away, never 100, then close.
    let mut client = server.raw();
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\nExpect: 100-continue\r\n\r\n",
    );
    let refused = client.read_response();
    assert_eq!(refused.status, 413, "{refused:?}");
    assert!(refused.closes(), "413 lacks Connection: close");
    let rest = client.expect_closed("after 413 to Expect");
    assert!(
        rest.is_empty(),
        "bytes after 413: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// Requests whose responses must have no body, each sent with `FOLLOW` behind
/// it so a stray body byte would garble the next status line.
#[test]
fn bodyless_responses() {
    let server = Server::start(Some(APP), &[]);
    let cases: &[(&str, &str, u16)] = &[
        ("HEAD", "/ping", 200),
        ("GET", "/status/204", 204),
        ("GET", "/status-with-body/204", 204),
        ("GET", "/status/304", 304),
        ("GET", "/status-with-body/304", 304),
        // 205 Reset Content: no content (RFC 9110 §15.3.6), length 0.
        ("GET", "/status-with-body/205", 205),
    ];
    for &(method, path, status) in cases {
        let what = format!("{method} {path}");
        let mut client = server.raw();
        let mut bytes = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes();
        bytes.extend_from_slice(FOLLOW);
        client.send(&bytes);
        let response = client.read_response_to(method);
        assert_eq!(response.status, status, "{what}");
        assert_framing(&response, &what);
        assert!(
            response.header("transfer-encoding").is_none(),
            "{what}: {response:?}"
        );
        if status == 204 {
            assert!(
                response.header("content-length").is_none(),
                "{what}: 204 with Content-Length: {response:?}"
            );
        }
        if method == "HEAD" {
            assert_eq!(response.header("content-length"), Some("4"), "{what}");
        }
        if status == 205 {
            assert_eq!(response.header("content-length"), Some("0"), "{what}");
            assert!(response.body.is_empty(), "{what}: {response:?}");
        }
        let follow = client.try_read_response_to("GET").unwrap_or_else(|error| {
            panic!("{what}: body bytes leaked into the next response: {error}")
        });
        assert_eq!(follow.body_str(), "pong", "{what}");
    }
}

// ---------------------------------------------------------------------------
// Limits.

/// A `GET /ping` head of exactly `total_bytes` (request line, headers and the blank line).
fn head_of_bytes(total_bytes: usize) -> Vec<u8> {
    let prefix = b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Pad: ";
    let pad = total_bytes - prefix.len() - 4;
    let mut bytes = prefix.to_vec();
    bytes.extend(std::iter::repeat_n(b'a', pad));
    bytes.extend_from_slice(b"\r\n\r\n");
    bytes
}

/// A `GET /ping` with `count` headers in all, Host included.
fn head_with_headers(count: usize) -> Vec<u8> {
    let mut text = String::from("GET /ping HTTP/1.1\r\nHost: t\r\n");
    for i in 1..count {
        text.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

/// A `GET` whose target is exactly `target_bytes` long.
fn head_with_target(target_bytes: usize) -> Vec<u8> {
    let target = format!("/ping?{}", "q".repeat(target_bytes - "/ping?".len()));
    format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

fn post_of(body_bytes: usize) -> Vec<u8> {
    let mut bytes =
        format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {body_bytes}\r\n\r\n")
            .into_bytes();
    bytes.extend(std::iter::repeat_n(b'b', body_bytes));
    bytes
}

fn chunked_post_of(body_bytes: usize) -> Vec<u8> {
    let mut bytes =
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    // Two chunks, so the limit is checked on the running total, not per chunk.
    let first = body_bytes / 2;
    for size in [first, body_bytes - first] {
        bytes.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        bytes.extend(std::iter::repeat_n(b'c', size));
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes
}

const HEADER_BYTES_MAX: usize = 256;
const HEADERS_MAX: usize = 6;
const URI_BYTES_MAX: usize = 40;
const BODY_BYTES_MAX: usize = 16;

/// One request near a limit, its status, and whether the server must close.
struct LimitCase {
    what: &'static str,
    request: Vec<u8>,
    status: u16,
    closes: bool,
}

fn limit_case(what: &'static str, request: Vec<u8>, status: u16) -> LimitCase {
    // Every refusal closes: the server cannot know where the next request starts.
    let closes = status != 200;
    LimitCase {
        what,
        request,
        status,
        closes,
    }
}

/// Every limit flag at once, so each family also shows the others do not interfere.
fn limits_server() -> Server {
    Server::start(
        Some(APP),
        &[
            "--max-header-bytes",
            &HEADER_BYTES_MAX.to_string(),
            "--max-headers",
            &HEADERS_MAX.to_string(),
            "--max-uri-bytes",
            &URI_BYTES_MAX.to_string(),
            "--max-body-bytes",
            &BODY_BYTES_MAX.to_string(),
        ],
    )
}

/// Sends each case with `FOLLOW` behind it (one server per family, so a crash
/// in one family does not hide the others).
fn check_limits(cases: &[LimitCase]) {
    let server = limits_server();
    for case in cases {
        let what = case.what;
        let mut client = server.raw();
        let mut bytes = case.request.clone();
        bytes.extend_from_slice(FOLLOW);
        client.send(&bytes);
        let response = client
            .try_read_response_to("GET")
            .unwrap_or_else(|error| panic!("{what}: {error}"));
        assert_eq!(response.status, case.status, "{what}: {response:?}");
        if case.closes {
            assert!(response.closes(), "{what}: lacks Connection: close");
            let rest = client.expect_closed(what);
            assert!(
                rest.is_empty(),
                "{what}: the request behind it was answered"
            );
        } else {
            assert_eq!(
                client.read_response().body_str(),
                "pong",
                "{what}: request behind it"
            );
        }
    }
    // And the server is still there for a new client.
    let mut client = server.raw();
    client.send(FOLLOW);
    assert_eq!(
        client.read_response().body_str(),
        "pong",
        "after the limit cases"
    );
    assert_no_panic(&server.log(), "limits");
}

#[test]
fn max_header_bytes_at_limit_and_limit_plus_one() {
    check_limits(&[
        limit_case("head at the limit", head_of_bytes(HEADER_BYTES_MAX), 200),
        limit_case("head at limit+1", head_of_bytes(HEADER_BYTES_MAX + 1), 431),
        limit_case(
            "head far over the limit",
            head_of_bytes(4 * HEADER_BYTES_MAX),
            431,
        ),
    ]);
}

#[test]
fn max_headers_at_limit_and_limit_plus_one() {
    check_limits(&[
        limit_case("headers at the limit", head_with_headers(HEADERS_MAX), 200),
        limit_case(
            "headers at limit+1",
            head_with_headers(HEADERS_MAX + 1),
            431,
        ),
    ]);
}

#[test]
fn max_uri_bytes_at_limit_and_limit_plus_one() {
    check_limits(&[
        limit_case("target at the limit", head_with_target(URI_BYTES_MAX), 200),
        limit_case(
            "target at limit+1",
            head_with_target(URI_BYTES_MAX + 1),
            414,
        ),
    ]);
}

#[test]
fn max_body_bytes_at_limit_and_limit_plus_one() {
    check_limits(&[
        limit_case("body at the limit", post_of(BODY_BYTES_MAX), 200),
        limit_case("body at limit+1", post_of(BODY_BYTES_MAX + 1), 413),
        limit_case(
            "chunked body at the limit",
            chunked_post_of(BODY_BYTES_MAX),
            200,
        ),
        limit_case(
            "chunked body at limit+1",
            chunked_post_of(BODY_BYTES_MAX + 1),
            413,
        ),
    ]);
}

#[test]
fn max_connections_queues_the_third_connection() {
    let server = Server::start(Some(APP), &["--workers", "1", "--max-connections", "2"]);
    let mut first = server.raw();
    let mut second = server.raw();
    for client in [&mut first, &mut second] {
        client.send(FOLLOW);
        assert_eq!(client.read_response().body_str(), "pong");
    }
    // The kernel completes the handshake, but the worker does not take it.
    let mut third = server.raw();
    third.send(FOLLOW);
    third.expect_open(
        Duration::from_millis(500),
        "third connection while two are held",
    );
    drop(first);
    let started = Instant::now();
    let response = third.read_response();
    assert_eq!(
        response.body_str(),
        "pong",
        "third connection once a slot freed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "third connection served only after {:?}",
        started.elapsed()
    );
    second.send(FOLLOW);
    assert_eq!(
        second.read_response().body_str(),
        "pong",
        "second connection still served"
    );
    assert_no_panic(&server.log(), "max connections");
}

#[test]
fn max_pipeline_only_paces_a_deep_pipeline() {
    let server = Server::start(Some(APP), &["--max-pipeline", "4"]);
    let mut client = server.raw();
    let mut bytes = Vec::new();
    for i in 0..16 {
        if i % 2 == 0 {
            bytes.extend_from_slice(FOLLOW);
        } else {
            bytes.extend_from_slice(
                format!(
                    "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\nbody-{i:02}",
                    7
                )
                .as_bytes(),
            );
        }
    }
    client.send(&bytes);
    for i in 0..16 {
        let expected = if i % 2 == 0 {
            "pong".to_string()
        } else {
            format!("body-{i:02}")
        };
        let response = client
            .try_read_response_to("GET")
            .unwrap_or_else(|error| panic!("pipelined response {i}: {error}"));
        assert_eq!(response.body_str(), expected, "pipelined response {i}");
    }
    client.expect_open(QUIET, "after the deep pipeline");
}

// ---------------------------------------------------------------------------
// Timeouts.

const TIMEOUT_FLAGS: &[&str] = &[
    "--header-timeout",
    "1",
    "--body-timeout",
    "1",
    "--keepalive-timeout",
    "1",
    "--send-timeout",
    "1",
];
/// A timeout of 1 s must not fire before this (the client had its second)...
const TIMEOUT_EARLIEST: Duration = Duration::from_millis(950);
/// ...and must have fired by this (a coarse tick may add up to a second or two).
const TIMEOUT_LATEST: Duration = Duration::from_millis(3500);
/// A bystander's request must be answered within this while a hostile peer waits...
const BYSTANDER_LATENCY_MAX: Duration = Duration::from_millis(200);
/// ...all but this share of them: on a shared two-core box a scheduler hiccup
/// can delay one request past 200 ms. A worker held up by the hostile peer
/// would instead stall every request until the one-second timeout fires, which
/// `BYSTANDER_STALL` catches without exception.
const BYSTANDER_SLOW_PERCENT_MAX: usize = 5;
const BYSTANDER_STALL: Duration = Duration::from_millis(900);

/// A second client sending requests on its own connection the whole time a
/// hostile one is being timed out; it records how long each answer took.
struct Bystander {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<Duration>>,
}

impl Bystander {
    fn start(addr: SocketAddr) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut latencies = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                // A new connection each time: the bystander's own keep-alive
                // connection would be closed by the one-second idle timeout.
                let mut client = RawClient::connect(addr);
                let started = Instant::now();
                client.send(b"GET /ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                let response = client.read_response();
                latencies.push(started.elapsed());
                assert_eq!(
                    response.body_str(),
                    "pong",
                    "bystander request {}",
                    latencies.len()
                );
                thread::sleep(Duration::from_millis(50));
            }
            latencies
        });
        Bystander { stop, thread }
    }

    fn finish(self, what: &str) {
        self.stop.store(true, Ordering::SeqCst);
        let latencies = self.thread.join().expect("bystander thread panicked");
        assert!(
            latencies.len() >= 5,
            "{what}: bystander got only {} answers",
            latencies.len()
        );
        let slowest = latencies.iter().max().copied().unwrap_or_default();
        assert!(
            slowest < BYSTANDER_STALL,
            "{what}: a bystander request stalled for {slowest:?}"
        );
        let slow = latencies
            .iter()
            .filter(|latency| **latency >= BYSTANDER_LATENCY_MAX)
            .count();
        assert!(
            slow * 100 <= latencies.len() * BYSTANDER_SLOW_PERCENT_MAX,
            "{what}: {slow} of {} bystander requests took {BYSTANDER_LATENCY_MAX:?} or more: {latencies:?}",
            latencies.len()
        );
    }
}

/// Reads until the server closes, checking when it did and what it sent.
fn expect_timed_out(client: &mut RawClient, started: Instant, what: &str) -> Vec<u8> {
    let bytes = client.expect_closed(what);
    let elapsed = started.elapsed();
    assert!(
        (TIMEOUT_EARLIEST..TIMEOUT_LATEST).contains(&elapsed),
        "{what}: closed after {elapsed:?}"
    );
    bytes
}

fn assert_408(bytes: &[u8], what: &str) {
    let text = String::from_utf8_lossy(bytes);
    assert!(text.starts_with("HTTP/1.1 408 "), "{what}: got {text:?}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{what}: 408 lacks Connection: close: {text:?}"
    );
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "{what}: more than one response: {text:?}"
    );
}

#[test]
fn slowloris_head_gets_408_and_close() {
    let server = Server::start(Some(APP), TIMEOUT_FLAGS);
    let bystander = Bystander::start(server.addr());

    // Part of a head, then silence.
    let mut client = server.raw();
    let started = Instant::now();
    client.send(b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Slow");
    let bytes = expect_timed_out(&mut client, started, "partial head then silence");
    assert_408(&bytes, "partial head then silence");

    // A byte every 200 ms: each read is recent, but the head as a whole is late.
    let mut client = server.raw();
    let mut writer = client.clone_stream();
    let stop = Arc::new(AtomicBool::new(false));
    let trickler = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let head =
                b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for byte in head.iter() {
                if stop.load(Ordering::SeqCst) || writer.write_all(&[*byte]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let started = Instant::now();
    let bytes = expect_timed_out(&mut client, started, "trickled head");
    stop.store(true, Ordering::SeqCst);
    trickler.join().expect("trickler");
    assert_408(&bytes, "trickled head");

    bystander.finish("slowloris");
    assert_no_panic(&server.log(), "slowloris");
}

#[test]
fn stalled_body_gets_408_and_close() {
    let server = Server::start(Some(APP), TIMEOUT_FLAGS);
    let bystander = Bystander::start(server.addr());
    let cases: &[(&str, &[u8])] = &[
        (
            "Content-Length body stopping half-way",
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello",
        ),
        (
            "chunked body stopping half-way",
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nwo",
        ),
        (
            "chunked body stopping before its trailer ends",
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
        ),
    ];
    for &(what, request) in cases {
        let mut client = server.raw();
        let started = Instant::now();
        client.send(request);
        let bytes = expect_timed_out(&mut client, started, what);
        assert_408(&bytes, what);
    }
    bystander.finish("stalled body");
}

#[test]
fn slow_but_steady_body_is_not_timed_out() {
    // The body timeout is between two reads, not for the whole body: five
    // bytes 400 ms apart take 2 s with a one-second body timeout.
    let server = Server::start(Some(APP), TIMEOUT_FLAGS);
    let mut client = server.raw();
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n");
    for byte in b"hello" {
        thread::sleep(Duration::from_millis(400));
        client.send(&[*byte]);
    }
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.body_str(), "hello");
}

#[test]
fn idle_connections_are_closed() {
    let server = Server::start(Some(APP), TIMEOUT_FLAGS);
    let bystander = Bystander::start(server.addr());

    // After a response: closed without a word (no 408 a client could take as
    // the answer to a request it is sending at that moment).
    let mut client = server.raw();
    client.send(FOLLOW);
    assert_eq!(client.read_response().body_str(), "pong");
    let started = Instant::now();
    let bytes = expect_timed_out(&mut client, started, "idle keep-alive connection");
    assert!(
        bytes.is_empty(),
        "idle keep-alive connection got bytes: {:?}",
        String::from_utf8_lossy(&bytes)
    );

    // A connection that never sends a byte: closed too (a 408 is allowed here).
    let mut client = server.raw();
    let started = Instant::now();
    let bytes = expect_timed_out(&mut client, started, "silent new connection");
    if !bytes.is_empty() {
        assert_408(&bytes, "silent new connection");
    }
    bystander.finish("idle connections");
}

#[test]
fn client_that_never_reads_is_closed_by_the_send_timeout() {
    let server = Server::start(Some(APP), TIMEOUT_FLAGS);
    let bystander = Bystander::start(server.addr());
    let mut client = server.raw();
    client.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    // Socket buffers fill within milliseconds; then the server waits one send
    // timeout for progress that never comes.
    thread::sleep(Duration::from_secs(4));
    let full_bytes = 8 * 1024 * 1024;
    match client.read_to_end() {
        Ending::Closed(bytes) => assert!(
            bytes.len() < full_bytes,
            "the whole {} bytes arrived: the server waited for the reader instead of timing out",
            bytes.len()
        ),
        Ending::StillOpen(bytes) => panic!(
            "connection still open after the send timeout ({} bytes read)",
            bytes.len()
        ),
    }
    bystander.finish("client that never reads");
    // The worker is fine afterwards, big responses included.
    let mut client = server.raw();
    client.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response().body.len(), full_bytes);
    assert_no_panic(&server.log(), "send timeout");
}

// ---------------------------------------------------------------------------
// Failing Lua.

/// A handler that must answer 500, and what the log must then hold: the
/// handler's `app.lua:LINE` (found by a piece of its source), or a phrase.
struct Failing {
    path: &'static str,
    source_needle: Option<&'static str>,
    log_needle: &'static str,
}

const fn failing(
    path: &'static str,
    source_needle: Option<&'static str>,
    log_needle: &'static str,
) -> Failing {
    Failing {
        path,
        source_needle,
        log_needle,
    }
}

const FAILING: &[Failing] = &[
    failing("/fail", Some("deliberate failure"), "deliberate failure"),
    failing("/header-crlf", Some("X-Injected: crlf"), "X-A"),
    failing("/header-lf", Some("X-Injected: lf"), "X-A"),
    failing("/header-nul", Some("X-Injected: nul"), "X-A"),
    failing("/header-name-space", Some("X-Injected Name"), "header"),
    failing("/header-name-colon", Some("X-Injected: x"), "header"),
    failing("/status-1000", Some("ctx.status = 1000"), "1000"),
    failing("/status-99", Some("ctx.status = 99"), "99"),
    // An interim status can never be a final response: a client would wait
    // for another one. Refused where it is set, with the line.
    failing("/status-100", Some("ctx.status = 100"), "got 100"),
    failing(
        "/c-gsub",
        Some("/c-gsub\"]"),
        "C stack overflow (string.gsub",
    ),
    failing(
        "/c-gsub-table",
        Some("__index = function() return"),
        "C stack overflow (string.gsub",
    ),
    // Reached through a tail call from C: no position, the traceback has it.
    failing("/c-format", None, "C stack overflow (string.format"),
    // The comparator's Lua frames fill LuaJIT's own stack first.
    failing("/c-sort", Some("/c-sort\"]"), "stack overflow"),
    failing("/c-resume", None, "C stack overflow (coroutine.resume"),
    failing(
        "/c-wrap",
        Some("/c-wrap\"]"),
        "C stack overflow (coroutine.resume",
    ),
];

fn check_failing(server: &Server, keep_alive: &mut RawClient, case: &Failing) {
    let path = case.path;
    // On a closing connection, to see the raw bytes.
    let mut client = server.raw();
    client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes());
    let raw = client.expect_closed(path);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 500 "), "{path}: {text:?}");
    assert!(
        !text.contains("X-Injected"),
        "{path}: injected bytes on the wire: {text:?}"
    );
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{path}: {text:?}");
    assert!(raw.len() < 512, "{path}: long 500: {text:?}");

    // On a keep-alive connection: the next request sees a clean ctx.
    keep_alive.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let response = keep_alive.read_response();
    assert_eq!(response.status, 500, "{path}: {response:?}");
    assert_framing(&response, path);
    assert!(
        response.header("x-leak").is_none(),
        "{path}: failed handler's header sent"
    );
    assert!(
        response.header("x-a").is_none(),
        "{path}: failed handler's header sent"
    );
    keep_alive.send(b"GET /clean HTTP/1.1\r\nHost: t\r\n\r\n");
    let clean = keep_alive.read_response();
    assert_eq!(clean.status, 200, "{path}: request after it");
    assert_eq!(clean.body_str(), "clean 200 nil", "{path}: ctx not clean");

    let log = server.wait_for_log(case.log_needle, Duration::from_secs(2));
    let lines: Vec<&str> = log.lines().filter(|line| line.contains(path)).collect();
    assert!(
        !lines.is_empty(),
        "{path}: no log line names the request:\n{log}"
    );
    let logged = lines.join("\n");
    assert!(
        logged.contains(case.log_needle),
        "{path}: log lacks {:?}:\n{log}",
        case.log_needle
    );
    if let Some(source_needle) = case.source_needle {
        let needle = format!("app.lua:{}", line_of(APP, source_needle));
        assert!(
            logged.contains(&needle),
            "{path}: log lacks {needle}:\n{log}"
        );
    }
}

#[test]
fn failing_handlers_answer_500_and_nothing_malformed_reaches_the_wire() {
    let server = Server::start(Some(APP), &[]);
    let mut keep_alive = server.raw();
    for case in FAILING {
        check_failing(&server, &mut keep_alive, case);
    }
    assert_no_panic(&server.log(), "failing handlers");
}

#[test]
fn runaway_handlers_get_503_and_the_worker_keeps_serving() {
    let server = Server::start(Some(APP), &["--lua-budget-ms", "200"]);
    for path in ["/spin", "/spin-jit", "/spin-pcall", "/spin-jit", "/spin"] {
        let mut client = server.raw();
        let started = Instant::now();
        client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let response = client.read_response();
        let elapsed = started.elapsed();
        assert_eq!(response.status, 503, "{path}: {response:?}");
        assert!(
            elapsed < Duration::from_millis(1500),
            "{path}: stopped only after {elapsed:?}"
        );
        // Same connection, then a fresh one: the worker is alive and clean.
        client.send(FOLLOW);
        assert_eq!(
            client.read_response().body_str(),
            "pong",
            "{path}: same connection after"
        );
        let mut other = server.raw();
        other.send(FOLLOW);
        assert_eq!(
            other.read_response().body_str(),
            "pong",
            "{path}: new connection after"
        );
    }
    let log = server.log();
    assert!(
        log.contains("budget"),
        "log does not say the budget stopped it:\n{log}"
    );
    assert_no_panic(&log, "runaway handlers");
}
