//! A broker binary (`roost`, `roost-smol`, `roost-mio`, `roost-std`) run as
//! a service: the pid file, systemd's notification protocol over a socket
//! the test binds, and SIGHUP re-reading the configuration file. Each
//! runtime's `tests/service.rs` runs these with its own binary. Every wait
//! is bounded.
#![allow(dead_code)]

use roost_conformance::blocking::{Connect, Raw, V311};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

/// The broker binary as a child process, killed when dropped.
pub struct Roost {
    child: Child,
    log: Arc<Mutex<String>>,
    /// Listener addresses, in configuration order.
    pub addrs: Vec<SocketAddr>,
}

impl Roost {
    /// Starts `binary args` with `env` added, without waiting.
    pub fn spawn(binary: &Path, args: &[&str], env: &[(&str, &Path)]) -> Roost {
        let mut command = Command::new(binary);
        command
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn the broker");
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
        Roost {
            child,
            log,
            addrs: Vec::new(),
        }
    }

    /// Starts `binary args` and waits for `listeners` "listening" lines.
    pub fn start(binary: &Path, args: &[&str], env: &[(&str, &Path)], listeners: usize) -> Roost {
        let mut roost = Roost::spawn(binary, args, env);
        let deadline = Instant::now() + WAIT;
        loop {
            let addrs: Vec<SocketAddr> = roost
                .log()
                .lines()
                .filter(|l| l.contains("listening"))
                .filter_map(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))?
                        .parse()
                        .ok()
                })
                .collect();
            if addrs.len() >= listeners {
                roost.addrs = addrs;
                return roost;
            }
            if Instant::now() > deadline || roost.child.try_wait().ok().flatten().is_some() {
                panic!("the broker did not start; log:\n{}", roost.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the broker wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Waits until the log has `n` lines containing `needle`.
    pub fn wait_log(&self, needle: &str, n: usize) -> bool {
        poll(|| (self.log().lines().filter(|l| l.contains(needle)).count() >= n).then_some(()))
            .is_some()
    }

    /// Sends a signal (`HUP`, `TERM`) with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the process to exit (killing it after [`WAIT`]).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the broker did not exit; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Roost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn poll<T>(mut check: impl FnMut() -> Option<T>) -> Option<T> {
    roost_conformance::blocking::poll(WAIT, &mut check)
}

/// A directory of its own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp(tag: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("roost-service-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    TempDir(dir)
}

const LISTENER: &str =
    "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n";

/// `pid_file` in the configuration (relative to the file) and
/// `--pid-file`: written once listening, a stale file overwritten, removed
/// at a clean exit; an unwritable path stops the start with a message
/// naming it.
pub fn pid_file(binary: &Path) {
    let dir = temp("pid");
    let config = dir.path().join("roost.toml");
    std::fs::write(&config, format!("pid_file = \"roost.pid\"\n{LISTENER}")).expect("config");
    let pid_path = dir.path().join("roost.pid");
    std::fs::write(&pid_path, "4194303\n").expect("stale pid file");

    let mut roost = Roost::start(binary, &["--config", config.to_str().unwrap()], &[], 1);
    let expected = format!("{}\n", roost.pid());
    let written = poll(|| {
        std::fs::read_to_string(&pid_path)
            .ok()
            .filter(|c| *c == expected)
    });
    assert!(
        written.is_some(),
        "pid file not written; log:\n{}",
        roost.log()
    );
    // The listener is bound when the pid file is there.
    Raw::connected(
        roost.addrs[0],
        V311,
        &Connect {
            client_id: "pid-check",
            ..Default::default()
        },
    )
    .disconnect();
    roost.signal("TERM");
    assert!(roost.wait_exit().success(), "{}", roost.log());
    assert!(!pid_path.exists(), "pid file left behind");

    // The flag wins over the file.
    let flag_path = dir.path().join("flag.pid");
    let mut roost = Roost::start(
        binary,
        &[
            "--config",
            config.to_str().unwrap(),
            "--pid-file",
            flag_path.to_str().unwrap(),
        ],
        &[],
        1,
    );
    let expected = format!("{}\n", roost.pid());
    assert!(
        poll(|| std::fs::read_to_string(&flag_path)
            .ok()
            .filter(|c| *c == expected))
        .is_some(),
        "--pid-file not written; log:\n{}",
        roost.log()
    );
    assert!(!pid_path.exists(), "the configuration's pid_file was used");
    roost.signal("INT");
    assert!(roost.wait_exit().success(), "{}", roost.log());
    assert!(!flag_path.exists(), "pid file left behind");

    // An unwritable path: a clear start-up error, a failing exit.
    let bad = dir.path().join("no-such-dir").join("roost.pid");
    let mut roost = Roost::spawn(
        binary,
        &[
            "--config",
            config.to_str().unwrap(),
            "--pid-file",
            bad.to_str().unwrap(),
        ],
        &[],
    );
    let status = roost.wait_exit();
    let log = roost.log();
    assert!(
        !status.success(),
        "started with an unwritable pid file:\n{log}"
    );
    let message = format!(
        "pid_file {}: cannot write it: No such file or directory",
        bad.display()
    );
    assert!(log.contains(&message), "no {message:?} in:\n{log}");
    assert!(!log.contains("Os {"), "Rust debug output in:\n{log}");
}

/// A socket standing in for systemd's `$NOTIFY_SOCKET`.
struct Systemd {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Systemd {
    fn bind(dir: &Path) -> Systemd {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket.set_read_timeout(Some(WAIT)).expect("timeout");
        Systemd { socket, path }
    }

    /// The next notification, as text.
    fn next(&self, log: impl Fn() -> String) -> String {
        let mut buf = [0; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => panic!("no notification ({e}); log:\n{}", log()),
        }
    }
}

/// `Type=notify`: READY=1 once listening, RELOADING=1 (with
/// MONOTONIC_USEC) then READY=1 around a SIGHUP, STOPPING=1 at SIGTERM,
/// sent to the socket `$NOTIFY_SOCKET` names.
pub fn systemd_notify(binary: &Path) {
    let dir = temp("notify");
    let config = dir.path().join("roost.toml");
    std::fs::write(&config, LISTENER).expect("config");
    let systemd = Systemd::bind(dir.path());
    let mut roost = Roost::spawn(
        binary,
        &["--config", config.to_str().unwrap()],
        &[("NOTIFY_SOCKET", &systemd.path)],
    );
    let ready = systemd.next(|| roost.log());
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // Ready means listening: the address is logged and takes clients.
    let addr: SocketAddr = roost
        .log()
        .lines()
        .find(|l| l.contains("listening"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("READY=1 before listening:\n{}", roost.log()));
    Raw::connected(
        addr,
        V311,
        &Connect {
            client_id: "notify-check",
            ..Default::default()
        },
    )
    .disconnect();

    roost.signal("HUP");
    let reloading = systemd.next(|| roost.log());
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(usec.is_some_and(|u| u > 0), "{reloading:?}");
    let ready = systemd.next(|| roost.log());
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");

    roost.signal("TERM");
    let stopping = systemd.next(|| roost.log());
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(roost.wait_exit().success(), "{}", roost.log());
}

/// The SUBACK code a new anonymous client gets for `filter`.
fn suback(addr: SocketAddr, filter: &str) -> u8 {
    let mut client = Raw::connected(
        addr,
        V311,
        &Connect {
            client_id: "acl-probe",
            ..Default::default()
        },
    );
    let code = client.subscribe(1, filter, 0);
    client.disconnect();
    code
}

/// SIGHUP re-reads the configuration file: a changed `acl_file` takes
/// effect for new subscriptions; a broken file is logged and the running
/// configuration keeps serving.
pub fn reload_configuration(binary: &Path) {
    let dir = temp("reload");
    std::fs::write(dir.path().join("acl-a"), "topic readwrite a/#\n").expect("acl");
    std::fs::write(dir.path().join("acl-b"), "topic readwrite b/#\n").expect("acl");
    let config = dir.path().join("roost.toml");
    let with_acl = |acl: &str| format!("{LISTENER}acl_file = \"{acl}\"\n");
    std::fs::write(&config, with_acl("acl-a")).expect("config");
    let roost = Roost::start(binary, &["--config", config.to_str().unwrap()], &[], 1);
    let addr = roost.addrs[0];
    assert_eq!(suback(addr, "a/x"), 0);
    assert_eq!(suback(addr, "b/x"), 0x80);

    std::fs::write(&config, with_acl("acl-b")).expect("config");
    roost.signal("HUP");
    assert!(
        poll(|| (suback(addr, "b/x") == 0).then_some(())).is_some(),
        "the new acl_file was not applied; log:\n{}",
        roost.log()
    );
    assert_eq!(suback(addr, "a/x"), 0x80);

    // A broken file: logged on one line, the running configuration stays.
    std::fs::write(&config, format!("{}\nlimits = [", with_acl("acl-a"))).expect("config");
    roost.signal("HUP");
    assert!(
        roost.wait_log("keeping the running configuration", 1),
        "{}",
        roost.log()
    );
    let log = roost.log();
    let line = log
        .lines()
        .find(|l| l.contains("keeping the running configuration"))
        .expect("line");
    assert!(line.contains(&config.display().to_string()), "{line}");
    assert_eq!(suback(addr, "b/x"), 0, "{log}");
    assert_eq!(suback(addr, "a/x"), 0x80, "{log}");
}
