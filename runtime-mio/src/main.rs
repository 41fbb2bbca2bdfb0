//! `roost-mio`: the MQTT broker on mio.
//!
//! Same command line and configuration as `roost`: with no arguments it
//! listens on 127.0.0.1:1883 and allows anonymous clients. `roost-mio
//! --help` lists everything. SIGINT/SIGTERM stop it (MQTT 5 clients get
//! DISCONNECT 0x8B), SIGHUP re-reads the configuration file.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut service = match roost_runtime::cli::start("roost-mio") {
        roost_runtime::cli::Start::Exit(code) => return code,
        roost_runtime::cli::Start::Serve(service) => service,
    };
    // Signal handlers go in before the listeners, so a SIGHUP or SIGTERM
    // that arrives as soon as the broker listens is not the default
    // (fatal) one.
    let signals = match roost_mio::CaughtSignals::catch() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("roost-mio: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut server = match roost_mio::Server::bind(service.config().clone()) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("roost-mio: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = server.handle_caught_signals(signals) {
        eprintln!("roost-mio: cannot handle signals: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = service.ready() {
        eprintln!("roost-mio: {e}");
        return ExitCode::FAILURE;
    }
    server.set_service(service);
    if let Err(e) = server.run() {
        eprintln!("roost-mio: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
