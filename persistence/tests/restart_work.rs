//! A restart's work follows the live data, not the write history.
//!
//! Each run is a process that opens the store (as the broker does at
//! start: open, then `recover`), writes messages to a persistent session,
//! has them all acknowledged (deleted), commits, and dies without warning
//! (`abort`: no destructor, no flush). After few runs and after many, the
//! store holds the same live data (one session, no messages), so what the
//! next start must read — fjall's journal, which `open` checks and fjall
//! replays — must not have grown with the number of runs or of messages
//! already acknowledged.
//!
//! Work is measured in bytes (journal files a start reads), never in time.
//!
//! fjall 3.1 keeps appending to the same journal file across restarts and
//! starts a new one only when a flush finds it past 64 MB (its
//! `worker_pool.rs`), so every start used to replay, and `open` first
//! check, everything written since the last rotation, acknowledged and
//! deleted messages included: 5.3 MB after 2 runs, 21.1 MB after 8 here.
//! `FjallStore::open` now seals the journal it finds (see `seal_journal`),
//! so a start reads what was written since the previous start: 2.6 MB
//! after 2 runs and after 8. The bound allows one run whose sealed journal
//! fjall had not flushed and deleted yet when the run died.

use bytes::Bytes;
use roost_core::MqttStr;
use roost_core::broker::{StoreOp, StoredMessage};
use roost_core::codec::{PacketId, QoS};
use roost_core::topic::TopicName;
use roost_persistence::{Durability, FjallStore, Store};
use std::path::Path;
use std::process::Command;

/// Tells a re-invoked test binary to be one run: `RUN:DIR`.
const CHILD: &str = "ROOST_PERSISTENCE_RESTART_CHILD";
/// Messages each run writes and acknowledges.
const MESSAGES: u64 = 2_000;
const PAYLOAD: usize = 1_024;

fn client() -> MqttStr {
    MqttStr::from_static("subscriber")
}

/// One run: open and recover, then put, send and delete `MESSAGES`
/// messages in batches, committing each; then die.
fn run_child(spec: &str) -> ! {
    let (run, dir) = spec.split_once(':').expect("RUN:DIR");
    let run: u64 = run.parse().expect("run");
    let mut store = FjallStore::open(dir, Durability::Sync).expect("open");
    let recovered = store.recover().expect("recover");
    if run > 0 {
        let session = recovered.sessions.iter().find(|s| s.client_id == client());
        assert!(
            session.is_some_and(|s| s.messages.is_empty()),
            "live data changed"
        );
    }
    store
        .apply(&[StoreOp::SessionPut {
            client_id: client(),
            expiry_interval: u32::MAX,
            owner: None,
        }])
        .expect("apply");
    store.commit().expect("commit");
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    for i in 0..MESSAGES {
        let seq = run * MESSAGES + i;
        let packet_id = PacketId::new((i % 65_535 + 1) as u16).expect("id");
        let message = StoredMessage {
            topic: TopicName::from_static("t"),
            payload: payload.clone(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        };
        let ops = [
            StoreOp::MessagePut {
                client_id: client(),
                seq,
                subscription_ids: Vec::new(),
                message,
            },
            StoreOp::MessageSent {
                client_id: client(),
                seq,
                packet_id,
                released: false,
            },
        ];
        store.apply(&ops).expect("apply");
        store
            .apply(&[StoreOp::MessageDelete {
                client_id: client(),
                seq,
            }])
            .expect("apply");
        if i % 50 == 49 {
            store.commit().expect("commit");
        }
    }
    store.commit().expect("commit");
    std::process::abort();
}

/// Bytes of journal files in the store: what the next start reads.
fn journal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".jnl"))
        .map(|e| e.metadata().expect("metadata").len())
        .sum()
}

/// Runs `runs` runs on a fresh store; the journal bytes a start then reads.
fn after_runs(runs: u64) -> u64 {
    let dir = tempfile::tempdir().expect("temp dir");
    for run in 0..runs {
        let status = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "restart_reads_what_is_live_not_what_was_written",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, format!("{run}:{}", dir.path().display()))
            .status()
            .expect("run child");
        assert!(!status.success(), "run {run} was meant to abort");
    }
    let bytes = journal_bytes(dir.path());
    // The store still opens and holds what is live.
    let mut store = FjallStore::open(dir.path(), Durability::Sync).expect("open");
    let recovered = store.recover().expect("recover");
    assert_eq!(recovered.sessions.len(), 1);
    assert!(recovered.sessions[0].messages.is_empty());
    bytes
}

#[test]
fn restart_reads_what_is_live_not_what_was_written() {
    if let Ok(spec) = std::env::var(CHILD) {
        run_child(&spec);
    }
    let few = after_runs(2);
    let many = after_runs(8);
    println!(
        "journal a start reads: {few} bytes after 2 runs, {many} after 8 ({} MB acknowledged in all)",
        8 * MESSAGES as usize * PAYLOAD / (1 << 20)
    );
    // The same live data, the same last run: the same journal, or one
    // more run's if fjall had not yet flushed the previous one away.
    assert!(
        many <= 2 * few,
        "a start reads {many} journal bytes after 8 runs, {few} after 2: restart work grows with history"
    );
}
