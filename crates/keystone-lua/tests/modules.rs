//! Module resolution with LuaRocks semantics, in the sandbox: the app's
//! directory first, `--rocks-tree` trees, the app table's `rocks_trees`,
//! `LUA_PATH`/`LUA_CPATH` with `;;`, precise errors, C modules behind the
//! allow-list (Debian's lua-cjson), and our own rock built with `luarocks
//! make` into a temporary tree.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use keystone_lua::{AppSource, LuaConfig, DEFAULT_LUA_CPATH, DEFAULT_LUA_PATH};
use support::{get, load, source, temp_dir, try_load, workspace_root, write_files};

/// Debian's lua-cjson, on LuaJIT's default C path.
#[cfg(target_arch = "x86_64")]
const CJSON_SO: &str = "/usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so";
#[cfg(not(target_arch = "x86_64"))]
const CJSON_SO: &str = "/usr/lib/aarch64-linux-gnu/lua/5.1/cjson.so";

fn app_in(dir: &Path, text: &str) -> AppSource {
    write_files(dir, &[("app.lua", text)]);
    AppSource::read(&dir.join("app.lua")).unwrap()
}

fn tree_module(tree: &Path, module_path: &str, text: &str) {
    write_files(tree, &[(&format!("share/lua/5.1/{module_path}"), text)]);
}

/// True when lua-cjson's C module is installed; fails the test otherwise
/// (false, printed, only under `KEYSTONE_SKIP_MISSING_TOOLS=1`).
fn cjson_present() -> bool {
    support::tools::require_file(Path::new(CJSON_SO), "Debian package lua-cjson")
}

#[test]
fn app_directory_comes_first_then_cli_trees() {
    let dir = temp_dir("order");
    let tree = dir.join("tree");
    write_files(
        &dir,
        &[
            ("shadowed.lua", "return 'app dir'"),
            ("pkg/init.lua", "return { name = 'pkg from init.lua' }"),
        ],
    );
    tree_module(&tree, "shadowed.lua", "return 'tree'");
    tree_module(&tree, "deep/mod.lua", "return 'deep.mod from the tree'");
    tree_module(&tree, "deep/init/init.lua", "return 'deep.init'");
    let app = app_in(
        &dir,
        r#"local a, b, c = require "shadowed", require "pkg", require "deep.mod"
        return { routes = { ["GET /"] = function(ctx)
          ctx.body = a .. "|" .. b.name .. "|" .. c .. "|" .. require("deep.init")
            .. "|" .. tostring(require("pkg") == b)
        end } }"#,
    );
    let config = LuaConfig {
        rocks_trees: vec![tree.clone()],
        ..LuaConfig::default()
    };
    let (mut app, _) = load(&app, &config);
    assert_eq!(
        get(&mut app, "/").unwrap(),
        "app dir|pkg from init.lua|deep.mod from the tree|deep.init|true"
    );
}

#[test]
fn app_table_trees_apply_after_the_chunk() {
    let dir = temp_dir("app-trees");
    tree_module(
        &dir.join("lua_modules"),
        "late.lua",
        "return { value = 'late' }",
    );
    let app = app_in(
        &dir,
        r#"local early_ok, early_err = pcall(require, "late")
        local from_init
        return {
          rocks_trees = { "lua_modules" },
          init_worker = function() from_init = require("late").value end,
          routes = { ["GET /"] = function(ctx)
            ctx.body = tostring(early_ok) .. "|" .. from_init .. "|" .. require("late").value
              .. "|" .. tostring(early_err:find("lua_modules/share/lua/5.1/late.lua", 1, true) == nil)
              .. "|" .. tostring(package.path:find("lua_modules/share/lua/5.1/?.lua", 1, true) ~= nil)
          end },
        }"#,
    );
    let (mut app, _) = load(&app, &LuaConfig::default());
    assert_eq!(get(&mut app, "/").unwrap(), "false|late|late|true|true");
}

#[test]
fn lua_path_double_semicolon_is_the_default() {
    let dir = temp_dir("lua-path");
    write_files(&dir, &[("env/envmod.lua", "return 'from LUA_PATH'")]);
    let config = LuaConfig {
        lua_path: Some(format!("{}/env/?.lua;;", dir.display())),
        lua_cpath: Some(format!("{}/cenv/?.so", dir.display())),
        ..LuaConfig::default()
    };
    let (mut app, _) = load(
        &source(
            r#"local m = require "envmod"
            return { routes = { ["GET /"] = function(ctx)
              local ok, err = pcall(require, "absent")
              ctx.body = m .. "\n" .. err
            end } }"#,
        ),
        &config,
    );
    let body = get(&mut app, "/").unwrap();
    assert!(body.starts_with("from LUA_PATH\n"), "{body}");
    // `;;` put the default after the env entry; LUA_CPATH without `;;`
    // replaces the default C path.
    let env_entry = format!("no file '{}/env/absent.lua'", dir.display());
    let default_entry = "no file '/usr/share/lua/5.1/absent.lua'";
    let env_at = body.find(&env_entry).unwrap_or_else(|| panic!("{body}"));
    let default_at = body.find(default_entry).unwrap_or_else(|| panic!("{body}"));
    assert!(env_at < default_at, "{body}");
    assert!(
        body.contains(&format!("no file '{}/cenv/absent.so'", dir.display())),
        "{body}"
    );
    assert!(!body.contains("/usr/lib/lua/5.1/absent.so"), "{body}");
}

#[test]
fn missing_module_lists_every_path_tried() {
    let dir = temp_dir("missing");
    let tree = dir.join("tree");
    let app = app_in(
        &dir,
        "local m = require 'no.such.mod'\nreturn { routes = {} }",
    );
    let config = LuaConfig {
        rocks_trees: vec![tree.clone()],
        ..LuaConfig::default()
    };
    let err = try_load(&app, &config).err().unwrap();
    assert!(
        err.contains("app.lua:1: module 'no.such.mod' not found:"),
        "{err}"
    );
    assert!(
        err.contains("no field package.preload['no.such.mod']"),
        "{err}"
    );
    let d = dir.display();
    let t = tree.display();
    let mut expected = vec![
        format!("{d}/no/such/mod.lua"),
        format!("{d}/no/such/mod/init.lua"),
        format!("{t}/share/lua/5.1/no/such/mod.lua"),
        format!("{t}/share/lua/5.1/no/such/mod/init.lua"),
    ];
    expected.extend(
        DEFAULT_LUA_PATH
            .split(';')
            .map(|template| template.replace('?', "no/such/mod")),
    );
    expected.push(format!("{d}/no/such/mod.so"));
    expected.push(format!("{t}/lib/lua/5.1/no/such/mod.so"));
    expected.extend(
        DEFAULT_LUA_CPATH
            .split(';')
            .map(|template| template.replace('?', "no/such/mod")),
    );
    // The all-in-one loader looks for the root name in the C path.
    expected.extend(
        DEFAULT_LUA_CPATH
            .split(';')
            .map(|template| template.replace('?', "no")),
    );
    let mut at = 0;
    for path in &expected {
        let line = format!("no file '{path}'");
        let found = err[at..]
            .find(&line)
            .unwrap_or_else(|| panic!("{line} missing or out of order in:\n{err}"));
        at += found + line.len();
    }
}

#[test]
fn module_errors_are_precise() {
    let dir = temp_dir("module-errors");
    write_files(
        &dir,
        &[
            ("broken.lua", "local x = 1\nreturn {,}\n"),
            (
                "fails.lua",
                "count = (count or 0) + 1\nerror('module failed ' .. count)\n",
            ),
            ("dumped.lua", "\x1bLJ\x02 not really bytecode"),
        ],
    );
    let app = app_in(
        &dir,
        r#"return { routes = {
          ["GET /broken"] = function(ctx) require "broken" end,
          ["GET /fails"] = function(ctx) require "fails" end,
          ["GET /fails-again"] = function(ctx) require "fails" end,
          ["GET /dumped"] = function(ctx) require "dumped" end,
        } }"#,
    );
    let (mut app, _) = load(&app, &LuaConfig::default());
    let err = get(&mut app, "/broken").unwrap_err();
    assert!(
        err.contains("app.lua:2: error loading module 'broken' from file '"),
        "{err}"
    );
    assert!(
        err.contains("broken.lua:2: unexpected symbol near ','"),
        "{err}"
    );
    let err = get(&mut app, "/fails").unwrap_err();
    assert!(err.contains("fails.lua:2: module failed 1"), "{err}");
    // A failed module is not cached: requiring it again runs it again
    // (from another route: a repeat at the same site within a second is
    // counted, not reported).
    let err = get(&mut app, "/fails-again").unwrap_err();
    assert!(err.contains("fails.lua:2: module failed 2"), "{err}");
    let err = get(&mut app, "/dumped").unwrap_err();
    assert!(err.contains("error loading module 'dumped'"), "{err}");
    assert!(err.contains("bytecode is not allowed"), "{err}");
}

#[test]
fn c_module_needs_allowing() {
    if !cjson_present() {
        return;
    }
    let app = source(
        "local cjson = require 'cjson'\nreturn { routes = { ['GET /'] = function(ctx) end } }",
    );
    let err = try_load(&app, &LuaConfig::default()).err().unwrap();
    assert!(
        err.contains(&format!(
            "test_app.lua:1: module 'cjson' is a C module ({CJSON_SO})"
        )),
        "{err}"
    );
    assert!(err.contains("allow_c_modules = { \"cjson\" }"), "{err}");
    assert!(err.contains("--allow-c-module cjson"), "{err}");
    // Allowing another name does not allow this one.
    let config = LuaConfig {
        allow_c_modules: vec!["cjson.safe".into()],
        ..LuaConfig::default()
    };
    assert!(try_load(&app, &config).is_err());
}

#[test]
fn c_module_allowed_from_the_command_line_loads_at_chunk_level() {
    if !cjson_present() {
        return;
    }
    let config = LuaConfig {
        allow_c_modules: vec!["cjson".into()],
        ..LuaConfig::default()
    };
    let (mut app, _) = load(
        &source(
            r#"local cjson = require "cjson"
            return { routes = { ["GET /"] = function(ctx)
              ctx.body = cjson.encode({ 1, "two", { three = true } }) .. "|"
                .. cjson.decode('{"a":[1,2]}').a[2] .. "|" .. tostring(package.loaded.cjson == cjson)
                .. "|" .. tostring(require("cjson") == cjson) .. "|" .. tostring(rawget(_G, "cjson"))
            end } }"#,
        ),
        &config,
    );
    assert_eq!(
        get(&mut app, "/").unwrap(),
        r#"[1,"two",{"three":true}]|2|true|true|nil"#
    );
}

#[test]
fn cjson_example_app() {
    if !cjson_present() {
        return;
    }
    let path = workspace_root().join("examples/cjson/app.lua");
    let (mut app, _) = load(&AppSource::read(&path).unwrap(), &LuaConfig::default());
    assert_eq!(
        get(&mut app, "/json").unwrap(),
        r#"{"message":"Hello, World!"}"#
    );
    let body = support::run(
        &mut app,
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 14\r\n\r\n[1,{\"a\":true}]",
    )
    .unwrap();
    assert_eq!(body, r#"[1,{"a":true}]"#);
}

/// Builds lua-rocks/keystone-helpers into `tree` with luarocks, offline.
/// Fails the test when luarocks is not installed (false, printed, only under
/// `KEYSTONE_SKIP_MISSING_TOOLS=1`).
fn luarocks_make(tree: &Path) -> bool {
    if !support::tools::require_tool("luarocks", "Debian package luarocks") {
        return false;
    }
    let rocks = workspace_root().join("lua-rocks");
    let output = Command::new("luarocks")
        .args(["--lua-version=5.1", "--tree"])
        .arg(tree)
        .args(["make", "keystone-helpers-0.1-1.rockspec"])
        .current_dir(&rocks)
        .output();
    match output {
        Err(err) => panic!("cannot run luarocks: {err}"),
        Ok(output) => {
            assert!(
                output.status.success(),
                "luarocks make failed: {}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(tree.join("share/lua/5.1/keystone/helpers.lua").is_file());
            true
        }
    }
}

#[test]
fn rock_built_with_luarocks_loads_through_rocks_trees() {
    let dir = temp_dir("rock");
    if !luarocks_make(&dir.join("lua_modules")) {
        return;
    }
    // The example app, with its directory pointed at the temporary one that
    // holds `lua_modules` (its `rocks_trees` is relative to its directory).
    let example = workspace_root().join("examples/rocks/app.lua");
    let mut app_source = AppSource::read(&example).unwrap();
    app_source.dir = Some(dir.clone());
    let (mut app, log) = load(&app_source, &LuaConfig::default());
    assert_eq!(log.borrow().as_slice(), ["worker 0: keystone.helpers 0.1"]);
    assert_eq!(
        get(&mut app, "/users/7").unwrap(),
        r#"{"id":7,"tags":["a","b"]}"#
    );
    assert_eq!(
        get(&mut app, "/hello?name=%3Cb%3E").unwrap(),
        "<p>Hello, &lt;b&gt;</p>"
    );

    // The same tree from the command line serves a chunk-level require.
    let config = LuaConfig {
        rocks_trees: vec![dir.join("lua_modules")],
        ..LuaConfig::default()
    };
    let (mut app, _) = load(
        &source(
            r#"local h = require "keystone.helpers"
            return { routes = h.routes(
              h.resource("/x", { GET = function(ctx) ctx.body = h.json({ a = h.null, b = { 1.5, "q\"\n" } }) end }),
              { ["POST /x"] = function(ctx) h.json_response(ctx, {}, 201) end }
            ) }"#,
        ),
        &config,
    );
    assert_eq!(
        get(&mut app, "/x").unwrap(),
        r#"{"a":null,"b":[1.5,"q\"\n"]}"#
    );
    assert_eq!(app.routes, ["GET /x", "POST /x"]);
}

#[test]
fn unsafe_lua_uses_the_same_search_paths() {
    let dir = temp_dir("unsafe-paths");
    let tree: PathBuf = dir.join("tree");
    tree_module(&tree, "treemod.lua", "return 'tree module'");
    write_files(&dir, &[("local.lua", "return 'app dir module'")]);
    let config = LuaConfig {
        rocks_trees: vec![tree],
        unsafe_lua: true,
        ..LuaConfig::default()
    };
    let app = app_in(
        &dir,
        r#"local a, b = require "local", require "treemod"
        return { routes = { ["GET /"] = function(ctx) ctx.body = a .. "|" .. b end } }"#,
    );
    let (mut app, _) = load(&app, &config);
    assert_eq!(get(&mut app, "/").unwrap(), "app dir module|tree module");
}
