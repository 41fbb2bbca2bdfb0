//! Structure-aware fuzz target; the body is `roost_sim::fuzz::tls`, which
//! `cargo test -p roost-sim --test fuzz_corpus` replays on the corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    roost_sim::fuzz::tls(data);
});
