//! keystone-ringbuf: owns request bytes.
//!
//! Job: hand every connection a fixed-capacity byte buffer carved, at start-up,
//! out of one anonymous memory mapping, and name bytes inside it with [`Span`]s
//! (`u32` offset + length) instead of pointers or `String`s.
//!
//! Owns: the slab mapping ([`split_slab`]), the per-connection [`RingBuffer`]
//! (`head`/`tail` cursors, compaction, in-place cuts, memory release on reuse)
//! and the [`Span`] type every later layer uses to point at request bytes.
//!
//! Never depends on: any other keystone crate (this is layer 1: parser, router,
//! exchange, lua, response, reactor and server all sit above it).
//!
//! # Design note
//!
//! Despite the name, a [`RingBuffer`] does not wrap around: unconsumed bytes
//! are always the contiguous range `[head, tail)`, so a request head, and every
//! span into it, is one contiguous slice that picohttpparser and Lua can read
//! without copying. Space is reclaimed in two ways:
//!
//! * [`RingBuffer::consume`] resets both cursors to 0 for free when the buffer
//!   drains (the common keep-alive case: one request, one response, empty);
//! * [`RingBuffer::compact`] moves the unconsumed tail (a pipelined request)
//!   down to offset 0. That shifts bytes, so it is only legal while no `Span`
//!   into the buffer is live; it bumps [`RingBuffer::generation`] so holders
//!   can assert they did not keep one across it.
//!
//! # Implementation notes
//!
//! All buffers share one `MmapMut` through an `Rc`; each buffer only ever
//! touches its own disjoint `[base, base + capacity)` range through a raw
//! pointer, so no two `&mut` ever alias. Nothing here is `Send`: a slab belongs
//! to the reactor thread that created it.

use std::fmt;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::rc::Rc;

use memmap2::{MmapMut, MmapOptions, UncheckedAdvice};

mod loan;

pub use loan::{BytesLoan, MappingGuard, PinnedBytes, SendBuf, SpareLoan};

/// High-water mark above which [`RingBuffer::reset_for_reuse`] hands the
/// touched pages back to the kernel.
///
/// Why 64 KiB: a typical request head is under 2 KiB and most bodies are small,
/// so buffers that stayed below 64 KiB are cheap to keep resident (16 pages)
/// and will be reused warm; a buffer that grew past it carried an upload or a
/// pipelined burst, and keeping those pages for every idle slot is how RSS
/// creeps up to `slot_count * slot_bytes`. One `madvise` per such close is
/// cheap next to receiving 64 KiB.
pub const RELEASE_THRESHOLD_BYTES: u32 = 64 * 1024;

/// The cache line: buffers start staggered by whole lines.
const CACHE_LINE_BYTES: usize = 64;

/// How many line offsets buffers start at, slot after slot, inside the first
/// page of their regions.
///
/// Why: a buffer is reset to its start whenever it drains, so every
/// request's bytes (and every response's head) sit in the buffer's first
/// lines. Regions of 64 KiB (the send buffers), or of any multiple of the
/// L2 cache's way size, put all those first lines in one cache set, so only
/// as many connections as the cache has ways (16 here) keep them cached:
/// with 256 busy connections, parsing the request and writing the status
/// line each cost 0.1–0.16 µs more per request than with 64. Starting slot
/// `i` at line `i % 64` of its region spreads the first lines over 64 sets
/// (every set of the L1 data cache, 64 of the L2's), so 64 times as many
/// stay cached. Paired A/B, 256 connections: user time −6.5 %, total CPU
/// −1.7 % (medians of 9 rounds). 64 lines are one 4 KiB page.
const CACHE_COLORS: usize = 64;

/// A byte range inside one [`RingBuffer`] region: offsets are absolute from the
/// region's base.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    pub offset: u32,
    pub len: u32,
}

// The exchange layer hands spans to LuaJIT FFI as two u32s: pin the layout.
const _: () = assert!(std::mem::size_of::<Span>() == 8);
const _: () = assert!(std::mem::align_of::<Span>() == 4);

impl Span {
    pub const EMPTY: Span = Span { offset: 0, len: 0 };

    pub const fn new(offset: u32, len: u32) -> Span {
        Span { offset, len }
    }

    /// One past the last byte. Panics (debug) if the span overflows `u32`,
    /// which no buffer can hold.
    pub const fn end(self) -> u32 {
        // Checked in release too: a wrapped end would pass every `<= tail`
        // bound and reach a neighbouring buffer.
        match self.offset.checked_add(self.len) {
            Some(end) => end,
            None => panic!("span end overflows u32"),
        }
    }

    pub const fn is_empty(self) -> bool {
        self.len == 0
    }

    /// The bytes this span names inside `bytes` (a region's `filled()`).
    ///
    /// Panics if the span is out of range: spans are produced by this process
    /// from bytes it holds, so a bad one is a programmer error, not peer input.
    pub fn slice(self, bytes: &[u8]) -> &[u8] {
        let start = self.offset as usize;
        let end = start + self.len as usize;
        assert!(
            end <= bytes.len(),
            "span {self:?} outside {} bytes",
            bytes.len()
        );
        &bytes[start..end]
    }
}

/// Errors from this crate; each carries the numbers needed to act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The slab mapping could not be created (or its size is invalid: EINVAL).
    Map {
        slot_count: u32,
        slot_bytes: u32,
        errno: i32,
    },
    /// `append` needed `needed` bytes but only `spare` were free at the tail.
    Full { needed: u32, spare: u32 },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RingError::Map {
                slot_count,
                slot_bytes,
                errno,
            } => write!(
                f,
                "cannot map {slot_count} buffers of {slot_bytes} bytes: {}",
                std::io::Error::from_raw_os_error(errno)
            ),
            RingError::Full { needed, spare } => {
                write!(f, "buffer full: needed {needed} bytes, {spare} spare")
            }
        }
    }
}

impl std::error::Error for RingError {}

/// Allocates ONE anonymous mapping (pages are faulted in lazily, zero-filled)
/// and splits it into `slot_count` disjoint [`RingBuffer`]s of `slot_bytes`
/// each. Each buffer has a page-aligned region of its own, `slot_bytes`
/// plus [`CACHE_COLORS`] lines rounded up to whole pages, and starts
/// `slot % CACHE_COLORS` lines into it (the lines before are never touched:
/// they cost no memory). Call once at start-up.
pub fn split_slab(slot_count: u32, slot_bytes: u32) -> Result<Vec<RingBuffer>, RingError> {
    let invalid = RingError::Map {
        slot_count,
        slot_bytes,
        errno: libc::EINVAL,
    };
    if slot_count == 0 || slot_bytes == 0 {
        return Err(invalid);
    }
    let page_bytes = page_bytes();
    let region_bytes = region_bytes(slot_bytes, page_bytes);
    let total_bytes = (slot_count as usize)
        .checked_mul(region_bytes)
        .ok_or(invalid)?;
    let mut mapping = MmapOptions::new()
        .len(total_bytes)
        .map_anon()
        .map_err(|error| RingError::Map {
            slot_count,
            slot_bytes,
            errno: error.raw_os_error().unwrap_or(libc::ENOMEM),
        })?;
    assert_eq!(mapping.len(), total_bytes);
    let mapping_base = mapping.as_mut_ptr();
    let mapping = Rc::new(mapping);
    let mut buffers = Vec::with_capacity(slot_count as usize);
    for slot_index in 0..slot_count as usize {
        let region_offset = slot_index * region_bytes;
        let color = (slot_index % CACHE_COLORS) * CACHE_LINE_BYTES;
        debug_assert!(color + slot_bytes as usize <= region_bytes);
        // SAFETY: region_offset + color + slot_bytes <= region_offset +
        // region_bytes <= total_bytes (checked_mul above), so the pointer and
        // the whole buffer stay inside the mapping.
        let base = unsafe { mapping_base.add(region_offset + color) };
        buffers.push(RingBuffer {
            mapping: Rc::clone(&mapping),
            base: NonNull::new(base).expect("mmap never returns null"),
            region_offset,
            page_bytes,
            capacity: slot_bytes,
            head: 0,
            tail: 0,
            high_water: 0,
            pinned: 0,
            generation: 0,
            spare_lent: false,
            unsent_lent: false,
        });
    }
    Ok(buffers)
}

/// The bytes of each buffer's region: `slot_bytes` after the most lines a
/// start is staggered by, in whole pages.
fn region_bytes(slot_bytes: u32, page_bytes: NonZeroUsize) -> usize {
    (slot_bytes as usize + (CACHE_COLORS - 1) * CACHE_LINE_BYTES).next_multiple_of(page_bytes.get())
}

fn page_bytes() -> NonZeroUsize {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    assert!(page_bytes > 0, "sysconf(_SC_PAGESIZE) failed");
    let page_bytes = NonZeroUsize::new(page_bytes as usize).expect("checked above");
    assert!(page_bytes.is_power_of_two());
    page_bytes
}

/// One connection's byte buffer: a fixed `[base, base + capacity)` region of
/// the slab. Unconsumed bytes are `[head, tail)`; `[tail, capacity)` is spare.
pub struct RingBuffer {
    /// Keeps the shared mapping alive; never dereferenced as a whole slice,
    /// so it never aliases the region `base` points at.
    mapping: Rc<MmapMut>,
    base: NonNull<u8>,
    /// Offset of this buffer's page-aligned region from the mapping's start,
    /// for page-aligned madvise; `base` is a few cache lines into it (less
    /// than a page: `base` modulo the page size) and the region,
    /// [`region_bytes`] long, is this buffer's alone.
    region_offset: usize,
    page_bytes: NonZeroUsize,
    capacity: u32,
    head: u32,
    tail: u32,
    /// How far pages may be resident: the largest `tail` since pages were
    /// last given back (lowered by the releases, not by a reset that keeps
    /// them).
    high_water: u32,
    /// `[0, pinned)` is pinned by someone else (registered with an io_uring
    /// as a fixed buffer): page releases leave those pages alone.
    pinned: u32,
    generation: u32,
    /// `[tail, capacity)` is lent out ([`SpareLoan`]): nothing may write,
    /// move or release it until it comes back.
    spare_lent: bool,
    /// `[head, tail)` as it was when lent ([`BytesLoan`]): nothing may
    /// consume, move or release it until it comes back (appends go past it).
    unsent_lent: bool,
}

impl fmt::Debug for RingBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingBuffer")
            .field("capacity", &self.capacity)
            .field("head", &self.head)
            .field("tail", &self.tail)
            .field("high_water", &self.high_water)
            .field("pinned", &self.pinned)
            .field("generation", &self.generation)
            .field("spare_lent", &self.spare_lent)
            .field("unsent_lent", &self.unsent_lent)
            .finish()
    }
}

impl RingBuffer {
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// First unconsumed byte (absolute offset).
    pub fn head(&self) -> u32 {
        self.head
    }

    /// One past the last received byte (absolute offset).
    pub fn tail(&self) -> u32 {
        self.tail
    }

    /// Unconsumed bytes: `tail - head`.
    pub fn len(&self) -> u32 {
        self.tail - self.head
    }

    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// Free bytes after the tail: `capacity - tail`. Bytes before `head` are
    /// only reclaimed by [`RingBuffer::compact`].
    pub fn spare(&self) -> u32 {
        self.capacity - self.tail
    }

    /// Start of this buffer's region; stable for the buffer's whole life, so
    /// `(base_ptr() + span.offset, span.len)` views stay valid until the bytes
    /// are moved (compact, cut, reset).
    pub fn base_ptr(&self) -> *const u8 {
        self.base.as_ptr()
    }

    /// `[0, tail)`: the bytes spans index into.
    pub fn filled(&self) -> &[u8] {
        self.region(0, self.tail)
    }

    /// `[head, tail)`: received and not yet consumed.
    pub fn unconsumed(&self) -> &[u8] {
        self.region(self.head, self.tail)
    }

    /// The bytes of `span`. Panics if the span ends past `tail` (a span that
    /// outlived a compact/reset, or was built for another buffer).
    pub fn get(&self, span: Span) -> &[u8] {
        assert!(
            span.end() <= self.tail,
            "span {span:?} past tail {}",
            self.tail
        );
        self.region(span.offset, span.end())
    }

    /// Mutable bytes of `span`, for in-place chunked decoding.
    pub fn get_mut(&mut self, span: Span) -> &mut [u8] {
        assert!(
            span.end() <= self.tail,
            "span {span:?} past tail {}",
            self.tail
        );
        self.region_mut(span.offset, span.end())
    }

    /// `[tail, capacity)`: where the next received bytes go; then [`commit`](Self::commit).
    pub fn spare_mut(&mut self) -> &mut [u8] {
        assert!(!self.spare_lent, "spare bytes are lent out");
        self.region_mut(self.tail, self.capacity)
    }

    /// Lends the spare range `[tail, capacity)` for one receive (or file
    /// read). Until [`return_spare`](Self::return_spare), nothing writes,
    /// moves or releases those bytes. Panics if they are lent already or
    /// there are none (a full buffer is the caller's to handle first).
    pub fn lend_spare(&mut self) -> SpareLoan {
        assert!(!self.spare_lent, "spare bytes lent twice");
        assert!(self.spare() > 0, "no spare bytes to lend");
        self.spare_lent = true;
        SpareLoan {
            _mapping: Rc::clone(&self.mapping),
            region: self.base,
            offset: self.tail,
            len: self.spare(),
            skipped: 0,
        }
    }

    /// Lends at most `max` bytes of the spare range (`[tail, tail + n)`,
    /// `n = min(max, spare)`): a receive bounded by a window smaller than
    /// the buffer. Returned with [`return_spare`](Self::return_spare).
    pub fn lend_spare_up_to(&mut self, max: u32) -> SpareLoan {
        assert!(max > 0, "a loan of nothing");
        let mut loan = self.lend_spare();
        loan.len = loan.len.min(max);
        loan
    }

    /// Takes a [`SpareLoan`] back: its first `received` bytes were written
    /// and become unconsumed bytes (`tail += received`).
    pub fn return_spare(&mut self, loan: SpareLoan, received: u32) {
        assert!(self.spare_lent, "no spare bytes are lent");
        assert!(
            loan.region == self.base && loan.offset == self.tail,
            "a loan returned to the wrong buffer"
        );
        assert_eq!(loan.skipped, 0, "a loan returned while advanced");
        assert!(
            received <= loan.len,
            "received {received} > lent {}",
            loan.len
        );
        self.spare_lent = false;
        self.commit(received);
    }

    /// Lends the unconsumed bytes `[head, tail)` for one send. Appends may
    /// go on meanwhile (past the tail); consuming, moving or releasing the
    /// lent bytes waits for [`return_unsent`](Self::return_unsent).
    pub fn lend_unsent(&mut self) -> BytesLoan {
        assert!(!self.unsent_lent, "unsent bytes lent twice");
        assert!(!self.is_empty(), "no bytes to lend");
        self.unsent_lent = true;
        BytesLoan {
            _mapping: Rc::clone(&self.mapping),
            region: self.base,
            offset: self.head,
            len: self.len(),
        }
    }

    /// Takes a [`BytesLoan`] back: its first `sent` bytes were sent and are
    /// consumed.
    pub fn return_unsent(&mut self, loan: BytesLoan, sent: u32) {
        assert!(self.unsent_lent, "no unsent bytes are lent");
        assert!(
            loan.region == self.base && loan.offset == self.head,
            "a loan returned to the wrong buffer"
        );
        assert!(sent <= loan.len, "sent {sent} > lent {}", loan.len);
        self.unsent_lent = false;
        self.consume_unchecked(sent);
    }

    /// Lends `[head + skip, tail)` for one send and keeps the `skip` bytes
    /// before it: bytes already sent that stay until their answer (a
    /// request kept so it can be sent again elsewhere). Nothing is consumed
    /// when the loan comes back ([`return_kept`](Self::return_kept)).
    pub fn lend_unsent_after(&mut self, skip: u32) -> BytesLoan {
        assert!(!self.unsent_lent, "unsent bytes lent twice");
        assert!(skip < self.len(), "no bytes past {skip} to lend");
        self.unsent_lent = true;
        BytesLoan {
            _mapping: Rc::clone(&self.mapping),
            region: self.base,
            offset: self.head + skip,
            len: self.len() - skip,
        }
    }

    /// Takes back a loan of [`lend_unsent_after`](Self::lend_unsent_after);
    /// the bytes stay (the caller counts what was sent).
    pub fn return_kept(&mut self, loan: BytesLoan) {
        assert!(self.unsent_lent, "no unsent bytes are lent");
        assert!(
            loan.region == self.base && loan.offset >= self.head && loan.offset <= self.tail,
            "a loan returned to the wrong buffer"
        );
        self.unsent_lent = false;
    }

    /// Whether a [`SpareLoan`] of this buffer is out.
    pub fn spare_lent(&self) -> bool {
        self.spare_lent
    }

    /// Whether a [`BytesLoan`] of this buffer is out.
    pub fn unsent_lent(&self) -> bool {
        self.unsent_lent
    }

    /// Keeps this buffer's slab mapped for as long as the guard lives (for
    /// a registration with the kernel that outlives single operations).
    pub fn mapping_guard(&self) -> MappingGuard {
        MappingGuard {
            _mapping: Rc::clone(&self.mapping),
        }
    }

    fn assert_nothing_lent(&self, what: &str) {
        assert!(
            !self.spare_lent && !self.unsent_lent,
            "{what} while bytes are lent out"
        );
    }

    /// Pins the region's first `bytes` (clamped to the capacity) for a
    /// registration with the kernel, and returns the range to register.
    /// Until [`unpin`](Self::unpin), [`reset_for_reuse`](Self::reset_for_reuse)
    /// and [`release_idle`](Self::release_idle) never give those pages back
    /// (the kernel would keep writing to the old pages while reads saw
    /// fresh zero pages).
    pub fn pin_prefix(&mut self, bytes: u32) -> (*mut u8, u32) {
        self.pinned = bytes.min(self.capacity);
        (self.base.as_ptr(), self.pinned)
    }

    /// Ends [`pin_prefix`](Self::pin_prefix): call once the kernel no longer
    /// holds the pages (the registration was emptied). The pinned pages were
    /// all faulted in, so the next release covers them whatever was written.
    pub fn unpin(&mut self) {
        self.high_water = self.high_water.max(self.pinned);
        self.pinned = 0;
    }

    /// How many leading bytes are pinned (0: none).
    pub fn pinned(&self) -> u32 {
        self.pinned
    }

    /// Marks `n` bytes written into the spare range as received: `tail += n`.
    pub fn commit(&mut self, n: u32) {
        assert!(
            !self.spare_lent,
            "commit while the spare bytes are lent out"
        );
        assert!(n <= self.spare(), "commit {n} > spare {}", self.spare());
        self.tail += n;
        self.high_water = self.high_water.max(self.tail);
        debug_assert!(self.tail <= self.capacity);
    }

    /// Copies `bytes` at the tail (outgoing buffers). All or nothing: `Full`
    /// leaves the buffer untouched.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), RingError> {
        let spare = self.spare();
        if bytes.len() > spare as usize {
            let needed = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            return Err(RingError::Full { needed, spare });
        }
        let n = bytes.len() as u32;
        self.spare_mut()[..bytes.len()].copy_from_slice(bytes);
        self.commit(n);
        Ok(())
    }

    /// Marks `n` unconsumed bytes as done: `head += n`. When that drains the
    /// buffer both cursors go back to 0 without copying, which ends every
    /// span into the buffer (they would fail `get`'s tail check).
    pub fn consume(&mut self, n: u32) {
        assert!(!self.unsent_lent, "consume while the bytes are lent out");
        self.consume_unchecked(n);
    }

    fn consume_unchecked(&mut self, n: u32) {
        assert!(n <= self.len(), "consume {n} > len {}", self.len());
        self.head += n;
        // A lent spare range stays where it was lent: no rewind under it.
        if self.head == self.tail && !self.spare_lent {
            self.head = 0;
            self.tail = 0;
        }
        debug_assert!(self.head <= self.tail);
    }

    /// Moves `[head, tail)` down to offset 0 and returns the shift (the old
    /// `head`); bumps the generation.
    ///
    /// RULE: only call when no [`Span`] into this buffer is live, i.e. between
    /// requests: every span would point `shift` bytes too far afterwards.
    pub fn compact(&mut self) -> u32 {
        self.assert_nothing_lent("compact");
        let shift = self.head;
        if shift > 0 {
            let len = self.len() as usize;
            // SAFETY: source [head, tail) and destination [0, len) both lie in
            // this buffer's region; ptr::copy handles the overlap (memmove).
            unsafe {
                let base = self.base.as_ptr();
                std::ptr::copy(base.add(shift as usize), base, len);
            }
            self.tail -= shift;
            self.head = 0;
        }
        self.generation = self.generation.wrapping_add(1);
        debug_assert!(self.head == 0);
        shift
    }

    /// Bumps on `compact` and on `reset_for_reuse`: a span holder can record
    /// it and assert it unchanged before resolving the span.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Removes `len` bytes at absolute offset `at`: `[at + len, tail)` moves
    /// down to `at` and `tail -= len`. Used by in-place chunked decoding to
    /// drop framing bytes. Spans past `at` are shifted by `len` afterwards.
    pub fn cut(&mut self, at: u32, len: u32) {
        self.assert_nothing_lent("cut");
        assert!(at >= self.head, "cut at {at} before head {}", self.head);
        assert!(
            at.checked_add(len).is_some_and(|end| end <= self.tail),
            "cut past tail"
        );
        let moved = (self.tail - at - len) as usize;
        if len > 0 && moved > 0 {
            // SAFETY: [at + len, tail) and [at, at + moved) lie in this region;
            // ptr::copy handles the overlap.
            unsafe {
                let base = self.base.as_ptr();
                std::ptr::copy(base.add((at + len) as usize), base.add(at as usize), moved);
            }
        }
        self.tail -= len;
        debug_assert!(self.head <= self.tail);
    }

    /// Connection closed: `head = tail = 0`, generation bumped. If the buffer
    /// was filled past [`RELEASE_THRESHOLD_BYTES`], the touched whole pages
    /// after the first (and after a pinned prefix) are returned to the kernel
    /// (`MADV_DONTNEED`), so they read back as zeros and cost no RSS until
    /// touched again. Pages kept stay counted in the high-water mark, so a
    /// later [`release_idle`](Self::release_idle) gives them back too.
    pub fn reset_for_reuse(&mut self) {
        self.assert_nothing_lent("reset_for_reuse");
        if self.high_water > RELEASE_THRESHOLD_BYTES {
            self.release_pages();
            let kept = self.page_bytes.get().max(self.pinned as usize) as u32;
            self.high_water = self.high_water.min(kept);
        }
        self.head = 0;
        self.tail = 0;
        self.generation = self.generation.wrapping_add(1);
    }

    /// Whether pages may be resident: bytes were written since the buffer
    /// was last released with [`release_idle`](Self::release_idle).
    pub fn touched(&self) -> bool {
        self.high_water > 0
    }

    /// An idle connection's buffer: empty, it gives every touched page back
    /// to the kernel (the first one too, unless pinned), so thousands of idle
    /// keep-alive connections cost no resident memory. One `madvise`; the
    /// caller does it once per idle period, not per request.
    pub fn release_idle(&mut self) {
        self.assert_nothing_lent("release_idle");
        assert!(self.is_empty(), "release_idle on a buffer holding bytes");
        if self.high_water > 0 {
            self.release_pages_from(0);
        }
        self.head = 0;
        self.tail = 0;
        self.high_water = 0;
    }

    /// madvise(DONTNEED) over the whole pages after the buffer's first page
    /// of bytes up to the page holding `high_water`.
    fn release_pages(&mut self) {
        self.release_pages_from(self.page_bytes.get());
    }

    fn release_pages_from(&mut self, keep_bytes: usize) {
        let keep_bytes = keep_bytes.max(self.pinned as usize);
        let page_bytes = self.page_bytes.get();
        let region_start = self.region_offset;
        // The mapping and every region start on a page boundary.
        let base = region_start + (self.base.as_ptr() as usize & (page_bytes - 1));
        // Before `base` the region holds only unused colour lines: keeping
        // nothing gives the first page back too.
        let start = if keep_bytes == 0 {
            region_start
        } else {
            (base + keep_bytes).next_multiple_of(page_bytes)
        };
        // Within the region: base + capacity fits it, and it ends on a page.
        let end = (base + self.high_water as usize).next_multiple_of(page_bytes);
        if end <= start {
            return;
        }
        debug_assert!(start >= region_start && start.is_multiple_of(page_bytes));
        debug_assert!(end <= region_start + region_bytes(self.capacity, self.page_bytes));
        // SAFETY: [start, end) is page-aligned and lies wholly inside this
        // buffer's region, which only this buffer accesses; we hold &mut self,
        // so no slice into it is live. DONTNEED on private anonymous memory
        // just makes those bytes read as zero, which nothing relies on
        // (they are past tail after the reset below).
        let result = unsafe {
            self.mapping
                .unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
        };
        // Failure only costs RSS; the kernel rejects DONTNEED solely for bad
        // ranges, which the asserts above rule out.
        debug_assert!(result.is_ok(), "madvise failed: {result:?}");
    }

    fn region(&self, start: u32, end: u32) -> &[u8] {
        // Real asserts: the unsafe block below relies on them.
        assert!(start <= end);
        assert!(end <= self.capacity);
        // SAFETY: [start, end) is inside this buffer's region of the live
        // mapping (kept alive by self.mapping); anonymous memory is always
        // initialized (zero-filled); only this buffer touches the region and
        // mutation needs &mut self, so the borrow cannot alias a write.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(start as usize),
                (end - start) as usize,
            )
        }
    }

    fn region_mut(&mut self, start: u32, end: u32) -> &mut [u8] {
        assert!(start <= end);
        assert!(end <= self.capacity);
        // SAFETY: as in `region`, and &mut self makes this the only borrow.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.as_ptr().add(start as usize),
                (end - start) as usize,
            )
        }
    }
}

#[cfg(test)]
mod tests;
