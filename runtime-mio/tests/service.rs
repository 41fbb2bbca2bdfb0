//! `roost-mio` as a service: the pid file, systemd's notifications, SIGHUP
//! re-reading the configuration file and certificates, start-up errors in
//! words (shared with every runtime).

#[macro_use]
#[path = "../../runtime/tests/support/service_bin.rs"]
mod service_bin;

#[path = "../../runtime/tests/support/pki.rs"]
mod pki;

#[macro_use]
#[path = "../../runtime/tests/support/reload_bin.rs"]
mod reload_bin;

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_roost-mio"))
}

service_tests!(binary());
reload_tests!(binary());
