//! What an upstream connection speaks TLS with: one `rustls::ClientConfig`
//! per pool, built at load from what the pool trusts ([`Trust`]): the
//! system's roots, the CA certificates of one PEM file instead, or nothing
//! at all (`verify = false`: any certificate is taken, the handshake's
//! signatures are still checked, so the session's keys are the key
//! holder's — only who holds them is not known).
//!
//! System roots come from `rustls-native-certs`, read at every load: it
//! honours `SSL_CERT_FILE` / `SSL_CERT_DIR` as OpenSSL does, then probes
//! each distribution's bundle (Debian's `/etc/ssl/certs/ca-certificates.crt`,
//! Red Hat's, SUSE's, Alpine's), so an operator's trust store is the one
//! used, wherever it lives, with no bundle compiled into the binary.
//!
//! The configuration offers ALPN `http/1.1` only, TLS 1.3 and 1.2, no
//! client certificate, no early data, and no session resumption (every
//! upstream connection is a full handshake; pooled keep-alive connections
//! are what saves handshakes). It lets the session's keys be handed over
//! after the handshake, for [`crate::records`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::ALPN_HTTP11;

/// What an upstream pool's certificates are checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// The system's roots (see the module's note).
    System,
    /// Only the CA certificates in this PEM file (`ca = PATH`).
    File(PathBuf),
    /// No certificate check (`verify = false`); handshake signatures are
    /// still verified.
    Off,
}

/// Why a client configuration could not be built. Each names what is at
/// fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientConfigError {
    /// The CA file could not be read, or is not PEM.
    CaUnreadable {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The CA file holds no certificate.
    CaEmpty {
        /// The file.
        path: PathBuf,
    },
    /// A certificate of the CA file cannot be a trust anchor.
    CaRefused {
        /// The file.
        path: PathBuf,
        /// What webpki said.
        why: String,
    },
    /// No system root could be read (no bundle where rustls-native-certs
    /// looks, or every one unreadable).
    NoSystemRoots {
        /// What the probe met.
        why: String,
    },
    /// rustls refused the configuration (not expected with the ring
    /// provider's defaults).
    Config(String),
}

impl fmt::Display for ClientConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientConfigError::CaUnreadable { path, why } => {
                write!(f, "cannot read {}: {why}", path.display())
            }
            ClientConfigError::CaEmpty { path } => {
                write!(f, "{} holds no PEM certificate", path.display())
            }
            ClientConfigError::CaRefused { path, why } => write!(
                f,
                "{} holds a certificate that cannot be a root: {why}",
                path.display()
            ),
            ClientConfigError::NoSystemRoots { why } => write!(
                f,
                "no system root certificates found (set SSL_CERT_FILE, or give `ca`): {why}"
            ),
            ClientConfigError::Config(why) => write!(f, "TLS configuration refused: {why}"),
        }
    }
}

impl std::error::Error for ClientConfigError {}

/// Builds the configuration an upstream pool connects with.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, ClientConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| ClientConfigError::Config(err.to_string()))?;
    let mut config = match trust {
        Trust::System => builder
            .with_root_certificates(system_roots()?)
            .with_no_client_auth(),
        Trust::File(path) => builder
            .with_root_certificates(file_roots(path)?)
            .with_no_client_auth(),
        Trust::Off => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate { algorithms }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    // The record layer after the handshake is ours (crate::records).
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// The roots of a `ca = PATH` file: every certificate in it, each of
/// which must be usable as a trust anchor.
fn file_roots(path: &Path) -> Result<RootCertStore, ClientConfigError> {
    let unreadable = |why: String| ClientConfigError::CaUnreadable {
        path: path.to_path_buf(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| unreadable(pem_why(err)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| unreadable(pem_why(err)))?;
    if certs.is_empty() {
        return Err(ClientConfigError::CaEmpty {
            path: path.to_path_buf(),
        });
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|err| ClientConfigError::CaRefused {
                path: path.to_path_buf(),
                why: err.to_string(),
            })?;
    }
    Ok(roots)
}

/// The system's roots; a bundle's unparsable entries are skipped (as
/// OpenSSL skips them), but at least one must be usable.
fn system_roots() -> Result<RootCertStore, ClientConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = if found.errors.is_empty() {
            "no bundle in the usual places".to_string()
        } else {
            found
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(ClientConfigError::NoSystemRoots { why });
    }
    Ok(roots)
}

fn pem_why(err: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match err {
        Error::Io(err) => err.to_string(),
        Error::NoItemsFound => "no PEM certificate in it".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// `verify = false`: whatever certificate the server shows is taken, but
/// its handshake signature must be one made with that certificate's key
/// (so a recorded handshake cannot be replayed at us).
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_are_read_and_their_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        assert!(client_config(&Trust::File(good)).is_ok());

        let missing = dir.path().join("missing.pem");
        let err = client_config(&Trust::File(missing.clone())).unwrap_err();
        assert!(matches!(&err, ClientConfigError::CaUnreadable { path, .. } if *path == missing));
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(&Trust::File(empty.clone())).unwrap_err();
        assert_eq!(err, ClientConfigError::CaEmpty { path: empty });

        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = client_config(&Trust::File(junk)).unwrap_err();
        assert!(err.to_string().contains("junk.pem"), "{err}");
    }

    #[test]
    fn every_trust_offers_http11_and_hands_the_keys_over() {
        for trust in [Trust::System, Trust::Off] {
            let config = client_config(&trust).unwrap();
            assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
            assert!(config.enable_secret_extraction);
            assert!(!config.enable_early_data);
        }
    }
}
