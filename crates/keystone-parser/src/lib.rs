//! keystone-parser: marks HTTP/1.1 request structure.
//!
//! Job: turn the unconsumed bytes of a connection's `RingBuffer` into a
//! [`Head`] of absolute [`Span`]s (method, target, path, query, headers, host)
//! plus the framing facts the server acts on ([`BodyFraming`],
//! [`Persistence`], `Expect: 100-continue`), an upstream's answer into a
//! [`ResponseHead`] (status, headers, [`ResponseBody`] framing), and decode
//! chunked bodies in place ([`ChunkedDecoder`]). Nothing is copied and nothing is allocated:
//! the caller owns the `Head`, the [`Parser`] owns a fixed header scratch array.
//!
//! Owns: the FFI to upstream picohttpparser (`picohttpparser-sys`), the
//! request-line and header rules picohttpparser leaves to its caller
//! (version, target form, framing, Host, obs-fold), the request [`Limits`],
//! and [`ParseError::status`], the one place parse errors become HTTP statuses.
//! It also holds the workspace's one percent-decoder, OWS trim and `1*DIGIT`
//! parser ([`text`]), so URL paths, query arguments and header values share
//! one rule each.
//!
//! Never depends on: keystone-router, keystone-exchange, keystone-lua,
//! keystone-response, keystone-files, keystone-conn, keystone-app, keystone-reactor, keystone-ebpf,
//! keystone-ops, keystone-upstream, keystone-tls, keystone-spec, keystone-server (layer 2 only sees layer 1,
//! `keystone-ringbuf`, for `Span`).
//!
//! # Implementation notes
//!
//! The vendored picohttpparser (crate 1.0.0) is an older upstream revision.
//! What it does *not* check, and this crate therefore does:
//! * the method is only checked for control bytes, not for `tchar`s;
//! * the version is `HTTP/1.` followed by any digits (parsed into a C `int`
//!   without an overflow check), so the request line is validated here
//!   *before* picohttpparser sees it;
//! * header values keep trailing whitespace, which is trimmed here;
//! * obs-fold lines are returned as a header with a NULL name.
//!
//! * its chunked decoder skips whatever follows a chunk-size up to LF, takes
//!   any run of CRs as a line end and never looks inside trailers, so every
//!   framing byte is first held to RFC 9112 §7.1 by `chunk_lines`.
//!
//! Not promised: bare LF line endings and one leading empty line are accepted
//! in a request head (as picohttpparser and httparse both do); chunk lines
//! and trailers need CRLF. Chunk extensions are checked, then ignored.

mod chunk_lines;
mod chunked;
mod error;
mod host;
mod request;
mod response;
mod semantics;
mod target;
pub mod text;

#[cfg(test)]
mod tests;

pub use chunk_lines::{MAX_CHUNK_EXT_BYTES, MAX_TRAILER_BYTES};
pub use chunked::{ChunkProgress, ChunkedDecoder};
pub use error::ParseError;
pub use keystone_ringbuf::Span;
pub use request::{Parser, Progress};
pub use response::{ResponseBody, ResponseHead, ResponseParser};
pub use target::{is_token_byte, MAX_METHOD_BYTES};

/// Size of the header array handed to picohttpparser; the runtime
/// `--max-headers` ([`Limits::max_headers`]) may not exceed it. 128 is
/// past every browser's real header count (~20-40) with room for proxies,
/// and keeps the scratch array at 4 KiB.
pub const HEADERS_CAPACITY: usize = 128;

/// Default head limit: 16 KiB. nginx answers 400/414 past
/// `large_client_header_buffers` (8 KiB lines); 16 KiB leaves room for big
/// cookies yet keeps a slowloris head from pinning more than 4 pages.
pub const MAX_HEADER_BYTES_DEFAULT: u32 = 16 * 1024;

/// Default header count: 100, the same cap as hyper's default
/// `max_headers`; 431 above it.
pub const MAX_HEADERS_DEFAULT: u16 = 100;

/// Default request-target limit: 8 KiB, nginx's line buffer and the length
/// RFC 9112 §3 recommends supporting at minimum; 414 above it.
pub const MAX_URI_BYTES_DEFAULT: u32 = 8 * 1024;

/// Default body limit: 1 MiB, nginx's `client_max_body_size`; 413 above it.
pub const MAX_BODY_BYTES_DEFAULT: u64 = 1024 * 1024;

const _: () = assert!(MAX_HEADERS_DEFAULT as usize <= HEADERS_CAPACITY);
const _: () = assert!(MAX_URI_BYTES_DEFAULT < MAX_HEADER_BYTES_DEFAULT);
// picohttpparser returns the head length as a C int.
const _: () = assert!(MAX_HEADER_BYTES_DEFAULT < i32::MAX as u32);

/// Per-request limits; each is enforced with its own [`ParseError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line + headers + final CRLFCRLF; `HeadTooLarge` (431) above.
    pub max_header_bytes: u32,
    /// Header lines; `TooManyHeaders` (431) above. At most [`HEADERS_CAPACITY`].
    pub max_headers: u16,
    /// Request-target bytes; `UriTooLong` (414) above.
    pub max_uri_bytes: u32,
    /// Declared or decoded body bytes; `BodyTooLarge` (413) above.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_header_bytes: MAX_HEADER_BYTES_DEFAULT,
            max_headers: MAX_HEADERS_DEFAULT,
            max_uri_bytes: MAX_URI_BYTES_DEFAULT,
            max_body_bytes: MAX_BODY_BYTES_DEFAULT,
        }
    }
}

/// One header: name and value spans (value without surrounding whitespace).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: Span,
    pub value: Span,
}

const _: () = assert!(std::mem::size_of::<HeaderSpan>() == 16);

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// Neither Content-Length nor Transfer-Encoding: no body.
    None,
    /// `Content-Length: n` (n may be 0), already checked against `max_body_bytes`.
    Length(u64),
    /// `Transfer-Encoding: ..., chunked`: decode with [`ChunkedDecoder`].
    Chunked,
}

/// Whether the connection may carry another request after this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    KeepAlive,
    Close,
}

/// The parsed request head: caller-owned and reused for every request, so a
/// parse allocates nothing. Every span is absolute in the `RingBuffer`.
/// Only valid after `parse` returned `Complete`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: Span,
    /// The request-target as sent.
    pub target: Span,
    /// Target up to the first '?'; for absolute-form ("http://host/p?q")
    /// only the path ("/p"); for `OPTIONS *` the "*".
    pub path: Span,
    /// Bytes after the first '?' (without it); empty when `has_query` is false.
    pub query: Span,
    pub has_query: bool,
    /// 0 or 1 (HTTP/1.0 or HTTP/1.1).
    pub minor_version: u8,
    pub header_count: u16,
    /// The first `header_count` entries are this request's headers, in order.
    pub headers: [HeaderSpan; HEADERS_CAPACITY],
    /// Bytes of the head including the final CRLFCRLF (and a skipped leading
    /// empty line): the body, if any, starts at `base_offset + head_len`.
    pub head_len: u32,
    pub body: BodyFraming,
    pub persistence: Persistence,
    /// `Expect: 100-continue` on an HTTP/1.1 request (ignored for 1.0, RFC 9110 §10.1.1).
    pub expect_continue: bool,
    /// Value of the Host header, or an absolute-form target's authority
    /// (which wins, RFC 9112 §3.2.2); valid when `has_host`.
    pub host: Span,
    pub has_host: bool,
}

impl Head {
    pub fn new() -> Head {
        Head {
            method: Span::EMPTY,
            target: Span::EMPTY,
            path: Span::EMPTY,
            query: Span::EMPTY,
            has_query: false,
            minor_version: 1,
            header_count: 0,
            headers: [HeaderSpan::default(); HEADERS_CAPACITY],
            head_len: 0,
            body: BodyFraming::None,
            persistence: Persistence::KeepAlive,
            expect_continue: false,
            host: Span::EMPTY,
            has_host: false,
        }
    }

    /// This request's headers.
    pub fn headers(&self) -> &[HeaderSpan] {
        &self.headers[..self.header_count as usize]
    }

    /// Resets the scalar fields; the header array is left as is because only
    /// the first `header_count` entries are ever read.
    fn clear(&mut self) {
        self.method = Span::EMPTY;
        self.target = Span::EMPTY;
        self.path = Span::EMPTY;
        self.query = Span::EMPTY;
        self.has_query = false;
        self.minor_version = 1;
        self.header_count = 0;
        self.head_len = 0;
        self.body = BodyFraming::None;
        self.persistence = Persistence::KeepAlive;
        self.expect_continue = false;
        self.host = Span::EMPTY;
        self.has_host = false;
    }
}

impl Default for Head {
    fn default() -> Head {
        Head::new()
    }
}

/// Result of a successful [`Parser::parse`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseStatus {
    /// `head` is filled; the head occupies `head.head_len` bytes.
    Complete,
    /// More bytes are needed; call again with the same, grown, buffer.
    Partial,
}
