//! The `roost` binary as an operator runs it: flags, configuration errors,
//! password file and ACL with SIGHUP reloads, and SIGTERM.

mod common;

use common::{Connect, Raw, V5, V311, run_roost, start_roost, toml_path};
use std::path::Path;

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
}

#[test]
fn help_lists_the_flags() {
    let (status, stdout, _) = run_roost(&["--help"]);
    assert!(status.success(), "roost --help exited with {status}");
    for flag in [
        "--config",
        "--port",
        "--bind",
        "--data-dir",
        "--verbose",
        "passwd",
    ] {
        assert!(
            stdout.contains(flag),
            "--help does not mention {flag}:\n{stdout}"
        );
    }
}

#[test]
fn bad_configuration_exits_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("roost.toml");
    let config_arg = config.to_str().expect("utf-8");

    write(&config, "[limits]\nmax_inflite = 3\n");
    let (status, _, stderr) = run_roost(&["--config", config_arg]);
    assert!(!status.success(), "an unknown key must fail");
    assert!(stderr.contains("max_inflite"), "{stderr}");

    write(&config, "[limits]\nmax_inflight = 0\n");
    let (status, _, stderr) = run_roost(&["--config", config_arg]);
    assert!(!status.success(), "an out-of-range value must fail");
    assert!(stderr.contains("limits.max_inflight"), "{stderr}");

    write(
        &config,
        "[[listener]]\nprotocol = \"tls\"\nbind = \"127.0.0.1:0\"\nkey = \"k.pem\"\n",
    );
    let (status, _, stderr) = run_roost(&["--config", config_arg]);
    assert!(!status.success(), "a missing key must fail");
    assert!(stderr.contains("listener[0].cert"), "{stderr}");
}

fn passwd_add(file: &Path, user: &str, password: &str) {
    let (status, stdout, stderr) = run_roost(&[
        "passwd",
        "add",
        user,
        "--password",
        password,
        "--file",
        file.to_str().expect("utf-8"),
    ]);
    assert!(
        status.success(),
        "roost passwd add {user} failed: {stdout}{stderr}"
    );
}

fn login<'a>(id: &'a str, user: &'a str, password: &'a str) -> Connect<'a> {
    Connect {
        client_id: id,
        username: Some(user),
        password: Some(password),
        keep_alive: 60,
        ..Connect::default()
    }
}

#[test]
fn passwords_and_acl_with_sighup_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let passwd = dir.path().join("passwd");
    let acl = dir.path().join("acl");
    let config = dir.path().join("roost.toml");
    passwd_add(&passwd, "alice", "alice-1");
    passwd_add(&passwd, "bob", "bob-1");
    write(&acl, "pattern readwrite u/%u/#\n");
    write(
        &config,
        &format!(
            "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
             allow_anonymous = false\npassword_file = {}\nacl_file = {}\n\
             [sys]\ninterval_secs = 0\n",
            toml_path(&passwd),
            toml_path(&acl)
        ),
    );
    let broker = start_roost(&config, 1);
    let addr = broker.addrs[0];

    // Good logins, in both versions.
    let mut alice = Raw::connected(addr, V311, &login("alice-1", "alice", "alice-1"));
    let mut bob = Raw::connected(addr, V5, &login("bob-1", "bob", "bob-1"));

    // A bad password: 0x04 in 3.1.1, 0x86 in 5.0.
    let (_, code) = Raw::connect(addr, V311, &login("x1", "alice", "wrong"));
    assert_eq!(code, 0x04, "3.1.1 bad password");
    let (_, code) = Raw::connect(addr, V5, &login("x2", "alice", "wrong"));
    assert_eq!(code, 0x86, "5.0 bad password");
    // Anonymous clients are refused: 0x05 in 3.1.1, 0x87 in 5.0.
    let anonymous = Connect {
        client_id: "anon",
        keep_alive: 60,
        ..Connect::default()
    };
    assert_eq!(Raw::connect(addr, V311, &anonymous).1, 0x05);
    assert_eq!(Raw::connect(addr, V5, &anonymous).1, 0x87);

    // The ACL: u/%u/# only.
    assert_eq!(alice.subscribe(1, "u/alice/#", 1), 1);
    assert_eq!(alice.subscribe(2, "u/bob/#", 0), 0x80, "3.1.1 denied");
    assert_eq!(alice.subscribe(3, "#", 0), 0x80, "3.1.1 denied wildcard");
    assert_eq!(bob.subscribe(1, "u/bob/#", 0), 0);
    assert_eq!(bob.subscribe(2, "u/alice/#", 0), 0x87, "5.0 denied");

    // Alice publishing to bob's tree is dropped. Her PUBACK proves the broker
    // handled it before bob's own marker, so bob must see the marker first.
    alice.publish("u/bob/secret", b"denied", 1, false);
    bob.publish("u/bob/marker", b"marker", 0, false);
    let first = bob.expect_publish();
    assert_eq!(first.topic, "u/bob/marker", "denied publish was delivered");
    // Her own tree works.
    alice.publish("u/alice/x", b"mine", 0, false);
    assert_eq!(alice.expect_publish().payload, b"mine");

    // Change the files: a new user, a new password for alice, a wider ACL.
    passwd_add(&passwd, "carol", "carol-1");
    passwd_add(&passwd, "alice", "alice-2");
    write(
        &acl,
        "pattern readwrite u/%u/#\nuser carol\ntopic read shared/#\nuser alice\ntopic write shared/#\n",
    );
    // Before SIGHUP the broker still has the old files.
    assert_eq!(
        Raw::connect(addr, V311, &login("c0", "carol", "carol-1")).1,
        0x04
    );
    broker.signal("HUP").expect("signal");
    assert!(
        broker.wait_log("password and ACL files reloaded", 1, common::WAIT),
        "no reload logged:\n{}",
        broker.log()
    );
    let mut carol = Raw::connected(addr, V5, &login("carol-1", "carol", "carol-1"));
    Raw::connected(addr, V311, &login("a2", "alice", "alice-2")).disconnect();
    assert_eq!(
        Raw::connect(addr, V311, &login("a3", "alice", "alice-1")).1,
        0x04,
        "the old password must stop working"
    );
    // The new ACL rule applies; the existing connections were kept.
    assert_eq!(carol.subscribe(1, "shared/#", 0), 0);
    assert_eq!(
        alice.subscribe(4, "shared/#", 0),
        0x80,
        "alice may only write"
    );
    alice.publish("shared/news", b"hello", 1, false);
    assert_eq!(carol.expect_publish().payload, b"hello");
    alice.publish("u/alice/y", b"still here", 0, false);
    assert_eq!(alice.expect_publish().payload, b"still here");
    bob.publish("u/bob/z", b"bob too", 0, false);
    assert_eq!(bob.expect_publish().payload, b"bob too");

    // A broken password file: the reload keeps the previous one and says why.
    write(&passwd, "this line has no colon\n");
    broker.signal("HUP").expect("signal");
    assert!(
        broker.wait_log("keeping the previous one", 1, common::WAIT),
        "no reload error logged:\n{}",
        broker.log()
    );
    let log = broker.log();
    let line = log
        .lines()
        .find(|l| l.contains("keeping the previous one"))
        .expect("error line");
    assert!(line.contains("password_file"), "{line}");
    assert!(
        line.contains("line 1"),
        "the error should name the line: {line}"
    );
    Raw::connected(addr, V5, &login("a4", "alice", "alice-2")).disconnect();
    Raw::connected(addr, V311, &login("c2", "carol", "carol-1")).disconnect();
    alice.publish("u/alice/z", b"after", 0, false);
    assert_eq!(alice.expect_publish().payload, b"after");
}

#[test]
fn sigterm_sends_disconnect_0x8b_and_exits_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("roost.toml");
    write(
        &config,
        "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n",
    );
    let broker = start_roost(&config, 1);
    let mut v5 = Raw::connected(
        broker.addrs[0],
        V5,
        &Connect {
            client_id: "term-5",
            keep_alive: 60,
            ..Connect::default()
        },
    );
    let mut v3 = Raw::connected(
        broker.addrs[0],
        V311,
        &Connect {
            client_id: "term-3",
            keep_alive: 60,
            ..Connect::default()
        },
    );
    broker.signal("TERM").expect("signal");
    let disconnect = v5.read_packet().expect("DISCONNECT");
    assert_eq!(disconnect.kind(), 14, "expected DISCONNECT: {disconnect:?}");
    assert_eq!(disconnect.body.first(), Some(&0x8b), "{disconnect:?}");
    // An MQTT 3.1.1 client has no DISCONNECT from the server: the
    // connection just ends.
    match v3.read_packet() {
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
        Ok(p) => panic!("3.1.1 client got {p:?}"),
    }
    let status = broker
        .wait_exit(std::time::Duration::from_secs(5))
        .unwrap_or_else(|| panic!("roost still running 5 s after SIGTERM:\n{}", broker.log()));
    assert!(status.success(), "exit status {status}:\n{}", broker.log());
}
