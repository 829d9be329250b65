//! Response heads (an upstream's answer, RFC 9112 §4 and §6.3) over
//! picohttpparser's `phr_parse_response`: status, headers as spans, and how
//! the body is delimited, decided once here so a proxy never guesses.
//!
//! Stricter than RFC 9112 §6.3 where a proxy must be: a response carrying
//! both `Transfer-Encoding` and `Content-Length` is refused (the RFC lets
//! TE win, but a backend that sends both is either broken or being used
//! to desynchronise the next hop), as are differing lengths and obs-fold.

use libc::{c_char, c_int, size_t};
use picohttpparser_sys::{phr_header, phr_parse_headers, phr_parse_response};

use crate::text::{parse_decimal, trim_ows, trim_ows_end};
use crate::{HeaderSpan, ParseError, ParseStatus, Span, HEADERS_CAPACITY};

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// No body: a 1xx, 204 or 304, or the answer to a HEAD.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: ..., chunked`.
    Chunked,
    /// Neither (or a final coding other than chunked): the body ends when
    /// the upstream closes.
    UntilClose,
}

/// A parsed response head: caller-owned and reused, spans absolute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// 0 or 1.
    pub minor_version: u8,
    /// The reason phrase as sent (may be empty).
    pub reason: Span,
    pub header_count: u16,
    pub headers: [HeaderSpan; HEADERS_CAPACITY],
    /// Bytes of the head including the final CRLFCRLF.
    pub head_len: u32,
    pub body: ResponseBody,
    /// Whether the upstream connection may carry another request after
    /// this response (HTTP/1.1 without `Connection: close`, HTTP/1.0 with
    /// `Connection: keep-alive`, and never with a close-delimited body).
    pub keep_alive: bool,
}

impl Default for ResponseHead {
    fn default() -> ResponseHead {
        ResponseHead {
            status: 0,
            minor_version: 1,
            reason: Span::EMPTY,
            header_count: 0,
            headers: [HeaderSpan::default(); HEADERS_CAPACITY],
            head_len: 0,
            body: ResponseBody::None,
            keep_alive: false,
        }
    }
}

impl ResponseHead {
    /// This response's headers.
    pub fn headers(&self) -> &[HeaderSpan] {
        &self.headers[..self.header_count as usize]
    }

    /// A 1xx other than 101: an interim response to skip, the final one
    /// follows on the same connection.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parses response heads; holds picohttpparser's header scratch, so a parse
/// allocates nothing. One per worker.
pub struct ResponseParser {
    headers: [phr_header; HEADERS_CAPACITY],
}

// SAFETY: as for `Parser`: the pointers in `headers` are scratch written and
// read within one `parse` call and never dereferenced afterwards.
unsafe impl Send for ResponseParser {}

impl Default for ResponseParser {
    fn default() -> ResponseParser {
        ResponseParser::new()
    }
}

impl ResponseParser {
    pub fn new() -> ResponseParser {
        ResponseParser {
            headers: [phr_header::default(); HEADERS_CAPACITY],
        }
    }

    /// Parses the response head at the start of `buf` (absolute offset
    /// `base_offset`). `head_request`: the request was HEAD, so the body is
    /// empty whatever the headers say. `Partial` once `buf` holds
    /// `max_head_bytes` without a complete head is `HeadTooLarge`.
    pub fn parse(
        &mut self,
        buf: &[u8],
        base_offset: u32,
        head_request: bool,
        max_head_bytes: u32,
        head: &mut ResponseHead,
    ) -> Result<ParseStatus, ParseError> {
        assert!(max_head_bytes < i32::MAX as u32);
        let window = &buf[..buf.len().min(max_head_bytes as usize)];
        let too_large = ParseError::HeadTooLarge {
            limit: max_head_bytes,
        };
        let mut minor_version: c_int = -1;
        let mut status: c_int = 0;
        let mut reason: *const c_char = std::ptr::null();
        let mut reason_len: size_t = 0;
        let mut header_count: size_t = HEADERS_CAPACITY;
        if bare_status_line_pending(window) {
            return Ok(ParseStatus::Partial);
        }
        let result = match bare_status_line(window) {
            // `HTTP/1.1 200` with no reason phrase (nor its space): RFC
            // 9112 §4 makes the phrase optional and nginx, curl and
            // browsers take it; this picohttpparser wants the space, so
            // the line is read here and the fields by phr_parse_headers.
            Some((version, code, line_len)) => {
                minor_version = version;
                status = code;
                let rest = &window[line_len..];
                // SAFETY: `rest` is a live slice; the header array holds
                // HEADERS_CAPACITY entries, the count passed in.
                let fields = unsafe {
                    phr_parse_headers(
                        rest.as_ptr().cast::<c_char>(),
                        rest.len(),
                        self.headers.as_mut_ptr(),
                        &mut header_count,
                        0,
                    )
                };
                if fields > 0 {
                    fields + line_len as c_int
                } else {
                    fields
                }
            }
            // SAFETY: window is a live slice; every out pointer is a
            // valid local; the header array holds HEADERS_CAPACITY
            // entries, the count passed in. last_len 0: the whole window
            // is scanned (a response head is read once or twice, never
            // dripped by an attacker we face).
            None => unsafe {
                phr_parse_response(
                    window.as_ptr().cast::<c_char>(),
                    window.len(),
                    &mut minor_version,
                    &mut status,
                    &mut reason,
                    &mut reason_len,
                    self.headers.as_mut_ptr(),
                    &mut header_count,
                    0,
                )
            },
        };
        assert!(header_count <= HEADERS_CAPACITY);
        let head_len = match result {
            -2 if window.len() >= max_head_bytes as usize => return Err(too_large),
            -2 => return Ok(ParseStatus::Partial),
            -1 if header_count == HEADERS_CAPACITY => {
                return Err(ParseError::TooManyHeaders {
                    limit: HEADERS_CAPACITY as u16,
                })
            }
            -1 => return Err(ParseError::Malformed),
            len => len as usize,
        };
        assert!(head_len > 0 && head_len <= window.len());
        let span_of = |pointer: *const c_char, len: usize| -> Span {
            let start = (pointer as usize).wrapping_sub(window.as_ptr() as usize);
            assert!(start <= window.len() && len <= window.len() - start);
            Span::new(base_offset + start as u32, len as u32)
        };
        head.status = match u16::try_from(status) {
            Ok(status @ 100..=999) => status,
            _ => return Err(ParseError::Malformed),
        };
        head.minor_version = match minor_version {
            0 => 0,
            1 => 1,
            _ => return Err(ParseError::VersionNotSupported),
        };
        head.reason = if reason.is_null() {
            Span::new(base_offset, 0)
        } else {
            span_of(reason, reason_len)
        };
        head.head_len = head_len as u32;
        let mut length: Option<u64> = None;
        let mut transfer_encoding = false;
        let mut last_coding_chunked = false;
        let mut close = false;
        let mut keep_alive = false;
        for (index, header) in self.headers[..header_count].iter().enumerate() {
            if header.name.is_null() {
                return Err(ParseError::ObsFold);
            }
            let name_span = span_of(header.name, header.name_len);
            let value_span = span_of(header.value, header.value_len);
            let relative = |span: Span| {
                &window[(span.offset - base_offset) as usize..(span.end() - base_offset) as usize]
            };
            let value = trim_ows_end(relative(value_span));
            let value_span = Span::new(value_span.offset, value.len() as u32);
            head.headers[index] = HeaderSpan {
                name: name_span,
                value: value_span,
            };
            let name = relative(name_span);
            if name.eq_ignore_ascii_case(b"content-length") {
                for element in value.split(|&byte| byte == b',') {
                    let parsed =
                        parse_decimal(trim_ows(element)).ok_or(ParseError::BadContentLength)?;
                    if length.is_some_and(|seen| seen != parsed) {
                        return Err(ParseError::BadContentLength);
                    }
                    length = Some(parsed);
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                for coding in value.split(|&byte| byte == b',').map(trim_ows) {
                    if coding.is_empty() {
                        continue;
                    }
                    transfer_encoding = true;
                    last_coding_chunked = coding.eq_ignore_ascii_case(b"chunked");
                    // Only chunked is decoded: relayed undecoded, a `gzip,
                    // chunked` body would reach the client as compressed
                    // bytes nothing says are compressed (nginx: "upstream
                    // sent unknown Transfer-Encoding", 502).
                    if !last_coding_chunked {
                        return Err(ParseError::UnsupportedTransferEncoding);
                    }
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                for option in value.split(|&byte| byte == b',').map(trim_ows) {
                    close |= option.eq_ignore_ascii_case(b"close");
                    keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
                }
            }
        }
        head.header_count = header_count as u16;
        let bodiless =
            head_request || head.status < 200 || head.status == 204 || head.status == 304;
        head.body = match (length, transfer_encoding) {
            (Some(_), true) => return Err(ParseError::ConflictingFraming),
            _ if bodiless => ResponseBody::None,
            (None, true) if last_coding_chunked => ResponseBody::Chunked,
            (None, true) => ResponseBody::UntilClose,
            (Some(length), false) => ResponseBody::Length(length),
            (None, false) => ResponseBody::UntilClose,
        };
        head.keep_alive = !close
            && head.body != ResponseBody::UntilClose
            && (head.minor_version == 1 || keep_alive);
        Ok(ParseStatus::Complete)
    }
}

/// A status line without a reason phrase, `HTTP/1.D DDD` then CRLF (or a
/// bare LF, as picohttpparser takes line ends): its minor version, code
/// and length; `None` for any other start (phr_parse_response reads it).
fn bare_status_line(window: &[u8]) -> Option<(c_int, c_int, usize)> {
    let end = window.iter().position(|&byte| byte == b'\n')?;
    let line = &window[..end];
    status_code_only(line.strip_suffix(b"\r").unwrap_or(line))
        .map(|(minor, code)| (minor, code, end + 1))
}

/// Whether `window` is a bare status line still waiting for its line end
/// (`HTTP/1.1 200` or `HTTP/1.1 200\r`): picohttpparser would call it
/// malformed, wanting a space.
fn bare_status_line_pending(window: &[u8]) -> bool {
    !window.contains(&b'\n')
        && status_code_only(window.strip_suffix(b"\r").unwrap_or(window)).is_some()
}

/// `HTTP/1.D DDD` alone: its minor version and code.
fn status_code_only(line: &[u8]) -> Option<(c_int, c_int)> {
    match line {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor @ b'0'..=b'9', b' ', code @ ..]
            if code.len() == 3 && code.iter().all(u8::is_ascii_digit) =>
        {
            let code = code
                .iter()
                .fold(0, |sum, digit| sum * 10 + c_int::from(digit - b'0'));
            Some((c_int::from(minor - b'0'), code))
        }
        _ => None,
    }
}
