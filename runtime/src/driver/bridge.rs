//! Bridges: this broker as an MQTT client of other brokers.
//!
//! A bridge is two [`Client`] engines. The *remote* one speaks to the other
//! broker over an outbound connection the runtime dials ([`Event::Connect`])
//! and then serves like any other socket. The *local* one is connected to
//! this broker's engine in-process, under the bridge's `local_username`:
//! it subscribes to the `out` rules and publishes what the `in` rules bring,
//! so ACLs apply to a bridge exactly as to any client, and MQTT 5 no-local
//! on its subscriptions means a message that came in over the bridge is
//! never sent back out over it (Mosquitto's rule, for every protocol
//! version). The remote subscriptions carry no-local too (MQTT 5); over
//! MQTT 3.1.1, where the remote echoes what the bridge publishes on topics
//! it also subscribes to, each echo is recognised (topic and payload) and
//! dropped once.
//!
//! ```text
//!   broker ◄─bytes─► local Client ──out rules──► remote Client ◄─socket─► other broker
//!                                 ◄──in rules──
//! ```
//!
//! The remote client's queue holds outgoing QoS 1/2 messages while the
//! other broker is unreachable (bounded; drops counted and logged) and
//! drains in order on reconnect. Connection attempts back off exponentially
//! with jitter from a seeded generator (no randomness in the driver), and
//! walk the configured addresses in turn. The state is published retained
//! on `$SYS/broker/connection/<name>/state` (`1` connected, `0` not).

use super::{ConnIo, Driver, Event, Phase};
use crate::config::{self, BridgeProtocol};
use crate::tls::TlsStage;
use bytes::Bytes;
use roost_core::MqttStr;
use roost_core::broker::{ConnId, ConnInfo, Instant, Message};
use roost_core::client::{
    Client, ClientConfig, ClientEvent, DisconnectReason, InboundId, MessageId,
};
use roost_core::codec::{Protocol, PublishProperties, QoS};
use roost_core::topic::{TopicFilter, TopicName};
use rustls::pki_types::ServerName;
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// How long the runtime has to establish a dialled TCP connection before the
/// bridge gives up on it and tries the next address.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the bridge's session on this broker outlives the bridge (one
/// week): the bridge is connected whenever roost runs, so this only counts
/// for a bridge removed from the configuration.
const LOCAL_SESSION_EXPIRY: u32 = 7 * 24 * 3600;

/// Messages sent out over an MQTT 3.1.1 bridge that the remote may echo back
/// (their topic is also bridged in), remembered to drop the echo.
const ECHO_MEMORY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Waiting to dial at this time.
    Waiting(Instant),
    /// The runtime is dialling `conn`; give up at the deadline.
    Dialing(ConnId, Instant),
    /// The socket `conn` is up (the MQTT session may still be starting).
    Open(ConnId),
    /// Shut down.
    Stopped,
}

/// One configured bridge and its state.
pub(super) struct Bridge {
    /// Stable while the driver runs (connections name their bridge by
    /// it); a reload adds and removes bridges.
    pub(super) id: usize,
    config: config::Bridge,
    remote: Client,
    local: Client,
    local_conn: Option<ConnId>,
    /// When the local connection may be opened again after the engine
    /// closed it.
    local_retry: Instant,
    link: Link,
    next_address: usize,
    /// The last back-off pause; zero after a successful connection.
    wait: Duration,
    rng: u64,
    /// The state last published, if any.
    published: Option<bool>,
    /// Connected and subscribed on the remote.
    up: bool,
    echo: VecDeque<(TopicName, u64)>,
    filters_out: Vec<(TopicFilter, usize)>,
    filters_in: Vec<(TopicFilter, usize)>,
    /// Messages from this broker handed to the remote client, by its id,
    /// with the id that acknowledges them here once the remote has them.
    out_pending: BTreeMap<MessageId, InboundId>,
    /// Messages from the remote handed to the local client, by its id,
    /// with the id that acknowledges them to the remote once this broker
    /// has them (durably, with persistence).
    in_pending: BTreeMap<MessageId, InboundId>,
    /// The TLS client configuration, when `tls = true` (replaced on reload).
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
}

fn topic_filter(text: &str) -> TopicFilter {
    // Validated when the configuration was read.
    TopicFilter::copy_from_str(text).unwrap_or_else(|_| TopicFilter::from_static("#"))
}

fn qos(value: u8) -> QoS {
    QoS::from_u8(value).unwrap_or(QoS::AtMostOnce)
}

fn mqtt_str(text: &str) -> Option<MqttStr> {
    MqttStr::copy_from_str(text).ok()
}

/// The host of `host:port` (`[v6]:port` gives `v6`).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn payload_hash(payload: &[u8]) -> u64 {
    // FNV-1a: deterministic, and good enough to tell echoes apart.
    payload.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Bridge {
    /// A TLS client stage for a new connection to the current address, or
    /// `None` over plain TCP. The server name is `sni` when set, else the
    /// address's host (a DNS name, or an IP address the certificate must
    /// name).
    fn tls_stage(&self) -> Result<Option<Box<TlsStage>>, String> {
        let (Some(cfg), Some(t)) = (&self.tls, &self.config.tls) else {
            return Ok(None);
        };
        let address = &self.config.addresses[self.next_address];
        let host = match &t.sni {
            Some(sni) => sni.as_str(),
            None => host_of(address),
        };
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("server name {host:?}: {e}"))?;
        TlsStage::client(cfg.clone(), name)
            .map(|stage| Some(Box::new(stage)))
            .map_err(|e| e.to_string())
    }

    /// A bridge with stable id `id` (which also varies its back-off
    /// jitter).
    pub(super) fn new(config: &config::Bridge, id: usize, seed: u64, now: Instant) -> Bridge {
        let protocol = match config.protocol_version {
            BridgeProtocol::V3_1_1 => Protocol::V3_1_1,
            BridgeProtocol::V5 => Protocol::V5,
        };
        let filters_out: Vec<_> = config
            .topics
            .iter()
            .enumerate()
            .filter(|(_, r)| r.direction.is_out())
            .map(|(i, r)| (topic_filter(&r.local_filter()), i))
            .collect();
        let filters_in: Vec<_> = config
            .topics
            .iter()
            .enumerate()
            .filter(|(_, r)| r.direction.is_in())
            .map(|(i, r)| (topic_filter(&r.remote_filter()), i))
            .collect();
        let remote = ClientConfig {
            protocol,
            clean_start: config.clean_session,
            session_expiry: config.session_expiry,
            keep_alive: config.keep_alive,
            username: config.username.as_deref().and_then(mqtt_str),
            password: config
                .password
                .as_ref()
                .map(|p| Bytes::copy_from_slice(p.as_bytes())),
            subscriptions: filters_in
                .iter()
                .map(|(f, i)| {
                    roost_core::client::subscription(f.clone(), qos(config.topics[*i].qos), true)
                })
                .collect(),
            max_inflight: config.max_inflight,
            max_queued: config.max_queued_messages,
            max_queued_bytes: config.max_queued_bytes,
            manual_ack: true,
            ..ClientConfig::new(
                mqtt_str(&config.client_id).unwrap_or(MqttStr::from_static("roost-bridge")),
            )
        };
        // A persistent session here: what the remote has not acknowledged
        // stays in it (in the store, with persistence) and comes again.
        let local = ClientConfig {
            protocol: Protocol::V5,
            clean_start: false,
            session_expiry: LOCAL_SESSION_EXPIRY,
            manual_ack: true,
            // In place before any client's first PUBLISH is read, even
            // while the CONNACK waits for the store.
            subscribe_with_connect: true,
            keep_alive: 0,
            username: config.local_username.as_deref().and_then(mqtt_str),
            subscriptions: filters_out
                .iter()
                .map(|(f, i)| {
                    roost_core::client::subscription(f.clone(), qos(config.topics[*i].qos), true)
                })
                .collect(),
            max_inflight: u16::MAX,
            max_queued: config.max_queued_messages,
            max_queued_bytes: config.max_queued_bytes,
            ..ClientConfig::new(
                mqtt_str(&format!("roost-bridge/{}", config.name))
                    .unwrap_or(MqttStr::from_static("roost-bridge")),
            )
        };
        Bridge {
            id,
            config: config.clone(),
            remote: Client::new(remote),
            local: Client::new(local),
            local_conn: None,
            local_retry: now,
            link: Link::Waiting(now),
            next_address: 0,
            wait: Duration::ZERO,
            rng: seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            published: None,
            up: false,
            echo: VecDeque::new(),
            filters_out,
            filters_in,
            out_pending: BTreeMap::new(),
            in_pending: BTreeMap::new(),
            tls: None,
        }
    }

    /// The bridge's name.
    pub(super) fn name(&self) -> &str {
        &self.config.name
    }

    /// Its configuration.
    pub(super) fn config(&self) -> &config::Bridge {
        &self.config
    }

    /// Takes a configuration that differs from its own at most in the TLS
    /// files (the next connection uses the files the driver put in
    /// `tls`).
    pub(super) fn set_config(&mut self, config: &config::Bridge) {
        self.config.clone_from(config);
    }

    /// Its in-process connection to this broker, if open.
    pub(super) fn local_conn(&self) -> Option<ConnId> {
        self.local_conn
    }

    /// Stops both clients for good: returns the remote's last bytes (its
    /// DISCONNECT), the local client's (its DISCONNECT, which keeps its
    /// session here) and the remote socket, if open.
    pub(super) fn stop(&mut self, now: Instant) -> (Vec<Bytes>, Vec<Bytes>, Option<ConnId>) {
        self.remote.disconnect(now);
        self.local.disconnect(now);
        let link = std::mem::replace(&mut self.link, Link::Stopped);
        let remote: Vec<Bytes> = std::iter::from_fn(|| self.remote.poll_transmit()).collect();
        let local: Vec<Bytes> = std::iter::from_fn(|| self.local.poll_transmit()).collect();
        let conn = match link {
            Link::Open(conn) => Some(conn),
            _ => None,
        };
        (remote, local, conn)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The link failed or ended: wait (doubling, with jitter: half the
    /// pause fixed, half drawn) and try the next address.
    fn schedule_retry(&mut self, now: Instant) {
        let (min, max) = (
            Duration::from_millis(self.config.reconnect_min_ms),
            Duration::from_millis(self.config.reconnect_max_ms),
        );
        self.wait = if self.wait.is_zero() {
            min
        } else {
            (self.wait * 2).min(max)
        };
        let half = u64::try_from(self.wait.as_millis() / 2).unwrap_or(u64::MAX);
        let jitter = self.next_random() % (half + 1);
        self.link = Link::Waiting(now + Duration::from_millis(half + jitter));
        self.next_address = (self.next_address + 1) % self.config.addresses.len().max(1);
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let link = match self.link {
            Link::Waiting(at) => Some(at),
            Link::Dialing(_, until) => Some(until),
            Link::Open(_) | Link::Stopped => None,
        };
        let local =
            (self.local_conn.is_none() && self.link != Link::Stopped).then_some(self.local_retry);
        [
            link,
            local,
            self.remote.poll_timeout(),
            self.local.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Which bridge rule maps a local topic out, and the remote topic.
    fn map_out(&self, topic: &TopicName) -> Option<TopicName> {
        let (_, i) = self.filters_out.iter().find(|(f, _)| f.matches(topic))?;
        let rule = &self.config.topics[*i];
        let rest = topic.as_str().strip_prefix(rule.local_prefix.as_str())?;
        TopicName::copy_from_str(&format!("{}{rest}", rule.remote_prefix)).ok()
    }

    /// Which bridge rule maps a remote topic in, and the local topic.
    fn map_in(&self, topic: &TopicName) -> Option<TopicName> {
        let (_, i) = self.filters_in.iter().find(|(f, _)| f.matches(topic))?;
        let rule = &self.config.topics[*i];
        let rest = topic.as_str().strip_prefix(rule.remote_prefix.as_str())?;
        TopicName::copy_from_str(&format!("{}{rest}", rule.local_prefix)).ok()
    }
}

impl Driver {
    /// The bridge whose in-process local connection is `conn`.
    pub(super) fn bridge_of_local(&self, conn: ConnId) -> Option<usize> {
        self.bridges.iter().position(|b| b.local_conn == Some(conn))
    }

    /// The earliest deadline of any bridge.
    pub(super) fn bridges_timeout(&self) -> Option<Instant> {
        self.bridges.iter().filter_map(Bridge::poll_timeout).min()
    }

    /// The runtime established the connection it dialled for
    /// [`Event::Connect`]: it is now served like an accepted one. A
    /// connection the bridge gave up on meanwhile is refused
    /// ([`Driver::interest`] says close).
    pub fn handle_connected(&mut self, now: Instant, conn: ConnId, remote: Option<SocketAddr>) {
        let now = self.clock(now);
        let Some(b) = self
            .bridges
            .iter()
            .position(|b| matches!(b.link, Link::Dialing(c, _) if c == conn))
        else {
            self.pump(now);
            return;
        };
        let tls = match self.bridges[b].tls_stage() {
            Ok(tls) => tls,
            Err(error) => {
                let bridge = &mut self.bridges[b];
                warn!(bridge = bridge.name(), %error, "bridge cannot start TLS");
                bridge.schedule_retry(now);
                self.pump(now);
                return;
            }
        };
        self.conns.insert(
            conn,
            Box::new(ConnIo {
                bridge: Some(self.bridges[b].id),
                remote,
                tls,
                ..ConnIo::new(0, now)
            }),
        );
        // The ClientHello.
        self.push_stage_output(conn);
        let bridge = &mut self.bridges[b];
        bridge.link = Link::Open(conn);
        debug!(bridge = bridge.name(), remote = %super::DisplayAddr(remote), "bridge connection established");
        bridge.remote.handle_connected(now);
        self.pump(now);
    }

    /// Dialling for [`Event::Connect`] failed.
    pub fn handle_connect_failed(&mut self, now: Instant, conn: ConnId, error: &std::io::Error) {
        let now = self.clock(now);
        if let Some(bridge) = self
            .bridges
            .iter_mut()
            .find(|b| matches!(b.link, Link::Dialing(c, _) if c == conn))
        {
            let address = &bridge.config.addresses[bridge.next_address];
            warn!(bridge = bridge.name(), %address, %error, "bridge cannot connect");
            bridge.schedule_retry(now);
        }
        self.pump(now);
    }

    /// Bytes read from the socket of the bridge with id `id`.
    pub(super) fn bridge_read(&mut self, now: Instant, id: usize, bytes: &[u8]) {
        if let Some(bridge) = self.bridges.iter_mut().find(|b| b.id == id) {
            bridge.remote.handle_bytes(now, bytes);
        }
    }

    /// The socket of the bridge with id `id` closed under it.
    pub(super) fn bridge_closed(&mut self, now: Instant, id: usize) {
        if let Some(bridge) = self.bridges.iter_mut().find(|b| b.id == id) {
            bridge.remote.handle_closed(now);
        }
    }

    /// A removed bridge's state, for `$SYS`: 0, as a disconnected one.
    pub(super) fn bridge_state_gone(&mut self, now: Instant, b: usize) {
        self.bridge_state(now, b, false);
    }

    /// The engine sent bytes to a bridge's local connection.
    pub(super) fn bridge_local_bytes(&mut self, now: Instant, b: usize, bytes: &[u8]) {
        if let Some(bridge) = self.bridges.get_mut(b) {
            bridge.local.handle_bytes(now, bytes);
        }
    }

    /// The engine closed a bridge's local connection.
    pub(super) fn bridge_local_closed(&mut self, now: Instant, b: usize) {
        if let Some(bridge) = self.bridges.get_mut(b) {
            bridge.local_conn = None;
            bridge.local.handle_closed(now);
            bridge.local_retry = now + Duration::from_secs(1);
        }
    }

    /// Deadlines of the bridges.
    pub(super) fn bridges_handle_timeout(&mut self, now: Instant) {
        for bridge in &mut self.bridges {
            bridge.remote.handle_timeout(now);
            bridge.local.handle_timeout(now);
            if let Link::Dialing(conn, until) = bridge.link {
                if until <= now {
                    warn!(
                        bridge = bridge.name(),
                        "bridge connection attempt timed out"
                    );
                    bridge.schedule_retry(now);
                    // A late connection is refused by `interest`.
                    let _ = conn;
                }
            }
        }
    }

    /// Stops every bridge: DISCONNECT to the remotes, sockets closed.
    pub(super) fn bridges_shutdown(&mut self, now: Instant) {
        for b in 0..self.bridges.len() {
            let bridge = &mut self.bridges[b];
            bridge.remote.disconnect(now);
            let link = std::mem::replace(&mut bridge.link, Link::Stopped);
            let out: Vec<Bytes> = std::iter::from_fn(|| bridge.remote.poll_transmit()).collect();
            if let Link::Open(conn) = link {
                for bytes in out {
                    self.send(conn, bytes);
                }
                self.close_bridge_conn(now, conn);
            }
        }
    }

    pub(super) fn close_bridge_conn(&mut self, now: Instant, conn: ConnId) {
        if let Some(io) = self.conns.get_mut(&conn) {
            if io.phase == Phase::Open {
                io.phase = Phase::Closing;
            }
        }
        self.settle_closing(now, conn);
        self.wake(conn);
    }

    /// Moves everything between each bridge's two clients, the engine and
    /// the socket. Called by `pump` between drains of the engine (it calls
    /// into the engine). Returns whether the engine was given anything.
    pub(super) fn bridges_step(&mut self, now: Instant) -> bool {
        let mut moved = false;
        let stopping = self.shutdown.is_some();
        for b in 0..self.bridges.len() {
            // The in-process connection to this broker.
            let bridge = &mut self.bridges[b];
            if bridge.local_conn.is_none() && !stopping && bridge.local_retry <= now {
                let conn = self.broker.handle_open(
                    now,
                    ConnInfo {
                        remote: None,
                        listener: 0,
                        auth_class: self.listeners.first().map_or(0, |l| l.auth_class),
                    },
                );
                bridge.local_conn = Some(conn);
                bridge.local.handle_connected(now);
                if bridge.published.is_none() {
                    self.bridge_state(now, b, false);
                }
                moved = true;
            }
            let bridge = &mut self.bridges[b];
            while let Some(bytes) = bridge.local.poll_transmit() {
                if let Some(conn) = bridge.local_conn {
                    self.broker.handle_bytes(now, conn, &bytes);
                    moved = true;
                }
            }
            // Dial when due.
            if let Link::Waiting(at) = bridge.link {
                if at <= now && !stopping {
                    let conn = self.broker.reserve_conn_id();
                    let addr = bridge.config.addresses[bridge.next_address].clone();
                    debug!(bridge = bridge.name(), %addr, "bridge dialling");
                    bridge.link = Link::Dialing(conn, now + DIAL_TIMEOUT);
                    self.events.push_back(Event::Connect { conn, addr });
                }
            }
            while let Some(event) = self.bridges[b].local.poll_event() {
                moved |= self.bridge_local_event(now, b, event);
            }
            while let Some(event) = self.bridges[b].remote.poll_event() {
                moved |= self.bridge_remote_event(now, b, event);
            }
            let bridge = &mut self.bridges[b];
            let out: Vec<Bytes> = std::iter::from_fn(|| bridge.remote.poll_transmit()).collect();
            if let Link::Open(conn) = bridge.link {
                for bytes in out {
                    self.send(conn, bytes);
                }
            }
            // Remote messages became local publishes.
            let bridge = &mut self.bridges[b];
            while let Some(bytes) = bridge.local.poll_transmit() {
                if let Some(conn) = bridge.local_conn {
                    self.broker.handle_bytes(now, conn, &bytes);
                    moved = true;
                }
            }
        }
        moved
    }

    fn bridge_state(&mut self, now: Instant, b: usize, up: bool) {
        let bridge = &mut self.bridges[b];
        if bridge.published == Some(up) {
            return;
        }
        bridge.published = Some(up);
        let Ok(topic) = TopicName::copy_from_str(&format!(
            "$SYS/broker/connection/{}/state",
            bridge.config.name
        )) else {
            return;
        };
        self.broker.publish(
            now,
            Message {
                topic,
                payload: Bytes::from_static(if up { b"1" } else { b"0" }),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: PublishProperties::default(),
            },
        );
    }

    fn bridge_local_event(&mut self, now: Instant, b: usize, event: ClientEvent) -> bool {
        let bridge = &mut self.bridges[b];
        match event {
            ClientEvent::Message(m, token) => {
                let Some(topic) = bridge.map_out(&m.topic) else {
                    if let Some(token) = token {
                        bridge.local.ack(now, token);
                    }
                    return false;
                };
                if bridge.remote.config().protocol != Protocol::V5
                    && bridge.filters_in.iter().any(|(f, _)| f.matches(&topic))
                {
                    if bridge.echo.len() >= ECHO_MEMORY {
                        bridge.echo.pop_front();
                    }
                    bridge
                        .echo
                        .push_back((topic.clone(), payload_hash(&m.payload)));
                }
                match bridge.remote.publish(now, Message { topic, ..*m }) {
                    // Acknowledged here once the remote acknowledges it.
                    Ok(id) => {
                        if let Some(token) = token {
                            bridge.out_pending.insert(id, token);
                        }
                    }
                    Err(e) => {
                        if let Some(token) = token {
                            warn!(bridge = bridge.name(), error = %e, dropped = bridge.remote.dropped(), "bridge queue full: message dropped");
                            bridge.local.ack(now, token);
                        }
                    }
                }
            }
            // This broker has a message from the remote: now the remote
            // may forget it.
            ClientEvent::Acked(id) => {
                if let Some(token) = bridge.in_pending.remove(&id) {
                    bridge.remote.ack(now, token);
                }
            }
            ClientEvent::Subscribed(results) => {
                for (r, (filter, _)) in results.iter().zip(&bridge.filters_out) {
                    if let Err(code) = r {
                        warn!(bridge = bridge.name(), %filter, %code, "bridge may not read this local topic (ACL)");
                    }
                }
            }
            ClientEvent::Rejected(id, code) => {
                warn!(bridge = bridge.name(), %code, "a message from the remote broker was refused here (ACL)");
                if let Some(token) = bridge.in_pending.remove(&id) {
                    bridge.remote.ack(now, token);
                }
            }
            ClientEvent::Disconnected(reason) => {
                warn!(bridge = bridge.name(), %reason, "bridge's local connection ended");
                if let Some(conn) = bridge.local_conn.take() {
                    bridge.local_retry = now + Duration::from_secs(1);
                    if reason != DisconnectReason::TransportClosed {
                        self.broker.handle_closed(now, conn);
                        return true;
                    }
                }
            }
            _ => {}
        }
        false
    }

    fn bridge_remote_event(&mut self, now: Instant, b: usize, event: ClientEvent) -> bool {
        let bridge = &mut self.bridges[b];
        match event {
            ClientEvent::Connected { session_present } => {
                let address = &bridge.config.addresses[bridge.next_address];
                info!(bridge = bridge.name(), %address, session_present, queued = bridge.remote.queued(), "bridge connected");
                bridge.wait = Duration::ZERO;
                if bridge.filters_in.is_empty() {
                    bridge.up = true;
                    self.bridge_state(now, b, true);
                    return true;
                }
            }
            ClientEvent::Subscribed(results) => {
                for (r, (filter, _)) in results.iter().zip(&bridge.filters_in) {
                    if let Err(code) = r {
                        warn!(bridge = bridge.name(), %filter, %code, "remote broker refused the bridge's subscription");
                    }
                }
                bridge.up = true;
                self.bridge_state(now, b, true);
                return true;
            }
            ClientEvent::Message(m, token) => {
                let echo = (m.topic.clone(), payload_hash(&m.payload));
                let topic = match bridge.echo.iter().position(|e| *e == echo) {
                    Some(i) => {
                        bridge.echo.remove(i);
                        None
                    }
                    None => bridge.map_in(&m.topic),
                };
                let Some(topic) = topic else {
                    if let Some(token) = token {
                        bridge.remote.ack(now, token);
                    }
                    return false;
                };
                match bridge.local.publish(now, Message { topic, ..*m }) {
                    // Acknowledged to the remote once this broker has it.
                    Ok(id) => {
                        if let Some(token) = token {
                            bridge.in_pending.insert(id, token);
                        }
                    }
                    Err(_) => {
                        if let Some(token) = token {
                            warn!(
                                bridge = bridge.name(),
                                "bridge's local queue full: message dropped"
                            );
                            bridge.remote.ack(now, token);
                        }
                    }
                }
            }
            // The remote has it: this broker's session may forget it.
            ClientEvent::Acked(id) => {
                if let Some(token) = bridge.out_pending.remove(&id) {
                    bridge.local.ack(now, token);
                }
            }
            ClientEvent::Rejected(id, code) => {
                warn!(bridge = bridge.name(), %code, "remote broker refused a bridged message");
                if let Some(token) = bridge.out_pending.remove(&id) {
                    bridge.local.ack(now, token);
                }
            }
            ClientEvent::Disconnected(reason) => {
                let address = bridge.config.addresses[bridge.next_address].clone();
                if bridge.up {
                    info!(bridge = bridge.name(), %address, %reason, queued = bridge.remote.queued() + bridge.remote.inflight(), "bridge disconnected");
                } else {
                    warn!(bridge = bridge.name(), %address, %reason, "bridge connection failed");
                }
                bridge.up = false;
                bridge.echo.clear();
                let link = bridge.link;
                if link != Link::Stopped {
                    bridge.schedule_retry(now);
                }
                if let Link::Open(conn) = link {
                    if reason != DisconnectReason::TransportClosed {
                        let out: Vec<Bytes> =
                            std::iter::from_fn(|| self.bridges[b].remote.poll_transmit()).collect();
                        for bytes in out {
                            self.send(conn, bytes);
                        }
                        self.close_bridge_conn(now, conn);
                    }
                }
                self.bridge_state(now, b, false);
                return true;
            }
            _ => {}
        }
        false
    }
}
