//! Conformance tests against the real kernel: real sockets, real files,
//! real ring; loans from real ring buffers.

use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use keystone_ringbuf::split_slab;

/// Pumps until the operation `id` completes finally; returns it (other
/// completions are dropped).
fn wait_for(reactor: &mut Reactor, id: OpId) -> Done {
    wait_all(reactor, &[id]).pop().expect("one")
}

/// Pumps until every operation in `ids` completed finally; returns their
/// completions in the order of `ids`.
fn wait_all(reactor: &mut Reactor, ids: &[OpId]) -> Vec<Done> {
    let mut out = Vec::with_capacity(COMPLETIONS_PER_PUMP);
    let mut found: Vec<Option<Done>> = ids.iter().map(|_| None).collect();
    for _ in 0..200 {
        reactor.pump(&mut out).unwrap();
        for done in out.drain(..) {
            if let Some(index) = ids.iter().position(|id| *id == done.id && !done.more) {
                found[index] = Some(done);
            }
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("no completion for some of {ids:?}");
}

fn buffers(count: u32, bytes: u32) -> Vec<RingBuffer> {
    split_slab(count, bytes).expect("slab")
}

#[test]
fn accept_captures_the_peer_then_recv_send_close_over_loopback() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut reactor = Reactor::new(64, 4).unwrap();
    let accept = reactor.accept(WORKER, listener.as_raw_fd());
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let accepted = wait_for(&mut reactor, accept);
    assert!(accepted.result >= 0, "accept failed: {}", accepted.result);
    let Op::Accept { peer } = accepted.op else {
        panic!("{:?}", accepted.op)
    };
    assert_eq!(peer, Some(client.local_addr().unwrap()), "peer from accept");
    let fd = accepted.result;

    let mut slab = buffers(2, 64);
    client.write_all(b"ping").unwrap();
    let loan = slab[0].lend_spare();
    let id = reactor.recv(1, fd, loan, 16, None);
    assert_eq!(reactor.in_flight(1), 1);
    let received = wait_for(&mut reactor, id);
    assert_eq!((received.owner, received.result), (1, 4));
    assert_eq!(reactor.in_flight(1), 0);
    let Op::Recv { buf, fixed } = received.op else {
        panic!()
    };
    assert!(!fixed);
    slab[0].return_spare(buf, 4);
    assert_eq!(slab[0].unconsumed(), b"ping");

    slab[1].append(b"pong!").unwrap();
    let id = reactor.send(1, fd, SendBuf::Buffer(slab[1].lend_unsent()));
    let sent = wait_for(&mut reactor, id);
    assert_eq!(sent.result, 5);
    let Op::Send {
        buf: SendBuf::Buffer(loan),
    } = sent.op
    else {
        panic!()
    };
    slab[1].return_unsent(loan, 5);
    let mut got = [0u8; 5];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong!");

    let id = reactor.close(1, fd);
    assert_eq!(wait_for(&mut reactor, id).result, 0);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "peer sees EOF after close");
}

#[test]
fn pinned_bytes_are_sent_and_handed_back() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let mut reactor = Reactor::new(8, 1).unwrap();
    static BODY: &[u8] = b"from a pinned string";
    // SAFETY: a static byte string: alive and unchanged for ever.
    let pinned = unsafe { PinnedBytes::new(BODY.as_ptr(), BODY.len()) };
    let id = reactor.send(0, server.as_raw_fd(), SendBuf::Pinned(pinned));
    let done = wait_for(&mut reactor, id);
    assert_eq!(done.result as usize, BODY.len());
    assert!(matches!(
        done.op,
        Op::Send {
            buf: SendBuf::Pinned(_)
        }
    ));
    let mut got = vec![0u8; BODY.len()];
    client.read_exact(&mut got).unwrap();
    assert_eq!(got, BODY);
}

#[test]
fn send_to_vanished_peer_is_an_error_not_a_signal() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop(client);
    let mut reactor = Reactor::new(8, 1).unwrap();
    let mut slab = buffers(1, 65536);
    let mut last = 0;
    for _ in 0..20 {
        slab[0].append(&[b'x'; 65536]).unwrap();
        let id = reactor.send(
            0,
            server.as_raw_fd(),
            SendBuf::Buffer(slab[0].lend_unsent()),
        );
        let done = wait_for(&mut reactor, id);
        last = done.result;
        let Op::Send {
            buf: SendBuf::Buffer(loan),
        } = done.op
        else {
            panic!()
        };
        let len = loan.len();
        slab[0].return_unsent(loan, len);
        if last < 0 {
            break;
        }
    }
    assert!(
        last == -libc::EPIPE || last == -libc::ECONNRESET,
        "got {last}"
    );
}

#[test]
fn a_cancelled_recv_hands_its_loan_back() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let mut reactor = Reactor::new(8, 4).unwrap();
    let mut slab = buffers(1, 64);
    let target = reactor.recv(3, server.as_raw_fd(), slab[0].lend_spare(), 8, None);
    let cancel = reactor.cancel(3, target);
    assert_eq!(reactor.in_flight(3), 2);
    let mut done = wait_all(&mut reactor, &[target, cancel]);
    assert_eq!(done[1].result, 0, "the cancel found its target");
    let received = done.remove(0);
    assert_eq!(received.result, -libc::ECANCELED);
    let Op::Recv { buf, .. } = received.op else {
        panic!()
    };
    slab[0].return_spare(buf, 0);
    assert_eq!(reactor.in_flight(3), 0);
}

#[test]
fn many_queued_operations_flush_a_full_queue() {
    let mut reactor = Reactor::new(4, 1).unwrap();
    for _ in 0..32 {
        reactor.close(0, -1);
    }
    assert_eq!(reactor.in_flight(0), 32);
    let mut out = Vec::with_capacity(COMPLETIONS_PER_PUMP);
    let mut seen = 0;
    while seen < 32 {
        reactor.pump(&mut out).unwrap();
        assert!(out.iter().all(|done| done.result == -libc::EBADF));
        seen += out.len();
        out.clear();
    }
    assert_eq!(reactor.in_flight(0), 0);
}

/// A pipe of the default capacity.
fn pipe() -> (OwnedFd, OwnedFd) {
    let (read, write, capacity) = sized_pipe(PIPE_DEFAULT_BYTES).unwrap();
    assert_eq!(capacity, PIPE_DEFAULT_BYTES);
    (read, write)
}

#[test]
fn splice_moves_file_bytes_through_a_pipe_to_a_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, b"0123456789abcdef").unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let (read_end, write_end) = pipe();
    let mut reactor = Reactor::new(8, 1).unwrap();
    let id = reactor.splice(0, file.as_raw_fd(), 4, write_end.as_raw_fd(), 8);
    assert_eq!(wait_for(&mut reactor, id).result, 8);
    let id = reactor.splice(0, read_end.as_raw_fd(), -1, server.as_raw_fd(), 8);
    assert_eq!(wait_for(&mut reactor, id).result, 8);
    let mut got = [0u8; 8];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"456789ab");
}

#[test]
fn open_beneath_statx_and_read_a_file_confined_to_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("root")).unwrap();
    std::fs::write(dir.path().join("root/page.txt"), b"hello, file").unwrap();
    std::fs::write(dir.path().join("secret"), b"no").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("root/link")).unwrap();
    let root = std::fs::File::open(dir.path().join("root")).unwrap();
    let mut reactor = Reactor::new(8, 1).unwrap();
    let cases: &[(&[u8], i32)] = &[
        (b"../secret", -libc::EXDEV),
        (b"/etc/passwd", -libc::EXDEV),
        (b"link", -libc::EXDEV),
        (b"missing", -libc::ENOENT),
        (b"nul\0inside", -libc::ENOENT),
    ];
    for (path, expected) in cases {
        let id = reactor.open_beneath(0, root.as_raw_fd(), path);
        let done = wait_for(&mut reactor, id);
        assert_eq!(done.result, *expected, "{}", String::from_utf8_lossy(path));
    }
    let id = reactor.open_beneath(0, root.as_raw_fd(), b"page.txt");
    let opened = wait_for(&mut reactor, id);
    assert!(opened.result >= 0, "open: {}", opened.result);
    // SAFETY: a fresh descriptor the ring opened for us.
    let file = unsafe { OwnedFd::from_raw_fd(opened.result) };
    let id = reactor.statx(0, file.as_raw_fd());
    let done = wait_for(&mut reactor, id);
    assert_eq!(done.result, 0);
    let Op::Statx { stat: Some(stat) } = done.op else {
        panic!("{:?}", done.op)
    };
    assert_eq!(stat.size, 11);
    assert_eq!(stat.file_type, libc::S_IFREG);
    assert!(stat.mtime_secs > 1_600_000_000);

    let mut slab = buffers(1, 64);
    slab[0].append(b"head:").unwrap();
    let id = reactor.read_at(0, file.as_raw_fd(), 7, slab[0].lend_spare(), 16);
    let done = wait_for(&mut reactor, id);
    assert_eq!(done.result, 4);
    let Op::ReadAt { buf } = done.op else {
        panic!()
    };
    slab[0].return_spare(buf, 4);
    assert_eq!(slab[0].unconsumed(), b"head:file");
}

#[test]
fn a_written_batch_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let mut reactor = Reactor::new(8, 1).unwrap();
    let id = reactor.write(WORKER, file.as_raw_fd(), b"line 1\n".to_vec());
    let done = wait_for(&mut reactor, id);
    assert_eq!(done.result, 7);
    let Op::Write { mut batch } = done.op else {
        panic!()
    };
    batch.clear();
    batch.extend_from_slice(b"line 2\n");
    let id = reactor.write(WORKER, file.as_raw_fd(), batch);
    wait_for(&mut reactor, id);
    assert_eq!(std::fs::read(&path).unwrap(), b"line 1\nline 2\n");
}

#[test]
fn a_counter_read_returns_the_eventfd_value() {
    // SAFETY: eventfd takes plain integers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor owned by nobody else.
    let event = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut reactor = Reactor::new(8, 1).unwrap();
    let id = reactor.read_counter(WORKER, event.as_raw_fd());
    let value = 5u64.to_ne_bytes();
    // SAFETY: writes 8 initialised bytes to our eventfd.
    assert_eq!(unsafe { libc::write(fd, value.as_ptr().cast(), 8) }, 8);
    let done = wait_for(&mut reactor, id);
    assert_eq!(done.result, 8);
    assert!(matches!(done.op, Op::ReadCounter { value: 5 }));
}

#[test]
fn a_tick_repeats_until_cancelled() {
    let mut reactor = Reactor::new(8, 1).unwrap();
    let tick = reactor.tick(WORKER, Duration::from_millis(10));
    let mut out = Vec::with_capacity(COMPLETIONS_PER_PUMP);
    let mut ticks = 0;
    while ticks < 3 {
        reactor.pump(&mut out).unwrap();
        for done in out.drain(..) {
            assert_eq!(done.id, tick);
            assert!(done.more);
            ticks += 1;
        }
    }
    assert_eq!(reactor.in_flight(WORKER), 1, "still armed");
    let cancel = reactor.cancel(WORKER, tick);
    let done = wait_all(&mut reactor, &[tick, cancel]);
    assert!(matches!(done[0].op, Op::Tick));
    assert_eq!(reactor.in_flight(WORKER), 0);
}

/// What the worker's tick re-arm rests on: a completion ring that
/// overflows ends a multishot timeout, whose last completion comes without
/// `more`. The ring here is made small on purpose (8 submissions, 16
/// completions) and 24 closes complete before anything is reaped.
#[test]
fn an_overflowing_completion_ring_ends_a_multishot_tick() {
    let mut reactor = Reactor::new(8, 1).unwrap();
    assert_eq!(completion_entries(8, 1), 16);
    let tick = reactor.tick(WORKER, Duration::from_millis(5));
    let mut closes = Vec::new();
    for _ in 0..3 {
        for _ in 0..7 {
            closes.push(reactor.close(0, -1));
        }
        reactor.flush().unwrap();
    }
    closes.extend((0..3).map(|_| reactor.close(0, -1)));
    reactor.flush().unwrap();
    // The tick fires while the completion ring is full.
    std::thread::sleep(Duration::from_millis(30));
    let mut out = Vec::with_capacity(COMPLETIONS_PER_PUMP);
    let mut tick_ended = false;
    let mut closed = 0;
    for _ in 0..50 {
        reactor.pump(&mut out).unwrap();
        for done in out.drain(..) {
            if done.id == tick {
                tick_ended |= !done.more;
            } else {
                assert_eq!(done.result, -libc::EBADF);
                closed += 1;
            }
        }
        if tick_ended && closed == closes.len() {
            break;
        }
    }
    assert_eq!(
        closed,
        closes.len(),
        "no completion is lost to the overflow"
    );
    assert!(tick_ended, "the kernel ended the multishot tick");
    assert_eq!(reactor.in_flight(WORKER), 0);
}

#[test]
fn completion_rings_hold_two_completions_per_owner() {
    assert_eq!(completion_entries(1024, 100), 2048);
    assert_eq!(completion_entries(1024, 1024 + 256), 4096);
    assert_eq!(completion_entries(1024, 10_240 + 256), 32_768);
    assert_eq!(completion_entries(1024, 1_000_000), COMPLETION_ENTRIES_MAX);
}

#[test]
fn sqpoll_ring_serves_operations() {
    let mut reactor = Reactor::with_sqpoll(8, 1, Some(100))
        .expect("SQPOLL ring (root or CAP_SYS_NICE on old kernels)");
    let id = reactor.close(0, -1);
    assert_eq!(wait_for(&mut reactor, id).result, -libc::EBADF);
}

#[test]
fn read_fixed_receives_into_a_registered_window_and_only_there() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let mut reactor = Reactor::new(8, 4).unwrap();
    reactor.register_buffer_table(4).unwrap();
    let mut slab = buffers(1, 8192);
    reactor.register_window(2, &mut slab[0], 4096).unwrap();
    assert!(reactor.window_registered(2));
    assert_eq!(slab[0].pinned(), 4096);

    // A read inside the registered range lands in place.
    slab[0].append(&[b'.'; 100]).unwrap();
    client.write_all(b"fixed bytes").unwrap();
    let id = reactor.recv(2, server.as_raw_fd(), slab[0].lend_spare(), 64, Some(2));
    let done = wait_for(&mut reactor, id);
    assert_eq!(done.result, 11);
    let Op::Recv { buf, fixed } = done.op else {
        panic!()
    };
    assert!(fixed);
    slab[0].return_spare(buf, 11);
    assert_eq!(&slab[0].unconsumed()[100..], b"fixed bytes");

    // Past the registered length: the kernel refuses, nothing is written.
    slab[0].consume(111);
    slab[0].append(&[b'.'; 4090]).unwrap();
    client.write_all(b"more").unwrap();
    let id = reactor.recv(2, server.as_raw_fd(), slab[0].lend_spare(), 64, Some(2));
    let done = wait_for(&mut reactor, id);
    assert_eq!(done.result, -libc::EFAULT);
    let Op::Recv { buf, .. } = done.op else {
        panic!()
    };
    slab[0].return_spare(buf, 0);

    // An emptied slot refuses reads; a plain recv still gets the bytes.
    reactor.unregister_window(2, &mut slab[0]).unwrap();
    assert_eq!(slab[0].pinned(), 0);
    slab[0].consume(4090);
    let id = reactor.recv(2, server.as_raw_fd(), slab[0].lend_spare(), 64, Some(2));
    let done = wait_for(&mut reactor, id);
    assert_eq!(done.result, -libc::EFAULT);
    let Op::Recv { buf, .. } = done.op else {
        panic!()
    };
    slab[0].return_spare(buf, 0);
    let id = reactor.recv(2, server.as_raw_fd(), slab[0].lend_spare(), 64, None);
    let done = wait_for(&mut reactor, id);
    assert_eq!(done.result, 4);
    let Op::Recv { buf, .. } = done.op else {
        panic!()
    };
    slab[0].return_spare(buf, 4);
    assert_eq!(slab[0].unconsumed(), b"more");
}

#[test]
fn buffer_table_size_is_checked() {
    let mut reactor = Reactor::new(8, 1).unwrap();
    let too_big = reactor.register_buffer_table(REGISTERED_BUFFERS_MAX + 1);
    assert_eq!(too_big.unwrap_err().raw_os_error(), Some(libc::EINVAL));
    reactor
        .register_buffer_table(REGISTERED_BUFFERS_MAX)
        .unwrap();
}

#[test]
fn dropping_the_reactor_cancels_and_reaps_what_is_in_flight() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let mut slab = buffers(1, 64);
    let mut reactor = Reactor::new(8, 1).unwrap();
    reactor.recv(
        0,
        server.as_raw_fd(),
        slab.pop().unwrap().lend_spare(),
        8,
        None,
    );
    reactor.tick(WORKER, Duration::from_secs(60));
    reactor.flush().unwrap();
    let started = std::time::Instant::now();
    drop(reactor);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "drop waited too long"
    );
}

/// The server sets `TCP_NODELAY` on its listeners only: accepted sockets
/// inherit it (Linux copies the option at accept), so no `setsockopt` runs
/// per connection.
#[test]
fn accepted_sockets_inherit_tcp_nodelay_from_the_listener() {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_tcp_nodelay(true).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(8).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut reactor = Reactor::new(8, 1).unwrap();
    let accept = reactor.accept(WORKER, socket.as_raw_fd());
    let _client = TcpStream::connect(addr).unwrap();
    let done = wait_for(&mut reactor, accept);
    assert!(done.result >= 0);
    // SAFETY: a fresh descriptor the ring accepted for us.
    let accepted = unsafe { OwnedFd::from_raw_fd(done.result) };
    let accepted = socket2::SockRef::from(&accepted);
    assert!(accepted.tcp_nodelay().unwrap(), "TCP_NODELAY is inherited");
}

#[test]
fn batch_writer_writes_one_batch_at_a_time_without_waiting() {
    let (read_end, write_end) = pipe();
    let mut writer = BatchWriter::new().unwrap();
    let mut batches = vec![b"second\n".to_vec(), b"first\n".to_vec()];
    let mut results = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while results.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "writes never completed"
        );
        writer
            .pump(
                || batches.pop().map(|batch| (write_end.as_raw_fd(), batch)),
                |batch, result| results.push((batch.len(), result)),
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(results, [(6, 6), (7, 7)]);
    assert!(!writer.writing());
    let mut out = vec![0u8; 13];
    std::fs::File::from(read_end).read_exact(&mut out).unwrap();
    assert_eq!(out, b"first\nsecond\n");
}

#[test]
fn open_following_follows_the_absolute_links_open_beneath_refuses() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("root")).unwrap();
    std::fs::write(dir.path().join("root/page.txt"), b"inside").unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("root/page.txt"),
        dir.path().join("root/abs"),
    )
    .unwrap();
    let root = std::fs::File::open(dir.path().join("root")).unwrap();
    let mut reactor = Reactor::new(8, 1).unwrap();
    let id = reactor.open_beneath(0, root.as_raw_fd(), b"abs");
    assert_eq!(wait_for(&mut reactor, id).result, -libc::EXDEV);
    let id = reactor.open_following(0, root.as_raw_fd(), b"abs");
    let done = wait_for(&mut reactor, id);
    assert!(done.result >= 0, "open: {}", done.result);
    assert!(
        matches!(done.op, Op::OpenFollowing { dir } if dir == root.as_raw_fd()),
        "{:?}",
        done.op
    );
    // SAFETY: a fresh descriptor the ring opened for us.
    let file = unsafe { OwnedFd::from_raw_fd(done.result) };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(file), &mut text).unwrap();
    assert_eq!(text, "inside");
    // Magic links stay refused.
    let id = reactor.open_following(0, root.as_raw_fd(), b"/proc/self/fd/0");
    assert_eq!(wait_for(&mut reactor, id).result, -libc::ELOOP);
}

#[test]
fn socket_and_connect_through_the_ring() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut reactor = Reactor::new(8, 1).unwrap();
    let id = reactor.socket(0, addr);
    let made = wait_for(&mut reactor, id);
    assert!(made.result >= 0, "socket: {}", made.result);
    assert!(matches!(made.op, Op::Socket));
    // SAFETY: a fresh descriptor the ring made for us.
    let socket = unsafe { OwnedFd::from_raw_fd(made.result) };
    let id = reactor.connect(0, socket.as_raw_fd(), addr);
    let done = wait_for(&mut reactor, id);
    assert_eq!(done.result, 0, "connect");
    let (accepted, from) = listener.accept().unwrap();
    let mut client = std::net::TcpStream::from(socket);
    assert_eq!(from, client.local_addr().unwrap());
    std::io::Write::write_all(&mut client, b"ping").unwrap();
    let mut got = [0_u8; 4];
    std::io::Read::read_exact(&mut &accepted, &mut got).unwrap();
    assert_eq!(&got, b"ping");

    // Nothing listens any more: refused. IPv6 works the same way.
    drop(listener);
    for target in [
        addr,
        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
    ] {
        let id = reactor.socket(0, target);
        let made = wait_for(&mut reactor, id);
        assert!(made.result >= 0, "socket: {}", made.result);
        // SAFETY: as above.
        let socket = unsafe { OwnedFd::from_raw_fd(made.result) };
        let id = reactor.connect(0, socket.as_raw_fd(), target);
        assert_eq!(
            wait_for(&mut reactor, id).result,
            -libc::ECONNREFUSED,
            "{target}"
        );
    }
}

#[test]
fn cancel_fd_ends_every_operation_on_a_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (_server, _) = listener.accept().unwrap();
    let mut reactor = Reactor::new(8, 1).unwrap();
    let mut slab = buffers(1, 64);
    let recv = reactor.recv(0, client.as_raw_fd(), slab[0].lend_spare(), 16, None);
    let cancel = reactor.cancel_fd(0, client.as_raw_fd());
    let mut seen = (None, None);
    let mut out = Vec::with_capacity(COMPLETIONS_PER_PUMP);
    while seen.0.is_none() || seen.1.is_none() {
        reactor.pump(&mut out).unwrap();
        for done in out.drain(..) {
            if done.id == recv {
                seen.0 = Some(done.result);
                let Op::Recv { buf, .. } = done.op else {
                    panic!()
                };
                slab[0].return_spare(buf, 0);
            } else if done.id == cancel {
                seen.1 = Some(done.result);
            }
        }
    }
    assert_eq!(seen.0, Some(-libc::ECANCELED));
    assert_eq!(seen.1, Some(1), "one operation found");
}

#[test]
fn a_pipe_grows_to_the_capacity_asked_and_reports_it() {
    const ASKED: u32 = 256 * 1024;
    let (_read, _write, capacity) = sized_pipe(ASKED).unwrap();
    assert_eq!(capacity, ASKED);
    // Past /proc/sys/fs/pipe-max-size an unprivileged caller is refused
    // and root is not; either way the answer is what the pipe holds.
    let max: u32 = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (_read, _write, held) = sized_pipe(max.saturating_mul(2)).unwrap();
    assert!(held == PIPE_DEFAULT_BYTES || held >= max, "{held}");
}

/// A pipe's capacity when nobody changed it (16 pages).
const PIPE_DEFAULT_BYTES: u32 = 64 * 1024;

#[test]
fn setsockopt_through_the_ring_sets_the_option() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nodelay(false).unwrap();
    let mut reactor = Reactor::new(8, 4).unwrap();
    let on = 1i32.to_ne_bytes();
    let id = reactor.setsockopt(
        1,
        server.as_raw_fd(),
        libc::IPPROTO_TCP as u32,
        libc::TCP_NODELAY as u32,
        &on,
    );
    let done = wait_for(&mut reactor, id);
    assert_eq!(done.result, 0);
    assert!(matches!(done.op, Op::SetSockOpt));
    assert!(server.nodelay().unwrap(), "TCP_NODELAY was set by the ring");
    // The kernel TLS upper-layer protocol: 0 where the kernel has it,
    // -ENOENT where it does not (this machine: no CONFIG_TLS).
    let id = reactor.setsockopt(1, server.as_raw_fd(), libc::SOL_TCP as u32, 31, b"tls");
    let ulp = wait_for(&mut reactor, id).result;
    // Read after: attaching the ULP loads a modular TLS, which adds it.
    let offered = std::path::Path::new("/proc/net/tls_stat").exists();
    assert_eq!(ulp == 0, offered, "TCP_ULP tls answered {ulp}");
    assert_eq!(reactor.in_flight(1), 0);
}
