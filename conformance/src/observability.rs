//! The `[http]` endpoint of a broker binary, checked from outside: real
//! MQTT clients connect and publish while `/metrics` is scraped and read
//! with a Prometheus text parser (`prometheus-parse`, not roost's own
//! encoder), and `/health`, `/ready`, `/stats.json` and `/` are fetched
//! over plain sockets.
//!
//! [`observability_tests!`](crate::observability_tests) declares the tests
//! for one binary; every runtime's test folder uses it.

use crate::attacks::{Binary, Broker};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long one HTTP exchange or MQTT step may take.
const STEP: Duration = Duration::from_secs(10);

/// A broker with one plain MQTT listener and the `[http]` endpoint.
pub fn start(binary: &Binary, dir: &std::path::Path) -> Result<Broker, String> {
    binary.start(
        dir,
        "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n\
         [http]\nbind = \"127.0.0.1:0\"\n",
        2,
    )
}

/// The `[http]` listener's address.
pub fn http_addr(broker: &Broker) -> Result<SocketAddr, String> {
    broker
        .addr_of("http")
        .ok_or_else(|| format!("no http listener logged:\n{}", broker.log()))
}

/// One HTTP/1.1 GET on a fresh connection (`Connection: close`): status
/// and body.
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, STEP).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(STEP)).map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("GET {path}: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no response head in {text:?}"))?;
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path}: bad status line {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// `/metrics`, parsed: value by sample name and sorted labels
/// (`name{a="1",b="2"}`).
pub fn scrape(addr: SocketAddr) -> Result<HashMap<String, f64>, String> {
    let (status, body) = get(addr, "/metrics")?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines)
        .map_err(|e| format!("/metrics does not parse: {e}\n{body}"))?;
    let mut out = HashMap::new();
    for sample in scrape.samples {
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let mut labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        labels.sort();
        let key = if labels.is_empty() {
            sample.metric
        } else {
            format!("{}{{{}}}", sample.metric, labels.join(","))
        };
        out.insert(key, value);
    }
    for name in [
        "roost_connections",
        "roost_messages_received_total{qos=\"0\"}",
        "roost_messages_sent_total{qos=\"1\"}",
    ] {
        if !out.contains_key(name) {
            return Err(format!("{name} missing from /metrics:\n{body}"));
        }
    }
    // Every name is roost's, and typed.
    for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap_or_default();
        if !name.starts_with("roost_") {
            return Err(format!("{name} is not prefixed roost_"));
        }
    }
    Ok(out)
}

fn value(metrics: &HashMap<String, f64>, name: &str) -> Result<f64, String> {
    metrics
        .get(name)
        .copied()
        .ok_or_else(|| format!("{name} missing from /metrics"))
}

// ----- a tiny MQTT 3.1.1 client: the black box needs no more -----

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A connected MQTT 3.1.1 client on a plain socket.
pub struct Mqtt {
    stream: TcpStream,
}

impl Mqtt {
    /// Connects with a clean session and waits for CONNACK 0.
    pub fn connect(addr: SocketAddr, client_id: &str) -> Result<Mqtt, String> {
        let mut stream =
            TcpStream::connect_timeout(&addr, STEP).map_err(|e| format!("{addr}: {e}"))?;
        stream
            .set_read_timeout(Some(STEP))
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        string(&mut body, "MQTT");
        body.extend_from_slice(&[4, 0x02, 0, 60]);
        string(&mut body, client_id);
        stream
            .write_all(&packet(0x10, &body))
            .map_err(|e| e.to_string())?;
        let mut ack = [0; 4];
        stream
            .read_exact(&mut ack)
            .map_err(|e| format!("{client_id}: no CONNACK: {e}"))?;
        if ack != [0x20, 2, 0, 0] {
            return Err(format!("{client_id}: CONNACK {ack:?}"));
        }
        Ok(Mqtt { stream })
    }

    /// Subscribes to `filter` at `qos` and waits for the SUBACK.
    pub fn subscribe(&mut self, filter: &str, qos: u8) -> Result<(), String> {
        let mut body = 1u16.to_be_bytes().to_vec();
        string(&mut body, filter);
        body.push(qos);
        self.stream
            .write_all(&packet(0x82, &body))
            .map_err(|e| e.to_string())?;
        let mut ack = [0; 5];
        self.stream
            .read_exact(&mut ack)
            .map_err(|e| format!("no SUBACK: {e}"))?;
        if ack[0] != 0x90 || ack[4] != qos {
            return Err(format!("SUBACK {ack:?}"));
        }
        Ok(())
    }

    /// Publishes at QoS 0 or 1 (then waits for the PUBACK).
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, id: u16) -> Result<(), String> {
        let mut body = Vec::new();
        string(&mut body, topic);
        if qos > 0 {
            body.extend_from_slice(&id.to_be_bytes());
        }
        body.extend_from_slice(payload);
        self.stream
            .write_all(&packet(0x30 | (qos << 1), &body))
            .map_err(|e| e.to_string())?;
        if qos == 1 {
            let mut ack = [0; 4];
            self.stream
                .read_exact(&mut ack)
                .map_err(|e| format!("no PUBACK: {e}"))?;
            if ack[0] != 0x40 || ack[2..4] != id.to_be_bytes() {
                return Err(format!("PUBACK {ack:?}"));
            }
        }
        Ok(())
    }
}

/// Scrapes until `check` holds (counters settle as the broker works
/// through what the clients sent), or says what the last scrape showed.
fn eventually(
    addr: SocketAddr,
    what: &str,
    check: impl Fn(&HashMap<String, f64>) -> Result<bool, String>,
) -> Result<HashMap<String, f64>, String> {
    let deadline = Instant::now() + STEP;
    loop {
        let metrics = scrape(addr)?;
        if check(&metrics)? {
            return Ok(metrics);
        }
        if Instant::now() >= deadline {
            let mut shown: Vec<_> = metrics.iter().collect();
            shown.sort_by(|a, b| a.0.cmp(b.0));
            return Err(format!("{what}; last scrape: {shown:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Scrapes `/metrics` while real clients connect and publish, and checks
/// that the counters move exactly as the traffic says; `/health` and
/// `/ready` answer 200, unknown paths 404, and the page and its JSON are
/// served.
pub fn check(binary: &Binary) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let broker = start(binary, dir.path())?;
    let mqtt = broker.addr_of("tcp").ok_or("no tcp listener")?;
    let http = http_addr(&broker)?;

    if get(http, "/health")? != (200, "ok\n".into()) {
        return Err("/health is not 200 ok".into());
    }
    if get(http, "/ready")? != (200, "ready\n".into()) {
        return Err("/ready is not 200 ready".into());
    }
    if get(http, "/no/such/page")?.0 != 404 {
        return Err("an unknown path is not 404".into());
    }
    let (status, page) = get(http, "/")?;
    if status != 200 || !page.contains("stats.json") {
        return Err(format!("/ answered {status}"));
    }

    let before = scrape(http)?;
    let connections = value(&before, "roost_connections")?;
    let received: Vec<f64> = (0..3)
        .map(|q| {
            value(
                &before,
                &format!("roost_messages_received_total{{qos=\"{q}\"}}"),
            )
        })
        .collect::<Result<_, _>>()?;
    let sent1 = value(&before, "roost_messages_sent_total{qos=\"1\"}")?;
    let payload = |m: &HashMap<String, f64>, way: &str, q: u8| {
        value(
            m,
            &format!("roost_payload_bytes_{way}_total{{qos=\"{q}\"}}"),
        )
    };
    let payload_in = [
        payload(&before, "received", 0)?,
        payload(&before, "received", 1)?,
    ];
    let payload_out1 = payload(&before, "sent", 1)?;
    let busy = value(&before, "roost_engine_busy_seconds_total")?;
    let accepted = value(&before, "roost_connections_accepted_total")?;

    let mut sub = Mqtt::connect(mqtt, "metrics-sub")?;
    sub.subscribe("metrics/#", 1)?;
    let mut publisher = Mqtt::connect(mqtt, "metrics-pub")?;
    eventually(http, "roost_connections did not rise by 2", |m| {
        Ok(value(m, "roost_connections")? == connections + 2.0)
    })?;
    for i in 0..5u16 {
        publisher.publish("metrics/a", b"q0", 0, 0)?;
        publisher.publish("metrics/b", b"q1", 1, i + 1)?;
    }
    let after = eventually(http, "message counters did not move by 5 each", |m| {
        Ok(
            value(m, "roost_messages_received_total{qos=\"0\"}")? == received[0] + 5.0
                && value(m, "roost_messages_received_total{qos=\"1\"}")? == received[1] + 5.0
                && value(m, "roost_messages_sent_total{qos=\"1\"}")? == sent1 + 5.0,
        )
    })?;
    if value(&after, "roost_messages_received_total{qos=\"2\"}")? != received[2] {
        return Err("QoS 2 counter moved without QoS 2 traffic".into());
    }
    // Two payload bytes per message, five messages per QoS.
    if payload(&after, "received", 0)? != payload_in[0] + 10.0
        || payload(&after, "received", 1)? != payload_in[1] + 10.0
        || payload(&after, "sent", 1)? != payload_out1 + 10.0
    {
        return Err("payload bytes by QoS did not rise by 10".into());
    }
    if value(&after, "roost_engine_busy_seconds_total")? < busy {
        return Err("roost_engine_busy_seconds_total went backwards".into());
    }
    if value(&after, "roost_connections_accepted_total")? != accepted + 2.0 {
        return Err("roost_connections_accepted_total did not rise by 2".into());
    }
    if value(&after, "roost_subscriptions")? < 1.0 {
        return Err("roost_subscriptions is 0 with a subscriber".into());
    }
    if value(&after, "roost_bytes_received_total")? <= value(&before, "roost_bytes_received_total")?
    {
        return Err("roost_bytes_received_total did not move".into());
    }
    let (_, json) = get(http, "/stats.json")?;
    if !json.contains("\"connections\":2") {
        return Err(format!("/stats.json does not say 2 connections: {json}"));
    }

    drop(sub);
    drop(publisher);
    eventually(http, "roost_connections did not fall back", |m| {
        Ok(value(m, "roost_connections")? == connections)
    })?;
    Ok(())
}

/// Declares the observability test against the broker executable at `$bin`.
#[macro_export]
macro_rules! observability_tests {
    ($bin:expr) => {
        #[test]
        fn http_endpoint_serves_metrics_that_follow_real_traffic() {
            let binary = $crate::attacks::Binary::new($bin);
            if let Err(e) = $crate::observability::check(&binary) {
                panic!("[{}] {e}", binary.name());
            }
        }
    };
}
