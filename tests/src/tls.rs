//! TLS test support: certificates made with the `openssl` command (a test
//! CA and leaves signed by it, EC P-256 or RSA 2048, with DNS names in
//! subjectAltName), a server started with a TLS listener on a port the test
//! chose, and three TLS clients: `curl --cacert`, `openssl s_client` (whose
//! report says what was negotiated) and `python3`'s `ssl` module.
//!
//! Like the rest of this crate it is black-box: it knows the server only by
//! its flags (`--tls-listen`, `--tls-cert`, `--tls-key`) and its bytes.
//! Every tool run is bounded by [`COMMAND_TIMEOUT`] and fails the test,
//! naming the Debian package, when the tool is missing.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::{
    curl, find, free_port, parse_head, wait_timeout, Response, Server, COMMAND_TIMEOUT, IO_TIMEOUT,
    STARTUP_TIMEOUT,
};

/// Days a test certificate is valid: long enough for any test run, short
/// enough that a leaked one is useless.
const CERTIFICATE_DAYS: &str = "2";

/// Which key a certificate is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256 (prime256v1), PKCS#8 PEM.
    EcdsaP256,
    /// RSA, 2048-bit modulus, PKCS#8 PEM.
    Rsa2048,
}

impl KeyKind {
    /// Bits `openssl s_client` reports as "Server public key is N bit".
    pub fn public_key_bits(self) -> u32 {
        match self {
            KeyKind::EcdsaP256 => 256,
            KeyKind::Rsa2048 => 2048,
        }
    }
}

/// A certificate and its private key, both PEM files.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPair {
    /// The certificate's PEM block, whitespace-normalised (to compare with
    /// what a client was sent).
    pub fn cert_pem(&self) -> String {
        let text = fs::read_to_string(&self.cert).expect("reading a test certificate");
        first_pem_certificate(&text).expect("a test certificate file holds a certificate")
    }

    /// Copies both files over `live` through a temporary name and a rename,
    /// so a reader never sees half a file.
    pub fn install_as(&self, live: &CertPair) {
        replace_file(&self.cert, &live.cert);
        replace_file(&self.key, &live.key);
    }
}

/// Copies `from` over `to` atomically (temporary file, then rename).
pub fn replace_file(from: &Path, to: &Path) {
    let temporary = to.with_extension("tmp");
    fs::copy(from, &temporary).expect("copying a test certificate file");
    fs::rename(&temporary, to).expect("renaming a test certificate file into place");
}

/// A throwaway certificate authority in a temporary folder; every leaf it
/// issues lands in the same folder.
pub struct Authority {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    serial_next: AtomicU32,
}

impl Authority {
    /// A self-signed EC P-256 CA named "Keystone Test CA".
    pub fn new() -> Authority {
        assert!(
            crate::require_tool("openssl", "Debian package openssl"),
            "TLS tests cannot run without openssl"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("ca.crt");
        let key = dir.path().join("ca.key");
        generate_key(&key, KeyKind::EcdsaP256);
        let config = write_config(dir.path(), "ca", &[]);
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            path_str(&key),
            "-subj",
            "/CN=Keystone Test CA",
            "-days",
            CERTIFICATE_DAYS,
            "-config",
            path_str(&config),
            "-extensions",
            "ca_ext",
            "-out",
            path_str(&cert),
        ]);
        Authority {
            dir,
            cert,
            key,
            serial_next: AtomicU32::new(0x1000),
        }
    }

    /// The CA certificate, for `curl --cacert` and `s_client -CAfile`.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A leaf `STEM.crt` + `STEM.key` for `names` (the first is also the
    /// subject's CN), with a serial number no other leaf of this CA has.
    pub fn issue(&self, stem: &str, kind: KeyKind, names: &[&str]) -> CertPair {
        assert!(!names.is_empty(), "a leaf needs at least one DNS name");
        let pair = CertPair {
            cert: self.dir().join(format!("{stem}.crt")),
            key: self.dir().join(format!("{stem}.key")),
        };
        generate_key(&pair.key, kind);
        let config = write_config(self.dir(), stem, names);
        let request = self.dir().join(format!("{stem}.csr"));
        openssl(&[
            "req",
            "-new",
            "-key",
            path_str(&pair.key),
            "-subj",
            &format!("/CN={}", names[0]),
            "-config",
            path_str(&config),
            "-out",
            path_str(&request),
        ]);
        let serial = self.serial_next.fetch_add(1, Ordering::Relaxed);
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&request),
            "-CA",
            path_str(&self.cert),
            "-CAkey",
            path_str(&self.key),
            "-set_serial",
            &format!("0x{serial:X}"),
            "-days",
            CERTIFICATE_DAYS,
            "-extfile",
            path_str(&config),
            "-extensions",
            "leaf_ext",
            "-out",
            path_str(&pair.cert),
        ]);
        pair
    }
}

impl Default for Authority {
    fn default() -> Authority {
        Authority::new()
    }
}

/// An openssl config with the CA's and one leaf's extensions; `req` needs
/// a `distinguished_name` section even when `-subj` gives the name.
fn write_config(dir: &Path, stem: &str, names: &[&str]) -> PathBuf {
    let alt_names: Vec<String> = names.iter().map(|name| format!("DNS:{name}")).collect();
    let mut text = String::from(
        "[req]\ndistinguished_name = dn\n[dn]\n\
         [ca_ext]\nbasicConstraints = critical,CA:TRUE\n\
         keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n",
    );
    if !names.is_empty() {
        text.push_str(&format!(
            "[leaf_ext]\nbasicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage = serverAuth\nsubjectAltName = {}\n\
             subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
            alt_names.join(",")
        ));
    }
    crate::write_file(dir, &format!("{stem}.cnf"), &text)
}

/// A new private key of `kind` at `path` (PKCS#8 PEM).
pub fn generate_key(path: &Path, kind: KeyKind) {
    let options: [&str; 4] = match kind {
        KeyKind::EcdsaP256 => ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        KeyKind::Rsa2048 => ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    };
    let mut args = vec!["genpkey"];
    args.extend_from_slice(&options);
    args.extend(["-out", path_str(path)]);
    openssl(&args);
}

/// Runs `openssl ARGS`, which must succeed.
fn openssl(args: &[&str]) {
    let output = run_tool(Command::new("openssl").args(args), b"", COMMAND_TIMEOUT);
    assert!(
        output.code == Some(0),
        "openssl {args:?} failed ({:?}):\n{}{}",
        output.code,
        output.stdout,
        output.stderr
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// The first PEM certificate in `text`, its base64 lines joined.
pub fn first_pem_certificate(text: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = text.find(BEGIN)? + BEGIN.len();
    let length = text[start..].find(END)?;
    Some(text[start..start + length].split_whitespace().collect())
}

// ---------------------------------------------------------------------------
// Running a tool.

/// What a bounded tool run left behind.
#[derive(Debug)]
pub struct ToolOutput {
    /// Exit code; `None` when killed (by us at the timeout, or by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl ToolOutput {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `command` with `input` on its stdin (then closed), output captured
/// in files (no pipe to fill up), killed after `timeout`.
pub fn run_tool(command: &mut Command, input: &[u8], timeout: Duration) -> ToolOutput {
    let dir = tempfile::tempdir().expect("tempdir");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|error| panic!("spawning {command:?}: {error}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A tool that gave up early (a failed handshake) closes its stdin; the
    // broken pipe is its story to tell, in its output.
    let _ = stdin.write_all(input);
    drop(stdin);
    let status = wait_timeout(&mut child, timeout);
    let timed_out = status.is_none();
    if timed_out {
        let _ = child.kill();
        let _ = child.wait();
    }
    ToolOutput {
        code: status.and_then(|status| status.code()),
        stdout: fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
        timed_out,
    }
}

/// Runs `python3 -c SCRIPT ARGS` (bounded by `timeout`).
pub fn python(script: &str, args: &[&str], timeout: Duration) -> ToolOutput {
    assert!(
        crate::require_tool("python3", "Debian package python3"),
        "this test drives python3's ssl module"
    );
    run_tool(
        Command::new("python3").arg("-c").arg(script).args(args),
        b"",
        timeout,
    )
}

// ---------------------------------------------------------------------------
// The server.

/// A running `keystone serve` with a cleartext listener (as [`Server`]
/// starts it) and one TLS listener, on a port this side chose.
pub struct TlsServer {
    server: Server,
    tls_addr: SocketAddr,
}

impl TlsServer {
    /// Starts `keystone serve APP --listen .. --tls-listen 127.0.0.1:PORT`
    /// with `--tls-cert`/`--tls-key` for each pair in order, then `extra`;
    /// returns once both listeners accept TCP.
    pub fn start(app: &str, pairs: &[&CertPair], extra: &[&str]) -> TlsServer {
        let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut args: Vec<String> = vec!["--tls-listen".into(), tls_addr.to_string()];
        for pair in pairs {
            args.extend(["--tls-cert".into(), path_str(&pair.cert).into()]);
            args.extend(["--tls-key".into(), path_str(&pair.key).into()]);
        }
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let borrowed: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Server::start(Some(app), &borrowed);
        wait_accepting(&mut server, tls_addr);
        TlsServer { server, tls_addr }
    }

    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr
    }

    pub fn tls_port(&self) -> u16 {
        self.tls_addr.port()
    }

    /// `https://NAME:PORT` + `path`.
    pub fn https_url(&self, name: &str, path: &str) -> String {
        format!("https://{name}:{}{path}", self.tls_port())
    }

    /// curl's `--resolve` value sending `name` to the TLS listener.
    pub fn resolve(&self, name: &str) -> String {
        format!("{name}:{}:127.0.0.1", self.tls_port())
    }

    /// The argument list of an HTTPS `curl` for `https://NAME:PORT/PATH`,
    /// verifying the server against `ca`.
    pub fn curl_args(&self, ca: &Path, name: &str, path: &str) -> Vec<String> {
        vec![
            "--cacert".into(),
            path_str(ca).into(),
            "--resolve".into(),
            self.resolve(name),
            self.https_url(name, path),
        ]
    }

    /// `curl -i` over TLS (see [`TlsServer::curl_args`]), plus `extra`.
    pub fn curl(&self, ca: &Path, name: &str, path: &str, extra: &[&str]) -> Response {
        let mut args = self.curl_args(ca, name, path);
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let borrowed: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&borrowed)
    }

    /// `openssl s_client` against the TLS listener (see [`s_client`]).
    pub fn s_client(&self, args: &[&str], input: &[u8]) -> Handshake {
        s_client(self.tls_addr, args, input)
    }
}

impl Deref for TlsServer {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

impl DerefMut for TlsServer {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

/// Waits (bounded) until `addr` accepts TCP; a server that exits or never
/// listens fails the test with its log.
fn wait_accepting(server: &mut Server, addr: SocketAddr) {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Some(status) = server.wait_exit(Duration::ZERO) {
            panic!(
                "keystone exited with {status} before its TLS listener {addr} accepted; log:\n{}",
                server.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the TLS listener {addr} did not accept within {STARTUP_TIMEOUT:?}; log:\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(25));
    }
}

// ---------------------------------------------------------------------------
// openssl s_client.

/// What one `openssl s_client` run reported.
#[derive(Debug)]
pub struct Handshake {
    pub code: Option<i32>,
    /// The session report and, after it, whatever the server sent.
    pub stdout: String,
    /// Verification steps and errors (alerts received).
    pub stderr: String,
    pub timed_out: bool,
}

/// `openssl s_client -connect ADDR -ign_eof ARGS` with `input` written to
/// it (a request ending with `Connection: close`, so the server ends the
/// run); stdin reaching EOF does not end it (`-ign_eof`), the server's
/// close does, or [`IO_TIMEOUT`] (then `timed_out`).
pub fn s_client(addr: SocketAddr, args: &[&str], input: &[u8]) -> Handshake {
    assert!(
        crate::require_tool("openssl", "Debian package openssl"),
        "TLS tests cannot run without openssl"
    );
    let connect = addr.to_string();
    let output = run_tool(
        Command::new("openssl")
            .args(["s_client", "-connect", &connect, "-ign_eof"])
            .args(args),
        input,
        IO_TIMEOUT,
    );
    Handshake {
        code: output.code,
        stdout: output.stdout,
        stderr: output.stderr,
        timed_out: output.timed_out,
    }
}

impl Handshake {
    pub fn all(&self) -> String {
        format!("{}\n---- stderr ----\n{}", self.stdout, self.stderr)
    }

    /// The "New, TLSv1.3, Cipher is X" (or "Reused, ...") line, split.
    fn session_line(&self) -> Option<(&str, &str, &str)> {
        self.stdout.lines().find_map(|line| {
            let (kind, rest) = line.split_once(", ")?;
            if kind != "New" && kind != "Reused" {
                return None;
            }
            let (protocol, cipher) = rest.split_once(", Cipher is ")?;
            Some((kind, protocol, cipher.trim()))
        })
    }

    /// The protocol negotiated ("TLSv1.3"), if the handshake completed.
    pub fn protocol(&self) -> Option<&str> {
        self.session_line()
            .map(|(_, protocol, _)| protocol)
            .filter(|protocol| protocol.starts_with("TLS"))
    }

    /// The cipher negotiated, in OpenSSL's names.
    pub fn cipher(&self) -> Option<&str> {
        self.session_line().map(|(_, _, cipher)| cipher)
    }

    /// True when the session was resumed from `-sess_in`.
    pub fn reused(&self) -> bool {
        self.session_line()
            .is_some_and(|(kind, _, _)| kind == "Reused")
    }

    /// "ALPN protocol: X"; `None` for "No ALPN negotiated".
    pub fn alpn(&self) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix("ALPN protocol: "))
    }

    /// The server certificate's subject line ("CN = a.test").
    pub fn subject(&self) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix("subject="))
    }

    /// "Server public key is N bit".
    pub fn public_key_bits(&self) -> Option<u32> {
        self.stdout.lines().find_map(|line| {
            line.strip_prefix("Server public key is ")?
                .strip_suffix(" bit")?
                .parse()
                .ok()
        })
    }

    /// The certificate the server sent, as [`first_pem_certificate`] gives it.
    pub fn certificate_pem(&self) -> Option<String> {
        first_pem_certificate(&self.stdout)
    }

    /// True when the chain verified against `-CAfile`.
    pub fn verified(&self) -> bool {
        self.stdout.contains("Verify return code: 0 (ok)")
    }

    /// The HTTP responses the server sent after the handshake, in order
    /// (bodies framed by Content-Length; these tests send nothing longer).
    pub fn responses(&self) -> Vec<Response> {
        // s_client notes a read that found no application data between
        // what the server sent; it is not the server's.
        let text = self.stdout.replace("read R BLOCK\n", "");
        let mut bytes = text.as_bytes();
        let mut responses = Vec::new();
        while let Some(start) = find(bytes, b"HTTP/1.") {
            bytes = &bytes[start..];
            let Some(head_end) = find(bytes, b"\r\n\r\n") else {
                break;
            };
            let Some(mut response) = parse_head(&bytes[..head_end]) else {
                bytes = &bytes[1..];
                continue;
            };
            bytes = &bytes[head_end + 4..];
            let length = response
                .header("content-length")
                .and_then(|length| length.trim().parse::<usize>().ok())
                .unwrap_or(0)
                .min(bytes.len());
            response.body = bytes[..length].to_vec();
            bytes = &bytes[length..];
            responses.push(response);
        }
        responses
    }
}

/// The bytes of a real ClientHello for `server_name` (from python's `ssl`
/// over a memory BIO), for tests that send part of one.
pub fn client_hello(server_name: &str) -> Vec<u8> {
    const SCRIPT: &str = r#"
import ssl, sys
context = ssl.create_default_context()
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
connection = context.wrap_bio(incoming, outgoing, server_hostname=sys.argv[1])
try:
    connection.do_handshake()
except ssl.SSLWantReadError:
    pass
sys.stdout.write(outgoing.read().hex())
"#;
    let output = python(SCRIPT, &[server_name], COMMAND_TIMEOUT);
    assert_eq!(
        output.code,
        Some(0),
        "making a ClientHello: {}",
        output.all()
    );
    let hex = output.stdout.trim();
    assert!(hex.len() >= 10, "no ClientHello came out: {hex:?}");
    (0..hex.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&hex[index..index + 2], 16).expect("hex"))
        .collect()
}
