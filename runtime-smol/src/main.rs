//! `roost-smol`: the MQTT broker on smol.
//!
//! Same command line and configuration as `roost`: with no arguments it
//! listens on 127.0.0.1:1883 and allows anonymous clients. `roost-smol
//! --help` lists everything. SIGINT/SIGTERM stop it (MQTT 5 clients get
//! DISCONNECT 0x8B), SIGHUP re-reads the configuration file.

use async_signal::{Signal, Signals};
use smol::stream::StreamExt as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut service = match roost_runtime::cli::start("roost-smol") {
        roost_runtime::cli::Start::Exit(code) => return code,
        roost_runtime::cli::Start::Serve(service) => service,
    };
    // Signal handlers go in before the broker starts, so a SIGTERM that
    // arrives as soon as it listens is not the default (abrupt) one.
    let mut signals = match Signals::new([Signal::Term, Signal::Int, Signal::Hup]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("roost-smol: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match roost_smol::start(service.config().clone(), roost_smol::Hooks::default()) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("roost-smol: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = service.ready() {
        eprintln!("roost-smol: {e}");
        return ExitCode::FAILURE;
    }
    smol::block_on(async move {
        while let Some(signal) = signals.next().await {
            match signal {
                Ok(Signal::Hup) => {
                    tracing::info!("SIGHUP: reloading");
                    server.reload(service.reload());
                    service.reloaded();
                }
                Ok(_) => break,
                Err(e) => tracing::warn!(error = %e, "signal"),
            }
        }
        service.stopping();
        server.shutdown().await;
    });
    ExitCode::SUCCESS
}
