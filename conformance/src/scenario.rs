//! What a scenario is, what it returns, and the context it runs in.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::transport::Transport;
use crate::wire::Version;

/// Where the broker under test listens, and how to reach it.
#[derive(Clone, Debug)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TCP, TLS, WebSocket or WebSocket over TLS; every scenario runs
    /// unchanged over any of them.
    pub transport: Transport,
}

/// Settings shared by every scenario of one run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The broker.
    pub target: Target,
    /// The broker's maximum packet size in bytes, used by the oversize
    /// scenario when the broker does not announce one itself (MQTT 3.1.1
    /// has no way to announce it).
    pub max_packet_size: u32,
    /// Distinguishes this run's client ids and topics from any other run's
    /// (and from leftovers of an earlier, interrupted run).
    pub run_id: String,
}

impl Config {
    /// A configuration for `host:port` over plain TCP with a fresh run id
    /// and the protocol's largest packet size (268,435,455 bytes of
    /// remaining length). Set `target.transport` for TLS or WebSocket.
    pub fn new(host: &str, port: u16) -> Self {
        Config {
            target: Target {
                host: host.to_owned(),
                port,
                transport: Transport::default(),
            },
            max_packet_size: 268_435_455,
            run_id: fresh_run_id(),
        }
    }
}

/// A short id that differs between runs. Not security-relevant: it only keeps
/// two runs against one broker from seeing each other's sessions and topics.
pub fn fresh_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 40);
    // Fold to 24 bits: six hex digits keep client ids well under the 23 bytes
    // every 3.1.1 broker must accept.
    let folded = (mixed ^ (mixed >> 24) ^ (mixed >> 48)) & 0xff_ffff;
    format!("{folded:06x}")
}

/// What one scenario's run gives back.
pub type ScenarioResult = Result<Outcome, Failure>;

/// A scenario that did not fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// Every check held; the note says which of the allowed behaviours the
    /// broker showed (for example "closed without DISCONNECT").
    PassNoted(String),
    /// The scenario could not check anything, for the reason given (for
    /// example the broker announced no Topic Alias Maximum).
    Skip(String),
}

/// A check that did not hold: what the scenario expected and what it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What the specification (or the Paho case) requires.
    pub expected: String,
    /// What the broker did instead.
    pub saw: String,
}

impl Failure {
    /// A failure saying `expected X, saw Y`.
    pub fn new(expected: impl Into<String>, saw: impl Into<String>) -> Self {
        Failure {
            expected: expected.into(),
            saw: saw.into(),
        }
    }

    /// Prefixes the expectation with the step it belongs to.
    pub fn during(mut self, step: &str) -> Self {
        self.expected = format!("{step}: {}", self.expected);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected {}, saw {}", self.expected, self.saw)
    }
}

impl std::error::Error for Failure {}

/// Fails with `expected`/`saw` unless `cond` holds.
pub fn ensure(
    cond: bool,
    expected: impl Into<String>,
    saw: impl FnOnce() -> String,
) -> Result<(), Failure> {
    if cond {
        Ok(())
    } else {
        Err(Failure::new(expected, saw()))
    }
}

/// The future a scenario returns.
pub type ScenarioFuture = Pin<Box<dyn Future<Output = ScenarioResult> + Send>>;

/// One named behaviour checked against a broker.
#[derive(Clone)]
pub struct Scenario {
    /// Unique name, `v311.` / `v5.` prefixed; `--filter` matches on it.
    pub name: &'static str,
    /// The protocol version the scenario speaks.
    pub version: Version,
    /// One line on what is checked.
    pub summary: &'static str,
    /// The whole scenario must finish within this.
    pub time_limit: Duration,
    /// Set when Mosquitto 2.0 is known to behave differently from what this
    /// scenario (and roost) require, with the reason; such a scenario still
    /// runs and still fails against Mosquitto.
    pub expected_mosquitto_difference: Option<&'static str>,
    /// The scenario itself.
    pub run: fn(Ctx) -> ScenarioFuture,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// What a running scenario knows: the broker, its version and a namespace for
/// client ids and topics no other scenario uses.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The run's configuration.
    pub config: Config,
    /// Protocol version of this scenario.
    pub version: Version,
    /// The scenario's position in the full list (keeps client ids short).
    pub index: usize,
    /// The scenario's name.
    pub name: &'static str,
}

impl Ctx {
    /// The broker.
    pub fn target(&self) -> &Target {
        &self.config.target
    }

    /// A client id unique to this run, scenario and `role` (kept short
    /// because 3.1.1 only promises ids of up to 23 bytes).
    pub fn client_id(&self, role: &str) -> String {
        format!("rc{}{:03}{role}", self.config.run_id, self.index)
    }

    /// A topic under this scenario's private prefix.
    pub fn topic(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.prefix())
    }

    /// The scenario's private topic prefix (no trailing slash).
    pub fn prefix(&self) -> String {
        format!("rc/{}/{}", self.config.run_id, self.name)
    }
}

/// Seconds as a `Duration`, for readable time limits.
pub const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Milliseconds as a `Duration`.
pub const fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
