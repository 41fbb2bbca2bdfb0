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
//!  from another node: Broker::publish_remote (authorized, never forwarded again)
//!                     Broker::set_retained, Broker::release_client
//! ```
//!
//! A shared subscription group is served by the cluster: a message
//! published here does not go to the local members directly; the node that
//! the cluster picks (one per group, cluster-wide) gets it back through
//! `publish_remote` with [`RemoteTarget::Shared`].

use super::state::{SubEntry, SubKey, WillFrom};
use super::{
    Action, Broker, ClientRef, CloseReason, Event, Instant, Message, PublishDecision, Verdict,
};
use crate::MqttStr;
use crate::topic::TopicFilter;

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
        let mut taken_will = None;
        if let Some(old) = self.sessions.get(&sid).and_then(|s| s.conn) {
            taken_will = self.conns.get_mut(&old).and_then(|c| {
                let from = WillFrom {
                    client_id: c.client_id.clone(),
                    username: c.username.clone(),
                    listener: c.listener,
                };
                c.will.take().map(|w| (w, from))
            });
            self.close(old, CloseReason::SessionTakenOver);
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.pending_will = None;
        }
        self.end_session(sid);
        if let Some((will, from)) = taken_will {
            if clean_start && will.properties.will_delay_interval.unwrap_or(0) == 0 {
                self.publish_will(*will, &from);
            }
        }
        self.flush();
        true
    }
}
