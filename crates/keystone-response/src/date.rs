//! The `Date` header value, formatted once per second (IMF-fixdate, RFC
//! 9110 5.6.7) into a fixed array: no allocation, no formatting per request.

use std::time::{SystemTime, UNIX_EPOCH};

/// `Sun, 06 Nov 1994 08:49:37 GMT` is always 29 bytes.
pub const DATE_BYTES: usize = 29;

/// A per-worker cached `Date` value; call [`DateCache::refresh`] once per
/// event-loop turn.
pub struct DateCache {
    unix_secs: u64,
    text: [u8; DATE_BYTES],
    /// `Server: keystone\r\nDate: <text>\r\n`, the two engine lines every
    /// head carries, kept whole so a head copies them at once.
    lines: [u8; ENGINE_LINES_BYTES],
}

/// The engine's `Server` line, first of [`DateCache::engine_lines`].
const SERVER_LINE: &[u8] = b"Server: keystone\r\n";
/// What precedes the date in [`DateCache::engine_lines`].
const ENGINE_LINES_PREFIX: &[u8] = b"Server: keystone\r\nDate: ";
/// The length of [`DateCache::engine_lines`].
const ENGINE_LINES_BYTES: usize = ENGINE_LINES_PREFIX.len() + DATE_BYTES + 2;

impl Default for DateCache {
    fn default() -> Self {
        Self::new()
    }
}

impl DateCache {
    /// A cache holding the current time.
    pub fn new() -> DateCache {
        let mut cache = DateCache {
            unix_secs: u64::MAX,
            text: [b' '; DATE_BYTES],
            lines: [b' '; ENGINE_LINES_BYTES],
        };
        cache.refresh();
        cache
    }

    /// Re-reads the clock; reformats only when the second changed.
    pub fn refresh(&mut self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.set(now);
    }

    /// Sets the cache to `unix_secs` (tests pin the clock with it).
    pub fn set(&mut self, unix_secs: u64) {
        if unix_secs != self.unix_secs {
            self.unix_secs = unix_secs;
            self.text = format_imf(unix_secs);
            let (prefix, rest) = self.lines.split_at_mut(ENGINE_LINES_PREFIX.len());
            prefix.copy_from_slice(ENGINE_LINES_PREFIX);
            rest[..DATE_BYTES].copy_from_slice(&self.text);
            rest[DATE_BYTES..].copy_from_slice(b"\r\n");
        }
    }

    /// The formatted value.
    pub fn get(&self) -> &[u8] {
        &self.text
    }

    /// The `Server` and `Date` lines, CRLF-terminated.
    pub fn engine_lines(&self) -> &[u8] {
        &self.lines
    }

    /// The `Date` line alone, CRLF-terminated (for a head whose policy set
    /// its own `Server`).
    pub fn date_line(&self) -> &[u8] {
        &self.lines[SERVER_LINE.len()..]
    }
}

const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
/// English month abbreviations, as HTTP dates and nginx's `$time_local` use.
pub const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

fn two(out: &mut [u8], value: u64) {
    out[0] = b'0' + (value / 10) as u8;
    out[1] = b'0' + (value % 10) as u8;
}

/// Formats `unix_secs` as IMF-fixdate.
pub fn format_imf(unix_secs: u64) -> [u8; DATE_BYTES] {
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[0..3].copy_from_slice(DAYS[(days % 7) as usize]);
    two(&mut out[5..7], day as u64);
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    let year = year as u64;
    two(&mut out[12..14], year / 100);
    two(&mut out[14..16], year % 100);
    two(&mut out[17..19], secs_of_day / 3600);
    two(&mut out[20..22], secs_of_day / 60 % 60);
    two(&mut out[23..25], secs_of_day % 60);
    out
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 → (y, m, d).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
