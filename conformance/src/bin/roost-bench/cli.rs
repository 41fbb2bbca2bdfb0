//! Command-line interface.

use clap::{Args, Parser, Subcommand};

/// roost-bench: an MQTT 3.1.1 load generator for any broker on loopback.
///
/// Every run ends by itself: publishers stop at `--count` or `--duration`,
/// stragglers get `--drain` seconds, and `--deadline` cuts everything short
/// (the report is then marked partial).
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Scenarios.
#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// P publishers, one subscriber on a wildcard filter.
    Fanin {
        /// Number of publishers.
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        #[command(flatten)]
        common: Common,
    },
    /// One publisher, N subscribers on one topic.
    Fanout {
        /// Number of subscribers.
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[command(flatten)]
        common: Common,
    },
    /// C publishers, each to its own topic with its own subscriber (QoS 1 by default).
    Pairs {
        /// Number of publisher/subscriber pairs.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[command(flatten)]
        common: Common,
    },
    /// A paced publisher to one subscriber, for end-to-end latency
    /// (`--rate` defaults to 10,000 msgs/s here).
    Latency {
        #[command(flatten)]
        common: Common,
    },
    /// Open N idle connections; connections/s and broker memory per connection.
    Conns {
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Connection attempts in flight at once (kept below Mosquitto's
        /// listen backlog of 100, past which SYNs are dropped and retried after 1 s).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Processes to open them from (this one and `processes - 1`
        /// children, each opening an equal share with its own
        /// `--concurrency`), for more connections than one process's
        /// descriptor limit allows. All are held open together while the
        /// broker's memory is read.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        processes: u32,
        /// Seconds to keep every connection open after the measurement.
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
        /// Run as a child of `--processes`: open the connections, print one
        /// JSON line, keep them open until standard input closes.
        #[arg(long, hide = true)]
        child: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Store R retained messages on distinct topics, then receive them with a wildcard.
    Retained {
        /// Retained messages to store.
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Create S subscriptions over many idle clients, then measure one matching topic.
    Subs {
        /// Subscriptions to create.
        #[arg(long, default_value_t = 1_000_000)]
        subscriptions: usize,
        /// Idle connections the subscriptions are spread over.
        #[arg(long, default_value_t = 1000)]
        sub_connections: usize,
        #[command(flatten)]
        common: Common,
    },
    /// A trivial in-process "broker" (no sessions, no queues limits) that only
    /// acknowledges and forwards: a fast sink to measure the generator's ceiling.
    Sink {
        /// Address to listen on (loopback only).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port to listen on.
        #[arg(long, default_value_t = 18830)]
        port: u16,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 600)]
        deadline: u64,
    },
}

/// Options every load scenario shares.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Broker host (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Port the subscribers connect to (`fanin`, `fanout`, `latency`,
    /// `pairs`), when it is not `--port`: another node of a cluster, so
    /// every message crosses between nodes.
    #[arg(long)]
    pub sub_port: Option<u16>,
    /// Seconds to wait after the subscriptions are made, before publishing:
    /// a cluster's other nodes learn of them a moment later.
    #[arg(long, default_value_t = 0.0)]
    pub settle: f64,
    /// QoS for publishing and subscribing (default 0; 1 for `pairs`).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: Option<u8>,
    /// Payload bytes per message (at least 16: the stamp).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Seconds to publish for (default 10 unless --count is given).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Messages per publisher.
    #[arg(long)]
    pub count: Option<u64>,
    /// Total messages per second over all publishers, paced (default: as fast
    /// as possible; 10,000 for `latency`). Paced messages carry their intended
    /// send time, so a stalled broker shows as latency, not as a slower schedule.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Un-acknowledged QoS 1/2 messages per publisher; also the end-to-end
    /// window (messages per publisher not yet delivered to every subscriber).
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    /// Do not wait for deliveries: publish as fast as the broker reads (QoS 0)
    /// or acknowledges (QoS 1/2), letting the broker queue without limit.
    #[arg(long)]
    pub open_loop: bool,
    /// Seconds to wait for outstanding deliveries after publishers stop.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Hard limit on the whole run in seconds; partial results are reported.
    #[arg(long, default_value_t = 300.0)]
    pub deadline: f64,
    /// The broker's pid, for its RSS and CPU time from /proc.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// A name for the broker under test, copied into the report.
    #[arg(long, default_value = "broker")]
    pub label: String,
    /// Print the report as one JSON object after the human line.
    #[arg(long)]
    pub json: bool,
}

impl Common {
    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `host:port` of the subscribers (`--sub-port`, or `--port`).
    pub fn sub_addr(&self) -> String {
        format!("{}:{}", self.host, self.sub_port.unwrap_or(self.port))
    }

    /// Waits `--settle` seconds (after subscribing).
    pub async fn settle(&self) {
        if self.settle > 0.0 {
            tokio::time::sleep(std::time::Duration::from_secs_f64(self.settle)).await;
        }
    }

    /// The publishing time limit: `--duration`, or 10 s when neither it nor `--count` is set.
    pub fn duration_limit(&self) -> Option<f64> {
        match (self.duration, self.count) {
            (Some(d), _) => Some(d),
            (None, Some(_)) => None,
            (None, None) => Some(10.0),
        }
    }
}
