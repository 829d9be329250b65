//! One worker: a thread pinned to a core with its own listening socket, its
//! own io_uring, its own connection slots and its own Lua state. Nothing
//! here is shared with another worker.
//!
//! The worker only pumps: completions come out of the ring, become events
//! of the connection they belong to (`keystone-conn`), and the intents each
//! connection then returns are submitted to the ring. The connection
//! decides everything about HTTP; the worker decides how an intent is
//! executed (which reads use the registered window, which pipe a file
//! splices through) and runs the worker's own operations: accepting, the
//! wake-up eventfd, the deadline tick, access-log writes. The event loop
//! below is the only loop meant to run until told to stop.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use keystone_app::{AppPolicy, UpstreamDone, UpstreamOp, UPSTREAM_CONNECTIONS_MAX};
use keystone_conn::{
    Config, Connection, Context, Event, FileMeta, Intent, Pipe, Shared, Timeouts, PIPE_BYTES,
    SEND_BUFFER_BYTES,
};
use keystone_exchange::TlsFacts;
use keystone_files::FileKind;
use keystone_lua::{AppSource, LuaConfig};
use keystone_ops::access_log::AccessLog;
use keystone_ops::stats::WorkerStats;
use keystone_parser::Limits;
use keystone_reactor::{
    Done, FileStat, Op, OpId, Reactor, TimerWheel, COMPLETIONS_PER_PUMP, REGISTERED_BUFFERS_MAX,
    TICK, WORKER,
};
use keystone_ringbuf::{split_slab, RingBuffer};
use keystone_tls::{Link, LinkIntent, ServerConfig, CIPHER_IN_BYTES, CIPHER_OUT_BYTES};
use keystone_upstream::UpstreamEvent;

use crate::log::Level;
use crate::watchdog::Pulse;

/// Submission queue entries. Each connection has at most three operations
/// queued per turn (receive, output, a file's open or stat); a full queue
/// is flushed, not an error.
const RING_ENTRIES: u32 = 1024;
/// Accepts kept in flight: each captures its peer's address; a burst of
/// connections is taken this many per loop turn.
const ACCEPTS_IN_FLIGHT: usize = 16;
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
/// Pipes each worker makes at start-up for splicing files: concurrent large
/// file sends beyond this read through the send buffer instead.
const PIPES_PER_WORKER: usize = 32;
/// How long an SQPOLL thread spins without work before sleeping: long
/// enough to ride through gaps between request bursts, short enough that an
/// idle server does not burn a core.
const SQPOLL_IDLE_MS: u32 = 50;

/// TLS handshakes a worker runs at once; a connection accepted beyond it
/// is closed at once (a handshake costs a signature: a flood of them must
/// not starve the connections already established).
const TLS_HANDSHAKES_MAX: u32 = 512;

/// Ciphertext buffer pairs mapped at a time, as TLS connections need them:
/// a worker with many slots and few TLS connections keeps neither the pool's
/// bookkeeping (about 140 bytes a pair) nor the mappings of pairs it never
/// uses; 64 pairs are 3.6 MiB of address space, one growth per 64 TLS
/// connections open at once.
const CIPHER_BUFFERS_PER_GROWTH: u32 = 64;

/// How long an exiting worker waits for its last log batches to land.
const LOG_LANDING: std::time::Duration = std::time::Duration::from_millis(1500);

/// Added to a worker's wake eventfd to ask it to drain.
pub const DRAIN_WAKE: u64 = 1 << 32;
/// Added to a worker's wake eventfd to ask it to reload (eventfd sums
/// writes, so both requests survive arriving together).
pub const RELOAD_WAKE: u64 = 1;
const RELOAD_MASK: u64 = DRAIN_WAKE - 1;

/// One of a worker's listening sockets.
pub struct Listener {
    /// Its SO_REUSEPORT socket (one per worker per address).
    pub fd: OwnedFd,
    /// Connections accepted on it speak TLS.
    pub tls: bool,
}

/// Everything a worker thread needs, moved into it at spawn.
pub struct WorkerConfig {
    /// 0-based worker index.
    pub index: u32,
    /// This worker's listening sockets, one per `--listen`/`--tls-listen`.
    pub listeners: Vec<Listener>,
    /// What TLS listeners serve with (shared read-only by every worker).
    pub tls: Option<Arc<ServerConfig>>,
    /// The kernel attaches TLS to sockets: hand sessions to it.
    pub kernel_tls: bool,
    /// eventfd the main thread writes to start draining or reloading.
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
    /// The largest request body streamed upstream.
    pub max_proxy_body_bytes: u64,
    /// This worker's heartbeat for the handler-budget watchdog.
    pub pulse: Arc<Pulse>,
    /// Reloads, each announced by a [`RELOAD_WAKE`] on `wake`.
    pub reloads: mpsc::Receiver<Reload>,
    /// Where this worker's log lines go (its own descriptor; taken by the
    /// worker's thread when it starts).
    pub log: Option<OwnedFd>,
    /// This worker's counters (read by the admin listener).
    pub stats: Arc<WorkerStats>,
    /// Where access-log lines go, when on.
    pub access_log: Option<OwnedFd>,
    /// Use a submission-polling kernel thread.
    pub sqpoll: bool,
    /// Receive into registered windows (`--recv-registered`).
    pub recv_registered: bool,
}

/// What SIGHUP brings a worker: the app compiled again (when it loads),
/// and the log files opened again (logrotate's convention).
pub struct Reload {
    /// The app to swap in.
    pub app: Option<AppSource>,
    /// The certificates read again (new handshakes use them).
    pub tls: Option<Arc<ServerConfig>>,
    /// The reopened `--log`.
    pub log: Option<OwnedFd>,
    /// The reopened `--access-log`.
    pub access_log: Option<OwnedFd>,
}

/// Starts a worker: loads the app, then serves until drained. Start-up
/// failures are reported through `ready`.
pub fn run(mut config: WorkerConfig, ready: impl FnOnce(Result<(), String>)) {
    config.pulse.set_thread(crate::sys::current_thread());
    if let Some(log) = config.log.take() {
        crate::log::install(log);
    }
    let mut worker = match Worker::new(config) {
        Ok(worker) => worker,
        Err(message) => {
            crate::log::flush_blocking();
            return ready(Err(message));
        }
    };
    // What the load logged (warnings, `--unsafe-lua`) lands before the
    // worker reports ready, so it precedes the main thread's "listening".
    if let Err(err) = worker.land_start_up_log() {
        crate::log::flush_blocking();
        return ready(Err(format!("io_uring: {err}")));
    }
    ready(Ok(()));
    if let Err(err) = worker.event_loop() {
        crate::log!(Level::Error, Some(worker.index), "event loop failed: {err}");
    }
    crate::log::flush_blocking();
}

/// What the worker knows about one slot besides its connection: the
/// socket and the operations of it that it may have to cancel.
struct Slot {
    conn: Connection,
    /// The socket (-1: free).
    fd: RawFd,
    recv: Option<OpId>,
    output: Option<OpId>,
    /// The output in flight is a pipe → socket splice (its bytes count as
    /// sent).
    splice_out: bool,
    /// The socket's close, once submitted.
    socket_close: Option<OpId>,
    /// The receive window is registered with the ring as fixed buffer
    /// number `slot`; it outlives connections (the next one reuses it)
    /// until the pages are given back.
    registered: bool,
    /// Registering failed (`RLIMIT_MEMLOCK`): read unregistered.
    fixed_refused: bool,
    /// Free at the last tick with pages or a registration: if still free at
    /// the next, they are given back (a spike's slots do not stay resident).
    cooling: bool,
    /// On a TLS connection: the transform between the connection and the
    /// ring; `recv` and `output` then hold its ciphertext operations (and
    /// `output` the connection's file reads).
    link: Option<Box<Link>>,
    /// The link's ciphertext send in flight.
    net_send: Option<OpId>,
    /// The TLS handshake is under way (counted in `Worker::handshakes`).
    handshaking: bool,
}

struct Worker {
    /// Declared first so the ring (which cancels and reaps every operation
    /// on drop) goes before the buffers and descriptors those point into.
    reactor: Reactor,
    index: u32,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: u32,
    shared: Shared,
    policy: AppPolicy,
    timers: TimerWheel,
    /// Slots `0..fixed_slots` have an entry in the ring's registered-buffer
    /// table (0: registration unavailable).
    fixed_slots: u32,
    fixed_warned: bool,
    listeners: Vec<Listener>,
    /// Accepts in flight, each with the listener it accepts on.
    accepts: Vec<(OpId, usize)>,
    tls: Option<Arc<ServerConfig>>,
    kernel_tls: bool,
    /// Ciphertext buffers for TLS connections (a pair per connection).
    /// Each with its cooling mark: free at the last tick with pages
    /// touched, so given back at the next if still free (as a free slot's).
    cipher_buffers: Vec<(RingBuffer, RingBuffer, bool)>,
    /// Pairs that may still be made (`--max-connections` in all).
    cipher_buffers_left: u32,
    handshakes: u32,
    wake: OwnedFd,
    tick: Option<OpId>,
    draining: bool,
    reloads: mpsc::Receiver<Reload>,
    lua_config: LuaConfig,
    /// The log batch being written, if any.
    log_write: Option<OpId>,
    /// The clock, read once per loop turn.
    now: Instant,
    stats: Arc<WorkerStats>,
    /// The pipes (kept open for the worker's life) and /dev/null, where a
    /// pipe left holding bytes by an aborted send is drained.
    _pipes: Vec<(OwnedFd, OwnedFd)>,
    dev_null: OwnedFd,
    /// Pipes being drained: the splice, the pipe, the bytes it held.
    draining_pipes: Vec<(OpId, Pipe, u32)>,
    completions: Vec<Done>,
    /// This turn's ClientHellos, completed after its other completions.
    hellos: Vec<Done>,
    expired: Vec<u32>,
    /// Reactor owners from here on are upstream connections
    /// (`owner - upstream_base` is the policy's upstream slot).
    upstream_base: u32,
    /// Client connections an upstream woke (reused between turns).
    woken: Vec<u32>,
}

impl Worker {
    fn new(config: WorkerConfig) -> Result<Worker, String> {
        let index = config.index;
        let recv_bytes = u64::from(config.limits.max_header_bytes) + config.limits.max_body_bytes;
        let recv_bytes = u32::try_from(recv_bytes).map_err(|_| {
            format!("--max-header-bytes + --max-body-bytes = {recv_bytes} exceeds 4 GiB")
        })?;
        let recvs = split_slab(config.max_connections, recv_bytes).map_err(|e| e.to_string())?;
        let sends =
            split_slab(config.max_connections, SEND_BUFFER_BYTES).map_err(|e| e.to_string())?;
        let now = Instant::now();
        let slots = recvs
            .into_iter()
            .zip(sends)
            .enumerate()
            .map(|(slot, (recv, send))| Slot {
                conn: Connection::new(slot as u32, recv, send, now),
                fd: -1,
                recv: None,
                output: None,
                splice_out: false,
                socket_close: None,
                registered: false,
                fixed_refused: false,
                cooling: false,
                link: None,
                net_send: None,
                handshaking: false,
            })
            .collect();
        // Ciphertext buffers are made as TLS connections need them, up to
        // one pair per slot (none without a TLS listener).
        let tls_slots = if config.listeners.iter().any(|l| l.tls) {
            config.max_connections
        } else {
            0
        };
        let access = config.access_log.map(AccessLog::new);
        let mut policy = AppPolicy::load(
            index,
            &config.app,
            &config.lua,
            Arc::clone(&config.stats),
            config.pulse,
            access,
            log_app,
        )?;
        policy.set_body_limit(config.limits.max_body_bytes)?;
        // Owners: the client slots, then every upstream connection the
        // policy may make (a reload may add pools to an app without).
        let owners = config.max_connections + UPSTREAM_CONNECTIONS_MAX as u32;
        let mut reactor = Reactor::with_sqpoll(
            RING_ENTRIES,
            owners,
            config.sqpoll.then_some(SQPOLL_IDLE_MS),
        )
        .map_err(|e| format!("io_uring setup failed: {e}{}", memlock_hint(&e)))?;
        // Slots past the kernel's table size (16,384) read unregistered;
        // without `--recv-registered`, every slot does.
        let fixed_slots = config.max_connections.min(REGISTERED_BUFFERS_MAX);
        let fixed_slots = if !config.recv_registered {
            0
        } else {
            match reactor.register_buffer_table(fixed_slots) {
                Ok(()) => fixed_slots,
                Err(err) => {
                    crate::log!(
                        Level::Warn,
                        Some(index),
                        "io_uring registered buffers unavailable ({err}); receiving into unregistered buffers"
                    );
                    0
                }
            }
        };
        let pipes = (0..PIPES_PER_WORKER)
            .map(|_| keystone_reactor::sized_pipe(PIPE_BYTES))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|err| format!("pipe: {err}"))?;
        let pipe_ends = pipes
            .iter()
            .map(|(read, write, capacity)| Pipe {
                read: read.as_raw_fd(),
                write: write.as_raw_fd(),
                // PIPE_BYTES, or what the kernel left a pipe it refused to
                // grow (past a user's pipe-buffer limit).
                capacity: *capacity,
            })
            .collect();
        let pipes = pipes
            .into_iter()
            .map(|(read, write, _)| (read, write))
            .collect();
        let dev_null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .map_err(|err| format!("/dev/null: {err}"))?;
        let conn_config = Config {
            limits: config.limits,
            max_pipeline: config.max_pipeline,
            timeouts: config.timeouts,
            max_proxy_body_bytes: config.max_proxy_body_bytes,
        };
        Ok(Worker {
            reactor,
            index,
            slots,
            free: (0..config.max_connections).rev().collect(),
            live: 0,
            shared: Shared::new(conn_config, pipe_ends),
            policy,
            timers: TimerWheel::new(config.max_connections, now),
            fixed_slots,
            fixed_warned: false,
            accepts: Vec::with_capacity(ACCEPTS_IN_FLIGHT * config.listeners.len()),
            listeners: config.listeners,
            tls: config.tls,
            kernel_tls: config.kernel_tls,
            cipher_buffers: Vec::new(),
            cipher_buffers_left: tls_slots,
            handshakes: 0,
            wake: config.wake,
            tick: None,
            draining: false,
            reloads: config.reloads,
            lua_config: config.lua,
            log_write: None,
            now,
            stats: config.stats,
            _pipes: pipes,
            dev_null: dev_null.into(),
            draining_pipes: Vec::with_capacity(PIPES_PER_WORKER),
            completions: Vec::with_capacity(COMPLETIONS_PER_PUMP),
            hellos: Vec::with_capacity(COMPLETIONS_PER_PUMP),
            expired: Vec::with_capacity(config.max_connections as usize),
            upstream_base: config.max_connections,
            woken: Vec::with_capacity(UPSTREAM_CONNECTIONS_MAX),
        })
    }

    fn event_loop(&mut self) -> std::io::Result<()> {
        self.arm_accepts();
        self.reactor.read_counter(WORKER, self.wake.as_raw_fd());
        if self.tick.is_none() {
            self.tick = Some(self.reactor.tick(WORKER, TICK));
        }
        while !(self.draining && self.live == 0 && self.accepts.is_empty()) {
            // Lines logged since the last turn (the first turn: the load's)
            // go out with this turn's submissions.
            self.write_log();
            self.reactor.pump(&mut self.completions)?;
            self.shared.date.refresh();
            self.now = Instant::now();
            let mut completions = std::mem::take(&mut self.completions);
            let mut hellos = std::mem::take(&mut self.hellos);
            for done in completions.drain(..) {
                // A ClientHello costs a signature (hundreds of µs): the
                // turn's requests are answered before new handshakes.
                if self.brings_client_hello(&done) {
                    hellos.push(done);
                } else {
                    self.complete(done);
                }
            }
            for done in hellos.drain(..) {
                self.complete(done);
            }
            self.hellos = hellos;
            self.completions = completions;
            self.pump_upstreams();
            self.write_access_log(false);
        }
        self.write_log();
        self.land_log_writes()?;
        if let Some(log) = &mut self.policy.access {
            if !log.in_flight() {
                log.flush_blocking();
            }
        }
        self.reactor.flush()
    }

    /// Before the worker reports ready: the lines its start-up logged are
    /// written (bounded like [`Worker::land_log_writes`]: the tick armed
    /// here ends a pump that a stuck destination would hold).
    fn land_start_up_log(&mut self) -> std::io::Result<()> {
        self.tick = Some(self.reactor.tick(WORKER, TICK));
        self.write_log();
        self.land_log_writes()
    }

    /// Before the worker exits: the log batches in flight land (each pump
    /// waits for at least one completion; a write completes or fails), so
    /// the last lines — the drain's — are not cancelled with the ring.
    fn land_log_writes(&mut self) -> std::io::Result<()> {
        let log_in_flight = |worker: &Worker| {
            worker.log_write.is_some()
                || worker
                    .policy
                    .access
                    .as_ref()
                    .is_some_and(|log| log.in_flight())
        };
        // Bounded in time: a destination that does not drain holds its
        // write for ever, and the drain deadline must still hold (the tick
        // completes every second, so a pump never waits longer).
        let give_up = Instant::now() + LOG_LANDING;
        while log_in_flight(self) && Instant::now() < give_up {
            self.reactor.pump(&mut self.completions)?;
            let mut completions = std::mem::take(&mut self.completions);
            for done in completions.drain(..) {
                if matches!(done.op, Op::Write { .. }) {
                    self.complete_worker(done);
                }
            }
            self.completions = completions;
            self.write_log();
        }
        Ok(())
    }

    /// Whether `done` is the first receive of a TLS connection (its
    /// ClientHello, or its end).
    fn brings_client_hello(&self, done: &Done) -> bool {
        done.owner != WORKER
            && done.owner < self.upstream_base
            && matches!(done.op, Op::Recv { .. })
            && self.slots[done.owner as usize]
                .link
                .as_ref()
                .is_some_and(|link| link.fresh())
    }

    fn complete(&mut self, done: Done) {
        if done.owner == WORKER {
            return self.complete_worker(done);
        }
        if done.owner >= self.upstream_base {
            return self.complete_upstream(done);
        }
        let index = done.owner as usize;
        let event = self.event_of(index, done);
        if let Some(event) = event {
            self.deliver(index, event);
        } else if self.slots[index].link.is_some() {
            // A ciphertext operation moved the link: what it now has for
            // the connection (or the ring) goes on.
            self.submit_intents(index);
        }
        self.settle(index);
    }

    /// Turns a completion of slot `index` into its connection's event
    /// (`None` for operations whose completion the connection does not
    /// wait for: cancels, file closes).
    fn event_of(&mut self, index: usize, mut done: Done) -> Option<Event> {
        let slot = &mut self.slots[index];
        let result = done.result;
        if let Some(link) = &mut slot.link {
            match done.op {
                Op::Recv { buf, .. } => {
                    slot.recv = None;
                    if result > 0 {
                        self.stats.bytes_in.add(result as u64);
                        self.stats.receives_plain.add(1);
                    }
                    link.on_received(buf, result);
                    return None;
                }
                Op::Send { buf } => {
                    slot.net_send = None;
                    if result > 0 {
                        self.stats.bytes_out.add(result as u64);
                    }
                    link.on_sent(buf, result);
                    return None;
                }
                Op::SetSockOpt => {
                    link.on_sockopt(result);
                    return None;
                }
                other => done.op = other,
            }
        }
        Some(match done.op {
            Op::Recv { buf, fixed } => {
                slot.recv = None;
                if result > 0 {
                    self.stats.bytes_in.add(result as u64);
                    if fixed {
                        self.stats.receives_registered.add(1);
                    } else {
                        self.stats.receives_plain.add(1);
                    }
                }
                Event::Received { buf, result }
            }
            Op::Send { buf } => {
                slot.output = None;
                if result > 0 {
                    self.stats.bytes_out.add(result as u64);
                }
                Event::Sent { buf, result }
            }
            Op::ReadAt { buf } => {
                slot.output = None;
                Event::FileRead { buf, result }
            }
            Op::Splice => {
                slot.output = None;
                if slot.splice_out && result > 0 {
                    self.stats.bytes_out.add(result as u64);
                }
                Event::Spliced { result }
            }
            Op::OpenBeneath => Event::Opened { result },
            // The link-following open is confined here: a file reached
            // outside the root is closed and refused as the confined open
            // would have refused it.
            Op::OpenFollowing { dir }
                if result >= 0 && !crate::sys::opened_beneath(dir, result) =>
            {
                self.reactor.close(done.owner, result);
                Event::Opened {
                    result: -libc::EXDEV,
                }
            }
            Op::OpenFollowing { .. } => Event::Opened { result },
            Op::Statx { stat } => Event::Stated {
                result,
                meta: stat.map(meta_of),
            },
            Op::Shutdown => Event::ShutDown { result },
            Op::Close if slot.socket_close == Some(done.id) => Event::Closed,
            Op::Close | Op::Cancel => return None,
            other => unreachable!("{other:?} completed for a connection"),
        })
    }

    /// Gives `event` to slot `index`'s connection, then submits its intents.
    fn deliver(&mut self, index: usize, event: Event) {
        if self.slots[index].conn.is_free() {
            return;
        }
        let mut cx = Context {
            shared: &mut self.shared,
            policy: &mut self.policy,
            now: self.now,
            draining: self.draining,
        };
        self.slots[index].conn.on(event, &mut cx);
        self.submit_intents(index);
    }

    /// Submits everything slot `index`'s connection asks for (on a TLS
    /// connection, through its link, until neither has more).
    fn submit_intents(&mut self, index: usize) {
        loop {
            self.submit_connection_intents(index);
            if !self.pump_link(index) {
                break;
            }
        }
        let deadline = self.slots[index].conn.deadline();
        self.timers.set(index as u32, deadline);
    }

    /// Executes what a TLS connection's link asks for; gives the
    /// connection what the link has for it. Whether the connection got an
    /// event (so it may have more intents).
    fn pump_link(&mut self, index: usize) -> bool {
        let owner = index as u32;
        let mut delivered = false;
        loop {
            let slot = &mut self.slots[index];
            let Some(link) = &mut slot.link else {
                return delivered;
            };
            let Some(intent) = link.poll() else {
                break;
            };
            let fd = slot.fd;
            let event = match intent {
                LinkIntent::Recv(buf) => {
                    let len = buf.len();
                    slot.recv = Some(self.reactor.recv(owner, fd, buf, len, None));
                    continue;
                }
                LinkIntent::Send(buf) => {
                    slot.net_send = Some(self.reactor.send(owner, fd, buf));
                    continue;
                }
                LinkIntent::Shutdown => {
                    self.reactor.shutdown(owner, fd, libc::SHUT_WR);
                    continue;
                }
                LinkIntent::SetSockOpt {
                    level,
                    name,
                    value,
                    len,
                } => {
                    self.reactor
                        .setsockopt(owner, fd, level, name, &value[..len]);
                    continue;
                }
                LinkIntent::KernelSends => {
                    let facts = slot.conn.tls().with_kernel_sends();
                    slot.conn.set_tls(facts);
                    self.stats.tls_kernel.add(1);
                    continue;
                }
                LinkIntent::Established => {
                    let facts = link.negotiated();
                    let facts = TlsFacts::new(facts.version, facts.cipher, facts.sni);
                    slot.conn.set_tls(facts);
                    if std::mem::take(&mut slot.handshaking) {
                        self.handshakes -= 1;
                    }
                    self.stats.tls_handshakes.add(1);
                    continue;
                }
                LinkIntent::Received { buf, result } => Event::Received { buf, result },
                LinkIntent::Sent { buf, result } => Event::Sent { buf, result },
            };
            // Counted, not logged: a scanner's garbage would flood the log
            // (nginx logs these at `info`, off by default).
            if link.take_failure().is_some() {
                self.stats.tls_failed.add(1);
            }
            if link.take_plain_http() {
                self.stats.tls_plain_http.add(1);
            }
            let mut cx = Context {
                shared: &mut self.shared,
                policy: &mut self.policy,
                now: self.now,
                draining: self.draining,
            };
            slot.conn.on(event, &mut cx);
            delivered = true;
        }
        delivered
    }

    /// Submits everything slot `index`'s connection asks for (a TLS
    /// connection's receives, sends, cancels and shutdown go to its link).
    fn submit_connection_intents(&mut self, index: usize) {
        // Each intent moves the connection on (an operation submitted, a
        // loan lent); a connection asks for a handful per event.
        loop {
            let mut cx = Context {
                shared: &mut self.shared,
                policy: &mut self.policy,
                now: self.now,
                draining: self.draining,
            };
            let slot = &mut self.slots[index];
            let Some(intent) = slot.conn.poll(&mut cx) else {
                break;
            };
            let owner = index as u32;
            // The intent is matched where `poll` left it: a plain
            // connection's goes straight to `execute` (moving it through a
            // second binding first cost a copy whose wide loads stalled on
            // the narrow stores that built it; with `poll_file` out of
            // line, -2.3 % of the worker's user time, benches/README.md
            // change 16); a TLS connection's passes its link first, out of
            // line.
            let mut executor = Executor {
                reactor: &mut self.reactor,
                fixed_slots: self.fixed_slots,
                stats: &self.stats,
                fixed_warned: &mut self.fixed_warned,
                worker: self.index,
            };
            let released = if slot.link.is_some() {
                submit_through_link(&mut executor, slot, owner, intent)
            } else {
                execute(&mut executor, slot, owner, intent)
            };
            if released {
                let mut cx = Context {
                    shared: &mut self.shared,
                    policy: &mut self.policy,
                    now: self.now,
                    draining: self.draining,
                };
                self.slots[index].conn.on(Event::Released, &mut cx);
            }
        }
    }

    /// A closed connection's slot is free once nothing of it is in flight.
    fn settle(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        // The ring's count drops when a completion is reaped, before this
        // turn hands it over: a link's ciphertext operation may still be
        // on its way here (the connection got its own loans back already).
        let link_busy = slot.link.as_ref().is_some_and(|link| link.in_flight());
        if slot.fd < 0
            || !slot.conn.is_free()
            || link_busy
            || self.reactor.in_flight(index as u32) > 0
        {
            return;
        }
        debug_assert!(slot.recv.is_none() && slot.output.is_none());
        if let Some(link) = slot.link.take() {
            if std::mem::take(&mut slot.handshaking) {
                self.handshakes -= 1;
            }
            slot.net_send = None;
            let (cipher_in, cipher_out) = link.into_buffers();
            self.cipher_buffers.push((cipher_in, cipher_out, false));
        }
        slot.fd = -1;
        slot.socket_close = None;
        self.timers.set(index as u32, None);
        self.free.push(index as u32);
        self.live -= 1;
        self.stats.open.sub(1);
        self.arm_accepts();
    }

    // --- upstream connections (the policy's; executed here) ---------------

    /// A completion of an upstream connection's operation.
    fn complete_upstream(&mut self, done: Done) {
        let index = (done.owner - self.upstream_base) as usize;
        let result = done.result;
        let done = match done.op {
            Op::Socket => UpstreamDone::Socket { result },
            Op::Connect => UpstreamDone::Event(UpstreamEvent::Connected { result }),
            Op::Send { buf } => UpstreamDone::Event(UpstreamEvent::Sent { buf, result }),
            Op::Recv { buf, .. } => UpstreamDone::Event(UpstreamEvent::Received { buf, result }),
            Op::Cancel => UpstreamDone::Cancelled,
            Op::Close => UpstreamDone::Closed,
            other => unreachable!("{other:?} completed for an upstream connection"),
        };
        self.policy.upstream_complete(index, done, self.now);
    }

    /// Submits what the upstream side asks for and wakes the client
    /// connections it made progress for, until neither has more (each
    /// wake can free room an upstream was waiting for).
    fn pump_upstreams(&mut self) {
        loop {
            while let Some((index, op)) = self.policy.upstream_poll(self.now) {
                let owner = self.upstream_base + index as u32;
                match op {
                    UpstreamOp::Socket { addr } => self.reactor.socket(owner, addr),
                    UpstreamOp::Connect { fd, addr } => self.reactor.connect(owner, fd, addr),
                    UpstreamOp::Send { fd, buf } => self.reactor.send(owner, fd, buf),
                    UpstreamOp::Recv { fd, buf } => {
                        let len = buf.len();
                        self.reactor.recv(owner, fd, buf, len, None)
                    }
                    UpstreamOp::Cancel { fd } => self.reactor.cancel_fd(owner, fd),
                    UpstreamOp::Close { fd } => self.reactor.close(owner, fd),
                };
            }
            let mut woken = std::mem::take(&mut self.woken);
            self.policy.upstream_wakes(&mut woken);
            if woken.is_empty() {
                self.woken = woken;
                return;
            }
            for client in woken.drain(..) {
                let client = client as usize;
                self.deliver(client, Event::Upstream);
                self.settle(client);
            }
            self.woken = woken;
        }
    }

    // --- the worker's own operations -----------------------------------

    fn complete_worker(&mut self, done: Done) {
        match done.op {
            Op::Accept { peer } => self.on_accept(done.id, done.result, peer),
            Op::ReadCounter { value } => self.on_wake(done.result, value),
            Op::Tick => {
                // Each firing completes with -ETIME; the last one of a
                // multishot timeout comes without `more` (the kernel ends
                // one it could not post a completion for). Re-armed then:
                // without the tick no deadline would ever fire again.
                if done.more || done.result == -libc::ETIME {
                    self.on_tick();
                }
                if !done.more {
                    self.stats.tick_rearmed.add(1);
                    self.tick = Some(self.reactor.tick(WORKER, TICK));
                }
                self.write_access_log(true);
            }
            Op::Write { batch } if Some(done.id) == self.log_write => {
                self.log_write = None;
                crate::log::written(batch, done.result);
                self.stats.log_dropped.set(crate::log::dropped());
            }
            Op::Write { batch } => {
                let failure = self
                    .policy
                    .access
                    .as_mut()
                    .and_then(|log| log.written(batch, done.result));
                if let Some(message) = failure {
                    crate::log!(Level::Error, Some(self.index), "{message}");
                }
                self.write_access_log(false);
            }
            Op::Splice => self.on_pipe_drained(done.id, done.result),
            _ => {}
        }
    }

    /// Keeps accepts in flight while there are free slots for them (so an
    /// accepted connection always finds one).
    fn arm_accepts(&mut self) {
        if self.draining || self.listeners.is_empty() {
            return;
        }
        // Up to ACCEPTS_IN_FLIGHT per listener, never more in all than
        // free slots (each accepted connection must find one).
        for (which, listener) in self.listeners.iter().enumerate() {
            let fd = listener.fd.as_raw_fd();
            let mut armed = self.accepts.iter().filter(|(_, l)| *l == which).count();
            while armed < ACCEPTS_IN_FLIGHT && self.accepts.len() < self.free.len() {
                let id = self.reactor.accept(WORKER, fd);
                self.accepts.push((id, which));
                armed += 1;
            }
        }
    }

    /// Closes the listening sockets once no accept is in flight on them.
    fn close_listeners(&mut self) {
        if !self.accepts.is_empty() {
            return;
        }
        for listener in self.listeners.drain(..) {
            self.reactor.close(WORKER, listener.fd.into_raw_fd());
        }
    }

    fn on_accept(&mut self, id: OpId, result: i32, peer: Option<SocketAddr>) {
        let which = self
            .accepts
            .iter()
            .position(|(armed, _)| *armed == id)
            .map(|at| self.accepts.swap_remove(at).1);
        let tls = which.is_some_and(|which| self.listeners.get(which).is_some_and(|l| l.tls));
        if result < 0 {
            if result != -libc::ECANCELED {
                crate::log!(
                    Level::Warn,
                    Some(self.index),
                    "accept failed: {}",
                    std::io::Error::from_raw_os_error(-result)
                );
            }
        } else if self.draining {
            self.reactor.close(WORKER, result);
        } else {
            self.adopt(result, peer, tls);
        }
        if self.draining {
            self.close_listeners();
        } else {
            self.arm_accepts();
        }
    }

    fn adopt(&mut self, fd: RawFd, peer: Option<SocketAddr>, tls: bool) {
        let link = if tls {
            match self.new_link() {
                Some(link) => Some(link),
                None => {
                    // Past the handshake bound (or out of buffers): closed
                    // unanswered, as a full backlog would have refused it.
                    self.stats.tls_failed.add(1);
                    self.reactor.close(WORKER, fd);
                    return;
                }
            }
        } else {
            None
        };
        // Accepts are armed only while free slots outnumber them.
        let index = self.free.pop().expect("an accept always finds a free slot") as usize;
        let slot = &mut self.slots[index];
        debug_assert!(slot.fd < 0 && slot.conn.is_free());
        debug_assert_eq!(self.reactor.in_flight(index as u32), 0);
        slot.fd = fd;
        slot.cooling = false;
        slot.fixed_refused = false;
        slot.conn.open(peer, self.now, &self.shared.config);
        if let Some(link) = link {
            slot.conn.set_tls(TlsFacts::pending());
            slot.link = Some(link);
            slot.handshaking = true;
            self.handshakes += 1;
        }
        self.live += 1;
        self.stats.accepted.add(1);
        self.stats.open.add(1);
        self.submit_intents(index);
    }

    /// Maps the next [`CIPHER_BUFFERS_PER_GROWTH`] pairs of ciphertext
    /// buffers (two `mmap`s; address space until TLS connections touch it).
    fn grow_cipher_buffers(&mut self) {
        let count = CIPHER_BUFFERS_PER_GROWTH.min(self.cipher_buffers_left);
        if count == 0 {
            return;
        }
        let made = split_slab(count, CIPHER_IN_BYTES)
            .and_then(|ins| Ok((ins, split_slab(count, CIPHER_OUT_BYTES)?)));
        match made {
            Ok((ins, outs)) => {
                self.cipher_buffers_left -= count;
                self.cipher_buffers.extend(
                    ins.into_iter()
                        .zip(outs)
                        .map(|(cipher_in, cipher_out)| (cipher_in, cipher_out, false)),
                );
            }
            Err(err) => crate::log!(
                Level::Error,
                Some(self.index),
                "TLS ciphertext buffers: {err}"
            ),
        }
    }

    /// A link for a connection accepted on a TLS listener, while the
    /// handshake bound allows.
    fn new_link(&mut self) -> Option<Box<Link>> {
        if self.handshakes >= TLS_HANDSHAKES_MAX {
            return None;
        }
        if self.cipher_buffers.is_empty() {
            self.grow_cipher_buffers();
        }
        let config = self.tls.as_ref()?;
        let (cipher_in, cipher_out, _) = self.cipher_buffers.pop()?;
        match Link::new(config, cipher_in, cipher_out) {
            Ok(mut link) => {
                if self.kernel_tls {
                    link.offer_kernel();
                }
                Some(Box::new(link))
            }
            Err(err) => {
                crate::log!(Level::Error, Some(self.index), "TLS session: {err}");
                None
            }
        }
    }

    /// The main thread asked us to drain or to reload.
    fn on_wake(&mut self, result: i32, value: u64) {
        if result == 8 && value & RELOAD_MASK != 0 {
            self.reload();
        }
        let drain = result == 8 && value >= DRAIN_WAKE;
        if !drain {
            if !self.draining {
                self.reactor.read_counter(WORKER, self.wake.as_raw_fd());
            }
            return;
        }
        if self.draining {
            return;
        }
        self.draining = true;
        crate::log!(
            Level::Info,
            Some(self.index),
            "draining {} connections",
            self.live
        );
        for (id, _) in self.accepts.clone() {
            self.reactor.cancel(WORKER, id);
        }
        self.close_listeners();
        for index in 0..self.slots.len() {
            if self.slots[index].fd >= 0 {
                self.deliver(index, Event::Drain);
                self.settle(index);
            }
        }
    }

    /// Once a second: deliver passed deadlines, give a free slot's pages
    /// back, drain dirty pipes, close cached files gone stale.
    fn on_tick(&mut self) {
        let now = Instant::now();
        self.now = now;
        let mut expired = std::mem::take(&mut self.expired);
        self.timers.expire(now, |slot| expired.push(slot));
        for slot in expired.drain(..) {
            self.deliver(slot as usize, Event::Deadline);
            self.settle(slot as usize);
        }
        self.expired = expired;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.fd >= 0 {
                continue;
            }
            // A free slot keeps its warm pages and registration for the next
            // connection (connection churn reuses them); one still free a
            // tick later gives them back.
            if std::mem::take(&mut slot.cooling) {
                release_window(&mut self.reactor, slot, index as u32, &self.stats);
                slot.conn.release_free_memory();
            } else {
                slot.cooling = slot.registered || slot.conn.touched();
            }
        }
        // The same for pooled TLS ciphertext buffers (the pool is LIFO:
        // churning connections reuse the warm ones first).
        for (cipher_in, cipher_out, cooling) in &mut self.cipher_buffers {
            if std::mem::take(cooling) {
                cipher_in.release_idle();
                cipher_out.release_idle();
            } else {
                *cooling = cipher_in.touched() || cipher_out.touched();
            }
        }
        while let Some((pipe, holding)) = self.shared.pipes.take_dirty() {
            self.drain_pipe(pipe, holding);
        }
        let reactor = &mut self.reactor;
        self.shared.files.close_stale(now, &mut |fd| {
            reactor.close(WORKER, fd);
        });
        self.policy.tick(now);
    }

    /// Empties a pipe an aborted file send left holding bytes, into
    /// /dev/null; it is clean (back in the pool) once that completes.
    fn drain_pipe(&mut self, pipe: Pipe, holding: u32) {
        let id = self
            .reactor
            .splice(WORKER, pipe.read, -1, self.dev_null.as_raw_fd(), holding);
        self.draining_pipes.push((id, pipe, holding));
    }

    fn on_pipe_drained(&mut self, id: OpId, result: i32) {
        let Some(position) = self.draining_pipes.iter().position(|(op, ..)| *op == id) else {
            return;
        };
        let (_, pipe, holding) = self.draining_pipes.swap_remove(position);
        let left = holding.saturating_sub(result.max(0) as u32);
        if result > 0 && left > 0 {
            self.drain_pipe(pipe, left);
        } else if result >= 0 {
            self.shared.pipes.drained(pipe);
        } else {
            // A pipe that cannot be drained is left out of the pool (files
            // then read through the send buffer).
            crate::log!(
                Level::Warn,
                Some(self.index),
                "draining a pipe failed: {}",
                std::io::Error::from_raw_os_error(-result)
            );
        }
    }

    /// Submits the log lines written since the last batch went out (one
    /// batch in flight at a time: lines meanwhile fill the other).
    fn write_log(&mut self) {
        // Published each turn, not only when a write lands: a write to a
        // log nobody drains never lands, and that is when drops happen.
        self.stats.log_dropped.set(crate::log::dropped());
        if self.log_write.is_some() {
            return;
        }
        if let Some((fd, batch)) = crate::log::take_batch() {
            self.log_write = Some(self.reactor.write(WORKER, fd, batch));
        }
    }

    /// Submits a batch of access-log lines when one is ready (`force`: the
    /// tick, any bytes at all).
    fn write_access_log(&mut self, force: bool) {
        let Some(log) = &mut self.policy.access else {
            return;
        };
        if let Some(batch) = log.take_batch(force) {
            self.reactor.write(WORKER, log.fd(), batch);
        }
    }

    /// Loads the app the main thread sent and swaps it in. Runs between
    /// completions, so no handler is running: requests already answered
    /// were answered by the old code, the next one runs the new code.
    fn reload(&mut self) {
        let Ok(reload) = self.reloads.try_recv() else {
            return;
        };
        if let Some(fd) = reload.log {
            crate::log::reopen(fd);
        }
        if let Some(tls) = reload.tls {
            // New handshakes use it; open sessions keep the config they
            // were made with (rustls holds it per session).
            self.tls = Some(tls);
        }
        if let (Some(fd), Some(log)) = (reload.access_log, &mut self.policy.access) {
            log.reopen(fd);
        }
        let Some(app) = reload.app else { return };
        if let Some(old_roots) = self.policy.reload_source(&app, &self.lua_config) {
            let reactor = &mut self.reactor;
            for root in old_roots {
                self.shared.files.invalidate_root(root, &mut |fd| {
                    reactor.close(WORKER, fd);
                });
            }
        }
    }
}

/// The worker's fields an intent's execution needs besides the slot,
/// borrowed apart from the slots and the connection's context.
struct Executor<'w> {
    reactor: &'w mut Reactor,
    fixed_slots: u32,
    stats: &'w WorkerStats,
    fixed_warned: &'w mut bool,
    worker: u32,
}

/// Executes one intent of a plain connection (or one its TLS link passed
/// on). `true` for [`Intent::ReleaseIdle`], whose [`Event::Released`] the
/// caller delivers once the intent's borrow of the context has ended.
#[inline(always)]
fn execute(executor: &mut Executor<'_>, slot: &mut Slot, owner: u32, intent: Intent<'_>) -> bool {
    let Executor {
        reactor,
        fixed_slots,
        stats,
        fixed_warned,
        worker,
    } = executor;
    let (fixed_slots, worker) = (*fixed_slots, *worker);
    let fd = slot.fd;
    match intent {
        Intent::Recv(buf) => {
            if slot.conn.is_warm() && !slot.registered && !slot.fixed_refused && owner < fixed_slots
            {
                register_window(reactor, slot, owner, stats, fixed_warned, worker);
            }
            let (len, fixed) = if slot.registered && buf.offset() < FIXED_WINDOW_BYTES {
                (
                    buf.len().min(FIXED_WINDOW_BYTES - buf.offset()),
                    Some(owner as u16),
                )
            } else {
                (buf.len(), None)
            };
            slot.recv = Some(reactor.recv(owner, fd, buf, len, fixed));
        }
        Intent::Send(buf) => slot.output = Some(reactor.send(owner, fd, buf)),
        Intent::ReadFile {
            fd: file,
            offset,
            buf,
            len,
        } => slot.output = Some(reactor.read_at(owner, file, offset, buf, len)),
        Intent::SpliceFile {
            fd: file,
            offset,
            into,
            len,
        } => {
            slot.splice_out = false;
            let id = reactor.splice(owner, file, offset as i64, into, len);
            slot.output = Some(id);
        }
        Intent::SpliceUpstream {
            fd: from,
            into,
            len,
        } => {
            slot.splice_out = false;
            slot.output = Some(reactor.splice(owner, from, -1, into, len));
        }
        Intent::SpliceOut { from, len } => {
            slot.splice_out = true;
            slot.output = Some(reactor.splice(owner, from, -1, fd, len));
        }
        Intent::Open {
            dir,
            path,
            follow: false,
        } => {
            reactor.open_beneath(owner, dir, path);
        }
        Intent::Open {
            dir,
            path,
            follow: true,
        } => {
            reactor.open_following(owner, dir, path);
        }
        Intent::Stat { fd: file } => {
            reactor.statx(owner, file);
        }
        Intent::CloseFile(file) => {
            reactor.close(owner, file);
        }
        Intent::CancelRecv => {
            let target = slot.recv.expect("a receive is in flight to cancel");
            reactor.cancel(owner, target);
        }
        Intent::CancelOutput => {
            let target = slot.output.expect("an output is in flight to cancel");
            reactor.cancel(owner, target);
        }
        Intent::Shutdown => {
            reactor.shutdown(owner, fd, libc::SHUT_WR);
        }
        Intent::Close => {
            slot.socket_close = Some(reactor.close(owner, fd));
        }
        Intent::ReleaseIdle => {
            // The kernel must not hold the pages we give back: end the
            // registration first (no read is in flight now).
            release_window(reactor, slot, owner, stats);
            return true;
        }
    }
    false
}

/// A TLS connection's intent: its receives, sends, cancels and shutdown go
/// to its link; the rest is executed as a plain connection's.
#[inline(never)]
fn submit_through_link(
    executor: &mut Executor<'_>,
    slot: &mut Slot,
    owner: u32,
    intent: Intent<'_>,
) -> bool {
    let reactor = &mut *executor.reactor;
    let fd = slot.fd;
    let link = slot.link.as_mut().expect("a TLS connection's link");
    match intent {
        Intent::Recv(buf) => link.recv(buf),
        Intent::Send(buf) => link.send(buf),
        Intent::CancelRecv => {
            // With the kernel opening records, or the link receiving
            // ciphertext straight into it, the ring's receive holds the
            // connection's own loan.
            if link.cancel_recv() {
                if let Some(recv) = slot.recv {
                    reactor.cancel(owner, recv);
                }
            }
        }
        Intent::CancelOutput if slot.output.is_none() => {
            link.cancel_output();
            if let Some(send) = slot.net_send {
                reactor.cancel(owner, send);
            }
        }
        Intent::Shutdown => link.shutdown(),
        Intent::Close => {
            // The link's receive would wait on a closed socket for ever (a
            // close cancels nothing in the ring).
            link.abandon();
            for op in [slot.recv, slot.net_send].into_iter().flatten() {
                reactor.cancel(owner, op);
            }
            slot.socket_close = Some(reactor.close(owner, fd));
        }
        Intent::ReleaseIdle => {
            link.release_idle();
            return execute(executor, slot, owner, Intent::ReleaseIdle);
        }
        other => return execute(executor, slot, owner, other),
    }
    false
}

/// Registers slot `index`'s receive window with the ring (one
/// `io_uring_register`; the kernel pins and faults in its page). A refusal
/// — `RLIMIT_MEMLOCK` for an unprivileged user with many active
/// connections — leaves the connection on plain `recv`, logged once.
fn register_window(
    reactor: &mut Reactor,
    slot: &mut Slot,
    index: u32,
    stats: &WorkerStats,
    warned: &mut bool,
    worker: u32,
) {
    match reactor.register_window(
        index as u16,
        slot.conn.recv_buffer_mut(),
        FIXED_WINDOW_BYTES,
    ) {
        Ok(()) => {
            slot.registered = true;
            stats.registered_buffers.add(1);
        }
        Err(err) => {
            slot.fixed_refused = true;
            if !std::mem::replace(warned, true) {
                crate::log!(
                    Level::Warn,
                    Some(worker),
                    "registering a receive buffer with io_uring failed ({err}); such connections read into unregistered buffers (raise RLIMIT_MEMLOCK)"
                );
            }
        }
    }
}

/// Ends slot `index`'s registration so its pages can be given back. Only
/// with no read of the slot in flight.
fn release_window(reactor: &mut Reactor, slot: &mut Slot, index: u32, stats: &WorkerStats) {
    debug_assert!(slot.recv.is_none());
    if !slot.registered {
        return;
    }
    // On failure the slot stays registered and pinned: its pages are kept
    // (they cost RSS, never correctness).
    if reactor
        .unregister_window(index as u16, slot.conn.recv_buffer_mut())
        .is_ok()
    {
        slot.registered = false;
        stats.registered_buffers.sub(1);
    }
}

/// The app's log lines, into the worker's log.
fn log_app(line: &keystone_app::LogLine<'_>) {
    crate::log::record(&keystone_ops::error_log::Record {
        level: line.level,
        worker: Some(line.worker),
        route: line.route,
        count: line.count,
        message: line.message,
    });
}

fn meta_of(stat: FileStat) -> FileMeta {
    let kind = match stat.file_type {
        libc::S_IFREG => FileKind::Regular,
        libc::S_IFDIR => FileKind::Directory,
        _ => FileKind::Other,
    };
    FileMeta {
        size: stat.size,
        mtime_secs: stat.mtime_secs,
        kind,
    }
}

/// What to raise when a ring may not be created for lack of locked memory
/// (`RLIMIT_MEMLOCK`, for a user without `CAP_IPC_LOCK`); empty otherwise.
pub(crate) fn memlock_hint(err: &std::io::Error) -> String {
    keystone_reactor::memlock_limit_behind(err).map_or_else(String::new, |limit| format!(
        " (for a non-root user io_uring memory counts against RLIMIT_MEMLOCK, `ulimit -l`, {} KiB here: each worker's ring needs about 100 KiB, plus 4 KiB per active connection for registered receive buffers; raise it or grant CAP_IPC_LOCK)",
        limit / 1024
    ))
}
