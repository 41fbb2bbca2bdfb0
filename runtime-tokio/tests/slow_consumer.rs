//! A subscriber that never reads must not make the broker buffer without
//! bound: QoS 0 messages beyond `limits.outbound_buffer_bytes` are dropped
//! for it, QoS 1 messages wait in its session queue up to
//! `limits.max_queued_messages`, and everyone else is still served.
//!
//! Each test floods the real binary with 100 MB and watches its resident
//! memory (`VmRSS`) while it does.

mod common;

use common::{BrokerProcess, Connect, Raw, V311, WAIT, publish_packet};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Total bytes of payload the publisher sends.
const FLOOD_BYTES: usize = 100 * 1024 * 1024;
/// Payload of each message.
const PAYLOAD: usize = 16 * 1024;
/// The broker's resident memory must stay under this while flooded. Measured
/// (debug build): about 10 MiB idle, peaks of 11–14 MiB under either flood
/// (the tests print theirs). Buffering the flood for the slow subscriber
/// would take over 100 MiB.
const RSS_BOUND_KIB: u64 = 40 * 1024;

fn start(dir: &std::path::Path, extra: &str) -> BrokerProcess {
    let config = dir.join("roost.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n\
             [limits]\noutbound_buffer_bytes = 1048576\n{extra}\n[sys]\ninterval_secs = 0\n"
        ),
    )
    .expect("write config");
    BrokerProcess::start(&config, 1)
}

fn client(id: &str) -> Connect<'_> {
    Connect {
        client_id: id,
        keep_alive: 0,
        ..Connect::default()
    }
}

/// Samples the broker's RSS every few milliseconds until dropped; returns
/// the peak in KiB.
struct RssWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn new(pid: u32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            let path = format!("/proc/{pid}/status");
            while !s.load(Ordering::Relaxed) {
                let Ok(status) = std::fs::read_to_string(&path) else {
                    return;
                };
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        RssWatch {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// A fresh subscriber and publisher still get a message through.
fn round_trip(broker: &BrokerProcess, tag: &str) {
    let addr = broker.addrs[0];
    let mut sub = Raw::connected(addr, V311, &client("fresh-sub"));
    assert_eq!(sub.subscribe(1, "fresh", 1), 1);
    let mut publisher = Raw::connected(addr, V311, &client("fresh-pub"));
    publisher.publish("fresh", tag.as_bytes(), 1, false);
    let got = sub.expect_publish();
    assert_eq!(got.payload, tag.as_bytes());
}

/// Sends PINGREQ and waits for PINGRESP: the broker has handled everything
/// this client sent before it.
fn ping(raw: &mut Raw) {
    raw.send(&[0xc0, 0]);
    loop {
        let p = raw.read_packet().expect("PINGRESP");
        if p.kind() == 13 {
            return;
        }
    }
}

#[test]
fn qos0_flood_to_a_reader_that_never_reads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start(dir.path(), "");
    let addr = broker.addrs[0];
    let idle = broker.rss_kib();

    let mut slow = Raw::connected(addr, V311, &client("slow"));
    assert_eq!(slow.subscribe(1, "t", 0), 0);
    // From here on `slow` never reads.

    let mut publisher = Raw::connected(addr, V311, &client("flood"));
    let message = publish_packet(V311, "t", &[0x5a; PAYLOAD], 0, false, 0);
    let watch = RssWatch::new(broker.pid());
    let started = Instant::now();
    let mut batch = Vec::with_capacity(message.len() * 16);
    for _ in 0..16 {
        batch.extend_from_slice(&message);
    }
    for _ in 0..FLOOD_BYTES / PAYLOAD / 16 {
        publisher.stream.write_all(&batch).expect("flood write");
    }
    ping(&mut publisher);
    let elapsed = started.elapsed();
    let peak = watch.finish();
    let after = broker.rss_kib();
    eprintln!(
        "QoS 0 flood: {} MiB in {elapsed:?}; broker RSS idle {idle} KiB, peak {peak} KiB, after {after} KiB",
        FLOOD_BYTES >> 20
    );
    assert!(
        peak < RSS_BOUND_KIB,
        "broker RSS peaked at {peak} KiB (bound {RSS_BOUND_KIB} KiB)"
    );
    round_trip(&broker, "qos0");

    // The slow subscriber is still connected. Once it reads, it gets what
    // its buffers held and then new messages again: far fewer than were
    // published, because the broker dropped QoS 0 messages for it instead
    // of buffering them.
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let reader = std::thread::spawn(move || {
        let mut floods = 0usize;
        loop {
            let p = slow.expect_publish();
            if p.payload == b"end" {
                flag.store(true, Ordering::Relaxed);
                return floods;
            }
            floods += 1;
        }
    });
    // A marker sent while the subscriber is still over its limit would be
    // dropped too, so repeat it until it gets through.
    let through = common::poll(WAIT, || {
        publisher.publish("t", b"end", 0, false);
        done.load(Ordering::Relaxed).then_some(())
    });
    assert!(through.is_some(), "the slow subscriber never recovered");
    let floods = reader.join().expect("reader");
    eprintln!(
        "QoS 0 flood: the slow subscriber got {floods} of {} messages",
        FLOOD_BYTES / PAYLOAD
    );
    assert!(floods > 0, "the slow subscriber got nothing");
    assert!(
        floods < FLOOD_BYTES / PAYLOAD / 2,
        "{floods} messages reached the subscriber that never read: \
         they were buffered, not dropped"
    );
}

#[test]
fn qos1_flood_waits_in_the_session_queue_up_to_its_limit() {
    const MAX_INFLIGHT: usize = 32;
    const MAX_QUEUED: usize = 100;
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start(
        dir.path(),
        &format!("max_inflight = {MAX_INFLIGHT}\nmax_queued_messages = {MAX_QUEUED}\n"),
    );
    let addr = broker.addrs[0];
    let idle = broker.rss_kib();

    let mut slow = Raw::connected(addr, V311, &client("slow-1"));
    assert_eq!(slow.subscribe(1, "t", 1), 1);
    // `slow` neither reads nor acknowledges until the flood is over.

    let mut publisher = Raw::connected(addr, V311, &client("flood-1"));
    let count = FLOOD_BYTES / PAYLOAD;
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
    let watch = RssWatch::new(broker.pid());
    let started = Instant::now();
    let mut payload = vec![0x5a; PAYLOAD];
    for i in 0..count {
        payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let pid = u16::try_from(i % 65_535 + 1).expect("pid");
        let message = publish_packet(V311, "t", &payload, 1, false, pid);
        publisher.stream.write_all(&message).expect("flood write");
    }
    let acked = reader.join().expect("reader");
    let elapsed = started.elapsed();
    let peak = watch.finish();
    let after = broker.rss_kib();
    eprintln!(
        "QoS 1 flood: {} MiB in {elapsed:?}; broker RSS idle {idle} KiB, peak {peak} KiB, after {after} KiB",
        FLOOD_BYTES >> 20
    );
    assert_eq!(acked, count, "every QoS 1 publish is acknowledged");
    assert!(
        peak < RSS_BOUND_KIB,
        "broker RSS peaked at {peak} KiB (bound {RSS_BOUND_KIB} KiB)"
    );
    round_trip(&broker, "qos1");

    // Now the slow subscriber reads: it gets the in-flight window plus the
    // queue, in order, and nothing else (the rest were dropped).
    let mut received = Vec::new();
    for _ in 0..MAX_INFLIGHT + MAX_QUEUED {
        let p = slow.expect_publish();
        assert_eq!(p.topic, "t");
        assert_eq!(p.qos, 1);
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
    let next = slow.expect_publish();
    assert_eq!(
        next.payload, b"end",
        "more than max_inflight + max_queued_messages were kept"
    );
    eprintln!(
        "QoS 1 flood: the slow subscriber got messages {:?} .. {:?} of {count}",
        received.first(),
        received.last()
    );
}
