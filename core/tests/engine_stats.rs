//! The counters behind `$SYS` and the runtime's metrics: each moves for the
//! event it names, and `$SYS` is there from the start.

mod support;

use roost_core::broker::{AuthDecision, Authentication, Config, Instant, Limits};
use roost_core::codec::*;
use std::num::NonZeroU32;
use support::*;

const V5: Protocol = Protocol::V5;
const V4: Protocol = Protocol::V3_1_1;

fn publish_with(sim: &mut Sim, id: roost_core::broker::ConnId, p: Publish) {
    sim.send(id, Packet::Publish(p));
}

#[test]
fn sys_statistics_are_due_at_start() {
    let mut sim = Sim::new(Config::default());
    assert_eq!(
        sim.broker.poll_timeout(),
        Some(Instant::ZERO),
        "the first $SYS statistics must be due at once"
    );
    sim.advance(secs(0));
    let (a, _) = sim.connect("a", V4, true);
    sim.subscribe(a, 1, &[("$SYS/broker/uptime", QoS::AtMostOnce)]);
    let got = sim.publishes(a);
    assert_eq!(got.len(), 1, "retained uptime at start: {got:?}");
    assert_eq!(&got[0].payload[..], b"0 seconds");
    // Then every interval, as before.
    sim.advance(secs(10));
    let got = sim.publishes(a);
    assert_eq!(&got[0].payload[..], b"10 seconds");
}

#[test]
fn messages_are_counted_by_qos_each_way() {
    let mut sim = Sim::quiet();
    let (sub, _) = sim.connect("sub", V5, true);
    sim.subscribe(sub, 1, &[("t", QoS::ExactlyOnce)]);
    let (p, _) = sim.connect("pub", V5, true);
    sim.publish(p, "t", b"0", QoS::AtMostOnce, 1, false);
    sim.publish(p, "t", b"1", QoS::AtLeastOnce, 2, false);
    sim.publish(p, "t", b"2", QoS::ExactlyOnce, 3, false);
    sim.publish(p, "t", b"1", QoS::AtLeastOnce, 4, false);
    let got = sim.publishes(sub);
    assert_eq!(got.len(), 4);
    let stats = sim.broker.stats();
    assert_eq!(stats.received_by_qos, [1, 2, 1]);
    assert_eq!(stats.sent_by_qos, [1, 2, 1]);
    assert_eq!(stats.messages_received, 4);
    assert_eq!(stats.messages_sent, 4);
    let totals = sim.broker.session_totals();
    assert_eq!(
        totals.inflight, 3,
        "three QoS 1/2 deliveries unacknowledged"
    );
    assert_eq!(totals.sessions, 2);
    assert_eq!(totals.persistent, 0);
}

#[test]
fn dropped_messages_are_counted_by_reason() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        limits: Limits {
            max_queued_messages: 1,
            ..Limits::default()
        },
        ..Config::default()
    });
    // An offline persistent session with room for one message.
    let mut c = connect("offline", V5, false, 0);
    c.properties.session_expiry_interval = Some(3600);
    let (o, _) = sim.connect_with(c);
    sim.subscribe(o, 1, &[("q/#", QoS::AtLeastOnce)]);
    sim.disconnect(o);
    let (p, _) = sim.connect("pub", V5, true);
    let mut expiring = publish("q/a", b"x", QoS::AtLeastOnce, 1, false);
    expiring.properties.message_expiry_interval = Some(1);
    publish_with(&mut sim, p, expiring);
    sim.publish(p, "q/b", b"y", QoS::AtLeastOnce, 2, false);
    sim.publish(p, "q/c", b"z", QoS::AtLeastOnce, 3, false);
    let totals = sim.broker.session_totals();
    assert_eq!((totals.queued, totals.persistent), (1, 1));
    let stats = sim.broker.stats();
    assert_eq!(stats.dropped_queue_full, 2, "two had no room");
    assert_eq!(stats.dropped_expired, 0);

    // The queued one expires before its session comes back.
    sim.advance(secs(2));
    let mut c = connect("offline", V5, false, 0);
    c.properties.session_expiry_interval = Some(3600);
    let (o, _) = sim.connect_with(c);
    assert!(sim.publishes(o).is_empty(), "an expired message was sent");
    assert_eq!(sim.broker.stats().dropped_expired, 1);

    // Too large for a client's Maximum Packet Size.
    let mut c = connect("small", V5, true, 0);
    c.properties.maximum_packet_size = NonZeroU32::new(64);
    let (s, _) = sim.connect_with(c);
    sim.subscribe(s, 1, &[("big", QoS::AtMostOnce)]);
    sim.publish(p, "big", &[0; 200], QoS::AtMostOnce, 4, false);
    let stats = sim.broker.stats();
    assert_eq!(stats.dropped_too_large, 1);
    assert_eq!(stats.dropped, 3, "queue full and too large, as $SYS counts");
}

#[test]
fn expired_sessions_and_refused_logins_are_counted() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        authentication: Authentication::External,
        ..Config::default()
    });
    let mut c = connect("brief", V5, true, 0);
    c.properties.session_expiry_interval = Some(1);
    let (a, ack) = sim.connect_with(c);
    assert!(ack.is_none());
    let req = sim.auth_requests.pop_front().expect("asked");
    sim.broker
        .resolve_auth(sim.now, req.token, AuthDecision::Accept);
    sim.drain();
    sim.recv(a);
    sim.disconnect(a);
    assert_eq!(sim.broker.stats().sessions_expired, 0);
    sim.advance(secs(2));
    assert_eq!(sim.broker.stats().sessions_expired, 1);

    let (b, _) = sim.connect_with(connect("refused", V4, true, 0));
    let req = sim.auth_requests.pop_front().expect("asked");
    sim.broker.resolve_auth(
        sim.now,
        req.token,
        AuthDecision::Reject(ReasonCode::BadUserNameOrPassword),
    );
    sim.drain();
    assert!(sim.closed(b).is_some());
    assert_eq!(sim.broker.stats().auth_failures, 1);
}

#[test]
fn reserved_connection_ids_never_collide() {
    let mut sim = Sim::quiet();
    let reserved = sim.broker.reserve_conn_id();
    let (a, _) = sim.connect("a", V4, true);
    assert_ne!(reserved, a);
    assert_eq!(
        sim.broker.connection_count(),
        1,
        "a reserved id is no connection"
    );
}

#[test]
fn busiest_topics_are_estimated_from_a_bounded_sample() {
    use roost_core::broker::topics::{SAMPLE_EVERY, TRACKED};
    let mut sim = Sim::quiet();
    let (p, _) = sim.connect("pub", V4, true);
    assert!(sim.broker.busiest_topics(5).is_empty());
    let every = SAMPLE_EVERY as usize;
    // "hot" three times as often as "warm"; a long tail of one-off topics
    // that must not push them out of a table of TRACKED.
    for i in 0..every * 40 {
        let topic = if i % 8 == 7 {
            format!("tail/{i}")
        } else if i % 4 == 0 {
            "warm".to_string()
        } else {
            "hot".to_string()
        };
        sim.send(
            p,
            Packet::Publish(publish(&topic, b"x", QoS::AtMostOnce, 1, false)),
        );
    }
    let top = sim.broker.busiest_topics(2);
    let names: Vec<&str> = top.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, ["hot", "warm"], "{top:?}");
    assert!(top[0].1 > top[1].1);
    assert!(sim.broker.busiest_topics(usize::MAX).len() <= TRACKED);

    // Counts decay: a topic that went quiet gives way to the new traffic.
    sim.advance(secs(60));
    for _ in 0..every * 40 {
        sim.send(
            p,
            Packet::Publish(publish("new", b"x", QoS::AtMostOnce, 1, false)),
        );
    }
    assert_eq!(sim.broker.busiest_topics(1)[0].0.as_str(), "new");
}

#[test]
fn sys_statistics_are_not_stored() {
    let mut sim = Sim::new(Config {
        persistence: true,
        ..Config::default()
    });
    sim.advance(secs(25));
    assert!(sim.broker.retained_count() > 0, "$SYS published");
    assert!(
        sim.stored.is_empty(),
        "$SYS statistics were stored: {:?}",
        sim.stored
    );
}

/// `Broker::client_info`, behind the operator's connect log line: the
/// protocol, the session kind and the keep-alive of a connected client, and
/// nothing for one that is not connected.
#[test]
fn client_info_says_what_the_connect_settled() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect_with(connect("clean-3", V4, true, 30));
    let info = sim.broker.client_info(a).expect("connected");
    assert_eq!(info.protocol, V4);
    assert!(!info.persistent);
    assert_eq!(info.keep_alive_secs, 30);
    let (b, _) = sim.connect_with(connect("kept-3", V4, false, 0));
    let info = sim.broker.client_info(b).expect("connected");
    assert!(info.persistent);
    assert_eq!(info.session_expiry_secs, u32::MAX);
    assert_eq!(info.keep_alive_secs, 0);
    let mut c = connect("kept-5", V5, false, 60);
    c.properties.session_expiry_interval = Some(3600);
    let (c, _) = sim.connect_with(c);
    let info = sim.broker.client_info(c).expect("connected");
    assert_eq!(info.protocol, V5);
    assert!(info.persistent);
    assert_eq!(info.session_expiry_secs, 3600);
    assert_eq!(info.keep_alive_secs, 60);
    let waiting = sim.open(V5);
    assert_eq!(sim.broker.client_info(waiting), None);
    sim.disconnect(a);
    assert_eq!(sim.broker.client_info(a), None);
}
