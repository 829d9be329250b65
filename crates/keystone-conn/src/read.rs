//! The receive side: from buffered bytes to a complete request — the head
//! (parsed incrementally, resuming where the last read ended), its body
//! (Content-Length, or chunked decoded in place), `100 Continue` — and the
//! loop that answers pipelined requests while the send side has room.

use keystone_parser::{
    BodyFraming as HeadFraming, ChunkedDecoder, ParseError, ParseStatus, Persistence,
};
use keystone_response::{Framing, CONTINUE};
use keystone_ringbuf::Span;

use crate::answer::CLOSE;
use crate::connection::{BodyFraming, BodyState, Lane, Phase, Reading, Tail};
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
}

impl Connection {
    /// Puts the head of the request at the front of the buffer back into
    /// the shared scratch, for an answer that completes later (a file that
    /// opened, an upstream that answered): it was parsed when the request
    /// was taken, other connections used the scratch since, and its bytes
    /// are unchanged.
    pub(crate) fn reparse_taken_head<P: Policy>(&self, cx: &mut Context<'_, P>) {
        let limits = cx.shared.config.limits;
        let reparsed = cx.shared.parser.parse(
            self.recv.unconsumed(),
            self.recv.head(),
            &limits,
            &mut cx.shared.head,
        );
        assert_eq!(
            reparsed,
            Ok(keystone_parser::ParseStatus::Complete),
            "a taken request parses again"
        );
    }

    /// Answers every complete request buffered, as far as the send side
    /// allows (one response in progress at a time, `max_pipeline` queued,
    /// the send buffer's headroom).
    pub(crate) fn drive<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        // Each pass answers one request (consuming its bytes) or stops:
        // bounded by the bytes buffered.
        loop {
            if self.phase != Phase::Open
                || !matches!(self.tail, Tail::None)
                || matches!(self.reading, Reading::Answering(_) | Reading::Proxying(_))
            {
                return;
            }
            if self.receiving != Lane::Idle {
                // A receive is in flight: the buffer holds no complete
                // request (one is armed only then) and its tail is lent.
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
        if let Reading::Body(body) = &self.reading {
            // The head is known: only the body's progress matters until it
            // is complete (no re-parse of the head per read).
            let head_len = body.head_len;
            match self.body_progress(cx) {
                Ok(Some(_)) => {}
                Ok(None) => return Taken::NeedMore,
                Err(err) => return self.refuse(cx, err.status()),
            }
            debug_assert!(head_len > 0);
        }
        let limits = cx.shared.config.limits;
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
        let complete = match self.body_of_parsed(cx) {
            Ok(Some(complete)) => complete,
            Ok(None) => {
                self.send_continue();
                return Taken::NeedMore;
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
        self.answer(cx, complete, framing)
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
    ) -> Result<Option<Complete>, ParseError> {
        let head = &cx.shared.head;
        let base = self.recv.head();
        if let Reading::Body(_) = self.reading {
            // Re-parsed once the body was complete: its span is known.
            return self.body_progress(cx);
        }
        let framing = match head.body {
            HeadFraming::None => {
                return Ok(Some(Complete {
                    body: Span::new(base + head.head_len, 0),
                    total: head.head_len,
                }))
            }
            HeadFraming::Length(n) => {
                let total = u64::from(head.head_len) + n;
                if total > u64::from(self.recv.capacity()) {
                    return Err(ParseError::BodyTooLarge {
                        limit: cx.shared.config.limits.max_body_bytes,
                        declared: n,
                    });
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
    ) -> Result<Option<Complete>, ParseError> {
        let max_body_bytes = cx.shared.config.limits.max_body_bytes;
        let Reading::Body(body) = &mut self.reading else {
            unreachable!("body progress without a body")
        };
        let base = self.recv.head();
        let body_start = base + body.head_len;
        match &mut body.framing {
            BodyFraming::Length { total } => {
                if u64::from(self.recv.len()) < *total {
                    return Ok(None);
                }
                let len = (*total - u64::from(body.head_len)) as u32;
                Ok(Some(Complete {
                    body: Span::new(body_start, len),
                    total: *total as u32,
                }))
            }
            BodyFraming::Chunked { decoder, decoded } => {
                let decoded_end = body_start + *decoded;
                debug_assert!(decoded_end <= self.recv.tail());
                if decoder.finished() {
                    return Ok(Some(Complete {
                        body: Span::new(body_start, *decoded),
                        total: body.head_len + *decoded,
                    }));
                }
                let undecoded = Span::new(decoded_end, self.recv.tail() - decoded_end);
                let progress = decoder.decode(self.recv.get_mut(undecoded), max_body_bytes)?;
                let payload_end = decoded_end + progress.decoded_len;
                let stale_start = payload_end + progress.leftover;
                self.recv.cut(stale_start, self.recv.tail() - stale_start);
                *decoded += progress.decoded_len;
                if !progress.consumed_all {
                    return Ok(None);
                }
                Ok(Some(Complete {
                    body: Span::new(body_start, *decoded),
                    total: body.head_len + *decoded,
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
