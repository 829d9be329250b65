//! Conditional requests and single ranges (RFC 9110 §13 and §14) against
//! a file's validators: what a `200` file response becomes.
//!
//! The preconditions are evaluated in RFC 9110 §13.2.2's order:
//! `If-Match`, else `If-Unmodified-Since` (a failure → 412), then
//! `If-None-Match`, else `If-Modified-Since` (a match → 304 for GET and
//! HEAD, 412 for another method), then `If-Range` and `Range` (GET and
//! HEAD only). Not promised: multiple ranges (`bytes=0-1,5-6`) are answered
//! with the whole file, which RFC 9110 §14.2 allows.

use std::time::UNIX_EPOCH;

use keystone_parser::text::{parse_decimal, trim_ows};
use keystone_response::{content_range, CONTENT_RANGE_BYTES};

use crate::{FileMeta, Validators};

/// The request headers a file response depends on, as the request holds
/// them (trimmed header values, `None` when absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conditions<'a> {
    /// `If-Match`.
    pub if_match: Option<&'a [u8]>,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Option<&'a [u8]>,
    /// `If-None-Match`.
    pub if_none_match: Option<&'a [u8]>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<&'a [u8]>,
    /// `If-Range`.
    pub if_range: Option<&'a [u8]>,
    /// `Range`.
    pub range: Option<&'a [u8]>,
    /// The method is neither GET nor HEAD (a file body policy gave another
    /// route): a matching `If-None-Match` is a 412, not a 304, and
    /// `If-Modified-Since`, `If-Range` and `Range` do not apply (RFC 9110
    /// §13.1.2, §13.1.3, §14.2).
    pub other_method: bool,
}

/// What a `200` file response becomes; [`Decision::status`] maps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// 200 with the whole file.
    Full,
    /// 304: the client's copy is current; no body.
    NotModified,
    /// 206 for the bytes `[start, start + len)`; `len` is at least 1.
    Partial {
        /// Offset of the first byte sent.
        start: u64,
        /// Bytes sent.
        len: u64,
    },
    /// 416: the range starts past the end; no body, `Content-Range:
    /// bytes */SIZE`.
    Unsatisfiable,
    /// 412: `If-Match` or `If-Unmodified-Since` failed (the client's copy
    /// is not the current one), or `If-None-Match` matched on a method
    /// other than GET and HEAD; no body.
    PreconditionFailed,
}

impl Decision {
    /// The one place a decision becomes a status.
    pub fn status(self) -> u16 {
        match self {
            Decision::Full => 200,
            Decision::NotModified => 304,
            Decision::Partial { .. } => 206,
            Decision::Unsatisfiable => 416,
            Decision::PreconditionFailed => 412,
        }
    }

    /// The body as `(offset, length)` in a file of `size` bytes: the whole
    /// file, the range, or nothing (304, 416).
    pub fn body(self, size: u64) -> (u64, u64) {
        match self {
            Decision::Full => (0, size),
            Decision::Partial { start, len } => {
                debug_assert!(len > 0);
                debug_assert!(start + len <= size);
                (start, len)
            }
            Decision::NotModified | Decision::Unsatisfiable | Decision::PreconditionFailed => {
                (0, 0)
            }
        }
    }

    /// Writes the `Content-Range` value a 206 or 416 carries into `out`;
    /// returns its length, 0 for decisions without one.
    pub fn content_range(self, size: u64, out: &mut [u8; CONTENT_RANGE_BYTES]) -> usize {
        match self {
            Decision::Partial { start, len } => {
                content_range(Some((start, start + len - 1)), size, out)
            }
            Decision::Unsatisfiable => content_range(None, size, out),
            Decision::Full | Decision::NotModified | Decision::PreconditionFailed => 0,
        }
    }
}

/// What a request's conditions are checked against: the file's own
/// validators ([`Validators::current`]), or those policy set on its
/// response (a policy `ETag` or `Last-Modified` replaces the file's, as
/// `ngx.header.ETag` does in OpenResty, and the conditionals follow it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Current<'a> {
    /// The entity tag the response carries, quotes included; empty: none,
    /// which no listed tag matches (`*` still does: the file exists).
    pub etag: &'a [u8],
    /// Its `Last-Modified` as seconds since the epoch; `None`: no date the
    /// date conditions can be compared with (they are then ignored, and
    /// an `If-Range` date never holds).
    pub modified_secs: Option<u64>,
    /// Byte ranges are served: false when policy's `Accept-Ranges` says
    /// otherwise (`none`) or policy wrote its own `Content-Range`.
    pub ranges: bool,
}

impl Validators {
    /// What conditions are checked against when the response carries
    /// these validators (a file of `meta`).
    pub fn current(&self, meta: &FileMeta) -> Current<'_> {
        Current {
            etag: self.etag(),
            modified_secs: Some(meta.mtime_secs),
            ranges: true,
        }
    }
}

/// What [`decide`] does for a file response with status 200: the
/// preconditions in RFC 9110 §13.2.2's order (a failed `If-Match` or
/// `If-Unmodified-Since` → 412; a matching `If-None-Match` or
/// `If-Modified-Since` → 304, or 412 for a method other than GET and
/// HEAD); otherwise, when `If-Range` is absent or holds (the ETag, or
/// exactly the `Last-Modified` date: §13.1.5, as nginx compares it), the
/// range; with an `If-Range` that does not hold, the whole file. Responses
/// with another status (policy's choice) are sent whole and never decided.
/// `size` is the file's.
pub fn decide(size: u64, current: &Current<'_>, conditions: &Conditions<'_>) -> Decision {
    if !precondition_holds(current, conditions.if_match, conditions.if_unmodified_since) {
        return Decision::PreconditionFailed;
    }
    let if_modified_since = conditions
        .if_modified_since
        .filter(|_| !conditions.other_method);
    if not_modified(current, conditions.if_none_match, if_modified_since) {
        return if conditions.other_method {
            Decision::PreconditionFailed
        } else {
            Decision::NotModified
        };
    }
    if conditions.other_method || !current.ranges {
        return Decision::Full;
    }
    if conditions
        .if_range
        .is_some_and(|validator| !range_validator_holds(validator, current))
    {
        return Decision::Full;
    }
    match range(conditions.range, size) {
        RangeAnswer::Full => Decision::Full,
        RangeAnswer::Partial { start, len } => Decision::Partial { start, len },
        RangeAnswer::Unsatisfiable => Decision::Unsatisfiable,
    }
}

/// Whether the request's validators say the client's copy is current
/// (→ 304). `If-None-Match` wins over `If-Modified-Since` when present (RFC
/// 9110 §13.2.2): a comma list of entity tags, `*`, compared weakly
/// (`W/"x"` equals `"x"`, §8.8.3.2). `If-Modified-Since` holds when the
/// date parses and the file is not newer than it; a date that does not
/// parse is ignored (§13.1.3).
pub fn not_modified(
    current: &Current<'_>,
    if_none_match: Option<&[u8]>,
    if_modified_since: Option<&[u8]>,
) -> bool {
    if let Some(list) = if_none_match {
        return list.split(|&byte| byte == b',').any(|tag| {
            let tag = trim_ows(tag);
            tag == b"*" || (!current.etag.is_empty() && weak_eq(tag, current.etag))
        });
    }
    match (
        if_modified_since.and_then(http_date_secs),
        current.modified_secs,
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// Whether the request's own preconditions let it go on (false → 412).
/// `If-Match` (RFC 9110 §13.1.1): `*`, or a comma list of which one tag is
/// strongly equal to the ETag (a `W/` tag never is). Without it,
/// `If-Unmodified-Since` (§13.1.4): holds unless the date parses and the
/// file is newer; a date that does not parse is ignored.
pub fn precondition_holds(
    current: &Current<'_>,
    if_match: Option<&[u8]>,
    if_unmodified_since: Option<&[u8]>,
) -> bool {
    if let Some(list) = if_match {
        return list.split(|&byte| byte == b',').any(|tag| {
            let tag = trim_ows(tag);
            tag == b"*"
                || (!current.etag.is_empty() && tag == current.etag && !tag.starts_with(b"W/"))
        });
    }
    match (
        if_unmodified_since.and_then(http_date_secs),
        current.modified_secs,
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => true,
    }
}

/// Whether an `If-Range` validator holds (RFC 9110 §13.1.5): an entity tag
/// strongly equal to the ETag, or a date exactly the `Last-Modified` one.
fn range_validator_holds(validator: &[u8], current: &Current<'_>) -> bool {
    let validator = trim_ows(validator);
    if validator.starts_with(b"\"") || validator.starts_with(b"W/") {
        return !current.etag.is_empty()
            && !validator.starts_with(b"W/")
            && validator == current.etag;
    }
    http_date_secs(validator).is_some_and(|date| current.modified_secs == Some(date))
}

/// An HTTP-date's seconds since the epoch (any of RFC 9110 §5.6.7's three
/// forms); `None` when it does not parse.
pub fn http_date_secs(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(trim_ows(value)).ok()?;
    let time = httpdate::parse_http_date(text).ok()?;
    time.duration_since(UNIX_EPOCH)
        .ok()
        .map(|since| since.as_secs())
}

/// RFC 9110 §8.8.3.2 weak comparison: the opaque tags are equal, whether
/// or not either is marked weak. Compares slices: nothing is copied.
fn weak_eq(a: &[u8], b: &[u8]) -> bool {
    opaque_tag(a) == opaque_tag(b)
}

/// An entity tag without its weakness mark `W/`.
fn opaque_tag(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// Serve the whole file (no range, several ranges, not `bytes`, or a
    /// range that does not parse: the header is ignored).
    Full,
    /// 206 for `[start, start + len)`.
    Partial {
        /// Offset of the first byte.
        start: u64,
        /// Bytes in the range, at least 1.
        len: u64,
    },
    /// 416: the first byte is past the end, a zero-length suffix, or any
    /// range of an empty file.
    Unsatisfiable,
}

/// Evaluates a single-range `Range` header (RFC 9110 §14.2); several
/// ranges are answered with the full file, which the RFC allows. A number
/// that overflows a `u64` makes the range unparsable (→ full file).
pub fn range(header: Option<&[u8]>, size: u64) -> RangeAnswer {
    let Some(spec) = header.and_then(|value| trim_ows(value).strip_prefix(b"bytes=")) else {
        return RangeAnswer::Full;
    };
    if spec.contains(&b',') {
        return RangeAnswer::Full;
    }
    let Some(dash) = spec.iter().position(|&byte| byte == b'-') else {
        return RangeAnswer::Full;
    };
    let number = |digits: &[u8]| parse_decimal(trim_ows(digits));
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);
    match (number(first), number(last), trim_ows(first).is_empty()) {
        (None, Some(suffix), true) => {
            if suffix == 0 || size == 0 {
                return RangeAnswer::Unsatisfiable;
            }
            let len = suffix.min(size);
            RangeAnswer::Partial {
                start: size - len,
                len,
            }
        }
        (Some(start), end, false) if end.is_some() || trim_ows(last).is_empty() => {
            if start >= size {
                return RangeAnswer::Unsatisfiable;
            }
            let end = end.map_or(size - 1, |end| end.min(size - 1));
            if end < start {
                return RangeAnswer::Full; // an invalid range: ignore the header
            }
            RangeAnswer::Partial {
                start,
                len: end - start + 1,
            }
        }
        _ => RangeAnswer::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FileKind;

    /// mtime 784111777 (Sun, 06 Nov 1994 08:49:37 GMT), 100 bytes.
    const META: FileMeta = FileMeta {
        size: 100,
        mtime_secs: 784_111_777,
        kind: FileKind::Regular,
    };
    const ETAG: &str = "\"2ebc98a1-64\"";
    const SAME_DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const LATER_DATE: &str = "Sun, 06 Nov 1994 08:49:38 GMT";
    const EARLIER_DATE: &str = "Sun, 06 Nov 1994 08:49:36 GMT";

    #[test]
    fn etag_of_the_fixture() {
        assert_eq!(Validators::new(&META).etag(), ETAG.as_bytes());
    }

    fn check_not_modified(
        if_none_match: Option<&str>,
        if_modified_since: Option<&str>,
        expected: bool,
    ) {
        let validators = Validators::new(&META);
        let got = not_modified(
            &validators.current(&META),
            if_none_match.map(str::as_bytes),
            if_modified_since.map(str::as_bytes),
        );
        assert_eq!(
            got, expected,
            "INM {if_none_match:?} IMS {if_modified_since:?}"
        );
    }

    #[test]
    fn conditionals() {
        let rows: &[(Option<&str>, Option<&str>, bool)] = &[
            (None, None, false),
            // If-None-Match: strong, weak, lists, `*`, mismatches.
            (Some(ETAG), None, true),
            (Some("W/\"2ebc98a1-64\""), None, true),
            (Some("\"x\", W/\"2ebc98a1-64\""), None, true),
            (Some("\"x\",\t\"2ebc98a1-64\" "), None, true),
            (Some("\"x\" , \"y\""), None, false),
            (Some("*"), None, true),
            (Some(" * "), None, true),
            (Some("\"x\", *"), None, true),
            (Some("\"2ebc98a1-65\""), None, false),
            (Some("2ebc98a1-64"), None, false),
            (Some("w/\"2ebc98a1-64\""), None, false),
            (Some(""), None, false),
            (Some(","), None, false),
            // If-Modified-Since: equal and later dates hold, earlier or
            // garbage do not.
            (None, Some(SAME_DATE), true),
            (None, Some(LATER_DATE), true),
            (None, Some(EARLIER_DATE), false),
            (None, Some(" Sun, 06 Nov 1994 08:49:37 GMT\t"), true),
            (None, Some("Sunday, 06-Nov-94 08:49:37 GMT"), true),
            (None, Some("Sun Nov  6 08:49:37 1994"), true),
            (None, Some("yesterday"), false),
            (None, Some(""), false),
            (None, Some("Sun, 06 Nov 1994 08:49:37 GMT\u{a0}"), false),
            // If-None-Match present overrides If-Modified-Since, both ways.
            (Some("\"x\""), Some(LATER_DATE), false),
            (Some(ETAG), Some(EARLIER_DATE), true),
            (Some(""), Some(SAME_DATE), false),
        ];
        for (if_none_match, if_modified_since, expected) in rows {
            check_not_modified(*if_none_match, *if_modified_since, *expected);
        }
        let garbage = [0xff, 0xfe];
        let validators = Validators::new(&META);
        assert!(!not_modified(
            &validators.current(&META),
            None,
            Some(&garbage)
        ));
    }

    #[test]
    fn ranges() {
        use RangeAnswer::{Full, Partial, Unsatisfiable};
        let rows: &[(&str, u64, RangeAnswer)] = &[
            ("bytes=0-9", 100, Partial { start: 0, len: 10 }),
            ("bytes=90-", 100, Partial { start: 90, len: 10 }),
            ("bytes=-10", 100, Partial { start: 90, len: 10 }),
            ("bytes=-500", 100, Partial { start: 0, len: 100 }),
            ("bytes=50-1000", 100, Partial { start: 50, len: 50 }),
            ("bytes=100-", 100, Unsatisfiable),
            ("bytes=-0", 100, Unsatisfiable),
            ("bytes=5-1", 100, Full),
            ("bytes=0-1,5-6", 100, Full),
            ("items=0-1", 100, Full),
            ("bytes=a-b", 100, Full),
            // Edge cases.
            ("bytes=0-0", 100, Partial { start: 0, len: 1 }),
            ("bytes=0-0", 1, Partial { start: 0, len: 1 }),
            ("bytes=99-99", 100, Partial { start: 99, len: 1 }),
            ("bytes=99-", 100, Partial { start: 99, len: 1 }),
            ("bytes=0-", 100, Partial { start: 0, len: 100 }),
            ("bytes=-1", 100, Partial { start: 99, len: 1 }),
            ("bytes=-100", 100, Partial { start: 0, len: 100 }),
            ("bytes=0-0", 0, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=-1", 0, Unsatisfiable),
            ("bytes=-0", 0, Unsatisfiable),
            (" bytes=0-9 ", 100, Partial { start: 0, len: 10 }),
            ("bytes= 0 - 9 ", 100, Partial { start: 0, len: 10 }),
            ("bytes=0-9-", 100, Full),
            ("bytes=-", 100, Full),
            ("bytes=", 100, Full),
            ("bytes=5", 100, Full),
            ("bytes=+1-2", 100, Full),
            ("Bytes=0-9", 100, Full),
            (
                "bytes=0-18446744073709551615",
                100,
                Partial { start: 0, len: 100 },
            ),
            ("bytes=0-18446744073709551616", 100, Full),
            ("bytes=18446744073709551616-", 100, Full),
            ("bytes=18446744073709551615-", 100, Unsatisfiable),
            ("bytes=-18446744073709551616", 100, Full),
            (
                "bytes=-18446744073709551615",
                100,
                Partial { start: 0, len: 100 },
            ),
            (
                "bytes=0-",
                u64::MAX,
                Partial {
                    start: 0,
                    len: u64::MAX,
                },
            ),
        ];
        for (header, size, expected) in rows {
            assert_eq!(
                range(Some(header.as_bytes()), *size),
                *expected,
                "{header:?} of {size}"
            );
        }
        assert_eq!(range(None, 10), Full);
    }

    fn check_decide(conditions: Conditions<'_>, expected: Decision) {
        let validators = Validators::new(&META);
        assert_eq!(
            decide(META.size, &validators.current(&META), &conditions),
            expected,
            "{conditions:?}"
        );
    }

    #[test]
    fn decisions() {
        let etag = Some(ETAG.as_bytes());
        let range_0_9 = Some(&b"bytes=0-9"[..]);
        let partial = Decision::Partial { start: 0, len: 10 };
        let rows: &[(Conditions<'_>, Decision)] = &[
            (Conditions::default(), Decision::Full),
            (
                Conditions {
                    range: range_0_9,
                    ..Conditions::default()
                },
                partial,
            ),
            (
                Conditions {
                    range: Some(b"bytes=100-"),
                    ..Conditions::default()
                },
                Decision::Unsatisfiable,
            ),
            // If-Range equal to the ETag: the range applies.
            (
                Conditions {
                    if_range: etag,
                    range: range_0_9,
                    ..Conditions::default()
                },
                partial,
            ),
            // A different tag, a weak form of ours, or a date: whole file.
            (
                Conditions {
                    if_range: Some(b"\"old\""),
                    range: range_0_9,
                    ..Conditions::default()
                },
                Decision::Full,
            ),
            (
                Conditions {
                    if_range: Some(b"W/\"2ebc98a1-64\""),
                    range: range_0_9,
                    ..Conditions::default()
                },
                Decision::Full,
            ),
            // A date exactly the Last-Modified one: the range applies
            // (RFC 9110 §13.1.5); an earlier or later date, or garbage: the
            // whole file.
            (
                Conditions {
                    if_range: Some(SAME_DATE.as_bytes()),
                    range: range_0_9,
                    ..Conditions::default()
                },
                partial,
            ),
            (
                Conditions {
                    if_range: Some(b"Sunday, 06-Nov-94 08:49:37 GMT"),
                    range: range_0_9,
                    ..Conditions::default()
                },
                partial,
            ),
            (
                Conditions {
                    if_range: Some(LATER_DATE.as_bytes()),
                    range: range_0_9,
                    ..Conditions::default()
                },
                Decision::Full,
            ),
            (
                Conditions {
                    if_range: Some(EARLIER_DATE.as_bytes()),
                    range: range_0_9,
                    ..Conditions::default()
                },
                Decision::Full,
            ),
            (
                Conditions {
                    if_range: Some(b"yesterday"),
                    range: range_0_9,
                    ..Conditions::default()
                },
                Decision::Full,
            ),
            // If-Match: `*`, the tag, or a list holding it goes on; another
            // tag or a weak form of ours (compared strongly) is a 412, which
            // wins over If-None-Match and the range.
            (
                Conditions {
                    if_match: Some(b"*"),
                    range: range_0_9,
                    ..Conditions::default()
                },
                partial,
            ),
            (
                Conditions {
                    if_match: Some(b"\"x\", \"2ebc98a1-64\""),
                    ..Conditions::default()
                },
                Decision::Full,
            ),
            (
                Conditions {
                    if_match: Some(b"\"old\""),
                    if_none_match: Some(b"\"old\""),
                    range: range_0_9,
                    ..Conditions::default()
                },
                Decision::PreconditionFailed,
            ),
            (
                Conditions {
                    if_match: Some(b"W/\"2ebc98a1-64\""),
                    ..Conditions::default()
                },
                Decision::PreconditionFailed,
            ),
            // If-Unmodified-Since: the file is not newer (same or later
            // date) goes on; newer is a 412; garbage is ignored; If-Match
            // present overrides it.
            (
                Conditions {
                    if_unmodified_since: Some(SAME_DATE.as_bytes()),
                    range: range_0_9,
                    ..Conditions::default()
                },
                partial,
            ),
            (
                Conditions {
                    if_unmodified_since: Some(EARLIER_DATE.as_bytes()),
                    ..Conditions::default()
                },
                Decision::PreconditionFailed,
            ),
            (
                Conditions {
                    if_unmodified_since: Some(b"not a date"),
                    ..Conditions::default()
                },
                Decision::Full,
            ),
            (
                Conditions {
                    if_match: etag,
                    if_unmodified_since: Some(EARLIER_DATE.as_bytes()),
                    ..Conditions::default()
                },
                Decision::Full,
            ),
            // Another method than GET or HEAD: a matching If-None-Match is
            // a 412; If-Modified-Since and the range do not apply.
            (
                Conditions {
                    if_none_match: etag,
                    other_method: true,
                    ..Conditions::default()
                },
                Decision::PreconditionFailed,
            ),
            (
                Conditions {
                    if_modified_since: Some(SAME_DATE.as_bytes()),
                    range: range_0_9,
                    other_method: true,
                    ..Conditions::default()
                },
                Decision::Full,
            ),
            (
                Conditions {
                    if_match: Some(b"\"old\""),
                    other_method: true,
                    ..Conditions::default()
                },
                Decision::PreconditionFailed,
            ),
            (
                Conditions {
                    if_range: Some(b"\"old\""),
                    range: Some(b"bytes=100-"),
                    ..Conditions::default()
                },
                Decision::Full,
            ),
            // If-Range without Range: nothing to do.
            (
                Conditions {
                    if_range: etag,
                    ..Conditions::default()
                },
                Decision::Full,
            ),
            // A conditional match wins over the range.
            (
                Conditions {
                    if_none_match: etag,
                    range: range_0_9,
                    ..Conditions::default()
                },
                Decision::NotModified,
            ),
            (
                Conditions {
                    if_modified_since: Some(SAME_DATE.as_bytes()),
                    if_range: Some(b"\"old\""),
                    range: range_0_9,
                    ..Conditions::default()
                },
                Decision::NotModified,
            ),
            // A failed conditional falls through to the range.
            (
                Conditions {
                    if_none_match: Some(b"\"old\""),
                    if_modified_since: Some(LATER_DATE.as_bytes()),
                    if_range: etag,
                    range: range_0_9,
                    ..Conditions::default()
                },
                partial,
            ),
            (
                Conditions {
                    if_modified_since: Some(EARLIER_DATE.as_bytes()),
                    range: Some(b"bytes=-0"),
                    ..Conditions::default()
                },
                Decision::Unsatisfiable,
            ),
        ];
        for (conditions, expected) in rows {
            check_decide(*conditions, *expected);
        }
    }

    #[test]
    fn decision_statuses_bodies_and_content_ranges() {
        let rows: &[(Decision, u16, (u64, u64), &str)] = &[
            (Decision::Full, 200, (0, 100), ""),
            (Decision::NotModified, 304, (0, 0), ""),
            (
                Decision::Partial { start: 90, len: 10 },
                206,
                (90, 10),
                "bytes 90-99/100",
            ),
            (
                Decision::Partial { start: 0, len: 1 },
                206,
                (0, 1),
                "bytes 0-0/100",
            ),
            (Decision::Unsatisfiable, 416, (0, 0), "bytes */100"),
            (Decision::PreconditionFailed, 412, (0, 0), ""),
        ];
        for (decision, status, body, content_range) in rows {
            assert_eq!(decision.status(), *status, "{decision:?}");
            assert_eq!(decision.body(100), *body, "{decision:?}");
            let mut out = [0u8; CONTENT_RANGE_BYTES];
            let len = decision.content_range(100, &mut out);
            assert_eq!(&out[..len], content_range.as_bytes(), "{decision:?}");
        }
    }
}
