//! keystone-reactor — executes: the io_uring proactor each worker drives (the
//! part libxev plays in the manifesto).
//!
//! Owns: one io_uring instance, submission (operations are *described* and
//! queued, then submitted in one batch per loop turn), and completion
//! decoding. Every operation carries a [`Token`] — connection slot,
//! generation and operation kind packed in the 64-bit `user_data` — so a
//! completion finds its state without any per-operation allocation, and a
//! completion for a slot that has since been reused is recognisably stale.
//!
//! Callbacks hold no logic: [`Reactor::pump`] copies completions into a
//! caller array and returns; the caller's state machine decides.
//!
//! Never depends on: any keystone crate. The reactor knows no HTTP.
//!
//! # Buffer lifetimes
//! The kernel reads or writes a buffer until the operation's completion is
//! reaped; types cannot see that, so the operations taking pointers are
//! `unsafe fn`s whose contract is exactly that (as in tokio-rs/io-uring's
//! `SubmissionQueue::push`).
//!
//! Registered (fixed) buffers outlive single operations: the kernel pins
//! their pages from [`Reactor::register_buffer`] until
//! [`Reactor::unregister_buffer`], and the caller must not give those pages
//! back in between — the same rule, stretched over the registration.

use std::io;
use std::os::fd::RawFd;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// Interval type for [`Reactor::tick`].
pub use io_uring::types::Timespec;

/// Completions copied out per [`Reactor::pump`]; more wait in the CQ ring
/// for the next call. 256 keeps the caller's array at 4 KiB.
pub const COMPLETIONS_PER_PUMP: usize = 256;

/// Most entries a ring's registered-buffer table holds: the kernel's
/// `IORING_MAX_REG_BUFFERS` (`1 << 14`); larger tables are refused with
/// `EINVAL`, and `buf_index` is 16 bits anyway.
pub const REGISTERED_BUFFERS_MAX: u32 = 1 << 14;

/// The operation a completion belongs to. Opaque to the reactor except for
/// being carried in the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token(u64);

impl Token {
    /// Packs `slot` (32 bits), `generation` (24 bits) and `op` (8 bits).
    pub const fn new(slot: u32, generation: u32, op: u8) -> Token {
        Token(((slot as u64) << 32) | (((generation & 0x00ff_ffff) as u64) << 8) | op as u64)
    }

    /// The slot index.
    pub const fn slot(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The slot generation (24 bits).
    pub const fn generation(self) -> u32 {
        ((self.0 >> 8) & 0x00ff_ffff) as u32
    }

    /// The operation kind.
    pub const fn op(self) -> u8 {
        self.0 as u8
    }

    /// The raw `user_data`.
    pub const fn raw(self) -> u64 {
        self.0
    }
}

/// Generations wrap within 24 bits.
pub const GENERATION_MASK: u32 = 0x00ff_ffff;

/// One completion, copied out of the CQ ring.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// The token the operation was submitted with.
    pub token: Token,
    /// The result: bytes, a file descriptor, or `-errno`.
    pub result: i32,
    /// CQE flags.
    pub flags: u32,
}

impl Completion {
    /// An empty completion, for initialising arrays.
    pub const EMPTY: Completion = Completion {
        token: Token(0),
        result: 0,
        flags: 0,
    };

    /// Whether a multishot operation stays armed after this completion.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// A worker's io_uring.
pub struct Reactor {
    ring: IoUring,
}

/// `MSG_NOSIGNAL`: a peer that vanished must give `-EPIPE`, never SIGPIPE.
const SEND_FLAGS: i32 = libc::MSG_NOSIGNAL;

impl Reactor {
    /// A ring with `entries` submission slots (completion ring twice that,
    /// so bursts of multishot completions do not overflow it). Uses
    /// single-issuer and cooperative task running where the kernel has
    /// them, and plain setup where it does not.
    pub fn new(entries: u32) -> io::Result<Reactor> {
        Reactor::with_sqpoll(entries, None)
    }

    /// Like [`Reactor::new`]; with `sqpoll_idle_ms`, a kernel thread polls
    /// the submission queue (`IORING_SETUP_SQPOLL`), so submitting costs no
    /// syscall while it is awake; it sleeps after that many idle
    /// milliseconds. It costs a kernel thread per worker, busy while awake.
    pub fn with_sqpoll(entries: u32, sqpoll_idle_ms: Option<u32>) -> io::Result<Reactor> {
        assert!(
            entries.is_power_of_two(),
            "ring entries must be a power of two"
        );
        if let Some(idle) = sqpoll_idle_ms {
            let ring = IoUring::builder()
                .setup_sqpoll(idle)
                .setup_cqsize(entries * 2)
                .build(entries)?;
            return Ok(Reactor { ring });
        }
        let tuned = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_cqsize(entries * 2)
            .build(entries);
        let ring = match tuned {
            Ok(ring) => ring,
            Err(_) => IoUring::builder()
                .setup_cqsize(entries * 2)
                .build(entries)?,
        };
        Ok(Reactor { ring })
    }

    fn push(&mut self, entry: squeue::Entry) {
        // SAFETY: callers of the public operations uphold the buffer
        // contract of each entry (see the `unsafe fn`s below); entries built
        // by the safe functions reference no user memory.
        if unsafe { self.ring.submission().push(&entry) }.is_ok() {
            return;
        }
        // Full submission queue: flush it to the kernel and retry once.
        // The kernel consumes every SQE on submit, so the retry must fit.
        self.ring
            .submit()
            .expect("io_uring submit failed while flushing a full queue");
        // SAFETY: as above.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        assert!(pushed.is_ok(), "submission queue still full after submit");
    }

    /// Multishot accept on a listening socket: one completion per
    /// connection while `Completion::more()` holds.
    pub fn accept_multishot(&mut self, listener: RawFd, token: Token) {
        let entry = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(token.raw());
        self.push(entry);
    }

    /// Receives into `buf[..len]`.
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid and unaccessed by anything else until
    /// this operation's completion has been reaped.
    pub unsafe fn recv(&mut self, fd: RawFd, buf: *mut u8, len: u32, token: Token) {
        let entry = opcode::Recv::new(types::Fd(fd), buf, len)
            .build()
            .user_data(token.raw());
        self.push(entry);
    }

    /// Creates an empty (sparse) registered-buffer table of `entries`
    /// slots (`IORING_REGISTER_BUFFERS2` with `IORING_RSRC_REGISTER_SPARSE`):
    /// nothing is pinned until [`Reactor::register_buffer`] fills a slot.
    /// Once per ring.
    pub fn register_buffer_table(&mut self, entries: u32) -> io::Result<()> {
        if entries == 0 || entries > REGISTERED_BUFFERS_MAX {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.ring.submitter().register_buffers_sparse(entries)
    }

    /// Registers `buf[..len]` as fixed buffer `index` (replacing what the
    /// slot held): the kernel pins those pages (faulting them in) so
    /// [`Reactor::read_fixed`] needs no per-I/O page lookup. One
    /// `io_uring_register` syscall.
    ///
    /// # Safety
    /// `buf..buf+len` must stay mapped, and its pages must not be given back
    /// (`MADV_DONTNEED`, `munmap` of a live range) until
    /// [`Reactor::unregister_buffer`] has emptied the slot or the ring is
    /// dropped: the kernel keeps writing to the pinned pages, so a page
    /// replaced behind its back would silently lose received bytes.
    pub unsafe fn register_buffer(
        &mut self,
        index: u16,
        buf: *mut u8,
        len: usize,
    ) -> io::Result<()> {
        let iov = libc::iovec {
            iov_base: buf.cast(),
            iov_len: len,
        };
        // SAFETY: the caller keeps the range valid while registered (above).
        unsafe {
            self.ring
                .submitter()
                .register_buffers_update(u32::from(index), &[iov], None)
        }
    }

    /// Empties fixed-buffer slot `index`: the kernel unpins its pages (once
    /// no operation in flight still uses them), after which the memory may
    /// be given back. One `io_uring_register` syscall.
    pub fn unregister_buffer(&mut self, index: u16) -> io::Result<()> {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: a null, zero-length entry references no memory; it is the
        // kernel's way of emptying a sparse slot.
        unsafe {
            self.ring
                .submitter()
                .register_buffers_update(u32::from(index), &[empty], None)
        }
    }

    /// Receives into `buf[..len]`, which must lie inside fixed buffer
    /// `index` (`IORING_OP_READ_FIXED` on the socket: a `recv` without
    /// flags into pre-pinned pages). A range outside the registered buffer
    /// completes with `-EFAULT`.
    ///
    /// # Safety
    /// Same contract as [`Reactor::recv`], and slot `index` must keep this
    /// range registered until the completion is reaped.
    pub unsafe fn read_fixed(
        &mut self,
        fd: RawFd,
        buf: *mut u8,
        len: u32,
        index: u16,
        token: Token,
    ) {
        // Offset 0: sockets are not seekable and refuse any other position.
        let entry = opcode::ReadFixed::new(types::Fd(fd), buf, len, index)
            .offset(0)
            .build()
            .user_data(token.raw());
        self.push(entry);
    }

    /// Sends `buf[..len]`.
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid and unmodified until this operation's
    /// completion has been reaped.
    pub unsafe fn send(&mut self, fd: RawFd, buf: *const u8, len: u32, token: Token) {
        let entry = opcode::Send::new(types::Fd(fd), buf, len)
            .flags(SEND_FLAGS)
            .build()
            .user_data(token.raw());
        self.push(entry);
    }

    /// Reads into `buf[..len]` (used for eventfd wake-ups).
    ///
    /// # Safety
    /// Same contract as [`Reactor::recv`].
    pub unsafe fn read(&mut self, fd: RawFd, buf: *mut u8, len: u32, token: Token) {
        let entry = opcode::Read::new(types::Fd(fd), buf, len)
            .offset(u64::MAX)
            .build()
            .user_data(token.raw());
        self.push(entry);
    }

    /// Writes `buf[..len]` at the file's current position (appends to an
    /// `O_APPEND` file).
    ///
    /// # Safety
    /// Same contract as [`Reactor::send`].
    pub unsafe fn write(&mut self, fd: RawFd, buf: *const u8, len: u32, token: Token) {
        let entry = opcode::Write::new(types::Fd(fd), buf, len)
            .offset(u64::MAX)
            .build()
            .user_data(token.raw());
        self.push(entry);
    }

    /// A timeout that completes every `interval` until cancelled.
    ///
    /// # Safety
    /// `interval` must stay valid until the timeout's final completion.
    pub unsafe fn tick(&mut self, interval: *const types::Timespec, token: Token) {
        let entry = opcode::Timeout::new(interval)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build()
            .user_data(token.raw());
        self.push(entry);
    }

    /// Moves `len` bytes from `fd_in` (at `offset_in`, or the current
    /// position when -1) to `fd_out` without copying them through user
    /// space; one side must be a pipe.
    pub fn splice(&mut self, fd_in: RawFd, offset_in: i64, fd_out: RawFd, len: u32, token: Token) {
        let entry = opcode::Splice::new(types::Fd(fd_in), offset_in, types::Fd(fd_out), -1, len)
            .build()
            .user_data(token.raw());
        self.push(entry);
    }

    /// Half-closes or closes a socket's directions (`libc::SHUT_*`).
    pub fn shutdown(&mut self, fd: RawFd, how: i32, token: Token) {
        let entry = opcode::Shutdown::new(types::Fd(fd), how)
            .build()
            .user_data(token.raw());
        self.push(entry);
    }

    /// Closes a file descriptor.
    pub fn close(&mut self, fd: RawFd, token: Token) {
        let entry = opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(token.raw());
        self.push(entry);
    }

    /// Cancels the operation submitted with `target`.
    pub fn cancel(&mut self, target: Token, token: Token) {
        let entry = opcode::AsyncCancel::new(target.raw())
            .build()
            .user_data(token.raw());
        self.push(entry);
    }

    /// Submits everything queued, waits for at least one completion, and
    /// copies up to `out.len()` completions into `out`; returns how many.
    /// One `io_uring_enter` per call when there is anything to wait for.
    pub fn pump(&mut self, out: &mut [Completion]) -> io::Result<usize> {
        if self.ring.completion().is_empty() {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {}
                Err(err) => return Err(err),
            }
        } else if !self.ring.submission().is_empty() {
            self.ring.submit()?;
        }
        let mut count = 0;
        for cqe in self.ring.completion().take(out.len()) {
            out[count] = Completion {
                token: Token(cqe.user_data()),
                result: cqe.result(),
                flags: cqe.flags(),
            };
            count += 1;
        }
        Ok(count)
    }

    /// Submits what is queued without waiting (used before the loop exits).
    pub fn flush(&mut self) -> io::Result<()> {
        self.ring.submit().map(|_| ())
    }
}

#[cfg(test)]
mod tests;
