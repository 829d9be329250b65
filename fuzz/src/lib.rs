//! Shared by the fuzz targets and `crates/keystone-app/tests/conn_props.rs`
//! (which includes this file with `#[path]`): the Lua app the real policy
//! serves when keystone-conn is driven in-process, and the connection
//! built over it. The checker that reads the output back as well-formed
//! HTTP/1.1 responses is keystone-conn's (`sim::check_responses`).
//!
//! The app never echoes raw request bytes into a response body (it echoes
//! hex), so no body can begin with `HTTP/1.`: that is how the checker tells
//! a response to HEAD (Content-Length, no body) from one with a body
//! without knowing the requests.

/// The app under test: inline bodies, a body too large for the send buffer
/// (pinned), a stream, a failing handler, policy statuses, and response
/// headers copied from percent-decoded query arguments (CR/LF must never
/// reach the wire: setting them is a Lua error, so a 500).
pub const APP: &str = r#"
local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end
return { routes = {
  ["GET /"] = function(ctx) ctx.body = "hello" end,
  ["GET /n/{i}"] = function(ctx) ctx.body = "n=" .. hex(ctx.params.i) end,
  ["POST /echo"] = function(ctx)
    ctx.body = "len=" .. #ctx.request.body .. " hex=" .. hex(ctx.request.body)
  end,
  ["* /any"] = function(ctx) ctx.body = "method=" .. hex(ctx.method) end,
  ["GET /h"] = function(ctx)
    ctx.headers["X-Q"] = ctx.args.q or "none"
    ctx.headers[ctx.args.n or "X-N"] = ctx.request.headers["x-v"] or "v"
    ctx.body = "h"
  end,
  ["GET /status/{code}"] = function(ctx)
    ctx.status = tonumber(ctx.params.code) or 200
    ctx.body = "s"
  end,
  ["GET /big"] = function(ctx) ctx.body = string.rep("b", 100000) end,
  ["GET /stream"] = function(ctx)
    local i = 0
    ctx.body = function()
      i = i + 1
      if i <= 3 then return "chunk" .. i end
    end
  end,
  ["GET /fail"] = function(ctx) error("boom") end,
} }
"#;

pub use keystone_conn::sim::{check_responses, normalize, Response, Sim};

use keystone_app::AppPolicy;
use keystone_conn::{Config, Timeouts};
use keystone_lua::{AppSource, LoadedApp};
use keystone_parser::Limits;

/// The `--max-pipeline` default of `keystone serve`.
pub const MAX_PIPELINE_DEFAULT: u32 = 64;

/// A connection to [`APP`] through the real policy (router, Lua, response
/// builder) and the real state machine, driven in-process. Panics if the
/// app does not load: callers pass the known-good test app.
pub fn connection(limits: Limits, max_pipeline: u32) -> Sim<AppPolicy> {
    assert!(max_pipeline > 0, "max_pipeline must be at least 1");
    let source = AppSource::bundled("conn.lua", APP);
    let loaded = LoadedApp::load(&source, 0, |_| {}).expect("the test app loads");
    let policy = AppPolicy::standalone(loaded).expect("the app's directories open");
    let config = Config {
        limits,
        max_pipeline,
        timeouts: Timeouts::default(),
        max_proxy_body_bytes: keystone_conn::MAX_PROXY_BODY_BYTES,
    };
    Sim::new(policy, config)
}

/// The checks every `conn` target ends with: the output reads back as
/// well-formed responses (the last one may stop short of its body when
/// `aborted`: the connection aborted a stream, and then it must have shut
/// its write side); a connection that said it is done answers nothing
/// more; once the peer closes, so does the connection.
pub fn check_end<P: keystone_conn::Policy>(conn: &mut Sim<P>, input: &[u8], aborted: bool) {
    let out = conn.take_output();
    let checked = if aborted {
        keystone_conn::sim::check_responses_aborted(&out)
    } else {
        check_responses(&out)
    };
    if let Err(e) = checked {
        panic!(
            "{e}\ninput: {:?}\noutput: {:?}",
            String::from_utf8_lossy(input),
            String::from_utf8_lossy(&out)
        );
    }
    if conn.write_shut() || conn.closed() {
        conn.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(conn.take_output().is_empty(), "an answer after the end");
    }
    conn.close_input();
    assert!(conn.closed(), "the peer closed: so does the connection");
}

/// Read and partial-send sizes from two control bytes (0: whole).
pub fn shape<P: keystone_conn::Policy>(conn: &mut Sim<P>, reads: u8, sends: u8) {
    if reads != 0 {
        conn.recv_sizes(vec![usize::from(reads % 64) + 1, usize::from(reads)]);
    }
    if sends != 0 {
        conn.send_sizes(vec![usize::from(sends), 1, usize::from(sends) * 97 + 1]);
    }
}
