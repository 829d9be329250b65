//! Byte-text helpers shared by the whole workspace, so each rule exists
//! once: the one percent-decoder (URL paths and query arguments), the one
//! optional-whitespace trim (RFC 9110 §5.6.3 OWS: SP and HTAB), the one
//! `1*DIGIT` parser and the one list of hop-by-hop fields (both directions
//! of a proxy drop them). All of them work on caller-owned bytes and never
//! allocate.
//!
//! Not promised: the decoder does not validate UTF-8 and does not reject
//! malformed escapes; an escape that is not `%` plus two hex digits (`%zz`,
//! a trailing `%`) is kept literally, as nginx does for arguments. Callers
//! that confine decoded bytes (file paths) check the decoded result.

/// What a `+` means to [`PercentDecoder`] and [`percent_decode_into`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plus {
    /// `+` is itself (URL paths: RFC 3986 gives `+` no special meaning).
    Literal,
    /// `+` is a space (query strings, as HTML forms and nginx's `$arg_` do).
    Space,
}

/// Decodes percent-escapes of `input` one byte at a time, so decoded text
/// can be compared or copied without a buffer:
/// `PercentDecoder::new(raw, Plus::Space).eq(name.iter().copied())`.
#[derive(Clone, Debug)]
pub struct PercentDecoder<'a> {
    input: &'a [u8],
    index: usize,
    plus: Plus,
}

impl<'a> PercentDecoder<'a> {
    /// A decoder over `input`, reading `+` as `plus` says.
    pub fn new(input: &'a [u8], plus: Plus) -> PercentDecoder<'a> {
        PercentDecoder {
            input,
            index: 0,
            plus,
        }
    }
}

impl Iterator for PercentDecoder<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let byte = *self.input.get(self.index)?;
        self.index += 1;
        match byte {
            b'+' if self.plus == Plus::Space => Some(b' '),
            b'%' => {
                let high = self.input.get(self.index).and_then(|&b| hex_value(b));
                let low = self.input.get(self.index + 1).and_then(|&b| hex_value(b));
                match (high, low) {
                    (Some(high), Some(low)) => {
                        self.index += 2;
                        debug_assert!(self.index <= self.input.len());
                        Some(high << 4 | low)
                    }
                    _ => Some(b'%'),
                }
            }
            other => Some(other),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // Each decoded byte consumes one to three input bytes.
        let left = self.input.len() - self.index;
        (left.div_ceil(3), Some(left))
    }
}

/// Percent-decodes `input` into `out` and returns the number of bytes
/// written. Stops when `out` is full (the rest of `input` is dropped: size
/// `out` from the input length, which decoding never exceeds, to keep it
/// all).
pub fn percent_decode_into(input: &[u8], out: &mut [u8], plus: Plus) -> usize {
    let mut written = 0;
    for byte in PercentDecoder::new(input, plus) {
        if written == out.len() {
            break;
        }
        out[written] = byte;
        written += 1;
    }
    debug_assert!(written <= input.len());
    written
}

const fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// RFC 9110 §5.6.3 optional whitespace: SP and HTAB. (A parsed header value
/// holds no other control byte: picohttpparser refuses them.)
const OPTIONAL_WHITESPACE: [u8; 2] = [b' ', b'\t'];

/// `bytes` without leading and trailing OWS.
pub fn trim_ows(bytes: &[u8]) -> &[u8] {
    trim_ows_end(trim_ows_start(bytes))
}

/// `bytes` without leading OWS.
pub fn trim_ows_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|byte| !OPTIONAL_WHITESPACE.contains(byte));
    &bytes[start.unwrap_or(bytes.len())..]
}

/// `bytes` without trailing OWS.
pub fn trim_ows_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|byte| !OPTIONAL_WHITESPACE.contains(byte));
    &bytes[..end.map_or(0, |end| end + 1)]
}

/// Non-empty, trimmed elements of a comma list (RFC 9110 §5.6.1 lets
/// recipients ignore empty elements).
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&byte| byte == b',')
        .map(trim_ows)
        .filter(|element| !element.is_empty())
}

/// Whether comma list `value` holds `token` (ASCII case-insensitive), as
/// `Connection: keep-alive, Upgrade` holds `upgrade`.
pub fn list_has(value: &[u8], token: &[u8]) -> bool {
    list_elements(value).any(|element| element.eq_ignore_ascii_case(token))
}

/// `1*DIGIT` into a `u64`; `None` on empty input, a sign, any other byte,
/// or overflow.
pub fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0_u64, |total, &byte| {
        let digit = byte.checked_sub(b'0').filter(|digit| *digit <= 9)?;
        total.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) and the proxy-only `Proxy-*` ones:
/// they describe one connection, never the next hop's, so a proxy passes
/// none of them on, in either direction (a `Connection` header may name
/// more; the caller drops those too).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop))
        || (name.len() >= 6 && name[..6].eq_ignore_ascii_case(b"proxy-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_decode(input: &str, plus: Plus, expected: &[u8]) {
        let mut out = [0u8; 64];
        let written = percent_decode_into(input.as_bytes(), &mut out, plus);
        assert_eq!(&out[..written], expected, "{input:?} {plus:?}");
        let iterated: Vec<u8> = PercentDecoder::new(input.as_bytes(), plus).collect();
        assert_eq!(iterated, expected, "{input:?} {plus:?} (iterator)");
    }

    #[test]
    fn decodes_escapes_and_keeps_invalid_ones() {
        let rows: &[(&str, Plus, &[u8])] = &[
            ("", Plus::Literal, b""),
            ("abc", Plus::Literal, b"abc"),
            ("a%20b", Plus::Literal, b"a b"),
            ("a+b", Plus::Literal, b"a+b"),
            ("a+b", Plus::Space, b"a b"),
            ("%2B", Plus::Space, b"+"),
            ("%2e%2E", Plus::Literal, b".."),
            ("%E2%9C%93", Plus::Literal, "✓".as_bytes()),
            ("%00", Plus::Literal, b"\0"),
            ("%zz", Plus::Literal, b"%zz"),
            ("%4", Plus::Literal, b"%4"),
            ("%", Plus::Literal, b"%"),
            ("a%", Plus::Space, b"a%"),
            ("%%41", Plus::Literal, b"%A"),
            ("%4g", Plus::Literal, b"%4g"),
            ("%ff", Plus::Literal, b"\xff"),
        ];
        for (input, plus, expected) in rows {
            check_decode(input, *plus, expected);
        }
    }

    #[test]
    fn decode_stops_when_out_is_full() {
        let mut out = [0u8; 3];
        assert_eq!(percent_decode_into(b"abcdef", &mut out, Plus::Literal), 3);
        assert_eq!(&out, b"abc");
        assert_eq!(
            percent_decode_into(b"%41%42%43%44", &mut out, Plus::Literal),
            3
        );
        assert_eq!(&out, b"ABC");
        assert_eq!(percent_decode_into(b"abc", &mut [], Plus::Literal), 0);
    }

    #[test]
    fn decoder_compares_without_a_buffer() {
        let equal = |raw: &str, plus, expected: &str| {
            PercentDecoder::new(raw.as_bytes(), plus).eq(expected.bytes())
        };
        assert!(equal("na%6De", Plus::Space, "name"));
        assert!(equal("a+b", Plus::Space, "a b"));
        assert!(!equal("a+b", Plus::Literal, "a b"));
        assert!(!equal("nam", Plus::Space, "name"));
        assert!(!equal("names", Plus::Space, "name"));
    }

    /// Input, then what `trim_ows`, `trim_ows_start` and `trim_ows_end` give.
    type TrimRow = (&'static [u8], &'static [u8], &'static [u8], &'static [u8]);

    #[test]
    fn trims_only_sp_and_htab() {
        let rows: &[TrimRow] = &[
            (b"", b"", b"", b""),
            (b"  ", b"", b"", b""),
            (b"a", b"a", b"a", b"a"),
            (b" \ta b\t ", b"a b", b"a b\t ", b" \ta b"),
            (b"\ra\n", b"\ra\n", b"\ra\n", b"\ra\n"),
        ];
        for (input, both, start, end) in rows {
            assert_eq!(trim_ows(input), *both, "{input:?}");
            assert_eq!(trim_ows_start(input), *start, "{input:?}");
            assert_eq!(trim_ows_end(input), *end, "{input:?}");
        }
    }

    #[test]
    fn decimals() {
        let rows: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("0042", Some(42)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("", None),
            ("+1", None),
            ("-1", None),
            ("1 ", None),
            ("1a", None),
        ];
        for (input, expected) in rows {
            assert_eq!(parse_decimal(input.as_bytes()), *expected, "{input:?}");
        }
    }
}
