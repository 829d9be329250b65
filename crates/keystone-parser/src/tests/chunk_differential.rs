//! Differential proptest of [`ChunkedDecoder`] against a reference decoder
//! written straight from RFC 9112 §7.1's grammar: whole-input, line by
//! line, allocating, with no state machine to share a bug with
//! `chunk_lines` (the two are written in different shapes on purpose).
//!
//! Documented divergence: the reference only knows "incomplete" when no
//! line it needs has ended, while the decoder refuses a bad byte as soon as
//! it arrives; so an input the reference calls incomplete may be refused by
//! the decoder, never decoded.

use proptest::prelude::*;

use super::chunked::{feed, Decoded};
use crate::*;

/// The reference's verdict.
#[derive(Debug, PartialEq, Eq)]
enum Reference {
    /// Payload and the bytes after the body.
    Complete(Vec<u8>, Vec<u8>),
    Incomplete,
    Invalid,
}

fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// The next line of `input` from `at`: Ok(Some(line, next)) when a CRLF
/// ends it; Ok(None) when it has not ended; Err when a bare LF or a CR
/// without LF is in it.
fn line(input: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, ()> {
    let rest = &input[at..];
    for (index, &byte) in rest.iter().enumerate() {
        match byte {
            b'\n' => return Err(()),
            b'\r' => {
                return match rest.get(index + 1) {
                    Some(b'\n') => Ok(Some((&rest[..index], at + index + 2))),
                    Some(_) => Err(()),
                    None => Ok(None),
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

/// `chunk-ext` (everything after the size on a chunk line), or false.
fn chunk_ext_is_valid(mut ext: &[u8]) -> bool {
    fn skip_bws(bytes: &[u8]) -> &[u8] {
        let spaces = bytes
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        &bytes[spaces..]
    }
    fn token(bytes: &[u8]) -> Option<&[u8]> {
        let len = bytes.iter().take_while(|&&b| is_tchar(b)).count();
        (len > 0).then(|| &bytes[len..])
    }
    fn quoted(bytes: &[u8]) -> Option<&[u8]> {
        let mut rest = bytes.strip_prefix(b"\"")?;
        loop {
            match *rest.first()? {
                b'"' => return Some(&rest[1..]),
                b'\\' => {
                    let escaped = *rest.get(1)?;
                    if !(escaped == b'\t' || (b' '..=0x7e).contains(&escaped) || escaped >= 0x80) {
                        return None;
                    }
                    rest = &rest[2..];
                }
                b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => rest = &rest[1..],
                _ => return None,
            }
        }
    }
    while !ext.is_empty() {
        // BWS ";" BWS name
        let Some(after_semicolon) = skip_bws(ext).strip_prefix(b";") else {
            return false;
        };
        let Some(after_name) = token(skip_bws(after_semicolon)) else {
            return false;
        };
        ext = after_name;
        // [ BWS "=" BWS value ]
        if let Some(after_equals) = skip_bws(ext).strip_prefix(b"=") {
            let value = skip_bws(after_equals);
            match token(value).or_else(|| quoted(value)) {
                Some(rest) => ext = rest,
                None => return false,
            }
        }
    }
    true
}

fn reference(input: &[u8]) -> Reference {
    let mut payload = Vec::new();
    let mut at = 0;
    loop {
        let (size_line, next) = match line(input, at) {
            Err(()) => return Reference::Invalid,
            Ok(None) => return Reference::Incomplete,
            Ok(Some(found)) => found,
        };
        let digits = size_line
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        // 1*HEXDIG; more than 16 digits is picohttpparser's limit (and past
        // u64 when they are significant).
        if digits == 0 || digits > 16 || !chunk_ext_is_valid(&size_line[digits..]) {
            return Reference::Invalid;
        }
        let text = std::str::from_utf8(&size_line[..digits]).expect("hex digits");
        let size = u64::from_str_radix(text, 16).expect("at most 16 hex digits") as usize;
        at = next;
        if size == 0 {
            break;
        }
        if input.len() < at + size + 2 {
            // Not all data yet: what has come after the data must fit a CRLF.
            let tail = &input[(at + size).min(input.len())..];
            return if b"\r\n".starts_with(tail) {
                Reference::Incomplete
            } else {
                Reference::Invalid
            };
        }
        payload.extend_from_slice(&input[at..at + size]);
        if &input[at + size..at + size + 2] != b"\r\n" {
            return Reference::Invalid;
        }
        at += size + 2;
    }
    // trailer-section CRLF
    loop {
        let (field_line, next) = match line(input, at) {
            Err(()) => return Reference::Invalid,
            Ok(None) => return Reference::Incomplete,
            Ok(Some(found)) => found,
        };
        at = next;
        if field_line.is_empty() {
            return Reference::Complete(payload, input[at..].to_vec());
        }
        let Some(colon) = field_line.iter().position(|&b| b == b':') else {
            return Reference::Invalid;
        };
        let (name, value) = (&field_line[..colon], &field_line[colon + 1..]);
        let value_ok = value
            .iter()
            .all(|&b| b == b'\t' || (b' '..=0x7e).contains(&b) || b >= 0x80);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) || !value_ok {
            return Reference::Invalid;
        }
    }
}

fn extension() -> impl Strategy<Value = String> {
    let bws = prop::sample::select(vec!["", "", " ", "\t", "  "]);
    let value = prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,8}".prop_map(|v| format!("={v}")),
        "[ !#-\\[\\]-~]{0,8}".prop_map(|v| format!("=\"{v}\"")),
        "[a-z]{0,3}".prop_map(|v| format!("=\"\\\"{v}\\\\\"")),
    ];
    (bws.clone(), bws, "[a-z0-9-]{1,8}", value)
        .prop_map(|(before, after, name, value)| format!("{before};{after}{name}{value}"))
}

prop_compose! {
    /// A valid chunked body (sizes in either case, leading zeros,
    /// extensions, trailers) and what follows it.
    fn valid_body()(
        chunks in prop::collection::vec(
            ("[a-zA-Z0-9 ]{1,40}", prop::collection::vec(extension(), 0..3), 0_usize..3, any::<bool>()),
            0..5,
        ),
        last_ext in prop::collection::vec(extension(), 0..2),
        trailers in prop::collection::vec(("[A-Za-z-]{1,10}", "[ -~]{0,16}"), 0..3),
        after in prop::sample::select(vec!["", "GET / HTTP/1.1\r\n\r\n", "X"]),
    ) -> Vec<u8> {
        let mut body = String::new();
        for (data, exts, zeros, upper) in chunks {
            let size = format!("{}{:x}", "0".repeat(zeros), data.len());
            let size = if upper { size.to_uppercase() } else { size };
            body.push_str(&format!("{size}{}\r\n{data}\r\n", exts.concat()));
        }
        body.push_str(&format!("0{}\r\n", last_ext.concat()));
        for (name, value) in trailers {
            body.push_str(&format!("{name}:{value}\r\n"));
        }
        body.push_str("\r\n");
        body.push_str(after);
        body.into_bytes()
    }
}

/// A valid body with a few bytes replaced, inserted or removed, drawn from
/// the bytes that matter to framing.
fn mutated_body() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop::sample::select(vec![
        b' ', b'\t', b';', b'=', b'"', b'\\', b'\r', b'\n', 0, 0x7f, 0x80, b'x', b'0', b'f', b':',
        b',', b'@',
    ]);
    (
        valid_body(),
        prop::collection::vec(
            (any::<prop::sample::Index>(), byte, 0_u8..3, any::<bool>()),
            1..4,
        ),
    )
        .prop_map(|(mut body, edits)| {
            for (index, byte, kind, near_line_end) in edits {
                if body.is_empty() {
                    break;
                }
                // Half the edits land on a CR or LF, where framing bugs live.
                let line_ends: Vec<usize> = (0..body.len())
                    .filter(|&at| body[at] == b'\r' || body[at] == b'\n')
                    .collect();
                let at = if near_line_end && !line_ends.is_empty() {
                    line_ends[index.index(line_ends.len())]
                } else {
                    index.index(body.len())
                };
                match kind {
                    0 => body[at] = byte,
                    1 => body.insert(at, byte),
                    _ => {
                        body.remove(at);
                    }
                }
            }
            body
        })
}

fn check(input: &[u8], split: usize) -> Result<(), TestCaseError> {
    let split = split.min(input.len());
    let got: Option<Decoded> = feed(&[&input[..split], &input[split..]], u64::MAX);
    let byte_by_byte: Vec<&[u8]> = input.chunks(1).collect();
    prop_assert_eq!(
        &got,
        &feed(&byte_by_byte, u64::MAX),
        "pieces change the verdict"
    );
    match (reference(input), got) {
        (Reference::Complete(payload, after), got) => {
            prop_assert_eq!(got, Some(Ok((payload, after))))
        }
        (Reference::Invalid, got) => prop_assert_eq!(got, Some(Err(ParseError::BadChunk))),
        (Reference::Incomplete, None | Some(Err(ParseError::BadChunk))) => {}
        (Reference::Incomplete, got) => {
            prop_assert!(false, "reference incomplete, decoder {:?}", got)
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn valid_bodies_decode_as_the_reference_says(body in valid_body(), split in 0_usize..400) {
        prop_assert!(matches!(reference(&body), Reference::Complete(..)), "generator made {:?}", String::from_utf8_lossy(&body));
        check(&body, split)?;
    }

    #[test]
    fn mutated_bodies_agree_with_the_reference(body in mutated_body(), split in 0_usize..400) {
        check(&body, split)?;
    }

    #[test]
    fn random_bytes_agree_with_the_reference(body in prop::collection::vec(any::<u8>(), 0..64), split in 0_usize..64) {
        check(&body, split)?;
    }
}

#[test]
fn the_reference_knows_the_grammar() {
    let complete = |input: &[u8]| matches!(reference(input), Reference::Complete(..));
    assert!(complete(b"5;a=\"x\\\"y\" ; b\r\nhello\r\n0\r\n\r\n"));
    assert!(!complete(b"5 \r\nhello\r\n0\r\n\r\n"));
    assert!(!complete(b"5;\r\nhello\r\n0\r\n\r\n"));
    assert!(!complete(b"5\nhello\r\n0\r\n\r\n"));
    assert_eq!(reference(b"5;a b"), Reference::Incomplete);
}
