//! Shared helpers of the integration tests: the `roost` binary as a child
//! process, plus (re-exported) the conformance crate's blocking raw MQTT
//! client and test certificate, which every runtime's tests share.
//!
//! Every wait here has a deadline; nothing sleeps except bounded polling.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use roost_conformance::blocking::*;

/// The `roost` binary running as a child process; killed when dropped.
pub struct BrokerProcess {
    child: Child,
    log: Arc<Mutex<String>>,
    /// The bound address of each listener, in configuration order.
    pub addrs: Vec<SocketAddr>,
}

impl BrokerProcess {
    /// Starts `roost --config config` and waits until each of its
    /// `listeners` has logged the address it is bound to (listeners bind
    /// port 0, so the log is the only way to learn the ports, and it cannot
    /// race with another process taking them).
    pub fn start(config: &Path, listeners: usize) -> BrokerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_roost"))
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn roost");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut broker = BrokerProcess {
            child,
            log,
            addrs: Vec::new(),
        };
        let addrs = poll(WAIT, || {
            let addrs: Vec<SocketAddr> = broker
                .log()
                .lines()
                .filter(|l| l.contains("listening"))
                .filter_map(|l| {
                    let addr = l.split_whitespace().find_map(|w| w.strip_prefix("addr="))?;
                    addr.parse().ok()
                })
                .collect();
            (addrs.len() >= listeners).then_some(addrs)
        });
        broker.addrs = addrs.unwrap_or_else(|| {
            panic!(
                "roost did not report {listeners} listeners; log:\n{}",
                broker.log()
            )
        });
        broker
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the broker has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Waits until the log has `n` lines containing `needle`.
    pub fn wait_log(&self, needle: &str, n: usize) -> bool {
        poll(WAIT, || {
            (self.log().lines().filter(|l| l.contains(needle)).count() >= n).then_some(())
        })
        .is_some()
    }

    /// Sends a signal (`HUP`, `TERM`, …) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll(timeout, || self.child.try_wait().expect("try_wait"))
    }

    /// The broker's resident set size in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
