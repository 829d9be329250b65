//! The chunked framing grammar, checked byte by byte before
//! picohttpparser's decoder sees the bytes.
//!
//! `phr_decode_chunked` reads a chunk-size and then skips anything up to
//! LF; it takes any run of CRs before an LF, and never looks inside trailer
//! lines. Two parsers that disagree on where a chunk ends are a smuggling
//! vector ("funky chunks"), so every framing byte is held to RFC 9112 §7.1
//! here, in place and without allocating:
//!
//! ```text
//! chunk      = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-size = 1*HEXDIG
//! chunk-ext  = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
//! chunk-ext-name = token
//! chunk-ext-val  = token / quoted-string
//! last-chunk = 1*("0") [ chunk-ext ] CRLF
//! trailer-section = *( field-line CRLF )   then CRLF
//! ```
//!
//! Line ends are CRLF only: a bare LF, or a CR not followed by LF, is an
//! error (the head parser's bare-LF tolerance does not extend to framing,
//! where it is exactly what the funky-chunk attacks exploit). Whitespace
//! (BWS) is only allowed where the grammar puts it: before `;` or `=` and
//! after them, so `5 \r\n` (whitespace with no extension) is refused.
//! Trailer field lines must be `token ":" OWS value OWS` without control
//! bytes; an obs-fold (a line starting with SP or HTAB) is refused.

use crate::target::is_token_byte;
use crate::ParseError;

/// Chunk-extension bytes one body may carry in total. Extensions are
/// skipped, never stored, so this only bounds how long a peer may keep a
/// body "in framing" without sending data; 16 KiB is hyper's limit
/// (`CHUNKED_EXTENSIONS_LIMIT`), far above any real use (extensions are
/// practically never sent).
pub const MAX_CHUNK_EXT_BYTES: u32 = 16 * 1024;

/// Trailer-section bytes one body may carry. Trailers are discarded, so
/// this bounds work, not memory; it is the default head limit
/// ([`crate::MAX_HEADER_BYTES_DEFAULT`]): a trailer section is a header
/// section.
pub const MAX_TRAILER_BYTES: u32 = crate::MAX_HEADER_BYTES_DEFAULT;

/// Where in the framing the next byte falls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The first HEXDIG of a chunk-size.
    SizeStart,
    /// More HEXDIGs, `;`, BWS or the CR.
    Size,
    /// BWS after the size: only more BWS or `;` may follow.
    SizeSpace,
    /// After `;`: BWS or the first byte of an extension name.
    ExtNameStart,
    ExtName,
    /// BWS after a name: `=`, `;` or more BWS.
    ExtNameSpace,
    /// After `=`: BWS, a token or a `"`.
    ExtValueStart,
    ExtToken,
    Quoted,
    /// After a `\` inside a quoted-string.
    QuotedPair,
    /// After a value (token or closing quote): `;`, BWS or the CR.
    ExtValueEnd,
    /// BWS after a value: `;` or more BWS.
    ExtValueSpace,
    /// The LF of a chunk line.
    LineLf,
    /// Chunk data; `remaining` bytes of it still to come.
    Data,
    /// The CR after chunk data.
    DataCr,
    DataLf,
    /// The start of a trailer line, or the CR of the final empty line.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
    /// The body ended; nothing more belongs to it.
    Done,
}

/// What [`ChunkLines::scan`] found in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// Every byte is valid framing or data; the body goes on.
    More,
    /// The body ends after `len` bytes of the buffer (the final CRLF
    /// included); the rest belongs to whatever follows.
    Ends { len: usize },
}

/// The grammar checker's state for one chunked body; a few words, reset
/// with the decoder.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkLines {
    state: State,
    /// The chunk-size being read, then the data bytes left in the chunk.
    remaining: u64,
    ext_bytes: u32,
    trailer_bytes: u32,
}

impl ChunkLines {
    pub(crate) const NEW: ChunkLines = ChunkLines {
        state: State::SizeStart,
        remaining: 0,
        ext_bytes: 0,
        trailer_bytes: 0,
    };

    /// Checks `buf`, the bytes that follow everything scanned before.
    /// `BadChunk` at the first byte the grammar does not allow, at a
    /// chunk-size that overflows 64 bits, and past [`MAX_CHUNK_EXT_BYTES`]
    /// or [`MAX_TRAILER_BYTES`].
    pub(crate) fn scan(&mut self, buf: &[u8]) -> Result<Scan, ParseError> {
        assert!(self.state != State::Done, "scan after the body ended");
        let mut index = 0;
        while index < buf.len() {
            if self.state == State::Data {
                let take = self.remaining.min((buf.len() - index) as u64);
                self.remaining -= take;
                index += take as usize;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.state = self.step(buf[index])?;
            index += 1;
            if self.state == State::Done {
                return Ok(Scan::Ends { len: index });
            }
        }
        Ok(Scan::More)
    }

    fn step(&mut self, byte: u8) -> Result<State, ParseError> {
        use State::*;
        let bad = Err(ParseError::BadChunk);
        let space = byte == b' ' || byte == b'\t';
        if matches!(
            self.state,
            ExtNameStart
                | ExtName
                | ExtNameSpace
                | ExtValueStart
                | ExtToken
                | Quoted
                | QuotedPair
                | ExtValueEnd
                | ExtValueSpace
        ) || (byte == b';' && matches!(self.state, Size | SizeSpace))
        {
            self.ext_bytes += 1;
            if self.ext_bytes > MAX_CHUNK_EXT_BYTES {
                return bad;
            }
        }
        if matches!(
            self.state,
            TrailerStart | TrailerName | TrailerValue | TrailerLf
        ) {
            self.trailer_bytes += 1;
            if self.trailer_bytes > MAX_TRAILER_BYTES {
                return bad;
            }
        }
        let next = match self.state {
            SizeStart | Size => match hex_value(byte) {
                Some(digit) => {
                    if self.remaining > u64::MAX >> 4 {
                        return bad; // the size overflows 64 bits
                    }
                    self.remaining = self.remaining << 4 | u64::from(digit);
                    Size
                }
                None if self.state == SizeStart => return bad,
                None => match byte {
                    b';' => ExtNameStart,
                    b'\r' => LineLf,
                    _ if space => SizeSpace,
                    _ => return bad,
                },
            },
            SizeSpace => match byte {
                b';' => ExtNameStart,
                _ if space => SizeSpace,
                _ => return bad,
            },
            ExtNameStart => match byte {
                _ if space => ExtNameStart,
                _ if is_token_byte(byte) => ExtName,
                _ => return bad,
            },
            ExtName => match byte {
                b'=' => ExtValueStart,
                b';' => ExtNameStart,
                b'\r' => LineLf,
                _ if space => ExtNameSpace,
                _ if is_token_byte(byte) => ExtName,
                _ => return bad,
            },
            ExtNameSpace => match byte {
                b'=' => ExtValueStart,
                b';' => ExtNameStart,
                _ if space => ExtNameSpace,
                _ => return bad,
            },
            ExtValueStart => match byte {
                b'"' => Quoted,
                _ if space => ExtValueStart,
                _ if is_token_byte(byte) => ExtToken,
                _ => return bad,
            },
            ExtToken => match byte {
                b';' => ExtNameStart,
                b'\r' => LineLf,
                _ if space => ExtValueSpace,
                _ if is_token_byte(byte) => ExtToken,
                _ => return bad,
            },
            // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
            Quoted => match byte {
                b'"' => ExtValueEnd,
                b'\\' => QuotedPair,
                b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => Quoted,
                _ => return bad,
            },
            // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
            QuotedPair => match byte {
                b'\t' | b' '..=0x7e | 0x80..=0xff => Quoted,
                _ => return bad,
            },
            ExtValueEnd => match byte {
                b';' => ExtNameStart,
                b'\r' => LineLf,
                _ if space => ExtValueSpace,
                _ => return bad,
            },
            ExtValueSpace => match byte {
                b';' => ExtNameStart,
                _ if space => ExtValueSpace,
                _ => return bad,
            },
            LineLf => match byte {
                b'\n' if self.remaining == 0 => TrailerStart,
                b'\n' => Data,
                _ => return bad,
            },
            Data => unreachable!("data is skipped in bulk"),
            DataCr => match byte {
                b'\r' => DataLf,
                _ => return bad,
            },
            DataLf => match byte {
                b'\n' => SizeStart,
                _ => return bad,
            },
            TrailerStart => match byte {
                b'\r' => EndLf,
                _ if is_token_byte(byte) => TrailerName,
                _ => return bad, // obs-fold, a bare LF, a colon with no name
            },
            TrailerName => match byte {
                b':' => TrailerValue,
                _ if is_token_byte(byte) => TrailerName,
                _ => return bad,
            },
            // field-value bytes: HTAB, SP, VCHAR, obs-text.
            TrailerValue => match byte {
                b'\r' => TrailerLf,
                b'\t' | b' '..=0x7e | 0x80..=0xff => TrailerValue,
                _ => return bad,
            },
            TrailerLf => match byte {
                b'\n' => TrailerStart,
                _ => return bad,
            },
            EndLf => match byte {
                b'\n' => Done,
                _ => return bad,
            },
            Done => unreachable!("scan stops at Done"),
        };
        Ok(next)
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}
