//! Bridges, checked the same way against every runtime's binary: roost
//! bridged to a real Mosquitto (the Debian package) and to another roost,
//! both directions, QoS 0/1/2, remapped prefixes, over TCP and over TLS
//! with client certificates; the remote stopped and
//! started again while messages flow, with nothing acknowledged lost; and a
//! both-ways bridge on one topic that does not loop.
//!
//! The clients are Mosquitto's own `mosquitto_pub` and `mosquitto_sub`.
//! Subscribers use persistent sessions made before anything is published
//! (`-c`, a first run that only subscribes), so a later run reads everything
//! that arrived meanwhile: no test waits for a subscription by sleeping.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::attacks::{Binary, Broker, SERIAL};
use crate::blocking::toml_path;

#[path = "../../runtime/tests/support/pki.rs"]
mod pki;

/// Declares one `#[test]` per bridge check against the broker executable
/// at `$bin`.
#[macro_export]
macro_rules! bridge_tests {
    ($bin:expr) => {
        $crate::bridge_tests!(@one $bin, to_mosquitto_both_directions_v5);
        $crate::bridge_tests!(@one $bin, to_mosquitto_both_directions_v311);
        $crate::bridge_tests!(@one $bin, remote_restart_loses_nothing_acknowledged);
        $crate::bridge_tests!(@one $bin, roost_to_roost_both_ways_does_not_loop);
        $crate::bridge_tests!(@one $bin, over_tls_with_client_certificates);
        $crate::bridge_tests!(@one $bin, queue_survives_a_crash_while_the_remote_is_down);
    };
    (@one $bin:expr, $check:ident) => {
        #[test]
        fn $check() {
            $crate::bridge::run($crate::bridge::$check, $bin);
        }
    };
}

/// Runs one check against the executable at `path`, alone.
pub fn run(check: fn(&Binary), path: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    check(&Binary::new(path));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A Mosquitto broker on a loopback port, with persistence in its folder;
/// killed when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
}

impl Mosquitto {
    fn start(dir: &Path, port: u16) -> Mosquitto {
        Mosquitto::start_with(dir, port, "")
    }

    /// [`Mosquitto::start`] with more configuration lines (further
    /// listeners, say).
    fn start_with(dir: &Path, port: u16, extra: &str) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nautosave_interval 1\nqueue_qos0_messages true\n{}{extra}",
                dir.display(),
                // As root, Mosquitto would drop to a user that cannot write
                // the test's folder, and forget its sessions.
                if is_root() { "user root\n" } else { "" }
            ),
        )
        .expect("write mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (scripts/install-test-deps.sh)");
        wait_port(port);
        Mosquitto { child, port }
    }

    /// SIGTERM, so it saves its sessions, and waits for it to exit.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `mosquitto_pub` one message; panics unless the broker took it (for QoS
/// 1 and 2: acknowledged).
fn publish(port: u16, version: &str, topic: &str, payload: &str, qos: u8) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
        .args(["-t", topic, "-m", payload, "-q", &qos.to_string()])
        .status()
        .expect("mosquitto_pub is installed");
    assert!(status.success(), "mosquitto_pub {topic} {payload} failed");
}

/// Makes the persistent session `id` subscribed to `filter` at QoS 2.
fn make_session(port: u16, id: &str, filter: &str) {
    let _ = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "311"])
        .args(["-c", "-i", id, "-t", filter, "-q", "2", "-E"])
        .status()
        .expect("mosquitto_sub is installed");
}

/// Reads the persistent session `id` until `count` messages came or
/// `within` passed: `topic payload` lines.
fn read_session(port: u16, id: &str, filter: &str, count: usize, within: Duration) -> Vec<String> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "311"])
        .args(["-c", "-i", id, "-t", filter, "-q", "2", "-v"])
        .args([
            "-C",
            &count.to_string(),
            "-W",
            &within.as_secs().max(1).to_string(),
        ])
        .output()
        .expect("mosquitto_sub is installed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `lines` without repeats, each where it first came (QoS 1 may come
/// twice across a restart).
fn first_occurrences(lines: Vec<String>) -> Vec<String> {
    let mut first: Vec<String> = Vec::new();
    for line in lines {
        if !first.contains(&line) {
            first.push(line);
        }
    }
    first
}

/// Waits until roost's retained bridge state for `name` is `want`.
fn wait_state(port: u16, name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", &format!("$SYS/broker/connection/{name}/state")])
            .args(["-C", "1", "-W", "2"])
            .output()
            .expect("mosquitto_sub is installed");
        if String::from_utf8_lossy(&out.stdout).trim() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bridge {name} never reached state {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_roost(bin: &Binary, dir: &Path, port: u16, bridges: &str) -> Broker {
    let toml = format!(
        "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:{port}\"\nallow_anonymous = true\n\n\
         [limits]\nqueue_qos0_offline = true\n\n{bridges}"
    );
    bin.start(dir, &toml, 1)
        .unwrap_or_else(|e| panic!("[{}] {e}", bin.name()))
}

fn bridge_table(name: &str, port: u16, version: &str, extra: &str) -> String {
    format!(
        "[[bridge]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\n\
         protocol_version = \"{version}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n{extra}"
    )
}

/// Topic rules of the both-directions checks: `sensors/#` out under the
/// remote prefix `site7/`, `cmd/#` in under the local prefix `remote/`.
const BOTH_WAYS_RULES: &str = "[[bridge.topic]]\npattern = \"sensors/#\"\ndirection = \"out\"\nqos = 2\n\
                 remote_prefix = \"site7/\"\n\
                 [[bridge.topic]]\npattern = \"cmd/#\"\ndirection = \"in\"\nqos = 2\n\
                 local_prefix = \"remote/\"\n";

fn both_directions(bin: &Binary, version: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mosquitto = Mosquitto::start(dir.path(), free_port());
    let roost_port = free_port();
    let roost_dir = dir.path().join("roost");
    std::fs::create_dir(&roost_dir).expect("mkdir");
    make_session(mosquitto.port, "cloud-sub", "site7/sensors/#");
    let roost = start_roost(
        bin,
        &roost_dir,
        roost_port,
        &bridge_table("cloud", mosquitto.port, version, BOTH_WAYS_RULES),
    );
    check_both_ways(bin, &roost, roost_port, mosquitto.port, true);
}

/// With roost on `roost_port` bridged by [`BOTH_WAYS_RULES`] to a remote
/// whose clients use `remote_port` (where `cloud-sub` already subscribed):
/// QoS 0/1/2 each way arrive, remapped.
fn check_both_ways(
    bin: &Binary,
    roost: &Broker,
    roost_port: u16,
    remote_port: u16,
    out_qos0: bool,
) {
    make_session(roost_port, "edge-sub", "remote/cmd/#");
    wait_state(roost_port, "cloud", "1");
    for qos in 0..=2u8 {
        if qos > 0 || out_qos0 {
            publish(
                roost_port,
                "mqttv5",
                &format!("sensors/t{qos}"),
                &format!("out{qos}"),
                qos,
            );
        }
        publish(
            remote_port,
            "mqttv311",
            &format!("cmd/c{qos}"),
            &format!("in{qos}"),
            qos,
        );
    }
    let mut expected = vec![
        "site7/sensors/t0 out0",
        "site7/sensors/t1 out1",
        "site7/sensors/t2 out2",
    ];
    if !out_qos0 {
        expected.remove(0);
    }
    let out = read_session(
        remote_port,
        "cloud-sub",
        "site7/sensors/#",
        expected.len(),
        Duration::from_secs(10),
    );
    assert_eq!(
        out,
        expected,
        "[{}] out, remapped to the remote prefix; roost log:\n{}",
        bin.name(),
        roost.log()
    );
    let inbound = read_session(
        roost_port,
        "edge-sub",
        "remote/cmd/#",
        3,
        Duration::from_secs(10),
    );
    assert_eq!(
        inbound,
        [
            "remote/cmd/c0 in0",
            "remote/cmd/c1 in1",
            "remote/cmd/c2 in2"
        ],
        "[{}] in, remapped to the local prefix; roost log:\n{}",
        bin.name(),
        roost.log()
    );
}

/// Roost bridged to Mosquitto over MQTT 5: out and in, QoS 0/1/2, prefixes.
pub fn to_mosquitto_both_directions_v5(bin: &Binary) {
    both_directions(bin, "5");
}

/// The same over MQTT 3.1.1.
pub fn to_mosquitto_both_directions_v311(bin: &Binary) {
    both_directions(bin, "3.1.1");
}

/// Mosquitto is stopped while messages are published to roost (each one
/// acknowledged by roost at QoS 1 or 2) and started again: every message
/// reaches the remote subscriber, in order.
pub fn remote_restart_loses_nothing_acknowledged(bin: &Binary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mosquitto_port = free_port();
    let mosquitto = Mosquitto::start(dir.path(), mosquitto_port);
    make_session(mosquitto_port, "cloud-sub", "data/#");
    let roost_port = free_port();
    let roost_dir = dir.path().join("roost");
    std::fs::create_dir(&roost_dir).expect("mkdir");
    let rules = "[[bridge.topic]]\npattern = \"data/#\"\ndirection = \"out\"\nqos = 2\n";
    let roost = start_roost(
        bin,
        &roost_dir,
        roost_port,
        &bridge_table("cloud", mosquitto_port, "5", rules),
    );
    wait_state(roost_port, "cloud", "1");
    let mut expected = Vec::new();
    for i in 0..10 {
        publish(
            roost_port,
            "mqttv5",
            "data/x",
            &format!("m{i}"),
            1 + (i % 2) as u8,
        );
        expected.push(format!("data/x m{i}"));
    }
    mosquitto.stop();
    wait_state(roost_port, "cloud", "0");
    for i in 10..30 {
        publish(
            roost_port,
            "mqttv5",
            "data/x",
            &format!("m{i}"),
            1 + (i % 2) as u8,
        );
        expected.push(format!("data/x m{i}"));
    }
    let _mosquitto = Mosquitto::start(dir.path(), mosquitto_port);
    wait_state(roost_port, "cloud", "1");
    let got = read_session(
        mosquitto_port,
        "cloud-sub",
        "data/#",
        30,
        Duration::from_secs(15),
    );
    // QoS 1 may be delivered twice across the restart; nothing is missing,
    // and first deliveries keep their order within each QoS (Mosquitto's
    // queue for an offline subscriber interleaves QoS 1 and 2 its own way).
    let first = first_occurrences(got);
    let by_parity = |lines: &[String], odd: bool| -> Vec<String> {
        lines
            .iter()
            .filter(|l| {
                let n: usize = l
                    .rsplit('m')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                (n % 2 == 1) == odd
            })
            .cloned()
            .collect()
    };
    for odd in [false, true] {
        assert_eq!(
            by_parity(&first, odd),
            by_parity(&expected, odd),
            "[{}] QoS {} messages lost or reordered across the remote's restart; roost log:\n{}",
            bin.name(),
            1 + u8::from(odd),
            roost.log()
        );
    }
}

/// Two roosts, the first bridged to the second in both directions on the
/// same topic, over MQTT 5 and 3.1.1: a message published on either side
/// reaches each side's subscriber exactly once.
pub fn roost_to_roost_both_ways_does_not_loop(bin: &Binary) {
    for version in ["5", "3.1.1"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a_dir).expect("mkdir");
        std::fs::create_dir(&b_dir).expect("mkdir");
        let (a_port, b_port) = (free_port(), free_port());
        let _b = start_roost(bin, &b_dir, b_port, "");
        let rules = "[[bridge.topic]]\npattern = \"loop/#\"\ndirection = \"both\"\nqos = 1\n";
        let _a = start_roost(
            bin,
            &a_dir,
            a_port,
            &bridge_table("b", b_port, version, rules),
        );
        make_session(a_port, "sub-a", "loop/#");
        make_session(b_port, "sub-b", "loop/#");
        wait_state(a_port, "b", "1");
        publish(a_port, "mqttv311", "loop/1", "from-a", 1);
        publish(b_port, "mqttv311", "loop/2", "from-b", 1);
        // Ask for more than can come, and wait: a loop would deliver them.
        let on_a = read_session(a_port, "sub-a", "loop/#", 10, Duration::from_secs(3));
        let on_b = read_session(b_port, "sub-b", "loop/#", 10, Duration::from_secs(3));
        assert_eq!(
            on_a,
            ["loop/1 from-a", "loop/2 from-b"],
            "[{}] {version}: on the bridging roost",
            bin.name()
        );
        assert_eq!(
            on_b,
            ["loop/1 from-a", "loop/2 from-b"],
            "[{}] {version}: on the remote roost",
            bin.name()
        );
    }
}

/// Roost bridged over TLS: it verifies the remote's certificate against a
/// private CA and presents a client certificate the remote requires. To a
/// Mosquitto (`require_certificate true`) over MQTT 5 and to another roost
/// (`require_certificate = true`) over MQTT 3.1.1; both directions, QoS
/// 0/1/2. Then a bridge that trusts another CA never comes up.
pub fn over_tls_with_client_certificates(bin: &Binary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::Pki::new("bridge test CA");
    let server = ca.leaf(
        2,
        &[(rcgen::DnType::CommonName, "localhost")],
        &["localhost", "127.0.0.1"],
    );
    let (server_crt, server_key) = server.write(dir.path(), "server");
    let (client_crt, client_key) = ca.client(3, "edge-bridge").write(dir.path(), "client");
    let ca_crt = dir.path().join("ca.crt");
    std::fs::write(&ca_crt, &ca.ca_pem).expect("write ca");
    let tls_table = |name: &str, port: u16, version: &str, ca: &Path| {
        bridge_table(
            name,
            port,
            version,
            &format!(
                "tls = true\nca = {}\ncert = {}\nkey = {}\n{BOTH_WAYS_RULES}",
                toml_path(ca),
                toml_path(&client_crt),
                toml_path(&client_key)
            ),
        )
    };

    // To Mosquitto: a plain listener for the test's clients, a TLS one
    // that requires a client certificate for the bridge.
    let mosquitto_dir = dir.path().join("mosquitto");
    std::fs::create_dir(&mosquitto_dir).expect("mkdir");
    let tls_port = free_port();
    let mosquitto = Mosquitto::start_with(
        &mosquitto_dir,
        free_port(),
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\nuse_identity_as_username true\n",
            ca_crt.display(),
            server_crt.display(),
            server_key.display()
        ),
    );
    wait_port(tls_port);
    make_session(mosquitto.port, "cloud-sub", "site7/sensors/#");
    let roost_dir = dir.path().join("roost");
    std::fs::create_dir(&roost_dir).expect("mkdir");
    let roost_port = free_port();
    let roost = start_roost(
        bin,
        &roost_dir,
        roost_port,
        &tls_table("cloud", tls_port, "5", &ca_crt),
    );
    // mosquitto_sub may miss a QoS 0 message Mosquitto sends a resumed
    // session before its SUBACK (Mosquitto's log shows it sent); QoS 0 out
    // is checked against roost below.
    check_both_ways(bin, &roost, roost_port, mosquitto.port, false);
    drop(roost);

    // To roost.
    let remote_dir = dir.path().join("remote");
    std::fs::create_dir(&remote_dir).expect("mkdir");
    let (remote_port, remote_tls) = (free_port(), free_port());
    let _remote = bin
        .start(
            &remote_dir,
            &format!(
                "[limits]\nqueue_qos0_offline = true\n\n\
                 [[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:{remote_port}\"\n\
                 allow_anonymous = true\n\n\
                 [[listener]]\nprotocol = \"tls\"\nbind = \"127.0.0.1:{remote_tls}\"\n\
                 cert = {}\nkey = {}\nclient_ca = {}\nrequire_certificate = true\n\
                 use_identity_as_username = true\n",
                toml_path(&server_crt),
                toml_path(&server_key),
                toml_path(&ca_crt)
            ),
            2,
        )
        .unwrap_or_else(|e| panic!("[{}] {e}", bin.name()));
    make_session(remote_port, "cloud-sub", "site7/sensors/#");
    let edge_dir = dir.path().join("edge");
    std::fs::create_dir(&edge_dir).expect("mkdir");
    let edge_port = free_port();
    let edge = start_roost(
        bin,
        &edge_dir,
        edge_port,
        &tls_table("cloud", remote_tls, "3.1.1", &ca_crt),
    );
    check_both_ways(bin, &edge, edge_port, remote_port, true);

    // A bridge that trusts another CA refuses the remote's certificate and
    // says why.
    let other_ca = dir.path().join("other-ca.crt");
    std::fs::write(&other_ca, pki::Pki::new("another CA").ca_pem).expect("write ca");
    let wrong_dir = dir.path().join("wrong");
    std::fs::create_dir(&wrong_dir).expect("mkdir");
    let wrong_port = free_port();
    let wrong = start_roost(
        bin,
        &wrong_dir,
        wrong_port,
        &tls_table("cloud", remote_tls, "3.1.1", &other_ca),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wrong.log().contains("bridge TLS failed") {
        assert!(
            Instant::now() < deadline,
            "[{}] no TLS failure logged for an untrusted remote:\n{}",
            bin.name(),
            wrong.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        wrong.log().contains("UnknownIssuer") || wrong.log().contains("unknown issuer"),
        "[{}] the log does not say the issuer is unknown:\n{}",
        bin.name(),
        wrong.log()
    );
    let state = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &wrong_port.to_string()])
        .args([
            "-t",
            "$SYS/broker/connection/cloud/state",
            "-C",
            "1",
            "-W",
            "2",
        ])
        .output()
        .expect("mosquitto_sub is installed");
    assert_eq!(
        String::from_utf8_lossy(&state.stdout).trim(),
        "0",
        "[{}] a bridge to an untrusted remote is up",
        bin.name()
    );
}

/// What roost acknowledged for a bridge whose remote is down waits in the
/// bridge's session, in the store: roost is killed (SIGKILL) with messages
/// waiting, started again, then the remote comes back and gets every one.
pub fn queue_survives_a_crash_while_the_remote_is_down(bin: &Binary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mosquitto_port = free_port();
    let mosquitto = Mosquitto::start(dir.path(), mosquitto_port);
    make_session(mosquitto_port, "cloud-sub", "data/#");
    mosquitto.stop();
    let roost_port = free_port();
    let roost_dir = dir.path().join("roost");
    std::fs::create_dir(&roost_dir).expect("mkdir");
    let bridges = format!(
        "[persistence]\nstore = \"fjall\"\npath = {}\ndurability = \"sync\"\n\n{}",
        toml_path(&roost_dir.join("store")),
        bridge_table(
            "cloud",
            mosquitto_port,
            "5",
            "[[bridge.topic]]\npattern = \"data/#\"\ndirection = \"out\"\nqos = 2\n"
        )
    );
    let roost = start_roost(bin, &roost_dir, roost_port, &bridges);
    // More than the engine keeps in flight to the bridge (32), so some wait
    // in flight and some in the session's queue.
    let mut expected = Vec::new();
    for i in 0..50 {
        publish(
            roost_port,
            "mqttv5",
            "data/x",
            &format!("m{i}"),
            1 + (i % 2) as u8,
        );
        expected.push(format!("data/x m{i}"));
    }
    roost.signal("KILL").expect("SIGKILL");
    assert!(
        roost.wait_exit(Duration::from_secs(10)).is_some(),
        "roost did not die"
    );
    drop(roost);
    let roost = start_roost(bin, &roost_dir, roost_port, &bridges);
    let _mosquitto = Mosquitto::start(dir.path(), mosquitto_port);
    wait_state(roost_port, "cloud", "1");
    let got = read_session(
        mosquitto_port,
        "cloud-sub",
        "data/#",
        50,
        Duration::from_secs(15),
    );
    let first = first_occurrences(got);
    let mut missing: Vec<&String> = expected.iter().filter(|m| !first.contains(m)).collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "[{}] {} of 50 acknowledged messages lost across the crash: {missing:?}; roost log:\n{}",
        bin.name(),
        missing.len(),
        roost.log()
    );
}
