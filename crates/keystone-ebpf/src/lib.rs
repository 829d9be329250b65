//! keystone-ebpf: kernel-level `SO_REUSEPORT` steering, so that every
//! connection is routed to one worker, consistently, by an eBPF program;
//! and observers that watch the server from the kernel (syscalls, latency)
//! without instrumenting it.
//!
//! Owns: the compiled BPF objects `ebpf/*.bpf.o` (embedded, so a machine
//! without clang still steers and observes) and their loading with aya;
//! for steering, the `workers` socket array, the `config` worker count and
//! the per-CPU `selected` counters (connections per worker); for observing
//! ([`Observer`], off unless asked for), the syscall counters and the
//! latency histogram.
//!
//! Never depends on: any other Keystone crate. Steering knows sockets, not
//! HTTP; keystone-server hands it one listening socket per worker.
//!
//! # Policy: consistent by 4-tuple
//!
//! `index = reuse_md->hash % worker_count`, where `hash` is the kernel's
//! flow hash of the connection's 4-tuple. Every SYN of one 4-tuple lands on
//! the same worker, which the manifesto's connection affinity asks for, and
//! the spread is even with no host tuning. The alternative, steering by the
//! CPU that received the packet, has better cache locality when RSS/RPS
//! already map flows to the worker's core, but it depends on NIC queues and
//! IRQ affinity set up outside Keystone (on loopback or a single RX queue it
//! sends everything to one worker), so it is not the default.
//!
//! The program never drops: an empty slot or a failed selection returns
//! `SK_PASS` without a selection and the kernel hashes as it would without
//! BPF.
//!
//! # Loading and attaching
//!
//! aya 0.14 loads the object and gives `programs::SkReuseport` (attach is
//! `setsockopt(SO_ATTACH_REUSEPORT_EBPF)` on one socket, which applies to
//! the whole group) and `maps::ReusePortSockArray`. The kernel keeps the
//! program attached for as long as the reuseport group lives; dropping
//! [`ReuseportSteering`] only closes our handles to the program and maps.
//!
//! # Observers
//!
//! `ebpf/syscalls.c` counts the observed process's syscalls per thread and
//! per number from the raw tracepoint `sys_enter`; `ebpf/latency.c` times
//! each TCP socket's read-to-write turn from the raw tracepoints
//! `sock_recv_length` and `sock_send_length` (what a turn includes and
//! excludes is written there and on [`Observer::latency_histogram`]). Both filter on the process's thread group, so
//! io_uring's task work and io-wq threads count as the process. Connection
//! distribution comes from steering's own counters
//! ([`ReuseportSteering::selections_per_worker`]), not from an observer.
//! Nothing is loaded until [`Observer::attach`]; a kernel that refuses
//! (no root, no BTF, a kernel before 6.3) gives an [`EbpfError::Observe`]
//! naming the step.
//!
//! # Tests
//!
//! Loading BPF needs root (CAP_BPF and CAP_NET_ADMIN). Tests that load it
//! fail loudly when not root, unless `KEYSTONE_SKIP_BPF_TESTS=1` is set,
//! in which case they print that they skipped.

mod error;
mod histogram;
mod mode;
mod observer;
mod steering;

pub use error::EbpfError;
pub use histogram::{bucket_upper_bound, percentile, LatencyHistogram, BUCKETS};
pub use mode::{EbpfMode, ParseEbpfModeError};
pub use observer::{
    Observer, UntrackedSyscalls, SOCKETS_MAX, SYSCALL_IO_URING_ENTER, SYSCALL_NUMBERS_MAX,
    THREADS_MAX,
};
pub use steering::ReuseportSteering;

/// Slots in the `workers` socket array and the `selected` counters: one per
/// worker thread, and 256 cores is above any host we target. Must equal
/// `WORKERS_MAX` in `ebpf/reuseport.c`; [`ReuseportSteering::attach`] checks
/// the loaded map against it.
pub const WORKERS_MAX: u32 = 256;

/// The compiled `ebpf/reuseport.c` (rebuild with `cargo xtask build-ebpf`),
/// 8-byte aligned as aya's ELF parser requires.
pub(crate) static REUSEPORT_OBJECT: &[u8] =
    aya::include_bytes_aligned!("../../../ebpf/reuseport.bpf.o");

/// The compiled `ebpf/syscalls.c`, aligned likewise.
pub(crate) static SYSCALLS_OBJECT: &[u8] =
    aya::include_bytes_aligned!("../../../ebpf/syscalls.bpf.o");

/// The compiled `ebpf/latency.c`, aligned likewise.
pub(crate) static LATENCY_OBJECT: &[u8] =
    aya::include_bytes_aligned!("../../../ebpf/latency.bpf.o");

#[cfg(test)]
mod tests {
    use super::*;

    /// Without root: the C source defines the same limit. The loaded map is
    /// also checked against WORKERS_MAX at attach time (see tests/).
    #[test]
    fn workers_max_matches_the_c_source() {
        let source = include_str!("../../../ebpf/reuseport.c");
        let expected = format!("#define WORKERS_MAX {WORKERS_MAX}\n");
        assert!(
            source.contains(&expected),
            "ebpf/reuseport.c lacks {expected:?}"
        );
    }

    /// Without root: every limit the observers' C sources define equals its
    /// Rust const.
    #[test]
    fn observer_limits_match_the_c_sources() {
        let syscalls = include_str!("../../../ebpf/syscalls.c");
        let latency = include_str!("../../../ebpf/latency.c");
        let expected = [
            (syscalls, format!("#define THREADS_MAX {THREADS_MAX}\n")),
            (
                syscalls,
                format!("#define SYSCALL_NUMBERS_MAX {SYSCALL_NUMBERS_MAX}\n"),
            ),
            (latency, format!("#define BUCKETS {BUCKETS}\n")),
            (latency, format!("#define SOCKETS_MAX {SOCKETS_MAX}\n")),
            (latency, format!("#define THREADS_MAX {THREADS_MAX}\n")),
        ];
        for (source, line) in expected {
            assert!(source.contains(&line), "an observer source lacks {line:?}");
        }
    }

    /// aya parses ELF64 in place: the embedded bytes must be 8-byte aligned
    /// and start with the ELF magic.
    #[test]
    fn embedded_object_is_aligned_elf() {
        for object in [REUSEPORT_OBJECT, SYSCALLS_OBJECT, LATENCY_OBJECT] {
            assert_eq!(object.as_ptr().align_offset(8), 0);
            assert_eq!(&object[..4], b"\x7fELF");
        }
    }
}
