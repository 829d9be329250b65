//! A `Content-Length` set by policy, end to end: a stream with a declared
//! length goes out raw (no chunk framing) and keeps the connection; a
//! generator that produces more or fewer bytes than declared never puts a
//! wrong byte on the wire (the connection closes instead); an inline or file
//! body whose length differs is a 500 (HEAD may advertise any length).

use std::time::Duration;

use keystone_tests::{line_of, Response, Server};

const APP: &str = r#"local function pieces(list)
  local i = 0
  return function() i = i + 1; return list[i] end
end
return {
  routes = {
    ["GET /stream"] = function(ctx)
      ctx.headers["Content-Length"] = 11
      ctx.body = pieces({ "hello ", "", "world" })
    end,
    ["GET /big"] = function(ctx)
      local piece = string.rep("b", 1000)
      local n = 0
      ctx.headers["content-length"] = "100000"
      ctx.body = function() n = n + 1; if n <= 100 then return piece end end
    end,
    ["GET /long"] = function(ctx)
      ctx.headers["Content-Length"] = 15
      ctx.body = function() return "0123456789" end
    end,
    ["GET /one-more"] = function(ctx)
      ctx.headers["Content-Length"] = 10
      ctx.body = pieces({ "0123456789", "x" })
    end,
    ["GET /short"] = function(ctx)
      ctx.headers["Content-Length"] = 100
      ctx.body = pieces({ "abc" })
    end,
    ["GET /never-pulled"] = function(ctx)
      ctx.headers["Content-Length"] = ctx.args.n
      ctx.body = function() error("the generator was pulled") end
    end,
    ["GET /inline"] = function(ctx)
      ctx.headers["Content-Length"] = ctx.args.n
      ctx.body = "hello"
    end,
    ["GET /no-content"] = function(ctx)
      ctx.status = 204
      ctx.headers["Content-Length"] = 5
    end,
    ["GET /invalid"] = function(ctx)
      ctx.headers["Content-Length"] = "12abc" -- invalid-line
      ctx.body = "unreached"
    end,
    ["GET /file"] = function(ctx)
      ctx.headers["Content-Length"] = ctx.args.n
      ctx.body = { file = "page.txt" }
    end,
    ["GET /"] = function(ctx) ctx.body = "alive" end,
  },
}
"#;

/// `page.txt`'s bytes, next to the app.
const PAGE: &str = "0123456789abcdef\n";

/// How long a connection must stay quiet and open to count as kept alive.
const QUIET: Duration = Duration::from_millis(200);

fn start() -> Server {
    let server = Server::start(Some(APP), &[]);
    let dir = server.app_path().parent().unwrap().to_path_buf();
    std::fs::write(dir.join("page.txt"), PAGE).unwrap();
    server
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

/// The head of a raw response (up to the blank line), lower-cased.
fn head_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).to_ascii_lowercase();
    text.split("\r\n\r\n").next().unwrap_or("").to_string()
}

/// The bytes after the head of a raw response.
fn body_of(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    &bytes[end + 4..]
}

fn assert_raw_length(response: &Response, length: &str) {
    assert_eq!(response.header("content-length"), Some(length));
    assert_eq!(response.header_count("content-length"), 1);
    assert!(
        response.header("transfer-encoding").is_none(),
        "{response:?}"
    );
}

/// The stream goes out with the declared length and no chunk framing, and
/// the connection answers the next request (exact bytes: a byte too many
/// would be read as the start of the next response).
#[test]
fn stream_with_content_length_is_raw_and_keeps_alive_on_http_1_1() {
    let server = start();
    let mut client = server.raw();
    client.send(get("/stream").as_bytes());
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_raw_length(&response, "11");
    assert_eq!(response.body_str(), "hello world");
    assert!(!response.closes());
    client.send(get("/big").as_bytes());
    let response = client.read_response();
    assert_raw_length(&response, "100000");
    assert_eq!(response.body, vec![b'b'; 100_000]);
    client.send(get("/").as_bytes());
    assert_eq!(client.read_response().body_str(), "alive");
    client.expect_open(QUIET, "after streams with a declared length");

    // Pipelined behind a stream: answered in order on the same connection.
    let mut client = server.raw();
    client.send(format!("{}{}", get("/stream"), get("/")).as_bytes());
    assert_eq!(client.read_response().body_str(), "hello world");
    assert_eq!(client.read_response().body_str(), "alive");
    client.expect_open(QUIET, "after a pipelined stream");
}

#[test]
fn stream_with_content_length_keeps_alive_on_http_1_0_when_asked() {
    let server = start();
    let mut client = server.raw();
    for _ in 0..2 {
        client.send(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let response = client.read_response();
        assert_raw_length(&response, "11");
        assert_eq!(response.header("connection"), Some("keep-alive"));
        assert_eq!(response.body_str(), "hello world");
    }
    client.expect_open(QUIET, "HTTP/1.0 keep-alive after a stream with a length");

    // Without keep-alive, the length still frames the body, then it closes.
    let mut client = server.raw();
    client.send(b"GET /stream HTTP/1.0\r\n\r\n");
    let bytes = client.expect_closed("HTTP/1.0 without keep-alive");
    let head = head_of(&bytes);
    assert!(head.contains("\r\ncontent-length: 11"), "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert_eq!(body_of(&bytes), b"hello world");
}

/// A generator that goes past the declared length: exactly the declared
/// bytes are sent, the connection closes (a pipelined request stays
/// unanswered), and the log names the request.
#[test]
fn stream_longer_than_its_content_length_is_cut_and_closed() {
    let server = start();
    for (path, length, body) in [
        ("/long", "15", &b"012345678901234"[..]),
        ("/one-more", "10", &b"0123456789"[..]),
    ] {
        let mut client = server.raw();
        client.send(format!("{}{}", get(path), get("/")).as_bytes());
        let bytes = client.expect_closed("a stream past its Content-Length");
        let head = head_of(&bytes);
        assert!(
            head.contains(&format!("\r\ncontent-length: {length}")),
            "{head}"
        );
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert_eq!(body_of(&bytes), body, "{path}");
        let log = server.wait_for_log(
            &format!(
                "GET {path}: stream aborted: the generator produced more than the {length} bytes"
            ),
            Duration::from_secs(5),
        );
        assert!(
            log.contains(&format!(
                "GET {path}: stream aborted: the generator produced more than the {length} bytes of the Content-Length set by policy; sent {length} bytes, closing the connection"
            )),
            "{log}"
        );
    }
}

/// A generator that ends early: the client gets the short body and the
/// connection closing, nothing else, and the log says how short.
#[test]
fn stream_shorter_than_its_content_length_aborts() {
    let server = start();
    let mut client = server.raw();
    client.send(format!("{}{}", get("/short"), get("/")).as_bytes());
    let bytes = client.expect_closed("a stream short of its Content-Length");
    assert!(head_of(&bytes).contains("\r\ncontent-length: 100"));
    assert_eq!(body_of(&bytes), b"abc");
    let needle = "GET /short: stream aborted: the generator ended after 3 of the 100 bytes of the Content-Length set by policy; closing the connection";
    let log = server.wait_for_log(needle, Duration::from_secs(5));
    assert!(log.contains(needle), "{log}");
}

/// HEAD with a stream and a declared length, and a declared length of 0:
/// the head carries the length, no body follows, the generator is never
/// called, and the connection stays open.
#[test]
fn head_and_zero_length_streams_are_never_pulled() {
    let server = start();
    let mut client = server.raw();
    client.send(b"HEAD /never-pulled?n=4096 HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = client.read_response_to("HEAD");
    assert_eq!(response.status, 200);
    assert_raw_length(&response, "4096");
    client.send(get("/never-pulled?n=0").as_bytes());
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_raw_length(&response, "0");
    assert!(response.body.is_empty());
    client.send(get("/").as_bytes());
    assert_eq!(client.read_response().body_str(), "alive");
    client.expect_open(QUIET, "after HEAD and empty streams");
    assert!(
        !server.log().contains("the generator was pulled"),
        "{}",
        server.log()
    );
}

#[test]
fn inline_body_with_a_matching_content_length_is_sent_once() {
    let server = start();
    let mut client = server.raw();
    for n in ["5", "005"] {
        client.send(get(&format!("/inline?n={n}")).as_bytes());
        let response = client.read_response();
        assert_eq!(response.status, 200);
        assert_raw_length(&response, "5");
        assert_eq!(response.body_str(), "hello");
    }
    client.expect_open(QUIET, "after inline bodies with their length");
}

/// A declared length that differs from the inline body: 500 and a log line
/// for a GET; a HEAD advertises the declared length as is.
#[test]
fn inline_body_with_a_different_content_length_is_a_500_except_for_head() {
    let server = start();
    let mut client = server.raw();
    client.send(get("/inline?n=99").as_bytes());
    let response = client.read_response();
    assert_eq!(response.status, 500);
    assert_eq!(response.body_str(), "Internal Server Error\n");
    assert_eq!(response.header_count("content-length"), 1);
    let needle = "GET /inline: Content-Length 99 set by policy does not match the body's 5 bytes";
    let log = server.wait_for_log(needle, Duration::from_secs(5));
    assert!(log.contains(needle), "{log}");

    client.send(b"HEAD /inline?n=99 HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = client.read_response_to("HEAD");
    assert_eq!(response.status, 200);
    assert_raw_length(&response, "99");
    client.send(get("/").as_bytes());
    assert_eq!(client.read_response().body_str(), "alive");
    client.expect_open(QUIET, "after a HEAD advertising a length");
}

/// 204 carries no Content-Length, even one policy set.
#[test]
fn no_content_carries_no_length() {
    let server = start();
    let mut client = server.raw();
    client.send(get("/no-content").as_bytes());
    let response = client.read_response();
    assert_eq!(response.status, 204);
    assert_eq!(response.header_count("content-length"), 0);
    client.send(get("/").as_bytes());
    assert_eq!(client.read_response().body_str(), "alive");
}

#[test]
fn invalid_content_length_is_a_lua_error_at_its_line() {
    let server = start();
    let mut client = server.raw();
    client.send(get("/invalid").as_bytes());
    let response = client.read_response();
    assert_eq!(response.status, 500);
    assert_eq!(response.header_count("content-length"), 1);
    assert_eq!(response.body_str(), "Internal Server Error\n");
    let line = line_of(APP, "invalid-line");
    let needle = format!("app.lua:{line}: invalid Content-Length");
    let log = server.wait_for_log(&needle, Duration::from_secs(5));
    assert!(log.contains(&needle), "{log}");
    assert!(
        log.contains("(header 'Content-Length', got '12abc')"),
        "{log}"
    );
}

/// A file body: a declared length must be the file's size (for every
/// method and range); the engine writes the length it sends.
#[test]
fn file_body_content_length_must_be_the_file_size() {
    let server = start();
    let size = PAGE.len().to_string();
    let mut client = server.raw();
    client.send(get(&format!("/file?n={size}")).as_bytes());
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_raw_length(&response, &size);
    assert_eq!(response.body_str(), PAGE);

    client.send(
        format!("GET /file?n={size} HTTP/1.1\r\nHost: t\r\nRange: bytes=0-3\r\n\r\n").as_bytes(),
    );
    let response = client.read_response();
    assert_eq!(response.status, 206);
    assert_raw_length(&response, "4");
    assert_eq!(response.body_str(), "0123");

    for method in ["GET", "HEAD"] {
        client.send(format!("{method} /file?n=3 HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let response = client.read_response_to(method);
        assert_eq!(response.status, 500, "{method}");
    }
    let needle =
        format!("GET /file: Content-Length 3 set by policy does not match the file's {size} bytes");
    let log = server.wait_for_log(&needle, Duration::from_secs(5));
    assert!(log.contains(&needle), "{log}");
    client.expect_open(QUIET, "after file answers");
}
