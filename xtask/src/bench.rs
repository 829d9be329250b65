//! `cargo xtask bench`: Keystone vs nginx + lua-nginx-module vs the raw
//! io_uring responder (`keystone-benches`' `raw-uring`), in one run, with
//! ratios.
//!
//! Design note: on a small machine non-pipelined req/s is bound by wrk and
//! loopback TCP, so req/s alone cannot tell a lean server from a fat one.
//! Each server therefore runs pinned to core 0 (`taskset -c 0`, one worker)
//! with wrk pinned to core 1, and next to req/s we report the server's CPU
//! time per request (utime + stime from `/proc/PID/stat` over the run ÷
//! requests completed), pipelined ×16 throughput (where the server, not the
//! client, is the bottleneck), latency percentiles from `wrk --latency`,
//! syscalls per request (`strace -c -f`), and RSS with 10,000 idle
//! keep-alive connections. Static files (4 KiB and 1 MiB, written by the
//! harness) are served by Keystone's `static` app field and nginx's
//! `sendfile`; raw-uring has no files and sits those scenarios out.
//!
//! Rounds are interleaved per scenario (A/B/C/A/B/C) so drift (thermal,
//! other load) hits every server alike; each figure is the median of the
//! rounds. Targets are reported, never asserted: a noisy machine must not
//! fail a build.
//!
//! Not promised: absolute numbers. Other processes on the machine (a
//! compiling colleague) move them; ratios from one run are the figure to
//! read.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::{json, Value};

use crate::{cargo, debian, run_checked};

/// Debian packages the comparison needs. `luajit` is never among them: it
/// conflicts with libnginx-mod-http-lua (which brings its own libluajit2).
pub const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("nginx", "the comparison server"),
    (
        "libnginx-mod-http-lua",
        "content_by_lua_block handlers for the nginx+lua comparison",
    ),
    ("wrk", "HTTP load generator"),
    ("strace", "syscalls per request (strace -c)"),
    (
        "openssl",
        "the HTTPS rows' ECDSA P-256 certificate (openssl req)",
    ),
];

/// Core the servers run on; wrk gets [`CLIENT_CORE`]. Two cores is the
/// smallest machine where client and server do not share one.
const SERVER_CORE: &str = "0";
const CLIENT_CORE: &str = "1";

/// Idle keep-alive connections held open for the RSS figure.
const IDLE_CONNECTIONS: usize = 10_000;
/// Connection limit given to each server: the idle connections plus room for
/// sockets of earlier wrk runs that are still closing.
const SERVER_CONNECTIONS_MAX: u32 = 10_240;
const _: () = assert!(IDLE_CONNECTIONS < SERVER_CONNECTIONS_MAX as usize);
/// Fds each process needs (our idle client, each server): the connections
/// plus 1024 for everything else (listeners, rings, logs, wrk's leftovers).
/// The limit is per process, so client and server do not add up.
const NOFILE_NEEDED: u64 = SERVER_CONNECTIONS_MAX as u64 + 1024;
/// The fd limit we ask for (inherited by the servers); containers without
/// CAP_SYS_RESOURCE keep their hard limit, which needs only to reach
/// [`NOFILE_NEEDED`].
const NOFILE_WANTED: u64 = 65_536;
const _: () = assert!(NOFILE_NEEDED < NOFILE_WANTED);

/// Requests per write in the pipelined scenario (TechEmpower's depth).
const PIPELINE_DEPTH: u32 = 16;
/// Length of the strace-attached run; strace slows the server a lot, so
/// only the calls-per-request ratio means anything.
const STRACE_SECONDS: u32 = 2;
/// How long a server may take to answer its first request.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Read/write timeout of our own HTTP client (smoke checks, idle clients).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response our client reads for the Lua routes: their bodies are
/// tiny. The static smoke check reads up to [`STATIC_FILES`]' largest.
const CLIENT_RESPONSE_BYTES_MAX: usize = 4096;
/// Lines of a server's log quoted when it fails to start.
const LOG_TAIL_LINES: usize = 12;

const HELLO: &str = "Hello, World!";

/// TechEmpower's pipeline.lua: each write carries `depth` requests. wrk
/// counts every response as a request (it sets `pending` to the number of
/// requests it finds in the buffer), so req/s needs no division; latency is
/// per batch, from the write to the last of its responses.
const PIPELINE_LUA: &str = r#"-- TechEmpower pipeline.lua: `depth` requests per write.
init = function(args)
  local r = {}
  local depth = tonumber(args[1]) or 1
  for i = 1, depth do
    r[i] = wrk.format()
  end
  req = table.concat(r)
end

request = function()
  return req
end
"#;

/// The route whose handler raises (the lua-error scenario), on both
/// servers: each answers 500 and logs the failure its own way.
const ERROR_PATH: &str = "/error";

/// URL prefix of the static scenarios, on both servers.
const STATIC_PREFIX: &str = "/static/";
/// Subdirectory of the run's temporary directory the files are written to:
/// `<dir>/files` is nginx's `root`, `<dir>/files/static` Keystone's static
/// directory, so `GET /static/4k.bin` is the same file on both.
const FILES_DIR: &str = "files";
/// Seed of the files' bytes (splitmix64), fixed so every run serves the
/// same bytes.
const STATIC_SEED: u64 = 0x6b65_7973_746f_6e65;

/// A file the static scenarios fetch: name under [`STATIC_PREFIX`], size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StaticFile {
    name: &'static str,
    bytes: usize,
}

const STATIC_4K: StaticFile = StaticFile {
    name: "4k.bin",
    bytes: 4096,
};
const STATIC_1M: StaticFile = StaticFile {
    name: "1m.bin",
    bytes: 1 << 20,
};
const STATIC_FILES: [StaticFile; 2] = [STATIC_4K, STATIC_1M];

/// The bundled example app, which the bench serves as it is.
const EXAMPLE_APP: &str = include_str!("../../examples/hello/app.lua");

/// Keystone's bench app: the bundled example app (`{example}`, pasted in
/// whole, so the two cannot drift) plus the failing route and the static
/// directory.
/// `{static_prefix}` and `{static_dir}` (absolute) are filled in.
const KEYSTONE_APP: &str = r#"-- Written by cargo xtask bench: examples/hello/app.lua plus the static
-- directory the static scenarios fetch from.
local app = (function()
{example}
end)()
-- The lua-error scenario: a handler that raises, as a production bug would.
app.routes["GET {error_path}"] = function(ctx)
  error("bench: a failing route")
end
app.static = {
  ["{static_prefix}"] = [==[{static_dir}]==],
}
-- The proxy scenario: the raw io_uring responder of the same run as the
-- backend, over kept-alive upstream connections.
app.upstreams = {
  backend = { peers = { "127.0.0.1:{backend}" }, keepalive = 64 },
}
app.routes["GET {proxy_path}"] = function(ctx)
  ctx.upstream = "backend"
  ctx.upstream_path = "/"
end
-- The large proxied-body scenario: a raw io_uring responder whose every
-- answer carries a 1 MiB body.
app.upstreams.large = { peers = { "127.0.0.1:{large_backend}" }, keepalive = 64 }
app.routes["GET {proxy_large_path}"] = function(ctx)
  ctx.upstream = "large"
  ctx.upstream_path = "/"
end
return app
"#;

/// nginx + lua-nginx-module equivalent of Keystone's bench app. `{port}`,
/// `{dir}`, `{files}` and `{load_modules}` are filled in; Content-Length is
/// set so the bytes on the wire match Keystone's (without it nginx sends
/// chunked). The static location is what a tuned nginx serves files with:
/// `sendfile on` (zero-copy, like Keystone's splice) and `tcp_nopush on`
/// (head and file in full segments).
const NGINX_CONF: &str = r#"daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
{load_modules}
events {
    worker_connections {connections};
}
http {
    access_log off;
    # nginx closes keep-alive connections after 1000 requests by default;
    # Keystone and raw-uring never do, so neither may nginx here.
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # The proxy scenario: nginx's recommended keep-alive proxying.
    upstream backend {
        server 127.0.0.1:{backend};
        keepalive 64;
    }
    upstream large {
        server 127.0.0.1:{large_backend};
        keepalive 64;
    }
    server {
        listen 127.0.0.1:{port} backlog=4096;
        location = {proxy_path} {
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location = {proxy_large_path} {
            proxy_pass http://large/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location = / {
            content_by_lua_block {
                ngx.header["Content-Type"] = "text/plain"
                ngx.header["Content-Length"] = 13
                ngx.print("Hello, World!")
            }
        }
        location = /json {
            content_by_lua_block {
                local body = '{"message":"Hello, World!"}'
                ngx.header["Content-Type"] = "application/json"
                ngx.header["Content-Length"] = #body
                ngx.print(body)
            }
        }
        location ~ ^/users/(\d+)$ {
            content_by_lua_block {
                local body = '{"id":' .. ngx.var[1] .. '}'
                ngx.header["Content-Type"] = "application/json"
                ngx.header["Content-Length"] = #body
                ngx.print(body)
            }
        }
        location = {error_path} {
            content_by_lua_block {
                error("bench: a failing route")
            }
        }
        location {static_prefix} {
            root {files};
            sendfile on;
            tcp_nopush on;
            default_type application/octet-stream;
        }
    }
    # The HTTPS rows: the same certificate as Keystone's, nginx's defaults
    # otherwise (TLS 1.2 and 1.3, session tickets on). sendfile cannot
    # carry TLS (no kernel TLS here): nginx reads and encrypts, as Keystone.
    server {
        listen 127.0.0.1:{tls_port} ssl backlog=4096;
        ssl_certificate {tls_cert};
        ssl_certificate_key {tls_key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location = / {
            content_by_lua_block {
                ngx.header["Content-Type"] = "text/plain"
                ngx.header["Content-Length"] = 13
                ngx.print("Hello, World!")
            }
        }
        location {static_prefix} {
            root {files};
            sendfile on;
            tcp_nopush on;
            default_type application/octet-stream;
        }
    }
}
"#;

/// The HTTPS rows' certificate and key (ECDSA P-256, made by `openssl req`
/// in the run's directory; both servers serve the same pair).
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";

/// Where Debian keeps nginx's dynamic modules, and the ones the Lua module
/// needs (NDK first: lua-nginx-module links against it).
const NGINX_MODULES_DIR: &str = "/usr/lib/nginx/modules";
const NGINX_MODULES: [&str; 2] = ["ndk_http_module.so", "ngx_http_lua_module.so"];

/// The servers compared, in the order each round runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerKind {
    Keystone,
    NginxLua,
    RawUring,
}

const SERVERS: [ServerKind; 3] = [
    ServerKind::Keystone,
    ServerKind::NginxLua,
    ServerKind::RawUring,
];

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            ServerKind::Keystone => "keystone",
            ServerKind::NginxLua => "nginx+lua",
            ServerKind::RawUring => "raw-uring",
        }
    }

    /// Whether it routes: raw-uring answers every request with the canned
    /// `Hello, World!`, so its param-route figure is its plaintext one.
    fn routes(self) -> bool {
        self != ServerKind::RawUring
    }

    /// Whether it serves files: raw-uring has none, so it sits out the
    /// static scenarios (reported as "n/a (no files)", never as its canned
    /// reply: 13 bytes against 4 KiB would be no comparison).
    fn serves_files(self) -> bool {
        self != ServerKind::RawUring
    }

    /// Whether it has a TLS listener (raw-uring has none).
    fn speaks_tls(self) -> bool {
        self != ServerKind::RawUring
    }
}

/// One load scenario.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    name: &'static str,
    path: &'static str,
    connections: u32,
    /// Requests per write; 1 is not pipelined.
    pipeline: u32,
    /// The static file it fetches (`path` is its URL); `None` for the Lua
    /// routes.
    file: Option<StaticFile>,
    /// Whether it needs a router (raw-uring's canned reply is no answer to
    /// a failing route).
    routed: bool,
    /// The body bytes of each proxied answer, for MB/s.
    proxied_bytes: Option<usize>,
    /// Over the servers' TLS listeners (same ECDSA P-256 certificate).
    tls: bool,
    /// Every request on a new connection (`Connection: close`): over TLS,
    /// a full handshake per request (wrk keeps no session to resume).
    close: bool,
}

/// Indices in [`SCENARIOS`] the targets read.
const PLAINTEXT: usize = 0;
const JSON_PARAM: usize = 1;
const PIPELINED: usize = 2;
const CONNECTIONS_256: usize = 3;
const CONNECTIONS_4096: usize = 4;
const STATIC_SMALL: usize = 5;
const STATIC_LARGE: usize = 6;
/// Index of the lua-error scenario (its targets read it).
const LUA_ERROR: usize = 7;
/// Index of the proxy scenario.
const PROXY: usize = 8;
/// The path the proxy scenario requests (keystone and nginx send it to the
/// raw-uring of the same run).
const PROXY_PATH: &str = "/proxy";
/// Index of the large proxied-body scenario.
const PROXY_LARGE: usize = 9;
/// Its path, forwarded to the run's body-mode raw-uring.
const PROXY_LARGE_PATH: &str = "/proxy-1m";
/// The body every answer of the body-mode raw-uring carries.
const PROXY_LARGE_BYTES: usize = 1 << 20;
/// Index of the keep-alive HTTPS row.
const HTTPS_PLAINTEXT: usize = 10;
/// Index of the full-handshake row.
const HTTPS_HANDSHAKES: usize = 11;
/// Index of the 1 MiB static file over TLS.
const HTTPS_STATIC_LARGE: usize = 12;

/// The ports the proxy scenarios forward to: raw-uring's canned answer
/// and its body-mode twin.
#[derive(Clone, Copy, Debug)]
struct Backends {
    small: u16,
    large: u16,
}

const SCENARIOS: [Scenario; 13] = [
    Scenario {
        name: "plaintext",
        path: "/",
        connections: 64,
        pipeline: 1,
        file: None,
        routed: false,
        proxied_bytes: None,
        tls: false,
        close: false,
    },
    Scenario {
        name: "json-param",
        path: "/users/42",
        connections: 64,
        pipeline: 1,
        file: None,
        routed: false,
        proxied_bytes: None,
        tls: false,
        close: false,
    },
    Scenario {
        name: "pipelined-16",
        path: "/",
        connections: 64,
        pipeline: PIPELINE_DEPTH,
        file: None,
        routed: false,
        proxied_bytes: None,
        tls: false,
        close: false,
    },
    Scenario {
        name: "connections-256",
        path: "/",
        connections: 256,
        pipeline: 1,
        file: None,
        routed: false,
        proxied_bytes: None,
        tls: false,
        close: false,
    },
    // HttpArena's connection count: whether the lead holds when most
    // connections wait at any moment (their state falls out of the caches).
    Scenario {
        name: "connections-4096",
        path: "/",
        connections: 4096,
        pipeline: 1,
        file: None,
        routed: false,
        proxied_bytes: None,
        tls: false,
        close: false,
    },
    Scenario {
        name: "static-4KiB",
        path: "/static/4k.bin",
        connections: 64,
        pipeline: 1,
        file: Some(STATIC_4K),
        routed: false,
        proxied_bytes: None,
        tls: false,
        close: false,
    },
    // Fewer connections: 64 × 1 MiB in flight would measure socket buffers
    // and wrk's reading, not the server.
    Scenario {
        name: "static-1MiB",
        path: "/static/1m.bin",
        connections: 16,
        pipeline: 1,
        file: Some(STATIC_1M),
        routed: false,
        proxied_bytes: None,
        tls: false,
        close: false,
    },
    // A handler that raises on every request: what a production bug in one
    // route costs the server (CPU per failure against plaintext's CPU per
    // success) and its log (bytes per failure).
    Scenario {
        name: "lua-error",
        path: ERROR_PATH,
        connections: 64,
        pipeline: 1,
        file: None,
        routed: true,
        proxied_bytes: None,
        tls: false,
        close: false,
    },
    // A gateway's work: each request forwarded to the raw-uring of the same
    // run over a kept-alive upstream connection (raw-uring is the backend,
    // so it sits this one out).
    Scenario {
        name: "proxy",
        path: PROXY_PATH,
        connections: 64,
        pipeline: 1,
        file: None,
        routed: true,
        proxied_bytes: None,
        tls: false,
        close: false,
    },
    // 1 MiB bodies through the proxy, 16 connections as for static-1MiB:
    // keystone splices what does not come with the head (socket → pipe →
    // socket), nginx buffers through proxy_buffers.
    Scenario {
        name: "proxy-1MiB",
        path: PROXY_LARGE_PATH,
        connections: 16,
        pipeline: 1,
        file: None,
        routed: true,
        proxied_bytes: Some(PROXY_LARGE_BYTES),
        tls: false,
        close: false,
    },
    // TLS, keep-alive: what the record layer costs per request.
    Scenario {
        name: "https-plaintext",
        path: "/",
        connections: 64,
        pipeline: 1,
        file: None,
        routed: false,
        proxied_bytes: None,
        tls: true,
        close: false,
    },
    // A full handshake per request (ECDHE + an ECDSA P-256 signature).
    Scenario {
        name: "https-handshakes",
        path: "/",
        connections: 16,
        pipeline: 1,
        file: None,
        routed: false,
        proxied_bytes: None,
        tls: true,
        close: true,
    },
    // 1 MiB files over TLS: encrypted in user space here (no kernel TLS on
    // this machine), read through a bounded buffer.
    Scenario {
        name: "https-static-1MiB",
        path: "/static/1m.bin",
        connections: 16,
        pipeline: 1,
        file: Some(STATIC_1M),
        routed: false,
        proxied_bytes: None,
        tls: true,
        close: false,
    },
];

impl Scenario {
    /// Whether wrk's latency percentiles mean anything here. Not when
    /// pipelined: wrk records one latency per batch but derives its
    /// coordinated-omission correction interval from responses per
    /// connection, 16 times too short, so it adds phantom samples below the
    /// recorded minimum and its percentiles come out distorted (p99 often
    /// prints as 0).
    fn latency_valid(&self) -> bool {
        self.pipeline == 1
    }

    /// Whether `kind` takes part (raw-uring serves no files and has no
    /// routes to fail).
    fn run_by(&self, kind: ServerKind) -> bool {
        (self.file.is_none() || kind.serves_files())
            && (!self.routed || kind.routes())
            && (!self.tls || kind.speaks_tls())
    }

    /// Why a server sits it out.
    fn not_applicable(&self) -> &'static str {
        if self.tls {
            "no TLS"
        } else if self.file.is_some() {
            "no files"
        } else {
            "no routes"
        }
    }

    /// Payload throughput in MB/s (10^6 bytes: the file's bytes × req/s,
    /// headers not counted); `None` for the Lua routes.
    fn payload_mb_per_s(&self, sample: &Sample) -> Option<f64> {
        self.file
            .map(|file| file.bytes)
            .or(self.proxied_bytes)
            .map(|bytes| bytes as f64 * sample.wrk.requests_per_s / 1e6)
    }
}

/// Run parameters from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Options {
    rounds: u32,
    seconds: u32,
    quick: bool,
    /// A Keystone binary to measure instead of the freshly built one (to
    /// compare two builds, or a commit while the tree is mid-edit).
    keystone: Option<PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            rounds: 3,
            seconds: 5,
            quick: false,
            keystone: None,
        };
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            match arg.as_str() {
                "--quick" => {
                    options.quick = true;
                    options.rounds = 3;
                    options.seconds = 2;
                }
                "--rounds" | "--seconds" => {
                    let value: u32 = rest
                        .next()
                        .with_context(|| format!("{arg} needs a number"))?
                        .parse()
                        .with_context(|| format!("{arg} needs a number"))?;
                    ensure!((1..=600).contains(&value), "{arg} must be 1..=600");
                    if arg == "--rounds" {
                        options.rounds = value;
                    } else {
                        options.seconds = value;
                    }
                }
                "--keystone" => {
                    let path = rest.next().context("--keystone needs a path")?;
                    options.keystone = Some(PathBuf::from(path));
                }
                other => bail!(
                    "unknown argument {other:?} (--quick, --rounds N, --seconds N, --keystone PATH)"
                ),
            }
        }
        Ok(options)
    }
}

/// One wrk run's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct WrkResult {
    requests: u64,
    requests_per_s: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    /// Socket errors plus non-2xx/3xx responses.
    errors: u64,
}

/// One server's figures for one round of one scenario.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Sample {
    wrk: WrkResult,
    cpu_us_per_request: f64,
    /// Bytes the server's log grew by over the run, per request.
    log_bytes_per_request: f64,
}

/// Seconds of a wrk duration or latency (`1.23ms`, `456.00us`, `2.10s`,
/// `1.00m`), in milliseconds.
fn parse_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(value * factor)
}

/// Parses `wrk --latency` output.
fn parse_wrk(output: &str) -> Result<WrkResult> {
    let mut result = WrkResult::default();
    let mut seen_requests = false;
    let mut seen_rate = false;
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [count, "requests", "in", ..] => {
                result.requests = count.parse().context("wrk request count")?;
                seen_requests = true;
            }
            ["Requests/sec:", rate] => {
                result.requests_per_s = rate.parse().context("wrk Requests/sec")?;
                seen_rate = true;
            }
            ["50%", latency] => {
                result.latency_p50_ms = parse_duration_ms(latency).context("wrk p50")?;
            }
            ["99%", latency] => {
                result.latency_p99_ms = parse_duration_ms(latency).context("wrk p99")?;
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                result.errors += count.parse::<u64>().context("wrk non-2xx count")?;
            }
            ["Socket", "errors:", ..] => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                for count in words[2..].iter().skip(1).step_by(2) {
                    let count = count.trim_end_matches(',');
                    result.errors += count.parse::<u64>().context("wrk socket errors")?;
                }
            }
            _ => {}
        }
    }
    ensure!(
        seen_requests && seen_rate,
        "wrk output without totals:\n{output}"
    );
    Ok(result)
}

/// utime + stime of a process in clock ticks: fields 14 and 15 of
/// `/proc/PID/stat`, which for a thread-group leader already sum all its
/// threads, live and exited (the per-thread figures are in
/// `/proc/PID/task/TID/stat`; adding those too would count twice).
fn parse_cpu_ticks(stat: &str) -> Result<u64> {
    // Field 2 (comm) is in parentheses and may hold spaces: split after it.
    let after_comm = &stat[stat.rfind(')').context("no ')' in /proc/PID/stat")? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    ensure!(fields.len() > 12, "short /proc/PID/stat: {stat:?}");
    let utime: u64 = fields[14 - 3].parse().context("utime")?;
    let stime: u64 = fields[15 - 3].parse().context("stime")?;
    Ok(utime + stime)
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat)
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(ticks > 0, "sysconf(_SC_CLK_TCK) failed");
    ticks as f64
}

/// `VmRSS` from `/proc/PID/status`, in KiB.
fn parse_rss_kib(status: &str) -> Result<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .context("no VmRSS line")?;
    let kib = line.trim().trim_end_matches("kB").trim();
    kib.parse().with_context(|| format!("VmRSS value {kib:?}"))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_rss_kib(&status)
}

/// Totals from `strace -c` output: (calls, the syscall with most calls).
fn parse_strace_summary(summary: &str) -> Result<(u64, String)> {
    let mut total = None;
    let mut top: Option<(u64, String)> = None;
    for line in summary.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        // "% time seconds usecs/call calls [errors] syscall"
        if words.len() < 5 || words[0].parse::<f64>().is_err() {
            continue;
        }
        let Ok(calls) = words[3].parse::<u64>() else {
            continue;
        };
        let name = words[words.len() - 1];
        if name == "total" {
            total = Some(calls);
        } else if top.as_ref().is_none_or(|(most, _)| calls > *most) {
            top = Some((calls, name.to_string()));
        }
    }
    let total = total.context("no total line in strace -c output")?;
    Ok((total, top.map_or_else(String::new, |(_, name)| name)))
}

/// Median of `values` (mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    assert!(!values.is_empty(), "median of nothing");
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn median_sample(samples: &[Sample]) -> Sample {
    let pick = |field: fn(&Sample) -> f64| {
        let mut values: Vec<f64> = samples.iter().map(field).collect();
        median(&mut values)
    };
    Sample {
        wrk: WrkResult {
            requests: pick(|s| s.wrk.requests as f64) as u64,
            requests_per_s: pick(|s| s.wrk.requests_per_s),
            latency_p50_ms: pick(|s| s.wrk.latency_p50_ms),
            latency_p99_ms: pick(|s| s.wrk.latency_p99_ms),
            errors: samples.iter().map(|s| s.wrk.errors).sum(),
        },
        cpu_us_per_request: pick(|s| s.cpu_us_per_request),
        log_bytes_per_request: pick(|s| s.log_bytes_per_request),
    }
}

/// Raises our fd limit (the servers inherit it): the hard limit too when
/// we are root, else the soft limit up to the hard one.
fn raise_nofile() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    ensure!(got == 0, "getrlimit: {}", std::io::Error::last_os_error());
    let wanted = NOFILE_WANTED.max(limit.rlim_cur);
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: wanted.max(limit.rlim_max),
    };
    // SAFETY: setrlimit reads one rlimit through a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(wanted);
    }
    let soft = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) };
    ensure!(set == 0, "setrlimit: {}", std::io::Error::last_os_error());
    Ok(limit.rlim_max)
}

/// A free loopback port (the kernel's pick; released before use, so a race
/// with another process is possible but harmless: the server fails loudly).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    Ok(listener.local_addr()?.port())
}

/// Sends `GET path` on `stream` and reads one response; returns its status
/// line and body (lossy UTF-8: the Lua routes' bodies are text).
fn http_get(stream: &mut TcpStream, path: &str) -> Result<(String, String)> {
    let mut buffer = [0u8; CLIENT_RESPONSE_BYTES_MAX];
    let (status, body) = http_get_into(stream, path, &mut buffer)?;
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

/// Sends `GET path` on `stream` and reads one response into `buffer`;
/// returns its status line and body bytes. Reads exactly the response
/// (Content-Length framed), so the connection stays usable; a response
/// larger than `buffer` is an error.
fn http_get_into<'b>(
    stream: &mut TcpStream,
    path: &str,
    buffer: &'b mut [u8],
) -> Result<(String, &'b [u8])> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut filled = 0;
    let mut framed: Option<(String, usize, usize)> = None;
    loop {
        ensure!(
            filled < buffer.len(),
            "response over {} bytes",
            buffer.len()
        );
        let read = stream.read(&mut buffer[filled..])?;
        ensure!(read > 0, "connection closed after {filled} bytes");
        filled += read;
        if framed.is_none() {
            let Some(head_end) = buffer[..filled].windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buffer[..head_end]);
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .context("response without Content-Length")?;
            let status = head.lines().next().unwrap_or_default().to_string();
            framed = Some((status, head_end + 4, length));
        }
        if let Some((_, body_start, length)) = &framed {
            let end = body_start + length;
            if filled >= end {
                ensure!(filled == end, "bytes after the response");
                let (status, body_start, _) = framed.take().unwrap_or_default();
                return Ok((status, &buffer[body_start..end]));
            }
        }
    }
}

fn connect(port: u16) -> Result<TcpStream> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&address, CLIENT_TIMEOUT)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    Ok(stream)
}

/// A server under test; killed when dropped.
struct Server {
    kind: ServerKind,
    port: u16,
    /// Its TLS listener (keystone and nginx).
    tls_port: Option<u16>,
    child: Child,
    /// Where it logs its errors (nginx: its `error_log`; the others: their
    /// standard output and error).
    log_path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// The server's pid: `taskset` execs the server, so it is the child's.
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `kind`; `backends` are the ports keystone's and nginx's proxy
    /// scenarios forward to.
    fn start(
        kind: ServerKind,
        root: &Path,
        dir: &Path,
        options: &Options,
        backends: Backends,
    ) -> Result<Server> {
        let port = free_port()?;
        let tls_port = if kind.speaks_tls() {
            Some(free_port()?)
        } else {
            None
        };
        let release = root.join("target/release");
        let keystone = options
            .keystone
            .clone()
            .unwrap_or_else(|| release.join("keystone"));
        let mut command = Command::new("taskset");
        command.args(["-c", SERVER_CORE]);
        match kind {
            ServerKind::Keystone => {
                let app = write_keystone_app(dir, backends)?;
                command.arg(keystone).arg("serve").arg(app).args([
                    "--listen".to_string(),
                    format!("127.0.0.1:{port}"),
                    "--tls-listen".to_string(),
                    format!("127.0.0.1:{}", tls_port.expect("keystone speaks TLS")),
                    "--tls-cert".to_string(),
                    dir.join(TLS_CERT).display().to_string(),
                    "--tls-key".to_string(),
                    dir.join(TLS_KEY).display().to_string(),
                    "--workers".to_string(),
                    "1".to_string(),
                    "--max-connections".to_string(),
                    SERVER_CONNECTIONS_MAX.to_string(),
                ]);
            }
            ServerKind::NginxLua => {
                let tls_port = tls_port.expect("nginx speaks TLS");
                let conf = write_nginx_conf(dir, port, tls_port, backends)?;
                command.arg("nginx").arg("-p").arg(dir).arg("-c").arg(conf);
                command.arg("-e").arg(dir.join("error.log"));
            }
            ServerKind::RawUring => {
                command
                    .arg(release.join("raw-uring"))
                    .arg(format!("127.0.0.1:{port}"))
                    .arg((2 * SERVER_CONNECTIONS_MAX).to_string());
            }
        }
        let log_path = dir.join(format!("{}.log", kind.name().replace('+', "-")));
        let log = File::create(&log_path)?;
        // The root, so a server resolving paths (the example app) finds them.
        command
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let errors_path = match kind {
            ServerKind::NginxLua => dir.join("error.log"),
            _ => log_path.clone(),
        };
        let mut server = Server {
            kind,
            port,
            tls_port,
            child,
            log_path: errors_path,
        };
        if let Err(error) = server.wait_ready() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_LINES).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{} did not start ({error:#}); the end of {}:\n{}",
                kind.name(),
                log_path.display(),
                tail.join("\n")
            );
        }
        Ok(server)
    }

    /// Waits until the server answers `GET /` with `Hello, World!`.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("exited: {status}");
            }
            let answer = connect(self.port).and_then(|mut stream| http_get(&mut stream, "/"));
            match answer {
                Ok((_, body)) if body == HELLO => return Ok(()),
                Ok((status, body)) => bail!("GET / answered {status:?} {body:?}"),
                Err(error) if Instant::now() > deadline => return Err(error),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The smoke check: each routed path answers what the app says.
    fn check_routes(&self) -> Result<()> {
        if !self.kind.routes() {
            return Ok(());
        }
        let mut stream = connect(self.port)?;
        for (path, expected) in [
            ("/", HELLO),
            ("/users/42", r#"{"id":42}"#),
            (PROXY_PATH, HELLO),
        ] {
            let (status, body) = http_get(&mut stream, path)?;
            ensure!(
                status.starts_with("HTTP/1.1 200") && body == expected,
                "{} GET {path}: {status:?} {body:?}, expected {expected:?}",
                self.kind.name()
            );
        }
        // On a connection of its own: nginx closes the connection after a
        // 500 (ngx_http_special_response_handler turns keep-alive off).
        let (status, _) = http_get(&mut connect(self.port)?, ERROR_PATH)?;
        ensure!(
            status.starts_with("HTTP/1.1 500"),
            "{} GET {ERROR_PATH}: {status:?}, expected 500 (its handler raises)",
            self.kind.name()
        );
        if !self.kind.serves_files() {
            return Ok(());
        }
        let largest = STATIC_FILES.iter().map(|file| file.bytes).max();
        let mut buffer = vec![0u8; largest.unwrap_or(0) + CLIENT_RESPONSE_BYTES_MAX];
        for file in STATIC_FILES {
            let path = format!("{STATIC_PREFIX}{}", file.name);
            let (status, body) = http_get_into(&mut stream, &path, &mut buffer)?;
            ensure!(
                status.starts_with("HTTP/1.1 200") && body == static_file_bytes(file),
                "{} GET {path}: {status:?} with {} bytes, expected 200 with the {} bytes written",
                self.kind.name(),
                body.len(),
                file.bytes
            );
        }
        Ok(())
    }
}

/// The bytes of `file`: splitmix64 from [`STATIC_SEED`] mixed with the
/// file's size, so the two files differ and every run writes the same.
fn static_file_bytes(file: StaticFile) -> Vec<u8> {
    let mut state = STATIC_SEED ^ file.bytes as u64;
    let mut bytes = Vec::with_capacity(file.bytes + 8);
    while bytes.len() < file.bytes {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(file.bytes);
    bytes
}

/// `<dir>/files`: nginx's `root` for [`STATIC_PREFIX`]; the files lie in
/// its `static` subdirectory, Keystone's static directory.
fn files_root(dir: &Path) -> PathBuf {
    dir.join(FILES_DIR)
}

fn static_dir(dir: &Path) -> PathBuf {
    files_root(dir).join(STATIC_PREFIX.trim_matches('/'))
}

/// Writes [`STATIC_FILES`] under `<dir>/files/static`.
fn write_static_files(dir: &Path) -> Result<()> {
    let static_dir = static_dir(dir);
    std::fs::create_dir_all(&static_dir)?;
    for file in STATIC_FILES {
        std::fs::write(static_dir.join(file.name), static_file_bytes(file))?;
    }
    Ok(())
}

/// The HTTPS rows' ECDSA P-256 certificate, self-signed for 127.0.0.1
/// (wrk does not verify).
fn write_certificate(dir: &Path) -> Result<()> {
    run_checked(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .arg("-keyout")
            .arg(dir.join(TLS_KEY))
            .arg("-out")
            .arg(dir.join(TLS_CERT))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// Writes Keystone's bench app (with the static directory's absolute path).
fn write_keystone_app(dir: &Path, backends: Backends) -> Result<PathBuf> {
    let static_dir = std::path::absolute(static_dir(dir))?;
    let static_dir = static_dir
        .to_str()
        .context("static directory path is not UTF-8")?;
    ensure!(
        !static_dir.contains("]==]"),
        "static directory path {static_dir:?} closes a Lua long string"
    );
    let app = KEYSTONE_APP
        .replace("{example}", EXAMPLE_APP)
        .replace("{static_prefix}", STATIC_PREFIX)
        .replace("{error_path}", ERROR_PATH)
        .replace("{proxy_path}", PROXY_PATH)
        .replace("{proxy_large_path}", PROXY_LARGE_PATH)
        .replace("{backend}", &backends.small.to_string())
        .replace("{large_backend}", &backends.large.to_string())
        .replace("{static_dir}", static_dir);
    let path = dir.join("app.lua");
    std::fs::write(&path, app)?;
    Ok(path)
}

fn write_nginx_conf(dir: &Path, port: u16, tls_port: u16, backends: Backends) -> Result<PathBuf> {
    let mut load_modules = String::new();
    for module in NGINX_MODULES {
        let path = Path::new(NGINX_MODULES_DIR).join(module);
        ensure!(
            path.exists(),
            "{} missing: is libnginx-mod-http-lua installed?",
            path.display()
        );
        writeln!(load_modules, "load_module {};", path.display())?;
    }
    let conf = NGINX_CONF
        .replace("{nofile}", &NOFILE_NEEDED.to_string())
        .replace("{connections}", &SERVER_CONNECTIONS_MAX.to_string())
        .replace("{load_modules}", &load_modules)
        .replace("{static_prefix}", STATIC_PREFIX)
        .replace("{error_path}", ERROR_PATH)
        .replace("{files}", &files_root(dir).display().to_string())
        .replace("{dir}", &dir.display().to_string())
        .replace("{proxy_path}", PROXY_PATH)
        .replace("{proxy_large_path}", PROXY_LARGE_PATH)
        .replace("{backend}", &backends.small.to_string())
        .replace("{large_backend}", &backends.large.to_string())
        .replace("{tls_port}", &tls_port.to_string())
        .replace("{tls_cert}", &dir.join(TLS_CERT).display().to_string())
        .replace("{tls_key}", &dir.join(TLS_KEY).display().to_string())
        .replace("{port}", &port.to_string());
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// Runs wrk (pinned to the client core) against `server`.
fn run_wrk(server: &Server, scenario: &Scenario, seconds: u32, dir: &Path) -> Result<WrkResult> {
    let mut command = Command::new("taskset");
    command.args([
        "-c",
        CLIENT_CORE,
        "wrk",
        "-t1",
        "--latency",
        "--timeout",
        "5s",
    ]);
    command.arg(format!("-c{}", scenario.connections));
    command.arg(format!("-d{seconds}s"));
    if scenario.pipeline > 1 {
        command.arg("-s").arg(dir.join("pipeline.lua"));
    }
    if scenario.close {
        command.args(["-H", "Connection: close"]);
    }
    let url = match (scenario.tls, server.tls_port) {
        (true, Some(port)) => format!("https://127.0.0.1:{port}{}", scenario.path),
        _ => format!("http://127.0.0.1:{}{}", server.port, scenario.path),
    };
    command.arg(url);
    if scenario.pipeline > 1 {
        command.args(["--", &scenario.pipeline.to_string()]);
    }
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        output.status
    );
    parse_wrk(&String::from_utf8_lossy(&output.stdout))
}

/// One wrk run with the server's CPU time measured around it.
fn measure(server: &Server, scenario: &Scenario, seconds: u32, dir: &Path) -> Result<Sample> {
    let log_size = || std::fs::metadata(&server.log_path).map_or(0, |m| m.len());
    let log_before = log_size();
    let before = cpu_ticks(server.pid())?;
    let wrk = run_wrk(server, scenario, seconds, dir)?;
    let after = cpu_ticks(server.pid())?;
    let log_bytes = log_size().saturating_sub(log_before);
    ensure!(
        wrk.requests > 0,
        "{}: wrk completed no requests",
        server.kind.name()
    );
    let cpu_us = (after - before) as f64 / clock_ticks_per_s() * 1e6;
    Ok(Sample {
        wrk,
        cpu_us_per_request: cpu_us / wrk.requests as f64,
        log_bytes_per_request: log_bytes as f64 / wrk.requests as f64,
    })
}

/// Syscalls per request: strace attached to every thread for a short
/// plaintext run.
struct SyscallFigure {
    calls: u64,
    requests: u64,
    top: String,
}

fn count_syscalls(server: &Server, dir: &Path) -> Result<SyscallFigure> {
    let summary_path = dir.join(format!(
        "strace-{}.txt",
        server.kind.name().replace('+', "-")
    ));
    let mut strace = Command::new("strace")
        .args(["-c", "-f", "-q", "-p", &server.pid().to_string(), "-o"])
        .arg(&summary_path)
        .stderr(Stdio::null())
        .spawn()
        .context("starting strace")?;
    // strace attaches to each thread in turn; give it time before the load.
    std::thread::sleep(Duration::from_millis(500));
    let wrk = run_wrk(server, &SCENARIOS[PLAINTEXT], STRACE_SECONDS, dir);
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    let signalled = unsafe { libc::kill(strace.id() as libc::pid_t, libc::SIGINT) };
    assert!(signalled == 0, "kill(strace, SIGINT) failed");
    let status = strace.wait()?;
    let wrk = wrk?;
    // strace prints its summary on SIGINT, then dies of the signal.
    let interrupted = status.signal() == Some(libc::SIGINT) || status.code() == Some(130);
    ensure!(status.success() || interrupted, "strace: {status}");
    let summary = std::fs::read_to_string(&summary_path)
        .with_context(|| format!("reading {}", summary_path.display()))?;
    let (calls, top) = parse_strace_summary(&summary)?;
    ensure!(wrk.requests > 0, "no requests completed under strace");
    Ok(SyscallFigure {
        calls,
        requests: wrk.requests,
        top,
    })
}

/// How long connections sit idle before RSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(3);

/// RSS before and with `IDLE_CONNECTIONS` idle keep-alive connections, each
/// having completed one request.
struct RssFigure {
    before_kib: u64,
    idle_kib: u64,
}

fn measure_idle_rss(server: &Server) -> Result<RssFigure> {
    let before_kib = rss_kib(server.pid())?;
    let mut connections = Vec::with_capacity(IDLE_CONNECTIONS);
    for index in 0..IDLE_CONNECTIONS {
        let mut stream = connect(server.port)
            .with_context(|| format!("connection {index} of {IDLE_CONNECTIONS}"))?;
        let (_, body) =
            http_get(&mut stream, "/").with_context(|| format!("request on connection {index}"))?;
        ensure!(body == HELLO, "connection {index}: body {body:?}");
        connections.push(stream);
    }
    // Let the servers settle: nginx frees an idle connection's buffers at
    // once, Keystone at its next once-a-second tick; 2 s is idle for both.
    std::thread::sleep(IDLE_SETTLE);
    let idle_kib = rss_kib(server.pid())?;
    drop(connections);
    Ok(RssFigure {
        before_kib,
        idle_kib,
    })
}

/// Everything one run measured.
struct Report {
    options: Options,
    date: String,
    /// Per scenario (as `SCENARIOS`), per server (as `SERVERS`): the median;
    /// `None` where the server sits the scenario out (raw-uring, files).
    medians: Vec<[Option<Sample>; 3]>,
    /// Per scenario, per server: every round (none where it sits out).
    rounds: Vec<[Vec<Sample>; 3]>,
    syscalls: [Result<SyscallFigure>; 3],
    rss: [Result<RssFigure>; 3],
    /// `keystone test`'s `app:request` per second on one core, per round.
    in_process: Result<Vec<f64>>,
}

/// Requests `benches/spec/throughput_spec.lua` makes per round.
const IN_PROCESS_REQUESTS: u32 = 200_000;

/// Runs `keystone test benches/spec` pinned to the server core and reads
/// its summary's `(N requests in T s)`: requests per second through
/// `app:request`, the whole engine in memory (the spec's own loop and the
/// `res` tables included).
fn measure_in_process(root: &Path, keystone: &Path) -> Result<f64> {
    let output = Command::new("taskset")
        .args(["-c", SERVER_CORE])
        .arg(keystone)
        .args(["test", "benches/spec"])
        .env(
            "KEYSTONE_SPEC_BENCH_REQUESTS",
            IN_PROCESS_REQUESTS.to_string(),
        )
        .current_dir(root)
        .output()
        .context("running keystone test benches/spec")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "keystone test benches/spec failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_in_process(&stdout).with_context(|| format!("no summary in: {stdout}"))
}

/// `... (200000 requests in 1.93 s)` → requests per second.
fn parse_in_process(summary: &str) -> Option<f64> {
    let tail = summary.rsplit_once('(')?.1;
    let mut words = tail.split_whitespace();
    let requests: f64 = words.next()?.parse().ok()?;
    let _ = words.next()?; // "requests"
    let _ = words.next()?; // "in"
    let seconds: f64 = words.next()?.parse().ok()?;
    (seconds > 0.0).then(|| requests / seconds)
}

/// `cargo xtask bench [--quick] [--rounds N] [--seconds N]`.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    debian::ensure(&[debian::BUILD_PACKAGES, BENCH_PACKAGES].concat())?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    ensure!(
        cores >= 2,
        "need 2 cores (server on core {SERVER_CORE}, wrk on core {CLIENT_CORE}); found {cores}"
    );
    // With --keystone the tree's server is not built: it may be mid-edit.
    let packages: &[&str] = match options.keystone {
        None => &["-p", "keystone-server", "-p", "keystone-benches"],
        Some(_) => &["-p", "keystone-benches"],
    };
    println!("==> building {packages:?} (release)");
    run_checked(
        cargo()
            .current_dir(root)
            .args(["build", "--release", "--bins"])
            .args(packages),
    )?;
    let nofile = raise_nofile()?;
    ensure!(
        nofile >= NOFILE_NEEDED,
        "fd limit {nofile} too low for {IDLE_CONNECTIONS} idle connections"
    );
    let dir = std::env::temp_dir().join(format!("keystone-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("pipeline.lua"), PIPELINE_LUA)?;
    write_static_files(&dir)?;
    write_certificate(&dir)?;
    // On failure the directory stays: its server logs say why.
    let report = run_in(root, &dir, &options)
        .with_context(|| format!("server logs and configs kept in {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    let markdown = render_markdown(&report);
    print!("\n{markdown}");
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("latest.md"), &markdown)?;
    let json = serde_json::to_string_pretty(&render_json(&report))?;
    std::fs::write(out.join("latest.json"), json + "\n")?;
    println!("\nwrote {0}/latest.md and {0}/latest.json", out.display());
    Ok(())
}

fn run_in(root: &Path, dir: &Path, options: &Options) -> Result<Report> {
    // raw-uring first: keystone and nginx proxy to it, and to its
    // body-mode twin (a helper, not measured).
    let none = Backends { small: 0, large: 0 };
    let raw = Server::start(ServerKind::RawUring, root, dir, options, none)?;
    let large = start_large_backend(root, dir)?;
    let backends = Backends {
        small: raw.port,
        large: large.port,
    };
    let mut servers = Vec::with_capacity(SERVERS.len());
    for kind in SERVERS {
        if kind != ServerKind::RawUring {
            servers.push(Server::start(kind, root, dir, options, backends)?);
        }
    }
    servers.push(raw);
    debug_assert!(servers.iter().map(|s| s.kind).eq(SERVERS));
    for server in &servers {
        server.check_routes()?;
    }
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_default();
    let mut medians = Vec::new();
    let mut rounds = Vec::new();
    for scenario in &SCENARIOS {
        let mut samples: [Vec<Sample>; 3] = Default::default();
        for round in 1..=options.rounds {
            for (index, server) in servers.iter().enumerate() {
                if !scenario.run_by(server.kind) {
                    continue;
                }
                println!(
                    "==> {} round {round}/{}: {} ({}s, {} connections, pipeline {})",
                    scenario.name,
                    options.rounds,
                    server.kind.name(),
                    options.seconds,
                    scenario.connections,
                    scenario.pipeline
                );
                samples[index].push(measure(server, scenario, options.seconds, dir)?);
            }
        }
        medians.push(std::array::from_fn(|index| {
            (!samples[index].is_empty()).then(|| median_sample(&samples[index]))
        }));
        rounds.push(samples);
    }
    println!("==> syscalls per request (strace -c -f, {STRACE_SECONDS}s)");
    let syscalls = std::array::from_fn(|index| count_syscalls(&servers[index], dir));
    println!("==> RSS with {IDLE_CONNECTIONS} idle keep-alive connections");
    let rss = std::array::from_fn(|index| measure_idle_rss(&servers[index]));
    println!(
        "==> keystone test: app:request in process ({IN_PROCESS_REQUESTS} requests per round)"
    );
    let keystone = options
        .keystone
        .clone()
        .unwrap_or_else(|| root.join("target/release/keystone"));
    let in_process = (1..=options.rounds)
        .map(|_| measure_in_process(root, &keystone))
        .collect();
    Ok(Report {
        options: options.clone(),
        date,
        medians,
        rounds,
        syscalls,
        rss,
        in_process,
    })
}

/// The body-mode raw-uring the large proxied-body scenario forwards to
/// (on the client core: it is load generation, not a server under test).
fn start_large_backend(root: &Path, dir: &Path) -> Result<Server> {
    let port = free_port()?;
    let log_path = dir.join("raw-uring-large.log");
    let log = File::create(&log_path)?;
    let child = Command::new("taskset")
        .args(["-c", CLIENT_CORE])
        .arg(root.join("target/release/raw-uring"))
        .arg(format!("127.0.0.1:{port}"))
        .arg((2 * SERVER_CONNECTIONS_MAX).to_string())
        .arg(PROXY_LARGE_BYTES.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the body-mode raw-uring")?;
    let server = Server {
        kind: ServerKind::RawUring,
        port,
        tls_port: None,
        child,
        log_path,
    };
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while connect(port).is_err() {
        ensure!(
            Instant::now() < deadline,
            "the body-mode raw-uring did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(server)
}

/// `a ÷ b` to two decimals and a trailing `×`, or `-` when either is
/// missing (a server sat the scenario out) or b is zero.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "-".to_string(),
    }
}

/// One reported (never asserted) target: what, measured, met.
struct Target {
    what: &'static str,
    measured: Option<f64>,
    limit: f64,
    at_most: bool,
}

impl Target {
    fn met(&self) -> Option<bool> {
        let measured = self.measured?;
        Some(if self.at_most {
            measured <= self.limit
        } else {
            measured >= self.limit
        })
    }
}

fn targets(report: &Report) -> Vec<Target> {
    const KEYSTONE: usize = 0;
    const NGINX: usize = 1;
    const RAW: usize = 2;
    let quotient = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    let cpu = |row: usize, index: usize| report.medians[row][index].map(|s| s.cpu_us_per_request);
    let rate = |row: usize, index: usize| report.medians[row][index].map(|s| s.wrk.requests_per_s);
    let cpu_ratio = |row: usize, peer: usize| quotient(cpu(row, KEYSTONE), cpu(row, peer));
    let keystone_syscalls = report.syscalls[KEYSTONE]
        .as_ref()
        .ok()
        .map(|figure| figure.calls as f64 / figure.requests as f64);
    let rss = |index: usize| report.rss[index].as_ref().ok().map(|f| f.idle_kib as f64);
    let failing = &report.medians[LUA_ERROR];
    // The worst p99 ratio over the rows whose latency means something
    // (not pipelined) and whose answers are successes (not lua-error).
    let worst_p99 = SCENARIOS
        .iter()
        .enumerate()
        .filter(|(row, scenario)| scenario.latency_valid() && *row != LUA_ERROR)
        .filter_map(|(row, _)| {
            let p99 = |index: usize| report.medians[row][index].map(|s| s.wrk.latency_p99_ms);
            quotient(p99(KEYSTONE), p99(NGINX))
        })
        .fold(None, |worst: Option<f64>, ratio| {
            Some(worst.map_or(ratio, |w| w.max(ratio)))
        });
    let at_most = |what, measured, limit| Target {
        what,
        measured,
        limit,
        at_most: true,
    };
    let at_least = |what, measured, limit| Target {
        what,
        measured,
        limit,
        at_most: false,
    };
    vec![
        at_most(
            "CPU/request, plaintext 64 conns: keystone ÷ raw-uring",
            cpu_ratio(PLAINTEXT, RAW),
            1.05,
        ),
        at_most(
            "CPU/request, json-param 64 conns: keystone ÷ raw-uring",
            cpu_ratio(JSON_PARAM, RAW),
            1.05,
        ),
        at_least(
            "pipelined ×16 req/s: keystone ÷ raw-uring",
            quotient(rate(PIPELINED, KEYSTONE), rate(PIPELINED, RAW)),
            0.9,
        ),
        at_least(
            "pipelined ×16 req/s: keystone ÷ nginx+lua",
            quotient(rate(PIPELINED, KEYSTONE), rate(PIPELINED, NGINX)),
            6.0,
        ),
        at_most(
            "CPU/request, connections-256: keystone ÷ raw-uring",
            cpu_ratio(CONNECTIONS_256, RAW),
            1.1,
        ),
        at_most(
            "CPU/request, connections-256: keystone ÷ nginx+lua",
            cpu_ratio(CONNECTIONS_256, NGINX),
            0.75,
        ),
        at_most(
            "CPU/request, connections-4096: keystone ÷ raw-uring",
            cpu_ratio(CONNECTIONS_4096, RAW),
            1.1,
        ),
        at_most(
            "CPU/request, connections-4096: keystone ÷ nginx+lua",
            cpu_ratio(CONNECTIONS_4096, NGINX),
            0.75,
        ),
        at_most(
            "CPU/request, static-4KiB: keystone ÷ nginx+lua",
            cpu_ratio(STATIC_SMALL, NGINX),
            0.7,
        ),
        at_least(
            "MB/s, static-1MiB: keystone ÷ nginx+lua",
            quotient(rate(STATIC_LARGE, KEYSTONE), rate(STATIC_LARGE, NGINX)),
            1.3,
        ),
        at_most(
            "CPU/request, proxy 64 conns: keystone ÷ nginx+lua",
            cpu_ratio(PROXY, NGINX),
            0.7,
        ),
        at_most(
            "CPU/request, proxy-1MiB 16 conns: keystone ÷ nginx+lua",
            cpu_ratio(PROXY_LARGE, NGINX),
            0.7,
        ),
        at_most(
            "CPU/request, https-plaintext 64 conns: keystone ÷ nginx+lua",
            cpu_ratio(HTTPS_PLAINTEXT, NGINX),
            0.8,
        ),
        at_least(
            "full handshakes/s, https-handshakes: keystone ÷ nginx+lua",
            quotient(
                rate(HTTPS_HANDSHAKES, KEYSTONE),
                rate(HTTPS_HANDSHAKES, NGINX),
            ),
            1.0,
        ),
        at_least(
            "MB/s, https-static-1MiB: keystone ÷ nginx+lua",
            quotient(
                rate(HTTPS_STATIC_LARGE, KEYSTONE),
                rate(HTTPS_STATIC_LARGE, NGINX),
            ),
            1.0,
        ),
        at_most(
            "p99 latency, worst non-pipelined row: keystone ÷ nginx+lua",
            worst_p99,
            1.0,
        ),
        at_most("keystone syscalls per request", keystone_syscalls, 0.1),
        at_most(
            "CPU/request, keystone: lua-error ÷ plaintext",
            quotient(
                failing[KEYSTONE].map(|s| s.cpu_us_per_request),
                cpu(PLAINTEXT, KEYSTONE),
            ),
            1.5,
        ),
        at_most(
            "keystone log bytes per failing request (lua-error)",
            failing[KEYSTONE].map(|s| s.log_bytes_per_request),
            1.0,
        ),
        at_most(
            "RSS with 10k idle keep-alive: keystone ÷ nginx+lua",
            rss(KEYSTONE).zip(rss(NGINX)).map(|(k, n)| k / n),
            1.0,
        ),
        at_least(
            "keystone test: app:request per second on one core",
            in_process_median(report),
            20_000.0,
        ),
    ]
}

fn in_process_median(report: &Report) -> Option<f64> {
    let mut rounds = report.in_process.as_ref().ok()?.clone();
    (!rounds.is_empty()).then(|| median(&mut rounds))
}

fn render_markdown(report: &Report) -> String {
    let mut md = String::new();
    let options = &report.options;
    let _ = writeln!(
        md,
        "Keystone benchmark, {}{}: {} rounds × {} s per scenario and server, \
         interleaved; medians. Each server: 1 worker pinned to core {SERVER_CORE}; \
         wrk -t1 pinned to core {CLIENT_CORE}.\n",
        report.date,
        if options.quick { " (--quick)" } else { "" },
        options.rounds,
        options.seconds
    );
    if let Some(keystone) = &options.keystone {
        let _ = writeln!(md, "Keystone binary: `{}`.\n", keystone.display());
    }
    render_throughput(&mut md, report);
    render_ratios(&mut md, report);
    render_failures(&mut md, report);
    render_syscalls_and_rss(&mut md, report);
    match &report.in_process {
        Ok(rounds) => {
            let list: Vec<String> = rounds.iter().map(|r| format!("{r:.0}")).collect();
            let _ = writeln!(
                md,
                "`keystone test` in process (benches/spec, GET /users/7 through `app:request`, \
                 core {SERVER_CORE}): {:.0} requests/s median (rounds: {}).\n",
                in_process_median(report).unwrap_or(0.0),
                list.join(", ")
            );
        }
        Err(error) => {
            let _ = writeln!(md, "`keystone test` in process: failed: {error:#}\n");
        }
    }
    let _ = writeln!(
        md,
        "| target (reported, never asserted) | measured | limit | met |"
    );
    let _ = writeln!(md, "|---|---:|---:|---|");
    for target in targets(report) {
        let measured = target
            .measured
            .map_or("-".to_string(), |value| format!("{value:.2}"));
        let met = match target.met() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        let bound = if target.at_most { "≤" } else { "≥" };
        let _ = writeln!(
            md,
            "| {} | {measured} | {bound} {} | {met} |",
            target.what, target.limit
        );
    }
    md
}

fn render_throughput(md: &mut String, report: &Report) {
    let _ = writeln!(
        md,
        "| scenario | server | req/s | MB/s | server CPU µs/req | p50 ms | p99 ms | errors |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|");
    for (scenario, medians) in SCENARIOS.iter().zip(&report.medians) {
        for (kind, sample) in SERVERS.iter().zip(medians) {
            let Some(sample) = sample else {
                let _ = writeln!(
                    md,
                    "| {} | {} | n/a ({}) | | | | | |",
                    scenario.name,
                    kind.name(),
                    scenario.not_applicable()
                );
                continue;
            };
            let note = if !kind.routes() && scenario.path != "/" {
                " (no routing: canned reply)"
            } else {
                ""
            };
            let throughput = scenario
                .payload_mb_per_s(sample)
                .map_or("-".to_string(), |mb| format!("{mb:.0}"));
            let latency = if scenario.latency_valid() {
                format!(
                    "{:.3} | {:.3}",
                    sample.wrk.latency_p50_ms, sample.wrk.latency_p99_ms
                )
            } else {
                "- | -".to_string()
            };
            let _ = writeln!(
                md,
                "| {} | {}{note} | {:.0} | {throughput} | {:.2} | {latency} | {} |",
                scenario.name,
                kind.name(),
                sample.wrk.requests_per_s,
                sample.cpu_us_per_request,
                sample.wrk.errors
            );
        }
    }
    let _ = writeln!(
        md,
        "\nMB/s: static files and proxy-1MiB, the body's bytes × req/s (10^6 bytes, \
         headers not counted). pipelined-16: no latency: wrk records one per \
         batch of {PIPELINE_DEPTH} but corrects for coordinated omission as if \
         each request were written alone, which makes its pipelined \
         percentiles meaningless. raw-uring serves no files: no static rows. \
         lua-error: every answer is a 500 (its handler raises), so its errors \
         are its requests; raw-uring has no routes to fail. proxy: keystone (`ctx.upstream`) and nginx (`proxy_pass`, `keepalive 64`) forward each request to the raw-uring of the same run over kept-alive upstream connections; raw-uring is the backend, so it has no row. proxy-1MiB: the same with a body-mode raw-uring (every answer 1 MiB, on the client core) as the backend; keystone splices the body past what came with the head.\n"
    );
}

fn render_ratios(md: &mut String, report: &Report) {
    let _ = writeln!(
        md,
        "| scenario | req/s K÷nginx | req/s K÷raw | CPU/req K÷nginx | CPU/req K÷raw | p99 K÷nginx | p99 raw÷nginx |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for (scenario, [keystone, nginx, raw]) in SCENARIOS.iter().zip(&report.medians) {
        let of = |sample: &Option<Sample>, field: fn(&Sample) -> f64| sample.as_ref().map(field);
        let rate = |s: &Sample| s.wrk.requests_per_s;
        let cpu = |s: &Sample| s.cpu_us_per_request;
        let p99 = |s: &Sample| s.wrk.latency_p99_ms;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            scenario.name,
            ratio(of(keystone, rate), of(nginx, rate)),
            ratio(of(keystone, rate), of(raw, rate)),
            ratio(of(keystone, cpu), of(nginx, cpu)),
            ratio(of(keystone, cpu), of(raw, cpu)),
            if scenario.latency_valid() {
                ratio(of(keystone, p99), of(nginx, p99))
            } else {
                "-".to_string()
            },
            if scenario.latency_valid() {
                ratio(of(raw, p99), of(nginx, p99))
            } else {
                "-".to_string()
            },
        );
    }
    let _ = writeln!(
        md,
        "\np99 raw÷nginx: the tail of Keystone's own I/O model (raw-uring, which \
         parses nothing and runs no Lua) against nginx's in the same rounds; where \
         it is above 1 as well, the tail is the completion-batching model's on \
         this machine, not Keystone's code.\n"
    );
}

/// What a failing route costs each server against its own plaintext route:
/// CPU per request and log bytes per failure.
fn render_failures(md: &mut String, report: &Report) {
    let _ = writeln!(
        md,
        "| server | lua-error CPU/req ÷ its plaintext | log bytes per failing request |"
    );
    let _ = writeln!(md, "|---|---:|---:|");
    for (index, kind) in SERVERS.iter().enumerate() {
        let (Some(failing), Some(plaintext)) = (
            report.medians[LUA_ERROR][index],
            report.medians[PLAINTEXT][index],
        ) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} |",
            kind.name(),
            ratio(
                Some(failing.cpu_us_per_request),
                Some(plaintext.cpu_us_per_request)
            ),
            failing.log_bytes_per_request
        );
    }
    let _ = writeln!(md);
}

fn render_syscalls_and_rss(md: &mut String, report: &Report) {
    let _ = writeln!(
        md,
        "| server | syscalls/req (strace, plaintext) | most frequent | RSS idle MiB | RSS with {IDLE_CONNECTIONS} idle conns MiB | KiB per idle conn |"
    );
    let _ = writeln!(md, "|---|---:|---|---:|---:|---:|");
    for (index, kind) in SERVERS.iter().enumerate() {
        let (per_request, top) = match &report.syscalls[index] {
            Ok(figure) => (
                format!("{:.3}", figure.calls as f64 / figure.requests as f64),
                figure.top.clone(),
            ),
            Err(error) => (format!("failed: {error:#}"), String::new()),
        };
        let rss = match &report.rss[index] {
            Ok(figure) => format!(
                "{:.1} | {:.1} | {:.2}",
                figure.before_kib as f64 / 1024.0,
                figure.idle_kib as f64 / 1024.0,
                (figure.idle_kib as f64 - figure.before_kib as f64) / IDLE_CONNECTIONS as f64
            ),
            Err(error) => format!("failed: {error:#} | | "),
        };
        let _ = writeln!(md, "| {} | {per_request} | {top} | {rss} |", kind.name());
    }
    let _ = writeln!(md);
}

fn sample_json(sample: &Sample) -> Value {
    json!({
        "requests": sample.wrk.requests,
        "requests_per_s": sample.wrk.requests_per_s,
        "cpu_us_per_request": sample.cpu_us_per_request,
        "latency_p50_ms": sample.wrk.latency_p50_ms,
        "latency_p99_ms": sample.wrk.latency_p99_ms,
        "errors": sample.wrk.errors,
        "log_bytes_per_request": sample.log_bytes_per_request,
    })
}

fn render_json(report: &Report) -> Value {
    let scenarios: Vec<Value> = SCENARIOS
        .iter()
        .enumerate()
        .map(|(index, scenario)| {
            let servers: serde_json::Map<String, Value> = SERVERS
                .iter()
                .enumerate()
                .map(|(server, kind)| {
                    let Some(median) = &report.medians[index][server] else {
                        return (
                            kind.name().to_string(),
                            json!({"not_applicable": scenario.not_applicable()}),
                        );
                    };
                    let rounds: Vec<Value> = report.rounds[index][server]
                        .iter()
                        .map(sample_json)
                        .collect();
                    let mut figures = sample_json(median);
                    figures["rounds"] = Value::from(rounds);
                    if !scenario.latency_valid() {
                        figures["latency_p50_ms"] = Value::Null;
                        figures["latency_p99_ms"] = Value::Null;
                    }
                    if let Some(mb) = scenario.payload_mb_per_s(median) {
                        figures["payload_mb_per_s"] = Value::from(mb);
                    }
                    (kind.name().to_string(), figures)
                })
                .collect();
            json!({
                "name": scenario.name,
                "path": scenario.path,
                "connections": scenario.connections,
                "pipeline": scenario.pipeline,
                "file_bytes": scenario.file.map(|file| file.bytes),
                "servers": servers,
            })
        })
        .collect();
    let per_server = |index: usize| {
        let syscalls = match &report.syscalls[index] {
            Ok(f) => {
                json!({"calls": f.calls, "requests": f.requests, "per_request": f.calls as f64 / f.requests as f64, "most_frequent": f.top})
            }
            Err(error) => json!({"error": format!("{error:#}")}),
        };
        let rss = match &report.rss[index] {
            Ok(f) => {
                json!({"before_kib": f.before_kib, "idle_connections": IDLE_CONNECTIONS, "with_idle_kib": f.idle_kib})
            }
            Err(error) => json!({"error": format!("{error:#}")}),
        };
        json!({"syscalls": syscalls, "rss": rss})
    };
    let servers: serde_json::Map<String, Value> = SERVERS
        .iter()
        .enumerate()
        .map(|(index, kind)| (kind.name().to_string(), per_server(index)))
        .collect();
    let targets: Vec<Value> = targets(report)
        .iter()
        .map(|t| json!({"what": t.what, "measured": t.measured, "limit": t.limit, "at_most": t.at_most, "met": t.met()}))
        .collect();
    json!({
        "date": report.date,
        "quick": report.options.quick,
        "keystone_binary": report.options.keystone.as_ref().map(|path| path.display().to_string()),
        "rounds": report.options.rounds,
        "seconds": report.options.seconds,
        "server_core": SERVER_CORE,
        "client_core": CLIENT_CORE,
        "scenarios": scenarios,
        "servers": servers,
        "in_process_requests_per_s": match &report.in_process {
            Ok(rounds) => json!({"median": in_process_median(report), "rounds": rounds}),
            Err(error) => json!({"error": format!("{error:#}")}),
        },
        "targets": targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_process_summary_parses() {
        let out = ".\n1 passed, 0 failed (200000 requests in 2.00 s)\n";
        assert_eq!(parse_in_process(out), Some(100_000.0));
        assert_eq!(parse_in_process("1 passed, 0 failed"), None);
    }

    const WRK_OUTPUT: &str = "Running 2s test @ http://127.0.0.1:18555/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   351.03us  166.42us   4.08ms   86.95%
    Req/Sec   102.73k    10.09k  120.56k    71.43%
  Latency Distribution
     50%  316.00us
     75%  382.00us
     90%  534.00us
     99%    1.20ms
  214697 requests in 2.10s, 19.86MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec: 102258.09
Transfer/sec:      9.46MB
";

    #[test]
    fn parses_wrk_latency_output() {
        let result = parse_wrk(WRK_OUTPUT).unwrap();
        assert_eq!(result.requests, 214_697);
        assert_eq!(result.requests_per_s, 102_258.09);
        assert!((result.latency_p50_ms - 0.316).abs() < 1e-9);
        assert!((result.latency_p99_ms - 1.2).abs() < 1e-9);
        assert_eq!(result.errors, 7);
        assert!(parse_wrk("Running 2s test\n").is_err());
    }

    #[test]
    fn parses_durations() {
        for (text, expected) in [
            ("316.00us", Some(0.316)),
            ("1.20ms", Some(1.2)),
            ("2.10s", Some(2100.0)),
            ("1.00m", Some(60_000.0)),
            ("12", None),
            ("1.0xs", None),
        ] {
            let parsed = parse_duration_ms(text);
            match (parsed, expected) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{text}: {a} vs {b}"),
                (a, b) => assert_eq!(a, b, "{text}"),
            }
        }
    }

    #[test]
    fn parses_proc_stat_with_spaces_in_comm() {
        let stat = "1234 (raw uring) S 1 1234 1234 0 -1 4194560 150 0 0 0 \
                    250 17 0 0 20 0 2 0 12345 1000000 300 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat).unwrap(), 267);
        assert!(parse_cpu_ticks("1234 (x) S 1 2").is_err());
    }

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tnginx\nVmPeak:\t  20000 kB\nVmRSS:\t    8812 kB\nThreads:\t1\n";
        assert_eq!(parse_rss_kib(status).unwrap(), 8812);
        assert!(parse_rss_kib("Name:\tx\n").is_err());
    }

    #[test]
    fn parses_strace_summary() {
        let summary = "% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 62.11    0.102345           3     30000           io_uring_enter
 37.89    0.062431           2     31000      1000 writev
------ ----------- ----------- --------- --------- ----------------
100.00    0.164776           2     61000      1000 total
";
        let (calls, top) = parse_strace_summary(summary).unwrap();
        assert_eq!(calls, 61_000);
        assert_eq!(top, "writev");
        assert!(parse_strace_summary("nothing here").is_err());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [7.0]), 7.0);
    }

    #[test]
    fn options_quick_and_explicit() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let quick = Options::parse(&args(&["--quick"])).unwrap();
        assert_eq!((quick.rounds, quick.seconds, quick.quick), (3, 2, true));
        let explicit = Options::parse(&args(&["--rounds", "5", "--seconds", "10"])).unwrap();
        assert_eq!((explicit.rounds, explicit.seconds), (5, 10));
        assert!(Options::parse(&args(&["--rounds", "0"])).is_err());
        assert!(Options::parse(&args(&["--rounds"])).is_err());
        assert!(Options::parse(&args(&["--fast"])).is_err());
    }

    #[test]
    fn bench_packages_never_include_luajit() {
        for (name, _) in BENCH_PACKAGES {
            assert_ne!(*name, "luajit");
        }
    }

    #[test]
    fn nginx_conf_has_no_unfilled_placeholders() {
        let dir = std::env::temp_dir();
        if !Path::new(NGINX_MODULES_DIR).join(NGINX_MODULES[1]).exists() {
            // Without the module the writer refuses, which is what we want.
            assert!(write_nginx_conf(&dir.join("missing-modules"), 1, 2, TEST_BACKENDS).is_err());
            return;
        }
        let dir = dir.join(format!("keystone-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf =
            std::fs::read_to_string(write_nginx_conf(&dir, 8081, 8443, TEST_BACKENDS).unwrap())
                .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        for placeholder in [
            "{port}",
            "{dir}",
            "{files}",
            "{static_prefix}",
            "{nofile}",
            "{backend}",
            "{proxy_path}",
            "{large_backend}",
            "{proxy_large_path}",
            "{tls_port}",
            "{tls_cert}",
            "{tls_key}",
        ] {
            assert!(!conf.contains(placeholder), "{placeholder} in {conf}");
        }
        assert!(conf.contains("listen 127.0.0.1:8081"));
        assert!(conf.contains("listen 127.0.0.1:8443 ssl"), "{conf}");
        assert!(
            conf.contains(&format!("ssl_certificate {}/tls.crt;", dir.display())),
            "{conf}"
        );
        assert!(conf.contains("worker_connections 10240;"));
        let root = format!(
            "location /static/ {{\n            root {}/files;",
            dir.display()
        );
        assert!(conf.contains(&root), "{conf}");
        assert!(conf.contains("sendfile on;"));
        assert!(
            conf.contains("server 127.0.0.1:8082;\n        keepalive 64;"),
            "{conf}"
        );
        assert!(conf.contains("location = /proxy {"), "{conf}");
        assert!(conf.contains("location = /proxy-1m {"), "{conf}");
        assert!(conf.contains("server 127.0.0.1:8083;"), "{conf}");
    }

    const TEST_BACKENDS: Backends = Backends {
        small: 8082,
        large: 8083,
    };

    #[test]
    fn static_files_are_fixed_and_distinct() {
        let small = static_file_bytes(STATIC_4K);
        let large = static_file_bytes(STATIC_1M);
        assert_eq!((small.len(), large.len()), (4096, 1 << 20));
        assert_eq!(small, static_file_bytes(STATIC_4K));
        assert_ne!(small[..], large[..4096]);
        // Not a constant fill: most byte values occur.
        let mut seen = [false; 256];
        for &byte in &small {
            seen[usize::from(byte)] = true;
        }
        assert!(seen.iter().filter(|&&s| s).count() > 200);
    }

    #[test]
    fn keystone_app_and_files_share_one_directory() {
        let dir = std::env::temp_dir().join(format!("keystone-bench-app-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_static_files(&dir).unwrap();
        let app =
            std::fs::read_to_string(write_keystone_app(&dir, TEST_BACKENDS).unwrap()).unwrap();
        let on_disk = std::fs::read(dir.join("files/static/4k.bin")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let static_line = format!(
            "[\"/static/\"] = [==[{}]==],",
            std::path::absolute(dir.join("files/static"))
                .unwrap()
                .display()
        );
        assert!(app.contains(&static_line), "{app}");
        assert!(!app.contains("{static"), "{app}");
        assert!(
            !app.contains("{backend}")
                && !app.contains("{proxy_path}")
                && !app.contains("{large_backend}")
                && !app.contains("{proxy_large_path}"),
            "{app}"
        );
        assert!(app.contains(r#"peers = { "127.0.0.1:8082" }"#), "{app}");
        assert!(app.contains(r#"peers = { "127.0.0.1:8083" }"#), "{app}");
        assert_eq!(on_disk, static_file_bytes(STATIC_4K));
    }

    #[test]
    fn raw_uring_sits_out_the_static_failing_route_and_tls_scenarios_only() {
        for scenario in &SCENARIOS {
            assert!(scenario.run_by(ServerKind::Keystone));
            assert!(scenario.run_by(ServerKind::NginxLua));
            assert_eq!(
                scenario.run_by(ServerKind::RawUring),
                scenario.file.is_none() && !scenario.routed && !scenario.tls,
                "{}",
                scenario.name
            );
            if let Some(file) = scenario.file {
                assert_eq!(scenario.path, format!("{STATIC_PREFIX}{}", file.name));
            }
        }
        // The targets read rows by index.
        assert_eq!(SCENARIOS[PLAINTEXT].name, "plaintext");
        assert_eq!(SCENARIOS[JSON_PARAM].name, "json-param");
        assert_eq!(SCENARIOS[PIPELINED].name, "pipelined-16");
        assert_eq!(SCENARIOS[HTTPS_PLAINTEXT].name, "https-plaintext");
        assert_eq!(SCENARIOS[HTTPS_HANDSHAKES].name, "https-handshakes");
        assert!(SCENARIOS[HTTPS_HANDSHAKES].close && SCENARIOS[HTTPS_HANDSHAKES].tls);
        assert_eq!(SCENARIOS[HTTPS_STATIC_LARGE].name, "https-static-1MiB");
        assert_eq!(SCENARIOS[CONNECTIONS_256].name, "connections-256");
        assert_eq!(SCENARIOS[CONNECTIONS_4096].name, "connections-4096");
        assert_eq!(SCENARIOS[STATIC_SMALL].file, Some(STATIC_4K));
        assert_eq!(SCENARIOS[STATIC_LARGE].file, Some(STATIC_1M));
        assert_eq!(SCENARIOS[LUA_ERROR].path, ERROR_PATH);
        assert_eq!(SCENARIOS[PROXY].path, PROXY_PATH);
    }

    #[test]
    fn http_get_into_reads_one_binary_response() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = static_file_bytes(STATIC_4K);
        let served = body.clone();
        let server = std::thread::spawn(move || {
            // The request may come in several writes (`write!` sends its
            // pieces one by one): read its whole head before answering, or
            // the client's last pieces meet a closed socket.
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut piece = [0u8; 256];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = stream.read(&mut piece).unwrap();
                assert!(read > 0, "the client closed before its request ended");
                request.extend_from_slice(&piece[..read]);
            }
            assert!(request.starts_with(b"GET /static/4k.bin HTTP/1.1\r\n"));
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                served.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&served).unwrap();
        });
        let mut stream = connect(port).unwrap();
        let mut buffer = vec![0u8; 8192];
        let (status, got) = http_get_into(&mut stream, "/static/4k.bin", &mut buffer).unwrap();
        server.join().unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(got, &body[..]);
    }

    #[test]
    fn ratio_needs_both_figures() {
        assert_eq!(ratio(Some(1.0), Some(2.0)), "0.50×");
        assert_eq!(ratio(Some(1.0), None), "-");
        assert_eq!(ratio(None, Some(1.0)), "-");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "-");
    }
}
