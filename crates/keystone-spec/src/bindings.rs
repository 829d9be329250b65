//! What spec files reach of the engine: `keystone.app(path, opts)` and the
//! app handle's `:request{...}`, `:upstream(name, fn)` and `:reset()`, and
//! the hooks the runtime calls around each test (`keystone._begin_test`,
//! `keystone._end_test`). Tables in, tables out; the engine stays Rust.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Instant;

use keystone_conn::Config;
use keystone_lua::{AppSource, LuaConfig, Pulse};
use mlua::{Function, Lua, Table, UserData, UserDataMethods, Value};

use crate::engine::{AppUnderTest, FakeAnswer, Fakes, DEFAULT_PEER};
use crate::http::{self, ForwardedRequest, RequestSpec};
use crate::log;

/// What every app of a run is loaded with.
pub struct Settings {
    pub lua: LuaConfig,
    pub config: Config,
    pub pulse: Arc<Pulse>,
}

/// The run's apps and whether a test is running.
struct Shared {
    settings: Settings,
    apps: RefCell<Vec<Weak<RefCell<AppState>>>>,
    in_test: Cell<bool>,
    started: Instant,
}

/// A pool's fake: a function of the request, or one fixed answer (a
/// table, a body string or a status).
#[derive(Clone)]
enum Fake {
    Function(Function),
    Answer(Value),
}

/// The fakes of one app: those set outside any test (or in a `setup`)
/// last for the file, those set inside one for that test.
struct FakeTable {
    lua: mlua::WeakLua,
    file: HashMap<String, Fake>,
    test: HashMap<String, Fake>,
    /// Bumped at every change ([`Fakes::version`]).
    version: u64,
    /// The first error a fake raised during the current request: raised
    /// again by `app:request` as it was (an assertion's failure keeps its
    /// own `file:line`).
    failure: Option<Value>,
}

impl FakeTable {
    fn get(&self, pool: &str) -> Option<&Fake> {
        self.test.get(pool).or_else(|| self.file.get(pool))
    }

    fn changed(&mut self) {
        self.version += 1;
    }

    /// The current test's fakes go (those of the file stay).
    fn end_test(&mut self) {
        self.test.clear();
        self.changed();
    }

    fn fail(&mut self, lua: &Lua, message: String) {
        if self.failure.is_none() {
            self.failure = lua.create_string(message).ok().map(Value::String);
        }
    }
}

impl Fakes for FakeTable {
    fn has(&self, pool: &str) -> bool {
        self.get(pool).is_some()
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn answer(&mut self, pool: &str, request: ForwardedRequest) -> Option<FakeAnswer> {
        let fake = self.get(pool).cloned().expect("asked for a fake it has");
        let lua = self.lua.upgrade();
        let answer = match fake {
            Fake::Answer(value) => value,
            Fake::Function(function) => {
                let called = forwarded_table(&lua, &request).and_then(|req| {
                    let keystone: Table = lua.globals().get("keystone")?;
                    let call: Function = keystone.get("_call_fake")?;
                    call.call::<(bool, Value)>((function, req))
                });
                match called {
                    Ok((true, answer)) => answer,
                    Ok((false, error)) => {
                        if self.failure.is_none() {
                            self.failure = Some(error);
                        }
                        return None;
                    }
                    Err(err) => {
                        self.fail(&lua, format!("upstream '{pool}' fake: {}", message(&err)));
                        return None;
                    }
                }
            }
        };
        match answer_bytes(&answer) {
            Ok(answer) => Some(answer),
            Err(err) => {
                self.fail(&lua, format!("upstream '{pool}' fake: {err}"));
                None
            }
        }
    }
}

/// One app of a spec file.
struct AppState {
    app: AppUnderTest,
    keep_state: bool,
    fakes: FakeTable,
    /// Requests since the last (re)load: a reset before any is a no-op.
    used: bool,
    /// What the load wrote to the log (its `init_worker`'s prints): shown
    /// with the first test, which uses that load.
    load_log: Vec<String>,
}

impl AppState {
    /// The next request loads the app afresh (what the old load logged is
    /// no longer this state's).
    fn reset(&mut self) {
        self.app.reset();
        self.used = false;
        self.load_log.clear();
    }
}

/// The handle a spec holds (`keystone.app` wraps it in a table whose
/// methods raise what this returns as errors).
struct AppHandle {
    state: Rc<RefCell<AppState>>,
    shared: Rc<Shared>,
}

/// Installs `keystone._app` (wrapped as `keystone.app` by the glue),
/// `keystone._begin_test`, `_end_test`, `_set_scope`, `_clock` and
/// `_requests` into `keystone`.
pub fn install(lua: &Lua, keystone: &Table, settings: Settings) -> mlua::Result<()> {
    let shared = Rc::new(Shared {
        settings,
        apps: RefCell::new(Vec::new()),
        in_test: Cell::new(false),
        started: Instant::now(),
    });
    let app_shared = Rc::clone(&shared);
    keystone.set(
        "_app",
        lua.create_function(
            move |lua, (path, opts, dir): (String, Option<Table>, Option<String>)| {
                Ok(
                    match open_app(lua, &app_shared, &path, opts.as_ref(), dir) {
                        Ok(handle) => (Some(handle), None),
                        Err(message) => (None, Some(message)),
                    },
                )
            },
        )?,
    )?;
    let begin_shared = Rc::clone(&shared);
    keystone.set(
        "_begin_test",
        lua.create_function(move |_, ()| {
            begin_shared.in_test.set(true);
            keystone_lua::forget_error_sites();
            drop(log::take());
            each_app(&begin_shared, |state| {
                state.fakes.end_test();
                state.fakes.failure = None;
                if !state.keep_state && state.used {
                    state.reset();
                }
                for line in state.load_log.drain(..) {
                    log::push(line);
                }
            });
            Ok(())
        })?,
    )?;
    let end_shared = Rc::clone(&shared);
    keystone.set(
        "_end_test",
        lua.create_function(move |lua, ()| {
            end_shared.in_test.set(false);
            each_app(&end_shared, |state| state.fakes.end_test());
            lua.create_sequence_from(log::take())
        })?,
    )?;
    let scope_shared = Rc::clone(&shared);
    keystone.set(
        "_set_scope",
        lua.create_function(move |_, test: bool| {
            scope_shared.in_test.set(test);
            Ok(())
        })?,
    )?;
    let clock_shared = Rc::clone(&shared);
    keystone.set(
        "_clock",
        lua.create_function(move |_, ()| Ok(clock_shared.started.elapsed().as_secs_f64()))?,
    )?;
    let count_shared = shared;
    keystone.set(
        "_requests",
        lua.create_function(move |_, ()| {
            let mut total = 0u64;
            each_app(&count_shared, |state| total += state.app.requests);
            Ok(total)
        })?,
    )?;
    Ok(())
}

/// Runs `f` on every app still held by a spec.
fn each_app(shared: &Shared, mut f: impl FnMut(&mut AppState)) {
    let mut apps = shared.apps.borrow_mut();
    apps.retain(|weak| weak.strong_count() > 0);
    for app in apps.iter().filter_map(Weak::upgrade) {
        if let Ok(mut state) = app.try_borrow_mut() {
            f(&mut state);
        }
    }
}

fn open_app(
    lua: &Lua,
    shared: &Rc<Shared>,
    path: &str,
    opts: Option<&Table>,
    caller_dir: Option<String>,
) -> Result<AppHandle, String> {
    let lua_error = |err: mlua::Error| format!("keystone.app: {}", message(&err));
    let keystone: Table = lua.globals().get("keystone").map_err(lua_error)?;
    let from_caller = caller_dir.is_some();
    let dir = match caller_dir {
        Some(dir) => Some(dir),
        None => keystone
            .get::<Option<String>>("_spec_dir")
            .map_err(lua_error)?,
    };
    let path = resolve(dir.as_deref(), path);
    let mut lua_config = shared.settings.lua.clone();
    let mut config = shared.settings.config;
    let mut keep_state = false;
    if let Some(opts) = opts {
        let mut read = || -> mlua::Result<()> {
            keep_state = opts.get::<Option<bool>>("keep_state")?.unwrap_or(false);
            for tree in opts
                .get::<Option<Vec<String>>>("rocks_trees")?
                .unwrap_or_default()
            {
                lua_config.rocks_trees.push(resolve(dir.as_deref(), &tree));
            }
            lua_config.allow_c_modules.extend(
                opts.get::<Option<Vec<String>>>("allow_c_modules")?
                    .unwrap_or_default(),
            );
            if let Some(unsafe_lua) = opts.get::<Option<bool>>("unsafe_lua")? {
                lua_config.unsafe_lua = unsafe_lua;
            }
            let limits = &mut config.limits;
            if let Some(n) = opts.get::<Option<u64>>("max_body_bytes")? {
                limits.max_body_bytes = n;
            }
            if let Some(n) = opts.get::<Option<u32>>("max_header_bytes")? {
                limits.max_header_bytes = n.max(256);
            }
            if let Some(n) = opts.get::<Option<u16>>("max_headers")? {
                limits.max_headers = n.clamp(1, keystone_parser::HEADERS_CAPACITY as u16);
            }
            if let Some(n) = opts.get::<Option<u32>>("max_uri_bytes")? {
                limits.max_uri_bytes = n.max(16);
            }
            Ok(())
        };
        read().map_err(|err| format!("keystone.app: bad options: {}", message(&err)))?;
    }
    lua_config
        .check_trees()
        .map_err(|err| format!("keystone.app: {err}"))?;
    let source = AppSource::read(&path).map_err(|err| {
        // A helper module's `return keystone.app(...)` is a tail call: Lua
        // keeps no frame of the helper, so the path was taken from the spec.
        let hint = if from_caller {
            ""
        } else {
            " (resolved from the spec file's directory: the caller is unknown, as for \
             `return keystone.app(...)` in a module; assign it to a local first)"
        };
        format!("keystone.app: {err}{hint}")
    })?;
    let mark = log::mark();
    let app = AppUnderTest::load(
        source,
        lua_config,
        config,
        Arc::clone(&shared.settings.pulse),
    )
    .map_err(|err| format!("keystone.app: {err}"))?;
    let state = Rc::new(RefCell::new(AppState {
        app,
        keep_state,
        fakes: FakeTable {
            lua: lua.weak(),
            file: HashMap::new(),
            test: HashMap::new(),
            version: 0,
            failure: None,
        },
        used: false,
        load_log: log::since(mark),
    }));
    shared.apps.borrow_mut().push(Rc::downgrade(&state));
    Ok(AppHandle {
        state,
        shared: Rc::clone(shared),
    })
}

/// `path` against the spec's directory, `..` folded lexically, so
/// `spec/../app.lua` is named `app.lua` in messages and tracebacks.
fn resolve(dir: Option<&str>, path: &str) -> PathBuf {
    use std::path::Component;
    let path = Path::new(path);
    let joined = match dir {
        Some(dir) if path.is_relative() => Path::new(dir).join(path),
        _ => path.to_path_buf(),
    };
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

impl UserData for AppHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // Each returns its value, or nil and the error (and, for a
        // request, whether a fake raised it): the glue raises it from the
        // spec's own frame, so no Rust error wrapping reaches the report.
        methods.add_method("request", |lua, this, request: Table| {
            Ok(match this.request(lua, &request) {
                Ok(res) => (Some(res), None, false),
                Err(Failure::Fake(error)) => (None, Some(error), true),
                Err(Failure::Engine(text)) => {
                    (None, Some(Value::String(lua.create_string(text)?)), false)
                }
            })
        });
        methods.add_method("upstream", |_, this, (pool, fake): (String, Value)| {
            Ok(match this.upstream(pool, fake) {
                Ok(()) => (true, None),
                Err(message) => (false, Some(message)),
            })
        });
        methods.add_method("reset", |_, this, ()| {
            if let Ok(mut state) = this.state.try_borrow_mut() {
                state.reset();
            }
            Ok(())
        });
    }
}

/// Why `app:request` failed.
enum Failure {
    /// A fake raised this (an assertion's failure object, or a message).
    Fake(Value),
    /// The request could not be made or the engine could not answer.
    Engine(String),
}

impl AppHandle {
    fn request(&self, lua: &Lua, request: &Table) -> Result<Table, Failure> {
        let lua_error =
            |err: mlua::Error| Failure::Engine(format!("app:request: {}", message(&err)));
        let (bytes, head, peer) = request_bytes(lua, request).map_err(lua_error)?;
        let mut state = self.state.try_borrow_mut().map_err(|_| {
            Failure::Engine(
                "app:request called from inside one of this app's upstream fakes".into(),
            )
        })?;
        state.used = true;
        state.fakes.failure = None;
        let AppState { app, fakes, .. } = &mut *state;
        // An engine bug must fail this test, not end the run: the panic is
        // caught, the app's state dropped (it may be mid-request), and the
        // test reports it.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            app.exchange(&bytes, peer, fakes)
        }));
        let exchanged = match outcome {
            Ok(result) => result.map_err(Failure::Engine)?,
            Err(panic) => {
                app.reset();
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                return Err(Failure::Engine(format!(
                    "the engine failed on this request ({what}); please report it"
                )));
            }
        };
        if let Some(error) = state.fakes.failure.take() {
            return Err(Failure::Fake(error));
        }
        drop(state);
        response_table(lua, &exchanged.raw, head, exchanged.closed).map_err(lua_error)
    }

    fn upstream(&self, pool: String, fake: Value) -> Result<(), String> {
        let mut state = self
            .state
            .try_borrow_mut()
            .map_err(|_| "app:upstream called from inside an upstream fake".to_string())?;
        let names = state.app.pool_names();
        if !names.contains(&pool) {
            return Err(format!(
                "app:upstream: the app declares no upstream '{pool}' (it declares: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
        let fake = match fake {
            Value::Function(function) => Some(Fake::Function(function)),
            Value::Nil => None,
            answer @ (Value::Table(_) | Value::String(_) | Value::Integer(_)) => {
                Some(Fake::Answer(answer))
            }
            Value::Number(n) if n.fract() == 0.0 => Some(Fake::Answer(Value::Number(n))),
            other => {
                return Err(format!(
                    "app:upstream: the fake is a function or an answer (a table, a body string \
                     or a status), not a {}",
                    other.type_name()
                ))
            }
        };
        let scope = if self.shared.in_test.get() {
            &mut state.fakes.test
        } else {
            &mut state.fakes.file
        };
        match fake {
            Some(fake) => scope.insert(pool, fake),
            None => scope.remove(&pool),
        };
        state.fakes.changed();
        Ok(())
    }
}

/// The bytes of the request `t` describes, whether it is a `HEAD`, and the
/// client address.
/// The fields a request table may have.
const REQUEST_FIELDS: &[&str] = &[
    "method",
    "path",
    "query",
    "headers",
    "body",
    "json",
    "version",
    "remote_addr",
    "host",
    "raw",
];

fn request_bytes(lua: &Lua, t: &Table) -> mlua::Result<(Vec<u8>, bool, SocketAddr)> {
    // A misspelt field would silently send `GET /`.
    for pair in t.pairs::<Value, Value>() {
        let (key, _) = pair?;
        let known =
            matches!(&key, Value::String(k) if REQUEST_FIELDS.contains(&&*k.to_string_lossy()));
        if !known {
            return Err(mlua::Error::runtime(format!(
                "unknown field {} (a request has: {})",
                match &key {
                    Value::String(k) => format!("'{}'", k.to_string_lossy()),
                    other => format!("of type {}", other.type_name()),
                },
                REQUEST_FIELDS.join(", ")
            )));
        }
    }
    if t.contains_key("json")? && t.contains_key("body")? {
        return Err(mlua::Error::runtime("give either body or json, not both"));
    }
    let peer = match t.get::<Option<String>>("remote_addr")? {
        Some(text) => parse_peer(&text)?,
        None => DEFAULT_PEER,
    };
    if let Some(raw) = t.get::<Option<mlua::String>>("raw")? {
        let bytes = raw.as_bytes().to_vec();
        let head = bytes.starts_with(b"HEAD ");
        return Ok((bytes, head, peer));
    }
    let method = t
        .get::<Option<String>>("method")?
        .unwrap_or_else(|| "GET".into());
    let mut target = t
        .get::<Option<String>>("path")?
        .unwrap_or_else(|| "/".into());
    match t.get::<Value>("query")? {
        Value::Nil => {}
        Value::String(query) => {
            target.push(if target.contains('?') { '&' } else { '?' });
            target.push_str(&query.to_str()?);
        }
        Value::Table(query) => {
            let mut pairs: Vec<(String, String)> = Vec::new();
            for pair in query.pairs::<String, Value>() {
                let (key, value) = pair?;
                for value in values(&value)? {
                    pairs.push((key.clone(), value));
                }
            }
            pairs.sort();
            for (i, (key, value)) in pairs.iter().enumerate() {
                let sep = if i == 0 && !target.contains('?') {
                    '?'
                } else {
                    '&'
                };
                target.push(sep);
                target.push_str(&percent_encode(key));
                target.push('=');
                target.push_str(&percent_encode(value));
            }
        }
        other => {
            return Err(mlua::Error::runtime(format!(
                "request: query is a string or a table, not a {}",
                other.type_name()
            )))
        }
    }
    let version = t
        .get::<Option<String>>("version")?
        .unwrap_or_else(|| "1.1".into());
    let mut headers = header_pairs(&t.get::<Value>("headers")?)?;
    let mut body = Vec::new();
    let mut has_body = false;
    if let Some(json) = t.get::<Option<Value>>("json")? {
        let keystone: Table = lua.globals().get("keystone")?;
        let encode: Function = keystone.get("json_encode")?;
        body = encode.call::<mlua::String>(json)?.as_bytes().to_vec();
        has_body = true;
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("Content-Type".into(), "application/json".into()));
        }
    }
    if let Some(text) = t.get::<Option<mlua::String>>("body")? {
        body = text.as_bytes().to_vec();
        has_body = true;
    }
    let framed = headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    });
    let host = version != "1.0"
        && t.get::<Option<bool>>("host")?.unwrap_or(true)
        && !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host"));
    let spec = RequestSpec {
        method: &method,
        target: &target,
        version: &version,
        headers: &headers,
        body: &body,
        content_length: has_body && !framed,
        host,
    };
    // Methods are case-sensitive (RFC 9110 §9.1): only `HEAD` is a HEAD.
    Ok((spec.write(), method == "HEAD", peer))
}

fn parse_peer(text: &str) -> mlua::Result<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip = text.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PEER.port()))
        .map_err(|_| {
            mlua::Error::runtime(format!(
                "request: remote_addr '{text}' is not an address like 10.0.0.7 or 10.0.0.7:5000"
            ))
        })
}

/// A header table's lines: `{ ["X-A"] = "1", ["X-B"] = { "2", "3" } }`,
/// sorted by name (a Lua table has no order; a sorted one is repeatable).
fn header_pairs(value: &Value) -> mlua::Result<Vec<(String, String)>> {
    let Value::Table(table) = value else {
        return match value {
            Value::Nil => Ok(Vec::new()),
            other => Err(mlua::Error::runtime(format!(
                "headers is a table, not a {}",
                other.type_name()
            ))),
        };
    };
    let mut pairs = Vec::new();
    for pair in table.pairs::<String, Value>() {
        let (name, value) = pair?;
        for value in values(&value)? {
            pairs.push((name.clone(), value));
        }
    }
    pairs.sort_by_key(|pair| pair.0.to_ascii_lowercase());
    // Bytes that would end the field line (or the head) are refused: a
    // header value must not smuggle a second header in.
    for (name, value) in &pairs {
        let bad_name = name.is_empty() || name.bytes().any(|b| b <= b' ' || b == b':' || b >= 0x7F);
        if bad_name || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(mlua::Error::runtime(format!(
                "header {name:?}: {}",
                if bad_name {
                    "not a valid field name"
                } else {
                    "the value holds CR, LF or NUL (use raw = ... for hand-made bytes)"
                }
            )));
        }
    }
    Ok(pairs)
}

/// A header or query value: a string, a number, or a list of them.
fn values(value: &Value) -> mlua::Result<Vec<String>> {
    match value {
        Value::String(s) => Ok(vec![s.to_str()?.to_string()]),
        Value::Integer(n) => Ok(vec![n.to_string()]),
        Value::Number(n) => Ok(vec![n.to_string()]),
        Value::Boolean(b) => Ok(vec![b.to_string()]),
        Value::Table(list) => {
            let mut out = Vec::new();
            for item in list.sequence_values::<Value>() {
                out.extend(values(&item?)?);
            }
            Ok(out)
        }
        other => Err(mlua::Error::runtime(format!(
            "a header or query value is a string, a number or a list, not a {}",
            other.type_name()
        ))),
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `res`: status, reason, version, headers (case-insensitive),
/// header_list, body, raw, rest, closed, complete; its metatable is
/// `keystone.Response`.
fn response_table(lua: &Lua, raw: &[u8], head: bool, closed: bool) -> mlua::Result<Table> {
    let keystone: Table = lua.globals().get("keystone")?;
    let res = lua.create_table()?;
    res.set("raw", lua.create_string(raw)?)?;
    res.set("closed", closed)?;
    let parsed = http::parse_response(raw, head).map_err(mlua::Error::runtime)?;
    match parsed {
        Some(parsed) => {
            res.set("status", parsed.status)?;
            res.set("reason", parsed.reason)?;
            res.set("version", parsed.version)?;
            res.set("headers", headers_table(lua, &keystone, &parsed.headers)?)?;
            res.set("header_list", header_list(lua, &parsed.headers)?)?;
            res.set("body", lua.create_string(&parsed.body)?)?;
            res.set("complete", parsed.complete)?;
            // What followed the first response (pipelined requests' answers).
            res.set(
                "rest",
                lua.create_string(&raw[parsed.len.min(raw.len())..])?,
            )?;
        }
        None => {
            // No response at all (the connection closed first): status is
            // nil, so `assert.equal(200, res.status)` says what happened.
            res.set("headers", headers_table(lua, &keystone, &[])?)?;
            res.set("header_list", lua.create_table()?)?;
            res.set("body", "")?;
            res.set("complete", false)?;
        }
    }
    if let Some(mt) = keystone.get::<Option<Table>>("Response")? {
        res.set_metatable(Some(mt))?;
    }
    Ok(res)
}

/// Lower-cased names; repeated fields joined with ", " (RFC 9110 §5.3).
fn headers_table(lua: &Lua, keystone: &Table, fields: &[(String, String)]) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    for (name, value) in fields {
        let name = name.to_ascii_lowercase();
        let joined = match table.raw_get::<Option<String>>(name.as_str())? {
            Some(before) => format!("{before}, {value}"),
            None => value.clone(),
        };
        table.raw_set(name, joined)?;
    }
    if let Some(mt) = keystone.get::<Option<Table>>("Headers")? {
        table.set_metatable(Some(mt))?;
    }
    Ok(table)
}

fn header_list(lua: &Lua, fields: &[(String, String)]) -> mlua::Result<Table> {
    let list = lua.create_table()?;
    for (name, value) in fields {
        let pair = lua.create_sequence_from([name.as_str(), value.as_str()])?;
        list.push(pair)?;
    }
    Ok(list)
}

/// The table a fake gets: method, target, path, query, headers,
/// header_list, body, raw.
fn forwarded_table(lua: &Lua, request: &ForwardedRequest) -> mlua::Result<Table> {
    let keystone: Table = lua.globals().get("keystone")?;
    let req = lua.create_table()?;
    req.set("method", request.method.as_str())?;
    req.set("target", request.target.as_str())?;
    req.set("path", request.path.as_str())?;
    // As `ctx.query`: "" when the target has none.
    req.set("query", request.query.as_deref().unwrap_or(""))?;
    req.set("peer", request.peer.as_str())?;
    req.set("headers", headers_table(lua, &keystone, &request.headers)?)?;
    req.set("header_list", header_list(lua, &request.headers)?)?;
    req.set("body", lua.create_string(&request.body)?)?;
    req.set("raw", lua.create_string(&request.raw)?)?;
    Ok(req)
}

/// A fake's return value as response bytes: a table `{ status, headers,
/// body }` (`body` a string, or a list of strings sent chunked; `raw`:
/// exact bytes), a string (200 with it as the body), a status number, or
/// nil/false (the connection closes unanswered).
fn answer_bytes(answer: &Value) -> Result<FakeAnswer, String> {
    let table = match answer {
        Value::Nil | Value::Boolean(false) => return Ok(FakeAnswer::Close),
        Value::String(body) => {
            let bytes = http::write_response(200, &[], &body.as_bytes(), None);
            return Ok(FakeAnswer::Bytes {
                bytes,
                close: false,
            });
        }
        Value::Integer(status) => {
            let bytes = http::write_response(status_of(*status)?, &[], b"", None);
            return Ok(FakeAnswer::Bytes {
                bytes,
                close: false,
            });
        }
        Value::Number(status) if status.fract() == 0.0 => {
            let bytes = http::write_response(status_of(*status as i64)?, &[], b"", None);
            return Ok(FakeAnswer::Bytes {
                bytes,
                close: false,
            });
        }
        Value::Table(table) => table,
        other => {
            return Err(format!(
            "returned a {}; return a table {{ status, headers, body }}, a string, a status or nil",
            other.type_name()
        ))
        }
    };
    let get = |key: &str| table.get::<Value>(key).map_err(|e| e.to_string());
    // `close = true`: the fake hangs up after its answer (a response framed
    // by the close, an HTTP/1.0 backend). A raw answer closes unless it
    // says `close = false`: its framing is the fake's own.
    let close = match get("close")? {
        Value::Boolean(close) => Some(close),
        Value::Nil => None,
        other => return Err(format!("close is a boolean, not a {}", other.type_name())),
    };
    if let Value::String(raw) = get("raw")? {
        return Ok(FakeAnswer::Bytes {
            bytes: raw.as_bytes().to_vec(),
            close: close.unwrap_or(true),
        });
    }
    let close = close.unwrap_or(false);
    let status = match get("status")? {
        Value::Nil => 200,
        Value::Integer(n) => status_of(n)?,
        Value::Number(n) if n.fract() == 0.0 => status_of(n as i64)?,
        other => return Err(format!("status is a number, not a {}", other.type_name())),
    };
    let headers = header_pairs(&get("headers")?).map_err(|e| e.to_string())?;
    let bytes = match get("body")? {
        Value::Nil => http::write_response(status, &headers, b"", None),
        Value::String(body) => http::write_response(status, &headers, &body.as_bytes(), None),
        Value::Table(chunks) => {
            let mut list = Vec::new();
            for chunk in chunks.sequence_values::<mlua::String>() {
                list.push(chunk.map_err(|e| e.to_string())?.as_bytes().to_vec());
            }
            http::write_response(status, &headers, b"", Some(&list))
        }
        other => {
            return Err(format!(
                "body is a string or a list of strings, not a {}",
                other.type_name()
            ))
        }
    };
    Ok(FakeAnswer::Bytes { bytes, close })
}

fn status_of(n: i64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(status) if (100..=999).contains(&status) => Ok(status),
        _ => Err(format!("status {n} is not an HTTP status (100-999)")),
    }
}

/// A Lua error's message, its traceback included when it has one.
pub fn message(err: &mlua::Error) -> String {
    match err {
        mlua::Error::RuntimeError(message) | mlua::Error::SyntaxError { message, .. } => {
            message.clone()
        }
        mlua::Error::CallbackError { traceback, cause } => {
            format!("{}\n{traceback}", message(cause))
        }
        other => other.to_string(),
    }
}
