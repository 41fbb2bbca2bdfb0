//! A crash-safe store on fjall, an embedded log-structured key-value
//! database.
//!
//! # Layout
//!
//! One fjall database in the store's directory, with a keyspace per kind of
//! record (keys; values are described in `record.rs`):
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `sessions` | client identifier | session number, expiry interval |
//! | `subscriptions` | session number, filter | options, identifier |
//! | `messages` | session number, `seq` (big-endian) | subscription identifiers, the message as a PUBLISH |
//! | `sent` | session number, `seq` | packet identifier, released |
//! | `incoming` | session number, packet identifier | (none) |
//! | `retained` | topic | the message as a PUBLISH |
//!
//! The session number is assigned when a session is first stored. Keys stay
//! short however long the client identifier is, a prefix scan on the number
//! returns a session's messages in `seq` order, and deleting a session is
//! one prefix delete per keyspace. The send state is a record of its own so
//! sending a message rewrites 4 bytes rather than the whole message.
//!
//! # Batches and commits
//!
//! [`Store::apply`] turns one batch into one fjall write batch, which lands
//! atomically in fjall's journal (still in its write buffer) and becomes
//! visible to reads. [`Store::commit`] then persists the journal once for
//! every batch written since the last commit: group commit. Because the
//! journal is append-only and each batch carries a checksum, a crash keeps
//! a prefix of the batches, each whole or not at all.

use crate::record::{self, SessionRecord};
use crate::{Store, StoreError};
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use roost_core::MqttStr;
use roost_core::broker::{Recovered, RecoveredMessage, RecoveredSession, StoreOp};
use roost_core::codec::PacketId;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// How durable a [`FjallStore`] makes a committed batch before
/// [`Store::commit`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `commit` fsyncs the journal once for every batch staged since the
    /// last commit. A committed batch survives a process crash, an OS crash
    /// and a power loss.
    #[default]
    Sync,
    /// `commit` hands the journal to the operating system and returns
    /// without an fsync; the runtime calls [`Store::flush`] every flush
    /// interval (fjall also syncs when it rotates its journal). A committed
    /// batch survives a process crash, but **an OS crash or power loss may
    /// lose everything committed in the last flush interval**, including
    /// messages whose PUBACK/PUBREC was already sent.
    Periodic,
}

/// The kinds of record, one keyspace each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ks {
    Sessions = 0,
    Subscriptions = 1,
    Messages = 2,
    Sent = 3,
    Incoming = 4,
    Retained = 5,
}

impl Ks {
    #[cfg(test)]
    const ALL: [Ks; 6] = [
        Ks::Sessions,
        Ks::Subscriptions,
        Ks::Messages,
        Ks::Sent,
        Ks::Incoming,
        Ks::Retained,
    ];

    /// Everything keyed by session number.
    const PER_SESSION: [Ks; 4] = [Ks::Subscriptions, Ks::Messages, Ks::Sent, Ks::Incoming];

    fn name(self) -> &'static str {
        match self {
            Ks::Sessions => "sessions",
            Ks::Subscriptions => "subscriptions",
            Ks::Messages => "messages",
            Ks::Sent => "sent",
            Ks::Incoming => "incoming",
            Ks::Retained => "retained",
        }
    }
}

/// The most fjall allows in a key.
const MAX_KEY: usize = u16::MAX as usize;

/// A store on fjall: see the crate docs for what each [`Durability`]
/// promises.
///
/// It keeps in memory the client identifier and number of every stored
/// session (the engine holds every session in memory anyway) and nothing
/// else; messages stay on disk until [`Store::recover`].
///
/// Dropping it without further calls is safe: what was committed is on
/// disk (under [`Durability::Periodic`], fjall syncs on drop too).
pub struct FjallStore {
    path: PathBuf,
    durability: Durability,
    db: Database,
    keyspaces: [Keyspace; 6],
    /// Every stored session, staged batches included.
    sessions: HashMap<MqttStr, SessionRecord>,
    next_num: u64,
    /// Whether a batch was written since the last commit.
    dirty: bool,
    poisoned: bool,
}

impl fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FjallStore")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .field("sessions", &self.sessions.len())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// One batch being built: the last write to each key wins, so a batch that
/// puts and then deletes the same key writes the delete only (fjall gives
/// every item of a batch the same sequence number).
#[derive(Default)]
struct Staged {
    writes: BTreeMap<(Ks, Vec<u8>), Option<Vec<u8>>>,
    /// How to put `sessions` back if the batch is refused.
    undo: Vec<(MqttStr, Option<SessionRecord>)>,
}

impl FjallStore {
    /// Opens (or creates) the store in directory `path`, replaying fjall's
    /// journal: everything committed before a crash is there again.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let db_err = |action, source| StoreError::Db {
            path: path.clone(),
            action,
            source,
        };
        // Manual: a batch stays in the journal's write buffer until `commit`
        // says how far to push it, instead of costing a write(2) each.
        let db = Database::builder(&path)
            .manual_journal_persist(true)
            .open()
            .map_err(|e| db_err("open", e))?;
        let open = |ks: Ks| {
            db.keyspace(ks.name(), KeyspaceCreateOptions::default)
                .map_err(|e| db_err("open keyspace", e))
        };
        let keyspaces = [
            open(Ks::Sessions)?,
            open(Ks::Subscriptions)?,
            open(Ks::Messages)?,
            open(Ks::Sent)?,
            open(Ks::Incoming)?,
            open(Ks::Retained)?,
        ];
        let mut store = FjallStore {
            path,
            durability,
            db,
            keyspaces,
            sessions: HashMap::new(),
            next_num: 0,
            dirty: false,
            poisoned: false,
        };
        for (client_id, session) in store.scan_sessions()? {
            store.next_num = store.next_num.max(session.num.saturating_add(1));
            store.sessions.insert(client_id, session);
        }
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The durability mode it was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    fn ks(&self, ks: Ks) -> &Keyspace {
        &self.keyspaces[ks as usize]
    }

    fn db_err(&self, action: &'static str, source: fjall::Error) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            action,
            source,
        }
    }

    /// Every record of a keyspace, in key order.
    fn scan(&self, ks: Ks) -> impl Iterator<Item = Result<(Bytes, Bytes), StoreError>> + '_ {
        self.ks(ks).iter().map(move |guard| {
            guard
                .into_inner()
                .map(|(k, v)| (Bytes::copy_from_slice(&k), Bytes::copy_from_slice(&v)))
                .map_err(|e| self.db_err("read", e))
        })
    }

    fn scan_sessions(&self) -> Result<Vec<(MqttStr, SessionRecord)>, StoreError> {
        let mut out = Vec::new();
        let mut nums = HashMap::new();
        for kv in self.scan(Ks::Sessions) {
            let (key, value) = kv?;
            let corrupt = |reason| corrupt(Ks::Sessions, &key, reason);
            let client_id = record::decode_client_id(&key).map_err(corrupt)?;
            let session = SessionRecord::decode(&value).map_err(corrupt)?;
            if nums.insert(session.num, ()).is_some() {
                return Err(corrupt("two sessions share a session number"));
            }
            out.push((client_id, session));
        }
        Ok(out)
    }

    fn stage(&mut self, op: &StoreOp, staged: &mut Staged) -> Result<(), StoreError> {
        // Operations on a session that is not stored are no-ops, as in
        // `Recovered::apply`.
        let num = |client_id: &MqttStr| self.sessions.get(client_id).map(|s| s.num);
        match op {
            StoreOp::SessionPut {
                client_id,
                expiry_interval,
                owner,
            } => {
                let old = self.sessions.get(client_id).cloned();
                let session = SessionRecord {
                    num: match &old {
                        Some(s) => s.num,
                        None => {
                            let num = self.next_num;
                            self.next_num += 1;
                            num
                        }
                    },
                    expiry_interval: *expiry_interval,
                    owner: owner.clone(),
                };
                // Detached: a key kept for the session's lifetime must not
                // pin the whole packet it was decoded from.
                let client_id = client_id.detached();
                staged.undo.push((client_id.clone(), old));
                staged.put(
                    Ks::Sessions,
                    client_id.as_bytes().to_vec(),
                    session.encode(),
                )?;
                self.sessions.insert(client_id, session);
            }
            StoreOp::SessionDelete { client_id } => {
                if let Some(old) = self.sessions.remove(client_id) {
                    let prefix = record::session_prefix(old.num);
                    staged.undo.push((client_id.clone(), Some(old)));
                    staged.delete(Ks::Sessions, client_id.as_bytes().to_vec());
                    for ks in Ks::PER_SESSION {
                        for key in self.ks(ks).prefix(prefix) {
                            let key = key.key().map_err(|e| self.db_err("read", e))?;
                            staged.delete(ks, key.to_vec());
                        }
                        staged.delete_prefix(ks, &prefix);
                    }
                }
            }
            StoreOp::SubscriptionPut {
                client_id,
                filter,
                options,
                identifier,
            } => {
                if let Some(num) = num(client_id) {
                    staged.put(
                        Ks::Subscriptions,
                        record::session_key(num, filter.as_bytes()),
                        record::encode_subscription(options, *identifier),
                    )?;
                }
            }
            StoreOp::SubscriptionDelete { client_id, filter } => {
                if let Some(num) = num(client_id) {
                    staged.delete(
                        Ks::Subscriptions,
                        record::session_key(num, filter.as_bytes()),
                    );
                }
            }
            StoreOp::MessagePut {
                client_id,
                seq,
                subscription_ids,
                message,
            } => {
                if let Some(num) = num(client_id) {
                    let value =
                        record::encode_message(subscription_ids, message).map_err(|source| {
                            StoreError::Encode {
                                what: "queued message",
                                source,
                            }
                        })?;
                    let key = record::session_key(num, &seq.to_be_bytes());
                    // A message put again is queued afresh: not sent.
                    staged.delete(Ks::Sent, key.clone());
                    staged.put(Ks::Messages, key, value)?;
                }
            }
            StoreOp::MessageSent {
                client_id,
                seq,
                packet_id,
                released,
            } => {
                // Written without checking that the message exists: recover
                // ignores the send state of a missing message, and whatever
                // later puts or deletes that `seq` (or the session) removes
                // it. A read per send would cost more than that.
                if let Some(num) = num(client_id) {
                    staged.put(
                        Ks::Sent,
                        record::session_key(num, &seq.to_be_bytes()),
                        record::encode_sent(*packet_id, *released),
                    )?;
                }
            }
            StoreOp::MessageDelete { client_id, seq } => {
                if let Some(num) = num(client_id) {
                    let key = record::session_key(num, &seq.to_be_bytes());
                    staged.delete(Ks::Sent, key.clone());
                    staged.delete(Ks::Messages, key);
                }
            }
            StoreOp::IncomingPut {
                client_id,
                packet_id,
            } => {
                if let Some(num) = num(client_id) {
                    staged.put(
                        Ks::Incoming,
                        incoming_key(num, *packet_id),
                        record::encode_incoming(),
                    )?;
                }
            }
            StoreOp::IncomingDelete {
                client_id,
                packet_id,
            } => {
                if let Some(num) = num(client_id) {
                    staged.delete(Ks::Incoming, incoming_key(num, *packet_id));
                }
            }
            StoreOp::RetainedPut { topic, message } => {
                let value =
                    record::encode_retained(message).map_err(|source| StoreError::Encode {
                        what: "retained message",
                        source,
                    })?;
                staged.put(Ks::Retained, topic.as_bytes().to_vec(), value)?;
            }
            StoreOp::RetainedDelete { topic } => {
                staged.delete(Ks::Retained, topic.as_bytes().to_vec());
            }
            // `StoreOp` is non-exhaustive: an operation this version does not
            // know cannot be stored, and pretending it was would break the
            // promise behind the acknowledgement.
            _ => return Err(StoreError::Unsupported),
        }
        Ok(())
    }

    fn rollback(&mut self, undo: Vec<(MqttStr, Option<SessionRecord>)>) {
        for (client_id, old) in undo.into_iter().rev() {
            match old {
                Some(s) => self.sessions.insert(client_id, s),
                None => self.sessions.remove(&client_id),
            };
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.poisoned {
            Err(StoreError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn persist(&mut self, mode: PersistMode) -> Result<(), StoreError> {
        self.check()?;
        if let Err(e) = self.db.persist(mode) {
            // fjall refuses further writes too: the journal's state is unknown.
            self.poisoned = true;
            return Err(self.db_err("sync", e));
        }
        Ok(())
    }
}

fn incoming_key(num: u64, packet_id: PacketId) -> Vec<u8> {
    record::session_key(num, &packet_id.get().to_be_bytes())
}

fn corrupt(ks: Ks, key: &Bytes, reason: record::Reason) -> StoreError {
    StoreError::Corrupt {
        keyspace: ks.name(),
        key: key.clone(),
        reason,
    }
}

impl Staged {
    fn put(&mut self, ks: Ks, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        // fjall panics on longer keys; only a subscription's (filter up to
        // 65,535 bytes after an 8-byte number) can get there.
        if key.len() > MAX_KEY {
            return Err(StoreError::KeyTooLong {
                keyspace: ks.name(),
                len: key.len(),
            });
        }
        self.writes.insert((ks, key), Some(value));
        Ok(())
    }

    fn delete(&mut self, ks: Ks, key: Vec<u8>) {
        // A key too long to put was never stored: nothing to delete.
        if key.len() <= MAX_KEY {
            self.writes.insert((ks, key), None);
        }
    }

    /// Deletes what this batch put under `prefix` (the database's own keys
    /// under it are deleted by the caller).
    fn delete_prefix(&mut self, ks: Ks, prefix: &[u8]) {
        for (_, value) in self
            .writes
            .range_mut((ks, prefix.to_vec())..)
            .take_while(|((k, key), _)| *k == ks && key.starts_with(prefix))
        {
            *value = None;
        }
    }
}

impl Store for FjallStore {
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.check()?;
        let mut staged = Staged::default();
        for op in ops {
            if let Err(e) = self.stage(op, &mut staged) {
                self.rollback(staged.undo);
                return Err(e);
            }
        }
        if staged.writes.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch();
        for ((ks, key), value) in staged.writes {
            let keyspace = &self.keyspaces[ks as usize];
            match value {
                Some(value) => batch.insert(keyspace, key, value),
                None => batch.remove(keyspace, key),
            }
        }
        if let Err(e) = batch.commit() {
            self.rollback(staged.undo);
            self.poisoned = true;
            return Err(self.db_err("write", e));
        }
        self.dirty = true;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.check()?;
        if !self.dirty {
            return Ok(());
        }
        // Buffer: the journal's write buffer goes to the OS, so a process
        // crash keeps it; only an fsync survives an OS crash or power loss.
        let mode = match self.durability {
            Durability::Sync => PersistMode::SyncAll,
            Durability::Periodic => PersistMode::Buffer,
        };
        self.persist(mode)?;
        self.dirty = false;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.persist(PersistMode::SyncAll)?;
        self.dirty = false;
        Ok(())
    }

    fn recover(&mut self) -> Result<Recovered, StoreError> {
        self.check()?;
        let mut sessions: Vec<RecoveredSession> = Vec::new();
        let mut index: HashMap<u64, usize> = HashMap::new();
        for (client_id, session) in self.scan_sessions()? {
            index.insert(session.num, sessions.len());
            sessions.push(RecoveredSession {
                client_id,
                expiry_interval: session.expiry_interval,
                owner: session.owner,
                subscriptions: Vec::new(),
                messages: Vec::new(),
                incoming: Vec::new(),
            });
        }
        // Records of a session that is not stored cannot be written (a batch
        // lands whole), except send states of deleted messages: skip them.
        let session_of = |ks: Ks, key: &Bytes| -> Result<Option<(usize, Bytes)>, StoreError> {
            let (num, rest) = record::split_session_key(key).map_err(|r| corrupt(ks, key, r))?;
            Ok(index.get(&num).map(|&i| (i, key.slice_ref(rest))))
        };

        for kv in self.scan(Ks::Subscriptions) {
            let (key, value) = kv?;
            let Some((i, rest)) = session_of(Ks::Subscriptions, &key)? else {
                continue;
            };
            let c = |r| corrupt(Ks::Subscriptions, &key, r);
            let filter = record::decode_filter(&rest).map_err(c)?;
            let (options, identifier) = record::decode_subscription(&value).map_err(c)?;
            sessions[i]
                .subscriptions
                .push((filter, options, identifier));
        }

        let mut sent = HashMap::new();
        for kv in self.scan(Ks::Sent) {
            let (key, value) = kv?;
            let state = record::decode_sent(&value).map_err(|r| corrupt(Ks::Sent, &key, r))?;
            sent.insert(key, state);
        }

        for kv in self.scan(Ks::Messages) {
            let (key, value) = kv?;
            let Some((i, rest)) = session_of(Ks::Messages, &key)? else {
                continue;
            };
            let c = |r| corrupt(Ks::Messages, &key, r);
            let seq = record::decode_seq(&rest).map_err(c)?;
            let (subscription_ids, message) = record::decode_message(&value).map_err(c)?;
            sessions[i].messages.push(RecoveredMessage {
                seq,
                subscription_ids,
                message,
                sent: sent.get(&key).copied(),
            });
        }

        for kv in self.scan(Ks::Incoming) {
            let (key, value) = kv?;
            let Some((i, rest)) = session_of(Ks::Incoming, &key)? else {
                continue;
            };
            let c = |r| corrupt(Ks::Incoming, &key, r);
            let packet_id = record::decode_packet_id(&rest).map_err(c)?;
            record::decode_incoming(&value).map_err(c)?;
            sessions[i].incoming.push(packet_id);
        }

        let mut retained = Vec::new();
        for kv in self.scan(Ks::Retained) {
            let (key, value) = kv?;
            let c = |r| corrupt(Ks::Retained, &key, r);
            let topic = record::decode_topic(&key).map_err(c)?;
            retained.push((topic, record::decode_retained(&value).map_err(c)?));
        }
        Ok(Recovered { sessions, retained })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_core::broker::StoredMessage;
    use roost_core::codec::{PublishProperties, QoS};
    use roost_core::topic::{TopicFilter, TopicName};

    fn session_put(id: &'static str) -> StoreOp {
        StoreOp::SessionPut {
            client_id: MqttStr::from_static(id),
            expiry_interval: 1,
            owner: None,
        }
    }

    #[test]
    fn a_refused_batch_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FjallStore::open(dir.path(), Durability::Sync).unwrap();
        store.apply(&[session_put("kept")]).unwrap();

        // 8 bytes of session number + 65,530 bytes of filter: too long a key.
        let filter = "a".repeat(65_530);
        let err = store
            .apply(&[
                session_put("new"),
                StoreOp::SessionDelete {
                    client_id: MqttStr::from_static("kept"),
                },
                StoreOp::SubscriptionPut {
                    client_id: MqttStr::from_static("new"),
                    filter: TopicFilter::copy_from_str(&filter).unwrap(),
                    options: Default::default(),
                    identifier: None,
                },
            ])
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::KeyTooLong {
                keyspace: "subscriptions",
                len: 65_538
            }
        ));

        let too_large = StoredMessage {
            topic: TopicName::from_static("t"),
            payload: Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: PublishProperties {
                correlation_data: Some(Bytes::from(vec![0; 70_000])),
                ..PublishProperties::default()
            },
        };
        let err = store
            .apply(&[
                session_put("new"),
                StoreOp::RetainedPut {
                    topic: TopicName::from_static("t"),
                    message: too_large,
                },
            ])
            .unwrap_err();
        assert!(matches!(err, StoreError::Encode { .. }), "{err}");

        // Neither batch happened, on disk or in the session table.
        store.apply(&[session_put("after")]).unwrap();
        store.commit().unwrap();
        let ids: Vec<_> = store
            .recover()
            .unwrap()
            .sessions
            .into_iter()
            .map(|s| s.client_id)
            .collect();
        assert_eq!(ids, ["after", "kept"]);
        assert!(!store.sessions.contains_key("new".as_bytes()));
    }

    #[test]
    fn keyspaces_are_opened_in_index_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path(), Durability::Sync).unwrap();
        for ks in Ks::ALL {
            assert_eq!(&**store.ks(ks).name(), ks.name());
        }
    }
}
