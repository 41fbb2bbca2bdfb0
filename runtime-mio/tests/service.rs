//! `roost-mio` as a service: the pid file, systemd's notifications, SIGHUP
//! re-reading the configuration file (shared with every runtime).

#[path = "../../runtime/tests/support/service_bin.rs"]
mod service_bin;

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_roost-mio"))
}

#[test]
fn pid_file() {
    service_bin::pid_file(binary());
}

#[test]
fn systemd_notify() {
    service_bin::systemd_notify(binary());
}

#[test]
fn reload_configuration() {
    service_bin::reload_configuration(binary());
}
