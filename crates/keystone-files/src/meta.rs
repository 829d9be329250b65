//! What the engine reads from `statx` and what it means for serving, and
//! the content type a file name implies.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::FileError;

/// Used when the extension says nothing (nginx's `default_type` for files).
pub const OCTET_STREAM: &str = "application/octet-stream";

/// The file type bits of a statx `stx_mode`, reduced to what serving needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// `S_IFREG`: served.
    Regular,
    /// `S_IFDIR`: its [`crate::INDEX_FILE`] is served.
    Directory,
    /// Anything else (device, FIFO, socket): refused.
    Other,
}

/// What the engine reads from statx for one open descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// `stx_size`: the length announced and sent (fixed at stat time).
    pub size: u64,
    /// `stx_mtime.tv_sec`, clamped at 0 for times before the epoch.
    pub mtime_secs: u64,
    /// From `stx_mode`.
    pub kind: FileKind,
}

/// What to do after stating an opened path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// A regular file: serve this descriptor.
    Serve,
    /// A directory: close it and open its index
    /// ([`crate::RelativePath::with_index`]).
    OpenIndex,
    /// Refuse with this error (close the descriptor).
    Refuse(FileError),
}

impl FileKind {
    /// What the engine does with a descriptor of this kind; `is_index` says
    /// it is already a directory's index (an index that is itself a
    /// directory is refused, as today: one level only).
    pub fn next_step(self, is_index: bool) -> NextStep {
        match (self, is_index) {
            (FileKind::Regular, _) => NextStep::Serve,
            (FileKind::Directory, false) => NextStep::OpenIndex,
            (FileKind::Directory, true) | (FileKind::Other, _) => {
                NextStep::Refuse(FileError::Forbidden)
            }
        }
    }
}

/// The `Content-Type` of a file named `name` (a path; only its extension
/// counts, case-insensitively), [`OCTET_STREAM`] when unknown.
pub fn content_type(name: &[u8]) -> &'static str {
    mime_guess::from_path(Path::new(OsStr::from_bytes(name)))
        .first_raw()
        .unwrap_or(OCTET_STREAM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let rows: &[(&[u8], &str)] = &[
            (b"index.html", "text/html"),
            (b"docs/index.html", "text/html"),
            (b"a/b.CSS", "text/css"),
            (b"app.js", "text/javascript"),
            (b"logo.png", "image/png"),
            (b"data.json", "application/json"),
            (b"README", OCTET_STREAM),
            (b"archive.unknownext", OCTET_STREAM),
            (b".", OCTET_STREAM),
            (b"a.\xff", OCTET_STREAM),
        ];
        for (name, expected) in rows {
            assert_eq!(content_type(name), *expected, "{:?}", name.escape_ascii());
        }
    }

    #[test]
    fn next_steps() {
        let rows = [
            (FileKind::Regular, false, NextStep::Serve),
            (FileKind::Regular, true, NextStep::Serve),
            (FileKind::Directory, false, NextStep::OpenIndex),
            (
                FileKind::Directory,
                true,
                NextStep::Refuse(FileError::Forbidden),
            ),
            (
                FileKind::Other,
                false,
                NextStep::Refuse(FileError::Forbidden),
            ),
            (
                FileKind::Other,
                true,
                NextStep::Refuse(FileError::Forbidden),
            ),
        ];
        for (kind, is_index, expected) in rows {
            assert_eq!(kind.next_step(is_index), expected, "{kind:?} {is_index}");
        }
    }
}
