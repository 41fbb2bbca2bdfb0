//! Bridges (`roost_conformance::bridge`) against the `roost-mio` binary: to a
//! real Mosquitto and to another roost, both ways, QoS 0/1/2, remapped
//! prefixes, the remote restarted, and no loops.

roost_conformance::bridge_tests!(env!("CARGO_BIN_EXE_roost-mio"));
