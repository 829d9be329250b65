//! keystone-app — the app as keystone-conn's [`Policy`]: routes (matchit,
//! through keystone-router) assign meaning, Lua handlers (keystone-lua)
//! express policy, static directories answer as router entries; and what a
//! worker counts and logs for each answered request (keystone-ops).
//!
//! Owns: one worker's router, its Lua state(s), the directories files are
//! opened beneath (opened at load and reload, never on the request path),
//! the per-worker counters' writes and the access-log lines.
//!
//! The connection layer decides how an answer goes on the wire; this
//! decides what the answer is. Lua states replaced by a reload live on here
//! while a response still pulls from (or sends out of) them: every pin is
//! counted per state, and a retired state goes when its count is 0.
//!
//! Never depends on: keystone-files, keystone-reactor,
//! keystone-ebpf, keystone-spec, keystone-server. It performs no I/O on the request path:
//! log lines go to the function the worker gives it.

mod proxy;

pub use proxy::{Progress, UpstreamDone, UpstreamOp, Upstreams, UPSTREAM_CONNECTIONS_MAX};

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use keystone_conn::{
    Answer, Level, PinOwner, Pinned, Policy, ProxyBody, ProxyHead, Pulled, Request, Root,
};
use keystone_exchange::HttpExchange;
use keystone_lua::{
    AppSource, LoadedApp, LuaConfig, LuaWorker, Outcome, Pull, Pulse, STATIC_HANDLER_BASE,
};
use keystone_ops::access_log::{self, AccessLog};
use keystone_ops::error_log::LogLevel;
use keystone_ops::stats::WorkerStats;
use keystone_parser::BodyFraming;
use keystone_response::Committed;
use keystone_ringbuf::Span;
use keystone_router::{RouteMatch, RouteMiss, Router};
use keystone_upstream::{write_forward_head, ForwardFraming, ForwardRequest, Scheme};

/// One line for the worker's log.
#[derive(Clone, Copy, Debug)]
pub struct LogLine<'a> {
    /// Severity.
    pub level: LogLevel,
    /// The worker.
    pub worker: u32,
    /// The request it is about (`METHOD /path`), when there is one.
    pub route: Option<&'a str>,
    /// Occurrences it stands for (a summary of repeated failures).
    pub count: u64,
    /// The message.
    pub message: std::fmt::Arguments<'a>,
}

/// Where the app's log lines go: the worker's log.
pub type Log = fn(&LogLine<'_>);

/// A directory opened at load (`O_PATH | O_DIRECTORY`), files are opened
/// beneath it with `openat2`.
struct Directory {
    fd: OwnedFd,
    /// The open-file cache's id for this opening.
    id: u32,
}

/// A Lua state and the pins that keep it (a retired state lives until 0).
struct State {
    lua: LuaWorker,
    pins: u32,
}

/// One worker's app: router, Lua state(s), directories, counters, log.
pub struct AppPolicy {
    worker: u32,
    router: Router,
    /// The current state first; states retired by a reload follow while
    /// something of theirs is pinned.
    states: Vec<State>,
    statics: Vec<Directory>,
    files: Directory,
    /// The previous app's directories, kept open until the next reload: an
    /// open submitted just before a reload still names their descriptors,
    /// which must not be closed (and their numbers reused) under it.
    retired_directories: Vec<Directory>,
    /// Counter slot per handler id.
    route_slots: Vec<u16>,
    stats: Arc<WorkerStats>,
    pulse: Arc<Pulse>,
    /// The access log, when on (its batches are written by the worker).
    pub access: Option<AccessLog>,
    /// The next directory id for the open-file cache.
    next_root_id: u32,
    /// The last answer bound the exchange (it is expired afterwards).
    bound: bool,
    log: Log,
    /// The app's upstream pools and this worker's connections to them.
    upstreams: Upstreams,
    /// The pools as declared (kept to rebuild `upstreams`).
    pool_configs: Vec<keystone_upstream::PoolConfig>,
    /// The largest request body an upstream connection forwards.
    body_limit: u64,
    /// Per client connection: the Lua state keeping its `ctx.on_response`
    /// until the upstream's head arrives (each counts as a pin).
    hooks: Vec<Option<usize>>,
    /// A 405's `Allow` value, written here from the router's set when one
    /// is answered (boxed once: the policy stays small to move).
    allow: Box<[u8; keystone_router::ALLOW_BYTES_MAX]>,
}

impl AppPolicy {
    /// The policy of `app` for worker `worker`.
    pub fn new(
        worker: u32,
        app: LoadedApp,
        stats: Arc<WorkerStats>,
        pulse: Arc<Pulse>,
        access: Option<AccessLog>,
        log: Log,
    ) -> Result<AppPolicy, String> {
        let mut next_root_id = 1;
        let (statics, files) = open_directories(&app, &mut next_root_id)?;
        warn_unverified(worker, &app.upstreams, log);
        let upstreams = Upstreams::new(
            &app.upstreams,
            keystone_parser::MAX_BODY_BYTES_DEFAULT,
            Arc::clone(&stats),
        )?;
        Ok(AppPolicy {
            upstreams,
            pool_configs: app.upstreams.clone(),
            body_limit: keystone_parser::MAX_BODY_BYTES_DEFAULT,
            hooks: Vec::new(),
            worker,
            route_slots: stats.route_slots(&app.routes),
            router: app.router,
            states: vec![State {
                lua: app.lua,
                pins: 0,
            }],
            statics,
            files,
            retired_directories: Vec::new(),
            stats,
            pulse,
            access,
            next_root_id,
            bound: false,
            log,
            allow: Box::new([0; keystone_router::ALLOW_BYTES_MAX]),
        })
    }

    /// The policy of `app` alone — fresh counters, no watchdog, no access
    /// log — for in-process drivers of keystone-conn (the property tests
    /// and the fuzz targets drive the real policy through `sim`).
    pub fn standalone(app: LoadedApp) -> Result<AppPolicy, String> {
        let stats = Arc::new(WorkerStats::default());
        AppPolicy::new(
            0,
            app,
            stats,
            Arc::new(Pulse::default()),
            None,
            log_to_stderr,
        )
    }

    /// Loads `source` for worker `worker` (its Lua `print`s go to `log`)
    /// and makes it the policy.
    pub fn load(
        worker: u32,
        source: &AppSource,
        lua: &LuaConfig,
        stats: Arc<WorkerStats>,
        pulse: Arc<Pulse>,
        access: Option<AccessLog>,
        log: Log,
    ) -> Result<AppPolicy, String> {
        let app = load_app(worker, source, lua, log, &pulse)?;
        AppPolicy::new(worker, app, stats, pulse, access, log)
    }

    /// Loads `source` again and swaps it in ([`AppPolicy::reload`]),
    /// logging and counting the outcome. Returns the directory ids to
    /// forget in the cache; `None` when it failed (the old app keeps
    /// serving).
    pub fn reload_source(&mut self, source: &AppSource, lua: &LuaConfig) -> Option<Vec<u32>> {
        let loaded = load_app(self.worker, source, lua, self.log, &self.pulse);
        let routes = loaded.as_ref().map_or(0, |app| app.routes.len());
        match loaded.and_then(|app| self.reload(app)) {
            Ok(old) => {
                self.stats.reloads.add(1);
                self.log_line(
                    LogLevel::Info,
                    format_args!("reloaded {} ({routes} routes)", source.path.display()),
                );
                Some(old)
            }
            Err(err) => {
                self.log_line(
                    LogLevel::Error,
                    format_args!("reload failed, keeping the running app: {err}"),
                );
                None
            }
        }
    }

    fn log_line(&self, level: LogLevel, message: std::fmt::Arguments<'_>) {
        (self.log)(&LogLine {
            level,
            worker: self.worker,
            route: None,
            count: 1,
            message,
        });
    }

    /// Swaps in a reloaded app; the old state stays while responses still
    /// point into it. Returns the directory ids to forget in the cache.
    pub fn reload(&mut self, app: LoadedApp) -> Result<Vec<u32>, String> {
        let (statics, files) = open_directories(&app, &mut self.next_root_id)?;
        warn_unverified(self.worker, &app.upstreams, self.log);
        let old: Vec<u32> = self
            .statics
            .iter()
            .chain(std::iter::once(&self.files))
            .map(|dir| dir.id)
            .collect();
        let old_files = std::mem::replace(&mut self.files, files);
        let old_statics = std::mem::replace(&mut self.statics, statics);
        self.retired_directories = old_statics;
        self.retired_directories.push(old_files);
        if !self.upstreams.reload(&app.upstreams) {
            // The first pools of this worker: nothing was in flight.
            self.upstreams =
                Upstreams::new(&app.upstreams, self.body_limit, Arc::clone(&self.stats))?;
        }
        self.pool_configs = app.upstreams.clone();
        self.route_slots = self.stats.route_slots(&app.routes);
        self.router = app.router;
        self.states.insert(
            0,
            State {
                lua: app.lua,
                pins: 0,
            },
        );
        self.drop_unpinned_retired();
        Ok(old)
    }

    /// Upstream connections are made for bodies up to `max_body_bytes`
    /// (the worker's `--max-body-bytes`); called before any traffic.
    pub fn set_body_limit(&mut self, max_body_bytes: u64) -> Result<(), String> {
        if self.upstreams.capacity() > 0 {
            self.upstreams = Upstreams::new(
                self.upstream_configs(),
                max_body_bytes,
                Arc::clone(&self.stats),
            )?;
        }
        self.body_limit = max_body_bytes;
        Ok(())
    }

    fn upstream_configs(&self) -> &[keystone_upstream::PoolConfig] {
        &self.pool_configs
    }

    /// Runs the `ctx.on_response` state `owner` kept for `request`'s
    /// connection, over the request and the upstream's answer: `Some(true)`
    /// when its writes are in the current exchange, `Some(false)` when it
    /// failed (logged; the caller answers 500), `None` when it was skipped:
    /// a hook of a state a reload retired (its exchange is not the one
    /// answered) is dropped with a warning.
    fn run_on_response(&mut self, request: &Request<'_>, owner: usize) -> Option<bool> {
        let slot = request.slot;
        let current = self.states[0].lua.id() == owner;
        if !current {
            let state = self.state_of(PinOwner(owner));
            state.lua.drop_hook(slot);
            state.pins -= 1;
            self.drop_unpinned_retired();
            log_request(
                self.log,
                self.worker,
                request,
                format_args!("ctx.on_response skipped: the app was reloaded meanwhile"),
            );
            return None;
        }
        let Progress::Head { head, bytes, body } = self.upstreams.progress(slot) else {
            self.states[0].lua.drop_hook(slot);
            self.states[0].pins -= 1;
            return None;
        };
        let peer = keystone_exchange::PeerAddr::new(self.upstreams.peer_of(slot));
        let exchange = self.states[0].lua.exchange_mut();
        exchange.bind_with_tls(
            request.bytes,
            request.head,
            &[],
            request.body,
            request.peer_addr(),
            request.tls,
        );
        if request.body_streamed {
            exchange.mark_body_streamed();
        }
        exchange.bind_upstream_response(bytes, head, body, peer);
        self.bound = true;
        self.pulse.enter_handler();
        let outcome = self.states[0].lua.run_hook(slot);
        self.pulse.leave_handler();
        self.states[0].pins -= 1;
        let message = match outcome {
            Outcome::Done => return Some(true),
            Outcome::Failed { message } => message.unwrap_or_else(|| "(repeated)".to_string()),
            Outcome::Stopped { message } => message,
        };
        self.stats.lua_errors.add(1);
        log_request(
            self.log,
            self.worker,
            request,
            format_args!("ctx.on_response failed: {message}"),
        );
        Some(false)
    }

    /// Lets a kept `ctx.on_response` go unrun (the request ended first).
    fn forget_hook(&mut self, slot: u32) {
        let Some(owner) = self.hooks.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        let state = self.state_of(PinOwner(owner));
        state.lua.drop_hook(slot);
        state.pins -= 1;
        if self.states[0].lua.id() != owner {
            self.drop_unpinned_retired();
        }
    }

    /// The pools as the app declares them (peers resolved), or as
    /// [`AppPolicy::set_pool`] replaced them.
    pub fn pools(&self) -> &[keystone_upstream::PoolConfig] {
        &self.pool_configs
    }

    /// Replaces the pool of `pool.name` for the requests that follow, and
    /// relays upstream bodies by copy from then on: for in-process drivers
    /// (`keystone test` points a pool at its fake), whose upstream
    /// connections are no sockets to splice from. Err when the app declares
    /// no pool of that name.
    pub fn set_pool(&mut self, pool: keystone_upstream::PoolConfig) -> Result<(), String> {
        let Some(index) = self.pool_configs.iter().position(|p| p.name == pool.name) else {
            let names: Vec<&str> = self.pool_configs.iter().map(|p| p.name.as_str()).collect();
            return Err(format!(
                "the app declares no upstream '{}' (it declares: {})",
                pool.name,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        };
        self.pool_configs[index] = pool;
        let reloaded = self.upstreams.reload(&self.pool_configs);
        debug_assert!(reloaded, "a worker with pools has upstream connections");
        self.upstreams.relay_only();
        Ok(())
    }

    /// The pool and peer index upstream connection `index` is for
    /// ([`Upstreams::target_of`]).
    pub fn upstream_target(&self, index: usize) -> Option<(&str, usize)> {
        self.upstreams.target_of(index)
    }

    /// Upstream connections this worker may have (reactor owners).
    pub fn upstream_capacity(&self) -> usize {
        self.upstreams.capacity()
    }

    /// The next upstream operation to execute.
    pub fn upstream_poll(&mut self, now: Instant) -> Option<(usize, UpstreamOp)> {
        self.upstreams.poll(now)
    }

    /// An upstream operation completed.
    pub fn upstream_complete(&mut self, index: usize, done: UpstreamDone, now: Instant) {
        self.upstreams.complete(index, done, now);
        flush_notes(&mut self.upstreams, self.log, self.worker, None);
    }

    /// The client connections whose upstream progressed.
    pub fn upstream_wakes(&mut self, out: &mut Vec<u32>) {
        self.upstreams.take_wakes(out);
    }

    /// Once a second (the worker's tick): one summary line for each site
    /// whose failures were counted in a window that has passed — `GET
    /// /boom: handler failed: app.lua:7: boom — repeated 42,991 times in
    /// the last 1 s`.
    pub fn tick(&mut self, now: Instant) {
        self.upstreams.tick(now);
        flush_notes(&mut self.upstreams, self.log, self.worker, None);
        let (log, worker) = (self.log, self.worker);
        keystone_lua::take_repeated_errors(now, |repeats| {
            log(&LogLine {
                level: LogLevel::Error,
                worker,
                route: Some(repeats.label),
                count: repeats.count,
                message: format_args!(
                    "handler failed: {} — repeated {} times in the last {} s",
                    repeats.first_line,
                    thousands(repeats.count),
                    keystone_lua::ERROR_WINDOW.as_secs()
                ),
            });
        });
    }

    /// Frees retired states nothing points into any more.
    fn drop_unpinned_retired(&mut self) {
        let mut index = 1;
        while index < self.states.len() {
            if self.states[index].pins == 0 {
                self.states.remove(index);
            } else {
                index += 1;
            }
        }
    }

    /// The current Lua state.
    fn lua(&mut self) -> &mut LuaWorker {
        &mut self.states[0].lua
    }

    /// The state that owns `owner`'s pins (the current one, or a retired
    /// one a stream started in).
    fn state_of(&mut self, owner: PinOwner) -> &mut State {
        let index = self
            .states
            .iter()
            .position(|state| state.lua.id() == owner.0)
            .expect("a pin's state lives while it is pinned");
        &mut self.states[index]
    }
}

impl Policy for AppPolicy {
    fn answer(&mut self, request: &Request<'_>) -> Answer<'_> {
        // `OPTIONS *` (the parser admits `*` with OPTIONS only) asks about
        // the server, not a resource: answered here, without Lua
        // (RFC 9112 §3.2.4, RFC 9110 §9.3.7).
        if request.path() == b"*" {
            return Answer::Canned {
                status: 204,
                allow: Some(self.router.server_allow().as_bytes()),
            };
        }
        let mut matched = RouteMatch::EMPTY;
        let found = self.router.lookup_into(
            request.method(),
            request.path(),
            request.head.path.offset,
            &mut matched,
        );
        match found {
            Ok(()) => {}
            Err(RouteMiss::NotFound) => {
                return Answer::Canned {
                    status: 404,
                    allow: None,
                }
            }
            Err(RouteMiss::MethodNotAllowed { allow }) => {
                return Answer::Canned {
                    status: 405,
                    allow: Some(allow.write_into(&mut self.allow[..])),
                }
            }
        };
        let handler = matched.handler;
        if handler >= STATIC_HANDLER_BASE {
            self.stats.static_files.add(1);
            let directory = &self.statics[(handler - STATIC_HANDLER_BASE) as usize];
            // The catch-all's value is the path below the prefix; the
            // prefix itself serves the directory's index.
            let path = matched.params().first().map_or(
                keystone_ringbuf::Span::new(request.head.path.end(), 0),
                |param| param.value,
            );
            return Answer::Static {
                root: Root {
                    id: directory.id,
                    dir: directory.fd.as_raw_fd(),
                },
                path,
            };
        }
        self.states[0].lua.exchange_mut().bind_with_tls(
            request.bytes,
            request.head,
            matched.params(),
            request.body,
            request.peer_addr(),
            request.tls,
        );
        if request.body_streamed {
            self.states[0].lua.exchange_mut().mark_body_streamed();
        }
        self.bound = true;
        let route = self.route_slots.get(handler as usize).copied().unwrap_or(0);
        self.stats.routes[route as usize].add(1);
        self.pulse.enter_handler();
        let outcome = self.states[0].lua.run(handler);
        self.pulse.leave_handler();
        match outcome {
            Outcome::Done => match self.states[0].lua.exchange().upstream_pool() {
                Some(pool) => {
                    let exchange = self.states[0].lua.exchange();
                    let started = start_proxy(&mut self.upstreams, exchange, request, pool);
                    flush_notes(&mut self.upstreams, self.log, self.worker, Some(request));
                    match started {
                        Ok(()) => {
                            self.stats.proxied.add(1);
                            if self.states[0].lua.exchange().on_response != 0 {
                                let state = &mut self.states[0];
                                state.lua.pin_hook(request.slot);
                                state.pins += 1;
                                let slot = request.slot as usize;
                                if self.hooks.len() <= slot {
                                    self.hooks.resize(slot + 1, None);
                                }
                                self.hooks[slot] = Some(state.lua.id());
                            }
                            Answer::Proxy
                        }
                        Err(status) => Answer::Canned {
                            status,
                            allow: None,
                        },
                    }
                }
                None => Answer::Exchange {
                    files: Root {
                        id: self.files.id,
                        dir: self.files.fd.as_raw_fd(),
                    },
                },
            },
            Outcome::Failed { message } => {
                self.stats.lua_errors.add(1);
                // A repeat at a site already reported this second is only
                // counted (keystone-lua's error coalescing; see `tick`).
                if let Some(message) = message {
                    log_request(
                        self.log,
                        self.worker,
                        request,
                        format_args!("handler failed: {message}"),
                    );
                }
                Answer::Canned {
                    status: 500,
                    allow: None,
                }
            }
            Outcome::Stopped { message } => {
                self.stats.lua_stopped.add(1);
                log_request(
                    self.log,
                    self.worker,
                    request,
                    format_args!("handler stopped: {message}"),
                );
                Answer::Canned {
                    status: 503,
                    allow: None,
                }
            }
        }
    }

    fn exchange(&self) -> &HttpExchange {
        self.states[0].lua.exchange()
    }

    fn pin(&mut self, slot: u32) -> Result<Pinned, String> {
        let state = &mut self.states[0];
        let bytes = state.lua.pin_body(slot)?;
        state.pins += 1;
        Ok(Pinned {
            owner: PinOwner(state.lua.id()),
            bytes,
        })
    }

    fn expire(&mut self) {
        if std::mem::take(&mut self.bound) {
            self.lua().exchange_mut().expire();
        }
    }

    fn pull(&mut self, owner: PinOwner, slot: u32) -> Pulled {
        self.pulse.enter_handler();
        let pulled = self.state_of(owner).lua.pull(slot);
        self.pulse.leave_handler();
        match pulled {
            Pull::Chunk(bytes) => Pulled::Chunk(bytes),
            Pull::End => Pulled::End,
            Pull::Failed { message } => {
                self.stats.lua_errors.add(1);
                Pulled::Failed { message }
            }
        }
    }

    fn unpin(&mut self, owner: PinOwner, slot: u32) {
        let state = self.state_of(owner);
        state.lua.unpin_body(slot);
        debug_assert!(state.pins > 0);
        state.pins -= 1;
        if state.pins == 0 && self.states[0].lua.id() != owner.0 {
            self.drop_unpinned_retired();
        }
    }

    fn answered(&mut self, request: &Request<'_>, committed: &Committed, body_follows: bool) {
        self.stats.response(committed.status);
        let Some(log) = &mut self.access else { return };
        // Read the clock only for a line that is written: a clock read
        // per request was 3 % of a pipelined request's user time.
        let now = Instant::now();
        let entry = access_log::Entry {
            peer: request.peer,
            method: request.method(),
            target: request.target(),
            minor_version: request.head.minor_version,
            status: committed.status,
            body_bytes: committed.body_bytes(),
            referer: request.header(b"referer"),
            user_agent: request.header(b"user-agent"),
            request_time: now.saturating_duration_since(request.started).as_secs_f64(),
            upstream: self.upstreams.log_entry(request.slot, now).map(
                |(addr, status, response_time)| access_log::UpstreamEntry {
                    addr,
                    // The client left before the upstream answered: it
                    // gave no status (`-`, as nginx logs it).
                    status: if committed.status == keystone_conn::CLIENT_CLOSED_REQUEST {
                        0
                    } else {
                        status
                    },
                    response_time,
                },
            ),
        };
        if body_follows {
            // Written when the body is over (`body_done`), with what of it
            // went out.
            log.hold(request.slot, &entry, request.started);
        } else {
            log.record(&entry);
        }
    }

    fn body_done(&mut self, slot: u32, body_bytes: u64) {
        if let Some(log) = &mut self.access {
            log.release(slot, body_bytes, Instant::now());
        }
    }

    fn refused(&mut self, committed: &Committed) {
        self.stats.response(committed.status);
    }

    fn log(&mut self, level: Level, message: std::fmt::Arguments<'_>) {
        let level = match level {
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        self.log_line(level, message);
    }

    fn proxy_head(&mut self, request: &Request<'_>) -> ProxyHead<'_> {
        let slot = request.slot;
        let hook = match self.upstreams.progress(slot) {
            Progress::Waiting => return ProxyHead::Waiting,
            Progress::Failed { status } => {
                self.forget_hook(slot);
                return ProxyHead::Failed { status };
            }
            Progress::Head { .. } => self.hooks.get_mut(slot as usize).and_then(Option::take),
        };
        let mut policy = false;
        if let Some(owner) = hook {
            match self.run_on_response(request, owner) {
                Some(true) => policy = true,
                Some(false) => return ProxyHead::Failed { status: 500 },
                None => {} // skipped: the upstream's answer goes as it came
            }
        }
        let exchange = self.states[0].lua.exchange();
        match self.upstreams.progress(slot) {
            Progress::Head { head, bytes, .. } => ProxyHead::Ready {
                head,
                bytes,
                policy: policy.then_some(exchange),
            },
            Progress::Waiting => ProxyHead::Waiting,
            Progress::Failed { status } => ProxyHead::Failed { status },
        }
    }

    fn proxy_head_taken(&mut self, slot: u32) {
        self.upstreams.take_head(slot);
    }

    fn proxy_body(&mut self, slot: u32) -> ProxyBody<'_> {
        match self.upstreams.body(slot) {
            Ok([]) => ProxyBody::Waiting,
            Ok(bytes) => ProxyBody::Bytes(bytes),
            Err(true) => ProxyBody::End,
            Err(false) => ProxyBody::Broken,
        }
    }

    fn proxy_consumed(&mut self, slot: u32, n: u32) {
        self.upstreams.consumed(slot, n);
    }

    fn proxy_splice(&mut self, slot: u32) -> Option<(std::os::fd::RawFd, u64)> {
        self.upstreams
            .splice(slot, keystone_conn::SPLICE_PROXY_MIN_BYTES)
    }

    fn proxy_spliced(&mut self, slot: u32, n: u32) {
        self.stats.proxied_spliced.add(u64::from(n));
        self.upstreams.spliced(slot, n, Instant::now());
    }

    fn proxy_splice_failed(&mut self, slot: u32) {
        self.upstreams.splice_failed(slot, Instant::now());
        flush_notes(&mut self.upstreams, self.log, self.worker, None);
    }

    fn streams_bodies(&self) -> bool {
        !self.pool_configs.is_empty()
    }

    fn proxy_upload(&mut self, slot: u32, bytes: &[u8]) -> u32 {
        self.upstreams.upload(slot, bytes)
    }

    fn proxy_upload_end(&mut self, slot: u32) {
        self.upstreams.upload_end(slot);
    }

    fn proxy_done(&mut self, slot: u32) {
        self.forget_hook(slot);
        self.upstreams.done(slot, Instant::now());
        flush_notes(&mut self.upstreams, self.log, self.worker, None);
    }
}

/// Sends the request Lua routed to pool `pool` (the exchange is still
/// bound: policy's target, key and headers are read now).
fn start_proxy(
    upstreams: &mut Upstreams,
    exchange: &HttpExchange,
    request: &Request<'_>,
    pool: usize,
) -> Result<(), u16> {
    let head = request.head;
    // The client's target in origin form: from the path to the end of the
    // target (an absolute-form target loses its scheme and host).
    let client_target = Span::new(head.path.offset, head.target.end() - head.path.offset);
    let target = exchange
        .upstream_path()
        .unwrap_or_else(|| client_target.slice(request.bytes));
    let body = request.body.slice(request.bytes);
    // A buffered body goes with its length (a chunked one decoded); a
    // streamed one as the client framed it, re-chunked when chunked.
    let (framing, streamed) = match head.body {
        BodyFraming::None => (ForwardFraming::None, None),
        BodyFraming::Length(length) if request.body_streamed => {
            (ForwardFraming::Length(length), Some(false))
        }
        BodyFraming::Chunked if request.body_streamed => (ForwardFraming::Chunked, Some(true)),
        _ => (ForwardFraming::Length(body.len() as u64), None),
    };
    let websocket = is_websocket_handshake(request);
    // An absolute-form target (`GET http://a.example/x`): the parser took
    // its authority as the host, over any Host header.
    let absolute_form = !request.target().starts_with(b"/") && request.target() != b"*";
    let authority = absolute_form.then(|| head.host.slice(request.bytes));
    let headers = head
        .headers()
        .iter()
        .map(|h| (h.name.slice(request.bytes), h.value.slice(request.bytes)));
    let overrides = exchange.upstream_overrides();
    let start = proxy::Start {
        client: request.slot,
        pool,
        key: exchange.upstream_key(),
        method: request.method(),
        now: request.started,
        streamed,
        upgrade: websocket,
        // The body is read whole only for a hook that will see it.
        buffer: if exchange.on_response != 0 {
            exchange.upstream_buffer()
        } else {
            0
        },
    };
    upstreams.start(start, |buffer, pool_name| {
        let forward = ForwardRequest {
            method: request.method(),
            target,
            framing,
            client: request.peer.map(|peer| peer.ip()),
            scheme: Scheme::of(request.tls.is_encrypted()),
            websocket,
            default_host: pool_name.as_bytes(),
            authority,
        };
        let Ok(len) = write_forward_head(&forward, headers, overrides, buffer.spare_mut()) else {
            return false;
        };
        buffer.commit(len as u32);
        buffer.append(body).is_ok()
    })
}

/// A WebSocket opening handshake (RFC 6455 §4.1): an HTTP/1.1 GET with
/// `Upgrade: websocket` and `Connection: upgrade` (tokens, any case). Its
/// `Upgrade` and `Connection` are forwarded, and a `101` makes the proxied
/// connection a tunnel. Any other `Upgrade` is dropped as hop-by-hop.
fn is_websocket_handshake(request: &Request<'_>) -> bool {
    let has_token = |name: &[u8], token: &[u8]| {
        request
            .head
            .headers()
            .iter()
            .filter(|h| h.name.slice(request.bytes).eq_ignore_ascii_case(name))
            .any(|h| keystone_parser::text::list_has(h.value.slice(request.bytes), token))
    };
    request.method() == b"GET"
        && request.head.minor_version == 1
        && has_token(b"upgrade", b"websocket")
        && has_token(b"connection", b"upgrade")
}

/// Writes what the upstream side noted (failures with peer and reason).
fn flush_notes(upstreams: &mut Upstreams, log: Log, worker: u32, request: Option<&Request<'_>>) {
    for note in upstreams.notes.drain(..) {
        match request {
            Some(request) => log_request(log, worker, request, format_args!("{note}")),
            None => log(&LogLine {
                level: LogLevel::Error,
                worker,
                route: None,
                count: 1,
                message: format_args!("{note}"),
            }),
        }
    }
}

/// Logs an error about `request`, labelled `METHOD /path`.
fn log_request(log: Log, worker: u32, request: &Request<'_>, message: std::fmt::Arguments<'_>) {
    let mut label = [0u8; LABEL_BYTES];
    let label = request_label(&mut label, request.method(), request.path());
    log(&LogLine {
        level: LogLevel::Error,
        worker,
        route: Some(label),
        count: 1,
        message,
    });
}

/// Bytes of `METHOD /path` a log line names its request by.
const LABEL_BYTES: usize = 256;

/// `METHOD /path` (lossily UTF-8, cut at `out`'s size) in `out`.
fn request_label<'o>(out: &'o mut [u8; LABEL_BYTES], method: &[u8], path: &[u8]) -> &'o str {
    let mut len = 0;
    for part in [method, b" ", path] {
        let take = part.len().min(LABEL_BYTES - len);
        out[len..len + take].copy_from_slice(&part[..take]);
        len += take;
    }
    match std::str::from_utf8(&out[..len]) {
        Ok(text) => text,
        Err(err) => std::str::from_utf8(&out[..err.valid_up_to()]).unwrap_or(""),
    }
}

/// `n` with thousands separators (`42,991`).
fn thousands(n: u64) -> impl std::fmt::Display {
    struct Grouped(u64);
    impl std::fmt::Display for Grouped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            if self.0 < 1000 {
                return write!(f, "{}", self.0);
            }
            write!(f, "{},{:03}", Grouped(self.0 / 1000), self.0 % 1000)
        }
    }
    Grouped(n)
}

/// The log of a policy driven outside a server (tests, fuzzing).
/// Loads `source`, Lua's `print` lines going to `log` at info level.
/// Loads `source` for `worker`, its chunk and `init_worker` under the
/// worker's handler budget (a load that never ends is stopped, and the old
/// app keeps serving).
fn load_app(
    worker: u32,
    source: &AppSource,
    lua: &LuaConfig,
    log: Log,
    pulse: &Pulse,
) -> Result<LoadedApp, String> {
    let print = move |line: &str| {
        log(&LogLine {
            level: LogLevel::Info,
            worker,
            route: None,
            count: 1,
            message: format_args!("lua: {line}"),
        })
    };
    LoadedApp::load_budgeted(source, worker, lua, print, Some(pulse)).map_err(|err| err.to_string())
}

/// At every load: a pool with `verify = false` is named in a warning (its
/// peers' certificates are not checked: anyone on the path between here
/// and them can pose as them). Worker 0's load says it for all.
fn warn_unverified(worker: u32, pools: &[keystone_upstream::PoolConfig], log: Log) {
    if worker != 0 {
        return;
    }
    for pool in pools {
        if pool.tls.as_ref().is_some_and(|tls| !tls.verify) {
            log(&LogLine {
                level: LogLevel::Warn,
                worker,
                route: None,
                count: 1,
                message: format_args!(
                    "upstream {}: verify = false: its peers' TLS certificates are not checked (anyone on the path can pose as them)",
                    pool.name
                ),
            });
        }
    }
}

fn log_to_stderr(line: &LogLine<'_>) {
    eprintln!(
        "{:?} [worker {}] {}{}{}",
        line.level,
        line.worker,
        line.route.unwrap_or(""),
        if line.route.is_some() { ": " } else { "" },
        line.message
    );
}

/// Opens an app's static directories and its policy-file directory (at load
/// and reload, never on the request path), each under a fresh cache id.
fn open_directories(
    app: &LoadedApp,
    next_id: &mut u32,
) -> Result<(Vec<Directory>, Directory), String> {
    let mut open = |path: &Path, what: &dyn std::fmt::Display| -> Result<Directory, String> {
        let file = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(path)
            .map_err(|err| format!("{what} {}: {err}", path.display()))?;
        let id = *next_id;
        *next_id += 1;
        Ok(Directory {
            fd: OwnedFd::from(file),
            id,
        })
    };
    let statics = app
        .statics
        .iter()
        .map(|(_, dir)| open(dir, &"static"))
        .collect::<Result<Vec<_>, _>>()?;
    let files = open(&app.files_dir, &"app directory")?;
    Ok((statics, files))
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_have_thousands_separators() {
        let cases = [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (42_991, "42,991"),
            (1_000_001, "1,000,001"),
        ];
        for (n, text) in cases {
            assert_eq!(super::thousands(n).to_string(), text);
        }
    }
}
