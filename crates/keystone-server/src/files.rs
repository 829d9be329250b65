//! Files: static directories (`static = { ["/assets/"] = "./public" }`) and
//! files policy chooses (`ctx.body = { file = "path" }`). This module only
//! decides: it opens the file confined to its root, evaluates validators
//! and ranges, and says what to send; the worker moves the bytes from the
//! file to the socket with `splice` through a pipe (never through user
//! space).
//!
//! Confinement is the kernel's: `openat2` with `RESOLVE_BENEATH` (and no
//! magic links) relative to the root's directory descriptor, so `..`,
//! percent-encoded traversal and symlinks leaving the root all fail there.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// Longest decoded path we open (PATH_MAX).
const PATH_BYTES_MAX: usize = 4096;
/// Served for a directory, as nginx's `index` default.
const INDEX_FILE: &[u8] = b"index.html";
/// Used when the extension says nothing (nginx's `default_type` for files).
const OCTET_STREAM: &str = "application/octet-stream";

/// A directory files are served from, opened once per worker.
pub struct Root {
    /// URL prefix (static roots) — empty for the policy-file root.
    pub prefix: String,
    dir: OwnedFd,
}

impl Root {
    /// Opens `path` as a root for `prefix`.
    pub fn open(prefix: &str, path: &Path) -> io::Result<Root> {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: `c_path` is NUL-terminated; the result is checked.
        let fd = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Root {
            prefix: prefix.to_owned(),
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            dir: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Opens the roots of an app.
    pub fn open_all(statics: &[(String, PathBuf)]) -> io::Result<Vec<Root>> {
        statics
            .iter()
            .map(|(prefix, dir)| {
                Root::open(prefix, dir)
                    .map_err(|e| io::Error::new(e.kind(), format!("static {}: {e}", dir.display())))
            })
            .collect()
    }
}

/// Why a file cannot be served; `status` maps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileError {
    /// No such file (or a NUL in the path).
    NotFound,
    /// Outside the root, a traversal attempt, or not a regular file.
    Forbidden,
    /// The OS failed otherwise.
    Io,
}

impl FileError {
    /// The one place file errors become statuses.
    pub fn status(self) -> u16 {
        match self {
            FileError::NotFound => 404,
            FileError::Forbidden => 403,
            FileError::Io => 500,
        }
    }
}

/// An open regular file and what its headers need.
pub struct OpenFile {
    /// The file, read by splice.
    pub file: OwnedFd,
    /// Size in bytes at open time (the length we announce and send).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// From the extension.
    pub content_type: &'static str,
}

/// Percent-decodes a URL path (no `+` rule: that is for queries) into
/// `out` and checks it: NUL → not found; a `..` segment → forbidden.
/// Returns the decoded length.
fn decode_path(raw: &[u8], out: &mut [u8]) -> Result<usize, FileError> {
    let mut len = 0;
    let mut index = 0;
    while index < raw.len() {
        let byte = match raw[index] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    raw.get(index + 1).and_then(|&b| hex(b)),
                    raw.get(index + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) => {
                        index += 2;
                        (h * 16 + l) as u8
                    }
                    _ => b'%',
                }
            }
            other => other,
        };
        index += 1;
        if byte == 0 {
            return Err(FileError::NotFound);
        }
        if len == out.len() {
            return Err(FileError::NotFound);
        }
        out[len] = byte;
        len += 1;
    }
    if out[..len]
        .split(|&b| b == b'/')
        .any(|segment| segment == b"..")
    {
        return Err(FileError::Forbidden);
    }
    Ok(len)
}

/// Opens `raw_path` (URL-encoded when `encoded`) beneath `root`; a
/// directory serves its `index.html`.
pub fn open(root: &Root, raw_path: &[u8], encoded: bool) -> Result<OpenFile, FileError> {
    let mut buf = [0u8; PATH_BYTES_MAX];
    let len = if encoded {
        decode_path(raw_path, &mut buf)?
    } else {
        if raw_path.contains(&0) || raw_path.len() >= PATH_BYTES_MAX {
            return Err(FileError::NotFound);
        }
        buf[..raw_path.len()].copy_from_slice(raw_path);
        if raw_path
            .split(|&b| b == b'/')
            .any(|segment| segment == b"..")
        {
            return Err(FileError::Forbidden);
        }
        raw_path.len()
    };
    let trimmed = trim_slashes(&buf[..len]);
    let relative: &[u8] = if trimmed.is_empty() { b"." } else { trimmed };
    let file = open_beneath(root.dir.as_raw_fd(), relative)?;
    let stat = fstat(&file)?;
    let (file, stat, name) = if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let index = open_beneath(file.as_raw_fd(), INDEX_FILE)?;
        let stat = fstat(&index)?;
        (index, stat, INDEX_FILE)
    } else {
        (file, stat, relative)
    };
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(FileError::Forbidden);
    }
    let name = Path::new(std::ffi::OsStr::from_bytes(name));
    Ok(OpenFile {
        file,
        size: stat.st_size as u64,
        mtime: stat.st_mtime.max(0) as u64,
        content_type: mime_guess::from_path(name)
            .first_raw()
            .unwrap_or(OCTET_STREAM),
    })
}

fn trim_slashes(path: &[u8]) -> &[u8] {
    let start = path.iter().position(|&b| b != b'/').unwrap_or(path.len());
    &path[start..]
}

fn open_beneath(dir: i32, relative: &[u8]) -> Result<OwnedFd, FileError> {
    let mut c_path = [0u8; PATH_BYTES_MAX + 1];
    if relative.len() > PATH_BYTES_MAX {
        return Err(FileError::NotFound);
    }
    c_path[..relative.len()].copy_from_slice(relative);
    // SAFETY: `open_how` is a plain C struct of integers; zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads a NUL-terminated path and an `open_how` of the
    // size we pass; both live on this stack frame for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(match io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => FileError::NotFound,
            Some(libc::EXDEV | libc::ELOOP | libc::EACCES | libc::EPERM) => FileError::Forbidden,
            _ => FileError::Io,
        });
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn fstat(file: &OwnedFd) -> Result<libc::stat, FileError> {
    // SAFETY: a zeroed stat is a valid out-parameter for fstat.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `file` is open; `stat` is writable for the call.
    if unsafe { libc::fstat(file.as_raw_fd(), &mut stat) } != 0 {
        return Err(FileError::Io);
    }
    Ok(stat)
}

/// Validators of a file: `"mtime-size"` in hex, as nginx forms its ETag.
pub struct Validators {
    etag: [u8; 40],
    etag_len: usize,
    last_modified: [u8; keystone_response::DATE_BYTES],
}

impl Validators {
    /// Validators for `file`.
    pub fn of(file: &OpenFile) -> Validators {
        let mut etag = [0u8; 40];
        let text = format_etag(file.mtime, file.size, &mut etag);
        Validators {
            etag,
            etag_len: text,
            last_modified: keystone_response::format_imf(file.mtime),
        }
    }

    /// The ETag header value.
    pub fn etag(&self) -> &[u8] {
        &self.etag[..self.etag_len]
    }

    /// The Last-Modified header value.
    pub fn last_modified(&self) -> &[u8] {
        &self.last_modified
    }
}

fn format_etag(mtime: u64, size: u64, out: &mut [u8; 40]) -> usize {
    let mut len = 0;
    let mut push = |b: u8| {
        out[len] = b;
        len += 1;
    };
    push(b'"');
    for value in [mtime, size] {
        let digits = ((u64::BITS - value.leading_zeros()).div_ceil(4)).max(1);
        for i in (0..digits).rev() {
            push(b"0123456789abcdef"[((value >> (4 * i)) & 0xf) as usize]);
        }
        push(b'-');
    }
    out[len - 1] = b'"';
    len
}

/// Whether the request's validators say the client's copy is current
/// (→ 304): If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
pub fn not_modified(
    validators: &Validators,
    mtime: u64,
    if_none_match: Option<&[u8]>,
    if_modified_since: Option<&[u8]>,
) -> bool {
    if let Some(list) = if_none_match {
        return list.split(|&b| b == b',').any(|tag| {
            let tag = trim(tag);
            tag == b"*" || weak_eq(tag, validators.etag())
        });
    }
    let Some(since) = if_modified_since.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    match httpdate::parse_http_date(since.trim()) {
        Ok(time) => time
            .duration_since(UNIX_EPOCH)
            .is_ok_and(|since| mtime <= since.as_secs()),
        Err(_) => false,
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

fn weak_eq(a: &[u8], b: &[u8]) -> bool {
    let strip = |t: &[u8]| t.strip_prefix(b"W/").unwrap_or(t).to_vec();
    strip(a) == strip(b)
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// Serve the whole file (no range, several ranges, or not bytes).
    Full,
    /// 206 for `[start, start + len)`.
    Partial { start: u64, len: u64 },
    /// 416.
    Unsatisfiable,
}

/// Evaluates a single-range `Range` header (RFC 9110 14.2); several ranges
/// are answered with the full file, which the RFC allows.
pub fn range(header: Option<&[u8]>, size: u64) -> RangeAnswer {
    let Some(spec) = header.and_then(|h| trim(h).strip_prefix(b"bytes=")) else {
        return RangeAnswer::Full;
    };
    if spec.contains(&b',') {
        return RangeAnswer::Full;
    }
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return RangeAnswer::Full;
    };
    let number = |digits: &[u8]| -> Option<u64> {
        let digits = trim(digits);
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);
    match (number(first), number(last), trim(first).is_empty()) {
        (None, Some(suffix), true) => {
            if suffix == 0 || size == 0 {
                return RangeAnswer::Unsatisfiable;
            }
            let len = suffix.min(size);
            RangeAnswer::Partial {
                start: size - len,
                len,
            }
        }
        (Some(start), end, false) if end.is_some() || trim(last).is_empty() => {
            if start >= size {
                return RangeAnswer::Unsatisfiable;
            }
            let end = end.map_or(size - 1, |e| e.min(size - 1));
            if end < start {
                return RangeAnswer::Full; // invalid range: ignore the header
            }
            RangeAnswer::Partial {
                start,
                len: end - start + 1,
            }
        }
        _ => RangeAnswer::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let cases: &[(&str, u64, RangeAnswer)] = &[
            ("bytes=0-9", 100, RangeAnswer::Partial { start: 0, len: 10 }),
            (
                "bytes=90-",
                100,
                RangeAnswer::Partial { start: 90, len: 10 },
            ),
            (
                "bytes=-10",
                100,
                RangeAnswer::Partial { start: 90, len: 10 },
            ),
            (
                "bytes=-500",
                100,
                RangeAnswer::Partial { start: 0, len: 100 },
            ),
            (
                "bytes=50-1000",
                100,
                RangeAnswer::Partial { start: 50, len: 50 },
            ),
            ("bytes=100-", 100, RangeAnswer::Unsatisfiable),
            ("bytes=-0", 100, RangeAnswer::Unsatisfiable),
            ("bytes=5-1", 100, RangeAnswer::Full),
            ("bytes=0-1,5-6", 100, RangeAnswer::Full),
            ("items=0-1", 100, RangeAnswer::Full),
            ("bytes=a-b", 100, RangeAnswer::Full),
        ];
        for (header, size, expected) in cases {
            assert_eq!(range(Some(header.as_bytes()), *size), *expected, "{header}");
        }
        assert_eq!(range(None, 10), RangeAnswer::Full);
    }

    #[test]
    fn paths() {
        let mut out = [0u8; 64];
        let cases: &[(&str, Result<&str, FileError>)] = &[
            ("/a/b.txt", Ok("/a/b.txt")),
            ("/a%20b", Ok("/a b")),
            ("/a+b", Ok("/a+b")),
            ("/../etc/passwd", Err(FileError::Forbidden)),
            ("/%2e%2e/etc/passwd", Err(FileError::Forbidden)),
            ("/a/%2E%2E/%2e%2e/x", Err(FileError::Forbidden)),
            ("/a%00b", Err(FileError::NotFound)),
            ("/%zz", Ok("/%zz")),
        ];
        for (raw, expected) in cases {
            let got = decode_path(raw.as_bytes(), &mut out)
                .map(|n| std::str::from_utf8(&out[..n]).unwrap().to_owned());
            assert_eq!(
                got.as_deref().map_err(|e| *e),
                expected.as_ref().map(|s| *s).map_err(|e| *e),
                "{raw}"
            );
        }
    }

    #[test]
    fn validators() {
        let mut out = [0u8; 40];
        let n = format_etag(0x5f1e2a3b, 0x1a2b, &mut out);
        assert_eq!(&out[..n], b"\"5f1e2a3b-1a2b\"");
        let n = format_etag(0, 0, &mut out);
        assert_eq!(&out[..n], b"\"0-0\"");
    }
}
