//! The roost protocol engine: MQTT 3.1, 3.1.1 and 5.0 as a pure state machine.
//!
//! `roost-core` never touches a socket, a file, a clock, a thread or a random
//! number generator. Bytes, connection events and the current time go in;
//! packets to send, connections to close, storage actions and in-process
//! deliveries come out. Runtimes (tokio, smol, mio, or your own event loop)
//! move bytes between sockets and the engine.
//!
//! ```text
//!   socket bytes ──► codec::decode ──► engine ──► Action::Send ──► socket
//!                                        │  ▲
//!                                        ▼  │ handle_store_done
//!                                   Action::Store ──► persistence
//! ```
//!
//! Modules:
//! - [`codec`]: every MQTT control packet of every version, incremental
//!   decoding with limits, and allocation-free encoding into a `BytesMut`.
//! - [`client`]: a sans-IO MQTT client engine (the client side of bridges).
//! - [`topic`]: validated topic names and filters, and the subscription trie.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// No panic is reachable from client input: the engine's code never unwraps,
// indexes or panics outside tests (see `tests/engine_garbage.rs`).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod broker;
pub mod client;
pub mod codec;
pub mod hash;
mod string;
pub mod topic;

pub use string::{MqttStr, StrError};
