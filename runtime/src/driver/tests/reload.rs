//! A re-read configuration applied on the virtual clock: listeners added
//! and removed, limits changed, bridges added, removed and re-added.

use super::*;

fn config(text: &str) -> Config {
    let mut config = Config::from_toml_str(text).expect("config");
    config.sys.interval_secs = 0;
    config
}

fn reload(h: &mut Harness, config: &Config) -> Vec<FileError> {
    let errors = h.driver.handle_reload(h.now, config, Files::load(config));
    h.drain();
    errors
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

const ONE: &str =
    "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:1883\"\nallow_anonymous = true\n";
const TWO: &str =
    "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:1884\"\nallow_anonymous = true\n";

#[test]
fn listeners_are_added_and_removed_and_keep_their_numbers() {
    let first = config(ONE);
    let mut h = Harness::new(&first, Files::load(&first), None);
    let v3 = h.accept();
    h.read(v3, &connect("v3", None, true));
    let v5 = h.accept();
    h.read(v5, &connect_v5("v5"));
    assert_eq!(connack_code(h.output(v3)), Some(0));

    // Added: the runtime is asked to bind it as listener 1.
    let both = config(&format!("{ONE}{TWO}"));
    assert!(reload(&mut h, &both).is_empty());
    let bind: SocketAddr = "127.0.0.1:1884".parse().unwrap();
    assert_eq!(h.listens, [(1, bind)]);
    assert!(h.unlistens.is_empty());
    h.driver.handle_listening(1, bind);
    let on_new = h.driver.handle_accept(h.now, 1, None);
    h.drain();
    h.read(on_new, &connect("new", None, true));
    assert_eq!(connack_code(h.output(on_new)), Some(0));

    // The same file again changes nothing.
    assert!(reload(&mut h, &both).is_empty());
    assert_eq!(h.listens.len(), 1);
    assert!(h.unlistens.is_empty());

    // Removed: no more accepting, and its clients are closed (MQTT 5 with
    // DISCONNECT 0x8B); the other listener's client stays.
    h.written.clear();
    let second = config(TWO);
    assert!(reload(&mut h, &second).is_empty());
    assert_eq!(h.unlistens, [0]);
    assert!(h.driver.is_listener_removed(0));
    assert!(!h.driver.is_listener_removed(1));
    assert!(contains(h.output(v5), &[0xE0]) && contains(h.output(v5), &[0x8B]));
    for conn in [v3, v5] {
        assert!(h.shut_write.contains(&conn), "{conn} not closed");
    }
    assert!(!h.shut_write.contains(&on_new));
    assert!(h.output(on_new).is_empty());

    // Added back at the same address: a new number, never a reused one.
    assert!(reload(&mut h, &both).is_empty());
    assert_eq!(h.listens.last().map(|l| l.0), Some(2));
    // A bind that fails leaves it out, and the next reload tries again.
    h.driver
        .handle_listen_failed(2, &io::Error::from(io::ErrorKind::AddrInUse));
    assert!(h.driver.is_listener_removed(2));
    assert!(reload(&mut h, &both).is_empty());
    assert_eq!(h.listens.last().map(|l| l.0), Some(3));
}

#[test]
fn a_new_listener_whose_file_fails_is_not_added() {
    let first = config(ONE);
    let mut h = Harness::new(&first, Files::load(&first), None);
    let broken = config(&format!(
        "{ONE}{TWO}password_file = \"/nonexistent/roost-reload-test\"\n"
    ));
    let errors = reload(&mut h, &broken);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(h.listens.is_empty());
}

#[test]
fn lowered_limits_apply_to_new_clients_and_promises_hold() {
    let first = config(ONE);
    let mut h = Harness::new(&first, Files::load(&first), None);
    let old = h.accept();
    h.read(old, &connect_v5("old"));
    let lowered = config(&format!("{ONE}[limits]\nmax_packet_size = 100\n"));
    assert!(reload(&mut h, &lowered).is_empty());
    let new = h.accept();
    h.read(new, &connect_v5("new"));
    // CONNACK announces 100 (Maximum Packet Size, property 0x27).
    assert!(contains(h.output(new), &[0x27, 0, 0, 0, 100]));
    h.written.clear();
    h.read(old, &publish_v5("t", &[b'o'; 200], 1));
    // PUBACK (0x10: no subscribers), not DISCONNECT.
    assert_eq!(h.output(old), [0x40, 0x03, 0x00, 0x01, 0x10]);
    h.read(new, &publish_v5("t", &[b'n'; 200], 1));
    // DISCONNECT 0x95 Packet too large.
    assert!(contains(h.output(new), &[0xE0]) && contains(h.output(new), &[0x95]));
}

const BRIDGE: &str = "[[bridge]]\nname = \"up\"\naddress = \"remote.example:1883\"\n\
                      protocol_version = \"3.1.1\"\nclient_id = \"edge\"\nclean_session = false\n\
                      [[bridge.topic]]\npattern = \"t/#\"\ndirection = \"out\"\nqos = 1\n";

/// Dials the bridge's pending connection and answers its CONNECT.
fn bring_up(h: &mut Harness) -> ConnId {
    let (conn, addr) = h.dials.pop().expect("the bridge dials");
    assert_eq!(addr, "remote.example:1883");
    h.driver.handle_connected(h.now, conn, None);
    h.drain();
    assert_eq!(h.output(conn).first(), Some(&0x10), "CONNECT expected");
    h.read(conn, &[0x20, 0x02, 0x00, 0x00]);
    conn
}

/// The packet id of the PUBLISH to `topic` in `out`.
fn publish_id(out: &[u8], topic: &str) -> Option<u16> {
    let mut needle = (topic.len() as u16).to_be_bytes().to_vec();
    needle.extend_from_slice(topic.as_bytes());
    let at = out.windows(needle.len()).position(|w| w == needle)? + needle.len();
    Some(u16::from_be_bytes([*out.get(at)?, *out.get(at + 1)?]))
}

#[test]
fn bridges_are_added_removed_and_resume_their_queue() {
    let first = config(ONE);
    let mut h = Harness::new(&first, Files::load(&first), None);
    let watcher = h.accept();
    h.read(watcher, &connect("watcher", None, true));
    h.read(watcher, &subscribe("$SYS/broker/connection/up/state", 0));
    let publisher = h.accept();
    h.read(publisher, &connect("publisher", None, true));

    // Added: it dials, connects and forwards.
    let with_bridge = config(&format!("{ONE}{BRIDGE}"));
    assert!(reload(&mut h, &with_bridge).is_empty());
    let remote = bring_up(&mut h);
    assert!(contains(
        h.output(watcher),
        b"\x00\x1f$SYS/broker/connection/up/state1"
    ));
    h.read(publisher, &publish("t/1", b"one", 1, 1));
    let id = publish_id(h.output(remote), "t/1").expect("t/1 forwarded");
    h.read(remote, &[0x40, 0x02, (id >> 8) as u8, id as u8]);

    // Removed: DISCONNECT to the remote, the socket closed, state 0.
    h.written.clear();
    assert!(reload(&mut h, &first).is_empty());
    assert_eq!(h.output(remote), [0xE0, 0x00]);
    assert!(h.shut_write.contains(&remote));
    assert!(contains(
        h.output(watcher),
        b"\x00\x1f$SYS/broker/connection/up/state0"
    ));
    assert!(h.dials.is_empty());
    // Meanwhile its session here queues what it would forward.
    h.read(publisher, &publish("t/2", b"two", 1, 2));
    assert!(h.driver.broker().has_session("roost-bridge/up"));
    assert_eq!(h.driver.broker().queued_count("roost-bridge/up"), 1);
    h.advance(Duration::from_secs(5));
    assert!(h.dials.is_empty(), "a removed bridge dialled");

    // Re-added under the same name: the queued message goes out.
    assert!(reload(&mut h, &with_bridge).is_empty());
    let remote = bring_up(&mut h);
    assert!(
        publish_id(h.output(remote), "t/2").is_some(),
        "t/2 not delivered"
    );
    assert!(publish_id(h.output(remote), "t/1").is_none(), "t/1 again");

    // Changed (keep-alive): restarted with the new settings, same queue.
    h.read(publisher, &publish("t/3", b"three", 1, 3));
    let changed = config(&format!(
        "{ONE}{}",
        BRIDGE.replace("clean_session", "keep_alive = 30\nclean_session")
    ));
    h.written.clear();
    assert!(reload(&mut h, &changed).is_empty());
    assert_eq!(h.output(remote), [0xE0, 0x00]);
    let again = bring_up(&mut h);
    assert_ne!(again, remote);
    // CONNECT with keep-alive 30 (after "MQTT", level 4 and the flags).
    assert!(contains(h.output(again), b"MQTT\x04\x00\x00\x1e"));
    assert!(
        publish_id(h.output(again), "t/3").is_some(),
        "t/3 not delivered"
    );
}

#[test]
fn a_connection_accepted_on_a_removed_listener_is_closed() {
    let both = config(&format!("{ONE}{TWO}"));
    let mut h = Harness::new(&both, Files::load(&both), None);
    assert!(reload(&mut h, &config(TWO)).is_empty());
    // A runtime that accepted before it saw the Unlisten.
    let late = h.driver.handle_accept(h.now, 0, None);
    h.drain();
    assert!(h.shut_write.contains(&late) || h.dropped.contains(&late));
    let fine = h.driver.handle_accept(h.now, 1, None);
    h.drain();
    h.read(fine, &connect("fine", None, true));
    assert_eq!(connack_code(h.output(fine)), Some(0));
}

#[test]
fn a_kept_listener_takes_its_new_settings_for_new_clients() {
    let open = config(ONE);
    let mut h = Harness::new(&open, Files::load(&open), None);
    let before = h.accept();
    h.read(before, &connect("before", None, true));
    assert_eq!(connack_code(h.output(before)), Some(0));
    // allow_anonymous off: the same listener (no Listen, no Unlisten)
    // refuses anonymous newcomers; the connected client stays.
    let closed = config(&ONE.replace("true", "false"));
    assert!(reload(&mut h, &closed).is_empty());
    assert!(h.listens.is_empty() && h.unlistens.is_empty());
    let after = h.accept();
    h.read(after, &connect("after", None, true));
    assert_eq!(connack_code(h.output(after)), Some(5), "not authorized");
    assert!(!h.shut_write.contains(&before));
    // And on again.
    assert!(reload(&mut h, &open).is_empty());
    let again = h.accept();
    h.read(again, &connect("again", None, true));
    assert_eq!(connack_code(h.output(again)), Some(0));
}
