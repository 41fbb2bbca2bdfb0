//! Persistence end to end: the tokio runtime with a fjall store on disk keeps
//! a persistent session's queued messages and the retained messages across a
//! restart.

mod common;

use common::*;
use roost_runtime::config::Config;
use std::net::SocketAddr;

/// CONNECT, MQTT 3.1.1, clean session 0 (a session that outlives the
/// connection), keep-alive 0.
fn persistent_connect(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 0];
    body.extend_from_slice(&u16::try_from(client_id.len()).unwrap().to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    packet(0x10, &body)
}

/// Connects with a persistent session; returns the client and the CONNACK's
/// session-present flag.
fn resume(addr: SocketAddr, client_id: &str) -> (Raw, bool) {
    let mut raw = Raw::open(addr, 4);
    raw.send(&persistent_connect(client_id));
    let connack = raw.read_packet().expect("CONNACK");
    assert_eq!(connack.kind(), 2);
    assert_eq!(connack.body[1], 0, "CONNACK refused");
    (raw, connack.body[0] & 1 == 1)
}

#[test]
fn queued_and_retained_messages_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n\n\
         [persistence]\nstore = \"fjall\"\npath = {}\ndurability = \"sync\"\n",
        toml_path(&dir.path().join("data"))
    );
    let config = Config::from_toml_str(&text).expect("config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let server = roost_tokio::start(config.clone(), roost_tokio::Hooks::default()).expect("start");
    let addr = server.local_addrs()[0];
    let (mut keeper, present) = resume(addr, "keeper");
    assert!(!present);
    assert_eq!(keeper.subscribe(1, "p/#", 1), 1);
    keeper.disconnect();
    let mut publisher = Raw::connected(
        addr,
        4,
        &Connect {
            client_id: "publisher",
            ..Connect::default()
        },
    );
    // PUBACK comes only once the message is on disk for the offline session.
    assert_eq!(
        publisher.publish("p/1", b"kept across restarts", 1, false),
        0
    );
    assert_eq!(publisher.publish("r/1", b"retained", 1, true), 0);
    publisher.disconnect();
    rt.block_on(server.shutdown());

    let server = roost_tokio::start(config, roost_tokio::Hooks::default()).expect("restart");
    let addr = server.local_addrs()[0];
    let (mut keeper, present) = resume(addr, "keeper");
    assert!(present, "the session came back from the store");
    let message = keeper.expect_publish();
    assert_eq!(message.topic, "p/1");
    assert_eq!(message.payload, b"kept across restarts");
    assert_eq!(message.qos, 1);
    let mut fresh = Raw::connected(
        addr,
        4,
        &Connect {
            client_id: "fresh",
            ..Connect::default()
        },
    );
    assert_eq!(fresh.subscribe(1, "r/#", 1), 1);
    let retained = fresh.expect_publish();
    assert!(retained.retain);
    assert_eq!(retained.payload, b"retained");
    rt.block_on(server.shutdown());
}

// The crash test: the `roost` binary with `--data-dir` and `sync`
// durability, killed with SIGKILL at random moments under QoS 1/2 traffic
// (see `roost_conformance::crash`; `ROOST_CRASH_KILLS` sets the number of
// kills).
roost_conformance::crash_tests!(env!("CARGO_BIN_EXE_roost"));
