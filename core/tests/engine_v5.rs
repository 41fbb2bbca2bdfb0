//! Scenarios for MQTT 5.0 in the in-process harness: every feature of the
//! specification the engine implements, and every case of the Eclipse Paho
//! interoperability suite's `client_test5.py` (as `paho5_...`), written anew.

mod support;

use bytes::Bytes;
use roost_core::MqttStr;
use roost_core::broker::{
    AccessPolicy, AuthDecision, Authentication, ClientRef, CloseReason, Config, ConnId,
    PublishDecision, SubscribeDecision, Verdict,
};
use roost_core::codec::*;
use roost_core::topic::{TopicFilter, TopicName};
use std::collections::HashMap;
use std::num::{NonZeroU16, NonZeroU32};
use support::*;

const V5: Protocol = Protocol::V5;
const V4: Protocol = Protocol::V3_1_1;

// ---- helpers ----

/// A quiet simulation with a changed configuration.
fn sim_with(change: impl FnOnce(&mut Config)) -> Sim {
    let mut config = Config {
        sys_interval: None,
        ..Config::default()
    };
    change(&mut config);
    Sim::new(config)
}

/// An MQTT 5 CONNECT with a Session Expiry Interval.
fn connect5(client_id: &str, clean: bool, expiry: u32) -> Connect {
    let mut c = connect(client_id, V5, clean, 0);
    c.properties.session_expiry_interval = Some(expiry);
    c
}

/// Connects with `connect`, asserting CONNACK success.
fn join(sim: &mut Sim, connect: Connect) -> (ConnId, ConnAck) {
    let (id, ack) = sim.connect_with(connect);
    let ack = ack.expect("no CONNACK");
    assert_eq!(ack.reason, ReasonCode::Success, "CONNACK refused: {ack:?}");
    (id, ack)
}

fn props(pairs: &[(&str, &str)]) -> Vec<UserProperty> {
    pairs
        .iter()
        .map(|(n, v)| UserProperty {
            name: MqttStr::copy_from_str(n).unwrap(),
            value: MqttStr::copy_from_str(v).unwrap(),
        })
        .collect()
}

fn pairs(props: &[UserProperty]) -> Vec<(&str, &str)> {
    props
        .iter()
        .map(|p| (p.name.as_str(), p.value.as_str()))
        .collect()
}

fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..Default::default()
    }
}

/// One SUBSCRIBE with one filter, options and an optional identifier.
fn subscribe_opts(
    sim: &mut Sim,
    id: ConnId,
    pid: u16,
    filter: &str,
    options: SubscriptionOptions,
    sub_id: Option<u32>,
) -> ReasonCode {
    let mut sub = Subscribe {
        packet_id: PacketId::new(pid).unwrap(),
        subscriptions: vec![Subscription {
            filter: TopicFilter::copy_from_str(filter).unwrap(),
            options,
        }],
        properties: Default::default(),
    };
    sub.properties.subscription_identifier = sub_id.and_then(NonZeroU32::new);
    let reasons = sim.subscribe_with(id, sub);
    assert_eq!(reasons.len(), 1);
    reasons[0]
}

/// Publishes with properties and completes the publisher's side of the
/// QoS flow; returns the PUBACK/PUBREC reason (Success for QoS 0).
fn publish_with(sim: &mut Sim, id: ConnId, mut p: Publish) -> ReasonCode {
    let pid = p.qos.packet_id();
    let qos = p.qos.qos();
    p.dup = false;
    sim.send(id, Packet::Publish(p));
    let Some(pid) = pid else {
        return ReasonCode::Success;
    };
    match (qos, sim.take_ack(id, pid)) {
        (QoS::AtLeastOnce, Packet::PubAck(r)) => r.reason,
        (QoS::ExactlyOnce, Packet::PubRec(r)) => {
            if !r.reason.is_error() {
                sim.send(id, Packet::PubRel(PubResponse::new(pid)));
                assert!(matches!(sim.take_ack(id, pid), Packet::PubComp(_)));
            }
            r.reason
        }
        (_, other) => panic!("unexpected acknowledgement {other:?}"),
    }
}

/// The DISCONNECT the broker sent last to `id`, if any.
fn server_disconnect(sim: &mut Sim, id: ConnId) -> Option<Disconnect> {
    sim.recv_all(id).into_iter().rev().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d),
        _ => None,
    })
}

/// Asserts that the broker sent DISCONNECT `code` to `id` and closed it.
fn assert_disconnected(sim: &mut Sim, id: ConnId, code: ReasonCode) -> Disconnect {
    let d = server_disconnect(sim, id).unwrap_or_else(|| {
        panic!(
            "no DISCONNECT (expected {code:?}), closed: {:?}",
            sim.closed(id)
        )
    });
    assert_eq!(d.reason, code);
    assert!(sim.closed(id).is_some(), "connection left open");
    d
}

/// Sends DISCONNECT with a Session Expiry Interval.
fn disconnect_expiry(sim: &mut Sim, id: ConnId, expiry: u32) {
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(expiry);
    sim.send(id, Packet::Disconnect(d));
}

/// Ends `client_id`'s session: a clean-start connection with expiry 0.
fn end_session(sim: &mut Sim, client_id: &str) {
    let (a, _) = join(sim, connect5(client_id, true, 0));
    sim.disconnect(a);
}

fn payloads(got: &[Publish]) -> Vec<&[u8]> {
    got.iter().map(|p| &p.payload[..]).collect()
}

fn topic(name: &str) -> TopicName {
    TopicName::copy_from_str(name).unwrap()
}

/// The topic alias the broker used, if any.
fn alias(p: &Publish) -> Option<u16> {
    p.properties.topic_alias.map(NonZeroU16::get)
}

// ---- Paho client_test5.py, one test per case ----

#[test]
fn paho5_basic_round_trip_at_each_qos() {
    let mut sim = Sim::quiet();
    let (a, ack) = sim.connect("myclientid", V5, true);
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(!ack.session_present);
    sim.disconnect(a);
    let (a, ack) = sim.connect("myclientid", V5, true);
    assert!(!ack.session_present);
    assert_eq!(
        sim.subscribe(a, 1, &[("TopicA", QoS::ExactlyOnce)]),
        [ReasonCode::GrantedQoS2]
    );
    sim.publish(a, "TopicA", b"qos 0", QoS::AtMostOnce, 1, false);
    sim.publish(a, "TopicA", b"qos 1", QoS::AtLeastOnce, 2, false);
    sim.publish(a, "TopicA", b"qos 2", QoS::ExactlyOnce, 3, false);
    let got = sim.publishes(a);
    assert_eq!(payloads(&got), [&b"qos 0"[..], b"qos 1", b"qos 2"]);
    sim.ack_all(a, &got);

    // A second CONNECT is a protocol error: no CONNACK, DISCONNECT 0x82.
    sim.send(
        a,
        Packet::Connect(Box::new(connect("myclientid", V5, true, 0))),
    );
    let packets = sim.recv_all(a);
    assert!(!packets.iter().any(|p| matches!(p, Packet::ConnAck(_))));
    assert!(matches!(
        packets.last(),
        Some(Packet::Disconnect(d)) if d.reason == ReasonCode::ProtocolError
    ));
    assert!(sim.closed(a).is_some());

    // Protocol name "hj" at level 5 is refused.
    let b = sim.open(V5);
    sim.send_raw(
        b,
        &[
            0x10, 0x0C, 0x00, 0x02, b'h', b'j', 0x05, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, b'x',
        ],
    );
    assert!(sim.closed(b).is_some());
    assert!(
        !sim.recv_all(b)
            .iter()
            .any(|p| matches!(p, Packet::ConnAck(a) if a.reason == ReasonCode::Success))
    );
    sim.assert_no_leaks();
}

#[test]
fn paho5_retained_message_keeps_user_properties() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("myclientid", V5, true);
    let user = props(&[("a", "2"), ("c", "3")]);
    for (i, (t, qos)) in [
        ("TopicA/B", QoS::AtMostOnce),
        ("Topic/C", QoS::AtLeastOnce),
        ("TopicA/C", QoS::ExactlyOnce),
    ]
    .into_iter()
    .enumerate()
    {
        let mut p = publish(t, b"retained", qos, i as u16 + 1, true);
        p.properties.user_properties = user.clone();
        publish_with(&mut sim, a, p);
    }
    sim.subscribe(a, 9, &[("+/+", QoS::ExactlyOnce)]);
    let got = sim.publishes(a);
    assert_eq!(got.len(), 3);
    let mut qos: Vec<QoS> = got.iter().map(|p| p.qos.qos()).collect();
    qos.sort();
    assert_eq!(qos, [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]);
    for p in &got {
        assert!(p.retain);
        assert_eq!(
            pairs(&p.properties.user_properties),
            [("a", "2"), ("c", "3")]
        );
    }
    sim.ack_all(a, &got);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn paho5_will_message_keeps_user_properties_in_order() {
    let mut sim = Sim::quiet();
    let mut c = connect("myclientid", V5, true, 2);
    let mut w = will(
        "Topic/C",
        b"client not disconnected",
        QoS::AtMostOnce,
        false,
    );
    w.properties.will_delay_interval = Some(0);
    w.properties.user_properties = props(&[("a", "2"), ("c", "3")]);
    c.will = Some(w);
    let (a, _) = join(&mut sim, c);
    let (b, _) = sim.connect("myclientid2", V5, true);
    sim.subscribe(b, 1, &[("Topic/C", QoS::ExactlyOnce)]);
    sim.advance(secs(10));
    assert_eq!(sim.closed(a), Some(CloseReason::KeepAliveTimeout));
    let got = sim.publishes(b);
    assert_eq!(got.len(), 1);
    assert_eq!(
        pairs(&got[0].properties.user_properties),
        [("a", "2"), ("c", "3")]
    );
    sim.disconnect(b);
    sim.assert_no_leaks();
}

#[test]
fn paho5_zero_length_client_id_is_accepted_with_either_clean_start() {
    let mut sim = Sim::quiet();
    for clean in [false, true] {
        let (a, ack) = join(&mut sim, connect("", V5, clean, 0));
        assert!(!ack.session_present);
        assert!(ack.properties.assigned_client_identifier.is_some());
        sim.disconnect(a);
    }
    sim.assert_no_leaks();
}

#[test]
fn paho5_offline_messages_are_queued_for_an_unexpired_session() {
    let mut sim = Sim::quiet();
    let (a, _) = join(&mut sim, connect5("myclientid", false, 99999));
    sim.subscribe(a, 1, &[("+/+", QoS::ExactlyOnce)]);
    sim.disconnect(a);
    let (b, _) = sim.connect("myclientid2", V5, true);
    sim.publish(b, "TopicA/B", b"qos 0", QoS::AtMostOnce, 1, false);
    sim.publish(b, "Topic/C", b"qos 1", QoS::AtLeastOnce, 2, false);
    sim.publish(b, "TopicA/C", b"qos 2", QoS::ExactlyOnce, 3, false);
    sim.disconnect(b);
    let (a, ack) = join(&mut sim, connect5("myclientid", false, 99999));
    assert!(ack.session_present);
    let got = sim.publishes(a);
    assert_eq!(payloads(&got), [&b"qos 1"[..], b"qos 2"]);
    sim.ack_all(a, &got);
    sim.disconnect(a);
    end_session(&mut sim, "myclientid");
    sim.assert_no_leaks();
}

#[test]
fn paho5_overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("myclientid", V5, true);
    sim.subscribe(
        a,
        1,
        &[
            ("TopicA/#", QoS::ExactlyOnce),
            ("TopicA/+", QoS::AtLeastOnce),
        ],
    );
    sim.publish(a, "TopicA/C", b"overlapping", QoS::ExactlyOnce, 2, false);
    let got = sim.publishes(a);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos.qos(), QoS::ExactlyOnce);
    sim.ack_all(a, &got);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn paho5_keepalive_timeout_sends_0x8d_and_publishes_the_will() {
    let mut sim = Sim::quiet();
    let mut c = connect("myclientid", V5, true, 5);
    c.will = Some(will("/TopicA", b"keepalive expiry", QoS::AtMostOnce, false));
    let (a, _) = join(&mut sim, c);
    let (b, _) = sim.connect("myclientid2", V5, true);
    sim.subscribe(b, 1, &[("/TopicA", QoS::ExactlyOnce)]);
    sim.advance(secs(7));
    assert!(sim.closed(a).is_none(), "closed before 1.5 x keep-alive");
    sim.advance(secs(8));
    assert_disconnected(&mut sim, a, ReasonCode::KeepAliveTimeout);
    assert_eq!(payloads(&sim.publishes(b)), [&b"keepalive expiry"[..]]);
    sim.disconnect(b);
    sim.assert_no_leaks();
}

#[test]
fn paho5_redelivery_on_reconnect_resends_unacknowledged_messages() {
    let mut sim = Sim::quiet();
    let (b, _) = join(&mut sim, connect5("myclientid2", false, 99999));
    sim.subscribe(b, 1, &[("TopicA/#", QoS::ExactlyOnce)]);
    sim.publish(b, "TopicA/B", b"qos 1", QoS::AtLeastOnce, 2, false);
    sim.publish(b, "TopicA/C", b"qos 2", QoS::ExactlyOnce, 3, false);
    assert_eq!(sim.publishes(b).len(), 2, "delivered, not acknowledged");
    sim.disconnect(b);
    let (b, ack) = join(&mut sim, connect5("myclientid2", false, 99999));
    assert!(ack.session_present);
    let got = sim.publishes(b);
    assert_eq!(payloads(&got), [&b"qos 1"[..], b"qos 2"]);
    assert!(got.iter().all(|p| p.dup), "re-sent PUBLISHes carry DUP");
    sim.ack_all(b, &got);
    assert_eq!(sim.broker.inflight_count("myclientid2"), 0);
    sim.disconnect(b);
    end_session(&mut sim, "myclientid2");
    sim.assert_no_leaks();
}

struct Refuse(&'static str);

impl AccessPolicy for Refuse {
    fn authorize_publish(&self, _: ClientRef<'_>, topic: &TopicName) -> Verdict<PublishDecision> {
        Verdict::Decided(if topic.as_str() != self.0 {
            PublishDecision::Allow
        } else {
            PublishDecision::Deny(ReasonCode::NotAuthorized)
        })
    }
    fn authorize_subscribe(
        &self,
        _: ClientRef<'_>,
        filter: &TopicFilter,
        qos: QoS,
    ) -> Verdict<SubscribeDecision> {
        Verdict::Decided(if filter.as_str() == self.0 {
            SubscribeDecision::Deny(ReasonCode::UnspecifiedError)
        } else {
            SubscribeDecision::Grant(qos)
        })
    }
}

#[test]
fn paho5_subscribe_failure_answers_0x80() {
    let mut sim = sim_with(|c| c.authorization = Box::new(Refuse("test/nosubscribe")));
    let (a, _) = sim.connect("myclientid", V5, true);
    assert_eq!(
        sim.subscribe(a, 1, &[("test/nosubscribe", QoS::ExactlyOnce)]),
        [ReasonCode::UnspecifiedError]
    );
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn paho5_dollar_topics_do_not_match_leading_wildcards() {
    let mut sim = Sim::quiet();
    let (b, _) = sim.connect("myclientid2", V5, true);
    sim.subscribe(b, 1, &[("+/+", QoS::ExactlyOnce)]);
    sim.publish(b, "$TopicA/B", b"", QoS::AtLeastOnce, 2, false);
    assert!(sim.publishes(b).is_empty());
    assert!(sim.closed(b).is_none());
    sim.disconnect(b);
    sim.assert_no_leaks();
}

#[test]
fn paho5_unsubscribe_stops_deliveries_for_that_filter_only() {
    let mut sim = Sim::quiet();
    let (b, _) = sim.connect("myclientid2", V5, true);
    sim.subscribe(
        b,
        1,
        &[
            ("TopicA", QoS::AtLeastOnce),
            ("TopicA/B", QoS::AtLeastOnce),
            ("Topic/C", QoS::AtLeastOnce),
        ],
    );
    sim.send(
        b,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: PacketId::new(2).unwrap(),
            filters: vec![TopicFilter::from_static("TopicA")],
            properties: Default::default(),
        }),
    );
    let Some(Packet::UnsubAck(ack)) = sim.recv(b) else {
        panic!("no UNSUBACK")
    };
    assert_eq!(ack.reasons, [ReasonCode::Success]);
    let (a, _) = sim.connect("myclientid", V5, true);
    for (i, t) in ["TopicA", "TopicA/B", "Topic/C"].into_iter().enumerate() {
        sim.publish(a, t, b"x", QoS::AtLeastOnce, i as u16 + 1, false);
    }
    let got = sim.publishes(b);
    assert_eq!(got.len(), 2);
    sim.ack_all(b, &got);
    sim.disconnect(a);
    sim.disconnect(b);
    sim.assert_no_leaks();
}

#[test]
fn paho5_session_expiry_sets_how_long_a_session_outlives_its_connection() {
    let mut sim = Sim::quiet();
    // Expiry 0: the session ends with the connection.
    let (a, _) = join(&mut sim, connect5("myclientid", true, 0));
    sim.disconnect(a);
    let (a, ack) = join(&mut sim, connect5("myclientid", false, 5));
    assert!(!ack.session_present);
    sim.disconnect(a);
    // Expiry 5: back after 2 s finds it, after 6 more it is gone.
    sim.advance(secs(2));
    let (a, ack) = join(&mut sim, connect5("myclientid", false, 5));
    assert!(ack.session_present);
    sim.disconnect(a);
    sim.advance(secs(6));
    assert!(!sim.broker.has_session("myclientid"));
    let (a, ack) = join(&mut sim, connect5("myclientid", false, 1));
    assert!(!ack.session_present);
    // Expiry 1 raised to 5 by the DISCONNECT.
    disconnect_expiry(&mut sim, a, 5);
    sim.advance(secs(3));
    let (a, ack) = join(&mut sim, connect5("myclientid", false, 1));
    assert!(ack.session_present);
    // DISCONNECT with expiry 0 ends the session at once.
    disconnect_expiry(&mut sim, a, 0);
    assert!(!sim.broker.has_session("myclientid"));
    let (a, ack) = join(&mut sim, connect5("myclientid", false, 0));
    assert!(!ack.session_present);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn paho5_user_properties_are_forwarded() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("myclientid", V5, true);
    sim.subscribe(a, 1, &[("TopicA", QoS::ExactlyOnce)]);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let mut p = publish("TopicA", b"user properties", qos, i as u16 + 1, false);
        p.properties.user_properties = props(&[("a", "2"), ("c", "3")]);
        publish_with(&mut sim, a, p);
    }
    let got = sim.publishes(a);
    assert_eq!(got.len(), 3);
    for p in &got {
        assert_eq!(
            pairs(&p.properties.user_properties),
            [("a", "2"), ("c", "3")]
        );
    }
    sim.ack_all(a, &got);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn paho5_payload_format_and_content_type_are_forwarded() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("myclientid", V5, true);
    sim.subscribe(a, 1, &[("TopicA", QoS::ExactlyOnce)]);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let mut p = publish(
            "TopicA",
            "payload format".as_bytes(),
            qos,
            i as u16 + 1,
            false,
        );
        p.properties.payload_format_indicator = Some(true);
        p.properties.content_type = Some(MqttStr::from_static("My name"));
        assert_eq!(publish_with(&mut sim, a, p), ReasonCode::Success);
    }
    let got = sim.publishes(a);
    assert_eq!(got.len(), 3);
    for p in &got {
        assert_eq!(p.properties.payload_format_indicator, Some(true));
        assert_eq!(
            p.properties.content_type.as_ref().unwrap().as_str(),
            "My name"
        );
    }
    sim.ack_all(a, &got);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn paho5_publication_expiry_drops_expired_messages_and_reduces_the_interval() {
    let mut sim = Sim::quiet();
    let (b, _) = join(&mut sim, connect5("myclientid2", true, 1));
    sim.subscribe(b, 1, &[("TopicA", QoS::ExactlyOnce)]);
    disconnect_expiry(&mut sim, b, 99999);
    let (a, _) = sim.connect("myclientid", V5, true);
    for (pid, qos, expiry) in [
        (1, QoS::AtLeastOnce, 1),
        (2, QoS::ExactlyOnce, 1),
        (3, QoS::AtLeastOnce, 6),
        (4, QoS::ExactlyOnce, 6),
    ] {
        let mut p = publish(
            "TopicA",
            format!("expiry {expiry}").as_bytes(),
            qos,
            pid,
            false,
        );
        p.properties.message_expiry_interval = Some(expiry);
        publish_with(&mut sim, a, p);
    }
    assert_eq!(sim.broker.queued_count("myclientid2"), 4);
    sim.advance(secs(3));
    let (b, ack) = join(&mut sim, connect5("myclientid2", false, 99999));
    assert!(ack.session_present);
    let got = sim.publishes(b);
    assert_eq!(payloads(&got), [&b"expiry 6"[..], b"expiry 6"]);
    for p in &got {
        let left = p.properties.message_expiry_interval.unwrap();
        assert!(left < 6 && left > 0, "interval left: {left}");
    }
    sim.ack_all(b, &got);
    sim.disconnect(a);
    sim.disconnect(b);
    end_session(&mut sim, "myclientid2");
    sim.assert_no_leaks();
}

#[test]
fn paho5_subscribe_options_no_local_retain_as_published_and_retain_handling() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("myclientid", V5, true);
    let (b, _) = sim.connect("myclientid2", V5, true);
    let no_local = SubscriptionOptions {
        no_local: true,
        ..options(QoS::ExactlyOnce)
    };
    subscribe_opts(&mut sim, a, 1, "TopicA", no_local, None);
    subscribe_opts(&mut sim, b, 1, "TopicA", no_local, None);
    sim.publish(a, "TopicA", b"no local", QoS::AtMostOnce, 1, false);
    assert!(
        sim.publishes(a).is_empty(),
        "No Local: not back to its publisher"
    );
    assert_eq!(sim.publishes(b).len(), 1);
    sim.disconnect(a);
    sim.disconnect(b);

    // Retain As Published.
    let (a, _) = sim.connect("myclientid", V5, true);
    let rap = SubscriptionOptions {
        retain_as_published: true,
        ..options(QoS::ExactlyOnce)
    };
    subscribe_opts(&mut sim, a, 1, "TopicA", rap, None);
    sim.publish(a, "TopicA", b"not retained", QoS::AtMostOnce, 1, false);
    sim.publish(a, "TopicA", b"retained", QoS::AtMostOnce, 2, true);
    let got = sim.publishes(a);
    assert_eq!(
        got.iter().map(|p| p.retain).collect::<Vec<_>>(),
        [false, true]
    );
    sim.publish(a, "TopicA", b"", QoS::AtMostOnce, 3, true);
    sim.publishes(a);
    sim.disconnect(a);

    // Retain Handling 1, 2, 0.
    let (a, _) = sim.connect("myclientid", V5, true);
    for (i, (t, qos)) in [
        ("TopicA/B", QoS::AtMostOnce),
        ("Topic/C", QoS::AtLeastOnce),
        ("TopicA/C", QoS::ExactlyOnce),
    ]
    .into_iter()
    .enumerate()
    {
        sim.publish(a, t, b"retained", qos, i as u16 + 1, true);
    }
    let handling = |rh| SubscriptionOptions {
        retain_handling: rh,
        ..options(QoS::ExactlyOnce)
    };
    let count = |sim: &mut Sim, pid, rh| {
        subscribe_opts(sim, a, pid, "+/+", handling(rh), None);
        let got = sim.publishes(a);
        sim.ack_all(a, &got);
        got.len()
    };
    assert_eq!(count(&mut sim, 10, RetainHandling::SendIfNew), 3);
    assert_eq!(count(&mut sim, 11, RetainHandling::SendIfNew), 0, "repeat");
    sim.send(
        a,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: PacketId::new(12).unwrap(),
            filters: vec![TopicFilter::from_static("+/+")],
            properties: Default::default(),
        }),
    );
    sim.recv_all(a);
    assert_eq!(count(&mut sim, 13, RetainHandling::DoNotSend), 0);
    assert_eq!(count(&mut sim, 14, RetainHandling::SendOnSubscribe), 3);
    assert_eq!(
        count(&mut sim, 15, RetainHandling::SendOnSubscribe),
        3,
        "repeat"
    );
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn paho5_assigned_client_identifier() {
    let mut sim = Sim::quiet();
    let (a, ack) = join(&mut sim, connect("", V5, true, 0));
    let assigned = ack.properties.assigned_client_identifier.expect("no id");
    assert!(!assigned.is_empty());
    assert!(sim.broker.has_session(assigned.as_str()));
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn paho5_subscribe_identifiers_one_message_per_client_with_every_id() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("myclientid", V5, true);
    let (b, _) = sim.connect("myclientid2", V5, true);
    subscribe_opts(
        &mut sim,
        a,
        1,
        "TopicA",
        options(QoS::ExactlyOnce),
        Some(456789),
    );
    subscribe_opts(&mut sim, b, 1, "TopicA", options(QoS::ExactlyOnce), Some(2));
    subscribe_opts(
        &mut sim,
        b,
        2,
        "TopicA/#",
        options(QoS::ExactlyOnce),
        Some(3),
    );
    sim.publish(b, "TopicA", b"identifiers", QoS::AtMostOnce, 1, false);
    let got = sim.publishes(a);
    assert_eq!(got.len(), 1);
    let ids = |p: &Publish| {
        let mut v: Vec<u32> = p
            .properties
            .subscription_identifiers
            .iter()
            .map(|i| i.get())
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&got[0]), [456789]);
    let got = sim.publishes(b);
    assert_eq!(got.len(), 1, "one message, not one per subscription");
    assert_eq!(ids(&got[0]), [2, 3]);
    sim.disconnect(a);
    sim.disconnect(b);
    sim.assert_no_leaks();
}

#[test]
fn paho5_request_response() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("myclientid", V5, true);
    let (b, _) = sim.connect("myclientid2", V5, true);
    let no_local = SubscriptionOptions {
        no_local: true,
        ..options(QoS::ExactlyOnce)
    };
    subscribe_opts(&mut sim, a, 1, "TopicA", no_local, None);
    subscribe_opts(&mut sim, b, 1, "TopicA/B", options(QoS::ExactlyOnce), None);
    let mut request = publish("TopicA/B", b"request", QoS::AtLeastOnce, 1, false);
    request.properties.response_topic = Some(topic("TopicA"));
    request.properties.correlation_data = Some(Bytes::from_static(b"334"));
    publish_with(&mut sim, a, request);
    let got = sim.publishes(b);
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(
        req.properties.response_topic.as_ref().unwrap().as_str(),
        "TopicA"
    );
    assert_eq!(
        req.properties.correlation_data.as_deref(),
        Some(&b"334"[..])
    );
    sim.ack_all(b, &got);
    let mut response = publish("TopicA", b"response", QoS::AtLeastOnce, 2, false);
    response.properties.correlation_data = req.properties.correlation_data.clone();
    publish_with(&mut sim, b, response);
    let got = sim.publishes(a);
    assert_eq!(payloads(&got), [&b"response"[..]]);
    assert_eq!(
        got[0].properties.correlation_data.as_deref(),
        Some(&b"334"[..])
    );
    sim.ack_all(a, &got);
    sim.disconnect(a);
    sim.disconnect(b);
    sim.assert_no_leaks();
}

/// A QoS 0 PUBLISH to "TopicA" (or the empty topic) with a raw Topic Alias.
fn raw_alias_publish(topic: &[u8], alias: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic);
    body.extend_from_slice(&[0x03, 0x23]);
    body.extend_from_slice(&alias.to_be_bytes());
    body.extend_from_slice(b"x");
    let mut packet = vec![0x30, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

#[test]
fn paho5_client_topic_alias() {
    let mut sim = Sim::quiet();
    let (a, ack) = sim.connect("myclientid", V5, true);
    assert!(ack.properties.topic_alias_maximum.unwrap_or(0) > 0);
    sim.send_raw(a, &raw_alias_publish(b"TopicA", 0));
    assert_disconnected(&mut sim, a, ReasonCode::TopicAliasInvalid);

    let (a, _) = sim.connect("myclientid", V5, true);
    sim.subscribe(a, 1, &[("TopicA", QoS::AtLeastOnce)]);
    let mut first = publish("TopicA", b"topic alias 1", QoS::AtLeastOnce, 1, false);
    first.properties.topic_alias = NonZeroU16::new(1);
    publish_with(&mut sim, a, first);
    let mut second = publish("TopicA", b"topic alias 2", QoS::AtLeastOnce, 2, false);
    second.topic = TopicName::default();
    second.properties.topic_alias = NonZeroU16::new(1);
    publish_with(&mut sim, a, second);
    let got = sim.publishes(a);
    assert_eq!(payloads(&got), [&b"topic alias 1"[..], b"topic alias 2"]);
    sim.ack_all(a, &got);
    sim.disconnect(a);

    // Aliases belong to one connection.
    let (a, _) = sim.connect("myclientid", V5, true);
    sim.send_raw(a, &raw_alias_publish(b"", 1));
    assert_disconnected(&mut sim, a, ReasonCode::ProtocolError);
    sim.assert_no_leaks();
}

#[test]
fn paho5_server_topic_alias() {
    let mut sim = Sim::quiet();
    let mut c = connect("myclientid", V5, true, 0);
    c.properties.topic_alias_maximum = Some(1);
    let (a, _) = join(&mut sim, c);
    sim.subscribe(a, 1, &[("TopicA", QoS::AtLeastOnce)]);
    for pid in 1..=3 {
        sim.publish(a, "TopicA", b"server alias", QoS::AtLeastOnce, pid, false);
    }
    let got = sim.publishes(a);
    assert_eq!(got.len(), 3);
    let first = alias(&got[0]).expect("first PUBLISH carries an alias");
    assert_eq!(got[0].topic.as_str(), "TopicA");
    for p in &got[1..] {
        assert!(p.topic.is_empty(), "later PUBLISHes use the alias only");
        assert_eq!(alias(p), Some(first));
    }
    sim.ack_all(a, &got);
    sim.disconnect(a);

    for max in [None, Some(0)] {
        let mut c = connect("myclientid", V5, true, 0);
        c.properties.topic_alias_maximum = max;
        let (a, _) = join(&mut sim, c);
        sim.subscribe(a, 1, &[("TopicA", QoS::AtLeastOnce)]);
        for pid in 1..=3 {
            sim.publish(a, "TopicA", b"no alias", QoS::AtLeastOnce, pid, false);
        }
        let got = sim.publishes(a);
        assert_eq!(got.len(), 3);
        assert!(
            got.iter()
                .all(|p| alias(p).is_none() && p.topic.as_str() == "TopicA")
        );
        sim.ack_all(a, &got);
        sim.disconnect(a);
    }
    sim.assert_no_leaks();
}

#[test]
fn paho5_maximum_packet_size() {
    let mut sim = sim_with(|c| c.limits.max_packet_size = 1000);
    let (a, ack) = sim.connect("myclientid", V5, true);
    let max = ack.properties.maximum_packet_size.expect("announced").get();
    assert_eq!(max, 1000);
    sim.send(
        a,
        Packet::Publish(publish(
            "TopicA",
            &vec![b'x'; max as usize],
            QoS::AtMostOnce,
            1,
            false,
        )),
    );
    assert_disconnected(&mut sim, a, ReasonCode::PacketTooLarge);

    let mut c = connect("myclientid", V5, true, 0);
    c.properties.maximum_packet_size = NonZeroU32::new(64);
    let (a, _) = join(&mut sim, c);
    sim.subscribe(a, 1, &[("TopicA", QoS::AtMostOnce)]);
    sim.publish(a, "TopicA", &[b'a'; 32], QoS::AtMostOnce, 1, false);
    sim.publish(a, "TopicA", &[b'b'; 64], QoS::AtMostOnce, 2, false);
    assert_eq!(payloads(&sim.publishes(a)), [&[b'a'; 32][..]]);
    assert!(sim.closed(a).is_none());
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn paho5_server_keep_alive() {
    let mut sim = sim_with(|c| c.limits.max_keepalive = Some(60));
    let (a, ack) = join(&mut sim, connect("myclientid", V5, true, 120));
    assert_eq!(ack.properties.server_keep_alive, Some(60));
    // The connection is held to 60 s, not 120.
    sim.advance(secs(91));
    assert_disconnected(&mut sim, a, ReasonCode::KeepAliveTimeout);
    sim.assert_no_leaks();
}

#[test]
fn paho5_flow_control_receive_maximum_toward_the_client() {
    let mut sim = Sim::quiet();
    let mut c = connect("myclientid", V5, true, 0);
    c.properties.receive_maximum = NonZeroU16::new(2);
    let (a, _) = join(&mut sim, c);
    sim.subscribe(a, 1, &[("TopicA", QoS::AtLeastOnce)]);
    let (b, _) = sim.connect("myclientid2", V5, true);
    for pid in 1..=3 {
        sim.publish(
            b,
            "TopicA",
            format!("m{pid}").as_bytes(),
            QoS::AtLeastOnce,
            pid,
            false,
        );
    }
    let got = sim.publishes(a);
    assert_eq!(payloads(&got), [&b"m1"[..], b"m2"]);
    assert_eq!(sim.broker.queued_count("myclientid"), 1);
    sim.ack_all(a, &got[..1]);
    let third = sim.publishes(a);
    assert_eq!(payloads(&third), [&b"m3"[..]]);
    sim.ack_all(a, &got[1..]);
    sim.ack_all(a, &third);
    sim.disconnect(a);
    sim.disconnect(b);
    sim.assert_no_leaks();
}

#[test]
fn paho5_flow_control_receive_maximum_exceeded_by_the_client() {
    let mut sim = sim_with(|c| c.receive_maximum = 3);
    let (a, ack) = sim.connect("myclientid", V5, true);
    let max = ack.properties.receive_maximum.expect("announced").get();
    assert_eq!(max, 3);
    for pid in 1..=max {
        sim.send(
            a,
            Packet::Publish(publish("TopicA", b"x", QoS::ExactlyOnce, pid, false)),
        );
    }
    assert!(sim.closed(a).is_none(), "up to Receive Maximum is fine");
    sim.send(
        a,
        Packet::Publish(publish("TopicA", b"x", QoS::ExactlyOnce, max + 1, false)),
    );
    assert_disconnected(&mut sim, a, ReasonCode::ReceiveMaximumExceeded);
    sim.assert_no_leaks();
}

/// Connects `client_id` with a will on `topic` after `delay` s and a
/// session expiry, subscribes a watcher, and cuts the transport. Returns the
/// watcher.
fn will_setup(sim: &mut Sim, delay: u32, expiry: u32) -> ConnId {
    let mut c = connect5("will-client", true, expiry);
    let mut w = will("TopicA", b"will", QoS::AtLeastOnce, false);
    w.properties.will_delay_interval = Some(delay);
    c.will = Some(w);
    let (a, _) = join(sim, c);
    let (w, _) = sim.connect("watcher", V5, true);
    sim.subscribe(w, 1, &[("TopicA", QoS::AtLeastOnce)]);
    sim.drop_transport(a);
    w
}

#[test]
fn paho5_will_delay() {
    let mut sim = Sim::quiet();
    // Delay 3, session 5: after 3 s.
    let w = will_setup(&mut sim, 3, 5);
    sim.advance(secs(2));
    assert!(sim.publishes(w).is_empty(), "too early");
    sim.advance(secs(1));
    let got = sim.publishes(w);
    assert_eq!(payloads(&got), [&b"will"[..]]);
    sim.ack_all(w, &got);
    sim.disconnect(w);
    sim.advance(secs(5));
    sim.assert_no_leaks();

    // Delay 5, session 0: the session ends first, at once.
    let w = will_setup(&mut sim, 5, 0);
    let got = sim.publishes(w);
    assert_eq!(payloads(&got), [&b"will"[..]]);
    sim.ack_all(w, &got);
    sim.disconnect(w);
    sim.assert_no_leaks();

    // Delay 5, session 2: at the session's end, after 2 s.
    let w = will_setup(&mut sim, 5, 2);
    sim.advance(secs(1));
    assert!(sim.publishes(w).is_empty(), "too early");
    sim.advance(secs(1));
    let got = sim.publishes(w);
    assert_eq!(payloads(&got), [&b"will"[..]]);
    sim.ack_all(w, &got);
    sim.advance(secs(5));
    assert!(sim.publishes(w).is_empty(), "published once");
    sim.disconnect(w);
    sim.assert_no_leaks();
}

#[test]
fn paho5_shared_subscriptions() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("myclientid", V5, true);
    let (b, _) = sim.connect("myclientid2", V5, true);
    for id in [a, b] {
        sim.subscribe(
            id,
            1,
            &[
                ("$share/sharename/client_test5/x", QoS::AtMostOnce),
                ("TopicA", QoS::AtMostOnce),
            ],
        );
    }
    sim.publish(a, "TopicA", b"both", QoS::AtMostOnce, 1, false);
    assert_eq!(sim.publishes(a).len(), 1);
    assert_eq!(sim.publishes(b).len(), 1);
    sim.publish(a, "client_test5/x", b"one", QoS::AtMostOnce, 2, false);
    assert_eq!(sim.publishes(a).len() + sim.publishes(b).len(), 1);
    sim.disconnect(a);
    sim.disconnect(b);
    sim.assert_no_leaks();
}

// ---- Sessions ----

#[test]
fn disconnect_cannot_raise_session_expiry_from_zero() {
    let mut sim = Sim::quiet();
    let (a, _) = join(&mut sim, connect5("a", false, 0));
    disconnect_expiry(&mut sim, a, 10);
    let d = assert_disconnected(&mut sim, a, ReasonCode::ProtocolError);
    assert!(d.properties.reason_string.is_some(), "says why");
    assert!(
        !sim.broker.has_session("a"),
        "the session ended with expiry 0"
    );
    sim.assert_no_leaks();
}

#[test]
fn expired_session_and_its_queue_are_removed() {
    let mut sim = Sim::quiet();
    let (a, _) = join(&mut sim, connect5("a", false, 10));
    sim.subscribe(a, 1, &[("t", QoS::AtLeastOnce)]);
    sim.disconnect(a);
    let (b, _) = sim.connect("b", V5, true);
    sim.publish(b, "t", b"queued", QoS::AtLeastOnce, 1, false);
    assert_eq!(sim.broker.queued_count("a"), 1);
    sim.advance(secs(9));
    assert!(sim.broker.has_session("a"));
    sim.advance(secs(1));
    assert!(!sim.broker.has_session("a"));
    assert_eq!(sim.broker.queued_count("a"), 0);
    let (a, ack) = join(&mut sim, connect5("a", false, 0));
    assert!(!ack.session_present);
    assert!(sim.publishes(a).is_empty(), "nothing left of the old queue");
    sim.disconnect(a);
    sim.disconnect(b);
    sim.assert_no_leaks();
}

#[test]
fn clean_start_discards_an_existing_session() {
    let mut sim = Sim::quiet();
    let (a, _) = join(&mut sim, connect5("a", false, 100));
    sim.subscribe(a, 1, &[("t", QoS::AtLeastOnce)]);
    sim.disconnect(a);
    let (a, ack) = join(&mut sim, connect5("a", true, 100));
    assert!(!ack.session_present);
    assert_eq!(sim.broker.subscription_count(), 0);
    sim.disconnect(a);
    end_session(&mut sim, "a");
    sim.assert_no_leaks();
}

#[test]
fn session_present_on_resume_with_its_subscriptions() {
    let mut sim = Sim::quiet();
    let (a, _) = join(&mut sim, connect5("a", false, 100));
    sim.subscribe(a, 1, &[("t", QoS::AtLeastOnce)]);
    sim.drop_transport(a);
    let (a, ack) = join(&mut sim, connect5("a", false, 100));
    assert!(ack.session_present);
    let (b, _) = sim.connect("b", V5, true);
    sim.publish(b, "t", b"still subscribed", QoS::AtMostOnce, 1, false);
    assert_eq!(sim.publishes(a).len(), 1);
    sim.disconnect(b);
    disconnect_expiry(&mut sim, a, 0);
    sim.assert_no_leaks();
}

// ---- Reason codes, reason strings, Request Problem Information ----

#[test]
fn connack_refusal_carries_the_reason_code_and_a_reason_string() {
    let mut sim = sim_with(|c| {
        c.authentication = Authentication::Static {
            allow_anonymous: false,
            users: vec![(MqttStr::from_static("u"), Bytes::from_static(b"p"))],
        }
    });
    let mut c = connect("a", V5, true, 0);
    c.username = Some(MqttStr::from_static("u"));
    c.password = Some(Bytes::from_static(b"wrong"));
    let (a, ack) = sim.connect_with(c);
    let ack = ack.expect("CONNACK");
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    assert!(ack.properties.reason_string.is_some());
    assert!(sim.closed(a).is_some());
    let (a, ack) = sim.connect_with(connect("a", V5, true, 0));
    assert_eq!(ack.unwrap().reason, ReasonCode::NotAuthorized);
    assert!(sim.closed(a).is_some());
    sim.assert_no_leaks();
}

#[test]
fn puback_and_pubrec_report_no_subscribers_and_not_authorized() {
    let mut sim = sim_with(|c| c.authorization = Box::new(Refuse("secret")));
    let (a, _) = sim.connect("a", V5, true);
    let p = publish("nobody", b"x", QoS::AtLeastOnce, 1, false);
    assert_eq!(
        publish_with(&mut sim, a, p),
        ReasonCode::NoMatchingSubscribers
    );
    let p = publish("nobody", b"x", QoS::ExactlyOnce, 2, false);
    assert_eq!(
        publish_with(&mut sim, a, p),
        ReasonCode::NoMatchingSubscribers
    );
    let p = publish("secret", b"x", QoS::AtLeastOnce, 3, false);
    assert_eq!(publish_with(&mut sim, a, p), ReasonCode::NotAuthorized);
    let p = publish("secret", b"x", QoS::ExactlyOnce, 4, false);
    assert_eq!(publish_with(&mut sim, a, p), ReasonCode::NotAuthorized);
    sim.subscribe(a, 5, &[("nobody", QoS::AtLeastOnce)]);
    let p = publish("nobody", b"x", QoS::AtLeastOnce, 6, false);
    assert_eq!(publish_with(&mut sim, a, p), ReasonCode::Success);
    let got = sim.publishes(a);
    sim.ack_all(a, &got);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn unknown_packet_ids_get_0x92_on_pubrel_and_pubrec() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V5, true);
    let pid = PacketId::new(7).unwrap();
    sim.send(a, Packet::PubRel(PubResponse::new(pid)));
    let Packet::PubComp(r) = sim.take_ack(a, pid) else {
        panic!("no PUBCOMP")
    };
    assert_eq!(r.reason, ReasonCode::PacketIdentifierNotFound);
    sim.send(a, Packet::PubRec(PubResponse::new(pid)));
    let Packet::PubRel(r) = sim.take_ack(a, pid) else {
        panic!("no PUBREL")
    };
    assert_eq!(r.reason, ReasonCode::PacketIdentifierNotFound);
    assert!(sim.closed(a).is_none());
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn suback_and_unsuback_reason_codes() {
    let mut sim = sim_with(|c| {
        c.maximum_qos = QoS::AtLeastOnce;
        c.limits.max_subscriptions_per_client = 2;
    });
    let (a, _) = sim.connect("a", V5, true);
    assert_eq!(
        sim.subscribe(
            a,
            1,
            &[
                ("q0", QoS::AtMostOnce),
                ("q2", QoS::ExactlyOnce),
                ("more", QoS::AtMostOnce)
            ]
        ),
        [
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::QuotaExceeded
        ]
    );
    sim.send(
        a,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: PacketId::new(2).unwrap(),
            filters: vec![
                TopicFilter::from_static("q0"),
                TopicFilter::from_static("none"),
            ],
            properties: Default::default(),
        }),
    );
    let Some(Packet::UnsubAck(ack)) = sim.recv(a) else {
        panic!("no UNSUBACK")
    };
    assert_eq!(
        ack.reasons,
        [ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
    );
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn malformed_packet_gets_disconnect_0x81() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V5, true);
    // PINGREQ with a body.
    sim.send_raw(a, &[0xC0, 0x01, 0x00]);
    assert_disconnected(&mut sim, a, ReasonCode::MalformedPacket);
    sim.assert_no_leaks();
}

#[test]
fn takeover_sends_0x8e_to_the_old_connection() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V5, true);
    let (b, _) = sim.connect("a", V5, true);
    assert_disconnected(&mut sim, a, ReasonCode::SessionTakenOver);
    assert_eq!(sim.closed(a), Some(CloseReason::SessionTakenOver));
    sim.disconnect(b);
    sim.assert_no_leaks();
}

#[test]
fn shutdown_sends_0x8b_and_refuses_new_connections() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V5, true);
    let (b, _) = sim.connect("b", V4, true);
    sim.broker.shutdown(sim.now);
    sim.drain();
    assert_disconnected(&mut sim, a, ReasonCode::ServerShuttingDown);
    assert!(
        sim.recv_all(b).is_empty(),
        "MQTT 3 has no server DISCONNECT"
    );
    assert_eq!(sim.closed(b), Some(CloseReason::ServerShutdown));
    let (c, ack) = sim.connect_with(connect("c", V5, true, 0));
    assert_eq!(ack.unwrap().reason, ReasonCode::ServerUnavailable);
    assert!(sim.closed(c).is_some());
    sim.assert_no_leaks();
}

#[test]
fn reason_strings_explain_failures_unless_problem_information_is_refused() {
    let mut sim = sim_with(|c| c.wildcard_subscription_available = false);
    let (a, _) = sim.connect("a", V5, true);
    let mut c = connect("b", V5, true, 0);
    c.properties.request_problem_information = Some(false);
    let (b, _) = join(&mut sim, c);

    let wildcard = |pid| Subscribe {
        packet_id: PacketId::new(pid).unwrap(),
        subscriptions: vec![Subscription {
            filter: TopicFilter::from_static("t/#"),
            options: options(QoS::AtMostOnce),
        }],
        properties: Default::default(),
    };
    for (id, expect) in [(a, true), (b, false)] {
        sim.send(id, Packet::Subscribe(wildcard(1)));
        let Some(Packet::SubAck(ack)) = sim.recv(id) else {
            panic!("no SUBACK")
        };
        assert_eq!(ack.reasons, [ReasonCode::WildcardSubscriptionsNotSupported]);
        assert_eq!(ack.properties.reason_string.is_some(), expect, "SUBACK");

        let mut p = publish("t", &[0xFF, 0xFE], QoS::AtLeastOnce, 2, false);
        p.properties.payload_format_indicator = Some(true);
        sim.send(id, Packet::Publish(p));
        let Packet::PubAck(r) = sim.take_ack(id, PacketId::new(2).unwrap()) else {
            panic!("no PUBACK")
        };
        assert_eq!(r.reason, ReasonCode::PayloadFormatInvalid);
        assert_eq!(r.properties.reason_string.is_some(), expect, "PUBACK");
        assert!(r.properties.user_properties.is_empty());

        sim.send(
            id,
            Packet::PubRel(PubResponse::new(PacketId::new(3).unwrap())),
        );
        let Packet::PubComp(r) = sim.take_ack(id, PacketId::new(3).unwrap()) else {
            panic!("no PUBCOMP")
        };
        assert_eq!(r.properties.reason_string.is_some(), expect, "PUBCOMP");
    }
    // DISCONNECT may carry one whatever the client asked.
    sim.send_raw(b, &raw_alias_publish(b"t", 0));
    let d = assert_disconnected(&mut sim, b, ReasonCode::TopicAliasInvalid);
    assert!(d.properties.reason_string.is_some());
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn reason_strings_are_left_out_when_they_would_exceed_the_clients_maximum_packet_size() {
    let mut sim = sim_with(|c| c.wildcard_subscription_available = false);
    let mut sizes = Vec::new();
    for max in [24, 1000] {
        let mut c = connect("a", V5, true, 0);
        c.properties.maximum_packet_size = NonZeroU32::new(max);
        let (a, _) = join(&mut sim, c);
        sim.send(
            a,
            Packet::Subscribe(Subscribe {
                packet_id: PacketId::new(1).unwrap(),
                subscriptions: vec![Subscription {
                    filter: TopicFilter::from_static("t/#"),
                    options: options(QoS::AtMostOnce),
                }],
                properties: Default::default(),
            }),
        );
        let Some(ack) = sim.recv(a) else {
            panic!("no SUBACK")
        };
        let Packet::SubAck(suback) = &ack else {
            panic!("not a SUBACK: {ack:?}")
        };
        assert_eq!(
            suback.reasons,
            [ReasonCode::WildcardSubscriptionsNotSupported]
        );
        sizes.push((
            ack.encoded_len(V5),
            suback.properties.reason_string.is_some(),
        ));
        sim.disconnect(a);
    }
    assert!(sizes[0].0 <= 24, "SUBACK of {} bytes", sizes[0].0);
    assert_eq!(
        (sizes[0].1, sizes[1].1),
        (false, true),
        "stripped only to fit"
    );
    sim.assert_no_leaks();
}

// ---- Message expiry ----

#[test]
fn retained_messages_expire() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V5, true);
    let mut p = publish("r", b"short-lived", QoS::AtMostOnce, 1, true);
    p.properties.message_expiry_interval = Some(5);
    publish_with(&mut sim, a, p);
    sim.advance(secs(2));
    sim.subscribe(a, 1, &[("r", QoS::AtMostOnce)]);
    let got = sim.publishes(a);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].properties.message_expiry_interval, Some(3));
    sim.advance(secs(3));
    sim.subscribe(a, 2, &[("#", QoS::AtMostOnce)]);
    assert!(sim.publishes(a).is_empty(), "expired retained message sent");
    assert_eq!(sim.broker.retained_count(), 0);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn messages_without_expiry_carry_no_expiry_interval() {
    let mut sim = Sim::quiet();
    let (a, _) = join(&mut sim, connect5("a", false, 100));
    sim.subscribe(a, 1, &[("t", QoS::AtLeastOnce)]);
    sim.disconnect(a);
    let (b, _) = sim.connect("b", V5, true);
    sim.publish(b, "t", b"x", QoS::AtLeastOnce, 1, false);
    sim.advance(secs(50));
    let (a, _) = join(&mut sim, connect5("a", false, 0));
    let got = sim.publishes(a);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].properties.message_expiry_interval, None);
    sim.ack_all(a, &got);
    sim.disconnect(a);
    sim.disconnect(b);
    sim.assert_no_leaks();
}

// ---- Topic aliases ----

#[test]
fn client_topic_alias_above_the_maximum_is_0x94() {
    let mut sim = sim_with(|c| c.topic_alias_maximum = 2);
    let (a, ack) = sim.connect("a", V5, true);
    assert_eq!(ack.properties.topic_alias_maximum, Some(2));
    sim.send_raw(a, &raw_alias_publish(b"t", 2));
    assert!(sim.closed(a).is_none());
    sim.send_raw(a, &raw_alias_publish(b"t", 3));
    assert_disconnected(&mut sim, a, ReasonCode::TopicAliasInvalid);
    sim.assert_no_leaks();
}

#[test]
fn client_topic_aliases_are_refused_when_the_maximum_is_zero() {
    let mut sim = sim_with(|c| c.topic_alias_maximum = 0);
    let (a, ack) = sim.connect("a", V5, true);
    assert_eq!(ack.properties.topic_alias_maximum, None);
    sim.send_raw(a, &raw_alias_publish(b"t", 1));
    assert_disconnected(&mut sim, a, ReasonCode::TopicAliasInvalid);
    sim.assert_no_leaks();
}

#[test]
fn client_topic_alias_can_be_remapped() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V5, true);
    sim.subscribe(a, 1, &[("#", QoS::AtMostOnce)]);
    sim.send_raw(a, &raw_alias_publish(b"one", 1));
    sim.send_raw(a, &raw_alias_publish(b"two", 1));
    sim.send_raw(a, &raw_alias_publish(b"", 1));
    let topics: Vec<String> = sim
        .publishes(a)
        .iter()
        .map(|p| p.topic.as_str().to_owned())
        .collect();
    assert_eq!(topics, ["one", "two", "two"]);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn server_topic_aliases_stay_within_the_clients_maximum() {
    let mut sim = Sim::quiet();
    let mut c = connect("a", V5, true, 0);
    c.properties.topic_alias_maximum = Some(1);
    let (a, _) = join(&mut sim, c);
    sim.subscribe(a, 1, &[("#", QoS::AtMostOnce)]);
    for t in ["x", "y", "x", "y"] {
        sim.publish(a, t, b"m", QoS::AtMostOnce, 1, false);
    }
    let got = sim.publishes(a);
    let seen: Vec<(&str, Option<u16>)> = got.iter().map(|p| (p.topic.as_str(), alias(p))).collect();
    assert_eq!(
        seen,
        [("x", Some(1)), ("y", None), ("", Some(1)), ("y", None)]
    );
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn server_topic_aliases_can_be_switched_off() {
    let mut sim = sim_with(|c| c.outbound_topic_aliases = false);
    let mut c = connect("a", V5, true, 0);
    c.properties.topic_alias_maximum = Some(10);
    let (a, _) = join(&mut sim, c);
    sim.subscribe(a, 1, &[("t", QoS::AtMostOnce)]);
    sim.publish(a, "t", b"1", QoS::AtMostOnce, 1, false);
    sim.publish(a, "t", b"2", QoS::AtMostOnce, 1, false);
    assert!(
        sim.publishes(a)
            .iter()
            .all(|p| alias(p).is_none() && p.topic.as_str() == "t")
    );
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn server_topic_aliases_start_over_on_a_new_connection() {
    let mut sim = Sim::quiet();
    let mut c = connect5("a", false, 100);
    c.properties.topic_alias_maximum = Some(5);
    let (a, _) = join(&mut sim, c.clone());
    sim.subscribe(a, 1, &[("t", QoS::AtLeastOnce)]);
    sim.publish(a, "t", b"1", QoS::AtMostOnce, 1, false);
    assert_eq!(sim.publishes(a)[0].topic.as_str(), "t");
    sim.drop_transport(a);
    let (b, _) = sim.connect("b", V5, true);
    sim.publish(b, "t", b"2", QoS::AtLeastOnce, 1, false);
    let (a, _) = join(&mut sim, c);
    let got = sim.publishes(a);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].topic.as_str(),
        "t",
        "the new connection knows no alias"
    );
    assert!(alias(&got[0]).is_some());
    sim.ack_all(a, &got);
    sim.disconnect(b);
    disconnect_expiry(&mut sim, a, 0);
    sim.assert_no_leaks();
}

// ---- Flow control and packet size ----

#[test]
fn qos2_counts_against_receive_maximum_until_pubcomp() {
    let mut sim = Sim::quiet();
    let mut c = connect("a", V5, true, 0);
    c.properties.receive_maximum = NonZeroU16::new(1);
    let (a, _) = join(&mut sim, c);
    sim.subscribe(a, 1, &[("t", QoS::ExactlyOnce)]);
    let (b, _) = sim.connect("b", V5, true);
    sim.publish(b, "t", b"1", QoS::ExactlyOnce, 1, false);
    sim.publish(b, "t", b"2", QoS::ExactlyOnce, 2, false);
    let got = sim.publishes(a);
    assert_eq!(payloads(&got), [&b"1"[..]]);
    let QosPid::ExactlyOnce(pid) = got[0].qos else {
        panic!("not QoS 2")
    };
    sim.send(a, Packet::PubRec(PubResponse::new(pid)));
    assert!(matches!(sim.take_ack(a, pid), Packet::PubRel(_)));
    assert!(sim.publishes(a).is_empty(), "PUBREC does not free the slot");
    sim.send(a, Packet::PubComp(PubResponse::new(pid)));
    let got = sim.publishes(a);
    assert_eq!(payloads(&got), [&b"2"[..]]);
    sim.ack_all(a, &got);
    sim.disconnect(a);
    sim.disconnect(b);
    sim.assert_no_leaks();
}

#[test]
fn oversize_qos1_delivery_is_dropped_and_counts_as_delivered() {
    let mut sim = Sim::quiet();
    let mut c = connect("a", V5, true, 0);
    c.properties.maximum_packet_size = NonZeroU32::new(64);
    c.properties.receive_maximum = NonZeroU16::new(1);
    let (a, _) = join(&mut sim, c);
    sim.subscribe(a, 1, &[("t", QoS::AtLeastOnce)]);
    let (b, _) = sim.connect("b", V5, true);
    let dropped = sim.broker.stats().dropped;
    sim.publish(b, "t", &[b'x'; 100], QoS::AtLeastOnce, 1, false);
    sim.publish(b, "t", b"small", QoS::AtLeastOnce, 2, false);
    let got = sim.publishes(a);
    assert_eq!(
        payloads(&got),
        [&b"small"[..]],
        "the window was not blocked"
    );
    assert_eq!(sim.broker.stats().dropped, dropped + 1);
    sim.ack_all(a, &got);
    assert_eq!(sim.broker.inflight_count("a"), 0);
    sim.disconnect(a);
    sim.disconnect(b);
    sim.assert_no_leaks();
}

#[test]
fn inflight_message_too_large_for_the_new_connection_is_dropped_on_resume() {
    let mut sim = Sim::quiet();
    let (a, _) = join(&mut sim, connect5("a", false, 100));
    sim.subscribe(a, 1, &[("t", QoS::AtLeastOnce)]);
    sim.publish(a, "t", &[b'x'; 100], QoS::AtLeastOnce, 1, false);
    assert_eq!(sim.publishes(a).len(), 1);
    sim.drop_transport(a);
    let mut c = connect5("a", false, 100);
    c.properties.maximum_packet_size = NonZeroU32::new(64);
    let (a, _) = join(&mut sim, c);
    assert!(sim.publishes(a).is_empty());
    assert_eq!(sim.broker.inflight_count("a"), 0, "treated as delivered");
    disconnect_expiry(&mut sim, a, 0);
    sim.assert_no_leaks();
}

// ---- Subscription options and identifiers ----

#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V5, true);
    // SUBSCRIBE pid 1, no properties, "$share/g/t" with No Local.
    let filter = b"$share/g/t";
    let mut packet = vec![0x82, (2 + 1 + 2 + filter.len() + 1) as u8, 0x00, 0x01, 0x00];
    packet.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    packet.extend_from_slice(filter);
    packet.push(0x04);
    sim.send_raw(a, &packet);
    assert_disconnected(&mut sim, a, ReasonCode::ProtocolError);
    sim.assert_no_leaks();
}

#[test]
fn subscription_identifier_is_updated_and_removed_with_the_subscription() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V5, true);
    let ids = |got: Vec<Publish>| -> Vec<Vec<u32>> {
        got.iter()
            .map(|p| {
                p.properties
                    .subscription_identifiers
                    .iter()
                    .map(|i| i.get())
                    .collect()
            })
            .collect()
    };
    subscribe_opts(&mut sim, a, 1, "t", options(QoS::AtMostOnce), Some(7));
    sim.publish(a, "t", b"1", QoS::AtMostOnce, 1, false);
    assert_eq!(ids(sim.publishes(a)), [vec![7]]);
    subscribe_opts(&mut sim, a, 2, "t", options(QoS::AtMostOnce), Some(8));
    sim.publish(a, "t", b"2", QoS::AtMostOnce, 1, false);
    assert_eq!(ids(sim.publishes(a)), [vec![8]], "replaced, not added");
    subscribe_opts(&mut sim, a, 3, "t", options(QoS::AtMostOnce), None);
    sim.publish(a, "t", b"3", QoS::AtMostOnce, 1, false);
    assert_eq!(ids(sim.publishes(a)), [Vec::<u32>::new()], "removed");
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn retained_message_on_subscribe_carries_the_subscription_identifier() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V5, true);
    sim.publish(a, "r", b"kept", QoS::AtMostOnce, 1, true);
    subscribe_opts(&mut sim, a, 1, "r", options(QoS::AtMostOnce), Some(42));
    let got = sim.publishes(a);
    assert_eq!(got.len(), 1);
    assert!(got[0].retain);
    assert_eq!(
        got[0]
            .properties
            .subscription_identifiers
            .iter()
            .map(|i| i.get())
            .collect::<Vec<_>>(),
        [42]
    );
    sim.disconnect(a);
    sim.assert_no_leaks();
}

// ---- Shared subscriptions ----

/// Connects `names` as MQTT 5 persistent sessions subscribed to
/// `$share/g/t` at QoS 1.
fn shared_members(sim: &mut Sim, names: &[&str]) -> Vec<ConnId> {
    names
        .iter()
        .map(|n| {
            let (id, _) = join(sim, connect5(n, false, 100));
            sim.subscribe(id, 1, &[("$share/g/t", QoS::AtLeastOnce)]);
            id
        })
        .collect()
}

#[test]
fn shared_subscription_round_robins_among_connected_members() {
    let mut sim = Sim::quiet();
    let m = shared_members(&mut sim, &["m1", "m2", "m3"]);
    sim.disconnect(m[1]);
    let (p, _) = sim.connect("p", V5, true);
    for i in 1..=4 {
        sim.publish(p, "t", format!("{i}").as_bytes(), QoS::AtMostOnce, 1, false);
    }
    let one = sim.publishes(m[0]);
    let three = sim.publishes(m[2]);
    assert_eq!(one.len(), 2);
    assert_eq!(three.len(), 2);
    assert_eq!(
        sim.broker.queued_count("m2"),
        0,
        "disconnected member skipped"
    );
    sim.disconnect(m[0]);
    sim.disconnect(m[2]);
    sim.disconnect(p);
    for n in ["m1", "m2", "m3"] {
        end_session(&mut sim, n);
    }
    sim.assert_no_leaks();
}

#[test]
fn shared_subscription_gets_no_retained_messages() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V5, true);
    sim.publish(a, "t", b"retained", QoS::AtMostOnce, 1, true);
    sim.subscribe(a, 1, &[("$share/g/t", QoS::AtMostOnce)]);
    assert!(sim.publishes(a).is_empty());
    sim.publish(a, "t", b"", QoS::AtMostOnce, 1, true);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn shared_and_non_shared_subscriptions_each_get_a_copy() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V5, true);
    sim.subscribe(
        a,
        1,
        &[("t", QoS::AtMostOnce), ("$share/g/t", QoS::AtMostOnce)],
    );
    sim.publish(a, "t", b"x", QoS::AtMostOnce, 1, false);
    assert_eq!(sim.publishes(a).len(), 2);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn shared_messages_queued_for_a_departing_member_move_to_another() {
    let mut sim = Sim::quiet();
    let m = shared_members(&mut sim, &["m1", "m2"]);
    // m1 stops acknowledging; with Receive Maximum 1 its share queues.
    sim.disconnect(m[0]);
    let mut c = connect5("m1", false, 100);
    c.properties.receive_maximum = NonZeroU16::new(1);
    let (m1, _) = join(&mut sim, c);
    let (p, _) = sim.connect("p", V5, true);
    for i in 1..=6 {
        sim.publish(
            p,
            "t",
            format!("{i}").as_bytes(),
            QoS::AtLeastOnce,
            i,
            false,
        );
    }
    let to_m1 = sim.publishes(m1);
    let to_m2 = sim.publishes(m[1]);
    assert_eq!(to_m1.len(), 1, "window of 1");
    assert_eq!(to_m2.len(), 3);
    assert_eq!(sim.broker.queued_count("m1"), 2);
    sim.ack_all(m[1], &to_m2);

    sim.drop_transport(m1);
    let moved = sim.publishes(m[1]);
    let mut got: Vec<&[u8]> = payloads(&moved);
    got.sort();
    // Everything m2 did not get: m1's one in flight and its two queued.
    let all: Vec<Vec<u8>> = (1..=6).map(|i| format!("{i}").into_bytes()).collect();
    let expected: Vec<&[u8]> = all
        .iter()
        .map(|v| &v[..])
        .filter(|p| !payloads(&to_m2).contains(p))
        .collect();
    assert_eq!(expected.len(), 3);
    // The in-flight QoS 1 message and the queued ones, as new deliveries.
    assert_eq!(got, expected);
    assert!(moved.iter().all(|p| !p.dup));
    assert_eq!(sim.broker.queued_count("m1"), 0);
    assert_eq!(sim.broker.inflight_count("m1"), 0);
    sim.ack_all(m[1], &moved);

    let (m1, ack) = join(&mut sim, connect5("m1", false, 100));
    assert!(ack.session_present);
    assert!(sim.publishes(m1).is_empty(), "nothing delivered twice");
    sim.disconnect(m1);
    sim.disconnect(m[1]);
    sim.disconnect(p);
    for n in ["m1", "m2"] {
        end_session(&mut sim, n);
    }
    sim.assert_no_leaks();
}

#[test]
fn shared_qos2_message_in_flight_stays_with_its_member() {
    let mut sim = Sim::quiet();
    let (m1, _) = join(&mut sim, connect5("m1", false, 100));
    sim.subscribe(m1, 1, &[("$share/g/t", QoS::ExactlyOnce)]);
    let (p, _) = sim.connect("p", V5, true);
    sim.publish(p, "t", b"exactly once", QoS::ExactlyOnce, 1, false);
    assert_eq!(sim.publishes(m1).len(), 1);
    let (m2, _) = join(&mut sim, connect5("m2", false, 100));
    sim.subscribe(m2, 1, &[("$share/g/t", QoS::ExactlyOnce)]);
    sim.drop_transport(m1);
    assert!(
        sim.publishes(m2).is_empty(),
        "[MQTT-4.8.2-4]: completed with m1"
    );
    assert_eq!(sim.broker.inflight_count("m1"), 1);
    let (m1, _) = join(&mut sim, connect5("m1", false, 100));
    let got = sim.publishes(m1);
    assert_eq!(payloads(&got), [&b"exactly once"[..]]);
    assert!(got[0].dup);
    sim.ack_all(m1, &got);
    sim.disconnect(m1);
    sim.disconnect(m2);
    sim.disconnect(p);
    for n in ["m1", "m2"] {
        end_session(&mut sim, n);
    }
    sim.assert_no_leaks();
}

#[test]
fn shared_messages_stay_with_the_session_when_no_other_member_is_connected() {
    let mut sim = Sim::quiet();
    let m = shared_members(&mut sim, &["m1", "m2"]);
    sim.disconnect(m[1]);
    let (p, _) = sim.connect("p", V5, true);
    sim.publish(p, "t", b"kept", QoS::AtLeastOnce, 1, false);
    assert_eq!(sim.publishes(m[0]).len(), 1);
    sim.drop_transport(m[0]);
    assert_eq!(sim.broker.inflight_count("m1"), 1);
    let (m1, _) = join(&mut sim, connect5("m1", false, 100));
    let got = sim.publishes(m1);
    assert_eq!(payloads(&got), [&b"kept"[..]]);
    sim.ack_all(m1, &got);
    sim.disconnect(m1);
    sim.disconnect(p);
    for n in ["m1", "m2"] {
        end_session(&mut sim, n);
    }
    sim.assert_no_leaks();
}

#[test]
fn non_shared_messages_stay_with_the_departing_session() {
    let mut sim = Sim::quiet();
    let m = shared_members(&mut sim, &["m1", "m2"]);
    sim.subscribe(m[0], 2, &[("t", QoS::AtLeastOnce)]);
    let (p, _) = sim.connect("p", V5, true);
    sim.publish(p, "t", b"x", QoS::AtLeastOnce, 1, false);
    // m1 got its own copy and perhaps the share; m2 perhaps the share.
    let m1_got = sim.publishes(m[0]).len();
    let m2_got = sim.publishes(m[1]).len();
    assert_eq!(m1_got + m2_got, 2);
    sim.drop_transport(m[0]);
    let moved = sim.publishes(m[1]);
    // Only the shared copy (if m1 had it) moves; its own copy stays.
    assert_eq!(moved.len(), m1_got - 1);
    assert_eq!(sim.broker.inflight_count("m1"), 1);
    sim.ack_all(m[1], &moved);
    sim.disconnect(m[1]);
    sim.disconnect(p);
    for n in ["m1", "m2"] {
        end_session(&mut sim, n);
    }
    sim.assert_no_leaks();
}

// ---- Wills ----

#[test]
fn will_delay_is_cancelled_when_the_session_resumes_in_time() {
    let mut sim = Sim::quiet();
    let mut c = connect5("a", false, 100);
    let mut w = will("status", b"gone", QoS::AtMostOnce, false);
    w.properties.will_delay_interval = Some(10);
    c.will = Some(w);
    let (a, _) = join(&mut sim, c);
    let (watch, _) = sim.connect("watch", V5, true);
    sim.subscribe(watch, 1, &[("status", QoS::AtMostOnce)]);
    sim.drop_transport(a);
    sim.advance(secs(5));
    let (a, ack) = join(&mut sim, connect5("a", false, 100));
    assert!(ack.session_present);
    sim.advance(secs(20));
    assert!(sim.publishes(watch).is_empty(), "the will must not be sent");
    disconnect_expiry(&mut sim, a, 0);
    assert!(
        sim.publishes(watch).is_empty(),
        "normal DISCONNECT drops it"
    );
    sim.disconnect(watch);
    sim.assert_no_leaks();
}

#[test]
fn will_properties_are_forwarded() {
    let mut sim = Sim::quiet();
    let mut c = connect("a", V5, true, 0);
    let mut w = will("status", b"{\"gone\":true}", QoS::AtLeastOnce, false);
    w.properties.payload_format_indicator = Some(true);
    w.properties.content_type = Some(MqttStr::from_static("application/json"));
    w.properties.response_topic = Some(topic("replies"));
    w.properties.correlation_data = Some(Bytes::from_static(b"\x01\x02"));
    w.properties.message_expiry_interval = Some(60);
    w.properties.user_properties = props(&[("z", "1"), ("a", "2"), ("z", "3")]);
    c.will = Some(w);
    let (a, _) = join(&mut sim, c);
    let (watch, _) = sim.connect("watch", V5, true);
    sim.subscribe(watch, 1, &[("status", QoS::AtLeastOnce)]);
    sim.drop_transport(a);
    let got = sim.publishes(watch);
    assert_eq!(got.len(), 1);
    let p = &got[0].properties;
    assert_eq!(p.payload_format_indicator, Some(true));
    assert_eq!(
        p.content_type.as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(p.response_topic.as_ref().unwrap().as_str(), "replies");
    assert_eq!(p.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
    assert_eq!(p.message_expiry_interval, Some(60));
    assert_eq!(
        pairs(&p.user_properties),
        [("z", "1"), ("a", "2"), ("z", "3")]
    );
    assert_eq!(got[0].qos.qos(), QoS::AtLeastOnce);
    sim.ack_all(watch, &got);
    sim.disconnect(watch);
    sim.assert_no_leaks();
}

#[test]
fn disconnect_with_will_message_publishes_the_will() {
    let mut sim = Sim::quiet();
    let mut c = connect("a", V5, true, 0);
    c.will = Some(will("status", b"bye", QoS::AtMostOnce, false));
    let (a, _) = join(&mut sim, c);
    let (watch, _) = sim.connect("watch", V5, true);
    sim.subscribe(watch, 1, &[("status", QoS::AtMostOnce)]);
    sim.send(
        a,
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage)),
    );
    assert!(sim.closed(a).is_some());
    assert_eq!(payloads(&sim.publishes(watch)), [&b"bye"[..]]);
    sim.disconnect(watch);
    sim.assert_no_leaks();
}

// ---- Payload format, properties pass-through ----

#[test]
fn invalid_utf8_with_payload_format_indicator_is_refused_0x99_and_not_routed() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V5, true);
    sim.subscribe(a, 1, &[("t", QoS::ExactlyOnce)]);
    for (pid, qos) in [(1, QoS::AtLeastOnce), (2, QoS::ExactlyOnce)] {
        let mut p = publish("t", &[0xC3, 0x28], qos, pid, false);
        p.properties.payload_format_indicator = Some(true);
        assert_eq!(
            publish_with(&mut sim, a, p),
            ReasonCode::PayloadFormatInvalid
        );
    }
    assert!(sim.publishes(a).is_empty());
    // The same bytes without the indicator are just bytes.
    let p = publish("t", &[0xC3, 0x28], QoS::AtLeastOnce, 3, false);
    assert_eq!(publish_with(&mut sim, a, p), ReasonCode::Success);
    let got = sim.publishes(a);
    assert_eq!(got.len(), 1);
    sim.ack_all(a, &got);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn payload_format_validation_can_be_switched_off() {
    let mut sim = sim_with(|c| c.validate_utf8_payloads = false);
    let (a, _) = sim.connect("a", V5, true);
    sim.subscribe(a, 1, &[("t", QoS::AtLeastOnce)]);
    let mut p = publish("t", &[0xFF], QoS::AtLeastOnce, 1, false);
    p.properties.payload_format_indicator = Some(true);
    assert_eq!(publish_with(&mut sim, a, p), ReasonCode::Success);
    let got = sim.publishes(a);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].properties.payload_format_indicator, Some(true));
    sim.ack_all(a, &got);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn user_properties_keep_their_order_and_duplicates() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V5, true);
    sim.subscribe(a, 1, &[("t", QoS::AtMostOnce)]);
    let mut p = publish("t", b"x", QoS::AtMostOnce, 1, false);
    let sent = [("k", "3"), ("b", "x"), ("k", "1"), ("a", "")];
    p.properties.user_properties = props(&sent);
    publish_with(&mut sim, a, p);
    let got = sim.publishes(a);
    assert_eq!(pairs(&got[0].properties.user_properties), sent);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

// ---- Capabilities announced and enforced ----

#[test]
fn connack_announces_the_configured_capabilities() {
    let mut sim = sim_with(|c| {
        c.receive_maximum = 20;
        c.maximum_qos = QoS::AtLeastOnce;
        c.retain_available = false;
        c.wildcard_subscription_available = false;
        c.subscription_identifiers_available = false;
        c.shared_subscription_available = false;
        c.topic_alias_maximum = 4;
        c.limits.max_packet_size = 4096;
    });
    let (a, ack) = sim.connect("a", V5, true);
    let p = &ack.properties;
    assert_eq!(p.receive_maximum.map(NonZeroU16::get), Some(20));
    assert_eq!(p.maximum_qos, Some(QoS::AtLeastOnce));
    assert_eq!(p.retain_available, Some(false));
    assert_eq!(p.wildcard_subscription_available, Some(false));
    assert_eq!(p.subscription_identifiers_available, Some(false));
    assert_eq!(p.shared_subscription_available, Some(false));
    assert_eq!(p.topic_alias_maximum, Some(4));
    assert_eq!(p.maximum_packet_size.map(NonZeroU32::get), Some(4096));
    sim.disconnect(a);

    // The defaults say nothing where absence already means "available".
    let mut sim = Sim::quiet();
    let (a, ack) = sim.connect("a", V5, true);
    let p = &ack.properties;
    assert_eq!(p.maximum_qos, None);
    assert_eq!(p.retain_available, None);
    assert_eq!(p.wildcard_subscription_available, None);
    assert_eq!(p.server_keep_alive, None);
    assert_eq!(p.assigned_client_identifier, None);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn server_keep_alive_is_announced_when_the_client_asks_for_none() {
    let mut sim = sim_with(|c| c.limits.max_keepalive = Some(30));
    let (a, ack) = join(&mut sim, connect("a", V5, true, 0));
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    sim.disconnect(a);
    let (a, ack) = join(&mut sim, connect("a", V5, true, 20));
    assert_eq!(
        ack.properties.server_keep_alive, None,
        "20 is within the cap"
    );
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn publish_above_maximum_qos_is_disconnect_0x9b() {
    let mut sim = sim_with(|c| c.maximum_qos = QoS::AtLeastOnce);
    let (a, _) = sim.connect("a", V5, true);
    sim.publish(a, "t", b"ok", QoS::AtLeastOnce, 1, false);
    sim.send(
        a,
        Packet::Publish(publish("t", b"x", QoS::ExactlyOnce, 2, false)),
    );
    assert_disconnected(&mut sim, a, ReasonCode::QoSNotSupported);
    sim.assert_no_leaks();
}

#[test]
fn will_above_maximum_qos_or_retained_when_unavailable_is_refused() {
    let mut sim = sim_with(|c| {
        c.maximum_qos = QoS::AtMostOnce;
        c.retain_available = false;
    });
    let mut c = connect("a", V5, true, 0);
    c.will = Some(will("w", b"x", QoS::AtLeastOnce, false));
    let (_, ack) = sim.connect_with(c);
    assert_eq!(ack.unwrap().reason, ReasonCode::QoSNotSupported);
    let mut c = connect("a", V5, true, 0);
    c.will = Some(will("w", b"x", QoS::AtMostOnce, true));
    let (_, ack) = sim.connect_with(c);
    assert_eq!(ack.unwrap().reason, ReasonCode::RetainNotSupported);
    sim.assert_no_leaks();
}

#[test]
fn retain_when_unavailable_is_disconnect_0x9a() {
    let mut sim = sim_with(|c| c.retain_available = false);
    let (a, _) = sim.connect("a", V5, true);
    sim.send(
        a,
        Packet::Publish(publish("t", b"x", QoS::AtMostOnce, 1, true)),
    );
    assert_disconnected(&mut sim, a, ReasonCode::RetainNotSupported);
    assert_eq!(sim.broker.retained_count(), 0);
    sim.assert_no_leaks();
}

#[test]
fn wildcard_and_shared_subscriptions_when_unavailable_are_refused_in_suback() {
    let mut sim = sim_with(|c| {
        c.wildcard_subscription_available = false;
        c.shared_subscription_available = false;
    });
    let (a, _) = sim.connect("a", V5, true);
    assert_eq!(
        sim.subscribe(
            a,
            1,
            &[
                ("a/+", QoS::AtMostOnce),
                ("#", QoS::AtMostOnce),
                ("$share/g/t", QoS::AtMostOnce),
                ("plain", QoS::AtMostOnce),
            ]
        ),
        [
            ReasonCode::WildcardSubscriptionsNotSupported,
            ReasonCode::WildcardSubscriptionsNotSupported,
            ReasonCode::SharedSubscriptionsNotSupported,
            ReasonCode::Success,
        ]
    );
    assert_eq!(sim.broker.subscription_count(), 1);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn subscription_identifier_when_unavailable_is_disconnect_0xa1() {
    let mut sim = sim_with(|c| c.subscription_identifiers_available = false);
    let (a, _) = sim.connect("a", V5, true);
    let mut sub = Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        subscriptions: vec![Subscription {
            filter: TopicFilter::from_static("t"),
            options: options(QoS::AtMostOnce),
        }],
        properties: Default::default(),
    };
    sub.properties.subscription_identifier = NonZeroU32::new(5);
    sim.send(a, Packet::Subscribe(sub));
    assert_disconnected(&mut sim, a, ReasonCode::SubscriptionIdentifiersNotSupported);
    sim.assert_no_leaks();
}

// ---- Enhanced authentication ----

/// The example method "CHALLENGE-1": the broker sends a nonce, the client
/// answers with the nonce reversed and XORed with a shared key, the broker
/// checks it. The same exchange re-authenticates a connected client.
struct ChallengeAuth {
    key: &'static [u8],
    /// Per connection, the nonce sent and not yet answered.
    pending: HashMap<ConnId, Vec<u8>>,
    counter: u8,
}

const METHOD: &str = "CHALLENGE-1";

fn answer(key: &[u8], nonce: &[u8]) -> Vec<u8> {
    nonce
        .iter()
        .rev()
        .zip(key.iter().cycle())
        .map(|(n, k)| n ^ k)
        .collect()
}

impl ChallengeAuth {
    fn new(key: &'static [u8]) -> Self {
        ChallengeAuth {
            key,
            pending: HashMap::new(),
            counter: 0,
        }
    }

    /// Answers every request the broker has made, as an embedding program
    /// would.
    fn serve(&mut self, sim: &mut Sim) {
        while let Some(req) = sim.auth_requests.pop_front() {
            let decision = if req.method.as_ref().map(MqttStr::as_str) != Some(METHOD) {
                AuthDecision::Reject(ReasonCode::BadAuthenticationMethod)
            } else if let Some(nonce) = self.pending.remove(&req.conn) {
                let expected = answer(self.key, &nonce);
                if req.data.as_deref() == Some(&expected[..]) {
                    AuthDecision::Accept
                } else {
                    AuthDecision::Reject(ReasonCode::NotAuthorized)
                }
            } else {
                self.counter += 1;
                let nonce = vec![self.counter, 0xA5, 0x5A, self.counter.wrapping_mul(7)];
                self.pending.insert(req.conn, nonce.clone());
                AuthDecision::Continue {
                    data: Bytes::from(nonce),
                }
            };
            sim.broker.resolve_auth(sim.now, req.token, decision);
            sim.drain();
        }
    }
}

fn auth_packet(reason: ReasonCode, data: &[u8]) -> Packet {
    let mut auth = Auth {
        reason,
        properties: Default::default(),
    };
    auth.properties.authentication_method = Some(MqttStr::from_static(METHOD));
    auth.properties.authentication_data = Some(Bytes::copy_from_slice(data));
    Packet::Auth(Box::new(auth))
}

fn external() -> Sim {
    sim_with(|c| c.authentication = Authentication::External)
}

/// Runs CONNECT with the CHALLENGE-1 method up to the broker's challenge,
/// and returns the connection and the nonce.
fn start_challenge(sim: &mut Sim, auth: &mut ChallengeAuth, client_id: &str) -> (ConnId, Vec<u8>) {
    let mut c = connect(client_id, V5, true, 0);
    c.properties.authentication_method = Some(MqttStr::from_static(METHOD));
    let (a, ack) = sim.connect_with(c);
    assert!(ack.is_none(), "CONNACK before the exchange");
    auth.serve(sim);
    let Some(Packet::Auth(challenge)) = sim.recv(a) else {
        panic!("no AUTH challenge")
    };
    assert_eq!(challenge.reason, ReasonCode::ContinueAuthentication);
    assert_eq!(
        challenge
            .properties
            .authentication_method
            .as_ref()
            .map(MqttStr::as_str),
        Some(METHOD)
    );
    (
        a,
        challenge.properties.authentication_data.unwrap().to_vec(),
    )
}

#[test]
fn enhanced_authentication_challenge_response_connects() {
    let mut sim = external();
    let mut auth = ChallengeAuth::new(b"secret");
    let (a, nonce) = start_challenge(&mut sim, &mut auth, "a");
    sim.send(
        a,
        auth_packet(
            ReasonCode::ContinueAuthentication,
            &answer(b"secret", &nonce),
        ),
    );
    auth.serve(&mut sim);
    let Some(Packet::ConnAck(ack)) = sim.recv(a) else {
        panic!("no CONNACK")
    };
    assert_eq!(ack.reason, ReasonCode::Success);
    assert_eq!(
        ack.properties
            .authentication_method
            .as_ref()
            .map(MqttStr::as_str),
        Some(METHOD),
        "[MQTT-4.12.0-5]"
    );
    sim.subscribe(a, 1, &[("t", QoS::AtMostOnce)]);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn enhanced_authentication_wrong_answer_is_refused() {
    let mut sim = external();
    let mut auth = ChallengeAuth::new(b"secret");
    let (a, nonce) = start_challenge(&mut sim, &mut auth, "a");
    sim.send(
        a,
        auth_packet(
            ReasonCode::ContinueAuthentication,
            &answer(b"guess", &nonce),
        ),
    );
    auth.serve(&mut sim);
    let Some(Packet::ConnAck(ack)) = sim.recv(a) else {
        panic!("no CONNACK")
    };
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    assert!(sim.closed(a).is_some());
    assert_eq!(sim.broker.connected_count(), 0);
    sim.assert_no_leaks();
}

#[test]
fn enhanced_authentication_unknown_method_is_refused_0x8c() {
    let mut sim = external();
    let mut auth = ChallengeAuth::new(b"secret");
    let mut c = connect("a", V5, true, 0);
    c.properties.authentication_method = Some(MqttStr::from_static("SCRAM-SHA-999"));
    let (a, _) = sim.connect_with(c);
    auth.serve(&mut sim);
    let Some(Packet::ConnAck(ack)) = sim.recv(a) else {
        panic!("no CONNACK")
    };
    assert_eq!(ack.reason, ReasonCode::BadAuthenticationMethod);
    sim.assert_no_leaks();
}

#[test]
fn enhanced_authentication_refuses_other_packets_and_other_methods_mid_exchange() {
    let mut sim = external();
    let mut auth = ChallengeAuth::new(b"secret");
    let (a, _) = start_challenge(&mut sim, &mut auth, "a");
    sim.send(a, Packet::PingReq);
    assert!(sim.closed(a).is_some());
    assert!(
        !sim.recv_all(a)
            .iter()
            .any(|p| matches!(p, Packet::ConnAck(_)))
    );

    let (a, nonce) = start_challenge(&mut sim, &mut auth, "b");
    let Packet::Auth(mut other) = auth_packet(ReasonCode::ContinueAuthentication, &nonce) else {
        unreachable!()
    };
    other.properties.authentication_method = Some(MqttStr::from_static("OTHER"));
    sim.send(a, Packet::Auth(other));
    assert!(sim.closed(a).is_some());
    assert!(sim.auth_requests.is_empty());
    sim.assert_no_leaks();
}

/// A connection authenticated with CHALLENGE-1.
fn authenticated(sim: &mut Sim, auth: &mut ChallengeAuth, client_id: &str) -> ConnId {
    let (a, nonce) = start_challenge(sim, auth, client_id);
    sim.send(
        a,
        auth_packet(
            ReasonCode::ContinueAuthentication,
            &answer(auth.key, &nonce),
        ),
    );
    auth.serve(sim);
    assert!(matches!(sim.recv(a), Some(Packet::ConnAck(ack)) if ack.reason == ReasonCode::Success));
    a
}

#[test]
fn reauthentication_succeeds_with_auth_success() {
    let mut sim = external();
    let mut auth = ChallengeAuth::new(b"secret");
    let a = authenticated(&mut sim, &mut auth, "a");
    sim.send(a, auth_packet(ReasonCode::ReAuthenticate, b""));
    auth.serve(&mut sim);
    let Some(Packet::Auth(challenge)) = sim.recv(a) else {
        panic!("no AUTH challenge")
    };
    assert_eq!(challenge.reason, ReasonCode::ContinueAuthentication);
    let nonce = challenge.properties.authentication_data.unwrap();
    // Traffic continues during re-authentication.
    sim.send(a, Packet::PingReq);
    assert_eq!(sim.recv(a), Some(Packet::PingResp));
    sim.send(
        a,
        auth_packet(
            ReasonCode::ContinueAuthentication,
            &answer(b"secret", &nonce),
        ),
    );
    auth.serve(&mut sim);
    let Some(Packet::Auth(done)) = sim.recv(a) else {
        panic!("no AUTH success")
    };
    assert_eq!(done.reason, ReasonCode::Success);
    assert_eq!(
        done.properties
            .authentication_method
            .as_ref()
            .map(MqttStr::as_str),
        Some(METHOD)
    );
    assert!(sim.closed(a).is_none());
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn reauthentication_failure_disconnects() {
    let mut sim = external();
    let mut auth = ChallengeAuth::new(b"secret");
    let a = authenticated(&mut sim, &mut auth, "a");
    sim.send(a, auth_packet(ReasonCode::ReAuthenticate, b""));
    auth.serve(&mut sim);
    let Some(Packet::Auth(challenge)) = sim.recv(a) else {
        panic!("no AUTH challenge")
    };
    let nonce = challenge.properties.authentication_data.unwrap();
    sim.send(
        a,
        auth_packet(
            ReasonCode::ContinueAuthentication,
            &answer(b"stolen", &nonce),
        ),
    );
    auth.serve(&mut sim);
    assert_disconnected(&mut sim, a, ReasonCode::NotAuthorized);
    sim.assert_no_leaks();
}

#[test]
fn auth_packets_out_of_turn_are_protocol_errors() {
    let mut sim = external();
    let mut auth = ChallengeAuth::new(b"secret");
    // Continue without a re-authentication in progress.
    let a = authenticated(&mut sim, &mut auth, "a");
    sim.send(a, auth_packet(ReasonCode::ContinueAuthentication, b""));
    assert_disconnected(&mut sim, a, ReasonCode::ProtocolError);
    // Re-authenticate with another method.
    let a = authenticated(&mut sim, &mut auth, "a");
    let Packet::Auth(mut other) = auth_packet(ReasonCode::ReAuthenticate, b"") else {
        unreachable!()
    };
    other.properties.authentication_method = Some(MqttStr::from_static("OTHER"));
    sim.send(a, Packet::Auth(other));
    assert_disconnected(&mut sim, a, ReasonCode::ProtocolError);
    // AUTH from a client that connected without a method.
    let (b, _) = sim.connect_with(connect("b", V5, true, 0));
    let req = sim.auth_requests.pop_front().unwrap();
    sim.broker
        .resolve_auth(sim.now, req.token, AuthDecision::Accept);
    sim.drain();
    assert!(matches!(sim.recv(b), Some(Packet::ConnAck(_))));
    sim.send(b, auth_packet(ReasonCode::ReAuthenticate, b""));
    assert_disconnected(&mut sim, b, ReasonCode::ProtocolError);
    assert!(sim.auth_requests.is_empty());
    sim.assert_no_leaks();
}

#[test]
fn continue_for_a_client_without_a_method_refuses_it() {
    let mut sim = external();
    let (a, _) = sim.connect_with(connect("a", V5, true, 0));
    let req = sim.auth_requests.pop_front().unwrap();
    sim.broker.resolve_auth(
        sim.now,
        req.token,
        AuthDecision::Continue {
            data: Bytes::from_static(b"?"),
        },
    );
    sim.drain();
    let Some(Packet::ConnAck(ack)) = sim.recv(a) else {
        panic!("no CONNACK")
    };
    assert!(ack.reason.is_error());
    assert!(sim.closed(a).is_some());
    sim.assert_no_leaks();
}

// ---- Server redirection ----

#[test]
fn redirect_answers_connack_with_a_server_reference() {
    for reason in [ReasonCode::UseAnotherServer, ReasonCode::ServerMoved] {
        let mut sim = external();
        let (a, _) = sim.connect_with(connect("a", V5, true, 0));
        let req = sim.auth_requests.pop_front().unwrap();
        sim.broker.resolve_auth(
            sim.now,
            req.token,
            AuthDecision::Redirect {
                reason,
                server_reference: MqttStr::from_static("other.example:1883"),
            },
        );
        sim.drain();
        let Some(Packet::ConnAck(ack)) = sim.recv(a) else {
            panic!("no CONNACK")
        };
        assert_eq!(ack.reason, reason);
        assert_eq!(
            ack.properties
                .server_reference
                .as_ref()
                .map(MqttStr::as_str),
            Some("other.example:1883")
        );
        assert_eq!(sim.closed(a), Some(CloseReason::ConnectRefused(reason)));
        sim.assert_no_leaks();
    }
}

#[test]
fn redirect_during_reauthentication_is_one_disconnect_with_a_server_reference() {
    let mut sim = external();
    let mut auth = ChallengeAuth::new(b"secret");
    let a = authenticated(&mut sim, &mut auth, "a");
    sim.send(a, auth_packet(ReasonCode::ReAuthenticate, b""));
    let req = sim.auth_requests.pop_front().unwrap();
    sim.broker.resolve_auth(
        sim.now,
        req.token,
        AuthDecision::Redirect {
            reason: ReasonCode::ServerMoved,
            server_reference: MqttStr::from_static("new.example"),
        },
    );
    sim.drain();
    let packets = sim.recv_all(a);
    assert_eq!(packets.len(), 1, "one DISCONNECT: {packets:?}");
    let Packet::Disconnect(d) = &packets[0] else {
        panic!("not a DISCONNECT")
    };
    assert_eq!(d.reason, ReasonCode::ServerMoved);
    assert_eq!(
        d.properties.server_reference.as_ref().map(MqttStr::as_str),
        Some("new.example")
    );
    assert!(sim.closed(a).is_some());
    sim.assert_no_leaks();
}

// ---- Mixed protocol versions ----

#[test]
fn v5_message_with_properties_reaches_a_v311_subscriber_without_them() {
    let mut sim = Sim::quiet();
    let (old, _) = sim.connect("old", V4, true);
    sim.subscribe(old, 1, &[("t", QoS::ExactlyOnce)]);
    let (new, _) = sim.connect("new", V5, true);
    let mut p = publish("t", b"hello", QoS::AtLeastOnce, 1, true);
    p.properties.user_properties = props(&[("a", "1")]);
    p.properties.content_type = Some(MqttStr::from_static("text/plain"));
    p.properties.message_expiry_interval = Some(100);
    p.properties.topic_alias = NonZeroU16::new(1);
    publish_with(&mut sim, new, p);
    let got = sim.publishes(old);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].topic.as_str(), "t");
    assert_eq!(&got[0].payload[..], b"hello");
    assert_eq!(got[0].qos.qos(), QoS::AtLeastOnce);
    assert!(got[0].properties.is_empty());
    sim.ack_all(old, &got);
    sim.publish(new, "t", b"", QoS::AtMostOnce, 1, true);
    sim.publishes(old);
    sim.disconnect(old);
    sim.disconnect(new);
    sim.assert_no_leaks();
}

#[test]
fn v311_message_reaches_a_v5_subscriber() {
    let mut sim = Sim::quiet();
    let (new, _) = sim.connect("new", V5, true);
    subscribe_opts(&mut sim, new, 1, "t/+", options(QoS::ExactlyOnce), Some(9));
    let (old, _) = sim.connect("old", V4, true);
    sim.publish(old, "t/x", b"from 3.1.1", QoS::ExactlyOnce, 1, false);
    let got = sim.publishes(new);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].topic.as_str(), "t/x");
    assert_eq!(&got[0].payload[..], b"from 3.1.1");
    assert_eq!(got[0].qos.qos(), QoS::ExactlyOnce);
    assert_eq!(
        got[0]
            .properties
            .subscription_identifiers
            .iter()
            .map(|i| i.get())
            .collect::<Vec<_>>(),
        [9]
    );
    sim.ack_all(new, &got);
    sim.disconnect(old);
    sim.disconnect(new);
    sim.assert_no_leaks();
}

#[test]
fn publish_without_topic_or_alias_is_a_protocol_error() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V5, true);
    // PUBLISH QoS 0, empty topic, no properties, payload "x".
    sim.send_raw(a, &[0x30, 0x04, 0x00, 0x00, 0x00, b'x']);
    assert_disconnected(&mut sim, a, ReasonCode::ProtocolError);
    sim.assert_no_leaks();
}

#[test]
fn reauthentication_while_one_is_in_progress_is_a_protocol_error() {
    let mut sim = external();
    let mut auth = ChallengeAuth::new(b"secret");
    let a = authenticated(&mut sim, &mut auth, "a");
    sim.send(a, auth_packet(ReasonCode::ReAuthenticate, b""));
    assert_eq!(sim.auth_requests.len(), 1);
    sim.send(a, auth_packet(ReasonCode::ReAuthenticate, b""));
    assert_disconnected(&mut sim, a, ReasonCode::ProtocolError);
    // The first request's answer comes too late and is ignored.
    let req = sim.auth_requests.pop_front().unwrap();
    sim.broker
        .resolve_auth(sim.now, req.token, AuthDecision::Accept);
    sim.drain();
    assert!(sim.recv_all(a).is_empty());
    sim.assert_no_leaks();
}

// ---- Inbound limits (issue 11): MQTT 5 keeps its Receive Maximum ----

#[test]
fn mqtt5_client_beyond_receive_maximum_unreleased_qos2_gets_disconnect_0x93() {
    let mut sim = sim_with(|c| c.receive_maximum = 2);
    let (p, _) = sim.connect("pub", V5, true);
    for pid in 1..=2u16 {
        sim.send(
            p,
            Packet::Publish(publish("t", b"x", QoS::ExactlyOnce, pid, false)),
        );
    }
    assert_eq!(sim.closed(p), None);
    sim.recv_all(p);
    sim.send(
        p,
        Packet::Publish(publish("t", b"x", QoS::ExactlyOnce, 3, false)),
    );
    assert_eq!(
        sim.closed(p),
        Some(CloseReason::Protocol(ReasonCode::ReceiveMaximumExceeded))
    );
    match sim.recv(p) {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::ReceiveMaximumExceeded),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    sim.assert_no_leaks();
}

#[test]
fn an_unfinished_packet_times_out_with_disconnect_0x8d() {
    let mut sim = sim_with(|c| c.limits.packet_timeout = secs(3));
    let (a, _) = sim.connect("a", V5, true);
    // The start of a PUBLISH that never ends.
    sim.send_raw(a, &[0x30, 50, 0x00]);
    sim.advance(secs(2));
    sim.send_raw(a, &[0x01]);
    sim.advance(secs(1));
    assert_eq!(sim.closed(a), Some(CloseReason::PacketTimeout));
    match sim.recv(a) {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, ReasonCode::KeepAliveTimeout);
            assert!(d.properties.reason_string.is_some());
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    sim.assert_no_leaks();
}

// ---- reconfigure (a re-read configuration) ----

/// New limits apply to new connections and to checks made from now on;
/// what a connected MQTT 5 client was promised in its CONNACK holds.
#[test]
fn reconfigure_keeps_what_a_connack_promised() {
    let mut sim = sim_with(|c| {
        c.limits.max_packet_size = 1000;
        c.topic_alias_maximum = 5;
    });
    let (old, ack) = join(&mut sim, connect5("old", true, 0));
    assert_eq!(
        ack.properties.maximum_packet_size.map(|m| m.get()),
        Some(1000)
    );
    let (sub, _) = join(&mut sim, connect5("sub", true, 0));
    sim.subscribe(sub, 1, &[("t/#", QoS::AtMostOnce)]);

    sim.broker.reconfigure(
        sim.now,
        Config {
            limits: roost_core::broker::Limits {
                max_packet_size: 200,
                max_connections: 3,
                ..Default::default()
            },
            topic_alias_maximum: 0,
            maximum_qos: QoS::AtLeastOnce,
            ..Config::default()
        },
    );
    // The new limits for a new client: announced and enforced.
    let (new, ack) = join(&mut sim, connect5("new", true, 0));
    assert_eq!(
        ack.properties.maximum_packet_size.map(|m| m.get()),
        Some(200)
    );
    assert_eq!(ack.properties.topic_alias_maximum, None);
    assert_eq!(ack.properties.maximum_qos, Some(QoS::AtLeastOnce));
    sim.publish(new, "t/1", &[b'n'; 500], QoS::AtMostOnce, 1, false);
    assert_disconnected(&mut sim, new, ReasonCode::PacketTooLarge);

    // The connected client keeps its promised 1000 bytes and alias 5.
    sim.publish(old, "t/2", &[b'o'; 500], QoS::AtMostOnce, 1, false);
    let mut aliased = publish("t/3", b"a", QoS::AtMostOnce, 2, false);
    aliased.properties.topic_alias = NonZeroU16::new(5);
    sim.send(old, Packet::Publish(aliased));
    assert!(sim.closed(old).is_none(), "{:?}", sim.closed(old));
    let got = sim.publishes(sub);
    assert_eq!(
        got.iter().map(|p| p.topic.as_str()).collect::<Vec<_>>(),
        ["t/2", "t/3"]
    );
    // A check made now uses the new capability: QoS 2 is over the maximum.
    sim.send(
        old,
        Packet::Publish(publish("t/4", b"q", QoS::ExactlyOnce, 3, false)),
    );
    assert_disconnected(&mut sim, old, ReasonCode::QoSNotSupported);

    // max_connections lowered to 3: sub plus two more.
    let _a = join(&mut sim, connect5("a", true, 0));
    let _b = join(&mut sim, connect5("b", true, 0));
    let (_, refused) = sim.connect_with(connect5("c", true, 0));
    assert_eq!(refused.expect("CONNACK").reason, ReasonCode::ServerBusy);
}

/// One connection closed by the broker (its listener was removed): MQTT 5
/// gets DISCONNECT 0x8B, the session stays; the others are untouched.
#[test]
fn close_connection_says_server_shutting_down() {
    let mut sim = sim_with(|_| {});
    let (a, _) = join(&mut sim, connect5("a", false, 60));
    let (b, _) = join(&mut sim, connect5("b", true, 0));
    sim.broker.close_connection(sim.now, a);
    sim.drain();
    assert_disconnected(&mut sim, a, ReasonCode::ServerShuttingDown);
    assert!(sim.closed(b).is_none());
    assert!(sim.broker.has_session("a"));
}
