//! The receive side: from buffered bytes to a complete request — the head
//! (parsed incrementally, resuming where the last read ended), its body
//! (Content-Length, or chunked decoded in place), `100 Continue` — and the
//! loop that answers pipelined requests while the send side has room.

use keystone_parser::{
    BodyFraming as HeadFraming, ChunkedDecoder, Limits, ParseError, ParseStatus, Persistence,
};
use keystone_response::{Framing, CONTINUE};
use keystone_ringbuf::Span;

use crate::answer::CLOSE;
use crate::connection::{BodyFraming, BodyState, Lane, Phase, Reading, Tail};
use crate::upload::Upload;
use crate::{Connection, Context, Policy, SEND_HEADROOM_BYTES};

/// What taking the request at the front of the buffer did.
pub(crate) enum Taken {
    /// Answered (or refused); more may follow.
    Answered,
    /// The buffer holds no complete request.
    NeedMore,
    /// The answer waits for a file to open.
    Pending,
}

/// A complete request's place in the receive buffer.
pub(crate) struct Complete {
    /// The body span (absolute).
    pub(crate) body: Span,
    /// Bytes of head and body, consumed once the request is answered.
    pub(crate) total: u32,
    /// The body is streamed ([`crate::upload`]): `body` is empty and
    /// `total` covers the head only.
    pub(crate) streamed: bool,
}

/// Where the body of the head just parsed is.
pub(crate) enum BodyReady {
    /// All of it is buffered.
    Complete(Complete),
    /// More is to arrive (the state is kept in `reading`).
    Partial,
    /// It is larger than the buffered limit: it is streamed upstream.
    Streamed(Upload),
}

/// The limits a head is parsed with: a policy that can stream bodies
/// upstream admits `Content-Length` up to `--max-proxy-body-bytes`; the
/// buffered limit is checked when the body is framed.
pub(crate) fn parse_limits<P: Policy>(cx: &Context<'_, P>) -> Limits {
    let config = &cx.shared.config;
    let mut limits = config.limits;
    if cx.policy.streams_bodies() {
        limits.max_body_bytes = limits.max_body_bytes.max(config.max_proxy_body_bytes);
    }
    limits
}

impl Connection {
    /// Puts the head of the request at the front of the buffer back into
    /// the shared scratch, for an answer that completes later (a file that
    /// opened, an upstream that answered): it was parsed when the request
    /// was taken, other connections used the scratch since, and its bytes
    /// are unchanged.
    pub(crate) fn reparse_taken_head<P: Policy>(&self, cx: &mut Context<'_, P>) {
        assert!(self.reparses_taken_head(cx), "a taken request parses again");
    }

    /// [`Connection::reparse_taken_head`] for a connection that is going
    /// away: whether the head parsed again (it always should; a log line
    /// is not worth a worker).
    pub(crate) fn reparses_taken_head<P: Policy>(&self, cx: &mut Context<'_, P>) -> bool {
        let limits = parse_limits(cx);
        let reparsed = cx.shared.parser.parse(
            self.recv.unconsumed(),
            self.recv.head(),
            &limits,
            &mut cx.shared.head,
        );
        reparsed == Ok(keystone_parser::ParseStatus::Complete)
    }

    /// Answers every complete request buffered, as far as the send side
    /// allows (one response in progress at a time, `max_pipeline` queued,
    /// the send buffer's headroom).
    pub(crate) fn drive<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        // Each pass answers one request (consuming its bytes) or stops:
        // bounded by the bytes buffered.
        loop {
            if self.phase != Phase::Open
                || !matches!(*self.tail, Tail::None)
                || matches!(self.reading, Reading::Answering | Reading::Proxying(_))
                || self.upload.is_some()
            {
                return;
            }
            if self.receiving != Lane::Idle {
                // A receive is in flight: the buffer holds no complete
                // request (one is armed only then, or as a probe, which is
                // called back when bytes wait) and its tail is lent.
                self.need_more = true;
                return;
            }
            debug_assert!(!self.recv.spare_lent());
            if self.queued >= cx.shared.config.max_pipeline {
                return; // --max-pipeline: wait for the send to drain
            }
            if self.send.spare() < SEND_HEADROOM_BYTES {
                if !self.send.unsent_lent() && !self.send.spare_lent() && self.send.head() > 0 {
                    self.send.compact();
                }
                if self.send.spare() < SEND_HEADROOM_BYTES {
                    return; // wait for the send in flight to free room
                }
            }
            if self.recv.is_empty() {
                if cx.draining {
                    // Between requests while draining: finish and close.
                    self.phase = Phase::Finishing;
                    return;
                }
                self.need_more = true;
                return;
            }
            match self.take_request(cx) {
                Taken::Answered => {}
                Taken::NeedMore => {
                    self.need_more = true;
                    return;
                }
                Taken::Pending => return,
            }
        }
    }

    /// Takes the request at the front of the receive buffer: waits for the
    /// rest of its head or body, refuses it, or answers it.
    fn take_request<P: Policy>(&mut self, cx: &mut Context<'_, P>) -> Taken {
        debug_assert!(self.send.spare() >= SEND_HEADROOM_BYTES);
        let mut streamed = None;
        if let Reading::Body(body) = &self.reading {
            // The head is known: only the body's progress matters until it
            // is complete (no re-parse of the head per read).
            let head_len = body.head_len;
            match self.body_progress(cx) {
                Ok(BodyReady::Complete(_)) => {}
                Ok(BodyReady::Streamed(upload)) => streamed = Some(upload),
                Ok(BodyReady::Partial) => return Taken::NeedMore,
                Err(err) => return self.refuse(cx, err.status()),
            }
            debug_assert!(head_len > 0);
        }
        let limits = parse_limits(cx);
        let base = self.recv.head();
        let parsed = cx.shared.parser.parse_resuming(
            &mut self.progress,
            self.recv.unconsumed(),
            base,
            &limits,
            &mut cx.shared.head,
        );
        match parsed {
            Ok(ParseStatus::Complete) => {}
            Ok(ParseStatus::Partial) => {
                self.reading = Reading::Head;
                return Taken::NeedMore;
            }
            Err(err) => return self.refuse(cx, err.status()),
        }
        let ready = match streamed {
            Some(upload) => Ok(BodyReady::Streamed(upload)),
            None => self.body_of_parsed(cx),
        };
        let complete = match ready {
            Ok(BodyReady::Complete(complete)) => complete,
            Ok(BodyReady::Partial) => {
                self.send_continue();
                return Taken::NeedMore;
            }
            Ok(BodyReady::Streamed(upload)) => {
                let head_len = cx.shared.head.head_len;
                self.upload.set(Some(upload));
                Complete {
                    body: Span::new(base + head_len, 0),
                    total: head_len,
                    streamed: true,
                }
            }
            Err(err) => return self.refuse(cx, err.status()),
        };
        self.reading = Reading::Idle;
        self.queued += 1;
        let head = &cx.shared.head;
        let framing = Framing {
            keep_alive: head.persistence == Persistence::KeepAlive,
            head_request: head.method.slice(self.recv.filled()) == b"HEAD",
            minor_version: head.minor_version,
        };
        let framing = self.drain_framing(cx, framing, complete.total);
        let streamed = complete.streamed;
        let taken = self.answer(cx, complete, framing);
        if streamed {
            self.after_streamed_answer(cx);
        }
        taken
    }

    /// `framing` as a drain leaves it: once the worker drains, the answer
    /// to the last request the buffer holds (`total` bytes at its front)
    /// says `Connection: close` and the connection closes after it, so no
    /// client sends a request into a close it could not see coming (RFC
    /// 9112 §9.6; nginx stops keep-alive when it exits). Requests already
    /// pipelined behind it are still answered, the last of them closing.
    pub(crate) fn drain_framing<P: Policy>(
        &self,
        cx: &Context<'_, P>,
        framing: Framing,
        total: u32,
    ) -> Framing {
        let last = self.recv.unconsumed().len() <= total as usize;
        Framing {
            keep_alive: framing.keep_alive && !(cx.draining && last),
            ..framing
        }
    }

    /// A request the engine refuses: its error, then the connection closes
    /// (nothing behind a framing error is ever answered).
    fn refuse<P: Policy>(&mut self, cx: &mut Context<'_, P>, status: u16) -> Taken {
        self.reading = Reading::Idle;
        let committed = self.queue_error(cx, status, None, CLOSE);
        cx.policy.refused(&committed);
        self.phase = Phase::Finishing;
        Taken::Answered
    }

    /// The body of the head just parsed: complete, still arriving (the
    /// state is kept in `reading`), or refused.
    fn body_of_parsed<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
    ) -> Result<BodyReady, ParseError> {
        let head = &cx.shared.head;
        let base = self.recv.head();
        if let Reading::Body(_) = self.reading {
            // Re-parsed once the body was complete: its span is known.
            return self.body_progress(cx);
        }
        let framing = match head.body {
            HeadFraming::None => {
                return Ok(BodyReady::Complete(Complete {
                    body: Span::new(base + head.head_len, 0),
                    total: head.head_len,
                    streamed: false,
                }))
            }
            HeadFraming::Length(n) => {
                let limit = cx.shared.config.limits.max_body_bytes;
                let total = u64::from(head.head_len) + n;
                if n > limit || total > u64::from(self.recv.capacity()) {
                    if cx.policy.streams_bodies() && n <= cx.shared.config.max_proxy_body_bytes {
                        let upload = Upload::length(head.head_len, n, head.expect_continue);
                        return Ok(BodyReady::Streamed(upload));
                    }
                    return Err(ParseError::BodyTooLarge { limit, declared: n });
                }
                BodyFraming::Length { total }
            }
            HeadFraming::Chunked => BodyFraming::Chunked {
                decoder: ChunkedDecoder::new(),
                decoded: 0,
            },
        };
        self.reading = Reading::Body(BodyState {
            head_len: head.head_len,
            framing,
            expect_continue: head.expect_continue,
            continue_sent: false,
        });
        self.body_progress(cx)
    }

    /// Advances the body in `reading`: `Some` once it is complete (the
    /// state stays until the request is taken), `None` while bytes are
    /// missing.
    fn body_progress<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
    ) -> Result<BodyReady, ParseError> {
        let max_body_bytes = cx.shared.config.limits.max_body_bytes;
        let streams = cx.policy.streams_bodies();
        // A policy that can stream admits chunked bodies up to the streamed
        // limit; past the buffered one the body switches to streaming.
        let decode_limit = if streams {
            max_body_bytes.max(cx.shared.config.max_proxy_body_bytes)
        } else {
            max_body_bytes
        };
        let Reading::Body(body) = &mut self.reading else {
            unreachable!("body progress without a body")
        };
        let base = self.recv.head();
        let body_start = base + body.head_len;
        match &mut body.framing {
            BodyFraming::Length { total } => {
                if u64::from(self.recv.len()) < *total {
                    return Ok(BodyReady::Partial);
                }
                let len = (*total - u64::from(body.head_len)) as u32;
                Ok(BodyReady::Complete(Complete {
                    body: Span::new(body_start, len),
                    total: *total as u32,
                    streamed: false,
                }))
            }
            BodyFraming::Chunked { decoder, decoded } => {
                let decoded_end = body_start + *decoded;
                debug_assert!(decoded_end <= self.recv.tail());
                if decoder.finished() {
                    return Ok(BodyReady::Complete(Complete {
                        body: Span::new(body_start, *decoded),
                        total: body.head_len + *decoded,
                        streamed: false,
                    }));
                }
                let undecoded = Span::new(decoded_end, self.recv.tail() - decoded_end);
                let progress = decoder.decode(self.recv.get_mut(undecoded), decode_limit)?;
                let payload_end = decoded_end + progress.decoded_len;
                let stale_start = payload_end + progress.leftover;
                self.recv.cut(stale_start, self.recv.tail() - stale_start);
                *decoded += progress.decoded_len;
                // Past the buffered limit (what arrived, or what a chunk's
                // size line announces), or a buffer the body fills: stream.
                // A body over the limit streams even when all of it came in
                // one read: the handler never sees more than the limit, as
                // for a `Content-Length` one.
                let over_limit = decoder.declared_total() > max_body_bytes;
                let filled = self.recv.spare() == 0 && self.recv.head() == 0;
                if streams && (over_limit || (!progress.consumed_all && filled)) {
                    let Reading::Body(body) = std::mem::replace(&mut self.reading, Reading::Head)
                    else {
                        unreachable!("matched above")
                    };
                    let BodyFraming::Chunked { decoder, decoded } = body.framing else {
                        unreachable!("matched above")
                    };
                    let upload = Upload::chunked(
                        body.head_len,
                        decoder,
                        decoded,
                        body.expect_continue && !body.continue_sent,
                    );
                    return Ok(BodyReady::Streamed(upload));
                }
                if !progress.consumed_all {
                    return Ok(BodyReady::Partial);
                }
                Ok(BodyReady::Complete(Complete {
                    body: Span::new(body_start, *decoded),
                    total: body.head_len + *decoded,
                    streamed: false,
                }))
            }
        }
    }

    /// Queues `100 Continue` once for a request whose client waits for it.
    fn send_continue(&mut self) {
        let Reading::Body(body) = &mut self.reading else {
            return;
        };
        if body.expect_continue && !body.continue_sent {
            // The caller's headroom check guarantees room for 25 bytes.
            self.send
                .append(CONTINUE)
                .expect("send headroom holds 100 Continue");
            body.continue_sent = true;
        }
    }
}
