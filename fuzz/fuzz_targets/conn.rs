//! The whole request path in-process: keystone-conn's state machine with
//! the real policy (router → exchange → Lua → response builder), driven by
//! its `sim` driver. The fuzzer chooses the bytes, where they are cut into
//! reads, how sends complete partially, the limits and `--max-pipeline`;
//! at the end the peer closes. Checks: no panic (debug assertions are on:
//! the connection's invariants, the ring buffer's loan rules), the output
//! reads back as well-formed HTTP/1.1 responses
//! (`keystone_conn::sim::check_responses`), a connection that said it is
//! done answers nothing more, and one whose peer closed is closed.
//!
//! Input: byte 0 picks the cut, byte 1 the limits and `--max-pipeline`,
//! byte 2 the read sizes, byte 3 the partial-send sizes; the rest is what
//! the peer sends.

#![no_main]

use keystone_fuzz::{check_end, connection, shape};
use keystone_parser::Limits;
use libfuzzer_sys::fuzz_target;

/// A 512-byte receive buffer, so the limits and its compaction (a full
/// buffer whose first requests were consumed) are reachable with short
/// inputs.
const SMALL_LIMITS: Limits = Limits {
    max_header_bytes: 256,
    max_headers: 16,
    max_uri_bytes: 128,
    max_body_bytes: 256,
};

fuzz_target!(|input: &[u8]| {
    let [cut_seed, config, reads, sends, data @ ..] = input else {
        return;
    };
    let max_pipeline = u32::from(config >> 1 & 0x7) + 1;
    let limits = if config & 1 == 1 {
        SMALL_LIMITS
    } else {
        Limits::default()
    };
    let mut conn = connection(limits, max_pipeline);
    shape(&mut conn, *reads, *sends);
    let cut = usize::from(*cut_seed) * data.len() / 256;
    conn.feed(&data[..cut]);
    conn.feed(&data[cut..]);
    check_end(&mut conn, data, false);
});
