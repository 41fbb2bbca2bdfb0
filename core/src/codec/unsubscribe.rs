//! UNSUBSCRIBE (section 3.10) and UNSUBACK (section 3.11).

use super::io::{Reader, binary_len, put_str};
use super::{
    AckProperties, DecodeError, PacketId, PacketType, Protocol, ReasonCode, UnsubscribeProperties,
};
use crate::topic::TopicFilter;
use alloc::vec::Vec;
use bytes::{BufMut, BytesMut};

/// An UNSUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// The filters to remove, at least one.
    pub filters: Vec<TopicFilter>,
    /// Properties (5.0 only).
    pub properties: UnsubscribeProperties,
}

impl Unsubscribe {
    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Self, DecodeError> {
        let packet_id = PacketId::decode(r)?;
        let properties = if protocol == Protocol::V5 {
            UnsubscribeProperties::decode(r)?
        } else {
            UnsubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while r.has_remaining() {
            filters.push(TopicFilter::new(r.string()?).map_err(DecodeError::InvalidTopicFilter)?);
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(Unsubscribe {
            packet_id,
            filters,
            properties,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        2 + if protocol == Protocol::V5 {
            self.properties.encoded_len()
        } else {
            0
        } + self
            .filters
            .iter()
            .map(|f| binary_len(f.as_bytes()))
            .sum::<usize>()
    }

    pub(crate) fn encode_body(&self, protocol: Protocol, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if protocol == Protocol::V5 {
            self.properties.encode(buf);
        }
        for f in &self.filters {
            put_str(buf, f.as_mqtt_str());
        }
    }
}

/// An UNSUBACK packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// One reason code per filter (5.0 only; MQTT 3 UNSUBACK has none and
    /// decodes with this empty).
    pub reasons: Vec<ReasonCode>,
    /// Properties (5.0 only).
    pub properties: AckProperties,
}

impl UnsubAck {
    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Self, DecodeError> {
        let packet_id = PacketId::decode(r)?;
        let mut reasons = Vec::new();
        let mut properties = AckProperties::default();
        if protocol == Protocol::V5 {
            properties = AckProperties::decode_for(r, PacketType::UnsubAck)?;
            reasons.reserve(r.remaining());
            while r.has_remaining() {
                let code = r.u8()?;
                let reason = ReasonCode::from_u8(code)
                    .filter(|c| c.allowed_in(PacketType::UnsubAck))
                    .ok_or(DecodeError::InvalidReasonCode {
                        code,
                        packet: PacketType::UnsubAck,
                    })?;
                reasons.push(reason);
            }
            if reasons.is_empty() {
                return Err(DecodeError::NoTopicFilters);
            }
        }
        r.finish()?;
        Ok(UnsubAck {
            packet_id,
            reasons,
            properties,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        2 + if protocol == Protocol::V5 {
            self.properties.encoded_len() + self.reasons.len()
        } else {
            0
        }
    }

    pub(crate) fn encode_body(&self, protocol: Protocol, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if protocol == Protocol::V5 {
            self.properties.encode(buf);
            for r in &self.reasons {
                buf.put_u8(*r as u8);
            }
        }
    }
}
