//! Misbehaving clients, built byte by byte.
//!
//! Every scenario here checks two things: the broker closes the offending
//! connection (judged by [`judge_close`]: nothing may be sent first in 3.1.1;
//! in 5.0 a DISCONNECT with the reason code the specification names, or a
//! bare close, which section 4.13 allows since sending the DISCONNECT is a
//! SHOULD), and it keeps serving everyone else ([`Health`]: a subscriber
//! connected before the bad input gets a message from a publisher connected
//! after it).
//!
//! Each scenario is registered once per protocol version.

use tokio::time::Instant;

use crate::client::RawClient;
use crate::common::{clean, judge_close};
use crate::rumq::Health;
use crate::scenario::{Ctx, Failure, Outcome, Scenario, ScenarioResult, ensure, secs};
use crate::wire::{
    self, Body, Packet, Properties, Publish, Sub, Version, frame, kind, prop, put_varint,
};

/// Malformed Packet.
const MALFORMED: u8 = 0x81;
/// Protocol Error.
const PROTOCOL: u8 = 0x82;
/// Keep Alive timeout.
const KEEP_ALIVE_TIMEOUT: u8 = 0x8d;
/// Topic Name invalid.
const TOPIC_INVALID: u8 = 0x90;
/// Packet too large.
const TOO_LARGE: u8 = 0x95;

macro_rules! both_versions {
    ($name:literal, $f:path, $limit:expr, $summary:literal) => {
        both_versions!($name, $f, $limit, $summary, None)
    };
    ($name:literal, $f:path, $limit:expr, $summary:literal, $diff:expr) => {
        [
            scenario!(
                concat!("v311.bad.", $name),
                Version::V311,
                $f,
                $limit,
                $summary,
                $diff
            ),
            scenario!(
                concat!("v5.bad.", $name),
                Version::V5,
                $f,
                $limit,
                $summary,
                $diff
            ),
        ]
    };
}

/// The bad-input scenarios, for both versions.
pub fn scenarios() -> Vec<Scenario> {
    [
        both_versions!("remaining-length-5-bytes", remaining_length_5_bytes, secs(20),
            "remaining length with 5 continuation bytes: close (5.0: 0x81)"),
        both_versions!("subscribe-reserved-flags", subscribe_reserved_flags, secs(20),
            "SUBSCRIBE with fixed-header flags 0 instead of 2: close (5.0: 0x81)"),
        both_versions!("publish-qos-3", publish_qos3, secs(20),
            "PUBLISH with both QoS bits set: close (5.0: 0x81)"),
        both_versions!("topic-invalid-utf8", topic_invalid_utf8, secs(20),
            "PUBLISH topic that is not UTF-8: close (5.0: 0x81)"),
        both_versions!("topic-nul", topic_nul, secs(20),
            "PUBLISH topic containing U+0000: close (5.0: 0x81)"),
        both_versions!("publish-wildcard-topic", publish_wildcard_topic, secs(20),
            "PUBLISH to a topic containing +: close (5.0: 0x82 or 0x90)"),
        both_versions!("second-connect", second_connect, secs(20),
            "a second CONNECT on a connection: close (5.0: 0x82)"),
        both_versions!("publish-before-connect", publish_before_connect, secs(20),
            "PUBLISH as the first packet: close with nothing sent"),
        both_versions!("publish-packet-id-0", publish_packet_id_0, secs(20),
            "QoS 1 PUBLISH with packet id 0: close (5.0: 0x81 or 0x82), no PUBACK"),
        both_versions!("subscribe-packet-id-0", subscribe_packet_id_0, secs(20),
            "SUBSCRIBE with packet id 0: close (5.0: 0x81 or 0x82), no SUBACK"),
        both_versions!("oversize-packet", oversize_packet, secs(20),
            "remaining length above the broker's maximum: close before the body arrives (5.0: 0x95)"),
        both_versions!("half-packet-stall", half_packet_stall, secs(40),
            "half a PUBLISH then silence: others are served meanwhile; closed within 1.5 x keep alive",
            Some("Mosquitto 2.0 checks keep alive on a coarse timer and cuts the client off \
                  late (seen 4.4 to 7.8 s for keep alive 2 s; limit 3 s + 1 s slack)")),
        both_versions!("subscribe-flood", subscribe_flood, secs(90),
            "10,000 SUBSCRIBEs without waiting: all answered or disconnected; broker stays up"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Sends `bytes` on a connection (after CONNECT when `connected`), then
/// requires the close and the health round trip.
async fn misbehave(cx: &Ctx, connected: bool, bytes: &[u8], allowed_v5: &[u8]) -> ScenarioResult {
    let health = Health::start(cx.target(), &cx.client_id("h"), &cx.topic("health")).await?;
    let mut c = if connected {
        RawClient::connect(cx.target(), &clean(cx, "X")).await?.0
    } else {
        RawClient::open(cx.target(), cx.version).await?
    };
    // A broker may close while we are still writing; the close is what we
    // look for next, so a failed write is not a failure here.
    let _ = c.send(bytes).await;
    let closed = c.expect_close(secs(5)).await?;
    let outcome = judge_close(cx.version, &closed, allowed_v5)?;
    health.check().await?;
    Ok(outcome)
}

/// [MQTT-1.5.5-1] / 3.1.1 section 2.2.3: at most four bytes of remaining
/// length.
async fn remaining_length_5_bytes(cx: Ctx) -> ScenarioResult {
    misbehave(
        &cx,
        true,
        &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
        &[MALFORMED],
    )
    .await
}

/// [MQTT-3.8.1-1]: SUBSCRIBE's reserved flags must be 0010; others are a
/// Malformed Packet (section 2.1.3).
async fn subscribe_reserved_flags(cx: Ctx) -> ScenarioResult {
    let mut bytes = wire::subscribe(
        cx.version,
        1,
        &[Sub::new(&cx.topic("t"), 0)],
        &Properties::new(),
    );
    bytes[0] = kind::SUBSCRIBE << 4;
    misbehave(&cx, true, &bytes, &[MALFORMED]).await
}

/// [MQTT-3.3.1-4]: QoS 3 is a Malformed Packet.
async fn publish_qos3(cx: Ctx) -> ScenarioResult {
    let mut p = Publish::new(&cx.topic("t"), 3, b"qos 3");
    p.pid = Some(1);
    misbehave(&cx, true, &p.encode(cx.version), &[MALFORMED]).await
}

fn raw_publish(version: Version, topic: &[u8]) -> Vec<u8> {
    let body = Body::new()
        .bin(topic)
        .props_if(version, &Properties::new())
        .raw(b"x");
    frame(kind::PUBLISH << 4, &body)
}

/// [MQTT-1.5.4-1]: ill-formed UTF-8 is a Malformed Packet.
async fn topic_invalid_utf8(cx: Ctx) -> ScenarioResult {
    let mut topic = cx.topic("bad-").into_bytes();
    topic.extend_from_slice(&[0xc3, 0x28, 0xff]);
    misbehave(&cx, true, &raw_publish(cx.version, &topic), &[MALFORMED]).await
}

/// [MQTT-1.5.4-2]: U+0000 in a string is a Malformed Packet.
async fn topic_nul(cx: Ctx) -> ScenarioResult {
    let mut topic = cx.topic("nul").into_bytes();
    topic.extend_from_slice(b"\0x");
    misbehave(&cx, true, &raw_publish(cx.version, &topic), &[MALFORMED]).await
}

/// [MQTT-3.3.2-2]: no wildcards in a PUBLISH topic. The specification does
/// not call this malformed; 0x82 (protocol error) and 0x90 (topic name
/// invalid) both fit.
async fn publish_wildcard_topic(cx: Ctx) -> ScenarioResult {
    let topic = cx.topic("+/x");
    misbehave(
        &cx,
        true,
        &raw_publish(cx.version, topic.as_bytes()),
        &[PROTOCOL, TOPIC_INVALID],
    )
    .await
}

/// [MQTT-3.1.0-2]: a second CONNECT is a protocol violation.
async fn second_connect(cx: Ctx) -> ScenarioResult {
    misbehave(&cx, true, &clean(&cx, "X").encode(), &[PROTOCOL]).await
}

/// [MQTT-3.1.0-1]: the first packet must be CONNECT; and no DISCONNECT may
/// precede a successful CONNACK ([MQTT-3.14.0-1]), so nothing may be sent.
async fn publish_before_connect(cx: Ctx) -> ScenarioResult {
    let bytes = Publish::new(&cx.topic("t"), 0, b"early").encode(cx.version);
    misbehave(&cx, false, &bytes, &[]).await
}

/// [MQTT-2.2.1-3] (5.0: [MQTT-2.2.1-3] too): QoS > 0 PUBLISH needs a
/// non-zero packet id. Not called malformed by name, hence 0x81 or 0x82.
async fn publish_packet_id_0(cx: Ctx) -> ScenarioResult {
    let mut p = Publish::new(&cx.topic("t"), 1, b"id 0");
    p.pid = Some(0);
    misbehave(&cx, true, &p.encode(cx.version), &[MALFORMED, PROTOCOL]).await
}

/// [MQTT-2.2.1-3]: SUBSCRIBE needs a non-zero packet id.
async fn subscribe_packet_id_0(cx: Ctx) -> ScenarioResult {
    let bytes = wire::subscribe(
        cx.version,
        0,
        &[Sub::new(&cx.topic("t"), 0)],
        &Properties::new(),
    );
    misbehave(&cx, true, &bytes, &[MALFORMED, PROTOCOL]).await
}

/// A PUBLISH header announcing a remaining length over the broker's maximum
/// packet size, and no body: the broker must close at once instead of
/// waiting for (and buffering) the body. In 5.0 the maximum announced in
/// CONNACK is used when present, otherwise `--max-packet-size`; 3.1.1 always
/// uses `--max-packet-size`. A broker with no limit below 268,435,455 bytes
/// may legitimately wait, and fails this scenario: configure a limit.
async fn oversize_packet(cx: Ctx) -> ScenarioResult {
    let health = Health::start(cx.target(), &cx.client_id("h"), &cx.topic("health")).await?;
    let (mut c, ack) = RawClient::connect(cx.target(), &clean(&cx, "X")).await?;
    let announced = ack.props.int_of(prop::MAXIMUM_PACKET_SIZE);
    let max = announced.unwrap_or(cx.config.max_packet_size);
    // The whole packet (header included) then exceeds `max`.
    let declared = max.min(268_435_455);
    let mut bytes = vec![kind::PUBLISH << 4];
    put_varint(&mut bytes, u64::from(declared));
    bytes.extend_from_slice(&[0, 1, b't']);
    let _ = c.send(&bytes).await;
    let closed = c.expect_close(secs(5)).await.map_err(|f| {
        f.during(&format!(
            "remaining length {declared} (broker maximum {max}, {})",
            if announced.is_some() {
                "announced in CONNACK"
            } else {
                "from --max-packet-size"
            }
        ))
    })?;
    let outcome = judge_close(cx.version, &closed, &[TOO_LARGE])?;
    health.check().await?;
    Ok(outcome)
}

/// A client sends half a PUBLISH and stalls. Others must be served while it
/// does (no statement requires that; a broker blocked on one socket is just
/// broken), and it must be cut off within 1.5 x its keep alive: half a
/// packet is not a Control Packet ([MQTT-3.1.2-24] 3.1.1 / [MQTT-3.1.2-22] 5.0).
async fn half_packet_stall(cx: Ctx) -> ScenarioResult {
    const KEEP_ALIVE: u16 = 2;
    let health = Health::start(cx.target(), &cx.client_id("h"), &cx.topic("health")).await?;
    let mut connect = clean(&cx, "X");
    connect.keep_alive = KEEP_ALIVE;
    let (mut c, _) = RawClient::connect(cx.target(), &connect).await?;
    let last_packet = Instant::now();
    let whole = Publish::new(&cx.topic("t"), 0, &[b'p'; 40]).encode(cx.version);
    c.send(&whole[..whole.len() / 2]).await?;
    health
        .check()
        .await
        .map_err(|f| f.during("while a client stalls mid-packet"))?;
    let closed = c.expect_close(secs(20)).await?;
    let after = last_packet.elapsed().as_secs_f32();
    let limit = f32::from(KEEP_ALIVE) * 1.5 + 1.0;
    ensure(
        after <= limit,
        format!("the stalled client cut off within 1.5 x {KEEP_ALIVE} s (+1 s slack)"),
        || format!("it cut off after {after:.1} s"),
    )?;
    let outcome = judge_close(
        cx.version,
        &closed,
        &[KEEP_ALIVE_TIMEOUT, MALFORMED, PROTOCOL],
    )?;
    Ok(match outcome {
        Outcome::PassNoted(n) => Outcome::PassNoted(format!("{n}, after {after:.1} s")),
        other => other,
    })
}

/// 10,000 SUBSCRIBEs sent back to back without reading in between (we do
/// read concurrently so our own socket never stalls the broker). The broker
/// may answer every one or disconnect the client; either way it stays up.
async fn subscribe_flood(cx: Ctx) -> ScenarioResult {
    const COUNT: u16 = 10_000;
    let health = Health::start(cx.target(), &cx.client_id("h"), &cx.topic("health")).await?;
    let (mut c, _) = RawClient::connect(cx.target(), &clean(&cx, "X")).await?;
    let mut bytes = Vec::new();
    for pid in 1..=COUNT {
        let filter = cx.topic(&format!("flood/{pid}"));
        bytes.extend_from_slice(&wire::subscribe(
            cx.version,
            pid,
            &[Sub::new(&filter, 0)],
            &Properties::new(),
        ));
    }
    let flood = c.flood(&bytes, secs(5), secs(60)).await;
    if let Some(e) = &flood.decode_error {
        return Err(Failure::new(
            "SUBACKs or a close",
            format!("undecodable bytes ({e})"),
        ));
    }
    let subacks: Vec<u16> = flood
        .packets
        .iter()
        .filter_map(|p| match p {
            Packet::Suback(s) => Some(s.pid),
            _ => None,
        })
        .collect();
    let others: Vec<String> = flood
        .packets
        .iter()
        .filter(|p| !matches!(p, Packet::Suback(_) | Packet::Disconnect { .. }))
        .map(|p| p.to_string())
        .collect();
    ensure(
        others.is_empty(),
        "only SUBACKs (and possibly a DISCONNECT)",
        || others.join(", "),
    )?;
    let distinct: std::collections::BTreeSet<u16> = subacks.iter().copied().collect();
    ensure(
        distinct.len() == subacks.len() && distinct.iter().all(|id| (1..=COUNT).contains(id)),
        "one SUBACK per SUBSCRIBE, each with an id we sent",
        || format!("{} SUBACKs, {} distinct ids", subacks.len(), distinct.len()),
    )?;
    let note = if subacks.len() == usize::from(COUNT) {
        c.disconnect().await.ok();
        format!("all {COUNT} answered")
    } else if flood.closed.is_some() || flood.write_error.is_some() {
        format!("disconnected after {} SUBACKs", subacks.len())
    } else {
        return Err(Failure::new(
            format!("{COUNT} SUBACKs or a disconnect"),
            format!(
                "{} SUBACKs and the connection still open{}",
                subacks.len(),
                if flood.write_stalled {
                    " (broker stopped reading)"
                } else {
                    ""
                },
            ),
        ));
    };
    health.check().await?;
    Ok(Outcome::PassNoted(note))
}
