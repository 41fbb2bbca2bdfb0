//! Durability: recording storage operations, holding acknowledgements until
//! the batch they promise is durable, and rebuilding a broker from what a
//! store recovered. The operations themselves are described in `store.rs`.

use super::state::{
    Conn, Delivery, Held, Inflight, OutState, Session, SessionId, SubEntry, UNRESOLVED,
};
use super::{
    Broker, CloseReason, Config, ConnId, Instant, Message, Recovered, RecoveredMessage,
    RecoveredSession, Retained, StoreId, StoreOp, StoredMessage,
};
use crate::MqttStr;
use crate::codec::{Packet, Protocol, QoS, ReasonCode};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

impl Broker {
    /// The client identifier of `sid` if its state is stored: persistence is
    /// on and the session outlives its connection.
    pub(super) fn stored_client(&self, sid: SessionId) -> Option<MqttStr> {
        let s = self.sessions.get(&sid)?;
        s.stored.then(|| s.client_id.clone())
    }

    /// Brings the store in line with a session whose expiry interval was
    /// just set: a session that now outlives its connection is stored whole
    /// (or its new expiry recorded), one that no longer does is deleted.
    pub(super) fn record_expiry(&mut self, sid: SessionId) {
        if !self.config.persistence {
            return;
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        match (s.stored, s.expiry_interval > 0) {
            (false, true) => {
                s.stored = true;
                self.record_session(sid);
                let batch = self.horizon();
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.stored_in = batch;
                }
            }
            (true, true) => {
                let op = StoreOp::SessionPut {
                    client_id: s.client_id.clone(),
                    expiry_interval: s.expiry_interval,
                    owner: s.owner.clone(),
                };
                self.record(op);
            }
            (true, false) => {
                s.stored = false;
                let op = StoreOp::SessionDelete {
                    client_id: s.client_id.clone(),
                };
                self.record(op);
            }
            (false, false) => {}
        }
    }

    pub(super) fn record(&mut self, op: StoreOp) {
        if self.config.persistence {
            self.pending_ops.push(op);
        }
    }

    /// Records that a QoS 1/2 delivery entered a stored session.
    pub(super) fn record_entered(&mut self, sid: SessionId, d: &Delivery) {
        if d.qos == QoS::AtMostOnce {
            return;
        }
        if let Some(client_id) = self.stored_client(sid) {
            self.record(StoreOp::MessagePut {
                client_id,
                seq: d.seq,
                subscription_ids: d.subscription_ids.clone(),
                message: stored(d),
            });
        }
    }

    /// Records that a QoS 1/2 delivery of a stored session left it
    /// (acknowledged, expired, dropped or moved).
    pub(super) fn record_left(&mut self, sid: SessionId, d: &Delivery) {
        if d.qos == QoS::AtMostOnce {
            return;
        }
        if let Some(client_id) = self.stored_client(sid) {
            self.record(StoreOp::MessageDelete {
                client_id,
                seq: d.seq,
            });
        }
    }

    /// Records the send state of an in-flight delivery.
    pub(super) fn record_sent(
        &mut self,
        sid: SessionId,
        seq: u64,
        packet_id: crate::codec::PacketId,
        released: bool,
    ) {
        if let Some(client_id) = self.stored_client(sid) {
            self.record(StoreOp::MessageSent {
                client_id,
                seq,
                packet_id,
                released,
            });
        }
    }

    /// Records everything a session holds, for a session that has just
    /// become one that outlives its connection.
    pub(super) fn record_session(&mut self, sid: SessionId) {
        let Some(client_id) = self.stored_client(sid) else {
            return;
        };
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let mut ops = Vec::new();
        ops.push(StoreOp::SessionPut {
            client_id: client_id.clone(),
            expiry_interval: s.expiry_interval,
            owner: s.owner.clone(),
        });
        for (filter, entry) in &s.subscriptions {
            ops.push(StoreOp::SubscriptionPut {
                client_id: client_id.clone(),
                filter: filter.clone(),
                options: entry.options,
                identifier: entry.id,
            });
        }
        let mut inflight: Vec<_> = s.inflight.iter().collect();
        inflight.sort_unstable_by_key(|(_, f)| f.delivery.seq);
        for (pid, f) in inflight {
            if f.delivery.qos == QoS::AtMostOnce {
                continue;
            }
            ops.push(StoreOp::MessagePut {
                client_id: client_id.clone(),
                seq: f.delivery.seq,
                subscription_ids: f.delivery.subscription_ids.clone(),
                message: stored(&f.delivery),
            });
            ops.push(StoreOp::MessageSent {
                client_id: client_id.clone(),
                seq: f.delivery.seq,
                packet_id: *pid,
                released: f.state == OutState::Released,
            });
        }
        for d in s.queue.iter().filter(|d| d.qos != QoS::AtMostOnce) {
            ops.push(StoreOp::MessagePut {
                client_id: client_id.clone(),
                seq: d.seq,
                subscription_ids: d.subscription_ids.clone(),
                message: stored(d),
            });
        }
        for pid in &s.incoming_qos2 {
            ops.push(StoreOp::IncomingPut {
                client_id: client_id.clone(),
                packet_id: *pid,
            });
        }
        self.pending_ops.extend(ops);
    }

    /// The batch that will hold everything recorded so far: the one this
    /// input is building if it recorded anything, else the last one given
    /// out.
    pub(super) fn horizon(&self) -> u64 {
        self.last_store_id + u64::from(!self.pending_ops.is_empty())
    }

    /// The batch this input is building, or 0 if it recorded nothing yet.
    pub(super) fn input_batch(&self) -> u64 {
        if self.pending_ops.is_empty() {
            0
        } else {
            self.last_store_id + 1
        }
    }

    /// What this input sends on `conn` may not leave before batch `needs`
    /// is durable (see [`Broker::flush`]).
    pub(super) fn depend(&mut self, conn: ConnId, needs: u64) {
        if needs > self.durable {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.needs = c.needs.max(needs);
            }
        }
    }

    /// Sends an acknowledgement that promises durability (PUBACK, PUBREC,
    /// PUBCOMP): with the rest of this input's output if nothing it
    /// depends on waits for the store, otherwise once the batch of this
    /// input (everything it stored, the subscribers' copies included) is
    /// confirmed. Held output keeps its order, and held acknowledgements
    /// count against the Receive Maximum like unacknowledged publishes do.
    /// Without persistence it is sent at once.
    pub(super) fn send_ack(&mut self, conn: ConnId, packet: Packet) {
        if !self.config.persistence {
            self.send(conn, &packet);
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // An MQTT 5 client that waits for more acknowledgements than the
        // Receive Maximum it was told broke it; an MQTT 3 client was never
        // told one, and may pipeline up to a larger bound of its own.
        let (limit, reason) = if c.protocol == Protocol::V5 {
            (
                usize::from(c.promised_receive_max),
                CloseReason::Protocol(ReasonCode::ReceiveMaximumExceeded),
            )
        } else {
            (
                self.config.limits.mqtt3_max_pending_acks,
                CloseReason::PendingAcksExceeded,
            )
        };
        // Those of this input count once they are sure to wait: something
        // is stored for them, or something before them waits.
        let waiting = !self.pending_ops.is_empty() || c.held_acks > 0;
        let fresh = if waiting { c.fresh_acks } else { 0 };
        if c.held_acks + fresh >= limit {
            self.close(conn, reason);
            return;
        }
        c.fresh_acks += 1;
        c.acked = true;
        self.hold(conn, Held::Packet(packet));
    }

    /// Sends a packet that reflects state recorded for the store (a PUBREL,
    /// SUBACK or UNSUBACK) once batch `needs` is durable, in order with the connection's other
    /// output. Without persistence it is sent at once.
    pub(super) fn send_held(&mut self, conn: ConnId, packet: Packet, needs: u64) {
        if !self.config.persistence {
            self.send(conn, &packet);
            return;
        }
        self.depend(conn, needs);
        self.hold(conn, Held::Packet(packet));
    }

    /// Appends `item` to this input's output on `conn` as an entry of its
    /// own, after what the input wrote so far; [`Broker::flush`] decides
    /// whether it waits.
    fn hold(&mut self, conn: ConnId, item: Held) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.out.is_empty() {
            let before = c.out.split().freeze();
            c.held.push_back((UNRESOLVED, Held::Bytes(before)));
        }
        c.held.push_back((UNRESOLVED, item));
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(conn);
        }
    }

    /// The store made batch `id` (and every earlier one) durable: send the
    /// output that waited for it.
    pub fn handle_store_done(&mut self, now: Instant, id: StoreId) {
        self.advance(now);
        self.durable = self.durable.max(id.0);
        // CONNACKs that waited for their session to be stored go out, with
        // everything queued behind them.
        let gated = core::mem::take(&mut self.gated);
        for conn in gated {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            match c.connack_wait {
                Some(needs) if needs <= self.durable => {
                    c.connack_wait = None;
                    if !c.out.is_empty() && !c.dirty {
                        c.dirty = true;
                        self.dirty.push(conn);
                    }
                }
                Some(_) => self.gated.push(conn),
                None => {}
            }
        }
        let holding = core::mem::take(&mut self.holding);
        let mut still = Vec::new();
        for conn in holding {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let mut sent = false;
            while c
                .held
                .front()
                .is_some_and(|(needs, _)| *needs <= self.durable)
            {
                if let Some((_, item)) = c.held.pop_front() {
                    if is_client_ack(&item) {
                        c.held_acks = c.held_acks.saturating_sub(1);
                    }
                    release(c, item);
                    sent = true;
                }
            }
            if !c.held.is_empty() {
                still.push(conn);
            }
            // Ahead of anything still held, and of what this call adds.
            if sent {
                self.emit(conn);
            }
        }
        self.holding = still;
        self.flush();
    }

    /// The store could not make batch `id` durable (a full disk, an I/O
    /// error), nor, with it, any earlier batch not yet confirmed.
    ///
    /// **Ordering**: batches complete in the order they were emitted, like
    /// [`handle_store_done`](Broker::handle_store_done): a failure reported
    /// for `id` answers everything still waiting on batches up to `id`, and
    /// says nothing about later batches, which wait for their own answer (a
    /// store that recovers confirms them as usual). A group commit that
    /// fails is reported once, with the id of its last batch.
    ///
    /// What waited on those batches is answered now:
    ///
    /// - an MQTT 5 QoS 1 publisher gets PUBACK 0x97 Quota exceeded;
    /// - a QoS 2 publisher (either version), and an MQTT 3 QoS 1 publisher,
    ///   which has no negative acknowledgement, is disconnected
    ///   ([`CloseReason::StoreFailed`]). The QoS 2 packet identifier stays
    ///   in use: the message was routed already (see below), so when the
    ///   client sends it again after reconnecting (as it must, never having
    ///   had a PUBREC), it is acknowledged and not routed a second time.
    ///   (A PUBREC 0x97 would release the identifier, and a client that
    ///   never received it, its connection lost, would send the message
    ///   again and have it delivered twice: the simulator found this.)
    /// - a subscriber whose PUBREL waited for its message's "released"
    ///   state is disconnected: a crash could bring the message back as
    ///   unreleased and send it again as a PUBLISH, after the client had
    ///   completed it with PUBCOMP (the simulator found this). Disconnected,
    ///   it still holds the packet identifier, so either resend is safe;
    /// - a client whose SUBACK or UNSUBACK waited is disconnected
    ///   ([`CloseReason::StoreFailed`]) rather than promised a change the
    ///   store may lose; it learns nothing was acknowledged and subscribes
    ///   again;
    /// - a PUBCOMP is sent as it was: the exchange is over in memory and no
    ///   message depends on it;
    /// - a connection whose CONNACK waited for its new session (or a
    ///   resumed one not yet durable) to be stored gets CONNACK 0x97 Quota exceeded (MQTT 3: 0x03 Server
    ///   unavailable) and is closed; its session is discarded (its will is
    ///   not published), and nothing queued for it is sent;
    /// - a subscriber whose deliveries waited for those batches is
    ///   disconnected and those deliveries do not leave.
    ///
    /// The broker's memory does not roll back: a message whose PUBACK says
    /// 0x97 was already routed, so stored sessions hold it, and the store
    /// may still write it later (a store that keeps failed batches, as
    /// `FjallStore` does, writes them when the disk accepts writes again).
    /// A QoS 1 publisher that sends it again may therefore cause a
    /// duplicate, which QoS 1 allows.
    /// What the client was told durable stays durable: nothing confirmed by
    /// `handle_store_done` is affected.
    pub fn handle_store_failed(&mut self, now: Instant, id: StoreId) {
        self.advance(now);
        let failed = id.0;
        // Refused CONNACKs first: nothing that waited behind them may
        // leave, not even on the way to a close.
        let gated = core::mem::take(&mut self.gated);
        for conn in gated {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            match c.connack_wait {
                Some(needs) if needs <= failed => {
                    // Nothing of what waited behind the CONNACK is sent.
                    c.connack_wait = None;
                    c.out.clear();
                    c.held.clear();
                    c.held_acks = 0;
                    // The refusing CONNACK below replaces it.
                    c.connack_behind = 0;
                    c.will = None;
                    let v5 = c.protocol == Protocol::V5;
                    if let Some(sid) = c.session() {
                        // Expiry 0: the session ends with the connection.
                        if let Some(s) = self.sessions.get_mut(&sid) {
                            s.expiry_interval = 0;
                        }
                    }
                    self.stats.store_failures += 1;
                    let reason = if v5 {
                        ReasonCode::QuotaExceeded
                    } else {
                        ReasonCode::ServerUnavailable
                    };
                    self.refuse(conn, reason);
                }
                Some(_) => self.gated.push(conn),
                None => {}
            }
        }
        let holding = core::mem::take(&mut self.holding);
        for conn in holding {
            let mut close = false;
            // What this call already wrote for `conn` (deliveries that
            // closing an earlier connection moved here from its shared
            // subscriptions) is this input's output: it waits behind what
            // is still held, and for its own batch, like any other input's
            // (`flush` settles it). Only the answers below go ahead. (The
            // simulator found such QoS 2 deliveries sent at once, before a
            // CONNACK still held and before their packet identifiers were
            // durable: a crash then gave those identifiers to other
            // messages while the client held them.)
            let added = match self.conns.get_mut(&conn) {
                Some(c) => c.out.split(),
                None => continue,
            };
            while let Some(c) = self.conns.get_mut(&conn) {
                let v5 = c.protocol == Protocol::V5;
                let Some((needs, item)) = c.held.pop_front() else {
                    break;
                };
                if needs > failed {
                    c.held.push_front((needs, item));
                    self.holding.push(conn);
                    break;
                }
                let packet = match item {
                    // Deliveries that waited for the batch do not leave:
                    // a crash before the store writes it would forget them
                    // and reuse their packet identifiers while the client
                    // still held them (the simulator found this). The
                    // connection closes; a stored session sends them again
                    // on reconnect.
                    Held::Bytes(_) => {
                        // A CONNACK among them is dropped too: nothing may
                        // follow it on the way to the close.
                        if c.connack_behind > 0 {
                            c.connack_behind = u64::MAX;
                        }
                        close = true;
                        break;
                    }
                    Held::Packet(packet) => packet,
                };
                if matches!(
                    packet,
                    Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)
                ) {
                    c.held_acks = c.held_acks.saturating_sub(1);
                }
                match packet {
                    Packet::PubAck(mut r) if v5 => {
                        r.reason = ReasonCode::QuotaExceeded;
                        r.properties = self.ack_properties(conn, Some(r.reason));
                        self.stats.store_failures += 1;
                        self.send(conn, &Packet::PubAck(r));
                    }
                    Packet::PubAck(_) | Packet::PubRec(_) => {
                        self.stats.store_failures += 1;
                        close = true;
                        break;
                    }
                    Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PubRel(_) => {
                        close = true;
                        break;
                    }
                    other => self.send(conn, &other),
                }
            }
            if close {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.out.extend_from_slice(&added);
                }
                self.close(conn, CloseReason::StoreFailed);
            } else {
                // Ahead of anything still held.
                self.emit(conn);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.out.extend_from_slice(&added);
                }
            }
        }
        self.flush();
    }

    /// A broker rebuilt from what a store recovered: sessions (offline, their
    /// expiry counting from `now`), subscriptions, queued and in-flight
    /// messages (re-sent with DUP when their client reconnects), inbound
    /// QoS 2 identifiers awaiting PUBREL, and retained messages. Sessions
    /// stored with expiry 0 are dropped: they ended with their connection.
    /// A delivery's shared-subscription group is not stored, so after a
    /// restore it stays with the member it was given to.
    pub fn restore(config: Config, now: Instant, recovered: Recovered) -> Broker {
        let mut broker = Broker::new(config, now);
        let stored = broker.config.persistence;
        for rs in recovered.sessions {
            if rs.expiry_interval > 0 {
                broker.install_session(rs, stored);
            }
        }
        for (topic, m) in recovered.retained {
            let expires_at = m
                .properties
                .message_expiry_interval
                .map(|secs| now + Duration::from_secs(u64::from(secs)));
            let message = Message {
                topic: topic.clone(),
                payload: m.payload,
                qos: m.qos,
                retain: true,
                properties: m.properties,
            };
            broker
                .retained
                .insert(&topic, Retained::new(message, expires_at, 0));
        }
        broker
    }

    /// Puts a recovered (or handed-over) session in place, offline, its
    /// expiry and its messages' expiry counting from now; `stored`: the
    /// store holds it already. Nothing if the client identifier has a
    /// session here.
    pub(super) fn install_session(&mut self, rs: RecoveredSession, stored: bool) {
        if self.by_client_id.contains_key(&rs.client_id) {
            return;
        }
        let now = self.now;
        let sid = SessionId(self.fresh_id());
        let mut s = Session::new(
            rs.client_id.clone(),
            self.config.limits.max_inflight,
            &self.hasher,
        );
        s.expiry_interval = rs.expiry_interval;
        s.owner = rs.owner;
        s.stored = stored;
        s.expires_at = (rs.expiry_interval != u32::MAX)
            .then(|| now + Duration::from_secs(u64::from(rs.expiry_interval)));
        for m in rs.messages {
            s.next_seq = s.next_seq.max(m.seq + 1);
            let delivery = Delivery {
                expires_at: m
                    .message
                    .properties
                    .message_expiry_interval
                    .map(|secs| now + Duration::from_secs(u64::from(secs))),
                message: Arc::new(Message {
                    topic: m.message.topic,
                    payload: m.message.payload,
                    qos: m.message.qos,
                    retain: m.message.retain,
                    properties: m.message.properties,
                }),
                qos: m.message.qos,
                retain: m.message.retain,
                subscription_ids: m.subscription_ids,
                shared_group: None,
                seq: m.seq,
                needs: 0,
            };
            match m.sent {
                Some((pid, released)) => {
                    let seq = s.inflight_seq;
                    s.inflight_seq += 1;
                    s.inflight.insert(
                        pid,
                        Inflight {
                            seq,
                            state: if released {
                                OutState::Released
                            } else {
                                OutState::Published
                            },
                            delivery,
                        },
                    );
                }
                None => {
                    s.queued_bytes += delivery.payload_len();
                    s.queue.push_back(delivery);
                }
            }
        }
        s.incoming_qos2.extend(rs.incoming);
        self.sessions.insert(sid, alloc::boxed::Box::new(s));
        self.by_client_id.insert(rs.client_id.clone(), sid);
        self.hosting(&rs.client_id, true);
        for (filter, options, id) in rs.subscriptions {
            self.insert_subscription(sid, &filter, SubEntry { options, id });
        }
        self.arm_session(sid);
    }

    /// What a store should hold now for this broker: every session that
    /// outlives its connection with its subscriptions, stored messages and
    /// inbound QoS 2 identifiers, and every retained message, in the order
    /// [`Recovered::normalize`] gives. Replaying the broker's storage
    /// operations into [`Recovered::apply`] must give the same thing.
    pub fn durable_state(&self) -> Recovered {
        let mut out = Recovered::default();
        for s in self.sessions.values().filter(|s| s.stored) {
            out.sessions.push(exported(s));
        }
        for (topic, r) in self.retained.iter() {
            let m = r.message(topic);
            out.retained.push((
                topic.clone(),
                StoredMessage {
                    topic: m.topic,
                    payload: m.payload,
                    qos: m.qos,
                    retain: true,
                    properties: m.properties,
                },
            ));
        }
        out.normalize();
        out
    }
}

/// At the end of an input, for a connection that has output: decides
/// whether it leaves now or waits for the store. It waits when it depends
/// on a batch not yet durable (its deliveries' or PUBRELs', this input's
/// batch `batch` for an acknowledgement, the batch its CONNACK waits for),
/// or when earlier output still waits: nothing overtakes. Returns whether
/// `c.out` may be sent now, with what this input held put back in front
/// of it; `holding` gains the connection when it starts waiting.
pub(super) fn settle(
    c: &mut Conn,
    conn: ConnId,
    batch: u64,
    durable: u64,
    holding: &mut Vec<ConnId>,
) -> bool {
    let fresh = c
        .held
        .iter()
        .rev()
        .take_while(|(n, _)| *n == UNRESOLVED)
        .count();
    let earlier = c.held.len() - fresh;
    let mut needs = c.needs;
    if c.acked {
        needs = needs.max(batch);
    }
    if let Some(wait) = c.connack_wait {
        needs = needs.max(wait);
    }
    if let Some((n, _)) = earlier.checked_sub(1).and_then(|i| c.held.get(i)) {
        needs = needs.max(*n);
    }
    c.needs = 0;
    c.acked = false;
    let fresh_acks = core::mem::take(&mut c.fresh_acks);
    if needs > durable {
        c.held_acks += fresh_acks;
        for entry in c.held.iter_mut().skip(earlier) {
            entry.0 = needs;
        }
        if !c.out.is_empty() {
            let bytes = c.out.split().freeze();
            c.held.push_back((needs, Held::Bytes(bytes)));
        }
        if earlier == 0 && !c.held.is_empty() {
            holding.push(conn);
        }
        return false;
    }
    if fresh > 0 {
        let after = core::mem::take(&mut c.out);
        while let Some((_, item)) = c.held.pop_front() {
            release(c, item);
        }
        c.out.extend_from_slice(&after);
    }
    true
}

/// Moves one held entry into the connection's output.
fn release(c: &mut Conn, item: Held) {
    match item {
        Held::Bytes(bytes) => c.out.extend_from_slice(&bytes),
        Held::Packet(packet) => {
            super::encode_packet(c, &packet);
        }
    }
}

/// Whether `item` acknowledges something the client sent (and so counts
/// against its Receive Maximum while held).
fn is_client_ack(item: &Held) -> bool {
    matches!(
        item,
        Held::Packet(Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_))
    )
}

/// A delivery as stored.
fn stored(d: &Delivery) -> StoredMessage {
    StoredMessage {
        topic: d.message.topic.clone(),
        payload: d.message.payload.clone(),
        qos: d.qos,
        retain: d.retain,
        properties: d.message.properties.clone(),
    }
}

/// A session as a value: its subscriptions, its QoS 1/2 messages queued and
/// in flight (with their packet identifiers), its inbound QoS 2
/// identifiers. QoS 0 messages are not part of it.
pub(super) fn exported(s: &Session) -> RecoveredSession {
    let mut messages = Vec::new();
    for (pid, f) in &s.inflight {
        if f.delivery.qos != QoS::AtMostOnce {
            messages.push(RecoveredMessage {
                seq: f.delivery.seq,
                subscription_ids: f.delivery.subscription_ids.clone(),
                message: stored(&f.delivery),
                sent: Some((*pid, f.state == OutState::Released)),
            });
        }
    }
    for d in s.queue.iter().filter(|d| d.qos != QoS::AtMostOnce) {
        messages.push(RecoveredMessage {
            seq: d.seq,
            subscription_ids: d.subscription_ids.clone(),
            message: stored(d),
            sent: None,
        });
    }
    messages.sort_by_key(|m| m.seq);
    RecoveredSession {
        client_id: s.client_id.clone(),
        expiry_interval: s.expiry_interval,
        owner: s.owner.clone(),
        subscriptions: s
            .subscriptions
            .iter()
            .map(|(f, e)| (f.clone(), e.options, e.id))
            .collect(),
        messages,
        incoming: s.incoming_qos2.iter().copied().collect(),
    }
}
