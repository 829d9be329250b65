//! The access log (`--access-log PATH|-`, off by default): one line per
//! request in nginx's "combined" format plus the request time:
//!
//! ```text
//! $remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time $upstream_addr $upstream_status $upstream_response_time
//! ```
//!
//! The upstream fields are `-` for a request that was not proxied; for a
//! proxied one, the peer that answered (`127.0.0.1:9001`), its status (or
//! the 502/504 Keystone answered when none came) and the seconds from the
//! request to the upstream's answer.
//!
//! A response whose body is all behind its head in the send buffer is
//! logged as it is committed: `$body_bytes_sent` is its length. One whose
//! body follows (a generator, a file, a large string sent from where Lua
//! keeps it, a proxied body, a tunnel) is logged when that body is over,
//! as nginx logs a request when it ends: `$body_bytes_sent` counts the body
//! bytes that were queued for the client (payload bytes, without chunk
//! framing), so a body cut short — the upstream or the generator broke
//! off, the client left — shows how far it got. The line is kept meanwhile
//! in a buffer of the connection slot's own, reused ([`AccessLog::hold`],
//! [`AccessLog::release`]). `$request_time` is the seconds (ms resolution)
//! from the moment the request was complete in the buffer to the moment
//! the line is written: its response committed, or its body over.
//! `$time_local` is when the line is written. Lines collect in
//! a fixed buffer per worker and reach the file in batches through the
//! reactor (an io_uring write when 32 KiB are ready, and once a second),
//! never blocking the worker. While one batch is being written the next
//! fills; when both are full, lines are dropped and counted, so memory
//! stays bounded. A file that cannot be written is reported once; serving
//! goes on.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::time::Instant;

use crate::batches::Batches;

/// Bytes of one batch; a worker holds two.
pub const BATCH_BYTES: usize = 64 * 1024;
/// A batch this full is written without waiting for the tick.
pub const FLUSH_BYTES: usize = 32 * 1024;
/// Longest line kept; longer request lines or agents are truncated.
const LINE_BYTES_MAX: usize = 4 * 1024;

/// One request's fields.
pub struct Entry<'a> {
    /// Client address.
    pub peer: Option<SocketAddr>,
    /// Method, target and version as sent (`GET /x HTTP/1.1`).
    pub method: &'a [u8],
    /// Request target.
    pub target: &'a [u8],
    /// Minor version.
    pub minor_version: u8,
    /// Response status.
    pub status: u16,
    /// Declared body length.
    pub body_bytes: u64,
    /// Referer header.
    pub referer: Option<&'a [u8]>,
    /// User-Agent header.
    pub user_agent: Option<&'a [u8]>,
    /// Seconds.
    pub request_time: f64,
    /// The upstream that answered, for a proxied request.
    pub upstream: Option<UpstreamEntry>,
}

/// The upstream fields of a proxied request's line.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamEntry {
    /// The peer (the last one tried).
    pub addr: SocketAddr,
    /// Its status, or the one Keystone answered when it gave none; 0
    /// (written `-`) when the client left before it answered.
    pub status: u16,
    /// Seconds from the request to the upstream's answer.
    pub response_time: f64,
}

/// A worker's log batches.
pub struct AccessLog {
    /// Where lines go, and the two batches.
    batches: Batches,
    /// Lines dropped because both batches were full.
    pub dropped: u64,
    failed: bool,
    time: TimeLocal,
    line: Vec<u8>,
    /// Per connection slot: the line of a response whose body is still
    /// going (grown to the highest slot seen; each buffer is reused).
    held: Vec<Held>,
}

/// A line waiting for its response's body to end: written but for
/// `$time_local`, `$body_bytes_sent` and `$request_time`.
#[derive(Default)]
struct Held {
    /// `$remote_addr`, then from `] "$request" $status ` on, then from
    /// ` "$http_referer"` to the user agent's closing quote.
    text: Vec<u8>,
    /// End of `$remote_addr` in `text`.
    peer_end: usize,
    /// End of the part before `$body_bytes_sent`.
    status_end: usize,
    /// When the request was complete.
    started: Option<Instant>,
    /// The body length the head declared (written if the slot is reused
    /// before the body's end is heard: nothing better is known).
    declared: u64,
    upstream: Option<UpstreamEntry>,
}

impl AccessLog {
    /// Batches for `fd` (allocated once, here); the log owns `fd` from
    /// now on.
    pub fn new(fd: OwnedFd) -> AccessLog {
        AccessLog {
            batches: Batches::new(fd, BATCH_BYTES),
            dropped: 0,
            failed: false,
            time: TimeLocal::default(),
            line: Vec::with_capacity(LINE_BYTES_MAX),
            held: Vec::new(),
        }
    }

    /// Appends one line (no allocation: fixed buffers).
    pub fn record(&mut self, entry: &Entry<'_>) {
        self.time.refresh();
        self.line.clear();
        let mut line = LineWriter(&mut self.line);
        write_peer(&mut line, entry.peer);
        line.push(b" - - [");
        line.push(self.time.text());
        write_request(&mut line, entry);
        let _ = write!(line, "{}", entry.body_bytes);
        write_agents(&mut line, entry);
        end_line(&mut self.line, entry.request_time, entry.upstream);
        self.push_line();
    }

    /// Keeps the line of `entry`, a response whose body follows its head,
    /// under connection `slot` until [`AccessLog::release`] says how much
    /// of the body went out. A line still held there (its end never heard)
    /// is written first, with its declared length. No allocation once the
    /// slot's buffer has grown to its lines.
    pub fn hold(&mut self, slot: u32, entry: &Entry<'_>, started: Instant) {
        let slot = slot as usize;
        if slot >= self.held.len() {
            self.held.resize_with(slot + 1, Held::default);
        }
        if self.held[slot].started.is_some() {
            let declared = self.held[slot].declared;
            self.release(slot as u32, declared, Instant::now());
        }
        let held = &mut self.held[slot];
        held.text.clear();
        let mut line = LineWriter(&mut held.text);
        write_peer(&mut line, entry.peer);
        held.peer_end = line.0.len();
        write_request(&mut line, entry);
        held.status_end = line.0.len();
        write_agents(&mut line, entry);
        held.started = Some(started);
        held.declared = entry.body_bytes;
        held.upstream = entry.upstream;
    }

    /// The body behind the head of the line held under `slot` is over,
    /// `body_bytes` of it sent: the line is written. Nothing is held
    /// (the response's line was written when it was committed): nothing.
    pub fn release(&mut self, slot: u32, body_bytes: u64, now: Instant) {
        let Some(held) = self.held.get_mut(slot as usize) else {
            return;
        };
        let Some(started) = held.started.take() else {
            return;
        };
        self.time.refresh();
        self.line.clear();
        let mut line = LineWriter(&mut self.line);
        line.push(&held.text[..held.peer_end]);
        line.push(b" - - [");
        line.push(self.time.text());
        line.push(&held.text[held.peer_end..held.status_end]);
        let _ = write!(line, "{body_bytes}");
        line.push(&held.text[held.status_end..]);
        let request_time = now.saturating_duration_since(started).as_secs_f64();
        end_line(&mut self.line, request_time, held.upstream);
        self.push_line();
    }

    fn push_line(&mut self) {
        if !self.batches.push(&self.line) {
            self.dropped += 1;
        }
    }

    /// A batch to write now, if one is ready (`force`: any bytes at all)
    /// and none is in flight. The batch moves into the write and comes back
    /// through [`AccessLog::written`]; lines go into the other one meanwhile.
    pub fn take_batch(&mut self, force: bool) -> Option<Vec<u8>> {
        if !force && self.batches.waiting() < FLUSH_BYTES {
            return None;
        }
        self.batches.take()
    }

    /// The write of `batch` completed with `result`; returns an error
    /// message the first time writing fails.
    pub fn written(&mut self, batch: Vec<u8>, result: i32) -> Option<String> {
        let expected = batch.len();
        let failed = result < 0 || (result as usize) < expected;
        self.batches.written(batch);
        if failed && !self.failed {
            self.failed = true;
            let why = if result < 0 {
                std::io::Error::from_raw_os_error(-result).to_string()
            } else {
                format!("short write ({result} of {expected} bytes)")
            };
            return Some(format!(
                "access log write failed: {why}; further failures are not reported"
            ));
        }
        None
    }

    /// Whether a batch is being written.
    pub fn in_flight(&self) -> bool {
        self.batches.in_flight()
    }

    /// Lines go to `fd` from now on (the access log reopened on SIGHUP);
    /// with a batch in flight on the old descriptor, from its completion on.
    pub fn reopen(&mut self, fd: OwnedFd) {
        self.batches.reopen(fd);
    }

    /// The descriptor the worker's ring writes batches to; valid as long
    /// as this log lives.
    pub fn fd(&self) -> RawFd {
        self.batches.fd()
    }

    /// Writes what is left synchronously (at exit). A failure is dropped:
    /// the process is exiting, and a failing file was reported already.
    /// Lines still held (a response cut at exit) go with their declared
    /// length.
    pub fn flush_blocking(&mut self) {
        let now = Instant::now();
        for slot in 0..self.held.len() {
            let declared = self.held[slot].declared;
            self.release(slot as u32, declared, now);
        }
        self.batches.flush_blocking();
    }
}

/// `$remote_addr`.
fn write_peer(line: &mut LineWriter<'_>, peer: Option<SocketAddr>) {
    match peer {
        Some(peer) => {
            let _ = write!(line, "{}", peer.ip());
        }
        None => line.push(b"-"),
    }
}

/// `] "$request" $status ` (after `$time_local`).
fn write_request(line: &mut LineWriter<'_>, entry: &Entry<'_>) {
    line.push(b"] \"");
    line.escaped(entry.method);
    line.push(b" ");
    line.escaped(entry.target);
    let _ = write!(line, " HTTP/1.{}\" {} ", entry.minor_version, entry.status);
}

/// ` "$http_referer" "$http_user_agent"` (after `$body_bytes_sent`).
fn write_agents(line: &mut LineWriter<'_>, entry: &Entry<'_>) {
    line.push(b" \"");
    line.escaped(entry.referer.unwrap_or(b"-"));
    line.push(b"\" \"");
    line.escaped(entry.user_agent.unwrap_or(b"-"));
    line.push(b"\"");
}

/// ` $request_time` and the upstream fields, then the newline (the line
/// cut to [`LINE_BYTES_MAX`]).
fn end_line(text: &mut Vec<u8>, request_time: f64, upstream: Option<UpstreamEntry>) {
    let mut line = LineWriter(text);
    let _ = write!(line, " {request_time:.3}");
    match upstream {
        Some(upstream) if upstream.status == 0 => {
            let _ = write!(line, " {} - {:.3}", upstream.addr, upstream.response_time);
        }
        Some(upstream) => {
            let _ = write!(
                line,
                " {} {} {:.3}",
                upstream.addr, upstream.status, upstream.response_time
            );
        }
        None => line.push(b" - - -"),
    }
    text.truncate(LINE_BYTES_MAX - 1);
    text.push(b'\n');
}

struct LineWriter<'a>(&'a mut Vec<u8>);

impl LineWriter<'_> {
    fn push(&mut self, bytes: &[u8]) {
        let room = LINE_BYTES_MAX.saturating_sub(self.0.len());
        self.0.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// nginx's escaping: `"`, `\` and bytes outside printable ASCII as `\xHH`.
    fn escaped(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.0.len() + 4 > LINE_BYTES_MAX {
                return;
            }
            if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
                let hex = b"0123456789ABCDEF";
                self.0.extend_from_slice(&[
                    b'\\',
                    b'x',
                    hex[(b >> 4) as usize],
                    hex[(b & 15) as usize],
                ]);
            } else {
                self.0.push(b);
            }
        }
    }
}

impl std::fmt::Write for LineWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// `24/Nov/2026:20:57:21 +0000`, formatted once per second.
#[derive(Default)]
struct TimeLocal {
    secs: u64,
    text: [u8; 26],
}

impl TimeLocal {
    fn refresh(&mut self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now == self.secs && self.text[0] != 0 {
            return;
        }
        self.secs = now;
        let (year, month, day) = keystone_response::civil_from_days((now / 86_400) as i64);
        let rem = now % 86_400;
        let mut out = LineBuf {
            buf: [0; 26],
            len: 0,
        };
        let _ = write!(
            out,
            "{day:02}/{}/{year:04}:{:02}:{:02}:{:02} +0000",
            String::from_utf8_lossy(keystone_response::MONTHS[month as usize - 1]),
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        );
        self.text = out.buf;
    }

    fn text(&self) -> &[u8] {
        &self.text
    }
}

struct LineBuf {
    buf: [u8; 26],
    len: usize,
}

impl std::fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = (self.len + s.len()).min(self.buf.len());
        self.buf[self.len..end].copy_from_slice(&s.as_bytes()[..end - self.len]);
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn dev_null() -> OwnedFd {
        File::create("/dev/null").unwrap().into()
    }

    fn entry() -> Entry<'static> {
        Entry {
            peer: None,
            method: b"GET",
            target: b"/",
            minor_version: 1,
            status: 200,
            body_bytes: 0,
            referer: None,
            user_agent: None,
            request_time: 0.0,
            upstream: None,
        }
    }

    #[test]
    fn combined_line() {
        let mut log = AccessLog::new(dev_null());
        log.record(&Entry {
            peer: Some("127.0.0.1:5555".parse().unwrap()),
            method: b"GET",
            target: b"/a?b=\"c\"",
            minor_version: 1,
            status: 200,
            body_bytes: 13,
            referer: None,
            user_agent: Some(b"curl/8\x01"),
            request_time: 0.0012,
            upstream: None,
        });
        let line = String::from_utf8(log.take_batch(true).unwrap()).unwrap();
        let (start, rest) = line.split_once(" [").unwrap();
        assert_eq!(start, "127.0.0.1 - -");
        let (_, rest) = rest.split_once("] ").unwrap();
        assert_eq!(
            rest,
            "\"GET /a?b=\\x22c\\x22 HTTP/1.1\" 200 13 \"-\" \"curl/8\\x01\" 0.001 - - -\n"
        );
        let mut log = AccessLog::new(dev_null());
        log.record(&Entry {
            upstream: Some(UpstreamEntry {
                addr: "10.0.0.7:9001".parse().unwrap(),
                status: 201,
                response_time: 0.0456,
            }),
            ..entry()
        });
        let line = String::from_utf8(log.take_batch(true).unwrap()).unwrap();
        assert!(
            line.ends_with("\" 0.000 10.0.0.7:9001 201 0.046\n"),
            "{line}"
        );
    }

    #[test]
    fn a_held_line_is_written_with_what_its_body_sent() {
        let mut log = AccessLog::new(dev_null());
        let started = Instant::now();
        let proxied = Entry {
            peer: Some("10.1.2.3:4000".parse().unwrap()),
            status: 200,
            body_bytes: 100,
            user_agent: Some(b"agent \"x\""),
            upstream: Some(UpstreamEntry {
                addr: "10.0.0.7:9001".parse().unwrap(),
                status: 200,
                response_time: 0.25,
            }),
            ..entry()
        };
        log.hold(3, &proxied, started);
        assert!(log.take_batch(true).is_none(), "held, not written");
        log.release(3, 10, started + std::time::Duration::from_millis(1500));
        let line = String::from_utf8(log.take_batch(true).unwrap()).unwrap();
        let (peer, rest) = line.split_once(" - - [").unwrap();
        assert_eq!(peer, "10.1.2.3");
        assert_eq!(
            rest.split_once("] ").unwrap().1,
            "\"GET / HTTP/1.1\" 200 10 \"-\" \"agent \\x22x\\x22\" 1.500 10.0.0.7:9001 200 0.250\n"
        );
        let _ = log.written(line.into_bytes(), 0);
        // Released twice, or for a slot never held: nothing.
        log.release(3, 10, Instant::now());
        log.release(99, 10, Instant::now());
        assert!(log.take_batch(true).is_none());
        // A slot reused before its body's end was heard: the old line goes
        // with its declared length; one held at exit goes at the flush.
        log.hold(3, &proxied, started);
        log.hold(
            3,
            &Entry {
                status: 206,
                ..entry()
            },
            started,
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        log.reopen(file.reopen().unwrap().into());
        log.flush_blocking();
        let written = std::fs::read_to_string(file.path()).unwrap();
        let statuses: Vec<&str> = written
            .lines()
            .map(|line| line.split("\" ").nth(1).unwrap().trim_end_matches(" \"-"))
            .collect();
        assert_eq!(statuses, ["200 100", "206 0"], "{written}");
    }

    #[test]
    fn batches_swap_and_bound_memory() {
        let mut log = AccessLog::new(dev_null());
        let entry = entry();
        assert!(log.take_batch(false).is_none());
        log.record(&entry);
        assert!(log.take_batch(false).is_none(), "below the flush size");
        let batch = log.take_batch(true).unwrap();
        assert!(!batch.is_empty());
        assert!(log.in_flight());
        assert!(
            log.take_batch(true).is_none(),
            "one batch in flight at a time"
        );
        for _ in 0..10_000 {
            log.record(&entry);
        }
        assert!(log.dropped > 0);
        assert!(log.batches.waiting() <= BATCH_BYTES);
        assert_eq!(
            log.written(batch, -libc::EBADF)
                .map(|m| m.contains("Bad file descriptor")),
            Some(true)
        );
        assert!(!log.in_flight());
        let batch = log.take_batch(true).expect("the full batch");
        assert!(log.written(batch, -libc::EBADF).is_none(), "reported once");
    }

    #[test]
    fn flush_blocking_writes_what_is_left() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut log = AccessLog::new(file.reopen().unwrap().into());
        log.record(&entry());
        log.record(&Entry {
            status: 404,
            ..entry()
        });
        assert!(log.take_batch(false).is_none(), "below the flush size");
        log.flush_blocking();
        assert!(log.take_batch(true).is_none(), "nothing left after a flush");
        let written = std::fs::read_to_string(file.path()).unwrap();
        let statuses: Vec<&str> = written
            .lines()
            .map(|line| line.split("\" ").nth(1).unwrap().split(' ').next().unwrap())
            .collect();
        assert_eq!(statuses, ["200", "404"]);
    }
}
