//! Byte-exact vectors for every control packet of MQTT 3.1, 3.1.1 and 5.0,
//! written by hand from the specifications' figures and field tables (never
//! produced by our own encoder), and one vector per decode error.
//!
//! Every valid vector is decoded (whole and byte by byte), compared field by
//! field with the packet written out here, and re-encoded to the same bytes.
//! Property blocks are written in the order the encoder emits them (the order
//! of the fields of the property structs); a separate test shows that any
//! order is accepted on input.
//!
//! With `ROOST_WRITE_CORPUS=<dir>` set, every vector (valid or not) is also
//! written to `<dir>` as a fuzzing seed.

use bytes::{Bytes, BytesMut};
use core::num::{NonZeroU16, NonZeroU32};
use roost_core::MqttStr;
use roost_core::StrError;
use roost_core::codec::*;
use roost_core::topic::{TopicError, TopicFilter, TopicName};

const MAX: usize = 1 << 20;
const ALL: [Protocol; 3] = [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5];
const V3: [Protocol; 2] = [Protocol::V3_1, Protocol::V3_1_1];

// ---------------------------------------------------------------- helpers

fn save_seed(bytes: &[u8]) {
    use std::hash::{DefaultHasher, Hash, Hasher};
    if let Some(dir) = std::env::var_os("ROOST_WRITE_CORPUS") {
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        let path = std::path::Path::new(&dir).join(format!("vec-{:016x}", h.finish()));
        std::fs::write(path, bytes).unwrap();
    }
}

fn s(text: &'static str) -> MqttStr {
    MqttStr::from_static(text)
}

fn topic(text: &'static str) -> TopicName {
    TopicName::from_static(text)
}

fn filter(text: &'static str) -> TopicFilter {
    TopicFilter::from_static(text)
}

fn pid(id: u16) -> PacketId {
    PacketId::new(id).unwrap()
}

fn user(name: &'static str, value: &'static str) -> UserProperty {
    UserProperty {
        name: s(name),
        value: s(value),
    }
}

fn nz16(v: u16) -> NonZeroU16 {
    NonZeroU16::new(v).unwrap()
}

fn nz32(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap()
}

/// Decodes `bytes` as exactly one packet in `protocol`, whole and fed one
/// byte at a time, and returns it.
fn decode_one(protocol: Protocol, bytes: &[u8]) -> Packet {
    save_seed(bytes);
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, protocol, MAX)
        .unwrap_or_else(|e| panic!("{protocol:?}: {e:?} for {bytes:02X?}"))
        .expect("a whole packet");
    assert!(buf.is_empty(), "decode left bytes behind");

    let input = Bytes::copy_from_slice(bytes);
    let (again, n) = decode_slice(&input, protocol, MAX).unwrap().unwrap();
    assert_eq!((&again, n), (&packet, bytes.len()));

    let mut buf = BytesMut::new();
    for (i, b) in bytes.iter().enumerate() {
        assert_eq!(decode(&mut buf, protocol, MAX), Ok(None), "early at {i}");
        buf.extend_from_slice(&[*b]);
    }
    assert_eq!(decode(&mut buf, protocol, MAX), Ok(Some(packet.clone())));
    packet
}

/// Checks that `packet` encodes for `protocol` to exactly `bytes`.
fn encodes_to(packet: &Packet, protocol: Protocol, bytes: &[u8]) {
    let mut out = BytesMut::new();
    packet.encode(protocol, &mut out).unwrap();
    assert_eq!(&out[..], bytes, "{protocol:?} encoding of {packet:?}");
    assert_eq!(packet.encoded_len(protocol), bytes.len());
}

/// The vector decodes in every protocol of `protocols` to `expected`, and
/// `expected` encodes back to it.
fn vector(protocols: &[Protocol], bytes: &[u8], expected: Packet) {
    for &protocol in protocols {
        let packet = decode_one(protocol, bytes);
        assert_eq!(packet, expected, "{protocol:?}");
        encodes_to(&expected, protocol, bytes);
    }
}

/// The vector fails to decode in every protocol of `protocols` with
/// `expected`, whether it arrives whole or byte by byte, and that error maps
/// to reason code `reason`.
fn reject(protocols: &[Protocol], bytes: &[u8], expected: DecodeError, reason: ReasonCode) {
    save_seed(bytes);
    assert_eq!(expected.reason_code(), reason, "{expected:?}");
    for &protocol in protocols {
        let mut buf = BytesMut::from(bytes);
        assert_eq!(
            decode(&mut buf, protocol, MAX),
            Err(expected),
            "{protocol:?}"
        );
        let input = Bytes::copy_from_slice(bytes);
        assert_eq!(
            decode_slice(&input, protocol, MAX),
            Err(expected),
            "{protocol:?}"
        );
        let mut buf = BytesMut::new();
        let mut result = Ok(None);
        for b in bytes {
            buf.extend_from_slice(&[*b]);
            result = decode(&mut buf, protocol, MAX);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(expected), "{protocol:?} byte by byte");
    }
}

fn connect(protocol: Protocol, client_id: MqttStr) -> Connect {
    Connect {
        protocol,
        clean_start: false,
        keep_alive: 0,
        client_id,
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

fn publish(qos: QosPid, topic: TopicName, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        payload: Bytes::from_static(payload),
        properties: PublishProperties::default(),
    }
}

fn ack(id: u16, reason: ReasonCode) -> PubResponse {
    PubResponse {
        packet_id: pid(id),
        reason,
        properties: AckProperties::default(),
    }
}

// ---------------------------------------------------------------- CONNECT

#[test]
fn connect_v3_1_mqisdp() {
    // MQTT 3.1: protocol name "MQIsdp", level 3, clean session, keep alive
    // 60, client id "c1".
    let bytes = [
        0x10, 0x10, // CONNECT, remaining length 16
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', // protocol name
        0x03, // level 3
        0x02, // clean session
        0x00, 0x3C, // keep alive 60
        0x00, 0x02, b'c', b'1', // client id
    ];
    let mut c = connect(Protocol::V3_1, s("c1"));
    c.clean_start = true;
    c.keep_alive = 60;
    // CONNECT is decoded by its own version whatever the connection says.
    vector(&ALL, &bytes, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v3_1_1_minimal_with_empty_client_id() {
    let bytes = [
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x00,
    ];
    let mut c = connect(Protocol::V3_1_1, MqttStr::EMPTY);
    c.clean_start = true;
    vector(&ALL, &bytes, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v3_1_1_with_will_username_password() {
    // Flags 0xEE: user name, password, will retain, will QoS 1, will, clean.
    let bytes = [
        0x10, 0x23, // remaining 35
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, // "MQTT" level 4
        0xEE, 0x00, 0x3C, // flags, keep alive 60
        0x00, 0x03, b'c', b'i', b'd', // client id
        0x00, 0x03, b'w', b'/', b't', // will topic
        0x00, 0x03, b'b', b'y', b'e', // will payload
        0x00, 0x04, b'u', b's', b'e', b'r', // user name
        0x00, 0x02, 0x01, 0x02, // password (binary)
    ];
    let mut c = connect(Protocol::V3_1_1, s("cid"));
    c.clean_start = true;
    c.keep_alive = 60;
    c.will = Some(Will {
        topic: topic("w/t"),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties::default(),
    });
    c.username = Some(s("user"));
    c.password = Some(Bytes::from_static(&[1, 2]));
    vector(&ALL, &bytes, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v3_1_1_username_only_and_will_qos2_not_retained() {
    // Flags 0x94: user name, will QoS 2, will; no clean session.
    let bytes = [
        0x10, 0x16, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x94, 0xFF,
        0xFF, // keep alive 65535
        0x00, 0x01, b'c', // client id
        0x00, 0x01, b't', // will topic
        0x00, 0x00, // empty will payload
        0x00, 0x02, 0xC3, 0xA9, // user name "é"
    ];
    let mut c = connect(Protocol::V3_1_1, s("c"));
    c.keep_alive = 0xFFFF;
    c.will = Some(Will {
        topic: topic("t"),
        payload: Bytes::new(),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    c.username = Some(s("é"));
    vector(&ALL, &bytes, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v5_minimal() {
    let bytes = [
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x00, 0x00,
        0x00, // level 5, no flags
        0x00, // property length 0
        0x00, 0x00, // empty client id
    ];
    let c = connect(Protocol::V5, MqttStr::EMPTY);
    vector(&ALL, &bytes, Packet::Connect(Box::new(c)));
}

fn connect_v5_full_bytes() -> Vec<u8> {
    let b = vec![
        0x10, 0x68, // remaining 104
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // "MQTT" 5
        0xCE, // user name, password, will QoS 1, will, clean start
        0x00, 0x0A, // keep alive 10
        0x28, // property length 40
        0x11, 0x00, 0x00, 0x00, 0x78, // session expiry 120
        0x21, 0x00, 0x14, // receive maximum 20
        0x27, 0x00, 0x00, 0x10, 0x00, // maximum packet size 4096
        0x22, 0x00, 0x0A, // topic alias maximum 10
        0x19, 0x01, // request response information
        0x17, 0x00, // request problem information false
        0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', // authentication method
        0x16, 0x00, 0x02, 0x01, 0x02, // authentication data
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
        0x00, 0x01, b'c', // client id
        0x25, // will property length 37
        0x18, 0x00, 0x00, 0x00, 0x05, // will delay 5
        0x01, 0x01, // payload format: UTF-8
        0x02, 0x00, 0x00, 0x00, 0x3C, // message expiry 60
        0x03, 0x00, 0x04, b't', b'e', b'x', b't', // content type
        0x08, 0x00, 0x03, b'r', b'/', b't', // response topic
        0x09, 0x00, 0x02, 0xAB, 0xCD, // correlation data
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b', // user property
        0x00, 0x01, b'w', // will topic
        0x00, 0x01, b'x', // will payload
        0x00, 0x01, b'u', // user name
        0x00, 0x01, b'p', // password
    ];
    assert_eq!(b.len(), 2 + 0x68);
    b
}

fn connect_v5_full_packet() -> Packet {
    let mut c = connect(Protocol::V5, s("c"));
    c.clean_start = true;
    c.keep_alive = 10;
    c.properties = ConnectProperties {
        session_expiry_interval: Some(120),
        receive_maximum: Some(nz16(20)),
        maximum_packet_size: Some(nz32(4096)),
        topic_alias_maximum: Some(10),
        request_response_information: Some(true),
        request_problem_information: Some(false),
        authentication_method: Some(s("SCRAM")),
        authentication_data: Some(Bytes::from_static(&[1, 2])),
        user_properties: vec![user("k", "v")],
    };
    c.will = Some(Will {
        topic: topic("w"),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: Some(5),
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(60),
            content_type: Some(s("text")),
            response_topic: Some(topic("r/t")),
            correlation_data: Some(Bytes::from_static(&[0xAB, 0xCD])),
            user_properties: vec![user("a", "b")],
        },
    });
    c.username = Some(s("u"));
    c.password = Some(Bytes::from_static(b"p"));
    Packet::Connect(Box::new(c))
}

#[test]
fn connect_v5_with_properties_will_properties_username_password() {
    vector(&ALL, &connect_v5_full_bytes(), connect_v5_full_packet());
}

#[test]
fn connect_v5_password_without_username_is_allowed() {
    // Flags 0x40: password only, which MQTT 5 allows (section 3.1.2.9).
    let bytes = [
        0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x02, 0x70, 0x77,
    ];
    let mut c = connect(Protocol::V5, MqttStr::EMPTY);
    c.password = Some(Bytes::from_static(b"pw"));
    vector(&[Protocol::V5], &bytes, Packet::Connect(Box::new(c)));
}

#[test]
fn v5_properties_are_accepted_in_any_order() {
    // The CONNECT above with its properties reversed: the same packet, and it
    // re-encodes in the canonical order.
    let bytes = [
        0x10, 0x1D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x00, 0x00, 0x00, 0x0F, // 15
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property first
        0x21, 0x00, 0x14, // receive maximum
        0x11, 0x00, 0x00, 0x00, 0x78, // session expiry last
        0x00, 0x01, b'c',
    ];
    let packet = decode_one(Protocol::V5, &bytes);
    let mut c = connect(Protocol::V5, s("c"));
    c.properties.session_expiry_interval = Some(120);
    c.properties.receive_maximum = Some(nz16(20));
    c.properties.user_properties = vec![user("k", "v")];
    assert_eq!(packet, Packet::Connect(Box::new(c)));
    encodes_to(
        &packet,
        Protocol::V5,
        &[
            0x10, 0x1D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x00, 0x00, 0x00, 0x0F, 0x11,
            0x00, 0x00, 0x00, 0x78, 0x21, 0x00, 0x14, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v',
            0x00, 0x01, b'c',
        ],
    );
}

// ---------------------------------------------------------------- CONNACK

#[test]
fn connack_v3_return_codes() {
    // Section 3.2.2.3 of 3.1.1: return codes 0 to 5.
    let codes = [
        (0x00, ReasonCode::Success),
        (0x01, ReasonCode::UnsupportedProtocolVersion),
        (0x02, ReasonCode::ClientIdentifierNotValid),
        (0x03, ReasonCode::ServerUnavailable),
        (0x04, ReasonCode::BadUserNameOrPassword),
        (0x05, ReasonCode::NotAuthorized),
    ];
    for (code, reason) in codes {
        let expected = ConnAck {
            session_present: false,
            reason,
            properties: ConnAckProperties::default(),
        };
        vector(
            &V3,
            &[0x20, 0x02, 0x00, code],
            Packet::ConnAck(Box::new(expected)),
        );
    }
    let expected = ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: ConnAckProperties::default(),
    };
    vector(
        &V3,
        &[0x20, 0x02, 0x01, 0x00],
        Packet::ConnAck(Box::new(expected)),
    );
}

#[test]
fn connack_v3_encodes_v5_reasons_as_nearest_return_code() {
    let c = ConnAck {
        session_present: false,
        reason: ReasonCode::Banned,
        properties: ConnAckProperties {
            reason_string: Some(s("dropped in 3.1.1")),
            ..Default::default()
        },
    };
    encodes_to(
        &Packet::ConnAck(Box::new(c.clone())),
        Protocol::V3_1_1,
        &[0x20, 0x02, 0x00, 0x05],
    );
    let c = ConnAck {
        reason: ReasonCode::QuotaExceeded,
        ..c
    };
    encodes_to(
        &Packet::ConnAck(Box::new(c)),
        Protocol::V3_1_1,
        &[0x20, 0x02, 0x00, 0x03],
    );
}

#[test]
fn connack_v5_short_and_error() {
    let ok = ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: ConnAckProperties::default(),
    };
    vector(
        &[Protocol::V5],
        &[0x20, 0x03, 0x01, 0x00, 0x00],
        Packet::ConnAck(Box::new(ok)),
    );
    let refused = ConnAck {
        session_present: false,
        reason: ReasonCode::NotAuthorized,
        properties: ConnAckProperties::default(),
    };
    vector(
        &[Protocol::V5],
        &[0x20, 0x03, 0x00, 0x87, 0x00],
        Packet::ConnAck(Box::new(refused)),
    );
}

#[test]
fn connack_v5_with_every_property() {
    let bytes = [
        0x20, 0x42, // remaining 66
        0x00, 0x00, // flags, success
        0x3F, // property length 63
        0x11, 0x00, 0x00, 0x0E, 0x10, // session expiry 3600
        0x21, 0x00, 0x0A, // receive maximum 10
        0x24, 0x01, // maximum QoS 1
        0x25, 0x00, // retain not available
        0x27, 0x00, 0x01, 0x00, 0x00, // maximum packet size 65536
        0x12, 0x00, 0x03, b'a', b'b', b'c', // assigned client identifier
        0x22, 0x00, 0x05, // topic alias maximum 5
        0x1F, 0x00, 0x02, b'o', b'k', // reason string
        0x28, 0x01, // wildcard subscriptions available
        0x29, 0x00, // subscription identifiers not available
        0x2A, 0x01, // shared subscriptions available
        0x13, 0x00, 0x1E, // server keep alive 30
        0x1A, 0x00, 0x01, b'r', // response information
        0x1C, 0x00, 0x01, b's', // server reference
        0x15, 0x00, 0x01, b'm', // authentication method
        0x16, 0x00, 0x01, 0x07, // authentication data
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
    ];
    let c = ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: ConnAckProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(nz16(10)),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            maximum_packet_size: Some(nz32(65536)),
            assigned_client_identifier: Some(s("abc")),
            topic_alias_maximum: Some(5),
            reason_string: Some(s("ok")),
            wildcard_subscription_available: Some(true),
            subscription_identifiers_available: Some(false),
            shared_subscription_available: Some(true),
            server_keep_alive: Some(30),
            response_information: Some(s("r")),
            server_reference: Some(s("s")),
            authentication_method: Some(s("m")),
            authentication_data: Some(Bytes::from_static(&[7])),
            user_properties: vec![user("k", "v")],
        },
    };
    let packet = Packet::ConnAck(Box::new(c));
    vector(&[Protocol::V5], &bytes, packet.clone());
    // For 3.1.1 the properties are left out.
    encodes_to(&packet, Protocol::V3_1_1, &[0x20, 0x02, 0x00, 0x00]);
}

// ---------------------------------------------------------------- PUBLISH

#[test]
fn publish_qos0_all_versions() {
    let bytes = [
        0x30, 0x0A, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o',
    ];
    let p = publish(QosPid::AtMostOnce, topic("a/b"), b"hello");
    vector(&V3, &bytes, Packet::Publish(p.clone()));
    // MQTT 5 adds a property length after the topic (and the identifier).
    let bytes = [
        0x30, 0x0B, 0x00, 0x03, b'a', b'/', b'b', 0x00, b'h', b'e', b'l', b'l', b'o',
    ];
    vector(&[Protocol::V5], &bytes, Packet::Publish(p));
}

#[test]
fn publish_qos0_retain_empty_payload_non_ascii_topic() {
    // Topic "é/ü" is 5 bytes of UTF-8.
    let bytes = [0x31, 0x07, 0x00, 0x05, 0xC3, 0xA9, b'/', 0xC3, 0xBC];
    let mut p = publish(QosPid::AtMostOnce, topic("é/ü"), b"");
    p.retain = true;
    vector(&V3, &bytes, Packet::Publish(p));
}

#[test]
fn publish_qos1_dup() {
    // 0x3A: PUBLISH, DUP, QoS 1.
    let bytes = [0x3A, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'x'];
    let mut p = publish(QosPid::AtLeastOnce(pid(10)), topic("a/b"), b"x");
    p.dup = true;
    vector(&V3, &bytes, Packet::Publish(p.clone()));
    let bytes = [
        0x3A, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, 0x00, b'x',
    ];
    vector(&[Protocol::V5], &bytes, Packet::Publish(p));
}

#[test]
fn publish_qos2_retain() {
    // 0x35: PUBLISH, QoS 2, RETAIN; packet id 65535.
    let bytes = [0x35, 0x07, 0x00, 0x01, b't', 0xFF, 0xFF, 0x01, 0x02];
    let mut p = publish(QosPid::ExactlyOnce(pid(0xFFFF)), topic("t"), &[1, 2]);
    p.retain = true;
    vector(&V3, &bytes, Packet::Publish(p));
}

#[test]
fn publish_v5_topic_alias_with_empty_topic() {
    let bytes = [
        0x32, 0x09, // QoS 1, remaining 9
        0x00, 0x00, // empty topic name
        0x00, 0x05, // packet id 5
        0x03, 0x23, 0x00, 0x01, // topic alias 1
        b'p',
    ];
    let mut p = Publish {
        topic: TopicName::default(),
        ..publish(QosPid::AtLeastOnce(pid(5)), topic("x"), b"p")
    };
    p.properties.topic_alias = Some(nz16(1));
    vector(&[Protocol::V5], &bytes, Packet::Publish(p));
}

#[test]
fn publish_v5_qos2_with_every_property() {
    let bytes = [
        0x3D, 0x3D, // DUP, QoS 2, RETAIN; remaining 61
        0x00, 0x01, b't', // topic
        0x12, 0x34, // packet id
        0x35, // property length 53
        0x01, 0x01, // payload format indicator
        0x02, 0x00, 0x00, 0x00, 0x0A, // message expiry 10
        0x23, 0x00, 0x02, // topic alias 2
        0x08, 0x00, 0x03, b'r', b'/', b'1', // response topic
        0x09, 0x00, 0x03, 0x01, 0x02, 0x03, // correlation data
        0x0B, 0x01, // subscription identifier 1
        0x0B, 0x80, 0x01, // subscription identifier 128
        0x0B, 0xFF, 0xFF, 0xFF, 0x7F, // subscription identifier 268,435,455
        0x03, 0x00, 0x04, b'j', b's', b'o', b'n', // content type
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'1', // user property a=1
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'2', // user property a=2
        b'{', b'}', // payload
    ];
    let p = Publish {
        dup: true,
        qos: QosPid::ExactlyOnce(pid(0x1234)),
        retain: true,
        topic: topic("t"),
        payload: Bytes::from_static(b"{}"),
        properties: PublishProperties {
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(10),
            topic_alias: Some(nz16(2)),
            response_topic: Some(topic("r/1")),
            correlation_data: Some(Bytes::from_static(&[1, 2, 3])),
            subscription_identifiers: vec![nz32(1), nz32(128), nz32(268_435_455)],
            content_type: Some(s("json")),
            user_properties: vec![user("a", "1"), user("a", "2")],
        },
    };
    let packet = Packet::Publish(p);
    vector(&[Protocol::V5], &bytes, packet.clone());
    // Forwarded to a 3.1.1 client, the properties are left out.
    encodes_to(
        &packet,
        Protocol::V3_1_1,
        &[0x3D, 0x07, 0x00, 0x01, b't', 0x12, 0x34, b'{', b'}'],
    );
}

#[test]
fn publish_qos0_never_encodes_dup() {
    // [MQTT-3.3.1-2]: a QoS 0 PUBLISH built with `dup` set is sent with DUP 0.
    let mut p = publish(QosPid::AtMostOnce, topic("t"), b"");
    p.dup = true;
    encodes_to(
        &Packet::Publish(p),
        Protocol::V3_1_1,
        &[0x30, 0x03, 0x00, 0x01, b't'],
    );
}

#[test]
fn publish_with_a_two_byte_remaining_length() {
    // 200-byte payload: remaining 3 + 2 + 200 = 205 = 0xCD 0x01.
    let mut bytes = vec![0x32, 0xCD, 0x01, 0x00, 0x01, b't', 0x00, 0x01];
    bytes.extend(std::iter::repeat_n(0x5A, 200));
    let payload: &'static [u8] = &[0x5A; 200];
    let p = publish(QosPid::AtLeastOnce(pid(1)), topic("t"), payload);
    vector(&V3, &bytes, Packet::Publish(p));
}

// ------------------------------------------------- PUBACK PUBREC PUBREL PUBCOMP

#[test]
fn pub_responses_v3() {
    for (first, make) in [
        (0x40, Packet::PubAck as fn(PubResponse) -> Packet),
        (0x50, Packet::PubRec),
        (0x62, Packet::PubRel),
        (0x70, Packet::PubComp),
    ] {
        vector(
            &V3,
            &[first, 0x02, 0x12, 0x34],
            make(PubResponse::new(pid(0x1234))),
        );
    }
}

#[test]
fn pub_responses_v5_short_forms() {
    // Two bytes: Success and no properties (section 3.4.2.1).
    for first in [0x40, 0x50, 0x62, 0x70] {
        let packet = decode_one(Protocol::V5, &[first, 0x02, 0x00, 0x01]);
        let expected = PubResponse::new(pid(1));
        let expected = match first {
            0x40 => Packet::PubAck(expected),
            0x50 => Packet::PubRec(expected),
            0x62 => Packet::PubRel(expected),
            _ => Packet::PubComp(expected),
        };
        assert_eq!(packet, expected);
        encodes_to(&expected, Protocol::V5, &[first, 0x02, 0x00, 0x01]);
    }
    // Three bytes: a reason code and no properties.
    vector(
        &[Protocol::V5],
        &[0x40, 0x03, 0x00, 0x01, 0x10],
        Packet::PubAck(ack(1, ReasonCode::NoMatchingSubscribers)),
    );
    vector(
        &[Protocol::V5],
        &[0x50, 0x03, 0x00, 0x02, 0x80],
        Packet::PubRec(ack(2, ReasonCode::UnspecifiedError)),
    );
    vector(
        &[Protocol::V5],
        &[0x62, 0x03, 0x00, 0x03, 0x92],
        Packet::PubRel(ack(3, ReasonCode::PacketIdentifierNotFound)),
    );
    vector(
        &[Protocol::V5],
        &[0x70, 0x03, 0x00, 0x04, 0x92],
        Packet::PubComp(ack(4, ReasonCode::PacketIdentifierNotFound)),
    );
}

#[test]
fn pub_responses_v5_full_form() {
    let bytes = [
        0x40, 0x0A, 0x00, 0x01, 0x87, // PUBACK id 1, Not authorized
        0x06, 0x1F, 0x00, 0x03, b'n', b'o', b'p', // reason string
    ];
    let mut a = ack(1, ReasonCode::NotAuthorized);
    a.properties.reason_string = Some(s("nop"));
    vector(&[Protocol::V5], &bytes, Packet::PubAck(a.clone()));
    // In 3.1.1 only the identifier is sent.
    encodes_to(
        &Packet::PubAck(a),
        Protocol::V3_1_1,
        &[0x40, 0x02, 0x00, 0x01],
    );

    // Success with a user property: the reason code must be written.
    let bytes = [
        0x70, 0x0B, 0x00, 0x09, 0x00, 0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v',
    ];
    let mut c = ack(9, ReasonCode::Success);
    c.properties.user_properties = vec![user("k", "v")];
    vector(&[Protocol::V5], &bytes, Packet::PubComp(c));
}

#[test]
fn pub_response_v5_with_empty_property_block_decodes() {
    // Reason code then a zero property length: valid, re-encoded shorter.
    let packet = decode_one(Protocol::V5, &[0x50, 0x04, 0x00, 0x07, 0x10, 0x00]);
    assert_eq!(
        packet,
        Packet::PubRec(ack(7, ReasonCode::NoMatchingSubscribers))
    );
    encodes_to(&packet, Protocol::V5, &[0x50, 0x03, 0x00, 0x07, 0x10]);
}

// ---------------------------------------------------------------- SUBSCRIBE

fn sub(f: &'static str, qos: QoS) -> Subscription {
    Subscription {
        filter: filter(f),
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
    }
}

#[test]
fn subscribe_v3() {
    let bytes = [
        0x82, 0x0C, 0x00, 0x0A, // packet id 10
        0x00, 0x03, b'a', b'/', b'b', 0x01, // "a/b" QoS 1
        0x00, 0x01, b'#', 0x02, // "#" QoS 2
    ];
    let s = Subscribe {
        packet_id: pid(10),
        subscriptions: vec![sub("a/b", QoS::AtLeastOnce), sub("#", QoS::ExactlyOnce)],
        properties: SubscribeProperties::default(),
    };
    vector(&V3, &bytes, Packet::Subscribe(s));
}

#[test]
fn subscribe_v5_options_bits_and_subscription_identifier() {
    let bytes = [
        0x82, 0x1D, 0x00, 0x0B, // packet id 11
        0x03, 0x0B, 0x80, 0x01, // subscription identifier 128
        0x00, 0x03, b'a', b'/', b'+', 0x2E, // QoS 2, No Local, RAP, RH 2
        0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', b'x', 0x01, 0x00, 0x01,
        b'b', 0x10, // QoS 0, Retain Handling 1
    ];
    let s = Subscribe {
        packet_id: pid(11),
        subscriptions: vec![
            Subscription {
                filter: filter("a/+"),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            },
            sub("$share/g/x", QoS::AtLeastOnce),
            Subscription {
                filter: filter("b"),
                options: SubscriptionOptions {
                    retain_handling: RetainHandling::SendIfNew,
                    ..Default::default()
                },
            },
        ],
        properties: SubscribeProperties {
            subscription_identifier: Some(nz32(128)),
            user_properties: vec![],
        },
    };
    let packet = Packet::Subscribe(s);
    vector(&[Protocol::V5], &bytes, packet.clone());
    // For 3.1.1 only the QoS bits of the options remain.
    encodes_to(
        &packet,
        Protocol::V3_1_1,
        &[
            0x82, 0x19, 0x00, 0x0B, 0x00, 0x03, b'a', b'/', b'+', 0x02, 0x00, 0x0A, b'$', b's',
            b'h', b'a', b'r', b'e', b'/', b'g', b'/', b'x', 0x01, 0x00, 0x01, b'b', 0x00,
        ],
    );
}

#[test]
fn subscribe_v5_user_property() {
    let bytes = [
        0x82, 0x0E, 0x00, 0x01, 0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', 0x00, 0x01, b'#',
        0x00,
    ];
    let s = Subscribe {
        packet_id: pid(1),
        subscriptions: vec![sub("#", QoS::AtMostOnce)],
        properties: SubscribeProperties {
            subscription_identifier: None,
            user_properties: vec![user("k", "v")],
        },
    };
    vector(&[Protocol::V5], &bytes, Packet::Subscribe(s));
}

// ---------------------------------------------------------------- SUBACK

#[test]
fn suback_v3() {
    let bytes = [0x90, 0x06, 0x00, 0x0A, 0x00, 0x01, 0x02, 0x80];
    let a = SubAck {
        packet_id: pid(10),
        reasons: vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ],
        properties: AckProperties::default(),
    };
    vector(&V3, &bytes, Packet::SubAck(a));
}

#[test]
fn suback_v5_every_reason_code() {
    let bytes = [
        0x90, 0x0F, 0x00, 0x0A, 0x00, // id 10, no properties
        0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
    ];
    use ReasonCode::*;
    let a = SubAck {
        packet_id: pid(10),
        reasons: vec![
            Success,
            GrantedQoS1,
            GrantedQoS2,
            UnspecifiedError,
            ImplementationSpecificError,
            NotAuthorized,
            TopicFilterInvalid,
            PacketIdentifierInUse,
            QuotaExceeded,
            SharedSubscriptionsNotSupported,
            SubscriptionIdentifiersNotSupported,
            WildcardSubscriptionsNotSupported,
        ],
        properties: AckProperties::default(),
    };
    let packet = Packet::SubAck(a);
    vector(&[Protocol::V5], &bytes, packet.clone());
    // In 3.1.1 every failure is 0x80.
    let mut v3 = vec![0x90, 0x0E, 0x00, 0x0A, 0x00, 0x01, 0x02];
    v3.extend([0x80; 9]);
    encodes_to(&packet, Protocol::V3_1_1, &v3);
}

#[test]
fn suback_v5_reason_string() {
    let bytes = [0x90, 0x08, 0x00, 0x01, 0x04, 0x1F, 0x00, 0x01, b'r', 0x87];
    let a = SubAck {
        packet_id: pid(1),
        reasons: vec![ReasonCode::NotAuthorized],
        properties: AckProperties {
            reason_string: Some(s("r")),
            user_properties: vec![],
        },
    };
    vector(&[Protocol::V5], &bytes, Packet::SubAck(a));
}

// ---------------------------------------------------------------- UNSUBSCRIBE

#[test]
fn unsubscribe_v3_and_v5() {
    let bytes = [
        0xA2_u8, 0x0A, 0x00, 0x0B, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, b'#',
    ];
    let u = Unsubscribe {
        packet_id: pid(11),
        filters: vec![filter("a/b"), filter("#")],
        properties: UnsubscribeProperties::default(),
    };
    vector(&V3, &bytes, Packet::Unsubscribe(u.clone()));
    let bytes = [
        0xA2, 0x12, 0x00, 0x0B, // id 11
        0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
        0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, b'#',
    ];
    let u = Unsubscribe {
        properties: UnsubscribeProperties {
            user_properties: vec![user("k", "v")],
        },
        ..u
    };
    vector(&[Protocol::V5], &bytes, Packet::Unsubscribe(u));
}

// ---------------------------------------------------------------- UNSUBACK

#[test]
fn unsuback_v3_has_no_payload() {
    let a = UnsubAck {
        packet_id: pid(11),
        reasons: vec![],
        properties: AckProperties::default(),
    };
    vector(&V3, &[0xB0, 0x02, 0x00, 0x0B], Packet::UnsubAck(a));
}

#[test]
fn unsuback_v5_reason_codes() {
    use ReasonCode::*;
    let bytes = [
        0xB0, 0x0A, 0x00, 0x0B, 0x00, 0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91,
    ];
    let a = UnsubAck {
        packet_id: pid(11),
        reasons: vec![
            Success,
            NoSubscriptionExisted,
            UnspecifiedError,
            ImplementationSpecificError,
            NotAuthorized,
            TopicFilterInvalid,
            PacketIdentifierInUse,
        ],
        properties: AckProperties::default(),
    };
    let packet = Packet::UnsubAck(a);
    vector(&[Protocol::V5], &bytes, packet.clone());
    encodes_to(&packet, Protocol::V3_1_1, &[0xB0, 0x02, 0x00, 0x0B]);

    let bytes = [0xB0, 0x08, 0x00, 0x01, 0x04, 0x1F, 0x00, 0x01, b'x', 0x11];
    let a = UnsubAck {
        packet_id: pid(1),
        reasons: vec![NoSubscriptionExisted],
        properties: AckProperties {
            reason_string: Some(s("x")),
            user_properties: vec![],
        },
    };
    vector(&[Protocol::V5], &bytes, Packet::UnsubAck(a));
}

// ---------------------------------------------------------- PINGREQ PINGRESP

#[test]
fn ping() {
    vector(&ALL, &[0xC0, 0x00], Packet::PingReq);
    vector(&ALL, &[0xD0, 0x00], Packet::PingResp);
}

// ---------------------------------------------------------------- DISCONNECT

#[test]
fn disconnect_v3_is_empty() {
    let d = Disconnect::new(ReasonCode::Success);
    vector(&V3, &[0xE0, 0x00], Packet::Disconnect(d.clone()));
    // A v5 reason is dropped for 3.1.1.
    let d = Disconnect::new(ReasonCode::ServerShuttingDown);
    encodes_to(&Packet::Disconnect(d), Protocol::V3_1_1, &[0xE0, 0x00]);
}

#[test]
fn disconnect_v5_short_forms() {
    // Remaining length 0: Normal disconnection (section 3.14.2.1).
    vector(
        &[Protocol::V5],
        &[0xE0, 0x00],
        Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
    );
    // One byte: a reason code, no properties.
    vector(
        &[Protocol::V5],
        &[0xE0, 0x01, 0x04],
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage)),
    );
    // A reason and an empty property block: decoded, re-encoded shorter.
    let packet = decode_one(Protocol::V5, &[0xE0, 0x02, 0x8E, 0x00]);
    assert_eq!(
        packet,
        Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver))
    );
    encodes_to(&packet, Protocol::V5, &[0xE0, 0x01, 0x8E]);
}

#[test]
fn disconnect_v5_full() {
    let bytes = [
        0xE0, 0x18, 0x8B, // Server shutting down
        0x16, // property length 22
        0x11, 0x00, 0x00, 0x00, 0x00, // session expiry 0
        0x1F, 0x00, 0x03, b'b', b'y', b'e', // reason string
        0x1C, 0x00, 0x01, b's', // server reference
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
    ];
    let d = Disconnect {
        reason: ReasonCode::ServerShuttingDown,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            reason_string: Some(s("bye")),
            server_reference: Some(s("s")),
            user_properties: vec![user("k", "v")],
        },
    };
    vector(&[Protocol::V5], &bytes, Packet::Disconnect(d));
}

// ---------------------------------------------------------------- AUTH

#[test]
fn auth_v5() {
    vector(
        &[Protocol::V5],
        &[0xF0, 0x00],
        Packet::Auth(Box::new(Auth {
            reason: ReasonCode::Success,
            properties: AuthProperties::default(),
        })),
    );
    vector(
        &[Protocol::V5],
        &[0xF0, 0x01, 0x19],
        Packet::Auth(Box::new(Auth {
            reason: ReasonCode::ReAuthenticate,
            properties: AuthProperties::default(),
        })),
    );
    let bytes = [
        0xF0, 0x1B, 0x18, // Continue authentication
        0x19, // property length 25
        0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', // method
        0x16, 0x00, 0x03, 0x01, 0x02, 0x03, // data
        0x1F, 0x00, 0x01, b'x', // reason string
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
    ];
    let a = Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(Bytes::from_static(&[1, 2, 3])),
            reason_string: Some(s("x")),
            user_properties: vec![user("k", "v")],
        },
    };
    let packet = Packet::Auth(Box::new(a));
    vector(&[Protocol::V5], &bytes, packet.clone());
    let mut out = BytesMut::new();
    assert_eq!(
        packet.encode(Protocol::V3_1_1, &mut out),
        Err(EncodeError::NotInProtocol(PacketType::Auth))
    );
}

// ---------------------------------------------------------------- streams

#[test]
fn several_packets_in_one_buffer() {
    let mut buf = BytesMut::from(
        &[
            0xC0, 0x00, // PINGREQ
            0x40, 0x02, 0x00, 0x01, // PUBACK 1
            0x30, 0x03, 0x00, 0x01, b't', // PUBLISH "t"
            0xE0, // the start of a DISCONNECT
        ][..],
    );
    let p = Protocol::V3_1_1;
    assert_eq!(decode(&mut buf, p, MAX), Ok(Some(Packet::PingReq)));
    assert_eq!(
        decode(&mut buf, p, MAX),
        Ok(Some(Packet::PubAck(PubResponse::new(pid(1)))))
    );
    assert_eq!(
        decode(&mut buf, p, MAX),
        Ok(Some(Packet::Publish(publish(
            QosPid::AtMostOnce,
            topic("t"),
            b""
        ))))
    );
    assert_eq!(decode(&mut buf, p, MAX), Ok(None));
    assert_eq!(&buf[..], &[0xE0]);
}

#[test]
fn frame_header_reports_sizes_before_the_body() {
    let h = FrameHeader::decode(&[0x32, 0xCD, 0x01], Protocol::V5, MAX)
        .unwrap()
        .unwrap();
    assert_eq!(h.packet, PacketType::Publish);
    assert_eq!(h.first_byte, 0x32);
    assert_eq!(h.header_len, 3);
    assert_eq!(h.remaining_len, 205);
    assert_eq!(h.total_len(), 208);
    assert_eq!(FrameHeader::decode(&[], Protocol::V5, MAX), Ok(None));
    assert_eq!(
        FrameHeader::decode(&[0x32, 0xCD], Protocol::V5, MAX),
        Ok(None)
    );
    // The largest remaining length, 268,435,455.
    let h = FrameHeader::decode(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], Protocol::V5, usize::MAX)
        .unwrap()
        .unwrap();
    assert_eq!(h.remaining_len, 268_435_455);
    // A packet of exactly the maximum is accepted.
    assert!(
        FrameHeader::decode(&[0xC0, 0x00], Protocol::V5, 2)
            .unwrap()
            .is_some()
    );
}

#[test]
fn decode_frame_checks_the_frame_against_its_header() {
    let header = FrameHeader::decode(&[0x40, 0x02], Protocol::V5, MAX)
        .unwrap()
        .unwrap();
    let frame = |b: &'static [u8]| Bytes::from_static(b);
    assert_eq!(
        Packet::decode_frame(header, frame(&[0x40, 0x02, 0x00, 0x01]), Protocol::V5),
        Ok(Packet::PubAck(PubResponse::new(pid(1))))
    );
    // Shorter than the header says, even shorter than the header itself:
    // an error, not a panic.
    assert_eq!(
        Packet::decode_frame(header, frame(&[0x40]), Protocol::V5),
        Err(DecodeError::UnexpectedEnd)
    );
    assert_eq!(
        Packet::decode_frame(header, frame(&[0x40, 0x02, 0x00]), Protocol::V5),
        Err(DecodeError::UnexpectedEnd)
    );
    assert_eq!(
        Packet::decode_frame(header, frame(&[0x40, 0x02, 0x00, 0x01, 0xC0]), Protocol::V5),
        Err(DecodeError::TrailingBytes)
    );
}

// ---------------------------------------------------------------- encode errors

#[test]
fn encode_errors() {
    let mut out = BytesMut::new();
    let mut c = connect(Protocol::V3_1_1, s("c"));
    c.username = Some(s("u"));
    c.password = Some(Bytes::from(vec![0; 65_536]));
    assert_eq!(
        Packet::Connect(Box::new(c)).encode(Protocol::V3_1_1, &mut out),
        Err(EncodeError::FieldTooLong)
    );
    let mut p = publish(QosPid::AtMostOnce, topic("t"), b"");
    p.properties.subscription_identifiers = vec![nz32(268_435_456)];
    assert_eq!(
        Packet::Publish(p).encode(Protocol::V5, &mut out),
        Err(EncodeError::SubscriptionIdentifierTooLarge)
    );
    let sub = Subscribe {
        packet_id: pid(1),
        subscriptions: vec![sub("#", QoS::AtMostOnce)],
        properties: SubscribeProperties {
            subscription_identifier: Some(nz32(u32::MAX)),
            user_properties: vec![],
        },
    };
    assert_eq!(
        Packet::Subscribe(sub).encode(Protocol::V5, &mut out),
        Err(EncodeError::SubscriptionIdentifierTooLarge)
    );
    // Zeroed memory that is never touched: the size check comes first.
    let mut p = publish(QosPid::AtMostOnce, topic("t"), b"");
    p.payload = Bytes::from(vec![0u8; 268_435_456]);
    assert_eq!(
        Packet::Publish(p).encode(Protocol::V3_1_1, &mut out),
        Err(EncodeError::PacketTooLarge)
    );
    assert!(out.is_empty(), "a failed encode wrote bytes");
}

// ---------------------------------------------------------------- decode errors
//
// One vector (or a few) per `DecodeError` variant, with the reason code an
// MQTT 5 server answers it with: section 4.13 and the normative statements
// say which violations are Malformed Packets and which Protocol Errors.

use DecodeError as E;
use ReasonCode::{MalformedPacket as MALFORMED, ProtocolError as PROTOCOL};

#[test]
fn error_malformed_var_int() {
    // Five bytes of remaining length [MQTT-1.5.5-1].
    reject(
        &ALL,
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        E::MalformedVarInt,
        MALFORMED,
    );
    // A remaining length of 0 in two bytes: not the minimal encoding.
    reject(&ALL, &[0xC0, 0x80, 0x00], E::MalformedVarInt, MALFORMED);
    // A property length in five bytes.
    reject(
        &[Protocol::V5],
        &[0x40, 0x08, 0x00, 0x01, 0x00, 0x80, 0x80, 0x80, 0x80, 0x01],
        E::MalformedVarInt,
        MALFORMED,
    );
}

#[test]
fn error_packet_too_large() {
    // The header alone announces 268,435,460 bytes.
    let bytes = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];
    let too_large = E::PacketTooLarge {
        size: 268_435_460,
        max: MAX,
    };
    assert_eq!(too_large.reason_code(), ReasonCode::PacketTooLarge);
    for p in ALL {
        assert_eq!(
            decode(&mut BytesMut::from(&bytes[..]), p, MAX),
            Err(too_large)
        );
        assert_eq!(FrameHeader::decode(&bytes, p, MAX), Err(too_large));
    }
    // One byte over a maximum of 4: PUBACK is 4 bytes, PUBACK with reason 5.
    let mut buf = BytesMut::from(&[0x40, 0x03][..]);
    assert_eq!(
        decode(&mut buf, Protocol::V5, 4),
        Err(E::PacketTooLarge { size: 5, max: 4 })
    );
    save_seed(&bytes);
}

#[test]
fn error_invalid_packet_type() {
    reject(&ALL, &[0x00, 0x00], E::InvalidPacketType(0), PROTOCOL);
    // AUTH does not exist before MQTT 5.
    reject(&V3, &[0xF0, 0x00], E::InvalidPacketType(15), PROTOCOL);
}

#[test]
fn error_invalid_flags() {
    let cases: [(&[u8], PacketType, u8); 5] = [
        (&[0xC1, 0x00], PacketType::PingReq, 1),
        (&[0x60, 0x02, 0x00, 0x01], PacketType::PubRel, 0),
        (
            &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x00],
            PacketType::Subscribe,
            0,
        ),
        (
            &[0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'#'],
            PacketType::Unsubscribe,
            0,
        ),
        (&[0x48, 0x02, 0x00, 0x01], PacketType::PubAck, 8),
    ];
    for (bytes, packet, flags) in cases {
        reject(&ALL, bytes, E::InvalidFlags { packet, flags }, MALFORMED);
    }
    reject(
        &[Protocol::V5],
        &[0xF1, 0x00],
        E::InvalidFlags {
            packet: PacketType::Auth,
            flags: 1,
        },
        MALFORMED,
    );
}

#[test]
fn error_invalid_qos() {
    // PUBLISH QoS 3, refused from the first byte [MQTT-3.3.1-4].
    reject(&ALL, &[0x36], E::InvalidQoS, MALFORMED);
    // Will QoS 3: "A value of 3 (0x03) is a Malformed Packet" (3.1.2.6).
    reject(
        &ALL,
        &[
            0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x1C, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x01, b't', 0x00, 0x00,
        ][..],
        E::InvalidQoS,
        MALFORMED,
    );
}

#[test]
fn error_dup_on_qos0() {
    reject(
        &ALL,
        &[0x38, 0x03, 0x00, 0x01, b't'],
        E::DupOnQoS0,
        MALFORMED,
    );
}

#[test]
fn error_unexpected_end() {
    // PUBACK with a one-byte packet id.
    reject(&ALL, &[0x40, 0x01, 0x00], E::UnexpectedEnd, MALFORMED);
    // A topic length longer than the packet.
    reject(
        &ALL,
        &[0x30, 0x03, 0x00, 0x05, b't'],
        E::UnexpectedEnd,
        MALFORMED,
    );
    // QoS 1 PUBLISH without room for its packet id.
    reject(
        &ALL,
        &[0x32, 0x04, 0x00, 0x01, b't', 0x00],
        E::UnexpectedEnd,
        MALFORMED,
    );
    // A property block longer than the packet.
    reject(
        &[Protocol::V5],
        &[0x30, 0x05, 0x00, 0x01, b't', 0x05, 0x01],
        E::UnexpectedEnd,
        MALFORMED,
    );
    // A property value cut by the end of its block.
    reject(
        &[Protocol::V5],
        &[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x02, 0x00],
        E::UnexpectedEnd,
        MALFORMED,
    );
    // CONNECT whose client id is missing.
    reject(
        &ALL,
        &[
            0x10, 0x0A, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00,
        ],
        E::UnexpectedEnd,
        MALFORMED,
    );
    // CONNECT with the user name flag and no user name.
    reject(
        &ALL,
        &[
            0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x82, 0x00, 0x00, 0x00, 0x00,
        ],
        E::UnexpectedEnd,
        MALFORMED,
    );
    // CONNACK with one byte.
    reject(&ALL, &[0x20, 0x01, 0x00], E::UnexpectedEnd, MALFORMED);
    // SUBSCRIBE whose last filter has no options byte.
    reject(
        &V3,
        &[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'#'],
        E::UnexpectedEnd,
        MALFORMED,
    );
}

#[test]
fn error_trailing_bytes() {
    reject(&ALL, &[0xC0, 0x01, 0x00], E::TrailingBytes, MALFORMED);
    reject(&ALL, &[0xD0, 0x01, 0x00], E::TrailingBytes, MALFORMED);
    // MQTT 3 acknowledgements and DISCONNECT have fixed sizes.
    reject(
        &V3,
        &[0x40, 0x03, 0x00, 0x01, 0x00],
        E::TrailingBytes,
        MALFORMED,
    );
    reject(&V3, &[0xE0, 0x01, 0x00], E::TrailingBytes, MALFORMED);
    reject(
        &V3,
        &[0xB0, 0x03, 0x00, 0x01, 0x00],
        E::TrailingBytes,
        MALFORMED,
    );
    reject(
        &V3,
        &[0x20, 0x03, 0x00, 0x00, 0x00],
        E::TrailingBytes,
        MALFORMED,
    );
    // A byte after the properties of a v5 PUBACK and DISCONNECT.
    reject(
        &[Protocol::V5],
        &[0x40, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00],
        E::TrailingBytes,
        MALFORMED,
    );
    reject(
        &[Protocol::V5],
        &[0xE0, 0x03, 0x00, 0x00, 0x00],
        E::TrailingBytes,
        MALFORMED,
    );
    // CONNECT with a byte after the client id.
    reject(
        &ALL,
        &[
            0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x01,
            b'c', 0x00,
        ],
        E::TrailingBytes,
        MALFORMED,
    );
}

#[test]
fn error_invalid_string() {
    // Ill-formed UTF-8 is a Malformed Packet [MQTT-1.5.4-1].
    reject(
        &ALL,
        &[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28],
        E::InvalidString(StrError::InvalidUtf8),
        MALFORMED,
    );
    // A UTF-16 surrogate (U+D800) encoded in UTF-8 is ill-formed too.
    reject(
        &ALL,
        &[0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80],
        E::InvalidString(StrError::InvalidUtf8),
        MALFORMED,
    );
    // U+0000 is a Malformed Packet [MQTT-1.5.4-2]: in a topic and in a
    // client id.
    reject(
        &ALL,
        &[0x30, 0x04, 0x00, 0x02, b'a', 0x00],
        E::InvalidString(StrError::NullCharacter),
        MALFORMED,
    );
    reject(
        &ALL,
        &[
            0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x02,
            b'c', 0x00,
        ],
        E::InvalidString(StrError::NullCharacter),
        MALFORMED,
    );
    // In a user property value.
    reject(
        &[Protocol::V5],
        &[
            0x30, 0x0B, 0x00, 0x01, b't', 0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, 0xFF,
        ],
        E::InvalidString(StrError::InvalidUtf8),
        MALFORMED,
    );
}

#[test]
fn error_invalid_protocol_name() {
    reject(
        &ALL,
        &[
            0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'X', 0x04, 0x02, 0x00, 0x00, 0x00, 0x00,
        ],
        E::InvalidProtocolName,
        PROTOCOL,
    );
}

#[test]
fn error_unsupported_protocol_level() {
    let level = |l: u8| {
        [
            0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', l, 0x02, 0x00, 0x00, 0x00, 0x00,
        ]
    };
    for l in [6, 3, 0, 0xFF] {
        reject(
            &ALL,
            &level(l),
            E::UnsupportedProtocolLevel(l),
            ReasonCode::UnsupportedProtocolVersion,
        );
    }
    // "MQIsdp" is only level 3.
    reject(
        &ALL,
        &[
            0x10, 0x0E, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x04, 0x02, 0x00, 0x00,
            0x00, 0x00,
        ],
        E::UnsupportedProtocolLevel(4),
        ReasonCode::UnsupportedProtocolVersion,
    );
}

#[test]
fn error_connect_reserved_flag() {
    // "If the reserved flag is not 0 it is a Malformed Packet" [MQTT-3.1.2-3].
    reject(
        &ALL,
        &[
            0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x00, 0x00, 0x00,
        ],
        E::ConnectReservedFlag,
        MALFORMED,
    );
}

#[test]
fn error_will_flags_without_will() {
    for flags in [0x22, 0x0A, 0x12] {
        reject(
            &ALL,
            &[
                0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, flags, 0x00, 0x00, 0x00, 0x00,
            ],
            E::WillFlagsWithoutWill,
            MALFORMED,
        );
    }
}

#[test]
fn error_password_without_username_in_v3() {
    reject(
        &ALL,
        &[
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x42, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x02, b'p', b'w',
        ],
        E::PasswordWithoutUsername,
        MALFORMED,
    );
    reject(
        &ALL,
        &[
            0x10, 0x10, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x42, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,
        ],
        E::PasswordWithoutUsername,
        MALFORMED,
    );
}

#[test]
fn error_connack_reserved_flags() {
    reject(
        &ALL,
        &[0x20, 0x02, 0x02, 0x00],
        E::ConnAckReservedFlags,
        MALFORMED,
    );
}

#[test]
fn error_invalid_topic_name() {
    // Wildcards in a topic name [MQTT-3.3.2-2]: Topic Name invalid.
    for t in [b'+', b'#'] {
        reject(
            &ALL,
            &[0x30, 0x05, 0x00, 0x03, b'a', b'/', t],
            E::InvalidTopicName(TopicError::WildcardInName),
            ReasonCode::TopicNameInvalid,
        );
    }
    // An empty topic without a topic alias: "It is a Protocol Error if the
    // Topic Name is zero length and there is no Topic Alias" (3.3.2.1).
    reject(
        &V3,
        &[0x30, 0x02, 0x00, 0x00],
        E::InvalidTopicName(TopicError::Empty),
        PROTOCOL,
    );
    reject(
        &[Protocol::V5],
        &[0x30, 0x03, 0x00, 0x00, 0x00],
        E::InvalidTopicName(TopicError::Empty),
        PROTOCOL,
    );
    // A will topic with a wildcard.
    reject(
        &ALL,
        &[
            0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x06, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x01, b'#', 0x00, 0x00,
        ],
        E::InvalidTopicName(TopicError::WildcardInName),
        ReasonCode::TopicNameInvalid,
    );
    // A response topic with a wildcard [MQTT-3.3.2-14].
    reject(
        &[Protocol::V5],
        &[0x30, 0x08, 0x00, 0x01, b't', 0x04, 0x08, 0x00, 0x01, b'+'],
        E::InvalidTopicName(TopicError::WildcardInName),
        ReasonCode::TopicNameInvalid,
    );
}

#[test]
fn error_invalid_topic_filter() {
    let sub_v3 = |f: &[u8]| {
        let mut b = vec![0x82, (f.len() + 5) as u8, 0x00, 0x01, 0x00, f.len() as u8];
        b.extend_from_slice(f);
        b.push(0x00);
        b
    };
    let cases: [(&[u8], TopicError); 5] = [
        (b"", TopicError::Empty),
        (b"a/#/b", TopicError::MisplacedMultiLevelWildcard),
        (b"a#", TopicError::MisplacedMultiLevelWildcard),
        (b"a/b+", TopicError::MisplacedSingleLevelWildcard),
        (b"$share/g", TopicError::InvalidSharedSubscription),
    ];
    for (f, e) in cases {
        reject(
            &V3,
            &sub_v3(f),
            E::InvalidTopicFilter(e),
            ReasonCode::MalformedPacket,
        );
    }
    // In UNSUBSCRIBE too.
    reject(
        &V3,
        &[0xA2, 0x04, 0x00, 0x01, 0x00, 0x00],
        E::InvalidTopicFilter(TopicError::Empty),
        ReasonCode::MalformedPacket,
    );
    reject(
        &[Protocol::V5],
        &[0xA2, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00],
        E::InvalidTopicFilter(TopicError::Empty),
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn error_zero_packet_id() {
    reject(&ALL, &[0x40, 0x02, 0x00, 0x00], E::ZeroPacketId, PROTOCOL);
    reject(&ALL, &[0x62, 0x02, 0x00, 0x00], E::ZeroPacketId, PROTOCOL);
    reject(
        &ALL,
        &[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00],
        E::ZeroPacketId,
        PROTOCOL,
    );
    reject(
        &V3,
        &[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'#', 0x00],
        E::ZeroPacketId,
        PROTOCOL,
    );
    reject(
        &ALL,
        &[0x90, 0x03, 0x00, 0x00, 0x00],
        E::ZeroPacketId,
        PROTOCOL,
    );
}

#[test]
fn error_no_topic_filters() {
    // "A SUBSCRIBE packet with no Payload is a Protocol Error" [MQTT-3.8.3-2].
    reject(&V3, &[0x82, 0x02, 0x00, 0x01], E::NoTopicFilters, PROTOCOL);
    reject(
        &[Protocol::V5],
        &[0x82, 0x03, 0x00, 0x01, 0x00],
        E::NoTopicFilters,
        PROTOCOL,
    );
    // The same for UNSUBSCRIBE [MQTT-3.10.3-2].
    reject(&V3, &[0xA2, 0x02, 0x00, 0x01], E::NoTopicFilters, PROTOCOL);
    reject(
        &[Protocol::V5],
        &[0xA2, 0x03, 0x00, 0x01, 0x00],
        E::NoTopicFilters,
        PROTOCOL,
    );
    // SUBACK and v5 UNSUBACK without reason codes.
    reject(&V3, &[0x90, 0x02, 0x00, 0x01], E::NoTopicFilters, PROTOCOL);
    reject(
        &[Protocol::V5],
        &[0xB0, 0x03, 0x00, 0x01, 0x00],
        E::NoTopicFilters,
        PROTOCOL,
    );
}

#[test]
fn error_invalid_subscription_options() {
    let sub_v5 = |opts: u8| [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'#', opts];
    // Reserved bits: "The Server MUST treat a SUBSCRIBE packet as malformed
    // if any of Reserved bits in the Payload are non-zero" [MQTT-3.8.3-5].
    for opts in [0x40, 0x80, 0xC0] {
        reject(
            &[Protocol::V5],
            &sub_v5(opts),
            E::InvalidSubscriptionOptions,
            MALFORMED,
        );
    }
    // In 3.1.1 the six upper bits are reserved [MQTT-3-8.3-4].
    for opts in [0x04, 0x08, 0x10, 0x80] {
        reject(
            &V3,
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', opts],
            E::InvalidSubscriptionOptions,
            MALFORMED,
        );
    }
}

#[test]
fn error_invalid_subscription_qos() {
    // "It is a Protocol Error if the Maximum QoS field has the value 3"
    // (3.8.3.1).
    reject(
        &[Protocol::V5],
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'#', 0x03],
        E::InvalidSubscriptionQoS,
        PROTOCOL,
    );
    reject(
        &V3,
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x03],
        E::InvalidSubscriptionQoS,
        PROTOCOL,
    );
}

#[test]
fn error_invalid_retain_handling() {
    // "It is a Protocol Error to send a Retain Handling value of 3" (3.8.3.1).
    reject(
        &[Protocol::V5],
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'#', 0x30],
        E::InvalidRetainHandling,
        PROTOCOL,
    );
}

#[test]
fn error_no_local_on_shared_subscription() {
    // [MQTT-3.8.3-4]
    reject(
        &[Protocol::V5],
        &[
            0x82, 0x10, 0x00, 0x01, 0x00, 0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/',
            b'g', b'/', b'x', 0x04,
        ],
        E::NoLocalOnSharedSubscription,
        PROTOCOL,
    );
}

#[test]
fn error_duplicate_property() {
    // Payload Format Indicator twice in a PUBLISH.
    reject(
        &[Protocol::V5],
        &[0x30, 0x08, 0x00, 0x01, b't', 0x04, 0x01, 0x00, 0x01, 0x01],
        E::DuplicateProperty(0x01),
        PROTOCOL,
    );
    // Receive Maximum twice in a CONNECT: "It is a Protocol Error to include
    // the Receive Maximum value more than once" (3.1.2.11.3).
    reject(
        &ALL,
        &[
            0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00, 0x06, 0x21,
            0x00, 0x01, 0x21, 0x00, 0x02, 0x00, 0x00,
        ],
        E::DuplicateProperty(0x21),
        PROTOCOL,
    );
    // Reason String twice in a PUBACK.
    reject(
        &[Protocol::V5],
        &[
            0x40, 0x0B, 0x00, 0x01, 0x00, 0x07, 0x1F, 0x00, 0x00, 0x1F, 0x00, 0x01, b'x',
        ],
        E::DuplicateProperty(0x1F),
        PROTOCOL,
    );
}

#[test]
fn error_unknown_property() {
    // 0x04 is not a property identifier. An identifier that is not valid
    // for the packet is a Malformed Packet (2.2.2.2).
    reject(
        &[Protocol::V5],
        &[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x04, 0x00],
        E::UnknownProperty(0x04),
        MALFORMED,
    );
    // A two-byte identifier (128).
    reject(
        &[Protocol::V5],
        &[0xE0, 0x04, 0x00, 0x02, 0x80, 0x01],
        E::UnknownProperty(128),
        MALFORMED,
    );
}

#[test]
fn error_property_not_allowed() {
    // Session Expiry Interval in a PUBLISH.
    reject(
        &[Protocol::V5],
        &[
            0x30, 0x09, 0x00, 0x01, b't', 0x05, 0x11, 0x00, 0x00, 0x00, 0x01,
        ],
        E::PropertyNotAllowed {
            property: 0x11,
            packet: PacketType::Publish,
        },
        MALFORMED,
    );
    // Topic Alias in a CONNECT.
    reject(
        &ALL,
        &[
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00, 0x03, 0x23,
            0x00, 0x01, 0x00, 0x00,
        ],
        E::PropertyNotAllowed {
            property: 0x23,
            packet: PacketType::Connect,
        },
        MALFORMED,
    );
    // Will Delay Interval in the CONNECT properties (it belongs to the will).
    reject(
        &ALL,
        &[
            0x10, 0x12, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00, 0x05, 0x18,
            0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
        ],
        E::PropertyNotAllowed {
            property: 0x18,
            packet: PacketType::Connect,
        },
        MALFORMED,
    );
    // Maximum QoS in a PUBREL: the error names PUBREL.
    reject(
        &[Protocol::V5],
        &[0x62, 0x06, 0x00, 0x01, 0x00, 0x02, 0x24, 0x01],
        E::PropertyNotAllowed {
            property: 0x24,
            packet: PacketType::PubRel,
        },
        MALFORMED,
    );
}

#[test]
fn error_invalid_property_value() {
    let connect_v5 = |props: &[u8]| {
        let mut b = vec![0x10, (13 + props.len()) as u8];
        b.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00]);
        b.push(props.len() as u8);
        b.extend_from_slice(props);
        b.extend_from_slice(&[0x00, 0x00]);
        b
    };
    // Receive Maximum 0 (3.1.2.11.3), Maximum Packet Size 0 (3.1.2.11.4).
    reject(
        &ALL,
        &connect_v5(&[0x21, 0x00, 0x00]),
        E::InvalidPropertyValue(0x21),
        PROTOCOL,
    );
    reject(
        &ALL,
        &connect_v5(&[0x27, 0x00, 0x00, 0x00, 0x00]),
        E::InvalidPropertyValue(0x27),
        PROTOCOL,
    );
    // A boolean of 2: Request Problem Information (3.1.2.11.7).
    reject(
        &ALL,
        &connect_v5(&[0x17, 0x02]),
        E::InvalidPropertyValue(0x17),
        PROTOCOL,
    );
    // Maximum QoS 2 in CONNACK (3.2.2.3.4).
    reject(
        &[Protocol::V5],
        &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02],
        E::InvalidPropertyValue(0x24),
        PROTOCOL,
    );
    // Subscription Identifier 0 (3.8.2.1.2).
    reject(
        &[Protocol::V5],
        &[
            0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, b'#', 0x00,
        ],
        E::InvalidPropertyValue(0x0B),
        PROTOCOL,
    );
    // Topic Alias 0 [MQTT-3.3.2-8]: Topic Alias invalid.
    reject(
        &[Protocol::V5],
        &[0x30, 0x07, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x00],
        E::InvalidPropertyValue(0x23),
        ReasonCode::TopicAliasInvalid,
    );
}

#[test]
fn error_invalid_reason_code() {
    let invalid = |code, packet| E::InvalidReasonCode { code, packet };
    // 0x92 belongs to PUBREL and PUBCOMP, not PUBACK.
    reject(
        &[Protocol::V5],
        &[0x40, 0x03, 0x00, 0x01, 0x92],
        invalid(0x92, PacketType::PubAck),
        PROTOCOL,
    );
    reject(
        &[Protocol::V5],
        &[0x62, 0x03, 0x00, 0x01, 0x10],
        invalid(0x10, PacketType::PubRel),
        PROTOCOL,
    );
    // Undefined codes.
    reject(
        &[Protocol::V5],
        &[0x50, 0x03, 0x00, 0x01, 0x03],
        invalid(0x03, PacketType::PubRec),
        PROTOCOL,
    );
    reject(
        &[Protocol::V5],
        &[0xE0, 0x01, 0x01],
        invalid(0x01, PacketType::Disconnect),
        PROTOCOL,
    );
    reject(
        &[Protocol::V5],
        &[0xF0, 0x01, 0x80],
        invalid(0x80, PacketType::Auth),
        PROTOCOL,
    );
    reject(
        &[Protocol::V5],
        &[0x20, 0x03, 0x00, 0x04, 0x00],
        invalid(0x04, PacketType::ConnAck),
        PROTOCOL,
    );
    reject(
        &[Protocol::V5],
        &[0x90, 0x04, 0x00, 0x01, 0x00, 0x11],
        invalid(0x11, PacketType::SubAck),
        PROTOCOL,
    );
    reject(
        &[Protocol::V5],
        &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x01],
        invalid(0x01, PacketType::UnsubAck),
        PROTOCOL,
    );
    // MQTT 3 CONNACK return code 6 and SUBACK return code 3.
    reject(
        &V3,
        &[0x20, 0x02, 0x00, 0x06],
        invalid(0x06, PacketType::ConnAck),
        PROTOCOL,
    );
    reject(
        &V3,
        &[0x90, 0x03, 0x00, 0x01, 0x03],
        invalid(0x03, PacketType::SubAck),
        PROTOCOL,
    );
    reject(
        &V3,
        &[0x90, 0x03, 0x00, 0x01, 0x87],
        invalid(0x87, PacketType::SubAck),
        PROTOCOL,
    );
}

#[test]
fn every_error_has_a_message() {
    let errors = [
        E::MalformedVarInt,
        E::PacketTooLarge { size: 9, max: 8 },
        E::InvalidPacketType(0),
        E::InvalidSubscriptionQoS,
        E::InvalidRetainHandling,
        E::NoTopicFilters,
    ];
    for e in errors {
        assert!(!e.to_string().is_empty());
    }
}
