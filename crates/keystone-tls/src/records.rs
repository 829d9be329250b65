//! The record layer after the handshake: rustls negotiates and hands over
//! the traffic keys (`dangerous_extract_secrets`), and records are sealed
//! and opened here, in place, with `ring`'s AEADs — the same keys a kernel
//! TLS socket would take, and no heap allocation per record (rustls' own
//! record layer allocates a buffer for every record it seals or opens).
//!
//! RFC 8446 §5.2 (TLS 1.3: one nonce per record from the IV and the
//! sequence number, the header as additional data, the real content type
//! inside) and RFC 5288/7905 (TLS 1.2 AES-GCM with an 8-byte explicit
//! nonce, ChaCha20-Poly1305 without; sequence, type, version and length
//! as additional data).

use ring::aead::{
    Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

/// Record header: type, version, length.
pub const HEADER_BYTES: usize = 5;
/// The AEAD tag every record carries.
pub const TAG_BYTES: usize = 16;
/// TLS 1.2 AES-GCM's explicit nonce.
const EXPLICIT_NONCE_BYTES: usize = 8;
/// Plaintext per record (RFC 8446 §5.1, RFC 5246 §6.2.1).
pub const MAX_PLAINTEXT: usize = 16384;
/// The most a record's body may exceed its plaintext by: TLS 1.3 allows
/// 256 bytes of expansion (type byte, padding, tag), TLS 1.2 2,048.
const MAX_EXPANSION: usize = 2048;
/// Most bytes one sealed record adds to its plaintext.
pub const MAX_OVERHEAD: usize = HEADER_BYTES + EXPLICIT_NONCE_BYTES + TAG_BYTES + 1;
/// Records sealed with one key before the connection must stop: AES-GCM's
/// confidentiality limit (RFC 8446 §5.5 advises rekeying before 2^24.5
/// records; this layer does not rekey, so the connection ends instead,
/// after about 256 GiB of full records).
pub const RECORDS_PER_KEY_MAX: u64 = 1 << 24;

/// Content types.
pub const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
/// An alert record.
pub const CONTENT_ALERT: u8 = 21;
/// A handshake record.
pub const CONTENT_HANDSHAKE: u8 = 22;
/// Application data.
pub const CONTENT_APPLICATION_DATA: u8 = 23;

/// Why a record was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Longer than the protocol allows (alert `record_overflow`).
    Overflow,
    /// It did not authenticate, or its layout is wrong (`bad_record_mac`).
    BadRecord,
    /// The negotiated suite is not one this layer has (never with the
    /// ring provider's suites).
    UnsupportedSuite,
    /// The key's record budget is spent.
    KeyExhausted,
}

/// An opened record: its real content type and where its plaintext lies
/// in the bytes it was opened in (the record's own bytes, decrypted in
/// place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The content type.
    pub content_type: u8,
    /// Plaintext start, from the record's first byte.
    pub start: usize,
    /// Plaintext length.
    pub len: usize,
    /// The whole record's length (header included): what to consume.
    pub record_len: usize,
}

struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Direction, RecordError> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err(RecordError::UnsupportedSuite),
        };
        let key =
            UnboundKey::new(algorithm, key.as_ref()).map_err(|_| RecordError::UnsupportedSuite)?;
        let iv: [u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| RecordError::UnsupportedSuite)?;
        Ok(Direction {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The IV with the sequence number XORed into its last 8 bytes.
    fn nonce(&self) -> [u8; 12] {
        let mut nonce = self.iv;
        for (byte, seq) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *byte ^= seq;
        }
        nonce
    }
}

/// Which record protection the session negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protection {
    Tls13,
    /// TLS 1.2 AES-GCM: an explicit nonce in every record.
    Tls12Gcm,
    /// TLS 1.2 ChaCha20-Poly1305: the nonce is implicit.
    Tls12ChaCha,
}

/// One connection's record protection, both ways.
pub struct RecordLayer {
    protection: Protection,
    tx: Direction,
    rx: Direction,
}

impl RecordLayer {
    /// The layer for the keys rustls handed over (`version`: 0x0303 or
    /// 0x0304).
    pub fn new(version: u16, secrets: ExtractedSecrets) -> Result<RecordLayer, RecordError> {
        let chacha = matches!(
            secrets.tx.1,
            ConnectionTrafficSecrets::Chacha20Poly1305 { .. }
        );
        let protection = match (version, chacha) {
            (0x0304, _) => Protection::Tls13,
            (0x0303, false) => Protection::Tls12Gcm,
            (0x0303, true) => Protection::Tls12ChaCha,
            _ => return Err(RecordError::UnsupportedSuite),
        };
        Ok(RecordLayer {
            protection,
            tx: Direction::new(secrets.tx)?,
            rx: Direction::new(secrets.rx)?,
        })
    }

    /// Bytes a record of `plain` bytes takes on the wire.
    pub fn sealed_len(&self, plain: usize) -> usize {
        HEADER_BYTES
            + plain
            + TAG_BYTES
            + match self.protection {
                Protection::Tls13 => 1,
                Protection::Tls12Gcm => EXPLICIT_NONCE_BYTES,
                Protection::Tls12ChaCha => 0,
            }
    }

    /// Seals `plain` (at most [`MAX_PLAINTEXT`] bytes) as one record of
    /// `content_type` at the front of `out` (at least
    /// [`sealed_len`](Self::sealed_len) bytes); returns the record's length.
    pub fn seal(
        &mut self,
        content_type: u8,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<usize, RecordError> {
        debug_assert!(plain.len() <= MAX_PLAINTEXT);
        if self.tx.seq >= RECORDS_PER_KEY_MAX {
            return Err(RecordError::KeyExhausted);
        }
        let total = self.sealed_len(plain.len());
        let out = &mut out[..total];
        let body_len = (total - HEADER_BYTES) as u16;
        let nonce = self.tx.nonce();
        let (wire_type, body_start) = match self.protection {
            Protection::Tls13 => (CONTENT_APPLICATION_DATA, HEADER_BYTES),
            Protection::Tls12Gcm => {
                out[HEADER_BYTES..HEADER_BYTES + EXPLICIT_NONCE_BYTES].copy_from_slice(&nonce[4..]);
                (content_type, HEADER_BYTES + EXPLICIT_NONCE_BYTES)
            }
            Protection::Tls12ChaCha => (content_type, HEADER_BYTES),
        };
        out[0] = wire_type;
        out[1..3].copy_from_slice(&[3, 3]);
        out[3..5].copy_from_slice(&body_len.to_be_bytes());
        let mut inner_len = plain.len();
        out[body_start..body_start + plain.len()].copy_from_slice(plain);
        if self.protection == Protection::Tls13 {
            out[body_start + plain.len()] = content_type;
            inner_len += 1;
        }
        let (head, rest) = out.split_at_mut(body_start);
        let (in_out, tag_out) = rest.split_at_mut(inner_len);
        let aad = self.tls12_aad(self.tx.seq, content_type, plain.len());
        let aad = match self.protection {
            Protection::Tls13 => Aad::from(&head[..HEADER_BYTES]),
            _ => Aad::from(&aad[..]),
        };
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), aad, in_out)
            .map_err(|_| RecordError::BadRecord)?;
        tag_out[..TAG_BYTES].copy_from_slice(tag.as_ref());
        self.tx.seq += 1;
        Ok(total)
    }

    /// Opens the record at the front of `bytes` in place: `Ok(None)` while
    /// it has not all arrived.
    pub fn open(&mut self, bytes: &mut [u8]) -> Result<Option<Opened>, RecordError> {
        let Some(body_len) = record_len(bytes)? else {
            return Ok(None);
        };
        let record_len = HEADER_BYTES + body_len;
        if bytes.len() < record_len {
            return Ok(None);
        }
        let wire_type = bytes[0];
        let record = &mut bytes[..record_len];
        let (head, body) = record.split_at_mut(HEADER_BYTES);
        let (nonce, body, body_start) = match self.protection {
            Protection::Tls12Gcm => {
                if body.len() < EXPLICIT_NONCE_BYTES + TAG_BYTES {
                    return Err(RecordError::BadRecord);
                }
                let mut nonce = self.rx.iv;
                nonce[4..].copy_from_slice(&body[..EXPLICIT_NONCE_BYTES]);
                (
                    nonce,
                    &mut body[EXPLICIT_NONCE_BYTES..],
                    HEADER_BYTES + EXPLICIT_NONCE_BYTES,
                )
            }
            _ => (self.rx.nonce(), body, HEADER_BYTES),
        };
        if body.len() < TAG_BYTES {
            return Err(RecordError::BadRecord);
        }
        let aad12 = self.tls12_aad(self.rx.seq, wire_type, body.len() - TAG_BYTES);
        let aad = match self.protection {
            Protection::Tls13 => Aad::from(&head[..]),
            _ => Aad::from(&aad12[..]),
        };
        let plain = self
            .rx
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), aad, body)
            .map_err(|_| RecordError::BadRecord)?;
        self.rx.seq += 1;
        let (content_type, len) = if self.protection == Protection::Tls13 {
            if wire_type != CONTENT_APPLICATION_DATA {
                return Err(RecordError::BadRecord);
            }
            // The real type is the last non-zero byte; zeros are padding.
            let Some(at) = plain.iter().rposition(|&b| b != 0) else {
                return Err(RecordError::BadRecord);
            };
            (plain[at], at)
        } else {
            (wire_type, plain.len())
        };
        if len > MAX_PLAINTEXT {
            return Err(RecordError::Overflow);
        }
        Ok(Some(Opened {
            content_type,
            start: body_start,
            len,
            record_len,
        }))
    }

    fn tls12_aad(&self, seq: u64, content_type: u8, plain_len: usize) -> [u8; 13] {
        let mut aad = [0; 13];
        aad[..8].copy_from_slice(&seq.to_be_bytes());
        aad[8] = content_type;
        aad[9..11].copy_from_slice(&[3, 3]);
        aad[11..].copy_from_slice(&(plain_len as u16).to_be_bytes());
        aad
    }
}

/// The body length of the record at the front of `bytes`, once its header
/// has arrived; refuses one longer than any record may be.
pub fn record_len(bytes: &[u8]) -> Result<Option<usize>, RecordError> {
    if bytes.len() < HEADER_BYTES {
        return Ok(None);
    }
    let len = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
    if len > MAX_PLAINTEXT + MAX_EXPANSION {
        return Err(RecordError::Overflow);
    }
    Ok(Some(len))
}
