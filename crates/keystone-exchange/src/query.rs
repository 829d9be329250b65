//! Query-string arguments: found in the raw query and percent-decoded into
//! caller-provided scratch, so reading `ctx.args.NAME` allocates nothing in
//! Rust.

use keystone_parser::text::{percent_decode_into, PercentDecoder, Plus};

/// Finds the first argument named `name` in `query` (raw, without `?`),
/// comparing names after percent-decoding, and decodes its value into
/// `scratch`. Returns the decoded length, `None` when absent. An argument
/// without `=` has the empty value. `+` decodes to a space, as HTML forms
/// and nginx's `$arg_` (via `ngx.req.get_uri_args`) do; invalid escapes are
/// kept literally (the parser's one decoder, `keystone_parser::text`).
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
        if PercentDecoder::new(raw_name, Plus::Space).eq(name.iter().copied()) {
            return Some(percent_decode_into(raw_value, scratch, Plus::Space));
        }
    }
    None
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
        check("a+b=1", "a b", Some("1"));
        check("a%2Bb=1", "a+b", Some("1"));
        check("a%2Bb=1", "a b", None);
        check("x=%", "x", Some("%"));
        check("x=a%2", "x", Some("a%2"));
        check("x=%2B+", "x", Some("+ "));
        check("=v&x=1", "", Some("v"));
        check("x", "xx", None);
    }

    #[test]
    fn value_truncates_to_scratch() {
        let mut scratch = [0u8; 3];
        assert_eq!(find_query_arg(b"a=abcdef", b"a", &mut scratch), Some(3));
        assert_eq!(&scratch, b"abc");
    }
}
