//! Cluster mode (`Config::cluster`): what the engine tells the other nodes
//! (`Action::Forward`, `Action::Interest`, `Action::Claimed`) and what it
//! does with what they send (`publish_remote`, `set_retained`,
//! `release_client`).

mod support;

use roost_core::MqttStr;
use roost_core::broker::{
    AccessPolicy, Action, ClientRef, CloseReason, Config, Message, PublishDecision, RemoteOrigin,
    RemoteTarget, SubscribeDecision, Verdict,
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
    let (old, _) = sim.connect_with(c);
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
