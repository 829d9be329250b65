//! Streamed request bodies: a body larger than `--max-body-bytes` is never
//! buffered whole. When policy can proxy ([`Policy::streams_bodies`]), the
//! request is answered as soon as its head is in (a `Content-Length` body)
//! or once a chunked body outgrows the limit, with no body shown to policy
//! ([`Request::body_streamed`]); if policy sends it upstream, the body is
//! received as the upstream side takes it ([`Policy::proxy_upload`]): the
//! receive buffer holds at most one window of it, and the next receive
//! waits until the upstream took what is buffered (backpressure towards a
//! fast client; a slow client costs nothing but its timer).
//!
//! The request's head stays at the front of the receive buffer until the
//! answer commits (it is parsed again for `ctx.on_response`); body bytes
//! sit behind it and are cut out as the upstream takes them, so bytes of a
//! pipelined next request behind the body keep their place.
//!
//! A body that is not proxied is not read: the answer goes out and the
//! connection closes. A body the client breaks off, or whose chunked
//! framing fails, aborts the proxied request (the upstream connection
//! closes too, so the backend never takes a cut body for a whole one).
//!
//! [`Policy::streams_bodies`]: crate::Policy::streams_bodies
//! [`Policy::proxy_upload`]: crate::Policy::proxy_upload
//! [`Request::body_streamed`]: crate::Request::body_streamed

use keystone_parser::{ChunkedDecoder, ParseError};
use keystone_response::CONTINUE;
use keystone_ringbuf::Span;

use crate::connection::{Lane, Phase, Reading};
use crate::{Connection, Context, Intent, Level, Policy};

/// A request body being streamed upstream.
#[derive(Debug)]
pub(crate) struct Upload {
    /// Bytes of the request's head still at the front of the receive
    /// buffer (its whole length until the answer commits, then 0).
    pub(crate) head_left: u32,
    /// Body bytes behind the head, received (and decoded) but not yet
    /// taken by the upstream side.
    pub(crate) pending: u32,
    framing: UploadFraming,
    /// Every body byte has been received (the upstream may not have taken
    /// them all yet).
    received_all: bool,
    /// `Expect: 100-continue`: the interim answer goes out once the body
    /// is wanted (the request went upstream).
    pub(crate) expect_continue: bool,
}

#[derive(Debug)]
enum UploadFraming {
    /// Body bytes still to arrive.
    Length { left: u64 },
    /// Decoded in place; the decoder counts the whole body against the
    /// streamed limit.
    Chunked(ChunkedDecoder),
    /// An upgraded connection (a WebSocket after `101`): every byte until
    /// the client closes, unframed and unbounded.
    Tunnel,
}

impl Upload {
    /// A `Content-Length` body of `length` bytes behind a head of
    /// `head_len` bytes, none of it taken yet.
    pub(crate) fn length(head_len: u32, length: u64, expect_continue: bool) -> Upload {
        Upload {
            head_left: head_len,
            pending: 0,
            framing: UploadFraming::Length { left: length },
            received_all: length == 0,
            expect_continue,
        }
    }

    /// A chunked body that outgrew the buffered limit: `decoded` payload
    /// bytes sit behind the head already.
    pub(crate) fn chunked(
        head_len: u32,
        decoder: ChunkedDecoder,
        decoded: u32,
        expect_continue: bool,
    ) -> Upload {
        Upload {
            head_left: head_len,
            pending: decoded,
            received_all: decoder.finished(),
            framing: UploadFraming::Chunked(decoder),
            expect_continue,
        }
    }
}

impl Upload {
    /// The client's side of an upgraded connection (its request, already
    /// consumed, is not in front of it).
    pub(crate) fn tunnel() -> Upload {
        Upload {
            head_left: 0,
            pending: 0,
            framing: UploadFraming::Tunnel,
            received_all: false,
            expect_continue: false,
        }
    }

    /// Whether this is an upgraded connection's client side.
    pub(crate) fn is_tunnel(&self) -> bool {
        matches!(self.framing, UploadFraming::Tunnel)
    }
}

impl Connection {
    /// The streamed request was answered: if it went upstream the body is
    /// wanted now (`100 Continue` first when the client waits for it);
    /// otherwise it is never read and the connection closes after the
    /// answer.
    pub(crate) fn after_streamed_answer<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        let Some(upload) = self.upload.as_mut() else {
            return;
        };
        if !matches!(self.reading, Reading::Proxying(_)) {
            self.upload.clear();
            if self.phase == Phase::Open {
                self.phase = Phase::Finishing;
            }
            return;
        }
        if std::mem::take(&mut upload.expect_continue) {
            // The caller's headroom check guarantees room for 25 bytes.
            self.send
                .append(CONTINUE)
                .expect("send headroom holds 100 Continue");
        }
        self.upload_received(cx);
    }

    /// A receive for the body is wanted: nothing is buffered that the
    /// upstream has not taken, and more body is to come.
    pub(crate) fn poll_upload(&mut self) -> Option<Intent<'static>> {
        let upload = self.upload.as_ref()?;
        let wanted = matches!(self.phase, Phase::Open | Phase::Finishing)
            && self.receiving == Lane::Idle
            && upload.pending == 0
            && !upload.received_all;
        if !wanted {
            return None;
        }
        if self.recv.spare() == 0 && self.recv.head() > 0 {
            // No span into the buffer is live between reads: the head and
            // the body are found relative to the buffer's head.
            self.recv.compact();
        }
        if self.recv.spare() == 0 {
            return None; // cannot happen: the head and one window fit
        }
        self.receiving = Lane::Busy;
        Some(Intent::Recv(self.recv.lend_spare()))
    }

    /// New bytes arrived (or the upstream side made room): frame what is
    /// new, hand what is pending to the upstream, tell it the end.
    pub(crate) fn upload_received<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        if let Err(error) = self.upload_frame(cx) {
            let status = error.status();
            cx.policy.log(
                Level::Error,
                format_args!(
                    "streamed request body refused ({status}): {error}; closing the connection"
                ),
            );
            self.abandon_upload(cx, status);
            return;
        }
        self.push_upload(cx);
    }

    /// Frames the bytes behind what is pending: a length counts them, a
    /// chunked body is decoded in place.
    fn upload_frame<P: Policy>(&mut self, cx: &mut Context<'_, P>) -> Result<(), ParseError> {
        let limit = cx.shared.config.max_proxy_body_bytes;
        let Some(upload) = self.upload.as_mut() else {
            return Ok(());
        };
        if upload.received_all {
            return Ok(());
        }
        let start = self.recv.head() + upload.head_left + upload.pending;
        let unframed = self.recv.tail() - start;
        if unframed == 0 {
            return Ok(());
        }
        match &mut upload.framing {
            UploadFraming::Length { left } => {
                // Bytes past the body are the next request's: they stay.
                let take = u64::from(unframed).min(*left) as u32;
                upload.pending += take;
                *left -= u64::from(take);
                upload.received_all = *left == 0;
            }
            UploadFraming::Tunnel => upload.pending += unframed,
            UploadFraming::Chunked(decoder) => {
                let undecoded = Span::new(start, unframed);
                let progress = decoder.decode(self.recv.get_mut(undecoded), limit)?;
                let stale = start + progress.decoded_len + progress.leftover;
                self.recv.cut(stale, self.recv.tail() - stale);
                upload.pending += progress.decoded_len;
                upload.received_all = progress.consumed_all;
            }
        }
        Ok(())
    }

    /// Hands pending body bytes to the upstream side as far as it takes
    /// them; once all are taken and received, tells it the body ended.
    pub(crate) fn push_upload<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        let slot = self.slot;
        loop {
            let Some(upload) = self.upload.as_mut() else {
                return;
            };
            if upload.pending == 0 {
                break;
            }
            if self.receiving != Lane::Idle {
                return; // never cut under a receive (one is armed only at 0)
            }
            let at = self.recv.head() + upload.head_left;
            let bytes = self.recv.get(Span::new(at, upload.pending));
            let taken = cx.policy.proxy_upload(slot, bytes).min(upload.pending);
            if taken == 0 {
                return; // an `Event::Upstream` comes when there is room
            }
            self.recv.cut(at, taken);
            upload.pending -= taken;
        }
        if self
            .upload
            .as_ref()
            .is_some_and(|upload| upload.received_all)
        {
            self.upload.clear();
            cx.policy.proxy_upload_end(slot);
        }
    }

    /// The proxied request is over (answered, failed or abandoned): a body
    /// still streaming is dropped, and the connection then closes (its
    /// unread rest cannot be told from a next request).
    pub(crate) fn end_upload(&mut self) {
        if self.upload.take().is_some() && self.phase == Phase::Open {
            self.phase = Phase::Finishing;
        }
    }

    /// The client broke the body off (closed, timed out, or framed it
    /// wrong): before the upstream's head, the client is answered `status`
    /// and the connection closes; after it, the connection aborts. Either
    /// way the upstream request is abandoned (its connection closes, so
    /// the backend never sees the cut body as a whole one).
    pub(crate) fn abandon_upload<P: Policy>(&mut self, cx: &mut Context<'_, P>, status: u16) {
        self.upload.clear();
        if matches!(self.reading, Reading::Proxying(_)) && self.phase == Phase::Open {
            self.refuse_proxied(cx, status);
        } else {
            self.phase = Phase::Aborting;
        }
    }
}
