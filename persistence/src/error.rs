//! What can go wrong in a store.

use bytes::Bytes;
use roost_core::codec::EncodeError;
use std::fmt;
use std::path::PathBuf;

/// Why a store operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The database at `path` failed while doing `action` (open, write,
    /// sync, read).
    Db {
        /// The database directory.
        path: PathBuf,
        /// What the store was doing.
        action: &'static str,
        /// What the database said.
        source: fjall::Error,
    },
    /// A stored record cannot be decoded: the database holds something this
    /// version did not write, or the disk returned damaged bytes.
    Corrupt {
        /// The group of records (sessions, messages, …) it belongs to.
        keyspace: &'static str,
        /// Its key, as stored.
        key: Bytes,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A message cannot be encoded as a record (it would not fit a PUBLISH
    /// packet).
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why it does not fit.
        source: EncodeError,
    },
    /// A key would exceed the 65,535 bytes the database allows (a topic
    /// filter that long cannot be stored).
    KeyTooLong {
        /// The group of records the key was for.
        keyspace: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The operation is of a kind this version of the store cannot keep
    /// (the engine is newer than the store).
    Unsupported,
    /// The journal is damaged: bytes that cannot be read with intact
    /// batches after them, so replaying it would silently drop those (a
    /// torn last batch, which a crash leaves, is not this). Opening with
    /// `Recovery::Truncate` cuts the journal at `offset` and drops them.
    JournalDamaged {
        /// The journal file.
        file: PathBuf,
        /// Where the first damaged batch starts.
        offset: u64,
        /// What is wrong there.
        reason: &'static str,
        /// Intact batches after the damage (in this file and later ones).
        batches_after: u64,
        /// Records in those batches.
        records_after: u64,
    },
    /// The directory holds fjall files that are not a whole database (no
    /// readable `version` file) but do hold data, so the store will not
    /// guess: move the directory aside, or restore its `version` file.
    Unrecognized {
        /// The directory.
        path: PathBuf,
        /// What is missing or wrong.
        what: &'static str,
    },
    /// A file operation of the store's own failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the store was doing.
        action: &'static str,
        /// What the system said.
        source: std::io::Error,
    },
    /// An earlier write failed (a full disk, an I/O error) and the
    /// database has not been reopened yet: the batch is kept in memory and
    /// written, in order, once a [`Store::commit`](crate::Store::commit)
    /// or [`Store::flush`](crate::Store::flush) succeeds. It is not durable
    /// now.
    Interrupted {
        /// Batches kept in memory, this one included.
        kept: usize,
    },
    /// As [`StoreError::Interrupted`], but the batches kept in memory
    /// already reach the limit: this batch is dropped and will never be
    /// written, so the store no longer holds everything the broker emitted
    /// (a restart may lose subscriptions and queued messages, or deliver
    /// acknowledged ones again).
    BacklogFull {
        /// The limit, in bytes.
        limit: usize,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Db {
                path,
                action,
                source,
            } => write!(
                f,
                "store at {}: {action} failed: {}",
                path.display(),
                DbError(source)
            ),
            StoreError::Corrupt {
                keyspace,
                key,
                reason,
            } => write!(f, "corrupt record in {keyspace} at key {key:?}: {reason}"),
            StoreError::Encode { what, source } => write!(f, "cannot store {what}: {source}"),
            StoreError::KeyTooLong { keyspace, len } => write!(
                f,
                "key of {len} bytes in {keyspace} exceeds the 65535 bytes the database allows"
            ),
            StoreError::Unsupported => {
                f.write_str("storage operation not supported by this store version")
            }
            StoreError::JournalDamaged {
                file,
                offset,
                reason,
                batches_after,
                records_after,
            } => write!(
                f,
                "journal {} is damaged at byte {offset} ({reason}), and {batches_after} intact \
                 batches ({records_after} records) follow the damage; refusing to open rather \
                 than drop them silently. To keep what precedes the damage and drop the rest, \
                 repair the store (`roost store repair --data-dir DIR`, or start with \
                 --recover-truncate)",
                file.display()
            ),
            StoreError::Unrecognized { path, what } => write!(
                f,
                "store at {}: {what}, but the directory holds data; refusing to guess whether \
                 it is a database. Move the directory aside to start afresh",
                path.display()
            ),
            StoreError::Io {
                path,
                action,
                source,
            } => write!(f, "store at {}: cannot {action}: {source}", path.display()),
            StoreError::Interrupted { kept } => write!(
                f,
                "an earlier write failed; {kept} batches wait in memory for the disk to accept \
                 writes again"
            ),
            StoreError::BacklogFull { limit } => write!(
                f,
                "an earlier write failed and the {limit} bytes of batches waiting in memory are \
                 full: a batch was dropped, and the store no longer holds everything the broker \
                 emitted"
            ),
        }
    }
}

/// fjall's own messages are its Rust debug output (`FjallError: Locked`,
/// `Io(Os { code: 20, .. })`): these are words for an operator.
struct DbError<'a>(&'a fjall::Error);

impl fmt::Display for DbError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            fjall::Error::Locked => {
                f.write_str("the database is locked: another process (another roost?) has it open")
            }
            fjall::Error::Io(e) => write!(f, "{e}"),
            fjall::Error::Storage(e) => storage(f, e),
            fjall::Error::JournalRecovery(_) => f.write_str("its journal cannot be recovered"),
            fjall::Error::InvalidVersion(_) => {
                f.write_str("written by an unknown version of the database format")
            }
            fjall::Error::Decompress(_) => f.write_str("a block cannot be decompressed"),
            fjall::Error::InvalidTrailer | fjall::Error::InvalidTag(_) => {
                f.write_str("damaged data (an unreadable block)")
            }
            fjall::Error::Poisoned => f.write_str(
                "an earlier write or sync failed (a full or failing disk); restart to recover",
            ),
            fjall::Error::KeyspaceDeleted => f.write_str("a keyspace was deleted"),
            fjall::Error::Unrecoverable => {
                f.write_str("the database cannot be recovered: files it needs are missing")
            }
            _ => f.write_str("the database failed"),
        }
    }
}

fn storage(f: &mut fmt::Formatter<'_>, e: &fjall::LsmError) -> fmt::Result {
    match e {
        fjall::LsmError::Io(e) => write!(f, "{e}"),
        fjall::LsmError::ChecksumMismatch { .. } => {
            f.write_str("damaged data (a block's checksum does not match)")
        }
        fjall::LsmError::Unrecoverable => {
            f.write_str("the database cannot be recovered: files it needs are missing")
        }
        fjall::LsmError::InvalidVersion(_) => {
            f.write_str("written by an unknown version of the database format")
        }
        fjall::LsmError::Decompress(_) => f.write_str("a block cannot be decompressed"),
        _ => f.write_str("damaged data (an unreadable block)"),
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Db { source, .. } => Some(source),
            StoreError::Encode { source, .. } => Some(source),
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
