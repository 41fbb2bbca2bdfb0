//! What the embedding program decides about a broker: limits, capabilities
//! announced to MQTT 5 clients, and the policies that answer hooks.

use super::{PublishDecision, SubscribeDecision};
use crate::MqttStr;
use crate::codec::QoS;
use crate::topic::{TopicFilter, TopicName};
use alloc::boxed::Box;
use alloc::vec::Vec;
use bytes::Bytes;
use core::time::Duration;

/// Limits on everything a client can make the broker hold. Each says what
/// happens when it is reached.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest packet accepted from a client, fixed header included; larger
    /// ones close the connection (DISCONNECT 0x95 for MQTT 5) as soon as
    /// their fixed header arrives. Announced to MQTT 5 clients.
    pub max_packet_size: u32,
    /// Outbound QoS 1/2 messages unacknowledged at once per client (lowered
    /// to the client's Receive Maximum); the rest wait in the session queue.
    pub max_inflight: u16,
    /// Messages queued per session (offline, or beyond the in-flight
    /// window). A message that arrives when the queue is full is dropped for
    /// that session and counted in [`crate::broker::Stats::dropped`].
    pub max_queued_messages: usize,
    /// Payload bytes queued per session; the same drop rule applies.
    pub max_queued_bytes: usize,
    /// Whether QoS 0 messages are queued for offline persistent sessions
    /// (Mosquitto's `queue_qos0_messages`). Off by default.
    pub queue_qos0_offline: bool,
    /// Longest client identifier accepted; longer is CONNACK 0x02 (0x85).
    pub max_client_id_len: usize,
    /// Most levels in a topic name or filter; more is refused (the PUBLISH
    /// closes the connection, the subscription gets a failure code).
    pub max_topic_levels: usize,
    /// Longest topic name or filter, in bytes: a PUBLISH or will to a longer
    /// topic is refused like an invalid topic (0x90), a longer filter gets
    /// SUBACK 0x8F / 0x80. Keeps every stored key within what stores accept.
    pub max_topic_length: usize,
    /// Subscriptions per session; further ones get SUBACK 0x97 / 0x80.
    pub max_subscriptions_per_client: usize,
    /// Connections at once; a CONNECT beyond it gets CONNACK 0x03 (0x89).
    pub max_connections: usize,
    /// Retained messages in the broker; a new retained topic beyond it is
    /// not retained (the message is still delivered).
    pub max_retained_messages: usize,
    /// Time a new connection has to send CONNECT before it is closed.
    pub connect_timeout: Duration,
    /// Time the embedding program has to answer an
    /// [`crate::broker::Action::Authorize`] request. A connection whose
    /// PUBLISH or SUBSCRIBE is still undecided then is closed
    /// ([`crate::broker::CloseReason::AuthorizeTimeout`]; DISCONNECT 0x89
    /// Server busy for MQTT 5), as if its transport had died: its will is
    /// published. The clock starts when the packet is read, and covers
    /// every filter of a SUBSCRIBE.
    pub authorize_timeout: Duration,
    /// Time a packet has to arrive whole once its first byte has. A
    /// connection whose packet is still unfinished then is closed
    /// ([`crate::broker::CloseReason::PacketTimeout`]; DISCONNECT 0x8D Keep
    /// alive timeout for MQTT 5) and its will published. Applies also to
    /// clients with keep-alive 0, so a client cannot hold a connection (and
    /// a read buffer) open by trickling a packet that never ends. Bytes of
    /// an unfinished packet never count as keep-alive activity.
    pub packet_timeout: Duration,
    /// QoS 1/2 acknowledgements (PUBACK, PUBREC, PUBCOMP) an MQTT 3.1/3.1.1
    /// connection may have waiting for durability (see
    /// [`crate::broker::Broker::handle_store_done`]) at once. MQTT 3 has no
    /// Receive Maximum to tell a client how far it may pipeline, so this is
    /// generous. One more closes the connection
    /// ([`crate::broker::CloseReason::PendingAcksExceeded`]) and publishes
    /// its will; the publishes already taken are kept, but their
    /// acknowledgements are lost with the connection, so the client sends
    /// them again. MQTT 5 clients are held to [`Config::receive_maximum`]
    /// instead (DISCONNECT 0x93).
    pub mqtt3_max_pending_acks: usize,
    /// Inbound QoS 2 PUBLISHes an MQTT 3.1/3.1.1 session may have
    /// unreleased (PUBREC sent, PUBREL not yet received) at once; as
    /// Mosquitto. The PUBLISH one beyond it closes the connection
    /// ([`crate::broker::CloseReason::PendingQos2Exceeded`]) without being
    /// routed. MQTT 5 clients are held to [`Config::receive_maximum`]
    /// instead (DISCONNECT 0x93).
    pub mqtt3_max_pending_qos2: usize,
    /// Upper bound on the keep-alive interval; a client asking for more (or
    /// for none) gets this one, announced as Server Keep Alive in MQTT 5.
    pub max_keepalive: Option<u16>,
    /// Output the engine lets build up for one connection before it treats
    /// the connection as blocked, as if [`crate::broker::Broker::handle_blocked`]
    /// had been called: further QoS 0 deliveries are dropped and QoS 1/2
    /// ones queue, within the queue limits, until
    /// [`crate::broker::Broker::handle_writable`]; retained messages for
    /// a new subscription are read from the store only while it is not
    /// blocked. It bounds what one input can make the broker hold, such as
    /// a SUBSCRIBE to `#` with a million retained messages, or the same
    /// filter a thousand times in one packet. A runtime calls
    /// `handle_blocked` at this same bound.
    pub outbound_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 16 * 1024 * 1024,
            max_inflight: 32,
            max_queued_messages: 1000,
            max_queued_bytes: 64 * 1024 * 1024,
            queue_qos0_offline: false,
            max_client_id_len: 65_535,
            max_topic_levels: 128,
            max_topic_length: 32 * 1024,
            max_subscriptions_per_client: 10_000,
            max_connections: usize::MAX,
            max_retained_messages: 10_000_000,
            connect_timeout: Duration::from_secs(10),
            authorize_timeout: Duration::from_secs(10),
            packet_timeout: Duration::from_secs(30),
            mqtt3_max_pending_acks: 5_000,
            mqtt3_max_pending_qos2: 1_000,
            max_keepalive: None,
            outbound_buffer_bytes: 2 * 1024 * 1024,
        }
    }
}

/// The broker's configuration.
///
/// # Shared subscriptions
///
/// A message matching a `$share/{group}/{filter}` subscription goes to one
/// member of the group: round-robin over the members whose client is
/// connected, or (none being connected) over all members, where it waits in
/// that member's session. It is a delivery of its own, apart from any
/// copy the same client gets through a non-shared subscription, and no
/// retained messages are sent on a shared subscribe.
///
/// **Redelivery when a member's connection ends:** its deliveries for a
/// shared subscription that are queued (not yet sent, any QoS) or in flight
/// at QoS 1 (PUBLISH sent, no PUBACK) move to another connected member of
/// the same group, as new deliveries with that member's subscription
/// options, if there is one; otherwise they stay with the member's session
/// (and end with it). A QoS 2 delivery already sent stays with its member,
/// who must complete it on reconnecting [MQTT-4.8.2-4]; one the member
/// refused with a failure code is discarded [MQTT-4.8.2-6]. Moved messages
/// keep their expiry; the receiving member's queue limits apply.
pub struct Config {
    /// Limits.
    pub limits: Limits,
    /// Receive Maximum announced to MQTT 5 clients: inbound QoS 1/2
    /// PUBLISHes a client may have unacknowledged. One more is DISCONNECT
    /// 0x93. MQTT 3 clients, who are never told it, are held to
    /// [`Limits::mqtt3_max_pending_acks`] and
    /// [`Limits::mqtt3_max_pending_qos2`] instead.
    pub receive_maximum: u16,
    /// Highest QoS accepted (announced as Maximum QoS when below 2).
    pub maximum_qos: QoS,
    /// Whether retained messages are supported (Retain Available).
    pub retain_available: bool,
    /// Whether wildcard filters are accepted.
    pub wildcard_subscription_available: bool,
    /// Whether subscription identifiers are accepted.
    pub subscription_identifiers_available: bool,
    /// Whether `$share/` subscriptions are accepted.
    pub shared_subscription_available: bool,
    /// Topic Alias Maximum announced to MQTT 5 clients (inbound aliases).
    pub topic_alias_maximum: u16,
    /// Whether the broker uses topic aliases toward MQTT 5 clients that
    /// allow them.
    pub outbound_topic_aliases: bool,
    /// Whether a PUBLISH whose Payload Format Indicator says UTF-8 must carry
    /// valid UTF-8 (0x99 Payload format invalid otherwise).
    pub validate_utf8_payloads: bool,
    /// Whether UTF-8 strings (client identifier, user name, topics, topic
    /// filters, string properties, in any packet) may contain the code
    /// points section 1.5.4 of MQTT 5 (1.5.3 of 3.1.1) tells senders not to
    /// use: U+0001..U+001F, U+007F..U+009F and the Unicode non-characters.
    ///
    /// Off (the default, as Mosquitto): a packet with one is a Malformed
    /// Packet, which the specification allows a receiver to decide. The
    /// connection is closed (DISCONNECT 0x81 for a connected MQTT 5
    /// client, CONNACK 0x81 for an MQTT 5 CONNECT, nothing for MQTT 3), and
    /// no control character from a client ever reaches a topic, a
    /// subscription or an operator's log. On: they are accepted like any
    /// other character (U+0000 never is [MQTT-1.5.4-2]).
    pub allow_disallowed_code_points: bool,
    /// Period of the `$SYS/broker/...` statistics; `None` turns them off.
    pub sys_interval: Option<Duration>,
    /// Identifier used in `$SYS/<id>/new/clients` presence topics.
    pub broker_id: MqttStr,
    /// Version string published on `$SYS/broker/version`.
    pub version: &'static str,
    /// Whether client lifecycle and traffic events are emitted as
    /// [`crate::broker::Action::Event`].
    pub events: bool,
    /// Seed for everything the broker picks (assigned client identifiers).
    pub random_seed: u64,
    /// Whether the engine emits storage actions (see
    /// [`crate::broker::StoreOp`]) and holds acknowledgements until they are
    /// durable. Off: nothing survives a restart and nothing waits.
    pub persistence: bool,
    /// Whether a CONNECT may resume a session another identity created.
    ///
    /// A session belongs to the identity that created it: the listener
    /// class ([`crate::broker::ConnInfo::auth_class`]) and the authenticated
    /// user name. Off (the default), a CONNECT with the same client
    /// identifier but another identity still takes over the connection (the
    /// old one is closed as [`crate::broker::CloseReason::SessionTakenOver`],
    /// its will handled as for any takeover), but gets a fresh session:
    /// session present 0, and the old session's subscriptions, queued and
    /// in-flight messages are discarded, never delivered to the newcomer.
    /// A session restored from a store record written before owners were
    /// stored has no known owner and is resumed by no one: it is replaced
    /// by a fresh session at the first CONNECT for its client identifier.
    ///
    /// On: any identity resumes the session (Mosquitto's behaviour), and
    /// becomes its owner.
    pub share_sessions_across_identities: bool,
    /// Whether this broker is one node of a cluster (see
    /// [`crate::broker::Broker::publish_remote`]): it then emits
    /// [`crate::broker::Action::Forward`] for every message published here,
    /// [`crate::broker::Action::Interest`] when the set of subscribed
    /// filters changes and [`crate::broker::Action::Claimed`] when a client
    /// connects, and leaves shared subscriptions to the cluster (a message
    /// published here reaches a shared group only through
    /// `publish_remote`, so that one member cluster-wide gets it).
    pub cluster: bool,
    /// Who may connect.
    pub authentication: Authentication,
    /// What connected clients may publish and subscribe to.
    pub authorization: Box<dyn AccessPolicy>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            receive_maximum: 100,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: true,
            topic_alias_maximum: 10,
            outbound_topic_aliases: true,
            validate_utf8_payloads: true,
            allow_disallowed_code_points: false,
            sys_interval: Some(Duration::from_secs(10)),
            broker_id: MqttStr::from_static("roost"),
            version: concat!("roost ", env!("CARGO_PKG_VERSION")),
            events: false,
            random_seed: 0x5eed,
            persistence: false,
            share_sessions_across_identities: false,
            cluster: false,
            authentication: Authentication::AllowAll,
            authorization: Box::new(AllowAll),
        }
    }
}

/// How CONNECTs are authenticated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Authentication {
    /// Every client may connect, with or without credentials.
    AllowAll,
    /// A fixed table of user names and passwords, checked in the engine.
    Static {
        /// Whether clients without a user name may connect.
        allow_anonymous: bool,
        /// The users and their passwords.
        users: Vec<(MqttStr, Bytes)>,
    },
    /// Each CONNECT (and each MQTT 5 AUTH exchange) becomes an
    /// [`crate::broker::Action::Authenticate`] request that the embedding
    /// program answers with [`crate::broker::Broker::resolve_auth`], as late
    /// as it likes.
    External,
}

/// Who is asking, for an authorization decision.
#[derive(Debug, Clone, Copy)]
pub struct ClientRef<'a> {
    /// The client identifier.
    pub client_id: &'a MqttStr,
    /// The authenticated user name, if any.
    pub username: Option<&'a MqttStr>,
    /// The listener the client came in on (the runtime's numbering).
    pub listener: u16,
}

/// A policy's answer: decided here and now, or to be asked of the embedding
/// program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<T> {
    /// The decision, made inline: no round trip.
    Decided(T),
    /// Ask the embedding program: the engine emits an
    /// [`crate::broker::Action::Authorize`] request, pauses the
    /// connection's input, and carries on when
    /// [`crate::broker::Broker::resolve_authorize`] answers (or closes the
    /// connection after [`Limits::authorize_timeout`]).
    Defer,
}

/// An authorization policy the engine consults for every PUBLISH and
/// SUBSCRIBE a client sends, and for every delivery to a client.
///
/// The methods run inside the engine and must be fast and must not block.
/// A policy that needs I/O to decide (an ACL in a database, a remote
/// service) answers [`Verdict::Defer`] from `authorize_publish` or
/// `authorize_subscribe`, and the embedding program decides later; a policy
/// may mix the two, answering what it has cached inline and deferring the
/// rest. While a decision is outstanding, the connection's later packets
/// wait unread, in order (at most two maximum-size packets' worth; more
/// closes the connection with 0x97 Quota exceeded, as during
/// authentication), so nothing the client sends is reordered around it.
pub trait AccessPolicy: Send {
    /// Whether `client` may publish to `topic`. A refused QoS 1/2 PUBLISH is
    /// still acknowledged (with the denial's reason code, 0x87 typically,
    /// in MQTT 5; as a success in MQTT 3, which cannot say no) but not
    /// routed.
    fn authorize_publish(
        &self,
        client: ClientRef<'_>,
        topic: &TopicName,
    ) -> Verdict<PublishDecision>;

    /// Whether `client` may subscribe to `filter` at `qos`: a grant with the
    /// QoS to grant (at most `qos`; more is lowered to it), or a denial with
    /// the failure reason for SUBACK (MQTT 3 clients see any failure as
    /// 0x80).
    fn authorize_subscribe(
        &self,
        client: ClientRef<'_>,
        filter: &TopicFilter,
        qos: QoS,
    ) -> Verdict<SubscribeDecision>;

    /// Whether a message on `topic` may be delivered to `client` (a
    /// subscription that matched). Defaults to yes.
    ///
    /// Asked when the message is routed to a connected client, and again
    /// whenever a message leaves the session's queue to be sent (queued
    /// while the client was offline or beyond its in-flight window) or is
    /// sent again on reconnect: the answer of that moment counts, so a
    /// changed ACL (see [`crate::broker::Broker::set_authorization`]) is
    /// never bypassed by what was queued before. Denied messages are
    /// dropped and counted in [`crate::broker::Stats::deliveries_denied`].
    ///
    /// This one is always answered inline: it runs while a message is
    /// routed, once per matching subscriber, so a round trip would be paid
    /// for every message times its fan-out, and a delivery held for an
    /// answer would stall (or reorder) that session's queue. Decide reading
    /// rights when the client subscribes (through `authorize_subscribe`,
    /// deferred if need be) and keep this check to in-memory tables, such
    /// as an ACL that hides topics a wildcard would match.
    fn authorize_delivery(&self, client: ClientRef<'_>, topic: &TopicName) -> bool {
        let _ = (client, topic);
        true
    }
}

/// The policy that allows everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl AccessPolicy for AllowAll {
    fn authorize_publish(&self, _: ClientRef<'_>, _: &TopicName) -> Verdict<PublishDecision> {
        Verdict::Decided(PublishDecision::Allow)
    }

    fn authorize_subscribe(
        &self,
        _: ClientRef<'_>,
        _: &TopicFilter,
        qos: QoS,
    ) -> Verdict<SubscribeDecision> {
        Verdict::Decided(SubscribeDecision::Grant(qos))
    }
}

/// The policy that asks the embedding program about every PUBLISH and
/// SUBSCRIBE ([`Verdict::Defer`]) and allows every delivery.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeferAll;

impl AccessPolicy for DeferAll {
    fn authorize_publish(&self, _: ClientRef<'_>, _: &TopicName) -> Verdict<PublishDecision> {
        Verdict::Defer
    }

    fn authorize_subscribe(
        &self,
        _: ClientRef<'_>,
        _: &TopicFilter,
        _: QoS,
    ) -> Verdict<SubscribeDecision> {
        Verdict::Defer
    }
}
