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
//! tungstenite parses the upgrade request, over an in-memory duplex that
//! reads from the bytes fed so far (`WouldBlock` when none are left) and
//! writes to a `Vec`. Frames after it are the stage's own (RFC 6455 section
//! 5, server side), so that it decides what it holds. After every
//! [`WsStage::feed`] and [`WsStage::write_outbound`] the runtime calls
//! [`WsStage::take_outbound_wire`] and sends what it got.
//!
//! Bounds, each a peer cannot push past:
//! * the HTTP request: at most [`MAX_HANDSHAKE_BYTES`];
//! * a message, in one frame or many: at most the configured maximum, else
//!   the stage fails with a `1009` close as soon as a frame header says so;
//!   payload is handed on as it arrives, never buffered until a frame or
//!   message ends;
//! * decoded bytes not yet taken: twice that maximum;
//! * control frames: at most [`MAX_CONTROL_PAYLOAD`] bytes and never
//!   fragmented, else a `1002` close, checked on the header;
//! * pongs: one waits at a time; a ping while a pong is unsent replaces it
//!   (RFC 6455 5.5.3 lets a server answer only the latest), so a peer that
//!   pings and never reads costs nothing more;
//! * bytes waiting to be sent: [`WsStage::with_max_outbound`]; a write when
//!   they have reached it fails with [`WsError::OutboundFull`] (the peer is
//!   not reading) and the stage is done.

use std::fmt;
use std::io::{self, Read, Write};

use tungstenite::Error as TsError;
use tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response, ServerHandshake, write_response,
};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::coding::CloseCode;

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
    /// The bytes waiting to be sent reached the bound
    /// ([`WsStage::with_max_outbound`]): the peer is not reading.
    OutboundFull {
        /// The bound, in bytes.
        max: usize,
    },
    /// A close frame's reason is not UTF-8 (RFC 6455 8.1; close code 1007).
    InvalidCloseReason,
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
            WsError::OutboundFull { max } => write!(
                f,
                "WebSocket peer overran the outbound buffer: {max} bytes wait to be sent"
            ),
            WsError::InvalidCloseReason => f.write_str("WebSocket close reason is not UTF-8"),
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
        // While the header is read, bytes already read are kept: the end of
        // the header may straddle two pushes.
        if self.read_pos == self.input.len() && !self.header_only {
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
            // Look from 3 bytes back, in case `\r\n\r` was read already.
            let from = self.read_pos.saturating_sub(3);
            if let Some(at) = self.input[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                let end = from + at + 4;
                if end > self.read_pos {
                    n = n.min(end - self.read_pos);
                }
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
    /// Boxed: it is large and lasts one round trip; an open connection
    /// should not carry its size.
    Handshaking(Box<MidHandshake<ServerHandshake<Duplex, Upgrade>>>),
    Open(Framing),
    Done,
}

/// Largest payload of a control frame (ping, pong, close), RFC 6455 5.5.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The default for [`WsStage::with_max_outbound`]: the engine's default
/// `limits.outbound_buffer_bytes` (2 MiB).
pub const DEFAULT_MAX_OUTBOUND: usize = 2 * 1024 * 1024;

/// Largest frame header: 2 bytes, a 64-bit length, a 4-byte mask.
const MAX_HEADER: usize = 14;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The frame whose payload is arriving.
#[derive(Debug)]
struct Frame {
    opcode: u8,
    /// Payload bytes still to come.
    remaining: usize,
    mask: [u8; 4],
    /// Payload bytes seen so far, which is where the mask key continues.
    offset: usize,
}

/// The open connection, framed by hand (RFC 6455 section 5) rather than by
/// tungstenite, so that every byte the stage holds is one it chose to
/// hold: binary payloads go straight to the MQTT byte stream, unmasked as
/// they arrive; only a frame header (at most 14 bytes) and a control frame's
/// payload (at most 125) wait here; and the one automatic reply, a pong or
/// a close, is a single slot that a newer one replaces.
#[derive(Debug, Default)]
struct Framing {
    /// Header bytes of the next frame, until it is complete.
    head: Vec<u8>,
    frame: Option<Frame>,
    /// Payload of the control frame under way.
    control: Vec<u8>,
    /// Bytes so far of the binary message under way, while it is
    /// fragmented (no final frame yet).
    message: Option<usize>,
    /// A close frame was sent (or queued): data is no longer delivered.
    close_sent: bool,
    /// Both close frames are exchanged: the stage is done.
    done: bool,
}

impl Framing {
    fn into_state(self) -> State {
        if self.done {
            State::Done
        } else {
            State::Open(self)
        }
    }
}

/// The automatic reply waiting to be taken: at most one per connection.
#[derive(Debug)]
enum Reply {
    /// Answer to the latest ping not yet answered (RFC 6455 5.5.3 allows
    /// answering only the latest).
    Pong(Vec<u8>),
    /// A close frame, ours or the answer to the peer's. Nothing follows it.
    Close(Vec<u8>),
}

/// The server side of one WebSocket connection, driven by bytes.
pub struct WsStage {
    state: State,
    inbound: Vec<u8>,
    wire: Vec<u8>,
    reply: Option<Reply>,
    handshake_bytes: usize,
    max_message_size: usize,
    max_outbound: usize,
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
            .field("outbound", &self.outbound_len())
            .finish()
    }
}

/// Appends one unmasked server frame.
fn put_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        // Each arm checks the range that the header's length field can hold.
        len @ 0..=125 => out.push(len as u8),
        len if u16::try_from(len).is_ok() => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// The payload of a close frame with `code` and no reason.
fn close_payload(code: CloseCode) -> Vec<u8> {
    u16::from(code).to_be_bytes().to_vec()
}

impl WsStage {
    /// A stage waiting for the HTTP upgrade request on `path` (for example
    /// `/mqtt`). Messages larger than `max_message_size` bytes, whether one
    /// frame or many, fail the stage; the runtime passes
    /// `limits.max_packet_size` or more. The outbound bound is
    /// [`DEFAULT_MAX_OUTBOUND`] until [`WsStage::with_max_outbound`].
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
            state: State::Handshaking(Box::new(ServerHandshake::start(
                duplex,
                upgrade,
                Some(config),
            ))),
            inbound: Vec::new(),
            wire: Vec::new(),
            reply: None,
            handshake_bytes: 0,
            max_message_size,
            max_outbound: DEFAULT_MAX_OUTBOUND,
            failed: false,
        }
    }

    /// Bounds the bytes waiting in [`WsStage::take_outbound_wire`]: once
    /// `bytes` or more wait there, [`WsStage::write_outbound`] fails with
    /// [`WsError::OutboundFull`] and the stage is done (the peer stopped
    /// reading). A write into room is taken whole, so the stage holds at
    /// most `bytes` plus one message and its 10-byte header, plus one
    /// pending pong or close frame. The runtime passes
    /// `limits.outbound_buffer_bytes`.
    #[must_use]
    pub fn with_max_outbound(mut self, bytes: usize) -> WsStage {
        self.max_outbound = bytes.max(1);
        self
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
                self.handshake(*mid)
            }
            State::Open(mut framing) => {
                let result = self.read_frames(&mut framing, data);
                self.state = framing.into_state();
                result
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
                // tungstenite's part ends here: keep the reply and whatever
                // followed the request (reads stopped at its end).
                let duplex = ws.get_mut();
                duplex.take_output(&mut self.wire);
                let rest = duplex.input.split_off(duplex.read_pos);
                let mut framing = Framing::default();
                let result = self.read_frames(&mut framing, &rest);
                self.state = framing.into_state();
                result
            }
            Err(HandshakeError::Interrupted(mut mid)) => {
                mid.get_mut().get_mut().take_output(&mut self.wire);
                self.state = State::Handshaking(Box::new(mid));
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

    /// Parses `data` as frames of the open connection. On an error the
    /// stage fails and a close frame with the matching code is queued.
    fn read_frames(&mut self, framing: &mut Framing, data: &[u8]) -> Result<(), WsError> {
        let result = self.parse(framing, data);
        if let Err(error) = &result {
            self.failed = true;
            let code = match error {
                WsError::TooLarge { .. } | WsError::InboundFull => CloseCode::Size,
                WsError::TextMessage => CloseCode::Unsupported,
                WsError::InvalidCloseReason => CloseCode::Invalid,
                _ => CloseCode::Protocol,
            };
            if !framing.close_sent {
                framing.close_sent = true;
                self.reply = Some(Reply::Close(close_payload(code)));
            }
        }
        result
    }

    fn parse(&mut self, framing: &mut Framing, mut data: &[u8]) -> Result<(), WsError> {
        // Once the close handshake is done, what follows is ignored.
        while !data.is_empty() && !framing.done {
            let Some(frame) = &mut framing.frame else {
                let need = header_len(&framing.head);
                let take = (need - framing.head.len()).min(data.len());
                framing.head.extend_from_slice(&data[..take]);
                data = &data[take..];
                if framing.head.len() == header_len(&framing.head) {
                    let frame = self.start_frame(framing)?;
                    framing.head.clear();
                    if frame.remaining == 0 {
                        self.end_frame(framing, frame.opcode)?;
                    } else {
                        framing.frame = Some(frame);
                    }
                }
                continue;
            };
            let take = frame.remaining.min(data.len());
            let (chunk, rest) = data.split_at(take);
            data = rest;
            let into = if frame.opcode >= OP_CLOSE {
                Some(&mut framing.control)
            } else if framing.close_sent {
                // Data after our close frame is read and dropped.
                None
            } else {
                if self.inbound.len() + take > 2 * self.max_message_size {
                    return Err(WsError::InboundFull);
                }
                Some(&mut self.inbound)
            };
            if let Some(into) = into {
                let start = into.len();
                into.extend_from_slice(chunk);
                for (i, byte) in into[start..].iter_mut().enumerate() {
                    *byte ^= frame.mask[(frame.offset + i) % 4];
                }
            }
            frame.offset += take;
            frame.remaining -= take;
            if frame.remaining == 0 {
                let opcode = frame.opcode;
                framing.frame = None;
                self.end_frame(framing, opcode)?;
            }
        }
        Ok(())
    }

    /// Checks a complete header against RFC 6455 and the size limits,
    /// before any of its payload is held.
    fn start_frame(&mut self, framing: &mut Framing) -> Result<Frame, WsError> {
        let head = &framing.head;
        let fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0F;
        if head[0] & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set".into()));
        }
        // A server MUST close the connection on an unmasked frame (5.1).
        if head[1] & 0x80 == 0 {
            return Err(WsError::Protocol("unmasked frame from the client".into()));
        }
        let (len, mask_at) = match head[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([head[2], head[3]])), 4),
            127 => {
                let mut len = [0; 8];
                len.copy_from_slice(&head[2..10]);
                (u64::from_be_bytes(len), 10)
            }
            short => (u64::from(short), 2),
        };
        let mut mask = [0; 4];
        mask.copy_from_slice(&head[mask_at..mask_at + 4]);
        let too_large = WsError::TooLarge {
            max: self.max_message_size,
        };
        let len = usize::try_from(len).map_err(|_| too_large)?;
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(WsError::Protocol("fragmented control frame".into()));
                }
                if len > MAX_CONTROL_PAYLOAD {
                    return Err(WsError::Protocol(format!(
                        "control frame of {len} bytes (at most {MAX_CONTROL_PAYLOAD})"
                    )));
                }
                framing.control.clear();
            }
            OP_TEXT if framing.message.is_none() => return Err(WsError::TextMessage),
            OP_TEXT | OP_BINARY if framing.message.is_some() => {
                return Err(WsError::Protocol(
                    "new message inside a fragmented one".into(),
                ));
            }
            OP_BINARY | OP_CONTINUATION => {
                let so_far = if opcode == OP_BINARY {
                    0
                } else {
                    framing.message.ok_or_else(|| {
                        WsError::Protocol("continuation frame outside a message".into())
                    })?
                };
                let size = so_far.saturating_add(len);
                if size > self.max_message_size {
                    return Err(WsError::TooLarge {
                        max: self.max_message_size,
                    });
                }
                framing.message = (!fin).then_some(size);
            }
            other => {
                return Err(WsError::Protocol(format!("reserved opcode {other:#x}")));
            }
        }
        Ok(Frame {
            opcode,
            remaining: len,
            mask,
            offset: 0,
        })
    }

    /// A frame's payload is complete: answer control frames.
    fn end_frame(&mut self, framing: &mut Framing, opcode: u8) -> Result<(), WsError> {
        match opcode {
            OP_PING if !framing.close_sent => {
                // One slot: a newer ping's pong replaces an unsent one, so a
                // peer that pings and never reads costs 125 bytes at most.
                match &mut self.reply {
                    Some(Reply::Pong(payload)) => {
                        payload.clear();
                        payload.extend_from_slice(&framing.control);
                    }
                    Some(Reply::Close(_)) => {}
                    None => self.reply = Some(Reply::Pong(framing.control.clone())),
                }
            }
            OP_CLOSE => {
                let payload = &framing.control;
                let echo = match payload.len() {
                    0 => Vec::new(),
                    1 => return Err(WsError::Protocol("close frame of 1 byte".into())),
                    _ => {
                        let code = CloseCode::from(u16::from_be_bytes([payload[0], payload[1]]));
                        if !code.is_allowed() {
                            return Err(WsError::Protocol(format!("close code {code}")));
                        }
                        if std::str::from_utf8(&payload[2..]).is_err() {
                            return Err(WsError::InvalidCloseReason);
                        }
                        close_payload(code)
                    }
                };
                if !framing.close_sent {
                    // Answer with the same code; nothing is sent after it.
                    framing.close_sent = true;
                    self.reply = Some(Reply::Close(echo));
                }
                // Both close frames are (or will be) on the wire: done.
                framing.done = true;
            }
            // Pongs, pings after our close, and data frames need nothing.
            _ => {}
        }
        Ok(())
    }

    /// Moves the MQTT bytes received so far to the end of `out`.
    pub fn take_inbound(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.inbound);
        release(&mut self.inbound);
    }

    /// Sends `data` as one binary message.
    ///
    /// Fails with [`WsError::OutboundFull`] when the bytes not yet taken by
    /// [`WsStage::take_outbound_wire`] have reached the bound set by
    /// [`WsStage::with_max_outbound`]: the peer is not reading. The stage is
    /// then failed; close the connection.
    pub fn write_outbound(&mut self, data: &[u8]) -> Result<(), WsError> {
        if self.failed {
            return Err(WsError::Closed);
        }
        let framing = match &mut self.state {
            State::Handshaking(_) => return Err(WsError::NotOpen),
            State::Done => return Err(WsError::Closed),
            State::Open(framing) => framing,
        };
        if framing.close_sent {
            return Err(WsError::Closed);
        }
        if data.is_empty() {
            return Ok(());
        }
        if self.wire.len() >= self.max_outbound {
            self.failed = true;
            framing.close_sent = true;
            self.reply = Some(Reply::Close(close_payload(CloseCode::Policy)));
            return Err(WsError::OutboundFull {
                max: self.max_outbound,
            });
        }
        put_frame(&mut self.wire, OP_BINARY, data);
        Ok(())
    }

    /// Starts a clean close (code 1000). Take the wire bytes afterwards.
    pub fn close(&mut self) {
        if let State::Open(framing) = &mut self.state {
            if !framing.close_sent && !self.failed {
                framing.close_sent = true;
                self.reply = Some(Reply::Close(close_payload(CloseCode::Normal)));
            }
        }
    }

    /// Appends everything that should be sent to the layer below to `out`:
    /// the frames written, then the pending pong or close frame.
    pub fn take_outbound_wire(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.wire);
        release(&mut self.wire);
        match self.reply.take() {
            Some(Reply::Pong(payload)) => put_frame(out, OP_PONG, &payload),
            Some(Reply::Close(payload)) => put_frame(out, OP_CLOSE, &payload),
            None => {}
        }
    }

    /// Bytes waiting in [`WsStage::take_outbound_wire`], the pending pong or
    /// close frame included.
    pub fn outbound_len(&self) -> usize {
        self.wire.len()
            + match &self.reply {
                // Header of 2 bytes: control payloads are at most 125.
                Some(Reply::Pong(payload) | Reply::Close(payload)) => 2 + payload.len(),
                None => 0,
            }
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

    /// Bytes fed but not yet decoded (they wait for the rest of a frame
    /// header or of a control frame).
    pub fn pending_input(&self) -> usize {
        match &self.state {
            State::Handshaking(mid) => mid.get_ref().get_ref().unread(),
            State::Open(framing) => framing.head.len() + framing.control.len(),
            State::Done => 0,
        }
    }
}

/// Capacity an emptied buffer keeps: one large message must not leave a
/// connection holding its size for good.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Frees an empty buffer's memory when it is more than [`KEEP_CAPACITY`].
fn release(buffer: &mut Vec<u8>) {
    if buffer.is_empty() && buffer.capacity() > KEEP_CAPACITY {
        *buffer = Vec::new();
    }
}

/// The length of the frame header that starts with `head`, as far as its
/// first two bytes tell (2 until they are there).
fn header_len(head: &[u8]) -> usize {
    let Some(&second) = head.get(1) else {
        return 2;
    };
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let len = 2 + extended + mask;
    debug_assert!(len <= MAX_HEADER);
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::Message;
    use tungstenite::client::IntoClientRequest;
    use tungstenite::handshake::client::ClientHandshake;
    use tungstenite::protocol::WebSocket;
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

    /// A stage past a raw upgrade request; the 101 reply is taken.
    fn open_stage(max: usize) -> WsStage {
        let mut server = WsStage::new("/mqtt", max);
        server.feed(UPGRADE).expect("upgrade");
        let mut reply = Vec::new();
        server.take_outbound_wire(&mut reply);
        assert!(reply.starts_with(b"HTTP/1.1 101"), "{reply:?}");
        assert!(server.is_open());
        server
    }

    const UPGRADE: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    /// A client frame: `first` is the first header byte (FIN, opcode), the
    /// payload is masked as clients must.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xFA, 0x21, 0x3D];
        let mut out = vec![first];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len if len <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Splits what the server sent into (opcode, payload) frames.
    fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0] & 0xF0, 0x80, "FIN, no RSV");
            assert_eq!(bytes[1] & 0x80, 0, "server frames are not masked");
            let (len, at) = match bytes[1] {
                126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
                127 => {
                    let mut len = [0; 8];
                    len.copy_from_slice(&bytes[2..10]);
                    (u64::from_be_bytes(len) as usize, 10)
                }
                n => (usize::from(n), 2),
            };
            frames.push((bytes[0] & 0x0F, bytes[at..at + len].to_vec()));
            bytes = &bytes[at + len..];
        }
        frames
    }

    fn taken(server: &mut WsStage) -> Vec<(u8, Vec<u8>)> {
        let mut wire = Vec::new();
        server.take_outbound_wire(&mut wire);
        server_frames(&wire)
    }

    /// Everything the stage holds, by allocation, not by length.
    fn held_capacity(server: &WsStage) -> usize {
        let framing = match &server.state {
            State::Open(f) => f.head.capacity() + f.control.capacity(),
            _ => 0,
        };
        let reply = match &server.reply {
            Some(Reply::Pong(p) | Reply::Close(p)) => p.capacity(),
            None => 0,
        };
        server.wire.capacity() + server.inbound.capacity() + framing + reply
    }

    fn close_code(frame: &(u8, Vec<u8>)) -> u16 {
        assert_eq!(frame.0, OP_CLOSE, "{frame:?}");
        u16::from_be_bytes([frame.1[0], frame.1[1]])
    }

    /// A client that pings and never reads once grew the broker's memory
    /// without bound: each ping queued a pong. Now one pong waits, the
    /// latest, however many pings arrive.
    #[test]
    fn pings_from_a_peer_that_never_reads_hold_one_pong() {
        let mut server = open_stage(MAX);
        let mut pings = Vec::new();
        for i in 0..100_000u32 {
            // Payloads of 0 to 125 bytes; the last one is recognisable.
            let len = (i % 126) as usize;
            let payload: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
            pings.extend_from_slice(&client_frame(0x89, &payload));
            // Fed in batches, as reads from a socket would come.
            if pings.len() > 16 * 1024 {
                server.feed(&pings).expect("pings");
                pings.clear();
                assert!(server.outbound_len() <= 2 + MAX_CONTROL_PAYLOAD);
                assert!(held_capacity(&server) <= 1024, "{}", held_capacity(&server));
            }
        }
        pings.extend_from_slice(&client_frame(0x89, b"last"));
        server.feed(&pings).expect("pings");
        assert_eq!(server.outbound_len(), 2 + 4);
        assert!(held_capacity(&server) <= 1024, "{}", held_capacity(&server));
        let mut wire = Vec::new();
        server.take_outbound_wire(&mut wire);
        assert_eq!(wire.len(), 6, "one pong, of the last ping");
        assert_eq!(server_frames(&wire), [(OP_PONG, b"last".to_vec())]);
        assert_eq!(server.outbound_len(), 0);
        // The connection works on.
        server
            .feed(&client_frame(0x82, &[0xC0, 0x00]))
            .expect("data");
        let mut mqtt = Vec::new();
        server.take_inbound(&mut mqtt);
        assert_eq!(mqtt, [0xC0, 0x00]);
    }

    #[test]
    fn a_pong_goes_after_the_data_already_written() {
        let mut server = open_stage(MAX);
        server.write_outbound(&[0xD0, 0x00]).expect("out");
        server.feed(&client_frame(0x89, b"p1")).expect("ping");
        server.feed(&client_frame(0x89, b"p2")).expect("ping");
        server.write_outbound(&[0x20, 0x02, 0, 0]).expect("out");
        assert_eq!(
            taken(&mut server),
            [
                (OP_BINARY, vec![0xD0, 0x00]),
                (OP_BINARY, vec![0x20, 0x02, 0, 0]),
                (OP_PONG, b"p2".to_vec())
            ]
        );
        // Unsolicited pongs from the peer need no answer.
        server.feed(&client_frame(0x8A, b"x")).expect("pong");
        assert!(taken(&mut server).is_empty());
    }

    #[test]
    fn a_peer_that_stops_reading_overruns_the_outbound_bound() {
        let mut server = open_stage(MAX).with_max_outbound(1000);
        let message = [0x30u8; 100];
        let mut written = 0;
        let err = loop {
            match server.write_outbound(&message) {
                Ok(()) => written += 1,
                Err(e) => break e,
            }
            assert!(written < 100, "never refused");
        };
        assert!(matches!(err, WsError::OutboundFull { max: 1000 }), "{err}");
        // 1000 bytes reached by whole 102-byte frames: the tenth write.
        assert_eq!(written, 10);
        assert!(server.outbound_len() <= 1000 + 102 + 4);
        assert!(server.is_closed());
        assert!(matches!(
            server.write_outbound(&message),
            Err(WsError::Closed)
        ));
        assert!(matches!(
            server.feed(&client_frame(0x89, b"")),
            Err(WsError::Closed)
        ));
        let frames = taken(&mut server);
        assert_eq!(frames.len(), 11);
        assert!(
            frames[..10]
                .iter()
                .all(|f| f == &(OP_BINARY, message.to_vec()))
        );
        assert_eq!(close_code(&frames[10]), 1008);

        // Into an empty buffer one message larger than the bound still goes.
        let mut server = open_stage(MAX).with_max_outbound(10);
        server.write_outbound(&[1; 50]).expect("fits once");
        assert!(matches!(
            server.write_outbound(&[1]),
            Err(WsError::OutboundFull { max: 10 })
        ));
        // Taking the wire in time keeps the stage going.
        let mut server = open_stage(MAX).with_max_outbound(10);
        for _ in 0..1000 {
            server.write_outbound(&[1; 50]).expect("taken each time");
            assert_eq!(taken(&mut server).len(), 1);
        }
    }

    #[test]
    fn control_frames_over_125_bytes_fail_at_their_header() {
        let mut server = open_stage(MAX);
        let ping = client_frame(0x89, &[7; 126]);
        // Only the header (2 + 2 + 4 bytes): the payload is never awaited.
        let err = server.feed(&ping[..8]).expect_err("too big");
        assert!(matches!(err, WsError::Protocol(_)), "{err}");
        assert!(err.to_string().contains("126 bytes"), "{err}");
        assert_eq!(close_code(&taken(&mut server)[0]), 1002);
        assert!(server.is_closed());

        for (first, payload) in [(0x8A, &[0u8; 200][..]), (0x88, &[3, 232, 0, 0, 0][..])] {
            let mut server = open_stage(MAX);
            let frame = client_frame(first, payload);
            let ok = payload.len() <= MAX_CONTROL_PAYLOAD;
            assert_eq!(server.feed(&frame).is_ok(), ok, "{first:#x}");
        }
        // 125 is fine.
        let mut server = open_stage(MAX);
        server.feed(&client_frame(0x89, &[1; 125])).expect("125");
        assert_eq!(taken(&mut server), [(OP_PONG, vec![1; 125])]);
    }

    #[test]
    fn protocol_violations_fail_the_stage() {
        let cases: [(&str, Vec<u8>); 8] = [
            ("fragmented ping", client_frame(0x09, b"x")),
            ("reserved bits", client_frame(0xC2, b"x")),
            ("reserved data opcode", client_frame(0x83, b"x")),
            ("reserved control opcode", client_frame(0x8B, b"")),
            ("continuation outside a message", client_frame(0x80, b"x")),
            ("unmasked", vec![0x82, 0x01, 0xC0]),
            ("1-byte close", client_frame(0x88, &[3])),
            ("close code 1005", client_frame(0x88, &[0x03, 0xED])),
        ];
        for (what, bytes) in cases {
            let mut server = open_stage(MAX);
            let err = server.feed(&bytes).expect_err(what);
            assert!(matches!(err, WsError::Protocol(_)), "{what}: {err}");
            assert_eq!(close_code(&taken(&mut server)[0]), 1002, "{what}");
            assert!(server.is_closed(), "{what}");
        }
        // A new message inside a fragmented one.
        let mut server = open_stage(MAX);
        let mut bytes = client_frame(0x02, b"a");
        bytes.extend(client_frame(0x82, b"b"));
        assert!(matches!(server.feed(&bytes), Err(WsError::Protocol(_))));
        // A close reason that is not UTF-8: 1007.
        let mut server = open_stage(MAX);
        let err = server
            .feed(&client_frame(0x88, &[0x03, 0xE8, 0xFF]))
            .expect_err("bad utf-8");
        assert!(matches!(err, WsError::InvalidCloseReason));
        assert_eq!(close_code(&taken(&mut server)[0]), 1007);
    }

    #[test]
    fn fragmented_messages_are_bounded_by_the_maximum_and_not_buffered() {
        // Fragments within the maximum stream through, pings between them.
        let mut server = open_stage(16);
        let mut bytes = client_frame(0x02, &[1; 6]);
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0x00, &[2; 6]));
        bytes.extend(client_frame(0x80, &[3; 4]));
        server.feed(&bytes).expect("16 bytes in three fragments");
        let mut got = Vec::new();
        server.take_inbound(&mut got);
        assert_eq!(got, [[1; 6].as_slice(), &[2; 6], &[3; 4]].concat());
        assert_eq!(taken(&mut server), [(OP_PONG, b"p".to_vec())]);

        // A fragmented message past the maximum fails at the header of the
        // fragment that crosses it, however small each fragment is.
        let mut server = open_stage(16);
        let mut bytes = client_frame(0x02, &[1; 8]);
        bytes.extend(client_frame(0x00, &[2; 8]));
        server.feed(&bytes).expect("16 so far");
        let next = client_frame(0x00, &[3; 1]);
        let err = server.feed(&next[..6]).expect_err("17 bytes");
        assert!(matches!(err, WsError::TooLarge { max: 16 }), "{err}");
        assert_eq!(close_code(&taken(&mut server)[0]), 1009);

        // Payload is handed on as it arrives, not held until the frame ends.
        let mut server = open_stage(MAX);
        let frame = client_frame(0x82, &[9; 1000]);
        server.feed(&frame[..8 + 500]).expect("half");
        let mut got = Vec::new();
        server.take_inbound(&mut got);
        assert_eq!(got, [9; 500]);
        assert_eq!(server.pending_input(), 0);
        assert!(
            held_capacity(&server) < 1024 + 16,
            "{}",
            held_capacity(&server)
        );
        server.feed(&frame[8 + 500..]).expect("rest");
        got.clear();
        server.take_inbound(&mut got);
        assert_eq!(got, [9; 500]);

        // One large message each way leaves no large buffer behind.
        let mut server = open_stage(4 << 20);
        server
            .feed(&client_frame(0x82, &vec![5; 3 << 20]))
            .expect("3 MiB in");
        server.write_outbound(&vec![6; 3 << 20]).expect("3 MiB out");
        assert!(held_capacity(&server) >= 6 << 20);
        got.clear();
        server.take_inbound(&mut got);
        assert_eq!(got.len(), 3 << 20);
        assert_eq!(taken(&mut server)[0].1.len(), 3 << 20);
        assert!(held_capacity(&server) <= 1024, "{}", held_capacity(&server));
    }

    #[test]
    fn after_our_close_data_and_pings_get_no_answer() {
        let mut server = open_stage(MAX);
        server.close();
        assert_eq!(close_code(&taken(&mut server)[0]), 1000);
        server.feed(&client_frame(0x82, b"late")).expect("data");
        server.feed(&client_frame(0x89, b"ping")).expect("ping");
        let mut got = Vec::new();
        server.take_inbound(&mut got);
        assert!(got.is_empty());
        assert!(taken(&mut server).is_empty());
        assert!(!server.is_closed());
        server
            .feed(&client_frame(0x88, &[0x03, 0xE8]))
            .expect("reply");
        assert!(server.is_closed());
        assert!(taken(&mut server).is_empty(), "the close was already sent");
        // The peer's close is echoed with its code when it starts.
        let mut server = open_stage(MAX);
        server
            .feed(&client_frame(0x88, &[0x0F, 0xA0, b'b', b'y', b'e']))
            .expect("close");
        assert!(server.is_closed());
        assert_eq!(close_code(&taken(&mut server)[0]), 4000);
    }

    #[test]
    fn request_end_split_across_reads_keeps_the_first_frame() {
        let at = UPGRADE.len() - 1;
        let mut server = WsStage::new("/mqtt", MAX);
        server.feed(&UPGRADE[..at]).expect("up to \\r\\n\\r");
        let mut rest = UPGRADE[at..].to_vec();
        rest.extend(client_frame(0x82, &[0xC0, 0x00]));
        server.feed(&rest).expect("\\n and a frame");
        assert!(server.is_open());
        let mut got = Vec::new();
        server.take_inbound(&mut got);
        assert_eq!(got, [0xC0, 0x00]);
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
