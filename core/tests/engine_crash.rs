//! Exactly-once across crashes: the engine with a store model that keeps
//! only what was confirmed durable. A crash drops the engine and everything
//! not confirmed, rebuilds it from what was, and the clients reconnect and
//! resend as MQTT says they must (PUBLISH with DUP, PUBREL). On a virtual
//! clock, seeded, no sockets.

mod support;

use bytes::Bytes;
use roost_core::broker::{Broker, Config, ConnId, Recovered, StoreOp};
use roost_core::codec::*;
use std::collections::{BTreeMap, HashMap};
use support::*;

const V4: Protocol = Protocol::V3_1_1;

fn config() -> Config {
    Config {
        sys_interval: None,
        persistence: true,
        ..Config::default()
    }
}

/// A store that loses everything not confirmed when the broker crashes.
struct Disk {
    /// What survived the last restart.
    base: Recovered,
}

impl Disk {
    fn new() -> Self {
        Disk {
            base: Recovered::default(),
        }
    }

    /// Confirms the `n` oldest unconfirmed batches, as a store finishing
    /// part of its queue would.
    fn confirm(&mut self, sim: &mut Sim, n: usize) {
        let mut last = None;
        for _ in 0..n {
            match sim.unconfirmed.pop_front() {
                Some(id) => last = Some(id),
                None => break,
            }
        }
        if let Some(id) = last {
            sim.confirmed = id.get();
            sim.broker.handle_store_done(sim.now, id);
            sim.drain();
        }
    }

    fn confirm_all(&mut self, sim: &mut Sim) {
        self.confirm(sim, usize::MAX);
    }

    /// The broker process dies: what was confirmed is what the store gives
    /// back; a new engine starts from it. Every connection is gone.
    fn crash(&mut self, sim: &mut Sim) {
        for (id, ops) in &sim.batches {
            // Batch ids restart with each engine.
            if id.get() <= sim.confirmed {
                for op in ops {
                    self.base.apply(op);
                }
            }
        }
        self.base.normalize();
        sim.batches.clear();
        sim.unconfirmed.clear();
        sim.clients.clear();
        sim.confirmed = 0;
        sim.broker = Broker::restore(config(), sim.now, self.base.clone());
    }
}

/// A QoS 1/2 publisher that keeps its session across reconnects.
struct Publisher {
    conn: ConnId,
    next_pid: u16,
    /// Unfinished flows: payload, QoS, whether PUBREC came (PUBREL sent).
    outstanding: BTreeMap<u16, (Bytes, QoS, bool)>,
    /// Messages the broker acknowledged (PUBACK, PUBREC): it owns them.
    acknowledged: Vec<(Bytes, QoS)>,
    sent: u32,
}

impl Publisher {
    fn publish(&mut self, sim: &mut Sim, qos: QoS) {
        let pid = self.next_pid;
        self.next_pid = self.next_pid % 200 + 1;
        assert!(!self.outstanding.contains_key(&pid), "publisher ran out");
        self.sent += 1;
        let payload = Bytes::from(format!("m{}", self.sent));
        self.outstanding.insert(pid, (payload.clone(), qos, false));
        let mut p = publish("t", &payload, qos, pid, false);
        p.payload = payload;
        sim.send(self.conn, Packet::Publish(p));
    }

    fn process(&mut self, sim: &mut Sim) {
        for packet in sim.recv_all(self.conn) {
            match packet {
                Packet::PubAck(r) => {
                    let pid = r.packet_id.get();
                    if let Some((payload, qos, _)) = self.outstanding.remove(&pid) {
                        assert_eq!(qos, QoS::AtLeastOnce);
                        self.acknowledged.push((payload, qos));
                    }
                }
                Packet::PubRec(r) => {
                    let pid = r.packet_id.get();
                    if let Some((payload, qos, released)) = self.outstanding.get_mut(&pid) {
                        if !*released {
                            *released = true;
                            self.acknowledged.push((payload.clone(), *qos));
                        }
                        sim.send(self.conn, Packet::PubRel(PubResponse::new(r.packet_id)));
                    }
                }
                Packet::PubComp(r) => {
                    self.outstanding.remove(&r.packet_id.get());
                }
                other => panic!("publisher got {other:?}"),
            }
        }
    }

    /// After a reconnect with the session present: everything unfinished
    /// again [MQTT-4.4.0-1].
    fn resend(&mut self, sim: &mut Sim) {
        for (&pid, (payload, qos, released)) in &self.outstanding {
            let id = PacketId::new(pid).unwrap();
            if *released {
                sim.send(self.conn, Packet::PubRel(PubResponse::new(id)));
            } else {
                let mut p = publish("t", payload, *qos, pid, false);
                p.dup = true;
                sim.send(self.conn, Packet::Publish(p));
            }
        }
    }
}

/// A QoS 2 subscriber with a persistent session, receiving as MQTT's
/// "method A" does: the message goes to the application on PUBLISH, and
/// its packet identifier is held until PUBREL, so a re-sent PUBLISH under
/// it is recognised as the same message.
#[derive(Default)]
struct Subscriber {
    conn: Option<ConnId>,
    held: HashMap<u16, Bytes>,
    /// What the application received, with the QoS it came at.
    app: Vec<(Bytes, QoS)>,
    /// A PUBLISH that reused a held identifier for another message.
    reused: u32,
}

impl Subscriber {
    fn process(&mut self, sim: &mut Sim) {
        let Some(conn) = self.conn else { return };
        for packet in sim.recv_all(conn) {
            match packet {
                Packet::Publish(p) => match p.qos {
                    QosPid::AtMostOnce => self.app.push((p.payload, QoS::AtMostOnce)),
                    QosPid::AtLeastOnce(pid) => {
                        self.app.push((p.payload, QoS::AtLeastOnce));
                        sim.send(conn, Packet::PubAck(PubResponse::new(pid)));
                    }
                    QosPid::ExactlyOnce(pid) => {
                        match self.held.get(&pid.get()) {
                            Some(known) if *known != p.payload => self.reused += 1,
                            Some(_) => {}
                            None => {
                                self.held.insert(pid.get(), p.payload.clone());
                                self.app.push((p.payload, QoS::ExactlyOnce));
                            }
                        }
                        sim.send(conn, Packet::PubRec(PubResponse::new(pid)));
                    }
                },
                Packet::PubRel(r) => {
                    self.held.remove(&r.packet_id.get());
                    sim.send(conn, Packet::PubComp(PubResponse::new(r.packet_id)));
                }
                other => panic!("subscriber got {other:?}"),
            }
        }
    }
}

/// splitmix64: the test's only source of choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Outcome {
    crashes: u32,
    acknowledged: usize,
    lost: usize,
    duplicated_qos2: usize,
    reused: u32,
}

fn reconnect_publisher(sim: &mut Sim, publisher: &mut Publisher) {
    let (conn, ack) = sim.connect("pub", V4, false);
    assert!(ack.session_present, "the publisher's session was stored");
    publisher.conn = conn;
    publisher.resend(sim);
}

fn reconnect_subscriber(sim: &mut Sim, subscriber: &mut Subscriber) {
    let (conn, ack) = sim.connect("sub", V4, false);
    assert!(ack.session_present, "the subscriber's session was stored");
    subscriber.conn = Some(conn);
}

/// One seeded run: QoS 1 and 2 publishes, a store confirming batches late
/// and in pieces, subscriber reconnects, and crashes at random steps.
fn run(seed: u64, steps: u32) -> Outcome {
    let mut rng = Rng(seed);
    let mut sim = Sim::new(config());
    sim.auto_confirm = false;
    let mut disk = Disk::new();
    let (s, _) = sim.connect("sub", V4, false);
    assert_eq!(
        sim.subscribe(s, 1, &[("t", QoS::ExactlyOnce)]),
        [ReasonCode::GrantedQoS2]
    );
    let (p, _) = sim.connect("pub", V4, false);
    disk.confirm_all(&mut sim);
    let mut publisher = Publisher {
        conn: p,
        next_pid: 1,
        outstanding: BTreeMap::new(),
        acknowledged: Vec::new(),
        sent: 0,
    };
    let mut subscriber = Subscriber {
        conn: Some(s),
        ..Subscriber::default()
    };
    let mut crashes = 0;
    for _ in 0..steps {
        match rng.below(100) {
            0..=29 => {
                if publisher.outstanding.len() < 8 {
                    let qos = if rng.below(3) == 0 {
                        QoS::AtLeastOnce
                    } else {
                        QoS::ExactlyOnce
                    };
                    publisher.publish(&mut sim, qos);
                }
            }
            30..=49 => publisher.process(&mut sim),
            50..=69 => subscriber.process(&mut sim),
            70..=91 => {
                let n = 1 + rng.below(3) as usize;
                disk.confirm(&mut sim, n);
            }
            92..=94 => {
                // The subscriber's network drops; it comes back.
                if let Some(conn) = subscriber.conn.take() {
                    sim.drop_transport(conn);
                    disk.confirm_all(&mut sim);
                    reconnect_subscriber(&mut sim, &mut subscriber);
                }
            }
            _ => {
                crashes += 1;
                disk.crash(&mut sim);
                reconnect_subscriber(&mut sim, &mut subscriber);
                reconnect_publisher(&mut sim, &mut publisher);
            }
        }
    }
    // No more faults: let every flow finish.
    for _ in 0..50 {
        disk.confirm_all(&mut sim);
        publisher.process(&mut sim);
        subscriber.process(&mut sim);
    }
    assert!(
        publisher.outstanding.is_empty(),
        "seed {seed}: flows left unfinished: {:?}",
        publisher.outstanding
    );
    let mut received: HashMap<&Bytes, usize> = HashMap::new();
    for (payload, _) in &subscriber.app {
        *received.entry(payload).or_default() += 1;
    }
    let lost = publisher
        .acknowledged
        .iter()
        .filter(|(payload, _)| !received.contains_key(payload))
        .count();
    let duplicated_qos2 = publisher
        .acknowledged
        .iter()
        .filter(|(payload, qos)| *qos == QoS::ExactlyOnce && received.get(payload) > Some(&1))
        .count();
    Outcome {
        crashes,
        acknowledged: publisher.acknowledged.len(),
        lost,
        duplicated_qos2,
        reused: subscriber.reused,
    }
}

#[test]
fn qos2_is_exactly_once_across_crashes_and_no_packet_id_is_reused() {
    let (mut crashes, mut acknowledged) = (0, 0);
    for seed in 0..200 {
        let o = run(seed, 400);
        assert_eq!(o.lost, 0, "seed {seed}: acknowledged messages lost");
        assert_eq!(o.duplicated_qos2, 0, "seed {seed}: QoS 2 delivered twice");
        assert_eq!(o.reused, 0, "seed {seed}: a held packet id was reused");
        crashes += o.crashes;
        acknowledged += o.acknowledged;
    }
    // The scenario really exercised crashes with traffic in flight.
    assert!(crashes > 500, "{crashes} crashes");
    assert!(acknowledged > 10_000, "{acknowledged} acknowledged");
}

#[test]
fn an_inbound_qos2_message_is_not_delivered_before_it_is_durable() {
    let mut sim = Sim::new(config());
    sim.auto_confirm = false;
    let mut disk = Disk::new();
    let (s, _) = sim.connect("sub", V4, false);
    sim.subscribe(s, 1, &[("t", QoS::ExactlyOnce)]);
    let (p, _) = sim.connect("pub", V4, false);
    disk.confirm_all(&mut sim);
    sim.send(
        p,
        Packet::Publish(publish("t", b"x", QoS::ExactlyOnce, 7, false)),
    );
    assert!(sim.recv_all(s).is_empty(), "delivered before durable");
    assert!(sim.recv_all(p).is_empty(), "PUBREC before durable");
    // The crash loses the batch: the publisher's resend is a new message,
    // delivered once.
    disk.crash(&mut sim);
    let (s, _) = sim.connect("sub", V4, false);
    let (p, _) = sim.connect("pub", V4, false);
    let mut again = publish("t", b"x", QoS::ExactlyOnce, 7, false);
    again.dup = true;
    sim.send(p, Packet::Publish(again));
    disk.confirm_all(&mut sim);
    assert!(matches!(sim.recv_all(p)[..], [Packet::PubRec(_)]));
    assert_eq!(sim.publishes(s).len(), 1);
}

#[test]
fn pubrel_waits_until_released_is_durable() {
    let mut sim = Sim::new(config());
    sim.auto_confirm = false;
    let mut disk = Disk::new();
    let (s, _) = sim.connect("sub", V4, false);
    sim.subscribe(s, 1, &[("t", QoS::ExactlyOnce)]);
    let (p, _) = sim.connect("pub", V4, true);
    disk.confirm_all(&mut sim);
    sim.send(
        p,
        Packet::Publish(publish("t", b"x", QoS::ExactlyOnce, 1, false)),
    );
    disk.confirm_all(&mut sim);
    let got = sim.publishes(s);
    let QosPid::ExactlyOnce(pid) = got[0].qos else {
        panic!("{got:?}")
    };
    sim.send(s, Packet::PubRec(PubResponse::new(pid)));
    assert!(
        sim.recv_all(s).is_empty(),
        "PUBREL before 'released' is durable"
    );
    assert!(sim.batches.iter().any(|(_, ops)| {
        ops.iter()
            .any(|op| matches!(op, StoreOp::MessageSent { released: true, .. }))
    }));
    disk.confirm_all(&mut sim);
    assert!(matches!(&sim.recv_all(s)[..], [Packet::PubRel(r)] if r.packet_id == pid));
}

/// Issue 13 item 3: the publisher's acknowledgement comes before the
/// deliveries, with or without a store.
#[test]
fn the_publisher_is_acknowledged_before_the_delivery() {
    for persistence in [false, true] {
        let mut sim = Sim::new(Config {
            sys_interval: None,
            persistence,
            ..Config::default()
        });
        let (c, _) = sim.connect("c", V4, false);
        sim.subscribe(c, 1, &[("t", QoS::ExactlyOnce)]);
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            sim.send(c, Packet::Publish(publish("t", b"x", qos, 9, false)));
            let got = sim.recv_all(c);
            assert!(
                matches!(
                    &got[..],
                    [Packet::PubAck(_) | Packet::PubRec(_), Packet::Publish(_)]
                ),
                "persistence {persistence}, {qos:?}: {got:?}"
            );
            // Finish the flows so the next round starts clean.
            if let [_, Packet::Publish(d)] = &got[..] {
                sim.ack_all(c, std::slice::from_ref(d));
            }
            if qos == QoS::ExactlyOnce {
                sim.send(
                    c,
                    Packet::PubRel(PubResponse::new(PacketId::new(9).unwrap())),
                );
                sim.recv_all(c);
            }
        }
    }
}

/// Acknowledgements that do not wait for the store do not count against
/// the pending-acknowledgement bound, even when many arrive in one read.
#[test]
fn acknowledgements_that_do_not_wait_are_not_counted_as_pending() {
    let mut sim = Sim::new(Config {
        sys_interval: None,
        persistence: true,
        limits: roost_core::broker::Limits {
            mqtt3_max_pending_acks: 3,
            ..Default::default()
        },
        ..Config::default()
    });
    // A clean session, nothing stored for its messages.
    let (p, _) = sim.connect("p", V4, true);
    let mut read = bytes::BytesMut::new();
    for pid in 1..=10u16 {
        Packet::Publish(publish("t", b"x", QoS::AtLeastOnce, pid, false))
            .encode(V4, &mut read)
            .unwrap();
    }
    sim.send_raw(p, &read);
    assert_eq!(sim.closed(p), None);
    assert_eq!(sim.recv_all(p).len(), 10);
}
