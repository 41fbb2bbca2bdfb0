//! The broker engine: a pure state machine for MQTT 3.1, 3.1.1 and 5.0.
//!
//! # The loop
//!
//! The embedding program (a runtime) owns the sockets and the clock. It
//! feeds the engine inputs, each stamped with the current [`Instant`]:
//!
//! - [`Broker::handle_open`] when a connection is accepted,
//! - [`Broker::handle_bytes`] with whatever bytes arrived, split anyhow,
//! - [`Broker::handle_closed`] when the transport died,
//! - [`Broker::handle_store_done`] / [`Broker::handle_store_failed`] when
//!   the store made a batch durable or could not,
//! - [`Broker::handle_timeout`] when the deadline from
//!   [`Broker::poll_timeout`] has passed (early or spurious calls are
//!   harmless),
//! - commands: [`Broker::publish`], [`Broker::subscribe`],
//!   [`Broker::resolve_auth`], [`Broker::resolve_authorize`],
//!   [`Broker::shutdown`].
//!
//! **After any input, drain [`Broker::poll_action`] until it returns `None`,
//! then re-arm the timer from [`Broker::poll_timeout`].** Actions for one
//! connection come in the order they must be applied: every `Send` before
//! that connection's `Close`. Time never goes backwards: an `Instant`
//! earlier than one already seen is treated as the latest one.
//!
//! ```
//! use roost_core::broker::{Action, Broker, Config, ConnInfo, Instant};
//!
//! let mut broker = Broker::new(Config::default(), Instant::ZERO);
//! let conn = broker.handle_open(Instant::ZERO, ConnInfo::default());
//! // CONNECT, MQTT 3.1.1, clean session, keep-alive 60, client id "a".
//! broker.handle_bytes(Instant::ZERO, conn, &[
//!     0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, b'a',
//! ]);
//! let mut sent = Vec::new();
//! while let Some(action) = broker.poll_action() {
//!     if let Action::Send { bytes, .. } = action {
//!         sent.extend_from_slice(&bytes);
//!     }
//! }
//! assert_eq!(sent, [0x20, 0x02, 0x00, 0x00]); // CONNACK, accepted
//! assert!(broker.poll_timeout().is_some()); // the keep-alive deadline
//! ```
//!
//! # Bounds
//!
//! Everything a client can grow is bounded by [`Limits`]: packet size (the
//! read buffer never holds more than one maximum-size packet), in-flight
//! window, queue length and bytes per session, subscriptions per session,
//! topic depth, retained messages, connections, the time a started packet
//! may take to arrive whole, and what an MQTT 3 client may pipeline (QoS 1
//! acknowledgements waiting for durability, unreleased QoS 2). Each limit's
//! documentation says what happens when it is reached, and every close
//! carries a [`CloseReason`] naming why, readable in a log through its
//! `Display`.
//!
//! # Identity and authorization
//!
//! A session belongs to the identity that created it (listener class from
//! [`ConnInfo::auth_class`] and authenticated user name; see
//! [`Config::share_sessions_across_identities`]). A will is authorized like
//! a PUBLISH at CONNECT and again when it is due; queued messages are
//! authorized again ([`AccessPolicy::authorize_delivery`]) when they leave
//! the queue.

mod action;
mod authorize;
mod cluster;
mod config;
mod connect;
mod durable;
mod problem;
mod publish;
mod state;
mod store;
mod subscribe;
mod sys;
mod time;
pub mod topics;

pub use action::{
    Action, AuthDecision, AuthRequest, AuthToken, AuthorizeDecision, AuthorizeRequest,
    AuthorizeToken, ClientInfo, CloseReason, ConnId, ConnInfo, Event, FetchToken,
    LocalSubscription, Message, Operation, PublishDecision, SessionTotals, Stats,
    SubscribeDecision,
};
pub use cluster::{RemoteOrigin, RemoteTarget};
pub use config::{
    AccessPolicy, AllowAll, Authentication, ClientRef, Config, DeferAll, Limits, Verdict,
};
pub use store::{
    Recovered, RecoveredMessage, RecoveredSession, SessionOwner, StoreId, StoreOp, StoredMessage,
};
pub use time::Instant;

use crate::MqttStr;
use crate::codec::{DecodeOptions, Disconnect, Packet, Protocol, ReasonCode, decode_with};
use crate::hash::{Map as HashMap, SeededState};
use crate::topic::{SubscriptionTrie, TopicFilter, TopicMap};
use alloc::boxed::Box;
use alloc::collections::{BTreeSet, VecDeque};
use alloc::vec::Vec;
use state::{AuthStep, Conn, ConnState, Session, SessionId, SharedGroup, SubEntry, SubKey};

/// A retained message and when it stops being retained (MQTT 5 expiry).
/// Its topic is the store's key. Kept apart from [`Message`]: most
/// retained messages have no MQTT 5 properties, and a store of millions
/// should not hold ~160 bytes of empty ones inline in each, nor a topic
/// handle twice; a delivery makes its `Message` when it is sent.
struct Retained {
    payload: bytes::Bytes,
    /// Only when it has any.
    properties: Option<Box<crate::codec::PublishProperties>>,
    expires_at: Option<Instant>,
    /// When it was stored ([`Broker::retained_stamp`]): a walk that began
    /// before sent it live, not from the store.
    stamp: u64,
    qos: crate::codec::QoS,
}

impl Retained {
    fn new(message: Message, expires_at: Option<Instant>, stamp: u64) -> Self {
        let properties = (message.properties != crate::codec::PublishProperties::default())
            .then(|| Box::new(message.properties));
        Retained {
            // Moved, not cloned: a clone of a `Bytes` made from a vector
            // allocates its shared header.
            payload: message.payload,
            properties,
            expires_at,
            stamp,
            qos: message.qos,
        }
    }

    /// The message of `topic`, with RETAIN set.
    fn message(&self, topic: &crate::topic::TopicName) -> Message {
        Message {
            topic: topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos,
            retain: true,
            properties: self.properties.as_deref().cloned().unwrap_or_default(),
        }
    }
}

/// What a timer entry is for. Entries are looked up again when they fire, so
/// a stale one (for a connection already gone) is harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Connect timeout or keep-alive.
    Conn(ConnId),
    /// Session expiry or a delayed will.
    Session(SessionId),
    /// The deadline of a connection's pending authorization.
    Authorize(ConnId),
    /// The next `$SYS` statistics.
    Sys,
}

/// The MQTT broker engine. See the [module documentation](self) for the
/// loop that drives it.
pub struct Broker {
    config: Config,
    now: Instant,
    next_id: u64,
    // Boxed values: the tables then hold 16-byte entries, so their
    // power-of-two slack costs little per idle connection.
    /// Keys every hash table (see [`crate::hash`]).
    hasher: SeededState,
    conns: HashMap<ConnId, Box<Conn>>,
    sessions: HashMap<SessionId, Box<Session>>,
    by_client_id: HashMap<MqttStr, SessionId>,
    subscriptions: SubscriptionTrie<SubKey, SubEntry, SeededState>,
    shared_groups: HashMap<u64, SharedGroup>,
    shared_index: HashMap<(MqttStr, TopicFilter), u64>,
    locals: HashMap<u64, TopicFilter>,
    retained: TopicMap<Retained, SeededState>,
    /// Counts changes to `retained`, to stamp each stored message.
    retained_stamp: u64,
    /// Sessions that may have retained walks under way (checked when
    /// used): a change to the store looks at them, and at nothing when
    /// there are none.
    walking: Vec<SessionId>,
    /// Every armed deadline, earliest first: `poll_timeout` never walks
    /// the sessions.
    timers: BTreeSet<(Instant, Timer)>,
    actions: VecDeque<Action>,
    dirty: Vec<ConnId>,
    pending_auth: HashMap<AuthToken, ConnId>,
    /// Outstanding authorization requests: the connection, and which filter
    /// of its held SUBSCRIBE (0 for a PUBLISH).
    pending_authorize: HashMap<AuthorizeToken, (ConnId, usize)>,
    /// Reused by routing so matching a message allocates nothing.
    scratch: Vec<(SubKey, SubEntry)>,
    stats: Stats,
    busiest: topics::TopicSampler,
    /// Storage operations of the current input, emitted as one batch.
    pending_ops: Vec<StoreOp>,
    /// The last batch number given out, and the last one confirmed durable.
    last_store_id: u64,
    durable: u64,
    /// Connections with held acknowledgements.
    holding: Vec<ConnId>,
    /// Connections whose CONNACK waits for a storage batch.
    gated: Vec<ConnId>,
    connected: usize,
    shutting_down: bool,
    /// Cluster mode: how many local routing entries each filter has, so
    /// the cluster hears only of the first and the last.
    interest: HashMap<TopicFilter, usize>,
    /// Cluster mode, while a message from another node is delivered: the
    /// shared group it is for (`Some(None)`: the plain subscriptions).
    remote_group: Option<Option<u64>>,
}

impl Broker {
    /// A broker with no sessions, started at `now`.
    pub fn new(config: Config, now: Instant) -> Self {
        let seed = config.random_seed;
        let hasher = SeededState::new(seed);
        let mut broker = Broker {
            config,
            now,
            next_id: 0,
            conns: HashMap::with_hasher(hasher.clone()),
            sessions: HashMap::with_hasher(hasher.clone()),
            by_client_id: HashMap::with_hasher(hasher.clone()),
            subscriptions: SubscriptionTrie::with_hasher(hasher.clone()),
            shared_groups: HashMap::with_hasher(hasher.clone()),
            shared_index: HashMap::with_hasher(hasher.clone()),
            locals: HashMap::with_hasher(hasher.clone()),
            retained: TopicMap::with_hasher(hasher.clone()),
            retained_stamp: 0,
            walking: Vec::new(),
            timers: BTreeSet::new(),
            actions: VecDeque::new(),
            dirty: Vec::new(),
            pending_auth: HashMap::with_hasher(hasher.clone()),
            pending_authorize: HashMap::with_hasher(hasher.clone()),
            scratch: Vec::new(),
            stats: Stats {
                started: now,
                ..Stats::default()
            },
            busiest: topics::TopicSampler::new(now, seed),
            pending_ops: Vec::new(),
            last_store_id: 0,
            durable: 0,
            holding: Vec::new(),
            gated: Vec::new(),
            connected: 0,
            shutting_down: false,
            interest: HashMap::with_hasher(hasher.clone()),
            remote_group: None,
            hasher,
        };
        // The first `$SYS` statistics are due at once, so subscribers do not
        // wait an interval for them; the timer (not this constructor)
        // publishes them, after `Broker::restore` has put back what the
        // store held.
        if broker.config.sys_interval.is_some() {
            broker.timers.insert((now, Timer::Sys));
        }
        broker
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Open connections (including those that have not sent CONNECT yet).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Connections with an accepted CONNECT.
    pub fn connected_count(&self) -> usize {
        self.connected
    }

    /// Sessions, connected or not.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Subscriptions across all sessions and in-process subscribers.
    pub fn subscription_count(&self) -> usize {
        self.sessions
            .values()
            .map(|s| s.subscriptions.len())
            .sum::<usize>()
            + self.locals.len()
    }

    /// Totals across sessions, for monitoring. Walks every session: call
    /// it for a scrape, not per message.
    pub fn session_totals(&self) -> SessionTotals {
        let mut totals = SessionTotals::default();
        for s in self.sessions.values() {
            totals.sessions += 1;
            totals.persistent += usize::from(s.expiry_interval > 0);
            totals.inflight += s.inflight.len();
            totals.queued += s.queue.len();
        }
        totals
    }

    /// Up to `n` of the topics published to most in the last
    /// [`topics::DECAY`] or two, busiest first, with each one's estimated
    /// share of inbound publishes (0.0 ..= 1.0). An estimate from a sample
    /// (one publish in [`topics::SAMPLE_EVERY`], at most
    /// [`topics::TRACKED`] topics), for a status page, not for billing.
    pub fn busiest_topics(&self, n: usize) -> Vec<(crate::topic::TopicName, f64)> {
        self.busiest.busiest(n)
    }

    /// A connection handle the engine never gives out to a connection of
    /// its own: for a transport the host serves itself (the driver's HTTP
    /// endpoint), so that handles stay unique across both. The engine knows
    /// nothing else about it.
    pub fn reserve_conn_id(&mut self) -> ConnId {
        ConnId(self.fresh_id())
    }

    /// Retained messages.
    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    /// Authorization requests waiting for [`Broker::resolve_authorize`], for
    /// leak checks.
    pub fn pending_authorize_count(&self) -> usize {
        self.pending_authorize.len()
    }

    /// Armed timers (connections, sessions, authorizations and `$SYS`), for
    /// leak checks.
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// The latest time the engine was given: an input with an earlier
    /// `now` (a clock that stepped back) is handled at this time, so it
    /// never goes backwards.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// What a connected client's CONNECT settled: protocol, session kind,
    /// keep-alive. `None` unless `conn` is connected (CONNACK sent).
    pub fn client_info(&self, conn: ConnId) -> Option<ClientInfo> {
        let c = self.conns.get(&conn)?;
        let state::ConnState::Connected { session } = &c.state else {
            return None;
        };
        let expiry = self.sessions.get(session)?.expiry_interval;
        Some(ClientInfo {
            protocol: c.protocol,
            persistent: expiry > 0,
            session_expiry_secs: expiry,
            keep_alive_secs: c.keep_alive_ms / 1000,
        })
    }

    /// Whether a session exists for `client_id`.
    pub fn has_session(&self, client_id: &str) -> bool {
        self.by_client_id.contains_key(client_id.as_bytes())
    }

    /// Messages queued (not yet in flight) for `client_id`'s session.
    pub fn queued_count(&self, client_id: &str) -> usize {
        self.session_by_name(client_id).map_or(0, |s| s.queue.len())
    }

    /// Outbound QoS 1/2 messages in flight for `client_id`'s session.
    pub fn inflight_count(&self, client_id: &str) -> usize {
        self.session_by_name(client_id)
            .map_or(0, |s| s.inflight.len())
    }

    fn session_by_name(&self, client_id: &str) -> Option<&Session> {
        let id = self.by_client_id.get(client_id.as_bytes())?;
        self.sessions.get(id).map(|s| &**s)
    }

    /// The next action to apply, or `None` when there is nothing to do.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Broker::handle_timeout`] should next be called, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// A transport connection was accepted.
    pub fn handle_open(&mut self, now: Instant, info: ConnInfo) -> ConnId {
        self.advance(now);
        let id = ConnId(self.fresh_id());
        let deadline = self.now + self.config.limits.connect_timeout;
        let mut conn = Conn::new(info.listener, self.now);
        conn.auth_class = info.auth_class;
        conn.timer = Some(deadline);
        self.conns.insert(id, Box::new(conn));
        self.timers.insert((deadline, Timer::Conn(id)));
        id
    }

    /// Bytes arrived on `conn`. Any split of the stream is fine.
    pub fn handle_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        self.advance(now);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.read_buf.extend_from_slice(bytes);
        let connecting = matches!(c.state, ConnState::AwaitingConnect);
        self.stats.bytes_received += bytes.len() as u64;
        self.process_input(conn);
        if connecting {
            // The buffer the CONNECT was cut from would stay allocated
            // (empty, but holding it) for as long as the connection is
            // idle. Busy connections keep theirs: reusing it saves an
            // allocation per input.
            if let Some(c) = self.conns.get_mut(&conn) {
                if c.read_buf.is_empty() {
                    c.read_buf = bytes::BytesMut::new();
                }
            }
        }
        self.flush();
    }

    fn process_input(&mut self, conn: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            // The size an MQTT 5 CONNACK promised holds for the connection;
            // otherwise the limit in force now.
            let max = match c.promised_max_packet {
                0 => self.config.limits.max_packet_size,
                promised => promised,
            } as usize;
            if c.authorizing.is_some()
                || (matches!(c.state, ConnState::Authenticating { .. })
                    && c.auth_step != AuthStep::Challenged)
            {
                // Packets after CONNECT (or after a PUBLISH or SUBSCRIBE
                // being authorized) wait for the decision, so nothing is
                // reordered around it; one maximum packet's worth of them
                // at most. After a challenge, the next packet is read: it
                // must be the client's AUTH.
                if c.read_buf.len() > max.saturating_mul(2) {
                    self.close(conn, CloseReason::Protocol(ReasonCode::QuotaExceeded));
                }
                return;
            }
            if let ConnState::AwaitingConnect = c.state {
                // So a malformed MQTT 5 CONNECT is answered in MQTT 5 form.
                if connect_level(&c.read_buf) == Some(5) {
                    c.protocol = Protocol::V5;
                }
            }
            let options = DecodeOptions {
                reject_disallowed_code_points: !self.config.allow_disallowed_code_points,
            };
            match decode_with(&mut c.read_buf, c.protocol, max, options) {
                Ok(Some(packet)) => {
                    // Only whole packets are activity [MQTT-3.1.2-24].
                    c.last_seen = self.now;
                    c.packet_started = None;
                    self.handle_packet(conn, packet);
                }
                Ok(None) => {
                    if c.read_buf.is_empty() {
                        // Give back what a large packet left behind.
                        if c.read_buf.capacity() > 64 * 1024 {
                            c.read_buf = bytes::BytesMut::new();
                        }
                    } else if c.packet_started.is_none() {
                        c.packet_started = Some(self.now);
                        self.arm_packet_deadline(conn);
                    }
                    return;
                }
                Err(e) => {
                    self.decode_error(conn, e);
                    return;
                }
            }
        }
    }

    /// The transport of `conn` died (or the runtime closed it). The will is
    /// published as for any connection that ends without DISCONNECT.
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId) {
        self.advance(now);
        if self.conns.contains_key(&conn) {
            self.drop_conn(
                conn,
                CloseReason::Protocol(ReasonCode::UnspecifiedError),
                true,
            );
        }
        self.flush();
    }

    /// The transport authenticated `conn` as `username` (for example, the
    /// common name of a verified TLS client certificate). Call it before the
    /// CONNECT arrives: the CONNECT's user name is then replaced by this one
    /// and its password dropped, so authentication, ACLs (`user`, `%u`),
    /// session ownership and events all see this name. Ignored for an
    /// unknown connection.
    pub fn set_identity(&mut self, conn: ConnId, username: MqttStr) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.auth_mut().identity = Some(username);
        }
    }

    /// The runtime's output buffer for `conn` is full: until
    /// [`Broker::handle_writable`], QoS 0 deliveries to it are dropped (and
    /// counted in [`Stats::dropped`]) and QoS 1/2 deliveries wait in its
    /// session queue, within the queue limits. Acknowledgements and other
    /// control packets are still sent; they are small and bounded by what
    /// the client itself sends.
    pub fn handle_blocked(&mut self, now: Instant, conn: ConnId) {
        self.advance(now);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.blocked = true;
        }
    }

    /// The runtime's output buffer for `conn` has drained: deliveries resume,
    /// starting with what queued up meanwhile.
    pub fn handle_writable(&mut self, now: Instant, conn: ConnId) {
        self.advance(now);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !core::mem::replace(&mut c.blocked, false) {
            return;
        }
        if let Some(sid) = c.session() {
            self.pump(sid);
        }
        self.flush();
    }

    /// Takes new limits and capabilities from `new` (a re-read
    /// configuration): [`Config::limits`], the capabilities announced to
    /// MQTT 5 clients, topic aliases, UTF-8 validation and session sharing.
    /// They apply to connections that connect from now on and to every
    /// check made from now on, except what a connected MQTT 5 client was
    /// promised in its CONNACK (Maximum Packet Size, Receive Maximum,
    /// Topic Alias Maximum), which holds until it reconnects; a session's
    /// in-flight window is likewise set when its client connects.
    ///
    /// Kept from the running configuration, because they shape state that
    /// already exists: `random_seed`, `persistence`, `cluster`,
    /// `sys_interval`, `broker_id`, `version`, `events`, and the
    /// authentication and authorization policies (replaced with
    /// [`Broker::set_authentication`] and [`Broker::set_authorization`]).
    pub fn reconfigure(&mut self, now: Instant, new: Config) {
        self.advance(now);
        let Config {
            limits,
            receive_maximum,
            maximum_qos,
            retain_available,
            wildcard_subscription_available,
            subscription_identifiers_available,
            shared_subscription_available,
            topic_alias_maximum,
            outbound_topic_aliases,
            validate_utf8_payloads,
            allow_disallowed_code_points,
            share_sessions_across_identities,
            // Kept: see above.
            sys_interval: _,
            broker_id: _,
            version: _,
            events: _,
            random_seed: _,
            persistence: _,
            cluster: _,
            authentication: _,
            authorization: _,
        } = new;
        let c = &mut self.config;
        c.limits = limits;
        c.receive_maximum = receive_maximum;
        c.maximum_qos = maximum_qos;
        c.retain_available = retain_available;
        c.wildcard_subscription_available = wildcard_subscription_available;
        c.subscription_identifiers_available = subscription_identifiers_available;
        c.shared_subscription_available = shared_subscription_available;
        c.topic_alias_maximum = topic_alias_maximum;
        c.outbound_topic_aliases = outbound_topic_aliases;
        c.validate_utf8_payloads = validate_utf8_payloads;
        c.allow_disallowed_code_points = allow_disallowed_code_points;
        c.share_sessions_across_identities = share_sessions_across_identities;
    }

    /// Ends one connection as a shutdown would (MQTT 5 clients get
    /// DISCONNECT 0x8B Server shutting down; the will is published, the
    /// session kept as its expiry says): for example because the listener
    /// it came in on was removed. Ignored for an unknown connection.
    pub fn close_connection(&mut self, now: Instant, conn: ConnId) {
        self.advance(now);
        if self.conns.contains_key(&conn) {
            self.close(conn, CloseReason::ServerShutdown);
        }
        self.flush();
    }

    /// Replaces how CONNECTs are authenticated, for connections that have
    /// not sent CONNECT yet.
    pub fn set_authentication(&mut self, authentication: Authentication) {
        self.config.authentication = authentication;
    }

    /// Replaces the authorization policy (for example after its ACL file
    /// was reloaded). Existing subscriptions stay; the new policy decides
    /// every publish, subscribe and delivery from now on.
    pub fn set_authorization(&mut self, policy: alloc::boxed::Box<dyn AccessPolicy>) {
        self.config.authorization = policy;
    }

    /// Deadlines up to `now` have passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        while let Some(&(at, timer)) = self.timers.first() {
            if at > self.now {
                break;
            }
            self.timers.remove(&(at, timer));
            match timer {
                Timer::Conn(id) => self.conn_timer(id, at),
                Timer::Session(id) => self.session_timer(id, at),
                Timer::Authorize(id) => self.authorize_timer(id, at),
                Timer::Sys => self.sys_timer(),
            }
        }
        self.flush();
    }

    /// Stops the broker: every connection is closed (MQTT 5 clients get
    /// DISCONNECT 0x8B first) and no new CONNECT is accepted. Sessions stay
    /// as they are, for a store to keep.
    pub fn shutdown(&mut self, now: Instant) {
        self.advance(now);
        self.shutting_down = true;
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id, CloseReason::ServerShutdown);
        }
        self.flush();
    }

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn arm(
        timers: &mut BTreeSet<(Instant, Timer)>,
        slot: &mut Option<Instant>,
        at: Option<Instant>,
        timer: Timer,
    ) {
        if let Some(old) = slot.take() {
            timers.remove(&(old, timer));
        }
        if let Some(at) = at {
            timers.insert((at, timer));
            *slot = Some(at);
        }
    }

    fn arm_conn(&mut self, id: ConnId, at: Option<Instant>) {
        if let Some(c) = self.conns.get_mut(&id) {
            Self::arm(&mut self.timers, &mut c.timer, at, Timer::Conn(id));
        }
    }

    fn arm_session(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.get_mut(&id) {
            let at = match (s.expires_at, s.pending_will.as_ref().map(|w| w.at)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            Self::arm(&mut self.timers, &mut s.timer, at, Timer::Session(id));
        }
    }

    fn conn_timer(&mut self, id: ConnId, at: Instant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.timer != Some(at) {
            return;
        }
        c.timer = None;
        match c.state {
            ConnState::AwaitingConnect
                if c.authorizing.as_ref().is_some_and(|held| {
                    matches!(held.packet, state::HeldPacket::Session { .. })
                }) =>
            {
                // The CONNECT is whole and accepted; the cluster is asked
                // for its session, and the fetch deadline ends the wait.
                let due = c.authorizing.as_ref().map(|held| held.deadline);
                match due {
                    Some(at) if at > self.now => self.arm_conn(id, Some(at)),
                    _ => {
                        if let Some(held) = &c.authorizing {
                            let at = held.deadline;
                            self.authorize_timer(id, at);
                        }
                    }
                }
            }
            ConnState::AwaitingConnect | ConnState::Authenticating { .. } => {
                self.close(id, CloseReason::ConnectTimeout);
            }
            ConnState::Connected { .. } => {
                if let Some(held) = &c.authorizing {
                    // Input is paused while the embedding program decides:
                    // whole packets may be waiting unread. Judge again once
                    // the decision is in (or its deadline closed the
                    // connection).
                    let at = held.deadline.max(self.now);
                    self.arm_conn(id, Some(at));
                    return;
                }
                // 1.5 times the keep-alive [MQTT-3.1.2-24], and the packet
                // timeout; activity since the timer was armed moved the real
                // deadlines, so check them.
                let keep_alive = keep_alive_deadline(c);
                let packet = c
                    .packet_started
                    .map(|at| at + self.config.limits.packet_timeout);
                if keep_alive.is_some_and(|at| at <= self.now) {
                    self.close(id, CloseReason::KeepAliveTimeout);
                } else if packet.is_some_and(|at| at <= self.now) {
                    self.close(id, CloseReason::PacketTimeout);
                } else {
                    self.arm_conn(id, earliest(keep_alive, packet));
                }
            }
        }
    }

    /// The deadline of a connected connection's timer: the keep-alive, or
    /// the packet timeout of an unfinished packet, whichever comes first.
    fn conn_deadline(&self, id: ConnId) -> Option<Instant> {
        let c = self.conns.get(&id)?;
        let packet = c
            .packet_started
            .map(|at| at + self.config.limits.packet_timeout);
        earliest(keep_alive_deadline(c), packet)
    }

    /// A packet just started on `id`: make sure its timer fires no later
    /// than the packet timeout. Until CONNECT is accepted, the connect
    /// timeout covers it.
    fn arm_packet_deadline(&mut self, id: ConnId) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        if c.session().is_none() {
            return;
        }
        let current = c.timer;
        let Some(at) = self.conn_deadline(id) else {
            return;
        };
        // An earlier timer re-arms itself when it fires; only a later one
        // (or none) must move.
        if current.is_none_or(|t| at < t) {
            self.arm_conn(id, Some(at));
        }
    }

    /// Appends `packet` to the connection's output for this input. A packet
    /// larger than the client's Maximum Packet Size loses its reason string
    /// and user properties, and is not sent if that is not enough
    /// [MQTT-3.1.2-24, MQTT-3.1.2-25], except a CONNACK. (PUBLISH is checked
    /// before, so it can count as delivered.)
    fn send(&mut self, id: ConnId, packet: &Packet) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if encode_packet(c, packet) && !c.dirty {
            c.dirty = true;
            self.dirty.push(id);
        }
    }

    /// Turns the input's storage operations into one `Store` batch and each
    /// connection's pending output into one `Send`, except output that
    /// must wait for a batch to be durable (see `durable::settle`): that
    /// waits in the connection, in order, for
    /// [`Broker::handle_store_done`].
    fn flush(&mut self) {
        let mut batch = 0;
        if !self.pending_ops.is_empty() {
            self.last_store_id += 1;
            batch = self.last_store_id;
            let ops = core::mem::take(&mut self.pending_ops);
            self.actions.push_back(Action::Store {
                id: StoreId(self.last_store_id),
                ops,
            });
        }
        let mut dirty = core::mem::take(&mut self.dirty);
        for &id in &dirty {
            if let Some(c) = self.conns.get_mut(&id) {
                c.dirty = false;
                if durable::settle(c, id, batch, self.durable, &mut self.holding) {
                    self.emit(id);
                }
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// Sends what `id`'s output holds now, as one `Send`, unless its
    /// CONNACK waits for the store (then so does everything after it).
    fn emit(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if !c.out.is_empty() && c.connack_wait.is_none() {
            // The first output (the CONNACK, typically) goes as the
            // whole buffer: nothing of it stays behind with a
            // connection that then idles. Later ones are split off,
            // so the buffer is reused once they are written.
            let bytes = if c.flushed {
                c.out.split().freeze()
            } else {
                c.flushed = true;
                core::mem::take(&mut c.out).freeze()
            };
            self.stats.bytes_sent += bytes.len() as u64;
            c.connack_behind = c.connack_behind.saturating_sub(bytes.len() as u64);
            self.actions.push_back(Action::Send { conn: id, bytes });
        }
    }

    /// Closes `id` from the broker's side: an MQTT 5 client gets a DISCONNECT
    /// with the reason first (when it is connected), then pending output is
    /// flushed and the runtime is told to close.
    fn close(&mut self, id: ConnId, reason: CloseReason) {
        self.close_because(id, reason, None);
    }

    /// [`Broker::close`], with `detail` as the DISCONNECT's reason string
    /// (the reason's own explanation otherwise).
    fn close_because(&mut self, id: ConnId, reason: CloseReason, detail: Option<&'static str>) {
        let batch = self.input_batch();
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        // What this input answered before the close leaves first, unless
        // it waits for the store: then it never leaves (the client is gone
        // before the store could confirm it). That includes a CONNACK that
        // waits for its session to be stored, and all behind it.
        let mut holding = Vec::new();
        durable::settle(c, id, batch, self.durable, &mut holding);
        // The server sends nothing before CONNACK [MQTT-3.2.0-1]: a
        // DISCONNECT, or anything else, only follows a CONNACK that left,
        // or leaves now with this input's output. One still held (its
        // session, or what the resumed session re-sends, not durable yet),
        // or dropped with what a failed batch held, never leaves, and
        // neither does anything this input wrote after it (a QoS 0
        // delivery, say): the connection just closes.
        let connack_out = c.connack_behind <= c.out.len() as u64;
        if !connack_out {
            c.out.clear();
        }
        if c.protocol == Protocol::V5 && c.session().is_some() && connack_out {
            let code = match reason {
                CloseReason::Decode(e) => Some(e.reason_code()),
                CloseReason::Protocol(code) => Some(code),
                CloseReason::KeepAliveTimeout => Some(ReasonCode::KeepAliveTimeout),
                // The closest code: the client went silent mid-packet.
                CloseReason::PacketTimeout => Some(ReasonCode::KeepAliveTimeout),
                CloseReason::SessionTakenOver => Some(ReasonCode::SessionTakenOver),
                // The closest code: the broker could not get through the
                // client's request in time.
                CloseReason::AuthorizeTimeout => Some(ReasonCode::ServerBusy),
                CloseReason::ServerShutdown => Some(ReasonCode::ServerShuttingDown),
                CloseReason::StoreFailed => Some(ReasonCode::QuotaExceeded),
                _ => None,
            };
            // A DisconnectWithWillMessage "reason" is the client's own.
            if let Some(code) = code.filter(|c| c.is_error()) {
                let mut d = Disconnect::new(code);
                d.properties.server_reference = c.auth.as_mut().and_then(|a| a.redirect.take());
                d.properties.reason_string = Some(Self::disconnect_text(reason, detail));
                self.send(id, &Packet::Disconnect(d));
            }
        }
        let publish_will = !matches!(reason, CloseReason::ClientDisconnect);
        if let Some(mut c) = self.drop_conn(id, reason, publish_will) {
            if !c.out.is_empty() {
                let bytes = c.out.split().freeze();
                self.stats.bytes_sent += bytes.len() as u64;
                self.actions.push_back(Action::Send { conn: id, bytes });
            }
        }
        self.actions.push_back(Action::Close { conn: id, reason });
    }

    fn event(&mut self, event: Event) {
        if self.config.events {
            self.actions.push_back(Action::Event(event));
        }
    }
}

/// Appends `packet` to `c`'s output (see `Broker::send`). Returns whether
/// it was.
fn encode_packet(c: &mut Conn, packet: &Packet) -> bool {
    let max = c.client_max_packet as usize;
    let stripped;
    // Most clients set no maximum: skip measuring for them.
    let packet = if max < u32::MAX as usize && packet.encoded_len(c.protocol) > max {
        let mut smaller = packet.clone();
        problem::strip(&mut smaller);
        // A CONNACK goes out regardless: its outcome and capabilities
        // matter more than a maximum too small for them.
        if smaller.encoded_len(c.protocol) > max && !matches!(packet, Packet::ConnAck(_)) {
            return false;
        }
        stripped = smaller;
        &stripped
    } else {
        packet
    };
    // Encoding only fails for packets the engine never builds (fields
    // over their size limits); such a packet is not sent.
    packet.encode(c.protocol, &mut c.out).is_ok()
}

/// The protocol level of a CONNECT at the start of `buf`, once enough of it
/// has arrived.
fn connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let header = 1 + buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let name_len = usize::from(u16::from_be_bytes([
        *buf.get(header)?,
        *buf.get(header + 1)?,
    ]));
    buf.get(header + 2 + name_len).copied()
}

/// When the keep-alive of `c` runs out, if it has one.
fn keep_alive_deadline(c: &Conn) -> Option<Instant> {
    (c.keep_alive_ms > 0).then(|| c.last_seen + keep_alive_grace(c.keep_alive_ms))
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// 1.5 times the keep-alive interval, in milliseconds.
fn keep_alive_grace(keep_alive_ms: u64) -> core::time::Duration {
    core::time::Duration::from_millis(keep_alive_ms.saturating_mul(3) / 2)
}
