//! keystone-response — commits truth: serializes a response head (status
//! line, engine headers, policy headers) into a caller-owned fixed buffer,
//! ready for the reactor to send.
//!
//! Owns: the status table (one X-macro-style list gives code and reason),
//! the per-second cached `Date`, the framing decision (Content-Length vs no
//! body for HEAD/1xx/204/304), the canned error responses, the body
//! encoders (length, chunked, close-delimited: [`Encoder`]) and the
//! `Content-Range` value. Every head written reports what it announced
//! ([`Committed`]: status and body length), so counters and the access log
//! never read the bytes back. A head can also be written in two steps:
//! policy's header lines first ([`write_policy_lines`]), the rest around
//! them later ([`write_head_around`]) — for a response that must wait for a
//! file to open while the exchange it came from serves other requests.
//!
//! Never allocates; never performs I/O. Never depends on: keystone-router,
//! keystone-lua, keystone-files, keystone-conn, keystone-app, keystone-reactor, keystone-ebpf,
//! keystone-ops, keystone-upstream, keystone-tls, keystone-spec, keystone-server.

mod content_range;
mod date;
mod encode;
mod status;

pub use content_range::{content_range, CONTENT_RANGE_BYTES};
pub use date::{civil_from_days, format_imf, DateCache, DATE_BYTES, MONTHS};
pub use encode::{Admitted, Encoder, ShortBody, FRAME_OVERHEAD_BYTES};
pub use status::reason;

use keystone_exchange::{is_content_length, HttpExchange};

/// Why a head could not be written. The server maps both to a 500 (and logs
/// them); nothing partial is ever sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// The head does not fit in the space given.
    HeadTooLarge {
        /// Bytes available.
        capacity: usize,
    },
    /// Policy set a status that cannot be a final response: outside
    /// 200–999 (a 1xx is interim).
    InvalidStatus {
        /// The status policy set.
        status: u32,
    },
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseError::HeadTooLarge { capacity } => {
                write!(
                    f,
                    "response head larger than the {capacity} bytes available"
                )
            }
            ResponseError::InvalidStatus { status } => {
                write!(
                    f,
                    "status {status} cannot be a final response (must be 200-999)"
                )
            }
        }
    }
}

impl std::error::Error for ResponseError {}

/// The per-request facts the head depends on besides the exchange.
#[derive(Clone, Copy, Debug)]
pub struct Framing {
    /// Keep the connection open after this response.
    pub keep_alive: bool,
    /// The request was HEAD: headers as for GET, no body bytes.
    pub head_request: bool,
    /// Request minor version: HTTP/1.0 keep-alive must be announced.
    pub minor_version: u8,
}

/// Whether a response with `status` to a request carries body bytes: not
/// to a HEAD, not 1xx, 204 or 304, and not 205 (RFC 9110 §15.3.6: "MUST
/// NOT generate content"; its head says `Content-Length: 0`).
pub fn has_body(status: u16, head_request: bool) -> bool {
    !(head_request || status < 200 || status == 204 || status == 205 || status == 304)
}

/// Default `Content-Type` when policy sets none (nginx's `default_type`).
pub const DEFAULT_CONTENT_TYPE: &[u8] = b"text/plain; charset=utf-8";

/// What a committed head announced: what counters and the access log need,
/// so they never parse the bytes they follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// Bytes of the head (for a canned response: head and body).
    pub bytes: usize,
    /// The status line's code.
    pub status: u16,
    /// The body the head announced: `Known(n)` for a `Content-Length: n`
    /// (also on a response to HEAD, which sends none), `Known(0)` for 204
    /// and 304, `Chunked` or `UntilClose` for streams without a length.
    pub body: BodyLength,
}

impl Committed {
    /// The announced body length, 0 when it is not known in advance (the
    /// access log's `$body_bytes_sent`, see keystone-ops).
    pub fn body_bytes(&self) -> u64 {
        match self.body {
            BodyLength::Known(len) => len,
            BodyLength::Chunked | BodyLength::UntilClose => 0,
        }
    }
}

/// Room kept for the status line and the engine's headers when a head is
/// completed around stashed policy lines: `HTTP/1.1 NNN ` + the longest
/// reason, `Server`, the 29-byte `Date` and a `Connection` header, with
/// margin.
pub const HEAD_PREFIX_BYTES_MAX: usize = 256;

/// Policy's header lines written ahead of the rest of their head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyLines {
    /// Bytes of the lines.
    pub len: usize,
    /// Policy set a `Content-Type` (no default is added then).
    pub has_content_type: bool,
    /// Policy set a `Server` (the engine's is left out then).
    pub has_server: bool,
}

/// A fixed-buffer writer that fails instead of growing.
struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
    overflow: bool,
}

impl<'a> Writer<'a> {
    fn new(out: &'a mut [u8]) -> Self {
        Writer {
            out,
            len: 0,
            overflow: false,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if end > self.out.len() {
            self.overflow = true;
            return;
        }
        self.out[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    fn put_u64(&mut self, mut value: u64) {
        let mut digits = [0u8; 20];
        let mut index = digits.len();
        loop {
            index -= 1;
            digits[index] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.put(&digits[index..]);
    }

    fn header(&mut self, name: &[u8], value: &[u8]) {
        self.put(name);
        self.put(b": ");
        self.put(value);
        self.put(b"\r\n");
    }

    fn finish(self) -> Result<usize, ResponseError> {
        if self.overflow {
            return Err(ResponseError::HeadTooLarge {
                capacity: self.out.len(),
            });
        }
        Ok(self.len)
    }
}

fn status_line(w: &mut Writer<'_>, status: u16) {
    if status == 200 {
        // Most heads: one copy instead of five.
        w.put(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    w.put(b"HTTP/1.1 ");
    w.put_u64(u64::from(status));
    w.put(b" ");
    w.put(reason(status).as_bytes());
    w.put(b"\r\n");
}

/// `Server: keystone` (unless policy set its own `Server`, which replaces
/// it, as `ngx.header.Server` does), `Date`, and the framing's
/// `Connection`.
fn engine_headers(w: &mut Writer<'_>, date: &DateCache, framing: Framing, policy_server: bool) {
    w.put(if policy_server {
        date.date_line()
    } else {
        date.engine_lines()
    });
    if !framing.keep_alive {
        w.header(b"Connection", b"close");
    } else if framing.minor_version == 0 {
        w.header(b"Connection", b"keep-alive");
    }
}

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    /// `Content-Length: n`.
    Known(u64),
    /// `Transfer-Encoding: chunked` (HTTP/1.1 streams).
    Chunked,
    /// Neither: the body ends when the connection closes (HTTP/1.0
    /// streams; the caller must close after it).
    UntilClose,
}

/// A response head the engine decides beyond policy's headers: status,
/// body delimitation and the engine's own extra headers (file metadata).
#[derive(Clone, Copy, Debug)]
pub struct HeadSpec<'a> {
    /// Final status, 200–999.
    pub status: u16,
    /// Body delimitation.
    pub length: BodyLength,
    /// `Content-Type` when policy set none.
    pub default_content_type: &'a [u8],
    /// Engine headers written after policy's (ETag, Content-Range, ...).
    pub extra: &'a [(&'a [u8], &'a [u8])],
}

/// Writes the head of the response policy left in `exchange`, for a body of
/// `body_len` bytes, into `out`; returns the bytes written. The caller
/// appends the body unless [`has_body`] is false.
pub fn write_head(
    exchange: &HttpExchange,
    body_len: u64,
    framing: Framing,
    date: &DateCache,
    out: &mut [u8],
) -> Result<Committed, ResponseError> {
    let status = policy_status(exchange)?;
    let spec = HeadSpec {
        status,
        length: BodyLength::Known(body_len),
        default_content_type: DEFAULT_CONTENT_TYPE,
        extra: &[],
    };
    write_head_spec(&spec, exchange.response_headers(), framing, date, out)
}

/// The status policy set, if it can be a final response.
pub fn policy_status(exchange: &HttpExchange) -> Result<u16, ResponseError> {
    let status = exchange.status;
    if !(200..=999).contains(&status) {
        return Err(ResponseError::InvalidStatus { status });
    }
    Ok(status as u16)
}

/// Writes a head from `spec` and policy's `headers` into `out`.
///
/// A `Content-Length` among policy's headers is not copied: the length on
/// the wire is always `spec.length`'s, written once (the caller has checked
/// policy's declared value against it, see
/// `HttpExchange::declared_length`), and none at all for 204 and 304.
pub fn write_head_spec<'h>(
    spec: &HeadSpec<'_>,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
    framing: Framing,
    date: &DateCache,
    out: &mut [u8],
) -> Result<Committed, ResponseError> {
    debug_assert!(spec.status >= 200);
    let mut w = Writer::new(out);
    status_line(&mut w, spec.status);
    let policy_server = headers.clone().any(|(name, _)| is_server(name));
    engine_headers(&mut w, date, framing, policy_server);
    let seen = policy_lines(&mut w, headers);
    head_suffix(&mut w, spec, seen.has_content_type);
    Ok(committed(spec, w.finish()?))
}

/// Writes a `101 Switching Protocols` head relaying an upgrade (a proxied
/// WebSocket handshake): the status line, `Server`, `Date`,
/// `Connection: upgrade`, then `headers` as given (the caller keeps the
/// upstream's `Upgrade` and drops its other hop-by-hop and framing
/// fields). No length: after it the connection carries the new protocol
/// until either side closes.
pub fn write_switching_head<'h>(
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    date: &DateCache,
    out: &mut [u8],
) -> Result<Committed, ResponseError> {
    let mut w = Writer::new(out);
    status_line(&mut w, 101);
    w.put(date.engine_lines());
    w.header(b"Connection", b"upgrade");
    for (name, value) in headers {
        w.header(name, value);
    }
    w.put(b"\r\n");
    Ok(Committed {
        bytes: w.finish()?,
        status: 101,
        body: BodyLength::UntilClose,
    })
}

/// Writes policy's header lines alone (no status line, no engine headers)
/// at the start of `out`, for [`write_head_around`] to complete later.
/// `Content-Length` is left out, as in [`write_head_spec`].
pub fn write_policy_lines<'h>(
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    out: &mut [u8],
) -> Result<PolicyLines, ResponseError> {
    let mut w = Writer::new(out);
    let seen = policy_lines(&mut w, headers);
    let len = w.finish()?;
    Ok(PolicyLines { len, ..seen })
}

/// The value of the first line named `name` (case-insensitive) among
/// lines [`write_policy_lines`] wrote: they are `Name: value\r\n` each, and
/// a value holds no CR or LF (the exchange refuses one).
pub fn policy_line<'a>(lines: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    lines
        .split(|&byte| byte == b'\n')
        .filter_map(|line| line.strip_suffix(b"\r"))
        .find_map(|line| {
            let colon = line.iter().position(|&byte| byte == b':')?;
            let (found, value) = line.split_at(colon);
            found
                .eq_ignore_ascii_case(name)
                .then(|| value[1..].strip_prefix(b" ").unwrap_or(&value[1..]))
        })
}

/// Completes a head whose policy lines ([`write_policy_lines`]) sit at
/// `out[lines_at..lines_at + lines.len]`: the status line and engine
/// headers go at `out[0..]`, the lines move right behind them (a
/// `copy_within`, so they may start anywhere at or after 0), and the
/// engine's extra headers, `Content-Type` and framing follow. The result
/// is exactly what [`write_head_spec`] writes for the same headers.
pub fn write_head_around(
    spec: &HeadSpec<'_>,
    lines_at: usize,
    lines: PolicyLines,
    framing: Framing,
    date: &DateCache,
    out: &mut [u8],
) -> Result<Committed, ResponseError> {
    debug_assert!(spec.status >= 200);
    assert!(
        lines_at + lines.len <= out.len(),
        "policy lines outside the buffer"
    );
    let mut prefix = [0u8; HEAD_PREFIX_BYTES_MAX];
    let mut w = Writer::new(&mut prefix);
    status_line(&mut w, spec.status);
    engine_headers(&mut w, date, framing, lines.has_server);
    let prefix_len = w
        .finish()
        .expect("status line and engine headers fit the prefix");
    if prefix_len + lines.len > out.len() {
        return Err(ResponseError::HeadTooLarge {
            capacity: out.len(),
        });
    }
    out.copy_within(lines_at..lines_at + lines.len, prefix_len);
    out[..prefix_len].copy_from_slice(&prefix[..prefix_len]);
    let mut w = Writer::new(&mut out[prefix_len + lines.len..]);
    head_suffix(&mut w, spec, lines.has_content_type);
    let suffix_len = w.finish().map_err(|_| ResponseError::HeadTooLarge {
        capacity: out.len(),
    })?;
    Ok(committed(spec, prefix_len + lines.len + suffix_len))
}

/// Policy's headers, `Content-Length` excepted; whether one was
/// `Content-Type` and one `Server` (`len` is left 0 for the caller).
fn policy_lines<'h>(
    w: &mut Writer<'_>,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
) -> PolicyLines {
    let mut seen = PolicyLines {
        len: 0,
        has_content_type: false,
        has_server: false,
    };
    for (name, value) in headers {
        if is_content_length(name) {
            continue;
        }
        seen.has_content_type |= name.eq_ignore_ascii_case(b"content-type");
        seen.has_server |= is_server(name);
        w.header(name, value);
    }
    seen
}

fn is_server(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"server")
}

/// The engine's extra headers, the default `Content-Type`, the framing
/// header and the blank line.
fn head_suffix(w: &mut Writer<'_>, spec: &HeadSpec<'_>, has_content_type: bool) {
    for (name, value) in spec.extra {
        w.header(name, value);
    }
    // 204 and 1xx must not carry Content-Length (RFC 9110 8.6); 304 keeps
    // none either, as nginx does, since we do not know the selected
    // representation's length.
    if spec.status != 204 && spec.status != 304 {
        // An empty default means none (a proxied answer keeps the
        // upstream's choice, even no Content-Type at all).
        if !has_content_type && !spec.default_content_type.is_empty() {
            w.header(b"Content-Type", spec.default_content_type);
        }
        match spec.length {
            // 205's content is none, whatever policy gave.
            _ if spec.status == 205 => w.put(b"Content-Length: 0\r\n"),
            BodyLength::Known(len) => {
                w.put(b"Content-Length: ");
                w.put_u64(len);
                w.put(b"\r\n");
            }
            BodyLength::Chunked => w.header(b"Transfer-Encoding", b"chunked"),
            BodyLength::UntilClose => {}
        }
    }
    w.put(b"\r\n");
}

fn committed(spec: &HeadSpec<'_>, bytes: usize) -> Committed {
    let body = if matches!(spec.status, 204 | 205 | 304) {
        BodyLength::Known(0)
    } else {
        spec.length
    };
    Committed {
        bytes,
        status: spec.status,
        body,
    }
}

/// Writes the frame header of one chunk (`{len:x}\r\n`) into `out`.
pub fn chunk_header(len: usize, out: &mut [u8; CHUNK_HEADER_MAX]) -> usize {
    debug_assert!(len > 0, "a zero-length chunk ends the body");
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4) as usize;
    for (i, slot) in out[..digits].iter_mut().enumerate() {
        let nibble = (len >> (4 * (digits - 1 - i))) & 0xf;
        *slot = b"0123456789abcdef"[nibble];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// Longest chunk frame header: 16 hex digits and CRLF.
pub const CHUNK_HEADER_MAX: usize = 18;
/// The end of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Writes a complete canned response (head and a short text body) for an
/// engine-decided status such as 400, 404, 405 (with `allow`), 413 or 500.
pub fn write_error(
    status: u16,
    allow: Option<&[u8]>,
    framing: Framing,
    date: &DateCache,
    out: &mut [u8],
) -> Result<Committed, ResponseError> {
    let allow = allow.map(|allow| [allow]);
    let extra = allow.as_ref().map(|allow| (&b"Allow"[..], &allow[..]));
    write_canned(status, extra, framing, date, out)
}

/// Writes a `301 Moved Permanently` to `location` (its parts written back
/// to back, e.g. a path, `/` and `?query`): what a directory asked for
/// without its trailing slash gets (nginx's and Apache's answer), so the
/// relative links of its index resolve inside it. The parts are request
/// bytes the parser accepted (no CR, LF or space).
pub fn write_redirect(
    location: &[&[u8]],
    framing: Framing,
    date: &DateCache,
    out: &mut [u8],
) -> Result<Committed, ResponseError> {
    write_canned(301, Some((b"Location", location)), framing, date, out)
}

/// A canned response with at most one field of its own (`name`, and its
/// value in parts).
fn write_canned(
    status: u16,
    extra: Option<(&[u8], &[&[u8]])>,
    framing: Framing,
    date: &DateCache,
    out: &mut [u8],
) -> Result<Committed, ResponseError> {
    debug_assert!(status >= 200, "canned responses are final");
    let mut w = Writer::new(out);
    status_line(&mut w, status);
    engine_headers(&mut w, date, framing, false);
    if let Some((name, parts)) = extra {
        w.put(name);
        w.put(b": ");
        for part in parts {
            w.put(part);
        }
        w.put(b"\r\n");
    }
    let reason = reason(status).as_bytes();
    let body_len = reason.len() as u64 + 1;
    if status != 204 && status != 304 {
        w.header(b"Content-Type", DEFAULT_CONTENT_TYPE);
        w.put(b"Content-Length: ");
        w.put_u64(body_len);
        w.put(b"\r\n");
    }
    w.put(b"\r\n");
    if has_body(status, framing.head_request) {
        w.put(reason);
        w.put(b"\n");
    }
    let no_length = status == 204 || status == 304;
    Ok(Committed {
        bytes: w.finish()?,
        status,
        body: BodyLength::Known(if no_length { 0 } else { body_len }),
    })
}

/// The interim `100 Continue` response, sent before reading a body the
/// client is waiting to send.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests;
