//! The command line: `keystone serve [APP.lua] [flags]`, `keystone check
//! APP.lua`. Usage errors exit 2 with a message naming the flag (clap's
//! convention, which is also nginx's `-t` habit of precise messages).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use keystone_conn::Timeouts;
use keystone_ebpf::EbpfMode;

/// Keystone: an HTTP/1.1 engine where Rust owns memory and I/O (io_uring)
/// and LuaJIT expresses request policy.
#[derive(Debug, Parser)]
#[command(name = "keystone", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve an app (the bundled example app when APP is omitted).
    Serve(Box<ServeArgs>),
    /// Load an app, report errors with file:line, and list its routes.
    Check {
        /// The app file (a Lua chunk returning a table with `routes`).
        app: PathBuf,
        /// Module resolution and sandbox options, as for `serve`.
        #[command(flatten)]
        lua: LuaArgs,
    },
    /// Run an app's spec files (busted's describe/it/assert) through the
    /// real engine in memory: no sockets, no server.
    Test(TestArgs),
    /// Live per-worker figures of a running server, read from its admin
    /// listener every second.
    Stats(StatsArgs),
    /// Ask a running server to reload its app and reopen its log files (sends it SIGHUP).
    Reload {
        /// The server's process id (`keystone serve` logs it at start-up).
        #[arg(long)]
        pid: i32,
    },
}

/// Request limits (`serve` and `test`).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Largest request body buffered whole, in bytes: a handler reads it as
    /// `ctx.request.body`. A larger one is 413, unless the app declares
    /// upstreams: then it streams to the backend when the handler proxies
    /// the request (see --max-proxy-body-bytes).
    #[arg(long, default_value_t = keystone_parser::Limits::default().max_body_bytes)]
    pub max_body_bytes: u64,
    /// Largest request head (request line + headers), in bytes (431 above).
    #[arg(long, default_value_t = keystone_parser::Limits::default().max_header_bytes, value_parser = clap::value_parser!(u32).range(256..=1_048_576))]
    pub max_header_bytes: u32,
    /// Most request headers accepted (431 above).
    #[arg(long, default_value_t = keystone_parser::Limits::default().max_headers, value_parser = clap::value_parser!(u16).range(1..=keystone_parser::HEADERS_CAPACITY as i64))]
    pub max_headers: u16,
    /// Longest request target, in bytes (414 above).
    #[arg(long, default_value_t = keystone_parser::Limits::default().max_uri_bytes, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub max_uri_bytes: u32,
}

impl LimitArgs {
    /// These flags as the parser's limits.
    pub fn limits(&self) -> keystone_parser::Limits {
        keystone_parser::Limits {
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            max_uri_bytes: self.max_uri_bytes,
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// `keystone test` flags.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Spec files, or directories searched for `*_spec.lua` (default: spec/).
    pub paths: Vec<PathBuf>,
    /// Run only the tests whose full name (describe and it names joined by
    /// spaces) matches this Lua pattern; plain text matches itself.
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,
    /// Also write the results as JUnit XML to PATH (for CI).
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
    /// Show the engine's log (the app's prints and errors) of every test,
    /// not only of failing ones.
    #[arg(long, short)]
    pub verbose: bool,
    /// Module resolution and sandbox options, as for `serve`.
    #[command(flatten)]
    pub lua: LuaArgs,
    /// Milliseconds of wall time a Lua handler may run before it is stopped
    /// (503), as for `serve`.
    #[arg(long, default_value_t = defaults::LUA_BUDGET_MS, value_parser = clap::value_parser!(u64).range(10..=defaults::LUA_BUDGET_MS_MAX))]
    pub lua_budget_ms: u64,
    /// Request limits, as for `serve`; `keystone.app(path, { max_body_bytes
    /// = N, ... })` sets one app's.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `keystone stats` flags.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "admin"])))]
pub struct StatsArgs {
    /// The server's process id; its `--admin` address is read from its
    /// command line.
    #[arg(long)]
    pub pid: Option<i32>,
    /// The server's admin listener address.
    #[arg(long, value_parser = parse_listen)]
    pub admin: Option<SocketAddr>,
    /// Print one JSON object per refresh instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many refreshes (default: run until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
}

/// How apps find modules, and the sandbox switch (`serve` and `check`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LuaArgs {
    /// A LuaRocks tree (as given to `luarocks --tree`) whose modules
    /// `require` finds, after the app's directory; repeatable, searched in
    /// order. Adds DIR/share/lua/5.1/?.lua, DIR/share/lua/5.1/?/init.lua and
    /// DIR/lib/lua/5.1/?.so, as `luarocks path` does.
    #[arg(long = "rocks-tree", value_name = "DIR")]
    pub rocks_trees: Vec<PathBuf>,
    /// A C module (by module name, e.g. cjson) the sandbox's `require` may
    /// load; repeatable. The app table's `allow_c_modules` adds more.
    #[arg(long = "allow-c-module", value_name = "NAME")]
    pub allow_c_modules: Vec<String>,
    /// Turn the Lua sandbox off: app code gets the real globals (io, os,
    /// debug, ffi, require of any module). Logged at start-up.
    #[arg(long)]
    pub unsafe_lua: bool,
}

impl LuaArgs {
    /// These flags plus `LUA_PATH`/`LUA_CPATH` from the environment, for
    /// `LoadedApp::load_with`.
    pub fn config(&self) -> keystone_lua::LuaConfig {
        keystone_lua::LuaConfig {
            rocks_trees: self.rocks_trees.clone(),
            allow_c_modules: self.allow_c_modules.clone(),
            unsafe_lua: self.unsafe_lua,
            ..keystone_lua::LuaConfig::from_env()
        }
    }
}

/// Defaults, each with its reason.
pub mod defaults {
    /// Loopback by default: exposing a server is an explicit decision.
    pub const LISTEN: &str = "127.0.0.1:8080";
    /// nginx's `worker_connections` default is 512; 1024 is the common
    /// production setting and costs only address space until used.
    pub const MAX_CONNECTIONS: u32 = 1024;
    /// SIGTERM drain deadline, seconds; Kubernetes' default grace period is
    /// 30 s, so 10 s leaves room for the rest of a pod's shutdown.
    pub const DRAIN_TIMEOUT_SECS: u64 = 10;
    /// A handler is policy, not computation: a second of CPU is a runaway.
    pub const LUA_BUDGET_MS: u64 = 1000;
    /// The longest timeout any flag takes, seconds: a day, as for an
    /// upstream pool's timeouts. Far beyond any useful wait, and far below
    /// what a deadline (`Instant` + the timeout) can hold: a larger value
    /// is refused at start, never an overflow at the first connection.
    pub const TIMEOUT_SECS_MAX: u64 = 86_400;
    /// The longest `--lua-budget-ms`: the same day.
    pub const LUA_BUDGET_MS_MAX: u64 = TIMEOUT_SECS_MAX * 1000;
}

/// `keystone serve` flags.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The app file; omitted: the bundled example app.
    pub app: Option<PathBuf>,
    /// A cleartext listener (IP:PORT, [IPv6]:PORT or HOST:PORT); repeatable.
    /// Default: 127.0.0.1:8080 when no --listen and no --tls-listen is given.
    #[arg(long, value_parser = parse_listen)]
    pub listen: Vec<SocketAddr>,
    /// A TLS listener (HTTPS); repeatable. Needs --tls-cert/--tls-key.
    #[arg(long, value_parser = parse_listen)]
    pub tls_listen: Vec<SocketAddr>,
    /// A PEM certificate chain (leaf first) for the TLS listeners;
    /// repeatable, paired in order with --tls-key. The client's server name
    /// (SNI) picks the certificate that covers it; the first is the default.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Vec<PathBuf>,
    /// The PEM private key of the --tls-cert at the same position.
    #[arg(long, value_name = "PATH")]
    pub tls_key: Vec<PathBuf>,
    /// Worker threads, one per core (default: the number of online CPUs).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: Option<u32>,
    /// Connections each worker holds at once; beyond it accepting pauses and
    /// new connections wait in the kernel's backlog.
    #[arg(long, default_value_t = defaults::MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Largest request body streamed to an upstream, in bytes (413 above).
    /// It is never buffered whole: memory per connection stays one window.
    #[arg(long, default_value_t = keystone_conn::MAX_PROXY_BODY_BYTES)]
    pub max_proxy_body_bytes: u64,
    /// Request limits (413, 431, 414 above them).
    #[command(flatten)]
    pub limits: LimitArgs,
    /// eBPF connection steering: auto (fall back with a warning), require
    /// (exit 2 when the kernel refuses), off (kernel reuseport hashing).
    #[arg(long, default_value = "auto")]
    pub ebpf: EbpfMode,
    /// Seconds to finish in-flight requests after SIGTERM/SIGINT.
    #[arg(long, default_value_t = defaults::DRAIN_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(0..=defaults::TIMEOUT_SECS_MAX))]
    pub drain_timeout: u64,
    /// Module resolution and sandbox options.
    #[command(flatten)]
    pub lua: LuaArgs,
    /// Seconds a client has to send a whole request head (408 after).
    #[arg(long, default_value_t = Timeouts::default().header.as_secs(), value_parser = clap::value_parser!(u64).range(1..=defaults::TIMEOUT_SECS_MAX))]
    pub header_timeout: u64,
    /// Seconds allowed between two reads of a request body (408 after).
    #[arg(long, default_value_t = Timeouts::default().body.as_secs(), value_parser = clap::value_parser!(u64).range(1..=defaults::TIMEOUT_SECS_MAX))]
    pub body_timeout: u64,
    /// Seconds an idle keep-alive connection stays open.
    #[arg(long, default_value_t = Timeouts::default().idle.as_secs(), value_parser = clap::value_parser!(u64).range(1..=defaults::TIMEOUT_SECS_MAX))]
    pub keepalive_timeout: u64,
    /// Seconds allowed between two writes to a client that stopped reading.
    #[arg(long, default_value_t = Timeouts::default().send.as_secs(), value_parser = clap::value_parser!(u64).range(1..=defaults::TIMEOUT_SECS_MAX))]
    pub send_timeout: u64,
    /// Responses one connection may have queued but not yet sent; further
    /// pipelined requests wait in the receive buffer.
    #[arg(long, default_value_t = keystone_conn::MAX_PIPELINE, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_pipeline: u32,
    /// Milliseconds of wall time a Lua handler may run before it is stopped
    /// (503); catches runaway loops, JIT-compiled ones included.
    #[arg(long, default_value_t = defaults::LUA_BUDGET_MS, value_parser = clap::value_parser!(u64).range(10..=defaults::LUA_BUDGET_MS_MAX))]
    pub lua_budget_ms: u64,
    /// Admin listener for /metrics, /health and /stats.json (off by default;
    /// keep it on loopback).
    #[arg(long, value_parser = parse_listen)]
    pub admin: Option<SocketAddr>,
    /// Access log: a file path, or `-` for standard output (off by default).
    #[arg(long, value_name = "PATH|-")]
    pub access_log: Option<PathBuf>,
    /// The engine's log: a file path (appended to, reopened on SIGHUP), or
    /// `-` for standard error (the default).
    #[arg(long, value_name = "PATH|-")]
    pub log: Option<PathBuf>,
    /// Lowest severity logged: error, warn or info.
    #[arg(long, default_value = "info")]
    pub log_level: keystone_ops::error_log::LogLevel,
    /// Log line format: text, or json (one object per line).
    #[arg(long, default_value = "text")]
    pub log_format: keystone_ops::error_log::LogFormat,
    /// Give each worker's io_uring a kernel submission-polling thread
    /// (IORING_SETUP_SQPOLL): fewer syscalls under load, a busy kernel
    /// thread per worker while traffic flows.
    #[arg(long)]
    pub sqpoll: bool,
    /// Receive keep-alive requests with READ_FIXED into a window of each
    /// connection's buffer registered with the ring, instead of plain recv
    /// (which kernel is faster differs; on 6.18, plain recv, by 5-10 %).
    #[arg(long)]
    pub recv_registered: bool,
    /// Load the eBPF observers (syscalls per worker thread, kernel-seen
    /// latency) and export their figures on the admin listener.
    #[arg(long)]
    pub observe: bool,
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("'{text}' resolves to no address")),
        Err(err) => Err(format!(
            "'{text}' is not an address like 127.0.0.1:8080 ({err})"
        )),
    }
}
