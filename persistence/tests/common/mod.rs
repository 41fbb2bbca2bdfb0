//! Operations to feed stores, and the reference they are checked against.
#![allow(dead_code)] // each test binary uses part of it

use bytes::Bytes;
use proptest::prelude::*;
use roost_core::MqttStr;
use roost_core::broker::{Recovered, StoreOp, StoredMessage};
use roost_core::codec::{
    PacketId, PublishProperties, QoS, RetainHandling, SubscriptionOptions, UserProperty,
};
use roost_core::topic::{TopicFilter, TopicName};
use std::num::NonZeroU32;

/// A few of each, so operations keep hitting the same sessions and keys.
const CLIENTS: &[&str] = &["a", "b", "client-with-a-longer-id", "ü"];
const TOPICS: &[&str] = &["t/1", "t/2", "x", "$SYS/load"];
const FILTERS: &[&str] = &["t/+", "#", "t/1", "$share/g/t/1"];

fn client_id() -> impl Strategy<Value = MqttStr> {
    prop::sample::select(CLIENTS).prop_map(MqttStr::from_static)
}

fn topic() -> impl Strategy<Value = TopicName> {
    prop::sample::select(TOPICS).prop_map(TopicName::from_static)
}

fn filter() -> impl Strategy<Value = TopicFilter> {
    prop::sample::select(FILTERS).prop_map(TopicFilter::from_static)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn sub_id() -> impl Strategy<Value = NonZeroU32> {
    (1u32..=268_435_455).prop_map(|v| NonZeroU32::new(v).unwrap())
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    prop_oneof![Just(1u16), Just(2), Just(65535)].prop_map(|v| PacketId::new(v).unwrap())
}

fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..4, Just(u64::MAX)]
}

fn properties() -> impl Strategy<Value = PublishProperties> {
    (
        any::<Option<bool>>(),
        any::<Option<u32>>(),
        prop::option::of(topic()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        prop::collection::vec(sub_id(), 0..2),
        prop::option::of(Just(MqttStr::from_static("text/plain"))),
        prop::collection::vec(("[a-z]{0,3}", "[a-zé]{0,3}"), 0..2),
    )
        .prop_map(|(pfi, expiry, response, correlation, ids, content, user)| {
            PublishProperties {
                payload_format_indicator: pfi,
                message_expiry_interval: expiry,
                response_topic: response,
                correlation_data: correlation.map(Bytes::from),
                subscription_identifiers: ids,
                content_type: content,
                user_properties: user
                    .into_iter()
                    .map(|(n, v)| UserProperty {
                        name: MqttStr::copy_from_str(&n).unwrap(),
                        value: MqttStr::copy_from_str(&v).unwrap(),
                    })
                    .collect(),
                ..PublishProperties::default()
            }
        })
}

pub fn message() -> impl Strategy<Value = StoredMessage> {
    (
        topic(),
        prop::collection::vec(any::<u8>(), 0..64),
        qos(),
        any::<bool>(),
        properties(),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| StoredMessage {
            topic,
            payload: Bytes::from(payload),
            qos,
            retain,
            properties,
        })
}

fn options() -> impl Strategy<Value = SubscriptionOptions> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(RetainHandling::SendOnSubscribe),
            Just(RetainHandling::SendIfNew),
            Just(RetainHandling::DoNotSend)
        ],
    )
        .prop_map(|(qos, no_local, retain_as_published, retain_handling)| {
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            }
        })
}

/// A session owner: unknown, anonymous, or a user, on a few classes.
pub fn owner() -> impl Strategy<Value = Option<roost_core::broker::SessionOwner>> {
    prop::option::of(
        (0u16..3, prop::option::of(client_id()))
            .prop_map(|(class, username)| roost_core::broker::SessionOwner { class, username }),
    )
}

/// Any valid operation, deletes of missing things included.
pub fn op() -> impl Strategy<Value = StoreOp> {
    prop_oneof![
        3 => (client_id(), prop_oneof![Just(0u32), Just(60), Just(u32::MAX)], owner())
            .prop_map(|(client_id, expiry_interval, owner)| StoreOp::SessionPut {
                client_id, expiry_interval, owner,
            }),
        1 => client_id().prop_map(|client_id| StoreOp::SessionDelete { client_id }),
        2 => (client_id(), filter(), options(), prop::option::of(sub_id())).prop_map(
            |(client_id, filter, options, identifier)| StoreOp::SubscriptionPut {
                client_id, filter, options, identifier,
            }
        ),
        1 => (client_id(), filter())
            .prop_map(|(client_id, filter)| StoreOp::SubscriptionDelete { client_id, filter }),
        4 => (client_id(), seq(), prop::collection::vec(sub_id(), 0..3), message()).prop_map(
            |(client_id, seq, subscription_ids, message)| StoreOp::MessagePut {
                client_id, seq, subscription_ids, message,
            }
        ),
        2 => (client_id(), seq(), packet_id(), any::<bool>()).prop_map(
            |(client_id, seq, packet_id, released)| StoreOp::MessageSent {
                client_id, seq, packet_id, released,
            }
        ),
        2 => (client_id(), seq())
            .prop_map(|(client_id, seq)| StoreOp::MessageDelete { client_id, seq }),
        1 => (client_id(), packet_id())
            .prop_map(|(client_id, packet_id)| StoreOp::IncomingPut { client_id, packet_id }),
        1 => (client_id(), packet_id())
            .prop_map(|(client_id, packet_id)| StoreOp::IncomingDelete { client_id, packet_id }),
        2 => (topic(), message())
            .prop_map(|(topic, message)| StoreOp::RetainedPut { topic, message }),
        1 => topic().prop_map(|topic| StoreOp::RetainedDelete { topic }),
    ]
}

/// Batches of operations, as `Action::Store`s carry them.
pub fn batches(max: usize) -> impl Strategy<Value = Vec<Vec<StoreOp>>> {
    prop::collection::vec(prop::collection::vec(op(), 1..6), 1..max)
}

/// Puts `recovered` in the order stores give it back in.
pub fn normalise(mut recovered: Recovered) -> Recovered {
    recovered
        .sessions
        .sort_by(|a, b| a.client_id.cmp(&b.client_id));
    for s in &mut recovered.sessions {
        s.subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
        s.incoming.sort_unstable();
    }
    recovered.retained.sort_by(|a, b| a.0.cmp(&b.0));
    recovered
}

/// What the reference semantics give for `batches`.
pub fn reference<'a>(batches: impl IntoIterator<Item = &'a Vec<StoreOp>>) -> Recovered {
    let mut r = Recovered::default();
    for op in batches.into_iter().flatten() {
        r.apply(op);
    }
    normalise(r)
}

/// The same batches every time, for tests that cannot share a proptest run
/// (a crashing child process and its parent).
pub fn fixed_batches(count: usize) -> Vec<Vec<StoreOp>> {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let batch = prop::collection::vec(op(), 1..6);
    (0..count)
        .map(|_| batch.new_tree(&mut runner).unwrap().current())
        .collect()
}
