//! Conformance tests against the real kernel: real sockets, real ring.

use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

#[test]
fn token_round_trip() {
    let cases = [
        (0u32, 0u32, 0u8),
        (7, 1, 3),
        (u32::MAX, GENERATION_MASK, 255),
        (5, 0x0100_0001, 2),
    ];
    for (slot, generation, op) in cases {
        let token = Token::new(slot, generation, op);
        assert_eq!(token.slot(), slot);
        assert_eq!(token.generation(), generation & GENERATION_MASK);
        assert_eq!(token.op(), op);
    }
}

fn wait_for(reactor: &mut Reactor, op: u8) -> Completion {
    let mut out = [Completion::EMPTY; COMPLETIONS_PER_PUMP];
    for _ in 0..100 {
        let n = reactor.pump(&mut out).unwrap();
        if let Some(c) = out[..n].iter().find(|c| c.token.op() == op) {
            return *c;
        }
    }
    panic!("no completion for op {op}");
}

#[test]
fn accept_recv_send_close_over_loopback() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut reactor = Reactor::new(64).unwrap();
    reactor.accept_multishot(listener.as_raw_fd(), Token::new(0, 0, 1));
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let accepted = wait_for(&mut reactor, 1);
    assert!(accepted.result >= 0, "accept failed: {}", accepted.result);
    assert!(accepted.more(), "multishot accept stays armed");
    let fd = accepted.result;

    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: `buf` outlives the operation: we wait for its completion below.
    unsafe { reactor.recv(fd, buf.as_mut_ptr(), buf.len() as u32, Token::new(1, 1, 2)) };
    let received = wait_for(&mut reactor, 2);
    assert_eq!(received.result, 4);
    assert_eq!(received.token.slot(), 1);
    assert_eq!(&buf[..4], b"ping");

    let reply = b"pong!";
    // SAFETY: `reply` is a static literal.
    unsafe { reactor.send(fd, reply.as_ptr(), reply.len() as u32, Token::new(1, 1, 3)) };
    assert_eq!(wait_for(&mut reactor, 3).result, 5);
    let mut got = [0u8; 5];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong!");

    reactor.close(fd, Token::new(1, 1, 4));
    assert_eq!(wait_for(&mut reactor, 4).result, 0);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "peer sees EOF after close");
}

#[test]
fn send_to_vanished_peer_is_an_error_not_a_signal() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop(client);
    let mut reactor = Reactor::new(8).unwrap();
    let payload = [b'x'; 65536];
    let mut last = 0;
    for _ in 0..20 {
        // SAFETY: `payload` outlives the operation (reaped in `wait_for`).
        unsafe {
            reactor.send(
                server.as_raw_fd(),
                payload.as_ptr(),
                payload.len() as u32,
                Token::new(0, 0, 9),
            )
        };
        last = wait_for(&mut reactor, 9).result;
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
fn cancel_reports_cancelled_recv() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let mut reactor = Reactor::new(8).unwrap();
    let mut buf = [0u8; 8];
    let target = Token::new(3, 1, 2);
    // SAFETY: `buf` outlives the operation: its cancelled completion is reaped below.
    unsafe { reactor.recv(server.as_raw_fd(), buf.as_mut_ptr(), 8, target) };
    reactor.cancel(target, Token::new(3, 1, 7));
    assert_eq!(wait_for(&mut reactor, 2).result, -libc::ECANCELED);
}

#[test]
fn many_queued_operations_flush_a_full_queue() {
    let mut reactor = Reactor::new(4).unwrap();
    for i in 0..32 {
        reactor.close(-1, Token::new(i, 0, 5));
    }
    let mut seen = 0;
    let mut out = [Completion::EMPTY; COMPLETIONS_PER_PUMP];
    while seen < 32 {
        let n = reactor.pump(&mut out).unwrap();
        assert!(out[..n].iter().all(|c| c.result == -libc::EBADF));
        seen += n;
    }
    assert_eq!(seen, 32);
}

#[test]
fn splice_moves_file_bytes_through_a_pipe_to_a_socket() {
    use std::os::fd::FromRawFd;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let path = std::env::temp_dir().join(format!("keystone-splice-{}", std::process::id()));
    std::fs::write(&path, b"0123456789abcdef").unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are fresh and owned by nobody else.
    let (read_end, write_end) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let mut reactor = Reactor::new(8).unwrap();
    reactor.splice(
        file.as_raw_fd(),
        4,
        write_end.as_raw_fd(),
        8,
        Token::new(0, 0, 10),
    );
    assert_eq!(wait_for(&mut reactor, 10).result, 8);
    reactor.splice(
        read_end.as_raw_fd(),
        -1,
        server.as_raw_fd(),
        8,
        Token::new(0, 0, 11),
    );
    assert_eq!(wait_for(&mut reactor, 11).result, 8);
    let mut got = [0u8; 8];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"456789ab");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn sqpoll_ring_serves_operations() {
    let mut reactor = Reactor::with_sqpoll(8, Some(100))
        .expect("SQPOLL ring (root or CAP_SYS_NICE on old kernels)");
    reactor.close(-1, Token::new(0, 0, 5));
    assert_eq!(wait_for(&mut reactor, 5).result, -libc::EBADF);
}

#[test]
fn read_fixed_receives_into_a_registered_buffer_and_only_there() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let mut reactor = Reactor::new(8).unwrap();
    reactor.register_buffer_table(4).unwrap();
    let mut region = vec![0u8; 8192];
    // SAFETY: `region` outlives the ring's use of it: it is unregistered
    // below before it is dropped, and the ring is dropped first anyway.
    unsafe { reactor.register_buffer(2, region.as_mut_ptr(), 4096) }.unwrap();

    // A read inside the registered range lands in place.
    client.write_all(b"fixed bytes").unwrap();
    // SAFETY: [100, 100+64) lies in the registered, live region.
    unsafe {
        reactor.read_fixed(
            server.as_raw_fd(),
            region.as_mut_ptr().add(100),
            64,
            2,
            Token::new(2, 0, 5),
        )
    };
    let got = wait_for(&mut reactor, 5);
    assert_eq!(got.result, 11);
    assert_eq!(&region[100..111], b"fixed bytes");

    // Past the registered length: the kernel refuses, nothing is written.
    client.write_all(b"more").unwrap();
    // SAFETY: as above; the kernel rejects the range before touching it.
    unsafe {
        reactor.read_fixed(
            server.as_raw_fd(),
            region.as_mut_ptr().add(4090),
            64,
            2,
            Token::new(2, 0, 6),
        )
    };
    assert_eq!(wait_for(&mut reactor, 6).result, -libc::EFAULT);

    // An emptied slot refuses reads; a plain recv still gets the bytes.
    reactor.unregister_buffer(2).unwrap();
    // SAFETY: as above.
    unsafe {
        reactor.read_fixed(
            server.as_raw_fd(),
            region.as_mut_ptr(),
            64,
            2,
            Token::new(2, 0, 7),
        )
    };
    assert_eq!(wait_for(&mut reactor, 7).result, -libc::EFAULT);
    // SAFETY: `region` outlives the operation (reaped in `wait_for`).
    unsafe {
        reactor.recv(
            server.as_raw_fd(),
            region.as_mut_ptr(),
            64,
            Token::new(2, 0, 8),
        )
    };
    assert_eq!(wait_for(&mut reactor, 8).result, 4);
    assert_eq!(&region[..4], b"more");
}

#[test]
fn buffer_table_size_is_checked() {
    let mut reactor = Reactor::new(8).unwrap();
    let too_big = reactor.register_buffer_table(REGISTERED_BUFFERS_MAX + 1);
    assert_eq!(too_big.unwrap_err().raw_os_error(), Some(libc::EINVAL));
    reactor
        .register_buffer_table(REGISTERED_BUFFERS_MAX)
        .unwrap();
}
