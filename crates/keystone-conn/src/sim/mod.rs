//! The in-process driver (feature `sim`): executes a [`Connection`]'s
//! intents without a ring, so the conformance tests, the property tests and
//! the fuzz targets drive the very state machine the worker drives. A
//! simulated peer and network: bytes arrive in reads of chosen sizes,
//! sends complete partially in chosen sizes, the peer may stop reading or
//! close, time is advanced by hand. Files are opened with `std::fs` beneath
//! their root (refusing `..` and anything outside it, as `openat2`'s
//! `RESOLVE_BENEATH` does); pipes are byte queues.
//!
//! This is test support: it performs real file I/O synchronously and
//! allocates freely. The server's event loop never uses it: the feature is
//! enabled by tests, fuzz targets and keystone-spec, whose `keystone test`
//! drives apps through it.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::RawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keystone_files::{FileKind, FileMeta};
use keystone_ringbuf::{split_slab, SendBuf, SpareLoan};

use crate::{Config, Connection, Context, Event, Intent, Pipe, Policy, Shared, SEND_BUFFER_BYTES};

mod check;
mod fake;

pub use check::{check_responses, check_responses_aborted, normalize, Response};
pub use fake::{
    pattern, write_site, FakePolicy, BIG, FILE_NAMES, POLICY_ETAG, POLICY_LAST_MODIFIED,
    STREAM_CHUNKS, TINY_CHUNKS,
};

/// Descriptors the simulator hands out for files and pipes start here
/// (well above anything a test process has open).
const FAKE_FD_BASE: RawFd = 1 << 20;
/// Pipes a simulated worker has.
const PIPES: usize = 2;
/// What a reset peer makes sends and receives fail with.
const ECONNRESET: i32 = 104;

/// One connection and its simulated peer.
pub struct Sim<P> {
    /// The connection under test.
    pub conn: Connection,
    /// The worker-wide state it shares.
    pub shared: Shared,
    /// The policy it asks.
    pub policy: P,
    /// The simulated clock.
    pub now: Instant,
    /// The worker is draining.
    pub draining: bool,
    inbound: VecDeque<u8>,
    peer_closed: bool,
    /// The peer stopped reading: sends wait.
    peer_stalled: bool,
    /// The peer reset the connection: sends and receives fail.
    peer_reset: bool,
    /// Past this many bytes sent, the peer resets the connection.
    output_limit: usize,
    recv_sizes: Vec<usize>,
    recv_turn: usize,
    send_sizes: Vec<usize>,
    send_turn: usize,
    waiting_recv: Option<SpareLoan>,
    waiting_send: Option<SendBuf>,
    events: VecDeque<Event>,
    output: Vec<u8>,
    closed: bool,
    write_shut: bool,
    roots: HashMap<RawFd, PathBuf>,
    files: HashMap<RawFd, File>,
    pipes: HashMap<RawFd, VecDeque<u8>>,
    next_fd: RawFd,
    /// Intents executed, by kind (for tests that count operations).
    pub counts: HashMap<&'static str, u64>,
}

impl<P: Policy> Sim<P> {
    /// A connection accepted from `127.0.0.1:40000`, with `config`.
    pub fn new(policy: P, config: Config) -> Sim<P> {
        let recv_bytes = u64::from(config.limits.max_header_bytes) + config.limits.max_body_bytes;
        let recv_bytes = u32::try_from(recv_bytes).expect("head + body limits fit 4 GiB");
        let recv = split_slab(1, recv_bytes).expect("receive buffer maps");
        let send = split_slab(1, SEND_BUFFER_BYTES).expect("send buffer maps");
        let now = Instant::now();
        let mut pipes = HashMap::new();
        let mut pipe_ends = Vec::new();
        for index in 0..PIPES as RawFd {
            let read = FAKE_FD_BASE - 2 * index - 2;
            let write = read + 1;
            pipes.insert(write, VecDeque::new());
            pipe_ends.push(Pipe {
                read,
                write,
                capacity: crate::PIPE_DEFAULT_BYTES,
            });
        }
        let mut conn = Connection::new(
            0,
            recv.into_iter().next().expect("one"),
            send.into_iter().next().expect("one"),
            now,
        );
        conn.open(
            Some("127.0.0.1:40000".parse().expect("address")),
            now,
            &config,
        );
        let mut sim = Sim {
            conn,
            shared: Shared::new(config, pipe_ends),
            policy,
            now,
            draining: false,
            inbound: VecDeque::new(),
            peer_closed: false,
            peer_stalled: false,
            peer_reset: false,
            output_limit: usize::MAX,
            recv_sizes: Vec::new(),
            recv_turn: 0,
            send_sizes: Vec::new(),
            send_turn: 0,
            waiting_recv: None,
            waiting_send: None,
            events: VecDeque::new(),
            output: Vec::new(),
            closed: false,
            write_shut: false,
            roots: HashMap::new(),
            files: HashMap::new(),
            pipes,
            next_fd: FAKE_FD_BASE,
            counts: HashMap::new(),
        };
        sim.run();
        sim
    }

    /// The peer goes and another connects from `peer`: the open connection
    /// (if any) sees its peer close, as a FIN makes it, and closes; then
    /// the slot is opened again, as a worker reuses a slot for the next
    /// accept. What the old peer was sent is dropped.
    pub fn reconnect(&mut self, peer: std::net::SocketAddr) {
        if !self.conn.is_free() {
            self.peer_stalled = false;
            self.close_input();
            // A lingering close waits out its deadline.
            for _ in 0..16 {
                if self.conn.is_free() {
                    break;
                }
                match self.conn.deadline() {
                    Some(at) => self.advance(at.saturating_duration_since(self.now)),
                    None => break,
                }
            }
            assert!(
                self.conn.is_free(),
                "the connection did not close at its peer's FIN"
            );
        }
        self.inbound.clear();
        self.peer_closed = false;
        self.peer_stalled = false;
        self.peer_reset = false;
        self.recv_turn = 0;
        self.send_turn = 0;
        self.waiting_recv = None;
        self.waiting_send = None;
        self.events.clear();
        self.output.clear();
        self.closed = false;
        self.write_shut = false;
        let config = self.shared.config;
        self.conn.open(Some(peer), self.now, &config);
        self.run();
    }

    /// Registers `path` as the directory behind descriptor `dir` (a
    /// policy's [`crate::Root`]); real descriptors need no registration.
    pub fn root(&mut self, dir: RawFd, path: &Path) {
        self.roots.insert(dir, path.to_path_buf());
    }

    /// Each read delivers at most the next of these sizes (cycling); empty:
    /// whatever is there.
    pub fn recv_sizes(&mut self, sizes: Vec<usize>) {
        assert!(sizes.iter().all(|&n| n > 0));
        self.recv_sizes = sizes;
    }

    /// Each send completes with at most the next of these sizes (cycling):
    /// partial sends; empty: all of it.
    pub fn send_sizes(&mut self, sizes: Vec<usize>) {
        assert!(sizes.iter().all(|&n| n > 0));
        self.send_sizes = sizes;
    }

    /// The peer sends `bytes`; runs until nothing more happens.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.inbound.extend(bytes);
        self.run();
    }

    /// The peer closes its sending side (FIN after what it sent).
    pub fn close_input(&mut self) {
        self.peer_closed = true;
        self.run();
    }

    /// The peer stops (or resumes) reading: sends wait until it resumes.
    pub fn stall_peer(&mut self, stalled: bool) {
        self.peer_stalled = stalled;
        self.run();
    }

    /// Once more than `bytes` were sent, the peer resets the connection
    /// (sends and receives fail with `ECONNRESET`): bounds what an endless
    /// response costs a driver.
    pub fn limit_output(&mut self, bytes: usize) {
        self.output_limit = bytes;
    }

    /// Everything sent so far (not taken).
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Time passes; a deadline that passed is delivered.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.run();
    }

    /// The upstream of a proxied request progressed: the policy is asked
    /// again ([`Event::Upstream`]).
    pub fn upstream(&mut self) {
        self.events.push_back(Event::Upstream);
        self.run();
    }

    /// The worker starts draining.
    pub fn drain(&mut self) {
        self.draining = true;
        self.events.push_back(Event::Drain);
        self.run();
    }

    /// Everything sent so far, taken.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Bytes the peer sent that the connection has not read.
    pub fn unread(&self) -> usize {
        self.inbound.len()
    }

    /// The connection closed its socket.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// The connection shut its write side (FIN).
    pub fn write_shut(&self) -> bool {
        self.write_shut
    }

    /// Delivers events and executes intents until neither is left.
    pub fn run(&mut self) {
        // Bounded: every intent consumes input, time or output, and a
        // connection makes progress on each event; the cap catches a loop.
        for _ in 0..1_000_000 {
            self.execute_intents();
            if self.waiting_recv.is_some()
                && (!self.inbound.is_empty() || self.peer_closed || self.peer_reset)
            {
                let buf = self.waiting_recv.take().expect("checked");
                self.receive(buf);
                continue;
            }
            if self.waiting_send.is_some() && !self.peer_stalled {
                let buf = self.waiting_send.take().expect("checked");
                self.transmit(buf);
                continue;
            }
            if let Some(event) = self.events.pop_front() {
                self.deliver(event);
                continue;
            }
            if self.conn.is_free() {
                return;
            }
            match self.conn.deadline() {
                Some(at) if at <= self.now => self.deliver(Event::Deadline),
                _ => return,
            }
        }
        panic!("the connection never settled");
    }

    fn deliver(&mut self, event: Event) {
        if self.conn.is_free() {
            return;
        }
        let mut cx = Context {
            shared: &mut self.shared,
            policy: &mut self.policy,
            now: self.now,
            draining: self.draining,
        };
        self.conn.on(event, &mut cx);
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    fn execute_intents(&mut self) {
        loop {
            let mut cx = Context {
                shared: &mut self.shared,
                policy: &mut self.policy,
                now: self.now,
                draining: self.draining,
            };
            let Some(intent) = self.conn.poll(&mut cx) else {
                return;
            };
            let executed = Executed::from(intent);
            self.execute(executed);
        }
    }

    fn execute(&mut self, intent: Executed) {
        match intent {
            Executed::Recv(buf) => {
                self.count("recv");
                assert!(self.waiting_recv.is_none(), "two receives in flight");
                if self.inbound.is_empty() && !self.peer_closed && !self.peer_reset {
                    self.waiting_recv = Some(buf);
                } else {
                    self.receive(buf);
                }
            }
            Executed::Send(buf) => {
                self.count("send");
                assert!(self.waiting_send.is_none(), "two sends in flight");
                if self.peer_stalled {
                    self.waiting_send = Some(buf);
                } else {
                    self.transmit(buf);
                }
            }
            Executed::ReadFile {
                fd,
                offset,
                mut buf,
                len,
            } => {
                self.count("read_file");
                let result = match self.files.get(&fd) {
                    Some(file) => {
                        match file.read_at(&mut buf.as_mut_slice()[..len as usize], offset) {
                            Ok(n) => n as i32,
                            Err(err) => -err.raw_os_error().unwrap_or(5),
                        }
                    }
                    None => -9, // EBADF
                };
                self.events.push_back(Event::FileRead { buf, result });
            }
            Executed::SpliceFile {
                fd,
                offset,
                into,
                len,
            } => {
                self.count("splice");
                let mut bytes = vec![0u8; len as usize];
                let result = match self.files.get(&fd).map(|f| f.read_at(&mut bytes, offset)) {
                    Some(Ok(n)) => {
                        let pipe = self.pipes.get_mut(&into).expect("a pipe's write end");
                        pipe.extend(&bytes[..n]);
                        n as i32
                    }
                    Some(Err(err)) => -err.raw_os_error().unwrap_or(5),
                    None => -9,
                };
                self.events.push_back(Event::Spliced { result });
            }
            Executed::SpliceOut { from, len } => {
                self.count("splice");
                if self.output.len() > self.output_limit {
                    self.peer_reset = true;
                }
                if self.peer_reset {
                    self.events.push_back(Event::Spliced {
                        result: -ECONNRESET,
                    });
                    return;
                }
                let size = self.next_send_size(len as usize);
                let pipe = self.pipes.get_mut(&(from + 1)).expect("a pipe's read end");
                let n = (len as usize).min(pipe.len()).min(size);
                let moved: Vec<u8> = pipe.drain(..n).collect();
                self.output.extend(moved);
                self.events.push_back(Event::Spliced { result: n as i32 });
            }
            Executed::Open { dir, path } => {
                self.count("open");
                let result = self.open_beneath(dir, &path);
                self.events.push_back(Event::Opened { result });
            }
            Executed::Stat { fd } => {
                self.count("stat");
                let (result, meta) = match self.files.get(&fd).map(File::metadata) {
                    Some(Ok(metadata)) => (0, Some(meta_of(&metadata))),
                    Some(Err(err)) => (-err.raw_os_error().unwrap_or(5), None),
                    None => (-9, None),
                };
                self.events.push_back(Event::Stated { result, meta });
            }
            Executed::CloseFile(fd) => {
                self.count("close_file");
                assert!(
                    self.files.remove(&fd).is_some(),
                    "close of an unknown file {fd}"
                );
            }
            Executed::CancelRecv => {
                self.count("cancel");
                if let Some(buf) = self.waiting_recv.take() {
                    self.events.push_back(Event::Received {
                        buf,
                        result: -125, // ECANCELED
                    });
                }
            }
            Executed::CancelOutput => {
                self.count("cancel");
                if let Some(buf) = self.waiting_send.take() {
                    self.events.push_back(Event::Sent {
                        buf,
                        result: -125, // ECANCELED
                    });
                }
            }
            Executed::Shutdown => {
                self.count("shutdown");
                self.write_shut = true;
                self.events.push_back(Event::ShutDown { result: 0 });
            }
            Executed::Close => {
                self.count("close");
                assert!(self.waiting_recv.is_none() && self.waiting_send.is_none());
                self.closed = true;
                self.events.push_back(Event::Closed);
            }
            Executed::ReleaseIdle => {
                self.count("release_idle");
                self.events.push_back(Event::Released);
            }
        }
    }

    fn receive(&mut self, mut buf: SpareLoan) {
        if self.peer_reset {
            self.events.push_back(Event::Received {
                buf,
                result: -ECONNRESET,
            });
            return;
        }
        if self.inbound.is_empty() {
            assert!(self.peer_closed);
            self.events.push_back(Event::Received { buf, result: 0 });
            return;
        }
        let size = match self.recv_sizes.len() {
            0 => usize::MAX,
            n => {
                self.recv_turn += 1;
                self.recv_sizes[(self.recv_turn - 1) % n]
            }
        };
        let n = self.inbound.len().min(buf.len() as usize).min(size);
        for (slot, byte) in buf.as_mut_slice()[..n]
            .iter_mut()
            .zip(self.inbound.drain(..n))
        {
            *slot = byte;
        }
        self.events.push_back(Event::Received {
            buf,
            result: n as i32,
        });
    }

    fn next_send_size(&mut self, wanted: usize) -> usize {
        match self.send_sizes.len() {
            0 => wanted,
            n => {
                self.send_turn += 1;
                self.send_sizes[(self.send_turn - 1) % n].min(wanted)
            }
        }
    }

    fn transmit(&mut self, buf: SendBuf) {
        if self.output.len() > self.output_limit {
            self.peer_reset = true;
        }
        if self.peer_reset {
            self.events.push_back(Event::Sent {
                buf,
                result: -ECONNRESET,
            });
            return;
        }
        let bytes = match &buf {
            SendBuf::Buffer(loan) => loan.as_slice(),
            SendBuf::Pinned(pinned) => pinned.as_slice(),
        };
        let n = self.next_send_size(bytes.len());
        self.output.extend_from_slice(&bytes[..n]);
        self.events.push_back(Event::Sent {
            buf,
            result: n as i32,
        });
    }

    /// `openat2(dir, path, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, as far
    /// as confinement goes: the resolved path must stay beneath the root.
    fn open_beneath(&mut self, dir: RawFd, path: &[u8]) -> i32 {
        const ENOENT: i32 = 2;
        const EXDEV: i32 = 18;
        let root = match self.roots.get(&dir) {
            Some(root) => root.clone(),
            None => match std::fs::read_link(format!("/proc/self/fd/{dir}")) {
                Ok(root) => root,
                Err(_) => return -9,
            },
        };
        let Ok(relative) = std::str::from_utf8(path) else {
            return -ENOENT;
        };
        if relative.starts_with('/') || relative.split('/').any(|part| part == "..") {
            return -EXDEV;
        }
        let (Ok(root), Ok(target)) = (root.canonicalize(), root.join(relative).canonicalize())
        else {
            return -ENOENT;
        };
        if !target.starts_with(&root) {
            return -EXDEV;
        }
        match File::open(&target) {
            Ok(file) => {
                let fd = self.next_fd;
                self.next_fd += 1;
                self.files.insert(fd, file);
                fd
            }
            Err(err) => -err.raw_os_error().unwrap_or(ENOENT),
        }
    }

    /// Files the connection has open (for leak checks).
    pub fn open_files(&self) -> usize {
        self.files.len()
    }
}

fn meta_of(metadata: &std::fs::Metadata) -> FileMeta {
    let kind = if metadata.is_file() {
        FileKind::Regular
    } else if metadata.is_dir() {
        FileKind::Directory
    } else {
        FileKind::Other
    };
    FileMeta {
        size: metadata.len(),
        mtime_secs: metadata.mtime().max(0) as u64,
        kind,
    }
}

/// An intent, owned (the `Open` path copied), so executing it may touch
/// the connection's peer state freely.
enum Executed {
    Recv(SpareLoan),
    Send(SendBuf),
    ReadFile {
        fd: RawFd,
        offset: u64,
        buf: SpareLoan,
        len: u32,
    },
    SpliceFile {
        fd: RawFd,
        offset: u64,
        into: RawFd,
        len: u32,
    },
    SpliceOut {
        from: RawFd,
        len: u32,
    },
    Open {
        dir: RawFd,
        path: Vec<u8>,
    },
    Stat {
        fd: RawFd,
    },
    CloseFile(RawFd),
    CancelRecv,
    CancelOutput,
    Shutdown,
    Close,
    ReleaseIdle,
}

impl From<Intent<'_>> for Executed {
    fn from(intent: Intent<'_>) -> Executed {
        match intent {
            Intent::Recv(buf) => Executed::Recv(buf),
            Intent::Send(buf) => Executed::Send(buf),
            Intent::ReadFile {
                fd,
                offset,
                buf,
                len,
            } => Executed::ReadFile {
                fd,
                offset,
                buf,
                len,
            },
            Intent::SpliceFile {
                fd,
                offset,
                into,
                len,
            } => Executed::SpliceFile {
                fd,
                offset,
                into,
                len,
            },
            Intent::SpliceOut { from, len } => Executed::SpliceOut { from, len },
            // The simulated world has no upstream sockets: no policy driven
            // here hands a body over for a splice.
            Intent::SpliceUpstream { .. } => {
                unreachable!("no upstream socket exists in the simulation")
            }
            // The simulated open already resolves links and confines the
            // file it reaches, so both opens behave alike here.
            Intent::Open { dir, path, .. } => Executed::Open {
                dir,
                path: path.to_vec(),
            },
            Intent::Stat { fd } => Executed::Stat { fd },
            Intent::CloseFile(fd) => Executed::CloseFile(fd),
            Intent::CancelRecv => Executed::CancelRecv,
            Intent::CancelOutput => Executed::CancelOutput,
            Intent::Shutdown => Executed::Shutdown,
            Intent::Close => Executed::Close,
            Intent::ReleaseIdle => Executed::ReleaseIdle,
        }
    }
}
