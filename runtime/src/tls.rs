//! TLS as a sans-IO byte stage on a [`rustls::Connection`]: the server side
//! of listeners, and the client side of bridges.
//!
//! ```text
//!   socket bytes ─▶ feed_ciphertext ─▶ [TlsStage] ─▶ take_plaintext ─▶ next stage
//!   socket ◀─ take_ciphertext ◀─ [TlsStage] ◀─ write_plaintext ◀─ next stage
//! ```
//!
//! The stage owns no socket. After every [`TlsStage::feed_ciphertext`] and
//! every [`TlsStage::write_plaintext`], the runtime calls
//! [`TlsStage::take_ciphertext`] and writes what it got: handshake messages,
//! alerts and encrypted application data all come out there.
//!
//! Bounds: rustls buffers at most one TLS record of input; decrypted bytes
//! move to this stage's plaintext buffer, which grows by at most the bytes fed
//! since the last [`TlsStage::take_plaintext`] and is capped at
//! [`MAX_BUFFERED_PLAINTEXT`] so a runtime that forgets to drain fails loudly
//! instead of growing. Outgoing data is not capped here: it leaves through
//! [`TlsStage::take_ciphertext`] into the runtime's write buffer, which
//! `limits.outbound_buffer_bytes` bounds.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};

use crate::config::{CertIdentity, ClientCerts};

/// Largest amount of decrypted input the stage holds before
/// [`TlsStage::feed_ciphertext`] refuses more.
pub const MAX_BUFFERED_PLAINTEXT: usize = 1024 * 1024;

/// Why loading TLS material or running the stage failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A certificate or key file is not valid PEM, or holds no item of the
    /// kind needed.
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected (`certificate` or `private key`).
        expected: &'static str,
        /// The PEM reader's error.
        source: pem::Error,
    },
    /// rustls refused the certificate and key (for example, the key does not
    /// belong to the certificate).
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The client CA file or CRL file could not be used to verify client
    /// certificates (no usable CA in it, or a CRL that does not parse).
    ClientCa {
        /// The `client_ca` file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::server::VerifierBuilderError,
    },
    /// A certificate in the `client_ca` file was refused as a trust anchor.
    Anchor {
        /// The `client_ca` file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The peer broke the TLS protocol or the handshake failed. An alert may
    /// be waiting in [`TlsStage::take_ciphertext`]; send it, then close.
    Protocol(rustls::Error),
    /// Decrypted input was not taken and reached [`MAX_BUFFERED_PLAINTEXT`].
    PlaintextFull,
    /// Data was written after the stage was closed.
    Closed,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, source } => write!(f, "{}: {source}", path.display()),
            TlsError::Pem {
                path,
                expected,
                source: pem::Error::NoItemsFound,
            } => write!(f, "{}: no PEM {expected} found", path.display()),
            TlsError::Pem {
                path,
                expected,
                source,
            } => write!(f, "{}: invalid PEM {expected}: {source}", path.display()),
            TlsError::Config {
                cert,
                key,
                source: rustls::Error::InconsistentKeys(_),
            } => write!(
                f,
                "{} / {}: the key does not belong to the certificate",
                cert.display(),
                key.display()
            ),
            TlsError::Config { cert, key, source } => write!(
                f,
                "{} / {}: unusable certificate and key: {source}",
                cert.display(),
                key.display()
            ),
            TlsError::ClientCa {
                path,
                source: rustls::server::VerifierBuilderError::InvalidCrl(e),
            } => write!(f, "{}: unusable CRL: {}", path.display(), crl_problem(e)),
            TlsError::ClientCa { path, source } => write!(
                f,
                "{}: cannot verify client certificates with it: {source}",
                path.display()
            ),
            TlsError::Anchor { path, source } => {
                write!(f, "{}: unusable CA certificate: {source}", path.display())
            }
            TlsError::Protocol(e) => write!(f, "TLS error: {e}"),
            TlsError::PlaintextFull => write!(
                f,
                "TLS plaintext buffer full ({MAX_BUFFERED_PLAINTEXT} bytes not taken)"
            ),
            TlsError::Closed => f.write_str("TLS stage is closed"),
        }
    }
}

/// rustls names CRL problems by their Rust variant (`BadSignature`).
fn crl_problem(e: &rustls::CertRevocationListError) -> &'static str {
    use rustls::CertRevocationListError as E;
    match e {
        E::BadSignature => "its signature does not verify with the client_ca certificates",
        E::ParseError => "it does not parse",
        E::IssuerInvalidForCrl => "its issuer may not sign CRLs",
        E::InvalidCrlNumber | E::InvalidRevokedCertSerialNumber => "it holds an invalid number",
        E::UnsupportedCrlVersion => "its version is not supported",
        E::UnsupportedCriticalExtension => "it has a critical extension that is not supported",
        E::UnsupportedDeltaCrl => "delta CRLs are not supported",
        E::UnsupportedIndirectCrl => "indirect CRLs are not supported",
        E::UnsupportedRevocationReason => "it gives a revocation reason that is not supported",
        E::Other(_) => "it cannot be used",
        _ => "its signature algorithm is not supported",
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { source, .. } => Some(source),
            TlsError::Pem { source, .. } => Some(source),
            TlsError::Config { source, .. }
            | TlsError::Anchor { source, .. }
            | TlsError::Protocol(source) => Some(source),
            TlsError::ClientCa { source, .. } => Some(source),
            TlsError::PlaintextFull | TlsError::Closed => None,
        }
    }
}

/// Builds a server configuration from a PEM certificate chain and a PEM
/// private key (PKCS#8, PKCS#1 or SEC1), with the `ring` provider and rustls's
/// safe default protocol versions (TLS 1.2 and 1.3). No client certificates
/// are requested.
pub fn load_server_config(cert_path: &Path, key_path: &Path) -> Result<ServerConfig, TlsError> {
    load_server_config_with(cert_path, key_path, &ClientCerts::default())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// [`load_server_config`], asking for client certificates when
/// `client.ca` is set: a certificate a client presents must chain to one
/// of those CAs and, with `client.crl`, not be revoked (only the client's
/// own certificate is checked against the CRLs, as OpenSSL's `CRL_CHECK`
/// does; a CRL must be there for its issuer). With `client.required`, a
/// client that presents none fails the handshake.
pub fn load_server_config_with(
    cert_path: &Path,
    key_path: &Path,
    client: &ClientCerts,
) -> Result<ServerConfig, TlsError> {
    let (certs, key) = load_chain(cert_path, key_path)?;
    let config_error = |source| TlsError::Config {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?;
    let builder = match &client.ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            builder.with_client_cert_verifier(client_verifier(ca_path, client, provider)?)
        }
    };
    builder.with_single_cert(certs, key).map_err(config_error)
}

/// A certificate chain and its private key (PKCS#8, PKCS#1 or SEC1), PEM.
type Chain = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Reads the chain in `cert_path` (at least one certificate) and the key in
/// `key_path`.
fn load_chain(cert_path: &Path, key_path: &Path) -> Result<Chain, TlsError> {
    let pem_error = |path: &Path, expected, source| TlsError::Pem {
        path: path.to_path_buf(),
        expected,
        source,
    };
    let certs = CertificateDer::pem_slice_iter(&read(cert_path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_path, "certificate", e))?;
    if certs.is_empty() {
        return Err(pem_error(
            cert_path,
            "certificate",
            pem::Error::NoItemsFound,
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_path)?)
        .map_err(|e| pem_error(key_path, "private key", e))?;
    Ok((certs, key))
}

/// The CA certificates (PEM) in `ca_path`, as trust anchors.
fn load_roots(ca_path: &Path) -> Result<RootCertStore, TlsError> {
    let ca_pem = read(ca_path)?;
    let mut roots = RootCertStore::empty();
    let cas = CertificateDer::pem_slice_iter(&ca_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: ca_path.to_path_buf(),
            expected: "CA certificate",
            source,
        })?;
    if cas.is_empty() {
        return Err(TlsError::Pem {
            path: ca_path.to_path_buf(),
            expected: "CA certificate",
            source: pem::Error::NoItemsFound,
        });
    }
    for ca in cas {
        roots.add(ca).map_err(|source| TlsError::Anchor {
            path: ca_path.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

/// Builds the client configuration of a bridge: the remote must present a
/// certificate that chains to a CA in `ca_path` (PEM; a system bundle such
/// as `/etc/ssl/certs/ca-certificates.crt` for a public broker) and is
/// valid for the server name; with `cert_and_key`, this broker presents
/// that client certificate. TLS 1.2 and 1.3, the `ring` provider.
pub fn load_client_config(
    ca_path: &Path,
    cert_and_key: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let roots = load_roots(ca_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Anchor {
            path: ca_path.to_path_buf(),
            source,
        })?
        .with_root_certificates(roots);
    let Some((cert_path, key_path)) = cert_and_key else {
        return Ok(builder.with_no_client_auth());
    };
    let (certs, key) = load_chain(cert_path, key_path)?;
    builder
        .with_client_auth_cert(certs, key)
        .map_err(|source| TlsError::Config {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            source,
        })
}

fn client_verifier(
    ca_path: &Path,
    client: &ClientCerts,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let roots = load_roots(ca_path)?;
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if let Some(crl_path) = &client.crl {
        let crl_pem = read(crl_path)?;
        let crls = CertificateRevocationListDer::pem_slice_iter(&crl_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem {
                path: crl_path.to_path_buf(),
                expected: "certificate revocation list",
                source,
            })?;
        if crls.is_empty() {
            return Err(TlsError::Pem {
                path: crl_path.to_path_buf(),
                expected: "certificate revocation list",
                source: pem::Error::NoItemsFound,
            });
        }
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
    }
    if !client.required {
        verifier = verifier.allow_unauthenticated();
    }
    verifier.build().map_err(|source| TlsError::ClientCa {
        path: client.crl.clone().unwrap_or_else(|| ca_path.to_path_buf()),
        source,
    })
}

/// The user name a verified client certificate (DER) gives under
/// `identity`: its subject's first common name, or its whole subject as
/// Mosquitto prints it (RFC 2253 order, most specific first:
/// `CN=dev1,OU=Plant,O=Acme,C=GB`). `None` when it has no such name (no
/// CN, an attribute that is not a string), or for [`CertIdentity::None`].
pub fn certificate_identity(der: &[u8], identity: CertIdentity) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    match identity {
        CertIdentity::None => None,
        CertIdentity::CommonName => subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        CertIdentity::Subject => {
            let registry = x509_parser::objects::oid_registry();
            let rdns: Vec<_> = subject.iter().collect();
            let mut out = String::new();
            for rdn in rdns.into_iter().rev() {
                for (i, attr) in rdn.iter().enumerate() {
                    out.push_str(match (out.is_empty(), i) {
                        (true, _) => "",
                        (false, 0) => ",",
                        (false, _) => "+",
                    });
                    let oid = attr.attr_type();
                    if *oid == x509_parser::oid_registry::OID_PKCS9_EMAIL_ADDRESS {
                        out.push_str("emailAddress");
                    } else {
                        match x509_parser::objects::oid2abbrev(oid, registry) {
                            Ok(name) => out.push_str(name),
                            Err(_) => out.push_str(&oid.to_id_string()),
                        }
                    }
                    out.push('=');
                    escape_rfc2253(attr.as_str().ok()?, &mut out);
                }
            }
            Some(out)
        }
    }
}

/// Escapes an attribute value as RFC 2253 section 2.4 asks.
fn escape_rfc2253(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

/// One TLS connection, driven by bytes: the server side of an accepted
/// connection, or the client side of a bridge's.
pub struct TlsStage {
    conn: Connection,
    plaintext: Vec<u8>,
    peer_closed: bool,
    failed: bool,
    closing: bool,
}

impl fmt::Debug for TlsStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStage")
            .field("handshaking", &self.conn.is_handshaking())
            .field("buffered_plaintext", &self.plaintext.len())
            .field("peer_closed", &self.peer_closed)
            .field("failed", &self.failed)
            .finish()
    }
}

impl TlsStage {
    /// Starts a server-side connection.
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsStage, TlsError> {
        let conn = ServerConnection::new(config).map_err(TlsError::Protocol)?;
        Ok(TlsStage::with(conn.into()))
    }

    /// Starts a client-side connection to `server_name` (verified against
    /// the remote's certificate, and sent as SNI when it is a DNS name).
    /// Application data written before the handshake ends is sent after it.
    pub fn client(
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    ) -> Result<TlsStage, TlsError> {
        let conn = ClientConnection::new(config, server_name).map_err(TlsError::Protocol)?;
        Ok(TlsStage::with(conn.into()))
    }

    fn with(mut conn: Connection) -> TlsStage {
        // Outgoing data is bounded by the runtime's write buffer instead (see
        // the module docs); a rustls limit would make writes partial.
        conn.set_buffer_limit(None);
        TlsStage {
            conn,
            plaintext: Vec::new(),
            peer_closed: false,
            failed: false,
            closing: false,
        }
    }

    /// Takes bytes read from the socket. Decrypted data becomes available
    /// through [`TlsStage::take_plaintext`]; handshake replies through
    /// [`TlsStage::take_ciphertext`]. After an error, take the ciphertext
    /// (it may hold an alert for the peer) and close the connection.
    ///
    /// After [`TlsStage::close`] input is discarded: the connection is
    /// going away, and rustls must not process records after it queued
    /// `close_notify` (a bad record would make it queue a second alert,
    /// which it asserts against; the `tls` fuzz target found this).
    pub fn feed_ciphertext(&mut self, mut data: &[u8]) -> Result<(), TlsError> {
        if self.failed {
            return Err(TlsError::Closed);
        }
        if self.closing {
            return Ok(());
        }
        while !data.is_empty() {
            if self.plaintext.len() >= MAX_BUFFERED_PLAINTEXT {
                self.failed = true;
                return Err(TlsError::PlaintextFull);
            }
            let read = match self.conn.read_tls(&mut data) {
                Ok(n) => n,
                // rustls refuses input only when its own buffers are full,
                // which draining after each record prevents; treat it as fatal.
                Err(e) => {
                    self.failed = true;
                    return Err(TlsError::Protocol(rustls::Error::General(e.to_string())));
                }
            };
            let state = self.conn.process_new_packets().map_err(|e| {
                self.failed = true;
                TlsError::Protocol(e)
            })?;
            if state.plaintext_bytes_to_read() > 0 {
                // read_to_end appends what it read even when it stops with
                // WouldBlock, which is how rustls says "no more for now".
                match self.conn.reader().read_to_end(&mut self.plaintext) {
                    Ok(_) => self.peer_closed = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => self.peer_closed = true,
                }
            }
            if state.peer_has_closed() {
                self.peer_closed = true;
            }
            if read == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Moves all decrypted bytes received so far to the end of `out`.
    pub fn take_plaintext(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.plaintext);
    }

    /// Queues application data for encryption. Before the handshake is done it
    /// is held and sent once keys exist.
    pub fn write_plaintext(&mut self, data: &[u8]) -> Result<(), TlsError> {
        if self.failed || self.closing {
            return Err(TlsError::Closed);
        }
        // With no buffer limit, rustls's writer takes everything.
        self.conn.writer().write_all(data).map_err(|e| {
            self.failed = true;
            TlsError::Protocol(rustls::Error::General(e.to_string()))
        })
    }

    /// Appends everything that should be written to the socket to `out`.
    pub fn take_ciphertext(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail.
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }

    /// Starts a clean close: queues a `close_notify` alert. Take the
    /// ciphertext afterwards and send it before closing the socket.
    pub fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            self.conn.send_close_notify();
        }
    }

    /// Whether the handshake is still in progress.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the connection should be closed once pending ciphertext is
    /// written: the peer sent `close_notify`, or the stage failed.
    pub fn wants_close(&self) -> bool {
        self.peer_closed || self.failed
    }

    /// The certificate the client presented, once the handshake has
    /// verified it (only on a listener with `client_ca`).
    pub fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.conn
            .peer_certificates()
            .and_then(|chain| chain.first())
    }

    /// The server name the client asked for (SNI), if any.
    pub fn server_name(&self) -> Option<&str> {
        match &self.conn {
            Connection::Server(conn) => conn.server_name(),
            Connection::Client(_) => None,
        }
    }
}

#[cfg(test)]
#[path = "../tests/support/pki.rs"]
pub(crate) mod pki;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    /// A self-signed certificate for `localhost`, written to a fresh
    /// directory: (cert path, key path, DER of the cert).
    pub(crate) fn write_cert(tag: &str) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
        let dir = std::env::temp_dir().join(format!("roost-tls-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, signing_key.serialize_pem()).expect("write key");
        (cert_path, key_path, cert.der().clone())
    }

    pub(crate) fn server_and_client(tag: &str) -> (TlsStage, ClientConnection) {
        let (cert_path, key_path, der) = write_cert(tag);
        let server_config = load_server_config(&cert_path, &key_path).expect("server config");
        std::fs::remove_dir_all(cert_path.parent().expect("dir")).expect("cleanup");
        let mut roots = RootCertStore::empty();
        roots.add(der).expect("root");
        let client_config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        let client = ClientConnection::new(
            Arc::new(client_config),
            ServerName::try_from("localhost").expect("name"),
        )
        .expect("client");
        let server = TlsStage::new(Arc::new(server_config)).expect("stage");
        (server, client)
    }

    /// Moves bytes both ways until neither side has anything to send;
    /// returns the plaintext the client received.
    pub(crate) fn pump(server: &mut TlsStage, client: &mut ClientConnection) -> Vec<u8> {
        let mut received = Vec::new();
        for _ in 0..20 {
            let mut to_server = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut to_server).expect("client write");
            }
            server.feed_ciphertext(&to_server).expect("server feed");
            let mut to_client = Vec::new();
            server.take_ciphertext(&mut to_client);
            let mut slice = &to_client[..];
            while !slice.is_empty() {
                client.read_tls(&mut slice).expect("client read");
                client.process_new_packets().expect("client process");
                received.extend(client_read_all(client));
            }
            if to_server.is_empty() && to_client.is_empty() {
                return received;
            }
        }
        panic!("pump did not settle");
    }

    fn client_read_all(client: &mut ClientConnection) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match client.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("client read: {e}"),
            }
        }
        out
    }

    #[test]
    fn handshake_and_data_both_ways() {
        let (mut server, mut client) = server_and_client("data");
        assert!(server.is_handshaking());
        // Data written by the client before the handshake ends arrives after.
        client.writer().write_all(b"\x10\x0c CONNECT").expect("w");
        pump(&mut server, &mut client);
        assert!(!server.is_handshaking());
        assert!(!client.is_handshaking());
        assert_eq!(server.server_name(), Some("localhost"));
        let mut got = Vec::new();
        server.take_plaintext(&mut got);
        assert_eq!(got, b"\x10\x0c CONNECT");

        server.write_plaintext(b"\x20\x02\x00\x00").expect("write");
        let big = vec![7u8; 100_000];
        server.write_plaintext(&big).expect("write big");
        let received = pump(&mut server, &mut client);
        assert_eq!(&received[..4], b"\x20\x02\x00\x00");
        assert_eq!(&received[4..], &big[..]);

        // Byte-at-a-time delivery works too.
        client.writer().write_all(b"split me").expect("w");
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).expect("w");
        }
        for b in &wire {
            server
                .feed_ciphertext(std::slice::from_ref(b))
                .expect("feed");
        }
        let mut got = Vec::new();
        server.take_plaintext(&mut got);
        assert_eq!(got, b"split me");
        assert!(!server.wants_close());

        client.send_close_notify();
        pump(&mut server, &mut client);
        assert!(server.wants_close());
    }

    #[test]
    fn untaken_plaintext_is_capped() {
        let (mut server, mut client) = server_and_client("cap");
        pump(&mut server, &mut client);
        let chunk = vec![0u8; 64 * 1024];
        let mut result = Ok(());
        for _ in 0..(MAX_BUFFERED_PLAINTEXT / chunk.len() + 2) {
            client.writer().write_all(&chunk).expect("w");
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).expect("w");
            }
            result = server.feed_ciphertext(&wire);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(TlsError::PlaintextFull)), "{result:?}");
        assert!(server.wants_close());
    }

    #[test]
    fn server_close_sends_close_notify() {
        let (mut server, mut client) = server_and_client("close");
        pump(&mut server, &mut client);
        server.close();
        assert!(matches!(
            server.write_plaintext(b"x"),
            Err(TlsError::Closed)
        ));
        pump(&mut server, &mut client);
        let state = client.process_new_packets().expect("client");
        assert!(state.peer_has_closed());
    }

    /// Found by the `tls` fuzz target: garbage after `close` made rustls
    /// queue a fatal alert after `close_notify` and fail its debug assertion.
    #[test]
    fn input_after_close_is_discarded() {
        let (mut server, mut client) = server_and_client("after-close");
        pump(&mut server, &mut client);
        server.close();
        // A plaintext alert record where an encrypted one is due.
        let result = server.feed_ciphertext(&[0x15, 0x03, 0x03, 0x00, 0x02, 0xff, 0xff]);
        assert!(result.is_ok(), "{result:?}");
        let mut plain = Vec::new();
        server.take_plaintext(&mut plain);
        assert!(plain.is_empty());
        pump(&mut server, &mut client);
        let state = client.process_new_packets().expect("client");
        assert!(state.peer_has_closed(), "close_notify still leaves");
    }

    #[test]
    fn garbage_fails_with_an_alert() {
        let (cert, key, _) = write_cert("garbage");
        let config = Arc::new(load_server_config(&cert, &key).expect("config"));
        std::fs::remove_dir_all(cert.parent().expect("dir")).expect("cleanup");
        let mut server = TlsStage::new(config).expect("stage");
        let err = server
            .feed_ciphertext(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect_err("not TLS");
        assert!(matches!(err, TlsError::Protocol(_)), "{err}");
        assert!(server.wants_close());
        let mut alert = Vec::new();
        server.take_ciphertext(&mut alert);
        assert_eq!(alert.first(), Some(&0x15), "an alert record");
    }

    #[test]
    fn load_errors_name_the_file_and_problem() {
        let (cert, key, _) = write_cert("errors");
        let dir = cert.parent().expect("dir").to_path_buf();

        let missing = dir.join("missing.pem");
        let e = load_server_config(&missing, &key).expect_err("missing");
        assert!(
            e.to_string()
                .starts_with(&format!("{}: ", missing.display())),
            "{e}"
        );

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").expect("write");
        let e = load_server_config(&empty, &key).expect_err("no cert");
        assert_eq!(
            e.to_string(),
            format!("{}: no PEM certificate found", empty.display())
        );
        let e = load_server_config(&cert, &empty).expect_err("no key");
        assert_eq!(
            e.to_string(),
            format!("{}: no PEM private key found", empty.display())
        );
        // A key is not a certificate.
        let e = load_server_config(&key, &key).expect_err("key as cert");
        assert!(e.to_string().contains("no PEM certificate found"), "{e}");

        let (_, other_key, _) = write_cert("errors-other");
        let e = load_server_config(&cert, &other_key).expect_err("mismatch");
        assert!(matches!(e, TlsError::Config { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("the key does not belong to the certificate"),
            "{e}"
        );

        std::fs::remove_dir_all(&dir).expect("cleanup");
        std::fs::remove_dir_all(other_key.parent().expect("dir")).expect("cleanup");
    }

    mod client_certs {
        use super::super::pki::{Leaf, Pki};
        use super::*;
        use crate::config::{CertIdentity, ClientCerts};
        use rcgen::DnType;

        struct Setup {
            dir: PathBuf,
            server: Pki,
            clients: Pki,
        }

        impl Setup {
            fn new(tag: &str) -> Setup {
                let dir =
                    std::env::temp_dir().join(format!("roost-mtls-{}-{tag}", std::process::id()));
                std::fs::create_dir_all(&dir).expect("dir");
                Setup {
                    dir,
                    server: Pki::new("server CA"),
                    clients: Pki::new("client CA"),
                }
            }

            fn config(&self, required: bool, crl: Option<&str>) -> Arc<ServerConfig> {
                let leaf =
                    self.server
                        .leaf(1, &[(DnType::CommonName, "localhost")], &["localhost"]);
                let (cert, key) = leaf.write(&self.dir, "server");
                let ca = self.dir.join("clients-ca.pem");
                std::fs::write(&ca, &self.clients.ca_pem).expect("ca");
                let crl = crl.map(|pem| {
                    let path = self.dir.join("clients.crl");
                    std::fs::write(&path, pem).expect("crl");
                    path
                });
                let client = ClientCerts {
                    ca: Some(ca),
                    crl,
                    required,
                    identity: CertIdentity::CommonName,
                };
                Arc::new(load_server_config_with(&cert, &key, &client).expect("config"))
            }

            /// Runs a handshake presenting `leaf` (or no certificate):
            /// whether it succeeded, and the server's stage.
            fn handshake(
                &self,
                config: Arc<ServerConfig>,
                leaf: Option<&Leaf>,
            ) -> (bool, TlsStage) {
                let mut roots = RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_slice(self.server.ca_pem.as_bytes()).expect("ca"))
                    .expect("root");
                let builder = ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots);
                let client_config = match leaf {
                    Some(leaf) => builder
                        .with_client_auth_cert(
                            vec![CertificateDer::from(leaf.der.clone())],
                            PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key"),
                        )
                        .expect("client cert"),
                    None => builder.with_no_client_auth(),
                };
                let mut client = ClientConnection::new(
                    Arc::new(client_config),
                    ServerName::try_from("localhost").expect("name"),
                )
                .expect("client");
                // TLS 1.3: the client's certificate is judged after its
                // first flight, so send data to see the verdict.
                client.writer().write_all(b"hello").expect("w");
                let mut server = TlsStage::new(config).expect("stage");
                for _ in 0..10 {
                    let mut wire = Vec::new();
                    while client.wants_write() {
                        client.write_tls(&mut wire).expect("client write");
                    }
                    if server.feed_ciphertext(&wire).is_err() {
                        return (false, server);
                    }
                    let mut back = Vec::new();
                    server.take_ciphertext(&mut back);
                    let mut slice = &back[..];
                    while !slice.is_empty() {
                        client.read_tls(&mut slice).expect("client read");
                        if client.process_new_packets().is_err() {
                            return (false, server);
                        }
                    }
                    if wire.is_empty() && back.is_empty() {
                        break;
                    }
                }
                let mut got = Vec::new();
                server.take_plaintext(&mut got);
                (got == b"hello" && !server.is_handshaking(), server)
            }
        }

        impl Drop for Setup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }

        #[test]
        fn a_required_certificate_is_verified_and_names_the_user() {
            let s = Setup::new("required");
            let config = s.config(true, None);
            let good = s.clients.client(10, "sensor-1");
            let (ok, server) = s.handshake(config.clone(), Some(&good));
            assert!(ok, "a certificate of the client CA is accepted");
            let der = server.peer_certificate().expect("peer certificate");
            assert_eq!(
                certificate_identity(der, CertIdentity::CommonName).as_deref(),
                Some("sensor-1")
            );
            let (ok, _) = s.handshake(config.clone(), None);
            assert!(!ok, "no certificate is refused");
            let stranger = Pki::new("other CA").client(11, "sensor-1");
            let (ok, _) = s.handshake(config, Some(&stranger));
            assert!(!ok, "a certificate of another CA is refused");
        }

        #[test]
        fn an_optional_certificate_is_still_verified() {
            let s = Setup::new("optional");
            let config = s.config(false, None);
            let (ok, server) = s.handshake(config.clone(), None);
            assert!(ok, "no certificate is fine");
            assert!(server.peer_certificate().is_none());
            let stranger = Pki::new("other CA").client(11, "x");
            let (ok, _) = s.handshake(config, Some(&stranger));
            assert!(!ok, "an invalid certificate is refused even when optional");
        }

        #[test]
        fn a_revoked_certificate_is_refused() {
            let s = Setup::new("crl");
            let config = s.config(true, Some(&s.clients.crl(&[20])));
            let revoked = s.clients.client(20, "lost-device");
            let fine = s.clients.client(21, "kept-device");
            assert!(!s.handshake(config.clone(), Some(&revoked)).0);
            assert!(s.handshake(config, Some(&fine)).0);
        }

        #[test]
        fn the_subject_reads_as_mosquitto_prints_it() {
            let pki = Pki::new("ca");
            let leaf = pki.leaf(
                1,
                &[
                    (DnType::CountryName, "GB"),
                    (DnType::OrganizationName, "Acme, Inc"),
                    (DnType::CommonName, "dev1"),
                ],
                &[],
            );
            // What Mosquitto gives is OpenSSL's RFC 2253 rendering; ask it.
            let path =
                std::env::temp_dir().join(format!("roost-subject-{}.pem", std::process::id()));
            std::fs::write(&path, &leaf.cert_pem).expect("write");
            let out = std::process::Command::new("openssl")
                .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
                .arg(&path)
                .output()
                .expect("openssl is needed by this test (apt-get install openssl)");
            std::fs::remove_file(&path).expect("cleanup");
            let printed = String::from_utf8(out.stdout).expect("utf-8");
            let openssl = printed.trim().strip_prefix("subject=").expect("subject=");
            assert!(openssl.contains("Acme\\, Inc"), "{openssl}");
            assert_eq!(
                certificate_identity(&leaf.der, CertIdentity::Subject).as_deref(),
                Some(openssl)
            );
            assert_eq!(
                certificate_identity(&leaf.der, CertIdentity::CommonName).as_deref(),
                Some("dev1")
            );
            let no_cn = pki.leaf(2, &[(DnType::OrganizationName, "Acme")], &[]);
            assert_eq!(
                certificate_identity(&no_cn.der, CertIdentity::CommonName),
                None
            );
        }

        #[test]
        fn a_bad_client_ca_file_is_named() {
            let s = Setup::new("bad-ca");
            let leaf = s
                .server
                .leaf(1, &[(DnType::CommonName, "localhost")], &["localhost"]);
            let (cert, key) = leaf.write(&s.dir, "server");
            let ca = s.dir.join("empty-ca.pem");
            std::fs::write(&ca, "nothing here\n").expect("write");
            let client = ClientCerts {
                ca: Some(ca.clone()),
                required: true,
                ..ClientCerts::default()
            };
            let e = load_server_config_with(&cert, &key, &client).expect_err("no CA");
            assert_eq!(
                e.to_string(),
                format!("{}: no PEM CA certificate found", ca.display())
            );
        }
    }
}
