//! Group commit on `FjallStore`: each iteration stages N batches of one
//! QoS 1 message (64-byte payload, one batch per PUBLISH, as the engine
//! emits them) and commits once. Throughput is in messages; commits per
//! second is 1 / time per iteration.
//!
//! `cargo bench -p roost-persistence --bench store -- --warm-up-time 1 --measurement-time 3`
//!
//! The `sync` numbers are bound by the fsync of the disk under the temp
//! directory; `periodic` commits never wait for it.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use roost_core::MqttStr;
use roost_core::broker::{StoreOp, StoredMessage};
use roost_core::codec::{PublishProperties, QoS};
use roost_core::topic::TopicName;
use roost_persistence::{Durability, FjallStore, Store};

fn message() -> StoredMessage {
    StoredMessage {
        topic: TopicName::from_static("sensors/building-7/floor-3/temperature"),
        payload: Bytes::from_static(&[0x5A; 64]),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: PublishProperties::default(),
    }
}

fn group_commit(c: &mut Criterion) {
    let client_id = MqttStr::from_static("bench-subscriber-0001");
    let message = message();
    for (name, durability) in [
        ("sync", Durability::Sync),
        ("periodic", Durability::Periodic),
    ] {
        let mut group = c.benchmark_group(format!("fjall_group_commit_{name}"));
        for per_commit in [1u64, 10, 100] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = FjallStore::open(dir.path(), durability).unwrap();
            store
                .apply(&[StoreOp::SessionPut {
                    client_id: client_id.clone(),
                    expiry_interval: u32::MAX,
                    owner: None,
                }])
                .unwrap();
            store.commit().unwrap();
            let mut seq = 0u64;
            group.throughput(Throughput::Elements(per_commit));
            group.bench_function(BenchmarkId::new("messages_per_commit", per_commit), |b| {
                b.iter(|| {
                    for _ in 0..per_commit {
                        seq += 1;
                        store
                            .apply(&[StoreOp::MessagePut {
                                client_id: client_id.clone(),
                                seq,
                                subscription_ids: Vec::new(),
                                message: message.clone(),
                            }])
                            .unwrap();
                    }
                    store.commit().unwrap();
                });
            });
        }
        group.finish();
    }
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
