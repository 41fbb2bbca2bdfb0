//! What goes into the engine besides bytes, and everything that comes out.

use super::Instant;
use crate::MqttStr;
use crate::codec::{DecodeError, PublishProperties, QoS, ReasonCode};
use crate::topic::{TopicFilter, TopicName};
use bytes::Bytes;
use core::fmt;
use core::net::SocketAddr;

/// A connection, from [`super::Broker::handle_open`] until its
/// [`Action::Close`] or [`super::Broker::handle_closed`]. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub(crate) u64);

impl ConnId {
    /// The number behind the handle, for logs.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// What the runtime knows about a new connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnInfo {
    /// The peer's address, if the transport has one.
    pub remote: Option<SocketAddr>,
    /// Which listener accepted it (the runtime's numbering), for policies.
    pub listener: u16,
    /// The listener's authentication class: listeners that authenticate
    /// clients the same way (the same password file, the same external
    /// authenticator, or both anonymous) share a number; an anonymous
    /// listener never shares one with an authenticating listener. A session
    /// belongs to the class and authenticated user name that created it (see
    /// [`super::Config::share_sessions_across_identities`]), so the same
    /// client identifier on a differently authenticated listener never
    /// resumes it. A runtime with a single authentication setup leaves it 0.
    pub auth_class: u16,
}

/// An in-process subscription made with [`super::Broker::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalSubscription(pub(crate) u64);

/// A pending authentication decision (see
/// [`super::Authentication::External`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthToken(pub(crate) u64);

/// A pending authorization decision (see [`super::Verdict::Defer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthorizeToken(pub(crate) u64);

/// A session asked for from the other nodes of a cluster
/// ([`Action::FetchSession`]); answered with
/// [`super::Broker::session_fetched`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FetchToken {
    pub(crate) conn: ConnId,
    pub(crate) n: u64,
}

/// An application message as the broker routes it: shared, never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic.
    pub topic: TopicName,
    /// The payload.
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// Whether it was published as retained.
    pub retain: bool,
    /// MQTT 5 properties to forward (never a topic alias or subscription
    /// identifiers: those belong to one hop).
    pub properties: PublishProperties,
}

/// Why the engine closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The client's bytes were not a valid packet.
    Decode(DecodeError),
    /// The client broke a rule of the protocol; the reason code says which
    /// (it was sent in a DISCONNECT to MQTT 5 clients).
    Protocol(ReasonCode),
    /// The CONNECT was refused; the CONNACK said why.
    ConnectRefused(ReasonCode),
    /// No CONNECT arrived within the connect timeout.
    ConnectTimeout,
    /// No whole packet arrived for 1.5 times the keep-alive interval (bytes
    /// of an unfinished packet do not count).
    KeepAliveTimeout,
    /// A packet whose first byte arrived was not complete within
    /// [`super::Limits::packet_timeout`] (DISCONNECT 0x8D Keep alive timeout
    /// for MQTT 5, the closest code).
    PacketTimeout,
    /// An [`Action::Authorize`] request was not answered within
    /// [`super::Limits::authorize_timeout`].
    AuthorizeTimeout,
    /// An MQTT 3.1/3.1.1 client had more QoS 1/2 acknowledgements waiting
    /// for durability than [`super::Limits::mqtt3_max_pending_acks`].
    PendingAcksExceeded,
    /// An MQTT 3.1/3.1.1 client had more QoS 2 PUBLISHes unreleased (PUBREC
    /// sent, no PUBREL yet) than [`super::Limits::mqtt3_max_pending_qos2`].
    PendingQos2Exceeded,
    /// Another connection took over the session.
    SessionTakenOver,
    /// The broker is shutting down.
    ServerShutdown,
    /// The store could not make durable what an acknowledgement to this
    /// client would have promised (a full disk, an I/O error): a message
    /// it published at QoS 2 (or at QoS 1 over MQTT 3, which has no
    /// negative acknowledgement), or a subscription change. See
    /// [`super::Broker::handle_store_failed`].
    StoreFailed,
}

/// A sentence an operator can read in a log line, such as `CONNECT refused:
/// not authorized (0x87)`.
impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ClientDisconnect => f.write_str("client disconnected"),
            CloseReason::Decode(e) => write!(f, "bad packet: {e}"),
            CloseReason::Protocol(ReasonCode::DisconnectWithWillMessage) => {
                f.write_str("client disconnected, asking for its will (0x04)")
            }
            CloseReason::Protocol(code) => write!(f, "closed with reason {code}"),
            CloseReason::ConnectRefused(code) => write!(f, "CONNECT refused: {code}"),
            CloseReason::ConnectTimeout => f.write_str("no CONNECT in time"),
            CloseReason::KeepAliveTimeout => {
                f.write_str("keep-alive timeout: no whole packet for 1.5 times the keep-alive")
            }
            CloseReason::PacketTimeout => {
                f.write_str("packet timeout: a packet was started but not finished in time")
            }
            CloseReason::AuthorizeTimeout => f.write_str("no authorization decision in time"),
            CloseReason::PendingAcksExceeded => f.write_str(
                "too many QoS 1/2 publishes waiting for their acknowledgement (MQTT 3 limit)",
            ),
            CloseReason::PendingQos2Exceeded => {
                f.write_str("too many unreleased QoS 2 publishes (MQTT 3 limit)")
            }
            CloseReason::SessionTakenOver => f.write_str("session taken over"),
            CloseReason::ServerShutdown => f.write_str("server shutting down"),
            CloseReason::StoreFailed => {
                f.write_str("the store could not make a message or subscription durable")
            }
        }
    }
}

/// A CONNECT (or MQTT 5 AUTH step) waiting for the embedding program's
/// decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// Hand this back to [`super::Broker::resolve_auth`].
    pub token: AuthToken,
    /// The connection asking.
    pub conn: ConnId,
    /// The listener it came in on.
    pub listener: u16,
    /// Its client identifier (empty if the broker will assign one).
    pub client_id: MqttStr,
    /// User name, if sent.
    pub username: Option<MqttStr>,
    /// Password, if sent.
    pub password: Option<Bytes>,
    /// MQTT 5 Authentication Method, if enhanced authentication is used.
    pub method: Option<MqttStr>,
    /// MQTT 5 Authentication Data of this step.
    pub data: Option<Bytes>,
}

/// The embedding program's answer to an [`AuthRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthDecision {
    /// Let the client in.
    Accept,
    /// Refuse it with this reason (MQTT 3 clients see the nearest return
    /// code: 0x04 for bad credentials, 0x05 for not authorized).
    Reject(ReasonCode),
    /// Refuse it and point it elsewhere (0x9C Use another server or 0x9D
    /// Server moved, with a Server Reference).
    Redirect {
        /// 0x9C or 0x9D.
        reason: ReasonCode,
        /// Where to go.
        server_reference: MqttStr,
    },
    /// MQTT 5 enhanced authentication: send AUTH 0x18 with this data and
    /// wait for the client's next step (another [`AuthRequest`]).
    Continue {
        /// Authentication Data for the client.
        data: Bytes,
    },
}

/// A PUBLISH or one filter of a SUBSCRIBE waiting for the embedding
/// program's decision, because the [`super::AccessPolicy`] answered
/// [`super::Verdict::Defer`]. Answer with [`super::Broker::resolve_authorize`]
/// within [`super::Limits::authorize_timeout`]; until then the connection's
/// later packets wait unread.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthorizeRequest {
    /// Hand this back to [`super::Broker::resolve_authorize`].
    pub token: AuthorizeToken,
    /// The connection asking.
    pub conn: ConnId,
    /// Its client identifier.
    pub client_id: MqttStr,
    /// Its authenticated user name, if any.
    pub username: Option<MqttStr>,
    /// The listener it came in on (the runtime's numbering).
    pub listener: u16,
    /// What it wants to do.
    pub what: Operation,
}

/// What an [`AuthorizeRequest`] asks permission for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// Publish a message (answer with a [`PublishDecision`]).
    Publish {
        /// Its topic (a topic alias already resolved).
        topic: TopicName,
        /// Its QoS.
        qos: QoS,
        /// Whether it is to be retained.
        retain: bool,
    },
    /// Subscribe to one filter (answer with a [`SubscribeDecision`]). A
    /// SUBSCRIBE with several filters the policy deferred asks once per
    /// filter; its SUBACK goes out when every answer is in, in filter order.
    Subscribe {
        /// The filter, as sent (`$share/...` included).
        filter: TopicFilter,
        /// The QoS asked for.
        qos: QoS,
    },
}

/// Whether a client may publish a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishDecision {
    /// Route it.
    Allow,
    /// Acknowledge it (with this reason code in MQTT 5; a code that is not
    /// an error counts as 0x87 Not authorized) but do not route it. MQTT 3
    /// has no way to refuse a PUBLISH: the client sees a normal
    /// acknowledgement.
    Deny(ReasonCode),
}

/// Whether a client may subscribe to a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeDecision {
    /// Subscribe at this QoS, lowered to what the client asked for and to
    /// [`super::Config::maximum_qos`].
    Grant(QoS),
    /// Refuse with this SUBACK reason code (0x80 Unspecified error or 0x87
    /// Not authorized typically; a code that is not an error counts as
    /// 0x87). MQTT 3 clients see 0x80 Failure.
    Deny(ReasonCode),
}

/// The embedding program's answer to an [`AuthorizeRequest`]: a
/// [`PublishDecision`] for [`Operation::Publish`], a [`SubscribeDecision`]
/// for [`Operation::Subscribe`]. Both convert into it with `into()`.
///
/// An answer of the other kind is a bug in the embedding program; the
/// engine then refuses, with 0x80 Unspecified error, rather than guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthorizeDecision {
    /// The answer to a publish request.
    Publish(PublishDecision),
    /// The answer to a subscribe request.
    Subscribe(SubscribeDecision),
}

impl From<PublishDecision> for AuthorizeDecision {
    fn from(d: PublishDecision) -> Self {
        AuthorizeDecision::Publish(d)
    }
}

impl From<SubscribeDecision> for AuthorizeDecision {
    fn from(d: SubscribeDecision) -> Self {
        AuthorizeDecision::Subscribe(d)
    }
}

/// Something that happened, for logs, metrics and hooks that only watch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A client's CONNECT was accepted.
    ClientConnected {
        /// The connection.
        conn: ConnId,
        /// Its client identifier.
        client_id: MqttStr,
        /// Its user name.
        username: Option<MqttStr>,
    },
    /// A connected client went away.
    ClientDisconnected {
        /// The connection.
        conn: ConnId,
        /// Its client identifier.
        client_id: MqttStr,
        /// Why.
        reason: CloseReason,
    },
    /// A client subscribed.
    Subscribed {
        /// Its client identifier.
        client_id: MqttStr,
        /// The filter.
        filter: TopicFilter,
        /// The QoS granted, or the failure code.
        result: Result<QoS, ReasonCode>,
    },
    /// A client unsubscribed.
    Unsubscribed {
        /// Its client identifier.
        client_id: MqttStr,
        /// The filter.
        filter: TopicFilter,
    },
    /// A message was accepted for routing.
    Published {
        /// The publishing client, or `None` for the embedding program.
        client_id: Option<MqttStr>,
        /// The topic.
        topic: TopicName,
        /// Its QoS.
        qos: QoS,
        /// How many subscriptions it reached.
        matched: usize,
    },
    /// A client acknowledged a QoS 1/2 delivery completely.
    Acknowledged {
        /// Its client identifier.
        client_id: MqttStr,
        /// The packet identifier.
        packet_id: u16,
    },
    /// Messages for a session were dropped because its queue was full.
    QueueFull {
        /// Its client identifier.
        client_id: MqttStr,
    },
}

/// Everything the engine asks of the world. Drain with
/// [`super::Broker::poll_action`] after every input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Write these bytes to the connection, after any sent before. All the
    /// packets one input produced for a connection come as one `Send`.
    Send {
        /// The connection.
        conn: ConnId,
        /// Encoded packets.
        bytes: Bytes,
    },
    /// Flush what was sent, then close the connection. The engine has
    /// forgotten it: do not call `handle_closed` for it.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// A message for an in-process subscription.
    Deliver {
        /// The subscription it matched.
        subscription: LocalSubscription,
        /// The message (`retain` is true only for retained messages sent
        /// when subscribing).
        message: Message,
    },
    /// Make these operations durable, in order, then call
    /// [`super::Broker::handle_store_done`] with `id` (only with
    /// [`super::Config::persistence`]). Acknowledgements that promise them
    /// wait until then.
    Store {
        /// The batch number; batches are confirmed in order.
        id: super::StoreId,
        /// The operations.
        ops: alloc::vec::Vec<super::StoreOp>,
    },
    /// Decide whether this client may connect; answer with
    /// [`super::Broker::resolve_auth`].
    Authenticate(AuthRequest),
    /// Decide whether this client may publish or subscribe; answer with
    /// [`super::Broker::resolve_authorize`]. Its connection reads nothing
    /// more until then.
    Authorize(AuthorizeRequest),
    /// Something happened (only with [`super::Config::events`]).
    Event(Event),
    /// A message published on this node, for the other nodes of the
    /// cluster (only with [`super::Config::cluster`]). Never emitted for a
    /// message that came from the cluster, nor for `$SYS` topics, which are
    /// each node's own.
    Forward {
        /// The message as published (its `retain` flag as the publisher
        /// set it).
        message: Message,
        /// The publishing client's identifier; `None` for the embedding
        /// program.
        client_id: Option<MqttStr>,
        /// The publishing client's user name, if any.
        username: Option<MqttStr>,
    },
    /// The set of filters this node has subscribers for changed (only with
    /// [`super::Config::cluster`]): subscribe the node to `filter` in the
    /// cluster (`present`), or no longer.
    Interest {
        /// The filter (without any `$share/<group>/` prefix).
        filter: crate::topic::TopicFilter,
        /// The shared subscription group, for a shared subscription.
        group: Option<MqttStr>,
        /// Whether this node now has subscribers for it.
        present: bool,
    },
    /// A client connected here (only with [`super::Config::cluster`]): the
    /// other nodes must end its connection and session there
    /// ([`super::Broker::release_client`]), as one client identifier is
    /// one session cluster-wide.
    Claimed {
        /// The client identifier.
        client_id: MqttStr,
        /// Whether the new connection started clean (the old one's will
        /// is then due).
        clean_start: bool,
    },
    /// A client asks to resume a session this node does not have (only
    /// with [`super::Config::cluster`]; Clean Start 0): fetch it from the
    /// node that holds it ([`super::Broker::hand_over`] there) and answer
    /// with [`super::Broker::session_fetched`], `None` when no node has it
    /// or it did not come in time. The CONNACK waits for the answer (at
    /// most [`super::Limits::authorize_timeout`], then the client gets a
    /// new session), and the connection reads nothing meanwhile.
    FetchSession {
        /// What the answer names.
        token: FetchToken,
        /// The client identifier.
        client_id: MqttStr,
        /// Who connects: the session is handed over only if it is theirs
        /// (or sessions are shared across identities).
        owner: super::SessionOwner,
    },
    /// This node now holds the session of `client_id` (`present`), or no
    /// longer (only with [`super::Config::cluster`]): where the other nodes
    /// look for it ([`Action::FetchSession`]).
    Hosting {
        /// The client identifier.
        client_id: MqttStr,
        /// Whether the session is here.
        present: bool,
    },
}

/// What a connected client's CONNECT settled ([`super::Broker::client_info`]),
/// for operator logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientInfo {
    /// The MQTT version it speaks.
    pub protocol: crate::codec::Protocol,
    /// Its session outlives the connection (MQTT 3 clean session 0, MQTT 5
    /// a session expiry interval above 0).
    pub persistent: bool,
    /// Session expiry interval in seconds (`u32::MAX`: never).
    pub session_expiry_secs: u32,
    /// The keep-alive in force, in seconds (the server's when it overrode
    /// the client's; 0: none).
    pub keep_alive_secs: u64,
}

/// Totals across sessions ([`super::Broker::session_totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionTotals {
    /// Sessions, connected or not.
    pub sessions: usize,
    /// Sessions that outlive their connection (expiry interval above 0).
    pub persistent: usize,
    /// Outbound QoS 1/2 messages in flight.
    pub inflight: usize,
    /// Messages queued, not yet in flight.
    pub queued: usize,
}

/// Counters for `$SYS` and monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// When the broker started.
    pub started: Instant,
    /// PUBLISH packets received from clients.
    pub messages_received: u64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: u64,
    /// Bytes received from clients.
    pub bytes_received: u64,
    /// Bytes handed to runtimes to send.
    pub bytes_sent: u64,
    /// Messages dropped because a session queue was full (or a packet was
    /// larger than the client's Maximum Packet Size).
    pub dropped: u64,
    /// Connections ever accepted (CONNACK 0).
    pub connections_total: u64,
    /// Wills not published because the authorization policy denied them
    /// when they were due (it allowed them at CONNECT).
    pub wills_denied: u64,
    /// Deliveries not made because the policy's
    /// [`super::AccessPolicy::authorize_delivery`] said no: when the message
    /// was routed, or later, when it left the session's queue.
    pub deliveries_denied: u64,
    /// Acknowledgements and CONNACKs answered with a failure, or MQTT 3
    /// connections closed, because the store could not make a batch
    /// durable (see `Broker::handle_store_failed`).
    pub store_failures: u64,
    /// [`Stats::messages_received`] by the QoS they were published with
    /// (index 0, 1, 2).
    pub received_by_qos: [u64; 3],
    /// [`Stats::messages_sent`] by the QoS they were sent with.
    pub sent_by_qos: [u64; 3],
    /// Payload bytes of [`Stats::received_by_qos`], by the same QoS.
    pub payload_received_by_qos: [u64; 3],
    /// Payload bytes of [`Stats::sent_by_qos`], by the same QoS.
    pub payload_sent_by_qos: [u64; 3],
    /// Of [`Stats::dropped`]: messages a session's queue had no room for,
    /// and QoS 0 messages for a connection whose output was over its limit.
    pub dropped_queue_full: u64,
    /// Of [`Stats::dropped`]: messages larger than the receiving client's
    /// Maximum Packet Size.
    pub dropped_too_large: u64,
    /// Queued messages whose Message Expiry Interval ran out before they
    /// could be sent (not in [`Stats::dropped`]).
    pub dropped_expired: u64,
    /// Inbound PUBLISH packets the authorization policy refused (acknowledged
    /// with a failure, or silently dropped in MQTT 3).
    pub publishes_denied: u64,
    /// CONNECTs refused by authentication (a rejected password, an
    /// anonymous client where none may connect, a bad method).
    pub auth_failures: u64,
    /// Sessions that ended because their expiry interval ran out.
    pub sessions_expired: u64,
    /// Sessions another node of the cluster handed over to this one
    /// ([`super::Broker::session_fetched`]).
    pub sessions_moved_in: u64,
    /// Sessions this node handed over to another
    /// ([`super::Broker::hand_over`]).
    pub sessions_moved_out: u64,
}
