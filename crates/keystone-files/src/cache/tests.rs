//! FileCache in isolation: scripted cases, then a proptest model check
//! against a plain `Vec` model of the same rules.

use super::*;
use proptest::prelude::*;

const VALID_FOR: Duration = Duration::from_secs(10);

struct Fixture {
    cache: FileCache,
    base: Instant,
}

impl Fixture {
    fn new(entries: u16) -> Fixture {
        Fixture {
            cache: FileCache::new(entries, VALID_FOR),
            base: Instant::now(),
        }
    }

    fn at(&self, secs: u64) -> Instant {
        self.base + Duration::from_secs(secs)
    }

    fn lookup(&mut self, root: u32, name: &str, secs: u64) -> Option<Handle> {
        let now = self.at(secs);
        self.cache.lookup(root, &path(name), now)
    }

    fn insert(&mut self, root: u32, name: &str, fd: i32, secs: u64) -> Insert {
        let now = self.at(secs);
        self.cache
            .insert(root, &path(name), fd, meta(fd as u64), "text/plain", now)
    }

    /// Inserts and expects it cached; returns the handle and `close`.
    fn cached(&mut self, root: u32, name: &str, fd: i32, secs: u64) -> (Handle, Option<i32>) {
        match self.insert(root, name, fd, secs) {
            Insert::Cached { handle, close } => (handle, close),
            other => panic!("insert {name} fd {fd}: {other:?}"),
        }
    }

    fn fd(&self, handle: &Handle) -> i32 {
        self.cache.get(handle).fd
    }
}

fn path(name: &str) -> RelativePath {
    RelativePath::new(name.as_bytes(), false).expect("a valid test path")
}

fn meta(size: u64) -> FileMeta {
    FileMeta {
        size,
        mtime_secs: 1_000,
        kind: FileKind::Regular,
    }
}

/// The index and the entries agree: every cached entry is found from its
/// key, the counts match, free entries are on the free stack.
fn assert_consistent(cache: &FileCache) {
    let mut cached = 0;
    for (index, entry) in cache.entries.iter().enumerate() {
        if let State::Cached(_) = entry.state {
            cached += 1;
            let found = cache.find(entry.root, entry.key(), entry.hash);
            assert_eq!(found.map(|(_, e)| usize::from(e)), Some(index));
        }
        if let State::Retired(_) = entry.state {
            assert!(entry.users > 0, "a retired entry has users");
        }
    }
    assert_eq!(usize::from(cache.cached_count), cached);
    let indexed = cache.index.iter().filter(|&&cell| cell != NO_ENTRY).count();
    assert_eq!(indexed, cached);
    let free = &cache.free[..usize::from(cache.free_count)];
    let free_states = cache
        .entries
        .iter()
        .filter(|entry| matches!(entry.state, State::Free))
        .count();
    assert_eq!(free.len(), free_states);
    for &entry in free {
        assert!(matches!(
            cache.entries[usize::from(entry)].state,
            State::Free
        ));
    }
}

#[test]
fn hit_shares_the_descriptor_and_headers() {
    let mut f = Fixture::new(4);
    assert_eq!(f.lookup(1, "a.txt", 0), None);
    let (first, close) = f.cached(1, "a.txt", 10, 0);
    assert_eq!(close, None);
    let second = f.lookup(1, "a.txt", 5).expect("a hit");
    let file = f.cache.get(&second);
    assert_eq!(file.fd, 10);
    assert_eq!(file.meta, meta(10));
    assert_eq!(file.content_type, "text/plain");
    assert_eq!(file.validators.etag(), b"\"3e8-a\"");
    assert_eq!(file.opened, f.at(0));
    // Other roots and other paths miss.
    assert_eq!(f.lookup(2, "a.txt", 5), None);
    assert_eq!(f.lookup(1, "b.txt", 5), None);
    assert_eq!(f.cache.release(first), None);
    assert_eq!(f.cache.release(second), None);
    assert_consistent(&f.cache);
}

#[test]
fn an_entry_is_stale_from_opened_plus_valid_for() {
    let mut f = Fixture::new(4);
    let (handle, _) = f.cached(1, "a", 10, 0);
    assert_eq!(f.cache.release(handle), None);
    let last_second = f.base + VALID_FOR - Duration::from_nanos(1);
    let hit = f.cache.lookup(1, &path("a"), last_second).expect("fresh");
    assert_eq!(f.cache.release(hit), None);
    assert_eq!(f.cache.lookup(1, &path("a"), f.base + VALID_FOR), None);
    assert_eq!(f.lookup(1, "a", 100), None);
    // A clock behind the open (never in practice) still counts as fresh.
    let early = f.base.checked_sub(Duration::from_secs(1));
    if let Some(early) = early {
        let hit = f.cache.lookup(1, &path("a"), early).expect("fresh");
        assert_eq!(f.cache.release(hit), None);
    }
    // Revalidation: the stale idle entry's descriptor comes back at once.
    let (handle, close) = f.cached(1, "a", 11, 10);
    assert_eq!(close, Some(10));
    assert_eq!(f.fd(&handle), 11);
    assert_eq!(f.cache.release(handle), None);
    assert_eq!(f.cache.cached_count(), 1);
    assert_consistent(&f.cache);
}

#[test]
fn eviction_takes_the_least_recently_used_idle_entry() {
    let mut f = Fixture::new(3);
    for (fd, name) in [(10, "a"), (11, "b"), (12, "c")] {
        let (handle, close) = f.cached(1, name, fd, 0);
        assert_eq!(close, None);
        assert_eq!(f.cache.release(handle), None);
    }
    // Touch "a": "b" is now the least recently used.
    let hit = f.lookup(1, "a", 1).expect("a hit");
    assert_eq!(f.cache.release(hit), None);
    let (handle, close) = f.cached(1, "d", 13, 1);
    assert_eq!(close, Some(11));
    assert_eq!(f.cache.release(handle), None);
    assert_eq!(f.lookup(1, "b", 1), None);
    for name in ["a", "c", "d"] {
        let hit = f.lookup(1, name, 1).expect(name);
        assert_eq!(f.cache.release(hit), None);
    }
    assert_consistent(&f.cache);
}

#[test]
fn busy_entries_are_not_evicted_and_all_busy_is_not_cached() {
    let mut f = Fixture::new(2);
    let (a, _) = f.cached(1, "a", 10, 0);
    let (b, close) = f.cached(1, "b", 11, 0);
    assert_eq!(close, None);
    // Both busy: nothing to evict; the caller keeps fd 12.
    assert_eq!(f.insert(1, "c", 12, 0), Insert::AllBusy);
    assert_eq!(f.lookup(1, "c", 0), None);
    // "a" is the older, but busy: "b" goes once idle.
    assert_eq!(f.cache.release(b), None);
    let (c, close) = f.cached(1, "c", 12, 0);
    assert_eq!(close, Some(11));
    assert_eq!(f.fd(&a), 10);
    assert_eq!(f.cache.release(a), None);
    assert_eq!(f.cache.release(c), None);
    assert_consistent(&f.cache);
}

#[test]
fn replacing_a_busy_entry_returns_its_descriptor_on_the_last_release() {
    let mut f = Fixture::new(4);
    let (first, _) = f.cached(1, "a", 10, 0);
    let second = f.lookup(1, "a", 1).expect("a hit");
    // Stale at 10 s while both still send from fd 10.
    assert_eq!(f.lookup(1, "a", 10), None);
    let (new, close) = f.cached(1, "a", 20, 10);
    assert_eq!(close, None, "the old entry is busy");
    assert_eq!(f.fd(&new), 20);
    assert_eq!(f.fd(&first), 10, "the old users keep their descriptor");
    let hit = f.lookup(1, "a", 11).expect("the new entry");
    assert_eq!(f.fd(&hit), 20);
    assert_eq!(f.cache.release(first), None);
    assert_eq!(f.cache.release(second), Some(10));
    assert_eq!(f.cache.release(new), None);
    assert_eq!(f.cache.release(hit), None);
    assert_consistent(&f.cache);
}

#[test]
fn a_retired_entry_holds_its_slot_until_released() {
    let mut f = Fixture::new(2);
    let (old, _) = f.cached(1, "a", 10, 0);
    let (new, close) = f.cached(1, "a", 11, 20);
    assert_eq!(close, None);
    // Two slots: the retired "a" (fd 10) and the new "a" (fd 11), both busy.
    assert_eq!(f.insert(1, "b", 12, 20), Insert::AllBusy);
    assert_eq!(f.cache.release(old), Some(10));
    let (b, close) = f.cached(1, "b", 12, 20);
    assert_eq!(close, None, "the retired slot was freed, not evicted");
    assert_eq!(f.cache.release(new), None);
    assert_eq!(f.cache.release(b), None);
    assert_consistent(&f.cache);
}

#[test]
fn replacing_with_every_entry_busy_retires_the_old_one() {
    let mut f = Fixture::new(1);
    let (old, _) = f.cached(1, "a", 10, 0);
    assert_eq!(f.insert(1, "a", 11, 20), Insert::AllBusy);
    assert_eq!(
        f.lookup(1, "a", 0),
        None,
        "superseded, even though fresh at 0 s"
    );
    assert_eq!(f.cache.release(old), Some(10));
    assert_eq!(f.cache.cached_count(), 0);
    assert_consistent(&f.cache);
}

#[test]
fn long_keys_are_never_cached() {
    let mut f = Fixture::new(2);
    let longest = "k".repeat(KEY_BYTES_MAX);
    let (handle, _) = f.cached(1, &longest, 10, 0);
    assert_eq!(f.cache.release(handle), None);
    let hit = f.lookup(1, &longest, 0).expect("the longest key is cached");
    assert_eq!(f.cache.release(hit), None);
    let too_long = "k".repeat(KEY_BYTES_MAX + 1);
    assert_eq!(f.insert(1, &too_long, 11, 0), Insert::KeyTooLong);
    assert_eq!(f.lookup(1, &too_long, 0), None);
    assert_eq!(f.cache.cached_count(), 1);
    assert_consistent(&f.cache);
}

#[test]
fn invalidating_a_root_closes_idle_and_retires_busy_entries() {
    let mut f = Fixture::new(4);
    let (busy, _) = f.cached(1, "a", 10, 0);
    let (idle, _) = f.cached(1, "b", 11, 0);
    assert_eq!(f.cache.release(idle), None);
    let (other, _) = f.cached(2, "a", 12, 0);
    assert_eq!(f.cache.release(other), None);
    let mut closed = Vec::new();
    assert_eq!(f.cache.invalidate_root(1, &mut |fd| closed.push(fd)), 2);
    assert_eq!(closed, [11]);
    assert_eq!(f.lookup(1, "a", 1), None);
    assert_eq!(f.lookup(1, "b", 1), None);
    let hit = f.lookup(2, "a", 1).expect("another root stays");
    assert_eq!(f.cache.release(hit), None);
    assert_eq!(f.fd(&busy), 10);
    assert_eq!(f.cache.release(busy), Some(10));
    assert_eq!(
        f.cache.invalidate_root(1, &mut |_| panic!("nothing left")),
        0
    );
    assert_consistent(&f.cache);
}

#[test]
fn stale_idle_entries_are_closed_by_close_stale_and_clear_takes_the_rest() {
    let mut f = Fixture::new(4);
    let (stale_idle, _) = f.cached(1, "a", 10, 0);
    assert_eq!(f.cache.release(stale_idle), None);
    let (stale_busy, _) = f.cached(1, "b", 11, 0);
    let (fresh, _) = f.cached(1, "c", 12, 5);
    assert_eq!(f.cache.release(fresh), None);
    let mut closed = Vec::new();
    let now = f.at(10);
    assert_eq!(f.cache.close_stale(now, &mut |fd| closed.push(fd)), 1);
    assert_eq!(closed, [10]);
    let mut closed = Vec::new();
    assert_eq!(f.cache.clear(&mut |fd| closed.push(fd)), 2);
    assert_eq!(closed, [12]);
    assert_eq!(f.cache.cached_count(), 0);
    assert_eq!(f.cache.release(stale_busy), Some(11));
    assert_consistent(&f.cache);
}

#[test]
fn stale_handles_are_caught() {
    let mut f = Fixture::new(1);
    let (handle, _) = f.cached(1, "a", 10, 0);
    let copy = Handle {
        entry: handle.entry,
        generation: handle.generation,
    };
    assert!(f.cache.holds(&copy));
    assert_eq!(f.cache.release(handle), None);
    // Released: the entry has no users left.
    assert!(!f.cache.holds(&copy));
    // Evicted and reused: the generation moved on.
    let (reused, close) = f.cached(1, "b", 11, 0);
    assert_eq!(close, Some(10));
    assert_eq!(reused.entry, copy.entry);
    assert!(!f.cache.holds(&copy));
    assert!(f.cache.holds(&reused));
    let outside = Handle {
        entry: 7,
        generation: 0,
    };
    assert!(!f.cache.holds(&outside));
    assert_eq!(f.cache.release(reused), None);
}

#[test]
fn sizes_and_limits() {
    let cache = FileCache::new(ENTRIES_MAX, VALID_FOR);
    assert_eq!(cache.capacity(), ENTRIES_MAX);
    assert_eq!(cache.index.len(), 2 * usize::from(ENTRIES_MAX));
    let cache = FileCache::new(3, VALID_FOR);
    assert_eq!(cache.index.len(), 8);
    assert!(
        std::mem::size_of::<Entry>() <= 512,
        "{}",
        std::mem::size_of::<Entry>()
    );
}

#[test]
fn fnv1a_matches_the_reference() {
    // FNV-1a 64 of the empty input is the offset basis; of "a" it is
    // 0xaf63dc4c8601ec8c (the published test vector).
    let fold = |bytes: &[u8]| {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    assert_eq!(fold(b"a"), 0xaf63_dc4c_8601_ec8c);
    let mut bytes = 7_u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"x/y");
    assert_eq!(hash_key(7, b"x/y"), fold(&bytes));
}

// ---- Model check --------------------------------------------------------

/// The same rules over a `Vec`, written for obviousness, not speed.
struct Model {
    capacity: usize,
    valid_for_secs: u64,
    entries: Vec<ModelEntry>,
    clock: u64,
}

struct ModelEntry {
    root: u32,
    key: Vec<u8>,
    fd: i32,
    opened_secs: u64,
    users: u32,
    retired: bool,
    last_used: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum ModelInsert {
    Cached { close: Option<i32> },
    KeyTooLong,
    AllBusy,
}

impl Model {
    fn live(&self, root: u32, key: &[u8]) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| !e.retired && e.root == root && e.key == key)
    }

    fn lookup(&mut self, root: u32, key: &[u8], now_secs: u64) -> Option<i32> {
        let index = self.live(root, key)?;
        if now_secs.saturating_sub(self.entries[index].opened_secs) >= self.valid_for_secs {
            return None;
        }
        self.clock += 1;
        let entry = &mut self.entries[index];
        entry.users += 1;
        entry.last_used = self.clock;
        Some(entry.fd)
    }

    fn insert(&mut self, root: u32, key: &[u8], fd: i32, now_secs: u64) -> ModelInsert {
        if key.len() > KEY_BYTES_MAX {
            return ModelInsert::KeyTooLong;
        }
        let mut close = None;
        if let Some(index) = self.live(root, key) {
            if self.entries[index].users == 0 {
                close = Some(self.entries.remove(index).fd);
            } else {
                self.entries[index].retired = true;
            }
        }
        if close.is_none() && self.entries.len() == self.capacity {
            let victim = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.retired && e.users == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(index, _)| index);
            match victim {
                Some(index) => close = Some(self.entries.remove(index).fd),
                None => return ModelInsert::AllBusy,
            }
        }
        self.clock += 1;
        self.entries.push(ModelEntry {
            root,
            key: key.to_vec(),
            fd,
            opened_secs: now_secs,
            users: 1,
            retired: false,
            last_used: self.clock,
        });
        ModelInsert::Cached { close }
    }

    fn release(&mut self, fd: i32) -> Option<i32> {
        let index = self.entries.iter().position(|e| e.fd == fd).expect("held");
        let entry = &mut self.entries[index];
        entry.users -= 1;
        if entry.retired && entry.users == 0 {
            return Some(self.entries.remove(index).fd);
        }
        None
    }

    /// Takes matching live entries out; returns the closed fds, sorted.
    fn take_out(&mut self, chosen: impl Fn(&ModelEntry) -> bool) -> Vec<i32> {
        let mut closed = Vec::new();
        for entry in &mut self.entries {
            if !entry.retired && chosen(entry) {
                entry.retired = true;
                if entry.users == 0 {
                    closed.push(entry.fd);
                }
            }
        }
        self.entries.retain(|e| !(e.retired && e.users == 0));
        closed.sort_unstable();
        closed
    }
}

#[derive(Clone, Debug)]
enum Op {
    Lookup {
        root: u32,
        key: usize,
        advance_secs: u64,
    },
    Insert {
        root: u32,
        key: usize,
        advance_secs: u64,
    },
    Release {
        which: usize,
    },
    InvalidateRoot {
        root: u32,
    },
    CloseStale {
        advance_secs: u64,
    },
}

fn key_names() -> [String; 6] {
    [
        "a".to_owned(),
        "b".to_owned(),
        "c/d".to_owned(),
        "e.html".to_owned(),
        "f/g/h".to_owned(),
        "x".repeat(KEY_BYTES_MAX + 1),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2_u32, 0..6_usize, 0..3_u64)
            .prop_map(|(root, key, advance_secs)| Op::Lookup { root, key, advance_secs }),
        3 => (0..2_u32, 0..6_usize, 0..3_u64)
            .prop_map(|(root, key, advance_secs)| Op::Insert { root, key, advance_secs }),
        3 => (0..8_usize).prop_map(|which| Op::Release { which }),
        1 => (0..2_u32).prop_map(|root| Op::InvalidateRoot { root }),
        1 => (0..3_u64).prop_map(|advance_secs| Op::CloseStale { advance_secs }),
    ]
}

/// Every descriptor the cache took over is closed exactly once, never while
/// a handle still uses it.
#[derive(Default)]
struct Ledger {
    owned_by_cache: Vec<i32>,
    closed: Vec<i32>,
}

impl Ledger {
    fn close(&mut self, fd: i32, held: &[(Handle, i32)]) {
        assert!(
            self.owned_by_cache.contains(&fd),
            "fd {fd} was never the cache's"
        );
        assert!(!self.closed.contains(&fd), "fd {fd} closed twice");
        assert!(
            held.iter().all(|(_, used)| *used != fd),
            "fd {fd} closed while in use"
        );
        self.closed.push(fd);
    }
}

fn run_model(capacity: u16, valid_for_secs: u64, ops: &[Op]) {
    let names = key_names();
    let paths: Vec<RelativePath> = names.iter().map(|name| path(name)).collect();
    let base = Instant::now();
    let mut cache = FileCache::new(capacity, Duration::from_secs(valid_for_secs));
    let mut model = Model {
        capacity: usize::from(capacity),
        valid_for_secs,
        entries: Vec::new(),
        clock: 0,
    };
    let mut held: Vec<(Handle, i32)> = Vec::new();
    let mut ledger = Ledger::default();
    let mut now_secs = 0;
    let mut next_fd = 100;
    for op in ops {
        match *op {
            Op::Lookup {
                root,
                key,
                advance_secs,
            } => {
                now_secs += advance_secs;
                let now = base + Duration::from_secs(now_secs);
                let got = cache.lookup(root, &paths[key], now);
                let expected = model.lookup(root, names[key].as_bytes(), now_secs);
                assert_eq!(got.as_ref().map(|h| cache.get(h).fd), expected, "{op:?}");
                if let Some(handle) = got {
                    let fd = cache.get(&handle).fd;
                    held.push((handle, fd));
                }
            }
            Op::Insert {
                root,
                key,
                advance_secs,
            } => {
                now_secs += advance_secs;
                let now = base + Duration::from_secs(now_secs);
                let fd = next_fd;
                next_fd += 1;
                let got = cache.insert(root, &paths[key], fd, meta(1), "text/plain", now);
                let expected = model.insert(root, names[key].as_bytes(), fd, now_secs);
                match got {
                    Insert::Cached { handle, close } => {
                        assert_eq!(expected, ModelInsert::Cached { close }, "{op:?}");
                        assert_eq!(cache.get(&handle).fd, fd);
                        ledger.owned_by_cache.push(fd);
                        if let Some(close) = close {
                            ledger.close(close, &held);
                        }
                        held.push((handle, fd));
                    }
                    Insert::KeyTooLong => assert_eq!(expected, ModelInsert::KeyTooLong),
                    Insert::AllBusy => assert_eq!(expected, ModelInsert::AllBusy),
                }
            }
            Op::Release { which } => {
                if held.is_empty() {
                    continue;
                }
                let (handle, fd) = held.swap_remove(which % held.len());
                let got = cache.release(handle);
                assert_eq!(got, model.release(fd), "{op:?} fd {fd}");
                if let Some(close) = got {
                    ledger.close(close, &held);
                }
            }
            Op::InvalidateRoot { root } => {
                let mut closed = Vec::new();
                cache.invalidate_root(root, &mut |fd| closed.push(fd));
                closed.sort_unstable();
                assert_eq!(closed, model.take_out(|e| e.root == root), "{op:?}");
                for fd in closed {
                    ledger.close(fd, &held);
                }
            }
            Op::CloseStale { advance_secs } => {
                now_secs += advance_secs;
                let now = base + Duration::from_secs(now_secs);
                let mut closed = Vec::new();
                cache.close_stale(now, &mut |fd| closed.push(fd));
                closed.sort_unstable();
                let expected =
                    model.take_out(|e| e.users == 0 && now_secs - e.opened_secs >= valid_for_secs);
                assert_eq!(closed, expected, "{op:?}");
                for fd in closed {
                    ledger.close(fd, &held);
                }
            }
        }
        assert_consistent(&cache);
        let live = model.entries.iter().filter(|e| !e.retired).count();
        assert_eq!(usize::from(cache.cached_count()), live);
    }
    // Drain: every descriptor the cache took is closed exactly once.
    let mut closed = Vec::new();
    cache.clear(&mut |fd| closed.push(fd));
    for fd in closed {
        ledger.close(fd, &held);
    }
    while let Some((handle, _)) = held.pop() {
        // After `clear` every entry is retired: each last release closes.
        if let Some(close) = cache.release(handle) {
            ledger.close(close, &held);
        }
    }
    let mut owned = ledger.owned_by_cache.clone();
    let mut closed = ledger.closed.clone();
    owned.sort_unstable();
    closed.sort_unstable();
    assert_eq!(owned, closed);
    assert_consistent(&cache);
    assert_eq!(cache.free_count, capacity);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn cache_agrees_with_the_model(
        capacity in 1..6_u16,
        valid_for_secs in 1..5_u64,
        ops in proptest::collection::vec(op(), 0..120),
    ) {
        run_model(capacity, valid_for_secs, &ops);
    }
}

#[test]
fn whole_small_files_are_kept_with_their_entry_and_forgotten_with_it() {
    let mut f = Fixture::new(2);
    // `meta(fd)`: a file's size is its descriptor number here.
    let (handle, _) = f.cached(1, "a.css", 5, 0);
    assert_eq!(f.cache.content(&handle), None);
    f.cache.keep_content(&handle, b"abc");
    assert_eq!(f.cache.content(&handle), None, "a part is not kept");
    f.cache.keep_content(&handle, b"hello");
    assert_eq!(f.cache.content(&handle), Some(&b"hello"[..]));
    f.cache.keep_content(&handle, b"HELLO");
    assert_eq!(
        f.cache.content(&handle),
        Some(&b"hello"[..]),
        "the first whole read stays"
    );
    assert_eq!(f.cache.release(handle), None);
    let hit = f.lookup(1, "a.css", 1).expect("fresh");
    assert_eq!(f.cache.content(&hit), Some(&b"hello"[..]));
    assert_eq!(f.cache.release(hit), None);
    // Revalidated: the new open's entry holds none of the old bytes.
    let (fresh, close) = f.cached(1, "a.css", 6, 20);
    assert_eq!(close, Some(5));
    assert_eq!(f.cache.content(&fresh), None);
    assert_eq!(f.cache.release(fresh), None);
    // An entry evicted for another file starts empty too.
    let (other, _) = f.cached(1, "b.css", 3, 21);
    f.cache.keep_content(&other, b"bbb");
    assert_eq!(f.cache.release(other), None);
    let (third, evicted) = f.cached(1, "c.css", 4, 22);
    assert!(evicted.is_some());
    assert_eq!(f.cache.content(&third), None);
    assert_eq!(f.cache.release(third), None);
    // Too large to keep, whole or not.
    let size = CONTENT_BYTES_MAX as i32 + 1;
    let (big, _) = f.cached(2, "big.bin", size, 23);
    f.cache.keep_content(&big, &vec![7; size as usize]);
    assert_eq!(f.cache.content(&big), None);
    assert_eq!(f.cache.release(big), None);
}
