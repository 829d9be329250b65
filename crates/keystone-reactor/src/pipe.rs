//! The pipes splices run through (file → pipe → socket, upstream socket →
//! pipe → socket): made once at a worker's start-up, before its event
//! loop, and sized there. Nothing here runs per request.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A pipe, its read and write ends, and its capacity after asking for
/// `bytes` (`F_SETPIPE_SZ`, then `F_GETPIPE_SZ`): the kernel rounds up to a
/// power of two pages and refuses past `/proc/sys/fs/pipe-max-size` or a
/// user's pipe-buffer limit, and then the pipe keeps the capacity it has,
/// which is what comes back.
pub fn sized_pipe(bytes: u32) -> io::Result<(OwnedFd, OwnedFd, u32)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let asked =
        libc::c_int::try_from(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: fcntl on a descriptor we own, with integer arguments only. A
    // refused F_SETPIPE_SZ leaves the pipe as it was (see above).
    let capacity = unsafe {
        libc::fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, asked);
        libc::fcntl(read.as_raw_fd(), libc::F_GETPIPE_SZ)
    };
    if capacity < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((read, write, capacity as u32))
}
