//! One request, from parsed bytes to committed response bytes: the wiring of
//! parser → router → exchange → Lua → response builder for a connection's
//! buffers. No I/O happens here; the worker submits what this queues.

use keystone_exchange::BodyKind;
use keystone_lua::{LuaWorker, Outcome, Pull};
use keystone_parser::{
    BodyFraming, ChunkedDecoder, Head, Limits, ParseError, ParseStatus, Parser, Persistence,
};
use keystone_response::{
    chunk_header, has_body, policy_status, write_error, write_head_spec, BodyLength, DateCache,
    Framing, HeadSpec, CONTINUE, DEFAULT_CONTENT_TYPE, LAST_CHUNK,
};
use keystone_ringbuf::{RingBuffer, Span};
use keystone_router::{RouteMiss, Router};

use keystone_ops::access_log::{self, AccessLog};
use keystone_ops::stats::WorkerStats;

use crate::files::{self, Root};
use crate::log::Level;
use crate::watchdog::Pulse;
use std::sync::Arc;
use std::time::Instant;

/// Free space the send buffer must have before another request is taken
/// on: the largest head policy can produce (its header arena) plus the
/// engine's own headers, so committing a response can never fail for room.
pub const SEND_HEADROOM_BYTES: u32 = keystone_exchange::RESPONSE_ARENA_BYTES as u32 + 2048;

/// A pinned response body: a Lua string too large for the send buffer,
/// sent straight from Lua's memory (zero copy). The Lua state keeps the
/// string referenced under the connection's slot (`LuaWorker::pin_body`;
/// LuaJIT's GC does not move strings) until the worker unpins it.
pub struct PinnedBody {
    ptr: *const u8,
    len: usize,
    /// Bytes already sent.
    pub sent: usize,
    /// The Lua state holding the string ([`LuaWorker::id`]).
    lua: usize,
}

impl PinnedBody {
    /// The bytes still to send.
    pub fn remaining(&self) -> (*const u8, usize) {
        // SAFETY: `ptr..ptr+len` is the string the Lua state keeps pinned
        // until the worker unpins it after the last byte is sent; `sent`
        // never exceeds `len` (the worker adds only completed send counts).
        (unsafe { self.ptr.add(self.sent) }, self.len - self.sent)
    }
}

/// A file being spliced to the socket through the connection's pipe.
pub struct FileSend {
    /// The open file.
    pub file: std::os::fd::OwnedFd,
    /// Next file offset to move.
    pub offset: u64,
    /// Bytes still to move from the file.
    pub remaining: u64,
    /// Bytes sitting in the pipe, not yet sent.
    pub in_pipe: u32,
}

/// A stream generator being pulled as the socket drains.
pub struct StreamSend {
    /// How the body is delimited on the wire.
    framing: StreamFraming,
    /// The part of the last chunk not yet framed into the send buffer.
    pending: Option<(*const u8, usize)>,
    /// The generator produced more than its declared length: `pending`
    /// holds the part that fits, and the stream aborts once it is queued.
    overrun: bool,
    /// The request, for log lines written after its bytes are gone.
    label: RequestLabel,
    /// The Lua state the generator lives in ([`LuaWorker::id`]): after a
    /// reload it is a retired one, still pulled until the stream ends.
    lua: usize,
}

/// How a stream's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamFraming {
    /// HTTP/1.1 without a declared length: `Transfer-Encoding: chunked`.
    Chunked,
    /// HTTP/1.0 without a declared length: raw bytes, then the connection
    /// closes.
    UntilClose,
    /// Policy declared `Content-Length: length`: raw bytes, exactly that
    /// many; `left` are still to come from the generator.
    Declared {
        /// The declared length.
        length: u64,
        /// Bytes not yet taken from the generator.
        left: u64,
    },
}

/// Bytes of `METHOD /path` a stream keeps for its log lines; a longer
/// request line is cut (log lines are for people, and this keeps the label
/// a fixed part of the connection's tail, never a heap allocation).
const REQUEST_LABEL_BYTES: usize = 128;

/// `METHOD /path` of a request, copied (cut at [`REQUEST_LABEL_BYTES`]).
struct RequestLabel {
    bytes: [u8; REQUEST_LABEL_BYTES],
    len: u8,
}

const _: () = assert!(REQUEST_LABEL_BYTES <= u8::MAX as usize);

impl RequestLabel {
    fn new(method: &[u8], path: &[u8]) -> RequestLabel {
        let mut label = RequestLabel {
            bytes: [0; REQUEST_LABEL_BYTES],
            len: 0,
        };
        for part in [method, b" ", path] {
            let start = label.len as usize;
            let take = part.len().min(REQUEST_LABEL_BYTES - start);
            label.bytes[start..start + take].copy_from_slice(&part[..take]);
            label.len += take as u8;
        }
        label
    }
}

impl std::fmt::Display for RequestLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = String::from_utf8_lossy(&self.bytes[..self.len as usize]);
        f.write_str(&text)
    }
}

/// What follows the buffered bytes of the response in progress.
#[derive(Default)]
pub enum Tail {
    /// Nothing: the response is entirely in the send buffer.
    #[default]
    None,
    /// A large Lua string, sent from Lua's memory.
    Pinned(PinnedBody),
    /// A file, spliced.
    File(FileSend),
    /// A generator, pulled.
    Stream(StreamSend),
}

impl Tail {
    /// Whether nothing follows.
    pub fn is_none(&self) -> bool {
        matches!(self, Tail::None)
    }
}

/// What filling the send buffer from a stream did.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamStep {
    /// More to come once the socket drains.
    More,
    /// The generator ended; the terminator is queued.
    Done,
    /// The stream is aborted (no terminating chunk; the caller closes the
    /// connection after what is queued): the generator failed, or broke
    /// the `Content-Length` policy declared (more or fewer bytes).
    Failed,
}

/// Room a stream leaves for framing when it fills the send buffer.
const STREAM_FRAME_BYTES: u32 = keystone_response::CHUNK_HEADER_MAX as u32 + 2 + 5;
/// Bytes a stream queues before waiting for the socket: enough for a few
/// TCP segments in flight, small enough to keep a slow reader's memory at
/// the send buffer, and a generator pulled only as the socket drains.
const STREAM_QUEUE_BYTES: u32 = 32 * 1024;
/// Consecutive empty chunks accepted before a generator counts as stuck.
const STREAM_EMPTY_PULLS_MAX: u32 = 1000;

/// Per-connection HTTP state that survives between reads.
pub struct Exchange {
    /// Bytes the current request needs buffered (head + body), once its head
    /// has been seen; 0 when unknown.
    pub awaiting: u32,
    /// `100 Continue` already queued for the current request.
    pub continue_sent: bool,
    /// A chunked body being decoded in place.
    pub chunked: Option<ChunkedBody>,
    /// Responses queued since the send buffer was last empty.
    pub queued: u32,
    /// The client's address, known when the access log is on.
    pub peer: Option<std::net::SocketAddr>,
    /// The connection's socket (for `ctx.remote_addr`); -1 when none.
    pub fd: i32,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            awaiting: 0,
            continue_sent: false,
            chunked: None,
            queued: 0,
            peer: None,
            fd: -1,
        }
    }
}

impl Exchange {
    /// Whether a request body is being received.
    pub fn in_body(&self) -> bool {
        self.chunked.is_some()
    }
}

/// In-place decoding state of one chunked request body: the decoded
/// payload sits right after the request head, `decoded` bytes of it, and
/// undecoded bytes follow. Offsets are relative to the request's start, so
/// compacting the buffer between reads does not invalidate them.
pub struct ChunkedBody {
    decoder: ChunkedDecoder,
    decoded: u32,
}

/// Where decoding a chunked body got to.
enum Chunked {
    /// Complete: the payload span.
    Done(Span),
    /// More bytes needed.
    Partial,
}

/// What handling the front of the buffer did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// One request answered; more may follow.
    Answered,
    /// The buffer holds no complete request: read more.
    NeedMore,
    /// An answer was queued after which the connection must close.
    Close,
}

/// The worker's HTTP machinery: one parser, one head scratch, the app's
/// router and Lua state, the cached Date.
pub struct Http {
    /// Worker index, for log lines.
    pub worker: u32,
    /// picohttpparser state.
    pub parser: Parser,
    /// Parsed head scratch, reused for every request.
    pub head: Box<Head>,
    /// Request limits.
    pub limits: Limits,
    /// The app's routes.
    pub router: Router,
    /// The worker's Lua state and exchange.
    pub lua: LuaWorker,
    /// States replaced by a reload, kept while responses still point into
    /// them (pinned bodies, streams they pull).
    pub retired: Vec<LuaWorker>,
    /// Cached `Date`.
    pub date: DateCache,
    /// Responses one connection may have queued but not yet sent.
    pub max_pipeline: u32,
    /// What the watchdog reads to spot a runaway handler.
    pub pulse: Arc<Pulse>,
    /// Static directories, longest prefix first.
    pub statics: Vec<Root>,
    /// Where `ctx.body = { file = ... }` paths resolve.
    pub files: Root,
    /// This worker's counters.
    pub stats: Arc<WorkerStats>,
    /// Counter slot per handler id.
    pub route_slots: Vec<u16>,
    /// The access log, when on.
    pub access: Option<AccessLog>,
}

impl Http {
    /// Handles the request at the front of `recv`, queueing its response in
    /// `send` (or `pinned` for a large body). Consumes the request's bytes.
    pub fn handle_one(
        &mut self,
        recv: &mut RingBuffer,
        send: &mut RingBuffer,
        state: &mut Exchange,
        tail: &mut Tail,
        key: u32,
    ) -> Step {
        let start = send.tail();
        let step = self.handle_inner(recv, send, state, tail, key);
        if step != Step::NeedMore {
            // The response head starts at `start`: count its status.
            if let Some(status) = status_at(send, start) {
                self.stats.response(status);
            }
        }
        step
    }

    fn handle_inner(
        &mut self,
        recv: &mut RingBuffer,
        send: &mut RingBuffer,
        state: &mut Exchange,
        tail: &mut Tail,
        key: u32,
    ) -> Step {
        debug_assert!(send.spare() >= SEND_HEADROOM_BYTES);
        debug_assert!(tail.is_none());
        let data = recv.unconsumed();
        let base_offset = recv.head();
        self.parser.reset();
        match self
            .parser
            .parse(data, base_offset, &self.limits, &mut self.head)
        {
            Ok(ParseStatus::Complete) => {}
            Ok(ParseStatus::Partial) => return Step::NeedMore,
            Err(err) => {
                self.queue_error(send, err.status(), None, CLOSE);
                return Step::Close;
            }
        }
        let head = &self.head;
        let (body, total) = match head.body {
            BodyFraming::None => (
                Span::new(base_offset + head.head_len, 0),
                u64::from(head.head_len),
            ),
            BodyFraming::Length(n) => {
                let total = u64::from(head.head_len) + n;
                if total > u64::from(recv.capacity()) {
                    self.queue_error(send, 413, None, CLOSE);
                    return Step::Close;
                }
                if (data.len() as u64) < total {
                    state.awaiting = total as u32;
                    self.send_continue(send, state);
                    return Step::NeedMore;
                }
                (Span::new(base_offset + head.head_len, n as u32), total)
            }
            BodyFraming::Chunked => match self.decode_chunked(recv, state) {
                Ok(Chunked::Done(body)) => (body, u64::from(body.end() - base_offset)),
                Ok(Chunked::Partial) => {
                    self.send_continue(send, state);
                    return Step::NeedMore;
                }
                Err(err) => {
                    self.queue_error(send, err.status(), None, CLOSE);
                    return Step::Close;
                }
            },
        };
        let head = &self.head;
        let queued = state.queued + 1;
        *state = Exchange {
            queued,
            peer: state.peer,
            fd: state.fd,
            ..Exchange::default()
        };
        let framing = Framing {
            keep_alive: head.persistence == Persistence::KeepAlive,
            head_request: recv.get(head.method) == b"HEAD",
            minor_version: head.minor_version,
        };
        let started = self.access.is_some().then(Instant::now);
        let head_start = send.tail();
        self.lua.exchange_mut().peer_fd = state.fd;
        let close = self.respond(recv, send, framing, body, tail, key);
        if let Some(started) = started {
            self.log_access(recv, send, head_start, state.peer, started);
        }
        recv.consume(total as u32);
        if framing.keep_alive && !close {
            Step::Answered
        } else {
            Step::Close
        }
    }

    fn send_continue(&self, send: &mut RingBuffer, state: &mut Exchange) {
        if self.head.expect_continue && !state.continue_sent {
            // The caller's headroom check guarantees room for 25 bytes.
            send.append(CONTINUE)
                .expect("send headroom holds 100 Continue");
            state.continue_sent = true;
        }
    }

    /// Decodes the chunked body after the current head in place, resuming
    /// where the previous read left off; framing bytes are cut out of the
    /// buffer so only payload (and any pipelined next request) remains.
    fn decode_chunked(
        &mut self,
        recv: &mut RingBuffer,
        state: &mut Exchange,
    ) -> Result<Chunked, ParseError> {
        let body_start = recv.head() + self.head.head_len;
        let body = state.chunked.get_or_insert_with(|| ChunkedBody {
            decoder: ChunkedDecoder::new(),
            decoded: 0,
        });
        let decoded_end = body_start + body.decoded;
        debug_assert!(decoded_end <= recv.tail());
        let undecoded = Span::new(decoded_end, recv.tail() - decoded_end);
        let progress = body
            .decoder
            .decode(recv.get_mut(undecoded), self.limits.max_body_bytes)?;
        let payload_end = decoded_end + progress.decoded_len;
        let stale_start = payload_end + progress.leftover;
        recv.cut(stale_start, recv.tail() - stale_start);
        body.decoded += progress.decoded_len;
        if !progress.consumed_all {
            return Ok(Chunked::Partial);
        }
        let payload = Span::new(body_start, body.decoded);
        state.chunked = None;
        Ok(Chunked::Done(payload))
    }

    /// Answers the parsed request; returns true when the connection must
    /// close after this response (a body delimited by close).
    fn respond(
        &mut self,
        recv: &RingBuffer,
        send: &mut RingBuffer,
        framing: Framing,
        body: Span,
        tail: &mut Tail,
        key: u32,
    ) -> bool {
        let head = &*self.head;
        let method = recv.get(head.method);
        let path = recv.get(head.path);
        if let Some(index) = self
            .statics
            .iter()
            .position(|r| path.starts_with(r.prefix.as_bytes()))
        {
            if method != b"GET" && method != b"HEAD" {
                self.queue_error(send, 405, Some(b"GET, HEAD"), framing);
                return false;
            }
            self.stats.static_files.add(1);
            let relative = &path[self.statics[index].prefix.len()..];
            match files::open(&self.statics[index], relative, true) {
                Ok(file) => self.serve_file(recv, send, tail, framing, file, None),
                Err(err) => self.queue_error(send, err.status(), None, framing),
            }
            return false;
        }
        let matched = match self.router.lookup(method, path, head.path.offset) {
            Ok(matched) => matched,
            Err(RouteMiss::NotFound) => {
                self.queue_error(send, 404, None, framing);
                return false;
            }
            Err(RouteMiss::MethodNotAllowed { allow }) => {
                let allow = allow.as_bytes();
                let n = write_error(405, Some(allow), framing, &self.date, send.spare_mut())
                    .expect("send headroom holds a canned response");
                send.commit(n as u32);
                return false;
            }
        };
        self.lua
            .exchange_mut()
            .bind(recv.filled(), head, matched.params(), body);
        let handler = matched.handler;
        let slot = self.route_slots.get(handler as usize).copied().unwrap_or(0);
        self.stats.routes[slot as usize].add(1);
        self.pulse.enter_handler();
        let outcome = self.lua.run(handler);
        self.pulse.leave_handler();
        let mut close = false;
        match outcome {
            Outcome::Done => close = self.commit(recv, send, framing, tail, key),
            Outcome::Failed { message } => {
                self.stats.lua_errors.add(1);
                crate::log!(
                    Level::Error,
                    Some(self.worker),
                    "{} {}: handler failed: {message}",
                    String::from_utf8_lossy(method),
                    String::from_utf8_lossy(path)
                );
                self.queue_error(send, 500, None, framing);
            }
            Outcome::Stopped { message } => {
                self.stats.lua_stopped.add(1);
                crate::log!(
                    Level::Error,
                    Some(self.worker),
                    "{} {}: handler stopped: {message}",
                    String::from_utf8_lossy(method),
                    String::from_utf8_lossy(path)
                );
                self.queue_error(send, 503, None, framing);
            }
        }
        self.lua.exchange_mut().expire();
        close
    }

    /// Commits what policy left in the exchange; returns true when the
    /// connection must close after it.
    fn commit(
        &mut self,
        recv: &RingBuffer,
        send: &mut RingBuffer,
        framing: Framing,
        tail: &mut Tail,
        key: u32,
    ) -> bool {
        let status = match policy_status(self.lua.exchange()) {
            Ok(status) => status,
            Err(err) => {
                self.log_request_error(recv, format_args!("invalid response: {err}"));
                self.queue_error(send, 500, None, framing);
                return false;
            }
        };
        match self.lua.exchange().body_kind() {
            BodyKind::Inline => self.commit_inline(recv, send, framing, tail, key, status),
            BodyKind::File => {
                let path = self.lua.exchange().response_body().unwrap_or(&[]);
                match files::open(&self.files, path, false) {
                    Ok(file) => self.serve_file(recv, send, tail, framing, file, Some(status)),
                    Err(err) => {
                        let shown = String::from_utf8_lossy(path).into_owned();
                        self.log_request_error(
                            recv,
                            format_args!("ctx.body file {shown:?}: {err:?}"),
                        );
                        self.queue_error(send, err.status(), None, framing);
                    }
                }
                false
            }
            BodyKind::Stream => self.commit_stream(recv, send, framing, tail, key, status),
        }
    }

    /// Writes the head for `spec` with policy's headers and commits it;
    /// returns its length, or logs and queues a 500 instead.
    fn commit_head(
        &self,
        recv: &RingBuffer,
        send: &mut RingBuffer,
        spec: &HeadSpec<'_>,
        framing: Framing,
    ) -> Option<u32> {
        let headers = self.lua.exchange().response_headers();
        match write_head_spec(spec, headers, framing, &self.date, send.spare_mut()) {
            Ok(n) => {
                send.commit(n as u32);
                Some(n as u32)
            }
            Err(err) => {
                self.log_request_error(recv, format_args!("invalid response: {err}"));
                self.queue_error(send, 500, None, framing);
                None
            }
        }
    }

    fn commit_inline(
        &mut self,
        recv: &RingBuffer,
        send: &mut RingBuffer,
        framing: Framing,
        tail: &mut Tail,
        key: u32,
        status: u16,
    ) -> bool {
        let bytes = self.lua.exchange().response_body().unwrap_or(&[]);
        let head_start = send.tail();
        let mut length = bytes.len() as u64;
        if let Some(declared) = self.lua.exchange().declared_length() {
            if declared != length && has_body(status, framing.head_request) {
                self.refuse_declared_length(recv, send, framing, declared, "body's", length);
                return false;
            }
            // Without body bytes (HEAD, 204, 304) the declared length is
            // the answer: a HEAD handler may advertise the GET's size.
            length = declared;
        }
        let spec = HeadSpec {
            status,
            length: BodyLength::Known(length),
            default_content_type: DEFAULT_CONTENT_TYPE,
            extra: &[],
        };
        let Some(n) = self.commit_head(recv, send, &spec, framing) else {
            return false;
        };
        if !has_body(status, framing.head_request) || bytes.is_empty() {
            return false;
        }
        if bytes.len() <= send.spare() as usize {
            send.append(bytes).expect("checked spare");
            return false;
        }
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        match self.lua.pin_body(key) {
            Ok(()) => {
                *tail = Tail::Pinned(PinnedBody {
                    ptr,
                    len,
                    sent: 0,
                    lua: self.lua.id(),
                })
            }
            Err(err) => {
                // Take the head back so nothing half-framed is sent.
                send.cut(head_start, n);
                self.log_request_error(recv, format_args!("cannot pin a response body: {err}"));
                self.queue_error(send, 500, None, framing);
            }
        }
        false
    }

    /// `ctx.body = function() ... end`: with a `Content-Length` policy
    /// declared, exactly that many raw bytes (keep-alive possible);
    /// otherwise chunked for HTTP/1.1 and delimited by close for HTTP/1.0.
    /// The generator is pulled as the socket drains, and never when the
    /// response carries no body bytes (HEAD, 204, 304, a declared 0).
    fn commit_stream(
        &mut self,
        recv: &RingBuffer,
        send: &mut RingBuffer,
        framing: Framing,
        tail: &mut Tail,
        key: u32,
        status: u16,
    ) -> bool {
        let declared = self.lua.exchange().declared_length();
        let stream_framing = match declared {
            Some(length) => StreamFraming::Declared {
                length,
                left: length,
            },
            None if framing.minor_version >= 1 => StreamFraming::Chunked,
            None => StreamFraming::UntilClose,
        };
        let framing = Framing {
            keep_alive: framing.keep_alive && stream_framing != StreamFraming::UntilClose,
            ..framing
        };
        let spec = HeadSpec {
            status,
            length: match stream_framing {
                StreamFraming::Declared { length, .. } => BodyLength::Known(length),
                StreamFraming::Chunked => BodyLength::Chunked,
                StreamFraming::UntilClose => BodyLength::UntilClose,
            },
            default_content_type: DEFAULT_CONTENT_TYPE,
            extra: &[],
        };
        if self.commit_head(recv, send, &spec, framing).is_none() {
            return false;
        }
        if !has_body(status, framing.head_request) || declared == Some(0) {
            return !framing.keep_alive;
        }
        match self.lua.pin_body(key) {
            Ok(()) => {
                *tail = Tail::Stream(StreamSend {
                    framing: stream_framing,
                    pending: None,
                    overrun: false,
                    label: RequestLabel::new(recv.get(self.head.method), recv.get(self.head.path)),
                    lua: self.lua.id(),
                })
            }
            Err(err) => {
                self.log_request_error(recv, format_args!("cannot pin a stream: {err}"));
                return true;
            }
        }
        !framing.keep_alive
    }

    /// Frames chunks from the stream pinned under `key` into `send` until
    /// enough is queued for the socket or the generator ends. With a
    /// declared length, bytes past it are never queued, and a generator
    /// that ends short of it or goes past it aborts the stream.
    pub fn fill_stream(
        &mut self,
        send: &mut RingBuffer,
        stream: &mut StreamSend,
        key: u32,
    ) -> StreamStep {
        let mut empty_pulls = 0;
        loop {
            if send.spare() <= STREAM_FRAME_BYTES {
                return StreamStep::More;
            }
            if let Some((ptr, len)) = stream.pending.take() {
                let room = (send.spare() - STREAM_FRAME_BYTES) as usize;
                let take = len.min(room);
                // SAFETY: `ptr..ptr+len` is the last pulled chunk, which the
                // prelude keeps referenced (`pulled[key]`) until the next
                // pull or unpin; no pull happens while `pending` is set.
                let bytes = unsafe { std::slice::from_raw_parts(ptr, take) };
                frame_chunk(send, bytes, stream.framing == StreamFraming::Chunked);
                if take < len {
                    // SAFETY: `take < len`, so the advanced pointer stays in the chunk.
                    stream.pending = Some((unsafe { ptr.add(take) }, len - take));
                }
                continue;
            }
            if stream.overrun {
                // The declared bytes are all queued (logged when found).
                self.tail_lua(stream.lua).unpin_body(key);
                return StreamStep::Failed;
            }
            if send.len() >= STREAM_QUEUE_BYTES {
                return StreamStep::More;
            }
            self.pulse.enter_handler();
            let pulled = self.tail_lua(stream.lua).pull(key);
            self.pulse.leave_handler();
            match pulled {
                Pull::Chunk => {
                    let chunk = self.tail_lua(stream.lua).exchange().response_body();
                    let (ptr, len) = chunk.map_or((std::ptr::null(), 0), |c| (c.as_ptr(), c.len()));
                    if len == 0 {
                        empty_pulls += 1;
                        if empty_pulls == STREAM_EMPTY_PULLS_MAX {
                            crate::log!(
                                Level::Error,
                                Some(self.worker),
                                "{}: stream aborted: the generator returned {empty_pulls} empty chunks in a row",
                                stream.label
                            );
                            self.tail_lua(stream.lua).unpin_body(key);
                            return StreamStep::Failed;
                        }
                        continue;
                    }
                    empty_pulls = 0;
                    let len = self.take_declared(stream, len);
                    if len > 0 {
                        stream.pending = Some((ptr, len));
                    }
                }
                Pull::End => return self.end_stream(send, stream, key),
                Pull::Failed { message } => {
                    self.stats.lua_errors.add(1);
                    crate::log!(
                        Level::Error,
                        Some(self.worker),
                        "{}: stream aborted: generator failed: {message}",
                        stream.label
                    );
                    self.tail_lua(stream.lua).unpin_body(key);
                    return StreamStep::Failed;
                }
            }
        }
    }

    /// A `Content-Length` policy declared that the engine knows is wrong
    /// (`whose` bytes are `actual`): logged, answered 500, never sent.
    fn refuse_declared_length(
        &mut self,
        recv: &RingBuffer,
        send: &mut RingBuffer,
        framing: Framing,
        declared: u64,
        whose: &str,
        actual: u64,
    ) {
        self.log_request_error(
            recv,
            format_args!(
                "Content-Length {declared} set by policy does not match the {whose} {actual} bytes"
            ),
        );
        self.queue_error(send, 500, None, framing);
    }

    /// The Lua state a tail (stream generator, pinned string) lives in: the
    /// current one, or the retired one it was started in before a reload
    /// (kept alive while any tail points into it).
    fn tail_lua(&mut self, id: usize) -> &mut LuaWorker {
        if self.lua.id() == id {
            return &mut self.lua;
        }
        match self.retired.iter().position(|lua| lua.id() == id) {
            Some(index) => &mut self.retired[index],
            // Unreachable while retired states outlive their streams; the
            // current state then reports "no stream pinned" and the stream
            // aborts rather than ending as if complete.
            None => &mut self.lua,
        }
    }

    /// Releases what a response's tail pinned, in the state that pinned it.
    pub fn unpin_tail(&mut self, tail: &Tail, key: u32) {
        match tail {
            Tail::Stream(stream) => self.tail_lua(stream.lua).unpin_body(key),
            Tail::Pinned(body) => self.tail_lua(body.lua).unpin_body(key),
            _ => {}
        }
    }

    /// How many of a pulled chunk's `len` bytes may go on the wire: all of
    /// them unless a declared length ends first, which marks the stream
    /// overrun (and logs it once).
    fn take_declared(&self, stream: &mut StreamSend, len: usize) -> usize {
        let StreamFraming::Declared { length, left } = &mut stream.framing else {
            return len;
        };
        debug_assert!(!stream.overrun, "no pull after an overrun");
        if len as u64 <= *left {
            *left -= len as u64;
            return len;
        }
        crate::log!(
            Level::Error,
            Some(self.worker),
            "{}: stream aborted: the generator produced more than the {length} bytes of the Content-Length set by policy; sent {length} bytes, closing the connection",
            stream.label
        );
        stream.overrun = true;
        let take = *left as usize; // less than `len`, so it fits
        debug_assert!(take < len);
        *left = 0;
        take
    }

    /// The generator returned nil: terminate the body, or abort when it
    /// ended short of a declared length (the client sees a short body and
    /// the connection closing, never a response boundary in the wrong place).
    fn end_stream(&mut self, send: &mut RingBuffer, stream: &StreamSend, key: u32) -> StreamStep {
        debug_assert!(
            stream.pending.is_none(),
            "nil is pulled only once all is queued"
        );
        debug_assert!(!stream.overrun, "no pull after an overrun");
        self.tail_lua(stream.lua).unpin_body(key);
        match stream.framing {
            StreamFraming::Chunked => {
                send.append(LAST_CHUNK)
                    .expect("frame room kept for the last chunk");
                StreamStep::Done
            }
            StreamFraming::UntilClose | StreamFraming::Declared { left: 0, .. } => StreamStep::Done,
            StreamFraming::Declared { length, left } => {
                crate::log!(
                    Level::Error,
                    Some(self.worker),
                    "{}: stream aborted: the generator ended after {} of the {length} bytes of the Content-Length set by policy; closing the connection",
                    stream.label,
                    length - left
                );
                StreamStep::Failed
            }
        }
    }

    /// Answers with a file: validators, conditionals and a single range
    /// for 200 responses; `status` is policy's for a Lua-chosen file
    /// (other statuses send the whole file, no conditionals). A
    /// `Content-Length` policy set must equal the file's size (then the
    /// engine writes the length it sends: the range's for 206); otherwise
    /// the answer is a 500, whatever the method or range.
    fn serve_file(
        &mut self,
        recv: &RingBuffer,
        send: &mut RingBuffer,
        tail: &mut Tail,
        framing: Framing,
        file: files::OpenFile,
        status: Option<u16>,
    ) {
        let policy = status.is_some();
        // Static files have no policy (the exchange is not bound for them).
        let declared = policy.then(|| self.lua.exchange().declared_length());
        if let Some(Some(declared)) = declared {
            if declared != file.size {
                self.refuse_declared_length(recv, send, framing, declared, "file's", file.size);
                return;
            }
        }
        let validators = files::Validators::of(&file);
        let mut status = status.unwrap_or(200);
        let (mut start, mut len) = (0, file.size);
        let mut content_range = [0u8; 64];
        let mut content_range_len = 0;
        if status == 200 {
            let header = |name: &[u8]| self.request_header(recv, name);
            if files::not_modified(
                &validators,
                file.mtime,
                header(b"if-none-match"),
                header(b"if-modified-since"),
            ) {
                status = 304;
            } else if header(b"if-range").is_none_or(|v| v == validators.etag()) {
                match files::range(header(b"range"), file.size) {
                    files::RangeAnswer::Full => {}
                    files::RangeAnswer::Partial { start: s, len: l } => {
                        (status, start, len) = (206, s, l);
                        content_range_len = write_content_range(
                            &mut content_range,
                            Some((s, s + l - 1)),
                            file.size,
                        );
                    }
                    files::RangeAnswer::Unsatisfiable => {
                        status = 416;
                        len = 0;
                        content_range_len =
                            write_content_range(&mut content_range, None, file.size);
                    }
                }
            }
        }
        let mut extra: [(&[u8], &[u8]); 4] = [
            (b"ETag", validators.etag()),
            (b"Last-Modified", validators.last_modified()),
            (b"Accept-Ranges", b"bytes"),
            (b"Content-Range", &content_range[..content_range_len]),
        ];
        let extra_count = if content_range_len > 0 { 4 } else { 3 };
        if status == 304 {
            extra[2] = extra[1];
        }
        let spec = HeadSpec {
            status,
            length: BodyLength::Known(len),
            default_content_type: file.content_type.as_bytes(),
            extra: &extra[..if status == 304 { 2 } else { extra_count }],
        };
        let policy_headers = self
            .lua
            .exchange()
            .response_headers()
            .filter(move |_| policy);
        let n = write_head_spec(&spec, policy_headers, framing, &self.date, send.spare_mut())
            .expect("send headroom holds a file head");
        send.commit(n as u32);
        if has_body(status, framing.head_request) && len > 0 && status != 416 {
            *tail = Tail::File(FileSend {
                file: file.file,
                offset: start,
                remaining: len,
                in_pipe: 0,
            });
        }
    }

    /// Writes the access-log line of the request just answered (its
    /// response head starts at `head_start` in `send`).
    fn log_access(
        &mut self,
        recv: &RingBuffer,
        send: &RingBuffer,
        head_start: u32,
        peer: Option<std::net::SocketAddr>,
        started: Instant,
    ) {
        let response = &send.filled()[head_start as usize..];
        let status = status_at(send, head_start).unwrap_or(0);
        let head_end = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(response.len());
        let body_bytes = response[..head_end]
            .split(|&b| b == b'\n')
            .find_map(|line| line.strip_prefix(b"Content-Length: "))
            .and_then(|v| std::str::from_utf8(v.trim_ascii()).ok()?.parse().ok())
            .unwrap_or(0);
        let entry = access_log::Entry {
            peer,
            method: recv.get(self.head.method),
            target: recv.get(self.head.target),
            minor_version: self.head.minor_version,
            status,
            body_bytes,
            referer: self.request_header(recv, b"referer"),
            user_agent: self.request_header(recv, b"user-agent"),
            request_time: started.elapsed().as_secs_f64(),
        };
        if let Some(log) = &mut self.access {
            log.record(&entry);
        }
    }

    fn request_header<'r>(&self, recv: &'r RingBuffer, name: &[u8]) -> Option<&'r [u8]> {
        self.head
            .headers()
            .iter()
            .find(|h| recv.get(h.name).eq_ignore_ascii_case(name))
            .map(|h| recv.get(h.value))
    }

    fn log_request_error(&self, recv: &RingBuffer, message: std::fmt::Arguments<'_>) {
        crate::log!(
            Level::Error,
            Some(self.worker),
            "{} {}: {message}",
            String::from_utf8_lossy(recv.get(self.head.method)),
            String::from_utf8_lossy(recv.get(self.head.path))
        );
    }

    /// Queues a canned response for an engine-decided status.
    pub fn queue_error(
        &self,
        send: &mut RingBuffer,
        status: u16,
        allow: Option<&[u8]>,
        framing: Framing,
    ) {
        let n = write_error(status, allow, framing, &self.date, send.spare_mut())
            .expect("send headroom holds a canned response");
        send.commit(n as u32);
    }
}

/// The status code of the response head queued at `start` in `send`
/// (`HTTP/1.1 NNN ...`), if one was queued there.
fn status_at(send: &RingBuffer, start: u32) -> Option<u16> {
    let digits = send.filled()[start as usize..].get(9..12)?;
    Some(
        digits
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d.wrapping_sub(b'0'))),
    )
}

fn frame_chunk(send: &mut RingBuffer, bytes: &[u8], chunked: bool) {
    if chunked {
        let mut header = [0u8; keystone_response::CHUNK_HEADER_MAX];
        let n = chunk_header(bytes.len(), &mut header);
        send.append(&header[..n]).expect("frame room checked");
        send.append(bytes).expect("frame room checked");
        send.append(b"\r\n").expect("frame room checked");
    } else {
        send.append(bytes).expect("room checked");
    }
}

fn write_content_range(out: &mut [u8; 64], range: Option<(u64, u64)>, size: u64) -> usize {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut out[..]);
    let _ = match range {
        Some((first, last)) => write!(cursor, "bytes {first}-{last}/{size}"),
        None => write!(cursor, "bytes */{size}"),
    };
    cursor.position() as usize
}

/// Framing for errors after which the connection closes.
pub const CLOSE: Framing = Framing {
    keep_alive: false,
    head_request: false,
    minor_version: 1,
};
