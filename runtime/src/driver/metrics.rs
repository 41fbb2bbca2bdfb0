//! What `/metrics` and `/stats.json` say. The counters are plain integers
//! kept where the work happens (the engine's [`roost_core::broker::Stats`],
//! the driver's own below); a Prometheus registry is built from them on
//! each scrape, so nothing on the message path takes a lock or allocates
//! for metrics.

use super::{Driver, Phase};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use roost_core::broker::Instant;
use std::fmt::Write as _;

/// Topics the status page lists.
const BUSIEST: usize = 10;

/// The driver's own counters.
pub(super) struct DriverMetrics {
    /// When the store job out now started, and how many operations it
    /// carries.
    store_started: Option<(Instant, usize)>,
    /// Seconds from handing a store job to a worker to its result.
    store_seconds: Histogram,
    /// Storage operations per store job (one commit).
    store_ops: Histogram,
    /// HTTP requests answered.
    pub(super) http_requests: u64,
}

impl Default for DriverMetrics {
    fn default() -> Self {
        DriverMetrics {
            store_started: None,
            // 100 µs .. ~3 s.
            store_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
            ),
            // 1 .. 32768 operations.
            store_ops: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                1.0, 2.0, 16,
            )),
            http_requests: 0,
        }
    }
}

impl DriverMetrics {
    /// A store job with `ops` operations left for a worker.
    pub(super) fn store_started(&mut self, now: Instant, ops: usize) {
        self.store_started = Some((now, ops));
    }

    /// The store job came back.
    pub(super) fn store_done(&mut self, now: Instant) {
        if let Some((at, ops)) = self.store_started.take() {
            self.store_seconds
                .observe(now.saturating_duration_since(at).as_secs_f64());
            self.store_ops.observe(ops as f64);
        }
    }
}

type Labels = Vec<(&'static str, String)>;

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn counters(
    registry: &mut Registry,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, u64)>,
) {
    let family = Family::<Labels, Counter>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).inc_by(value);
    }
    registry.register(name, help, family);
}

fn by_qos(values: [u64; 3]) -> impl Iterator<Item = (Labels, u64)> {
    values
        .into_iter()
        .enumerate()
        .map(|(qos, n)| (vec![("qos", qos.to_string())], n))
}

impl Driver {
    /// The Prometheus exposition (OpenMetrics text) of every counter.
    pub fn render_metrics(&self, now: Instant) -> String {
        let broker = &self.broker;
        let stats = broker.stats();
        let totals = broker.session_totals();
        let mut r = Registry::with_prefix("roost");
        gauge(
            &mut r,
            "connections",
            "Clients connected (CONNECT accepted)",
            broker.connected_count() as u64,
        );
        gauge(
            &mut r,
            "connections_open",
            "MQTT transport connections open, connected or not yet",
            broker.connection_count() as u64,
        );
        counter(
            &mut r,
            "connections_accepted",
            "Connections accepted (CONNACK success)",
            stats.connections_total,
        );
        counters(
            &mut r,
            "listener_connections",
            "Transport connections accepted, by listener",
            self.listeners.iter().enumerate().map(|(i, l)| {
                (
                    vec![
                        ("listener", i.to_string()),
                        ("protocol", l.config.protocol.name().to_string()),
                    ],
                    l.accepted,
                )
            }),
        );
        gauge(
            &mut r,
            "sessions",
            "Sessions, connected or not",
            totals.sessions as u64,
        );
        gauge(
            &mut r,
            "sessions_persistent",
            "Sessions that outlive their connection (expiry interval above 0)",
            totals.persistent as u64,
        );
        counter(
            &mut r,
            "sessions_expired",
            "Sessions ended by their expiry interval",
            stats.sessions_expired,
        );
        gauge(
            &mut r,
            "subscriptions",
            "Subscriptions, of clients and in-process subscribers",
            broker.subscription_count() as u64,
        );
        gauge(
            &mut r,
            "retained_messages",
            "Retained messages",
            broker.retained_count() as u64,
        );
        counters(
            &mut r,
            "messages_received",
            "PUBLISH packets received from clients, by QoS",
            by_qos(stats.received_by_qos),
        );
        counters(
            &mut r,
            "messages_sent",
            "PUBLISH packets sent to clients, by QoS",
            by_qos(stats.sent_by_qos),
        );
        counters(
            &mut r,
            "payload_bytes_received",
            "Payload bytes of the PUBLISH packets received from clients, by QoS",
            by_qos(stats.payload_received_by_qos),
        );
        counters(
            &mut r,
            "payload_bytes_sent",
            "Payload bytes of the PUBLISH packets sent to clients, by QoS",
            by_qos(stats.payload_sent_by_qos),
        );
        counter(
            &mut r,
            "bytes_received",
            "Bytes received from MQTT clients (after TLS and WebSocket framing)",
            stats.bytes_received,
        );
        counter(
            &mut r,
            "bytes_sent",
            "Bytes sent to MQTT clients (before TLS and WebSocket framing)",
            stats.bytes_sent,
        );
        counters(
            &mut r,
            "messages_dropped",
            "Messages not delivered, by reason: a full queue (or a QoS 0 message for a \
             connection over its output limit), over the receiver's maximum packet size, \
             expired while queued, denied by the authorization policy (inbound publishes \
             and deliveries)",
            [
                ("queue_full", stats.dropped_queue_full),
                ("too_large", stats.dropped_too_large),
                ("expired", stats.dropped_expired),
                (
                    "denied",
                    stats.publishes_denied + stats.deliveries_denied + stats.wills_denied,
                ),
            ]
            .map(|(reason, n)| (vec![("reason", reason.to_string())], n)),
        );
        gauge(
            &mut r,
            "messages_inflight",
            "Outbound QoS 1/2 messages sent and not yet acknowledged",
            totals.inflight as u64,
        );
        gauge(
            &mut r,
            "messages_queued",
            "Messages queued in sessions, not yet sent",
            totals.queued as u64,
        );
        counter(
            &mut r,
            "auth_failures",
            "CONNECTs refused by authentication",
            stats.auth_failures,
        );
        let (running, waiting) = self.password_checks();
        gauge(
            &mut r,
            "password_checks_running",
            "Password checks running on workers",
            running as u64,
        );
        gauge(
            &mut r,
            "password_checks_waiting",
            "Password checks waiting for a worker",
            waiting as u64,
        );
        counter(
            &mut r,
            "store_failures",
            "Acknowledgements refused because the store failed",
            stats.store_failures,
        );
        r.register_with_unit(
            "store_batch_duration",
            "Time from handing a store job (one commit of every batch waiting) to a worker \
             until its result",
            Unit::Seconds,
            self.metrics.store_seconds.clone(),
        );
        r.register(
            "store_batch_operations",
            "Storage operations per store job",
            self.metrics.store_ops.clone(),
        );
        gauge(
            &mut r,
            "store_interrupted",
            "1 while the store is interrupted (a full disk) and acknowledgements are refused",
            u64::from(self.store_outage.is_some()),
        );
        counter(
            &mut r,
            "http_requests",
            "HTTP requests answered on the [http] listener",
            self.metrics.http_requests,
        );
        if let Some(busy) = self.busy_probe.and_then(|probe| probe()) {
            r.register_with_unit(
                "engine_busy",
                "CPU time of the thread that runs the engine and the driver: the engine \
                 loop's busy time (its rate over time is the loop's utilisation, 1.0 = saturated)",
                Unit::Seconds,
                ConstCounter::new(busy.as_secs_f64()),
            );
        }
        r.register_with_unit("uptime", "Time since the broker started", Unit::Seconds, {
            let g = Gauge::<i64>::default();
            let up = now.saturating_duration_since(stats.started).as_secs();
            g.set(i64::try_from(up).unwrap_or(i64::MAX));
            g
        });
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &r);
        out
    }

    /// The status page's numbers, as JSON.
    pub fn render_stats_json(&self, now: Instant) -> String {
        let broker = &self.broker;
        let stats = broker.stats();
        let totals = broker.session_totals();
        let lingering = self
            .conns
            .values()
            .filter(|io| io.http.is_none() && io.phase != Phase::Open)
            .count();
        let mut out = String::with_capacity(1024);
        let _ = write!(
            out,
            "{{\"uptime_seconds\":{},\"connections\":{},\"connections_open\":{},\
             \"closing\":{},\"sessions\":{},\"sessions_persistent\":{},\"subscriptions\":{},\
             \"retained_messages\":{},\"messages_received\":{},\"messages_sent\":{},\
             \"bytes_received\":{},\"bytes_sent\":{},\"messages_dropped\":{},\
             \"messages_inflight\":{},\"messages_queued\":{},\"auth_failures\":{},\
             \"ready\":{},\"busiest_topics\":[",
            now.saturating_duration_since(stats.started).as_secs(),
            broker.connected_count(),
            broker.connection_count(),
            lingering,
            totals.sessions,
            totals.persistent,
            broker.subscription_count(),
            broker.retained_count(),
            stats.messages_received,
            stats.messages_sent,
            stats.bytes_received,
            stats.bytes_sent,
            stats.dropped_queue_full
                + stats.dropped_too_large
                + stats.dropped_expired
                + stats.publishes_denied
                + stats.deliveries_denied,
            totals.inflight,
            totals.queued,
            stats.auth_failures,
            self.readiness().is_ok(),
        );
        for (i, (topic, share)) in broker.busiest_topics(BUSIEST).iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"topic\":");
            json_string(&mut out, topic.as_str());
            let _ = write!(out, ",\"share\":{share:.4}}}");
        }
        out.push_str("]}");
        out
    }
}

/// Appends `s` as a JSON string.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            // `<` too, so a topic can never close a script element.
            c if c < ' ' || c == '<' || c == '>' || c == '&' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        super::json_string(&mut out, "a\"b\\c\n</script>");
        assert_eq!(out, "\"a\\\"b\\\\c\\u000a\\u003c/script\\u003e\"");
    }
}
