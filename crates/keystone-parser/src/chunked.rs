//! In-place chunked body decoding (RFC 9112 §7.1) over picohttpparser's
//! `phr_decode_chunked`, each buffer first held to the framing grammar by
//! [`ChunkLines`]; trailers are checked, consumed and discarded.

use libc::c_char;
use picohttpparser_sys::{phr_chunked_decoder, phr_decode_chunked};

use crate::chunk_lines::{ChunkLines, Scan};
use crate::ParseError;

/// What one [`ChunkedDecoder::decode`] call did to its buffer.
///
/// Layout of `buf` afterwards:
/// * `buf[..decoded_len]`: payload bytes decoded by this call, in order;
/// * `buf[decoded_len..decoded_len + leftover]`: when `consumed_all`, the bytes
///   that followed the chunked body (the start of a pipelined next request),
///   moved down right after the payload;
/// * `buf[decoded_len + leftover..]`: framing already consumed (sizes,
///   extensions, CRLFs, trailers): stale; the caller cuts it out
///   (`RingBuffer::cut`) before more bytes arrive.
///
/// When `consumed_all` is false every input byte was consumed (`leftover` is
/// 0): a partial chunk-size line is remembered inside the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkProgress {
    pub decoded_len: u32,
    /// The final chunk and the trailer section were seen: the body is complete.
    pub consumed_all: bool,
    pub leftover: u32,
}

/// Decoder state for one chunked body; reset between bodies.
pub struct ChunkedDecoder {
    state: phr_chunked_decoder,
    /// The grammar picohttpparser does not check, over the same bytes.
    lines: ChunkLines,
    /// Payload bytes decoded so far in this body, for the body limit.
    decoded_total: u64,
    /// The final chunk was seen; decoding more is a programmer error.
    finished: bool,
}

impl std::fmt::Debug for ChunkedDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedDecoder")
            .field("decoded_total", &self.decoded_total)
            .field("finished", &self.finished)
            .finish()
    }
}

impl Default for ChunkedDecoder {
    fn default() -> ChunkedDecoder {
        ChunkedDecoder::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder {
            state: fresh_state(),
            lines: ChunkLines::NEW,
            decoded_total: 0,
            finished: false,
        }
    }

    /// Prepares for the next body.
    pub fn reset(&mut self) {
        *self = ChunkedDecoder::new();
    }

    /// Payload bytes decoded since the last reset.
    pub fn decoded_total(&self) -> u64 {
        self.decoded_total
    }

    /// Payload bytes decoded so far plus the rest of the chunk being
    /// decoded, as its size line declared it: what the body is known to
    /// reach.
    pub fn declared_total(&self) -> u64 {
        self.decoded_total
            .saturating_add(self.state.bytes_left_in_chunk as u64)
    }

    /// Whether the final chunk (and trailers) were seen: the body is
    /// complete.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Decodes `buf` in place; `buf` is the not-yet-decoded bytes following
    /// what earlier calls decoded. See [`ChunkProgress`] for the layout
    /// afterwards. `BadChunk` on framing the grammar refuses (see
    /// `chunk_lines`: anything but CRLF line ends, whitespace without an
    /// extension, a bare `;`, non-token names, control bytes, a malformed
    /// trailer line); `BodyTooLarge` as soon as
    /// the payload decoded so far plus the rest of the current chunk's
    /// declared size exceeds `max_body_bytes` (so a huge size line is
    /// rejected before its data arrives).
    pub fn decode(
        &mut self,
        buf: &mut [u8],
        max_body_bytes: u64,
    ) -> Result<ChunkProgress, ParseError> {
        assert!(!self.finished, "decode after the final chunk: reset first");
        assert!(buf.len() <= u32::MAX as usize);
        let input_len = buf.len();
        // Checked before picohttpparser moves anything: on an error the
        // connection is answered 400 and closed, so the buffer no longer
        // matters.
        let scan = self.lines.scan(buf)?;
        let mut decoded_len = input_len;
        // SAFETY: buf is a live, exclusively borrowed slice of input_len
        // bytes; the decoder only reads and writes inside [0, input_len) and
        // writes the decoded length back through the local.
        let status = unsafe {
            phr_decode_chunked(
                &mut self.state,
                buf.as_mut_ptr().cast::<c_char>(),
                &mut decoded_len,
            )
        };
        assert!(decoded_len <= input_len, "decoder grew the buffer");
        if status == -1 {
            return Err(ParseError::BadChunk);
        }
        self.decoded_total += decoded_len as u64;
        // While the size line is still being read this is a prefix of the
        // final size, which only grows with more digits: safe to check early.
        let declared = self
            .decoded_total
            .saturating_add(self.state.bytes_left_in_chunk as u64);
        if declared > max_body_bytes {
            return Err(ParseError::BodyTooLarge {
                limit: max_body_bytes,
                declared,
            });
        }
        let (consumed_all, leftover) = match (status, scan) {
            (-2, Scan::More) => (false, 0),
            (leftover, Scan::Ends { len }) if leftover >= 0 => {
                assert!(decoded_len + leftover as usize <= input_len);
                // Both parsers must agree on where the body ends; they do
                // for everything the grammar admits (the differential tests
                // and the fuzz target check it). Should they ever not, the
                // body is refused rather than framed by either one.
                if input_len - len != leftover as usize {
                    debug_assert!(false, "grammar ends at {len}, decoder leaves {leftover}");
                    return Err(ParseError::BadChunk);
                }
                self.finished = true;
                (true, leftover as u32)
            }
            (status, scan) => {
                debug_assert!(false, "decoder status {status}, grammar {scan:?}");
                return Err(ParseError::BadChunk);
            }
        };
        Ok(ChunkProgress {
            decoded_len: decoded_len as u32,
            consumed_all,
            leftover,
        })
    }
}

fn fresh_state() -> phr_chunked_decoder {
    // SAFETY: phr_chunked_decoder is a C struct of integers (size_t and
    // chars) documented as "should be zero-filled before start"; all-zero is
    // a valid value of every field. Its private fields leave no other way.
    let mut state: phr_chunked_decoder = unsafe { std::mem::zeroed() };
    // Trailers are consumed (and dropped) so that `leftover` is exactly the
    // next request's bytes.
    state.consume_trailer = 1;
    state
}
