//! One node of a cluster: what the engine does differently when
//! [`Config::cluster`](super::Config::cluster) is on.
//!
//! The engine knows nothing of the transport between nodes. It says what
//! the other nodes must hear and takes in what they said:
//!
//! ```text
//!  client PUBLISH, will, Broker::publish ──► local subscribers (not shared groups)
//!                                        └─► Action::Forward ──► other nodes
//!  first / last subscriber of a filter   ──► Action::Interest
//!  CONNECT accepted                      ──► Action::Claimed
//!  session made here / ended here        ──► Action::Hosting
//!  CONNECT resuming a session not here   ──► Action::FetchSession ... Broker::session_fetched
//!  from another node: Broker::publish_remote (authorized, never forwarded again)
//!                     Broker::set_retained, Broker::release_client,
//!                     Broker::hand_over (a session moving to that node)
//! ```
//!
//! # A session that moves
//!
//! A client that connects to node B with Clean Start 0 while its session
//! lives on node A takes the session along. B holds the CONNECT and asks
//! for it ([`Action::FetchSession`]); A closes the old connection as taken
//! over and gives the session up as a value ([`Broker::hand_over`], a
//! [`RecoveredSession`]: subscriptions with their options and identifiers,
//! QoS 1/2 messages queued and in flight with their packet identifiers,
//! inbound QoS 2 identifiers); B puts it in place, keeps the subscriptions
//! B's policy allows the new connection, and answers CONNACK with session
//! present ([`Broker::session_fetched`]). The old connection's will is
//! handled as for a takeover on one node: the session continues, so it is
//! not published, and a delayed one is cancelled. QoS 0 messages queued on
//! A do not move.
//!
//! A shared subscription group is served by the cluster: a message
//! published here does not go to the local members directly; the node that
//! the cluster picks (one per group, cluster-wide) gets it back through
//! `publish_remote` with [`RemoteTarget::Shared`].

use super::state::{ConnState, HeldPacket, SubEntry, SubKey};
use super::{
    Action, Broker, ClientRef, ConnId, Event, FetchToken, Instant, Message, PublishDecision,
    RecoveredSession, SessionOwner, SubscribeDecision, Verdict,
};
use crate::MqttStr;
use crate::codec::Connect;
use crate::topic::TopicFilter;
use alloc::boxed::Box;

/// Which local subscriptions a message from another node is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteTarget {
    /// Every matching subscription that is not a shared one.
    Subscribers,
    /// One member of this shared subscription group (`$share/<group>/<filter>`).
    Shared {
        /// The group's name.
        group: MqttStr,
        /// Its filter.
        filter: TopicFilter,
    },
}

/// Who published a message that came from another node, for the
/// authorization policy ([`Broker::publish_remote`]).
#[derive(Debug, Clone, Copy)]
pub struct RemoteOrigin<'a> {
    /// The publishing client's identifier; `None` when the other node's
    /// embedding program published it (not checked, as here).
    pub client_id: Option<&'a MqttStr>,
    /// The publishing client's user name.
    pub username: Option<&'a MqttStr>,
    /// The listener whose policy applies (the runtime's numbering).
    pub listener: u16,
}

impl Broker {
    /// Adds a (non-shared) routing entry, telling the cluster when `filter`
    /// gets its first subscriber on this node.
    pub(super) fn trie_insert(&mut self, filter: &TopicFilter, key: SubKey, entry: SubEntry) {
        let added = self.subscriptions.insert(filter, key, entry).is_none();
        if added && self.config.cluster {
            let count = self.interest.entry(filter.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.actions.push_back(Action::Interest {
                    filter: filter.clone(),
                    group: None,
                    present: true,
                });
            }
        }
    }

    /// Removes a (non-shared) routing entry, telling the cluster when
    /// `filter` loses its last subscriber on this node.
    pub(super) fn trie_remove(&mut self, filter: &TopicFilter, key: &SubKey) {
        let removed = self.subscriptions.remove(filter, key).is_some();
        if removed && self.config.cluster {
            if let Some(count) = self.interest.get_mut(filter) {
                *count -= 1;
                if *count == 0 {
                    self.interest.remove(filter);
                    self.actions.push_back(Action::Interest {
                        filter: filter.clone(),
                        group: None,
                        present: false,
                    });
                }
            }
        }
    }

    /// A shared group was created here (`present`) or lost its last member.
    pub(super) fn shared_interest(&mut self, group: &MqttStr, filter: &TopicFilter, present: bool) {
        if self.config.cluster {
            self.actions.push_back(Action::Interest {
                filter: filter.clone(),
                group: Some(group.clone()),
                present,
            });
        }
    }

    /// Hands a message published here to the cluster.
    pub(super) fn forward(
        &mut self,
        message: &Message,
        client_id: Option<&MqttStr>,
        username: Option<&MqttStr>,
    ) {
        if !self.config.cluster || super::publish::is_sys(&message.topic) {
            return;
        }
        self.actions.push_back(Action::Forward {
            message: message.clone(),
            client_id: client_id.cloned(),
            username: username.cloned(),
        });
    }

    /// A client connected here: the other nodes let go of it.
    pub(super) fn claim(&mut self, client_id: &MqttStr, clean_start: bool) {
        if self.config.cluster {
            self.actions.push_back(Action::Claimed {
                client_id: client_id.clone(),
                clean_start,
            });
        }
    }

    /// Delivers a message another node published, with this node's MQTT
    /// semantics (QoS downgrade, retain as published, subscription
    /// identifiers), to the local subscriptions `target` names. It is never
    /// forwarded again, and its `retain` flag does not store it here
    /// ([`Broker::set_retained`] does that).
    ///
    /// The authorization policy is asked first, as for a PUBLISH from
    /// `from` on `from.listener`: a denial drops the message (counted in
    /// [`super::Stats::publishes_denied`]). A policy that defers cannot be
    /// asked here (no connection waits for the answer): the message is
    /// denied too. `$SYS` topics are each node's own and always refused.
    /// Returns the number of subscriptions reached.
    pub fn publish_remote(
        &mut self,
        now: Instant,
        message: Message,
        from: RemoteOrigin<'_>,
        target: &RemoteTarget,
    ) -> usize {
        self.advance(now);
        let allowed = !super::publish::is_sys(&message.topic)
            && from.client_id.is_none_or(|client_id| {
                let client = ClientRef {
                    client_id,
                    username: from.username,
                    listener: from.listener,
                };
                matches!(
                    self.config
                        .authorization
                        .authorize_publish(client, &message.topic),
                    Verdict::Decided(PublishDecision::Allow)
                )
            });
        if !allowed {
            self.stats.publishes_denied += 1;
            return 0;
        }
        let group = match target {
            RemoteTarget::Subscribers => None,
            RemoteTarget::Shared { group, filter } => {
                match self.shared_index.get(&(group.clone(), filter.clone())) {
                    Some(&g) => Some(g),
                    // The group left this node while the message travelled.
                    None => return 0,
                }
            }
        };
        let topic = message.topic.clone();
        let qos = message.qos;
        let routed = self.match_message_retaining(message, false);
        let matched = routed
            .targets
            .iter()
            .filter(|(key, _)| match (group, key) {
                (None, SubKey::Shared(_)) => false,
                (None, _) => true,
                (Some(wanted), SubKey::Shared(g)) => *g == wanted,
                (Some(_), _) => false,
            })
            .count();
        self.remote_group = Some(group);
        self.deliver_matched(routed, None);
        self.remote_group = None;
        self.event(Event::Published {
            client_id: from.client_id.cloned(),
            topic,
            qos,
            matched,
        });
        self.flush();
        matched
    }

    /// Stores (or, with an empty payload, clears) the retained message of
    /// `message.topic` as another node published it, delivering nothing:
    /// the live deliveries come through [`Broker::publish_remote`].
    pub fn set_retained(&mut self, now: Instant, message: Message) {
        self.advance(now);
        if !self.config.retain_available || super::publish::is_sys(&message.topic) {
            return;
        }
        let expires_at = message
            .properties
            .message_expiry_interval
            .map(|secs| now + core::time::Duration::from_secs(u64::from(secs)));
        self.retain(&message, expires_at);
        self.flush();
    }

    /// The client connected on another node: its connection here, if any,
    /// is closed as taken over (MQTT 5: DISCONNECT 0x8E) and its session
    /// here ends, as one client identifier is one session cluster-wide. Its
    /// will is published when the new connection started clean
    /// (`clean_start`) and the will has no delay, as for a takeover on one
    /// node; a delayed will is cancelled [MQTT-3.1.2-8]. Returns whether
    /// there was anything to end.
    pub fn release_client(&mut self, now: Instant, client_id: &MqttStr, clean_start: bool) -> bool {
        self.advance(now);
        let Some(&sid) = self.by_client_id.get(client_id) else {
            return false;
        };
        let taken_will = self.take_over(sid);
        self.end_session(sid);
        if let Some((will, from)) = taken_will {
            if clean_start && will.properties.will_delay_interval.unwrap_or(0) == 0 {
                self.publish_will(*will, &from);
            }
        }
        self.flush();
        true
    }

    /// This node holds the session of `client_id` now, or no longer.
    pub(super) fn hosting(&mut self, client_id: &MqttStr, present: bool) {
        if self.config.cluster {
            self.actions.push_back(Action::Hosting {
                client_id: client_id.clone(),
                present,
            });
        }
    }

    /// Holds an accepted CONNECT that resumes a session this node does not
    /// have while the cluster is asked for it.
    pub(super) fn fetch_session(&mut self, id: ConnId, connect: Box<Connect>, client_id: MqttStr) {
        let token = FetchToken {
            conn: id,
            n: self.fresh_id(),
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let owner = SessionOwner {
            class: c.auth_class,
            username: connect.username.as_ref().map(MqttStr::detached),
        };
        // Named as it will be known, for logs and for the policy.
        c.client_id = client_id.clone();
        c.username = owner.username.clone();
        self.hold_for_authorization(
            id,
            HeldPacket::Session {
                token,
                connect,
                client_id: client_id.clone(),
            },
        );
        self.actions.push_back(Action::FetchSession {
            token,
            client_id,
            owner,
        });
    }

    /// Answers an [`Action::FetchSession`]: the session another node handed
    /// over ([`Broker::hand_over`] there), or `None` when no node had it or
    /// it did not come in time. The held CONNECT then goes on: with the
    /// session (CONNACK session present; what it had in flight is re-sent,
    /// its queue delivered), or with a new one. The session's
    /// subscriptions are authorized again for the new connection, by this
    /// node's policy: a denied one (or one the policy defers: no SUBSCRIBE
    /// waits for the answer) is dropped, a granted one keeps at most the
    /// QoS granted. A token that is unknown (answered already, its
    /// connection closed, its deadline passed) is ignored.
    pub fn session_fetched(
        &mut self,
        now: Instant,
        token: FetchToken,
        session: Option<RecoveredSession>,
    ) {
        self.advance(now);
        self.finish_fetch(token, session);
        self.flush();
    }

    pub(super) fn finish_fetch(&mut self, token: FetchToken, session: Option<RecoveredSession>) {
        let id = token.conn;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let waiting = matches!(
            c.authorizing.as_deref(),
            Some(held) if matches!(&held.packet, HeldPacket::Session { token: t, .. } if *t == token)
        );
        if !waiting || !matches!(c.state, ConnState::AwaitingConnect) {
            return;
        }
        let listener = c.listener;
        let Some(held) = c.authorizing.take() else {
            return;
        };
        self.timers
            .remove(&(held.deadline, super::Timer::Authorize(id)));
        let HeldPacket::Session {
            connect, client_id, ..
        } = held.packet
        else {
            return;
        };
        if let Some(mut rs) = session.filter(|rs| rs.client_id == client_id) {
            let client = ClientRef {
                client_id: &client_id,
                username: connect.username.as_ref(),
                listener,
            };
            let policy = &self.config.authorization;
            rs.subscriptions.retain_mut(|(filter, options, _)| {
                match policy.authorize_subscribe(client, filter, options.qos) {
                    Verdict::Decided(SubscribeDecision::Grant(qos)) => {
                        options.qos = options.qos.min(qos);
                        true
                    }
                    _ => false,
                }
            });
            let max = self.config.limits.max_subscriptions_per_client;
            rs.subscriptions.truncate(max);
            self.stats.sessions_moved_in += 1;
            self.install_session(rs, false);
        }
        self.admit_now(id, connect, client_id, false);
        self.process_input(id);
    }

    /// Another node asks for the session of `client_id`, for a connection
    /// there by `owner` that resumes it (Clean Start 0): this node's
    /// connection of that client, if any, is closed as taken over (MQTT 5:
    /// DISCONNECT 0x8E), and the session is given up and returned, as for a
    /// takeover here that keeps the session: the old connection's will is
    /// not published and a delayed will is cancelled. A session of another
    /// identity (unless sessions are shared across identities) is not
    /// handed over: it ends here as for a takeover with a new session (the
    /// will without delay is published) and `None` is returned. `None` too
    /// when there is no session here.
    pub fn hand_over(
        &mut self,
        now: Instant,
        client_id: &MqttStr,
        owner: &SessionOwner,
    ) -> Option<RecoveredSession> {
        self.advance(now);
        let &sid = self.by_client_id.get(client_id)?;
        let owned = self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.owner.as_ref() == Some(owner));
        if !owned && !self.config.share_sessions_across_identities {
            self.release_client(now, client_id, true);
            return None;
        }
        // The session continues elsewhere: the will is not due.
        let _ = self.take_over(sid);
        let session = self.sessions.get(&sid).map(|s| super::durable::exported(s));
        self.end_session(sid);
        self.stats.sessions_moved_out += 1;
        self.flush();
        session
    }
}
