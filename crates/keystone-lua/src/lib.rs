//! keystone-lua — expresses policy: the bridge between the engine and one
//! LuaJIT state per worker.
//!
//! Owns: the worker's Lua state, the trusted prelude that builds `ctx` over
//! the [`HttpExchange`] ABI through LuaJIT's FFI, the sandbox user code runs
//! in, the app (its routes compiled into a `keystone-router` table) and the
//! worker's exchange (boxed, its address handed to the prelude once).
//!
//! `ctx` has no verbs: handlers read fields (`ctx.method`, `ctx.params.id`,
//! `ctx.request.headers["host"]`) and assign state (`ctx.status`,
//! `ctx.headers[NAME]`, `ctx.body`). Request strings are made only when a
//! handler reads them (`ffi.string` over a span of the request buffer).
//!
//! Never depends on: keystone-response, keystone-reactor, keystone-ebpf,
//! keystone-server. Lua code never performs I/O: this crate hands the engine
//! an [`Outcome`], the engine commits it.

mod abi;
mod app;
mod budget;
mod config;

pub use app::{AppSource, LoadError, LoadedApp, UNSAFE_LUA_NOTICE};
pub use budget::interrupt_running_handler;
pub use config::{LuaConfig, DEFAULT_LUA_CPATH, DEFAULT_LUA_PATH};

use std::ptr::NonNull;

use keystone_exchange::HttpExchange;
use mlua::{Function, Lua};

/// A Lua string handle: keeps the string's bytes alive (LuaJIT never moves
/// strings) for as long as the engine holds it.
pub use mlua::String as BodyString;

/// What running a handler produced.
pub enum Outcome {
    /// The handler returned; the response state is in the exchange. `body`
    /// keeps the Lua string that `exchange.body_ptr` points into alive: drop
    /// it only after the bytes have been copied or sent.
    Done {
        /// The body string, if the handler set one.
        body: Option<mlua::String>,
    },
    /// The handler raised an error; `message` carries the Lua message with
    /// file:line and the traceback (for the log, never for the client).
    Failed {
        /// Error message and traceback.
        message: String,
    },
    /// The handler ran past its budget and was stopped
    /// ([`interrupt_running_handler`]).
    Stopped {
        /// Where it was stopped (message and traceback).
        message: String,
    },
}

/// One worker's Lua state and exchange. Not `Send`: it lives and dies on the
/// worker thread that created it (one Lua state per worker, never shared).
pub struct LuaWorker {
    // Field order is drop order: the Lua state (whose prelude holds the
    // exchange address) goes before the exchange it points at.
    lua: Lua,
    dispatch: Function,
    exchange: NonNull<HttpExchange>,
    worker: u32,
    /// The VM's main state, for the budget hook.
    state: *mut mlua::ffi::lua_State,
}

impl LuaWorker {
    /// The worker index this state belongs to.
    pub fn worker(&self) -> u32 {
        self.worker
    }

    /// The exchange, for binding a request and reading the response state.
    /// Borrowing `self` mutably proves no handler is running meanwhile.
    pub fn exchange_mut(&mut self) -> &mut HttpExchange {
        // SAFETY: `exchange` comes from `Box::into_raw` in `new` and is freed
        // only in `drop`; Lua touches it only inside `run`, which needs
        // `&mut self` too, so this borrow is exclusive.
        unsafe { self.exchange.as_mut() }
    }

    /// Shared view of the exchange.
    pub fn exchange(&self) -> &HttpExchange {
        // SAFETY: as in `exchange_mut`; shared borrows exclude `run`.
        unsafe { self.exchange.as_ref() }
    }

    /// Runs handler `handler` (an id the app's router returned) against the
    /// request bound in the exchange. Never panics on a handler error.
    pub fn run(&mut self, handler: u32) -> Outcome {
        debug_assert!(self.exchange().is_bound(), "run without a bound request");
        let running = budget::Running::enter(self.state);
        let result = self.dispatch.call::<(bool, mlua::Value)>(handler);
        if running.leave() {
            let message = match result {
                Ok((_, mlua::Value::String(s))) => s.to_string_lossy(),
                Ok(_) => budget::BUDGET_MESSAGE.to_string_lossy().into_owned(),
                Err(err) => err.to_string(),
            };
            return Outcome::Stopped { message };
        }
        match result {
            Ok((true, mlua::Value::String(body))) => Outcome::Done { body: Some(body) },
            Ok((true, _)) => Outcome::Done { body: None },
            Ok((false, err)) => Outcome::Failed {
                message: match err {
                    mlua::Value::String(s) => s.to_string_lossy(),
                    other => format!("{other:?}"),
                },
            },
            Err(err) => Outcome::Failed {
                message: err.to_string(),
            },
        }
    }

    /// Lua memory in use, in KiB (`collectgarbage("count")`), for reports.
    pub fn memory_kib(&self) -> f64 {
        self.lua.used_memory() as f64 / 1024.0
    }

    /// Runs a full garbage-collection cycle (used by tests and reports).
    pub fn collect_garbage(&self) {
        let _ = self.lua.gc_collect();
    }

    fn from_parts(
        lua: Lua,
        dispatch: Function,
        exchange: NonNull<HttpExchange>,
        worker: u32,
    ) -> Self {
        let mut state = std::ptr::null_mut();
        // SAFETY: the closure only copies the state pointer out; it stays
        // valid as long as `lua` lives, which is as long as this worker.
        let _ = unsafe { lua.exec_raw::<()>((), |s| state = s) };
        assert!(!state.is_null());
        LuaWorker {
            lua,
            dispatch,
            exchange,
            worker,
            state,
        }
    }
}

impl Drop for LuaWorker {
    fn drop(&mut self) {
        // SAFETY: `exchange` came from `Box::into_raw` and is freed once,
        // here. The Lua state may outlive this line (values such as
        // `dispatch` keep it alive) but nothing calls into it any more, and
        // the prelude's cdata pointer to the exchange has no finalizer, so
        // closing the state never reads the freed exchange.
        drop(unsafe { Box::from_raw(self.exchange.as_ptr()) });
    }
}
