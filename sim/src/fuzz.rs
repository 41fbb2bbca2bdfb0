//! The bodies of the fuzz targets in `fuzz/`, here so that an ordinary
//! `cargo test` replays their corpora (`tests/fuzz_corpus.rs`) through the
//! very same code. Each takes the fuzzer's bytes, reads structured input
//! from them with `arbitrary`, and panics only on a bug.

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use roost_core::MqttStr;
use roost_core::broker::{Action, Broker, Config, ConnId, ConnInfo, Instant, StoreId};
use roost_core::codec::{
    Connect, Packet, PacketId, Protocol, PubResponse, Publish, QoS, QosPid, Subscribe,
    Subscription, SubscriptionOptions,
};
use roost_core::topic::{TopicFilter, TopicName};
use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom, Write};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// One thing a client (or time, or the store) does to the engine.
#[derive(Debug, Arbitrary)]
enum EngineOp {
    Open,
    Connect {
        conn: u8,
        v5: bool,
        client: u8,
        clean: bool,
        keep_alive: u8,
    },
    Publish {
        conn: u8,
        topic: u8,
        qos: u8,
        pid: u16,
        retain: bool,
        dup: bool,
    },
    Subscribe {
        conn: u8,
        filter: u8,
        qos: u8,
        pid: u16,
    },
    Ack {
        conn: u8,
        kind: u8,
        pid: u16,
    },
    Raw {
        conn: u8,
        bytes: Vec<u8>,
    },
    Close {
        conn: u8,
    },
    Writable {
        conn: u8,
    },
    Advance {
        millis: u16,
    },
    StoreDone,
    StoreFailed,
}

const TOPICS: [&str; 4] = ["a", "a/b", "c", "$SYS/x"];
const FILTERS: [&str; 5] = ["#", "a/+", "a", "$share/g/a/#", "+/b"];

/// Drives one engine (persistence on, so acknowledgements wait for the
/// store) with a sequence of client actions, time steps and store
/// outcomes. Checks: no panic, no output for a connection the engine
/// closed or never opened, time-outs never in the past.
pub fn engine(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let config = Config {
        persistence: true,
        ..Config::default()
    };
    let mut broker = Broker::new(config, Instant::ZERO);
    let mut now = Instant::ZERO;
    let mut conns: Vec<(ConnId, Protocol)> = Vec::new();
    let mut open: BTreeSet<ConnId> = BTreeSet::new();
    let mut pending: Vec<StoreId> = Vec::new();
    let pick = |conns: &[(ConnId, Protocol)], i: u8| -> Option<(ConnId, Protocol)> {
        (!conns.is_empty()).then(|| conns[usize::from(i) % conns.len()])
    };
    for _ in 0..256 {
        if u.is_empty() {
            break;
        }
        let Ok(op) = EngineOp::arbitrary(&mut u) else {
            break;
        };
        let mut packet = |conn: u8, p: Packet, conns: &mut Vec<(ConnId, Protocol)>| {
            if let Some((id, protocol)) = pick(conns, conn) {
                let protocol = match &p {
                    Packet::Connect(c) => c.protocol,
                    _ => protocol,
                };
                let mut buf = BytesMut::new();
                if p.encode(protocol, &mut buf).is_ok() {
                    if let Some(slot) = conns.iter_mut().find(|(c, _)| *c == id) {
                        slot.1 = protocol;
                    }
                    broker.handle_bytes(now, id, &buf);
                }
            }
        };
        match op {
            EngineOp::Open => {
                let id = broker.handle_open(now, ConnInfo::default());
                conns.push((id, Protocol::V3_1_1));
                open.insert(id);
            }
            EngineOp::Connect {
                conn,
                v5,
                client,
                clean,
                keep_alive,
            } => {
                let protocol = if v5 { Protocol::V5 } else { Protocol::V3_1_1 };
                let mut connect = Connect {
                    protocol,
                    clean_start: clean,
                    keep_alive: u16::from(keep_alive),
                    client_id: MqttStr::copy_from_str(&format!("c{}", client % 4))
                        .expect("client id"),
                    will: None,
                    username: None,
                    password: None,
                    properties: Default::default(),
                };
                if v5 && !clean {
                    connect.properties.session_expiry_interval = Some(600);
                }
                packet(conn, Packet::Connect(Box::new(connect)), &mut conns);
            }
            EngineOp::Publish {
                conn,
                topic,
                qos,
                pid,
                retain,
                dup,
            } => {
                let Some(pid) = PacketId::new(pid) else {
                    continue;
                };
                let qos = match qos % 3 {
                    0 => QosPid::AtMostOnce,
                    1 => QosPid::AtLeastOnce(pid),
                    _ => QosPid::ExactlyOnce(pid),
                };
                let publish = Publish {
                    dup: dup && qos != QosPid::AtMostOnce,
                    qos,
                    retain,
                    topic: TopicName::copy_from_str(TOPICS[usize::from(topic) % TOPICS.len()])
                        .expect("topic"),
                    payload: Bytes::from_static(b"x"),
                    properties: Default::default(),
                };
                packet(conn, Packet::Publish(publish), &mut conns);
            }
            EngineOp::Subscribe {
                conn,
                filter,
                qos,
                pid,
            } => {
                let Some(packet_id) = PacketId::new(pid) else {
                    continue;
                };
                let subscribe = Subscribe {
                    packet_id,
                    subscriptions: vec![Subscription {
                        filter: TopicFilter::copy_from_str(
                            FILTERS[usize::from(filter) % FILTERS.len()],
                        )
                        .expect("filter"),
                        options: SubscriptionOptions {
                            qos: match qos % 3 {
                                0 => QoS::AtMostOnce,
                                1 => QoS::AtLeastOnce,
                                _ => QoS::ExactlyOnce,
                            },
                            ..Default::default()
                        },
                    }],
                    properties: Default::default(),
                };
                packet(conn, Packet::Subscribe(subscribe), &mut conns);
            }
            EngineOp::Ack { conn, kind, pid } => {
                let Some(pid) = PacketId::new(pid) else {
                    continue;
                };
                let r = PubResponse::new(pid);
                let p = match kind % 4 {
                    0 => Packet::PubAck(r),
                    1 => Packet::PubRec(r),
                    2 => Packet::PubRel(r),
                    _ => Packet::PubComp(r),
                };
                packet(conn, p, &mut conns);
            }
            EngineOp::Raw { conn, bytes } => {
                if let Some((id, _)) = pick(&conns, conn) {
                    broker.handle_bytes(now, id, &bytes);
                }
            }
            EngineOp::Close { conn } => {
                if let Some((id, _)) = pick(&conns, conn) {
                    if open.remove(&id) {
                        broker.handle_closed(now, id);
                    }
                }
            }
            EngineOp::Writable { conn } => {
                if let Some((id, _)) = pick(&conns, conn) {
                    if open.contains(&id) {
                        broker.handle_writable(now, id);
                    }
                }
            }
            EngineOp::Advance { millis } => {
                now = now + Duration::from_millis(u64::from(millis) * 10);
                broker.handle_timeout(now);
            }
            EngineOp::StoreDone => {
                if let Some(id) = pending.pop() {
                    pending.clear();
                    broker.handle_store_done(now, id);
                }
            }
            EngineOp::StoreFailed => {
                if !pending.is_empty() {
                    let id = pending.remove(0);
                    broker.handle_store_failed(now, id);
                }
            }
        }
        drain(&mut broker, &mut open, &mut pending);
        // A deadline already due is served as a runtime would; after that
        // the next one must lie in the future, or a runtime that re-arms its
        // timer from `poll_timeout` would spin.
        if broker.poll_timeout().is_some_and(|at| at <= now) {
            broker.handle_timeout(now);
            drain(&mut broker, &mut open, &mut pending);
            if let Some(at) = broker.poll_timeout() {
                assert!(
                    at > now,
                    "deadline {at:?} still due at {now:?} after handle_timeout"
                );
            }
        }
    }
}

/// Applies the engine's output the way the engine fuzz target's model
/// expects: no bytes for, and no second close of, a connection that is not
/// open; store operations remembered until the input completes them.
fn drain(broker: &mut Broker, open: &mut BTreeSet<ConnId>, pending: &mut Vec<StoreId>) {
    while let Some(action) = broker.poll_action() {
        match action {
            Action::Send { conn, .. } => {
                assert!(open.contains(&conn), "send to {conn}, not open");
            }
            Action::Close { conn, .. } => {
                assert!(open.remove(&conn), "close of {conn}, not open");
            }
            Action::Store { id, .. } => pending.push(id),
            _ => {}
        }
    }
}

/// Feeds arbitrary bytes, in arbitrary pieces, to a server-side WebSocket
/// stage, sometimes after a valid upgrade request, and writes to it. No
/// panic, and its buffers stay within the bounds it was given.
pub fn websocket(data: &[u8]) {
    use roost_runtime::ws::WsStage;
    let mut u = Unstructured::new(data);
    let mut ws = WsStage::new("/mqtt", 4096).with_max_outbound(64 * 1024);
    if u.arbitrary::<bool>().unwrap_or(false) {
        let request = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
        let _ = ws.feed(request);
    }
    let mut inbound = Vec::new();
    let mut wire = Vec::new();
    // `arbitrary` answers zeros once the input is used up, so the loop
    // ends on an empty input rather than on an error, and is bounded.
    for _ in 0..256 {
        if u.is_empty() {
            break;
        }
        let Ok(kind) = u.arbitrary::<u8>() else {
            break;
        };
        match kind % 4 {
            0 | 1 => {
                let Ok(chunk) = u.arbitrary::<&[u8]>() else {
                    break;
                };
                if ws.feed(chunk).is_err() {
                    break;
                }
            }
            2 => {
                let Ok(chunk) = u.arbitrary::<&[u8]>() else {
                    break;
                };
                let _ = ws.write_outbound(chunk);
            }
            _ => ws.close(),
        }
        inbound.clear();
        ws.take_inbound(&mut inbound);
        assert!(inbound.len() <= data.len(), "more out than in");
        wire.clear();
        ws.take_outbound_wire(&mut wire);
        assert!(ws.outbound_len() <= 64 * 1024 + 4096);
    }
}

fn tls_config() -> Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let cert =
                rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
            let key =
                rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("server config");
            Arc::new(config)
        })
        .clone()
}

/// Feeds arbitrary bytes, in arbitrary pieces, to a server-side TLS stage
/// (a fresh handshake each run) and writes to it. No panic.
pub fn tls(data: &[u8]) {
    use roost_runtime::tls::TlsStage;
    let mut u = Unstructured::new(data);
    let Ok(mut stage) = TlsStage::new(tls_config()) else {
        return;
    };
    let mut out = Vec::new();
    // `arbitrary` answers zeros once the input is used up, so the loop
    // ends on an empty input rather than on an error, and is bounded.
    for _ in 0..256 {
        if u.is_empty() {
            break;
        }
        let Ok(kind) = u.arbitrary::<u8>() else {
            break;
        };
        match kind % 4 {
            0 | 1 => {
                let Ok(chunk) = u.arbitrary::<&[u8]>() else {
                    break;
                };
                if stage.feed_ciphertext(chunk).is_err() {
                    stage.take_ciphertext(&mut out);
                    break;
                }
            }
            2 => {
                let Ok(chunk) = u.arbitrary::<&[u8]>() else {
                    break;
                };
                let _ = stage.write_plaintext(chunk);
            }
            _ => stage.close(),
        }
        out.clear();
        stage.take_plaintext(&mut out);
        out.clear();
        stage.take_ciphertext(&mut out);
        let _ = (
            stage.is_handshaking(),
            stage.wants_close(),
            stage.server_name(),
        );
    }
}

/// Damages a real store's data directory the way the input says
/// (overwrite, truncate, append, at any file and offset), then opens it
/// strictly and with truncation. Opening may fail, but never panics, and
/// what a truncating open recovers is a `Recovered` the engine accepts.
pub fn store(data: &[u8]) {
    use roost_persistence::{Durability, FjallStore, Recovery, Store};
    let mut u = Unstructured::new(data);
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    {
        let Ok(mut store) = FjallStore::open(dir.path(), Durability::Sync) else {
            return;
        };
        let batches: u8 = u.arbitrary().unwrap_or(1);
        for i in 0..(batches % 8) {
            let client_id = MqttStr::copy_from_str(&format!("c{}", i % 3)).expect("id");
            let topic = TopicName::copy_from_str(&format!("t/{i}")).expect("topic");
            let message = roost_core::broker::StoredMessage {
                topic: topic.clone(),
                payload: Bytes::from(vec![i; usize::from(i) * 7]),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: Default::default(),
            };
            let ops = [
                roost_core::broker::StoreOp::SessionPut {
                    client_id,
                    expiry_interval: 60,
                    owner: None,
                },
                roost_core::broker::StoreOp::RetainedPut { topic, message },
            ];
            let _ = store.apply(&ops);
            let _ = store.commit();
        }
    }
    let mut files = Vec::new();
    collect_files(dir.path(), &mut files);
    files.sort();
    // Files are edited in place (fjall preallocates its journal, so
    // rewriting whole files would make each run slow), a bounded number of
    // times.
    for _ in 0..16 {
        let Ok(kind) = u.arbitrary::<u8>() else {
            break;
        };
        if files.is_empty() || u.is_empty() {
            break;
        }
        let Ok(which) = u.arbitrary::<u16>() else {
            break;
        };
        let path = &files[usize::from(which) % files.len()];
        let Ok(mut file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        else {
            continue;
        };
        let Ok(len) = file.metadata().map(|m| m.len()) else {
            continue;
        };
        let offset = u64::from(u.arbitrary::<u32>().unwrap_or(0)) % (len + 1);
        match kind % 3 {
            0 => {
                let patch: &[u8] = u.arbitrary().unwrap_or(&[]);
                let patch = &patch[..patch.len().min((len - offset) as usize)];
                if file.seek(SeekFrom::Start(offset)).is_ok() {
                    let _ = file.write_all(patch);
                }
            }
            1 => {
                let _ = file.set_len(offset);
            }
            _ => {
                let tail: &[u8] = u.arbitrary().unwrap_or(&[]);
                if file.seek(SeekFrom::End(0)).is_ok() {
                    let _ = file.write_all(tail);
                }
            }
        }
    }
    for recovery in [Recovery::Strict, Recovery::Truncate] {
        if let Ok(mut store) = FjallStore::open_with(dir.path(), Durability::Sync, recovery) {
            if let Ok(recovered) = store.recover() {
                let _ = Broker::restore(
                    Config {
                        persistence: true,
                        ..Config::default()
                    },
                    Instant::ZERO,
                    recovered,
                );
            }
        }
    }
}

fn collect_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}
