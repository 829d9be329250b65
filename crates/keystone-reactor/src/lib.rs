//! keystone-reactor — executes: the io_uring proactor each worker drives (the
//! part libxev plays in the manifesto).
//!
//! Owns: one io_uring instance, the table of operations in flight, and
//! completion decoding. An operation is a value: submitting one moves into
//! the reactor whatever the kernel will touch (a [`SpareLoan`] to receive
//! into, a [`BytesLoan`] or [`PinnedBytes`] to send, an access-log batch),
//! and its final completion hands the same value back ([`Done::op`]), as
//! monoio and TigerBeetle do. Nothing the kernel may still read or write can
//! be dropped or reused meanwhile, so submitting is safe. The reactor also
//! keeps the count of operations in flight per owner (a connection slot, or
//! [`WORKER`]): a slot is reusable once [`Reactor::in_flight`] says 0.
//!
//! Callbacks hold no logic: [`Reactor::pump`] submits what is queued, waits,
//! and moves completions into a caller-owned vector; the caller's state
//! machines decide.
//!
//! Never depends on: keystone-parser, keystone-router, keystone-exchange,
//! keystone-lua, keystone-response, keystone-files, keystone-conn, keystone-app,
//! keystone-ebpf, keystone-ops, keystone-upstream, keystone-tls, keystone-spec, keystone-server. The reactor knows no HTTP;
//! it sees keystone-ringbuf only for the loan types it carries.
//!
//! # Lifetimes the types do not show
//! * A buffer registered with the ring ([`Reactor::register_window`]) is
//!   pinned in its [`RingBuffer`] (so its pages are never given back) and
//!   its slab mapping is kept alive until [`Reactor::unregister_window`].
//! * Dropping the reactor cancels every operation and waits (bounded) for
//!   their completions before the ring and the loans go, so the kernel never
//!   writes into memory that is gone.
//! * `OPENAT2`'s path and the `statx` buffer live in the operation's entry,
//!   which never moves (see `slab.rs`).

mod addr;
mod pipe;
mod slab;
mod timers;
mod writer;

#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
pub use keystone_ringbuf::{BytesLoan, PinnedBytes, SendBuf};
use keystone_ringbuf::{MappingGuard, RingBuffer, SpareLoan};

pub use crate::pipe::sized_pipe;
pub use crate::timers::{TimerWheel, TICK};
pub use crate::writer::BatchWriter;

use crate::addr::PeerStorage;
use crate::slab::Slab;

/// Completions moved out per [`Reactor::pump`]; more wait in the CQ ring
/// for the next call.
pub const COMPLETIONS_PER_PUMP: usize = 256;

/// Most entries a ring's registered-buffer table holds: the kernel's
/// `IORING_MAX_REG_BUFFERS` (`1 << 14`); larger tables are refused with
/// `EINVAL`, and `buf_index` is 16 bits anyway.
pub const REGISTERED_BUFFERS_MAX: u32 = 1 << 14;

/// Longest path [`Reactor::open_beneath`] takes (PATH_MAX, NUL excluded).
pub const PATH_BYTES_MAX: usize = 4096;

/// How long dropping a reactor waits for cancelled operations to complete.
/// Cancellation of socket and file operations completes in microseconds;
/// the bound only guards against a kernel that never answers.
const DROP_WAIT: Duration = Duration::from_secs(2);

/// Whom an operation belongs to: a connection slot index, or [`WORKER`].
pub type Owner = u32;

/// The owner of operations that belong to the worker itself (accepts, its
/// wake-up read, its tick, log writes).
pub const WORKER: Owner = u32::MAX;

/// Names one submitted operation (to cancel it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpId {
    index: u32,
    seq: u32,
}

impl OpId {
    fn user_data(self) -> u64 {
        (u64::from(self.seq) << 32) | u64::from(self.index)
    }

    fn from_user_data(data: u64) -> OpId {
        OpId {
            index: data as u32,
            seq: (data >> 32) as u32,
        }
    }
}

/// What `statx` said about a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    /// Bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch (0 before it).
    pub mtime_secs: u64,
    /// `st_mode`'s file type bits (`libc::S_IFMT` mask).
    pub file_type: u32,
}

/// An operation as it comes back with its completion: whatever it carried
/// in, and what the kernel filled for it.
#[derive(Debug)]
pub enum Op {
    /// A connection accepted (the result is its descriptor) and its peer.
    Accept {
        /// The peer's address (`None` if the kernel gave none we know).
        peer: Option<SocketAddr>,
    },
    /// A receive: `buf` got `result` bytes at its start.
    Recv {
        /// The loan received into.
        buf: SpareLoan,
        /// Whether it was a `READ_FIXED` into a registered window.
        fixed: bool,
    },
    /// A send of `buf`'s first `result` bytes.
    Send {
        /// What was sent from.
        buf: SendBuf,
    },
    /// A file read into `buf`.
    ReadAt {
        /// The loan read into.
        buf: SpareLoan,
    },
    /// A write of `batch` (an access-log batch).
    Write {
        /// The bytes written, handed back to be refilled.
        batch: Vec<u8>,
    },
    /// An 8-byte counter read (an eventfd).
    ReadCounter {
        /// The counter's value (valid when the result is 8).
        value: u64,
    },
    /// A splice (file → pipe or pipe → socket).
    Splice,
    /// A new TCP socket (the result is the descriptor).
    Socket,
    /// A connect of a socket to a peer.
    Connect,
    /// `openat2` beneath a directory (the result is the descriptor).
    OpenBeneath,
    /// `openat2` relative to `dir`, following symlinks anywhere (the
    /// caller confines the result).
    OpenFollowing {
        /// The directory the path is relative to.
        dir: RawFd,
    },
    /// `statx` of a descriptor.
    Statx {
        /// Filled when the result is 0.
        stat: Option<FileStat>,
    },
    /// A socket shut down.
    Shutdown,
    /// A socket option set (`IORING_OP_URING_CMD`'s `SETSOCKOPT`): the
    /// result is 0 or `-errno`.
    SetSockOpt,
    /// A descriptor closed.
    Close,
    /// A cancellation request (its target completes on its own).
    Cancel,
    /// One expiry of a repeating timeout.
    Tick,
}

/// What the kernel may touch besides the operation's loans, kept in the
/// operation's entry until its final completion.
///
/// Every operation in flight has an entry holding one — an idle keep-alive
/// connection's receive included, so 10,000 of them for 10k idle
/// connections — while most carry nothing: what is larger than a pointer
/// or two is boxed (and the boxes pooled), keeping `Storage` at 24 bytes.
enum Storage {
    None,
    Peer(Box<PeerStorage>),
    Path(Box<PathStorage>),
    Stat(Box<libc::statx>),
    Counter([u8; 8]),
    Interval(types::Timespec),
    /// A socket option's value, until the kernel has read it.
    SockOpt(Box<[u8; SOCKOPT_BYTES_MAX]>),
}

const _: () = assert!(std::mem::size_of::<Storage>() <= 24);

/// An open's path (NUL-terminated) and how to resolve it.
struct PathStorage {
    path: [u8; PATH_BYTES_MAX + 1],
    how: types::OpenHow,
}

/// The longest socket option value [`Reactor::setsockopt`] carries (kernel
/// TLS's largest `tls12_crypto_info_*` is 56 bytes).
pub const SOCKOPT_BYTES_MAX: usize = 64;

/// One completion: the owner, the result, and — on the operation's final
/// completion — the operation handed back.
#[derive(Debug)]
pub struct Done {
    /// Whom the operation belongs to.
    pub owner: Owner,
    /// Which operation.
    pub id: OpId,
    /// Bytes, a descriptor, 0, or `-errno`.
    pub result: i32,
    /// The operation with what it carried; for a repeating operation that
    /// stays armed (`more`), a copy of its unit kind (only [`Op::Tick`]).
    pub op: Op,
    /// The operation stays armed and will complete again.
    pub more: bool,
}

/// A worker's io_uring.
pub struct Reactor {
    ring: IoUring,
    ops: Slab,
    /// Operations in flight per owner slot; the last entry is [`WORKER`]'s.
    in_flight: Box<[u32]>,
    // Pools of what accepts, opens, stats and socket options use: boxed so each
    // keeps its address while the kernel holds it (the entry owns the box
    // in flight) and is reused afterwards — allocated only when more are in
    // flight than ever before.
    #[expect(clippy::vec_box, reason = "the kernel writes through stable addresses")]
    peers: Vec<Box<PeerStorage>>,
    paths: Vec<Box<PathStorage>>,
    #[expect(clippy::vec_box, reason = "the kernel writes through stable addresses")]
    stats: Vec<Box<libc::statx>>,
    #[expect(clippy::vec_box, reason = "the kernel reads through stable addresses")]
    sockopts: Vec<Box<[u8; SOCKOPT_BYTES_MAX]>>,
    /// Registered windows: the region each holds and its mapping's guard.
    windows: Box<[Option<(*const u8, MappingGuard)>]>,
}

/// `MSG_NOSIGNAL`: a peer that vanished must give `-EPIPE`, never SIGPIPE.
const SEND_FLAGS: i32 = libc::MSG_NOSIGNAL;

/// The kernel's largest completion ring (`IORING_MAX_CQ_ENTRIES`).
pub const COMPLETION_ENTRIES_MAX: u32 = 65_536;

/// Completion-ring entries for a ring of `entries` submission slots serving
/// `owners`: room for two completions per owner (a connection's receive and
/// send can finish in the same turn), at least twice the submission ring,
/// at most the kernel's limit. A ring sized by submissions alone overflows
/// once a few thousand connections complete together: the kernel then keeps
/// completions on a slow overflow list and ends multishot operations (the
/// worker's tick among them) it cannot post for.
pub fn completion_entries(entries: u32, owners: u32) -> u32 {
    let wanted = u64::from(owners)
        .saturating_mul(2)
        .max(u64::from(entries) * 2);
    let wanted = wanted.min(u64::from(COMPLETION_ENTRIES_MAX)) as u32;
    wanted.next_power_of_two().min(COMPLETION_ENTRIES_MAX)
}

impl Reactor {
    /// A ring with `entries` submission slots (and a completion ring sized
    /// by [`completion_entries`], so bursts do not overflow it) for owners
    /// `0..owners` plus
    /// [`WORKER`]. Uses single-issuer and cooperative task running where the
    /// kernel has them, and plain setup where it does not.
    pub fn new(entries: u32, owners: u32) -> io::Result<Reactor> {
        Reactor::with_sqpoll(entries, owners, None)
    }

    /// Like [`Reactor::new`]; with `sqpoll_idle_ms`, a kernel thread polls
    /// the submission queue (`IORING_SETUP_SQPOLL`), so submitting costs no
    /// syscall while it is awake; it sleeps after that many idle
    /// milliseconds. It costs a kernel thread per worker, busy while awake.
    pub fn with_sqpoll(
        entries: u32,
        owners: u32,
        sqpoll_idle_ms: Option<u32>,
    ) -> io::Result<Reactor> {
        assert!(
            entries.is_power_of_two(),
            "ring entries must be a power of two"
        );
        assert!(owners < WORKER, "owner indexes must stay below WORKER");
        let cq_entries = completion_entries(entries, owners);
        let ring = match sqpoll_idle_ms {
            Some(idle) => IoUring::builder()
                .setup_sqpoll(idle)
                .setup_cqsize(cq_entries)
                .build(entries)?,
            None => match IoUring::builder()
                .setup_single_issuer()
                .setup_coop_taskrun()
                .setup_cqsize(cq_entries)
                .build(entries)
            {
                Ok(ring) => ring,
                Err(_) => IoUring::builder().setup_cqsize(cq_entries).build(entries)?,
            },
        };
        Ok(Reactor {
            ring,
            ops: Slab::new(),
            in_flight: vec![0; owners as usize + 1].into_boxed_slice(),
            peers: Vec::new(),
            paths: Vec::new(),
            stats: Vec::new(),
            sockopts: Vec::new(),
            windows: Box::new([]),
        })
    }

    fn owner_index(&self, owner: Owner) -> usize {
        if owner == WORKER {
            self.in_flight.len() - 1
        } else {
            assert!(
                (owner as usize) < self.in_flight.len() - 1,
                "unknown owner {owner}"
            );
            owner as usize
        }
    }

    /// Operations of `owner` submitted and not yet finally completed.
    pub fn in_flight(&self, owner: Owner) -> u32 {
        self.in_flight[self.owner_index(owner)]
    }

    /// Records `op` and pushes the entry `build` makes from its storage.
    fn submit(
        &mut self,
        owner: Owner,
        op: Op,
        storage: Storage,
        build: impl FnOnce(&mut Op, &mut Storage) -> squeue::Entry,
    ) -> OpId {
        let owner_index = self.owner_index(owner);
        let (index, seq) = self.ops.insert(owner, op, storage);
        let id = OpId { index, seq };
        let entry = self.ops.get_mut(index);
        let sqe = build(
            entry.op.as_mut().expect("just inserted"),
            &mut entry.storage,
        )
        .user_data(id.user_data());
        self.in_flight[owner_index] += 1;
        self.push(sqe);
        id
    }

    fn push(&mut self, entry: squeue::Entry) {
        // SAFETY: every entry references only memory owned by its slab
        // entry (storage, loans, batches), which stays put and alive until
        // the final completion is reaped (`pump`) or the reactor's drop has
        // waited for it.
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

    /// Accepts one connection on `listener` and captures its peer address.
    pub fn accept(&mut self, owner: Owner, listener: RawFd) -> OpId {
        let storage = Storage::Peer(self.peers.pop().unwrap_or_default());
        self.submit(owner, Op::Accept { peer: None }, storage, |_, storage| {
            let Storage::Peer(peer) = storage else {
                unreachable!()
            };
            let (addr, len) = peer.out_params();
            opcode::Accept::new(types::Fd(listener), addr, len)
                .flags(libc::SOCK_CLOEXEC)
                .build()
        })
    }

    /// Receives into `buf`'s first `len` bytes (at most its length). With
    /// `fixed`, as `READ_FIXED` into registered window `fixed`, which must
    /// hold the range (else the kernel answers `-EFAULT`).
    pub fn recv(
        &mut self,
        owner: Owner,
        fd: RawFd,
        buf: SpareLoan,
        len: u32,
        fixed: Option<u16>,
    ) -> OpId {
        assert!(
            len > 0 && len <= buf.len(),
            "receive of {len} into {}",
            buf.len()
        );
        let op = Op::Recv {
            buf,
            fixed: fixed.is_some(),
        };
        self.submit(owner, op, Storage::None, |op, _| {
            let Op::Recv { buf, .. } = op else {
                unreachable!()
            };
            let ptr = buf.as_mut_ptr();
            match fixed {
                // Offset 0: sockets are not seekable and refuse any other.
                Some(index) => opcode::ReadFixed::new(types::Fd(fd), ptr, len, index)
                    .offset(0)
                    .build(),
                None => opcode::Recv::new(types::Fd(fd), ptr, len).build(),
            }
        })
    }

    /// Sends `buf` (at most `u32::MAX` bytes of it).
    pub fn send(&mut self, owner: Owner, fd: RawFd, buf: SendBuf) -> OpId {
        self.submit(owner, Op::Send { buf }, Storage::None, |op, _| {
            let Op::Send { buf } = op else { unreachable!() };
            let (ptr, len) = buf.ptr_len();
            opcode::Send::new(types::Fd(fd), ptr, len)
                .flags(SEND_FLAGS)
                .build()
        })
    }

    /// Reads `len` bytes of file `fd` at `offset` into `buf`'s start.
    pub fn read_at(
        &mut self,
        owner: Owner,
        fd: RawFd,
        offset: u64,
        buf: SpareLoan,
        len: u32,
    ) -> OpId {
        assert!(
            len > 0 && len <= buf.len(),
            "read of {len} into {}",
            buf.len()
        );
        self.submit(owner, Op::ReadAt { buf }, Storage::None, |op, _| {
            let Op::ReadAt { buf } = op else {
                unreachable!()
            };
            opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), len)
                .offset(offset)
                .build()
        })
    }

    /// Writes `batch` at the file's position (appends to `O_APPEND` files).
    pub fn write(&mut self, owner: Owner, fd: RawFd, batch: Vec<u8>) -> OpId {
        assert!(batch.len() <= u32::MAX as usize);
        self.submit(owner, Op::Write { batch }, Storage::None, |op, _| {
            let Op::Write { batch } = op else {
                unreachable!()
            };
            opcode::Write::new(types::Fd(fd), batch.as_ptr(), batch.len() as u32)
                .offset(u64::MAX)
                .build()
        })
    }

    /// Reads an 8-byte counter (an eventfd).
    pub fn read_counter(&mut self, owner: Owner, fd: RawFd) -> OpId {
        let op = Op::ReadCounter { value: 0 };
        self.submit(owner, op, Storage::Counter([0; 8]), |_, storage| {
            let Storage::Counter(bytes) = storage else {
                unreachable!()
            };
            opcode::Read::new(types::Fd(fd), bytes.as_mut_ptr(), 8)
                .offset(u64::MAX)
                .build()
        })
    }

    /// Moves `len` bytes from `fd_in` (at `offset_in`, or the current
    /// position when -1) to `fd_out` without copying them through user
    /// space; one side must be a pipe.
    pub fn splice(
        &mut self,
        owner: Owner,
        fd_in: RawFd,
        offset_in: i64,
        fd_out: RawFd,
        len: u32,
    ) -> OpId {
        self.submit(owner, Op::Splice, Storage::None, |_, _| {
            opcode::Splice::new(types::Fd(fd_in), offset_in, types::Fd(fd_out), -1, len).build()
        })
    }

    /// Opens `path` read-only beneath directory `dir` (`openat2` with
    /// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: `..`, absolute paths and
    /// symlinks leaving `dir` fail with `-EXDEV`/`-ELOOP`). The path must
    /// hold no NUL and at most [`PATH_BYTES_MAX`] bytes (else `-ENAMETOOLONG`
    /// or `-ENOENT` come back without a syscall... see the result).
    pub fn open_beneath(&mut self, owner: Owner, dir: RawFd, path: &[u8]) -> OpId {
        let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        self.open_at(owner, dir, path, resolve, Op::OpenBeneath)
    }

    /// Opens `path` read-only relative to directory `dir`, following every
    /// symlink, absolute ones included (`RESOLVE_NO_MAGICLINKS` only): for
    /// a path [`Reactor::open_beneath`] refused with `-EXDEV`, whose caller
    /// then checks where the file it got lives. Same path rules.
    pub fn open_following(&mut self, owner: Owner, dir: RawFd, path: &[u8]) -> OpId {
        let op = Op::OpenFollowing { dir };
        self.open_at(owner, dir, path, libc::RESOLVE_NO_MAGICLINKS, op)
    }

    fn open_at(&mut self, owner: Owner, dir: RawFd, path: &[u8], resolve: u64, op: Op) -> OpId {
        let mut buffer = self.paths.pop().unwrap_or_else(|| {
            Box::new(PathStorage {
                path: [0; PATH_BYTES_MAX + 1],
                how: types::OpenHow::new(),
            })
        });
        // An over-long or NUL-holding path opens "" instead, which fails
        // with ENOENT: callers check before, this only keeps it safe.
        let usable = path.len() <= PATH_BYTES_MAX && !path.contains(&0);
        let len = if usable { path.len() } else { 0 };
        buffer.path[..len].copy_from_slice(&path[..len]);
        buffer.path[len] = 0;
        buffer.how = types::OpenHow::new()
            .flags((libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64)
            .resolve(resolve);
        let storage = Storage::Path(buffer);
        self.submit(owner, op, storage, |_, storage| {
            let Storage::Path(buffer) = storage else {
                unreachable!()
            };
            opcode::OpenAt2::new(types::Fd(dir), buffer.path.as_ptr().cast(), &buffer.how).build()
        })
    }

    /// Creates a TCP socket (`IORING_OP_SOCKET`, close-on-exec) for
    /// `addr`'s family; the result is the descriptor or `-errno`.
    pub fn socket(&mut self, owner: Owner, addr: SocketAddr) -> OpId {
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        self.submit(owner, Op::Socket, Storage::None, |_, _| {
            opcode::Socket::new(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).build()
        })
    }

    /// Connects socket `fd` to `addr` (`IORING_OP_CONNECT`): 0, or
    /// `-ECONNREFUSED`, `-ETIMEDOUT`, `-EHOSTUNREACH`, ...
    pub fn connect(&mut self, owner: Owner, fd: RawFd, addr: SocketAddr) -> OpId {
        let storage = Storage::Peer(self.peers.pop().unwrap_or_default());
        self.submit(owner, Op::Connect, storage, |_, storage| {
            let Storage::Peer(peer) = storage else {
                unreachable!()
            };
            let (sockaddr, len) = peer.hold(addr);
            opcode::Connect::new(types::Fd(fd), sockaddr, len).build()
        })
    }

    /// `statx` of descriptor `fd` (size, modification time, type).
    pub fn statx(&mut self, owner: Owner, fd: RawFd) -> OpId {
        // SAFETY: `statx` is a C struct of integers: all zeroes is valid.
        let buffer = self
            .stats
            .pop()
            .unwrap_or_else(|| Box::new(unsafe { std::mem::zeroed() }));
        let storage = Storage::Stat(buffer);
        self.submit(owner, Op::Statx { stat: None }, storage, |_, storage| {
            let Storage::Stat(buffer) = storage else {
                unreachable!()
            };
            let out: *mut libc::statx = &mut **buffer;
            opcode::Statx::new(types::Fd(fd), c"".as_ptr(), out.cast())
                .flags(libc::AT_EMPTY_PATH)
                .mask(libc::STATX_TYPE | libc::STATX_SIZE | libc::STATX_MTIME)
                .build()
        })
    }

    /// Half-closes or closes a socket's directions (`libc::SHUT_*`).
    pub fn shutdown(&mut self, owner: Owner, fd: RawFd, how: i32) -> OpId {
        self.submit(owner, Op::Shutdown, Storage::None, |_, _| {
            opcode::Shutdown::new(types::Fd(fd), how).build()
        })
    }

    /// Sets socket option `name` at `level` on `fd` to `value` (at most
    /// [`SOCKOPT_BYTES_MAX`] bytes, copied: the caller's need not outlive
    /// the call), through the ring (kernel 6.7+; older kernels answer
    /// `-EINVAL` or `-EOPNOTSUPP`, which callers treat as a refusal).
    pub fn setsockopt(
        &mut self,
        owner: Owner,
        fd: RawFd,
        level: u32,
        name: u32,
        value: &[u8],
    ) -> OpId {
        assert!(
            value.len() <= SOCKOPT_BYTES_MAX,
            "a {}-byte option",
            value.len()
        );
        let mut bytes = self
            .sockopts
            .pop()
            .unwrap_or_else(|| Box::new([0; SOCKOPT_BYTES_MAX]));
        bytes[..value.len()].copy_from_slice(value);
        let len = value.len() as u32;
        self.submit(
            owner,
            Op::SetSockOpt,
            Storage::SockOpt(bytes),
            |_, storage| {
                let Storage::SockOpt(bytes) = storage else {
                    unreachable!()
                };
                opcode::SetSockOpt::new(types::Fd(fd), level, name, bytes.as_ptr().cast(), len)
                    .build()
            },
        )
    }

    /// Closes a file descriptor.
    pub fn close(&mut self, owner: Owner, fd: RawFd) -> OpId {
        self.submit(owner, Op::Close, Storage::None, |_, _| {
            opcode::Close::new(types::Fd(fd)).build()
        })
    }

    /// Asks the kernel to cancel operation `target` (which then completes
    /// with `-ECANCELED`, or normally if it was already done).
    pub fn cancel(&mut self, owner: Owner, target: OpId) -> OpId {
        self.submit(owner, Op::Cancel, Storage::None, |_, _| {
            opcode::AsyncCancel::new(target.user_data()).build()
        })
    }

    /// Cancels every operation in flight on descriptor `fd`
    /// (`IORING_OP_ASYNC_CANCEL` by fd, all matches): each completes with
    /// `-ECANCELED` (or its own result, when it was finishing anyway). The
    /// result is how many were found, or `-ENOENT` for none.
    pub fn cancel_fd(&mut self, owner: Owner, fd: RawFd) -> OpId {
        self.submit(owner, Op::Cancel, Storage::None, |_, _| {
            opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all()).build()
        })
    }

    /// A timeout that completes every `interval` until cancelled.
    pub fn tick(&mut self, owner: Owner, interval: Duration) -> OpId {
        let storage = Storage::Interval(types::Timespec::from(interval));
        self.submit(owner, Op::Tick, storage, |_, storage| {
            let Storage::Interval(timespec) = storage else {
                unreachable!()
            };
            opcode::Timeout::new(timespec)
                .flags(types::TimeoutFlags::MULTISHOT)
                .build()
        })
    }

    /// Creates an empty (sparse) registered-buffer table of `entries`
    /// slots (`IORING_REGISTER_BUFFERS2` with `IORING_RSRC_REGISTER_SPARSE`):
    /// nothing is pinned until [`Reactor::register_window`] fills a slot.
    /// Once per ring.
    pub fn register_buffer_table(&mut self, entries: u32) -> io::Result<()> {
        if entries == 0 || entries > REGISTERED_BUFFERS_MAX {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.ring.submitter().register_buffers_sparse(entries)?;
        self.windows = (0..entries).map(|_| None).collect();
        Ok(())
    }

    /// Registers `buffer`'s first `bytes` as fixed buffer `index` (one
    /// `io_uring_register`): the kernel pins and faults in those pages, so a
    /// `READ_FIXED` into them needs no per-I/O page lookup. The buffer pins
    /// the prefix (its page releases leave it alone) and the reactor keeps
    /// the slab mapped until [`Reactor::unregister_window`].
    pub fn register_window(
        &mut self,
        index: u16,
        buffer: &mut RingBuffer,
        bytes: u32,
    ) -> io::Result<()> {
        let slot = self
            .windows
            .get(index as usize)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        assert!(slot.is_none(), "window {index} registered twice");
        let (ptr, len) = buffer.pin_prefix(bytes);
        let iov = libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len as usize,
        };
        // SAFETY: [ptr, ptr + len) is the start of `buffer`'s region, pinned
        // there (its pages are never given back while pinned) and kept
        // mapped by the guard stored below until `unregister_window` has
        // emptied the slot; the ring drop empties every slot first.
        let result = unsafe {
            self.ring
                .submitter()
                .register_buffers_update(u32::from(index), &[iov], None)
        };
        match result {
            Ok(()) => {
                self.windows[index as usize] = Some((buffer.base_ptr(), buffer.mapping_guard()));
                Ok(())
            }
            Err(err) => {
                buffer.unpin();
                Err(err)
            }
        }
    }

    /// Empties fixed-buffer slot `index`, which must hold `buffer`'s
    /// window; then the buffer's pages may be given back again. Only with
    /// no `READ_FIXED` of that window in flight.
    pub fn unregister_window(&mut self, index: u16, buffer: &mut RingBuffer) -> io::Result<()> {
        let slot = &self.windows[index as usize];
        assert!(
            slot.as_ref()
                .is_some_and(|(base, _)| *base == buffer.base_ptr()),
            "window {index} does not hold this buffer"
        );
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: a null, zero-length entry references no memory; it is the
        // kernel's way of emptying a sparse slot.
        unsafe {
            self.ring
                .submitter()
                .register_buffers_update(u32::from(index), &[empty], None)?;
        }
        self.windows[index as usize] = None;
        buffer.unpin();
        Ok(())
    }

    /// Whether fixed-buffer slot `index` holds a window.
    pub fn window_registered(&self, index: u16) -> bool {
        self.windows
            .get(index as usize)
            .is_some_and(Option::is_some)
    }

    /// Submits everything queued, waits for at least one completion, and
    /// moves completions into `out` (up to its spare capacity, at most
    /// [`COMPLETIONS_PER_PUMP`]). One `io_uring_enter` per call when there
    /// is anything to wait for; `out`'s capacity is reserved by the caller,
    /// so nothing allocates here.
    pub fn pump(&mut self, out: &mut Vec<Done>) -> io::Result<()> {
        assert!(
            out.capacity() - out.len() >= COMPLETIONS_PER_PUMP,
            "pump needs room for COMPLETIONS_PER_PUMP completions"
        );
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
        self.take_completions(out);
        Ok(())
    }

    /// Moves up to [`COMPLETIONS_PER_PUMP`] completions from the CQ ring
    /// into `out` (the rest wait for the next call).
    fn take_completions(&mut self, out: &mut Vec<Done>) {
        for _ in 0..COMPLETIONS_PER_PUMP {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            out.push(self.complete(cqe));
        }
    }

    /// Turns one CQE into a [`Done`], freeing its entry unless it stays
    /// armed.
    fn complete(&mut self, cqe: cqueue::Entry) -> Done {
        let id = OpId::from_user_data(cqe.user_data());
        let result = cqe.result();
        let more = cqueue::more(cqe.flags());
        let entry = self.ops.get_mut(id.index);
        debug_assert_eq!(entry.seq, id.seq, "completion of a reused entry");
        if more {
            debug_assert!(matches!(entry.op, Some(Op::Tick)));
            return Done {
                owner: entry.owner,
                id,
                result,
                op: Op::Tick,
                more,
            };
        }
        let (owner, mut op, storage) = self.ops.remove(id.index);
        let owner_index = self.owner_index(owner);
        debug_assert!(self.in_flight[owner_index] > 0);
        self.in_flight[owner_index] -= 1;
        match (&mut op, storage) {
            (Op::Accept { peer }, Storage::Peer(storage)) => {
                if result >= 0 {
                    *peer = storage.address();
                }
                self.peers.push(storage);
            }
            (Op::Statx { stat }, Storage::Stat(buffer)) => {
                if result == 0 {
                    *stat = Some(FileStat {
                        size: buffer.stx_size,
                        mtime_secs: buffer.stx_mtime.tv_sec.max(0) as u64,
                        file_type: u32::from(buffer.stx_mode) & libc::S_IFMT,
                    });
                }
                self.stats.push(buffer);
            }
            (Op::ReadCounter { value }, Storage::Counter(bytes)) => {
                *value = u64::from_ne_bytes(bytes);
            }
            (Op::Connect, Storage::Peer(storage)) => self.peers.push(storage),
            (_, Storage::Path(buffer)) => self.paths.push(buffer),
            (_, Storage::SockOpt(bytes)) => self.sockopts.push(bytes),
            _ => {}
        }
        Done {
            owner,
            id,
            result,
            op,
            more,
        }
    }

    /// Submits what is queued and moves the completions already there into
    /// `out`, without waiting (for a thread whose loop waits elsewhere: the
    /// main thread writes its log lines this way).
    pub fn poll(&mut self, out: &mut Vec<Done>) -> io::Result<()> {
        assert!(
            out.capacity() - out.len() >= COMPLETIONS_PER_PUMP,
            "poll needs room for COMPLETIONS_PER_PUMP completions"
        );
        if !self.ring.submission().is_empty() {
            self.ring.submit()?;
        }
        self.take_completions(out);
        Ok(())
    }

    /// Submits what is queued without waiting (used before the loop exits).
    pub fn flush(&mut self) -> io::Result<()> {
        self.ring.submit().map(|_| ())
    }
}

/// The memory limit behind a failure to make a ring or register a buffer:
/// for a user without `CAP_IPC_LOCK` the kernel counts ring memory and
/// registered buffers against `RLIMIT_MEMLOCK` and answers `ENOMEM` past
/// it. `Some(soft limit in bytes)` for such an error; `None` for others.
pub fn memlock_limit_behind(err: &io::Error) -> Option<u64> {
    if err.raw_os_error() != Some(libc::ENOMEM) {
        return None;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    (unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0).then_some(limit.rlim_cur)
}

impl Drop for Reactor {
    /// Cancels everything in flight and reaps the completions (bounded by
    /// [`DROP_WAIT`]) so no operation outlives the memory it points into;
    /// then empties the registered windows.
    fn drop(&mut self) {
        if self.ops.used() > 0 {
            let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(u64::MAX);
            self.push(cancel);
            let deadline = std::time::Instant::now() + DROP_WAIT;
            while self.ops.used() > 0 && std::time::Instant::now() < deadline {
                let timeout = types::Timespec::from(Duration::from_millis(50));
                let args = types::SubmitArgs::new().timespec(&timeout);
                let _ = self.ring.submitter().submit_with_args(1, &args);
                while let Some(cqe) = self.ring.completion().next() {
                    if cqe.user_data() != u64::MAX && !cqueue::more(cqe.flags()) {
                        let id = OpId::from_user_data(cqe.user_data());
                        drop(self.ops.remove(id.index));
                    }
                }
            }
        }
        let _ = self.ring.submitter().unregister_buffers();
    }
}
