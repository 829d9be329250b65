//! Query-string arguments: found in the raw query and percent-decoded into
//! caller-provided scratch, so reading `ctx.args.NAME` allocates nothing in
//! Rust.

/// Finds the first argument named `name` in `query` (raw, without `?`),
/// comparing names after percent-decoding, and decodes its value into
/// `scratch`. Returns the decoded length, `None` when absent. An argument
/// without `=` has the empty value. `+` decodes to a space, as HTML forms
/// and nginx's `$arg_` (via `ngx.req.get_uri_args`) do.
///
/// A value longer than `scratch` is truncated to it; callers size scratch
/// from the URI limit so this cannot happen for a request that parsed.
pub fn find_query_arg(query: &[u8], name: &[u8], scratch: &mut [u8]) -> Option<usize> {
    for pair in query.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (raw_name, raw_value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        if decoded_equals(raw_name, name) {
            return Some(percent_decode_into(raw_value, scratch));
        }
    }
    None
}

/// Percent-decodes `input` into `out` (with `+` as space) and returns the
/// number of bytes written. Invalid escapes are kept literally, as nginx
/// does for arguments.
pub fn percent_decode_into(input: &[u8], out: &mut [u8]) -> usize {
    let mut written = 0;
    for byte in (Decoder { input, index: 0 }) {
        if written == out.len() {
            break;
        }
        out[written] = byte;
        written += 1;
    }
    written
}

fn decoded_equals(raw: &[u8], expected: &[u8]) -> bool {
    let mut decoder = Decoder {
        input: raw,
        index: 0,
    };
    let mut expected_iter = expected.iter();
    loop {
        match (decoder.next(), expected_iter.next()) {
            (None, None) => return true,
            (Some(a), Some(&b)) if a == b => continue,
            _ => return false,
        }
    }
}

struct Decoder<'a> {
    input: &'a [u8],
    index: usize,
}

impl Iterator for Decoder<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let byte = *self.input.get(self.index)?;
        self.index += 1;
        match byte {
            b'+' => Some(b' '),
            b'%' => {
                let high = self.input.get(self.index).and_then(|&b| hex(b));
                let low = self.input.get(self.index + 1).and_then(|&b| hex(b));
                match (high, low) {
                    (Some(high), Some(low)) => {
                        self.index += 2;
                        Some(high << 4 | low)
                    }
                    _ => Some(b'%'),
                }
            }
            other => Some(other),
        }
    }
}

const fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(query: &str, name: &str, expected: Option<&str>) {
        let mut scratch = [0u8; 64];
        let got = find_query_arg(query.as_bytes(), name.as_bytes(), &mut scratch)
            .map(|len| String::from_utf8_lossy(&scratch[..len]).into_owned());
        assert_eq!(got.as_deref(), expected, "query={query:?} name={name:?}");
    }

    #[test]
    fn args() {
        check("a=1&b=2", "b", Some("2"));
        check("a=1&b=2", "c", None);
        check("", "a", None);
        check("flag&x=1", "flag", Some(""));
        check("q=hello+world%21", "q", Some("hello world!"));
        check("na%6De=v", "name", Some("v"));
        check("a=1&a=2", "a", Some("1"));
        check("bad=%zz%4", "bad", Some("%zz%4"));
        check("&&a=%E2%9C%93", "a", Some("✓"));
        check("a==b", "a", Some("=b"));
    }

    #[test]
    fn decode_truncates_to_scratch() {
        let mut out = [0u8; 3];
        assert_eq!(percent_decode_into(b"abcdef", &mut out), 3);
        assert_eq!(&out, b"abc");
    }
}
