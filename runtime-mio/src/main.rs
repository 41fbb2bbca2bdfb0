//! `roost-mio`: the MQTT broker on mio.
//!
//! Same command line and configuration as `roost`: with no arguments it
//! listens on 127.0.0.1:1883 and allows anonymous clients. `roost-mio
//! --help` lists everything. SIGINT/SIGTERM stop it (MQTT 5 clients get
//! DISCONNECT 0x8B), SIGHUP reloads password and ACL files.

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
            eprintln!("roost-mio: {e}");
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
    let mut server = match roost_mio::Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("roost-mio: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = server.handle_signals() {
        eprintln!("roost-mio: cannot handle signals: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = server.run() {
        eprintln!("roost-mio: {e}");
        return ExitCode::FAILURE;
    }
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
            eprintln!("roost-mio passwd: {e}");
            ExitCode::FAILURE
        }
    }
}
