//! keystone-exchange — binds the memory contract: [`HttpExchange`], the one
//! object policy code touches, a stable `#[repr(C)]` view valid for exactly
//! one request.
//!
//! Owns: the exchange layout (the ABI the trusted Lua prelude reads through
//! LuaJIT's FFI), the response state policy writes into (status, headers in a
//! fixed arena, body view), and the generation counter that makes a view kept
//! beyond its request detectably expired.
//!
//! Does not own: request bytes (they live in a `keystone-ringbuf` buffer; the
//! exchange only points at them), parsing, routing, Lua, serialization, I/O.
//!
//! Never depends on: keystone-lua, keystone-response, keystone-files, keystone-conn, keystone-app,
//! keystone-reactor, keystone-ebpf, keystone-ops, keystone-upstream, keystone-tls, keystone-spec, keystone-server.
//!
//! # Lifetime contract
//! [`HttpExchange::bind`] points the exchange at one request; the views stay
//! valid until [`HttpExchange::expire`], which the server calls once the
//! response has been serialized and before the ring buffer may move or reuse
//! the bytes. `expire` bumps `generation`: every accessor the prelude exposes
//! compares the generation captured when `ctx` was made with the live one,
//! so a reference kept beyond its request fails with "exchange expired"
//! instead of reading stale bytes.
#![deny(missing_docs)]

mod cookie;
mod header;
mod query;
mod tls;

pub use cookie::find_cookie;
pub use header::{parse_content_length, valid_header_name, valid_header_value};
pub use query::find_query_arg;
pub use tls::{
    tls_cipher_name, tls_protocol_name, TlsFacts, TLS_CIPHER_NAMES, TLS_OFFLOAD_KERNEL_SENDS,
    TLS_OFFLOAD_NONE, TLS_PROTOCOL_NAMES, TLS_SNI_MAX, TLS_VERSION_1_2, TLS_VERSION_1_3,
    TLS_VERSION_CLEARTEXT, TLS_VERSION_PENDING,
};

use keystone_parser::{Head, HeaderSpan, ResponseHead};
use keystone_ringbuf::Span;
use keystone_router::Param;

/// Route parameters one exchange can carry; equal to the router's bound so
/// every match fits.
pub const PARAMS_MAX: usize = keystone_router::PARAMS_MAX;
/// Response headers policy may set per request. nginx sets no hard limit;
/// 64 covers every real response we know of (cookies included) and keeps the
/// table a fixed 1 KiB.
pub const RESPONSE_HEADERS_MAX: usize = 64;
/// Bytes of response header names and values per request (what is live:
/// a replaced value's bytes are reclaimed). Beyond it
/// `set_header` fails with [`HeaderError::ArenaFull`] (→ 500): a response head
/// larger than this is a bug in the policy, not a use case.
pub const RESPONSE_ARENA_BYTES: usize = 8 * 1024;
/// Scratch for one percent-decoded query argument: an argument cannot be
/// longer than the URI, whose default limit is 8 KiB.
pub const SCRATCH_BYTES: usize = 8 * 1024;
/// Request headers policy may set or remove for the upstream
/// (`ctx.upstream_headers`); their bytes share the response arena. A
/// gateway adds a few identity headers, never dozens.
pub const UPSTREAM_HEADERS_MAX: usize = 32;
/// The value span that marks a removal in `upstream_headers`.
const REMOVED: Span = Span {
    offset: 0,
    len: u32::MAX,
};

const _: () = assert!(RESPONSE_HEADERS_MAX <= u16::MAX as usize);
const _: () = assert!(RESPONSE_ARENA_BYTES <= u32::MAX as usize);

/// A route parameter as the ABI shows it: the name points into the router
/// (immutable for the worker's life), the value is a span of the request.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ParamView {
    /// Parameter name bytes (owned by the router).
    pub name_ptr: *const u8,
    /// Length of the name.
    pub name_len: u32,
    /// Value, a span of the request buffer.
    pub value: Span,
    /// Keeps the layout explicit (no implicit tail padding).
    pub _pad: u32,
}

impl ParamView {
    const EMPTY: ParamView = ParamView {
        name_ptr: std::ptr::null(),
        name_len: 0,
        value: Span::EMPTY,
        _pad: 0,
    };
}

/// What the response body is; the prelude writes it as a `u16`.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// `body_ptr`/`body_len` are the body bytes (a Lua string).
    Inline = 0,
    /// `body_ptr`/`body_len` are a file path, relative to the app directory.
    File = 1,
    /// The body is a generator the engine pulls (`LuaWorker::pull`).
    Stream = 2,
}

/// One response header: name and value as spans of the response arena.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseHeader {
    /// Name bytes in `arena`.
    pub name: Span,
    /// Value bytes in `arena`.
    pub value: Span,
}

/// Why setting a response header failed; the bridge turns it into a Lua
/// error, which the server answers with 500.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The name is not an RFC 9110 token.
    InvalidName,
    /// The value holds CR, LF, NUL or another forbidden control byte, or
    /// starts or ends with whitespace.
    InvalidValue,
    /// More than [`RESPONSE_HEADERS_MAX`] headers.
    TooMany,
    /// More than [`RESPONSE_ARENA_BYTES`] of names and values.
    ArenaFull,
    /// The header is computed by the engine (Transfer-Encoding, Connection,
    /// Date, ...) and cannot be set by policy.
    Reserved,
    /// A `Content-Length` that is not one plain decimal number fitting in a
    /// `u64` (see [`parse_content_length`]), or a second one.
    InvalidContentLength,
}

impl HeaderError {
    /// Message used by the bridge; stable, tested.
    pub fn message(self) -> &'static str {
        match self {
            HeaderError::InvalidName => "invalid response header name (must be an HTTP token)",
            HeaderError::InvalidValue => {
                "invalid response header value (CR, LF, NUL, control bytes and leading or \
                 trailing spaces are not allowed)"
            }
            HeaderError::TooMany => "too many response headers",
            HeaderError::ArenaFull => "response headers exceed the per-request arena",
            HeaderError::Reserved => {
                "this response header is computed by keystone and cannot be set"
            }
            HeaderError::InvalidContentLength => {
                "invalid Content-Length (must be one plain decimal number: digits only, \
                 no sign or spaces, at most 18446744073709551615)"
            }
        }
    }

    /// Every variant, in code order (-1, -2, ...): the bridge builds its
    /// message table from it.
    pub const ALL: [HeaderError; 6] = [
        HeaderError::InvalidName,
        HeaderError::InvalidValue,
        HeaderError::TooMany,
        HeaderError::ArenaFull,
        HeaderError::Reserved,
        HeaderError::InvalidContentLength,
    ];

    /// Stable negative code for the FFI boundary.
    pub const fn code(self) -> i32 {
        match self {
            HeaderError::InvalidName => -1,
            HeaderError::InvalidValue => -2,
            HeaderError::TooMany => -3,
            HeaderError::ArenaFull => -4,
            HeaderError::Reserved => -5,
            HeaderError::InvalidContentLength => -6,
        }
    }

    /// Inverse of [`HeaderError::code`].
    pub const fn from_code(code: i32) -> Option<HeaderError> {
        match code {
            -1 => Some(HeaderError::InvalidName),
            -2 => Some(HeaderError::InvalidValue),
            -3 => Some(HeaderError::TooMany),
            -4 => Some(HeaderError::ArenaFull),
            -5 => Some(HeaderError::Reserved),
            -6 => Some(HeaderError::InvalidContentLength),
            _ => None,
        }
    }
}

/// The memory contract between the engine and policy code.
///
/// Request fields are spans into the bytes at `base` (the connection's ring
/// buffer), valid while `generation` is unchanged. Response fields are
/// written by policy through the prelude. Field order and types are the ABI:
/// `tests/abi.rs` pins the size and every offset, and the Lua prelude's
/// `ffi.cdef` mirrors this declaration (keystone-lua checks both agree).
#[repr(C)]
pub struct HttpExchange {
    // --- identity -----------------------------------------------------
    /// Bumped by [`HttpExchange::expire`]; a `ctx` whose captured generation
    /// differs is expired. `u32` so LuaJIT reads it as a plain number.
    pub generation: u32,
    /// 0-based index of the worker that owns this exchange.
    pub worker: u32,
    // --- request (read-only for policy) --------------------------------
    /// Start of the request buffer; every request span is relative to it.
    pub base: *const u8,
    /// Method token.
    pub method: Span,
    /// Request target as sent.
    pub target: Span,
    /// Path part of the target (absolute-form reduced to its path).
    pub path: Span,
    /// Query without `?`; empty when absent.
    pub query: Span,
    /// Request body (Content-Length body, or decoded chunked body).
    pub body: Span,
    /// Parsed request headers (spans relative to `base`).
    pub headers: *const HeaderSpan,
    /// Number of entries at `headers`.
    pub header_count: u32,
    /// Number of valid entries in `params`.
    pub param_count: u32,
    /// Route parameters of the matched route.
    pub params: [ParamView; PARAMS_MAX],
    /// HTTP minor version (0 or 1).
    pub minor_version: u16,
    // --- response (written by policy) ----------------------------------
    /// What `body_ptr`/`body_len` mean: [`BodyKind`] as its `u16`.
    pub body_kind: u16,
    /// Response status; 200 unless policy sets it. Validated at commit.
    pub status: u32,
    /// Number of valid entries in `response_headers`.
    pub response_header_count: u32,
    /// Bytes used in `arena`.
    pub arena_len: u32,
    /// Response body set by policy: a view of a Lua string that the bridge
    /// keeps alive until the response is committed. Null when unset.
    pub body_ptr: *const u8,
    /// Length of the body at `body_ptr`.
    pub body_len: u64,
    /// Response headers, in the order policy set them.
    pub response_headers: [ResponseHeader; RESPONSE_HEADERS_MAX],
    /// Name and value bytes of `response_headers`.
    pub arena: [u8; RESPONSE_ARENA_BYTES],
    /// Scratch the engine decodes one query argument (or formats the
    /// client address) into for the prelude.
    pub scratch: [u8; SCRATCH_BYTES],
    /// The client's address (`ctx.remote_addr`, nginx's `$remote_addr`),
    /// captured when the connection was accepted; no family when there is
    /// none (an in-process connection).
    pub peer: PeerAddr,
    /// The request span the last span-finding call located (a cookie's
    /// value, [`HttpExchange::cookie`]); read by the prelude right after
    /// the call.
    pub found: Span,
    // --- proxying (written by policy) ----------------------------------
    /// The upstream pool the request goes to: 0 for none, else the pool's
    /// index (in the app's sorted `upstreams`) plus one (`ctx.upstream`).
    pub upstream: u32,
    /// Valid entries in `upstream_headers`.
    pub upstream_header_count: u32,
    /// Length of `upstream_path`.
    pub upstream_path_len: u32,
    /// The target sent upstream (`ctx.upstream_path`): a Lua string the
    /// prelude keeps alive until the next dispatch; null for the client's.
    pub upstream_path: *const u8,
    /// The balancing key (`ctx.upstream_key`), kept alive likewise.
    pub upstream_key: *const u8,
    /// Length of `upstream_key`.
    pub upstream_key_len: u32,
    /// Request headers set (value in the arena) or removed (value
    /// `REMOVED`) for the upstream, in the order set; one per name.
    pub upstream_headers: [ResponseHeader; UPSTREAM_HEADERS_MAX],
    // --- the upstream's answer (read by `ctx.on_response`) ---------------
    /// 1 when the handler set `ctx.on_response` (the engine keeps the
    /// function for the upstream's head).
    pub on_response: u32,
    /// The upstream's status, while `on_response` runs.
    pub upstream_status: u32,
    /// Entries at `upstream_response_headers`.
    pub upstream_response_header_count: u32,
    /// The upstream's receive buffer while `on_response` runs (its header
    /// spans index it); null otherwise.
    pub upstream_base: *const u8,
    /// The upstream's response headers (spans relative to `upstream_base`).
    pub upstream_response_headers: *const HeaderSpan,
    /// The peer that answered (`ctx.upstream_addr`).
    pub upstream_peer: PeerAddr,
    /// 1 when the request's body is larger than the buffered limit: it is
    /// not in `body` (`ctx.request.body` is nil) and streams upstream if
    /// the request is proxied.
    pub body_streamed: u32,
    /// `ctx.upstream_buffer`: read the upstream's whole body (up to this
    /// many bytes) before `ctx.on_response` runs; 0 for none.
    pub upstream_buffer: u32,
    /// Length of `upstream_body`.
    pub upstream_body_len: u32,
    /// The upstream's whole body while `on_response` runs with
    /// `ctx.upstream_buffer` (`ctx.upstream_response.body`); null otherwise.
    pub upstream_body: *const u8,
    // --- the client connection (read-only for policy) -------------------
    /// The client connection's TLS facts (`ctx.scheme`, `ctx.tls`),
    /// captured when its handshake finished and bound with every request
    /// like `peer`; cleartext when unbound.
    pub tls: TlsFacts,
}

/// A peer's IP address and port as plain bytes (the ABI's view of a
/// `SocketAddr`): `family` is 0 (none), 4 or 6; an IPv4 address sits in the
/// first 4 bytes of `addr`; `port` is in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerAddr {
    /// 0: no peer; 4: IPv4; 6: IPv6.
    pub family: u16,
    /// Port, host byte order.
    pub port: u16,
    /// Address bytes, network order.
    pub addr: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<PeerAddr>() == 20);

impl PeerAddr {
    /// No peer.
    pub const NONE: PeerAddr = PeerAddr {
        family: 0,
        port: 0,
        addr: [0; 16],
    };

    /// The view of `peer` (`NONE` for `None`).
    pub fn new(peer: Option<std::net::SocketAddr>) -> PeerAddr {
        let Some(peer) = peer else {
            return PeerAddr::NONE;
        };
        let mut addr = [0u8; 16];
        let family = match peer.ip() {
            std::net::IpAddr::V4(ip) => {
                addr[..4].copy_from_slice(&ip.octets());
                4
            }
            std::net::IpAddr::V6(ip) => {
                addr = ip.octets();
                6
            }
        };
        PeerAddr {
            family,
            port: peer.port(),
            addr,
        }
    }

    /// The peer's IP address, if there is a peer.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        match self.family {
            4 => Some(std::net::IpAddr::from([
                self.addr[0],
                self.addr[1],
                self.addr[2],
                self.addr[3],
            ])),
            6 => Some(std::net::IpAddr::from(self.addr)),
            _ => None,
        }
    }
}

/// Headers policy may not set because the engine computes them; checked
/// case-insensitively. `Content-Length` is not among them: policy may
/// declare a body's length (see [`HttpExchange::declared_length`]).
/// Beyond [`RESERVED_HEADERS`], what a request to an upstream leaves to
/// the engine: `TE` and `Trailer` (hop-by-hop: what this connection
/// accepts is the engine's business) and `Expect` (the engine answered the
/// client's and sends the body unasked; an upstream told to expect would
/// wait for a `100 Continue` nobody reads). `Proxy-*` policy may set, for
/// an upstream that is itself a forward proxy (the client's are dropped).
const UPSTREAM_RESERVED_HEADERS: [&[u8]; 3] = [b"te", b"trailer", b"expect"];

const RESERVED_HEADERS: [&[u8]; 5] = [
    b"transfer-encoding",
    b"connection",
    b"date",
    b"keep-alive",
    b"upgrade",
];

impl HttpExchange {
    /// A zeroed, unbound exchange for worker `worker`. Boxed because it is
    /// large and its address must be stable: the prelude holds a pointer.
    pub fn new_boxed(worker: u32) -> Box<HttpExchange> {
        Box::new(HttpExchange {
            generation: 1,
            worker,
            base: std::ptr::null(),
            method: Span::EMPTY,
            target: Span::EMPTY,
            path: Span::EMPTY,
            query: Span::EMPTY,
            body: Span::EMPTY,
            headers: std::ptr::null(),
            header_count: 0,
            param_count: 0,
            params: [ParamView::EMPTY; PARAMS_MAX],
            minor_version: 1,
            body_kind: BodyKind::Inline as u16,
            status: 200,
            response_header_count: 0,
            arena_len: 0,
            body_ptr: std::ptr::null(),
            body_len: 0,
            response_headers: [ResponseHeader::default(); RESPONSE_HEADERS_MAX],
            arena: [0; RESPONSE_ARENA_BYTES],
            scratch: [0; SCRATCH_BYTES],
            peer: PeerAddr::NONE,
            found: Span::EMPTY,
            upstream: 0,
            upstream_header_count: 0,
            upstream_path_len: 0,
            upstream_path: std::ptr::null(),
            upstream_key: std::ptr::null(),
            upstream_key_len: 0,
            upstream_headers: [ResponseHeader::default(); UPSTREAM_HEADERS_MAX],
            on_response: 0,
            upstream_status: 0,
            upstream_response_header_count: 0,
            upstream_base: std::ptr::null(),
            upstream_response_headers: std::ptr::null(),
            upstream_peer: PeerAddr::NONE,
            body_streamed: 0,
            upstream_buffer: 0,
            upstream_body_len: 0,
            upstream_body: std::ptr::null(),
            tls: TlsFacts::CLEARTEXT,
        })
    }

    /// Points the exchange at one request of a cleartext connection (what
    /// in-process drivers without a connection bind): [`HttpExchange::bind_with_tls`]
    /// with [`TlsFacts::CLEARTEXT`].
    pub fn bind(
        &mut self,
        base: &[u8],
        head: &Head,
        params: &[Param<'_>],
        body: Span,
        peer: PeerAddr,
    ) {
        self.bind_with_tls(base, head, params, body, peer, &TlsFacts::CLEARTEXT);
    }

    /// Points the exchange at one request: `base` is the start of the buffer
    /// `head`'s spans index, `body` the request body span in that buffer.
    ///
    /// The caller keeps those bytes and `head` unchanged until
    /// [`HttpExchange::expire`]; that is the one lifetime types cannot show
    /// here (the server's connection state machine enforces it). `peer` is
    /// the client's address, captured at accept; `tls` its connection's TLS
    /// facts, captured when the handshake finished.
    pub fn bind_with_tls(
        &mut self,
        base: &[u8],
        head: &Head,
        params: &[Param<'_>],
        body: Span,
        peer: PeerAddr,
        tls: &TlsFacts,
    ) {
        debug_assert!(self.base.is_null(), "bind while a request is bound");
        assert!(params.len() <= PARAMS_MAX);
        assert!(body.end() as usize <= base.len());
        debug_assert!(head.path.end() as usize <= base.len());
        self.base = base.as_ptr();
        self.method = head.method;
        self.target = head.target;
        self.path = head.path;
        self.query = if head.has_query {
            head.query
        } else {
            Span::EMPTY
        };
        self.body = body;
        let headers = head.headers();
        self.headers = headers.as_ptr();
        self.header_count = headers.len() as u32;
        self.param_count = params.len() as u32;
        for (slot, param) in self.params.iter_mut().zip(params) {
            *slot = ParamView {
                name_ptr: param.name.as_ptr(),
                name_len: param.name.len() as u32,
                value: param.value,
                _pad: 0,
            };
        }
        self.minor_version = u16::from(head.minor_version);
        self.body_kind = BodyKind::Inline as u16;
        self.status = 200;
        self.response_header_count = 0;
        self.arena_len = 0;
        self.body_ptr = std::ptr::null();
        self.body_len = 0;
        self.peer = peer;
        if tls.is_encrypted() {
            self.tls = *tls;
        } else {
            // The common case: a few stores, not a copy of the name bytes.
            self.tls.clear();
        }
        debug_assert_eq!(self.tls, *tls);
        self.upstream = 0;
        self.upstream_header_count = 0;
        self.upstream_path = std::ptr::null();
        self.upstream_path_len = 0;
        self.upstream_key = std::ptr::null();
        self.upstream_key_len = 0;
        self.on_response = 0;
        self.body_streamed = 0;
        self.upstream_buffer = 0;
    }

    /// The bound request's body is streamed, not buffered: policy sees no
    /// body (`ctx.request.body` is nil). Call right after
    /// [`HttpExchange::bind`].
    pub fn mark_body_streamed(&mut self) {
        debug_assert!(self.is_bound());
        self.body_streamed = 1;
    }

    /// Shows policy the upstream's answer for `ctx.on_response`: its head
    /// (spans index `bytes`), its whole body when it was buffered
    /// (`ctx.upstream_buffer`; kept unchanged until `expire` like `bytes`)
    /// and the peer. The status starts as the
    /// upstream's, and `ctx.headers[name] = nil` now also removes an
    /// upstream header. Call after [`HttpExchange::bind`]; `bytes` and
    /// `head` stay unchanged until [`HttpExchange::expire`].
    pub fn bind_upstream_response(
        &mut self,
        bytes: &[u8],
        head: &ResponseHead,
        body: Option<&[u8]>,
        peer: PeerAddr,
    ) {
        debug_assert!(self.is_bound(), "the upstream's answer without a request");
        (self.upstream_body, self.upstream_body_len) = match body {
            Some(body) => (
                body.as_ptr(),
                u32::try_from(body.len()).expect("a buffered body fits u32"),
            ),
            None => (std::ptr::null(), 0),
        };
        let headers = head.headers();
        self.upstream_base = bytes.as_ptr();
        self.upstream_response_headers = headers.as_ptr();
        self.upstream_response_header_count = headers.len() as u32;
        self.upstream_status = u32::from(head.status);
        self.upstream_peer = peer;
        self.status = u32::from(head.status);
    }

    /// Whether the upstream's answer is shown (`on_response` runs).
    pub fn has_upstream_response(&self) -> bool {
        !self.upstream_base.is_null()
    }

    /// The upstream's response headers, as (name, value) byte pairs.
    pub fn upstream_response_headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let spans: &[HeaderSpan] = if self.upstream_response_headers.is_null() {
            &[]
        } else {
            // SAFETY: `bind_upstream_response` took pointer and count from one
            // `ResponseHead` slice the engine keeps unchanged until `expire`.
            unsafe {
                std::slice::from_raw_parts(
                    self.upstream_response_headers,
                    self.upstream_response_header_count as usize,
                )
            }
        };
        spans
            .iter()
            .map(|h| (self.upstream_bytes(h.name), self.upstream_bytes(h.value)))
    }

    fn upstream_bytes(&self, span: Span) -> &[u8] {
        assert!(self.has_upstream_response());
        // SAFETY: while shown, `upstream_base` points at the upstream's
        // buffer, which every span of its head indexes, unchanged until
        // `expire`.
        unsafe {
            std::slice::from_raw_parts(
                self.upstream_base.add(span.offset as usize),
                span.len as usize,
            )
        }
    }

    /// Policy's writes that override the upstream's headers: `(name,
    /// Some(value))` set, `(name, None)` removed (`ctx.headers[n] = nil` in
    /// `on_response`).
    pub fn response_overrides(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> + '_ {
        self.response_headers[..self.response_header_count as usize]
            .iter()
            .map(|h| {
                let value = (h.value != REMOVED).then(|| self.arena_bytes(h.value));
                (self.arena_bytes(h.name), value)
            })
    }

    /// Ends the request: views become invalid and every `ctx` made for it
    /// reports "exchange expired" from now on.
    pub fn expire(&mut self) {
        self.generation = self.generation.wrapping_add(1).max(1);
        self.base = std::ptr::null();
        self.headers = std::ptr::null();
        self.header_count = 0;
        self.param_count = 0;
        self.body_ptr = std::ptr::null();
        self.body_len = 0;
        self.peer = PeerAddr::NONE;
        self.tls.clear();
        self.upstream_base = std::ptr::null();
        self.upstream_response_headers = std::ptr::null();
        self.upstream_response_header_count = 0;
        self.upstream_peer = PeerAddr::NONE;
        self.upstream_body = std::ptr::null();
        self.upstream_body_len = 0;
    }

    /// Whether a request is bound.
    pub fn is_bound(&self) -> bool {
        !self.base.is_null()
    }

    /// Bytes of a request span.
    pub fn request_bytes(&self, span: Span) -> &[u8] {
        assert!(self.is_bound(), "request_bytes on an expired exchange");
        // SAFETY: while bound, `base` points at a buffer of at least the end
        // of every span `bind` received (asserted there), and the server
        // keeps those bytes unchanged until `expire`.
        unsafe {
            std::slice::from_raw_parts(self.base.add(span.offset as usize), span.len as usize)
        }
    }

    /// The request headers, as (name, value) byte pairs.
    pub fn request_headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone + '_ {
        let spans: &[HeaderSpan] = if self.headers.is_null() {
            &[]
        } else {
            // SAFETY: `headers` and `header_count` come from one `Head`
            // slice in `bind`; the server keeps that `Head` alive and
            // unchanged until `expire`, which nulls the pointer.
            unsafe { std::slice::from_raw_parts(self.headers, self.header_count as usize) }
        };
        spans
            .iter()
            .map(|h| (self.request_bytes(h.name), self.request_bytes(h.value)))
    }

    /// The first request header named `name` (ASCII case-insensitive).
    pub fn request_header(&self, name: &[u8]) -> Option<&[u8]> {
        self.request_headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The value of the first request cookie named `name`, as a request
    /// span (see `cookie` for the rule); `None` when absent.
    pub fn cookie(&self, name: &[u8]) -> Option<Span> {
        if !self.is_bound() {
            return None;
        }
        let spans: &[HeaderSpan] = if self.headers.is_null() {
            &[]
        } else {
            // SAFETY: as in `request_headers`: one `Head` slice from `bind`,
            // alive and unchanged until `expire` nulls the pointer.
            unsafe { std::slice::from_raw_parts(self.headers, self.header_count as usize) }
        };
        let cookies = spans
            .iter()
            .filter(|header| {
                self.request_bytes(header.name)
                    .eq_ignore_ascii_case(b"cookie")
            })
            .map(|header| (self.request_bytes(header.value), header.value));
        find_cookie(cookies, name)
    }

    /// The pool index `ctx.upstream` chose, if any.
    pub fn upstream_pool(&self) -> Option<usize> {
        (self.upstream > 0).then(|| self.upstream as usize - 1)
    }

    /// `ctx.upstream_path`, when policy set one.
    pub fn upstream_path(&self) -> Option<&[u8]> {
        // SAFETY: the prelude keeps the Lua string it stored here alive
        // until the next dispatch, and the engine reads it before then.
        (!self.upstream_path.is_null()).then(|| unsafe {
            std::slice::from_raw_parts(self.upstream_path, self.upstream_path_len as usize)
        })
    }

    /// `ctx.upstream_buffer`: how much of the upstream's body to read
    /// whole before `ctx.on_response` (0: none).
    pub fn upstream_buffer(&self) -> u32 {
        self.upstream_buffer
    }

    /// `ctx.upstream_key` (empty when unset).
    pub fn upstream_key(&self) -> &[u8] {
        if self.upstream_key.is_null() {
            return &[];
        }
        // SAFETY: as for `upstream_path`.
        unsafe { std::slice::from_raw_parts(self.upstream_key, self.upstream_key_len as usize) }
    }

    /// Sets (`Some`) or removes (`None`) request header `name` for the
    /// upstream (`ctx.upstream_headers[name]`), replacing an earlier write
    /// of the same name. Hop-by-hop and framing headers are the engine's.
    pub fn set_upstream_header(
        &mut self,
        name: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), HeaderError> {
        if !valid_header_name(name) {
            return Err(HeaderError::InvalidName);
        }
        if RESERVED_HEADERS
            .iter()
            .chain(&UPSTREAM_RESERVED_HEADERS)
            .any(|r| name.eq_ignore_ascii_case(r))
            || is_content_length(name)
        {
            return Err(HeaderError::Reserved);
        }
        if let Some(value) = value {
            if !valid_header_value(value) {
                return Err(HeaderError::InvalidValue);
            }
        }
        let value_len = value.map_or(0, <[u8]>::len);
        let replaced = self.upstream_headers[..self.upstream_header_count as usize]
            .iter()
            .filter(|header| self.arena_bytes(header.name).eq_ignore_ascii_case(name));
        if !self.fits_replacing(replaced, name.len() + value_len) {
            return Err(HeaderError::ArenaFull); // the earlier write stays
        }
        let count = self.upstream_header_count as usize;
        let mut kept = 0;
        for index in 0..count {
            let header = self.upstream_headers[index];
            if !self.arena_bytes(header.name).eq_ignore_ascii_case(name) {
                self.upstream_headers[kept] = header;
                kept += 1;
            }
        }
        self.upstream_header_count = kept as u32;
        if kept >= UPSTREAM_HEADERS_MAX {
            return Err(HeaderError::TooMany);
        }
        let start = self.reserve(name.len() + value_len)?;
        let end = start + name.len() + value_len;
        self.arena[start..start + name.len()].copy_from_slice(name);
        let value_span = match value {
            Some(value) => {
                self.arena[start + name.len()..end].copy_from_slice(value);
                Span::new((start + name.len()) as u32, value.len() as u32)
            }
            None => REMOVED,
        };
        self.upstream_headers[kept] = ResponseHeader {
            name: Span::new(start as u32, name.len() as u32),
            value: value_span,
        };
        self.upstream_header_count += 1;
        self.arena_len = end as u32;
        Ok(())
    }

    /// Policy's upstream header writes: `(name, Some(value))` to set,
    /// `(name, None)` to remove one the client sent.
    pub fn upstream_overrides(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> + Clone + '_ {
        self.upstream_headers[..self.upstream_header_count as usize]
            .iter()
            .map(|header| {
                let value = (header.value != REMOVED).then(|| self.arena_bytes(header.value));
                (self.arena_bytes(header.name), value)
            })
    }

    /// Index of the route parameter named `name`.
    pub fn param_index(&self, name: &[u8]) -> Option<usize> {
        self.params[..self.param_count as usize]
            .iter()
            .position(|p| {
                // SAFETY: `name_ptr`/`name_len` were taken from a `&str` owned by
                // the router, which outlives every exchange of its worker.
                let bytes = unsafe { std::slice::from_raw_parts(p.name_ptr, p.name_len as usize) };
                bytes == name
            })
    }

    /// Sets response header `name` to `value`, replacing any earlier value
    /// of the same name (case-insensitive), as assigning a table field does.
    /// A refused value leaves the earlier one in place.
    pub fn set_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HeaderError> {
        check_settable(name)?;
        check_value(name, value)?;
        // In `on_response` the removal leaves a marker (the name) behind.
        let marker = if self.has_upstream_response() {
            name.len()
        } else {
            0
        };
        let replaced = self.response_headers[..self.response_header_count as usize]
            .iter()
            .filter(|header| self.arena_bytes(header.name).eq_ignore_ascii_case(name));
        if !self.fits_replacing(replaced, marker + name.len() + value.len()) {
            return Err(HeaderError::ArenaFull); // the earlier value stays
        }
        // Checked once here: the removal and the append below are the
        // unchecked halves of `remove_header` and `add_header`.
        self.remove_checked(name)?;
        self.push_checked(name, value)
    }

    /// Appends a response header without removing earlier ones of the same
    /// name (for `Set-Cookie` lists). `Content-Length` is single-valued: a
    /// second one is [`HeaderError::InvalidContentLength`].
    pub fn add_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HeaderError> {
        check_settable(name)?;
        check_value(name, value)?;
        self.push_checked(name, value)
    }

    /// `add_header` after its checks: `name` is settable and `value` valid.
    fn push_checked(&mut self, name: &[u8], value: &[u8]) -> Result<(), HeaderError> {
        if is_content_length(name) && self.response_header(CONTENT_LENGTH).is_some() {
            return Err(HeaderError::InvalidContentLength);
        }
        if self.response_header_count as usize >= RESPONSE_HEADERS_MAX {
            return Err(HeaderError::TooMany);
        }
        let start = self.reserve(name.len() + value.len())?;
        let end = start + name.len() + value.len();
        self.arena[start..start + name.len()].copy_from_slice(name);
        self.arena[start + name.len()..end].copy_from_slice(value);
        self.response_headers[self.response_header_count as usize] = ResponseHeader {
            name: Span::new(start as u32, name.len() as u32),
            value: Span::new((start + name.len()) as u32, value.len() as u32),
        };
        self.response_header_count += 1;
        self.arena_len = end as u32;
        Ok(())
    }

    /// Removes every response header named `name`.
    pub fn remove_header(&mut self, name: &[u8]) -> Result<(), HeaderError> {
        check_settable(name)?;
        self.remove_checked(name)
    }

    /// `remove_header` after its check: `name` is settable.
    fn remove_checked(&mut self, name: &[u8]) -> Result<(), HeaderError> {
        let count = self.response_header_count as usize;
        let mut kept = 0;
        for index in 0..count {
            let header = self.response_headers[index];
            if !self.arena_bytes(header.name).eq_ignore_ascii_case(name) {
                self.response_headers[kept] = header;
                kept += 1;
            }
        }
        self.response_header_count = kept as u32;
        if self.has_upstream_response() && kept < RESPONSE_HEADERS_MAX {
            // In `on_response`, a removal must reach the upstream's copy
            // too: it is remembered as an entry without a value.
            let start = self.reserve(name.len())?;
            let end = start + name.len();
            self.arena[start..end].copy_from_slice(name);
            self.response_headers[kept] = ResponseHeader {
                name: Span::new(start as u32, name.len() as u32),
                value: REMOVED,
            };
            self.response_header_count += 1;
            self.arena_len = end as u32;
        }
        Ok(())
    }

    /// The value of the first response header named `name`.
    pub fn response_header(&self, name: &[u8]) -> Option<&[u8]> {
        self.response_headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The body length policy declared with a `Content-Length` response
    /// header, if it set one. The engine frames the body by it (a stream is
    /// sent raw instead of chunked) or checks it against the body it knows,
    /// and writes the header itself: serializers skip policy's copy.
    pub fn declared_length(&self) -> Option<u64> {
        if self.response_header_count == 0 {
            return None; // the common case: no scan
        }
        let value = self.response_header(CONTENT_LENGTH)?;
        let length = parse_content_length(value);
        // `set_header`/`add_header` are the only writers, and they validate.
        debug_assert!(length.is_some(), "unvalidated Content-Length {value:?}");
        length
    }

    /// Response headers in the order they were set.
    pub fn response_headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone + '_ {
        self.response_headers[..self.response_header_count as usize]
            .iter()
            .filter(|h| h.value != REMOVED)
            .map(|h| (self.arena_bytes(h.name), self.arena_bytes(h.value)))
    }

    /// What kind of body policy set (an unknown value reads as inline).
    pub fn body_kind(&self) -> BodyKind {
        match self.body_kind {
            1 => BodyKind::File,
            2 => BodyKind::Stream,
            _ => BodyKind::Inline,
        }
    }

    /// The response body policy set, if any (for [`BodyKind::File`], the
    /// path; for [`BodyKind::Stream`], the chunk the last pull produced).
    pub fn response_body(&self) -> Option<&[u8]> {
        if self.body_ptr.is_null() {
            return None;
        }
        // SAFETY: the bridge sets `body_ptr`/`body_len` from a Lua string it
        // keeps referenced until the response is committed (see
        // keystone-lua's `Outcome`), and `expire` clears them.
        Some(unsafe { std::slice::from_raw_parts(self.body_ptr, self.body_len as usize) })
    }

    fn arena_bytes(&self, span: Span) -> &[u8] {
        &self.arena[span.offset as usize..span.end() as usize]
    }

    /// Where `len` new bytes go in the arena: behind what is used, after
    /// the dead bytes replaced and removed headers left are squeezed out
    /// when that is what it takes ([`HttpExchange::compact_arena`]).
    fn reserve(&mut self, len: usize) -> Result<usize, HeaderError> {
        if self.arena_len as usize + len > RESPONSE_ARENA_BYTES {
            self.compact_arena();
        }
        let start = self.arena_len as usize;
        if start + len > RESPONSE_ARENA_BYTES {
            return Err(HeaderError::ArenaFull);
        }
        Ok(start)
    }

    /// Whether `added` bytes fit once the entries `replaced` are gone
    /// (checked before a replacement removes anything, so a refused one
    /// leaves the earlier value in place).
    fn fits_replacing<'a>(
        &self,
        replaced: impl Iterator<Item = &'a ResponseHeader>,
        added: usize,
    ) -> bool {
        let freed: usize = replaced.map(entry_bytes).sum();
        let live: usize = self.response_headers[..self.response_header_count as usize]
            .iter()
            .chain(&self.upstream_headers[..self.upstream_header_count as usize])
            .map(entry_bytes)
            .sum();
        live - freed + added <= RESPONSE_ARENA_BYTES
    }

    /// Moves every live entry's bytes to the front of the arena, in arena
    /// order, and fixes their spans: replacing a header leaves its old
    /// bytes behind, and a handler overwriting one header in a loop (a
    /// counter, a retry) must not run out of arena for that. No
    /// allocation: the entries are ordered by offset in a stack array.
    /// The prelude reads spans afresh on every access, so none it holds
    /// goes stale.
    fn compact_arena(&mut self) {
        const ENTRIES: usize = RESPONSE_HEADERS_MAX + UPSTREAM_HEADERS_MAX;
        const _: () = assert!(RESPONSE_HEADERS_MAX <= u8::MAX as usize);
        const _: () = assert!(UPSTREAM_HEADERS_MAX <= u8::MAX as usize);
        let mut order = [(0u32, false, 0u8); ENTRIES];
        let mut entries = 0;
        let tables = [
            (false, self.response_header_count as usize),
            (true, self.upstream_header_count as usize),
        ];
        for (upstream, count) in tables {
            for index in 0..count {
                let header = if upstream {
                    &self.upstream_headers[index]
                } else {
                    &self.response_headers[index]
                };
                order[entries] = (header.name.offset, upstream, index as u8);
                entries += 1;
            }
        }
        order[..entries].sort_unstable();
        let mut cursor = 0u32;
        for &(from, upstream, index) in &order[..entries] {
            let header = if upstream {
                &mut self.upstream_headers[usize::from(index)]
            } else {
                &mut self.response_headers[usize::from(index)]
            };
            let len = entry_bytes(header) as u32;
            // A name and its value are written side by side, always.
            debug_assert!(header.value == REMOVED || header.value.offset == from + header.name.len);
            self.arena
                .copy_within(from as usize..(from + len) as usize, cursor as usize);
            header.name.offset = cursor;
            if header.value != REMOVED {
                header.value.offset = cursor + header.name.len;
            }
            cursor += len;
        }
        self.arena_len = cursor;
    }
}

/// Bytes one header entry holds in the arena: its name, and its value
/// unless it marks a removal.
fn entry_bytes(header: &ResponseHeader) -> usize {
    let value = if header.value == REMOVED {
        0
    } else {
        header.value.len
    };
    (header.name.len + value) as usize
}

/// The response header that declares a body's length, lower-case.
pub const CONTENT_LENGTH: &[u8] = b"content-length";

/// Whether `name` is `Content-Length` (ASCII case-insensitive).
pub fn is_content_length(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(CONTENT_LENGTH)
}

fn check_value(name: &[u8], value: &[u8]) -> Result<(), HeaderError> {
    if !valid_header_value(value) {
        return Err(HeaderError::InvalidValue);
    }
    if is_content_length(name) && parse_content_length(value).is_none() {
        return Err(HeaderError::InvalidContentLength);
    }
    Ok(())
}

fn check_settable(name: &[u8]) -> Result<(), HeaderError> {
    if !valid_header_name(name) {
        return Err(HeaderError::InvalidName);
    }
    if RESERVED_HEADERS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
    {
        return Err(HeaderError::Reserved);
    }
    Ok(())
}
