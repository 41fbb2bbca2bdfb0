//! The on-disk record format of [`FjallStore`](crate::FjallStore).
//!
//! Every value starts with a format byte so a later version can read what an
//! earlier one wrote; integers are big-endian, variable-length fields carry
//! their length. A message is kept as the MQTT 5 PUBLISH packet that carries
//! it, so the codec that already round-trips every property does the work.
//!
//! Keys of per-session records start with the session's 8-byte number (see
//! [`SessionRecord::num`]) rather than its client identifier: keys stay short
//! whatever the identifier's length, and a prefix scan on the number finds
//! everything of one session, messages in `seq` order.
//!
//! Decoders return a reason rather than a [`StoreError`](crate::StoreError):
//! the caller knows which key the value came from.

use bytes::{BufMut, Bytes, BytesMut};
use roost_core::MqttStr;
use roost_core::broker::{SessionOwner, StoredMessage};
use roost_core::codec::{
    self, EncodeError, Packet, PacketId, Protocol, Publish, QoS, QosPid, RetainHandling,
    SubscriptionOptions,
};
use roost_core::topic::TopicFilter;
use std::num::NonZeroU32;

/// The format of every record but sessions'.
pub(crate) const FORMAT_V1: u8 = 1;

/// Session records since they name their owner. Version 1 session records
/// (no owner) are still read: their owner is unknown.
pub(crate) const FORMAT_V2: u8 = 2;

/// Why a record could not be decoded.
pub(crate) type Reason = &'static str;

/// A cursor over a record that never reads past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Reason> {
        if self.0.len() < n {
            return Err("record ends early");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Reason> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Reason> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Reason> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Reason> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Reason> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn format(&mut self) -> Result<(), Reason> {
        match self.u8()? {
            FORMAT_V1 => Ok(()),
            _ => Err("unknown format version"),
        }
    }

    fn end(self) -> Result<(), Reason> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes after the record")
        }
    }
}

/// A session: its number, expiry interval and owner. Keyed by client
/// identifier.
///
/// Format 2: `[2] num:u64 expiry:u32 owner`, where `owner` is `[0]` for
/// unknown or `[1] class:u16 user`, and `user` is `[0]` for anonymous or
/// `[1] len:u16 bytes`. Format 1 (`[1] num:u64 expiry:u32`, written before
/// owners were stored) reads as an unknown owner, which the engine lets no
/// one resume (see `Config::share_sessions_across_identities`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionRecord {
    /// Names the session in the keys of everything stored for it; unique
    /// among live sessions, never reused while the store is open.
    pub num: u64,
    /// Session Expiry Interval.
    pub expiry_interval: u32,
    /// Who the session belongs to; `None` if unknown.
    pub owner: Option<SessionOwner>,
}

impl SessionRecord {
    pub fn encode(&self) -> Vec<u8> {
        let user = self.owner.as_ref().and_then(|o| o.username.as_ref());
        let mut v = Vec::with_capacity(18 + user.map_or(0, |u| u.len()));
        v.push(FORMAT_V2);
        v.extend_from_slice(&self.num.to_be_bytes());
        v.extend_from_slice(&self.expiry_interval.to_be_bytes());
        match &self.owner {
            None => v.push(0),
            Some(owner) => {
                v.push(1);
                v.extend_from_slice(&owner.class.to_be_bytes());
                match &owner.username {
                    None => v.push(0),
                    Some(user) => {
                        v.push(1);
                        // An MQTT string is at most 65,535 bytes.
                        let len = u16::try_from(user.len()).unwrap_or(u16::MAX);
                        v.extend_from_slice(&len.to_be_bytes());
                        v.extend_from_slice(&user.as_bytes()[..usize::from(len)]);
                    }
                }
            }
        }
        v
    }

    pub fn decode(value: &[u8]) -> Result<Self, Reason> {
        let mut r = Reader(value);
        let format = r.u8()?;
        if format != FORMAT_V1 && format != FORMAT_V2 {
            return Err("unknown format version");
        }
        let num = r.u64()?;
        let expiry_interval = r.u32()?;
        let owner = if format == FORMAT_V1 {
            None
        } else {
            match r.u8()? {
                0 => None,
                1 => {
                    let class = r.u16()?;
                    let username = match r.u8()? {
                        0 => None,
                        1 => {
                            let len = usize::from(r.u16()?);
                            let bytes = Bytes::copy_from_slice(r.take(len)?);
                            Some(
                                MqttStr::from_bytes(bytes)
                                    .map_err(|_| "owner user name is not an MQTT string")?,
                            )
                        }
                        _ => return Err("invalid owner user name flag"),
                    };
                    Some(SessionOwner { class, username })
                }
                _ => return Err("invalid owner flag"),
            }
        };
        r.end()?;
        Ok(SessionRecord {
            num,
            expiry_interval,
            owner,
        })
    }
}

/// A session's key prefix: its number.
pub(crate) fn session_prefix(num: u64) -> [u8; 8] {
    num.to_be_bytes()
}

/// Key of a per-session record: the session number, then `suffix`.
pub(crate) fn session_key(num: u64, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + suffix.len());
    k.extend_from_slice(&num.to_be_bytes());
    k.extend_from_slice(suffix);
    k
}

/// Splits a per-session key into the session number and the rest.
pub(crate) fn split_session_key(key: &[u8]) -> Result<(u64, &[u8]), Reason> {
    let mut r = Reader(key);
    let num = r.u64()?;
    Ok((num, r.0))
}

/// The `seq` in a message (or send state) key suffix.
pub(crate) fn decode_seq(suffix: &[u8]) -> Result<u64, Reason> {
    let mut r = Reader(suffix);
    let seq = r.u64()?;
    r.end()?;
    Ok(seq)
}

/// The packet identifier in an incoming-QoS-2 key suffix.
pub(crate) fn decode_packet_id(suffix: &[u8]) -> Result<PacketId, Reason> {
    let mut r = Reader(suffix);
    let id = PacketId::new(r.u16()?).ok_or("packet identifier 0")?;
    r.end()?;
    Ok(id)
}

/// The client identifier that keys a session record.
pub(crate) fn decode_client_id(key: &[u8]) -> Result<MqttStr, Reason> {
    MqttStr::from_bytes(Bytes::copy_from_slice(key)).map_err(|_| "client id is not an MQTT string")
}

/// The topic filter in a subscription key suffix.
pub(crate) fn decode_filter(suffix: &[u8]) -> Result<TopicFilter, Reason> {
    let s = MqttStr::from_bytes(Bytes::copy_from_slice(suffix))
        .map_err(|_| "topic filter is not an MQTT string")?;
    TopicFilter::new(s).map_err(|_| "invalid topic filter")
}

/// A subscription's options and identifier. Keyed by session and filter.
pub(crate) fn encode_subscription(
    options: &SubscriptionOptions,
    identifier: Option<NonZeroU32>,
) -> Vec<u8> {
    // The bit layout of the SUBSCRIBE options byte (MQTT 5 3.8.3.1).
    let opts = options.qos as u8
        | u8::from(options.no_local) << 2
        | u8::from(options.retain_as_published) << 3
        | (options.retain_handling as u8) << 4;
    let mut v = Vec::with_capacity(6);
    v.push(FORMAT_V1);
    v.push(opts);
    v.extend_from_slice(&identifier.map_or(0, NonZeroU32::get).to_be_bytes());
    v
}

pub(crate) fn decode_subscription(
    value: &[u8],
) -> Result<(SubscriptionOptions, Option<NonZeroU32>), Reason> {
    let mut r = Reader(value);
    r.format()?;
    let opts = r.u8()?;
    let identifier = NonZeroU32::new(r.u32()?);
    r.end()?;
    if opts & 0xC0 != 0 {
        return Err("reserved subscription option bits set");
    }
    let retain_handling = match (opts >> 4) & 0x03 {
        0 => RetainHandling::SendOnSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err("invalid retain handling"),
    };
    let options = SubscriptionOptions {
        qos: QoS::from_u8(opts & 0x03).map_err(|_| "invalid subscription QoS")?,
        no_local: opts & 0x04 != 0,
        retain_as_published: opts & 0x08 != 0,
        retain_handling,
    };
    Ok((options, identifier))
}

/// Appends `message` as a length-prefixed MQTT 5 PUBLISH.
fn put_message(buf: &mut BytesMut, message: &StoredMessage) -> Result<(), EncodeError> {
    // The identifier is a placeholder: a QoS 1/2 PUBLISH must carry one, and
    // the one a message is sent with lives in its send state.
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QosPid::new(message.qos, PacketId::MIN),
        retain: message.retain,
        topic: message.topic.clone(),
        payload: message.payload.clone(),
        properties: message.properties.clone(),
    });
    let len = packet.encoded_len(Protocol::V5);
    let len32 = u32::try_from(len).map_err(|_| EncodeError::PacketTooLarge)?;
    buf.reserve(4 + len);
    buf.put_u32(len32);
    packet.encode(Protocol::V5, buf)
}

/// Reads a length-prefixed PUBLISH back into a message.
fn read_message(r: &mut Reader, record: &Bytes) -> Result<StoredMessage, Reason> {
    let len = r.u32()? as usize;
    let start = record.len() - r.0.len();
    r.take(len)?;
    // Slicing the record, not copying: the payload shares its buffer.
    let bytes = record.slice(start..start + len);
    match codec::decode_slice(&bytes, Protocol::V5, usize::MAX) {
        Ok(Some((Packet::Publish(p), used))) if used == len => {
            if p.topic.is_empty() {
                return Err("message has no topic");
            }
            Ok(StoredMessage {
                topic: p.topic,
                payload: p.payload,
                qos: p.qos.qos(),
                retain: p.retain,
                properties: p.properties,
            })
        }
        _ => Err("message is not one whole MQTT 5 PUBLISH"),
    }
}

/// A queued message: its subscription identifiers and the message.
pub(crate) fn encode_message(
    subscription_ids: &[NonZeroU32],
    message: &StoredMessage,
) -> Result<Vec<u8>, EncodeError> {
    let count = u32::try_from(subscription_ids.len()).map_err(|_| EncodeError::PacketTooLarge)?;
    let mut buf = BytesMut::with_capacity(
        1 + 4 + 4 * subscription_ids.len() + 4 + 32 + message.payload.len(),
    );
    buf.put_u8(FORMAT_V1);
    buf.put_u32(count);
    for id in subscription_ids {
        buf.put_u32(id.get());
    }
    put_message(&mut buf, message)?;
    Ok(buf.into())
}

pub(crate) fn decode_message(record: &Bytes) -> Result<(Vec<NonZeroU32>, StoredMessage), Reason> {
    let mut r = Reader(record);
    r.format()?;
    let count = r.u32()? as usize;
    // Bounded by what the record holds, so a damaged count cannot make us
    // allocate more than the record's size.
    if count > r.0.len() / 4 {
        return Err("subscription identifier count exceeds the record");
    }
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(NonZeroU32::new(r.u32()?).ok_or("subscription identifier 0")?);
    }
    let message = read_message(&mut r, record)?;
    r.end()?;
    Ok((ids, message))
}

/// A retained message.
pub(crate) fn encode_retained(message: &StoredMessage) -> Result<Vec<u8>, EncodeError> {
    let mut buf = BytesMut::with_capacity(1 + 4 + 32 + message.payload.len());
    buf.put_u8(FORMAT_V1);
    put_message(&mut buf, message)?;
    Ok(buf.into())
}

pub(crate) fn decode_retained(record: &Bytes) -> Result<StoredMessage, Reason> {
    let mut r = Reader(record);
    r.format()?;
    let message = read_message(&mut r, record)?;
    r.end()?;
    Ok(message)
}

/// The send state of a message: the packet identifier it went out with and
/// whether PUBREL was sent.
pub(crate) fn encode_sent(packet_id: PacketId, released: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(4);
    v.push(FORMAT_V1);
    v.extend_from_slice(&packet_id.get().to_be_bytes());
    v.push(u8::from(released));
    v
}

pub(crate) fn decode_sent(value: &[u8]) -> Result<(PacketId, bool), Reason> {
    let mut r = Reader(value);
    r.format()?;
    let id = PacketId::new(r.u16()?).ok_or("packet identifier 0")?;
    let released = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err("invalid released flag"),
    };
    r.end()?;
    Ok((id, released))
}

/// An inbound QoS 2 identifier in use: all is in the key.
pub(crate) fn encode_incoming() -> Vec<u8> {
    vec![FORMAT_V1]
}

pub(crate) fn decode_incoming(value: &[u8]) -> Result<(), Reason> {
    let mut r = Reader(value);
    r.format()?;
    r.end()
}

/// The topic that keys a retained message.
pub(crate) fn decode_topic(key: &[u8]) -> Result<roost_core::topic::TopicName, Reason> {
    let s = MqttStr::from_bytes(Bytes::copy_from_slice(key))
        .map_err(|_| "topic is not an MQTT string")?;
    roost_core::topic::TopicName::new(s).map_err(|_| "invalid topic name")
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_core::codec::PublishProperties;
    use roost_core::topic::TopicName;

    fn message() -> StoredMessage {
        StoredMessage {
            topic: TopicName::from_static("a/b"),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: PublishProperties {
                message_expiry_interval: Some(30),
                content_type: Some(MqttStr::from_static("text/plain")),
                ..PublishProperties::default()
            },
        }
    }

    #[test]
    fn message_round_trips() {
        let ids = [NonZeroU32::MIN, NonZeroU32::MAX];
        let record = Bytes::from(encode_message(&ids, &message()).unwrap());
        assert_eq!(decode_message(&record), Ok((ids.to_vec(), message())));
        let record = Bytes::from(encode_retained(&message()).unwrap());
        assert_eq!(decode_retained(&record), Ok(message()));
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let record = encode_message(&[NonZeroU32::MIN], &message()).unwrap();
        for len in 0..record.len() {
            assert!(decode_message(&Bytes::copy_from_slice(&record[..len])).is_err());
        }
        let mut longer = record.clone();
        longer.push(0);
        assert!(decode_message(&Bytes::from(longer)).is_err());
        let mut newer = record;
        newer[0] = 2;
        assert_eq!(
            decode_message(&Bytes::from(newer)),
            Err("unknown format version")
        );
    }

    #[test]
    fn session_records_round_trip_with_and_without_an_owner() {
        for owner in [
            None,
            Some(SessionOwner {
                class: 0,
                username: None,
            }),
            Some(SessionOwner {
                class: 7,
                username: Some(MqttStr::from_static("alice")),
            }),
        ] {
            let record = SessionRecord {
                num: 42,
                expiry_interval: 3600,
                owner,
            };
            let bytes = record.encode();
            assert_eq!(SessionRecord::decode(&bytes), Ok(record.clone()));
            for len in 0..bytes.len() {
                assert!(SessionRecord::decode(&bytes[..len]).is_err());
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(SessionRecord::decode(&longer).is_err());
        }
    }

    #[test]
    fn a_session_record_of_format_1_reads_with_an_unknown_owner() {
        // As written before owners were stored.
        let mut v = vec![FORMAT_V1];
        v.extend_from_slice(&9u64.to_be_bytes());
        v.extend_from_slice(&60u32.to_be_bytes());
        assert_eq!(
            SessionRecord::decode(&v),
            Ok(SessionRecord {
                num: 9,
                expiry_interval: 60,
                owner: None,
            })
        );
        v[0] = 3;
        assert_eq!(SessionRecord::decode(&v), Err("unknown format version"));
    }

    #[test]
    fn subscription_options_round_trip() {
        for options in [
            SubscriptionOptions::default(),
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        ] {
            let v = encode_subscription(&options, NonZeroU32::new(7));
            assert_eq!(decode_subscription(&v), Ok((options, NonZeroU32::new(7))));
        }
        assert!(decode_subscription(&[FORMAT_V1, 0x03, 0, 0, 0, 0]).is_err());
        assert!(decode_subscription(&[FORMAT_V1, 0x30, 0, 0, 0, 0]).is_err());
    }
}
