//! Storage actions: what the engine asks a store to make durable, and what a
//! store gives back at start.
//!
//! Only state that must survive a restart produces operations: sessions that
//! outlive their connection (MQTT 3 clean session 0, MQTT 5 session expiry
//! above 0), their subscriptions, the QoS 1/2 messages queued or in flight
//! for them, the inbound QoS 2 packet identifiers awaiting PUBREL, and
//! retained messages. Clean sessions and QoS 0 traffic never touch the store.
//!
//! The engine batches every operation one input produces into one
//! [`Action::Store`](super::Action::Store) with a [`StoreId`]. The
//! acknowledgement that promises durability to a publisher (PUBACK, PUBREC,
//! PUBCOMP) waits until the runtime calls
//! [`Broker::handle_store_done`](super::Broker::handle_store_done) for that
//! id. **Batches must be confirmed in the order they were emitted**:
//! confirming one confirms every earlier one.
//!
//! A batch the store could not make durable (a full disk) is reported with
//! [`Broker::handle_store_failed`](super::Broker::handle_store_failed),
//! under the same rule: failing one fails every earlier batch not yet
//! confirmed, and says nothing about later ones. The acknowledgements that
//! waited are answered negatively (MQTT 5 PUBACK/PUBREC 0x97; MQTT 3
//! clients are disconnected), a CONNACK that waited for a new stored
//! session is a refusal, and later batches are confirmed or failed as
//! usual once the store answers for them.
//!
//! A successful CONNACK that creates a stored session (MQTT 3 clean session
//! 0, MQTT 5 session expiry above 0, when no stored session existed) waits
//! for durability too: nothing is sent on that connection before it. So
//! does a CONNACK that resumes a stored session whose first batch is not
//! yet confirmed (its creator went before its own CONNACK).
//!
//! So does everything else that reflects state not yet durable, so that a
//! crash can never contradict what a client saw: a delivery of a message
//! whose inbound QoS 2 identifier or retained copy is in a batch not yet
//! confirmed (a publisher re-sending it after a crash is then recognised,
//! not routed twice), a PUBLISH under a packet identifier and a PUBREL to
//! a stored session (so no identifier is given to another message while
//! the receiver may still hold it, across a restart too), and what a
//! resumed session re-sends. Such output waits in its connection, behind
//! nothing and overtaken by nothing, and leaves with the confirmation; a
//! failed batch lets it go as it was (memory does not roll back).

use crate::MqttStr;
use crate::codec::{PacketId, PublishProperties, QoS, SubscriptionOptions};
use crate::topic::{TopicFilter, TopicName};
use alloc::vec::Vec;
use bytes::Bytes;
use core::num::NonZeroU32;

/// A batch of storage operations, as numbered by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreId(pub(crate) u64);

impl StoreId {
    /// The number behind the id (batches are numbered from 1, in order).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A message as stored: what is needed to deliver it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The topic.
    pub topic: TopicName,
    /// The payload.
    pub payload: Bytes,
    /// The QoS it is delivered with (for a session) or was published with
    /// (retained).
    pub qos: QoS,
    /// The RETAIN flag it is delivered with.
    pub retain: bool,
    /// Properties to forward. A Message Expiry Interval counts from the
    /// moment the store gives the message back, so a restart never makes a
    /// message expire early (it may make it live longer).
    pub properties: PublishProperties,
}

/// Who a session belongs to: the identity that created it (see
/// [`super::Config::share_sessions_across_identities`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionOwner {
    /// The authentication class of the listener it connected through
    /// ([`super::ConnInfo::auth_class`]).
    pub class: u16,
    /// Its authenticated user name; `None` for an anonymous client.
    pub username: Option<MqttStr>,
}

/// One durable change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreOp {
    /// A session that outlives its connection exists, with this expiry
    /// interval in seconds (`u32::MAX`: never).
    SessionPut {
        /// Its client identifier.
        client_id: MqttStr,
        /// Session Expiry Interval.
        expiry_interval: u32,
        /// Who it belongs to; `None` only for a session of unknown owner
        /// (restored from a store that did not record owners).
        owner: Option<SessionOwner>,
    },
    /// A session ended: forget it and everything stored for it.
    SessionDelete {
        /// Its client identifier.
        client_id: MqttStr,
    },
    /// A subscription was added or replaced.
    SubscriptionPut {
        /// The session.
        client_id: MqttStr,
        /// The filter as subscribed (including any `$share/` prefix).
        filter: TopicFilter,
        /// Its options (QoS is the granted one).
        options: SubscriptionOptions,
        /// Its subscription identifier.
        identifier: Option<NonZeroU32>,
    },
    /// A subscription was removed.
    SubscriptionDelete {
        /// The session.
        client_id: MqttStr,
        /// The filter.
        filter: TopicFilter,
    },
    /// A QoS 1/2 message was queued for a session. `seq` orders a session's
    /// messages and names this one in later operations.
    MessagePut {
        /// The session.
        client_id: MqttStr,
        /// Position in the session's order of delivery.
        seq: u64,
        /// Subscription identifiers it is delivered with.
        subscription_ids: Vec<NonZeroU32>,
        /// The message.
        message: StoredMessage,
    },
    /// A queued message was sent under `packet_id`; `released` once PUBREC
    /// arrived and PUBREL was sent (QoS 2).
    MessageSent {
        /// The session.
        client_id: MqttStr,
        /// The message.
        seq: u64,
        /// The packet identifier it was sent with.
        packet_id: PacketId,
        /// Whether it waits for PUBCOMP rather than PUBACK/PUBREC.
        released: bool,
    },
    /// A message was acknowledged (or dropped): forget it.
    MessageDelete {
        /// The session.
        client_id: MqttStr,
        /// The message.
        seq: u64,
    },
    /// An inbound QoS 2 PUBLISH was accepted; its packet identifier is in use
    /// until PUBREL.
    IncomingPut {
        /// The session.
        client_id: MqttStr,
        /// The packet identifier.
        packet_id: PacketId,
    },
    /// PUBREL arrived for an inbound QoS 2 message.
    IncomingDelete {
        /// The session.
        client_id: MqttStr,
        /// The packet identifier.
        packet_id: PacketId,
    },
    /// The retained message of `topic` was set.
    RetainedPut {
        /// The topic.
        topic: TopicName,
        /// The message.
        message: StoredMessage,
    },
    /// The retained message of `topic` was cleared.
    RetainedDelete {
        /// The topic.
        topic: TopicName,
    },
}

/// A stored message of a session, as recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredMessage {
    /// Its position in the session's order of delivery.
    pub seq: u64,
    /// Subscription identifiers it is delivered with.
    pub subscription_ids: Vec<NonZeroU32>,
    /// The message.
    pub message: StoredMessage,
    /// The packet identifier it was last sent with, and whether PUBREL was
    /// sent; `None` if it was still queued.
    pub sent: Option<(PacketId, bool)>,
}

/// A session as recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSession {
    /// Its client identifier.
    pub client_id: MqttStr,
    /// Its Session Expiry Interval (counted again from the restore).
    pub expiry_interval: u32,
    /// Who it belongs to. `None`: unknown (a record written before owners
    /// were stored); such a session is resumed by no one unless
    /// [`super::Config::share_sessions_across_identities`] is on, because
    /// it cannot be told whose messages it holds.
    pub owner: Option<SessionOwner>,
    /// Its subscriptions: filter, options, identifier.
    pub subscriptions: Vec<(TopicFilter, SubscriptionOptions, Option<NonZeroU32>)>,
    /// Its stored messages, in `seq` order.
    pub messages: Vec<RecoveredMessage>,
    /// Inbound QoS 2 packet identifiers awaiting PUBREL.
    pub incoming: Vec<PacketId>,
}

/// Everything a store gives back at start, for
/// [`Broker::restore`](super::Broker::restore).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Sessions.
    pub sessions: Vec<RecoveredSession>,
    /// Retained messages.
    pub retained: Vec<(TopicName, StoredMessage)>,
}

impl Recovered {
    /// Puts everything in a canonical order (sessions by client identifier,
    /// subscriptions by filter, messages by `seq`, identifiers ascending,
    /// retained by topic), so two recoveries compare equal when they hold
    /// the same state.
    pub fn normalize(&mut self) {
        self.sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        for s in &mut self.sessions {
            s.subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
            s.messages.sort_by_key(|m| m.seq);
            s.incoming.sort_unstable();
        }
        self.retained.sort_by(|a, b| a.0.cmp(&b.0));
    }

    /// Applies operations in order, as a store would: the reference
    /// semantics every store must match (stores test against it).
    pub fn apply(&mut self, op: &StoreOp) {
        match op {
            StoreOp::SessionPut {
                client_id,
                expiry_interval,
                owner,
            } => match self.session_mut(client_id) {
                Some(s) => {
                    s.expiry_interval = *expiry_interval;
                    s.owner.clone_from(owner);
                }
                None => self.sessions.push(RecoveredSession {
                    client_id: client_id.clone(),
                    expiry_interval: *expiry_interval,
                    owner: owner.clone(),
                    subscriptions: Vec::new(),
                    messages: Vec::new(),
                    incoming: Vec::new(),
                }),
            },
            StoreOp::SessionDelete { client_id } => {
                self.sessions.retain(|s| &s.client_id != client_id);
            }
            StoreOp::SubscriptionPut {
                client_id,
                filter,
                options,
                identifier,
            } => {
                if let Some(s) = self.session_mut(client_id) {
                    let entry = (filter.clone(), *options, *identifier);
                    match s.subscriptions.iter_mut().find(|(f, ..)| f == filter) {
                        Some(existing) => *existing = entry,
                        None => s.subscriptions.push(entry),
                    }
                }
            }
            StoreOp::SubscriptionDelete { client_id, filter } => {
                if let Some(s) = self.session_mut(client_id) {
                    s.subscriptions.retain(|(f, ..)| f != filter);
                }
            }
            StoreOp::MessagePut {
                client_id,
                seq,
                subscription_ids,
                message,
            } => {
                if let Some(s) = self.session_mut(client_id) {
                    s.messages.retain(|m| m.seq != *seq);
                    let at = s.messages.partition_point(|m| m.seq < *seq);
                    s.messages.insert(
                        at,
                        RecoveredMessage {
                            seq: *seq,
                            subscription_ids: subscription_ids.clone(),
                            message: message.clone(),
                            sent: None,
                        },
                    );
                }
            }
            StoreOp::MessageSent {
                client_id,
                seq,
                packet_id,
                released,
            } => {
                if let Some(s) = self.session_mut(client_id) {
                    if let Some(m) = s.messages.iter_mut().find(|m| m.seq == *seq) {
                        m.sent = Some((*packet_id, *released));
                    }
                }
            }
            StoreOp::MessageDelete { client_id, seq } => {
                if let Some(s) = self.session_mut(client_id) {
                    s.messages.retain(|m| m.seq != *seq);
                }
            }
            StoreOp::IncomingPut {
                client_id,
                packet_id,
            } => {
                if let Some(s) = self.session_mut(client_id) {
                    if !s.incoming.contains(packet_id) {
                        s.incoming.push(*packet_id);
                    }
                }
            }
            StoreOp::IncomingDelete {
                client_id,
                packet_id,
            } => {
                if let Some(s) = self.session_mut(client_id) {
                    s.incoming.retain(|p| p != packet_id);
                }
            }
            StoreOp::RetainedPut { topic, message } => {
                self.retained.retain(|(t, _)| t != topic);
                self.retained.push((topic.clone(), message.clone()));
            }
            StoreOp::RetainedDelete { topic } => self.retained.retain(|(t, _)| t != topic),
        }
    }

    fn session_mut(&mut self, client_id: &MqttStr) -> Option<&mut RecoveredSession> {
        self.sessions.iter_mut().find(|s| &s.client_id == client_id)
    }
}
