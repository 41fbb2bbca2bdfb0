//! The parity suite (`roost_conformance::parity`) against the `roost-mio`
//! binary: TLS and WebSocket transports, slow consumers with bounded
//! memory, and persistence across SIGKILL with both durabilities, checked
//! exactly as for every other runtime.

roost_conformance::parity_tests!(env!("CARGO_BIN_EXE_roost-mio"));
