//! The std-only event loop passes what every runtime passes: the whole
//! conformance suite, the parity suite (TLS, WebSocket, slow consumers,
//! SIGKILL with both durabilities), every attack of the adversarial suite,
//! the `[http]` endpoint and client certificates. Nothing in its 250 lines
//! implements any of that: it is all the driver's.

#[test]
fn conformance_suite_passes() {
    roost_conformance::parity::run(
        roost_conformance::parity::conformance_suite,
        env!("CARGO_BIN_EXE_roost-std"),
    );
}

mod parity {
    roost_conformance::parity_tests!(env!("CARGO_BIN_EXE_roost-std"));
}

mod attacks {
    roost_conformance::attack_tests!(env!("CARGO_BIN_EXE_roost-std"));
}

mod observability {
    roost_conformance::observability_tests!(env!("CARGO_BIN_EXE_roost-std"));
}

#[path = "../../../runtime/tests/support/pki.rs"]
mod pki;

#[path = "../../../runtime/tests/support/client_certs_bin.rs"]
mod client_certs_bin;

#[test]
fn client_certificates_are_verified_and_name_the_user() {
    client_certs_bin::run(std::path::Path::new(env!("CARGO_BIN_EXE_roost-std")), "std");
}

mod bridge {
    roost_conformance::bridge_tests!(env!("CARGO_BIN_EXE_roost-std"));
}

mod cluster {
    roost_conformance::cluster_tests!(env!("CARGO_BIN_EXE_roost-std"));
}

mod crash {
    roost_conformance::crash_tests!(env!("CARGO_BIN_EXE_roost-std"));
}
