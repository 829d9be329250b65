//! House rule 7: parsing a request head and decoding a chunked body
//! allocate nothing once the caller's Parser/Head/ChunkedDecoder exist.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use keystone_parser::{
    ChunkedDecoder, Head, Limits, ParseStatus, Parser, ResponseBody, ResponseHead, ResponseParser,
};

struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the measuring thread only: the test harness's own threads
    /// (its output capture, a loaded machine's late timers) allocate too,
    /// and they are not the parser.
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

// SAFETY: forwards every call unchanged to the system allocator; the counter
// has no effect on the memory handed out.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(std::cell::Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const REQUESTS: u32 = 1_000;

#[test]
fn keep_alive_requests_allocate_nothing() {
    let request = b"POST /users/42?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\
Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n";
    let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
    let limits = Limits::default();
    let mut parser = Parser::new();
    let mut head = Head::new();
    let mut decoder = ChunkedDecoder::new();
    let mut scratch = [0_u8; 64];
    let response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
    let mut response_parser = ResponseParser::new();
    let mut response_head = ResponseHead::default();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|counting| counting.set(true));
    for _ in 0..REQUESTS {
        let half = request.len() / 2;
        assert_eq!(
            parser.parse(&request[..half], 100, &limits, &mut head),
            Ok(ParseStatus::Partial)
        );
        assert_eq!(
            parser.parse(request, 100, &limits, &mut head),
            Ok(ParseStatus::Complete)
        );
        parser.reset();
        scratch[..body.len()].copy_from_slice(body);
        let progress = decoder
            .decode(&mut scratch[..body.len()], limits.max_body_bytes)
            .expect("valid");
        assert!(progress.consumed_all);
        decoder.reset();
        assert_eq!(
            response_parser.parse(response, 0, false, 4096, &mut response_head),
            Ok(ParseStatus::Complete)
        );
        assert_eq!(response_head.body, ResponseBody::Length(5));
    }
    COUNTING.with(|counting| counting.set(false));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(allocations, 0, "allocations per {REQUESTS} requests");
}
