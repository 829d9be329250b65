//! Why a file cannot be served, and the one mapping to a status.

/// Why a file cannot be served; [`FileError::status`] maps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileError {
    /// No such file, a NUL in the path, or a path too long to open.
    NotFound,
    /// Outside the root, a traversal attempt, or not a regular file.
    Forbidden,
    /// The OS failed otherwise.
    Io,
    /// A directory asked for without its trailing slash: the client is
    /// sent to the slash form (301, `Location` written by the caller), as
    /// nginx and Apache do, so its index's relative links resolve.
    DirectoryWithoutSlash,
}

impl FileError {
    /// The one place file errors become statuses.
    pub fn status(self) -> u16 {
        match self {
            FileError::NotFound => 404,
            FileError::Forbidden => 403,
            FileError::Io => 500,
            FileError::DirectoryWithoutSlash => 301,
        }
    }

    /// What a failed `openat2` means (its errno, positive, as a completion's
    /// `-res`): a missing file or a too-long name is not found; the kernel's
    /// confinement (`RESOLVE_BENEATH` answers `EXDEV`, a refused link
    /// `ELOOP`) and permissions are forbidden; anything else is an I/O error.
    /// A failed statx of an open descriptor is always [`FileError::Io`].
    pub fn from_errno(errno: i32) -> FileError {
        debug_assert!(errno > 0, "errno {errno} must be positive");
        match errno {
            ENOENT | ENOTDIR | ENAMETOOLONG => FileError::NotFound,
            EXDEV | ELOOP | EACCES | EPERM => FileError::Forbidden,
            _ => FileError::Io,
        }
    }
}

// Linux errno values (asm-generic/errno-base.h, errno.h), the same on every
// architecture Keystone runs on; written out so this crate needs no libc.
const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const EACCES: i32 = 13;
const EXDEV: i32 = 18;
const ENOTDIR: i32 = 20;
const ENAMETOOLONG: i32 = 36;
const ELOOP: i32 = 40;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_and_status() {
        let rows: &[(i32, FileError, u16)] = &[
            (ENOENT, FileError::NotFound, 404),
            (ENOTDIR, FileError::NotFound, 404),
            (ENAMETOOLONG, FileError::NotFound, 404),
            (EXDEV, FileError::Forbidden, 403),
            (ELOOP, FileError::Forbidden, 403),
            (EACCES, FileError::Forbidden, 403),
            (EPERM, FileError::Forbidden, 403),
            (5, FileError::Io, 500),  // EIO
            (24, FileError::Io, 500), // EMFILE
            (12, FileError::Io, 500), // ENOMEM
            (21, FileError::Io, 500), // EISDIR
            (95, FileError::Io, 500), // EOPNOTSUPP
            (11, FileError::Io, 500), // EAGAIN
        ];
        for (errno, error, status) in rows {
            assert_eq!(FileError::from_errno(*errno), *error, "errno {errno}");
            assert_eq!(error.status(), *status, "{error:?}");
        }
    }

    #[test]
    fn errno_values_are_linux_ones() {
        let pairs = [
            (EPERM, libc::EPERM),
            (ENOENT, libc::ENOENT),
            (EACCES, libc::EACCES),
            (EXDEV, libc::EXDEV),
            (ENOTDIR, libc::ENOTDIR),
            (ENAMETOOLONG, libc::ENAMETOOLONG),
            (ELOOP, libc::ELOOP),
        ];
        for (ours, libc) in pairs {
            assert_eq!(ours, libc);
        }
    }
}
