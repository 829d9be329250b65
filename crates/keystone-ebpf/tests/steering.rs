//! The reuseport program steering real loopback connections: a group of
//! listeners, the program attached, clients connecting, accepts counted.
//!
//! Loading BPF needs root: as non-root these tests fail, unless
//! `KEYSTONE_SKIP_BPF_TESTS=1` says to skip them (they print that they did).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd as _, BorrowedFd};
use std::time::{Duration, Instant};

use keystone_ebpf::{EbpfError, ReuseportSteering, WORKERS_MAX};
use socket2::{Domain, Socket, Type};

/// One listener per worker, as the server has on a 4-core host.
const WORKERS: usize = 4;
/// Enough connections that an even hash gives each worker ~100.
const CONNECTIONS: usize = 400;
/// A worker must get at least 1/10 of the connections (expected 1/4): far
/// from what a fair hash produces, yet fails a program that pins everything
/// to one or two workers.
const SHARE_MIN_PERCENT: usize = 10;
/// Bound on waiting for the kernel to queue every handshake.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Each listener's accept queue holds every connection, so none is refused
/// even if steering sent them all to one worker.
const BACKLOG: i32 = CONNECTIONS as i32;

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
        "{test}: loading BPF needs root (CAP_BPF, CAP_NET_ADMIN); run as root or set \
         KEYSTONE_SKIP_BPF_TESTS=1 to skip"
    );
    true
}

/// A SO_REUSEPORT listener on 127.0.0.1:`port` (0: any), non-blocking.
fn reuseport_listener(port: u16) -> TcpListener {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    socket.bind(&address.into()).expect("bind");
    socket.listen(BACKLOG).expect("listen");
    socket.set_nonblocking(true).expect("non-blocking");
    socket.into()
}

/// `count` listeners in one reuseport group on a fresh port.
fn listener_group(count: usize) -> Vec<TcpListener> {
    let first = reuseport_listener(0);
    let port = first.local_addr().expect("local address").port();
    let mut group = vec![first];
    group.extend((1..count).map(|_| reuseport_listener(port)));
    group
}

/// Accepts until `expected` connections arrived over all listeners (or the
/// timeout); returns the accepted count per listener.
fn accept_all(listeners: &[TcpListener], expected: usize) -> Vec<usize> {
    let mut accepted = vec![0; listeners.len()];
    let mut streams = Vec::with_capacity(expected);
    let deadline = Instant::now() + ACCEPT_TIMEOUT;
    while accepted.iter().sum::<usize>() < expected && Instant::now() < deadline {
        for (index, listener) in listeners.iter().enumerate() {
            match listener.accept() {
                Ok((stream, _)) => {
                    accepted[index] += 1;
                    streams.push(stream);
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                Err(error) => panic!("accept on listener {index}: {error}"),
            }
        }
    }
    accepted
}

#[test]
fn connections_are_spread_over_every_worker_and_counted() {
    if !bpf_tests_enabled("connections_are_spread_over_every_worker_and_counted") {
        return;
    }
    let listeners = listener_group(WORKERS);
    let port = listeners[0].local_addr().expect("local address").port();
    let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|listener| listener.as_fd()).collect();
    let steering = ReuseportSteering::attach(&fds).expect("attach steering as root");
    assert_eq!(steering.worker_count(), WORKERS as u32);

    let clients: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect"))
        .collect();
    let accepted = accept_all(&listeners, CONNECTIONS);
    drop(clients);

    assert_eq!(
        accepted.iter().sum::<usize>(),
        CONNECTIONS,
        "per listener: {accepted:?}"
    );
    for (index, count) in accepted.iter().enumerate() {
        assert!(
            count * 100 >= CONNECTIONS * SHARE_MIN_PERCENT,
            "worker {index} got {count} of {CONNECTIONS}: {accepted:?}"
        );
    }
    let selections = steering.selections_per_worker().expect("read counters");
    let selections: Vec<usize> = selections.iter().map(|&count| count as usize).collect();
    assert_eq!(
        selections, accepted,
        "the program's selections must be exactly what each listener accepted"
    );
    eprintln!("accepted per worker: {accepted:?}, selections: {selections:?}");
}

#[test]
fn more_sockets_than_workers_max_is_refused() {
    // Checked before anything is loaded: no root needed.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let fds = vec![listener.as_fd(); WORKERS_MAX as usize + 1];
    match ReuseportSteering::attach(&fds) {
        Err(EbpfError::TooManyWorkers { workers, max }) => {
            assert_eq!(workers, WORKERS_MAX as usize + 1);
            assert_eq!(max, WORKERS_MAX);
        }
        other => panic!("expected TooManyWorkers, got {other:?}"),
    }
}

#[test]
fn workers_max_matches_the_object_at_the_limit() {
    if !bpf_tests_enabled("workers_max_matches_the_object_at_the_limit") {
        return;
    }
    // WORKERS_MAX sockets fill every slot of `workers`: attach also checks
    // the map's max_entries against WORKERS_MAX and would fail on a drift.
    let listeners = listener_group(WORKERS_MAX as usize);
    let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|listener| listener.as_fd()).collect();
    let steering = ReuseportSteering::attach(&fds).expect("attach at the limit");
    assert_eq!(steering.worker_count(), WORKERS_MAX);
    let selections = steering.selections_per_worker().expect("read counters");
    assert_eq!(selections, vec![0; WORKERS_MAX as usize]);
}

#[test]
fn socket_without_reuseport_is_a_clear_error() {
    if !bpf_tests_enabled("socket_without_reuseport_is_a_clear_error") {
        return;
    }
    let plain = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    match ReuseportSteering::attach(&[plain.as_fd()]) {
        Err(error @ EbpfError::Attach { errno, .. }) => {
            assert_eq!(errno, libc::EINVAL);
            let message = error.to_string();
            assert!(message.contains("SO_REUSEPORT"), "{message}");
        }
        other => panic!("expected an Attach error, got {other:?}"),
    }
}

#[test]
fn reuseport_socket_that_is_not_listening_is_a_map_error() {
    if !bpf_tests_enabled("reuseport_socket_that_is_not_listening_is_a_map_error") {
        return;
    }
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    socket.bind(&address.into()).expect("bind");
    match ReuseportSteering::attach(&[socket.as_fd()]) {
        Err(error @ EbpfError::Map { .. }) => {
            let message = error.to_string();
            assert!(message.contains("listening"), "{message}");
        }
        other => panic!("expected a Map error, got {other:?}"),
    }
}

#[test]
fn listeners_on_different_ports_are_not_one_group() {
    // Checked before anything is loaded: no root needed.
    let first = reuseport_listener(0);
    let second = reuseport_listener(0);
    match ReuseportSteering::attach(&[first.as_fd(), second.as_fd()]) {
        Err(error @ EbpfError::Attach { .. }) => {
            assert!(
                error.to_string().contains("not one reuseport group"),
                "{error}"
            );
        }
        other => panic!("expected an Attach error, got {other:?}"),
    }
}
