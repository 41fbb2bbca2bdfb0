//! Blocking work the driver hands to a worker: password checks (argon2 is
//! slow on purpose) and store batches (fsync). The driver decides how many
//! run at once; a runtime only runs each [`Job`] it is given somewhere off
//! its event loop and hands the [`JobDone`] back.

use crate::passwd::{PasswordFile, Rehash};
use roost_core::broker::{AuthDecision, AuthToken, ConnId, StoreId, StoreOp};
use roost_core::codec::ReasonCode;
use roost_persistence::{Store, StoreError};
use std::fmt;
use std::sync::Arc;

/// Work to run off the event loop: call [`Job::run`] on a worker thread and
/// give the result to [`super::Driver::handle_job_done`].
///
/// The driver never has more than [`super::MAX_JOBS`] jobs out at once, so
/// a pool of that many threads never makes one job wait for another.
#[must_use = "a job must be run and its result handed back to the driver"]
pub struct Job(pub(crate) JobKind);

pub(crate) enum JobKind {
    Password(PasswordCheck),
    Store(StoreJob),
    /// The cluster link: not a job that ends, but a thread of its own (see
    /// [`crate::pool::Pool::submit`]).
    ClusterLink(Box<crate::cluster::LinkStart>),
}

pub(crate) struct PasswordCheck {
    pub(crate) token: AuthToken,
    pub(crate) conn: ConnId,
    pub(crate) passwords: Arc<PasswordFile>,
    pub(crate) user: String,
    pub(crate) password: Vec<u8>,
}

pub(crate) struct StoreJob {
    pub(crate) store: Box<dyn Store>,
    pub(crate) batches: Vec<(StoreId, Vec<StoreOp>)>,
    /// Force everything onto stable storage too (periodic durability, and
    /// shutdown).
    pub(crate) flush: bool,
    /// The store was interrupted (a full disk): try to resume it.
    pub(crate) retry: bool,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            JobKind::Password(check) => f
                .debug_struct("Job::Password")
                .field("conn", &check.conn)
                .finish(),
            JobKind::Store(job) => f
                .debug_struct("Job::Store")
                .field("batches", &job.batches.len())
                .field("flush", &job.flush)
                .finish(),
            JobKind::ClusterLink(link) => f.debug_tuple("Job::ClusterLink").field(link).finish(),
        }
    }
}

/// The result of a [`Job`], for [`super::Driver::handle_job_done`].
pub struct JobDone(pub(crate) DoneKind);

pub(crate) enum DoneKind {
    Password {
        token: AuthToken,
        /// Who asked, for the log line of a refusal.
        conn: ConnId,
        user: String,
        decision: AuthDecision,
    },
    Store {
        store: Box<dyn Store>,
        /// What became of the batches, in order: each entry settles every
        /// batch up to its id (durable, or failed).
        outcomes: Vec<(StoreId, bool)>,
        /// The last error, if any.
        error: Option<StoreError>,
    },
    /// Messages, retained messages and claims from the other nodes.
    Cluster(Vec<crate::cluster::FromLink>),
}

impl fmt::Debug for JobDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            DoneKind::Password { decision, .. } => f
                .debug_struct("JobDone::Password")
                .field("decision", decision)
                .finish(),
            DoneKind::Store {
                outcomes, error, ..
            } => f
                .debug_struct("JobDone::Store")
                .field("outcomes", outcomes)
                .field("error", error)
                .finish(),
            DoneKind::Cluster(batch) => f
                .debug_struct("JobDone::Cluster")
                .field("items", &batch.len())
                .finish(),
        }
    }
}

impl JobDone {
    pub(crate) fn cluster(batch: Vec<crate::cluster::FromLink>) -> JobDone {
        JobDone(DoneKind::Cluster(batch))
    }
}

impl Job {
    /// Runs the job, blocking: tens of milliseconds of CPU for a password
    /// check, an fsync for a store batch.
    ///
    /// The cluster link ([`Job::is_link`]) is not run here: it lives as
    /// long as the broker, on a thread of its own, which
    /// [`crate::pool::Pool::submit`] starts. Run here (a runtime without
    /// the pool), it ends at once and the node stays alone.
    pub fn run(self) -> JobDone {
        JobDone(match self.0 {
            JobKind::ClusterLink(_) => {
                tracing::error!(
                    "cluster: the link needs roost_runtime::pool::Pool; this node stays alone"
                );
                DoneKind::Cluster(Vec::new())
            }
            JobKind::Password(check) => {
                let ok = std::str::from_utf8(&check.password).is_ok_and(|password| {
                    let ok = check.passwords.verify(&check.user, password);
                    if ok && check.passwords.is_legacy(&check.user) {
                        rehash(&check.passwords, &check.user, password);
                    }
                    ok
                });
                DoneKind::Password {
                    token: check.token,
                    conn: check.conn,
                    user: check.user,
                    decision: if ok {
                        AuthDecision::Accept
                    } else {
                        AuthDecision::Reject(ReasonCode::BadUserNameOrPassword)
                    },
                }
            }
            JobKind::Store(job) => job.run(),
        })
    }

    /// Whether this is the cluster link, which runs as long as the broker
    /// on a thread of its own rather than on a worker.
    pub fn is_link(&self) -> bool {
        matches!(self.0, JobKind::ClusterLink(_))
    }

    /// Whether this is a password check (runtimes may log it).
    pub fn is_password_check(&self) -> bool {
        matches!(self.0, JobKind::Password(_))
    }
}

/// Replaces a Mosquitto hash that just verified with Argon2id in the
/// password file, and says so.
fn rehash(passwords: &PasswordFile, user: &str, password: &str) {
    match passwords.rehash_on_login(user, password) {
        Rehash::Rewritten(path) => tracing::info!(
            user,
            file = %path.display(),
            "password hash upgraded from Mosquitto's to Argon2id"
        ),
        Rehash::Failed(e) => tracing::warn!(
            user,
            "cannot upgrade Mosquitto password hashes to Argon2id on login ({e}); they keep \
             working, and `roost passwd add USER` sets one anew"
        ),
        _ => {}
    }
}

impl StoreJob {
    /// Stages every batch, in order, then commits them together: a burst
    /// of messages shares one fsync (group commit). No batch is skipped
    /// after an error: the store keeps what it could not write (see
    /// `FjallStore`'s interruption), and each batch is settled, in order,
    /// as durable or failed, never both.
    fn run(mut self) -> DoneKind {
        let mut outcomes = Vec::new();
        let mut error = None;
        let mut staged: Option<StoreId> = None;
        for (id, ops) in &self.batches {
            match self.store.apply(ops) {
                Ok(()) => staged = Some(*id),
                Err(e) => {
                    // What was staged before it stands or falls on its own.
                    // (Its own error, if any, is the same outage.)
                    if let Some(last) = staged.take() {
                        outcomes.push((last, self.store.commit().is_ok()));
                    }
                    outcomes.push((*id, false));
                    error = Some(e);
                }
            }
        }
        if let Some(last) = staged {
            let committed = self.store.commit();
            outcomes.push((last, committed.is_ok()));
            if let Err(e) = committed {
                error = Some(e);
            }
        }
        if self.retry && self.batches.is_empty() {
            if let Err(e) = self.store.commit() {
                error = Some(e);
            }
        }
        if self.flush {
            if let Err(e) = self.store.flush() {
                error = Some(e);
            }
        }
        DoneKind::Store {
            store: self.store,
            outcomes,
            error,
        }
    }
}
