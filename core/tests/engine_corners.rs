//! Protocol corner cases where roost once differed from the specification or
//! from Mosquitto 2.0 on the wire (issue 13), each in the in-process harness
//! on a virtual clock: wills on reconnect and takeover, disallowed code
//! points, acknowledgements of the wrong kind, failed PUBRECs, ill-formed
//! topic filters.

mod support;

use roost_core::MqttStr;
use roost_core::broker::{CloseReason, Config, ConnId};
use roost_core::codec::*;
use roost_core::topic::TopicFilter;
use support::*;

const V5: Protocol = Protocol::V5;
const V4: Protocol = Protocol::V3_1_1;

fn sim_with(change: impl FnOnce(&mut Config)) -> Sim {
    let mut config = Config {
        sys_interval: None,
        ..Config::default()
    };
    change(&mut config);
    Sim::new(config)
}

/// A CONNECT with a will on `topic`; MQTT 5 ones carry `expiry` and the
/// will `delay`.
fn with_will(
    client_id: &str,
    protocol: Protocol,
    clean: bool,
    expiry: u32,
    delay: u32,
    topic: &str,
) -> Connect {
    let mut c = connect(client_id, protocol, clean, 0);
    let mut w = will(topic, b"gone", QoS::AtMostOnce, false);
    if protocol == V5 {
        c.properties.session_expiry_interval = Some(expiry);
        w.properties.will_delay_interval = Some(delay);
    }
    c.will = Some(w);
    c
}

fn join(sim: &mut Sim, connect: Connect) -> (ConnId, ConnAck) {
    let (id, ack) = sim.connect_with(connect);
    let ack = ack.expect("no CONNACK");
    assert_eq!(ack.reason, ReasonCode::Success, "CONNACK refused: {ack:?}");
    (id, ack)
}

/// A watcher subscribed to `topic` at QoS 0.
fn watcher(sim: &mut Sim, topic: &str) -> ConnId {
    let (w, _) = sim.connect("watch", V4, true);
    sim.subscribe(w, 1, &[(topic, QoS::AtMostOnce)]);
    w
}

// ---- 1. A reconnect within the will delay cancels the will ----

#[test]
fn reconnect_with_clean_start_within_the_will_delay_cancels_the_will() {
    let mut sim = Sim::quiet();
    let w = watcher(&mut sim, "status");
    let (a, _) = join(&mut sim, with_will("a", V5, true, 30, 3, "status"));
    sim.drop_transport(a);
    sim.advance(secs(1));
    // [MQTT-3.1.2-8]: "a new Network Connection for the ClientID is opened
    // before the Will Delay Interval has elapsed": whatever Clean Start says.
    let mut again = connect("a", V5, true, 0);
    again.properties.session_expiry_interval = Some(30);
    let (a, ack) = join(&mut sim, again);
    assert!(!ack.session_present);
    assert!(
        sim.publishes(w).is_empty(),
        "ending the old session must not release the will"
    );
    sim.advance(secs(10));
    assert!(sim.publishes(w).is_empty(), "nor may the delay's end");
    sim.disconnect(a);
    sim.advance(secs(31));
    sim.disconnect(w);
    sim.assert_no_leaks();
}

#[test]
fn will_still_fires_after_its_delay_without_a_reconnect() {
    let mut sim = Sim::quiet();
    let w = watcher(&mut sim, "status");
    let (a, _) = join(&mut sim, with_will("a", V5, true, 30, 3, "status"));
    sim.drop_transport(a);
    sim.advance(secs(2));
    assert!(sim.publishes(w).is_empty());
    sim.advance(secs(2));
    assert_eq!(sim.publishes(w).len(), 1, "the delay ended");
    sim.advance(secs(30));
    sim.disconnect(w);
    sim.assert_no_leaks();
}

// ---- 2. A takeover that continues the session keeps the will back ----

/// Connects `old` (with a will), takes it over with `new`, and returns how
/// many wills the watcher saw and whether the session was present.
fn takeover(protocol: Protocol, old_clean: bool, new_clean: bool) -> (usize, bool) {
    let mut sim = Sim::quiet();
    let w = watcher(&mut sim, "status");
    let (old, _) = join(
        &mut sim,
        with_will(
            "dup",
            protocol,
            old_clean,
            if old_clean { 0 } else { 300 },
            0,
            "status",
        ),
    );
    let mut c = connect("dup", protocol, new_clean, 0);
    if protocol == V5 {
        c.properties.session_expiry_interval = Some(300);
    }
    let (new, ack) = join(&mut sim, c);
    assert_eq!(sim.closed(old), Some(CloseReason::SessionTakenOver));
    let wills = sim.publishes(w).len();
    sim.disconnect(new);
    (wills, ack.session_present)
}

#[test]
fn takeover_of_a_persistent_session_does_not_publish_the_will() {
    for protocol in [V4, V5] {
        assert_eq!(
            takeover(protocol, false, false),
            (0, true),
            "{protocol:?}: the session simply continues"
        );
    }
}

#[test]
fn takeover_that_ends_the_session_publishes_the_will() {
    for protocol in [V4, V5] {
        assert_eq!(takeover(protocol, false, true), (1, false), "{protocol:?}");
        assert_eq!(takeover(protocol, true, false), (1, false), "{protocol:?}");
        assert_eq!(takeover(protocol, true, true), (1, false), "{protocol:?}");
    }
}

#[test]
fn takeover_cancels_a_delayed_will() {
    let mut sim = Sim::quiet();
    let w = watcher(&mut sim, "status");
    let (old, _) = join(&mut sim, with_will("dup", V5, false, 300, 5, "status"));
    let (new, _) = join(&mut sim, connect("dup", V5, true, 0));
    assert_eq!(sim.closed(old), Some(CloseReason::SessionTakenOver));
    sim.advance(secs(10));
    assert!(sim.publishes(w).is_empty(), "a new connection came in time");
    sim.disconnect(new);
    sim.disconnect(w);
    sim.assert_no_leaks();
}

// ---- 4. Disallowed code points (section 1.5.4) ----

const DISALLOWED: [&str; 6] = ["\u{1}", "\u{1f}", "\u{7f}", "\u{85}", "\u{9f}", "\u{fdd0}"];

fn name(text: &str) -> MqttStr {
    MqttStr::copy_from_str(text).unwrap()
}

/// Each way a client can hand the broker a string with `bad` in it.
fn bad_connects(bad: &str, protocol: Protocol) -> Vec<(&'static str, Connect)> {
    let mut id = connect(&format!("a{bad}"), protocol, true, 0);
    id.client_id = name(&format!("a{bad}"));
    let mut user = connect("a", protocol, true, 0);
    user.username = Some(name(&format!("u{bad}")));
    let mut will_topic = connect("a", protocol, true, 0);
    will_topic.will = Some(will(&format!("w{bad}"), b"x", QoS::AtMostOnce, false));
    let mut out = vec![
        ("client id", id),
        ("user name", user),
        ("will topic", will_topic),
    ];
    if protocol == V5 {
        let mut prop = connect("a", protocol, true, 0);
        prop.properties.user_properties = vec![UserProperty {
            name: name("k"),
            value: name(&format!("v{bad}")),
        }];
        out.push(("user property", prop));
    }
    out
}

#[test]
fn disallowed_code_points_in_connect_are_malformed() {
    for bad in DISALLOWED {
        for protocol in [V4, V5] {
            for (what, c) in bad_connects(bad, protocol) {
                let mut sim = Sim::quiet();
                let (id, ack) = sim.connect_with(c);
                let closed = sim.closed(id);
                assert!(
                    matches!(
                        closed,
                        Some(CloseReason::Decode(_) | CloseReason::ConnectRefused(_))
                    ),
                    "{protocol:?} {what} {bad:?}: closed as {closed:?}"
                );
                match protocol {
                    // MQTT 3 has no return code for a malformed CONNECT.
                    V4 => assert!(ack.is_none(), "{what} {bad:?}: {ack:?}"),
                    _ => assert_eq!(
                        ack.map(|a| a.reason),
                        Some(ReasonCode::MalformedPacket),
                        "{what} {bad:?}"
                    ),
                }
                sim.assert_no_leaks();
            }
        }
    }
}

/// The packets after CONNECT that carry strings: PUBLISH topic, SUBSCRIBE
/// and UNSUBSCRIBE filters, and (MQTT 5) a PUBLISH property.
fn bad_packets(bad: &str, protocol: Protocol) -> Vec<(&'static str, Packet)> {
    let filter = TopicFilter::copy_from_str(&format!("f{bad}/#")).unwrap();
    let mut out = vec![
        (
            "topic",
            Packet::Publish(publish(
                &format!("t{bad}"),
                b"x",
                QoS::AtLeastOnce,
                1,
                false,
            )),
        ),
        (
            "filter",
            Packet::Subscribe(Subscribe {
                packet_id: PacketId::new(2).unwrap(),
                subscriptions: vec![Subscription {
                    filter: filter.clone(),
                    options: SubscriptionOptions::default(),
                }],
                properties: Default::default(),
            }),
        ),
        (
            "unsubscribe filter",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: PacketId::new(3).unwrap(),
                filters: vec![filter],
                properties: Default::default(),
            }),
        ),
    ];
    if protocol == V5 {
        let mut p = publish("t", b"x", QoS::AtLeastOnce, 4, false);
        p.properties.content_type = Some(name(&format!("text/{bad}")));
        out.push(("content type", Packet::Publish(p)));
    }
    out
}

#[test]
fn disallowed_code_points_after_connect_close_with_malformed_packet() {
    for bad in DISALLOWED {
        for protocol in [V4, V5] {
            for (what, packet) in bad_packets(bad, protocol) {
                let mut sim = Sim::quiet();
                let (a, _) = sim.connect("a", protocol, true);
                sim.send(a, packet);
                let sent = sim.recv_all(a);
                assert!(
                    matches!(sim.closed(a), Some(CloseReason::Decode(_))),
                    "{protocol:?} {what} {bad:?}: {:?}",
                    sim.closed(a)
                );
                match protocol {
                    V4 => assert!(sent.is_empty(), "{what} {bad:?}: {sent:?}"),
                    _ => assert!(
                        matches!(&sent[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::MalformedPacket),
                        "{what} {bad:?}: {sent:?}"
                    ),
                }
                sim.assert_no_leaks();
            }
        }
    }
}

#[test]
fn other_code_points_are_accepted() {
    // Printable text, including beyond ASCII, and the characters right next
    // to the disallowed ranges.
    let mut sim = Sim::quiet();
    let topic = "\u{20}~\u{a0}é€\u{fdcf}\u{fdf0}\u{fffd}😀";
    let (a, _) = sim.connect(&format!("id{topic}"), V5, true);
    sim.subscribe(a, 1, &[(topic, QoS::AtMostOnce)]);
    sim.publish(a, topic, b"x", QoS::AtLeastOnce, 2, false);
    assert_eq!(sim.publishes(a).len(), 1);
    assert!(sim.closed(a).is_none());
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn disallowed_code_points_pass_when_the_switch_allows_them() {
    let mut sim = sim_with(|c| c.allow_disallowed_code_points = true);
    let mut c = connect("a\u{1}", V5, true, 0);
    c.username = Some(name("u\u{7f}"));
    c.will = Some(will("w\u{85}", b"x", QoS::AtMostOnce, false));
    let (a, _) = join(&mut sim, c);
    sim.subscribe(a, 1, &[("t\u{1f}", QoS::AtMostOnce)]);
    sim.publish(a, "t\u{1f}", b"x", QoS::AtLeastOnce, 2, false);
    assert_eq!(sim.publishes(a).len(), 1);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

// ---- 5. Acknowledgements of the wrong kind ----

/// A subscriber `s` that has just been sent one PUBLISH at `qos`; returns
/// it and the PUBLISH's packet id.
fn delivered(sim: &mut Sim, protocol: Protocol, qos: QoS) -> (ConnId, PacketId) {
    let (s, _) = sim.connect("s", protocol, true);
    sim.subscribe(s, 1, &[("t", qos)]);
    let (p, _) = sim.connect("p", V4, true);
    sim.publish(p, "t", b"x", qos, 1, false);
    sim.disconnect(p);
    let got = sim.publishes(s);
    assert_eq!(got.len(), 1);
    let pid = got[0].qos.packet_id().expect("a packet id");
    (s, pid)
}

fn assert_protocol_error(sim: &mut Sim, id: ConnId, protocol: Protocol, what: &str) {
    assert_eq!(
        sim.closed(id),
        Some(CloseReason::Protocol(ReasonCode::ProtocolError)),
        "{protocol:?} {what}"
    );
    let sent = sim.recv_all(id);
    match protocol {
        V4 => assert!(sent.is_empty(), "{what}: {sent:?}"),
        _ => assert!(
            matches!(&sent[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::ProtocolError),
            "{what}: {sent:?}"
        ),
    }
}

#[test]
fn acknowledgements_of_the_wrong_kind_are_protocol_errors() {
    type Ack = fn(PubResponse) -> Packet;
    let cases: [(&str, QoS, bool, Ack); 5] = [
        ("PUBREC for QoS 1", QoS::AtLeastOnce, false, Packet::PubRec),
        (
            "PUBCOMP for QoS 1",
            QoS::AtLeastOnce,
            false,
            Packet::PubComp,
        ),
        ("PUBACK for QoS 2", QoS::ExactlyOnce, false, Packet::PubAck),
        (
            "PUBCOMP before PUBREC",
            QoS::ExactlyOnce,
            false,
            Packet::PubComp,
        ),
        (
            "PUBACK after PUBREC",
            QoS::ExactlyOnce,
            true,
            Packet::PubAck,
        ),
    ];
    for protocol in [V4, V5] {
        for (what, qos, received, wrong) in cases {
            let mut sim = Sim::quiet();
            let (s, pid) = delivered(&mut sim, protocol, qos);
            if received {
                sim.send(s, Packet::PubRec(PubResponse::new(pid)));
                assert!(matches!(sim.take_ack(s, pid), Packet::PubRel(_)));
            }
            sim.send(s, wrong(PubResponse::new(pid)));
            assert_protocol_error(&mut sim, s, protocol, what);
            sim.assert_no_leaks();
        }
    }
}

#[test]
fn acknowledgements_of_the_right_kind_still_complete() {
    for protocol in [V4, V5] {
        let mut sim = Sim::quiet();
        let (s, pid) = delivered(&mut sim, protocol, QoS::ExactlyOnce);
        sim.send(s, Packet::PubRec(PubResponse::new(pid)));
        assert!(matches!(sim.take_ack(s, pid), Packet::PubRel(_)));
        // A repeated PUBREC is answered again, not an error.
        sim.send(s, Packet::PubRec(PubResponse::new(pid)));
        assert!(matches!(sim.take_ack(s, pid), Packet::PubRel(_)));
        sim.send(s, Packet::PubComp(PubResponse::new(pid)));
        assert_eq!(sim.broker.inflight_count("s"), 0);
        // Acknowledgements for identifiers not in use are not errors.
        let unknown = PacketId::new(999).unwrap();
        sim.send(s, Packet::PubAck(PubResponse::new(unknown)));
        sim.send(s, Packet::PubComp(PubResponse::new(unknown)));
        assert!(sim.closed(s).is_none(), "{protocol:?}");
        sim.disconnect(s);
        sim.assert_no_leaks();
    }
}

// ---- 6. A failed PUBREC ends the flow without PUBREL ----

fn failed_pubrec(pid: PacketId) -> Packet {
    let mut r = PubResponse::new(pid);
    r.reason = ReasonCode::UnspecifiedError;
    Packet::PubRec(r)
}

#[test]
fn failed_pubrec_gets_no_pubrel() {
    let mut sim = Sim::quiet();
    let (s, pid) = delivered(&mut sim, V5, QoS::ExactlyOnce);
    sim.send(s, failed_pubrec(pid));
    assert!(sim.recv_all(s).is_empty(), "no PUBREL [MQTT-4.3.3]");
    assert_eq!(sim.broker.inflight_count("s"), 0, "the flow ended");
    // Also for an identifier not in use: nothing to release.
    sim.send(s, failed_pubrec(PacketId::new(999).unwrap()));
    assert!(sim.recv_all(s).is_empty(), "no PUBREL 0x92 either");
    assert!(sim.closed(s).is_none());
    sim.disconnect(s);
    sim.assert_no_leaks();
}

// ---- 7. Ill-formed topic filters are malformed packets ----

/// SUBSCRIBE (or UNSUBSCRIBE) of one `filter`, as raw MQTT 5 bytes.
fn raw_filter_packet(filter: &[u8], unsubscribe: bool) -> Vec<u8> {
    let mut body = vec![0x00, 0x01, 0x00];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter);
    if !unsubscribe {
        body.push(0x00);
    }
    let mut out = vec![if unsubscribe { 0xA2 } else { 0x82 }, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

#[test]
fn ill_formed_filters_close_with_malformed_packet() {
    for filter in [&b""[..], b"a/#/b", b"a#", b"a/b+", b"#/"] {
        for unsubscribe in [false, true] {
            let mut sim = Sim::quiet();
            let (a, _) = sim.connect("a", V5, true);
            sim.send_raw(a, &raw_filter_packet(filter, unsubscribe));
            let sent = sim.recv_all(a);
            assert!(
                matches!(&sent[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::MalformedPacket),
                "{filter:?} (unsubscribe: {unsubscribe}): {sent:?}"
            );
            assert!(matches!(sim.closed(a), Some(CloseReason::Decode(_))));
            sim.assert_no_leaks();
        }
    }
}
