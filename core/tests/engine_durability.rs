//! Durability: storage actions, acknowledgements that wait for them, and a
//! broker rebuilt from what they stored.

mod support;

use roost_core::broker::{Broker, Config, Recovered, StoreOp};
use roost_core::codec::*;
use roost_core::topic::TopicFilter;
use support::*;

const V4: Protocol = Protocol::V3_1_1;
const V5: Protocol = Protocol::V5;

fn durable() -> Sim {
    Sim::new(Config {
        sys_interval: None,
        persistence: true,
        ..Config::default()
    })
}

fn acks(sim: &mut Sim, id: roost_core::broker::ConnId) -> Vec<Packet> {
    sim.recv_all(id)
        .into_iter()
        .filter(|p| {
            matches!(
                p,
                Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)
            )
        })
        .collect()
}

#[test]
fn puback_waits_until_the_message_is_durable() {
    let mut sim = durable();
    sim.auto_confirm = false;
    let (s, _) = sim.connect("keeper", V4, false);
    sim.subscribe(s, 1, &[("t", QoS::AtLeastOnce)]);
    sim.confirm_all();
    sim.disconnect(s);
    sim.confirm_all();
    let (p, _) = sim.connect("p", V4, true);
    sim.send(
        p,
        Packet::Publish(publish("t", b"x", QoS::AtLeastOnce, 1, false)),
    );
    assert!(
        acks(&mut sim, p).is_empty(),
        "no PUBACK before the store confirms"
    );
    assert!(
        sim.stored
            .iter()
            .any(|op| matches!(op, StoreOp::MessagePut { client_id, .. } if client_id == "keeper")),
        "the message queued for the offline session is stored"
    );
    sim.confirm_all();
    assert_eq!(acks(&mut sim, p).len(), 1);
}

#[test]
fn pubrec_and_pubcomp_wait_for_the_incoming_identifier_to_be_durable() {
    let mut sim = durable();
    sim.auto_confirm = false;
    let (p, _) = sim.connect("p", V4, false);
    sim.confirm_all();
    sim.send(
        p,
        Packet::Publish(publish("t", b"x", QoS::ExactlyOnce, 9, false)),
    );
    assert!(acks(&mut sim, p).is_empty());
    sim.confirm_all();
    assert!(matches!(acks(&mut sim, p)[..], [Packet::PubRec(_)]));
    sim.send(
        p,
        Packet::PubRel(PubResponse::new(PacketId::new(9).unwrap())),
    );
    assert!(
        acks(&mut sim, p).is_empty(),
        "PUBCOMP waits for the identifier's release to be stored"
    );
    sim.confirm_all();
    assert!(matches!(acks(&mut sim, p)[..], [Packet::PubComp(_)]));
}

#[test]
fn held_acknowledgements_keep_their_order() {
    let mut sim = durable();
    sim.auto_confirm = false;
    let (s, _) = sim.connect("keeper", V4, false);
    sim.subscribe(s, 1, &[("stored", QoS::AtLeastOnce)]);
    sim.disconnect(s);
    sim.confirm_all();
    let (p, _) = sim.connect("p", V4, true);
    // The first needs the store, the second does not: it still goes second.
    sim.send(
        p,
        Packet::Publish(publish("stored", b"1", QoS::AtLeastOnce, 1, false)),
    );
    sim.send(
        p,
        Packet::Publish(publish("nobody", b"2", QoS::AtLeastOnce, 2, false)),
    );
    assert!(acks(&mut sim, p).is_empty());
    sim.confirm_all();
    let ids: Vec<u16> = acks(&mut sim, p)
        .iter()
        .map(|a| match a {
            Packet::PubAck(r) => r.packet_id.get(),
            _ => 0,
        })
        .collect();
    assert_eq!(ids, [1, 2]);
}

#[test]
fn clean_sessions_and_qos0_never_touch_the_store() {
    let mut sim = durable();
    let (s, _) = sim.connect("clean", V4, true);
    sim.subscribe(s, 1, &[("t", QoS::ExactlyOnce)]);
    let (p, _) = sim.connect("p", V4, true);
    sim.publish(p, "t", b"1", QoS::AtLeastOnce, 1, false);
    sim.publish(p, "t", b"2", QoS::AtMostOnce, 2, false);
    let got = sim.publishes(s);
    sim.ack_all(s, &got);
    assert!(sim.stored.is_empty(), "stored: {:?}", sim.stored);
}

/// A scenario that touches every kind of durable state, with the storage
/// operations confirmed at once.
fn busy_scenario(sim: &mut Sim) {
    let (a, _) = sim.connect("a", V4, false);
    sim.subscribe(
        a,
        1,
        &[("q/#", QoS::ExactlyOnce), ("gone", QoS::AtLeastOnce)],
    );
    sim.send(
        a,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: PacketId::new(2).unwrap(),
            filters: vec![roost_core::topic::TopicFilter::from_static("gone")],
            properties: Default::default(),
        }),
    );
    let mut c = connect("b", V5, true, 0);
    c.properties.session_expiry_interval = Some(3600);
    let (b, _) = sim.connect_with(c);
    let mut sub = Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        subscriptions: vec![Subscription {
            filter: roost_core::topic::TopicFilter::from_static("q/+"),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
        properties: Default::default(),
    };
    sub.properties.subscription_identifier = core::num::NonZeroU32::new(7);
    sim.subscribe_with(b, sub);
    let (p, _) = sim.connect("p", V4, false);
    // In flight to a (unacknowledged), released to b, queued after.
    sim.publish(p, "q/1", b"one", QoS::ExactlyOnce, 1, false);
    sim.publish(p, "q/2", b"two", QoS::AtLeastOnce, 2, true);
    let to_b = sim.publishes(b);
    sim.ack_all(b, &to_b[..1]);
    sim.disconnect(a);
    sim.publish(p, "q/3", b"three", QoS::AtLeastOnce, 3, false);
    // p leaves an inbound QoS 2 message unreleased.
    sim.send(
        p,
        Packet::Publish(publish("q/4", b"four", QoS::ExactlyOnce, 4, false)),
    );
    sim.publish(p, "r/1", b"retained", QoS::AtMostOnce, 5, true);
    sim.publish(p, "r/2", b"cleared", QoS::AtMostOnce, 6, true);
    sim.publish(p, "r/2", b"", QoS::AtMostOnce, 7, true);
    sim.drop_transport(p);
    // A session that ends is deleted with everything it had.
    let (e, _) = sim.connect("ephemeral", V4, false);
    sim.subscribe(e, 1, &[("q/#", QoS::AtLeastOnce)]);
    sim.disconnect(e);
    let (e, _) = sim.connect("ephemeral", V4, true);
    sim.disconnect(e);
    sim.drop_transport(b);
}

#[test]
fn replaying_the_storage_operations_gives_the_broker_s_durable_state() {
    let mut sim = durable();
    busy_scenario(&mut sim);
    let replayed = sim.replayed();
    assert_eq!(replayed, sim.broker.durable_state());
    let names: Vec<&str> = replayed
        .sessions
        .iter()
        .map(|s| s.client_id.as_str())
        .collect();
    assert_eq!(names, ["a", "b", "p"]);
    assert_eq!(replayed.retained.len(), 2, "q/2 and r/1");
    let a = &replayed.sessions[0];
    assert_eq!(a.subscriptions.len(), 1, "the unsubscribed filter is gone");
    assert_eq!(a.messages.len(), 4, "two in flight, two queued");
    assert!(a.messages[0].sent.is_some() && a.messages[2].sent.is_none());
    assert_eq!(
        replayed.sessions[2].incoming.len(),
        1,
        "p's unreleased QoS 2 id"
    );
}

#[test]
fn a_restored_broker_holds_the_same_state_and_delivers_it() {
    let mut sim = durable();
    busy_scenario(&mut sim);
    let recovered = sim.replayed();
    let config = Config {
        sys_interval: None,
        persistence: true,
        ..Config::default()
    };
    let restored = Broker::restore(config, sim.now, recovered.clone());
    assert_eq!(restored.durable_state(), recovered);

    let mut sim2 = durable();
    sim2.broker = restored;
    // a gets its in-flight messages again (DUP, same ids), then the queue.
    let (a, ack) = sim2.connect("a", V4, false);
    assert!(ack.session_present);
    let got = sim2.publishes(a);
    let payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [&b"one"[..], b"two", b"three", b"four"]);
    assert!(got[0].dup && got[1].dup && !got[2].dup);
    let before: Vec<_> = recovered.sessions[0]
        .messages
        .iter()
        .filter_map(|m| m.sent)
        .map(|s| s.0)
        .collect();
    assert_eq!(got[0].qos.packet_id(), Some(before[0]));
    sim2.ack_all(a, &got);
    // p's unreleased QoS 2 id is still known: a re-sent PUBLISH is not routed again.
    let (p, ack) = sim2.connect("p", V4, false);
    assert!(ack.session_present);
    let mut again = publish("q/4", b"four", QoS::ExactlyOnce, 4, false);
    again.dup = true;
    sim2.send(p, Packet::Publish(again));
    assert!(
        sim2.publishes(a).is_empty(),
        "exactly once across a restart"
    );
    // Retained messages came back.
    let (n, _) = sim2.connect("new", V4, true);
    sim2.subscribe(n, 1, &[("r/#", QoS::AtMostOnce)]);
    assert_eq!(sim2.publishes(n).len(), 1);
    // sim2 started from the restored state: its own operations, applied on
    // top of what was recovered, still describe it exactly.
    let mut expected = recovered.clone();
    for op in &sim2.stored {
        expected.apply(op);
    }
    expected.normalize();
    assert_eq!(expected, sim2.broker.durable_state());
}

#[test]
fn restore_drops_sessions_stored_with_expiry_zero() {
    let mut recovered = Recovered::default();
    recovered.apply(&StoreOp::SessionPut {
        client_id: roost_core::MqttStr::from_static("z"),
        owner: None,
        expiry_interval: 0,
    });
    let b = Broker::restore(
        Config::default(),
        roost_core::broker::Instant::ZERO,
        recovered,
    );
    assert_eq!(b.session_count(), 0);
}

#[test]
fn expiry_changes_are_stored_and_an_ended_session_is_deleted() {
    let mut sim = durable();
    let mut c = connect("x", V5, true, 0);
    c.properties.session_expiry_interval = Some(10);
    let (x, _) = sim.connect_with(c);
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(20);
    sim.send(x, Packet::Disconnect(d));
    assert_eq!(sim.replayed().sessions[0].expiry_interval, 20);
    sim.advance(secs(21));
    assert!(
        sim.replayed().sessions.is_empty(),
        "expired sessions are deleted from the store"
    );
    assert_eq!(sim.replayed(), sim.broker.durable_state());
}

// ---------------------------------------------------------------------------
// When the store fails (a full disk): `handle_store_failed`.

/// An offline stored session subscribed to `t` at QoS 1 (so publishing to
/// `t` needs the store), and a clean publisher of `protocol`.
fn failing(protocol: Protocol) -> (Sim, roost_core::broker::ConnId) {
    let mut sim = durable();
    sim.auto_confirm = false;
    let (s, _) = sim.connect("keeper", V4, false);
    sim.subscribe(s, 1, &[("t", QoS::AtLeastOnce)]);
    sim.disconnect(s);
    sim.confirm_all();
    let (p, _) = sim.connect("p", protocol, true);
    (sim, p)
}

fn reasons(acks: &[Packet]) -> Vec<(u16, ReasonCode)> {
    acks.iter()
        .map(|a| match a {
            Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubComp(r) => {
                (r.packet_id.get(), r.reason)
            }
            other => panic!("not an ack: {other:?}"),
        })
        .collect()
}

#[test]
fn a_failed_batch_answers_mqtt5_qos1_publishers_with_quota_exceeded() {
    let (mut sim, p) = failing(V5);
    sim.send(
        p,
        Packet::Publish(publish("t", b"1", QoS::AtLeastOnce, 1, false)),
    );
    sim.send(
        p,
        Packet::Publish(publish("t", b"2", QoS::AtLeastOnce, 2, false)),
    );
    assert!(acks(&mut sim, p).is_empty());
    sim.fail_all();
    assert_eq!(
        reasons(&acks(&mut sim, p)),
        [
            (1, ReasonCode::QuotaExceeded),
            (2, ReasonCode::QuotaExceeded)
        ]
    );
    assert!(
        sim.closed(p).is_none(),
        "an MQTT 5 publisher stays connected"
    );
    assert_eq!(sim.broker.stats().store_failures, 2);

    // The store works again: the next batch is confirmed as usual.
    sim.send(
        p,
        Packet::Publish(publish("t", b"3", QoS::AtLeastOnce, 1, false)),
    );
    sim.confirm_all();
    assert_eq!(reasons(&acks(&mut sim, p)), [(1, ReasonCode::Success)]);
}

/// Found by the simulator (`roost-sim --qos2-exactly-once`): a PUBREC
/// 0x97 released the identifier of a message that had been routed
/// already, and a publisher whose connection died before the PUBREC
/// reached it sent the message again, which was routed again. Now the
/// publisher is disconnected, the identifier stays in use, and the resend
/// is acknowledged without being routed a second time.
#[test]
fn a_failed_pubrec_keeps_the_identifier_so_the_resend_is_not_routed_twice() {
    let mut sim = durable();
    sim.auto_confirm = false;
    let (s, _) = sim.connect("keeper", V4, false);
    sim.subscribe(s, 1, &[("t", QoS::ExactlyOnce)]);
    sim.disconnect(s);
    sim.confirm_all();
    // A persistent MQTT 5 publisher: its inbound QoS 2 identifiers are stored.
    let persistent = || {
        let mut c = connect("p", V5, false, 0);
        c.properties.session_expiry_interval = Some(3600);
        c
    };
    let (p, ack) = sim.connect_with(persistent());
    assert_eq!(ack.unwrap().reason, ReasonCode::Success);
    sim.send(
        p,
        Packet::Publish(publish("t", b"x", QoS::ExactlyOnce, 7, false)),
    );
    sim.fail_all();
    assert!(acks(&mut sim, p).is_empty(), "no PUBREC 0x97");
    assert_eq!(
        sim.closed(p),
        Some(roost_core::broker::CloseReason::StoreFailed)
    );
    assert_eq!(sim.broker.queued_count("keeper"), 1, "routed once");

    // The client never had a PUBREC: it reconnects and sends it again.
    let (p, ack) = sim.connect_with(persistent());
    assert!(ack.unwrap().session_present);
    let mut again = publish("t", b"x", QoS::ExactlyOnce, 7, false);
    again.dup = true;
    sim.send(p, Packet::Publish(again));
    sim.confirm_all();
    assert_eq!(reasons(&acks(&mut sim, p)), [(7, ReasonCode::Success)]);
    assert_eq!(sim.broker.queued_count("keeper"), 1, "not routed again");
    sim.send(
        p,
        Packet::PubRel(PubResponse::new(PacketId::new(7).unwrap())),
    );
    sim.confirm_all();
    assert_eq!(reasons(&acks(&mut sim, p)), [(7, ReasonCode::Success)]);
}

#[test]
fn a_failed_batch_disconnects_mqtt3_publishers() {
    let (mut sim, p) = failing(V4);
    sim.send(
        p,
        Packet::Publish(publish("t", b"1", QoS::AtLeastOnce, 1, false)),
    );
    sim.fail_all();
    assert!(
        acks(&mut sim, p).is_empty(),
        "MQTT 3 has no negative PUBACK"
    );
    assert_eq!(
        sim.closed(p),
        Some(roost_core::broker::CloseReason::StoreFailed)
    );
    assert_eq!(
        roost_core::broker::CloseReason::StoreFailed.to_string(),
        "the store could not make a message or subscription durable"
    );
}

#[test]
fn batches_fail_in_order_and_later_ones_still_succeed() {
    let (mut sim, p) = failing(V5);
    sim.send(
        p,
        Packet::Publish(publish("t", b"1", QoS::AtLeastOnce, 1, false)),
    );
    sim.send(
        p,
        Packet::Publish(publish("t", b"2", QoS::AtLeastOnce, 2, false)),
    );
    assert_eq!(sim.unconfirmed.len(), 2, "one batch per publish");
    // Only the first batch failed: the second's PUBACK still waits.
    let first = sim.unconfirmed[0];
    sim.fail_first();
    assert_eq!(
        reasons(&acks(&mut sim, p)),
        [(1, ReasonCode::QuotaExceeded)]
    );
    sim.confirm_all();
    assert_eq!(reasons(&acks(&mut sim, p)), [(2, ReasonCode::Success)]);
    // A failure reported again for an id already answered changes nothing.
    sim.broker.handle_store_failed(sim.now, first);
    sim.drain();
    assert!(acks(&mut sim, p).is_empty());
}

#[test]
fn what_was_confirmed_is_not_undone_by_a_later_failure() {
    let (mut sim, p) = failing(V5);
    sim.send(
        p,
        Packet::Publish(publish("t", b"1", QoS::AtLeastOnce, 1, false)),
    );
    sim.confirm_all();
    assert_eq!(reasons(&acks(&mut sim, p)), [(1, ReasonCode::Success)]);
    sim.send(
        p,
        Packet::Publish(publish("t", b"2", QoS::AtLeastOnce, 2, false)),
    );
    sim.fail_all();
    assert_eq!(
        reasons(&acks(&mut sim, p)),
        [(2, ReasonCode::QuotaExceeded)]
    );
    // The confirmed message is still queued for the offline session.
    assert_eq!(sim.broker.queued_count("keeper"), 2);
}

#[test]
fn connack_of_a_new_persistent_session_waits_for_the_store() {
    let mut sim = durable();
    sim.auto_confirm = false;
    let id = sim.open(V5);
    let mut c = connect("new", V5, false, 0);
    c.properties.session_expiry_interval = Some(3600);
    sim.send(id, Packet::Connect(Box::new(c)));
    // Pipelined after CONNECT: its SUBACK must not overtake the CONNACK.
    sim.send(
        id,
        Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            subscriptions: vec![Subscription {
                filter: roost_core::topic::TopicFilter::from_static("t"),
                options: SubscriptionOptions::default(),
            }],
            properties: Default::default(),
        }),
    );
    assert!(
        sim.recv_all(id).is_empty(),
        "nothing before the session is stored"
    );
    sim.confirm_all();
    let got = sim.recv_all(id);
    assert!(
        matches!(&got[..], [Packet::ConnAck(a), Packet::SubAck(_)] if a.reason == ReasonCode::Success),
        "{got:?}"
    );
}

#[test]
fn connack_fails_when_the_new_session_cannot_be_stored() {
    for (protocol, code) in [
        (V5, ReasonCode::QuotaExceeded),
        (V4, ReasonCode::ServerUnavailable),
    ] {
        let mut sim = durable();
        sim.auto_confirm = false;
        let (watcher, _) = sim.connect("watcher", V5, true);
        sim.subscribe(watcher, 1, &[("w", QoS::AtMostOnce)]);
        let id = sim.open(protocol);
        let mut c = connect("new", protocol, false, 0);
        c.properties.session_expiry_interval = (protocol == V5).then_some(3600);
        c.will = Some(will("w", b"gone", QoS::AtMostOnce, false));
        sim.send(id, Packet::Connect(Box::new(c)));
        assert!(sim.recv_all(id).is_empty());
        sim.fail_all();
        let got = sim.recv_all(id);
        assert!(
            matches!(&got[..], [Packet::ConnAck(a)] if a.reason == code && !a.session_present),
            "{protocol:?}: {got:?}"
        );
        assert!(matches!(
            sim.closed(id),
            Some(roost_core::broker::CloseReason::ConnectRefused(r)) if r == code
        ));
        // The session is gone, in memory and (once the store catches up) on
        // disk, and its will was not published.
        assert!(!sim.broker.has_session("new"));
        sim.confirm_all();
        assert!(sim.replayed().sessions.is_empty());
        assert!(sim.publishes(watcher).is_empty(), "the will was published");
        sim.disconnect(watcher);
        sim.assert_no_leaks();
    }
}

#[test]
fn resuming_a_stored_session_does_not_wait() {
    let mut sim = durable();
    sim.auto_confirm = false;
    let (s, _) = sim.connect("keeper", V4, false);
    sim.disconnect(s);
    sim.confirm_all();
    let id = sim.open(V4);
    sim.send(
        id,
        Packet::Connect(Box::new(connect("keeper", V4, false, 0))),
    );
    assert!(
        matches!(sim.recv(id), Some(Packet::ConnAck(a)) if a.session_present),
        "the session was stored already"
    );
}

/// Found by the simulator (`roost-sim --durable-sessions`, 9 seeds of
/// 10,000, the first 885): a persistent session created by a connection
/// that went before its CONNACK (which waited for the store) was resumed by
/// the client's next connection with CONNACK "session present" at once; a
/// crash before the store caught up then lost the session the client had
/// been promised. That CONNACK now waits as a new session's does, and is a
/// refusal if the batch fails.
#[test]
fn resuming_a_session_not_yet_durable_waits_for_the_store() {
    for (protocol, refused) in [
        (V4, ReasonCode::ServerUnavailable),
        (V5, ReasonCode::QuotaExceeded),
    ] {
        for fails in [false, true] {
            let mut sim = durable();
            sim.auto_confirm = false;
            let persistent = || {
                let mut c = connect("keeper", protocol, false, 0);
                c.properties.session_expiry_interval = (protocol == V5).then_some(3600);
                Packet::Connect(Box::new(c))
            };
            let first = sim.open(protocol);
            sim.send(first, persistent());
            assert!(
                sim.recv_all(first).is_empty(),
                "{protocol:?}: CONNACK before the store"
            );
            // The client gives up on it before its CONNACK, and comes back.
            sim.drop_transport(first);
            let second = sim.open(protocol);
            sim.send(second, persistent());
            assert!(
                sim.recv_all(second).is_empty(),
                "{protocol:?}: CONNACK promised a session the store may not have"
            );
            if fails {
                sim.fail_all();
                let got = sim.recv_all(second);
                assert!(
                    matches!(&got[..], [Packet::ConnAck(a)] if a.reason == refused && !a.session_present),
                    "{protocol:?}: {got:?}"
                );
                assert!(!sim.broker.has_session("keeper"), "{protocol:?}");
            } else {
                sim.confirm_all();
                let got = sim.recv_all(second);
                assert!(
                    matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::Success && a.session_present),
                    "{protocol:?}: {got:?}"
                );
                // A third connection resumes a durable session: no wait.
                sim.drop_transport(second);
                let third = sim.open(protocol);
                sim.send(third, persistent());
                assert!(
                    matches!(sim.recv(third), Some(Packet::ConnAck(a)) if a.session_present),
                    "{protocol:?}: the session was durable already"
                );
            }
        }
    }
}

/// Found by the simulator (`roost-sim --durable-sessions`): a SUBACK left
/// before its subscription was durable, and a crash then lost a
/// subscription the client had been promised (and the messages it would
/// have queued). It now waits for the batch that stores it, as UNSUBACK
/// waits for the removal.
#[test]
fn suback_and_unsuback_wait_until_the_store_has_them() {
    let mut sim = durable();
    sim.auto_confirm = false;
    let (c, _) = sim.connect("s", V4, false);
    sim.confirm_all();
    sim.recv_all(c);
    sim.send(c, subscribe_packet(1, "t"));
    assert!(sim.recv_all(c).is_empty(), "SUBACK before the store has it");
    sim.confirm_all();
    assert!(matches!(sim.recv(c), Some(Packet::SubAck(_))));
    sim.send(
        c,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: PacketId::new(2).unwrap(),
            filters: vec![TopicFilter::from_static("t")],
            properties: Default::default(),
        }),
    );
    assert!(
        sim.recv_all(c).is_empty(),
        "UNSUBACK before the store has it"
    );
    sim.confirm_all();
    assert!(matches!(sim.recv(c), Some(Packet::UnsubAck(_))));
}

/// A SUBACK whose batch failed is not sent: the client is disconnected,
/// never told a subscription the store may not have, and subscribes again.
#[test]
fn a_failed_subscription_batch_disconnects_instead_of_acknowledging() {
    let mut sim = durable();
    sim.auto_confirm = false;
    let (c, _) = sim.connect("s", V4, false);
    sim.confirm_all();
    sim.recv_all(c);
    sim.send(c, subscribe_packet(1, "t"));
    sim.fail_all();
    assert!(
        !sim.recv_all(c)
            .iter()
            .any(|p| matches!(p, Packet::SubAck(_))),
        "no SUBACK for a subscription the store failed"
    );
    assert_eq!(
        sim.closed(c),
        Some(roost_core::broker::CloseReason::StoreFailed)
    );
}

/// A session that is not stored has nothing to wait for: its SUBACK is
/// not held behind the store.
#[test]
fn a_clean_session_gets_its_suback_at_once() {
    let mut sim = durable();
    sim.auto_confirm = false;
    let (c, _) = sim.connect("clean", V5, true);
    sim.recv_all(c);
    sim.send(c, subscribe_packet(1, "t"));
    assert!(matches!(sim.recv(c), Some(Packet::SubAck(_))));
}

fn subscribe_packet(pid: u16, filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(pid).unwrap(),
        subscriptions: vec![Subscription {
            filter: TopicFilter::copy_from_str(filter).unwrap(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
        properties: Default::default(),
    })
}

/// A persistent MQTT 5 CONNECT for `client` (expiry one hour), with a
/// Receive Maximum of `window` and a keep-alive of `keep_alive` seconds.
fn persistent5(client: &str, window: u16, keep_alive: u16) -> Packet {
    let mut c = connect(client, V5, false, keep_alive);
    c.properties.session_expiry_interval = Some(3600);
    c.properties.receive_maximum = std::num::NonZeroU16::new(window);
    Packet::Connect(Box::new(c))
}

/// Found by the simulator (`roost-sim --seed 16608 --steps 5000`, 2 seeds
/// in 20,000 at 5,000 steps, with clock jumps): when a failed batch closed
/// a member of a shared subscription, its queued messages moved to another
/// member whose CONNACK still waited for a later batch, and
/// `handle_store_failed` sent them at once, before that CONNACK and before
/// their packet identifiers were durable. A crash then gave one identifier
/// to another message while the client still held it (QoS 2 delivered
/// twice). They now wait behind the CONNACK and for their own batch.
#[test]
fn deliveries_moved_by_a_failed_batch_wait_behind_a_held_connack() {
    let mut sim = durable();
    sim.auto_confirm = false;
    // Member "a" of $share/g/t, one message in flight at a time.
    let a = sim.open(V5);
    sim.send(a, persistent5("a", 1, 0));
    sim.confirm_all();
    assert!(matches!(sim.recv(a), Some(Packet::ConnAck(_))));
    sim.send(a, subscribe_packet(1, "$share/g/t"));
    sim.confirm_all();
    assert!(matches!(sim.recv(a), Some(Packet::SubAck(_))));
    // "b" has a message in flight on its own topic when it goes.
    let b = sim.open(V5);
    sim.send(b, persistent5("b", 10, 0));
    sim.confirm_all();
    sim.send(b, subscribe_packet(1, "bt"));
    sim.confirm_all();
    let (p, _) = sim.connect("p", V5, true);
    sim.send(
        p,
        Packet::Publish(publish("bt", b"b1", QoS::AtLeastOnce, 1, false)),
    );
    sim.confirm_all();
    assert_eq!(sim.publishes(b).len(), 1);
    sim.drop_transport(b);
    for (pid, payload) in [(2, b"m1"), (3, b"m2"), (4, b"m3")] {
        sim.send(
            p,
            Packet::Publish(publish("t", payload, QoS::AtLeastOnce, pid, false)),
        );
    }
    sim.confirm_all();
    assert_eq!(
        sim.publishes(a).len(),
        1,
        "m2 and m3 queue behind a window of 1"
    );
    // Batch X: "a" subscribes again. Batch Y: a message queues for "b".
    sim.send(a, subscribe_packet(2, "other"));
    sim.send(
        p,
        Packet::Publish(publish("bt", b"b2", QoS::AtLeastOnce, 5, false)),
    );
    // "b" comes back and joins the group: what it resumes (b1 again)
    // reflects batch Y, so its CONNACK and all behind it wait for Y.
    let b = sim.open(V5);
    sim.send(b, persistent5("b", 10, 0));
    sim.send(b, subscribe_packet(2, "$share/g/t"));
    assert!(sim.recv_all(b).is_empty());
    // X fails: "a" is disconnected, and its messages move to "b".
    sim.fail_first();
    assert_eq!(
        sim.closed(a),
        Some(roost_core::broker::CloseReason::StoreFailed)
    );
    assert!(
        sim.recv_all(b).is_empty(),
        "nothing goes to b before its CONNACK, nor before its identifiers are durable"
    );
    sim.confirm_all();
    let got = sim.recv_all(b);
    assert!(
        matches!(&got[..1], [Packet::ConnAck(c)] if c.reason == ReasonCode::Success && c.session_present),
        "{got:?}"
    );
    let mut moved: Vec<&[u8]> = got
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(m) if m.topic.as_str() == "t" => Some(&m.payload[..]),
            _ => None,
        })
        .collect();
    moved.sort();
    // (At QoS 1, as subscribed: the one in flight moves too.)
    assert_eq!(moved, [b"m1", b"m2", b"m3"]);
}

/// The server sends nothing before CONNACK [MQTT-3.2.0-1]: a connection
/// whose CONNACK waits for the store (a new persistent session; a resumed
/// one not yet durable) and that is closed meanwhile (its keep-alive ran
/// out, which a clock jump makes likely) gets no DISCONNECT, just the close.
/// (The simulator saw DISCONNECT 0x8D arrive with no CONNACK before it.)
#[test]
fn a_connection_closed_before_its_connack_left_gets_no_disconnect() {
    let mut sim = durable();
    sim.auto_confirm = false;
    let id = sim.open(V5);
    sim.send(id, persistent5("new", 10, 10));
    sim.advance(secs(16));
    assert_eq!(
        sim.closed(id),
        Some(roost_core::broker::CloseReason::KeepAliveTimeout)
    );
    assert!(sim.recv_all(id).is_empty(), "a packet before CONNACK");
    // Once the CONNACK left, a close still says why.
    sim.confirm_all();
    let id = sim.open(V5);
    sim.send(id, persistent5("other", 10, 10));
    sim.confirm_all();
    assert!(matches!(sim.recv(id), Some(Packet::ConnAck(_))));
    sim.advance(secs(16));
    assert!(
        matches!(&sim.recv_all(id)[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::KeepAliveTimeout)
    );
}
