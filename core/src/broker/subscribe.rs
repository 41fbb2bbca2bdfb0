//! SUBSCRIBE and UNSUBSCRIBE, shared subscription groups, retained messages
//! on subscribe, and in-process subscriptions.

use super::authorize::subscribe_decision;
use super::state::{
    Delivery, FilterSlot, HeldPacket, OutState, RetainedWalk, SessionId, SharedGroup, SubEntry,
    SubKey,
};
use super::{
    Action, Broker, ClientRef, CloseReason, ConnId, Event, Instant, LocalSubscription, Message,
    Operation, StoreOp, Verdict,
};
use crate::codec::{
    AckProperties, Packet, PacketId, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    Subscription, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::topic::{TopicFilter, TopicName, Walked, topic_order};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
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
        // Each filter is decided now (invalid, or the policy answers
        // inline) or asked of the embedding program; the subscriptions are
        // made in filter order once every answer is in.
        let mut slots = Vec::with_capacity(sub.subscriptions.len());
        let mut requests = Vec::new();
        let mut new_filters = 0;
        for (i, s) in sub.subscriptions.iter().enumerate() {
            let verdict = match self.check_subscription(sid, s, new_filters) {
                Err(code) => Verdict::Decided(Err(code)),
                Ok(is_new) => {
                    let verdict = self.policy_subscribe(id, s);
                    // Counted against the quota unless refused already, so
                    // deferred filters cannot raise more requests than the
                    // session could hold subscriptions.
                    if is_new && !matches!(verdict, Verdict::Decided(Err(_))) {
                        new_filters += 1;
                    }
                    verdict
                }
            };
            slots.push(match verdict {
                Verdict::Decided(result) => FilterSlot::Decided(result),
                Verdict::Defer => {
                    let what = Operation::Subscribe {
                        filter: s.filter.clone(),
                        qos: s.options.qos,
                    };
                    match self.authorize_request(id, i, what) {
                        Some(request) => {
                            let token = request.token;
                            requests.push(request);
                            FilterSlot::Waiting(token)
                        }
                        None => FilterSlot::Decided(Err(ReasonCode::UnspecifiedError)),
                    }
                }
            });
        }
        if requests.is_empty() {
            let results = slots
                .into_iter()
                .map(|slot| match slot {
                    FilterSlot::Decided(result) => result,
                    FilterSlot::Waiting(_) => Err(ReasonCode::UnspecifiedError),
                })
                .collect();
            self.finish_subscribe(id, sid, sub, results);
            return;
        }
        let waiting = requests.len();
        self.hold_for_authorization(
            id,
            HeldPacket::Subscribe {
                subscribe: sub,
                slots,
                waiting,
            },
        );
        for request in requests {
            self.emit_authorize(request);
        }
    }

    /// Makes the subscriptions of a decided SUBSCRIBE, in filter order, and
    /// answers it: `results` holds, per filter, the QoS the policy granted
    /// or the failure code. Retained messages follow the SUBACK.
    pub(super) fn finish_subscribe(
        &mut self,
        id: ConnId,
        sid: SessionId,
        sub: Subscribe,
        results: Vec<Result<QoS, ReasonCode>>,
    ) {
        let subscription_id = sub.properties.subscription_identifier;
        let mut reasons = Vec::with_capacity(sub.subscriptions.len());
        let mut retained_for = Vec::new();
        for (s, result) in sub.subscriptions.iter().zip(results) {
            let result =
                result.and_then(|granted| self.add_subscription(sid, s, granted, subscription_id));
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
        // One reason string, for the first failure.
        let failure = reasons.iter().copied().find(|r| r.is_error());
        let ack = SubAck {
            packet_id: sub.packet_id,
            reasons,
            properties: self.ack_properties(id, failure),
        };
        // SUBACK promises a subscription that outlives a restart when the
        // session is stored: it waits for the batch that stores it (and
        // the retained messages after it keep their place behind it).
        self.send_subscription_ack(id, sid, Packet::SubAck(ack));
        for (filter, entry) in retained_for {
            self.start_retained(sid, filter, entry);
        }
        self.walk_retained(sid);
    }

    /// The checks on one filter that need no policy: capabilities, size and
    /// the subscription quota, counting `new_filters` earlier filters of
    /// the same SUBSCRIBE that may become subscriptions. Returns whether
    /// the filter would be a new subscription.
    fn check_subscription(
        &self,
        sid: SessionId,
        s: &Subscription,
        new_filters: usize,
    ) -> Result<bool, ReasonCode> {
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
        if selector.levels().count() > self.config.limits.max_topic_levels
            || s.filter.as_bytes().len() > self.config.limits.max_topic_length
        {
            return Err(ReasonCode::TopicFilterInvalid);
        }
        let session = self
            .sessions
            .get(&sid)
            .ok_or(ReasonCode::UnspecifiedError)?;
        let is_new = !session.subscriptions.contains_key(&s.filter);
        if is_new
            && session.subscriptions.len().saturating_add(new_filters)
                >= self.config.limits.max_subscriptions_per_client
        {
            return Err(ReasonCode::QuotaExceeded);
        }
        Ok(is_new)
    }

    /// What the policy says about one filter of `conn`'s SUBSCRIBE.
    fn policy_subscribe(&self, conn: ConnId, s: &Subscription) -> Verdict<Result<QoS, ReasonCode>> {
        let Some(c) = self.conns.get(&conn) else {
            return Verdict::Decided(Err(ReasonCode::UnspecifiedError));
        };
        let client = ClientRef {
            client_id: &c.client_id,
            username: c.username.as_ref(),
            listener: c.listener,
        };
        match self
            .config
            .authorization
            .authorize_subscribe(client, &s.filter, s.options.qos)
        {
            Verdict::Decided(decision) => Verdict::Decided(subscribe_decision(decision)),
            Verdict::Defer => Verdict::Defer,
        }
    }

    /// Adds or replaces one authorized subscription, at `granted` lowered
    /// to what was asked and to the maximum QoS. Returns the QoS granted,
    /// whether the subscription existed before, and the entry stored. The
    /// quota is checked again here: this is the authoritative count.
    fn add_subscription(
        &mut self,
        sid: SessionId,
        s: &Subscription,
        granted: QoS,
        subscription_id: Option<NonZeroU32>,
    ) -> Result<(QoS, bool, SubEntry), ReasonCode> {
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
        let granted = granted.min(s.options.qos).min(self.config.maximum_qos);
        let entry = SubEntry {
            options: SubscriptionOptions {
                qos: granted,
                ..s.options
            },
            id: subscription_id,
        };
        self.insert_subscription(sid, &s.filter, entry);
        if let Some(client_id) = self.stored_client(sid) {
            self.record(StoreOp::SubscriptionPut {
                client_id,
                filter: s.filter.clone(),
                options: entry.options,
                identifier: entry.id,
            });
        }
        Ok((granted, existed, entry))
    }

    /// Adds (or replaces) `sid`'s subscription to `filter` in the session and
    /// the routing structures: the trie, or the filter's shared group.
    pub(super) fn insert_subscription(
        &mut self,
        sid: SessionId,
        filter: &TopicFilter,
        entry: SubEntry,
    ) {
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.subscriptions.insert(filter.clone(), entry);
        }
        match filter.shared() {
            Ok(Some((name, inner))) => {
                let key_name = name.clone();
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
                        self.shared_interest(&key_name, &inner, true);
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
            _ => {
                self.trie_insert(filter, SubKey::Session(sid), entry);
            }
        }
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
                    self.shared_interest(&key.0, &key.1, false);
                }
            }
            _ => {
                self.trie_remove(filter, &SubKey::Session(sid));
                // No retained messages for a subscription that is gone.
                if let Some(s) = self.sessions.get_mut(&sid) {
                    if let Some(walks) = s.walks.as_mut() {
                        walks.retain(|w| w.filter != *filter);
                        if walks.is_empty() {
                            s.walks = None;
                        }
                    }
                }
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

    /// A connected member of `group` other than `except`, round-robin, for
    /// a delivery that leaves `except`.
    fn pick_other_member(
        &mut self,
        group: u64,
        except: SessionId,
    ) -> Option<(SessionId, SubEntry)> {
        let g = self.shared_groups.get_mut(&group)?;
        let n = g.members.len();
        for step in 0..n {
            let Some(&(sid, entry)) = g.members.get((g.next + step) % n) else {
                break;
            };
            if sid != except && self.sessions.get(&sid).is_some_and(|s| s.conn.is_some()) {
                g.next = (g.next + step + 1) % n;
                return Some((sid, entry));
            }
        }
        None
    }

    /// The connection of `sid` ended: its shared-subscription deliveries
    /// that may go elsewhere move to another connected member of their group
    /// as new deliveries (the policy documented on [`super::Config`]). Those
    /// with no connected member to go to stay, in their order.
    pub(super) fn move_shared_deliveries(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        // In flight, QoS 1 may go elsewhere (QoS 1 allows a duplicate if the
        // client saw it). A QoS 2 delivery once started must be completed
        // with this client [MQTT-4.8.2-4], so it stays.
        let mut inflight: Vec<(u64, PacketId)> = s
            .inflight
            .iter()
            .filter(|(_, f)| {
                f.delivery.shared_group.is_some()
                    && f.state == OutState::Published
                    && f.delivery.qos == QoS::AtLeastOnce
            })
            .map(|(pid, f)| (f.seq, *pid))
            .collect();
        if inflight.is_empty() && !s.queue.iter().any(|d| d.shared_group.is_some()) {
            return;
        }
        // They went out first, so they go first again.
        inflight.sort_unstable();
        for (_, pid) in inflight {
            let Some(d) = self
                .sessions
                .get(&sid)
                .and_then(|s| s.inflight.get(&pid))
                .map(|f| f.delivery.clone())
            else {
                continue;
            };
            if self.reroute(sid, &d) {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.inflight.remove(&pid);
                }
                self.record_left(sid, &d);
            }
        }
        // Queued ones were never sent: free to go anywhere.
        let queue = match self.sessions.get_mut(&sid) {
            Some(s) => core::mem::take(&mut s.queue),
            None => return,
        };
        let mut kept = VecDeque::with_capacity(queue.len());
        for d in queue {
            if self.reroute(sid, &d) {
                self.record_left(sid, &d);
            } else {
                kept.push_back(d);
            }
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.queued_bytes = kept.iter().map(Delivery::payload_len).sum();
            s.queue = kept;
        }
    }

    /// Hands a shared-subscription delivery of `from` to another connected
    /// member of its group, with that member's options. Returns whether it
    /// left `from` (an expired one is simply dropped).
    fn reroute(&mut self, from: SessionId, d: &Delivery) -> bool {
        let Some(group) = d.shared_group else {
            return false;
        };
        if d.expires_at.is_some_and(|at| at <= self.now) {
            return true;
        }
        let Some((target, entry)) = self.pick_other_member(group, from) else {
            return false;
        };
        let moved = Delivery {
            message: d.message.clone(),
            qos: entry.options.qos.min(d.message.qos),
            retain: entry.options.retain_as_published && d.message.retain,
            subscription_ids: entry.id.into_iter().collect(),
            expires_at: d.expires_at,
            shared_group: Some(group),
            seq: 0,
            needs: d.needs,
        };
        self.deliver(target, moved);
        true
    }

    /// Starts sending the retained messages matching `filter` to a session
    /// that just subscribed, with RETAIN set [MQTT-3.3.1-8], behind its
    /// SUBACK: a walk over the store ([`Broker::walk_retained`]). It
    /// replaces a walk under way for the same filter: a repeated SUBSCRIBE
    /// asks for them all again.
    fn start_retained(&mut self, sid: SessionId, filter: TopicFilter, entry: SubEntry) {
        if self.retained.is_empty() {
            return;
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let walks = s.walks.get_or_insert_with(Box::default);
        walks.retain(|w| w.filter != filter);
        walks.push(RetainedWalk {
            filter,
            entry,
            after: None,
            since: self.retained_stamp,
        });
        // Entries of sessions that ended or finished their walks go here
        // too, so the list holds only sessions walking now (and this one).
        let sessions = &self.sessions;
        self.walking
            .retain(|w| *w != sid && sessions.get(w).is_some_and(|s| s.walks.is_some()));
        self.walking.push(sid);
    }

    /// The retained message of `topic` is about to change or go: each walk
    /// that has not reached it yet, and would have sent it, gets it now
    /// (into the session's queue if it cannot leave at once), so a walk
    /// sends what was retained when its SUBSCRIBE came, as if it had all
    /// been sent then; what replaces it goes to the subscriber live, and
    /// the walk skips it.
    pub(super) fn keep_for_walks(&mut self, topic: &TopicName) {
        if self.walking.is_empty() {
            return;
        }
        let sessions = &self.sessions;
        self.walking
            .retain(|sid| sessions.get(sid).is_some_and(|s| s.walks.is_some()));
        let Some(r) = self.retained.get(topic) else {
            return;
        };
        if r.expires_at.is_some_and(|at| at <= self.now) {
            return;
        }
        let (stamp, expires_at) = (r.stamp, r.expires_at);
        let mut owed = Vec::new();
        for &sid in &self.walking {
            let Some(walks) = self.sessions.get(&sid).and_then(|s| s.walks.as_deref()) else {
                continue;
            };
            for w in walks {
                if stamp <= w.since
                    && w.filter.matches(topic)
                    && w.after.as_deref().is_none_or(|a| {
                        topic_order(topic.as_bytes(), a) == core::cmp::Ordering::Greater
                    })
                {
                    owed.push((sid, w.entry));
                }
            }
        }
        if owed.is_empty() {
            return;
        }
        let message = Arc::new(r.message(topic));
        let needs = self.horizon();
        for (sid, entry) in owed {
            let delivery = Delivery {
                message: message.clone(),
                qos: message.qos.min(entry.options.qos),
                retain: true,
                subscription_ids: entry.id.into_iter().collect(),
                expires_at,
                shared_group: None,
                seq: 0,
                needs,
            };
            self.deliver_or_queue(sid, delivery, true);
        }
    }

    /// Sends retained messages of the session's walks, in topic order,
    /// while its connection takes them: until the connection is blocked
    /// (its output over [`super::Limits::outbound_buffer_bytes`]), other
    /// deliveries wait in its queue, or the window is full. `pump` goes on
    /// from there when the connection drains or acknowledgements free the
    /// window. So a SUBSCRIBE to `#` over a million retained messages
    /// sends the first at once, holds about a buffer's worth of output
    /// rather than a copy per message, and live deliveries that queue
    /// meanwhile go out before the walk goes on.
    ///
    /// A walk goes on after the last topic it sent, so it never sends a
    /// topic twice. It sends what was retained when the SUBSCRIBE came: a
    /// retained message replaced or cleared before the walk gets to it is
    /// handed to the session then ([`Broker::keep_for_walks`]), and one
    /// stored after the SUBSCRIBE, which went to the subscriber live, is
    /// skipped. Walks stay with a session that goes offline and go on when
    /// it is back; a restart of the broker ends them.
    pub(super) fn walk_retained(&mut self, sid: SessionId) {
        /// Matches taken from the store at a time, and nodes visited at
        /// most for them (a filter that matches little still yields).
        const SLICE: usize = 64;
        const VISITS: usize = 16 * SLICE;
        let now = self.now;
        let mut found: Vec<(Arc<Message>, Option<Instant>)> = Vec::new();
        let mut expired = Vec::new();
        loop {
            let needs = self.horizon();
            let Some(s) = self.sessions.get_mut(&sid) else {
                return;
            };
            let Some(conn) = s.conn else {
                return;
            };
            let Some(walk) = s.walks.as_mut().and_then(|w| w.first_mut()) else {
                if s.walks.take().is_some() {
                    self.walking.retain(|w| *w != sid);
                }
                return;
            };
            if !s.queue.is_empty()
                || s.inflight.len() >= usize::from(s.window)
                || self.conns.get(&conn).is_none_or(|c| c.blocked)
            {
                return;
            }
            let entry = walk.entry;
            let since = walk.since;
            let walked = self.retained.walk_matches(
                &walk.filter,
                walk.after.as_deref(),
                VISITS,
                |topic, r| {
                    if r.stamp > since {
                        // Stored after the walk began: it went out live.
                    } else if r.expires_at.is_some_and(|at| at <= now) {
                        expired.push(topic.clone());
                    } else {
                        found.push((Arc::new(r.message(topic)), r.expires_at));
                    }
                    found.len() < SLICE
                },
            );
            let mut sent = 0;
            let mut last = None;
            for (message, expires_at) in &found {
                let qos = message.qos.min(entry.options.qos);
                if !self.retained_room(sid, qos) {
                    break;
                }
                last = Some(message.topic.bytes().clone());
                let delivery = Delivery {
                    message: message.clone(),
                    qos,
                    retain: true,
                    subscription_ids: entry.id.into_iter().collect(),
                    expires_at: *expires_at,
                    shared_group: None,
                    seq: 0,
                    // A retained message does not remember its batch: it
                    // waits for every batch so far, so none is sent that a
                    // crash could still undo.
                    needs,
                };
                self.deliver_or_queue(sid, delivery, true);
                sent += 1;
            }
            let stopped = sent < found.len();
            found.clear();
            for topic in expired.drain(..) {
                self.retained.remove(&topic);
                self.record(StoreOp::RetainedDelete { topic });
            }
            let Some(walks) = self.sessions.get_mut(&sid).and_then(|s| s.walks.as_mut()) else {
                return;
            };
            let Some(walk) = walks.first_mut() else {
                continue;
            };
            if stopped {
                // Goes on after the last one sent.
                if last.is_some() {
                    walk.after = last;
                }
                return;
            }
            match walked {
                Walked::After(at) => walk.after = Some(at),
                Walked::Done => {
                    walks.remove(0);
                }
            }
        }
    }

    /// Whether a delivery at `qos` would leave now rather than queue.
    fn retained_room(&self, sid: SessionId, qos: QoS) -> bool {
        let Some(s) = self.sessions.get(&sid) else {
            return false;
        };
        let Some(conn) = s.conn else {
            return false;
        };
        s.queue.is_empty()
            && (qos == QoS::AtMostOnce || s.inflight.len() < usize::from(s.window))
            && self.conns.get(&conn).is_some_and(|c| !c.blocked)
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
                if let Some(client_id) = self.stored_client(sid) {
                    self.record(StoreOp::SubscriptionDelete {
                        client_id,
                        filter: filter.clone(),
                    });
                }
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
        // Like SUBACK: a removal the store has not made durable could come
        // back after a restart.
        self.send_subscription_ack(id, sid, Packet::UnsubAck(ack));
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
        self.trie_insert(&filter, SubKey::Local(local), entry);
        let mut retained = Vec::new();
        self.retained.for_each_match(&filter, |topic, r| {
            if r.expires_at.is_none_or(|at| at > now) {
                retained.push(r.message(topic));
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
                self.trie_remove(&filter, &SubKey::Local(subscription.0));
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

impl Broker {
    /// Sends a SUBACK or UNSUBACK: for a stored session, once the batch of
    /// this input (which records the change) is durable; otherwise at once,
    /// in order with the rest of the connection's output.
    fn send_subscription_ack(&mut self, id: ConnId, sid: SessionId, packet: Packet) {
        if self.sessions.get(&sid).is_some_and(|s| s.stored) {
            let needs = self.horizon();
            self.send_held(id, packet, needs);
        } else {
            self.send(id, &packet);
        }
    }
}
