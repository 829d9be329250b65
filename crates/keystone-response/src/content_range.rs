//! The `Content-Range` header value of a 206 or 416 (RFC 9110 §14.4),
//! formatted into a fixed array: `bytes FIRST-LAST/SIZE` or `bytes */SIZE`.

/// Longest value: `bytes ` (6) + three `u64`s of at most 20 digits each +
/// `-` and `/` (2) = 68 bytes, so no range of any file size is cut.
pub const CONTENT_RANGE_BYTES: usize = 6 + 20 + 1 + 20 + 1 + 20;

/// Digits of `u64::MAX`, the longest decimal a `u64` formats to.
const U64_DIGITS_MAX: usize = 20;

// 10^19 <= u64::MAX < 10^20: twenty digits, no more (10^20 does not fit).
const _: () = assert!(u64::MAX / 10_u64.pow(U64_DIGITS_MAX as u32 - 1) >= 1);
const _: () = assert!(CONTENT_RANGE_BYTES == b"bytes -/".len() + 3 * U64_DIGITS_MAX);

/// Writes the `Content-Range` value for `range` (`Some((first, last))`,
/// both inclusive, for a 206; `None` for a 416's `bytes */SIZE`) of a
/// representation of `size` bytes into `out`; returns its length.
///
/// Panics when `first > last` or `last >= size`: a 206 range is decided by
/// the caller from `size`, so such a range is a programmer error.
pub fn content_range(
    range: Option<(u64, u64)>,
    size: u64,
    out: &mut [u8; CONTENT_RANGE_BYTES],
) -> usize {
    let mut len = put(out, 0, b"bytes ");
    match range {
        Some((first, last)) => {
            assert!(first <= last, "range {first}-{last} is reversed");
            assert!(last < size, "range {first}-{last} ends past {size} bytes");
            len = put_decimal(out, len, first);
            len = put(out, len, b"-");
            len = put_decimal(out, len, last);
        }
        None => len = put(out, len, b"*"),
    }
    len = put(out, len, b"/");
    len = put_decimal(out, len, size);
    debug_assert!(len <= CONTENT_RANGE_BYTES);
    len
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) -> usize {
    out[at..at + bytes.len()].copy_from_slice(bytes);
    at + bytes.len()
}

fn put_decimal(out: &mut [u8], at: usize, mut value: u64) -> usize {
    let mut digits = [0u8; U64_DIGITS_MAX];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    put(out, at, &digits[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(range: Option<(u64, u64)>, size: u64, expected: &str) {
        let mut out = [0u8; CONTENT_RANGE_BYTES];
        let len = content_range(range, size, &mut out);
        assert_eq!(
            std::str::from_utf8(&out[..len]).unwrap(),
            expected,
            "{range:?} {size}"
        );
    }

    #[test]
    fn formats_ranges_and_unsatisfiable() {
        check(Some((0, 9)), 100, "bytes 0-9/100");
        check(Some((0, 0)), 1, "bytes 0-0/1");
        check(Some((90, 99)), 100, "bytes 90-99/100");
        check(None, 100, "bytes */100");
        check(None, 0, "bytes */0");
    }

    #[test]
    fn longest_value_fits() {
        let max = u64::MAX;
        check(
            Some((max - 1, max - 1)),
            max,
            "bytes 18446744073709551614-18446744073709551614/18446744073709551615",
        );
        let mut out = [0u8; CONTENT_RANGE_BYTES];
        let len = content_range(Some((max - 1, max - 1)), max, &mut out);
        assert_eq!(len, CONTENT_RANGE_BYTES);
    }
}
