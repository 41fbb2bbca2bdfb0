//! TLS as a sans-IO byte stage on [`rustls::ServerConnection`].
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

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

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
            TlsError::Config { cert, key, source } => write!(
                f,
                "{} / {}: unusable certificate and key: {source}",
                cert.display(),
                key.display()
            ),
            TlsError::Protocol(e) => write!(f, "TLS error: {e}"),
            TlsError::PlaintextFull => write!(
                f,
                "TLS plaintext buffer full ({MAX_BUFFERED_PLAINTEXT} bytes not taken)"
            ),
            TlsError::Closed => f.write_str("TLS stage is closed"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { source, .. } => Some(source),
            TlsError::Pem { source, .. } => Some(source),
            TlsError::Config { source, .. } | TlsError::Protocol(source) => Some(source),
            TlsError::PlaintextFull | TlsError::Closed => None,
        }
    }
}

/// Builds a server configuration from a PEM certificate chain and a PEM
/// private key (PKCS#8, PKCS#1 or SEC1), with the `ring` provider and rustls's
/// safe default protocol versions (TLS 1.2 and 1.3). No client certificates
/// are requested.
pub fn load_server_config(cert_path: &Path, key_path: &Path) -> Result<ServerConfig, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let pem_error = |path: &Path, expected, source| TlsError::Pem {
        path: path.to_path_buf(),
        expected,
        source,
    };
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_path, "certificate", e))?;
    if certs.is_empty() {
        return Err(pem_error(
            cert_path,
            "certificate",
            pem::Error::NoItemsFound,
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error(key_path, "private key", e))?;
    let config_error = |source| TlsError::Config {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    };
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(config_error)
}

/// The server side of one TLS connection, driven by bytes.
pub struct TlsStage {
    conn: ServerConnection,
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
        let mut conn = ServerConnection::new(config).map_err(TlsError::Protocol)?;
        // Outgoing data is bounded by the runtime's write buffer instead (see
        // the module docs); a rustls limit would make writes partial.
        conn.set_buffer_limit(None);
        Ok(TlsStage {
            conn,
            plaintext: Vec::new(),
            peer_closed: false,
            failed: false,
            closing: false,
        })
    }

    /// Takes bytes read from the socket. Decrypted data becomes available
    /// through [`TlsStage::take_plaintext`]; handshake replies through
    /// [`TlsStage::take_ciphertext`]. After an error, take the ciphertext
    /// (it may hold an alert for the peer) and close the connection.
    pub fn feed_ciphertext(&mut self, mut data: &[u8]) -> Result<(), TlsError> {
        if self.failed {
            return Err(TlsError::Closed);
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

    /// The server name the client asked for (SNI), if any.
    pub fn server_name(&self) -> Option<&str> {
        self.conn.server_name()
    }
}

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
            e.to_string().contains("unusable certificate and key"),
            "{e}"
        );

        std::fs::remove_dir_all(&dir).expect("cleanup");
        std::fs::remove_dir_all(other_key.parent().expect("dir")).expect("cleanup");
    }
}
