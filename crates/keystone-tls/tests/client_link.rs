//! The link's client role in isolation: a real rustls server in memory
//! plays the upstream; the test plays the ring (it executes the link's
//! receives and sends against the server) and the upstream connection
//! machine (its plaintext loans). Certificates are made here by rcgen: a
//! test CA and leaves it signs.

use std::io::{Read, Write};
use std::sync::Arc;

use keystone_ringbuf::{split_slab, RingBuffer, SendBuf, SpareLoan};
use keystone_tls::{
    client_config, ClientConfig, Link, LinkIntent, ServerName, Trust, CIPHER_IN_BYTES,
    CIPHER_OUT_BYTES,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// A CA and what it signs, written where a `ca = PATH` would point.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("keystone test CA {}", serial()),
        );
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn trust(&self) -> Trust {
        Trust::File(self.dir.path().join("ca.pem"))
    }

    /// A server configuration whose leaf (signed by this CA) covers `names`.
    fn server(
        &self,
        names: &[&str],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ServerConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let leaf = params.signed_by(&key, &self.ca).unwrap();
        server_config(leaf.der().clone(), &key, versions)
    }
}

/// Tells the test CAs apart by name (webpki finds an issuer by its name).
fn serial() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn server_config(
    leaf: CertificateDer<'static>,
    key: &rcgen::KeyPair,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf], key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The link (client) and a rustls server, wired by the test.
struct Pair {
    link: Link,
    server: ServerConnection,
    recv: RingBuffer,
    send: RingBuffer,
    established: bool,
    received: Vec<u8>,
    recv_result: Option<i32>,
    sent_result: Option<i32>,
    /// A ciphertext receive with nothing to read yet.
    pending_recv: Option<SpareLoan>,
    /// The server's socket closed (its next read is end of stream).
    server_closed: bool,
    /// What the server's processing said, once it failed.
    server_error: Option<rustls::Error>,
    /// Ciphertext the server wrote that no receive has taken yet.
    to_client: Vec<u8>,
}

fn buffers() -> (RingBuffer, RingBuffer, RingBuffer, RingBuffer) {
    let mut ins = split_slab(1, CIPHER_IN_BYTES).unwrap();
    let mut outs = split_slab(1, CIPHER_OUT_BYTES).unwrap();
    let mut conn = split_slab(2, 64 * 1024).unwrap();
    let send = conn.pop().unwrap();
    let recv = conn.pop().unwrap();
    (ins.pop().unwrap(), outs.pop().unwrap(), recv, send)
}

impl Pair {
    fn new(client: &Arc<ClientConfig>, name: &str, server: &Arc<ServerConfig>) -> Pair {
        let name = ServerName::try_from(name.to_string()).unwrap();
        let (cin, cout, recv, send) = buffers();
        Pair {
            link: Link::client(client, name, cin, cout).unwrap(),
            server: ServerConnection::new(Arc::clone(server)).unwrap(),
            recv,
            send,
            established: false,
            received: Vec::new(),
            recv_result: None,
            sent_result: None,
            pending_recv: None,
            server_closed: false,
            server_error: None,
            to_client: Vec::new(),
        }
    }

    /// The upstream machine asks for bytes.
    fn want_bytes(&mut self) {
        let loan = self.recv.lend_spare();
        self.link.recv(loan);
    }

    /// The upstream machine sends `bytes`.
    fn send_bytes(&mut self, bytes: &[u8]) {
        self.send.append(bytes).unwrap();
        let loan = self.send.lend_unsent();
        self.link.send(SendBuf::Buffer(loan));
    }

    /// What the server has for the wire.
    fn server_output(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.server.wants_write() {
            self.server.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Hands a receive what the server wrote (as much as the loan takes;
    /// the rest waits on the "socket"), or its close; gives the loan back
    /// when there is nothing yet.
    fn fill(&mut self, mut loan: SpareLoan) -> Option<SpareLoan> {
        let out = self.server_output();
        self.to_client.extend_from_slice(&out);
        if self.to_client.is_empty() {
            if self.server_closed {
                self.link.on_received(loan, 0);
                return None;
            }
            return Some(loan);
        }
        let n = self.to_client.len().min(loan.len() as usize);
        loan.as_mut_slice()[..n].copy_from_slice(&self.to_client[..n]);
        self.to_client.drain(..n);
        self.link.on_received(loan, n as i32);
        None
    }

    /// Runs the link against the server until neither moves.
    fn run(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(intent) = self.link.poll() {
                moved = true;
                match intent {
                    LinkIntent::Recv(loan) => self.pending_recv = self.fill(loan),
                    LinkIntent::Send(buf) => {
                        let SendBuf::Buffer(loan) = &buf else {
                            panic!("the link sends its buffer")
                        };
                        let wire = loan.as_slice().to_vec();
                        let len = wire.len() as i32;
                        self.link.on_sent(buf, len);
                        if self.server_error.is_none() {
                            let mut slice = &wire[..];
                            while !slice.is_empty() {
                                self.server.read_tls(&mut slice).unwrap();
                                if let Err(err) = self.server.process_new_packets() {
                                    self.server_error = Some(err);
                                    break;
                                }
                            }
                        }
                    }
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
                        let all = self.send.len();
                        self.send.consume(all);
                        self.sent_result = Some(result);
                    }
                    // The machine never shuts the link down here.
                    other => panic!("a client link asked for {other:?}"),
                }
            }
            if let Some(loan) = self.pending_recv.take() {
                self.pending_recv = self.fill(loan);
                moved |= self.pending_recv.is_none();
            }
            if !moved {
                return;
            }
        }
        panic!("the link and the server never settled");
    }

    /// The server's plaintext so far.
    fn server_read(&mut self) -> Vec<u8> {
        let mut plain = Vec::new();
        let mut chunk = [0; 16384];
        while let Ok(n) = self.server.reader().read(&mut chunk) {
            if n == 0 {
                break;
            }
            plain.extend_from_slice(&chunk[..n]);
        }
        plain
    }
}

#[test]
fn both_versions_shake_hands_verify_and_carry_requests_both_ways() {
    let pki = Pki::new();
    let client = client_config(&pki.trust()).unwrap();
    for (version, wire) in [
        (&rustls::version::TLS13, 0x0304),
        (&rustls::version::TLS12, 0x0303),
    ] {
        let server = pki.server(&["backend.test"], &[version]);
        let mut pair = Pair::new(&client, "backend.test", &server);
        pair.run();
        assert!(pair.established, "{wire:#x}: the handshake finished");
        assert!(!pair.link.failed());
        let facts = pair.link.negotiated();
        assert_eq!(facts.version, wire);
        assert_eq!(facts.sni, Some("backend.test"));
        assert!(!facts.resumed);
        assert_eq!(pair.server.server_name(), Some("backend.test"), "SNI sent");
        assert_eq!(pair.server.alpn_protocol(), Some(&b"http/1.1"[..]));

        for round in 0..3 {
            // The probe-like receive is out before the request goes, as
            // the upstream machine's is on a pooled connection.
            pair.want_bytes();
            let request = format!("GET /{round} HTTP/1.1\r\nHost: backend.test\r\n\r\n");
            pair.send_bytes(request.as_bytes());
            pair.run();
            assert_eq!(pair.sent_result, Some(request.len() as i32));
            assert_eq!(pair.server_read(), request.as_bytes(), "round {round}");
            // The answer, larger than a record on the last round; on TLS
            // 1.3 the server's session tickets went first (skipped).
            let body = vec![b'a' + round as u8; if round == 2 { 40_000 } else { 100 }];
            pair.server.writer().write_all(&body).unwrap();
            pair.run();
            while pair.received.len() < body.len() {
                assert!(pair.recv_result.unwrap() > 0);
                pair.want_bytes();
                pair.run();
            }
            assert_eq!(pair.received, body, "{wire:#x} round {round}");
            pair.received.clear();
        }
        assert!(!pair.link.failed(), "tickets were skipped, not refused");
        // The server's close_notify: the machine reads its end.
        pair.server.send_close_notify();
        pair.want_bytes();
        pair.run();
        assert_eq!(pair.recv_result, Some(0));
    }
}

#[test]
fn an_ip_literal_sends_no_sni_and_is_checked_against_the_address() {
    let pki = Pki::new();
    let client = client_config(&pki.trust()).unwrap();
    let server = pki.server(&["127.0.0.1"], BOTH);
    let mut pair = Pair::new(&client, "127.0.0.1", &server);
    pair.run();
    assert!(pair.established);
    assert_eq!(pair.server.server_name(), None, "no SNI for an address");
    assert_eq!(pair.link.negotiated().sni, None);
}

#[test]
fn a_certificate_for_another_name_fails_the_link_with_the_reason() {
    let pki = Pki::new();
    let client = client_config(&pki.trust()).unwrap();
    let server = pki.server(&["other.test"], BOTH);
    let mut pair = Pair::new(&client, "backend.test", &server);
    pair.run();
    assert!(!pair.established);
    assert!(pair.link.failed());
    let why = pair.link.take_failure().expect("a reason");
    assert!(why.contains("certificate not valid for name"), "{why}");
    assert!(
        pair.server_error.is_some(),
        "the server got the alert: {:?}",
        pair.server_error
    );
}

#[test]
fn an_untrusted_ca_fails_the_link_with_the_reason() {
    let pki = Pki::new();
    let other = Pki::new();
    let client = client_config(&other.trust()).unwrap();
    let server = pki.server(&["backend.test"], BOTH);
    let mut pair = Pair::new(&client, "backend.test", &server);
    pair.run();
    assert!(!pair.established);
    assert!(pair.link.failed());
    let why = pair.link.take_failure().expect("a reason");
    assert!(why.contains("UnknownIssuer"), "{why}");

    // The system roots do not know the test CA either.
    let system = client_config(&Trust::System).unwrap();
    let mut pair = Pair::new(&system, "backend.test", &server);
    pair.run();
    assert!(pair.link.failed());
    assert!(pair.link.take_failure().unwrap().contains("UnknownIssuer"));
}

#[test]
fn verify_off_takes_any_certificate_but_still_checks_the_handshake() {
    let client = client_config(&Trust::Off).unwrap();
    // Self-signed, for another name, from no known CA.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["elsewhere.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let server = server_config(cert.der().clone(), &key, BOTH);
    let mut pair = Pair::new(&client, "backend.test", &server);
    pair.run();
    assert!(pair.established, "{:?}", pair.link.take_failure());
    pair.want_bytes();
    pair.send_bytes(b"GET / HTTP/1.1\r\n\r\n");
    pair.run();
    assert_eq!(pair.server_read(), b"GET / HTTP/1.1\r\n\r\n");

    // A certificate whose key did not sign the handshake is refused.
    let shown = rcgen::CertificateParams::new(vec!["backend.test".to_string()])
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let signer = rcgen::KeyPair::generate().unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::try_from(signer.serialize_der()).unwrap();
    let signing_key = provider.key_provider.load_private_key(key).unwrap();
    let certified = rustls::sign::CertifiedKey::new(vec![shown.der().clone()], signing_key);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(BOTH)
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Mismatched(Arc::new(certified))));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut pair = Pair::new(&client, "backend.test", &Arc::new(config));
    pair.run();
    assert!(!pair.established);
    assert!(pair.link.failed());
    let why = pair.link.take_failure().unwrap();
    assert!(why.to_lowercase().contains("signature"), "{why}");
}

/// Shows a certificate with a key that is not its own.
#[derive(Debug)]
struct Mismatched(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Mismatched {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

#[test]
fn a_server_closing_during_the_handshake_fails_the_link() {
    let pki = Pki::new();
    let client = client_config(&pki.trust()).unwrap();
    let server = pki.server(&["backend.test"], BOTH);
    let mut pair = Pair::new(&client, "backend.test", &server);
    // The ClientHello leaves, then the server's socket closes unanswered.
    let Some(LinkIntent::Send(buf)) = pair.link.poll() else {
        panic!("the ClientHello goes first")
    };
    let len = buf.ptr_len().1 as i32;
    pair.link.on_sent(buf, len);
    pair.server_closed = true;
    let Some(LinkIntent::Recv(loan)) = pair.link.poll() else {
        panic!("then the link waits for the server")
    };
    pair.link.on_received(loan, 0);
    assert!(pair.link.failed());
    let why = pair.link.take_failure().unwrap();
    assert!(
        why.contains("closed the connection during the handshake"),
        "{why}"
    );
    assert!(pair.link.poll().is_none(), "nothing more is asked for");
}

#[test]
fn abandoning_gives_the_loans_back_and_asks_for_nothing_more() {
    let pki = Pki::new();
    let client = client_config(&pki.trust()).unwrap();
    let server = pki.server(&["backend.test"], BOTH);
    // A loan too small for a whole record waits in the link while the
    // link's buffer receives: it comes back at once. A loan the ciphertext
    // is received into is in the ring: it comes back with the ring's
    // (cancelled) receive.
    for small in [true, false] {
        let mut pair = Pair::new(&client, "backend.test", &server);
        pair.run();
        assert!(pair.established);
        if small {
            let loan = pair.recv.lend_spare_up_to(1000);
            pair.link.recv(loan);
        } else {
            pair.want_bytes();
        }
        pair.run();
        let in_ring = pair
            .pending_recv
            .take()
            .expect("a receive waits on the server");
        pair.link.abandon();
        if small {
            match pair.link.poll() {
                Some(LinkIntent::Received { buf, result }) => {
                    assert_eq!(result, -125, "ECANCELED");
                    pair.recv.return_spare(buf, 0);
                }
                other => panic!("the receive comes back cancelled, got {other:?}"),
            }
            assert!(pair.link.poll().is_none());
            assert!(pair.link.in_flight());
            pair.link.on_received(in_ring, -125);
        } else {
            assert!(pair.link.poll().is_none(), "the loan is in the ring");
            assert!(pair.link.in_flight());
            pair.link.on_received(in_ring, -125);
            match pair.link.poll() {
                Some(LinkIntent::Received { buf, result }) => {
                    assert_eq!(result, -125, "ECANCELED");
                    pair.recv.return_spare(buf, 0);
                }
                other => panic!("the receive comes back cancelled, got {other:?}"),
            }
        }
        assert!(!pair.link.in_flight());
        assert!(pair.link.poll().is_none());
        let (cin, cout) = pair.link.into_buffers();
        assert!(cin.is_empty() && cout.is_empty());
    }
}
