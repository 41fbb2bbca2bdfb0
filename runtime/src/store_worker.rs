//! The thread that makes the engine's storage batches durable.
//!
//! The engine emits `Action::Store { id, ops }` and holds the acknowledgements
//! those operations promise. The worker applies batches in order and commits
//! everything that has queued up since its last commit together, so a
//! burst of messages shares one fsync (group commit). It then reports the
//! last id that is durable; the runtime hands it to
//! `Broker::handle_store_done` (see [`crate::driver::Driver::store_progress`]).
//!
//! A store that fails stops confirming: the broker never acknowledges what
//! it could not store. The error is logged once; clients waiting for their
//! acknowledgements time out and reconnect.

use roost_core::broker::{StoreId, StoreOp};
use roost_persistence::Store;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::error;

/// Called from the worker thread when more batches are durable; it must wake
/// the runtime (and be cheap).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// A store on a thread of its own.
pub struct StoreWorker {
    batches: Option<mpsc::Sender<(StoreId, Vec<StoreOp>)>>,
    durable: Arc<Mutex<Option<StoreId>>>,
    thread: Option<JoinHandle<()>>,
}

impl StoreWorker {
    /// Starts the worker. With `flush_every`, the store is also flushed to
    /// disk on that period (for `Durability::Periodic`).
    pub fn start(
        mut store: Box<dyn Store>,
        flush_every: Option<Duration>,
        wake: Wake,
    ) -> std::io::Result<StoreWorker> {
        let (tx, rx) = mpsc::channel::<(StoreId, Vec<StoreOp>)>();
        let durable = Arc::new(Mutex::new(None));
        let reported = durable.clone();
        let thread = std::thread::Builder::new()
            .name("roost-store".into())
            .spawn(move || {
                let wait = flush_every.unwrap_or(Duration::from_secs(3600));
                let mut failed = false;
                loop {
                    let first = match rx.recv_timeout(wait) {
                        Ok(batch) => batch,
                        Err(RecvTimeoutError::Timeout) => {
                            if !failed {
                                if let Err(e) = store.flush() {
                                    error!(error = %e, "store flush failed; no further acknowledgements will be sent");
                                    failed = true;
                                }
                            }
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    if failed {
                        continue;
                    }
                    // Everything already waiting goes into the same commit.
                    let mut last = first.0;
                    let mut result = store.apply(&first.1);
                    while result.is_ok() {
                        match rx.try_recv() {
                            Ok((id, ops)) => {
                                last = id;
                                result = store.apply(&ops);
                            }
                            Err(_) => break,
                        }
                    }
                    let result = result.and_then(|()| store.commit());
                    match result {
                        Ok(()) => {
                            *reported.lock().unwrap_or_else(PoisonError::into_inner) = Some(last);
                            wake();
                        }
                        Err(e) => {
                            error!(error = %e, "store failed; no further acknowledgements will be sent");
                            failed = true;
                        }
                    }
                }
                // Shutting down: what was committed is on disk; flush the rest.
                if !failed {
                    if let Err(e) = store.flush() {
                        error!(error = %e, "store flush at shutdown failed");
                    }
                }
            })?;
        Ok(StoreWorker {
            batches: Some(tx),
            durable,
            thread: Some(thread),
        })
    }

    /// Queues a batch for the store.
    pub fn submit(&self, id: StoreId, ops: Vec<StoreOp>) {
        if let Some(tx) = &self.batches {
            // A send fails only if the thread is gone, which `failed` and the
            // log already account for.
            let _ = tx.send((id, ops));
        }
    }

    /// The last batch known durable, if any since the last call.
    pub fn take_durable(&self) -> Option<StoreId> {
        self.durable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Stops the worker after it has stored everything submitted.
    pub fn finish(&mut self) {
        self.batches = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StoreWorker {
    fn drop(&mut self) {
        self.finish();
    }
}
