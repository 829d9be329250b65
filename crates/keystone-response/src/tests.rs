//! Unit tests of the serializers: heads and their framing, canned errors,
//! chunk headers and the `Date` cache.

use super::*;
use keystone_exchange::HttpExchange;

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

const KEEP: Framing = Framing {
    keep_alive: true,
    head_request: false,
    minor_version: 1,
};

fn date() -> DateCache {
    let mut d = DateCache::new();
    d.set(784_111_777);
    d
}

#[test]
fn date_format() {
    let cases: &[(u64, &str)] = &[
        (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
        (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
        (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
        (1_795_000_000, "Wed, 18 Nov 2026 11:06:40 GMT"),
        (4_102_444_799, "Thu, 31 Dec 2099 23:59:59 GMT"),
    ];
    for (secs, expected) in cases {
        assert_eq!(text(&date::format_imf(*secs)), *expected, "{secs}");
    }
}

#[test]
fn head_defaults() {
    let ex = HttpExchange::new_boxed(0);
    let mut out = [0u8; 512];
    let n = write_head(&ex, 13, KEEP, &date(), &mut out).unwrap().bytes;
    assert_eq!(
        text(&out[..n]),
        "HTTP/1.1 200 OK\r\nServer: keystone\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: 13\r\n\r\n"
    );
}

#[test]
fn head_policy_headers_and_close() {
    let mut ex = HttpExchange::new_boxed(0);
    ex.status = 201;
    ex.set_header(b"Content-Type", b"application/json").unwrap();
    ex.add_header(b"Set-Cookie", b"a=1").unwrap();
    ex.add_header(b"Set-Cookie", b"b=2").unwrap();
    let mut out = [0u8; 512];
    let framing = Framing {
        keep_alive: false,
        ..KEEP
    };
    let n = write_head(&ex, 0, framing, &date(), &mut out)
        .unwrap()
        .bytes;
    let head = text(&out[..n]);
    assert!(head.starts_with("HTTP/1.1 201 Created\r\n"), "{head}");
    assert!(head.contains("Connection: close\r\n"));
    assert!(head.contains("Content-Type: application/json\r\n"));
    assert!(!head.contains("text/plain"));
    assert!(head.contains("Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n"));
    assert!(head.ends_with("Content-Length: 0\r\n\r\n"));
}

/// A `Server` policy set replaces the engine's (one `Server` line, as
/// `ngx.header.Server` gives), in one step and in two.
#[test]
fn policy_server_replaces_the_engines() {
    let mut ex = HttpExchange::new_boxed(0);
    ex.set_header(b"server", b"my-app/1.0").unwrap();
    let mut out = [0u8; 512];
    let n = write_head(&ex, 0, KEEP, &date(), &mut out).unwrap().bytes;
    let head = text(&out[..n]);
    assert_eq!(head.matches("erver: ").count(), 1, "{head}");
    assert!(
        head.starts_with(
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nserver: my-app/1.0\r\n"
        ),
        "{head}"
    );
    let spec = HeadSpec {
        status: 200,
        length: BodyLength::Known(0),
        default_content_type: DEFAULT_CONTENT_TYPE,
        extra: &[],
    };
    let mut two = [0u8; 512];
    let lines = write_policy_lines(ex.response_headers(), &mut two[100..]).expect("fits");
    assert!(lines.has_server);
    let m = write_head_around(&spec, 100, lines, KEEP, &date(), &mut two)
        .expect("fits")
        .bytes;
    assert_eq!(text(&two[..m]), head);
}

/// 205 Reset Content carries no content (RFC 9110 §15.3.6): its head says
/// `Content-Length: 0` whatever body policy gave, and no body follows.
#[test]
fn reset_content_says_length_0() {
    let mut ex = HttpExchange::new_boxed(0);
    ex.status = 205;
    let mut out = [0u8; 512];
    let committed = write_head(&ex, 3, KEEP, &date(), &mut out).unwrap();
    let head = text(&out[..committed.bytes]);
    assert!(head.ends_with("Content-Length: 0\r\n\r\n"), "{head}");
    assert_eq!(committed.body, BodyLength::Known(0));
    assert!(!has_body(205, false));
}

#[test]
fn head_no_length_for_204_and_304() {
    for status in [204u32, 304] {
        let mut ex = HttpExchange::new_boxed(0);
        ex.status = status;
        let mut out = [0u8; 512];
        let n = write_head(&ex, 0, KEEP, &date(), &mut out).unwrap().bytes;
        assert!(!text(&out[..n]).contains("Content-Length"), "{status}");
        assert!(!has_body(status as u16, false));
    }
}

#[test]
fn http10_keep_alive_is_announced() {
    let ex = HttpExchange::new_boxed(0);
    let mut out = [0u8; 512];
    let framing = Framing {
        minor_version: 0,
        ..KEEP
    };
    let n = write_head(&ex, 1, framing, &date(), &mut out)
        .unwrap()
        .bytes;
    assert!(text(&out[..n]).contains("Connection: keep-alive\r\n"));
}

#[test]
fn invalid_status_is_refused() {
    for status in [0u32, 99, 100, 199, 1000, 70000] {
        let mut ex = HttpExchange::new_boxed(0);
        ex.status = status;
        let mut out = [0u8; 512];
        assert_eq!(
            write_head(&ex, 0, KEEP, &date(), &mut out),
            Err(ResponseError::InvalidStatus { status })
        );
    }
}

#[test]
fn overflow_is_an_error_not_a_partial_head() {
    let ex = HttpExchange::new_boxed(0);
    let mut out = [0u8; 40];
    assert_eq!(
        write_head(&ex, 0, KEEP, &date(), &mut out),
        Err(ResponseError::HeadTooLarge { capacity: 40 })
    );
}

#[test]
fn canned_errors() {
    let mut out = [0u8; 512];
    let close = Framing {
        keep_alive: false,
        ..KEEP
    };
    let n = write_error(405, Some(b"GET, HEAD"), KEEP, &date(), &mut out)
        .unwrap()
        .bytes;
    let response = text(&out[..n]);
    assert!(response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
    assert!(response.contains("Allow: GET, HEAD\r\n"));
    assert!(response.ends_with("Content-Length: 19\r\n\r\nMethod Not Allowed\n"));
    let n = write_error(400, None, close, &date(), &mut out)
        .unwrap()
        .bytes;
    assert!(text(&out[..n]).contains("Connection: close\r\n"));
    let head = Framing {
        head_request: true,
        ..KEEP
    };
    let n = write_error(404, None, head, &date(), &mut out)
        .unwrap()
        .bytes;
    assert!(text(&out[..n]).ends_with("Content-Length: 10\r\n\r\n"));
}

#[test]
fn redirects_carry_their_location_in_parts() {
    let mut out = [0u8; 512];
    let committed =
        write_redirect(&[b"/docs", b"/", b"?", b"page=2"], KEEP, &date(), &mut out).unwrap();
    let response = text(&out[..committed.bytes]);
    assert!(
        response.starts_with("HTTP/1.1 301 Moved Permanently\r\n"),
        "{response}"
    );
    assert!(
        response.contains("\r\nLocation: /docs/?page=2\r\n"),
        "{response}"
    );
    assert!(
        response.ends_with("Content-Length: 18\r\n\r\nMoved Permanently\n"),
        "{response}"
    );
    assert_eq!(committed.status, 301);
    // Too long for `out`: an error, never a cut Location.
    let long = [b'a'; 600];
    assert!(write_redirect(&[&long[..], b"/"], KEEP, &date(), &mut out).is_err());
}

#[test]
fn chunk_headers() {
    let cases: &[(usize, &str)] = &[
        (1, "1\r\n"),
        (15, "f\r\n"),
        (16, "10\r\n"),
        (4096, "1000\r\n"),
        (0xabcdef, "abcdef\r\n"),
    ];
    for (len, expected) in cases {
        let mut out = [0u8; CHUNK_HEADER_MAX];
        let n = chunk_header(*len, &mut out);
        assert_eq!(text(&out[..n]), *expected);
    }
}

#[test]
fn spec_heads_for_streams_and_files() {
    let spec = HeadSpec {
        status: 206,
        length: BodyLength::Known(10),
        default_content_type: b"text/css",
        extra: &[(b"Content-Range", b"bytes 0-9/100"), (b"ETag", b"\"1-64\"")],
    };
    let mut out = [0u8; 512];
    let n = write_head_spec(&spec, std::iter::empty(), KEEP, &date(), &mut out)
        .unwrap()
        .bytes;
    let head = text(&out[..n]);
    assert!(
        head.starts_with("HTTP/1.1 206 Partial Content\r\n"),
        "{head}"
    );
    assert!(head.contains("Content-Range: bytes 0-9/100\r\nETag: \"1-64\"\r\nContent-Type: text/css\r\nContent-Length: 10\r\n\r\n"), "{head}");
    let chunked = HeadSpec {
        status: 200,
        length: BodyLength::Chunked,
        ..spec
    };
    let n = write_head_spec(&chunked, std::iter::empty(), KEEP, &date(), &mut out)
        .unwrap()
        .bytes;
    let head = text(&out[..n]);
    assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
    assert!(!head.contains("Content-Length"), "{head}");
    let close = HeadSpec {
        status: 200,
        length: BodyLength::UntilClose,
        ..spec
    };
    let n = write_head_spec(&close, std::iter::empty(), KEEP, &date(), &mut out)
        .unwrap()
        .bytes;
    let head = text(&out[..n]);
    assert!(
        !head.contains("Content-Length") && !head.contains("Transfer-Encoding"),
        "{head}"
    );
}

/// Policy's `Content-Length` never reaches the wire as policy wrote it: the
/// engine's length is written once, in canonical form, and 204/304 carry
/// none at all.
#[test]
fn policy_content_length_is_written_once_by_the_engine() {
    let cases: &[(u32, BodyLength, Option<&str>)] = &[
        (200, BodyLength::Known(5), Some("Content-Length: 5\r\n")),
        (404, BodyLength::Known(5), Some("Content-Length: 5\r\n")),
        (200, BodyLength::Chunked, None),
        (200, BodyLength::UntilClose, None),
        (204, BodyLength::Known(5), None),
        (304, BodyLength::Known(5), None),
    ];
    for (status, length, expected) in cases {
        let mut ex = HttpExchange::new_boxed(0);
        ex.status = *status;
        ex.set_header(b"X-Before", b"1").unwrap();
        ex.set_header(b"content-LENGTH", b"005").unwrap();
        ex.set_header(b"X-After", b"2").unwrap();
        let spec = HeadSpec {
            status: *status as u16,
            length: *length,
            default_content_type: DEFAULT_CONTENT_TYPE,
            extra: &[],
        };
        let mut out = [0u8; 512];
        let n = write_head_spec(&spec, ex.response_headers(), KEEP, &date(), &mut out)
            .unwrap()
            .bytes;
        let head = text(&out[..n]).to_ascii_lowercase();
        assert!(head.contains("x-before: 1\r\nx-after: 2\r\n"), "{head}");
        assert!(!head.contains("005"), "policy's text was copied: {head}");
        let count = head.matches("content-length").count();
        match expected {
            Some(line) => {
                assert_eq!(count, 1, "{head}");
                assert!(head.contains(&line.to_ascii_lowercase()), "{head}");
            }
            None => assert_eq!(count, 0, "{head}"),
        }
    }
}

#[test]
fn committed_heads_report_status_and_announced_body() {
    let mut out = [0u8; 512];
    let head = Framing {
        head_request: true,
        ..KEEP
    };
    // (status, length, framing, announced)
    let cases = [
        (200, BodyLength::Known(13), KEEP, BodyLength::Known(13)),
        (200, BodyLength::Known(13), head, BodyLength::Known(13)),
        (204, BodyLength::Known(13), KEEP, BodyLength::Known(0)),
        (304, BodyLength::Known(13), KEEP, BodyLength::Known(0)),
        (200, BodyLength::Chunked, KEEP, BodyLength::Chunked),
        (206, BodyLength::UntilClose, KEEP, BodyLength::UntilClose),
    ];
    for (status, length, framing, announced) in cases {
        let spec = HeadSpec {
            status,
            length,
            default_content_type: DEFAULT_CONTENT_TYPE,
            extra: &[],
        };
        let committed =
            write_head_spec(&spec, std::iter::empty(), framing, &date(), &mut out).expect("fits");
        assert_eq!(committed.status, status);
        assert_eq!(committed.body, announced, "{status} {length:?}");
        assert!(text(&out[..committed.bytes]).ends_with("\r\n\r\n"));
    }
    let canned = write_error(404, None, KEEP, &date(), &mut out).unwrap();
    assert_eq!((canned.status, canned.body_bytes()), (404, 10));
    let canned_head = write_error(404, None, head, &date(), &mut out).unwrap();
    assert_eq!(canned_head.body_bytes(), 10, "announced, not sent");
    assert_eq!(
        Committed {
            bytes: 0,
            status: 200,
            body: BodyLength::Chunked
        }
        .body_bytes(),
        0
    );
}

#[test]
fn a_head_completed_around_stashed_policy_lines_equals_the_one_step_head() {
    let mut ex = HttpExchange::new_boxed(0);
    ex.set_header(b"X-Policy", b"yes").unwrap();
    ex.set_header(b"Content-Length", b"16").unwrap();
    ex.add_header(b"Set-Cookie", b"a=1").unwrap();
    let extra: [(&[u8], &[u8]); 2] = [(b"ETag", b"\"1-10\""), (b"Accept-Ranges", b"bytes")];
    let spec = HeadSpec {
        status: 206,
        length: BodyLength::Known(4),
        default_content_type: b"text/css",
        extra: &extra,
    };
    let close = Framing {
        keep_alive: false,
        ..KEEP
    };
    let mut expected = [0u8; 512];
    let one_step =
        write_head_spec(&spec, ex.response_headers(), close, &date(), &mut expected).expect("fits");
    // The lines are stashed anywhere ahead in the buffer (before, inside or
    // past where the head will start), then the head is completed.
    for lines_at in [0usize, 7, 300] {
        let mut out = [b'#'; 512];
        let lines = write_policy_lines(ex.response_headers(), &mut out[lines_at..]).expect("fits");
        assert!(!lines.has_content_type);
        let two_step =
            write_head_around(&spec, lines_at, lines, close, &date(), &mut out).expect("fits");
        assert_eq!(two_step, one_step, "lines at {lines_at}");
        assert_eq!(
            text(&out[..two_step.bytes]),
            text(&expected[..one_step.bytes])
        );
    }
    let mut tiny = [0u8; 300];
    let lines = write_policy_lines(ex.response_headers(), &mut tiny[200..]).expect("fits");
    let mut short = [0u8; 100];
    short[..lines.len].copy_from_slice(&tiny[200..200 + lines.len]);
    assert_eq!(
        write_head_around(&spec, 0, lines, close, &date(), &mut short),
        Err(ResponseError::HeadTooLarge { capacity: 100 })
    );
}

#[test]
fn a_stashed_line_is_found_by_its_name() {
    let mut ex = HttpExchange::new_boxed(0);
    ex.add_header(b"X-One", b"1").expect("valid");
    ex.add_header(b"etag", b"\"v2\"").expect("valid");
    ex.add_header(b"ETag", b"\"second\"").expect("valid");
    ex.add_header(b"X-Empty", b"").expect("valid");
    let mut out = [0u8; 256];
    let lines = write_policy_lines(ex.response_headers(), &mut out).expect("fits");
    let lines = &out[..lines.len];
    assert_eq!(
        policy_line(lines, b"ETag"),
        Some(&b"\"v2\""[..]),
        "the first"
    );
    assert_eq!(policy_line(lines, b"x-one"), Some(&b"1"[..]));
    assert_eq!(policy_line(lines, b"X-Empty"), Some(&b""[..]));
    assert_eq!(policy_line(lines, b"X-On"), None, "whole names only");
    assert_eq!(policy_line(lines, b"Last-Modified"), None);
    assert_eq!(policy_line(b"", b"ETag"), None);
}
