//! Storage for the roost broker: the `Store` trait that applies the engine's
//! storage actions, an in-memory store and a crash-safe store on fjall.
//!
//! Not built yet: nothing here can store anything. The engine's storage
//! actions land with the engine issue and the stores with the persistence work.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
