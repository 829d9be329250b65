//! `Parser::parse` and `ChunkedDecoder::decode` on arbitrary bytes, with
//! small limits so every limit is reachable. Checks: no panic; on
//! `Complete` every span lies inside the head (and path and query inside
//! the target), counts and lengths respect the limits; parsing a prefix
//! first (picohttpparser's incremental `last_len` path) and then the whole
//! agrees with parsing the whole at once; decoding a chunked body in two
//! pieces gives the same payload and leftover as decoding it in one.
//!
//! Input: byte 0 picks the cut, byte 1 the limits, the rest is the data.

#![no_main]

use keystone_parser::{
    BodyFraming, ChunkedDecoder, Head, Limits, ParseError, ParseStatus, Parser, Span,
};
use libfuzzer_sys::fuzz_target;

/// Spans are absolute: start the buffer somewhere other than 0.
const BASE_OFFSET: u32 = 4096;

fuzz_target!(|input: &[u8]| {
    let [cut_seed, limits_seed, data @ ..] = input else {
        return;
    };
    let limits = Limits {
        max_header_bytes: 64 + u32::from(limits_seed & 0x0f) * 32,
        max_headers: 1 + u16::from(limits_seed >> 4),
        max_uri_bytes: 16 + u32::from(limits_seed & 0x0f) * 8,
        max_body_bytes: u64::from(*limits_seed) * 4,
    };
    let cut = usize::from(*cut_seed) * data.len() / 256;
    check_parse(data, cut, &limits);
    check_chunked(data, cut, limits.max_body_bytes);
});

fn check_parse(data: &[u8], cut: usize, limits: &Limits) {
    let mut whole_head = Head::new();
    let whole = Parser::new().parse(data, BASE_OFFSET, limits, &mut whole_head);
    if whole == Ok(ParseStatus::Complete) {
        check_head(&whole_head, data, limits);
    }
    // The same bytes arriving in two reads.
    let mut parser = Parser::new();
    let mut head = Head::new();
    let first = parser.parse(&data[..cut], BASE_OFFSET, limits, &mut head);
    match first {
        Ok(ParseStatus::Partial) => {
            let second = parser.parse(data, BASE_OFFSET, limits, &mut head);
            if second == Ok(ParseStatus::Partial) && whole.is_err() {
                // Allowed: a bad header line may be reported only once the
                // head ends (the parser's "Not promised"). It must be then.
                let mut ended = data.to_vec();
                ended.extend_from_slice(b"\r\n\r\n");
                let third = parser.parse(&ended, BASE_OFFSET, limits, &mut head);
                assert!(
                    third.is_err(),
                    "deferred error lost: {third:?} vs {whole:?}"
                );
                return;
            }
            // Which error is reported may differ (a deferred bad line can
            // meet the head limit first: 431 instead of 400); that one is.
            assert_eq!(second.is_err(), whole.is_err(), "{second:?} vs {whole:?}");
            if second.is_ok() {
                assert_eq!(second, whole, "incremental parse disagrees");
            }
            if second == Ok(ParseStatus::Complete) {
                assert_eq!(head, whole_head, "incremental head differs");
            }
        }
        Ok(ParseStatus::Complete) => {
            // A complete head in a prefix is the same head in the whole.
            check_head(&head, &data[..cut], limits);
            assert_eq!(whole, Ok(ParseStatus::Complete));
            assert_eq!(head, whole_head, "prefix head differs");
        }
        Err(_) => assert!(whole.is_err(), "prefix refused, whole accepted"),
    }
}

fn check_head(head: &Head, data: &[u8], limits: &Limits) {
    let head_len = head.head_len as usize;
    assert!(head_len > 0);
    assert!(head_len <= data.len());
    assert!(head.head_len <= limits.max_header_bytes);
    let head_span = Span::new(BASE_OFFSET, head.head_len);
    let inside = |span: Span, outer: Span| span.offset >= outer.offset && span.end() <= outer.end();
    assert!(inside(head.method, head_span));
    assert!(!head.method.is_empty());
    assert!(inside(head.target, head_span));
    assert!(!head.target.is_empty());
    assert!(head.target.len <= limits.max_uri_bytes);
    assert!(inside(head.path, head.target));
    if head.has_query {
        assert!(inside(head.query, head.target));
        assert!(head.query.offset >= head.path.end());
    }
    assert!(head.minor_version <= 1);
    assert!(head.header_count <= limits.max_headers);
    for header in head.headers() {
        assert!(inside(header.name, head_span));
        assert!(!header.name.is_empty());
        assert!(inside(header.value, head_span));
        let start = (header.value.offset - BASE_OFFSET) as usize;
        let value = &data[start..start + header.value.len as usize];
        assert!(!value.ends_with(b" "), "value not trimmed");
        assert!(!value.ends_with(b"\t"), "value not trimmed");
        assert!(!value.contains(&b'\r'));
        assert!(!value.contains(&b'\n'));
    }
    if head.has_host {
        assert!(inside(head.host, head_span));
    }
    if let BodyFraming::Length(n) = head.body {
        assert!(n <= limits.max_body_bytes);
    }
    if head.minor_version == 0 {
        assert_ne!(head.body, BodyFraming::Chunked, "chunked on HTTP/1.0");
    }
}

/// Payload and, once complete, the bytes after the body.
type Decoded = Result<(Vec<u8>, Option<Vec<u8>>), ParseError>;

fn check_chunked(data: &[u8], cut: usize, max_body_bytes: u64) {
    let whole = decode_pieces(&[data], max_body_bytes);
    let split = decode_pieces(&[&data[..cut], &data[cut..]], max_body_bytes);
    match (&whole, &split) {
        (Ok(whole), Ok(split)) => assert_eq!(whole, split, "split decode differs"),
        _ => assert_eq!(whole.is_err(), split.is_err(), "{whole:?} vs {split:?}"),
    }
    if let Ok((payload, _)) = &whole {
        assert!(payload.len() as u64 <= max_body_bytes);
    }
}

/// Decodes `pieces` as successive reads of one chunked body.
fn decode_pieces(pieces: &[&[u8]], max_body_bytes: u64) -> Decoded {
    let mut decoder = ChunkedDecoder::new();
    let mut payload = Vec::new();
    let mut rest = Vec::new();
    for (index, piece) in pieces.iter().enumerate() {
        let mut buf = piece.to_vec();
        let progress = decoder.decode(&mut buf, max_body_bytes)?;
        let decoded = progress.decoded_len as usize;
        let leftover = progress.leftover as usize;
        assert!(decoded + leftover <= buf.len(), "progress past the input");
        assert_eq!(decoder.decoded_total(), (payload.len() + decoded) as u64);
        payload.extend_from_slice(&buf[..decoded]);
        if progress.consumed_all {
            rest.extend_from_slice(&buf[decoded..decoded + leftover]);
            for later in &pieces[index + 1..] {
                rest.extend_from_slice(later);
            }
            return Ok((payload, Some(rest)));
        }
        assert_eq!(leftover, 0, "partial decode left bytes");
    }
    Ok((payload, None))
}
