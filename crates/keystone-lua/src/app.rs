//! Loading an app: the prelude, the sandbox, the app chunk, and its routes
//! compiled into a router whose handler ids index the Lua handler table.

use std::fmt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use keystone_exchange::HttpExchange;
use keystone_router::{RouteError, Router, RouterBuilder};
use mlua::{Function, LightUserData, Lua, Table, Value};

use crate::config::{LuaConfig, SearchPaths};
use crate::{abi, LuaWorker};

const PRELUDE: &str = include_str!("prelude.lua");
const SANDBOX: &str = include_str!("sandbox.lua");

/// Top-level fields an app table may have; anything else is a typo we
/// report instead of silently serving nothing.
const APP_FIELDS: [&str; 6] = [
    "routes",
    "init_worker",
    "rocks_trees",
    "allow_c_modules",
    "static",
    "upstreams",
];

/// An app's source, read once by the main thread and shared immutably with
/// every worker (each compiles it into its own Lua state).
#[derive(Clone, Debug)]
pub struct AppSource {
    /// Path shown in error messages and chunk names (`file:line`).
    pub path: PathBuf,
    /// Directory searched first by `require`; `None` for bundled apps.
    pub dir: Option<PathBuf>,
    /// The Lua source text.
    pub text: Arc<str>,
}

impl AppSource {
    /// Reads an app file.
    pub fn read(path: &Path) -> Result<AppSource, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .map(Path::to_path_buf);
        Ok(AppSource {
            path: path.to_path_buf(),
            dir,
            text: text.into(),
        })
    }

    /// An app compiled into the binary.
    pub fn bundled(name: &str, text: &'static str) -> AppSource {
        AppSource {
            path: PathBuf::from(name),
            dir: None,
            text: text.into(),
        }
    }
}

/// Why an app did not load. Every variant names the file; Lua errors carry
/// `file:line` from LuaJIT itself.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read.
    Read {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The chunk failed to compile or run (message has file:line).
    Lua {
        /// LuaJIT's message.
        message: String,
    },
    /// The chunk ran but did not return a valid app table.
    Shape {
        /// The app path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A route key was rejected by the router.
    Route {
        /// The app path.
        path: PathBuf,
        /// The router's error.
        source: RouteError,
    },
    /// The engine's own prelude failed (a bug, reported as such).
    Engine {
        /// The error.
        message: String,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, source } => {
                write!(f, "cannot read app {}: {source}", path.display())
            }
            LoadError::Lua { message } => write!(f, "{message}"),
            LoadError::Shape { path, message } => write!(f, "{}: {message}", path.display()),
            LoadError::Route { path, source } => write!(f, "{}: {source}", path.display()),
            LoadError::Engine { message } => write!(f, "keystone prelude failed: {message}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// A loaded app for one worker: its Lua state and its routes.
pub struct LoadedApp {
    /// The worker's Lua state and exchange.
    pub lua: LuaWorker,
    /// Routes; handler ids are what [`LuaWorker::run`] takes.
    pub router: Router,
    /// Route keys in the order they were compiled (sorted), for `check`.
    pub routes: Vec<String>,
    /// Static directories: (URL prefix, directory), longest prefix first.
    pub statics: Vec<(String, PathBuf)>,
    /// Upstream pools (`upstreams`), sorted by name, peers resolved.
    pub upstreams: Vec<keystone_upstream::PoolConfig>,
    /// Where `ctx.body = { file = ... }` paths are resolved (confined to
    /// it): the app's directory, or the working directory for bundled apps.
    pub files_dir: PathBuf,
}

/// Closes a LuaJIT state if loading fails before a `LuaWorker` owns it.
/// Declared before the `Lua` handle and every value made from it, so it is
/// dropped after them.
struct StateGuard(*mut mlua::ffi::lua_State);

impl StateGuard {
    fn new() -> StateGuard {
        // SAFETY: plain constructors; the result is checked before use.
        let state = unsafe { mlua::ffi::luaL_newstate() };
        assert!(
            !state.is_null(),
            "LuaJIT could not create a state (out of memory)"
        );
        // SAFETY: `state` is a fresh state; opening the standard libraries
        // (ffi and jit included) is what the trusted prelude needs.
        unsafe { mlua::ffi::luaL_openlibs(state) };
        StateGuard(state)
    }

    fn release(self) -> *mut mlua::ffi::lua_State {
        let state = self.0;
        std::mem::forget(self);
        state
    }
}

impl Drop for StateGuard {
    fn drop(&mut self) {
        // SAFETY: the state is open and every mlua handle made from it was
        // declared after this guard, so it has been dropped already.
        unsafe { mlua::ffi::lua_close(self.0) };
    }
}

/// Frees the exchange if loading fails before a `LuaWorker` owns it.
struct ExchangeGuard(NonNull<HttpExchange>);

impl Drop for ExchangeGuard {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::into_raw` and ownership was not
        // passed on (success forgets the guard).
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

fn engine(err: mlua::Error) -> LoadError {
    LoadError::Engine {
        message: err.to_string(),
    }
}

fn lua_message(err: mlua::Error) -> String {
    match err {
        mlua::Error::SyntaxError { message, .. } => message,
        mlua::Error::RuntimeError(message) => message,
        mlua::Error::CallbackError { traceback, cause } => format!("{cause}\n{traceback}"),
        other => other.to_string(),
    }
}

fn lua_error(err: mlua::Error) -> LoadError {
    LoadError::Lua {
        message: lua_message(err),
    }
}

impl LoadedApp {
    /// Loads `source` into a fresh Lua state for worker `worker` with
    /// [`LuaConfig::from_env`] (sandbox on, no rocks trees or C modules from
    /// the command line, `LUA_PATH`/`LUA_CPATH` honoured); `log` receives
    /// the lines handlers `print`.
    pub fn load(
        source: &AppSource,
        worker: u32,
        log: impl Fn(&str) + 'static,
    ) -> Result<LoadedApp, LoadError> {
        LoadedApp::load_with(source, worker, &LuaConfig::from_env(), log)
    }

    /// Loads `source` into a fresh Lua state for worker `worker` with the
    /// engine's Lua options: rocks trees and allowed C modules from the
    /// command line, the sandbox switch, `LUA_PATH`/`LUA_CPATH`. Runs the
    /// chunk, reads the app table (`routes`, `init_worker`, `rocks_trees`,
    /// `allow_c_modules`), compiles the routes, then runs `init_worker`.
    ///
    /// Loading again for the same worker while an earlier `LoadedApp`
    /// lives is fine (hot reload): each has its own state and exchange.
    pub fn load_with(
        source: &AppSource,
        worker: u32,
        config: &LuaConfig,
        log: impl Fn(&str) + 'static,
    ) -> Result<LoadedApp, LoadError> {
        LoadedApp::load_budgeted(source, worker, config, log, None)
    }

    /// [`LoadedApp::load_with`], with the app's own code — its chunk and
    /// `init_worker` — run under the handler budget of `pulse` (the
    /// worker's): a load that loops forever is stopped by the watchdog like
    /// a handler, and fails with the budget error and its traceback; the
    /// old app, if any, goes on. `None`: no budget (nothing samples it).
    pub fn load_budgeted(
        source: &AppSource,
        worker: u32,
        config: &LuaConfig,
        log: impl Fn(&str) + 'static,
        pulse: Option<&crate::Pulse>,
    ) -> Result<LoadedApp, LoadError> {
        let guard = ExchangeGuard(NonNull::from(Box::leak(HttpExchange::new_boxed(worker))));
        // The state is created by LuaJIT itself (`luaL_newstate`), so Lua
        // objects live in LuaJIT's own allocator (mmap'd arenas), not the
        // Rust heap: the engine's zero-allocation proof stays about Rust,
        // and Lua memory is reported separately (`memory_kib`).
        let state = StateGuard::new();
        // SAFETY: `state.0` is a fresh, open state; mlua wraps it without
        // owning it (it never closes it: `StateGuard`, then `LuaWorker`,
        // does, after every mlua handle is gone). The state is in mlua's
        // unsafe mode (C modules and ffi allowed): the prelude needs ffi;
        // user code never reaches it because it runs in the sandbox
        // environment built below, which holds neither `ffi` nor `require`
        // of C modules that are not allowed. `--unsafe-lua`
        // (`config.unsafe_lua`) hands user code the real globals on purpose.
        let lua = unsafe { Lua::get_or_init_from_ptr(state.0) }.clone();
        let (dispatch, register, pin, pull, respond) = init_prelude(&lua, guard.0)?;
        let dir = source.dir.as_deref();
        let paths = SearchPaths::build(config, dir, &[]).map_err(|e| shape(source, e.message))?;
        let user = if config.unsafe_lua {
            log(UNSAFE_LUA_NOTICE);
            UserCode::unsafe_globals(&lua, &paths, log)?
        } else {
            UserCode::sandbox(&lua, &paths, &config.allow_c_modules, log)?
        };
        let chunk = lua
            .load(&*source.text)
            .set_name(format!("@{}", source.path.display()));
        let chunk = match &user {
            UserCode::Sandbox { env, .. } => chunk.set_environment(env.clone()),
            UserCode::Unsafe => chunk,
        };
        let returned = UserCall::enter(pulse, state.0).run(|| chunk.call(()));
        let app = AppTable::read(source, returned.map_err(lua_error)?, config)?;
        if !app.rocks_trees.is_empty() || !app.allow_c_modules.is_empty() {
            let paths = SearchPaths::build(config, dir, &app.rocks_trees)
                .map_err(|e| shape(source, e.message))?;
            user.configure(&lua, &paths, &app.allow_c_modules)?;
        }
        let statics = app.statics;
        let upstreams = app.upstreams;
        let (router, routes, handlers) = compile_routes(&lua, source, app.routes, &statics)?;
        let pool_names = lua
            .create_sequence_from(upstreams.iter().map(|pool| pool.name.as_str()))
            .map_err(engine)?;
        register
            .call::<()>((handlers, pool_names))
            .map_err(engine)?;
        if let Some(init_worker) = app.init_worker {
            UserCall::enter(pulse, state.0)
                .run(|| init_worker.call::<()>(worker))
                .map_err(|err| LoadError::Lua {
                    message: format!(
                        "init_worker failed on worker {worker}: {}",
                        lua_message(err)
                    ),
                })?;
        }
        let exchange = guard.0;
        std::mem::forget(guard);
        let state = state.release();
        Ok(LoadedApp {
            lua: LuaWorker::from_parts(
                lua,
                [dispatch, pin, pull, respond],
                state,
                exchange,
                worker,
            ),
            router,
            routes,
            statics,
            upstreams,
            files_dir: source.dir.clone().unwrap_or_else(|| PathBuf::from(".")),
        })
    }
}

/// The app's own code running during a load, under the budget when there
/// is a pulse: the pulse says "inside Lua" (odd) and the state is the one
/// a budget signal interrupts, as for a handler.
struct UserCall<'a> {
    pulse: Option<&'a crate::Pulse>,
    state: *mut mlua::ffi::lua_State,
}

impl<'a> UserCall<'a> {
    fn enter(pulse: Option<&'a crate::Pulse>, state: *mut mlua::ffi::lua_State) -> UserCall<'a> {
        UserCall { pulse, state }
    }

    fn run<T>(self, call: impl FnOnce() -> T) -> T {
        let Some(pulse) = self.pulse else {
            return call();
        };
        pulse.enter_handler();
        let running = crate::budget::Running::enter(self.state);
        let result = call();
        running.leave();
        pulse.leave_handler();
        result
    }
}

/// What `--unsafe-lua` writes to the log at every load.
pub const UNSAFE_LUA_NOTICE: &str = "keystone: --unsafe-lua: the Lua sandbox is OFF; app code \
runs with the real globals (io, os, debug, ffi, jit, require of any module, C modules included)";

/// Where user code runs: the sandbox environment, or (`--unsafe-lua`) the
/// real globals.
enum UserCode {
    Sandbox {
        env: Table,
        /// `configure(lua_templates, c_templates, allowed)` from sandbox.lua.
        configure: Function,
    },
    Unsafe,
}

impl UserCode {
    fn sandbox(
        lua: &Lua,
        paths: &SearchPaths,
        allowed: &[String],
        log: impl Fn(&str) + 'static,
    ) -> Result<UserCode, LoadError> {
        let new_env: Function = lua
            .load(SANDBOX)
            .set_name("=keystone-sandbox")
            .eval()
            .map_err(engine)?;
        let (lua_templates, c_templates) = templates(lua, paths)?;
        let allowed = lua
            .create_sequence_from(allowed.iter().map(String::as_str))
            .map_err(engine)?;
        let (env, configure) = new_env
            .call((log_function(lua, log)?, lua_templates, c_templates, allowed))
            .map_err(engine)?;
        Ok(UserCode::Sandbox { env, configure })
    }

    fn unsafe_globals(
        lua: &Lua,
        paths: &SearchPaths,
        log: impl Fn(&str) + 'static,
    ) -> Result<UserCode, LoadError> {
        let print: Function = lua
            .load(LOG_PRINT)
            .set_name("=keystone-print")
            .call(log_function(lua, log)?)
            .map_err(engine)?;
        lua.globals().set("print", print).map_err(engine)?;
        let user = UserCode::Unsafe;
        user.configure(lua, paths, &[])?;
        Ok(user)
    }

    /// Replaces the search paths and adds allowed C modules (the sandbox
    /// only: without it every module may load).
    fn configure(
        &self,
        lua: &Lua,
        paths: &SearchPaths,
        allowed: &[String],
    ) -> Result<(), LoadError> {
        match self {
            UserCode::Sandbox { configure, .. } => {
                let (lua_templates, c_templates) = templates(lua, paths)?;
                let allowed = lua
                    .create_sequence_from(allowed.iter().map(String::as_str))
                    .map_err(engine)?;
                configure
                    .call::<()>((lua_templates, c_templates, allowed))
                    .map_err(engine)
            }
            UserCode::Unsafe => {
                let package: Table = lua.globals().get("package").map_err(engine)?;
                package.set("path", paths.lua.join(";")).map_err(engine)?;
                package.set("cpath", paths.c.join(";")).map_err(engine)
            }
        }
    }
}

/// `print` over the log for `--unsafe-lua` (the sandbox builds its own).
const LOG_PRINT: &str = r##"
local log = ...
local select, tostring, concat = select, tostring, table.concat
return function(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  log(concat(parts, "\t"))
end
"##;

fn log_function(lua: &Lua, log: impl Fn(&str) + 'static) -> Result<Function, LoadError> {
    lua.create_function(move |_, line: mlua::String| {
        log(&line.to_string_lossy());
        Ok(())
    })
    .map_err(engine)
}

fn templates(lua: &Lua, paths: &SearchPaths) -> Result<(Table, Table), LoadError> {
    let lua_templates = lua
        .create_sequence_from(paths.lua.iter().map(String::as_str))
        .map_err(engine)?;
    let c_templates = lua
        .create_sequence_from(paths.c.iter().map(String::as_str))
        .map_err(engine)?;
    Ok((lua_templates, c_templates))
}

fn init_prelude(
    lua: &Lua,
    exchange: NonNull<HttpExchange>,
) -> Result<(Function, Function, Function, Function, Function), LoadError> {
    let init: Function = lua
        .load(PRELUDE)
        .set_name("=keystone-prelude")
        .eval()
        .map_err(engine)?;
    let address = LightUserData(exchange.as_ptr().cast());
    let args = (
        address,
        abi::functions(lua).map_err(engine)?,
        abi::layout(lua).map_err(engine)?,
        abi::messages(lua).map_err(engine)?,
    );
    init.call(args).map_err(engine)
}

fn shape(source: &AppSource, message: String) -> LoadError {
    LoadError::Shape {
        path: source.path.clone(),
        message,
    }
}

/// The app table's known fields, checked.
struct AppTable {
    routes: Table,
    init_worker: Option<Function>,
    rocks_trees: Vec<PathBuf>,
    allow_c_modules: Vec<String>,
    statics: Vec<(String, PathBuf)>,
    upstreams: Vec<keystone_upstream::PoolConfig>,
}

impl AppTable {
    fn read(source: &AppSource, app: Value, config: &LuaConfig) -> Result<AppTable, LoadError> {
        let Value::Table(app) = app else {
            return Err(shape(
                source,
                format!(
                    "the app must return a table with `routes`, got {}",
                    app.type_name()
                ),
            ));
        };
        for pair in app.pairs::<Value, Value>() {
            let (key, _) = pair.map_err(lua_error)?;
            let known =
                matches!(&key, Value::String(s) if APP_FIELDS.contains(&&*s.to_string_lossy()));
            if !known {
                let key = match &key {
                    Value::String(s) => format!("\"{}\"", s.to_string_lossy()),
                    other => format!("{other:?}"),
                };
                return Err(shape(
                    source,
                    format!(
                        "the app table has an unknown field {key} (known: {})",
                        APP_FIELDS.join(", ")
                    ),
                ));
            }
        }
        let routes = match app.get::<Value>("routes").map_err(lua_error)? {
            Value::Table(t) => t,
            Value::Nil => return Err(shape(source, "the app table has no `routes` table".into())),
            other => {
                return Err(shape(
                    source,
                    format!("`routes` must be a table, got {}", other.type_name()),
                ))
            }
        };
        let init_worker = match app.get::<Value>("init_worker").map_err(lua_error)? {
            Value::Function(f) => Some(f),
            Value::Nil => None,
            other => {
                return Err(shape(
                    source,
                    format!(
                        "`init_worker` must be a function(worker), got {}",
                        other.type_name()
                    ),
                ))
            }
        };
        let rocks_trees = string_list(source, &app, "rocks_trees")?
            .into_iter()
            .map(PathBuf::from)
            .collect();
        let allow_c_modules = string_list(source, &app, "allow_c_modules")?;
        let statics = static_dirs(source, &app)?;
        let upstreams =
            crate::upstreams::read_upstreams(&app, source.dir.as_deref(), config.unresolved_peers)
                .map_err(|message| shape(source, message))?;
        Ok(AppTable {
            routes,
            init_worker,
            rocks_trees,
            allow_c_modules,
            statics,
            upstreams,
        })
    }
}

/// Field `field` of the app table when it is a table; absent is `None`;
/// anything else is an error saying what was `expected`.
fn optional_table(
    source: &AppSource,
    app: &Table,
    field: &str,
    expected: &str,
) -> Result<Option<Table>, LoadError> {
    match app.get::<Value>(field).map_err(lua_error)? {
        Value::Table(t) => Ok(Some(t)),
        Value::Nil => Ok(None),
        other => Err(shape(
            source,
            format!("`{field}` must be {expected}, got {}", other.type_name()),
        )),
    }
}

/// `static = { ["/assets/"] = "./public" }`: URL prefixes served from
/// directories (relative to the app's directory), longest prefix first.
fn static_dirs(source: &AppSource, app: &Table) -> Result<Vec<(String, PathBuf)>, LoadError> {
    let expected = "a table of \"/prefix/\" = \"directory\"";
    let Some(table) = optional_table(source, app, "static", expected)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for pair in table.pairs::<Value, Value>() {
        let (prefix, dir) = pair.map_err(lua_error)?;
        let (Value::String(prefix), Value::String(dir)) = (&prefix, &dir) else {
            return Err(shape(
                source,
                "`static` maps URL prefixes (strings) to directories (strings)".into(),
            ));
        };
        let prefix = prefix.to_string_lossy();
        if !prefix.starts_with('/') {
            return Err(shape(
                source,
                format!("static prefix \"{prefix}\" must start with '/'"),
            ));
        }
        let written = PathBuf::from(dir.to_string_lossy());
        let dir = match &source.dir {
            // An app in the working directory: its paths as written, never
            // `././public`.
            Some(base) if !written.is_absolute() && base != Path::new(".") => base.join(&written),
            _ => written,
        };
        if !dir.is_dir() {
            return Err(shape(
                source,
                format!("static[\"{prefix}\"]: {} is not a directory", dir.display()),
            ));
        }
        // `"/a"` and `"/a/"` name one location: two directories for it
        // would leave one never served (nginx: "duplicate location").
        let location = prefix.trim_end_matches('/');
        if let Some((other, _)) = out
            .iter()
            .find(|(other, _): &&(String, PathBuf)| other.trim_end_matches('/') == location)
        {
            return Err(shape(
                source,
                format!(
                    "static prefixes \"{other}\" and \"{prefix}\" name the same location: keep one"
                ),
            ));
        }
        out.push((prefix, dir));
    }
    out.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// Field `field` of the app table as a list of strings; absent is empty.
fn string_list(source: &AppSource, app: &Table, field: &str) -> Result<Vec<String>, LoadError> {
    let Some(list) = optional_table(source, app, field, "a list of strings")? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for pair in list.pairs::<Value, Value>() {
        let (key, value) = pair.map_err(lua_error)?;
        let index = match key {
            Value::Integer(i) if i >= 1 => i,
            other => {
                return Err(shape(
                    source,
                    format!("`{field}` must be a list, but has the key {other:?}"),
                ))
            }
        };
        let Value::String(text) = value else {
            return Err(shape(
                source,
                format!(
                    "{field}[{index}] must be a string, got {}",
                    value.type_name()
                ),
            ));
        };
        out.push((index, text.to_string_lossy()));
    }
    out.sort();
    Ok(out.into_iter().map(|(_, text)| text).collect())
}

fn compile_routes(
    lua: &Lua,
    source: &AppSource,
    routes: Table,
    statics: &[(String, PathBuf)],
) -> Result<(Router, Vec<String>, Table), LoadError> {
    let mut entries = Vec::new();
    for pair in routes.pairs::<Value, Value>() {
        let (key, handler) = pair.map_err(lua_error)?;
        let Value::String(key) = key else {
            return Err(shape(
                source,
                format!(
                    "route keys must be strings like \"GET /\", got {}",
                    key.type_name()
                ),
            ));
        };
        let key = key.to_string_lossy();
        let Value::Function(handler) = handler else {
            return Err(shape(
                source,
                format!(
                    "routes[\"{key}\"] must be a function, got {}",
                    handler.type_name()
                ),
            ));
        };
        entries.push((key, handler));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let handlers = lua.create_table().map_err(engine)?;
    let mut builder = RouterBuilder::new();
    let mut keys = Vec::with_capacity(entries.len());
    for (index, (key, handler)) in entries.into_iter().enumerate() {
        let id = index as u32 + 1;
        builder
            .add(&key, id)
            .map_err(|source_err| LoadError::Route {
                path: source.path.clone(),
                source: source_err,
            })?;
        handlers.set(id, handler).map_err(engine)?;
        keys.push(key);
    }
    for (index, (prefix, _)) in statics.iter().enumerate() {
        add_static_routes(
            &mut builder,
            source,
            prefix,
            STATIC_HANDLER_BASE + index as u32,
        )?;
    }
    Ok((builder.build(), keys, handlers))
}

/// Handler ids from here on are static directories (`static[i]` is
/// `STATIC_HANDLER_BASE + i`), never Lua handlers.
pub const STATIC_HANDLER_BASE: u32 = 1 << 31;

/// The parameter a static route's catch-all binds: the path below the
/// prefix.
pub const STATIC_PATH_PARAM: &str = "keystone_static_path";

/// A static prefix becomes two router entries: the prefix itself (the
/// directory's index) and `prefix{*path}` (every path below it), for GET
/// (HEAD follows GET; other methods get 405 with `Allow: GET, HEAD`). A Lua
/// route with the same key wins (its entry is kept, the static one
/// skipped); a more specific Lua route below the prefix wins too, as the
/// longest location wins in nginx. A prefix without a trailing `/` is
/// treated as the directory `prefix/`.
fn add_static_routes(
    builder: &mut RouterBuilder,
    source: &AppSource,
    prefix: &str,
    handler: u32,
) -> Result<(), LoadError> {
    let directory = prefix.trim_end_matches('/');
    let exact = format!("GET {directory}/");
    let below = format!("GET {directory}/{{*{STATIC_PATH_PARAM}}}");
    // `["/assets"]` also answers `/assets` itself (the index), as its
    // prefix did; `["/assets/"]` does not.
    let bare =
        (!prefix.ends_with('/') && !directory.is_empty()).then(|| format!("GET {directory}"));
    for key in [Some(&exact), Some(&below), bare.as_ref()]
        .into_iter()
        .flatten()
    {
        match builder.add(key, handler) {
            Ok(()) | Err(RouteError::Duplicate { .. }) => {}
            Err(source_err) => {
                return Err(LoadError::Route {
                    path: source.path.clone(),
                    source: source_err,
                })
            }
        }
    }
    Ok(())
}
