//! CONNACK (section 3.2): the server's answer to CONNECT.

use super::io::Reader;
use super::{ConnAckProperties, DecodeError, PacketType, Protocol, ReasonCode};
use bytes::{BufMut, BytesMut};

/// A CONNACK packet. In MQTT 3 the reason is carried as the nearest return
/// code (see [`ReasonCode::to_v3_connack`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present.
    pub session_present: bool,
    /// Connect Reason Code (5.0) or return code (3.x).
    pub reason: ReasonCode,
    /// CONNACK properties (5.0 only).
    pub properties: ConnAckProperties,
}

impl ConnAck {
    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Self, DecodeError> {
        let flags = r.u8()?;
        if flags & 0xFE != 0 {
            return Err(DecodeError::ConnAckReservedFlags);
        }
        let code = r.u8()?;
        let invalid = DecodeError::InvalidReasonCode {
            code,
            packet: PacketType::ConnAck,
        };
        let (reason, properties) = if protocol == Protocol::V5 {
            let reason = ReasonCode::from_u8(code)
                .filter(|c| c.allowed_in(PacketType::ConnAck))
                .ok_or(invalid)?;
            (reason, ConnAckProperties::decode(r)?)
        } else {
            let reason = ReasonCode::from_v3_connack(code).ok_or(invalid)?;
            (reason, ConnAckProperties::default())
        };
        r.finish()?;
        Ok(ConnAck {
            session_present: flags & 1 != 0,
            reason,
            properties,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        2 + if protocol == Protocol::V5 {
            self.properties.encoded_len()
        } else {
            0
        }
    }

    pub(crate) fn encode_body(&self, protocol: Protocol, buf: &mut BytesMut) {
        buf.put_u8(u8::from(self.session_present));
        if protocol == Protocol::V5 {
            buf.put_u8(self.reason as u8);
            self.properties.encode(buf);
        } else {
            buf.put_u8(self.reason.to_v3_connack());
        }
    }
}
