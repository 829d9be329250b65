//! Issue 13, conformance to the letter, end to end over TCP: chunk lines
//! (RFC 9112 §7.1), Host (RFC 9112 §3.2, RFC 3986 §3.2.2), request-target
//! bytes, the request line, and `OPTIONS *`. Each vector is one row with its
//! exact status and whether the connection closes (see
//! `keystone_tests::vectors`); the valid rows prove nothing that worked stops
//! working.

use keystone_tests::vectors::{check_vector, row, Vector};
use keystone_tests::{assert_no_panic, Server};

const APP: &str = r#"return {
  routes = {
    ["GET /ping"] = function(ctx) ctx.body = "pong" end,
    ["POST /echo"] = function(ctx) ctx.body = ctx.request.body end,
    ["GET /users/{id}"] = function(ctx) ctx.body = ctx.params.id end,
    ["PUT /users/{id}"] = function(ctx) ctx.body = "put" end,
    ["* /any"] = function(ctx) ctx.body = ctx.method end,
    ["GET /path"] = function(ctx) ctx.body = "path" end,
  },
}
"#;

const CHUNKS: &[Vector] = &[
    row(
        "chunk extension name=value",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n",
        200,
        Some("hello"),
        false,
    ),
    row(
        "chunk extension with a quoted value",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;name=\"quoted value\"\r\nhello\r\n6 ; a = b ; flag\r\n world\r\n0;last\r\n\r\n",
        200,
        Some("hello world"),
        false,
    ),
    row(
        "chunk extension with a quoted-pair and a trailer",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;q=\"a\\\"b;c\"\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n",
        200,
        Some("hello"),
        false,
    ),
    row(
        "upper-case hex and leading zeros",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n00A\r\n0123456789\r\n0\r\n\r\n",
        200,
        Some("0123456789"),
        false,
    ),
    row(
        "bare semicolon",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "extension name with a non-token byte",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;na@me\r\nhello\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "control byte in an extension",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;a\x01b\r\nhello\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "lone CR in an extension",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "bare LF ending an extension (the funky-chunks vector)",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nhello\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "0x prefix on the size",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "whitespace after the size with no extension",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "tab after the size with no extension",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\t\r\nhello\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "unterminated quoted value",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"b\r\nhello\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "bare LF after chunk data",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "data longer than its size",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "obs-fold in a trailer",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "trailer line without a colon",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nNoColon\r\n\r\n",
        400,
        None,
        true,
    ),
];

const HOSTS: &[Vector] = &[
    row(
        "host with a port",
        b"GET /ping HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
        200,
        Some("pong"),
        false,
    ),
    row(
        "IPv6 literal host",
        b"GET /ping HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        200,
        Some("pong"),
        false,
    ),
    row(
        "HTTP/1.0 without Host",
        b"GET /ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        200,
        Some("pong"),
        false,
    ),
    row(
        "userinfo in Host",
        b"GET /ping HTTP/1.1\r\nHost: user@example.com\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "path in Host",
        b"GET /ping HTTP/1.1\r\nHost: example.com/path\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "comma-separated Host",
        b"GET /ping HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "empty Host on HTTP/1.1",
        b"GET /ping HTTP/1.1\r\nHost:\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "non-digit port",
        b"GET /ping HTTP/1.1\r\nHost: example.com:80a\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "port over 65535",
        b"GET /ping HTTP/1.1\r\nHost: example.com:65536\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "absolute-form: the authority wins over an empty Host",
        b"GET http://example.com/ping HTTP/1.1\r\nHost:\r\n\r\n",
        200,
        Some("pong"),
        false,
    ),
    row(
        "absolute-form authority with userinfo",
        b"GET http://user@example.com/ping HTTP/1.1\r\nHost: example.com\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "absolute-form authority with a bad port",
        b"GET http://example.com:99999/ping HTTP/1.1\r\nHost: example.com\r\n\r\n",
        400,
        None,
        true,
    ),
];

const TARGETS: &[Vector] = &[
    row(
        "every RFC 3986 byte a path and query may hold",
        b"GET /users/a:b@c;d=e,f!$&'()*+~-._%41?x=[1]&y=/?:@ HTTP/1.1\r\nHost: t\r\n\r\n",
        200,
        Some("a:b@c;d=e,f!$&'()*+~-._%41"),
        false,
    ),
    row(
        "raw UTF-8 in the path",
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "overlong UTF-8 slash",
        b"GET /\xc0\xaf HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "raw byte >= 0x80 in the query",
        b"GET /ping?q=\xff HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "fragment in the target",
        b"GET /path#frag HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "brace in the target",
        b"GET /users/{id} HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "percent-encoded NUL in the path",
        b"GET /path%00.html HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "percent-encoded CRLF in the path",
        b"GET /path%0d%0aX-Injected:%20true HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "percent-encoded LF in the query is data",
        b"GET /ping?text=a%0Ab HTTP/1.1\r\nHost: t\r\n\r\n",
        200,
        Some("pong"),
        false,
    ),
    row(
        "backslash in the target",
        b"GET /users/a\\b HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
        None,
        true,
    ),
];

const LINES: &[Vector] = &[
    row(
        "HTTP/01.01 is malformed, not unsupported",
        b"GET /ping HTTP/01.01\r\nHost: t\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "HTTP/1.10",
        b"GET /ping HTTP/1.10\r\nHost: t\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "HTTP/2.0 is unsupported",
        b"GET /ping HTTP/2.0\r\nHost: t\r\n\r\n",
        505,
        None,
        true,
    ),
    row(
        "a 33-byte method",
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFG /ping HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "a 32-byte method reaches the router",
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEF /any HTTP/1.1\r\nHost: t\r\n\r\n",
        200,
        Some("ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEF"),
        false,
    ),
    row(
        "OPTIONS * is answered by the engine",
        b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
        204,
        Some(""),
        false,
    ),
    row(
        "asterisk-form with GET",
        b"GET * HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
        None,
        true,
    ),
    row(
        "OPTIONS on a path is the router's (405 with Allow)",
        b"OPTIONS /ping HTTP/1.1\r\nHost: t\r\n\r\n",
        405,
        None,
        false,
    ),
];

fn run(vectors: &[Vector]) {
    let server = Server::start(Some(APP), &["--header-timeout", "2", "--body-timeout", "2"]);
    for vector in vectors {
        check_vector(&server, vector);
    }
    assert_no_panic(&server.log(), "after the vectors");
}

#[test]
fn chunk_lines_to_the_letter() {
    run(CHUNKS);
}

#[test]
fn host_to_the_letter() {
    run(HOSTS);
}

#[test]
fn request_target_bytes_to_the_letter() {
    run(TARGETS);
}

#[test]
fn request_line_and_options_asterisk() {
    run(LINES);
}

#[test]
fn options_asterisk_allows_every_method_a_route_names() {
    let server = Server::start(Some(APP), &[]);
    let response = check_vector(
        &server,
        &row(
            "OPTIONS *",
            b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
            204,
            Some(""),
            false,
        ),
    );
    assert_eq!(
        response.header("allow"),
        Some("GET, HEAD, OPTIONS, POST, PUT")
    );
    assert_eq!(response.header("content-length"), None);
    // Lua never ran: an OPTIONS * never counts as a route's request.
    let log = server.log();
    assert!(!log.contains("handler failed"), "{log}");
}

#[test]
fn a_long_method_is_refused_before_the_head_limit() {
    // 100 KB of method bytes (Http11Probe's MAL-LONG-METHOD): 400 as soon
    // as the 33rd byte arrives, not 431 at the 16 KiB head limit. The
    // client may still be writing when the server closes.
    let server = Server::start(Some(APP), &[]);
    let mut client = server.raw();
    client.send(&[b'M'; 40]);
    let response = client.read_response();
    assert_eq!(response.status, 400, "{response:?}");
    assert!(response.closes());
}
