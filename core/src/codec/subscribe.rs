//! SUBSCRIBE (section 3.8) and SUBACK (section 3.9).

use super::io::{Reader, binary_len, put_str};
use super::{
    AckProperties, DecodeError, PacketId, PacketType, Protocol, QoS, ReasonCode,
    SubscribeProperties,
};
use crate::topic::TopicFilter;
use alloc::vec::Vec;
use bytes::{BufMut, BytesMut};

/// When retained messages are sent for a new subscription (MQTT 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe (the 3.x rule).
    #[default]
    SendOnSubscribe = 0,
    /// Send them only if the subscription did not exist before.
    SendIfNew = 1,
    /// Do not send them.
    DoNotSend = 2,
}

/// Subscription options (section 3.8.3.1); in MQTT 3 only the QoS exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local: do not send the client its own publications.
    pub no_local: bool,
    /// Retain As Published: keep the RETAIN flag of forwarded messages.
    pub retain_as_published: bool,
    /// Retain Handling.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    fn decode(byte: u8, protocol: Protocol) -> Result<Self, DecodeError> {
        let reserved = if protocol == Protocol::V5 { 0xC0 } else { 0xFC };
        if byte & reserved != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions);
        }
        let retain_handling = match (byte >> 4) & 0x03 {
            0 => RetainHandling::SendOnSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        Ok(SubscriptionOptions {
            qos: QoS::from_u8(byte & 0x03).map_err(|_| DecodeError::InvalidSubscriptionQoS)?,
            no_local: byte & 0x04 != 0,
            retain_as_published: byte & 0x08 != 0,
            retain_handling,
        })
    }

    fn encode(&self, protocol: Protocol) -> u8 {
        let mut b = self.qos as u8;
        if protocol == Protocol::V5 {
            b |= u8::from(self.no_local) << 2;
            b |= u8::from(self.retain_as_published) << 3;
            b |= (self.retain_handling as u8) << 4;
        }
        b
    }
}

/// One topic filter of a SUBSCRIBE, with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The topic filter.
    pub filter: TopicFilter,
    /// Its options.
    pub options: SubscriptionOptions,
}

/// A SUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// The subscriptions, at least one.
    pub subscriptions: Vec<Subscription>,
    /// Properties (5.0 only).
    pub properties: SubscribeProperties,
}

impl Subscribe {
    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Self, DecodeError> {
        let packet_id = PacketId::decode(r)?;
        let properties = if protocol == Protocol::V5 {
            SubscribeProperties::decode(r)?
        } else {
            SubscribeProperties::default()
        };
        let mut subscriptions = Vec::new();
        while r.has_remaining() {
            let filter = TopicFilter::new(r.string()?).map_err(DecodeError::InvalidTopicFilter)?;
            let options = SubscriptionOptions::decode(r.u8()?, protocol)?;
            if options.no_local
                && filter.as_bytes().starts_with(b"$share/")
                && protocol == Protocol::V5
            {
                return Err(DecodeError::NoLocalOnSharedSubscription);
            }
            subscriptions.push(Subscription { filter, options });
        }
        if subscriptions.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(Subscribe {
            packet_id,
            subscriptions,
            properties,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        2 + if protocol == Protocol::V5 {
            self.properties.encoded_len()
        } else {
            0
        } + self
            .subscriptions
            .iter()
            .map(|s| binary_len(s.filter.as_bytes()) + 1)
            .sum::<usize>()
    }

    pub(crate) fn encode_body(&self, protocol: Protocol, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if protocol == Protocol::V5 {
            self.properties.encode(buf);
        }
        for s in &self.subscriptions {
            put_str(buf, s.filter.as_mqtt_str());
            buf.put_u8(s.options.encode(protocol));
        }
    }
}

/// A SUBACK packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// One reason code per subscription, in order: Granted QoS 0/1/2 or a
    /// failure. MQTT 3 carries every failure as 0x80.
    pub reasons: Vec<ReasonCode>,
    /// Properties (5.0 only).
    pub properties: AckProperties,
}

impl SubAck {
    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Self, DecodeError> {
        let packet_id = PacketId::decode(r)?;
        let properties = if protocol == Protocol::V5 {
            AckProperties::decode_for(r, PacketType::SubAck)?
        } else {
            AckProperties::default()
        };
        let mut reasons = Vec::with_capacity(r.remaining());
        while r.has_remaining() {
            let code = r.u8()?;
            let reason = ReasonCode::from_u8(code)
                .filter(|c| {
                    if protocol == Protocol::V5 {
                        c.allowed_in(PacketType::SubAck)
                    } else {
                        matches!(code, 0x00 | 0x01 | 0x02 | 0x80)
                    }
                })
                .ok_or(DecodeError::InvalidReasonCode {
                    code,
                    packet: PacketType::SubAck,
                })?;
            reasons.push(reason);
        }
        if reasons.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(SubAck {
            packet_id,
            reasons,
            properties,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        2 + if protocol == Protocol::V5 {
            self.properties.encoded_len()
        } else {
            0
        } + self.reasons.len()
    }

    pub(crate) fn encode_body(&self, protocol: Protocol, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if protocol == Protocol::V5 {
            self.properties.encode(buf);
            for r in &self.reasons {
                buf.put_u8(*r as u8);
            }
        } else {
            for r in &self.reasons {
                buf.put_u8(if r.is_error() { 0x80 } else { *r as u8 });
            }
        }
    }
}
