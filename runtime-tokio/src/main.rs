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
