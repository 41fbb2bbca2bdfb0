//! Damaged records are reported, never a panic.

use bytes::Bytes;
use fjall::{Database, KeyspaceCreateOptions};
use proptest::prelude::*;
use roost_core::MqttStr;
use roost_core::broker::{StoreOp, StoredMessage};
use roost_core::codec::{PublishProperties, QoS};
use roost_core::topic::TopicName;
use roost_persistence::{Durability, FjallStore, Store, StoreError};
use std::path::Path;

fn message() -> StoredMessage {
    StoredMessage {
        topic: TopicName::from_static("t"),
        payload: Bytes::from_static(b"payload"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: PublishProperties::default(),
    }
}

/// A store holding one of every kind of record.
fn populated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut store = FjallStore::open(dir.path(), Durability::Sync).unwrap();
    let client_id = MqttStr::from_static("c");
    store
        .apply(&[
            StoreOp::SessionPut {
                client_id: client_id.clone(),
                expiry_interval: 10,
                owner: Some(roost_core::broker::SessionOwner {
                    class: 1,
                    username: Some(MqttStr::from_static("u")),
                }),
            },
            StoreOp::SubscriptionPut {
                client_id: client_id.clone(),
                filter: roost_core::topic::TopicFilter::from_static("t/#"),
                options: Default::default(),
                identifier: None,
            },
            StoreOp::MessagePut {
                client_id: client_id.clone(),
                seq: 1,
                subscription_ids: vec![],
                message: message(),
            },
            StoreOp::MessageSent {
                client_id: client_id.clone(),
                seq: 1,
                packet_id: roost_core::codec::PacketId::MIN,
                released: false,
            },
            StoreOp::IncomingPut {
                client_id,
                packet_id: roost_core::codec::PacketId::MIN,
            },
            StoreOp::RetainedPut {
                topic: TopicName::from_static("t"),
                message: message(),
            },
        ])
        .unwrap();
    store.commit().unwrap();
    dir
}

/// Replaces the value of every record in `keyspace` (or the key, if
/// `key` is given), behind the store's back.
fn tamper(dir: &Path, keyspace: &str, key: Option<&[u8]>, value: &[u8]) -> Vec<u8> {
    let db = Database::builder(dir).open().unwrap();
    let ks = db
        .keyspace(keyspace, KeyspaceCreateOptions::default)
        .unwrap();
    let old: Vec<_> = ks.iter().map(|g| g.key().unwrap().to_vec()).collect();
    assert!(!old.is_empty(), "nothing in {keyspace}");
    let mut batch = db.batch();
    for k in &old {
        match key {
            Some(new) => {
                batch.remove(&ks, k.clone());
                batch.insert(&ks, new.to_vec(), value.to_vec());
            }
            None => batch.insert(&ks, k.clone(), value.to_vec()),
        }
    }
    batch.commit().unwrap();
    db.persist(fjall::PersistMode::SyncAll).unwrap();
    key.map_or_else(|| old[0].clone(), <[u8]>::to_vec)
}

fn recover(dir: &Path) -> Result<roost_core::broker::Recovered, StoreError> {
    FjallStore::open(dir, Durability::Sync)?.recover()
}

#[test]
fn damaged_message_names_its_key() {
    let dir = populated();
    let key = tamper(
        dir.path(),
        "messages",
        None,
        &[1, 0, 0, 0, 0, 0, 0, 0, 3, 0x30],
    );
    match recover(dir.path()) {
        Err(StoreError::Corrupt {
            keyspace: "messages",
            key: k,
            ..
        }) => assert_eq!(&k[..], &key[..]),
        other => panic!("expected a corrupt message, got {other:?}"),
    }
    let text = recover(dir.path()).unwrap_err().to_string();
    assert!(text.contains("corrupt record in messages at key"), "{text}");
}

#[test]
fn damaged_session_fails_open() {
    let dir = populated();
    tamper(dir.path(), "sessions", None, &[1, 2, 3]);
    assert!(matches!(
        FjallStore::open(dir.path(), Durability::Sync),
        Err(StoreError::Corrupt {
            keyspace: "sessions",
            ..
        })
    ));
}

#[test]
fn unknown_format_version_is_corrupt() {
    let dir = populated();
    tamper(dir.path(), "retained", None, &[2, 0, 0, 0, 0]);
    match recover(dir.path()) {
        Err(StoreError::Corrupt {
            keyspace: "retained",
            reason,
            ..
        }) => assert_eq!(reason, "unknown format version"),
        other => panic!("expected a corrupt retained message, got {other:?}"),
    }
}

#[test]
fn short_key_is_corrupt() {
    let dir = populated();
    tamper(dir.path(), "incoming", Some(b"abc"), &[1]);
    assert!(matches!(
        recover(dir.path()),
        Err(StoreError::Corrupt {
            keyspace: "incoming",
            ..
        })
    ));
}

const KEYSPACES: &[&str] = &[
    "sessions",
    "subscriptions",
    "messages",
    "sent",
    "incoming",
    "retained",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any bytes in place of any record: an error or (if the bytes happen
    /// to be valid) a recovery, never a panic.
    #[test]
    fn garbage_never_panics(
        keyspace in prop::sample::select(KEYSPACES),
        value in prop::collection::vec(any::<u8>(), 0..40),
        first in prop::option::of(0u8..3),
    ) {
        let dir = populated();
        let mut value = value;
        // Mostly a valid format byte, so decoding gets past it.
        if let Some(b) = first {
            value.insert(0, b);
        }
        tamper(dir.path(), keyspace, None, &value);
        match recover(dir.path()) {
            Ok(_) | Err(StoreError::Corrupt { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}
