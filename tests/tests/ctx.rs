//! What a handler reads from `ctx` and what its writes do to the response,
//! including the headers every response carries.

use keystone_tests::{curl, from_ureq, line_of, request, ureq_agent, Response, Server};

const APP: &str = r#"return {
  routes = {
    ["GET /method"] = function(ctx) ctx.body = ctx.method end,
    ["POST /method"] = function(ctx) ctx.body = ctx.method end,
    ["GET /path/{*rest}"] = function(ctx) ctx.body = ctx.path end,
    ["GET /query"] = function(ctx) ctx.body = "[" .. ctx.query .. "]" end,
    ["GET /arg"] = function(ctx) ctx.body = tostring(ctx.args.name) end,
    ["GET /params/{a}/{b}"] = function(ctx) ctx.body = ctx.params.a .. "," .. ctx.params.b end,
    ["GET /header"] = function(ctx)
      local h = ctx.request.headers
      ctx.body = tostring(h["x-probe"]) .. "," .. tostring(h["X-Probe"]) .. "," .. tostring(h["x-absent"])
    end,
    ["GET /body"] = function(ctx) ctx.body = "[" .. ctx.request.body .. "]" end,
    ["POST /body"] = function(ctx) ctx.body = "[" .. ctx.request.body .. "]" end,
    ["GET /worker"] = function(ctx) ctx.body = tostring(ctx.worker) end,
    ["GET /status/{code}"] = function(ctx) ctx.status = tonumber(ctx.params.code); ctx.body = "s" end,
    ["GET /custom-header"] = function(ctx) ctx.headers["X-Custom"] = "custom value"; ctx.body = "h" end,
    ["GET /json"] = function(ctx)
      ctx.headers["Content-Type"] = "application/json"
      ctx.body = '{"ok":true}'
    end,
    ["GET /empty"] = function(ctx) end,
    ["GET /utf8"] = function(ctx) ctx.body = "h\195\169llo" end,
    ["GET /unknown-field"] = function(ctx)
      ctx.bogus_field_name = 1
    end,
  },
}
"#;

/// A raw request and the status and body it must get.
struct ReadCase {
    request: &'static str,
    status: u16,
    body: &'static str,
}

const READS: &[ReadCase] = &[
    ReadCase {
        request: "GET /method HTTP/1.1\r\nHost: t\r\n\r\n",
        status: 200,
        body: "GET",
    },
    ReadCase {
        request: "POST /method HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        status: 200,
        body: "POST",
    },
    ReadCase {
        request: "GET /path/a/b/c?x=1 HTTP/1.1\r\nHost: t\r\n\r\n",
        status: 200,
        body: "/path/a/b/c",
    },
    ReadCase {
        request: "GET /query?a=1&b=two HTTP/1.1\r\nHost: t\r\n\r\n",
        status: 200,
        body: "[a=1&b=two]",
    },
    // The raw query keeps its escapes; only ctx.args decodes.
    ReadCase {
        request: "GET /query?q=a%20b HTTP/1.1\r\nHost: t\r\n\r\n",
        status: 200,
        body: "[q=a%20b]",
    },
    ReadCase {
        request: "GET /query HTTP/1.1\r\nHost: t\r\n\r\n",
        status: 200,
        body: "[]",
    },
    ReadCase {
        request: "GET /query? HTTP/1.1\r\nHost: t\r\n\r\n",
        status: 200,
        body: "[]",
    },
    ReadCase {
        request: "GET /arg?name=ada HTTP/1.1\r\nHost: t\r\n\r\n",
        status: 200,
        body: "ada",
    },
    ReadCase {
        request: "GET /arg?x=1&name=hello%20world&y=2 HTTP/1.1\r\nHost: t\r\n\r\n",
        status: 200,
        body: "hello world",
    },
    ReadCase {
        request: "GET /arg?name=a%2Fb%3Dc HTTP/1.1\r\nHost: t\r\n\r\n",
        status: 200,
        body: "a/b=c",
    },
    ReadCase {
        request: "GET /arg?other=1 HTTP/1.1\r\nHost: t\r\n\r\n",
        status: 200,
        body: "nil",
    },
    ReadCase {
        request: "GET /arg HTTP/1.1\r\nHost: t\r\n\r\n",
        status: 200,
        body: "nil",
    },
    ReadCase {
        request: "GET /params/one/two HTTP/1.1\r\nHost: t\r\n\r\n",
        status: 200,
        body: "one,two",
    },
    ReadCase {
        request: "GET /header HTTP/1.1\r\nHost: t\r\nX-Probe: yes\r\n\r\n",
        status: 200,
        body: "yes,yes,nil",
    },
    ReadCase {
        request: "GET /header HTTP/1.1\r\nHost: t\r\nx-PROBE: mixed\r\n\r\n",
        status: 200,
        body: "mixed,mixed,nil",
    },
    ReadCase {
        request: "GET /header HTTP/1.1\r\nHost: t\r\n\r\n",
        status: 200,
        body: "nil,nil,nil",
    },
    ReadCase {
        request: "GET /body HTTP/1.1\r\nHost: t\r\n\r\n",
        status: 200,
        body: "[]",
    },
    ReadCase {
        request: "POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        status: 200,
        body: "[hello]",
    },
    ReadCase {
        request: "POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        status: 200,
        body: "[]",
    },
    ReadCase {
        request: "GET /worker HTTP/1.1\r\nHost: t\r\n\r\n",
        status: 200,
        body: "0",
    },
];

#[test]
fn ctx_reads() {
    let server = Server::start(Some(APP), &[]);
    // All on one keep-alive connection: each request must see only its own fields.
    let mut client = server.raw();
    for case in READS {
        client.send(case.request.as_bytes());
        let response = client.read_response();
        assert_eq!(response.status, case.status, "{:?}", case.request);
        assert_eq!(response.body_str(), case.body, "{:?}", case.request);
    }
}

/// A path and what the response must carry: status, body, and exact header values.
struct WriteCase {
    path: &'static str,
    status: u16,
    body: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

const TEXT: &str = "text/plain; charset=utf-8";

const WRITES: &[WriteCase] = &[
    WriteCase {
        path: "/method",
        status: 200,
        body: "GET",
        headers: &[("content-type", TEXT), ("content-length", "3")],
    },
    WriteCase {
        path: "/status/201",
        status: 201,
        body: "s",
        headers: &[("content-length", "1")],
    },
    WriteCase {
        path: "/status/418",
        status: 418,
        body: "s",
        headers: &[],
    },
    WriteCase {
        path: "/status/503",
        status: 503,
        body: "s",
        headers: &[],
    },
    WriteCase {
        path: "/custom-header",
        status: 200,
        body: "h",
        headers: &[("x-custom", "custom value"), ("content-type", TEXT)],
    },
    WriteCase {
        path: "/json",
        status: 200,
        body: r#"{"ok":true}"#,
        headers: &[
            ("content-type", "application/json"),
            ("content-length", "11"),
        ],
    },
    WriteCase {
        path: "/empty",
        status: 200,
        body: "",
        headers: &[("content-length", "0")],
    },
    // Content-Length counts bytes, not characters: "héllo" is 6 bytes.
    WriteCase {
        path: "/utf8",
        status: 200,
        body: "héllo",
        headers: &[("content-length", "6")],
    },
];

fn check_write(client: &str, case: &WriteCase, response: &Response) {
    let what = format!("{client}: GET {}", case.path);
    assert_eq!(response.status, case.status, "{what}");
    assert_eq!(response.body_str(), case.body, "{what}");
    for (name, value) in case.headers {
        assert_eq!(response.header(name), Some(*value), "{what}: header {name}");
    }
    // Every response: Server, Date (IMF-fixdate, 29 bytes ending in GMT),
    // one Content-Length, one Content-Type.
    assert_eq!(response.header("server"), Some("keystone"), "{what}");
    let date = response
        .header("date")
        .unwrap_or_else(|| panic!("{what}: no Date header"));
    assert!(
        date.len() == 29 && date.ends_with(" GMT"),
        "{what}: Date {date:?} is not an IMF-fixdate"
    );
    assert_eq!(response.header_count("content-length"), 1, "{what}");
    assert_eq!(response.header_count("content-type"), 1, "{what}");
}

#[test]
fn ctx_writes_and_standard_headers() {
    let server = Server::start(Some(APP), &[]);
    let agent = ureq_agent();
    for case in WRITES {
        let raw = format!(
            "GET {} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            case.path
        );
        check_write("raw", case, &request(server.addr(), &raw));
        check_write("curl", case, &curl(&[&server.url(case.path)]));
        let response = agent
            .get(&server.url(case.path))
            .call()
            .expect("ureq request");
        check_write("ureq", case, &from_ureq(response));
    }
}

#[test]
fn writing_unknown_ctx_field_is_500_naming_the_field() {
    let server = Server::start(Some(APP), &[]);
    let response = request(
        server.addr(),
        "GET /unknown-field HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 500);
    // The name of the field and where it was written are what a developer needs to fix it.
    let line = line_of(APP, "bogus_field_name");
    let log = server.wait_for_log("bogus_field_name", std::time::Duration::from_secs(2));
    assert!(
        log.contains("bogus_field_name"),
        "log does not name the field:\n{log}"
    );
    assert!(
        log.contains(&format!("app.lua:{line}")),
        "log lacks app.lua:{line}:\n{log}"
    );
    // The worker survives its handler's error.
    let after = request(
        server.addr(),
        "GET /method HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(after.status, 200);
    assert_eq!(after.body_str(), "GET");
}

/// `ctx.remote_addr` is the client's IP (nginx's `$remote_addr`), read from
/// the socket only when a handler asks; a kept ctx still expires.
#[test]
fn remote_addr_is_the_client_ip() {
    let app = r#"return { routes = {
      ["GET /ip"] = function(ctx) ctx.body = tostring(ctx.remote_addr) end,
    } }"#;
    let server = keystone_tests::Server::start(Some(app), &[]);
    let response = keystone_tests::request(server.addr(), &keystone_tests::get_request("/ip"));
    assert_eq!(response.status, 200);
    assert_eq!(response.body_str(), "127.0.0.1");
}

/// `ctx.headers["Server"]` replaces the engine's banner (one `Server`
/// line), as `ngx.header.Server` does; without it, `Server: keystone`.
#[test]
fn a_server_header_replaces_the_engines() {
    let app = r#"return { routes = {
      ["GET /own"] = function(ctx) ctx.headers["Server"] = "my-app/1.0" ctx.body = "x" end,
      ["GET /plain"] = function(ctx) ctx.body = "x" end,
    } }"#;
    let server = Server::start(Some(app), &[]);
    let own = curl(&[&server.url("/own")]);
    assert_eq!(own.header_count("server"), 1, "{own:?}");
    assert_eq!(own.header("server"), Some("my-app/1.0"));
    let plain = curl(&[&server.url("/plain")]);
    assert_eq!(plain.header("server"), Some("keystone"));
}

/// A header sent on several lines is one list (RFC 9110 §5.3), joined in
/// order with `, ` (`; ` for Cookie); empty lines add nothing.
#[test]
fn repeated_request_headers_read_as_one_list() {
    let app = r#"return { routes = {
      ["GET /h/{name}"] = function(ctx) ctx.body = tostring(ctx.request.headers[ctx.params.name]) end,
    } }"#;
    let server = Server::start(Some(app), &[]);
    let mut client = server.raw();
    let cases: &[(&str, &str, &str)] = &[
        (
            "x-forwarded-for",
            "X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2, 3.3.3.3\r\n",
            "1.1.1.1, 2.2.2.2, 3.3.3.3",
        ),
        ("x-a", "X-A:\r\nX-A: second\r\n", "second"),
        (
            "x-a",
            "X-A: one\r\nX-B: other\r\nx-a:\r\nX-A: three\r\n",
            "one, three",
        ),
        ("cookie", "Cookie: a=1\r\nCookie: b=2\r\n", "a=1; b=2"),
        ("x-a", "X-A: only\r\n", "only"),
        ("x-a", "X-A:\r\n", ""),
        ("x-missing", "X-A: a\r\n", "nil"),
    ];
    for (name, lines, expected) in cases {
        client.send(format!("GET /h/{name} HTTP/1.1\r\nHost: t\r\n{lines}\r\n").as_bytes());
        let response = client.read_response();
        assert_eq!(response.body_str(), *expected, "{lines:?}");
    }
}

#[test]
fn cookies_are_read_and_set_as_a_browser_expects() {
    let app = r#"return { routes = {
      ["GET /login"] = function(ctx)
        ctx.headers["Set-Cookie"] = { "session=s3ss; Path=/; HttpOnly", "theme=dark; Max-Age=3600" }
        ctx.body = "welcome"
      end,
      ["GET /whoami"] = function(ctx)
        ctx.body = tostring(ctx.cookies.session) .. "," .. tostring(ctx.cookies.theme)
          .. "," .. tostring(ctx.cookies["a-b"]) .. "," .. tostring(ctx.cookies.missing)
      end,
    } }"#;
    let server = Server::start(Some(app), &[]);
    // curl's cookie engine: what the first response set, the second sends.
    let jar = std::env::temp_dir().join(format!("keystone-cookies-{}", server.port()));
    let jar = jar.to_str().expect("utf-8 path");
    let login = curl(&["-c", jar, &server.url("/login")]);
    assert_eq!(login.header_count("set-cookie"), 2, "{login:?}");
    let whoami = curl(&["-b", jar, &server.url("/whoami")]);
    assert_eq!(whoami.body_str(), "s3ss,dark,nil,nil");
    // Several Cookie headers, spaces and a malformed pair, as a proxy may send.
    let whoami = curl(&[
        "-H",
        "Cookie: broken; a-b = dash",
        "-H",
        "Cookie: session=\"quoted\"",
        &server.url("/whoami"),
    ]);
    assert_eq!(whoami.body_str(), "\"quoted\",nil,dash,nil");
    let _ = std::fs::remove_file(jar);
}
