//! Why bytes could not be decoded as a packet, or a packet not encoded.

use super::{PacketType, ReasonCode};
use crate::StrError;
use crate::topic::TopicError;
use core::fmt;

/// Why a packet could not be decoded.
///
/// Every variant says what was wrong; [`DecodeError::reason_code`] gives the
/// MQTT 5 reason code a server answers it with (section 4.13: a Malformed
/// Packet or a Protocol Error closes the connection, with a DISCONNECT for
/// MQTT 5 clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The remaining length (or another variable byte integer) uses more than
    /// four bytes, or more bytes than its value needs [MQTT-1.5.5-1].
    MalformedVarInt,
    /// The packet is larger than the configured maximum; it was rejected from
    /// its fixed header alone, before its body was buffered.
    PacketTooLarge {
        /// Total size the fixed header announced, in bytes.
        size: usize,
        /// The configured maximum, in bytes.
        max: usize,
    },
    /// Packet type 0 is reserved, and type 15 (AUTH) exists only in MQTT 5.
    InvalidPacketType(u8),
    /// The fixed header's flag bits are not the ones required for this packet
    /// type [MQTT-2.1.3-1].
    InvalidFlags {
        /// The packet type.
        packet: PacketType,
        /// The four flag bits received.
        flags: u8,
    },
    /// QoS 3 in a PUBLISH, a will or a subscription [MQTT-3.3.1-4].
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2].
    DupOnQoS0,
    /// The packet ends before a field it must contain.
    UnexpectedEnd,
    /// Bytes are left after the last field the packet may contain.
    TrailingBytes,
    /// A string is not a valid MQTT UTF-8 string.
    InvalidString(StrError),
    /// CONNECT's protocol name is neither `MQTT` nor `MQIsdp` [MQTT-3.1.2-1].
    InvalidProtocolName,
    /// CONNECT's protocol level is not one this codec speaks; a server answers
    /// with CONNACK 0x01 (0x84 in MQTT 5) [MQTT-3.1.2-2].
    UnsupportedProtocolLevel(u8),
    /// CONNECT's reserved flag is set [MQTT-3.1.2-3].
    ConnectReservedFlag,
    /// Will QoS or will retain set without the will flag [MQTT-3.1.2-11],
    /// [MQTT-3.1.2-13], [MQTT-3.1.2-15].
    WillFlagsWithoutWill,
    /// A password without a user name, which MQTT 3.1 and 3.1.1 forbid
    /// [MQTT-3.1.2-22].
    PasswordWithoutUsername,
    /// CONNACK's acknowledge flags have reserved bits set [MQTT-3.2.2-1].
    ConnAckReservedFlags,
    /// A topic name is not valid (wildcards, or empty without an alias).
    InvalidTopicName(TopicError),
    /// A topic filter is not valid.
    InvalidTopicFilter(TopicError),
    /// Packet identifier 0 where a non-zero one is required [MQTT-2.2.1-3].
    ZeroPacketId,
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter [MQTT-3.8.3-3],
    /// [MQTT-3.10.3-2], or SUBACK / UNSUBACK without any reason code.
    NoTopicFilters,
    /// Reserved bits of subscription options are set [MQTT-3.8.3-5]
    /// (a Malformed Packet).
    InvalidSubscriptionOptions,
    /// A subscription's Maximum QoS is 3 (a Protocol Error in MQTT 5,
    /// section 3.8.3.1; malformed in 3.1.1 [MQTT-3-8.3-4]).
    InvalidSubscriptionQoS,
    /// A subscription's Retain Handling is 3 (a Protocol Error, MQTT 5
    /// section 3.8.3.1).
    InvalidRetainHandling,
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    NoLocalOnSharedSubscription,
    /// A property appears twice where it may appear once.
    DuplicateProperty(u8),
    /// A property identifier MQTT 5 does not define.
    UnknownProperty(u32),
    /// A property that this packet type may not carry.
    PropertyNotAllowed {
        /// The property identifier.
        property: u8,
        /// The packet that carried it.
        packet: PacketType,
    },
    /// A property has a value the specification forbids (for example Receive
    /// Maximum 0, or a boolean other than 0 and 1).
    InvalidPropertyValue(u8),
    /// A reason code this packet type may not carry.
    InvalidReasonCode {
        /// The code received.
        code: u8,
        /// The packet that carried it.
        packet: PacketType,
    },
}

impl DecodeError {
    /// The MQTT 5 reason code a server sends (in CONNACK or DISCONNECT) when a
    /// client's packet fails with this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocolLevel(_) => ReasonCode::UnsupportedProtocolVersion,
            // "It is a Protocol Error if the Topic Name is zero length and
            // there is no Topic Alias" (section 3.3.2.1).
            DecodeError::InvalidTopicName(TopicError::Empty) => ReasonCode::ProtocolError,
            DecodeError::InvalidTopicName(_) => ReasonCode::TopicNameInvalid,
            // An ill-formed filter (empty, a misplaced wildcard, a share
            // name missing) is not "correctly formed", which 0x8F Topic
            // Filter invalid presumes (section 2.4): 0x81, as Mosquitto.
            DecodeError::InvalidTopicFilter(_) => ReasonCode::MalformedPacket,
            DecodeError::InvalidPropertyValue(0x23) => ReasonCode::TopicAliasInvalid,
            DecodeError::DuplicateProperty(_)
            | DecodeError::InvalidPropertyValue(_)
            | DecodeError::InvalidReasonCode { .. }
            | DecodeError::ZeroPacketId
            | DecodeError::NoLocalOnSharedSubscription
            // "A SUBSCRIBE [UNSUBSCRIBE] packet with no Payload is a Protocol
            // Error" [MQTT-3.8.3-2], [MQTT-3.10.3-2].
            | DecodeError::NoTopicFilters
            | DecodeError::InvalidSubscriptionQoS
            | DecodeError::InvalidRetainHandling
            | DecodeError::InvalidProtocolName
            | DecodeError::InvalidPacketType(_) => ReasonCode::ProtocolError,
            _ => ReasonCode::MalformedPacket,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::MalformedVarInt => f.write_str(
                "variable byte integer longer than 4 bytes or not minimal [MQTT-1.5.5-1]",
            ),
            DecodeError::PacketTooLarge { size, max } => {
                write!(f, "packet of {size} bytes exceeds the maximum of {max}")
            }
            DecodeError::InvalidPacketType(t) => write!(f, "invalid packet type {t}"),
            DecodeError::InvalidFlags { packet, flags } => {
                write!(
                    f,
                    "invalid fixed header flags {flags:#06b} for {packet:?} [MQTT-2.1.3-1]"
                )
            }
            DecodeError::InvalidQoS => f.write_str("QoS 3 is not a valid QoS [MQTT-3.3.1-4]"),
            DecodeError::DupOnQoS0 => f.write_str("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]"),
            DecodeError::UnexpectedEnd => f.write_str("packet ends before its last field"),
            DecodeError::TrailingBytes => f.write_str("bytes left after the packet's last field"),
            DecodeError::InvalidString(e) => fmt::Display::fmt(e, f),
            DecodeError::InvalidProtocolName => {
                f.write_str("protocol name is not MQTT or MQIsdp [MQTT-3.1.2-1]")
            }
            DecodeError::UnsupportedProtocolLevel(l) => {
                write!(f, "unsupported protocol level {l} [MQTT-3.1.2-2]")
            }
            DecodeError::ConnectReservedFlag => {
                f.write_str("CONNECT reserved flag is set [MQTT-3.1.2-3]")
            }
            DecodeError::WillFlagsWithoutWill => {
                f.write_str("will QoS or retain set without the will flag [MQTT-3.1.2-11]")
            }
            DecodeError::PasswordWithoutUsername => {
                f.write_str("password flag set without user name flag [MQTT-3.1.2-22]")
            }
            DecodeError::ConnAckReservedFlags => {
                f.write_str("CONNACK reserved flags are set [MQTT-3.2.2-1]")
            }
            DecodeError::InvalidTopicName(e) => write!(f, "invalid topic name: {e}"),
            DecodeError::InvalidTopicFilter(e) => write!(f, "invalid topic filter: {e}"),
            DecodeError::ZeroPacketId => f.write_str("packet identifier is 0 [MQTT-2.2.1-3]"),
            DecodeError::NoTopicFilters => {
                f.write_str("no topic filters or reason codes in the payload [MQTT-3.8.3-3]")
            }
            DecodeError::InvalidSubscriptionOptions => {
                f.write_str("reserved subscription option bits set [MQTT-3.8.3-5]")
            }
            DecodeError::InvalidSubscriptionQoS => {
                f.write_str("subscription Maximum QoS is 3 (section 3.8.3.1)")
            }
            DecodeError::InvalidRetainHandling => {
                f.write_str("subscription Retain Handling is 3 (section 3.8.3.1)")
            }
            DecodeError::NoLocalOnSharedSubscription => {
                f.write_str("No Local set on a shared subscription [MQTT-3.8.3-4]")
            }
            DecodeError::DuplicateProperty(id) => write!(f, "property {id:#04x} appears twice"),
            DecodeError::UnknownProperty(id) => write!(f, "unknown property {id:#04x}"),
            DecodeError::PropertyNotAllowed { property, packet } => {
                write!(f, "property {property:#04x} is not allowed in {packet:?}")
            }
            DecodeError::InvalidPropertyValue(id) => {
                write!(f, "property {id:#04x} has an invalid value")
            }
            DecodeError::InvalidReasonCode { code, packet } => {
                write!(f, "reason code {code:#04x} is not allowed in {packet:?}")
            }
        }
    }
}

impl core::error::Error for DecodeError {}

impl From<StrError> for DecodeError {
    fn from(e: StrError) -> Self {
        DecodeError::InvalidString(e)
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The packet's remaining length would exceed 268,435,455 bytes, the most
    /// a fixed header can express.
    PacketTooLarge,
    /// The packet type does not exist in the protocol version it was encoded
    /// for (AUTH before MQTT 5).
    NotInProtocol(PacketType),
    /// A binary field (password, will payload, correlation or authentication
    /// data) is longer than the 65,535 bytes its length prefix can express.
    FieldTooLong,
    /// A Subscription Identifier is above 268,435,455, the most a variable
    /// byte integer can express.
    SubscriptionIdentifierTooLarge,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::PacketTooLarge => {
                f.write_str("packet exceeds the maximum remaining length of 268435455 bytes")
            }
            EncodeError::NotInProtocol(p) => write!(f, "{p:?} does not exist before MQTT 5"),
            EncodeError::FieldTooLong => f.write_str("binary field longer than 65535 bytes"),
            EncodeError::SubscriptionIdentifierTooLarge => {
                f.write_str("subscription identifier above 268435455")
            }
        }
    }
}

impl core::error::Error for EncodeError {}
