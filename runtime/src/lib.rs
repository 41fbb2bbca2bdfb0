//! What every roost runtime shares, whatever drives its sockets: configuration,
//! TLS and WebSocket as sans-IO byte stages, password and ACL files, and the
//! connection driver that feeds the engine and drains its actions.
//!
//! Not built yet (see the standalone-broker issue).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
