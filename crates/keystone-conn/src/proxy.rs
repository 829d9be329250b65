//! Proxied answers: the request went upstream ([`Answer::Proxy`]); when the
//! upstream's head arrives ([`Event::Upstream`], then
//! [`Policy::proxy_head`]) it is re-framed for this client — hop-by-hop
//! fields dropped, `Server` and `Date` the engine's, the body delimited by
//! a length, chunked for HTTP/1.1, or by close for HTTP/1.0 — and the body
//! is taken from the upstream only as the socket drains, like a stream's
//! chunks ([`Policy::proxy_body`]). An upstream body that breaks off closes
//! the connection without a terminating chunk: the client never sees a
//! false end.
//!
//! [`Answer::Proxy`]: crate::Answer::Proxy
//! [`Event::Upstream`]: crate::Event::Upstream

use std::os::fd::RawFd;
use std::time::Instant;

use keystone_parser::{ResponseBody, ResponseHead};
use keystone_response::{
    has_body, write_head_spec, write_switching_head, BodyLength, Committed, Encoder, Framing,
    HeadSpec, FRAME_OVERHEAD_BYTES,
};
use keystone_ringbuf::Span;

use crate::answer::{queue_canned, request_view, Commit, CLOSE};
use crate::connection::{Output, Phase, Reading, Tail};
use crate::read::Complete;
use crate::stream::RequestLabel;
use crate::upload::Upload;
use crate::{
    Connection, Context, Intent, Level, Pipe, Policy, ProxyBody, ProxyHead, STREAM_QUEUE_BYTES,
};

/// The status an access-log line gives a proxied request whose client
/// went away before the upstream answered: nginx's non-standard 499
/// ("client closed request"), which log tooling knows. Never sent.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A proxied request waiting for its upstream's head.
#[derive(Debug)]
pub(crate) struct PendingProxy {
    body: Span,
    total: u32,
    streamed: bool,
    framing: Framing,
    started: Instant,
}

impl PendingProxy {
    /// The request's place in the receive buffer.
    fn complete(&self) -> Complete {
        Complete {
            body: self.body,
            total: self.total,
            streamed: self.streamed,
        }
    }
}

/// A proxied body being relayed.
#[derive(Debug)]
pub(crate) struct UpstreamTail {
    encoder: Encoder,
    label: RequestLabel,
    /// Body bytes queued for the client so far (the access log's).
    pub(crate) moved: u64,
    /// The rest of the body moves socket → pipe → socket.
    pub(crate) splice: Option<Spliced>,
}

/// A proxied body's splice: the upstream's socket, the pipe, and what is
/// left to move.
#[derive(Debug)]
pub(crate) struct Spliced {
    fd: RawFd,
    pub(crate) pipe: Pipe,
    /// Body bytes still to read from the upstream's socket.
    left: u64,
    /// Bytes in the pipe, not yet sent.
    pub(crate) in_pipe: u32,
    /// The upstream closed or failed before the end.
    broken: bool,
}

/// Upstream header fields a client never gets from us as they came: they
/// describe the upstream connection (RFC 9110 §7.6.1) or are the engine's
/// to write (`Server`, `Date`, the framing).
fn passes_to_client(name: &[u8], connection_names: &[&[u8]]) -> bool {
    const ENGINE: [&[u8]; 3] = [b"content-length", b"date", b"server"];
    !(keystone_parser::text::is_hop_by_hop(name)
        || ENGINE
            .iter()
            .any(|engine| name.eq_ignore_ascii_case(engine))
        || connection_names
            .iter()
            .any(|named| name.eq_ignore_ascii_case(named)))
}

/// Fields the upstream's `Connection` header names (each dropped too);
/// at most this many are honoured, which covers every real header.
const CONNECTION_NAMES_MAX: usize = 8;

/// The field names the upstream head's `Connection` headers list (the
/// first [`CONNECTION_NAMES_MAX`]), and how many there are.
fn connection_names<'a>(
    head: &ResponseHead,
    bytes: &'a [u8],
) -> ([&'a [u8]; CONNECTION_NAMES_MAX], usize) {
    let mut named: [&[u8]; CONNECTION_NAMES_MAX] = [&[]; CONNECTION_NAMES_MAX];
    let mut named_len = 0;
    for header in head.headers() {
        if header.name.slice(bytes).eq_ignore_ascii_case(b"connection") {
            for token in keystone_parser::text::list_elements(header.value.slice(bytes)) {
                if named_len < CONNECTION_NAMES_MAX {
                    named[named_len] = token;
                    named_len += 1;
                }
            }
        }
    }
    (named, named_len)
}

impl Connection {
    /// Policy took the request upstream: wait for the answer.
    pub(crate) fn start_proxy(&mut self, complete: &Complete, framing: Framing, started: Instant) {
        self.reading = Reading::Proxying(PendingProxy {
            body: complete.body,
            total: complete.total,
            streamed: complete.streamed,
            framing,
            started,
        });
    }

    /// The upstream progressed: commit its head, or relay more body.
    pub(crate) fn on_upstream<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        // The upstream side may have made room for more of a streamed body.
        self.push_upload(cx);
        if matches!(self.reading, Reading::Proxying(_)) {
            self.take_proxy_head(cx);
        }
        // A body tail is refilled by `poll` (the output side decides when).
    }

    fn take_proxy_head<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        if !matches!(self.phase, Phase::Open | Phase::Finishing) {
            return;
        }
        let Reading::Proxying(pending) = std::mem::replace(&mut self.reading, Reading::Idle) else {
            unreachable!("checked by the caller")
        };
        // Policy may look at the request again (`ctx.on_response`).
        self.reparse_taken_head(cx);
        let label = RequestLabel::new(
            cx.shared.head.method.slice(self.recv.filled()),
            cx.shared.head.path.slice(self.recv.filled()),
        );
        let complete = pending.complete();
        // The drain may have begun while the upstream was answering.
        let framing = self.drain_framing(cx, pending.framing, complete.total);
        let request = request_view(
            &self.recv,
            &cx.shared.head,
            &complete,
            self.slot,
            self.peer,
            crate::connection::facts_of(&self.tls),
            pending.started,
        );
        let answer = cx.policy.proxy_head(&request);
        if matches!(answer, ProxyHead::Waiting) {
            self.reading = Reading::Proxying(pending);
            return;
        }
        // Policy hears `proxy_done` after `answered`, so the access log
        // still sees which upstream answered.
        let mut done = true;
        let commit = match answer {
            ProxyHead::Waiting => unreachable!("handled above"),
            ProxyHead::Failed { status } => Commit {
                committed: queue_canned(&mut self.send, cx.shared, status, None, framing),
                close: false,
            },
            ProxyHead::Ready {
                head,
                bytes,
                policy: Some(exchange),
            } if exchange.response_body().is_some() => {
                // `ctx.on_response` answered itself: its status and body,
                // the upstream's headers as for a relayed answer (its
                // writes win by name), the upstream's body discarded (the
                // upstream connection closes). A string body only.
                let body = exchange.response_body().unwrap_or_default();
                let status = u16::try_from(exchange.status).unwrap_or(500);
                let spec = HeadSpec {
                    status,
                    length: BodyLength::Known(body.len() as u64),
                    default_content_type: keystone_response::DEFAULT_CONTENT_TYPE,
                    extra: &[],
                };
                let (named, named_len) = connection_names(head, bytes);
                let headers = merged_headers(head, bytes, Some(exchange), |name| {
                    passes_to_client(name, &named[..named_len])
                });
                let room = self.send.spare() as usize;
                match write_head_spec(
                    &spec,
                    headers,
                    framing,
                    &cx.shared.date,
                    self.send.spare_mut(),
                ) {
                    Ok(committed) if committed.bytes + body.len() <= room => {
                        self.send.commit(committed.bytes as u32);
                        if has_body(status, framing.head_request) {
                            self.send.append(body).expect("checked room");
                        }
                        Commit {
                            committed,
                            close: false,
                        }
                    }
                    _ => Commit {
                        committed: queue_canned(&mut self.send, cx.shared, 500, None, framing),
                        close: false,
                    },
                }
            }
            ProxyHead::Ready {
                head,
                bytes,
                policy,
            } if head.status == 101 => {
                // The upstream accepted an upgrade (a WebSocket): its
                // `Upgrade` is relayed with `Connection: upgrade`, and both
                // connections become one byte stream each way until either
                // side closes. keystone-upstream lets a 101 through only to
                // a request that asked for the upgrade.
                let headers = merged_headers(head, bytes, policy, |name| {
                    name.eq_ignore_ascii_case(b"upgrade") || passes_to_client(name, &[])
                });
                match write_switching_head(headers, &cx.shared.date, self.send.spare_mut()) {
                    Ok(committed) => {
                        self.send.commit(committed.bytes as u32);
                        cx.policy.proxy_head_taken(self.slot);
                        self.tail.set(Tail::Upstream(UpstreamTail {
                            encoder: Encoder::for_stream(None, 0),
                            label,
                            moved: 0,
                            splice: None,
                        }));
                        self.upload.set(Some(Upload::tunnel()));
                        done = false;
                        Commit {
                            committed,
                            close: true,
                        }
                    }
                    Err(_) => Commit {
                        committed: self.fail(
                            cx,
                            framing,
                            format_args!("upstream upgrade head too large to relay"),
                        ),
                        close: true,
                    },
                }
            }
            ProxyHead::Ready {
                head,
                bytes,
                policy,
            } => {
                let (encoder, length) = client_framing(head, bytes, framing);
                let framing = Framing {
                    keep_alive: framing.keep_alive && encoder.keeps_connection(),
                    ..framing
                };
                // `ctx.on_response` may have changed the status and the
                // headers: its writes win over the upstream's by name, a
                // removal drops the upstream's.
                let status = policy.map_or(head.status, |exchange| {
                    u16::try_from(exchange.status).unwrap_or(head.status)
                });
                let spec = HeadSpec {
                    status,
                    length,
                    default_content_type: b"",
                    extra: &[],
                };
                let (named, named_len) = connection_names(head, bytes);
                let headers = merged_headers(head, bytes, policy, |name| {
                    passes_to_client(name, &named[..named_len])
                });
                let written = write_head_spec(
                    &spec,
                    headers,
                    framing,
                    &cx.shared.date,
                    self.send.spare_mut(),
                );
                let relay =
                    has_body(status, framing.head_request) && head.body != ResponseBody::None;
                match written {
                    Ok(committed) => {
                        self.send.commit(committed.bytes as u32);
                        cx.policy.proxy_head_taken(self.slot);
                        if relay {
                            self.tail.set(Tail::Upstream(UpstreamTail {
                                encoder,
                                label,
                                moved: 0,
                                splice: None,
                            }));
                            done = false;
                            self.try_splice(cx);
                        }
                        Commit {
                            committed,
                            close: !framing.keep_alive,
                        }
                    }
                    Err(_) => Commit {
                        committed: self.fail(
                            cx,
                            framing,
                            format_args!("upstream response head too large to relay"),
                        ),
                        close: false,
                    },
                }
            }
        };
        // The exchange `ctx.on_response` ran in is done with.
        cx.policy.expire();
        self.finish_answer(cx, &complete, framing, commit, pending.started);
        if done {
            self.proxy_finished(cx);
        }
        if self
            .upload
            .as_ref()
            .is_some_and(|upload| upload.is_tunnel())
        {
            // What the client sent behind its handshake (now at the
            // buffer's front) goes up the tunnel at once.
            self.upload_received(cx);
        }
        self.drive(cx);
    }

    /// Policy is told the proxied request is over; a request body still
    /// streaming is dropped (the connection then closes).
    pub(crate) fn proxy_finished<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        cx.policy.proxy_done(self.slot);
        self.end_upload();
    }

    /// A proxied request whose streamed body broke off before the
    /// upstream's head: the client is answered `status`, the connection
    /// closes, the upstream request is abandoned.
    pub(crate) fn refuse_proxied<P: Policy>(&mut self, cx: &mut Context<'_, P>, status: u16) {
        let Reading::Proxying(pending) = std::mem::replace(&mut self.reading, Reading::Idle) else {
            return;
        };
        self.reparse_taken_head(cx);
        let complete = pending.complete();
        let committed = queue_canned(&mut self.send, cx.shared, status, None, CLOSE);
        let commit = Commit {
            committed,
            close: true,
        };
        self.finish_answer(cx, &complete, CLOSE, commit, pending.started);
        self.proxy_finished(cx);
    }

    /// Frames upstream body bytes into the send buffer until enough is
    /// queued for the socket, the upstream has none right now, or the
    /// body ends.
    pub(crate) fn fill_upstream<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        let slot = self.slot;
        loop {
            if self.send.spare() as usize <= FRAME_OVERHEAD_BYTES
                || self.send.len() >= STREAM_QUEUE_BYTES
            {
                return;
            }
            let Some(Tail::Upstream(tail)) = self.tail.get_mut() else {
                unreachable!("fill without an upstream body")
            };
            match cx.policy.proxy_body(slot) {
                ProxyBody::Bytes(bytes) => {
                    let room = self.send.spare() as usize - FRAME_OVERHEAD_BYTES;
                    let take = tail.encoder.admit(bytes.len().min(room)).take;
                    let framed = tail.encoder.frame(&bytes[..take], self.send.spare_mut());
                    self.send.commit(framed as u32);
                    tail.moved += take as u64;
                    cx.policy.proxy_consumed(slot, take as u32);
                }
                ProxyBody::Waiting => return,
                // A spliced body's end (or break) is the splice's to see:
                // the pipe may still hold bytes.
                ProxyBody::End | ProxyBody::Broken if tail.splice.is_some() => return,
                ProxyBody::End => {
                    match tail.encoder.finish(self.send.spare_mut()) {
                        Ok(framed) => self.send.commit(framed as u32),
                        Err(short) => {
                            let label = tail.label.clone();
                            cx.policy.log(
                                Level::Error,
                                format_args!(
                                    "{label}: upstream body ended after {} of its {} bytes; closing the connection",
                                    short.sent, short.length
                                ),
                            );
                            self.phase = Phase::Finishing;
                        }
                    }
                    self.release_tail(cx);
                    // The end may come after the last bytes already went
                    // out: then no send completes to move the connection
                    // on, so it looks for the next request now.
                    if self.phase == Phase::Open && self.send.is_empty() {
                        self.queued = 0;
                        self.drive(cx);
                    }
                    return;
                }
                ProxyBody::Broken => {
                    // Logged by policy with the peer and the reason. What is
                    // queued goes out, then the connection closes: no
                    // terminating chunk, a length left short.
                    self.release_tail(cx);
                    self.phase = Phase::Finishing;
                    return;
                }
            }
        }
    }

    /// A length-delimited body with enough left on the upstream's socket
    /// moves by splice once what came with the head is copied (when a pipe
    /// is free): decided as the head is relayed, before the upstream side
    /// reads more of it.
    fn try_splice<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        let Some(Tail::Upstream(tail)) = self.tail.get_mut() else {
            return;
        };
        let raw = matches!(tail.encoder.body_length(), BodyLength::Known(_));
        if !raw || tail.splice.is_some() {
            return;
        }
        if !crate::connection::facts_of(&self.tls).allows_splice() {
            // The body must pass through the driver's encryption: policy
            // is not asked, so the upstream side relays it by copy.
            return;
        }
        if cx.shared.pipes.available() == 0 {
            return;
        }
        let Some((fd, left)) = cx.policy.proxy_splice(self.slot) else {
            return;
        };
        let Some(pipe) = cx.shared.pipes.take() else {
            unreachable!("a pipe was available")
        };
        tail.splice = Some(Spliced {
            fd,
            pipe,
            left,
            in_pipe: 0,
            broken: false,
        });
    }

    /// The next splice of a spliced proxied body: what is in the pipe goes
    /// out, else more comes in; at the end (or a break, once the pipe is
    /// empty) the tail is released.
    pub(crate) fn poll_splice<P: Policy>(
        &mut self,
        cx: &mut Context<'_, P>,
    ) -> Option<Intent<'static>> {
        let Some(Tail::Upstream(UpstreamTail {
            splice: Some(splice),
            ..
        })) = self.tail.get_mut()
        else {
            return None;
        };
        if splice.in_pipe > 0 {
            self.output = Output::SpliceOut;
            return Some(Intent::SpliceOut {
                from: splice.pipe.read,
                len: splice.in_pipe,
            });
        }
        if splice.left > 0 && !splice.broken {
            self.output = Output::SpliceIn;
            return Some(Intent::SpliceUpstream {
                fd: splice.fd,
                into: splice.pipe.write,
                len: splice.left.min(u64::from(splice.pipe.capacity)) as u32,
            });
        }
        let broken = splice.broken;
        if broken {
            // Logged by policy; what was moved went out, then the
            // connection closes: the length stays short.
            self.phase = Phase::Finishing;
        }
        self.release_tail(cx);
        if self.phase == Phase::Open {
            self.after_output(cx);
        }
        None
    }

    /// A splice of a proxied body completed.
    pub(crate) fn on_upstream_spliced<P: Policy>(
        &mut self,
        into_pipe: bool,
        result: i32,
        cx: &mut Context<'_, P>,
    ) {
        let slot = self.slot;
        let Some(Tail::Upstream(UpstreamTail {
            splice: Some(splice),
            encoder,
            moved: queued,
            ..
        })) = self.tail.get_mut()
        else {
            unreachable!("a proxied splice without its tail")
        };
        let moved = result.max(0) as u32;
        if into_pipe {
            splice.in_pipe += moved;
            splice.left -= u64::from(moved).min(splice.left);
            encoder.admit(moved as usize);
            if moved > 0 {
                cx.policy.proxy_spliced(slot, moved);
            }
            if result <= 0 && !splice.broken {
                // The upstream closed (0) or failed before the end.
                splice.broken = true;
                cx.policy.proxy_splice_failed(slot);
            }
        } else {
            splice.in_pipe -= moved.min(splice.in_pipe);
            *queued += u64::from(moved);
            if result <= 0 && matches!(self.phase, Phase::Open | Phase::Finishing) {
                self.phase = Phase::Aborting; // the client is gone
            }
        }
    }

    /// A proxied request the connection gives up on (it aborts: the
    /// client went away before the upstream's head). Its access-log line
    /// says 499, nginx's "client closed request".
    pub(crate) fn release_proxy<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        if let Reading::Proxying(pending) = std::mem::replace(&mut self.reading, Reading::Idle) {
            if self.reparses_taken_head(cx) {
                let complete = pending.complete();
                let request = request_view(
                    &self.recv,
                    &cx.shared.head,
                    &complete,
                    self.slot,
                    self.peer,
                    crate::connection::facts_of(&self.tls),
                    pending.started,
                );
                let committed = Committed {
                    bytes: 0,
                    status: CLIENT_CLOSED_REQUEST,
                    body: BodyLength::Known(0),
                };
                cx.policy.answered(&request, &committed, false);
            }
            self.proxy_finished(cx);
        }
        self.upload.clear();
    }
}

/// The header lines a relayed head carries: the upstream's that `passes`
/// and that `ctx.on_response` did not override by name (a removal drops
/// one), then policy's own lines.
fn merged_headers<'a>(
    head: &'a ResponseHead,
    bytes: &'a [u8],
    policy: Option<&'a keystone_exchange::HttpExchange>,
    passes: impl Fn(&[u8]) -> bool + Clone + 'a,
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone + 'a {
    let overridden = move |name: &[u8]| {
        policy.is_some_and(|exchange| {
            exchange
                .response_overrides()
                .any(|(set, _)| set.eq_ignore_ascii_case(name))
        })
    };
    head.headers()
        .iter()
        .map(move |header| (header.name.slice(bytes), header.value.slice(bytes)))
        .filter(move |(name, _)| passes(name) && !overridden(name))
        .chain(
            policy
                .into_iter()
                .flat_map(|exchange| exchange.response_headers()),
        )
}

/// How the client gets the upstream's body: the encoder, and what the head
/// announces. A length stays a length; chunked and close-delimited bodies
/// become chunked for HTTP/1.1 and close-delimited for HTTP/1.0. A bodiless
/// answer to a HEAD keeps the upstream's `Content-Length` (the GET's size).
fn client_framing(head: &ResponseHead, bytes: &[u8], framing: Framing) -> (Encoder, BodyLength) {
    match head.body {
        ResponseBody::Length(length) => {
            let encoder = Encoder::for_stream(Some(length), framing.minor_version);
            (encoder, BodyLength::Known(length))
        }
        ResponseBody::Chunked | ResponseBody::UntilClose => {
            let encoder = Encoder::for_stream(None, framing.minor_version);
            let length = encoder.body_length();
            (encoder, length)
        }
        ResponseBody::None => {
            let declared = head
                .headers()
                .iter()
                .find(|h| h.name.slice(bytes).eq_ignore_ascii_case(b"content-length"))
                .and_then(|h| keystone_parser::text::parse_decimal(h.value.slice(bytes)))
                .filter(|_| framing.head_request)
                .unwrap_or(0);
            (
                Encoder::for_stream(Some(0), framing.minor_version),
                BodyLength::Known(declared),
            )
        }
    }
}
