//! Response-head rows: framing, keep-alive and refusals, split at every byte.

use crate::*;

const BASE: u32 = 7;
const MAX: u32 = 4096;

fn parse(input: &[u8], head_request: bool) -> Result<Option<ResponseHead>, ParseError> {
    let mut parser = ResponseParser::new();
    let mut head = ResponseHead::default();
    match parser.parse(input, BASE, head_request, MAX, &mut head)? {
        ParseStatus::Complete => Ok(Some(head)),
        ParseStatus::Partial => Ok(None),
    }
}

#[test]
fn framing_and_keep_alive() {
    use ResponseBody::*;
    let rows: &[(&[u8], bool, u16, ResponseBody, bool)] = &[
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            false,
            200,
            Length(5),
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            false,
            200,
            Length(5),
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            200,
            Chunked,
            true,
        ),
        (b"HTTP/1.1 200 OK\r\n\r\n", false, 200, UntilClose, false),
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
            200,
            Length(1),
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
            false,
            200,
            Length(1),
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            false,
            200,
            Length(1),
            true,
        ),
        (
            b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
            false,
            204,
            None,
            true,
        ),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", false, 304, None, true),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            true,
            200,
            None,
            true,
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\n", false, 100, None, true),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            false,
            101,
            None,
            true,
        ),
        (
            b"HTTP/1.1 502 \r\nContent-Length: 0\r\n\r\n",
            false,
            502,
            Length(0),
            true,
        ),
        // No reason phrase, not even its space (RFC 9112 §4: optional).
        (
            b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n",
            false,
            200,
            Length(2),
            true,
        ),
        (b"HTTP/1.0 404\r\n\r\n", false, 404, UntilClose, false),
    ];
    for &(input, head_request, status, body, keep_alive) in rows {
        let name = String::from_utf8_lossy(input);
        let head = parse(input, head_request)
            .unwrap_or_else(|err| panic!("{name:?}: {err}"))
            .unwrap_or_else(|| panic!("{name:?}: partial"));
        assert_eq!(head.status, status, "{name:?}");
        assert_eq!(head.body, body, "{name:?}");
        assert_eq!(head.keep_alive, keep_alive, "{name:?}");
        let end = input
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end")
            + 4;
        assert_eq!(head.head_len as usize, end, "{name:?}");
        assert_eq!(head.is_interim(), status == 100, "{name:?}");
        for split in 0..end {
            assert_eq!(
                parse(&input[..split], head_request),
                Ok(Option::None),
                "{name:?} at {split}"
            );
        }
    }
}

#[test]
fn header_spans_are_absolute_and_trimmed() {
    let input = b"HTTP/1.1 404 Not Found\r\nX-A:  one  \r\nContent-Length: 0\r\n\r\n";
    let head = parse(input, false).unwrap().unwrap();
    let text = |span: Span| &input[(span.offset - BASE) as usize..(span.end() - BASE) as usize];
    assert_eq!(text(head.reason), b"Not Found");
    assert_eq!(head.headers().len(), 2);
    assert_eq!(text(head.headers()[0].name), b"X-A");
    assert_eq!(text(head.headers()[0].value), b"one");
}

#[test]
fn refused_heads() {
    use ParseError::*;
    let rows: &[(&[u8], ParseError)] = &[
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            ConflictingFraming,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            BadContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            BadContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
            BadContentLength,
        ),
        // Only chunked is decoded: a body in another coding would reach
        // the client as bytes nothing says are compressed.
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            UnsupportedTransferEncoding,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            UnsupportedTransferEncoding,
        ),
        (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", ObsFold),
        (b"HTTP/1.1 2000 OK\r\n\r\n", Malformed),
        (b"HTTP/1.1 099 OK\r\n\r\n", Malformed),
        (b"HTTP/2 200 OK\r\n\r\n", Malformed),
        (b"SSH-2.0-OpenSSH\r\n\r\n", Malformed),
        (b"HTTP/1.1 200 OK\r\nBad Name: v\r\n\r\n", Malformed),
        (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n", Malformed),
    ];
    for (input, expected) in rows {
        assert_eq!(
            parse(input, false),
            Err(*expected),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    let big = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &[b'a'; 5000]].concat();
    assert_eq!(parse(&big, false), Err(HeadTooLarge { limit: MAX }));
}
