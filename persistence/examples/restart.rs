//! Measures a restart of a [`FjallStore`]: how long opening and recovering
//! take, and the process's memory afterwards, for a given write history.
//!
//! ```text
//! # build a history: RETAINED live retained messages (PAYLOAD bytes each),
//! # overwritten in turn until the store has written HISTORY_MB of batches,
//! # then die without warning (abort: no destructor, no flush), as SIGKILL
//! cargo run --release -p roost-persistence --example restart -- write DIR RETAINED HISTORY_MB [PAYLOAD]
//! # then, in a fresh process: open, recover, report
//! cargo run --release -p roost-persistence --example restart -- open DIR
//! ```
//!
//! `open` prints one line: journal bytes on disk before opening, the open
//! and recover times, retained messages recovered, and VmRSS / VmHWM after
//! recovering (the recovered data still held, as a broker holds it) and
//! after the store has been idle for two seconds.

use bytes::Bytes;
use roost_core::broker::{StoreOp, StoredMessage};
use roost_core::codec::QoS;
use roost_core::topic::TopicName;
use roost_persistence::{Durability, FjallStore, Store};
use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("write") if args.len() >= 4 => {
            let retained: u64 = args[2].parse().expect("RETAINED");
            let history_mb: u64 = args[3].parse().expect("HISTORY_MB");
            let payload: usize = args.get(4).map_or(1_000, |p| p.parse().expect("PAYLOAD"));
            write(Path::new(&args[1]), retained, history_mb, payload);
        }
        Some("open") if args.len() == 2 => open(Path::new(&args[1])),
        _ => {
            eprintln!("usage: restart write DIR RETAINED HISTORY_MB [PAYLOAD] | restart open DIR");
            std::process::exit(2);
        }
    }
}

fn topic(i: u64) -> TopicName {
    TopicName::copy_from_str(&format!("bench/ret/{}/{}", i / 1000, i % 1000)).expect("topic")
}

fn write(dir: &Path, retained: u64, history_mb: u64, payload_len: usize) {
    let mut store = FjallStore::open(dir, Durability::Sync).expect("open");
    let payload = Bytes::from(vec![b'x'; payload_len]);
    let target = history_mb * 1_000_000;
    let (mut written, mut i) = (0u64, 0u64);
    let started = Instant::now();
    // Every topic at least once, then overwrites until the history is long
    // enough.
    while i < retained || written < target {
        let mut ops = Vec::with_capacity(100);
        for _ in 0..100 {
            let t = topic(i % retained);
            written += (t.as_str().len() + payload_len + 16) as u64;
            ops.push(StoreOp::RetainedPut {
                topic: t.clone(),
                message: StoredMessage {
                    topic: t,
                    payload: payload.clone(),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: Default::default(),
                },
            });
            i += 1;
        }
        store.apply(&ops).expect("apply");
        store.commit().expect("commit");
    }
    println!(
        "wrote {i} retained messages ({} MB) over {retained} topics in {:.1} s; journal {} bytes",
        written / 1_000_000,
        started.elapsed().as_secs_f64(),
        journal_bytes(dir)
    );
    std::process::abort();
}

fn open(dir: &Path) {
    let journal = journal_bytes(dir);
    let started = Instant::now();
    let mut store = FjallStore::open(dir, Durability::Sync).expect("open");
    let opened = started.elapsed();
    let recovered = store.recover().expect("recover");
    let total = started.elapsed();
    let (rss, hwm) = memory();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (idle, _) = memory();
    println!(
        "journal {journal} bytes before open; open {:.0} ms, open + recover {:.0} ms; {} retained; RSS {} MiB after recover (peak {} MiB), {} MiB after 2 s idle",
        opened.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        recovered.retained.len(),
        rss / 1024,
        hwm / 1024,
        idle / 1024,
    );
    drop(recovered);
    drop(store);
}

/// Bytes of fjall journal files in the store's directory.
fn journal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".jnl"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// VmRSS and VmHWM in KiB (Linux; 0 elsewhere).
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
