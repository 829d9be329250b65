//! The app table's `upstreams = { name = { peers = {...}, ... } }`, read
//! into keystone-upstream's [`PoolConfig`]s. Every field is checked here,
//! at load: an unknown pool field, a bad peer, balance name or bound is a
//! load error naming `upstreams.NAME.FIELD` (exit 2 at start; on reload the
//! old app keeps serving).
//!
//! TLS: `tls = true` makes the pool speak HTTPS to its peers; `sni` (a DNS
//! name sent to every peer instead of its own host), `verify` (default
//! true) and `ca` (a PEM file, relative to the app's directory like other
//! paths, whose certificates replace the system roots) need it. Its trust
//! is read here, at load: an unreadable `ca` fails the load naming the
//! file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keystone_upstream::{
    parse_peer, Balance, HealthCheck, PoolConfig, TlsOptions, KEEPALIVE_MAX, RETRIES_MAX,
    TIMEOUT_MAX_SECS,
};
use mlua::{Table, Value};

/// A pool's known fields.
const POOL_FIELDS: [&str; 14] = [
    "peers",
    "balance",
    "keepalive",
    "connect_timeout",
    "send_timeout",
    "read_timeout",
    "retries",
    "max_fails",
    "fail_timeout",
    "health_check",
    "tls",
    "sni",
    "verify",
    "ca",
];

/// Reads `upstreams`; absent is no pools. Errors are messages the loader
/// turns into a load error for the app's file. `dir`: where relative `ca`
/// paths start (the app's directory; `None`: the working directory).
/// `unresolved`: a peer name that does not resolve is kept with the
/// unspecified address ([`crate::LuaConfig::unresolved_peers`]).
pub(crate) fn read_upstreams(
    app: &Table,
    dir: Option<&Path>,
    unresolved: bool,
) -> Result<Vec<PoolConfig>, String> {
    let table = match app.get::<Value>("upstreams").map_err(|e| e.to_string())? {
        Value::Nil => return Ok(Vec::new()),
        Value::Table(table) => table,
        other => {
            return Err(format!(
            "`upstreams` must be a table of name = {{ peers = {{ \"host:port\", ... }} }}, got {}",
            other.type_name()
        ))
        }
    };
    let mut pools = Vec::new();
    for pair in table.pairs::<Value, Value>() {
        let (name, pool) = pair.map_err(|e| e.to_string())?;
        let Value::String(name) = name else {
            return Err(format!("`upstreams` keys must be pool names, got {name:?}"));
        };
        let name = name.to_string_lossy();
        let Value::Table(pool) = pool else {
            return Err(format!(
                "upstreams.{name} must be a table with `peers`, got {}",
                pool.type_name()
            ));
        };
        pools.push(read_pool(&name, &pool, dir, unresolved)?);
    }
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pools)
}

/// `host:port` with a DNS-name host and a valid port: what an unresolved
/// peer may be (an address or a malformed entry is still an error).
fn names_a_host(text: &str) -> bool {
    text.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && host.parse::<std::net::IpAddr>().is_err()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && port.parse::<u16>().is_ok_and(|port| port > 0)
    })
}

fn read_pool(
    name: &str,
    pool: &Table,
    dir: Option<&Path>,
    unresolved: bool,
) -> Result<PoolConfig, String> {
    for pair in pool.pairs::<Value, Value>() {
        let (key, _) = pair.map_err(|e| e.to_string())?;
        let known =
            matches!(&key, Value::String(s) if POOL_FIELDS.contains(&&*s.to_string_lossy()));
        if !known {
            return Err(format!(
                "upstreams.{name} has an unknown field {} (known: {})",
                match &key {
                    Value::String(s) => format!("\"{}\"", s.to_string_lossy()),
                    other => format!("{other:?}"),
                },
                POOL_FIELDS.join(", ")
            ));
        }
    }
    let mut config = PoolConfig::new(name);
    let field = |key: &str| pool.get::<Value>(key).map_err(|e| e.to_string());
    let at = |key: &str| format!("upstreams.{name}.{key}");
    match field("peers")? {
        Value::Table(peers) => {
            for index in 1..=peers.raw_len() {
                let Value::String(text) =
                    peers.raw_get::<Value>(index).map_err(|e| e.to_string())?
                else {
                    return Err(format!(
                        "{}[{index}] must be a \"host:port\" string",
                        at("peers")
                    ));
                };
                let text = text.to_string_lossy();
                let addr = match parse_peer(&text) {
                    Ok(addr) => addr,
                    // One address of 0.0.0.0/8 (never a destination) per
                    // entry, so two unresolved names are two peers.
                    Err(_) if unresolved && names_a_host(&text) => {
                        let port = text.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
                        let placeholder = std::net::Ipv4Addr::from(index as u32);
                        std::net::SocketAddr::from((placeholder, port.unwrap_or(0)))
                    }
                    Err(e) => return Err(format!("{}: {e}", at("peers"))),
                };
                config.peer_names.push(text);
                config.peers.push(addr);
            }
        }
        Value::Nil => return Err(format!("upstreams.{name} needs `peers`")),
        other => {
            return Err(format!(
                "{} must be a list of \"host:port\", got {}",
                at("peers"),
                other.type_name()
            ))
        }
    }
    if let Some(balance) = string(&field("balance")?, &at("balance"))? {
        config.balance = Balance::from_name(&balance).ok_or_else(|| {
            format!(
                "{}: unknown balance {balance:?} (known: {})",
                at("balance"),
                Balance::NAMES.join(", ")
            )
        })?;
    }
    if let Some(n) = integer(&field("keepalive")?, &at("keepalive"), 0, KEEPALIVE_MAX)? {
        config.keepalive = n;
    }
    if let Some(n) = integer(&field("retries")?, &at("retries"), 0, RETRIES_MAX)? {
        config.retries = n;
    }
    if let Some(n) = integer(&field("max_fails")?, &at("max_fails"), 0, 1_000_000)? {
        config.max_fails = n;
    }
    for (key, slot) in [
        ("connect_timeout", &mut config.connect_timeout),
        ("send_timeout", &mut config.send_timeout),
        ("read_timeout", &mut config.read_timeout),
        ("fail_timeout", &mut config.fail_timeout),
    ] {
        if let Some(duration) = seconds(&field(key)?, &at(key))? {
            *slot = duration;
        }
    }
    match field("health_check")? {
        Value::Nil => {}
        Value::Table(check) => {
            for pair in check.pairs::<Value, Value>() {
                let (key, _) = pair.map_err(|e| e.to_string())?;
                let known = matches!(&key, Value::String(s) if ["path", "interval"].contains(&&*s.to_string_lossy()));
                if !known {
                    return Err(format!(
                        "{} has an unknown field {key:?} (known: path, interval)",
                        at("health_check")
                    ));
                }
            }
            let value = |key: &str| check.get::<Value>(key).map_err(|e| e.to_string());
            let path = string(&value("path")?, &format!("{}.path", at("health_check")))?
                .ok_or_else(|| format!("{} needs a `path`", at("health_check")))?;
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(format!(
                    "{}.path {path:?} must start with '/' and hold no spaces or control bytes",
                    at("health_check")
                ));
            }
            let interval = seconds(
                &value("interval")?,
                &format!("{}.interval", at("health_check")),
            )?
            .unwrap_or(Duration::from_secs(5));
            config.health_check = Some(HealthCheck { path, interval });
        }
        other => {
            return Err(format!(
                "{} must be {{ path = \"/health\", interval = 2 }}, got {}",
                at("health_check"),
                other.type_name()
            ))
        }
    }
    config.validate().map_err(|e| e.message)?;
    read_tls(&mut config, &field, dir)?;
    Ok(config)
}

/// `tls = true` and its companions `sni`, `verify` and `ca`.
fn read_tls(
    config: &mut PoolConfig,
    field: &dyn Fn(&str) -> Result<Value, String>,
    dir: Option<&Path>,
) -> Result<(), String> {
    let at = |key: &str| format!("upstreams.{}.{key}", config.name);
    let tls = boolean(&field("tls")?, &at("tls"))?.unwrap_or(false);
    let options = TlsOptions {
        sni: string(&field("sni")?, &at("sni"))?,
        verify: boolean(&field("verify")?, &at("verify"))?,
        ca: string(&field("ca")?, &at("ca"))?.map(|path| {
            let path = PathBuf::from(path);
            match dir {
                Some(base) if path.is_relative() => base.join(path),
                _ => path,
            }
        }),
    };
    if !tls {
        let given = [
            ("sni", options.sni.is_some()),
            ("verify", options.verify.is_some()),
            ("ca", options.ca.is_some()),
        ];
        if let Some((key, _)) = given.iter().find(|(_, given)| *given) {
            return Err(format!("{} needs tls = true", at(key)));
        }
        return Ok(());
    }
    config.enable_tls(options).map_err(|e| e.message)
}

fn boolean(value: &Value, at: &str) -> Result<Option<bool>, String> {
    match value {
        Value::Nil => Ok(None),
        Value::Boolean(b) => Ok(Some(*b)),
        other => Err(format!(
            "{at} must be true or false, got {}",
            other.type_name()
        )),
    }
}

fn string(value: &Value, at: &str) -> Result<Option<String>, String> {
    match value {
        Value::Nil => Ok(None),
        Value::String(s) => Ok(Some(s.to_string_lossy())),
        other => Err(format!("{at} must be a string, got {}", other.type_name())),
    }
}

/// A Lua number (integer or float) at `at`; `None` when absent; `what`
/// names the expected kind in the error.
fn number(value: &Value, at: &str, what: &str) -> Result<Option<f64>, String> {
    match value {
        Value::Nil => Ok(None),
        Value::Integer(n) => Ok(Some(*n as f64)),
        Value::Number(n) => Ok(Some(*n)),
        other => Err(format!("{at} must be {what}, got {}", other.type_name())),
    }
}

fn integer(value: &Value, at: &str, min: u32, max: u32) -> Result<Option<u32>, String> {
    let Some(number) = number(value, at, "an integer")? else {
        return Ok(None);
    };
    if number.fract() != 0.0 || number < f64::from(min) || number > f64::from(max) {
        return Err(format!(
            "{at} must be an integer from {min} to {max}, got {number}"
        ));
    }
    Ok(Some(number as u32))
}

/// Seconds as nginx writes them in `proxy_*_timeout` (a number; fractions
/// allowed), above 0 and at most a day.
fn seconds(value: &Value, at: &str) -> Result<Option<Duration>, String> {
    let Some(number) = number(value, at, "a number of seconds")? else {
        return Ok(None);
    };
    if !(number > 0.0 && number <= TIMEOUT_MAX_SECS) {
        return Err(format!(
            "{at} must be a number of seconds above 0 and at most {TIMEOUT_MAX_SECS}, got {number}"
        ));
    }
    Ok(Some(Duration::from_secs_f64(number)))
}
