//! Decode and encode cost of the packets that dominate traffic: a QoS 1
//! PUBLISH with a 64-byte payload (3.1.1 and 5.0), and a CONNECT with MQTT 5
//! properties.
//!
//! `cargo bench -p roost-core --bench codec`

use bytes::{Bytes, BytesMut};
use core::num::NonZeroU16;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use roost_core::MqttStr;
use roost_core::codec::*;
use roost_core::topic::TopicName;
use std::hint::black_box;

const MAX: usize = 1 << 20;

fn publish_qos1() -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QosPid::AtLeastOnce(PacketId::new(4242).unwrap()),
        retain: false,
        topic: TopicName::from_static("sensors/building-7/floor-3/temperature"),
        payload: Bytes::from_static(&[0x5A; 64]),
        properties: PublishProperties::default(),
    })
}

fn connect_v5() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: MqttStr::from_static("bench-client-0001"),
        will: None,
        username: Some(MqttStr::from_static("user")),
        password: Some(Bytes::from_static(b"secret")),
        properties: ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: NonZeroU16::new(100),
            authentication_method: Some(MqttStr::from_static("SCRAM-SHA-256")),
            user_properties: vec![
                UserProperty {
                    name: MqttStr::from_static("region"),
                    value: MqttStr::from_static("eu-west"),
                },
                UserProperty {
                    name: MqttStr::from_static("app"),
                    value: MqttStr::from_static("roost-bench"),
                },
            ],
            ..Default::default()
        },
    }))
}

fn bench_packet(c: &mut Criterion, name: &str, packet: &Packet, protocol: Protocol) {
    let mut encoded = BytesMut::new();
    packet.encode(protocol, &mut encoded).unwrap();
    let encoded = encoded.freeze();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));

    group.bench_function("decode", |b| {
        // `decode` splits the packet off a BytesMut, as a runtime's read
        // buffer would; refilling it is part of the measured loop.
        let mut buf = BytesMut::with_capacity(encoded.len());
        b.iter(|| {
            buf.extend_from_slice(&encoded);
            let packet = decode(black_box(&mut buf), protocol, MAX).unwrap().unwrap();
            black_box(packet)
        })
    });
    group.bench_function("decode_slice", |b| {
        b.iter(|| {
            let (packet, n) = decode_slice(black_box(&encoded), protocol, MAX)
                .unwrap()
                .unwrap();
            black_box((packet, n))
        })
    });
    group.bench_function("encode", |b| {
        // Into a reused buffer, as the engine does.
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            black_box(packet).encode(protocol, &mut buf).unwrap();
            black_box(buf.len())
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    bench_packet(
        c,
        "publish_qos1_64B_v3.1.1",
        &publish_qos1(),
        Protocol::V3_1_1,
    );
    bench_packet(c, "publish_qos1_64B_v5", &publish_qos1(), Protocol::V5);
    bench_packet(c, "connect_v5_props", &connect_v5(), Protocol::V5);
}

criterion_group!(benches, codec);
criterion_main!(benches);
