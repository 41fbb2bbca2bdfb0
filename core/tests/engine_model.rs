//! Model-based property test: random sequences of client operations driven
//! against the engine (through the in-process harness) and against a small
//! reference model of what MQTT promises. The messages the simulated
//! clients hand to their application must agree with the model.
//!
//! # What the model checks
//!
//! - **No loss of QoS 1/2** to a session that exists, across reconnects,
//!   crashes, takeovers and withheld acknowledgements: at the end every
//!   persistent session is resumed, every acknowledgement is sent, and every
//!   QoS 1/2 message owed to a live session must have reached its client.
//!   (Within limits: the in-flight window is 3 so queueing is exercised,
//!   the queue limit is never reached, and `Stats::dropped` must stay 0.)
//! - **QoS 0 is lost only offline**: a QoS 0 message published while the
//!   subscriber is connected must arrive; one published while it is offline
//!   may arrive (at most once) or not.
//! - **No duplicates for QoS 0 and 2** at the application: the simulated
//!   client de-duplicates QoS 2 by packet identifier between PUBLISH and
//!   PUBREL, as a real client does, and then must see each message once per
//!   matching session. QoS 1 may repeat (at least once).
//! - **Nothing extra**: every delivery must be owed to the receiving session
//!   *generation* (a clean start begins a new one, and nothing published for
//!   the old one may arrive), at the QoS the model computes: the publish QoS
//!   capped by the highest granted QoS of the matching subscriptions at
//!   publish time; retained deliveries (RETAIN=1) only right after a
//!   SUBSCRIBE whose filter matches a retained topic, at the retained QoS
//!   capped by the grant.
//! - **Order per publisher and topic** for QoS 1/2, on first receipt (the
//!   spec asks it per QoS [MQTT-4.6.0-6]; roost keeps one queue, so the
//!   model checks QoS 1 and 2 together, which implies the per-QoS rule).
//! - **Protocol bookkeeping**: CONNACK's session-present flag, SUBACK's
//!   granted QoS, UNSUBACK, PINGRESP, the publisher's own QoS 1/2
//!   handshakes, which connections the engine closes (takeover, keep-alive
//!   after 1.5 × 10 s of silence), session and retained counts, and at the
//!   end nothing queued, nothing in flight and nothing leaked.
//!
//! # What it does not check
//!
//! Wills, MQTT 5 session expiry timers (persistent sessions never expire
//! here), message expiry, topic aliases, shared subscriptions, No Local and
//! Retain As Published, retained-message clearing (empty payloads), the
//! queue limits themselves, authentication and authorization, $SYS, and
//! persistence (store actions). Messages still buffered for a filter when
//! it is unsubscribed may or may not arrive (the spec allows both), so the
//! model stops requiring them. The spec lets a server send one copy per
//! overlapping subscription; roost documents one per session and the model
//! holds it to that ([`ONE_COPY_PER_SESSION`]).
//!
//! A failing case shrinks to a short `Debug` list of [`Op`]s; replay it with
//! `run(&[...])` in a `#[test]`.

mod support;

use proptest::prelude::*;
use roost_core::broker::{CloseReason, Config, ConnId, Limits};
use roost_core::codec::*;
use roost_core::topic::{TopicFilter, TopicName};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use support::{Sim, connect, secs};

const CLIENTS: [&str; 3] = ["c0", "c1", "c2"];
const TOPICS: [&str; 3] = ["a/b", "a/c", "x/b"];
const FILTERS: [&str; 5] = ["a/b", "a/+", "a/#", "+/b", "#"];
/// Keep-alive of clients that ask for one; the engine closes them after
/// 1.5 times that of silence. Time only moves in even seconds and activity
/// happens on whole seconds, so "exactly 15 s" can never be the question.
const KEEP_ALIVE_S: u16 = 10;
const WINDOW: u16 = 3;
/// The spec allows one copy per matching subscription; roost sends one per
/// session. Hold it to its documentation.
const ONE_COPY_PER_SESSION: bool = true;

// ---- operations ----

/// One step of a scenario. Steps for a client that is not connected (other
/// than `Connect`) do nothing, which keeps shrinking simple.
#[derive(Debug, Clone)]
enum Op {
    /// CONNECT (a takeover if the client is connected). MQTT 3.1.1 ties
    /// `persist` to `!clean_start`; MQTT 5 sets Session Expiry to "never"
    /// when `persist`, to 0 otherwise.
    Connect {
        client: &'static str,
        v5: bool,
        clean_start: bool,
        persist: bool,
        keep_alive: bool,
    },
    Subscribe {
        client: &'static str,
        filter: &'static str,
        qos: QoS,
    },
    Unsubscribe {
        client: &'static str,
        filter: &'static str,
    },
    /// PUBLISH; the publisher's own handshake completes at once.
    Publish {
        client: &'static str,
        topic: &'static str,
        qos: QoS,
        retain: bool,
    },
    /// A QoS 2 PUBLISH sent twice, the second with DUP, before PUBREL (as
    /// after a lost PUBREC): it must be routed once [MQTT-4.3.3-10].
    PublishTwice {
        client: &'static str,
        topic: &'static str,
        retain: bool,
    },
    /// Start or stop withholding acknowledgements of deliveries (PUBACK,
    /// PUBREC, PUBCOMP): a slow subscriber.
    Hold {
        client: &'static str,
        hold: bool,
    },
    /// Send the withheld acknowledgements.
    Release {
        client: &'static str,
    },
    Ping {
        client: &'static str,
    },
    /// DISCONNECT.
    Disconnect {
        client: &'static str,
    },
    /// The transport dies.
    Crash {
        client: &'static str,
    },
    /// The clock moves (keep-alive expiry).
    Advance {
        secs: u64,
    },
}

fn qos_strategy() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let client = proptest::sample::select(&CLIENTS[..]);
    let topic = proptest::sample::select(&TOPICS[..]);
    let filter = proptest::sample::select(&FILTERS[..]);
    prop_oneof![
        3 => (client.clone(), any::<bool>(), any::<bool>(), any::<bool>(), proptest::bool::weighted(0.3))
            .prop_map(|(client, v5, clean_start, persist, keep_alive)| Op::Connect {
                client, v5, clean_start, persist, keep_alive
            }),
        3 => (client.clone(), filter.clone(), qos_strategy())
            .prop_map(|(client, filter, qos)| Op::Subscribe { client, filter, qos }),
        1 => (client.clone(), filter).prop_map(|(client, filter)| Op::Unsubscribe { client, filter }),
        6 => (client.clone(), topic.clone(), qos_strategy(), proptest::bool::weighted(0.2))
            .prop_map(|(client, topic, qos, retain)| Op::Publish { client, topic, qos, retain }),
        1 => (client.clone(), topic, proptest::bool::weighted(0.2))
            .prop_map(|(client, topic, retain)| Op::PublishTwice { client, topic, retain }),
        1 => (client.clone(), any::<bool>()).prop_map(|(client, hold)| Op::Hold { client, hold }),
        1 => client.clone().prop_map(|client| Op::Release { client }),
        1 => client.clone().prop_map(|client| Op::Ping { client }),
        1 => client.clone().prop_map(|client| Op::Disconnect { client }),
        1 => client.prop_map(|client| Op::Crash { client }),
        1 => proptest::sample::select(&[2u64, 6, 20][..]).prop_map(|secs| Op::Advance { secs }),
    ]
}

// ---- the reference model ----

/// Obviously correct topic matching for the filters above (no `$` topics).
fn model_matches(filter: &str, topic: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    for (i, level) in f.iter().enumerate() {
        match *level {
            "#" => return true,
            "+" if i < t.len() => {}
            l if t.get(i) == Some(&l) => {}
            _ => return false,
        }
    }
    f.len() == t.len()
}

#[derive(Debug, Clone)]
struct MsgInfo {
    publisher: &'static str,
    topic: &'static str,
}

/// A delivery a session is owed (or allowed).
#[derive(Debug)]
struct Owed {
    msg: u64,
    /// The QoS it must arrive with.
    qos: QoS,
    /// A retained copy sent on SUBSCRIBE (arrives with RETAIN=1).
    retained: bool,
    /// Must arrive (false: may arrive, e.g. QoS 0 published while offline).
    required: bool,
    /// At most this many application-level copies (QoS 0 and 2).
    max_copies: usize,
    seen: usize,
}

#[derive(Debug)]
struct MSession {
    generation: u64,
    persistent: bool,
    subs: BTreeMap<&'static str, QoS>,
    owed: Vec<Owed>,
    /// Highest message number first received per (publisher, topic), QoS 1/2.
    order: BTreeMap<(&'static str, &'static str), u64>,
}

#[derive(Default)]
struct Model {
    now_ms: u64,
    sessions: BTreeMap<&'static str, MSession>,
    /// Connected clients: (last activity, keep-alive in ms or 0).
    connected: BTreeMap<&'static str, (u64, u64)>,
    retained: BTreeMap<&'static str, (u64, QoS)>,
    messages: Vec<MsgInfo>,
    generations: u64,
}

impl Model {
    /// Returns the expected session-present flag.
    fn connect(
        &mut self,
        client: &'static str,
        clean_start: bool,
        persist: bool,
        keep_alive: bool,
    ) -> bool {
        if self.connected.contains_key(client) {
            self.connection_lost(client);
        }
        if clean_start {
            self.sessions.remove(client);
        }
        let present = self.sessions.contains_key(client);
        if !present {
            self.generations += 1;
            self.sessions.insert(
                client,
                MSession {
                    generation: self.generations,
                    persistent: persist,
                    subs: BTreeMap::new(),
                    owed: Vec::new(),
                    order: BTreeMap::new(),
                },
            );
        }
        if let Some(s) = self.sessions.get_mut(client) {
            s.persistent = persist;
        }
        let ka = if keep_alive {
            u64::from(KEEP_ALIVE_S) * 1000
        } else {
            0
        };
        self.connected.insert(client, (self.now_ms, ka));
        present
    }

    /// DISCONNECT, crash, takeover or keep-alive: a session that does not
    /// persist ends with its connection.
    fn connection_lost(&mut self, client: &'static str) {
        self.connected.remove(client);
        if self.sessions.get(client).is_some_and(|s| !s.persistent) {
            self.sessions.remove(client);
        }
    }

    fn activity(&mut self, client: &'static str) {
        if let Some((last, _)) = self.connected.get_mut(client) {
            *last = self.now_ms;
        }
    }

    /// Moves the clock; returns the clients whose keep-alive ran out.
    fn advance(&mut self, ms: u64) -> Vec<&'static str> {
        self.now_ms += ms;
        let now = self.now_ms;
        let expired: Vec<&'static str> = self
            .connected
            .iter()
            .filter(|(_, (last, ka))| *ka > 0 && now - last > ka * 3 / 2)
            .map(|(c, _)| *c)
            .collect();
        for c in &expired {
            self.connection_lost(c);
        }
        expired
    }

    fn subscribe(&mut self, client: &'static str, filter: &'static str, qos: QoS) {
        let retained: Vec<(u64, QoS)> = self
            .retained
            .iter()
            .filter(|(topic, _)| model_matches(filter, topic))
            .map(|(_, r)| *r)
            .collect();
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        s.subs.insert(filter, qos);
        for (msg, rqos) in retained {
            s.owed.push(Owed {
                msg,
                qos: rqos.min(qos),
                retained: true,
                required: true,
                max_copies: 1,
                seen: 0,
            });
        }
    }

    fn unsubscribe(&mut self, client: &'static str, filter: &'static str) {
        let messages = &self.messages;
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        s.subs.remove(filter);
        // Messages already buffered for the filter may still come, or not.
        for o in &mut s.owed {
            if o.seen == 0 && model_matches(filter, messages[o.msg as usize].topic) {
                o.required = false;
            }
        }
    }

    fn publish(
        &mut self,
        publisher: &'static str,
        topic: &'static str,
        qos: QoS,
        retain: bool,
    ) -> u64 {
        let msg = self.messages.len() as u64;
        self.messages.push(MsgInfo { publisher, topic });
        if retain {
            self.retained.insert(topic, (msg, qos));
        }
        for (client, s) in &mut self.sessions {
            let matching: Vec<QoS> = s
                .subs
                .iter()
                .filter(|(f, _)| model_matches(f, topic))
                .map(|(_, q)| *q)
                .collect();
            let Some(&granted) = matching.iter().max() else {
                continue;
            };
            let qos = qos.min(granted);
            let online = self.connected.contains_key(client);
            s.owed.push(Owed {
                msg,
                qos,
                retained: false,
                required: qos > QoS::AtMostOnce || online,
                max_copies: if ONE_COPY_PER_SESSION {
                    1
                } else {
                    matching.len()
                },
                seen: 0,
            });
        }
        msg
    }

    /// The client's application received `msg` (after QoS 2 de-duplication).
    fn received(
        &mut self,
        client: &'static str,
        msg: u64,
        qos: QoS,
        retain: bool,
        repeat: bool,
    ) -> Result<(), String> {
        let info = self
            .messages
            .get(msg as usize)
            .cloned()
            .ok_or_else(|| format!("{client} received unknown message m{msg}"))?;
        let s = self
            .sessions
            .get_mut(client)
            .ok_or_else(|| format!("{client} received m{msg} without a session"))?;
        // A re-send of a QoS 1 delivery the client has not acknowledged
        // matches a copy already seen; anything else is the first copy not
        // yet seen (at this QoS if there is one), or else a repeat at the
        // same QoS (allowed for QoS 1 only, checked below).
        let owed = |o: &Owed| o.msg == msg && o.retained == retain;
        let idx = if repeat {
            s.owed
                .iter()
                .position(|o| owed(o) && o.seen > 0 && o.qos == qos)
        } else {
            // Copies of one retained message owed at two QoS levels may
            // come in either order (QoS 0 does not wait behind the window).
            s.owed
                .iter()
                .position(|o| owed(o) && o.seen == 0 && o.qos == qos)
                .or_else(|| s.owed.iter().position(|o| owed(o) && o.seen == 0))
                .or_else(|| s.owed.iter().position(|o| owed(o) && o.qos == qos))
        }
        .ok_or_else(|| {
            format!(
                "{client} (session generation {}) received m{msg} ({info:?}, retain={retain}) \
                     that it is not owed",
                s.generation
            )
        })?;
        let o = &mut s.owed[idx];
        o.seen += 1;
        if o.seen == 1 && qos != o.qos {
            return Err(format!(
                "{client} received m{msg} at {qos:?}, expected {:?}",
                o.qos
            ));
        }
        if o.seen > 1 && o.qos != QoS::AtLeastOnce && o.seen > o.max_copies {
            return Err(format!(
                "{client} received m{msg} ({:?}) {} times",
                o.qos, o.seen
            ));
        }
        if o.seen == 1 && !retain && o.qos > QoS::AtMostOnce {
            let key = (info.publisher, info.topic);
            if let Some(&last) = s.order.get(&key) {
                if last > msg {
                    return Err(format!(
                        "{client} received m{msg} after m{last}: order from {} on {} broken",
                        info.publisher, info.topic
                    ));
                }
            }
            s.order.insert(key, msg);
        }
        Ok(())
    }

    /// Everything required has arrived.
    fn check_complete(&self) -> Result<(), String> {
        for (client, s) in &self.sessions {
            for o in &s.owed {
                if o.required && o.seen == 0 {
                    return Err(format!(
                        "{client} never received m{} ({:?}, {:?}, retained copy: {})",
                        o.msg, self.messages[o.msg as usize], o.qos, o.retained
                    ));
                }
            }
        }
        Ok(())
    }
}

// ---- the simulated clients ----

#[derive(Default)]
struct ClientState {
    conn: Option<ConnId>,
    protocol: Option<Protocol>,
    /// QoS 2 packet identifiers between PUBLISH and PUBREL: a PUBLISH with
    /// one of these is a re-send, not a new message. Kept across
    /// reconnects of a resumed session, as a real client keeps it.
    qos2_pending: BTreeSet<u16>,
    /// QoS 1 deliveries not yet acknowledged (packet identifier, message):
    /// the same identifier and message again is a re-send of that delivery.
    qos1_unacked: BTreeMap<u16, (u64, bool)>,
    hold: bool,
    held: Vec<Packet>,
    next_pid: u16,
    /// The client's own QoS 1/2 publishes awaiting the broker.
    publishing: BTreeMap<u16, QoS>,
    /// CONNACK, SUBACK, UNSUBACK, PINGRESP received, for the op to check.
    control: Vec<Packet>,
}

struct Driver {
    sim: Sim,
    model: Model,
    clients: BTreeMap<&'static str, ClientState>,
    /// A deliberately broken client that loses the first QoS 1 message it
    /// receives, to show the model notices.
    sabotage: bool,
    /// Messages handed to client applications (first receipts).
    delivered: usize,
    log: String,
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn parse_msg(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload.strip_prefix(b"m")?)
        .ok()?
        .parse()
        .ok()
}

impl Driver {
    fn new() -> Self {
        let sim = Sim::new(Config {
            sys_interval: None,
            limits: Limits {
                max_inflight: WINDOW,
                ..Limits::default()
            },
            ..Config::default()
        });
        Driver {
            sim,
            model: Model::default(),
            clients: CLIENTS
                .iter()
                .map(|c| (*c, ClientState::default()))
                .collect(),
            sabotage: false,
            delivered: 0,
            log: String::new(),
        }
    }

    fn conn(&self, client: &'static str) -> Option<ConnId> {
        self.clients[client].conn
    }

    fn send(&mut self, client: &'static str, packet: Packet) {
        let Some(conn) = self.conn(client) else {
            return;
        };
        if let Packet::PubAck(r) = &packet {
            let c = self.clients.get_mut(client).unwrap();
            c.qos1_unacked.remove(&r.packet_id.get());
        }
        self.sim.send(conn, packet);
        self.model.activity(client);
    }

    /// The client acknowledges, now or later.
    fn ack(&mut self, client: &'static str, packet: Packet) {
        if self.clients[client].hold {
            self.clients.get_mut(client).unwrap().held.push(packet);
        } else {
            self.send(client, packet);
        }
    }

    /// Lets every connected client handle what it received, until quiet.
    fn settle(&mut self) -> Result<(), String> {
        loop {
            let mut any = false;
            for client in CLIENTS {
                let Some(conn) = self.conn(client) else {
                    continue;
                };
                let packets = self.sim.recv_all(conn);
                any |= !packets.is_empty();
                for p in packets {
                    self.on_packet(client, p)?;
                }
            }
            if !any {
                break;
            }
        }
        // Connections the engine closed.
        for client in CLIENTS {
            if let Some(conn) = self.conn(client) {
                if self.sim.closed(conn).is_some() {
                    self.lose_connection(client);
                }
            }
        }
        Ok(())
    }

    fn lose_connection(&mut self, client: &'static str) {
        let c = self.clients.get_mut(client).unwrap();
        c.conn = None;
        c.held.clear();
        c.publishing.clear();
        c.control.clear();
    }

    fn on_packet(&mut self, client: &'static str, packet: Packet) -> Result<(), String> {
        let _ = writeln!(self.log, "  {client} <- {packet:?}");
        let kind = packet.packet_type();
        match packet {
            Packet::Publish(p) => {
                let msg = parse_msg(&p.payload)
                    .ok_or_else(|| format!("{client}: bad payload {:?}", p.payload))?;
                let qos = p.qos.qos();
                if qos == QoS::AtMostOnce && p.dup {
                    return Err(format!("{client}: QoS 0 with DUP [MQTT-3.3.1-2]"));
                }
                let c = self.clients.get_mut(client).unwrap();
                let (fresh, repeat) = match p.qos {
                    QosPid::ExactlyOnce(id) => (c.qos2_pending.insert(id.get()), false),
                    QosPid::AtLeastOnce(id) => {
                        let before = c.qos1_unacked.insert(id.get(), (msg, p.retain));
                        (true, before == Some((msg, p.retain)))
                    }
                    QosPid::AtMostOnce => (true, false),
                };
                if self.sabotage && qos == QoS::AtLeastOnce {
                    self.sabotage = false;
                    return Ok(());
                }
                if fresh {
                    self.delivered += usize::from(!repeat);
                    self.model.received(client, msg, qos, p.retain, repeat)?;
                }
                match p.qos {
                    QosPid::AtMostOnce => {}
                    QosPid::AtLeastOnce(id) => {
                        self.ack(client, Packet::PubAck(PubResponse::new(id)))
                    }
                    QosPid::ExactlyOnce(id) => {
                        self.ack(client, Packet::PubRec(PubResponse::new(id)))
                    }
                }
            }
            Packet::PubRel(r) => {
                self.clients
                    .get_mut(client)
                    .unwrap()
                    .qos2_pending
                    .remove(&r.packet_id.get());
                self.ack(client, Packet::PubComp(PubResponse::new(r.packet_id)));
            }
            // The broker's side of the client's own publishes.
            Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubComp(r) => {
                let c = self.clients.get_mut(client).unwrap();
                let id = r.packet_id.get();
                let expected = match (kind, c.publishing.get(&id)) {
                    (PacketType::PubAck, Some(QoS::AtLeastOnce)) => true,
                    (PacketType::PubRec, Some(QoS::ExactlyOnce)) => true,
                    // The answer to a PUBLISH sent twice.
                    (PacketType::PubRec, Some(QoS::AtMostOnce)) => true,
                    (PacketType::PubComp, Some(QoS::AtMostOnce)) => true,
                    _ => false,
                };
                if !expected || r.reason.is_error() {
                    return Err(format!("{client}: unexpected {kind:?} {r:?}"));
                }
                match kind {
                    PacketType::PubRec if c.publishing.get(&id) == Some(&QoS::AtMostOnce) => {}
                    PacketType::PubRec => {
                        // QoS 0 marks "PUBREL sent, PUBCOMP awaited".
                        c.publishing.insert(id, QoS::AtMostOnce);
                        self.send(client, Packet::PubRel(PubResponse::new(r.packet_id)));
                    }
                    _ => {
                        c.publishing.remove(&id);
                    }
                }
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.clients.get_mut(client).unwrap().control.push(packet)
            }
            // MQTT 5: the reason for a close (takeover, keep-alive).
            Packet::Disconnect(_) => {}
            other => return Err(format!("{client}: unexpected {other:?}")),
        }
        Ok(())
    }

    fn take_control(&mut self, client: &'static str) -> Option<Packet> {
        let c = self.clients.get_mut(client).unwrap();
        (!c.control.is_empty()).then(|| c.control.remove(0))
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let _ = writeln!(self.log, "{op:?}");
        match *op {
            Op::Connect {
                client,
                v5,
                clean_start,
                persist,
                keep_alive,
            } => {
                let protocol = if v5 { Protocol::V5 } else { Protocol::V3_1_1 };
                let persist = if v5 { persist } else { !clean_start };
                let mut packet = connect(
                    client,
                    protocol,
                    clean_start,
                    if keep_alive { KEEP_ALIVE_S } else { 0 },
                );
                if v5 && persist {
                    packet.properties.session_expiry_interval = Some(u32::MAX);
                }
                let old = self.conn(client);
                let expected_present = self.model.connect(client, clean_start, persist, keep_alive);
                let (conn, ack) = self.sim.connect_with(packet);
                if let Some(old) = old {
                    if self.sim.closed(old) != Some(CloseReason::SessionTakenOver) {
                        return Err(format!("{client}: old connection not taken over"));
                    }
                    self.lose_connection(client);
                }
                let ack = ack.ok_or("no CONNACK")?;
                if ack.reason != ReasonCode::Success {
                    return Err(format!("{client}: CONNACK {:?}", ack.reason));
                }
                if ack.session_present != expected_present {
                    return Err(format!(
                        "{client}: session present {}, expected {expected_present}",
                        ack.session_present
                    ));
                }
                let c = self.clients.get_mut(client).unwrap();
                if !expected_present {
                    c.qos2_pending.clear();
                    c.qos1_unacked.clear();
                }
                c.conn = Some(conn);
                c.protocol = Some(protocol);
            }
            Op::Subscribe {
                client,
                filter,
                qos,
            } => {
                if self.conn(client).is_none() {
                    return Ok(());
                }
                let sub = Subscribe {
                    packet_id: pid(1),
                    subscriptions: vec![Subscription {
                        filter: TopicFilter::copy_from_str(filter).unwrap(),
                        options: SubscriptionOptions {
                            qos,
                            ..Default::default()
                        },
                    }],
                    properties: Default::default(),
                };
                self.model.subscribe(client, filter, qos);
                self.send(client, Packet::Subscribe(sub));
                self.settle()?;
                match self.take_control(client) {
                    Some(Packet::SubAck(ack)) if ack.reasons.len() == 1 => {
                        let granted = match qos {
                            QoS::AtMostOnce => ReasonCode::Success,
                            QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                            QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                        };
                        if ack.reasons[0] != granted {
                            return Err(format!("{client}: SUBACK {:?}", ack.reasons));
                        }
                    }
                    other => return Err(format!("{client}: expected SUBACK, got {other:?}")),
                }
            }
            Op::Unsubscribe { client, filter } => {
                if self.conn(client).is_none() {
                    return Ok(());
                }
                self.model.unsubscribe(client, filter);
                let unsub = Unsubscribe {
                    packet_id: pid(2),
                    filters: vec![TopicFilter::copy_from_str(filter).unwrap()],
                    properties: Default::default(),
                };
                self.send(client, Packet::Unsubscribe(unsub));
                self.settle()?;
                if !matches!(self.take_control(client), Some(Packet::UnsubAck(_))) {
                    return Err(format!("{client}: no UNSUBACK"));
                }
            }
            Op::Publish {
                client,
                topic,
                qos,
                retain,
            } => self.publish(client, topic, qos, retain, false)?,
            Op::PublishTwice {
                client,
                topic,
                retain,
            } => self.publish(client, topic, QoS::ExactlyOnce, retain, true)?,
            Op::Hold { client, hold } => {
                if self.conn(client).is_some() {
                    self.clients.get_mut(client).unwrap().hold = hold;
                }
            }
            Op::Release { client } => {
                let held = std::mem::take(&mut self.clients.get_mut(client).unwrap().held);
                for p in held {
                    self.send(client, p);
                }
            }
            Op::Ping { client } => {
                if self.conn(client).is_none() {
                    return Ok(());
                }
                self.send(client, Packet::PingReq);
                self.settle()?;
                if !matches!(self.take_control(client), Some(Packet::PingResp)) {
                    return Err(format!("{client}: no PINGRESP"));
                }
            }
            Op::Disconnect { client } => {
                let Some(conn) = self.conn(client) else {
                    return Ok(());
                };
                self.send(
                    client,
                    Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
                );
                if self.sim.closed(conn) != Some(CloseReason::ClientDisconnect) {
                    return Err(format!("{client}: DISCONNECT did not close"));
                }
                self.model.connection_lost(client);
                self.lose_connection(client);
            }
            Op::Crash { client } => {
                let Some(conn) = self.conn(client) else {
                    return Ok(());
                };
                self.sim.drop_transport(conn);
                self.model.connection_lost(client);
                self.lose_connection(client);
            }
            Op::Advance { secs: s } => {
                let expired = self.model.advance(s * 1000);
                self.sim.advance(secs(s));
                for client in CLIENTS {
                    let Some(conn) = self.conn(client) else {
                        continue;
                    };
                    let closed = self.sim.closed(conn);
                    let expect = expired.contains(&client);
                    if expect != (closed == Some(CloseReason::KeepAliveTimeout)) {
                        return Err(format!(
                            "{client}: keep-alive close expected {expect}, engine says {closed:?}"
                        ));
                    }
                }
            }
        }
        self.settle()?;
        self.check_consistent()
    }

    fn publish(
        &mut self,
        client: &'static str,
        topic: &'static str,
        qos: QoS,
        retain: bool,
        twice: bool,
    ) -> Result<(), String> {
        if self.conn(client).is_none() {
            return Ok(());
        }
        let msg = self.model.publish(client, topic, qos, retain);
        let c = self.clients.get_mut(client).unwrap();
        c.next_pid = c.next_pid.checked_add(1).unwrap_or(1);
        let id = pid(c.next_pid);
        if qos > QoS::AtMostOnce {
            c.publishing.insert(id.get(), qos);
        }
        let publish = Publish {
            dup: false,
            qos: QosPid::new(qos, id),
            retain,
            topic: TopicName::copy_from_str(topic).unwrap(),
            payload: format!("m{msg}").into_bytes().into(),
            properties: Default::default(),
        };
        self.send(client, Packet::Publish(publish.clone()));
        if twice {
            self.send(
                client,
                Packet::Publish(Publish {
                    dup: true,
                    ..publish
                }),
            );
        }
        self.settle()?;
        if let Some(c) = self.clients.get(client) {
            if c.conn.is_some() && !c.publishing.is_empty() {
                return Err(format!("{client}: publish handshake incomplete"));
            }
        }
        Ok(())
    }

    fn check_consistent(&self) -> Result<(), String> {
        for client in CLIENTS {
            let engine = self.conn(client).is_some();
            let model = self.model.connected.contains_key(client);
            if engine != model {
                return Err(format!("{client}: connected {engine}, model says {model}"));
            }
            let engine = self.sim.broker.has_session(client);
            let model = self.model.sessions.contains_key(client);
            if engine != model {
                return Err(format!("{client}: session {engine}, model says {model}"));
            }
        }
        if self.sim.broker.retained_count() != self.model.retained.len() {
            return Err("retained count differs".into());
        }
        if self.sim.broker.stats().dropped != 0 {
            return Err("messages dropped within limits".into());
        }
        Ok(())
    }

    /// The end of a scenario: every persistent session comes back, every
    /// acknowledgement goes out; then nothing may be missing, queued or in
    /// flight, and after every session is ended nothing may be left.
    fn finish(&mut self) -> Result<(), String> {
        let _ = writeln!(self.log, "-- finish");
        for client in CLIENTS {
            let offline_persistent = self.conn(client).is_none()
                && self
                    .model
                    .sessions
                    .get(client)
                    .is_some_and(|s| s.persistent);
            if offline_persistent {
                let v5 = self.clients[client].protocol == Some(Protocol::V5);
                self.apply(&Op::Connect {
                    client,
                    v5,
                    clean_start: false,
                    persist: true,
                    keep_alive: false,
                })?;
            }
            if self.conn(client).is_some() {
                self.apply(&Op::Hold {
                    client,
                    hold: false,
                })?;
                self.apply(&Op::Release { client })?;
            }
        }
        self.model.check_complete()?;
        for client in CLIENTS {
            let (queued, inflight) = (
                self.sim.broker.queued_count(client),
                self.sim.broker.inflight_count(client),
            );
            if queued + inflight > 0 {
                return Err(format!(
                    "{client}: {queued} queued, {inflight} in flight after everything was acked"
                ));
            }
        }
        for client in CLIENTS {
            if self.conn(client).is_some() {
                self.apply(&Op::Disconnect { client })?;
            }
            self.apply(&Op::Connect {
                client,
                v5: false,
                clean_start: true,
                persist: false,
                keep_alive: false,
            })?;
            self.apply(&Op::Disconnect { client })?;
        }
        self.sim.assert_no_leaks();
        Ok(())
    }
}

/// Runs a scenario to its end; `Err` explains the first disagreement.
fn run_with(ops: &[Op], sabotage: bool) -> Result<Driver, String> {
    let mut d = Driver::new();
    d.sabotage = sabotage;
    for op in ops {
        d.apply(op).map_err(|e| format!("{e}\ntrace:\n{}", d.log))?;
    }
    d.finish().map_err(|e| format!("{e}\ntrace:\n{}", d.log))?;
    Ok(d)
}

fn run(ops: &[Op]) -> Result<Driver, String> {
    run_with(ops, false)
}

proptest! {
    #![proptest_config(ProptestConfig {
        // About 2 s in debug; PROPTEST_CASES=100000 for a long hunt.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1024),
        // Shrinking replays whole scenarios; keep it bounded.
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_agrees_with_the_model(ops in proptest::collection::vec(op_strategy(), 1..48)) {
        if let Err(e) = run(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

// ---- the model is not vacuous ----

fn c(client: &'static str, v5: bool, clean_start: bool, persist: bool) -> Op {
    Op::Connect {
        client,
        v5,
        clean_start,
        persist,
        keep_alive: false,
    }
}

fn publish(client: &'static str, topic: &'static str, qos: QoS, retain: bool) -> Op {
    Op::Publish {
        client,
        topic,
        qos,
        retain,
    }
}

/// A persistent subscriber that crashes with unacknowledged messages and
/// comes back sees everything, once at QoS 2.
#[test]
fn model_scenario_offline_queue_and_resend() {
    let ops = [
        c("c0", true, true, true),
        Op::Subscribe {
            client: "c0",
            filter: "a/#",
            qos: QoS::ExactlyOnce,
        },
        Op::Hold {
            client: "c0",
            hold: true,
        },
        c("c1", false, true, false),
        publish("c1", "a/b", QoS::ExactlyOnce, false),
        publish("c1", "a/c", QoS::AtLeastOnce, true),
        publish("c1", "a/b", QoS::ExactlyOnce, false),
        publish("c1", "a/b", QoS::ExactlyOnce, false),
        publish("c1", "a/b", QoS::ExactlyOnce, false),
        Op::Crash { client: "c0" },
        publish("c1", "a/b", QoS::AtLeastOnce, false),
        publish("c1", "a/b", QoS::AtMostOnce, false),
        c("c0", false, false, true),
        Op::Release { client: "c0" },
        c("c2", true, false, false),
        Op::Subscribe {
            client: "c2",
            filter: "a/#",
            qos: QoS::AtLeastOnce,
        },
        Op::Advance { secs: 20 },
    ];
    let d = run(&ops).unwrap_or_else(|e| panic!("{e}"));
    // c0: 4 × QoS 2 and QoS 1 live or resumed, QoS 1 queued offline (QoS 0
    // offline is not queued); c2: the retained message on subscribing.
    assert!(d.delivered >= 7, "deliveries: {}\n{}", d.delivered, d.log);
}

/// The model catches a client that loses a QoS 1 message.
#[test]
fn model_detects_a_lost_message() {
    let ops = [
        c("c0", false, false, true),
        Op::Subscribe {
            client: "c0",
            filter: "#",
            qos: QoS::AtLeastOnce,
        },
        publish("c0", "x/b", QoS::AtLeastOnce, false),
    ];
    let err = run_with(&ops, true).err().expect("loss must be detected");
    assert!(err.contains("never received"), "{err}");
}

/// Keep-alive: silence for more than 15 s closes a connection with a 10 s
/// keep-alive (activity, acknowledgements included, restarts the count),
/// and the persistent session keeps its messages.
#[test]
fn model_scenario_keep_alive() {
    let ops = [
        Op::Connect {
            client: "c0",
            v5: true,
            clean_start: true,
            persist: true,
            keep_alive: true,
        },
        Op::Subscribe {
            client: "c0",
            filter: "a/+",
            qos: QoS::AtLeastOnce,
        },
        Op::Advance { secs: 6 },
        Op::Ping { client: "c0" },
        Op::Advance { secs: 6 },
        Op::Advance { secs: 6 },
        c("c1", true, true, false),
        publish("c1", "a/c", QoS::AtLeastOnce, false),
        Op::Advance { secs: 6 },
    ];
    let mut d = Driver::new();
    for op in &ops {
        d.apply(op).unwrap_or_else(|e| panic!("{e}\n{}", d.log));
    }
    assert!(d.model.connected.contains_key("c0"), "acks keep it alive");
    d.apply(&Op::Advance { secs: 20 }).unwrap();
    assert!(!d.model.connected.contains_key("c0"));
    assert!(d.conn("c0").is_none());
    d.apply(&publish("c1", "a/b", QoS::ExactlyOnce, false))
        .unwrap();
    d.finish().unwrap_or_else(|e| panic!("{e}\n{}", d.log));
}
