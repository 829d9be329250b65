//! A worker's upstream side: its pools (a [`Balancer`] and idle
//! connections per peer), its upstream connections ([`UpstreamConn`], one
//! per slot), and which client connection each one serves. Sans-I/O like
//! the connections it feeds: [`Upstreams::poll`] says what to execute,
//! [`Upstreams::complete`] takes the completions, [`Upstreams::tick`] the
//! clock; the client connections it made progress for are in
//! [`Upstreams::take_wakes`].
//!
//! Policy, per nginx's `proxy_pass`: a failed connect (refused,
//! unreachable, timed out) moves on to another peer, up to the pool's
//! `retries`, and counts against the peer's health; a pooled connection
//! the upstream closed is noticed by its probe receive and never reused;
//! a response whose body was fully read on a keep-alive connection goes
//! back to its peer's pool, at most `keepalive` per peer.
//!
//! TLS (`tls = true` pools): a slot's connection gets a keystone-tls
//! [`Link`] (client role) once its TCP connect completes; the machine is
//! told `Connected` only when the handshake finished, so the pool's
//! connect timeout bounds both, and a handshake that fails (an unverified
//! certificate among the reasons) is a failed connect: passive health,
//! another peer, 502, the reason in the log. From then on the machine's
//! receives and sends go to the link and the link's ciphertext ones are
//! the operations the worker executes, all counted in `in_flight`; the link
//! stays with a pooled connection and goes at its close. A TLS upstream's
//! body never splices (the client side relays it through its buffer).

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Instant;

use keystone_ringbuf::{split_slab, RingBuffer, SendBuf, SpareLoan};
use std::sync::Arc;

use keystone_ops::stats::{PeerCounters, WorkerStats};
use keystone_tls::{Link, LinkIntent, CIPHER_IN_BYTES, CIPHER_OUT_BYTES};
use keystone_upstream::{
    Balancer, Failure, NoPeer, Outcome, Tried, UpstreamConn, UpstreamEvent, UpstreamIntent,
    BUFFERED_BODY_MAX, FORWARDED_HEAD_MAX, RESPONSE_HEAD_MAX,
};
use keystone_upstream::{PoolConfig, PoolTls};

/// Upstream connections one worker keeps (in use and pooled together).
/// Each has a send buffer sized for a forwarded head and a request body and
/// a receive buffer for the response; both are address space until used
/// and give their pages back when the connection closes.
pub const UPSTREAM_CONNECTIONS_MAX: usize = 256;

/// The response window: what one upstream connection buffers of its
/// response before the client has taken it (the relay's backpressure).
const RESPONSE_WINDOW_BYTES: u32 = 64 * 1024;
const _: () = assert!(RESPONSE_WINDOW_BYTES >= RESPONSE_HEAD_MAX);

/// A proxied request to start ([`Upstreams::start`]).
#[derive(Clone, Copy, Debug)]
pub struct Start<'a> {
    /// The client connection's slot.
    pub client: u32,
    /// The pool's index.
    pub pool: usize,
    /// The balancing key (`ctx.upstream_key`).
    pub key: &'a [u8],
    /// The request method (HEAD answers have no body; idempotent ones may
    /// be sent twice).
    pub method: &'a [u8],
    /// When the request started.
    pub now: Instant,
    /// The body follows through [`Upstreams::upload`] (`Some(true)`:
    /// framed as chunks); `None`: it is in the request `write` puts.
    pub streamed: Option<bool>,
    /// A WebSocket handshake: a `101` makes the connection a tunnel whose
    /// client bytes follow through [`Upstreams::upload`].
    pub upgrade: bool,
    /// Read the response body whole, up to this many bytes, before its
    /// head is shown (`ctx.upstream_buffer` with `ctx.on_response`); 0:
    /// relay it as it comes.
    pub buffer: u32,
}

/// An operation for the worker to execute for upstream connection `slot`.
#[derive(Debug)]
pub enum UpstreamOp {
    /// Make a TCP socket for `addr`'s family (→ [`UpstreamDone::Socket`]).
    Socket { addr: SocketAddr },
    /// Connect `fd` to `addr` (→ [`UpstreamDone::Event`] `Connected`).
    Connect { fd: RawFd, addr: SocketAddr },
    /// Send (→ `Sent`).
    Send { fd: RawFd, buf: SendBuf },
    /// Receive (→ `Received`).
    Recv { fd: RawFd, buf: SpareLoan },
    /// Cancel everything in flight on `fd` (→ [`UpstreamDone::Cancelled`]).
    Cancel { fd: RawFd },
    /// Close (→ [`UpstreamDone::Closed`]).
    Close { fd: RawFd },
}

/// A completion for upstream connection `slot`.
#[derive(Debug)]
pub enum UpstreamDone {
    /// The socket: a descriptor or `-errno`.
    Socket { result: i32 },
    /// A connect, send or receive.
    Event(UpstreamEvent),
    /// The cancel completed.
    Cancelled,
    /// The close completed.
    Closed,
}

/// How far a closing socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Cancel what is in flight (or close, when nothing is).
    Cancel,
    /// The cancel is out; close once nothing is in flight.
    Cancelling,
    /// The close is out.
    Closing,
}

/// Where an upstream slot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// The socket is to be made (`asked`: its op is out).
    Socketing {
        asked: bool,
    },
    /// Connected or connecting, serving a request or pooled.
    Live,
    /// The socket is being closed.
    Closing(Stage),
    /// The socket is closed; the client has not said it is done.
    Dead,
}

struct Slot {
    conn: UpstreamConn,
    fd: Option<RawFd>,
    state: SlotState,
    pool: usize,
    peer: usize,
    /// The client connection served (`None`: pooled, or the client is done).
    client: Option<u32>,
    tried: Tried,
    retries_left: u32,
    /// Operations in flight.
    in_flight: u32,
    /// Since when the current wait runs (for the pool's timeouts).
    waiting_since: Instant,
    /// Counted in the balancer (`begin`) and not yet ended.
    counted: bool,
    /// The failure the client is told.
    failure: Option<Failure>,
    /// Once the socket closes, a new one is made (a retry on another peer).
    then_retry: bool,
    /// The peer's address (kept: a reload may replace the pools).
    addr: SocketAddr,
    /// The pool's connect, send and read timeouts, likewise.
    timeouts: [std::time::Duration; 3],
    /// The pools' generation the slot started under.
    generation: u32,
    /// When the request started (for `$upstream_response_time`).
    started: Instant,
    /// When the upstream's head arrived.
    answered_at: Option<Instant>,
    /// The request may be sent twice (GET, HEAD, PUT, DELETE, OPTIONS,
    /// TRACE: RFC 9110 §9.2.2).
    idempotent: bool,
    /// The request started on a pooled connection.
    reused: bool,
    /// An active health check of (pool, peer), not a client's request.
    check: Option<(usize, usize)>,
    /// The peer's counters (`WorkerStats::peers`), fixed at start.
    stat: u16,
    /// In its peer's idle list (counted in the idle gauge).
    idle: bool,
    /// When the current connection's socket was made (its connect time
    /// is measured from here).
    socket_at: Instant,
    /// The pool's TLS, when it has `tls = true` (kept, like `addr`: a
    /// reload may replace the pools).
    tls: Option<Arc<PoolTls>>,
    /// The TLS session of the current connection (from its connect to its
    /// close; pooled with it).
    link: Option<Box<Link>>,
    /// The ciphertext buffers a link takes, home while there is none
    /// (`None` also if a link could not be made and lost them).
    cipher: Option<(RingBuffer, RingBuffer)>,
    /// Why the link failed, for the failure's log line.
    tls_failure: Option<String>,
}

/// One pool at runtime.
struct Pool {
    config: PoolConfig,
    balancer: Balancer,
    /// Pooled slots per peer, most recently used last.
    idle: Vec<Vec<usize>>,
    /// When each peer's next active health check is due (`health_check`
    /// pools), and whether one is in flight.
    checks: Vec<(Instant, bool)>,
    /// Each peer's counter slot in `WorkerStats::peers`.
    stats: Vec<u16>,
}

/// What a proxied request's client sees of its upstream.
pub enum Progress<'a> {
    /// Nothing yet.
    Waiting,
    /// The response head, over the upstream buffer's bytes, and the whole
    /// body when it was buffered (`ctx.upstream_buffer`).
    Head {
        head: &'a keystone_parser::ResponseHead,
        bytes: &'a [u8],
        body: Option<&'a [u8]>,
    },
    /// No response will come.
    Failed { status: u16 },
}

/// A worker's upstreams.
pub struct Upstreams {
    pools: Vec<Pool>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Client slot → upstream slot.
    by_client: Vec<Option<usize>>,
    /// Slots whose machine may have something to do.
    dirty: Vec<usize>,
    /// Client connections to wake (`Event::Upstream`).
    wakes: Vec<u32>,
    /// Log lines to write.
    pub(crate) notes: Vec<String>,
    /// Bumped by a reload: slots of an older generation finish their
    /// request and close, never going back to a pool.
    generation: u32,
    /// This worker's counters (the per-peer ones are written here).
    stats: Arc<WorkerStats>,
    /// Bodies are relayed by copy, never spliced ([`Upstreams::relay_only`]).
    relay_only: bool,
}

impl Upstreams {
    /// The runtime of `pools` (none: no buffers are made). `request_bytes`
    /// is the largest forwarded body (the client body limit).
    pub fn new(
        pools: &[PoolConfig],
        request_bytes: u64,
        stats: Arc<WorkerStats>,
    ) -> Result<Upstreams, String> {
        let slots = if pools.is_empty() {
            Vec::new()
        } else {
            let send_bytes = u32::try_from(request_bytes + FORWARDED_HEAD_MAX as u64)
                .map_err(|_| "the body limit is too large to forward".to_string())?;
            let sends = split_slab(UPSTREAM_CONNECTIONS_MAX as u32, send_bytes)
                .map_err(|e| e.to_string())?;
            // The window, plus room to buffer a whole body for
            // `ctx.upstream_buffer` (address space, touched only then).
            let recvs = split_slab(
                UPSTREAM_CONNECTIONS_MAX as u32,
                RESPONSE_WINDOW_BYTES + BUFFERED_BODY_MAX,
            )
            .map_err(|e| e.to_string())?;
            // Ciphertext buffers for TLS pools' connections: address space,
            // touched only by a TLS connection (a reload may bring one).
            let cipher_ins = split_slab(UPSTREAM_CONNECTIONS_MAX as u32, CIPHER_IN_BYTES)
                .map_err(|e| e.to_string())?;
            let cipher_outs = split_slab(UPSTREAM_CONNECTIONS_MAX as u32, CIPHER_OUT_BYTES)
                .map_err(|e| e.to_string())?;
            let now = Instant::now();
            sends
                .into_iter()
                .zip(recvs)
                .zip(cipher_ins.into_iter().zip(cipher_outs))
                .map(|((send, recv), cipher)| Slot {
                    conn: UpstreamConn::new(send, recv, RESPONSE_WINDOW_BYTES),
                    fd: None,
                    state: SlotState::Free,
                    pool: 0,
                    peer: 0,
                    client: None,
                    tried: Tried::default(),
                    retries_left: 0,
                    in_flight: 0,
                    waiting_since: now,
                    counted: false,
                    failure: None,
                    then_retry: false,
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    timeouts: [std::time::Duration::ZERO; 3],
                    generation: 0,
                    started: now,
                    answered_at: None,
                    idempotent: false,
                    reused: false,
                    check: None,
                    stat: 0,
                    idle: false,
                    socket_at: now,
                    tls: None,
                    link: None,
                    cipher: Some(cipher),
                    tls_failure: None,
                })
                .collect()
        };
        let free = (0..slots.len()).rev().collect();
        Ok(Upstreams {
            pools: pools
                .iter()
                .map(|config| Pool {
                    balancer: Balancer::new(config),
                    idle: vec![Vec::new(); config.peers.len()],
                    checks: vec![(Instant::now(), false); config.peers.len()],
                    stats: peer_slots(&stats, config),
                    config: config.clone(),
                })
                .collect(),
            slots,
            free,
            by_client: Vec::new(),
            dirty: Vec::with_capacity(UPSTREAM_CONNECTIONS_MAX * 2),
            wakes: Vec::with_capacity(UPSTREAM_CONNECTIONS_MAX),
            notes: Vec::new(),
            generation: 0,
            stats,
            relay_only: false,
        })
    }

    /// Response bodies are relayed through the buffer, never spliced: for
    /// in-process drivers whose upstream connections are no sockets
    /// (`keystone test`). The client gets the same bytes either way.
    pub fn relay_only(&mut self) {
        self.relay_only = true;
    }

    fn counters(&self, index: usize) -> &PeerCounters {
        &self.stats.peers[self.slots[index].stat as usize]
    }

    /// A reload's pools replace these for new requests. Requests in flight
    /// finish on their connections (addresses and timeouts are theirs);
    /// pooled connections close. `false` when the new app declares pools
    /// but this worker was made without upstream connections (the caller
    /// rebuilds it; nothing is in flight then).
    pub fn reload(&mut self, pools: &[PoolConfig]) -> bool {
        if !pools.is_empty() && self.slots.is_empty() {
            return false;
        }
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.state == SlotState::Live && slot.client.is_none() {
                self.close(index);
            }
        }
        self.pools = pools
            .iter()
            .map(|config| Pool {
                balancer: Balancer::new(config),
                idle: vec![Vec::new(); config.peers.len()],
                checks: vec![(Instant::now(), false); config.peers.len()],
                stats: peer_slots(&self.stats, config),
                config: config.clone(),
            })
            .collect();
        self.generation += 1;
        true
    }

    /// Whether slot `index` belongs to the current pools.
    fn current(&self, index: usize) -> bool {
        self.slots[index].generation == self.generation
    }

    /// Upstream connections (the worker's reactor needs an owner for each).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Starts `request`: picks a peer, takes a pooled connection or a free
    /// slot, and has `write` put the forwarded request into its send
    /// buffer (it is given the pool's name, the `Host` of a request that
    /// has none). `Err(status)` when nothing can take it (the reason is in
    /// `notes`).
    pub fn start(
        &mut self,
        request: Start<'_>,
        write: impl FnOnce(&mut RingBuffer, &str) -> bool,
    ) -> Result<(), u16> {
        let Start {
            client,
            pool,
            key,
            method,
            now,
            streamed,
            upgrade,
            buffer,
        } = request;
        let head_request = method == b"HEAD";
        let idempotent = [
            &b"GET"[..],
            b"HEAD",
            b"PUT",
            b"DELETE",
            b"OPTIONS",
            b"TRACE",
        ]
        .contains(&method);
        let peer = match self.pools[pool].balancer.pick(key, &Tried::default(), now) {
            Ok(peer) => peer,
            Err(NoPeer) => {
                let name = &self.pools[pool].config.name;
                self.notes
                    .push(format!("upstream {name}: no live peer; answering 502"));
                return Err(502);
            }
        };
        // A pooled connection whose probe has not fired, else a free slot.
        let pooled = loop {
            match self.pools[pool].idle[peer].pop() {
                Some(index) => {
                    self.slots[index].idle = false;
                    self.counters(index).idle.sub(1);
                    if self.slots[index].conn.is_pooled() {
                        break Some(index);
                    }
                    self.close(index);
                }
                None => break None,
            }
        };
        let (index, connected) = match pooled
            .map(|i| (i, true))
            .or_else(|| self.free.pop().map(|i| (i, false)))
        {
            Some(found) => found,
            None => {
                let name = &self.pools[pool].config.name;
                self.notes.push(format!(
                    "upstream {name}: all {UPSTREAM_CONNECTIONS_MAX} upstream connections of this worker are busy; answering 502"
                ));
                return Err(502);
            }
        };
        let slot = &mut self.slots[index];
        if !write(slot.conn.request_buffer(), &self.pools[pool].config.name) {
            slot.conn.request_buffer().reset_for_reuse();
            if connected {
                self.close(index);
            } else {
                self.free.push(index);
            }
            let name = &self.pools[pool].config.name;
            self.notes.push(format!(
                "upstream {name}: the forwarded request does not fit its buffer; answering 502"
            ));
            return Err(502);
        }
        slot.pool = pool;
        slot.peer = peer;
        slot.client = Some(client);
        slot.tried = Tried::default();
        slot.tried.insert(peer);
        slot.retries_left = self.pools[pool].config.retries;
        slot.waiting_since = now;
        slot.failure = None;
        slot.then_retry = false;
        slot.counted = true;
        slot.generation = self.generation;
        slot.started = now;
        slot.answered_at = None;
        slot.idempotent = idempotent;
        slot.reused = connected;
        slot.check = None;
        slot.stat = self.pools[pool].stats[peer];
        self.stats.peers[slot.stat as usize].requests.add(1);
        self.stats.peers[slot.stat as usize].active.add(1);
        let config = &self.pools[pool].config;
        slot.addr = config.peers[peer];
        slot.timeouts = [
            config.connect_timeout,
            config.send_timeout,
            config.read_timeout,
        ];
        // A pooled connection is the same pool's (a reload closes them):
        // the same `Arc`, so this is a count, not an allocation.
        slot.tls.clone_from(&config.tls);
        slot.tls_failure = None;
        self.pools[pool].balancer.begin(peer);
        slot.conn.start(connected, head_request);
        if let Some(chunked) = streamed {
            slot.conn.stream_body(chunked);
        }
        if upgrade {
            slot.conn.expect_upgrade();
        }
        if buffer > 0 && !head_request {
            slot.conn.buffer_body(buffer);
        }
        if !connected {
            slot.state = SlotState::Socketing { asked: false };
        }
        let client_index = client as usize;
        if self.by_client.len() <= client_index {
            self.by_client.resize(client_index + 1, None);
        }
        self.by_client[client_index] = Some(index);
        self.dirty.push(index);
        Ok(())
    }

    /// The next operation to execute, with its upstream slot. `now`: a TLS
    /// link may hand its machine what it already holds, and what follows
    /// from that (a response complete, a failure) is settled at `now`.
    pub fn poll(&mut self, now: Instant) -> Option<(usize, UpstreamOp)> {
        // Taken off before it is looked at: settling a slot may mark others
        // (or itself) dirty again.
        while let Some(index) = self.dirty.pop() {
            if let Some(op) = self.next_op(index, now) {
                self.slots[index].in_flight += 1;
                self.dirty.push(index); // it may have more
                return Some((index, op));
            }
        }
        None
    }

    /// Slot `index`'s next operation, if any.
    fn next_op(&mut self, index: usize, now: Instant) -> Option<UpstreamOp> {
        let slot = &mut self.slots[index];
        match slot.state {
            SlotState::Free | SlotState::Dead => None,
            SlotState::Socketing { asked: false } if slot.in_flight == 0 => {
                slot.state = SlotState::Socketing { asked: true };
                Some(UpstreamOp::Socket { addr: slot.addr })
            }
            SlotState::Socketing { .. } => None,
            SlotState::Closing(Stage::Cancel) => {
                let fd = slot.fd.expect("a closing slot has its socket");
                abandon_link(slot);
                if slot.in_flight > 0 {
                    slot.state = SlotState::Closing(Stage::Cancelling);
                    Some(UpstreamOp::Cancel { fd })
                } else {
                    slot.state = SlotState::Closing(Stage::Closing);
                    Some(UpstreamOp::Close { fd })
                }
            }
            SlotState::Closing(Stage::Cancelling) if slot.in_flight == 0 => {
                slot.state = SlotState::Closing(Stage::Closing);
                Some(UpstreamOp::Close {
                    fd: slot.fd.expect("a closing slot has its socket"),
                })
            }
            SlotState::Closing(_) => None,
            SlotState::Live if slot.link.is_some() => self.tls_op(index, now),
            SlotState::Live => {
                let fd = slot.fd.expect("a live slot has its socket");
                let addr = slot.addr;
                slot.conn.poll().map(|intent| match intent {
                    UpstreamIntent::Connect => UpstreamOp::Connect { fd, addr },
                    UpstreamIntent::Send(buf) => UpstreamOp::Send { fd, buf },
                    UpstreamIntent::Recv(buf) => UpstreamOp::Recv { fd, buf },
                })
            }
        }
    }

    /// A TLS slot's next operation: the machine's receives and sends go to
    /// the link, what the link hands back goes to the machine (and is
    /// settled), and the link's own ciphertext receives and sends are what
    /// the worker executes.
    fn tls_op(&mut self, index: usize, now: Instant) -> Option<UpstreamOp> {
        // Each turn moves a loan or an event one step; a slot has two
        // loans, so a handful of turns settles it (bounded for safety).
        for _ in 0..TLS_STEPS_MAX {
            let Slot {
                conn,
                link,
                fd,
                state,
                tls_failure,
                ..
            } = &mut self.slots[index];
            if *state != SlotState::Live {
                return None; // a settle below failed or pooled it
            }
            let fd = fd.expect("a live slot has its socket");
            let link = link.as_mut().expect("a TLS slot's link");
            let event = match link.poll() {
                Some(LinkIntent::Recv(buf)) => return Some(UpstreamOp::Recv { fd, buf }),
                Some(LinkIntent::Send(buf)) => return Some(UpstreamOp::Send { fd, buf }),
                Some(LinkIntent::Established) => Some(UpstreamEvent::Connected { result: 0 }),
                Some(LinkIntent::Received { buf, result }) => {
                    Some(UpstreamEvent::Received { buf, result })
                }
                Some(LinkIntent::Sent { buf, result }) => Some(UpstreamEvent::Sent { buf, result }),
                // A shutdown is never asked for (closes cancel), nor is
                // kernel TLS offered to an upstream link: nothing to do.
                Some(other) => {
                    debug_assert!(matches!(other, LinkIntent::Shutdown), "{other:?}");
                    continue;
                }
                // Once: a handshake that failed fails the connect (after
                // it, the machine reads a reset instead).
                None => link.take_failure().map(|why| {
                    *tls_failure = Some(why);
                    UpstreamEvent::TlsFailed
                }),
            };
            if let Some(event) = event {
                conn.on(event);
                self.settle(index, now);
                continue;
            }
            match conn.poll() {
                Some(UpstreamIntent::Send(buf)) => link.send(buf),
                Some(UpstreamIntent::Recv(buf)) => link.recv(buf),
                Some(UpstreamIntent::Connect) => {
                    unreachable!("a link is made after the connect")
                }
                None => return None,
            }
        }
        // Not expected: the slot is looked at again on its next event.
        debug_assert!(false, "a TLS slot did not settle");
        None
    }

    /// A completion for upstream slot `index`.
    pub fn complete(&mut self, index: usize, done: UpstreamDone, now: Instant) {
        let slot = &mut self.slots[index];
        debug_assert!(slot.in_flight > 0);
        slot.in_flight -= 1;
        slot.waiting_since = now;
        self.dirty.push(index);
        match done {
            UpstreamDone::Socket { result } if result >= 0 => {
                slot.fd = Some(result);
                slot.socket_at = now;
                if slot.client.is_none() && slot.check.is_none() {
                    // The client left while the socket was being made.
                    slot.state = SlotState::Closing(Stage::Cancel);
                    return;
                }
                slot.state = SlotState::Live;
            }
            UpstreamDone::Socket { result } => {
                if slot.check.is_some() {
                    slot.state = SlotState::Dead;
                    return self.check_done(index, false, "cannot make a socket", now);
                }
                // A local failure (descriptors exhausted): no peer is to
                // blame, and another would fail alike.
                self.notes.push(format!(
                    "upstream peer {}: cannot make a socket: errno {}",
                    slot.addr, -result
                ));
                self.end_count(index, Outcome::Success, now);
                let slot = &mut self.slots[index];
                slot.failure = Some(Failure::ConnectFailed(-result));
                match slot.client {
                    Some(client) => {
                        slot.state = SlotState::Dead;
                        self.wakes.push(client);
                    }
                    None => self.release(index),
                }
                return;
            }
            UpstreamDone::Event(event) => {
                if let Some(link) = &mut slot.link {
                    // Ciphertext: the link's (in any state: loans go home);
                    // what it now has for the machine, `poll` delivers.
                    match event {
                        UpstreamEvent::Sent { buf, result } => link.on_sent(buf, result),
                        UpstreamEvent::Received { buf, result } => link.on_received(buf, result),
                        other => unreachable!("{other:?} for a slot with a TLS link"),
                    }
                    if slot.state != SlotState::Live {
                        self.reap(index);
                    }
                    return;
                }
                let stale_connect = matches!(event, UpstreamEvent::Connected { .. })
                    && slot.state != SlotState::Live;
                if let (UpstreamEvent::Connected { result: 0 }, false, None) =
                    (&event, stale_connect, slot.check)
                {
                    let took = now.saturating_duration_since(slot.socket_at);
                    self.stats.peers[slot.stat as usize].connect.observe(took);
                }
                let handshake = matches!(event, UpstreamEvent::Connected { result: 0 })
                    && !stale_connect
                    && slot.tls.is_some();
                if handshake {
                    // The machine hears of the connect once the handshake
                    // is done (`tls_op`).
                    start_link(slot);
                } else if !stale_connect {
                    slot.conn.on(event); // in any state: loans go home
                }
                if slot.state != SlotState::Live {
                    self.reap(index);
                    return;
                }
            }
            UpstreamDone::Cancelled => {
                self.reap(index);
                return;
            }
            UpstreamDone::Closed => {
                retire_link(slot);
                slot.fd = None;
                if std::mem::take(&mut slot.then_retry) && slot.client.is_some() {
                    slot.state = SlotState::Socketing { asked: false };
                } else if slot.client.is_some() {
                    slot.state = SlotState::Dead;
                } else {
                    self.release(index);
                }
                return;
            }
        }
        self.settle(index, now);
    }

    /// Looks at live slot `index` after an event: wakes its client, or
    /// pools, retries or closes it.
    fn settle(&mut self, index: usize, now: Instant) {
        if self.slots[index].check.is_some() {
            return self.settle_check(index, now);
        }
        let slot = &mut self.slots[index];
        if slot.answered_at.is_none() {
            if let Some(status) = slot.conn.response_status() {
                slot.answered_at = Some(now);
                let class = (status / 100).clamp(1, 5) as usize - 1;
                let counters = &self.stats.peers[slot.stat as usize];
                counters.responses[class].add(1);
                counters
                    .response
                    .observe(now.saturating_duration_since(slot.started));
            }
        }
        let slot = &mut self.slots[index];
        if let Some(client) = slot.client {
            self.wakes.push(client);
        }
        match slot.conn.outcome() {
            None => {}
            Some(Ok(reusable)) => {
                let pooled_already = slot.client.is_none() && slot.conn.is_pooled();
                self.end_count(index, Outcome::Success, now);
                if self.slots[index].client.is_none() && !pooled_already {
                    self.finish(index, reusable);
                }
            }
            Some(Err(failure)) => self.fail(index, failure, now),
        }
    }

    /// Slot `index` failed: count it against the peer, retry on another
    /// peer if allowed, or record the failure for the client.
    fn fail(&mut self, index: usize, failure: Failure, now: Instant) {
        let detail = tls_detail(&mut self.slots[index], failure);
        if self.slots[index].check.is_some() {
            let why = format!("{}{detail}", failure.reason());
            return self.check_done(index, false, &why, now);
        }
        // A request may go out again if nothing of it went out, or if it
        // is idempotent (nginx's rule for proxy_next_upstream).
        let slot = &self.slots[index];
        let resend_ok = slot.idempotent || !slot.conn.sent_any();
        // A reused connection the upstream had closed (it answered nothing):
        // not the peer's fault; the same request goes on a fresh connection
        // to the same peer, without spending a retry.
        let stale = self.current(index)
            && slot.client.is_some()
            && slot.reused
            && resend_ok
            && matches!(
                failure,
                Failure::ClosedBeforeHead { any_byte: false } | Failure::SendFailed(_)
            );
        if stale && self.slots[index].conn.retry_fresh() {
            self.slots[index].reused = false;
            return self.reconnect(index, now);
        }
        let reason = match failure {
            Failure::Refused | Failure::ConnectFailed(_) => 0,
            Failure::ConnectTimeout | Failure::SendTimeout | Failure::ReadTimeout => 1,
            Failure::ClosedBeforeHead { .. } | Failure::SendFailed(_) => 2,
            Failure::BadHead(_) => 3,
            Failure::BrokenBody => 4,
            Failure::TooLargeToBuffer { .. } => 5,
            Failure::Tls => 6,
        };
        if self.slots[index].client.is_some() {
            self.counters(index).failures[reason].add(1);
        }
        let health = match failure {
            Failure::BadHead(_) | Failure::BrokenBody | Failure::TooLargeToBuffer { .. } => {
                Outcome::Success
            }
            _ => Outcome::Failure,
        };
        self.end_count(index, health, now);
        let current = self.current(index);
        let slot = &mut self.slots[index];
        if slot.client.is_none() || !current {
            if slot.client.is_some() {
                // An older generation's request: told, never retried.
                return self.tell_failure(index, failure);
            }
            // A pooled connection the upstream closed, or one the client
            // already left: nothing to tell anyone.
            self.close(index);
            return;
        }
        let pool = &mut self.pools[slot.pool];
        let addr = slot.addr;
        self.notes.push(format!(
            "upstream {}: peer {addr}: {}{detail}",
            pool.config.name,
            failure.reason()
        ));
        let next = (slot.retries_left > 0 && failure.before_any_response() && resend_ok)
            .then(|| pool.balancer.pick(&[], &slot.tried, now).ok())
            .flatten();
        if let Some(next) = next {
            if slot.conn.retry_fresh() {
                slot.retries_left -= 1;
                slot.tried.insert(next);
                slot.peer = next;
                slot.addr = pool.config.peers[next];
                slot.stat = pool.stats[next];
                self.stats.peers[slot.stat as usize].requests.add(1);
                self.stats.peers[slot.stat as usize].active.add(1);
                slot.counted = true;
                pool.balancer.begin(next);
                return self.reconnect(index, now);
            }
        }
        self.tell_failure(index, failure);
    }

    /// Slot `index` sends its kept request again on a new connection (to
    /// its peer, which a failover may just have changed): the old socket
    /// closes first, if there is one.
    fn reconnect(&mut self, index: usize, now: Instant) {
        let slot = &mut self.slots[index];
        slot.waiting_since = now;
        if slot.fd.is_some() {
            slot.then_retry = true;
            slot.state = SlotState::Closing(Stage::Cancel);
        } else {
            slot.state = SlotState::Socketing { asked: false };
        }
        self.dirty.push(index);
    }

    /// Slot `index`'s client is told `failure` (it reads it from
    /// `progress`); the socket closes meanwhile.
    fn tell_failure(&mut self, index: usize, failure: Failure) {
        let slot = &mut self.slots[index];
        slot.failure = Some(failure);
        if let Some(client) = slot.client {
            self.wakes.push(client);
        }
        if slot.fd.is_some() {
            slot.state = SlotState::Closing(Stage::Cancel);
            self.dirty.push(index);
        } else {
            slot.state = SlotState::Dead;
        }
    }

    /// Slot `index`'s request is complete and its client done: pooled when
    /// reusable and the peer's pool has room, else closed.
    fn finish(&mut self, index: usize, reusable: bool) {
        if !self.current(index) {
            return self.close(index);
        }
        let slot = &mut self.slots[index];
        let pool = &mut self.pools[slot.pool];
        let room = pool.idle[slot.peer].len() < pool.config.keepalive as usize;
        if reusable && room && slot.state == SlotState::Live {
            slot.conn.reset_for_pool();
            pool.idle[slot.peer].push(index);
            slot.idle = true;
            self.stats.peers[slot.stat as usize].idle.add(1);
            self.dirty.push(index); // arms the probe
        } else {
            self.close(index);
        }
    }

    /// Starts closing slot `index` (its client is done or was never told).
    fn close(&mut self, index: usize) {
        if std::mem::take(&mut self.slots[index].idle) {
            self.counters(index).idle.sub(1);
        }
        if self.current(index) {
            let (pool, peer) = (self.slots[index].pool, self.slots[index].peer);
            if let Some(idle) = self.pools.get_mut(pool).and_then(|p| p.idle.get_mut(peer)) {
                idle.retain(|&i| i != index);
            }
        }
        let slot = &mut self.slots[index];
        match slot.state {
            SlotState::Closing(_) | SlotState::Free => {}
            _ if slot.fd.is_some() => {
                slot.state = SlotState::Closing(Stage::Cancel);
                self.dirty.push(index);
            }
            SlotState::Socketing { asked: true } => {} // closes when made
            _ if slot.client.is_none() && slot.in_flight == 0 => self.release(index),
            _ => slot.state = SlotState::Dead,
        }
    }

    /// A dead slot whose client is done and whose last operation came back
    /// is free again.
    fn reap(&mut self, index: usize) {
        let slot = &self.slots[index];
        if slot.state == SlotState::Dead && slot.client.is_none() && slot.in_flight == 0 {
            self.release(index);
        }
    }

    /// Slot `index` is free again.
    fn release(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        debug_assert_eq!(slot.in_flight, 0);
        debug_assert!(slot.link.is_none(), "a link goes with its socket");
        slot.state = SlotState::Free;
        slot.fd = None;
        slot.client = None;
        slot.conn.discard();
        self.free.push(index);
    }

    /// Client connections whose upstream progressed since the last call.
    pub fn take_wakes(&mut self, out: &mut Vec<u32>) {
        out.append(&mut self.wakes);
    }

    /// Starts the active health checks that are due: `GET path` on a
    /// connection of its own (`Connection: close`).
    fn start_checks(&mut self, now: Instant) {
        for pool in 0..self.pools.len() {
            let Some(check) = self.pools[pool].config.health_check.clone() else {
                continue;
            };
            for peer in 0..self.pools[pool].config.peers.len() {
                let (due, running) = self.pools[pool].checks[peer];
                if running || now < due {
                    continue;
                }
                let Some(index) = self.free.pop() else { return };
                let config = &self.pools[pool].config;
                let addr = config.peers[peer];
                let slot = &mut self.slots[index];
                let head = format!(
                    "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: keystone-health-check\r\nConnection: close\r\n\r\n",
                    check.path
                );
                if slot.conn.request_buffer().append(head.as_bytes()).is_err() {
                    self.free.push(index);
                    continue;
                }
                slot.pool = pool;
                slot.peer = peer;
                slot.addr = addr;
                slot.timeouts = [
                    config.connect_timeout,
                    config.send_timeout,
                    config.read_timeout,
                ];
                slot.tls.clone_from(&config.tls);
                slot.tls_failure = None;
                slot.generation = self.generation;
                slot.client = None;
                slot.check = Some((pool, peer));
                slot.counted = false;
                slot.failure = None;
                slot.then_retry = false;
                slot.started = now;
                slot.waiting_since = now;
                slot.conn.start(false, false);
                slot.state = SlotState::Socketing { asked: false };
                self.pools[pool].checks[peer] = (now + check.interval, true);
                self.dirty.push(index);
            }
        }
    }

    /// A health check's connection progressed: its status decides.
    fn settle_check(&mut self, index: usize, now: Instant) {
        let slot = &self.slots[index];
        if slot.state != SlotState::Live {
            return;
        }
        if let Some(status) = slot.conn.response_status() {
            let passed = (200..400).contains(&status);
            return self.check_done(index, passed, "answered", now);
        }
        if let Some(Err(failure)) = slot.conn.outcome() {
            let why = format!(
                "{}{}",
                failure.reason(),
                tls_detail(&mut self.slots[index], failure)
            );
            self.check_done(index, false, &why, now);
        }
    }

    /// A health check ended: a pass brings the peer back, a failure takes
    /// it out until the next pass (or `fail_timeout`).
    fn check_done(&mut self, index: usize, passed: bool, why: &str, now: Instant) {
        let Some((pool, peer)) = self.slots[index].check.take() else {
            return;
        };
        if self.current(index) {
            let pool_ref = &mut self.pools[pool];
            pool_ref.checks[peer].1 = false;
            let was_down = pool_ref.balancer.is_down(peer, now);
            if passed {
                pool_ref.balancer.revive(peer);
            } else {
                pool_ref.balancer.take_out(peer, now);
                if !was_down {
                    let status = self.slots[index].conn.response_status();
                    let what = match status {
                        Some(status) => format!("answered {status}"),
                        None => why.to_string(),
                    };
                    self.notes.push(format!(
                        "upstream {}: peer {}: health check {} {what}; out of rotation",
                        pool_ref.config.name,
                        pool_ref.config.peers[peer],
                        pool_ref
                            .config
                            .health_check
                            .as_ref()
                            .map_or("", |c| c.path.as_str()),
                    ));
                }
            }
        }
        self.close(index);
    }

    /// Fails the waits that outlived their pool's timeout, and starts the
    /// health checks that are due.
    pub fn tick(&mut self, now: Instant) {
        self.start_checks(now);
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            if slot.state != SlotState::Live || (slot.client.is_none() && slot.check.is_none()) {
                continue;
            }
            let Some(wait) = slot.conn.timeout() else {
                continue;
            };
            let [connect, send, read] = slot.timeouts;
            let limit = UpstreamConn::timeout_for(wait, connect, send, read);
            if now.saturating_duration_since(slot.waiting_since) < limit {
                continue;
            }
            slot.conn.on(UpstreamEvent::TimedOut);
            if let Some(Err(failure)) = slot.conn.outcome() {
                self.fail(index, failure, now);
            }
        }
    }

    /// What client `client`'s proxied request has from its upstream.
    pub fn progress(&self, client: u32) -> Progress<'_> {
        let Some(index) = self.slot_of(client) else {
            return Progress::Failed { status: 502 };
        };
        let slot = &self.slots[index];
        if let Some(failure) = slot.failure {
            return Progress::Failed {
                status: failure.status(),
            };
        }
        match slot.conn.response_head() {
            Some((head, bytes)) => Progress::Head {
                head,
                bytes,
                body: slot.conn.buffered_body(),
            },
            None => Progress::Waiting,
        }
    }

    /// The head was relayed.
    pub fn take_head(&mut self, client: u32) {
        if let Some(index) = self.slot_of(client) {
            self.slots[index].conn.take_head();
            self.dirty.push(index);
        }
    }

    /// Body bytes for client `client`: `Ok(bytes)` (empty: none yet),
    /// `Err(true)` at the end, `Err(false)` when the body broke off.
    pub fn body(&self, client: u32) -> Result<&[u8], bool> {
        let Some(index) = self.slot_of(client) else {
            return Err(false);
        };
        let slot = &self.slots[index];
        let bytes = slot.conn.body();
        if !bytes.is_empty() {
            return Ok(bytes);
        }
        if slot.failure.is_some() || slot.state != SlotState::Live {
            return Err(false);
        }
        match slot.conn.outcome() {
            Some(Ok(_)) => Err(true),
            Some(Err(_)) => Err(false),
            None => Ok(&[]),
        }
    }

    /// Body bytes of client `client`'s streamed request: how many its
    /// upstream connection took (the client is woken when it has room).
    pub fn upload(&mut self, client: u32, bytes: &[u8]) -> u32 {
        let Some(index) = self.slot_of(client) else {
            return bytes.len() as u32; // nobody is waiting for them
        };
        let slot = &mut self.slots[index];
        if slot.failure.is_some() {
            return bytes.len() as u32;
        }
        let taken = slot.conn.push_body(bytes);
        if taken > 0 {
            self.dirty.push(index);
        }
        taken
    }

    /// Client `client`'s streamed request body is complete.
    pub fn upload_end(&mut self, client: u32) {
        if let Some(index) = self.slot_of(client) {
            self.slots[index].conn.end_body();
            self.dirty.push(index);
        }
    }

    /// Hands the rest of client `client`'s response body to it for a
    /// splice: the upstream socket and the bytes left (see
    /// [`UpstreamConn::splice_body`]).
    pub fn splice(&mut self, client: u32, min: u64) -> Option<(RawFd, u64)> {
        let index = self.slot_of(client)?;
        let slot = &mut self.slots[index];
        // A TLS upstream's bytes on the socket are ciphertext: its body is
        // relayed through the buffer, decrypted, never spliced.
        if self.relay_only
            || slot.state != SlotState::Live
            || slot.failure.is_some()
            || slot.tls.is_some()
        {
            return None;
        }
        let fd = slot.fd?;
        let left = slot.conn.splice_body(min)?;
        Some((fd, left))
    }

    /// `n` bytes of client `client`'s spliced body moved.
    pub fn spliced(&mut self, client: u32, n: u32, now: Instant) {
        if let Some(index) = self.slot_of(client) {
            let slot = &mut self.slots[index];
            slot.waiting_since = now;
            slot.conn.spliced(u64::from(n));
        }
    }

    /// Client `client`'s spliced body broke off: counted and logged with
    /// the peer, like a body cut short.
    pub fn splice_failed(&mut self, client: u32, now: Instant) {
        if let Some(index) = self.slot_of(client) {
            self.slots[index].conn.splice_failed();
            if let Some(Err(failure)) = self.slots[index].conn.outcome() {
                self.fail(index, failure, now);
            }
        }
    }

    /// Client `client` queued `n` body bytes.
    pub fn consumed(&mut self, client: u32, n: u32) {
        if let Some(index) = self.slot_of(client) {
            self.slots[index].conn.consume_body(n);
            self.dirty.push(index);
        }
    }

    /// Client `client` is done (answered or gone): its upstream connection
    /// is pooled, or closed when its response is not complete.
    pub fn done(&mut self, client: u32, now: Instant) {
        let Some(index) = self
            .by_client
            .get_mut(client as usize)
            .and_then(Option::take)
        else {
            return;
        };
        self.slots[index].client = None;
        self.end_count(index, Outcome::Success, now);
        let slot = &mut self.slots[index];
        match slot.state {
            SlotState::Live => match slot.conn.outcome() {
                Some(Ok(reusable)) => self.finish(index, reusable),
                _ => self.close(index),
            },
            SlotState::Dead if slot.in_flight == 0 => self.release(index),
            SlotState::Socketing { asked: false } if slot.in_flight == 0 => self.release(index),
            _ => {} // the socket's completion or close finishes it
        }
    }

    /// Ends slot `index`'s count in its peer's balancer, once.
    fn end_count(&mut self, index: usize, outcome: Outcome, now: Instant) {
        let current = self.current(index);
        let slot = &mut self.slots[index];
        if std::mem::take(&mut slot.counted) {
            self.stats.peers[slot.stat as usize].active.sub(1);
            if current {
                self.pools[slot.pool].balancer.end(slot.peer, outcome, now);
            }
        }
    }

    fn slot_of(&self, client: u32) -> Option<usize> {
        self.by_client.get(client as usize).copied().flatten()
    }

    /// Upstream slot `index`'s pool (its name) and peer (its index in the
    /// pool): which backend an operation of that slot is for, for drivers
    /// that answer as the backends (`keystone test`'s fakes).
    pub fn target_of(&self, index: usize) -> Option<(&str, usize)> {
        let slot = self.slots.get(index)?;
        let pool = self.pools.get(slot.pool)?;
        Some((pool.config.name.as_str(), slot.peer))
    }

    /// The peer serving client `client` (the last one tried).
    pub fn peer_of(&self, client: u32) -> Option<SocketAddr> {
        Some(self.slots[self.slot_of(client)?].addr)
    }

    /// For the access log: the peer that answered client `client`, its
    /// status (or the one the client got when none came) and the seconds
    /// from the request to that answer.
    pub fn log_entry(&self, client: u32, now: Instant) -> Option<(SocketAddr, u16, f64)> {
        let slot = &self.slots[self.slot_of(client)?];
        let status = match (slot.failure, slot.conn.response_status()) {
            (Some(failure), _) => failure.status(),
            (None, Some(status)) => status,
            (None, None) => 502,
        };
        let at = slot.answered_at.unwrap_or(now);
        Some((
            slot.addr,
            status,
            at.saturating_duration_since(slot.started).as_secs_f64(),
        ))
    }
}

/// Steps [`Upstreams::tls_op`] takes at most for one slot before it asks
/// for an operation or has nothing to do: each step moves one of the
/// machine's two loans or one of the link's events.
const TLS_STEPS_MAX: usize = 64;

/// A TLS slot's TCP connect completed: its link starts the handshake (the
/// ClientHello is its first send). A link that cannot be made (rustls
/// refusing its configuration: not expected) fails the handshake.
fn start_link(slot: &mut Slot) {
    debug_assert!(slot.link.is_none());
    let tls = slot.tls.as_ref().expect("a TLS slot");
    let Some((cipher_in, cipher_out)) = slot.cipher.take() else {
        slot.tls_failure = Some("no TLS buffers left for this connection".into());
        return slot.conn.on(UpstreamEvent::TlsFailed);
    };
    let name = tls.name_of(slot.peer).clone();
    match Link::client(&tls.config, name, cipher_in, cipher_out) {
        Ok(link) => slot.link = Some(Box::new(link)),
        Err(err) => {
            slot.tls_failure = Some(format!("cannot start a TLS session: {err}"));
            slot.conn.on(UpstreamEvent::TlsFailed);
        }
    }
}

/// The socket is being closed: the link gives the machine its loans back
/// (cancelled) and asks for nothing more; its ciphertext operations come
/// back through `complete` before the close is submitted.
fn abandon_link(slot: &mut Slot) {
    let Some(link) = &mut slot.link else {
        return;
    };
    link.abandon();
    while let Some(intent) = link.poll() {
        match intent {
            LinkIntent::Received { buf, result } => {
                slot.conn.on(UpstreamEvent::Received { buf, result })
            }
            LinkIntent::Sent { buf, result } => slot.conn.on(UpstreamEvent::Sent { buf, result }),
            LinkIntent::Established => {}
            other => unreachable!("an abandoned link asked for {other:?}"),
        }
    }
}

/// The socket closed: the link (nothing of it in flight any more) gives
/// its buffers back for the slot's next TLS connection.
fn retire_link(slot: &mut Slot) {
    abandon_link(slot);
    if let Some(link) = slot.link.take() {
        debug_assert!(!link.in_flight());
        slot.cipher = Some(link.into_buffers());
    }
}

/// What a failure's log line adds for a TLS slot: the link's reason, or
/// that a connect timed out in the handshake.
fn tls_detail(slot: &mut Slot, failure: Failure) -> String {
    match (slot.tls_failure.take(), &slot.link) {
        (Some(why), _) => format!(": {why}"),
        (None, Some(link)) if failure == Failure::ConnectTimeout && link.handshaking() => {
            " (in the TLS handshake)".into()
        }
        _ => String::new(),
    }
}

/// The counter slots of `pool`'s peers.
fn peer_slots(stats: &WorkerStats, pool: &PoolConfig) -> Vec<u16> {
    let names: Vec<(String, String)> = pool
        .peer_names
        .iter()
        .map(|peer| (pool.name.clone(), peer.clone()))
        .collect();
    stats.peer_slots(&names)
}
