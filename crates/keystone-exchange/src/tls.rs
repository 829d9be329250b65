//! The client connection's TLS facts as the exchange ABI carries them:
//! whether the connection is encrypted and, once its handshake finished,
//! the protocol version, the cipher suite and the server name the client
//! asked for (SNI). Plain bytes the worker copies out of its TLS session
//! once per connection and every request on it is bound with (as the peer
//! address is), so `ctx.scheme` and `ctx.tls` are loads, not calls into a
//! TLS library. Names are OpenSSL's, as nginx's `$ssl_protocol` and
//! `$ssl_cipher` show them.
//!
//! # The version field
//! `version` says everything about the connection's state, so there is no
//! flag to keep consistent with it:
//! - [`TLS_VERSION_CLEARTEXT`] (0): no TLS at all;
//! - [`TLS_VERSION_PENDING`] (`0xFFFF`): encrypted, handshake not finished
//!   (no version, cipher or name yet; `0xFFFF` is no TLS version: they are
//!   `0x03xx` on the wire);
//! - anything else: the negotiated version as on the wire
//!   ([`TLS_VERSION_1_2`], [`TLS_VERSION_1_3`]).

/// Bytes of a server name kept: a DNS name is at most 255 octets in wire
/// form (RFC 1035 §2.3.4), 253 characters as text, which is what a client
/// sends in `server_name` and the most rustls hands over. A longer name
/// names no host: it is dropped, not cut (a cut name could match another).
pub const TLS_SNI_MAX: usize = 255;

/// `version` of a cleartext connection.
pub const TLS_VERSION_CLEARTEXT: u16 = 0;
/// `version` of an encrypted connection whose handshake has not finished.
pub const TLS_VERSION_PENDING: u16 = 0xFFFF;
/// TLS 1.2 as on the wire.
pub const TLS_VERSION_1_2: u16 = 0x0303;
/// TLS 1.3 as on the wire.
pub const TLS_VERSION_1_3: u16 = 0x0304;

/// Protocol names by version, as nginx's `$ssl_protocol` shows them.
pub const TLS_PROTOCOL_NAMES: [(u16, &str); 2] =
    [(TLS_VERSION_1_2, "TLSv1.2"), (TLS_VERSION_1_3, "TLSv1.3")];

/// Cipher suite names by IANA id, as OpenSSL (and so nginx's
/// `$ssl_cipher`) names them: the TLS 1.3 suites under their RFC 8446
/// names, the TLS 1.2 ones under OpenSSL's own. These are the suites a
/// rustls server offers; any other id has no name here.
pub const TLS_CIPHER_NAMES: [(u16, &str); 9] = [
    (0x1301, "TLS_AES_128_GCM_SHA256"),
    (0x1302, "TLS_AES_256_GCM_SHA384"),
    (0x1303, "TLS_CHACHA20_POLY1305_SHA256"),
    (0xc02b, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    (0xc02c, "ECDHE-ECDSA-AES256-GCM-SHA384"),
    (0xcca9, "ECDHE-ECDSA-CHACHA20-POLY1305"),
    (0xc02f, "ECDHE-RSA-AES128-GCM-SHA256"),
    (0xc030, "ECDHE-RSA-AES256-GCM-SHA384"),
    (0xcca8, "ECDHE-RSA-CHACHA20-POLY1305"),
];

/// OpenSSL's name of cipher suite `id` (IANA), if it is one we know.
pub fn tls_cipher_name(id: u16) -> Option<&'static str> {
    TLS_CIPHER_NAMES
        .iter()
        .find(|(known, _)| *known == id)
        .map(|(_, name)| *name)
}

/// The protocol name of TLS `version` ("TLSv1.2", "TLSv1.3"); `None` for
/// cleartext, a pending handshake or a version we do not name.
pub fn tls_protocol_name(version: u16) -> Option<&'static str> {
    TLS_PROTOCOL_NAMES
        .iter()
        .find(|(known, _)| *known == version)
        .map(|(_, name)| *name)
}

/// The TLS facts of one client connection (see the module's note on
/// `version`). `#[repr(C)]`: part of [`crate::HttpExchange`]'s ABI, which
/// the Lua prelude mirrors as `ks_tls`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsFacts {
    /// [`TLS_VERSION_CLEARTEXT`], [`TLS_VERSION_PENDING`], or the
    /// negotiated version as on the wire.
    pub version: u16,
    /// The negotiated cipher suite's IANA id; 0 until the handshake ends.
    pub cipher: u16,
    /// Bytes of `sni` used; 0 when the client sent no server name.
    pub sni_len: u16,
    /// The server name the client asked for (`sni_len` bytes).
    pub sni: [u8; TLS_SNI_MAX],
    /// Who encrypts what the connection sends: [`TLS_OFFLOAD_NONE`] (the
    /// engine, in user space: bytes must pass through it, so nothing is
    /// spliced) or [`TLS_OFFLOAD_KERNEL_SENDS`] (the kernel's TLS socket:
    /// files and proxied bodies may splice). Also keeps the layout explicit
    /// (no implicit tail padding).
    pub offload: u8,
}

/// [`TlsFacts::offload`]: records are sealed in user space.
pub const TLS_OFFLOAD_NONE: u8 = 0;
/// [`TlsFacts::offload`]: the kernel seals what the connection sends.
pub const TLS_OFFLOAD_KERNEL_SENDS: u8 = 1;

const _: () = assert!(std::mem::size_of::<TlsFacts>() == 6 + TLS_SNI_MAX + 1);
const _: () = assert!(std::mem::align_of::<TlsFacts>() == 2);
const _: () = assert!(TLS_SNI_MAX <= u16::MAX as usize);

impl TlsFacts {
    /// A connection without TLS.
    pub const CLEARTEXT: TlsFacts = TlsFacts {
        version: TLS_VERSION_CLEARTEXT,
        cipher: 0,
        sni_len: 0,
        sni: [0; TLS_SNI_MAX],
        offload: TLS_OFFLOAD_NONE,
    };

    /// An encrypted connection whose handshake has not finished.
    pub const fn pending() -> TlsFacts {
        TlsFacts {
            version: TLS_VERSION_PENDING,
            ..TlsFacts::CLEARTEXT
        }
    }

    /// The facts of a finished handshake: `version` and `cipher` as on the
    /// wire, the client's server name if it sent one. A name longer than
    /// [`TLS_SNI_MAX`] (or an empty one) is dropped: the facts then say the
    /// client sent none.
    pub fn new(version: u16, cipher: u16, sni: Option<&str>) -> TlsFacts {
        // Programmer errors: a finished handshake has a real version.
        assert_ne!(
            version, TLS_VERSION_CLEARTEXT,
            "a handshake without a version"
        );
        assert_ne!(version, TLS_VERSION_PENDING, "a finished pending handshake");
        let mut facts = TlsFacts {
            version,
            cipher,
            ..TlsFacts::CLEARTEXT
        };
        if let Some(name) = sni.filter(|name| name.len() <= TLS_SNI_MAX) {
            facts.sni[..name.len()].copy_from_slice(name.as_bytes());
            facts.sni_len = name.len() as u16;
        }
        debug_assert!(facts.sni_len as usize <= TLS_SNI_MAX);
        facts
    }

    /// Whether the connection is encrypted (handshake finished or not).
    pub fn is_encrypted(&self) -> bool {
        self.version != TLS_VERSION_CLEARTEXT
    }

    /// The same facts, with the kernel sealing what is sent.
    pub fn with_kernel_sends(mut self) -> TlsFacts {
        debug_assert!(self.is_encrypted() && !self.is_pending());
        self.offload = TLS_OFFLOAD_KERNEL_SENDS;
        self
    }

    /// Whether bytes sent may go around the engine (`splice`): cleartext,
    /// or a kernel TLS socket that seals them itself.
    pub fn allows_splice(&self) -> bool {
        !self.is_encrypted() || self.offload == TLS_OFFLOAD_KERNEL_SENDS
    }

    /// Whether the connection is encrypted and its handshake unfinished.
    pub fn is_pending(&self) -> bool {
        self.version == TLS_VERSION_PENDING
    }

    /// The server name the client asked for, if it sent one.
    pub fn sni(&self) -> Option<&[u8]> {
        let len = usize::from(self.sni_len).min(TLS_SNI_MAX);
        (len > 0).then(|| &self.sni[..len])
    }

    /// "TLSv1.2" or "TLSv1.3"; `None` for cleartext, a pending handshake
    /// or a version without a name.
    pub fn protocol_name(&self) -> Option<&'static str> {
        tls_protocol_name(self.version)
    }

    /// OpenSSL's name of the negotiated cipher suite, if known.
    pub fn cipher_name(&self) -> Option<&'static str> {
        tls_cipher_name(self.cipher)
    }

    /// Back to cleartext, writing only what cleartext readers look at (the
    /// name bytes past `sni_len` are never read): bound with every
    /// request, so a cleartext bind stays a few stores, not a 262-byte copy.
    pub(crate) fn clear(&mut self) {
        self.version = TLS_VERSION_CLEARTEXT;
        self.cipher = 0;
        self.sni_len = 0;
    }
}

/// Equal facts say the same: version, cipher and name (the bytes past
/// `sni_len` are not part of them).
impl PartialEq for TlsFacts {
    fn eq(&self, other: &TlsFacts) -> bool {
        self.version == other.version
            && self.cipher == other.cipher
            && self.sni() == other.sni()
            && self.offload == other.offload
    }
}

impl Eq for TlsFacts {}

impl Default for TlsFacts {
    fn default() -> TlsFacts {
        TlsFacts::CLEARTEXT
    }
}

impl std::fmt::Debug for TlsFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFacts")
            .field("version", &format_args!("{:#06x}", self.version))
            .field("cipher", &format_args!("{:#06x}", self.cipher))
            .field("sni", &self.sni().map(|name| String::from_utf8_lossy(name)))
            .finish()
    }
}
