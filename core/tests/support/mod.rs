//! The in-process harness: one engine, simulated clients, a virtual clock
//! that jumps from deadline to deadline. No sockets, no sleeps.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use roost_core::MqttStr;
use roost_core::broker::{
    Action, AuthRequest, AuthorizeRequest, Broker, CloseReason, Config, ConnId, ConnInfo, Instant,
    LocalSubscription, Message,
};
use roost_core::codec::*;
use roost_core::topic::{TopicFilter, TopicName};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

pub struct Client {
    pub protocol: Protocol,
    inbox: BytesMut,
    pub packets: VecDeque<Packet>,
    pub closed: Option<CloseReason>,
}

pub struct Sim {
    pub broker: Broker,
    pub now: Instant,
    pub clients: HashMap<ConnId, Client>,
    pub deliveries: Vec<(LocalSubscription, Message)>,
    pub auth_requests: VecDeque<AuthRequest>,
    /// Authorization requests not answered yet, in the order they came.
    pub authorize_requests: VecDeque<AuthorizeRequest>,
    pub events: Vec<roost_core::broker::Event>,
    /// Every storage operation, in order.
    pub stored: Vec<roost_core::broker::StoreOp>,
    /// Batches not confirmed yet (when `auto_confirm` is off).
    pub unconfirmed: VecDeque<roost_core::broker::StoreId>,
    /// Confirm every batch at once, as an in-memory store would.
    pub auto_confirm: bool,
    /// Every batch since the engine started, with its operations, in order.
    pub batches: Vec<(
        roost_core::broker::StoreId,
        Vec<roost_core::broker::StoreOp>,
    )>,
    /// The last batch the engine was told is durable.
    pub confirmed: u64,
    /// Cluster actions (`Forward`, `Interest`, `Claimed`, `FetchSession`,
    /// `Hosting`), in order.
    pub cluster: Vec<Action>,
}

impl Sim {
    pub fn new(config: Config) -> Self {
        Sim {
            broker: Broker::new(config, Instant::ZERO),
            now: Instant::ZERO,
            clients: HashMap::new(),
            deliveries: Vec::new(),
            auth_requests: VecDeque::new(),
            authorize_requests: VecDeque::new(),
            events: Vec::new(),
            stored: Vec::new(),
            unconfirmed: VecDeque::new(),
            auto_confirm: true,
            batches: Vec::new(),
            confirmed: 0,
            cluster: Vec::new(),
        }
    }

    /// A configuration without `$SYS` noise, for scenarios that count
    /// messages on `#`.
    pub fn quiet() -> Self {
        Sim::new(Config {
            sys_interval: None,
            ..Config::default()
        })
    }

    pub fn open(&mut self, protocol: Protocol) -> ConnId {
        self.open_on(protocol, ConnInfo::default())
    }

    /// Opens a connection as the runtime describes it (listener, class).
    pub fn open_on(&mut self, protocol: Protocol, info: ConnInfo) -> ConnId {
        let id = self.broker.handle_open(self.now, info);
        self.clients.insert(
            id,
            Client {
                protocol,
                inbox: BytesMut::new(),
                packets: VecDeque::new(),
                closed: None,
            },
        );
        self.drain();
        id
    }

    /// Opens a connection, sends CONNECT, and returns it with the CONNACK.
    pub fn connect_with(&mut self, connect: Connect) -> (ConnId, Option<ConnAck>) {
        self.connect_on(connect, ConnInfo::default())
    }

    /// [`Sim::connect_with`] on a connection the runtime describes.
    pub fn connect_on(&mut self, connect: Connect, info: ConnInfo) -> (ConnId, Option<ConnAck>) {
        let id = self.open_on(connect.protocol, info);
        self.send(id, Packet::Connect(Box::new(connect)));
        let mut first = self.recv(id);
        if first.is_none() && !self.unconfirmed.is_empty() {
            // The CONNACK of a session stored for the first time waits for
            // the store: confirm (the batches so far) as a store would.
            self.confirm_all();
            first = self.recv(id);
        }
        let ack = match first {
            Some(Packet::ConnAck(ack)) => Some(*ack),
            Some(other) => panic!("expected CONNACK, got {other:?}"),
            None => None,
        };
        (id, ack)
    }

    /// Connects and asserts CONNACK success.
    pub fn connect(
        &mut self,
        client_id: &str,
        protocol: Protocol,
        clean: bool,
    ) -> (ConnId, ConnAck) {
        let (id, ack) = self.connect_with(connect(client_id, protocol, clean, 0));
        let ack = ack.expect("no CONNACK");
        assert_eq!(ack.reason, ReasonCode::Success, "CONNACK refused");
        (id, ack)
    }

    pub fn send(&mut self, id: ConnId, packet: Packet) {
        let protocol = self.clients[&id].protocol;
        let mut buf = BytesMut::new();
        packet.encode(protocol, &mut buf).unwrap();
        self.send_raw(id, &buf);
    }

    pub fn send_raw(&mut self, id: ConnId, bytes: &[u8]) {
        self.broker.handle_bytes(self.now, id, bytes);
        self.drain();
    }

    /// The transport dies under the client.
    pub fn drop_transport(&mut self, id: ConnId) {
        self.broker.handle_closed(self.now, id);
        if let Some(c) = self.clients.get_mut(&id) {
            c.closed.get_or_insert(CloseReason::ClientDisconnect);
        }
        self.drain();
    }

    pub fn drain(&mut self) {
        while let Some(action) = self.broker.poll_action() {
            match action {
                Action::Send { conn, bytes } => {
                    let client = self.clients.get_mut(&conn).expect("send to unknown conn");
                    assert!(client.closed.is_none(), "send after close to {conn}");
                    client.inbox.extend_from_slice(&bytes);
                    while let Some(p) =
                        decode(&mut client.inbox, client.protocol, usize::MAX).unwrap()
                    {
                        client.packets.push_back(p);
                    }
                }
                Action::Close { conn, reason } => {
                    let client = self.clients.get_mut(&conn).expect("close of unknown conn");
                    assert!(client.closed.is_none(), "closed twice: {conn}");
                    client.closed = Some(reason);
                }
                Action::Deliver {
                    subscription,
                    message,
                } => self.deliveries.push((subscription, message)),
                Action::Authenticate(request) => self.auth_requests.push_back(request),
                Action::Authorize(request) => self.authorize_requests.push_back(request),
                Action::Event(event) => self.events.push(event),
                Action::Store { id, ops } => {
                    self.batches.push((id, ops.clone()));
                    self.stored.extend(ops);
                    if self.auto_confirm {
                        self.confirmed = id.get();
                        self.broker.handle_store_done(self.now, id);
                    } else {
                        self.unconfirmed.push_back(id);
                    }
                }
                a @ (Action::Forward { .. }
                | Action::Interest { .. }
                | Action::Claimed { .. }
                | Action::FetchSession { .. }
                | Action::Hosting { .. }) => self.cluster.push(a),
                other => panic!("unexpected action {other:?}"),
            }
        }
    }

    /// Confirms every batch emitted so far.
    pub fn confirm_all(&mut self) {
        // Confirming the last batch confirms every earlier one.
        if let Some(id) = self.unconfirmed.back().copied() {
            self.unconfirmed.clear();
            self.confirmed = id.get();
            self.broker.handle_store_done(self.now, id);
        }
        self.drain();
    }

    /// Reports every batch emitted so far as failed (a full disk).
    pub fn fail_all(&mut self) {
        if let Some(id) = self.unconfirmed.back().copied() {
            self.unconfirmed.clear();
            self.broker.handle_store_failed(self.now, id);
        }
        self.drain();
    }

    /// Reports the oldest unconfirmed batch (and only it) as failed.
    pub fn fail_first(&mut self) {
        if let Some(id) = self.unconfirmed.pop_front() {
            self.broker.handle_store_failed(self.now, id);
        }
        self.drain();
    }

    /// The state a store would hold after applying every operation so far.
    pub fn replayed(&self) -> roost_core::broker::Recovered {
        let mut r = roost_core::broker::Recovered::default();
        for op in &self.stored {
            r.apply(op);
        }
        r.normalize();
        r
    }

    pub fn recv(&mut self, id: ConnId) -> Option<Packet> {
        self.clients.get_mut(&id)?.packets.pop_front()
    }

    pub fn recv_all(&mut self, id: ConnId) -> Vec<Packet> {
        self.clients
            .get_mut(&id)
            .map(|c| c.packets.drain(..).collect())
            .unwrap_or_default()
    }

    /// PUBLISH packets received, dropping everything else.
    pub fn publishes(&mut self, id: ConnId) -> Vec<Publish> {
        self.recv_all(id)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    pub fn closed(&self, id: ConnId) -> Option<CloseReason> {
        self.clients.get(&id).and_then(|c| c.closed)
    }

    /// Moves the clock forward by `by`, stopping at every deadline the
    /// engine announces on the way.
    pub fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        loop {
            match self.broker.poll_timeout() {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    self.broker.handle_timeout(self.now);
                    self.drain();
                }
                _ => break,
            }
        }
        self.now = end;
        self.broker.handle_timeout(self.now);
        self.drain();
    }

    /// Subscribes and returns the SUBACK reason codes.
    pub fn subscribe(&mut self, id: ConnId, pid: u16, filters: &[(&str, QoS)]) -> Vec<ReasonCode> {
        let subscriptions = filters
            .iter()
            .map(|(f, q)| Subscription {
                filter: TopicFilter::copy_from_str(f).unwrap(),
                options: SubscriptionOptions {
                    qos: *q,
                    ..Default::default()
                },
            })
            .collect();
        self.subscribe_with(
            id,
            Subscribe {
                packet_id: PacketId::new(pid).unwrap(),
                subscriptions,
                properties: Default::default(),
            },
        )
    }

    pub fn subscribe_with(&mut self, id: ConnId, sub: Subscribe) -> Vec<ReasonCode> {
        let pid = sub.packet_id;
        self.send(id, Packet::Subscribe(sub));
        if !self.auto_confirm && self.clients.get(&id).is_some_and(|c| c.packets.is_empty()) {
            // A SUBACK for a stored session waits for the store.
            self.confirm_all();
        }
        match self.recv(id) {
            Some(Packet::SubAck(ack)) => {
                assert_eq!(ack.packet_id, pid);
                ack.reasons
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes and completes the QoS handshake from the publisher's side.
    pub fn publish(
        &mut self,
        id: ConnId,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        pid: u16,
        retain: bool,
    ) {
        self.send(
            id,
            Packet::Publish(publish(topic, payload, qos, pid, retain)),
        );
        let pid = PacketId::new(pid).unwrap();
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let ack = self.take_ack(id, pid);
                assert!(
                    matches!(ack, Packet::PubAck(_)),
                    "expected PUBACK, got {ack:?}"
                );
            }
            QoS::ExactlyOnce => {
                let ack = self.take_ack(id, pid);
                assert!(
                    matches!(ack, Packet::PubRec(_)),
                    "expected PUBREC, got {ack:?}"
                );
                self.send(id, Packet::PubRel(PubResponse::new(pid)));
                let ack = self.take_ack(id, pid);
                assert!(
                    matches!(ack, Packet::PubComp(_)),
                    "expected PUBCOMP, got {ack:?}"
                );
            }
        }
    }

    /// Removes and returns the first acknowledgement for `pid` from the
    /// client's received packets, leaving the others in place.
    pub fn take_ack(&mut self, id: ConnId, pid: PacketId) -> Packet {
        let packets = &mut self.clients.get_mut(&id).unwrap().packets;
        let pos = packets
            .iter()
            .position(|p| match p {
                Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubComp(r) | Packet::PubRel(r) => {
                    r.packet_id == pid
                }
                _ => false,
            })
            .unwrap_or_else(|| panic!("no ack for {pid:?} in {packets:?}"));
        packets.remove(pos).unwrap()
    }

    /// Acknowledges every QoS 1/2 PUBLISH in `received` as a well-behaved
    /// subscriber would.
    pub fn ack_all(&mut self, id: ConnId, received: &[Publish]) {
        for p in received {
            match p.qos {
                QosPid::AtMostOnce => {}
                QosPid::AtLeastOnce(pid) => self.send(id, Packet::PubAck(PubResponse::new(pid))),
                QosPid::ExactlyOnce(pid) => {
                    self.send(id, Packet::PubRec(PubResponse::new(pid)));
                    let rel = self.take_ack(id, pid);
                    assert!(matches!(rel, Packet::PubRel(_)));
                    self.send(id, Packet::PubComp(PubResponse::new(pid)));
                }
            }
        }
    }

    pub fn disconnect(&mut self, id: ConnId) {
        self.send(id, Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
        assert_eq!(self.closed(id), Some(CloseReason::ClientDisconnect));
    }

    /// After a scenario: nothing left behind once every client is gone and
    /// every session has ended.
    pub fn assert_no_leaks(&self) {
        assert_eq!(self.broker.connection_count(), 0, "connections leaked");
        assert_eq!(self.broker.session_count(), 0, "sessions leaked");
        assert_eq!(self.broker.subscription_count(), 0, "subscriptions leaked");
        let sys_timer = usize::from(self.broker.config().sys_interval.is_some());
        assert_eq!(self.broker.timer_count(), sys_timer, "timers leaked");
        assert_eq!(
            self.broker.pending_authorize_count(),
            0,
            "authorization requests leaked"
        );
    }
}

pub fn connect(client_id: &str, protocol: Protocol, clean: bool, keep_alive: u16) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive,
        client_id: MqttStr::copy_from_str(client_id).unwrap(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }
}

pub fn will(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Will {
    Will {
        topic: TopicName::copy_from_str(topic).unwrap(),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain,
        properties: Default::default(),
    }
}

pub fn publish(topic: &str, payload: &[u8], qos: QoS, pid: u16, retain: bool) -> Publish {
    let pid = PacketId::new(pid).unwrap();
    Publish {
        dup: false,
        qos: QosPid::new(qos, pid),
        retain,
        topic: TopicName::copy_from_str(topic).unwrap(),
        payload: Bytes::copy_from_slice(payload),
        properties: Default::default(),
    }
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
