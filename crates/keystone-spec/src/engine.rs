//! One app under test: its policy (`AppPolicy`, loaded as `serve` loads
//! it: the sandbox, the rocks trees, the upstream pools) behind
//! keystone-conn's state machine, driven in memory by keystone-conn's
//! `sim` driver; and the fake upstreams its pools are pointed at.
//!
//! A request is one connection: the slot is opened from the request's
//! client address, its bytes are fed, and the machine, the policy and the
//! upstream side are pumped until nothing more happens. What the
//! connection sent is the response. A fake upstream is no socket: the
//! operations the upstream side asks for (socket, connect, send, receive,
//! cancel, close) are executed here, and the bytes the engine sends are
//! parsed back into the request a backend would see and handed to the
//! spec's function; its answer is serialized into the bytes the engine
//! then receives and parses, as it would a backend's.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keystone_app::{AppPolicy, UpstreamDone, UpstreamOp};
use keystone_conn::sim::Sim;
use keystone_conn::Config;
use keystone_lua::{AppSource, LuaConfig, Pulse};
use keystone_ops::stats::WorkerStats;
use keystone_ringbuf::{SendBuf, SpareLoan};
use keystone_upstream::{PoolConfig, UpstreamEvent};

use crate::http::{self, ForwardedRequest};
use crate::log;

/// The client address a request comes from unless it names one
/// (`remote_addr`): the simulated peer's.
pub const DEFAULT_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 40000);

/// A response larger than this is cut off and the request fails: an
/// endless stream would otherwise be pulled forever. 64 MiB is far past
/// any response a test means to compare.
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;

/// Fake upstream connections get descriptor numbers from here (they name
/// no descriptor; the upstream side only carries them back).
const FAKE_FD_BASE: RawFd = 1 << 22;

/// What a fake upstream answers one request with.
pub enum FakeAnswer {
    /// These bytes (a serialized response); then the connection closes
    /// when `close` (a response framed by the close, or one that says
    /// `Connection: close`).
    Bytes { bytes: Vec<u8>, close: bool },
    /// Nothing: the connection closes without an answer.
    Close,
}

/// The spec side: what the fakes of an app's pools answer. Implemented by
/// the Lua bindings (a pool's fake is a Lua function).
pub trait Fakes {
    /// Whether pool `pool` (by name) has a fake now.
    fn has(&self, pool: &str) -> bool;
    /// Bumped whenever a fake is set or removed: the pools are pointed
    /// again (fresh balancers, so a peer an earlier fake failed is
    /// healthy for the new one).
    fn version(&self) -> u64;
    /// Pool `pool`'s fake answers `request`. `None`: the fake failed (it
    /// keeps why); the connection closes unanswered.
    fn answer(&mut self, pool: &str, request: ForwardedRequest) -> Option<FakeAnswer>;
}

/// One fake upstream connection (the upstream side's slot `index`).
struct FakeConn {
    /// The fake's last answer is not whole by its own framing (no head, or
    /// a body short of its length) and the connection stays: the engine
    /// waits for the rest.
    incomplete: bool,
    /// The pool (when it has a fake) and the peer, as the app names it.
    pool: Option<String>,
    peer: String,
    /// Bytes the engine sent that are not yet a whole request.
    request: Vec<u8>,
    /// Answer bytes the engine has not received yet.
    response: VecDeque<u8>,
    /// The fake closed after its answer (or instead of one).
    eof: bool,
    /// A receive waiting for answer bytes.
    parked: Option<SpareLoan>,
}

/// What one request produced.
pub struct Exchanged {
    /// Every byte the connection sent.
    pub raw: Vec<u8>,
    /// The connection closed (or shut its write side) by itself.
    pub closed: bool,
}

/// An app under test.
pub struct AppUnderTest {
    source: AppSource,
    lua: LuaConfig,
    config: Config,
    pulse: Arc<Pulse>,
    sim: Option<Sim<AppPolicy>>,
    /// The pools as the app declares them (from the last load).
    declared: Vec<PoolConfig>,
    /// The fakes' version the pools were last pointed for.
    pointed: Option<u64>,
    conns: HashMap<usize, FakeConn>,
    /// Requests served (for the runner's summary).
    pub requests: u64,
}

impl AppUnderTest {
    /// Loads `source` once (a load error is returned, with `file:line`).
    pub fn load(
        source: AppSource,
        lua: LuaConfig,
        config: Config,
        pulse: Arc<Pulse>,
    ) -> Result<AppUnderTest, String> {
        let mut app = AppUnderTest {
            source,
            lua,
            config,
            pulse,
            sim: None,
            declared: Vec::new(),
            pointed: None,
            conns: HashMap::new(),
            requests: 0,
        };
        app.ensure_loaded()?;
        Ok(app)
    }

    /// The names of the app's pools.
    pub fn pool_names(&self) -> Vec<String> {
        self.declared.iter().map(|pool| pool.name.clone()).collect()
    }

    /// Drops the app's state: the next request loads the app afresh (its
    /// globals, its `init_worker`, its pools' health and connections).
    pub fn reset(&mut self) {
        self.sim = None;
        self.conns.clear();
    }

    fn ensure_loaded(&mut self) -> Result<(), String> {
        if self.sim.is_some() {
            return Ok(());
        }
        let stats = Arc::new(WorkerStats::default());
        let mut policy = AppPolicy::load(
            0,
            &self.source,
            &self.lua,
            stats,
            Arc::clone(&self.pulse),
            None,
            log::capture,
        )?;
        policy.set_body_limit(self.config.limits.max_body_bytes)?;
        self.declared = policy.pools().to_vec();
        self.pointed = None;
        self.conns.clear();
        let mut sim = Sim::new(policy, self.config);
        sim.limit_output(RESPONSE_BYTES_MAX);
        self.sim = Some(sim);
        Ok(())
    }

    /// Points each pool that has a fake at it, and each that has none
    /// back at its declared peers, once per change of the fakes.
    fn point_pools(&mut self, fakes: &dyn Fakes) -> Result<(), String> {
        if self.pointed == Some(fakes.version()) {
            return Ok(());
        }
        let sim = self.sim.as_mut().expect("loaded");
        for declared in &self.declared {
            let faked = fakes.has(&declared.name);
            // A faked pool keeps its peers (balancing, retries, failover
            // and `ctx.upstream_addr` stay the app's), speaks cleartext to
            // the fake and runs no active checks.
            let pool = if faked {
                PoolConfig {
                    tls: None,
                    health_check: None,
                    ..declared.clone()
                }
            } else {
                declared.clone()
            };
            sim.policy.set_pool(pool)?;
        }
        self.pointed = Some(fakes.version());
        Ok(())
    }

    /// The longest an upstream of this app waits for anything: past it,
    /// every wait has timed out.
    fn longest_wait(&self) -> Duration {
        self.declared
            .iter()
            .map(|pool| {
                pool.connect_timeout
                    .max(pool.send_timeout)
                    .max(pool.read_timeout)
            })
            .max()
            .unwrap_or_default()
    }

    /// Sends `bytes` from `peer` on a fresh connection and returns what it
    /// answered once nothing more happens. A fake's error is returned after
    /// the exchange settled (the request got what a dead backend gets).
    pub fn exchange(
        &mut self,
        bytes: &[u8],
        peer: SocketAddr,
        fakes: &mut dyn Fakes,
    ) -> Result<Exchanged, String> {
        self.ensure_loaded()?;
        self.point_pools(fakes)?;
        self.requests += 1;
        let longest = self.longest_wait();
        let mut failure = None;
        let sim = self.sim.as_mut().expect("loaded");
        sim.reconnect(peer);
        sim.feed(bytes);
        pump(sim, &mut self.conns, &self.declared, fakes, &mut failure);
        if self.conns.values().any(FakeConn::awaited) {
            // A fake left the engine waiting (it answered nothing whole and
            // kept the connection): the pool's timeouts pass, as they
            // would for a backend that hangs, and the client gets the
            // engine's 504.
            let later = Instant::now() + longest + Duration::from_secs(1);
            log::note(format_args!(
                "keystone test: an upstream fake left the engine waiting for its answer; \
                 the pool's timeouts are taken as passed"
            ));
            sim.policy.tick(later);
            pump(sim, &mut self.conns, &self.declared, fakes, &mut failure);
        }
        if !sim.closed() && !sim.write_shut() && !http::has_response(sim.output()) {
            // Nothing (whole) came back for what was sent: the client
            // half-closes, as `printf ... | nc` does.
            sim.close_input();
            pump(sim, &mut self.conns, &self.declared, fakes, &mut failure);
        }
        let closed = sim.closed() || sim.write_shut();
        let raw = sim.take_output();
        if raw.is_empty() {
            log::note(format_args!(
                "keystone test: the connection closed without sending anything"
            ));
        }
        if let Some(message) = failure {
            return Err(message);
        }
        if raw.len() > RESPONSE_BYTES_MAX {
            return Err(format!(
                "the response passed {} MiB and was cut off (an endless stream?)",
                RESPONSE_BYTES_MAX >> 20
            ));
        }
        Ok(Exchanged { raw, closed })
    }
}

/// Runs the upstream side and the connection until neither has more.
fn pump(
    sim: &mut Sim<AppPolicy>,
    conns: &mut HashMap<usize, FakeConn>,
    declared: &[PoolConfig],
    fakes: &mut dyn Fakes,
    failure: &mut Option<String>,
) {
    let mut woken = Vec::new();
    // Bounded like the sim's own loop: each turn moves bytes or ends a
    // connection; the cap turns a livelock into a failed request.
    for _ in 0..100_000 {
        let mut progressed = false;
        while let Some((index, op)) = sim.policy.upstream_poll(Instant::now()) {
            progressed = true;
            execute(sim, conns, declared, fakes, index, op);
        }
        sim.policy.upstream_wakes(&mut woken);
        if !woken.is_empty() {
            woken.clear();
            progressed = true;
            sim.upstream();
        }
        if !progressed {
            return;
        }
    }
    failure.get_or_insert_with(|| "the engine never settled".to_string());
}

/// Executes one upstream operation for slot `index` against the fakes.
fn execute(
    sim: &mut Sim<AppPolicy>,
    conns: &mut HashMap<usize, FakeConn>,
    declared: &[PoolConfig],
    fakes: &mut dyn Fakes,
    index: usize,
    op: UpstreamOp,
) {
    const ECONNREFUSED: i32 = 111;
    const ECANCELED: i32 = 125;
    let now = Instant::now();
    let policy = &mut sim.policy;
    match op {
        UpstreamOp::Socket { .. } => {
            conns.insert(
                index,
                FakeConn {
                    incomplete: false,
                    pool: None,
                    peer: String::new(),
                    request: Vec::new(),
                    response: VecDeque::new(),
                    eof: false,
                    parked: None,
                },
            );
            let fd = FAKE_FD_BASE + index as RawFd;
            policy.upstream_complete(index, UpstreamDone::Socket { result: fd }, now);
        }
        UpstreamOp::Connect { addr, .. } => {
            let (name, peer) = policy
                .upstream_target(index)
                .map(|(name, peer)| (name.to_string(), peer))
                .unwrap_or_default();
            let peer_name = declared
                .iter()
                .find(|pool| pool.name == name)
                .and_then(|pool| pool.peer_names.get(peer).cloned())
                .unwrap_or_else(|| addr.to_string());
            let faked = fakes.has(&name);
            let result = if faked {
                0
            } else {
                log::note(format_args!(
                    "keystone test: upstream '{name}' has no fake (app:upstream) — \
                     the connect to {peer_name} is refused"
                ));
                -ECONNREFUSED
            };
            if let Some(conn) = conns.get_mut(&index) {
                conn.pool = faked.then_some(name);
                conn.peer = peer_name;
            }
            let done = UpstreamDone::Event(UpstreamEvent::Connected { result });
            policy.upstream_complete(index, done, now);
        }
        UpstreamOp::Send { buf, .. } => {
            let bytes = match &buf {
                SendBuf::Buffer(loan) => loan.as_slice(),
                SendBuf::Pinned(pinned) => pinned.as_slice(),
            };
            let n = bytes.len();
            let conn = conns.get_mut(&index).expect("a send on a made socket");
            conn.request.extend_from_slice(bytes);
            let done = UpstreamDone::Event(UpstreamEvent::Sent {
                buf,
                result: n as i32,
            });
            policy.upstream_complete(index, done, now);
            serve(conn, fakes);
            deliver_parked(policy, conn, index, now);
        }
        UpstreamOp::Recv { buf, .. } => {
            let conn = conns.get_mut(&index).expect("a receive on a made socket");
            assert!(conn.parked.is_none(), "two receives in flight");
            conn.parked = Some(buf);
            deliver_parked(policy, conn, index, now);
        }
        UpstreamOp::Cancel { .. } => {
            if let Some(buf) = conns.get_mut(&index).and_then(|conn| conn.parked.take()) {
                let done = UpstreamDone::Event(UpstreamEvent::Received {
                    buf,
                    result: -ECANCELED,
                });
                policy.upstream_complete(index, done, now);
            }
            policy.upstream_complete(index, UpstreamDone::Cancelled, now);
        }
        UpstreamOp::Close { .. } => {
            conns.remove(&index);
            policy.upstream_complete(index, UpstreamDone::Closed, now);
        }
    }
}

impl FakeConn {
    /// The engine waits here for an answer that will never come.
    fn awaited(&self) -> bool {
        self.incomplete && self.parked.is_some() && self.response.is_empty() && !self.eof
    }
}

/// Answers every whole request the engine sent on `conn`.
fn serve(conn: &mut FakeConn, fakes: &mut dyn Fakes) {
    while !conn.eof {
        let Some(pool) = conn.pool.clone() else {
            return;
        };
        let Some((mut request, used)) = http::parse_forwarded(&conn.request) else {
            return;
        };
        conn.request.drain(..used);
        request.peer = conn.peer.clone();
        let head = request.method == "HEAD";
        match fakes.answer(&pool, request) {
            Some(FakeAnswer::Bytes { bytes, close }) => {
                conn.incomplete = !close
                    && !matches!(http::parse_response(&bytes, head), Ok(Some(r)) if r.complete);
                conn.response.extend(bytes);
                conn.eof = close;
            }
            Some(FakeAnswer::Close) | None => conn.eof = true,
        }
    }
}

/// Completes `conn`'s waiting receive when it has bytes or the fake closed.
fn deliver_parked(policy: &mut AppPolicy, conn: &mut FakeConn, index: usize, now: Instant) {
    if conn.parked.is_none() || (conn.response.is_empty() && !conn.eof) {
        return;
    }
    let mut buf = conn.parked.take().expect("checked");
    let n = conn.response.len().min(buf.len() as usize);
    for (slot, byte) in buf.as_mut_slice()[..n]
        .iter_mut()
        .zip(conn.response.drain(..n))
    {
        *slot = byte;
    }
    let done = UpstreamDone::Event(UpstreamEvent::Received {
        buf,
        result: n as i32,
    });
    policy.upstream_complete(index, done, now);
}
