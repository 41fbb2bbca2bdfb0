//! The MQTT 5.0 cases of the Paho interoperability suite
//! (`client_test5.py`), written anew from the specification.

use std::collections::BTreeSet;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::PublishProperties;
use tokio::time::{Instant, sleep};

use crate::client::RawClient;
use crate::common::{self, clean, connect_clean, describe, persistent, session_present};
use crate::rumq::Client5;
use crate::scenario::{Ctx, Failure, Outcome, Scenario, ScenarioResult, ensure, millis, secs};
use crate::wire::{Connect, Packet, Properties, Publish, Sub, Version, Will, prop};

const V: Version = Version::V5;

const NO_SERVER_ALIAS: Option<&str> = Some(
    "Mosquitto 2.0 never uses topic aliases towards clients; MQTT 5 makes that optional, \
     but the Paho case (and roost) require it",
);

/// The 5.0 scenarios, in run order.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        scenario!(
            "v5.basic",
            V,
            common::basic,
            secs(20),
            "clean reconnect, QoS 0/1/2 round trip, second CONNECT and protocol name \"hj\" refused"
        ),
        scenario!(
            "v5.retained-message",
            V,
            retained,
            secs(20),
            "retained QoS 0/1/2 with user properties reach a later +/+ subscriber intact"
        ),
        scenario!(
            "v5.will-message",
            V,
            will_message,
            secs(20),
            "keep alive 2 s, silent: one will with user properties [a=2, c=3] in order"
        ),
        scenario!(
            "v5.zero-length-clientid",
            V,
            zero_length_clientid,
            secs(15),
            "empty id with clean start 0: accepted with an assigned id or refused with 0x85"
        ),
        scenario!(
            "v5.offline-queueing",
            V,
            common::offline_queueing,
            secs(20),
            "QoS 1/2 messages queued for a session (expiry 99999) while its client is away"
        ),
        scenario!(
            "v5.overlapping-subscriptions",
            V,
            common::overlapping,
            secs(15),
            "TopicA/# QoS 2 + TopicA/+ QoS 1: one copy at QoS 2 or one per subscription"
        ),
        scenario!(
            "v5.keepalive",
            V,
            common::keepalive,
            secs(30),
            "silent client with keep alive 5 s is cut off within 7.5 s and its will is published once"
        ),
        scenario!(
            "v5.redelivery-on-reconnect",
            V,
            common::redelivery,
            secs(20),
            "unacknowledged QoS 1/2 PUBLISHes resent with DUP and original ids on reconnect"
        ),
        scenario!(
            "v5.subscribe-failure",
            V,
            common::subscribe_failure,
            secs(10),
            "SUBSCRIBE test/nosubscribe answered with exactly 0x80 (needs the broker's ACL)",
            Some(
                "Mosquitto 2.0 answers an ACL-denied 5.0 subscription with 0x87 Not authorized; \
                  the Paho case accepts only 0x80"
            )
        ),
        scenario!(
            "v5.dollar-topics",
            V,
            common::dollar_topics,
            secs(15),
            "#, +/+ and +/x do not match a $-topic; the connection survives"
        ),
        scenario!(
            "v5.unsubscribe",
            V,
            common::unsubscribe,
            secs(15),
            "after unsubscribing one of three filters, two of three publishes arrive"
        ),
        scenario!(
            "v5.session-expiry",
            V,
            session_expiry,
            secs(40),
            "session expiry 0, 5 s, and 1 s raised to 5 s then cut to 0 by DISCONNECT"
        ),
        scenario!(
            "v5.user-properties",
            V,
            user_properties,
            secs(15),
            "user properties a=2, c=3 forwarded on QoS 0/1/2 (rumqttc)"
        ),
        scenario!(
            "v5.payload-format",
            V,
            payload_format,
            secs(15),
            "payload format indicator and content type forwarded unchanged (rumqttc)"
        ),
        scenario!(
            "v5.publication-expiry",
            V,
            publication_expiry,
            secs(20),
            "messages expired while queued are dropped; the rest carry a reduced expiry"
        ),
        scenario!(
            "v5.subscribe-options",
            V,
            subscribe_options,
            secs(30),
            "no local, retain as published, retain handling 0/1/2"
        ),
        scenario!(
            "v5.assigned-clientid",
            V,
            assigned_clientid,
            secs(10),
            "empty client id with clean start 1 gets a non-empty Assigned Client Identifier"
        ),
        scenario!(
            "v5.subscription-identifiers",
            V,
            subscription_identifiers,
            secs(15),
            "subscription ids carried on delivery; one copy with both ids for overlapping filters",
            Some(
                "Mosquitto 2.0 sends one copy per matching subscription, each with its own \
                 id, which MQTT 5 allows; the Paho case demands a single copy with both ids"
            )
        ),
        scenario!(
            "v5.request-response",
            V,
            request_response,
            secs(15),
            "response topic and correlation data forwarded; the requester gets one response"
        ),
        scenario!(
            "v5.client-topic-alias",
            V,
            client_topic_alias,
            secs(20),
            "topic alias 0 draws DISCONNECT; aliases work within, and not across, connections",
            Some(
                "Mosquitto 2.0 answers topic alias 0 with DISCONNECT 0x81 Malformed Packet; \
                 the specification makes it a Protocol Error (0x82, or 0x94 Topic Alias invalid); \
                 the Paho case accepts any DISCONNECT"
            )
        ),
        scenario!(
            "v5.server-topic-alias",
            V,
            server_topic_alias,
            secs(15),
            "with client Topic Alias Maximum 1 the broker aliases outgoing topics; without, never",
            NO_SERVER_ALIAS
        ),
        scenario!(
            "v5.maximum-packet-size",
            V,
            maximum_packet_size,
            secs(20),
            "oversize publish draws 0x95; messages over the client's maximum are not sent to it"
        ),
        scenario!(
            "v5.server-keep-alive",
            V,
            server_keep_alive,
            secs(10),
            "keep alive 120 answered with Server Keep Alive 60 (needs the broker's 60 s cap)"
        ),
        scenario!(
            "v5.flow-control-1",
            V,
            flow_control_1,
            secs(15),
            "client Receive Maximum 2: only 2 unacknowledged QoS 1 PUBLISHes in flight"
        ),
        scenario!(
            "v5.flow-control-2",
            V,
            flow_control_2,
            secs(60),
            "server Receive Maximum + 1 incomplete QoS 2 PUBLISHes draw DISCONNECT 0x93",
            Some(
                "Mosquitto 2.0 does not enforce the Receive Maximum it announces on incoming \
                 QoS 2 PUBLISHes: it answers the extra one with PUBREC instead of DISCONNECT 0x93"
            )
        ),
        scenario!(
            "v5.will-delay",
            V,
            will_delay,
            secs(40),
            "will delay 3 s / expiry 5 s; delay 5 s / expiry 0; delay 5 s / expiry 2 s",
            Some(
                "Mosquitto 2.0 waits out the will delay even when the session (expiry 0) ends \
                 first, so the second will arrives after 5-6 s instead of at once"
            )
        ),
        scenario!(
            "v5.shared-subscriptions",
            V,
            shared_subscriptions,
            secs(15),
            "a $share group delivers each message to exactly one member"
        ),
    ]
}

fn user_props_ab() -> Properties {
    Properties::new().user("a", "2").user("c", "3")
}

fn has_both_user_props(p: &Properties) -> bool {
    let mut got = p.user_properties();
    got.sort();
    got == [("a".into(), "2".into()), ("c".into(), "3".into())]
}

/// Paho `retained_message`: user properties survive being retained.
async fn retained(cx: Ctx) -> ScenarioResult {
    let topics = [
        cx.topic("TopicA/B"),
        cx.topic("Topic/C"),
        cx.topic("TopicA/C"),
    ];
    let mut a = connect_clean(&cx, "A").await?;
    for (qos, topic) in topics.iter().enumerate() {
        a.publish(
            Publish::new(topic, qos as u8, b"retained")
                .retained()
                .with_props(user_props_ab()),
        )
        .await?;
    }
    let mut b = connect_clean(&cx, "B").await?;
    b.subscribe(&cx.topic("+/+"), 2).await?;
    let got = b.collect_n(3, secs(2), millis(500)).await;
    b.disconnect().await?;
    for topic in &topics {
        a.publish(Publish::new(topic, 1, b"").retained()).await?;
    }
    a.disconnect().await?;
    ensure(got.len() == 3, "3 retained messages", || describe(&got))?;
    for (qos, topic) in topics.iter().enumerate() {
        let p = got.iter().find(|p| &p.topic == topic);
        ensure(
            p.is_some_and(|p| p.qos == qos as u8 && p.retain && has_both_user_props(&p.props)),
            format!("{topic} retained at QoS {qos} with user properties a=2, c=3"),
            || format!("{p:?}"),
        )?;
    }
    Ok(Outcome::Pass)
}

/// Paho `will_message`: the will keeps its user properties, in order.
async fn will_message(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let topic = cx.topic("Topic/C");
    let mut b = connect_clean(&cx, "B").await?;
    b.subscribe(&topic, 2).await?;
    let mut connect = clean(&cx, "A");
    connect.keep_alive = 2;
    connect.will = Some(Will {
        topic: topic.clone(),
        payload: b"will message".to_vec(),
        qos: 0,
        retain: false,
        props: Properties::new()
            .int(prop::WILL_DELAY, 0)
            .user("a", "2")
            .user("c", "3"),
    });
    let (_a, _) = RawClient::connect(t, &connect).await?;
    let got = b.collect_n(1, secs(10), secs(1)).await;
    b.disconnect().await?;
    ensure(
        got.len() == 1,
        "exactly one will message within 10 s",
        || describe(&got),
    )?;
    let props = got[0].props.user_properties();
    ensure(
        props
            == [
                ("a".to_owned(), "2".to_owned()),
                ("c".to_owned(), "3".to_owned()),
            ],
        "will user properties exactly [(a, 2), (c, 3)]",
        || format!("{props:?}"),
    )?;
    Ok(Outcome::Pass)
}

/// Empty client id with clean start 0 ([MQTT-3.1.3-6], [MQTT-3.1.3-7]): the
/// server either accepts it and assigns an id (CONNACK carries it), or
/// refuses it with 0x85 Client Identifier not valid. Paho only logs this.
async fn zero_length_clientid(cx: Ctx) -> ScenarioResult {
    let mut c = RawClient::open(cx.target(), V).await?;
    let mut connect = Connect::new(V, "");
    connect.clean = false;
    let ack = c.handshake(&connect).await?;
    match ack.code {
        0 => {
            let assigned = ack.props.str_of(prop::ASSIGNED_CLIENT_ID).unwrap_or("");
            ensure(
                !assigned.is_empty(),
                "an Assigned Client Identifier with CONNACK 0x00",
                || "none".into(),
            )?;
            c.disconnect().await?;
            Ok(Outcome::PassNoted("accepted with an assigned id".into()))
        }
        0x85 => Ok(Outcome::PassNoted("refused with 0x85".into())),
        code => Err(Failure::new(
            "CONNACK 0x00 with an assigned id, or 0x85",
            format!("0x{code:02x}"),
        )),
    }
}

/// Paho `session_expiry`: the session lasts exactly as long as the expiry
/// interval in force when the connection ended ([MQTT-3.1.2-23],
/// [MQTT-3.14.2-2] allows raising it at DISCONNECT).
async fn session_expiry(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let with_expiry = |clean_start: bool, expiry: u32| {
        let mut c = Connect::new(V, &cx.client_id("A"));
        c.clean = clean_start;
        c.props = Properties::new().int(prop::SESSION_EXPIRY, expiry);
        c
    };
    let (c, _) = RawClient::connect(t, &with_expiry(true, 0)).await?;
    c.disconnect().await?;
    let (c, ack) = RawClient::connect(t, &with_expiry(false, 0)).await?;
    session_present(&ack, false, "after a session with expiry 0 ended")?;
    c.disconnect().await?;

    let (c, _) = RawClient::connect(t, &with_expiry(true, 5)).await?;
    c.disconnect().await?;
    sleep(secs(2)).await;
    let (c, ack) = RawClient::connect(t, &with_expiry(false, 5)).await?;
    session_present(&ack, true, "2 s into a 5 s session expiry")?;
    c.disconnect().await?;
    sleep(secs(6)).await;
    let (c, ack) = RawClient::connect(t, &with_expiry(false, 1)).await?;
    session_present(&ack, false, "6 s after a 5 s session expiry began")?;

    c.disconnect_with(0, &Properties::new().int(prop::SESSION_EXPIRY, 5))
        .await?;
    sleep(secs(3)).await;
    let (c, ack) = RawClient::connect(t, &with_expiry(false, 1)).await?;
    session_present(
        &ack,
        true,
        "3 s after DISCONNECT raised expiry from 1 s to 5 s",
    )?;
    c.disconnect_with(0, &Properties::new().int(prop::SESSION_EXPIRY, 0))
        .await?;
    // DISCONNECT is the client's last word; give the broker a moment to act
    // on it before the next CONNECT races it on another socket.
    sleep(millis(200)).await;
    let (c, ack) = RawClient::connect(t, &with_expiry(false, 0)).await?;
    session_present(&ack, false, "after DISCONNECT set session expiry 0")?;
    c.disconnect().await?;
    Ok(Outcome::Pass)
}

/// Paho `user_properties`, through rumqttc v5.
async fn user_properties(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let topic = cx.topic("TopicA");
    let mut sub = Client5::connect(t, &cx.client_id("B")).await?;
    sub.subscribe(&topic, 2).await?;
    let mut publisher = Client5::connect(t, &cx.client_id("A")).await?;
    for qos in 0..=2 {
        let props = PublishProperties {
            user_properties: vec![("a".into(), "2".into()), ("c".into(), "3".into())],
            ..PublishProperties::default()
        };
        publisher
            .publish(&topic, qos, b"user properties", props)
            .await?;
    }
    let got = sub.collect_n(3, secs(5)).await;
    ensure(got.len() == 3, "3 messages", || format!("{}", got.len()))?;
    for d in &got {
        let mut up = d
            .props
            .as_ref()
            .map(|p| p.user_properties.clone())
            .unwrap_or_default();
        up.sort();
        ensure(
            up == [
                ("a".to_owned(), "2".to_owned()),
                ("c".to_owned(), "3".to_owned()),
            ],
            format!("user properties a=2, c=3 on the QoS {} message", d.qos),
            || format!("{up:?}"),
        )?;
    }
    Ok(Outcome::Pass)
}

/// Paho `payload_format`, through rumqttc v5.
async fn payload_format(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let topic = cx.topic("TopicA");
    let mut sub = Client5::connect(t, &cx.client_id("B")).await?;
    sub.subscribe(&topic, 2).await?;
    let mut publisher = Client5::connect(t, &cx.client_id("A")).await?;
    for qos in 0..=2 {
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            content_type: Some("My name".into()),
            ..PublishProperties::default()
        };
        publisher
            .publish(&topic, qos, "ünïcödé".as_bytes(), props)
            .await?;
    }
    let got = sub.collect_n(3, secs(5)).await;
    ensure(got.len() == 3, "3 messages", || format!("{}", got.len()))?;
    for d in &got {
        let p = d.props.clone().unwrap_or_default();
        ensure(
            p.payload_format_indicator == Some(1) && p.content_type.as_deref() == Some("My name"),
            format!(
                "payload format 1 and content type \"My name\" on the QoS {} message",
                d.qos
            ),
            || format!("{:?}, {:?}", p.payload_format_indicator, p.content_type),
        )?;
    }
    Ok(Outcome::Pass)
}

/// Paho `publication_expiry`: [MQTT-3.3.2-5] expired messages are not sent;
/// [MQTT-3.3.2-6] the forwarded expiry is reduced by the time spent queued.
async fn publication_expiry(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let topic = cx.topic("TopicA");
    let (mut b, _) = RawClient::connect(t, &persistent(&cx, "B")).await?;
    b.subscribe(&topic, 2).await?;
    b.disconnect().await?;

    let mut a = connect_clean(&cx, "A").await?;
    for (expiry, qos) in [(1, 1), (1, 2), (6, 1), (6, 2)] {
        let payload = format!("expiry {expiry} qos {qos}");
        a.publish(
            Publish::new(&topic, qos, payload.as_bytes())
                .with_props(Properties::new().int(prop::MESSAGE_EXPIRY, expiry)),
        )
        .await?;
    }
    a.disconnect().await?;
    sleep(secs(3)).await;

    let (mut b, ack) = RawClient::connect(t, &persistent(&cx, "B")).await?;
    session_present(&ack, true, "for the kept session")?;
    let got = b.collect_n(2, secs(3), secs(1)).await;
    b.disconnect().await?;
    common::end_session(&cx, "B").await?;
    let payloads: Vec<String> = got
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    ensure(
        payloads.len() == 2 && payloads.iter().all(|p| p.starts_with("expiry 6")),
        "only the two messages with expiry 6 s",
        || format!("{payloads:?}"),
    )?;
    for p in &got {
        let left = p.props.int_of(prop::MESSAGE_EXPIRY);
        ensure(
            left.is_some_and(|s| s < 6),
            "a Message Expiry Interval below 6 (3 s were spent queued)",
            || format!("{left:?}"),
        )?;
    }
    Ok(Outcome::Pass)
}

/// Paho `subscribe_options`: No Local, Retain As Published and Retain
/// Handling 0/1/2 ([MQTT-3.8.3-3], [MQTT-3.3.1-12], [MQTT-3.3.1-9..11]).
async fn subscribe_options(cx: Ctx) -> ScenarioResult {
    // No Local: a subscriber does not get its own messages.
    let topic = cx.topic("TopicA");
    let mut a = connect_clean(&cx, "A").await?;
    let mut b = connect_clean(&cx, "B").await?;
    let mut nl = Sub::new(&topic, 2);
    nl.no_local = true;
    a.subscribe_with(std::slice::from_ref(&nl), &Properties::new())
        .await?;
    b.subscribe_with(&[nl], &Properties::new()).await?;
    a.publish(Publish::new(&topic, 2, b"no local")).await?;
    let got_b = b.collect_n(1, secs(2), millis(500)).await;
    ensure(
        got_b.len() == 1,
        "the other no-local subscriber gets the message once",
        || describe(&got_b),
    )?;
    a.expect_no_publish(secs(1), "no local: own message not returned")
        .await?;
    b.disconnect().await?;

    // Retain As Published: the RETAIN flag is forwarded as set.
    let rap_topic = cx.topic("rap/x");
    let mut rap = Sub::new(&cx.topic("rap/#"), 2);
    rap.retain_as_published = true;
    a.subscribe_with(&[rap], &Properties::new()).await?;
    a.publish(Publish::new(&rap_topic, 0, b"not retained"))
        .await?;
    a.publish(Publish::new(&rap_topic, 1, b"retained").retained())
        .await?;
    let got = a.collect_n(2, secs(2), millis(500)).await;
    a.publish(Publish::new(&rap_topic, 1, b"").retained())
        .await?;
    let flags: Vec<bool> = got.iter().map(|p| p.retain).collect();
    ensure(
        flags == [false, true],
        "RETAIN forwarded as published: [0, 1]",
        || format!("{flags:?}"),
    )?;
    let _ = a.collect_publishes(millis(300)).await;

    // Retain Handling.
    let rh: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|s| cx.topic(&format!("rh/{s}")))
        .collect();
    for (qos, t) in rh.iter().enumerate() {
        a.publish(Publish::new(t, qos as u8, b"rh").retained())
            .await?;
    }
    let filter = cx.topic("rh/+");
    let mut c = connect_clean(&cx, "C").await?;
    let result = retain_handling_checks(&mut c, &filter).await;
    c.disconnect().await?;
    for t in &rh {
        a.publish(Publish::new(t, 1, b"").retained()).await?;
    }
    a.disconnect().await?;
    result?;
    Ok(Outcome::Pass)
}

async fn retain_handling_checks(c: &mut RawClient, filter: &str) -> Result<(), Failure> {
    let sub = |rh: u8| {
        let mut s = Sub::new(filter, 2);
        s.retain_handling = rh;
        s
    };
    let expect = async |c: &mut RawClient, n: usize, what: &str| -> Result<(), Failure> {
        let got = c.collect_n(n, secs(2), millis(700)).await;
        let qos: BTreeSet<u8> = got.iter().map(|p| p.qos).collect();
        let ok = got.len() == n
            && (n == 0 || (qos == BTreeSet::from([0, 1, 2]) && got.iter().all(|p| p.retain)));
        ensure(ok, what.to_owned(), || describe(&got))
    };
    c.subscribe_with(&[sub(1)], &Properties::new()).await?;
    expect(
        c,
        3,
        "retain handling 1, new subscription: 3 retained messages (QoS 0, 1, 2)",
    )
    .await?;
    c.subscribe_with(&[sub(1)], &Properties::new()).await?;
    expect(
        c,
        0,
        "retain handling 1, repeated subscription: no retained messages",
    )
    .await?;
    c.unsubscribe(&[filter]).await?;
    c.subscribe_with(&[sub(2)], &Properties::new()).await?;
    expect(c, 0, "retain handling 2: no retained messages").await?;
    c.subscribe_with(&[sub(0)], &Properties::new()).await?;
    expect(
        c,
        3,
        "retain handling 0, repeated subscription: 3 retained messages",
    )
    .await?;
    c.subscribe_with(&[sub(0)], &Properties::new()).await?;
    expect(c, 3, "retain handling 0, again: 3 retained messages").await
}

/// Paho `assigned_clientid`: [MQTT-3.2.2-16] an empty client id gets an
/// Assigned Client Identifier in CONNACK.
async fn assigned_clientid(cx: Ctx) -> ScenarioResult {
    let (c, ack) = RawClient::connect(cx.target(), &Connect::new(V, "")).await?;
    c.disconnect().await?;
    let id = ack.props.str_of(prop::ASSIGNED_CLIENT_ID);
    ensure(
        id.is_some_and(|s| !s.is_empty()),
        "a non-empty Assigned Client Identifier",
        || format!("{id:?}"),
    )?;
    Ok(Outcome::Pass)
}

/// Paho `subscribe_identifiers`: [MQTT-3.3.4-3] the delivery carries the
/// subscription identifiers; for two matching subscriptions of one client
/// the Paho case demands one copy with both ids (MQTT 5 would also allow
/// one copy per subscription, each with its own id, which this case fails).
async fn subscription_identifiers(cx: Ctx) -> ScenarioResult {
    let topic = cx.topic("TopicA");
    let with_id = |id: u32| Properties::new().int(prop::SUBSCRIPTION_ID, id);
    let mut a = connect_clean(&cx, "A").await?;
    a.subscribe_with(&[Sub::new(&topic, 2)], &with_id(456_789))
        .await?;
    let mut b = connect_clean(&cx, "B").await?;
    b.subscribe_with(&[Sub::new(&topic, 2)], &with_id(2))
        .await?;
    b.subscribe_with(&[Sub::new(&cx.topic("TopicA/#"), 2)], &with_id(3))
        .await?;
    b.publish(Publish::new(&topic, 1, b"sub ids")).await?;
    let got_a = a.collect_n(1, secs(2), millis(500)).await;
    let got_b = b.collect_n(1, secs(2), millis(500)).await;
    a.disconnect().await?;
    b.disconnect().await?;
    let ids_a: Vec<Vec<u32>> = got_a
        .iter()
        .map(|p| p.props.all_ints(prop::SUBSCRIPTION_ID))
        .collect();
    ensure(
        ids_a == [vec![456_789]],
        "A: one message with subscription id [456789]",
        || format!("{ids_a:?}"),
    )?;
    let ids_b: Vec<BTreeSet<u32>> = got_b
        .iter()
        .map(|p| {
            p.props
                .all_ints(prop::SUBSCRIPTION_ID)
                .into_iter()
                .collect()
        })
        .collect();
    ensure(
        ids_b == [BTreeSet::from([2, 3])],
        "B: one message with subscription ids {2, 3}",
        || format!("{ids_b:?}"),
    )?;
    Ok(Outcome::Pass)
}

/// Paho `request_response`: Response Topic and Correlation Data are
/// forwarded intact ([MQTT-3.3.2-15], [MQTT-3.3.2-16]).
async fn request_response(cx: Ctx) -> ScenarioResult {
    let request_topic = cx.topic("request");
    let response_topic = cx.topic("response");
    let mut responder = connect_clean(&cx, "R").await?;
    responder.subscribe(&request_topic, 2).await?;
    let mut requester = connect_clean(&cx, "Q").await?;
    let mut nl = Sub::new(&response_topic, 2);
    nl.no_local = true;
    requester.subscribe_with(&[nl], &Properties::new()).await?;
    requester
        .publish(
            Publish::new(&request_topic, 1, b"request").with_props(
                Properties::new()
                    .string(prop::RESPONSE_TOPIC, &response_topic)
                    .binary(prop::CORRELATION_DATA, b"334"),
            ),
        )
        .await?;
    let req = responder.next_publish(secs(3)).await?;
    let rt = req.props.str_of(prop::RESPONSE_TOPIC).map(str::to_owned);
    let cd = req.props.bin_of(prop::CORRELATION_DATA).map(<[u8]>::to_vec);
    ensure(
        rt.as_deref() == Some(response_topic.as_str()) && cd.as_deref() == Some(b"334".as_slice()),
        format!("response topic {response_topic:?} and correlation data \"334\" on the request"),
        || format!("{rt:?}, {cd:?}"),
    )?;
    responder
        .publish(
            Publish::new(&response_topic, 1, b"response")
                .with_props(Properties::new().binary(prop::CORRELATION_DATA, b"334")),
        )
        .await?;
    let got = requester.collect_n(1, secs(3), millis(500)).await;
    responder.disconnect().await?;
    requester.disconnect().await?;
    ensure(
        got.len() == 1
            && got[0].payload == b"response"
            && got[0].props.bin_of(prop::CORRELATION_DATA) == Some(b"334".as_slice()),
        "exactly one response carrying correlation data \"334\"",
        || describe(&got),
    )?;
    Ok(Outcome::Pass)
}

/// Requires a DISCONNECT *packet* (not a bare close, as the Paho case does)
/// with one of `codes`.
async fn expect_disconnect_packet(
    c: &mut RawClient,
    codes: &[u8],
    why: &str,
) -> Result<u8, Failure> {
    let closed = c.expect_close(secs(5)).await.map_err(|f| f.during(why))?;
    match closed.disconnect_code() {
        Some(code) if codes.contains(&code) => Ok(code),
        Some(code) => Err(Failure::new(
            format!("{why}: DISCONNECT with reason {codes:02x?}"),
            format!("reason 0x{code:02x}"),
        )),
        None => Err(Failure::new(
            format!("{why}: a DISCONNECT packet before the close"),
            format!("a bare close ({})", closed.how),
        )),
    }
}

/// Paho `client_topic_alias`: [MQTT-3.3.2-8] alias 0 is a protocol error
/// (0x94 Topic Alias invalid, or 0x82); an alias set on a connection works
/// on it; [MQTT-3.3.2-10] aliases do not survive the connection.
async fn client_topic_alias(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let topic = cx.topic("TopicA");
    // The alias-using half runs first so that a broker failing the alias-0
    // check has still had its alias handling exercised.
    let mut sub = connect_clean(&cx, "B").await?;
    sub.subscribe(&topic, 2).await?;
    let (mut a, ack) = RawClient::connect(t, &clean(&cx, "A")).await?;
    let max = ack.props.int_of(prop::TOPIC_ALIAS_MAXIMUM).unwrap_or(0);
    let alias = Properties::new().int(prop::TOPIC_ALIAS, 1);
    if max > 0 {
        a.publish(Publish::new(&topic, 1, b"set alias").with_props(alias.clone()))
            .await?;
        a.publish(Publish::new("", 1, b"use alias").with_props(alias.clone()))
            .await?;
        let got = sub.collect_n(2, secs(2), millis(500)).await;
        ensure(
            got.len() == 2 && got.iter().all(|p| p.topic == topic),
            format!("both aliased messages delivered on {topic}"),
            || describe(&got),
        )?;
        a.disconnect().await?;
        // [MQTT-3.3.2-7]: an alias unknown on this connection (it was set on
        // the previous one) is a Protocol Error.
        let (mut a, _) = RawClient::connect(t, &clean(&cx, "A")).await?;
        a.send(
            &Publish::new("", 0, b"stale alias")
                .with_props(alias)
                .encode(V),
        )
        .await?;
        expect_disconnect_packet(&mut a, &[0x82, 0x94], "alias from a previous connection").await?;
    } else {
        a.disconnect().await?;
    }
    sub.disconnect().await?;

    let (mut a, _) = RawClient::connect(t, &clean(&cx, "A")).await?;
    a.send(
        &Publish::new(&topic, 0, b"alias 0")
            .with_props(Properties::new().int(prop::TOPIC_ALIAS, 0))
            .encode(V),
    )
    .await?;
    expect_disconnect_packet(&mut a, &[0x94, 0x82], "topic alias 0").await?;
    if max == 0 {
        return Ok(Outcome::PassNoted(
            "no Topic Alias Maximum announced: only the alias-0 half applies".into(),
        ));
    }
    Ok(Outcome::Pass)
}

/// Paho `server_topic_alias`: with the client's Topic Alias Maximum 1 the
/// broker sends topic + alias, then empty topic + the same alias; with no
/// maximum it sends no alias ([MQTT-3.3.2-9]).
async fn server_topic_alias(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let topic = cx.topic("TopicA");
    let mut plain = connect_clean(&cx, "B").await?;
    plain.subscribe(&topic, 1).await?;
    let mut connect = clean(&cx, "A");
    connect.props = Properties::new().int(prop::TOPIC_ALIAS_MAXIMUM, 1);
    let (mut a, _) = RawClient::connect(t, &connect).await?;
    a.subscribe(&topic, 1).await?;
    for i in 0..3 {
        a.publish(Publish::new(&topic, 1, format!("message {i}").as_bytes()))
            .await?;
    }
    let got = a.collect_n(3, secs(3), millis(300)).await;
    let got_plain = plain.collect_n(3, secs(3), millis(300)).await;
    a.disconnect().await?;
    plain.disconnect().await?;
    ensure(
        got_plain.len() == 3
            && got_plain
                .iter()
                .all(|p| p.props.get(prop::TOPIC_ALIAS).is_none()),
        "3 messages without topic alias to the client that allowed none",
        || describe(&got_plain),
    )?;
    let shape: Vec<(String, Option<u32>)> = got
        .iter()
        .map(|p| (p.topic.clone(), p.props.int_of(prop::TOPIC_ALIAS)))
        .collect();
    let first_alias = shape.first().and_then(|s| s.1);
    let ok = shape.len() == 3
        && shape[0].0 == topic
        && first_alias.is_some_and(|a| a > 0)
        && shape[1..]
            .iter()
            .all(|(t, a)| t.is_empty() && *a == first_alias);
    ensure(
        ok,
        "topic + alias, then empty topic + same alias twice",
        || format!("{shape:?}"),
    )?;
    Ok(Outcome::Pass)
}

/// Paho `maximum_packet_size`: the broker's announced maximum is enforced
/// with 0x95 (when below 65535), and [MQTT-3.1.2-24] a message larger than
/// the client's maximum is not sent to it (the connection goes on).
async fn maximum_packet_size(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    // A short topic: a 32-byte payload must fit in 64 bytes of PUBLISH.
    let topic = format!("rc/{}/m{}", cx.config.run_id, cx.index);
    let (mut a, ack) = RawClient::connect(t, &clean(&cx, "A")).await?;
    let mut note = String::new();
    match ack.props.int_of(prop::MAXIMUM_PACKET_SIZE) {
        Some(max) if max < 65_535 => {
            a.send(&Publish::new(&topic, 0, &vec![b'x'; max as usize]).encode(V))
                .await?;
            expect_disconnect_packet(&mut a, &[0x95], "publish over the broker's maximum").await?;
        }
        other => {
            note = format!("broker maximum {other:?} not below 65535: oversize half skipped; ");
            a.disconnect().await?;
        }
    }
    let mut connect = clean(&cx, "B");
    connect.props = Properties::new().int(prop::MAXIMUM_PACKET_SIZE, 64);
    let (mut b, _) = RawClient::connect(t, &connect).await?;
    b.subscribe(&topic, 0).await?;
    let mut p = connect_clean(&cx, "P").await?;
    p.publish(Publish::new(&topic, 1, &[b's'; 32])).await?;
    p.publish(Publish::new(&topic, 1, &[b'L'; 100])).await?;
    p.publish(Publish::new(&topic, 1, &[b'e'; 32])).await?;
    p.disconnect().await?;
    let got = b.collect_n(2, secs(3), millis(700)).await;
    b.disconnect().await?;
    let firsts: Vec<u8> = got.iter().map(|p| p.payload[0]).collect();
    ensure(
        firsts == [b's', b'e'],
        "the two 32-byte messages, not the 100-byte one",
        || describe(&got),
    )?;
    note.push_str("client maximum respected");
    Ok(Outcome::PassNoted(note))
}

/// Paho `server_keep_alive`: a broker capping keep alive at 60 s announces
/// Server Keep Alive 60 to a client asking for 120 ([MQTT-3.2.2-21]).
async fn server_keep_alive(cx: Ctx) -> ScenarioResult {
    let mut connect = clean(&cx, "A");
    connect.keep_alive = 120;
    let (c, ack) = RawClient::connect(cx.target(), &connect).await?;
    c.disconnect().await?;
    let ska = ack.props.int_of(prop::SERVER_KEEP_ALIVE);
    ensure(
        ska == Some(60),
        "Server Keep Alive 60 (broker configured with a 60 s cap)",
        || format!("{ska:?}"),
    )?;
    Ok(Outcome::Pass)
}

/// Paho `flow_control1`: [MQTT-3.3.4-9] no more unacknowledged QoS 1/2
/// PUBLISHes than the client's Receive Maximum.
async fn flow_control_1(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let topic = cx.topic("TopicA");
    let mut connect = clean(&cx, "A");
    connect.props = Properties::new().int(prop::RECEIVE_MAXIMUM, 2);
    let (mut a, _) = RawClient::connect(t, &connect).await?;
    a.subscribe(&topic, 1).await?;
    a.auto_ack = false;
    let mut b = connect_clean(&cx, "B").await?;
    for i in 0..3 {
        b.publish(Publish::new(&topic, 1, format!("{i}").as_bytes()))
            .await?;
    }
    b.disconnect().await?;
    let first = a.collect_n(2, secs(2), secs(1)).await;
    ensure(
        first.len() == 2,
        "exactly 2 PUBLISHes in flight with Receive Maximum 2",
        || describe(&first),
    )?;
    a.ack_publish(&first[0]).await?;
    let third = a.collect_n(1, secs(2), millis(300)).await;
    for p in first[1..].iter().chain(&third) {
        a.ack_publish(p).await?;
    }
    a.disconnect().await?;
    ensure(
        third.len() == 1,
        "the third PUBLISH after the first PUBACK",
        || describe(&third),
    )?;
    Ok(Outcome::Pass)
}

/// Paho `flow_control2`: [MQTT-3.3.4-7] more incomplete QoS 2 PUBLISHes than
/// the broker's Receive Maximum draw DISCONNECT 0x93.
async fn flow_control_2(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let (mut a, ack) = RawClient::connect(t, &clean(&cx, "A")).await?;
    let max = ack.props.int_of(prop::RECEIVE_MAXIMUM).unwrap_or(65_535);
    let topic = cx.topic("TopicA");
    let mut bytes = Vec::new();
    for i in 0..=max {
        let mut p = Publish::new(&topic, 2, b"flow");
        // Packet ids 1..=65535, then 1 again for the 65536th when no maximum
        // was announced: a reused id still counts as one more in flight only
        // if the broker forgot the first, so prefer distinct ids while we can.
        p.pid = Some((i % 65_535 + 1) as u16);
        bytes.extend_from_slice(&p.encode(V));
    }
    let flood = a.flood(&bytes, secs(3), secs(50)).await;
    let code = flood.packets.iter().find_map(|p| match p {
        Packet::Disconnect { code, .. } => Some(*code),
        _ => None,
    });
    ensure(
        code == Some(0x93),
        format!(
            "DISCONNECT 0x93 after {} incomplete QoS 2 PUBLISHes (Receive Maximum {max})",
            max + 1
        ),
        || match code {
            Some(c) => format!("DISCONNECT 0x{c:02x}"),
            None => format!(
                "no DISCONNECT (connection {}; received {})",
                flood
                    .closed
                    .as_deref()
                    .map_or("still open".into(), |h| format!("closed, {h}")),
                summarize(&flood.packets)
            ),
        },
    )?;
    Ok(Outcome::Pass)
}

/// "3 x PUBREC, 1 x PUBACK" style summary of packets.
fn summarize(packets: &[Packet]) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for p in packets {
        let name = p.to_string();
        let kind = name.split('(').next().unwrap_or("?").to_owned();
        *counts.entry(kind).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} x {k}")).collect();
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

/// Paho `will_delay`: [MQTT-3.1.3-9] the will is published when the will
/// delay or the session, whichever ends first, ends.
async fn will_delay(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let topic = cx.topic("TopicA");
    let mut s = connect_clean(&cx, "S").await?;
    s.subscribe(&topic, 1).await?;
    let cases: [(u32, u32, f32, f32); 3] = [(3, 5, 3.0, 5.0), (5, 0, 0.0, 2.0), (5, 2, 2.0, 4.0)];
    let mut notes = Vec::new();
    for (delay, expiry, lo, hi) in cases {
        // A distinct client per case: a session left by one case must not
        // be taken over by the next.
        let mut connect = clean(&cx, &format!("A{delay}{expiry}"));
        connect.props = Properties::new().int(prop::SESSION_EXPIRY, expiry);
        connect.will = Some(Will {
            topic: topic.clone(),
            payload: format!("delay {delay} expiry {expiry}").into_bytes(),
            qos: 1,
            retain: false,
            props: Properties::new().int(prop::WILL_DELAY, delay),
        });
        let (a, _) = RawClient::connect(t, &connect).await?;
        // Dropping the socket without DISCONNECT: the will must be sent.
        drop(a);
        let cut = Instant::now();
        let will = s
            // Wait well past the window so a late will is reported with its time.
            .next_publish(Duration::from_secs_f32(hi + 5.0))
            .await
            .map_err(|f| {
                f.during(&format!(
                    "will with delay {delay} s, session expiry {expiry} s"
                ))
            })?;
        let after = cut.elapsed().as_secs_f32();
        ensure(
            after >= lo - 0.5 && after <= hi + 1.0,
            format!("will (delay {delay} s, session expiry {expiry} s) {lo}-{hi} s after the cut"),
            || {
                format!(
                    "it after {after:.1} s ({:?})",
                    String::from_utf8_lossy(&will.payload)
                )
            },
        )?;
        notes.push(format!("{after:.1} s"));
    }
    s.disconnect().await?;
    Ok(Outcome::PassNoted(format!(
        "wills after {}",
        notes.join(", ")
    )))
}

/// Paho `shared_subscriptions`: [MQTT-4.8.2] a shared subscription delivers
/// each message to one member; ordinary subscriptions still reach everyone.
async fn shared_subscriptions(cx: Ctx) -> ScenarioResult {
    let shared_topic = cx.topic("x");
    let topic = cx.topic("TopicA");
    let share = format!("$share/rc{}/{shared_topic}", cx.config.run_id);
    let mut a = connect_clean(&cx, "A").await?;
    let mut b = connect_clean(&cx, "B").await?;
    for c in [&mut a, &mut b] {
        c.subscribe(&share, 2).await?;
        c.subscribe(&topic, 2).await?;
    }
    let mut p = connect_clean(&cx, "P").await?;
    p.publish(Publish::new(&topic, 0, b"everyone")).await?;
    p.publish(Publish::new(&shared_topic, 1, b"one of you"))
        .await?;
    p.disconnect().await?;
    let got_a = a.collect_publishes(secs(2)).await;
    let got_b = b.collect_publishes(millis(500)).await;
    a.disconnect().await?;
    b.disconnect().await?;
    let count = |got: &[Publish], t: &str| got.iter().filter(|p| p.topic == t).count();
    ensure(
        count(&got_a, &topic) == 1 && count(&got_b, &topic) == 1,
        format!("both members get the {topic} message once"),
        || format!("A: {}; B: {}", describe(&got_a), describe(&got_b)),
    )?;
    let shared = count(&got_a, &shared_topic) + count(&got_b, &shared_topic);
    ensure(
        shared == 1,
        "the shared message delivered to exactly one member",
        || format!("A: {}; B: {}", describe(&got_a), describe(&got_b)),
    )?;
    Ok(Outcome::Pass)
}
