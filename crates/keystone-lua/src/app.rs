//! Loading an app: the prelude, the sandbox, the app chunk, and its routes
//! compiled into a router whose handler ids index the Lua handler table.

use std::fmt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use keystone_exchange::HttpExchange;
use keystone_router::{RouteError, Router, RouterBuilder};
use mlua::{Function, LightUserData, Lua, LuaOptions, StdLib, Table, Value};

use crate::{abi, LuaWorker};

const PRELUDE: &str = include_str!("prelude.lua");
const SANDBOX: &str = include_str!("sandbox.lua");

/// Top-level fields an app table may have; anything else is a typo we
/// report instead of silently serving nothing.
const APP_FIELDS: [&str; 1] = ["routes"];

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

fn lua_error(err: mlua::Error) -> LoadError {
    let message = match err {
        mlua::Error::SyntaxError { message, .. } => message,
        mlua::Error::RuntimeError(message) => message,
        mlua::Error::CallbackError { traceback, cause } => format!("{cause}\n{traceback}"),
        other => other.to_string(),
    };
    LoadError::Lua { message }
}

impl LoadedApp {
    /// Loads `source` into a fresh Lua state for worker `worker`; `log`
    /// receives the lines handlers `print`.
    pub fn load(
        source: &AppSource,
        worker: u32,
        log: impl Fn(&str) + 'static,
    ) -> Result<LoadedApp, LoadError> {
        let guard = ExchangeGuard(NonNull::from(Box::leak(HttpExchange::new_boxed(worker))));
        // SAFETY: `unsafe_new_with` allows C modules and the ffi library.
        // The prelude needs ffi; user code never reaches it because it runs
        // in the sandbox environment built below, which holds neither `ffi`
        // nor `require` of C modules.
        let lua = unsafe { Lua::unsafe_new_with(StdLib::ALL, LuaOptions::new()) };
        let (dispatch, register) = init_prelude(&lua, guard.0)?;
        let env = new_sandbox(&lua, source, log)?;
        let app: Value = lua
            .load(&*source.text)
            .set_name(format!("@{}", source.path.display()))
            .set_environment(env)
            .call(())
            .map_err(lua_error)?;
        let (router, routes, handlers) = compile_routes(&lua, source, app)?;
        register.call::<()>(handlers).map_err(engine)?;
        let exchange = guard.0;
        std::mem::forget(guard);
        Ok(LoadedApp {
            lua: LuaWorker::from_parts(lua, dispatch, exchange, worker),
            router,
            routes,
        })
    }
}

fn init_prelude(
    lua: &Lua,
    exchange: NonNull<HttpExchange>,
) -> Result<(Function, Function), LoadError> {
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

fn new_sandbox(
    lua: &Lua,
    source: &AppSource,
    log: impl Fn(&str) + 'static,
) -> Result<Table, LoadError> {
    let new_env: Function = lua
        .load(SANDBOX)
        .set_name("=keystone-sandbox")
        .eval()
        .map_err(engine)?;
    let log = lua
        .create_function(move |_, line: mlua::String| {
            log(&line.to_string_lossy());
            Ok(())
        })
        .map_err(engine)?;
    let search_path = match &source.dir {
        Some(dir) => format!("{0}/?.lua;{0}/?/init.lua", dir.display()),
        None => String::new(),
    };
    new_env.call((log, search_path)).map_err(engine)
}

fn shape(source: &AppSource, message: String) -> LoadError {
    LoadError::Shape {
        path: source.path.clone(),
        message,
    }
}

fn compile_routes(
    lua: &Lua,
    source: &AppSource,
    app: Value,
) -> Result<(Router, Vec<String>, Table), LoadError> {
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
        let known = matches!(&key, Value::String(s) if APP_FIELDS.contains(&&*s.to_string_lossy()));
        if !known {
            return Err(shape(
                source,
                format!("the app table has an unknown field {key:?} (known: routes)"),
            ));
        }
    }
    let routes: Table = match app.get::<Value>("routes").map_err(lua_error)? {
        Value::Table(t) => t,
        Value::Nil => return Err(shape(source, "the app table has no `routes` table".into())),
        other => {
            return Err(shape(
                source,
                format!("`routes` must be a table, got {}", other.type_name()),
            ))
        }
    };
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
    Ok((builder.build(), keys, handlers))
}
