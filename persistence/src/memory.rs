//! A store that keeps everything in memory: nothing survives the process.

use crate::{Store, StoreError};
use roost_core::MqttStr;
use roost_core::broker::{
    Recovered, RecoveredMessage, RecoveredSession, SessionOwner, StoreOp, StoredMessage,
};
use roost_core::codec::{PacketId, SubscriptionOptions};
use roost_core::topic::{TopicFilter, TopicName};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;

/// Keeps what the engine stores in hash maps, so every operation costs
/// O(1) (messages: O(log n) in the session's queue).
///
/// [`commit`](Store::commit) returns at once: there is nothing to make
/// durable. Useful for a broker without persistence and for tests; a restart
/// loses everything. It never fails: it has none of
/// [`FjallStore`](crate::FjallStore)'s size limits, and it ignores kinds of
/// operation it does not know (there is no durability to promise).
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    sessions: HashMap<MqttStr, Session>,
    retained: HashMap<TopicName, StoredMessage>,
}

#[derive(Debug, Clone)]
struct Session {
    expiry_interval: u32,
    owner: Option<SessionOwner>,
    subscriptions: HashMap<TopicFilter, (SubscriptionOptions, Option<NonZeroU32>)>,
    messages: BTreeMap<u64, RecoveredMessage>,
    incoming: HashSet<PacketId>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn apply_one(&mut self, op: &StoreOp) {
        match op {
            StoreOp::SessionPut {
                client_id,
                expiry_interval,
                owner,
            } => match self.sessions.get_mut(client_id) {
                Some(s) => {
                    s.expiry_interval = *expiry_interval;
                    s.owner.clone_from(owner);
                }
                None => {
                    // Detached: a key kept for the session's lifetime must not
                    // pin the whole packet it was decoded from.
                    self.sessions.insert(
                        client_id.detached(),
                        Session {
                            expiry_interval: *expiry_interval,
                            owner: owner.clone(),
                            subscriptions: HashMap::new(),
                            messages: BTreeMap::new(),
                            incoming: HashSet::new(),
                        },
                    );
                }
            },
            StoreOp::SessionDelete { client_id } => {
                self.sessions.remove(client_id);
            }
            StoreOp::SubscriptionPut {
                client_id,
                filter,
                options,
                identifier,
            } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.subscriptions
                        .insert(filter.clone(), (*options, *identifier));
                }
            }
            StoreOp::SubscriptionDelete { client_id, filter } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.subscriptions.remove(filter);
                }
            }
            StoreOp::MessagePut {
                client_id,
                seq,
                subscription_ids,
                message,
            } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.messages.insert(
                        *seq,
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
                if let Some(m) = self
                    .sessions
                    .get_mut(client_id)
                    .and_then(|s| s.messages.get_mut(seq))
                {
                    m.sent = Some((*packet_id, *released));
                }
            }
            StoreOp::MessageDelete { client_id, seq } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.messages.remove(seq);
                }
            }
            StoreOp::IncomingPut {
                client_id,
                packet_id,
            } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.incoming.insert(*packet_id);
                }
            }
            StoreOp::IncomingDelete {
                client_id,
                packet_id,
            } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.incoming.remove(packet_id);
                }
            }
            StoreOp::RetainedPut { topic, message } => {
                self.retained.insert(topic.clone(), message.clone());
            }
            StoreOp::RetainedDelete { topic } => {
                self.retained.remove(topic);
            }
            // A kind of operation this store does not know yet: `StoreOp`
            // is non-exhaustive, and ignoring beats failing the broker.
            _ => {}
        }
    }
}

impl Store for MemoryStore {
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        for op in ops {
            self.apply_one(op);
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn recover(&mut self) -> Result<Recovered, StoreError> {
        let mut sessions: Vec<RecoveredSession> = self
            .sessions
            .iter()
            .map(|(client_id, s)| {
                let mut subscriptions: Vec<_> = s
                    .subscriptions
                    .iter()
                    .map(|(f, (o, i))| (f.clone(), *o, *i))
                    .collect();
                subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
                let mut incoming: Vec<_> = s.incoming.iter().copied().collect();
                incoming.sort_unstable();
                RecoveredSession {
                    client_id: client_id.clone(),
                    expiry_interval: s.expiry_interval,
                    owner: s.owner.clone(),
                    subscriptions,
                    messages: s.messages.values().cloned().collect(),
                    incoming,
                }
            })
            .collect();
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        let mut retained: Vec<_> = self
            .retained
            .iter()
            .map(|(t, m)| (t.clone(), m.clone()))
            .collect();
        retained.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Recovered { sessions, retained })
    }
}
