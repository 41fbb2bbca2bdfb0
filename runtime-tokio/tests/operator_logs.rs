//! What an operator reads on stderr at the default level: one line per
//! connect, disconnect and refused authentication, with the fields named in
//! README, and no Rust debug output.

mod common;

use common::{BrokerProcess, toml_path};
use std::process::{Command, Stdio};

fn publish(port: u16, id: &str, password: &str) -> bool {
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-i",
            id,
            "-u",
            "alice",
        ])
        .args(["-P", password, "-t", "t", "-m", "x"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mosquitto_pub (apt-get install mosquitto-clients)")
        .success()
}

#[test]
fn connects_disconnects_and_refusals_are_one_line_each() {
    let dir = tempfile::tempdir().expect("dir");
    let passwd = dir.path().join("passwd");
    let mut file = roost_runtime::passwd::PasswordFile::new();
    file.set("alice", "right").expect("set");
    file.save(&passwd).expect("save");
    let config = dir.path().join("roost.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\npassword_file = {}\n",
            toml_path(&passwd)
        ),
    )
    .expect("config");
    let broker = BrokerProcess::start(&config, 1);
    let port = broker.addrs[0].port();
    assert!(publish(port, "good-client", "right"));
    assert!(!publish(port, "bad-client", "wrong"));
    assert!(
        broker.wait_log("authentication refused", 1),
        "{}",
        broker.log()
    );
    assert!(
        broker.wait_log("client disconnected", 1),
        "{}",
        broker.log()
    );
    let log = broker.log();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} line in:\n{log}"))
    };
    let connected = line("client connected");
    for field in [
        "client_id=good-client",
        "user=alice",
        "remote=127.0.0.1:",
        // The address the listener is bound to, not the configured port 0.
        &format!("listener=127.0.0.1:{port} "),
        "transport=tcp",
        // mosquitto_pub's defaults: MQTT 3.1.1, clean session, 60 s.
        "protocol=3.1.1",
        "session=clean",
        "keep_alive_s=60",
        " INFO ",
    ] {
        assert!(connected.contains(field), "{field} missing: {connected}");
    }
    let disconnected = line("client disconnected");
    for field in [
        "client_id=good-client",
        "reason=",
        "duration_s=",
        "remote=127.0.0.1:",
    ] {
        assert!(
            disconnected.contains(field),
            "{field} missing: {disconnected}"
        );
    }
    let refused = line("authentication refused");
    for field in ["user=alice", "remote=127.0.0.1:", "reason="] {
        assert!(refused.contains(field), "{field} missing: {refused}");
    }
    for debug in ["Some(", "None", "Os {", "Error {"] {
        assert!(
            !log.contains(debug),
            "Rust debug output {debug:?} in:\n{log}"
        );
    }
}
