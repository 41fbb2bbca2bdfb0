//! Adversarial checks: a broker binary under attack, each attack with the
//! bound it must respect and what it measured.
//!
//! Where the scenarios ([`crate::runner`]) ask "does the broker speak MQTT
//! right", these ask "can one client hurt the broker or read what it must
//! not": memory blow-ups (WebSocket ping floods, password-check floods,
//! trickled packets), starvation of other clients, authorization holes
//! (wills, offline queues, session takeover, ACL pattern injection,
//! anonymous access on a public address), and the operator's tools
//! (`passwd add` with a hostile name, a corrupt journal).
//!
//! Every attack starts its own broker from a [`Binary`] with the
//! configuration it needs (written into a temporary folder, ports chosen by
//! the broker and read back from its log), so one runner serves every
//! runtime:
//!
//! ```text
//!  runtime-*/tests/attacks.rs ── attack_tests!(env!("CARGO_BIN_EXE_…"))
//!        │  one #[test] per attack, run one at a time (SERIAL)
//!        ▼
//!  attacks::run_one(name, &Binary) ──► Binary::start(config) ──► Broker (child process, pid, addrs)
//!        │                                    MemoryWatch: VmRSS every 5 ms, kills the broker past TRIP_KIB
//!        ▼
//!  Report { bound, measured, violations } ── passed() == violations.is_empty()
//! ```
//!
//! The memory bounds read `/proc/PID/status` (Linux). A broker that passes
//! [`TRIP_KIB`] is killed on the spot: on a vulnerable broker some of these
//! attacks grow without limit, and the test must not take the machine with
//! it.
//!
//! Every wait is bounded; each attack takes a few seconds.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::RawClient;
use crate::scenario::Target;
use crate::transport::Transport;
use crate::wire::{Body, Packet, Properties, Version, frame, kind};

mod access;
mod floods;
mod operator;

/// One mebibyte in KiB, the unit of `/proc/PID/status`.
pub const MIB_KIB: u64 = 1024;
/// The resident-memory bound of the memory attacks: 100 MiB.
pub const RSS_BOUND_KIB: u64 = 100 * MIB_KIB;
/// Past this resident size the watchdog kills the broker and the attack
/// fails at once (300 MiB).
pub const TRIP_KIB: u64 = 300 * MIB_KIB;
/// How long a broker may take to start and report its listeners.
const START_WAIT: Duration = Duration::from_secs(15);

/// Serializes attacks inside one test process: they measure memory and
/// latency, which a neighbour running at the same time would spoil.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// A broker executable (`roost`, `roost-smol`, `roost-mio`, or any program
/// with the same flags and configuration file).
#[derive(Clone, Debug)]
pub struct Binary {
    /// Path of the executable.
    pub path: PathBuf,
}

impl Binary {
    /// The executable at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Binary {
        Binary { path: path.into() }
    }

    /// The executable's file name, for messages.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// Starts the broker with `args` and waits until it has logged
    /// `listeners` listening addresses.
    pub fn spawn(&self, args: &[OsString], listeners: usize) -> Result<Broker, String> {
        let mut command = Command::new(&self.path);
        command.args(args);
        Broker::start(command, listeners, START_WAIT)
    }

    /// Writes `toml` to `roost.toml` in `dir` and starts the broker with
    /// `--config` on it.
    pub fn start(&self, dir: &Path, toml: &str, listeners: usize) -> Result<Broker, String> {
        let config = dir.join("roost.toml");
        std::fs::write(&config, toml).map_err(|e| format!("write {}: {e}", config.display()))?;
        self.spawn(&["--config".into(), config.into_os_string()], listeners)
    }

    /// Runs the executable with `args` to completion (killed after
    /// `within`): exit status (None when killed), stdout, stderr.
    pub fn run(&self, args: &[OsString], within: Duration) -> Result<Ran, String> {
        let mut command = Command::new(&self.path);
        command.args(args);
        crate::process::run(command, None, within)
    }
}

/// What [`Binary::run`] saw.
pub use crate::process::Ran;

/// The attacks' broker process: [`crate::process::Broker`], with a
/// memory watchdog.
pub use crate::process::Broker;

impl Broker {
    /// Starts a [`MemoryWatch`] on this broker that kills it past
    /// [`TRIP_KIB`].
    pub fn watch_memory(&self) -> MemoryWatch {
        MemoryWatch::start(self.pid(), TRIP_KIB, Some(self.child()))
    }
}

/// `(VmRSS, VmHWM)` of a process in KiB, from `/proc/PID/status`.
pub fn read_rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Samples a process's resident memory every 5 ms on a thread of its own;
/// past the trip level it kills the process (when it owns it) and stops.
pub struct MemoryWatch {
    stop: Arc<AtomicBool>,
    tripped: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    pid: u32,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a [`MemoryWatch`] saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// Highest VmRSS sampled, or the final VmHWM if higher, in KiB.
    pub peak_kib: u64,
    /// Whether the trip level was passed (and the broker killed, if owned).
    pub tripped: bool,
}

impl MemoryWatch {
    /// Watches `pid`; `kill` is the process to kill past `trip_kib`.
    pub fn start(pid: u32, trip_kib: u64, kill: Option<Arc<Mutex<Child>>>) -> MemoryWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let tripped = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, t, p) = (stop.clone(), tripped.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Some((rss, _)) = read_rss_kib(pid) else {
                    break;
                };
                p.fetch_max(rss, Ordering::Relaxed);
                if rss > trip_kib {
                    t.store(true, Ordering::Relaxed);
                    if let Some(child) = &kill {
                        let _ = child.lock().unwrap_or_else(|e| e.into_inner()).kill();
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        MemoryWatch {
            stop,
            tripped,
            peak,
            pid,
            thread: Some(thread),
        }
    }

    /// Whether the trip level has been passed.
    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }

    /// Stops sampling; the peak includes the kernel's own high-water mark
    /// (VmHWM) when the process is still there to ask.
    pub fn finish(mut self) -> Memory {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let hwm = if self.tripped() {
            0
        } else {
            read_rss_kib(self.pid).map_or(0, |(_, hwm)| hwm)
        };
        Memory {
            peak_kib: self.peak.load(Ordering::Relaxed).max(hwm),
            tripped: self.tripped(),
        }
    }
}

/// The outcome of one attack: the bound it asserts, what it measured, and
/// each way the broker broke the bound (none: passed).
#[derive(Clone, Debug)]
pub struct Report {
    /// Short name (`ws-ping-flood`).
    pub name: &'static str,
    /// The bound, in words.
    pub bound: String,
    /// Measurements, one per line (`peak RSS 41 MiB`).
    pub measured: Vec<String>,
    /// Each broken bound; empty when the broker held.
    pub violations: Vec<String>,
}

impl Report {
    fn new(name: &'static str, bound: impl Into<String>) -> Report {
        Report {
            name,
            bound: bound.into(),
            measured: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// Whether every bound held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    fn measure(&mut self, line: impl Into<String>) {
        self.measured.push(line.into());
    }

    fn violate(&mut self, line: impl Into<String>) {
        self.violations.push(line.into());
    }

    /// Records `what` as a violation unless `ok`.
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.violate(what());
        }
    }

    /// Records the memory measurement and checks it against
    /// [`RSS_BOUND_KIB`].
    fn memory(&mut self, m: Memory) {
        self.measure(format!("peak broker RSS {}", mib(m.peak_kib)));
        if m.tripped {
            self.violate(format!(
                "broker RSS passed {} (watchdog killed it)",
                mib(TRIP_KIB)
            ));
        } else if m.peak_kib >= RSS_BOUND_KIB {
            self.violate(format!(
                "peak broker RSS {} >= {}",
                mib(m.peak_kib),
                mib(RSS_BOUND_KIB)
            ));
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        writeln!(f, "{verdict} {}", self.name)?;
        writeln!(f, "  bound: {}", self.bound)?;
        for m in &self.measured {
            writeln!(f, "  measured: {m}")?;
        }
        for v in &self.violations {
            writeln!(f, "  VIOLATION: {v}")?;
        }
        Ok(())
    }
}

/// `n` KiB as `N MiB` (one decimal).
fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Milliseconds of a duration, one decimal.
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The attacks by name, in the order [`run_all`] runs them.
pub const ATTACKS: &[&str] = &[
    "ws-ping-flood",
    "auth-flood",
    "keepalive-trickle",
    "will-authorization",
    "offline-queue-acl",
    "session-identity",
    "acl-pattern-injection",
    "passwd-hostile-names",
    "anonymous-public-bind",
    "inbound-pipelining",
    "corrupt-journal",
];

/// Runs one attack by name against a broker started from `bin`.
pub async fn run_one(name: &str, bin: &Binary) -> Report {
    match name {
        "ws-ping-flood" => floods::ws_ping_flood(bin).await,
        "auth-flood" => floods::auth_flood(bin).await,
        "keepalive-trickle" => floods::keepalive_trickle(bin).await,
        "inbound-pipelining" => floods::inbound_pipelining(bin).await,
        "will-authorization" => access::will_authorization(bin).await,
        "offline-queue-acl" => access::offline_queue_acl(bin).await,
        "session-identity" => access::session_identity(bin).await,
        "acl-pattern-injection" => access::acl_pattern_injection(bin).await,
        "anonymous-public-bind" => access::anonymous_public_bind(bin).await,
        "passwd-hostile-names" => operator::passwd_hostile_names(bin),
        "corrupt-journal" => operator::corrupt_journal(bin).await,
        other => {
            let mut r = Report::new("unknown", "a known attack name");
            r.violate(format!("no attack named {other:?} (see ATTACKS)"));
            r
        }
    }
}

/// Runs every attack in [`ATTACKS`], one after the other.
pub async fn run_all(bin: &Binary) -> Vec<Report> {
    let mut out = Vec::new();
    for name in ATTACKS {
        out.push(run_one(name, bin).await);
    }
    out
}

/// For tests: runs one attack on a fresh multi-threaded tokio runtime
/// (holding [`SERIAL`]), prints its report, and panics with the report if
/// a bound was broken.
pub fn run_one_blocking(name: &str, bin: &Binary) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(run_one(name, bin));
    rt.shutdown_timeout(Duration::from_secs(1));
    // Passing reports are printed too: what they measured is the point.
    assert!(report.passed(), "[{}] {report}", bin.name());
    eprintln!("[{}] {report}", bin.name());
}

/// Declares one `#[test]` per attack against the broker executable at
/// `$bin` (an expression giving its path, usually
/// `env!("CARGO_BIN_EXE_roost")`).
#[macro_export]
macro_rules! attack_tests {
    ($bin:expr) => {
        $crate::attack_tests!(@one $bin, ws_ping_flood, "ws-ping-flood");
        $crate::attack_tests!(@one $bin, auth_flood, "auth-flood");
        $crate::attack_tests!(@one $bin, keepalive_trickle, "keepalive-trickle");
        $crate::attack_tests!(@one $bin, will_authorization, "will-authorization");
        $crate::attack_tests!(@one $bin, offline_queue_acl, "offline-queue-acl");
        $crate::attack_tests!(@one $bin, session_identity, "session-identity");
        $crate::attack_tests!(@one $bin, acl_pattern_injection, "acl-pattern-injection");
        $crate::attack_tests!(@one $bin, passwd_hostile_names, "passwd-hostile-names");
        $crate::attack_tests!(@one $bin, anonymous_public_bind, "anonymous-public-bind");
        $crate::attack_tests!(@one $bin, inbound_pipelining, "inbound-pipelining");
        $crate::attack_tests!(@one $bin, corrupt_journal, "corrupt-journal");
    };
    (@one $bin:expr, $fn:ident, $name:literal) => {
        #[test]
        fn $fn() {
            $crate::attacks::run_one_blocking($name, &$crate::attacks::Binary::new($bin));
        }
    };
}

// ---------------------------------------------------------------------------
// Shared client helpers.

/// A plain-TCP target at `addr`.
fn tcp(addr: SocketAddr) -> Target {
    Target {
        host: addr.ip().to_string(),
        port: addr.port(),
        transport: Transport::default(),
    }
}

/// A CONNECT with everything the attacks need (the suite's
/// [`crate::wire::Connect`] has no user name or password).
#[derive(Clone, Debug)]
struct Login<'a> {
    version: Version,
    client_id: &'a str,
    clean: bool,
    keep_alive: u16,
    user: Option<&'a str>,
    password: Option<&'a str>,
    /// Will topic and payload (QoS 0, not retained).
    will: Option<(&'a str, &'a [u8])>,
    /// MQTT 5 CONNECT properties.
    props: Properties,
}

impl<'a> Login<'a> {
    fn new(version: Version, client_id: &'a str) -> Login<'a> {
        Login {
            version,
            client_id,
            clean: true,
            keep_alive: 60,
            user: None,
            password: None,
            will: None,
            props: Properties::new(),
        }
    }

    fn user(mut self, user: &'a str, password: &'a str) -> Self {
        self.user = Some(user);
        self.password = Some(password);
        self
    }

    fn persistent(mut self) -> Self {
        self.clean = false;
        self
    }

    fn encode(&self) -> Vec<u8> {
        let mut flags = u8::from(self.clean) << 1;
        if self.will.is_some() {
            flags |= 0x04;
        }
        if self.user.is_some() {
            flags |= 0x80;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        let mut body = Body::new()
            .str("MQTT")
            .u8(self.version.level())
            .u8(flags)
            .u16(self.keep_alive)
            .props_if(self.version, &self.props)
            .str(self.client_id);
        if let Some((topic, payload)) = self.will {
            body = body
                .props_if(self.version, &Properties::new())
                .str(topic)
                .bin(payload);
        }
        if let Some(u) = self.user {
            body = body.str(u);
        }
        if let Some(p) = self.password {
            body = body.bin(p.as_bytes());
        }
        frame(kind::CONNECT << 4, &body)
    }

    /// Opens a connection, sends this CONNECT and waits up to `within` for
    /// the CONNACK: the client, its return code and session-present flag.
    async fn attempt(
        &self,
        addr: SocketAddr,
        within: Duration,
    ) -> Result<(RawClient, u8, bool), String> {
        let go = async {
            let mut c = RawClient::open(&tcp(addr), self.version)
                .await
                .map_err(|e| e.to_string())?;
            c.send(&self.encode()).await.map_err(|e| e.to_string())?;
            match c.recv(within).await {
                Ok(Packet::Connack(a)) => Ok((c, a.code, a.session_present)),
                Ok(other) => Err(format!("{other} instead of CONNACK")),
                Err(e) => Err(format!("no CONNACK: {e}")),
            }
        };
        tokio::time::timeout(within, go)
            .await
            .unwrap_or_else(|_| Err(format!("no CONNACK within {}", ms(within))))
    }

    /// [`Login::attempt`] requiring success (code 0).
    async fn connect(&self, addr: SocketAddr) -> Result<(RawClient, bool), String> {
        let (c, code, present) = self.attempt(addr, Duration::from_secs(5)).await?;
        if code != 0 {
            return Err(format!(
                "CONNACK 0x{code:02x} for {:?} (user {:?})",
                self.client_id, self.user
            ));
        }
        Ok((c, present))
    }
}

/// A plain-TCP CONNECT (3.1.1, anonymous unless `user` is given): how long
/// the CONNACK took and its code, or why none came within `within`.
async fn probe(
    addr: SocketAddr,
    client_id: &str,
    user: Option<(&str, &str)>,
    within: Duration,
) -> Result<(Duration, u8), String> {
    let mut login = Login::new(Version::V311, client_id);
    if let Some((u, p)) = user {
        login = login.user(u, p);
    }
    let start = Instant::now();
    let (c, code, _) = login.attempt(addr, within).await?;
    let took = start.elapsed();
    let _ = c.disconnect().await;
    Ok((took, code))
}

/// A password-file line for `user` with an Argon2id hash of `password` at
/// cost `m_kib`/`t` (the broker verifies with the parameters in the line).
fn passwd_line(user: &str, password: &str, m_kib: u32, t: u32) -> String {
    use argon2::password_hash::PasswordHasher;
    let params = argon2::Params::new(m_kib, t, 1, None).expect("argon2 params");
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let hash = hasher
        .hash_password(password.as_bytes())
        .expect("argon2 hash");
    format!("{user}:{hash}\n")
}

/// A TOML string literal for a path.
fn toml_path(path: &Path) -> String {
    format!("{:?}", path.to_string_lossy())
}

/// A temporary folder for one attack's files.
fn temp_dir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("roost-attack-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_encodes_credentials_and_will() {
        let mut l = Login::new(Version::V311, "c").user("u", "p");
        l.will = Some(("t", b"w"));
        let b = l.encode();
        // flags: user, password, will, clean
        assert_eq!(b[9], 0x80 | 0x40 | 0x04 | 0x02);
        assert!(b.ends_with(&[0, 1, b'u', 0, 1, b'p']));
    }
}
