//! A sans-IO MQTT *client* engine (3.1.1 and 5.0), sharing the broker's
//! codec: the client side of a bridge, or of any program that wants to talk
//! to a broker without choosing a runtime.
//!
//! Like the broker it never touches a socket, a clock or a random number
//! generator: the runtime says when the transport is up
//! ([`Client::handle_connected`]), hands it the bytes that arrive
//! ([`Client::handle_bytes`]), says when the transport died
//! ([`Client::handle_closed`]) and when the deadline of
//! [`Client::poll_timeout`] passed ([`Client::handle_timeout`]).
//!
//! **After any input, drain [`Client::poll_transmit`] (bytes to write, in
//! order) and [`Client::poll_event`] to `None`, then re-arm the timer from
//! [`Client::poll_timeout`].** On [`ClientEvent::Disconnected`] with a
//! reason other than [`DisconnectReason::TransportClosed`], close the
//! transport (without calling `handle_closed` again).
//!
//! The client outlives its connections: messages given to
//! [`Client::publish`] while the transport is down wait in a bounded queue
//! (QoS 1 and 2 only; QoS 0 is dropped and counted), and QoS 1/2 messages
//! in flight when it dropped are sent again on the next connection, with
//! DUP set when the server kept the session, in their original order.
//!
//! With [`ClientConfig::manual_ack`], a QoS 1/2 message from the server is
//! acknowledged (PUBACK, or PUBREC) only when the program calls
//! [`Client::ack`] with the [`InboundId`] its [`ClientEvent::Message`]
//! carried: a bridge acknowledges a message only once the next hop has it,
//! so the server keeps (and resends) what was not passed on.
//!
//! ```
//! use roost_core::client::{Client, ClientConfig, ClientEvent};
//! use roost_core::broker::Instant;
//! use roost_core::MqttStr;
//!
//! let mut client = Client::new(ClientConfig::new(MqttStr::from_static("edge-1")));
//! client.handle_connected(Instant::ZERO);
//! let connect = client.poll_transmit().unwrap(); // CONNECT
//! assert_eq!(connect[0], 0x10);
//! // CONNACK (MQTT 5, the default: success, no properties)
//! client.handle_bytes(Instant::ZERO, &[0x20, 0x03, 0x00, 0x00, 0x00]);
//! assert_eq!(client.poll_event(), Some(ClientEvent::Connected { session_present: false }));
//! ```

#[cfg(test)]
mod tests;

use crate::MqttStr;
use crate::broker::{Instant, Message};
use crate::codec::{
    ConnAck, Connect, ConnectProperties, DecodeError, Disconnect, Packet, PacketId, Protocol,
    PubResponse, Publish, PublishProperties, QoS, QosPid, ReasonCode, SubAck, Subscribe,
    SubscribeProperties, Subscription, decode,
};
use crate::topic::TopicFilter;
use alloc::collections::{BTreeSet, VecDeque};
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};
use core::fmt;
use core::time::Duration;

/// How a [`Client`] connects and what it may hold.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// MQTT 3.1.1 or 5.0 (3.1 is treated as 3.1.1's wire format would not
    /// be accepted by every server).
    pub protocol: Protocol,
    /// The client identifier.
    pub client_id: MqttStr,
    /// Start a new session on every connection (MQTT 3: clean session).
    pub clean_start: bool,
    /// MQTT 5 session expiry interval in seconds (ignored in 3.1.1, where
    /// `clean_start = false` means the server keeps the session).
    pub session_expiry: u32,
    /// Keep-alive in seconds; 0 disables PINGREQ.
    pub keep_alive: u16,
    /// User name.
    pub username: Option<MqttStr>,
    /// Password.
    pub password: Option<Bytes>,
    /// Subscriptions made on every connection.
    pub subscriptions: Vec<Subscription>,
    /// QoS 1/2 messages in flight at once (further bounded by an MQTT 5
    /// server's receive maximum).
    pub max_inflight: u16,
    /// Messages queued beyond the in-flight window; a publish beyond it is
    /// refused and counted in [`Client::dropped`].
    pub max_queued: usize,
    /// Payload and topic bytes queued beyond the in-flight window.
    pub max_queued_bytes: usize,
    /// The largest packet accepted from the server.
    pub max_packet_size: usize,
    /// How long the server has to answer CONNECT.
    pub connect_timeout: Duration,
    /// Acknowledge inbound QoS 1/2 messages only on [`Client::ack`].
    pub manual_ack: bool,
    /// Send the subscriptions right behind CONNECT instead of after
    /// CONNACK (MQTT allows it [MQTT-3.1.4-5]), so that they are in place as
    /// soon as the server has read them.
    pub subscribe_with_connect: bool,
}

impl ClientConfig {
    /// MQTT 5, clean start, keep-alive 60 s, 20 in flight, 10,000 queued
    /// messages or 64 MiB, packets up to 1 MiB, 30 s to connect.
    pub fn new(client_id: MqttStr) -> Self {
        ClientConfig {
            protocol: Protocol::V5,
            client_id,
            clean_start: true,
            session_expiry: 0,
            keep_alive: 60,
            username: None,
            password: None,
            subscriptions: Vec::new(),
            max_inflight: 20,
            max_queued: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
            max_packet_size: 1024 * 1024,
            connect_timeout: Duration::from_secs(30),
            manual_ack: false,
            subscribe_with_connect: false,
        }
    }

    /// Whether the server is asked to keep the session between connections.
    pub fn persistent(&self) -> bool {
        !self.clean_start && (self.protocol != Protocol::V5 || self.session_expiry > 0)
    }
}

/// The handle of a message given to [`Client::publish`], named again in
/// [`ClientEvent::Acked`] and [`ClientEvent::Rejected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The transport closed ([`Client::handle_closed`]).
    TransportClosed,
    /// The server refused the CONNECT with this code.
    Refused(ReasonCode),
    /// No CONNACK within [`ClientConfig::connect_timeout`].
    ConnectTimeout,
    /// No PINGRESP within the keep-alive after a PINGREQ.
    KeepAliveTimeout,
    /// The server sent DISCONNECT (MQTT 5) with this code.
    Server(ReasonCode),
    /// The server sent bytes that are not MQTT.
    Malformed(DecodeError),
    /// The server sent a packet a server must not send, or one out of turn.
    ProtocolError,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::TransportClosed => f.write_str("connection closed"),
            DisconnectReason::Refused(code) => write!(f, "refused: {code}"),
            DisconnectReason::ConnectTimeout => f.write_str("no CONNACK in time"),
            DisconnectReason::KeepAliveTimeout => f.write_str("no PINGRESP in time"),
            DisconnectReason::Server(code) => write!(f, "server disconnected: {code}"),
            DisconnectReason::Malformed(e) => write!(f, "malformed packet: {e}"),
            DisconnectReason::ProtocolError => f.write_str("protocol error"),
        }
    }
}

/// An inbound QoS 1/2 message waiting for [`Client::ack`] (with
/// [`ClientConfig::manual_ack`]). It stays valid across reconnections that
/// keep the session; once the server has started a new session it is
/// ignored (the server forgot the message, and may reuse its packet id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InboundId {
    pid: PacketId,
    qos: QoS,
    session: u32,
}

/// What happened, drained with [`Client::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The server accepted the CONNECT.
    Connected {
        /// It kept the session of an earlier connection.
        session_present: bool,
    },
    /// The server answered the SUBSCRIBE of this connection: each
    /// subscription's granted QoS or failure code, in order.
    Subscribed(Vec<Result<QoS, ReasonCode>>),
    /// A message from the server (boxed: the other events are small),
    /// with, under [`ClientConfig::manual_ack`], the id to acknowledge it
    /// by (QoS 1 and 2 only).
    Message(alloc::boxed::Box<Message>, Option<InboundId>),
    /// The server acknowledged a QoS 1/2 message completely (PUBACK or
    /// PUBCOMP); QoS 0 messages are never acknowledged.
    Acked(MessageId),
    /// The server refused a message (an MQTT 5 error code in PUBACK or
    /// PUBREC): it will not be sent again.
    Rejected(MessageId, ReasonCode),
    /// The connection ended. Unless the reason is
    /// [`DisconnectReason::TransportClosed`], close the transport.
    Disconnected(DisconnectReason),
}

/// Why [`Client::publish`] did not take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The queue is full (count or bytes): the message was dropped.
    QueueFull,
    /// QoS 0 while not connected: dropped, as it would be on the wire.
    NotConnected,
}

impl core::fmt::Display for PublishError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            PublishError::QueueFull => "queue full",
            PublishError::NotConnected => "not connected",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Disconnected,
    /// CONNECT sent, waiting for CONNACK until the deadline.
    Connecting {
        deadline: Instant,
    },
    Connected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// PUBLISH sent (or to be sent again); waiting for PUBACK or PUBREC.
    Publish,
    /// PUBREL sent (or to be sent again); waiting for PUBCOMP.
    Release,
}

struct Inflight {
    pid: PacketId,
    id: MessageId,
    message: Message,
    stage: Stage,
}

/// The client engine. See the [module documentation](self) for its loop.
pub struct Client {
    config: ClientConfig,
    state: State,
    now: Instant,
    inbox: BytesMut,
    outbox: BytesMut,
    events: VecDeque<ClientEvent>,
    queue: VecDeque<(MessageId, Message)>,
    queued_bytes: usize,
    inflight: VecDeque<Inflight>,
    /// QoS 2 messages received and delivered, waiting for PUBREL: a
    /// re-sent PUBLISH with one of these ids is not delivered again.
    incoming: BTreeSet<PacketId>,
    /// Under `manual_ack`: inbound messages delivered and not yet acked
    /// (a resent PUBLISH with one of these ids is not delivered again).
    held: BTreeSet<PacketId>,
    /// Under `manual_ack`: acks given while disconnected, sent when a
    /// connection resumes the session.
    owed: Vec<(PacketId, QoS)>,
    /// Under `manual_ack`: QoS 1 ids whose owed PUBACK went out on this
    /// connection. The server may have resent the message (DUP) before it
    /// read the PUBACK; that copy is not delivered again.
    resumed: BTreeSet<PacketId>,
    /// Counts sessions the server started anew, to tell stale
    /// [`InboundId`]s.
    session: u32,
    next_pid: PacketId,
    next_message: u64,
    /// The server's receive maximum on this connection.
    window: usize,
    /// Keep-alive in effect on this connection (a v5 server may set it).
    keep_alive: Duration,
    last_sent: Instant,
    ping_deadline: Option<Instant>,
    subscribe_pid: Option<PacketId>,
    dropped: u64,
}

fn message_bytes(m: &Message) -> usize {
    m.topic.len() + m.payload.len()
}

impl Client {
    /// A disconnected client.
    pub fn new(config: ClientConfig) -> Self {
        let window = usize::from(config.max_inflight.max(1));
        Client {
            config,
            state: State::Disconnected,
            now: Instant::ZERO,
            inbox: BytesMut::new(),
            outbox: BytesMut::new(),
            events: VecDeque::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            inflight: VecDeque::new(),
            incoming: BTreeSet::new(),
            held: BTreeSet::new(),
            owed: Vec::new(),
            resumed: BTreeSet::new(),
            session: 0,
            next_pid: PacketId::MIN,
            next_message: 0,
            window,
            keep_alive: Duration::ZERO,
            last_sent: Instant::ZERO,
            ping_deadline: None,
            subscribe_pid: None,
            dropped: 0,
        }
    }

    // ----- getters -----

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Whether the server accepted the current connection.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Messages waiting for the in-flight window (or a connection).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// QoS 1/2 messages sent and not yet completely acknowledged.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Messages refused by [`Client::publish`] since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    // ----- outputs -----

    /// Bytes to write to the transport, after any taken before.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.outbox.is_empty()).then(|| self.outbox.split().freeze())
    }

    /// The next event, or `None`.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`Client::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Disconnected => None,
            State::Connecting { deadline } => Some(deadline),
            State::Connected => match self.ping_deadline {
                Some(at) => Some(at),
                None if self.keep_alive.is_zero() => None,
                None => Some(self.last_sent + self.keep_alive),
            },
        }
    }

    // ----- inputs -----

    /// The transport is up: the CONNECT goes out.
    pub fn handle_connected(&mut self, now: Instant) {
        self.advance(now);
        self.reset_connection();
        let c = &self.config;
        let protocol = if c.protocol == Protocol::V5 {
            Protocol::V5
        } else {
            Protocol::V3_1_1
        };
        let connect = Connect {
            protocol,
            clean_start: c.clean_start,
            keep_alive: c.keep_alive,
            client_id: c.client_id.clone(),
            will: None,
            username: c.username.clone(),
            password: c.password.clone(),
            properties: ConnectProperties {
                session_expiry_interval: (protocol == Protocol::V5 && c.session_expiry > 0)
                    .then_some(c.session_expiry),
                maximum_packet_size: u32::try_from(c.max_packet_size)
                    .ok()
                    .and_then(core::num::NonZeroU32::new),
                ..ConnectProperties::default()
            },
        };
        self.state = State::Connecting {
            deadline: now + c.connect_timeout,
        };
        self.send(&Packet::Connect(alloc::boxed::Box::new(connect)));
        if self.config.subscribe_with_connect {
            self.subscribe();
        }
    }

    /// Bytes arrived from the transport, split anyhow.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        self.advance(now);
        if self.state == State::Disconnected {
            return;
        }
        self.inbox.extend_from_slice(bytes);
        let protocol = self.protocol();
        loop {
            let packet = match decode(&mut self.inbox, protocol, self.config.max_packet_size) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(e) => {
                    self.drop_connection(DisconnectReason::Malformed(e));
                    return;
                }
            };
            self.handle_packet(packet);
            if self.state == State::Disconnected {
                return;
            }
        }
    }

    /// The transport died (or was closed by the runtime).
    pub fn handle_closed(&mut self, now: Instant) {
        self.advance(now);
        if self.state != State::Disconnected {
            self.state = State::Disconnected;
            self.reset_connection();
            self.events
                .push_back(ClientEvent::Disconnected(DisconnectReason::TransportClosed));
        }
    }

    /// A deadline from [`Client::poll_timeout`] passed (early calls are
    /// harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        match self.state {
            State::Disconnected => {}
            State::Connecting { deadline } => {
                if now >= deadline {
                    self.drop_connection(DisconnectReason::ConnectTimeout);
                }
            }
            State::Connected => {
                if let Some(at) = self.ping_deadline {
                    if now >= at {
                        self.drop_connection(DisconnectReason::KeepAliveTimeout);
                    }
                } else if !self.keep_alive.is_zero() && now >= self.last_sent + self.keep_alive {
                    self.send(&Packet::PingReq);
                    self.ping_deadline = Some(now + self.keep_alive);
                }
            }
        }
    }

    /// Publishes `message`: QoS 0 goes out at once if connected (and is
    /// dropped otherwise); QoS 1/2 joins the queue and goes out in order as
    /// the in-flight window allows, across reconnections.
    pub fn publish(&mut self, now: Instant, message: Message) -> Result<MessageId, PublishError> {
        self.advance(now);
        self.next_message += 1;
        let id = MessageId(self.next_message);
        if message.qos == QoS::AtMostOnce {
            if self.state != State::Connected {
                self.dropped += 1;
                return Err(PublishError::NotConnected);
            }
            let publish = self.publish_packet(&message, QosPid::AtMostOnce, false);
            self.send(&Packet::Publish(publish));
            return Ok(id);
        }
        let size = message_bytes(&message);
        if self.queue.len() >= self.config.max_queued
            || self.queued_bytes + size > self.config.max_queued_bytes
        {
            self.dropped += 1;
            return Err(PublishError::QueueFull);
        }
        self.queued_bytes += size;
        self.queue.push_back((id, message));
        self.pump();
        Ok(id)
    }

    /// Acknowledges an inbound message delivered with `id` (see
    /// [`ClientConfig::manual_ack`]): PUBACK for QoS 1, PUBREC for QoS 2,
    /// now or, while disconnected, when the next connection resumes the
    /// session. An id from a session the server has since forgotten, or
    /// one acknowledged already, is ignored.
    pub fn ack(&mut self, now: Instant, id: InboundId) {
        self.advance(now);
        if id.session != self.session || !self.held.remove(&id.pid) {
            return;
        }
        if self.state == State::Connected {
            self.send_ack(id.pid, id.qos);
        } else {
            self.owed.push((id.pid, id.qos));
        }
    }

    fn send_ack(&mut self, pid: PacketId, qos: QoS) {
        if qos == QoS::ExactlyOnce {
            self.incoming.insert(pid);
            self.send(&Packet::PubRec(PubResponse::new(pid)));
        } else {
            self.send(&Packet::PubAck(PubResponse::new(pid)));
        }
    }

    /// Inbound messages delivered and waiting for [`Client::ack`].
    pub fn unacked(&self) -> usize {
        self.held.len() + self.owed.len()
    }

    /// Sends DISCONNECT (normal disconnection); the runtime then closes the
    /// transport. Messages in flight and queued are kept.
    pub fn disconnect(&mut self, now: Instant) {
        self.advance(now);
        if self.state == State::Connected {
            self.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
        }
        self.state = State::Disconnected;
        self.reset_connection_keep_outbox();
    }

    // ----- internals -----

    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    fn protocol(&self) -> Protocol {
        if self.config.protocol == Protocol::V5 {
            Protocol::V5
        } else {
            Protocol::V3_1_1
        }
    }

    fn reset_connection(&mut self) {
        self.outbox.clear();
        self.reset_connection_keep_outbox();
    }

    fn reset_connection_keep_outbox(&mut self) {
        self.inbox.clear();
        self.ping_deadline = None;
        self.subscribe_pid = None;
        self.window = usize::from(self.config.max_inflight.max(1));
    }

    fn drop_connection(&mut self, reason: DisconnectReason) {
        if self.state == State::Disconnected {
            return;
        }
        if self.protocol() == Protocol::V5 && self.state == State::Connected {
            let code = match reason {
                DisconnectReason::Malformed(_) => ReasonCode::MalformedPacket,
                DisconnectReason::KeepAliveTimeout => ReasonCode::KeepAliveTimeout,
                _ => ReasonCode::ProtocolError,
            };
            self.send(&Packet::Disconnect(Disconnect::new(code)));
        }
        self.state = State::Disconnected;
        self.reset_connection_keep_outbox();
        self.events.push_back(ClientEvent::Disconnected(reason));
    }

    fn send(&mut self, packet: &Packet) {
        // Only packets built here are encoded, and they fit their fields;
        // one that did not would be a bug, and is dropped rather than sent
        // half-written.
        let mark = self.outbox.len();
        if packet.encode(self.protocol(), &mut self.outbox).is_err() {
            self.outbox.truncate(mark);
        }
        self.last_sent = self.now;
    }

    fn publish_packet(&self, message: &Message, qos: QosPid, dup: bool) -> Publish {
        let properties = if self.protocol() == Protocol::V5 {
            PublishProperties {
                topic_alias: None,
                subscription_identifiers: Vec::new(),
                ..message.properties.clone()
            }
        } else {
            PublishProperties::default()
        };
        Publish {
            dup,
            qos,
            retain: message.retain,
            topic: message.topic.clone(),
            payload: message.payload.clone(),
            properties,
        }
    }

    fn fresh_pid(&mut self) -> PacketId {
        loop {
            let pid = self.next_pid;
            self.next_pid = pid.next();
            if !self.inflight.iter().any(|f| f.pid == pid) && self.subscribe_pid != Some(pid) {
                return pid;
            }
        }
    }

    /// Moves queued messages into flight while the window allows.
    fn pump(&mut self) {
        if self.state != State::Connected {
            return;
        }
        while self.inflight.len() < self.window {
            let Some((id, message)) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -= message_bytes(&message);
            let pid = self.fresh_pid();
            let publish = self.publish_packet(&message, QosPid::new(message.qos, pid), false);
            self.send(&Packet::Publish(publish));
            self.inflight.push_back(Inflight {
                pid,
                id,
                message,
                stage: Stage::Publish,
            });
        }
    }

    fn handle_packet(&mut self, packet: Packet) {
        let connecting = matches!(self.state, State::Connecting { .. });
        match packet {
            Packet::ConnAck(ack) if connecting => self.handle_connack(&ack),
            _ if connecting => self.drop_connection(DisconnectReason::ProtocolError),
            Packet::Publish(p) => self.handle_publish(p),
            Packet::PubAck(r) => self.handle_puback(r),
            Packet::PubRec(r) => self.handle_pubrec(r),
            Packet::PubRel(r) => {
                self.incoming.remove(&r.packet_id);
                self.send(&Packet::PubComp(PubResponse::new(r.packet_id)));
            }
            Packet::PubComp(r) => {
                if let Some(i) = self
                    .inflight
                    .iter()
                    .position(|f| f.pid == r.packet_id && f.stage == Stage::Release)
                {
                    if let Some(f) = self.inflight.remove(i) {
                        self.events.push_back(ClientEvent::Acked(f.id));
                    }
                    self.pump();
                }
            }
            Packet::SubAck(ack) => self.handle_suback(ack),
            Packet::UnsubAck(_) => {}
            Packet::PingResp => self.ping_deadline = None,
            Packet::Disconnect(d) => {
                self.state = State::Disconnected;
                self.reset_connection_keep_outbox();
                self.events
                    .push_back(ClientEvent::Disconnected(DisconnectReason::Server(
                        d.reason,
                    )));
            }
            _ => self.drop_connection(DisconnectReason::ProtocolError),
        }
    }

    fn handle_connack(&mut self, ack: &ConnAck) {
        if ack.reason.is_error() {
            self.drop_connection(DisconnectReason::Refused(ack.reason));
            return;
        }
        self.state = State::Connected;
        let session_present = ack.session_present && self.config.persistent();
        if let Some(max) = ack.properties.receive_maximum {
            self.window = self.window.min(usize::from(max.get()));
        }
        let keep_alive = ack
            .properties
            .server_keep_alive
            .unwrap_or(self.config.keep_alive);
        self.keep_alive = Duration::from_secs(u64::from(keep_alive));
        self.events
            .push_back(ClientEvent::Connected { session_present });
        if !session_present {
            // The server forgot what it had of ours: QoS 2 messages it
            // received (PUBREL stage) are delivered already; the rest go
            // again as new messages.
            self.incoming.clear();
            self.held.clear();
            self.owed.clear();
            self.session = self.session.wrapping_add(1);
            let mut kept = VecDeque::with_capacity(self.inflight.len());
            for f in core::mem::take(&mut self.inflight) {
                match f.stage {
                    Stage::Release => self.events.push_back(ClientEvent::Acked(f.id)),
                    Stage::Publish => kept.push_back(f),
                }
            }
            self.inflight = kept;
        }
        // Acks given while disconnected (none left without a session).
        self.resumed.clear();
        for (pid, qos) in core::mem::take(&mut self.owed) {
            if qos == QoS::AtLeastOnce {
                self.resumed.insert(pid);
            }
            self.send_ack(pid, qos);
        }
        // Resend what is in flight, in order; DUP marks a re-delivery the
        // server may have seen.
        for i in 0..self.inflight.len() {
            let Some(f) = self.inflight.get(i) else {
                break;
            };
            let packet = match f.stage {
                Stage::Publish => Packet::Publish(self.publish_packet(
                    &f.message,
                    QosPid::new(f.message.qos, f.pid),
                    session_present,
                )),
                Stage::Release => Packet::PubRel(PubResponse::new(f.pid)),
            };
            self.send(&packet);
        }
        if !self.config.subscribe_with_connect {
            self.subscribe();
        }
        self.pump();
    }

    /// Sends the configured subscriptions, if any.
    fn subscribe(&mut self) {
        if self.config.subscriptions.is_empty() {
            return;
        }
        let pid = self.fresh_pid();
        self.subscribe_pid = Some(pid);
        let subscribe = Subscribe {
            packet_id: pid,
            subscriptions: self.config.subscriptions.clone(),
            properties: SubscribeProperties::default(),
        };
        self.send(&Packet::Subscribe(subscribe));
    }

    fn handle_suback(&mut self, ack: SubAck) {
        if self.subscribe_pid != Some(ack.packet_id) {
            return;
        }
        self.subscribe_pid = None;
        let results = ack
            .reasons
            .iter()
            .map(|&code| match code {
                ReasonCode::Success => Ok(QoS::AtMostOnce),
                ReasonCode::GrantedQoS1 => Ok(QoS::AtLeastOnce),
                ReasonCode::GrantedQoS2 => Ok(QoS::ExactlyOnce),
                other => Err(other),
            })
            .collect();
        self.events.push_back(ClientEvent::Subscribed(results));
    }

    fn handle_publish(&mut self, p: Publish) {
        if p.topic.is_empty() {
            // No topic alias was allowed (topic alias maximum 0).
            self.drop_connection(DisconnectReason::ProtocolError);
            return;
        }
        let manual = self.config.manual_ack;
        let mut token = None;
        let deliver = match p.qos {
            QosPid::AtMostOnce => true,
            // QoS 2 received (PUBREC sent) already: PUBREC again, once.
            QosPid::ExactlyOnce(pid) if self.incoming.contains(&pid) => {
                self.send(&Packet::PubRec(PubResponse::new(pid)));
                false
            }
            // Acknowledged on resuming; this is the server's resend from
            // before it read that ack. (Without DUP it is a new message.)
            QosPid::AtLeastOnce(pid) if self.resumed.remove(&pid) && p.dup => false,
            // Delivered and not yet acknowledged: the ack will come.
            QosPid::AtLeastOnce(pid) | QosPid::ExactlyOnce(pid) if manual => {
                token = Some(InboundId {
                    pid,
                    qos: p.qos.qos(),
                    session: self.session,
                });
                self.held.insert(pid)
            }
            QosPid::AtLeastOnce(pid) => {
                self.send(&Packet::PubAck(PubResponse::new(pid)));
                true
            }
            QosPid::ExactlyOnce(pid) => {
                self.send(&Packet::PubRec(PubResponse::new(pid)));
                self.incoming.insert(pid)
            }
        };
        if deliver {
            let message = Message {
                topic: p.topic,
                payload: p.payload,
                qos: p.qos.qos(),
                retain: p.retain,
                properties: PublishProperties {
                    topic_alias: None,
                    subscription_identifiers: Vec::new(),
                    ..p.properties
                },
            };
            self.events
                .push_back(ClientEvent::Message(alloc::boxed::Box::new(message), token));
        }
    }

    fn handle_puback(&mut self, r: PubResponse) {
        let Some(i) = self.inflight.iter().position(|f| {
            f.pid == r.packet_id && f.stage == Stage::Publish && f.message.qos == QoS::AtLeastOnce
        }) else {
            return;
        };
        if let Some(f) = self.inflight.remove(i) {
            self.events.push_back(if r.reason.is_error() {
                ClientEvent::Rejected(f.id, r.reason)
            } else {
                ClientEvent::Acked(f.id)
            });
        }
        self.pump();
    }

    fn handle_pubrec(&mut self, r: PubResponse) {
        let Some(i) = self.inflight.iter().position(|f| {
            f.pid == r.packet_id && f.stage == Stage::Publish && f.message.qos == QoS::ExactlyOnce
        }) else {
            // A PUBREC for nothing we hold: release it so the server can
            // forget it [MQTT-4.3.3].
            if !self
                .inflight
                .iter()
                .any(|f| f.pid == r.packet_id && f.stage == Stage::Release)
            {
                self.send(&Packet::PubRel(PubResponse {
                    reason: ReasonCode::PacketIdentifierNotFound,
                    ..PubResponse::new(r.packet_id)
                }));
            }
            return;
        };
        if r.reason.is_error() {
            if let Some(f) = self.inflight.remove(i) {
                self.events.push_back(ClientEvent::Rejected(f.id, r.reason));
            }
            self.pump();
            return;
        }
        if let Some(f) = self.inflight.get_mut(i) {
            f.stage = Stage::Release;
        }
        self.send(&Packet::PubRel(PubResponse::new(r.packet_id)));
    }
}

/// The topic filter of a subscription, for rules built in code.
pub fn subscription(filter: TopicFilter, qos: QoS, no_local: bool) -> Subscription {
    Subscription {
        filter,
        options: crate::codec::SubscriptionOptions {
            qos,
            no_local,
            retain_as_published: true,
            retain_handling: crate::codec::RetainHandling::SendOnSubscribe,
        },
    }
}
