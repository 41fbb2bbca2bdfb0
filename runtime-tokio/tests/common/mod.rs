//! Shared helpers of the integration tests: the `roost` binary as a child
//! process, plus (re-exported) the conformance crate's blocking raw MQTT
//! client and test certificate, which every runtime's tests share.
//!
//! Every wait here has a deadline; nothing sleeps except bounded polling.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

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
    let mut child = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn roost");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = poll(WAIT, || child.try_wait().expect("try_wait"));
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("roost {args:?} did not exit within {WAIT:?}");
    };
    (
        status,
        out.join().expect("stdout"),
        err.join().expect("stderr"),
    )
}
