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

// ---------------------------------------------------------------------------
// The journal itself: damage in the middle is refused, not silently cut.

/// A store of `n` retained messages `r/0` … `r/{n-1}`, one batch and one
/// commit each, as a broker writes them.
fn retained_store(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut store = FjallStore::open(dir.path(), Durability::Sync).unwrap();
    for i in 0..n {
        let topic = TopicName::copy_from_str(&format!("r/{i}")).unwrap();
        store
            .apply(&[StoreOp::RetainedPut {
                topic,
                message: message(),
            }])
            .unwrap();
        store.commit().unwrap();
    }
    dir
}

/// The journal file fjall writes to, and how much of it holds data (fjall
/// preallocates it with zeros).
fn active_journal(dir: &Path) -> (std::path::PathBuf, usize) {
    let mut journals: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .collect();
    journals.sort();
    let path = journals.pop().expect("a journal");
    let bytes = std::fs::read(&path).unwrap();
    let used = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    (path, used)
}

/// Overwrites 4 KiB at 30 % of the journal's data with pseudo-random bytes.
fn damage_journal(dir: &Path) -> (std::path::PathBuf, u64) {
    let (path, used) = active_journal(dir);
    let at = used * 3 / 10;
    let mut bytes = std::fs::read(&path).unwrap();
    let mut x: u32 = 0x2545_f491;
    for b in &mut bytes[at..at + 4096] {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(&path, &bytes).unwrap();
    (path, at as u64)
}

fn retained_topics(dir: &Path) -> Vec<String> {
    let mut store = FjallStore::open(dir, Durability::Sync).unwrap();
    store
        .recover()
        .unwrap()
        .retained
        .into_iter()
        .map(|(t, _)| t.as_str().to_owned())
        .collect()
}

#[test]
fn damage_in_the_middle_of_the_journal_refuses_to_open() {
    const N: usize = 400;
    let dir = retained_store(N);
    let (journal, at) = damage_journal(dir.path());
    let before = std::fs::read(&journal).unwrap();

    let err = FjallStore::open(dir.path(), Durability::Sync).unwrap_err();
    let StoreError::JournalDamaged {
        file,
        offset,
        batches_after,
        records_after,
        ..
    } = &err
    else {
        panic!("expected a damaged journal, got {err:?}");
    };
    assert_eq!(file, &journal);
    // The cut would be at the start of the batch the garbage begins in.
    assert!(
        *offset <= at && at - offset < 200,
        "offset {offset}, damage at {at}"
    );
    // About 70 % of the batches come after the damage, intact.
    assert!(
        (N as u64 * 6 / 10..N as u64 * 7 / 10).contains(batches_after),
        "{batches_after} batches after the damage"
    );
    assert!(*records_after >= *batches_after);
    let text = err.to_string();
    assert!(text.contains(&journal.display().to_string()), "{text}");
    assert!(text.contains(&format!("byte {offset}")), "{text}");
    assert!(text.contains("roost store repair"), "{text}");
    // Refusing changed nothing on disk.
    assert_eq!(std::fs::read(&journal).unwrap(), before);
}

#[test]
fn repair_cuts_the_journal_and_says_what_it_dropped() {
    const N: usize = 400;
    let dir = retained_store(N);
    damage_journal(dir.path());
    let report = FjallStore::repair(dir.path()).unwrap();
    let cut = report.truncated.clone().expect("a truncation");
    assert!(cut.batches > 0 && cut.bytes > 4096, "{report}");
    let text = report.to_string();
    assert!(text.contains(&format!("byte {}", cut.offset)), "{text}");
    assert!(
        text.contains(&format!("{} intact batches", cut.batches)),
        "{text}"
    );

    // What is left is a prefix of the batches, and opens strictly now.
    let topics = retained_topics(dir.path());
    let kept = topics.len();
    let mut expected: Vec<String> = (0..kept).map(|i| format!("r/{i}")).collect();
    expected.sort();
    assert_eq!(topics, expected);
    // The dropped intact batches and at most the few the garbage hit.
    let lost = N - kept;
    assert!(
        lost as u64 >= cut.batches && lost as u64 <= cut.batches + 80,
        "kept {kept}, report {report}"
    );
    // Repairing again finds nothing to do.
    assert!(FjallStore::repair(dir.path()).unwrap().truncated.is_none());
}

#[test]
fn open_with_truncate_repairs_and_reports() {
    let dir = retained_store(100);
    damage_journal(dir.path());
    let store = FjallStore::open_with(
        dir.path(),
        Durability::Sync,
        roost_persistence::Recovery::Truncate,
    )
    .unwrap();
    assert!(store.report().truncated.is_some());
    assert!(!store.report().is_clean());
}

#[test]
fn a_clean_store_reports_nothing() {
    let dir = retained_store(10);
    let store = FjallStore::open(dir.path(), Durability::Sync).unwrap();
    assert!(store.report().is_clean(), "{}", store.report());
}

// ---------------------------------------------------------------------------
// A first start that did not finish.

#[test]
fn an_empty_version_file_without_data_is_created_afresh() {
    let dir = tempfile::tempdir().unwrap();
    // What a first start on a full disk left: fjall's files, a 0-byte
    // version file, a journal of zeros.
    std::fs::write(dir.path().join("version"), b"").unwrap();
    std::fs::write(dir.path().join("lock"), b"").unwrap();
    std::fs::write(dir.path().join("0.jnl"), vec![0; 4096]).unwrap();
    std::fs::create_dir(dir.path().join("keyspaces")).unwrap();
    // Someone else's file in the directory is left alone.
    std::fs::write(dir.path().join("README"), b"mine").unwrap();

    let mut store = FjallStore::open(dir.path(), Durability::Sync).unwrap();
    assert!(store.report().reinitialized, "{}", store.report());
    store
        .apply(&[StoreOp::RetainedPut {
            topic: TopicName::from_static("t"),
            message: message(),
        }])
        .unwrap();
    store.commit().unwrap();
    drop(store);
    assert_eq!(retained_topics(dir.path()), ["t"]);
    assert_eq!(std::fs::read(dir.path().join("README")).unwrap(), b"mine");
}

#[test]
fn a_missing_version_file_without_data_is_created_afresh() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lock"), b"").unwrap();
    std::fs::write(dir.path().join("0.jnl"), vec![0; 4096]).unwrap();
    let store = FjallStore::open(dir.path(), Durability::Sync).unwrap();
    assert!(store.report().reinitialized);
}

#[test]
fn an_empty_version_file_with_data_is_refused() {
    let dir = retained_store(5);
    std::fs::write(dir.path().join("version"), b"").unwrap();
    match FjallStore::open(dir.path(), Durability::Sync) {
        Err(StoreError::Unrecognized { path, what }) => {
            assert_eq!(path, dir.path());
            assert_eq!(what, "the version file is empty");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nothing was deleted: with the version file back, it all opens.
    std::fs::write(dir.path().join("version"), b"FJL\x03").unwrap();
    assert_eq!(retained_topics(dir.path()).len(), 5);
}
