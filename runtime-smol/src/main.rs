//! `roost-smol`: the MQTT broker on smol.
//!
//! Same command line and configuration as `roost`: with no arguments it
//! listens on 127.0.0.1:1883 and allows anonymous clients. `roost-smol
//! --help` lists everything. SIGINT/SIGTERM stop it (MQTT 5 clients get
//! DISCONNECT 0x8B), SIGHUP reloads password and ACL files.

use async_signal::{Signal, Signals};
use roost_runtime::config::{Cli, Command, Config};
use smol::stream::StreamExt as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    use clap::Parser;
    let cli = Cli::parse();
    if let Some(Command::Passwd { action }) = &cli.command {
        return passwd(action, cli.config.as_deref());
    }
    let config = match Config::from_cli(cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("roost-smol: {e}");
            return ExitCode::from(2);
        }
    };
    let level = match config.verbosity {
        0 => tracing::Level::INFO,
        1 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .init();
    // Idle connections cost a file descriptor each: take all the system
    // allows.
    if let Ok(limit) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!(limit, "file descriptor limit");
    }
    // Signal handlers go in before the broker starts, so a SIGTERM that
    // arrives as soon as it listens is not the default (abrupt) one.
    let mut signals = match Signals::new([Signal::Term, Signal::Int, Signal::Hup]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("roost-smol: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match roost_smol::start(config.clone()) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("roost-smol: {e}");
            return ExitCode::FAILURE;
        }
    };
    smol::block_on(async move {
        while let Some(signal) = signals.next().await {
            match signal {
                Ok(Signal::Hup) => {
                    tracing::info!("SIGHUP: reloading password and ACL files");
                    server.reload(config.clone());
                }
                Ok(_) => break,
                Err(e) => tracing::warn!(error = %e, "signal"),
            }
        }
        tracing::info!("shutting down");
        server.shutdown().await;
    });
    ExitCode::SUCCESS
}

fn passwd(
    action: &roost_runtime::config::PasswdCommand,
    config: Option<&std::path::Path>,
) -> ExitCode {
    // The default file is the first listener's password_file, if a config
    // file names one.
    let default_file = config
        .and_then(|path| Config::from_file(path).ok())
        .and_then(|c| c.listeners.iter().find_map(|l| l.password_file.clone()));
    let read = || rpassword::prompt_password("Password: ");
    match roost_runtime::passwd::run_command(action, default_file.as_deref(), read) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("roost-smol passwd: {e}");
            ExitCode::FAILURE
        }
    }
}
