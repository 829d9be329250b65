//! Committing an answer: what policy decided becomes response bytes in the
//! send buffer (and a tail), through the Response Builder; every committed
//! head reports what it announced, for the counters and the access log.

use keystone_exchange::BodyKind;
use keystone_parser::Head;
use keystone_response::{
    has_body, policy_status, write_error, write_head_spec, BodyLength, Committed, Encoder, Framing,
    HeadSpec, DEFAULT_CONTENT_TYPE,
};
use keystone_ringbuf::RingBuffer;

use crate::connection::Phase;
use crate::file::FileSource;
use crate::read::{Complete, Taken};
use crate::stream::{RequestLabel, StreamTail};
use crate::{Answer, Connection, Context, Level, Policy, Request};

/// Framing for errors after which the connection closes.
pub(crate) const CLOSE: Framing = Framing {
    keep_alive: false,
    head_request: false,
    minor_version: 1,
};

/// What committing produced: the head's report and whether the connection
/// closes after this response (a body delimited by close).
pub(crate) struct Commit {
    pub(crate) committed: Committed,
    pub(crate) close: bool,
}

impl Commit {
    fn keep(committed: Committed) -> Commit {
        Commit {
            committed,
            close: false,
        }
    }
}

/// The request at the front of `recv`, as policy sees it.
pub(crate) fn request_view<'r>(
    recv: &'r RingBuffer,
    head: &'r Head,
    complete: &Complete,
    slot: u32,
    peer: Option<std::net::SocketAddr>,
    tls: &'r keystone_exchange::TlsFacts,
    started: std::time::Instant,
) -> Request<'r> {
    Request {
        bytes: recv.filled(),
        head,
        body: complete.body,
        body_streamed: complete.streamed,
        slot,
        peer,
        tls,
        started,
    }
}

impl Connection {
    /// Answers the complete request at the front of the buffer (its head in
    /// the shared scratch): asks policy, commits, then consumes it.
    pub(crate) fn answer<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
        complete: Complete,
        framing: Framing,
    ) -> Taken {
        let started = cx.now;
        let request = request_view(
            &self.recv,
            &cx.shared.head,
            &complete,
            self.slot,
            self.peer,
            crate::connection::facts_of(&self.tls),
            started,
        );
        // A streamed body the engine answers itself is never read: the
        // connection closes after the answer, which says so (RFC 9112
        // §9.6), so no client sends its next request into the close. The
        // canned answers too (a 404 or 405 to a streamed POST).
        let local_framing = if complete.streamed {
            Framing {
                keep_alive: false,
                ..framing
            }
        } else {
            framing
        };
        // The borrow of the policy an answer holds (a 405's `Allow`) ends
        // inside each arm: the exchange expires once what it decided is
        // committed (or, for the engine's own answers, at once).
        let commit = match cx.policy.answer(&request) {
            Answer::Exchange { files } => {
                let committed = self.commit_exchange(cx, &complete, local_framing, files);
                cx.policy.expire();
                match committed {
                    Some(commit) => commit,
                    None => return Taken::Pending,
                }
            }
            Answer::Canned { status, allow } => {
                let committed =
                    queue_canned(&mut self.send, cx.shared, status, allow, local_framing);
                cx.policy.expire();
                Commit::keep(committed)
            }
            Answer::Static { root, path } => {
                cx.policy.expire();
                let source = FileSource::Static { root, path };
                match self.answer_file(cx, &complete, local_framing, source, None) {
                    Some(commit) => commit,
                    None => return Taken::Pending,
                }
            }
            Answer::Proxy => {
                cx.policy.expire();
                self.start_proxy(&complete, framing, started);
                return Taken::Pending;
            }
        };
        self.finish_answer(cx, &complete, local_framing, commit, started);
        Taken::Answered
    }

    /// The request is answered: policy hears of it, its bytes are consumed
    /// and the connection stays open or finishes.
    pub(crate) fn finish_answer<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
        complete: &Complete,
        framing: Framing,
        commit: Commit,
        started: std::time::Instant,
    ) {
        let request = request_view(
            &self.recv,
            &cx.shared.head,
            complete,
            self.slot,
            self.peer,
            crate::connection::facts_of(&self.tls),
            started,
        );
        let body_follows = !matches!(*self.tail, crate::connection::Tail::None);
        cx.policy
            .answered(&request, &commit.committed, body_follows);
        self.recv.consume(complete.total);
        if let Some(upload) = self.upload.as_mut() {
            // A streamed request's total is its head: the body behind it
            // is now at the buffer's front.
            debug_assert!(complete.streamed || upload.is_tunnel());
            upload.head_left = 0;
        }
        self.served += 1;
        if !framing.keep_alive || commit.close {
            self.phase = Phase::Finishing;
        }
    }

    /// Commits what policy left in the exchange; `None` when the answer
    /// waits for a file to open.
    fn commit_exchange<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
        complete: &Complete,
        framing: Framing,
        files: crate::Root,
    ) -> Option<Commit> {
        let status = match policy_status(cx.policy.exchange()) {
            Ok(status) => status,
            Err(err) => {
                return Some(Commit::keep(self.fail(
                    cx,
                    framing,
                    format_args!("invalid response: {err}"),
                )))
            }
        };
        match cx.policy.exchange().body_kind() {
            BodyKind::Inline => Some(self.commit_inline(cx, framing, status)),
            BodyKind::Stream => Some(self.commit_stream(cx, framing, status)),
            BodyKind::File => {
                let source = FileSource::Policy { root: files };
                self.answer_file(cx, complete, framing, source, Some(status))
            }
        }
    }

    /// A string body: copied behind its head when it fits the send buffer,
    /// otherwise pinned where Lua keeps it and sent from there.
    fn commit_inline<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
        framing: Framing,
        status: u16,
    ) -> Commit {
        let exchange = cx.policy.exchange();
        let body_len = exchange.response_body().map_or(0, <[u8]>::len);
        let mut length = body_len as u64;
        if let Some(declared) = exchange.declared_length() {
            if declared != length && has_body(status, framing.head_request) {
                let committed =
                    self.refuse_declared_length(cx, framing, declared, "body's", length);
                return Commit::keep(committed);
            }
            // Without body bytes (HEAD, 204, 304) the declared length is
            // the answer: a HEAD handler may advertise the GET's size.
            length = declared;
        }
        let spec = HeadSpec {
            status,
            length: BodyLength::Known(length),
            default_content_type: DEFAULT_CONTENT_TYPE,
            extra: &[],
        };
        let head_start = self.send.tail();
        let Some(committed) = self.commit_head(cx, &spec, framing) else {
            return Commit::keep(self.fail(
                cx,
                framing,
                format_args!("invalid response: head too large"),
            ));
        };
        if !has_body(status, framing.head_request) || body_len == 0 {
            return Commit::keep(committed);
        }
        if body_len <= self.send.spare() as usize {
            let body = cx.policy.exchange().response_body().unwrap_or(&[]);
            self.send.append(body).expect("checked spare");
            return Commit::keep(committed);
        }
        match cx.policy.pin(self.slot) {
            Ok(pinned) => {
                debug_assert_eq!(pinned.bytes.len(), body_len);
                self.pin_tail(pinned);
                Commit::keep(committed)
            }
            Err(err) => {
                // Take the head back so nothing half-framed is sent.
                self.send.cut(head_start, committed.bytes as u32);
                Commit::keep(self.fail(
                    cx,
                    framing,
                    format_args!("cannot pin a response body: {err}"),
                ))
            }
        }
    }

    /// `ctx.body = function() ... end`: with a `Content-Length` policy
    /// declared, exactly that many raw bytes (keep-alive possible);
    /// otherwise chunked for HTTP/1.1 and delimited by close for HTTP/1.0.
    /// The generator is pulled as the socket drains, and never when the
    /// response carries no body bytes (HEAD, 204, 304, a declared 0).
    fn commit_stream<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
        framing: Framing,
        status: u16,
    ) -> Commit {
        let declared = cx.policy.exchange().declared_length();
        let encoder = Encoder::for_stream(declared, framing.minor_version);
        let framing = Framing {
            keep_alive: framing.keep_alive && encoder.keeps_connection(),
            ..framing
        };
        let spec = HeadSpec {
            status,
            length: encoder.body_length(),
            default_content_type: DEFAULT_CONTENT_TYPE,
            extra: &[],
        };
        let Some(committed) = self.commit_head(cx, &spec, framing) else {
            return Commit::keep(self.fail(
                cx,
                framing,
                format_args!("invalid response: head too large"),
            ));
        };
        let close = !framing.keep_alive;
        if !has_body(status, framing.head_request) || declared == Some(0) {
            return Commit { committed, close };
        }
        let label = RequestLabel::new(
            cx.shared.head.method.slice(self.recv.filled()),
            cx.shared.head.path.slice(self.recv.filled()),
        );
        match cx.policy.pin(self.slot) {
            Ok(pinned) => {
                self.tail
                    .set(crate::connection::Tail::Stream(StreamTail::new(
                        pinned.owner,
                        encoder,
                        label,
                    )));
                Commit { committed, close }
            }
            Err(err) => {
                self.log_request_error(cx, format_args!("cannot pin a stream: {err}"));
                // The head is out; without its body the connection closes.
                Commit {
                    committed,
                    close: true,
                }
            }
        }
    }

    /// Writes the head for `spec` with policy's headers into the send
    /// buffer and commits it; `None` when it does not fit.
    fn commit_head<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
        spec: &HeadSpec<'_>,
        framing: Framing,
    ) -> Option<Committed> {
        let headers = cx.policy.exchange().response_headers();
        let committed = write_head_spec(
            spec,
            headers,
            framing,
            &cx.shared.date,
            self.send.spare_mut(),
        )
        .ok()?;
        self.send.commit(committed.bytes as u32);
        Some(committed)
    }

    /// A `Content-Length` policy declared that the engine knows is wrong
    /// (`whose` bytes are `actual`): logged, answered 500, never sent.
    pub(crate) fn refuse_declared_length<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
        framing: Framing,
        declared: u64,
        whose: &str,
        actual: u64,
    ) -> Committed {
        self.fail(
            cx,
            framing,
            format_args!(
                "Content-Length {declared} set by policy does not match the {whose} {actual} bytes"
            ),
        )
    }

    /// The one "log the error, answer 500" path: the log line names the
    /// request (`METHOD /path: ...`).
    pub(crate) fn fail<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
        framing: Framing,
        message: std::fmt::Arguments<'_>,
    ) -> Committed {
        self.log_request_error(cx, message);
        self.queue_error(cx, 500, None, framing)
    }

    /// Logs an error about the request whose head is in the scratch.
    pub(crate) fn log_request_error<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
        message: std::fmt::Arguments<'_>,
    ) {
        let bytes = self.recv.filled();
        let head = &cx.shared.head;
        cx.policy.log(
            Level::Error,
            format_args!(
                "{} {}: {message}",
                String::from_utf8_lossy(head.method.slice(bytes)),
                String::from_utf8_lossy(head.path.slice(bytes))
            ),
        );
    }

    /// Queues a canned response for an engine-decided status.
    pub(crate) fn queue_error<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
        status: u16,
        allow: Option<&[u8]>,
        framing: Framing,
    ) -> Committed {
        queue_canned(&mut self.send, cx.shared, status, allow, framing)
    }
}

/// Writes a canned response into `send` (whose headroom always holds one).
pub(crate) fn queue_canned(
    send: &mut RingBuffer,
    shared: &crate::Shared,
    status: u16,
    allow: Option<&[u8]>,
    framing: Framing,
) -> Committed {
    let committed = write_error(status, allow, framing, &shared.date, send.spare_mut())
        .expect("send headroom holds a canned response");
    send.commit(committed.bytes as u32);
    committed
}
