//! Replays the fuzzing corpus (`fuzz/corpus/decode`) through the same
//! self-check as the fuzz target, so a regression on any seed or on any
//! crash the fuzzer once found fails an ordinary `cargo test`.

use roost_core::codec::fuzz_decode;
use std::path::Path;

#[test]
fn replay_decode_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    // The corpus is checked in with a few hundred seeds; an empty or missing
    // folder must not pass silently.
    assert!(files.len() >= 100, "only {} corpus files", files.len());
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| fuzz_decode(&data));
        assert!(result.is_ok(), "corpus file {} fails", path.display());
    }
}
