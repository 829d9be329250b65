//! The command line: `--help`, `--version`, `check`, and every way of starting
//! wrong ends with a precise message and exit code 2, never a panic or a hang.

use keystone_tests::{assert_no_panic, line_of, run_keystone, write_file, Server};

const VALID_APP: &str = r#"return {
  routes = {
    ["GET /"] = function(ctx) ctx.body = "Hello, World!" end,
    ["GET /users/{id}"] = function(ctx)
      ctx.headers["Content-Type"] = "application/json"
      ctx.body = '{"id":' .. ctx.params.id .. '}'
    end,
    ["POST /items"] = function(ctx) ctx.status = 201 end,
    ["GET /files/{*path}"] = function(ctx) ctx.body = ctx.params.path end,
  },
}
"#;

/// The `end` on line 3 is missing its function, so the parser stops there.
const SYNTAX_ERROR_APP: &str =
    "return {\n  routes = {\n    [\"GET /\"] = function(ctx) ctx.body = 'x' end end,\n  },\n}\n";

/// Loads fine as Lua but fails while the chunk runs.
const RUNTIME_ERROR_APP: &str =
    "local x = 1\nerror(\"app failed to initialise\")\nreturn { routes = {} }\n";

/// A chunk that returns a table without `routes`.
const NO_ROUTES_APP: &str = "return { handlers = {} }\n";

/// A route whose value is not a function.
const NOT_A_FUNCTION_APP: &str = "return { routes = { [\"GET /broken\"] = 42 } }\n";

/// One command line and what must come of it.
struct Case {
    args: Vec<String>,
    code: i32,
    /// Each must appear in stdout or stderr.
    output_contains: Vec<String>,
}

fn check(case: &Case) {
    let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let output = run_keystone(&args);
    let all = output.all();
    assert!(
        !output.timed_out,
        "keystone {args:?} hung; output so far:\n{all}"
    );
    assert_no_panic(&all, &format!("keystone {args:?}"));
    assert_eq!(
        output.code,
        Some(case.code),
        "keystone {args:?} exit code; output:\n{all}"
    );
    for needle in &case.output_contains {
        assert!(
            all.contains(needle.as_str()),
            "keystone {args:?} output lacks {needle:?}:\n{all}"
        );
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn help_and_version() {
    // The version comes from the workspace, which the tests package shares with the server.
    let version = env!("CARGO_PKG_VERSION");
    let cases = [
        Case {
            args: strings(&["--help"]),
            code: 0,
            output_contains: strings(&["serve", "check"]),
        },
        Case {
            args: strings(&["serve", "--help"]),
            code: 0,
            output_contains: strings(&["--listen", "--workers"]),
        },
        Case {
            args: strings(&["--version"]),
            code: 0,
            output_contains: strings(&[version]),
        },
    ];
    for case in &cases {
        check(case);
    }
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let cases = [
        Case {
            args: strings(&["serve", "--workers", "abc"]),
            code: 2,
            output_contains: strings(&["--workers"]),
        },
        Case {
            args: strings(&["serve", "--bogus"]),
            code: 2,
            output_contains: strings(&["--bogus"]),
        },
        Case {
            args: strings(&["serve", "--workers", "0"]),
            code: 2,
            output_contains: strings(&["--workers"]),
        },
        // A precise message names the value that could not be used.
        Case {
            args: strings(&["serve", "--listen", "not-an-address"]),
            code: 2,
            output_contains: strings(&["not-an-address"]),
        },
        Case {
            args: strings(&["serve", "--max-body-bytes", "lots"]),
            code: 2,
            output_contains: strings(&["--max-body-bytes"]),
        },
        Case {
            args: strings(&["serve", "--max-connections", "many"]),
            code: 2,
            output_contains: strings(&["--max-connections"]),
        },
        Case {
            args: strings(&["serve", "--drain-timeout", "soon"]),
            code: 2,
            output_contains: strings(&["--drain-timeout"]),
        },
        // A timeout beyond a day is refused at start: unchecked, it overflowed
        // the first deadline (`Instant` + timeout) and a worker panicked.
        Case {
            args: strings(&["serve", "--header-timeout", "9300000000000000000"]),
            code: 2,
            output_contains: strings(&["--header-timeout", "1..=86400"]),
        },
        Case {
            args: strings(&["serve", "--send-timeout", "86401"]),
            code: 2,
            output_contains: strings(&["--send-timeout", "1..=86400"]),
        },
        Case {
            args: strings(&["serve", "--keepalive-timeout", "18446744073709551614"]),
            code: 2,
            output_contains: strings(&["--keepalive-timeout"]),
        },
        Case {
            args: strings(&["serve", "--body-timeout", "100000"]),
            code: 2,
            output_contains: strings(&["--body-timeout"]),
        },
        Case {
            args: strings(&["serve", "--drain-timeout", "18446744073709551615"]),
            code: 2,
            output_contains: strings(&["--drain-timeout", "0..=86400"]),
        },
        Case {
            args: strings(&["serve", "--lua-budget-ms", "18446744073709551615"]),
            code: 2,
            output_contains: strings(&["--lua-budget-ms"]),
        },
        Case {
            args: strings(&["serve", "--ebpf", "sometimes"]),
            code: 2,
            output_contains: strings(&["sometimes"]),
        },
        Case {
            args: strings(&["frobnicate"]),
            code: 2,
            output_contains: strings(&["frobnicate"]),
        },
        Case {
            args: strings(&["check"]),
            code: 2,
            output_contains: vec![],
        },
    ];
    for case in &cases {
        check(case);
    }
}

#[test]
fn check_lists_routes_of_a_valid_app() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = write_file(dir.path(), "app.lua", VALID_APP);
    let case = Case {
        args: vec!["check".into(), app.display().to_string()],
        code: 0,
        output_contains: strings(&[
            "GET /",
            "GET /users/{id}",
            "POST /items",
            "GET /files/{*path}",
        ]),
    };
    check(&case);
}

/// `check` lists static directories too; two prefixes for one location
/// (`/a` and `/a/`) are refused, since one directory would never be
/// served; a directory's path is shown as written (`./nope`, not
/// `././nope`).
#[test]
fn check_lists_static_directories_and_refuses_one_location_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("public")).expect("public");
    std::fs::create_dir_all(dir.path().join("other")).expect("other");
    write_file(
        dir.path(),
        "app.lua",
        r#"return { static = { ["/assets/"] = "./public" }, routes = {} }"#,
    );
    let output = keystone_tests::run_keystone_in(&["check", "app.lua"], Some(dir.path()));
    assert_eq!(output.code, Some(0), "{}", output.all());
    assert!(
        output.stdout.contains("static /assets/: ./public"),
        "{}",
        output.all()
    );
    write_file(
        dir.path(),
        "twice.lua",
        r#"return { static = { ["/a/"] = "./public", ["/a"] = "./other" }, routes = {} }"#,
    );
    write_file(
        dir.path(),
        "missing.lua",
        r#"return { static = { ["/a/"] = "./nope" }, routes = {} }"#,
    );
    for command in ["check", "serve"] {
        let output = keystone_tests::run_keystone_in(&[command, "twice.lua"], Some(dir.path()));
        let all = output.all();
        assert_eq!(output.code, Some(2), "{command}: {all}");
        assert!(
            all.contains("name the same location")
                && all.contains("\"/a\"")
                && all.contains("\"/a/\""),
            "{command}: {all}"
        );
        let output = keystone_tests::run_keystone_in(&[command, "missing.lua"], Some(dir.path()));
        let all = output.all();
        assert_eq!(output.code, Some(2), "{command}: {all}");
        assert!(
            all.contains("static[\"/a/\"]: ./nope is not a directory"),
            "{command}: {all}"
        );
    }
}

/// Recursion through a C function that calls back into Lua while the app
/// loads: a load error with its line (exit 2), never a crashed process.
#[test]
fn recursion_through_c_functions_at_load_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = "local function f(s) return (s:gsub(\".\", f)) end\n\
               return { init_worker = function() f(\"x\") end, routes = {} }\n";
    let path = write_file(dir.path(), "app.lua", app);
    let output = run_keystone(&["check", path.to_str().expect("utf-8")]);
    let all = output.all();
    assert_no_panic(&all, "check");
    assert_eq!(output.code, Some(2), "{all}");
    assert!(
        all.contains("app.lua:1: C stack overflow (string.gsub nested too deeply)"),
        "{all}"
    );
}

#[test]
fn check_and_serve_reject_bad_apps_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let syntax = write_file(dir.path(), "syntax.lua", SYNTAX_ERROR_APP);
    let runtime = write_file(dir.path(), "runtime.lua", RUNTIME_ERROR_APP);
    let no_routes = write_file(dir.path(), "noroutes.lua", NO_ROUTES_APP);
    let not_function = write_file(dir.path(), "notfunction.lua", NOT_A_FUNCTION_APP);
    let missing = dir.path().join("does-not-exist.lua");
    let syntax_line = format!("syntax.lua:{}", line_of(SYNTAX_ERROR_APP, "end end"));
    let runtime_line = format!("runtime.lua:{}", line_of(RUNTIME_ERROR_APP, "error("));
    // (app path, what the message must contain) for both `check` and `serve`:
    // `serve` must fail the same way before it ever listens.
    let apps = [
        (syntax.display().to_string(), vec![syntax_line]),
        (
            runtime.display().to_string(),
            vec![runtime_line, "app failed to initialise".into()],
        ),
        (
            no_routes.display().to_string(),
            vec!["noroutes.lua".into(), "routes".into()],
        ),
        (
            not_function.display().to_string(),
            vec!["GET /broken".into()],
        ),
        (
            missing.display().to_string(),
            vec![missing.display().to_string()],
        ),
    ];
    for (app, contains) in &apps {
        for command in ["check", "serve"] {
            let mut args = vec![command.to_string(), app.clone()];
            if command == "serve" {
                // A port nobody listens on, so a wrongly successful start is visible and harmless.
                args.extend([
                    "--listen".into(),
                    format!("127.0.0.1:{}", keystone_tests::free_port()),
                ]);
            }
            check(&Case {
                args,
                code: 2,
                output_contains: contains.clone(),
            });
        }
    }
}

#[test]
fn flags_are_accepted_by_a_serving_server() {
    // Each documented flag, given a valid value, must not stop the server from serving.
    let cases: [&[&str]; 7] = [
        &["--workers", "2"],
        &["--max-connections", "64"],
        &["--max-body-bytes", "1024"],
        &["--drain-timeout", "3"],
        &["--ebpf", "off"],
        &["--ebpf", "auto"],
        &[
            "--workers",
            "1",
            "--max-connections",
            "8",
            "--ebpf",
            "off",
            "--drain-timeout",
            "1",
        ],
    ];
    for extra in cases {
        let server = Server::start(Some(VALID_APP), extra);
        let response =
            keystone_tests::request(server.addr(), &keystone_tests::get_request("/users/5"));
        assert_eq!(response.status, 200, "with {extra:?}");
        assert_eq!(response.body_str(), r#"{"id":5}"#, "with {extra:?}");
        assert_no_panic(&server.log(), &format!("serve {extra:?}"));
    }
}

/// Issue 13: configuration is validated before the port is bound. The
/// test holds the port itself: a server that bound (or probed) it first
/// would fail with "cannot listen"; each bad flag must fail with its own
/// message instead, before any socket is bound.
#[test]
fn bad_configuration_exits_2_before_the_port_accepts() {
    use std::net::TcpListener;

    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_dir = write_file(dir.path(), "plain-file", "x");
    let not_a_dir = not_a_dir.to_str().expect("utf-8");
    let directory = dir.path().to_str().expect("utf-8");
    let missing_tree = format!("{directory}/no-such-tree");
    let cases: &[(&[&str], &str)] = &[
        (&["--access-log", directory], "cannot open --access-log"),
        (
            &["--access-log", "/nonexistent/dir/access.log"],
            "/nonexistent/dir/access.log",
        ),
        (&["--rocks-tree", &missing_tree], "cannot read --rocks-tree"),
        (&["--rocks-tree", not_a_dir], "cannot read --rocks-tree"),
        (&["--admin", "localhost:nine"], "--admin"),
        (&["--log", directory], "cannot open --log"),
        // One address, two listeners: SO_REUSEPORT would let both bind and
        // split its connections between them at random.
        (
            &["--listen", "127.0.0.1:18999", "--listen", "127.0.0.1:18999"],
            "--listen 127.0.0.1:18999 is given twice",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:18999",
                "--tls-listen",
                "127.0.0.1:18999",
                "--tls-cert",
                "c",
                "--tls-key",
                "k",
            ],
            "127.0.0.1:18999 is given to both --listen and --tls-listen",
        ),
    ];
    for (flags, message) in cases {
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        let listen = held.local_addr().expect("addr").to_string();
        let mut args = vec!["serve", "--listen", listen.as_str()];
        args.extend_from_slice(flags);
        let output = run_keystone(&args);
        let all = output.all();
        assert_eq!(output.code, Some(2), "{flags:?}: {all}");
        assert!(all.contains(message), "{flags:?} lacks {message:?}: {all}");
        assert!(
            !all.contains("cannot listen on 127.0.0.1"),
            "{flags:?}: the port was tried before the configuration: {all}"
        );
        assert!(!all.contains("listening on"), "{flags:?}: {all}");
    }
    // A bad --admin address: bound (and refused) before the server's own
    // listeners exist.
    let port = keystone_tests::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let output = run_keystone(&["serve", "--listen", &listen, "--admin", "203.0.113.7:9"]);
    assert_eq!(output.code, Some(2), "{}", output.all());
    assert!(
        output
            .all()
            .contains("cannot listen on --admin 203.0.113.7:9"),
        "{}",
        output.all()
    );
    // `check` refuses an unreadable tree the same way.
    let app = write_file(dir.path(), "app.lua", "return { routes = {} }\n");
    let output = run_keystone(&[
        "check",
        app.to_str().expect("utf-8"),
        "--rocks-tree",
        &missing_tree,
    ]);
    assert_eq!(output.code, Some(2), "{}", output.all());
    assert!(
        output.all().contains("cannot read --rocks-tree"),
        "{}",
        output.all()
    );
}

#[test]
fn check_lists_upstream_pools_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = write_file(
        dir.path(),
        "app.lua",
        r#"return {
  upstreams = {
    api = { peers = { "127.0.0.1:9001", "localhost:9002" }, balance = "least_conn", keepalive = 8 },
  },
  routes = { ["GET /"] = function(ctx) ctx.upstream = "api" end },
}
"#,
    );
    check(&Case {
        args: vec!["check".into(), app.display().to_string()],
        code: 0,
        output_contains: strings(&[
            "upstream api (LeastConn, keepalive 8, retries 1): 127.0.0.1:9001, localhost:9002 (",
        ]),
    });
    let bad = write_file(
        dir.path(),
        "bad.lua",
        "return { upstreams = { api = { peers = { \"127.0.0.1:9001\" }, balance = \"fastest\" } }, routes = {} }\n",
    );
    for command in ["check", "serve"] {
        check(&Case {
            args: vec![
                command.into(),
                bad.display().to_string(),
                "--listen".into(),
                "127.0.0.1:0".into(),
            ]
            .into_iter()
            .filter(|arg| {
                command == "serve" || !arg.starts_with("--listen") && arg != "127.0.0.1:0"
            })
            .collect(),
            code: 2,
            output_contains: strings(&[
                "bad.lua",
                "upstreams.api.balance: unknown balance \"fastest\"",
            ]),
        });
    }
}
