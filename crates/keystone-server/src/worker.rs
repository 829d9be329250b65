//! One worker: a thread pinned to a core with its own listening socket, its
//! own io_uring, its own connection slab and its own Lua state. Nothing here
//! is shared with another worker; the event loop below is the only loop
//! meant to run until told to stop.
//!
//! Connection life: accept → (recv → handle → send)* → shutdown(WR) →
//! drain reads (lingering close, so a response is never lost to a reset) →
//! close → slot free. A slot is reused only once no operation of it is in
//! flight; its generation (in every token) makes late completions harmless.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use keystone_lua::{AppSource, LoadedApp, LuaConfig};
use keystone_parser::{Head, Limits, Parser};
use keystone_reactor::{
    Completion, Reactor, Timespec, Token, COMPLETIONS_PER_PUMP, GENERATION_MASK,
    REGISTERED_BUFFERS_MAX,
};
use keystone_response::DateCache;
use keystone_ringbuf::{split_slab, RingBuffer};

use keystone_ops::access_log::AccessLog;
use keystone_ops::stats::WorkerStats;

use crate::files::Root;
use crate::http::{Exchange, Http, Step, StreamStep, Tail, SEND_HEADROOM_BYTES};
use crate::log::Level;
use crate::watchdog::Pulse;
use std::sync::{mpsc, Arc};

const OP_ACCEPT: u8 = 1;
const OP_RECV: u8 = 2;
const OP_SEND: u8 = 3;
const OP_CLOSE: u8 = 4;
const OP_SHUTDOWN: u8 = 5;
const OP_CANCEL: u8 = 6;
const OP_WAKE: u8 = 7;
const OP_TICK: u8 = 8;
const OP_SPLICE_IN: u8 = 9;
const OP_SPLICE_OUT: u8 = 10;
const OP_LOG: u8 = 11;

/// What the output operation in flight is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Output {
    /// Bytes of the send buffer.
    #[default]
    Buffer,
    /// A pinned Lua string.
    Pinned,
    /// File → pipe.
    SpliceIn,
    /// Pipe → socket.
    SpliceOut,
}

/// Bytes moved per file splice: the default pipe capacity (16 pages), so
/// the pipe → socket half always has room to take what the file half put.
const PIPE_BYTES: u32 = 64 * 1024;

/// Slot number used by operations that belong to the worker, not a
/// connection (accept, wake-up, tick).
const WORKER_SLOT: u32 = u32::MAX;

/// Submission queue entries. Each connection has at most two operations
/// queued per turn (recv and send); a full queue is flushed, not an error.
const RING_ENTRIES: u32 = 1024;
/// Response bytes buffered per connection: room for 16 pipelined small
/// responses per send, plus the headroom one more response needs.
pub const SEND_BUFFER_BYTES: u32 = 64 * 1024;
const _: () = assert!(SEND_BUFFER_BYTES >= 2 * SEND_HEADROOM_BYTES);
/// Accepted connections parked while the slab is full (accept is cancelled
/// meanwhile); beyond it a connection is closed, with one warning.
const PENDING_ACCEPTS_MAX: usize = 64;
/// How long a closing connection may keep sending us bytes before we close
/// it anyway (nginx's `lingering_time` is 30 s, `lingering_timeout` 5 s;
/// the short one suits a server that only discards).
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// Leading bytes of a connection's receive buffer registered with the ring
/// as its fixed buffer (reads that start inside it use `READ_FIXED`).
///
/// Why one page: registering pins (and faults in) every page of the range
/// for as long as the connection is active, so the window is sized to what
/// an active connection keeps resident anyway — its first page — and
/// pinned memory stays at 4 KiB per active connection (10,000 active: 40
/// MiB) instead of the buffer's full capacity. A request head, or a ×16
/// pipelined burst of typical ones, fits; bytes past it (large heads,
/// bodies) are received into the rest of the same buffer by plain `recv`,
/// still without a copy.
const FIXED_WINDOW_BYTES: u32 = 4096;
/// How long a keep-alive connection waits for its next request before its
/// buffers' pages (and its registered window) are given back. Why a second:
/// a busy connection is "idle" for microseconds between every two requests;
/// only one that stayed idle across a whole tick is worth the `madvise`,
/// unregistering and the page faults when it wakes up. (nginx frees a
/// keep-alive connection's header buffer as soon as it goes idle, and
/// allocates a new one on the next request.)
const IDLE_RELEASE_AFTER: Duration = Duration::from_secs(1);
/// The tick that drives deadlines; deadlines are checked at this grain.
const TICK: Timespec = Timespec::new().sec(1);

/// Everything a worker thread needs, moved into it at spawn.
pub struct WorkerConfig {
    /// 0-based worker index.
    pub index: u32,
    /// This worker's SO_REUSEPORT listening socket.
    pub listener: OwnedFd,
    /// eventfd the main thread writes to start draining.
    pub wake: OwnedFd,
    /// The app to load into this worker's Lua state.
    pub app: AppSource,
    /// Module paths, C-module allow-list, sandbox switch.
    pub lua: LuaConfig,
    /// Request limits.
    pub limits: Limits,
    /// Connection slots.
    pub max_connections: u32,
    /// Connection timeouts.
    pub timeouts: Timeouts,
    /// Responses one connection may have queued but not yet sent.
    pub max_pipeline: u32,
    /// This worker's heartbeat for the handler-budget watchdog.
    pub pulse: Arc<Pulse>,
    /// Apps to reload, each announced by a [`RELOAD_WAKE`] on `wake`.
    pub reloads: mpsc::Receiver<AppSource>,
    /// This worker's counters (read by the admin listener).
    pub stats: Arc<WorkerStats>,
    /// Where access-log lines go, when on.
    pub access_log: Option<OwnedFd>,
    /// Use a submission-polling kernel thread.
    pub sqpoll: bool,
}

/// How long an SQPOLL thread spins without work before sleeping: long
/// enough to ride through gaps between request bursts, short enough that an
/// idle server does not burn a core.
const SQPOLL_IDLE_MS: u32 = 50;

/// Added to a worker's wake eventfd to ask it to drain.
pub const DRAIN_WAKE: u64 = 1 << 32;
/// Added to a worker's wake eventfd to ask it to reload (eventfd sums
/// writes, so both requests survive arriving together).
pub const RELOAD_WAKE: u64 = 1;
const RELOAD_MASK: u64 = DRAIN_WAKE - 1;

/// Which timeout a connection's deadline is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Timer {
    #[default]
    None,
    /// Waiting for a complete request head (counted from its first byte, or
    /// from accept for the first request): slowloris defence → 408.
    Header,
    /// Waiting for more body bytes (between reads) → 408.
    Body,
    /// Keep-alive: waiting for the next request → close.
    Idle,
    /// Waiting for the peer to take our bytes (between writes) → close.
    Send,
    /// Discarding reads before close.
    Linger,
}

/// Timeouts, each between two points named in [`Timer`].
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Whole request head.
    pub header: Duration,
    /// Between two reads of a body.
    pub body: Duration,
    /// Keep-alive idle.
    pub idle: Duration,
    /// Between two writes.
    pub send: Duration,
}

#[derive(Default)]
struct Conn {
    fd: RawFd,
    generation: u32,
    ops_in_flight: u8,
    recv_armed: bool,
    /// Bytes of the send in flight (0: none).
    sending: u32,
    output: Output,
    close_after_send: bool,
    closing: bool,
    close_submitted: bool,
    lingering: bool,
    /// When `timer` fires (checked by the once-a-second tick).
    deadline: Option<Instant>,
    timer: Timer,
    /// Requests answered on this connection (0: still waiting for the first).
    served: u32,
    /// The tick cancelled the idle read to release the receive buffer.
    idle_cancel: bool,
    /// A read on this connection returned bytes since it was accepted or
    /// its buffer was released: the next reads earn a registered buffer.
    warm: bool,
    /// The read in flight is a `READ_FIXED` into the registered window.
    read_fixed: bool,
    /// Registering this connection's buffer failed (e.g. `RLIMIT_MEMLOCK`);
    /// it reads unregistered until it closes.
    fixed_refused: bool,
    http: Exchange,
    tail: Tail,
    /// The pipe files are spliced through, made on first use.
    pipe: Option<[OwnedFd; 2]>,
}

struct Slot {
    conn: Conn,
    recv: RingBuffer,
    send: RingBuffer,
    /// `recv`'s first [`FIXED_WINDOW_BYTES`] are registered with the ring as
    /// fixed buffer number `slot` (and pinned in `recv`). Outlives
    /// connections: the next connection in the slot reads into the same
    /// memory; only releasing the pages (idle) ends it.
    registered: bool,
    /// Free at the last tick with pages or a registration: if still free at
    /// the next, they are given back (a spike's slots do not stay resident).
    cooling: bool,
}

/// Starts a worker: loads the app, then serves until drained. Returns an
/// error message for start-up failures.
pub fn run(config: WorkerConfig, ready: impl FnOnce(Result<(), String>)) {
    config.pulse.register_thread();
    let mut worker = match Worker::new(config) {
        Ok(worker) => worker,
        Err(message) => return ready(Err(message)),
    };
    ready(Ok(()));
    if let Err(err) = worker.event_loop() {
        crate::log!(
            Level::Error,
            Some(worker.http.worker),
            "event loop failed: {err}"
        );
    }
}

struct Worker {
    /// Declared first so the ring (and with it every buffer registration)
    /// goes before the slab it points into.
    reactor: Reactor,
    /// Slots `0..fixed_slots` have an entry in the ring's registered-buffer
    /// table (0: registration unavailable).
    fixed_slots: u32,
    /// A registration failure was logged.
    fixed_warned: bool,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: u32,
    listener: Option<OwnedFd>,
    accept_armed: bool,
    pending: Vec<RawFd>,
    pending_warned: bool,
    wake: OwnedFd,
    wake_buf: Box<[u8; 8]>,
    tick: Box<Timespec>,
    draining: bool,
    reloads: mpsc::Receiver<AppSource>,
    lua_config: LuaConfig,
    timeouts: Timeouts,
    /// The clock, read once per loop turn.
    now: Instant,
    http: Http,
}

impl Worker {
    fn new(config: WorkerConfig) -> Result<Worker, String> {
        let index = config.index;
        let loaded = LoadedApp::load_with(&config.app, index, &config.lua, move |line| {
            crate::log!(Level::Info, Some(index), "lua: {line}");
        })
        .map_err(|err| err.to_string())?;
        let recv_bytes = u64::from(config.limits.max_header_bytes) + config.limits.max_body_bytes;
        let recv_bytes = u32::try_from(recv_bytes).map_err(|_| {
            format!("--max-header-bytes + --max-body-bytes = {recv_bytes} exceeds 4 GiB")
        })?;
        let recvs = split_slab(config.max_connections, recv_bytes).map_err(|e| e.to_string())?;
        let sends =
            split_slab(config.max_connections, SEND_BUFFER_BYTES).map_err(|e| e.to_string())?;
        let slots = recvs
            .into_iter()
            .zip(sends)
            .map(|(recv, send)| Slot {
                conn: Conn {
                    fd: -1,
                    ..Conn::default()
                },
                recv,
                send,
                registered: false,
                cooling: false,
            })
            .collect();
        let (statics, files) = open_roots(&loaded)?;
        let mut reactor =
            Reactor::with_sqpoll(RING_ENTRIES, config.sqpoll.then_some(SQPOLL_IDLE_MS))
                .map_err(|e| format!("io_uring setup failed: {e}{}", memlock_hint(&e)))?;
        // Slots past the kernel's table size (16,384) read unregistered.
        let fixed_slots = config.max_connections.min(REGISTERED_BUFFERS_MAX);
        let fixed_slots = match reactor.register_buffer_table(fixed_slots) {
            Ok(()) => fixed_slots,
            Err(err) => {
                crate::log!(
                    Level::Warn,
                    Some(index),
                    "io_uring registered buffers unavailable ({err}); receiving into unregistered buffers"
                );
                0
            }
        };
        Ok(Worker {
            reactor,
            fixed_slots,
            fixed_warned: false,
            slots,
            free: (0..config.max_connections).rev().collect(),
            live: 0,
            listener: Some(config.listener),
            accept_armed: false,
            pending: Vec::with_capacity(PENDING_ACCEPTS_MAX),
            pending_warned: false,
            wake: config.wake,
            wake_buf: Box::new([0; 8]),
            tick: Box::new(TICK),
            draining: false,
            reloads: config.reloads,
            lua_config: config.lua,
            timeouts: config.timeouts,
            now: Instant::now(),
            http: Http {
                worker: index,
                parser: Parser::new(),
                head: Box::new(Head::new()),
                limits: config.limits,
                router: loaded.router,
                lua: loaded.lua,
                retired: Vec::new(),
                date: DateCache::new(),
                max_pipeline: config.max_pipeline,
                pulse: config.pulse,
                statics,
                files,
                route_slots: config.stats.route_slots(&loaded.routes),
                access: config.access_log.map(AccessLog::new),
                stats: config.stats,
            },
        })
    }

    fn event_loop(&mut self) -> std::io::Result<()> {
        self.arm_accept();
        self.arm_wake();
        // SAFETY: `tick` is boxed and lives as long as the worker (and so
        // the ring, which is dropped with it).
        unsafe {
            self.reactor
                .tick(&*self.tick, Token::new(WORKER_SLOT, 0, OP_TICK))
        };
        let mut completions = [Completion::EMPTY; COMPLETIONS_PER_PUMP];
        while !(self.draining && self.live == 0 && !self.accept_armed) {
            let count = self.reactor.pump(&mut completions)?;
            self.http.date.refresh();
            self.now = Instant::now();
            for completion in &completions[..count] {
                self.complete(*completion);
            }
            self.write_access_log(false);
        }
        if let Some(log) = &mut self.http.access {
            if !log.in_flight() {
                log.flush_blocking();
            }
        }
        self.reactor.flush()
    }

    fn complete(&mut self, c: Completion) {
        let token = c.token;
        if token.slot() == WORKER_SLOT {
            return match token.op() {
                OP_ACCEPT => self.on_accept(c),
                OP_WAKE => self.on_wake(c),
                OP_TICK => {
                    self.on_tick();
                    self.write_access_log(true);
                }
                OP_LOG => {
                    let failure = self
                        .http
                        .access
                        .as_mut()
                        .and_then(|log| log.written(c.result));
                    if let Some(message) = failure {
                        crate::log!(Level::Error, Some(self.http.worker), "{message}");
                    }
                    self.write_access_log(false);
                }
                _ => {}
            };
        }
        let slot = token.slot() as usize;
        let conn = &mut self.slots[slot].conn;
        if conn.fd < 0 || conn.generation != token.generation() {
            return; // a late completion of a slot since reused
        }
        if token.op() != OP_CANCEL {
            debug_assert!(conn.ops_in_flight > 0);
            conn.ops_in_flight -= 1;
        }
        match token.op() {
            OP_RECV => self.on_recv(slot, c.result),
            OP_SEND | OP_SPLICE_IN | OP_SPLICE_OUT => self.on_send(slot, c.result),
            OP_SHUTDOWN => self.on_shutdown(slot),
            OP_CLOSE => return self.on_close(slot),
            _ => {}
        }
        self.finish_if_closing(slot);
        self.refresh_timer(slot);
    }

    fn token(&self, slot: usize, op: u8) -> Token {
        Token::new(slot as u32, self.slots[slot].conn.generation, op)
    }

    // --- accepting ---------------------------------------------------

    fn arm_accept(&mut self) {
        if let Some(listener) = &self.listener {
            if !self.accept_armed && !self.draining {
                self.reactor
                    .accept_multishot(listener.as_raw_fd(), Token::new(WORKER_SLOT, 0, OP_ACCEPT));
                self.accept_armed = true;
            }
        }
    }

    fn on_accept(&mut self, c: Completion) {
        if !c.more() {
            self.accept_armed = false;
        }
        if c.result >= 0 {
            self.adopt(c.result);
        } else if c.result != -libc::ECANCELED {
            crate::log!(
                Level::Warn,
                Some(self.http.worker),
                "accept failed: {}",
                errno_text(c.result)
            );
        }
        if self.draining {
            if !self.accept_armed {
                self.listener = None;
            }
        } else if self.free.is_empty() && self.accept_armed {
            // Slab full: stop accepting; new connections wait in the backlog.
            self.reactor.cancel(
                Token::new(WORKER_SLOT, 0, OP_ACCEPT),
                Token::new(WORKER_SLOT, 0, OP_CANCEL),
            );
        } else if !self.free.is_empty() {
            self.arm_accept();
        }
    }

    fn adopt(&mut self, fd: RawFd) {
        if self.draining {
            // SAFETY: `fd` was just accepted and is owned by nobody else.
            unsafe { libc::close(fd) };
            return;
        }
        let Some(slot) = self.free.pop() else {
            if self.pending.len() < PENDING_ACCEPTS_MAX {
                self.pending.push(fd);
            } else {
                if !self.pending_warned {
                    crate::log!(Level::Warn, Some(self.http.worker), "connection slab and accept queue full: closing new connections (raise --max-connections)");
                    self.pending_warned = true;
                }
                // SAFETY: as above.
                unsafe { libc::close(fd) };
            }
            return;
        };
        set_nodelay(fd);
        self.slots[slot as usize].cooling = false;
        let conn = &mut self.slots[slot as usize].conn;
        debug_assert!(conn.fd < 0 && conn.ops_in_flight == 0);
        let generation = conn.generation;
        *conn = Conn {
            fd,
            generation,
            ..Conn::default()
        };
        self.live += 1;
        self.http.stats.accepted.add(1);
        self.http.stats.open.add(1);
        self.slots[slot as usize].conn.http.fd = fd;
        if self.http.access.is_some() {
            self.slots[slot as usize].conn.http.peer = peer_addr(fd);
        }
        self.arm_recv(slot as usize);
        self.refresh_timer(slot as usize);
    }

    // --- reading -----------------------------------------------------

    fn arm_recv(&mut self, slot: usize) {
        let token = self.token(slot, OP_RECV);
        let Slot { conn, recv, .. } = &mut self.slots[slot];
        debug_assert!(!conn.recv_armed);
        if conn.lingering {
            // Closing: what is buffered will never be read; discard it so
            // the lingering reads have room.
            recv.reset_for_reuse();
        } else if recv.spare() == 0 && recv.head() > 0 {
            recv.compact();
        }
        // Limits make a request always fit (capacity = head + body limits)
        // and a refused one closes the connection, so a full buffer here is
        // an engine bug; still, one connection must not take the worker
        // down: close it.
        debug_assert!(
            recv.spare() > 0,
            "receive buffer full without a complete request"
        );
        if recv.spare() == 0 {
            crate::log!(
                Level::Error,
                Some(self.http.worker),
                "receive buffer full without a complete request; closing the connection"
            );
            return self.begin_close_now(slot);
        }
        let wants_fixed = conn.warm && !conn.fixed_refused && !conn.lingering;
        if wants_fixed && !self.slots[slot].registered && (slot as u32) < self.fixed_slots {
            self.register_window(slot);
        }
        let Slot {
            conn,
            recv,
            registered,
            ..
        } = &mut self.slots[slot];
        let window = recv.pinned();
        let fd = conn.fd;
        let (ptr, len) = recv.spare_ptr();
        conn.read_fixed = *registered && recv.tail() < window;
        if conn.read_fixed {
            // SAFETY: [tail, window) lies inside this slot's registered
            // window (fixed buffer number `slot`), which stays registered
            // and pinned until this read's completion: `release_window`
            // runs only with no read in flight (an idle connection's after
            // its cancelled read was reaped, or a free slot's).
            // The bytes belong to this slot alone; `recv_armed` blocks
            // compaction and processing meanwhile.
            unsafe {
                self.reactor
                    .read_fixed(fd, ptr, len.min(window - recv.tail()), slot as u16, token)
            };
        } else {
            // SAFETY: the spare region belongs to this slot's buffer, which
            // lives as long as the worker; nothing touches it until the
            // completion (`recv_armed` blocks compaction and processing).
            unsafe { self.reactor.recv(fd, ptr, len, token) };
        }
        conn.recv_armed = true;
        conn.ops_in_flight += 1;
    }

    /// Registers the slot's receive window with the ring (one
    /// `io_uring_register`; the kernel pins and faults in its page). A
    /// refusal — `RLIMIT_MEMLOCK` for an unprivileged user with many active
    /// connections — leaves the connection on plain `recv`, logged once.
    fn register_window(&mut self, slot: usize) {
        let Slot {
            conn,
            recv,
            registered,
            ..
        } = &mut self.slots[slot];
        let (ptr, len) = recv.pin_prefix(FIXED_WINDOW_BYTES);
        // SAFETY: [ptr, ptr+len) is the start of this slot's region of the
        // slab, which stays mapped for the worker's life, longer than the
        // ring (field order). Its pages are never given back while
        // registered: `pin_prefix` keeps `reset_for_reuse`/`release_idle`
        // off them, and `release_window` unregisters before unpinning.
        let result = unsafe { self.reactor.register_buffer(slot as u16, ptr, len as usize) };
        match result {
            Ok(()) => {
                *registered = true;
                self.http.stats.registered_buffers.add(1);
            }
            Err(err) => {
                recv.unpin();
                conn.fixed_refused = true;
                if !std::mem::replace(&mut self.fixed_warned, true) {
                    crate::log!(
                        Level::Warn,
                        Some(self.http.worker),
                        "registering a receive buffer with io_uring failed ({err}); such connections read into unregistered buffers (raise RLIMIT_MEMLOCK)"
                    );
                }
            }
        }
    }

    fn on_recv(&mut self, slot: usize, result: i32) {
        let Slot { conn, recv, .. } = &mut self.slots[slot];
        conn.recv_armed = false;
        let idle_cancel = std::mem::take(&mut conn.idle_cancel);
        if idle_cancel && result == -libc::ECANCELED && !conn.closing {
            // The tick cancelled an idle read to release its pages: end the
            // registration first (the kernel must not hold pages we give
            // back), and read unregistered until the connection is warm.
            conn.warm = false;
            release_window(
                &mut self.reactor,
                &mut self.slots[slot],
                slot,
                &self.http.stats,
            );
            self.slots[slot].recv.release_idle();
            return self.arm_recv(slot);
        }
        if conn.closing {
            if conn.lingering {
                // Discard what a closing peer still sends, until EOF.
                recv.reset_for_reuse();
                if result > 0 && conn.timer == Timer::Linger {
                    self.arm_recv(slot);
                }
            }
            return;
        }
        if result <= 0 {
            // EOF or error: whatever was queued is still sent, then close.
            conn.close_after_send = true;
            return self.after_drive(slot, false);
        }
        recv.commit(result as u32);
        conn.warm = true;
        self.http.stats.bytes_in.add(result as u64);
        if conn.read_fixed {
            self.http.stats.receives_registered.add(1);
        } else {
            self.http.stats.receives_plain.add(1);
        }
        self.drive(slot);
    }

    // --- handling ----------------------------------------------------

    /// Answers every complete request buffered, as far as send space
    /// allows, then arranges the next I/O.
    fn drive(&mut self, slot: usize) {
        let Slot {
            conn, recv, send, ..
        } = &mut self.slots[slot];
        let mut need_more = false;
        loop {
            if conn.close_after_send || !conn.tail.is_none() {
                break; // the response in progress finishes first
            }
            if conn.recv_armed {
                // A receive is in flight: the buffer holds no complete
                // request (we arm only then), and its tail must not move.
                need_more = true;
                break;
            }
            if conn.http.queued >= self.http.max_pipeline {
                break; // --max-pipeline answers wait for the send to drain
            }
            if send.spare() < SEND_HEADROOM_BYTES {
                if conn.sending == 0 && send.head() > 0 {
                    send.compact();
                }
                if send.spare() < SEND_HEADROOM_BYTES {
                    break; // wait for the send in flight to free room
                }
            }
            if recv.is_empty() || conn.http.awaiting > recv.len() {
                need_more = true;
                break;
            }
            match self
                .http
                .handle_one(recv, send, &mut conn.http, &mut conn.tail, slot as u32)
            {
                Step::Answered => conn.served += 1,
                Step::NeedMore => {
                    need_more = true;
                    break;
                }
                Step::Close => conn.close_after_send = true,
            }
        }
        self.after_drive(slot, need_more);
    }

    fn after_drive(&mut self, slot: usize, need_more: bool) {
        let draining = self.draining;
        let Slot { conn, recv, .. } = &mut self.slots[slot];
        if conn.closing {
            return;
        }
        if draining && need_more && recv.is_empty() && conn.http.awaiting == 0 {
            conn.close_after_send = true; // idle while draining: finish and close
        }
        if conn.sending == 0 && !self.flush(slot) && self.slots[slot].conn.close_after_send {
            return self.begin_close(slot);
        }
        let conn = &self.slots[slot].conn;
        if need_more && !conn.recv_armed && !conn.close_after_send {
            self.arm_recv(slot);
        }
    }

    // --- writing -----------------------------------------------------

    /// Starts the next output operation of an idle connection: buffered
    /// bytes first, then the response's tail (pinned string, file splice,
    /// stream chunks). Returns false when there is nothing to output.
    fn flush(&mut self, slot: usize) -> bool {
        let Slot { conn, send, .. } = &mut self.slots[slot];
        debug_assert_eq!(conn.sending, 0);
        if let Tail::Stream(stream) = &mut conn.tail {
            if send.spare() > 0 && send.head() > 0 && send.is_empty() {
                send.compact();
            }
            match self.http.fill_stream(send, stream, slot as u32) {
                StreamStep::More => {}
                StreamStep::Done => conn.tail = Tail::None,
                StreamStep::Failed => {
                    // Abort: what is queued goes out, no terminating chunk.
                    conn.tail = Tail::None;
                    conn.close_after_send = true;
                }
            }
        }
        if !send.is_empty() {
            let bytes = send.unconsumed();
            let (ptr, len) = (bytes.as_ptr(), bytes.len() as u32);
            // SAFETY: this slot's send buffer: appends land past these bytes
            // and compaction waits for `sending == 0`.
            self.submit_send(slot, ptr, len, Output::Buffer);
            return true;
        }
        match &mut self.slots[slot].conn.tail {
            Tail::None | Tail::Stream(_) => false,
            Tail::Pinned(body) => {
                let (ptr, len) = body.remaining();
                let len = len.min(u32::MAX as usize) as u32;
                // SAFETY: a pinned Lua string, kept alive until its last byte
                // is sent (the worker unpins it then).
                self.submit_send(slot, ptr, len, Output::Pinned);
                true
            }
            Tail::File(_) => self.splice_file(slot),
        }
    }

    fn submit_send(&mut self, slot: usize, ptr: *const u8, len: u32, what: Output) {
        let token = self.token(slot, OP_SEND);
        let conn = &mut self.slots[slot].conn;
        // SAFETY: callers pass bytes that stay valid and unmodified until
        // the completion (see each call site).
        unsafe { self.reactor.send(conn.fd, ptr, len, token) };
        conn.sending = len.max(1);
        conn.output = what;
        conn.ops_in_flight += 1;
    }

    /// Moves the next piece of a file: file → pipe, then pipe → socket.
    fn splice_file(&mut self, slot: usize) -> bool {
        let token_in = self.token(slot, OP_SPLICE_IN);
        let token_out = self.token(slot, OP_SPLICE_OUT);
        let conn = &mut self.slots[slot].conn;
        if conn.pipe.is_none() {
            match pipe() {
                Ok(pipe) => conn.pipe = Some(pipe),
                Err(err) => {
                    crate::log!(Level::Error, Some(self.http.worker), "pipe: {err}; closing");
                    conn.tail = Tail::None;
                    self.begin_close_now(slot);
                    return true;
                }
            }
        }
        let [read_end, write_end] = conn.pipe.as_ref().expect("pipe just made");
        let Tail::File(file) = &conn.tail else {
            unreachable!("splice without a file")
        };
        if file.in_pipe > 0 {
            self.reactor
                .splice(read_end.as_raw_fd(), -1, conn.fd, file.in_pipe, token_out);
            conn.output = Output::SpliceOut;
            conn.sending = file.in_pipe;
        } else {
            let len = file.remaining.min(u64::from(PIPE_BYTES)) as u32;
            debug_assert!(len > 0);
            self.reactor.splice(
                file.file.as_raw_fd(),
                file.offset as i64,
                write_end.as_raw_fd(),
                len,
                token_in,
            );
            conn.output = Output::SpliceIn;
            conn.sending = len;
        }
        conn.ops_in_flight += 1;
        true
    }

    fn on_send(&mut self, slot: usize, result: i32) {
        let Slot { conn, send, .. } = &mut self.slots[slot];
        debug_assert!(conn.sending > 0);
        conn.sending = 0;
        if conn.closing {
            return;
        }
        if result <= 0 {
            // The peer is gone (or the file shrank): nothing more can be
            // delivered with correct framing.
            if conn.output == Output::SpliceIn && result == 0 {
                crate::log!(
                    Level::Warn,
                    Some(self.http.worker),
                    "file shrank while being sent; closing the connection"
                );
            }
            send.consume(send.len());
            self.release_tail(slot);
            return self.begin_close_now(slot);
        }
        let moved = result as u32;
        if conn.output != Output::SpliceIn {
            self.http.stats.bytes_out.add(u64::from(moved));
        }
        match (conn.output, &mut conn.tail) {
            (Output::Buffer, _) => send.consume(moved),
            (Output::Pinned, Tail::Pinned(body)) => {
                body.sent += moved as usize;
                if body.remaining().1 == 0 {
                    self.release_tail(slot);
                }
            }
            (Output::SpliceIn, Tail::File(file)) => {
                file.in_pipe = moved;
                file.offset += u64::from(moved);
                file.remaining -= u64::from(moved);
            }
            (Output::SpliceOut, Tail::File(file)) => {
                file.in_pipe -= moved;
                if file.in_pipe == 0 && file.remaining == 0 {
                    conn.tail = Tail::None;
                }
            }
            (output, _) => unreachable!("{output:?} completion without its tail"),
        }
        if self.flush(slot) {
            return;
        }
        let conn = &mut self.slots[slot].conn;
        conn.http.queued = 0;
        if conn.close_after_send {
            return self.begin_close(slot);
        }
        // Room again: answer pipelined requests that were waiting.
        self.drive(slot);
    }

    /// Lets go of a response tail; a Lua string or generator is unpinned.
    fn release_tail(&mut self, slot: usize) {
        let tail = std::mem::take(&mut self.slots[slot].conn.tail);
        self.http.unpin_tail(&tail, slot as u32);
    }

    // --- closing -----------------------------------------------------

    /// Graceful close: FIN after the last response, then discard reads
    /// until the peer closes (or the linger deadline), then close.
    fn begin_close(&mut self, slot: usize) {
        let token = self.token(slot, OP_SHUTDOWN);
        let conn = &mut self.slots[slot].conn;
        debug_assert!(!conn.closing);
        conn.closing = true;
        if conn.recv_armed {
            // A read is pending: shut both ways so it returns, then close.
            // SAFETY: `fd` is this connection's open socket.
            unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
            return;
        }
        conn.lingering = true;
        conn.timer = Timer::Linger;
        conn.deadline = Some(self.now + LINGER_TIMEOUT);
        self.reactor.shutdown(conn.fd, libc::SHUT_WR, token);
        conn.ops_in_flight += 1;
    }

    /// Abortive close: the peer is gone, no lingering.
    fn begin_close_now(&mut self, slot: usize) {
        let conn = &mut self.slots[slot].conn;
        conn.closing = true;
        conn.lingering = false;
        if conn.recv_armed {
            // SAFETY: `fd` is this connection's open socket.
            unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
        }
    }

    fn on_shutdown(&mut self, slot: usize) {
        let conn = &self.slots[slot].conn;
        if conn.lingering && !conn.recv_armed {
            self.arm_recv(slot);
        }
    }

    /// Submits the close once a closing connection has nothing in flight.
    fn finish_if_closing(&mut self, slot: usize) {
        let token = self.token(slot, OP_CLOSE);
        let conn = &mut self.slots[slot].conn;
        if conn.fd < 0 || !conn.closing || conn.ops_in_flight > 0 || conn.close_submitted {
            return;
        }
        conn.close_submitted = true;
        self.reactor.close(conn.fd, token);
        conn.ops_in_flight += 1;
    }

    fn on_close(&mut self, slot: usize) {
        self.release_tail(slot);
        let Slot {
            conn, recv, send, ..
        } = &mut self.slots[slot];
        debug_assert_eq!(conn.ops_in_flight, 0);
        let generation = (conn.generation + 1) & GENERATION_MASK;
        *conn = Conn {
            fd: -1,
            generation,
            ..Conn::default()
        };
        recv.reset_for_reuse();
        send.reset_for_reuse();
        self.free.push(slot as u32);
        self.live -= 1;
        self.http.stats.open.sub(1);
        if let Some(fd) = self.pending.pop() {
            return self.adopt(fd);
        }
        self.arm_accept();
    }

    // --- worker events -------------------------------------------------

    /// Submits a batch of access-log lines when one is ready (`force`: the
    /// tick, any bytes at all).
    fn write_access_log(&mut self, force: bool) {
        let Some(log) = &mut self.http.access else {
            return;
        };
        if let Some((ptr, len)) = log.take_batch(force) {
            // SAFETY: the batch stays untouched until its completion
            // (`in_flight`), and the log outlives the ring (field order).
            unsafe {
                self.reactor
                    .write(log.fd(), ptr, len, Token::new(WORKER_SLOT, 0, OP_LOG))
            };
        }
    }

    /// Loads the app the main thread sent and swaps it in. Runs between
    /// completions, so no handler is running: requests already answered
    /// were answered by the old code, the next one runs the new code.
    fn reload(&mut self) {
        let Ok(app) = self.reloads.try_recv() else {
            return;
        };
        let index = self.http.worker;
        let log = move |line: &str| crate::log!(Level::Info, Some(index), "lua: {line}");
        match LoadedApp::load_with(&app, index, &self.lua_config, log) {
            Ok(loaded) => {
                let (statics, files) = match open_roots(&loaded) {
                    Ok(roots) => roots,
                    Err(err) => {
                        crate::log!(
                            Level::Error,
                            Some(index),
                            "reload failed, keeping the running app: {err}"
                        );
                        return;
                    }
                };
                self.http.statics = statics;
                self.http.files = files;
                self.http.route_slots = self.http.stats.route_slots(&loaded.routes);
                self.http.stats.reloads.add(1);
                let routes = loaded.routes.len();
                self.http.router = loaded.router;
                let old = std::mem::replace(&mut self.http.lua, loaded.lua);
                // Bodies still being sent may point into the old state's
                // strings: keep it until none are pinned.
                self.http.retired.push(old);
                self.drop_retired();
                crate::log!(
                    Level::Info,
                    Some(index),
                    "reloaded {} ({routes} routes)",
                    app.path.display()
                );
            }
            Err(err) => {
                crate::log!(
                    Level::Error,
                    Some(index),
                    "reload failed, keeping the running app: {err}"
                );
            }
        }
    }

    fn drop_retired(&mut self) {
        let lua_tails = |s: &Slot| matches!(s.conn.tail, Tail::Pinned(_) | Tail::Stream(_));
        if !self.http.retired.is_empty() && !self.slots.iter().any(lua_tails) {
            self.http.retired.clear();
        }
    }

    fn arm_wake(&mut self) {
        let fd = self.wake.as_raw_fd();
        let buf = self.wake_buf.as_mut_ptr();
        // SAFETY: `wake_buf` is boxed and lives as long as the worker.
        unsafe {
            self.reactor
                .read(fd, buf, 8, Token::new(WORKER_SLOT, 0, OP_WAKE))
        };
    }

    /// The main thread asked us to drain: stop accepting, close idle
    /// connections, finish the rest.
    fn on_wake(&mut self, c: Completion) {
        let value = u64::from_ne_bytes(*self.wake_buf);
        if c.result == 8 && value & RELOAD_MASK != 0 {
            self.reload();
        }
        let drain = c.result == 8 && value >= DRAIN_WAKE;
        if !drain || self.draining {
            if !self.draining {
                self.arm_wake();
            }
            return;
        }
        self.draining = true;
        crate::log!(
            Level::Info,
            Some(self.http.worker),
            "draining {} connections",
            self.live
        );
        if self.accept_armed {
            self.reactor.cancel(
                Token::new(WORKER_SLOT, 0, OP_ACCEPT),
                Token::new(WORKER_SLOT, 0, OP_CANCEL),
            );
        } else {
            self.listener = None;
        }
        for fd in self.pending.drain(..) {
            // SAFETY: parked accepted sockets are owned by this worker.
            unsafe { libc::close(fd) };
        }
        for slot in &mut self.slots {
            let conn = &mut slot.conn;
            let idle = conn.fd >= 0 && conn.recv_armed && slot.recv.is_empty() && conn.sending == 0;
            if idle && !conn.closing {
                conn.close_after_send = true;
                // SAFETY: `fd` is an open socket of this worker; the pending
                // recv returns 0 and the normal close path follows.
                unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
            }
        }
    }

    /// Sets the connection's deadline for the state it is now in. Called
    /// after every completion of the slot: progress restarts the between-
    /// operations timers; the header timer keeps counting from its start.
    fn refresh_timer(&mut self, slot: usize) {
        let now = self.now;
        let timeouts = self.timeouts;
        let Slot { conn, recv, .. } = &mut self.slots[slot];
        if conn.fd < 0 || conn.closing {
            return;
        }
        let (timer, restart) = if conn.sending > 0 {
            (Timer::Send, true)
        } else if !conn.recv_armed {
            (Timer::None, true)
        } else if conn.http.awaiting > 0 || conn.http.in_body() {
            (Timer::Body, true)
        } else if recv.is_empty() && conn.served > 0 {
            (Timer::Idle, false)
        } else {
            (Timer::Header, false)
        };
        if timer == conn.timer && !restart {
            return;
        }
        conn.timer = timer;
        conn.deadline = match timer {
            Timer::None | Timer::Linger => None,
            Timer::Header => Some(now + timeouts.header),
            Timer::Body => Some(now + timeouts.body),
            Timer::Idle => Some(now + timeouts.idle),
            Timer::Send => Some(now + timeouts.send),
        };
    }

    /// Once a second: act on connections whose deadline has passed (and
    /// free Lua states retired by a reload once nothing points into them). A
    /// pending operation is woken by shutting the socket down; the normal
    /// completion path then closes the connection.
    fn on_tick(&mut self) {
        self.drop_retired();
        let now = Instant::now();
        // The idle deadline was set to `idle start + keep-alive timeout`;
        // a deadline at or before this one means idle for a whole
        // IDLE_RELEASE_AFTER. Busy connections pass through the idle state
        // between every two requests and must keep their warm pages.
        let idle_long_enough = self
            .timeouts
            .idle
            .checked_sub(IDLE_RELEASE_AFTER)
            .map(|rest| now + rest);
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.conn.fd < 0 {
                // A free slot keeps its warm pages and registration for the
                // next connection (connection churn reuses them); one still
                // free a tick later gives them back.
                if std::mem::take(&mut slot.cooling) {
                    release_window(&mut self.reactor, slot, index, &self.http.stats);
                    slot.recv.release_idle();
                    slot.send.release_idle();
                } else {
                    slot.cooling = slot.registered || slot.recv.touched() || slot.send.touched();
                }
                continue;
            }
            let conn = &mut slot.conn;
            if conn.timer == Timer::Idle
                && conn
                    .deadline
                    .zip(idle_long_enough)
                    .is_some_and(|(deadline, cutoff)| deadline <= cutoff)
                && conn.sending == 0
                && slot.send.is_empty()
                && slot.recv.is_empty()
            {
                // Idle keep-alive: give the buffers' pages back (nginx frees
                // an idle connection's buffers too). Nothing writes the send
                // buffer now. The receive buffer has a read pending whose
                // bytes may already sit in it, unreaped: cancel the read
                // first; `on_recv` releases the pages and reads again.
                slot.send.release_idle();
                if slot.recv.touched() && conn.recv_armed && !conn.idle_cancel {
                    conn.idle_cancel = true;
                    let target = Token::new(index as u32, conn.generation, OP_RECV);
                    self.reactor
                        .cancel(target, Token::new(index as u32, conn.generation, OP_CANCEL));
                }
            }
            if conn.deadline.is_none_or(|d| now <= d) {
                continue;
            }
            conn.deadline = None;
            let how = match conn.timer {
                Timer::Header | Timer::Body => {
                    // 408 unless a response is already on its way.
                    if conn.sending == 0 && slot.send.is_empty() && conn.tail.is_none() {
                        self.http
                            .queue_error(&mut slot.send, 408, None, crate::http::CLOSE);
                    }
                    conn.http = Exchange::default();
                    libc::SHUT_RD
                }
                Timer::Idle | Timer::Send | Timer::Linger => libc::SHUT_RDWR,
                Timer::None => continue,
            };
            // SAFETY: an open socket of this worker; its pending operation
            // returns and the close path follows.
            unsafe { libc::shutdown(conn.fd, how) };
        }
    }
}

/// Ends slot `index`'s registration so its pages can be given back. Only
/// with no read of the slot in flight.
fn release_window(reactor: &mut Reactor, slot: &mut Slot, index: usize, stats: &WorkerStats) {
    debug_assert!(!slot.conn.recv_armed);
    if !slot.registered {
        return;
    }
    // On failure the slot stays registered and pinned: its pages are kept
    // (they cost RSS, never correctness).
    if reactor.unregister_buffer(index as u16).is_ok() {
        slot.registered = false;
        slot.recv.unpin();
        stats.registered_buffers.sub(1);
    }
}

/// Why a ring may not be created: for a user without `CAP_IPC_LOCK` the
/// kernel counts ring memory against `RLIMIT_MEMLOCK` and answers `ENOMEM`
/// past it. Empty for other errors.
fn memlock_hint(err: &std::io::Error) -> String {
    if err.raw_os_error() != Some(libc::ENOMEM) {
        return String::new();
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return String::new();
    }
    format!(
        " (for a non-root user io_uring memory counts against RLIMIT_MEMLOCK, `ulimit -l`, {} KiB here: each worker's ring needs about 100 KiB, plus 4 KiB per active connection for registered receive buffers; raise it or grant CAP_IPC_LOCK)",
        limit.rlim_cur / 1024
    )
}

/// Opens an app's static roots and its policy-file root.
fn open_roots(app: &LoadedApp) -> Result<(Vec<Root>, Root), String> {
    let statics = Root::open_all(&app.statics).map_err(|e| e.to_string())?;
    let files = Root::open("", &app.files_dir)
        .map_err(|e| format!("app directory {}: {e}", app.files_dir.display()))?;
    Ok((statics, files))
}

fn peer_addr(fd: RawFd) -> Option<std::net::SocketAddr> {
    // SAFETY: borrows the connection's open socket for one getpeername.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&borrowed)
        .peer_addr()
        .ok()?
        .as_socket()
}

fn pipe() -> std::io::Result<[OwnedFd; 2]> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { [OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])] })
}

fn set_nodelay(fd: RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is a freshly accepted TCP socket; the option value is a
    // c_int on the stack, valid for the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

fn errno_text(result: i32) -> String {
    std::io::Error::from_raw_os_error(-result).to_string()
}
