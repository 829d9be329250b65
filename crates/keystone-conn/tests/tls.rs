//! keystone-conn on an encrypted connection, driven by the in-process
//! driver (`sim`): the TLS facts the driver sets (`Connection::set_tls`)
//! reach every request's exchange, and no splice is ever asked for (the
//! bytes must pass through the driver's encryption), while a cleartext
//! connection still splices.

use std::path::Path;

use keystone_conn::sim::{check_responses, pattern, write_site, FakePolicy, Response, Sim};
use keystone_conn::{
    Answer, Config, Level, PinOwner, Pinned, Policy, ProxyBody, ProxyHead, Pulled, Request, Root,
    FILE_READ_BYTES_MAX,
};
use keystone_exchange::{HttpExchange, TlsFacts, TLS_VERSION_1_2, TLS_VERSION_1_3};
use keystone_parser::{ResponseBody, ResponseHead};
use keystone_response::Committed;

/// Fake descriptors the simulator maps to directories.
const FILES_DIR: i32 = 7_000;
const STATIC_DIR: i32 = 7_001;
/// The file the splice cases send: far above `FILE_READ_BYTES_MAX`.
const MIB: usize = 1 << 20;

/// The fake policy's site plus `public/mib.bin`, 1 MiB.
fn site() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_site(dir.path()).expect("the site is written");
    std::fs::write(dir.path().join("public/mib.bin"), pattern(MIB)).expect("1 MiB file");
    dir
}

fn sim(site: &Path) -> Sim<FakePolicy> {
    let policy = FakePolicy::new(
        Root {
            id: 1,
            dir: FILES_DIR,
        },
        Root {
            id: 2,
            dir: STATIC_DIR,
        },
    );
    let mut sim = Sim::new(policy, Config::default());
    sim.root(FILES_DIR, &site.join("files"));
    sim.root(STATIC_DIR, &site.join("public"));
    sim
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

/// Feeds `input`, returns the responses (checked well formed).
fn exchange<P: Policy>(sim: &mut Sim<P>, input: &[u8]) -> Vec<Response> {
    sim.feed(input);
    let out = sim.take_output();
    match check_responses(&out) {
        Ok(responses) => responses,
        Err(err) => panic!("{err}\noutput: {:?}", String::from_utf8_lossy(&out)),
    }
}

fn finished() -> TlsFacts {
    TlsFacts::new(TLS_VERSION_1_3, 0x1301, Some("example.com"))
}

/// A 1 MiB file on an encrypted connection — handshake finished or still
/// pending — leaves in `ReadFile` pieces through the send buffer, with no
/// splice; on a cleartext connection the same file is spliced.
#[test]
fn an_encrypted_connection_reads_large_files_through_the_send_buffer() {
    let site = site();
    let expected = pattern(MIB);
    let pieces_min = (MIB as u64).div_ceil(FILE_READ_BYTES_MAX);
    for facts in [TlsFacts::pending(), finished()] {
        let mut sim = sim(site.path());
        sim.conn.set_tls(facts);
        sim.send_sizes(vec![20_000, 7]);
        for round in 0..2 {
            // Twice: the open-file cache's hit takes the same path.
            let responses = exchange(&mut sim, &get("/static/mib.bin"));
            assert_eq!(responses.len(), 1, "{facts:?} round {round}");
            assert_eq!(responses[0].status, 200);
            assert_eq!(responses[0].body, expected, "{facts:?} round {round}");
        }
        assert!(!sim.counts.contains_key("splice"), "{:?}", sim.counts);
        assert!(
            sim.counts["read_file"] >= 2 * pieces_min,
            "{facts:?}: {:?}",
            sim.counts
        );
        assert_eq!(sim.shared.pipes.available(), 2, "no pipe was taken");
    }
    // Cleartext, and TLS whose sends the kernel seals (kTLS): spliced.
    for facts in [None, Some(finished().with_kernel_sends())] {
        let mut sim = sim(site.path());
        if let Some(facts) = facts {
            sim.conn.set_tls(facts);
        }
        let responses = exchange(&mut sim, &get("/static/mib.bin"));
        assert_eq!(responses[0].body, expected);
        assert!(
            sim.counts["splice"] >= 2 * 16,
            "{facts:?}: {:?}",
            sim.counts
        );
        assert!(!sim.counts.contains_key("read_file"), "{:?}", sim.counts);
        assert_eq!(sim.shared.pipes.available(), 2, "the pipe came back clean");
    }
}

/// The facts set on the connection are those every request's exchange is
/// bound with; a cleartext connection binds none.
#[test]
fn tls_facts_reach_the_exchange_of_each_request() {
    let site = site();
    let mut cleartext = sim(site.path());
    assert_eq!(*cleartext.conn.tls(), TlsFacts::CLEARTEXT);
    let responses = exchange(&mut cleartext, &get("/tls"));
    assert_eq!(
        responses[0].body,
        b"scheme=http protocol=- cipher=- sni=-".to_vec()
    );

    let cases = [
        (
            finished(),
            "scheme=https protocol=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256 sni=example.com",
        ),
        (
            TlsFacts::new(TLS_VERSION_1_2, 0xcca8, None),
            "scheme=https protocol=TLSv1.2 cipher=ECDHE-RSA-CHACHA20-POLY1305 sni=-",
        ),
    ];
    for (facts, expected) in cases {
        let mut sim = sim(site.path());
        sim.conn.set_tls(TlsFacts::pending());
        assert!(sim.conn.tls().is_pending());
        sim.conn.set_tls(facts);
        assert_eq!(*sim.conn.tls(), facts);
        // Two pipelined requests, then one more: each is bound with them.
        let mut input = get("/tls");
        input.extend(get("/tls"));
        let mut responses = exchange(&mut sim, &input);
        responses.extend(exchange(&mut sim, &get("/tls")));
        assert_eq!(responses.len(), 3);
        for response in responses {
            assert_eq!(String::from_utf8_lossy(&response.body), expected);
        }
    }
}

/// A slot's next connection starts cleartext, whatever its last one was.
#[test]
fn open_resets_the_facts_to_cleartext() {
    let site = site();
    let mut sim = sim(site.path());
    sim.conn.set_tls(finished());
    sim.close_input();
    assert!(sim.conn.is_free(), "the connection closed");
    let config = Config::default();
    sim.conn.open(None, sim.now, &config);
    assert_eq!(*sim.conn.tls(), TlsFacts::CLEARTEXT);
}

/// A policy that proxies every request to an upstream answering a
/// length-delimited body far above the splice threshold, and records
/// whether the connection asked to splice it.
struct Proxying {
    exchange: Box<HttpExchange>,
    head: ResponseHead,
    body: Vec<u8>,
    taken: usize,
    splice_asked: u32,
}

impl Proxying {
    fn new(len: usize) -> Proxying {
        Proxying {
            exchange: HttpExchange::new_boxed(0),
            head: ResponseHead {
                status: 200,
                body: ResponseBody::Length(len as u64),
                keep_alive: true,
                ..ResponseHead::default()
            },
            body: pattern(len),
            taken: 0,
            splice_asked: 0,
        }
    }
}

impl Policy for Proxying {
    fn answer(&mut self, _request: &Request<'_>) -> Answer<'_> {
        self.taken = 0;
        Answer::Proxy
    }

    fn exchange(&self) -> &HttpExchange {
        &self.exchange
    }

    fn pin(&mut self, _slot: u32) -> Result<Pinned, String> {
        Err("nothing to pin".into())
    }

    fn expire(&mut self) {}

    fn pull(&mut self, _owner: PinOwner, _slot: u32) -> Pulled {
        Pulled::End
    }

    fn unpin(&mut self, _owner: PinOwner, _slot: u32) {}

    fn answered(&mut self, _request: &Request<'_>, _committed: &Committed, _follows: bool) {}

    fn refused(&mut self, _committed: &Committed) {}

    fn log(&mut self, level: Level, message: std::fmt::Arguments<'_>) {
        panic!("unexpected log {level:?}: {message}");
    }

    fn proxy_head(&mut self, _request: &Request<'_>) -> ProxyHead<'_> {
        ProxyHead::Ready {
            head: &self.head,
            bytes: &[],
            policy: None,
        }
    }

    fn proxy_body(&mut self, _slot: u32) -> ProxyBody<'_> {
        match &self.body[self.taken..] {
            [] => ProxyBody::End,
            rest => ProxyBody::Bytes(&rest[..rest.len().min(16 * 1024)]),
        }
    }

    fn proxy_consumed(&mut self, _slot: u32, n: u32) {
        self.taken += n as usize;
    }

    fn proxy_splice(&mut self, _slot: u32) -> Option<(std::os::fd::RawFd, u64)> {
        // Relay by copy either way: the simulation has no upstream socket.
        self.splice_asked += 1;
        None
    }
}

/// A proxied body that a cleartext connection would offer to splice is
/// not offered on an encrypted one: it is relayed through the send
/// buffer, whole.
#[test]
fn an_encrypted_connection_never_asks_to_splice_a_proxied_body() {
    for (facts, asked) in [
        (TlsFacts::CLEARTEXT, 1),
        (TlsFacts::pending(), 0),
        (finished(), 0),
    ] {
        let mut sim = Sim::new(Proxying::new(MIB), Config::default());
        if facts.is_encrypted() {
            sim.conn.set_tls(facts);
        }
        sim.feed(&get("/proxied"));
        sim.upstream();
        let out = sim.take_output();
        let responses = check_responses(&out).expect("well formed");
        assert_eq!(responses.len(), 1, "{facts:?}");
        assert_eq!(responses[0].status, 200);
        assert_eq!(responses[0].body, pattern(MIB), "{facts:?}");
        assert_eq!(sim.policy.splice_asked, asked, "{facts:?}");
        assert!(!sim.counts.contains_key("splice"), "{:?}", sim.counts);
    }
}
