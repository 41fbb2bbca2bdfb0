//! PUBLISH in both directions: inbound QoS flows, routing through the
//! subscription trie, and delivery into each session's window and queue.

use super::authorize::denial;
use super::state::{Delivery, HeldPacket, Inflight, OutState, SessionId, SubKey, TopicAliases};
use super::{
    Action, Broker, ClientRef, CloseReason, ConnId, Event, Instant, Message, Operation,
    PublishDecision, Retained, StoreOp, StoredMessage, Verdict,
};
use crate::codec::{Packet, PacketId, Protocol, PubResponse, Publish, QoS, QosPid, ReasonCode};
use crate::topic::TopicName;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

impl Broker {
    pub(super) fn on_publish(&mut self, id: ConnId, sid: SessionId, mut p: Publish) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let v5 = c.protocol == Protocol::V5;
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias.get() > c.promised_alias_max {
                self.close(id, CloseReason::Protocol(ReasonCode::TopicAliasInvalid));
                return;
            }
            if p.topic.is_empty() {
                match c.aliases.as_ref().and_then(|a| a.inbound.get(&alias.get())) {
                    Some(topic) => p.topic = topic.clone(),
                    None => {
                        self.close(id, CloseReason::Protocol(ReasonCode::ProtocolError));
                        return;
                    }
                }
            } else {
                c.aliases
                    .get_or_insert_with(|| TopicAliases::new(&self.hasher))
                    .inbound
                    .insert(alias.get(), p.topic.clone());
            }
        }
        let qos = p.qos.qos();
        let limits = &self.config.limits;
        let violation = if p.topic.levels().count() > limits.max_topic_levels
            || p.topic.len() > limits.max_topic_length
        {
            Some(ReasonCode::TopicNameInvalid)
        } else if qos > self.config.maximum_qos {
            Some(ReasonCode::QoSNotSupported)
        } else if p.retain && !self.config.retain_available {
            Some(ReasonCode::RetainNotSupported)
        } else if !p.properties.subscription_identifiers.is_empty() {
            // Only servers send subscription identifiers [MQTT-3.3.4-6].
            Some(ReasonCode::ProtocolError)
        } else {
            None
        };
        if let Some(code) = violation {
            self.close(id, CloseReason::Protocol(code));
            return;
        }
        self.stats.messages_received += 1;
        let level = usize::from(p.qos.qos() as u8);
        if let Some(n) = self.stats.received_by_qos.get_mut(level) {
            *n += 1;
        }
        if let Some(n) = self.stats.payload_received_by_qos.get_mut(level) {
            *n += p.payload.len() as u64;
        }
        self.busiest.publish(&p.topic, self.now);

        if let QosPid::ExactlyOnce(pid) = p.qos {
            let Some(s) = self.sessions.get(&sid) else {
                return;
            };
            // A re-sent QoS 2 PUBLISH before PUBREL is acknowledged again
            // but not routed again: exactly once [MQTT-4.3.3-10].
            if s.incoming_qos2.contains(&pid) {
                // Its identifier may still be on its way to the store.
                let needs = self.horizon();
                self.depend(id, needs);
                self.send_ack(id, Packet::PubRec(PubResponse::new(pid)));
                return;
            }
            // MQTT 5 clients were told the Receive Maximum; MQTT 3 clients
            // never are, so they get a larger bound of their own.
            let (limit, reason) = if v5 {
                (
                    usize::from(c.promised_receive_max),
                    CloseReason::Protocol(ReasonCode::ReceiveMaximumExceeded),
                )
            } else {
                (
                    self.config.limits.mqtt3_max_pending_qos2,
                    CloseReason::PendingQos2Exceeded,
                )
            };
            if s.incoming_qos2.len() >= limit {
                self.close(id, reason);
                return;
            }
        }

        let mut reason = ReasonCode::Success;
        if v5
            && self.config.validate_utf8_payloads
            && p.properties.payload_format_indicator == Some(true)
            && core::str::from_utf8(&p.payload).is_err()
        {
            reason = ReasonCode::PayloadFormatInvalid;
        } else if is_sys(&p.topic) {
            reason = ReasonCode::NotAuthorized;
        } else {
            let client = ClientRef {
                client_id: &c.client_id,
                username: c.username.as_ref(),
                listener: c.listener,
            };
            match self
                .config
                .authorization
                .authorize_publish(client, &p.topic)
            {
                Verdict::Decided(PublishDecision::Allow) => {}
                Verdict::Decided(PublishDecision::Deny(code)) => reason = denial(code),
                Verdict::Defer => {
                    let what = Operation::Publish {
                        topic: p.topic.clone(),
                        qos,
                        retain: p.retain,
                    };
                    if let Some(request) = self.authorize_request(id, 0, what) {
                        let token = request.token;
                        self.hold_for_authorization(id, HeldPacket::Publish { token, publish: p });
                        self.emit_authorize(request);
                    }
                    return;
                }
            }
        }
        self.finish_publish(id, sid, p, reason);
    }

    /// Routes an inbound PUBLISH whose checks and authorization are done
    /// (unless `reason` is a failure), and acknowledges it. Refused
    /// publishes are acknowledged but not routed: 3.1.1 has no way to say
    /// no; 5.0 says why.
    ///
    /// The acknowledgement comes before the deliveries (Mosquitto's order),
    /// and with a store, deliveries wait like it for the batch that records
    /// the message (its inbound QoS 2 identifier, its subscribers' copies):
    /// a publisher that re-sends after a crash is then recognised, never
    /// routed twice.
    pub(super) fn finish_publish(
        &mut self,
        id: ConnId,
        sid: SessionId,
        p: Publish,
        mut reason: ReasonCode,
    ) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        let v5 = c.protocol == Protocol::V5;
        let client_id = c.client_id.clone();
        let qos = p.qos.qos();
        let packet_id = p.qos.packet_id();
        let mut routed = None;
        if reason == ReasonCode::Success {
            let message = Message {
                topic: p.topic,
                payload: p.payload,
                qos,
                retain: p.retain,
                properties: p.properties,
            };
            if self.config.cluster {
                let username = self.conns.get(&id).and_then(|c| c.username.clone());
                self.forward(&message, Some(&client_id), username.as_ref());
            }
            let r = self.match_message(message);
            if r.targets.is_empty() {
                reason = ReasonCode::NoMatchingSubscribers;
            }
            routed = Some(r);
        }
        if !v5 {
            reason = ReasonCode::Success;
        }
        if let Some(pid) = packet_id {
            let response = PubResponse {
                packet_id: pid,
                reason,
                properties: self.ack_properties(id, Some(reason)),
            };
            if qos == QoS::AtLeastOnce {
                self.send_ack(id, Packet::PubAck(response));
            } else {
                if !reason.is_error() {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.incoming_qos2.insert(pid);
                    }
                    if let Some(client_id) = self.stored_client(sid) {
                        self.record(StoreOp::IncomingPut {
                            client_id,
                            packet_id: pid,
                        });
                    }
                }
                self.send_ack(id, Packet::PubRec(response));
            }
        }
        if let Some(r) = routed {
            let topic = r.message.topic.clone();
            let matched = r.targets.len();
            self.deliver_matched(r, Some(sid));
            self.event(Event::Published {
                client_id: Some(client_id),
                topic,
                qos,
                matched,
            });
        } else {
            self.stats.publishes_denied += 1;
        }
    }

    pub(super) fn on_pubrel(&mut self, id: ConnId, sid: SessionId, r: PubResponse) {
        let known = self
            .sessions
            .get_mut(&sid)
            .is_some_and(|s| s.incoming_qos2.remove(&r.packet_id));
        let mut response = PubResponse::new(r.packet_id);
        if !known {
            response.reason = ReasonCode::PacketIdentifierNotFound;
            response.properties = self.ack_properties(id, Some(response.reason));
        } else if let Some(client_id) = self.stored_client(sid) {
            self.record(StoreOp::IncomingDelete {
                client_id,
                packet_id: r.packet_id,
            });
        }
        self.send_ack(id, Packet::PubComp(response));
    }

    /// Whether an acknowledgement of kind `got` for packet id `pid` fits
    /// the outbound flow in flight under that id. One that names a flow of
    /// another kind (PUBREC or PUBCOMP for QoS 1, PUBACK for QoS 2, PUBCOMP
    /// before PUBREC) is a protocol error (section 4.3; Mosquitto closes
    /// too); an unknown id is not, since a resumed session may see
    /// acknowledgements the broker no longer waits for.
    fn ack_mismatch(&self, sid: SessionId, pid: PacketId, got: AckKind) -> bool {
        let Some(f) = self.sessions.get(&sid).and_then(|s| s.inflight.get(&pid)) else {
            return false;
        };
        !matches!(
            (f.delivery.qos, f.state, got),
            (QoS::AtLeastOnce, OutState::Published, AckKind::Ack)
                | (QoS::ExactlyOnce, _, AckKind::Received)
                | (QoS::ExactlyOnce, OutState::Released, AckKind::Complete)
        )
    }

    fn wrong_ack(&mut self, id: ConnId) {
        self.close_because(
            id,
            CloseReason::Protocol(ReasonCode::ProtocolError),
            Some("acknowledgement of the wrong kind for this packet identifier"),
        );
    }

    pub(super) fn on_puback(&mut self, id: ConnId, sid: SessionId, r: PubResponse) {
        if self.ack_mismatch(sid, r.packet_id, AckKind::Ack) {
            self.wrong_ack(id);
            return;
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Some(f) = s.inflight.remove(&r.packet_id) {
            self.record_left(sid, &f.delivery);
            let Some(s) = self.sessions.get(&sid) else {
                return;
            };
            let client_id = s.client_id.clone();
            self.event(Event::Acknowledged {
                client_id,
                packet_id: r.packet_id.get(),
            });
            self.pump(sid);
        }
    }

    pub(super) fn on_pubrec(&mut self, id: ConnId, sid: SessionId, r: PubResponse) {
        if self.ack_mismatch(sid, r.packet_id, AckKind::Received) {
            self.wrong_ack(id);
            return;
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if r.reason.is_error() {
            // The receiver refused it: the flow ends here, and only a PUBREC
            // below 0x80 is answered with PUBREL (MQTT 5 section 4.3.3),
            // known packet identifier or not.
            if let Some(f) = s.inflight.remove(&r.packet_id) {
                self.record_left(sid, &f.delivery);
                self.pump(sid);
            }
            return;
        }
        let mut response = PubResponse::new(r.packet_id);
        match s.inflight.get_mut(&r.packet_id) {
            Some(f) => {
                if f.state == OutState::Published {
                    f.state = OutState::Released;
                    let seq = f.delivery.seq;
                    self.record_sent(sid, seq, r.packet_id, true);
                }
            }
            None => {
                response.reason = ReasonCode::PacketIdentifierNotFound;
                response.properties = self.ack_properties(id, Some(response.reason));
            }
        }
        // The receiver forgets the identifier on PUBREL: if the broker then
        // crashed before storing "released", it would send the PUBLISH
        // again as new. So PUBREL waits for that state to be durable.
        let needs = if self.stored_client(sid).is_some() {
            self.horizon()
        } else {
            0
        };
        self.send_held(id, Packet::PubRel(response), needs);
    }

    pub(super) fn on_pubcomp(&mut self, id: ConnId, sid: SessionId, r: PubResponse) {
        if self.ack_mismatch(sid, r.packet_id, AckKind::Complete) {
            self.wrong_ack(id);
            return;
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Some(f) = s.inflight.remove(&r.packet_id) {
            self.record_left(sid, &f.delivery);
            let Some(s) = self.sessions.get(&sid) else {
                return;
            };
            let client_id = s.client_id.clone();
            self.event(Event::Acknowledged {
                client_id,
                packet_id: r.packet_id.get(),
            });
            self.pump(sid);
        }
    }

    /// Publishes a message from the embedding program, as if a client had:
    /// it is retained if `message.retain`, and routed to every matching
    /// subscription. Returns how many subscriptions it reached.
    pub fn publish(&mut self, now: Instant, message: Message) -> usize {
        self.advance(now);
        let topic = message.topic.clone();
        let qos = message.qos;
        self.forward(&message, None, None);
        let matched = self.route_message(message, None);
        self.event(Event::Published {
            client_id: None,
            topic,
            qos,
            matched,
        });
        self.flush();
        matched
    }

    /// Stores or clears the retained message of `message.topic`, then
    /// delivers the message to every matching subscription, once per session
    /// at the highest QoS of its matching subscriptions and with all their
    /// identifiers. Returns the number of matching subscriptions.
    pub(super) fn route_message(&mut self, message: Message, origin: Option<SessionId>) -> usize {
        let routed = self.match_message(message);
        // In a cluster, shared groups are reached through the cluster, not
        // from here (see `deliver_matched`).
        let matched = if self.config.cluster {
            routed
                .targets
                .iter()
                .filter(|(key, _)| !matches!(key, SubKey::Shared(_)))
                .count()
        } else {
            routed.targets.len()
        };
        self.deliver_matched(routed, origin);
        matched
    }

    /// The first half of [`Broker::route_message`]: retains the message and
    /// finds its subscriptions, delivering nothing yet.
    pub(super) fn match_message(&mut self, message: Message) -> Routed {
        self.match_message_retaining(message, true)
    }

    /// [`Broker::match_message`], storing a retained message only if
    /// `store_retained`.
    pub(super) fn match_message_retaining(
        &mut self,
        message: Message,
        store_retained: bool,
    ) -> Routed {
        let now = self.now;
        let expires_at = message
            .properties
            .message_expiry_interval
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        if store_retained && message.retain && self.config.retain_available {
            self.retain(&message, expires_at);
        }
        let message = Arc::new(message);
        let mut targets = core::mem::take(&mut self.scratch);
        targets.clear();
        self.subscriptions
            .for_each_match(&message.topic, |key, entry| targets.push((*key, *entry)));
        Routed {
            message,
            expires_at,
            targets,
        }
    }

    /// The second half of [`Broker::route_message`]: the deliveries. They
    /// wait for whatever this input stored so far (see `Delivery::needs`).
    pub(super) fn deliver_matched(&mut self, routed: Routed, origin: Option<SessionId>) {
        let Routed {
            message,
            expires_at,
            mut targets,
        } = routed;
        let needs = self.input_batch();
        targets.sort_unstable_by_key(|t| t.0);
        // In a cluster, shared groups are served through the cluster (one
        // member cluster-wide), and a message from another node is for
        // either the plain subscriptions or one group.
        let only = if self.config.cluster {
            Some(self.remote_group.flatten())
        } else {
            None
        };
        for group in targets.chunk_by(|a, b| a.0 == b.0) {
            let Some(&(key, _)) = group.first() else {
                continue;
            };
            match (only, key) {
                (None, _) | (Some(None), SubKey::Session(_) | SubKey::Local(_)) => {}
                (Some(Some(wanted)), SubKey::Shared(g)) if g == wanted => {}
                _ => continue,
            }
            let mut qos = None;
            let mut retain_as_published = false;
            let mut ids = Vec::new();
            for &(_, entry) in group {
                // No Local: never back to the publisher [MQTT-3.8.3-3].
                if entry.options.no_local && matches!(key, SubKey::Session(s) if Some(s) == origin)
                {
                    continue;
                }
                qos = qos.max(Some(entry.options.qos));
                retain_as_published |= entry.options.retain_as_published;
                ids.extend(entry.id);
            }
            let Some(qos) = qos else { continue };
            match key {
                SubKey::Session(sid) => {
                    let delivery = Delivery {
                        message: message.clone(),
                        qos: qos.min(message.qos),
                        retain: retain_as_published && message.retain,
                        subscription_ids: ids,
                        expires_at,
                        shared_group: None,
                        seq: 0,
                        needs,
                    };
                    self.deliver(sid, delivery);
                }
                // A group is its own delivery, apart from the member's other
                // subscriptions, so it can move to another member later.
                SubKey::Shared(group) => {
                    if let Some((sid, entry)) = self.pick_member(group) {
                        let delivery = Delivery {
                            message: message.clone(),
                            qos: entry.options.qos.min(message.qos),
                            retain: entry.options.retain_as_published && message.retain,
                            subscription_ids: entry.id.into_iter().collect(),
                            expires_at,
                            shared_group: Some(group),
                            seq: 0,
                            needs,
                        };
                        self.deliver(sid, delivery);
                    }
                }
                SubKey::Local(local) => {
                    self.actions.push_back(Action::Deliver {
                        subscription: super::LocalSubscription(local),
                        message: Message {
                            retain: false,
                            ..Message::clone(&message)
                        },
                    });
                }
            }
        }
        targets.clear();
        self.scratch = targets;
    }

    pub(super) fn retain(&mut self, message: &Message, expires_at: Option<Instant>) {
        // An empty retained message clears the topic [MQTT-3.3.1-10].
        if message.payload.is_empty() {
            self.keep_for_walks(&message.topic);
            if self.retained.remove(&message.topic).is_some() {
                self.record(StoreOp::RetainedDelete {
                    topic: message.topic.clone(),
                });
            }
            return;
        }
        if self.retained.len() >= self.config.limits.max_retained_messages
            && self.retained.get(&message.topic).is_none()
        {
            return;
        }
        // A retained message lives long: give it bytes of its own rather
        // than a slice that pins the whole socket read it arrived in.
        let message = Message {
            topic: message.topic.detached(),
            payload: bytes::Bytes::copy_from_slice(&message.payload),
            qos: message.qos,
            retain: true,
            properties: message.properties.clone(),
        };
        let topic = message.topic.clone();
        // `$SYS` statistics are published afresh at every start: storing
        // them would only cost a commit per interval.
        if self.config.persistence && !is_sys(&topic) {
            self.record(StoreOp::RetainedPut {
                topic: topic.clone(),
                message: StoredMessage {
                    topic: topic.clone(),
                    payload: message.payload.clone(),
                    qos: message.qos,
                    retain: true,
                    properties: message.properties.clone(),
                },
            });
        }
        self.keep_for_walks(&topic);
        self.retained_stamp += 1;
        let stamp = self.retained_stamp;
        self.retained
            .insert(&topic, Retained::new(message, expires_at, stamp));
    }

    /// Hands one delivery to a session: sent now when its connection is up
    /// and the window has room, queued otherwise (within the queue limits).
    /// A QoS 0 delivery for a blocked connection is dropped.
    pub(super) fn deliver(&mut self, sid: SessionId, delivery: Delivery) {
        self.deliver_or_queue(sid, delivery, false);
    }

    /// [`Broker::deliver`], but a QoS 0 delivery for a blocked connection
    /// waits in the queue like any other: for retained messages, a snapshot
    /// the subscriber asked for rather than a live stream it fell behind.
    pub(super) fn deliver_or_queue(
        &mut self,
        sid: SessionId,
        mut delivery: Delivery,
        queue_qos0: bool,
    ) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        delivery.seq = s.next_seq;
        if let Some(conn) = s.conn {
            if !self.delivery_allowed(conn, &delivery.message.topic) {
                self.stats.deliveries_denied += 1;
                return;
            }
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let blocked = s
            .conn
            .is_some_and(|c| self.conns.get(&c).is_some_and(|c| c.blocked));
        match s.conn {
            Some(_) if blocked && delivery.qos == QoS::AtMostOnce && !queue_qos0 => {
                self.stats.dropped += 1;
                self.stats.dropped_queue_full += 1;
            }
            // Queued retained messages keep their order: a new one waits
            // behind them.
            Some(conn)
                if !blocked
                    && delivery.qos == QoS::AtMostOnce
                    && (!queue_qos0 || s.queue.is_empty()) =>
            {
                self.send_publish(conn, &delivery, None, false);
            }
            Some(conn)
                if !blocked && s.queue.is_empty() && s.inflight.len() < usize::from(s.window) =>
            {
                s.next_seq += 1;
                self.record_entered(sid, &delivery);
                self.send_new(sid, conn, delivery);
            }
            None if delivery.qos == QoS::AtMostOnce && !self.config.limits.queue_qos0_offline => {}
            _ => {
                let limits = &self.config.limits;
                if s.queue.len() >= limits.max_queued_messages
                    || s.queued_bytes.saturating_add(delivery.payload_len())
                        > limits.max_queued_bytes
                {
                    self.stats.dropped += 1;
                    self.stats.dropped_queue_full += 1;
                    let client_id = s.client_id.clone();
                    self.event(Event::QueueFull { client_id });
                    return;
                }
                s.next_seq += 1;
                s.queued_bytes += delivery.payload_len();
                self.record_entered(sid, &delivery);
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.queue.push_back(delivery);
                }
            }
        }
    }

    pub(super) fn delivery_allowed(&self, conn: ConnId, topic: &TopicName) -> bool {
        let Some(c) = self.conns.get(&conn) else {
            return true;
        };
        let client = ClientRef {
            client_id: &c.client_id,
            username: c.username.as_ref(),
            listener: c.listener,
        };
        self.config.authorization.authorize_delivery(client, topic)
    }

    /// Sends a QoS 1/2 delivery under a fresh packet identifier and records
    /// it in flight.
    fn send_new(&mut self, sid: SessionId, conn: ConnId, delivery: Delivery) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let pid = s.allocate_packet_id();
        let seq = s.inflight_seq;
        s.inflight_seq += 1;
        // A delivery too large for the client is dropped as if delivered
        // (MQTT 5 section 3.1.2.11.4), so it takes no window slot.
        if !self.send_publish(conn, &delivery, Some(pid), false) {
            self.record_left(sid, &delivery);
        } else {
            self.record_sent(sid, delivery.seq, pid, false);
            // The receiver holds a QoS 2 identifier until PUBREL: the store
            // must know it is taken before the receiver does, or a restart
            // could give it to another message.
            if self.stored_client(sid).is_some() {
                let needs = self.horizon();
                self.depend(conn, needs);
            }
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.inflight.insert(
                    pid,
                    Inflight {
                        seq,
                        state: OutState::Published,
                        delivery,
                    },
                );
            }
        }
    }

    /// Moves queued deliveries into the window while it has room, each
    /// authorized again for the connection as it leaves the queue (a denied
    /// one is dropped and counted in [`super::Stats::deliveries_denied`]);
    /// then retained messages of new subscriptions
    /// ([`Broker::walk_retained`]).
    pub(super) fn pump(&mut self, sid: SessionId) {
        loop {
            let Some(s) = self.sessions.get_mut(&sid) else {
                return;
            };
            let Some(conn) = s.conn else {
                return;
            };
            if s.inflight.len() >= usize::from(s.window)
                || self.conns.get(&conn).is_none_or(|c| c.blocked)
            {
                return;
            }
            let Some(delivery) = s.queue.pop_front() else {
                if s.walks.is_some() {
                    break;
                }
                return;
            };
            s.queued_bytes = s.queued_bytes.saturating_sub(delivery.payload_len());
            if delivery.expires_at.is_some_and(|at| at <= self.now) {
                self.stats.dropped_expired += 1;
                self.record_left(sid, &delivery);
                continue;
            }
            // Checked again as it leaves the queue: it may have been queued
            // while the session was offline (nobody to ask about), or the
            // policy may have changed since.
            if !self.delivery_allowed(conn, &delivery.message.topic) {
                self.stats.deliveries_denied += 1;
                self.record_left(sid, &delivery);
                continue;
            }
            if delivery.qos == QoS::AtMostOnce {
                self.send_publish(conn, &delivery, None, false);
            } else {
                self.send_new(sid, conn, delivery);
            }
        }
        // The queue is empty and the window has room: retained messages
        // for new subscriptions come after what queued up, so live
        // traffic goes first.
        self.walk_retained(sid);
    }

    /// Encodes one PUBLISH for `conn`. Returns false if it was not sent
    /// because it exceeds the client's Maximum Packet Size.
    pub(super) fn send_publish(
        &mut self,
        conn: ConnId,
        delivery: &Delivery,
        packet_id: Option<PacketId>,
        dup: bool,
    ) -> bool {
        let now = self.now;
        let aliases = self.config.outbound_topic_aliases;
        let burst = self.config.limits.outbound_buffer_bytes;
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let v5 = c.protocol == Protocol::V5;
        // Only an MQTT 5 PUBLISH carries properties, and only it needs its
        // own copy of them (subscription identifiers, expiry left, alias).
        let mut properties = None;
        if v5 {
            let mut own = delivery.message.properties.clone();
            own.subscription_identifiers
                .clone_from(&delivery.subscription_ids);
            if let Some(at) = delivery.expires_at {
                // Forward what is left of the expiry interval [MQTT-3.3.2-6].
                let left = at.saturating_duration_since(now).as_millis().div_ceil(1000);
                own.message_expiry_interval = Some(u32::try_from(left).unwrap_or(u32::MAX).max(1));
            }
            properties = Some(own);
        }
        let qos = packet_id.map_or(QosPid::AtMostOnce, |pid| QosPid::new(delivery.qos, pid));
        let topic = &delivery.message.topic;
        // The size check uses the full topic, so a packet that fits also
        // fits once an alias replaces the topic.
        if delivery
            .publish(dup, qos, true, properties.as_ref())
            .encoded_len(c.protocol)
            > c.client_max_packet as usize
        {
            self.stats.dropped += 1;
            self.stats.dropped_too_large += 1;
            return false;
        }
        let mut aliased = false;
        if let Some(properties) = properties
            .as_mut()
            .filter(|_| aliases && c.client_alias_max > 0)
        {
            let known = c
                .aliases
                .get_or_insert_with(|| TopicAliases::new(&self.hasher));
            if let Some(&alias) = known.outbound.get(topic) {
                properties.topic_alias = core::num::NonZeroU16::new(alias);
                aliased = true;
            } else if known.outbound.len() < usize::from(c.client_alias_max) {
                let alias = known.outbound.len() as u16 + 1;
                known.outbound.insert(topic.clone(), alias);
                properties.topic_alias = core::num::NonZeroU16::new(alias);
            }
        }
        // Encoding only fails for fields over their size limits, which the
        // engine never builds; such a PUBLISH is not sent.
        let encoded = delivery
            .publish(dup, qos, !aliased, properties.as_ref())
            .encode(c.protocol, &mut c.out);
        if encoded.is_err() {
            return false;
        }
        if delivery.needs > self.durable {
            c.needs = c.needs.max(delivery.needs);
        }
        if c.out.len() > burst {
            // The runtime blocks at this bound too once it has the bytes,
            // and its `handle_writable` resumes from the session queue.
            c.blocked = true;
        }
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(conn);
        }
        self.stats.messages_sent += 1;
        let level = usize::from(qos.qos() as u8);
        if let Some(n) = self.stats.sent_by_qos.get_mut(level) {
            *n += 1;
        }
        if let Some(n) = self.stats.payload_sent_by_qos.get_mut(level) {
            *n += delivery.message.payload.len() as u64;
        }
        true
    }
}

/// Which acknowledgement of an outbound PUBLISH arrived.
#[derive(Clone, Copy)]
enum AckKind {
    /// PUBACK
    Ack,
    /// PUBREC
    Received,
    /// PUBCOMP
    Complete,
}

/// A message matched but not yet delivered (see [`Broker::match_message`]).
pub(super) struct Routed {
    pub(super) message: Arc<Message>,
    expires_at: Option<Instant>,
    pub(super) targets: Vec<(SubKey, super::state::SubEntry)>,
}

pub(super) fn is_sys(topic: &TopicName) -> bool {
    let t = topic.as_bytes();
    t == b"$SYS" || t.starts_with(b"$SYS/")
}
