//! Chunked decoder rows, split at every byte position.

use crate::*;

const MAX: u64 = 1024;

/// Decoded payload and the bytes after the body, or the error.
pub(super) type Decoded = Result<(Vec<u8>, Vec<u8>), ParseError>;

/// Feeds `pieces` the way the server does: appended to one region, decoded
/// in place from the first undecoded byte, stale framing cut off the end.
/// Returns None if the body never completed.
pub(super) fn feed(pieces: &[&[u8]], max_body_bytes: u64) -> Option<Decoded> {
    let mut decoder = ChunkedDecoder::new();
    let mut region: Vec<u8> = Vec::new();
    let mut decoded = 0_usize;
    for (index, piece) in pieces.iter().enumerate() {
        region.extend_from_slice(piece);
        let progress = match decoder.decode(&mut region[decoded..], max_body_bytes) {
            Ok(progress) => progress,
            Err(error) => return Some(Err(error)),
        };
        let live_end = decoded + (progress.decoded_len + progress.leftover) as usize;
        region.truncate(live_end); // RingBuffer::cut of the stale framing
        decoded += progress.decoded_len as usize;
        assert_eq!(decoder.decoded_total(), decoded as u64);
        if progress.consumed_all {
            let mut leftover = region.split_off(decoded);
            assert_eq!(leftover.len(), progress.leftover as usize);
            // Later pieces arrive after the body: they belong to the next request.
            leftover.extend(pieces[index + 1..].concat());
            return Some(Ok((region, leftover)));
        }
        assert_eq!(progress.leftover, 0);
        assert_eq!(region.len(), decoded, "all input consumed while incomplete");
    }
    None
}

fn ok(payload: &[u8], leftover: &[u8]) -> Option<Decoded> {
    Some(Ok((payload.to_vec(), leftover.to_vec())))
}

fn without_declared(decoded: &Option<Decoded>) -> Option<Decoded> {
    match decoded {
        Some(Err(ParseError::BodyTooLarge { limit, declared })) => {
            assert!(declared > limit);
            Some(Err(ParseError::BodyTooLarge {
                limit: *limit,
                declared: 0,
            }))
        }
        other => other.clone(),
    }
}

#[test]
fn chunked_rows_split_at_every_byte() {
    let rows: &[(&[u8], u64, Option<Decoded>)] = &[
        (b"5\r\nhello\r\n0\r\n\r\n", MAX, ok(b"hello", b"")),
        (
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            MAX,
            ok(b"hello world", b""),
        ),
        (
            b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
            MAX,
            ok(b"hello", b"GET / HTTP/1.1\r\n"),
        ),
        (b"A\r\n0123456789\r\n0\r\n\r\n", MAX, ok(b"0123456789", b"")),
        (b"a\r\n0123456789\r\n0\r\n\r\n", MAX, ok(b"0123456789", b"")),
        (b"005\r\nhello\r\n0\r\n\r\n", MAX, ok(b"hello", b"")),
        (
            b"5;name=value\r\nhello\r\n0;x\r\n\r\n",
            MAX,
            ok(b"hello", b""),
        ),
        (
            b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\nNEXT",
            MAX,
            ok(b"hello", b"NEXT"),
        ),
        (
            b"5;a=\"q \\\" v\";b;c = d ;e\r\nhello\r\n0\r\n\r\n",
            MAX,
            ok(b"hello", b""),
        ),
        (b"5 ;a\r\nhello\r\n0\r\n\r\n", MAX, ok(b"hello", b"")),
        (
            b"5\t;\ta\t=\tb\r\nhello\r\n0\r\n\r\n",
            MAX,
            ok(b"hello", b""),
        ),
        (
            b"5;name=\"quoted value\"\r\nhello\r\n0\r\n\r\n",
            MAX,
            ok(b"hello", b""),
        ),
        (
            b"5;q=\"caf\xc3\xa9\"\r\nhello\r\n0\r\n\r\n",
            MAX,
            ok(b"hello", b""),
        ),
        (
            b"0000000000000005\r\nhello\r\n0\r\n\r\n",
            MAX,
            ok(b"hello", b""),
        ),
        (
            b"5\r\nhello\r\n000\r\nX-T: a\tb \r\nY:\r\n\r\n",
            MAX,
            ok(b"hello", b""),
        ),
        (b"0\r\n\r\n", MAX, ok(b"", b"")),
        (b"5\r\nhel", MAX, None),
        (b"5\r\nhello\r\n0\r\n", MAX, None),
        (
            b"5\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5\r\nhello\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5\r\nhello\r\n0\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5\r\nhello\r\n0\r\n\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (b"5\nhello\n0\n\n", MAX, Some(Err(ParseError::BadChunk))),
        (
            b"5\r\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5\r\nhello\r\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5; \r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5 \r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5\t\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"0x5\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a b\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a \r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a=\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a=b \r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a=b c\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a=\"b\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a=\"b\"c\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a=\"b\x01\"\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a=\"b\\\x7f\"\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a@b\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a(b)\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;=b\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a\x00\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a\x7f\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a=b\rc\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5\x00\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b" 5\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"+5\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5_0\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5\r\nhello\r\n0\r\n X: y\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5\r\nhello\r\n0\r\nX-T: a\r\n folded\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5\r\nhello\r\n0\r\nX T: a\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5\r\nhello\r\n0\r\n: a\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5\r\nhello\r\n0\r\nX-T a\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5\r\nhello\r\n0\r\nX-T: a\x00b\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5\r\nhello\r\n0\r\nX-T: a\rb\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5\r\nhello\r\n0\r\n\r\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"00000000000000005\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"g\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"-5\r\nhello\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"5\r\nhelloX\r\n0\r\n\r\n",
            MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (b"5\r\nhello0\r\n\r\n", MAX, Some(Err(ParseError::BadChunk))),
        (
            b"11111111111111111\r\n",
            u64::MAX,
            Some(Err(ParseError::BadChunk)),
        ),
        (
            b"ffffffffffffffff\r\n",
            MAX,
            Some(Err(ParseError::BodyTooLarge {
                limit: MAX,
                declared: u64::MAX,
            })),
        ),
        (b"6\r\nhello!\r\n0\r\n\r\n", 6, ok(b"hello!", b"")),
        (
            b"6\r\nhello!\r\n0\r\n\r\n",
            5,
            Some(Err(ParseError::BodyTooLarge {
                limit: 5,
                declared: 6,
            })),
        ),
        (
            b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
            5,
            Some(Err(ParseError::BodyTooLarge {
                limit: 5,
                declared: 6,
            })),
        ),
    ];
    for (input, max_body_bytes, expected) in rows {
        let name = String::from_utf8_lossy(input);
        assert_eq!(
            &feed(&[input], *max_body_bytes),
            expected,
            "one piece: {name:?}"
        );
        for split in 0..=input.len() {
            let (first, second) = input.split_at(split);
            let got = feed(&[first, second], *max_body_bytes);
            // A size line cut short declares less: only the error kind and
            // limit must agree.
            assert_eq!(
                without_declared(&got),
                without_declared(expected),
                "split at {split}: {name:?}"
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let got = feed(&bytes, *max_body_bytes);
        assert_eq!(
            without_declared(&got),
            without_declared(expected),
            "byte by byte: {name:?}"
        );
    }
}

#[test]
fn decode_after_final_chunk_panics_until_reset() {
    let mut decoder = ChunkedDecoder::new();
    let mut body = b"0\r\n\r\n".to_vec();
    assert!(decoder.decode(&mut body, MAX).expect("valid").consumed_all);
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut more = b"0\r\n\r\n".to_vec();
        decoder
            .decode(&mut more, MAX)
            .map(|progress| progress.consumed_all)
    }));
    assert!(again.is_err());
    let mut decoder = ChunkedDecoder::new();
    decoder
        .decode(&mut b"0\r\n\r\n".to_vec(), MAX)
        .expect("valid");
    decoder.reset();
    let mut next = b"1\r\nx\r\n0\r\n\r\n".to_vec();
    let progress = decoder.decode(&mut next, MAX).expect("valid after reset");
    assert_eq!(
        progress,
        ChunkProgress {
            decoded_len: 1,
            consumed_all: true,
            leftover: 0
        }
    );
    assert_eq!(&next[..1], b"x");
}

#[test]
fn works_on_a_ring_buffer_with_cut() {
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
    let mut ring = keystone_ringbuf::split_slab(1, 4096)
        .expect("map")
        .pop()
        .expect("one");
    ring.append(head).expect("room");
    let body_start = head.len() as u32;
    let mut decoder = ChunkedDecoder::new();
    let mut decoded = 0_u32;
    let mut pieces = body.chunks(7);
    for piece in pieces.by_ref() {
        ring.append(piece).expect("room");
        let undecoded = Span::new(body_start + decoded, ring.tail() - body_start - decoded);
        let progress = decoder.decode(ring.get_mut(undecoded), MAX).expect("valid");
        let stale_at = undecoded.offset + progress.decoded_len + progress.leftover;
        ring.cut(stale_at, ring.tail() - stale_at);
        decoded += progress.decoded_len;
        if progress.consumed_all {
            break;
        }
    }
    for piece in pieces {
        ring.append(piece).expect("room");
    }
    assert_eq!(ring.get(Span::new(body_start, decoded)), b"hello world");
    let next = &ring.filled()[(body_start + decoded) as usize..];
    assert_eq!(next, b"GET /next HTTP/1.1\r\n\r\n");
}
