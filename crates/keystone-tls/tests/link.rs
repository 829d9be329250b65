//! The link in isolation: a real rustls client in memory plays the peer;
//! the test plays the ring (it executes the link's receives and sends
//! against the client) and the connection (its plaintext loans).

use std::io::{Read, Write};
use std::sync::Arc;

use keystone_ringbuf::{split_slab, RingBuffer, SendBuf, SpareLoan};
use keystone_tls::{load, CertPair, Link, LinkIntent, CIPHER_IN_BYTES, CIPHER_OUT_BYTES};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

struct Peer {
    link: Link,
    client: ClientConnection,
    /// The connection's receive and send buffers.
    recv: RingBuffer,
    send: RingBuffer,
    established: bool,
    received: Vec<u8>,
    recv_result: Option<i32>,
    sent_result: Option<i32>,
    /// Ciphertext the link sent, as the client's socket would hold it.
    wire_to_client: Vec<u8>,
    shut_down: bool,
    /// A receive the test holds in flight while the client has nothing.
    pending_recv: Option<SpareLoan>,
    /// Flip the last byte of what the client sends next (a forged record).
    tamper: bool,
    /// Sends fail as on a socket the peer reset.
    fail_sends: bool,
    /// The connection's loans are at most this long (`None`: its whole
    /// spare buffer).
    loan_max: Option<u32>,
    /// A receive takes at most this many bytes (TCP cuts the stream
    /// anywhere).
    chunk: usize,
    /// Ciphertext the client wrote that no receive has taken yet.
    to_server: Vec<u8>,
    /// Ciphertext receives made into the connection's own buffer, and into
    /// the link's.
    direct_recvs: usize,
    buffered_recvs: usize,
}

fn setup(names: &[&str]) -> (tempfile::TempDir, Arc<rustls::ServerConfig>, RootCertStore) {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
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

fn buffers() -> (RingBuffer, RingBuffer, RingBuffer, RingBuffer) {
    let mut ins = split_slab(1, CIPHER_IN_BYTES).unwrap();
    let mut outs = split_slab(1, CIPHER_OUT_BYTES).unwrap();
    let mut conn = split_slab(2, 64 * 1024).unwrap();
    let send = conn.pop().unwrap();
    let recv = conn.pop().unwrap();
    (ins.pop().unwrap(), outs.pop().unwrap(), recv, send)
}

impl Peer {
    fn new(config: &Arc<rustls::ServerConfig>, client: ClientConnection) -> Peer {
        let (cin, cout, recv, send) = buffers();
        Peer {
            link: Link::new(config, cin, cout).unwrap(),
            client,
            recv,
            send,
            established: false,
            received: Vec::new(),
            recv_result: None,
            sent_result: None,
            wire_to_client: Vec::new(),
            shut_down: false,
            pending_recv: None,
            tamper: false,
            fail_sends: false,
            loan_max: None,
            chunk: usize::MAX,
            to_server: Vec::new(),
            direct_recvs: 0,
            buffered_recvs: 0,
        }
    }

    /// The connection asks for bytes.
    fn want_bytes(&mut self) {
        let loan = match self.loan_max {
            Some(max) => self.recv.lend_spare_up_to(max),
            None => self.recv.lend_spare(),
        };
        self.link.recv(loan);
    }

    /// What the client has written, into a receive: `None` when nothing
    /// is there (the receive stays in flight).
    fn deliver(&mut self, mut loan: SpareLoan) -> Option<SpareLoan> {
        while self.client.wants_write() {
            self.client.write_tls(&mut self.to_server).unwrap();
        }
        let n = self
            .to_server
            .len()
            .min(loan.len() as usize)
            .min(self.chunk);
        if n == 0 {
            return Some(loan);
        }
        if std::mem::take(&mut self.tamper) {
            *self.to_server.last_mut().unwrap() ^= 1;
        }
        let base = self.recv.base_ptr() as usize;
        let at = loan.as_mut_ptr() as usize;
        if (base..base + self.recv.capacity() as usize).contains(&at) {
            self.direct_recvs += 1;
        } else {
            self.buffered_recvs += 1;
        }
        loan.as_mut_slice()[..n].copy_from_slice(&self.to_server[..n]);
        self.to_server.drain(..n);
        self.link.on_received(loan, n as i32);
        None
    }

    /// The connection sends `bytes`.
    fn send_bytes(&mut self, bytes: &[u8]) {
        self.send.append(bytes).unwrap();
        let loan = self.send.lend_unsent();
        self.link.send(SendBuf::Buffer(loan));
    }

    /// Runs the link against the client until neither moves.
    fn run(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            // The client's pending ciphertext is what a receive reads.
            while let Some(intent) = self.link.poll() {
                moved = true;
                match intent {
                    LinkIntent::Recv(loan) => {
                        // Nothing to read yet: the receive stays in flight
                        // until the client writes.
                        self.pending_recv = self.deliver(loan);
                    }
                    LinkIntent::Send(buf) if self.fail_sends => {
                        self.link.on_sent(buf, -104); // ECONNRESET
                    }
                    LinkIntent::Send(buf) => {
                        let (ptr, len) = buf.ptr_len();
                        let SendBuf::Buffer(loan) = &buf else {
                            panic!("the link sends its buffer")
                        };
                        assert_eq!(loan.as_ptr(), ptr);
                        self.wire_to_client.extend_from_slice(loan.as_slice());
                        self.link.on_sent(buf, len as i32);
                    }
                    LinkIntent::Shutdown => self.shut_down = true,
                    LinkIntent::Established => self.established = true,
                    LinkIntent::SetSockOpt { .. } | LinkIntent::KernelSends => {
                        panic!("kernel TLS was not offered")
                    }
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
            if !self.wire_to_client.is_empty() {
                moved = true;
                let wire = std::mem::take(&mut self.wire_to_client);
                let mut slice = &wire[..];
                while !slice.is_empty() {
                    self.client.read_tls(&mut slice).unwrap();
                    self.client.process_new_packets().unwrap();
                }
            }
            if let Some(loan) = self.pending_recv.take() {
                self.pending_recv = self.deliver(loan);
                moved |= self.pending_recv.is_none();
            }
            if !moved {
                return;
            }
        }
        panic!("the link and the client never settled");
    }
}

fn client(config: &RootCertStore, name: &str) -> ClientConnection {
    let mut cfg = ClientConfig::builder()
        .with_root_certificates(config.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap()
}

/// A client that offers only `suite` at `version`.
fn client_with(
    roots: &RootCertStore,
    version: &'static rustls::SupportedProtocolVersion,
    suite: rustls::SupportedCipherSuite,
) -> ClientConnection {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..rustls::crypto::ring::default_provider()
    };
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    ClientConnection::new(Arc::new(cfg), ServerName::try_from("a.test").unwrap()).unwrap()
}

#[test]
fn every_suite_both_versions_carries_requests_and_answers_both_ways() {
    use rustls::crypto::ring::cipher_suite::*;
    let (_dir, config, roots) = setup(&["a.test"]);
    let v13 = &rustls::version::TLS13;
    let v12 = &rustls::version::TLS12;
    for (version, suite, id) in [
        (v13, TLS13_AES_128_GCM_SHA256, 0x1301),
        (v13, TLS13_AES_256_GCM_SHA384, 0x1302),
        (v13, TLS13_CHACHA20_POLY1305_SHA256, 0x1303),
        (v12, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, 0xc02b),
        (v12, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, 0xc02c),
        (v12, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, 0xcca9),
    ] {
        // The connection's loans hold a whole record (ciphertext received
        // straight into them), or do not (received into the link's buffer,
        // copied out).
        for loan_max in [None, Some(4096)] {
            let peer = exchange(&config, client_with(&roots, version, suite), id, loan_max);
            if loan_max.is_none() {
                assert!(peer.direct_recvs >= 3, "{id:#x}: {}", peer.direct_recvs);
            } else {
                assert_eq!(peer.direct_recvs, 0, "{id:#x}");
            }
        }
    }
}

fn exchange(
    config: &Arc<rustls::ServerConfig>,
    client: ClientConnection,
    suite: u16,
    loan_max: Option<u32>,
) -> Peer {
    let mut peer = Peer::new(config, client);
    peer.loan_max = loan_max;
    peer.want_bytes();
    peer.run();
    assert!(peer.established, "the handshake finished ({suite:#x})");
    let facts = peer.link.negotiated();
    assert_eq!(facts.cipher, suite);
    assert_eq!(facts.version, if suite >= 0xc000 { 0x0303 } else { 0x0304 });
    assert_eq!(facts.sni, Some("a.test"));
    assert_eq!(peer.client.alpn_protocol(), Some(&b"http/1.1"[..]));

    for round in 0..3 {
        let request = format!("GET /{round} HTTP/1.1\r\nHost: a.test\r\n\r\n");
        peer.client.writer().write_all(request.as_bytes()).unwrap();
        peer.run();
        assert_eq!(peer.received, request.as_bytes(), "round {round}");
        peer.received.clear();
        // The answer: bigger than one encryption step on the last round.
        let body = vec![b'x'; if round == 2 { 50_000 } else { 100 }];
        let mut sent = 0;
        let mut plain = Vec::new();
        while sent < body.len() {
            let room = (body.len() - sent).min(60_000);
            peer.send_bytes(&body[sent..sent + room]);
            peer.run();
            let n = peer.sent_result.take().expect("the send finished");
            assert!(n > 0);
            sent += n as usize;
            // The rest of a short send is sent again, as the connection does.
            let rest = peer.send.len();
            peer.send.consume(rest);
            let mut chunk = [0; 16384];
            while let Ok(n) = peer.client.reader().read(&mut chunk) {
                plain.extend_from_slice(&chunk[..n]);
            }
        }
        assert_eq!(plain, body);
        peer.want_bytes();
        peer.run();
    }
    // close_notify from the client: the connection reads its end.
    peer.client.send_close_notify();
    peer.run();
    assert_eq!(peer.recv_result, Some(0));
    // Our shutdown: close_notify first, then the FIN.
    peer.link.shutdown();
    peer.run();
    assert!(peer.shut_down);
    let mut rest = [0; 8];
    assert_eq!(
        peer.client.reader().read(&mut rest).unwrap(),
        0,
        "clean close"
    );
    peer
}

#[test]
fn records_cut_anywhere_by_the_receives_arrive_whole_and_in_order() {
    use rustls::crypto::ring::cipher_suite::*;
    let (_dir, config, roots) = setup(&["a.test"]);
    // Three requests: a small one, one of two records, a tiny one — the
    // records cut by receives of every length from one byte up.
    let requests = [
        b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec(),
        [
            &b"POST /b HTTP/1.1\r\nContent-Length: 20000\r\n\r\n"[..],
            &[b'b'; 20000],
        ]
        .concat(),
        b"GET /c HTTP/1.1\r\n\r\n".to_vec(),
    ];
    let all = requests.concat();
    for (version, suite) in [
        (&rustls::version::TLS13, TLS13_AES_128_GCM_SHA256),
        (
            &rustls::version::TLS12,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (&rustls::version::TLS13, TLS13_CHACHA20_POLY1305_SHA256),
    ] {
        for loan_max in [None, Some(1000)] {
            for chunk in [
                1,
                2,
                5,
                21,
                22,
                100,
                999,
                4096,
                16406,
                16500,
                30000,
                usize::MAX,
            ] {
                let mut peer = Peer::new(&config, client_with(&roots, version, suite));
                peer.loan_max = loan_max;
                peer.want_bytes();
                peer.run();
                assert!(peer.established);
                peer.chunk = chunk;
                for request in &requests {
                    peer.client.writer().write_all(request).unwrap();
                }
                // The connection takes what comes and asks again, as it
                // does while a request is incomplete.
                for _ in 0..100_000 {
                    if peer.received.len() >= all.len() {
                        break;
                    }
                    if peer.recv_result.take().is_some() {
                        peer.want_bytes();
                    }
                    peer.run();
                }
                assert!(
                    peer.received == all,
                    "{suite:?} loans {loan_max:?} chunks of {chunk}: {} of {} bytes",
                    peer.received.len(),
                    all.len()
                );
                if loan_max.is_none() && chunk >= 100 {
                    assert!(peer.direct_recvs > 0, "chunks of {chunk}");
                }
            }
        }
    }
}

#[test]
fn cleartext_http_gets_the_courtesy_400_in_the_clear() {
    let (_dir, config, _roots) = setup(&["a.test"]);
    let (cin, cout, mut recv, _send) = buffers();
    let mut link = Link::new(&config, cin, cout).unwrap();
    link.recv(recv.lend_spare());
    let Some(LinkIntent::Recv(mut loan)) = link.poll() else {
        panic!("a fresh link receives")
    };
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    loan.as_mut_slice()[..request.len()].copy_from_slice(request);
    link.on_received(loan, request.len() as i32);
    let Some(LinkIntent::Send(buf)) = link.poll() else {
        panic!("the 400 goes out")
    };
    let SendBuf::Buffer(loan) = &buf else {
        panic!()
    };
    assert!(loan.as_slice().starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
    let text = String::from_utf8_lossy(loan.as_slice()).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    assert!(body.contains("sent to HTTPS port"), "{body}");
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", body.len())),
        "the length frames the body: {text:?}"
    );
    let len = loan.len() as i32;
    assert!(link.poll().is_none(), "nothing more while the 400 leaves");
    link.on_sent(buf, len);
    assert!(link.plain_http());
    assert!(link.take_plain_http(), "told once");
    assert!(!link.take_plain_http(), "and only once");
    match link.poll() {
        Some(LinkIntent::Received { buf, result: 0 }) => recv.return_spare(buf, 0),
        other => panic!("the connection reads its end, got {other:?}"),
    }
    assert!(link.poll().is_none());
}

#[test]
fn garbage_gets_an_alert_and_a_reset_and_sends_before_the_handshake_fail() {
    let (_dir, config, _roots) = setup(&["a.test"]);
    let (cin, cout, mut recv, mut send) = buffers();
    let mut link = Link::new(&config, cin, cout).unwrap();
    link.recv(recv.lend_spare());
    // A send before the handshake ended (a timed-out handshake's 408).
    send.append(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        .unwrap();
    link.send(SendBuf::Buffer(send.lend_unsent()));
    match link.poll() {
        Some(LinkIntent::Sent {
            buf: SendBuf::Buffer(loan),
            result,
        }) => {
            assert_eq!(result, -32, "EPIPE");
            send.return_unsent(loan, 0);
        }
        other => panic!("the send fails, got {other:?}"),
    }
    let Some(LinkIntent::Recv(mut loan)) = link.poll() else {
        panic!("a fresh link receives")
    };
    // A handshake record holding a message of an unknown type.
    let junk = [0x16, 0x03, 0x01, 0x00, 0x04, 0xfe, 0x00, 0x00, 0x00];
    loan.as_mut_slice()[..junk.len()].copy_from_slice(&junk);
    link.on_received(loan, junk.len() as i32);
    assert!(link.take_failure().is_some(), "rustls refused it");
    let Some(LinkIntent::Send(buf)) = link.poll() else {
        panic!("the alert goes out")
    };
    let SendBuf::Buffer(loan) = &buf else {
        panic!()
    };
    assert_eq!(loan.as_slice()[0], 0x15, "an alert record");
    let len = loan.len() as i32;
    link.on_sent(buf, len);
    match link.poll() {
        Some(LinkIntent::Received { buf, result }) => {
            assert_eq!(result, -104, "ECONNRESET");
            recv.return_spare(buf, 0);
        }
        other => panic!("the connection reads a reset, got {other:?}"),
    }
}

#[test]
fn a_client_offering_only_h2_is_refused() {
    let (_dir, config, roots) = setup(&["a.test"]);
    let mut cfg = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let client =
        ClientConnection::new(Arc::new(cfg), ServerName::try_from("a.test").unwrap()).unwrap();
    let mut peer = Peer::new(&config, client);
    peer.want_bytes();
    // The client sees the alert: its processing fails.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| peer.run()));
    assert!(result.is_err() || !peer.established);
    assert!(!peer.established);
}

#[test]
fn a_forged_record_gets_bad_record_mac_and_the_connection_a_reset() {
    let (_dir, config, roots) = setup(&["a.test"]);
    let mut peer = Peer::new(&config, client(&roots, "a.test"));
    peer.want_bytes();
    peer.run();
    assert!(peer.established);
    peer.tamper = true;
    peer.client
        .writer()
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    // The client sees the alert: processing it fails.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| peer.run()));
    assert!(result.is_err(), "the client got a fatal alert");
    assert!(
        peer.received.is_empty(),
        "no forged byte reached the connection"
    );
    assert!(peer.link.take_failure().is_some());
    let err = peer.client.process_new_packets().unwrap_err();
    assert!(err.to_string().contains("BadRecordMac"), "{err}");
}

#[test]
fn a_request_behind_the_clients_finished_is_answered() {
    // rustls sends plaintext written before the handshake ends right
    // behind its Finished, in the same flight. On a resumed TLS 1.2
    // session the client's Finished is the handshake's last message and
    // nothing the server sends follows it: the request must be answered
    // from what that one receive brought.
    let (_dir, config, roots) = setup(&["a.test"]);
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    };
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let cfg = Arc::new(cfg);
    let request = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    for round in 0..2 {
        let client =
            ClientConnection::new(Arc::clone(&cfg), ServerName::try_from("a.test").unwrap())
                .unwrap();
        let mut peer = Peer::new(&config, client);
        peer.client.writer().write_all(request).unwrap();
        peer.want_bytes();
        peer.run();
        assert!(peer.established);
        assert_eq!(peer.link.negotiated().resumed, round == 1, "round {round}");
        assert_eq!(peer.received, request, "round {round}");
    }
}

#[test]
fn a_lingering_close_reads_until_the_peers_close_notify() {
    // The connection reads a request (`Connection: close`), answers,
    // shuts its side (close_notify, then FIN) and lingers: its next read
    // must still see the client's close_notify, or it would wait out the
    // linger timeout holding its slot and buffers.
    let (_dir, config, roots) = setup(&["a.test"]);
    let mut peer = Peer::new(&config, client(&roots, "a.test"));
    let request = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    peer.client.writer().write_all(request).unwrap();
    peer.want_bytes();
    peer.run();
    assert_eq!(peer.received, request);
    assert!(
        peer.pending_recv.is_none(),
        "no receive in flight while answering"
    );
    peer.link.shutdown();
    peer.run();
    assert!(peer.shut_down, "close_notify sent, then the FIN");
    let mut rest = [0; 8];
    assert_eq!(peer.client.reader().read(&mut rest).unwrap(), 0);
    peer.recv_result = None;
    peer.want_bytes();
    peer.client.send_close_notify();
    peer.run();
    assert_eq!(peer.recv_result, Some(0), "the lingering read ends");
}

#[test]
fn a_shutdown_after_the_peer_reset_still_completes() {
    // The client resets while a response is on its way: the send fails.
    // The connection then shuts its side and waits for that shutdown
    // before it closes; the close_notify cannot go, but the shutdown must
    // still be asked for (it was not, and the connection, its slot and
    // its descriptor waited for ever).
    let (_dir, config, roots) = setup(&["a.test"]);
    let mut peer = Peer::new(&config, client(&roots, "a.test"));
    let request = b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n";
    peer.client.writer().write_all(request).unwrap();
    peer.want_bytes();
    peer.run();
    assert_eq!(peer.received, request);
    peer.fail_sends = true;
    peer.send_bytes(&[b'x'; 20_000]);
    peer.run();
    assert_eq!(
        peer.sent_result,
        Some(-104),
        "the send fails with the reset"
    );
    assert!(!peer.shut_down);
    peer.link.shutdown();
    peer.run();
    assert!(
        peer.shut_down,
        "the shutdown is asked for on the broken socket"
    );
    assert!(!peer.link.in_flight());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(40))]

    /// Any mix of loan sizes (straight into the connection's buffer or
    /// through the link's) and of receive lengths delivers the client's
    /// stream whole and in order.
    #[test]
    fn any_mix_of_loans_and_cuts_delivers_the_stream(
        writes in proptest::collection::vec(1usize..40_000, 1..5),
        loans in proptest::collection::vec(proptest::option::of(1u32..40_000), 1..6),
        chunks in proptest::collection::vec(1usize..50_000, 1..6),
        suite in 0usize..3,
    ) {
        use rustls::crypto::ring::cipher_suite::*;
        let (version, suite) = [
            (&rustls::version::TLS13, TLS13_AES_128_GCM_SHA256),
            (&rustls::version::TLS12, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
            (&rustls::version::TLS12, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
        ][suite];
        let (_dir, config, roots) = setup(&["a.test"]);
        let mut peer = Peer::new(&config, client_with(&roots, version, suite));
        peer.want_bytes();
        peer.run();
        proptest::prop_assert!(peer.established);
        peer.client.set_buffer_limit(None);
        let mut all = Vec::new();
        for (i, len) in writes.iter().enumerate() {
            let bytes: Vec<u8> = (0..*len).map(|b| (b * 7 + i) as u8).collect();
            peer.client.writer().write_all(&bytes).unwrap();
            all.extend_from_slice(&bytes);
        }
        let mut step = 0;
        for _ in 0..200_000 {
            if peer.received.len() >= all.len() {
                break;
            }
            if peer.recv_result.take().is_some() {
                peer.loan_max = loans[step % loans.len()];
                peer.chunk = chunks[step % chunks.len()];
                step += 1;
                peer.want_bytes();
            }
            peer.run();
        }
        proptest::prop_assert_eq!(peer.received.len(), all.len());
        proptest::prop_assert!(peer.received == all);
    }
}
