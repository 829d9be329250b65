//! Why steering could not be set up, with the kernel's own reason.

use std::error::Error;
use std::fmt;
use std::io;

/// Errors of [`crate::ReuseportSteering`] and [`crate::Observer`]; each
/// carries the kernel's reason (verifier log, errno text) so a server in
/// `auto` mode can log why it fell back to plain reuseport hashing, and a
/// server with `--observe` why it runs unobserved.
#[derive(Debug)]
pub enum EbpfError {
    /// The embedded object did not parse, or the kernel refused the program
    /// or a map (no CAP_BPF, verifier rejection, old kernel).
    Load { reason: String },
    /// A socket is unfit for the group, or `SO_ATTACH_REUSEPORT_EBPF` failed.
    Attach { errno: i32, reason: String },
    /// Reading or writing a map failed (e.g. the kernel refused a socket in
    /// `workers` because it is not listening).
    Map { reason: String },
    /// More sockets than `workers` has slots.
    TooManyWorkers { workers: usize, max: u32 },
    /// An observer could not be set up or read: `step` names the object,
    /// program or map and what was done to it (e.g. "latency.bpf.o:
    /// turn_read: attach to raw tracepoint sock_recv_length"); `errno` is the kernel's
    /// (0 when aya refused before any syscall, e.g. no kernel BTF).
    Observe {
        step: String,
        errno: i32,
        reason: String,
    },
}

impl fmt::Display for EbpfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EbpfError::Load { reason } => write!(f, "loading the reuseport BPF object: {reason}"),
            EbpfError::Attach { errno, reason } => {
                write!(f, "attaching reuseport steering (errno {errno}): {reason}")
            }
            EbpfError::Map { reason } => write!(f, "reuseport BPF map: {reason}"),
            EbpfError::TooManyWorkers { workers, max } => write!(
                f,
                "{workers} workers but the reuseport program steers at most {max} (WORKERS_MAX)"
            ),
            EbpfError::Observe {
                step,
                errno,
                reason,
            } => write!(f, "eBPF observer: {step} (errno {errno}): {reason}"),
        }
    }
}

impl Error for EbpfError {}

/// `error` and its sources joined with ": ", so the kernel's words (which
/// aya keeps in nested sources) reach the message.
pub(crate) fn reason_chain(error: &(dyn Error + 'static)) -> String {
    let mut reason = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // thiserror's `transparent` repeats the inner message; skip repeats.
        if !reason.ends_with(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        source = cause.source();
    }
    reason
}

/// The first OS error code in `error`'s source chain, or 0 when there is
/// none (an error aya raised itself).
pub(crate) fn errno_in_chain(error: &(dyn Error + 'static)) -> i32 {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(code) = cause
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return code;
        }
        current = cause.source();
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("setsockopt failed")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn chain_keeps_the_kernel_reason_and_errno() {
        let error = Outer(io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(errno_in_chain(&error), libc::EINVAL);
        let reason = reason_chain(&error);
        assert!(
            reason.starts_with("setsockopt failed: Invalid argument"),
            "{reason}"
        );
    }

    #[test]
    fn display_names_the_limit() {
        let error = EbpfError::TooManyWorkers {
            workers: 300,
            max: 256,
        };
        assert_eq!(
            error.to_string(),
            "300 workers but the reuseport program steers at most 256 (WORKERS_MAX)"
        );
    }
}
