//! keystone-conn's state machine with the plain-Rust policy
//! (`sim::FakePolicy`): every kind of answer — inline, pinned, streams
//! with and without a declared length, failing and stuck generators,
//! static files through the open-file cache (index, confinement,
//! conditionals, ranges, splices), policy files with stashed headers —
//! without Lua, so many more inputs per second. The fuzzer chooses the
//! bytes, the read and partial-send sizes, the limits, `--max-pipeline`,
//! and time passing between the two reads (timeouts, idle release, cache
//! staleness). Checks: no panic, well-formed responses, nothing after the
//! end, and once the peer closes: the connection is closed, every pin
//! released, and the only open files are the cache's.
//!
//! Input: byte 0 the cut, byte 1 limits and `--max-pipeline`, byte 2 read
//! sizes, byte 3 send sizes, byte 4 seconds passing at the cut; the rest is
//! what the peer sends.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use keystone_conn::sim::{check_responses, FakePolicy, Sim};
use keystone_conn::{Config, Root};
use keystone_parser::Limits;
use libfuzzer_sys::fuzz_target;

const SMALL_LIMITS: Limits = Limits {
    max_header_bytes: 256,
    max_headers: 16,
    max_uri_bytes: 128,
    max_body_bytes: 256,
};

/// The site the fake policy's roots point at, made once per process.
fn site() -> &'static std::path::Path {
    static SITE: OnceLock<tempfile::TempDir> = OnceLock::new();
    SITE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = dir.path().join("files");
        std::fs::create_dir_all(files.join("sub")).unwrap();
        std::fs::write(files.join("page.txt"), b"policy page\n").unwrap();
        std::fs::write(files.join("small.bin"), vec![b's'; 10_000]).unwrap();
        std::fs::write(files.join("big.bin"), vec![b'B'; 200_000]).unwrap();
        std::fs::write(files.join("sub/inner.txt"), b"inner\n").unwrap();
        let public = dir.path().join("public");
        std::fs::create_dir_all(public.join("docs")).unwrap();
        std::fs::write(public.join("style.css"), b"body{color:red}\n").unwrap();
        std::fs::write(public.join("index.html"), b"<h1>index</h1>\n").unwrap();
        std::fs::write(public.join("big.bin"), vec![b'b'; 150_000]).unwrap();
        dir
    })
    .path()
}

fuzz_target!(|input: &[u8]| {
    let [cut_seed, config, reads, sends, seconds, data @ ..] = input else {
        return;
    };
    let limits = if config & 1 == 1 {
        SMALL_LIMITS
    } else {
        Limits::default()
    };
    let config = Config {
        limits,
        max_pipeline: u32::from(config >> 1 & 0x7) + 1,
        ..Config::default()
    };
    let policy = FakePolicy::new(Root { id: 1, dir: 9_000 }, Root { id: 2, dir: 9_001 });
    let mut conn = Sim::new(policy, config);
    conn.root(9_000, &site().join("files"));
    conn.root(9_001, &site().join("public"));
    if *reads != 0 {
        conn.recv_sizes(vec![usize::from(*reads % 64) + 1, usize::from(*reads)]);
    }
    if *sends != 0 {
        conn.send_sizes(vec![usize::from(*sends), 1, usize::from(*sends) * 97 + 1]);
    }
    let cut = usize::from(*cut_seed) * data.len() / 256;
    conn.feed(&data[..cut]);
    conn.advance(Duration::from_secs(u64::from(*seconds % 8)));
    conn.feed(&data[cut..]);
    let out = conn.take_output();
    if let Err(e) = check_responses(&out) {
        panic!(
            "{e}\ninput: {:?}\noutput: {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&out)
        );
    }
    if conn.write_shut() || conn.closed() {
        conn.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(conn.take_output().is_empty(), "an answer after the end");
    }
    conn.close_input();
    assert!(conn.closed(), "the peer closed: so does the connection");
    assert_eq!(conn.policy.pins, 0, "a pin outlived its response");
    assert_eq!(
        conn.open_files(),
        usize::from(conn.shared.files.cached_count()),
        "a file descriptor outlived its response"
    );
});
