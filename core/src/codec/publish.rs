//! PUBLISH (section 3.3): an application message, in either direction.

use super::io::{MAX_VARINT, Reader, binary_len, put_binary, put_fixed_header, varint_len};
use super::{DecodeError, EncodeError, PacketId, Protocol, PublishProperties, QoS};
use crate::topic::TopicName;
use bytes::{BufMut, Bytes, BytesMut};

/// The QoS of a PUBLISH together with the packet identifier that QoS 1 and 2
/// require and QoS 0 forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosPid {
    /// QoS 0: no packet identifier.
    AtMostOnce,
    /// QoS 1 with its packet identifier.
    AtLeastOnce(PacketId),
    /// QoS 2 with its packet identifier.
    ExactlyOnce(PacketId),
}

impl QosPid {
    /// The QoS level.
    pub fn qos(self) -> QoS {
        match self {
            QosPid::AtMostOnce => QoS::AtMostOnce,
            QosPid::AtLeastOnce(_) => QoS::AtLeastOnce,
            QosPid::ExactlyOnce(_) => QoS::ExactlyOnce,
        }
    }

    /// The packet identifier, for QoS 1 and 2.
    pub fn packet_id(self) -> Option<PacketId> {
        match self {
            QosPid::AtMostOnce => None,
            QosPid::AtLeastOnce(id) | QosPid::ExactlyOnce(id) => Some(id),
        }
    }

    /// Combines a QoS with a packet identifier (ignored for QoS 0).
    pub fn new(qos: QoS, packet_id: PacketId) -> Self {
        match qos {
            QoS::AtMostOnce => QosPid::AtMostOnce,
            QoS::AtLeastOnce => QosPid::AtLeastOnce(packet_id),
            QoS::ExactlyOnce => QosPid::ExactlyOnce(packet_id),
        }
    }
}

/// A PUBLISH packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP: this may be a re-delivery.
    pub dup: bool,
    /// QoS and packet identifier.
    pub qos: QosPid,
    /// RETAIN.
    pub retain: bool,
    /// Topic Name; empty only when an MQTT 5 topic alias stands in for it.
    pub topic: TopicName,
    /// The payload, shared with every copy of the message.
    pub payload: Bytes,
    /// PUBLISH properties (5.0 only).
    pub properties: PublishProperties,
}

impl Publish {
    pub(crate) fn decode(
        r: &mut Reader,
        flags: u8,
        protocol: Protocol,
    ) -> Result<Self, DecodeError> {
        let dup = flags & 0x08 != 0;
        let qos = QoS::from_u8((flags >> 1) & 0x03)?;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupOnQoS0);
        }
        let topic =
            TopicName::new_allow_empty(r.string()?).map_err(DecodeError::InvalidTopicName)?;
        let qos = match qos {
            QoS::AtMostOnce => QosPid::AtMostOnce,
            QoS::AtLeastOnce => QosPid::AtLeastOnce(PacketId::decode(r)?),
            QoS::ExactlyOnce => QosPid::ExactlyOnce(PacketId::decode(r)?),
        };
        let properties = if protocol == Protocol::V5 {
            PublishProperties::decode(r)?
        } else {
            PublishProperties::default()
        };
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(DecodeError::InvalidTopicName(
                crate::topic::TopicError::Empty,
            ));
        }
        Ok(Publish {
            dup,
            qos,
            retain: flags & 0x01 != 0,
            topic,
            payload: r.rest(),
            properties,
        })
    }

    /// This packet's parts, borrowed.
    pub fn parts(&self) -> PublishRef<'_> {
        PublishRef {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: (!self.topic.is_empty()).then_some(&self.topic),
            payload: &self.payload,
            properties: Some(&self.properties),
        }
    }
}

/// A PUBLISH of borrowed parts, to encode.
///
/// The engine encodes one message for many subscribers: building a
/// [`Publish`] for each would clone its topic, payload and properties only
/// to drop them again. Encodes to the same bytes as the [`Publish`] with
/// these fields (`Packet::Publish(p).encode` goes through `p.parts()`).
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    /// DUP: this may be a re-delivery.
    pub dup: bool,
    /// QoS and packet identifier.
    pub qos: QosPid,
    /// RETAIN.
    pub retain: bool,
    /// Topic Name; `None` (sent as an empty topic) when an MQTT 5 topic
    /// alias stands in for it.
    pub topic: Option<&'a TopicName>,
    /// The payload.
    pub payload: &'a [u8],
    /// PUBLISH properties (5.0 only); `None` is an empty block.
    pub properties: Option<&'a PublishProperties>,
}

impl PublishRef<'_> {
    /// The exact number of bytes [`PublishRef::encode`] writes.
    pub fn encoded_len(&self, protocol: Protocol) -> usize {
        let body = self.body_len(protocol);
        1 + varint_len(body) + body
    }

    /// Appends the PUBLISH, encoded for `protocol`, to `buf` (properties
    /// are left out before 5.0).
    pub fn encode(&self, protocol: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
        if let Some(p) = self.properties {
            if !p
                .subscription_identifiers
                .iter()
                .all(|id| id.get() <= MAX_VARINT)
            {
                return Err(EncodeError::SubscriptionIdentifierTooLarge);
            }
            if p.correlation_data
                .as_ref()
                .is_some_and(|b| b.len() > usize::from(u16::MAX))
            {
                return Err(EncodeError::FieldTooLong);
            }
        }
        put_fixed_header(buf, self.first_byte(), self.body_len(protocol))?;
        put_binary(buf, self.topic_bytes());
        if let Some(id) = self.qos.packet_id() {
            buf.put_u16(id.get());
        }
        if protocol == Protocol::V5 {
            match self.properties {
                Some(p) => p.encode(buf),
                None => buf.put_u8(0),
            }
        }
        buf.put_slice(self.payload);
        Ok(())
    }

    fn topic_bytes(&self) -> &[u8] {
        self.topic.map_or(&[], |t| t.as_bytes())
    }

    pub(crate) fn first_byte(&self) -> u8 {
        let mut b = 0x30 | ((self.qos.qos() as u8) << 1);
        // DUP is never set on QoS 0 [MQTT-3.3.1-2], even if a QoS 1/2
        // re-delivery was downgraded to a QoS 0 subscriber.
        if self.dup && self.qos != QosPid::AtMostOnce {
            b |= 0x08;
        }
        if self.retain {
            b |= 0x01;
        }
        b
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        binary_len(self.topic_bytes())
            + if self.qos.packet_id().is_some() { 2 } else { 0 }
            + if protocol == Protocol::V5 {
                self.properties.map_or(1, |p| p.encoded_len())
            } else {
                0
            }
            + self.payload.len()
    }
}
