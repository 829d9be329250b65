//! A file's validators (RFC 9110 §8.8): the ETag `"mtime-size"` in
//! lowercase hex, as nginx forms it, and Last-Modified as an IMF-fixdate.
//! Computed once per open into fixed arrays.

use keystone_response::{format_imf, DATE_BYTES};

use crate::FileMeta;

/// Longest ETag: two quotes, a dash and two `u64`s of 16 hex digits each.
pub const ETAG_BYTES_MAX: usize = 2 + 16 + 1 + 16;

/// The last second an IMF-fixdate can say (9999-12-31T23:59:59Z: its year
/// has four digits). A later mtime (a clock error, `touch -d`) is announced
/// as this second rather than formatted past the field.
const LAST_MODIFIED_SECS_MAX: u64 = 253_402_300_799;

const _: () = assert!(ETAG_BYTES_MAX <= u8::MAX as usize);

/// ETag and Last-Modified of one file, formatted.
#[derive(Clone, Copy)]
pub struct Validators {
    etag: [u8; ETAG_BYTES_MAX],
    etag_len: u8,
    last_modified: [u8; DATE_BYTES],
}

impl Validators {
    /// Validators for a file of `meta`.
    pub fn new(meta: &FileMeta) -> Validators {
        let mut etag = [0u8; ETAG_BYTES_MAX];
        let etag_len = format_etag(meta.mtime_secs, meta.size, &mut etag);
        Validators {
            etag,
            etag_len,
            last_modified: format_imf(meta.mtime_secs.min(LAST_MODIFIED_SECS_MAX)),
        }
    }

    /// The ETag header value, quotes included (a strong validator).
    pub fn etag(&self) -> &[u8] {
        &self.etag[..usize::from(self.etag_len)]
    }

    /// The Last-Modified header value.
    pub fn last_modified(&self) -> &[u8] {
        &self.last_modified
    }
}

impl std::fmt::Debug for Validators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validators")
            .field("etag", &self.etag().escape_ascii().to_string())
            .field(
                "last_modified",
                &self.last_modified().escape_ascii().to_string(),
            )
            .finish()
    }
}

fn format_etag(mtime_secs: u64, size: u64, out: &mut [u8; ETAG_BYTES_MAX]) -> u8 {
    let mut len = 0;
    let mut push = |byte: u8| {
        out[len] = byte;
        len += 1;
    };
    push(b'"');
    for (index, value) in [mtime_secs, size].into_iter().enumerate() {
        if index > 0 {
            push(b'-');
        }
        let digits = (u64::BITS - value.leading_zeros()).div_ceil(4).max(1);
        for digit in (0..digits).rev() {
            push(b"0123456789abcdef"[((value >> (4 * digit)) & 0xf) as usize]);
        }
    }
    push(b'"');
    debug_assert!(len <= ETAG_BYTES_MAX);
    len as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FileKind;

    fn check(mtime_secs: u64, size: u64, etag: &str, last_modified: &str) {
        let meta = FileMeta {
            size,
            mtime_secs,
            kind: FileKind::Regular,
        };
        let validators = Validators::new(&meta);
        assert_eq!(validators.etag(), etag.as_bytes(), "{mtime_secs} {size}");
        assert_eq!(
            validators.last_modified(),
            last_modified.as_bytes(),
            "{mtime_secs}"
        );
    }

    #[test]
    fn formats() {
        check(
            0x5f1e_2a3b,
            0x1a2b,
            "\"5f1e2a3b-1a2b\"",
            "Mon, 27 Jul 2020 01:13:31 GMT",
        );
        check(0, 0, "\"0-0\"", "Thu, 01 Jan 1970 00:00:00 GMT");
        check(
            784_111_777,
            16,
            "\"2ebc98a1-10\"",
            "Sun, 06 Nov 1994 08:49:37 GMT",
        );
        let longest = "\"ffffffffffffffff-ffffffffffffffff\"";
        assert_eq!(longest.len(), ETAG_BYTES_MAX);
        let meta = FileMeta {
            size: u64::MAX,
            mtime_secs: u64::MAX,
            kind: FileKind::Regular,
        };
        let validators = Validators::new(&meta);
        assert_eq!(validators.etag(), longest.as_bytes());
        assert_eq!(validators.last_modified(), b"Fri, 31 Dec 9999 23:59:59 GMT");
        check(
            LAST_MODIFIED_SECS_MAX + 1,
            1,
            "\"3afff44180-1\"",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        );
    }
}
