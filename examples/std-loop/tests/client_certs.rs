//! Client certificates on `roost-std`: accepted, refused (none, another CA's,
//! revoked) and mapped to the user name an ACL sees, with mosquitto_pub /
//! mosquitto_sub and paho-mqtt over TLS and WebSocket-over-TLS.

#[path = "../../../runtime/tests/support/pki.rs"]
mod pki;

#[path = "../../../runtime/tests/support/client_certs_bin.rs"]
mod client_certs_bin;

#[test]
fn client_certificates_are_verified_and_name_the_user() {
    client_certs_bin::run(std::path::Path::new(env!("CARGO_BIN_EXE_roost-std")), "std");
}
