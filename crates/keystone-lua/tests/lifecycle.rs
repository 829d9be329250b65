//! The app table's lifecycle fields and hot reload: `init_worker` runs once
//! per state after load, its errors fail the load with file:line; field
//! types are checked; a new state for the same worker loads beside the old.

mod support;

use keystone_lua::{AppSource, LoadedApp, LuaConfig};
use support::{get, load, source, temp_dir, try_load, write_files};

#[test]
fn init_worker_runs_once_per_state_with_the_worker_index() {
    let app = source(
        r#"local runs, seen = 0, nil
        return {
          init_worker = function(worker)
            runs = runs + 1
            seen = worker
            print("init " .. worker)
          end,
          routes = { ["GET /"] = function(ctx)
            ctx.body = runs .. " " .. seen .. " " .. ctx.worker
          end },
        }"#,
    );
    let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let sink = log.clone();
    let mut loaded = LoadedApp::load_with(&app, 3, &LuaConfig::default(), move |line| {
        sink.borrow_mut().push(line.to_string())
    })
    .unwrap();
    assert_eq!(log.borrow().as_slice(), ["init 3"]);
    assert_eq!(get(&mut loaded, "/").unwrap(), "1 3 3");
    assert_eq!(get(&mut loaded, "/").unwrap(), "1 3 3");
}

#[test]
fn init_worker_error_fails_the_load_with_file_line() {
    let err = try_load(
        &source(
            "return {\n  routes = {},\n  init_worker = function(worker)\n    error('no database for worker ' .. worker)\n  end,\n}",
        ),
        &LuaConfig::default(),
    )
    .err()
    .unwrap();
    assert!(
        err.starts_with("init_worker failed on worker 0: test_app.lua:4: no database for worker 0"),
        "{err}"
    );
    assert!(err.contains("stack traceback"), "{err}");
    // A runtime error inside init_worker (not error()) is reported the same way.
    let err = try_load(
        &source("return { routes = {}, init_worker = function()\n local t = nil; return t.x end }"),
        &LuaConfig::default(),
    )
    .err()
    .unwrap();
    assert!(err.contains("test_app.lua:2: attempt to index"), "{err}");
}

#[test]
fn app_fields_are_checked() {
    let cases: &[(&str, &str)] = &[
        (
            "return { routes = {}, init_worker = 1 }",
            "`init_worker` must be a function(worker), got integer",
        ),
        (
            "return { routes = {}, rocks_trees = 'lua_modules' }",
            "`rocks_trees` must be a list of strings, got string",
        ),
        (
            "return { routes = {}, rocks_trees = { 1 } }",
            "rocks_trees[1] must be a string, got integer",
        ),
        (
            "return { routes = {}, allow_c_modules = { cjson = true } }",
            "`allow_c_modules` must be a list",
        ),
        (
            "return { routes = {}, rocks_trees = { 'a?b' } }",
            "rocks_trees 'a?b' contains ';' or '?'",
        ),
        (
            "return { routes = {}, allow_c_module = { 'cjson' } }",
            "unknown field \"allow_c_module\" (known: routes, init_worker, rocks_trees, allow_c_modules, static, upstreams)",
        ),
        (
            "return { routes = {}, static = 'public' }",
            "`static` must be a table of \"/prefix/\" = \"directory\", got string",
        ),
        (
            "return { routes = {}, static = { assets = '.' } }",
            "static prefix \"assets\" must start with '/'",
        ),
        (
            "return { routes = {}, static = { ['/a/'] = '/nonexistent-dir' } }",
            "/nonexistent-dir is not a directory",
        ),
    ];
    for (text, expected) in cases {
        let err = try_load(&source(text), &LuaConfig::default())
            .err()
            .unwrap_or_else(|| panic!("loaded: {text}"));
        assert!(err.contains(expected), "{text}: {err}");
        assert!(err.contains("test_app.lua"), "{text}: no file in {err}");
    }
}

#[test]
fn all_known_fields_together() {
    let (mut app, _) = load(
        &source(
            r#"return {
              routes = { ["GET /"] = function(ctx) ctx.body = "ok" end },
              init_worker = function() end,
              rocks_trees = {},
              allow_c_modules = {},
            }"#,
        ),
        &LuaConfig::default(),
    );
    assert_eq!(get(&mut app, "/").unwrap(), "ok");
}

/// Hot reload on the Lua side: the new app loads for the same worker while
/// the old one still serves, each with its own state, module cache and
/// exchange; the old one is dropped afterwards.
#[test]
fn reload_loads_beside_the_old_state() {
    let dir = temp_dir("reload");
    let write = |version: &str| {
        write_files(
            &dir,
            &[
                ("version.lua", &format!("return '{version}'")),
                (
                    "app.lua",
                    r#"local version = require "version"
                    local hits = 0
                    return { routes = { ["GET /"] = function(ctx)
                      hits = hits + 1
                      ctx.body = version .. " " .. hits
                    end } }"#,
                ),
            ],
        );
        AppSource::read(&dir.join("app.lua")).unwrap()
    };
    let (mut old, _) = load(&write("v1"), &LuaConfig::default());
    assert_eq!(get(&mut old, "/").unwrap(), "v1 1");
    let (mut new, _) = load(&write("v2"), &LuaConfig::default());
    // Interleaved: both states serve, neither sees the other's globals.
    assert_eq!(get(&mut old, "/").unwrap(), "v1 2");
    assert_eq!(get(&mut new, "/").unwrap(), "v2 1");
    assert_eq!(get(&mut old, "/").unwrap(), "v1 3");
    drop(old);
    assert_eq!(get(&mut new, "/").unwrap(), "v2 2");
    // A broken reload leaves the running app untouched.
    write_files(&dir, &[("version.lua", "return {")]);
    let err = try_load(
        &AppSource::read(&dir.join("app.lua")).unwrap(),
        &LuaConfig::default(),
    )
    .err()
    .unwrap();
    assert!(err.contains("version.lua:1:"), "{err}");
    assert_eq!(get(&mut new, "/").unwrap(), "v2 3");
}

#[test]
fn load_without_options_still_works() {
    let mut app = LoadedApp::load(
        &source(r#"return { routes = { ["GET /"] = function(ctx) ctx.body = "plain" end } }"#),
        0,
        |_| {},
    )
    .unwrap();
    assert_eq!(get(&mut app, "/").unwrap(), "plain");
}

#[test]
fn upstreams_are_read_and_checked_at_load() {
    let app = r#"return {
      upstreams = {
        api = {
          peers = { "127.0.0.1:9001", "[::1]:9002", "localhost:9003" },
          balance = "least_conn", keepalive = 8, retries = 2,
          connect_timeout = 0.5, send_timeout = 30, read_timeout = 30,
          max_fails = 3, fail_timeout = 10,
          health_check = { path = "/health", interval = 2 },
        },
        auth = { peers = { "127.0.0.1:9100" } },
      },
      routes = { ["GET /"] = function(ctx) end },
    }"#;
    let (loaded, _) = support::load(&support::source(app), &keystone_lua::LuaConfig::default());
    let names: Vec<&str> = loaded.upstreams.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["api", "auth"]);
    let api = &loaded.upstreams[0];
    assert_eq!(api.peers.len(), 3);
    assert_eq!(api.peers[1], "[::1]:9002".parse().unwrap());
    assert!(api.peers[2].ip().is_loopback());
    assert_eq!(api.balance, keystone_upstream::Balance::LeastConn);
    assert_eq!(api.keepalive, 8);
    assert_eq!(api.retries, 2);
    assert_eq!(api.connect_timeout, std::time::Duration::from_millis(500));
    assert_eq!(api.health_check.as_ref().unwrap().path, "/health");
    let auth = &loaded.upstreams[1];
    assert_eq!(auth.balance, keystone_upstream::Balance::RoundRobin);
    assert_eq!(auth.keepalive, 32);

    let refused: &[(&str, &str)] = &[
        (
            r#"{ api = { peers = { "127.0.0.1:1" }, balanse = "hash" } }"#,
            "upstreams.api has an unknown field \"balanse\"",
        ),
        (
            r#"{ api = { peers = { "127.0.0.1" } } }"#,
            "upstreams.api.peers: peer \"127.0.0.1\"",
        ),
        (
            r#"{ api = { peers = { "127.0.0.1:1" }, balance = "random" } }"#,
            "unknown balance \"random\"",
        ),
        (r#"{ api = { peers = {} } }"#, "lists no peer"),
        (r#"{ api = {} }"#, "upstreams.api needs `peers`"),
        (
            r#"{ api = { peers = { "127.0.0.1:1" }, keepalive = -1 } }"#,
            "upstreams.api.keepalive must be an integer from 0",
        ),
        (
            r#"{ api = { peers = { "127.0.0.1:1" }, connect_timeout = 0 } }"#,
            "upstreams.api.connect_timeout must be a number of seconds above 0",
        ),
        (
            r#"{ api = { peers = { "127.0.0.1:1" }, health_check = { path = "health" } } }"#,
            "must start with '/'",
        ),
        (
            r#"{ api = { peers = { "127.0.0.1:1", "127.0.0.1:1" } } }"#,
            "listed twice",
        ),
        (
            r#"{ api = "127.0.0.1:1" }"#,
            "upstreams.api must be a table",
        ),
        (r#""api""#, "`upstreams` must be a table"),
    ];
    for (upstreams, message) in refused {
        let app = format!("return {{ upstreams = {upstreams}, routes = {{}} }}");
        let err = support::try_load(&support::source(&app), &keystone_lua::LuaConfig::default())
            .err()
            .unwrap_or_else(|| panic!("{upstreams} loaded"));
        assert!(err.contains(message), "{upstreams}: {err}");
        assert!(err.contains("test_app.lua"), "{upstreams}: {err}");
    }
}

#[test]
fn tls_pools_are_read_and_their_mistakes_named() {
    let app = r#"return {
      upstreams = {
        plain = { peers = { "127.0.0.1:9001" } },
        secure = { peers = { "localhost:9443", "127.0.0.1:9444" }, tls = true },
        named = { peers = { "127.0.0.1:9445" }, tls = true, sni = "api.test", verify = false },
      },
      routes = {},
    }"#;
    let (loaded, _) = load(&source(app), &LuaConfig::default());
    let pool = |name: &str| {
        loaded
            .upstreams
            .iter()
            .find(|pool| pool.name == name)
            .unwrap()
    };
    assert!(pool("plain").tls.is_none(), "cleartext unless asked");
    let secure = pool("secure").tls.as_ref().unwrap();
    assert!(secure.verify, "verified by default");
    assert_eq!((secure.sni.as_deref(), secure.ca.as_deref()), (None, None));
    let names: Vec<String> = secure
        .names
        .iter()
        .map(|name| name.to_str().into_owned())
        .collect();
    assert_eq!(names, ["localhost", "127.0.0.1"], "each peer's own host");
    let named = pool("named").tls.as_ref().unwrap();
    assert!(!named.verify);
    assert_eq!(named.sni.as_deref(), Some("api.test"));
    assert_eq!(named.names[0].to_str(), "api.test");

    // `ca` is relative to the app's directory; an unreadable one fails
    // the load naming the file.
    let dir = temp_dir("tls-ca");
    write_files(
        &dir,
        &[(
            "app.lua",
            r#"return { routes = {}, upstreams = {
              api = { peers = { "127.0.0.1:9443" }, tls = true, ca = "certs/ca.pem" },
            } }"#,
        )],
    );
    let in_dir = AppSource::read(&dir.join("app.lua")).unwrap();
    let err = try_load(&in_dir, &LuaConfig::default()).err().unwrap();
    let expected = format!(
        "upstreams.api.ca: cannot read {}",
        dir.join("certs/ca.pem").display()
    );
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("app.lua"), "{err}");

    let refused = [
        (
            r#"{ api = { peers = { "127.0.0.1:1" }, sni = "api.test" } }"#,
            "upstreams.api.sni needs tls = true",
        ),
        (
            r#"{ api = { peers = { "127.0.0.1:1" }, verify = false } }"#,
            "upstreams.api.verify needs tls = true",
        ),
        (
            r#"{ api = { peers = { "127.0.0.1:1" }, tls = false, ca = "ca.pem" } }"#,
            "upstreams.api.ca needs tls = true",
        ),
        (
            r#"{ api = { peers = { "127.0.0.1:1" }, tls = "yes" } }"#,
            "upstreams.api.tls must be true or false, got string",
        ),
        (
            r#"{ api = { peers = { "127.0.0.1:1" }, tls = true, verify = 0 } }"#,
            "upstreams.api.verify must be true or false, got integer",
        ),
        (
            r#"{ api = { peers = { "127.0.0.1:1" }, tls = true, sni = 7 } }"#,
            "upstreams.api.sni must be a string",
        ),
        (
            r#"{ api = { peers = { "127.0.0.1:1" }, tls = true, sni = "10.1.1.1" } }"#,
            "upstreams.api.sni: \"10.1.1.1\" is an IP address",
        ),
        (
            r#"{ api = { peers = { "127.0.0.1:1" }, tls = true, verify = false, ca = "ca.pem" } }"#,
            "upstreams.api.ca: a CA has no use with verify = false",
        ),
    ];
    for (upstreams, message) in refused {
        let app = format!("return {{ upstreams = {upstreams}, routes = {{}} }}");
        let err = try_load(&source(&app), &LuaConfig::default())
            .err()
            .unwrap_or_else(|| panic!("{upstreams} loaded"));
        assert!(err.contains(message), "{upstreams}: {err}");
    }
}

#[test]
fn unresolvable_peer_names_load_only_when_asked() {
    let app = r#"return {
      upstreams = { api = { peers = { "a.internal.invalid:8080", "b.internal.invalid:8080" } } },
      routes = {},
    }"#;
    let err = support::try_load(&support::source(app), &keystone_lua::LuaConfig::default())
        .err()
        .expect("an unresolvable name fails the load");
    assert!(err.contains("cannot resolve the name"), "{err}");
    // `keystone test` points pools at fakes: the names stay, each entry
    // its own placeholder peer.
    let config = keystone_lua::LuaConfig {
        unresolved_peers: true,
        ..keystone_lua::LuaConfig::default()
    };
    let (loaded, _) = support::load(&support::source(app), &config);
    let api = &loaded.upstreams[0];
    assert_eq!(
        api.peer_names,
        ["a.internal.invalid:8080", "b.internal.invalid:8080"]
    );
    assert_eq!(api.peers.len(), 2);
    assert_ne!(api.peers[0], api.peers[1]);
    assert!(api
        .peers
        .iter()
        .all(|p| p.port() == 8080 && !p.ip().is_unspecified()));
    // An address or a malformed entry is still refused.
    let bad = r#"return { upstreams = { api = { peers = { "nohost" } } }, routes = {} }"#;
    assert!(support::try_load(&support::source(bad), &config).is_err());
}
