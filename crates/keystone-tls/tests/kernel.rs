//! The kernel TLS hand-over in isolation. This machine's kernel has no
//! TLS (`CONFIG_TLS` is off), so the test plays the kernel: it takes the
//! socket options the link asks for and, once `TLS_TX`/`TLS_RX` are set,
//! seals what the link passes through and opens what the client sends
//! with the keys and sequence numbers those options carried
//! (`RecordLayer::from_crypto_info`), exactly what a kernel TLS socket
//! would do with them. A real rustls client on the other side proves the
//! sequence numbers continue the session's: one off and every record
//! after the hand-over fails to authenticate.

use std::io::{Read, Write};
use std::sync::Arc;

use keystone_ringbuf::{split_slab, RingBuffer, SendBuf, SpareLoan};
use keystone_tls::records::{
    record_len, RecordLayer, CONTENT_APPLICATION_DATA, HEADER_BYTES, MAX_PLAINTEXT, SOL_TCP,
    SOL_TLS, TCP_ULP, TLS_RX, TLS_TX,
};
use keystone_tls::{load, CertPair, Link, LinkIntent, CIPHER_IN_BYTES, CIPHER_OUT_BYTES};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// The socket as the kernel would run it.
struct FakeKernel {
    ulp: bool,
    tx: Option<RecordLayer>,
    rx: Option<RecordLayer>,
    /// Refuse `TCP_ULP` (a kernel without the module).
    refuse_ulp: bool,
}

struct Peer {
    link: Link,
    client: ClientConnection,
    kernel: FakeKernel,
    recv: RingBuffer,
    send: RingBuffer,
    received: Vec<u8>,
    recv_result: Option<i32>,
    sent_result: Option<i32>,
    established: bool,
    kernel_sends: bool,
    shut_down: bool,
    pending_recv: Option<SpareLoan>,
    options: Vec<(u32, u32)>,
    /// Plaintext the client has read.
    client_plain: Vec<u8>,
}

fn setup() -> (tempfile::TempDir, Arc<rustls::ServerConfig>, RootCertStore) {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
    let config = load(&[CertPair {
        cert: dir.path().join("c.pem"),
        key: dir.path().join("k.pem"),
    }])
    .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    (dir, config, roots)
}

fn client(
    roots: &RootCertStore,
    version: &'static rustls::SupportedProtocolVersion,
) -> ClientConnection {
    let mut cfg = ClientConfig::builder_with_protocol_versions(&[version])
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    ClientConnection::new(Arc::new(cfg), ServerName::try_from("a.test").unwrap()).unwrap()
}

impl Peer {
    fn new(config: &Arc<rustls::ServerConfig>, client: ClientConnection, refuse_ulp: bool) -> Peer {
        let cipher_in = split_slab(1, CIPHER_IN_BYTES).unwrap().pop().unwrap();
        let cipher_out = split_slab(1, CIPHER_OUT_BYTES).unwrap().pop().unwrap();
        let mut conn = split_slab(2, 64 * 1024).unwrap();
        let mut link = Link::new(config, cipher_in, cipher_out).unwrap();
        link.offer_kernel();
        Peer {
            link,
            client,
            kernel: FakeKernel {
                ulp: false,
                tx: None,
                rx: None,
                refuse_ulp,
            },
            send: conn.pop().unwrap(),
            recv: conn.pop().unwrap(),
            received: Vec::new(),
            recv_result: None,
            sent_result: None,
            established: false,
            kernel_sends: false,
            shut_down: false,
            pending_recv: None,
            options: Vec::new(),
            client_plain: Vec::new(),
        }
    }

    fn want_bytes(&mut self) {
        let loan = self.recv.lend_spare();
        self.link.recv(loan);
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.send.append(bytes).unwrap();
        let loan = self.send.lend_unsent();
        self.link.send(SendBuf::Buffer(loan));
    }

    /// What the client has sent, as a receive on the socket returns it:
    /// ciphertext, or (RX in the kernel) the plaintext of its records.
    fn socket_bytes(&mut self) -> Vec<u8> {
        let mut wire = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut wire).unwrap();
        }
        let Some(rx) = &mut self.kernel.rx else {
            return wire;
        };
        let mut plain = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let len = HEADER_BYTES + record_len(&wire[at..]).unwrap().unwrap();
            let opened = rx.open(&mut wire[at..at + len]).unwrap().unwrap();
            assert_eq!(opened.content_type, CONTENT_APPLICATION_DATA);
            plain.extend_from_slice(&wire[at + opened.start..at + opened.start + opened.len]);
            at += len;
        }
        plain
    }

    /// Completes a receive with what the socket has (or keeps it waiting).
    fn fill(&mut self, mut loan: SpareLoan) -> bool {
        let bytes = self.socket_bytes();
        if bytes.is_empty() {
            self.pending_recv = Some(loan);
            return false;
        }
        assert!(bytes.len() <= loan.len() as usize);
        loan.as_mut_slice()[..bytes.len()].copy_from_slice(&bytes);
        self.link.on_received(loan, bytes.len() as i32);
        true
    }

    fn run(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(intent) = self.link.poll() {
                moved = true;
                match intent {
                    LinkIntent::Recv(loan) => {
                        self.fill(loan);
                    }
                    LinkIntent::Send(buf) => {
                        let (_, len) = buf.ptr_len();
                        let bytes = match &buf {
                            SendBuf::Buffer(loan) => loan.as_slice().to_vec(),
                            SendBuf::Pinned(bytes) => bytes.as_slice().to_vec(),
                        };
                        let wire = match &mut self.kernel.tx {
                            // The kernel seals what it is given.
                            Some(tx) => {
                                let mut wire = Vec::new();
                                for piece in bytes.chunks(MAX_PLAINTEXT) {
                                    let mut out = vec![0; piece.len() + 64];
                                    let n =
                                        tx.seal(CONTENT_APPLICATION_DATA, piece, &mut out).unwrap();
                                    wire.extend_from_slice(&out[..n]);
                                }
                                wire
                            }
                            None => bytes,
                        };
                        let mut slice = &wire[..];
                        while !slice.is_empty() {
                            self.client.read_tls(&mut slice).unwrap();
                            self.client.process_new_packets().unwrap();
                            let mut chunk = [0; 16384];
                            while let Ok(n) = self.client.reader().read(&mut chunk) {
                                if n == 0 {
                                    break;
                                }
                                self.client_plain.extend_from_slice(&chunk[..n]);
                            }
                        }
                        self.link.on_sent(buf, len as i32);
                    }
                    LinkIntent::SetSockOpt {
                        level,
                        name,
                        value,
                        len,
                    } => {
                        self.options.push((level, name));
                        let value = &value[..len];
                        let result = match (level, name) {
                            (SOL_TCP, TCP_ULP) if self.kernel.refuse_ulp => -2,
                            (SOL_TCP, TCP_ULP) => {
                                assert_eq!(value, b"tls");
                                self.kernel.ulp = true;
                                0
                            }
                            (SOL_TLS, TLS_TX) => {
                                assert!(self.kernel.ulp);
                                self.kernel.tx =
                                    Some(RecordLayer::from_crypto_info(value).unwrap());
                                0
                            }
                            (SOL_TLS, TLS_RX) => {
                                assert!(self.kernel.ulp);
                                self.kernel.rx =
                                    Some(RecordLayer::from_crypto_info(value).unwrap());
                                0
                            }
                            other => panic!("unexpected option {other:?}"),
                        };
                        self.link.on_sockopt(result);
                    }
                    LinkIntent::KernelSends => self.kernel_sends = true,
                    LinkIntent::Shutdown => self.shut_down = true,
                    LinkIntent::Established => self.established = true,
                    LinkIntent::Received { buf, result } => {
                        if result > 0 {
                            let start = buf.offset() as usize;
                            self.recv.return_spare(buf, result as u32);
                            let bytes = &self.recv.filled()[start..start + result as usize];
                            self.received.extend_from_slice(bytes);
                            let all = self.recv.len();
                            self.recv.consume(all);
                        } else {
                            self.recv.return_spare(buf, 0);
                        }
                        self.recv_result = Some(result);
                    }
                    LinkIntent::Sent { buf, result } => {
                        let SendBuf::Buffer(loan) = buf else {
                            panic!("sent what was lent")
                        };
                        self.send.return_unsent(loan, result.max(0) as u32);
                        self.sent_result = Some(result);
                    }
                }
            }
            if let Some(loan) = self.pending_recv.take() {
                moved |= self.fill(loan);
            }
            if !moved {
                return;
            }
        }
        panic!("the link and the client never settled");
    }

    /// The connection answers `body` (in sends as the connection makes
    /// them) and the client reads all of it.
    fn answer(&mut self, body: &[u8]) {
        let mut sent = 0;
        self.client_plain.clear();
        while sent < body.len() {
            let room = (body.len() - sent).min(60_000);
            self.send_bytes(&body[sent..sent + room]);
            self.run();
            let n = self.sent_result.take().expect("the send finished");
            assert!(n > 0);
            sent += n as usize;
            let rest = self.send.len();
            self.send.consume(rest);
        }
        assert_eq!(self.client_plain, body);
    }
}

#[test]
fn after_the_handshake_the_kernel_seals_and_opens_from_the_sessions_sequence_numbers() {
    let (_dir, config, roots) = setup();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut peer = Peer::new(&config, client(&roots, version), false);
        // The first request rides behind the client's Finished: it arrives
        // before the hand-over and is opened here, so RX waits for it.
        let first = b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n";
        peer.client.writer().write_all(first).unwrap();
        peer.want_bytes();
        peer.run();
        assert!(peer.established, "{version:?}");
        assert_eq!(peer.received, first, "{version:?}");
        assert_eq!(peer.options[0], (SOL_TCP, TCP_ULP));
        assert!(
            peer.options.contains(&(SOL_TLS, TLS_TX)),
            "{:?}",
            peer.options
        );
        assert!(
            peer.kernel_sends,
            "the connection is told: splicing is allowed"
        );
        assert!(peer.link.kernel().0, "{:?}", peer.options);
        // The answer passes through as plaintext; the kernel seals it.
        peer.answer(&vec![b'a'; 50_000]);
        // The connection reads again: nothing of ours is in RX's way now.
        peer.received.clear();
        peer.want_bytes();
        peer.run();
        assert_eq!(peer.link.kernel(), (true, true), "{:?}", peer.options);
        for round in 2..5 {
            let request = format!("GET /{round} HTTP/1.1\r\nHost: a.test\r\n\r\n");
            peer.client.writer().write_all(request.as_bytes()).unwrap();
            peer.run();
            assert_eq!(
                peer.received,
                request.as_bytes(),
                "{version:?} round {round}"
            );
            peer.received.clear();
            peer.answer(format!("answer {round}").as_bytes());
            peer.want_bytes();
            peer.run();
        }
        // The shutdown is the FIN alone (a close_notify would need a
        // record-type control message on the kernel's socket).
        peer.link.shutdown();
        peer.run();
        assert!(peer.shut_down);
    }
}

#[test]
fn a_kernel_without_tls_keeps_the_records_here() {
    let (_dir, config, roots) = setup();
    let mut peer = Peer::new(&config, client(&roots, &rustls::version::TLS13), true);
    peer.want_bytes();
    peer.run();
    assert!(peer.established);
    assert_eq!(
        peer.options,
        vec![(SOL_TCP, TCP_ULP)],
        "nothing after the refusal"
    );
    assert_eq!(peer.link.kernel(), (false, false));
    assert!(!peer.kernel_sends);
    let request = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    peer.client.writer().write_all(request).unwrap();
    peer.run();
    assert_eq!(peer.received, request);
    peer.answer(&vec![b'u'; 40_000]);
}
