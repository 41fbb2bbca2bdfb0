//! SUBSCRIBE and UNSUBSCRIBE, shared subscription groups, retained messages
//! on subscribe, and in-process subscriptions.

use super::state::{Delivery, SessionId, SharedGroup, SubEntry, SubKey};
use super::{
    Action, Broker, ClientRef, CloseReason, ConnId, Event, Instant, LocalSubscription, Message,
};
use crate::codec::{
    AckProperties, Packet, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, Subscription,
    SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::topic::TopicFilter;
use alloc::vec::Vec;
use core::num::NonZeroU32;

impl Broker {
    pub(super) fn on_subscribe(&mut self, id: ConnId, sid: SessionId, sub: Subscribe) {
        let subscription_id = sub.properties.subscription_identifier;
        if subscription_id.is_some() && !self.config.subscription_identifiers_available {
            self.close(
                id,
                CloseReason::Protocol(ReasonCode::SubscriptionIdentifiersNotSupported),
            );
            return;
        }
        let mut reasons = Vec::with_capacity(sub.subscriptions.len());
        let mut retained_for = Vec::new();
        for s in &sub.subscriptions {
            let result = self.add_subscription(id, sid, s, subscription_id);
            reasons.push(match result {
                Ok((granted, existed, entry)) => {
                    let send_retained = match s.options.retain_handling {
                        RetainHandling::SendOnSubscribe => true,
                        RetainHandling::SendIfNew => !existed,
                        RetainHandling::DoNotSend => false,
                    };
                    // Shared subscriptions get no retained messages
                    // [MQTT-4.8.2-?; MQTT 5 section 4.8.2].
                    if send_retained && !s.filter.as_bytes().starts_with(b"$share/") {
                        retained_for.push((s.filter.clone(), entry));
                    }
                    granted_code(granted)
                }
                Err(code) => code,
            });
            if let Some(client_id) = self.sessions.get(&sid).map(|s| s.client_id.clone()) {
                let result = match result {
                    Ok((granted, ..)) => Ok(granted),
                    Err(code) => Err(code),
                };
                self.event(Event::Subscribed {
                    client_id,
                    filter: s.filter.clone(),
                    result,
                });
            }
        }
        let ack = SubAck {
            packet_id: sub.packet_id,
            reasons,
            properties: AckProperties::default(),
        };
        self.send(id, &Packet::SubAck(ack));
        for (filter, entry) in retained_for {
            self.send_retained(sid, &filter, entry);
        }
    }

    /// Adds or replaces one subscription. Returns the granted QoS, whether
    /// the subscription existed before, and the entry stored.
    fn add_subscription(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        s: &Subscription,
        subscription_id: Option<NonZeroU32>,
    ) -> Result<(QoS, bool, SubEntry), ReasonCode> {
        let shared = s
            .filter
            .shared()
            .map_err(|_| ReasonCode::TopicFilterInvalid)?;
        let selector = shared.as_ref().map_or(&s.filter, |(_, inner)| inner);
        if shared.is_some() && !self.config.shared_subscription_available {
            return Err(ReasonCode::SharedSubscriptionsNotSupported);
        }
        if selector.has_wildcards() && !self.config.wildcard_subscription_available {
            return Err(ReasonCode::WildcardSubscriptionsNotSupported);
        }
        if selector.levels().count() > self.config.limits.max_topic_levels {
            return Err(ReasonCode::TopicFilterInvalid);
        }
        let session = self
            .sessions
            .get(&sid)
            .ok_or(ReasonCode::UnspecifiedError)?;
        let existed = session.subscriptions.contains_key(&s.filter);
        if !existed
            && session.subscriptions.len() >= self.config.limits.max_subscriptions_per_client
        {
            return Err(ReasonCode::QuotaExceeded);
        }
        let c = self.conns.get(&conn).ok_or(ReasonCode::UnspecifiedError)?;
        let client = ClientRef {
            client_id: &c.client_id,
            username: c.username.as_ref(),
            listener: c.listener,
        };
        let granted = self
            .config
            .authorization
            .authorize_subscribe(client, &s.filter, s.options.qos)?
            .min(s.options.qos)
            .min(self.config.maximum_qos);
        let entry = SubEntry {
            options: SubscriptionOptions {
                qos: granted,
                ..s.options
            },
            id: subscription_id,
        };
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.subscriptions.insert(s.filter.clone(), entry);
        }
        match shared {
            None => {
                self.subscriptions
                    .insert(&s.filter, SubKey::Session(sid), entry);
            }
            Some((name, inner)) => {
                let key = (name, inner.clone());
                let group = match self.shared_index.get(&key) {
                    Some(&g) => g,
                    None => {
                        let g = self.fresh_id();
                        self.shared_index.insert(key, g);
                        self.shared_groups.insert(
                            g,
                            SharedGroup {
                                members: Vec::new(),
                                next: 0,
                            },
                        );
                        self.subscriptions.insert(&inner, SubKey::Shared(g), entry);
                        g
                    }
                };
                if let Some(group) = self.shared_groups.get_mut(&group) {
                    match group.members.iter_mut().find(|(m, _)| *m == sid) {
                        Some(member) => member.1 = entry,
                        None => group.members.push((sid, entry)),
                    }
                }
            }
        }
        Ok((granted, existed, entry))
    }

    /// Removes `sid`'s subscription to `filter` from the routing structures
    /// (the caller removes it from the session).
    pub(super) fn remove_subscription(&mut self, sid: SessionId, filter: &TopicFilter) {
        match filter.shared() {
            Ok(Some((name, inner))) => {
                let key = (name, inner);
                let Some(&g) = self.shared_index.get(&key) else {
                    return;
                };
                let Some(group) = self.shared_groups.get_mut(&g) else {
                    return;
                };
                group.members.retain(|(m, _)| *m != sid);
                if group.members.is_empty() {
                    self.subscriptions.remove(&key.1, &SubKey::Shared(g));
                    self.shared_groups.remove(&g);
                    self.shared_index.remove(&key);
                }
            }
            _ => {
                self.subscriptions.remove(filter, &SubKey::Session(sid));
            }
        }
    }

    /// One member of a shared group for the next message: round-robin over
    /// the members whose client is connected, or over all members when none
    /// is (the message then waits in that member's session).
    pub(super) fn pick_member(&mut self, group: u64) -> Option<(SessionId, SubEntry)> {
        let g = self.shared_groups.get_mut(&group)?;
        let n = g.members.len();
        for step in 0..n {
            let Some(&(sid, entry)) = g.members.get((g.next + step) % n) else {
                continue;
            };
            if self.sessions.get(&sid).is_some_and(|s| s.conn.is_some()) {
                g.next = (g.next + step + 1) % n;
                return Some((sid, entry));
            }
        }
        let member = *g.members.get(g.next % n.max(1))?;
        g.next = (g.next + 1) % n;
        Some(member)
    }

    /// Sends the retained messages matching `filter` to a session that just
    /// subscribed, with RETAIN set [MQTT-3.3.1-8].
    fn send_retained(&mut self, sid: SessionId, filter: &TopicFilter, entry: SubEntry) {
        let now = self.now;
        let mut found = Vec::new();
        let mut expired = Vec::new();
        self.retained.for_each_match(filter, |topic, r| {
            if r.expires_at.is_some_and(|at| at <= now) {
                expired.push(topic.clone());
                return;
            }
            found.push(Delivery {
                message: r.message.clone(),
                qos: r.message.qos.min(entry.options.qos),
                retain: true,
                subscription_ids: entry.id.into_iter().collect(),
                expires_at: r.expires_at,
            });
        });
        for topic in expired {
            self.retained.remove(&topic);
        }
        for delivery in found {
            self.deliver(sid, delivery);
        }
    }

    pub(super) fn on_unsubscribe(&mut self, id: ConnId, sid: SessionId, unsub: Unsubscribe) {
        let mut reasons = Vec::with_capacity(unsub.filters.len());
        for filter in &unsub.filters {
            let removed = self
                .sessions
                .get_mut(&sid)
                .and_then(|s| s.subscriptions.remove(filter))
                .is_some();
            if removed {
                self.remove_subscription(sid, filter);
                if let Some(client_id) = self.sessions.get(&sid).map(|s| s.client_id.clone()) {
                    self.event(Event::Unsubscribed {
                        client_id,
                        filter: filter.clone(),
                    });
                }
                reasons.push(ReasonCode::Success);
            } else {
                reasons.push(ReasonCode::NoSubscriptionExisted);
            }
        }
        let ack = UnsubAck {
            packet_id: unsub.packet_id,
            reasons,
            properties: AckProperties::default(),
        };
        self.send(id, &Packet::UnsubAck(ack));
    }

    /// Subscribes the embedding program itself: matching messages come out
    /// as [`Action::Deliver`], first the retained ones (with `retain` set).
    pub fn subscribe(&mut self, now: Instant, filter: TopicFilter) -> LocalSubscription {
        self.advance(now);
        let local = self.fresh_id();
        let entry = SubEntry {
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                ..SubscriptionOptions::default()
            },
            id: None,
        };
        self.subscriptions
            .insert(&filter, SubKey::Local(local), entry);
        let mut retained = Vec::new();
        self.retained.for_each_match(&filter, |_, r| {
            if r.expires_at.is_none_or(|at| at > now) {
                retained.push(Message {
                    retain: true,
                    ..r.message.clone()
                });
            }
        });
        for message in retained {
            self.actions.push_back(Action::Deliver {
                subscription: LocalSubscription(local),
                message,
            });
        }
        self.locals.insert(local, filter);
        LocalSubscription(local)
    }

    /// Ends an in-process subscription. Returns whether it existed.
    pub fn unsubscribe(&mut self, now: Instant, subscription: LocalSubscription) -> bool {
        self.advance(now);
        match self.locals.remove(&subscription.0) {
            Some(filter) => {
                self.subscriptions
                    .remove(&filter, &SubKey::Local(subscription.0));
                true
            }
            None => false,
        }
    }
}

fn granted_code(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::Success,
        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
    }
}
