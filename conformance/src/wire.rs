//! A small MQTT 3.1.1 / 5.0 encoder and decoder written for this suite alone.
//!
//! It deliberately shares nothing with `roost-core`: if the broker's codec and
//! the suite's codec were the same code, a misreading of the specification
//! would be made twice and cancel out. It is also deliberately lax on the
//! encoding side: [`Body`] and [`frame`] build any byte sequence, including
//! malformed ones, so that scenarios can say exactly what goes on the wire.
//!
//! The decoder is strict, because it judges the broker: anything the broker
//! sends that does not parse is reported as a [`DecodeError`].

use std::fmt;

/// The protocol version a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Version {
    /// The protocol level byte carried in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }

    /// The name users type on the command line (`3.1.1` or `5`).
    pub fn label(self) -> &'static str {
        match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Control packet type numbers (the high nibble of the first byte).
pub mod kind {
    /// CONNECT
    pub const CONNECT: u8 = 1;
    /// CONNACK
    pub const CONNACK: u8 = 2;
    /// PUBLISH
    pub const PUBLISH: u8 = 3;
    /// PUBACK
    pub const PUBACK: u8 = 4;
    /// PUBREC
    pub const PUBREC: u8 = 5;
    /// PUBREL
    pub const PUBREL: u8 = 6;
    /// PUBCOMP
    pub const PUBCOMP: u8 = 7;
    /// SUBSCRIBE
    pub const SUBSCRIBE: u8 = 8;
    /// SUBACK
    pub const SUBACK: u8 = 9;
    /// UNSUBSCRIBE
    pub const UNSUBSCRIBE: u8 = 10;
    /// UNSUBACK
    pub const UNSUBACK: u8 = 11;
    /// PINGREQ
    pub const PINGREQ: u8 = 12;
    /// PINGRESP
    pub const PINGRESP: u8 = 13;
    /// DISCONNECT
    pub const DISCONNECT: u8 = 14;
    /// AUTH (MQTT 5 only)
    pub const AUTH: u8 = 15;
}

/// MQTT 5 property identifiers used by the suite.
pub mod prop {
    /// Payload Format Indicator (byte)
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    /// Message Expiry Interval (four-byte integer)
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    /// Content Type (string)
    pub const CONTENT_TYPE: u8 = 0x03;
    /// Response Topic (string)
    pub const RESPONSE_TOPIC: u8 = 0x08;
    /// Correlation Data (binary)
    pub const CORRELATION_DATA: u8 = 0x09;
    /// Subscription Identifier (variable byte integer)
    pub const SUBSCRIPTION_ID: u8 = 0x0B;
    /// Session Expiry Interval (four-byte integer)
    pub const SESSION_EXPIRY: u8 = 0x11;
    /// Assigned Client Identifier (string)
    pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
    /// Server Keep Alive (two-byte integer)
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    /// Authentication Method (string)
    pub const AUTH_METHOD: u8 = 0x15;
    /// Authentication Data (binary)
    pub const AUTH_DATA: u8 = 0x16;
    /// Request Problem Information (byte)
    pub const REQUEST_PROBLEM_INFO: u8 = 0x17;
    /// Will Delay Interval (four-byte integer)
    pub const WILL_DELAY: u8 = 0x18;
    /// Request Response Information (byte)
    pub const REQUEST_RESPONSE_INFO: u8 = 0x19;
    /// Response Information (string)
    pub const RESPONSE_INFO: u8 = 0x1A;
    /// Server Reference (string)
    pub const SERVER_REFERENCE: u8 = 0x1C;
    /// Reason String (string)
    pub const REASON_STRING: u8 = 0x1F;
    /// Receive Maximum (two-byte integer)
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    /// Topic Alias Maximum (two-byte integer)
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    /// Topic Alias (two-byte integer)
    pub const TOPIC_ALIAS: u8 = 0x23;
    /// Maximum QoS (byte)
    pub const MAXIMUM_QOS: u8 = 0x24;
    /// Retain Available (byte)
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    /// User Property (string pair)
    pub const USER_PROPERTY: u8 = 0x26;
    /// Maximum Packet Size (four-byte integer)
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    /// Wildcard Subscription Available (byte)
    pub const WILDCARD_SUB_AVAILABLE: u8 = 0x28;
    /// Subscription Identifier Available (byte)
    pub const SUB_ID_AVAILABLE: u8 = 0x29;
    /// Shared Subscription Available (byte)
    pub const SHARED_SUB_AVAILABLE: u8 = 0x2A;
}

/// Why bytes from the broker could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The packet ended before a field it announced.
    Truncated,
    /// A variable byte integer used more than four bytes.
    VarIntTooLong,
    /// A string was not well-formed UTF-8.
    BadUtf8,
    /// A property identifier this suite does not know (or one not allowed here).
    UnknownProperty(u8),
    /// The first byte named packet type 0, or reserved flags were wrong.
    BadHeader(u8),
    /// Bytes were left over after the last field.
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("packet shorter than its fields"),
            DecodeError::VarIntTooLong => f.write_str("variable byte integer over 4 bytes"),
            DecodeError::BadUtf8 => f.write_str("string is not valid UTF-8"),
            DecodeError::UnknownProperty(id) => write!(f, "unknown property 0x{id:02x}"),
            DecodeError::BadHeader(b) => write!(f, "bad fixed header byte 0x{b:02x}"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} trailing bytes in packet"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Appends `value` as an MQTT variable byte integer.
///
/// Values above 268,435,455 are encoded with as many bytes as they need, which
/// is more than MQTT allows: the suite needs that to build malformed packets.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            break;
        }
    }
}

/// A builder for packet bodies: any field, in any order, valid or not.
#[derive(Clone, Debug, Default)]
pub struct Body(pub Vec<u8>);

impl Body {
    /// An empty body.
    pub fn new() -> Self {
        Body(Vec::new())
    }
    /// Appends one byte.
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    /// Appends a big-endian two-byte integer.
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Appends a big-endian four-byte integer.
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Appends a variable byte integer.
    pub fn varint(mut self, v: u32) -> Self {
        put_varint(&mut self.0, u64::from(v));
        self
    }
    /// Appends a length-prefixed string.
    pub fn str(self, s: &str) -> Self {
        self.bin(s.as_bytes())
    }
    /// Appends length-prefixed bytes; also how invalid "strings" are built.
    pub fn bin(mut self, b: &[u8]) -> Self {
        let len = u16::try_from(b.len()).expect("field over 65535 bytes");
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
    /// Appends bytes with no length prefix.
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// Appends a property block (MQTT 5) with its length prefix.
    pub fn props(mut self, p: &Properties) -> Self {
        p.encode(&mut self.0);
        self
    }
    /// Appends a property block only when speaking MQTT 5.
    pub fn props_if(self, version: Version, p: &Properties) -> Self {
        match version {
            Version::V5 => self.props(p),
            Version::V311 => self,
        }
    }
}

/// Frames `body` with `first_byte` and a correct remaining length.
pub fn frame(first_byte: u8, body: &Body) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.0.len() + 5);
    out.push(first_byte);
    put_varint(&mut out, body.0.len() as u64);
    out.extend_from_slice(&body.0);
    out
}

/// One MQTT 5 property value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PropValue {
    /// A single byte.
    Byte(u8),
    /// A two-byte integer.
    U16(u16),
    /// A four-byte integer.
    U32(u32),
    /// A variable byte integer.
    VarInt(u32),
    /// A UTF-8 string.
    Str(String),
    /// Binary data.
    Bin(Vec<u8>),
    /// A UTF-8 string pair (user property).
    Pair(String, String),
}

#[derive(Clone, Copy)]
enum PropKind {
    Byte,
    U16,
    U32,
    VarInt,
    Str,
    Bin,
    Pair,
}

fn prop_kind(id: u8) -> Option<PropKind> {
    use prop::*;
    Some(match id {
        PAYLOAD_FORMAT
        | REQUEST_PROBLEM_INFO
        | REQUEST_RESPONSE_INFO
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUB_AVAILABLE
        | SUB_ID_AVAILABLE
        | SHARED_SUB_AVAILABLE => PropKind::Byte,
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => PropKind::U16,
        MESSAGE_EXPIRY | SESSION_EXPIRY | WILL_DELAY | MAXIMUM_PACKET_SIZE => PropKind::U32,
        SUBSCRIPTION_ID => PropKind::VarInt,
        CONTENT_TYPE | RESPONSE_TOPIC | ASSIGNED_CLIENT_ID | AUTH_METHOD | RESPONSE_INFO
        | SERVER_REFERENCE | REASON_STRING => PropKind::Str,
        CORRELATION_DATA | AUTH_DATA => PropKind::Bin,
        USER_PROPERTY => PropKind::Pair,
        _ => return None,
    })
}

/// An ordered MQTT 5 property list (order matters for user properties).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<(u8, PropValue)>);

impl Properties {
    /// No properties.
    pub fn new() -> Self {
        Properties(Vec::new())
    }
    /// Adds a property.
    pub fn with(mut self, id: u8, value: PropValue) -> Self {
        self.0.push((id, value));
        self
    }
    /// Adds an integer property, choosing the width from the identifier.
    ///
    /// # Panics
    /// If `id` is not an integer property (a bug in a scenario).
    pub fn int(self, id: u8, v: u32) -> Self {
        let value = match prop_kind(id) {
            Some(PropKind::Byte) => PropValue::Byte(v as u8),
            Some(PropKind::U16) => PropValue::U16(v as u16),
            Some(PropKind::U32) => PropValue::U32(v),
            Some(PropKind::VarInt) => PropValue::VarInt(v),
            _ => panic!("property 0x{id:02x} is not an integer"),
        };
        self.with(id, value)
    }
    /// Adds a string property.
    pub fn string(self, id: u8, v: &str) -> Self {
        self.with(id, PropValue::Str(v.to_owned()))
    }
    /// Adds a binary property.
    pub fn binary(self, id: u8, v: &[u8]) -> Self {
        self.with(id, PropValue::Bin(v.to_vec()))
    }
    /// Adds a user property.
    pub fn user(self, k: &str, v: &str) -> Self {
        self.with(
            prop::USER_PROPERTY,
            PropValue::Pair(k.to_owned(), v.to_owned()),
        )
    }
    /// True when there are no properties.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The first value with identifier `id`.
    pub fn get(&self, id: u8) -> Option<&PropValue> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }
    /// The first integer value with identifier `id`.
    pub fn int_of(&self, id: u8) -> Option<u32> {
        self.all_ints(id).into_iter().next()
    }
    /// Every integer value with identifier `id` (subscription identifiers repeat).
    pub fn all_ints(&self, id: u8) -> Vec<u32> {
        self.0
            .iter()
            .filter(|(i, _)| *i == id)
            .filter_map(|(_, v)| match v {
                PropValue::Byte(b) => Some(u32::from(*b)),
                PropValue::U16(b) => Some(u32::from(*b)),
                PropValue::U32(b) | PropValue::VarInt(b) => Some(*b),
                _ => None,
            })
            .collect()
    }
    /// The first string value with identifier `id`.
    pub fn str_of(&self, id: u8) -> Option<&str> {
        match self.get(id) {
            Some(PropValue::Str(s)) => Some(s),
            _ => None,
        }
    }
    /// The first binary value with identifier `id`.
    pub fn bin_of(&self, id: u8) -> Option<&[u8]> {
        match self.get(id) {
            Some(PropValue::Bin(b)) => Some(b),
            _ => None,
        }
    }
    /// The user properties, in order.
    pub fn user_properties(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|(_, v)| match v {
                PropValue::Pair(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    /// Appends the property length and the properties.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut body = Body::new();
        for (id, value) in &self.0 {
            body = body.u8(*id);
            body = match value {
                PropValue::Byte(v) => body.u8(*v),
                PropValue::U16(v) => body.u16(*v),
                PropValue::U32(v) => body.u32(*v),
                PropValue::VarInt(v) => body.varint(*v),
                PropValue::Str(s) => body.str(s),
                PropValue::Bin(b) => body.bin(b),
                PropValue::Pair(k, v) => body.str(k).str(v),
            };
        }
        put_varint(out, body.0.len() as u64);
        out.extend_from_slice(&body.0);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let len = r.varint()? as usize;
        let mut inner = Reader::new(r.take(len)?);
        let mut props = Vec::new();
        while !inner.is_empty() {
            let id = inner.u8()?;
            let value = match prop_kind(id).ok_or(DecodeError::UnknownProperty(id))? {
                PropKind::Byte => PropValue::Byte(inner.u8()?),
                PropKind::U16 => PropValue::U16(inner.u16()?),
                PropKind::U32 => PropValue::U32(inner.u32()?),
                PropKind::VarInt => PropValue::VarInt(inner.varint()?),
                PropKind::Str => PropValue::Str(inner.string()?),
                PropKind::Bin => PropValue::Bin(inner.bin()?.to_vec()),
                PropKind::Pair => PropValue::Pair(inner.string()?, inner.string()?),
            };
            props.push((id, value));
        }
        Ok(Properties(props))
    }
}

/// A cursor over received bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarIntTooLong)
    }
    fn bin(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()? as usize;
        self.take(len)
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.bin()?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::BadUtf8)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

/// Where the next packet in `buf` ends: `Ok(None)` means more bytes are needed.
///
/// Returns the header length and the total length of the packet.
pub fn frame_len(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let header = 2 + i;
            let total = header + remaining;
            return Ok((buf.len() >= total).then_some((header, total)));
        }
    }
    Err(DecodeError::VarIntTooLong)
}

/// The QoS and flags of a PUBLISH, plus its fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS 0, 1 or 2 (3 only when building a malformed packet).
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (may be empty when a topic alias is used).
    pub topic: String,
    /// Packet identifier; present when QoS > 0.
    pub pid: Option<u16>,
    /// MQTT 5 properties.
    pub props: Properties,
    /// Application payload.
    pub payload: Vec<u8>,
}

impl Publish {
    /// A PUBLISH to `topic` at `qos` (the packet id is filled in when sent).
    pub fn new(topic: &str, qos: u8, payload: &[u8]) -> Self {
        Publish {
            topic: topic.to_owned(),
            qos,
            payload: payload.to_vec(),
            ..Publish::default()
        }
    }
    /// The same message with RETAIN set.
    pub fn retained(mut self) -> Self {
        self.retain = true;
        self
    }
    /// The same message with these properties.
    pub fn with_props(mut self, props: Properties) -> Self {
        self.props = props;
        self
    }
    /// Encodes the packet.
    pub fn encode(&self, version: Version) -> Vec<u8> {
        let first = (kind::PUBLISH << 4)
            | (u8::from(self.dup) << 3)
            | (self.qos << 1)
            | u8::from(self.retain);
        let mut body = Body::new().str(&self.topic);
        if let Some(pid) = self.pid {
            body = body.u16(pid);
        }
        body = body.props_if(version, &self.props).raw(&self.payload);
        frame(first, &body)
    }
}

/// A CONNECT packet description.
#[derive(Clone, Debug)]
pub struct Connect {
    /// Protocol version.
    pub version: Version,
    /// Protocol name; "MQTT" unless a scenario wants a wrong one.
    pub protocol_name: String,
    /// Client identifier (may be empty).
    pub client_id: String,
    /// Clean Session (3.1.1) / Clean Start (5).
    pub clean: bool,
    /// Keep alive in seconds.
    pub keep_alive: u16,
    /// CONNECT properties (MQTT 5).
    pub props: Properties,
    /// Will message: topic, payload, QoS, retain and will properties.
    pub will: Option<Will>,
}

/// A will message.
#[derive(Clone, Debug, Default)]
pub struct Will {
    /// Will topic.
    pub topic: String,
    /// Will payload.
    pub payload: Vec<u8>,
    /// Will QoS.
    pub qos: u8,
    /// Will retain flag.
    pub retain: bool,
    /// Will properties (MQTT 5).
    pub props: Properties,
}

impl Connect {
    /// A clean-session CONNECT with keep alive 60 and no will.
    pub fn new(version: Version, client_id: &str) -> Self {
        Connect {
            version,
            protocol_name: "MQTT".into(),
            client_id: client_id.to_owned(),
            clean: true,
            keep_alive: 60,
            props: Properties::new(),
            will: None,
        }
    }
    /// Encodes the packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut flags = u8::from(self.clean) << 1;
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3) | (u8::from(w.retain) << 5);
        }
        let mut body = Body::new()
            .str(&self.protocol_name)
            .u8(self.version.level())
            .u8(flags)
            .u16(self.keep_alive)
            .props_if(self.version, &self.props)
            .str(&self.client_id);
        if let Some(w) = &self.will {
            body = body
                .props_if(self.version, &w.props)
                .str(&w.topic)
                .bin(&w.payload);
        }
        frame(kind::CONNECT << 4, &body)
    }
}

/// A subscription request: filter plus the options byte.
#[derive(Clone, Debug)]
pub struct Sub {
    /// Topic filter.
    pub filter: String,
    /// Maximum QoS.
    pub qos: u8,
    /// No Local (MQTT 5).
    pub no_local: bool,
    /// Retain As Published (MQTT 5).
    pub retain_as_published: bool,
    /// Retain Handling 0, 1 or 2 (MQTT 5).
    pub retain_handling: u8,
}

impl Sub {
    /// A subscription with default options.
    pub fn new(filter: &str, qos: u8) -> Self {
        Sub {
            filter: filter.to_owned(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
    fn options(&self) -> u8 {
        self.qos
            | (u8::from(self.no_local) << 2)
            | (u8::from(self.retain_as_published) << 3)
            | (self.retain_handling << 4)
    }
}

/// Encodes a SUBSCRIBE.
pub fn subscribe(version: Version, pid: u16, subs: &[Sub], props: &Properties) -> Vec<u8> {
    let mut body = Body::new().u16(pid).props_if(version, props);
    for s in subs {
        body = body.str(&s.filter).u8(s.options());
    }
    frame((kind::SUBSCRIBE << 4) | 0x02, &body)
}

/// Encodes an UNSUBSCRIBE.
pub fn unsubscribe(version: Version, pid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = Body::new().u16(pid).props_if(version, &Properties::new());
    for f in filters {
        body = body.str(f);
    }
    frame((kind::UNSUBSCRIBE << 4) | 0x02, &body)
}

/// Encodes PUBACK, PUBREC, PUBREL or PUBCOMP (`packet_kind` from [`kind`]).
pub fn ack(version: Version, packet_kind: u8, pid: u16, code: u8) -> Vec<u8> {
    let flags = if packet_kind == kind::PUBREL { 0x02 } else { 0 };
    let mut body = Body::new().u16(pid);
    // MQTT 5 lets a success ack end after the packet id; anything else
    // carries the reason code.
    if version == Version::V5 && code != 0 {
        body = body.u8(code);
    }
    frame((packet_kind << 4) | flags, &body)
}

/// Encodes a DISCONNECT (the reason code and properties only in MQTT 5).
pub fn disconnect(version: Version, code: u8, props: &Properties) -> Vec<u8> {
    let body = match version {
        Version::V311 => Body::new(),
        Version::V5 => Body::new().u8(code).props(props),
    };
    frame(kind::DISCONNECT << 4, &body)
}

/// Encodes a PINGREQ.
pub fn pingreq() -> Vec<u8> {
    vec![kind::PINGREQ << 4, 0]
}

/// CONNACK fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connack {
    /// Session Present flag.
    pub session_present: bool,
    /// Return code (3.1.1) or reason code (5).
    pub code: u8,
    /// CONNACK properties (MQTT 5).
    pub props: Properties,
}

/// Fields of PUBACK, PUBREC, PUBREL, PUBCOMP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Which of the four ([`kind`] value).
    pub kind: u8,
    /// Packet identifier.
    pub pid: u16,
    /// Reason code (0 when absent).
    pub code: u8,
    /// Properties (MQTT 5).
    pub props: Properties,
}

/// SUBACK and UNSUBACK fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier.
    pub pid: u16,
    /// One return/reason code per filter (UNSUBACK in 3.1.1 has none).
    pub codes: Vec<u8>,
    /// Properties (MQTT 5).
    pub props: Properties,
}

/// A packet received from the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNACK
    Connack(Connack),
    /// PUBLISH
    Publish(Publish),
    /// PUBACK, PUBREC, PUBREL or PUBCOMP
    Ack(Ack),
    /// SUBACK
    Suback(SubAck),
    /// UNSUBACK
    Unsuback(SubAck),
    /// PINGRESP
    Pingresp,
    /// DISCONNECT with its reason code (0 when absent) and properties.
    Disconnect {
        /// Reason code.
        code: u8,
        /// Properties.
        props: Properties,
    },
    /// AUTH
    Auth {
        /// Reason code.
        code: u8,
        /// Properties.
        props: Properties,
    },
    /// A packet a server never sends (CONNECT, SUBSCRIBE, ...): kept raw so
    /// the scenario can report it.
    Unexpected {
        /// First byte.
        first: u8,
        /// Body bytes.
        body: Vec<u8>,
    },
}

fn ack_name(k: u8) -> &'static str {
    match k {
        kind::PUBACK => "PUBACK",
        kind::PUBREC => "PUBREC",
        kind::PUBREL => "PUBREL",
        _ => "PUBCOMP",
    }
}

impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Packet::Connack(c) => write!(
                f,
                "CONNACK(code 0x{:02x}, session present {})",
                c.code, c.session_present as u8
            ),
            Packet::Publish(p) => write!(
                f,
                "PUBLISH(topic {:?}, qos {}, retain {}, dup {}, {} payload bytes)",
                p.topic,
                p.qos,
                p.retain as u8,
                p.dup as u8,
                p.payload.len()
            ),
            Packet::Ack(a) => write!(
                f,
                "{}(id {}, code 0x{:02x})",
                ack_name(a.kind),
                a.pid,
                a.code
            ),
            Packet::Suback(s) => write!(f, "SUBACK(id {}, codes {:02x?})", s.pid, s.codes),
            Packet::Unsuback(s) => write!(f, "UNSUBACK(id {}, codes {:02x?})", s.pid, s.codes),
            Packet::Pingresp => f.write_str("PINGRESP"),
            Packet::Disconnect { code, .. } => write!(f, "DISCONNECT(reason 0x{code:02x})"),
            Packet::Auth { code, .. } => write!(f, "AUTH(reason 0x{code:02x})"),
            Packet::Unexpected { first, body } => {
                write!(
                    f,
                    "unexpected packet (first byte 0x{first:02x}, {} bytes)",
                    body.len()
                )
            }
        }
    }
}

impl Packet {
    /// Decodes one whole packet (`first` byte and the `body` after the
    /// remaining length) as sent by a broker speaking `version`.
    pub fn decode(first: u8, body: &[u8], version: Version) -> Result<Packet, DecodeError> {
        let v5 = version == Version::V5;
        let mut r = Reader::new(body);
        let flags = first & 0x0f;
        let ptype = first >> 4;
        let expect_flags = |want: u8| {
            if flags == want {
                Ok(())
            } else {
                Err(DecodeError::BadHeader(first))
            }
        };
        let packet = match ptype {
            kind::CONNACK => {
                expect_flags(0)?;
                let ack_flags = r.u8()?;
                if ack_flags & 0xfe != 0 {
                    return Err(DecodeError::BadHeader(ack_flags));
                }
                let code = r.u8()?;
                let props = if v5 {
                    Properties::decode(&mut r)?
                } else {
                    Properties::new()
                };
                Packet::Connack(Connack {
                    session_present: ack_flags & 1 == 1,
                    code,
                    props,
                })
            }
            kind::PUBLISH => {
                let qos = (flags >> 1) & 3;
                if qos == 3 {
                    return Err(DecodeError::BadHeader(first));
                }
                let topic = r.string()?;
                let pid = if qos > 0 { Some(r.u16()?) } else { None };
                let props = if v5 {
                    Properties::decode(&mut r)?
                } else {
                    Properties::new()
                };
                Packet::Publish(Publish {
                    dup: flags & 0x08 != 0,
                    qos,
                    retain: flags & 1 == 1,
                    topic,
                    pid,
                    props,
                    payload: r.rest().to_vec(),
                })
            }
            kind::PUBACK | kind::PUBREC | kind::PUBREL | kind::PUBCOMP => {
                expect_flags(if ptype == kind::PUBREL { 2 } else { 0 })?;
                let pid = r.u16()?;
                let (code, props) = if v5 && !r.is_empty() {
                    let code = r.u8()?;
                    let props = if r.is_empty() {
                        Properties::new()
                    } else {
                        Properties::decode(&mut r)?
                    };
                    (code, props)
                } else {
                    (0, Properties::new())
                };
                Packet::Ack(Ack {
                    kind: ptype,
                    pid,
                    code,
                    props,
                })
            }
            kind::SUBACK | kind::UNSUBACK => {
                expect_flags(0)?;
                let pid = r.u16()?;
                let props = if v5 {
                    Properties::decode(&mut r)?
                } else {
                    Properties::new()
                };
                let s = SubAck {
                    pid,
                    codes: r.rest().to_vec(),
                    props,
                };
                if ptype == kind::SUBACK {
                    Packet::Suback(s)
                } else {
                    Packet::Unsuback(s)
                }
            }
            kind::PINGRESP => {
                expect_flags(0)?;
                Packet::Pingresp
            }
            kind::DISCONNECT | kind::AUTH if v5 => {
                expect_flags(0)?;
                let code = if r.is_empty() { 0 } else { r.u8()? };
                let props = if r.is_empty() {
                    Properties::new()
                } else {
                    Properties::decode(&mut r)?
                };
                if ptype == kind::DISCONNECT {
                    Packet::Disconnect { code, props }
                } else {
                    Packet::Auth { code, props }
                }
            }
            0 => return Err(DecodeError::BadHeader(first)),
            _ => Packet::Unexpected {
                first,
                body: r.rest().to_vec(),
            },
        };
        r.finish()?;
        Ok(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(bytes: &[u8], version: Version) -> Packet {
        let (header, total) = frame_len(bytes).unwrap().unwrap();
        assert_eq!(total, bytes.len());
        Packet::decode(bytes[0], &bytes[header..], version).unwrap()
    }

    #[test]
    fn varint_boundaries_match_the_spec_table() {
        // MQTT 5 table 1-1 / 3.1.1 table 2.4.
        let cases: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xff, 0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xff, 0xff, 0xff, 0x7f]),
        ];
        for (value, bytes) in cases {
            let mut out = Vec::new();
            put_varint(&mut out, *value);
            assert_eq!(&out, bytes, "{value}");
            assert_eq!(Reader::new(bytes).varint().unwrap() as u64, *value);
        }
    }

    #[test]
    fn five_byte_varint_is_rejected() {
        let bytes = [0x30, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(frame_len(&bytes), Err(DecodeError::VarIntTooLong));
        let mut out = Vec::new();
        put_varint(&mut out, 268_435_456);
        assert_eq!(out, [0x80, 0x80, 0x80, 0x80, 0x01]);
    }

    #[test]
    fn frame_len_waits_for_more_bytes() {
        assert_eq!(frame_len(&[0x20]), Ok(None));
        assert_eq!(frame_len(&[0x20, 0x02, 0x00]), Ok(None));
        assert_eq!(frame_len(&[0x20, 0x02, 0x00, 0x00]), Ok(Some((2, 4))));
        assert_eq!(frame_len(&[0x30, 0x80]), Ok(None));
    }

    #[test]
    fn connect_311_golden_bytes() {
        let mut c = Connect::new(Version::V311, "ab");
        c.keep_alive = 10;
        let expected = [
            0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 2, b'a', b'b',
        ];
        assert_eq!(c.encode(), expected);
    }

    #[test]
    fn connect_5_with_will_golden_bytes() {
        let mut c = Connect::new(Version::V5, "c");
        c.clean = false;
        c.keep_alive = 5;
        c.props = Properties::new().int(prop::SESSION_EXPIRY, 10);
        c.will = Some(Will {
            topic: "w".into(),
            payload: b"x".to_vec(),
            qos: 1,
            retain: true,
            props: Properties::new().int(prop::WILL_DELAY, 3),
        });
        let expected = [
            0x10, 31, // fixed header
            0, 4, b'M', b'Q', b'T', b'T', 5,    // name, level
            0x2c, // will retain, will qos 1, will flag; clean start 0
            0, 5, // keep alive
            5, 0x11, 0, 0, 0, 10, // session expiry
            0, 1, b'c', // client id
            5, 0x18, 0, 0, 0, 3, // will delay
            0, 1, b'w', 0, 1, b'x',
        ];
        assert_eq!(c.encode(), expected);
    }

    #[test]
    fn publish_roundtrips_in_both_versions() {
        let mut p = Publish::new("a/b", 2, b"hello").retained().with_props(
            Properties::new()
                .user("a", "2")
                .user("c", "3")
                .int(prop::SUBSCRIPTION_ID, 456_789)
                .binary(prop::CORRELATION_DATA, b"334"),
        );
        p.pid = Some(7);
        p.dup = true;
        assert_eq!(
            roundtrip(&p.encode(Version::V5), Version::V5),
            Packet::Publish(p.clone())
        );
        p.props = Properties::new();
        assert_eq!(
            roundtrip(&p.encode(Version::V311), Version::V311),
            Packet::Publish(p)
        );
    }

    #[test]
    fn subscribe_options_byte() {
        let mut s = Sub::new("t", 2);
        s.no_local = true;
        s.retain_as_published = true;
        s.retain_handling = 2;
        let bytes = subscribe(Version::V5, 1, &[s], &Properties::new());
        assert_eq!(bytes, [0x82, 7, 0, 1, 0, 0, 1, b't', 0x2e]);
        let bytes = subscribe(Version::V311, 9, &[Sub::new("t", 1)], &Properties::new());
        assert_eq!(bytes, [0x82, 6, 0, 9, 0, 1, b't', 1]);
    }

    #[test]
    fn decodes_broker_packets() {
        assert_eq!(
            roundtrip(&[0x20, 0x02, 0x01, 0x00], Version::V311),
            Packet::Connack(Connack {
                session_present: true,
                code: 0,
                props: Properties::new()
            })
        );
        let connack5 = [0x20, 0x08, 0x00, 0x00, 0x05, 0x13, 0x00, 0x3c, 0x21, 0x00];
        // Truncated property: the decoder must say so, not guess.
        assert!(Packet::decode(0x20, &connack5[2..], Version::V5).is_err());
        let connack5 = [
            0x20, 0x09, 0x00, 0x00, 0x06, 0x13, 0x00, 0x3c, 0x21, 0x00, 0x14,
        ];
        match roundtrip(&connack5, Version::V5) {
            Packet::Connack(c) => {
                assert_eq!(c.props.int_of(prop::SERVER_KEEP_ALIVE), Some(60));
                assert_eq!(c.props.int_of(prop::RECEIVE_MAXIMUM), Some(20));
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            roundtrip(&[0x90, 0x04, 0x00, 0x05, 0x02, 0x80], Version::V311),
            Packet::Suback(SubAck {
                pid: 5,
                codes: vec![2, 0x80],
                props: Properties::new()
            })
        );
        assert_eq!(
            roundtrip(&[0xe0, 0x02, 0x95, 0x00], Version::V5),
            Packet::Disconnect {
                code: 0x95,
                props: Properties::new()
            }
        );
        assert_eq!(
            roundtrip(&[0xe0, 0x00], Version::V5),
            Packet::Disconnect {
                code: 0,
                props: Properties::new()
            }
        );
        assert_eq!(
            roundtrip(&ack(Version::V5, kind::PUBREL, 3, 0x92), Version::V5),
            Packet::Ack(Ack {
                kind: kind::PUBREL,
                pid: 3,
                code: 0x92,
                props: Properties::new()
            })
        );
        assert_eq!(roundtrip(&[0xd0, 0x00], Version::V311), Packet::Pingresp);
    }

    #[test]
    fn rejects_bad_broker_bytes() {
        // PUBLISH with QoS 3.
        assert_eq!(
            Packet::decode(0x36, &[0, 1, b't', 0, 1], Version::V311),
            Err(DecodeError::BadHeader(0x36))
        );
        // Invalid UTF-8 in a topic.
        assert_eq!(
            Packet::decode(0x30, &[0, 1, 0xff], Version::V311),
            Err(DecodeError::BadUtf8)
        );
        // PUBACK with a trailing byte in 3.1.1.
        assert_eq!(
            Packet::decode(0x40, &[0, 1, 0], Version::V311),
            Err(DecodeError::TrailingBytes(1))
        );
        // Unknown property.
        assert_eq!(
            Packet::decode(0x20, &[0, 0, 2, 0x7f, 0], Version::V5),
            Err(DecodeError::UnknownProperty(0x7f))
        );
    }

    #[test]
    fn body_builds_malformed_strings() {
        let b = Body::new().bin(&[0xc3, 0x28]).u8(0);
        assert_eq!(b.0, [0, 2, 0xc3, 0x28, 0]);
        assert_eq!(frame(0x30, &b), [0x30, 5, 0, 2, 0xc3, 0x28, 0]);
    }
}
