//! House rule 7 for lookups, and the matchit limits the crate docs name.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use keystone_router::{Router, RouterBuilder};

struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the measuring thread only: the harness's other threads
    /// allocate too, and they are not the router.
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

const LOOKUPS: u32 = 1_000;

fn router() -> Router {
    let mut builder = RouterBuilder::new();
    for (handler, key) in [
        "GET /users/me",
        "GET /users/{id}",
        "GET /users/{id}/posts/{post}",
        "GET /files/{*path}",
        "POST /users",
        "GET /a/{b}/{c}/{d}/{e}",
        "GET /orgs/{org}",
        "GET /orgs/new/{template}",
    ]
    .iter()
    .enumerate()
    {
        builder.add(key, handler as u32).expect("valid");
    }
    builder.build()
}

fn allocations_for(router: &Router, method: &[u8], path: &[u8]) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|counting| counting.set(true));
    for _ in 0..LOOKUPS {
        let _ = std::hint::black_box(router.lookup(method, path, 7));
    }
    COUNTING.with(|counting| counting.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn lookups_allocate_nothing_on_the_promised_paths() {
    let router = router();
    let rows: &[(&[u8], &[u8])] = &[
        (b"GET", b"/users/me"),
        (b"HEAD", b"/users/me"),
        (b"GET", b"/users/42"),
        // A static route beside a parameter sharing the next byte: the
        // static one is answered from the exact table, not the tree walk.
        (b"GET", b"/users/mark"),
        (b"GET", b"/users/42/posts/7"),
        (b"GET", b"/files/a/b/c"),
        (b"PUT", b"/users"),
        (b"GET", b"/missing"),
    ];
    for (method, path) in rows {
        assert_eq!(
            allocations_for(&router, method, path),
            0,
            "{}",
            String::from_utf8_lossy(path)
        );
    }
    // Documented matchit limits: more than 3 parameters, and backtracking
    // past a static segment of a parameter route that shares the next byte.
    assert!(allocations_for(&router, b"GET", b"/a/1/2/3/4") > 0);
    assert!(allocations_for(&router, b"GET", b"/orgs/nasa") > 0);
}
