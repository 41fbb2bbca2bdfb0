//! The MQTT 3.1.1 cases of the Paho interoperability suite
//! (`client_test.py`), written anew from the specification.

use std::collections::BTreeMap;

use crate::client::{RawClient, RecvError};
use crate::common;
use crate::rumq::Client311;
use crate::scenario::{Ctx, Failure, Outcome, Scenario, ScenarioResult, ensure, secs};
use crate::wire::{Connect, Packet, Version};

const V: Version = Version::V311;

/// The 3.1.1 scenarios, in run order.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        scenario!(
            "v311.basic",
            V,
            common::basic,
            secs(20),
            "clean reconnect, QoS 0/1/2 round trip, second CONNECT and protocol name \"hj\" refused"
        ),
        scenario!(
            "v311.retained",
            V,
            retained,
            secs(20),
            "retained QoS 0/1/2 delivered to a later +/+ subscriber; empty retained payload deletes (rumqttc)"
        ),
        scenario!(
            "v311.offline-queueing",
            V,
            common::offline_queueing,
            secs(20),
            "QoS 1/2 messages queued for a clean-session-0 client while it is away"
        ),
        scenario!(
            "v311.overlapping-subscriptions",
            V,
            common::overlapping,
            secs(15),
            "TopicA/# QoS 2 + TopicA/+ QoS 1: one copy at QoS 2 or one per subscription",
            Some(
                "Mosquitto 2.0.11 sends a 3.1.1 client one copy at QoS 1 (not the maximum \
                 of the matching subscriptions, [MQTT-3.3.5-1])"
            )
        ),
        scenario!(
            "v311.keepalive",
            V,
            common::keepalive,
            secs(30),
            "silent client with keep alive 5 s is cut off within 7.5 s and its will is published once"
        ),
        scenario!(
            "v311.redelivery-on-reconnect",
            V,
            common::redelivery,
            secs(20),
            "unacknowledged QoS 1/2 PUBLISHes resent with DUP and original ids on reconnect"
        ),
        scenario!(
            "v311.zero-length-clientid",
            V,
            zero_length_clientid,
            secs(15),
            "empty client id refused (0x02 or close) with clean session 0, accepted with 1"
        ),
        scenario!(
            "v311.subscribe-failure",
            V,
            common::subscribe_failure,
            secs(10),
            "SUBSCRIBE test/nosubscribe answered with 0x80 (needs the broker's ACL)"
        ),
        scenario!(
            "v311.dollar-topics",
            V,
            common::dollar_topics,
            secs(15),
            "#, +/+ and +/x do not match a $-topic; the connection survives"
        ),
        scenario!(
            "v311.unsubscribe",
            V,
            common::unsubscribe,
            secs(15),
            "after unsubscribing one of three filters, two of three publishes arrive"
        ),
    ]
}

/// Paho `retained_messages`, through rumqttc: three retained messages
/// (QoS 0, 1, 2) reach a later `+/+` subscriber with RETAIN set and their
/// QoS; empty retained payloads delete them.
async fn retained(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let topics = [
        cx.topic("TopicA/B"),
        cx.topic("Topic/C"),
        cx.topic("TopicA/C"),
    ];
    let (mut a, present) = Client311::connect(t, &cx.client_id("A"), true).await?;
    ensure(!present, "session present 0 with clean session", || {
        "1".into()
    })?;
    // QoS 0 first: the broker handles one connection's packets in order, so
    // the later PUBACK/PUBCOMP proves the QoS 0 one was processed too.
    for (qos, topic) in topics.iter().enumerate() {
        a.publish(topic, qos as u8, true, b"retained").await?;
    }
    let (mut b, present) = Client311::connect(t, &cx.client_id("B"), true).await?;
    ensure(!present, "session present 0 with clean session", || {
        "1".into()
    })?;
    b.subscribe(&cx.topic("+/+"), 2).await?;
    let got = b.collect(secs(2)).await;
    let by_topic: BTreeMap<&str, (u8, bool)> = got
        .iter()
        .map(|d| (d.topic.as_str(), (d.qos, d.retain)))
        .collect();
    let want: BTreeMap<&str, (u8, bool)> = topics
        .iter()
        .enumerate()
        .map(|(q, t)| (t.as_str(), (q as u8, true)))
        .collect();
    let seen = format!("{by_topic:?} ({} messages)", got.len());
    b.disconnect().await?;

    for topic in &topics {
        a.publish(topic, 1, true, b"").await?;
    }
    a.disconnect().await?;
    ensure(
        got.len() == 3 && by_topic == want,
        format!("3 retained messages {want:?} (topic: (qos, retain))"),
        || seen,
    )?;

    let (mut c, _) = Client311::connect(t, &cx.client_id("C"), true).await?;
    c.subscribe(&cx.topic("+/+"), 2).await?;
    let left = c.collect(secs(2)).await;
    c.disconnect().await?;
    ensure(
        left.is_empty(),
        "no retained messages after deleting them",
        || format!("{} message(s), first on {}", left.len(), left[0].topic),
    )?;
    Ok(Outcome::Pass)
}

/// Paho `zero_length_clientid`: [MQTT-3.1.3-8] refuse an empty id with clean
/// session 0 (CONNACK 0x02, then close); [MQTT-3.1.3-6] accept it with clean
/// session 1.
async fn zero_length_clientid(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let mut c = RawClient::open(t, V).await?;
    let mut connect = Connect::new(V, "");
    connect.clean = false;
    c.send(&connect.encode()).await?;
    match c.recv(secs(5)).await {
        Ok(Packet::Connack(a)) if a.code == 0x02 => {
            c.expect_close(secs(5))
                .await
                .map_err(|f| f.during("close after CONNACK 0x02"))?;
        }
        Err(RecvError::Closed(_)) => {}
        other => {
            return Err(Failure::new(
                "CONNACK 0x02 or close for an empty id with clean session 0",
                match other {
                    Ok(p) => p.to_string(),
                    Err(e) => e.to_string(),
                },
            ));
        }
    }
    let (c, ack) = RawClient::connect(t, &Connect::new(V, ""))
        .await
        .map_err(|f| f.during("empty id with clean session 1"))?;
    common::session_present(&ack, false, "with clean session 1")?;
    c.disconnect().await?;
    Ok(Outcome::Pass)
}
