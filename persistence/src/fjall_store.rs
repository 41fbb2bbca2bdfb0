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
//! | `meta` | `applied` | number of the last batch written (big-endian `u64`) |
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
use crate::{init, journal};
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use roost_core::MqttStr;
use roost_core::broker::{Recovered, RecoveredMessage, RecoveredSession, StoreOp};
use roost_core::codec::PacketId;
use std::collections::{BTreeMap, HashMap, VecDeque};
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
    /// Bookkeeping of the store itself: the number of the last batch.
    Meta = 6,
}

impl Ks {
    #[cfg(test)]
    const ALL: [Ks; 7] = [
        Ks::Sessions,
        Ks::Subscriptions,
        Ks::Messages,
        Ks::Sent,
        Ks::Incoming,
        Ks::Retained,
        Ks::Meta,
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
            Ks::Meta => "meta",
        }
    }
}

/// The most fjall allows in a key.
const MAX_KEY: usize = u16::MAX as usize;

/// How much of a keyspace's writes fjall keeps in memory before it writes
/// them to a table (its default is 64 MiB). What is in a memtable is also
/// what a start replays from the journal into memory, so this bounds the
/// memory and the replay work a restart spends on history: after a crash,
/// only writes newer than the last table are inserted again. Set when a
/// keyspace is created: a store created with an older roost keeps fjall's
/// default.
const MAX_MEMTABLE: u64 = 8 * 1024 * 1024;

/// Key of the batch counter in the `meta` keyspace.
const APPLIED_KEY: &[u8] = b"applied";

/// How much a store keeps in memory, by default, of batches it could not
/// write while its disk refused writes.
pub const DEFAULT_BACKLOG_LIMIT: usize = 64 * 1024 * 1024;

/// What [`FjallStore::open_with`] does when fjall's journal is damaged:
/// unreadable bytes with intact batches after them (see
/// [`StoreError::JournalDamaged`]). A torn last batch, which any crash may
/// leave, is dropped in both modes, as fjall always does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Refuse to open: [`StoreError::JournalDamaged`] names the file and
    /// the offset. Nothing is changed on disk.
    #[default]
    Strict,
    /// Cut the journal at the start of the first damaged batch, delete the
    /// journal files after it, and open what is left; the
    /// [`RecoveryReport`] says what was dropped. Everything written after
    /// the damage is lost, including acknowledged messages; what survives
    /// is a prefix of the batches, as after a crash.
    Truncate,
}

/// What opening a [`FjallStore`] found and did: log it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// A torn last batch (a write a crash cut short), dropped as fjall
    /// always does: the journal file, the offset, the bytes dropped.
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    /// What [`Recovery::Truncate`] dropped from a damaged journal.
    pub truncated: Option<Truncated>,
    /// The directory held only an unfinished first start (an empty or
    /// missing `version` file and no data, as a full disk leaves it): it
    /// was cleared and the store created afresh.
    pub reinitialized: bool,
}

/// What [`Recovery::Truncate`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Truncated {
    /// The journal file with the damage.
    pub file: PathBuf,
    /// Where it was cut: the start of the first damaged batch.
    pub offset: u64,
    /// What was wrong there.
    pub reason: &'static str,
    /// Bytes dropped from that file (up to its last non-zero byte).
    pub bytes: u64,
    /// Intact batches dropped with it (after the damage, and in the later
    /// journal files), and the records they held.
    pub batches: u64,
    /// Records of those batches.
    pub records: u64,
    /// Later journal files deleted.
    pub removed: Vec<PathBuf>,
}

impl RecoveryReport {
    /// Whether opening changed or dropped anything worth telling.
    pub fn is_clean(&self) -> bool {
        self.torn_tail.is_none() && self.truncated.is_none() && !self.reinitialized
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.reinitialized {
            parts.push("cleared an unfinished first start and created the store afresh".to_owned());
        }
        if let Some((file, offset, bytes)) = &self.torn_tail {
            parts.push(format!(
                "dropped a torn last batch of {bytes} bytes at byte {offset} of {}",
                file.display()
            ));
        }
        if let Some(t) = &self.truncated {
            let mut text = format!(
                "journal {} was damaged at byte {} ({}): cut there, dropping {} bytes, {} intact batches ({} records) after the damage",
                t.file.display(),
                t.offset,
                t.reason,
                t.bytes,
                t.batches,
                t.records,
            );
            for path in &t.removed {
                text.push_str(&format!(", and deleted {}", path.display()));
            }
            parts.push(text);
        }
        if parts.is_empty() {
            f.write_str("nothing dropped")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// One batch of writes as given to fjall: keyspace, key, value (`None`
/// deletes).
type Writes = Vec<(Ks, Vec<u8>, Option<Vec<u8>>)>;

/// A store on fjall: see the crate docs for what each [`Durability`]
/// promises.
///
/// It keeps in memory the client identifier and number of every stored
/// session (the engine holds every session in memory anyway) and nothing
/// else; messages stay on disk until [`Store::recover`].
///
/// # When the disk refuses writes
///
/// fjall refuses every write after a failed one (a full disk, an I/O
/// error), so the store then reopens the database, on the next
/// [`Store::commit`] or [`Store::flush`], rather than giving up. Until
/// that succeeds, [`Store::apply`] keeps each batch in memory, fails it at
/// once ([`StoreError::Interrupted`]) and touches no disk. Every batch
/// carries its number into the database, so after the reopen the store
/// knows which of the kept batches reached the journal and writes the
/// others again, in order: what the engine emitted all lands, once, in
/// order, when the disk accepts writes again. Kept batches are bounded
/// ([`FjallStore::set_backlog_limit`]); beyond the bound a batch is
/// dropped ([`StoreError::BacklogFull`]) and the store no longer holds
/// everything the engine emitted.
///
/// Dropping it without further calls is safe: what was committed is on
/// disk (under [`Durability::Periodic`], fjall syncs on drop too).
pub struct FjallStore {
    path: PathBuf,
    durability: Durability,
    /// The database; `None` only while a reopen after a failed write has
    /// itself failed.
    open: Option<Open>,
    /// Every stored session, staged batches included.
    sessions: HashMap<MqttStr, SessionRecord>,
    next_num: u64,
    /// Whether a batch was written since the last commit.
    dirty: bool,
    /// Set by a failed write or sync: the database refuses writes until
    /// reopened.
    interrupted: bool,
    /// The number of the last batch applied (written into `meta` with it).
    applied: u64,
    /// Batches applied since the last successful commit, by number, to
    /// write again if they did not reach the journal.
    backlog: VecDeque<(u64, Writes)>,
    backlog_bytes: usize,
    backlog_limit: usize,
    report: RecoveryReport,
}

impl fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FjallStore")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .field("sessions", &self.sessions.len())
            .field("interrupted", &self.interrupted)
            .field("backlog", &self.backlog.len())
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

/// A database and its keyspaces, in [`Ks`] order.
struct Open {
    db: Database,
    keyspaces: [Keyspace; 7],
}

fn open_db(path: &Path) -> Result<Open, StoreError> {
    let db_err = |action, source| StoreError::Db {
        path: path.to_path_buf(),
        action,
        source,
    };
    // Manual: a batch stays in the journal's write buffer until `commit`
    // says how far to push it, instead of costing a write(2) each.
    // The smallest journal budget fjall allows: past it, fjall flushes the
    // keyspaces that hold the oldest sealed journal back (default 512 MiB),
    // so a start replays at most about two journals' worth.
    let db = Database::builder(path)
        .manual_journal_persist(true)
        .max_journaling_size(64 * 1024 * 1024)
        .open()
        .map_err(|e| db_err("open", e))?;
    let open = |ks: Ks| {
        db.keyspace(ks.name(), || {
            KeyspaceCreateOptions::default().max_memtable_size(MAX_MEMTABLE)
        })
        .map_err(|e| db_err("open keyspace", e))
    };
    let keyspaces = [
        open(Ks::Sessions)?,
        open(Ks::Subscriptions)?,
        open(Ks::Messages)?,
        open(Ks::Sent)?,
        open(Ks::Incoming)?,
        open(Ks::Retained)?,
        open(Ks::Meta)?,
    ];
    Ok(Open { db, keyspaces })
}

impl FjallStore {
    /// Opens (or creates) the store in directory `path`, replaying fjall's
    /// journal: everything committed before a crash is there again. A
    /// damaged journal is refused ([`Recovery::Strict`]); see
    /// [`FjallStore::open_with`].
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        Self::open_with(path, durability, Recovery::Strict)
    }

    /// [`FjallStore::open`], saying what to do with a damaged journal.
    /// What opening dropped or repaired is in [`FjallStore::report`].
    ///
    /// A first start that fails part-way (a full disk) removes what it
    /// created, and a directory left with only such an unfinished start
    /// (an empty or missing `version` file, no data) is cleared and
    /// created afresh; one whose `version` file is damaged but that holds
    /// data is refused ([`StoreError::Unrecognized`]).
    pub fn open_with(
        path: impl AsRef<Path>,
        durability: Durability,
        recovery: Recovery,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut report = RecoveryReport::default();
        let existed = path.exists();
        let fresh = init::prepare(&path, &mut report)?;
        let active = if fresh {
            None
        } else {
            check_journal(&path, recovery, &mut report)?
        };
        if let Some((active, intact_end)) = active.filter(|(_, end)| *end >= SEAL_AT) {
            // Only saves the next start work: on a full disk the store
            // still opens as it would have. Each step leaves a journal
            // fjall reads as before (the cut drops only what fjall drops;
            // an empty `N+1.jnl` is an empty active journal).
            let _ = seal_journal(&path, &active, intact_end);
        }
        let open = match open_db(&path) {
            Ok(opened) => opened,
            Err(e) => {
                if fresh {
                    // No half-made store left behind for the next start.
                    init::clear(&path, !existed);
                }
                return Err(e);
            }
        };
        let mut store = FjallStore {
            path,
            durability,
            open: Some(open),
            sessions: HashMap::new(),
            next_num: 0,
            dirty: false,
            interrupted: false,
            applied: 0,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            backlog_limit: DEFAULT_BACKLOG_LIMIT,
            report,
        };
        store.applied = store.read_applied()?;
        store.load_sessions()?;
        Ok(store)
    }

    /// Repairs the store at `path` as [`Recovery::Truncate`] does, without
    /// keeping it open: what it dropped.
    pub fn repair(path: impl AsRef<Path>) -> Result<RecoveryReport, StoreError> {
        let store = Self::open_with(path, Durability::Sync, Recovery::Truncate)?;
        Ok(store.report.clone())
    }

    /// What opening found and did (nothing, usually).
    pub fn report(&self) -> &RecoveryReport {
        &self.report
    }

    /// How many bytes of batches the store keeps in memory while its disk
    /// refuses writes ([`DEFAULT_BACKLOG_LIMIT`] unless set).
    pub fn set_backlog_limit(&mut self, bytes: usize) {
        self.backlog_limit = bytes;
    }

    /// Whether an earlier write failed and the database waits to be
    /// reopened (by the next [`Store::commit`] or [`Store::flush`]).
    pub fn is_interrupted(&self) -> bool {
        self.interrupted
    }

    /// Batches kept in memory, not yet known to be committed.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    fn read_applied(&self) -> Result<u64, StoreError> {
        let value = self
            .ks(Ks::Meta)?
            .get(APPLIED_KEY)
            .map_err(|e| self.db_err("read", e))?;
        Ok(value
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map_or(0, u64::from_be_bytes))
    }

    fn load_sessions(&mut self) -> Result<(), StoreError> {
        self.sessions.clear();
        for (client_id, session) in self.scan_sessions()? {
            self.next_num = self.next_num.max(session.num.saturating_add(1));
            self.sessions.insert(client_id, session);
        }
        Ok(())
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The durability mode it was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    fn open_ref(&self) -> Result<&Open, StoreError> {
        self.open.as_ref().ok_or(StoreError::Interrupted {
            kept: self.backlog.len(),
        })
    }

    fn ks(&self, ks: Ks) -> Result<&Keyspace, StoreError> {
        Ok(&self.open_ref()?.keyspaces[ks as usize])
    }

    fn db_err(&self, action: &'static str, source: fjall::Error) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            action,
            source,
        }
    }

    /// Every record of a keyspace, in key order.
    fn scan(
        &self,
        ks: Ks,
    ) -> Result<impl Iterator<Item = Result<(Bytes, Bytes), StoreError>> + '_, StoreError> {
        Ok(self.ks(ks)?.iter().map(move |guard| {
            guard
                .into_inner()
                .map(|(k, v)| (Bytes::copy_from_slice(&k), Bytes::copy_from_slice(&v)))
                .map_err(|e| self.db_err("read", e))
        }))
    }

    fn scan_sessions(&self) -> Result<Vec<(MqttStr, SessionRecord)>, StoreError> {
        let mut out = Vec::new();
        let mut nums = HashMap::new();
        for kv in self.scan(Ks::Sessions)? {
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
                        // Without a database (a reopen failed), the
                        // session's records stay behind: recover skips
                        // records of a session that is not stored, and
                        // session numbers are never reused.
                        if let Ok(keyspace) = self.ks(ks) {
                            for key in keyspace.prefix(prefix) {
                                let key = key.key().map_err(|e| self.db_err("read", e))?;
                                staged.delete(ks, key.to_vec());
                            }
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

    fn persist(&mut self, mode: PersistMode) -> Result<(), StoreError> {
        let result = self.open_ref()?.db.persist(mode);
        if let Err(e) = result {
            // fjall refuses further writes until the database is reopened.
            self.interrupted = true;
            return Err(self.db_err("sync", e));
        }
        Ok(())
    }

    /// Writes one batch, with its number, as one fjall batch.
    fn write(&self, number: u64, writes: &Writes) -> Result<(), StoreError> {
        let open = self.open_ref()?;
        let mut batch = open.db.batch();
        for (ks, key, value) in writes {
            let keyspace = &open.keyspaces[*ks as usize];
            match value {
                Some(value) => batch.insert(keyspace, key.as_slice(), value.as_slice()),
                None => batch.remove(keyspace, key.as_slice()),
            }
        }
        batch.insert(
            &open.keyspaces[Ks::Meta as usize],
            APPLIED_KEY,
            number.to_be_bytes(),
        );
        batch.commit().map_err(|e| self.db_err("write", e))
    }

    /// After a failed write: lets go of the database, opens it again
    /// (fjall replays its journal, dropping a batch cut short), and writes
    /// again the kept batches that did not reach the journal.
    fn reopen(&mut self) -> Result<(), StoreError> {
        // First let go: the database holds its directory's lock. Dropping
        // it pushes what fjall still buffers, which lands whole or as a
        // torn tail that the reopen drops.
        self.open = None;
        let mut report = RecoveryReport::default();
        check_journal(&self.path, Recovery::Strict, &mut report)?;
        self.open = Some(open_db(&self.path)?);
        let on_disk = self.read_applied()?;
        while let Some((number, writes)) = self.backlog.front() {
            if *number > on_disk {
                break;
            }
            self.backlog_bytes -= writes_size(writes);
            self.backlog.pop_front();
        }
        for (number, writes) in &self.backlog {
            self.write(*number, writes)?;
        }
        self.load_sessions()?;
        self.interrupted = false;
        self.dirty = true;
        Ok(())
    }

    fn keep(&mut self, number: u64, writes: Writes) {
        self.backlog_bytes += writes_size(&writes);
        self.backlog.push_back((number, writes));
    }

    /// Everything applied is committed: forget the kept batches.
    fn committed(&mut self) {
        self.dirty = false;
        self.backlog.clear();
        self.backlog_bytes = 0;
    }
}

/// Roughly what a kept batch costs in memory.
fn writes_size(writes: &Writes) -> usize {
    writes
        .iter()
        .map(|(_, k, v)| 32 + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum()
}

/// Reads the journal before fjall replays it: a damaged one is refused or
/// cut, as `recovery` says; a torn tail is noted in `report`.
///
/// Returns the journal fjall will append to (the last file) and where its
/// intact batches end, if there is one.
fn check_journal(
    path: &Path,
    recovery: Recovery,
    report: &mut RecoveryReport,
) -> Result<Option<(PathBuf, u64)>, StoreError> {
    let io_err = |source| StoreError::Io {
        path: path.to_path_buf(),
        action: "read the journal",
        source,
    };
    let verdict = journal::check(path).map_err(io_err)?;
    let Some(i) = verdict.damaged else {
        if let Some(f) = verdict.files.iter().rev().find(|f| f.problem.is_some()) {
            report.torn_tail = Some((f.path.clone(), f.intact_end, f.data_end - f.intact_end));
        }
        return Ok(verdict.files.last().map(|f| (f.path.clone(), f.intact_end)));
    };
    let f = &verdict.files[i];
    let problem = f.problem.expect("a damaged file has a problem");
    let later = &verdict.files[i + 1..];
    let batches = f.batches_after + later.iter().map(|g| g.batches_total()).sum::<u64>();
    let records = f.records_after + later.iter().map(|g| g.records_total()).sum::<u64>();
    if recovery == Recovery::Strict {
        return Err(StoreError::JournalDamaged {
            file: f.path.clone(),
            offset: f.intact_end,
            reason: problem.reason,
            batches_after: batches,
            records_after: records,
        });
    }
    let cut = |source| StoreError::Io {
        path: f.path.clone(),
        action: "truncate the journal",
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&f.path)
        .map_err(cut)?;
    file.set_len(f.intact_end).map_err(cut)?;
    file.sync_all().map_err(cut)?;
    let mut removed = Vec::new();
    for g in later {
        std::fs::remove_file(&g.path).map_err(|source| StoreError::Io {
            path: g.path.clone(),
            action: "delete a journal file after the damage",
            source,
        })?;
        removed.push(g.path.clone());
    }
    init::sync_dir(path).map_err(|source| StoreError::Io {
        path: path.to_path_buf(),
        action: "sync the directory",
        source,
    })?;
    report.truncated = Some(Truncated {
        file: f.path.clone(),
        offset: f.intact_end,
        reason: problem.reason,
        bytes: f.data_end.saturating_sub(f.intact_end)
            + later.iter().map(|g| g.data_end).sum::<u64>(),
        batches,
        records,
        removed,
    });
    Ok(Some((f.path.clone(), f.intact_end)))
}

/// The active journal holds at least this much when a start seals it (see
/// [`seal_journal`]); below it, the file is kept and appended to.
const SEAL_AT: u64 = 1024 * 1024;

/// Makes the journal a start replays the last one fjall writes to before
/// the next start, so that each start replays what was written since the
/// previous one (and what was not yet written to tables), not everything
/// since fjall last rotated its journal.
///
/// fjall 3.1 starts a new journal file only when a flush finds the active
/// one past 64 MB, and a start replays (and [`check_journal`] reads) all of
/// it: restart work grew with the write history, acknowledged and deleted
/// messages included, up to 64 MB. fjall treats the highest-numbered
/// `N.jnl` as the active journal and every other as sealed: it replays a
/// sealed journal into memtables that it flushes to tables, then deletes
/// the journal. So before fjall opens, the active journal is cut at the end
/// of its intact batches (the torn tail a crash may leave, which fjall
/// drops anyway: a sealed journal with a torn tail followed by a later
/// file would read as damage) and an empty `N+1.jnl` is created, as fjall's
/// own rotation does. The replay costs this start what it cost before;
/// the next start no longer pays for it again.
fn seal_journal(dir: &Path, active: &Path, intact_end: u64) -> Result<(), StoreError> {
    let io_err = |path: &Path, action| {
        let path = path.to_path_buf();
        move |source| StoreError::Io {
            path,
            action,
            source,
        }
    };
    let Some(id) = active
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".jnl"))
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return Ok(());
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(active)
        .map_err(io_err(active, "truncate the journal"))?;
    file.set_len(intact_end)
        .map_err(io_err(active, "truncate the journal"))?;
    file.sync_all()
        .map_err(io_err(active, "truncate the journal"))?;
    let next = dir.join(format!("{}.jnl", id + 1));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&next)
        .map_err(io_err(&next, "start a new journal"))?;
    file.sync_all()
        .map_err(io_err(&next, "start a new journal"))?;
    init::sync_dir(dir).map_err(io_err(dir, "sync the directory"))?;
    Ok(())
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
        let writes: Writes = staged
            .writes
            .into_iter()
            .map(|((ks, key), value)| (ks, key, value))
            .collect();
        if self.interrupted {
            if self.backlog_bytes + writes_size(&writes) > self.backlog_limit {
                self.rollback(staged.undo);
                return Err(StoreError::BacklogFull {
                    limit: self.backlog_limit,
                });
            }
            self.applied += 1;
            self.keep(self.applied, writes);
            return Err(StoreError::Interrupted {
                kept: self.backlog.len(),
            });
        }
        let number = self.applied + 1;
        let result = self.write(number, &writes);
        // Kept either way: written, it waits for the commit; refused, it is
        // written again after the reopen (and `sessions` already counts it).
        self.applied = number;
        self.keep(number, writes);
        match result {
            Ok(()) => {
                self.dirty = true;
                Ok(())
            }
            Err(e) => {
                self.interrupted = true;
                Err(e)
            }
        }
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if self.interrupted {
            self.reopen()?;
        }
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
        self.committed();
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.interrupted {
            self.reopen()?;
        }
        self.persist(PersistMode::SyncAll)?;
        self.committed();
        Ok(())
    }

    fn recover(&mut self) -> Result<Recovered, StoreError> {
        if self.interrupted {
            self.reopen()?;
        }
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

        for kv in self.scan(Ks::Subscriptions)? {
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
        for kv in self.scan(Ks::Sent)? {
            let (key, value) = kv?;
            let state = record::decode_sent(&value).map_err(|r| corrupt(Ks::Sent, &key, r))?;
            sent.insert(key, state);
        }

        for kv in self.scan(Ks::Messages)? {
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

        for kv in self.scan(Ks::Incoming)? {
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
        for kv in self.scan(Ks::Retained)? {
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
            assert_eq!(&**store.ks(ks).unwrap().name(), ks.name());
        }
    }

    /// A start replays into memory only what the last memtable had not
    /// written to a table: with fjall's default (64 MiB a keyspace) a
    /// history of 40 MB of overwritten retained messages came back whole,
    /// in memory, at every start; now at most [`MAX_MEMTABLE`] of it.
    #[test]
    fn a_restart_holds_at_most_one_memtable_of_history_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FjallStore::open(dir.path(), Durability::Periodic).unwrap();
        let payload = Bytes::from(vec![b'x'; 1_000]);
        for round in 0..400u32 {
            let ops: Vec<StoreOp> = (0..100u32)
                .map(|i| {
                    let topic =
                        TopicName::copy_from_str(&format!("r/{}", (round * 100 + i) % 1_000))
                            .unwrap();
                    StoreOp::RetainedPut {
                        topic: topic.clone(),
                        message: StoredMessage {
                            topic,
                            payload: payload.clone(),
                            qos: QoS::AtLeastOnce,
                            retain: true,
                            properties: PublishProperties::default(),
                        },
                    }
                })
                .collect();
            store.apply(&ops).unwrap();
            store.commit().unwrap();
        }
        store.flush().unwrap();
        // Let the flushes the writes started finish (fjall's workers), so
        // what is left in memory is the active memtable only.
        let db = &store.open.as_ref().unwrap().db;
        for _ in 0..3_000 {
            if db.outstanding_flushes() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(store);
        let mut store = FjallStore::open(dir.path(), Durability::Periodic).unwrap();
        let in_memory = store.open.as_ref().unwrap().db.write_buffer_size();
        // 40 MB written; a memtable's worth (and a little) may come back.
        const { assert!(MAX_MEMTABLE <= 8 << 20) };
        assert!(
            in_memory <= 9 << 20,
            "{in_memory} bytes of a 40 MB history replayed into memory"
        );
        assert_eq!(store.recover().unwrap().retained.len(), 1_000);
    }
}
