//! Conformance of the policy bridge in isolation: a real LuaJIT state, a
//! real parsed request, no sockets. Each case runs one handler against one
//! request and checks what policy left in the exchange.

mod support;

use keystone_lua::{AppSource, LoadError, LoadedApp};
use support::respond as run;

fn load(source: &str) -> LoadedApp {
    LoadedApp::load(&AppSource::bundled("test_app.lua", leak(source)), 0, |_| {})
        .unwrap_or_else(|err| panic!("app failed to load: {err}"))
}

fn leak(source: &str) -> &'static str {
    Box::leak(source.to_string().into_boxed_str())
}

const ECHO_APP: &str = r#"
return { routes = {
  ["GET /echo/{id}"] = function(ctx)
    ctx.body = table.concat({ ctx.method, ctx.path, ctx.query, tostring(ctx.args.q),
      tostring(ctx.args.missing), ctx.params.id, tostring(ctx.params.nope),
      tostring(ctx.request.headers["x-token"]), tostring(ctx.request.headers["absent"]),
      ctx.request.body, tostring(ctx.worker) }, "|")
  end,
  ["POST /echo/{id}"] = function(ctx) ctx.body = ctx.request.body end,
}}
"#;

#[test]
fn ctx_reads() {
    let mut app = load(ECHO_APP);
    let response = run(
        &mut app,
        b"GET /echo/7?q=a+b%21&z HTTP/1.1\r\nHost: h\r\nX-TOKEN: secret\r\n\r\n",
    )
    .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(
        response.body,
        "GET|/echo/7|q=a+b%21&z|a b!|nil|7|nil|secret|nil||0"
    );
    let response = run(&mut app, b"GET /echo/x HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert!(
        response.body.starts_with("GET|/echo/x||nil|nil|x|"),
        "{}",
        response.body
    );
}

#[test]
fn ctx_request_body() {
    let mut app = load(ECHO_APP);
    let response = run(
        &mut app,
        b"POST /echo/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    )
    .unwrap();
    assert_eq!(response.body, "hello");
}

#[test]
fn ctx_writes() {
    let mut app = load(
        r#"return { routes = { ["GET /"] = function(ctx)
            ctx.status = 201
            ctx.headers["Content-Type"] = "application/json"
            ctx.headers["X-Num"] = 42
            ctx.headers["Set-Cookie"] = { "a=1", "b=2" }
            ctx.headers["X-Gone"] = "x"
            ctx.headers["X-Gone"] = nil
            ctx.body = 12345
            assert(ctx.headers["content-type"] == "application/json")
            assert(ctx.status == 201)
        end } }"#,
    );
    let response = run(&mut app, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert_eq!(response.status, 201);
    assert_eq!(response.body, "12345");
    let names: Vec<_> = response
        .headers
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    assert_eq!(
        names,
        [
            "Content-Type=application/json",
            "X-Num=42",
            "Set-Cookie=a=1",
            "Set-Cookie=b=2"
        ]
    );
}

/// Policy may declare the body's length: any case, a string of digits or
/// an integral number (written in plain digits, even past tostring's 14
/// significant digits); it reads back, and replaces an earlier one.
#[test]
fn ctx_content_length_may_be_set() {
    let mut app = load(
        r#"return { routes = { ["GET /{v}"] = function(ctx)
            local v = ctx.params.v
            if v == "number" then ctx.headers["Content-Length"] = 5
            elseif v == "big" then ctx.headers["content-length"] = 10^15
            elseif v == "twice" then
              ctx.headers["Content-Length"] = "1"
              ctx.headers["CONTENT-LENGTH"] = "0005"
            elseif v == "pcall" then
              ctx.headers["Content-Length"] = "5"
              assert(not pcall(function() ctx.headers["Content-Length"] = "x" end))
            end
            ctx.body = tostring(ctx.headers["Content-Length"])
        end } }"#,
    );
    for (path, length) in [
        ("/number", "5"),
        ("/big", "1000000000000000"),
        ("/twice", "0005"),
        ("/pcall", "5"),
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
        let response = run(&mut app, request.as_bytes()).unwrap();
        assert_eq!(response.body, length, "{path}");
        let lengths: Vec<_> = response
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(lengths, [length], "{path}");
    }
}

/// One row per policy mistake: the handler body and a fragment the error
/// message must contain (the field, and the app's file:line).
#[test]
fn policy_errors_are_precise() {
    let cases: &[(&str, &str)] = &[
        ("ctx.bogus = 1", "ctx has no writable field 'bogus'"),
        (
            "ctx.status = 'abc'",
            "ctx.status must be an integer from 200 to 999",
        ),
        (
            "ctx.status = 1000",
            "ctx.status must be an integer from 200 to 999",
        ),
        (
            "ctx.status = 99",
            "ctx.status must be an integer from 200 to 999",
        ),
        (
            "ctx.status = 101",
            "ctx.status must be an integer from 200 to 999, got 101",
        ),
        ("ctx.body = {}", "ctx.body as a table must be { file = "),
        ("ctx.body = true", "ctx.body must be a string"),
        (
            "ctx.headers['X-A'] = 'a\\r\\nb'",
            "invalid response header value",
        ),
        (
            "ctx.headers['Bad Name'] = 'v'",
            "invalid response header name",
        ),
        (
            "ctx.headers['X-Pad'] = ' v'",
            "leading or trailing spaces are not allowed) (header 'X-Pad')",
        ),
        (
            "ctx.headers['X-Nul'] = 'a\\0b'",
            "invalid response header value",
        ),
        (
            "ctx.headers['Transfer-Encoding'] = 'chunked'",
            "computed by keystone",
        ),
        (
            "ctx.headers['Content-Length'] = '-5'",
            "invalid Content-Length (must be one plain decimal number: digits only, \
             no sign or spaces, at most 18446744073709551615) (header 'Content-Length', got '-5')",
        ),
        (
            "ctx.headers['content-length'] = 1.5",
            "invalid Content-Length (must be one plain decimal number: digits only, \
             no sign or spaces, at most 18446744073709551615) (header 'content-length', got '1.5')",
        ),
        (
            "ctx.headers['Content-Length'] = 2^64",
            "(header 'Content-Length', got '1.844674407371e+19')",
        ),
        (
            "ctx.headers['Content-Length'] = { '1', '1' }",
            "(header 'Content-Length', got '1')",
        ),
        (
            "ctx.headers['Content-Length'] = '5 '",
            "invalid response header value (CR, LF, NUL, control bytes and leading or \
             trailing spaces are not allowed) (header 'Content-Length')",
        ),
        ("ctx.params.id = 'x'", "ctx.params is read-only"),
        ("error('boom')", "boom"),
        ("local x = nil; x.y = 1", "attempt to index"),
    ];
    for (code, expected) in cases {
        let source =
            format!("return {{ routes = {{ [\"GET /\"] = function(ctx)\n{code}\nend }} }}");
        let mut app = load(&source);
        let err = run(&mut app, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .err()
            .unwrap_or_else(|| panic!("{code} should fail"));
        assert!(err.contains(expected), "{code}: {err}");
        assert!(
            err.contains("test_app.lua:2:"),
            "{code}: no file:line in {err}"
        );
        // The state keeps working after an error, and the next request gets a clean ctx.
        let app_ok = run(&mut app, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(app_ok.is_err(), "same handler fails again");
    }
}

#[test]
fn failed_request_leaves_no_state_for_the_next() {
    let mut app = load(
        r#"local n = 0
        return { routes = { ["GET /"] = function(ctx)
            n = n + 1
            if n == 1 then ctx.headers["X-Leak"] = "1"; ctx.status = 418; ctx.body = "x"; error("first fails") end
            ctx.body = tostring(ctx.headers["X-Leak"]) .. ":" .. ctx.status
        end } }"#,
    );
    assert!(run(&mut app, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").is_err());
    let response = run(&mut app, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert_eq!(response.body, "nil:200");
    assert!(response.headers.is_empty());
}

/// Once dispatch is compiled, the handler runs inside its trace and what
/// does not escape is sunk: `ctx`, the `ctx.headers` and `ctx.params` views
/// cost no allocation (a string the handler already holds is interned, so
/// reading `"42"` makes none either). Views cached for the run (as they
/// were) escape into the cache: 128 bytes per request here.
#[test]
fn a_compiled_handler_allocates_nothing_it_lets_go() {
    let mut app = load(
        r#"return { routes = {
          ["GET /users/{id}"] = function(ctx)
            ctx.headers["Content-Type"] = "application/json"
            if ctx.params.id ~= "42" then error("not 42") end
            ctx.body = '{"id":42}'
          end,
        } }"#,
    );
    let request = b"GET /users/42 HTTP/1.1
Host: h

";
    // Hot enough for LuaJIT to compile dispatch with the handler inside.
    for _ in 0..2_000 {
        run(&mut app, request).unwrap();
    }
    const RUNS: u32 = 1_000;
    app.lua.collect_garbage();
    app.lua.set_collecting(false);
    let before = app.lua.memory_kib();
    for _ in 0..RUNS {
        run(&mut app, request).unwrap();
    }
    let grown = (app.lua.memory_kib() - before) * 1024.0;
    app.lua.set_collecting(true);
    let per_run = grown / f64::from(RUNS);
    assert!(
        per_run < 8.0,
        "{per_run:.1} Lua bytes allocated per request ({grown} over {RUNS})"
    );
    let response = support::respond(&mut app, request).unwrap();
    assert_eq!(response.body, r#"{"id":42}"#);
    assert_eq!(
        response.headers,
        vec![("Content-Type".to_owned(), "application/json".to_owned())]
    );
}

/// A proxy is live only while it is its request's own: one kept from an
/// earlier request fails even when the live request made a proxy of the
/// same kind, and one used after the exchange expired (from a stream
/// generator, before the next request) fails too.
#[test]
fn kept_proxies_expire() {
    let mut app = load(
        r#"local kept = {}
        return { routes = {
          ["GET /save/{id}"] = function(ctx)
            kept.params, kept.headers, kept.args = ctx.params, ctx.headers, ctx.args
            kept.request_headers = ctx.request.headers
            ctx.body = "saved"
          end,
          ["GET /use/{id}"] = function(ctx)
            -- The live request's own proxies first, then the kept ones.
            local mine = ctx.params.id .. ctx.args.q .. ctx.request.headers["x-a"]
            ctx.headers["X-Live"] = "1"
            local results = { mine }
            for _, f in ipairs({
              function() return kept.params.id end,
              function() kept.headers["X-Stale"] = "1" end,
              function() return kept.headers["X-Live"] end,
              function() return kept.args.q end,
              function() return kept.request_headers["x-a"] end,
            }) do
              local ok, err = pcall(f)
              results[#results + 1] = tostring(ok) .. ":" .. tostring(err):match("exchange expired")
            end
            ctx.body = table.concat(results, " ")
          end,
          ["GET /stream"] = function(ctx)
            local headers = ctx.headers
            headers["X-Before"] = "1"
            local step = 0
            ctx.body = function()
              step = step + 1
              if step == 1 then return tostring(pcall(function() return headers["X-Before"] end)) end
              if step == 2 then
                local ok, err = pcall(function() headers["X-After"] = "1" end)
                return tostring(ok) .. ":" .. tostring(err):match("exchange expired")
              end
              return nil
            end
          end,
        } }"#,
    );
    run(
        &mut app,
        b"GET /save/1?q=a HTTP/1.1\r\nHost: h\r\nX-A: a\r\n\r\n",
    )
    .unwrap();
    let response = run(
        &mut app,
        b"GET /use/2?q=b HTTP/1.1\r\nHost: h\r\nX-A: b\r\n\r\n",
    )
    .unwrap();
    let expired = "false:exchange expired";
    assert_eq!(
        response.body,
        format!("2bb {expired} {expired} {expired} {expired} {expired}")
    );
    assert_eq!(
        response.headers,
        vec![("X-Live".to_owned(), "1".to_owned())],
        "a stale write did not touch the live request"
    );

    // The generator runs after the exchange expired (support::respond
    // expires it), as the engine's pulls do.
    run(&mut app, b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    app.lua.pin_body(7).unwrap();
    let mut chunks = Vec::new();
    while let keystone_lua::Pull::Chunk(bytes) = app.lua.pull(7) {
        chunks.push(String::from_utf8_lossy(bytes.as_slice()).into_owned());
    }
    assert_eq!(chunks, vec!["false".to_owned(), expired.to_owned()]);
    app.lua.unpin_body(7);
}

#[test]
fn kept_ctx_expires() {
    let mut app = load(
        r#"local saved
        return { routes = {
          ["GET /save"] = function(ctx) saved = ctx; saved_params = ctx.params; ctx.body = "saved" end,
          ["GET /use"] = function(ctx)
            local ok1, e1 = pcall(function() return saved.path end)
            local ok2, e2 = pcall(function() return saved_params.id end)
            local ok3, e3 = pcall(function() saved.status = 500 end)
            ctx.body = tostring(ok1) .. " " .. tostring(e1) .. "\n" .. tostring(ok2) .. "\n" .. tostring(ok3)
          end,
        } }"#,
    );
    run(&mut app, b"GET /save HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let response = run(&mut app, b"GET /use HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert!(response.body.starts_with("false "), "{}", response.body);
    assert!(
        response.body.contains("exchange expired"),
        "{}",
        response.body
    );
    assert!(response.body.ends_with("false\nfalse"), "{}", response.body);
    assert_eq!(
        response.status, 200,
        "a stale write did not touch the live request"
    );
}

#[test]
fn globals_persist_per_state() {
    let source = r#"return { routes = { ["GET /"] = function(ctx) count = (count or 0) + 1; ctx.body = tostring(count) end } }"#;
    let mut a = load(source);
    let mut b = load(source);
    for _ in 0..3 {
        run(&mut a, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    }
    assert_eq!(
        run(&mut a, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap()
            .body,
        "4"
    );
    assert_eq!(
        run(&mut b, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap()
            .body,
        "1"
    );
}

#[test]
fn sandbox_hides_dangerous_globals() {
    let mut app = load(
        r#"return { routes = { ["GET /"] = function(ctx)
            local seen = {}
            for _, name in ipairs({ "io", "debug", "ffi", "jit", "dofile", "loadfile", "module" }) do
              if _G[name] ~= nil then seen[#seen + 1] = name end
            end
            if os.execute or os.getenv or os.remove then seen[#seen + 1] = "os" end
            if package.loadlib then seen[#seen + 1] = "loadlib" end
            local ok = pcall(require, "ffi")
            if ok then seen[#seen + 1] = "require ffi" end
            local f, err = loadstring(string.dump(function() end))
            if f then seen[#seen + 1] = "bytecode" end
            ctx.body = table.concat(seen, ",") .. "|" .. type(os.time())
        end } }"#,
    );
    assert_eq!(
        run(&mut app, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap()
            .body,
        "|number"
    );
}

fn load_err(source: &str) -> String {
    match LoadedApp::load(&AppSource::bundled("bad_app.lua", leak(source)), 0, |_| {}) {
        Ok(_) => panic!("should not load: {source}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn load_errors_are_precise() {
    let cases: &[(&str, &str)] = &[
        (
            "return {\n routes = {\n ['GET /'] = function(ctx) ctx.body = 'x' end,,\n}}",
            "bad_app.lua:3:",
        ),
        ("error('broken at load')", "bad_app.lua:1: broken at load"),
        (
            "return 42",
            "must return a table with `routes`, got integer",
        ),
        ("return {}", "has no `routes` table"),
        ("return { routes = 1 }", "`routes` must be a table"),
        (
            "return { routes = { ['GET /'] = 'x' } }",
            "routes[\"GET /\"] must be a function",
        ),
        ("return { route = {} }", "unknown field"),
        ("return { routes = { ['GET'] = function() end } }", "GET"),
        (
            "return { routes = { ['GET nopath'] = function() end } }",
            "nopath",
        ),
    ];
    for (source, expected) in cases {
        let err = load_err(source);
        assert!(err.contains(expected), "{source:?}: {err}");
        assert!(err.contains("bad_app.lua"), "{source:?}: no file in {err}");
    }
}

#[test]
fn read_error_names_the_path() {
    let err = AppSource::read(std::path::Path::new("/nonexistent/app.lua")).unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/app.lua"), "{err}");
}

#[test]
fn routes_are_listed_sorted() {
    let app = load(ECHO_APP);
    assert_eq!(app.routes, ["GET /echo/{id}", "POST /echo/{id}"]);
}

#[test]
fn ctx_cookies() {
    let mut app = load(
        r#"return { routes = { ["GET /"] = function(ctx)
            local c = ctx.cookies
            ctx.body = table.concat({ tostring(c.session), tostring(c["a-b"]), tostring(c.q),
              tostring(c.missing), tostring(c.late), tostring(c.first), tostring(c.bare) }, "|")
        end } }"#,
    );
    let response = run(
        &mut app,
        b"GET / HTTP/1.1\r\nHost: h\r\nCookie: session=abc123; a-b=dash ; q=\"quoted value\"\r\nX-Other: late=no\r\nCookie: bare; first=1; late=yes; first=2\r\n\r\n",
    )
    .unwrap();
    assert_eq!(response.body, "abc123|dash|\"quoted value\"|nil|yes|1|nil");
    // No Cookie header: every cookie is nil; writing one is an error.
    let response = run(&mut app, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert_eq!(response.body, "nil|nil|nil|nil|nil|nil|nil");
    let mut app =
        load(r#"return { routes = { ["GET /"] = function(ctx) ctx.cookies.a = "x" end } }"#);
    let Err(error) = run(
        &mut app,
        b"GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\n\r\n",
    ) else {
        panic!("writing a cookie must fail");
    };
    assert!(error.contains("ctx.cookies is read-only"), "{error}");
}

#[test]
fn ctx_upstream_fields() {
    let mut app = load(
        r#"return {
          upstreams = { api = { peers = { "127.0.0.1:9001" } }, auth = { peers = { "127.0.0.1:9002" } } },
          routes = {
            ["GET /p"] = function(ctx)
              ctx.upstream = "auth"
              ctx.upstream_path = "/v2/users?id=7"
              ctx.upstream_key = 42
              ctx.upstream_headers["X-User"] = "alice"
              ctx.upstream_headers["Cookie"] = nil
              ctx.upstream_headers["X-User"] = "bob"
              ctx.body = tostring(ctx.upstream) .. "|" .. ctx.upstream_path .. "|" .. ctx.upstream_key
                .. "|" .. ctx.upstream_headers["x-user"]
            end,
            ["GET /none"] = function(ctx) ctx.body = tostring(ctx.upstream) end,
            ["GET /unknown"] = function(ctx) ctx.upstream = "nope" end,
            ["GET /bad-path"] = function(ctx) ctx.upstream_path = "no-slash" end,
            ["GET /crlf-path"] = function(ctx) ctx.upstream_path = "/a\r\nX: y" end,
            ["GET /bad-header"] = function(ctx) ctx.upstream_headers["X-A"] = "a\r\nb" end,
            ["GET /reserved"] = function(ctx) ctx.upstream_headers["Transfer-Encoding"] = "chunked" end,
            ["GET /reserved-te"] = function(ctx) ctx.upstream_headers["TE"] = "trailers" end,
            ["GET /reserved-expect"] = function(ctx) ctx.upstream_headers["Expect"] = "100-continue" end,
            ["GET /bad-type"] = function(ctx) ctx.upstream_headers["X-A"] = true end,
            ["GET /list"] = function(ctx)
              ctx.upstream_headers["X-List"] = { "a", 2, "c" }
              ctx.upstream_headers["Cookie"] = { "a=1", "b=2" }
              ctx.upstream_headers["X-Gone"] = "x"
              ctx.upstream_headers["X-Gone"] = {}
              ctx.body = ctx.upstream_headers["x-list"] .. "|" .. ctx.upstream_headers["cookie"]
                .. "|" .. tostring(ctx.upstream_headers["x-gone"])
            end,
          },
        }"#,
    );
    let response = run(&mut app, b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert_eq!(response.body, "auth|/v2/users?id=7|42|bob");
    let response = run(&mut app, b"GET /none HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert_eq!(response.body, "nil");
    // A list is one field, joined as repeated fields combine.
    let response = run(&mut app, b"GET /list HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert_eq!(response.body, "a, 2, c|a=1; b=2|nil");
    for (path, message) in [
        ("/unknown", "no upstream named 'nope' (known: api, auth)"),
        ("/bad-path", "ctx.upstream_path must start with '/'"),
        ("/crlf-path", "ctx.upstream_path must start with '/'"),
        (
            "/bad-header",
            "ctx.upstream_headers: invalid request header value (CR, LF, NUL, control bytes and \
             leading or trailing spaces are not allowed) (header 'X-A')",
        ),
        (
            "/reserved",
            "ctx.upstream_headers: this request header is computed by keystone and cannot be set \
             (header 'Transfer-Encoding')",
        ),
        (
            "/reserved-te",
            "ctx.upstream_headers: this request header is computed by keystone and cannot be set \
             (header 'TE')",
        ),
        (
            "/reserved-expect",
            "ctx.upstream_headers: this request header is computed by keystone and cannot be set \
             (header 'Expect')",
        ),
        (
            "/bad-type",
            "ctx.upstream_headers['X-A'] must be a string, number, list of strings or nil, got boolean",
        ),
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
        let Err(error) = run(&mut app, request.as_bytes()) else {
            panic!("{path} must fail");
        };
        assert!(error.contains(message), "{path}: {error}");
    }
}

/// The app `ctx_scheme_and_tls_*` run: every field of `ctx.scheme` and
/// `ctx.tls`, `-` standing for nil.
const TLS_APP: &str = r#"
local saved
local function show(v) if v == nil then return "-" end return v end
return { routes = {
  ["GET /tls"] = function(ctx)
    local tls = ctx.tls
    if tls == nil then ctx.body = ctx.scheme .. " nil" return end
    -- Each access is a fresh view of the same facts.
    assert(ctx.tls.cipher == tls.cipher and ctx.tls.sni == tls.sni, "views of one run agree")
    saved = tls
    ctx.body = table.concat({ ctx.scheme, show(tls.sni), show(tls.protocol),
      show(tls.cipher), show(tls.unknown) }, " ")
  end,
  ["GET /write"] = function(ctx)
    local a, ea = pcall(function() ctx.tls.sni = "other" end)
    local b, eb = pcall(function() ctx.scheme = "http" end)
    local c, ec = pcall(function() ctx.tls = {} end)
    ctx.body = table.concat({ tostring(a), ea, tostring(b), eb, tostring(c), ec }, "\n")
  end,
  ["GET /kept"] = function(ctx)
    local ok, err = pcall(function() return saved.sni end)
    ctx.body = tostring(ok) .. " " .. tostring(err)
  end,
}}
"#;

#[test]
fn ctx_scheme_and_tls_on_cleartext() {
    let mut app = load(TLS_APP);
    let response = run(&mut app, b"GET /tls HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert_eq!(response.body, "http nil");
}

#[test]
fn ctx_scheme_and_tls_show_the_connections_facts() {
    use keystone_exchange::{TlsFacts, TLS_VERSION_1_2, TLS_VERSION_1_3};
    let mut app = load(TLS_APP);
    let request = b"GET /tls HTTP/1.1\r\nHost: h\r\n\r\n";
    let cases = [
        (
            TlsFacts::new(TLS_VERSION_1_3, 0x1301, Some("example.com")),
            "https example.com TLSv1.3 TLS_AES_128_GCM_SHA256 -",
        ),
        (
            TlsFacts::new(TLS_VERSION_1_3, 0x1303, Some("a.b.example")),
            "https a.b.example TLSv1.3 TLS_CHACHA20_POLY1305_SHA256 -",
        ),
        (
            TlsFacts::new(TLS_VERSION_1_2, 0xc02c, None),
            "https - TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384 -",
        ),
        // A suite or version without a name reads as nil, still https.
        (TlsFacts::new(0x0305, 0x00ff, None), "https - - - -"),
        // Encrypted, handshake unfinished (never bound in practice).
        (TlsFacts::pending(), "https - - - -"),
    ];
    for (facts, expected) in cases {
        let response = support::respond_on(&mut app, request, &facts).unwrap();
        assert_eq!(response.body, expected, "{facts:?}");
    }
    // The facts are the bound request's only: the next cleartext one has none.
    let response = run(&mut app, request).unwrap();
    assert_eq!(response.body, "http nil");
}

#[test]
fn ctx_tls_is_read_only_and_expires() {
    use keystone_exchange::{TlsFacts, TLS_VERSION_1_3};
    let mut app = load(TLS_APP);
    let facts = TlsFacts::new(TLS_VERSION_1_3, 0x1302, Some("example.com"));
    let response =
        support::respond_on(&mut app, b"GET /write HTTP/1.1\r\nHost: h\r\n\r\n", &facts).unwrap();
    let lines: Vec<&str> = response.body.lines().collect();
    assert_eq!(lines.len(), 6, "{}", response.body);
    assert_eq!(lines[0], "false");
    assert!(lines[1].contains("ctx.tls is read-only"), "{}", lines[1]);
    assert_eq!(lines[2], "false");
    assert!(
        lines[3].contains("ctx has no writable field 'scheme'"),
        "{}",
        lines[3]
    );
    assert_eq!(lines[4], "false");
    assert!(
        lines[5].contains("ctx has no writable field 'tls'"),
        "{}",
        lines[5]
    );
    support::respond_on(&mut app, b"GET /tls HTTP/1.1\r\nHost: h\r\n\r\n", &facts).unwrap();
    let response =
        support::respond_on(&mut app, b"GET /kept HTTP/1.1\r\nHost: h\r\n\r\n", &facts).unwrap();
    assert!(
        response.body.starts_with("false ") && response.body.contains("exchange expired"),
        "{}",
        response.body
    );
}
