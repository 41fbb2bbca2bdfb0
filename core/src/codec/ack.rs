//! PUBACK, PUBREC, PUBREL and PUBCOMP (sections 3.4 to 3.7): the QoS 1 and
//! QoS 2 acknowledgements share one shape.

use super::io::Reader;
use super::{AckProperties, DecodeError, PacketId, PacketType, Protocol, ReasonCode};
use bytes::{BufMut, BytesMut};

/// The body of PUBACK, PUBREC, PUBREL or PUBCOMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    /// The packet identifier of the PUBLISH (or PUBREL) acknowledged.
    pub packet_id: PacketId,
    /// Reason code (5.0; always Success in 3.x).
    pub reason: ReasonCode,
    /// Properties (5.0 only).
    pub properties: AckProperties,
}

impl PubResponse {
    /// A successful acknowledgement without properties.
    pub fn new(packet_id: PacketId) -> Self {
        PubResponse {
            packet_id,
            reason: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }

    pub(crate) fn decode(
        r: &mut Reader,
        packet: PacketType,
        protocol: Protocol,
    ) -> Result<Self, DecodeError> {
        let packet_id = PacketId::decode(r)?;
        let mut reason = ReasonCode::Success;
        let mut properties = AckProperties::default();
        // MQTT 5 lets the reason code and the properties be left out
        // (sections 3.4.2.1 and 3.4.2.2).
        if protocol == Protocol::V5 && r.has_remaining() {
            let code = r.u8()?;
            reason = ReasonCode::from_u8(code)
                .filter(|c| c.allowed_in(packet))
                .ok_or(DecodeError::InvalidReasonCode { code, packet })?;
            if r.has_remaining() {
                properties = AckProperties::decode_for(r, packet)?;
            }
        }
        r.finish()?;
        Ok(PubResponse {
            packet_id,
            reason,
            properties,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        if protocol != Protocol::V5
            || (self.reason == ReasonCode::Success && self.properties.is_empty())
        {
            2
        } else if self.properties.is_empty() {
            3
        } else {
            3 + self.properties.encoded_len()
        }
    }

    pub(crate) fn encode_body(&self, protocol: Protocol, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        let len = self.body_len(protocol);
        if len > 2 {
            buf.put_u8(self.reason as u8);
        }
        if len > 3 {
            self.properties.encode(buf);
        }
    }
}
