//! The request line: checked here before picohttpparser sees it, and the
//! request-target split into path and query.

use crate::host::check_authority;
use crate::{Limits, ParseError};

/// Longest method accepted: 32 bytes. The router's methods are at most 16
/// bytes, the longest registered methods (`UPDATEREDIRECTREF`, 17) fit, and
/// a longer token can only be a probe or garbage: 400 as soon as its 33rd
/// byte arrives, rather than waiting for the head limit's 431.
pub const MAX_METHOD_BYTES: usize = 32;

/// Where the path and query sit inside a request-target (relative offsets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TargetParts {
    pub path_start: usize,
    pub path_end: usize,
    /// Start of the bytes after '?', if there is a '?'; the query ends at the target's end.
    pub query_start: Option<usize>,
    /// `(start, end)` of an absolute-form target's authority.
    pub authority: Option<(usize, usize)>,
}

/// Byte classes, one bit each in [`BYTE_CLASSES`]: a lookup per byte
/// instead of a comparison chain (a `contains` over a punctuation list is a
/// `memchr` call per byte, 12 % of a browser request's parse).
const TOKEN: u8 = 1;
const TARGET: u8 = 2;
const REG_NAME: u8 = 4;

/// RFC 9110 §5.6.2 `tchar` punctuation.
const TOKEN_PUNCTUATION: &[u8] = b"!#$%&'*+-.^_`|~";
/// What a request-target may hold literally besides letters and digits:
/// unreserved and sub-delims punctuation, `%`, and the gen-delims a path
/// or query may use (see [`is_target_byte`]).
const TARGET_PUNCTUATION: &[u8] = b"-._~!$&'()*+,;=%:@/?[]";
/// A reg-name's punctuation: unreserved, then sub-delims less `,` (`%`
/// escapes are checked apart, see `host::is_reg_name`).
const REG_NAME_PUNCTUATION: &[u8] = b"-._~!$&'()*+;=";

const fn byte_in(list: &[u8], byte: u8) -> bool {
    let mut index = 0;
    while index < list.len() {
        if list[index] == byte {
            return true;
        }
        index += 1;
    }
    false
}

/// The class bits of every byte, built at compile time from the lists above.
static BYTE_CLASSES: [u8; 256] = {
    let mut table = [0_u8; 256];
    let mut index = 0;
    while index < 256 {
        let byte = index as u8;
        let alphanumeric = byte.is_ascii_alphanumeric();
        let mut class = 0;
        if alphanumeric || byte_in(TOKEN_PUNCTUATION, byte) {
            class |= TOKEN;
        }
        if alphanumeric || byte_in(TARGET_PUNCTUATION, byte) {
            class |= TARGET;
        }
        if alphanumeric || byte_in(REG_NAME_PUNCTUATION, byte) {
            class |= REG_NAME;
        }
        table[index] = class;
        index += 1;
    }
    table
};

/// A byte RFC 3986 lets a request-target hold literally: unreserved,
/// sub-delims, `%`, and the gen-delims a path or query may use
/// (`:`, `@`, `/`, `?`, plus `[` and `]`, which an IP-literal needs and
/// browsers send raw in queries). Refused: controls, space, DEL, every byte
/// at or above 0x80 (raw UTF-8, overlong sequences: a server behind or in
/// front of another must never route bytes the other may decode
/// differently), `#` (a fragment is not part of the target, RFC 9112
/// §3.2), and `"`, `<`, `>`, `\`, `^`, `` ` ``, `{`, `|`, `}`, which RFC
/// 3986 never allows unencoded.
#[inline]
pub(crate) fn is_target_byte(byte: u8) -> bool {
    BYTE_CLASSES[usize::from(byte)] & TARGET != 0
}

/// RFC 9110 §5.6.2 `tchar`: a method's bytes, a chunk extension's and
/// trailer's names here, a response header name in keystone-exchange.
#[inline]
pub fn is_token_byte(byte: u8) -> bool {
    BYTE_CLASSES[usize::from(byte)] & TOKEN != 0
}

/// A reg-name byte other than a `%` escape's (unreserved, sub-delims less
/// the comma).
#[inline]
pub(crate) fn is_reg_name_byte(byte: u8) -> bool {
    BYTE_CLASSES[usize::from(byte)] & REG_NAME != 0
}

/// Outcome of looking for a complete request line.
pub(crate) enum RequestLine {
    /// No LF yet; the target seen so far is within the limit.
    Incomplete,
    /// The line is valid; the request head starts with it. Its target's
    /// parts, relative to the target's first byte.
    Valid(TargetParts),
}

/// Validates the request line at the start of `buf` (after one optional
/// leading empty line, which picohttpparser also skips).
///
/// Checks, in order: method is a token (Malformed) of at most
/// [`MAX_METHOD_BYTES`] (MethodTooLong, detected even before the line
/// ends), target length (UriTooLong, likewise), version (505 for a
/// well-formed `HTTP/DIGIT.DIGIT` other than 1.0/1.1, else Malformed),
/// target bytes ([`is_target_byte`] and no escaped control in the path,
/// Malformed), target form and an
/// absolute-form authority (BadHost).
///
/// The line's end is found with `memchr`; then one pass over the target:
/// its bytes are classified, its first `?` and whether its path holds a `%`
/// found in the same loop, so the split and the escape check only look
/// again when they must.
pub(crate) fn check_request_line(buf: &[u8], limits: &Limits) -> Result<RequestLine, ParseError> {
    if buf == b"\r" {
        return Ok(RequestLine::Incomplete); // half of a leading empty line
    }
    let buf = skip_leading_empty_line(buf);
    let line_end = memchr::memchr(b'\n', buf);
    let line = match line_end {
        Some(end) => buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]),
        None => buf,
    };
    let method_end = line.iter().position(|&byte| !is_token_byte(byte));
    let method_end = match method_end {
        Some(end) if line[end] == b' ' => end,
        Some(_) => return Err(ParseError::Malformed),
        None => return incomplete_or(line_end.is_none(), line),
    };
    let method = &line[..method_end];
    if method.is_empty() {
        return Err(ParseError::Malformed);
    }
    if method.len() > MAX_METHOD_BYTES {
        return Err(ParseError::MethodTooLong {
            limit: MAX_METHOD_BYTES as u32,
        });
    }
    let rest = &line[method_end + 1..];
    let mut target_end = rest.len();
    let mut question = None;
    let mut percent_in_path = false;
    let mut bad_byte = false;
    for (index, &byte) in rest.iter().enumerate() {
        if byte == b' ' {
            target_end = index;
            break;
        }
        bad_byte |= !is_target_byte(byte);
        if question.is_none() {
            match byte {
                b'?' => question = Some(index),
                b'%' => percent_in_path = true,
                _ => {}
            }
        }
    }
    if target_end > limits.max_uri_bytes as usize {
        return Err(ParseError::UriTooLong {
            limit: limits.max_uri_bytes,
        });
    }
    if line_end.is_none() {
        return Ok(RequestLine::Incomplete);
    }
    let target = &rest[..target_end];
    let version = rest.get(target_end + 1..).ok_or(ParseError::Malformed)?;
    check_version(version)?;
    if bad_byte || (percent_in_path && path_escapes_a_control(target)) {
        return Err(ParseError::Malformed);
    }
    split_target_at(method, target, question).map(RequestLine::Valid)
}

fn incomplete_or(incomplete: bool, line: &[u8]) -> Result<RequestLine, ParseError> {
    // A complete line without a space can't be a request line; an
    // incomplete one must still look like the start of a method.
    if incomplete && line.iter().all(|&byte| is_token_byte(byte)) {
        if line.len() > MAX_METHOD_BYTES {
            return Err(ParseError::MethodTooLong {
                limit: MAX_METHOD_BYTES as u32,
            });
        }
        Ok(RequestLine::Incomplete)
    } else {
        Err(ParseError::Malformed)
    }
}

fn skip_leading_empty_line(buf: &[u8]) -> &[u8] {
    if let Some(rest) = buf.strip_prefix(b"\r\n") {
        rest
    } else if let Some(rest) = buf.strip_prefix(b"\n") {
        rest
    } else {
        buf
    }
}

/// `HTTP/1.0` and `HTTP/1.1` only. Any other `HTTP/DIGIT.DIGIT` (RFC 9112
/// §2.3: one digit each) is a version we understand to be unsupported
/// (505); anything else, `HTTP/01.01` and `HTTP/1.10` included, is not
/// HTTP (400).
fn check_version(version: &[u8]) -> Result<u8, ParseError> {
    match version {
        b"HTTP/1.1" => Ok(1),
        b"HTTP/1.0" => Ok(0),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(ParseError::VersionNotSupported)
        }
        _ => Err(ParseError::Malformed),
    }
}

/// Whether the path (the target up to `?`) percent-encodes a control byte
/// (`%00`-`%1F`, `%7F`): a path decoding to NUL, CR or LF is never a
/// resource name, only a log- or header-injection attempt on whatever
/// decodes it next (nginx refuses `%00` too). Queries may carry them
/// (`?text=a%0Ab` from a form's textarea).
pub(crate) fn path_escapes_a_control(target: &[u8]) -> bool {
    let path_end = target
        .iter()
        .position(|&byte| byte == b'?')
        .unwrap_or(target.len());
    target[..path_end].windows(3).any(|escape| {
        escape[0] == b'%'
            && matches!(
                (escape[1], escape[2].to_ascii_uppercase()),
                (b'0' | b'1', b'0'..=b'9' | b'A'..=b'F') | (b'7', b'F')
            )
    })
}

/// Splits a request-target into path and query.
///
/// Accepted forms: origin-form (`/p?q`), absolute-form with an http(s)
/// scheme, a non-empty authority and a path (`http://host/p?q`), and `*`
/// with OPTIONS only. Authority-form (CONNECT) and anything else: Malformed.
pub(crate) fn split_target(method: &[u8], target: &[u8]) -> Result<TargetParts, ParseError> {
    let question = target.iter().position(|&byte| byte == b'?');
    split_target_at(method, target, question)
}

/// [`split_target`] with the target's first `?` already found.
fn split_target_at(
    method: &[u8],
    target: &[u8],
    question: Option<usize>,
) -> Result<TargetParts, ParseError> {
    debug_assert_eq!(question, target.iter().position(|&byte| byte == b'?'));
    if target == b"*" {
        if method != b"OPTIONS" {
            return Err(ParseError::Malformed);
        }
        return Ok(TargetParts {
            path_start: 0,
            path_end: 1,
            query_start: None,
            authority: None,
        });
    }
    let (path_start, authority) = match target.first() {
        Some(b'/') => (0, None),
        Some(_) => {
            let (authority_start, path_start) = absolute_form_path_start(target)?;
            (path_start, Some((authority_start, path_start)))
        }
        None => return Err(ParseError::Malformed),
    };
    // An absolute-form authority ends at a '/' before any '?'
    // (`absolute_form_path_start`), so the target's first '?' is the path's.
    debug_assert!(question.is_none_or(|position| position >= path_start));
    if has_dot_segment(&target[path_start..question.unwrap_or(target.len())]) {
        return Err(ParseError::DotSegment);
    }
    Ok(match question {
        Some(position) => TargetParts {
            path_start,
            path_end: position,
            query_start: Some(position + 1),
            authority,
        },
        None => TargetParts {
            path_start,
            path_end: target.len(),
            query_start: None,
            authority,
        },
    })
}

/// Whether a segment of `path` is `.` or `..`, each dot written or
/// percent-encoded (`%2e`, `%2E`).
pub(crate) fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|&byte| byte == b'/').any(|segment| {
        let mut rest = segment;
        let mut dots = 0;
        while !rest.is_empty() {
            rest = match rest {
                [b'.', tail @ ..] => tail,
                [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => tail,
                _ => return false,
            };
            dots += 1;
        }
        (1..=2).contains(&dots)
    })
}

/// `(authority start, path start)` of an http(s) absolute-form target.
fn absolute_form_path_start(target: &[u8]) -> Result<(usize, usize), ParseError> {
    let scheme_len = if starts_with_ignore_case(target, b"http://") {
        7
    } else if starts_with_ignore_case(target, b"https://") {
        8
    } else {
        return Err(ParseError::Malformed);
    };
    let authority = &target[scheme_len..];
    let authority_len = authority
        .iter()
        .position(|&byte| byte == b'/' || byte == b'?')
        .ok_or(ParseError::Malformed)?;
    if authority_len == 0 || authority[authority_len] != b'/' {
        return Err(ParseError::Malformed);
    }
    check_authority(&authority[..authority_len])?;
    Ok((scheme_len, scheme_len + authority_len))
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
}
