//! One request, from parsed bytes to committed response bytes: the wiring of
//! parser → router → exchange → Lua → response builder for a connection's
//! buffers. No I/O happens here; the worker submits what this queues.

use keystone_lua::{LuaWorker, Outcome};
use keystone_parser::{
    BodyFraming, ChunkedDecoder, Head, Limits, ParseError, ParseStatus, Parser, Persistence,
};
use keystone_response::{has_body, write_error, write_head, DateCache, Framing, CONTINUE};
use keystone_ringbuf::{RingBuffer, Span};
use keystone_router::{RouteMiss, Router};

use crate::log::Level;
use crate::watchdog::Pulse;
use std::sync::Arc;

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

/// Per-connection HTTP state that survives between reads.
#[derive(Default)]
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
}

impl Exchange {
    /// Whether a request body is being received.
    pub fn in_body(&self) -> bool {
        self.chunked.is_some()
    }
}

/// In-place decoding state of one chunked request body: decoded payload
/// sits at `[body_start, decoded_end)` of the receive buffer, undecoded
/// bytes follow it.
pub struct ChunkedBody {
    decoder: ChunkedDecoder,
    body_start: u32,
    decoded_end: u32,
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
    /// Cached `Date`.
    pub date: DateCache,
    /// Responses one connection may have queued but not yet sent.
    pub max_pipeline: u32,
    /// What the watchdog reads to spot a runaway handler.
    pub pulse: Arc<Pulse>,
}

impl Http {
    /// Handles the request at the front of `recv`, queueing its response in
    /// `send` (or `pinned` for a large body). Consumes the request's bytes.
    pub fn handle_one(
        &mut self,
        recv: &mut RingBuffer,
        send: &mut RingBuffer,
        state: &mut Exchange,
        pinned: &mut Option<PinnedBody>,
        key: u32,
    ) -> Step {
        debug_assert!(send.spare() >= SEND_HEADROOM_BYTES);
        debug_assert!(pinned.is_none());
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
            ..Exchange::default()
        };
        let framing = Framing {
            keep_alive: head.persistence == Persistence::KeepAlive,
            head_request: recv.get(head.method) == b"HEAD",
            minor_version: head.minor_version,
        };
        self.respond(recv, send, framing, body, pinned, key);
        recv.consume(total as u32);
        if framing.keep_alive {
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
            body_start,
            decoded_end: body_start,
        });
        debug_assert_eq!(
            body.body_start, body_start,
            "head re-parsed to a different length"
        );
        let undecoded = Span::new(body.decoded_end, recv.tail() - body.decoded_end);
        let progress = body
            .decoder
            .decode(recv.get_mut(undecoded), self.limits.max_body_bytes)?;
        let payload_end = body.decoded_end + progress.decoded_len;
        let stale_start = payload_end + progress.leftover;
        recv.cut(stale_start, recv.tail() - stale_start);
        body.decoded_end = payload_end;
        if !progress.consumed_all {
            return Ok(Chunked::Partial);
        }
        let payload = Span::new(body.body_start, payload_end - body.body_start);
        state.chunked = None;
        Ok(Chunked::Done(payload))
    }

    fn respond(
        &mut self,
        recv: &RingBuffer,
        send: &mut RingBuffer,
        framing: Framing,
        body: Span,
        pinned: &mut Option<PinnedBody>,
        key: u32,
    ) {
        let head = &*self.head;
        let method = recv.get(head.method);
        let path = recv.get(head.path);
        let matched = match self.router.lookup(method, path, head.path.offset) {
            Ok(matched) => matched,
            Err(RouteMiss::NotFound) => return self.queue_error(send, 404, None, framing),
            Err(RouteMiss::MethodNotAllowed { allow }) => {
                let allow = allow.as_bytes();
                let n = write_error(405, Some(allow), framing, &self.date, send.spare_mut())
                    .expect("send headroom holds a canned response");
                send.commit(n as u32);
                return;
            }
        };
        self.lua
            .exchange_mut()
            .bind(recv.filled(), head, matched.params(), body);
        let handler = matched.handler;
        self.pulse.enter_handler();
        let outcome = self.lua.run(handler);
        self.pulse.leave_handler();
        match outcome {
            Outcome::Done => self.commit(send, framing, pinned, key, method, path),
            Outcome::Failed { message } => {
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
    }

    fn commit(
        &mut self,
        send: &mut RingBuffer,
        framing: Framing,
        pinned: &mut Option<PinnedBody>,
        key: u32,
        method: &[u8],
        path: &[u8],
    ) {
        let exchange = self.lua.exchange();
        let bytes = exchange.response_body().unwrap_or(&[]);
        let head_start = send.tail();
        let written = write_head(
            exchange,
            bytes.len() as u64,
            framing,
            &self.date,
            send.spare_mut(),
        );
        let n = match written {
            Ok(n) => n,
            Err(err) => {
                crate::log!(
                    Level::Error,
                    Some(self.worker),
                    "{} {}: invalid response: {err}",
                    String::from_utf8_lossy(method),
                    String::from_utf8_lossy(path)
                );
                return self.queue_error(send, 500, None, framing);
            }
        };
        send.commit(n as u32);
        if !has_body(exchange.status as u16, framing.head_request) || bytes.is_empty() {
            return;
        }
        if bytes.len() <= send.spare() as usize {
            send.append(bytes).expect("checked spare");
            return;
        }
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        match self.lua.pin_body(key) {
            Ok(()) => *pinned = Some(PinnedBody { ptr, len, sent: 0 }),
            Err(err) => {
                // Take the head back so nothing half-framed is sent.
                send.cut(head_start, n as u32);
                crate::log!(
                    Level::Error,
                    Some(self.worker),
                    "cannot pin a response body: {err}"
                );
                self.queue_error(send, 500, None, framing);
            }
        }
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

/// Framing for errors after which the connection closes.
pub const CLOSE: Framing = Framing {
    keep_alive: false,
    head_request: false,
    minor_version: 1,
};
