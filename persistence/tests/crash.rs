//! What a `FjallStore` keeps when its process goes away without warning.

mod common;

use common::{fixed_batches, reference};
use roost_core::broker::Recovered;
use roost_persistence::{Durability, FjallStore, Store};
use std::io::Write;
use std::path::Path;
use std::process::Command;

const BATCHES: usize = 60;
const COMMIT_EVERY: usize = 5;
/// Applied after the last commit and never committed.
const UNCOMMITTED: usize = 3;
/// Tells a re-invoked test binary to be the crashing writer: `MODE:DIR`.
const CHILD: &str = "ROOST_PERSISTENCE_CRASH_CHILD";

/// Applies the fixed batches, committing every few and saying so, then
/// applies a few more and aborts: no destructor, no flush, no fsync.
fn crashing_writer(spec: &str) -> ! {
    let (mode, dir) = spec.split_once(':').expect("MODE:DIR");
    let durability = match mode {
        "sync" => Durability::Sync,
        _ => Durability::Periodic,
    };
    let mut store = FjallStore::open(dir, durability).unwrap();
    let mut out = std::io::stdout().lock();
    for (i, batch) in fixed_batches(BATCHES).iter().enumerate() {
        store.apply(batch).unwrap();
        let applied = i + 1;
        if applied % COMMIT_EVERY == 0 && applied <= BATCHES - UNCOMMITTED {
            store.commit().unwrap();
            writeln!(out, "committed {applied}").unwrap();
            out.flush().unwrap();
        }
    }
    std::process::abort();
}

/// Whatever survived must be a prefix of the applied batches that includes
/// every committed one: returns its length.
fn surviving_prefix(recovered: &Recovered, committed: usize) -> Option<usize> {
    let batches = fixed_batches(BATCHES);
    (committed..=BATCHES).find(|&n| reference(&batches[..n]) == *recovered)
}

fn crash_and_recover(test: &str, mode: &str, durability: Durability) {
    if let Ok(spec) = std::env::var(CHILD) {
        crashing_writer(&spec);
    }
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{mode}:{}", dir.path().display()))
        .output()
        .unwrap();
    assert!(!output.status.success(), "the writer was meant to abort");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let committed = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("committed "))
        .filter_map(|n| n.trim().parse::<usize>().ok())
        .next_back()
        .unwrap_or_else(|| panic!("the writer committed nothing: {stdout}"));
    assert_eq!(committed, 55);

    let mut store = FjallStore::open(dir.path(), durability).unwrap();
    let recovered = store.recover().unwrap();
    let n = surviving_prefix(&recovered, committed);
    eprintln!("DEBUG survived {n:?} sessions {}", recovered.sessions.len());
    assert!(
        n.is_some(),
        "recovered state is no prefix of the batches containing the {committed} committed"
    );
}

#[test]
fn sync_commits_survive_abort() {
    crash_and_recover("sync_commits_survive_abort", "sync", Durability::Sync);
}

#[test]
fn periodic_commits_survive_abort() {
    // A process crash (not an OS crash) loses nothing committed even without
    // an fsync: the journal was handed to the OS.
    crash_and_recover(
        "periodic_commits_survive_abort",
        "periodic",
        Durability::Periodic,
    );
}

fn reopen(dir: &Path) -> Recovered {
    FjallStore::open(dir, Durability::Sync)
        .unwrap()
        .recover()
        .unwrap()
}

#[test]
fn committed_batches_survive_drop_without_shutdown() {
    let batches = fixed_batches(30);
    let dir = tempfile::tempdir().unwrap();
    let mut store = FjallStore::open(dir.path(), Durability::Sync).unwrap();
    for batch in &batches[..20] {
        store.apply(batch).unwrap();
        store.commit().unwrap();
    }
    for batch in &batches[20..] {
        store.apply(batch).unwrap();
    }
    drop(store);
    let recovered = reopen(dir.path());
    assert!(
        (20..=30).any(|n| reference(&batches[..n]) == recovered),
        "recovered state is no prefix of the batches containing the committed ones"
    );
}

#[test]
fn reopening_twice_changes_nothing() {
    let batches = fixed_batches(20);
    let dir = tempfile::tempdir().unwrap();
    let mut store = FjallStore::open(dir.path(), Durability::Periodic).unwrap();
    for batch in &batches {
        store.apply(batch).unwrap();
    }
    store.commit().unwrap();
    store.flush().unwrap();
    drop(store);
    let expected = reference(&batches);
    assert_eq!(reopen(dir.path()), expected);
    assert_eq!(reopen(dir.path()), expected);
}
