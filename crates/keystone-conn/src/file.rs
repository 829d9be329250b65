//! File answers: a static directory's file or one policy chose. The
//! decisions (confinement, validators, conditionals, ranges) are
//! keystone-files'; this module sequences them with the open and stat the
//! driver performs (`Intent::Open`, `Intent::Stat`), the worker's open-file
//! cache, and the head the Response Builder writes. A cache hit answers at
//! once; a miss keeps the request unconsumed until its file is open, with
//! policy's header lines stashed ahead in the send buffer (the exchange
//! serves other connections meanwhile) and a Lua-chosen path pinned.

use std::os::fd::RawFd;
use std::time::Instant;

use keystone_files::{
    content_type, decide, http_date_secs, Conditions, Current, FileCache, FileError, FileKind,
    FileMeta, Handle, Insert, NextStep, RelativePath, Validators, INDEX_FILE,
};
use keystone_parser::text::trim_ows;
use keystone_response::{
    has_body, policy_line, write_head_around, write_head_spec, write_policy_lines, write_redirect,
    BodyLength, Committed, Framing, HeadSpec, PolicyLines, CONTENT_RANGE_BYTES,
};
use keystone_ringbuf::{PinnedBytes, Span};

use crate::answer::Commit;
use crate::connection::Reading;
use crate::read::Complete;
use crate::{Connection, Context, Intent, PinOwner, Policy, Root};

/// Where a file answer's path comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FileSource {
    /// A static directory's route: the percent-encoded path in the request.
    Static {
        /// The directory.
        root: Root,
        /// The path below the route's prefix, in the request bytes.
        path: Span,
    },
    /// `ctx.body = { file = ... }`: the path is the exchange's body.
    Policy {
        /// Where policy's paths resolve.
        root: Root,
    },
}

/// A file being answered with: a cache entry's, or one of our own (not
/// cacheable), with what its head needs.
#[derive(Debug)]
pub(crate) enum FileRef {
    /// A use of a cached descriptor.
    Cached(Handle),
    /// A descriptor the connection owns and closes after use.
    Owned(OwnedFile),
}

/// An uncached open file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OwnedFile {
    fd: RawFd,
    meta: FileMeta,
    content_type: &'static str,
    validators: Validators,
}

impl FileRef {
    /// The descriptor to read.
    pub(crate) fn fd(&self, cache: &FileCache) -> RawFd {
        match self {
            FileRef::Cached(handle) => cache.get(handle).fd,
            FileRef::Owned(file) => file.fd,
        }
    }

    fn info(&self, cache: &FileCache) -> (FileMeta, &'static str, Validators) {
        match self {
            FileRef::Cached(handle) => {
                let file = cache.get(handle);
                (file.meta, file.content_type, file.validators)
            }
            FileRef::Owned(file) => (file.meta, file.content_type, file.validators),
        }
    }

    /// Done with the file: a descriptor to close, if one is ours now.
    pub(crate) fn release(self, cache: &mut FileCache) -> Option<RawFd> {
        match self {
            FileRef::Cached(handle) => cache.release(handle),
            FileRef::Owned(file) => Some(file.fd),
        }
    }
}

/// `EXDEV`: what `openat2(RESOLVE_BENEATH)` answers for a path that would
/// leave (or jump out of) its directory.
const EXDEV: i32 = 18;

/// A file answer waiting for its file to open.
#[derive(Debug)]
pub(crate) struct PendingFile {
    /// The request's place in the receive buffer.
    body: Span,
    total: u32,
    framing: Framing,
    started: Instant,
    source: PendingSource,
    step: Step,
    /// The path opened is the directory's index.
    is_index: bool,
    /// The confined open was refused (`-EXDEV`: a symlink whose target is
    /// absolute, or relative and outside); this open follows every link
    /// and the driver checks the file it reached is inside the root.
    follow: bool,
}

#[derive(Debug)]
enum PendingSource {
    Static {
        root: Root,
        path: Span,
    },
    Policy {
        root: Root,
        /// The path, pinned in Lua's memory until the answer is committed.
        path: PinnedBytes,
        owner: PinOwner,
        status: u16,
        declared: Option<u64>,
        /// Policy's header lines, stashed at this absolute offset of the
        /// send buffer (at or past its tail, uncommitted).
        lines_at: u32,
        lines: PolicyLines,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Open the path (or its index).
    Open,
    /// The open is in flight.
    Opening,
    /// Stat the open descriptor.
    Stat(RawFd),
    /// The stat is in flight.
    Stating(RawFd),
}

/// Where policy's header lines come from when a file head is written.
enum Lines {
    /// A static file: none.
    None,
    /// Straight from the exchange (answered at once).
    Exchange,
    /// Stashed in the send buffer while the file opened.
    Stashed {
        lines_at: u32,
        lines: PolicyLines,
        declared: Option<u64>,
    },
}

impl PendingSource {
    fn root(&self) -> Root {
        match self {
            PendingSource::Static { root, .. } | PendingSource::Policy { root, .. } => *root,
        }
    }
}

impl Connection {
    /// Answers with a file: at once on a cache hit (`Some`), else the
    /// answer waits for the open (`None`, the request stays in `reading`).
    pub(crate) fn answer_file<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
        complete: &Complete,
        framing: Framing,
        source: FileSource,
        status: Option<u16>,
    ) -> Option<Commit> {
        let (root, path) = match source {
            FileSource::Static { root, path } => (
                root,
                RelativePath::new(path.slice(self.recv.filled()), true),
            ),
            FileSource::Policy { root } => {
                let raw = cx.policy.exchange().response_body().unwrap_or(&[]);
                (root, RelativePath::new(raw, false))
            }
        };
        let path = match path {
            Ok(path) => path,
            Err(err) => return Some(self.file_refused(cx, framing, source, err)),
        };
        if let FileSource::Static { .. } = source {
            // A prefix's own directory (`["/assets"]` asked as `/assets`)
            // is a directory without its slash whatever the cache holds
            // (its index is cached under `.`, the slash form's key too).
            if path.as_bytes() == b"." && !self.asked_with_slash(cx) {
                return Some(Commit {
                    committed: self.queue_redirect(cx, framing),
                    close: false,
                });
            }
        }
        if let Some(handle) = cx.shared.files.lookup(root.id, &path, cx.now) {
            let lines = match source {
                FileSource::Static { .. } => Lines::None,
                FileSource::Policy { .. } => Lines::Exchange,
            };
            return Some(self.commit_file(cx, framing, FileRef::Cached(handle), status, lines));
        }
        let pending_source = match source {
            FileSource::Static { root, path } => PendingSource::Static { root, path },
            FileSource::Policy { root } => {
                let exchange = cx.policy.exchange();
                let declared = exchange.declared_length();
                let lines_at = self.send.tail();
                let stashed =
                    write_policy_lines(exchange.response_headers(), self.send.spare_mut());
                let lines = match stashed {
                    Ok(lines) => lines,
                    Err(err) => {
                        let committed =
                            self.fail(cx, framing, format_args!("invalid response: {err}"));
                        return Some(Commit {
                            committed,
                            close: false,
                        });
                    }
                };
                let pinned = match cx.policy.pin(self.slot) {
                    Ok(pinned) => pinned,
                    Err(err) => {
                        let committed =
                            self.fail(cx, framing, format_args!("cannot pin a file path: {err}"));
                        return Some(Commit {
                            committed,
                            close: false,
                        });
                    }
                };
                PendingSource::Policy {
                    root,
                    path: pinned.bytes,
                    owner: pinned.owner,
                    status: status.expect("policy files have policy's status"),
                    declared,
                    lines_at,
                    lines,
                }
            }
        };
        self.answering.set(Some(PendingFile {
            body: complete.body,
            total: complete.total,
            framing,
            started: cx.now,
            source: pending_source,
            step: Step::Open,
            is_index: false,
            follow: false,
        }));
        self.reading = Reading::Answering;
        None
    }

    /// Whether the request's URL path (as sent, in the parsed head) ends
    /// with a slash.
    fn asked_with_slash<P: Policy>(&self, cx: &Context<'_, P>) -> bool {
        cx.shared
            .head
            .path
            .slice(self.recv.filled())
            .ends_with(b"/")
    }

    /// `301` to the request's path with a slash added (and its query):
    /// a directory asked for without one. A `Location` too long for the
    /// send buffer's headroom (a `--max-uri-bytes` raised past it) is a
    /// 414 instead.
    fn queue_redirect<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
        framing: Framing,
    ) -> Committed {
        let head = &cx.shared.head;
        let bytes = self.recv.filled();
        let question: &[u8] = if head.has_query { b"?" } else { b"" };
        let location = [
            head.path.slice(bytes),
            b"/",
            question,
            head.query.slice(bytes),
        ];
        match write_redirect(&location, framing, &cx.shared.date, self.send.spare_mut()) {
            Ok(committed) => {
                self.send.commit(committed.bytes as u32);
                committed
            }
            Err(_) => self.queue_error(cx, 414, None, framing),
        }
    }

    /// A path refused before any open (traversal, NUL, too long).
    fn file_refused<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
        framing: Framing,
        source: FileSource,
        err: FileError,
    ) -> Commit {
        if let FileSource::Policy { .. } = source {
            let path = cx.policy.exchange().response_body().unwrap_or(&[]);
            let shown = String::from_utf8_lossy(path).into_owned();
            self.log_request_error(cx, format_args!("ctx.body file {shown:?}: {err:?}"));
        }
        Commit {
            committed: self.queue_error(cx, err.status(), None, framing),
            close: false,
        }
    }

    /// The open or stat a pending file answer needs next.
    ///
    /// Out of line: the paths it builds are 4-KiB values on its stack, and
    /// inlined into the driver's intent loop (run twice per request, file
    /// or not) they made that loop's frame 12 KiB, probed page by page on
    /// every call.
    #[inline(never)]
    pub(crate) fn poll_file<'c, P: Policy>(
        &mut self,
        cx: &'c mut Context<'_, P>,
    ) -> Option<Intent<'c>> {
        if !matches!(self.reading, Reading::Answering) {
            return None;
        }
        let pending = self.pending_mut();
        match pending.step {
            Step::Open => {
                let is_index = pending.is_index;
                let follow = pending.follow;
                let dir = pending.source.root().dir;
                pending.step = Step::Opening;
                let path = self.pending_path();
                *cx.shared.path = if is_index {
                    path.with_index()
                        .expect("the index path was checked before it was asked for")
                } else {
                    path
                };
                self.file_busy = true;
                Some(Intent::Open {
                    dir,
                    path: cx.shared.path.as_bytes(),
                    follow,
                })
            }
            Step::Stat(fd) => {
                pending.step = Step::Stating(fd);
                self.file_busy = true;
                Some(Intent::Stat { fd })
            }
            Step::Opening | Step::Stating(_) => None,
        }
    }

    /// The open completed: stat it, or answer the error.
    pub(crate) fn on_opened<P: Policy>(&mut self, result: i32, cx: &mut Context<'_, P>) {
        debug_assert!(self.file_busy);
        self.file_busy = false;
        debug_assert_eq!(self.pending().step, Step::Opening);
        if !self.is_answering_phase() {
            // Aborting: the answer is dropped; the descriptor is closed.
            self.pending_mut().step = Step::Open;
            if result >= 0 {
                self.close_later(result);
            }
            return;
        }
        if result == -EXDEV && !self.pending().follow {
            // RESOLVE_BENEATH refuses every absolute symlink, even one
            // pointing inside the root: open again following links, and
            // let the driver confine the file it reaches (nginx serves
            // such links; only a target outside the root is 403).
            let pending = self.pending_mut();
            pending.follow = true;
            pending.step = Step::Open;
            return;
        }
        self.pending_mut().follow = false;
        if result < 0 {
            return self.finish_pending(cx, Err(FileError::from_errno(-result)));
        }
        self.pending_mut().step = Step::Stat(result);
    }

    /// The stat completed: serve the file, open the directory's index, or
    /// answer the refusal.
    pub(crate) fn on_stated<P: Policy>(
        &mut self,
        result: i32,
        meta: Option<FileMeta>,
        cx: &mut Context<'_, P>,
    ) {
        debug_assert!(self.file_busy);
        self.file_busy = false;
        let Step::Stating(fd) = self.pending().step else {
            unreachable!("a stat that was not asked for")
        };
        self.pending_mut().step = Step::Open;
        if !self.is_answering_phase() {
            return self.close_later(fd);
        }
        let Some(meta) = meta.filter(|_| result == 0) else {
            self.close_later(fd);
            return self.finish_pending(cx, Err(FileError::Io));
        };
        let is_index = self.pending().is_index;
        let path = self.pending_path();
        match meta.kind.next_step(is_index) {
            NextStep::Serve => {
                let root = self.pending().source.root();
                let name = if is_index {
                    INDEX_FILE
                } else {
                    path.as_bytes()
                };
                let content_type = content_type(name);
                let insert = cx
                    .shared
                    .files
                    .insert(root.id, &path, fd, meta, content_type, cx.now);
                let file = match insert {
                    Insert::Cached { handle, close } => {
                        if let Some(old) = close {
                            self.close_later(old);
                        }
                        FileRef::Cached(handle)
                    }
                    Insert::KeyTooLong | Insert::AllBusy => FileRef::Owned(OwnedFile {
                        fd,
                        meta,
                        content_type,
                        validators: Validators::new(&meta),
                    }),
                };
                self.finish_pending(cx, Ok(file));
            }
            NextStep::OpenIndex => {
                self.close_later(fd);
                // A URL names a directory by its slash; without one, the
                // client is sent there (the index is never opened, nor
                // cached under the slash-less path).
                if let PendingSource::Static { .. } = self.pending().source {
                    if !path.as_bytes().ends_with(b"/") && path.as_bytes() != b"." {
                        return self.finish_pending(cx, Err(FileError::DirectoryWithoutSlash));
                    }
                }
                if let Err(err) = path.with_index() {
                    return self.finish_pending(cx, Err(err));
                }
                self.pending_mut().is_index = true;
            }
            NextStep::Refuse(err) => {
                self.close_later(fd);
                self.finish_pending(cx, Err(err));
            }
        }
    }

    fn pending(&self) -> &PendingFile {
        debug_assert!(matches!(self.reading, Reading::Answering));
        self.answering.as_ref().expect("no pending file answer")
    }

    fn pending_mut(&mut self) -> &mut PendingFile {
        debug_assert!(matches!(self.reading, Reading::Answering));
        self.answering.as_mut().expect("no pending file answer")
    }

    /// Takes the pending answer out, the reading side back to idle.
    fn take_pending(&mut self) -> Option<PendingFile> {
        if !matches!(self.reading, Reading::Answering) {
            return None;
        }
        self.reading = Reading::Idle;
        self.answering.take()
    }

    /// The pending answer's path (the requested one, not its index).
    fn pending_path(&self) -> RelativePath {
        match &self.pending().source {
            PendingSource::Static { path, .. } => {
                RelativePath::new(path.slice(self.recv.filled()), true)
            }
            PendingSource::Policy { path, .. } => RelativePath::new(path.as_slice(), false),
        }
        .expect("the path was valid when the answer began")
    }

    fn is_answering_phase(&self) -> bool {
        matches!(
            self.phase,
            crate::connection::Phase::Open | crate::connection::Phase::Finishing
        )
    }

    /// Commits the pending answer (the file, or the error opening it), then
    /// goes on with pipelined requests.
    fn finish_pending<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
        file: Result<FileRef, FileError>,
    ) {
        let Some(pending) = self.take_pending() else {
            unreachable!("no pending file")
        };
        self.reparse_taken_head(cx);
        let complete = Complete {
            body: pending.body,
            total: pending.total,
            // A streamed request's file answer: its body was dropped, and
            // the access log does not need to know.
            streamed: false,
        };
        let framing = pending.framing;
        let commit = match (file, &pending.source) {
            (Ok(file), PendingSource::Static { .. }) => {
                self.commit_file(cx, framing, file, None, Lines::None)
            }
            (
                Ok(file),
                PendingSource::Policy {
                    status,
                    declared,
                    lines_at,
                    lines,
                    ..
                },
            ) => self.commit_file(
                cx,
                framing,
                file,
                Some(*status),
                Lines::Stashed {
                    lines_at: *lines_at,
                    lines: *lines,
                    declared: *declared,
                },
            ),
            (Err(FileError::DirectoryWithoutSlash), PendingSource::Static { .. }) => Commit {
                committed: self.queue_redirect(cx, framing),
                close: false,
            },
            (Err(err), PendingSource::Static { .. }) => Commit {
                committed: self.queue_error(cx, err.status(), None, framing),
                close: false,
            },
            (Err(err), PendingSource::Policy { path, .. }) => {
                let shown = String::from_utf8_lossy(path.as_slice()).into_owned();
                self.log_request_error(cx, format_args!("ctx.body file {shown:?}: {err:?}"));
                Commit {
                    committed: self.queue_error(cx, err.status(), None, framing),
                    close: false,
                }
            }
        };
        if let PendingSource::Policy { owner, .. } = pending.source {
            cx.policy.unpin(owner, self.slot);
        }
        self.finish_answer(cx, &complete, framing, commit, pending.started);
        self.drive(cx);
    }

    /// A pending answer the connection gives up on (it aborts).
    pub(crate) fn release_pending<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        let Some(pending) = self.take_pending() else {
            return;
        };
        match pending.step {
            Step::Stat(fd) => self.close_later(fd),
            Step::Open => {}
            Step::Opening | Step::Stating(_) => unreachable!("released with a file op in flight"),
        }
        if let PendingSource::Policy { owner, .. } = pending.source {
            cx.policy.unpin(owner, self.slot);
        }
    }

    /// Writes a file's head — validators, conditionals and a single range
    /// for 200 responses; `status` is policy's for a Lua-chosen file (other
    /// statuses send the whole file, no conditionals) — and starts its tail.
    /// A `Content-Length` policy set must equal the file's size (the engine
    /// writes the length it sends: the range's for 206); otherwise the
    /// answer is a 500, whatever the method or range.
    fn commit_file<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
        framing: Framing,
        file: FileRef,
        status: Option<u16>,
        lines: Lines,
    ) -> Commit {
        let (meta, content_type, validators) = file.info(&cx.shared.files);
        let declared = match &lines {
            Lines::None => None,
            Lines::Exchange => cx.policy.exchange().declared_length(),
            Lines::Stashed { declared, .. } => *declared,
        };
        if let Some(declared) = declared {
            if declared != meta.size {
                self.release_file(file, cx);
                let committed =
                    self.refuse_declared_length(cx, framing, declared, "file's", meta.size);
                return Commit {
                    committed,
                    close: false,
                };
            }
        }
        debug_assert_eq!(meta.kind, FileKind::Regular);
        let mut status = status.unwrap_or(200);
        let (mut offset, mut len) = (0, meta.size);
        let mut content_range = [0u8; CONTENT_RANGE_BYTES];
        let mut content_range_len = 0;
        // Policy's validators replace the file's: its ETag and
        // Last-Modified are the ones sent and the ones conditionals are
        // checked against; its Accept-Ranges or Content-Range turns ranges
        // off (it manages them). The engine writes what policy did not.
        let set_by_policy = {
            let stashed: &[u8] = match &lines {
                Lines::Stashed {
                    lines_at, lines, ..
                } => {
                    let at = (*lines_at - self.send.tail()) as usize;
                    &self.send.spare_mut()[at..at + lines.len]
                }
                Lines::None | Lines::Exchange => &[],
            };
            let exchange = matches!(lines, Lines::Exchange).then(|| cx.policy.exchange());
            let policy = |name: &[u8]| match exchange {
                Some(exchange) => exchange
                    .response_headers()
                    .find(|(found, _)| found.eq_ignore_ascii_case(name))
                    .map(|(_, value)| value),
                None => policy_line(stashed, name),
            };
            let (etag, last_modified) = (policy(b"ETag"), policy(b"Last-Modified"));
            let accept_ranges = policy(b"Accept-Ranges");
            let own_ranges = policy(b"Content-Range").is_some();
            if status == 200 {
                let bytes = self.recv.filled();
                let head = &cx.shared.head;
                let header = |name: &[u8]| {
                    head.headers()
                        .iter()
                        .find(|h| h.name.slice(bytes).eq_ignore_ascii_case(name))
                        .map(|h| h.value.slice(bytes))
                };
                let method = head.method.slice(bytes);
                let conditions = Conditions {
                    if_match: header(b"if-match"),
                    if_unmodified_since: header(b"if-unmodified-since"),
                    if_none_match: header(b"if-none-match"),
                    if_modified_since: header(b"if-modified-since"),
                    if_range: header(b"if-range"),
                    range: header(b"range"),
                    other_method: method != b"GET" && method != b"HEAD",
                };
                let own = validators.current(&meta);
                let current = Current {
                    etag: etag.unwrap_or(own.etag),
                    modified_secs: match last_modified {
                        Some(date) => http_date_secs(date),
                        None => own.modified_secs,
                    },
                    ranges: !own_ranges
                        && accept_ranges.is_none_or(|value| {
                            value
                                .split(|&byte| byte == b',')
                                .any(|unit| trim_ows(unit).eq_ignore_ascii_case(b"bytes"))
                        }),
                };
                let decision = decide(meta.size, &current, &conditions);
                status = decision.status();
                (offset, len) = decision.body(meta.size);
                if !own_ranges {
                    content_range_len = decision.content_range(meta.size, &mut content_range);
                }
            }
            [
                etag.is_some(),
                last_modified.is_some(),
                accept_ranges.is_some(),
            ]
        };
        let candidates: [(&[u8], &[u8], bool); 4] = [
            (b"ETag", validators.etag(), !set_by_policy[0]),
            (
                b"Last-Modified",
                validators.last_modified(),
                !set_by_policy[1],
            ),
            // Not on a 304 or 412: they carry no representation.
            (
                b"Accept-Ranges",
                b"bytes",
                !set_by_policy[2] && !matches!(status, 304 | 412),
            ),
            (
                b"Content-Range",
                &content_range[..content_range_len],
                content_range_len > 0,
            ),
        ];
        let mut extra: [(&[u8], &[u8]); 4] = [(b"", b""); 4];
        let mut extra_count = 0;
        for (name, value, wanted) in candidates {
            if wanted {
                extra[extra_count] = (name, value);
                extra_count += 1;
            }
        }
        let spec = HeadSpec {
            status,
            length: BodyLength::Known(len),
            default_content_type: content_type.as_bytes(),
            extra: &extra[..extra_count],
        };
        let date = &cx.shared.date;
        let written = match lines {
            Lines::None => write_head_spec(
                &spec,
                std::iter::empty(),
                framing,
                date,
                self.send.spare_mut(),
            ),
            Lines::Exchange => write_head_spec(
                &spec,
                cx.policy.exchange().response_headers(),
                framing,
                date,
                self.send.spare_mut(),
            ),
            Lines::Stashed {
                lines_at, lines, ..
            } => {
                let tail = self.send.tail();
                assert!(lines_at >= tail, "stashed lines behind the tail");
                write_head_around(
                    &spec,
                    (lines_at - tail) as usize,
                    lines,
                    framing,
                    date,
                    self.send.spare_mut(),
                )
            }
        };
        let committed = match written {
            Ok(committed) => committed,
            Err(err) => {
                self.release_file(file, cx);
                let committed = self.fail(cx, framing, format_args!("invalid response: {err}"));
                return Commit {
                    committed,
                    close: false,
                };
            }
        };
        self.send.commit(committed.bytes as u32);
        if has_body(status, framing.head_request) && len > 0 && status != 416 {
            self.file_tail(file, offset, len, cx);
        } else {
            self.release_file(file, cx);
        }
        Commit {
            committed,
            close: false,
        }
    }
}
