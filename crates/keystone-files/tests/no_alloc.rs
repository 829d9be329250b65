//! The proof of keystone-files' "no allocation after construction": under a
//! counting global allocator, after `FileCache::new`, thousands of lookups,
//! inserts (with evictions and replacements), releases, invalidations and
//! every per-request decision (path decoding, content type, validators,
//! conditionals, ranges, `Content-Range`) allocate nothing.
//!
//! The count is per thread (a `const` thread-local, which itself never
//! allocates), so the test harness's own threads cannot disturb it. The
//! allocator is the only `unsafe` of this package; the library forbids it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use keystone_files::{
    content_type, decide, Conditions, FileCache, FileError, FileKind, FileMeta, Insert,
    RelativePath, Validators,
};
use keystone_response::CONTENT_RANGE_BYTES;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the slot may be gone while the thread exits.
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards every call to the system allocator unchanged; the only
// addition is a thread-local counter increment, which cannot allocate (the
// thread-local is `const`-initialised and has no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ENTRIES: u16 = 64;
const ROUNDS: u32 = 2_000;
const VALID_FOR: Duration = Duration::from_secs(10);

/// One request's decisions: decode, stat result, headers, conditionals.
fn decide_one(raw_path: &[u8], meta: &FileMeta, conditions: &Conditions<'_>) -> (u16, usize) {
    let path = match RelativePath::new(raw_path, true) {
        Ok(path) => path,
        Err(error) => return (error.status(), 0),
    };
    let index = path.with_index().expect("short paths have an index");
    let kind = content_type(path.as_bytes()).len() + content_type(index.as_bytes()).len();
    let validators = Validators::new(meta);
    let decision = decide(meta.size, &validators.current(meta), conditions);
    let mut content_range = [0u8; CONTENT_RANGE_BYTES];
    let len = decision.content_range(meta.size, &mut content_range);
    (
        decision.status(),
        kind + len + validators.last_modified().len(),
    )
}

#[test]
fn cache_and_decisions_do_not_allocate() {
    // Everything the window uses is made before it.
    let names: Vec<RelativePath> = (0..ENTRIES * 2)
        .map(|index| {
            RelativePath::new(format!("/assets/file-{index}.css").as_bytes(), true).unwrap()
        })
        .collect();
    let meta = FileMeta {
        size: 4_096,
        mtime_secs: 784_111_777,
        kind: FileKind::Regular,
    };
    let etag = Validators::new(&meta);
    let etag = etag.etag().to_vec();
    let requests: [(&[u8], Conditions<'_>); 6] = [
        (b"/index.html", Conditions::default()),
        (
            b"/a%20b/c.js",
            Conditions {
                if_none_match: Some(b"\"x\", W/\"2ebc98a1-1000\""),
                ..Conditions::default()
            },
        ),
        (
            b"/img/logo.png",
            Conditions {
                if_modified_since: Some(b"Sun, 06 Nov 1994 08:49:37 GMT"),
                ..Conditions::default()
            },
        ),
        (
            b"/video.mp4",
            Conditions {
                if_range: Some(&etag),
                range: Some(b"bytes=100-199"),
                ..Conditions::default()
            },
        ),
        (
            b"/big.bin",
            Conditions {
                if_modified_since: Some(b"Sunday, 06-Nov-94 08:49:36 GMT"),
                range: Some(b"bytes=5000-"),
                ..Conditions::default()
            },
        ),
        (b"/%2e%2e/etc/passwd", Conditions::default()),
    ];
    let base = Instant::now();
    let mut cache = FileCache::new(ENTRIES, VALID_FOR);
    let mut next_fd = 3;
    let mut closed = 0_u64;
    let mut statuses = 0_u64;

    let before = allocations();
    assert!(before > 0, "the counter sees this thread's allocations");
    for round in 0..ROUNDS {
        let now = base + Duration::from_millis(u64::from(round) * 37);
        let name = &names[round as usize % names.len()];
        let handle = match cache.lookup(u32::from(round % 3 == 0), name, now) {
            Some(handle) => handle,
            None => {
                let fd = next_fd;
                next_fd += 1;
                let kind = content_type(name.as_bytes());
                let root = u32::from(round % 3 == 0);
                match cache.insert(root, name, fd, meta, kind, now) {
                    Insert::Cached { handle, close } => {
                        closed += u64::from(close.is_some());
                        handle
                    }
                    other => panic!("round {round}: {other:?}"),
                }
            }
        };
        let file = cache.get(&handle);
        assert!(file.fd >= 3);
        assert_eq!(file.validators.etag(), &etag[..]);
        closed += u64::from(cache.release(handle).is_some());
        let (raw_path, conditions) = &requests[round as usize % requests.len()];
        statuses += u64::from(decide_one(raw_path, &meta, conditions).0);
        statuses += u64::from(FileError::from_errno(2).status());
        if round % 500 == 499 {
            cache.invalidate_root(1, &mut |_| closed += 1);
            cache.close_stale(now, &mut |_| closed += 1);
        }
    }
    cache.clear(&mut |_| closed += 1);
    let after = allocations();

    assert_eq!(after - before, 0, "allocations in the window");
    assert!(closed > 0, "the rounds evicted and closed descriptors");
    assert!(statuses > 0);
    // The decisions the window made are the expected ones.
    let statuses: Vec<u16> = requests
        .iter()
        .map(|(path, conditions)| decide_one(path, &meta, conditions).0)
        .collect();
    assert_eq!(statuses, [200, 304, 304, 206, 416, 403]);
}
