//! One TLS connection as a sans-I/O machine between the connection and
//! the ring: the connection's receives and sends (plaintext loans) go in,
//! ciphertext receives and sends come out, and what the connection waits
//! for comes back as its loans with a result, as the ring would hand them
//! back on a cleartext connection.
//!
//! Both roles: [`Link::new`] is a client connection accepted on a TLS
//! listener (the server side: it may meet cleartext HTTP and answers it
//! the courtesy 400), [`Link::client`] an upstream connection the worker
//! opened (the client side: its ClientHello is queued at once, the
//! server's certificate is checked by the configuration's verifier, and
//! the TLS 1.3 NewSessionTicket messages a server sends after the
//! handshake are skipped — upstream sessions are not resumed).
//!
//! Events in: [`Link::recv`], [`Link::send`], [`Link::cancel_recv`],
//! [`Link::cancel_output`], [`Link::shutdown`] (from the connection);
//! [`Link::on_received`], [`Link::on_sent`] (from the ring). Intents out:
//! [`Link::poll`].
//!
//! rustls runs the handshake, fed one whole record at a time so it never
//! holds a byte past the handshake's last; then it hands over the traffic
//! keys and [`RecordLayer`] seals and opens records: after the handshake
//! nothing is allocated per record.
//!
//! Copies: a send's plaintext is sealed into the ciphertext buffer (the
//! encryption writes the records there: the connection's bytes have no
//! room for headers and tags between them). A receive goes straight into
//! the connection's own loan when it can hold a whole record
//! ([`DIRECT_RECV_MIN_BYTES`]): the records are opened there, each one's
//! plaintext decrypted to just after the previous one's, so the request
//! bytes the connection parses are the decryption's output, copied by
//! nothing. Only a record cut by the end of a receive is carried (its
//! ciphertext, at most one record) in the link's buffer to the front of
//! the next loan; a smaller loan gets its bytes the buffered way (records
//! received into the link's buffer, opened there, copied out).
//!
//! Bounded: ciphertext is received only while the connection waits for
//! plaintext (or the handshake needs it) and no opened record is waiting,
//! into a fixed buffer or the connection's loan; a send encrypts at most
//! [`PLAIN_STEP_BYTES`] of the connection's bytes at a time, into a fixed
//! buffer, and is reported done only when that ciphertext has left.
//!
//! Not handled after the handshake: a TLS 1.3 KeyUpdate from the client
//! (its next keys are rustls' to derive, and rustls' buffered connection
//! gives no way to after the hand-over) and TLS 1.2 renegotiation: either
//! ends the connection with an `unexpected_message` alert. Clients rekey
//! on their own only near AES-GCM's limit; this layer ends a connection
//! there instead ([`crate::records::RECORDS_PER_KEY_MAX`] records).

use keystone_ringbuf::{RingBuffer, SendBuf, Span, SpareLoan};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use crate::records::{
    record_len, KernelKeys, RecordError, RecordLayer, CONTENT_ALERT, CONTENT_APPLICATION_DATA,
    CONTENT_HANDSHAKE, CRYPTO_INFO_MAX, HEADER_BYTES, MAX_OVERHEAD, MAX_PLAINTEXT,
    MAX_RECORD_BYTES, SOL_TCP, SOL_TLS, TCP_ULP, TLS_RX, TLS_TX, ULP_TLS,
};

/// Ciphertext receive buffer per TLS connection: one full TLS record
/// (16 KiB of plaintext plus its header, tag and padding allowance) fits,
/// so a record never needs two receives because of the buffer.
pub const CIPHER_IN_BYTES: u32 = 18 * 1024;

/// A connection's receive loan at least this long takes ciphertext
/// directly (the longest record a peer may send fits it whole, so a record
/// never waits for room); a shorter one is filled from the link's buffer.
pub const DIRECT_RECV_MIN_BYTES: u32 = MAX_RECORD_BYTES as u32;

/// Plaintext encrypted per step of a send: two full records, so a large
/// body leaves in 32 KiB sends (the connection's own file and body pieces
/// are of that order) while the ciphertext buffer stays small.
pub const PLAIN_STEP_BYTES: usize = 32 * 1024;

/// Ciphertext send buffer per TLS connection: one step of records (each
/// record adds at most 29 bytes for TLS 1.2's AES-GCM, 22 for TLS 1.3)
/// plus room for a handshake flight's certificate chain arriving with it.
pub const CIPHER_OUT_BYTES: u32 = 40 * 1024;

/// What a cleartext HTTP request sent to a TLS port gets, in the clear
/// (nginx's courtesy: it says which port to use, then closes).
pub const PLAIN_HTTP_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Server: keystone\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 50\r\n\
Connection: close\r\n\
\r\n\
400 The plain HTTP request was sent to HTTPS port\n";

/// [`PLAIN_HTTP_RESPONSE`]'s head alone: the answer to a `HEAD` (a
/// response to HEAD has no body, RFC 9110 §9.3.2).
pub const PLAIN_HTTP_RESPONSE_HEAD: &[u8] = PLAIN_HTTP_RESPONSE
    .split_at(head_len(PLAIN_HTTP_RESPONSE))
    .0;

/// Where a response's head ends (after its blank line).
const fn head_len(response: &[u8]) -> usize {
    let mut at = 0;
    while at + 4 <= response.len() {
        if matches!(response.split_at(at).1, [b'\r', b'\n', b'\r', b'\n', ..]) {
            return at + 4;
        }
        at += 1;
    }
    response.len()
}

/// The first record of a TLS connection is a handshake record.
const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;

/// A handshake message's header: type (1 byte), length (3 bytes).
const HANDSHAKE_HEADER_BYTES: usize = 4;
/// TLS 1.3's NewSessionTicket (RFC 8446 §4.6.1), the one handshake
/// message a client meets after the handshake and may ignore.
const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;

/// Which end of the TLS connection the link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Accepted on a TLS listener.
    Server,
    /// Opened to an upstream.
    Client,
}

/// Where the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Nothing received yet.
    Fresh,
    /// The handshake is under way.
    Handshaking,
    /// Application data flows.
    Open,
    /// The client spoke cleartext HTTP: the courtesy 400 goes out, then
    /// the connection reads end of stream.
    PlainHttp,
    /// TLS failed (a bad record, a refused handshake): the alert rustls
    /// queued goes out, then the connection reads a reset.
    Failed,
}

/// Where the orderly close is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    No,
    /// `close_notify` is queued; the socket is shut once it has left.
    Wanted,
    /// The shutdown was asked for.
    Asked,
}

/// The facts of a finished handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated<'a> {
    /// 0x0303 (TLS 1.2) or 0x0304 (TLS 1.3).
    pub version: u16,
    /// The IANA cipher suite id.
    pub cipher: u16,
    /// The server name the client asked for.
    pub sni: Option<&'a str>,
    /// Whether the handshake resumed an earlier session.
    pub resumed: bool,
}

/// What the link asks for.
#[derive(Debug)]
pub enum LinkIntent {
    /// Receive ciphertext into the loan (→ [`Link::on_received`]).
    Recv(SpareLoan),
    /// Send ciphertext (→ [`Link::on_sent`]).
    Send(SendBuf),
    /// Shut the socket's write side; its completion is the connection's.
    Shutdown,
    /// The handshake finished: read [`Link::negotiated`] and tell the
    /// connection before it gets its first bytes.
    Established,
    /// Set a socket option (→ [`Link::on_sockopt`]): the kernel TLS
    /// hand-over, one option at a time (`TCP_ULP "tls"`, then `TLS_TX`
    /// and `TLS_RX` with the session's keys and sequence numbers).
    SetSockOpt {
        /// `SOL_TCP` or `SOL_TLS`.
        level: u32,
        /// `TCP_ULP`, `TLS_TX` or `TLS_RX`.
        name: u32,
        /// The option's bytes (`value[..len]`).
        value: [u8; CRYPTO_INFO_MAX],
        /// How many of them.
        len: usize,
    },
    /// From now on the kernel seals what is sent: tell the connection
    /// (its files and proxied bodies may splice again).
    KernelSends,
    /// The connection's receive is done: `result` plaintext bytes at the
    /// loan's start (0: the peer closed; negative: `-errno`).
    Received {
        /// The connection's loan.
        buf: SpareLoan,
        /// Bytes or `-errno`.
        result: i32,
    },
    /// The connection's send is done: its first `result` bytes went out.
    Sent {
        /// The connection's send.
        buf: SendBuf,
        /// Bytes or `-errno`.
        result: i32,
    },
}

/// Who protects the records: rustls during the handshake, this crate's
/// record layer after it.
enum Session {
    Handshake(Box<Connection>),
    Records(Box<RecordLayer>),
    /// After a failure.
    Gone,
}

/// What the handshake settled, kept for the connection.
#[derive(Debug, Default)]
struct Facts {
    version: u16,
    cipher: u16,
    sni: Option<String>,
    resumed: bool,
}

/// An opened application-data record at the front of `cipher_in`: its
/// plaintext is `[start, start + len)` from the buffer's head, `copied` of
/// it handed over so far; `record_len` bytes are consumed when all is.
#[derive(Clone, Copy, Debug)]
struct Pending {
    start: usize,
    len: usize,
    copied: usize,
    record_len: usize,
}

/// One step of the kernel TLS hand-over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Not asked for, or refused (the records stay ours that way).
    No,
    /// To be installed as soon as nothing in flight crosses it.
    Wanted,
    /// The kernel does it.
    Done,
}

/// Which option is being set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Option_ {
    Ulp,
    Tx,
    Rx,
}

/// Kernel TLS: offered by the worker when the kernel has it; after the
/// handshake the ULP goes on the socket, then each direction moves to
/// the kernel at the first moment no byte of ours is in its way — TX once
/// every record we sealed has left, RX once every record received is
/// opened and handed over — so the sequence numbers the kernel starts
/// from are exactly ours. A refused option keeps that direction here.
#[derive(Debug)]
struct Offload {
    offered: bool,
    keys: Option<Box<(KernelKeys, KernelKeys)>>,
    ulp: Step,
    tx: Step,
    rx: Step,
    in_flight: Option<Option_>,
    told: bool,
    /// The connection's own loan is in the ring's receive or send (the
    /// kernel opens and seals: the link only passes them through).
    recv_through: bool,
    send_through: bool,
}

/// Alerts this layer sends: level, description (RFC 8446 §6).
const ALERT_CLOSE_NOTIFY: [u8; 2] = [1, 0];
const ALERT_UNEXPECTED_MESSAGE: [u8; 2] = [2, 10];
const ALERT_BAD_RECORD_MAC: [u8; 2] = [2, 20];
const ALERT_RECORD_OVERFLOW: [u8; 2] = [2, 22];

/// One TLS connection's state and its two ciphertext buffers.
pub struct Link {
    role: Role,
    session: Session,
    facts: Facts,
    pending: Option<Pending>,
    cipher_in: RingBuffer,
    cipher_out: RingBuffer,
    stage: Stage,
    closing: Closing,
    net_recv: bool,
    net_send: bool,
    /// The connection's receive, waiting for plaintext.
    plain_recv: Option<SpareLoan>,
    /// The connection's receive taken for ciphertext (see the module's
    /// "Copies"), the first `.1` bytes of it the front of a record still
    /// arriving; not in the ring.
    direct: Option<(SpareLoan, u32)>,
    /// That loan is in the ring's receive, past its first `filled` bytes.
    direct_in_ring: Option<u32>,
    /// The connection cancelled its receive while the loan was in the ring.
    direct_cancelled: bool,
    /// The connection's send, and how many of its bytes were encrypted
    /// (`None`: none yet).
    plain_send: Option<(SendBuf, Option<u32>)>,
    recv_done: Option<(SpareLoan, i32)>,
    sent_done: Option<(SendBuf, i32)>,
    /// The handshake finished and the connection was not told yet.
    tell_established: bool,
    /// The peer's end of stream (TCP FIN or `close_notify`).
    peer_closed: bool,
    /// A ciphertext operation failed with this `-errno`.
    net_error: Option<i32>,
    /// Why TLS failed, not yet taken (for the counters).
    failure: Option<String>,
    /// The client spoke cleartext HTTP and nobody was told yet.
    plain_http_untold: bool,
    /// The connection closed its socket: no ciphertext operation is asked
    /// for again (loans still come back).
    abandoned: bool,
    /// Bytes of a NewSessionTicket message still to skip: its body went
    /// on past the record that began it (client role).
    ticket_left: usize,
    offload: Offload,
}

impl Link {
    /// A link for a connection just accepted on a TLS listener, over two
    /// buffers of at least [`CIPHER_IN_BYTES`] and [`CIPHER_OUT_BYTES`].
    /// `config` must come from [`crate::load`] (it lets the keys be handed
    /// over after the handshake).
    pub fn new(
        config: &std::sync::Arc<ServerConfig>,
        cipher_in: RingBuffer,
        cipher_out: RingBuffer,
    ) -> Result<Link, rustls::Error> {
        debug_assert!(cipher_in.is_empty() && cipher_out.is_empty());
        debug_assert!(cipher_in.capacity() >= CIPHER_IN_BYTES);
        debug_assert!(cipher_out.capacity() >= CIPHER_OUT_BYTES);
        let session = ServerConnection::new(std::sync::Arc::clone(config))?;
        Ok(Link::with_session(
            Role::Server,
            Connection::Server(session),
            cipher_in,
            cipher_out,
        ))
    }

    /// A link for an upstream connection that just connected, over two
    /// buffers of at least [`CIPHER_IN_BYTES`] and [`CIPHER_OUT_BYTES`]:
    /// its ClientHello (for `name`: the SNI sent, unless it is an IP
    /// address, and the name the certificate must cover) is queued at
    /// once, so the first [`Link::poll`] sends it. `config` must come
    /// from [`crate::client_config`] (it lets the keys be handed over).
    pub fn client(
        config: &std::sync::Arc<ClientConfig>,
        name: ServerName<'static>,
        cipher_in: RingBuffer,
        cipher_out: RingBuffer,
    ) -> Result<Link, rustls::Error> {
        debug_assert!(cipher_in.is_empty() && cipher_out.is_empty());
        debug_assert!(cipher_in.capacity() >= CIPHER_IN_BYTES);
        debug_assert!(cipher_out.capacity() >= CIPHER_OUT_BYTES);
        debug_assert!(config.enable_secret_extraction);
        let sni = match &name {
            ServerName::DnsName(dns) => Some(dns.as_ref().to_owned()),
            _ => None,
        };
        let session = ClientConnection::new(std::sync::Arc::clone(config), name)?;
        let mut link = Link::with_session(
            Role::Client,
            Connection::Client(session),
            cipher_in,
            cipher_out,
        );
        // No cleartext-HTTP detection on this side: the client speaks first.
        link.stage = Stage::Handshaking;
        link.facts.sni = sni;
        link.progress();
        debug_assert!(!link.cipher_out.is_empty(), "the ClientHello is queued");
        Ok(link)
    }

    fn with_session(
        role: Role,
        session: Connection,
        cipher_in: RingBuffer,
        cipher_out: RingBuffer,
    ) -> Link {
        Link {
            role,
            session: Session::Handshake(Box::new(session)),
            facts: Facts::default(),
            pending: None,
            cipher_in,
            cipher_out,
            stage: Stage::Fresh,
            closing: Closing::No,
            net_recv: false,
            net_send: false,
            plain_recv: None,
            direct: None,
            direct_in_ring: None,
            direct_cancelled: false,
            plain_send: None,
            recv_done: None,
            sent_done: None,
            tell_established: false,
            peer_closed: false,
            net_error: None,
            failure: None,
            plain_http_untold: false,
            ticket_left: 0,
            abandoned: false,
            offload: Offload {
                offered: false,
                keys: None,
                ulp: Step::No,
                tx: Step::No,
                rx: Step::No,
                in_flight: None,
                told: false,
                recv_through: false,
                send_through: false,
            },
        }
    }

    /// The kernel has TLS (`TCP_ULP "tls"`): hand the records to it after
    /// the handshake (server role; before the handshake ends).
    pub fn offer_kernel(&mut self) {
        debug_assert_eq!(self.role, Role::Server);
        self.offload.offered = true;
    }

    /// Whether the kernel seals what is sent (and, `rx`, opens what is
    /// received).
    pub fn kernel(&self) -> (bool, bool) {
        (self.offload.tx == Step::Done, self.offload.rx == Step::Done)
    }

    /// A [`LinkIntent::SetSockOpt`] completed.
    pub fn on_sockopt(&mut self, result: i32) {
        let ok = result >= 0;
        let offload = &mut self.offload;
        match offload.in_flight.take() {
            Some(Option_::Ulp) if ok => offload.ulp = Step::Done,
            // No kernel TLS for this socket: both directions stay here.
            Some(Option_::Ulp) => {
                offload.ulp = Step::No;
                offload.tx = Step::No;
                offload.rx = Step::No;
            }
            Some(Option_::Tx) => offload.tx = if ok { Step::Done } else { Step::No },
            Some(Option_::Rx) => offload.rx = if ok { Step::Done } else { Step::No },
            None => debug_assert!(false, "no socket option was being set"),
        }
        if offload.ulp != Step::Wanted && offload.tx != Step::Wanted && offload.rx != Step::Wanted {
            // Done with the keys: they do not stay in memory.
            offload.keys = None;
        }
        self.progress();
    }

    /// The buffers back (reset), once nothing of the link is in flight.
    pub fn into_buffers(self) -> (RingBuffer, RingBuffer) {
        debug_assert!(!self.net_recv && !self.net_send);
        let (mut cipher_in, mut cipher_out) = (self.cipher_in, self.cipher_out);
        cipher_in.reset_for_reuse();
        cipher_out.reset_for_reuse();
        (cipher_in, cipher_out)
    }

    /// Whether nothing was received yet: the next receive brings the
    /// ClientHello, whose answer costs a key exchange and a signature.
    pub fn fresh(&self) -> bool {
        self.stage == Stage::Fresh
    }

    /// Whether the handshake is still under way (or not begun).
    pub fn handshaking(&self) -> bool {
        matches!(self.stage, Stage::Fresh | Stage::Handshaking)
    }

    /// Whether the client spoke cleartext HTTP to this TLS port.
    pub fn plain_http(&self) -> bool {
        self.stage == Stage::PlainHttp
    }

    /// Whether the client spoke cleartext HTTP to this TLS port, told once
    /// (for the counter: the connection may read the end of stream that
    /// follows the courtesy 400 more than once).
    pub fn take_plain_http(&mut self) -> bool {
        std::mem::take(&mut self.plain_http_untold)
    }

    /// Why TLS failed, once (for the log and the counters).
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    /// Whether TLS failed (a refused handshake — on the client side an
    /// unverified certificate among its reasons — or a bad record).
    pub fn failed(&self) -> bool {
        self.stage == Stage::Failed
    }

    /// Whether a ciphertext receive or send is in flight.
    pub fn in_flight(&self) -> bool {
        self.net_recv || self.net_send
    }

    /// The handshake's outcome (after [`LinkIntent::Established`]).
    pub fn negotiated(&self) -> Negotiated<'_> {
        Negotiated {
            version: self.facts.version,
            cipher: self.facts.cipher,
            sni: self.facts.sni.as_deref(),
            resumed: self.facts.resumed,
        }
    }

    /// Gives back the pages of an idle connection's buffers (nothing of
    /// them in flight, nothing in them).
    pub fn release_idle(&mut self) {
        if !self.net_recv && self.cipher_in.is_empty() {
            self.cipher_in.release_idle();
        }
        if !self.net_send && self.cipher_out.is_empty() {
            self.cipher_out.release_idle();
        }
    }

    // --- from the connection -------------------------------------------

    /// The connection wants bytes in `buf`.
    pub fn recv(&mut self, buf: SpareLoan) {
        debug_assert!(self.plain_recv.is_none() && self.recv_done.is_none());
        self.plain_recv = Some(buf);
        self.progress();
    }

    /// The connection sends `buf`.
    pub fn send(&mut self, buf: SendBuf) {
        debug_assert!(self.plain_send.is_none() && self.sent_done.is_none());
        self.plain_send = Some((buf, None));
        self.progress();
    }

    /// The connection cancels its receive: it comes back at once, cancelled
    /// (a ciphertext receive in flight stays; it fills the buffer). `true`
    /// when the kernel opens records and the connection's loan is in the
    /// ring's receive: the driver cancels that one, and the loan comes
    /// back with its completion.
    pub fn cancel_recv(&mut self) -> bool {
        if let Some(buf) = self.plain_recv.take() {
            self.recv_done = Some((buf, -ECANCELED));
        }
        if let Some((buf, filled)) = self.direct.take() {
            self.give_back_direct(buf, filled, -ECANCELED);
        }
        if self.direct_in_ring.is_some() {
            self.direct_cancelled = true;
            return true;
        }
        self.offload.recv_through
    }

    /// The connection cancels its send: it comes back at once, cancelled;
    /// ciphertext already made stays queued (the connection aborts next).
    pub fn cancel_output(&mut self) {
        if let Some((buf, _)) = self.plain_send.take() {
            self.sent_done = Some((buf, -ECANCELED));
        }
    }

    /// The connection shuts its write side: `close_notify` first (on an
    /// established session), then the socket's FIN.
    pub fn shutdown(&mut self) {
        if self.closing != Closing::No {
            return;
        }
        // With the kernel sealing, a close_notify would need sendmsg with a
        // record-type control message: the FIN alone ends the stream.
        if self.stage == Stage::Open && self.offload.tx != Step::Done {
            self.seal_alert(ALERT_CLOSE_NOTIFY);
        }
        self.closing = Closing::Wanted;
        self.progress();
    }

    /// The connection closes its socket: its receive and send come back
    /// cancelled, and nothing more is received or sent.
    pub fn abandon(&mut self) {
        let _ = self.cancel_recv();
        self.cancel_output();
        self.abandoned = true;
    }

    // --- from the ring ---------------------------------------------------

    /// A ciphertext receive completed.
    pub fn on_received(&mut self, mut buf: SpareLoan, result: i32) {
        self.net_recv = false;
        if let Some(filled) = self.direct_in_ring.take() {
            let skipped = buf.rewind();
            debug_assert_eq!(skipped, filled);
            let cancelled = std::mem::take(&mut self.direct_cancelled);
            match result {
                r if r > 0 => self.open_direct(buf, filled + r as u32, cancelled),
                0 => {
                    // A record cut by the end of the stream is dropped.
                    self.peer_closed = true;
                    self.recv_done = Some((buf, 0));
                }
                r => {
                    if r != -ECANCELED {
                        self.net_error = Some(r);
                    }
                    self.give_back_direct(buf, filled, r);
                }
            }
            self.progress();
            return;
        }
        if std::mem::take(&mut self.offload.recv_through) {
            // The kernel opened it: plaintext, or -EIO for a record that is
            // not application data (the peer's alert, close_notify among
            // them; a KeyUpdate too), which ends the stream; -EBADMSG for
            // one that did not authenticate.
            let result = match result {
                r if r == -EIO => 0,
                r if r == -EBADMSG => -ECONNRESET,
                r => r,
            };
            if result == 0 {
                self.peer_closed = true;
            }
            self.recv_done = Some((buf, result));
            self.progress();
            return;
        }
        self.cipher_in.return_spare(buf, result.max(0) as u32);
        match result {
            0 => self.peer_closed = true,
            r if r < 0 && r != -ECANCELED => self.net_error = Some(r),
            _ => {}
        }
        self.progress();
    }

    /// A ciphertext send completed.
    pub fn on_sent(&mut self, buf: SendBuf, result: i32) {
        self.net_send = false;
        if std::mem::take(&mut self.offload.send_through) {
            self.sent_done = Some((buf, result));
            self.progress();
            return;
        }
        match buf {
            SendBuf::Buffer(loan) => self.cipher_out.return_unsent(loan, result.max(0) as u32),
            SendBuf::Pinned(_) => unreachable!("the link sends only its own buffer"),
        }
        if result < 0 {
            self.net_error = Some(result);
        }
        self.progress();
    }

    /// What to do next.
    pub fn poll(&mut self) -> Option<LinkIntent> {
        if std::mem::take(&mut self.tell_established) {
            return Some(LinkIntent::Established);
        }
        // What arrived with the handshake's last record (a request behind
        // the client's Finished) was held back for the Established above.
        self.answer_recv();
        self.answer_send();
        if let Some((buf, result)) = self.recv_done.take() {
            return Some(LinkIntent::Received { buf, result });
        }
        if let Some((buf, result)) = self.sent_done.take() {
            return Some(LinkIntent::Sent { buf, result });
        }
        if self.net_error.is_some() && !self.abandoned && self.closing == Closing::Wanted {
            // The connection waits for its shutdown to complete before it
            // closes: on a broken socket the close_notify cannot go, but
            // the shutdown still does (it fails, and the connection
            // aborts). Without it the connection would wait for ever.
            self.closing = Closing::Asked;
            return Some(LinkIntent::Shutdown);
        }
        if self.net_error.is_some() || self.abandoned {
            return None;
        }
        if let Some(intent) = self.offload_step() {
            return Some(intent);
        }
        if !self.net_send && self.offload.tx == Step::Done && self.cipher_out.is_empty() {
            if let Some((buf, None)) = self.plain_send.take() {
                self.net_send = true;
                self.offload.send_through = true;
                return Some(LinkIntent::Send(buf));
            }
        }
        if !self.net_recv && self.offload.rx == Step::Done && !self.peer_closed {
            if let Some(buf) = self.plain_recv.take() {
                self.net_recv = true;
                self.offload.recv_through = true;
                return Some(LinkIntent::Recv(buf));
            }
        }
        if !self.net_send && !self.cipher_out.is_empty() {
            self.net_send = true;
            return Some(LinkIntent::Send(SendBuf::Buffer(
                self.cipher_out.lend_unsent(),
            )));
        }
        if self.closing == Closing::Wanted && self.drained() {
            self.closing = Closing::Asked;
            return Some(LinkIntent::Shutdown);
        }
        if !self.net_recv && !self.peer_closed {
            if let Some((mut buf, filled)) = self.direct.take() {
                buf.advance(filled);
                self.net_recv = true;
                self.direct_in_ring = Some(filled);
                return Some(LinkIntent::Recv(buf));
            }
        }
        if !self.net_recv && self.wants_ciphertext() {
            if self.cipher_in.spare() == 0 && self.cipher_in.head() > 0 {
                self.cipher_in.compact();
            }
            if self.cipher_in.spare() > 0 {
                self.net_recv = true;
                return Some(LinkIntent::Recv(self.cipher_in.lend_spare()));
            }
        }
        None
    }

    // --- the kernel hand-over -------------------------------------------

    /// The next socket option of the hand-over, when nothing in flight
    /// crosses it; or the news that the kernel now seals.
    fn offload_step(&mut self) -> Option<LinkIntent> {
        let offload = &self.offload;
        if offload.in_flight.is_some() || self.stage != Stage::Open {
            return None;
        }
        let Session::Records(layer) = &self.session else {
            return None;
        };
        let option = |level, name, bytes: &[u8]| {
            let mut value = [0; CRYPTO_INFO_MAX];
            value[..bytes.len()].copy_from_slice(bytes);
            LinkIntent::SetSockOpt {
                level,
                name,
                value,
                len: bytes.len(),
            }
        };
        if offload.ulp == Step::Wanted {
            self.offload.in_flight = Some(Option_::Ulp);
            return Some(option(SOL_TCP, TCP_ULP, ULP_TLS));
        }
        if offload.ulp != Step::Done {
            return None;
        }
        if offload.tx == Step::Done && !offload.told {
            self.offload.told = true;
            return Some(LinkIntent::KernelSends);
        }
        let keys = offload.keys.as_ref()?;
        // TX: every record we sealed has left, and none is half made.
        let sealing = matches!(self.plain_send, Some((_, Some(_))));
        if offload.tx == Step::Wanted && !self.net_send && self.cipher_out.is_empty() && !sealing {
            let (info, len) = keys.0.crypto_info(layer.tx_seq());
            self.offload.in_flight = Some(Option_::Tx);
            return Some(option(SOL_TLS, TLS_TX, &info[..len]));
        }
        // RX: every record received is opened and handed over.
        if offload.rx == Step::Wanted
            && !self.net_recv
            && self.cipher_in.is_empty()
            && self.pending.is_none()
        {
            let (info, len) = keys.1.crypto_info(layer.rx_seq());
            self.offload.in_flight = Some(Option_::Rx);
            return Some(option(SOL_TLS, TLS_RX, &info[..len]));
        }
        None
    }

    // --- the transform -------------------------------------------------

    /// Nothing queued to leave and nothing leaving.
    fn drained(&self) -> bool {
        let rustls_queued = match &self.session {
            Session::Handshake(session) => session.wants_write(),
            _ => false,
        };
        !self.net_send && self.cipher_out.is_empty() && !rustls_queued
    }

    fn wants_ciphertext(&self) -> bool {
        if self.peer_closed
            || self.offload.rx == Step::Done
            || self.offload.in_flight == Some(Option_::Rx)
        {
            return false;
        }
        match self.stage {
            Stage::Fresh | Stage::Handshaking => self.closing != Closing::Asked,
            // After our close_notify and FIN too: a lingering connection
            // reads until the peer's close_notify or FIN ends it.
            // Backpressure: only while the connection waits and no whole
            // record is here for it.
            Stage::Open => {
                self.plain_recv.is_some() && self.pending.is_none() && !self.whole_record_buffered()
            }
            Stage::PlainHttp | Stage::Failed => false,
        }
    }

    fn whole_record_buffered(&self) -> bool {
        let bytes = self.cipher_in.unconsumed();
        matches!(record_len(bytes), Ok(Some(len)) if bytes.len() >= HEADER_BYTES + len)
            || record_len(bytes).is_err()
    }

    fn progress(&mut self) {
        if self.abandoned {
            return;
        }
        if self.handshaking() {
            self.handshake();
            if self.role == Role::Client && self.handshaking() {
                self.client_handshake_broken();
            }
        } else if matches!(self.stage, Stage::PlainHttp | Stage::Failed) {
            let all = self.cipher_in.len();
            self.cipher_in.consume(all);
        }
        self.encrypt();
        self.answer_recv();
        self.answer_send();
    }

    /// Feeds rustls whole records until the handshake ends (or fails),
    /// then takes the keys over.
    fn handshake(&mut self) {
        if self.role == Role::Server && self.stage == Stage::Fresh && !self.cipher_in.is_empty() {
            let first = self.cipher_in.unconsumed()[0];
            if first != CONTENT_TYPE_HANDSHAKE && first.is_ascii_uppercase() {
                self.stage = Stage::PlainHttp;
                self.plain_http_untold = true;
                let answer = if self.cipher_in.unconsumed().starts_with(b"HEAD ") {
                    PLAIN_HTTP_RESPONSE_HEAD
                } else {
                    PLAIN_HTTP_RESPONSE
                };
                let all = self.cipher_in.len();
                self.cipher_in.consume(all);
                self.cipher_out
                    .append(answer)
                    .expect("a fresh send buffer holds the 400");
                return;
            }
            self.stage = Stage::Handshaking;
        }
        let Session::Handshake(session) = &mut self.session else {
            return;
        };
        let failure = loop {
            let bytes = self.cipher_in.unconsumed();
            let whole = match record_len(bytes) {
                Ok(Some(len)) if bytes.len() >= HEADER_BYTES + len => HEADER_BYTES + len,
                Ok(_) => break None,
                Err(_) => break Some("a record longer than TLS allows".to_string()),
            };
            let mut record = &bytes[..whole];
            if session.read_tls(&mut record).is_err() || !record.is_empty() {
                break Some("rustls did not take a whole record".to_string());
            }
            self.cipher_in.consume(whole as u32);
            if let Err(err) = session.process_new_packets() {
                break Some(err.to_string());
            }
            if !session.is_handshaking() {
                break None;
            }
        };
        // On failure too: rustls queued its alert, which goes out first.
        Self::flush_rustls(session, &mut self.cipher_out, self.net_send);
        if let Some(why) = failure {
            self.fail(why, None);
        } else if !session.is_handshaking() && !session.wants_write() {
            self.take_keys();
        }
    }

    /// A client's handshake that cannot finish: the server closed or the
    /// socket failed before it did (a server that refuses says so with an
    /// alert, which rustls reports as its failure instead).
    fn client_handshake_broken(&mut self) {
        let why = match self.net_error {
            Some(errno) => format!(
                "the connection failed during the handshake (errno {})",
                -errno
            ),
            None if self.peer_closed => {
                "the server closed the connection during the handshake".into()
            }
            None => return,
        };
        self.fail(why, None);
    }

    /// Moves what rustls has to send into the ciphertext buffer.
    fn flush_rustls(session: &mut Connection, cipher_out: &mut RingBuffer, sending: bool) {
        while session.wants_write() {
            if !sending && cipher_out.spare() == 0 && cipher_out.head() > 0 {
                cipher_out.compact();
            }
            let spare = cipher_out.spare_mut();
            if spare.is_empty() {
                return;
            }
            let mut cursor = std::io::Cursor::new(spare);
            match session.write_tls(&mut cursor) {
                Ok(0) | Err(_) => return,
                Ok(n) => cipher_out.commit(n as u32),
            }
        }
    }

    /// The handshake is done and its last flight queued: the facts are
    /// noted and the traffic keys move to the record layer.
    fn take_keys(&mut self) {
        let Session::Handshake(session) = std::mem::replace(&mut self.session, Session::Gone)
        else {
            return;
        };
        self.facts = Facts {
            version: session.protocol_version().map_or(0, u16::from),
            cipher: session
                .negotiated_cipher_suite()
                .map_or(0, |suite| u16::from(suite.suite())),
            sni: match &*session {
                Connection::Server(server) => server.server_name().map(str::to_owned),
                // What was asked for (kept from `Link::client`).
                Connection::Client(_) => self.facts.sni.take(),
            },
            resumed: matches!(
                session.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed)
            ),
        };
        let version = self.facts.version;
        let offload = &mut self.offload;
        let layer = session
            .dangerous_extract_secrets()
            .map_err(|err| err.to_string())
            .and_then(|secrets| {
                if offload.offered {
                    let tx = KernelKeys::new(version, &secrets.tx.1);
                    let rx = KernelKeys::new(version, &secrets.rx.1);
                    if let (Some(tx), Some(rx)) = (tx, rx) {
                        offload.keys = Some(Box::new((tx, rx)));
                        offload.ulp = Step::Wanted;
                        offload.tx = Step::Wanted;
                        offload.rx = Step::Wanted;
                    }
                }
                RecordLayer::new(version, secrets).map_err(|err| format!("{err:?}"))
            });
        match layer {
            Ok(layer) => {
                self.session = Session::Records(Box::new(layer));
                self.stage = Stage::Open;
                self.tell_established = true;
            }
            Err(why) => self.fail(format!("taking the session keys: {why}"), None),
        }
    }

    /// TLS failed: the alert (if one is owed and can be sealed) goes out,
    /// then the connection reads a reset.
    fn fail(&mut self, why: String, alert: Option<[u8; 2]>) {
        if let Some(alert) = alert {
            self.seal_alert(alert);
        }
        self.stage = Stage::Failed;
        self.session = Session::Gone;
        self.pending = None;
        self.failure = Some(why);
        let all = self.cipher_in.len();
        self.cipher_in.consume(all);
    }

    /// Seals a two-byte alert into the ciphertext buffer (dropped when it
    /// does not fit: the close that follows says enough).
    fn seal_alert(&mut self, alert: [u8; 2]) {
        let Session::Records(layer) = &mut self.session else {
            return;
        };
        // Sealed by us after the kernel took TX, it would be sealed twice.
        if self.offload.tx != Step::No {
            return;
        }
        if !self.net_send && self.cipher_out.spare() < MAX_OVERHEAD as u32 + 2 {
            self.cipher_out.compact();
        }
        let spare = self.cipher_out.spare_mut();
        if spare.len() < layer.sealed_len(alert.len()) {
            return;
        }
        if let Ok(n) = layer.seal(CONTENT_ALERT, &alert, spare) {
            self.cipher_out.commit(n as u32);
        }
    }

    /// Encrypts the next step of the connection's send.
    fn encrypt(&mut self) {
        // Once TX is on its way to the kernel, sends wait for it (and then
        // pass through): nothing more is sealed here.
        if self.offload.tx != Step::No {
            return;
        }
        let Some((buf, taken @ None)) = &mut self.plain_send else {
            return;
        };
        let Session::Records(layer) = &mut self.session else {
            return;
        };
        if self.stage != Stage::Open || self.closing != Closing::No {
            return;
        }
        let plain = match buf {
            SendBuf::Buffer(loan) => loan.as_slice(),
            SendBuf::Pinned(bytes) => bytes.as_slice(),
        };
        let plain = &plain[..plain.len().min(PLAIN_STEP_BYTES)];
        if !self.net_send && self.cipher_out.is_empty() {
            self.cipher_out.compact();
        }
        let mut sealed = 0;
        let mut exhausted = false;
        while sealed < plain.len() {
            let piece = &plain[sealed..plain.len().min(sealed + MAX_PLAINTEXT)];
            let spare = self.cipher_out.spare_mut();
            if spare.len() < layer.sealed_len(piece.len()) {
                break;
            }
            match layer.seal(CONTENT_APPLICATION_DATA, piece, spare) {
                Ok(n) => self.cipher_out.commit(n as u32),
                Err(_) => {
                    exhausted = true;
                    break;
                }
            }
            sealed += piece.len();
        }
        // No room at all (an alert still leaving): the next progress tries
        // again.
        if sealed > 0 {
            *taken = Some(sealed as u32);
        } else if exhausted {
            // The key's budget is spent: the send fails, the connection
            // closes.
            let (buf, _) = self.plain_send.take().expect("checked");
            self.sent_done = Some((buf, -EPIPE));
        }
    }

    /// Opens the next record in `cipher_in` for the connection: application
    /// data becomes `pending`; a `close_notify` ends the stream; anything
    /// else ends the connection.
    fn open_next(&mut self) {
        while self.pending.is_none() {
            let Session::Records(layer) = &mut self.session else {
                return;
            };
            let head = self.cipher_in.head();
            let len = self.cipher_in.len();
            let bytes = self.cipher_in.get_mut(Span::new(head, len));
            let opened = match layer.open(bytes) {
                Ok(Some(opened)) => opened,
                Ok(None) => return,
                Err(err) => {
                    let (why, alert) = refusal(err);
                    return self.fail(why, Some(alert));
                }
            };
            match opened.content_type {
                CONTENT_APPLICATION_DATA if opened.len == 0 => {
                    self.cipher_in.consume(opened.record_len as u32);
                }
                CONTENT_APPLICATION_DATA => {
                    self.pending = Some(Pending {
                        start: opened.start,
                        len: opened.len,
                        copied: 0,
                        record_len: opened.record_len,
                    });
                }
                content_type => {
                    let content =
                        &self.cipher_in.unconsumed()[opened.start..opened.start + opened.len];
                    let control =
                        control_record(self.role, &mut self.ticket_left, content_type, content);
                    self.cipher_in.consume(opened.record_len as u32);
                    match control {
                        Control::Skip => {}
                        Control::Closed => {
                            self.peer_closed = true;
                            return;
                        }
                        Control::Refused(why, alert) => return self.fail(why.into(), alert),
                    }
                }
            }
        }
    }

    /// Answers the connection's receive when there is something to say.
    fn answer_recv(&mut self) {
        if self.recv_done.is_some() || self.tell_established {
            return;
        }
        if self.offload.rx == Step::Done && self.pending.is_none() {
            // The ring's receive answers (poll passes the loan through);
            // only an end already seen answers here.
            if self.peer_closed {
                if let Some(buf) = self.plain_recv.take() {
                    self.recv_done = Some((buf, 0));
                }
            }
            return;
        }
        if self.direct_fits() {
            let mut buf = self.plain_recv.take().expect("checked");
            // What the link's buffer holds (a record's front, or records
            // that came with the handshake's last) moves to the loan's front.
            let held = self.cipher_in.len();
            if held > 0 {
                buf.as_mut_slice()[..held as usize].copy_from_slice(self.cipher_in.unconsumed());
                self.cipher_in.consume(held);
            }
            self.open_direct(buf, held, false);
            if self.recv_done.is_some() || self.plain_recv.is_none() {
                return;
            }
        }
        if self.stage == Stage::Open {
            self.open_next();
        }
        let Some(mut buf) = self.plain_recv.take() else {
            return;
        };
        let result = match self.stage {
            Stage::Open => match &mut self.pending {
                Some(pending) => {
                    let out = buf.as_mut_slice();
                    let n = out.len().min(pending.len - pending.copied);
                    let from = pending.start + pending.copied;
                    out[..n].copy_from_slice(&self.cipher_in.unconsumed()[from..from + n]);
                    pending.copied += n;
                    if pending.copied == pending.len {
                        let record = pending.record_len as u32;
                        self.pending = None;
                        self.cipher_in.consume(record);
                    }
                    Some(n as i32)
                }
                None if self.net_error.is_some() => self.net_error,
                None if self.peer_closed => Some(0),
                None => None,
            },
            // The courtesy 400 or the alert goes out first.
            Stage::PlainHttp if self.drained() || self.net_error.is_some() => Some(0),
            Stage::Failed if self.drained() || self.net_error.is_some() => Some(-ECONNRESET),
            Stage::Fresh | Stage::Handshaking => {
                if self.net_error.is_some() {
                    self.net_error
                } else if self.peer_closed {
                    Some(0)
                } else {
                    None
                }
            }
            Stage::PlainHttp | Stage::Failed => None,
        };
        match result {
            Some(result) => self.recv_done = Some((buf, result)),
            None => self.plain_recv = Some(buf),
        }
    }

    /// Whether the connection's waiting receive takes ciphertext directly.
    fn direct_fits(&self) -> bool {
        let Some(buf) = &self.plain_recv else {
            return false;
        };
        self.stage == Stage::Open
            && self.offload.rx == Step::No
            && self.offload.in_flight != Some(Option_::Rx)
            && self.pending.is_none()
            && !self.net_recv
            && !self.peer_closed
            && self.net_error.is_none()
            && buf.len() >= DIRECT_RECV_MIN_BYTES
            && buf.len() >= self.cipher_in.len()
    }

    /// Opens every whole record in the first `filled` bytes of the
    /// connection's loan, the plaintext gathered at its front; the loan
    /// goes back with it, or waits for the rest of its first record.
    fn open_direct(&mut self, mut buf: SpareLoan, filled: u32, cancelled: bool) {
        let filled = filled as usize;
        let bytes = buf.as_mut_slice();
        let (mut plain, mut at) = (0, 0);
        let mut failure = None;
        while let Session::Records(layer) = &mut self.session {
            let opened = match layer.open_to(&mut bytes[..filled], plain, at) {
                Ok(Some(opened)) => opened,
                Ok(None) => break,
                Err(err) => {
                    let (why, alert) = refusal(err);
                    failure = Some((why, Some(alert)));
                    break;
                }
            };
            at += opened.record_len;
            let content = &bytes[opened.start..opened.start + opened.len];
            match opened.content_type {
                CONTENT_APPLICATION_DATA => plain += opened.len,
                content_type => {
                    match control_record(self.role, &mut self.ticket_left, content_type, content) {
                        Control::Skip => {}
                        Control::Closed => {
                            self.peer_closed = true;
                            at = filled;
                            break;
                        }
                        Control::Refused(why, alert) => {
                            failure = Some((why.to_string(), alert));
                            break;
                        }
                    }
                }
            }
        }
        if let Some((why, alert)) = failure {
            self.fail(why, alert);
        }
        if self.stage == Stage::Failed {
            // The connection reads the reset once the alert has left.
            buf.rewind();
            self.plain_recv = Some(buf);
            return;
        }
        let rest = filled - at;
        if plain > 0 || self.peer_closed {
            // The front of the next record waits in the link's buffer.
            if rest > 0 && !self.carry(&bytes[at..filled]) {
                return self.overflow_direct(buf);
            }
            self.recv_done = Some((buf, plain as i32));
            return;
        }
        if at > 0 {
            // Only control records (a ticket, a warning): the record still
            // arriving moves to the front.
            bytes.copy_within(at..filled, 0);
        }
        if cancelled {
            return self.give_back_direct(buf, rest as u32, -ECANCELED);
        }
        if rest as u32 >= buf.len() {
            // Cannot be (the loan holds the longest record), but a loan
            // that cannot take more must not be received into.
            return self.overflow_direct(buf);
        }
        self.direct = Some((buf, rest as u32));
    }

    /// Keeps ciphertext in the link's buffer (empty here: its bytes moved
    /// to the loan); false when it does not fit.
    fn carry(&mut self, bytes: &[u8]) -> bool {
        debug_assert!(self.cipher_in.is_empty());
        self.cipher_in.compact();
        self.cipher_in.append(bytes).is_ok()
    }

    /// The loan back to the connection with `result`; its first `filled`
    /// bytes (the front of a record) stay with the link.
    fn give_back_direct(&mut self, mut buf: SpareLoan, filled: u32, result: i32) {
        buf.rewind();
        if filled > 0 && !self.carry(&buf.as_mut_slice()[..filled as usize]) {
            return self.overflow_direct(buf);
        }
        self.recv_done = Some((buf, result));
    }

    fn overflow_direct(&mut self, mut buf: SpareLoan) {
        buf.rewind();
        let (why, alert) = refusal(RecordError::Overflow);
        self.fail(why, Some(alert));
        self.plain_recv = Some(buf);
    }

    /// Answers the connection's send once its ciphertext has left.
    fn answer_send(&mut self) {
        if self.sent_done.is_some() {
            return;
        }
        let result = match &self.plain_send {
            None => return,
            Some(_) if self.net_error.is_some() => self.net_error.expect("checked"),
            // Before the handshake ends there is nothing to encrypt with:
            // a send then (a 408 for a handshake that timed out) fails.
            Some((_, None)) if self.stage != Stage::Open => -EPIPE,
            Some((_, Some(n))) if self.drained() => *n as i32,
            Some(_) => return,
        };
        let (buf, _) = self.plain_send.take().expect("checked");
        self.sent_done = Some((buf, result));
    }
}

/// Why a record the record layer refused ends the connection, and the
/// alert that says so.
fn refusal(err: RecordError) -> (String, [u8; 2]) {
    match err {
        RecordError::Overflow => ("record overflow".into(), ALERT_RECORD_OVERFLOW),
        err => (format!("record refused: {err:?}"), ALERT_BAD_RECORD_MAC),
    }
}

/// What a record other than application data means after the handshake.
enum Control {
    /// Nothing for the connection (a warning alert, a session ticket).
    Skip,
    /// The peer's `close_notify`: the stream ends.
    Closed,
    /// The connection ends: why, and the alert owed (none after the
    /// peer's own fatal alert).
    Refused(&'static str, Option<[u8; 2]>),
}

/// Reads one opened control record: alerts (close_notify ends the stream,
/// a fatal one the connection, a warning is ignored), the session tickets
/// a server sends a client (skipped), anything else — a KeyUpdate or
/// renegotiation — refused.
fn control_record(
    role: Role,
    ticket_left: &mut usize,
    content_type: u8,
    content: &[u8],
) -> Control {
    match content_type {
        CONTENT_ALERT if content == ALERT_CLOSE_NOTIFY => Control::Closed,
        CONTENT_ALERT if content.first() == Some(&2) => {
            Control::Refused("the peer sent a fatal alert", None)
        }
        CONTENT_ALERT => Control::Skip,
        CONTENT_HANDSHAKE if role == Role::Client => match skip_tickets(content, *ticket_left) {
            Ok(left) => {
                *ticket_left = left;
                Control::Skip
            }
            Err(why) => Control::Refused(why, Some(ALERT_UNEXPECTED_MESSAGE)),
        },
        _ => Control::Refused(
            "a handshake message after the handshake (KeyUpdate or renegotiation)",
            Some(ALERT_UNEXPECTED_MESSAGE),
        ),
    }
}

/// Walks the handshake messages of one record a server sent after the
/// handshake, `left` bytes of them the rest of a NewSessionTicket begun in
/// an earlier record: tickets (TLS 1.3 servers send one or more, and this
/// client resumes no session) are skipped; anything else — a KeyUpdate,
/// whose keys only rustls could derive, or a TLS 1.2 HelloRequest — ends
/// the connection. Returns the bytes of a ticket still to come.
fn skip_tickets(messages: &[u8], left: usize) -> Result<usize, &'static str> {
    let mut at = left.min(messages.len());
    let mut left = left - at;
    while at < messages.len() {
        let rest = &messages[at..];
        if rest.len() < HANDSHAKE_HEADER_BYTES {
            return Err("a handshake message header split across records");
        }
        if rest[0] != HANDSHAKE_NEW_SESSION_TICKET {
            return Err("a handshake message after the handshake (KeyUpdate or renegotiation)");
        }
        let len = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]) as usize;
        let whole = HANDSHAKE_HEADER_BYTES + len;
        if whole > rest.len() {
            left = whole - rest.len();
            at = messages.len();
        } else {
            at += whole;
        }
    }
    Ok(left)
}

// The errno values the connection machine expects (Linux's; spelled here
// so this crate needs no libc).
const ECANCELED: i32 = 125;
const EIO: i32 = 5;
const EBADMSG: i32 = 74;
const ECONNRESET: i32 = 104;
const EPIPE: i32 = 32;

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(body: usize) -> Vec<u8> {
        let mut message = vec![
            HANDSHAKE_NEW_SESSION_TICKET,
            0,
            (body >> 8) as u8,
            body as u8,
        ];
        message.resize(HANDSHAKE_HEADER_BYTES + body, 7);
        message
    }

    #[test]
    fn tickets_are_skipped_whole_or_across_records_and_nothing_else_is() {
        let two = [ticket(10), ticket(300)].concat();
        assert_eq!(skip_tickets(&two, 0), Ok(0));
        // A ticket whose body goes on in the next record.
        let long = ticket(100);
        assert_eq!(skip_tickets(&long[..40], 0), Ok(64));
        assert_eq!(skip_tickets(&long[40..90], 64), Ok(14));
        let rest_and_next = [&long[90..], &ticket(5)[..]].concat();
        assert_eq!(skip_tickets(&rest_and_next, 14), Ok(0));
        // A KeyUpdate (24), a HelloRequest (0), a header cut in two.
        assert!(skip_tickets(&[24, 0, 0, 1, 0], 0).is_err());
        assert!(skip_tickets(&[0, 0, 0, 0], 0).is_err());
        assert!(skip_tickets(&[HANDSHAKE_NEW_SESSION_TICKET, 0], 0).is_err());
        assert!(skip_tickets(&[ticket(3), vec![24, 0, 0, 0]].concat(), 0).is_err());
    }
}
