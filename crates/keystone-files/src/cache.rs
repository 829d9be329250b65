//! A per-worker open-file cache in the spirit of nginx's `open_file_cache`,
//! as a pure data structure: it stores descriptors the caller opened (plain
//! `i32`s) and hands back the ones the caller must close; it never opens,
//! stats or closes anything, and it reads no clock (`now` is an argument).
//!
//! # Staleness rule
//! An entry is served for `valid_for` after the open that made it: a hit
//! needs `now < opened + valid_for`. A file changed, replaced or deleted on
//! disk inside that window is still served from the old descriptor, with
//! the size and validators read at open (nginx's `open_file_cache_valid`
//! makes the same trade). Past the window, [`FileCache::lookup`] misses;
//! the caller opens and stats again and [`FileCache::insert`] replaces the
//! entry. A small file's bytes ([`CONTENT_BYTES_MAX`]) are kept with its
//! entry from the first answer that read it whole
//! ([`FileCache::keep_content`]) and served from memory for the rest of
//! the window: a file changed in place inside it is served as it was,
//! bytes and validators agreeing. A larger file rewritten *in place*
//! (same inode, truncated) can make the
//! old descriptor read fewer bytes than its cached size: the sender must
//! treat a short read as the end of the connection, as it must without a
//! cache too. A deleted file's descriptor (and its disk blocks) stays open
//! until its entry is replaced, evicted, or closed by
//! [`FileCache::close_stale`].
//!
//! # Roots
//! A key is `(root, path)`. A root id names one opened root directory
//! descriptor, not a directory name: a reload that reopens its roots gives
//! them fresh ids (a counter the caller keeps) and calls
//! [`FileCache::invalidate_root`] with the old ones, so a new root never
//! answers with an old root's entries even when the paths are the same; in
//! flight responses keep their old descriptors until they release them.
//! An id may be reused only after its `invalidate_root`.
//!
//! # Implementation notes
//! Entries live in one array sized at construction; an open-addressing
//! index (linear probing, at most half full, backward-shift deletion, so no
//! tombstones) maps an FNV-1a hash of the key to an entry. FNV-1a is not
//! flood-resistant, and needs not be: only files that were opened
//! successfully are inserted, so a client cannot fill the index with
//! arbitrary colliding keys; it can only ask for files that exist. Eviction
//! scans every entry for the least recently used idle one (O(capacity)),
//! which only misses pay, next to an open and a stat.
//!
//! An entry replaced or evicted while connections still send from it is
//! *retired*: out of the index, its descriptor kept until the last
//! [`FileCache::release`] returns it. A retired entry holds its slot until
//! then, so busy files bound how many new files can be cached.

use std::time::{Duration, Instant};

use crate::{FileKind, FileMeta, RelativePath, Validators};

/// Longest path (in bytes, `RelativePath::as_bytes`) that is cached: 255,
/// so its length fits a `u8` and an entry stays under half a KiB. Static
/// asset paths are far shorter; a longer path is opened every time.
pub const KEY_BYTES_MAX: usize = 255;

/// Most entries one cache may hold: 16,384 entries of under half a KiB is
/// about 7 MiB per worker, and as many descriptors, well inside the
/// `RLIMIT_NOFILE` a file server is given. nginx's examples use 1,000 to
/// 10,000 (`open_file_cache max=`).
pub const ENTRIES_MAX: u16 = 16_384;

/// Largest file whose bytes an entry keeps (its first whole read), so a
/// hit is answered from memory with no read at all. Why 32 KiB: files up
/// to it are read into the send buffer whole anyway (keystone-conn's
/// `FILE_READ_BYTES_MAX`, measured); larger ones are spliced. The cache's
/// byte area is `entries × CONTENT_BYTES_MAX` of address space, resident
/// only as small files are kept (256 entries: at most 8 MiB per worker).
pub const CONTENT_BYTES_MAX: u32 = 32 * 1024;

/// An empty index cell.
const NO_ENTRY: u16 = u16::MAX;

const _: () = assert!(KEY_BYTES_MAX <= u8::MAX as usize);
// Every entry index fits a cell and differs from `NO_ENTRY`.
const _: () = assert!(ENTRIES_MAX < NO_ENTRY);
// The index has at least twice as many cells as entries, and its size is a
// power of two the u16 entry count can reach.
const _: () = assert!((ENTRIES_MAX as usize * 2).is_power_of_two());

/// What a hit gives: the descriptor and everything its headers need.
#[derive(Clone, Copy, Debug)]
pub struct CachedFile {
    /// The open descriptor, owned by the cache: never close it yourself.
    pub fd: i32,
    /// Size, mtime and kind read at open (the size is what is announced).
    pub meta: FileMeta,
    /// `Content-Type`, from the name the file was opened by.
    pub content_type: &'static str,
    /// ETag and Last-Modified, formatted once per open.
    pub validators: Validators,
    /// When the descriptor was opened; the entry is stale from
    /// `opened + valid_for`.
    pub opened: Instant,
}

/// A use of a cached descriptor: from a hit or an insert until
/// [`FileCache::release`], which takes it back. Not `Clone`: one handle is
/// one user. Carries its entry's generation, so a handle kept past its
/// release is caught.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a handle must be given back with FileCache::release"]
pub struct Handle {
    entry: u16,
    generation: u32,
}

/// What [`FileCache::insert`] did with a descriptor.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "the descriptor in `close` must be closed"]
pub enum Insert {
    /// The cache owns the descriptor now; use it through `handle` (one
    /// user) and close `close` if any: the descriptor of the entry this one
    /// replaced or evicted, which had no users.
    Cached {
        /// The caller's use of the new entry.
        handle: Handle,
        /// A descriptor to close now (never the inserted one).
        close: Option<i32>,
    },
    /// Not cached: the path is longer than [`KEY_BYTES_MAX`]. The caller
    /// keeps its descriptor and closes it after use.
    KeyTooLong,
    /// Not cached: every entry is in use. The caller keeps its descriptor
    /// and closes it after use.
    AllBusy,
}

/// One slot of the entry array.
#[derive(Clone, Copy)]
enum State {
    Free,
    /// In the index, served to lookups while fresh.
    Cached(CachedFile),
    /// Out of the index (replaced, evicted or invalidated) while it still
    /// has users; the last release returns its descriptor.
    Retired(CachedFile),
}

#[derive(Clone, Copy)]
struct Entry {
    state: State,
    /// Users: handles not yet released.
    users: u32,
    /// Bumped whenever the slot is freed, so old handles are caught.
    generation: u32,
    /// `clock` at the last hit or insert (least recently used goes first).
    last_used: u64,
    hash: u64,
    root: u32,
    key_len: u8,
    key: [u8; KEY_BYTES_MAX],
    /// Bytes of the file kept in the entry's part of `contents` (0: none).
    content_len: u32,
}

impl Entry {
    fn key(&self) -> &[u8] {
        &self.key[..usize::from(self.key_len)]
    }

    fn file(&self) -> Option<&CachedFile> {
        match &self.state {
            State::Free => None,
            State::Cached(file) | State::Retired(file) => Some(file),
        }
    }
}

/// The open-file cache of one worker; see the module notes for the
/// staleness rule and root ids.
pub struct FileCache {
    entries: Box<[Entry]>,
    /// `CONTENT_BYTES_MAX` bytes per entry: the kept files.
    contents: Box<[u8]>,
    /// Open-addressing index: `NO_ENTRY` or an index into `entries`.
    index: Box<[u16]>,
    /// Free entries, a stack of indices into `entries`; `free_count` used.
    free: Box<[u16]>,
    free_count: u16,
    /// Entries in the index.
    cached_count: u16,
    valid_for: Duration,
    /// Ticks on every hit and insert (least-recently-used order).
    clock: u64,
}

impl FileCache {
    /// A cache of `entries` descriptors (1 to [`ENTRIES_MAX`]) served for
    /// `valid_for` after their open. Allocates everything it will use.
    pub fn new(entries: u16, valid_for: Duration) -> FileCache {
        assert!(entries >= 1, "a file cache needs one entry at least");
        assert!(entries <= ENTRIES_MAX, "{entries} entries > {ENTRIES_MAX}");
        let empty = Entry {
            state: State::Free,
            users: 0,
            generation: 0,
            last_used: 0,
            hash: 0,
            root: 0,
            key_len: 0,
            key: [0; KEY_BYTES_MAX],
            content_len: 0,
        };
        let index_cells = (usize::from(entries) * 2).next_power_of_two();
        FileCache {
            entries: vec![empty; usize::from(entries)].into_boxed_slice(),
            // Zeroed pages from the allocator's fresh mapping: resident
            // only once written.
            contents: vec![0; usize::from(entries) * CONTENT_BYTES_MAX as usize].into_boxed_slice(),
            index: vec![NO_ENTRY; index_cells].into_boxed_slice(),
            // Popped from the end: entry 0 is used first.
            free: (0..entries).rev().collect(),
            free_count: entries,
            cached_count: 0,
            valid_for,
            clock: 0,
        }
    }

    /// Entries this cache holds at most.
    pub fn capacity(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Entries lookups can find now (fresh or stale; retired ones not).
    pub fn cached_count(&self) -> u16 {
        self.cached_count
    }

    /// A use of the fresh entry for `path` under `root`, if there is one
    /// (`now < opened + valid_for`); a stale or absent entry is a miss: open
    /// and [`FileCache::insert`]. A hit adds one user.
    pub fn lookup(&mut self, root: u32, path: &RelativePath, now: Instant) -> Option<Handle> {
        let key = path.as_bytes();
        if key.len() > KEY_BYTES_MAX {
            return None;
        }
        let (_, entry_index) = self.find(root, key, hash_key(root, key))?;
        let valid_for = self.valid_for;
        let entry = &mut self.entries[usize::from(entry_index)];
        let State::Cached(file) = &entry.state else {
            unreachable!("the index points at cached entries only");
        };
        if now.saturating_duration_since(file.opened) >= valid_for {
            return None;
        }
        entry.users = entry.users.checked_add(1).expect("users fit a u32");
        self.clock += 1;
        entry.last_used = self.clock;
        Some(Handle {
            entry: entry_index,
            generation: entry.generation,
        })
    }

    /// The descriptor and headers behind `handle`.
    pub fn get(&self, handle: &Handle) -> &CachedFile {
        assert!(self.holds(handle), "stale file-cache handle {handle:?}");
        self.entries[usize::from(handle.entry)]
            .file()
            .expect("a held entry has a file")
    }

    /// The file's bytes, when an earlier answer kept them
    /// ([`FileCache::keep_content`]): a hit needs no read then.
    pub fn content(&self, handle: &Handle) -> Option<&[u8]> {
        assert!(self.holds(handle), "stale file-cache handle {handle:?}");
        let entry = &self.entries[usize::from(handle.entry)];
        let len = entry.content_len as usize;
        (len > 0).then(|| &self.contents[content_area(handle.entry)][..len])
    }

    /// Keeps `bytes`, a whole read of the file behind `handle` (its size
    /// as stated at open, at most [`CONTENT_BYTES_MAX`]), for the entry's
    /// later hits. Anything else (a part, a file that changed size, a
    /// large one) is not kept; an entry keeps its first whole read.
    pub fn keep_content(&mut self, handle: &Handle, bytes: &[u8]) {
        let size = self.get(handle).meta.size;
        let entry = usize::from(handle.entry);
        if bytes.is_empty()
            || bytes.len() as u64 != size
            || bytes.len() > CONTENT_BYTES_MAX as usize
            || self.entries[entry].content_len > 0
        {
            return;
        }
        self.contents[content_area(handle.entry)][..bytes.len()].copy_from_slice(bytes);
        self.entries[entry].content_len = bytes.len() as u32;
    }

    /// Whether `handle` is a live use of this cache (not released, its
    /// entry not reused): what [`FileCache::get`] and
    /// [`FileCache::release`] assert.
    pub fn holds(&self, handle: &Handle) -> bool {
        let Some(entry) = self.entries.get(usize::from(handle.entry)) else {
            return false;
        };
        entry.generation == handle.generation
            && entry.users > 0
            && !matches!(entry.state, State::Free)
    }

    /// Ends a use: the caller is done with the descriptor. Returns a
    /// descriptor to close when the entry had been retired (replaced,
    /// evicted or invalidated) and this was its last user.
    pub fn release(&mut self, handle: Handle) -> Option<i32> {
        assert!(self.holds(&handle), "stale file-cache handle {handle:?}");
        let entry = &mut self.entries[usize::from(handle.entry)];
        entry.users -= 1;
        match entry.state {
            State::Retired(file) if entry.users == 0 => {
                self.free_entry(handle.entry);
                Some(file.fd)
            }
            State::Retired(_) | State::Cached(_) => None,
            State::Free => unreachable!("a held entry is not free"),
        }
    }

    /// Caches `fd`, just opened for `path` under `root` at `now` and stated
    /// as `meta` (a regular file); `content_type` is the type of the name
    /// it was opened by. The validators are formatted here, once.
    ///
    /// On [`Insert::Cached`] the cache owns `fd` and the caller holds one
    /// use. An entry already cached for the key (a stale one being
    /// revalidated, or a racing miss) is replaced: its descriptor comes
    /// back in `close` when it had no users, otherwise it is retired and
    /// its last release returns it. When the cache is full, the least
    /// recently used entry without users is evicted (its descriptor in
    /// `close`); at most one descriptor comes back. With every entry busy
    /// (or the key too long) nothing is cached and the caller keeps `fd`.
    pub fn insert(
        &mut self,
        root: u32,
        path: &RelativePath,
        fd: i32,
        meta: FileMeta,
        content_type: &'static str,
        now: Instant,
    ) -> Insert {
        assert!(fd >= 0, "descriptor {fd} is not an open one");
        assert_eq!(
            meta.kind,
            FileKind::Regular,
            "only regular files are cached"
        );
        let key = path.as_bytes();
        if key.len() > KEY_BYTES_MAX {
            return Insert::KeyTooLong;
        }
        let hash = hash_key(root, key);
        let mut close = None;
        let mut reuse = None;
        if let Some((cell, old)) = self.find(root, key, hash) {
            self.unlink(cell);
            let entry = &mut self.entries[usize::from(old)];
            let State::Cached(file) = entry.state else {
                unreachable!("the index points at cached entries only");
            };
            debug_assert_ne!(file.fd, fd, "the old descriptor is still open");
            if entry.users == 0 {
                close = Some(file.fd);
                entry.generation = entry.generation.wrapping_add(1);
                reuse = Some(old);
            } else {
                entry.state = State::Retired(file);
            }
        }
        let target = match reuse {
            Some(entry) => entry,
            None => match self.take_entry() {
                Some((entry, evicted)) => {
                    debug_assert!(close.is_none(), "only a reused entry closes");
                    close = evicted;
                    entry
                }
                None => return Insert::AllBusy,
            },
        };
        self.clock += 1;
        let entry = &mut self.entries[usize::from(target)];
        entry.state = State::Cached(CachedFile {
            fd,
            meta,
            content_type,
            validators: Validators::new(&meta),
            opened: now,
        });
        entry.users = 1;
        entry.last_used = self.clock;
        entry.hash = hash;
        entry.root = root;
        entry.key_len = key.len() as u8;
        entry.key[..key.len()].copy_from_slice(key);
        // A new open: bytes kept from the old one are not its.
        entry.content_len = 0;
        let generation = entry.generation;
        self.link(target);
        Insert::Cached {
            handle: Handle {
                entry: target,
                generation,
            },
            close,
        }
    }

    /// Takes every entry of `root` out of the index (a reload reopened the
    /// roots under new ids): idle ones are freed and their descriptors
    /// passed to `close`, busy ones retired (their last release returns
    /// them). Returns how many entries were taken out.
    pub fn invalidate_root(&mut self, root: u32, close: &mut dyn FnMut(i32)) -> u16 {
        self.take_out(|entry| entry.root == root, close)
    }

    /// Closes stale entries nobody uses (`now >= opened + valid_for`), so
    /// descriptors of files deleted on disk do not stay open until evicted;
    /// a periodic tick calls it. Returns how many were closed.
    pub fn close_stale(&mut self, now: Instant, close: &mut dyn FnMut(i32)) -> u16 {
        let valid_for = self.valid_for;
        self.take_out(
            |entry| {
                entry.users == 0
                    && entry
                        .file()
                        .is_some_and(|file| now.saturating_duration_since(file.opened) >= valid_for)
            },
            close,
        )
    }

    /// Takes every cached entry out (shutdown, or dropping the cache):
    /// idle descriptors go to `close`, busy ones come back from their last
    /// release. Returns how many entries were taken out.
    pub fn clear(&mut self, close: &mut dyn FnMut(i32)) -> u16 {
        self.take_out(|_| true, close)
    }

    /// Takes cached entries matching `chosen` out of the index.
    fn take_out(&mut self, chosen: impl Fn(&Entry) -> bool, close: &mut dyn FnMut(i32)) -> u16 {
        let mut taken = 0;
        for entry_index in 0..self.capacity() {
            let entry = &self.entries[usize::from(entry_index)];
            let State::Cached(file) = entry.state else {
                continue;
            };
            if !chosen(entry) {
                continue;
            }
            let cell = self.cell_of(entry_index);
            self.unlink(cell);
            let entry = &mut self.entries[usize::from(entry_index)];
            if entry.users == 0 {
                self.free_entry(entry_index);
                close(file.fd);
            } else {
                entry.state = State::Retired(file);
            }
            taken += 1;
        }
        taken
    }

    /// A free entry, evicting the least recently used idle one when none
    /// is free (its descriptor is returned to close); `None` when every
    /// entry is busy or retired.
    fn take_entry(&mut self) -> Option<(u16, Option<i32>)> {
        if self.free_count > 0 {
            self.free_count -= 1;
            let entry = self.free[usize::from(self.free_count)];
            debug_assert!(matches!(
                self.entries[usize::from(entry)].state,
                State::Free
            ));
            return Some((entry, None));
        }
        let victim = (0..self.capacity())
            .filter(|&index| {
                let entry = &self.entries[usize::from(index)];
                entry.users == 0 && matches!(entry.state, State::Cached(_))
            })
            .min_by_key(|&index| self.entries[usize::from(index)].last_used)?;
        let cell = self.cell_of(victim);
        self.unlink(cell);
        let entry = &mut self.entries[usize::from(victim)];
        let State::Cached(file) = entry.state else {
            unreachable!("the victim was chosen cached");
        };
        entry.state = State::Free;
        entry.generation = entry.generation.wrapping_add(1);
        Some((victim, Some(file.fd)))
    }

    /// Marks an entry free and pushes it on the free stack.
    fn free_entry(&mut self, entry_index: u16) {
        let entry = &mut self.entries[usize::from(entry_index)];
        debug_assert_eq!(entry.users, 0);
        debug_assert!(!matches!(entry.state, State::Free));
        entry.state = State::Free;
        entry.generation = entry.generation.wrapping_add(1);
        assert!(usize::from(self.free_count) < self.free.len());
        self.free[usize::from(self.free_count)] = entry_index;
        self.free_count += 1;
    }

    fn mask(&self) -> usize {
        self.index.len() - 1
    }

    /// The index cell and entry of a cached key.
    fn find(&self, root: u32, key: &[u8], hash: u64) -> Option<(usize, u16)> {
        let mask = self.mask();
        let mut cell = hash as usize & mask;
        // At most half the cells are used, so an empty one ends every probe.
        for _ in 0..self.index.len() {
            let entry_index = self.index[cell];
            if entry_index == NO_ENTRY {
                return None;
            }
            let entry = &self.entries[usize::from(entry_index)];
            if entry.hash == hash && entry.root == root && entry.key() == key {
                return Some((cell, entry_index));
            }
            cell = (cell + 1) & mask;
        }
        unreachable!("the index is never full");
    }

    /// The index cell pointing at a cached entry.
    fn cell_of(&self, entry_index: u16) -> usize {
        let mask = self.mask();
        let mut cell = self.entries[usize::from(entry_index)].hash as usize & mask;
        for _ in 0..self.index.len() {
            if self.index[cell] == entry_index {
                return cell;
            }
            debug_assert_ne!(self.index[cell], NO_ENTRY, "a cached entry is indexed");
            cell = (cell + 1) & mask;
        }
        unreachable!("a cached entry is indexed");
    }

    /// Puts a cached entry in the index.
    fn link(&mut self, entry_index: u16) {
        debug_assert!(usize::from(self.cached_count) < self.index.len() / 2);
        let mask = self.mask();
        let mut cell = self.entries[usize::from(entry_index)].hash as usize & mask;
        while self.index[cell] != NO_ENTRY {
            debug_assert_ne!(self.index[cell], entry_index);
            cell = (cell + 1) & mask;
        }
        self.index[cell] = entry_index;
        self.cached_count += 1;
    }

    /// Empties an index cell and shifts later cells of the same probe run
    /// back, so every key stays reachable from its home cell without
    /// tombstones.
    fn unlink(&mut self, cell: usize) {
        debug_assert_ne!(self.index[cell], NO_ENTRY);
        let mask = self.mask();
        let mut hole = cell;
        let mut next = cell;
        loop {
            next = (next + 1) & mask;
            let entry_index = self.index[next];
            if entry_index == NO_ENTRY {
                break;
            }
            let home = self.entries[usize::from(entry_index)].hash as usize & mask;
            // The entry at `next` may fill the hole when the hole lies on
            // its probe path, i.e. between its home and `next` (cyclically).
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.index[hole] = entry_index;
                hole = next;
            }
        }
        self.index[hole] = NO_ENTRY;
        self.cached_count -= 1;
    }
}

/// Where entry `entry`'s kept bytes live in `FileCache::contents`.
fn content_area(entry: u16) -> std::ops::Range<usize> {
    let start = usize::from(entry) * CONTENT_BYTES_MAX as usize;
    start..start + CONTENT_BYTES_MAX as usize
}

/// FNV-1a (64-bit) over the root id and the path bytes.
fn hash_key(root: u32, key: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    root.to_le_bytes()
        .iter()
        .chain(key)
        .fold(OFFSET_BASIS, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        })
}

#[cfg(test)]
mod tests;
