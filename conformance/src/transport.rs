//! How the suite reaches the broker: plain TCP, TLS, WebSocket or WebSocket
//! over TLS, for both of its clients.
//!
//! - The raw client ([`crate::client::RawClient`]) gets a byte stream from
//!   [`connect`]: TCP, then `tokio-rustls` if TLS is on, then a WebSocket
//!   (`tokio-tungstenite`, subprotocol `mqtt`) if a path is set. [`WsIo`]
//!   turns the WebSocket's binary messages into a byte stream and back, so
//!   every scenario writes and reads exact MQTT bytes whatever the transport.
//! - The rumqttc clients ([`crate::rumq`]) get rumqttc's own TLS and
//!   WebSocket transports from [`rumqttc_endpoint`], with the same trust.
//!
//! TLS always verifies the broker's certificate against the CA given (no
//! "insecure" mode) and the expected server name (`--host`, or `--sni`).
//! The crypto provider is rustls' `ring`, passed explicitly, so nothing
//! depends on a process-wide default provider.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{SinkExt, StreamExt};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::scenario::Target;

/// The WebSocket subprotocol the suite asks for (MQTT 5.0 section 6,
/// MQTT 3.1.1 section 6).
pub const WS_SUBPROTOCOL: &str = "mqtt";

/// The largest WebSocket message [`WsIo`] sends. MQTT allows a packet to
/// span messages (and a message to hold several packets), and a small
/// message keeps a broker whose WebSocket limit is its maximum packet size
/// reading up to the MQTT layer, so oversize and flood scenarios test MQTT,
/// not the WebSocket layer.
pub const WS_MESSAGE_MAX: usize = 4096;

/// The transport every connection of a run uses.
#[derive(Clone, Debug, Default)]
pub struct Transport {
    /// TLS settings; `None` for plain TCP.
    pub tls: Option<TlsClient>,
    /// WebSocket path (for example `/mqtt`); `None` for raw MQTT.
    pub ws_path: Option<String>,
}

impl Transport {
    /// `tcp`, `tls`, `ws` or `wss`.
    pub fn name(&self) -> &'static str {
        match (self.tls.is_some(), self.ws_path.is_some()) {
            (false, false) => "tcp",
            (true, false) => "tls",
            (false, true) => "ws",
            (true, true) => "wss",
        }
    }
}

/// TLS client settings: the CA to trust and the name to verify.
#[derive(Clone)]
pub struct TlsClient {
    server_name: ServerName<'static>,
    /// For the raw client, which sends `server_name` itself (as SNI too).
    config: Arc<ClientConfig>,
    /// For rumqttc, which always names the server by the host it connects
    /// to: when that differs from `server_name`, this configuration's
    /// verifier checks the certificate against `server_name` instead.
    rumqttc_config: Arc<ClientConfig>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsClient {
    /// Trusts the certificates in `ca_pem` (a CA, or the broker's own
    /// self-signed certificate) and expects the broker to prove it is
    /// `server_name` (a DNS name or an IP address). `host` is what the
    /// suite connects to.
    pub fn from_pem(ca_pem: &[u8], server_name: &str, host: &str) -> Result<TlsClient, String> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| format!("reading the CA PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("adding a CA certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err("the CA file holds no PEM certificate".into());
        }
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| format!("server name {server_name:?}: {e}"))?;
        let roots = Arc::new(roots);
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let config = Arc::new(config);
        let rumqttc_config = if server_name == host {
            config.clone()
        } else {
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| e.to_string())?;
            let pinned = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NamedVerifier {
                    inner: verifier,
                    name: name.clone(),
                }))
                .with_no_client_auth();
            Arc::new(pinned)
        };
        Ok(TlsClient {
            server_name: name,
            config,
            rumqttc_config,
        })
    }

    /// [`TlsClient::from_pem`] with the PEM read from `path`.
    pub fn from_file(path: &str, server_name: &str, host: &str) -> Result<TlsClient, String> {
        let pem = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        Self::from_pem(&pem, server_name, host).map_err(|e| format!("{path}: {e}"))
    }

    async fn wrap<S>(&self, stream: S) -> io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), stream)
            .await
    }
}

/// Full WebPKI verification, against a fixed server name rather than the
/// one the connecting code passes: rumqttc passes the host it connects to,
/// and `--sni` asks for another name. Nothing is skipped.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A byte stream to the broker, whatever carries it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The URL of the WebSocket endpoint (`ws://host:port/path` or `wss://…`).
pub fn ws_url(target: &Target, path: &str) -> String {
    let scheme = if target.transport.tls.is_some() {
        "wss"
    } else {
        "ws"
    };
    let host = if target.host.contains(':') && !target.host.starts_with('[') {
        format!("[{}]", target.host)
    } else {
        target.host.clone()
    };
    format!("{scheme}://{host}:{}{path}", target.port)
}

/// Opens a connection to the broker over the target's transport (TCP
/// connect, TLS handshake, WebSocket upgrade as configured). Errors are
/// described for a failure message.
pub async fn connect(target: &Target) -> Result<Box<dyn Io>, String> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("TCP connect failed: {e}"))?;
    tcp.set_nodelay(true).ok();
    let t = &target.transport;
    let tls_err = |e: io::Error| {
        let hint = if e.to_string().contains("CaUsedAsEndEntity") {
            " (the broker's certificate is marked as a CA: a self-signed \
             server certificate needs basicConstraints CA:FALSE)"
        } else {
            ""
        };
        format!("TLS handshake failed: {e}{hint}")
    };
    Ok(match (&t.tls, &t.ws_path) {
        (None, None) => Box::new(tcp),
        (Some(tls), None) => Box::new(tls.wrap(tcp).await.map_err(tls_err)?),
        (None, Some(path)) => Box::new(WsIo::connect(&ws_url(target, path), tcp).await?),
        (Some(tls), Some(path)) => {
            let stream = tls.wrap(tcp).await.map_err(tls_err)?;
            Box::new(WsIo::connect(&ws_url(target, path), stream).await?)
        }
    })
}

/// The broker address, port and transport to give rumqttc's `MqttOptions`
/// (for WebSocket the address is the URL, as rumqttc expects).
pub fn rumqttc_endpoint(target: &Target) -> (String, u16, rumqttc::Transport) {
    let t = &target.transport;
    let tls = |c: &TlsClient| rumqttc::TlsConfiguration::Rustls(c.rumqttc_config.clone());
    match (&t.tls, &t.ws_path) {
        (None, None) => (target.host.clone(), target.port, rumqttc::Transport::Tcp),
        (Some(c), None) => (
            target.host.clone(),
            target.port,
            rumqttc::Transport::Tls(tls(c)),
        ),
        (None, Some(path)) => (ws_url(target, path), target.port, rumqttc::Transport::Ws),
        (Some(c), Some(path)) => (
            ws_url(target, path),
            target.port,
            rumqttc::Transport::Wss(tls(c)),
        ),
    }
}

/// A WebSocket client connection seen as a byte stream: what is written
/// goes out as binary messages (at most [`WS_MESSAGE_MAX`] bytes each, sent
/// on flush), and the payloads of binary messages received are read back in
/// order. Pings are answered by tungstenite; a close frame or the end of
/// the connection reads as end of file; a text message is an error (MQTT
/// over WebSocket is binary only).
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// What is left of the last binary message received.
    pending: Bytes,
    eof: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// Upgrades `stream` to a WebSocket at `url`, asking for the `mqtt`
    /// subprotocol and requiring the broker to accept it.
    pub async fn connect(url: &str, stream: S) -> Result<WsIo<S>, String> {
        let mut request = url
            .into_client_request()
            .map_err(|e| format!("WebSocket URL {url}: {e}"))?;
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(WS_SUBPROTOCOL),
        );
        // No batching of our frames: every flush puts them on the wire.
        let config = WebSocketConfig::default().write_buffer_size(0);
        let (ws, response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(|e| format!("WebSocket upgrade at {url} failed: {e}"))?;
        let chosen = response.headers().get("sec-websocket-protocol");
        if chosen.and_then(|v| v.to_str().ok()) != Some(WS_SUBPROTOCOL) {
            return Err(format!(
                "WebSocket upgrade at {url}: the broker chose subprotocol {chosen:?}, not {WS_SUBPROTOCOL:?}"
            ));
        }
        Ok(WsIo {
            ws,
            pending: Bytes::new(),
            eof: false,
        })
    }
}

fn ws_io_error(e: tungstenite::Error) -> io::Error {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, e)
        }
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            io::Error::new(io::ErrorKind::UnexpectedEof, e)
        }
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.ws.poll_next_unpin(cx)) {
                None | Some(Ok(Message::Close(_))) => this.eof = true,
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text WebSocket message (MQTT uses binary ones)",
                    )));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(e)) => return Poll::Ready(Err(ws_io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.ws.poll_ready_unpin(cx)).map_err(ws_io_error)?;
        let n = buf.len().min(WS_MESSAGE_MAX);
        this.ws
            .start_send_unpin(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(ws_io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().ws.poll_flush_unpin(cx).map_err(ws_io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().ws.poll_close_unpin(cx).map_err(ws_io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    /// A WebSocket server on the far end of an in-memory pipe, choosing
    /// `subprotocol` (or none) in its reply.
    // The callback's error type is tungstenite's, not ours to shrink.
    #[allow(clippy::result_large_err)]
    async fn pair(
        subprotocol: Option<&'static str>,
    ) -> (
        Result<WsIo<DuplexStream>, String>,
        WebSocketStream<DuplexStream>,
    ) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let accept = tokio_tungstenite::accept_hdr_async(
            server,
            move |req: &Request, mut resp: Response| {
                assert_eq!(req.uri().path(), "/mqtt");
                assert_eq!(
                    req.headers()
                        .get("sec-websocket-protocol")
                        .map(|v| v.to_str().unwrap()),
                    Some("mqtt")
                );
                if let Some(p) = subprotocol {
                    resp.headers_mut()
                        .insert("sec-websocket-protocol", HeaderValue::from_static(p));
                }
                Ok(resp)
            },
        );
        let (client, server) =
            tokio::join!(WsIo::connect("ws://127.0.0.1:1883/mqtt", client), accept);
        (client, server.expect("server handshake"))
    }

    #[tokio::test]
    async fn ws_bytes_travel_as_binary_messages_of_bounded_size() {
        let (client, mut server) = pair(Some("mqtt")).await;
        let mut client = client.expect("client handshake");
        let big: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        client.write_all(&big).await.unwrap();
        client.flush().await.unwrap();
        let mut got = Vec::new();
        while got.len() < big.len() {
            match server.next().await.unwrap().unwrap() {
                Message::Binary(b) => {
                    assert!(b.len() <= WS_MESSAGE_MAX, "message of {} bytes", b.len());
                    got.extend_from_slice(&b);
                }
                other => panic!("expected a binary message, got {other:?}"),
            }
        }
        assert_eq!(got, big);

        // Two messages read back as one byte stream, split as the reader asks.
        server
            .send(Message::Binary(Bytes::from_static(b"\x20\x02")))
            .await
            .unwrap();
        server
            .send(Message::Binary(Bytes::from_static(b"\x00\x00\xd0")))
            .await
            .unwrap();
        server.send(Message::Ping(Bytes::new())).await.unwrap();
        server
            .send(Message::Binary(Bytes::from_static(b"\x00")))
            .await
            .unwrap();
        let mut buf = [0u8; 6];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, *b"\x20\x02\x00\x00\xd0\x00");

        // A close frame reads as end of file.
        server.close(None).await.unwrap();
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn ws_text_message_is_an_error() {
        let (client, mut server) = pair(Some("mqtt")).await;
        let mut client = client.expect("client handshake");
        server.send(Message::text("hello")).await.unwrap();
        let err = client.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn ws_requires_the_mqtt_subprotocol() {
        let (client, _server) = pair(None).await;
        let err = client.err().expect("refused without a subprotocol");
        assert!(err.contains("subprotocol"), "{err}");
    }

    #[test]
    fn tls_settings_need_a_readable_certificate() {
        let err = TlsClient::from_pem(b"not a pem", "localhost", "localhost").unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        let err =
            TlsClient::from_file("/nonexistent/ca.pem", "localhost", "localhost").unwrap_err();
        assert!(err.starts_with("/nonexistent/ca.pem: "), "{err}");
    }

    #[test]
    fn names_and_urls() {
        let mut t = crate::scenario::Config::new("::1", 8883).target;
        assert_eq!(t.transport.name(), "tcp");
        assert_eq!(ws_url(&t, "/mqtt"), "ws://[::1]:8883/mqtt");
        t.transport.ws_path = Some("/mqtt".into());
        assert_eq!(t.transport.name(), "ws");
        let (addr, _, transport) = rumqttc_endpoint(&t);
        assert_eq!(addr, "ws://[::1]:8883/mqtt");
        assert!(matches!(transport, rumqttc::Transport::Ws));
    }
}
