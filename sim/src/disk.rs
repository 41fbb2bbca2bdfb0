//! The simulated disk: a [`Store`] whose durable part survives a simulated
//! crash and whose staged part does not (or only a prefix of it, as the
//! `Store` contract allows), and which fails on demand.

use roost_core::broker::{Recovered, StoreOp};
use roost_persistence::{MemoryStore, Store, StoreError};
use std::sync::{Arc, Mutex, MutexGuard};

/// What the simulated machine's disk holds, shared between the store the
/// driver owns (it travels inside store jobs) and the simulator, which
/// crashes it and restarts the broker from it.
#[derive(Debug, Default)]
pub struct Disk {
    /// What a commit made durable.
    durable: MemoryStore,
    /// Batches applied but not committed yet, in order.
    staged: Vec<Vec<StoreOp>>,
    /// While set, `apply`, `commit` and `flush` fail as a full disk does,
    /// keeping what they could not write (as `FjallStore` does).
    pub failing: bool,
    /// A broken disk, to prove the checks catch one: commits succeed and
    /// write nothing.
    pub lying: bool,
    /// Commits that succeeded.
    pub commits: u64,
    /// Calls that failed.
    pub failures: u64,
}

impl Disk {
    /// The machine died: of the staged batches, only the first `keep`
    /// reached the disk (each whole: a prefix, as the `Store` contract
    /// promises). Returns how many were lost.
    pub fn crash(&mut self, keep: usize) -> usize {
        self.settle(keep)
    }

    /// Writes the first `keep` staged batches durably and forgets the
    /// rest; returns how many were forgotten.
    fn settle(&mut self, keep: usize) -> usize {
        let staged = std::mem::take(&mut self.staged);
        let keep = keep.min(staged.len());
        for batch in &staged[..keep] {
            let _ = self.durable.apply(batch);
        }
        staged.len() - keep
    }

    /// Batches applied and not committed.
    pub fn staged(&self) -> usize {
        self.staged.len()
    }

    /// What a restarted broker recovers.
    pub fn recover(&mut self) -> Recovered {
        self.durable.recover().unwrap_or_default()
    }
}

/// The driver's store: a handle on the shared [`Disk`].
#[derive(Debug, Clone)]
pub struct SimStore(pub Arc<Mutex<Disk>>);

impl SimStore {
    fn disk(&self) -> MutexGuard<'_, Disk> {
        // A panic elsewhere poisons the lock; the disk itself is consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for SimStore {
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let mut disk = self.disk();
        disk.staged.push(ops.to_vec());
        if disk.failing {
            disk.failures += 1;
            let kept = disk.staged.len();
            return Err(StoreError::Interrupted { kept });
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let mut disk = self.disk();
        if disk.failing {
            disk.failures += 1;
            let kept = disk.staged.len();
            return Err(StoreError::Interrupted { kept });
        }
        let keep = if disk.lying { 0 } else { disk.staged.len() };
        disk.settle(keep);
        disk.commits += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.disk().failing {
            return Err(StoreError::Interrupted { kept: 0 });
        }
        Ok(())
    }

    fn recover(&mut self) -> Result<Recovered, StoreError> {
        Ok(self.disk().recover())
    }
}
