//! A black-box MQTT conformance suite that runs against any broker at
//! `HOST:PORT`.
//!
//! It owns three things:
//!
//! - [`wire`]: a small MQTT 3.1.1/5.0 encoder and decoder of its own (never
//!   `roost-core`'s, so a misreading shared by broker and test cannot hide),
//!   able to build malformed packets byte by byte;
//! - [`client`] and [`rumq`]: a raw-bytes client on that codec, and wrappers
//!   over the independent `rumqttc` client for ordinary flows;
//! - the scenarios ([`runner::all_scenarios`]): every case of the Eclipse Paho
//!   interoperability suite for 3.1.1 and 5.0, written anew from the
//!   specification, plus bad-input cases that check the broker closes a
//!   misbehaving connection and keeps serving everyone else.
//!
//! ```text
//!  Scenario ──► Ctx (broker address, run id, private topic prefix)
//!     │
//!     ├─► RawClient ──► wire::{Connect, Publish, Body, frame} ──► transport::connect ──► broker
//!     └─► rumq::{Client311, Client5} (rumqttc) ──► transport::rumqttc_endpoint ──► broker
//!                          (TCP, TLS, WebSocket or WebSocket over TLS: Target::transport)
//!  runner::run ──► Verdict per scenario ──► Report ("N passed, M failed, K skipped")
//! ```
//!
//! Running it from Rust (a test that starts a broker in-process would do
//! this, then assert `report.failed() == 0`):
//!
//! ```no_run
//! # async fn demo() {
//! use roost_conformance::{runner, scenario::Config};
//! let config = Config::new("127.0.0.1", 1883);
//! let selection = runner::Selection { version: None, filter: Some("basic".into()) };
//! let report = runner::run(&config, &selection, |v| println!("{}", v.line())).await;
//! println!("{}", report.summary());
//! # }
//! ```
//!
//! [`attacks`] is the adversarial side: a broker binary under attack
//! (memory floods, starvation, authorization holes, hostile operator
//! input), each attack with the bound it must respect and what it
//! measured; every runtime crate runs it against its own binary
//! (`attack_tests!`).
//!
//! Scenarios run one at a time, each under its own time limit, and use client
//! ids and topics unique to the run, so a leftover session or retained message
//! from another run cannot change a verdict.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// Declares a [`scenario::Scenario`] from an async fn taking a `Ctx`.
macro_rules! scenario {
    ($name:expr, $version:expr, $f:path, $limit:expr, $summary:expr) => {
        scenario!($name, $version, $f, $limit, $summary, None)
    };
    ($name:expr, $version:expr, $f:path, $limit:expr, $summary:expr, $diff:expr) => {
        $crate::scenario::Scenario {
            name: $name,
            version: $version,
            summary: $summary,
            time_limit: $limit,
            expected_mosquitto_difference: $diff,
            run: |cx| Box::pin($f(cx)),
        }
    };
}

pub mod attacks;
mod bad_input;
pub mod blocking;
pub mod bridge;
pub mod client;
pub mod cluster;
mod common;
mod corners;
pub mod crash;
pub mod observability;
pub mod parity;
pub mod process;
pub mod rumq;
pub mod runner;
pub mod scenario;
pub mod transport;
mod v311;
mod v5;
pub mod wire;
