//! WebSocket as a sans-IO byte stage on `tungstenite`.
//!
//! ```text
//!   bytes from below ─▶ feed ─▶ [WsStage] ─▶ take_inbound ─▶ MQTT bytes
//!   bytes to below ◀─ take_outbound_wire ◀─ [WsStage] ◀─ write_outbound ◀─ MQTT bytes
//! ```
//!
//! The stage answers the HTTP upgrade on the configured path, accepting the
//! `mqtt` subprotocol (echoed in the reply), the older `mqttv3.1`, or none at
//! all (as Mosquitto does). Any other path gets `404`, a request that offers
//! only other subprotocols `400`, a request that is not a WebSocket upgrade
//! `400`. Binary messages carry MQTT bytes as a plain stream, so an MQTT
//! packet may span messages and a message may hold several packets. Text
//! messages close the connection ([MQTT-6.0.0-1]); pings are answered with
//! pongs; a close is answered and ends the stage.
//!
//! tungstenite works over `Read + Write`; here that is an in-memory duplex
//! that reads from the bytes fed so far (`WouldBlock` when none are left) and
//! writes to a `Vec`. After every [`WsStage::feed`] and
//! [`WsStage::write_outbound`] the runtime calls
//! [`WsStage::take_outbound_wire`] and sends what it got.
//!
//! Bounds: the HTTP request may be at most [`MAX_HANDSHAKE_BYTES`]; a frame
//! or message larger than the configured maximum fails the stage with a
//! `1009` close; decoded bytes not yet taken are capped at twice that
//! maximum. Outgoing data leaves through [`WsStage::take_outbound_wire`] into
//! the runtime's write buffer, which `limits.outbound_buffer_bytes` bounds.

use std::fmt;
use std::io::{self, Read, Write};

use tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response, ServerHandshake, write_response,
};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{WebSocket, WebSocketConfig};
use tungstenite::{Error as TsError, Message};

/// Largest HTTP upgrade request accepted.
pub const MAX_HANDSHAKE_BYTES: usize = 16 * 1024;

/// Subprotocols accepted, in order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Why the WebSocket stage failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum WsError {
    /// The upgrade request was refused (wrong path, bad subprotocol, not a
    /// WebSocket request, too large); an HTTP error reply is waiting in
    /// [`WsStage::take_outbound_wire`].
    Handshake(String),
    /// The peer broke the WebSocket protocol.
    Protocol(String),
    /// A frame or message exceeded the configured maximum.
    TooLarge {
        /// The configured maximum, in bytes.
        max: usize,
    },
    /// A text message arrived; MQTT over WebSocket is binary only
    /// ([MQTT-6.0.0-1]).
    TextMessage,
    /// Decoded bytes were not taken and reached the cap.
    InboundFull,
    /// Data was written before the handshake completed.
    NotOpen,
    /// The stage is closed or failed.
    Closed,
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::Handshake(why) => write!(f, "WebSocket handshake refused: {why}"),
            WsError::Protocol(why) => write!(f, "WebSocket protocol error: {why}"),
            WsError::TooLarge { max } => {
                write!(f, "WebSocket frame or message larger than {max} bytes")
            }
            WsError::TextMessage => {
                f.write_str("WebSocket text message: MQTT needs binary messages [MQTT-6.0.0-1]")
            }
            WsError::InboundFull => f.write_str("WebSocket inbound buffer full (not taken)"),
            WsError::NotOpen => f.write_str("WebSocket handshake not complete"),
            WsError::Closed => f.write_str("WebSocket is closed"),
        }
    }
}

impl std::error::Error for WsError {}

/// An in-memory `Read + Write` for tungstenite: reads take bytes that were
/// pushed in, writes collect into a `Vec`.
#[derive(Debug, Default)]
pub(crate) struct Duplex {
    input: Vec<u8>,
    read_pos: usize,
    output: Vec<u8>,
    /// While true, reads stop at the end of the HTTP header, so bytes a client
    /// sends straight after its request are kept for the WebSocket layer
    /// (tungstenite's handshake rejects anything it reads past the header).
    header_only: bool,
}

impl Duplex {
    pub(crate) fn push(&mut self, data: &[u8]) {
        if self.read_pos == self.input.len() {
            self.input.clear();
            self.read_pos = 0;
        }
        self.input.extend_from_slice(data);
    }

    pub(crate) fn take_output(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.output);
    }

    fn unread(&self) -> usize {
        self.input.len() - self.read_pos
    }
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = &self.input[self.read_pos..];
        if available.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = available.len().min(buf.len());
        if self.header_only {
            if let Some(end) = available.windows(4).position(|w| w == b"\r\n\r\n") {
                n = n.min(end + 4);
            }
        }
        buf[..n].copy_from_slice(&available[..n]);
        self.read_pos += n;
        Ok(n)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks the request path and picks the subprotocol.
#[derive(Debug)]
struct Upgrade {
    path: String,
}

fn refuse(status: StatusCode, why: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(format!("{why}\n")));
    *response.status_mut() = status;
    response
}

impl Callback for Upgrade {
    fn on_request(
        self,
        request: &Request,
        mut response: Response,
    ) -> Result<Response, ErrorResponse> {
        if request.uri().path() != self.path {
            return Err(refuse(StatusCode::NOT_FOUND, "no WebSocket endpoint here"));
        }
        let offered: Vec<&str> = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if offered.is_empty() {
            return Ok(response);
        }
        let Some(chosen) = SUBPROTOCOLS
            .iter()
            .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
        else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "unsupported WebSocket subprotocol (use \"mqtt\")",
            ));
        };
        response
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
        Ok(response)
    }
}

enum State {
    Handshaking(MidHandshake<ServerHandshake<Duplex, Upgrade>>),
    Open(WebSocket<Duplex>),
    Done,
}

/// The server side of one WebSocket connection, driven by bytes.
pub struct WsStage {
    state: State,
    inbound: Vec<u8>,
    wire: Vec<u8>,
    handshake_bytes: usize,
    max_message_size: usize,
    failed: bool,
}

impl fmt::Debug for WsStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Handshaking(_) => "handshaking",
            State::Open(_) => "open",
            State::Done => "done",
        };
        f.debug_struct("WsStage")
            .field("state", &state)
            .field("inbound", &self.inbound.len())
            .field("wire", &self.wire.len())
            .finish()
    }
}

impl WsStage {
    /// A stage waiting for the HTTP upgrade request on `path` (for example
    /// `/mqtt`). Frames and messages larger than `max_message_size` bytes
    /// fail the stage; the runtime passes `limits.max_packet_size` or more.
    pub fn new(path: &str, max_message_size: usize) -> WsStage {
        let max_message_size = max_message_size.max(1);
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            // Frames go straight to the duplex's Vec; batching there buys nothing.
            .write_buffer_size(0)
            .max_message_size(Some(max_message_size))
            .max_frame_size(Some(max_message_size));
        let duplex = Duplex {
            header_only: true,
            ..Duplex::default()
        };
        let upgrade = Upgrade {
            path: path.to_owned(),
        };
        WsStage {
            state: State::Handshaking(ServerHandshake::start(duplex, upgrade, Some(config))),
            inbound: Vec::new(),
            wire: Vec::new(),
            handshake_bytes: 0,
            max_message_size,
            failed: false,
        }
    }

    /// Takes bytes from the layer below (socket or TLS plaintext).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), WsError> {
        if self.failed {
            return Err(WsError::Closed);
        }
        match std::mem::replace(&mut self.state, State::Done) {
            State::Handshaking(mut mid) => {
                self.handshake_bytes += data.len();
                let duplex = mid.get_mut().get_mut();
                duplex.push(data);
                if self.handshake_bytes > MAX_HANDSHAKE_BYTES && duplex.header_only {
                    // Only fail if the header is still incomplete: the excess
                    // may be frames that follow a complete request.
                    let unread = &duplex.input[duplex.read_pos..];
                    if !unread.windows(4).any(|w| w == b"\r\n\r\n") {
                        self.failed = true;
                        self.wire.extend_from_slice(
                            b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
                              connection: close\r\ncontent-length: 0\r\n\r\n",
                        );
                        return Err(WsError::Handshake("request too large".into()));
                    }
                }
                self.handshake(mid)
            }
            State::Open(mut ws) => {
                ws.get_mut().push(data);
                self.state = State::Open(ws);
                self.read_frames()
            }
            // Bytes after a completed close are ignored, as the RFC allows.
            State::Done => Ok(()),
        }
    }

    fn handshake(
        &mut self,
        mid: MidHandshake<ServerHandshake<Duplex, Upgrade>>,
    ) -> Result<(), WsError> {
        match mid.handshake() {
            Ok(mut ws) => {
                let duplex = ws.get_mut();
                duplex.header_only = false;
                duplex.take_output(&mut self.wire);
                self.state = State::Open(ws);
                self.read_frames()
            }
            Err(HandshakeError::Interrupted(mut mid)) => {
                mid.get_mut().get_mut().take_output(&mut self.wire);
                self.state = State::Handshaking(mid);
                Ok(())
            }
            Err(HandshakeError::Failure(error)) => {
                self.failed = true;
                // tungstenite wrote the refusal into the duplex it consumed;
                // write it again from the response it hands back.
                match error {
                    TsError::Http(response) => {
                        let _ = write_response(&mut self.wire, &response);
                        if let Some(body) = response.body() {
                            self.wire.extend_from_slice(body);
                        }
                        Err(WsError::Handshake(format!("HTTP {}", response.status())))
                    }
                    other => {
                        self.wire.extend_from_slice(
                            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\
                              content-length: 0\r\n\r\n",
                        );
                        Err(WsError::Handshake(other.to_string()))
                    }
                }
            }
        }
    }

    fn read_frames(&mut self) -> Result<(), WsError> {
        let State::Open(ws) = &mut self.state else {
            return Ok(());
        };
        let result = loop {
            if self.inbound.len() >= 2 * self.max_message_size {
                break Err(WsError::InboundFull);
            }
            match ws.read() {
                Ok(Message::Binary(bytes)) => self.inbound.extend_from_slice(&bytes),
                Ok(Message::Text(_)) => break Err(WsError::TextMessage),
                // tungstenite queues the pong and the close reply itself.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(_)) => {}
                Err(TsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(TsError::ConnectionClosed | TsError::AlreadyClosed) => {
                    let _ = ws.flush();
                    ws.get_mut().take_output(&mut self.wire);
                    self.state = State::Done;
                    return Ok(());
                }
                Err(TsError::Capacity(_)) => {
                    break Err(WsError::TooLarge {
                        max: self.max_message_size,
                    });
                }
                Err(other) => break Err(WsError::Protocol(other.to_string())),
            }
        };
        if let Err(error) = &result {
            self.failed = true;
            let code = match error {
                WsError::TooLarge { .. } | WsError::InboundFull => CloseCode::Size,
                WsError::TextMessage => CloseCode::Unsupported,
                _ => CloseCode::Protocol,
            };
            let _ = ws.close(Some(CloseFrame {
                code,
                reason: "".into(),
            }));
        }
        // Pushes queued pongs and close replies into the duplex; errors here
        // only mean the close handshake has finished.
        let _ = ws.flush();
        ws.get_mut().take_output(&mut self.wire);
        if !ws.can_read() && !ws.can_write() {
            self.state = State::Done;
        }
        result
    }

    /// Moves the MQTT bytes received so far to the end of `out`.
    pub fn take_inbound(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.inbound);
    }

    /// Sends `data` as one binary message.
    pub fn write_outbound(&mut self, data: &[u8]) -> Result<(), WsError> {
        if self.failed {
            return Err(WsError::Closed);
        }
        match &mut self.state {
            State::Handshaking(_) => Err(WsError::NotOpen),
            State::Done => Err(WsError::Closed),
            State::Open(ws) => {
                if data.is_empty() {
                    return Ok(());
                }
                let sent = ws.send(Message::Binary(data.to_vec().into()));
                ws.get_mut().take_output(&mut self.wire);
                sent.map_err(|e| match e {
                    TsError::ConnectionClosed | TsError::AlreadyClosed => WsError::Closed,
                    TsError::Protocol(p) => {
                        if ws.can_write() {
                            WsError::Protocol(p.to_string())
                        } else {
                            WsError::Closed
                        }
                    }
                    other => WsError::Protocol(other.to_string()),
                })
            }
        }
    }

    /// Starts a clean close (code 1000). Take the wire bytes afterwards.
    pub fn close(&mut self) {
        if let State::Open(ws) = &mut self.state {
            let _ = ws.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }));
            let _ = ws.flush();
            ws.get_mut().take_output(&mut self.wire);
        }
    }

    /// Appends everything that should be sent to the layer below to `out`.
    pub fn take_outbound_wire(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.wire);
    }

    /// Whether the upgrade handshake has completed.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_)) && !self.failed
    }

    /// Whether the stage will carry no more data: the close handshake ended,
    /// or the stage failed. Send the remaining wire bytes, then close.
    pub fn is_closed(&self) -> bool {
        self.failed || matches!(self.state, State::Done)
    }

    /// Bytes fed but not yet decoded (they wait for the rest of a frame).
    pub fn pending_input(&self) -> usize {
        match &self.state {
            State::Handshaking(mid) => mid.get_ref().get_ref().unread(),
            State::Open(ws) => ws.get_ref().unread(),
            State::Done => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::client::IntoClientRequest;
    use tungstenite::handshake::client::ClientHandshake;
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    const MAX: usize = 64 * 1024;

    fn request(path: &str, protocols: Option<&str>) -> Request {
        let mut req = format!("ws://localhost{path}")
            .into_client_request()
            .expect("request");
        if let Some(p) = protocols {
            req.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(p).expect("h"),
            );
        }
        req
    }

    /// Runs the client handshake against `server`; returns the client socket
    /// and the response's subprotocol.
    fn connect(server: &mut WsStage, req: Request) -> (WebSocket<Duplex>, Option<String>) {
        let mut mid = match ClientHandshake::start(Duplex::default(), req, None)
            .expect("start")
            .handshake()
        {
            Err(HandshakeError::Interrupted(mid)) => mid,
            other => panic!("unexpected {:?}", other.map(|_| ())),
        };
        for _ in 0..10 {
            let mut bytes = Vec::new();
            mid.get_mut().get_mut().take_output(&mut bytes);
            server.feed(&bytes).expect("server feed");
            let mut reply = Vec::new();
            server.take_outbound_wire(&mut reply);
            mid.get_mut().get_mut().push(&reply);
            match mid.handshake() {
                Ok((ws, response)) => {
                    let proto = response
                        .headers()
                        .get("sec-websocket-protocol")
                        .map(|v| v.to_str().expect("ascii").to_owned());
                    return (ws, proto);
                }
                Err(HandshakeError::Interrupted(m)) => mid = m,
                Err(HandshakeError::Failure(e)) => panic!("client handshake: {e}"),
            }
        }
        panic!("handshake did not finish");
    }

    /// Client → server; returns the server's result.
    fn send(client: &mut WebSocket<Duplex>, server: &mut WsStage) -> Result<(), WsError> {
        let _ = client.flush();
        let mut bytes = Vec::new();
        client.get_mut().take_output(&mut bytes);
        server.feed(&bytes)
    }

    /// Server → client; returns the messages the client read.
    fn receive(server: &mut WsStage, client: &mut WebSocket<Duplex>) -> Vec<Message> {
        let mut bytes = Vec::new();
        server.take_outbound_wire(&mut bytes);
        client.get_mut().push(&bytes);
        let mut messages = Vec::new();
        loop {
            match client.read() {
                Ok(m) => messages.push(m),
                Err(TsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(TsError::ConnectionClosed) => break,
                Err(e) => panic!("client read: {e}"),
            }
        }
        messages
    }

    #[test]
    fn handshake_echoes_mqtt_subprotocol() {
        let mut server = WsStage::new("/mqtt", MAX);
        let (_, proto) = connect(&mut server, request("/mqtt", Some("mqtt")));
        assert_eq!(proto.as_deref(), Some("mqtt"));
        assert!(server.is_open());

        let mut server = WsStage::new("/mqtt", MAX);
        let (_, proto) = connect(&mut server, request("/mqtt", Some("foo, mqttv3.1")));
        assert_eq!(proto.as_deref(), Some("mqttv3.1"));

        let mut server = WsStage::new("/mqtt", MAX);
        let (_, proto) = connect(&mut server, request("/mqtt", None));
        assert_eq!(proto, None, "clients that ask for none get none");
        assert!(server.is_open());
    }

    #[test]
    fn binary_frames_form_one_byte_stream() {
        let mut server = WsStage::new("/mqtt", MAX);
        let (mut client, _) = connect(&mut server, request("/mqtt", Some("mqtt")));
        // One MQTT PINGREQ split over two messages, then two packets in one.
        client.write(Message::Binary(vec![0xC0].into())).expect("w");
        client.write(Message::Binary(vec![0x00].into())).expect("w");
        client
            .write(Message::Binary(vec![0xC0, 0x00, 0xE0, 0x00].into()))
            .expect("w");
        // A fragmented message: binary start + continuation.
        client
            .write(Message::Frame(Frame::message(
                vec![0x30, 0x03],
                OpCode::Data(Data::Binary),
                false,
            )))
            .expect("w");
        client
            .write(Message::Frame(Frame::message(
                vec![0x00, 0x01, b'a'],
                OpCode::Data(Data::Continue),
                true,
            )))
            .expect("w");
        send(&mut client, &mut server).expect("feed");
        let mut got = Vec::new();
        server.take_inbound(&mut got);
        assert_eq!(
            got,
            [
                0xC0, 0x00, 0xC0, 0x00, 0xE0, 0x00, 0x30, 0x03, 0x00, 0x01, b'a'
            ]
        );

        // Wire bytes delivered one at a time still decode.
        client
            .write(Message::Binary(vec![1, 2, 3, 4, 5].into()))
            .expect("w");
        client.flush().expect("flush");
        let mut wire = Vec::new();
        client.get_mut().take_output(&mut wire);
        for b in &wire {
            server.feed(std::slice::from_ref(b)).expect("feed");
        }
        let mut got = Vec::new();
        server.take_inbound(&mut got);
        assert_eq!(got, [1, 2, 3, 4, 5]);
        assert_eq!(server.pending_input(), 0);

        // Server → client: each write is one binary message.
        server.write_outbound(&[0x20, 0x02, 0, 0]).expect("out");
        server.write_outbound(&[0xD0, 0x00]).expect("out");
        let messages = receive(&mut server, &mut client);
        assert_eq!(
            messages,
            [
                Message::Binary(vec![0x20, 0x02, 0, 0].into()),
                Message::Binary(vec![0xD0, 0x00].into())
            ]
        );
    }

    #[test]
    fn frames_sent_right_after_the_request_are_kept() {
        let mut server = WsStage::new("/mqtt", MAX);
        let req = request("/mqtt", Some("mqtt"));
        let mut mid = match ClientHandshake::start(Duplex::default(), req, None)
            .expect("start")
            .handshake()
        {
            Err(HandshakeError::Interrupted(mid)) => mid,
            _ => panic!("expected to wait for the reply"),
        };
        let mut bytes = Vec::new();
        mid.get_mut().get_mut().take_output(&mut bytes);
        // Append a masked binary frame the way an eager client would.
        let mut frame = Frame::message(vec![0xC0, 0x00], OpCode::Data(Data::Binary), true);
        frame.header_mut().mask = Some([0x12, 0x34, 0x56, 0x78]);
        frame.format(&mut bytes).expect("format");
        server.feed(&bytes).expect("feed");
        let mut got = Vec::new();
        server.take_inbound(&mut got);
        assert_eq!(got, [0xC0, 0x00]);
    }

    #[test]
    fn ping_is_answered_and_close_is_handled() {
        let mut server = WsStage::new("/mqtt", MAX);
        let (mut client, _) = connect(&mut server, request("/mqtt", Some("mqtt")));
        client
            .write(Message::Ping(vec![9, 9].into()))
            .expect("ping");
        send(&mut client, &mut server).expect("feed");
        let messages = receive(&mut server, &mut client);
        assert_eq!(messages, [Message::Pong(vec![9, 9].into())]);

        client.close(None).expect("close");
        send(&mut client, &mut server).expect("feed close");
        assert!(server.is_closed());
        let messages = receive(&mut server, &mut client);
        assert!(
            matches!(messages.as_slice(), [Message::Close(_)]),
            "{messages:?}"
        );
        assert!(matches!(server.write_outbound(b"x"), Err(WsError::Closed)));
    }

    #[test]
    fn server_initiated_close() {
        let mut server = WsStage::new("/mqtt", MAX);
        let (mut client, _) = connect(&mut server, request("/mqtt", Some("mqtt")));
        server.close();
        let messages = receive(&mut server, &mut client);
        assert!(
            matches!(messages.as_slice(), [Message::Close(Some(f))] if f.code == CloseCode::Normal)
        );
        // The client's reply completes the close.
        send(&mut client, &mut server).expect("reply");
        assert!(server.is_closed());
    }

    fn refused(path: &str, req: Request) -> (WsError, String) {
        let mut server = WsStage::new(path, MAX);
        let mut mid = match ClientHandshake::start(Duplex::default(), req, None)
            .expect("start")
            .handshake()
        {
            Err(HandshakeError::Interrupted(mid)) => mid,
            _ => panic!("expected to wait"),
        };
        let mut bytes = Vec::new();
        mid.get_mut().get_mut().take_output(&mut bytes);
        let err = server.feed(&bytes).expect_err("refused");
        assert!(server.is_closed());
        let mut reply = Vec::new();
        server.take_outbound_wire(&mut reply);
        (err, String::from_utf8(reply).expect("http"))
    }

    #[test]
    fn wrong_path_gets_404() {
        let (err, reply) = refused("/mqtt", request("/other", Some("mqtt")));
        assert!(matches!(err, WsError::Handshake(_)), "{err}");
        assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    }

    #[test]
    fn foreign_subprotocol_gets_400() {
        let (_, reply) = refused("/mqtt", request("/mqtt", Some("chat, stomp")));
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    }

    #[test]
    fn plain_http_gets_400() {
        let mut server = WsStage::new("/mqtt", MAX);
        let err = server
            .feed(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect_err("not an upgrade");
        assert!(matches!(err, WsError::Handshake(_)));
        let mut reply = Vec::new();
        server.take_outbound_wire(&mut reply);
        assert!(reply.starts_with(b"HTTP/1.1 400"));
    }

    #[test]
    fn oversized_request_is_refused() {
        let mut server = WsStage::new("/mqtt", MAX);
        let mut junk = b"GET /mqtt HTTP/1.1\r\nX: ".to_vec();
        junk.resize(MAX_HANDSHAKE_BYTES + 10, b'a');
        let err = server.feed(&junk).expect_err("too big");
        assert!(matches!(err, WsError::Handshake(_)));
        let mut reply = Vec::new();
        server.take_outbound_wire(&mut reply);
        assert!(reply.starts_with(b"HTTP/1.1 431"));
    }

    #[test]
    fn oversized_message_fails_with_1009() {
        let mut server = WsStage::new("/mqtt", 16);
        let (mut client, _) = connect(&mut server, request("/mqtt", Some("mqtt")));
        client
            .write(Message::Binary(vec![0u8; 17].into()))
            .expect("w");
        let err = send(&mut client, &mut server).expect_err("too large");
        assert!(matches!(err, WsError::TooLarge { max: 16 }), "{err}");
        let messages = receive(&mut server, &mut client);
        assert!(
            matches!(messages.as_slice(), [Message::Close(Some(f))] if f.code == CloseCode::Size),
            "{messages:?}"
        );
        assert!(matches!(server.feed(b"x"), Err(WsError::Closed)));
    }

    #[test]
    fn untaken_inbound_is_capped() {
        let mut server = WsStage::new("/mqtt", 16);
        let (mut client, _) = connect(&mut server, request("/mqtt", Some("mqtt")));
        for _ in 0..3 {
            client
                .write(Message::Binary(vec![0u8; 16].into()))
                .expect("w");
        }
        let err = send(&mut client, &mut server).expect_err("full");
        assert!(matches!(err, WsError::InboundFull), "{err}");
        let mut got = Vec::new();
        server.take_inbound(&mut got);
        assert_eq!(
            got.len(),
            32,
            "what arrived before the cap is still delivered"
        );
    }

    #[test]
    fn text_message_closes_the_connection() {
        let mut server = WsStage::new("/mqtt", MAX);
        let (mut client, _) = connect(&mut server, request("/mqtt", Some("mqtt")));
        client.write(Message::text("hello")).expect("w");
        let err = send(&mut client, &mut server).expect_err("text");
        assert!(matches!(err, WsError::TextMessage));
        assert!(server.is_closed());
    }

    #[test]
    fn writes_before_the_handshake_are_refused() {
        let mut server = WsStage::new("/mqtt", MAX);
        assert!(matches!(server.write_outbound(b"x"), Err(WsError::NotOpen)));
    }

    /// TCP → TLS → WS → MQTT bytes, all in memory.
    #[test]
    fn stacks_on_the_tls_stage() {
        use crate::tls::tests::server_and_client;
        use rustls::ClientConnection;

        let (mut tls, mut tls_client) = server_and_client("ws-stack");
        let mut ws = WsStage::new("/mqtt", MAX);

        // Moves the WS client's output through client TLS → server TLS → server
        // WS, and the server's output back the same way.
        fn pump(
            ws_client: &mut Duplex,
            tls_client: &mut ClientConnection,
            tls: &mut crate::tls::TlsStage,
            ws: &mut WsStage,
        ) {
            for _ in 0..20 {
                let mut plain = Vec::new();
                ws_client.take_output(&mut plain);
                if !plain.is_empty() {
                    tls_client
                        .writer()
                        .write_all(&plain)
                        .expect("tls client write");
                }
                let mut cipher = Vec::new();
                while tls_client.wants_write() {
                    tls_client.write_tls(&mut cipher).expect("tls client");
                }
                tls.feed_ciphertext(&cipher).expect("tls feed");
                let mut up = Vec::new();
                tls.take_plaintext(&mut up);
                ws.feed(&up).expect("ws feed");
                let mut down = Vec::new();
                ws.take_outbound_wire(&mut down);
                if !down.is_empty() {
                    tls.write_plaintext(&down).expect("tls write");
                }
                let mut back = Vec::new();
                tls.take_ciphertext(&mut back);
                let mut slice = &back[..];
                while !slice.is_empty() {
                    tls_client.read_tls(&mut slice).expect("client read_tls");
                    tls_client.process_new_packets().expect("client process");
                }
                let mut received = Vec::new();
                let _ = tls_client.reader().read_to_end(&mut received);
                ws_client.push(&received);
                if plain.is_empty() && cipher.is_empty() && back.is_empty() {
                    return;
                }
            }
            panic!("did not settle");
        }

        let mut mid =
            match ClientHandshake::start(Duplex::default(), request("/mqtt", Some("mqtt")), None)
                .expect("start")
                .handshake()
            {
                Err(HandshakeError::Interrupted(mid)) => mid,
                _ => panic!("expected to wait"),
            };
        let mut client = loop {
            pump(mid.get_mut().get_mut(), &mut tls_client, &mut tls, &mut ws);
            match mid.handshake() {
                Ok((client, _)) => break client,
                Err(HandshakeError::Interrupted(m)) => mid = m,
                Err(HandshakeError::Failure(e)) => panic!("{e}"),
            }
        };
        assert!(ws.is_open());

        client
            .write(Message::Binary(vec![0x10, 0x02, 0xAA, 0xBB].into()))
            .expect("w");
        client.flush().expect("flush");
        pump(client.get_mut(), &mut tls_client, &mut tls, &mut ws);
        let mut mqtt = Vec::new();
        ws.take_inbound(&mut mqtt);
        assert_eq!(mqtt, [0x10, 0x02, 0xAA, 0xBB]);

        ws.write_outbound(&[0x20, 0x02, 0x00, 0x00]).expect("out");
        pump(client.get_mut(), &mut tls_client, &mut tls, &mut ws);
        assert_eq!(
            client.read().expect("read"),
            Message::Binary(vec![0x20, 0x02, 0x00, 0x00].into())
        );
    }
}
