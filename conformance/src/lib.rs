//! A black-box MQTT conformance suite and load generator that runs against any
//! broker at `HOST:PORT`.
//!
//! Not built yet (see the conformance and benchmark issues).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
