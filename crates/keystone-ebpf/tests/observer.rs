//! The observers against the real kernel, attached to this test process:
//! syscalls made here must show in the counts, and loopback round trips
//! served by a thread here must show in the latency histogram.
//!
//! Loading BPF needs root: as non-root these tests fail, unless
//! `KEYSTONE_SKIP_BPF_TESTS=1` says to skip them (they print that they did).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use keystone_ebpf::{percentile, EbpfError, Observer, BUCKETS, SYSCALL_IO_URING_ENTER};

/// Syscalls of one number made by the test; each must be counted.
const SYSCALLS: u64 = 100;
/// `io_uring_enter` calls on a bad fd: refused (EBADF), yet entered.
const IO_URING_ENTERS: u64 = 10;
/// Request/response round trips over one loopback connection.
const ROUND_TRIPS: u64 = 50;
/// What the server thread spends on each request, so the histogram has a
/// known floor: every turn takes at least this long.
const SERVICE_TIME: Duration = Duration::from_millis(1);
/// Far above the service time plus loopback and scheduling on a loaded
/// 2-core machine, far below a figure that is plainly wrong.
const MEDIAN_MAX: Duration = Duration::from_millis(100);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/// True when BPF tests should run; panics when they cannot (not root) and
/// nobody asked to skip them, so a missing capability is never a pass.
fn bpf_tests_enabled(test: &str) -> bool {
    if std::env::var("KEYSTONE_SKIP_BPF_TESTS").as_deref() == Ok("1") {
        eprintln!("{test}: skipped (KEYSTONE_SKIP_BPF_TESTS=1)");
        return false;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{test}: loading BPF needs root (CAP_BPF, CAP_PERFMON); run as root or set \
         KEYSTONE_SKIP_BPF_TESTS=1 to skip"
    );
    true
}

fn attach_to_self(server_port: u16) -> Observer {
    let pid = std::process::id();
    match Observer::attach_for_port(pid, server_port) {
        Ok(observer) => observer,
        Err(error) => panic!("attaching the observers to pid {pid}: {error}"),
    }
}

fn count_of(counts: &[(u32, u64)], key: u32) -> u64 {
    counts
        .iter()
        .find(|&&(found, _)| found == key)
        .map_or(0, |&(_, count)| count)
}

fn syscall_number(number: libc::c_long) -> u32 {
    u32::try_from(number).expect("syscall numbers are small and positive")
}

/// Makes `SYSCALLS` getppid calls on a fresh thread and returns its id.
fn getppid_thread() -> u32 {
    thread::spawn(|| {
        for _ in 0..SYSCALLS {
            // SAFETY: getppid takes no arguments and cannot fail.
            let parent = unsafe { libc::syscall(libc::SYS_getppid) };
            assert!(parent > 0);
        }
        // SAFETY: gettid takes no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        u32::try_from(tid).expect("thread ids are positive")
    })
    .join()
    .expect("the syscall thread panicked")
}

#[test]
fn counts_this_process_syscalls_by_number_and_thread() {
    if !bpf_tests_enabled("counts_this_process_syscalls_by_number_and_thread") {
        return;
    }
    let observer = attach_to_self(0);
    let getppid = syscall_number(libc::SYS_getppid);
    let before = observer.syscalls_by_number().expect("by number");
    let io_uring_before = observer.io_uring_enter_count().expect("io_uring_enter");

    let tid = getppid_thread();
    for _ in 0..IO_URING_ENTERS {
        // SAFETY: io_uring_enter on fd -1 touches no memory (the signal
        // mask pointer is null) and fails with EBADF.
        let result = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                -1,
                0,
                0,
                0,
                std::ptr::null::<libc::c_void>(),
                0,
            )
        };
        assert_eq!(result, -1);
    }

    let after = observer.syscalls_by_number().expect("by number");
    let getppid_calls = count_of(&after, getppid) - count_of(&before, getppid);
    assert!(
        getppid_calls >= SYSCALLS,
        "getppid counted {getppid_calls} times, made {SYSCALLS}"
    );
    assert!(
        after.iter().all(|&(_, count)| count > 0),
        "zero counts listed"
    );
    let io_uring_calls = observer.io_uring_enter_count().expect("io_uring_enter") - io_uring_before;
    assert!(
        io_uring_calls >= IO_URING_ENTERS,
        "io_uring_enter ({SYSCALL_IO_URING_ENTER}) counted {io_uring_calls} times, \
         made {IO_URING_ENTERS}"
    );
    assert_eq!(
        count_of(&after, SYSCALL_IO_URING_ENTER),
        observer.io_uring_enter_count().expect("io_uring_enter")
    );

    let by_thread = observer.syscalls_by_thread().expect("by thread");
    let thread_calls = count_of(&by_thread, tid);
    assert!(
        thread_calls >= SYSCALLS,
        "thread {tid} counted {thread_calls} syscalls, made at least {SYSCALLS}: {by_thread:?}"
    );
    let untracked = observer.untracked_syscalls().expect("untracked");
    assert_eq!(untracked.thread_table_full, 0);
    eprintln!(
        "getppid {getppid_calls}, io_uring_enter {io_uring_calls}, thread {tid}: \
         {thread_calls}; {} threads, {} numbers seen",
        by_thread.len(),
        after.len()
    );
}

/// Serves `ROUND_TRIPS` requests on one connection: read a request, take
/// `SERVICE_TIME`, write the response. Returns the serving thread's id.
fn serve(listener: &TcpListener) -> u32 {
    let (mut stream, _) = listener.accept().expect("accept");
    let mut request = [0; REQUEST.len()];
    for _ in 0..ROUND_TRIPS {
        stream.read_exact(&mut request).expect("read request");
        assert_eq!(request, REQUEST);
        thread::sleep(SERVICE_TIME);
        stream.write_all(RESPONSE).expect("write response");
    }
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    u32::try_from(tid).expect("thread ids are positive")
}

#[test]
fn latency_histogram_counts_every_round_trip() {
    if !bpf_tests_enabled("latency_histogram_counts_every_round_trip") {
        return;
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("local address").port();
    // Only the server side of the connection: the client in this same
    // process would add its own turns (response read → next request).
    let observer = attach_to_self(port);
    let server = thread::spawn(move || serve(&listener));

    let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    let mut response = [0; RESPONSE.len()];
    for _ in 0..ROUND_TRIPS {
        client.write_all(REQUEST).expect("write request");
        client.read_exact(&mut response).expect("read response");
        assert_eq!(response, RESPONSE);
    }
    let server_tid = server.join().expect("the server thread panicked");

    let histogram = observer.latency_histogram().expect("histogram");
    let turns: u64 = histogram.iter().sum();
    assert_eq!(
        turns, ROUND_TRIPS,
        "one turn per round trip on the server socket: {histogram:?}"
    );
    let median = percentile(&histogram, 50.0).expect("non-empty, under 2^31 us");
    assert!(median < MEDIAN_MAX, "p50 {median:?}: {histogram:?}");
    // Upper bounds of buckets: every turn includes SERVICE_TIME, so no
    // bucket below it may hold one.
    let fastest = percentile(&histogram, 0.1).expect("non-empty");
    assert!(
        fastest > SERVICE_TIME,
        "a turn faster than the {SERVICE_TIME:?} the server slept: {histogram:?}"
    );
    let populated: Vec<(usize, u64)> = (0..BUCKETS)
        .zip(histogram)
        .filter(|&(_, count)| count > 0)
        .collect();
    eprintln!(
        "{turns} turns, p50 <= {median:?}, p99 <= {:?}; (bucket, count): {populated:?}",
        percentile(&histogram, 99.0).expect("non-empty, under 2^31 us")
    );

    // Every send ran on the server thread: its own histogram holds every
    // turn, bucket for bucket, and no other thread answered one.
    let by_thread = observer.latency_by_thread().expect("latency by thread");
    let (_, server_histogram) = by_thread
        .iter()
        .find(|&&(tid, _)| tid == server_tid)
        .unwrap_or_else(|| panic!("no histogram for server thread {server_tid}: {by_thread:?}"));
    assert_eq!(
        *server_histogram, histogram,
        "server thread {server_tid}'s histogram differs from the process-wide one"
    );
    assert_eq!(
        by_thread.len(),
        1,
        "only the server thread sends on the server port: {by_thread:?}"
    );
    assert!(by_thread.windows(2).all(|pair| pair[0].0 < pair[1].0));
    eprintln!("server thread {server_tid}: {turns} turns");
}

#[test]
fn pid_zero_is_refused_before_loading() {
    // No root needed: the check precedes any bpf(2) call.
    let error = Observer::attach(0).expect_err("pid 0 names no process");
    assert!(
        matches!(error, EbpfError::Observe { errno, .. } if errno == libc::EINVAL),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "eBPF observer: attach (errno 22): pid 0 names no process"
    );
}
