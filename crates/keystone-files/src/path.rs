//! A request path made relative to a root, decoded and checked before the
//! kernel confines it again (`openat2` with `RESOLVE_BENEATH`).
//!
//! The checks here are a first line, not the confinement: `..` and NUL are
//! refused early so they are never sent to the kernel, but symlinks leaving
//! the root are refused by `RESOLVE_BENEATH` alone.

use keystone_parser::text::{PercentDecoder, Plus};

use crate::FileError;

/// Longest path we open, its NUL included: Linux's `PATH_MAX`, past which
/// `openat2` answers `ENAMETOOLONG` anyway (→ [`FileError::NotFound`]).
pub const PATH_BYTES_MAX: usize = 4096;

/// Served for a directory, as nginx's `index` default.
pub const INDEX_FILE: &[u8] = b"index.html";

// The length is a u16 and a path holds its NUL.
const _: () = assert!(PATH_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(INDEX_FILE.len() + 2 < PATH_BYTES_MAX);

/// A path relative to a root: no leading `/`, no `..` segment, no NUL,
/// shorter than [`PATH_BYTES_MAX`], never empty (the root itself is `.`),
/// stored NUL-terminated in a fixed array so it can be handed to
/// `openat2` as is. Built by [`RelativePath::new`]; nothing is allocated.
#[derive(Clone)]
pub struct RelativePath {
    bytes: [u8; PATH_BYTES_MAX],
    /// Bytes before the NUL; less than `PATH_BYTES_MAX`.
    len: u16,
}

impl RelativePath {
    /// Makes `path` relative: percent-decoded when `encoded` (a URL path:
    /// `+` stays `+`, invalid escapes stay literal), taken as is otherwise
    /// (a path policy chose). Leading slashes are dropped; an empty result
    /// is `.`.
    ///
    /// Errors: a NUL byte or a result of [`PATH_BYTES_MAX`] bytes or more →
    /// [`FileError::NotFound`]; a `..` segment → [`FileError::Forbidden`]
    /// (the first error wins: a NUL is found while decoding, `..` after).
    pub fn new(path: &[u8], encoded: bool) -> Result<RelativePath, FileError> {
        let mut relative = RelativePath {
            bytes: [0; PATH_BYTES_MAX],
            len: 0,
        };
        if encoded {
            relative.push_trimmed(PercentDecoder::new(path, Plus::Literal))?;
        } else {
            relative.push_trimmed(path.iter().copied())?;
        }
        if relative
            .as_bytes()
            .split(|&byte| byte == b'/')
            .any(|segment| segment == b"..")
        {
            return Err(FileError::Forbidden);
        }
        if relative.len == 0 {
            relative.bytes[0] = b'.';
            relative.len = 1;
        }
        relative.check();
        Ok(relative)
    }

    /// The index file of this path taken as a directory: `dir/index.html`
    /// (`index.html` for the root). [`FileError::NotFound`] when too long.
    pub fn with_index(&self) -> Result<RelativePath, FileError> {
        let mut index = self.clone();
        if index.as_bytes() == b"." {
            index.len = 0;
        } else if !index.as_bytes().ends_with(b"/") {
            index.push(b'/')?;
        }
        for &byte in INDEX_FILE {
            index.push(byte)?;
        }
        index.check();
        Ok(index)
    }

    /// The path, without its NUL.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The path with its terminating NUL, as `openat2` reads it.
    pub fn as_bytes_with_nul(&self) -> &[u8] {
        &self.bytes[..=usize::from(self.len)]
    }

    /// Appends `bytes`, dropping leading slashes.
    fn push_trimmed(&mut self, bytes: impl Iterator<Item = u8>) -> Result<(), FileError> {
        for byte in bytes {
            if byte == 0 {
                return Err(FileError::NotFound);
            }
            if self.len == 0 && byte == b'/' {
                continue;
            }
            self.push(byte)?;
        }
        Ok(())
    }

    fn push(&mut self, byte: u8) -> Result<(), FileError> {
        debug_assert_ne!(byte, 0);
        // One byte stays for the NUL.
        if usize::from(self.len) + 1 >= PATH_BYTES_MAX {
            return Err(FileError::NotFound);
        }
        self.bytes[usize::from(self.len)] = byte;
        self.len += 1;
        Ok(())
    }

    /// The invariants a finished path holds.
    fn check(&self) {
        debug_assert!(self.len > 0);
        debug_assert!(usize::from(self.len) < PATH_BYTES_MAX);
        debug_assert_eq!(self.bytes[usize::from(self.len)], 0);
        debug_assert!(!self.as_bytes().contains(&0));
        debug_assert!(!self.as_bytes().starts_with(b"/"));
    }
}

impl std::fmt::Debug for RelativePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RelativePath({:?})",
            self.as_bytes().escape_ascii().to_string()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path and what [`RelativePath::new`] makes of it.
    type Row = (&'static [u8], Result<&'static [u8], FileError>);

    fn check(path: &[u8], encoded: bool, expected: Result<&[u8], FileError>) {
        let got = RelativePath::new(path, encoded);
        match (&got, expected) {
            (Ok(relative), Ok(bytes)) => {
                assert_eq!(relative.as_bytes(), bytes, "{:?}", path.escape_ascii());
                assert_eq!(relative.as_bytes_with_nul().last(), Some(&0));
                assert_eq!(relative.as_bytes_with_nul().len(), bytes.len() + 1);
            }
            (Err(error), Err(expected)) => {
                assert_eq!(*error, expected, "{:?}", path.escape_ascii())
            }
            _ => panic!(
                "{:?}: got {got:?}, expected {expected:?}",
                path.escape_ascii()
            ),
        }
    }

    #[test]
    fn url_paths_are_decoded_and_confined() {
        let rows: &[Row] = &[
            (b"/a/b.txt", Ok(b"a/b.txt")),
            (b"/a%20b", Ok(b"a b")),
            (b"/a+b", Ok(b"a+b")),
            (b"/%zz", Ok(b"%zz")),
            (b"/a%", Ok(b"a%")),
            (b"/", Ok(b".")),
            (b"", Ok(b".")),
            (b"///", Ok(b".")),
            (b"%2F%2fa", Ok(b"a")),
            (b"//a//b/", Ok(b"a//b/")),
            (b"/a/./b", Ok(b"a/./b")),
            (b"/a..b/...", Ok(b"a..b/...")),
            (b"/../etc/passwd", Err(FileError::Forbidden)),
            (b"/%2e%2e/etc/passwd", Err(FileError::Forbidden)),
            (b"/a/%2E%2E/%2e%2e/x", Err(FileError::Forbidden)),
            (b"/a/..", Err(FileError::Forbidden)),
            (b"..", Err(FileError::Forbidden)),
            (b"/a%2F..%2Fb", Err(FileError::Forbidden)),
            (b"/a%00b", Err(FileError::NotFound)),
            (b"/a\0b", Err(FileError::NotFound)),
            // The NUL is found while decoding, before the `..` check.
            (b"/../%00", Err(FileError::NotFound)),
        ];
        for (path, expected) in rows {
            check(path, true, *expected);
        }
    }

    #[test]
    fn policy_paths_are_taken_as_is() {
        let rows: &[Row] = &[
            (b"docs/a%20b.txt", Ok(b"docs/a%20b.txt")),
            (b"/abs/x", Ok(b"abs/x")),
            (b"%2e%2e/x", Ok(b"%2e%2e/x")),
            (b"../x", Err(FileError::Forbidden)),
            (b"a/../../x", Err(FileError::Forbidden)),
            (b"a\0", Err(FileError::NotFound)),
        ];
        for (path, expected) in rows {
            check(path, false, *expected);
        }
    }

    #[test]
    fn length_limit_at_and_past() {
        let longest = vec![b'a'; PATH_BYTES_MAX - 1];
        check(&longest, false, Ok(&longest));
        check(&[b'a'; PATH_BYTES_MAX], false, Err(FileError::NotFound));
        // Leading slashes do not count: they are dropped before the limit.
        let mut slashed = vec![b'/'; 8];
        slashed.extend_from_slice(&longest);
        check(&slashed, true, Ok(&longest));
        // Escapes count once decoded: 4095 `%61` decode to 4095 bytes.
        let encoded = b"%61".repeat(PATH_BYTES_MAX - 1);
        check(&encoded, true, Ok(&longest));
        let encoded = b"%61".repeat(PATH_BYTES_MAX);
        check(&encoded, true, Err(FileError::NotFound));
    }

    #[test]
    fn index_of_a_directory() {
        let rows: &[Row] = &[
            (b"/", Ok(b"index.html")),
            (b"/docs", Ok(b"docs/index.html")),
            (b"/docs/", Ok(b"docs/index.html")),
        ];
        for (path, expected) in rows {
            let index = RelativePath::new(path, true).unwrap().with_index();
            assert_eq!(
                index.as_ref().map(|p| p.as_bytes()),
                expected.as_ref().map(|b| *b)
            );
        }
        let fits = vec![b'a'; PATH_BYTES_MAX - 2 - INDEX_FILE.len()];
        let index = RelativePath::new(&fits, false)
            .unwrap()
            .with_index()
            .unwrap();
        assert_eq!(index.as_bytes().len(), PATH_BYTES_MAX - 1);
        let too_long = vec![b'a'; PATH_BYTES_MAX - 1 - INDEX_FILE.len()];
        let index = RelativePath::new(&too_long, false).unwrap().with_index();
        assert_eq!(index.unwrap_err(), FileError::NotFound);
    }
}
