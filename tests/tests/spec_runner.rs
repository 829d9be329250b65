//! `keystone test`: spec files run through the real engine in memory. The
//! runner itself is tested here as a user meets it — the `keystone`
//! binary on spec files written by each test — and its answers are held
//! to `keystone serve`'s over real TCP, byte for byte.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use keystone_tests::{run_keystone_in, write_file, CommandOutput, RawClient, Server};

/// A directory with `app.lua` and `spec/NAME` holding `spec`.
fn project(app: &str, name: &str, spec: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_file(dir.path(), "app.lua", app);
    fs::create_dir(dir.path().join("spec")).expect("spec dir");
    write_file(&dir.path().join("spec"), name, spec);
    dir
}

fn keystone_test(dir: &Path, args: &[&str]) -> CommandOutput {
    let mut all = vec!["test"];
    all.extend_from_slice(args);
    let out = run_keystone_in(&all, Some(dir));
    assert!(!out.timed_out, "keystone test timed out: {}", out.all());
    out
}

const COUNTER_APP: &str = r#"
local hits = 0
return {
  routes = {
    ["GET /hits"] = function(ctx)
      hits = hits + 1
      ctx.body = tostring(hits)
    end,
    ["GET /boom"] = function(ctx)
      local user = nil
      ctx.body = user.name
    end,
    ["GET /spin"] = function(ctx)
      while true do end
    end,
  },
}
"#;

#[test]
fn a_failing_assertion_names_its_file_line_and_both_values() {
    let spec = r#"local app = keystone.app("../app.lua")
describe("hits", function()
  it("start at one", function()
    assert.equal("1", app:request({ path = "/hits" }).body)
  end)
  it("is wrong on purpose", function()
    local res = app:request { path = "/hits" }
    assert.equal(201, res.status)
  end)
end)
"#;
    let dir = project(COUNTER_APP, "hits_spec.lua", spec);
    let out = keystone_test(dir.path(), &[]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stdout
            .contains("spec/hits_spec.lua:8: hits is wrong on purpose: expected: 201, actual: 200"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("1 passed, 1 failed"), "{}", out.stdout);
}

#[test]
fn a_handler_error_shows_the_apps_traceback_under_the_failure() {
    let spec = r#"local app = keystone.app("../app.lua")
it("boom answers 200", function()
  assert.equal(200, app:request({ path = "/boom" }).status)
end)
"#;
    let dir = project(COUNTER_APP, "boom_spec.lua", spec);
    let out = keystone_test(dir.path(), &[]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stdout
            .contains("spec/boom_spec.lua:3: boom answers 200: expected: 200, actual: 500"),
        "{}",
        out.stdout
    );
    // The handler's own frame is in the traceback: app.lua:11 raised.
    assert!(
        out.stdout
            .contains("handler failed: app.lua:11: attempt to index local 'user'"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("app.lua:11: in function"),
        "{}",
        out.stdout
    );
}

#[test]
fn each_test_gets_a_fresh_app_unless_the_spec_keeps_its_state() {
    let spec = r#"local fresh = keystone.app("../app.lua")
local kept = keystone.app("../app.lua", { keep_state = true })
describe("state", function()
  it("first", function()
    assert.equal("1", fresh:request({ path = "/hits" }).body)
    assert.equal("1", kept:request({ path = "/hits" }).body)
  end)
  it("second", function()
    assert.equal("1", fresh:request({ path = "/hits" }).body)
    assert.equal("2", kept:request({ path = "/hits" }).body)
  end)
end)
"#;
    let dir = project(COUNTER_APP, "state_spec.lua", spec);
    let out = keystone_test(dir.path(), &[]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stdout.contains("2 passed, 0 failed"), "{}", out.stdout);
}

#[test]
fn a_runaway_handler_is_stopped_by_the_budget() {
    let spec = r#"local app = keystone.app("../app.lua")
it("spins", function()
  local started = os.clock()
  assert.equal(503, app:request({ path = "/spin" }).status)
  assert.equal("1", app:request({ path = "/hits" }).body) -- the app goes on
end)
"#;
    let dir = project(COUNTER_APP, "spin_spec.lua", spec);
    let out = keystone_test(dir.path(), &["--lua-budget-ms", "100"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
}

#[test]
fn a_spec_that_does_not_load_exits_2_naming_its_line() {
    let dir = project(
        COUNTER_APP,
        "broken_spec.lua",
        "describe(\"x\", function()\n  it(\"y\", function() end\nend)\n",
    );
    let out = keystone_test(dir.path(), &[]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stdout.contains("spec/broken_spec.lua:"),
        "{}",
        out.all()
    );
    assert!(out.stdout.contains("did not load"), "{}", out.all());

    // An app that does not load is a spec that does not load, with the
    // app's file:line.
    let dir = project(
        "return { routes = { [\"GET /\"] = function(ctx) ctx.body = end } }\n",
        "app_spec.lua",
        "local app = keystone.app(\"../app.lua\")\nit(\"never\", function() end)\n",
    );
    let out = keystone_test(dir.path(), &[]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(out.stdout.contains("app.lua:1:"), "{}", out.all());

    // No spec/ and no path: exit 2 with what to do.
    let empty = tempfile::tempdir().expect("tempdir");
    let out = keystone_test(empty.path(), &[]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(out.stderr.contains("no spec/ directory"), "{}", out.all());
    let out = keystone_test(empty.path(), &["missing_spec.lua"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(out.stderr.contains("missing_spec.lua"), "{}", out.all());
}

const GATEWAY_APP: &str = r#"
return {
  upstreams = { orders = { peers = { "127.0.0.1:9" } } },
  routes = {
    ["* /orders"] = function(ctx)
      ctx.upstream = "orders"
      ctx.upstream_path = "/v1/orders"
      ctx.upstream_headers["X-User"] = "alice"
    end,
  },
}
"#;

#[test]
fn an_upstream_fake_sees_the_request_as_the_engine_reserializes_it() {
    let spec = r#"local app = keystone.app("../app.lua")
describe("orders", function()
  it("proxies orders to the orders service", function()
    local seen
    app:upstream("orders", function(req)
      seen = req
      return { status = 201, headers = { ["Content-Type"] = "application/json" }, body = '{"ok":true}' }
    end)
    local res = app:request {
      method = "POST", path = "/orders", body = "{}",
      remote_addr = "198.51.100.7",
      headers = {
        Connection = "keep-alive, X-Secret",
        ["X-Secret"] = "1",
        ["Keep-Alive"] = "timeout=5",
        ["Proxy-Connection"] = "keep-alive",
        TE = "trailers",
        ["X-Kept"] = "yes",
      },
    }
    assert.equal(201, res.status)
    assert.same({ ok = true }, res:json())
    assert.equal("POST", seen.method)
    assert.equal("/v1/orders", seen.path)
    assert.equal("{}", seen.body)
    assert.equal("198.51.100.7", seen.headers["x-forwarded-for"])
    assert.equal("alice", seen.headers["x-user"])
    assert.equal("yes", seen.headers["x-kept"])
    for _, gone in ipairs { "x-secret", "keep-alive", "proxy-connection", "te" } do
      assert.is_nil(seen.headers[gone], gone .. " is hop-by-hop")
    end
    assert.falsy(seen.raw:lower():find("x-secret", 1, true))
    assert.matches("^POST /v1/orders HTTP/1%.1\r\n", seen.raw)
  end)
  it("answers 502 when the fake closes unanswered", function()
    app:upstream("orders", function() return nil end)
    assert.equal(502, app:request({ path = "/orders" }).status)
  end)
  it("has no fake left from the test before", function()
    assert.equal(502, app:request({ path = "/orders" }).status)
  end)
  it("names the pools when a fake names none of them", function()
    assert.error_matches(function()
      app:upstream("billing", function() end)
    end, "declares no upstream 'billing'")
  end)
  it("fails the test where the fake raised", function()
    app:upstream("orders", function() error("fake exploded") end)
    app:request { path = "/orders" }
  end)
end)
"#;
    let dir = project(GATEWAY_APP, "orders_spec.lua", spec);
    let out = keystone_test(dir.path(), &[]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.stdout.contains("4 passed, 1 failed"), "{}", out.stdout);
    assert!(
        out.stdout.contains("spec/orders_spec.lua:") && out.stdout.contains("fake exploded"),
        "{}",
        out.stdout
    );
}

/// A failing `teardown` is its own error ("<block> teardown", at the
/// teardown's line), as busted reports it: the block's last test keeps its
/// own result.
#[test]
fn a_failing_teardown_is_reported_apart_from_the_last_test() {
    let spec = r#"local app = keystone.app("../app.lua")
describe("api", function()
  teardown(function()
    error("cleanup broke")
  end)
  it("first", function() assert.equal(200, app:request({ path = "/hits" }).status) end)
  it("last", function() assert.equal(200, app:request({ path = "/hits" }).status) end)
end)
"#;
    let dir = project(COUNTER_APP, "td_spec.lua", spec);
    let out = keystone_test(dir.path(), &["--verbose"]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.stdout.contains("2 passed, 1 failed"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("spec/td_spec.lua:4: api teardown: teardown failed:"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("cleanup broke"), "{}", out.stdout);
    assert!(!out.stdout.contains("api last: teardown"), "{}", out.stdout);
}

#[test]
fn filter_junit_and_pending() {
    let spec = r#"local app = keystone.app("../app.lua")
describe("api", function()
  it("counts hits", function()
    assert.equal(200, app:request({ path = "/hits" }).status)
  end)
  it("breaks <on purpose>", function()
    assert.equal(404, app:request({ path = "/hits" }).status)
  end)
  pending("is not written yet")
end)
"#;
    let dir = project(COUNTER_APP, "api_spec.lua", spec);
    let junit = dir.path().join("junit.xml");
    let junit_arg = junit.display().to_string();
    let out = keystone_test(dir.path(), &["--junit", &junit_arg]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stdout.contains("1 passed, 1 failed, 1 pending"),
        "{}",
        out.stdout
    );
    let xml = fs::read_to_string(&junit).expect("junit written");
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(xml.contains("<testsuite name=\"spec/api_spec.lua\" tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\""), "{xml}");
    assert!(
        xml.contains("name=\"api breaks &lt;on purpose&gt;\""),
        "{xml}"
    );
    assert!(
        xml.contains("<failure message=\"expected: 404, actual: 200\""),
        "{xml}"
    );
    assert!(xml.contains("<skipped"), "{xml}");

    let out = keystone_test(dir.path(), &["--filter", "counts"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stdout.contains("1 passed, 0 failed"), "{}", out.stdout);
    // Plain text matches itself even where it is no valid Lua pattern.
    let out = keystone_test(dir.path(), &["--filter", "<on purpose>"]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.stdout.contains("0 passed, 1 failed"), "{}", out.stdout);
    let out = keystone_test(dir.path(), &["--filter", "[unclosed"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout
            .contains("no test's name matches --filter \"[unclosed\""),
        "{}",
        out.stdout
    );
}

#[test]
fn json_without_cjson_uses_the_bundled_reader() {
    let app = r#"return { routes = { ["GET /j"] = function(ctx)
  ctx.headers["Content-Type"] = "application/json"
  ctx.body = [[{"a":[1,2.5,-3e2,"\u00e9\n"],"b":null,"c":{"d":true}}]]
end } }"#;
    let spec = r#"local app = keystone.app("../app.lua")
it("decodes", function()
  local ok = pcall(require, "cjson")
  assert.falsy(ok)
  local value = app:request({ path = "/j" }):json()
  assert.same({ 1, 2.5, -300, "é\n" }, value.a)
  assert.equal(keystone.null, value.b)
  assert.is_true(value.c.d)
end)
"#;
    let dir = project(app, "json_spec.lua", spec);
    let mut command = std::process::Command::new(keystone_tests::keystone_bin());
    let out = command
        .args(["test"])
        .current_dir(dir.path())
        .env("LUA_CPATH", "/nonexistent/?.so")
        .output()
        .expect("run keystone test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The table of requests `keystone test` and `keystone serve` must answer
/// alike; each closes its connection, so a response is everything sent.
const SAME_AS_SERVE_APP: &str = r#"
return {
  static = { ["/assets/"] = "STATIC_DIR" },
  routes = {
    ["GET /"] = function(ctx) ctx.body = "Hello, World!" end,
    ["GET /users/{id}"] = function(ctx)
      ctx.headers["Content-Type"] = "application/json"
      ctx.body = '{"id":' .. ctx.params.id .. '}'
    end,
    ["POST /echo"] = function(ctx)
      ctx.status = 201
      ctx.headers["X-Len"] = tostring(#ctx.request.body)
      ctx.body = ctx.request.body
    end,
    ["GET /stream"] = function(ctx)
      local n = 0
      ctx.body = function()
        n = n + 1
        if n > 3 then return nil end
        return "chunk" .. n .. "\n"
      end
    end,
    ["GET /file"] = function(ctx) ctx.body = { file = "public/hello.txt" } end,
    ["GET /boom"] = function(ctx) error("boom") end,
    ["GET /ip"] = function(ctx) ctx.body = ctx.remote_addr end,
  },
}
"#;

const CASES: &[(&str, &str)] = &[
    ("root", "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    ("head", "HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    ("user", "GET /users/42?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    ("not_found", "GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    ("wrong_method", "DELETE / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    ("echo", "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"),
    ("echo_chunked", "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
    ("continue", "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nok"),
    ("stream", "GET /stream HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    ("stream_http10", "GET /stream HTTP/1.0\r\n\r\n"),
    ("static", "GET /assets/hello.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    ("static_range", "GET /assets/hello.txt HTTP/1.1\r\nHost: a\r\nRange: bytes=2-5\r\nConnection: close\r\n\r\n"),
    ("static_missing", "GET /assets/none.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    ("static_escape", "GET /assets/../app.lua HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    ("file_body", "GET /file HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    ("handler_error", "GET /boom HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    ("no_host", "GET / HTTP/1.1\r\n\r\n"),
    ("bad_version", "GET / HTTP/9.9\r\nHost: a\r\n\r\n"),
    ("smuggle", "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("pipelined", "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /users/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    ("ip", "GET /ip HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
];

/// The two apps' copies of a file must have one validator (`ETag` and
/// `Last-Modified` come from the modification time).
fn same_mtime(path: &Path) {
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_780_000_000);
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|file| file.set_modified(when))
        .expect("set the file's mtime");
}

/// `Date` differs by the second it was made; everything else must not.
fn normalize(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive("\r\n") {
        if line.starts_with("Date: ") {
            out.push_str("Date: (normalized)\r\n");
        } else {
            out.push_str(line);
        }
    }
    out
}

#[test]
fn identical_bytes_to_serve_over_tcp_for_a_table_of_requests() {
    // Both apps serve the same static directory (an absolute path); file
    // bodies are beneath each app's own directory.
    let statics = tempfile::tempdir().expect("tempdir");
    write_file(statics.path(), "hello.txt", "hello, static world\n");
    let app = SAME_AS_SERVE_APP.replace("STATIC_DIR", &statics.path().display().to_string());
    let dir = project(&app, "same_spec.lua", "");
    fs::create_dir(dir.path().join("public")).expect("public");
    write_file(
        &dir.path().join("public"),
        "hello.txt",
        "hello, static world\n",
    );
    same_mtime(&dir.path().join("public/hello.txt"));
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).expect("out dir");
    // The spec sends every case and writes what came back, byte for byte.
    let mut spec = String::from("local app = keystone.app(\"../app.lua\")\nlocal cases = {\n");
    for (name, raw) in CASES {
        spec.push_str(&format!("  {{ {name:?}, {raw:?} }},\n"));
    }
    spec.push_str(
        r#"}
for _, case in ipairs(cases) do
  it(case[1], function()
    local res = app:request { raw = case[2], remote_addr = "127.0.0.1" }
    local file = assert(io.open(os.getenv("KEYSTONE_SPEC_OUT") .. "/" .. case[1], "wb"))
    file:write(res.raw)
    file:close()
  end)
end
"#,
    );
    write_file(&dir.path().join("spec"), "same_spec.lua", &spec);
    let out = std::process::Command::new(keystone_tests::keystone_bin())
        .args(["test"])
        .current_dir(dir.path())
        .env("KEYSTONE_SPEC_OUT", &out_dir)
        .output()
        .expect("run keystone test");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start(Some(&app), &[]);
    // The server's app lives in its own directory: give it the same files.
    let served_dir = server.app_path().parent().expect("app dir").to_path_buf();
    fs::create_dir_all(served_dir.join("public")).expect("public");
    write_file(
        &served_dir.join("public"),
        "hello.txt",
        "hello, static world\n",
    );
    same_mtime(&served_dir.join("public/hello.txt"));
    let mut differences = BTreeMap::new();
    for (name, raw) in CASES {
        let mut client = RawClient::connect(server.addr());
        client.send(raw.as_bytes());
        let served = match client.read_to_end() {
            keystone_tests::Ending::Closed(bytes) | keystone_tests::Ending::StillOpen(bytes) => {
                bytes
            }
        };
        let tested = fs::read(out_dir.join(name)).expect("the spec wrote the case");
        let (served, tested) = (normalize(&served), normalize(&tested));
        assert!(!served.is_empty(), "{name}: serve sent nothing");
        if served != tested {
            differences.insert(*name, (served, tested));
        }
    }
    assert!(
        differences.is_empty(),
        "keystone test and keystone serve answered differently: {differences:#?}"
    );
}

/// A pool whose peer names cannot resolve here, pointed at fakes that
/// behave like backends: closing, hanging, close-delimited, failing inside.
const FAKES_APP: &str = r#"
return {
  upstreams = {
    orders = { peers = { "orders.internal.invalid:8080" }, read_timeout = 5 },
  },
  routes = {
    ["* /o"] = function(ctx) ctx.upstream = "orders" end,
  },
}
"#;

#[test]
fn fakes_behave_like_backends_and_fail_where_they_assert() {
    let spec = r#"local app = keystone.app("../app.lua", { keep_state = true })
describe("fakes", function()
  setup(function() app:upstream("orders", "from setup") end)
  it("a setup's fake lasts for the block (1)", function()
    assert.equal("from setup", app:request({ path = "/o" }).body)
  end)
  it("a setup's fake lasts for the block (2)", function()
    assert.equal("from setup", app:request({ path = "/o" }).body)
  end)
  it("a fake that closed does not poison the next one", function()
    app:upstream("orders", function() return nil end)
    assert.equal(502, app:request({ path = "/o" }).status)
    app:upstream("orders", function() return "ok" end)
    assert.equal("ok", app:request({ path = "/o" }).body)
  end)
  it("a close-delimited raw answer ends with the close", function()
    app:upstream("orders", { raw = "HTTP/1.1 200 OK\r\n\r\nuntil-close" })
    local res = app:request { path = "/o" }
    assert.equal("until-close", res.body)
    assert.is_true(res.complete)
  end)
  it("a fake that never answers is the pool's timeout: 504", function()
    app:upstream("orders", { raw = "", close = false })
    assert.equal(504, app:request({ path = "/o" }).status)
  end)
  it("a status alone", function()
    app:upstream("orders", 404)
    assert.equal(404, app:request({ path = "/o" }).status)
  end)
  it("an assertion inside a fake fails at its own line", function()
    app:upstream("orders", function(req)
      assert.equal("/elsewhere", req.path)
    end)
    app:request { path = "/o" }
  end)
  it("binary values \255 print escaped", function()
    print("printed by the spec")
    assert.equal("\255\254", "\255\253")
  end)
end)
"#;
    let dir = project(FAKES_APP, "fakes_spec.lua", spec);
    let junit = dir.path().join("reports/ci/junit.xml");
    let junit_arg = junit.display().to_string();
    let out = keystone_test(dir.path(), &["--junit", &junit_arg]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.stdout.contains("6 passed, 2 failed"), "{}", out.stdout);
    // The assertion in the fake is a failure (not an error) at its line, 32.
    assert!(
        out.stdout.contains(
            "spec/fakes_spec.lua:32: fakes an assertion inside a fake fails at its own line: \
             expected: \"/elsewhere\", actual: \"/o\""
        ),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("runtime error"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains(r#"expected: "\255\254", actual: "\255\253""#),
        "{}",
        out.stdout
    );
    // The spec's print comes in order, before the report.
    let printed = out.stdout.find("printed by the spec").expect("printed");
    assert!(
        printed < out.stdout.find("6 passed").expect("summary"),
        "{}",
        out.stdout
    );
    let xml = fs::read_to_string(&junit).expect("junit written into a new directory");
    assert!(xml.contains("failures=\"2\" errors=\"0\""), "{xml}");
}

#[test]
fn an_app_that_never_finishes_loading_is_stopped_by_the_budget() {
    let dir = project(
        "while true do end\nreturn { routes = {} }\n",
        "loop_spec.lua",
        "local app = keystone.app(\"../app.lua\")\nit(\"never\", function() end)\n",
    );
    let out = keystone_test(dir.path(), &["--lua-budget-ms", "100"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stdout
            .contains("keystone.app: app.lua:1: handler exceeded its time budget"),
        "{}",
        out.stdout
    );
}

const TWO_PEERS_APP: &str = r#"
return {
  upstreams = { api = { peers = { "10.0.0.1:80", "10.0.0.2:80" }, retries = 1 } },
  routes = {
    ["GET /p"] = function(ctx)
      ctx.upstream = "api"
      ctx.on_response = function(ctx) ctx.headers["X-Addr"] = ctx.upstream_addr end
    end,
  },
}
"#;

#[test]
fn fakes_answer_as_each_peer_and_the_runner_refuses_what_would_mislead() {
    let spec = r#"package.path = "spec/?.lua;" .. package.path
local app = require "support.app"
it("a failed peer fails over to the next, as under serve", function()
  local asked = {}
  app:upstream("api", function(req)
    asked[#asked + 1] = req.peer
    if req.peer == "10.0.0.1:80" then return nil end
    return "from " .. req.peer
  end)
  local res = app:request { path = "/p" }
  assert.equal("from 10.0.0.2:80", res.body)
  assert.equal("10.0.0.2:80", res.headers["x-addr"])
  assert.same({ "10.0.0.1:80", "10.0.0.2:80" }, asked)
end)
it("a body short of its length is cut short, as a backend's would be", function()
  app:upstream("api", { headers = { ["Content-Length"] = "10" }, body = "abc" })
  local res = app:request { path = "/p" }
  assert.is_false(res.complete)
  assert.is_true(res.closed)
end)
it("has no error", function()
  assert.has_no.errors(function() end)
  assert.has_error(function() error("x") end)
end)
it("a misspelt field", function()
  assert.error_matches(function() app:request { pth = "/p" } end, "unknown field 'pth'")
  assert.error_matches(function() app:request { body = "", json = {} } end, "not both")
  assert.error_matches(function()
    app:request { path = "/p", headers = { X = "a\r\nX-Evil: 1" } }
  end, "CR, LF or NUL")
end)
it("os.exit would lose the report", function()
  assert.error_matches(function() os.exit(0) end, "without its report")
end)
it("json says what came instead", function()
  app:upstream("api", { headers = { ["Content-Type"] = "text/html" }, body = "<h1>oops</h1>" })
  assert.error_matches(function() app:request({ path = "/p" }):json() end,
    'status 200, Content%-Type text/html, body "<h1>oops</h1>"')
end)
"#;
    let dir = project(TWO_PEERS_APP, "peers_spec.lua", spec);
    // The app is opened by a helper module, relative to the helper.
    fs::create_dir(dir.path().join("spec/support")).expect("support dir");
    write_file(
        &dir.path().join("spec/support"),
        "app.lua",
        "local app = keystone.app(\"../../app.lua\")\nreturn app\n",
    );
    // Named twice: run once.
    let out = keystone_test(dir.path(), &["spec", "spec/peers_spec.lua"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stdout.contains("6 passed, 0 failed"), "{}", out.stdout);
}
