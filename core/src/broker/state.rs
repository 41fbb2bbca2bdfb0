//! Per-connection and per-session state.

use super::action::{AuthorizeToken, ConnId, Message};
use super::{Instant, SessionOwner};
use crate::MqttStr;
use crate::codec::{
    Connect, PacketId, Protocol, Publish, PublishProperties, PublishRef, QoS, QosPid, ReasonCode,
    Subscribe, SubscriptionOptions, Will,
};
use crate::hash::{Map as HashMap, SeededState, Set as HashSet};
use crate::topic::{TopicFilter, TopicName};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use bytes::BytesMut;
use core::num::NonZeroU32;

/// A session: what survives a connection (subscriptions, messages in flight
/// and queued), identified by its client identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SessionId(pub(crate) u64);

/// A subscription as the trie holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubEntry {
    pub(crate) options: SubscriptionOptions,
    pub(crate) id: Option<NonZeroU32>,
}

/// Who a trie entry delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum SubKey {
    Session(SessionId),
    Local(u64),
    /// A `$share/{group}/...` group; the engine picks one member per message.
    Shared(u64),
}

/// Members of one shared subscription group on one filter.
#[derive(Debug)]
pub(crate) struct SharedGroup {
    pub(crate) members: Vec<(SessionId, SubEntry)>,
    /// Round-robin position.
    pub(crate) next: usize,
}

pub(crate) enum ConnState {
    /// Waiting for CONNECT (the connection's timer is the connect timeout).
    AwaitingConnect,
    /// CONNECT received; authentication is under way (see
    /// [`Conn::auth_step`]).
    Authenticating { connect: Box<Connect> },
    /// CONNACK sent; attached to a session.
    Connected { session: SessionId },
}

pub(crate) struct Conn {
    /// Output waiting for the storage batch it depends on (the batch
    /// number), in the order it must be sent. Entries added by the current
    /// input carry [`UNRESOLVED`] until `Broker::flush` knows its batch.
    pub(crate) held: VecDeque<(u64, Held)>,
    /// Client acknowledgements (PUBACK, PUBREC, PUBCOMP) among `held` that
    /// wait for the store: they count against the Receive Maximum.
    pub(crate) held_acks: usize,
    /// Client acknowledgements the current input added to `held`, not yet
    /// known to wait.
    pub(crate) fresh_acks: usize,
    /// The latest storage batch that output of the current input depends
    /// on (0: none).
    pub(crate) needs: u64,
    /// An acknowledgement was added by the current input: it also waits for
    /// whatever the rest of the input stores (the subscribers' copies).
    pub(crate) acked: bool,
    /// The storage batch a successful CONNACK waits for: this connection
    /// created a stored session, and until the batch is durable nothing is
    /// sent to it (its CONNACK and everything after wait in `out`).
    pub(crate) connack_wait: Option<u64>,
    pub(crate) state: ConnState,
    pub(crate) listener: u16,
    /// The listener's authentication class (see `ConnInfo::auth_class`).
    pub(crate) auth_class: u16,
    pub(crate) protocol: Protocol,
    /// Bytes received but not yet a whole packet.
    pub(crate) read_buf: BytesMut,
    /// Packets produced by the current input, flushed as one `Send`.
    pub(crate) out: BytesMut,
    pub(crate) dirty: bool,
    /// Output has been flushed before (see `Broker::flush`).
    pub(crate) flushed: bool,
    /// Output bytes that must still leave (in a `Send`) before the
    /// successful CONNACK has: its end in the connection's output stream,
    /// counted down as output leaves. 0 once it left; `u64::MAX` once it
    /// was dropped unsent (see `Broker::handle_store_failed`). Nothing,
    /// a DISCONNECT included, may leave before it.
    pub(crate) connack_behind: u64,
    pub(crate) keep_alive_ms: u64,
    /// When the last whole packet arrived: what the keep-alive counts from.
    /// Bytes of an unfinished packet do not count, or a client could hold
    /// the connection open by trickling one packet forever.
    pub(crate) last_seen: Instant,
    /// When the first bytes of the packet now in `read_buf` arrived, if one
    /// is unfinished: it must be whole by `Limits::packet_timeout` after.
    pub(crate) packet_started: Option<Instant>,
    /// When this connection's timer is armed, so re-arming can find it.
    pub(crate) timer: Option<Instant>,
    pub(crate) client_id: MqttStr,
    pub(crate) username: Option<MqttStr>,
    /// Boxed: few clients have a will, and every connection would pay for
    /// one inline.
    pub(crate) will: Option<Box<Will>>,
    /// Topic aliases in both directions (MQTT 5), made on first use.
    pub(crate) aliases: Option<Box<TopicAliases>>,
    pub(crate) client_alias_max: u16,
    /// The client's Maximum Packet Size.
    pub(crate) client_max_packet: u32,
    /// What the MQTT 5 CONNACK promised this client, which a later
    /// [`crate::broker::Broker::reconfigure`] does not take back: its
    /// Maximum Packet Size (0: nothing promised, the configured limit
    /// applies), Receive Maximum and Topic Alias Maximum.
    pub(crate) promised_max_packet: u32,
    pub(crate) promised_receive_max: u16,
    pub(crate) promised_alias_max: u16,
    /// Whether the client wants reason strings and user properties on
    /// failures (MQTT 5 Request Problem Information).
    pub(crate) problem_info: bool,
    /// Boxed, and only there when one of its parts is: most clients use
    /// neither a client certificate as their name nor enhanced
    /// authentication, and every connection would pay for three strings.
    pub(crate) auth: Option<Box<ConnAuth>>,
    /// Where an enhanced authentication exchange stands, while connecting
    /// or re-authenticating (MQTT 5 section 4.12).
    pub(crate) auth_step: AuthStep,
    /// A DISCONNECT that asks to publish the will (0x04), or none received.
    pub(crate) graceful: bool,
    /// The runtime cannot take more output for now (see
    /// `Broker::handle_blocked`).
    pub(crate) blocked: bool,
    /// A packet waiting for the embedding program's authorization; while
    /// there is one, the connection's input is not read. Boxed: rare, and
    /// it holds a whole packet.
    pub(crate) authorizing: Option<Box<Authorizing>>,
}

impl Conn {
    pub(crate) fn new(listener: u16, now: Instant) -> Self {
        Conn {
            state: ConnState::AwaitingConnect,
            listener,
            auth_class: 0,
            protocol: Protocol::V3_1_1,
            read_buf: BytesMut::new(),
            flushed: false,
            connack_behind: 0,
            out: BytesMut::new(),
            dirty: false,
            keep_alive_ms: 0,
            last_seen: now,
            packet_started: None,
            timer: None,
            client_id: MqttStr::EMPTY,
            username: None,
            will: None,
            aliases: None,
            client_alias_max: 0,
            client_max_packet: u32::MAX,
            promised_max_packet: 0,
            promised_receive_max: 0,
            promised_alias_max: 0,
            problem_info: true,
            auth: None,
            auth_step: AuthStep::Idle,
            graceful: false,
            blocked: false,
            held: VecDeque::new(),
            held_acks: 0,
            fresh_acks: 0,
            needs: 0,
            acked: false,
            connack_wait: None,
            authorizing: None,
        }
    }

    /// The MQTT 5 Authentication Method in use, if any.
    pub(crate) fn auth_method(&self) -> Option<&MqttStr> {
        self.auth.as_ref()?.method.as_ref()
    }

    /// The user name the transport proved, if any.
    pub(crate) fn identity(&self) -> Option<&MqttStr> {
        self.auth.as_ref()?.identity.as_ref()
    }

    /// The authentication parts, made on first use.
    pub(crate) fn auth_mut(&mut self) -> &mut ConnAuth {
        self.auth.get_or_insert_with(Box::default)
    }

    pub(crate) fn session(&self) -> Option<SessionId> {
        match self.state {
            ConnState::Connected { session } => Some(session),
            _ => None,
        }
    }
}

/// The rarer authentication parts of a [`Conn`].
#[derive(Default)]
pub(crate) struct ConnAuth {
    /// The user name the transport proved (a TLS client certificate, see
    /// `Broker::set_identity`): it replaces the CONNECT's.
    pub(crate) identity: Option<MqttStr>,
    /// The MQTT 5 Authentication Method of an enhanced authentication.
    pub(crate) method: Option<MqttStr>,
    /// Server Reference for the DISCONNECT that ends a redirected
    /// re-authentication.
    pub(crate) redirect: Option<MqttStr>,
}

/// The batch of a [`Conn::held`] entry added by the current input, until
/// the input's end resolves it.
pub(crate) const UNRESOLVED: u64 = u64::MAX;

/// Output held until the storage batch it depends on is durable.
#[derive(Debug)]
pub(crate) enum Held {
    /// A packet, kept whole so a failed batch can change its answer (an
    /// acknowledgement becomes 0x97) or drop it.
    Packet(crate::codec::Packet),
    /// Encoded output (deliveries, and whatever came with them).
    Bytes(bytes::Bytes),
}

/// A step of an authentication exchange (MQTT 5 section 4.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthStep {
    /// No exchange: connected, or waiting for CONNECT.
    Idle,
    /// An [`super::AuthRequest`] is out; the embedding program decides.
    Deciding,
    /// AUTH 0x18 was sent; the client's AUTH 0x18 answer is due.
    Challenged,
}

/// MQTT 5 topic aliases of one connection, in both directions. Boxed in
/// [`Conn`]: only clients that use aliases pay for the tables.
pub(crate) struct TopicAliases {
    /// Client → broker.
    pub(crate) inbound: HashMap<u16, TopicName>,
    /// Broker → client.
    pub(crate) outbound: HashMap<TopicName, u16>,
}

impl TopicAliases {
    pub(crate) fn new(hasher: &SeededState) -> Box<TopicAliases> {
        Box::new(TopicAliases {
            inbound: HashMap::with_hasher(hasher.clone()),
            outbound: HashMap::with_hasher(hasher.clone()),
        })
    }
}

/// A packet held until the embedding program has decided every
/// [`super::AuthorizeRequest`] it raised (`Broker::resolve_authorize`).
pub(crate) struct Authorizing {
    /// When the connection is closed if a decision is still missing.
    pub(crate) deadline: Instant,
    pub(crate) packet: HeldPacket,
}

pub(crate) enum HeldPacket {
    /// A PUBLISH, already checked and counted; one request.
    Publish {
        token: AuthorizeToken,
        publish: Publish,
    },
    /// A CONNECT whose will the policy deferred; one request. The
    /// connection is not connected yet: CONNACK waits for the answer.
    Will {
        token: AuthorizeToken,
        connect: Box<Connect>,
        /// Its client identifier (assigned by the broker if `assigned`).
        client_id: MqttStr,
        assigned: bool,
    },
    /// A CONNECT resuming a session another node of the cluster holds; one
    /// [`super::Action::FetchSession`], answered by
    /// `Broker::session_fetched` (or the deadline: a new session).
    Session {
        token: super::FetchToken,
        connect: Box<Connect>,
        client_id: MqttStr,
    },
    /// A SUBSCRIBE: one slot per filter, in order; `waiting` of them are
    /// still [`FilterSlot::Waiting`].
    Subscribe {
        subscribe: Subscribe,
        slots: Vec<FilterSlot>,
        waiting: usize,
    },
}

/// The authorization of one filter of a held SUBSCRIBE.
pub(crate) enum FilterSlot {
    /// The QoS to grant (before the session's checks), or the failure.
    Decided(Result<QoS, ReasonCode>),
    /// Asked of the embedding program under this token.
    Waiting(AuthorizeToken),
}

/// Where an outbound QoS 1/2 delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutState {
    /// PUBLISH sent (or to be re-sent), waiting for PUBACK or PUBREC.
    Published,
    /// PUBREC received and PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// A message for one session, at the QoS and flags it is delivered with.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// Shared by every session the message goes to: a copy per subscriber
    /// is a reference count, not a topic, a payload and properties.
    pub(crate) message: Arc<Message>,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) subscription_ids: Vec<NonZeroU32>,
    /// When the message stops being worth delivering (MQTT 5 expiry).
    pub(crate) expires_at: Option<Instant>,
    /// The shared subscription group it was picked for, if any: such a
    /// delivery may move to another member when this one's connection
    /// ends (see [`super::Config`]).
    pub(crate) shared_group: Option<u64>,
    /// Its position in the session, given when it enters the session; names
    /// it in storage operations.
    pub(crate) seq: u64,
    /// The storage batch its message must be durable in before it may be
    /// sent (the inbound QoS 2 identifier, a retained copy); 0: none.
    pub(crate) needs: u64,
}

impl Delivery {
    pub(crate) fn payload_len(&self) -> usize {
        self.message.payload.len()
    }

    /// The PUBLISH that carries it, borrowing its parts; without the topic
    /// when an alias stands in for it.
    pub(crate) fn publish<'a>(
        &'a self,
        dup: bool,
        qos: QosPid,
        with_topic: bool,
        properties: Option<&'a PublishProperties>,
    ) -> PublishRef<'a> {
        PublishRef {
            dup,
            qos,
            retain: self.retain,
            topic: with_topic.then_some(&self.message.topic),
            payload: &self.message.payload,
            properties,
        }
    }
}

pub(crate) struct Inflight {
    /// Order of first transmission, for re-sending in order.
    pub(crate) seq: u64,
    pub(crate) state: OutState,
    pub(crate) delivery: Delivery,
}

/// A will waiting for its delay (MQTT 5) after its connection ended.
pub(crate) struct PendingWill {
    pub(crate) will: Will,
    pub(crate) at: Instant,
    pub(crate) from: WillFrom,
}

/// Who a will is published for: it is authorized again, as that client,
/// when it is due.
pub(crate) struct WillFrom {
    pub(crate) client_id: MqttStr,
    pub(crate) username: Option<MqttStr>,
    pub(crate) listener: u16,
}

pub(crate) struct Session {
    pub(crate) client_id: MqttStr,
    /// The identity that created it (or last resumed it, when sessions are
    /// shared across identities); `None` when unknown (restored from a
    /// record without one): then no identity matches it.
    pub(crate) owner: Option<SessionOwner>,
    pub(crate) conn: Option<ConnId>,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub(crate) expiry_interval: u32,
    /// When the session's timer (expiry or delayed will) is armed.
    pub(crate) timer: Option<Instant>,
    pub(crate) expires_at: Option<Instant>,
    pub(crate) subscriptions: HashMap<TopicFilter, SubEntry>,
    pub(crate) inflight: HashMap<PacketId, Inflight>,
    pub(crate) inflight_seq: u64,
    /// The next [`Delivery::seq`].
    pub(crate) next_seq: u64,
    /// Whether the store holds this session (it outlives its connection and
    /// persistence is on).
    pub(crate) stored: bool,
    /// The storage batch that first stored this session (0: restored, or
    /// not stored). Until it is durable a crash forgets the session, so a
    /// CONNACK that resumes it (session present) waits too.
    pub(crate) stored_in: u64,
    pub(crate) queue: VecDeque<Delivery>,
    pub(crate) queued_bytes: usize,
    /// Inbound QoS 2 packet identifiers between PUBREC and PUBREL: a
    /// re-sent PUBLISH with one of these is not routed again.
    pub(crate) incoming_qos2: HashSet<PacketId>,
    pub(crate) next_packet_id: PacketId,
    pub(crate) pending_will: Option<Box<PendingWill>>,
    /// Retained messages still to send for new subscriptions, oldest
    /// subscription first; at most one per filter. Boxed, and only there
    /// while one is under way: 8 bytes in every session, not a `Vec`'s 24.
    #[allow(clippy::box_collection)]
    pub(crate) walks: Option<Box<Vec<RetainedWalk>>>,
    /// The window: the smaller of the broker's in-flight limit and the
    /// client's Receive Maximum.
    pub(crate) window: u16,
}

/// Where the retained messages for one new subscription stand: they are
/// read from the retained store in topic order as the connection takes
/// them (`Broker::walk_retained`), not copied out at SUBSCRIBE, so what it
/// holds is one filter and one topic path whatever the store's size.
pub(crate) struct RetainedWalk {
    pub(crate) filter: TopicFilter,
    pub(crate) entry: SubEntry,
    /// The topic path the walk goes on after (`None`: from the start).
    pub(crate) after: Option<bytes::Bytes>,
    /// `Broker::retained_stamp` when it began: what was stored later went
    /// to the subscriber live.
    pub(crate) since: u64,
}

impl Session {
    pub(crate) fn new(client_id: MqttStr, window: u16, hasher: &SeededState) -> Self {
        Session {
            client_id,
            owner: None,
            conn: None,
            expiry_interval: 0,
            timer: None,
            expires_at: None,
            subscriptions: HashMap::with_hasher(hasher.clone()),
            inflight: HashMap::with_hasher(hasher.clone()),
            inflight_seq: 0,
            next_seq: 1,
            stored: false,
            stored_in: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            incoming_qos2: HashSet::with_hasher(hasher.clone()),
            next_packet_id: PacketId::MIN,
            pending_will: None,
            walks: None,
            window,
        }
    }

    /// A packet identifier not in flight. The window is at most 65,535, so
    /// one is always free when the window has room.
    pub(crate) fn allocate_packet_id(&mut self) -> PacketId {
        let mut id = self.next_packet_id;
        while self.inflight.contains_key(&id) {
            id = id.next();
        }
        self.next_packet_id = id.next();
        id
    }
}
