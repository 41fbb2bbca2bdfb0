//! Protocol corner cases, byte by byte, where brokers are known to differ:
//! wills on a quick reconnect and on takeover, strings with disallowed code
//! points, acknowledgements of the wrong kind, a failed PUBREC,
//! ill-formed topic filters, and the order of an acknowledgement and the
//! deliveries it causes. Each follows the specification where it is
//! normative and Mosquitto 2.0 where the specification leaves the choice to
//! the receiver; each passes against both but the order of a QoS 1
//! acknowledgement and its delivery, where roost acknowledges first (the
//! publisher learns sooner, and with a store no delivery leaves before the
//! message is durable) and Mosquitto 2.0.11 delivers first.

use tokio::time::sleep;

use crate::client::{Closed, RawClient};
use crate::common::{clean, connect_clean, end_session, judge_close, persistent};
use crate::rumq::Health;
use crate::scenario::{Ctx, Failure, Outcome, Scenario, ScenarioResult, ensure, millis, secs};
use crate::wire::{
    self, Body, Connect, Packet, Properties, Publish, Sub, Version, Will, frame, kind, prop,
};

/// Malformed Packet.
const MALFORMED: u8 = 0x81;
/// Protocol Error.
const PROTOCOL: u8 = 0x82;

macro_rules! both_versions {
    ($name:literal, $f:path, $limit:expr, $summary:literal) => {
        both_versions!($name, $f, $limit, $summary, None)
    };
    ($name:literal, $f:path, $limit:expr, $summary:literal, $diff:expr) => {
        [
            scenario!(
                concat!("v311.corner.", $name),
                Version::V311,
                $f,
                $limit,
                $summary,
                $diff
            ),
            scenario!(
                concat!("v5.corner.", $name),
                Version::V5,
                $f,
                $limit,
                $summary,
                $diff
            ),
        ]
    };
}

/// The corner-case scenarios.
pub fn scenarios() -> Vec<Scenario> {
    let mut all: Vec<Scenario> = [
        both_versions!("takeover-will", takeover_will, secs(20),
            "takeover continuing a session: no will; takeover by a clean session: the will"),
        both_versions!("disallowed-code-points", disallowed_code_points, secs(40),
            "control characters or non-characters in a client id, user name, topic or filter: close (5.0: 0x81)"),
        both_versions!("wrong-ack-kind", wrong_ack_kind, secs(30),
            "PUBREC for QoS 1, PUBACK for QoS 2, PUBCOMP before PUBREC: close (5.0: 0x82)"),
        both_versions!("ill-formed-filter", ill_formed_filter, secs(30),
            "SUBSCRIBE or UNSUBSCRIBE of an empty or ill-formed filter: close (5.0: 0x81)"),
        both_versions!("ack-before-delivery", ack_before_delivery, secs(20),
            "a client subscribed to its own topic gets PUBACK / PUBREC before the delivery",
            Some("Mosquitto 2.0.11 sends a QoS 1 delivery before the publisher's PUBACK \
                  (it acknowledges QoS 2 with PUBREC first and delivers on PUBREL)")),
    ]
    .into_iter()
    .flatten()
    .collect();
    all.extend([
        scenario!(
            "v5.corner.will-delay-clean-reconnect",
            Version::V5,
            will_delay_clean_reconnect,
            secs(20),
            "will delay 3 s, reconnect with Clean Start 1 after 1 s: no will [MQTT-3.1.2-8]"
        ),
        scenario!(
            "v311.corner.retained-stream",
            Version::V311,
            retained_stream,
            secs(90),
            "16 MB of retained messages for a new `#` subscriber that does not read: a live QoS 1 \
             message published meanwhile arrives before the last of them; each retained one once",
            Some(
                "Mosquitto 2.0.11 queues every retained message at SUBSCRIBE, the live message \
                  behind them (and by default drops those beyond its 1,000-message queue)"
            )
        ),
        scenario!(
            "v5.corner.failed-pubrec",
            Version::V5,
            failed_pubrec,
            secs(20),
            "PUBREC 0x80, for a message in flight or an unknown id: no PUBREL [MQTT-4.3.3]"
        ),
    ]);
    all
}

/// [MQTT-3.1.2-8]: the will is not published when "a new Network
/// Connection for the ClientID is opened before the Will Delay Interval has
/// elapsed", whatever Clean Start says.
async fn will_delay_clean_reconnect(cx: Ctx) -> ScenarioResult {
    let topic = cx.topic("will");
    let mut s = connect_clean(&cx, "S").await?;
    s.subscribe(&topic, 1).await?;
    let mut connect = clean(&cx, "A");
    connect.props = Properties::new().int(prop::SESSION_EXPIRY, 30);
    connect.will = Some(Will {
        topic: topic.clone(),
        payload: b"gone".to_vec(),
        qos: 1,
        retain: false,
        props: Properties::new().int(prop::WILL_DELAY, 3),
    });
    let (a, _) = RawClient::connect(cx.target(), &connect).await?;
    drop(a);
    sleep(secs(1)).await;
    let mut again = clean(&cx, "A");
    again.props = Properties::new().int(prop::SESSION_EXPIRY, 30);
    let (a, _) = RawClient::connect(cx.target(), &again).await?;
    s.expect_no_publish(secs(4), "a new connection came within the will delay")
        .await?;
    // Session expiry 0 on the way out, so nothing stays on the broker.
    a.disconnect_with(0, &Properties::new().int(prop::SESSION_EXPIRY, 0))
        .await?;
    s.disconnect().await?;
    Ok(Outcome::Pass)
}

/// The will of a taken-over connection: a session that continues (both
/// connections persistent) has not lost its client, so no will (Mosquitto's
/// rule); a new connection with a clean session ends the session, so the
/// will goes out (the specification's takeover text, section 3.1.4).
async fn takeover_will(cx: Ctx) -> ScenarioResult {
    let topic = cx.topic("will");
    let mut s = connect_clean(&cx, "S").await?;
    s.subscribe(&topic, 1).await?;
    let with_will = |role: &str| {
        let mut c = persistent(&cx, role);
        c.will = Some(Will {
            topic: topic.clone(),
            payload: role.as_bytes().to_vec(),
            qos: 1,
            retain: false,
            props: Properties::new(),
        });
        c
    };

    let (old, _) = RawClient::connect(cx.target(), &with_will("A")).await?;
    let (new, ack) = RawClient::connect(cx.target(), &persistent(&cx, "A")).await?;
    ensure(ack.session_present, "session present 1 on takeover", || {
        "session present 0".into()
    })?;
    s.expect_no_publish(secs(1), "the session continues")
        .await
        .map_err(|f| f.during("persistent takeover"))?;
    drop((old, new));

    let (old, _) = RawClient::connect(cx.target(), &with_will("B")).await?;
    let (new, _) = RawClient::connect(cx.target(), &clean(&cx, "B")).await?;
    let will = s
        .next_publish(secs(3))
        .await
        .map_err(|f| f.during("takeover by a clean session"))?;
    ensure(will.payload == b"B", "the will of B", || {
        format!("{:?}", String::from_utf8_lossy(&will.payload))
    })?;
    drop((old, new));
    end_session(&cx, "A").await?;
    end_session(&cx, "B").await?;
    s.disconnect().await?;
    Ok(Outcome::Pass)
}

/// A CONNECT with a user name, built field by field.
fn connect_with_user(version: Version, client_id: &str, user: &str) -> Vec<u8> {
    let body = Body::new()
        .str("MQTT")
        .u8(version.level())
        .u8(0x80 | 0x02)
        .u16(60)
        .props_if(version, &Properties::new())
        .str(client_id)
        .str(user);
    frame(kind::CONNECT << 4, &body)
}

/// How a refused CONNECT may end: nothing sent (MQTT 3 has no return code
/// for malformed packets), or in 5.0 a CONNACK 0x81 (section 3.1.4 allows
/// it; Mosquitto sends nothing).
fn judge_refused_connect(version: Version, closed: &Closed) -> Result<(), Failure> {
    let ok = match (version, closed.packets.as_slice()) {
        (_, []) => true,
        (Version::V5, [Packet::Connack(a)]) => a.code == MALFORMED,
        _ => false,
    };
    ensure(
        ok,
        "the connection closed, in 5.0 at most after CONNACK 0x81",
        || format!("{:?}", closed.packets),
    )
}

/// Section 1.5.4 (1.5.3 in 3.1.1): a receiver may treat a string holding a
/// control character or a non-character as malformed. Mosquitto does, in
/// every string; roost does by default (`mqtt.allow_disallowed_code_points`).
async fn disallowed_code_points(cx: Ctx) -> ScenarioResult {
    let health = Health::start(cx.target(), &cx.client_id("h"), &cx.topic("health")).await?;
    let v = cx.version;
    for (what, bad) in [
        ("U+0001", "\u{1}"),
        ("U+007F", "\u{7f}"),
        ("U+0085", "\u{85}"),
        ("U+FFFF", "\u{ffff}"),
    ] {
        // In CONNECT: the client identifier, the user name, the will topic.
        let mut with_will = clean(&cx, "W");
        with_will.will = Some(Will {
            topic: cx.topic(&format!("w{bad}")),
            payload: b"x".to_vec(),
            ..Will::default()
        });
        let connects = [
            (
                "client id",
                Connect::new(v, &format!("{}{bad}", cx.client_id("I"))).encode(),
            ),
            (
                "user name",
                connect_with_user(v, &cx.client_id("U"), &format!("u{bad}")),
            ),
            ("will topic", with_will.encode()),
        ];
        for (field, bytes) in connects {
            let step = format!("{what} in the {field}");
            let mut c = RawClient::open(cx.target(), v).await?;
            let _ = c.send(&bytes).await;
            let closed = c.expect_close(secs(5)).await.map_err(|f| f.during(&step))?;
            judge_refused_connect(v, &closed).map_err(|f| f.during(&step))?;
        }
        // After CONNECT: a topic, a filter, an unsubscribe filter, and in
        // 5.0 a string property.
        let qos1 = |topic: &str, props: Properties| {
            let mut p = Publish::new(topic, 1, b"x").with_props(props);
            p.pid = Some(1);
            p.encode(v)
        };
        let filter = cx.topic(&format!("f{bad}"));
        let mut packets = vec![
            (
                "topic",
                qos1(&cx.topic(&format!("t{bad}")), Properties::new()),
            ),
            (
                "filter",
                wire::subscribe(v, 2, &[Sub::new(&filter, 0)], &Properties::new()),
            ),
            ("unsubscribe filter", wire::unsubscribe(v, 3, &[&filter])),
        ];
        if v == Version::V5 {
            let props = Properties::new().user("k", &format!("v{bad}"));
            packets.push(("user property", qos1(&cx.topic("t"), props)));
        }
        for (field, bytes) in packets {
            let step = format!("{what} in the {field}");
            let (mut c, _) = RawClient::connect(cx.target(), &clean(&cx, "X")).await?;
            let _ = c.send(&bytes).await;
            let closed = c.expect_close(secs(5)).await.map_err(|f| f.during(&step))?;
            judge_close(v, &closed, &[MALFORMED]).map_err(|f| f.during(&step))?;
        }
    }
    health.check().await?;
    Ok(Outcome::Pass)
}

/// Section 4.3: PUBREC answers only QoS 2, PUBACK only QoS 1, and PUBCOMP
/// only a PUBREL. Acknowledging a message with the wrong kind is a protocol
/// error; Mosquitto closes the connection.
async fn wrong_ack_kind(cx: Ctx) -> ScenarioResult {
    let v = cx.version;
    let mut notes = Vec::new();
    for (what, qos, wrong) in [
        ("PUBREC for QoS 1", 1, kind::PUBREC),
        ("PUBCOMP for QoS 1", 1, kind::PUBCOMP),
        ("PUBACK for QoS 2", 2, kind::PUBACK),
        ("PUBCOMP before PUBREC", 2, kind::PUBCOMP),
    ] {
        let topic = cx.topic("t");
        let (mut s, _) = RawClient::connect(cx.target(), &clean(&cx, "S")).await?;
        s.auto_ack = false;
        s.subscribe(&topic, qos).await?;
        let mut p = connect_clean(&cx, "P").await?;
        p.publish(Publish::new(&topic, qos, b"x")).await?;
        p.disconnect().await?;
        let got = s.next_publish(secs(5)).await.map_err(|f| f.during(what))?;
        let pid = got.pid.unwrap_or(1);
        s.send(&wire::ack(v, wrong, pid, 0)).await?;
        let closed = s.expect_close(secs(5)).await.map_err(|f| f.during(what))?;
        let outcome = judge_close(v, &closed, &[PROTOCOL]).map_err(|f| f.during(what))?;
        if let Outcome::PassNoted(n) = outcome {
            notes.push(format!("{what}: {n}"));
        }
    }
    Ok(Outcome::PassNoted(notes.join("; ")))
}

/// A client subscribed to a topic publishes to it at QoS 1 and at QoS 2:
/// the acknowledgement of its PUBLISH comes first, then the delivery
/// (Mosquitto's order; with a store, no delivery may leave before the
/// message is durable, and the acknowledgement says it is).
async fn ack_before_delivery(cx: Ctx) -> ScenarioResult {
    let topic = cx.topic("t");
    let (mut c, _) = RawClient::connect(cx.target(), &clean(&cx, "C")).await?;
    c.auto_ack = false;
    c.subscribe(&topic, 2).await?;
    for qos in [1u8, 2] {
        let what = format!("QoS {qos}");
        let mut publish = Publish::new(&topic, qos, b"x");
        let pid = c.pid();
        publish.pid = Some(pid);
        c.send(&publish.encode(cx.version)).await?;
        let first = c
            .recv(secs(5))
            .await
            .map_err(|e| Failure::new(format!("the acknowledgement ({what})"), e.to_string()))?;
        let ack = if qos == 1 { kind::PUBACK } else { kind::PUBREC };
        match &first {
            Packet::Ack(a) if a.kind == ack && a.pid == pid => {}
            other => {
                return Err(Failure::new(
                    format!(
                        "{} for packet id {pid} first ({what})",
                        if qos == 1 { "PUBACK" } else { "PUBREC" }
                    ),
                    other.to_string(),
                ));
            }
        }
        let got = c.next_publish(secs(5)).await.map_err(|f| f.during(&what))?;
        // QoS 1 leaves nothing in flight for the next round; after QoS 2,
        // the last, the connection ends.
        c.ack_publish(&got).await?;
    }
    c.disconnect().await?;
    Ok(Outcome::Pass)
}

/// [MQTT-4.3.3]: the sender answers a PUBREC with PUBREL only when its
/// reason code is below 0x80; a failed PUBREC ends the flow. For an unknown
/// packet identifier there is no flow to release either.
async fn failed_pubrec(cx: Ctx) -> ScenarioResult {
    let topic = cx.topic("t");
    let (mut s, _) = RawClient::connect(cx.target(), &clean(&cx, "S")).await?;
    s.auto_ack = false;
    s.subscribe(&topic, 2).await?;
    let mut p = connect_clean(&cx, "P").await?;
    p.publish(Publish::new(&topic, 2, b"x")).await?;
    p.disconnect().await?;
    let got = s.next_publish(secs(5)).await?;
    let pid = got.pid.unwrap_or(1);
    for (what, id) in [("in flight", pid), ("unknown", pid.wrapping_add(100))] {
        s.send(&wire::ack(Version::V5, kind::PUBREC, id, 0x80))
            .await?;
        let rel = s
            .wait_for(millis(1000), "PUBREL", |p| match p {
                Packet::Ack(a) if a.kind == kind::PUBREL => Some(a.clone()),
                _ => None,
            })
            .await;
        if let Ok(rel) = rel {
            return Err(Failure::new(
                format!("no PUBREL after PUBREC 0x80 for a packet id {what}"),
                format!("PUBREL {} (0x{:02x})", rel.pid, rel.code),
            ));
        }
        s.ping().await.map_err(|f| f.during(what))?;
    }
    s.disconnect().await?;
    Ok(Outcome::Pass)
}

/// An empty filter [MQTT-4.7.3-1] or a misplaced wildcard (section 4.7.1)
/// is not a well-formed filter: a Malformed Packet (0x81), which 0x8F Topic
/// Filter invalid ("correctly formed, but not accepted") is not.
async fn ill_formed_filter(cx: Ctx) -> ScenarioResult {
    let v = cx.version;
    let mut notes = Vec::new();
    for filter in ["", "a/#/b", "a/b+"] {
        for unsubscribe in [false, true] {
            let what = format!(
                "{} {filter:?}",
                if unsubscribe {
                    "UNSUBSCRIBE"
                } else {
                    "SUBSCRIBE"
                }
            );
            let bytes = if unsubscribe {
                wire::unsubscribe(v, 1, &[filter])
            } else {
                wire::subscribe(v, 1, &[Sub::new(filter, 0)], &Properties::new())
            };
            let (mut c, _) = RawClient::connect(cx.target(), &clean(&cx, "X")).await?;
            let _ = c.send(&bytes).await;
            let closed = c.expect_close(secs(5)).await.map_err(|f| f.during(&what))?;
            if let Outcome::PassNoted(n) =
                judge_close(v, &closed, &[MALFORMED]).map_err(|f| f.during(&what))?
            {
                notes.push(n);
            }
        }
    }
    notes.dedup();
    Ok(Outcome::PassNoted(notes.join("; ")))
}

/// Retained messages for a new subscription stream behind live traffic: a
/// subscriber that is sent more retained messages than the broker's output
/// buffer and the sockets between hold still gets a live message without
/// waiting for all of them, and every retained message exactly once.
async fn retained_stream(cx: Ctx) -> ScenarioResult {
    const COUNT: usize = 4000;
    let topic = cx.topic("stream");
    let name = |i: usize| format!("{topic}/r/{i:04}");
    let payload = vec![b'r'; 4096];
    let mut p = connect_clean(&cx, "P").await?;
    for chunk in (0..COUNT).collect::<Vec<_>>().chunks(100) {
        let mut bytes = Vec::new();
        for &i in chunk {
            bytes.extend(
                Publish::new(&name(i), 0, &payload)
                    .retained()
                    .encode(cx.version),
            );
        }
        p.send(&bytes).await?;
    }
    p.ping().await?;
    let mut s = connect_clean(&cx, "S").await?;
    s.subscribe(&format!("{topic}/#"), 1).await?;
    // Not reading: the broker's buffer and the sockets fill, and the live
    // message finds the subscriber's connection blocked.
    sleep(millis(500)).await;
    let live = format!("{topic}/live");
    p.publish(Publish::new(&live, 1, b"live")).await?;
    let got = s.collect_n(COUNT + 1, secs(60), millis(500)).await;
    // Clear the retained messages again, whatever the verdict.
    for chunk in (0..COUNT).collect::<Vec<_>>().chunks(100) {
        let mut bytes = Vec::new();
        for &i in chunk {
            bytes.extend(Publish::new(&name(i), 0, b"").retained().encode(cx.version));
        }
        p.send(&bytes).await?;
    }
    p.ping().await?;
    let at = got.iter().position(|m| m.topic == live);
    let retained: Vec<&Publish> = got.iter().filter(|m| m.topic != live).collect();
    ensure(
        retained.len() == COUNT && retained.iter().all(|m| m.retain),
        format!("{COUNT} retained messages, RETAIN set"),
        || format!("{} messages besides the live one", retained.len()),
    )?;
    let mut topics: Vec<&str> = retained.iter().map(|m| m.topic.as_str()).collect();
    topics.sort_unstable();
    topics.dedup();
    ensure(topics.len() == COUNT, "each retained message once", || {
        format!("{} distinct topics", topics.len())
    })?;
    ensure(
        at.is_some_and(|at| at < COUNT),
        "the live message before the last retained one",
        || match at {
            Some(at) => format!("it came at position {at} of {}", got.len()),
            None => "it never came".into(),
        },
    )?;
    s.disconnect().await?;
    p.disconnect().await?;
    Ok(Outcome::Pass)
}
