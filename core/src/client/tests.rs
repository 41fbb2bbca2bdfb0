//! The client engine against the broker engine, in-process, on a virtual
//! clock: the client's transmit is the broker's input and back.

use super::*;
use crate::broker::{Action, Broker, Config, ConnId, ConnInfo, LocalSubscription};
use crate::topic::{TopicFilter, TopicName};
use alloc::string::ToString;
use alloc::vec;

struct Pair {
    broker: Broker,
    client: Client,
    conn: Option<ConnId>,
    now: Instant,
    /// Drop what the broker sends (a cut cable) while set.
    deaf: bool,
    deliveries: Vec<(LocalSubscription, Message)>,
    events: Vec<ClientEvent>,
    /// Every packet type byte the client sent, in order.
    sent: Vec<u8>,
}

impl Pair {
    fn new(config: ClientConfig) -> Self {
        let broker = Broker::new(
            Config {
                sys_interval: None,
                ..Config::default()
            },
            Instant::ZERO,
        );
        Pair {
            broker,
            client: Client::new(config),
            conn: None,
            now: Instant::ZERO,
            deaf: false,
            deliveries: Vec::new(),
            events: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn connect(&mut self) {
        let conn = self.broker.handle_open(self.now, ConnInfo::default());
        self.conn = Some(conn);
        self.client.handle_connected(self.now);
        self.settle();
    }

    /// Moves bytes both ways until neither side has anything to say.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            while let Some(bytes) = self.client.poll_transmit() {
                moved = true;
                self.record_sent(&bytes);
                if let Some(conn) = self.conn {
                    self.broker.handle_bytes(self.now, conn, &bytes);
                }
            }
            while let Some(action) = self.broker.poll_action() {
                match action {
                    Action::Send { conn, bytes } if Some(conn) == self.conn => {
                        moved = true;
                        if !self.deaf {
                            self.client.handle_bytes(self.now, &bytes);
                        }
                    }
                    Action::Close { conn, .. } if Some(conn) == self.conn => {
                        self.conn = None;
                        self.client.handle_closed(self.now);
                    }
                    Action::Deliver {
                        subscription,
                        message,
                    } => self.deliveries.push((subscription, message)),
                    _ => {}
                }
            }
            while let Some(event) = self.client.poll_event() {
                if let ClientEvent::Disconnected(r) = event {
                    if r != DisconnectReason::TransportClosed {
                        if let Some(conn) = self.conn.take() {
                            self.broker.handle_closed(self.now, conn);
                        }
                    }
                }
                self.events.push(event);
            }
            if !moved {
                break;
            }
        }
    }

    fn record_sent(&mut self, mut bytes: &[u8]) {
        // Packet types, walking the frames (all whole: one transmit is whole
        // packets).
        while let Ok(Some(h)) = crate::codec::FrameHeader::decode(bytes, Protocol::V5, usize::MAX) {
            self.sent.push(bytes[0]);
            bytes = &bytes[h.total_len().min(bytes.len())..];
        }
    }

    /// The transport dies under both sides.
    fn cut(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.broker.handle_closed(self.now, conn);
        }
        self.client.handle_closed(self.now);
        self.settle();
    }

    /// Jumps the clock to the client's next deadline (the broker's
    /// deadlines on the way are served too).
    fn advance_to_next_deadline(&mut self) {
        let next = self.client.poll_timeout().expect("a deadline");
        while let Some(at) = self.broker.poll_timeout().filter(|&at| at < next) {
            self.now = self.now.max(at);
            self.broker.handle_timeout(self.now);
            self.settle();
        }
        self.now = self.now.max(next);
        self.client.handle_timeout(self.now);
        self.broker.handle_timeout(self.now);
        self.settle();
    }

    fn take_events(&mut self) -> Vec<ClientEvent> {
        core::mem::take(&mut self.events)
    }
}

fn message(topic: &str, payload: &str, qos: QoS) -> Message {
    Message {
        topic: TopicName::copy_from_str(topic).unwrap(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain: false,
        properties: PublishProperties::default(),
    }
}

fn config(protocol: Protocol) -> ClientConfig {
    ClientConfig {
        protocol,
        ..ClientConfig::new(MqttStr::from_static("bridge-1"))
    }
}

fn persistent(protocol: Protocol) -> ClientConfig {
    ClientConfig {
        clean_start: false,
        session_expiry: 3600,
        ..config(protocol)
    }
}

fn payloads(deliveries: &[(LocalSubscription, Message)]) -> Vec<alloc::string::String> {
    deliveries
        .iter()
        .map(|(_, m)| core::str::from_utf8(&m.payload).unwrap().to_string())
        .collect()
}

#[test]
fn connects_and_publishes_at_every_qos() {
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut pair = Pair::new(config(protocol));
        let _sub = pair
            .broker
            .subscribe(pair.now, TopicFilter::from_static("t/#"));
        pair.connect();
        assert_eq!(
            pair.take_events(),
            vec![ClientEvent::Connected {
                session_present: false
            }]
        );
        assert!(pair.client.is_connected());
        let ids: Vec<_> = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
            .map(|(i, qos)| {
                pair.client
                    .publish(pair.now, message("t/a", &i.to_string(), qos))
                    .unwrap()
            })
            .collect();
        pair.settle();
        assert_eq!(payloads(&pair.deliveries), ["0", "1", "2"], "{protocol:?}");
        let qos: Vec<_> = pair.deliveries.iter().map(|(_, m)| m.qos).collect();
        assert_eq!(qos, [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]);
        // QoS 1 and 2 are acknowledged completely; QoS 0 never is.
        assert_eq!(
            pair.take_events(),
            vec![ClientEvent::Acked(ids[1]), ClientEvent::Acked(ids[2])]
        );
        assert_eq!(pair.client.inflight(), 0);
    }
}

#[test]
fn subscribes_and_receives_at_every_qos() {
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut pair = Pair::new(ClientConfig {
            subscriptions: vec![subscription(
                TopicFilter::from_static("cmd/#"),
                QoS::ExactlyOnce,
                false,
            )],
            ..config(protocol)
        });
        pair.connect();
        let events = pair.take_events();
        assert_eq!(
            events[1],
            ClientEvent::Subscribed(vec![Ok(QoS::ExactlyOnce)])
        );
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            pair.broker
                .publish(pair.now, message("cmd/x", &i.to_string(), qos));
            pair.settle();
        }
        let got: Vec<_> = pair
            .take_events()
            .into_iter()
            .map(|e| match e {
                ClientEvent::Message(m, _) => (m.qos, m.payload),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (QoS::AtMostOnce, Bytes::from_static(b"0")),
                (QoS::AtLeastOnce, Bytes::from_static(b"1")),
                (QoS::ExactlyOnce, Bytes::from_static(b"2")),
            ]
        );
        // The client completed every flow: the broker holds nothing.
        assert_eq!(pair.broker.inflight_count("bridge-1"), 0);
    }
}

#[test]
fn queues_while_down_and_drains_in_order_on_connect() {
    let mut pair = Pair::new(config(Protocol::V5));
    let _sub = pair
        .broker
        .subscribe(pair.now, TopicFilter::from_static("t"));
    for i in 0..50 {
        pair.client
            .publish(pair.now, message("t", &i.to_string(), QoS::AtLeastOnce))
            .unwrap();
    }
    // QoS 0 cannot wait: dropped and counted.
    assert_eq!(
        pair.client
            .publish(pair.now, message("t", "zero", QoS::AtMostOnce)),
        Err(PublishError::NotConnected)
    );
    assert_eq!(pair.client.dropped(), 1);
    assert_eq!(pair.client.queued(), 50);
    pair.connect();
    let expected: Vec<_> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(payloads(&pair.deliveries), expected);
    assert_eq!(pair.client.queued(), 0);
    assert_eq!(pair.client.inflight(), 0);
}

#[test]
fn queue_is_bounded_by_count_and_bytes() {
    let mut pair = Pair::new(ClientConfig {
        max_queued: 3,
        max_queued_bytes: 1000,
        ..config(Protocol::V5)
    });
    for _ in 0..3 {
        pair.client
            .publish(pair.now, message("t", "x", QoS::AtLeastOnce))
            .unwrap();
    }
    assert_eq!(
        pair.client
            .publish(pair.now, message("t", "x", QoS::AtLeastOnce)),
        Err(PublishError::QueueFull)
    );
    let mut pair2 = Pair::new(ClientConfig {
        max_queued: 100,
        max_queued_bytes: 10,
        ..config(Protocol::V5)
    });
    pair2
        .client
        .publish(pair2.now, message("t", "123456", QoS::AtLeastOnce))
        .unwrap();
    assert_eq!(
        pair2
            .client
            .publish(pair2.now, message("t", "123456", QoS::AtLeastOnce)),
        Err(PublishError::QueueFull)
    );
    assert_eq!(pair.client.dropped(), 1);
    assert_eq!(pair2.client.dropped(), 1);
}

#[test]
fn inflight_window_limits_what_is_sent() {
    let mut pair = Pair::new(ClientConfig {
        max_inflight: 2,
        ..config(Protocol::V5)
    });
    pair.connect();
    pair.deaf = true; // no acknowledgement comes back
    for i in 0..5 {
        pair.client
            .publish(pair.now, message("t", &i.to_string(), QoS::AtLeastOnce))
            .unwrap();
    }
    pair.settle();
    assert_eq!(pair.client.inflight(), 2);
    assert_eq!(pair.client.queued(), 3);
}

#[test]
fn resends_with_dup_when_the_session_resumes() {
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut pair = Pair::new(persistent(protocol));
            let _sub = pair
                .broker
                .subscribe(pair.now, TopicFilter::from_static("t"));
            pair.connect();
            pair.take_events();
            // The broker gets the PUBLISH, its acknowledgement is lost.
            pair.deaf = true;
            let id = pair
                .client
                .publish(pair.now, message("t", "m", qos))
                .unwrap();
            pair.settle();
            assert_eq!(payloads(&pair.deliveries), ["m"]);
            pair.cut();
            pair.deaf = false;
            pair.sent.clear();
            pair.connect();
            let events = pair.take_events();
            assert_eq!(
                events[0],
                ClientEvent::Disconnected(DisconnectReason::TransportClosed)
            );
            assert_eq!(
                events[1],
                ClientEvent::Connected {
                    session_present: true
                }
            );
            assert_eq!(events[2], ClientEvent::Acked(id), "{protocol:?} {qos:?}");
            // CONNECT, then the PUBLISH again with DUP (0x08) set.
            assert_eq!(pair.sent[0] >> 4, 1);
            assert_eq!(pair.sent[1] & 0xF8, 0x38, "{protocol:?} {qos:?}");
            // QoS 2 is delivered exactly once; QoS 1 at least once.
            let expected = if qos == QoS::ExactlyOnce { 1 } else { 2 };
            assert_eq!(pair.deliveries.len(), expected, "{protocol:?} {qos:?}");
            assert_eq!(pair.client.inflight(), 0);
        }
    }
}

#[test]
fn pubrel_is_resent_after_a_lost_pubcomp() {
    let mut pair = Pair::new(persistent(Protocol::V5));
    let _sub = pair
        .broker
        .subscribe(pair.now, TopicFilter::from_static("t"));
    pair.connect();
    pair.take_events();
    let id = pair
        .client
        .publish(pair.now, message("t", "m", QoS::ExactlyOnce))
        .unwrap();
    // Deliver PUBLISH and receive PUBREC, then lose PUBCOMP.
    let bytes = pair.client.poll_transmit().unwrap();
    let conn = pair.conn.unwrap();
    pair.broker.handle_bytes(pair.now, conn, &bytes);
    pair.settle();
    assert_eq!(pair.client.inflight(), 0, "completed normally first");
    // A second one whose PUBCOMP is lost.
    let id2 = pair
        .client
        .publish(pair.now, message("t", "n", QoS::ExactlyOnce))
        .unwrap();
    let publish = pair.client.poll_transmit().unwrap();
    pair.broker.handle_bytes(pair.now, conn, &publish);
    while let Some(action) = pair.broker.poll_action() {
        if let Action::Send { bytes, .. } = action {
            pair.client.handle_bytes(pair.now, &bytes); // PUBREC
        } else if let Action::Deliver {
            subscription,
            message,
        } = action
        {
            pair.deliveries.push((subscription, message));
        }
    }
    let pubrel = pair.client.poll_transmit().unwrap();
    assert_eq!(pubrel[0], 0x62);
    pair.broker.handle_bytes(pair.now, conn, &pubrel);
    pair.deaf = true;
    pair.settle();
    pair.cut();
    pair.deaf = false;
    pair.sent.clear();
    pair.connect();
    // CONNECT, then PUBREL (not the PUBLISH) again.
    assert_eq!(pair.sent[..2], [0x10, 0x62]);
    assert!(pair.take_events().contains(&ClientEvent::Acked(id2)));
    assert_eq!(payloads(&pair.deliveries), ["m", "n"]);
    let _ = id;
}

#[test]
fn new_session_sends_unacknowledged_messages_again() {
    // Clean start: the broker forgets the session, the client still owes
    // the message to someone.
    let mut pair = Pair::new(config(Protocol::V3_1_1));
    let _sub = pair
        .broker
        .subscribe(pair.now, TopicFilter::from_static("t"));
    pair.connect();
    pair.deaf = true;
    pair.client
        .publish(pair.now, message("t", "m", QoS::AtLeastOnce))
        .unwrap();
    pair.settle();
    pair.cut();
    pair.deaf = false;
    pair.connect();
    assert_eq!(payloads(&pair.deliveries), ["m", "m"]);
    assert_eq!(pair.client.inflight(), 0);
}

#[test]
fn keep_alive_pings_and_times_out() {
    let mut pair = Pair::new(ClientConfig {
        keep_alive: 10,
        ..config(Protocol::V3_1_1)
    });
    pair.connect();
    pair.take_events();
    pair.sent.clear();
    // Idle for the keep-alive: a PINGREQ, answered.
    assert_eq!(
        pair.client.poll_timeout(),
        Some(Instant::from_millis(10_000))
    );
    pair.advance_to_next_deadline();
    assert_eq!(pair.sent, [0xC0]);
    assert!(pair.client.is_connected());
    assert_eq!(
        pair.client.poll_timeout(),
        Some(Instant::from_millis(20_000))
    );
    // The answers stop: the next PINGREQ goes unanswered, and a keep-alive
    // later the client gives up.
    pair.deaf = true;
    pair.advance_to_next_deadline();
    assert_eq!(pair.sent, [0xC0, 0xC0]);
    assert!(pair.client.is_connected());
    assert_eq!(pair.now, Instant::from_millis(20_000));
    let at = pair.client.poll_timeout().unwrap();
    assert_eq!(at, Instant::from_millis(30_000));
    pair.now = at;
    pair.client.handle_timeout(at);
    pair.settle();
    assert!(!pair.client.is_connected());
    assert_eq!(
        pair.take_events(),
        vec![ClientEvent::Disconnected(
            DisconnectReason::KeepAliveTimeout
        )]
    );
    assert_eq!(pair.client.poll_timeout(), None);
}

#[test]
fn connect_times_out_without_connack() {
    let mut pair = Pair::new(config(Protocol::V5));
    pair.deaf = true;
    pair.connect();
    let at = pair.client.poll_timeout().unwrap();
    assert_eq!(at, Instant::from_millis(30_000));
    pair.now = at;
    pair.client.handle_timeout(at);
    pair.settle();
    assert_eq!(
        pair.take_events(),
        vec![ClientEvent::Disconnected(DisconnectReason::ConnectTimeout)]
    );
}

#[test]
fn refused_connect_is_reported() {
    let mut pair = Pair::new(config(Protocol::V5));
    pair.broker
        .set_authentication(crate::broker::Authentication::External);
    let conn = pair.broker.handle_open(pair.now, ConnInfo::default());
    pair.conn = Some(conn);
    pair.client.handle_connected(pair.now);
    let connect = pair.client.poll_transmit().unwrap();
    pair.broker.handle_bytes(pair.now, conn, &connect);
    let token = loop {
        match pair.broker.poll_action() {
            Some(Action::Authenticate(r)) => break r.token,
            Some(_) => {}
            None => panic!("no authentication request"),
        }
    };
    pair.broker.resolve_auth(
        pair.now,
        token,
        crate::broker::AuthDecision::Reject(ReasonCode::NotAuthorized),
    );
    pair.settle();
    assert_eq!(
        pair.take_events(),
        vec![ClientEvent::Disconnected(DisconnectReason::Refused(
            ReasonCode::NotAuthorized
        ))]
    );
}

#[test]
fn garbage_from_the_server_ends_the_connection() {
    let mut client = Client::new(config(Protocol::V3_1_1));
    client.handle_connected(Instant::ZERO);
    client.handle_bytes(Instant::ZERO, &[0x20, 0x02, 0x00, 0x00]);
    assert!(client.is_connected());
    client.handle_bytes(Instant::ZERO, &[0xC0, 0x00]); // a PINGREQ, from a server
    assert!(!client.is_connected());
    let events: Vec<_> = core::iter::from_fn(|| client.poll_event()).collect();
    assert_eq!(
        events.last(),
        Some(&ClientEvent::Disconnected(DisconnectReason::ProtocolError))
    );
}

/// The messages of `events` with their ack ids, in order.
fn messages(events: Vec<ClientEvent>) -> Vec<(Bytes, Option<InboundId>)> {
    events
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Message(m, id) => Some((m.payload, id)),
            _ => None,
        })
        .collect()
}

fn manual(protocol: Protocol) -> ClientConfig {
    ClientConfig {
        manual_ack: true,
        subscriptions: vec![subscription(
            TopicFilter::from_static("cmd/#"),
            QoS::ExactlyOnce,
            false,
        )],
        ..persistent(protocol)
    }
}

/// Under `manual_ack` the server holds a QoS 1/2 message in flight until
/// `ack`: only then does its flow complete. QoS 0 carries no id.
#[test]
fn manual_ack_holds_each_flow_until_acked() {
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut pair = Pair::new(manual(protocol));
        pair.connect();
        pair.take_events();
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            pair.broker
                .publish(pair.now, message("cmd/x", &i.to_string(), qos));
        }
        pair.settle();
        let got = messages(pair.take_events());
        assert_eq!(got.len(), 3, "{protocol:?}");
        assert!(got[0].1.is_none(), "QoS 0 has nothing to ack");
        assert_eq!(pair.broker.inflight_count("bridge-1"), 2, "{protocol:?}");
        assert_eq!(pair.client.unacked(), 2);
        pair.client.ack(pair.now, got[1].1.expect("QoS 1 id"));
        pair.settle();
        assert_eq!(pair.broker.inflight_count("bridge-1"), 1, "{protocol:?}");
        pair.client.ack(pair.now, got[2].1.expect("QoS 2 id"));
        // A second ack of the same id sends nothing more.
        pair.client.ack(pair.now, got[2].1.expect("QoS 2 id"));
        pair.settle();
        assert_eq!(pair.broker.inflight_count("bridge-1"), 0, "{protocol:?}");
        assert_eq!(pair.client.unacked(), 0);
    }
}

/// A message delivered and not acknowledged when the connection drops is
/// resent by the server (DUP) and not delivered twice; an ack given while
/// disconnected is sent when the session resumes.
#[test]
fn manual_ack_survives_a_reconnect_without_delivering_twice() {
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut pair = Pair::new(manual(protocol));
        pair.connect();
        pair.take_events();
        pair.broker
            .publish(pair.now, message("cmd/x", "one", QoS::AtLeastOnce));
        pair.broker
            .publish(pair.now, message("cmd/x", "two", QoS::ExactlyOnce));
        pair.settle();
        let got = messages(pair.take_events());
        assert_eq!(got.len(), 2);
        pair.cut();
        // Acked while down: owed.
        pair.client.ack(pair.now, got[0].1.expect("id"));
        pair.connect();
        let again = messages(pair.take_events());
        assert!(again.is_empty(), "{protocol:?}: delivered twice: {again:?}");
        assert_eq!(pair.broker.inflight_count("bridge-1"), 1, "{protocol:?}");
        pair.client.ack(pair.now, got[1].1.expect("id"));
        pair.settle();
        assert_eq!(pair.broker.inflight_count("bridge-1"), 0, "{protocol:?}");
    }
}

/// Once the server starts a new session it has forgotten the messages: an
/// id from before is ignored, so it cannot acknowledge a new message that
/// reuses the packet id.
#[test]
fn manual_ack_ids_of_a_forgotten_session_are_ignored() {
    let mut pair = Pair::new(manual(Protocol::V5));
    pair.connect();
    pair.take_events();
    pair.broker
        .publish(pair.now, message("cmd/x", "old", QoS::AtLeastOnce));
    pair.settle();
    let old = messages(pair.take_events())[0].1.expect("id");
    pair.cut();
    // The server forgets the session.
    pair.client.config.clean_start = true;
    pair.connect();
    pair.take_events();
    pair.client.config.clean_start = false;
    pair.broker
        .publish(pair.now, message("cmd/x", "new", QoS::AtLeastOnce));
    pair.settle();
    let new = messages(pair.take_events())[0].1.expect("id");
    assert_eq!(new.pid, old.pid, "the test needs the packet id reused");
    pair.client.ack(pair.now, old);
    pair.settle();
    assert_eq!(pair.broker.inflight_count("bridge-1"), 1);
    pair.client.ack(pair.now, new);
    pair.settle();
    assert_eq!(pair.broker.inflight_count("bridge-1"), 0);
}

/// With `subscribe_with_connect` the SUBSCRIBE leaves right behind the
/// CONNECT, before any CONNACK, and the server takes both: the
/// subscription is in place once the server has read the bytes.
#[test]
fn subscribes_behind_the_connect() {
    let mut pair = Pair::new(ClientConfig {
        subscribe_with_connect: true,
        ..manual(Protocol::V5)
    });
    let conn = pair.broker.handle_open(pair.now, ConnInfo::default());
    pair.conn = Some(conn);
    pair.client.handle_connected(pair.now);
    let first = pair.client.poll_transmit().expect("CONNECT and SUBSCRIBE");
    pair.record_sent(&first);
    assert_eq!(pair.sent, [0x10, 0x82], "CONNECT then SUBSCRIBE");
    pair.broker.handle_bytes(pair.now, conn, &first);
    // Routed at once, before the client has read CONNACK or SUBACK.
    pair.broker
        .publish(pair.now, message("cmd/x", "early", QoS::AtLeastOnce));
    pair.settle();
    let events = pair.take_events();
    assert_eq!(
        events[..2],
        [
            ClientEvent::Connected {
                session_present: false
            },
            ClientEvent::Subscribed(vec![Ok(QoS::ExactlyOnce)])
        ]
    );
    let got = messages(events);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, Bytes::from_static(b"early"));
}
