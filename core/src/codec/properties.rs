//! MQTT 5 properties (section 2.2.2): one struct per packet kind, each field
//! an `Option` of its typed value, so a packet cannot carry a property its
//! kind does not allow.

use super::io::{Reader, binary_len, put_binary, put_varint, varint_len};
use super::{DecodeError, PacketType, QoS};
use crate::MqttStr;
use crate::topic::TopicName;
use alloc::vec::Vec;
use bytes::{BufMut, Bytes, BytesMut};
use core::num::{NonZeroU16, NonZeroU32};

/// A user property (0x26): a name/value pair of UTF-8 strings. A packet may
/// carry many, and the same name more than once; order is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserProperty {
    /// The name.
    pub name: MqttStr,
    /// The value.
    pub value: MqttStr,
}

/// Every property identifier MQTT 5 defines (table 2-4), used to tell an
/// unknown property from one that is not allowed on a packet.
const KNOWN: [u8; 27] = [
    0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1C,
    0x1F, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A,
];

fn not_allowed(id: u32, packet: PacketType) -> DecodeError {
    match u8::try_from(id) {
        Ok(id) if KNOWN.contains(&id) => DecodeError::PropertyNotAllowed {
            property: id,
            packet,
        },
        _ => DecodeError::UnknownProperty(id),
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, id: u8) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

fn read_bool(r: &mut Reader, id: u8) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

fn read_var_id(r: &mut Reader, id: u8) -> Result<NonZeroU32, DecodeError> {
    NonZeroU32::new(r.varint()?).ok_or(DecodeError::InvalidPropertyValue(id))
}

fn user_len(props: &[UserProperty]) -> usize {
    props
        .iter()
        .map(|p| 1 + binary_len(p.name.as_bytes()) + binary_len(p.value.as_bytes()))
        .sum()
}

macro_rules! prop_ty {
    (Bool) => { Option<bool> };
    (Qos) => { Option<QoS> };
    (U16) => { Option<u16> };
    (NzU16) => { Option<NonZeroU16> };
    (U32) => { Option<u32> };
    (NzU32) => { Option<NonZeroU32> };
    (VarId) => { Option<NonZeroU32> };
    (VarIds) => { Vec<NonZeroU32> };
    (Str) => { Option<MqttStr> };
    (Bin) => { Option<Bytes> };
    (Topic) => { Option<TopicName> };
}

macro_rules! prop_read {
    (Bool, $r:ident, $slot:expr, $id:expr) => {
        set_once(&mut $slot, read_bool(&mut $r, $id)?, $id)?
    };
    (Qos, $r:ident, $slot:expr, $id:expr) => {{
        // Maximum QoS may only be 0 or 1: 2 is the default when absent.
        let qos = match $r.u8()? {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => return Err(DecodeError::InvalidPropertyValue($id)),
        };
        set_once(&mut $slot, qos, $id)?
    }};
    (U16, $r:ident, $slot:expr, $id:expr) => {
        set_once(&mut $slot, $r.u16()?, $id)?
    };
    (NzU16, $r:ident, $slot:expr, $id:expr) => {{
        let v = NonZeroU16::new($r.u16()?).ok_or(DecodeError::InvalidPropertyValue($id))?;
        set_once(&mut $slot, v, $id)?
    }};
    (U32, $r:ident, $slot:expr, $id:expr) => {
        set_once(&mut $slot, $r.u32()?, $id)?
    };
    (NzU32, $r:ident, $slot:expr, $id:expr) => {{
        let v = NonZeroU32::new($r.u32()?).ok_or(DecodeError::InvalidPropertyValue($id))?;
        set_once(&mut $slot, v, $id)?
    }};
    (VarId, $r:ident, $slot:expr, $id:expr) => {
        set_once(&mut $slot, read_var_id(&mut $r, $id)?, $id)?
    };
    (VarIds, $r:ident, $slot:expr, $id:expr) => {
        $slot.push(read_var_id(&mut $r, $id)?)
    };
    (Str, $r:ident, $slot:expr, $id:expr) => {
        set_once(&mut $slot, $r.string()?, $id)?
    };
    (Bin, $r:ident, $slot:expr, $id:expr) => {
        set_once(&mut $slot, $r.binary()?, $id)?
    };
    (Topic, $r:ident, $slot:expr, $id:expr) => {{
        // A response topic is a topic name: no wildcards [MQTT-3.3.2-14].
        let t = TopicName::new($r.string()?).map_err(DecodeError::InvalidTopicName)?;
        set_once(&mut $slot, t, $id)?
    }};
}

macro_rules! prop_len {
    (Bool, $v:expr) => {
        $v.map_or(0, |_| 2)
    };
    (Qos, $v:expr) => {
        $v.map_or(0, |_| 2)
    };
    (U16, $v:expr) => {
        $v.map_or(0, |_| 3)
    };
    (NzU16, $v:expr) => {
        $v.map_or(0, |_| 3)
    };
    (U32, $v:expr) => {
        $v.map_or(0, |_| 5)
    };
    (NzU32, $v:expr) => {
        $v.map_or(0, |_| 5)
    };
    (VarId, $v:expr) => {
        $v.map_or(0, |v| 1 + varint_len(v.get() as usize))
    };
    (VarIds, $v:expr) => {
        $v.iter()
            .map(|v| 1 + varint_len(v.get() as usize))
            .sum::<usize>()
    };
    (Str, $v:expr) => {
        $v.as_ref().map_or(0, |s| 1 + binary_len(s.as_bytes()))
    };
    (Bin, $v:expr) => {
        $v.as_ref().map_or(0, |b| 1 + binary_len(b))
    };
    (Topic, $v:expr) => {
        $v.as_ref().map_or(0, |t| 1 + binary_len(t.as_bytes()))
    };
}

macro_rules! prop_write {
    (Bool, $b:ident, $v:expr, $id:expr) => {
        if let Some(v) = $v {
            $b.put_u8($id);
            $b.put_u8(u8::from(v));
        }
    };
    (Qos, $b:ident, $v:expr, $id:expr) => {
        if let Some(v) = $v {
            $b.put_u8($id);
            $b.put_u8(v as u8);
        }
    };
    (U16, $b:ident, $v:expr, $id:expr) => {
        if let Some(v) = $v {
            $b.put_u8($id);
            $b.put_u16(v);
        }
    };
    (NzU16, $b:ident, $v:expr, $id:expr) => {
        if let Some(v) = $v {
            $b.put_u8($id);
            $b.put_u16(v.get());
        }
    };
    (U32, $b:ident, $v:expr, $id:expr) => {
        if let Some(v) = $v {
            $b.put_u8($id);
            $b.put_u32(v);
        }
    };
    (NzU32, $b:ident, $v:expr, $id:expr) => {
        if let Some(v) = $v {
            $b.put_u8($id);
            $b.put_u32(v.get());
        }
    };
    (VarId, $b:ident, $v:expr, $id:expr) => {
        if let Some(v) = $v {
            $b.put_u8($id);
            put_varint($b, v.get() as usize);
        }
    };
    (VarIds, $b:ident, $v:expr, $id:expr) => {
        for v in &$v {
            $b.put_u8($id);
            put_varint($b, v.get() as usize);
        }
    };
    (Str, $b:ident, $v:expr, $id:expr) => {
        if let Some(v) = &$v {
            $b.put_u8($id);
            put_binary($b, v.as_bytes());
        }
    };
    (Bin, $b:ident, $v:expr, $id:expr) => {
        if let Some(v) = &$v {
            $b.put_u8($id);
            put_binary($b, v);
        }
    };
    (Topic, $b:ident, $v:expr, $id:expr) => {
        if let Some(v) = &$v {
            $b.put_u8($id);
            put_binary($b, v.as_bytes());
        }
    };
}

macro_rules! properties {
    (
        $(#[$meta:meta])*
        $name:ident for $packet:path {
            $( $(#[$fmeta:meta])* $field:ident : $kind:ident = $id:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: prop_ty!($kind), )*
            /// User Property (0x26), in the order received.
            pub user_properties: Vec<UserProperty>,
        }

        impl $name {
            /// Reads a property block: its length, then its properties.
            #[allow(dead_code)]
            pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
                Self::decode_for(r, $packet)
            }

            /// As `decode`, naming `packet` in errors (for blocks several
            /// packet types share).
            pub(crate) fn decode_for(r: &mut Reader, packet: PacketType) -> Result<Self, DecodeError> {
                let len = r.varint()? as usize;
                let mut r = r.sub(len)?;
                let mut props = Self::default();
                while r.has_remaining() {
                    match r.varint()? {
                        $( $id => prop_read!($kind, r, props.$field, $id), )*
                        0x26 => {
                            let name = r.string()?;
                            let value = r.string()?;
                            props.user_properties.push(UserProperty { name, value });
                        }
                        other => return Err(not_allowed(other, packet)),
                    }
                }
                Ok(props)
            }

            fn content_len(&self) -> usize {
                0 $( + prop_len!($kind, self.$field) )* + user_len(&self.user_properties)
            }

            /// Size of the encoded block, length prefix included.
            pub(crate) fn encoded_len(&self) -> usize {
                let content = self.content_len();
                varint_len(content) + content
            }

            /// Writes the block, length prefix included.
            pub(crate) fn encode(&self, buf: &mut BytesMut) {
                put_varint(buf, self.content_len());
                $( prop_write!($kind, buf, self.$field, $id); )*
                for p in &self.user_properties {
                    buf.put_u8(0x26);
                    put_binary(buf, p.name.as_bytes());
                    put_binary(buf, p.value.as_bytes());
                }
            }

            /// Whether no property is set.
            pub fn is_empty(&self) -> bool {
                self.content_len() == 0
            }
        }
    };
}

properties! {
    /// Properties of CONNECT (section 3.1.2.11).
    ConnectProperties for PacketType::Connect {
        /// Session Expiry Interval (0x11), seconds; absent means 0.
        session_expiry_interval: U32 = 0x11,
        /// Receive Maximum (0x21); absent means 65,535.
        receive_maximum: NzU16 = 0x21,
        /// Maximum Packet Size (0x27) the client accepts.
        maximum_packet_size: NzU32 = 0x27,
        /// Topic Alias Maximum (0x22) the client accepts; absent means 0.
        topic_alias_maximum: U16 = 0x22,
        /// Request Response Information (0x19).
        request_response_information: Bool = 0x19,
        /// Request Problem Information (0x17); absent means true.
        request_problem_information: Bool = 0x17,
        /// Authentication Method (0x15).
        authentication_method: Str = 0x15,
        /// Authentication Data (0x16).
        authentication_data: Bin = 0x16,
    }
}

properties! {
    /// Will properties, in the CONNECT payload (section 3.1.3.2).
    WillProperties for PacketType::Connect {
        /// Will Delay Interval (0x18), seconds.
        will_delay_interval: U32 = 0x18,
        /// Payload Format Indicator (0x01): true for UTF-8 text.
        payload_format_indicator: Bool = 0x01,
        /// Message Expiry Interval (0x02), seconds.
        message_expiry_interval: U32 = 0x02,
        /// Content Type (0x03).
        content_type: Str = 0x03,
        /// Response Topic (0x08).
        response_topic: Topic = 0x08,
        /// Correlation Data (0x09).
        correlation_data: Bin = 0x09,
    }
}

properties! {
    /// Properties of CONNACK (section 3.2.2.3).
    ConnAckProperties for PacketType::ConnAck {
        /// Session Expiry Interval (0x11) the server uses, if not the client's.
        session_expiry_interval: U32 = 0x11,
        /// Receive Maximum (0x21) of the server.
        receive_maximum: NzU16 = 0x21,
        /// Maximum QoS (0x24) the server supports, 0 or 1; absent means 2.
        maximum_qos: Qos = 0x24,
        /// Retain Available (0x25); absent means true.
        retain_available: Bool = 0x25,
        /// Maximum Packet Size (0x27) the server accepts.
        maximum_packet_size: NzU32 = 0x27,
        /// Assigned Client Identifier (0x12).
        assigned_client_identifier: Str = 0x12,
        /// Topic Alias Maximum (0x22) the server accepts.
        topic_alias_maximum: U16 = 0x22,
        /// Reason String (0x1F).
        reason_string: Str = 0x1F,
        /// Wildcard Subscription Available (0x28); absent means true.
        wildcard_subscription_available: Bool = 0x28,
        /// Subscription Identifiers Available (0x29); absent means true.
        subscription_identifiers_available: Bool = 0x29,
        /// Shared Subscription Available (0x2A); absent means true.
        shared_subscription_available: Bool = 0x2A,
        /// Server Keep Alive (0x13), seconds, overriding the client's.
        server_keep_alive: U16 = 0x13,
        /// Response Information (0x1A).
        response_information: Str = 0x1A,
        /// Server Reference (0x1C), for redirection.
        server_reference: Str = 0x1C,
        /// Authentication Method (0x15).
        authentication_method: Str = 0x15,
        /// Authentication Data (0x16).
        authentication_data: Bin = 0x16,
    }
}

properties! {
    /// Properties of PUBLISH (section 3.3.2.3).
    PublishProperties for PacketType::Publish {
        /// Payload Format Indicator (0x01): true for UTF-8 text.
        payload_format_indicator: Bool = 0x01,
        /// Message Expiry Interval (0x02), seconds.
        message_expiry_interval: U32 = 0x02,
        /// Topic Alias (0x23).
        topic_alias: NzU16 = 0x23,
        /// Response Topic (0x08).
        response_topic: Topic = 0x08,
        /// Correlation Data (0x09).
        correlation_data: Bin = 0x09,
        /// Subscription Identifier (0x0B): every matching subscription's id,
        /// on server-to-client PUBLISHes only.
        subscription_identifiers: VarIds = 0x0B,
        /// Content Type (0x03).
        content_type: Str = 0x03,
    }
}

properties! {
    /// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
    AckProperties for PacketType::PubAck {
        /// Reason String (0x1F).
        reason_string: Str = 0x1F,
    }
}

properties! {
    /// Properties of SUBSCRIBE (section 3.8.2.1).
    SubscribeProperties for PacketType::Subscribe {
        /// Subscription Identifier (0x0B), 1 to 268,435,455.
        subscription_identifier: VarId = 0x0B,
    }
}

properties! {
    /// Properties of UNSUBSCRIBE (section 3.10.2.1): user properties only.
    UnsubscribeProperties for PacketType::Unsubscribe {
    }
}

properties! {
    /// Properties of DISCONNECT (section 3.14.2.2).
    DisconnectProperties for PacketType::Disconnect {
        /// Session Expiry Interval (0x11), seconds.
        session_expiry_interval: U32 = 0x11,
        /// Reason String (0x1F).
        reason_string: Str = 0x1F,
        /// Server Reference (0x1C).
        server_reference: Str = 0x1C,
    }
}

properties! {
    /// Properties of AUTH (section 3.15.2.2).
    AuthProperties for PacketType::Auth {
        /// Authentication Method (0x15).
        authentication_method: Str = 0x15,
        /// Authentication Data (0x16).
        authentication_data: Bin = 0x16,
        /// Reason String (0x1F).
        reason_string: Str = 0x1F,
    }
}
