//! TLS verification from the client side against the tokio runtime: a
//! certificate for another name is refused by every client the suite uses.
//! The conformance subset over TLS, WebSocket and WebSocket over TLS runs
//! against every runtime in the parity suite (`tests/parity.rs`).

mod common;

use std::time::Duration;

use common::{TestCert, toml_path};
use roost_conformance::runner;
use roost_conformance::scenario::Config as SuiteConfig;
use roost_conformance::transport::TlsClient;
use roost_runtime::config::Config;

/// A certificate that does not name the host is refused, by the raw client
/// and by rumqttc alike: verification is never skipped.
#[test]
fn tls_refuses_a_certificate_for_another_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = TestCert::new(dir.path());
    let text = format!(
        "[[listener]]\nprotocol = \"tls\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n\
         cert = {}\nkey = {}\n",
        toml_path(&cert.cert_path),
        toml_path(&cert.key_path)
    );
    let config = Config::from_toml_str(&text).expect("config");
    let server = roost_tokio::start(config, roost_tokio::Hooks::default()).expect("broker starts");
    let port = server.local_addrs()[0].port();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("test runtime");
    let mut config = SuiteConfig::new("127.0.0.1", port);
    config.target.transport.tls = Some(
        TlsClient::from_pem(cert.cert_pem.as_bytes(), "mqtt.example", "127.0.0.1")
            .expect("tls client"),
    );
    // `basic` connects with the raw client first; a bad-input scenario
    // connects its rumqttc health-check subscriber first.
    for filter in ["basic", "bad.topic-nul"] {
        let selection = runner::Selection {
            version: None,
            filter: Some(filter.into()),
        };
        let report = rt.block_on(runner::run(&config, &selection, |v| {
            eprintln!("{}", v.line())
        }));
        assert_eq!(report.failed(), 2, "{filter}: {}", report.summary());
        for v in &report.verdicts {
            let line = v.line();
            assert!(
                line.contains("not valid for name \"mqtt.example\""),
                "the failure names the certificate's names: {line}"
            );
        }
    }
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), server.shutdown())
            .await
            .expect("shutdown in time")
    });
}
