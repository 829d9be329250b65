//! One request on an upstream connection, as a sans-I/O state machine: the
//! HTTP/1.1 *client* side of a proxied request. Completions come in as
//! [`UpstreamEvent`]s, what to do next comes out of [`UpstreamConn::poll`]
//! as [`UpstreamIntent`]s; the worker pump executes them with the same
//! reactor operations it uses for client connections. No I/O, no clock:
//! which timeout applies is [`UpstreamConn::timeout`], and the pump says
//! when it passed.
//!
//! The machine owns the connection's two buffers: `send` holds the
//! forwarded head and the request body ([`write_forward_head`] writes into
//! it), `recv` the response. The response head is parsed in place
//! ([`ResponseParser`]); body bytes are handed to the client side as a
//! view of `recv` ([`UpstreamConn::body`]), decoded in place when chunked,
//! and the next receive waits until the client side consumed them
//! ([`UpstreamConn::consume_body`]): a slow client holds at most one
//! buffer of an upstream's response, and a slow upstream holds nothing.
//!
//! [`write_forward_head`]: crate::write_forward_head

use std::time::Duration;

use keystone_parser::{
    ChunkedDecoder, ParseError, ParseStatus, ResponseBody, ResponseHead, ResponseParser,
};
use keystone_ringbuf::{RingBuffer, SendBuf, Span, SpareLoan};

/// Largest upstream response head: nginx's `proxy_buffer_size` is one page
/// (4-8 KiB); 16 KiB takes the big-cookie answers of real backends.
pub const RESPONSE_HEAD_MAX: u32 = 16 * 1024;
// `Failure::reason` names the limit in words.
const _: () = assert!(RESPONSE_HEAD_MAX == 16 * 1024);

/// Largest response body `ctx.upstream_buffer` may ask to see whole: a
/// JSON answer a policy transforms, not a download (nginx's
/// `proxy_buffers` default to 8 × 4-8 KiB per request; OpenResty's body
/// filter sees pieces). The upstream connection's receive buffer is
/// address space sized for it, touched only when a body is buffered.
pub const BUFFERED_BODY_MAX: u32 = 1024 * 1024;

/// What the machine asks the pump to do.
#[derive(Debug)]
pub enum UpstreamIntent {
    /// Connect the socket to the peer (→ [`UpstreamEvent::Connected`]).
    Connect,
    /// Send (→ [`UpstreamEvent::Sent`]).
    Send(SendBuf),
    /// Receive into the loan (→ [`UpstreamEvent::Received`]).
    Recv(SpareLoan),
}

/// What happened on the upstream connection.
#[derive(Debug)]
pub enum UpstreamEvent {
    /// The connect completed: 0 or `-errno`.
    Connected { result: i32 },
    /// A send completed: bytes or `-errno`.
    Sent { buf: SendBuf, result: i32 },
    /// A receive completed: bytes, 0 (the upstream closed) or `-errno`.
    Received { buf: SpareLoan, result: i32 },
    /// [`UpstreamConn::timeout`] passed with no progress.
    TimedOut,
    /// The connection's TLS handshake failed (refused, an unverified
    /// certificate, the server gone): for a TLS pool the connect completes
    /// only once its handshake did, so the connect timeout bounds both.
    TlsFailed,
}

/// Which of the pool's timeouts applies now (nginx's `proxy_*_timeout`:
/// each bounds one wait, not the whole exchange).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Connect,
    Send,
    Read,
}

/// Why a request to an upstream failed. [`Failure::status`] is the answer
/// the client gets when nothing of the response has reached it yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connect was refused (`ECONNREFUSED`).
    Refused,
    /// The peer is unreachable, or the connect failed otherwise (`-errno`).
    ConnectFailed(i32),
    ConnectTimeout,
    SendTimeout,
    /// No response byte within the read timeout.
    ReadTimeout,
    /// The upstream closed or reset before the response head was complete.
    /// `any_byte`: some of it had arrived.
    ClosedBeforeHead {
        any_byte: bool,
    },
    /// Sending the request failed (`-errno`) before any response byte.
    SendFailed(i32),
    /// The response head was malformed, too large or framed ambiguously.
    BadHead(ParseError),
    /// The body was to be buffered whole (`ctx.upstream_buffer`) and is
    /// larger than that.
    TooLargeToBuffer {
        limit: u32,
    },
    /// The body ended early: the upstream closed, reset or timed out
    /// mid-body, or its chunked framing was malformed. The client's
    /// response is cut off: its connection closes without a false end.
    BrokenBody,
    /// The TLS handshake failed (the pool has `tls = true`): nothing was
    /// sent, so another peer may be tried.
    Tls,
}

impl Failure {
    /// The client's status for a failure before any response byte was
    /// forwarded: 504 for the timeouts, 502 for the rest (nginx's).
    pub fn status(self) -> u16 {
        match self {
            Failure::ConnectTimeout | Failure::SendTimeout | Failure::ReadTimeout => 504,
            _ => 502,
        }
    }

    /// Whether another peer (or a fresh connection) may be tried: only
    /// while the upstream can have done nothing with the request — the
    /// connect failed, or (on a reused connection, for an idempotent
    /// method, decided by the caller) it closed before any response byte.
    pub fn before_any_response(self) -> bool {
        matches!(
            self,
            Failure::Refused
                | Failure::ConnectFailed(_)
                | Failure::ConnectTimeout
                | Failure::Tls
                | Failure::ClosedBeforeHead { any_byte: false }
                | Failure::SendFailed(_)
        )
    }

    /// Words for the log line (`upstream 127.0.0.1:9001: ...`).
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Refused => "connection refused",
            Failure::ConnectFailed(_) => "connect failed",
            Failure::ConnectTimeout => "connect timed out",
            Failure::SendTimeout => "send timed out",
            Failure::ReadTimeout => "read timed out",
            Failure::ClosedBeforeHead { .. } => "closed before the response head",
            Failure::SendFailed(_) => "sending the request failed",
            Failure::BadHead(error) => match error {
                // Each says what nginx's "upstream sent ..." would; all
                // start alike, so one search finds them.
                ParseError::HeadTooLarge { .. } => "malformed response head: larger than 16 KiB",
                ParseError::TooManyHeaders { .. } => {
                    "malformed response head: too many header lines"
                }
                ParseError::ConflictingFraming => {
                    "malformed response head: both Content-Length and Transfer-Encoding"
                }
                ParseError::BadContentLength => "malformed response head: invalid Content-Length",
                ParseError::ObsFold => "malformed response head: a folded header line",
                ParseError::UnsupportedTransferEncoding => {
                    "malformed response head: a transfer coding other than chunked"
                }
                ParseError::VersionNotSupported => "malformed response head: not HTTP/1.x",
                _ => "malformed response head",
            },
            Failure::TooLargeToBuffer { .. } => "response body larger than ctx.upstream_buffer",
            Failure::BrokenBody => "response body cut short",
            Failure::Tls => "TLS handshake failed",
        }
    }
}

/// Where the exchange is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing to do (a pooled connection between requests, or a new one).
    Idle,
    /// A fresh connection: the connect is to be asked for, or in flight.
    Connecting {
        asked: bool,
    },
    /// Connected: sending the request and waiting for the response head.
    AwaitingHead,
    /// The head arrived; the body is being read.
    Body,
    /// The response is complete.
    Done {
        reusable: bool,
    },
    Failed(Failure),
}

/// How the rest of the body is delimited.
#[derive(Debug)]
enum BodyLeft {
    None,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// One upstream connection and the request on it.
#[derive(Debug)]
pub struct UpstreamConn {
    send: RingBuffer,
    recv: RingBuffer,
    phase: Phase,
    body_left: BodyLeft,
    head: ResponseHead,
    head_request: bool,
    /// Response bytes arrived for this request.
    any_byte: bool,
    /// Decoded body bytes at the front of `recv`, waiting for the client.
    ready: u32,
    sending: bool,
    receiving: bool,
    /// The upstream sent more than the framing said: never reuse it.
    poisoned: bool,
    /// Idle in a pool: a receive stays armed as a probe, so an upstream
    /// that closes an idle connection is noticed before it is reused.
    pooled: bool,
    /// Request bytes went out.
    sent_any: bool,
    /// Bytes of the request sent so far. The request stays whole in
    /// `send` until the final response head arrives, so a retry (another
    /// peer, or a fresh connection after a reused one failed) sends it again.
    request_sent: u32,
    /// The request is still kept in `send` (dropped at the final head).
    request_kept: bool,
    /// The head arrived while a send was out: drop the request when it
    /// comes back.
    drop_when_sent: bool,
    /// The whole request went out before its answer (else the connection
    /// is not reused: the upstream may still expect the rest).
    request_complete: bool,
    /// The body streams in behind the head ([`UpstreamConn::stream_body`]).
    streaming: Option<Streaming>,
    /// Sent bytes of a streamed request were dropped from `send`: it can no
    /// longer be sent again elsewhere.
    trimmed: bool,
    /// The request asks for an upgrade (a WebSocket handshake): a `101`
    /// turns the connection into a tunnel ([`UpstreamConn::expect_upgrade`]).
    upgrade: bool,
    /// The whole body is read before the head is shown, up to this many
    /// bytes ([`UpstreamConn::buffer_body`]); 0: relayed as it comes.
    buffer_limit: u32,
    /// Bytes one receive takes while relaying (the window), whatever the
    /// buffer's capacity.
    window: u32,
    /// The rest of the body is read from the socket by the client side
    /// (a splice, [`UpstreamConn::splice_body`]): no receive of ours.
    spliced: bool,
}

/// A request body that arrives while the request is being sent.
#[derive(Clone, Copy, Debug)]
struct Streaming {
    /// Framed as chunks (the client's was chunked).
    chunked: bool,
    /// The client's body is complete (and, chunked, its last chunk queued).
    ended: bool,
}

/// Framing bytes around one chunk: its size line (up to 8 hex digits and
/// CRLF) and the CRLF after its data.
const CHUNK_FRAMING_BYTES: u32 = 8 + 2 + 2;
/// The last chunk, kept room for behind every chunk queued.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

impl UpstreamConn {
    /// A connection with its two buffers; one receive takes at most
    /// `recv_window` bytes unless a body is buffered whole (the receive
    /// buffer's capacity is its limit then). The window is at least
    /// [`RESPONSE_HEAD_MAX`] bytes, so a head always fits.
    pub fn new(send: RingBuffer, recv: RingBuffer, recv_window: u32) -> UpstreamConn {
        assert!(recv_window >= RESPONSE_HEAD_MAX && recv.capacity() >= recv_window);
        UpstreamConn {
            send,
            recv,
            phase: Phase::Idle,
            body_left: BodyLeft::None,
            head: ResponseHead::default(),
            head_request: false,
            any_byte: false,
            ready: 0,
            sending: false,
            receiving: false,
            poisoned: false,
            pooled: false,
            sent_any: false,
            request_sent: 0,
            request_kept: false,
            drop_when_sent: false,
            request_complete: false,
            streaming: None,
            trimmed: false,
            upgrade: false,
            buffer_limit: 0,
            window: recv_window,
            spliced: false,
        }
    }

    /// Where the request goes: write the forwarded head and the body here
    /// (`spare_mut` then `commit`, or `append`) before [`Self::start`].
    pub fn request_buffer(&mut self) -> &mut RingBuffer {
        assert!(
            matches!(self.phase, Phase::Idle),
            "request buffer while busy"
        );
        self.pooled = false;
        &mut self.send
    }

    /// Starts the request written into [`Self::request_buffer`]: on a new
    /// connection (`connected` false: connect first) or a pooled one.
    /// `head_request`: a HEAD, so the response has no body.
    pub fn start(&mut self, connected: bool, head_request: bool) {
        assert!(matches!(self.phase, Phase::Idle), "start while busy");
        assert!(!self.send.is_empty(), "start without a request");
        self.phase = if connected {
            Phase::AwaitingHead
        } else {
            Phase::Connecting { asked: false }
        };
        self.head_request = head_request;
        self.any_byte = false;
        self.ready = 0;
        self.body_left = BodyLeft::None;
        self.poisoned = false;
        self.pooled = false;
        self.sent_any = false;
        self.request_sent = 0;
        self.request_kept = true;
        self.drop_when_sent = false;
        self.request_complete = false;
        self.streaming = None;
        self.trimmed = false;
        self.upgrade = false;
        self.buffer_limit = 0;
        self.spliced = false;
    }

    /// Hands the rest of a length-delimited body to the client side, to be
    /// spliced from this connection's socket: `Some(bytes left on the
    /// socket)` once the head was taken, when no receive is out and at
    /// least `min` bytes are left. What is buffered already
    /// ([`Self::body`]) is still taken as usual; the machine reads nothing
    /// more itself, [`Self::spliced`] counts what moved and
    /// [`Self::splice_failed`] says it broke.
    pub fn splice_body(&mut self, min: u64) -> Option<u64> {
        let BodyLeft::Length(left) = self.body_left else {
            return None;
        };
        let ready = self.phase == Phase::Body
            && !self.head_pending()
            && self.recv.len() == self.ready
            && !self.receiving
            && !self.buffering()
            && self.streaming.is_none()
            && !self.spliced;
        if !ready || left < min {
            return None;
        }
        self.spliced = true;
        Some(left)
    }

    /// `n` body bytes were spliced out of the socket.
    pub fn spliced(&mut self, n: u64) {
        assert!(self.spliced, "spliced without splice_body");
        let BodyLeft::Length(left) = &mut self.body_left else {
            unreachable!("a spliced body has a length")
        };
        assert!(n <= *left, "spliced past the body's length");
        *left -= n;
        if *left == 0 && self.phase == Phase::Body {
            self.finish();
        }
    }

    /// The spliced body broke off (the upstream closed or failed).
    pub fn splice_failed(&mut self) {
        if self.phase == Phase::Body {
            self.phase = Phase::Failed(Failure::BrokenBody);
        }
    }

    /// After [`Self::start`]: the response body is read whole, up to
    /// `limit` bytes (at most what the receive buffer holds past the
    /// window), before [`Self::response_head`] shows the head; a larger
    /// one fails ([`Failure::TooLargeToBuffer`]). [`Self::buffered_body`]
    /// then shows it.
    pub fn buffer_body(&mut self, limit: u32) {
        assert!(self.request_kept, "buffer_body before start");
        assert!(limit > 0);
        self.buffer_limit = limit.min(self.recv.capacity() - self.window);
    }

    /// Whether the body is being read whole before the head is shown.
    fn buffering(&self) -> bool {
        self.buffer_limit > 0
    }

    /// After [`Self::start`]: the request asks for an upgrade. A `101`
    /// answer then makes the connection a tunnel: the response "body" is
    /// every byte until the upstream closes, and bytes pushed with
    /// [`Self::push_body`] go upstream unframed; the connection is never
    /// reused. A `101` to a request that did not ask is a malformed answer.
    pub fn expect_upgrade(&mut self) {
        assert!(self.request_kept, "expect_upgrade before start");
        self.upgrade = true;
    }

    /// After [`Self::start`]: the request's body streams in behind its head
    /// ([`Self::push_body`], then [`Self::end_body`]), framed as chunks when
    /// `chunked`. It is sent as it comes, also after the response head
    /// arrived (a backend may answer while it reads), and dropped from the
    /// buffer once sent; the response read timeout starts only once all of
    /// it went out.
    pub fn stream_body(&mut self, chunked: bool) {
        assert!(self.request_kept, "stream_body before start");
        self.streaming = Some(Streaming {
            chunked,
            ended: false,
        });
    }

    /// Queues streamed body bytes; returns how many were taken (fewer when
    /// the buffer is full: more fit once a send completes). Bytes nobody
    /// will send (the exchange failed or is complete) are taken and dropped.
    pub fn push_body(&mut self, bytes: &[u8]) -> u32 {
        let all = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let Some(streaming) = self.streaming else {
            return all;
        };
        let wanted = !streaming.ended
            && matches!(
                self.phase,
                Phase::Connecting { .. } | Phase::AwaitingHead | Phase::Body
            );
        if !wanted {
            return all;
        }
        let overhead = if streaming.chunked {
            CHUNK_FRAMING_BYTES + LAST_CHUNK.len() as u32
        } else {
            0
        };
        if self.send.spare() < overhead + all && !self.send.unsent_lent() && self.send.head() > 0 {
            self.send.compact();
        }
        let take = all.min(self.send.spare().saturating_sub(overhead));
        if take == 0 {
            return 0;
        }
        let data = &bytes[..take as usize];
        if streaming.chunked {
            let mut line = [0u8; 10];
            let digits = hex_line(take, &mut line);
            self.send.append(digits).expect("room checked");
            self.send.append(data).expect("room checked");
            self.send.append(b"\r\n").expect("room checked");
        } else {
            self.send.append(data).expect("room checked");
        }
        take
    }

    /// The streamed body is complete: a chunked one gets its last chunk
    /// (room for it is always kept).
    pub fn end_body(&mut self) {
        let Some(streaming) = &mut self.streaming else {
            return;
        };
        if std::mem::replace(&mut streaming.ended, true) {
            return;
        }
        let live = matches!(
            self.phase,
            Phase::Connecting { .. } | Phase::AwaitingHead | Phase::Body
        );
        if streaming.chunked && live {
            self.send
                .append(LAST_CHUNK)
                .expect("room kept for the last chunk");
        }
    }

    /// A streamed body has bytes still to come or to send.
    fn streaming_open(&self) -> bool {
        self.streaming
            .is_some_and(|streaming| !streaming.ended || self.request_sent < self.send.len())
    }

    /// After a failure before any response byte (a refused or timed-out
    /// connect, or an upstream that closed without answering): the same
    /// request, kept whole, on a new connection. Whether the request may be
    /// sent again (nothing went out, or it is idempotent) is the caller's
    /// to decide ([`UpstreamConn::sent_any`]). `false` when not possible.
    pub fn retry_fresh(&mut self) -> bool {
        let failed_early =
            matches!(self.phase, Phase::Failed(failure) if failure.before_any_response());
        if !failed_early
            || self.busy()
            || !self.request_kept
            || self.trimmed
            || self.send.is_empty()
        {
            return false;
        }
        self.request_sent = 0;
        self.sent_any = false;
        self.recv.reset_for_reuse();
        self.head.head_len = 0;
        self.any_byte = false;
        self.ready = 0;
        self.phase = Phase::Connecting { asked: false };
        true
    }

    /// Forgets everything (the socket is being closed): the buffers are
    /// emptied for the next connection. Nothing may be in flight.
    pub fn discard(&mut self) {
        assert!(!self.busy(), "discard with an operation in flight");
        self.send.reset_for_reuse();
        self.recv.reset_for_reuse();
        self.head.head_len = 0;
        self.ready = 0;
        self.phase = Phase::Idle;
        self.pooled = false;
    }

    /// The next operation, if any. Call until `None` after every event.
    pub fn poll(&mut self) -> Option<UpstreamIntent> {
        match self.phase {
            Phase::Idle if self.pooled && !self.receiving => {
                // One window: the probe is still out when the connection is
                // reused, and then it takes the next response's first bytes.
                self.receiving = true;
                Some(UpstreamIntent::Recv(
                    self.recv.lend_spare_up_to(self.window),
                ))
            }
            Phase::Connecting { asked: false } => {
                self.phase = Phase::Connecting { asked: true };
                Some(UpstreamIntent::Connect)
            }
            Phase::AwaitingHead | Phase::Body => {
                if !self.sending && self.request_kept && self.request_sent < self.send.len() {
                    self.sending = true;
                    return Some(UpstreamIntent::Send(SendBuf::Buffer(
                        self.send.lend_unsent_after(self.request_sent),
                    )));
                }
                // Nothing more is read while the head or body bytes wait
                // for the client: that is the backpressure, and it keeps
                // the buffer still while they are framed in place.
                if self.buffering() && !self.receiving {
                    // The whole body, behind its head, before anything is
                    // shown: no compaction (the head's spans are absolute),
                    // and the capacity past the limit covers the head.
                    if self.recv.spare() == 0 {
                        self.phase = Phase::Failed(Failure::TooLargeToBuffer {
                            limit: self.buffer_limit,
                        });
                        return None;
                    }
                    self.receiving = true;
                    return Some(UpstreamIntent::Recv(self.recv.lend_spare()));
                }
                let wants_bytes =
                    self.ready == 0 && !self.receiving && !self.head_pending() && !self.spliced;
                if wants_bytes {
                    if self.recv.spare() == 0
                        || self.recv.spare() < self.window.min(self.recv.capacity() / 2)
                    {
                        self.recv.compact();
                    }
                    if self.recv.spare() > 0 {
                        self.receiving = true;
                        return Some(UpstreamIntent::Recv(
                            self.recv.lend_spare_up_to(self.window),
                        ));
                    }
                }
                None
            }
            _ => None,
        }
    }

    /// Which timeout the pump should arm now, if any.
    pub fn timeout(&self) -> Option<Wait> {
        match self.phase {
            Phase::Connecting { asked: true } => Some(Wait::Connect),
            Phase::AwaitingHead if self.sending => Some(Wait::Send),
            // The backend answers once it has the body: while the client
            // is still sending it, the client's body timeout applies.
            Phase::AwaitingHead if self.streaming_open() => None,
            // A spliced body's reads are the client side's (its send timer
            // bounds them).
            Phase::AwaitingHead | Phase::Body if self.receiving && !self.spliced => {
                Some(Wait::Read)
            }
            _ => None,
        }
    }

    /// The pool's duration for `wait`.
    pub fn timeout_for(wait: Wait, connect: Duration, send: Duration, read: Duration) -> Duration {
        match wait {
            Wait::Connect => connect,
            Wait::Send => send,
            Wait::Read => read,
        }
    }

    /// Feeds one completion.
    pub fn on(&mut self, event: UpstreamEvent) {
        match event {
            UpstreamEvent::Connected { result } => {
                if self.phase != (Phase::Connecting { asked: true }) {
                    return; // a connect that timed out, cancelled late
                }
                self.phase = match result {
                    0 => Phase::AwaitingHead,
                    r if r == -libc_errno::ECONNREFUSED => Phase::Failed(Failure::Refused),
                    r => Phase::Failed(Failure::ConnectFailed(-r)),
                };
            }
            UpstreamEvent::Sent { buf, result } => {
                self.sending = false;
                let SendBuf::Buffer(loan) = buf else {
                    unreachable!("the upstream machine only sends its own buffer")
                };
                let sent = u32::try_from(result).unwrap_or(0).min(loan.len());
                self.sent_any |= sent > 0;
                self.send.return_kept(loan);
                self.request_sent += sent;
                if self.streaming.is_some() && self.request_sent > 0 {
                    // A streamed request cannot be kept whole: what went
                    // out makes room for what comes.
                    self.send.consume(self.request_sent);
                    self.request_sent = 0;
                    self.trimmed = true;
                }
                if std::mem::take(&mut self.drop_when_sent) {
                    self.drop_request();
                }
                if result < 0 && matches!(self.phase, Phase::AwaitingHead) && !self.any_byte {
                    self.phase = Phase::Failed(Failure::SendFailed(-result));
                }
            }
            UpstreamEvent::Received { buf, result } => {
                self.receiving = false;
                let received = u32::try_from(result).unwrap_or(0);
                self.recv.return_spare(buf, received);
                if self.phase == Phase::Idle {
                    // The pooled connection's probe: bytes nobody asked
                    // for, or a close. Either way it is done.
                    self.pooled = false;
                    self.phase = Phase::Failed(Failure::ClosedBeforeHead {
                        any_byte: received > 0,
                    });
                    return;
                }
                match result {
                    n if n > 0 => {
                        self.any_byte = true;
                        self.advance();
                    }
                    0 => self.closed(false),
                    _ => self.closed(true),
                }
            }
            UpstreamEvent::TlsFailed => {
                if self.phase == (Phase::Connecting { asked: true }) {
                    self.phase = Phase::Failed(Failure::Tls);
                }
            }
            UpstreamEvent::TimedOut => {
                self.phase = Phase::Failed(match self.phase {
                    Phase::Connecting { .. } => Failure::ConnectTimeout,
                    Phase::AwaitingHead if self.sending => Failure::SendTimeout,
                    Phase::AwaitingHead => Failure::ReadTimeout,
                    _ => Failure::BrokenBody,
                });
            }
        }
    }

    /// The upstream closed its side, or reset the connection (`reset`: a
    /// close-delimited body then did not end, it broke).
    fn closed(&mut self, reset: bool) {
        self.phase = match self.phase {
            Phase::AwaitingHead => Phase::Failed(Failure::ClosedBeforeHead {
                any_byte: self.any_byte,
            }),
            Phase::Body if matches!(self.body_left, BodyLeft::UntilClose) && !reset => {
                Phase::Done { reusable: false }
            }
            Phase::Body => Phase::Failed(Failure::BrokenBody),
            other => other,
        };
    }

    /// New response bytes: parse the head, or frame body bytes.
    fn advance(&mut self) {
        if self.phase == Phase::AwaitingHead {
            let mut parser = ResponseParser::new();
            loop {
                let unconsumed = self.recv.unconsumed();
                match parser.parse(
                    unconsumed,
                    self.recv.head(),
                    self.head_request,
                    RESPONSE_HEAD_MAX,
                    &mut self.head,
                ) {
                    Ok(ParseStatus::Partial) => return,
                    Err(error) => {
                        self.phase = Phase::Failed(Failure::BadHead(error));
                        return;
                    }
                    Ok(ParseStatus::Complete) if self.head.is_interim() => {
                        // 100 Continue and the like: skipped, the final
                        // head follows. Forgotten too: a parsed head that
                        // is still counted reads as the final one waiting
                        // to be taken, and no receive would be armed for
                        // the head still to come.
                        self.recv.consume(self.head.head_len);
                        self.head.head_len = 0;
                        continue;
                    }
                    Ok(ParseStatus::Complete) => break,
                }
            }
            if self.head.status == 101 {
                if !self.upgrade {
                    self.phase = Phase::Failed(Failure::BadHead(ParseError::Malformed));
                    return;
                }
                // A tunnel from here on: bytes both ways until a close.
                self.head.body = ResponseBody::UntilClose;
                self.poisoned = true;
                self.streaming = Some(Streaming {
                    chunked: false,
                    ended: false,
                });
            }
            self.body_left = match self.head.body {
                ResponseBody::None => BodyLeft::None,
                ResponseBody::Length(n) => BodyLeft::Length(n),
                ResponseBody::Chunked => BodyLeft::Chunked(ChunkedDecoder::new()),
                ResponseBody::UntilClose => BodyLeft::UntilClose,
            };
            self.phase = Phase::Body;
            // The answer is here: the request is no longer needed (a
            // streamed body goes on being sent: the backend may be reading
            // it as it answers).
            if self.streaming.is_some() {
            } else if self.sending {
                self.drop_when_sent = true;
            } else {
                self.drop_request();
            }
            // The head stays at the front of `recv` until the client side
            // took it (`take_head`); body framing starts after it.
        }
        self.frame_body();
        if self.buffering() && self.ready > self.buffer_limit {
            self.phase = Phase::Failed(Failure::TooLargeToBuffer {
                limit: self.buffer_limit,
            });
        }
    }

    /// Where body bytes start in `recv`: behind the head while it is
    /// pending (a buffered body), else at the front.
    fn body_start(&self) -> u32 {
        let head = if self.head_pending() {
            self.head.head_len
        } else {
            0
        };
        self.recv.head() + head
    }

    /// Frames what follows the head (or earlier body bytes) in `recv`.
    fn frame_body(&mut self) {
        // Framing moves bytes in place: never under a receive's loan (the
        // receive's completion frames what it brought). A buffered body is
        // framed behind its head, which stays until the body is whole.
        if self.phase != Phase::Body || (self.head_pending() && !self.buffering()) || self.receiving
        {
            return;
        }
        let start = self.body_start();
        let available = self.recv.tail() - start - self.ready;
        match &mut self.body_left {
            BodyLeft::None => {
                if available > 0 {
                    self.poisoned = true; // bytes after a bodiless answer
                }
                self.finish();
            }
            BodyLeft::Length(left) => {
                let take = u64::from(available).min(*left) as u32;
                *left -= u64::from(take);
                self.ready += take;
                if u64::from(available) > u64::from(take) {
                    self.poisoned = true; // more than Content-Length said
                    let extra_at = start + self.ready;
                    self.recv.cut(extra_at, self.recv.tail() - extra_at);
                }
                if *left == 0 {
                    self.finish();
                }
            }
            BodyLeft::UntilClose => self.ready += available,
            BodyLeft::Chunked(decoder) => {
                let undecoded = Span::new(start + self.ready, available);
                match decoder.decode(self.recv.get_mut(undecoded), u64::MAX) {
                    Err(_) => self.phase = Phase::Failed(Failure::BrokenBody),
                    Ok(progress) => {
                        let stale_at = undecoded.offset + progress.decoded_len + progress.leftover;
                        self.recv.cut(stale_at, self.recv.tail() - stale_at);
                        self.ready += progress.decoded_len;
                        if progress.consumed_all {
                            if progress.leftover > 0 {
                                self.poisoned = true;
                                let extra_at = start + self.ready;
                                self.recv.cut(extra_at, self.recv.tail() - extra_at);
                            }
                            self.finish();
                        }
                    }
                }
            }
        }
    }

    /// Drops the kept request (its answer arrived); no more of it is sent.
    fn drop_request(&mut self) {
        if !self.request_kept {
            return;
        }
        self.request_complete = self.request_sent == self.send.len();
        self.request_kept = false;
        self.send.consume(self.send.len());
        if matches!(self.phase, Phase::Done { .. }) {
            self.finish();
        }
    }

    /// Whether request bytes have gone out on this connection (a retry
    /// would send them a second time).
    pub fn sent_any(&self) -> bool {
        self.sent_any
    }

    /// The body is complete (its last bytes may still wait for the client).
    fn finish(&mut self) {
        let request_done = if self.streaming.is_some() {
            true // decided when the outcome is asked: the body may still go
        } else {
            !self.request_kept && self.request_complete
        };
        // A body buffered past the window touched pages a pooled
        // connection would keep: it closes instead (its buffer gives them
        // back).
        let big_buffer = self.buffering() && self.ready > self.window;
        let reusable = self.head.keep_alive && !self.poisoned && request_done && !big_buffer;
        self.phase = Phase::Done { reusable };
    }

    /// Whether the response head is parsed but not yet taken.
    fn head_pending(&self) -> bool {
        self.head.head_len > 0
    }

    /// The response head, once it arrived and until taken: the client side
    /// re-frames it (its bytes stay at the front of `recv` meanwhile).
    pub fn response_head(&self) -> Option<(&ResponseHead, &[u8])> {
        let arrived = match self.phase {
            Phase::Body => !self.buffering(),
            Phase::Done { .. } => true,
            _ => false,
        };
        (arrived && self.head_pending()).then(|| (&self.head, self.recv.filled()))
    }

    /// The client side has re-framed the head: its bytes are dropped and
    /// body framing starts.
    pub fn take_head(&mut self) {
        assert!(self.head_pending(), "no head to take");
        self.recv.consume(self.head.head_len);
        self.head.head_len = 0;
        self.frame_body();
    }

    /// The final response's status, once its head arrived (it stays
    /// readable after the head was taken).
    pub fn response_status(&self) -> Option<u16> {
        matches!(self.phase, Phase::Body | Phase::Done { .. }).then_some(self.head.status)
    }

    /// Decoded body bytes ready for the client.
    pub fn body(&self) -> &[u8] {
        if self.head_pending() {
            return &[]; // the head goes first
        }
        &self.recv.unconsumed()[..self.ready as usize]
    }

    /// The whole body read for [`Self::buffer_body`], once the response is
    /// complete and its head not yet taken.
    pub fn buffered_body(&self) -> Option<&[u8]> {
        let whole =
            self.buffering() && matches!(self.phase, Phase::Done { .. }) && self.head_pending();
        whole.then(|| {
            let start = (self.body_start() - self.recv.head()) as usize;
            &self.recv.unconsumed()[start..start + self.ready as usize]
        })
    }

    /// The client side took `n` body bytes.
    pub fn consume_body(&mut self, n: u32) {
        assert!(n <= self.ready);
        self.recv.consume(n);
        self.ready -= n;
    }

    /// `Some(Ok(reusable))` when the response is complete and every body
    /// byte was taken; `Some(Err(failure))` when the exchange failed.
    pub fn outcome(&self) -> Option<Result<bool, Failure>> {
        match self.phase {
            Phase::Done { reusable } if self.ready == 0 && !self.head_pending() => {
                // A streamed request is reusable only if all of it went out.
                let streamed_whole = self
                    .streaming
                    .is_none_or(|streaming| streaming.ended && self.send.is_empty());
                Some(Ok(reusable
                    && streamed_whole
                    && !self.sending
                    && !self.receiving))
            }
            Phase::Failed(failure) => Some(Err(failure)),
            _ => None,
        }
    }

    /// Whether an operation is still in flight (the pump must reap it
    /// before the connection is pooled or closed).
    pub fn busy(&self) -> bool {
        self.sending || self.receiving
    }

    /// Readies a reusable connection for its next request in the pool.
    pub fn reset_for_pool(&mut self) {
        assert!(
            matches!(self.outcome(), Some(Ok(true))),
            "pooling an unusable connection"
        );
        self.streaming = None;
        self.request_kept = false;
        self.phase = Phase::Idle;
        self.pooled = true;
        self.head.head_len = 0;
        debug_assert!(self.recv.is_empty() && self.send.is_empty());
    }

    /// Whether the connection sits in a pool (its probe may be armed).
    pub fn is_pooled(&self) -> bool {
        self.pooled && self.phase == Phase::Idle
    }
}

/// Writes `n` as a chunk-size line (`1f40\r\n`) into `out`.
fn hex_line(n: u32, out: &mut [u8; 10]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut len = 0;
    let mut shift = 28;
    let mut started = false;
    loop {
        let digit = (n >> shift) & 0xf;
        if digit != 0 || started || shift == 0 {
            out[len] = DIGITS[digit as usize];
            len += 1;
            started = true;
        }
        if shift == 0 {
            break;
        }
        shift -= 4;
    }
    out[len] = b'\r';
    out[len + 1] = b'\n';
    &out[..len + 2]
}

/// The errno values this machine tells apart (Linux's).
mod libc_errno {
    pub const ECONNREFUSED: i32 = 111;
}

#[cfg(test)]
mod tests;
