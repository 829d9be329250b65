//! Pool declarations: what `upstreams = { name = { ... } }` may say, with
//! nginx's defaults and bounds, checked once at load so a typo is a load
//! error and never a surprise at the first proxied request.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keystone_tls::{client_config, ClientConfig, ServerName, Trust};

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

/// What a pool's TLS is asked for (`tls = true` and its companions), before
/// it is checked ([`PoolConfig::enable_tls`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `sni`: the name every peer is asked for instead of its own.
    pub sni: Option<String>,
    /// `verify = false` turns certificate checks off (default: on).
    pub verify: Option<bool>,
    /// `ca`: a PEM file of CA certificates, replacing the system roots
    /// (already resolved against the app's directory).
    pub ca: Option<PathBuf>,
}

/// A pool whose connections speak TLS, checked and built at load.
#[derive(Clone)]
pub struct PoolTls {
    /// `sni` as declared (`None`: each peer's own host name).
    pub sni: Option<String>,
    /// Whether peers' certificates are verified.
    pub verify: bool,
    /// `ca` as resolved (`None`: the system roots, or no check).
    pub ca: Option<PathBuf>,
    /// Per peer, in `peers`' order: the name its handshake asks for — the
    /// SNI sent, unless it is an IP address (then none is), and the name
    /// its certificate must cover.
    pub names: Vec<ServerName<'static>>,
    /// What the pool's connections are made with (shared by them).
    pub config: Arc<ClientConfig>,
}

impl PoolTls {
    /// The name peer `peer`'s handshakes ask for.
    pub fn name_of(&self, peer: usize) -> &ServerName<'static> {
        &self.names[peer]
    }

    /// How `keystone check` shows it: `tls (sni NAME, verify against
    /// PATH | the system roots | verify off)`.
    pub fn describe(&self) -> String {
        let sni = match &self.sni {
            Some(name) => format!("sni {name}"),
            None => "sni per peer".to_string(),
        };
        let trust = match (&self.ca, self.verify) {
            (_, false) => "verify off".to_string(),
            (Some(ca), true) => format!("verified against {}", ca.display()),
            (None, true) => "verified against the system roots".to_string(),
        };
        format!("tls ({sni}, {trust})")
    }
}

impl PartialEq for PoolTls {
    /// The declaration decides: two loads of one pool are equal (each
    /// builds a configuration of its own).
    fn eq(&self, other: &PoolTls) -> bool {
        self.sni == other.sni
            && self.verify == other.verify
            && self.ca == other.ca
            && self.names == other.names
    }
}

impl fmt::Debug for PoolTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolTls")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("ca", &self.ca)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
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
    /// `tls = true`: the peers speak HTTPS (`None`: cleartext HTTP).
    pub tls: Option<Arc<PoolTls>>,
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
            tls: None,
        }
    }

    /// `tls = true` with `options`, once `peers` are in: checks the
    /// companions (messages name `upstreams.NAME.FIELD`), reads the trust
    /// (the `ca` file, or the system roots) and gives each peer its name:
    /// `sni` when declared, else its host as written in `peers` when that
    /// is a DNS name, else its address (no SNI is sent for an IP literal).
    pub fn enable_tls(&mut self, options: TlsOptions) -> Result<(), ConfigError> {
        let at = |field: &str| format!("upstreams.{}.{field}", self.name);
        let verify = options.verify.unwrap_or(true);
        if !verify && options.ca.is_some() {
            return Err(ConfigError::new(format!(
                "{}: a CA has no use with verify = false (drop one of them)",
                at("ca")
            )));
        }
        let sni = match &options.sni {
            None => None,
            Some(text) => match ServerName::try_from(text.clone()) {
                Ok(ServerName::DnsName(name)) => Some(ServerName::DnsName(name)),
                Ok(_) => {
                    return Err(ConfigError::new(format!(
                        "{}: {text:?} is an IP address, which SNI cannot carry (leave sni out: an IP peer is checked against its address)",
                        at("sni")
                    )))
                }
                Err(_) => {
                    return Err(ConfigError::new(format!(
                        "{}: {text:?} is not a DNS name",
                        at("sni")
                    )))
                }
            },
        };
        let names = self
            .peer_names
            .iter()
            .zip(&self.peers)
            .map(|(written, addr)| match &sni {
                Some(name) => Ok(name.clone()),
                None => peer_server_name(written, addr).ok_or_else(|| {
                    ConfigError::new(format!(
                        "{}: the host of {written:?} is not a DNS name a certificate can cover (give `sni`)",
                        at("peers")
                    ))
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let trust = match (&options.ca, verify) {
            (_, false) => Trust::Off,
            (Some(path), true) => Trust::File(path.clone()),
            (None, true) => Trust::System,
        };
        let field = if options.ca.is_some() { "ca" } else { "tls" };
        let config = client_config(&trust)
            .map_err(|err| ConfigError::new(format!("{}: {err}", at(field))))?;
        self.tls = Some(Arc::new(PoolTls {
            sni: options.sni,
            verify,
            ca: options.ca,
            names,
            config,
        }));
        Ok(())
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

/// The name a peer written `written` (`host:port` or `[v6]:port`) and
/// resolved to `addr` is asked for: its host when that is a DNS name, its
/// address when it was written as one.
fn peer_server_name(written: &str, addr: &SocketAddr) -> Option<ServerName<'static>> {
    if written.parse::<SocketAddr>().is_ok() {
        return Some(ServerName::IpAddress(addr.ip().into()));
    }
    let (host, _port) = written.rsplit_once(':')?;
    if host.parse::<IpAddr>().is_ok() {
        return Some(ServerName::IpAddress(addr.ip().into()));
    }
    match ServerName::try_from(host.to_string()).ok()? {
        name @ ServerName::DnsName(_) => Some(name),
        _ => None,
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

    fn pool_of(peers: &[&str]) -> PoolConfig {
        let mut pool = PoolConfig::new("api");
        for peer in peers {
            pool.peer_names.push(peer.to_string());
            pool.peers.push(parse_peer(peer).unwrap());
        }
        pool
    }

    fn ca_file(dir: &std::path::Path) -> PathBuf {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, ca.pem()).unwrap();
        path
    }

    #[test]
    fn tls_names_each_peer_by_its_host_or_the_declared_sni() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path());
        let mut pool = pool_of(&["localhost:8443", "127.0.0.1:8444", "[::1]:8445"]);
        pool.enable_tls(TlsOptions {
            ca: Some(ca.clone()),
            ..TlsOptions::default()
        })
        .unwrap();
        let tls = pool.tls.as_ref().unwrap();
        assert!(tls.verify);
        assert_eq!(tls.ca.as_deref(), Some(ca.as_path()));
        assert_eq!(
            tls.names,
            [
                ServerName::try_from("localhost").unwrap().to_owned(),
                ServerName::IpAddress("127.0.0.1".parse::<IpAddr>().unwrap().into()),
                ServerName::IpAddress("::1".parse::<IpAddr>().unwrap().into()),
            ]
        );
        assert_eq!(
            tls.describe(),
            format!("tls (sni per peer, verified against {})", ca.display())
        );

        let mut pool = pool_of(&["localhost:8443", "127.0.0.1:8444"]);
        pool.enable_tls(TlsOptions {
            sni: Some("api.test".into()),
            ..TlsOptions::default()
        })
        .unwrap();
        let tls = pool.tls.as_ref().unwrap();
        let api = ServerName::try_from("api.test").unwrap().to_owned();
        assert_eq!(tls.names, [api.clone(), api]);
        assert_eq!(
            tls.describe(),
            "tls (sni api.test, verified against the system roots)"
        );

        let mut pool = pool_of(&["127.0.0.1:8444"]);
        pool.enable_tls(TlsOptions {
            verify: Some(false),
            ..TlsOptions::default()
        })
        .unwrap();
        assert_eq!(
            pool.tls.as_ref().unwrap().describe(),
            "tls (sni per peer, verify off)"
        );
        assert!(pool.tls.as_ref().unwrap().config.enable_secret_extraction);
    }

    #[test]
    fn tls_errors_name_the_pool_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path());
        let refused = [
            (
                TlsOptions {
                    sni: Some("10.0.0.1".into()),
                    ..TlsOptions::default()
                },
                "upstreams.api.sni: \"10.0.0.1\" is an IP address",
            ),
            (
                TlsOptions {
                    sni: Some("not a name".into()),
                    ..TlsOptions::default()
                },
                "upstreams.api.sni: \"not a name\" is not a DNS name",
            ),
            (
                TlsOptions {
                    verify: Some(false),
                    ca: Some(ca),
                    ..TlsOptions::default()
                },
                "upstreams.api.ca: a CA has no use with verify = false",
            ),
            (
                TlsOptions {
                    ca: Some(dir.path().join("missing.pem")),
                    ..TlsOptions::default()
                },
                "upstreams.api.ca: cannot read ",
            ),
        ];
        for (options, message) in refused {
            let mut pool = pool_of(&["127.0.0.1:8443"]);
            let err = pool.enable_tls(options.clone()).unwrap_err().message;
            assert!(err.starts_with(message), "{options:?}: {err}");
            assert!(pool.tls.is_none());
        }
        let mut pool = pool_of(&["127.0.0.1:8443"]);
        let err = pool
            .enable_tls(TlsOptions {
                ca: Some(dir.path().join("missing.pem")),
                ..TlsOptions::default()
            })
            .unwrap_err()
            .message;
        assert!(err.contains("missing.pem"), "{err}");
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
