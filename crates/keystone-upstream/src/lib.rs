//! keystone-upstream: where a proxied request goes and what is sent there.
//!
//! Job: the declaration of upstream pools as the app table gives them
//! ([`PoolConfig`], validated once at load: peers resolved, names and
//! bounds checked; a `tls = true` pool's trust read and its peers' TLS
//! names settled, [`PoolTls`], built by keystone-tls), the per-worker choice of a peer ([`Balancer`]: round
//! robin, least connections, consistent hashing by key, with nginx's
//! passive health: `max_fails` failures within `fail_timeout` take a peer
//! out for `fail_timeout`), and the request head sent to it
//! ([`write_forward_head`]: re-serialized from the parsed head, hop-by-hop
//! headers dropped, `X-Forwarded-*` added, policy's overrides applied),
//! written into caller-owned bytes without allocating, and the HTTP/1.1
//! client side of one proxied request as a sans-I/O state machine
//! ([`UpstreamConn`]: completions in, intents out; its failures mapped to
//! 502/504 and to nginx's retry rule in one place, [`Failure`]).
//!
//! Does not own: sockets, timers or bytes in flight (the worker's reactor),
//! the Lua side of the declaration (keystone-lua reads the table and calls
//! [`PoolConfig::validate`]).
//!
//! Never depends on: keystone-router, keystone-exchange, keystone-lua,
//! keystone-response, keystone-files, keystone-conn, keystone-app,
//! keystone-reactor, keystone-ebpf, keystone-ops, keystone-spec, keystone-server.

mod balance;
mod client;
mod config;
mod forward;

pub use balance::{Balancer, NoPeer, Outcome, Tried};
pub use client::{
    Failure, UpstreamConn, UpstreamEvent, UpstreamIntent, Wait, BUFFERED_BODY_MAX,
    RESPONSE_HEAD_MAX,
};
pub use config::{
    parse_peer, Balance, ConfigError, HealthCheck, PoolConfig, PoolTls, TlsOptions, KEEPALIVE_MAX,
    PEERS_MAX, RETRIES_MAX, TIMEOUT_MAX_SECS,
};
pub use forward::{
    is_hop_by_hop, write_forward_head, ForwardError, ForwardFraming, ForwardRequest, Scheme,
    FORWARDED_HEAD_MAX,
};
