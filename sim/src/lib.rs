//! Deterministic simulation of the whole roost broker, and the bodies of
//! the fuzz targets.
//!
//! [`run`] drives the real [`roost_runtime::driver::Driver`] (engine,
//! store batching, durability policy) the way a runtime does, but every
//! input comes from one seeded PRNG ([`rng::Rng`]):
//!
//! ```text
//!   seed ──► Rng ──► step: time | bytes either way (split anywhere) | socket writable
//!                          | run a store job (slow, failing) | a client acts
//!                          | reset / stall a connection | crash and restart | bad input
//!            after every step: invariants (limits, protocol of what the broker sent)
//!            at the end: heal, reconnect, settle; every acknowledged QoS 1/2 message
//!            reached every subscriber session that existed when it was published
//! ```
//!
//! A crash drops the driver, its jobs and every connection; the broker
//! restarts ([`roost_runtime::driver::Driver::new`]) from what the
//! simulated [`disk::Disk`] made durable plus a random prefix of what it
//! was writing. The clients (MQTT 3.1.1 and 5.0, clean and persistent,
//! QoS 0/1/2, wills, retained messages, shared subscriptions, takeovers)
//! encode with `roost_core::codec` and keep a model of what they were
//! acknowledged and given.
//!
//! Replay a failure with `cargo run -p roost-sim -- --seed N`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod disk;
pub mod fuzz;
pub mod rng;
mod world;

pub use world::{Options, Outcome, replay_command, run};
