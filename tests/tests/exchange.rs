//! Exchange lifetime: "A Lua reference kept beyond its request must fail with a
//! clear 'exchange expired' error, never read stale bytes." A handler keeps
//! `ctx` (and tables hanging off it) in globals; later requests touch them.

use keystone_tests::{request, Server};

const APP: &str = r#"
saved, saved_headers, saved_params, saved_request = nil, nil, nil, nil

local probes = {
  path = function() return saved.path end,
  method = function() return saved.method end,
  query = function() return saved.query end,
  worker = function() return saved.worker end,
  arg = function() return saved.args.secret end,
  param = function() return saved.params.id end,
  param_table = function() return saved_params.id end,
  header = function() return saved.request.headers["x-secret"] end,
  header_table = function() return saved_headers["x-secret"] end,
  body = function() return saved.request.body end,
  request_table = function() return saved_request.body end,
  write_body = function() saved.body = "written through a stale ctx" end,
  write_status = function() saved.status = 201 end,
  write_header = function() saved.headers["X-Stale"] = "yes" end,
}

return {
  routes = {
    ["POST /save/{id}"] = function(ctx)
      saved = ctx
      saved_headers = ctx.request.headers
      saved_params = ctx.params
      saved_request = ctx.request
      ctx.body = "saved"
    end,
    ["GET /probe/{name}"] = function(ctx)
      local ok, result = pcall(probes[ctx.params.name])
      if ok then
        ctx.body = "no error: " .. tostring(result)
      else
        ctx.body = "error: " .. tostring(result)
      end
    end,
  },
}
"#;

/// The secrets the saving request carried; a probe must never return any of them.
const SECRETS: &[&str] = &[
    "/save/sekrit-id",
    "sekrit-id",
    "sekrit-query",
    "sekrit-header",
    "sekrit-body",
    "POST",
];

fn save_request() -> String {
    let body = "sekrit-body";
    format!(
        "POST /save/sekrit-id?secret=sekrit-query HTTP/1.1\r\nHost: t\r\nX-Secret: sekrit-header\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const PROBES: &[&str] = &[
    "path",
    "method",
    "query",
    "worker",
    "arg",
    "param",
    "param_table",
    "header",
    "header_table",
    "body",
    "request_table",
    "write_body",
    "write_status",
    "write_header",
];

fn check(probe: &str, response: &keystone_tests::Response) {
    assert_eq!(response.status, 200, "probe {probe}");
    let body = response.body_str();
    assert!(
        body.starts_with("error: "),
        "probe {probe}: stale access did not fail: {body:?}"
    );
    assert!(
        body.contains("expired"),
        "probe {probe}: error does not say 'expired': {body:?}"
    );
    for secret in SECRETS {
        let leaked = body.replace("error: ", "");
        assert!(
            !leaked.contains(secret),
            "probe {probe}: error shows stale data {secret:?}: {body:?}"
        );
    }
    // A write through the stale ctx must not land on the current response.
    assert!(
        response.header("x-stale").is_none(),
        "probe {probe}: stale header write reached a response"
    );
}

#[test]
fn saved_ctx_expires_on_the_same_connection() {
    // The same keep-alive connection is the likeliest place for a reused exchange
    // slot to hand stale bytes to an old reference.
    let server = Server::start(Some(APP), &[]);
    let mut client = server.raw();
    for probe in PROBES {
        client.send(save_request().as_bytes());
        assert_eq!(client.read_response().body_str(), "saved");
        client.send(format!("GET /probe/{probe} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        check(probe, &client.read_response());
    }
}

#[test]
fn saved_ctx_expires_on_another_connection() {
    let server = Server::start(Some(APP), &[]);
    for probe in PROBES {
        let saved = request(server.addr(), &save_request());
        assert_eq!(saved.body_str(), "saved");
        let response = request(
            server.addr(),
            &format!("GET /probe/{probe} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        );
        check(probe, &response);
    }
}

#[test]
fn saved_ctx_expires_within_a_pipeline() {
    // Save and probe back to back in one write: the exchange may be recycled
    // while the next request's bytes already sit in the same buffer.
    let server = Server::start(Some(APP), &[]);
    let mut client = server.raw();
    let mut batch = String::new();
    for probe in PROBES {
        batch.push_str(&save_request());
        batch.push_str(&format!("GET /probe/{probe} HTTP/1.1\r\nHost: t\r\n\r\n"));
    }
    client.send(batch.as_bytes());
    for probe in PROBES {
        assert_eq!(client.read_response().body_str(), "saved");
        check(probe, &client.read_response());
    }
}
