//! `roost` as a service: the pid file, systemd's notifications, SIGHUP
//! re-reading the configuration file and certificates, start-up errors in
//! words (shared with every runtime).

#[path = "../../runtime/tests/support/service_bin.rs"]
mod service_bin;

#[path = "../../runtime/tests/support/pki.rs"]
mod pki;

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_roost"))
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

#[test]
fn startup_errors() {
    service_bin::startup_errors(binary());
}

#[test]
fn reload_names_what_waits_for_a_restart() {
    service_bin::reload_names_what_waits_for_a_restart(binary());
}

#[test]
fn reload_certificate() {
    service_bin::reload_certificate(binary());
}

#[test]
fn mosquitto_password_file() {
    service_bin::mosquitto_password_file(binary());
}

#[test]
fn operator_log_lines() {
    service_bin::operator_log_lines(binary());
}
