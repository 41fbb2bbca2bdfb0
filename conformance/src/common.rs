//! Scenarios that read the same in MQTT 3.1.1 and 5.0 (the Paho cases both
//! suites share), and helpers every scenario module uses.
//!
//! Each takes its version from `Ctx`, so one function backs both the `v311.`
//! and the `v5.` entry.

use std::collections::BTreeSet;

use tokio::time::Instant;

use crate::client::{Closed, RawClient};
use crate::scenario::{Ctx, Failure, Outcome, ScenarioResult, ensure, millis, secs};
use crate::wire::{Connack, Connect, Packet, Properties, Publish, Version, Will, prop};

/// Session Expiry the Paho 5.0 cases use for a session that must outlive
/// its connection.
pub const LONG_EXPIRY: u32 = 99_999;

/// A CONNECT for `role` that asks for a session surviving the connection:
/// Clean Session 0 in 3.1.1, Clean Start 0 plus a long Session Expiry in 5.0.
pub fn persistent(cx: &Ctx, role: &str) -> Connect {
    let mut c = Connect::new(cx.version, &cx.client_id(role));
    c.clean = false;
    if cx.version == Version::V5 {
        c.props = Properties::new().int(prop::SESSION_EXPIRY, LONG_EXPIRY);
    }
    c
}

/// A clean-session CONNECT for `role`.
pub fn clean(cx: &Ctx, role: &str) -> Connect {
    Connect::new(cx.version, &cx.client_id(role))
}

/// Connects `role` with a clean session and disconnects, so a scenario that
/// left a session behind does not leave it on the broker.
pub async fn end_session(cx: &Ctx, role: &str) -> Result<(), Failure> {
    let (c, _) = RawClient::connect(cx.target(), &clean(cx, role)).await?;
    c.disconnect().await
}

/// Connects `role` with a clean session.
pub async fn connect_clean(cx: &Ctx, role: &str) -> Result<RawClient, Failure> {
    Ok(RawClient::connect(cx.target(), &clean(cx, role)).await?.0)
}

/// Requires the CONNACK's session-present flag to be `want`.
pub fn session_present(ack: &Connack, want: bool, when: &str) -> Result<(), Failure> {
    ensure(
        ack.session_present == want,
        format!("session present {} {when}", u8::from(want)),
        || format!("session present {}", u8::from(ack.session_present)),
    )
}

/// A readable list of received messages for failure messages.
pub fn describe(got: &[Publish]) -> String {
    if got.is_empty() {
        return "no messages".into();
    }
    let items: Vec<String> = got
        .iter()
        .map(|p| format!("{} (qos {})", p.topic, p.qos))
        .collect();
    format!("{} message(s): {}", got.len(), items.join(", "))
}

/// Judges how a misbehaving connection was closed.
///
/// 3.1.1 has no server DISCONNECT, so nothing at all may arrive before the
/// close. In 5.0 the specification says the server SHOULD send a DISCONNECT
/// with a reason code before closing (section 4.13), so a bare close passes
/// with a note; a DISCONNECT must carry one of `allowed_v5`, and an empty
/// `allowed_v5` means no packet may be sent (before a CONNACK, [MQTT-3.14.0-1]
/// forbids DISCONNECT).
pub fn judge_close(version: Version, closed: &Closed, allowed_v5: &[u8]) -> ScenarioResult {
    let seen: Vec<String> = closed.packets.iter().map(|p| p.to_string()).collect();
    let allowed = if version == Version::V5 {
        allowed_v5
    } else {
        &[]
    };
    let want = if allowed.is_empty() {
        "the connection closed with no packet sent".to_owned()
    } else {
        format!("the connection closed, at most after a DISCONNECT with reason {allowed:02x?}")
    };
    match closed.packets.as_slice() {
        [] if allowed.is_empty() => Ok(Outcome::PassNoted(format!("closed ({})", closed.how))),
        [] => Ok(Outcome::PassNoted(format!(
            "closed without DISCONNECT ({}); allowed, SHOULD send one",
            closed.how
        ))),
        [Packet::Disconnect { code, .. }] if allowed.contains(code) => Ok(Outcome::PassNoted(
            format!("DISCONNECT 0x{code:02x} then closed"),
        )),
        _ => Err(Failure::new(
            want,
            format!("{} then close", seen.join(", ")),
        )),
    }
}

fn payload(label: &str) -> Vec<u8> {
    label.as_bytes().to_vec()
}

/// Paho `basic`: clean reconnect, QoS 0/1/2 round trip, a second CONNECT on
/// one connection and a CONNECT with protocol name "hj" both refused.
pub async fn basic(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let v = cx.version;
    let (c, _) = RawClient::connect(t, &clean(&cx, "A")).await?;
    c.disconnect().await?;
    let (mut c, ack) = RawClient::connect(t, &clean(&cx, "A")).await?;
    session_present(&ack, false, "on a clean-session reconnect")?;

    let topic = cx.topic("TopicA");
    c.subscribe(&topic, 2).await?;
    for qos in 0..=2 {
        c.publish(Publish::new(&topic, qos, &payload(&format!("qos {qos}"))))
            .await?;
    }
    let got = c.collect_n(3, secs(2), millis(500)).await;
    let qos: BTreeSet<u8> = got.iter().map(|p| p.qos).collect();
    ensure(
        got.len() == 3 && qos == BTreeSet::from([0, 1, 2]),
        "3 messages at QoS 0, 1 and 2 within 2 s",
        || describe(&got),
    )?;

    // [MQTT-3.1.0-2]: a second CONNECT is a protocol violation.
    c.send(&clean(&cx, "A").encode()).await?;
    let closed = c
        .expect_close(secs(5))
        .await
        .map_err(|f| f.during("second CONNECT"))?;
    judge_close(v, &closed, &[0x82]).map_err(|f| f.during("second CONNECT"))?;

    let mut bad = clean(&cx, "B");
    bad.protocol_name = "hj".into();
    let mut c = RawClient::open(t, v).await?;
    c.send(&bad.encode()).await?;
    match c.recv(secs(5)).await {
        Ok(Packet::Connack(a)) if a.code != 0 => Ok(Outcome::Pass),
        Err(crate::client::RecvError::Closed(_)) => Ok(Outcome::Pass),
        Ok(other) => Err(Failure::new(
            "protocol name \"hj\" refused (close, or CONNACK with an error code)",
            other.to_string(),
        )),
        Err(e) => Err(Failure::new(
            "protocol name \"hj\" refused (close, or CONNACK with an error code)",
            e.to_string(),
        )),
    }
}

/// Paho `offline_message_queueing`: messages published while a persistent
/// session's client is away are delivered on reconnect (QoS 1 and 2 must be,
/// QoS 0 may be).
pub async fn offline_queueing(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let (mut a, ack) = RawClient::connect(t, &persistent(&cx, "A")).await?;
    session_present(&ack, false, "for a new client id")?;
    a.subscribe(&cx.topic("+/+"), 2).await?;
    a.disconnect().await?;

    let mut b = connect_clean(&cx, "B").await?;
    let topics = [
        cx.topic("TopicA/B"),
        cx.topic("Topic/C"),
        cx.topic("TopicA/C"),
    ];
    for (qos, topic) in topics.iter().enumerate() {
        b.publish(Publish::new(topic, qos as u8, b"queued")).await?;
    }
    b.disconnect().await?;

    let (mut a, ack) = RawClient::connect(t, &persistent(&cx, "A")).await?;
    session_present(&ack, true, "when the session was kept")?;
    let got = a.collect_n(3, secs(3), millis(500)).await;
    a.disconnect().await?;
    end_session(&cx, "A").await?;
    let topics_got: BTreeSet<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    ensure(
        (got.len() == 2 || got.len() == 3)
            && topics_got.contains(topics[1].as_str())
            && topics_got.contains(topics[2].as_str())
            && topics_got.len() == got.len(),
        "the queued QoS 1 and QoS 2 messages (QoS 0 optional), each once",
        || describe(&got),
    )?;
    Ok(Outcome::PassNoted(format!("{} of 3 delivered", got.len())))
}

/// Paho `overlapping_subscriptions`: `TopicA/#` at QoS 2 and `TopicA/+` at
/// QoS 1 both match; the broker sends one copy at QoS 2, or one copy per
/// subscription (QoS 2 and QoS 1).
pub async fn overlapping(cx: Ctx) -> ScenarioResult {
    let mut c = connect_clean(&cx, "A").await?;
    c.subscribe(&cx.topic("TopicA/#"), 2).await?;
    c.subscribe(&cx.topic("TopicA/+"), 1).await?;
    c.publish(Publish::new(&cx.topic("TopicA/C"), 2, b"overlapping"))
        .await?;
    let got = c.collect_n(2, secs(2), millis(500)).await;
    c.disconnect().await?;
    let mut qos: Vec<u8> = got.iter().map(|p| p.qos).collect();
    qos.sort_unstable();
    match qos.as_slice() {
        [2] => Ok(Outcome::PassNoted("one copy at QoS 2".into())),
        [1, 2] => Ok(Outcome::PassNoted("one copy per subscription".into())),
        _ => Err(Failure::new(
            "one message at QoS 2, or two at QoS 2 and QoS 1",
            describe(&got),
        )),
    }
}

/// Paho `keepalive`: a client with keep alive 5 s that goes silent is cut
/// off within 1.5 x 5 s (not before 5 s) and its will is published once.
pub async fn keepalive(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let will_topic = cx.topic("TopicA");
    let mut b = connect_clean(&cx, "B").await?;
    b.subscribe(&will_topic, 2).await?;

    let mut connect = clean(&cx, "A");
    connect.keep_alive = 5;
    connect.will = Some(Will {
        topic: will_topic.clone(),
        payload: b"keepalive expiry".to_vec(),
        qos: 1,
        ..Will::default()
    });
    let (mut a, _) = RawClient::connect(t, &connect).await?;
    let connected = Instant::now();
    let will = b
        .next_publish(secs(15))
        .await
        .map_err(|f| f.during("will after keep-alive expiry"))?;
    let after = connected.elapsed();
    ensure(
        after >= millis(4_900),
        "the will not before the keep-alive period (5 s) passed",
        || format!("it after {:.1} s", after.as_secs_f32()),
    )?;
    ensure(
        will.payload == b"keepalive expiry",
        "the will payload",
        || format!("{:?}", String::from_utf8_lossy(&will.payload)),
    )?;
    let extra = b.collect_publishes(secs(1)).await;
    ensure(extra.is_empty(), "exactly one will message", || {
        describe(&extra)
    })?;
    a.expect_close(secs(2))
        .await
        .map_err(|f| f.during("silent client disconnected"))?;
    b.disconnect().await?;
    Ok(Outcome::PassNoted(format!(
        "will after {:.1} s",
        after.as_secs_f32()
    )))
}

/// Paho `redelivery_on_reconnect`: unacknowledged QoS 1 and QoS 2 PUBLISHes
/// are sent again, with DUP set and their original packet ids
/// ([MQTT-4.4.0-1], [MQTT-3.3.1-1]), when a persistent session reconnects.
pub async fn redelivery(cx: Ctx) -> ScenarioResult {
    let t = cx.target();
    let (mut b, _) = RawClient::connect(t, &persistent(&cx, "B")).await?;
    b.subscribe(&cx.topic("TopicA/#"), 2).await?;
    b.auto_ack = false;
    let t1 = cx.topic("TopicA/B");
    let t2 = cx.topic("TopicA/C");
    b.publish(Publish::new(&t1, 1, b"qos 1")).await?;
    b.publish(Publish::new(&t2, 2, b"qos 2")).await?;
    let first = [
        b.next_publish(secs(3)).await?,
        b.next_publish(secs(3)).await?,
    ];
    b.disconnect().await?;

    let (mut b, ack) = RawClient::connect(t, &persistent(&cx, "B")).await?;
    session_present(&ack, true, "on reconnect")?;
    b.auto_ack = false;
    let mut again = Vec::new();
    for _ in 0..2 {
        again.push(
            b.next_publish(secs(3))
                .await
                .map_err(|f| f.during("redelivery within 3 s"))?,
        );
    }
    for p in &again {
        b.auto_ack = true;
        b.ack_publish(p).await?;
    }
    // Let the QoS 2 flow finish (PUBREL answered inside wait_for).
    let _ = b.collect_publishes(millis(500)).await;
    b.disconnect().await?;
    end_session(&cx, "B").await?;

    for orig in &first {
        let re = again.iter().find(|p| p.topic == orig.topic);
        let Some(re) = re else {
            return Err(Failure::new(
                format!("redelivery of {}", orig.topic),
                describe(&again),
            ));
        };
        ensure(
            re.dup && re.pid == orig.pid && re.qos == orig.qos,
            format!(
                "{} resent with DUP 1, QoS {} and packet id {:?}",
                orig.topic, orig.qos, orig.pid
            ),
            || {
                format!(
                    "DUP {}, QoS {}, packet id {:?}",
                    u8::from(re.dup),
                    re.qos,
                    re.pid
                )
            },
        )?;
    }
    Ok(Outcome::Pass)
}

/// Paho `subscribe_failure`: SUBSCRIBE to `test/nosubscribe` (refused by the
/// broker's authorisation config) is answered with exactly 0x80.
pub async fn subscribe_failure(cx: Ctx) -> ScenarioResult {
    let mut c = connect_clean(&cx, "A").await?;
    let ack = c
        .subscribe_with(
            &[crate::wire::Sub::new("test/nosubscribe", 2)],
            &Properties::new(),
        )
        .await?;
    c.disconnect().await?;
    ensure(
        ack.codes == [0x80],
        "SUBACK code 0x80 for test/nosubscribe (broker must be configured to refuse it)",
        || format!("codes {:02x?}", ack.codes),
    )?;
    Ok(Outcome::Pass)
}

/// Paho `dollar_topics`: filters starting with a wildcard do not match a
/// topic starting with `$` ([MQTT-4.7.2-1]); the connection survives the
/// publish. A control publish to an ordinary topic proves the filters work.
pub async fn dollar_topics(cx: Ctx) -> ScenarioResult {
    let mut c = connect_clean(&cx, "B").await?;
    let run = &cx.config.run_id;
    let leaf = format!("d{run}{}", cx.index);
    c.subscribe("#", 1).await?;
    c.subscribe("+/+", 1).await?;
    c.subscribe(&format!("+/{leaf}"), 1).await?;
    let dollar = format!("$rc{run}/{leaf}");
    let plain = format!("rc{run}/{leaf}");
    // The broker may refuse the $ publish (PUBACK >= 0x80) but must not drop
    // the connection; completing the flow or not is its choice.
    c.publish(Publish::new(&dollar, 1, b"dollar")).await?;
    c.publish(Publish::new(&plain, 1, b"control")).await?;
    let got = c.collect_publishes(secs(2)).await;
    c.ping()
        .await
        .map_err(|f| f.during("connection alive after a $ publish"))?;
    c.disconnect().await?;
    let to_dollar: Vec<Publish> = got.iter().filter(|p| p.topic == dollar).cloned().collect();
    ensure(
        to_dollar.is_empty(),
        format!("nothing delivered from {dollar} to #, +/+ or +/{leaf}"),
        || describe(&to_dollar),
    )?;
    ensure(
        got.iter().any(|p| p.topic == plain),
        format!("the control message on {plain}"),
        || describe(&got),
    )?;
    Ok(Outcome::Pass)
}

/// Paho `unsubscribe`: after unsubscribing one of three filters, only the
/// other two deliver.
pub async fn unsubscribe(cx: Ctx) -> ScenarioResult {
    let topics = [
        cx.topic("TopicA"),
        cx.topic("TopicA/B"),
        cx.topic("Topic/C"),
    ];
    let mut b = connect_clean(&cx, "B").await?;
    for t in &topics {
        b.subscribe(t, 2).await?;
    }
    let unsuback = b.unsubscribe(&[&topics[0]]).await?;
    if cx.version == Version::V5 {
        ensure(
            unsuback.codes == [0x00],
            "UNSUBACK reason 0x00 for an existing subscription",
            || format!("{:02x?}", unsuback.codes),
        )?;
    }
    let mut a = connect_clean(&cx, "A").await?;
    for t in &topics {
        a.publish(Publish::new(t, 1, b"unsubscribe")).await?;
    }
    a.disconnect().await?;
    let got = b.collect_n(2, secs(2), millis(500)).await;
    b.disconnect().await?;
    let names: BTreeSet<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    ensure(
        got.len() == 2 && names == BTreeSet::from([topics[1].as_str(), topics[2].as_str()]),
        format!("exactly the messages on {} and {}", topics[1], topics[2]),
        || describe(&got),
    )?;
    Ok(Outcome::Pass)
}
