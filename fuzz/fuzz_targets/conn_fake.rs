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

use keystone_conn::sim::{write_site, FakePolicy, Sim};
use keystone_conn::{Config, Root};
use keystone_fuzz::{check_end, shape};
use keystone_parser::Limits;
use libfuzzer_sys::fuzz_target;

const SMALL_LIMITS: Limits = Limits {
    max_header_bytes: 256,
    max_headers: 16,
    max_uri_bytes: 128,
    max_body_bytes: 256,
};

/// The fake policy's site (`sim::write_site`), made once per process.
fn site() -> &'static std::path::Path {
    static SITE: OnceLock<tempfile::TempDir> = OnceLock::new();
    SITE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        write_site(dir.path()).expect("the site is written");
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
    shape(&mut conn, *reads, *sends);
    let cut = usize::from(*cut_seed) * data.len() / 256;
    conn.feed(&data[..cut]);
    conn.advance(Duration::from_secs(u64::from(*seconds % 8)));
    conn.feed(&data[cut..]);
    // The fake policy's declared-length, failing and stuck streams abort
    // (logged): their response may stop short, and then the connection
    // ends.
    let aborted = conn
        .policy
        .logs
        .iter()
        .any(|line| line.contains("stream aborted"));
    check_end(&mut conn, data, aborted);
    assert_eq!(conn.policy.pins, 0, "a pin outlived its response");
    assert_eq!(
        conn.open_files(),
        usize::from(conn.shared.files.cached_count()),
        "a file descriptor outlived its response"
    );
});
