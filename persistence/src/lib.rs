//! Storage for the roost broker: the [`Store`] trait that applies the
//! engine's storage operations, an in-memory store ([`MemoryStore`]) and a
//! crash-safe store on fjall ([`FjallStore`]).
//!
//! # What it owns
//!
//! The engine (`roost-core`) decides *what* must survive a restart and says
//! so as batches of [`StoreOp`]s; it never touches a disk. This crate decides
//! *how*: record layout, encoding, fsync policy, and loading everything back
//! as a [`Recovered`] for `Broker::restore`. A store is blocking and
//! runtime-neutral; a runtime calls it from a dedicated thread.
//!
//! # Data flow
//!
//! ```text
//!  engine ── Action::Store { id, ops } ──► runtime ── apply(ops) ──► Store (staged)
//!                                            │                         │
//!                                            │ nothing more to apply   │
//!                                            ├────── commit() ────────►│ one fsync
//!  engine ◄── handle_store_done(last id) ────┘◄──────── Ok ────────────┘
//!
//!  start:  Store::recover() ──► Recovered ──► Broker::restore
//! ```
//!
//! When `apply` or `commit` fails (a full disk), the runtime reports the
//! last batch of that group to the engine with `handle_store_failed`
//! instead, and calls `commit` again later (its retry schedule): a
//! [`FjallStore`] keeps what it could not write and writes it, in order,
//! once the disk accepts writes, without a restart.
//!
//! At open, a [`FjallStore`] reads fjall's journal before fjall replays it
//! and refuses a damaged one ([`StoreError::JournalDamaged`], naming the
//! file and offset) unless opened with [`Recovery::Truncate`]; the
//! [`RecoveryReport`] says what was dropped.
//!
//! A store confirms batches **in the order they were applied**: a successful
//! [`Store::commit`] makes durable every batch applied before it, so the
//! runtime confirms the id of the last batch it applied, which confirms
//! every earlier one to the engine too. The store never needs the engine's
//! ids; the runtime keeps the last one.
//!
//! # Durability
//!
//! | store | `commit` returns | a process crash loses | a power loss / OS crash loses |
//! |---|---|---|---|
//! | [`MemoryStore`] | at once | everything | everything |
//! | [`FjallStore`], [`Durability::Sync`] | after one fsync for every staged batch (group commit) | only uncommitted batches | only uncommitted batches |
//! | [`FjallStore`], [`Durability::Periodic`] | after handing the batches to the OS, no fsync | only uncommitted batches | what was committed since the last [`Store::flush`] (one flush interval) |
//!
//! Under `Sync` the engine sends PUBACK/PUBREC only once the message is on
//! disk; many batches staged while the previous fsync ran share the next one,
//! so the cost of an fsync is spread over everything that arrived meanwhile.
//! Under `Periodic` the runtime calls [`Store::flush`] every flush interval;
//! acknowledgements no longer wait for the disk, at the price of that window.
//!
//! An uncommitted batch may or may not survive a crash, but what survives is
//! always a prefix of the applied batches, each whole or not at all.
//!
//! # Example
//!
//! ```
//! use roost_core::MqttStr;
//! use roost_core::broker::StoreOp;
//! use roost_persistence::{MemoryStore, Store};
//!
//! let mut store = MemoryStore::new();
//! let client_id = MqttStr::from_static("sensor-1");
//! // One batch, as one Action::Store carries it.
//! store.apply(&[StoreOp::SessionPut { client_id, expiry_interval: 3600, owner: None }])?;
//! store.commit()?; // now confirm the batch's id to the engine
//! let recovered = store.recover()?;
//! assert_eq!(recovered.sessions.len(), 1);
//! # Ok::<(), roost_persistence::StoreError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod fjall_store;
mod init;
mod journal;
mod memory;
mod record;

pub use error::StoreError;
pub use fjall_store::{
    DEFAULT_BACKLOG_LIMIT, Durability, FjallStore, Recovery, RecoveryReport, Truncated,
};
pub use memory::MemoryStore;
pub use roost_core::broker::{Recovered, StoreOp};

/// Where the engine's storage operations go.
///
/// Blocking and runtime-neutral: call it from a thread of its own, never
/// from an async task. The meaning of every operation is
/// [`Recovered::apply`]: applying batches to a store and then calling
/// [`recover`](Store::recover) gives what applying the same operations to
/// `Recovered::default()` gives, up to order (sessions come sorted by client
/// identifier, their subscriptions by filter, their messages by `seq`, their
/// incoming packet identifiers by value, retained messages by topic).
///
/// An error means the batch is not durable: the runtime tells the engine
/// (`Broker::handle_store_failed`), which answers the acknowledgements
/// that waited for it negatively. A batch refused for what it holds (a key
/// too long, an operation this store cannot keep) is not stored at all.
/// After an I/O error (a full disk) a store stays usable: [`FjallStore`]
/// keeps the batches it could not write and writes them, in order, when a
/// later [`commit`](Store::commit) or [`flush`](Store::flush) succeeds;
/// the runtime calls `commit` again on its own retry schedule.
pub trait Store: Send {
    /// Stages one batch (the operations of one `Action::Store`, in order):
    /// it is visible to [`recover`](Store::recover) but not yet durable.
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError>;

    /// Makes every batch staged so far as durable as the store promises
    /// (see the crate docs), all together: one fsync for all of them under
    /// [`Durability::Sync`]. On `Ok`, confirm to the engine the id of the
    /// last batch applied.
    fn commit(&mut self) -> Result<(), StoreError>;

    /// Forces everything committed onto stable storage, whatever the
    /// durability mode. Under [`Durability::Periodic`], the runtime calls
    /// it every flush interval; elsewhere it costs little or nothing.
    fn flush(&mut self) -> Result<(), StoreError>;

    /// Everything stored, for `Broker::restore`.
    fn recover(&mut self) -> Result<Recovered, StoreError>;
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        (**self).apply(ops)
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        (**self).commit()
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        (**self).flush()
    }

    fn recover(&mut self) -> Result<Recovered, StoreError> {
        (**self).recover()
    }
}
