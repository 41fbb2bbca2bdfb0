//! Scenarios for MQTT 3.1 and 3.1.1 in the in-process harness: every
//! behaviour of the engine issue, and every case of the Eclipse Paho
//! interoperability suite's `client_test.py`, written anew.

mod support;

use roost_core::broker::{
    CloseReason, Config, Limits, PublishDecision, SubscribeDecision, Verdict,
};
use roost_core::codec::*;
use support::*;

const V4: Protocol = Protocol::V3_1_1;

// ---- Paho client_test.py, one test per case ----

#[test]
fn paho_basic_round_trip_at_each_qos() {
    let mut sim = Sim::quiet();
    let (a, ack) = sim.connect("myclientid", V4, true);
    assert!(!ack.session_present);
    sim.disconnect(a);
    let (a, ack) = sim.connect("myclientid", V4, true);
    assert!(!ack.session_present);
    assert_eq!(
        sim.subscribe(a, 1, &[("TopicA", QoS::ExactlyOnce)]),
        [ReasonCode::GrantedQoS2]
    );
    sim.publish(a, "TopicA", b"qos 0", QoS::AtMostOnce, 1, false);
    sim.publish(a, "TopicA", b"qos 1", QoS::AtLeastOnce, 2, false);
    sim.publish(a, "TopicA", b"qos 2", QoS::ExactlyOnce, 3, false);
    let got = sim.publishes(a);
    let payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [&b"qos 0"[..], b"qos 1", b"qos 2"]);
    assert_eq!(
        got.iter().map(|p| p.qos.qos()).collect::<Vec<_>>(),
        [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
    );
    sim.ack_all(a, &got);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn second_connect_closes_the_connection_without_connack() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V4, true);
    sim.send(a, Packet::Connect(Box::new(connect("a", V4, true, 0))));
    assert!(
        sim.recv_all(a).is_empty(),
        "a second CONNECT must not be answered"
    );
    assert_eq!(
        sim.closed(a),
        Some(CloseReason::Protocol(ReasonCode::ProtocolError))
    );
    sim.assert_no_leaks();
}

#[test]
fn wrong_protocol_name_is_refused() {
    let mut sim = Sim::quiet();
    let a = sim.open(V4);
    // CONNECT with protocol name "hj", level 4.
    sim.send_raw(
        a,
        &[
            0x10, 0x0B, 0x00, 0x02, b'h', b'j', 0x04, 0x02, 0x00, 0x00, 0x00, 0x01, b'x',
        ],
    );
    assert!(sim.recv_all(a).is_empty());
    assert_eq!(
        sim.closed(a),
        Some(CloseReason::Decode(DecodeError::InvalidProtocolName))
    );
    assert_eq!(sim.broker.connected_count(), 0);
}

#[test]
fn unsupported_protocol_level_gets_connack_0x01() {
    let mut sim = Sim::quiet();
    let a = sim.open(V4);
    sim.send_raw(
        a,
        &[
            0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x07, 0x02, 0x00, 0x00, 0x00, 0x01,
            b'x',
        ],
    );
    let Some(Packet::ConnAck(ack)) = sim.recv(a) else {
        panic!("no CONNACK")
    };
    assert_eq!(ack.reason.to_v3_connack(), 0x01);
    assert!(sim.closed(a).is_some());
}

#[test]
fn paho_retained_messages_are_delivered_to_new_subscribers_and_cleared() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("myclientid", V4, true);
    sim.publish(a, "TopicA/B", b"qos 0", QoS::AtMostOnce, 1, true);
    sim.publish(a, "Topic/C", b"qos 1", QoS::AtLeastOnce, 2, true);
    sim.publish(a, "TopicA/C", b"qos 2", QoS::ExactlyOnce, 3, true);
    assert_eq!(sim.broker.retained_count(), 3);
    sim.subscribe(a, 4, &[("+/+", QoS::ExactlyOnce)]);
    let got = sim.publishes(a);
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|p| p.retain),
        "retained deliveries carry RETAIN=1"
    );
    sim.ack_all(a, &got);
    sim.disconnect(a);

    let (a, ack) = sim.connect("myclientid", V4, true);
    assert!(!ack.session_present);
    for (i, topic) in ["TopicA/B", "Topic/C", "TopicA/C"].into_iter().enumerate() {
        sim.publish(a, topic, b"", QoS::AtMostOnce, i as u16 + 1, true);
    }
    assert_eq!(sim.broker.retained_count(), 0);
    sim.subscribe(a, 9, &[("+/+", QoS::ExactlyOnce)]);
    assert!(
        sim.publishes(a).is_empty(),
        "cleared retained messages must not be sent"
    );
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn retained_flag_is_cleared_on_normal_delivery() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V4, true);
    sim.subscribe(a, 1, &[("t", QoS::AtMostOnce)]);
    sim.publish(a, "t", b"x", QoS::AtMostOnce, 1, true);
    let got = sim.publishes(a);
    assert_eq!(got.len(), 1);
    assert!(
        !got[0].retain,
        "existing subscribers see RETAIN=0 [MQTT-3.3.1-9]"
    );
}

#[test]
fn paho_offline_messages_are_queued_for_a_persistent_session() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("myclientid", V4, false);
    sim.subscribe(a, 1, &[("+/+", QoS::ExactlyOnce)]);
    sim.disconnect(a);
    let (b, _) = sim.connect("myclientid2", V4, true);
    sim.publish(b, "TopicA/B", b"qos 0", QoS::AtMostOnce, 1, false);
    sim.publish(b, "Topic/C", b"qos 1", QoS::AtLeastOnce, 2, false);
    sim.publish(b, "TopicA/C", b"qos 2", QoS::ExactlyOnce, 3, false);
    sim.disconnect(b);
    let (a, ack) = sim.connect("myclientid", V4, false);
    assert!(ack.session_present);
    let got = sim.publishes(a);
    let qos: Vec<QoS> = got.iter().map(|p| p.qos.qos()).collect();
    assert_eq!(
        qos,
        [QoS::AtLeastOnce, QoS::ExactlyOnce],
        "QoS 0 is not queued by default"
    );
    sim.ack_all(a, &got);
    sim.disconnect(a);
    let (a, _) = sim.connect("myclientid", V4, true);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn qos0_is_queued_offline_when_configured() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        limits: Limits {
            queue_qos0_offline: true,
            ..Limits::default()
        },
        ..Config::default()
    });
    let (a, _) = sim.connect("a", V4, false);
    sim.subscribe(a, 1, &[("t", QoS::AtLeastOnce)]);
    sim.disconnect(a);
    let (b, _) = sim.connect("b", V4, true);
    sim.publish(b, "t", b"zero", QoS::AtMostOnce, 1, false);
    let (a, _) = sim.connect("a", V4, false);
    let got = sim.publishes(a);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QosPid::AtMostOnce);
}

#[test]
fn paho_overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("myclientid", V4, true);
    sim.subscribe(
        a,
        1,
        &[
            ("TopicA/#", QoS::ExactlyOnce),
            ("TopicA/+", QoS::AtLeastOnce),
        ],
    );
    sim.publish(a, "TopicA/C", b"overlap", QoS::ExactlyOnce, 2, false);
    let got = sim.publishes(a);
    assert_eq!(
        got.len(),
        1,
        "one delivery per client, not per subscription"
    );
    assert_eq!(got[0].qos.qos(), QoS::ExactlyOnce);
    sim.ack_all(a, &got);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn paho_keepalive_expiry_publishes_the_will() {
    let mut sim = Sim::quiet();
    let mut c = connect("myclientid", V4, true, 5);
    c.will = Some(will("/TopicA", b"keepalive expiry", QoS::AtMostOnce, false));
    let (a, ack) = sim.connect_with(c);
    assert_eq!(ack.unwrap().reason, ReasonCode::Success);
    let (b, _) = sim.connect("myclientid2", V4, true);
    sim.subscribe(b, 1, &[("/TopicA", QoS::ExactlyOnce)]);
    // B keeps itself alive; A is silent.
    sim.advance(secs(7));
    assert!(sim.closed(a).is_none(), "not before 1.5 x keep-alive");
    sim.advance(secs(1));
    assert_eq!(sim.closed(a), Some(CloseReason::KeepAliveTimeout));
    let got = sim.publishes(b);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"keepalive expiry");
    sim.disconnect(b);
    sim.assert_no_leaks();
}

#[test]
fn activity_postpones_the_keepalive_deadline() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect_with(connect("a", V4, true, 10));
    for _ in 0..5 {
        sim.advance(secs(9));
        sim.send(a, Packet::PingReq);
        assert_eq!(sim.recv(a), Some(Packet::PingResp));
    }
    assert!(sim.closed(a).is_none());
    sim.advance(secs(16));
    assert_eq!(sim.closed(a), Some(CloseReason::KeepAliveTimeout));
}

#[test]
fn paho_redelivery_on_reconnect_resends_unacknowledged_messages() {
    let mut sim = Sim::quiet();
    let (b, _) = sim.connect("myclientid2", V4, false);
    sim.subscribe(b, 1, &[("TopicA/#", QoS::ExactlyOnce)]);
    sim.publish(b, "TopicA/B", b"qos 1", QoS::AtLeastOnce, 2, false);
    sim.publish(b, "TopicA/C", b"qos 2", QoS::ExactlyOnce, 3, false);
    let first = sim.publishes(b);
    assert_eq!(first.len(), 2);
    // B never acknowledges; it disconnects.
    sim.disconnect(b);
    let (b, ack) = sim.connect("myclientid2", V4, false);
    assert!(ack.session_present);
    let again = sim.publishes(b);
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|p| p.dup), "re-sent with DUP=1");
    assert_eq!(
        again[0].qos.packet_id(),
        first[0].qos.packet_id(),
        "original order and ids"
    );
    assert_eq!(again[1].qos.packet_id(), first[1].qos.packet_id());
    sim.ack_all(b, &again);
    sim.disconnect(b);
    let (b, _) = sim.connect("myclientid2", V4, true);
    sim.disconnect(b);
    sim.assert_no_leaks();
}

#[test]
fn pubrel_is_resent_for_a_released_qos2_message_on_reconnect() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V4, false);
    sim.subscribe(a, 1, &[("t", QoS::ExactlyOnce)]);
    let (p, _) = sim.connect("p", V4, true);
    sim.publish(p, "t", b"x", QoS::ExactlyOnce, 1, false);
    let got = sim.publishes(a);
    let pid = got[0].qos.packet_id().unwrap();
    sim.send(a, Packet::PubRec(PubResponse::new(pid)));
    assert!(matches!(sim.recv(a), Some(Packet::PubRel(_))));
    sim.drop_transport(a);
    let (a, _) = sim.connect("a", V4, false);
    assert_eq!(sim.recv_all(a), [Packet::PubRel(PubResponse::new(pid))]);
    sim.send(a, Packet::PubComp(PubResponse::new(pid)));
    assert_eq!(sim.broker.inflight_count("a"), 0);
}

#[test]
fn paho_zero_length_client_id_needs_a_clean_session() {
    let mut sim = Sim::quiet();
    let (a, ack) = sim.connect_with(connect("", V4, false, 0));
    assert_eq!(ack.unwrap().reason.to_v3_connack(), 0x02);
    assert!(sim.closed(a).is_some());
    let (b, ack) = sim.connect_with(connect("", V4, true, 0));
    assert_eq!(ack.unwrap().reason, ReasonCode::Success);
    sim.disconnect(b);
    sim.assert_no_leaks();
}

#[test]
fn assigned_client_ids_are_unique() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect_with(connect("", V4, true, 0));
    let (b, _) = sim.connect_with(connect("", V4, true, 0));
    assert!(
        sim.closed(a).is_none(),
        "a second empty id must not take over the first"
    );
    assert_eq!(sim.broker.session_count(), 2);
    sim.disconnect(a);
    sim.disconnect(b);
}

struct DenyNoSubscribe;

impl roost_core::broker::AccessPolicy for DenyNoSubscribe {
    fn authorize_publish(
        &self,
        _: roost_core::broker::ClientRef<'_>,
        _: &roost_core::topic::TopicName,
    ) -> Verdict<PublishDecision> {
        Verdict::Decided(PublishDecision::Allow)
    }
    fn authorize_subscribe(
        &self,
        _: roost_core::broker::ClientRef<'_>,
        filter: &roost_core::topic::TopicFilter,
        qos: QoS,
    ) -> Verdict<SubscribeDecision> {
        Verdict::Decided(if filter.as_str() == "test/nosubscribe" {
            SubscribeDecision::Deny(ReasonCode::UnspecifiedError)
        } else {
            SubscribeDecision::Grant(qos)
        })
    }
}

#[test]
fn paho_subscribe_failure_answers_0x80() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        authorization: Box::new(DenyNoSubscribe),
        ..Config::default()
    });
    let (a, _) = sim.connect("myclientid", V4, true);
    let reasons = sim.subscribe(
        a,
        1,
        &[
            ("test/nosubscribe", QoS::ExactlyOnce),
            ("ok", QoS::AtLeastOnce),
        ],
    );
    assert_eq!(
        reasons,
        [ReasonCode::UnspecifiedError, ReasonCode::GrantedQoS1]
    );
    sim.publish(a, "test/nosubscribe", b"x", QoS::AtMostOnce, 2, false);
    assert!(sim.publishes(a).is_empty());
}

#[test]
fn paho_dollar_topics_do_not_match_leading_wildcards() {
    let mut sim = Sim::quiet();
    let (b, _) = sim.connect("myclientid2", V4, true);
    sim.subscribe(b, 1, &[("+/+", QoS::ExactlyOnce)]);
    sim.publish(b, "$TopicA/B", b"", QoS::AtLeastOnce, 2, false);
    assert!(sim.publishes(b).is_empty());
    assert!(sim.closed(b).is_none());
    sim.disconnect(b);
    sim.assert_no_leaks();
}

#[test]
fn paho_unsubscribe_stops_deliveries_for_that_filter_only() {
    let mut sim = Sim::quiet();
    let (b, _) = sim.connect("myclientid2", V4, true);
    sim.subscribe(
        b,
        1,
        &[
            ("TopicA", QoS::ExactlyOnce),
            ("TopicA/B", QoS::ExactlyOnce),
            ("Topic/C", QoS::ExactlyOnce),
        ],
    );
    sim.send(
        b,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: PacketId::new(2).unwrap(),
            filters: vec![roost_core::topic::TopicFilter::from_static("TopicA")],
            properties: Default::default(),
        }),
    );
    assert!(matches!(sim.recv(b), Some(Packet::UnsubAck(_))));
    let (a, _) = sim.connect("myclientid", V4, true);
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

// ---- Sessions, takeover, wills ----

#[test]
fn takeover_closes_the_old_connection_and_keeps_its_will_when_the_session_continues() {
    let mut sim = Sim::quiet();
    let (w, _) = sim.connect("watcher", V4, true);
    sim.subscribe(w, 1, &[("will/#", QoS::AtMostOnce)]);
    let mut c = connect("dup", V4, false, 0);
    c.will = Some(will("will/dup", b"gone", QoS::AtMostOnce, false));
    let (old, _) = sim.connect_with(c);
    sim.subscribe(old, 1, &[("kept", QoS::AtLeastOnce)]);
    let (new, ack) = sim.connect("dup", V4, false);
    assert!(
        ack.session_present,
        "the session is taken over, not discarded"
    );
    assert_eq!(sim.closed(old), Some(CloseReason::SessionTakenOver));
    assert!(
        sim.publishes(w).is_empty(),
        "the session continues, so the will is not published (as Mosquitto)"
    );
    sim.publish(w, "kept", b"x", QoS::AtLeastOnce, 2, false);
    assert_eq!(sim.publishes(new).len(), 1, "subscriptions came along");
}

#[test]
fn will_is_not_published_after_disconnect() {
    let mut sim = Sim::quiet();
    let (w, _) = sim.connect("watcher", V4, true);
    sim.subscribe(w, 1, &[("will", QoS::AtMostOnce)]);
    let mut c = connect("a", V4, true, 0);
    c.will = Some(will("will", b"x", QoS::AtMostOnce, false));
    let (a, _) = sim.connect_with(c);
    sim.disconnect(a);
    assert!(sim.publishes(w).is_empty());
}

#[test]
fn will_is_published_when_the_transport_dies_with_its_qos_and_retain() {
    let mut sim = Sim::quiet();
    let mut c = connect("a", V4, true, 0);
    c.will = Some(will("will", b"x", QoS::AtLeastOnce, true));
    let (a, _) = sim.connect_with(c);
    sim.drop_transport(a);
    assert_eq!(sim.broker.retained_count(), 1, "will retain is honoured");
    let (w, _) = sim.connect("watcher", V4, true);
    sim.subscribe(w, 1, &[("will", QoS::ExactlyOnce)]);
    let got = sim.publishes(w);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos.qos(), QoS::AtLeastOnce);
    assert!(got[0].retain);
}

#[test]
fn will_is_published_on_a_protocol_violation() {
    let mut sim = Sim::quiet();
    let (w, _) = sim.connect("watcher", V4, true);
    sim.subscribe(w, 1, &[("will", QoS::AtMostOnce)]);
    let mut c = connect("a", V4, true, 0);
    c.will = Some(will("will", b"x", QoS::AtMostOnce, false));
    let (a, _) = sim.connect_with(c);
    sim.send_raw(a, &[0x30, 0x80, 0x80, 0x80, 0x80, 0x01]); // 5-byte remaining length
    assert_eq!(
        sim.closed(a),
        Some(CloseReason::Decode(DecodeError::MalformedVarInt))
    );
    assert_eq!(sim.publishes(w).len(), 1);
}

#[test]
fn clean_session_discards_the_old_session() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V4, false);
    sim.subscribe(a, 1, &[("t", QoS::AtLeastOnce)]);
    sim.disconnect(a);
    assert!(sim.broker.has_session("a"));
    let (a, ack) = sim.connect("a", V4, true);
    assert!(!ack.session_present);
    let (b, _) = sim.connect("b", V4, true);
    sim.publish(b, "t", b"x", QoS::AtLeastOnce, 1, false);
    assert!(sim.publishes(a).is_empty());
    sim.disconnect(a);
    sim.disconnect(b);
    sim.assert_no_leaks();
}

// ---- Connect rules ----

#[test]
fn first_packet_must_be_connect() {
    let mut sim = Sim::quiet();
    let a = sim.open(V4);
    sim.send(a, Packet::PingReq);
    assert!(sim.recv_all(a).is_empty());
    assert!(sim.closed(a).is_some());
}

#[test]
fn connect_timeout_closes_silent_connections() {
    let mut sim = Sim::quiet();
    let a = sim.open(V4);
    sim.advance(secs(9));
    assert!(sim.closed(a).is_none());
    sim.advance(secs(2));
    assert_eq!(sim.closed(a), Some(CloseReason::ConnectTimeout));
    sim.assert_no_leaks();
}

#[test]
fn mqtt_3_1_clients_connect_and_talk_to_3_1_1_clients() {
    let mut sim = Sim::quiet();
    let (old, ack) = sim.connect("legacy", Protocol::V3_1, true);
    assert!(!ack.session_present);
    let (new, _) = sim.connect("modern", V4, true);
    sim.subscribe(old, 1, &[("x/#", QoS::AtLeastOnce)]);
    sim.publish(new, "x/y", b"hi", QoS::AtLeastOnce, 1, false);
    let got = sim.publishes(old);
    assert_eq!(&got[0].payload[..], b"hi");
}

#[test]
fn static_authentication_checks_user_and_password() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        authentication: roost_core::broker::Authentication::Static {
            allow_anonymous: false,
            users: vec![(
                roost_core::MqttStr::from_static("alice"),
                bytes::Bytes::from_static(b"secret"),
            )],
        },
        ..Config::default()
    });
    let (_, ack) = sim.connect_with(connect("anon", V4, true, 0));
    assert_eq!(ack.unwrap().reason.to_v3_connack(), 0x05);
    let mut c = connect("bad", V4, true, 0);
    c.username = Some(roost_core::MqttStr::from_static("alice"));
    c.password = Some(bytes::Bytes::from_static(b"wrong"));
    let (_, ack) = sim.connect_with(c.clone());
    assert_eq!(ack.unwrap().reason.to_v3_connack(), 0x04);
    c.password = Some(bytes::Bytes::from_static(b"secret"));
    let (_, ack) = sim.connect_with(c);
    assert_eq!(ack.unwrap().reason, ReasonCode::Success);
}

#[test]
fn external_authentication_waits_for_the_decision() {
    use roost_core::broker::{AuthDecision, Authentication};
    let mut sim = Sim::new(Config {
        sys_interval: None,
        authentication: Authentication::External,
        ..Config::default()
    });
    let a = sim.open(V4);
    sim.send(a, Packet::Connect(Box::new(connect("a", V4, true, 0))));
    // Packets sent before the decision wait for it.
    sim.send(a, Packet::PingReq);
    assert!(sim.recv_all(a).is_empty());
    let request = sim
        .auth_requests
        .pop_front()
        .expect("an authentication request");
    assert_eq!(request.client_id, "a");
    sim.broker
        .resolve_auth(sim.now, request.token, AuthDecision::Accept);
    sim.drain();
    let got = sim.recv_all(a);
    assert!(matches!(&got[0], Packet::ConnAck(ack) if ack.reason == ReasonCode::Success));
    assert_eq!(got[1], Packet::PingResp);

    let b = sim.open(V4);
    sim.send(b, Packet::Connect(Box::new(connect("b", V4, true, 0))));
    let request = sim.auth_requests.pop_front().unwrap();
    sim.broker.resolve_auth(
        sim.now,
        request.token,
        AuthDecision::Reject(ReasonCode::NotAuthorized),
    );
    sim.drain();
    let Some(Packet::ConnAck(ack)) = sim.recv(b) else {
        panic!()
    };
    assert_eq!(ack.reason.to_v3_connack(), 0x05);
    assert!(sim.closed(b).is_some());
}

// ---- QoS flows ----

#[test]
fn qos2_publish_resent_before_pubrel_is_delivered_once() {
    let mut sim = Sim::quiet();
    let (s, _) = sim.connect("s", V4, true);
    sim.subscribe(s, 1, &[("t", QoS::ExactlyOnce)]);
    let (p, _) = sim.connect("p", V4, true);
    let mut msg = publish("t", b"once", QoS::ExactlyOnce, 7, false);
    sim.send(p, Packet::Publish(msg.clone()));
    msg.dup = true;
    sim.send(p, Packet::Publish(msg));
    let acks = sim.recv_all(p);
    assert_eq!(acks.len(), 2, "each PUBLISH gets a PUBREC");
    sim.send(
        p,
        Packet::PubRel(PubResponse::new(PacketId::new(7).unwrap())),
    );
    assert!(matches!(sim.recv(p), Some(Packet::PubComp(_))));
    assert_eq!(sim.publishes(s).len(), 1, "exactly once");
}

#[test]
fn delivery_qos_is_the_minimum_of_publish_and_subscription() {
    let mut sim = Sim::quiet();
    let (s, _) = sim.connect("s", V4, true);
    sim.subscribe(s, 1, &[("t", QoS::AtLeastOnce)]);
    sim.publish(s, "t", b"2", QoS::ExactlyOnce, 1, false);
    sim.publish(s, "t", b"0", QoS::AtMostOnce, 2, false);
    let got = sim.publishes(s);
    assert_eq!(got[0].qos.qos(), QoS::AtLeastOnce);
    assert_eq!(got[1].qos.qos(), QoS::AtMostOnce);
}

#[test]
fn inflight_window_holds_the_rest_in_order() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        limits: Limits {
            max_inflight: 2,
            ..Limits::default()
        },
        ..Config::default()
    });
    let (s, _) = sim.connect("s", V4, true);
    sim.subscribe(s, 1, &[("t", QoS::AtLeastOnce)]);
    let (p, _) = sim.connect("p", V4, true);
    for i in 0..5u8 {
        sim.publish(p, "t", &[i], QoS::AtLeastOnce, u16::from(i) + 1, false);
    }
    let first = sim.publishes(s);
    assert_eq!(first.len(), 2);
    assert_eq!(sim.broker.queued_count("s"), 3);
    let mut seen: Vec<u8> = first.iter().map(|p| p.payload[0]).collect();
    let mut pending = first;
    while !pending.is_empty() {
        sim.ack_all(s, &pending);
        pending = sim.publishes(s);
        seen.extend(pending.iter().map(|p| p.payload[0]));
    }
    assert_eq!(seen, [0, 1, 2, 3, 4]);
}

#[test]
fn packet_ids_are_not_reused_while_in_flight() {
    let mut sim = Sim::quiet();
    let (s, _) = sim.connect("s", V4, true);
    sim.subscribe(s, 1, &[("t", QoS::AtLeastOnce)]);
    let (p, _) = sim.connect("p", V4, true);
    for i in 0..20u16 {
        sim.publish(p, "t", b"x", QoS::AtLeastOnce, i + 1, false);
    }
    let got = sim.publishes(s);
    let mut ids: Vec<u16> = got
        .iter()
        .map(|p| p.qos.packet_id().unwrap().get())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20);
}

#[test]
fn full_offline_queue_drops_new_messages_and_counts_them() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        limits: Limits {
            max_queued_messages: 3,
            ..Limits::default()
        },
        ..Config::default()
    });
    let (s, _) = sim.connect("s", V4, false);
    sim.subscribe(s, 1, &[("t", QoS::AtLeastOnce)]);
    sim.disconnect(s);
    let (p, _) = sim.connect("p", V4, true);
    for i in 0..5u8 {
        sim.publish(p, "t", &[i], QoS::AtLeastOnce, u16::from(i) + 1, false);
    }
    assert_eq!(sim.broker.queued_count("s"), 3);
    assert_eq!(sim.broker.stats().dropped, 2);
    let (s, _) = sim.connect("s", V4, false);
    let got: Vec<u8> = sim.publishes(s).iter().map(|p| p.payload[0]).collect();
    assert_eq!(got, [0, 1, 2], "the oldest are kept, the newest dropped");
}

// ---- Limits and bad input ----

#[test]
fn oversize_packet_closes_only_that_connection() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        limits: Limits {
            max_packet_size: 1024,
            ..Limits::default()
        },
        ..Config::default()
    });
    let (a, _) = sim.connect("a", V4, true);
    let (b, _) = sim.connect("b", V4, true);
    sim.send_raw(a, &[0x30, 0xFF, 0xFF, 0x03]); // announces 65,535 bytes
    assert!(matches!(
        sim.closed(a),
        Some(CloseReason::Decode(DecodeError::PacketTooLarge { .. }))
    ));
    sim.subscribe(b, 1, &[("t", QoS::AtMostOnce)]);
    sim.publish(b, "t", b"still here", QoS::AtMostOnce, 1, false);
    assert_eq!(sim.publishes(b).len(), 1);
}

#[test]
fn too_many_subscriptions_are_refused() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        limits: Limits {
            max_subscriptions_per_client: 2,
            ..Limits::default()
        },
        ..Config::default()
    });
    let (a, _) = sim.connect("a", V4, true);
    let reasons = sim.subscribe(
        a,
        1,
        &[
            ("a", QoS::AtMostOnce),
            ("b", QoS::AtMostOnce),
            ("c", QoS::AtMostOnce),
        ],
    );
    // MQTT 3.1.1 has one failure code: 0x80 (QuotaExceeded in MQTT 5).
    assert_eq!(reasons[2], ReasonCode::UnspecifiedError);
    assert_eq!(sim.broker.subscription_count(), 2);
}

#[test]
fn clients_cannot_publish_to_sys() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect("a", V4, true);
    sim.subscribe(a, 1, &[("$SYS/#", QoS::AtMostOnce)]);
    sim.publish(
        a,
        "$SYS/broker/uptime",
        b"forged",
        QoS::AtLeastOnce,
        2,
        true,
    );
    assert!(sim.publishes(a).is_empty());
    assert_eq!(sim.broker.retained_count(), 0);
}

#[test]
fn sys_statistics_and_presence_are_published() {
    let mut sim = Sim::new(Config::default());
    let (a, _) = sim.connect("a", V4, true);
    sim.subscribe(a, 1, &[("$SYS/#", QoS::AtMostOnce)]);
    let (b, _) = sim.connect("b", V4, true);
    let got = sim.publishes(a);
    assert!(
        got.iter()
            .any(|p| p.topic.as_str() == "$SYS/roost/new/clients" && &p.payload[..] == b"b")
    );
    sim.advance(secs(10));
    let got = sim.publishes(a);
    // The statistics of the start came first (at 0 seconds); the latest
    // are last.
    let uptime = got
        .iter()
        .rfind(|p| p.topic.as_str() == "$SYS/broker/uptime")
        .expect("uptime");
    assert_eq!(&uptime.payload[..], b"10 seconds");
    let connected = got
        .iter()
        .rfind(|p| p.topic.as_str() == "$SYS/broker/clients/connected")
        .unwrap();
    assert_eq!(&connected.payload[..], b"2");
    sim.disconnect(b);
    let got = sim.publishes(a);
    assert!(
        got.iter()
            .any(|p| p.topic.as_str() == "$SYS/roost/disconnect/clients")
    );
}

#[test]
fn in_process_publish_and_subscribe() {
    let mut sim = Sim::quiet();
    let now = sim.now;
    let local = sim
        .broker
        .subscribe(now, roost_core::topic::TopicFilter::from_static("app/#"));
    let (a, _) = sim.connect("a", V4, true);
    sim.subscribe(a, 1, &[("from/app", QoS::AtMostOnce)]);
    sim.publish(a, "app/x", b"to app", QoS::AtLeastOnce, 2, false);
    assert_eq!(sim.deliveries.len(), 1);
    assert_eq!(sim.deliveries[0].0, local);
    assert_eq!(&sim.deliveries[0].1.payload[..], b"to app");
    let msg = roost_core::broker::Message {
        topic: roost_core::topic::TopicName::from_static("from/app"),
        payload: bytes::Bytes::from_static(b"hello"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    };
    assert_eq!(sim.broker.publish(now, msg), 1);
    sim.drain();
    assert_eq!(sim.publishes(a).len(), 1);
    assert!(sim.broker.unsubscribe(now, local));
}

#[test]
fn blocked_connection_drops_qos0_and_holds_qos1_until_writable() {
    let mut sim = Sim::quiet();
    let (s, _) = sim.connect("slow", V4, true);
    sim.subscribe(s, 1, &[("t", QoS::AtLeastOnce)]);
    let (p, _) = sim.connect("p", V4, true);
    let now = sim.now;
    sim.broker.handle_blocked(now, s);
    sim.publish(p, "t", b"zero", QoS::AtMostOnce, 1, false);
    sim.publish(p, "t", b"one", QoS::AtLeastOnce, 2, false);
    assert!(
        sim.publishes(s).is_empty(),
        "nothing is sent to a blocked connection"
    );
    assert_eq!(
        sim.broker.stats().dropped,
        1,
        "the QoS 0 message is dropped and counted"
    );
    assert_eq!(
        sim.broker.queued_count("slow"),
        1,
        "the QoS 1 message waits"
    );
    sim.broker.handle_writable(now, s);
    sim.drain();
    let got = sim.publishes(s);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"one");
}

/// A broker whose engine treats 1 KiB of output for one connection as a
/// full buffer, with 100 retained messages of 100 bytes on `r/0`..`r/99`.
fn many_retained(max_queued_messages: usize) -> Sim {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        limits: Limits {
            outbound_buffer_bytes: 1024,
            max_queued_messages,
            ..Limits::default()
        },
        ..Config::default()
    });
    let (p, _) = sim.connect("p", V4, true);
    for i in 0..100u16 {
        let topic = format!("r/{i}");
        sim.publish(p, &topic, &[b'x'; 100], QoS::AtMostOnce, i + 1, true);
    }
    assert_eq!(sim.broker.retained_count(), 100);
    sim
}

/// Resumes `s` until `want` PUBLISHes arrived (or 200 resumptions), each
/// resumption bounded by the output limit; returns them in arrival order.
fn drain_resuming(sim: &mut Sim, s: roost_core::broker::ConnId, want: usize) -> Vec<Publish> {
    let mut all = Vec::new();
    for _ in 0..200 {
        let more = sim.publishes(s);
        assert!(
            more.len() <= 12,
            "each resumption is bounded: {}",
            more.len()
        );
        sim.ack_all(s, &more);
        all.extend(more);
        if all.len() >= want {
            break;
        }
        let now = sim.now;
        sim.broker.handle_writable(now, s);
        sim.drain();
    }
    all
}

fn topics(publishes: &[Publish]) -> Vec<String> {
    publishes.iter().map(|p| p.topic.to_string()).collect()
}

#[test]
fn retained_messages_beyond_the_output_bound_wait_for_writable() {
    // A queue of one could not hold them: they stay in the store until
    // the connection takes them.
    let mut sim = many_retained(1);
    let (s, _) = sim.connect("s", V4, true);
    sim.subscribe(s, 1, &[("r/#", QoS::AtMostOnce)]);
    let first = sim.publishes(s);
    assert!(
        (1..=10).contains(&first.len()),
        "one input sends about 1 KiB of 108-byte PUBLISHes, not all 100: {}",
        first.len()
    );
    assert_eq!(
        sim.broker.queued_count("s"),
        0,
        "nothing waits in the queue"
    );
    let now = sim.now;
    sim.broker.handle_writable(now, s);
    sim.drain();
    let mut all = first;
    all.extend(drain_resuming(&mut sim, s, 100 - all.len()));
    assert!(all.iter().all(|p| p.retain));
    let got = topics(&all);
    let mut want: Vec<String> = (0..100).map(|i| format!("r/{i}")).collect();
    want.sort();
    assert_eq!(got, want, "every retained message once, in topic order");
    assert_eq!(sim.broker.stats().dropped, 0);
}

#[test]
fn a_subscribe_repeating_a_filter_cannot_pile_up_retained_output() {
    let mut sim = many_retained(50);
    let (s, _) = sim.connect("s", V4, true);
    // One SUBSCRIBE with the same filter 20 times: 2,000 retained sends
    // asked for, about 210 KB, from 80 bytes of input. Each repetition
    // replaces the subscription and its walk over the store.
    let filters = [("r/#", QoS::AtMostOnce); 20];
    let reasons = sim.subscribe(s, 1, &filters);
    assert_eq!(reasons.len(), 20);
    let first = sim.publishes(s);
    assert!(
        first.len() <= 10,
        "output stays within the bound: {}",
        first.len()
    );
    assert_eq!(sim.broker.queued_count("s"), 0);
    let now = sim.now;
    sim.broker.handle_writable(now, s);
    sim.drain();
    let mut all = first;
    all.extend(drain_resuming(&mut sim, s, 200));
    assert_eq!(all.len(), 100, "each retained message once");
    assert_eq!(sim.broker.stats().dropped, 0);
}

#[test]
fn live_deliveries_go_out_between_retained_ones() {
    let mut sim = many_retained(1000);
    let (s, _) = sim.connect("s", V4, true);
    let (p, _) = sim.connect("p2", V4, true);
    sim.subscribe(s, 1, &[("r/#", QoS::AtLeastOnce)]);
    let mut all = sim.publishes(s);
    sim.ack_all(s, &all);
    // The connection is blocked: the live message waits in the queue, and
    // goes out first when it drains, ahead of the retained rest.
    sim.publish(p, "r/live", b"now", QoS::AtLeastOnce, 1, false);
    assert_eq!(sim.broker.queued_count("s"), 1);
    let now = sim.now;
    sim.broker.handle_writable(now, s);
    sim.drain();
    all.extend(drain_resuming(&mut sim, s, 101 - all.len()));
    let got = topics(&all);
    let live = got
        .iter()
        .position(|t| t == "r/live")
        .expect("live message");
    assert!(live < 20, "live message at {live} of {}", got.len());
    assert!(!all[live].retain);
    assert_eq!(got.len(), 101);
}

#[test]
fn a_retained_walk_sends_what_was_retained_at_subscribe() {
    let mut sim = many_retained(1000);
    let (s, _) = sim.connect("s", V4, true);
    let (p, _) = sim.connect("p2", V4, true);
    sim.subscribe(s, 1, &[("r/#", QoS::AtMostOnce)]);
    let mut all = sim.publishes(s);
    // Ahead of the walk (topic order "r/0", "r/1", "r/10", ...): clear
    // r/9 and r/90..r/99, replace r/50, add r/zz; behind it, add r/00.
    for i in [9].into_iter().chain(90..100) {
        sim.publish(p, &format!("r/{i}"), b"", QoS::AtMostOnce, 1, true);
    }
    sim.publish(p, "r/50", b"new", QoS::AtMostOnce, 1, true);
    sim.publish(p, "r/zz", b"new", QoS::AtMostOnce, 1, true);
    sim.publish(p, "r/00", b"new", QoS::AtMostOnce, 1, true);
    let now = sim.now;
    sim.broker.handle_writable(now, s);
    sim.drain();
    all.extend(drain_resuming(&mut sim, s, 200));
    let retained: Vec<&Publish> = all.iter().filter(|p| p.retain).collect();
    let mut topics: Vec<String> = retained.iter().map(|p| p.topic.to_string()).collect();
    topics.sort();
    let n = topics.len();
    topics.dedup();
    assert_eq!(topics.len(), n, "none twice");
    let mut want: Vec<String> = (0..100).map(|i| format!("r/{i}")).collect();
    want.sort();
    assert_eq!(
        topics, want,
        "each one retained at SUBSCRIBE, once, the cleared ones too"
    );
    assert!(
        retained.iter().all(|p| p.payload.as_ref() == [b'x'; 100]),
        "as it was at SUBSCRIBE, not as replaced"
    );
}

#[test]
fn a_retained_walk_goes_on_when_a_persistent_session_is_back() {
    let mut sim = many_retained(1000);
    let (s, _) = sim.connect("s", V4, false);
    sim.subscribe(s, 1, &[("r/#", QoS::AtMostOnce)]);
    let mut all = sim.publishes(s);
    sim.drop_transport(s);
    let (s, ack) = sim.connect("s", V4, false);
    assert!(ack.session_present);
    all.extend(drain_resuming(&mut sim, s, 100 - all.len()));
    let mut got = topics(&all);
    let n = got.len();
    got.dedup();
    assert_eq!(got.len(), n, "none twice");
    assert_eq!(n, 100, "the walk went on where it stopped");
}

#[test]
fn over_long_topics_and_filters_are_refused() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        limits: Limits {
            max_topic_length: 16,
            ..Limits::default()
        },
        ..Config::default()
    });
    let (a, _) = sim.connect("a", V4, true);
    let reasons = sim.subscribe(
        a,
        1,
        &[
            ("0123456789/abcdefgh", QoS::AtMostOnce),
            ("short/#", QoS::AtMostOnce),
        ],
    );
    assert_eq!(reasons, [ReasonCode::UnspecifiedError, ReasonCode::Success]);
    sim.send(
        a,
        Packet::Publish(publish(
            "short/0123456789abc",
            b"x",
            QoS::AtMostOnce,
            1,
            false,
        )),
    );
    assert_eq!(
        sim.closed(a),
        Some(CloseReason::Protocol(ReasonCode::TopicNameInvalid))
    );
}

// ---- Operator-readable close reasons (issue 11) ----

#[test]
fn close_reasons_read_as_words_not_rust_names() {
    let codes = [
        ReasonCode::ProtocolError,
        ReasonCode::NotAuthorized,
        ReasonCode::ReceiveMaximumExceeded,
        ReasonCode::QuotaExceeded,
        ReasonCode::DisconnectWithWillMessage,
        ReasonCode::UnspecifiedError,
        ReasonCode::ServerMoved,
    ];
    for code in codes {
        for reason in [
            CloseReason::Protocol(code),
            CloseReason::ConnectRefused(code),
        ] {
            let text = reason.to_string();
            assert!(
                !text.contains(&format!("{code:?}")),
                "{text:?} shows the Rust name of {code:?}"
            );
            assert!(
                text.contains(&format!("0x{:02X}", code as u8)),
                "{text:?} does not give the code's value"
            );
        }
    }
    assert_eq!(
        CloseReason::ConnectRefused(ReasonCode::NotAuthorized).to_string(),
        "CONNECT refused: not authorized (0x87)"
    );
    assert_eq!(
        ReasonCode::ReceiveMaximumExceeded.to_string(),
        "receive maximum exceeded (0x93)"
    );
}

// ---- MQTT 3 inbound limits (issue 11) ----

/// A broker with persistence, a stored subscriber session on `t` (offline)
/// and a connected MQTT 3.1.1 publisher, with storage batches left
/// unconfirmed so every acknowledgement waits for durability.
fn slow_store_publisher(limits: Limits) -> (Sim, roost_core::broker::ConnId) {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        persistence: true,
        limits: Limits {
            max_queued_messages: 10_000,
            ..limits
        },
        ..Config::default()
    });
    let (s, _) = sim.connect("stored-sub", V4, false);
    sim.subscribe(s, 1, &[("t", QoS::AtLeastOnce)]);
    sim.disconnect(s);
    sim.auto_confirm = false;
    let (p, _) = sim.connect("pub", V4, true);
    (sim, p)
}

#[test]
fn mqtt3_client_may_pipeline_5000_qos1_publishes_waiting_for_durability() {
    let (mut sim, p) = slow_store_publisher(Limits::default());
    for pid in 1..=5_000u16 {
        sim.send(
            p,
            Packet::Publish(publish("t", b"x", QoS::AtLeastOnce, pid, false)),
        );
    }
    assert_eq!(
        sim.closed(p),
        None,
        "5,000 pipelined QoS 1 publishes are allowed"
    );
    assert!(
        sim.recv_all(p).is_empty(),
        "acknowledgements wait for the store"
    );
    sim.confirm_all();
    let acks = sim.recv_all(p);
    assert_eq!(acks.len(), 5_000);
    assert!(acks.iter().all(|a| matches!(a, Packet::PubAck(_))));
    assert_eq!(sim.broker.queued_count("stored-sub"), 5_000);
}

#[test]
fn mqtt3_client_beyond_5000_pending_acks_is_closed_with_a_reason_naming_it() {
    let (mut sim, p) = slow_store_publisher(Limits::default());
    for pid in 1..=5_001u16 {
        sim.send(
            p,
            Packet::Publish(publish("t", b"x", QoS::AtLeastOnce, pid, false)),
        );
    }
    assert_eq!(sim.closed(p), Some(CloseReason::PendingAcksExceeded));
}

#[test]
fn mqtt3_pending_ack_limit_is_configurable() {
    let (mut sim, p) = slow_store_publisher(Limits {
        mqtt3_max_pending_acks: 3,
        ..Limits::default()
    });
    for pid in 1..=3u16 {
        sim.send(
            p,
            Packet::Publish(publish("t", b"x", QoS::AtLeastOnce, pid, false)),
        );
    }
    assert_eq!(sim.closed(p), None);
    sim.send(
        p,
        Packet::Publish(publish("t", b"x", QoS::AtLeastOnce, 4, false)),
    );
    assert_eq!(sim.closed(p), Some(CloseReason::PendingAcksExceeded));
}

#[test]
fn mqtt3_client_may_have_1000_unreleased_qos2_publishes_and_one_more_closes_it() {
    let mut sim = Sim::quiet();
    let (w, _) = sim.connect("watcher", V4, true);
    sim.subscribe(w, 1, &[("t", QoS::AtMostOnce)]);
    let (p, _) = sim.connect("pub", V4, true);
    for pid in 1..=1_000u16 {
        sim.send(
            p,
            Packet::Publish(publish("t", b"x", QoS::ExactlyOnce, pid, false)),
        );
    }
    assert_eq!(
        sim.closed(p),
        None,
        "1,000 unreleased QoS 2 publishes are allowed"
    );
    let recs = sim.recv_all(p);
    assert_eq!(recs.len(), 1_000);
    assert!(recs.iter().all(|a| matches!(a, Packet::PubRec(_))));
    assert_eq!(sim.publishes(w).len(), 1_000);

    sim.send(
        p,
        Packet::Publish(publish("t", b"x", QoS::ExactlyOnce, 1_001, false)),
    );
    assert_eq!(sim.closed(p), Some(CloseReason::PendingQos2Exceeded));
    assert!(
        sim.publishes(w).is_empty(),
        "the one beyond the limit is not routed"
    );
    sim.disconnect(w);
    sim.assert_no_leaks();
}

#[test]
fn mqtt3_unreleased_qos2_limit_is_configurable_and_releasing_makes_room() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        limits: Limits {
            mqtt3_max_pending_qos2: 2,
            ..Limits::default()
        },
        ..Config::default()
    });
    let (p, _) = sim.connect("pub", V4, true);
    for pid in 1..=2u16 {
        sim.send(
            p,
            Packet::Publish(publish("t", b"x", QoS::ExactlyOnce, pid, false)),
        );
    }
    // Releasing one makes room for another.
    sim.send(
        p,
        Packet::PubRel(PubResponse::new(PacketId::new(1).unwrap())),
    );
    sim.send(
        p,
        Packet::Publish(publish("t", b"x", QoS::ExactlyOnce, 3, false)),
    );
    assert_eq!(sim.closed(p), None);
    sim.send(
        p,
        Packet::Publish(publish("t", b"x", QoS::ExactlyOnce, 4, false)),
    );
    assert_eq!(sim.closed(p), Some(CloseReason::PendingQos2Exceeded));
    sim.assert_no_leaks();
}

// ---- Keep-alive counts whole packets; unfinished packets time out (issue 11) ----

/// The start of a PUBLISH announcing 100 bytes that will never all come.
const ENDLESS_PUBLISH: [u8; 2] = [0x30, 100];

#[test]
fn bytes_of_an_unfinished_packet_do_not_postpone_the_keep_alive() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect_with(connect("a", V4, true, 10));
    sim.advance(secs(1));
    sim.send_raw(a, &ENDLESS_PUBLISH);
    // One more byte every second: the packet is never finished.
    for _ in 2..15 {
        sim.advance(secs(1));
        sim.send_raw(a, &[0x00]);
    }
    sim.advance(std::time::Duration::from_millis(999));
    assert_eq!(sim.closed(a), None, "not before 1.5 x keep-alive");
    sim.advance(std::time::Duration::from_millis(1));
    assert_eq!(
        sim.closed(a),
        Some(CloseReason::KeepAliveTimeout),
        "closed 15 s after the last whole packet (the CONNECT)"
    );
    sim.assert_no_leaks();
}

#[test]
fn an_unfinished_packet_times_out_even_with_keep_alive_0() {
    let mut sim = Sim::quiet();
    let (a, _) = sim.connect_with(connect("a", V4, true, 0));
    sim.advance(secs(100));
    assert_eq!(sim.closed(a), None, "keep-alive 0: silence is fine");
    sim.send_raw(a, &ENDLESS_PUBLISH);
    let started = sim.now;
    for _ in 0..29 {
        sim.advance(secs(1));
        sim.send_raw(a, &[0x00]);
    }
    sim.advance(std::time::Duration::from_millis(999));
    assert_eq!(sim.closed(a), None, "not before the packet timeout");
    sim.advance(std::time::Duration::from_millis(1));
    assert_eq!(sim.now, started + secs(30));
    assert_eq!(sim.closed(a), Some(CloseReason::PacketTimeout));
    sim.assert_no_leaks();
}

#[test]
fn a_packet_finished_in_time_clears_its_deadline_and_whole_packets_keep_alive() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        limits: Limits {
            packet_timeout: secs(5),
            ..Limits::default()
        },
        ..Config::default()
    });
    let (a, _) = sim.connect_with(connect("a", V4, true, 10));
    // A PINGREQ in two halves, 4 s apart: within the packet timeout.
    for _ in 0..10 {
        sim.advance(secs(2));
        sim.send_raw(a, &[0xC0]);
        sim.advance(secs(4));
        sim.send_raw(a, &[0x00]);
        assert_eq!(sim.recv(a), Some(Packet::PingResp));
    }
    assert_eq!(sim.closed(a), None, "60 s of whole packets");
    // Half a PINGREQ, then nothing: the packet timeout (5 s) comes first.
    sim.send_raw(a, &[0xC0]);
    sim.advance(secs(4));
    assert_eq!(sim.closed(a), None);
    sim.advance(secs(1));
    assert_eq!(sim.closed(a), Some(CloseReason::PacketTimeout));
    sim.assert_no_leaks();
}

// ---- Sessions belong to an identity (issue 11) ----

use roost_core::broker::{Authentication, Broker, ConnInfo, Recovered, SessionOwner};

/// alice and bob with passwords; anonymous clients allowed.
fn with_users(share: bool, persistence: bool) -> Sim {
    Sim::new(users_config(share, persistence))
}

fn users_config(share: bool, persistence: bool) -> Config {
    Config {
        sys_interval: None,
        persistence,
        share_sessions_across_identities: share,
        authentication: Authentication::Static {
            allow_anonymous: true,
            users: vec![
                (
                    roost_core::MqttStr::from_static("alice"),
                    bytes::Bytes::from_static(b"a-pw"),
                ),
                (
                    roost_core::MqttStr::from_static("bob"),
                    bytes::Bytes::from_static(b"b-pw"),
                ),
            ],
        },
        ..Config::default()
    }
}

/// A persistent-session CONNECT with client id `id` as `user` (or
/// anonymous).
fn as_user(id: &str, user: Option<&str>) -> Connect {
    let mut c = connect(id, V4, false, 0);
    if let Some(user) = user {
        c.username = Some(roost_core::MqttStr::copy_from_str(user).unwrap());
        c.password = Some(bytes::Bytes::from(format!("{}-pw", &user[..1])));
    }
    c
}

fn class(auth_class: u16) -> ConnInfo {
    ConnInfo {
        auth_class,
        ..ConnInfo::default()
    }
}

/// alice (class 1) has a session with `sensors/#`, is offline, and one
/// message waits for her.
fn alice_with_a_queued_message(sim: &mut Sim) {
    let (a, ack) = sim.connect_on(as_user("alice", Some("alice")), class(1));
    assert_eq!(ack.unwrap().reason, ReasonCode::Success);
    sim.subscribe(a, 1, &[("sensors/#", QoS::AtLeastOnce)]);
    sim.disconnect(a);
    let (p, _) = sim.connect("publisher", V4, true);
    sim.publish(p, "sensors/temp", b"21", QoS::AtLeastOnce, 1, false);
    sim.disconnect(p);
    assert_eq!(sim.broker.queued_count("alice"), 1);
}

/// Publishes a live message on alice's topic.
fn publish_live(sim: &mut Sim) {
    let (p, _) = sim.connect("publisher", V4, true);
    sim.publish(p, "sensors/temp", b"22", QoS::AtLeastOnce, 1, false);
    sim.disconnect(p);
}

#[test]
fn another_user_with_the_same_client_id_gets_a_fresh_session() {
    let mut sim = with_users(false, false);
    alice_with_a_queued_message(&mut sim);
    let (b, ack) = sim.connect_on(as_user("alice", Some("bob")), class(1));
    let ack = ack.unwrap();
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(!ack.session_present, "bob does not get alice's session");
    assert!(sim.publishes(b).is_empty(), "nor her queued message");
    publish_live(&mut sim);
    assert!(sim.publishes(b).is_empty(), "nor her subscriptions");
    sim.disconnect(b);
    // alice's session is gone: she starts afresh too.
    let (a, ack) = sim.connect_on(as_user("alice", Some("alice")), class(1));
    assert!(!ack.unwrap().session_present);
    assert!(sim.publishes(a).is_empty());
}

#[test]
fn another_identity_takes_over_a_live_connection_but_not_the_session() {
    let mut sim = with_users(false, false);
    let (a, _) = sim.connect_on(as_user("alice", Some("alice")), class(1));
    sim.subscribe(a, 1, &[("sensors/#", QoS::AtLeastOnce)]);
    let (b, ack) = sim.connect_on(as_user("alice", Some("bob")), class(1));
    assert!(!ack.unwrap().session_present);
    assert_eq!(sim.closed(a), Some(CloseReason::SessionTakenOver));
    publish_live(&mut sim);
    assert!(sim.publishes(b).is_empty());
}

#[test]
fn an_anonymous_client_on_another_class_gets_none_of_alices_messages() {
    let mut sim = with_users(false, false);
    alice_with_a_queued_message(&mut sim);
    let (anon, ack) = sim.connect_on(as_user("alice", None), class(0));
    let ack = ack.unwrap();
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(!ack.session_present);
    assert!(sim.publishes(anon).is_empty(), "no queued message");
    publish_live(&mut sim);
    assert!(sim.publishes(anon).is_empty(), "no live message");
}

#[test]
fn the_same_user_on_another_class_gets_a_fresh_session() {
    let mut sim = with_users(false, false);
    alice_with_a_queued_message(&mut sim);
    let (a, ack) = sim.connect_on(as_user("alice", Some("alice")), class(2));
    assert!(!ack.unwrap().session_present);
    assert!(sim.publishes(a).is_empty());
}

#[test]
fn the_same_identity_resumes_its_session() {
    let mut sim = with_users(false, false);
    alice_with_a_queued_message(&mut sim);
    let (a, ack) = sim.connect_on(as_user("alice", Some("alice")), class(1));
    assert!(ack.unwrap().session_present);
    let got = sim.publishes(a);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"21");
}

#[test]
fn sharing_sessions_across_identities_restores_the_old_behaviour() {
    let mut sim = with_users(true, false);
    alice_with_a_queued_message(&mut sim);
    let (b, ack) = sim.connect_on(as_user("alice", Some("bob")), class(1));
    assert!(ack.unwrap().session_present);
    assert_eq!(sim.publishes(b).len(), 1);
}

/// A broker restored from `recovered`, with the same users.
fn restored(share: bool, recovered: Recovered) -> Sim {
    let mut sim = with_users(share, true);
    sim.broker = Broker::restore(users_config(share, true), sim.now, recovered);
    sim
}

#[test]
fn the_owner_of_a_session_survives_a_restart() {
    let mut sim = with_users(false, true);
    alice_with_a_queued_message(&mut sim);
    let recovered = sim.replayed();
    assert_eq!(recovered, sim.broker.durable_state());
    let owner = recovered.sessions[0].owner.clone();
    assert_eq!(
        owner,
        Some(SessionOwner {
            class: 1,
            username: Some(roost_core::MqttStr::from_static("alice")),
        })
    );

    let mut sim = restored(false, recovered.clone());
    let (b, ack) = sim.connect_on(as_user("alice", Some("bob")), class(1));
    assert!(
        !ack.unwrap().session_present,
        "bob: fresh session after a restart too"
    );
    assert!(sim.publishes(b).is_empty());

    let mut sim = restored(false, recovered);
    let (a, ack) = sim.connect_on(as_user("alice", Some("alice")), class(1));
    assert!(ack.unwrap().session_present, "alice resumes hers");
    assert_eq!(sim.publishes(a).len(), 1);
}

#[test]
fn a_restored_session_of_unknown_owner_is_resumed_by_no_one() {
    let mut sim = with_users(false, true);
    alice_with_a_queued_message(&mut sim);
    let mut recovered = sim.replayed();
    // As stored before owners were recorded.
    recovered.sessions[0].owner = None;

    for (user, info) in [(Some("alice"), class(1)), (None, class(0))] {
        let mut sim = restored(false, recovered.clone());
        let (a, ack) = sim.connect_on(as_user("alice", user), info);
        assert!(!ack.unwrap().session_present, "{user:?}");
        assert!(sim.publishes(a).is_empty());
    }

    // Sharing on: anyone resumes it, and becomes its owner.
    let mut sim = restored(true, recovered);
    let (a, ack) = sim.connect_on(as_user("alice", Some("alice")), class(1));
    assert!(ack.unwrap().session_present);
    assert_eq!(sim.publishes(a).len(), 1);
    let owner = sim.broker.durable_state().sessions[0].owner.clone();
    assert_eq!(owner.map(|o| o.class), Some(1));
}
