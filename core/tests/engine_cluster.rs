//! Cluster mode (`Config::cluster`): what the engine tells the other nodes
//! (`Action::Forward`, `Action::Interest`, `Action::Claimed`) and what it
//! does with what they send (`publish_remote`, `set_retained`,
//! `release_client`).

mod support;

use roost_core::MqttStr;
use roost_core::broker::{
    AccessPolicy, Action, ClientRef, CloseReason, Config, ConnId, FetchToken, Message,
    PublishDecision, RecoveredSession, RemoteOrigin, RemoteTarget, SessionOwner, SubscribeDecision,
    Verdict,
};
use roost_core::codec::*;
use roost_core::topic::{TopicFilter, TopicName};
use support::*;

const V4: Protocol = Protocol::V3_1_1;
const V5: Protocol = Protocol::V5;

fn node() -> Sim {
    Sim::new(Config {
        sys_interval: None,
        cluster: true,
        ..Config::default()
    })
}

fn message(topic: &str, payload: &str, qos: QoS, retain: bool) -> Message {
    Message {
        topic: TopicName::copy_from_str(topic).unwrap(),
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        properties: Default::default(),
    }
}

fn anyone() -> RemoteOrigin<'static> {
    RemoteOrigin {
        client_id: None,
        username: None,
        listener: 0,
    }
}

fn interest(sim: &mut Sim) -> Vec<(String, Option<String>, bool)> {
    std::mem::take(&mut sim.cluster)
        .into_iter()
        .filter_map(|a| match a {
            Action::Interest {
                filter,
                group,
                present,
            } => Some((
                filter.as_str().to_owned(),
                group.map(|g| g.as_str().to_owned()),
                present,
            )),
            _ => None,
        })
        .collect()
}

fn forwarded(sim: &mut Sim) -> Vec<(String, Option<String>)> {
    std::mem::take(&mut sim.cluster)
        .into_iter()
        .filter_map(|a| match a {
            Action::Forward {
                message, client_id, ..
            } => Some((
                message.topic.as_str().to_owned(),
                client_id.map(|c| c.as_str().to_owned()),
            )),
            _ => None,
        })
        .collect()
}

fn s(v: &str) -> String {
    v.to_owned()
}

#[test]
fn interest_is_told_for_the_first_and_last_subscriber_of_a_filter() {
    let mut sim = node();
    let (a, _) = sim.connect("a", V5, true);
    let (b, _) = sim.connect("b", V5, true);
    sim.cluster.clear();
    sim.subscribe(a, 1, &[("x/+", QoS::AtLeastOnce)]);
    sim.subscribe(b, 1, &[("x/+", QoS::AtMostOnce)]);
    // Re-subscribing replaces, it does not count twice.
    sim.subscribe(b, 2, &[("x/+", QoS::ExactlyOnce)]);
    assert_eq!(interest(&mut sim), [(s("x/+"), None, true)]);
    sim.send(
        a,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: PacketId::new(3).unwrap(),
            filters: vec![TopicFilter::copy_from_str("x/+").unwrap()],
            properties: Default::default(),
        }),
    );
    assert_eq!(interest(&mut sim), []);
    // The last subscriber's session ends with its connection.
    sim.disconnect(b);
    assert_eq!(interest(&mut sim), [(s("x/+"), None, false)]);

    // A shared group is one interest, with its name, until its last member.
    let (c, _) = sim.connect("c", V5, true);
    sim.subscribe(c, 1, &[("$share/g/s/#", QoS::AtLeastOnce)]);
    assert_eq!(interest(&mut sim), [(s("s/#"), Some(s("g")), true)]);
    sim.disconnect(c);
    assert_eq!(interest(&mut sim), [(s("s/#"), Some(s("g")), false)]);

    // In-process subscriptions count too.
    let local = sim
        .broker
        .subscribe(sim.now, TopicFilter::copy_from_str("l/#").unwrap());
    sim.drain();
    assert_eq!(interest(&mut sim), [(s("l/#"), None, true)]);
    sim.broker.unsubscribe(sim.now, local);
    sim.drain();
    assert_eq!(interest(&mut sim), [(s("l/#"), None, false)]);
    let _ = a;
}

#[test]
fn what_is_published_here_is_forwarded_and_what_came_from_the_cluster_is_not() {
    let mut sim = node();
    let (p, _) = sim.connect_with(connect("pub", V4, true, 0));
    let mut with_will = connect("mortal", V5, true, 0);
    with_will.will = Some(will("w/mortal", b"gone", QoS::AtLeastOnce, false));
    let (m, _) = sim.connect_with(with_will);
    sim.cluster.retain(|a| !matches!(a, Action::Claimed { .. }));
    sim.publish(p, "a/b", b"1", QoS::AtLeastOnce, 1, false);
    sim.broker.publish(
        sim.now,
        message("from/program", "2", QoS::AtMostOnce, false),
    );
    sim.drain();
    sim.broker.publish_remote(
        sim.now,
        message("from/cluster", "3", QoS::AtMostOnce, false),
        anyone(),
        &RemoteTarget::Subscribers,
    );
    sim.drain();
    sim.broker.publish(
        sim.now,
        message("$SYS/broker/x", "4", QoS::AtMostOnce, false),
    );
    sim.drain();
    sim.drop_transport(m);
    assert_eq!(
        forwarded(&mut sim),
        [
            (s("a/b"), Some(s("pub"))),
            (s("from/program"), None),
            (s("w/mortal"), Some(s("mortal"))),
        ]
    );
}

#[test]
fn shared_groups_are_served_through_the_cluster_only() {
    let mut sim = node();
    let (member, _) = sim.connect("member", V5, true);
    let (plain, _) = sim.connect("plain", V5, true);
    let (p, _) = sim.connect("pub", V5, true);
    sim.subscribe(member, 1, &[("$share/g/s/#", QoS::AtLeastOnce)]);
    sim.subscribe(plain, 1, &[("s/#", QoS::AtLeastOnce)]);
    // Published here: the plain subscriber at once, the group only through
    // the cluster (which may pick this node).
    sim.publish(p, "s/1", b"local", QoS::AtLeastOnce, 1, false);
    let reached = sim
        .broker
        .publish(sim.now, message("s/0", "program", QoS::AtMostOnce, false));
    sim.drain();
    assert_eq!(reached, 1, "the group is not reached from here");
    assert_eq!(sim.publishes(plain).len(), 2);
    assert_eq!(sim.publishes(member).len(), 0);
    // From the cluster, for the plain subscriptions: not the group.
    sim.broker.publish_remote(
        sim.now,
        message("s/2", "plain", QoS::AtLeastOnce, false),
        anyone(),
        &RemoteTarget::Subscribers,
    );
    sim.drain();
    let got: Vec<_> = sim
        .publishes(plain)
        .iter()
        .map(|p| p.topic.as_str().to_owned())
        .collect();
    assert_eq!(got, ["s/2"]);
    assert_eq!(sim.publishes(member).len(), 0);
    // From the cluster, for the group: its member only.
    let target = RemoteTarget::Shared {
        group: MqttStr::from_static("g"),
        filter: TopicFilter::copy_from_str("s/#").unwrap(),
    };
    let reached = sim.broker.publish_remote(
        sim.now,
        message("s/1", "local", QoS::AtLeastOnce, false),
        anyone(),
        &target,
    );
    sim.drain();
    assert_eq!(reached, 1);
    let got = sim.publishes(member);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"local");
    assert_eq!(sim.publishes(plain).len(), 0);
}

struct NoSecrets;

impl AccessPolicy for NoSecrets {
    fn authorize_publish(&self, c: ClientRef<'_>, topic: &TopicName) -> Verdict<PublishDecision> {
        if topic.as_str().starts_with("defer/") {
            Verdict::Defer
        } else if topic.as_str().starts_with("secret/") && c.client_id.as_str() != "boss" {
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
}

#[test]
fn messages_from_the_cluster_are_authorized_as_their_publisher() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        cluster: true,
        authorization: Box::new(NoSecrets),
        ..Config::default()
    });
    let (sub, _) = sim.connect("sub", V5, true);
    sim.subscribe(sub, 1, &[("#", QoS::AtLeastOnce)]);
    let (worker, boss) = (MqttStr::from_static("worker"), MqttStr::from_static("boss"));
    let from = |client_id| RemoteOrigin {
        client_id: Some(client_id),
        username: None,
        listener: 0,
    };
    let denied_before = sim.broker.stats().publishes_denied;
    for (topic, who) in [
        ("secret/1", &worker),
        ("secret/2", &boss),
        ("defer/3", &boss),
        ("$SYS/4", &boss),
        ("open/5", &worker),
    ] {
        sim.broker.publish_remote(
            sim.now,
            message(topic, "x", QoS::AtLeastOnce, false),
            from(who),
            &RemoteTarget::Subscribers,
        );
        sim.drain();
    }
    let got: Vec<String> = sim
        .publishes(sub)
        .iter()
        .map(|p| p.topic.as_str().to_owned())
        .collect();
    assert_eq!(got, ["secret/2", "open/5"]);
    assert_eq!(sim.broker.stats().publishes_denied - denied_before, 3);
}

#[test]
fn retained_from_the_cluster_is_kept_without_delivery_and_cleared_by_an_empty_one() {
    let mut sim = node();
    let (early, _) = sim.connect("early", V5, true);
    sim.subscribe(early, 1, &[("r/#", QoS::AtLeastOnce)]);
    sim.broker
        .set_retained(sim.now, message("r/1", "kept", QoS::AtLeastOnce, true));
    sim.drain();
    assert!(
        sim.publishes(early).is_empty(),
        "set_retained delivers nothing"
    );
    let (late, _) = sim.connect("late", V5, true);
    sim.subscribe(late, 1, &[("r/#", QoS::AtLeastOnce)]);
    let got = sim.publishes(late);
    assert_eq!(got.len(), 1);
    assert!(got[0].retain);
    // A live message from the cluster keeps its retain flag for
    // retain-as-published, but is not stored again here.
    sim.broker
        .set_retained(sim.now, message("r/1", "", QoS::AtLeastOnce, true));
    sim.drain();
    let (later, _) = sim.connect("later", V5, true);
    sim.subscribe(later, 1, &[("r/#", QoS::AtLeastOnce)]);
    assert!(sim.publishes(later).is_empty(), "cleared");
    assert_eq!(sim.broker.retained_count(), 0);
    sim.broker.publish_remote(
        sim.now,
        message("r/2", "live", QoS::AtLeastOnce, true),
        anyone(),
        &RemoteTarget::Subscribers,
    );
    sim.drain();
    assert_eq!(sim.broker.retained_count(), 0);
    assert_eq!(sim.publishes(later).len(), 1);
}

#[test]
fn a_client_connecting_elsewhere_is_released_here() {
    let mut sim = node();
    let mut c = connect("roaming", V5, false, 0);
    c.properties.session_expiry_interval = Some(3600);
    c.will = Some(will("w/roaming", b"gone", QoS::AtMostOnce, false));
    let (old, ack) = resume(&mut sim, c, None);
    assert!(!ack.session_present);
    let claimed: Vec<_> = std::mem::take(&mut sim.cluster)
        .into_iter()
        .filter(|a| matches!(a, Action::Claimed { .. }))
        .collect();
    assert_eq!(
        claimed,
        [Action::Claimed {
            client_id: MqttStr::from_static("roaming"),
            clean_start: false
        }]
    );
    let (watch, _) = sim.connect("watch", V5, true);
    sim.subscribe(watch, 1, &[("w/#", QoS::AtMostOnce)]);
    let id = MqttStr::from_static("roaming");
    assert!(sim.broker.release_client(sim.now, &id, true));
    sim.drain();
    assert_eq!(sim.closed(old), Some(CloseReason::SessionTakenOver));
    let disconnect = sim.recv_all(old).into_iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason),
        _ => None,
    });
    assert_eq!(disconnect, Some(ReasonCode::SessionTakenOver));
    assert!(!sim.broker.has_session("roaming"), "the session ended here");
    // The new connection started clean: the old one's will is due.
    let wills = sim.publishes(watch);
    assert_eq!(wills.len(), 1);
    assert_eq!(wills[0].topic.as_str(), "w/roaming");
    assert!(!sim.broker.release_client(sim.now, &id, true));
}

/// The `FetchSession` requests among the cluster actions so far.
fn fetches(sim: &mut Sim) -> Vec<(FetchToken, String, SessionOwner)> {
    let (fetch, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut sim.cluster)
        .into_iter()
        .partition(|a| matches!(a, Action::FetchSession { .. }));
    sim.cluster = rest;
    fetch
        .into_iter()
        .filter_map(|a| match a {
            Action::FetchSession {
                token,
                client_id,
                owner,
            } => Some((token, client_id.as_str().to_owned(), owner)),
            _ => None,
        })
        .collect()
}

/// Connects with `c` (Clean Start 0) on a node that has no session for it:
/// the CONNACK waits for the cluster, which answers `session`.
fn resume(sim: &mut Sim, c: Connect, session: Option<RecoveredSession>) -> (ConnId, ConnAck) {
    let client_id = c.client_id.as_str().to_owned();
    let (id, ack) = sim.connect_with(c);
    assert!(ack.is_none(), "CONNACK before the cluster answered");
    let asked = fetches(sim);
    assert_eq!(asked.len(), 1, "one FetchSession");
    assert_eq!(asked[0].1, client_id);
    sim.broker.session_fetched(sim.now, asked[0].0, session);
    sim.drain();
    match sim.recv(id) {
        Some(Packet::ConnAck(ack)) => (id, *ack),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// The `Hosting` actions so far (the others stay).
fn hosting(sim: &mut Sim) -> Vec<(String, bool)> {
    let (hosting, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut sim.cluster)
        .into_iter()
        .partition(|a| matches!(a, Action::Hosting { .. }));
    sim.cluster = rest;
    hosting
        .into_iter()
        .filter_map(|a| match a {
            Action::Hosting { client_id, present } => {
                Some((client_id.as_str().to_owned(), present))
            }
            _ => None,
        })
        .collect()
}

/// A persistent session moves with its client from node a to node b:
/// subscriptions with their options and identifiers, the QoS 1 message in
/// flight (re-sent with DUP under its packet identifier), the QoS 2 one
/// waiting for PUBCOMP (its PUBREL re-sent), the queued ones, the client's
/// own QoS 2 identifier awaiting PUBREL; node a closes the old connection
/// with 0x8E and publishes no will (the session continues).
#[test]
fn a_persistent_session_moves_to_the_node_its_client_connects_to() {
    let (mut a, mut b) = (node(), node());
    let (watch, _) = a.connect("watch", V5, true);
    a.subscribe(watch, 1, &[("w/#", QoS::AtMostOnce)]);
    a.cluster.clear();
    let mut c = connect("roaming", V5, false, 0);
    c.properties.session_expiry_interval = Some(3600);
    c.properties.receive_maximum = std::num::NonZeroU16::new(2);
    c.will = Some(will("w/roaming", b"gone", QoS::AtMostOnce, false));
    let (old, ack) = resume(&mut a, c.clone(), None);
    assert!(!ack.session_present);
    assert_eq!(hosting(&mut a), [(s("roaming"), true)]);
    let mut sub = Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        subscriptions: vec![
            Subscription {
                filter: TopicFilter::copy_from_str("t/#").unwrap(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    ..Default::default()
                },
            },
            Subscription {
                filter: TopicFilter::copy_from_str("$share/g/s/+").unwrap(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            },
        ],
        properties: Default::default(),
    };
    sub.properties.subscription_identifier = std::num::NonZeroU32::new(7);
    a.subscribe_with(old, sub);
    let (p, _) = a.connect("pub", V5, true);
    for (n, qos) in [
        (1, QoS::AtLeastOnce),
        (2, QoS::ExactlyOnce),
        (3, QoS::AtLeastOnce),
        (4, QoS::ExactlyOnce),
        (5, QoS::AtMostOnce),
    ] {
        a.publish(p, "t/x", format!("m{n}").as_bytes(), qos, n, false);
    }
    // Two in flight (the window is 2), and the QoS 0 one: PUBREC the QoS
    // 2 one, ack nothing.
    let got = a.publishes(old);
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].payload, "m5");
    let (QosPid::AtLeastOnce(pid1), QosPid::ExactlyOnce(pid2)) = (got[0].qos, got[1].qos) else {
        panic!("{got:?}")
    };
    a.send(old, Packet::PubRec(PubResponse::new(pid2)));
    assert!(matches!(a.take_ack(old, pid2), Packet::PubRel(_)));
    // The client's own QoS 2 PUBLISH, not yet released.
    a.send(
        old,
        Packet::Publish(publish("up/1", b"u", QoS::ExactlyOnce, 9, false)),
    );
    assert!(matches!(
        a.take_ack(old, PacketId::new(9).unwrap()),
        Packet::PubRec(_)
    ));
    a.cluster.clear();

    // The client connects to node b: b asks the cluster, a hands over.
    let (new, _) = b.connect_with(c);
    let mut asked = fetches(&mut b);
    assert_eq!(asked.len(), 1);
    let (token, _, owner) = asked.remove(0);
    let moved = a
        .broker
        .hand_over(a.now, &MqttStr::from_static("roaming"), &owner)
        .expect("node a has the session");
    a.drain();
    assert_eq!(a.closed(old), Some(CloseReason::SessionTakenOver));
    let disconnect = a.recv_all(old).into_iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason),
        _ => None,
    });
    assert_eq!(disconnect, Some(ReasonCode::SessionTakenOver));
    assert!(
        a.publishes(watch).is_empty(),
        "no will: the session continues"
    );
    assert!(!a.broker.has_session("roaming"));
    assert_eq!(hosting(&mut a), [(s("roaming"), false)]);
    assert_eq!(a.broker.stats().sessions_moved_out, 1);
    assert_eq!(moved.messages.len(), 4, "QoS 0 does not move: {moved:?}");

    b.broker.session_fetched(b.now, token, Some(moved));
    b.drain();
    let ack = match b.recv(new) {
        Some(Packet::ConnAck(ack)) => ack,
        other => panic!("expected CONNACK, got {other:?}"),
    };
    assert!(ack.session_present);
    assert_eq!(b.broker.stats().sessions_moved_in, 1);
    assert_eq!(hosting(&mut b), [(s("roaming"), true)]);
    // What was in flight comes again, in order, under its identifiers.
    let packets = b.recv_all(new);
    let again: Vec<_> = packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.dup, p.qos, p.payload.clone())),
            Packet::PubRel(r) => Some((true, QosPid::ExactlyOnce(r.packet_id), "rel".into())),
            _ => None,
        })
        .collect();
    assert_eq!(
        again,
        [
            (true, QosPid::AtLeastOnce(pid1), bytes::Bytes::from("m1")),
            (true, QosPid::ExactlyOnce(pid2), bytes::Bytes::from("rel")),
        ]
    );
    // Acknowledged, they make room for the queued ones.
    b.send(new, Packet::PubAck(PubResponse::new(pid1)));
    b.send(new, Packet::PubComp(PubResponse::new(pid2)));
    let rest = b.publishes(new);
    let payloads: Vec<_> = rest.iter().map(|p| p.payload.clone()).collect();
    assert_eq!(payloads, ["m3", "m4"]);
    assert_eq!(
        rest[0].properties.subscription_identifiers,
        [std::num::NonZeroU32::new(7).unwrap()]
    );
    b.ack_all(new, &rest);
    // The client's QoS 2 identifier is still known: PUBREL is answered.
    b.send(
        new,
        Packet::PubRel(PubResponse::new(PacketId::new(9).unwrap())),
    );
    match b.take_ack(new, PacketId::new(9).unwrap()) {
        Packet::PubComp(r) => assert_eq!(r.reason, ReasonCode::Success),
        other => panic!("{other:?}"),
    }
    // Its subscriptions are b's now, with their options: no-local holds.
    let mut filters = interest(&mut b);
    filters.sort();
    assert_eq!(
        filters,
        [(s("s/+"), Some(s("g")), true), (s("t/#"), None, true)]
    );
    b.publish(new, "t/own", b"x", QoS::AtLeastOnce, 2, false);
    assert!(b.publishes(new).is_empty(), "no-local moved with it");
    let (p2, _) = b.connect("pub2", V5, true);
    b.publish(p2, "t/y", b"later", QoS::ExactlyOnce, 1, false);
    let later = b.publishes(new);
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].payload, "later");
}

/// No node has the session, or its answer does not come in time: the
/// client gets a new one; a late answer changes nothing.
#[test]
fn a_session_that_does_not_come_is_a_new_one() {
    let mut b = node();
    let mut c = connect("lonely", V4, false, 0);
    let (id, ack) = resume(&mut b, c.clone(), None);
    assert!(!ack.session_present);
    b.disconnect(id);
    // The session is here now: no need to ask.
    let (id, ack) = b.connect_with(c.clone());
    assert!(ack.expect("CONNACK at once").session_present);
    assert!(fetches(&mut b).is_empty());
    b.disconnect(id);

    c.client_id = MqttStr::from_static("slow");
    let (id, ack) = b.connect_with(c);
    assert!(ack.is_none());
    let (token, ..) = fetches(&mut b).remove(0);
    b.advance(secs(11));
    match b.recv(id) {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason, ReasonCode::Success);
            assert!(!ack.session_present);
        }
        other => panic!("expected CONNACK after the deadline, got {other:?}"),
    }
    let late = RecoveredSession {
        client_id: MqttStr::from_static("slow"),
        expiry_interval: u32::MAX,
        owner: None,
        subscriptions: vec![(
            TopicFilter::copy_from_str("late/#").unwrap(),
            Default::default(),
            None,
        )],
        messages: Vec::new(),
        incoming: Vec::new(),
    };
    b.cluster.clear();
    b.broker.session_fetched(b.now, token, Some(late));
    b.drain();
    assert!(interest(&mut b).is_empty(), "a late answer is ignored");
    assert!(b.closed(id).is_none());
}

struct NoSecretSubscriptions;

impl AccessPolicy for NoSecretSubscriptions {
    fn authorize_publish(&self, _: ClientRef<'_>, _: &TopicName) -> Verdict<PublishDecision> {
        Verdict::Decided(PublishDecision::Allow)
    }

    fn authorize_subscribe(
        &self,
        c: ClientRef<'_>,
        filter: &TopicFilter,
        qos: QoS,
    ) -> Verdict<SubscribeDecision> {
        assert_eq!(c.username.map(|u| u.as_str()), Some("alice"));
        if filter.as_str().starts_with("secret/") {
            Verdict::Decided(SubscribeDecision::Deny(ReasonCode::NotAuthorized))
        } else if filter.as_str().starts_with("defer/") {
            Verdict::Defer
        } else {
            Verdict::Decided(SubscribeDecision::Grant(qos.min(QoS::AtLeastOnce)))
        }
    }
}

/// The node a session moves to applies its own policy to the session's
/// subscriptions, for the identity that connects: denied (or deferred)
/// filters are dropped, granted ones keep at most the QoS granted.
#[test]
fn a_moved_session_is_authorized_again_where_it_lands() {
    let mut b = Sim::new(Config {
        sys_interval: None,
        cluster: true,
        authorization: Box::new(NoSecretSubscriptions),
        ..Config::default()
    });
    let filter = |f: &str| TopicFilter::copy_from_str(f).unwrap();
    let qos2 = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        ..Default::default()
    };
    let session = RecoveredSession {
        client_id: MqttStr::from_static("alice-phone"),
        expiry_interval: 600,
        owner: Some(SessionOwner {
            class: 0,
            username: Some(MqttStr::from_static("alice")),
        }),
        subscriptions: vec![
            (filter("secret/#"), qos2, None),
            (filter("defer/#"), qos2, None),
            (filter("news/#"), qos2, None),
        ],
        messages: Vec::new(),
        incoming: Vec::new(),
    };
    let mut c = connect("alice-phone", V5, false, 0);
    c.username = Some(MqttStr::from_static("alice"));
    c.properties.session_expiry_interval = Some(600);
    b.cluster.clear();
    let (id, ack) = resume(&mut b, c, Some(session));
    assert!(ack.session_present);
    assert_eq!(interest(&mut b), [(s("news/#"), None, true)]);
    let (p, _) = b.connect("p", V5, true);
    for topic in ["secret/1", "defer/1", "news/1"] {
        b.publish(p, topic, b"x", QoS::ExactlyOnce, 1, false);
    }
    let got = b.publishes(id);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].topic.as_str(), "news/1");
    assert!(
        matches!(got[0].qos, QosPid::AtLeastOnce(_)),
        "granted QoS 1"
    );
}

/// A session is handed over only to its owner: asked for by another
/// identity, it ends where it is (the will is published, as for a takeover
/// with a new session), and nothing moves.
#[test]
fn a_session_is_handed_over_only_to_its_owner() {
    let mut a = node();
    let (watch, _) = a.connect("watch", V5, true);
    a.subscribe(watch, 1, &[("w/#", QoS::AtMostOnce)]);
    let mut c = connect("shared-id", V5, false, 0);
    c.username = Some(MqttStr::from_static("bob"));
    c.properties.session_expiry_interval = Some(60);
    c.will = Some(will("w/bob", b"gone", QoS::AtMostOnce, false));
    let (old, _) = resume(&mut a, c, None);
    let mallory = SessionOwner {
        class: 0,
        username: Some(MqttStr::from_static("mallory")),
    };
    let id = MqttStr::from_static("shared-id");
    assert!(a.broker.hand_over(a.now, &id, &mallory).is_none());
    a.drain();
    assert_eq!(a.closed(old), Some(CloseReason::SessionTakenOver));
    assert!(!a.broker.has_session("shared-id"));
    let wills = a.publishes(watch);
    assert_eq!(wills.len(), 1);
    assert_eq!(wills[0].topic.as_str(), "w/bob");
    assert!(a.broker.hand_over(a.now, &id, &mallory).is_none());
}

/// With persistence on both nodes, a session that moves is deleted from
/// the store of the node it leaves and stored whole by the node it lands
/// on, before the CONNACK that says it is present.
#[test]
fn a_moved_session_is_stored_where_it_lands() {
    let stored_node = || {
        Sim::new(Config {
            sys_interval: None,
            cluster: true,
            persistence: true,
            ..Config::default()
        })
    };
    let (mut a, mut b) = (stored_node(), stored_node());
    let c = connect("durable", V4, false, 0);
    let (old, _) = resume(&mut a, c.clone(), None);
    a.subscribe(old, 1, &[("d/#", QoS::AtLeastOnce)]);
    a.drop_transport(old);
    let (p, _) = a.connect("p", V4, true);
    a.publish(p, "d/1", b"one", QoS::AtLeastOnce, 1, false);
    a.confirm_all();
    assert_eq!(a.replayed().sessions.len(), 1);

    b.auto_confirm = false;
    let (new, ack) = b.connect_with(c);
    assert!(ack.is_none());
    let (token, _, owner) = fetches(&mut b).remove(0);
    let moved = a
        .broker
        .hand_over(a.now, &MqttStr::from_static("durable"), &owner);
    a.drain();
    a.confirm_all();
    assert!(a.replayed().sessions.is_empty(), "deleted where it left");
    b.broker.session_fetched(b.now, token, moved);
    b.drain();
    assert!(b.recv(new).is_none(), "CONNACK waits for the store");
    b.confirm_all();
    match b.recv(new) {
        Some(Packet::ConnAck(ack)) => assert!(ack.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let state = b.replayed();
    assert_eq!(state.sessions.len(), 1);
    assert_eq!(state.sessions[0].subscriptions.len(), 1);
    assert_eq!(state.sessions[0].messages.len(), 1);
    assert_eq!(state, b.broker.durable_state());
    let got = b.publishes(new);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, "one");
}
