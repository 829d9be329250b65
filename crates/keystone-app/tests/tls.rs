//! The real policy (router, Lua, the upstream side) on an encrypted
//! connection, driven in-process by keystone-conn's `sim`: the TLS facts
//! the driver sets reach the handler (`ctx.scheme`, `ctx.tls`) and the
//! head forwarded upstream (`X-Forwarded-Proto: https`). The upstream's
//! socket is simulated here by completing its operations by hand.

use keystone_app::{AppPolicy, UpstreamDone, UpstreamOp};
use keystone_conn::sim::{check_responses, Sim};
use keystone_conn::Config;
use keystone_exchange::{TlsFacts, TLS_VERSION_1_2};
use keystone_lua::{AppSource, LoadedApp};
use keystone_ringbuf::SendBuf;
use keystone_upstream::UpstreamEvent;

const APP: &str = r#"
return {
  upstreams = { api = { peers = { "127.0.0.1:9" } } },
  routes = {
    ["GET /scheme"] = function(ctx)
      local tls = ctx.tls
      ctx.body = ctx.scheme .. " " .. (tls and (tostring(tls.sni) .. " " .. tls.protocol
        .. " " .. tls.cipher) or "cleartext")
    end,
    ["GET /api"] = function(ctx) ctx.upstream = "api" end,
  },
}
"#;

fn connection(tls: TlsFacts) -> Sim<AppPolicy> {
    let source = AppSource::bundled("tls.lua", APP);
    let loaded = LoadedApp::load(&source, 0, |_| {}).expect("the test app loads");
    let policy = AppPolicy::standalone(loaded).expect("the app's directories open");
    let mut sim = Sim::new(policy, Config::default());
    if tls.is_encrypted() {
        sim.conn.set_tls(TlsFacts::pending());
        sim.conn.set_tls(tls);
    }
    sim
}

fn facts() -> TlsFacts {
    TlsFacts::new(TLS_VERSION_1_2, 0xc030, Some("shop.example"))
}

#[test]
fn the_handler_sees_the_connections_scheme_and_tls() {
    let cases = [
        (TlsFacts::CLEARTEXT, "http cleartext"),
        (
            facts(),
            "https shop.example TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384",
        ),
    ];
    for (tls, expected) in cases {
        let mut sim = connection(tls);
        sim.feed(b"GET /scheme HTTP/1.1\r\nHost: h\r\n\r\n");
        let out = sim.take_output();
        let responses = check_responses(&out).expect("well formed");
        assert_eq!(responses[0].status, 200);
        assert_eq!(String::from_utf8_lossy(&responses[0].body), expected);
    }
}

/// The head the upstream side sends for `GET /api` on a connection with
/// `tls`: its socket, connect and send are completed by hand.
fn forwarded_head(tls: TlsFacts) -> String {
    let mut sim = connection(tls);
    sim.feed(b"GET /api HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: spoofed\r\n\r\n");
    let now = sim.now;
    // Socket, connect, send: a handful of operations, bounded.
    for _ in 0..8 {
        let Some((index, op)) = sim.policy.upstream_poll(now) else {
            break;
        };
        let done = match op {
            UpstreamOp::Socket { .. } => UpstreamDone::Socket { result: 900 },
            UpstreamOp::Connect { .. } => {
                UpstreamDone::Event(UpstreamEvent::Connected { result: 0 })
            }
            UpstreamOp::Send { buf, .. } => {
                let bytes = match &buf {
                    SendBuf::Buffer(loan) => loan.as_slice().to_vec(),
                    SendBuf::Pinned(pinned) => pinned.as_slice().to_vec(),
                };
                let sent = bytes.len() as i32;
                sim.policy.upstream_complete(
                    index,
                    UpstreamDone::Event(UpstreamEvent::Sent { buf, result: sent }),
                    now,
                );
                return String::from_utf8(bytes).expect("a head is text");
            }
            other => panic!("unexpected upstream operation {other:?}"),
        };
        sim.policy.upstream_complete(index, done, now);
    }
    panic!("the upstream side sent nothing");
}

#[test]
fn the_forwarded_proto_is_the_connections_scheme() {
    for (tls, scheme) in [(TlsFacts::CLEARTEXT, "http"), (facts(), "https")] {
        let head = forwarded_head(tls);
        assert!(head.starts_with("GET /api HTTP/1.1\r\n"), "{head}");
        let protos: Vec<&str> = head
            .split("\r\n")
            .filter(|line| line.to_ascii_lowercase().starts_with("x-forwarded-proto:"))
            .collect();
        assert_eq!(protos, [format!("X-Forwarded-Proto: {scheme}")], "{head}");
    }
}
