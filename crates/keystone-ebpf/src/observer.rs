//! Observing one process from the kernel: its syscalls (per thread and per
//! number, `ebpf/syscalls.c`) and its read-to-write latency
//! (`ebpf/latency.c`), with no instrumentation in the process.
//!
//! Nothing here is loaded unless [`Observer::attach`] is called (the
//! server's `--observe`), so observing costs nothing when off. Dropping the
//! [`Observer`] detaches every program: aya closes the links.
//!
//! Reads are map lookups through bpf(2), made by the caller's thread: they
//! are syscalls of the observed process when it observes itself (as the
//! server does), and show in the counts (`bpf` is 321 on x86_64).

use std::os::raw::c_long;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::RawTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};

use crate::error::{errno_in_chain, reason_chain};
use crate::histogram::{LatencyHistogram, BUCKETS};
use crate::{EbpfError, LATENCY_OBJECT, SYSCALLS_OBJECT};

/// Distinct threads `by_thread` counts; threads past it are counted in
/// [`UntrackedSyscalls::thread_table_full`] (and by number, as always). A
/// worker per core plus io-wq threads stays far below. Dead threads keep
/// their slot. Must equal `THREADS_MAX` in `ebpf/syscalls.c`, and in
/// `ebpf/latency.c`, where it bounds the threads with a latency histogram
/// of their own (turns of threads past it count only process-wide).
pub const THREADS_MAX: u32 = 1024;

/// Slots of `by_number`, indexed by syscall number: x86_64 and the generic
/// table end below 470 on Linux 6.x; higher numbers are counted in
/// [`UntrackedSyscalls::number_out_of_range`]. Must equal
/// `SYSCALL_NUMBERS_MAX` in `ebpf/syscalls.c`.
pub const SYSCALL_NUMBERS_MAX: u32 = 512;

/// Sockets with a read-to-write turn in progress (an LRU map: past it the
/// oldest turn is forgotten, one sample lost). Must equal `SOCKETS_MAX` in
/// `ebpf/latency.c`.
pub const SOCKETS_MAX: u32 = 65536;

/// `io_uring_enter`'s number: 426 on x86_64 and in the generic table
/// (aarch64, riscv64) alike.
pub const SYSCALL_IO_URING_ENTER: u32 = syscall_number(libc::SYS_io_uring_enter);

const fn syscall_number(number: c_long) -> u32 {
    assert!(number >= 0);
    assert!(number < SYSCALL_NUMBERS_MAX as c_long);
    number as u32
}

/// Names in `ebpf/syscalls.c`.
const SYSCALLS_OBJECT_NAME: &str = "syscalls.bpf.o";
const SYSCALLS_PROGRAM: &str = "count_syscall";
const SYSCALLS_TRACEPOINT: &str = "sys_enter";
const BY_THREAD_MAP: &str = "by_thread";
const BY_NUMBER_MAP: &str = "by_number";
const UNTRACKED_MAP: &str = "untracked";
const UNTRACKED_THREAD: u32 = 0;
const UNTRACKED_NUMBER: u32 = 1;

/// Names in `ebpf/latency.c`.
const LATENCY_OBJECT_NAME: &str = "latency.bpf.o";
const HISTOGRAM_MAP: &str = "histogram";
const THREAD_LATENCY_MAP: &str = "thread_latency";
/// `(program, raw tracepoint)` pairs of `ebpf/latency.c`, in attach order:
/// the read program, which starts turns, last, so that every turn it
/// starts can be ended (write) or forgotten (destroy).
const LATENCY_PROGRAMS: [(&str, &str); 3] = [
    ("socket_destroy", "tcp_destroy_sock"),
    ("turn_write", "sock_send_length"),
    ("turn_read", "sock_recv_length"),
];

/// Both objects name their settings map `config`, with the same first slot.
const CONFIG_MAP: &str = "config";
const CONFIG_TARGET_TGID: u32 = 0;
/// Only in `ebpf/latency.c`: the server's local port, 0 for every port.
const CONFIG_SERVER_PORT: u32 = 1;

/// Syscalls the maps could not place; non-zero only past a limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UntrackedSyscalls {
    /// Made by threads that arrived after [`THREADS_MAX`] were counted.
    pub thread_table_full: u64,
    /// Numbered outside [0, [`SYSCALL_NUMBERS_MAX`]).
    pub number_out_of_range: u64,
}

/// The observers of one process, attached; see the module docs. Read the
/// counters at any time; they count from attach.
pub struct Observer {
    syscalls: Ebpf,
    latency: Ebpf,
    pid: u32,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

fn observe_error(step: String, error: &(dyn std::error::Error + 'static)) -> EbpfError {
    EbpfError::Observe {
        step,
        errno: errno_in_chain(error),
        reason: reason_chain(error),
    }
}

fn missing(object: &str, what: &str) -> EbpfError {
    EbpfError::Observe {
        step: format!("{object}: {what}"),
        errno: 0,
        reason: "missing from the object (rebuild with `cargo xtask build-ebpf`)".to_owned(),
    }
}

/// Sets `config[slot] = value` in `object`'s settings map.
fn set_config(ebpf: &mut Ebpf, object: &str, slot: u32, value: u32) -> Result<(), EbpfError> {
    let map = ebpf
        .map_mut(CONFIG_MAP)
        .ok_or_else(|| missing(object, CONFIG_MAP))?;
    let mut config: Array<_, u32> = map
        .try_into()
        .map_err(|error| observe_error(format!("{object}: {CONFIG_MAP}"), &error))?;
    config
        .set(slot, value, 0)
        .map_err(|error| observe_error(format!("{object}: {CONFIG_MAP}[{slot}] = {value}"), &error))
}

/// Loads `object` (with CO-RE offsets relocated against `btf` when given)
/// and points its `config` at `pid`, so that the programs filter from
/// their first event.
fn load_for(
    object: &'static [u8],
    name: &str,
    btf: Option<&Btf>,
    pid: u32,
) -> Result<Ebpf, EbpfError> {
    let mut ebpf = EbpfLoader::new()
        .btf(btf)
        .load(object)
        .map_err(|error| observe_error(format!("{name}: load"), &error))?;
    set_config(&mut ebpf, name, CONFIG_TARGET_TGID, pid)?;
    Ok(ebpf)
}

/// Loads `program` of `ebpf` and attaches it to the raw tracepoint
/// `tracepoint` (by name: no tracefs needed).
fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    object: &str,
    program: &str,
    tracepoint: &str,
) -> Result<(), EbpfError> {
    let step = |what: &str| format!("{object}: {program}: {what}");
    let raw_tracepoint: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| missing(object, program))?
        .try_into()
        .map_err(|error| observe_error(step("not a raw tracepoint program"), &error))?;
    raw_tracepoint
        .load()
        .map_err(|error| observe_error(step("load"), &error))?;
    raw_tracepoint.attach(tracepoint).map_err(|error| {
        observe_error(
            step(&format!("attach to raw tracepoint {tracepoint}")),
            &error,
        )
    })?;
    Ok(())
}

fn attach_syscalls(pid: u32) -> Result<Ebpf, EbpfError> {
    // No kernel struct is read: no BTF needed.
    let mut ebpf = load_for(SYSCALLS_OBJECT, SYSCALLS_OBJECT_NAME, None, pid)?;
    attach_raw_tracepoint(
        &mut ebpf,
        SYSCALLS_OBJECT_NAME,
        SYSCALLS_PROGRAM,
        SYSCALLS_TRACEPOINT,
    )?;
    Ok(ebpf)
}

fn attach_latency(pid: u32, server_port: u16) -> Result<Ebpf, EbpfError> {
    // The programs read socket fields at offsets relocated against the
    // kernel's BTF (CONFIG_DEBUG_INFO_BTF); without it they would read at
    // the object's placeholder offsets, so refuse instead.
    let btf = Btf::from_sys_fs().map_err(|error| {
        observe_error(
            format!("{LATENCY_OBJECT_NAME}: read /sys/kernel/btf/vmlinux"),
            &error,
        )
    })?;
    let mut ebpf = load_for(LATENCY_OBJECT, LATENCY_OBJECT_NAME, Some(&btf), pid)?;
    set_config(
        &mut ebpf,
        LATENCY_OBJECT_NAME,
        CONFIG_SERVER_PORT,
        u32::from(server_port),
    )?;
    for (program, tracepoint) in LATENCY_PROGRAMS {
        attach_raw_tracepoint(&mut ebpf, LATENCY_OBJECT_NAME, program, tracepoint)?;
    }
    Ok(ebpf)
}

impl Observer {
    /// Observes process `pid` (its thread group id, as `getpid()` returns
    /// it): its syscalls, and the latency of every TCP socket it reads and
    /// writes. Needs CAP_BPF and CAP_PERFMON (root), and for latency a
    /// kernel with BTF and the sock_recv_length/sock_send_length
    /// tracepoints (Linux 6.3+). Fails, with the step and the
    /// kernel's reason, if any program cannot be loaded or attached;
    /// nothing stays attached then.
    pub fn attach(pid: u32) -> Result<Observer, EbpfError> {
        Self::attach_for_port(pid, 0)
    }

    /// As [`Observer::attach`], but latency counts only sockets whose local
    /// port is `server_port` (a server's accepted connections), so that
    /// outgoing connections the process makes (and, in tests, clients in
    /// the same process) do not add samples. 0 counts every port.
    pub fn attach_for_port(pid: u32, server_port: u16) -> Result<Observer, EbpfError> {
        if pid == 0 {
            return Err(EbpfError::Observe {
                step: "attach".to_owned(),
                errno: libc::EINVAL,
                reason: "pid 0 names no process".to_owned(),
            });
        }
        let syscalls = attach_syscalls(pid)?;
        let latency = attach_latency(pid, server_port)?;
        Ok(Observer {
            syscalls,
            latency,
            pid,
        })
    }

    /// The observed process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Syscalls entered by each thread since attach, sorted by thread id.
    /// Threads that exited keep their count.
    pub fn syscalls_by_thread(&self) -> Result<Vec<(u32, u64)>, EbpfError> {
        let step = || format!("{SYSCALLS_OBJECT_NAME}: {BY_THREAD_MAP}");
        let map = self
            .syscalls
            .map(BY_THREAD_MAP)
            .ok_or_else(|| missing(SYSCALLS_OBJECT_NAME, BY_THREAD_MAP))?;
        let by_thread: HashMap<&MapData, u32, u64> = map
            .try_into()
            .map_err(|error| observe_error(step(), &error))?;
        let mut counts = Vec::with_capacity(THREADS_MAX as usize);
        for entry in by_thread.iter() {
            counts.push(entry.map_err(|error| observe_error(step(), &error))?);
        }
        debug_assert!(counts.len() <= THREADS_MAX as usize);
        counts.sort_unstable();
        Ok(counts)
    }

    /// `(syscall number, count)` for every number the process used since
    /// attach (non-zero counts only), in number order. One bpf(2) lookup per
    /// slot: [`SYSCALL_NUMBERS_MAX`] of them.
    pub fn syscalls_by_number(&self) -> Result<Vec<(u32, u64)>, EbpfError> {
        let by_number = self.syscalls_per_cpu_map(BY_NUMBER_MAP)?;
        let mut counts = Vec::new();
        for number in 0..SYSCALL_NUMBERS_MAX {
            let count = Self::sum_slot(&by_number, BY_NUMBER_MAP, number)?;
            if count != 0 {
                counts.push((number, count));
            }
        }
        Ok(counts)
    }

    /// `io_uring_enter` calls since attach: the submissions and waits of
    /// every ring in the process.
    pub fn io_uring_enter_count(&self) -> Result<u64, EbpfError> {
        let by_number = self.syscalls_per_cpu_map(BY_NUMBER_MAP)?;
        Self::sum_slot(&by_number, BY_NUMBER_MAP, SYSCALL_IO_URING_ENTER)
    }

    /// Syscalls counted neither by thread nor by number; see
    /// [`UntrackedSyscalls`].
    pub fn untracked_syscalls(&self) -> Result<UntrackedSyscalls, EbpfError> {
        let untracked = self.syscalls_per_cpu_map(UNTRACKED_MAP)?;
        Ok(UntrackedSyscalls {
            thread_table_full: Self::sum_slot(&untracked, UNTRACKED_MAP, UNTRACKED_THREAD)?,
            number_out_of_range: Self::sum_slot(&untracked, UNTRACKED_MAP, UNTRACKED_NUMBER)?,
        })
    }

    /// Read-to-write turns since attach, by log2 of microseconds: bucket
    /// `i` counts turns of [2^i, 2^(i+1)) µs (see [`BUCKETS`] for the two
    /// end buckets).
    ///
    /// A turn is, for one TCP socket (on the server port, if given), the
    /// time from the return of the first read that got data since the
    /// socket's last send to the return of the next send. It includes
    /// parsing, routing, Lua, serializing, queueing inside the worker and
    /// the send call itself; it excludes the network from the client, the
    /// time the request waited in the receive queue before the worker read
    /// it, and the client reading the response. Pipelined requests read
    /// together and answered by one send are one turn. The C source,
    /// `ebpf/latency.c`, spells out the corner cases.
    pub fn latency_histogram(&self) -> Result<LatencyHistogram, EbpfError> {
        let step = || format!("{LATENCY_OBJECT_NAME}: {HISTOGRAM_MAP}");
        let map = self
            .latency
            .map(HISTOGRAM_MAP)
            .ok_or_else(|| missing(LATENCY_OBJECT_NAME, HISTOGRAM_MAP))?;
        let histogram_map: PerCpuArray<&MapData, u64> = map
            .try_into()
            .map_err(|error| observe_error(step(), &error))?;
        let mut histogram = [0; BUCKETS];
        for (index, bucket) in (0..).zip(histogram.iter_mut()) {
            *bucket = Self::sum_slot(&histogram_map, HISTOGRAM_MAP, index)?;
        }
        Ok(histogram)
    }

    /// [`Observer::latency_histogram`] split by the thread that sent each
    /// turn's response (its tid, as in `/proc/PID/task/TID`), sorted by
    /// thread id: a worker's own latency. Only threads that answered at
    /// least one turn are listed; threads that exited keep theirs. Past
    /// [`THREADS_MAX`] threads, new ones count only process-wide.
    pub fn latency_by_thread(&self) -> Result<Vec<(u32, LatencyHistogram)>, EbpfError> {
        let step = || format!("{LATENCY_OBJECT_NAME}: {THREAD_LATENCY_MAP}");
        let map = self
            .latency
            .map(THREAD_LATENCY_MAP)
            .ok_or_else(|| missing(LATENCY_OBJECT_NAME, THREAD_LATENCY_MAP))?;
        let by_thread: HashMap<&MapData, u32, LatencyHistogram> = map
            .try_into()
            .map_err(|error| observe_error(step(), &error))?;
        let mut histograms = Vec::new();
        for entry in by_thread.iter() {
            histograms.push(entry.map_err(|error| observe_error(step(), &error))?);
        }
        debug_assert!(histograms.len() <= THREADS_MAX as usize);
        histograms.sort_unstable_by_key(|&(tid, _)| tid);
        Ok(histograms)
    }

    fn syscalls_per_cpu_map(&self, name: &str) -> Result<PerCpuArray<&MapData, u64>, EbpfError> {
        let map = self
            .syscalls
            .map(name)
            .ok_or_else(|| missing(SYSCALLS_OBJECT_NAME, name))?;
        map.try_into()
            .map_err(|error| observe_error(format!("{SYSCALLS_OBJECT_NAME}: {name}"), &error))
    }

    /// `map[index]` summed over CPUs.
    fn sum_slot(
        map: &PerCpuArray<&MapData, u64>,
        name: &str,
        index: u32,
    ) -> Result<u64, EbpfError> {
        let per_cpu = map
            .get(&index, 0)
            .map_err(|error| observe_error(format!("{name}[{index}]"), &error))?;
        Ok(per_cpu.iter().sum())
    }
}
