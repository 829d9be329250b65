//! Properties of the connection with the plain-Rust policy (`FakePolicy`):
//! every kind of answer (inline, pinned, streams, declared lengths, static
//! and policy files through the open-file cache, canned statuses) gives
//! the same bytes whatever the split of the input into reads and whatever
//! the partial-send pattern; arbitrary input gives well-formed responses;
//! and once the peer closes, every pin is released and the only open files
//! are the cache's. (The same properties with the real Lua policy are in
//! `crates/keystone-app/tests/conn_props.rs`.)

use std::path::Path;
use std::sync::OnceLock;

use keystone_conn::sim::{check_responses, normalize, write_site, FakePolicy, Sim};
use keystone_conn::{Config, Root};
use keystone_parser::Limits;
use proptest::prelude::*;

/// The fake policy's site (`sim::write_site`), made once.
fn site() -> &'static Path {
    static SITE: OnceLock<tempfile::TempDir> = OnceLock::new();
    SITE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        write_site(dir.path()).expect("the site is written");
        dir
    })
    .path()
}

fn connection(config: Config) -> Sim<FakePolicy> {
    let policy = FakePolicy::new(Root { id: 1, dir: 8_000 }, Root { id: 2, dir: 8_001 });
    let mut sim = Sim::new(policy, config);
    sim.root(8_000, &site().join("files"));
    sim.root(8_001, &site().join("public"));
    sim
}

/// Requests that keep the connection open, one per kind of answer.
const REQUESTS: &[&str] = &[
    "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /big HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /stream HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /declared/10 HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /h HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /file/page.txt HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /file/small.bin HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /file/big.bin HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /file/missing.txt HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /static/style.css HTTP/1.1\r\nHost: a\r\nRange: bytes=2-5\r\n\r\n",
    "GET /static/ HTTP/1.1\r\nHost: a\r\n\r\n",
    "HEAD /static/style.css HTTP/1.1\r\nHost: a\r\n\r\n",
    "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nwxyz",
    "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "GET /missing HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n",
];

fn sequence() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0..REQUESTS.len(), 1..8)
        .prop_map(|picks| picks.iter().flat_map(|&i| REQUESTS[i].bytes()).collect())
}

fn sizes(max: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1..max, 0..3)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Reads of any sizes and sends completing in any pieces give the
    /// bytes a whole read and whole sends give.
    #[test]
    fn splits_and_partial_sends_do_not_change_the_bytes(
        input in sequence(),
        reads in sizes(400),
        sends in sizes(70_000),
    ) {
        let mut whole = connection(Config::default());
        whole.feed(&input);
        let expected = normalize(&whole.take_output());
        let responses = check_responses(&expected).expect("well formed");
        prop_assert!(!responses.is_empty());
        let mut split = connection(Config::default());
        if !reads.is_empty() {
            split.recv_sizes(reads);
        }
        if !sends.is_empty() {
            split.send_sizes(sends);
        }
        split.feed(&input);
        let got = normalize(&split.take_output());
        prop_assert!(got == expected, "output differs:\n{:?}", String::from_utf8_lossy(&got[..got.len().min(600)]));
        split.close_input();
        prop_assert!(split.closed());
        prop_assert_eq!(split.policy.pins, 0);
        // The same access-log lines, each written once its body was over.
        whole.close_input();
        prop_assert_eq!(split.policy.held, None);
        prop_assert_eq!(&split.policy.logged, &whole.policy.logged);
        prop_assert_eq!(split.open_files(), usize::from(split.shared.files.cached_count()));
    }

    /// Arbitrary bytes (with small limits, so they are reachable): the
    /// output is well formed, and the end releases everything.
    #[test]
    fn any_bytes_end_cleanly(
        input in prop::collection::vec(any::<u8>(), 0..700),
        prefix in sequence(),
        reads in sizes(64),
        sends in sizes(300),
        small in any::<bool>(),
    ) {
        let limits = if small {
            Limits { max_header_bytes: 256, max_headers: 8, max_uri_bytes: 64, max_body_bytes: 256 }
        } else {
            Limits::default()
        };
        let mut conn = connection(Config { limits, max_pipeline: 3, ..Config::default() });
        if !reads.is_empty() {
            conn.recv_sizes(reads);
        }
        if !sends.is_empty() {
            conn.send_sizes(sends);
        }
        conn.feed(&prefix);
        conn.feed(&input);
        let out = conn.take_output();
        if let Err(err) = check_responses(&out) {
            panic!("{err}\noutput: {:?}", String::from_utf8_lossy(&out));
        }
        conn.close_input();
        prop_assert!(conn.closed());
        prop_assert_eq!(conn.policy.pins, 0);
        prop_assert_eq!(conn.policy.held, None, "a line never written");
        prop_assert_eq!(conn.open_files(), usize::from(conn.shared.files.cached_count()));
    }
}
