//! keystone-conn — the HTTP/1.1 server connection as a sans-I/O state
//! machine: events in, intents out. It performs no syscall and reads no
//! clock; the worker pump (keystone-server) executes its intents on the
//! ring and feeds the completions back, and the in-process driver
//! ([`sim`], feature `sim`) does the same for tests and fuzzing — two
//! drivers of one machine.
//!
//! Owns: one connection's life — framing (Content-Length and chunked
//! request bodies, decoded in place), `100 Continue`, pipelining and its
//! bound, keep-alive and the HTTP/1.0 rules, the response in progress and
//! its tail (a pinned body, a file, a stream pulled as the socket drains),
//! partial sends, file answers (open and stat as intents, the per-worker
//! open-file cache, conditionals and ranges), lingering close, the TLS
//! facts the driver sets ([`Connection::set_tls`]: bound with every
//! request, and no splice on an encrypted connection), and which
//! deadline applies in which state ([`Connection::deadline`]: timeouts are
//! data it returns, the worker only says when one passed). The parser's
//! incremental progress is kept per connection.
//!
//! Policy (router, Lua, static roots) sits behind the [`Policy`] trait the
//! server implements: this crate decides how an answer goes on the wire,
//! never what the answer is.
//!
//! Never depends on: keystone-router, keystone-lua, keystone-app, keystone-reactor,
//! keystone-ebpf, keystone-ops, keystone-upstream, keystone-tls, keystone-spec, keystone-server.
//!
//! # Driving a connection
//! After every [`Event`] given to [`Connection::on`], call
//! [`Connection::poll`] until it returns `None`, executing each [`Intent`]
//! exactly once; each intent that names a completion (receive, send, file
//! read, splice, open, stat, shutdown, close) comes back as its event.
//! Loans ([`SpareLoan`], [`SendBuf`]) travel inside intents and events: the
//! driver moves them into its operation and back. After any event, ask
//! [`Connection::deadline`] when the next timeout is due and deliver
//! [`Event::Deadline`] once it has passed.

mod answer;
mod connection;
mod file;
mod kept;
mod proxy;
mod read;
mod stream;
mod timer;
mod upload;

#[cfg(feature = "sim")]
pub mod sim;

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

pub use keystone_files::{FileCache, FileMeta};
pub use keystone_ringbuf::{PinnedBytes, SendBuf, SpareLoan};

pub use connection::Connection;
pub use proxy::CLIENT_CLOSED_REQUEST;
pub use timer::Timer;

use keystone_exchange::{HttpExchange, PeerAddr, TlsFacts};
use keystone_parser::{Head, Limits, Parser};
use keystone_response::{Committed, DateCache};
use keystone_ringbuf::Span;

/// Free space the send buffer must have before another request is taken
/// on: the largest head policy can produce (its header arena) plus the
/// engine's own headers, so committing a response can never fail for room.
pub const SEND_HEADROOM_BYTES: u32 = keystone_exchange::RESPONSE_ARENA_BYTES as u32 + 2048;

/// Response bytes buffered per connection: room for 16 pipelined small
/// responses per send, plus the headroom one more response needs.
pub const SEND_BUFFER_BYTES: u32 = 64 * 1024;
const _: () = assert!(SEND_BUFFER_BYTES >= 2 * SEND_HEADROOM_BYTES);

/// Bytes a stream queues before waiting for the socket: enough for a few
/// TCP segments in flight, small enough to keep a slow reader's memory at
/// the send buffer, and a generator pulled only as the socket drains.
pub const STREAM_QUEUE_BYTES: u32 = 32 * 1024;
const _: () = assert!(STREAM_QUEUE_BYTES < SEND_BUFFER_BYTES);

/// Files at most this long are read into the send buffer behind their head
/// and go out in one send; longer ones are spliced (file → pipe → socket)
/// without passing through user space. Why 32 KiB: below it, one read and
/// one send cost fewer operations than two splices per 64 KiB and the
/// copy is cheaper than the pipe's page references; above it, zero copy
/// wins and the send buffer would need several rounds anyway.
pub const FILE_READ_BYTES_MAX: u64 = 32 * 1024;
const _: () = assert!(FILE_READ_BYTES_MAX as u32 + SEND_HEADROOM_BYTES <= SEND_BUFFER_BYTES);

/// The capacity a worker asks each of its pipes to have
/// (`F_SETPIPE_SZ`): a splice moves at most a pipe's capacity
/// ([`Pipe::capacity`]), so the pipe → socket half always has room to take
/// what the file half put. Why 256 KiB, not the default 64: a 1 MiB file
/// takes 8 splices instead of 32 (measured in benches/README.md); the
/// pipe holds page references, not copies, and unprivileged users may
/// raise a pipe to 1 MiB (`/proc/sys/fs/pipe-max-size`).
pub const PIPE_BYTES: u32 = 256 * 1024;

/// A pipe's capacity when nobody changed it (16 pages).
pub const PIPE_DEFAULT_BYTES: u32 = 64 * 1024;

/// A proxied body with at least this many bytes still to read after what
/// came with its head is spliced (upstream socket → pipe → client socket)
/// instead of copied through the buffers: the same trade as
/// [`FILE_READ_BYTES_MAX`] for files (two splices per 64 KiB against two
/// copies), measured in benches/README.md.
pub const SPLICE_PROXY_MIN_BYTES: u64 = 64 * 1024;

/// How long a closing connection may keep sending us bytes before we close
/// it anyway (nginx's `lingering_time` is 30 s, `lingering_timeout` 5 s;
/// the short one suits a server that only discards).
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a keep-alive connection waits for its next request before its
/// buffers' pages (and its registered window) are given back. Why a second:
/// a busy connection is "idle" for microseconds between every two requests;
/// only one that stayed idle across a whole second is worth the `madvise`,
/// unregistering and the page faults when it wakes up. (nginx frees a
/// keep-alive connection's header buffer as soon as it goes idle, and
/// allocates a new one on the next request.)
pub const IDLE_RELEASE_AFTER: Duration = Duration::from_secs(1);

/// Timeouts, each between two points named in [`Timer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Whole request head (slowloris defence → 408).
    pub header: Duration,
    /// Between two reads of a body (→ 408).
    pub body: Duration,
    /// Keep-alive idle (→ close).
    pub idle: Duration,
    /// Between two writes to a client that stopped reading (→ close).
    pub send: Duration,
}

impl Default for Timeouts {
    /// nginx's defaults: `client_header_timeout`, `client_body_timeout`,
    /// `keepalive_timeout`, `send_timeout`.
    fn default() -> Timeouts {
        Timeouts {
            header: Duration::from_secs(60),
            body: Duration::from_secs(60),
            idle: Duration::from_secs(75),
            send: Duration::from_secs(60),
        }
    }
}

/// What every connection of a worker is configured with.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Request limits.
    pub limits: Limits,
    /// Responses one connection may have queued but not yet sent.
    pub max_pipeline: u32,
    /// Connection timeouts.
    pub timeouts: Timeouts,
    /// The largest request body streamed upstream (a body above
    /// `limits.max_body_bytes` is streamed when policy can proxy it,
    /// [`Policy::streams_bodies`]); 413 above it.
    pub max_proxy_body_bytes: u64,
}

/// Default for [`Config::max_proxy_body_bytes`]: 1 GiB. A streamed body
/// costs one receive window however long it is; the bound is the gateway's
/// promise to its backends (nginx's `client_max_body_size`, set per
/// location in a proxy).
pub const MAX_PROXY_BODY_BYTES: u64 = 1 << 30;

/// Default bound on responses queued per connection: enough for wrk's and
/// h2load's pipelining depths (16) with room to spare; small enough that
/// one connection cannot monopolise a worker.
pub const MAX_PIPELINE: u32 = 64;

impl Default for Config {
    fn default() -> Config {
        Config {
            limits: Limits::default(),
            max_pipeline: MAX_PIPELINE,
            timeouts: Timeouts::default(),
            max_proxy_body_bytes: MAX_PROXY_BODY_BYTES,
        }
    }
}

/// A pipe files are spliced through: two descriptors the worker made at
/// start-up (the connection only names them in intents).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pipe {
    /// Read end (pipe → socket).
    pub read: RawFd,
    /// Write end (file → pipe).
    pub write: RawFd,
    /// What the pipe holds (`F_GETPIPE_SZ`): the most one splice moves.
    pub capacity: u32,
}

/// The worker's pipes: a connection takes one for a file tail and gives it
/// back empty; one given back holding bytes (its send was aborted) is
/// dirty until the worker drains it. Sized at start-up; when none is free a
/// file is read into the send buffer instead.
#[derive(Debug, Default)]
pub struct PipePool {
    clean: Vec<Pipe>,
    dirty: Vec<(Pipe, u32)>,
}

impl PipePool {
    /// A pool of `pipes` (the worker's, made at start-up).
    pub fn new(pipes: Vec<Pipe>) -> PipePool {
        let capacity = pipes.len();
        PipePool {
            clean: pipes,
            dirty: Vec::with_capacity(capacity),
        }
    }

    fn take(&mut self) -> Option<Pipe> {
        self.clean.pop()
    }

    /// Gives a pipe back; `holding` bytes still sit in it.
    fn give_back(&mut self, pipe: Pipe, holding: u32) {
        if holding == 0 {
            self.clean.push(pipe);
        } else {
            self.dirty.push((pipe, holding));
        }
    }

    /// A pipe holding bytes, for the worker to drain (and then
    /// [`PipePool::drained`]).
    pub fn take_dirty(&mut self) -> Option<(Pipe, u32)> {
        self.dirty.pop()
    }

    /// A drained pipe is clean again.
    pub fn drained(&mut self, pipe: Pipe) {
        self.clean.push(pipe);
    }

    /// Free clean pipes.
    pub fn available(&self) -> usize {
        self.clean.len()
    }
}

/// What all connections of one worker share: one parser and head scratch
/// (each connection keeps its own parse progress), the cached `Date`, the
/// open-file cache, the pipes and the configuration. Owned by the worker,
/// lent to every call.
pub struct Shared {
    /// picohttpparser and its header scratch.
    pub parser: Parser,
    /// Parsed head scratch, reused for every request.
    pub head: Box<Head>,
    /// Cached `Date` (the driver refreshes it once per loop turn).
    pub date: DateCache,
    /// The worker's open-file cache.
    pub files: FileCache,
    /// The worker's pipes.
    pub pipes: PipePool,
    /// Connection configuration.
    pub config: Config,
    /// Where the path of an `Intent::Open` is prepared.
    path: Box<keystone_files::RelativePath>,
}

/// Open files kept per worker (nginx's `open_file_cache max` is set per
/// site): 256 covers a site's hot assets (an entry is ~400 bytes and one
/// descriptor); a file past it is opened per request until it evicts a
/// less recently used one.
pub const FILE_CACHE_ENTRIES: u16 = 256;
/// How long a cached open file is served before it is opened and stat'ed
/// again: a file changed on disk is seen within a second (nginx's
/// `open_file_cache_valid` defaults to 60 s).
pub const FILE_CACHE_VALID: Duration = Duration::from_secs(1);

impl Shared {
    /// Worker-wide state for `config`, with the worker's `pipes`.
    pub fn new(config: Config, pipes: Vec<Pipe>) -> Shared {
        Shared {
            parser: Parser::new(),
            head: Box::new(Head::new()),
            date: DateCache::new(),
            files: FileCache::new(FILE_CACHE_ENTRIES, FILE_CACHE_VALID),
            pipes: PipePool::new(pipes),
            config,
            path: Box::new(
                keystone_files::RelativePath::new(b".", false).expect("'.' is a valid path"),
            ),
        }
    }
}

/// One call's view of the worker: its shared state, the policy, the time
/// of this loop turn and whether the worker drains.
pub struct Context<'a, P> {
    /// The worker's shared connection state.
    pub shared: &'a mut Shared,
    /// The app's policy.
    pub policy: &'a mut P,
    /// Now (read once per loop turn by the driver).
    pub now: Instant,
    /// The worker drains: finish what is in progress, take no new request.
    pub draining: bool,
}

/// Severity of what the connection reports through [`Policy::log`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Something the operator should look at; serving continues.
    Warn,
    /// A request or response failed; serving continues.
    Error,
}

/// A directory files are opened beneath: its descriptor and the id the
/// open-file cache knows it by (a new id for every opening, so a reload's
/// new root never serves an old root's entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Root {
    /// Cache id of this opening of the directory.
    pub id: u32,
    /// The directory (`O_PATH | O_DIRECTORY`), opened by the server.
    pub dir: RawFd,
}

/// Names the Lua state (or whatever owns pinned bytes) that keeps a
/// response's body alive: a stream started before a reload keeps pulling
/// from the state that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinOwner(pub usize);

/// A body kept alive for a connection: who keeps it and its bytes (a
/// string or a file path; empty for a generator).
#[derive(Debug)]
pub struct Pinned {
    /// Who to unpin it with.
    pub owner: PinOwner,
    /// The bytes.
    pub bytes: PinnedBytes,
}

/// What pulling a stream's generator produced.
#[derive(Debug)]
pub enum Pulled {
    /// A chunk (possibly empty), valid until the next pull or unpin.
    Chunk(PinnedBytes),
    /// The generator ended.
    End,
    /// The generator failed; the message is for the log.
    Failed {
        /// What went wrong (Lua error and traceback).
        message: String,
    },
}

/// A complete request, as policy sees it.
pub struct Request<'a> {
    /// The receive buffer's bytes; every span of `head` indexes them.
    pub bytes: &'a [u8],
    /// The parsed head.
    pub head: &'a Head,
    /// The request body (Content-Length or decoded chunked body).
    pub body: Span,
    /// The body is larger than the buffered limit and is not in `body`
    /// (empty): it streams upstream if policy proxies the request, and is
    /// never read otherwise (the connection closes after the answer).
    pub body_streamed: bool,
    /// The connection's slot (the key bodies are pinned under).
    pub slot: u32,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The connection's TLS facts ([`Connection::set_tls`]; cleartext for
    /// a connection without TLS), to bind the exchange with.
    pub tls: &'a TlsFacts,
    /// When the request was complete in the buffer.
    pub started: Instant,
}

impl Request<'_> {
    /// The method token.
    pub fn method(&self) -> &[u8] {
        self.head.method.slice(self.bytes)
    }

    /// The path (without query; absolute-form reduced to its path).
    pub fn path(&self) -> &[u8] {
        self.head.path.slice(self.bytes)
    }

    /// The request target as sent.
    pub fn target(&self) -> &[u8] {
        self.head.target.slice(self.bytes)
    }

    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.head
            .headers()
            .iter()
            .find(|h| h.name.slice(self.bytes).eq_ignore_ascii_case(name))
            .map(|h| h.value.slice(self.bytes))
    }

    /// The peer as the exchange ABI carries it.
    pub fn peer_addr(&self) -> PeerAddr {
        PeerAddr::new(self.peer)
    }
}

/// What policy decided for a request.
#[derive(Debug)]
pub enum Answer<'p> {
    /// An engine status with its canned text body (404, 405 with `Allow`,
    /// 500 for a failed handler, 503 for a stopped one).
    Canned {
        /// The status.
        status: u16,
        /// The `Allow` value of a 405.
        allow: Option<&'p [u8]>,
    },
    /// Policy's response is in [`Policy::exchange`]: status, headers and a
    /// body (a string, a generator, or a file beneath `files`).
    Exchange {
        /// Where a file body (`ctx.body = { file = ... }`) resolves.
        files: Root,
    },
    /// A file of a static directory: `path` (percent-encoded, in the
    /// request bytes) beneath `root`.
    Static {
        /// The directory.
        root: Root,
        /// The path below the route's prefix.
        path: Span,
    },
    /// Policy sent the request to an upstream (`ctx.upstream`): the answer
    /// is what [`Policy::proxy_head`] and [`Policy::proxy_body`] give once
    /// [`Event::Upstream`] says there is progress.
    Proxy,
}

/// The upstream's answer to a proxied request, as far as it has come.
pub enum ProxyHead<'p> {
    /// Nothing yet: an [`Event::Upstream`] comes when there is.
    Waiting,
    /// The response head: its parsed form over `bytes`.
    Ready {
        /// The parsed head (spans index `bytes`).
        head: &'p keystone_parser::ResponseHead,
        /// The upstream's receive buffer.
        bytes: &'p [u8],
        /// What `ctx.on_response` left (status, headers overriding the
        /// upstream's, or a body replacing it), when the handler set one.
        policy: Option<&'p HttpExchange>,
    },
    /// No response will come: answer `status` (502, 504), already logged.
    Failed {
        /// The status for the client.
        status: u16,
    },
}

impl std::fmt::Debug for ProxyHead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyHead::Waiting => f.write_str("Waiting"),
            ProxyHead::Ready { head, policy, .. } => f
                .debug_struct("Ready")
                .field("status", &head.status)
                .field("policy", &policy.is_some())
                .finish(),
            ProxyHead::Failed { status } => write!(f, "Failed({status})"),
        }
    }
}

/// The next body bytes of a proxied response.
#[derive(Debug)]
pub enum ProxyBody<'p> {
    /// Decoded body bytes; tell [`Policy::proxy_consumed`] how many were
    /// taken.
    Bytes(&'p [u8]),
    /// None right now: an [`Event::Upstream`] comes when there are.
    Waiting,
    /// The body is complete.
    End,
    /// The body broke off (the upstream closed, reset or timed out
    /// mid-body): the client must see it did not end.
    Broken,
}

/// The app's policy for a connection: what to answer (router, Lua, static
/// roots) and the bodies it keeps alive. Implemented by the server over
/// keystone-lua and keystone-router; tests implement it in plain Rust.
pub trait Policy {
    /// Decides the response to a complete request. For
    /// [`Answer::Exchange`], the response stays readable in
    /// [`Policy::exchange`] until [`Policy::expire`].
    fn answer(&mut self, request: &Request<'_>) -> Answer<'_>;

    /// The exchange the last [`Answer::Exchange`] left its response in.
    fn exchange(&self) -> &HttpExchange;

    /// Keeps the body of the last answer (a string, a file path, or a
    /// generator) alive under `slot` until [`Policy::unpin`].
    fn pin(&mut self, slot: u32) -> Result<Pinned, String>;

    /// The connection is done with the exchange of the last answer (called
    /// after every answer, whatever its kind).
    fn expire(&mut self);

    /// Pulls the next chunk of the generator pinned under `slot`.
    fn pull(&mut self, owner: PinOwner, slot: u32) -> Pulled;

    /// Releases what [`Policy::pin`] kept under `slot`.
    fn unpin(&mut self, owner: PinOwner, slot: u32);

    /// The request's response head is committed (counters, access log).
    /// `body_follows`: its body is not all behind the head in the send
    /// buffer (a tail follows: a generator, a file, pinned bytes, a
    /// proxied body or a tunnel), and [`Policy::body_done`] will say when
    /// it is over.
    fn answered(&mut self, request: &Request<'_>, committed: &Committed, body_follows: bool);

    /// The body that followed the head of connection `slot`'s last answer
    /// is over — sent, broken off, or let go as the connection closed —
    /// with `body_bytes` of it queued for the client.
    fn body_done(&mut self, slot: u32, body_bytes: u64) {
        let _ = (slot, body_bytes);
    }

    /// A request the engine refused before policy saw it (a framing error,
    /// a limit) was answered with `committed` (counters only: there is no
    /// request to log).
    fn refused(&mut self, committed: &Committed);

    /// Something to report (a stream aborted, a file shrank, a declared
    /// length that does not match).
    fn log(&mut self, level: Level, message: std::fmt::Arguments<'_>);

    /// The upstream's answer to `request`, which this connection proxied
    /// ([`Answer::Proxy`]); the request is shown again for
    /// `ctx.on_response`. A policy that never proxies keeps the default.
    fn proxy_head(&mut self, request: &Request<'_>) -> ProxyHead<'_> {
        let _ = request;
        ProxyHead::Failed { status: 502 }
    }

    /// The head [`Policy::proxy_head`] gave is written: body bytes follow.
    fn proxy_head_taken(&mut self, slot: u32) {
        let _ = slot;
    }

    /// The next body bytes for connection `slot`.
    fn proxy_body(&mut self, slot: u32) -> ProxyBody<'_> {
        let _ = slot;
        ProxyBody::Broken
    }

    /// `n` of the bytes [`Policy::proxy_body`] gave were queued.
    fn proxy_consumed(&mut self, slot: u32, n: u32) {
        let _ = (slot, n);
    }

    /// Connection `slot` is done with its proxied request: answered, or
    /// gone (the upstream side then closes what is still in progress).
    fn proxy_done(&mut self, slot: u32) {
        let _ = slot;
    }

    /// The rest of connection `slot`'s proxied body may move socket →
    /// pipe → socket without passing through user space: the upstream's
    /// socket and the body bytes still to read from it, once none are
    /// buffered. The upstream side reads no more of it itself; the
    /// connection reports each move ([`Policy::proxy_spliced`]) or that the
    /// body broke ([`Policy::proxy_splice_failed`]). `None`: relay by copy.
    fn proxy_splice(&mut self, slot: u32) -> Option<(RawFd, u64)> {
        let _ = slot;
        None
    }

    /// `n` body bytes of connection `slot`'s spliced body were moved out
    /// of the upstream's socket.
    fn proxy_spliced(&mut self, slot: u32, n: u32) {
        let _ = (slot, n);
    }

    /// Connection `slot`'s spliced body broke off (the upstream closed or
    /// failed before its end).
    fn proxy_splice_failed(&mut self, slot: u32) {
        let _ = slot;
    }

    /// Whether a request body larger than `limits.max_body_bytes` may be
    /// streamed (the policy can proxy): the request is then answered with
    /// [`Request::body_streamed`], and a proxied one's body goes upstream
    /// through [`Policy::proxy_upload`].
    fn streams_bodies(&self) -> bool {
        false
    }

    /// Body bytes of connection `slot`'s streamed request (decoded, when
    /// chunked): returns how many were taken; fewer (0: none) when the
    /// upstream side has no room now, and an [`Event::Upstream`] comes
    /// when it has.
    fn proxy_upload(&mut self, slot: u32, bytes: &[u8]) -> u32 {
        let _ = slot;
        bytes.len() as u32
    }

    /// Connection `slot`'s streamed request body is complete.
    fn proxy_upload_end(&mut self, slot: u32) {
        let _ = slot;
    }
}

/// What the driver does next for a connection. Every intent is executed
/// once; those that complete come back as the [`Event`] named.
#[derive(Debug)]
pub enum Intent<'a> {
    /// Receive into the loan (→ [`Event::Received`]).
    Recv(SpareLoan),
    /// Send (→ [`Event::Sent`]).
    Send(SendBuf),
    /// Read `len` bytes of file `fd` at `offset` into the loan, a part of
    /// the send buffer (→ [`Event::FileRead`]).
    ReadFile {
        /// The open file.
        fd: RawFd,
        /// File offset.
        offset: u64,
        /// Where the bytes go.
        buf: SpareLoan,
        /// Bytes to read (at most the loan's length).
        len: u32,
    },
    /// Splice `len` bytes of file `fd` at `offset` into pipe `into`
    /// (→ [`Event::Spliced`]). Never asked on an encrypted connection
    /// ([`Connection::set_tls`]), nor are the other two splices.
    SpliceFile {
        /// The open file.
        fd: RawFd,
        /// File offset.
        offset: u64,
        /// The pipe's write end.
        into: RawFd,
        /// Bytes to move.
        len: u32,
    },
    /// Splice up to `len` bytes from upstream socket `fd` (a proxied body
    /// the upstream side handed over, [`Policy::proxy_splice`]) into pipe
    /// `into` (→ [`Event::Spliced`]).
    SpliceUpstream {
        /// The upstream connection's socket.
        fd: RawFd,
        /// The pipe's write end.
        into: RawFd,
        /// Bytes to move at most.
        len: u32,
    },
    /// Splice `len` bytes from pipe `from` to the socket
    /// (→ [`Event::Spliced`]).
    SpliceOut {
        /// The pipe's read end.
        from: RawFd,
        /// Bytes to move.
        len: u32,
    },
    /// Open `path` read-only beneath directory `dir`, confined to it
    /// (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`)
    /// (→ [`Event::Opened`]).
    Open {
        /// The root directory.
        dir: RawFd,
        /// Relative path, no NUL.
        path: &'a [u8],
        /// Asked after the confined open answered `-EXDEV`: follow every
        /// symlink (magic links still refused), then answer `-EXDEV` (and
        /// close it) when the file reached is not inside `dir`.
        follow: bool,
    },
    /// `statx` the open file `fd` (→ [`Event::Stated`]).
    Stat {
        /// The file.
        fd: RawFd,
    },
    /// Close a file descriptor the connection owned (no event).
    CloseFile(RawFd),
    /// Cancel the receive in flight (it completes as [`Event::Received`]).
    CancelRecv,
    /// Cancel the output in flight (it completes as its own event).
    CancelOutput,
    /// Shut the socket's write side (FIN) (→ [`Event::ShutDown`]).
    Shutdown,
    /// Close the socket (→ [`Event::Closed`]).
    Close,
    /// The connection is idle with no read in flight: give back what the
    /// driver holds for it (a registered receive window), then deliver
    /// [`Event::Released`], after which its buffers' pages are returned.
    ReleaseIdle,
}

/// What happened to a connection.
#[derive(Debug)]
pub enum Event {
    /// A receive completed: `result` bytes at the loan's start (0: the
    /// peer closed; negative: `-errno`, e.g. `-ECANCELED`).
    Received {
        /// The loan, handed back.
        buf: SpareLoan,
        /// Bytes or `-errno`.
        result: i32,
    },
    /// A send completed: the first `result` bytes went out.
    Sent {
        /// What was sent from, handed back.
        buf: SendBuf,
        /// Bytes or `-errno`.
        result: i32,
    },
    /// A file read completed.
    FileRead {
        /// The loan, handed back.
        buf: SpareLoan,
        /// Bytes (0: the file ended early) or `-errno`.
        result: i32,
    },
    /// A splice completed.
    Spliced {
        /// Bytes or `-errno`.
        result: i32,
    },
    /// An open completed: the descriptor, or `-errno`.
    Opened {
        /// Descriptor or `-errno`.
        result: i32,
    },
    /// A stat completed.
    Stated {
        /// 0 or `-errno`.
        result: i32,
        /// The file's metadata when `result` is 0.
        meta: Option<FileMeta>,
    },
    /// The write side is shut.
    ShutDown {
        /// 0 or `-errno`.
        result: i32,
    },
    /// The socket is closed: the slot is free once nothing else of it is in
    /// flight.
    Closed,
    /// [`Connection::deadline`] has passed.
    Deadline,
    /// The upstream of a proxied request progressed (its head, body bytes,
    /// its end or its failure): ask policy again.
    Upstream,
    /// The worker starts draining.
    Drain,
    /// The driver released what it held for an idle connection
    /// ([`Intent::ReleaseIdle`]).
    Released,
}
