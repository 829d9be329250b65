//! keystone-tls: TLS as a byte transform between the reactor and the
//! connection, with no I/O of its own.
//!
//! Job: load the certificate/key pairs a TLS listener serves and choose
//! between them by the client's server name ([`config`]); build what an
//! upstream pool connects with: its trusted roots or none ([`client`]);
//! run one TLS connection, either role, as a sans-I/O machine ([`Link`])
//! that takes the connection's plaintext receives and sends and asks for
//! ciphertext receives and sends in fixed buffers, and, where the kernel
//! has TLS, hands a session's records to it after the handshake (the
//! socket options it asks for: [`LinkIntent::SetSockOpt`]).
//!
//! Owns: the rustls `ServerConfig` (shared read-only by every worker, its
//! ticket keys with it), each upstream pool's `ClientConfig`, each
//! connection's rustls session and its two ciphertext buffers while the
//! connection lives.
//!
//! Never depends on: keystone-parser, keystone-router, keystone-exchange,
//! keystone-lua, keystone-response, keystone-files, keystone-conn,
//! keystone-reactor, keystone-ebpf, keystone-ops, keystone-app,
//! keystone-upstream, keystone-spec, keystone-server (it knows bytes, not HTTP, and
//! executes nothing: the worker submits what it asks for).

pub mod client;
pub mod config;
mod link;
pub mod records;

pub use client::{client_config, ClientConfigError, Trust};
pub use config::{load, CertPair, LoadError, ALPN_HTTP11};
pub use link::{
    Link, LinkIntent, Negotiated, CIPHER_IN_BYTES, CIPHER_OUT_BYTES, PLAIN_HTTP_RESPONSE,
    PLAIN_STEP_BYTES,
};
pub use rustls::pki_types::ServerName;
pub use rustls::{ClientConfig, ServerConfig};
