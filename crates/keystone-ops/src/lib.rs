//! keystone-ops — operator tooling: counters, metrics, admin listener,
//! access-log lines, `keystone stats`.
//!
//! Owns: each worker's single-writer counters and route slots
//! ([`stats`]), their Prometheus text exposition and `/stats.json`, the
//! `--admin` listener thread ([`admin`]), the eBPF observers' figures as
//! the admin listener renders them ([`observe`]), the access log's nginx
//! "combined" lines and their two fixed batches per worker
//! ([`access_log`]), the engine's log lines — text or JSON, two fixed
//! batches per thread, drops counted ([`error_log`]), each thread's log in
//! a thread-local and the logs' destinations ([`thread_log`]), the two
//! batches both logs fill ([`batches`]) — and the `keystone stats` client
//! ([`stats_cmd`]) and `keystone reload`'s target check ([`reload_cmd`]).
//!
//! Never runs on a worker's request path, except the counters' relaxed
//! loads and stores and the formatting of an access-log line into fixed
//! buffers; never submits to a ring (each thread writes its log batches
//! through its own reactor) and never takes a lock a worker takes
//! per request.
//!
//! Never depends on: keystone-ringbuf, keystone-parser, keystone-router,
//! keystone-exchange, keystone-lua, keystone-reactor, keystone-conn, keystone-app,
//! keystone-files, keystone-upstream, keystone-tls, keystone-spec, keystone-server.

// Nothing here needs `unsafe`: the access log owns its descriptor as a
// `File`, and the ring's write of a batch is the worker's.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod batches;
pub mod error_log;
pub mod observe;
pub mod reload_cmd;
pub mod stats;
pub mod stats_cmd;
pub mod thread_log;
