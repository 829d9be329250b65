//! One connection without a socket: bytes in, response bytes out, through
//! the real [`Http::handle_one`]. Exists for fuzzing and property tests, so
//! that the whole request path (parser → router → exchange → Lua →
//! response builder) can be driven in-process with arbitrary input.
//!
//! The loop mirrors `Worker::drive`: requests are answered while the send
//! buffer has headroom and fewer than `max_pipeline` responses are queued;
//! the connection stops on close and on `NeedMore`. Where the worker would
//! submit a send and wait for its completion, this drains the send buffer
//! (and any response tail: pinned Lua string, file, stream) into the
//! returned `Vec` and goes on, which is what a send completing at once does.
//!
//! Not promised: timeouts (408, idle close), EOF handling and lingering are
//! not modelled: there is no clock and no peer. Unlike the request path,
//! this allocates (the returned `Vec`): it is a test harness.

use std::os::unix::fs::FileExt;

use keystone_lua::{AppSource, LoadedApp};
use keystone_parser::{Head, Limits, Parser};
use keystone_response::DateCache;
use keystone_ringbuf::{split_slab, RingBuffer};

use crate::files::Root;
use crate::http::{Exchange, Http, Step, StreamStep, Tail, SEND_HEADROOM_BYTES};
use crate::watchdog::Pulse;
use crate::worker::SEND_BUFFER_BYTES;

/// The connection's slot key, under which Lua pins large bodies.
const SLOT_KEY: u32 = 0;

/// The `--max-pipeline` default, as `keystone serve` uses it.
pub const MAX_PIPELINE_DEFAULT: u32 = crate::cli::defaults::MAX_PIPELINE;

/// An in-process connection: an [`Http`] plus its receive and send buffers.
pub struct Pipeline {
    http: Http,
    recv: RingBuffer,
    send: RingBuffer,
    state: Exchange,
    tail: Tail,
    /// A response after which the connection closes was produced; later
    /// bytes are discarded, as the worker's lingering close does.
    close_after_send: bool,
    /// The receive buffer filled up without a complete request: the point at
    /// which the worker asserts ("receive buffer full without a complete
    /// request"). Limits are meant to make this unreachable.
    stalled: bool,
}

impl Pipeline {
    /// A connection to `app_source` (a Lua app chunk) with default limits.
    /// Panics if the app does not load: callers pass known-good test apps.
    pub fn new(app_source: &'static str) -> Pipeline {
        Pipeline::with_limits(app_source, Limits::default(), MAX_PIPELINE_DEFAULT)
    }

    /// A connection with the given request limits and `--max-pipeline`.
    pub fn with_limits(app_source: &'static str, limits: Limits, max_pipeline: u32) -> Pipeline {
        assert!(max_pipeline > 0, "max_pipeline must be at least 1");
        let source = AppSource::bundled("pipeline.lua", app_source);
        let loaded = LoadedApp::load(&source, 0, |_| {}).expect("pipeline app loads");
        let statics = Root::open_all(&loaded.statics).expect("static roots open");
        let files = Root::open("", &loaded.files_dir).expect("app directory opens");
        let recv_bytes = u64::from(limits.max_header_bytes) + limits.max_body_bytes;
        let recv_bytes = u32::try_from(recv_bytes).expect("head + body limits fit 4 GiB");
        let recv = split_slab(1, recv_bytes).expect("receive buffer maps");
        let send = split_slab(1, SEND_BUFFER_BYTES).expect("send buffer maps");
        let http = Http {
            worker: 0,
            parser: Parser::new(),
            head: Box::new(Head::new()),
            limits,
            router: loaded.router,
            lua: loaded.lua,
            retired: Vec::new(),
            date: DateCache::new(),
            max_pipeline,
            pulse: std::sync::Arc::new(Pulse::default()),
            statics,
            files,
            route_slots: Vec::new(),
            access: None,
            stats: std::sync::Arc::new(keystone_ops::stats::WorkerStats::default()),
        };
        Pipeline {
            http,
            recv: recv.into_iter().next().expect("one buffer"),
            send: send.into_iter().next().expect("one buffer"),
            state: Exchange::default(),
            tail: Tail::None,
            close_after_send: false,
            stalled: false,
        }
    }

    /// Receives `bytes` and returns every response byte they caused. Bytes
    /// that do not fit the receive buffer even after compaction are dropped
    /// (see [`Pipeline::stalled`]); bytes after a closing response are
    /// discarded.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.http.date.refresh();
        // Each pass takes at least one byte or stops: bounded by bytes.len().
        loop {
            if self.close_after_send {
                break;
            }
            // As `Worker::arm_recv`: compact only when full, between reads.
            if self.recv.spare() == 0 && self.recv.head() > 0 {
                self.recv.compact();
            }
            let take = bytes.len().min(self.recv.spare() as usize);
            if take == 0 && !bytes.is_empty() {
                self.stalled = true;
                break;
            }
            self.recv
                .append(&bytes[..take])
                .expect("take is at most spare");
            bytes = &bytes[take..];
            self.drive(&mut out);
            if bytes.is_empty() {
                break;
            }
        }
        out
    }

    /// Whether a response that closes the connection was produced.
    pub fn closed(&self) -> bool {
        self.close_after_send
    }

    /// Whether the receive buffer filled up without a complete request
    /// (where the worker would have failed its assertion).
    pub fn stalled(&self) -> bool {
        self.stalled
    }

    /// `Worker::drive`: answers buffered requests until close or `NeedMore`.
    fn drive(&mut self, out: &mut Vec<u8>) {
        loop {
            if self.close_after_send {
                break;
            }
            debug_assert!(
                self.tail.is_none(),
                "a tail is drained as soon as it appears"
            );
            if self.state.queued >= self.http.max_pipeline
                || self.send.spare() < SEND_HEADROOM_BYTES
            {
                self.flush(out); // the worker waits for its send here
            }
            debug_assert!(self.send.spare() >= SEND_HEADROOM_BYTES);
            if self.recv.is_empty() || self.state.awaiting > self.recv.len() {
                break;
            }
            let step = self.http.handle_one(
                &mut self.recv,
                &mut self.send,
                &mut self.state,
                &mut self.tail,
                SLOT_KEY,
            );
            match step {
                Step::Answered => {}
                Step::NeedMore => break,
                Step::Close => self.close_after_send = true,
            }
            if !self.tail.is_none() {
                self.flush(out); // the response in progress finishes first
            }
        }
        self.flush(out);
    }

    /// Sends everything queued: the send buffer, then the tail, as
    /// `Worker::flush` and `Worker::on_send` do until nothing is left.
    fn flush(&mut self, out: &mut Vec<u8>) {
        // Each pass empties the send buffer or finishes the tail; a stream
        // ends when its generator does (test apps' generators are finite).
        loop {
            if let Tail::Stream(stream) = &mut self.tail {
                match self.http.fill_stream(&mut self.send, stream, SLOT_KEY) {
                    StreamStep::More => {}
                    StreamStep::Done => self.tail = Tail::None,
                    StreamStep::Failed => {
                        self.tail = Tail::None;
                        self.close_after_send = true;
                    }
                }
            }
            if !self.send.is_empty() {
                out.extend_from_slice(self.send.unconsumed());
                self.send.consume(self.send.len());
                debug_assert_eq!(self.send.head(), 0, "a drained buffer rewinds");
                continue;
            }
            match std::mem::take(&mut self.tail) {
                Tail::None => break,
                Tail::Stream(stream) => self.tail = Tail::Stream(stream),
                Tail::Pinned(body) => {
                    let (ptr, len) = body.remaining();
                    // SAFETY: `ptr..ptr+len` is the unsent part of the Lua
                    // string pinned under SLOT_KEY (`PinnedBody::remaining`);
                    // the state keeps it alive and unmoved until the
                    // `unpin_body` below, after the copy. (The exchange no
                    // longer refers to it: the request has expired.)
                    out.extend_from_slice(unsafe { std::slice::from_raw_parts(ptr, len) });
                    self.http.lua.unpin_body(SLOT_KEY);
                }
                Tail::File(file) => {
                    let start = out.len();
                    let remaining = usize::try_from(file.remaining).expect("file fits memory");
                    out.resize(start + remaining, 0);
                    let file_handle = std::fs::File::from(file.file);
                    if file_handle
                        .read_exact_at(&mut out[start..], file.offset)
                        .is_err()
                    {
                        // The worker closes when a file shrinks mid-send.
                        out.truncate(start);
                        self.close_after_send = true;
                    }
                }
            }
        }
        self.state.queued = 0;
    }
}
