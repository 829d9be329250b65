//! Body encoders for streamed bodies: how the bytes a generator produces are
//! delimited on the wire — chunked (HTTP/1.1 without a declared length),
//! until the connection closes (HTTP/1.0 without one), or raw with the
//! `Content-Length` policy declared, which is enforced here: never a byte
//! past it, and a body that ends short of it is reported, not terminated.

use crate::{chunk_header, BodyLength, CHUNK_HEADER_MAX, LAST_CHUNK};

/// Room a caller keeps free past a chunk's bytes when it frames one: its
/// size line, its CRLF and the last chunk that may follow it.
pub const FRAME_OVERHEAD_BYTES: usize = CHUNK_HEADER_MAX + 2 + LAST_CHUNK.len();

/// How a streamed body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoder {
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Raw bytes; the connection closes after them (HTTP/1.0).
    UntilClose,
    /// Raw bytes, exactly `length` of them (`Content-Length` from policy);
    /// `left` are still to come.
    Declared {
        /// The declared length.
        length: u64,
        /// Bytes not yet admitted.
        left: u64,
    },
}

/// How much of a produced chunk may go on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// Bytes to frame (all of the chunk unless a declared length ends).
    pub take: usize,
    /// The chunk went past the declared length: after `take` bytes the body
    /// is complete and the stream must stop (an error of the generator's).
    pub overrun: bool,
}

/// A declared-length body ended before its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortBody {
    /// Bytes that were produced.
    pub sent: u64,
    /// The declared length.
    pub length: u64,
}

impl Encoder {
    /// The encoder for a stream: the declared length if policy set one,
    /// else chunked on HTTP/1.1 and close-delimited on HTTP/1.0.
    pub fn for_stream(declared: Option<u64>, minor_version: u8) -> Encoder {
        match declared {
            Some(length) => Encoder::Declared {
                length,
                left: length,
            },
            None if minor_version >= 1 => Encoder::Chunked,
            None => Encoder::UntilClose,
        }
    }

    /// What the head announces for this body.
    pub fn body_length(&self) -> BodyLength {
        match *self {
            Encoder::Chunked => BodyLength::Chunked,
            Encoder::UntilClose => BodyLength::UntilClose,
            Encoder::Declared { length, .. } => BodyLength::Known(length),
        }
    }

    /// Whether the connection may carry another response after this body.
    pub fn keeps_connection(&self) -> bool {
        !matches!(self, Encoder::UntilClose)
    }

    /// Admits a produced chunk of `len` bytes: all of it, or — past a
    /// declared length — the part that fits, marking the overrun.
    pub fn admit(&mut self, len: usize) -> Admitted {
        let Encoder::Declared { left, .. } = self else {
            return Admitted {
                take: len,
                overrun: false,
            };
        };
        if len as u64 <= *left {
            *left -= len as u64;
            return Admitted {
                take: len,
                overrun: false,
            };
        }
        let take = *left as usize; // less than `len`, so it fits
        *left = 0;
        Admitted {
            take,
            overrun: true,
        }
    }

    /// Frames `bytes` at the start of `out`; returns the bytes written.
    /// `out` must hold `bytes.len() + FRAME_OVERHEAD_BYTES` (asserted).
    pub fn frame(&self, bytes: &[u8], out: &mut [u8]) -> usize {
        assert!(
            out.len() >= bytes.len() + FRAME_OVERHEAD_BYTES,
            "no room to frame {} bytes",
            bytes.len()
        );
        if bytes.is_empty() {
            return 0;
        }
        if *self != Encoder::Chunked {
            out[..bytes.len()].copy_from_slice(bytes);
            return bytes.len();
        }
        let mut header = [0u8; CHUNK_HEADER_MAX];
        let n = chunk_header(bytes.len(), &mut header);
        out[..n].copy_from_slice(&header[..n]);
        out[n..n + bytes.len()].copy_from_slice(bytes);
        out[n + bytes.len()..n + bytes.len() + 2].copy_from_slice(b"\r\n");
        n + bytes.len() + 2
    }

    /// The generator ended: writes the last chunk for a chunked body into
    /// `out` (returns its length; 0 otherwise), or reports a declared body
    /// that is short.
    pub fn finish(&self, out: &mut [u8]) -> Result<usize, ShortBody> {
        match *self {
            Encoder::Chunked => {
                out[..LAST_CHUNK.len()].copy_from_slice(LAST_CHUNK);
                Ok(LAST_CHUNK.len())
            }
            Encoder::UntilClose | Encoder::Declared { left: 0, .. } => Ok(0),
            Encoder::Declared { length, left } => Err(ShortBody {
                sent: length - left,
                length,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoders_for_streams() {
        let cases = [
            (None, 1, Encoder::Chunked, BodyLength::Chunked, true),
            (None, 0, Encoder::UntilClose, BodyLength::UntilClose, false),
            (
                Some(7),
                0,
                Encoder::Declared { length: 7, left: 7 },
                BodyLength::Known(7),
                true,
            ),
        ];
        for (declared, minor, encoder, length, keeps) in cases {
            let made = Encoder::for_stream(declared, minor);
            assert_eq!(made, encoder);
            assert_eq!(made.body_length(), length);
            assert_eq!(made.keeps_connection(), keeps);
        }
    }

    #[test]
    fn chunks_are_framed_and_the_body_terminated() {
        let mut out = [0u8; 64];
        let n = Encoder::Chunked.frame(b"hello", &mut out);
        assert_eq!(&out[..n], b"5\r\nhello\r\n");
        assert_eq!(
            Encoder::Chunked.frame(b"", &mut out),
            0,
            "never a last chunk"
        );
        let n = Encoder::Chunked.finish(&mut out).unwrap();
        assert_eq!(&out[..n], b"0\r\n\r\n");
        let n = Encoder::UntilClose.frame(b"raw", &mut out);
        assert_eq!(&out[..n], b"raw");
        assert_eq!(Encoder::UntilClose.finish(&mut out), Ok(0));
    }

    #[test]
    fn a_declared_length_is_never_exceeded_nor_cut_short_silently() {
        let mut encoder = Encoder::for_stream(Some(10), 1);
        assert_eq!(
            encoder.admit(4),
            Admitted {
                take: 4,
                overrun: false
            }
        );
        assert_eq!(
            encoder.finish(&mut [0; 8]),
            Err(ShortBody {
                sent: 4,
                length: 10
            })
        );
        assert_eq!(
            encoder.admit(6),
            Admitted {
                take: 6,
                overrun: false
            }
        );
        assert_eq!(encoder.finish(&mut [0; 8]), Ok(0));
        let mut encoder = Encoder::for_stream(Some(3), 1);
        assert_eq!(
            encoder.admit(5),
            Admitted {
                take: 3,
                overrun: true
            }
        );
        let mut out = [0u8; 32];
        let n = encoder.frame(b"abc", &mut out);
        assert_eq!(&out[..n], b"abc", "raw, not chunked");
    }
}
