//! keystone-response — commits truth: serializes a response head (status
//! line, engine headers, policy headers) into a caller-owned fixed buffer,
//! ready for the reactor to send.
//!
//! Owns: the status table (one X-macro-style list gives code and reason),
//! the per-second cached `Date`, the framing decision (Content-Length vs no
//! body for HEAD/1xx/204/304) and the canned error responses.
//!
//! Never allocates; never performs I/O. Never depends on: keystone-lua,
//! keystone-reactor, keystone-ebpf, keystone-server.

mod date;
mod status;

pub use date::{civil_from_days, DateCache};
pub use status::reason;

use keystone_exchange::HttpExchange;

/// Why a head could not be written. The server maps both to a 500 (and logs
/// them); nothing partial is ever sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// The head does not fit in the space given.
    HeadTooLarge {
        /// Bytes available.
        capacity: usize,
    },
    /// Policy set a status that cannot be a final response (1xx) or is
    /// outside 100–999.
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

/// Whether a response with `status` to a request carries body bytes.
pub fn has_body(status: u16, head_request: bool) -> bool {
    !(head_request || status < 200 || status == 204 || status == 304)
}

/// Default `Content-Type` when policy sets none (nginx's `default_type`).
pub const DEFAULT_CONTENT_TYPE: &[u8] = b"text/plain; charset=utf-8";

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
    w.put(b"HTTP/1.1 ");
    w.put_u64(u64::from(status));
    w.put(b" ");
    w.put(reason(status).as_bytes());
    w.put(b"\r\n");
}

fn engine_headers(w: &mut Writer<'_>, date: &DateCache, framing: Framing) {
    w.header(b"Server", b"keystone");
    w.header(b"Date", date.get());
    if !framing.keep_alive {
        w.header(b"Connection", b"close");
    } else if framing.minor_version == 0 {
        w.header(b"Connection", b"keep-alive");
    }
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
) -> Result<usize, ResponseError> {
    let status = exchange.status;
    if !(200..=999).contains(&status) {
        return Err(ResponseError::InvalidStatus { status });
    }
    let status = status as u16;
    let mut w = Writer::new(out);
    status_line(&mut w, status);
    engine_headers(&mut w, date, framing);
    let mut has_content_type = false;
    for (name, value) in exchange.response_headers() {
        has_content_type |= name.eq_ignore_ascii_case(b"content-type");
        w.header(name, value);
    }
    // 204 and 1xx must not carry Content-Length (RFC 9110 8.6); 304 keeps
    // none either, as nginx does, since we do not know the selected
    // representation's length.
    if status != 204 && status != 304 {
        if !has_content_type {
            w.header(b"Content-Type", DEFAULT_CONTENT_TYPE);
        }
        w.put(b"Content-Length: ");
        w.put_u64(body_len);
        w.put(b"\r\n");
    }
    w.put(b"\r\n");
    w.finish()
}

/// Writes a complete canned response (head and a short text body) for an
/// engine-decided status such as 400, 404, 405 (with `allow`), 413 or 500.
pub fn write_error(
    status: u16,
    allow: Option<&[u8]>,
    framing: Framing,
    date: &DateCache,
    out: &mut [u8],
) -> Result<usize, ResponseError> {
    debug_assert!(status >= 200, "canned responses are final");
    let mut w = Writer::new(out);
    status_line(&mut w, status);
    engine_headers(&mut w, date, framing);
    if let Some(allow) = allow {
        w.header(b"Allow", allow);
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
    w.finish()
}

/// The interim `100 Continue` response, sent before reading a body the
/// client is waiting to send.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests;
