//! The request-head parser: picohttpparser FFI plus the checks it leaves out.

use libc::{c_char, c_int, size_t};
use picohttpparser_sys::{phr_header, phr_parse_request};

use crate::semantics::HeaderFacts;
use crate::target::{check_request_line, split_target, RequestLine, TargetParts};
use crate::text::trim_ows_end;
use crate::{Head, HeaderSpan, Limits, ParseError, ParseStatus, Span, HEADERS_CAPACITY};

/// Parses request heads. One per connection (or per reactor thread, reset
/// between connections); holds picohttpparser's `last_len` between `Partial`
/// calls and a fixed header scratch array, so a parse allocates nothing.
pub struct Parser {
    /// The incremental state of the head being parsed; a connection that
    /// shares one parser with others keeps its own [`Progress`] and parses
    /// with [`Parser::parse_resuming`].
    progress: Progress,
    /// Scratch for picohttpparser's out-array; pointers are only meaningful
    /// during one `parse` call and are never read after it.
    headers: [phr_header; HEADERS_CAPACITY],
}

// SAFETY: the raw pointers in `headers` are scratch written and read within a
// single `parse` call (while the caller's buffer is borrowed); they are never
// dereferenced afterwards, so moving a Parser to another thread is sound.
unsafe impl Send for Parser {}

impl Default for Parser {
    fn default() -> Parser {
        Parser::new()
    }
}

impl Parser {
    pub fn new() -> Parser {
        Parser {
            progress: Progress::NEW,
            headers: [phr_header::default(); HEADERS_CAPACITY],
        }
    }

    /// Forgets the incremental state; call after a complete request (parse
    /// also does it itself on `Complete` and on error).
    pub fn reset(&mut self) {
        self.progress = Progress::NEW;
    }

    /// [`Parser::parse`] resuming from (and saving into) a connection's own
    /// `progress`, so one parser (and its header scratch) serves every
    /// connection of a worker while each head that arrives in pieces is
    /// only rescanned from where its last read ended.
    pub fn parse_resuming(
        &mut self,
        progress: &mut Progress,
        buf: &[u8],
        base_offset: u32,
        limits: &Limits,
        head: &mut Head,
    ) -> Result<ParseStatus, ParseError> {
        std::mem::swap(&mut self.progress, progress);
        let result = self.parse(buf, base_offset, limits, head);
        std::mem::swap(&mut self.progress, progress);
        result
    }

    /// Parses the request head at the start of `buf`.
    ///
    /// `buf` is the unconsumed bytes of a RingBuffer, which start at absolute
    /// offset `base_offset`; every span in `head` is absolute (base_offset +
    /// position in buf). Incremental: keeps picohttpparser's last_len between
    /// Partial calls on the same growing buffer.
    ///
    /// `Partial` once `buf` holds `max_header_bytes` bytes without a complete
    /// head is `HeadTooLarge`: the head can only end past the limit.
    ///
    /// Not promised: between `Partial` calls picohttpparser only scans the new
    /// bytes for the blank line ending the head, so a bad header line may be
    /// reported only when the head completes (or hits the limit); the request
    /// line (version, target length and form) is always checked as soon as
    /// its LF arrives.
    pub fn parse(
        &mut self,
        buf: &[u8],
        base_offset: u32,
        limits: &Limits,
        head: &mut Head,
    ) -> Result<ParseStatus, ParseError> {
        assert!(
            limits.max_headers as usize <= HEADERS_CAPACITY,
            "max_headers above capacity"
        );
        assert!(
            limits.max_header_bytes < i32::MAX as u32,
            "head length must fit a C int"
        );
        assert!(u64::from(base_offset) + buf.len() as u64 <= u64::from(u32::MAX));
        head.clear();
        let result = self.parse_window(buf, base_offset, limits, head);
        if !matches!(result, Ok(ParseStatus::Partial)) {
            self.reset();
        }
        result
    }

    fn parse_window(
        &mut self,
        buf: &[u8],
        base_offset: u32,
        limits: &Limits,
        head: &mut Head,
    ) -> Result<ParseStatus, ParseError> {
        // Never show picohttpparser more than the limit: bounds its work, and
        // a head that fits parses identically in the truncated window.
        let window = &buf[..buf.len().min(limits.max_header_bytes as usize)];
        let too_large = ParseError::HeadTooLarge {
            limit: limits.max_header_bytes,
        };
        // The target's parts when its line was checked in this call (the
        // common case: the whole head came in one read); else the split is
        // redone once the head is complete.
        let mut parts = None;
        if !self.progress.request_line_valid {
            match check_request_line(window, limits)? {
                RequestLine::Valid(checked) => {
                    self.progress.request_line_valid = true;
                    parts = Some(checked);
                }
                // Below the limit, window == buf: wait for the rest of the line.
                RequestLine::Incomplete if window.len() < limits.max_header_bytes as usize => {
                    return Ok(ParseStatus::Partial)
                }
                RequestLine::Incomplete => return Err(too_large),
            }
        }
        debug_assert!(
            self.progress.last_len <= window.len(),
            "parse called with a shrunk buffer"
        );
        let raw = self.call_picohttpparser(window, limits.max_headers);
        match raw.status {
            -2 if window.len() >= limits.max_header_bytes as usize => Err(too_large),
            -2 => {
                self.progress.last_len = window.len();
                Ok(ParseStatus::Partial)
            }
            -1 if raw.header_count == limits.max_headers as usize => {
                Err(ParseError::TooManyHeaders {
                    limit: limits.max_headers,
                })
            }
            -1 => Err(ParseError::Malformed),
            head_len => {
                assert!(
                    head_len > 0 && head_len as usize <= window.len(),
                    "picohttpparser returned {head_len}"
                );
                head.head_len = head_len as u32;
                self.fill_head(window, base_offset, &raw, parts, limits, head)?;
                Ok(ParseStatus::Complete)
            }
        }
    }

    fn call_picohttpparser(&mut self, window: &[u8], max_headers: u16) -> RawRequest {
        let mut raw = RawRequest {
            status: 0,
            method: std::ptr::null(),
            method_len: 0,
            target: std::ptr::null(),
            target_len: 0,
            minor_version: -1,
            header_count: 0,
        };
        let mut header_count: size_t = max_headers as size_t;
        // SAFETY: window is a live slice of window.len() bytes; every out
        // pointer is a valid local or field; the header array holds
        // HEADERS_CAPACITY >= max_headers entries (asserted in `parse`);
        // last_len <= window.len() because window only grows between Partials.
        raw.status = unsafe {
            phr_parse_request(
                window.as_ptr().cast::<c_char>(),
                window.len(),
                &mut raw.method,
                &mut raw.method_len,
                &mut raw.target,
                &mut raw.target_len,
                &mut raw.minor_version,
                self.headers.as_mut_ptr(),
                &mut header_count,
                self.progress.last_len.min(window.len()),
            )
        };
        assert!(
            header_count <= max_headers as size_t,
            "picohttpparser overran its array"
        );
        raw.header_count = header_count;
        raw
    }

    /// Turns picohttpparser's pointers into absolute spans and applies the
    /// header rules.
    fn fill_head(
        &self,
        window: &[u8],
        base_offset: u32,
        raw: &RawRequest,
        parts: Option<TargetParts>,
        limits: &Limits,
        head: &mut Head,
    ) -> Result<(), ParseError> {
        let span_of = |pointer: *const c_char, len: usize| -> Span {
            let start = (pointer as usize).wrapping_sub(window.as_ptr() as usize);
            assert!(
                start <= window.len() && len <= window.len() - start,
                "span outside buffer"
            );
            Span::new(base_offset + start as u32, len as u32)
        };
        let relative = |span: Span| {
            &window[(span.offset - base_offset) as usize..(span.end() - base_offset) as usize]
        };
        head.method = span_of(raw.method, raw.method_len);
        head.target = span_of(raw.target, raw.target_len);
        head.minor_version = match raw.minor_version {
            0 => 0,
            1 => 1,
            other => panic!("request line check let version 1.{other} through"),
        };
        let parts = match parts {
            Some(parts) => parts,
            None => split_target(relative(head.method), relative(head.target))?,
        };
        let target_offset = head.target.offset;
        head.path = Span::new(
            target_offset + parts.path_start as u32,
            (parts.path_end - parts.path_start) as u32,
        );
        if let Some(query_start) = parts.query_start {
            head.has_query = true;
            head.query = Span::new(
                target_offset + query_start as u32,
                head.target.len - query_start as u32,
            );
        }
        let mut facts = HeaderFacts::default();
        facts.absolute_form = parts.authority.is_some();
        for (index, header) in self.headers[..raw.header_count].iter().enumerate() {
            if header.name.is_null() {
                return Err(ParseError::ObsFold);
            }
            let name = span_of(header.name, header.name_len);
            let value = span_of(header.value, header.value_len);
            let value_bytes = trim_ows_end(relative(value));
            let value = Span::new(value.offset, value_bytes.len() as u32);
            head.headers[index] = HeaderSpan { name, value };
            facts.record(head, relative(name), value_bytes, value)?;
        }
        head.header_count = raw.header_count as u16;
        facts.finish(head, limits)?;
        // An absolute-form target's authority wins over the Host header
        // (RFC 9112 §3.2.2); both were held to the same grammar.
        if let Some((start, end)) = parts.authority {
            head.host = Span::new(target_offset + start as u32, (end - start) as u32);
            head.has_host = true;
        }
        Ok(())
    }
}

/// How far the head at the start of a buffer was parsed: kept between
/// `Partial` results on the same (growing) buffer, reset by a `Complete`
/// or an error. Small, so every connection can hold its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Buffer length at the last `Partial`, so picohttpparser only rescans
    /// the new bytes for the end of the head (its slowloris counter-measure).
    last_len: usize,
    /// The request line of the current buffer was already validated.
    request_line_valid: bool,
}

impl Progress {
    /// Nothing parsed yet.
    pub const NEW: Progress = Progress {
        last_len: 0,
        request_line_valid: false,
    };

    /// Whether a partial head has been seen (a `Partial` since the last
    /// reset).
    pub fn started(&self) -> bool {
        self.last_len > 0 || self.request_line_valid
    }
}

/// picohttpparser's outputs for one call.
struct RawRequest {
    status: c_int,
    method: *const c_char,
    method_len: size_t,
    target: *const c_char,
    target_len: size_t,
    minor_version: c_int,
    header_count: usize,
}
