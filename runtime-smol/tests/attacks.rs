//! The adversarial suite (`roost_conformance::attacks`) against the
//! `roost-smol` binary: one test per attack, each starting its own broker
//! process with the configuration it needs. The attacks themselves, their
//! bounds and what they measure live in the conformance crate, shared by
//! every runtime.

roost_conformance::attack_tests!(env!("CARGO_BIN_EXE_roost-smol"));

// The crash test (see `roost_conformance::crash`): SIGKILLs under QoS 1/2
// traffic with `--data-dir` and `sync` durability; `ROOST_CRASH_KILLS` sets
// how many.
roost_conformance::crash_tests!(env!("CARGO_BIN_EXE_roost-smol"));
