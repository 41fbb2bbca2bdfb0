//! `roost-bench`: an MQTT 3.1.1 load generator for roost and Mosquitto.
//!
//! It shares a small machine with the broker it measures, so it is built to
//! be cheap per message: its own minimal codec ([`wire`]) encoding into
//! reused buffers, many packets per write, one clock read per read batch, and
//! every client on a single `current_thread` tokio runtime.
//!
//! ```text
//! publishers ──PUBLISH(stamp: t_ns, pub, seq)──▶ broker ──▶ subscribers
//!      ▲  PUBACK/PUBREC/PUBCOMP window (--inflight)   │ record latency, dups
//!      └──────────── one process, one clock ─────────┘
//! ```
//!
//! See `BENCHMARKS.md` at the repository root for how to run it and what it
//! measured.
#![forbid(unsafe_code)]

mod cli;
mod client;
mod scenarios;
mod sink;
mod stats;
mod wire;

use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::Parser;

use cli::{Cli, Common, Scenario};
use client::Run;
use stats::{Report, now_ns};

/// Sizes the descriptor table for `limit` descriptors now, while this is
/// the only thread. Grown on demand once tokio's resolver threads exist,
/// each doubling would stall the generator for an RCU grace period (10-35 ms
/// here), which the `conns` scenario would report as the broker's latency.
/// (`roost_runtime::cli::reserve_descriptor_table` does the same for the
/// broker; the generator depends on none of roost's crates.)
fn reserve_descriptor_table(limit: u64) {
    let highest = i32::try_from(limit.min(65_536).saturating_sub(1)).unwrap_or(0);
    if let Err(e) = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), highest) {
        eprintln!("warning: descriptor table not reserved: {e}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    stats::epoch();
    // Idle-connection tests need many descriptors; the hard limit is the most we may take.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => reserve_descriptor_table(limit),
        Err(e) => eprintln!("warning: could not raise RLIMIT_NOFILE: {e}"),
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();

    let (name, common) = match &cli.scenario {
        Scenario::Sink {
            host,
            port,
            deadline,
        } => {
            return match local.block_on(&rt, sink::serve(host, *port, *deadline)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sink: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Scenario::Fanin { common, .. } => ("fanin", common),
        Scenario::Fanout { common, .. } => ("fanout", common),
        Scenario::Pairs { common, .. } => ("pairs", common),
        Scenario::Reqres { common, .. } => ("reqres", common),
        Scenario::Latency { common, .. } => ("latency", common),
        Scenario::Conns { common, .. } => ("conns", common),
        Scenario::Retained { common, .. } => ("retained", common),
        Scenario::Subs { common, .. } => ("subs", common),
    };

    let run = Run::new();
    let work = {
        let run = run.clone();
        let c = common.clone();
        let scenario = &cli.scenario;
        async move {
            match scenario {
                Scenario::Fanin { publishers, .. } => scenarios::fanin(&c, *publishers, run).await,
                Scenario::Fanout { subscribers, .. } => {
                    scenarios::fanout(&c, *subscribers, run).await
                }
                Scenario::Pairs { clients, .. } => scenarios::pairs(&c, *clients, run).await,
                Scenario::Reqres {
                    clients, subscribe, ..
                } => scenarios::reqres(&c, *clients, *subscribe, run).await,
                Scenario::Latency { .. } => scenarios::latency(&c, run).await,
                Scenario::Conns {
                    connections,
                    concurrency,
                    processes,
                    hold,
                    child: false,
                    ..
                } => {
                    let spread = scenarios::Spread {
                        processes: *processes as usize,
                        hold: *hold,
                    };
                    scenarios::conns(&c, *connections, *concurrency, spread, run).await
                }
                Scenario::Conns {
                    connections,
                    concurrency,
                    child: true,
                    ..
                } => scenarios::conns_child(&c, *connections, *concurrency).await,
                Scenario::Retained { messages, .. } => {
                    scenarios::retained(&c, *messages, run).await
                }
                Scenario::Subs {
                    subscriptions,
                    sub_connections,
                    ..
                } => scenarios::subs(&c, *subscriptions, *sub_connections, run).await,
                Scenario::Sink { .. } => unreachable!("handled above"),
            }
        }
    };
    let deadline = Duration::from_secs_f64(common.deadline.max(1.0));
    // The timer must be created inside the runtime, hence the wrapping async block.
    let outcome = local.block_on(&rt, async { tokio::time::timeout(deadline, work).await });
    let partial = match outcome {
        Ok(Ok(())) => false,
        Ok(Err(e)) => {
            eprintln!("{name}: setup failed: {e}");
            return ExitCode::FAILURE;
        }
        Err(_) => true,
    };
    if matches!(cli.scenario, Scenario::Conns { child: true, .. }) {
        // A child's only output is its one line, printed by the scenario.
        return ExitCode::SUCCESS;
    }
    let report = report(name, common, &run, partial);
    println!("{}", report.human());
    if common.json {
        match serde_json::to_string(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("cannot encode the report: {e}"),
        }
    }
    // Dropping the runtime closes every connection; no graceful DISCONNECT needed.
    drop(local);
    drop(rt);
    ExitCode::SUCCESS
}

fn report(name: &str, c: &Common, run: &Rc<Run>, partial: bool) -> Report {
    let st = run.stats.borrow();
    let st = st.as_ref().expect("stats live for the whole run");
    let t0 = run.t_start.get();
    let end = if st.last_recv > t0 {
        st.last_recv
    } else {
        now_ns()
    };
    let elapsed_s = (end.saturating_sub(t0)) as f64 / 1e9;
    let unique = st.unique();
    let per_msg = |start: Option<u64>, now: Option<u64>| match (start, now) {
        (Some(a), Some(b)) if unique > 0 => Some((b.saturating_sub(a)) as f64 / unique as f64),
        _ => None,
    };
    let (gen0, broker0) = run.cpu_start.get();
    let (gen1, broker1) = (
        stats::cpu_ns(None),
        c.broker_pid.and_then(|p| stats::cpu_ns(Some(p))),
    );
    let wall = now_ns().saturating_sub(t0).max(1) as f64;
    let cores =
        |start: Option<u64>, now: Option<u64>| Some(now?.saturating_sub(start?) as f64 / wall);
    let expected = run.expected();
    Report {
        scenario: name.to_string(),
        label: c.label.clone(),
        qos: c.qos.unwrap_or(if matches!(name, "pairs" | "reqres") {
            1
        } else {
            0
        }),
        payload: c.payload.max(stats::STAMP_LEN),
        sent: run.sent.get(),
        expected,
        received: st.received,
        duplicates: st.duplicates,
        loss: expected as i64 - unique as i64,
        elapsed_s,
        delivered_per_s: if elapsed_s > 0.0 {
            unique as f64 / elapsed_s
        } else {
            0.0
        },
        latency: Report::latency_from(&st.hist),
        gen_cpu_ns_per_msg: per_msg(gen0, gen1),
        broker_cpu_ns_per_msg: per_msg(broker0, broker1),
        gen_cpu_cores: cores(gen0, gen1),
        broker_cpu_cores: cores(broker0, broker1),
        broker_rss_kb: c.broker_pid.and_then(stats::rss_kb),
        partial,
        extra: {
            let mut e = run.extra.borrow().clone();
            let lag = run.send_lag.borrow();
            if !lag.is_empty() {
                e.insert(
                    "send_lag_p99_us".into(),
                    lag.value_at_quantile(0.99) as f64 / 1e3,
                );
                e.insert("send_lag_max_us".into(), lag.max() as f64 / 1e3);
            }
            if run.stalls.get() > 0 {
                e.insert("window_stalls".into(), run.stalls.get() as f64);
            }
            e
        },
        errors: run.errors.borrow().clone(),
    }
}
