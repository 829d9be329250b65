//! Pool declarations: what `upstreams = { name = { ... } }` may say, with
//! nginx's defaults and bounds, checked once at load so a typo is a load
//! error and never a surprise at the first proxied request.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Peers one pool may list: far above any real pool (nginx users list a
/// handful), and keeps the per-worker hash ring small.
pub const PEERS_MAX: usize = 256;
/// Idle connections a pool may keep per peer and worker; nginx's
/// `keepalive` is per worker too and is usually 16-64.
pub const KEEPALIVE_MAX: u32 = 4096;
/// Extra peers a request may try; more than a few only multiplies latency.
pub const RETRIES_MAX: u32 = 16;
/// Longest timeout accepted, in seconds (a day): longer is a typo.
pub const TIMEOUT_MAX_SECS: f64 = 86_400.0;

/// How a pool chooses a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// In turn, skipping peers that are down (nginx's default).
    RoundRobin,
    /// The peer with the fewest requests in flight from this worker,
    /// ties in turn (nginx's `least_conn`).
    LeastConn,
    /// Consistent hashing of `ctx.upstream_key` (nginx's `hash ...
    /// consistent`): a key keeps its peer while the peer is up, and losing
    /// one peer moves only its keys.
    Hash,
}

impl Balance {
    /// The names the app table uses.
    pub const NAMES: [&'static str; 3] = ["round_robin", "least_conn", "hash"];

    /// Parses a balance name.
    pub fn from_name(name: &str) -> Option<Balance> {
        match name {
            "round_robin" => Some(Balance::RoundRobin),
            "least_conn" => Some(Balance::LeastConn),
            "hash" => Some(Balance::Hash),
            _ => None,
        }
    }
}

/// Optional active health checks: `GET path` every `interval`, a 2xx or
/// 3xx keeps the peer up.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
}

/// One declared pool, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    /// As written, for messages and `keystone check`.
    pub peer_names: Vec<String>,
    /// Resolved addresses, one per entry of `peer_names`.
    pub peers: Vec<SocketAddr>,
    pub balance: Balance,
    pub keepalive: u32,
    pub connect_timeout: Duration,
    pub send_timeout: Duration,
    pub read_timeout: Duration,
    pub retries: u32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub health_check: Option<HealthCheck>,
}

impl PoolConfig {
    /// A pool with nginx's defaults: round robin, 32 idle connections per
    /// peer, 60 s timeouts (`proxy_*_timeout`), one retry, `max_fails=1`,
    /// `fail_timeout=10s`, no active checks.
    pub fn new(name: &str) -> PoolConfig {
        PoolConfig {
            name: name.to_string(),
            peer_names: Vec::new(),
            peers: Vec::new(),
            balance: Balance::RoundRobin,
            keepalive: 32,
            connect_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            retries: 1,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            health_check: None,
        }
    }

    /// The whole-pool rules: a valid name, at least one peer and at most
    /// [`PEERS_MAX`], no peer twice.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let named = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte));
        if !named {
            return Err(ConfigError::new(format!(
                "upstream name {:?} must be letters, digits, '-', '_' or '.'",
                self.name
            )));
        }
        if self.peers.is_empty() {
            return Err(ConfigError::new(format!(
                "upstreams.{}: `peers` lists no peer",
                self.name
            )));
        }
        if self.peers.len() > PEERS_MAX {
            return Err(ConfigError::new(format!(
                "upstreams.{}: more than {PEERS_MAX} peers",
                self.name
            )));
        }
        for (index, peer) in self.peers.iter().enumerate() {
            if self.peers[..index].contains(peer) {
                return Err(ConfigError::new(format!(
                    "upstreams.{}: peer {} is listed twice",
                    self.name, peer
                )));
            }
        }
        Ok(())
    }
}

/// Why a declaration was refused; the loader adds `file:line`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub message: String,
}

impl ConfigError {
    pub fn new(message: String) -> ConfigError {
        ConfigError { message }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A peer as the app table writes it: `host:port` or `[v6]:port`; a name
/// is resolved now (at load and at reload, never per request) and must
/// give exactly one address family's first address. The port is required:
/// an upstream without one is a typo more often than port 80.
pub fn parse_peer(text: &str) -> Result<SocketAddr, ConfigError> {
    let bad = |why: &str| ConfigError::new(format!("peer {text:?}: {why}"));
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(bad("the port must be 1-65535"));
        }
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(bad("expected host:port or [v6]:port"));
    };
    if host.is_empty() || host.starts_with('[') || host.contains(':') {
        return Err(bad("expected host:port or [v6]:port"));
    }
    let valid_name = host
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.');
    if !valid_name {
        return Err(bad("the host is not a name or an address"));
    }
    let port: u16 = match port.parse() {
        Ok(0) | Err(_) => return Err(bad("the port must be 1-65535")),
        Ok(port) => port,
    };
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| bad("the name resolves to no address")),
        Err(err) => Err(bad(&format!("cannot resolve the name: {err}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers() {
        assert_eq!(parse_peer("127.0.0.1:9001").unwrap().port(), 9001);
        assert_eq!(
            parse_peer("[::1]:9002").unwrap(),
            "[::1]:9002".parse().unwrap()
        );
        assert!(parse_peer("localhost:80").unwrap().ip().is_loopback());
        for bad in [
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            ":80",
            "[::1]",
            "::1:80",
            "host name:80",
            "http://a:80",
            "a/b:80",
            "no-such-host.invalid:80",
        ] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pools() {
        let mut pool = PoolConfig::new("api");
        assert!(pool.validate().unwrap_err().message.contains("no peer"));
        pool.peers.push("127.0.0.1:1".parse().unwrap());
        assert_eq!(pool.validate(), Ok(()));
        pool.peers.push("127.0.0.1:1".parse().unwrap());
        assert!(pool.validate().unwrap_err().message.contains("twice"));
        pool.peers.pop();
        pool.name = "a b".into();
        assert!(pool.validate().is_err());
        assert_eq!(Balance::from_name("hash"), Some(Balance::Hash));
        assert_eq!(Balance::from_name("random"), None);
        for name in Balance::NAMES {
            assert!(Balance::from_name(name).is_some());
        }
    }
}
