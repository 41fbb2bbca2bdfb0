//! The black-box conformance suite over TLS, WebSocket and WebSocket over
//! TLS against the tokio runtime, configured as `conformance/paho.toml`
//! (anonymous, `paho.acl`, keep alive capped at 60 s, packets of at most
//! 10000 bytes, refused subscriptions answered 0x80).
//!
//! Plain TCP runs the whole suite in `conformance.rs`; here a subset runs
//! over each of the other transports: both `basic` scenarios (raw client and
//! rumqttc together), `subscribe-failure` (the ACL through each transport),
//! redelivery on reconnect, a will, MQTT 5's maximum packet size, retained
//! message and flow control, and every bad-input scenario (malformed bytes,
//! oversize packets, a stalled half packet, a SUBSCRIBE flood, each followed
//! by a rumqttc health check), in 3.1.1 and 5.0: 36 scenarios per
//! transport. The whole suite passes over each transport too, run by hand
//! (conformance/README.md).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{TestCert, toml_path};
use roost_conformance::runner::{self, Report};
use roost_conformance::scenario::Config as SuiteConfig;
use roost_conformance::transport::{TlsClient, Transport};
use roost_runtime::config::Config;

/// The scenarios run over each transport (about 20 s per transport).
fn selected(name: &str) -> bool {
    const ALSO: [&str; 7] = [
        "v311.basic",
        "v5.basic",
        "v311.subscribe-failure",
        "v5.subscribe-failure",
        // A session resumed on a new connection.
        "v311.redelivery-on-reconnect",
        "v5.redelivery-on-reconnect",
        // The will of a connection that drops without DISCONNECT.
        "v5.will-message",
    ];
    const V5: [&str; 3] = [
        // Packets near the 10000-byte limit, across WebSocket messages.
        "v5.maximum-packet-size",
        "v5.retained-message",
        // Receive Maximum: the broker holds back deliveries until acked.
        "v5.flow-control-1",
    ];
    name.contains(".bad.") || ALSO.contains(&name) || V5.contains(&name)
}

/// Runs the selected scenarios against `port` over `transport`.
async fn run_subset(port: u16, transport: Transport, max_packet_size: u32) -> Report {
    let mut config = SuiteConfig::new("127.0.0.1", port);
    config.max_packet_size = max_packet_size;
    let name = transport.name();
    config.target.transport = transport;
    let mut report = Report::default();
    for (index, scenario) in runner::all_scenarios().iter().enumerate() {
        if !selected(scenario.name) {
            continue;
        }
        let verdict = runner::run_one(&config, index, scenario).await;
        eprintln!(
            "[{name}] {} ({:.1} s)",
            verdict.line(),
            verdict.elapsed.as_secs_f32()
        );
        report.verdicts.push(verdict);
    }
    eprintln!("[{name}] {}", report.summary());
    report
}

#[test]
fn conformance_subset_over_tls_ws_and_wss() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = TestCert::new(dir.path());
    let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/paho.acl");
    let tls = format!(
        "cert = {}\nkey = {}\n",
        toml_path(&cert.cert_path),
        toml_path(&cert.key_path)
    );
    let listener = |protocol: &str, extra: &str| {
        format!(
            "[[listener]]\nprotocol = \"{protocol}\"\nbind = \"127.0.0.1:0\"\n\
             allow_anonymous = true\nacl_file = {}\n{extra}",
            toml_path(&acl)
        )
    };
    let ws = "ws_path = \"/mqtt\"\n";
    let text = [
        listener("tls", &tls),
        listener("ws", ws),
        listener("wss", &format!("{tls}{ws}")),
        "[limits]\nmax_keepalive_secs = 60\nmax_packet_size = 10000\n\
         [mqtt]\nsubscribe_denied = \"unspecified_error\"\n"
            .to_owned(),
    ]
    .concat();
    let config = Config::from_toml_str(&text).expect("config");
    let max_packet_size = config.limits.max_packet_size;
    let server = roost_tokio::start(config, roost_tokio::Hooks::default()).expect("broker starts");
    let ports: Vec<u16> = server.local_addrs().iter().map(|a| a.port()).collect();

    // The certificate names 127.0.0.1 and localhost: the TLS runs verify
    // it, once by the host connected to and once by --sni's name.
    let by_host = TlsClient::from_pem(cert.cert_pem.as_bytes(), "127.0.0.1", "127.0.0.1")
        .expect("tls client");
    let by_sni = TlsClient::from_pem(cert.cert_pem.as_bytes(), "localhost", "127.0.0.1")
        .expect("tls client");
    let runs = [
        (
            ports[0],
            Transport {
                tls: Some(by_host),
                ws_path: None,
            },
        ),
        (
            ports[1],
            Transport {
                tls: None,
                ws_path: Some("/mqtt".into()),
            },
        ),
        (
            ports[2],
            Transport {
                tls: Some(by_sni),
                ws_path: Some("/mqtt".into()),
            },
        ),
    ];

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("test runtime");
    let mut failures = Vec::new();
    let mut summaries = Vec::new();
    for (port, transport) in runs {
        let name = transport.name();
        let report = rt.block_on(run_subset(port, transport, max_packet_size));
        summaries.push(format!("{name}: {}", report.summary()));
        let expected = runner::all_scenarios()
            .iter()
            .filter(|s| selected(s.name))
            .count();
        assert_eq!(
            report.verdicts.len(),
            expected,
            "{name}: every selected scenario ran"
        );
        failures.extend(
            report
                .verdicts
                .iter()
                .filter(|v| v.result.is_err())
                .map(|v| format!("[{name}] {}", v.line())),
        );
    }
    eprintln!("{}", summaries.join("\n"));
    assert!(
        failures.is_empty(),
        "failed scenarios:\n{}",
        failures.join("\n")
    );
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), server.shutdown())
            .await
            .expect("shutdown in time")
    });
}

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
