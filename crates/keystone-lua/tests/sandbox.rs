//! The sandbox against escape attempts: each row is handler code that tries
//! to leave the sandbox (read a file, run a command, reach `ffi`, load
//! bytecode, reach the real globals) and the fragment of the error it must
//! be refused with. All rows run in one Lua state, each followed by a
//! request that checks the state (and the trusted prelude) still works.

mod support;

use keystone_lua::{LuaConfig, UNSAFE_LUA_NOTICE};
use support::{get, load, source, try_load};

/// (handler code, fragment of the error it must raise).
const ESCAPES: &[(&str, &str)] = &[
    // Files and processes.
    (
        "return io.open('/etc/passwd'):read('*a')",
        "global 'io' (a nil value)",
    ),
    ("dofile('/etc/passwd')", "global 'dofile' (a nil value)"),
    ("loadfile('/etc/passwd')", "global 'loadfile' (a nil value)"),
    ("os.execute('id')", "field 'execute' (a nil value)"),
    ("os.getenv('HOME')", "field 'getenv' (a nil value)"),
    ("os.exit(1)", "field 'exit' (a nil value)"),
    ("os.remove('/tmp/x')", "field 'remove' (a nil value)"),
    (
        "package.path = '/etc/?'; require('passwd')",
        "package.path is computed by keystone",
    ),
    (
        "package.cpath = '/tmp/?.so'",
        "package.cpath is computed by keystone",
    ),
    (
        "rawset(package, 'path', '/etc/?'); require('passwd')",
        "module 'passwd' not found",
    ),
    (
        "require('/etc/passwd\\0')",
        "module name contains a NUL byte",
    ),
    (
        "package.loadlib('/usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so', 'luaopen_cjson')",
        "field 'loadlib' (a nil value)",
    ),
    // FFI, debug, jit, and other built-in modules.
    (
        "require 'ffi'",
        "module 'ffi' is not available in the Keystone sandbox",
    ),
    (
        "require 'debug'",
        "module 'debug' is not available in the Keystone sandbox",
    ),
    (
        "require 'io'",
        "module 'io' is not available in the Keystone sandbox",
    ),
    (
        "require 'jit'",
        "module 'jit' is not available in the Keystone sandbox",
    ),
    (
        "require 'jit.util'",
        "module 'jit.util' is not available in the Keystone sandbox",
    ),
    (
        "require 'string.buffer'",
        "module 'string.buffer' is not available",
    ),
    ("jit.off()", "global 'jit' (a nil value)"),
    ("debug.getinfo(1)", "global 'debug' (a nil value)"),
    ("return ffi.C", "global 'ffi' (a nil value)"),
    (
        "coroutine.wrap(require)('ffi')",
        "module 'ffi' is not available",
    ),
    // Bytecode.
    (
        "assert(loadstring(string.dump(function() end)))",
        "bytecode is not allowed",
    ),
    (
        "assert(load(string.dump(function() end)))",
        "bytecode is not allowed",
    ),
    (
        "local d, i = string.dump(function() end), 0
         assert(load(function() i = i + 1; if i <= #d then return d:sub(i, i) end end))",
        "bytecode is not allowed",
    ),
    (
        "assert(loadstring('#!/bin/sh\\n' .. string.dump(function() end)))",
        "bytecode",
    ),
    (
        "assert(loadstring('\\239\\187\\191' .. string.dump(function() end)))",
        "bytecode",
    ),
    (
        "assert(load(function() return {} end))",
        "reader function must return a string",
    ),
    // `load`'s mode and environment are honoured, never a way back to
    // bytecode or to the real globals.
    (
        "assert(load(string.dump(function() end), 'x', 'bt', {}))",
        "bytecode is not allowed",
    ),
    (
        "assert(load('return 1', 'x', 'b'))",
        "allows no source text",
    ),
    (
        "return load('return 1', 'x', 't', 5)",
        "bad argument #4 to 'load'",
    ),
    (
        "return load('return io', 'x', 't', {})().open",
        "attempt to index a nil value",
    ),
    (
        "assert(load(function() return ('x'):rep(1024 * 1024) end))",
        "reader returned more than",
    ),
    // The real globals through environments.
    ("return getfenv(0)", "global 'getfenv' (a nil value)"),
    ("return getfenv(1)", "global 'getfenv' (a nil value)"),
    ("return getfenv(print)", "global 'getfenv' (a nil value)"),
    ("setfenv(1, {})", "global 'setfenv' (a nil value)"),
    (
        "return coroutine.wrap(function() return getfenv(0) end)()",
        "global 'getfenv' (a nil value)",
    ),
    (
        "return rawget(getmetatable(''), '__index').io.open",
        "attempt to index a nil value",
    ),
    // The shared string metatable.
    (
        "getmetatable('').__index = { }",
        "the string metatable is read-only",
    ),
    (
        "getmetatable('').__metatable = nil",
        "the string metatable is read-only",
    ),
    (
        "setmetatable(getmetatable(''), nil)",
        "cannot change a protected metatable",
    ),
    (
        "return getmetatable('').__index.ffi.C",
        "field 'ffi' (a nil value)",
    ),
    // Coroutines: a handler cannot suspend the engine's call.
    ("coroutine.yield()", "attempt to yield"),
    // Finalizers (they would run during the state's close) and the GC.
    ("newproxy(true)", "global 'newproxy' (a nil value)"),
    (
        "collectgarbage('stop')",
        "only collectgarbage('count') is available",
    ),
    // The trusted side's package.loaded holds ffi, io and the real _G.
    ("return package.loaded.ffi.C", "field 'ffi' (a nil value)"),
    ("return package.loaded.io.open", "field 'io' (a nil value)"),
    (
        "return package.loaded._G.io.open",
        "field 'io' (a nil value)",
    ),
    (
        "return getmetatable(package).__index",
        "attempt to index a boolean value",
    ),
    // Loops between modules are reported, not followed.
    (
        "package.preload.a = function() return require 'b' end
         package.preload.b = function() return require 'a' end
         require 'a'",
        "loop loading module 'a'",
    ),
];

fn escapes_app() -> String {
    let mut app = String::from("return { routes = {\n");
    app.push_str(
        "[\"GET /ok\"] = function(ctx)
           ctx.headers['X-Check'] = ('%d'):format(7)
           ctx.body = ctx.method .. ' ' .. ctx.path .. ' ' .. string.upper('ok') .. ' '
             .. ('abc'):sub(2) .. ' ' .. tostring(ctx.headers['x-check'])
         end,\n",
    );
    for (index, (code, _)) in ESCAPES.iter().enumerate() {
        app.push_str(&format!(
            "[\"GET /escape/{index}\"] = function(ctx)\n{code}\nend,\n"
        ));
    }
    app.push_str("} }\n");
    app
}

#[test]
fn escapes_are_refused_and_the_state_keeps_working() {
    let (mut app, _log) = load(&source(&escapes_app()), &LuaConfig::default());
    assert_eq!(get(&mut app, "/ok").unwrap(), "GET /ok OK bc 7");
    for (index, (code, expected)) in ESCAPES.iter().enumerate() {
        let result = get(&mut app, &format!("/escape/{index}"));
        let err = result
            .err()
            .unwrap_or_else(|| panic!("not refused: {code}"));
        assert!(
            err.contains(expected),
            "{code}\nexpected {expected:?} in:\n{err}"
        );
        assert!(!err.contains("root:"), "{code} leaked /etc/passwd: {err}");
        assert_eq!(
            get(&mut app, "/ok").unwrap(),
            "GET /ok OK bc 7",
            "after {code}"
        );
    }
}

/// What the sandbox holds and lacks, read from inside, in one report.
/// `load(chunk, name, mode, env)` runs the chunk in `env` (as LuaJIT's
/// does; template engines build their environments this way), the
/// sandbox's own without it.
#[test]
fn load_runs_a_chunk_in_the_environment_it_is_given() {
    let (mut app, _log) = load(
        &source(
            r##"return { routes = { ["GET /"] = function(ctx)
              local view = { greeting = "hello" }
              local f = assert(load("return greeting, tostring", "=view", "t", view))
              local greeting, tostring_seen = f()
              local g = assert(load(function() return nil end, "=empty"))
              local h = assert(load("return type(string.rep)", "=plain"))
              ctx.body = greeting .. " " .. tostring(tostring_seen) .. " " .. select("#", g()) .. " " .. h()
            end } }"##,
        ),
        &LuaConfig::default(),
    );
    assert_eq!(get(&mut app, "/").unwrap(), "hello nil 0 function");
}

#[test]
fn sandbox_inventory() {
    let (mut app, log) = load(
        &source(
            r#"return { routes = { ["GET /"] = function(ctx)
              local out = {}
              local function check(name, ok) if not ok then out[#out + 1] = name end end
              for _, name in ipairs({ "io", "debug", "ffi", "jit", "dofile", "loadfile", "module",
                  "getfenv", "setfenv", "newproxy", "gcinfo" }) do
                check("no " .. name, _G[name] == nil)
              end
              check("os is time/clock/date", os.execute == nil and type(os.time()) == "number"
                and type(os.clock()) == "number" and type(os.date("%Y")) == "string")
              check("_G is the sandbox", _G._G == _G and package.loaded._G == _G)
              check("string via require", require("string") == string and package.loaded.string == string)
              check("string metatable stand-in", getmetatable("").__index == string)
              check("methods work", ("a,b"):find(",", 1, true) == 2)
              check("no trusted modules", package.loaded.ffi == nil and package.loaded.jit == nil
                and package.loaded.debug == nil and package.loaded.io == nil)
              check("table.new", type(require("table.new")) == "function")
              check("no loadlib", package.loadlib == nil)
              check("package metatable hidden", getmetatable(package) == false)
              check("gc count", type(collectgarbage("count")) == "number")
              check("source load", loadstring("return 1 + 1")() == 2 and load("return 3")() == 3)
              local parts = { "return ", "4" }
              check("reader load", load(function() return table.remove(parts, 1) end)() == 4)
              local f = loadstring("x_from_load = 5")
              f()
              check("load runs in the sandbox", x_from_load == 5)
              -- Mutating the library copies affects user code only.
              string.upper = nil
              getmetatable("").__index.lower = nil
              check("methods unaffected", ("A"):lower() == "a")
              print("inventory", #out)
              ctx.body = table.concat(out, "; ")
            end } }"#,
        ),
        &LuaConfig::default(),
    );
    assert_eq!(get(&mut app, "/").unwrap(), "");
    assert_eq!(log.borrow().as_slice(), ["inventory\t0"]);
    // The library copies are the app's own: the prelude does not use them.
    assert_eq!(get(&mut app, "/").unwrap(), "");
}

#[test]
fn unsafe_lua_hands_out_the_real_globals_and_says_so() {
    let config = LuaConfig {
        unsafe_lua: true,
        ..LuaConfig::default()
    };
    let (mut app, log) = load(
        &source(
            r#"local ffi = require "ffi"
            return { routes = { ["GET /"] = function(ctx)
              print("unsafe")
              ctx.body = type(io.open) .. " " .. type(ffi.C) .. " " .. type(os.getenv)
                .. " " .. type(getfenv(0).debug) .. " " .. tostring(getmetatable("").__index == string)
            end } }"#,
        ),
        &config,
    );
    assert_eq!(
        get(&mut app, "/").unwrap(),
        "function userdata function table true"
    );
    assert_eq!(log.borrow().as_slice(), [UNSAFE_LUA_NOTICE, "unsafe"]);
    // The sandbox, by contrast, refuses the same chunk at load time.
    let err = try_load(
        &source("local ffi = require 'ffi'\nreturn { routes = {} }"),
        &LuaConfig::default(),
    )
    .err()
    .unwrap();
    assert!(
        err.contains("test_app.lua:1: module 'ffi' is not available"),
        "{err}"
    );
    assert!(err.contains("--unsafe-lua"), "{err}");
}

#[test]
fn chunk_level_escapes_fail_the_load_with_file_line() {
    for (code, expected) in [
        ("io.open('/etc/passwd')", "test_app.lua:1:"),
        ("require 'debug'", "test_app.lua:1: module 'debug'"),
        ("getfenv(0).io.open('/etc/passwd')", "test_app.lua:1:"),
    ] {
        let err = try_load(
            &source(&format!("{code}\nreturn {{ routes = {{}} }}")),
            &LuaConfig::default(),
        )
        .err()
        .unwrap_or_else(|| panic!("loaded: {code}"));
        assert!(err.contains(expected), "{code}: {err}");
    }
}
