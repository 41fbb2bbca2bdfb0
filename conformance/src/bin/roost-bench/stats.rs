//! Clocks, delivery accounting (latency, loss, duplicates) and the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Bytes at the front of every payload: send time (u64), publisher id (u32),
/// sequence number (u32), all little-endian.
pub const STAMP_LEN: usize = 16;

static START: OnceLock<Instant> = OnceLock::new();

/// The process-wide epoch; call once at start so later calls are cheap.
pub fn epoch() -> Instant {
    *START.get_or_init(Instant::now)
}

/// Monotonic nanoseconds since the bench process started. Publisher and
/// subscriber live in this one process, so their stamps share this clock.
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Writes the stamp into the first [`STAMP_LEN`] bytes of `payload`.
pub fn stamp(payload: &mut [u8], ts: u64, publisher: u32, seq: u32) {
    payload[0..8].copy_from_slice(&ts.to_le_bytes());
    payload[8..12].copy_from_slice(&publisher.to_le_bytes());
    payload[12..16].copy_from_slice(&seq.to_le_bytes());
}

pub fn read_stamp(payload: &[u8]) -> Option<(u64, u32, u32)> {
    let s = payload.get(..STAMP_LEN)?;
    Some((
        u64::from_le_bytes(s[0..8].try_into().ok()?),
        u32::from_le_bytes(s[8..12].try_into().ok()?),
        u32::from_le_bytes(s[12..16].try_into().ok()?),
    ))
}

/// What all subscribers of a run have received, shared through the run.
pub struct Stats {
    /// End-to-end latency in nanoseconds.
    pub hist: Histogram<u64>,
    /// PUBLISH packets delivered, duplicates included.
    pub received: u64,
    /// Deliveries whose (publisher, sequence) this subscriber had already seen.
    pub duplicates: u64,
    /// Deliveries whose payload carried no stamp (not ours).
    pub foreign: u64,
    /// First and last delivery time (ns since start), 0 until one arrives.
    pub first_recv: u64,
    /// See `first_recv`.
    pub last_recv: u64,
}

/// A latency histogram in ns: 1 µs to one hour at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 3_600_000_000_000, 3)
        .expect("static histogram bounds are valid")
}

impl Stats {
    /// Empty accounting.
    pub fn new() -> Self {
        Stats {
            hist: histogram(),
            received: 0,
            duplicates: 0,
            foreign: 0,
            first_recv: 0,
            last_recv: 0,
        }
    }

    /// Deliveries that were not duplicates.
    pub fn unique(&self) -> u64 {
        self.received - self.duplicates
    }
}

/// One subscriber's memory of which (publisher, sequence) pairs it has seen.
///
/// A bitset per publisher rather than "next expected sequence" because QoS 1
/// redelivery and multi-publisher interleaving are exactly what it must catch.
pub struct Receiver {
    seen: Vec<Vec<u64>>,
    /// If set, latency is measured from this instant instead of the payload's
    /// stamp (retained messages were stamped long before anyone subscribed).
    pub latency_base: Option<u64>,
}

impl Receiver {
    /// A receiver expecting publisher ids below `publishers` (it grows if not).
    pub fn new(publishers: usize) -> Self {
        Receiver {
            seen: (0..publishers).map(|_| Vec::new()).collect(),
            latency_base: None,
        }
    }

    /// Accounts one delivered payload that arrived at `now`.
    pub fn record(&mut self, payload: &[u8], now: u64, stats: &mut Stats) {
        stats.received += 1;
        if stats.first_recv == 0 {
            stats.first_recv = now;
        }
        stats.last_recv = now;
        let Some((ts, publisher, seq)) = read_stamp(payload) else {
            stats.foreign += 1;
            return;
        };
        let base = self.latency_base.unwrap_or(ts);
        stats
            .hist
            .saturating_record(now.saturating_sub(base).max(1_000));
        let p = publisher as usize;
        if p >= self.seen.len() {
            self.seen.resize_with(p + 1, Vec::new);
        }
        let bits = &mut self.seen[p];
        let (word, bit) = (seq as usize / 64, seq % 64);
        if word >= bits.len() {
            // Doubling keeps growth amortised; it happens O(log n) times per run.
            bits.resize((word + 1).max(bits.len() * 2), 0);
        }
        if bits[word] & (1 << bit) != 0 {
            stats.duplicates += 1;
        } else {
            bits[word] |= 1 << bit;
        }
    }
}

/// CPU time (user + system) of a process in nanoseconds, from `/proc`.
pub fn cpu_ns(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let s = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces; fields are counted after its ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture it exposes.
    Some(ticks * 10_000_000)
}

/// Context switches (voluntary + involuntary) of every thread of a
/// process, from `/proc/PID/task/*/status`: for an event loop, a voluntary
/// one is a wait for readiness, so their count per message says how often
/// the loop went to sleep and was woken.
pub fn ctx_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(status) = std::fs::read_to_string(task.ok()?.path().join("status")) else {
            continue; // a thread that ended meanwhile
        };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().ok()?;
            }
        }
    }
    Some(total)
}

/// Resident set size of a process in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize, Default)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest recorded.
    pub max_us: f64,
}

/// The result of one scenario run, printed as a line and optionally as JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Free-form label of the broker under test (`--label`).
    pub label: String,
    /// QoS used for publishing and subscribing.
    pub qos: u8,
    /// Payload bytes per message.
    pub payload: usize,
    /// PUBLISH packets the publishers wrote.
    pub sent: u64,
    /// Deliveries the subscribers should have seen.
    pub expected: u64,
    /// Deliveries seen, duplicates included.
    pub received: u64,
    /// Deliveries seen more than once by the same subscriber.
    pub duplicates: u64,
    /// `expected - unique deliveries` (negative would mean a counting bug).
    pub loss: i64,
    /// Seconds from the first publish to the last delivery.
    pub elapsed_s: f64,
    /// Unique deliveries per second over `elapsed_s`.
    pub delivered_per_s: f64,
    /// End-to-end latency.
    pub latency: Latency,
    /// The generator's own CPU per unique delivery, in nanoseconds.
    pub gen_cpu_ns_per_msg: Option<f64>,
    /// The broker's CPU per unique delivery (needs `--broker-pid`).
    pub broker_cpu_ns_per_msg: Option<f64>,
    /// Cores the generator kept busy on average since the clock started (1.0 = one core).
    pub gen_cpu_cores: Option<f64>,
    /// Cores the broker kept busy on average (needs `--broker-pid`).
    pub broker_cpu_cores: Option<f64>,
    /// The broker's resident memory at the end (needs `--broker-pid`).
    pub broker_rss_kb: Option<u64>,
    /// True if the hard deadline cut the run short.
    pub partial: bool,
    /// Scenario-specific measurements (connections per second, RSS deltas, ...).
    pub extra: BTreeMap<String, f64>,
    /// Errors raised by clients during the run (first few).
    pub errors: Vec<String>,
}

impl Report {
    /// Fills the latency fields from a histogram in nanoseconds.
    pub fn latency_from(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |v: u64| v as f64 / 1_000.0;
        Latency {
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }

    /// One human-readable line.
    pub fn human(&self) -> String {
        let mut s = format!(
            "{} [{}] qos={} payload={}B: {:.0} {} delivered, latency p50 {} p99 {} p99.9 {} max {}, sent {} expected {} received {} loss {} dup {}",
            self.scenario,
            self.label,
            self.qos,
            self.payload,
            self.delivered_per_s,
            // In `conns` the unit delivered is a CONNACK.
            if self.scenario == "conns" {
                "conn/s"
            } else {
                "msg/s"
            },
            fmt_us(self.latency.p50_us),
            fmt_us(self.latency.p99_us),
            fmt_us(self.latency.p999_us),
            fmt_us(self.latency.max_us),
            self.sent,
            self.expected,
            self.received,
            self.loss,
            self.duplicates,
        );
        if let (Some(c), Some(u)) = (self.gen_cpu_ns_per_msg, self.gen_cpu_cores) {
            let _ = write!(s, ", gen CPU {c:.0} ns/msg ({u:.2} cores)");
        }
        if let (Some(c), Some(u)) = (self.broker_cpu_ns_per_msg, self.broker_cpu_cores) {
            let _ = write!(s, ", broker CPU {c:.0} ns/msg ({u:.2} cores)");
        }
        if let Some(r) = self.broker_rss_kb {
            let _ = write!(s, ", broker RSS {:.1} MiB", r as f64 / 1024.0);
        }
        for (k, v) in &self.extra {
            let _ = write!(s, ", {k}={v:.2}");
        }
        if self.partial {
            s.push_str(" [PARTIAL: hard deadline hit]");
        }
        for e in &self.errors {
            let _ = write!(s, "\n  error: {e}");
        }
        s
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2}s", us / 1_000_000.0)
    } else if us >= 1_000.0 {
        format!("{:.2}ms", us / 1_000.0)
    } else {
        format!("{us:.0}us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_counts_duplicates_per_publisher() {
        let mut st = Stats::new();
        let mut rx = Receiver::new(1);
        let mut p = [0u8; 20];
        for (publisher, seq) in [(0, 1), (3, 1), (0, 1), (0, 700), (3, 1)] {
            stamp(&mut p, 5, publisher, seq);
            rx.record(&p, 10_000, &mut st);
        }
        assert_eq!((st.received, st.duplicates, st.unique()), (5, 2, 3));
        rx.record(b"short", 10_000, &mut st);
        assert_eq!(st.foreign, 1);
    }
}
