//! `roost`: the MQTT broker on tokio.
//!
//! `roost` with no arguments listens on 127.0.0.1:1883 and allows anonymous
//! clients, like Mosquitto 2. `roost --help` lists everything.

use roost_runtime::config::{Cli, Command, Config};
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
            eprintln!("roost: {e}");
            return ExitCode::from(2);
        }
    };
    let level = match config.verbosity {
        0 => tracing::Level::INFO,
        1 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    // Logs go to stderr, like Mosquitto's, and are plain text unless stderr
    // is a terminal (no colour codes in log files and journald).
    use std::io::IsTerminal;
    // roost's own crates at the chosen level; libraries (the store, TLS)
    // only warn unless -vv asks for everything.
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let others = if config.verbosity >= 2 {
        tracing::Level::TRACE
    } else {
        tracing::Level::WARN
    };
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(others)
        .with_target("roost", level)
        .with_target("roost_tokio", level)
        .with_target("roost_runtime", level)
        .with_target("roost_persistence", level);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .init();
    // Idle connections cost a file descriptor each: take all the system
    // allows.
    if let Ok(limit) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!(limit, "file descriptor limit");
    }
    let server = match roost_tokio::start(config.clone(), roost_tokio::Hooks::default()) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("roost: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signals = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roost: {e}");
            return ExitCode::FAILURE;
        }
    };
    signals.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            server.join();
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading password and ACL files");
                    server.reload(config.clone());
                }
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
            eprintln!("roost passwd: {e}");
            ExitCode::FAILURE
        }
    }
}
