//! What a TLS listener serves with: certificate/key pairs read from PEM
//! files, the server name (SNI) choosing between them, and the one
//! `rustls::ServerConfig` every worker shares read-only (its ticket keys
//! among it, so a ticket made on one worker resumes on any other).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// The one protocol offered by ALPN: Keystone speaks HTTP/1.1 only, so a
/// client that offers only `h2` is refused (`no_application_protocol`)
/// rather than told a protocol it would then not get.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// TLS 1.2 sessions resumed by session id, per process (TLS 1.3 and
/// ticket-capable TLS 1.2 clients use tickets, which need no server
/// state). nginx's `ssl_session_cache shared:SSL:1m` holds about 4,000; a
/// cache entry here is a few hundred bytes.
pub const SESSION_CACHE_ENTRIES: usize = 4096;

/// One `--tls-cert PATH --tls-key PATH` pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPair {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
}

/// Why the pairs could not be loaded. Each names the file at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// No pair was given.
    NoPairs,
    /// A file could not be read or holds no PEM object of its kind.
    Unreadable {
        /// `--tls-cert` or `--tls-key`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The key is not one rustls can sign with.
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        why: String,
    },
    /// The key does not belong to the certificate.
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the configuration (not expected with the ring
    /// provider's defaults).
    Config(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::NoPairs => write!(
                f,
                "--tls-listen needs at least one --tls-cert/--tls-key pair"
            ),
            LoadError::Unreadable { flag, path, why } => {
                write!(f, "cannot read {flag} {}: {why}", path.display())
            }
            LoadError::BadKey { path, why } => {
                write!(f, "unusable --tls-key {}: {why}", path.display())
            }
            LoadError::Mismatch { cert, key } => write!(
                f,
                "--tls-key {} does not match --tls-cert {}",
                key.display(),
                cert.display()
            ),
            LoadError::Config(why) => write!(f, "TLS configuration refused: {why}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// The certificates a listener serves, chosen per handshake by the
/// client's server name; the first is the default (no SNI, or no match),
/// as nginx's `default_server`.
#[derive(Debug)]
struct ByServerName {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ByServerName {
    fn choose(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name.and_then(|name| ServerName::try_from(name).ok()) {
            if let Some(key) = self.keys.iter().find(|key| covers(key, &name)) {
                return Some(Arc::clone(key));
            }
        }
        self.keys.first().cloned()
    }
}

impl ResolvesServerCert for ByServerName {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(client_hello.server_name())
    }
}

/// Whether the key's leaf certificate is valid for `name` (its subject
/// alternative names, wildcards as RFC 6125 has them).
fn covers(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
    let Some(leaf) = key.cert.first() else {
        return false;
    };
    webpki::EndEntityCert::try_from(leaf)
        .and_then(|cert| cert.verify_is_valid_for_subject_name(name))
        .is_ok()
}

/// Reads every pair and builds the server configuration: TLS 1.3 and 1.2,
/// ALPN `http/1.1`, tickets (one key set, made here, rotated by building
/// again) and a session-id cache, no 0-RTT, no client certificates.
pub fn load(pairs: &[CertPair]) -> Result<Arc<ServerConfig>, LoadError> {
    if pairs.is_empty() {
        return Err(LoadError::NoPairs);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let keys = pairs
        .iter()
        .map(|pair| load_pair(&provider, pair).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| LoadError::Config(err.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ByServerName { keys }));
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|err| LoadError::Config(err.to_string()))?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    config.max_early_data_size = 0;
    // The record layer after the handshake is ours (crate::records).
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

fn load_pair(provider: &CryptoProvider, pair: &CertPair) -> Result<CertifiedKey, LoadError> {
    let unreadable = |flag, path: &Path, why: String| LoadError::Unreadable {
        flag,
        path: path.to_path_buf(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(&pair.cert)
        .map_err(|err| unreadable("--tls-cert", &pair.cert, pem_why(err)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| unreadable("--tls-cert", &pair.cert, pem_why(err)))?;
    if certs.is_empty() {
        return Err(unreadable(
            "--tls-cert",
            &pair.cert,
            "no PEM certificate in it".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&pair.key)
        .map_err(|err| unreadable("--tls-key", &pair.key, pem_why(err)))?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|err| LoadError::BadKey {
            path: pair.key.clone(),
            why: err.to_string(),
        })?;
    let certified = CertifiedKey::new(certs, signer);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(LoadError::Mismatch {
                cert: pair.cert.clone(),
                key: pair.key.clone(),
            })
        }
        // The provider could not compare (not a mismatch it saw): a wrong
        // key still fails every handshake, so refuse it here too.
        Err(err) => Err(LoadError::BadKey {
            path: pair.key.clone(),
            why: err.to_string(),
        }),
    }
}

fn pem_why(err: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match err {
        Error::Io(err) => err.to_string(),
        Error::NoItemsFound => "no PEM object of the expected kind in it".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str, names: &[&str]) -> CertPair {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        CertPair {
            cert: cert_path,
            key: key_path,
        }
    }

    #[test]
    fn the_server_name_chooses_and_the_first_pair_is_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a", &["a.test"]);
        let b = pair(dir.path(), "b", &["b.test", "*.wild.test"]);
        let provider = rustls::crypto::ring::default_provider();
        let keys = [&a, &b]
            .iter()
            .map(|p| Arc::new(load_pair(&provider, p).unwrap()))
            .collect::<Vec<_>>();
        let certs = ByServerName { keys: keys.clone() };
        let chosen = |name| certs.choose(name).map(|key| key.cert[0].clone());
        assert_eq!(chosen(Some("b.test")), Some(keys[1].cert[0].clone()));
        assert_eq!(chosen(Some("x.wild.test")), Some(keys[1].cert[0].clone()));
        assert_eq!(chosen(Some("a.test")), Some(keys[0].cert[0].clone()));
        assert_eq!(chosen(Some("other.test")), Some(keys[0].cert[0].clone()));
        assert_eq!(chosen(None), Some(keys[0].cert[0].clone()));
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a", &["a.test"]);
        let b = pair(dir.path(), "b", &["b.test"]);
        assert!(load(std::slice::from_ref(&a)).is_ok());
        assert_eq!(load(&[]).unwrap_err(), LoadError::NoPairs);

        let missing = CertPair {
            cert: dir.path().join("nope.crt"),
            key: a.key.clone(),
        };
        let err = load(&[missing]).unwrap_err().to_string();
        assert!(
            err.contains("--tls-cert") && err.contains("nope.crt"),
            "{err}"
        );

        let swapped = CertPair {
            cert: a.cert.clone(),
            key: a.cert.clone(),
        };
        let err = load(&[swapped]).unwrap_err().to_string();
        assert!(err.contains("--tls-key") && err.contains("a.crt"), "{err}");

        let mismatched = CertPair {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let err = load(&[mismatched]).unwrap_err();
        assert_eq!(
            err,
            LoadError::Mismatch {
                cert: a.cert.clone(),
                key: b.key.clone()
            }
        );
        assert!(err.to_string().contains("b.key"));
    }
}
