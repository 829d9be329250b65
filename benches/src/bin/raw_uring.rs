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
//! Usage: `raw-uring ADDR [FD_SLOTS [BODY_BYTES]]`, e.g.
//! `raw-uring 127.0.0.1:8081 16384`. With BODY_BYTES, every response
//! carries a body of that many bytes instead (one canned response, sent
//! once per request: the backend of the bench's large proxied-body row).

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd as _;
use std::process::ExitCode;

use io_uring::squeue::Entry;
use io_uring::{cqueue, opcode, types, IoUring, SubmissionQueue, Submitter};

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
    /// Bytes of the current send.
    send_len: u32,
    /// Body mode: responses still owed after the one being sent.
    owed: u32,
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

    fn send(&self, fd: i32) -> Entry {
        let connection = self.connections[fd as usize];
        debug_assert!(connection.sent < connection.send_len);
        let bytes = &self.canned[connection.sent as usize..connection.send_len as usize];
        opcode::Send::new(types::Fd(fd), bytes.as_ptr(), bytes.len() as u32)
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
                [rearm, Some(self.recv(result))]
            }
            TAG_RECV if result <= 0 => [Some(Self::close(fd)), None],
            TAG_RECV => {
                let start = fd as usize * RECV_BYTES;
                let received = &self.buffers[start..start + result as usize];
                let connection = &mut self.connections[fd as usize];
                let count = count_terminators(&mut connection.matched, received);
                assert!(count <= RESPONSES_MAX);
                if count == 0 {
                    return [Some(self.recv(fd)), None];
                }
                connection.sent = 0;
                if self.body_mode {
                    connection.send_len = self.canned.len() as u32;
                    connection.owed = count as u32 - 1;
                } else {
                    connection.send_len = (count * RESPONSE.len()) as u32;
                }
                [Some(self.send(fd)), None]
            }
            TAG_SEND if result < 0 => [Some(Self::close(fd)), None],
            TAG_SEND => {
                let connection = &mut self.connections[fd as usize];
                connection.sent += result as u32;
                debug_assert!(connection.sent <= connection.send_len);
                if connection.sent < connection.send_len {
                    return [Some(self.send(fd)), None];
                }
                if connection.owed > 0 {
                    connection.owed -= 1;
                    connection.sent = 0;
                    return [Some(self.send(fd)), None];
                }
                [Some(self.recv(fd)), None]
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

fn run(address: &str, fd_slots: usize, body_bytes: Option<u32>) -> io::Result<()> {
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (address, slots, body) = match args.as_slice() {
        [address] => (address.as_str(), None, None),
        [address, slots] => (address.as_str(), Some(slots), None),
        [address, slots, body] => (address.as_str(), Some(slots), Some(body)),
        _ => {
            eprintln!("usage: raw-uring ADDR [FD_SLOTS [BODY_BYTES]]");
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
    match run(address, fd_slots, body_bytes) {
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
