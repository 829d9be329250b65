//! End-to-end test support: runs the real `keystone` binary and talks to it over real TCP.
//!
//! Owns: locating (and building once) the binary, starting a server on a free
//! loopback port with its output captured, and three kinds of client: `curl`,
//! `ureq`, and a raw `TcpStream` that parses responses by hand so tests can
//! pipeline, split writes at odd byte boundaries and watch the server close.
//! TLS (test certificates, a TLS listener, curl/s_client/python clients)
//! is the `tls` module.
//!
//! Every blocking wait here has a bound, so a hung server fails a test instead
//! of hanging CI.
//!
//! Never depends on: any keystone crate. These tests are black-box on purpose:
//! they see only the binary, its flags, its output and its bytes on the wire.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

pub mod tls;
mod tools;
pub mod vectors;

pub use tools::{require_file, require_tool, SKIP_MISSING_TOOLS};

/// How long a server gets to accept its first connection. Debug builds with a
/// LuaJIT state per worker start in well under a second; 15 s covers a loaded CI box.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on any single socket read or write; a correct server answers loopback
/// requests in milliseconds, so hitting this means the server hung.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a one-shot CLI command (`--help`, `check`, a `serve` expected to fail).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// SIGTERM is given this long before SIGKILL when a test drops its server.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// Largest response a raw client accepts; the tests never ask for more, so
/// anything bigger is a framing bug in the server.
pub const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

// ---------------------------------------------------------------------------
// The binary.

/// Path of the `keystone` binary: `KEYSTONE_BIN` if set, else built once per
/// test process with the same profile as this test binary.
pub fn keystone_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("KEYSTONE_BIN") {
            let path = PathBuf::from(path);
            assert!(
                path.exists(),
                "KEYSTONE_BIN={} does not exist",
                path.display()
            );
            return path;
        }
        build_keystone()
    })
}

fn build_keystone() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Same profile as the test binary, so `cargo test --release` tests a release server
    // and the build reuses the artefacts the test build already made.
    let release = !cfg!(debug_assertions);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args(["build", "-p", "keystone-server", "--bin", "keystone"]);
    if release {
        command.arg("--release");
    }
    let output = command
        .output()
        .expect("spawning cargo build for keystone-server");
    assert!(
        output.status.success(),
        "cargo build -p keystone-server failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace.join(dir)
            }
        }
        None => workspace.join("target"),
    };
    let path = target
        .join(if release { "release" } else { "debug" })
        .join("keystone");
    assert!(
        path.exists(),
        "built keystone but {} is missing",
        path.display()
    );
    path
}

/// What a finished `keystone` command left behind.
#[derive(Debug)]
pub struct CommandOutput {
    /// Exit code; `None` when killed by a signal (never expected).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// True when the command outlived `COMMAND_TIMEOUT` and was killed.
    pub timed_out: bool,
}

impl CommandOutput {
    /// Both streams, for assertions that don't care where a message went.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `keystone ARGS` to completion (bounded by `COMMAND_TIMEOUT`).
pub fn run_keystone(args: &[&str]) -> CommandOutput {
    run_keystone_in(args, None)
}

/// Like `run_keystone` but in `dir` (for relative app paths).
pub fn run_keystone_in(args: &[&str], dir: Option<&Path>) -> CommandOutput {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let stdout_path = out_dir.path().join("stdout");
    let stderr_path = out_dir.path().join("stderr");
    let mut command = Command::new(keystone_bin());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(fs::File::create(&stderr_path).expect("stderr file"));
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command.spawn().expect("spawning keystone");
    let status = wait_timeout(&mut child, COMMAND_TIMEOUT);
    let timed_out = status.is_none();
    if timed_out {
        let _ = child.kill();
        let _ = child.wait();
    }
    CommandOutput {
        code: status.and_then(|s| s.code()),
        stdout: fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
        timed_out,
    }
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The server.

/// A running `keystone serve`, killed on drop.
pub struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    app_path: Option<PathBuf>,
}

/// File name every test app is written to; tests assert the log names it.
pub const APP_FILE_NAME: &str = "app.lua";

impl Server {
    /// Starts `keystone serve [APP] --listen 127.0.0.1:PORT --workers 1 EXTRA`
    /// and waits until it accepts TCP. A `--workers` in `extra` replaces the default.
    pub fn start(app_source: Option<&str>, extra_args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let app_path = app_source.map(|source| {
            let path = dir.path().join(APP_FILE_NAME);
            fs::write(&path, source).expect("writing app");
            path
        });
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut args: Vec<String> = vec!["serve".into()];
        if let Some(path) = &app_path {
            args.push(path.display().to_string());
        }
        args.extend(["--listen".into(), addr.to_string()]);
        // clap rejects a repeated option, so the default of one worker steps aside
        // when the test names its own count.
        if !extra_args.iter().any(|a| a.starts_with("--workers")) {
            args.extend(["--workers".into(), "1".into()]);
        }
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let child = spawn_logged(&args, dir.path());
        let mut server = Server {
            child: Some(child),
            addr,
            dir,
            app_path,
        };
        server.wait_ready();
        server
    }

    /// Like [`Server::start`], with the admin listener (`--admin`) on a
    /// free loopback port; returns the server and the admin address.
    pub fn start_with_admin(app_source: Option<&str>, extra_args: &[&str]) -> (Server, SocketAddr) {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin_arg = admin.to_string();
        let mut args = vec!["--admin", admin_arg.as_str()];
        args.extend_from_slice(extra_args);
        (Server::start(app_source, &args), admin)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Path of the app file the server was started with.
    pub fn app_path(&self) -> &Path {
        self.app_path
            .as_deref()
            .expect("server was started without an app")
    }

    /// Captured stderr followed by stdout, as written so far.
    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// Waits (bounded) until `needle` shows up in the log; returns the log either way.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() >= deadline {
                return log;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Opens a raw client to this server.
    pub fn raw(&self) -> RawClient {
        RawClient::connect(self.addr)
    }

    /// Process id of the server (for `keystone reload --pid`).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server already reaped").id()
    }

    /// Sends SIGHUP (the reload signal) without waiting.
    pub fn hangup(&self) {
        let child = self.child.as_ref().expect("server already reaped");
        signal(child, libc::SIGHUP);
    }

    /// Sends SIGTERM (the graceful-shutdown signal) without waiting.
    pub fn terminate(&self) {
        let child = self.child.as_ref().expect("server already reaped");
        signal(child, libc::SIGTERM);
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("server already reaped");
        wait_timeout(child, timeout)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            let child = self.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "keystone exited early with {status} before listening on {}; log:\n{}",
                    self.addr,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "keystone did not accept on {} within {:?}; log:\n{}",
                    self.addr,
                    STARTUP_TIMEOUT,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Who else holds the port matters when a connection was answered by the
        // wrong process, so it is captured before this server goes away.
        let sockets = if thread::panicking() {
            sockets_on_port(self.addr.port())
        } else {
            String::new()
        };
        if child.try_wait().ok().flatten().is_none() {
            signal(&child, libc::SIGTERM);
            if wait_timeout(&mut child, KILL_GRACE).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // A failing test is easier to read with the server's side of the story.
        if thread::panicking() {
            eprintln!("---- keystone log ({}) ----\n{}", self.addr, self.log());
            eprintln!(
                "---- sockets on port {} (keystone pid {}) ----\n{sockets}",
                self.addr.port(),
                child.id()
            );
        }
    }
}

/// `ss` lines for TCP sockets on `port`, with owning processes; empty if `ss` is absent.
fn sockets_on_port(port: u16) -> String {
    let Ok(output) = Command::new("ss").args(["-tanp"]).output() else {
        return String::new();
    };
    let needle = format!(":{port} ");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(&needle))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Spawns `keystone ARGS` with stdout and stderr going to files in `dir`.
pub fn spawn_logged(args: &[String], dir: &Path) -> Child {
    let stdout = fs::File::create(dir.join("stdout.log")).expect("stdout log");
    let stderr = fs::File::create(dir.join("stderr.log")).expect("stderr log");
    Command::new(keystone_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawning keystone serve")
}

/// Captured output of a process started by `spawn_logged` in `dir`.
pub fn read_log(dir: &Path) -> String {
    let stderr = fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    let stdout = fs::read_to_string(dir.join("stdout.log")).unwrap_or_default();
    format!("{stderr}{stdout}")
}

fn signal(child: &Child, signal_number: i32) {
    let pid = i32::try_from(child.id()).expect("pid fits i32");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is our own
    // child, not yet reaped (we hold its `Child`), so it cannot name another process.
    let _ = unsafe { libc::kill(pid, signal_number) };
}

/// Ports [`free_port`] hands out: this many below the kernel's ephemeral
/// range.
const TEST_PORTS: u16 = 8000;

/// A loopback port for a server to bind, free a moment ago. It comes from
/// below the kernel's ephemeral range (`ip_local_port_range`, 32768–60999
/// by default), where the local port of a client socket — thousands of
/// them in the parallel tests — can never take it before the server binds
/// (a port the kernel hands to `bind(:0)` can, and did). A counter keeps
/// this process's tests on distinct ports; each is checked free by binding
/// it.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low < 1024 + TEST_PORTS {
        // No room below the range: take what the kernel gives.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        return listener.local_addr().expect("local_addr").port();
    }
    let first = low - TEST_PORTS;
    let start = std::process::id() % u32::from(TEST_PORTS);
    for _ in 0..TEST_PORTS {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = first + ((start + n) % u32::from(TEST_PORTS)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {first}..{low}");
}

/// Writes `source` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, source: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, source).expect("writing file");
    path
}

// ---------------------------------------------------------------------------
// Responses, as every client here reports them.

/// One HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// "HTTP/1.1" or "HTTP/1.0".
    pub version: String,
    pub status: u16,
    /// Header names as sent (tests compare them case-insensitively via `header`).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many times header `name` appears.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// True when the response asks for the connection to close.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }
}

// ---------------------------------------------------------------------------
// curl.

/// Runs `curl -s -S -i --max-time 10 ARGS` and parses the last response it printed.
pub fn curl(args: &[&str]) -> Response {
    let output = Command::new("curl")
        .args(["-s", "-S", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .expect("spawning curl (Debian package curl; `cargo xtask test` installs it as root)");
    assert!(
        output.status.success(),
        "curl {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    parse_curl_output(&output.stdout).unwrap_or_else(|| {
        panic!(
            "curl {args:?} printed no parsable response:\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Runs `curl -s ARGS` and returns just stdout, exactly as a person would see it.
pub fn curl_body(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("spawning curl (Debian package curl; `cargo xtask test` installs it as root)");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Parses `curl -i` output, skipping interim `1xx` heads.
fn parse_curl_output(mut bytes: &[u8]) -> Option<Response> {
    loop {
        let head_end = find(bytes, b"\r\n\r\n")?;
        let mut response = parse_head(&bytes[..head_end])?;
        let rest = &bytes[head_end + 4..];
        if (100..200).contains(&response.status) {
            bytes = rest;
            continue;
        }
        response.body = rest.to_vec();
        return Some(response);
    }
}

// ---------------------------------------------------------------------------
// ureq.

/// A ureq agent that reports 4xx/5xx as responses, not errors, and never waits
/// longer than `IO_TIMEOUT`.
pub fn ureq_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(IO_TIMEOUT))
        .build()
        .into()
}

/// Converts a ureq response into ours (version is always reported as HTTP/1.1).
pub fn from_ureq(mut response: ureq::http::Response<ureq::Body>) -> Response {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .body_mut()
        .read_to_vec()
        .expect("reading ureq body");
    Response {
        version: "HTTP/1.1".into(),
        status,
        headers,
        body,
    }
}

// ---------------------------------------------------------------------------
// Raw TCP.

/// A plain TCP client that parses HTTP/1.x responses itself.
pub struct RawClient {
    stream: TcpStream,
    /// Bytes read but not yet consumed by a parsed response (pipelining).
    pending: Vec<u8>,
    /// The start of the last write, so a failed read can say what it answered.
    last_sent: String,
}

/// Bound on back-to-back EINTR retries of one read; a storm of signals this long is a bug.
const INTERRUPTED_RETRIES_MAX: u32 = 1000;
/// How much of the last write a failure message quotes.
const LAST_SENT_QUOTED_BYTES: usize = 120;

/// How the connection ended when a client read until EOF.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The server closed (FIN or RST) after sending these bytes.
    Closed(Vec<u8>),
    /// Still open after `IO_TIMEOUT`, having sent these bytes.
    StillOpen(Vec<u8>),
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connecting to keystone");
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawClient {
            stream,
            pending: Vec::new(),
            last_sent: String::new(),
        }
    }

    /// One `read`, retried when a signal interrupts it: a socket with a receive
    /// timeout returns EINTR even for SA_RESTART handlers (signal(7)), and a
    /// signal meant for someone else must not fail the test.
    fn read_retrying(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        for _ in 0..INTERRUPTED_RETRIES_MAX {
            match self.stream.read(buffer) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
        panic!("read interrupted {INTERRUPTED_RETRIES_MAX} times in a row");
    }

    /// A second handle on the same socket, for a thread that writes while this
    /// client reads (a trickling slowloris). It shares the timeouts set here.
    pub fn clone_stream(&self) -> TcpStream {
        self.stream.try_clone().expect("cloning the client socket")
    }

    /// Local address of this connection (to tell connections apart in logs).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local_addr")
    }

    /// Writes all of `bytes` in one `write` call sequence (one segment on loopback
    /// in practice, since nodelay is set and the sizes here are small).
    pub fn send(&mut self, bytes: &[u8]) {
        self.remember(bytes);
        self.stream.write_all(bytes).expect("writing request");
    }

    fn remember(&mut self, bytes: &[u8]) {
        let quoted = &bytes[..bytes.len().min(LAST_SENT_QUOTED_BYTES)];
        self.last_sent = String::from_utf8_lossy(quoted).into_owned();
    }

    /// Writes `bytes`, returning false if the server has already closed or reset
    /// the connection (for tests that race a shutdown on purpose).
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.remember(bytes);
        match self.stream.write_all(bytes) {
            Ok(()) => true,
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                false
            }
            Err(e) => panic!("writing request: {e}"),
        }
    }

    /// Reads one response, or `None` if the server closed cleanly before sending
    /// any byte of one. A response cut short or a timeout still fails the test.
    pub fn read_response_or_close(&mut self, method: &str) -> Option<Response> {
        if self.pending.is_empty() {
            match self.fill_once() {
                Ok(0) => return None,
                Ok(_) => {}
                Err(error) => panic!(
                    "reading the response (last write began {:?}): {error}",
                    self.last_sent
                ),
            }
        }
        Some(self.read_response_to(method))
    }

    /// Writes `bytes` in pieces split at `cuts` (byte offsets), pausing between
    /// pieces so the server sees separate reads.
    pub fn send_split(&mut self, bytes: &[u8], cuts: &[usize]) {
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            assert!(cut >= start, "cuts must be ascending");
            assert!(cut <= bytes.len(), "cut past the end");
            self.send(&bytes[start..cut]);
            self.stream.flush().expect("flush");
            thread::sleep(Duration::from_millis(30));
            start = cut;
        }
    }

    /// Half-closes the write side, as a client that is done sending.
    pub fn shutdown_write(&self) {
        self.stream
            .shutdown(Shutdown::Write)
            .expect("shutdown write");
    }

    /// Reads one complete response to a request that is not HEAD.
    pub fn read_response(&mut self) -> Response {
        self.read_response_to("GET")
    }

    /// Reads one complete response to a request with `method` (HEAD responses have no body).
    pub fn read_response_to(&mut self, method: &str) -> Response {
        self.try_read_response_to(method).unwrap_or_else(|error| {
            panic!(
                "reading the response (last write began {:?}): {error}",
                self.last_sent
            )
        })
    }

    /// Like `read_response_to`, but reports a missing or broken response as an error.
    pub fn try_read_response_to(&mut self, method: &str) -> Result<Response, String> {
        let head_end = loop {
            if let Some(end) = find(&self.pending, b"\r\n\r\n") {
                break end;
            }
            self.fill("response head")?;
        };
        let mut response = parse_head(&self.pending[..head_end]).ok_or_else(|| {
            format!(
                "unparsable head: {:?}",
                String::from_utf8_lossy(&self.pending[..head_end])
            )
        })?;
        self.pending.drain(..head_end + 4);
        let status = response.status;
        let bodyless =
            method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304;
        if bodyless {
            return Ok(response);
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked {
            response.body = self.read_chunked()?;
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length
                .trim()
                .parse()
                .map_err(|_| format!("bad Content-Length {length:?}"))?;
            if length > RESPONSE_BYTES_MAX {
                return Err(format!("Content-Length {length} over the test limit"));
            }
            while self.pending.len() < length {
                self.fill("response body")?;
            }
            response.body = self.pending.drain(..length).collect();
        } else {
            // No framing: the body runs to EOF (legal for a closing response).
            loop {
                match self.fill_once()? {
                    0 => break,
                    _ => continue,
                }
            }
            response.body = std::mem::take(&mut self.pending);
        }
        Ok(response)
    }

    /// Reads until the server closes or `IO_TIMEOUT` passes; a reset counts as closed.
    pub fn read_to_end(&mut self) -> Ending {
        let mut bytes = std::mem::take(&mut self.pending);
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.read_retrying(&mut chunk) {
                Ok(0) => return Ending::Closed(bytes),
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ending::Closed(bytes),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ending::StillOpen(bytes)
                }
                Err(e) => panic!("reading until EOF: {e}"),
            }
            assert!(
                bytes.len() <= RESPONSE_BYTES_MAX,
                "server sent more than the test limit"
            );
        }
    }

    /// Asserts the server closes this connection (after any bytes already queued),
    /// and returns what it sent before closing.
    pub fn expect_closed(&mut self, why: &str) -> Vec<u8> {
        match self.read_to_end() {
            Ending::Closed(bytes) => bytes,
            Ending::StillOpen(bytes) => panic!(
                "{why}: server left the connection open for {IO_TIMEOUT:?}; sent {:?}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }

    /// Asserts the connection is still usable: nothing unexpected arrives within
    /// `quiet` and the server has not closed.
    pub fn expect_open(&mut self, quiet: Duration, why: &str) {
        assert!(
            self.pending.is_empty(),
            "{why}: unexpected extra bytes {:?}",
            String::from_utf8_lossy(&self.pending)
        );
        self.stream
            .set_read_timeout(Some(quiet))
            .expect("read timeout");
        let mut byte = [0u8; 1];
        let result = self.read_retrying(&mut byte);
        self.stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("read timeout");
        match result {
            Ok(0) => panic!("{why}: server closed the connection"),
            Ok(_) => panic!("{why}: server sent unexpected bytes"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("{why}: connection failed: {e}"),
        }
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(end) = find(&self.pending, b"\r\n") {
                    break end;
                }
                self.fill("chunk size")?;
            };
            let line = String::from_utf8_lossy(&self.pending[..line_end]).into_owned();
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            self.pending.drain(..line_end + 2);
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                loop {
                    let end = loop {
                        if let Some(end) = find(&self.pending, b"\r\n") {
                            break end;
                        }
                        self.fill("chunked trailer")?;
                    };
                    self.pending.drain(..end + 2);
                    if end == 0 {
                        return Ok(body);
                    }
                }
            }
            if body.len() + size > RESPONSE_BYTES_MAX {
                return Err("chunked body over the test limit".into());
            }
            while self.pending.len() < size + 2 {
                self.fill("chunk data")?;
            }
            body.extend(self.pending.drain(..size));
            self.pending.drain(..2);
        }
    }

    /// Reads at least one more byte into `pending`; EOF or timeout is an error naming `what`.
    fn fill(&mut self, what: &str) -> Result<(), String> {
        match self.fill_once()? {
            0 => Err(format!(
                "connection closed while reading {what}; had {:?}",
                String::from_utf8_lossy(&self.pending)
            )),
            _ => Ok(()),
        }
    }

    fn fill_once(&mut self) -> Result<usize, String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.read_retrying(&mut chunk) {
            Ok(n) => {
                self.pending.extend_from_slice(&chunk[..n]);
                if self.pending.len() > RESPONSE_BYTES_MAX {
                    return Err("response over the test limit".into());
                }
                Ok(n)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(format!(
                    "no response within {IO_TIMEOUT:?}; had {:?}",
                    String::from_utf8_lossy(&self.pending)
                ))
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(0),
            Err(e) => Err(format!("read failed: {e}")),
        }
    }
}

/// Sends one request on a fresh connection and reads one response.
pub fn request(addr: SocketAddr, raw_request: &str) -> Response {
    let method = raw_request.split(' ').next().unwrap_or("GET").to_string();
    let mut client = RawClient::connect(addr);
    client.send(raw_request.as_bytes());
    client.read_response_to(&method)
}

/// One value from the admin listener's `/metrics` (`name` without labels).
pub fn metric(admin: SocketAddr, name: &str) -> u64 {
    let mut stream = TcpStream::connect(admin).expect("admin listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("metrics request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("metrics response");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .expect("a number")
}

/// `GET path` with `Host` and `Connection: close`, as raw bytes.
/// A backend for proxy tests: a loopback listener whose every accepted
/// connection is served by `serve` on a thread of its own.
pub fn spawn_backend(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a backend");
    let addr = listener.local_addr().expect("the backend's address");
    let serve = std::sync::Arc::new(serve);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let serve = std::sync::Arc::clone(&serve);
            thread::spawn(move || serve(stream));
        }
    });
    addr
}

/// Reads one HTTP head (request or response) line by line, through its
/// final empty line; `None` when the stream ends or fails first. The bytes
/// after it stay in `reader` (a body, the next head).
pub fn read_head(reader: &mut impl std::io::BufRead) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        head.push_str(&line);
        if line == "\r\n" {
            return Some(head);
        }
    }
}

pub fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
}

/// Parses a status line and headers into a `Response` with an empty body.
fn parse_head(head: &[u8]) -> Option<Response> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next()?.to_string();
    if !version.starts_with("HTTP/") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Some(Response {
        version,
        status,
        headers,
        body: Vec::new(),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Asserts that no output of keystone ever reports a Rust panic.
pub fn assert_no_panic(output: &str, context: &str) {
    assert!(
        !output.contains("panicked"),
        "{context}: keystone panicked:\n{output}"
    );
}

/// 1-based line number of the first line of `source` containing `needle`, so
/// tests that expect `app.lua:LINE` in a message stay right when the app is edited.
pub fn line_of(source: &str, needle: &str) -> usize {
    let index = source.lines().position(|line| line.contains(needle));
    index.unwrap_or_else(|| panic!("{needle:?} is not in the app source")) + 1
}
