//! `roost`: the MQTT broker on tokio.
//!
//! `roost` with no arguments listens on 127.0.0.1:1883 and allows anonymous
//! clients, like Mosquitto 2. `roost --help` lists everything.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut service = match roost_runtime::cli::start("roost") {
        roost_runtime::cli::Start::Exit(code) => return code,
        roost_runtime::cli::Start::Serve(service) => service,
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
    // Signal handlers go in before the broker starts, so a SIGHUP or
    // SIGTERM that arrives as soon as it listens is not the default
    // (fatal) one.
    let caught = {
        use tokio::signal::unix::{SignalKind, signal};
        let _runtime = signals.enter();
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        )
    };
    let (mut term, mut int, mut hup) = match caught {
        (Ok(term), Ok(int), Ok(hup)) => (term, int, hup),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("roost: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match roost_tokio::start(service.config().clone(), roost_tokio::Hooks::default()) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("roost: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = service.ready() {
        eprintln!("roost: {e}");
        return ExitCode::FAILURE;
    }
    signals.block_on(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    server.reload(service.reload());
                    service.reloaded();
                }
            }
        }
        service.stopping();
        server.shutdown().await;
    });
    ExitCode::SUCCESS
}
