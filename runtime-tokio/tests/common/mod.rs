//! Shared helpers of the integration tests: the `roost` binary as a child
//! process, plus (re-exported) the conformance crate's blocking raw MQTT
//! client and test certificate, which every runtime's tests share.
//!
//! Every wait here has a deadline; nothing sleeps except bounded polling.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, ExitStatus};

pub use roost_conformance::blocking::*;

/// The `roost` binary as a child process ([`roost_conformance::process`]);
/// killed when dropped.
pub use roost_conformance::process::Broker as BrokerProcess;

/// Starts `roost --config config` and waits until each of its `listeners`
/// has logged the address it is bound to (listeners bind port 0, so the log
/// is the only way to learn the ports, and it cannot race with another
/// process taking them).
pub fn start_roost(config: &Path, listeners: usize) -> BrokerProcess {
    let roost = BrokerProcess::command(Path::new(env!("CARGO_BIN_EXE_roost")), config);
    BrokerProcess::start(roost, listeners, WAIT).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `roost` with `args` to completion (with a deadline) and returns its
/// status, stdout and stderr.
pub fn run_roost(args: &[&str]) -> (ExitStatus, String, String) {
    let mut roost = Command::new(env!("CARGO_BIN_EXE_roost"));
    roost.args(args);
    let ran = roost_conformance::process::run(roost, None, WAIT).unwrap_or_else(|e| panic!("{e}"));
    let status = ran
        .status
        .unwrap_or_else(|| panic!("roost {args:?} did not exit within {WAIT:?}"));
    (status, ran.stdout, ran.stderr)
}
