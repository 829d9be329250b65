//! Stopping runaway handlers. LuaJIT runs hooks only in the interpreter
//! unless it is built with `LUAJIT_ENABLE_CHECKHOOK`, which makes compiled
//! traces check, at every loop iteration, whether a hook has been set
//! *asynchronously*. Keystone builds LuaJIT that way (`.cargo/config.toml`)
//! and sets no hook while handlers run normally, so the JIT runs at full
//! speed; when the server's watchdog sees a handler exceed its budget it
//! signals the worker thread, whose signal handler calls
//! [`interrupt_running_handler`]: that sets a count hook (LuaJIT documents
//! `lua_sethook` as safe to call from a signal handler) which raises an
//! error after [`HOOK_INSTRUCTIONS`] instructions — with a traceback, for
//! the log — and, if a `pcall` swallowed that one, then on *every*
//! instruction until the handler unwinds, so
//! a `pcall` inside the handler cannot swallow it: a periodic count would
//! land at the same place of a `while true do pcall(f) end` loop forever.

use std::cell::Cell;
use std::ptr::null_mut;

use mlua::ffi;

/// Instructions between two budget errors once a handler is interrupted:
/// small enough that a `pcall` loop cannot make real progress, large
/// enough that the prelude's error path (a handful of instructions) finishes.
pub const HOOK_INSTRUCTIONS: i32 = 1000;

/// The message a stopped handler fails with.
pub const BUDGET_MESSAGE: &std::ffi::CStr =
    c"handler exceeded its time budget (runaway Lua code stopped)";

thread_local! {
    /// The Lua state running a handler on this thread, null between
    /// handlers. Const-initialised, no destructor: plain TLS, readable from
    /// a signal handler.
    static RUNNING: Cell<*mut ffi::lua_State> = const { Cell::new(null_mut()) };
    /// Set when the hook was installed for the handler now running.
    static INTERRUPTED: Cell<bool> = const { Cell::new(false) };
    /// Budget errors raised in the handler now running.
    static FIRINGS: Cell<u32> = const { Cell::new(0) };
}

/// Stops the handler running on this thread, if any. Async-signal-safe:
/// call it from the worker thread's signal handler.
pub fn interrupt_running_handler() {
    let state = RUNNING.with(Cell::get);
    if state.is_null() {
        return;
    }
    INTERRUPTED.with(|i| i.set(true));
    // SAFETY: `state` belongs to the VM running on this thread (set by
    // `Running::enter` and cleared before that VM can be dropped), and
    // LuaJIT's `lua_sethook` is documented as callable asynchronously.
    unsafe {
        ffi::lua_sethook(
            state,
            Some(budget_hook),
            ffi::LUA_MASKCOUNT,
            HOOK_INSTRUCTIONS,
        )
    };
}

/// The count hook [`interrupt_running_handler`] sets: raises "handler
/// exceeded its time budget" in the interrupted handler, and from its second
/// firing on re-arms itself on every instruction, so a `pcall` loop cannot
/// swallow the error.
///
/// # Safety
/// Only LuaJIT calls it, as a hook: `state` is the VM running on this thread,
/// inside a protected call (the prelude's `xpcall` or mlua's `pcall` around
/// `dispatch` and `pull`), so `lua_error` unwinds through VM frames only,
/// and the hook's guaranteed `LUA_MINSTACK` slots hold the two values pushed.
unsafe extern "C-unwind" fn budget_hook(state: *mut ffi::lua_State, _debug: *mut ffi::lua_Debug) {
    let firings = FIRINGS.with(|f| {
        f.set(f.get() + 1);
        f.get()
    });
    // SAFETY: called by LuaJIT with its running state. Re-arming a hook
    // from inside a hook is allowed; raising an error from a hook unwinds
    // to the nearest protected call (the prelude's xpcall, or mlua's pcall
    // around `dispatch`), through VM frames only; the stack has room for
    // the two values pushed (LUA_MINSTACK is guaranteed to a hook).
    unsafe {
        if firings > 1 {
            // The first error was swallowed by a pcall: from now on every
            // instruction fails.
            ffi::lua_sethook(state, Some(budget_hook), ffi::LUA_MASKCOUNT, 1);
        }
        // Level 0 is the function the hook interrupted: its file:line.
        ffi::luaL_where(state, 0);
        ffi::lua_pushstring(state, BUDGET_MESSAGE.as_ptr());
        ffi::lua_concat(state, 2);
        ffi::lua_error(state);
    }
}

/// Marks a handler as running on this thread for the duration of a call.
/// Whether the running handler was interrupted (its budget ran out).
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.with(Cell::get)
}

pub(crate) struct Running {
    state: *mut ffi::lua_State,
}

impl Running {
    pub(crate) fn enter(state: *mut ffi::lua_State) -> Running {
        debug_assert!(!state.is_null());
        if INTERRUPTED.with(Cell::get) {
            clear(state); // a late signal for the previous handler
        }
        RUNNING.with(|r| r.set(state));
        Running { state }
    }

    /// Ends the call; returns whether the handler was interrupted.
    pub(crate) fn leave(self) -> bool {
        RUNNING.with(|r| r.set(null_mut()));
        let interrupted = INTERRUPTED.with(Cell::get);
        if interrupted {
            clear(self.state);
        }
        interrupted
    }
}

fn clear(state: *mut ffi::lua_State) {
    // SAFETY: `state` is a live VM on this thread; no handler runs now.
    unsafe { ffi::lua_sethook(state, None, 0, 0) };
    INTERRUPTED.with(|i| i.set(false));
    FIRINGS.with(|f| f.set(0));
}
