//! The cluster link: this broker as one node of a roost cluster joined
//! through NATS (`[cluster]` in the configuration).
//!
//! Written once for every runtime. The link is a thread of its own running
//! a small current-thread tokio runtime with the `async-nats` client; the
//! sans-IO driver talks to it through one bounded channel each way and the
//! runtime's existing wake-up for finished jobs:
//!
//! ```text
//!  engine ─Action::Forward/Interest/Claimed─► Driver ─try_send (bounded)─► link thread ─► NATS
//!  NATS ─► link thread: decode, drop echoes and duplicates
//!        ─► JobDone batch on the pool's done queue + wake (at most `queue` outstanding)
//!        ─► Driver::handle_job_done ─► Broker::publish_remote / set_retained / release_client
//! ```
//!
//! The driver starts the link by handing the runtime a [`crate::driver::Job`]
//! that [`crate::pool::Pool::submit`] recognises and runs on a dedicated
//! thread instead of a worker; so `roost`, `roost-smol`, `roost-mio` and
//! `roost-std` need no code of their own for it.
//!
//! # Subjects
//!
//! Every subject starts with `<prefix>` (`cluster.prefix`, `roost` by
//! default). A message on MQTT topic `a/b` travels on `<prefix>.m._a._b`:
//! each level becomes a token `_` + the level with every byte other than
//! ASCII letters, digits, `-` and `_` written `=XX` (hex). So an empty level
//! is `_`, and `.`, `*`, `>`, `$`, spaces and `=` can neither end a token nor
//! collide: the mapping is injective. A filter maps level by level, `+` to
//! `*`; a trailing `#` becomes two subscriptions, the parent itself and
//! `parent.>` (MQTT's `a/#` matches `a`; NATS's `a.>` does not). NATS then
//! sends a message only to the nodes that subscribed to a matching subject.
//! A shared subscription `$share/g/f` is a NATS queue subscription on the
//! subjects of `f` in a queue group named after `g` and `f`, so one node of
//! those with members gets each message, and that node picks one member.
//!
//! Every node says it is alive on `<prefix>.hb` each [`HEARTBEAT`], with
//! the number of clients connected to it: each node keeps a table of its
//! peers (logged as they join and leave; one silent for
//! [`PEER_TIMEOUT`] has left) for the cluster totals in `$SYS`.
//!
//! Claims (a client connected somewhere) go on `<prefix>.claim`; retained
//! messages live in the JetStream key-value bucket `<prefix>_retained`,
//! keyed by the same tokens, which every node watches. A node listens on
//! `<prefix>.s.<client token>` for each session it holds, where a node that
//! the client reconnects to asks for it (see `handover`).
//!
//! # What a failure loses
//!
//! Between live nodes with live NATS connections a message is carried by
//! TCP and delivered once to each matching node (nodes drop the duplicates
//! NATS sends for overlapping subscriptions). It is lost, and the loss is
//! logged and counted (`cluster_dropped`), when the driver's queue to the
//! link is full, or when a node reads from NATS slower than messages come
//! for long enough that NATS or the client's per-subscription buffer
//! (`cluster.queue` messages) gives up on it ("slow consumer"). A node that
//! crashes loses what it had not yet written to NATS (the messages its
//! clients published in its last moments, acknowledged or not: the PUBACK
//! does not wait for the cluster), and the messages other nodes sent it
//! that it had not yet delivered to its sessions. A NATS server that fails
//! loses what was in flight through it; the client reconnects to another
//! one and resubscribes. A session moves with its client when the client
//! reconnects to another node with Clean Start 0 (its QoS 1/2 messages,
//! not its QoS 0 ones; messages published while it moves, a few
//! milliseconds, may miss it); a session does not survive its node (see
//! the README).

mod handover;

use crate::config::Cluster;
use crate::driver::JobDone;
use crate::pool::Wake;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use roost_core::MqttStr;
use roost_core::broker::{FetchToken, Message, RecoveredSession, RemoteTarget, SessionOwner};
use roost_core::codec::{
    DecodeOptions, Packet, PacketId, Protocol, Publish, QoS, QosPid, decode_with,
};
use roost_core::topic::{TopicFilter, TopicName};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

/// The largest NATS subject the link publishes on: nats-server refuses a
/// protocol line over 4 KiB by default. A message whose topic maps to a
/// longer subject is not forwarded (logged and counted).
pub const MAX_SUBJECT: usize = 3072;

/// Recent message sequence numbers remembered per origin node, to drop the
/// duplicates NATS delivers when several of a node's subscriptions match.
const DEDUP_WINDOW: usize = 512;

/// Origin nodes remembered for de-duplication; more (a cluster of
/// thousands, or forged names) resets the memory.
const MAX_ORIGINS: usize = 1024;

/// The most inbound messages handed to the driver in one batch.
const BATCH: usize = 256;

/// The most the retained bucket holds (JetStream refuses further puts; each
/// node still keeps its own retained messages).
const RETAINED_BUCKET_BYTES: i64 = 1 << 30;

/// The frame format version; a node refuses frames of another version.
const VERSION: u8 = 1;

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// A peer not heard of for this long has left the cluster.
pub const PEER_TIMEOUT: Duration = Duration::from_millis(3500);

// ---------------------------------------------------------------- subjects

fn push_token(level: &[u8], out: &mut String) {
    out.push('_');
    for &b in level {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('=');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// The NATS subject tokens of a topic's levels, joined by `.`.
pub fn topic_tokens(topic: &TopicName) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    for (i, level) in topic.levels().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_token(level, &mut out);
    }
    out
}

/// The subject a message on `topic` travels on.
pub fn topic_subject(prefix: &str, topic: &TopicName) -> String {
    format!("{prefix}.m.{}", topic_tokens(topic))
}

/// The subjects a node subscribes to for `filter` (one, or two for a
/// trailing `#`).
pub fn filter_subjects(prefix: &str, filter: &TopicFilter) -> Vec<String> {
    let mut base = format!("{prefix}.m");
    let mut levels = filter.levels().peekable();
    while let Some(level) = levels.next() {
        match level {
            b"#" if levels.peek().is_none() => {
                // `a/#` also matches `a` itself; a lone `#` matches every
                // topic, and every topic has at least one level.
                let parent = (base != format!("{prefix}.m")).then(|| base.clone());
                let mut subjects = vec![format!("{base}.>")];
                subjects.extend(parent);
                return subjects;
            }
            b"+" => base.push_str(".*"),
            _ => {
                base.push('.');
                push_token(level, &mut base);
            }
        }
    }
    vec![base]
}

/// The NATS queue group of shared subscription `$share/<group>/<filter>`:
/// unique per group and filter (NATS picks one member per queue group among
/// all subscriptions that match, so two MQTT shared subscriptions must
/// never share one). `=Z` never occurs inside an escaped token.
pub fn queue_name(group: &str, filter: &TopicFilter) -> String {
    let mut out = String::new();
    push_token(group.as_bytes(), &mut out);
    for level in filter.levels() {
        out.push_str("=Z");
        push_token(level, &mut out);
    }
    out
}

// ------------------------------------------------------------------ frames

/// Writes `message` as an MQTT 5 PUBLISH: the engine's own codec carries
/// every property across.
fn encode_publish(message: &Message, out: &mut BytesMut) -> bool {
    let qos = match message.qos {
        QoS::AtMostOnce => QosPid::AtMostOnce,
        QoS::AtLeastOnce => QosPid::AtLeastOnce(PacketId::MIN),
        QoS::ExactlyOnce => QosPid::ExactlyOnce(PacketId::MIN),
    };
    let publish = Publish {
        dup: false,
        qos,
        retain: message.retain,
        topic: message.topic.clone(),
        payload: message.payload.clone(),
        properties: message.properties.clone(),
    };
    Packet::Publish(publish).encode(Protocol::V5, out).is_ok()
}

fn decode_publish(mut bytes: BytesMut) -> Option<Message> {
    match decode_with(
        &mut bytes,
        Protocol::V5,
        usize::MAX,
        DecodeOptions::default(),
    ) {
        Ok(Some(Packet::Publish(p))) if bytes.is_empty() => Some(Message {
            qos: p.qos.qos(),
            topic: p.topic,
            payload: p.payload,
            retain: p.retain,
            properties: p.properties,
        }),
        _ => None,
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(u16::try_from(s.len()).unwrap_or(u16::MAX));
    out.put_slice(&s[..s.len().min(usize::from(u16::MAX))]);
}

fn get_str(buf: &mut Bytes) -> Option<Bytes> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = usize::from(buf.get_u16());
    (buf.remaining() >= len).then(|| buf.split_to(len))
}

fn mqtt_str(bytes: Bytes) -> Option<MqttStr> {
    MqttStr::copy_from_str(std::str::from_utf8(&bytes).ok()?).ok()
}

/// A message between nodes: who sent it, from which client, and the
/// message as an MQTT 5 PUBLISH.
struct Frame {
    /// The sending node's name and run (`name#incarnation`).
    node: Bytes,
    seq: u64,
    client_id: Option<MqttStr>,
    username: Option<MqttStr>,
    message: Message,
}

fn encode_frame(
    node: &str,
    seq: u64,
    client_id: Option<&MqttStr>,
    username: Option<&MqttStr>,
    message: &Message,
) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(message.payload.len() + message.topic.len() + 64);
    out.put_u8(VERSION);
    put_str(&mut out, node.as_bytes());
    out.put_u64(seq);
    out.put_u8(u8::from(client_id.is_some()) | (u8::from(username.is_some()) << 1));
    put_str(
        &mut out,
        client_id.map_or(&[][..], |c| c.as_str().as_bytes()),
    );
    put_str(
        &mut out,
        username.map_or(&[][..], |u| u.as_str().as_bytes()),
    );
    encode_publish(message, &mut out).then(|| out.freeze())
}

fn decode_frame(mut buf: Bytes) -> Option<Frame> {
    if buf.remaining() < 1 || buf.get_u8() != VERSION {
        return None;
    }
    let node = get_str(&mut buf)?;
    if buf.remaining() < 9 {
        return None;
    }
    let seq = buf.get_u64();
    let flags = buf.get_u8();
    let client_id = get_str(&mut buf)?;
    let username = get_str(&mut buf)?;
    let client_id = if flags & 1 != 0 {
        Some(mqtt_str(client_id)?)
    } else {
        None
    };
    let username = if flags & 2 != 0 {
        Some(mqtt_str(username)?)
    } else {
        None
    };
    Some(Frame {
        node,
        seq,
        client_id,
        username,
        message: decode_publish(BytesMut::from(&buf[..]))?,
    })
}

fn encode_claim(node: &str, client_id: &MqttStr, clean_start: bool) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(VERSION);
    put_str(&mut out, node.as_bytes());
    out.put_u8(u8::from(clean_start));
    put_str(&mut out, client_id.as_str().as_bytes());
    out.freeze()
}

fn decode_claim(mut buf: Bytes) -> Option<(Bytes, bool, MqttStr)> {
    if buf.remaining() < 1 || buf.get_u8() != VERSION {
        return None;
    }
    let node = get_str(&mut buf)?;
    if buf.remaining() < 1 {
        return None;
    }
    let clean_start = buf.get_u8() != 0;
    let client_id = mqtt_str(get_str(&mut buf)?)?;
    Some((node, clean_start, client_id))
}

fn encode_heartbeat(node: &str, clients: u64, leaving: bool) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(VERSION);
    put_str(&mut out, node.as_bytes());
    out.put_u64(clients);
    out.put_u8(u8::from(leaving));
    out.freeze()
}

fn decode_heartbeat(mut buf: Bytes) -> Option<(Bytes, u64, bool)> {
    if buf.remaining() < 1 || buf.get_u8() != VERSION {
        return None;
    }
    let node = get_str(&mut buf)?;
    if buf.remaining() < 9 {
        return None;
    }
    Some((node, buf.get_u64(), buf.get_u8() != 0))
}

/// A node's view of the other nodes, from their heartbeats.
#[derive(Default)]
struct Peers {
    /// By node name: its run (`name#incarnation`), when last heard, its
    /// clients.
    known: HashMap<String, (Bytes, std::time::Instant, u64)>,
}

impl Peers {
    /// A heartbeat from `sender` (`name#incarnation`).
    fn heard(&mut self, sender: &Bytes, clients: u64, leaving: bool, now: std::time::Instant) {
        let text = String::from_utf8_lossy(sender);
        let name = text.split('#').next().unwrap_or_default().to_owned();
        if leaving {
            if self.known.remove(&name).is_some() {
                info!(peer = %name, "cluster: peer left");
            }
            return;
        }
        let room = self.known.len() < MAX_ORIGINS;
        match self.known.get_mut(&name) {
            Some(peer) => {
                if peer.0 != *sender {
                    info!(peer = %name, "cluster: peer restarted");
                    peer.0 = sender.clone();
                }
                peer.1 = now;
                peer.2 = clients;
            }
            None if room => {
                info!(peer = %name, "cluster: peer joined");
                self.known.insert(name, (sender.clone(), now, clients));
            }
            None => {}
        }
    }

    /// Forgets the peers silent since `PEER_TIMEOUT` before `now`.
    fn expire(&mut self, now: std::time::Instant) {
        self.known.retain(|name, peer| {
            let live = now.duration_since(peer.1) < PEER_TIMEOUT;
            if !live {
                warn!(peer = %name, "cluster: peer left (no heartbeat)");
            }
            live
        });
    }

    /// Nodes and clients cluster-wide, with this node's `local` clients.
    fn totals(&self, local: u64) -> (u64, u64) {
        let clients = self.known.values().map(|p| p.2).sum::<u64>() + local;
        (self.known.len() as u64 + 1, clients)
    }
}

// ---------------------------------------------------------- driver <-> link

/// What the driver asks of the link.
#[derive(Debug)]
pub(crate) enum ToLink {
    /// Send a message published here to the interested nodes (and to the
    /// retained bucket if it is retained).
    Forward {
        message: Box<Message>,
        client_id: Option<MqttStr>,
        username: Option<MqttStr>,
    },
    /// Subscribe to, or stop, a filter (with a group: as a shared one).
    Interest {
        filter: TopicFilter,
        group: Option<MqttStr>,
        present: bool,
    },
    /// A client connected here: the others let go of it.
    Claim {
        client_id: MqttStr,
        clean_start: bool,
    },
    /// This node holds a client's session now (the others may ask for it),
    /// or no longer.
    Hosting { client_id: MqttStr, present: bool },
    /// Ask the node that holds a client's session for it.
    Fetch {
        token: FetchToken,
        client_id: MqttStr,
        owner: SessionOwner,
    },
    /// The answer to a [`FromLink::HandOver`].
    HandedOver {
        reply: String,
        session: Option<Box<RecoveredSession>>,
    },
}

/// What the link hands the driver.
#[derive(Debug)]
pub(crate) enum FromLink {
    /// A message another node published, for `target`.
    Message {
        message: Message,
        client_id: Option<MqttStr>,
        username: Option<MqttStr>,
        target: RemoteTarget,
    },
    /// The retained message of a topic changed somewhere.
    Retained(Message),
    /// A client connected on another node.
    Release {
        client_id: MqttStr,
        clean_start: bool,
    },
    /// The NATS connection went up or down (see [`ClusterStats`]).
    Status,
    /// The answer to a [`ToLink::Fetch`].
    Fetched {
        token: FetchToken,
        session: Option<Box<RecoveredSession>>,
    },
    /// Another node asks for a session held here; answer with
    /// [`ToLink::HandedOver`] to `reply`.
    HandOver {
        client_id: MqttStr,
        owner: SessionOwner,
        reply: String,
    },
}

/// Counters shared by the link and the driver (for logs, `$SYS` and
/// metrics).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Messages handed to NATS.
    pub forwarded: AtomicU64,
    /// Messages from other nodes handed to the driver (not counting
    /// retained-bucket updates and claims).
    pub received: AtomicU64,
    /// Messages lost on the way (a full queue, a slow consumer, a topic too
    /// long for a subject, an undecodable frame).
    pub dropped: AtomicU64,
    /// Claims heard from other nodes (their clients' connections).
    pub claims: AtomicU64,
    /// Whether the NATS connection is up (1) or not (0).
    pub connected: AtomicU64,
    /// Nodes in the cluster as this node sees it, itself included.
    pub nodes: AtomicU64,
    /// Clients connected to this node (the driver keeps it current).
    pub local_clients: AtomicU64,
    /// Clients connected cluster-wide: this node's, and its live peers' as
    /// their last heartbeats said.
    pub clients: AtomicU64,
}

/// The link's half, handed to the thread that runs it.
pub struct LinkStart {
    config: Cluster,
    to_link: mpsc::Receiver<ToLink>,
    /// Inbound messages handed to the driver and not yet taken: the link
    /// stops reading NATS at `config.queue`.
    outstanding: Arc<AtomicUsize>,
    stats: Arc<ClusterStats>,
}

impl std::fmt::Debug for LinkStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkStart")
            .field("node", &self.config.node)
            .finish()
    }
}

/// The driver's half.
pub(crate) struct LinkHandle {
    pub(crate) to_link: mpsc::Sender<ToLink>,
    pub(crate) outstanding: Arc<AtomicUsize>,
    pub(crate) stats: Arc<ClusterStats>,
}

/// Both halves of a link for `config`; nothing runs until
/// [`LinkStart::run`].
pub(crate) fn link(config: &Cluster) -> (LinkHandle, LinkStart) {
    let (tx, rx) = mpsc::channel(config.queue);
    let outstanding = Arc::new(AtomicUsize::new(0));
    let stats = Arc::new(ClusterStats::default());
    (
        LinkHandle {
            to_link: tx,
            outstanding: outstanding.clone(),
            stats: stats.clone(),
        },
        LinkStart {
            config: config.clone(),
            to_link: rx,
            outstanding,
            stats,
        },
    )
}

/// How `deliver` hands batches to the driver: the pool's queue of finished
/// jobs and its wake-up.
pub(crate) type Deliver = Box<dyn Fn(Vec<FromLink>) + Send>;

impl LinkStart {
    /// Runs the link until the driver drops its half (shutdown). Blocks:
    /// run it on a thread of its own.
    pub(crate) fn run(self, done: std::sync::mpsc::Sender<JobDone>, wake: Wake) {
        let deliver: Deliver = Box::new(move |batch| {
            if done.send(JobDone::cluster(batch)).is_ok() {
                wake();
            }
        });
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                error!(error = %e, "cluster: cannot start the link's runtime; this node stays alone");
                return;
            }
        };
        runtime.block_on(self.serve(deliver));
    }

    async fn serve(mut self, deliver: Deliver) {
        let config = self.config.clone();
        let stats = self.stats.clone();
        // Connection changes, so the driver publishes them in `$SYS` at once.
        let (status_tx, mut status_rx) = mpsc::channel::<()>(4);
        // Two connections: the node publishes on the first, which does not
        // echo its own messages back to its own (plain) subscriptions (the
        // node delivers those itself); the queue subscriptions of shared
        // groups live on the second, so a group with members here can be
        // picked for a message published here too.
        let clients = async {
            let main = connect(&config, stats.clone(), Some(status_tx), true).await?;
            let shared = connect(&config, stats.clone(), None, false).await?;
            Ok::<_, Box<dyn std::error::Error>>((main, shared))
        };
        let (client, shared_client) = match clients.await {
            Ok(clients) => clients,
            Err(e) => {
                error!(error = %e, "cluster: cannot use the NATS settings; this node stays alone");
                // Drain the driver's queue so it never fills for nothing.
                while self.to_link.recv().await.is_some() {}
                return;
            }
        };
        info!(node = %config.node, urls = ?config.urls, "cluster: joining through NATS");
        // This run of the node: a restarted node numbers its messages from
        // 1 again, and must not be taken for its former self (whose
        // numbers the others remember, and whose retained messages it must
        // take back from the bucket).
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        let sender = format!("{}#{incarnation:x}", config.node);
        let (inbound_tx, mut inbound_rx) = mpsc::channel::<Inbound>(config.queue);
        // Heartbeats bypass the bound on messages waiting for the driver:
        // the link itself takes them.
        let (heartbeat_tx, mut heartbeat_rx) = mpsc::channel::<(Bytes, u64, bool)>(64);
        // Claims from every node.
        let claims = match client.subscribe(format!("{}.claim", config.prefix)).await {
            Ok(sub) => Some(tokio::task::spawn(forward_subscription(
                sub,
                Target::Claim,
                inbound_tx.clone(),
            ))),
            Err(e) => {
                error!(error = %e, "cluster: cannot subscribe to claims");
                None
            }
        };
        // Retained messages: a sequential writer (one put after another
        // keeps each topic's order) and a watcher of the whole bucket.
        let (retain_tx, retain_rx) = mpsc::channel::<(String, Bytes)>(config.queue);
        let retained = config.retained.then(|| {
            tokio::task::spawn(retained_bucket(
                client.clone(),
                config.clone(),
                retain_rx,
                inbound_tx.clone(),
                stats.clone(),
            ))
        });
        let mut subscriptions: HashMap<
            (TopicFilter, Option<MqttStr>),
            Vec<tokio::task::JoinHandle<()>>,
        > = HashMap::new();
        // The sessions held here, each listened for.
        let mut hosting: HashMap<MqttStr, tokio::task::JoinHandle<()>> = HashMap::new();
        let (fetched_tx, mut fetched_rx) = mpsc::channel::<FromLink>(config.queue);
        let mut dedup = Dedup::default();
        let mut seq: u64 = 0;
        // Heartbeats: every node's, and this node's own on a timer.
        let heartbeats = match client.subscribe(format!("{}.hb", config.prefix)).await {
            Ok(mut sub) => Some(tokio::task::spawn(async move {
                while let Some(message) = sub.next().await {
                    let Some(beat) = decode_heartbeat(message.payload) else {
                        continue;
                    };
                    // Full: the link is busy; the next one will do.
                    let _ = heartbeat_tx.try_send(beat);
                }
            })),
            Err(e) => {
                error!(error = %e, "cluster: cannot hear other nodes' heartbeats");
                None
            }
        };
        let mut peers = Peers::default();
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        stats.nodes.store(1, Ordering::Relaxed);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                request = self.to_link.recv() => {
                    let Some(request) = request else { break };
                    match request {
                        ToLink::Forward { message, client_id, username } => {
                            seq += 1;
                            let subject = topic_subject(&config.prefix, &message.topic);
                            let frame = encode_frame(&sender, seq, client_id.as_ref(), username.as_ref(), &message);
                            let Some(frame) = frame.filter(|_| subject.len() <= MAX_SUBJECT) else {
                                stats.dropped.fetch_add(1, Ordering::Relaxed);
                                warn!(topic = %message.topic.as_str(), "cluster: message not forwarded: topic too long for a NATS subject");
                                continue;
                            };
                            if message.retain && config.retained {
                                let key = topic_tokens(&message.topic);
                                if retain_tx.try_send((key, frame.clone())).is_err() {
                                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                                    warn!(topic = %message.topic.as_str(), "cluster: retained message not stored cluster-wide: queue full");
                                }
                            }
                            match client.publish(subject, frame).await {
                                Ok(()) => { stats.forwarded.fetch_add(1, Ordering::Relaxed); }
                                Err(e) => {
                                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                                    warn!(error = %e, "cluster: publish failed");
                                }
                            }
                        }
                        ToLink::Interest { filter, group, present } => {
                            let key = (filter, group);
                            if !present {
                                for task in subscriptions.remove(&key).unwrap_or_default() {
                                    task.abort();
                                }
                                continue;
                            }
                            if subscriptions.contains_key(&key) {
                                continue;
                            }
                            let (filter, group) = &key;
                            let target = match group {
                                None => Target::Plain,
                                Some(g) => Target::Shared(RemoteTarget::Shared { group: g.clone(), filter: filter.clone() }),
                            };
                            let mut tasks = Vec::new();
                            for subject in filter_subjects(&config.prefix, filter) {
                                let sub = match group {
                                    None => client.subscribe(subject).await,
                                    Some(g) => shared_client.queue_subscribe(subject, queue_name(g.as_str(), filter)).await,
                                };
                                match sub {
                                    Ok(sub) => tasks.push(tokio::task::spawn(forward_subscription(sub, target.clone(), inbound_tx.clone()))),
                                    Err(e) => error!(filter = %filter.as_str(), error = %e, "cluster: cannot subscribe; this node misses messages for it"),
                                }
                            }
                            debug!(filter = %filter.as_str(), group = ?group.as_ref().map(|g| g.as_str()), "cluster: interest");
                            subscriptions.insert(key, tasks);
                        }
                        ToLink::Claim { client_id, clean_start } => {
                            let payload = encode_claim(&sender, &client_id, clean_start);
                            if let Err(e) = client.publish(format!("{}.claim", config.prefix), payload).await {
                                warn!(error = %e, client_id = %client_id, "cluster: claim not sent");
                            }
                        }
                        ToLink::Hosting { client_id, present } => {
                            if !present {
                                if let Some(task) = hosting.remove(&client_id) {
                                    task.abort();
                                }
                                continue;
                            }
                            if hosting.contains_key(&client_id) {
                                continue;
                            }
                            let subject = handover::subject(&config.prefix, &client_id);
                            if subject.len() > MAX_SUBJECT {
                                continue;
                            }
                            match client.subscribe(subject).await {
                                Ok(sub) => {
                                    let task = tokio::task::spawn(forward_subscription(sub, Target::HandOver, inbound_tx.clone()));
                                    hosting.insert(client_id, task);
                                }
                                Err(e) => warn!(error = %e, client_id = %client_id, "cluster: other nodes cannot ask for this session"),
                            }
                        }
                        ToLink::Fetch { token, client_id, owner } => {
                            let (client, prefix, sender, done) = (client.clone(), config.prefix.clone(), sender.clone(), fetched_tx.clone());
                            tokio::task::spawn(async move {
                                let session = if handover::subject(&prefix, &client_id).len() > MAX_SUBJECT {
                                    None
                                } else {
                                    handover::fetch(client, prefix, sender, client_id, owner).await
                                };
                                let _ = done.send(FromLink::Fetched { token, session: session.map(Box::new) }).await;
                            });
                        }
                        ToLink::HandedOver { reply, session } => {
                            tokio::task::spawn(handover::answer(client.clone(), reply, session));
                        }
                    }
                }
                inbound = inbound_rx.recv(), if self.outstanding.load(Ordering::Acquire) < config.queue => {
                    let Some(first) = inbound else { continue };
                    let mut next = Some(first);
                    while let Some(inbound) = next.take() {
                        if let Some(item) = accept(&sender, &mut dedup, inbound, &stats) {
                            batch.push(item);
                        }
                        if batch.len() < BATCH && self.outstanding.load(Ordering::Acquire) + batch.len() < config.queue {
                            next = inbound_rx.try_recv().ok();
                        }
                    }
                    if !batch.is_empty() {
                        self.outstanding.fetch_add(batch.len(), Ordering::AcqRel);
                        let messages = batch.iter().filter(|i| matches!(i, FromLink::Message { .. })).count();
                        let claims = batch.iter().filter(|i| matches!(i, FromLink::Release { .. })).count();
                        stats.claims.fetch_add(claims as u64, Ordering::Relaxed);
                        stats.received.fetch_add(messages as u64, Ordering::Relaxed);
                        deliver(std::mem::take(&mut batch));
                    }
                }
                Some(()) = status_rx.recv() => deliver(vec![FromLink::Status]),
                _ = beat.tick() => {
                    let local = stats.local_clients.load(Ordering::Relaxed);
                    let frame = encode_heartbeat(&sender, local, false);
                    if let Err(e) = client.publish(format!("{}.hb", config.prefix), frame).await {
                        debug!(error = %e, "cluster: heartbeat not sent");
                    }
                    peers.expire(std::time::Instant::now());
                    let (nodes, clients) = peers.totals(local);
                    stats.nodes.store(nodes, Ordering::Relaxed);
                    stats.clients.store(clients, Ordering::Relaxed);
                }
                Some((node, clients, leaving)) = heartbeat_rx.recv() => {
                    if node.as_ref() != sender.as_bytes() {
                        peers.heard(&node, clients, leaving, std::time::Instant::now());
                        let (nodes, clients) = peers.totals(stats.local_clients.load(Ordering::Relaxed));
                        stats.nodes.store(nodes, Ordering::Relaxed);
                        stats.clients.store(clients, Ordering::Relaxed);
                    }
                }
                Some(fetched) = fetched_rx.recv() => {
                    self.outstanding.fetch_add(1, Ordering::AcqRel);
                    deliver(vec![fetched]);
                }
                // The driver is behind: look again shortly (it takes
                // batches as its loop turns).
                _ = tokio::time::sleep(Duration::from_millis(1)), if self.outstanding.load(Ordering::Acquire) >= config.queue => {}
            }
        }
        // Shutdown: the driver let go. Stop listening, send what is queued.
        for task in subscriptions
            .into_values()
            .flatten()
            .chain(claims)
            .chain(heartbeats)
            .chain(hosting.into_values())
        {
            task.abort();
        }
        drop(retain_tx);
        if let Some(retained) = retained {
            retained.abort();
        }
        // The others need not wait for silence to know this node left.
        let _ = client
            .publish(
                format!("{}.hb", config.prefix),
                encode_heartbeat(&sender, 0, true),
            )
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        drop(shared_client);
        info!(node = %config.node, "cluster: left");
    }
}

/// What a NATS subscription is for.
#[derive(Debug, Clone)]
enum Target {
    Plain,
    Shared(RemoteTarget),
    Claim,
    Retained,
    /// A request for a session held here.
    HandOver,
}

struct Inbound {
    target: Target,
    payload: Bytes,
    /// Where the answer goes (requests for sessions).
    reply: Option<String>,
}

async fn forward_subscription(
    mut sub: async_nats::Subscriber,
    target: Target,
    tx: mpsc::Sender<Inbound>,
) {
    while let Some(message) = sub.next().await {
        let inbound = Inbound {
            target: target.clone(),
            payload: message.payload,
            reply: message.reply.map(|r| r.to_string()),
        };
        if tx.send(inbound).await.is_err() {
            return;
        }
    }
}

/// Remembers the last sequence numbers seen from each node.
#[derive(Default)]
struct Dedup {
    seen: HashMap<Bytes, (VecDeque<u64>, HashSet<u64>)>,
}

impl Dedup {
    /// Whether `seq` from `node` is new (and remember it).
    fn fresh(&mut self, node: &Bytes, seq: u64) -> bool {
        if self.seen.len() >= MAX_ORIGINS && !self.seen.contains_key(node) {
            self.seen.clear();
        }
        let (order, set) = self.seen.entry(node.clone()).or_default();
        if !set.insert(seq) {
            return false;
        }
        order.push_back(seq);
        if order.len() > DEDUP_WINDOW {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }
}

/// Decodes what came in and decides whether the driver must see it.
fn accept(
    sender: &str,
    dedup: &mut Dedup,
    inbound: Inbound,
    stats: &ClusterStats,
) -> Option<FromLink> {
    let own = |node: &Bytes| node.as_ref() == sender.as_bytes();
    match inbound.target {
        Target::HandOver => {
            let reply = inbound.reply?;
            let Some((node, client_id, owner)) = handover::decode_request(inbound.payload) else {
                warn!("cluster: undecodable session request dropped");
                return None;
            };
            (!own(&node)).then_some(FromLink::HandOver {
                client_id,
                owner,
                reply,
            })
        }
        Target::Claim => {
            let Some((node, clean_start, client_id)) = decode_claim(inbound.payload) else {
                warn!("cluster: undecodable claim dropped");
                return None;
            };
            (!own(&node)).then_some(FromLink::Release {
                client_id,
                clean_start,
            })
        }
        target => {
            let Some(frame) = decode_frame(inbound.payload) else {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                warn!("cluster: undecodable message dropped (another roost version?)");
                return None;
            };
            match target {
                // A node delivers its own messages to its plain subscribers
                // itself; several matching subscriptions bring several
                // copies.
                Target::Plain => {
                    if own(&frame.node) || !dedup.fresh(&frame.node, frame.seq) {
                        return None;
                    }
                    Some(FromLink::Message {
                        message: frame.message,
                        client_id: frame.client_id,
                        username: frame.username,
                        target: RemoteTarget::Subscribers,
                    })
                }
                Target::Shared(target) => Some(FromLink::Message {
                    message: frame.message,
                    client_id: frame.client_id,
                    username: frame.username,
                    target,
                }),
                Target::Retained => {
                    (!own(&frame.node)).then_some(FromLink::Retained(frame.message))
                }
                Target::Claim | Target::HandOver => None,
            }
        }
    }
}

/// One NATS connection; `status` (the main connection's) hears of
/// connection changes, and `no_echo` keeps this connection's messages from
/// its own subscriptions.
async fn connect(
    config: &Cluster,
    stats: Arc<ClusterStats>,
    status: Option<mpsc::Sender<()>>,
    no_echo: bool,
) -> Result<async_nats::Client, Box<dyn std::error::Error>> {
    let main = status.is_some();
    let mut options = async_nats::ConnectOptions::new()
        .name(format!(
            "roost {}{}",
            config.node,
            if main { "" } else { " (shared)" }
        ))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .subscription_capacity(config.queue)
        .client_capacity(config.queue)
        .event_callback(move |event| {
            let stats = stats.clone();
            let status = status.clone();
            async move {
                match event {
                    async_nats::Event::Connected if main => {
                        stats.connected.store(1, Ordering::Relaxed);
                        info!("cluster: connected to NATS");
                        if let Some(status) = status {
                            let _ = status.try_send(());
                        }
                    }
                    async_nats::Event::Disconnected if main => {
                        stats.connected.store(0, Ordering::Relaxed);
                        warn!("cluster: disconnected from NATS; reconnecting");
                        if let Some(status) = status {
                            let _ = status.try_send(());
                        }
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        warn!(
                            subscription = sid,
                            "cluster: this node reads too slowly; NATS messages dropped"
                        );
                    }
                    other => info!("cluster: NATS {other}"),
                }
            }
        });
    if no_echo {
        options = options.no_echo();
    }
    if let Some((user, password)) = &config.user {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(path) = &config.credentials {
        options = options.credentials_file(path).await?;
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &config.tls_client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.require_tls {
        options = options.require_tls(true);
    }
    let urls: Vec<async_nats::ServerAddr> = config
        .urls
        .iter()
        .map(|u| u.parse())
        .collect::<Result<_, _>>()?;
    Ok(options.connect(urls).await?)
}

/// Keeps the retained bucket: writes what this node retains, in order, and
/// hands the driver what the others retain (every value at start, then
/// each change).
async fn retained_bucket(
    client: async_nats::Client,
    config: Cluster,
    mut puts: mpsc::Receiver<(String, Bytes)>,
    inbound: mpsc::Sender<Inbound>,
    stats: Arc<ClusterStats>,
) {
    let jetstream = async_nats::jetstream::new(client);
    let bucket = format!("{}_retained", config.prefix);
    let store = loop {
        // The bucket's stream, made here rather than with
        // `create_key_value`, which asks for account details that
        // nats-server 2.9 words differently.
        let stream = async_nats::jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("roost: retained MQTT messages".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_bytes: RETAINED_BUCKET_BYTES,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: config.replicas,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        };
        let store = match jetstream.get_or_create_stream(stream).await {
            Ok(_) => jetstream
                .get_key_value(&bucket)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match store {
            Ok(store) => break store,
            Err(e) => {
                error!(error = %e, bucket = %bucket, "cluster: JetStream key-value bucket unavailable (is JetStream enabled?); retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    info!(bucket = %bucket, "cluster: retained messages shared through JetStream");
    let watcher = {
        let store = store.clone();
        tokio::task::spawn(async move {
            loop {
                let mut watch = match store.watch_with_history(">").await {
                    Ok(watch) => watch,
                    Err(e) => {
                        warn!(error = %e, "cluster: cannot watch the retained bucket; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                while let Some(entry) = watch.next().await {
                    let Ok(entry) = entry else { break };
                    if entry.operation != async_nats::jetstream::kv::Operation::Put {
                        continue;
                    }
                    let item = Inbound {
                        target: Target::Retained,
                        payload: entry.value,
                        reply: None,
                    };
                    if inbound.send(item).await.is_err() {
                        return;
                    }
                }
            }
        })
    };
    while let Some((key, frame)) = puts.recv().await {
        if let Err(e) = store.put(&key, frame).await {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "cluster: retained message not stored cluster-wide");
        }
    }
    watcher.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> TopicName {
        TopicName::copy_from_str(s).unwrap()
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::copy_from_str(s).unwrap()
    }

    #[test]
    fn levels_escape_without_collisions() {
        let topics = [
            "a/b", "a.b", "a/.b", "a//b", "/a", "a/", "$SYS/x", "$x", "a*", "a>", "a b", "a=2E",
            "a=", "_a", "a_", "ä/ü", "a-b", "",
        ];
        let mut seen = HashSet::new();
        for t in topics.iter().filter(|t| !t.is_empty()) {
            let s = topic_subject("roost", &topic(t));
            assert!(
                s.split('.').all(|tok| !tok.is_empty()
                    && !tok.contains(['*', '>', ' ', '\t'])
                    && tok.is_ascii()),
                "{t:?} -> {s}"
            );
            assert!(seen.insert(s.clone()), "{t:?} collides: {s}");
        }
        assert_eq!(topic_subject("p", &topic("a/b")), "p.m._a._b");
        assert_eq!(topic_subject("p", &topic("a//b")), "p.m._a._._b");
        assert_eq!(topic_subject("p", &topic("a.b")), "p.m._a=2Eb");
        assert_eq!(topic_subject("p", &topic("$x")), "p.m._=24x");
    }

    #[test]
    fn filters_map_to_wildcards() {
        assert_eq!(filter_subjects("p", &filter("a/+/c")), ["p.m._a.*._c"]);
        assert_eq!(filter_subjects("p", &filter("a/#")), ["p.m._a.>", "p.m._a"]);
        assert_eq!(filter_subjects("p", &filter("#")), ["p.m.>"]);
        assert_eq!(filter_subjects("p", &filter("+")), ["p.m.*"]);
        assert_eq!(
            filter_subjects("p", &filter("a.b/ c")),
            ["p.m._a=2Eb._=20c"]
        );
    }

    #[test]
    fn queue_names_differ_per_filter_and_group() {
        let a = queue_name("g", &filter("a/b"));
        let b = queue_name("g", &filter("a/+"));
        let c = queue_name("g=Z_a", &filter("b"));
        let d = queue_name("g", &filter("a/b/c"));
        let set: HashSet<_> = [&a, &b, &c, &d].into_iter().collect();
        assert_eq!(set.len(), 4, "{a} {b} {c} {d}");
    }

    #[test]
    fn frames_round_trip_with_properties() {
        let mut message = crate::embed::message("a/b", "hello", 2, true).unwrap();
        message.properties.content_type = Some(MqttStr::from_static("text/plain"));
        message.properties.message_expiry_interval = Some(30);
        let client = MqttStr::from_static("c1");
        let frame = encode_frame("n1", 7, Some(&client), None, &message).unwrap();
        let back = decode_frame(frame).unwrap();
        assert_eq!(back.node.as_ref(), b"n1");
        assert_eq!(back.seq, 7);
        assert_eq!(back.client_id.as_ref().map(|c| c.as_str()), Some("c1"));
        assert!(back.username.is_none());
        assert_eq!(back.message, message);
        assert!(decode_frame(Bytes::from_static(b"\x02garbage")).is_none());
        assert!(decode_frame(Bytes::from_static(b"\x01\x00")).is_none());
    }

    #[test]
    fn peers_join_restart_and_leave() {
        let t0 = std::time::Instant::now();
        let mut peers = Peers::default();
        assert_eq!(peers.totals(2), (1, 2));
        let (b1, b2, c) = (
            Bytes::from_static(b"b#1"),
            Bytes::from_static(b"b#2"),
            Bytes::from_static(b"c#9"),
        );
        peers.heard(&b1, 5, false, t0);
        peers.heard(&c, 7, false, t0);
        assert_eq!(peers.totals(2), (3, 14));
        // A restarted node is the same peer.
        peers.heard(&b2, 1, false, t0 + HEARTBEAT);
        assert_eq!(peers.totals(2), (3, 10));
        // c says it leaves; b goes silent.
        peers.heard(&c, 0, true, t0 + HEARTBEAT);
        assert_eq!(peers.totals(2), (2, 3));
        peers.expire(t0 + HEARTBEAT + PEER_TIMEOUT);
        assert_eq!(peers.totals(2), (1, 2));
        let frame = encode_heartbeat("a#3", 42, true);
        let (node, clients, leaving) = decode_heartbeat(frame).unwrap();
        assert_eq!((node.as_ref(), clients, leaving), (&b"a#3"[..], 42, true));
        assert!(decode_heartbeat(Bytes::from_static(b"\x01\x00\x01a")).is_none());
    }

    #[test]
    fn duplicates_from_overlapping_subscriptions_are_dropped() {
        let mut d = Dedup::default();
        let n = Bytes::from_static(b"n");
        assert!(d.fresh(&n, 1));
        assert!(!d.fresh(&n, 1));
        assert!(d.fresh(&n, 2));
        assert!(d.fresh(&Bytes::from_static(b"m"), 1));
        for s in 3..(DEDUP_WINDOW as u64 + 10) {
            assert!(d.fresh(&n, s));
        }
        assert_eq!(d.seen[&n].0.len(), DEDUP_WINDOW);
    }
}
