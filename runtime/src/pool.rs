//! The worker threads every runtime runs the driver's [`Job`]s on.
//!
//! The driver never has more than [`MAX_JOBS`] jobs out at once, so a pool
//! of that many threads never makes a store commit wait behind a password
//! check. Finished jobs queue here; the pool calls `wake` so the runtime's
//! event loop comes and takes them ([`Pool::take_done`]) for
//! [`crate::driver::Driver::handle_job_done`]. All three runtimes use this
//! one pool, so blocking work is bounded and behaves the same on each.

use crate::driver::{Job, JobDone, MAX_JOBS};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// Called from a worker thread when a job is done; it must wake the
/// runtime's loop (and be cheap).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// A fixed set of worker threads for [`Job`]s.
pub struct Pool {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<JobDone>,
    /// For the cluster link's thread, which hands its messages back as
    /// finished jobs.
    done_tx: mpsc::Sender<JobDone>,
    wake: Wake,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts [`MAX_JOBS`] worker threads.
    pub fn start(wake: Wake) -> std::io::Result<Pool> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done) = mpsc::channel();
        let mut threads = Vec::with_capacity(MAX_JOBS);
        for i in 0..MAX_JOBS {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let wake = wake.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("roost-worker-{i}"))
                    .spawn(move || {
                        loop {
                            let job = {
                                let rx = job_rx.lock().unwrap_or_else(PoisonError::into_inner);
                                rx.recv()
                            };
                            let Ok(job) = job else {
                                return;
                            };
                            if done_tx.send(job.run()).is_err() {
                                return;
                            }
                            wake();
                        }
                    })?,
            );
        }
        Ok(Pool {
            jobs: Some(jobs),
            done,
            done_tx,
            wake,
            threads,
        })
    }

    /// Runs `job` on a free worker; the cluster link ([`Job::is_link`])
    /// gets a thread of its own, which ends when the driver lets go of it.
    pub fn submit(&self, job: Job) {
        if let crate::driver::jobs::JobKind::ClusterLink(link) = job.0 {
            let (done, wake) = (self.done_tx.clone(), self.wake.clone());
            let spawned = std::thread::Builder::new()
                .name("roost-cluster".into())
                .spawn(move || link.run(done, wake));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cluster: cannot start the link's thread; this node stays alone");
            }
            return;
        }
        if let Some(jobs) = &self.jobs {
            // Fails only when every worker is gone, which only happens
            // after `finish`.
            let _ = jobs.send(job);
        }
    }

    /// A finished job, if any.
    pub fn take_done(&self) -> Option<JobDone> {
        self.done.try_recv().ok()
    }

    /// Stops the workers after the jobs already submitted.
    pub fn finish(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.finish();
    }
}
