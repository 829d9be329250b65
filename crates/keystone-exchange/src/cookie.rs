//! Request cookies (`ctx.cookies.NAME`): found in the `Cookie` header(s) in
//! place and returned as a span of the request bytes, so reading a cookie
//! copies nothing and allocates nothing in Rust.
//!
//! The rule, RFC 6265 §4.2 and §5.4 as browsers send it, read leniently as
//! nginx's `$cookie_NAME` does: every `Cookie` header, in order, is one list
//! of pairs split on `;`; each pair is trimmed of spaces and tabs; the first
//! `=` separates the name from the value, both trimmed again; the first pair
//! whose name equals `name` exactly (cookie names are case-sensitive) wins.
//! The value is returned as sent: surrounding double quotes are part of it,
//! as RFC 6265's `cookie-value` grammar says. A pair without `=` or with an
//! empty name is malformed and skipped, never an error.

use keystone_ringbuf::Span;

/// The span of the value of the first cookie named `name` among `headers`:
/// each item is one `Cookie` header's value bytes and their absolute span.
pub fn find_cookie<'a>(
    headers: impl Iterator<Item = (&'a [u8], Span)>,
    name: &[u8],
) -> Option<Span> {
    for (value, span) in headers {
        let mut start = 0;
        for pair in value.split(|&byte| byte == b';') {
            let pair_offset = start;
            start += pair.len() + 1;
            let Some(eq) = pair.iter().position(|&byte| byte == b'=') else {
                continue;
            };
            if trim(&pair[..eq]).0 != name || name.is_empty() {
                continue;
            }
            let (found, skipped) = trim(&pair[eq + 1..]);
            let offset = span.offset as usize + pair_offset + eq + 1 + skipped;
            return Some(Span::new(offset as u32, found.len() as u32));
        }
    }
    None
}

/// `bytes` without surrounding spaces and tabs, and how many were cut from
/// the front.
fn trim(bytes: &[u8]) -> (&[u8], usize) {
    let space = |byte: &u8| *byte == b' ' || *byte == b'\t';
    let front = bytes.iter().take_while(|byte| space(byte)).count();
    let back = bytes[front..]
        .iter()
        .rev()
        .take_while(|byte| space(byte))
        .count();
    (&bytes[front..bytes.len() - back], front)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Looks `name` up in `headers` laid out one after another at offset 10
    /// of a buffer, as a request's header values would be.
    fn check(headers: &[&str], name: &str, expected: Option<&str>) {
        let mut buffer = vec![b'#'; 10];
        let mut spans = Vec::new();
        for header in headers {
            spans.push(Span::new(buffer.len() as u32, header.len() as u32));
            buffer.extend_from_slice(header.as_bytes());
            buffer.extend_from_slice(b"\r\n");
        }
        let items = spans.iter().map(|span| (span.slice(&buffer), *span));
        let got = find_cookie(items, name.as_bytes())
            .map(|span| String::from_utf8_lossy(span.slice(&buffer)).into_owned());
        assert_eq!(got.as_deref(), expected, "{headers:?} {name:?}");
    }

    #[test]
    fn cookies() {
        check(&["a=1; b=2"], "a", Some("1"));
        check(&["a=1; b=2"], "b", Some("2"));
        check(&["a=1;b=2"], "b", Some("2"));
        check(&["a=1; b=2"], "c", None);
        check(&[], "a", None);
        check(&["  a = 1 ;\tb\t=\t2\t"], "a", Some("1"));
        check(&["  a = 1 ;\tb\t=\t2\t"], "b", Some("2"));
        check(&["a-b=dash"], "a-b", Some("dash"));
        check(&["token=x=y=z"], "token", Some("x=y=z"));
        check(&["q=\"quoted value\""], "q", Some("\"quoted value\""));
        check(&["empty="], "empty", Some(""));
        check(&["a=1; a=2"], "a", Some("1"));
        check(&["A=upper"], "a", None);
        check(&["a=1", "b=2"], "b", Some("2"));
        check(&["a=1", "a=2"], "a", Some("1"));
        // Malformed pairs are skipped, the rest still found.
        check(&["novalue; =anon; b=2"], "b", Some("2"));
        check(&["novalue; b=2"], "novalue", None);
        check(&["=anon"], "", None);
        check(&[";;; ;b=2;;"], "b", Some("2"));
        check(&["b=caf\u{e9}"], "b", Some("caf\u{e9}"));
    }
}
