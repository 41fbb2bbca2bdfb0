//! DISCONNECT (section 3.14) and AUTH (section 3.15).

use super::io::Reader;
use super::{AuthProperties, DecodeError, DisconnectProperties, PacketType, Protocol, ReasonCode};
use bytes::{BufMut, BytesMut};

/// A DISCONNECT packet. In MQTT 3 it has no body: reason and properties
/// exist only in 5.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Disconnect Reason Code; Success is Normal disconnection.
    pub reason: ReasonCode,
    /// Properties (5.0 only).
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with `reason` and no properties.
    pub fn new(reason: ReasonCode) -> Self {
        Disconnect {
            reason,
            properties: DisconnectProperties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Self, DecodeError> {
        let (reason, properties) = decode_reason_and_props(r, protocol, PacketType::Disconnect)?;
        let properties = match properties {
            true => DisconnectProperties::decode(r)?,
            false => DisconnectProperties::default(),
        };
        r.finish()?;
        Ok(Disconnect { reason, properties })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        reason_and_props_len(protocol, self.reason, self.properties.is_empty(), || {
            self.properties.encoded_len()
        })
    }

    pub(crate) fn encode_body(&self, protocol: Protocol, buf: &mut BytesMut) {
        let len = self.body_len(protocol);
        if len > 0 {
            buf.put_u8(self.reason as u8);
        }
        if len > 1 {
            self.properties.encode(buf);
        }
    }
}

/// An AUTH packet (5.0 only): a step of enhanced authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason: ReasonCode,
    /// Properties: the method and data of the exchange.
    pub properties: AuthProperties,
}

impl Auth {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let (reason, properties) = decode_reason_and_props(r, Protocol::V5, PacketType::Auth)?;
        let properties = match properties {
            true => AuthProperties::decode(r)?,
            false => AuthProperties::default(),
        };
        r.finish()?;
        Ok(Auth { reason, properties })
    }

    pub(crate) fn body_len(&self) -> usize {
        reason_and_props_len(
            Protocol::V5,
            self.reason,
            self.properties.is_empty(),
            || self.properties.encoded_len(),
        )
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) {
        let len = self.body_len();
        if len > 0 {
            buf.put_u8(self.reason as u8);
        }
        if len > 1 {
            self.properties.encode(buf);
        }
    }
}

/// The optional reason code of DISCONNECT and AUTH: a remaining length of 0
/// means Success and no properties (sections 3.14.2.1 and 3.15.2.1). Returns
/// the reason and whether a property block follows.
fn decode_reason_and_props(
    r: &mut Reader,
    protocol: Protocol,
    packet: PacketType,
) -> Result<(ReasonCode, bool), DecodeError> {
    if protocol != Protocol::V5 || !r.has_remaining() {
        return Ok((ReasonCode::Success, false));
    }
    let code = r.u8()?;
    let reason = ReasonCode::from_u8(code)
        .filter(|c| c.allowed_in(packet))
        .ok_or(DecodeError::InvalidReasonCode { code, packet })?;
    Ok((reason, r.has_remaining()))
}

fn reason_and_props_len(
    protocol: Protocol,
    reason: ReasonCode,
    no_props: bool,
    props_len: impl FnOnce() -> usize,
) -> usize {
    if protocol != Protocol::V5 || (reason == ReasonCode::Success && no_props) {
        0
    } else if no_props {
        1
    } else {
        1 + props_len()
    }
}
