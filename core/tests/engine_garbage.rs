//! Hostile input: several connections feed one engine arbitrary bytes and
//! arbitrary valid packets in arbitrary order (before CONNECT, twice,
//! server-only packets, split anywhere), with random time jumps and
//! transport drops. The engine must never panic, must only ever address
//! connections that exist, must emit only whole well-formed packets, and
//! everything a client can grow must stay within the configured limits.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use roost_core::MqttStr;
use roost_core::broker::{Action, Broker, Config, ConnId, ConnInfo, Instant, Limits};
use roost_core::codec::*;
use roost_core::topic::{TopicFilter, TopicName};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

const CLIENT_IDS: [&str; 4] = ["", "a", "b", "c"];
const TOPICS: [&str; 5] = ["t", "t/x", "u/x/y", "$SYS/x", "t/x/y/z"];
const FILTERS: [&str; 7] = ["t", "t/+", "#", "+/x/#", "$share/g/t/#", "$SYS/#", "u/x/y"];
const CONNS: usize = 4;

fn limits() -> Limits {
    Limits {
        max_packet_size: 512,
        max_inflight: 2,
        max_queued_messages: 5,
        max_queued_bytes: 300,
        queue_qos0_offline: true,
        max_topic_levels: 3,
        max_subscriptions_per_client: 3,
        max_connections: 3,
        max_retained_messages: 4,
        connect_timeout: Duration::from_secs(5),
        max_keepalive: Some(30),
        ..Limits::default()
    }
}

fn config() -> Config {
    Config {
        limits: limits(),
        receive_maximum: 3,
        topic_alias_maximum: 2,
        sys_interval: Some(Duration::from_secs(7)),
        ..Config::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A new transport connection, usually sending a CONNECT at once.
    Open(Option<Box<Packet>>),
    /// Arbitrary bytes on connection `conn % open`.
    Bytes(usize, Vec<u8>),
    /// A valid packet, encoded for `protocol` (by default the one of the
    /// connection's last CONNECT), split at `split` (if inside).
    Packet(usize, Option<Protocol>, Box<Packet>, usize),
    /// The transport dies.
    Closed(usize),
    /// The clock jumps (ms); the engine's timeout is called at the new time.
    Advance(u64),
    /// The clock goes exactly to the engine's next deadline.
    ToDeadline,
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::V3_1),
        Just(Protocol::V3_1_1),
        Just(Protocol::V5)
    ]
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn pid() -> impl Strategy<Value = PacketId> {
    (1u16..6).prop_map(|n| PacketId::new(n).unwrap())
}

fn reason() -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(vec![
        ReasonCode::Success,
        ReasonCode::DisconnectWithWillMessage,
        ReasonCode::UnspecifiedError,
        ReasonCode::ContinueAuthentication,
        ReasonCode::NoMatchingSubscribers,
    ])
}

fn topic() -> impl Strategy<Value = TopicName> {
    proptest::sample::select(&TOPICS[..]).prop_map(|t| TopicName::copy_from_str(t).unwrap())
}

fn filter() -> impl Strategy<Value = TopicFilter> {
    proptest::sample::select(&FILTERS[..]).prop_map(|f| TopicFilter::copy_from_str(f).unwrap())
}

fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from),
    ]
}

fn connect_packet() -> impl Strategy<Value = Packet> {
    (
        protocol(),
        any::<bool>(),
        prop_oneof![Just(0u16), Just(1), Just(60)],
        proptest::sample::select(&CLIENT_IDS[..]),
        proptest::option::of((topic(), payload(), qos(), any::<bool>(), 0u32..3)),
        proptest::option::of(prop_oneof![Just(0u32), Just(3), Just(u32::MAX)]),
        proptest::option::of(1u16..3),
        any::<bool>(),
    )
        .prop_map(
            |(protocol, clean_start, keep_alive, id, will, expiry, receive_max, auth)| {
                let v5 = protocol == Protocol::V5;
                let mut properties = ConnectProperties::default();
                if v5 {
                    properties.session_expiry_interval = expiry;
                    properties.receive_maximum = receive_max.and_then(NonZeroU16::new);
                    properties.topic_alias_maximum = Some(2);
                    properties.maximum_packet_size = NonZeroU32::new(100);
                    if auth {
                        properties.authentication_method = Some(MqttStr::from_static("x"));
                    }
                }
                Packet::Connect(Box::new(Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    client_id: MqttStr::copy_from_str(id).unwrap(),
                    will: will.map(|(topic, payload, qos, retain, delay)| Will {
                        topic,
                        payload,
                        qos,
                        retain,
                        properties: WillProperties {
                            will_delay_interval: (v5 && delay > 0).then_some(delay),
                            ..Default::default()
                        },
                    }),
                    username: None,
                    password: None,
                    properties,
                }))
            },
        )
}

fn publish_packet() -> impl Strategy<Value = Packet> {
    (
        topic(),
        qos(),
        pid(),
        any::<bool>(),
        any::<bool>(),
        payload(),
        proptest::option::weighted(0.2, 1u16..4),
        proptest::option::of(0u32..3),
        proptest::bool::weighted(0.1),
    )
        .prop_map(
            |(topic, qos, pid, dup, retain, payload, alias, expiry, empty_topic)| {
                let mut properties = PublishProperties {
                    topic_alias: alias.and_then(NonZeroU16::new),
                    message_expiry_interval: expiry,
                    ..Default::default()
                };
                if empty_topic && properties.topic_alias.is_none() {
                    properties.topic_alias = NonZeroU16::new(1);
                }
                Packet::Publish(Publish {
                    dup: dup && qos != QoS::AtMostOnce,
                    qos: QosPid::new(qos, pid),
                    retain,
                    topic: if empty_topic {
                        TopicName::default()
                    } else {
                        topic
                    },
                    payload,
                    properties,
                })
            },
        )
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        1 => connect_packet(),
        8 => publish_packet(),
        2 => (pid(), reason()).prop_map(|(p, r)| Packet::PubAck(PubResponse { reason: r, ..PubResponse::new(p) })),
        2 => pid().prop_map(|p| Packet::PubRec(PubResponse::new(p))),
        2 => pid().prop_map(|p| Packet::PubRel(PubResponse::new(p))),
        2 => pid().prop_map(|p| Packet::PubComp(PubResponse::new(p))),
        4 => (pid(), proptest::collection::vec((filter(), qos(), any::<bool>(), any::<bool>(), 0u8..3), 1..4), proptest::option::of(1u32..3))
            .prop_map(|(packet_id, subs, id)| Packet::Subscribe(Subscribe {
                packet_id,
                subscriptions: subs.into_iter().map(|(filter, qos, no_local, rap, rh)| Subscription {
                    filter,
                    options: SubscriptionOptions {
                        qos,
                        no_local,
                        retain_as_published: rap,
                        retain_handling: match rh {
                            0 => RetainHandling::SendOnSubscribe,
                            1 => RetainHandling::SendIfNew,
                            _ => RetainHandling::DoNotSend,
                        },
                    },
                }).collect(),
                properties: SubscribeProperties {
                    subscription_identifier: id.and_then(NonZeroU32::new),
                    ..Default::default()
                },
            })),
        1 => (pid(), proptest::collection::vec(filter(), 1..3)).prop_map(|(packet_id, filters)| {
            Packet::Unsubscribe(Unsubscribe { packet_id, filters, properties: Default::default() })
        }),
        1 => Just(Packet::PingReq),
        1 => Just(Packet::PingResp),
        1 => (reason(), proptest::option::of(prop_oneof![Just(0u32), Just(5)])).prop_map(|(r, expiry)| {
            let mut d = Disconnect::new(r);
            d.properties.session_expiry_interval = expiry;
            Packet::Disconnect(d)
        }),
        1 => reason().prop_map(|r| Packet::Auth(Box::new(Auth {
            reason: r,
            properties: AuthProperties {
                authentication_method: Some(MqttStr::from_static("x")),
                ..Default::default()
            },
        }))),
        1 => Just(Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: Default::default(),
        }))),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => proptest::option::weighted(0.8, connect_packet()).prop_map(|c| Op::Open(c.map(Box::new))),
        1 => (0..CONNS, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(c, b)| Op::Bytes(c, b)),
        12 => (0..CONNS, proptest::option::weighted(0.1, protocol()), packet(), 0usize..40)
            .prop_map(|(c, p, pk, s)| Op::Packet(c, p, Box::new(pk), s)),
        1 => (0..CONNS).prop_map(Op::Closed),
        2 => prop_oneof![Just(1u64), 0u64..2_000, 0u64..60_000].prop_map(Op::Advance),
        1 => Just(Op::ToDeadline),
    ]
}

struct Driver {
    broker: Broker,
    now: Instant,
    /// Open connections (as the engine should see them), oldest first.
    open: Vec<ConnId>,
    closed: BTreeSet<ConnId>,
    /// Output per connection, for well-formedness checks.
    inbox: BTreeMap<ConnId, BytesMut>,
    empty_id_connects: usize,
    /// The protocol of each connection's last CONNECT.
    protocols: BTreeMap<ConnId, Protocol>,
}

impl Driver {
    fn pick(&self, i: usize) -> Option<ConnId> {
        (!self.open.is_empty()).then(|| self.open[i % self.open.len()])
    }

    fn drain(&mut self) -> Result<(), TestCaseError> {
        while let Some(action) = self.broker.poll_action() {
            match action {
                Action::Send { conn, bytes } => {
                    prop_assert!(self.open.contains(&conn), "Send to {conn}, not open");
                    prop_assert!(!bytes.is_empty(), "empty Send");
                    let inbox = self.inbox.entry(conn).or_default();
                    inbox.extend_from_slice(&bytes);
                    // Whole, well-formed packets in 3.1.1 or 5.0 form.
                    let whole = |protocol| {
                        let mut buf = inbox.clone();
                        while !buf.is_empty() {
                            match decode(&mut buf, protocol, usize::MAX) {
                                Ok(Some(_)) => {}
                                _ => return false,
                            }
                        }
                        true
                    };
                    prop_assert!(
                        whole(Protocol::V5) || whole(Protocol::V3_1_1),
                        "malformed output to {conn}: {:?}",
                        inbox
                    );
                    inbox.clear();
                }
                Action::Close { conn, .. } => {
                    prop_assert!(self.open.contains(&conn), "Close of {conn}, not open");
                    self.open.retain(|c| *c != conn);
                    self.closed.insert(conn);
                }
                Action::Deliver { .. } | Action::Event(_) => {}
                other => prop_assert!(false, "unexpected action {other:?}"),
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let b = &self.broker;
        let l = limits();
        prop_assert_eq!(b.connection_count(), self.open.len());
        prop_assert!(b.connected_count() <= l.max_connections);
        prop_assert!(b.session_count() <= CLIENT_IDS.len() + self.empty_id_connects);
        prop_assert!(b.retained_count() <= l.max_retained_messages);
        prop_assert!(b.subscription_count() <= b.session_count() * l.max_subscriptions_per_client);
        // Connections, sessions and $SYS: one timer each at most.
        prop_assert!(b.timer_count() <= b.connection_count() + b.session_count() + 1);
        for id in CLIENT_IDS {
            prop_assert!(b.queued_count(id) <= l.max_queued_messages);
            prop_assert!(b.inflight_count(id) <= usize::from(l.max_inflight));
        }
        if let Some(at) = b.poll_timeout() {
            prop_assert!(
                at > self.now,
                "deadline {at:?} not after now {:?}",
                self.now
            );
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Open(connect) => {
                let id = self.broker.handle_open(self.now, ConnInfo::default());
                prop_assert!(!self.open.contains(&id) && !self.closed.contains(&id));
                self.open.push(id);
                if let Some(connect) = connect {
                    let i = self.open.len() - 1;
                    return self.apply(&Op::Packet(i, None, connect.clone(), usize::MAX));
                }
            }
            Op::Bytes(i, bytes) => {
                if let Some(c) = self.pick(*i) {
                    self.broker.handle_bytes(self.now, c, bytes);
                }
            }
            Op::Packet(i, protocol, packet, split) => {
                if let Some(c) = self.pick(*i) {
                    if let Packet::Connect(connect) = &**packet {
                        self.empty_id_connects += usize::from(connect.client_id.is_empty());
                        self.protocols.insert(c, connect.protocol);
                    }
                    let protocol = protocol
                        .or_else(|| self.protocols.get(&c).copied())
                        .unwrap_or(Protocol::V3_1_1);
                    let mut buf = BytesMut::new();
                    if packet.encode(protocol, &mut buf).is_ok() {
                        let split = (*split).min(buf.len());
                        self.broker.handle_bytes(self.now, c, &buf[..split]);
                        self.drain()?;
                        self.broker.handle_bytes(self.now, c, &buf[split..]);
                    }
                }
            }
            Op::Closed(i) => {
                if let Some(c) = self.pick(*i) {
                    self.broker.handle_closed(self.now, c);
                    self.open.retain(|x| *x != c);
                    self.closed.insert(c);
                }
            }
            Op::Advance(ms) => {
                self.now = self.now + Duration::from_millis(*ms);
                self.broker.handle_timeout(self.now);
            }
            Op::ToDeadline => {
                if let Some(at) = self.broker.poll_timeout() {
                    self.now = self.now.max(at);
                }
                self.broker.handle_timeout(self.now);
            }
        }
        self.drain()?;
        // Time may not have moved: a timeout call at `now` settles what is
        // due, so the next deadline must be in the future.
        self.broker.handle_timeout(self.now);
        self.drain()?;
        self.check()
    }
}

thread_local! {
    /// Totals over the cases run on this thread (connections accepted,
    /// PUBLISHes sent), to show the generator gets somewhere.
    static TOTALS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut d = Driver {
        broker: Broker::new(config(), Instant::ZERO),
        now: Instant::ZERO,
        open: Vec::new(),
        closed: BTreeSet::new(),
        inbox: BTreeMap::new(),
        empty_id_connects: 0,
        protocols: BTreeMap::new(),
    };
    for op in ops {
        d.apply(op)?;
    }
    let stats = d.broker.stats();
    TOTALS.with(|t| {
        let (a, s) = t.get();
        t.set((a + stats.connections_total, s + stats.messages_sent));
    });
    // Every transport ends; then nothing is connected.
    for c in d.open.clone() {
        d.apply(&Op::Closed(
            d.open.iter().position(|x| *x == c).unwrap_or(0),
        ))?;
    }
    d.apply(&Op::Advance(3_600_000))?;
    prop_assert_eq!(d.broker.connection_count(), 0);
    prop_assert_eq!(d.broker.connected_count(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_survives_garbage(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops)?;
    }
}

/// Pure noise on connections that never send CONNECT: closed on the first
/// invalid byte or at the connect timeout, never answered with anything
/// but a CONNACK refusal.
#[test]
fn noise_before_connect_only_closes() {
    let ops: Vec<Op> = (0..=255u8)
        .flat_map(|b| {
            [
                Op::Open(None),
                Op::Bytes(0, vec![b, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            ]
        })
        .chain([Op::Advance(10_000)])
        .collect();
    run(&ops).unwrap();
}

/// The generator is not vacuous: its cases get clients connected and
/// messages delivered.
#[test]
fn garbage_cases_reach_connected_clients() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = proptest::collection::vec(op(), 1..60);
    for _ in 0..200 {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        run(&ops).unwrap();
    }
    let (accepted, sent) = TOTALS.with(Cell::get);
    eprintln!("200 cases: {accepted} connections accepted, {sent} PUBLISHes sent");
    assert!(
        // Most connections die of their garbage (protocol errors, bad
        // topics, keep-alive); enough live long enough to receive.
        accepted > 200 && sent > 50,
        "accepted {accepted}, sent {sent}"
    );
}
