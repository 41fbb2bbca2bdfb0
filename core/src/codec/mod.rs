//! The MQTT wire format: every control packet of versions 3.1, 3.1.1 and 5.0.
//!
//! Decoding is incremental and zero-copy: [`decode`] takes whatever bytes of
//! a stream have arrived and either returns one packet (splitting its bytes
//! off the buffer), or says it needs more, or fails with a [`DecodeError`].
//! A packet whose fixed header announces more than the configured maximum is
//! rejected from the header alone, so a peer cannot make the decoder buffer
//! what it announces. Payloads, topics and strings of a decoded packet share
//! the bytes they arrived in.
//!
//! Encoding writes into a caller-provided `BytesMut` with no intermediate
//! allocation; [`Packet::encoded_len`] gives the exact size up front.
//!
//! ```
//! use bytes::BytesMut;
//! use roost_core::codec::{decode, Packet, Protocol};
//!
//! // A PINGREQ arrives in two pieces.
//! let mut buf = BytesMut::from(&[0xC0][..]);
//! assert_eq!(decode(&mut buf, Protocol::V3_1_1, 1024), Ok(None));
//! buf.extend_from_slice(&[0x00]);
//! assert_eq!(decode(&mut buf, Protocol::V3_1_1, 1024), Ok(Some(Packet::PingReq)));
//! assert!(buf.is_empty());
//! ```

mod ack;
mod connack;
mod connect;
mod disconnect;
mod error;
mod fuzz;
mod io;
mod properties;
mod publish;
mod reason;
mod subscribe;
mod unsubscribe;

pub use ack::PubResponse;
pub use connack::ConnAck;
pub use connect::{Connect, Will};
pub use disconnect::{Auth, Disconnect};
pub use error::{DecodeError, EncodeError};
#[doc(hidden)]
pub use fuzz::fuzz_decode;
pub use io::MAX_VARINT;
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, UserProperty, WillProperties,
};
pub use publish::{Publish, PublishRef, QosPid};
pub use reason::ReasonCode;
pub use subscribe::{RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions};
pub use unsubscribe::{UnsubAck, Unsubscribe};

use alloc::boxed::Box;
use bytes::{Bytes, BytesMut};
use core::num::NonZeroU16;
use io::{Reader, decode_varint, varint_len};

/// The protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl Protocol {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V3_1 => 3,
            Protocol::V3_1_1 => 4,
            Protocol::V5 => 5,
        }
    }

    /// The protocol name of CONNECT.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V3_1 => "MQIsdp",
            Protocol::V3_1_1 | Protocol::V5 => "MQTT",
        }
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// At most once (0).
    #[default]
    AtMostOnce = 0,
    /// At least once (1).
    AtLeastOnce = 1,
    /// Exactly once (2).
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS with this value; 3 is [`DecodeError::InvalidQoS`].
    pub fn from_u8(value: u8) -> Result<Self, DecodeError> {
        match value {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(DecodeError::InvalidQoS),
        }
    }
}

/// A packet identifier: never 0 [MQTT-2.2.1-3].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// Identifier 1.
    pub const MIN: PacketId = PacketId(NonZeroU16::MIN);

    /// The identifier `value`, or `None` for 0.
    pub const fn new(value: u16) -> Option<Self> {
        match NonZeroU16::new(value) {
            Some(v) => Some(PacketId(v)),
            None => None,
        }
    }

    /// The identifier's value.
    pub const fn get(self) -> u16 {
        self.0.get()
    }

    /// The identifier after this one, wrapping from 65,535 to 1.
    pub fn next(self) -> Self {
        PacketId(NonZeroU16::new(self.0.get().wrapping_add(1)).unwrap_or(NonZeroU16::MIN))
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        PacketId::new(r.u16()?).ok_or(DecodeError::ZeroPacketId)
    }
}

/// The type of a control packet: the high four bits of its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the names are the specification's
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    fn from_first_byte(byte: u8, protocol: Protocol) -> Result<Self, DecodeError> {
        use PacketType::*;
        let kind = byte >> 4;
        let packet = match kind {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 if protocol == Protocol::V5 => Auth,
            _ => return Err(DecodeError::InvalidPacketType(kind)),
        };
        let flags = byte & 0x0F;
        let required = match packet {
            // PUBLISH carries DUP, QoS and RETAIN; QoS 3 is checked early too
            // so such a packet is refused before its body arrives.
            Publish if (flags >> 1) & 0x03 == 3 => return Err(DecodeError::InvalidQoS),
            Publish => flags,
            PubRel | Subscribe | Unsubscribe => 0x02,
            _ => 0x00,
        };
        if flags != required {
            return Err(DecodeError::InvalidFlags { packet, flags });
        }
        Ok(packet)
    }
}

/// A decoded fixed header (section 2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The packet type.
    pub packet: PacketType,
    /// The first byte, flags included.
    pub first_byte: u8,
    /// Bytes of the fixed header (2 to 5).
    pub header_len: usize,
    /// The remaining length: bytes after the fixed header.
    pub remaining_len: usize,
}

impl FrameHeader {
    /// The whole packet's size in bytes.
    pub fn total_len(&self) -> usize {
        self.header_len + self.remaining_len
    }

    /// Reads a fixed header from the start of `buf`: `Ok(None)` if more bytes
    /// are needed to know it. Fails on an invalid type or flags, a malformed
    /// remaining length, or a total size above `max_packet_size`, all before
    /// the body has arrived.
    pub fn decode(
        buf: &[u8],
        protocol: Protocol,
        max_packet_size: usize,
    ) -> Result<Option<Self>, DecodeError> {
        let Some(&first_byte) = buf.first() else {
            return Ok(None);
        };
        let packet = PacketType::from_first_byte(first_byte, protocol)?;
        let Some((remaining, len)) = decode_varint(buf.get(1..).unwrap_or_default())? else {
            return Ok(None);
        };
        let header = FrameHeader {
            packet,
            first_byte,
            header_len: 1 + len,
            remaining_len: remaining as usize,
        };
        if header.total_len() > max_packet_size {
            return Err(DecodeError::PacketTooLarge {
                size: header.total_len(),
                max: max_packet_size,
            });
        }
        Ok(Some(header))
    }
}

/// An MQTT control packet of any version.
///
/// The large, rare packets are boxed so the enum stays small for PUBLISH and
/// the acknowledgements that make up almost all traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // each variant is the packet of the same name
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(Box<ConnAck>),
    Publish(Publish),
    PubAck(PubResponse),
    PubRec(PubResponse),
    PubRel(PubResponse),
    PubComp(PubResponse),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Box<Auth>),
}

/// Choices the specification leaves to the receiver, for [`decode_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Treat a UTF-8 string holding a disallowed code point (control
    /// characters and non-characters, section 1.5.4; see
    /// [`crate::MqttStr::has_disallowed_code_point`]) as a Malformed Packet:
    /// [`DecodeError::InvalidString`] with
    /// [`crate::StrError::DisallowedCodePoint`]. Off by default.
    pub reject_disallowed_code_points: bool,
}

/// Decodes one packet from the front of `buf`, splitting its bytes off.
///
/// Returns `Ok(None)` while `buf` holds less than a whole packet, without
/// consuming anything; call again when more bytes arrive. `protocol` is the
/// version the connection speaks (a CONNECT is decoded by its own version
/// whatever `protocol` says). `max_packet_size` bounds the whole packet,
/// fixed header included.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Protocol,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    decode_with(buf, protocol, max_packet_size, DecodeOptions::default())
}

/// [`decode`], with the receiver's choices in `options`.
pub fn decode_with(
    buf: &mut BytesMut,
    protocol: Protocol,
    max_packet_size: usize,
    options: DecodeOptions,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = FrameHeader::decode(buf, protocol, max_packet_size)? else {
        return Ok(None);
    };
    if buf.len() < header.total_len() {
        return Ok(None);
    }
    let frame = buf.split_to(header.total_len()).freeze();
    Packet::decode_frame_with(header, frame, protocol, options).map(Some)
}

/// Decodes one packet from the front of `input` without consuming it:
/// returns the packet and the number of bytes it took, or `Ok(None)` if
/// `input` holds less than a whole packet.
pub fn decode_slice(
    input: &Bytes,
    protocol: Protocol,
    max_packet_size: usize,
) -> Result<Option<(Packet, usize)>, DecodeError> {
    let Some(header) = FrameHeader::decode(input, protocol, max_packet_size)? else {
        return Ok(None);
    };
    if input.len() < header.total_len() {
        return Ok(None);
    }
    let frame = input.slice(..header.total_len());
    let packet = Packet::decode_frame(header, frame, protocol)?;
    Ok(Some((packet, header.total_len())))
}

impl Packet {
    /// Decodes a whole packet, fixed header included, whose header has been
    /// read already. A `frame` shorter or longer than `header.total_len()`
    /// is refused (as [`DecodeError::UnexpectedEnd`] or
    /// [`DecodeError::TrailingBytes`]).
    pub fn decode_frame(
        header: FrameHeader,
        frame: Bytes,
        protocol: Protocol,
    ) -> Result<Packet, DecodeError> {
        Self::decode_frame_with(header, frame, protocol, DecodeOptions::default())
    }

    /// [`Packet::decode_frame`], with the receiver's choices in `options`.
    pub fn decode_frame_with(
        header: FrameHeader,
        frame: Bytes,
        protocol: Protocol,
        options: DecodeOptions,
    ) -> Result<Packet, DecodeError> {
        match frame.len().cmp(&header.total_len()) {
            core::cmp::Ordering::Less => return Err(DecodeError::UnexpectedEnd),
            core::cmp::Ordering::Greater => return Err(DecodeError::TrailingBytes),
            core::cmp::Ordering::Equal => {}
        }
        let mut r = Reader::with_strict_strings(
            frame.slice(header.header_len..),
            options.reject_disallowed_code_points,
        );
        let flags = header.first_byte & 0x0F;
        let packet = match header.packet {
            PacketType::Connect => Packet::Connect(Box::new(Connect::decode(&mut r)?)),
            PacketType::ConnAck => Packet::ConnAck(Box::new(ConnAck::decode(&mut r, protocol)?)),
            PacketType::Publish => Packet::Publish(Publish::decode(&mut r, flags, protocol)?),
            PacketType::PubAck => {
                Packet::PubAck(PubResponse::decode(&mut r, PacketType::PubAck, protocol)?)
            }
            PacketType::PubRec => {
                Packet::PubRec(PubResponse::decode(&mut r, PacketType::PubRec, protocol)?)
            }
            PacketType::PubRel => {
                Packet::PubRel(PubResponse::decode(&mut r, PacketType::PubRel, protocol)?)
            }
            PacketType::PubComp => {
                Packet::PubComp(PubResponse::decode(&mut r, PacketType::PubComp, protocol)?)
            }
            PacketType::Subscribe => Packet::Subscribe(Subscribe::decode(&mut r, protocol)?),
            PacketType::SubAck => Packet::SubAck(SubAck::decode(&mut r, protocol)?),
            PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(&mut r, protocol)?),
            PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode(&mut r, protocol)?),
            PacketType::PingReq => {
                r.finish()?;
                Packet::PingReq
            }
            PacketType::PingResp => {
                r.finish()?;
                Packet::PingResp
            }
            PacketType::Disconnect => Packet::Disconnect(Disconnect::decode(&mut r, protocol)?),
            PacketType::Auth => Packet::Auth(Box::new(Auth::decode(&mut r)?)),
        };
        Ok(packet)
    }

    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    fn first_byte(&self) -> u8 {
        match self {
            Packet::Publish(p) => p.parts().first_byte(),
            Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => {
                ((self.packet_type() as u8) << 4) | 0x02
            }
            _ => (self.packet_type() as u8) << 4,
        }
    }

    fn body_len(&self, protocol: Protocol) -> usize {
        match self {
            Packet::Connect(p) => p.body_len(),
            Packet::ConnAck(p) => p.body_len(protocol),
            Packet::Publish(p) => p.parts().body_len(protocol),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                p.body_len(protocol)
            }
            Packet::Subscribe(p) => p.body_len(protocol),
            Packet::SubAck(p) => p.body_len(protocol),
            Packet::Unsubscribe(p) => p.body_len(protocol),
            Packet::UnsubAck(p) => p.body_len(protocol),
            Packet::PingReq | Packet::PingResp => 0,
            Packet::Disconnect(p) => p.body_len(protocol),
            Packet::Auth(p) => p.body_len(),
        }
    }

    /// Checks the fields whose type admits values the wire format cannot
    /// carry: length-prefixed binary fields longer than their two-byte
    /// prefix (strings cannot be, [`crate::MqttStr`] refuses it; `Bytes`
    /// fields can, when the packet was built in code rather than decoded),
    /// and subscription identifiers above the variable byte integer range.
    fn check_fields(&self) -> Result<(), EncodeError> {
        fn fits(b: &Option<Bytes>) -> bool {
            b.as_ref().is_none_or(|b| b.len() <= usize::from(u16::MAX))
        }
        let id_fits = |id: &core::num::NonZeroU32| id.get() <= MAX_VARINT;
        // PUBLISH checks its own (`PublishRef::encode`).
        let ids_fit = match self {
            Packet::Subscribe(s) => s.properties.subscription_identifier.iter().all(id_fits),
            _ => true,
        };
        if !ids_fit {
            return Err(EncodeError::SubscriptionIdentifierTooLarge);
        }
        let fit = match self {
            Packet::Connect(c) => {
                fits(&c.password)
                    && fits(&c.properties.authentication_data)
                    && c.will.as_ref().is_none_or(|w| {
                        w.payload.len() <= usize::from(u16::MAX)
                            && fits(&w.properties.correlation_data)
                    })
            }
            Packet::ConnAck(c) => fits(&c.properties.authentication_data),
            Packet::Auth(a) => fits(&a.properties.authentication_data),
            _ => true,
        };
        if fit {
            Ok(())
        } else {
            Err(EncodeError::FieldTooLong)
        }
    }

    /// The exact number of bytes [`Packet::encode`] writes for `protocol`.
    ///
    /// A CONNECT is always encoded in its own `protocol` field's version.
    pub fn encoded_len(&self, protocol: Protocol) -> usize {
        let body = self.body_len(protocol);
        1 + varint_len(body) + body
    }

    /// Appends the packet, encoded for `protocol`, to `buf`.
    ///
    /// Fields that `protocol` does not have (properties and reason codes
    /// before 5.0) are left out, which is the translation the specification
    /// implies for a message forwarded to an older client.
    pub fn encode(&self, protocol: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
        if let Packet::Publish(p) = self {
            return p.parts().encode(protocol, buf);
        }
        if matches!(self, Packet::Auth(_)) && protocol != Protocol::V5 {
            return Err(EncodeError::NotInProtocol(PacketType::Auth));
        }
        self.check_fields()?;
        io::put_fixed_header(buf, self.first_byte(), self.body_len(protocol))?;
        match self {
            Packet::Connect(p) => p.encode_body(buf),
            Packet::ConnAck(p) => p.encode_body(protocol, buf),
            // Encoded above.
            Packet::Publish(_) => {}
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                p.encode_body(protocol, buf)
            }
            Packet::Subscribe(p) => p.encode_body(protocol, buf),
            Packet::SubAck(p) => p.encode_body(protocol, buf),
            Packet::Unsubscribe(p) => p.encode_body(protocol, buf),
            Packet::UnsubAck(p) => p.encode_body(protocol, buf),
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(p) => p.encode_body(protocol, buf),
            Packet::Auth(p) => p.encode_body(buf),
        }
        Ok(())
    }
}
