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

/// A byte RFC 3986 lets a request-target hold literally: unreserved,
/// sub-delims, `%`, and the gen-delims a path or query may use
/// (`:`, `@`, `/`, `?`, plus `[` and `]`, which an IP-literal needs and
/// browsers send raw in queries). Refused: controls, space, DEL, every byte
/// at or above 0x80 (raw UTF-8, overlong sequences: a server behind or in
/// front of another must never route bytes the other may decode
/// differently), `#` (a fragment is not part of the target, RFC 9112
/// §3.2), and `"`, `<`, `>`, `\`, `^`, `` ` ``, `{`, `|`, `}`, which RFC
/// 3986 never allows unencoded.
pub(crate) fn is_target_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:@/?[]".contains(&byte)
}

/// RFC 9110 §5.6.2 `tchar`.
pub(crate) fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Outcome of looking for a complete request line.
pub(crate) enum RequestLine {
    /// No LF yet; the target seen so far is within the limit.
    Incomplete,
    /// The line is valid; the request head starts with it.
    Valid,
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
pub(crate) fn check_request_line(buf: &[u8], limits: &Limits) -> Result<RequestLine, ParseError> {
    if buf == b"\r" {
        return Ok(RequestLine::Incomplete); // half of a leading empty line
    }
    let buf = skip_leading_empty_line(buf);
    let line_end = buf.iter().position(|&byte| byte == b'\n');
    let line = match line_end {
        Some(end) => buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]),
        None => buf,
    };
    let method_end = line.iter().position(|&byte| byte == b' ');
    let Some(method_end) = method_end else {
        return incomplete_or(line_end.is_none(), line);
    };
    let method = &line[..method_end];
    if method.is_empty() || !method.iter().all(|&byte| is_token_byte(byte)) {
        return Err(ParseError::Malformed);
    }
    if method.len() > MAX_METHOD_BYTES {
        return Err(ParseError::MethodTooLong {
            limit: MAX_METHOD_BYTES as u32,
        });
    }
    let rest = &line[method_end + 1..];
    let target_end = rest
        .iter()
        .position(|&byte| byte == b' ')
        .unwrap_or(rest.len());
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
    if !target.iter().all(|&byte| is_target_byte(byte)) || path_escapes_a_control(target) {
        return Err(ParseError::Malformed);
    }
    split_target(method, target)?;
    Ok(RequestLine::Valid)
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
    let question = target[path_start..].iter().position(|&byte| byte == b'?');
    Ok(match question {
        Some(position) => TargetParts {
            path_start,
            path_end: path_start + position,
            query_start: Some(path_start + position + 1),
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
