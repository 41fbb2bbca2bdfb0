//! A persistent session moving between nodes (see `roost_core::broker`'s
//! cluster module for what moves and when).
//!
//! ```text
//!  node B (client resumes here)                    node A (holds the session)
//!  Action::FetchSession ─► ToLink::Fetch
//!    subscribe <inbox>; publish <prefix>.s.<client> reply <inbox> ──► subscribed while A hosts it
//!                                                   FromLink::HandOver ─► Broker::hand_over
//!    chunks on <inbox> ◄── publish chunk 0..n ◄── ToLink::HandedOver ◄─┘
//!  FromLink::Fetched ─► Broker::session_fetched
//! ```
//!
//! Each node subscribes to `<prefix>.s.<client token>` for every session it
//! holds (`Action::Hosting`), so a request reaches the holder only, and
//! NATS answers "no responders" at once when no node holds it. The answer
//! is the session in chunks that each fit NATS's maximum payload; none
//! (the holder had nothing to give), no responders, a broken sequence of
//! chunks or no whole answer within [`TIMEOUT`] all mean: a new session.

use super::{VERSION, decode_publish, encode_publish, get_str, mqtt_str, push_token, put_str};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use roost_core::MqttStr;
use roost_core::broker::{
    Message, RecoveredMessage, RecoveredSession, SessionOwner, StoredMessage,
};
use roost_core::codec::{PacketId, QoS, RetainHandling, SubscriptionOptions};
use roost_core::topic::TopicFilter;
use std::num::NonZeroU32;
use std::time::Duration;
use tracing::warn;

/// How long a node waits for a session it asked for before the client
/// gets a new one (the engine's `limits.authorize_timeout` bounds it too).
pub(crate) const TIMEOUT: Duration = Duration::from_secs(3);

/// The largest session a node takes in (a node's own limits on queued
/// messages keep sessions well below it).
const MAX_SESSION_BYTES: usize = 1 << 30;

/// A chunk's header: version, kind, index.
const CHUNK_HEADER: usize = 6;

const NONE: u8 = 0;
const MORE: u8 = 1;
const LAST: u8 = 2;

/// The subject a node listens on while it holds `client_id`'s session.
pub(crate) fn subject(prefix: &str, client_id: &MqttStr) -> String {
    let mut out = format!("{prefix}.s.");
    push_token(client_id.as_str().as_bytes(), &mut out);
    out
}

pub(crate) fn encode_request(node: &str, client_id: &MqttStr, owner: &SessionOwner) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(VERSION);
    put_str(&mut out, node.as_bytes());
    put_str(&mut out, client_id.as_str().as_bytes());
    out.put_u16(owner.class);
    out.put_u8(u8::from(owner.username.is_some()));
    put_str(
        &mut out,
        owner
            .username
            .as_ref()
            .map_or(&[][..], |u| u.as_str().as_bytes()),
    );
    out.freeze()
}

pub(crate) fn decode_request(mut buf: Bytes) -> Option<(Bytes, MqttStr, SessionOwner)> {
    if buf.remaining() < 1 || buf.get_u8() != VERSION {
        return None;
    }
    let node = get_str(&mut buf)?;
    let client_id = mqtt_str(get_str(&mut buf)?)?;
    if buf.remaining() < 3 {
        return None;
    }
    let class = buf.get_u16();
    let named = buf.get_u8() != 0;
    let username = get_str(&mut buf)?;
    let username = if named {
        Some(mqtt_str(username)?)
    } else {
        None
    };
    Some((node, client_id, SessionOwner { class, username }))
}

fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos as u8
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

fn options_from(byte: u8) -> Option<SubscriptionOptions> {
    Some(SubscriptionOptions {
        qos: QoS::from_u8(byte & 3).ok()?,
        no_local: byte & 4 != 0,
        retain_as_published: byte & 8 != 0,
        retain_handling: match (byte >> 4) & 3 {
            0 => RetainHandling::SendOnSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return None,
        },
    })
}

/// A session as bytes; `None` if a message cannot be encoded.
pub(crate) fn encode_session(s: &RecoveredSession) -> Option<Bytes> {
    let mut out = BytesMut::new();
    put_str(&mut out, s.client_id.as_str().as_bytes());
    out.put_u32(s.expiry_interval);
    match &s.owner {
        None => out.put_u8(0),
        Some(owner) => {
            out.put_u8(1 | (u8::from(owner.username.is_some()) << 1));
            out.put_u16(owner.class);
            put_str(
                &mut out,
                owner
                    .username
                    .as_ref()
                    .map_or(&[][..], |u| u.as_str().as_bytes()),
            );
        }
    }
    out.put_u32(u32::try_from(s.subscriptions.len()).ok()?);
    for (filter, options, id) in &s.subscriptions {
        put_str(&mut out, filter.as_str().as_bytes());
        out.put_u8(options_byte(options));
        out.put_u32(id.map_or(0, NonZeroU32::get));
    }
    out.put_u32(u32::try_from(s.messages.len()).ok()?);
    let mut publish = BytesMut::new();
    for m in &s.messages {
        out.put_u64(m.seq);
        let (sent, pid) = match m.sent {
            None => (0, 0),
            Some((pid, false)) => (1, pid.get()),
            Some((pid, true)) => (2, pid.get()),
        };
        out.put_u8(sent);
        out.put_u16(pid);
        out.put_u16(u16::try_from(m.subscription_ids.len()).ok()?);
        for id in &m.subscription_ids {
            out.put_u32(id.get());
        }
        let message = Message {
            topic: m.message.topic.clone(),
            payload: m.message.payload.clone(),
            qos: m.message.qos,
            retain: m.message.retain,
            properties: m.message.properties.clone(),
        };
        publish.clear();
        if !encode_publish(&message, &mut publish) {
            return None;
        }
        out.put_u32(u32::try_from(publish.len()).ok()?);
        out.put_slice(&publish);
    }
    out.put_u32(u32::try_from(s.incoming.len()).ok()?);
    for pid in &s.incoming {
        out.put_u16(pid.get());
    }
    Some(out.freeze())
}

pub(crate) fn decode_session(mut buf: Bytes) -> Option<RecoveredSession> {
    let client_id = mqtt_str(get_str(&mut buf)?)?;
    if buf.remaining() < 5 {
        return None;
    }
    let expiry_interval = buf.get_u32();
    let flags = buf.get_u8();
    let owner = if flags & 1 != 0 {
        if buf.remaining() < 2 {
            return None;
        }
        let class = buf.get_u16();
        let username = get_str(&mut buf)?;
        let username = if flags & 2 != 0 {
            Some(mqtt_str(username)?)
        } else {
            None
        };
        Some(SessionOwner { class, username })
    } else {
        None
    };
    let count = |buf: &mut Bytes| (buf.remaining() >= 4).then(|| buf.get_u32() as usize);
    let n = count(&mut buf)?;
    let mut subscriptions = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let filter = get_str(&mut buf)?;
        let filter = TopicFilter::copy_from_str(std::str::from_utf8(&filter).ok()?).ok()?;
        if buf.remaining() < 5 {
            return None;
        }
        let options = options_from(buf.get_u8())?;
        let id = NonZeroU32::new(buf.get_u32());
        subscriptions.push((filter, options, id));
    }
    let n = count(&mut buf)?;
    let mut messages = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        if buf.remaining() < 13 {
            return None;
        }
        let seq = buf.get_u64();
        let sent = buf.get_u8();
        let pid = buf.get_u16();
        let sent = match sent {
            0 => None,
            1 | 2 => Some((PacketId::new(pid)?, sent == 2)),
            _ => return None,
        };
        let ids = usize::from(buf.get_u16());
        if buf.remaining() < ids * 4 {
            return None;
        }
        let subscription_ids = (0..ids)
            .map(|_| NonZeroU32::new(buf.get_u32()))
            .collect::<Option<Vec<_>>>()?;
        let len = count(&mut buf)?;
        if buf.remaining() < len {
            return None;
        }
        let m = decode_publish(BytesMut::from(&buf.split_to(len)[..]))?;
        messages.push(RecoveredMessage {
            seq,
            subscription_ids,
            message: StoredMessage {
                topic: m.topic,
                payload: m.payload,
                qos: m.qos,
                retain: m.retain,
                properties: m.properties,
            },
            sent,
        });
    }
    let n = count(&mut buf)?;
    if buf.remaining() != n * 2 {
        return None;
    }
    let incoming = (0..n)
        .map(|_| PacketId::new(buf.get_u16()))
        .collect::<Option<Vec<_>>>()?;
    Some(RecoveredSession {
        client_id,
        expiry_interval,
        owner,
        subscriptions,
        messages,
        incoming,
    })
}

/// The answer to a request, as the NATS messages that carry it: one "none",
/// or the encoded session in chunks of at most `max_payload` bytes.
pub(crate) fn chunks(session: Option<&RecoveredSession>, max_payload: usize) -> Vec<Bytes> {
    let header = |kind: u8, index: u32| {
        let mut out = BytesMut::with_capacity(CHUNK_HEADER);
        out.put_u8(VERSION);
        out.put_u8(kind);
        out.put_u32(index);
        out
    };
    let Some(bytes) = session.and_then(encode_session) else {
        return vec![header(NONE, 0).freeze()];
    };
    let size = max_payload.saturating_sub(CHUNK_HEADER).max(1024);
    let parts: Vec<&[u8]> = bytes.chunks(size).collect();
    let last = parts.len().saturating_sub(1);
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let kind = if i == last { LAST } else { MORE };
            let mut out = header(kind, u32::try_from(i).unwrap_or(u32::MAX));
            out.put_slice(part);
            out.freeze()
        })
        .collect()
}

/// Puts an answer back together from its chunks, as they come.
#[derive(Default)]
pub(crate) struct Assembly {
    bytes: BytesMut,
    next: u32,
}

/// Where an [`Assembly`] stands after a chunk.
pub(crate) enum Step {
    More,
    Done(Option<RecoveredSession>),
}

impl Assembly {
    pub(crate) fn push(&mut self, mut chunk: Bytes) -> Step {
        if chunk.remaining() < CHUNK_HEADER || chunk.get_u8() != VERSION {
            return Step::Done(None);
        }
        let kind = chunk.get_u8();
        let index = chunk.get_u32();
        if kind == NONE || index != self.next || self.bytes.len() + chunk.len() > MAX_SESSION_BYTES
        {
            return Step::Done(None);
        }
        self.next += 1;
        self.bytes.extend_from_slice(&chunk);
        match kind {
            MORE => Step::More,
            LAST => Step::Done(decode_session(std::mem::take(&mut self.bytes).freeze())),
            _ => Step::Done(None),
        }
    }
}

/// Asks the cluster for `client_id`'s session: `None` when no node holds
/// it, it holds none for this owner, or no whole answer came in time.
pub(crate) async fn fetch(
    client: async_nats::Client,
    prefix: String,
    sender: String,
    client_id: MqttStr,
    owner: SessionOwner,
) -> Option<RecoveredSession> {
    let inbox = client.new_inbox();
    let mut replies = match client.subscribe(inbox.clone()).await {
        Ok(sub) => sub,
        Err(e) => {
            warn!(error = %e, client_id = %client_id, "cluster: cannot ask for a session");
            return None;
        }
    };
    let request = encode_request(&sender, &client_id, &owner);
    if let Err(e) = client
        .publish_with_reply(subject(&prefix, &client_id), inbox, request)
        .await
    {
        warn!(error = %e, client_id = %client_id, "cluster: cannot ask for a session");
        return None;
    }
    let answer = async {
        let mut assembly = Assembly::default();
        while let Some(message) = replies.next().await {
            // A status (503: no node holds the session) is the answer.
            if message.status.is_some() {
                return None;
            }
            if let Step::Done(session) = assembly.push(message.payload) {
                return session;
            }
        }
        None
    };
    match tokio::time::timeout(TIMEOUT, answer).await {
        Ok(session) => session,
        Err(_) => {
            warn!(client_id = %client_id, "cluster: the node holding a session did not hand it over in time; the client gets a new one");
            None
        }
    }
}

/// Sends the answer to a request to `reply`.
pub(crate) async fn answer(
    client: async_nats::Client,
    reply: String,
    session: Option<Box<RecoveredSession>>,
) {
    let max = client.server_info().max_payload;
    let max = if max == 0 { 1 << 20 } else { max };
    for chunk in chunks(session.as_deref(), max) {
        if let Err(e) = client.publish(reply.clone(), chunk).await {
            warn!(error = %e, "cluster: a session handed over did not reach its new node");
            return;
        }
    }
    let _ = client.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> RecoveredSession {
        let message = |payload: &str, qos| StoredMessage {
            topic: roost_core::topic::TopicName::copy_from_str("a/b").unwrap(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos,
            retain: false,
            properties: Default::default(),
        };
        RecoveredSession {
            client_id: MqttStr::from_static("c.1"),
            expiry_interval: 3600,
            owner: Some(SessionOwner {
                class: 2,
                username: Some(MqttStr::from_static("alice")),
            }),
            subscriptions: vec![
                (
                    TopicFilter::copy_from_str("$share/g/a/+").unwrap(),
                    SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                    NonZeroU32::new(9),
                ),
                (
                    TopicFilter::copy_from_str("#").unwrap(),
                    SubscriptionOptions::default(),
                    None,
                ),
            ],
            messages: vec![
                RecoveredMessage {
                    seq: 3,
                    subscription_ids: vec![NonZeroU32::new(9).unwrap()],
                    message: message("one", QoS::AtLeastOnce),
                    sent: Some((PacketId::new(5).unwrap(), false)),
                },
                RecoveredMessage {
                    seq: 4,
                    subscription_ids: vec![],
                    message: message("two", QoS::ExactlyOnce),
                    sent: Some((PacketId::new(6).unwrap(), true)),
                },
                RecoveredMessage {
                    seq: 7,
                    subscription_ids: vec![],
                    message: message(&"x".repeat(5000), QoS::ExactlyOnce),
                    sent: None,
                },
            ],
            incoming: vec![PacketId::new(11).unwrap()],
        }
    }

    #[test]
    fn a_session_round_trips_in_chunks() {
        let s = session();
        let parts = chunks(Some(&s), 1024);
        assert!(parts.len() > 4, "{} chunks", parts.len());
        assert!(parts.iter().all(|p| p.len() <= 1024 + CHUNK_HEADER));
        let mut assembly = Assembly::default();
        let mut got = None;
        for (i, part) in parts.iter().enumerate() {
            match assembly.push(part.clone()) {
                Step::More => assert!(i + 1 < parts.len()),
                Step::Done(s) => got = Some(s),
            }
        }
        assert_eq!(got, Some(Some(s.clone())));
        // "None", a missing chunk and garbage are all: no session.
        let none = chunks(None, 1024);
        assert!(matches!(
            Assembly::default().push(none[0].clone()),
            Step::Done(None)
        ));
        let mut assembly = Assembly::default();
        assert!(matches!(assembly.push(parts[0].clone()), Step::More));
        assert!(matches!(assembly.push(parts[2].clone()), Step::Done(None)));
        assert!(decode_session(Bytes::from_static(b"\x00\x01c\xff")).is_none());
        let whole = encode_session(&s).unwrap();
        for cut in [1, 10, whole.len() / 2, whole.len() - 1] {
            assert!(decode_session(whole.slice(..cut)).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn requests_round_trip() {
        let owner = SessionOwner {
            class: 1,
            username: None,
        };
        let id = MqttStr::from_static("x y");
        let (node, client_id, back) = decode_request(encode_request("n1#2", &id, &owner)).unwrap();
        assert_eq!(node.as_ref(), b"n1#2");
        assert_eq!(client_id, id);
        assert_eq!(back, owner);
        assert_eq!(subject("p", &id), "p.s._x=20y");
    }
}
