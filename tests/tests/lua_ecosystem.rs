//! Issue 6 end to end: hot reload under load (SIGHUP and `keystone reload`),
//! LuaRocks trees (`--rocks-tree`, `rocks_trees`), C modules behind
//! `--allow-c-module`, the sandbox against escapes (and `--unsafe-lua`), and
//! `init_worker` (once per worker; an error in it fails `serve` with exit 2).

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use keystone_tests::{
    assert_no_panic, free_port, line_of, run_keystone, write_file, RawClient, Response, Server,
};

/// Bound on waiting for a reload to show in responses or the log.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

fn get(server: &Server, path: &str) -> Response {
    let mut client = server.raw();
    client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes());
    client.read_response()
}

// ---------------------------------------------------------------------------
// Hot reload.

/// An app whose one route answers `vN WORKER`.
fn versioned_app(version: u32) -> String {
    format!(
        "return {{\n  routes = {{\n    [\"GET /v\"] = function(ctx) ctx.body = \"v{version} \" .. ctx.worker end,\n  }},\n}}\n"
    )
}

/// A broken app: the syntax error is on the line holding `BROKEN_MARK`.
const BROKEN_APP: &str = "return {\n  routes = {\n    [\"GET /v\"] = function(ctx)\n      ctx.body = \"v9\" .. -- the broken line\n    end,\n  },\n}\n";
const BROKEN_MARK: &str = "end,";

/// Requests each client must send at least (two clients: at least 2,000 in all).
const REQUESTS_PER_CLIENT_MIN: usize = 1000;

/// What one client thread saw: (version, worker) per response, in order.
type Seen = Vec<(u32, u32)>;

/// Shared between the test and its client threads.
struct Progress {
    stop: AtomicBool,
    /// Newest version each client has seen (index 0: keep-alive, 1: new connections).
    latest: [AtomicUsize; 2],
    answered: [AtomicUsize; 2],
}

fn parse_version(response: &Response, what: &str) -> (u32, u32) {
    assert_eq!(response.status, 200, "{what}: {response:?}");
    let body = response.body_str();
    let parsed = body.strip_prefix('v').and_then(|rest| {
        let (version, worker) = rest.split_once(' ')?;
        Some((version.parse().ok()?, worker.parse().ok()?))
    });
    parsed.unwrap_or_else(|| panic!("{what}: unexpected body {body:?}"))
}

/// Sends requests until told to stop (and at least `REQUESTS_PER_CLIENT_MIN`),
/// over one keep-alive connection (`index` 0) or a new connection each (1).
fn reload_client(addr: SocketAddr, index: usize, progress: Arc<Progress>) -> Seen {
    let mut seen = Vec::new();
    let mut keep_alive = (index == 0).then(|| RawClient::connect(addr));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !progress.stop.load(Ordering::SeqCst) || seen.len() < REQUESTS_PER_CLIENT_MIN {
        assert!(Instant::now() < deadline, "client {index} ran 60 s");
        let what = format!("client {index} request {}", seen.len());
        let response = match keep_alive.as_mut() {
            Some(client) => {
                client.send(b"GET /v HTTP/1.1\r\nHost: t\r\n\r\n");
                client.read_response()
            }
            None => {
                let mut client = RawClient::connect(addr);
                client.send(b"GET /v HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                client.read_response()
            }
        };
        let (version, worker) = parse_version(&response, &what);
        seen.push((version, worker));
        progress.latest[index].fetch_max(version as usize, Ordering::SeqCst);
        progress.answered[index].store(seen.len(), Ordering::SeqCst);
    }
    seen
}

/// Waits until both clients have seen `version`.
fn wait_both_see(server: &Server, progress: &Progress, version: usize) {
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    while progress
        .latest
        .iter()
        .any(|l| l.load(Ordering::SeqCst) < version)
    {
        assert!(
            Instant::now() < deadline,
            "v{version} not served within {RELOAD_TIMEOUT:?}; log:\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until both clients have answered `more` requests beyond now.
fn wait_more_answers(progress: &Progress, more: usize) {
    let targets: Vec<usize> = progress
        .answered
        .iter()
        .map(|a| a.load(Ordering::SeqCst) + more)
        .collect();
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    for (answered, target) in progress.answered.iter().zip(targets) {
        while answered.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "clients stalled");
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Versions never go back, per worker (each worker swaps its own state; two
/// workers may swap a moment apart, so only per-worker order is promised).
fn check_order(seen: &Seen, what: &str) {
    let mut newest = std::collections::HashMap::new();
    for (i, &(version, worker)) in seen.iter().enumerate() {
        let before = newest.insert(worker, version).unwrap_or(0);
        assert!(
            version >= before,
            "{what}: response {i} from worker {worker} is v{version} after v{before}"
        );
    }
}

#[test]
fn hot_reload_under_load_loses_no_request() {
    let server = Server::start(Some(&versioned_app(1)), &["--workers", "2"]);
    let app = server.app_path().to_path_buf();
    let progress = Arc::new(Progress {
        stop: AtomicBool::new(false),
        latest: [AtomicUsize::new(0), AtomicUsize::new(0)],
        answered: [AtomicUsize::new(0), AtomicUsize::new(0)],
    });
    let clients: Vec<_> = (0..2)
        .map(|index| {
            let progress = Arc::clone(&progress);
            let addr = server.addr();
            thread::spawn(move || reload_client(addr, index, progress))
        })
        .collect();
    wait_both_see(&server, &progress, 1);
    wait_more_answers(&progress, 50);

    fs::write(&app, versioned_app(2)).expect("writing v2");
    server.hangup();
    wait_both_see(&server, &progress, 2);
    wait_more_answers(&progress, 50);

    fs::write(&app, versioned_app(3)).expect("writing v3");
    let reload = run_keystone(&["reload", "--pid", &server.pid().to_string()]);
    assert_eq!(reload.code, Some(0), "keystone reload: {}", reload.all());
    wait_both_see(&server, &progress, 3);
    wait_more_answers(&progress, 50);

    // A broken file: logged with file:line, and v3 goes on serving.
    fs::write(&app, BROKEN_APP).expect("writing the broken app");
    server.hangup();
    let needle = format!("app.lua:{}", line_of(BROKEN_APP, BROKEN_MARK));
    let log = server.wait_for_log(&needle, RELOAD_TIMEOUT);
    assert!(
        log.contains(&needle),
        "broken reload not logged with {needle}:\n{log}"
    );
    wait_more_answers(&progress, 100);
    for latest in &progress.latest {
        assert_eq!(
            latest.load(Ordering::SeqCst),
            3,
            "the broken app replaced v3"
        );
    }

    fs::write(&app, versioned_app(4)).expect("writing v4");
    server.hangup();
    wait_both_see(&server, &progress, 4);
    wait_more_answers(&progress, 50);

    progress.stop.store(true, Ordering::SeqCst);
    let seen: Vec<Seen> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread failed"))
        .collect();
    let total: usize = seen.iter().map(Vec::len).sum();
    assert!(
        total >= 2 * REQUESTS_PER_CLIENT_MIN,
        "only {total} requests"
    );
    for (index, seen) in seen.iter().enumerate() {
        let what = if index == 0 {
            "keep-alive client"
        } else {
            "new-connection client"
        };
        check_order(seen, what);
        for version in 1..=4 {
            assert!(
                seen.iter().any(|&(v, _)| v == version),
                "{what} never saw v{version}"
            );
        }
        // One connection stays on one worker, so its versions are in order outright.
        if index == 0 {
            let versions: Vec<u32> = seen.iter().map(|&(v, _)| v).collect();
            assert!(versions.is_sorted(), "{what}: versions out of order");
        }
    }
    assert_no_panic(&server.log(), "hot reload");
}

// ---------------------------------------------------------------------------
// LuaRocks trees.

const MYMOD: &str = "local M = {}\nfunction M.hello(who) return \"hello \" .. who .. \" from mymod\" end\nreturn M\n";

/// Places `mymod.lua` (as `name`.lua) in the rocks tree at `tree`.
fn place_module(tree: &Path, name: &str) {
    let dir = tree.join("share/lua/5.1");
    fs::create_dir_all(&dir).expect("creating the tree");
    write_file(&dir, &format!("{name}.lua"), MYMOD);
}

#[test]
fn rocks_tree_flag_serves_a_pure_lua_module() {
    let tree = tempfile::tempdir().expect("tempdir");
    place_module(tree.path(), "mymod");
    let app = r#"local from_init
return {
  init_worker = function(w) from_init = require("mymod").hello("init") end,
  routes = {
    ["GET /handler"] = function(ctx) ctx.body = require("mymod").hello("handler") end,
    ["GET /init"] = function(ctx) ctx.body = from_init end,
    ["GET /missing"] = function(ctx) ctx.body = require("no_such_module_xyz") end,
  },
}
"#;
    let tree_arg = tree.path().display().to_string();
    let server = Server::start(Some(app), &["--rocks-tree", &tree_arg]);
    assert_eq!(
        get(&server, "/handler").body_str(),
        "hello handler from mymod"
    );
    assert_eq!(get(&server, "/init").body_str(), "hello init from mymod");

    // A missing module: 500, and the log names it and the paths tried.
    let response = get(&server, "/missing");
    assert_eq!(response.status, 500);
    let log = server.wait_for_log("no_such_module_xyz", Duration::from_secs(2));
    let line = format!("app.lua:{}", line_of(app, "no_such_module_xyz"));
    assert!(log.contains(&line), "log lacks {line}:\n{log}");
    let tried = format!("{tree_arg}/share/lua/5.1/no_such_module_xyz.lua");
    assert!(
        log.contains(&tried),
        "log lacks the tree path tried ({tried}):\n{log}"
    );
    let app_dir = server
        .app_path()
        .parent()
        .expect("app dir")
        .display()
        .to_string();
    let tried_app_dir = format!("{app_dir}/no_such_module_xyz.lua");
    assert!(
        log.contains(&tried_app_dir),
        "log lacks {tried_app_dir}:\n{log}"
    );
    assert_eq!(
        get(&server, "/handler").status,
        200,
        "serving after the miss"
    );
}

#[test]
fn rocks_trees_in_the_app_table() {
    // One absolute tree, one relative to the app's directory.
    let absolute = tempfile::tempdir().expect("tempdir");
    place_module(absolute.path(), "absmod");
    let app = format!(
        r#"return {{
  rocks_trees = {{ "{}", "lua_modules" }},
  routes = {{
    ["GET /abs"] = function(ctx) ctx.body = require("absmod").hello("abs") end,
    ["GET /rel"] = function(ctx) ctx.body = require("relmod").hello("rel") end,
  }},
}}
"#,
        absolute.path().display()
    );
    let server = Server::start(Some(&app), &[]);
    // The relative tree is placed now: handlers require at request time.
    let app_dir = server.app_path().parent().expect("app dir").to_path_buf();
    place_module(&app_dir.join("lua_modules"), "relmod");
    assert_eq!(get(&server, "/abs").body_str(), "hello abs from mymod");
    assert_eq!(get(&server, "/rel").body_str(), "hello rel from mymod");
}

// ---------------------------------------------------------------------------
// C modules.

const CJSON_SO: &str = "/usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so";

const CJSON_APP: &str = r#"return {
  routes = {
    ["GET /json"] = function(ctx)
      local cjson = require "cjson"
      ctx.headers["Content-Type"] = "application/json"
      ctx.body = cjson.encode({ list = { 1, 2, 3 } })
    end,
  },
}
"#;

#[test]
fn c_module_loads_only_when_allowed() {
    if !keystone_tests::require_file(Path::new(CJSON_SO), "Debian package lua-cjson") {
        return;
    }
    let allowed = Server::start(Some(CJSON_APP), &["--allow-c-module", "cjson"]);
    let response = get(&allowed, "/json");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body_str(), r#"{"list":[1,2,3]}"#);
    assert_eq!(response.header("content-type"), Some("application/json"));

    let refused = Server::start(Some(CJSON_APP), &[]);
    assert_eq!(get(&refused, "/json").status, 500);
    let log = refused.wait_for_log("--allow-c-module cjson", Duration::from_secs(2));
    assert!(
        log.contains("--allow-c-module cjson") && log.contains("allow_c_modules"),
        "log does not say how to allow cjson:\n{log}"
    );
    let line = format!("app.lua:{}", line_of(CJSON_APP, "require \"cjson\""));
    assert!(log.contains(&line), "log lacks {line}:\n{log}");
}

#[test]
fn c_module_allowed_in_the_app_table_for_init_worker() {
    if !keystone_tests::require_file(Path::new(CJSON_SO), "Debian package lua-cjson") {
        return;
    }
    let app = r#"local cjson
return {
  allow_c_modules = { "cjson" },
  init_worker = function(w) cjson = require "cjson" end,
  routes = {
    ["GET /json"] = function(ctx) ctx.body = cjson.encode({ worker = ctx.worker }) end,
  },
}
"#;
    let server = Server::start(Some(app), &[]);
    assert_eq!(get(&server, "/json").body_str(), r#"{"worker":0}"#);
}

// ---------------------------------------------------------------------------
// The sandbox.

/// Each handler reports "ESCAPED" if the sandbox let it through; a refusal
/// is a 500 (an error) or a body starting with "refused".
const SANDBOX_APP: &str = r#"return {
  routes = {
    ["GET /io-open"] = function(ctx)
      local f = io.open("/etc/passwd")
      ctx.body = f and "ESCAPED" or "refused: no file"
    end,
    ["GET /os-execute"] = function(ctx)
      os.execute("true")
      ctx.body = "ESCAPED"
    end,
    ["GET /require-ffi"] = function(ctx)
      local ffi = require "ffi"
      ctx.body = ffi and "ESCAPED" or "refused"
    end,
    ["GET /load-bytecode"] = function(ctx)
      local f, err = load(string.dump(function() return "ESCAPED" end))
      ctx.body = f and f() or ("refused: " .. tostring(err))
    end,
    ["GET /loadstring-bytecode"] = function(ctx)
      local f, err = loadstring(string.dump(function() return "ESCAPED" end))
      ctx.body = f and f() or ("refused: " .. tostring(err))
    end,
    ["GET /string-metatable"] = function(ctx)
      getmetatable("").__index.rep = nil
      getmetatable("").__index.upper = function() return "ESCAPED" end
      ctx.body = "refused: string methods are the engine's: " .. ("ab"):rep(2) .. ("x"):upper()
    end,
    ["GET /string-metatable-replace"] = function(ctx)
      getmetatable("").__index = { upper = function() return "ESCAPED" end }
      ctx.body = ("x"):upper()
    end,
    ["GET /setmetatable-string"] = function(ctx)
      setmetatable("", { __index = { upper = function() return "ESCAPED" end } })
      ctx.body = ("x"):upper()
    end,
    ["GET /debug"] = function(ctx) ctx.body = debug.getinfo(1) and "ESCAPED" end,
    ["GET /require-jit-util"] = function(ctx) ctx.body = require("jit.util") and "ESCAPED" end,
    ["GET /loadlib"] = function(ctx) ctx.body = package.loadlib("libc.so.6", "*") and "ESCAPED" end,
    ["GET /getenv"] = function(ctx) ctx.body = os.getenv("HOME") and "ESCAPED" end,
    ["GET /methods"] = function(ctx) ctx.body = ("ab"):rep(2) .. ("x"):upper() end,
  },
}
"#;

const ESCAPES: &[&str] = &[
    "/io-open",
    "/os-execute",
    "/require-ffi",
    "/load-bytecode",
    "/loadstring-bytecode",
    "/string-metatable",
    "/string-metatable-replace",
    "/setmetatable-string",
    "/debug",
    "/require-jit-util",
    "/loadlib",
    "/getenv",
];

#[test]
fn sandbox_refuses_escapes_and_the_worker_keeps_serving() {
    let server = Server::start(Some(SANDBOX_APP), &[]);
    let mut client = server.raw();
    for path in ESCAPES {
        client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let response = client.read_response();
        let body = response.body_str();
        assert!(
            !body.contains("ESCAPED"),
            "{path}: escaped the sandbox: {response:?}"
        );
        assert!(
            response.status == 500 || (response.status == 200 && body.starts_with("refused")),
            "{path}: neither 500 nor a clear refusal: {response:?}"
        );
        // String methods stay the engine's, on the same worker, after each attempt.
        client.send(b"GET /methods HTTP/1.1\r\nHost: t\r\n\r\n");
        let methods = client.read_response();
        assert_eq!(
            methods.body_str(),
            "ababX",
            "{path}: string methods changed"
        );
    }
    let log = server.log();
    assert!(
        log.contains("--unsafe-lua"),
        "refusing ffi should name --unsafe-lua:\n{log}"
    );
    assert!(
        !log.to_ascii_lowercase().contains("sandbox is off"),
        "sandbox reported off without --unsafe-lua:\n{log}"
    );
    assert_no_panic(&log, "sandbox escapes");
}

#[test]
fn unsafe_lua_turns_the_sandbox_off_and_says_so() {
    let app = r#"return {
  routes = {
    ["GET /path"] = function(ctx) ctx.body = os.getenv("PATH") or "unset" end,
  },
}
"#;
    // The server inherits this process's environment.
    let path = std::env::var("PATH").expect("PATH is set");
    let server = Server::start(Some(app), &["--unsafe-lua"]);
    assert_eq!(get(&server, "/path").body_str(), path);
    let log = server.log();
    assert!(
        log.to_ascii_lowercase().contains("sandbox is off"),
        "log does not say the sandbox is off:\n{log}"
    );
}

// ---------------------------------------------------------------------------
// init_worker.

#[test]
fn init_worker_runs_once_per_worker() {
    let app = r#"local runs = 0
local label
return {
  init_worker = function(w)
    runs = runs + 1
    label = "init-" .. w
  end,
  routes = {
    ["GET /w"] = function(ctx) ctx.body = label .. " runs=" .. runs .. " worker=" .. ctx.worker end,
  },
}
"#;
    let server = Server::start(Some(app), &["--workers", "2"]);
    let mut seen = [false, false];
    for _ in 0..200 {
        let body = get(&server, "/w").body_str();
        let worker = if body.ends_with("worker=0") { 0 } else { 1 };
        assert_eq!(body, format!("init-{worker} runs=1 worker={worker}"));
        seen[worker] = true;
        if seen == [true, true] {
            break;
        }
    }
    assert_eq!(
        seen,
        [true, true],
        "200 connections never reached both workers"
    );
}

#[test]
fn init_worker_error_fails_serve_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = "return {\n  init_worker = function(w)\n    error(\"init exploded on purpose\")\n  end,\n  routes = {},\n}\n";
    let path = write_file(dir.path(), "app.lua", app);
    let listen = format!("127.0.0.1:{}", free_port());
    let output = run_keystone(&[
        "serve",
        &path.display().to_string(),
        "--listen",
        &listen,
        "--workers",
        "2",
    ]);
    assert!(!output.timed_out, "serve kept running: {}", output.all());
    assert_eq!(output.code, Some(2), "{}", output.all());
    let text = output.all();
    assert!(text.contains("init exploded on purpose"), "{text}");
    let line = format!("app.lua:{}", line_of(app, "init exploded"));
    assert!(text.contains(&line), "lacks {line}: {text}");
    assert_no_panic(&text, "init_worker error");
}

/// A stream started before a reload keeps pulling its generator from the
/// state it was started in: every byte arrives and the body ends with the
/// terminating chunk (a cut body must never look complete), while new
/// requests already get the new app.
#[test]
fn stream_in_flight_across_a_reload_completes_from_its_own_state() {
    use std::io::{Read, Write};
    const CHUNKS: usize = 400; // 400 × 64 KiB = 25 MiB: more than loopback buffers hold
    let app = |version: u32| {
        format!(
            r#"return {{ routes = {{
  ["GET /v"] = function(ctx) ctx.body = "v{version}" end,
  ["GET /stream"] = function(ctx)
    local chunk, left = string.rep("{version}", 65536), {CHUNKS}
    ctx.body = function()
      if left == 0 then return nil end
      left = left - 1
      return chunk
    end
  end,
}} }}"#
        )
    };
    let server = Server::start(Some(&app(1)), &[]);
    let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = vec![0u8; 256 * 1024];
    stream.read_exact(&mut got).unwrap();

    fs::write(server.app_path(), app(2)).expect("writing v2");
    server.hangup();
    let log = server.wait_for_log("reloaded", RELOAD_TIMEOUT);
    assert!(log.contains("reloaded"), "{log}");
    assert_eq!(
        keystone_tests::curl_body(&["-s", &server.url("/v")]),
        "v2",
        "new requests see the new app"
    );

    stream.read_to_end(&mut got).unwrap();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]);
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    // Decode the chunked body; it must end with the terminating chunk.
    let mut body_len = 0;
    let mut at = head_end;
    loop {
        let line_end = at
            + got[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&got[at..line_end]).unwrap(), 16).unwrap();
        at = line_end + 2;
        if size == 0 {
            assert_eq!(&got[at..], b"\r\n", "terminating chunk ends the body");
            break;
        }
        assert!(
            got[at..at + size].iter().all(|&b| b == b'1'),
            "v1's generator made every byte"
        );
        body_len += size;
        at += size + 2;
    }
    assert_eq!(body_len, CHUNKS * 65536, "every byte of the stream arrived");
    assert!(!server.log().contains("stream aborted"), "{}", server.log());
}

/// An app whose load never ends: its chunk (or its `init_worker`) loops.
const LOOPING_APP: &str = "local n = 0\nwhile true do n = n + 1 end\nreturn { routes = {} }\n";

#[test]
fn an_app_that_never_finishes_loading_is_stopped_by_the_budget() {
    // At start: exit 2 naming the line, instead of a server that never
    // binds and no longer answers SIGTERM.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = keystone_tests::write_file(dir.path(), "app.lua", LOOPING_APP);
    let out = keystone_tests::run_keystone(&[
        "serve",
        path.to_str().expect("utf-8"),
        "--lua-budget-ms",
        "200",
        "--listen",
        &format!("127.0.0.1:{}", keystone_tests::free_port()),
    ]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(out.all().contains("app.lua:2:"), "{}", out.all());
    assert!(out.all().contains("time budget"), "{}", out.all());
    assert!(!out.timed_out, "{}", out.all());

    // At reload: logged, and the running app goes on serving.
    let server = Server::start(Some(&versioned_app(1)), &["--lua-budget-ms", "200"]);
    fs::write(server.app_path(), LOOPING_APP).expect("writing the looping app");
    server.hangup();
    let log = server.wait_for_log("reload failed", RELOAD_TIMEOUT);
    assert!(log.contains("time budget"), "{log}");
    let response = keystone_tests::request(server.addr(), "GET /v HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response.body_str(), "v1 0");
}
