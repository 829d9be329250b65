//! The whole request path in-process: bytes → `Pipeline::feed` (parser →
//! router → exchange → Lua → response builder, the real `Http::handle_one`)
//! in two reads split at a fuzzer-chosen point. Checks: no panic (debug
//! assertions are on), the output reads back as well-formed HTTP/1.1
//! responses (`keystone_fuzz::check_responses`), the receive buffer never
//! fills without a complete request (the worker asserts there), and a
//! closed connection answers nothing more.
//!
//! Input: byte 0 picks the cut, byte 1 the limits and `--max-pipeline`,
//! the rest is what the peer sends.

#![no_main]

use keystone_fuzz::{check_responses, APP};
use keystone_parser::Limits;
use keystone_server::pipeline::Pipeline;
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
    let [cut_seed, config, data @ ..] = input else {
        return;
    };
    let max_pipeline = u32::from(config >> 1 & 0x7) + 1;
    let mut pipeline = if config & 1 == 1 {
        Pipeline::with_limits(APP, SMALL_LIMITS, max_pipeline)
    } else {
        Pipeline::with_limits(APP, Limits::default(), max_pipeline)
    };
    let cut = usize::from(*cut_seed) * data.len() / 256;
    let mut out = pipeline.feed(&data[..cut]);
    out.extend(pipeline.feed(&data[cut..]));
    if let Err(e) = check_responses(&out) {
        panic!(
            "{e}\ninput: {:?}\noutput: {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&out)
        );
    }
    assert!(!pipeline.stalled(), "receive buffer full without a request");
    if pipeline.closed() {
        assert!(pipeline
            .feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .is_empty());
    }
});
