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
    /// An earlier write failed part-way, so what the database holds is
    /// unknown: the store refuses further work. Reopen it to recover.
    Poisoned,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Db {
                path,
                action,
                source,
            } => write!(f, "store at {}: {action} failed: {source}", path.display()),
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
            StoreError::Poisoned => {
                f.write_str("an earlier write failed; the store must be reopened")
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Db { source, .. } => Some(source),
            StoreError::Encode { source, .. } => Some(source),
            _ => None,
        }
    }
}
