//! A broker binary (`roost`, `roost-smol`, `roost-mio`, `roost-std`, or any
//! program with the same flags and log lines) as a child process: the one
//! wrapper that the attacks and every runtime's binary tests start brokers
//! with.
//!
//! The broker's listeners bind port 0, so its log is the only way to learn
//! the ports (and it cannot race with another process taking them): the
//! wrapper reads stderr on a thread of its own, keeps every line, and
//! [`Broker::start`] waits for the `listening … addr=…` lines. stdout is
//! kept the same way. The process is killed when the wrapper is dropped,
//! so a failed assertion never leaves a broker running. Every wait takes a
//! bound.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::blocking::poll;

/// A broker process; killed when dropped.
pub struct Broker {
    child: Arc<Mutex<Child>>,
    pid: u32,
    name: String,
    stderr: Output,
    stdout: Output,
    protocols: Vec<String>,
    /// The bound address of each listener that had logged it when
    /// [`Broker::start`] returned, in configuration order.
    pub addrs: Vec<SocketAddr>,
}

/// What a child wrote on one stream so far, and whether it is closed.
#[derive(Clone, Default)]
struct Output {
    text: Arc<Mutex<String>>,
    closed: Arc<AtomicBool>,
}

impl Output {
    /// Reads `stream` line by line on a thread of its own until it closes;
    /// a broker that fills an unread pipe would block on its logging.
    fn drain(stream: Option<impl Read + Send + 'static>) -> Output {
        let output = Output::default();
        let Some(stream) = stream else {
            output.closed.store(true, Ordering::Relaxed);
            return output;
        };
        let sink = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.text.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
            sink.closed.store(true, Ordering::Relaxed);
        });
        output
    }

    fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Broker {
    /// `binary --config config`, ready for more arguments or environment
    /// before [`Broker::spawn`] or [`Broker::start`].
    pub fn command(binary: &Path, config: &Path) -> Command {
        let mut command = Command::new(binary);
        command.arg("--config").arg(config);
        command
    }

    /// Starts `command` (stdin empty, stdout and stderr kept) without
    /// waiting for anything.
    pub fn spawn(mut command: Command) -> Result<Broker, String> {
        let name = Path::new(command.get_program())
            .file_name()
            .unwrap_or(command.get_program())
            .to_string_lossy()
            .into_owned();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stderr = Output::drain(child.stderr.take());
        let stdout = Output::drain(child.stdout.take());
        Ok(Broker {
            pid: child.id(),
            child: Arc::new(Mutex::new(child)),
            name,
            stderr,
            stdout,
            protocols: Vec::new(),
            addrs: Vec::new(),
        })
    }

    /// Starts `command` and waits up to `within` until it has logged
    /// `listeners` listening addresses; an error (with the log) when it
    /// exits or the time runs out first.
    pub fn start(command: Command, listeners: usize, within: Duration) -> Result<Broker, String> {
        let mut broker = Broker::spawn(command)?;
        let found = poll(within, || {
            let found = parse_listeners(&broker.log());
            if found.len() >= listeners {
                return Some(Ok(found));
            }
            broker.try_wait().map(Err)
        });
        match found {
            Some(Ok(found)) => {
                (broker.protocols, broker.addrs) = found.into_iter().unzip();
                Ok(broker)
            }
            Some(Err(status)) => Err(format!(
                "{} exited with {status} before listening; log:\n{}",
                broker.name,
                broker.log()
            )),
            None => Err(format!(
                "{} did not report {listeners} listeners in {} s; log:\n{}",
                broker.name,
                within.as_secs(),
                broker.log()
            )),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The bound address of the `index`-th listener (configuration order).
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.addrs[index]
    }

    /// The address of the first listener speaking `protocol` (`tcp`, `ws`).
    pub fn addr_of(&self, protocol: &str) -> Option<SocketAddr> {
        self.protocols
            .iter()
            .zip(&self.addrs)
            .find(|(p, _)| *p == protocol)
            .map(|(_, a)| *a)
    }

    /// Every address logged as listening so far, in order (listeners added
    /// by a reload included).
    pub fn listening(&self) -> Vec<SocketAddr> {
        parse_listeners(&self.log())
            .into_iter()
            .map(|(_, a)| a)
            .collect()
    }

    /// Everything the broker wrote to stderr so far (its log).
    pub fn log(&self) -> String {
        self.stderr.text()
    }

    /// Everything the broker wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// Waits up to `within` until the log has `n` lines containing `needle`.
    pub fn wait_log(&self, needle: &str, n: usize, within: Duration) -> bool {
        poll(within, || {
            (self.log().lines().filter(|l| l.contains(needle)).count() >= n).then_some(())
        })
        .is_some()
    }

    /// Waits up to `within` for a log line containing every one of
    /// `needles`, and returns it.
    pub fn wait_line(&self, needles: &[&str], within: Duration) -> Option<String> {
        poll(within, || {
            self.log()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_owned)
        })
    }

    /// Sends a signal by name (`HUP`, `TERM`) with kill(1).
    pub fn signal(&self, name: &str) -> Result<(), String> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .map_err(|e| format!("kill -{name}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{name} {} failed: {status}", self.pid))
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_wait()
            .ok()
            .flatten()
    }

    /// Waits up to `within` for the process to exit; once it has, waits
    /// (a bounded second) for its last log lines to be read.
    pub fn wait_exit(&self, within: Duration) -> Option<ExitStatus> {
        let status = poll(within, || self.try_wait())?;
        poll(Duration::from_secs(1), || {
            (self.stderr.closed.load(Ordering::Relaxed)
                && self.stdout.closed.load(Ordering::Relaxed))
            .then_some(())
        });
        Some(status)
    }

    /// The child itself, for a watchdog thread that must be able to kill it
    /// (see [`crate::attacks::MemoryWatch`]).
    pub fn child(&self) -> Arc<Mutex<Child>> {
        self.child.clone()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `command` to its end with `stdin` written to it (or nothing to
/// read), killing it after `within`: its exit status and everything it
/// wrote.
pub fn run(mut command: Command, stdin: Option<&str>, within: Duration) -> Result<Ran, String> {
    let name = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A program that exits without reading it all is not an error here.
        let _ = pipe.write_all(text.as_bytes());
    }
    let drain = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = poll(within, || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(Ran {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// What [`run`] saw.
#[derive(Debug)]
pub struct Ran {
    /// Exit status; None when it was still running at the deadline (and was
    /// killed).
    pub status: Option<ExitStatus>,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl Ran {
    /// Whether it ended in time, with success.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// `(protocol, address)` of each `listening` line in a broker log, in order.
fn parse_listeners(log: &str) -> Vec<(String, SocketAddr)> {
    log.lines()
        .filter(|l| l.contains("listening"))
        .filter_map(|l| {
            let mut protocol = String::new();
            let mut addr = None;
            for w in l.split_whitespace() {
                if let Some(p) = w.strip_prefix("protocol=") {
                    protocol = p.trim_matches('"').to_owned();
                } else if let Some(a) = w.strip_prefix("addr=") {
                    addr = a.trim_matches('"').parse().ok();
                }
            }
            Some((protocol, addr?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines_parse() {
        let log = "2025 INFO listening protocol=\"tcp\" addr=127.0.0.1:1883\n\
                   2025 INFO listening protocol=ws addr=\"127.0.0.1:8080\"\n\
                   2025 INFO something else addr=1.2.3.4:5\n";
        assert_eq!(
            parse_listeners(log),
            vec![
                ("tcp".to_owned(), "127.0.0.1:1883".parse().unwrap()),
                ("ws".to_owned(), "127.0.0.1:8080".parse().unwrap()),
            ]
        );
    }
}
