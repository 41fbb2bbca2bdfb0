//! The black-box conformance suite (every Paho interoperability case, the
//! engine's behaviours seen from the wire, and bad input) against the tokio
//! runtime on a real socket, configured by `conformance/paho.toml`.

use roost_conformance::runner::{self, Selection};
use std::path::Path;

#[test]
fn conformance_suite_passes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/paho.toml");
    let mut config = roost_runtime::config::Config::from_file(&path).expect("paho.toml loads");
    config.listeners[0].bind.set_port(0);
    let max_packet_size = config.limits.max_packet_size;
    let server = roost_tokio::start(config, roost_tokio::Hooks::default()).expect("broker starts");
    let port = server.local_addrs()[0].port();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("test runtime");
    let report = rt.block_on(async {
        let mut target = roost_conformance::scenario::Config::new("127.0.0.1", port);
        target.max_packet_size = max_packet_size;
        runner::run(&target, &Selection::default(), |v| {
            eprintln!("{}", v.line())
        })
        .await
    });
    eprintln!("{}", report.summary());
    let failures: Vec<String> = report
        .verdicts
        .iter()
        .filter(|v| v.result.is_err())
        .map(|v| v.line())
        .collect();
    assert!(
        failures.is_empty(),
        "failed scenarios:\n{}",
        failures.join("\n")
    );
    assert!(
        report.passed() >= 60,
        "the suite ran too few scenarios: {}",
        report.summary()
    );
    rt.block_on(server.shutdown());
}
