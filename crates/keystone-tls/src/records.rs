//! The record layer after the handshake: rustls negotiates and hands over
//! the traffic keys (`dangerous_extract_secrets`), and records are sealed
//! in place and opened in place or to an earlier offset of the same
//! buffer ([`RecordLayer::open_to`]) with `ring`'s AEADs — the same keys a kernel
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
/// The longest record a peer may send, header included.
pub const MAX_RECORD_BYTES: usize = HEADER_BYTES + MAX_PLAINTEXT + MAX_EXPANSION;
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
/// in the bytes it was opened in.
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
    /// it has not all arrived. Its plaintext lands at the record's first
    /// byte (`Opened::start` is 0).
    pub fn open(&mut self, bytes: &mut [u8]) -> Result<Option<Opened>, RecordError> {
        self.open_to(bytes, 0, 0)
    }

    /// Opens the record at `bytes[record..]`, its plaintext decrypted to
    /// `bytes[to..]` (`to <= record`): the AEAD reads each ciphertext block
    /// and writes its plaintext that many bytes earlier, in the one pass
    /// (ring's `open_within`), so the records of one receive end up as one
    /// run of plaintext at the buffer's front with no copy beyond the
    /// decryption. `Ok(None)` while the record has not all arrived;
    /// `Opened::start` is `to`.
    pub fn open_to(
        &mut self,
        bytes: &mut [u8],
        to: usize,
        record: usize,
    ) -> Result<Option<Opened>, RecordError> {
        debug_assert!(to <= record && record <= bytes.len());
        let Some(body_len) = record_len(&bytes[record..])? else {
            return Ok(None);
        };
        let record_len = HEADER_BYTES + body_len;
        if bytes.len() - record < record_len {
            return Ok(None);
        }
        // The header is additional data (TLS 1.3) and the explicit nonce
        // part of the nonce (TLS 1.2 AES-GCM): both are read before the
        // plaintext may overwrite them.
        let mut header = [0; HEADER_BYTES];
        header.copy_from_slice(&bytes[record..record + HEADER_BYTES]);
        let wire_type = header[0];
        let (nonce, body_start) = match self.protection {
            Protection::Tls12Gcm => {
                if body_len < EXPLICIT_NONCE_BYTES + TAG_BYTES {
                    return Err(RecordError::BadRecord);
                }
                let mut nonce = self.rx.iv;
                let explicit = record + HEADER_BYTES;
                nonce[4..].copy_from_slice(&bytes[explicit..explicit + EXPLICIT_NONCE_BYTES]);
                (nonce, HEADER_BYTES + EXPLICIT_NONCE_BYTES)
            }
            _ => (self.rx.nonce(), HEADER_BYTES),
        };
        let sealed = record_len - body_start;
        if sealed < TAG_BYTES {
            return Err(RecordError::BadRecord);
        }
        let aad12 = self.tls12_aad(self.rx.seq, wire_type, sealed - TAG_BYTES);
        let aad = match self.protection {
            Protection::Tls13 => Aad::from(&header[..]),
            _ => Aad::from(&aad12[..]),
        };
        let in_out = &mut bytes[to..record + record_len];
        let plain = self
            .rx
            .key
            .open_within(
                Nonce::assume_unique_for_key(nonce),
                aad,
                in_out,
                record - to + body_start..,
            )
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
            start: to,
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

// --- kernel TLS (linux/tls.h) ------------------------------------------

/// `SOL_TCP` and its `TCP_ULP` option: attaching the "tls" upper-layer
/// protocol to a connected socket.
pub const SOL_TCP: u32 = 6;
/// `TCP_ULP` (linux/tcp.h).
pub const TCP_ULP: u32 = 31;
/// The upper-layer protocol's name, as `TCP_ULP` takes it.
pub const ULP_TLS: &[u8] = b"tls";
/// `SOL_TLS` (linux/socket.h).
pub const SOL_TLS: u32 = 282;
/// `TLS_TX`: the kernel seals what is sent.
pub const TLS_TX: u32 = 1;
/// `TLS_RX`: the kernel opens what is received.
pub const TLS_RX: u32 = 2;
/// `TLS_CIPHER_AES_GCM_128`, `_256` and `TLS_CIPHER_CHACHA20_POLY1305`.
const TLS_CIPHER_AES_GCM_128: u16 = 51;
const TLS_CIPHER_AES_GCM_256: u16 = 52;
const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;
/// The largest `tls12_crypto_info_*` (AES-GCM-256 and ChaCha20: 56 bytes).
pub const CRYPTO_INFO_MAX: usize = 56;

/// One direction's keys as a kernel TLS socket takes them.
#[derive(Clone)]
pub struct KernelKeys {
    version: u16,
    cipher_type: u16,
    key: [u8; 32],
    key_len: usize,
    iv: [u8; 12],
}

impl std::fmt::Debug for KernelKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("KernelKeys")
            .field("version", &self.version)
            .field("cipher_type", &self.cipher_type)
            .finish_non_exhaustive()
    }
}

impl KernelKeys {
    /// The keys of one direction, for a suite the kernel has (`None`
    /// otherwise; the ring provider's suites all are).
    pub fn new(version: u16, secrets: &ConnectionTrafficSecrets) -> Option<KernelKeys> {
        let (cipher_type, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (TLS_CIPHER_AES_GCM_128, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (TLS_CIPHER_AES_GCM_256, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (TLS_CIPHER_CHACHA20_POLY1305, key, iv)
            }
            _ => return None,
        };
        KernelKeys::from_parts(
            version,
            cipher_type,
            key.as_ref(),
            iv.as_ref().try_into().ok()?,
        )
    }

    fn from_parts(version: u16, cipher_type: u16, key: &[u8], iv: [u8; 12]) -> Option<KernelKeys> {
        if !matches!(version, 0x0303 | 0x0304) {
            return None;
        }
        let mut keys = KernelKeys {
            version,
            cipher_type,
            key: [0; 32],
            key_len: key.len(),
            iv,
        };
        keys.key.get_mut(..key.len())?.copy_from_slice(key);
        Some(keys)
    }

    /// The `tls12_crypto_info_*` struct for `setsockopt(SOL_TLS, TLS_TX or
    /// TLS_RX)`, the next record's sequence number being `seq`: its bytes
    /// and length. Layout (linux/tls.h, native endian for the header):
    /// `{u16 version; u16 cipher_type}`, then for AES-GCM `iv[8] key[16|32]
    /// salt[4] rec_seq[8]` (the 12-byte IV is salt ‖ iv), for ChaCha20
    /// `iv[12] key[32] rec_seq[8]`.
    pub fn crypto_info(&self, seq: u64) -> ([u8; CRYPTO_INFO_MAX], usize) {
        let mut out = [0u8; CRYPTO_INFO_MAX];
        out[0..2].copy_from_slice(&self.version.to_ne_bytes());
        out[2..4].copy_from_slice(&self.cipher_type.to_ne_bytes());
        let mut at = 4;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        let key = &self.key[..self.key_len];
        if self.cipher_type == TLS_CIPHER_CHACHA20_POLY1305 {
            put(&self.iv);
            put(key);
        } else {
            put(&self.iv[4..]);
            put(key);
            put(&self.iv[..4]);
        }
        put(&seq.to_be_bytes());
        (out, at)
    }
}

impl RecordLayer {
    /// What a kernel TLS socket makes of one `tls12_crypto_info_*` (both
    /// directions from the same keys): the tests play the kernel with it,
    /// checking that the options handed over seal and open the session's
    /// records from the right sequence number.
    pub fn from_crypto_info(info: &[u8]) -> Result<RecordLayer, RecordError> {
        let bad = RecordError::UnsupportedSuite;
        let field = |at: usize, len: usize| info.get(at..at + len).ok_or(bad);
        let version = u16::from_ne_bytes(field(0, 2)?.try_into().map_err(|_| bad)?);
        let cipher_type = u16::from_ne_bytes(field(2, 2)?.try_into().map_err(|_| bad)?);
        let mut iv = [0u8; 12];
        let (algorithm, key, seq) = match cipher_type {
            TLS_CIPHER_CHACHA20_POLY1305 => {
                iv.copy_from_slice(field(4, 12)?);
                (&CHACHA20_POLY1305, field(16, 32)?, field(48, 8)?)
            }
            TLS_CIPHER_AES_GCM_128 | TLS_CIPHER_AES_GCM_256 => {
                let key_len = if cipher_type == TLS_CIPHER_AES_GCM_128 {
                    16
                } else {
                    32
                };
                iv[4..].copy_from_slice(field(4, 8)?);
                iv[..4].copy_from_slice(field(12 + key_len, 4)?);
                let algorithm = if key_len == 16 {
                    &AES_128_GCM
                } else {
                    &AES_256_GCM
                };
                (algorithm, field(12, key_len)?, field(16 + key_len, 8)?)
            }
            _ => return Err(bad),
        };
        let seq = u64::from_be_bytes(seq.try_into().map_err(|_| bad)?);
        let direction = || -> Result<Direction, RecordError> {
            Ok(Direction {
                key: LessSafeKey::new(UnboundKey::new(algorithm, key).map_err(|_| bad)?),
                iv,
                seq,
            })
        };
        let protection = match (version, cipher_type) {
            (0x0304, _) => Protection::Tls13,
            (0x0303, TLS_CIPHER_CHACHA20_POLY1305) => Protection::Tls12ChaCha,
            (0x0303, _) => Protection::Tls12Gcm,
            _ => return Err(bad),
        };
        Ok(RecordLayer {
            protection,
            tx: direction()?,
            rx: direction()?,
        })
    }

    /// The sequence number of the next record sealed.
    pub fn tx_seq(&self) -> u64 {
        self.tx.seq
    }

    /// The sequence number of the next record opened.
    pub fn rx_seq(&self) -> u64 {
        self.rx.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    #[test]
    fn crypto_infos_have_the_kernels_layout() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let iv: [u8; 12] = std::array::from_fn(|i| 0xa0 + i as u8);
        // (rustls makes a 16-byte AeadKey only itself.)
        let keys = KernelKeys::from_parts(0x0304, TLS_CIPHER_AES_GCM_128, &key[..16], iv).unwrap();
        let (info, len) = keys.crypto_info(0x0102_0304_0506_0708);
        // struct tls12_crypto_info_aes_gcm_128: 4 + 8 + 16 + 4 + 8.
        assert_eq!(len, 40);
        assert_eq!(&info[0..2], &0x0304u16.to_ne_bytes());
        assert_eq!(&info[2..4], &51u16.to_ne_bytes());
        assert_eq!(&info[4..12], &iv[4..], "iv: the explicit part");
        assert_eq!(&info[12..28], &key[..16]);
        assert_eq!(&info[28..32], &iv[..4], "salt: the implicit part");
        assert_eq!(
            &info[32..40],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            "rec_seq, big endian"
        );

        let gcm256 = ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from(key),
            iv: Iv::new(iv),
        };
        let (info, len) = KernelKeys::new(0x0303, &gcm256).unwrap().crypto_info(9);
        assert_eq!(len, 56, "tls12_crypto_info_aes_gcm_256");
        assert_eq!(&info[2..4], &52u16.to_ne_bytes());
        assert_eq!(&info[12..44], &key[..]);
        assert_eq!(&info[44..48], &iv[..4]);
        assert_eq!(&info[48..56], &9u64.to_be_bytes());

        let chacha = ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: AeadKey::from(key),
            iv: Iv::new(iv),
        };
        let (info, len) = KernelKeys::new(0x0304, &chacha).unwrap().crypto_info(0);
        assert_eq!(
            len, 56,
            "tls12_crypto_info_chacha20_poly1305: 4 + 12 + 32 + 8"
        );
        assert_eq!(&info[2..4], &54u16.to_ne_bytes());
        assert_eq!(&info[4..16], &iv[..]);
        assert_eq!(&info[16..48], &key[..]);
        assert_eq!(&info[48..56], &[0; 8]);
        assert!(
            KernelKeys::new(0x0302, &chacha).is_none(),
            "TLS 1.1 has no kTLS"
        );
    }
}
