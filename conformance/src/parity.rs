//! The parity suite: what an operator choosing between roost's runtimes
//! relies on, checked the same way against each runtime's binary.
//!
//! The protocol itself is covered by the scenarios ([`crate::runner`]) and
//! the adversarial bounds by [`crate::attacks`]; this module adds the
//! behaviours that live between the engine and the sockets, which is where
//! the runtimes once drifted apart:
//!
//! - the conformance subset over TLS, WebSocket and WebSocket over TLS;
//! - a subscriber that never reads, flooded with 100 MB at QoS 0 and at
//!   QoS 1, with the broker's memory bounded and everyone else still served;
//! - persistence across SIGKILL: with `durability = "sync"` no acknowledged
//!   message is lost; with `"periodic"` only messages acknowledged within
//!   the last `flush_interval_ms` may be.
//!
//! ```text
//!  runtime-*/tests/parity.rs ── parity_tests!(env!("CARGO_BIN_EXE_…"))
//!        │  one #[test] per check, one at a time (attacks::SERIAL)
//!        ▼
//!  parity::<check>(&Binary) ──► Binary::start(config) ──► Broker (child process)
//!        │                            MemoryWatch where memory is the point
//!        ▼
//!  panics with what it saw, or prints what it measured
//! ```
//!
//! The checks use the blocking raw client ([`crate::blocking`]), so a test
//! sees exactly the bytes the broker sends. Every wait is bounded.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::attacks::{Binary, Broker, SERIAL};
use crate::blocking::{
    Connect, Raw, TestCert, V311, WAIT, packet, poll, publish_packet, toml_path,
};
use crate::runner::{self, Report};
use crate::scenario::Config as SuiteConfig;
use crate::transport::{TlsClient, Transport};

/// Declares one `#[test]` per parity check against the broker executable
/// at `$bin` (usually `env!("CARGO_BIN_EXE_roost")`).
#[macro_export]
macro_rules! parity_tests {
    ($bin:expr) => {
        $crate::parity_tests!(@one $bin, transports_tls_ws_wss);
        $crate::parity_tests!(@one $bin, slow_consumer_qos0);
        $crate::parity_tests!(@one $bin, slow_consumer_qos1);
        $crate::parity_tests!(@one $bin, kill9_with_sync_loses_nothing_acknowledged);
        $crate::parity_tests!(@one $bin, kill9_with_periodic_loses_at_most_one_interval);
    };
    (@one $bin:expr, $check:ident) => {
        #[test]
        fn $check() {
            $crate::parity::run($crate::parity::$check, $bin);
        }
    };
}

/// Runs one check against the executable at `path`, alone (checks measure
/// memory and timing, which a neighbour would spoil).
pub fn run(check: fn(&Binary), path: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    check(&Binary::new(path));
}

fn start(bin: &Binary, dir: &Path, toml: &str, listeners: usize) -> Broker {
    bin.start(dir, toml, listeners)
        .unwrap_or_else(|e| panic!("[{}] {e}", bin.name()))
}

fn client(id: &str) -> Connect<'_> {
    Connect {
        client_id: id,
        keep_alive: 0,
        ..Connect::default()
    }
}

// ---------------------------------------------------------------------------
// Transports.

/// The scenarios run over each transport (about 20 s per transport): both
/// `basic` scenarios, the ACL through each transport, redelivery on
/// reconnect, a will, packets near the 10000-byte limit across WebSocket
/// messages, retained messages, flow control, and every bad-input scenario.
fn over_every_transport(name: &str) -> bool {
    const ALSO: [&str; 10] = [
        "v311.basic",
        "v5.basic",
        "v311.subscribe-failure",
        "v5.subscribe-failure",
        "v311.redelivery-on-reconnect",
        "v5.redelivery-on-reconnect",
        "v5.will-message",
        "v5.maximum-packet-size",
        "v5.retained-message",
        "v5.flow-control-1",
    ];
    name.contains(".bad.") || ALSO.contains(&name)
}

/// The conformance subset over TLS, WebSocket and WebSocket over TLS,
/// configured as `conformance/paho.toml` (anonymous, `paho.acl`, keep
/// alive capped at 60 s, packets of at most 10000 bytes).
pub fn transports_tls_ws_wss(bin: &Binary) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = TestCert::new(dir.path());
    let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("paho.acl");
    let tls = format!(
        "cert = {}\nkey = {}\n",
        toml_path(&cert.cert_path),
        toml_path(&cert.key_path)
    );
    let listener = |protocol: &str, extra: &str| {
        format!(
            "[[listener]]\nprotocol = \"{protocol}\"\nbind = \"127.0.0.1:0\"\n\
             allow_anonymous = true\nacl_file = {}\n{extra}",
            toml_path(&acl)
        )
    };
    let ws = "ws_path = \"/mqtt\"\n";
    let text = [
        listener("tls", &tls),
        listener("ws", ws),
        listener("wss", &format!("{tls}{ws}")),
        "[limits]\nmax_keepalive_secs = 60\nmax_packet_size = 10000\n\
         [mqtt]\nsubscribe_denied = \"unspecified_error\"\n[sys]\ninterval_secs = 0\n"
            .to_owned(),
    ]
    .concat();
    let broker = start(bin, dir.path(), &text, 3);
    // The certificate names 127.0.0.1 and localhost: TLS is verified once
    // by the host connected to and once by SNI.
    let by_host = TlsClient::from_pem(cert.cert_pem.as_bytes(), "127.0.0.1", "127.0.0.1")
        .expect("tls client");
    let by_sni = TlsClient::from_pem(cert.cert_pem.as_bytes(), "localhost", "127.0.0.1")
        .expect("tls client");
    let ws_path = Some("/mqtt".to_owned());
    let runs = [
        (
            broker.addr(0).port(),
            Transport {
                tls: Some(by_host),
                ws_path: None,
            },
        ),
        (
            broker.addr(1).port(),
            Transport {
                tls: None,
                ws_path: ws_path.clone(),
            },
        ),
        (
            broker.addr(2).port(),
            Transport {
                tls: Some(by_sni),
                ws_path,
            },
        ),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let expected = runner::all_scenarios()
        .iter()
        .filter(|s| over_every_transport(s.name))
        .count();
    let mut failures = Vec::new();
    for (port, transport) in runs {
        let name = transport.name();
        let mut config = SuiteConfig::new("127.0.0.1", port);
        config.max_packet_size = 10_000;
        config.target.transport = transport;
        let report = rt.block_on(async {
            let mut report = Report::default();
            for (index, scenario) in runner::all_scenarios().iter().enumerate() {
                if over_every_transport(scenario.name) {
                    report
                        .verdicts
                        .push(runner::run_one(&config, index, scenario).await);
                }
            }
            report
        });
        eprintln!("[{}] {name}: {}", bin.name(), report.summary());
        assert_eq!(
            report.verdicts.len(),
            expected,
            "{name}: every scenario ran"
        );
        failures.extend(
            report
                .verdicts
                .iter()
                .filter(|v| v.result.is_err())
                .map(|v| format!("[{name}] {}", v.line())),
        );
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    assert!(
        failures.is_empty(),
        "[{}] failed scenarios:\n{}",
        bin.name(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Slow consumers.

/// Total bytes of payload a flood sends.
const FLOOD_BYTES: usize = 100 * 1024 * 1024;
/// Payload of each flooded message.
const FLOOD_PAYLOAD: usize = 16 * 1024;
/// The broker's resident memory must stay under this while flooded.
/// Measured (debug builds): 10–15 MiB on each runtime. Buffering the flood
/// for the slow subscriber would take over 100 MiB.
const FLOOD_RSS_BOUND_KIB: u64 = 40 * 1024;

fn slow_consumer_config(extra: &str) -> String {
    format!(
        "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n\
         [limits]\noutbound_buffer_bytes = 1048576\n{extra}\n[sys]\ninterval_secs = 0\n"
    )
}

/// A fresh subscriber and publisher still get a message through.
fn round_trip(broker: &Broker, tag: &str) {
    let addr = broker.addr(0);
    let mut sub = Raw::connected(addr, V311, &client("fresh-sub"));
    assert_eq!(sub.subscribe(1, "fresh", 1), 1);
    let mut publisher = Raw::connected(addr, V311, &client("fresh-pub"));
    publisher.publish("fresh", tag.as_bytes(), 1, false);
    let got = sub.expect_publish();
    assert_eq!(got.payload, tag.as_bytes());
}

/// PINGREQ, then waits for PINGRESP: the broker has handled everything this
/// client sent before it.
fn ping(raw: &mut Raw) {
    raw.send(&[0xc0, 0]);
    while raw.read_packet().expect("PINGRESP").kind() != 13 {}
}

/// A subscriber that never reads, flooded with 100 MB at QoS 0: the
/// broker drops QoS 0 messages for it beyond `limits.outbound_buffer_bytes`
/// instead of buffering them, its memory stays bounded, others are served,
/// and the subscriber gets messages again once it reads.
pub fn slow_consumer_qos0(bin: &Binary) {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start(bin, dir.path(), &slow_consumer_config(""), 1);
    let addr = broker.addr(0);
    let mut slow = Raw::connected(addr, V311, &client("slow"));
    assert_eq!(slow.subscribe(1, "t", 0), 0);
    // From here on `slow` does not read.
    let mut publisher = Raw::connected(addr, V311, &client("flood"));
    let message = publish_packet(V311, "t", &[0x5a; FLOOD_PAYLOAD], 0, false, 0);
    let batch = message.repeat(16);
    let watch = broker.watch_memory();
    let started = Instant::now();
    for _ in 0..FLOOD_BYTES / FLOOD_PAYLOAD / 16 {
        publisher.stream.write_all(&batch).expect("flood write");
    }
    ping(&mut publisher);
    let elapsed = started.elapsed();
    let memory = watch.finish();
    eprintln!(
        "[{}] QoS 0 flood: {} MiB in {elapsed:?}; broker peak RSS {} KiB",
        bin.name(),
        FLOOD_BYTES >> 20,
        memory.peak_kib
    );
    assert!(
        memory.peak_kib < FLOOD_RSS_BOUND_KIB,
        "[{}] broker RSS peaked at {} KiB (bound {FLOOD_RSS_BOUND_KIB} KiB)",
        bin.name(),
        memory.peak_kib
    );
    round_trip(&broker, "qos0");

    // Once the slow subscriber reads it gets what its buffers held, then new
    // messages again: far fewer than were published.
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let reader = std::thread::spawn(move || {
        let mut floods = 0usize;
        loop {
            if slow.expect_publish().payload == b"end" {
                flag.store(true, Ordering::Relaxed);
                return floods;
            }
            floods += 1;
        }
    });
    // A marker sent while the subscriber is still over its limit would be
    // dropped too, so it is repeated until it gets through.
    let through = poll(WAIT, || {
        publisher.publish("t", b"end", 0, false);
        done.load(Ordering::Relaxed).then_some(())
    });
    assert!(through.is_some(), "the slow subscriber never recovered");
    let floods = reader.join().expect("reader");
    eprintln!(
        "[{}] QoS 0 flood: the slow subscriber got {floods} of {} messages",
        bin.name(),
        FLOOD_BYTES / FLOOD_PAYLOAD
    );
    assert!(floods > 0, "the slow subscriber got nothing");
    assert!(
        floods < FLOOD_BYTES / FLOOD_PAYLOAD / 2,
        "{floods} messages reached the subscriber that never read: buffered, not dropped"
    );
}

/// A subscriber that neither reads nor acknowledges, flooded with 100 MB at
/// QoS 1: the publisher is acknowledged throughout, the subscriber's
/// messages wait in its session queue up to `limits.max_queued_messages`
/// (beyond the in-flight window), memory stays bounded, and the subscriber
/// then gets exactly the window plus the queue, in order.
pub fn slow_consumer_qos1(bin: &Binary) {
    const MAX_INFLIGHT: usize = 32;
    const MAX_QUEUED: usize = 100;
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start(
        bin,
        dir.path(),
        &slow_consumer_config(&format!(
            "max_inflight = {MAX_INFLIGHT}\nmax_queued_messages = {MAX_QUEUED}\n"
        )),
        1,
    );
    let addr = broker.addr(0);
    let mut slow = Raw::connected(addr, V311, &client("slow-1"));
    assert_eq!(slow.subscribe(1, "t", 1), 1);
    let mut publisher = Raw::connected(addr, V311, &client("flood-1"));
    let count = FLOOD_BYTES / FLOOD_PAYLOAD;
    // PUBACKs come back while we write; a second thread reads them so the
    // broker never has to pause this publisher.
    let mut acks = publisher.stream.try_clone().expect("clone");
    acks.set_read_timeout(Some(WAIT)).expect("timeout");
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        // Each 3.1.1 PUBACK is 4 bytes.
        while total < count * 4 {
            match acks.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total / 4
    });
    let watch = broker.watch_memory();
    let started = Instant::now();
    let mut payload = vec![0x5a; FLOOD_PAYLOAD];
    for i in 0..count {
        payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let pid = u16::try_from(i % 65_535 + 1).expect("pid");
        let message = publish_packet(V311, "t", &payload, 1, false, pid);
        publisher.stream.write_all(&message).expect("flood write");
    }
    let acked = reader.join().expect("reader");
    let elapsed = started.elapsed();
    let memory = watch.finish();
    eprintln!(
        "[{}] QoS 1 flood: {} MiB in {elapsed:?}; broker peak RSS {} KiB",
        bin.name(),
        FLOOD_BYTES >> 20,
        memory.peak_kib
    );
    assert_eq!(acked, count, "every QoS 1 publish is acknowledged");
    assert!(
        memory.peak_kib < FLOOD_RSS_BOUND_KIB,
        "[{}] broker RSS peaked at {} KiB (bound {FLOOD_RSS_BOUND_KIB} KiB)",
        bin.name(),
        memory.peak_kib
    );
    round_trip(&broker, "qos1");

    let mut received = Vec::new();
    for _ in 0..MAX_INFLIGHT + MAX_QUEUED {
        let p = slow.expect_publish();
        assert_eq!((p.topic.as_str(), p.qos), ("t", 1));
        received.push(u64::from_be_bytes(p.payload[..8].try_into().expect("8")));
    }
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "messages out of order: {received:?}"
    );
    // The queue is empty now: a marker is the next thing it sees.
    publisher
        .stream
        .write_all(&publish_packet(V311, "t", b"end", 1, false, 1))
        .expect("marker");
    assert_eq!(
        slow.expect_publish().payload,
        b"end",
        "more than max_inflight + max_queued_messages were kept"
    );
}

// ---------------------------------------------------------------------------
// Persistence across SIGKILL.

fn store_config(data: &Path, durability: &str) -> String {
    format!(
        "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n\
         [persistence]\nstore = \"fjall\"\npath = {}\n{durability}\n\
         [limits]\nmax_queued_messages = 100000\nmax_queued_bytes = 104857600\n\
         [sys]\ninterval_secs = 0\n",
        toml_path(data)
    )
}

/// CONNECT, MQTT 3.1.1, clean session 0, keep-alive 0.
fn persistent_connect(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 0];
    body.extend_from_slice(&u16::try_from(client_id.len()).expect("id").to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    packet(0x10, &body)
}

/// Connects with a persistent session; returns the client and the CONNACK's
/// session-present flag.
fn resume(broker: &Broker, client_id: &str) -> (Raw, bool) {
    let mut raw = Raw::open(broker.addr(0), V311);
    raw.send(&persistent_connect(client_id));
    let connack = raw.read_packet().expect("CONNACK");
    assert_eq!(connack.kind(), 2, "CONNACK");
    assert_eq!(connack.body[1], 0, "CONNACK refused");
    (raw, connack.body[0] & 1 == 1)
}

/// Reads the offline session's messages until none comes for a while:
/// their sequence numbers, in arrival order.
fn drain_sequence(keeper: &mut Raw) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match keeper.read_packet_within(Duration::from_secs(2)) {
            Ok(p) if p.kind() == 3 => {
                let publish = keeper.parse_publish(&p);
                keeper.send(&packet(0x40, &publish.pid.to_be_bytes()));
                got.push(u64::from_be_bytes(
                    publish.payload[..8].try_into().expect("sequence number"),
                ));
            }
            Ok(_) => {}
            Err(_) => return got,
        }
    }
}

/// A subscriber with a persistent session goes offline; a publisher sends
/// QoS 1 messages for it, one at a time, each waiting for its PUBACK, for
/// `publish_for`; the broker is killed with SIGKILL right after the last
/// PUBACK and restarted from the same folder. A retained message published
/// before the others must come back too. Returns, per message, how
/// long before the kill it was acknowledged, and what the session held
/// after the restart.
fn publish_then_kill(
    bin: &Binary,
    durability: &str,
    publish_for: Duration,
) -> (Vec<Duration>, Vec<u64>, Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let config = store_config(&data, durability);
    let broker = start(bin, dir.path(), &config, 1);
    let (mut keeper, present) = resume(&broker, "keeper");
    assert!(!present, "a new session");
    assert_eq!(keeper.subscribe(1, "p/#", 1), 1);
    keeper.disconnect();
    let mut publisher = Raw::connected(broker.addr(0), V311, &client("publisher"));
    assert_eq!(publisher.publish("r/1", b"retained", 1, true), 0, "PUBACK");
    let mut acked_at = Vec::new();
    let started = Instant::now();
    let mut sequence = 0u64;
    while started.elapsed() < publish_for {
        let mut payload = sequence.to_be_bytes().to_vec();
        payload.extend_from_slice(b" kept across SIGKILL");
        assert_eq!(publisher.publish("p/1", &payload, 1, false), 0, "PUBACK");
        acked_at.push(Instant::now());
        sequence += 1;
    }
    broker.signal("KILL").expect("SIGKILL");
    let killed = Instant::now();
    assert!(broker.wait_exit(WAIT).is_some(), "the broker died");
    drop(broker);
    let ages = acked_at.iter().map(|at| killed - *at).collect();

    let restarted = Instant::now();
    let broker = start(bin, dir.path(), &config, 1);
    let recovery = restarted.elapsed();
    let (mut keeper, present) = resume(&broker, "keeper");
    assert!(present, "the session came back from the store");
    let got = drain_sequence(&mut keeper);
    let mut fresh = Raw::connected(broker.addr(0), V311, &client("fresh"));
    assert_eq!(fresh.subscribe(1, "r/#", 1), 1);
    let retained = fresh.expect_publish();
    assert!(
        retained.retain,
        "the retained message came back from the store"
    );
    assert_eq!(retained.payload, b"retained");
    (ages, got, recovery)
}

/// With `durability = "sync"` every PUBACK means the message is on disk:
/// after SIGKILL and a restart the offline session holds every acknowledged
/// message, once each, in order.
pub fn kill9_with_sync_loses_nothing_acknowledged(bin: &Binary) {
    let (ages, got, recovery) =
        publish_then_kill(bin, "durability = \"sync\"", Duration::from_millis(1500));
    let sent = ages.len() as u64;
    eprintln!(
        "[{}] sync: {sent} acknowledged before SIGKILL, {} after restart (restart {recovery:?})",
        bin.name(),
        got.len()
    );
    assert!(sent > 0, "nothing was published");
    let expected: Vec<u64> = (0..sent).collect();
    assert_eq!(
        got, expected,
        "every acknowledged message, once each and in order"
    );
}

/// With `durability = "periodic"` a PUBACK may come before the message is
/// on disk, and a crash loses at most the last `flush_interval_ms`: every
/// message acknowledged longer ago than that (plus scheduling slack)
/// survives SIGKILL; what survives is a prefix, in order, without
/// duplicates.
pub fn kill9_with_periodic_loses_at_most_one_interval(bin: &Binary) {
    const FLUSH_MS: u64 = 200;
    // Time for the flush job itself (an fsync on a loaded machine).
    const SLACK: Duration = Duration::from_millis(300);
    let (ages, got, recovery) = publish_then_kill(
        bin,
        &format!("durability = \"periodic\"\nflush_interval_ms = {FLUSH_MS}"),
        Duration::from_millis(1500),
    );
    let must_survive = ages
        .iter()
        .filter(|age| **age > Duration::from_millis(FLUSH_MS) + SLACK)
        .count() as u64;
    eprintln!(
        "[{}] periodic ({FLUSH_MS} ms): {} acknowledged before SIGKILL, {must_survive} older \
         than the interval + slack, {} after restart (restart {recovery:?})",
        bin.name(),
        ages.len(),
        got.len()
    );
    assert!(must_survive > 0, "the test published for too short a time");
    let prefix: Vec<u64> = (0..got.len() as u64).collect();
    assert_eq!(
        got, prefix,
        "what survives is a prefix, in order, once each"
    );
    assert!(
        got.len() as u64 >= must_survive,
        "lost messages acknowledged more than {FLUSH_MS} ms + {SLACK:?} before the crash: \
         {} survived of the {must_survive} that must",
        got.len()
    );
}

// ---------------------------------------------------------------------------
// The whole conformance suite against a binary.

/// Runs every conformance scenario against the executable, configured as
/// `conformance/paho.toml` on a port of its choosing. (The runtimes' own
/// tests run the suite against a broker in the test process; this is for
/// any other executable, such as the std-only example.)
pub fn conformance_suite(bin: &Binary) {
    let dir = tempfile::tempdir().expect("temp dir");
    let paho = Path::new(env!("CARGO_MANIFEST_DIR")).join("paho.toml");
    let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("paho.acl");
    let text = std::fs::read_to_string(&paho)
        .expect("conformance/paho.toml")
        .replace("127.0.0.1:1883", "127.0.0.1:0")
        .replace("\"paho.acl\"", &toml_path(&acl))
        + "\n[sys]\ninterval_secs = 0\n";
    let broker = start(bin, dir.path(), &text, 1);
    let mut config = SuiteConfig::new("127.0.0.1", broker.addr(0).port());
    config.max_packet_size = 10_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(runner::run(&config, &runner::Selection::default(), |v| {
        if v.result.is_err() {
            eprintln!("[{}] {}", bin.name(), v.line());
        }
    }));
    rt.shutdown_timeout(Duration::from_secs(1));
    eprintln!("[{}] conformance: {}", bin.name(), report.summary());
    assert_eq!(report.failed(), 0, "[{}] {}", bin.name(), report.summary());
    assert!(!report.verdicts.is_empty(), "no scenario ran");
}
