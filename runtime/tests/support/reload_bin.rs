//! SIGHUP applying the whole re-read configuration file to a running
//! broker binary: listeners added and removed, a lowered limit, bridges
//! added, removed and added again. Each runtime's `tests/service.rs` runs
//! these with its own binary (after `service_bin`, whose `start` they
//! use). Every wait is bounded.
#![allow(dead_code)]

use crate::service_bin::{start, temp};
use roost_conformance::blocking::{Connect, Raw, V5, V311};
use roost_conformance::process::Broker;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

fn poll<T>(check: impl FnMut() -> Option<T>) -> Option<T> {
    roost_conformance::blocking::poll(WAIT, check)
}

/// A plain TCP listener on `ip`, any port.
fn listener(ip: &str) -> String {
    format!("[[listener]]\nprotocol = \"tcp\"\nbind = \"{ip}:0\"\nallow_anonymous = true\n")
}

fn client(id: &str) -> Connect<'_> {
    Connect {
        client_id: id,
        ..Default::default()
    }
}

/// Writes `text` as the configuration and sends SIGHUP; waits for the
/// `n`th reload to be done.
fn reload(roost: &Broker, config: &Path, text: &str, n: usize) {
    std::fs::write(config, text).expect("config");
    roost.signal("HUP").expect("signal");
    assert!(
        roost.wait_log("files reloaded", n, WAIT),
        "reload {n} not done; log:\n{}",
        roost.log()
    );
}

/// SIGHUP adds a listener (it takes clients; one whose port is taken is
/// logged and left out), lowers a limit (enforced on a new connection,
/// while a connected MQTT 5 client keeps what its CONNACK promised), and
/// removes a listener (connections refused, its MQTT 5
/// client gets DISCONNECT 0x8B, its MQTT 3.1.1 client is closed).
pub fn reload_listeners_and_limits(binary: &Path) {
    let dir = temp("reload-listeners");
    let config = dir.path().join("roost.toml");
    let first = listener("127.0.0.1");
    let second = listener("127.0.0.2");
    std::fs::write(&config, &first).expect("config");
    let roost = start(binary, &["--config", config.to_str().unwrap()], &[], 1);
    let old_addr = roost.addrs[0];
    let mut promised = Raw::connected(old_addr, V5, &client("promised"));

    // Added, and max_packet_size lowered; a third listener's port is
    // taken: it is logged and left out, the rest applies.
    let taker = std::net::TcpListener::bind("127.0.0.3:0").expect("bind");
    let taken = taker.local_addr().expect("addr");
    let third = format!("[[listener]]\nprotocol = \"tcp\"\nbind = \"{taken}\"\n");
    reload(
        &roost,
        &config,
        &format!("{first}{second}{third}[limits]\nmax_packet_size = 1000\n"),
        1,
    );
    // The runtime binds after the reload's own log line: wait for it.
    roost.wait_log("is not added", 1, WAIT);
    let log = roost.log();
    assert!(
        log.lines().any(|l| l.contains(" WARN ")
            && l.contains(&format!("cannot listen on {taken}"))
            && l.contains("is not added")),
        "the failed bind is not logged:\n{log}"
    );
    let addrs = poll(|| Some(roost.listening()).filter(|a| a.len() == 2))
        .unwrap_or_else(|| panic!("the new listener is not listening:\n{}", roost.log()));
    let new_addr = addrs[1];
    assert_eq!(new_addr.ip().to_string(), "127.0.0.2");
    let mut on_new = Raw::connected(new_addr, V311, &client("on-new"));
    assert_eq!(on_new.subscribe(1, "t/#", 0), 0);

    let mut limited = Raw::connected(old_addr, V5, &client("limited"));
    limited.send(&roost_conformance::blocking::publish_packet(
        V5,
        "t/big",
        &[b'x'; 2000],
        0,
        false,
        1,
    ));
    let disconnect = limited.read_packet().expect("DISCONNECT");
    assert_eq!(disconnect.kind(), 14, "{disconnect:?}");
    assert_eq!(disconnect.body.first(), Some(&0x95), "Packet too large");
    // Promised 16 MiB before the reload: still allowed.
    assert_eq!(promised.publish("t/big", &[b'y'; 2000], 1, false), 0x00);
    assert_eq!(on_new.expect_publish().payload.len(), 2000);

    // Removed: refused, its clients closed; the other listener's stay.
    let mut v311 = Raw::connected(old_addr, V311, &client("v311"));
    reload(&roost, &config, &second, 2);
    let disconnect = promised.read_packet().expect("DISCONNECT");
    assert_eq!(disconnect.kind(), 14, "{disconnect:?}");
    assert_eq!(disconnect.body.first(), Some(&0x8B), "Server shutting down");
    assert!(
        v311.read_packet().is_err(),
        "the MQTT 3.1.1 client was not closed"
    );
    assert!(
        TcpStream::connect_timeout(&old_addr, WAIT).is_err(),
        "the removed listener still accepts; log:\n{}",
        roost.log()
    );
    on_new.publish("t/after", b"still here", 0, false);
    assert_eq!(on_new.expect_publish().payload, b"still here");
}

/// SIGHUP adds a bridge (it forwards to a second broker), removes it
/// (nothing is forwarded, `$SYS/broker/connection/<name>/state` is 0, what
/// it would forward waits in its session) and adds it again (what waited
/// is delivered).
pub fn reload_bridges(binary: &Path) {
    let dir = temp("reload-bridges");
    let remote_config = dir.path().join("remote.toml");
    std::fs::write(&remote_config, listener("127.0.0.1")).expect("config");
    let remote = start(
        binary,
        &["--config", remote_config.to_str().unwrap()],
        &[],
        1,
    );
    let config = dir.path().join("roost.toml");
    let plain = listener("127.0.0.1");
    std::fs::write(&config, &plain).expect("config");
    let roost = start(binary, &["--config", config.to_str().unwrap()], &[], 1);
    let bridged = format!(
        "{plain}[[bridge]]\nname = \"cloud\"\naddress = \"{}\"\n\
         [[bridge.topic]]\npattern = \"b/#\"\ndirection = \"out\"\nqos = 1\n",
        remote.addrs[0]
    );
    let mut far = Raw::connected(remote.addrs[0], V311, &client("far"));
    assert_eq!(far.subscribe(1, "b/#", 1), 1);
    let mut near = Raw::connected(roost.addrs[0], V311, &client("near"));
    let state = |roost: &Broker| {
        let mut watcher = Raw::connected(roost.addrs[0], V311, &client("watcher"));
        watcher.subscribe(1, "$SYS/broker/connection/cloud/state", 0);
        let state = watcher.expect_publish().payload;
        watcher.disconnect();
        state
    };

    // Added: it connects and forwards.
    reload(&roost, &config, &bridged, 1);
    assert!(
        roost.wait_log("bridge connected", 1, WAIT),
        "the bridge did not connect; log:\n{}",
        roost.log()
    );
    assert_eq!(state(&roost), b"1");
    near.publish("b/1", b"first", 1, false);
    assert_eq!(far.expect_publish().payload, b"first");

    // Removed: nothing forwarded; the state says so.
    reload(&roost, &config, &plain, 2);
    assert_eq!(state(&roost), b"0");
    near.publish("b/2", b"queued", 1, false);
    assert!(
        far.read_packet_within(Duration::from_millis(500)).is_err(),
        "a removed bridge forwarded"
    );

    // Added again: what waited in its session goes out.
    reload(&roost, &config, &bridged, 3);
    let got = far.expect_publish();
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice()),
        ("b/2", &b"queued"[..]),
        "log:\n{}",
        roost.log()
    );
    assert_eq!(state(&roost), b"1");
}

/// One `#[test]` per reload check above, against the binary `$binary`
/// returns; every runtime's `tests/service.rs` declares them with this,
/// after `#[macro_use] mod reload_bin;`.
macro_rules! reload_tests {
    ($binary:expr) => {
        reload_tests!(@each $binary; reload_listeners_and_limits, reload_bridges);
    };
    (@each $binary:expr; $($check:ident),*) => {
        $(
            #[test]
            fn $check() {
                reload_bin::$check($binary);
            }
        )*
    };
}
