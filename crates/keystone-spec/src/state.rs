//! The spec files' Lua state: plain LuaJIT with every standard library,
//! outside any sandbox, like busted's. The spec is the test, not the app:
//! the app it loads runs in its own state, sandboxed as `serve` runs it.

use mlua::Lua;

/// A fresh state for spec files.
pub fn spec_state() -> Lua {
    // SAFETY: mlua's unsafe mode only lifts its refusal to load C modules
    // (and exposes `ffi` and `debug`): `res:json()` uses lua-cjson when it
    // is installed, and spec files are trusted code the user runs on their
    // own machine, as busted runs them. Nothing here hands the state's
    // raw pointer to Rust code that could outlive it.
    unsafe { Lua::unsafe_new() }
}
