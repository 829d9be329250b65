//! The table of operations in flight: one entry per submitted operation,
//! holding what the kernel may touch until the operation's final
//! completion (loans, an address buffer, a timeout's interval) and whom it
//! belongs to. Entries live in fixed-size chunks that are never moved or
//! freed while the reactor lives, so storage inside an entry keeps its
//! address for the kernel; chunks are added only when more operations are
//! in flight than ever before (warm-up), never in steady state.

use crate::{Op, Owner, Storage};

/// Entries per chunk: 256 × 72 bytes keeps a chunk at a few pages.
const CHUNK_ENTRIES: usize = 256;

/// An idle keep-alive connection keeps its receive in flight, so a server
/// holding 10k of them holds 10k entries: 72 bytes each (the operation,
/// 40, and what only the kernel touches, 24 — larger storage is boxed).
const _: () = assert!(std::mem::size_of::<Entry>() <= 72);

/// An operation in flight.
pub(crate) struct Entry {
    /// Bumped every time the entry is reused, so an `OpId` names one use.
    pub(crate) seq: u32,
    pub(crate) owner: Owner,
    /// What comes back with the completion (`None` while the entry is free).
    pub(crate) op: Option<Op>,
    /// What only the reactor and the kernel touch.
    pub(crate) storage: Storage,
}

pub(crate) struct Slab {
    chunks: Vec<Box<[Entry]>>,
    free: Vec<u32>,
    /// Entries in use.
    used: usize,
}

impl Slab {
    pub(crate) fn new() -> Slab {
        Slab {
            chunks: Vec::new(),
            free: Vec::new(),
            used: 0,
        }
    }

    /// A free entry's index (growing by a chunk when none is free).
    pub(crate) fn insert(&mut self, owner: Owner, op: Op, storage: Storage) -> (u32, u32) {
        if self.free.is_empty() {
            self.grow();
        }
        let index = self.free.pop().expect("grow adds free entries");
        let entry = self.get_mut(index);
        debug_assert!(entry.op.is_none(), "a free entry holds an operation");
        entry.seq = entry.seq.wrapping_add(1);
        entry.owner = owner;
        entry.op = Some(op);
        entry.storage = storage;
        self.used += 1;
        (index, self.get_mut(index).seq)
    }

    fn grow(&mut self) {
        let base = self.chunks.len() * CHUNK_ENTRIES;
        assert!(
            base + CHUNK_ENTRIES <= u32::MAX as usize,
            "operation table full"
        );
        let chunk: Box<[Entry]> = (0..CHUNK_ENTRIES)
            .map(|_| Entry {
                seq: 0,
                owner: 0,
                op: None,
                storage: Storage::None,
            })
            .collect();
        self.chunks.push(chunk);
        self.free.reserve(CHUNK_ENTRIES);
        self.free
            .extend((base..base + CHUNK_ENTRIES).rev().map(|index| index as u32));
    }

    pub(crate) fn get_mut(&mut self, index: u32) -> &mut Entry {
        let index = index as usize;
        &mut self.chunks[index / CHUNK_ENTRIES][index % CHUNK_ENTRIES]
    }

    /// Frees an entry, returning its operation and storage.
    pub(crate) fn remove(&mut self, index: u32) -> (Owner, Op, Storage) {
        let entry = self.get_mut(index);
        let op = entry.op.take().expect("completion of a free entry");
        let storage = std::mem::replace(&mut entry.storage, Storage::None);
        let owner = entry.owner;
        self.free.push(index);
        self.used -= 1;
        (owner, op, storage)
    }

    /// Entries in use.
    pub(crate) fn used(&self) -> usize {
        self.used
    }
}
