//! Byte-exact vectors from the specifications' figures, a first set; the
//! exhaustive per-packet vectors live in `codec_vectors.rs`.

use bytes::{Bytes, BytesMut};
use roost_core::codec::*;

fn roundtrip(bytes: &[u8], protocol: Protocol) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, protocol, 1 << 20).unwrap().unwrap();
    assert!(buf.is_empty(), "decode left bytes behind");
    let mut out = BytesMut::new();
    packet.encode(protocol, &mut out).unwrap();
    assert_eq!(&out[..], bytes, "re-encoding differs");
    assert_eq!(packet.encoded_len(protocol), bytes.len());
    packet
}

#[test]
fn connect_example_of_mqtt_3_1_1_section_3_1() {
    // Figure 3.6 header with keep alive 10, clean session, client id "abc".
    let bytes = [
        0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0A, 0x00, 0x03, b'a',
        b'b', b'c',
    ];
    let Packet::Connect(c) = roundtrip(&bytes, Protocol::V3_1_1) else {
        panic!("not a CONNECT")
    };
    assert_eq!(c.protocol, Protocol::V3_1_1);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 10);
    assert_eq!(c.client_id, "abc");
}

#[test]
fn publish_qos1_v5_with_properties() {
    let bytes = [
        0x32, 0x0E, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, 0x05, 0x02, 0x00, 0x00, 0x00, 0x3C,
        b'h',
    ];
    let Packet::Publish(p) = roundtrip(&bytes, Protocol::V5) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(p.topic.as_str(), "a/b");
    assert_eq!(p.qos, QosPid::AtLeastOnce(PacketId::new(10).unwrap()));
    assert_eq!(p.properties.message_expiry_interval, Some(60));
    assert_eq!(&p.payload[..], b"h");
}

#[test]
fn oversize_packet_is_refused_from_its_header() {
    // Announces 2 MiB; only the header has arrived.
    let buf = Bytes::from_static(&[0x30, 0x80, 0x80, 0x80, 0x01]);
    assert!(matches!(
        decode_slice(&buf, Protocol::V3_1_1, 1024),
        Err(DecodeError::PacketTooLarge { .. })
    ));
}
