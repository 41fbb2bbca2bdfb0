//! The parity suite (`roost_conformance::parity`) against the `roost`
//! binary: TLS and WebSocket transports, slow consumers with bounded
//! memory, and persistence across SIGKILL with both durabilities, checked
//! exactly as for every other runtime.

roost_conformance::parity_tests!(env!("CARGO_BIN_EXE_roost"));

// The crash test (`roost_conformance::crash`): SIGKILLs at random moments
// under QoS 1/2 traffic with `--data-dir` and `sync` durability; 0 lost,
// 0 QoS 2 duplicates, 0 reused packet ids. `ROOST_CRASH_KILLS` sets how many.
roost_conformance::crash_tests!(env!("CARGO_BIN_EXE_roost"));
