//! Streamed bodies: policy's generator is pulled only when the send buffer
//! has drained (the output side is idle), until [`STREAM_QUEUE_BYTES`] are
//! queued — so a slow reader holds at most the send buffer, and Lua never
//! runs ahead of the socket. The Response Builder's [`Encoder`] frames the
//! chunks (chunked, close-delimited, or a declared length it enforces).

use keystone_response::{Encoder, FRAME_OVERHEAD_BYTES};
use keystone_ringbuf::PinnedBytes;

use crate::connection::{Phase, Tail};
use crate::{Connection, Context, Level, PinOwner, Policy, Pulled, STREAM_QUEUE_BYTES};

/// Consecutive empty chunks accepted before a generator counts as stuck:
/// a pull that produces nothing is a generator's way to skip (a filtered
/// row), but one that only ever skips would be pulled forever. Equal to
/// [`STREAM_PULLS_PER_FILL`], so the worker's time in one stream between
/// two sends is bounded the same way whatever the generator returns.
const STREAM_EMPTY_PULLS_MAX: u32 = STREAM_PULLS_PER_FILL;

/// Pulls made for one stream before the bytes they produced are sent: the
/// handler budget bounds each pull, this bounds how many run back to back
/// while every other connection of the worker waits. 64 chunks of even
/// 512 bytes fill [`STREAM_QUEUE_BYTES`]; a generator of tiny chunks sends
/// them in several sends instead of holding the worker.
pub(crate) const STREAM_PULLS_PER_FILL: u32 = 64;

/// Bytes of `METHOD /path` a stream keeps for its log lines; a longer
/// request line is cut (log lines are for people, and this keeps the label
/// a fixed part of the connection's tail, never a heap allocation; 64 bytes
/// name most API paths whole and keep every slot small).
const REQUEST_LABEL_BYTES: usize = 64;
const _: () = assert!(REQUEST_LABEL_BYTES <= u8::MAX as usize);

/// `METHOD /path` of a request, copied (cut at [`REQUEST_LABEL_BYTES`]):
/// a stream's log lines are written after its request's bytes are gone.
#[derive(Clone)]
pub(crate) struct RequestLabel {
    bytes: [u8; REQUEST_LABEL_BYTES],
    len: u8,
}

impl RequestLabel {
    pub(crate) fn new(method: &[u8], path: &[u8]) -> RequestLabel {
        let mut label = RequestLabel {
            bytes: [0; REQUEST_LABEL_BYTES],
            len: 0,
        };
        for part in [method, b" ", path] {
            let start = label.len as usize;
            let take = part.len().min(REQUEST_LABEL_BYTES - start);
            label.bytes[start..start + take].copy_from_slice(&part[..take]);
            label.len += take as u8;
        }
        label
    }
}

impl std::fmt::Display for RequestLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = String::from_utf8_lossy(&self.bytes[..self.len as usize]);
        f.write_str(&text)
    }
}

impl std::fmt::Debug for RequestLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// A generator being pulled as the socket drains.
#[derive(Debug)]
pub(crate) struct StreamTail {
    /// The state that made the generator (a retired one after a reload).
    pub(crate) owner: PinOwner,
    encoder: Encoder,
    /// The part of the last chunk not yet framed into the send buffer.
    pending: Option<PinnedBytes>,
    /// The generator produced more than its declared length: `pending`
    /// holds the part that fits, and the stream aborts once it is queued.
    overrun: bool,
    label: RequestLabel,
    /// Body bytes queued for the client so far (the access log's).
    pub(crate) moved: u64,
}

impl StreamTail {
    pub(crate) fn new(owner: PinOwner, encoder: Encoder, label: RequestLabel) -> StreamTail {
        StreamTail {
            owner,
            encoder,
            pending: None,
            overrun: false,
            label,
            moved: 0,
        }
    }
}

/// How filling ended.
enum Filled {
    /// More once the socket drains.
    More,
    /// The generator ended; the terminator (if any) is queued.
    Done,
    /// Aborted: what is queued goes out, then the connection closes (no
    /// terminating chunk: the client sees a body that did not end).
    Failed,
}

impl Connection {
    /// Frames chunks from the stream into the send buffer until enough is
    /// queued for the socket or the generator ends. With a declared length,
    /// bytes past it are never queued, and a generator that ends short of
    /// it or goes past it aborts the stream.
    pub(crate) fn fill_stream<P: Policy>(&mut self, cx: &mut Context<'_, P>) {
        match self.fill(cx) {
            Filled::More => {}
            Filled::Done => self.release_tail(cx),
            Filled::Failed => {
                self.release_tail(cx);
                self.phase = Phase::Finishing;
            }
        }
    }

    fn fill<P: Policy>(&mut self, cx: &mut Context<'_, P>) -> Filled {
        let slot = self.slot;
        let Some(Tail::Stream(stream)) = self.tail.get_mut() else {
            unreachable!("fill without a stream")
        };
        let (mut empty_pulls, mut pulls) = (0, 0);
        // Each pass frames bytes, or pulls once; bounded by the send
        // buffer's room and STREAM_PULLS_PER_FILL pulls (empty pulls end
        // the stream at STREAM_EMPTY_PULLS_MAX: with nothing queued there
        // is no send to come back after).
        loop {
            if self.send.spare() as usize <= FRAME_OVERHEAD_BYTES {
                return Filled::More;
            }
            if let Some(mut chunk) = stream.pending.take() {
                let room = self.send.spare() as usize - FRAME_OVERHEAD_BYTES;
                let take = chunk.len().min(room);
                let framed = stream
                    .encoder
                    .frame(&chunk.as_slice()[..take], self.send.spare_mut());
                self.send.commit(framed as u32);
                stream.moved += take as u64;
                chunk.advance(take);
                if !chunk.is_empty() {
                    stream.pending = Some(chunk);
                }
                continue;
            }
            if stream.overrun {
                // The declared bytes are all queued (logged when found).
                return Filled::Failed;
            }
            if self.send.len() >= STREAM_QUEUE_BYTES
                || (pulls >= STREAM_PULLS_PER_FILL && !self.send.is_empty())
            {
                return Filled::More;
            }
            pulls += 1;
            match cx.policy.pull(stream.owner, slot) {
                Pulled::Chunk(chunk) if chunk.is_empty() => {
                    empty_pulls += 1;
                    if empty_pulls == STREAM_EMPTY_PULLS_MAX {
                        cx.policy.log(
                            Level::Error,
                            format_args!(
                                "{}: stream aborted: the generator returned {empty_pulls} empty chunks in a row",
                                stream.label
                            ),
                        );
                        return Filled::Failed;
                    }
                }
                Pulled::Chunk(mut chunk) => {
                    empty_pulls = 0;
                    let admitted = stream.encoder.admit(chunk.len());
                    if admitted.overrun {
                        let Encoder::Declared { length, .. } = stream.encoder else {
                            unreachable!("only a declared length overruns")
                        };
                        cx.policy.log(
                            Level::Error,
                            format_args!(
                                "{}: stream aborted: the generator produced more than the {length} bytes of the Content-Length set by policy; sent {length} bytes, closing the connection",
                                stream.label
                            ),
                        );
                        stream.overrun = true;
                    }
                    let admitted_bytes = chunk.split_to(admitted.take);
                    if !admitted_bytes.is_empty() {
                        stream.pending = Some(admitted_bytes);
                    }
                }
                Pulled::End => {
                    return match stream.encoder.finish(self.send.spare_mut()) {
                        Ok(framed) => {
                            self.send.commit(framed as u32);
                            Filled::Done
                        }
                        Err(short) => {
                            cx.policy.log(
                                Level::Error,
                                format_args!(
                                    "{}: stream aborted: the generator ended after {} of the {} bytes of the Content-Length set by policy; closing the connection",
                                    stream.label, short.sent, short.length
                                ),
                            );
                            Filled::Failed
                        }
                    };
                }
                Pulled::Failed { message } => {
                    cx.policy.log(
                        Level::Error,
                        format_args!(
                            "{}: stream aborted: generator failed: {message}",
                            stream.label
                        ),
                    );
                    return Filled::Failed;
                }
            }
        }
    }
}
