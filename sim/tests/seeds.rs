//! The simulation as an ordinary test: a few hundred seeds of the whole
//! broker under faults, each replayable alone.
//!
//! `ROOST_SIM_SEED=N cargo test -p roost-sim` runs seed N only (with the
//! simulation's log when `ROOST_SIM_LOG=1`); `ROOST_SIM_SEEDS=A..B` a range.

use roost_sim::{Options, replay_command, run};

fn seeds() -> std::ops::Range<u64> {
    if let Ok(n) = std::env::var("ROOST_SIM_SEED") {
        let n: u64 = n.parse().expect("ROOST_SIM_SEED=N");
        return n..n + 1;
    }
    if let Ok(r) = std::env::var("ROOST_SIM_SEEDS") {
        let (a, b) = r.split_once("..").expect("ROOST_SIM_SEEDS=A..B");
        return a.parse().expect("A")..b.parse().expect("B");
    }
    0..300
}

#[test]
fn every_seed_keeps_the_invariants() {
    let options = Options::default();
    let mut failures = Vec::new();
    let (mut crashes, mut guaranteed, mut dups, mut lost) = (0, 0, 0, 0);
    for seed in seeds() {
        let outcome = run(seed, &options);
        crashes += outcome.crashes;
        guaranteed += outcome.guaranteed;
        dups += outcome.qos2_duplicates.len();
        lost += outcome.sessions_lost.len();
        if !outcome.ok() {
            failures.push(format!(
                "{}\n  {}\n  replay: {} (or ROOST_SIM_SEED={seed} cargo test -p roost-sim)",
                outcome.summary(),
                outcome.violations.join("\n  "),
                replay_command(seed, &options)
            ));
        }
    }
    // QoS 2 duplicates and lost sessions fail a seed by default (see
    // Options); the totals are printed for runs with the checks off.
    println!(
        "{crashes} crashes, {guaranteed} guaranteed deliveries checked, {dups} QoS 2 duplicates or reused packet ids, {lost} confirmed sessions or subscriptions lost"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The run did something: deliveries that had to arrive were checked.
    assert!(guaranteed > 0);
}

#[test]
fn a_seed_replays_exactly() {
    let options = Options::default();
    for seed in [1, 2, 3] {
        let a = run(seed, &options);
        let b = run(seed, &options);
        assert!(a.steps > 0 && a.published > 0);
        assert_eq!(a.trace, b.trace, "seed {seed} ran differently twice");
        assert_eq!(a.summary(), b.summary());
    }
}

/// The checks are not vacuous: a disk that acknowledges commits and keeps
/// nothing is caught (lost messages, or lost sessions with the session
/// check on).
#[test]
fn a_lying_disk_is_caught() {
    let options = Options {
        lying_disk: true,
        check_session_durability: true,
        ..Options::default()
    };
    let caught = (0..20).filter(|&seed| !run(seed, &options).ok()).count();
    assert!(
        caught >= 10,
        "only {caught} of 20 seeds caught a lying disk"
    );
}

/// Without crashes and disk faults the broker owes nothing it cannot
/// keep: QoS 2 is exactly once and no session is lost.
#[test]
fn without_crashes_qos2_is_exactly_once() {
    let options = Options {
        crashes: false,
        disk_faults: false,
        check_qos2_duplicates: true,
        check_session_durability: true,
        ..Options::default()
    };
    for seed in 0..100 {
        let outcome = run(seed, &options);
        assert!(
            outcome.ok(),
            "{}\n  {}\n  replay: {}",
            outcome.summary(),
            outcome.violations.join("\n  "),
            replay_command(seed, &options)
        );
    }
}

/// Seeds that failed at 5,000 steps with clock jumps, replayed as they
/// were found: 16608 and 11675 delivered a QoS 2 message twice after a
/// crash (a failed batch sent deliveries moved from a closed member of a
/// shared subscription before the receiver's held CONNACK and before their
/// packet identifiers were durable); 29963 got a PUBLISH, and many seeds a
/// DISCONNECT, before CONNACK once the simulator checked for it.
#[test]
fn long_seeds_found_with_clock_jumps_keep_the_invariants() {
    let options = Options {
        steps: 5_000,
        ..Options::default()
    };
    for seed in [16608, 11675, 29963] {
        let outcome = run(seed, &options);
        assert!(
            outcome.ok(),
            "{}\n  {}\n  replay: {}",
            outcome.summary(),
            outcome.violations.join("\n  "),
            replay_command(seed, &options)
        );
    }
}
