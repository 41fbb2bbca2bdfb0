//! Migrating from Mosquitto: a password file made by the real
//! `mosquitto_passwd` works unchanged, and `roost passwd` takes passwords
//! from standard input (no terminal needed) and refuses empty ones.

mod common;

use common::{BrokerProcess, toml_path};
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): apt-get install mosquitto mosquitto-clients")
        });
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("stdin");
    }
    // Every program here ends by itself: mosquitto_pub gives up on its own.
    child.wait_with_output().expect("wait")
}

fn publish(port: u16, user: &str, password: &str) -> bool {
    let port = port.to_string();
    run(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            user,
            "-P",
            password,
            "-t",
            "t",
            "-m",
            "x",
        ],
        None,
    )
    .status
    .success()
}

#[test]
fn a_mosquitto_password_file_works_unchanged() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("passwd");
    let f = file.to_str().expect("utf-8");
    // $7$ (PBKDF2-SHA512, Mosquitto 2's default) and $6$ (SHA-512).
    let made = run(
        "mosquitto_passwd",
        &["-c", "-b", f, "alice", "s3cret"],
        None,
    );
    assert!(made.status.success(), "mosquitto_passwd: {made:?}");
    let made = run(
        "mosquitto_passwd",
        &["-H", "sha512", "-b", f, "bob", "hunter2"],
        None,
    );
    assert!(made.status.success(), "mosquitto_passwd: {made:?}");
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(
        text.contains("alice:$7$") && text.contains("bob:$6$"),
        "{text}"
    );

    // roost passwd, password on stdin: the explicit flag, and a pipe alone.
    let roost = env!("CARGO_BIN_EXE_roost");
    let out = run(
        roost,
        &["passwd", "add", "carol", "--password-stdin", "--file", f],
        Some("pw carol\n"),
    );
    assert!(out.status.success(), "{out:?}");
    let out = run(
        roost,
        &["passwd", "add", "dave", "--file", f],
        Some("pw dave\n"),
    );
    assert!(out.status.success(), "no terminal: stdin is read: {out:?}");
    let out = run(
        roost,
        &["passwd", "add", "erin", "--password-stdin", "--file", f],
        Some("\n"),
    );
    assert!(!out.status.success(), "an empty password is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("must not be empty"));
    let out = run(
        roost,
        &["passwd", "add", "erin", "--password", "", "--file", f],
        None,
    );
    assert!(!out.status.success(), "an empty --password is refused");
    // upgrade names the users still on Mosquitto hashes.
    let out = run(roost, &["passwd", "upgrade", "--file", f], None);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("2 of 4 users") && said.ends_with("alice, bob\n"),
        "{out:?}"
    );

    let config = dir.path().join("roost.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\npassword_file = {}\n",
            toml_path(&file)
        ),
    )
    .expect("config");
    let broker = BrokerProcess::start(&config, 1);
    let port = broker.addrs[0].port();
    assert!(publish(port, "alice", "s3cret"), "$7$ hash, right password");
    assert!(
        !publish(port, "alice", "s3cret!"),
        "$7$ hash, wrong password"
    );
    assert!(publish(port, "bob", "hunter2"), "$6$ hash, right password");
    assert!(!publish(port, "bob", "hunter"), "$6$ hash, wrong password");
    assert!(
        publish(port, "carol", "pw carol"),
        "added through --password-stdin"
    );
    assert!(publish(port, "dave", "pw dave"), "added through a pipe");
    assert!(!publish(port, "erin", ""), "never added");
}
