//! Request-head rows: `check(input, expected)`.

use crate::*;

/// Offset the buffer starts at inside its imaginary RingBuffer: non-zero so
/// that a span left relative would be caught.
pub(super) const BASE: u32 = 5;

/// The fields a row asserts, as text.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Summary {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub minor_version: u8,
    pub body: BodyFraming,
    pub persistence: Persistence,
    pub expect_continue: bool,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Complete(Summary),
    Partial,
    Error(ParseError),
}

/// Parses `input` as if it sat at offset BASE of a buffer; resolves spans.
pub(super) fn parse_at_base(
    input: &[u8],
    limits: &Limits,
) -> (Result<ParseStatus, ParseError>, Head) {
    let mut parser = Parser::new();
    let mut head = Head::new();
    let result = parser.parse(input, BASE, limits, &mut head);
    (result, head)
}

pub(super) fn resolve(input: &[u8], span: Span) -> String {
    let start = (span.offset - BASE) as usize;
    String::from_utf8_lossy(&input[start..start + span.len as usize]).into_owned()
}

pub(super) fn summarize(input: &[u8], head: &Head) -> Summary {
    Summary {
        method: resolve(input, head.method),
        path: resolve(input, head.path),
        query: head.has_query.then(|| resolve(input, head.query)),
        minor_version: head.minor_version,
        body: head.body,
        persistence: head.persistence,
        expect_continue: head.expect_continue,
        host: head.has_host.then(|| resolve(input, head.host)),
        headers: head
            .headers()
            .iter()
            .map(|header| (resolve(input, header.name), resolve(input, header.value)))
            .collect(),
    }
}

pub(super) fn outcome(input: &[u8], limits: &Limits) -> Outcome {
    match parse_at_base(input, limits) {
        (Ok(ParseStatus::Complete), head) => Outcome::Complete(summarize(input, &head)),
        (Ok(ParseStatus::Partial), _) => Outcome::Partial,
        (Err(error), _) => Outcome::Error(error),
    }
}

/// A compact expectation for a complete request.
struct Ok {
    method: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    minor_version: u8,
    body: BodyFraming,
    persistence: Persistence,
    expect_continue: bool,
}

const GET11: Ok = Ok {
    method: "GET",
    path: "/",
    query: None,
    minor_version: 1,
    body: BodyFraming::None,
    persistence: Persistence::KeepAlive,
    expect_continue: false,
};

fn check_complete(input: &str, expected: Ok) {
    let (result, head) = parse_at_base(input.as_bytes(), &Limits::default());
    assert_eq!(result, Result::Ok(ParseStatus::Complete), "{input:?}");
    let summary = summarize(input.as_bytes(), &head);
    assert_eq!(summary.method, expected.method, "{input:?}");
    assert_eq!(summary.path, expected.path, "{input:?}");
    assert_eq!(summary.query.as_deref(), expected.query, "{input:?}");
    assert_eq!(summary.minor_version, expected.minor_version, "{input:?}");
    assert_eq!(summary.body, expected.body, "{input:?}");
    assert_eq!(summary.persistence, expected.persistence, "{input:?}");
    assert_eq!(
        summary.expect_continue, expected.expect_continue,
        "{input:?}"
    );
    assert_eq!(
        head.head_len as usize,
        input
            .find("\n\r\n")
            .or(input.find("\n\n"))
            .map(|i| i + if input[i..].starts_with("\n\r\n") {
                3
            } else {
                2
            })
            .expect("end"),
        "{input:?}"
    );
}

#[test]
fn complete_requests() {
    use BodyFraming::{Chunked, Length};
    use Persistence::{Close, KeepAlive};
    let h = "Host: a\r\n";
    let rows: Vec<(String, Ok)> = vec![
        (format!("GET / HTTP/1.1\r\n{h}\r\n"), GET11),
        // Dots that are not whole segments, and dot-segments in the query.
        (
            format!("GET /.well-known/a..b/.c/.../%2ex HTTP/1.1\r\n{h}\r\n"),
            Ok {
                path: "/.well-known/a..b/.c/.../%2ex",
                ..GET11
            },
        ),
        (
            format!("GET /p?/../x HTTP/1.1\r\n{h}\r\n"),
            Ok {
                path: "/p",
                query: Some("/../x"),
                ..GET11
            },
        ),
        (
            format!("GET /p?q=1 HTTP/1.1\r\n{h}\r\n"),
            Ok {
                path: "/p",
                query: Some("q=1"),
                ..GET11
            },
        ),
        (
            format!("GET /p? HTTP/1.1\r\n{h}\r\n"),
            Ok {
                path: "/p",
                query: Some(""),
                ..GET11
            },
        ),
        (
            format!("GET /p?a?b HTTP/1.1\r\n{h}\r\n"),
            Ok {
                path: "/p",
                query: Some("a?b"),
                ..GET11
            },
        ),
        (
            format!("GET http://example.com/p?q HTTP/1.1\r\n{h}\r\n"),
            Ok {
                path: "/p",
                query: Some("q"),
                ..GET11
            },
        ),
        (
            format!("GET HTTPS://example.com:8443/ HTTP/1.1\r\n{h}\r\n"),
            GET11,
        ),
        (
            format!("OPTIONS * HTTP/1.1\r\n{h}\r\n"),
            Ok {
                method: "OPTIONS",
                path: "*",
                ..GET11
            },
        ),
        (
            format!("PURGE /cache HTTP/1.1\r\n{h}\r\n"),
            Ok {
                method: "PURGE",
                path: "/cache",
                ..GET11
            },
        ),
        (
            "GET / HTTP/1.0\r\n\r\n".into(),
            Ok {
                minor_version: 0,
                persistence: Close,
                ..GET11
            },
        ),
        (
            "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n".into(),
            Ok {
                minor_version: 0,
                ..GET11
            },
        ),
        (
            "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n".into(),
            Ok {
                minor_version: 0,
                persistence: Close,
                ..GET11
            },
        ),
        (
            format!("GET / HTTP/1.1\r\n{h}Connection: upgrade, CLOSE\r\n\r\n"),
            Ok {
                persistence: Close,
                ..GET11
            },
        ),
        (
            format!("GET / HTTP/1.1\r\n{h}Connection: closed\r\n\r\n"),
            Ok {
                persistence: KeepAlive,
                ..GET11
            },
        ),
        (
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\n\r\n"),
            Ok {
                method: "POST",
                body: Length(5),
                ..GET11
            },
        ),
        (
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 0\r\n\r\n"),
            Ok {
                method: "POST",
                body: Length(0),
                ..GET11
            },
        ),
        (
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 5, 5\r\n\r\n"),
            Ok {
                method: "POST",
                body: Length(5),
                ..GET11
            },
        ),
        (
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\ncontent-length: 005\r\n\r\n"),
            Ok {
                method: "POST",
                body: Length(5),
                ..GET11
            },
        ),
        (
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n"),
            Ok {
                method: "POST",
                body: Chunked,
                ..GET11
            },
        ),
        (
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: CHUNKED\r\n\r\n"),
            Ok {
                method: "POST",
                body: Chunked,
                ..GET11
            },
        ),
        (
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked;ext=1\r\n\r\n"),
            Ok {
                method: "POST",
                body: Chunked,
                ..GET11
            },
        ),
        (
            format!("POST / HTTP/1.1\r\n{h}Expect: 100-Continue\r\n\r\n"),
            Ok {
                method: "POST",
                expect_continue: true,
                ..GET11
            },
        ),
        (
            "POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n".into(),
            Ok {
                method: "POST",
                minor_version: 0,
                persistence: Close,
                ..GET11
            },
        ),
        (
            "POST / HTTP/1.0\r\nExpect: whatever\r\n\r\n".into(),
            Ok {
                method: "POST",
                minor_version: 0,
                persistence: Close,
                ..GET11
            },
        ),
        (format!("\r\nGET / HTTP/1.1\r\n{h}\r\n"), GET11),
        ("GET / HTTP/1.1\nHost: a\n\n".into(), GET11),
        (
            format!("GET /p/a:b@c;d=e,f!$&'()*+~-._%41?x=[1]&y=/?:@ HTTP/1.1\r\n{h}\r\n"),
            Ok {
                path: "/p/a:b@c;d=e,f!$&'()*+~-._%41",
                query: Some("x=[1]&y=/?:@"),
                ..GET11
            },
        ),
        (
            format!("GET /a%20b%2F%7E?text=a%0Ab%00 HTTP/1.1\r\n{h}\r\n"),
            Ok {
                path: "/a%20b%2F%7E",
                query: Some("text=a%0Ab%00"),
                ..GET11
            },
        ),
    ];
    for (input, expected) in rows {
        check_complete(&input, expected);
    }
}

#[test]
fn header_spans_are_absolute_and_trimmed() {
    let input = b"GET / HTTP/1.1\r\nHost:   example.com  \r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n";
    let summary = match outcome(input, &Limits::default()) {
        Outcome::Complete(summary) => summary,
        other => panic!("{other:?}"),
    };
    assert_eq!(summary.host.as_deref(), Some("example.com"));
    let expected = [("Host", "example.com"), ("X-Empty", ""), ("X-Tab", "v")];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(summary.headers, expected);
}

fn check(input: &[u8], expected: ParseError) {
    assert_eq!(
        outcome(input, &Limits::default()),
        Outcome::Error(expected),
        "{:?}",
        String::from_utf8_lossy(input)
    );
}

#[test]
fn rejected_requests() {
    use ParseError::*;
    let rows: &[(&[u8], ParseError)] = &[
        // Version.
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", VersionNotSupported),
        (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", VersionNotSupported),
        (b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", VersionNotSupported),
        (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", VersionNotSupported),
        // HTTP-version is one DIGIT "." one DIGIT: anything longer is not HTTP.
        (b"GET / HTTP/10.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET / HTTP/01.01\r\nHost: a\r\n\r\n", Malformed),
        (b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", Malformed),
        (b"GET / HTTP/1.99999999999999999999\r\n\r\n", Malformed),
        (b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n", Malformed),
        (b"GET / HTTX/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET / HTTP/1.\r\nHost: a\r\n\r\n", Malformed),
        (b"GET / http/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /\r\n\r\n", Malformed),
        (b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", Malformed),
        // Method and target.
        (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"G\xc3\xa9T / HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b" / HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET x HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET http://host HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET http://host?q HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET http:///p HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET ftp://host/p HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"CONNECT host:443 HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        // Target bytes: only what RFC 3986 allows literally.
        (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /\xc0\xaf HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /?q=\xff HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /path#frag HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /a<b> HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /a^b HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /a`b HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /a{b} HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /a|b HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /path%00.html HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /path%0d%0aX-Injected:%20true HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /a%1F HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        (b"GET /a%7f HTTP/1.1\r\nHost: a\r\n\r\n", Malformed),
        // A method no route can have: 400 before the head limit.
        (b"GETGETGETGETGETGETGETGETGETGETGET / HTTP/1.1\r\nHost: a\r\n\r\n", MethodTooLong { limit: 32 }),
        (b"GETGETGETGETGETGETGETGETGETGETGET", MethodTooLong { limit: 32 }),
        // Header syntax and control bytes.
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", Malformed),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX\x00: v\r\n\r\n", Malformed),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: v\x00w\r\n\r\n", Malformed),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: v\rw\r\n\r\n", Malformed),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: v\x01w\r\n\r\n", Malformed),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: v\x7fw\r\n\r\n", Malformed),
        (b"GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n", Malformed),
        (b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", Malformed),
        (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", Malformed),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", ObsFold),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", ObsFold),
        // Host.
        (b"GET / HTTP/1.1\r\n\r\n", MissingHost),
        (b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", DuplicateHost),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", DuplicateHost),
        (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a/path\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a?q\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost:   \r\n\r\n", BadHost),
        (b"OPTIONS * HTTP/1.1\r\nHost:\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a:99999999999999999999\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a:-1\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a:80:80\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a%4\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a%\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a%4:80\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a:8%30\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a:%\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a]:80\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a\x80\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: [zz]\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: [v1.x]\r\n\r\n", BadHost),
        (b"GET / HTTP/1.0\r\nHost: a/b\r\n\r\n", BadHost),
        (b"GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n", BadHost),
        (b"GET http://a:99999/ HTTP/1.1\r\nHost: a\r\n\r\n", BadHost),
        (b"GET http://a,b/ HTTP/1.1\r\nHost: a\r\n\r\n", BadHost),
        (b"GET http://a/ HTTP/1.1\r\nHost: user@a\r\n\r\n", BadHost),
        (b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", ExpectationFailed),
        (b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nExpect: x\r\n\r\n", ExpectationFailed),
        // Content-Length.
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n", BodyTooLarge { limit: MAX_BODY_BYTES_DEFAULT, declared: u64::MAX }),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n", BodyTooLarge { limit: MAX_BODY_BYTES_DEFAULT, declared: MAX_BODY_BYTES_DEFAULT + 1 }),
        // Transfer-Encoding.
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", ConflictingFraming),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", ConflictingFraming),
        // Only chunked is decoded (nginx: "client sent unknown
        // Transfer-Encoding", 501): other codings are never handed on raw.
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", UnsupportedTransferEncoding),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", UnsupportedTransferEncoding),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", UnsupportedTransferEncoding),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n", UnsupportedTransferEncoding),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", UnsupportedTransferEncoding),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", BadTransferEncoding),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", BadTransferEncoding),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", BadTransferEncoding),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunkedx\r\n\r\n", UnsupportedTransferEncoding),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: br, chunked\r\n\r\n", UnsupportedTransferEncoding),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", BadTransferEncoding),
        // Dot-segments, written or percent-encoded, in origin- and
        // absolute-form paths (never in the query).
        (b"GET /a/../b HTTP/1.1\r\nHost: a\r\n\r\n", DotSegment),
        (b"GET /a/./b HTTP/1.1\r\nHost: a\r\n\r\n", DotSegment),
        (b"GET /.. HTTP/1.1\r\nHost: a\r\n\r\n", DotSegment),
        (b"GET /a/.. HTTP/1.1\r\nHost: a\r\n\r\n", DotSegment),
        (b"GET /a/%2e%2E/b HTTP/1.1\r\nHost: a\r\n\r\n", DotSegment),
        (b"GET /a/.%2e?x HTTP/1.1\r\nHost: a\r\n\r\n", DotSegment),
        (b"GET /%2E HTTP/1.1\r\nHost: a\r\n\r\n", DotSegment),
        (b"GET http://a/x/../y HTTP/1.1\r\nHost: a\r\n\r\n", DotSegment),
    ];
    for &(input, expected) in rows {
        check(input, expected);
    }
}

#[test]
fn partial_requests() {
    let rows: &[&[u8]] = &[
        b"",
        b"G",
        b"GET",
        b"GET /",
        b"GET / HTTP/1.1",
        b"GET / HTTP/1.1\r",
        b"GET / HTTP/1.1\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r",
        b"\r\n",
    ];
    for input in rows {
        assert_eq!(
            outcome(input, &Limits::default()),
            Outcome::Partial,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

fn request_with(target_len: usize, header_count: usize, pad_len: usize) -> Vec<u8> {
    let mut request = format!(
        "GET /{} HTTP/1.1\r\nHost: a\r\n",
        "a".repeat(target_len - 1)
    );
    for index in 1..header_count {
        request.push_str(&format!("X-{index}: v\r\n"));
    }
    if pad_len > 0 {
        request.push_str(&format!("X-Pad: {}\r\n", "p".repeat(pad_len)));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

#[test]
fn limits_at_and_past_the_edge() {
    let limits = Limits {
        max_header_bytes: 200,
        max_headers: 4,
        max_uri_bytes: 20,
        max_body_bytes: 10,
    };
    let complete = |input: &[u8]| matches!(outcome(input, &limits), Outcome::Complete(_));
    // URI: at the limit, and one past it (also while the line is incomplete).
    assert!(complete(&request_with(20, 1, 0)));
    assert_eq!(
        outcome(&request_with(21, 1, 0), &limits),
        Outcome::Error(ParseError::UriTooLong { limit: 20 })
    );
    assert_eq!(
        outcome(b"GET /aaaaaaaaaaaaaaaaaaaaa", &limits),
        Outcome::Error(ParseError::UriTooLong { limit: 20 })
    );
    assert_eq!(
        outcome(b"GET /aaaaaaaaaaaaaaaaaaa", &limits),
        Outcome::Partial
    );
    // Header count: at and past max_headers (Host counts).
    assert!(complete(&request_with(1, 4, 0)));
    assert_eq!(
        outcome(&request_with(1, 5, 0), &limits),
        Outcome::Error(ParseError::TooManyHeaders { limit: 4 })
    );
    // Head bytes: exactly at the limit, one past it, and an unfinished head
    // that already fills the limit.
    let base_len = request_with(1, 1, 1).len();
    let exact = request_with(1, 1, 1 + 200 - base_len);
    assert_eq!(exact.len(), 200);
    assert!(complete(&exact));
    let over = request_with(1, 1, 2 + 200 - base_len);
    assert_eq!(
        outcome(&over, &limits),
        Outcome::Error(ParseError::HeadTooLarge { limit: 200 })
    );
    assert_eq!(outcome(&over[..199], &limits), Outcome::Partial);
    assert_eq!(
        outcome(&over[..200], &limits),
        Outcome::Error(ParseError::HeadTooLarge { limit: 200 })
    );
    // A method past MAX_METHOD_BYTES is refused before the head limit.
    let long_method = vec![b'G'; 200];
    assert_eq!(
        outcome(&long_method, &limits),
        Outcome::Error(ParseError::MethodTooLong { limit: 32 })
    );
    let longest = [
        &[b'G'; MAX_METHOD_BYTES][..],
        b" / HTTP/1.1\r\nHost: a\r\n\r\n",
    ]
    .concat();
    assert!(complete(&longest));
    // Body: Content-Length at and past max_body_bytes.
    let with_length =
        |n: u64| format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n").into_bytes();
    assert!(complete(&with_length(10)));
    assert_eq!(
        outcome(&with_length(11), &limits),
        Outcome::Error(ParseError::BodyTooLarge {
            limit: 10,
            declared: 11
        })
    );
}

#[test]
fn headers_capacity_is_the_hard_ceiling() {
    let limits = Limits {
        max_headers: HEADERS_CAPACITY as u16,
        ..Limits::default()
    };
    assert!(matches!(
        outcome(&request_with(1, HEADERS_CAPACITY, 0), &limits),
        Outcome::Complete(_)
    ));
    assert_eq!(
        outcome(&request_with(1, HEADERS_CAPACITY + 1, 0), &limits),
        Outcome::Error(ParseError::TooManyHeaders {
            limit: HEADERS_CAPACITY as u16
        })
    );
    let too_many = Limits {
        max_headers: HEADERS_CAPACITY as u16 + 1,
        ..Limits::default()
    };
    let result = std::panic::catch_unwind(|| outcome(b"GET / HTTP/1.1\r\n\r\n", &too_many));
    assert!(
        result.is_err(),
        "max_headers above capacity is a programmer error"
    );
}

#[test]
fn status_mapping() {
    use ParseError::*;
    let rows: &[(ParseError, u16)] = &[
        (Malformed, 400),
        (BadContentLength, 400),
        (ConflictingFraming, 400),
        (BadTransferEncoding, 400),
        (MissingHost, 400),
        (DuplicateHost, 400),
        (BadHost, 400),
        (ObsFold, 400),
        (BadChunk, 400),
        (ExpectationFailed, 417),
        (HeadTooLarge { limit: 1 }, 431),
        (TooManyHeaders { limit: 1 }, 431),
        (UriTooLong { limit: 1 }, 414),
        (
            BodyTooLarge {
                limit: 1,
                declared: 2,
            },
            413,
        ),
        (UnsupportedTransferEncoding, 501),
        (MethodTooLong { limit: 32 }, 400),
        (VersionNotSupported, 505),
    ];
    for &(error, status) in rows {
        assert_eq!(error.status(), status, "{error:?}");
        assert!(!error.to_string().is_empty());
    }
}

/// Feeding a request one byte at a time gives the same result as one shot.
pub(super) fn incremental_outcome(input: &[u8], limits: &Limits) -> Outcome {
    let mut parser = Parser::new();
    let mut head = Head::new();
    for end in 0..=input.len() {
        match parser.parse(&input[..end], BASE, limits, &mut head) {
            Result::Ok(ParseStatus::Partial) => continue,
            Result::Ok(ParseStatus::Complete) => return Outcome::Complete(summarize(input, &head)),
            Err(error) => return Outcome::Error(error),
        }
    }
    Outcome::Partial
}

#[test]
fn byte_by_byte_equals_one_shot() {
    let inputs: &[&[u8]] = &[
        b"GET /p?q HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /next HTTP/1.0\r\n\r\n",
        b"\r\nGET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ];
    for input in inputs {
        let one_shot = outcome(input, &Limits::default());
        assert_eq!(
            incremental_outcome(input, &Limits::default()),
            one_shot,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    // The Head itself (every span) is identical, not just the summary.
    let input = inputs[0];
    let (_, one_shot) = parse_at_base(input, &Limits::default());
    let mut parser = Parser::new();
    let mut head = Head::new();
    for end in 0..input.len() {
        assert_eq!(
            parser.parse(&input[..end], BASE, &Limits::default(), &mut head),
            Result::Ok(ParseStatus::Partial)
        );
    }
    assert_eq!(
        parser.parse(input, BASE, &Limits::default(), &mut head),
        Result::Ok(ParseStatus::Complete)
    );
    assert_eq!(head, one_shot);
}

#[test]
fn head_is_reused_without_stale_fields() {
    let mut parser = Parser::new();
    let mut head = Head::new();
    let limits = Limits::default();
    let first = b"POST /a?x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n";
    assert_eq!(
        parser.parse(first, BASE, &limits, &mut head),
        Result::Ok(ParseStatus::Complete)
    );
    parser.reset();
    let second = b"GET /b HTTP/1.1\r\nHost: b\r\n\r\n";
    assert_eq!(
        parser.parse(second, BASE, &limits, &mut head),
        Result::Ok(ParseStatus::Complete)
    );
    let summary = summarize(second, &head);
    assert_eq!(summary.query, None);
    assert_eq!(summary.body, BodyFraming::None);
    assert_eq!(summary.persistence, Persistence::KeepAlive);
    assert!(!summary.expect_continue);
    assert_eq!(summary.headers.len(), 1);
}

/// Two connections whose heads arrive in pieces, interleaved, share one
/// parser (and its header scratch) through their own `Progress`: each gets
/// the head a parser of its own would give.
#[test]
fn interleaved_partial_heads_resume_from_their_own_progress() {
    use crate::Progress;
    let first: &[u8] = b"GET /one HTTP/1.1\r\nHost: a\r\nX-Long: aaaaaaaaaaaaaaaa\r\n\r\n";
    let second: &[u8] = b"POST /two HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc";
    let limits = Limits::default();
    let mut shared = Parser::new();
    let (mut progress_one, mut progress_two) = (Progress::NEW, Progress::NEW);
    let mut head = Head::new();
    for cut in 1..first.len().min(second.len()) {
        let one = shared.parse_resuming(&mut progress_one, &first[..cut], 0, &limits, &mut head);
        assert_eq!(one, Ok(ParseStatus::Partial), "first cut at {cut}");
        assert!(progress_one.started() || !first[..cut].contains(&b'\n'));
        let two = shared.parse_resuming(&mut progress_two, &second[..cut], 0, &limits, &mut head);
        if two != Ok(ParseStatus::Partial) {
            break;
        }
    }
    let done = shared.parse_resuming(&mut progress_one, first, 0, &limits, &mut head);
    assert_eq!(done, Ok(ParseStatus::Complete));
    assert_eq!(head.path, Span::new(4, 4));
    assert_eq!(
        progress_one,
        Progress::NEW,
        "a complete head resets the progress"
    );
    let done = shared.parse_resuming(&mut progress_two, second, 0, &limits, &mut head);
    assert_eq!(done, Ok(ParseStatus::Complete));
    assert_eq!(head.minor_version, 0);
    assert_eq!(head.body, BodyFraming::Length(3));
}

#[test]
fn host_values_and_the_authority_that_wins() {
    let host_of = |input: &[u8]| match outcome(input, &Limits::default()) {
        Outcome::Complete(summary) => summary.host,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
    };
    let accepted: &[&str] = &[
        "example.com",
        "EXAMPLE.com",
        "a",
        "127.0.0.1",
        "example.com:8080",
        "example.com:0080",
        "example.com:65535",
        "example.com:",
        "[::1]",
        "[::1]:8080",
        "[2001:db8::7]:443",
        "[::ffff:192.0.2.1]",
        "xn--bcher-kva.example",
        "under_score.example",
        "a%2eb",
        "a%2Eb:8080",
        "%41",
        "a!$&'()*+;=~b",
    ];
    for host in accepted {
        let input = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_eq!(host_of(input.as_bytes()).as_deref(), Some(*host), "{host}");
    }
    // HTTP/1.0 needs no Host; an empty one is no host.
    assert_eq!(
        host_of(b"GET / HTTP/1.0\r\nHost:\r\n\r\n").as_deref(),
        Some("")
    );
    assert_eq!(host_of(b"GET / HTTP/1.0\r\n\r\n"), None);
    // Absolute-form: the authority wins, even over an empty Host.
    assert_eq!(
        host_of(b"GET http://api.example:81/p HTTP/1.1\r\nHost: other.example\r\n\r\n").as_deref(),
        Some("api.example:81")
    );
    assert_eq!(
        host_of(b"GET http://[::1]/p HTTP/1.1\r\nHost:\r\n\r\n").as_deref(),
        Some("[::1]")
    );
}

/// The byte-class table against the grammar written out as comparisons, for
/// all 256 bytes: the table is the fast form, this is the spec.
#[test]
fn byte_classes_match_the_grammar() {
    use crate::target::{is_reg_name_byte, is_target_byte, is_token_byte};
    for byte in 0..=u8::MAX {
        let alphanumeric = byte.is_ascii_alphanumeric();
        let token = alphanumeric
            || matches!(
                byte,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        let unreserved = alphanumeric || matches!(byte, b'-' | b'.' | b'_' | b'~');
        let sub_delims_less_comma = matches!(
            byte,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b';' | b'='
        );
        let target = unreserved
            || sub_delims_less_comma
            || matches!(byte, b',' | b'%' | b':' | b'@' | b'/' | b'?' | b'[' | b']');
        assert_eq!(is_token_byte(byte), token, "token {byte:#04x}");
        assert_eq!(is_target_byte(byte), target, "target {byte:#04x}");
        assert_eq!(
            is_reg_name_byte(byte),
            unreserved || sub_delims_less_comma,
            "reg-name {byte:#04x}"
        );
    }
}
