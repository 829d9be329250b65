//! The connection: its states, what each event does to them, and what
//! [`Connection::poll`] asks the driver to do next.
//!
//! One request at a time is answered, in order; the receive side and the
//! output side each have at most one operation in flight, and a file answer
//! at most one open or stat. A connection's life:
//! `Free → Open → (Finishing → Lingering)? → Aborting? → Closing → Free`.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Instant;

use keystone_exchange::TlsFacts;
use keystone_parser::{ChunkedDecoder, Progress};
use keystone_ringbuf::{RingBuffer, SendBuf, SpareLoan};

use crate::file::{FileRef, PendingFile};
use crate::kept::{Kept, Vacant};
use crate::stream::StreamTail;
use crate::{
    Config, Context, Event, Intent, Level, PinOwner, Pinned, Pipe, Policy, Timer,
    FILE_READ_BYTES_MAX, IDLE_RELEASE_AFTER, LINGER_TIMEOUT,
};

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No connection in this slot.
    Free,
    /// Reading requests, writing responses.
    Open,
    /// No further request is read; once what is queued is written, the
    /// write side is shut (graceful close).
    Finishing,
    /// Our FIN is sent (or being sent); reads are discarded until the peer
    /// closes or the linger deadline passes, so a final response is never
    /// lost to a reset.
    Lingering,
    /// Stop: cancel what is in flight, release the response, close.
    Aborting,
    /// The close is submitted.
    Closing,
}

/// What the receive side is doing with the bytes it has.
#[derive(Debug)]
pub(crate) enum Reading {
    /// Between requests.
    Idle,
    /// A request head is arriving.
    Head,
    /// The head is complete; its body is arriving.
    Body(BodyState),
    /// A complete request is being answered with a file that is opening
    /// (the answer waits in [`Connection::answering`]).
    Answering,
    /// A complete request went upstream; its response head is awaited.
    Proxying(crate::proxy::PendingProxy),
}

/// A body being received.
#[derive(Debug)]
pub(crate) struct BodyState {
    /// Bytes of the request's head.
    pub(crate) head_len: u32,
    /// How the body is delimited.
    pub(crate) framing: BodyFraming,
    /// `Expect: 100-continue` was asked.
    pub(crate) expect_continue: bool,
    /// The interim 100 is queued already.
    pub(crate) continue_sent: bool,
}

/// How a body being received is delimited.
#[derive(Debug)]
pub(crate) enum BodyFraming {
    /// `Content-Length`: head and body make `total` bytes.
    Length {
        /// Bytes of head and body.
        total: u64,
    },
    /// Chunked, decoded in place: the payload sits right after the head,
    /// `decoded` bytes of it; offsets are relative to the request's start,
    /// so compacting the buffer between reads does not invalidate them.
    Chunked {
        /// picohttpparser's decoder state.
        decoder: ChunkedDecoder,
        /// Payload bytes decoded so far.
        decoded: u32,
    },
}

/// One side's operation in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Nothing in flight.
    Idle,
    /// An operation is in flight.
    Busy,
    /// It is in flight and its cancellation was asked for.
    Cancelling,
}

/// What the output operation in flight is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Output {
    /// Nothing is being written.
    Idle,
    /// Bytes of the send buffer.
    Buffer,
    /// A pinned body.
    Pinned,
    /// File bytes read into the send buffer.
    FileRead,
    /// File → pipe.
    SpliceIn,
    /// Pipe → socket.
    SpliceOut,
}

/// What follows the buffered bytes of the response in progress.
#[derive(Debug, Default)]
pub(crate) enum Tail {
    /// Nothing: the response is entirely in the send buffer.
    #[default]
    None,
    /// A body too large for the send buffer, sent from where it lives.
    Pinned {
        /// The bytes still to send (`None` while a send of them is out).
        rest: Option<keystone_ringbuf::PinnedBytes>,
        /// All of them, as pinned.
        length: u64,
        /// Who keeps them.
        owner: PinOwner,
    },
    /// A file.
    File(FileTail),
    /// A generator, pulled as the socket drains.
    Stream(StreamTail),
    /// A proxied response's body, taken from the upstream as the socket
    /// drains.
    Upstream(crate::proxy::UpstreamTail),
}

impl Vacant for Tail {
    const VACANT: &'static Tail = &Tail::None;
    fn vacant() -> Tail {
        Tail::None
    }
}

/// A file being sent.
#[derive(Debug)]
pub(crate) struct FileTail {
    pub(crate) file: FileRef,
    /// Next file offset to move.
    pub(crate) offset: u64,
    /// Bytes still to move from the file.
    pub(crate) remaining: u64,
    /// Bytes to send from the file in all (`remaining` at the start).
    pub(crate) length: u64,
    /// The pipe it is spliced through; `None`: read into the send buffer.
    pub(crate) pipe: Option<Pipe>,
    /// Bytes sitting in the pipe, not yet sent.
    pub(crate) in_pipe: u32,
}

/// Giving an idle connection's memory back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Release {
    /// Nothing asked.
    None,
    /// The idle read's cancellation is wanted or in flight.
    Cancelling,
    /// The read is cancelled: the driver is asked to let go of its part.
    Requested,
    /// The driver is letting go ([`Intent::ReleaseIdle`] returned).
    Waiting,
    /// Given back; nothing more until the connection is active again.
    Done,
}

/// The write side's shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shutdown {
    /// Not asked.
    None,
    /// The shutdown is in flight.
    InFlight,
    /// The write side is shut.
    Done,
}

/// File descriptors a connection has to close, at most: a pending file's
/// descriptor, a replaced cache entry's and a tail's (one each).
const CLOSES_MAX: usize = 4;

/// One HTTP/1.1 server connection: its buffers and its state. Lives in a
/// worker's slot for the worker's life, one connection after another.
pub struct Connection {
    pub(crate) slot: u32,
    pub(crate) recv: RingBuffer,
    pub(crate) send: RingBuffer,
    pub(crate) peer: Option<SocketAddr>,
    /// The connection's TLS facts ([`Connection::set_tls`]); cleartext
    /// unless the driver says otherwise. Boxed (262 bytes with the server
    /// name) and made only for a slot's first TLS connection, then kept:
    /// a cleartext slot costs a pointer, not the facts.
    pub(crate) tls: Option<Box<TlsFacts>>,
    pub(crate) phase: Phase,
    pub(crate) reading: Reading,
    /// The parser's incremental state for the head being received.
    pub(crate) progress: Progress,
    pub(crate) receiving: Lane,
    /// The receive in flight was armed while an upstream's head was
    /// awaited ([`Connection::poll_probe`]): it may sit behind buffered
    /// bytes, which reads otherwise never do.
    pub(crate) probing: bool,
    pub(crate) output: Output,
    /// The output in flight was asked to cancel.
    pub(crate) output_cancelled: bool,
    /// An open or stat of a file answer is in flight.
    pub(crate) file_busy: bool,
    /// What follows the buffered response ([`Kept`]: most slots never need
    /// one).
    pub(crate) tail: Kept<Tail>,
    /// The file answer that is opening while `reading` is
    /// [`Reading::Answering`] ([`Kept`]: most slots never serve a file).
    pub(crate) answering: Kept<Option<PendingFile>>,
    /// Responses queued since the send buffer was last empty.
    pub(crate) queued: u32,
    /// Requests answered on this connection.
    pub(crate) served: u32,
    /// The buffer holds no complete request: a receive is wanted.
    pub(crate) need_more: bool,
    pub(crate) timer: Timer,
    pub(crate) timer_at: Option<Instant>,
    /// An event arrived since the deadline was last set: progress, which
    /// restarts the between-operations timers (a poll alone does not).
    pub(crate) progressed: bool,
    /// When the current idle period began.
    pub(crate) idle_since: Instant,
    /// `served` when it began: an idle period resumed with no request
    /// answered since (its receive cancelled to give the pages back, then
    /// armed again) keeps its start, so the keep-alive timeout counts from
    /// the last answer, not from the release.
    pub(crate) idle_served: u32,
    /// A read returned bytes since the connection was accepted or its
    /// memory was released: its reads deserve a registered window.
    pub(crate) warm: bool,
    pub(crate) release: Release,
    pub(crate) shutdown: Shutdown,
    /// A request body being streamed upstream (see `upload`).
    pub(crate) upload: Kept<Option<crate::upload::Upload>>,
    closes: [RawFd; CLOSES_MAX],
    closes_len: u8,
}

impl Connection {
    /// Slot `slot`'s connection over its receive and send buffers, free.
    pub fn new(slot: u32, recv: RingBuffer, send: RingBuffer, now: Instant) -> Connection {
        Connection {
            slot,
            recv,
            send,
            peer: None,
            tls: None,
            phase: Phase::Free,
            reading: Reading::Idle,
            progress: Progress::NEW,
            receiving: Lane::Idle,
            probing: false,
            output: Output::Idle,
            output_cancelled: false,
            file_busy: false,
            tail: Kept::new(),
            answering: Kept::new(),
            queued: 0,
            served: 0,
            need_more: false,
            timer: Timer::None,
            timer_at: None,
            progressed: false,
            idle_since: now,
            idle_served: 0,
            warm: false,
            release: Release::None,
            shutdown: Shutdown::None,
            upload: Kept::new(),
            closes: [-1; CLOSES_MAX],
            closes_len: 0,
        }
    }

    /// A connection from `peer` was accepted into this (free) slot; it is
    /// cleartext until [`Connection::set_tls`] says otherwise.
    pub fn open(&mut self, peer: Option<SocketAddr>, now: Instant, config: &Config) {
        assert_eq!(self.phase, Phase::Free, "open of a busy slot");
        debug_assert!(self.recv.is_empty() && self.send.is_empty());
        debug_assert!(matches!(*self.tail, Tail::None) && self.closes_len == 0);
        debug_assert!(self.receiving == Lane::Idle && self.output == Output::Idle);
        self.peer = peer;
        if let Some(tls) = &mut self.tls {
            **tls = TlsFacts::CLEARTEXT;
        }
        self.phase = Phase::Open;
        self.reading = Reading::Idle;
        self.progress = Progress::NEW;
        self.output_cancelled = false;
        self.file_busy = false;
        self.queued = 0;
        self.served = 0;
        self.need_more = true;
        self.timer = Timer::None;
        self.timer_at = None;
        self.idle_since = now;
        self.idle_served = 0;
        self.warm = false;
        self.release = Release::None;
        self.shutdown = Shutdown::None;
        self.upload.clear();
        self.refresh_timer(now, config);
    }

    /// The slot this connection lives in.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Whether the slot holds no connection.
    pub fn is_free(&self) -> bool {
        self.phase == Phase::Free
    }

    /// The client's address.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The driver terminates TLS on this connection: [`TlsFacts::pending`]
    /// right after [`Connection::open`] (encrypted, handshake unfinished),
    /// then the handshake's facts once it finished, before the first
    /// plaintext byte is delivered. From then on every request is bound
    /// with them, and the connection asks for no splice: the bytes it sends
    /// must pass through the driver's encryption, so files and proxied
    /// bodies go through the send buffer instead.
    pub fn set_tls(&mut self, facts: TlsFacts) {
        assert_ne!(self.phase, Phase::Free, "set_tls on a free slot");
        let now = facts_of(&self.tls);
        assert!(
            facts.is_encrypted() || !now.is_encrypted(),
            "an encrypted connection cannot become cleartext"
        );
        // Encryption starts before any answer: no splice can be under way
        // (later calls only add facts, or let splicing start again).
        debug_assert!(
            now.is_encrypted() || matches!(*self.tail, Tail::None),
            "set_tls with a tail"
        );
        debug_assert!(!matches!(self.output, Output::SpliceIn | Output::SpliceOut));
        match &mut self.tls {
            Some(tls) => **tls = facts,
            None => self.tls = Some(Box::new(facts)),
        }
    }

    /// The connection's TLS facts (cleartext unless the driver set them).
    pub fn tls(&self) -> &TlsFacts {
        facts_of(&self.tls)
    }

    /// Which timeout applies now.
    pub fn timer(&self) -> Timer {
        self.timer
    }

    /// When [`Event::Deadline`] is due, if any timeout applies.
    pub fn deadline(&self) -> Option<Instant> {
        let at = self.timer_at?;
        if self.timer == Timer::Idle && self.release == Release::None && self.recv.touched() {
            return Some(at.min(self.idle_since + IDLE_RELEASE_AFTER));
        }
        Some(at)
    }

    /// Whether the connection has received bytes since it was accepted or
    /// its memory was last released (its reads deserve a registered window).
    pub fn is_warm(&self) -> bool {
        self.warm
    }

    /// The receive buffer, for the driver to register (and unregister) its
    /// window with the ring.
    pub fn recv_buffer_mut(&mut self) -> &mut RingBuffer {
        &mut self.recv
    }

    /// Whether a free slot's buffers hold pages worth giving back.
    pub fn touched(&self) -> bool {
        self.recv.touched() || self.send.touched()
    }

    /// A free slot gives its buffers' pages back (the driver unregisters
    /// its window first).
    pub fn release_free_memory(&mut self) {
        assert_eq!(self.phase, Phase::Free, "release of a busy slot's memory");
        self.recv.release_idle();
        self.send.release_idle();
    }

    /// Handles one event; then [`Connection::poll`] says what to do next
    /// (and sets the deadline for the state the intents leave it in).
    pub fn on<P: Policy>(&mut self, event: Event, cx: &mut Context<'_, P>) {
        debug_assert!(self.phase != Phase::Free, "event {event:?} for a free slot");
        self.progressed = !matches!(event, Event::Deadline | Event::Drain);
        match event {
            Event::Received { buf, result } => self.on_received(buf, result, cx),
            Event::Sent { buf, result } => self.on_sent(buf, result, cx),
            Event::FileRead { buf, result } => self.on_file_read(buf, result, cx),
            Event::Spliced { result } => self.on_spliced(result, cx),
            Event::Opened { result } => self.on_opened(result, cx),
            Event::Stated { result, meta } => self.on_stated(result, meta, cx),
            Event::ShutDown { result } => {
                debug_assert_eq!(self.shutdown, Shutdown::InFlight);
                self.shutdown = Shutdown::Done;
                if result < 0 && self.phase == Phase::Lingering {
                    self.phase = Phase::Aborting;
                }
            }
            Event::Closed => self.on_closed(),
            Event::Deadline => self.on_deadline(cx),
            Event::Upstream => self.on_upstream(cx),
            Event::Drain => self.on_drain(cx),
            Event::Released => {
                debug_assert_eq!(self.release, Release::Waiting);
                if self.receiving == Lane::Idle && self.recv.is_empty() && self.send.is_empty() {
                    self.recv.release_idle();
                    self.send.release_idle();
                }
                self.release = Release::Done;
                self.warm = false;
            }
        }
    }

    /// The next thing to do, or `None` until another event arrives.
    pub fn poll<'c, P: Policy>(&mut self, cx: &'c mut Context<'_, P>) -> Option<Intent<'c>> {
        let (now, config) = (cx.now, cx.shared.config);
        let intent = self.next_intent(cx);
        self.refresh_timer(now, &config);
        intent
    }

    fn next_intent<'c, P: Policy>(&mut self, cx: &'c mut Context<'_, P>) -> Option<Intent<'c>> {
        if self.closes_len > 0 {
            self.closes_len -= 1;
            return Some(Intent::CloseFile(self.closes[self.closes_len as usize]));
        }
        match self.phase {
            Phase::Free | Phase::Closing => return None,
            Phase::Aborting => return self.poll_abort(cx),
            Phase::Lingering => return self.poll_linger(),
            Phase::Open | Phase::Finishing => {}
        }
        if self.phase == Phase::Finishing && self.receiving == Lane::Busy && self.upload.is_none() {
            // Reads are no longer wanted (a 408, a drain, an end).
            self.receiving = Lane::Cancelling;
            return Some(Intent::CancelRecv);
        }
        if self.output == Output::Idle {
            if let Some(intent) = self.poll_output(cx) {
                return Some(intent);
            }
            if self.closes_len > 0 {
                self.closes_len -= 1;
                return Some(Intent::CloseFile(self.closes[self.closes_len as usize]));
            }
        }
        if matches!(self.phase, Phase::Aborting) {
            return self.poll_abort(cx);
        }
        if self.probing
            && self.receiving == Lane::Busy
            && !matches!(self.reading, Reading::Proxying(_))
            && (!self.recv.is_empty() || self.upload.is_some())
        {
            // The answer is in and bytes wait behind it (a pipelined
            // request, or a tunnel's first bytes): they are taken only
            // with no receive lent (the probe may never complete, and a
            // tunnel cuts what it forwards out of the buffer), so the
            // probe is called back.
            self.receiving = Lane::Cancelling;
            return Some(Intent::CancelRecv);
        }
        if self.upload.is_some() {
            // Only the streamed body is read until the proxied request ends.
            return self.poll_upload();
        }
        if let Reading::Answering = self.reading {
            if !self.file_busy {
                return self.poll_file(cx);
            }
            return None;
        }
        if let Reading::Proxying(_) = self.reading {
            // The upstream's head is awaited.
            return self.poll_probe();
        }
        if self.phase != Phase::Open {
            // Memory is released with the connection.
            self.release = Release::None;
            return self.poll_finishing();
        }
        match self.release {
            Release::Cancelling if self.receiving == Lane::Busy => {
                self.receiving = Lane::Cancelling;
                return Some(Intent::CancelRecv);
            }
            Release::Cancelling if self.receiving == Lane::Idle => {
                self.release = Release::Requested;
            }
            _ => {}
        }
        if self.release == Release::Requested {
            if self.recv.is_empty() && self.send.is_empty() && self.output == Output::Idle {
                self.release = Release::Waiting;
                return Some(Intent::ReleaseIdle);
            }
            self.release = Release::None;
        }
        if self.release == Release::Waiting {
            return None;
        }
        if self.wants_bytes() {
            return self.poll_recv(cx);
        }
        None
    }

    /// A finishing connection whose output is all sent shuts its write
    /// side and lingers.
    fn poll_finishing(&mut self) -> Option<Intent<'static>> {
        debug_assert_eq!(self.phase, Phase::Finishing);
        if self.receiving == Lane::Busy {
            // A streamed body's or a tunnel's read, left when the proxied
            // request ended in this very poll: no longer wanted.
            self.receiving = Lane::Cancelling;
            return Some(Intent::CancelRecv);
        }
        if self.output_done() && self.receiving == Lane::Idle && !self.file_busy {
            self.phase = Phase::Lingering;
            self.timer = Timer::None; // the linger deadline starts now
            self.shutdown = Shutdown::InFlight;
            return Some(Intent::Shutdown);
        }
        None
    }

    /// A receive is wanted: the connection reads requests, has nothing in
    /// progress and the buffer holds no complete request.
    fn wants_bytes(&self) -> bool {
        self.phase == Phase::Open
            && self.receiving == Lane::Idle
            && self.need_more
            && matches!(*self.tail, Tail::None)
            && self.upload.is_none()
    }

    /// While the upstream's head is awaited, a receive stays armed into
    /// the room behind the request, so a client that goes away (a FIN or
    /// a reset) is seen at once, as nginx sees it, and the upstream request
    /// is abandoned instead of being waited for. What a pipelining client
    /// sends meanwhile stays buffered for its turn; a full buffer arms
    /// nothing (no compaction: the request's bytes are in use).
    fn poll_probe(&mut self) -> Option<Intent<'static>> {
        if self.phase != Phase::Open || self.receiving != Lane::Idle || self.recv.spare() == 0 {
            return None;
        }
        self.receiving = Lane::Busy;
        self.probing = true;
        Some(Intent::Recv(self.recv.lend_spare()))
    }

    fn poll_recv<P: Policy>(&mut self, cx: &mut Context<'_, P>) -> Option<Intent<'static>> {
        if self.recv.spare() == 0 && self.recv.head() > 0 {
            // Between reads, no span into the buffer is live (a partial
            // request's parse progress and chunked offsets are relative).
            self.recv.compact();
        }
        if self.recv.spare() == 0 {
            // Limits make a request always fit (capacity = head + body
            // limits) and a refused one closes the connection, so a full
            // buffer here is an engine bug; still, one connection must not
            // take the worker down: close it.
            debug_assert!(false, "receive buffer full without a complete request");
            cx.policy.log(
                Level::Error,
                format_args!(
                    "receive buffer full without a complete request; closing the connection"
                ),
            );
            self.phase = Phase::Aborting;
            return self.poll_abort(cx);
        }
        self.receiving = Lane::Busy;
        Some(Intent::Recv(self.recv.lend_spare()))
    }

    /// The next output operation: buffered bytes first (a small file's
    /// next piece is read in behind them first, so head and body leave in
    /// one send), then the tail.
    fn poll_output<P: Policy>(&mut self, cx: &mut Context<'_, P>) -> Option<Intent<'static>> {
        debug_assert_eq!(self.output, Output::Idle);
        self.copy_kept_file(cx);
        if let Tail::File(file) = &*self.tail {
            if file.pipe.is_none() && file.remaining > 0 {
                let room = self.send.spare();
                let wanted = file.remaining.min(u64::from(room)).min(FILE_READ_BYTES_MAX) as u32;
                if wanted > 0 && (u64::from(wanted) == file.remaining || self.send.is_empty()) {
                    let (fd, offset) = (file.file.fd(&cx.shared.files), file.offset);
                    self.output = Output::FileRead;
                    return Some(Intent::ReadFile {
                        fd,
                        offset,
                        buf: self.send.lend_spare(),
                        len: wanted,
                    });
                }
            }
        }
        if let Tail::Stream(_) = *self.tail {
            self.fill_stream(cx);
        }
        if let Tail::Upstream(tail) = &*self.tail {
            let spliced = tail.splice.is_some();
            // What the upstream buffered is copied first (for a spliced
            // body: what came with its head).
            self.fill_upstream(cx);
            if spliced && self.send.is_empty() {
                if let Some(intent) = self.poll_splice(cx) {
                    return Some(intent);
                }
            }
        }
        if !self.send.is_empty() {
            self.output = Output::Buffer;
            return Some(Intent::Send(SendBuf::Buffer(self.send.lend_unsent())));
        }
        match self.tail.get_mut() {
            None | Some(Tail::None | Tail::Stream(_) | Tail::Upstream(_)) => None,
            Some(Tail::Pinned { rest, .. }) => {
                let bytes = rest
                    .take()
                    .expect("pinned bytes are home when no send is out");
                self.output = Output::Pinned;
                Some(Intent::Send(SendBuf::Pinned(bytes)))
            }
            Some(Tail::File(file)) => {
                let pipe = file.pipe?;
                if file.in_pipe > 0 {
                    self.output = Output::SpliceOut;
                    return Some(Intent::SpliceOut {
                        from: pipe.read,
                        len: file.in_pipe,
                    });
                }
                debug_assert!(file.remaining > 0, "a finished file tail is released");
                let len = file.remaining.min(u64::from(pipe.capacity)) as u32;
                self.output = Output::SpliceIn;
                Some(Intent::SpliceFile {
                    fd: file.file.fd(&cx.shared.files),
                    offset: file.offset,
                    into: pipe.write,
                    len,
                })
            }
        }
    }

    fn poll_linger(&mut self) -> Option<Intent<'static>> {
        if self.shutdown != Shutdown::Done || self.receiving != Lane::Idle {
            return None;
        }
        // Discard what a closing peer still sends, until it closes.
        self.recv.reset_for_reuse();
        self.receiving = Lane::Busy;
        Some(Intent::Recv(self.recv.lend_spare()))
    }

    /// Cancels what is in flight, waits for it, releases the response and
    /// closes.
    fn poll_abort<P: Policy>(&mut self, cx: &mut Context<'_, P>) -> Option<Intent<'static>> {
        if self.receiving == Lane::Busy {
            self.receiving = Lane::Cancelling;
            return Some(Intent::CancelRecv);
        }
        if self.output != Output::Idle && !self.output_cancelled {
            self.output_cancelled = true;
            return Some(Intent::CancelOutput);
        }
        let busy = self.receiving != Lane::Idle
            || self.output != Output::Idle
            || self.file_busy
            || self.shutdown == Shutdown::InFlight
            || self.release == Release::Waiting;
        if busy {
            return None;
        }
        self.release_tail(cx);
        self.release_pending(cx);
        self.release_proxy(cx);
        if self.closes_len > 0 {
            self.closes_len -= 1;
            return Some(Intent::CloseFile(self.closes[self.closes_len as usize]));
        }
        self.phase = Phase::Closing;
        Some(Intent::Close)
    }

    fn on_received<P: Policy>(&mut self, buf: SpareLoan, result: i32, cx: &mut Context<'_, P>) {
        debug_assert_ne!(self.receiving, Lane::Idle, "a receive nobody asked for");
        self.receiving = Lane::Idle;
        let probed = std::mem::replace(&mut self.probing, false);
        let received = result.max(0) as u32;
        match self.phase {
            Phase::Open => {}
            Phase::Finishing if self.upload.is_some() => {}
            Phase::Lingering => {
                self.recv.return_spare(buf, received);
                self.recv.reset_for_reuse();
                if result <= 0 {
                    // EOF (or an error): the peer has all it will read.
                    self.phase = Phase::Aborting;
                }
                return;
            }
            _ => {
                // Reads are no longer wanted: what arrived is dropped.
                return self.recv.return_spare(buf, 0);
            }
        }
        if result == -ECANCELED && self.release == Release::Cancelling {
            self.recv.return_spare(buf, 0);
            self.release = Release::Requested;
            return;
        }
        if result == -ECANCELED && probed {
            // A probe called back: what waited behind the answer is taken
            // now.
            self.recv.return_spare(buf, 0);
            if self.upload.is_some() {
                return self.upload_received(cx);
            }
            return self.drive(cx);
        }
        if result <= 0 && self.upload.is_some() {
            // The client went away: the end of an upgraded connection, or
            // a body broken off in the middle.
            self.recv.return_spare(buf, 0);
            if !self
                .upload
                .as_ref()
                .is_some_and(|upload| upload.is_tunnel())
            {
                cx.policy.log(
                    Level::Warn,
                    format_args!(
                        "client closed the connection in the middle of a streamed request body"
                    ),
                );
            }
            self.upload.clear();
            self.phase = Phase::Aborting;
            return;
        }
        if result <= 0 && matches!(self.reading, Reading::Proxying(_)) {
            // The client left before the upstream answered: nginx's 499,
            // and the upstream request is abandoned (its connection
            // closed, not counted against the peer).
            self.recv.return_spare(buf, 0);
            self.phase = Phase::Aborting;
            self.release_proxy(cx);
            return;
        }
        if result <= 0 {
            // EOF or error: whatever is queued is still sent, then close.
            self.recv.return_spare(buf, 0);
            self.reading = Reading::Idle;
            self.phase = Phase::Finishing;
            return;
        }
        self.recv.return_spare(buf, received);
        self.warm = true;
        self.release = Release::None;
        if self.upload.is_some() {
            return self.upload_received(cx);
        }
        if matches!(self.reading, Reading::Proxying(_)) {
            return; // pipelined bytes: they wait for the answer in progress
        }
        self.need_more = false;
        self.drive(cx);
    }

    fn on_sent<P: Policy>(&mut self, buf: SendBuf, result: i32, cx: &mut Context<'_, P>) {
        debug_assert!(matches!(self.output, Output::Buffer | Output::Pinned));
        self.output = Output::Idle;
        self.output_cancelled = false;
        let sent = result.max(0) as u32;
        match buf {
            SendBuf::Buffer(loan) => self.send.return_unsent(loan, sent),
            SendBuf::Pinned(mut bytes) => {
                bytes.advance(sent as usize);
                let Some(Tail::Pinned { rest, .. }) = self.tail.get_mut() else {
                    unreachable!("a pinned send without its tail")
                };
                *rest = Some(bytes);
            }
        }
        if self.phase != Phase::Open && self.phase != Phase::Finishing {
            return;
        }
        if result <= 0 {
            // The peer is gone: nothing more can be delivered.
            self.phase = Phase::Aborting;
            return;
        }
        if let Tail::Pinned {
            rest: Some(bytes), ..
        } = &*self.tail
        {
            if bytes.is_empty() {
                self.release_tail(cx);
            }
        }
        self.after_output(cx);
    }

    /// A small cached file whose bytes the open-file cache kept is copied
    /// into the send buffer behind its head, whole: no read.
    fn copy_kept_file<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        let Some(Tail::File(file)) = self.tail.get_mut() else {
            return;
        };
        let FileRef::Cached(handle) = &file.file else {
            return;
        };
        if file.pipe.is_some() || file.remaining == 0 {
            return;
        }
        let Some(kept) = cx.shared.files.content(handle) else {
            return;
        };
        let start = file.offset as usize;
        let end = start.saturating_add(file.remaining as usize);
        if end > kept.len() || file.remaining > u64::from(self.send.spare()) {
            return; // the read below takes it as it comes
        }
        self.send
            .append(&kept[start..end])
            .expect("room checked above");
        file.offset = end as u64;
        file.remaining = 0;
        self.release_tail(cx);
    }

    fn on_file_read<P: Policy>(&mut self, buf: SpareLoan, result: i32, cx: &mut Context<'_, P>) {
        debug_assert_eq!(self.output, Output::FileRead);
        self.output = Output::Idle;
        self.output_cancelled = false;
        let read = result.max(0) as u32;
        let landed = buf.offset();
        self.send.return_spare(buf, read);
        if let Some(Tail::File(FileTail {
            file: FileRef::Cached(handle),
            offset: 0,
            ..
        })) = self.tail.get_mut()
        {
            // A whole small file is kept for the entry's next hits (the
            // cache checks it is the whole file).
            let bytes = &self.send.filled()[landed as usize..(landed + read) as usize];
            cx.shared.files.keep_content(handle, bytes);
        }
        if self.phase != Phase::Open && self.phase != Phase::Finishing {
            return;
        }
        if result <= 0 {
            self.file_failed(result, cx);
            return;
        }
        let Some(Tail::File(file)) = self.tail.get_mut() else {
            unreachable!("a file read without its tail")
        };
        file.offset += u64::from(read);
        file.remaining -= u64::from(read).min(file.remaining);
        if file.remaining == 0 {
            self.release_tail(cx);
        }
        self.after_output(cx);
    }

    fn on_spliced<P: Policy>(&mut self, result: i32, cx: &mut Context<'_, P>) {
        let into_pipe = match self.output {
            Output::SpliceIn => true,
            Output::SpliceOut => false,
            other => unreachable!("splice completion while {other:?}"),
        };
        self.output = Output::Idle;
        self.output_cancelled = false;
        if let Tail::Upstream(_) = *self.tail {
            return self.on_upstream_spliced(into_pipe, result, cx);
        }
        let moved = result.max(0) as u32;
        let Some(Tail::File(file)) = self.tail.get_mut() else {
            unreachable!("a splice without its tail")
        };
        // Count what moved even when aborting: a pipe holding bytes goes
        // back dirty.
        if into_pipe {
            file.in_pipe += moved;
            file.offset += u64::from(moved);
            file.remaining -= u64::from(moved).min(file.remaining);
        } else {
            file.in_pipe -= moved.min(file.in_pipe);
        }
        if self.phase != Phase::Open && self.phase != Phase::Finishing {
            return;
        }
        if result <= 0 {
            if into_pipe {
                self.file_failed(result, cx);
            } else {
                self.phase = Phase::Aborting; // the peer is gone
            }
            return;
        }
        let Tail::File(file) = &*self.tail else {
            unreachable!()
        };
        if file.in_pipe == 0 && file.remaining == 0 {
            self.release_tail(cx);
        }
        self.after_output(cx);
    }

    /// Reading the file failed or it ended early: the head promised its
    /// length, so the connection closes after what was sent.
    fn file_failed<P: Policy>(&mut self, result: i32, cx: &mut Context<'_, P>) {
        if result == 0 {
            cx.policy.log(
                Level::Warn,
                format_args!("file shrank while being sent; closing the connection"),
            );
        } else {
            cx.policy.log(
                Level::Error,
                format_args!(
                    "reading a file being sent failed (errno {}); closing the connection",
                    -result
                ),
            );
        }
        self.phase = Phase::Aborting;
    }

    /// An output operation finished: once the response in progress is all
    /// sent, pipelined requests that waited are answered.
    pub(crate) fn after_output<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        if self.output_done() {
            self.queued = 0;
            if self.phase == Phase::Open {
                self.drive(cx);
            }
        }
    }

    /// Nothing is queued or in progress on the output side.
    pub(crate) fn output_done(&self) -> bool {
        self.output == Output::Idle
            && self.send.is_empty()
            && matches!(*self.tail, Tail::None)
            && !matches!(self.reading, Reading::Answering | Reading::Proxying(_))
    }

    fn on_closed(&mut self) {
        debug_assert_eq!(self.phase, Phase::Closing);
        debug_assert!(matches!(*self.tail, Tail::None));
        self.phase = Phase::Free;
        self.reading = Reading::Idle;
        self.answering.clear();
        self.recv.reset_for_reuse();
        self.send.reset_for_reuse();
    }

    fn on_deadline<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        let Some(at) = self.deadline() else { return };
        if cx.now < at {
            return;
        }
        match self.timer {
            Timer::Body if self.upload.is_some() => self.abandon_upload(cx, 408),
            Timer::Header | Timer::Body => {
                // 408 unless a response is already on its way.
                if self.output_done() {
                    self.queue_error(cx, 408, None, crate::answer::CLOSE);
                }
                self.reading = Reading::Idle;
                self.progress = Progress::NEW;
                self.phase = Phase::Finishing;
            }
            Timer::Idle if self.timer_at.is_some_and(|idle_at| cx.now < idle_at) => {
                // Idle a whole IDLE_RELEASE_AFTER: give the pages back (the
                // read in flight is cancelled first: the kernel must not
                // write into pages we return).
                self.release = Release::Cancelling;
            }
            Timer::Idle | Timer::Send | Timer::Linger => self.phase = Phase::Aborting,
            Timer::None => {}
        }
    }

    fn on_drain<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        let idle = self.phase == Phase::Open
            && matches!(self.reading, Reading::Idle)
            && self.recv.is_empty()
            && self.output_done();
        if idle {
            // An idle keep-alive connection closes now.
            self.phase = Phase::Aborting;
        } else if self.phase == Phase::Open && self.output_done() {
            self.drive(cx);
        }
    }

    /// Lets go of the response's tail: a pinned body or a generator is
    /// unpinned, a file released, its pipe given back.
    /// Policy hears how many of the body's bytes were queued for the
    /// client (for the access log).
    pub(crate) fn release_tail<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        let moved = match self.tail.take() {
            Tail::None => return,
            Tail::Pinned {
                owner,
                rest,
                length,
            } => {
                cx.policy.unpin(owner, self.slot);
                // A send still out (`None`) counts as taken.
                length - rest.map_or(0, |rest| rest.len() as u64)
            }
            Tail::Stream(stream) => {
                cx.policy.unpin(stream.owner, self.slot);
                stream.moved
            }
            Tail::Upstream(tail) => {
                if let Some(splice) = tail.splice {
                    cx.shared.pipes.give_back(splice.pipe, splice.in_pipe);
                }
                cx.policy.body_done(self.slot, tail.moved);
                self.proxy_finished(cx);
                return;
            }
            Tail::File(file) => {
                if let Some(pipe) = file.pipe {
                    cx.shared.pipes.give_back(pipe, file.in_pipe);
                }
                self.release_file(file.file, cx);
                file.length - file.remaining - u64::from(file.in_pipe)
            }
        };
        cx.policy.body_done(self.slot, moved);
    }

    /// Gives a file back to the cache, or queues its descriptor's close.
    pub(crate) fn release_file<P: Policy>(&mut self, file: FileRef, cx: &mut Context<'_, P>) {
        if let Some(fd) = file.release(&mut cx.shared.files) {
            self.close_later(fd);
        }
    }

    /// Queues the close of a descriptor the connection owns.
    pub(crate) fn close_later(&mut self, fd: RawFd) {
        assert!(
            (self.closes_len as usize) < CLOSES_MAX,
            "too many closes queued"
        );
        self.closes[self.closes_len as usize] = fd;
        self.closes_len += 1;
    }

    /// Sets the deadline for the state the connection is now in: progress
    /// restarts the between-operations timers; the header and idle timers
    /// keep counting from their start.
    pub(crate) fn refresh_timer(&mut self, now: Instant, config: &Config) {
        let timer = self.wanted_timer();
        let restart = timer.restarts() && std::mem::take(&mut self.progressed);
        if timer == self.timer && !restart {
            return;
        }
        let timeouts = &config.timeouts;
        self.timer = timer;
        self.timer_at = match timer {
            Timer::None => None,
            Timer::Header => Some(now + timeouts.header),
            Timer::Body => Some(now + timeouts.body),
            Timer::Idle => {
                if self.idle_served != self.served {
                    self.idle_served = self.served;
                    self.idle_since = now;
                }
                Some(self.idle_since + timeouts.idle)
            }
            Timer::Send => Some(now + timeouts.send),
            Timer::Linger => Some(now + LINGER_TIMEOUT),
        };
    }

    fn wanted_timer(&self) -> Timer {
        match self.phase {
            Phase::Lingering => Timer::Linger,
            Phase::Open | Phase::Finishing => {
                if self.output != Output::Idle {
                    Timer::Send
                } else if self.receiving != Lane::Busy {
                    Timer::None
                } else if let Some(upload) = &*self.upload {
                    // An upgraded connection has no client-side read
                    // timer: its idle bound is the upstream's read
                    // timeout, which traffic either way restarts.
                    if upload.is_tunnel() {
                        Timer::None
                    } else {
                        Timer::Body
                    }
                } else {
                    match self.reading {
                        Reading::Body(_) => Timer::Body,
                        Reading::Head => Timer::Header,
                        Reading::Idle if self.served > 0 && self.recv.is_empty() => Timer::Idle,
                        Reading::Idle => Timer::Header,
                        Reading::Answering | Reading::Proxying(_) => Timer::None,
                    }
                }
            }
            Phase::Free | Phase::Aborting | Phase::Closing => Timer::None,
        }
    }

    /// Takes a pinned body into the tail.
    pub(crate) fn pin_tail(&mut self, pinned: Pinned) {
        debug_assert!(matches!(*self.tail, Tail::None));
        self.tail.set(Tail::Pinned {
            length: pinned.bytes.len() as u64,
            rest: Some(pinned.bytes),
            owner: pinned.owner,
        });
    }

    /// Starts sending a file of `len` bytes from `offset` behind the head.
    pub(crate) fn file_tail<P: Policy>(
        &mut self,
        file: FileRef,
        offset: u64,
        len: u64,
        cx: &mut Context<'_, P>,
    ) {
        debug_assert!(matches!(*self.tail, Tail::None));
        // A connection encrypted in user space needs its bytes to pass
        // through the driver's encryption: no splice, the file is read
        // through the send buffer (a kernel TLS socket seals spliced bytes).
        let pipe = if len > FILE_READ_BYTES_MAX && facts_of(&self.tls).allows_splice() {
            cx.shared.pipes.take()
        } else {
            None
        };
        debug_assert!(pipe.is_none() || facts_of(&self.tls).allows_splice());
        self.tail.set(Tail::File(FileTail {
            file,
            offset,
            remaining: len,
            length: len,
            pipe,
            in_pipe: 0,
        }));
    }
}

/// Linux's `ECANCELED`: a cancelled operation completes with its negation
/// (this crate has no libc dependency outside the `sim` driver).
const ECANCELED: i32 = 125;

/// What a cleartext connection is bound with.
static CLEARTEXT: TlsFacts = TlsFacts::CLEARTEXT;

/// A connection's TLS facts from its (boxed, optional) field.
pub(crate) fn facts_of(tls: &Option<Box<TlsFacts>>) -> &TlsFacts {
    tls.as_deref().unwrap_or(&CLEARTEXT)
}

#[cfg(test)]
mod tests {
    /// Every slot of a worker is made at start and pays a `Connection`
    /// for the worker's life: 10,240 of them in the bench's configuration,
    /// where 600 bytes were 6 MiB of the idle server. What only some
    /// answers use stays out of line ([`Kept`](crate::kept::Kept)); a
    /// field that grows the struct past this needs the same treatment or
    /// a reason here.
    const CONNECTION_BYTES_MAX: usize = 360;

    #[test]
    fn a_connection_keeps_what_few_answers_need_out_of_line() {
        let size = std::mem::size_of::<super::Connection>();
        assert!(
            size <= CONNECTION_BYTES_MAX,
            "Connection is {size} bytes (at most {CONNECTION_BYTES_MAX})"
        );
    }
}
