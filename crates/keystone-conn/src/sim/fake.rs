//! A policy in plain Rust for driving connections without Lua: a fixed
//! route table exercising every kind of answer (inline, pinned, streamed,
//! declared-length streams, files chosen by policy, static directories,
//! canned statuses, policy headers). Its bodies are static bytes or small
//! owned strings, so pinning needs no unsafe code.

use std::collections::HashMap;
use std::fmt::Write as _;

use keystone_exchange::{BodyKind, HttpExchange};
use keystone_response::Committed;
use keystone_ringbuf::{PinnedBytes, Span};

use crate::{Answer, Level, PinOwner, Pinned, Policy, Pulled, Request, Root};

/// The large body `GET /big` answers with (pinned: larger than the send
/// buffer).
pub static BIG: [u8; 100_000] = [b'b'; 100_000];
/// The chunks `GET /stream` produces.
pub const STREAM_CHUNKS: [&[u8]; 3] = [b"chunk1", b"chunk2", b"chunk3"];
/// The names `GET /file/NAME` may choose (a policy's paths are its own
/// strings; these are static, so pinning them is safe): plain, nested, a
/// directory, missing, and two that try to leave the root.
pub const FILE_NAMES: [&str; 8] = [
    "page.txt",
    "small.bin",
    "big.bin",
    "sub/inner.txt",
    "sub",
    "missing.txt",
    "../outside.txt",
    "/etc/passwd",
];

/// Writes the site the fake policy's roots are meant to point at, under
/// `dir`: `files/` (where policy files resolve: `page.txt` 12 bytes,
/// `small.bin` 10 KiB, `big.bin` 300 KB — spliced —, `sub/inner.txt`),
/// `public/` (the static directory: `style.css`, `index.html`,
/// `docs/index.html`, `big.bin` 150 KB, and `escape`, a symlink leaving it),
/// and `outside.txt` beside them. File bytes follow [`pattern`].
pub fn write_site(dir: &std::path::Path) -> std::io::Result<()> {
    let files = dir.join("files");
    std::fs::create_dir_all(files.join("sub"))?;
    std::fs::write(files.join("page.txt"), b"policy page\n")?;
    std::fs::write(files.join("small.bin"), pattern(10 * 1024))?;
    std::fs::write(files.join("big.bin"), pattern(300_000))?;
    std::fs::write(files.join("sub/inner.txt"), b"inner\n")?;
    std::fs::write(dir.join("outside.txt"), b"secret\n")?;
    let public = dir.join("public");
    std::fs::create_dir_all(public.join("docs"))?;
    std::fs::write(public.join("style.css"), b"body{color:red}\n")?;
    std::fs::write(public.join("index.html"), b"<h1>index</h1>\n")?;
    std::fs::write(public.join("docs/index.html"), b"<h1>docs</h1>\n")?;
    std::fs::write(public.join("big.bin"), pattern(150_000))?;
    std::os::unix::fs::symlink(dir.join("outside.txt"), public.join("escape"))
}

/// The bytes of the site's binary files: `len` bytes of a pattern that
/// never repeats within 251 bytes (so a misplaced range shows).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// What the fake policy answers:
/// - `GET /` → `hello`; `GET /big` → [`BIG`] (pinned);
/// - `POST /echo` → `len=N hex=...` of the body;
/// - `GET /stream` → [`STREAM_CHUNKS`] pulled one by one;
/// - `GET /declared/N` → a stream declaring `Content-Length: N` that
///   produces 10 bytes (exact at 10, short below... overrun above);
/// - `GET /empty-stream` → a generator that only returns empty chunks;
/// - `GET /tiny-stream` → [`TINY_CHUNKS`] one-byte chunks;
/// - `GET /failing-stream` → one chunk, then the generator fails;
/// - `GET /file/NAME` → policy's file `NAME` beneath `files`, with a policy
///   header; `GET /file-declared/N/NAME` declares `Content-Length: N`;
///   `GET /file-validated/NAME` sets policy's [`POLICY_ETAG`],
///   [`POLICY_LAST_MODIFIED`] and `Accept-Ranges: none`;
/// - `GET /static/PATH` → `PATH` beneath `statics`;
/// - `GET /status/N` → status N with body `s`;
/// - `GET /h` → two policy headers;
/// - `GET /tls` → the TLS facts the exchange was bound with, as
///   `scheme=… protocol=… cipher=… sni=…` (`-` for none);
/// - `GET /fail` → 500; `GET /missing` or anything else → 404;
/// - another method on a GET path → 405 with `Allow: GET, HEAD`.
pub struct FakePolicy {
    exchange: Box<HttpExchange>,
    /// The owned body of the last answer (the exchange points into it).
    body: Vec<u8>,
    /// What `exchange`'s body is, for pinning.
    body_source: BodySource,
    /// Streams in progress, by slot.
    streams: HashMap<u32, Stream>,
    /// Where policy files resolve.
    pub files: Root,
    /// The static directory.
    pub statics: Root,
    /// Pins outstanding (a leak check).
    pub pins: u32,
    /// Every answered response: (status, announced body bytes).
    pub answered: Vec<(u16, u64)>,
    /// The access log's lines: (status, body bytes), written as an answer
    /// is committed, or, for one whose body followed, when it was over.
    pub logged: Vec<(u16, u64)>,
    /// The status of an answer whose body is still going (its line held).
    pub held: Option<u16>,
    /// Statuses of requests refused before policy saw them.
    pub refused: Vec<u16>,
    /// Lines logged.
    pub logs: Vec<String>,
    /// Generator pulls made.
    pub pulls: u32,
}

#[derive(Clone, Copy, Debug)]
enum BodySource {
    Owned,
    Static(&'static [u8]),
}

struct Stream {
    /// Chunks still to produce.
    chunks: Vec<&'static [u8]>,
    /// What happens after them.
    end: StreamEnd,
    /// Empty chunks produced so far (the stuck generator).
    empty_left: u32,
}

#[derive(Clone, Copy)]
enum StreamEnd {
    Nil,
    Error,
}

/// The ETag policy gives `GET /file-validated/NAME`.
pub const POLICY_ETAG: &str = "\"policy-v1\"";
/// The Last-Modified policy gives `GET /file-validated/NAME`.
pub const POLICY_LAST_MODIFIED: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// How many one-byte chunks `GET /tiny-stream` produces.
pub const TINY_CHUNKS: usize = 1000;

/// The 10 bytes a declared-length stream produces, in two chunks.
const DECLARED_CHUNKS: [&[u8]; 2] = [b"01234", b"56789"];

impl FakePolicy {
    /// A policy whose files and static directories are the given roots.
    pub fn new(files: Root, statics: Root) -> FakePolicy {
        FakePolicy {
            exchange: HttpExchange::new_boxed(0),
            body: Vec::new(),
            body_source: BodySource::Owned,
            streams: HashMap::new(),
            files,
            statics,
            pins: 0,
            answered: Vec::new(),
            logged: Vec::new(),
            held: None,
            refused: Vec::new(),
            logs: Vec::new(),
            pulls: 0,
        }
    }

    fn set_owned_body(&mut self, kind: BodyKind) {
        self.exchange.body_kind = kind as u16;
        self.exchange.body_ptr = self.body.as_ptr();
        self.exchange.body_len = self.body.len() as u64;
        self.body_source = BodySource::Owned;
    }

    fn set_static_body(&mut self, bytes: &'static [u8], kind: BodyKind) {
        self.exchange.body_kind = kind as u16;
        self.exchange.body_ptr = bytes.as_ptr();
        self.exchange.body_len = bytes.len() as u64;
        self.body_source = BodySource::Static(bytes);
    }

    fn stream(&mut self, slot: u32, chunks: Vec<&'static [u8]>, end: StreamEnd, empty: u32) {
        self.exchange.body_kind = BodyKind::Stream as u16;
        self.exchange.body_ptr = std::ptr::null();
        self.exchange.body_len = 0;
        self.body_source = BodySource::Owned;
        self.streams.insert(
            slot,
            Stream {
                chunks,
                end,
                empty_left: empty,
            },
        );
    }

    fn respond(&mut self, request: &Request<'_>) -> Result<(), u16> {
        let method = request.method();
        let path = request.path();
        let get = method == b"GET" || method == b"HEAD";
        let text = std::str::from_utf8(path).map_err(|_| 404u16)?;
        if !get && text != "/echo" {
            return Err(405);
        }
        match text {
            "/" => {
                self.body = b"hello".to_vec();
                self.set_owned_body(BodyKind::Inline);
            }
            "/big" => self.set_static_body(&BIG, BodyKind::Inline),
            "/echo" if method == b"POST" => {
                let body = request.body.slice(request.bytes);
                let mut text = format!("len={} hex=", body.len());
                for byte in body {
                    let _ = write!(text, "{byte:02x}");
                }
                self.body = text.into_bytes();
                self.set_owned_body(BodyKind::Inline);
            }
            "/stream" => self.stream(request.slot, STREAM_CHUNKS.to_vec(), StreamEnd::Nil, 0),
            "/empty-stream" => self.stream(request.slot, Vec::new(), StreamEnd::Nil, u32::MAX),
            "/tiny-stream" => self.stream(request.slot, vec![b"x"; TINY_CHUNKS], StreamEnd::Nil, 0),
            "/failing-stream" => self.stream(request.slot, vec![b"first"], StreamEnd::Error, 0),
            "/h" => {
                self.exchange
                    .set_header(b"X-Policy", b"one")
                    .expect("valid");
                self.exchange
                    .add_header(b"Set-Cookie", b"a=1")
                    .expect("valid");
                self.body = b"h".to_vec();
                self.set_owned_body(BodyKind::Inline);
            }
            "/tls" => {
                let tls = &self.exchange.tls;
                let scheme = if tls.is_encrypted() { "https" } else { "http" };
                let sni = tls.sni().map(String::from_utf8_lossy);
                self.body = format!(
                    "scheme={scheme} protocol={} cipher={} sni={}",
                    tls.protocol_name().unwrap_or("-"),
                    tls.cipher_name().unwrap_or("-"),
                    sni.as_deref().unwrap_or("-"),
                )
                .into_bytes();
                self.set_owned_body(BodyKind::Inline);
            }
            "/fail" => return Err(500),
            _ => return self.respond_parameterised(request, text),
        }
        Ok(())
    }

    fn respond_parameterised(&mut self, request: &Request<'_>, text: &str) -> Result<(), u16> {
        if let Some(n) = text.strip_prefix("/declared/") {
            let n: u64 = n.parse().map_err(|_| 404u16)?;
            self.exchange
                .set_header(b"Content-Length", n.to_string().as_bytes())
                .expect("digits");
            self.stream(request.slot, DECLARED_CHUNKS.to_vec(), StreamEnd::Nil, 0);
            return Ok(());
        }
        if let Some(code) = text.strip_prefix("/status/") {
            self.exchange.status = code.parse().map_err(|_| 404u16)?;
            self.body = b"s".to_vec();
            self.set_owned_body(BodyKind::Inline);
            return Ok(());
        }
        let (declared, name) = if let Some(rest) = text.strip_prefix("/file-declared/") {
            let (n, name) = rest.split_once('/').ok_or(404u16)?;
            (Some(n), name)
        } else if let Some(name) = text.strip_prefix("/file/") {
            (None, name)
        } else if let Some(name) = text.strip_prefix("/file-validated/") {
            for (header, value) in [
                ("ETag", POLICY_ETAG),
                ("last-modified", POLICY_LAST_MODIFIED),
                ("Accept-Ranges", "none"),
            ] {
                self.exchange
                    .set_header(header.as_bytes(), value.as_bytes())
                    .expect("valid");
            }
            (None, name)
        } else {
            return Err(404);
        };
        if let Some(n) = declared {
            self.exchange
                .set_header(b"Content-Length", n.as_bytes())
                .map_err(|_| 500u16)?;
        }
        let name = FILE_NAMES
            .iter()
            .find(|known| **known == name)
            .ok_or(404u16)?;
        self.exchange
            .set_header(b"X-Policy", b"file")
            .expect("valid");
        self.set_static_body(name.as_bytes(), BodyKind::File);
        Ok(())
    }
}

impl Policy for FakePolicy {
    fn answer(&mut self, request: &Request<'_>) -> Answer<'_> {
        if let Some(rest) = request.path().strip_prefix(b"/static/") {
            let method = request.method();
            if method != b"GET" && method != b"HEAD" {
                return Answer::Canned {
                    status: 405,
                    allow: Some(b"GET, HEAD"),
                };
            }
            let start = request.head.path.end() - rest.len() as u32;
            return Answer::Static {
                root: self.statics,
                path: Span::new(start, rest.len() as u32),
            };
        }
        self.exchange.bind_with_tls(
            request.bytes,
            request.head,
            &[],
            request.body,
            request.peer_addr(),
            request.tls,
        );
        match self.respond(request) {
            Ok(()) => Answer::Exchange { files: self.files },
            Err(status) => {
                self.exchange.expire();
                Answer::Canned {
                    status,
                    allow: (status == 405).then_some(b"GET, HEAD".as_slice()),
                }
            }
        }
    }

    fn exchange(&self) -> &HttpExchange {
        &self.exchange
    }

    fn pin(&mut self, slot: u32) -> Result<Pinned, String> {
        let bytes = match (self.exchange.body_kind(), self.body_source) {
            (BodyKind::Stream, _) => {
                assert!(
                    self.streams.contains_key(&slot),
                    "pin of a stream never made"
                );
                PinnedBytes::empty()
            }
            (_, BodySource::Static(bytes)) => PinnedBytes::from_static(bytes),
            _ => return Err("the fake policy pins static bodies only".into()),
        };
        self.pins += 1;
        Ok(Pinned {
            owner: PinOwner(1),
            bytes,
        })
    }

    fn expire(&mut self) {
        if self.exchange.is_bound() {
            self.exchange.expire();
        }
    }

    fn pull(&mut self, owner: PinOwner, slot: u32) -> Pulled {
        assert_eq!(owner, PinOwner(1));
        let stream = self.streams.get_mut(&slot).expect("a pinned stream");
        self.pulls += 1;
        if stream.empty_left > 0 {
            stream.empty_left -= 1;
            return Pulled::Chunk(PinnedBytes::empty());
        }
        if !stream.chunks.is_empty() {
            return Pulled::Chunk(PinnedBytes::from_static(stream.chunks.remove(0)));
        }
        match stream.end {
            StreamEnd::Nil => Pulled::End,
            StreamEnd::Error => Pulled::Failed {
                message: "generator broke".into(),
            },
        }
    }

    fn unpin(&mut self, owner: PinOwner, slot: u32) {
        assert_eq!(owner, PinOwner(1));
        assert!(self.pins > 0, "unpin without a pin");
        self.pins -= 1;
        self.streams.remove(&slot);
    }

    fn answered(&mut self, _request: &Request<'_>, committed: &Committed, body_follows: bool) {
        self.answered
            .push((committed.status, committed.body_bytes()));
        assert!(self.held.is_none(), "answered while a body was still going");
        if body_follows {
            self.held = Some(committed.status);
        } else {
            self.logged.push((committed.status, committed.body_bytes()));
        }
    }

    fn body_done(&mut self, _slot: u32, body_bytes: u64) {
        let status = self
            .held
            .take()
            .expect("body_done without a body that followed");
        self.logged.push((status, body_bytes));
    }

    fn refused(&mut self, committed: &Committed) {
        self.refused.push(committed.status);
    }

    fn log(&mut self, level: Level, message: std::fmt::Arguments<'_>) {
        self.logs.push(format!("{level:?}: {message}"));
    }
}
