//! `keystone serve`: bind one SO_REUSEPORT listener per worker, attach the
//! eBPF steering program, start the workers, then wait for signals and
//! drain.
//!
//! Shared between threads, and why it is safe: the app source (an immutable
//! `Arc<str>` each worker compiles into its own Lua state), each worker's
//! wake eventfd (the main thread writes to it to start a drain or a reload), and
//! the exit channel (a message when a worker stops). Nothing on the request
//! path is shared.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keystone_ebpf::{EbpfMode, Observer, ReuseportSteering};
use keystone_lua::{AppSource, LuaConfig};
use keystone_reactor::BatchWriter;

use keystone_ops::admin;
use keystone_ops::observe::Observed;
use keystone_ops::stats::{Shared, WorkerStats};
use keystone_ops::thread_log;

use crate::cli::ServeArgs;
use crate::log::Level;
use crate::sys;
use crate::watchdog::{self, Pulse, Watchdog};
use crate::worker::{self, WorkerConfig};
use crate::{EXAMPLE_APP, EXAMPLE_APP_NAME, EXIT_USAGE};
use keystone_conn::Timeouts;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Pending connections the kernel queues per listener while workers are
/// busy or at `--max-connections` (nginx uses 511; the kernel caps it at
/// `net.core.somaxconn`, 4096 on current kernels).
const LISTEN_BACKLOG: i32 = 4096;
/// How often the main thread samples worker pulses (and so the grain of the
/// handler budget).
const WATCHDOG_PERIOD: Duration = Duration::from_millis(50);

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("keystone: {message}");
    ExitCode::from(EXIT_USAGE)
}

/// Runs the server until SIGTERM/SIGINT and the drain that follows.
pub fn serve(args: ServeArgs) -> ExitCode {
    // Before any socket exists: once the port accepts connections, SIGTERM
    // must mean "drain", never the default kill.
    sys::block_signals();
    crate::log::configure(args.log_format, args.log_level);
    let log_fd = match thread_log::open_log(args.log.as_deref())
        .and_then(|fd| sys::append_if_file(&fd).map(|()| fd))
    {
        Ok(fd) => fd,
        Err(err) => {
            return fail(format_args!(
                "cannot open --log {}: {err}",
                args.log
                    .as_deref()
                    .map_or("-".into(), |p| p.display().to_string())
            ))
        }
    };
    let log_dup = |what: &str| {
        log_fd
            .try_clone()
            .map_err(|err| format!("{what}: cannot duplicate the log descriptor: {err}"))
    };
    let main_log = match log_dup("main thread") {
        Ok(fd) => fd,
        Err(message) => return fail(message),
    };
    crate::log::install(main_log);
    let mut main_writer = match BatchWriter::new() {
        Ok(writer) => MainLog(writer),
        Err(err) => {
            return fail(format_args!(
                "io_uring setup failed for the main thread's log: {err}{}",
                crate::worker::memlock_hint(&err)
            ))
        }
    };
    let app = match &args.app {
        Some(path) => match AppSource::read(path) {
            Ok(app) => app,
            Err(err) => return fail(err),
        },
        None => AppSource::bundled(EXAMPLE_APP_NAME, EXAMPLE_APP),
    };
    // Compile once here so a broken app fails before any socket is bound.
    let lua = args.lua.config();
    if let Err(err) = lua.check_trees() {
        return fail(err);
    }
    if let Err(err) = watchdog::load_checked(
        &app,
        &lua,
        Duration::from_millis(args.lua_budget_ms),
        |_| {},
    ) {
        return fail(err);
    }
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let limits = args.limits.limits();
    // Everything the configuration names is opened or checked before the
    // first socket is bound: a bad flag exits 2 and no connection is ever
    // accepted first (the kernel completes handshakes once a socket
    // listens, before any worker accepts).
    let access_log = match &args.access_log {
        Some(path) => match thread_log::open_access_log(path)
            .and_then(|fd| sys::append_if_file(&fd).map(|()| fd))
        {
            Ok(fd) => Some(fd),
            Err(err) => {
                return fail(format_args!(
                    "cannot open --access-log {}: {err}",
                    path.display()
                ))
            }
        },
        None => None,
    };
    // Cleartext listeners, then TLS ones; the default only when neither
    // kind is named.
    let mut addrs: Vec<(SocketAddr, bool)> = args.listen.iter().map(|a| (*a, false)).collect();
    addrs.extend(args.tls_listen.iter().map(|a| (*a, true)));
    if addrs.is_empty() {
        addrs.push((
            crate::cli::defaults::LISTEN
                .parse()
                .expect("the default parses"),
            false,
        ));
    }
    if let Err(message) = distinct(&addrs) {
        return fail(message);
    }
    let tls_pairs = match tls_pairs(&args) {
        Ok(pairs) => pairs,
        Err(message) => return fail(message),
    };
    let tls = if tls_pairs.is_empty() {
        None
    } else {
        match keystone_tls::load(&tls_pairs) {
            Ok(config) => Some(config),
            Err(err) => return fail(err),
        }
    };
    for (addr, _) in &addrs {
        if let Err(err) = probe_free(*addr) {
            return fail(format_args!("cannot listen on {addr}: {err}"));
        }
    }
    // Bound before the server's port, so a connection to the admin port
    // never fails once the server's port accepts (it waits in the backlog
    // until the admin thread starts, below).
    let admin_listener = match args.admin.map(std::net::TcpListener::bind).transpose() {
        Ok(listener) => listener,
        Err(err) => {
            return fail(format_args!(
                "cannot listen on --admin {}: {err}",
                args.admin.expect("set")
            ))
        }
    };
    // One SO_REUSEPORT group per address, one socket of it per worker.
    let mut groups: Vec<(SocketAddr, bool, Vec<OwnedFd>)> = Vec::with_capacity(addrs.len());
    for (asked, tls) in &addrs {
        let mut fds = Vec::with_capacity(workers as usize);
        let mut addr = *asked;
        for _ in 0..workers {
            match listen(addr) {
                Ok((fd, bound)) => {
                    addr = bound; // port 0: every worker joins the first one's port
                    fds.push(fd);
                }
                Err(err) => return fail(format_args!("cannot listen on {asked}: {err}")),
            }
        }
        groups.push((addr, *tls, fds));
    }
    // Each group is steered on its own (a connection's group is its port).
    let mut steerings = Vec::with_capacity(groups.len());
    for (_, _, fds) in &groups {
        match steer(args.ebpf, fds) {
            Ok(steering) => steerings.push(steering),
            Err(code) => return code,
        }
    }
    let mut steering = steerings.remove(0);
    let addr = groups[0].0;
    let urls = groups
        .iter()
        .map(|(addr, tls, _)| format!("{}://{addr}", if *tls { "https" } else { "http" }))
        .collect::<Vec<_>>()
        .join(", ");
    let mut per_worker: Vec<Vec<worker::Listener>> = (0..workers).map(|_| Vec::new()).collect();
    for (_, tls, fds) in groups {
        for (index, fd) in fds.into_iter().enumerate() {
            per_worker[index].push(worker::Listener { fd, tls });
        }
    }
    // Kernel TLS, decided once here and logged once.
    let kernel_tls = tls.is_some()
        && match sys::kernel_tls_probe() {
            Ok(()) => {
                crate::log!(
                    Level::Info,
                    None,
                    "kernel TLS offered: after each handshake the session's records go to the kernel (TCP_ULP tls), files splice through it"
                );
                true
            }
            Err(err) => {
                crate::log!(
                    Level::Info,
                    None,
                    "kernel TLS absent (TCP_ULP tls: {err}; a kernel without CONFIG_TLS); TLS records are encrypted in user space"
                );
                false
            }
        };
    sys::release_freed_heap();
    let (exit_tx, exit_rx) = mpsc::channel();
    let mut wakes = Vec::with_capacity(workers as usize);
    let mut pulses = Vec::with_capacity(workers as usize);
    let mut reloads = Vec::with_capacity(workers as usize);
    let mut stats = Vec::with_capacity(workers as usize);
    watchdog::install_signal_handler();
    for (index, listeners) in per_worker.into_iter().enumerate() {
        let pulse = Arc::new(Pulse::default());
        let worker_stats = Arc::new(WorkerStats::default());
        stats.push(Arc::clone(&worker_stats));
        let (reload_tx, reload_rx) = mpsc::channel();
        let wake = match sys::eventfd() {
            Ok(fd) => fd,
            Err(err) => return fail(format_args!("eventfd: {err}")),
        };
        let config = WorkerConfig {
            index: index as u32,
            listeners,
            tls: tls.clone(),
            kernel_tls,
            wake: wake.try_clone().expect("dup eventfd"),
            app: app.clone(),
            lua: lua.clone(),
            limits,
            max_connections: args.max_connections,
            timeouts: Timeouts {
                header: Duration::from_secs(args.header_timeout),
                body: Duration::from_secs(args.body_timeout),
                idle: Duration::from_secs(args.keepalive_timeout),
                send: Duration::from_secs(args.send_timeout),
            },
            max_pipeline: args.max_pipeline,
            max_proxy_body_bytes: args.max_proxy_body_bytes,
            pulse: Arc::clone(&pulse),
            reloads: reload_rx,
            log: match log_dup("worker") {
                Ok(fd) => Some(fd),
                Err(message) => return fail(message),
            },
            stats: worker_stats,
            access_log: match &access_log {
                Some(fd) => match fd.try_clone() {
                    Ok(fd) => Some(fd),
                    Err(err) => return fail(format_args!("access log: {err}")),
                },
                None => None,
            },
            sqpoll: args.sqpoll,
            recv_registered: args.recv_registered,
        };
        reloads.push(reload_tx);
        wakes.push(wake);
        pulses.push(pulse);
        if let Err(message) = spawn(config, workers, exit_tx.clone()) {
            return fail(message);
        }
    }
    let watchdog = Watchdog::new(Duration::from_millis(args.lua_budget_ms), workers as usize);
    let shared = Arc::new(Shared {
        workers: stats,
        draining: AtomicBool::new(false),
        main_log_dropped: Default::default(),
    });
    let observer = if args.observe {
        observe_self(addr.port())
    } else {
        None
    };
    sys::release_freed_heap();
    let steering_kind = if steering.is_some() {
        "ebpf"
    } else {
        "kernel reuseport hash"
    };
    if let Some(listener) = admin_listener {
        let observed = Observed {
            observer,
            steering: steering.take(),
        };
        let warn = |message: std::fmt::Arguments<'_>| crate::log::line(Level::Warn, None, message);
        match admin::start(listener, Arc::clone(&shared), observed, warn) {
            Ok(bound) => crate::log!(
                Level::Info,
                None,
                "admin listener on http://{bound} (/metrics, /health, /stats.json)"
            ),
            Err(err) => return fail(format_args!("admin listener: {err}")),
        }
    } else if observer.is_some() {
        crate::log!(
            Level::Warn,
            None,
            "--observe without --admin: the figures can only be read through the admin listener"
        );
    }
    crate::log!(
        Level::Info,
        None,
        "listening on {urls} (pid {}, {workers} workers, app {}, steering: {steering_kind})",
        std::process::id(),
        app.path.display()
    );

    let fleet = Fleet {
        shared,
        wakes,
        pulses,
        reloads,
        app,
        lua,
        lua_budget: Duration::from_millis(args.lua_budget_ms),
        tls_pairs,
        log_path: thread_log::reopenable(args.log.as_deref()),
        access_log_path: thread_log::reopenable(args.access_log.as_deref()),
    };
    let code = supervise(
        &fleet,
        &mut main_writer,
        watchdog,
        exit_rx,
        Duration::from_secs(args.drain_timeout),
    );
    main_writer.finish(&fleet.shared);
    drop(steering);
    drop(steerings);
    code
}

/// Starts worker `config.index` pinned to a core and waits until it has
/// loaded the app (or failed to).
fn spawn(
    config: WorkerConfig,
    workers: u32,
    exits: mpsc::Sender<(u32, bool)>,
) -> Result<(), String> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let index = config.index;
    // The worker runs user Lua: its C stack is the one C functions that
    // call back into Lua nest on (keystone_lua::LUA_THREAD_STACK_BYTES).
    let builder = std::thread::Builder::new()
        .name(format!("keystone-w{index}"))
        .stack_size(keystone_lua::LUA_THREAD_STACK_BYTES);
    builder
        .spawn(move || {
            sys::pin_to_core(index, workers);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                worker::run(config, |ready| {
                    let _ = ready_tx.send(ready);
                })
            }));
            let _ = exits.send((index, outcome.is_ok()));
        })
        .map_err(|err| format!("cannot start worker {index}: {err}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(format!("worker {index} failed to start: {message}")),
        Err(_) => Err(format!("worker {index} died while starting")),
    }
}

fn steer(mode: EbpfMode, listeners: &[OwnedFd]) -> Result<Option<ReuseportSteering>, ExitCode> {
    if mode == EbpfMode::Off {
        return Ok(None);
    }
    let fds: Vec<_> = listeners.iter().map(|fd| fd.as_fd()).collect();
    match ReuseportSteering::attach(&fds) {
        Ok(steering) => Ok(Some(steering)),
        Err(err) if mode == EbpfMode::Require => Err(fail(format_args!(
            "--ebpf require: eBPF steering unavailable: {err}"
        ))),
        Err(err) => {
            crate::log!(
                Level::Warn,
                None,
                "eBPF steering unavailable, falling back to the kernel's reuseport hashing: {err}"
            );
            Ok(None)
        }
    }
}

/// What the main thread keeps of its workers.
struct Fleet {
    shared: Arc<Shared>,
    wakes: Vec<OwnedFd>,
    pulses: Vec<Arc<Pulse>>,
    reloads: Vec<mpsc::Sender<worker::Reload>>,
    app: AppSource,
    lua: LuaConfig,
    /// `--lua-budget-ms`: also bounds the check of an app at SIGHUP.
    lua_budget: Duration,
    /// The TLS listeners' certificate/key pairs, read again on SIGHUP.
    tls_pairs: Vec<keystone_tls::CertPair>,
    /// `--log` and `--access-log` when they are files (reopened on SIGHUP).
    log_path: Option<PathBuf>,
    access_log_path: Option<PathBuf>,
}

impl Fleet {
    fn wake(&self, value: u64) {
        for wake in &self.wakes {
            sys::wake(wake, value);
        }
    }

    /// SIGHUP: reopen the log files (logrotate's convention, whatever
    /// becomes of the app), then re-read and compile the app here first, so
    /// a broken file is reported once (with file:line) and the workers keep
    /// the old code.
    fn reload(&self) {
        let log = self.reopen(self.log_path.as_deref(), "--log");
        if let Some(fd) = log.as_ref().and_then(|fd| fd.try_clone().ok()) {
            crate::log::reopen(fd);
        }
        let access_log = self.reopen(self.access_log_path.as_deref(), "--access-log");
        let app = self.checked_app();
        let tls = self.reread_certificates();
        for reload in &self.reloads {
            let _ = reload.send(worker::Reload {
                app: app.clone(),
                tls: tls.clone(),
                log: log.as_ref().and_then(|fd| fd.try_clone().ok()),
                access_log: access_log.as_ref().and_then(|fd| fd.try_clone().ok()),
            });
        }
        self.wake(worker::RELOAD_WAKE);
    }

    /// The certificate/key pairs read again (new handshakes use them; open
    /// connections keep theirs); `None` (logged) when there are none or a
    /// pair fails: the old ones stay.
    fn reread_certificates(&self) -> Option<Arc<keystone_tls::ServerConfig>> {
        if self.tls_pairs.is_empty() {
            return None;
        }
        match keystone_tls::load(&self.tls_pairs) {
            Ok(config) => {
                crate::log!(
                    Level::Info,
                    None,
                    "SIGHUP: {} TLS certificate(s) reloaded, ticket keys rotated",
                    self.tls_pairs.len()
                );
                Some(config)
            }
            Err(err) => {
                crate::log!(
                    Level::Error,
                    None,
                    "SIGHUP: keeping the old TLS certificates: {err}"
                );
                None
            }
        }
    }

    /// Opens a log file again (after logrotate renamed it); `None` for none
    /// or standard streams, or when it cannot be opened (logged: the old
    /// descriptor stays).
    fn reopen(&self, path: Option<&std::path::Path>, flag: &str) -> Option<OwnedFd> {
        let path = path?;
        match thread_log::open_append(path) {
            Ok(fd) => Some(fd),
            Err(err) => {
                crate::log!(
                    Level::Error,
                    None,
                    "SIGHUP: cannot reopen {flag} {}: {err}; writing to the old file",
                    path.display()
                );
                None
            }
        }
    }

    /// The app, read and compiled again; `None` (logged) when it fails.
    fn checked_app(&self) -> Option<AppSource> {
        let source = match &self.app.dir {
            Some(_) => AppSource::read(&self.app.path),
            None => Ok(self.app.clone()), // bundled: nothing to re-read
        };
        let checked = source.and_then(|s| {
            watchdog::load_checked(&s, &self.lua, self.lua_budget, |_| {}).map(|_| s)
        });
        match checked {
            Ok(source) => {
                crate::log!(
                    Level::Info,
                    None,
                    "SIGHUP: reloading {}",
                    source.path.display()
                );
                Some(source)
            }
            Err(err) => {
                crate::log!(
                    Level::Error,
                    None,
                    "SIGHUP: reload failed, keeping the running app: {err}"
                );
                None
            }
        }
    }
}

/// Waits for SIGTERM/SIGINT, then drains; exits early with status 1 if a
/// worker stops on its own (a bug: the process must not limp on).
fn supervise(
    fleet: &Fleet,
    log: &mut MainLog,
    mut watchdog: Watchdog,
    exits: mpsc::Receiver<(u32, bool)>,
    drain: Duration,
) -> ExitCode {
    let workers = fleet.wakes.len() as u32;
    let mut deadline: Option<Instant> = None;
    let mut stopped = 0;
    loop {
        watchdog::check(&mut watchdog, &fleet.pulses);
        log.pump(&fleet.shared);
        if let Some(signal) = sys::wait_signal(WATCHDOG_PERIOD) {
            match signal {
                libc::SIGTERM | libc::SIGINT if deadline.is_none() => {
                    crate::log!(
                        Level::Info,
                        None,
                        "signal {signal}: draining (deadline {}s)",
                        drain.as_secs()
                    );
                    deadline = Some(Instant::now() + drain);
                    fleet.shared.draining.store(true, Ordering::Relaxed);
                    fleet.wake(worker::DRAIN_WAKE);
                }
                libc::SIGHUP if deadline.is_none() => fleet.reload(),
                _ => {}
            }
        }
        while let Ok((index, clean)) = exits.try_recv() {
            stopped += 1;
            if deadline.is_none() || !clean {
                crate::log!(
                    Level::Error,
                    Some(index),
                    "worker stopped unexpectedly; exiting"
                );
                return ExitCode::from(1);
            }
        }
        if stopped == workers {
            crate::log!(Level::Info, None, "drained; exiting");
            return ExitCode::SUCCESS;
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            crate::log!(
                Level::Warn,
                None,
                "drain deadline passed with {} workers still busy; exiting",
                workers - stopped
            );
            return ExitCode::SUCCESS;
        }
    }
}

/// Attaches the eBPF observers to this process; the kernel refusing is one
/// warning, never fatal.
fn observe_self(port: u16) -> Option<Observer> {
    match Observer::attach_for_port(std::process::id(), port) {
        Ok(observer) => {
            crate::log!(
                Level::Info,
                None,
                "--observe: eBPF observers attached (syscalls, kernel-seen latency)"
            );
            Some(observer)
        }
        Err(err) => {
            crate::log!(
                Level::Warn,
                None,
                "--observe: eBPF observers unavailable, serving without them: {err}"
            );
            None
        }
    }
}

/// The main thread's log writer: a ring of its own, pumped without
/// waiting from the signal loop, so a log that does not drain never blocks
/// the main thread (or its watchdog) either.
struct MainLog(BatchWriter);

impl MainLog {
    /// Hands the next batch to the ring and takes back a written one.
    fn pump(&mut self, shared: &Shared) {
        let _ = self.0.pump(crate::log::take_batch, crate::log::written);
        shared.main_log_dropped.set(crate::log::dropped());
    }

    /// At exit: lets the batch in flight land (briefly), then writes what
    /// is left directly.
    fn finish(&mut self, shared: &Shared) {
        for _ in 0..20 {
            self.pump(shared);
            if !self.0.writing() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        crate::log::flush_blocking();
    }
}

/// `--tls-cert`/`--tls-key` as pairs, checked against `--tls-listen`.
fn tls_pairs(args: &ServeArgs) -> Result<Vec<keystone_tls::CertPair>, String> {
    if args.tls_cert.len() != args.tls_key.len() {
        return Err(format!(
            "--tls-cert and --tls-key come in pairs: {} certificate(s), {} key(s)",
            args.tls_cert.len(),
            args.tls_key.len()
        ));
    }
    if args.tls_listen.is_empty() && !args.tls_cert.is_empty() {
        return Err("--tls-cert/--tls-key given without --tls-listen".into());
    }
    if !args.tls_listen.is_empty() && args.tls_cert.is_empty() {
        return Err("--tls-listen needs at least one --tls-cert/--tls-key pair".into());
    }
    Ok(args
        .tls_cert
        .iter()
        .zip(&args.tls_key)
        .map(|(cert, key)| keystone_tls::CertPair {
            cert: cert.clone(),
            key: key.clone(),
        })
        .collect())
}

/// Fails when one address is named twice (`--listen`, `--tls-listen`,
/// both): our own listeners' SO_REUSEPORT would let both bind, and the
/// kernel would then split that address's connections between them at
/// random (half the HTTPS clients handed to the cleartext listener). nginx
/// refuses it too ("duplicate listen"). Port 0 is a fresh port each time.
fn distinct(addrs: &[(SocketAddr, bool)]) -> Result<(), String> {
    let flag = |tls: bool| if tls { "--tls-listen" } else { "--listen" };
    for (at, (addr, tls)) in addrs.iter().enumerate() {
        let earlier = addrs[..at].iter().find(|(seen, _)| seen == addr);
        if let (Some((_, first)), true) = (earlier, addr.port() != 0) {
            return Err(if first == tls {
                format!("{} {addr} is given twice", flag(*tls))
            } else {
                format!("{addr} is given to both --listen and --tls-listen: one port speaks one protocol")
            });
        }
    }
    Ok(())
}

/// Fails when something already listens on `addr`. Our listeners use
/// SO_REUSEPORT, which would silently join another process's group (another
/// keystone, say) and split its traffic; a probe bound without it gets
/// `EADDRINUSE` instead.
fn probe_free(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    // TIME_WAIT leftovers of an earlier run must not count as "in use".
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into())
}

/// Binds a SO_REUSEPORT listener on `addr`; returns it and the bound
/// address (which has the real port when `addr`'s port was 0).
fn listen(addr: SocketAddr) -> std::io::Result<(OwnedFd, SocketAddr)> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("listener has no IP address"))?;
    Ok((socket.into(), bound))
}
