//! Choosing a peer, per worker and per pool: round robin, least
//! connections or consistent hashing, over the peers passive health has
//! not taken out. Nothing is shared between workers (each keeps its own
//! counts, as each nginx worker does), so nothing here locks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::{Balance, PoolConfig, PEERS_MAX};

/// Points each peer puts on the hash ring: 160, as ketama (and nginx's
/// `hash ... consistent`) use, so keys spread evenly and a lost peer's
/// keys scatter over all the others.
const RING_POINTS_PER_PEER: usize = 160;

/// How a request to a peer ended, for passive health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response head arrived.
    Success,
    /// Refused, unreachable, reset or timed out before a response.
    Failure,
}

/// No peer can take the request: all are down, or all were tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoPeer;

#[derive(Clone, Copy, Debug, Default)]
struct PeerState {
    /// Failures counted in the current window.
    fails: u32,
    /// When the current failure window started.
    window_start: Option<Instant>,
    /// Out of rotation until then.
    down_until: Option<Instant>,
    /// Taken out by an active health check (not by passive failures): a
    /// quick recovery never brings it back, only a passing check or the
    /// end of `down_until`.
    checked_down: bool,
    /// Requests in flight to it from this worker (least_conn).
    active: u32,
}

/// Peers already tried for one request (a retry never picks one twice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tried([u64; PEERS_MAX / 64]);

impl Tried {
    pub fn insert(&mut self, peer: usize) {
        self.0[peer / 64] |= 1 << (peer % 64);
    }

    pub fn contains(&self, peer: usize) -> bool {
        self.0[peer / 64] & (1 << (peer % 64)) != 0
    }
}

/// One pool's peers as one worker sees them.
#[derive(Debug)]
pub struct Balancer {
    balance: Balance,
    peers: Vec<SocketAddr>,
    states: Vec<PeerState>,
    /// Where round robin (and least_conn's ties) continue.
    next: usize,
    /// `(point, peer)`, sorted by point; empty unless `balance` is `Hash`.
    ring: Vec<(u64, u16)>,
    max_fails: u32,
    fail_timeout: Duration,
}

impl Balancer {
    /// The balancer for `pool` (built at load and at reload: allocates).
    pub fn new(pool: &PoolConfig) -> Balancer {
        assert!(!pool.peers.is_empty() && pool.peers.len() <= PEERS_MAX);
        let mut ring = Vec::new();
        if pool.balance == Balance::Hash {
            for (index, peer) in pool.peers.iter().enumerate() {
                let name = peer.to_string();
                for point in 0..RING_POINTS_PER_PEER {
                    let text = format!("{name}#{point}");
                    ring.push((mix(fnv1a(text.as_bytes())), index as u16));
                }
            }
            ring.sort_unstable();
        }
        Balancer {
            balance: pool.balance,
            peers: pool.peers.clone(),
            states: vec![PeerState::default(); pool.peers.len()],
            next: 0,
            ring,
            max_fails: pool.max_fails,
            fail_timeout: pool.fail_timeout,
        }
    }

    /// The peers, in declaration order.
    pub fn peers(&self) -> &[SocketAddr] {
        &self.peers
    }

    /// Whether `peer` is out of rotation at `now`.
    pub fn is_down(&self, peer: usize, now: Instant) -> bool {
        self.states[peer]
            .down_until
            .is_some_and(|until| now < until)
    }

    /// Picks a peer for a request at `now` among those not `tried` and not
    /// down; `key` is `ctx.upstream_key` (hash pools; others ignore it).
    /// `NoPeer` at once when none is left: all peers down answers 502
    /// without waiting for a timeout.
    pub fn pick(&mut self, key: &[u8], tried: &Tried, now: Instant) -> Result<usize, NoPeer> {
        let count = self.peers.len();
        let usable = |balancer: &Balancer, peer: usize| {
            !tried.contains(peer) && !balancer.is_down(peer, now)
        };
        let chosen = match self.balance {
            Balance::RoundRobin => (0..count)
                .map(|step| (self.next + step) % count)
                .find(|&peer| usable(self, peer)),
            Balance::LeastConn => (0..count)
                .map(|step| (self.next + step) % count)
                .filter(|&peer| usable(self, peer))
                .min_by_key(|&peer| self.states[peer].active),
            Balance::Hash => {
                let point = mix(fnv1a(key));
                let start = self.ring.partition_point(|&(at, _)| at < point);
                (0..self.ring.len())
                    .map(|step| self.ring[(start + step) % self.ring.len()].1 as usize)
                    .find(|&peer| usable(self, peer))
            }
        };
        let Some(peer) = chosen else {
            self.recover_if_all_down(now);
            return Err(NoPeer);
        };
        if self.balance != Balance::Hash {
            self.next = (peer + 1) % count;
        }
        Ok(peer)
    }

    /// nginx's quick recovery: when every peer is down by passive
    /// failures alone, this request gets its 502, and they are all back in
    /// rotation for the next ("all peers failed, mark them as live"), so a
    /// short outage of the whole pool costs requests, not `fail_timeout`.
    fn recover_if_all_down(&mut self, now: Instant) {
        let all_passive = (0..self.peers.len())
            .all(|peer| self.is_down(peer, now) && !self.states[peer].checked_down);
        if all_passive {
            for state in &mut self.states {
                state.down_until = None;
            }
        }
    }

    /// A request to `peer` starts (least_conn counts it).
    pub fn begin(&mut self, peer: usize) {
        self.states[peer].active += 1;
    }

    /// A request to `peer` ended with `outcome` at `now`. nginx's passive
    /// health: `max_fails` failures within `fail_timeout` take the peer
    /// out for `fail_timeout`; a success forgets the failures; `max_fails
    /// = 0` never takes a peer out, and neither does any failure the only
    /// peer of a pool has (nginx: "such a server will never be considered
    /// unavailable": with nowhere else to go, refusing to try it only
    /// turns a hiccup into `fail_timeout` of 502s).
    pub fn end(&mut self, peer: usize, outcome: Outcome, now: Instant) {
        let max_fails = if self.peers.len() == 1 {
            0
        } else {
            self.max_fails
        };
        let fail_timeout = self.fail_timeout;
        let state = &mut self.states[peer];
        state.active = state.active.saturating_sub(1);
        match outcome {
            Outcome::Success => {
                state.fails = 0;
                state.window_start = None;
            }
            Outcome::Failure if max_fails == 0 => {}
            Outcome::Failure => {
                let window_over = state
                    .window_start
                    .is_none_or(|start| now.duration_since(start) >= fail_timeout);
                if window_over {
                    state.fails = 0;
                    state.window_start = Some(now);
                }
                state.fails += 1;
                if state.fails >= max_fails {
                    state.down_until = Some(now + fail_timeout);
                    state.checked_down = false;
                    state.fails = 0;
                    state.window_start = None;
                }
            }
        }
    }

    /// An active health check of `peer` failed: out of rotation until a
    /// check passes, or `fail_timeout` from now.
    pub fn take_out(&mut self, peer: usize, now: Instant) {
        let state = &mut self.states[peer];
        state.down_until = Some(now + self.fail_timeout);
        state.checked_down = true;
        state.fails = 0;
        state.window_start = None;
    }

    /// An active health check of `peer` passed: it is back in rotation.
    pub fn revive(&mut self, peer: usize) {
        let state = &mut self.states[peer];
        state.down_until = None;
        state.checked_down = false;
        state.fails = 0;
        state.window_start = None;
    }
}

/// FNV-1a, 64 bits: a fixed, seedless hash, so every worker (and every
/// restart) maps a key to the same peer.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// splitmix64's finalizer: spreads FNV's low-entropy outputs for short,
/// similar keys over the whole ring.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balance: Balance, peers: usize) -> PoolConfig {
        let mut pool = PoolConfig::new("t");
        pool.balance = balance;
        pool.max_fails = 2;
        pool.fail_timeout = Duration::from_secs(10);
        pool.peers = (0..peers)
            .map(|i| format!("127.0.0.1:{}", 9000 + i).parse().unwrap())
            .collect();
        pool
    }

    #[test]
    fn round_robin_takes_turns_and_skips_down_and_tried_peers() {
        let now = Instant::now();
        let mut balancer = Balancer::new(&pool(Balance::RoundRobin, 3));
        let none = Tried::default();
        let picks: Vec<usize> = (0..6)
            .map(|_| balancer.pick(b"", &none, now).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        // Two failures within fail_timeout take peer 1 out...
        balancer.begin(1);
        balancer.end(1, Outcome::Failure, now);
        assert!(!balancer.is_down(1, now));
        balancer.begin(1);
        balancer.end(1, Outcome::Failure, now + Duration::from_secs(1));
        assert!(balancer.is_down(1, now + Duration::from_secs(1)));
        let later = now + Duration::from_secs(2);
        let picks: Vec<usize> = (0..4)
            .map(|_| balancer.pick(b"", &none, later).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        // ...for fail_timeout; then it is tried again.
        let back = now + Duration::from_secs(12);
        assert!(!balancer.is_down(1, back));
        let mut tried = Tried::default();
        tried.insert(0);
        tried.insert(2);
        assert_eq!(balancer.pick(b"", &tried, back), Ok(1));
        tried.insert(1);
        assert_eq!(balancer.pick(b"", &tried, back), Err(NoPeer));
    }

    #[test]
    fn failures_spread_over_more_than_fail_timeout_do_not_count_together() {
        let now = Instant::now();
        let mut balancer = Balancer::new(&pool(Balance::RoundRobin, 2));
        balancer.end(0, Outcome::Failure, now);
        balancer.end(0, Outcome::Failure, now + Duration::from_secs(11));
        assert!(!balancer.is_down(0, now + Duration::from_secs(11)));
        balancer.end(0, Outcome::Success, now + Duration::from_secs(12));
        balancer.end(0, Outcome::Failure, now + Duration::from_secs(13));
        assert!(!balancer.is_down(0, now + Duration::from_secs(13)));
        balancer.end(0, Outcome::Failure, now + Duration::from_secs(14));
        assert!(balancer.is_down(0, now + Duration::from_secs(14)));
        let mut other_tried = Tried::default();
        other_tried.insert(1);
        assert_eq!(
            balancer.pick(b"", &other_tried, now + Duration::from_secs(14)),
            Err(NoPeer)
        );
        balancer.revive(0);
        assert_eq!(
            balancer.pick(b"", &other_tried, now + Duration::from_secs(14)),
            Ok(0)
        );
    }

    /// nginx: the only server of a group is never considered unavailable.
    #[test]
    fn the_only_peer_of_a_pool_is_never_taken_out() {
        let now = Instant::now();
        let mut balancer = Balancer::new(&pool(Balance::RoundRobin, 1));
        for _ in 0..5 {
            balancer.begin(0);
            balancer.end(0, Outcome::Failure, now);
        }
        assert!(!balancer.is_down(0, now));
        assert_eq!(balancer.pick(b"", &Tried::default(), now), Ok(0));
    }

    /// Every peer down by passive failures: this request gets no peer, the
    /// next finds them all back (nginx's quick recovery); a peer an active
    /// check took out stays out.
    #[test]
    fn a_pool_down_by_failures_alone_recovers_for_the_next_request() {
        let now = Instant::now();
        let mut balancer = Balancer::new(&pool(Balance::RoundRobin, 2));
        for peer in [0, 1, 0, 1] {
            balancer.end(peer, Outcome::Failure, now);
        }
        assert!(balancer.is_down(0, now) && balancer.is_down(1, now));
        let none = Tried::default();
        assert_eq!(balancer.pick(b"", &none, now), Err(NoPeer));
        assert!(!balancer.is_down(0, now) && !balancer.is_down(1, now));
        assert!(balancer.pick(b"", &none, now).is_ok());

        balancer.take_out(0, now);
        balancer.end(1, Outcome::Failure, now);
        balancer.end(1, Outcome::Failure, now);
        assert_eq!(balancer.pick(b"", &none, now), Err(NoPeer));
        assert!(balancer.is_down(0, now), "checked down: not recovered");
        assert!(
            balancer.is_down(1, now),
            "the pool is not down by failures alone"
        );
    }

    #[test]
    fn max_fails_zero_never_takes_a_peer_out() {
        let now = Instant::now();
        let mut config = pool(Balance::RoundRobin, 2);
        config.max_fails = 0;
        let mut balancer = Balancer::new(&config);
        for _ in 0..10 {
            balancer.end(0, Outcome::Failure, now);
        }
        assert!(!balancer.is_down(0, now));
    }

    #[test]
    fn least_conn_prefers_the_idlest_peer() {
        let now = Instant::now();
        let mut balancer = Balancer::new(&pool(Balance::LeastConn, 3));
        let none = Tried::default();
        balancer.begin(0);
        balancer.begin(0);
        balancer.begin(1);
        assert_eq!(balancer.pick(b"", &none, now), Ok(2));
        balancer.begin(2);
        balancer.begin(2);
        assert_eq!(balancer.pick(b"", &none, now), Ok(1));
        balancer.end(0, Outcome::Success, now);
        balancer.end(0, Outcome::Success, now);
        assert_eq!(balancer.pick(b"", &none, now), Ok(0));
    }

    #[test]
    fn hashing_is_consistent_and_losing_a_peer_moves_only_its_keys() {
        let now = Instant::now();
        let mut balancer = Balancer::new(&pool(Balance::Hash, 5));
        let none = Tried::default();
        let keys: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|key| balancer.pick(key.as_bytes(), &none, now).unwrap())
            .collect();
        // Stable across calls and across balancers (every worker agrees).
        let mut other = Balancer::new(&pool(Balance::Hash, 5));
        for (key, &peer) in keys.iter().zip(&before) {
            assert_eq!(other.pick(key.as_bytes(), &none, now), Ok(peer));
        }
        // Reasonably even: every peer holds 10-30 % of the keys.
        for peer in 0..5 {
            let share = before.iter().filter(|&&p| p == peer).count();
            assert!(
                (200..=600).contains(&share),
                "peer {peer} holds {share} keys"
            );
        }
        // Peer 3 goes down: only its keys move, and they spread out.
        balancer.end(3, Outcome::Failure, now);
        balancer.end(3, Outcome::Failure, now);
        assert!(balancer.is_down(3, now));
        let mut moved_to = [0_usize; 5];
        for (key, &was) in keys.iter().zip(&before) {
            let now_on = balancer.pick(key.as_bytes(), &none, now).unwrap();
            if was == 3 {
                assert_ne!(now_on, 3);
                moved_to[now_on] += 1;
            } else {
                assert_eq!(now_on, was, "{key} moved though its peer is up");
            }
        }
        assert!(
            moved_to.iter().filter(|&&n| n > 0).count() >= 3,
            "{moved_to:?}"
        );
    }
}
