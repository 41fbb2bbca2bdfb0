//! Replays the corpora of the structure-aware fuzz targets
//! (`fuzz/corpus/{engine,websocket,tls,store}`) through the same functions
//! the fuzz targets call, so a regression on any seed, or on any crash a
//! fuzzer once found and that was copied there, fails an ordinary test.

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    // An empty or missing folder must not pass silently.
    assert!(
        files.len() >= 8,
        "only {} corpus files in {target}",
        files.len()
    );
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| body(&data));
        assert!(result.is_ok(), "corpus file {} fails", path.display());
    }
}

#[test]
fn engine_corpus() {
    replay("engine", roost_sim::fuzz::engine);
}

#[test]
fn websocket_corpus() {
    replay("websocket", roost_sim::fuzz::websocket);
}

#[test]
fn tls_corpus() {
    replay("tls", roost_sim::fuzz::tls);
}

#[test]
fn store_corpus() {
    replay("store", roost_sim::fuzz::store);
}
