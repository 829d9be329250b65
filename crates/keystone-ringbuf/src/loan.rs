//! Loans: the part of a [`RingBuffer`](crate::RingBuffer) handed to the
//! kernel for one operation, as a value that owns the right to touch it.
//!
//! A receive borrows the buffer's spare bytes ([`SpareLoan`]); a send
//! borrows its unconsumed bytes ([`BytesLoan`]). While a loan is out the
//! buffer refuses every method that would move, overwrite or give back the
//! lent bytes (assertions, in release builds too: a violation would let the
//! kernel write into bytes the parser is reading, or send bytes that were
//! compacted away). The loan is moved into the reactor's operation and comes
//! back with its completion, then is returned to the buffer it came from
//! (`return_spare` / `return_unsent`), as monoio hands a buffer back with
//! its completion.
//!
//! Each loan also holds the slab mapping alive (`Rc`), so the memory stays
//! mapped for as long as any operation holds a loan into it, whatever
//! happens to the buffers meanwhile.
//!
//! [`PinnedBytes`] is the third kind of lent memory: bytes owned by someone
//! else (a Lua string the Lua state keeps referenced and LuaJIT never
//! moves), viewed for as long as that owner promised to keep them.

use std::ptr::NonNull;
use std::rc::Rc;

use memmap2::MmapMut;

/// The spare bytes `[offset, offset + len)` of one buffer, lent for the
/// kernel (or an in-process driver) to write into.
pub struct SpareLoan {
    pub(crate) _mapping: Rc<MmapMut>,
    pub(crate) region: NonNull<u8>,
    pub(crate) offset: u32,
    pub(crate) len: u32,
    /// Bytes at the loan's front set aside by [`advance`](Self::advance):
    /// the pointer, length and slice start past them.
    pub(crate) skipped: u32,
}

impl SpareLoan {
    /// Where the bytes go (for the ring: stable until the loan is returned).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        // SAFETY: `offset + skipped` is at most the region's capacity
        // (checked when lent and advanced), so the pointer stays inside (or
        // one past) the region.
        unsafe {
            self.region
                .as_ptr()
                .add(self.offset as usize + self.skipped as usize)
        }
    }

    /// Bytes lent (past any set aside by [`advance`](Self::advance)).
    pub fn len(&self) -> u32 {
        self.len - self.skipped
    }

    /// Whether nothing is lent (never: lending needs spare bytes, and
    /// `advance` leaves at least one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offset of the first lent byte in its buffer's region.
    pub fn offset(&self) -> u32 {
        self.offset + self.skipped
    }

    /// Sets the loan's first `n` bytes aside: a receive continuing after
    /// bytes already written into it (a TLS link keeps the front of a
    /// record there while the rest arrives). At least one byte stays.
    pub fn advance(&mut self, n: u32) {
        assert!(n < self.len(), "advance {n} of a {}-byte loan", self.len());
        self.skipped += n;
    }

    /// Undoes every [`advance`](Self::advance): the whole loan again, as it
    /// must be to go back to its buffer. Returns the bytes that were set
    /// aside.
    pub fn rewind(&mut self) -> u32 {
        std::mem::take(&mut self.skipped)
    }

    /// The lent bytes, for a driver that fills them itself (tests, an
    /// in-process client). The buffer does not touch them while lent.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `[offset, offset + len)` lies inside the region (checked
        // when lent); the buffer refuses to read, write or move it until the
        // loan comes back, the mapping is alive (`_mapping`), anonymous
        // memory is initialised, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.len() as usize) }
    }
}

impl std::fmt::Debug for SpareLoan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpareLoan")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// The unconsumed bytes `[offset, offset + len)` of one buffer, lent for
/// the kernel (or an in-process driver) to read.
pub struct BytesLoan {
    pub(crate) _mapping: Rc<MmapMut>,
    pub(crate) region: NonNull<u8>,
    pub(crate) offset: u32,
    pub(crate) len: u32,
}

impl BytesLoan {
    /// First lent byte.
    pub fn as_ptr(&self) -> *const u8 {
        // SAFETY: `offset + len` is at most the region's tail (checked when
        // lent), so the pointer stays inside the region.
        unsafe { self.region.as_ptr().add(self.offset as usize) }
    }

    /// Bytes lent.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether nothing is lent (never: lending needs bytes).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The lent bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `[offset, offset + len)` lies inside the region below its
        // tail (checked when lent); the buffer neither moves nor consumes
        // them while lent (appends go past the tail), and the mapping is
        // alive (`_mapping`).
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len as usize) }
    }
}

impl std::fmt::Debug for BytesLoan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BytesLoan")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

/// A view of bytes someone else owns and has promised to keep alive and
/// unchanged until it releases them: a response body kept in a Lua string
/// (the Lua state holds a reference, LuaJIT never moves strings). Not
/// `Clone`: one view, moved into the send that reads it and handed back.
pub struct PinnedBytes {
    ptr: NonNull<u8>,
    len: usize,
}

impl PinnedBytes {
    /// Views `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be readable, unchanged and alive until the
    /// owner releases them, and the owner must not release them while this
    /// value (or a part split off it) exists: whoever drops the last part
    /// then tells the owner (for Lua: `LuaWorker::unpin_body`).
    pub unsafe fn new(ptr: *const u8, len: usize) -> PinnedBytes {
        PinnedBytes {
            ptr: NonNull::new(ptr.cast_mut()).unwrap_or(NonNull::dangling()),
            len: if ptr.is_null() { 0 } else { len },
        }
    }

    /// A view of bytes that live for ever (nothing to release).
    pub fn from_static(bytes: &'static [u8]) -> PinnedBytes {
        // SAFETY: static bytes are readable, unchanged and alive for the
        // rest of the program.
        unsafe { PinnedBytes::new(bytes.as_ptr(), bytes.len()) }
    }

    /// An empty view.
    pub fn empty() -> PinnedBytes {
        PinnedBytes {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `new`'s contract keeps `ptr..ptr + len` readable and
        // unchanged while this value exists; `advance`/`split_to` only
        // shrink the range.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// First byte.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Bytes viewed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no bytes are viewed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops the first `n` bytes from the view (they were sent).
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.len, "advance {n} past {} pinned bytes", self.len);
        if n == self.len {
            *self = PinnedBytes::empty();
            return;
        }
        // SAFETY: `n < len`, so the pointer stays inside the viewed range.
        self.ptr = unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(n)) };
        self.len -= n;
    }

    /// Splits off the first `n` bytes (at most `len`) as their own view.
    pub fn split_to(&mut self, n: usize) -> PinnedBytes {
        let n = n.min(self.len);
        let front = PinnedBytes {
            ptr: self.ptr,
            len: n,
        };
        self.advance(n);
        front
    }
}

impl std::fmt::Debug for PinnedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedBytes")
            .field("len", &self.len)
            .finish()
    }
}

/// What one send reads: a connection's unsent buffer bytes, or a body kept
/// elsewhere. Moved into the send and handed back with its completion.
#[derive(Debug)]
pub enum SendBuf {
    /// Unsent bytes of a connection's send buffer.
    Buffer(BytesLoan),
    /// A response body kept elsewhere (a pinned Lua string).
    Pinned(PinnedBytes),
}

impl SendBuf {
    /// First byte and length (at most `u32::MAX` of a longer pinned body).
    pub fn ptr_len(&self) -> (*const u8, u32) {
        match self {
            SendBuf::Buffer(loan) => (loan.as_ptr(), loan.len()),
            SendBuf::Pinned(bytes) => (bytes.as_ptr(), bytes.len().min(u32::MAX as usize) as u32),
        }
    }
}

/// Keeps a slab mapping alive without giving access to it: held by whoever
/// the kernel may write into the mapping for (a buffer registered with a
/// ring) beyond any one loan.
pub struct MappingGuard {
    pub(crate) _mapping: Rc<MmapMut>,
}

impl std::fmt::Debug for MappingGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MappingGuard")
    }
}
