//! `roost-sim`: runs seeds of the deterministic simulation.
//!
//! ```text
//! cargo run -p roost-sim -- --seed 42                 # replay one seed
//! cargo run -p roost-sim --release -- --seeds 0..10000 --steps 5000
//! cargo run -p roost-sim -- --seed 42 --check-determinism
//! ```
//!
//! Options: `--seed N`, `--seeds A..B`, `--steps N`, `--clients N`,
//! `--qos2-exactly-once` (the default: duplicates and reused packet ids at
//! QoS 2 fail the run; `--report-qos2-duplicates` only counts them),
//! `--durable-sessions` (the default: a confirmed session or subscription
//! lost in a crash fails the run; `--report-lost-sessions` only counts
//! them),
//! `--no-crashes`, `--no-disk-faults`, `--no-net-faults`,
//! `--no-clock-faults` (the runtime's clock jumps forward, steps back and
//! catches up),
//! `--check-determinism` (runs each seed twice and compares the traces),
//! `--verbose` (a summary line per seed).

use roost_sim::{Options, replay_command, run};
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let mut options = Options::default();
    let mut seeds = 0..1u64;
    let mut determinism = false;
    let mut verbose = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match arg.as_str() {
            "--seed" => {
                let n: u64 = value().parse().expect("--seed N");
                seeds = n..n + 1;
                verbose = true;
            }
            "--seeds" => {
                let v = value();
                let (a, b) = v.split_once("..").expect("--seeds A..B");
                seeds = a.parse().expect("A")..b.parse().expect("B");
            }
            "--steps" => options.steps = value().parse().expect("--steps N"),
            "--clients" => options.clients = value().parse().expect("--clients N"),
            "--qos2-exactly-once" => options.check_qos2_duplicates = true,
            "--report-qos2-duplicates" => options.check_qos2_duplicates = false,
            "--durable-sessions" => options.check_session_durability = true,
            "--report-lost-sessions" => options.check_session_durability = false,
            "--no-crashes" => options.crashes = false,
            "--no-disk-faults" => options.disk_faults = false,
            "--no-net-faults" => options.net_faults = false,
            "--no-clock-faults" => options.clock_faults = false,
            "--check-determinism" => determinism = true,
            "--verbose" | "-v" => verbose = true,
            other => {
                eprintln!("roost-sim: unknown argument {other:?} (see the crate docs)");
                return ExitCode::FAILURE;
            }
        }
    }
    let started = Instant::now();
    let (mut failed, mut runs, mut sim_ms, mut dups, mut crashes) =
        (0u64, 0u64, 0u128, 0usize, 0u64);
    let mut guaranteed = 0u64;
    let mut subs_lost = 0usize;
    let mut dup_seeds = Vec::new();
    for seed in seeds {
        let outcome = run(seed, &options);
        runs += 1;
        sim_ms += outcome.sim_time.as_millis();
        crashes += u64::from(outcome.crashes);
        guaranteed += outcome.guaranteed;
        subs_lost += outcome.sessions_lost.len();
        if !outcome.qos2_duplicates.is_empty() {
            dups += outcome.qos2_duplicates.len();
            dup_seeds.push(seed);
        }
        if verbose {
            println!("{}", outcome.summary());
            for d in outcome.qos2_duplicates.iter().take(3) {
                println!("  QoS 2: {d}");
            }
            for d in outcome.sessions_lost.iter().take(3) {
                println!("  session: {d}");
            }
        }
        if !outcome.ok() {
            failed += 1;
            println!("FAILED {}", outcome.summary());
            for v in &outcome.violations {
                println!("  {v}");
            }
            println!("  replay: {}", replay_command(seed, &options));
        }
        if determinism {
            let again = run(seed, &options);
            if again.trace != outcome.trace {
                failed += 1;
                println!(
                    "NOT DETERMINISTIC seed {seed}: traces {:016x} and {:016x} differ",
                    outcome.trace, again.trace
                );
            }
        }
    }
    println!(
        "{runs} seeds, {failed} failed, {:.1} h simulated, {crashes} crashes, {guaranteed} guaranteed deliveries checked, {subs_lost} confirmed sessions or subscriptions lost in crashes, {dups} QoS 2 duplicates or reused packet ids in {} seeds{}, {:.1} s wall",
        sim_ms as f64 / 3.6e6,
        dup_seeds.len(),
        if dup_seeds.is_empty() {
            String::new()
        } else {
            format!(" (first: {:?})", &dup_seeds[..dup_seeds.len().min(5)])
        },
        started.elapsed().as_secs_f64()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
