//! Authorization decided by the embedding program: a policy answers
//! `Verdict::Defer`, the engine emits `Action::Authorize`, holds the packet
//! and the connection's later input, and carries on at `resolve_authorize`.

mod support;

use roost_core::broker::{
    AccessPolicy, AuthorizeRequest, ClientRef, CloseReason, Config, DeferAll, Operation,
    PublishDecision, SubscribeDecision, Verdict,
};
use roost_core::codec::*;
use roost_core::topic::{TopicFilter, TopicName};
use support::*;

const V4: Protocol = Protocol::V3_1_1;
const V5: Protocol = Protocol::V5;

fn sim_with(policy: impl AccessPolicy + 'static) -> Sim {
    Sim::new(Config {
        sys_interval: None,
        authorization: Box::new(policy),
        ..Config::default()
    })
}

fn deferred() -> Sim {
    sim_with(DeferAll)
}

/// Answers inline for topics and filters under `fast/` (allowing them) and
/// `no/` (refusing them); defers everything else.
struct Mixed;

impl AccessPolicy for Mixed {
    fn authorize_publish(&self, _: ClientRef<'_>, topic: &TopicName) -> Verdict<PublishDecision> {
        match topic.as_str() {
            t if t.starts_with("fast/") => Verdict::Decided(PublishDecision::Allow),
            t if t.starts_with("no/") => {
                Verdict::Decided(PublishDecision::Deny(ReasonCode::NotAuthorized))
            }
            _ => Verdict::Defer,
        }
    }

    fn authorize_subscribe(
        &self,
        _: ClientRef<'_>,
        filter: &TopicFilter,
        qos: QoS,
    ) -> Verdict<SubscribeDecision> {
        match filter.as_str() {
            f if f.starts_with("fast/") => Verdict::Decided(SubscribeDecision::Grant(qos)),
            f if f.starts_with("no/") => {
                Verdict::Decided(SubscribeDecision::Deny(ReasonCode::NotAuthorized))
            }
            _ => Verdict::Defer,
        }
    }
}

/// The next authorization request, which must exist.
fn request(sim: &mut Sim) -> AuthorizeRequest {
    sim.authorize_requests
        .pop_front()
        .expect("an authorization request")
}

fn send_publish(sim: &mut Sim, id: roost_core::broker::ConnId, topic: &str, qos: QoS, pid: u16) {
    sim.send(id, Packet::Publish(publish(topic, b"x", qos, pid, false)));
}

fn send_subscribe(
    sim: &mut Sim,
    id: roost_core::broker::ConnId,
    pid: u16,
    filters: &[(&str, QoS)],
) {
    let subscriptions = filters
        .iter()
        .map(|(f, q)| Subscription {
            filter: TopicFilter::copy_from_str(f).unwrap(),
            options: SubscriptionOptions {
                qos: *q,
                ..Default::default()
            },
        })
        .collect();
    sim.send(
        id,
        Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(pid).unwrap(),
            subscriptions,
            properties: Default::default(),
        }),
    );
}

fn suback(sim: &mut Sim, id: roost_core::broker::ConnId) -> SubAck {
    match sim.recv(id) {
        Some(Packet::SubAck(ack)) => ack,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn puback(sim: &mut Sim, id: roost_core::broker::ConnId) -> PubResponse {
    match sim.recv(id) {
        Some(Packet::PubAck(ack)) => ack,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// A subscriber on `#` that takes inline decisions only.
fn watcher(sim: &mut Sim) -> roost_core::broker::ConnId {
    let (w, _) = sim.connect("watcher", V4, true);
    send_subscribe(sim, w, 1, &[("#", QoS::AtLeastOnce)]);
    let req = request(sim);
    sim.broker.resolve_authorize(
        sim.now,
        req.token,
        SubscribeDecision::Grant(QoS::AtLeastOnce),
    );
    sim.drain();
    assert_eq!(suback(sim, w).reasons, [ReasonCode::GrantedQoS1]);
    w
}

#[test]
fn deferred_publish_allowed_is_routed_and_acknowledged_after_the_decision() {
    let mut sim = deferred();
    let w = watcher(&mut sim);
    let (a, _) = sim.connect("a", V5, true);
    send_publish(&mut sim, a, "t/1", QoS::AtLeastOnce, 7);
    assert!(sim.recv_all(a).is_empty(), "no PUBACK before the decision");
    assert!(
        sim.publishes(w).is_empty(),
        "not routed before the decision"
    );

    let req = request(&mut sim);
    assert_eq!(req.conn, a);
    assert_eq!(req.client_id.as_str(), "a");
    assert_eq!(req.username, None);
    assert_eq!(
        req.what,
        Operation::Publish {
            topic: TopicName::copy_from_str("t/1").unwrap(),
            qos: QoS::AtLeastOnce,
            retain: false,
        }
    );
    sim.broker
        .resolve_authorize(sim.now, req.token, PublishDecision::Allow);
    sim.drain();
    let ack = puback(&mut sim, a);
    assert_eq!(ack.packet_id.get(), 7);
    assert_eq!(ack.reason, ReasonCode::Success);
    let got = sim.publishes(w);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].topic.as_str(), "t/1");
    sim.ack_all(w, &got);

    sim.disconnect(a);
    sim.disconnect(w);
    sim.assert_no_leaks();
}

#[test]
fn deferred_publish_denied_is_acknowledged_but_not_routed() {
    let mut sim = deferred();
    let w = watcher(&mut sim);
    let (v4, _) = sim.connect("v4", V4, true);
    let (v5, _) = sim.connect("v5", V5, true);

    // 3.1.1 cannot say no: a plain PUBACK, and nothing routed.
    send_publish(&mut sim, v4, "secret", QoS::AtLeastOnce, 1);
    let req = request(&mut sim);
    sim.broker.resolve_authorize(
        sim.now,
        req.token,
        PublishDecision::Deny(ReasonCode::NotAuthorized),
    );
    sim.drain();
    assert_eq!(puback(&mut sim, v4).reason, ReasonCode::Success);

    // 5.0 hears why.
    send_publish(&mut sim, v5, "secret", QoS::AtLeastOnce, 2);
    let req = request(&mut sim);
    sim.broker.resolve_authorize(
        sim.now,
        req.token,
        PublishDecision::Deny(ReasonCode::NotAuthorized),
    );
    sim.drain();
    assert_eq!(puback(&mut sim, v5).reason, ReasonCode::NotAuthorized);

    // QoS 2 refused: PUBREC 0x87, and the identifier is not kept, so
    // PUBREL finds nothing.
    send_publish(&mut sim, v5, "secret", QoS::ExactlyOnce, 3);
    let req = request(&mut sim);
    sim.broker.resolve_authorize(
        sim.now,
        req.token,
        PublishDecision::Deny(ReasonCode::NotAuthorized),
    );
    sim.drain();
    match sim.recv(v5) {
        Some(Packet::PubRec(r)) => assert_eq!(r.reason, ReasonCode::NotAuthorized),
        other => panic!("expected PUBREC, got {other:?}"),
    }

    assert!(
        sim.publishes(w).is_empty(),
        "a refused publish is not routed"
    );
    assert_eq!(sim.broker.retained_count(), 0);
    for id in [v4, v5, w] {
        sim.disconnect(id);
    }
    sim.assert_no_leaks();
}

#[test]
fn deferred_subscribe_granted_at_a_lower_qos_or_denied() {
    let mut sim = deferred();
    let (v5, _) = sim.connect("v5", V5, true);
    let (v4, _) = sim.connect("v4", V4, true);

    send_subscribe(&mut sim, v5, 1, &[("a/#", QoS::ExactlyOnce)]);
    assert!(sim.recv_all(v5).is_empty(), "no SUBACK before the decision");
    assert_eq!(sim.broker.subscription_count(), 0);
    let req = request(&mut sim);
    assert_eq!(
        req.what,
        Operation::Subscribe {
            filter: TopicFilter::copy_from_str("a/#").unwrap(),
            qos: QoS::ExactlyOnce,
        }
    );
    sim.broker.resolve_authorize(
        sim.now,
        req.token,
        SubscribeDecision::Grant(QoS::AtLeastOnce),
    );
    sim.drain();
    assert_eq!(suback(&mut sim, v5).reasons, [ReasonCode::GrantedQoS1]);

    // The subscription works at the granted QoS.
    sim.broker.publish(
        sim.now,
        roost_core::broker::Message {
            topic: TopicName::copy_from_str("a/b").unwrap(),
            payload: bytes::Bytes::from_static(b"m"),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Default::default(),
        },
    );
    sim.drain();
    let got = sim.publishes(v5);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos.qos(), QoS::AtLeastOnce);
    sim.ack_all(v5, &got);

    // Denied: 0x87 in 5.0, 0x80 in 3.1.1.
    send_subscribe(&mut sim, v5, 2, &[("b", QoS::AtMostOnce)]);
    let req = request(&mut sim);
    sim.broker.resolve_authorize(
        sim.now,
        req.token,
        SubscribeDecision::Deny(ReasonCode::NotAuthorized),
    );
    sim.drain();
    assert_eq!(suback(&mut sim, v5).reasons, [ReasonCode::NotAuthorized]);

    send_subscribe(&mut sim, v4, 1, &[("b", QoS::AtMostOnce)]);
    let req = request(&mut sim);
    sim.broker.resolve_authorize(
        sim.now,
        req.token,
        SubscribeDecision::Deny(ReasonCode::NotAuthorized),
    );
    sim.drain();
    let ack = suback(&mut sim, v4);
    assert!(ack.reasons[0].is_error());
    assert_eq!(sim.broker.subscription_count(), 1, "only a/# exists");

    sim.disconnect(v4);
    sim.disconnect(v5);
    sim.assert_no_leaks();
}

#[test]
fn three_filters_decided_out_of_order_get_one_suback_in_filter_order() {
    let mut sim = deferred();
    let (a, _) = sim.connect("a", V5, true);
    send_subscribe(
        &mut sim,
        a,
        9,
        &[
            ("one", QoS::AtLeastOnce),
            ("two", QoS::ExactlyOnce),
            ("three", QoS::AtMostOnce),
        ],
    );
    let requests: Vec<AuthorizeRequest> = sim.authorize_requests.drain(..).collect();
    assert_eq!(requests.len(), 3, "one request per filter, all at once");
    let filters: Vec<String> = requests
        .iter()
        .map(|r| match &r.what {
            Operation::Subscribe { filter, .. } => filter.as_str().to_owned(),
            other => panic!("expected a subscribe request, got {other:?}"),
        })
        .collect();
    assert_eq!(filters, ["one", "two", "three"]);

    sim.broker.resolve_authorize(
        sim.now,
        requests[2].token,
        SubscribeDecision::Grant(QoS::AtMostOnce),
    );
    sim.drain();
    sim.broker.resolve_authorize(
        sim.now,
        requests[0].token,
        SubscribeDecision::Deny(ReasonCode::NotAuthorized),
    );
    sim.drain();
    assert!(sim.recv_all(a).is_empty(), "no SUBACK while one is missing");
    // Answering the same token twice changes nothing.
    sim.broker.resolve_authorize(
        sim.now,
        requests[0].token,
        SubscribeDecision::Grant(QoS::AtMostOnce),
    );
    sim.drain();
    assert!(sim.recv_all(a).is_empty());

    sim.broker.resolve_authorize(
        sim.now,
        requests[1].token,
        SubscribeDecision::Grant(QoS::ExactlyOnce),
    );
    sim.drain();
    let ack = suback(&mut sim, a);
    assert_eq!(ack.packet_id.get(), 9);
    assert_eq!(
        ack.reasons,
        [
            ReasonCode::NotAuthorized,
            ReasonCode::GrantedQoS2,
            ReasonCode::Success
        ]
    );
    assert!(sim.recv_all(a).is_empty(), "exactly one SUBACK");
    assert_eq!(sim.broker.subscription_count(), 2);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn packets_sent_while_waiting_are_handled_after_the_decision_in_order() {
    let mut sim = deferred();
    let w = watcher(&mut sim);
    let (a, _) = sim.connect("a", V5, true);
    send_publish(&mut sim, a, "first", QoS::AtLeastOnce, 1);
    // While the first waits: PINGREQ, a QoS 0 and a QoS 1 PUBLISH.
    sim.send(a, Packet::PingReq);
    send_publish(&mut sim, a, "second", QoS::AtMostOnce, 2);
    send_publish(&mut sim, a, "third", QoS::AtLeastOnce, 3);
    assert!(
        sim.recv_all(a).is_empty(),
        "later packets wait, even PINGREQ"
    );
    assert_eq!(
        sim.authorize_requests.len(),
        1,
        "one packet decided at a time"
    );

    let req = request(&mut sim);
    sim.broker
        .resolve_authorize(sim.now, req.token, PublishDecision::Allow);
    sim.drain();
    // The first is acknowledged, PINGREQ answered; "second" is now waiting.
    let got = sim.recv_all(a);
    assert!(
        matches!(&got[..], [Packet::PubAck(r), Packet::PingResp] if r.packet_id.get() == 1),
        "{got:?}"
    );
    let req = request(&mut sim);
    assert!(matches!(&req.what, Operation::Publish { topic, .. } if topic.as_str() == "second"));
    sim.broker
        .resolve_authorize(sim.now, req.token, PublishDecision::Allow);
    sim.drain();
    let req = request(&mut sim);
    assert!(matches!(&req.what, Operation::Publish { topic, .. } if topic.as_str() == "third"));
    sim.broker
        .resolve_authorize(sim.now, req.token, PublishDecision::Allow);
    sim.drain();
    assert_eq!(puback(&mut sim, a).packet_id.get(), 3);

    let got = sim.publishes(w);
    let topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, ["first", "second", "third"]);
    sim.ack_all(w, &got);
    sim.disconnect(a);
    sim.disconnect(w);
    sim.assert_no_leaks();
}

#[test]
fn input_buffered_while_waiting_is_bounded() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        authorization: Box::new(DeferAll),
        limits: roost_core::broker::Limits {
            max_packet_size: 1024,
            ..Default::default()
        },
        ..Config::default()
    });
    let (a, _) = sim.connect("a", V5, true);
    send_publish(&mut sim, a, "t", QoS::AtMostOnce, 1);
    assert_eq!(sim.authorize_requests.len(), 1);
    for pid in 2..=60 {
        if sim.closed(a).is_some() {
            break;
        }
        send_publish(
            &mut sim,
            a,
            "a/longer/topic/to/fill/the/buffer",
            QoS::AtLeastOnce,
            pid,
        );
    }
    assert_eq!(
        sim.closed(a),
        Some(CloseReason::Protocol(ReasonCode::QuotaExceeded))
    );
    let req = request(&mut sim);
    sim.broker
        .resolve_authorize(sim.now, req.token, PublishDecision::Allow);
    sim.drain();
    sim.assert_no_leaks();
}

#[test]
fn connection_closed_while_waiting_leaves_nothing_and_a_late_answer_is_ignored() {
    let mut sim = deferred();
    let (a, _) = sim.connect("a", V5, true);
    send_subscribe(
        &mut sim,
        a,
        1,
        &[("x", QoS::AtLeastOnce), ("y", QoS::AtLeastOnce)],
    );
    assert_eq!(sim.broker.pending_authorize_count(), 2);
    sim.drop_transport(a);
    assert_eq!(sim.broker.pending_authorize_count(), 0);
    sim.assert_no_leaks();
    for req in sim.authorize_requests.drain(..).collect::<Vec<_>>() {
        sim.broker.resolve_authorize(
            sim.now,
            req.token,
            SubscribeDecision::Grant(QoS::AtLeastOnce),
        );
        sim.drain();
    }
    assert_eq!(sim.broker.subscription_count(), 0);

    // The same for a publish, with a new connection under the same client
    // identifier: the old token must not touch it.
    let (b, _) = sim.connect("b", V5, true);
    send_publish(&mut sim, b, "t", QoS::AtLeastOnce, 1);
    let old = request(&mut sim);
    sim.drop_transport(b);
    let (b2, _) = sim.connect("b", V5, true);
    send_publish(&mut sim, b2, "t", QoS::AtLeastOnce, 1);
    let new = request(&mut sim);
    sim.broker
        .resolve_authorize(sim.now, old.token, PublishDecision::Allow);
    sim.drain();
    assert!(sim.recv_all(b2).is_empty(), "a stale token decides nothing");
    sim.broker
        .resolve_authorize(sim.now, new.token, PublishDecision::Allow);
    sim.drain();
    assert_eq!(puback(&mut sim, b2).packet_id.get(), 1);
    sim.disconnect(b2);
    sim.assert_no_leaks();
}

#[test]
fn an_unanswered_request_closes_the_connection_after_the_timeout() {
    let mut sim = deferred();
    let (a, _) = sim.connect("a", V5, true);
    sim.advance(secs(1));
    send_publish(&mut sim, a, "t", QoS::AtLeastOnce, 1);
    let req = request(&mut sim);
    // The deadline is armed: the clock stops there.
    assert_eq!(
        sim.broker.poll_timeout(),
        Some(sim.now + sim.broker.config().limits.authorize_timeout)
    );
    sim.advance(secs(9));
    assert_eq!(sim.closed(a), None, "not before the timeout");
    sim.advance(secs(1));
    assert_eq!(sim.closed(a), Some(CloseReason::AuthorizeTimeout));
    match sim.recv(a) {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::ServerBusy),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    sim.broker
        .resolve_authorize(sim.now, req.token, PublishDecision::Allow);
    sim.drain();
    sim.assert_no_leaks();
}

#[test]
fn an_answer_in_time_disarms_the_deadline() {
    let mut sim = deferred();
    let (a, _) = sim.connect("a", V4, true);
    send_subscribe(&mut sim, a, 1, &[("x", QoS::AtMostOnce)]);
    let req = request(&mut sim);
    sim.advance(secs(5));
    sim.broker.resolve_authorize(
        sim.now,
        req.token,
        SubscribeDecision::Grant(QoS::AtMostOnce),
    );
    sim.drain();
    assert_eq!(suback(&mut sim, a).reasons, [ReasonCode::Success]);
    assert_eq!(sim.broker.timer_count(), 0, "keep-alive 0 and no deadline");
    sim.advance(secs(60));
    assert_eq!(sim.closed(a), None);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn inline_and_deferred_decisions_mix() {
    let mut sim = sim_with(Mixed);
    let (a, _) = sim.connect("a", V5, true);

    // Inline only: answered at once, no request.
    assert_eq!(
        sim.subscribe(
            a,
            1,
            &[("fast/#", QoS::AtLeastOnce), ("no/x", QoS::AtMostOnce)]
        ),
        [ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized]
    );
    assert!(sim.authorize_requests.is_empty());

    // One SUBSCRIBE, inline grant, deferred filter, inline denial.
    send_subscribe(
        &mut sim,
        a,
        2,
        &[
            ("fast/a", QoS::AtMostOnce),
            ("slow/b", QoS::ExactlyOnce),
            ("no/c", QoS::AtMostOnce),
        ],
    );
    let req = request(&mut sim);
    assert!(
        sim.authorize_requests.is_empty(),
        "only the deferred filter asks"
    );
    assert!(sim.recv_all(a).is_empty());
    sim.broker.resolve_authorize(
        sim.now,
        req.token,
        SubscribeDecision::Grant(QoS::ExactlyOnce),
    );
    sim.drain();
    assert_eq!(
        suback(&mut sim, a).reasons,
        [
            ReasonCode::Success,
            ReasonCode::GrantedQoS2,
            ReasonCode::NotAuthorized
        ]
    );

    // Publishes: inline ones go straight through, a deferred one waits,
    // and an inline one sent behind it waits too.
    sim.publish(a, "fast/1", b"x", QoS::AtLeastOnce, 1, false);
    assert!(sim.authorize_requests.is_empty());
    send_publish(&mut sim, a, "slow/b", QoS::AtLeastOnce, 2);
    send_publish(&mut sim, a, "fast/2", QoS::AtLeastOnce, 3);
    send_publish(&mut sim, a, "no/1", QoS::AtLeastOnce, 4);
    let req = request(&mut sim);
    let before: Vec<Packet> = sim.recv_all(a);
    assert_eq!(
        before
            .iter()
            .filter(|p| matches!(p, Packet::PubAck(_)))
            .count(),
        0,
        "nothing behind the deferred publish is acknowledged: {before:?}"
    );
    sim.broker
        .resolve_authorize(sim.now, req.token, PublishDecision::Allow);
    sim.drain();
    let acks: Vec<(u16, ReasonCode)> = sim
        .recv_all(a)
        .into_iter()
        .filter_map(|p| match p {
            Packet::PubAck(r) => Some((r.packet_id.get(), r.reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        acks,
        [
            (2, ReasonCode::Success),
            (3, ReasonCode::Success),
            (4, ReasonCode::NotAuthorized)
        ]
    );
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn a_decision_of_the_wrong_kind_refuses() {
    let mut sim = deferred();
    let (a, _) = sim.connect("a", V5, true);
    send_subscribe(&mut sim, a, 1, &[("x", QoS::AtMostOnce)]);
    let req = request(&mut sim);
    sim.broker
        .resolve_authorize(sim.now, req.token, PublishDecision::Allow);
    sim.drain();
    assert_eq!(suback(&mut sim, a).reasons, [ReasonCode::UnspecifiedError]);
    send_publish(&mut sim, a, "x", QoS::AtLeastOnce, 2);
    let req = request(&mut sim);
    sim.broker.resolve_authorize(
        sim.now,
        req.token,
        SubscribeDecision::Grant(QoS::AtMostOnce),
    );
    sim.drain();
    assert_eq!(puback(&mut sim, a).reason, ReasonCode::UnspecifiedError);
    sim.disconnect(a);
    sim.assert_no_leaks();
}

#[test]
fn deferred_acknowledgements_still_wait_for_durability_in_order() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        persistence: true,
        authorization: Box::new(Mixed),
        ..Config::default()
    });
    sim.auto_confirm = false;
    let mut c = connect("a", V5, false, 0);
    c.properties.session_expiry_interval = Some(600);
    let (a, _) = sim.connect_with(c);
    sim.confirm_all();
    // A stored QoS 2 publish decided inline: its PUBREC waits for the store.
    send_publish(&mut sim, a, "fast/1", QoS::ExactlyOnce, 1);
    // A deferred QoS 1 behind it.
    send_publish(&mut sim, a, "slow/2", QoS::AtLeastOnce, 2);
    let req = request(&mut sim);
    sim.broker
        .resolve_authorize(sim.now, req.token, PublishDecision::Allow);
    sim.drain();
    assert!(
        sim.recv_all(a).is_empty(),
        "the PUBACK may not overtake the PUBREC held for durability"
    );
    sim.confirm_all();
    let got = sim.recv_all(a);
    assert!(
        matches!(&got[..], [Packet::PubRec(r1), Packet::PubAck(r2)]
            if r1.packet_id.get() == 1 && r2.packet_id.get() == 2),
        "{got:?}"
    );
    sim.send(
        a,
        Packet::PubRel(PubResponse::new(PacketId::new(1).unwrap())),
    );
    sim.confirm_all();
    sim.disconnect(a);
}

// ---- Wills are authorized like PUBLISH (issue 11) ----

/// Denies publishing and delivery on every topic starting with its prefix;
/// allows the rest inline.
struct DenyPrefix(&'static str);

impl AccessPolicy for DenyPrefix {
    fn authorize_publish(&self, _: ClientRef<'_>, topic: &TopicName) -> Verdict<PublishDecision> {
        if topic.as_str().starts_with(self.0) {
            Verdict::Decided(PublishDecision::Deny(ReasonCode::NotAuthorized))
        } else {
            Verdict::Decided(PublishDecision::Allow)
        }
    }

    fn authorize_subscribe(
        &self,
        _: ClientRef<'_>,
        _: &TopicFilter,
        qos: QoS,
    ) -> Verdict<SubscribeDecision> {
        Verdict::Decided(SubscribeDecision::Grant(qos))
    }

    fn authorize_delivery(&self, _: ClientRef<'_>, topic: &TopicName) -> bool {
        !topic.as_str().starts_with(self.0)
    }
}

fn with_will(client_id: &str, protocol: Protocol, topic: &str, retain: bool) -> Connect {
    let mut c = connect(client_id, protocol, true, 0);
    c.will = Some(will(topic, b"last words", QoS::AtLeastOnce, retain));
    c
}

#[test]
fn a_will_the_policy_denies_refuses_the_connect_0x87_and_0x05() {
    let mut sim = sim_with(DenyPrefix("secret/"));
    let (a, ack) = sim.connect_with(with_will("a", V5, "secret/x", false));
    assert_eq!(ack.unwrap().reason, ReasonCode::NotAuthorized);
    assert_eq!(
        sim.closed(a),
        Some(CloseReason::ConnectRefused(ReasonCode::NotAuthorized))
    );
    let (b, ack) = sim.connect_with(with_will("b", V4, "secret/x", false));
    let ack = ack.unwrap();
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    assert_eq!(ack.reason.to_v3_connack(), 0x05);
    assert_eq!(
        sim.closed(b),
        Some(CloseReason::ConnectRefused(ReasonCode::NotAuthorized))
    );
    // An allowed will connects.
    let (c, ack) = sim.connect_with(with_will("c", V4, "public/x", false));
    assert_eq!(ack.unwrap().reason, ReasonCode::Success);
    sim.disconnect(c);
    sim.assert_no_leaks();
}

#[test]
fn a_will_on_a_dollar_topic_is_refused_even_when_the_policy_allows_all() {
    let mut sim = Sim::quiet();
    for (id, topic, protocol) in [
        ("a", "$SYS/broker/version", V5),
        ("b", "$SYS/broker/version", V4),
        ("c", "$private/x", V4),
    ] {
        let (conn, ack) = sim.connect_with(with_will(id, protocol, topic, true));
        assert_eq!(ack.unwrap().reason, ReasonCode::NotAuthorized, "{topic}");
        assert_eq!(
            sim.closed(conn),
            Some(CloseReason::ConnectRefused(ReasonCode::NotAuthorized))
        );
    }
    sim.assert_no_leaks();
}

#[test]
fn a_retained_will_never_replaces_the_brokers_sys_version() {
    let mut sim = Sim::new(Config::default());
    sim.broker.publish_statistics();
    sim.drain();
    let (a, ack) = sim.connect_with(with_will("a", V4, "$SYS/broker/version", true));
    assert_eq!(ack.unwrap().reason, ReasonCode::NotAuthorized);
    assert!(sim.closed(a).is_some());
    let (w, _) = sim.connect("w", V4, true);
    sim.subscribe(w, 1, &[("$SYS/broker/version", QoS::AtMostOnce)]);
    let got = sim.publishes(w);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, sim.broker.config().version.as_bytes());
    sim.disconnect(w);
}

#[test]
fn a_will_denied_when_it_is_published_is_dropped_and_counted() {
    let mut sim = sim_with(DenyPrefix("nothing/"));
    let (w, _) = sim.connect("w", V4, true);
    sim.subscribe(w, 1, &[("#", QoS::AtLeastOnce)]);
    let (a, ack) = sim.connect_with(with_will("a", V4, "alarms/a", true));
    assert_eq!(ack.unwrap().reason, ReasonCode::Success);
    // The ACL changes while `a` is connected.
    sim.broker
        .set_authorization(Box::new(DenyPrefix("alarms/")));
    let before = sim.broker.stats().wills_denied;
    sim.drop_transport(a);
    assert!(sim.publishes(w).is_empty(), "the will is not published");
    assert_eq!(sim.broker.retained_count(), 0, "nor retained");
    assert_eq!(sim.broker.stats().wills_denied, before + 1);
    sim.disconnect(w);
    sim.assert_no_leaks();
}

#[test]
fn a_delayed_will_is_authorized_again_when_its_delay_ends() {
    let mut sim = sim_with(DenyPrefix("nothing/"));
    let (w, _) = sim.connect("w", V4, true);
    sim.subscribe(w, 1, &[("#", QoS::AtLeastOnce)]);
    let mut c = with_will("a", V5, "alarms/a", false);
    c.properties.session_expiry_interval = Some(60);
    c.will.as_mut().unwrap().properties.will_delay_interval = Some(5);
    let (a, ack) = sim.connect_with(c);
    assert_eq!(ack.unwrap().reason, ReasonCode::Success);
    sim.drop_transport(a);
    sim.advance(secs(2));
    sim.broker
        .set_authorization(Box::new(DenyPrefix("alarms/")));
    sim.advance(secs(4));
    assert!(
        sim.publishes(w).is_empty(),
        "denied at the moment it is due"
    );
    assert_eq!(sim.broker.stats().wills_denied, 1);
    sim.advance(secs(60));
    sim.disconnect(w);
    sim.assert_no_leaks();
}

#[test]
fn a_deferred_will_waits_for_the_decision_before_connack() {
    let mut sim = deferred();
    let (a, ack) = sim.connect_with(with_will("a", V5, "alarms/a", true));
    assert!(ack.is_none(), "no CONNACK before the decision");
    let req = request(&mut sim);
    assert_eq!(req.conn, a);
    assert_eq!(req.client_id.as_str(), "a");
    assert_eq!(
        req.what,
        Operation::Publish {
            topic: TopicName::from_static("alarms/a"),
            qos: QoS::AtLeastOnce,
            retain: true,
        }
    );
    // A PINGREQ sent meanwhile waits for the decision.
    sim.send(a, Packet::PingReq);
    assert!(sim.recv_all(a).is_empty());
    sim.broker
        .resolve_authorize(sim.now, req.token, PublishDecision::Allow);
    sim.drain();
    match sim.recv(a) {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert_eq!(sim.recv(a), Some(Packet::PingResp));
    sim.disconnect(a);

    let (b, ack) = sim.connect_with(with_will("b", V4, "alarms/b", false));
    assert!(ack.is_none());
    let req = request(&mut sim);
    sim.broker.resolve_authorize(
        sim.now,
        req.token,
        PublishDecision::Deny(ReasonCode::NotAuthorized),
    );
    sim.drain();
    match sim.recv(b) {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason, ReasonCode::NotAuthorized),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert_eq!(
        sim.closed(b),
        Some(CloseReason::ConnectRefused(ReasonCode::NotAuthorized))
    );
    sim.assert_no_leaks();
}

#[test]
fn a_connection_closed_while_its_will_is_decided_leaves_nothing() {
    let mut sim = deferred();
    let (a, _) = sim.connect_with(with_will("a", V5, "alarms/a", false));
    let req = request(&mut sim);
    sim.drop_transport(a);
    sim.broker
        .resolve_authorize(sim.now, req.token, PublishDecision::Allow);
    sim.drain();
    assert!(sim.recv_all(a).is_empty());
    sim.assert_no_leaks();
}

// ---- Queued messages are authorized again when they leave the queue (issue 11) ----

/// Hides topics under `prefix` from client `client` (delivery only); allows
/// everything else inline.
struct HideFrom {
    client: &'static str,
    prefix: &'static str,
}

impl AccessPolicy for HideFrom {
    fn authorize_publish(&self, _: ClientRef<'_>, _: &TopicName) -> Verdict<PublishDecision> {
        Verdict::Decided(PublishDecision::Allow)
    }

    fn authorize_subscribe(
        &self,
        _: ClientRef<'_>,
        _: &TopicFilter,
        qos: QoS,
    ) -> Verdict<SubscribeDecision> {
        Verdict::Decided(SubscribeDecision::Grant(qos))
    }

    fn authorize_delivery(&self, client: ClientRef<'_>, topic: &TopicName) -> bool {
        !(client.client_id.as_str() == self.client && topic.as_str().starts_with(self.prefix))
    }
}

const HIDE_SECRET: HideFrom = HideFrom {
    client: "alice",
    prefix: "sensors/secret",
};

/// alice has a stored session subscribed to `sensors/#` and is offline;
/// bob publishes `sensors/secret` and `sensors/temp` at QoS 1.
fn alice_offline_with_two_queued(sim: &mut Sim) {
    let (alice, _) = sim.connect("alice", V4, false);
    sim.subscribe(alice, 1, &[("sensors/#", QoS::AtLeastOnce)]);
    sim.disconnect(alice);
    let (bob, _) = sim.connect("bob", V4, true);
    sim.publish(bob, "sensors/secret", b"s", QoS::AtLeastOnce, 1, false);
    sim.publish(bob, "sensors/temp", b"21", QoS::AtLeastOnce, 2, false);
    sim.disconnect(bob);
    assert_eq!(sim.broker.queued_count("alice"), 2);
}

fn topics(got: &[Publish]) -> Vec<&str> {
    got.iter().map(|p| p.topic.as_str()).collect()
}

#[test]
fn a_queued_message_the_acl_denies_since_is_dropped_on_reconnect() {
    let mut sim = sim_with(roost_core::broker::AllowAll);
    alice_offline_with_two_queued(&mut sim);
    sim.broker.set_authorization(Box::new(HIDE_SECRET));
    let (alice, ack) = sim.connect("alice", V4, false);
    assert!(ack.session_present);
    let got = sim.publishes(alice);
    assert_eq!(topics(&got), ["sensors/temp"]);
    assert_eq!(sim.broker.stats().deliveries_denied, 1);
    assert_eq!(sim.broker.queued_count("alice"), 0);
    sim.ack_all(alice, &got);
    assert_eq!(sim.broker.inflight_count("alice"), 0);
}

#[test]
fn a_message_queued_offline_through_a_wildcard_is_checked_when_sent() {
    // The policy hides sensors/secret from alice from the start, but her
    // wildcard subscription matched it while she was offline.
    let mut sim = sim_with(HIDE_SECRET);
    alice_offline_with_two_queued(&mut sim);
    let (alice, _) = sim.connect("alice", V4, false);
    let got = sim.publishes(alice);
    assert_eq!(topics(&got), ["sensors/temp"]);
    assert_eq!(sim.broker.stats().deliveries_denied, 1);
}

#[test]
fn a_message_queued_behind_the_window_is_checked_when_the_window_opens() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        limits: roost_core::broker::Limits {
            max_inflight: 1,
            ..Default::default()
        },
        ..Config::default()
    });
    let (alice, _) = sim.connect("alice", V4, true);
    sim.subscribe(alice, 1, &[("sensors/#", QoS::AtLeastOnce)]);
    let (bob, _) = sim.connect("bob", V4, true);
    sim.publish(bob, "sensors/temp", b"21", QoS::AtLeastOnce, 1, false);
    sim.publish(bob, "sensors/secret", b"s", QoS::AtLeastOnce, 2, false);
    sim.publish(bob, "sensors/temp", b"22", QoS::AtLeastOnce, 3, false);
    let first = sim.publishes(alice);
    assert_eq!(topics(&first), ["sensors/temp"]);
    assert_eq!(sim.broker.queued_count("alice"), 2);
    sim.broker.set_authorization(Box::new(HIDE_SECRET));
    sim.ack_all(alice, &first);
    let next = sim.publishes(alice);
    assert_eq!(topics(&next), ["sensors/temp"]);
    assert_eq!(&next[0].payload[..], b"22");
    sim.ack_all(alice, &next);
    assert!(sim.publishes(alice).is_empty());
    assert_eq!(sim.broker.stats().deliveries_denied, 1);
    sim.disconnect(alice);
    sim.disconnect(bob);
    sim.assert_no_leaks();
}

#[test]
fn an_unacknowledged_message_the_acl_denies_since_is_not_sent_again() {
    let mut sim = sim_with(roost_core::broker::AllowAll);
    let (alice, _) = sim.connect("alice", V4, false);
    sim.subscribe(alice, 1, &[("sensors/#", QoS::AtLeastOnce)]);
    let (bob, _) = sim.connect("bob", V4, true);
    sim.publish(bob, "sensors/secret", b"s", QoS::AtLeastOnce, 1, false);
    assert_eq!(sim.publishes(alice).len(), 1, "sent, never acknowledged");
    sim.drop_transport(alice);
    sim.broker.set_authorization(Box::new(HIDE_SECRET));
    let (alice, _) = sim.connect("alice", V4, false);
    assert!(sim.publishes(alice).is_empty());
    assert_eq!(sim.broker.inflight_count("alice"), 0);
    assert_eq!(sim.broker.stats().deliveries_denied, 1);
}

#[test]
fn packets_waiting_behind_a_decision_are_not_held_against_the_keep_alive() {
    let mut sim = deferred();
    let (a, _) = sim.connect_with(connect("a", V4, true, 2));
    send_publish(&mut sim, a, "t/1", QoS::AtLeastOnce, 1);
    let req = request(&mut sim);
    // The client keeps itself alive, but its PINGREQs wait unread.
    for _ in 0..3 {
        sim.advance(secs(2));
        sim.send(a, Packet::PingReq);
    }
    assert_eq!(sim.closed(a), None, "the broker, not the client, is slow");
    sim.broker
        .resolve_authorize(sim.now, req.token, PublishDecision::Allow);
    sim.drain();
    let got = sim.recv_all(a);
    assert_eq!(got.len(), 4, "PUBACK and three PINGRESP: {got:?}");
    // Silent from now on: closed 1.5 x keep-alive after the last PINGREQ
    // was read.
    sim.advance(secs(3));
    assert_eq!(sim.closed(a), Some(CloseReason::KeepAliveTimeout));
    sim.assert_no_leaks();
}

#[test]
fn a_transport_identity_replaces_the_claimed_user_name() {
    let mut sim = deferred();
    let a = sim.open(V4);
    sim.broker
        .set_identity(a, roost_core::MqttStr::copy_from_str("device-7").unwrap());
    let mut c = connect("a", V4, true, 0);
    c.username = Some(roost_core::MqttStr::copy_from_str("admin").unwrap());
    c.password = Some(bytes::Bytes::from_static(b"guess"));
    sim.send(a, Packet::Connect(Box::new(c)));
    assert!(matches!(sim.recv(a), Some(Packet::ConnAck(_))));
    send_publish(&mut sim, a, "t/1", QoS::AtLeastOnce, 1);
    let req = request(&mut sim);
    assert_eq!(req.username.as_ref().map(|u| u.as_str()), Some("device-7"));
}
