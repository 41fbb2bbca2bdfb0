//! Engine benchmarks: one QoS 0 PUBLISH (64-byte payload, 4-level topic)
//! routed through the whole engine — bytes in through `handle_bytes`,
//! decoded, matched against the subscription trie, encoded for the
//! subscriber, and every action drained — with 1, 1,000 and 1,000,000
//! subscriptions in the broker, and a fan-out of one PUBLISH to 1,000
//! subscribers.
//!
//! Every subscription is made the way a client makes it: a real CONNECT
//! and real SUBSCRIBE packets through `handle_bytes` (100 filters per
//! SUBSCRIBE, 100 per session), so the engine's state is exactly what
//! clients would have built. Non-matching subscriptions are mostly exact
//! filters, with one in fifty each ending in `#`, starting with `+`, or
//! with `+` inside; exactly one session subscribes to the routed topic.
//!
//! ```text
//! cargo bench -p roost-core --bench engine -- --warm-up-time 1 --measurement-time 3
//! ```

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput};
use roost_core::MqttStr;
use roost_core::broker::{Action, Broker, Config, ConnId, ConnInfo, Instant};
use roost_core::codec::{
    Connect, Packet, PacketId, Protocol, Publish, QoS, QosPid, Subscribe, Subscription,
    SubscriptionOptions,
};
use roost_core::topic::{TopicFilter, TopicName};
use std::hint::black_box;

/// The topic every PUBLISH is sent to.
const TOPIC: &str = "tenant7/device/target/status";
/// Filters per SUBSCRIBE packet and per session.
const PER_SESSION: usize = 100;

/// The `i`th non-matching subscription (as in `benches/trie.rs`).
fn filler(i: usize) -> String {
    let tenant = i % 97;
    match i % 50 {
        0 => format!("tenant{tenant}/device/{i}/#"),
        1 => format!("+/device/{i}/status"),
        2 => format!("tenant{tenant}/+/{i}/status"),
        _ => format!("tenant{tenant}/device/{i}/status"),
    }
}

fn encode(packet: &Packet) -> Bytes {
    let mut buf = BytesMut::new();
    packet
        .encode(Protocol::V3_1_1, &mut buf)
        .expect("encodable");
    buf.freeze()
}

fn drain(broker: &mut Broker) -> usize {
    let mut n = 0;
    while let Some(action) = broker.poll_action() {
        black_box(&action);
        if matches!(action, Action::Close { .. }) {
            panic!("unexpected close: {action:?}");
        }
        n += 1;
    }
    n
}

/// Opens a connection and sends CONNECT (MQTT 3.1.1, clean session).
fn connect(broker: &mut Broker, client_id: &str) -> ConnId {
    let conn = broker.handle_open(Instant::ZERO, ConnInfo::default());
    let packet = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V3_1_1,
        clean_start: true,
        keep_alive: 0,
        client_id: MqttStr::copy_from_str(client_id).expect("valid id"),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }));
    broker.handle_bytes(Instant::ZERO, conn, &encode(&packet));
    drain(broker);
    conn
}

fn subscribe(broker: &mut Broker, conn: ConnId, filters: impl IntoIterator<Item = String>) {
    let subscriptions: Vec<Subscription> = filters
        .into_iter()
        .map(|f| Subscription {
            filter: TopicFilter::copy_from_str(&f).expect("valid filter"),
            options: SubscriptionOptions {
                qos: QoS::AtMostOnce,
                ..Default::default()
            },
        })
        .collect();
    let packet = Packet::Subscribe(Subscribe {
        packet_id: PacketId::MIN,
        subscriptions,
        properties: Default::default(),
    });
    broker.handle_bytes(Instant::ZERO, conn, &encode(&packet));
    drain(broker);
}

fn quiet() -> Config {
    Config {
        sys_interval: None,
        ..Config::default()
    }
}

/// The PUBLISH every iteration sends.
fn publish_bytes() -> Bytes {
    encode(&Packet::Publish(Publish {
        dup: false,
        qos: QosPid::AtMostOnce,
        retain: false,
        topic: TopicName::copy_from_str(TOPIC).expect("valid topic"),
        payload: Bytes::from(vec![0x5a; 64]),
        properties: Default::default(),
    }))
}

/// A broker with `total` subscriptions, exactly one of which matches
/// [`TOPIC`], and a connected publisher.
fn routing_broker(total: usize) -> (Broker, ConnId) {
    let mut broker = Broker::new(quiet(), Instant::ZERO);
    let sub = connect(&mut broker, "subscriber");
    subscribe(&mut broker, sub, [TOPIC.to_owned()]);
    let fillers = total - 1;
    for (s, start) in (0..fillers).step_by(PER_SESSION).enumerate() {
        let conn = connect(&mut broker, &format!("filler{s}"));
        subscribe(
            &mut broker,
            conn,
            (start..(start + PER_SESSION).min(fillers)).map(filler),
        );
    }
    assert_eq!(broker.subscription_count(), total);
    let publisher = connect(&mut broker, "publisher");
    (broker, publisher)
}

/// A broker with `n` sessions, each subscribed to [`TOPIC`].
fn fanout_broker(n: usize) -> (Broker, ConnId) {
    let mut broker = Broker::new(quiet(), Instant::ZERO);
    for i in 0..n {
        let conn = connect(&mut broker, &format!("sub{i}"));
        subscribe(&mut broker, conn, [TOPIC.to_owned()]);
    }
    let publisher = connect(&mut broker, "publisher");
    (broker, publisher)
}

fn bench(c: &mut Criterion) {
    let publish = publish_bytes();
    let mut group = c.benchmark_group("engine/route_qos0");
    group.throughput(Throughput::Elements(1));
    for total in [1usize, 1_000, 1_000_000] {
        // Built on the first call: criterion calls the closure only for a
        // selected benchmark (so a filtered run or a profile skips the
        // others), but once per sample.
        let mut state = None;
        group.bench_function(BenchmarkId::from_parameter(total), |b| {
            let (broker, publisher) = state.get_or_insert_with(|| {
                let (mut broker, publisher) = routing_broker(total);
                // One Send to the subscriber per PUBLISH.
                broker.handle_bytes(Instant::ZERO, publisher, &publish);
                assert_eq!(drain(&mut broker), 1);
                (broker, publisher)
            });
            let publisher = *publisher;
            b.iter(|| {
                broker.handle_bytes(Instant::ZERO, publisher, black_box(&publish));
                drain(broker)
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("engine/fanout_qos0");
    let n = 1_000;
    // Elements are deliveries: criterion's rate is per subscriber copy.
    group.throughput(Throughput::Elements(n as u64));
    let mut state = None;
    group.bench_function(BenchmarkId::from_parameter(n), |b| {
        let (broker, publisher) = state.get_or_insert_with(|| {
            let (mut broker, publisher) = fanout_broker(n);
            broker.handle_bytes(Instant::ZERO, publisher, &publish);
            assert_eq!(drain(&mut broker), n);
            (broker, publisher)
        });
        let publisher = *publisher;
        b.iter(|| {
            broker.handle_bytes(Instant::ZERO, publisher, black_box(&publish));
            drain(broker)
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
