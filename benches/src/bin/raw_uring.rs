//! raw-uring: the physical-limit reference for `cargo xtask bench`.
//!
//! One thread, one io_uring: a multishot accept, then per connection a recv
//! into that connection's fixed buffer, a count of the `\r\n\r\n` head
//! terminators in what arrived, and one send of that many canned
//! `Hello, World!` responses. No parsing, no routing, no policy: whatever a
//! real server does on top of this is its cost per request.
//!
//! Design note: connections are slots indexed by fd (lwan's habit), each with
//! a `RECV_BYTES` buffer cut from one slab allocated at startup; the responses
//! come from one read-only slab of `RESPONSES_MAX` canned copies, so a send is
//! a slice of it and nothing is allocated after startup. Each connection has
//! exactly one operation in flight (recv, then send, then recv again), so its
//! buffer is never read by us while the kernel writes it.
//!
//! Not promised: anything HTTP. A request body containing `\r\n\r\n` gets a
//! response of its own; `Connection: close` is ignored. It is a benchmark
//! target for GETs, never a server.
//!
//! Usage: `raw-uring [--recv-multishot | --linked] ADDR [FD_SLOTS [BODY_BYTES]]`,
//! e.g. `raw-uring 127.0.0.1:8081 16384`. With BODY_BYTES, every response
//! carries a body of that many bytes instead (one canned response, sent
//! once per request: the backend of the bench's large proxied-body row).
//!
//! `--recv-multishot` measures an I/O model Keystone does not use (yet):
//! one multishot receive per connection, armed at accept, whose bytes land
//! in a ring of provided buffers shared by all connections (each given
//! back as soon as it is scanned), instead of one receive per request into
//! the connection's own buffer. The bench never passes it; it is the
//! floor that model would set (benches/README.md, thirteenth measurement).
//! A receive may then complete while a send is out; its responses wait
//! for that send.
//!
//! `--linked` measures another: a send that answers everything received
//! goes out with `MSG_WAITALL` and `IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS`,
//! the connection's next receive linked behind it, so a request costs one
//! completion instead of two (a failed or short send posts its error and
//! the receive behind it completes cancelled, which closes). The bench
//! never passes it either (benches/README.md, fourteenth measurement).

use std::alloc::{self, Layout};
use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd as _;
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::squeue::Entry;
use io_uring::types::BufRingEntry;
use io_uring::{cqueue, opcode, squeue, types, IoUring, SubmissionQueue, Submitter};

/// Receive buffer per connection: one page. A wrk ×16 pipelined burst of
/// ~40-byte GETs is ~700 bytes, so a page holds several bursts.
const RECV_BYTES: usize = 4096;

/// The canned response: the same bytes on the wire as a minimal server
/// answering `GET /` with `Hello, World!`.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: raw-uring\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";

/// Most terminators one recv can complete: each needs 4 bytes, except one
/// left over from the previous recv, which the first byte can finish:
/// `1 + (RECV_BYTES - 1) / 4`, which is `RECV_BYTES.div_ceil(4)`.
const RESPONSES_MAX: usize = RECV_BYTES.div_ceil(4);
const _: () = assert!((RECV_BYTES - 1) / 4 < RESPONSES_MAX);
// Send lengths are u32 in the SQE.
const _: () = assert!(RESPONSES_MAX * RESPONSE.len() < u32::MAX as usize);

/// Submission queue entries; a full queue is submitted and reused.
const RING_ENTRIES: u32 = 4096;
/// Completion queue entries: at most one op per connection plus the accept
/// is in flight, so 32 Ki covers 10,000 connections with room to spare (and
/// the kernel buffers overflow rather than drop since 5.5).
const CQ_ENTRIES: u32 = 32 * 1024;
/// Listen backlog, as Keystone's: 10,000 connects in a burst must not be
/// refused while we are busy.
const LISTEN_BACKLOG: i32 = 4096;
/// Fd slots when none are given: enough for the 10,000-connection RSS test.
const FD_SLOTS_DEFAULT: usize = 16 * 1024;
/// Fd slots allowed on the command line: 1 Mi slots is 4 GiB of address
/// space for buffers (touched only as connections use them).
const FD_SLOTS_MAX: usize = 1024 * 1024;

/// Provided buffers of `--recv-multishot`, `RECV_BYTES` each: a buffer is
/// given back as soon as its bytes are scanned, so the ring only runs dry
/// when more receives than this complete in one turn of the loop — at
/// most one per connection, and the bench's largest row has 4,096 (a dry
/// ring ends a connection's multishot receive with `ENOBUFS` and it is
/// armed again; with 256 the 4,096-connection row lost to one receive per
/// request, benches/README.md).
/// Pages are touched only as buffers are used. A power of two, as the
/// kernel requires.
const PROVIDED_BUFFERS: u16 = 4096;
const _: () = assert!(PROVIDED_BUFFERS.is_power_of_two());
/// The provided-buffer group the multishot receives take from.
const BUFFER_GROUP: u16 = 0;

/// Operation tags in the high half of `user_data`; the fd is the low half.
const TAG_ACCEPT: u64 = 1 << 32;
const TAG_RECV: u64 = 2 << 32;
const TAG_SEND: u64 = 3 << 32;
const TAG_CLOSE: u64 = 4 << 32;
const TAG_MASK: u64 = 0xffff_ffff << 32;

/// Per-connection state besides its buffer.
#[derive(Clone, Copy, Debug, Default)]
struct Connection {
    /// How much of `\r\n\r\n` the bytes so far end with (0..=3).
    matched: u8,
    /// Bytes of the current send already written.
    sent: u32,
    /// Bytes of the current send (0: no send is out).
    send_len: u32,
    /// Responses still owed after the send that is out (body mode: one
    /// per send; `--recv-multishot`: requests that arrived during it).
    owed: u32,
}

/// `--recv-multishot`'s ring of provided buffers: the ring's entries (one
/// page-aligned allocation the kernel reads) and the buffers they name.
struct ProvidedRing {
    entries: NonNull<BufRingEntry>,
    buffers: Vec<u8>,
    /// Entries published so far (the ring's tail, wrapping).
    tail: u16,
}

impl ProvidedRing {
    fn layout() -> Layout {
        let bytes = usize::from(PROVIDED_BUFFERS) * std::mem::size_of::<BufRingEntry>();
        Layout::from_size_align(bytes, 4096).expect("a page-aligned ring layout")
    }

    fn new() -> ProvidedRing {
        let layout = Self::layout();
        // SAFETY: the layout has a non-zero size; the zeroed memory is a
        // valid array of `BufRingEntry` (plain integers) and is freed only
        // in `drop`, with the same layout.
        let entries = unsafe { alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
        let entries = NonNull::new(entries).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        let mut ring = ProvidedRing {
            entries,
            buffers: vec![0; usize::from(PROVIDED_BUFFERS) * RECV_BYTES],
            tail: 0,
        };
        for id in 0..PROVIDED_BUFFERS {
            ring.give_back(id);
        }
        ring
    }

    /// The bytes a completion says buffer `id` received.
    fn received(&self, id: u16, len: usize) -> &[u8] {
        let start = usize::from(id) * RECV_BYTES;
        &self.buffers[start..start + len]
    }

    /// Hands buffer `id` back to the kernel: the next entry names it, then
    /// the tail moves past it (a release store, as liburing's
    /// `io_uring_buf_ring_advance`).
    fn give_back(&mut self, id: u16) {
        assert!(id < PROVIDED_BUFFERS);
        let index = usize::from(self.tail & (PROVIDED_BUFFERS - 1));
        let address = self.buffers[usize::from(id) * RECV_BYTES..].as_ptr() as u64;
        // SAFETY: `index` is inside the allocation of PROVIDED_BUFFERS
        // entries; the kernel reads an entry only once the tail has moved
        // past it, and this entry's old buffer was consumed (it is the one
        // being given back, or the ring is being filled).
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        entry.set_addr(address);
        entry.set_len(RECV_BYTES as u32);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lies in the first entry of the live,
        // initialized ring; the kernel reads it concurrently, so it is
        // written only through an atomic of its size and alignment.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for ProvidedRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the io_uring that
        // read it is dropped first (see `run`).
        unsafe { alloc::dealloc(self.entries.as_ptr().cast(), Self::layout()) };
    }
}

struct Responder {
    listen_fd: i32,
    /// `RECV_BYTES` per fd slot, allocated zeroed (pages touched on use).
    buffers: Vec<u8>,
    connections: Vec<Connection>,
    /// `RESPONSES_MAX` copies of `RESPONSE`, read-only after startup; in
    /// body mode one response with its large body.
    canned: Vec<u8>,
    /// Body mode: each request is answered by all of `canned`, one send
    /// sequence per response.
    body_mode: bool,
    /// `--recv-multishot`: the provided buffers receives land in.
    provided: Option<ProvidedRing>,
    /// `--linked`: a send that answers everything received goes out with
    /// the next receive linked behind it and no completion of its own.
    linked: bool,
}

/// Counts complete `\r\n\r\n` sequences in `bytes`, continuing from
/// `matched` (the length of the terminator prefix the previous bytes ended
/// with) and updating it.
fn count_terminators(matched: &mut u8, bytes: &[u8]) -> usize {
    let mut count = 0;
    let mut state = *matched;
    for &byte in bytes {
        state = match (state, byte) {
            (0 | 2, b'\r') => state + 1,
            (1, b'\n') => 2,
            (3, b'\n') => {
                count += 1;
                0
            }
            (_, b'\r') => 1,
            _ => 0,
        };
    }
    debug_assert!(state <= 3);
    *matched = state;
    count
}

/// Pushes `entry`, submitting once to make room if the queue is full.
///
/// Every entry we build points into `Responder::buffers` or
/// `Responder::canned`, which outlive the ring (see `run`).
fn push(sq: &mut SubmissionQueue<'_>, submitter: &Submitter<'_>, entry: &Entry) -> io::Result<()> {
    // SAFETY: the buffers an entry names live in the Responder, which is
    // declared before the ring in `run` and so dropped after it; each
    // connection has one op in flight, so no buffer is reused early.
    if unsafe { sq.push(entry) }.is_ok() {
        return Ok(());
    }
    sq.sync();
    submitter.submit()?;
    sq.sync();
    // SAFETY: as above.
    let pushed = unsafe { sq.push(entry) };
    assert!(pushed.is_ok(), "submission queue full right after submit");
    Ok(())
}

impl Responder {
    fn accept(&self) -> Entry {
        opcode::AcceptMulti::new(types::Fd(self.listen_fd))
            .build()
            .user_data(TAG_ACCEPT)
    }

    fn recv(&mut self, fd: i32) -> Entry {
        let start = fd as usize * RECV_BYTES;
        let buffer = &mut self.buffers[start..start + RECV_BYTES];
        opcode::Recv::new(types::Fd(fd), buffer.as_mut_ptr(), RECV_BYTES as u32)
            .build()
            .user_data(TAG_RECV | fd as u64)
    }

    fn recv_multishot(fd: i32) -> Entry {
        opcode::RecvMulti::new(types::Fd(fd), BUFFER_GROUP)
            .build()
            .user_data(TAG_RECV | fd as u64)
    }

    /// The first receive of a connection, or the next one.
    fn arm_recv(&mut self, fd: i32) -> Entry {
        match self.provided {
            Some(_) => Self::recv_multishot(fd),
            None => self.recv(fd),
        }
    }

    /// Starts the send of up to `count` responses (body mode: one, the
    /// rest owed).
    fn start_send(&mut self, fd: i32, count: u32) -> Entry {
        let connection = &mut self.connections[fd as usize];
        debug_assert!(count > 0 && connection.send_len == 0);
        connection.sent = 0;
        if self.body_mode {
            connection.send_len = self.canned.len() as u32;
            connection.owed = count - 1;
        } else {
            let now = count.min(RESPONSES_MAX as u32);
            connection.send_len = now * RESPONSE.len() as u32;
            connection.owed = count - now;
        }
        self.send(fd)
    }

    fn send(&self, fd: i32) -> Entry {
        let connection = self.connections[fd as usize];
        debug_assert!(connection.sent < connection.send_len);
        let bytes = &self.canned[connection.sent as usize..connection.send_len as usize];
        opcode::Send::new(types::Fd(fd), bytes.as_ptr(), bytes.len() as u32)
            .flags(if self.linked { libc::MSG_WAITALL } else { 0 })
            .build()
            .user_data(TAG_SEND | fd as u64)
    }

    fn close(fd: i32) -> Entry {
        opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(TAG_CLOSE | fd as u64)
    }

    /// Handles one completion; returns the follow-up operations (at most two).
    fn complete(&mut self, user_data: u64, result: i32, flags: u32) -> [Option<Entry>; 2] {
        let fd = (user_data & !TAG_MASK) as i32;
        match user_data & TAG_MASK {
            TAG_ACCEPT => {
                let rearm = (!cqueue::more(flags)).then(|| self.accept());
                if result < 0 {
                    return [rearm, None];
                }
                if result as usize >= self.connections.len() {
                    return [rearm, Some(Self::close(result))];
                }
                self.connections[result as usize] = Connection::default();
                [rearm, Some(self.arm_recv(result))]
            }
            // The provided buffers ran dry this turn: receive again.
            TAG_RECV if result == -libc::ENOBUFS && self.provided.is_some() => {
                [Some(Self::recv_multishot(fd)), None]
            }
            TAG_RECV if result <= 0 => [Some(Self::close(fd)), None],
            TAG_RECV => {
                let connection = &mut self.connections[fd as usize];
                let (count, rearm) = match &mut self.provided {
                    None => {
                        let start = fd as usize * RECV_BYTES;
                        let received = &self.buffers[start..start + result as usize];
                        (count_terminators(&mut connection.matched, received), None)
                    }
                    Some(provided) => {
                        let id = cqueue::buffer_select(flags)
                            .expect("a multishot receive names its buffer");
                        let count = count_terminators(
                            &mut connection.matched,
                            provided.received(id, result as usize),
                        );
                        provided.give_back(id);
                        (
                            count,
                            (!cqueue::more(flags)).then(|| Self::recv_multishot(fd)),
                        )
                    }
                };
                assert!(count <= RESPONSES_MAX);
                let count = count as u32;
                if count == 0 {
                    // Own buffers: receive again. Multishot: still armed
                    // unless the kernel ended it.
                    return [
                        rearm.or_else(|| self.provided.is_none().then(|| self.recv(fd))),
                        None,
                    ];
                }
                if connection.send_len != 0 {
                    // Multishot only: a send is out; these wait for it.
                    connection.owed += count;
                    return [rearm, None];
                }
                let send = self.start_send(fd, count);
                if self.linked && self.connections[fd as usize].owed == 0 {
                    // The receive starts when the whole send is done
                    // (`MSG_WAITALL`); a send that fails posts its error
                    // and cancels the receive, whose completion closes.
                    self.connections[fd as usize].send_len = 0;
                    let send = send.flags(squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS);
                    return [Some(send), Some(self.recv(fd))];
                }
                [Some(send), rearm]
            }
            // `--linked`: the failed send's receive, cancelled, closes.
            TAG_SEND if self.linked && self.connections[fd as usize].send_len == 0 => [None, None],
            TAG_SEND if result < 0 => [Some(Self::close(fd)), None],
            TAG_SEND => {
                let connection = &mut self.connections[fd as usize];
                connection.sent += result as u32;
                debug_assert!(connection.sent <= connection.send_len);
                if connection.sent < connection.send_len {
                    return [Some(self.send(fd)), None];
                }
                connection.send_len = 0;
                if connection.owed > 0 {
                    let owed = std::mem::take(&mut connection.owed);
                    return [Some(self.start_send(fd, owed)), None];
                }
                // Multishot: the receive is still armed.
                [self.provided.is_none().then(|| self.recv(fd)), None]
            }
            TAG_CLOSE => [None, None],
            tag => unreachable!("unknown tag {tag:#x}"),
        }
    }
}

/// One response with a `body_bytes` body (a repeating pattern).
fn body_response(body_bytes: u32) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nServer: raw-uring\r\nContent-Type: application/octet-stream\r\nContent-Length: {body_bytes}\r\n\r\n"
    )
    .into_bytes();
    response.extend((0..body_bytes).map(|i| (i % 251) as u8));
    response
}

fn run(
    address: &str,
    fd_slots: usize,
    body_bytes: Option<u32>,
    multishot: bool,
    linked: bool,
) -> io::Result<()> {
    assert!(fd_slots > 0 && fd_slots <= FD_SLOTS_MAX);
    let listener = TcpListener::bind(address)?;
    // SAFETY: listen(2) on the fd `listener` owns and keeps open; calling it
    // again on a listening socket only raises the backlog.
    let listened = unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) };
    if listened != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut responder = Responder {
        listen_fd: listener.as_raw_fd(),
        buffers: vec![0; fd_slots * RECV_BYTES],
        connections: vec![Connection::default(); fd_slots],
        canned: match body_bytes {
            Some(bytes) => body_response(bytes),
            None => RESPONSE.repeat(RESPONSES_MAX),
        },
        body_mode: body_bytes.is_some(),
        provided: multishot.then(ProvidedRing::new),
        linked,
    };
    // Declared after `responder`, so dropped before it: no op can outlive
    // the buffers it names.
    let mut ring: IoUring = IoUring::builder()
        // One thread submits, and completions are reaped only when it
        // enters the kernel anyway: no task-work interrupts (Keystone's
        // reactor sets the same; kernels before 6.0 refuse them).
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_cqsize(CQ_ENTRIES)
        .build(RING_ENTRIES)
        .or_else(|_| {
            IoUring::builder()
                .setup_cqsize(CQ_ENTRIES)
                .build(RING_ENTRIES)
        })?;
    let (submitter, mut sq, mut cq) = ring.split();
    if let Some(provided) = &responder.provided {
        // SAFETY: the entries are a page-aligned array of PROVIDED_BUFFERS
        // that `responder` keeps alive, and frees, only after the ring is
        // dropped; every buffer they name lives as long.
        unsafe {
            submitter.register_buf_ring_with_flags(
                provided.entries.as_ptr() as u64,
                PROVIDED_BUFFERS,
                BUFFER_GROUP,
                0,
            )
        }?;
    }
    push(&mut sq, &submitter, &responder.accept())?;
    eprintln!("raw-uring listening on {address}");
    // The event loop: the one loop meant to run until the process is killed.
    loop {
        sq.sync();
        match submitter.submit_and_wait(1) {
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(libc::EINTR) => continue,
            Err(error) => return Err(error),
        }
        cq.sync();
        for completion in &mut cq {
            let follow_ups = responder.complete(
                completion.user_data(),
                completion.result(),
                completion.flags(),
            );
            for entry in follow_ups.iter().flatten() {
                push(&mut sq, &submitter, entry)?;
            }
        }
    }
}

/// Largest body of body mode: one canned response, sent whole per request.
const BODY_BYTES_MAX: u32 = 64 << 20;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let multishot = args.first().is_some_and(|arg| arg == "--recv-multishot");
    if multishot {
        args.remove(0);
    }
    let linked = !multishot && args.first().is_some_and(|arg| arg == "--linked");
    if linked {
        args.remove(0);
    }
    let (address, slots, body) = match args.as_slice() {
        [address] => (address.as_str(), None, None),
        [address, slots] => (address.as_str(), Some(slots), None),
        [address, slots, body] => (address.as_str(), Some(slots), Some(body)),
        _ => {
            eprintln!(
                "usage: raw-uring [--recv-multishot | --linked] ADDR [FD_SLOTS [BODY_BYTES]]"
            );
            return ExitCode::from(2);
        }
    };
    let fd_slots = match slots.map(|slots| slots.parse::<usize>()) {
        None => FD_SLOTS_DEFAULT,
        Some(Ok(slots)) if (1..=FD_SLOTS_MAX).contains(&slots) => slots,
        Some(_) => {
            eprintln!("raw-uring: FD_SLOTS must be 1..={FD_SLOTS_MAX}, got {slots:?}");
            return ExitCode::from(2);
        }
    };
    let body_bytes = match body.map(|body| body.parse::<u32>()) {
        None => None,
        Some(Ok(bytes)) if (1..=BODY_BYTES_MAX).contains(&bytes) => Some(bytes),
        Some(_) => {
            eprintln!("raw-uring: BODY_BYTES must be 1..={BODY_BYTES_MAX}, got {body:?}");
            return ExitCode::from(2);
        }
    };
    match run(address, fd_slots, body_bytes, multishot, linked) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("raw-uring: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(chunks: &[&[u8]], expected: &[usize]) {
        let mut matched = 0;
        let counts: Vec<usize> = chunks
            .iter()
            .map(|chunk| count_terminators(&mut matched, chunk))
            .collect();
        assert_eq!(counts, expected, "chunks {chunks:?}");
    }

    #[test]
    fn counts_terminators_across_chunks() {
        check(&[b"GET / HTTP/1.1\r\n\r\n"], &[1]);
        check(
            &[b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\n"],
            &[2],
        );
        check(&[b"GET /\r\n\r", b"\n"], &[0, 1]);
        check(&[b"\r", b"\n", b"\r", b"\n"], &[0, 0, 0, 1]);
        check(&[b"\r\n\r\r\n\r\n"], &[1]);
        check(&[b"\r\n\n\r\n"], &[0]);
        check(&[b"", b"\r\n\r\n\r\n\r\n"], &[0, 2]);
    }

    /// Starts a responder on a free loopback port (its thread runs until
    /// the test process exits) and connects to it.
    fn start(multishot: bool, linked: bool) -> std::net::TcpStream {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|probe| probe.local_addr())
            .expect("a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        let serving = address.clone();
        std::thread::spawn(move || run(&serving, 64, None, multishot, linked));
        for _ in 0..200 {
            if let Ok(stream) = std::net::TcpStream::connect(&address) {
                return stream;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("raw-uring did not listen on {address}");
    }

    /// Writes `chunks` (pausing between them, so each is its own receive)
    /// and reads back `expected` canned responses, exactly.
    fn answers((multishot, linked): (bool, bool), chunks: &[&[u8]], expected: usize) {
        use std::io::{Read as _, Write as _};
        let mut stream = start(multishot, linked);
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        for chunk in chunks {
            stream.write_all(chunk).expect("write");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut received = vec![0; expected * RESPONSE.len()];
        stream.read_exact(&mut received).expect("every response");
        assert_eq!(received, RESPONSE.repeat(expected));
        stream
            .set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .expect("timeout");
        let mut more = [0; 1];
        assert!(
            stream.read(&mut more).is_err(),
            "no response beyond the requests sent"
        );
    }

    #[test]
    fn answers_split_and_pipelined_requests_in_every_mode() {
        let burst = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".repeat(300);
        // (multishot, linked): the default, `--recv-multishot`, `--linked`.
        for mode in [(false, false), (true, false), (false, true)] {
            answers(mode, &[b"GET / HTTP/1.1\r\n\r\n"], 1);
            answers(
                mode,
                &[b"GET / HTTP/1.1\r\n\r", b"\nGET / HT", b"TP/1.1\r\n\r\n"],
                2,
            );
            // More than one receive buffer's worth at once: several
            // receives, and with multishot some land while a send is out.
            answers(mode, &[&burst], 300);
        }
    }

    #[test]
    fn more_receives_than_provided_buffers_are_answered() {
        use std::io::{Read as _, Write as _};
        // One request per receive, each answered before the next is
        // written: the ring only lasts if every buffer is given back.
        let mut stream = start(true, false);
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut received = vec![0; RESPONSE.len()];
        for _ in 0..3 * usize::from(PROVIDED_BUFFERS) {
            stream.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
            stream.read_exact(&mut received).expect("a response");
            assert_eq!(received, RESPONSE);
        }
    }

    #[test]
    fn a_full_buffer_of_terminators_fits_the_canned_slab() {
        let burst = b"\r\n\r\n".repeat(RECV_BYTES / 4);
        let mut matched = 0;
        assert_eq!(count_terminators(&mut matched, &burst), RESPONSES_MAX);
        let mut matched = 3;
        let mut bytes = vec![b'\n'];
        bytes.extend_from_slice(&burst[..RECV_BYTES - 1]);
        assert!(count_terminators(&mut matched, &bytes) <= RESPONSES_MAX);
    }
}
