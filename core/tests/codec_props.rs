//! Property tests of the codec: arbitrary valid packets of every type and
//! version round-trip through encode and decode, `encoded_len` is exact, a
//! stream of packets split anywhere decodes to the same packets, arbitrary
//! bytes never panic the decoder, and the size limit holds from the header.
//!
//! `ROOST_WRITE_CORPUS=<dir> cargo test -p roost-core --test codec_props --
//! --ignored` writes the fuzzing seed corpus from the same generators.

use bytes::{Bytes, BytesMut};
use core::num::{NonZeroU16, NonZeroU32};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use proptest::sample::select;
use roost_core::MqttStr;
use roost_core::codec::*;
use roost_core::topic::{TopicFilter, TopicName};

const MAX: usize = 1 << 20;

// ---------------------------------------------------------------- values

/// Any character MQTT strings allow (everything but U+0000), biased towards
/// ASCII and the characters that matter to topics.
fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        1 => select(vec!['/', '+', '#', '$', ' ', 'é', 'ü', '€', '😀', '\u{7F}', '\u{FFFF}']),
        1 => any::<char>().prop_filter("no U+0000", |c| *c != '\0'),
    ]
}

fn text(max: usize) -> impl Strategy<Value = String> {
    vec(any_char(), 0..max).prop_map(|cs| cs.into_iter().collect())
}

fn mqtt_str() -> impl Strategy<Value = MqttStr> {
    text(12).prop_map(|t| MqttStr::copy_from_str(&t).unwrap())
}

fn bin() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

/// A level of a topic name: no wildcards, no `/`.
fn level() -> impl Strategy<Value = String> {
    vec(any_char(), 0..6).prop_map(|cs| {
        cs.into_iter()
            .filter(|c| !matches!(c, '/' | '+' | '#'))
            .collect()
    })
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    (any::<bool>(), vec(level(), 1..4)).prop_filter_map("empty topic", |(sys, levels)| {
        let mut t = levels.join("/");
        if sys {
            t.insert_str(0, "$SYS/");
        }
        TopicName::copy_from_str(&t).ok()
    })
}

fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let filter_level = prop_oneof![3 => level(), 1 => Just("+".to_owned())];
    (
        vec(filter_level, 1..4),
        any::<bool>(),
        of(level().prop_filter("share name", |l| !l.is_empty())),
    )
        .prop_filter_map("invalid filter", |(levels, hash, share)| {
            let mut f = levels.join("/");
            if hash {
                f.push_str("/#");
            }
            if let Some(name) = share {
                f = format!("$share/{name}/{f}");
            }
            TopicFilter::copy_from_str(&f).ok()
        })
}

fn pid() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|v| PacketId::new(v).unwrap())
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn nz16() -> impl Strategy<Value = NonZeroU16> {
    (1..=u16::MAX).prop_map(|v| NonZeroU16::new(v).unwrap())
}

fn nz32() -> impl Strategy<Value = NonZeroU32> {
    (1..=u32::MAX).prop_map(|v| NonZeroU32::new(v).unwrap())
}

/// A subscription identifier: 1 to 268,435,455, biased to the encoding
/// boundaries of variable byte integers.
fn sub_id() -> impl Strategy<Value = NonZeroU32> {
    prop_oneof![
        select(vec![
            1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX_VARINT
        ]),
        1..=MAX_VARINT,
    ]
    .prop_map(|v| NonZeroU32::new(v).unwrap())
}

fn users() -> impl Strategy<Value = Vec<UserProperty>> {
    vec(
        (mqtt_str(), mqtt_str()).prop_map(|(name, value)| UserProperty { name, value }),
        0..3,
    )
}

fn reason(packet: PacketType) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<ReasonCode> = (0..=255u8)
        .filter_map(ReasonCode::from_u8)
        .filter(|c| c.allowed_in(packet))
        .collect();
    select(codes)
}

/// `strategy` in MQTT 5, the default (no properties) before.
fn v5_only<T: Default + Clone + core::fmt::Debug + 'static>(
    protocol: Protocol,
    strategy: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if protocol == Protocol::V5 {
        strategy.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

// ---------------------------------------------------------------- properties

fn connect_props() -> impl Strategy<Value = ConnectProperties> {
    (
        of(any::<u32>()),
        of(nz16()),
        of(nz32()),
        of(any::<u16>()),
        of(any::<bool>()),
        of(any::<bool>()),
        of(mqtt_str()),
        of(bin()),
        users(),
    )
        .prop_map(
            |(se, rm, mps, tam, rri, rpi, am, ad, up)| ConnectProperties {
                session_expiry_interval: se,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                authentication_method: am,
                authentication_data: ad,
                user_properties: up,
            },
        )
}

fn will_props() -> impl Strategy<Value = WillProperties> {
    (
        of(any::<u32>()),
        of(any::<bool>()),
        of(any::<u32>()),
        of(mqtt_str()),
        of(topic_name()),
        of(bin()),
        users(),
    )
        .prop_map(|(wd, pf, me, ct, rt, cd, up)| WillProperties {
            will_delay_interval: wd,
            payload_format_indicator: pf,
            message_expiry_interval: me,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        })
}

fn connack_props() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            of(any::<u32>()),
            of(nz16()),
            of(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
            of(any::<bool>()),
            of(nz32()),
            of(mqtt_str()),
            of(any::<u16>()),
            of(mqtt_str()),
        ),
        (
            of(any::<bool>()),
            of(any::<bool>()),
            of(any::<bool>()),
            of(any::<u16>()),
            of(mqtt_str()),
            of(mqtt_str()),
            of(mqtt_str()),
            of(bin()),
            users(),
        ),
    )
        .prop_map(
            |((se, rm, mq, ra, mps, aci, tam, rs), (wsa, sia, ssa, ska, ri, sr, am, ad, up))| {
                ConnAckProperties {
                    session_expiry_interval: se,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                    user_properties: up,
                }
            },
        )
}

fn publish_props() -> impl Strategy<Value = PublishProperties> {
    (
        of(any::<bool>()),
        of(any::<u32>()),
        of(nz16()),
        of(topic_name()),
        of(bin()),
        vec(sub_id(), 0..3),
        of(mqtt_str()),
        users(),
    )
        .prop_map(|(pf, me, ta, rt, cd, si, ct, up)| PublishProperties {
            payload_format_indicator: pf,
            message_expiry_interval: me,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            subscription_identifiers: si,
            content_type: ct,
            user_properties: up,
        })
}

fn ack_props() -> impl Strategy<Value = AckProperties> {
    (of(mqtt_str()), users()).prop_map(|(rs, up)| AckProperties {
        reason_string: rs,
        user_properties: up,
    })
}

// ---------------------------------------------------------------- packets

fn connect(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let will = (
        topic_name(),
        bin(),
        qos(),
        any::<bool>(),
        v5_only(protocol, will_props()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        mqtt_str(),
        of(will),
        of(mqtt_str()),
        of(bin()),
        v5_only(protocol, connect_props()),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // MQTT 3 forbids a password without a user name.
                let password = if protocol != Protocol::V5 && username.is_none() {
                    None
                } else {
                    password
                };
                Packet::Connect(Box::new(Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let reason = if protocol == Protocol::V5 {
        reason(PacketType::ConnAck).boxed()
    } else {
        (0..=5u8)
            .prop_map(|c| ReasonCode::from_v3_connack(c).unwrap())
            .boxed()
    };
    (any::<bool>(), reason, v5_only(protocol, connack_props())).prop_map(
        |(session_present, reason, properties)| {
            Packet::ConnAck(Box::new(ConnAck {
                session_present,
                reason,
                properties,
            }))
        },
    )
}

fn publish(protocol: Protocol) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        pid(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        vec(any::<u8>(), 0..64),
        v5_only(protocol, publish_props()),
    )
        .prop_map(
            move |(dup, qos, id, retain, topic, alias_only, payload, properties)| {
                let qos = QosPid::new(qos, id);
                // Only an MQTT 5 PUBLISH with a topic alias may leave out
                // the topic name.
                let topic = if alias_only && properties.topic_alias.is_some() {
                    TopicName::default()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && qos != QosPid::AtMostOnce,
                    qos,
                    retain,
                    topic,
                    payload: Bytes::from(payload),
                    properties,
                })
            },
        )
}

fn pub_response(protocol: Protocol) -> impl Strategy<Value = Packet> {
    select(vec![
        PacketType::PubAck,
        PacketType::PubRec,
        PacketType::PubRel,
        PacketType::PubComp,
    ])
    .prop_flat_map(move |kind| {
        let reason = if protocol == Protocol::V5 {
            reason(kind).boxed()
        } else {
            Just(ReasonCode::Success).boxed()
        };
        (pid(), reason, v5_only(protocol, ack_props())).prop_map(
            move |(packet_id, reason, properties)| {
                let r = PubResponse {
                    packet_id,
                    reason,
                    properties,
                };
                match kind {
                    PacketType::PubAck => Packet::PubAck(r),
                    PacketType::PubRec => Packet::PubRec(r),
                    PacketType::PubRel => Packet::PubRel(r),
                    _ => Packet::PubComp(r),
                }
            },
        )
    })
}

fn subscribe(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let options = (
        qos(),
        any::<bool>(),
        any::<bool>(),
        select(vec![
            RetainHandling::SendOnSubscribe,
            RetainHandling::SendIfNew,
            RetainHandling::DoNotSend,
        ]),
    );
    let subscription = (topic_filter(), options).prop_map(move |(filter, (qos, nl, rap, rh))| {
        let v5 = protocol == Protocol::V5;
        let shared = filter.as_str().starts_with("$share/");
        Subscription {
            filter,
            options: SubscriptionOptions {
                qos,
                // No Local is a Protocol Error on a shared subscription.
                no_local: v5 && nl && !shared,
                retain_as_published: v5 && rap,
                retain_handling: if v5 { rh } else { RetainHandling::default() },
            },
        }
    });
    let properties = (of(sub_id()), users()).prop_map(|(id, up)| SubscribeProperties {
        subscription_identifier: id,
        user_properties: up,
    });
    (
        pid(),
        vec(subscription, 1..4),
        v5_only(protocol, properties),
    )
        .prop_map(|(packet_id, subscriptions, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                subscriptions,
                properties,
            })
        })
}

fn suback(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let reason = if protocol == Protocol::V5 {
        reason(PacketType::SubAck).boxed()
    } else {
        select(vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ])
        .boxed()
    };
    (pid(), vec(reason, 1..5), v5_only(protocol, ack_props())).prop_map(
        |(packet_id, reasons, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reasons,
                properties,
            })
        },
    )
}

fn unsubscribe(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let properties = users().prop_map(|up| UnsubscribeProperties {
        user_properties: up,
    });
    (
        pid(),
        vec(topic_filter(), 1..4),
        v5_only(protocol, properties),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

fn unsuback(protocol: Protocol) -> impl Strategy<Value = Packet> {
    // MQTT 3 UNSUBACK carries no reason codes.
    let reasons = if protocol == Protocol::V5 {
        vec(reason(PacketType::UnsubAck), 1..5).boxed()
    } else {
        Just(vec![]).boxed()
    };
    (pid(), reasons, v5_only(protocol, ack_props())).prop_map(|(packet_id, reasons, properties)| {
        Packet::UnsubAck(UnsubAck {
            packet_id,
            reasons,
            properties,
        })
    })
}

fn disconnect(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let reason = if protocol == Protocol::V5 {
        reason(PacketType::Disconnect).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    let properties =
        (of(any::<u32>()), of(mqtt_str()), of(mqtt_str()), users()).prop_map(|(se, rs, sr, up)| {
            DisconnectProperties {
                session_expiry_interval: se,
                reason_string: rs,
                server_reference: sr,
                user_properties: up,
            }
        });
    (reason, v5_only(protocol, properties))
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
}

fn auth() -> impl Strategy<Value = Packet> {
    let properties =
        (of(mqtt_str()), of(bin()), of(mqtt_str()), users()).prop_map(|(am, ad, rs, up)| {
            AuthProperties {
                authentication_method: am,
                authentication_data: ad,
                reason_string: rs,
                user_properties: up,
            }
        });
    (reason(PacketType::Auth), properties)
        .prop_map(|(reason, properties)| Packet::Auth(Box::new(Auth { reason, properties })))
}

/// Any valid packet of `protocol`.
fn packet(protocol: Protocol) -> BoxedStrategy<Packet> {
    let mut all = vec![
        connect(protocol).boxed(),
        connack(protocol).boxed(),
        publish(protocol).boxed(),
        publish(protocol).boxed(),
        pub_response(protocol).boxed(),
        subscribe(protocol).boxed(),
        suback(protocol).boxed(),
        unsubscribe(protocol).boxed(),
        unsuback(protocol).boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(protocol).boxed(),
    ];
    if protocol == Protocol::V5 {
        all.push(auth().boxed());
    }
    proptest::strategy::Union::new(all).boxed()
}

fn protocol() -> impl Strategy<Value = Protocol> {
    select(vec![Protocol::V3_1, Protocol::V3_1_1, Protocol::V5])
}

fn protocol_and_packet() -> impl Strategy<Value = (Protocol, Packet)> {
    protocol().prop_flat_map(|p| (Just(p), packet(p)))
}

fn protocol_and_packets(max: usize) -> impl Strategy<Value = (Protocol, Vec<Packet>)> {
    protocol().prop_flat_map(move |p| (Just(p), vec(packet(p), 1..max)))
}

fn encode(packet: &Packet, protocol: Protocol) -> BytesMut {
    let mut buf = BytesMut::new();
    packet.encode(protocol, &mut buf).unwrap();
    buf
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_gives_the_same_packet((protocol, packet) in protocol_and_packet()) {
        let bytes = encode(&packet, protocol);
        prop_assert_eq!(bytes.len(), packet.encoded_len(protocol));
        let mut buf = bytes.clone();
        let decoded = decode(&mut buf, protocol, MAX).unwrap();
        prop_assert_eq!(decoded.as_ref(), Some(&packet));
        prop_assert!(buf.is_empty());
        let frozen = bytes.freeze();
        let (again, n) = decode_slice(&frozen, protocol, MAX).unwrap().unwrap();
        prop_assert_eq!(again, packet);
        prop_assert_eq!(n, frozen.len());
    }

    #[test]
    fn encoded_len_is_exact_when_appending((protocol, packet) in protocol_and_packet(),
                                            prefix in vec(any::<u8>(), 0..8)) {
        let mut buf = BytesMut::from(&prefix[..]);
        packet.encode(protocol, &mut buf).unwrap();
        prop_assert_eq!(buf.len(), prefix.len() + packet.encoded_len(protocol));
        prop_assert_eq!(&buf[..prefix.len()], &prefix[..]);
    }

    #[test]
    fn a_stream_split_anywhere_decodes_to_the_same_packets(
        (protocol, packets) in protocol_and_packets(6),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = BytesMut::new();
        for p in &packets {
            p.encode(protocol, &mut stream).unwrap();
        }
        let stream = stream.freeze();
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();

        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut start = 0;
        for cut in cuts {
            buf.extend_from_slice(&stream[start..cut]);
            start = cut;
            while let Some(p) = decode(&mut buf, protocol, MAX).unwrap() {
                decoded.push(p);
            }
        }
        prop_assert_eq!(decoded, packets);
        prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
    }

    #[test]
    fn oversize_packets_are_refused_once_the_header_is_complete(
        (protocol, packet) in protocol_and_packet(),
        max_seed in any::<prop::sample::Index>(),
        extra in any::<prop::sample::Index>(),
    ) {
        let bytes = encode(&packet, protocol).freeze();
        let header = FrameHeader::decode(&bytes, protocol, MAX).unwrap().unwrap();
        prop_assert_eq!(header.total_len(), bytes.len());
        // Any maximum below the size, and any prefix holding the header.
        let max = max_seed.index(bytes.len());
        let end = header.header_len + extra.index(bytes.len() - header.header_len + 1);
        let too_large = DecodeError::PacketTooLarge { size: bytes.len(), max };
        let mut buf = BytesMut::from(&bytes[..end]);
        prop_assert_eq!(decode(&mut buf, protocol, max), Err(too_large));
        prop_assert_eq!(decode_slice(&bytes.slice(..end), protocol, max), Err(too_large));
        prop_assert_eq!(FrameHeader::decode(&bytes[..end], protocol, max), Err(too_large));
        // At exactly the size it is accepted.
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decode(&mut buf, protocol, bytes.len()), Ok(Some(packet)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..256)) {
        for protocol in [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5] {
            let input = Bytes::from(data.clone());
            if let Ok(Some((_, n))) = decode_slice(&input, protocol, MAX) {
                prop_assert!(n <= input.len());
            }
            let mut buf = BytesMut::from(&data[..]);
            let before = buf.len();
            if let Ok(Some(packet)) = decode(&mut buf, protocol, MAX) {
                // `split_to` cannot take more than the buffer held, so the
                // packet's own size is the thing to check: at least a
                // fixed header, and re-encoding needs no more bytes.
                let consumed = before - buf.len();
                prop_assert!(consumed >= 2);
                prop_assert!(packet.encoded_len(protocol) <= consumed);
            }
        }
        // And the full self-check of the fuzz target.
        fuzz_decode(&data);
    }

    #[test]
    fn mutated_packets_never_panic(
        (protocol, packets) in protocol_and_packets(3),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        truncate in any::<prop::sample::Index>(),
    ) {
        let mut stream = BytesMut::new();
        for p in &packets {
            p.encode(protocol, &mut stream).unwrap();
        }
        for (at, byte) in edits {
            let i = at.index(stream.len());
            stream[i] = byte;
        }
        let end = truncate.index(stream.len() + 1).max(stream.len() / 2);
        fuzz_decode(&stream[..end]);
    }
}

// ---------------------------------------------------------------- seed corpus

/// Writes `n` files of one to four encoded packets each into the directory
/// named by `ROOST_WRITE_CORPUS`, from a fixed seed.
#[test]
#[ignore = "writes the fuzzing seed corpus; run by hand"]
fn write_seed_corpus() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let Some(dir) = std::env::var_os("ROOST_WRITE_CORPUS") else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    let mut runner = TestRunner::deterministic();
    let strategy = protocol_and_packets(5);
    for i in 0..240 {
        let (protocol, packets) = strategy.new_tree(&mut runner).unwrap().current();
        let mut stream = BytesMut::new();
        for p in &packets {
            p.encode(protocol, &mut stream).unwrap();
        }
        std::fs::write(dir.join(format!("gen-{i:03}")), &stream).unwrap();
    }
}
