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
//! Never depends on: keystone-response, keystone-files, keystone-conn, keystone-app, keystone-reactor,
//! keystone-ebpf, keystone-ops, keystone-tls, keystone-spec, keystone-server. Lua code never performs
//! I/O: this crate hands the engine an [`Outcome`], the engine commits it.

mod abi;
mod app;
mod budget;
mod config;
mod cstack;
mod errors;
mod pulse;
mod upstreams;

pub use app::{
    AppSource, LoadError, LoadedApp, STATIC_HANDLER_BASE, STATIC_PATH_PARAM, UNSAFE_LUA_NOTICE,
};
pub use budget::interrupt_running_handler;
pub use config::{LuaConfig, DEFAULT_LUA_CPATH, DEFAULT_LUA_PATH};
pub use cstack::{C_STACK_MARGIN_BYTES, LUA_THREAD_STACK_BYTES};
pub use errors::{
    forget_sites as forget_error_sites, take_repeats as take_repeated_errors, Repeats, ERROR_WINDOW,
};
pub use pulse::{Pulse, Watchdog};

use std::mem::ManuallyDrop;
use std::ptr::NonNull;

use keystone_exchange::HttpExchange;
use keystone_ringbuf::PinnedBytes;
use mlua::{Function, Lua};

/// What running a handler produced.
pub enum Outcome {
    /// The handler returned; the response state is in the exchange. The
    /// body `exchange.body_ptr` points at stays valid until the next `run`
    /// (or, once pinned with [`LuaWorker::pin_body`], until unpinned).
    Done,
    /// The handler raised an error. `message` carries the Lua message with
    /// file:line and the traceback (for the log, never for the client) when
    /// it is the first failure at its site in the error window; `None` for
    /// a repeat, which is only counted (`take_repeated_errors`), so a
    /// failing route costs neither a traceback nor a log line per request.
    Failed {
        /// Error message and traceback, or `None` for a counted repeat.
        message: Option<String>,
    },
    /// The handler ran past its budget and was stopped
    /// ([`interrupt_running_handler`]).
    Stopped {
        /// Where it was stopped (message and traceback).
        message: String,
    },
}

/// What pulling a stream generator produced.
pub enum Pull {
    /// A chunk: the generator's string, kept referenced by the prelude
    /// until the next pull or unpin under the same key (possibly empty).
    Chunk(PinnedBytes),
    /// The generator returned nil: the stream is complete.
    End,
    /// The generator raised an error (or ran past its budget).
    Failed {
        /// Error message and traceback.
        message: String,
    },
}

/// One worker's Lua state and exchange. Not `Send`: it lives and dies on the
/// worker thread that created it (one Lua state per worker, never shared).
pub struct LuaWorker {
    // Field order is drop order: the Lua state (whose prelude holds the
    // exchange address) goes before the exchange it points at.
    lua: ManuallyDrop<Lua>,
    /// The prelude's `dispatch`, as the registry reference
    /// [`LuaWorker::run`] calls through the C API (the registry keeps the
    /// function alive until the state closes).
    dispatch_ref: std::ffi::c_int,
    pin: ManuallyDrop<Function>,
    pull: ManuallyDrop<Function>,
    respond: ManuallyDrop<Function>,
    exchange: NonNull<HttpExchange>,
    worker: u32,
    /// The VM's main state: LuaJIT's own (see `LoadedApp::load_with`),
    /// closed by this worker's `Drop` after the mlua handles above.
    state: *mut mlua::ffi::lua_State,
    /// This state's number among all made in the process (error sites are
    /// per app version: a reloaded app's failures are its own).
    generation: u64,
}

/// Numbers the Lua states made (see `LuaWorker::generation`).
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl LuaWorker {
    /// The worker index this state belongs to.
    pub fn worker(&self) -> u32 {
        self.worker
    }

    /// Tells this state apart from the others alive at the same time (after
    /// a reload, the retired one still feeds the streams it started).
    pub fn id(&self) -> usize {
        self.state as usize
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
        errors::begin(self.generation, handler);
        let result = self.call_dispatch(handler);
        let traced = errors::end();
        if running.leave() {
            let message = match result {
                Dispatched::Failed(Some(message)) | Dispatched::Raised(message) => message,
                _ => budget::BUDGET_MESSAGE.to_string_lossy().into_owned(),
            };
            return Outcome::Stopped { message };
        }
        match result {
            Dispatched::Done => Outcome::Done,
            Dispatched::Failed(_) if !traced => Outcome::Failed { message: None },
            Dispatched::Failed(message) => Outcome::Failed {
                message: Some(message.unwrap_or_else(|| "handler failed".to_owned())),
            },
            Dispatched::Raised(message) => Outcome::Failed {
                message: Some(message),
            },
        }
    }

    /// Calls the prelude's `dispatch(handler)` with LuaJIT's C API, not
    /// through an mlua handle: no registry-thread moves, no result
    /// conversion, no lock, on the path every request takes (the mlua call
    /// was 6 % of a pipelined request's user time). The stack is left as
    /// found.
    fn call_dispatch(&mut self, handler: u32) -> Dispatched {
        use mlua::ffi;
        let state = self.state;
        // SAFETY: `state` is this worker's open main state and no mlua call
        // is running on it (`&mut self`); the stack grows by three slots at
        // most (the function, its argument, then two results), within
        // LUA_MINSTACK, and is reset to `top` before returning.
        // `dispatch_ref` holds the prelude's dispatch function in the
        // registry for the state's whole life (`from_parts`).
        unsafe {
            let top = ffi::lua_gettop(state);
            ffi::lua_rawgeti(
                state,
                ffi::LUA_REGISTRYINDEX,
                ffi::lua_Integer::from(self.dispatch_ref),
            );
            ffi::lua_pushinteger(state, ffi::lua_Integer::from(handler));
            let status = ffi::lua_pcall(state, 1, 2, 0);
            let result = if status != ffi::LUA_OK {
                // Only an engine-side failure lands here (out of memory,
                // or the budget hook's error raised outside the handler's
                // own xpcall): the prelude catches the handler's errors.
                Dispatched::Raised(
                    stack_string(state, -1).unwrap_or_else(|| "dispatch failed".to_owned()),
                )
            } else if ffi::lua_toboolean(state, top + 1) != 0 {
                Dispatched::Done
            } else if errors::traced() || budget::interrupted() {
                Dispatched::Failed(stack_string(state, top + 2))
            } else {
                // A counted repeat: its message is never read, so it is
                // not copied (a failing route costs no allocation).
                Dispatched::Failed(None)
            };
            ffi::lua_settop(state, top);
            result
        }
    }

    /// Keeps the body of the last `run` alive under `slot` (a connection's) after later runs, for a body sent straight from Lua's memory;
    /// returns the view of its bytes (the string, or a file body's path;
    /// empty for a generator, which [`LuaWorker::pull`] then feeds). The
    /// bytes do not move: LuaJIT never moves strings. They stay valid until
    /// [`LuaWorker::unpin_body`] with the same slot.
    pub fn pin_body(&mut self, slot: u32) -> Result<PinnedBytes, String> {
        self.pin
            .call::<()>((slot, true))
            .map_err(|err| err.to_string())?;
        Ok(self.body_view())
    }

    /// The exchange's current response body as a pinned view.
    fn body_view(&self) -> PinnedBytes {
        let exchange = self.exchange();
        let Some(body) = exchange.response_body() else {
            return PinnedBytes::empty();
        };
        // SAFETY: the body is the Lua string the prelude just referenced
        // under the pin key (`pinned[key]` or `pulled[key]`), which keeps it
        // alive until the next pull or `unpin_body` of that key; LuaJIT never
        // moves or changes strings.
        unsafe { PinnedBytes::new(body.as_ptr(), body.len()) }
    }

    /// Pulls one chunk from the stream generator pinned under `slot` (with
    /// [`LuaWorker::pin_body`] after a handler set `ctx.body = function`).
    /// The chunk is the exchange's `response_body()` until the next pull.
    /// Runs under the same budget as handlers.
    pub fn pull(&mut self, slot: u32) -> Pull {
        let running = budget::Running::enter(self.state);
        let result = self.pull.call::<(i32, Option<mlua::String>)>(slot);
        if running.leave() {
            return Pull::Failed {
                message: budget::BUDGET_MESSAGE.to_string_lossy().into_owned(),
            };
        }
        match result {
            Ok((1, _)) => Pull::Chunk(self.body_view()),
            Ok((0, _)) => Pull::End,
            Ok((_, message)) => Pull::Failed {
                message: message
                    .map_or_else(|| "stream failed".to_owned(), |s| s.to_string_lossy()),
            },
            Err(err) => Pull::Failed {
                message: err.to_string(),
            },
        }
    }

    /// Releases what [`LuaWorker::pin_body`] kept under `slot`. Failing to
    /// release (out of memory in the VM) only delays freeing the string.
    pub fn unpin_body(&mut self, slot: u32) {
        let _ = self.pin.call::<()>((slot, false));
    }

    /// Keeps the `ctx.on_response` the last `run` set under `slot`, for
    /// when the upstream's head arrives ([`LuaWorker::run_hook`]).
    pub fn pin_hook(&mut self, slot: u32) {
        let _ = self
            .respond
            .call::<(bool, Option<mlua::String>)>((slot, "pin"));
    }

    /// Lets the `ctx.on_response` kept under `slot` go unrun (the client
    /// left before the upstream answered).
    pub fn drop_hook(&mut self, slot: u32) {
        let _ = self
            .respond
            .call::<(bool, Option<mlua::String>)>((slot, "drop"));
    }

    /// Runs the `ctx.on_response` kept under `slot` against the request and
    /// the upstream's answer bound in the exchange, under the handlers'
    /// budget; like [`LuaWorker::run`], never panics on an error in it.
    pub fn run_hook(&mut self, slot: u32) -> Outcome {
        debug_assert!(
            self.exchange().has_upstream_response(),
            "run_hook without an answer"
        );
        let running = budget::Running::enter(self.state);
        let result = self
            .respond
            .call::<(bool, Option<mlua::String>)>((slot, "run"));
        if running.leave() {
            return Outcome::Stopped {
                message: budget::BUDGET_MESSAGE.to_string_lossy().into_owned(),
            };
        }
        match result {
            Ok((true, _)) => Outcome::Done,
            Ok((false, err)) => Outcome::Failed {
                message: Some(
                    err.map_or_else(|| "on_response failed".to_owned(), |s| s.to_string_lossy()),
                ),
            },
            Err(err) => Outcome::Failed {
                message: Some(err.to_string()),
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

    /// Stops the collector (`false`) or lets it run again (`true`): while it
    /// is stopped, [`LuaWorker::memory_kib`] grows by exactly what runs
    /// allocate (used by tests that count a handler's allocations).
    pub fn set_collecting(&self, collecting: bool) {
        if collecting {
            self.lua.gc_restart();
        } else {
            self.lua.gc_stop();
        }
    }

    fn from_parts(
        lua: Lua,
        [dispatch, pin, pull, respond]: [Function; 4],
        state: *mut mlua::ffi::lua_State,
        exchange: NonNull<HttpExchange>,
        worker: u32,
    ) -> Self {
        assert!(!state.is_null());
        // SAFETY: `exec_raw` pushes `dispatch` onto the state's stack and
        // runs the closure protected; `luaL_ref` pops it into the registry
        // (where it stays until `lua_close`) and the pushed integer is the
        // closure's one result.
        let dispatch_ref = unsafe {
            lua.exec_raw::<std::ffi::c_int>(&dispatch, |state| {
                let reference = mlua::ffi::luaL_ref(state, mlua::ffi::LUA_REGISTRYINDEX);
                mlua::ffi::lua_pushinteger(state, mlua::ffi::lua_Integer::from(reference));
            })
        }
        .expect("the registry takes a reference to dispatch");
        drop(dispatch);
        LuaWorker {
            lua: ManuallyDrop::new(lua),
            dispatch_ref,
            pin: ManuallyDrop::new(pin),
            pull: ManuallyDrop::new(pull),
            respond: ManuallyDrop::new(respond),
            exchange,
            worker,
            state,
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl Drop for LuaWorker {
    fn drop(&mut self) {
        // SAFETY: each field is dropped exactly once, here, in the order the
        // state needs: mlua handles first (they unreference into the state),
        // then the state itself (no mlua value made from it is left: bodies
        // the engine pinned are released before a worker is dropped), then
        // the exchange the prelude pointed at (the closed state cannot read
        // it any more; its cdata pointer had no finalizer).
        unsafe {
            ManuallyDrop::drop(&mut self.pin);
            ManuallyDrop::drop(&mut self.pull);
            ManuallyDrop::drop(&mut self.respond);
            ManuallyDrop::drop(&mut self.lua);
            mlua::ffi::lua_close(self.state);
            drop(Box::from_raw(self.exchange.as_ptr()));
        }
    }
}

/// What the prelude's `dispatch` returned.
enum Dispatched {
    /// `true`: the response is in the exchange.
    Done,
    /// `false` and the handler's error (with its traceback when the error
    /// window wants one; a repeat may come without).
    Failed(Option<String>),
    /// `dispatch` itself raised (the prelude never does for a handler's
    /// error): the message.
    Raised(String),
}

/// The string (or number) at `index` of `state`'s stack, copied.
///
/// # Safety
/// `state` is an open state and `index` a valid stack index.
unsafe fn stack_string(state: *mut mlua::ffi::lua_State, index: std::ffi::c_int) -> Option<String> {
    let mut len = 0;
    // SAFETY: per this function's contract; lua_tolstring returns NULL for a
    // value that is neither a string nor a number, else `len` bytes that
    // stay valid while the value is on the stack (they are copied here).
    unsafe {
        let ptr = mlua::ffi::lua_tolstring(state, index, &mut len);
        if ptr.is_null() {
            return None;
        }
        let bytes = std::slice::from_raw_parts(ptr.cast::<u8>(), len);
        Some(String::from_utf8_lossy(bytes).into_owned())
    }
}
