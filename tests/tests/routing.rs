//! Route keys from the app file: literal paths, `{name}` parameters, `{*rest}`
//! catch-alls, 404 for unknown paths, 405 with `Allow` for a known path under
//! another method, and HEAD answering wherever GET does.

use keystone_tests::{request, Response, Server};

const APP: &str = r#"return {
  routes = {
    ["GET /"] = function(ctx) ctx.body = "root" end,
    ["GET /users/{id}"] = function(ctx) ctx.body = "user " .. ctx.params.id end,
    ["GET /users/{id}/posts/{post}"] = function(ctx)
      ctx.body = "user " .. ctx.params.id .. " post " .. ctx.params.post
    end,
    ["GET /files/{*path}"] = function(ctx) ctx.body = "file " .. ctx.params.path end,
    ["GET /items"] = function(ctx) ctx.body = "list" end,
    ["POST /items"] = function(ctx) ctx.status = 201; ctx.body = "created" end,
    ["DELETE /items/{id}"] = function(ctx) ctx.body = "deleted " .. ctx.params.id end,
    ["PUT /items/{id}"] = function(ctx) ctx.body = "put " .. ctx.params.id end,
    -- A pattern shadows another only for its own methods.
    ["GET /docs/{id}/meta"] = function(ctx) ctx.body = "meta " .. ctx.params.id end,
    ["POST /docs/{id}/{part}"] = function(ctx)
      ctx.body = "part " .. ctx.params.id .. " " .. ctx.params.part
    end,
    -- WebDAV's methods: thirteen named in all, and a 405 still lists every
    -- pattern that answers the path.
    ["PATCH /dav/{name}/props"] = function(ctx) ctx.body = "props " .. ctx.params.name end,
    ["PROPFIND /dav/{name}/{*rest}"] = function(ctx) ctx.body = "dav " .. ctx.params.name .. "/" .. ctx.params.rest end,
    ["PROPPATCH /dav/{name}/{*rest}"] = function(ctx) ctx.body = "dav" end,
    ["MKCOL /dav/{name}/{*rest}"] = function(ctx) ctx.body = "dav" end,
    ["COPY /dav/{name}/{*rest}"] = function(ctx) ctx.body = "dav" end,
    ["MOVE /dav/{name}/{*rest}"] = function(ctx) ctx.body = "dav" end,
    ["LOCK /dav/{name}/{*rest}"] = function(ctx) ctx.body = "dav" end,
    ["UNLOCK /dav/{name}/{*rest}"] = function(ctx) ctx.body = "dav" end,
  },
}
"#;

/// One request and what must come back.
struct Case {
    method: &'static str,
    target: &'static str,
    status: u16,
    /// Exact body for a 2xx; for HEAD, the body a GET would carry (its length is checked).
    body: &'static str,
    /// For 405: methods the `Allow` header must list.
    allow: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        method: "GET",
        target: "/",
        status: 200,
        body: "root",
        allow: &[],
    },
    Case {
        method: "GET",
        target: "/users/42",
        status: 200,
        body: "user 42",
        allow: &[],
    },
    Case {
        method: "GET",
        target: "/users/abc-def",
        status: 200,
        body: "user abc-def",
        allow: &[],
    },
    Case {
        method: "GET",
        target: "/users/42/posts/7",
        status: 200,
        body: "user 42 post 7",
        allow: &[],
    },
    Case {
        method: "GET",
        target: "/files/readme.txt",
        status: 200,
        body: "file readme.txt",
        allow: &[],
    },
    Case {
        method: "GET",
        target: "/files/a/b/c.txt",
        status: 200,
        body: "file a/b/c.txt",
        allow: &[],
    },
    // The query string is not part of the path the router sees.
    Case {
        method: "GET",
        target: "/users/9?x=1",
        status: 200,
        body: "user 9",
        allow: &[],
    },
    Case {
        method: "GET",
        target: "/items",
        status: 200,
        body: "list",
        allow: &[],
    },
    Case {
        method: "POST",
        target: "/items",
        status: 201,
        body: "created",
        allow: &[],
    },
    Case {
        method: "DELETE",
        target: "/items/3",
        status: 200,
        body: "deleted 3",
        allow: &[],
    },
    Case {
        method: "PUT",
        target: "/items/3",
        status: 200,
        body: "put 3",
        allow: &[],
    },
    Case {
        method: "GET",
        target: "/nothing-here",
        status: 404,
        body: "",
        allow: &[],
    },
    Case {
        method: "GET",
        target: "/users",
        status: 404,
        body: "",
        allow: &[],
    },
    Case {
        method: "GET",
        target: "/users/42/posts",
        status: 404,
        body: "",
        allow: &[],
    },
    Case {
        method: "POST",
        target: "/nothing-here",
        status: 404,
        body: "",
        allow: &[],
    },
    Case {
        method: "POST",
        target: "/",
        status: 405,
        body: "",
        allow: &["GET", "HEAD"],
    },
    Case {
        method: "DELETE",
        target: "/users/1",
        status: 405,
        body: "",
        allow: &["GET", "HEAD"],
    },
    Case {
        method: "PUT",
        target: "/items",
        status: 405,
        body: "",
        allow: &["GET", "HEAD", "POST"],
    },
    Case {
        method: "GET",
        target: "/items/3",
        status: 405,
        body: "",
        allow: &["DELETE", "PUT"],
    },
    Case {
        method: "PATCH",
        target: "/files/x",
        status: 405,
        body: "",
        allow: &["GET", "HEAD"],
    },
    Case {
        method: "HEAD",
        target: "/",
        status: 200,
        body: "root",
        allow: &[],
    },
    Case {
        method: "HEAD",
        target: "/users/42",
        status: 200,
        body: "user 42",
        allow: &[],
    },
    Case {
        method: "HEAD",
        target: "/files/a/b",
        status: 200,
        body: "file a/b",
        allow: &[],
    },
    Case {
        method: "HEAD",
        target: "/nothing-here",
        status: 404,
        body: "",
        allow: &[],
    },
    Case {
        method: "GET",
        target: "/docs/7/meta",
        status: 200,
        body: "meta 7",
        allow: &[],
    },
    // The best pattern (`/docs/{id}/meta`) has no POST: the next one does.
    Case {
        method: "POST",
        target: "/docs/7/meta",
        status: 200,
        body: "part 7 meta",
        allow: &[],
    },
    Case {
        method: "DELETE",
        target: "/docs/7/meta",
        status: 405,
        body: "",
        allow: &["GET", "HEAD", "POST"],
    },
    Case {
        method: "GET",
        target: "/docs/7/other",
        status: 405,
        body: "",
        allow: &["POST"],
    },
    Case {
        method: "PROPFIND",
        target: "/dav/a/props",
        status: 200,
        body: "dav a/props",
        allow: &[],
    },
    Case {
        method: "GET",
        target: "/dav/a/props",
        status: 405,
        body: "",
        allow: &[
            "COPY",
            "LOCK",
            "MKCOL",
            "MOVE",
            "PATCH",
            "PROPFIND",
            "PROPPATCH",
            "UNLOCK",
        ],
    },
];

fn check(case: &Case, response: &Response) {
    let what = format!("{} {}", case.method, case.target);
    assert_eq!(
        response.status,
        case.status,
        "{what}: body {:?}",
        response.body_str()
    );
    if case.method == "HEAD" {
        // HEAD answers like GET: same status and Content-Length, and no body bytes
        // (the raw client reads none, and the follow-up request below proves none were sent).
        if case.status == 200 {
            let length = case.body.len().to_string();
            assert_eq!(
                response.header("content-length"),
                Some(length.as_str()),
                "{what}"
            );
        }
    } else if (200..300).contains(&case.status) {
        assert_eq!(response.body_str(), case.body, "{what}");
    }
    if case.status == 405 {
        let allow = response
            .header("allow")
            .unwrap_or_else(|| panic!("{what}: 405 without an Allow header"));
        let listed: Vec<String> = allow
            .split(',')
            .map(|m| m.trim().to_ascii_uppercase())
            .collect();
        for method in case.allow {
            assert!(
                listed.iter().any(|m| m == method),
                "{what}: Allow {allow:?} lacks {method}"
            );
        }
        assert!(
            !listed.iter().any(|m| m == case.method),
            "{what}: Allow {allow:?} lists the refused method"
        );
    }
}

#[test]
fn routes_params_catch_all_404_405_head() {
    let server = Server::start(Some(APP), &[]);
    for case in CASES {
        let body_header = if matches!(case.method, "POST" | "PUT" | "PATCH") {
            "Content-Length: 0\r\n"
        } else {
            ""
        };
        let raw = format!(
            "{} {} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{body_header}\r\n",
            case.method, case.target
        );
        check(case, &request(server.addr(), &raw));
    }
}

#[test]
fn same_cases_on_one_keep_alive_connection() {
    // Error statuses (404, 405) and bodiless HEAD answers must leave the connection
    // framed correctly: every case runs on one connection, and a stray body byte
    // from a HEAD would corrupt the next status line.
    let server = Server::start(Some(APP), &[]);
    let mut client = server.raw();
    for case in CASES {
        let body_header = if matches!(case.method, "POST" | "PUT" | "PATCH") {
            "Content-Length: 0\r\n"
        } else {
            ""
        };
        let raw = format!(
            "{} {} HTTP/1.1\r\nHost: t\r\n{body_header}\r\n",
            case.method, case.target
        );
        client.send(raw.as_bytes());
        let response = client.read_response_to(case.method);
        check(case, &response);
        assert!(
            !response.closes(),
            "{} {}: keep-alive connection was closed",
            case.method,
            case.target
        );
    }
    client.expect_open(std::time::Duration::from_millis(200), "after every case");
}
