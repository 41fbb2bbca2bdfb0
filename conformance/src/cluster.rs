//! Clusters (`[cluster]`), checked the same way against every runtime's
//! binary: real `nats-server` processes (JetStream on, one server or a
//! cluster of three) on free loopback ports, two to four roost nodes, and
//! Mosquitto's `mosquitto_pub`/`mosquitto_sub` and the suite's raw client
//! on different nodes.
//!
//! A node subscribes to NATS a moment after its client's SUBACK, so before
//! each check the publisher sends *probe* messages on the subscribed filter
//! until the subscriber has one: a condition waited for, not a sleep.
//! Subscribers use persistent sessions made before anything is published,
//! as in the bridge checks.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::attacks::{Binary, Broker, SERIAL};
use crate::client::RawClient;
use crate::scenario::Target;
use crate::wire::{Connect, Properties, Version, Will, prop};

/// Declares one `#[test]` per cluster check against the broker executable
/// at `$bin`.
#[macro_export]
macro_rules! cluster_tests {
    ($bin:expr) => {
        $crate::cluster_tests!(@one $bin, routes_qos_0_1_2_to_interested_nodes_without_collisions);
        $crate::cluster_tests!(@one $bin, takeover_across_nodes);
        $crate::cluster_tests!(@one $bin, a_persistent_session_moves_across_nodes);
        $crate::cluster_tests!(@one $bin, two_nodes_share_one_port);
        $crate::cluster_tests!(@one $bin, retained_and_wills_across_nodes);
        $crate::cluster_tests!(@one $bin, shared_subscription_balanced_across_nodes);
        $crate::cluster_tests!(@one $bin, acl_applies_to_messages_from_other_nodes);
        $crate::cluster_tests!(@one $bin, nats_server_killed_traffic_continues);
        $crate::cluster_tests!(@one $bin, a_killed_node_restarts_as_itself);
        $crate::cluster_tests!(@one $bin, refuses_what_is_not_implemented);
    };
    (@one $bin:expr, $check:ident) => {
        #[test]
        fn $check() {
            $crate::cluster::run($crate::cluster::$check, $bin);
        }
    };
}

/// Runs one check against the executable at `path`, alone.
pub fn run(check: fn(&Binary), path: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    check(&Binary::new(path));
}

/// How long a check waits for the cluster to carry something.
const PATIENCE: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `nats-server` processes with JetStream: one, or a cluster; killed when
/// dropped.
struct Nats {
    servers: Vec<Option<Child>>,
    ports: Vec<u16>,
}

impl Nats {
    fn start(dir: &Path, n: usize) -> Nats {
        Nats::start_with(dir, n, None)
    }

    /// [`Nats::start`], requiring `user`/`password` of clients if given.
    fn start_with(dir: &Path, n: usize, auth: Option<(&str, &str)>) -> Nats {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let route_list = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        for i in 0..n {
            let store = dir.join(format!("nats{i}"));
            let mut command = Command::new("nats-server");
            command
                .args(["-a", "127.0.0.1", "-p", &ports[i].to_string(), "-js"])
                .arg("-sd")
                .arg(&store)
                .args(["--server_name", &format!("n{i}")]);
            if let Some((user, password)) = auth {
                command.args(["--user", user, "--pass", password]);
            }
            if n > 1 {
                command.args([
                    "--cluster_name",
                    "roost-test",
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", routes[i]),
                    "--routes",
                    &route_list,
                ]);
            }
            let child = command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server is installed");
            servers.push(Some(child));
        }
        for &p in &ports {
            wait_port(p);
        }
        Nats { servers, ports }
    }

    fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.ports[i])
    }

    /// SIGKILL of server `i`.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// A roost node named `name` on a free port, joined through `urls`, with
/// `extra` TOML appended; its `$SYS` updates every second.
fn node(bin: &Binary, dir: &Path, name: &str, urls: &[String], extra: &str) -> (Broker, u16) {
    let (broker, port) = start_node(bin, dir, name, urls, extra, "");
    wait_sys(port, "connected", "1");
    (broker, port)
}

/// [`node`] with `cluster` appended to its `[cluster]` table, not waiting
/// for it to join.
fn start_node(
    bin: &Binary,
    dir: &Path,
    name: &str,
    urls: &[String],
    extra: &str,
    cluster: &str,
) -> (Broker, u16) {
    let port = free_port();
    (
        start_node_on(bin, dir, name, urls, extra, cluster, port),
        port,
    )
}

/// [`start_node`] listening on `port`.
fn start_node_on(
    bin: &Binary,
    dir: &Path,
    name: &str,
    urls: &[String],
    extra: &str,
    cluster: &str,
    port: u16,
) -> Broker {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let urls = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let toml = format!(
        "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:{port}\"\nallow_anonymous = true\n{extra}\n\
         [limits]\nqueue_qos0_offline = true\n\n[sys]\ninterval_secs = 1\n\n\
         [cluster]\nurls = [{urls}]\nnode = \"{name}\"\n{cluster}"
    );
    bin.start(&dir, &toml, 1)
        .unwrap_or_else(|e| panic!("[{}] {e}", bin.name()))
}

/// `mosquitto_pub` one message (`-r` if `retain`); panics unless the
/// broker took it (for QoS 1 and 2: acknowledged).
fn publish(port: u16, topic: &str, payload: &str, qos: u8, retain: bool) {
    let mut command = Command::new("mosquitto_pub");
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
        .args(["-t", topic, "-m", payload, "-q", &qos.to_string()]);
    if retain {
        command.arg("-r");
    }
    let status = command.status().expect("mosquitto_pub is installed");
    assert!(status.success(), "mosquitto_pub {topic} {payload} failed");
}

/// Makes the persistent session `id` subscribed to `filters` at QoS 2.
fn make_session(port: u16, id: &str, filters: &[&str]) {
    let mut command = Command::new("mosquitto_sub");
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "311"])
        .args(["-c", "-i", id, "-q", "2", "-E"]);
    for f in filters {
        command.args(["-t", f]);
    }
    let _ = command.status().expect("mosquitto_sub is installed");
}

/// Reads the persistent session `id` (subscribed to `filters`) until
/// `count` messages came or `within` passed: `topic payload` lines.
fn read_session(
    port: u16,
    id: &str,
    filters: &[&str],
    count: usize,
    within: Duration,
) -> Vec<String> {
    let mut command = Command::new("mosquitto_sub");
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "311"])
        .args(["-c", "-i", id, "-q", "2", "-v"])
        .args([
            "-C",
            &count.to_string(),
            "-W",
            &within.as_secs().max(1).to_string(),
        ]);
    for f in filters {
        command.args(["-t", f]);
    }
    let out = command.output().expect("mosquitto_sub is installed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Reads one retained message on `topic` from a fresh subscriber, if any
/// comes within a second.
fn read_retained(port: u16, topic: &str) -> Option<String> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", topic, "-C", "1", "-W", "1", "--retained-only"])
        .output()
        .expect("mosquitto_sub is installed");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// Waits until `$SYS/broker/cluster/<name>` on the node at `port` is `want`.
fn wait_sys(port: u16, name: &str, want: &str) {
    let deadline = Instant::now() + PATIENCE;
    let topic = format!("$SYS/broker/cluster/{name}");
    loop {
        if read_retained(port, &topic).as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{topic} never became {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node's `$SYS/broker/cluster/<name>`, as published after this call
/// (the second value a fresh subscriber sees).
fn fresh_sys(port: u16, name: &str) -> String {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", &format!("$SYS/broker/cluster/{name}")])
        .args(["-C", "2", "-W", "5"])
        .output()
        .expect("mosquitto_sub is installed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// Publishes `probe` messages on `topic` at `pub_port` until each of the
/// sessions `(port, id, filters)` has one: the cluster routes that filter
/// to them now. Returns, per session, the probes it read (a probe read
/// again, unacknowledged by a client that stopped at its count, once) and
/// the lines it read that were not probes.
fn probe(
    pub_port: u16,
    topic: &str,
    sessions: &[(u16, &str, &[&str])],
) -> Vec<(HashSet<String>, Vec<String>)> {
    let deadline = Instant::now() + PATIENCE;
    let mut seen = vec![(HashSet::new(), Vec::new()); sessions.len()];
    let mut n = 0;
    while seen.iter().any(|(probes, _)| probes.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "the cluster never routed {topic} to every subscriber"
        );
        n += 1;
        publish(pub_port, topic, &format!("probe{n}"), 1, false);
        for (i, (port, id, filters)) in sessions.iter().enumerate() {
            if !seen[i].0.is_empty() {
                continue;
            }
            for line in read_session(*port, id, filters, 1, Duration::from_secs(1)) {
                if line.contains(" probe") {
                    seen[i].0.insert(line);
                } else {
                    seen[i].1.push(line);
                }
            }
        }
    }
    seen
}

/// Reads the persistent session `id` until it has had at least `n` lines
/// that are not probes (or [`PATIENCE`] passed); returns those lines.
fn collect(port: u16, id: &str, filters: &[&str], n: usize) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    let mut got = Vec::new();
    // Each read ends by its timeout, not by a count: Mosquitto's client
    // may leave the message that reaches its count unacknowledged, and
    // the next read would see it again.
    while got.len() < n && Instant::now() < deadline {
        got.extend(no_probes(read_session(
            port,
            id,
            filters,
            usize::from(u16::MAX),
            Duration::from_secs(2),
        )));
    }
    got
}

/// The lines of each QoS (the payload names it: `m-<qos>`), in order:
/// Mosquitto's client prints a QoS 2 message only once it is released, so
/// it may show up after QoS 0 and 1 messages that came later.
fn by_qos(lines: &[String]) -> Vec<Vec<String>> {
    (0..3)
        .map(|q| {
            lines
                .iter()
                .filter(|l| l.ends_with(&format!("m-{q}")))
                .cloned()
                .collect()
        })
        .collect()
}

/// Drops probe lines.
fn no_probes(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .filter(|l| !l.contains(" probe"))
        .collect()
}

/// QoS 0, 1 and 2 published on one node reach persistent subscribers on the
/// others exactly once and in order, over topics whose levels hold `.`,
/// `*`, `>`, `$`, spaces, `=` and nothing; a node gets only what matches
/// its subscriptions (`t/a.b` is not `t/a/b`), and counts what it received
/// in `$SYS/broker/cluster/received`.
pub fn routes_qos_0_1_2_to_interested_nodes_without_collisions(bin: &Binary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start(dir.path(), 1);
    let urls = [nats.url(0)];
    let (_a, a) = node(bin, dir.path(), "a", &urls, "");
    let (_b, b) = node(bin, dir.path(), "b", &urls, "");
    let (_c, c) = node(bin, dir.path(), "c", &urls, "");
    let b_filters: &[&str] = &["t/#", "$d/#"];
    let c_filters: &[&str] = &["t/a.b", "t/probe"];
    make_session(b, "sub-b", b_filters);
    make_session(c, "sub-c", c_filters);
    let probed = probe(
        a,
        "t/probe",
        &[(b, "sub-b", b_filters), (c, "sub-c", c_filters)],
    );
    probe(a, "$d/probe", &[(b, "sub-b", b_filters)]);
    let sent = [
        ("t/q0", 0),
        ("t/q1", 1),
        ("t/q2", 2),
        ("t/a.b", 1),
        ("t/a/b", 1),
        ("t/*", 1),
        ("t/>", 1),
        ("t/ sp ace", 2),
        ("t//empty", 1),
        ("t/a=2Eb", 1),
        ("$d/x.y", 1),
    ];
    for (topic, qos) in sent {
        publish(a, topic, &format!("m-{qos}"), qos, false);
    }
    let got = collect(b, "sub-b", b_filters, sent.len());
    let want: Vec<String> = sent.iter().map(|(t, q)| format!("{t} m-{q}")).collect();
    assert_eq!(got.len(), want.len(), "[{}] on node b: {got:?}", bin.name());
    assert_eq!(by_qos(&got), by_qos(&want), "[{}] on node b", bin.name());
    let got_c = read_session(c, "sub-c", c_filters, 1000, Duration::from_secs(2));
    let mut probes_c = probed[1].0.clone();
    probes_c.extend(got_c.iter().filter(|l| l.contains(" probe")).cloned());
    let probes_c = probes_c.len();
    assert_eq!(
        no_probes(got_c.clone()),
        ["t/a.b m-1"],
        "[{}] on node c: only what matches t/a.b",
        bin.name()
    );
    // Nothing twice on b either.
    let again = no_probes(read_session(
        b,
        "sub-b",
        b_filters,
        1000,
        Duration::from_secs(2),
    ));
    assert!(
        again.is_empty(),
        "[{}] duplicates on b: {again:?}",
        bin.name()
    );
    // What node c took from NATS: its probes and the one match, nothing of
    // the rest (NATS sends a node only what it subscribed to).
    let received: usize = fresh_sys(c, "received").parse().unwrap_or(usize::MAX);
    assert_eq!(
        received,
        probes_c + 1,
        "[{}] node c received more than it subscribed to",
        bin.name()
    );
    assert_eq!(
        read_retained(c, "$SYS/broker/cluster/node").as_deref(),
        Some("c")
    );
}

/// Waits until node `port` has heard of `n` claims from other nodes.
fn wait_claims(port: u16, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let heard: u64 = read_retained(port, "$SYS/broker/cluster/claims")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if heard >= n {
            return;
        }
        assert!(Instant::now() < deadline, "node never heard {n} claims");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One client identifier is one client cluster-wide: connecting on node b
/// closes its connection on node a (MQTT 5: DISCONNECT 0x8E Session taken
/// over; 3.1.1: the connection is closed), and node b keeps the new one.
///
/// Node b is let hear of the connection on node a (its claim) before the
/// client connects there: two connections of one client made on two nodes
/// at the same moment may both be closed (see the README).
pub fn takeover_across_nodes(bin: &Binary) {
    let dir = tempfile::tempdir().expect("tempdir");
    // A NATS that wants a password: the nodes give it (`cluster.user`,
    // `cluster.password`); a node with the wrong one is refused, and says so.
    let nats = Nats::start_with(dir.path(), 1, Some(("roost", "s3cret")));
    let urls = [nats.url(0)];
    let login = "user = \"roost\"\npassword = \"s3cret\"\n";
    let (_a, a) = start_node(bin, dir.path(), "a", &urls, "", login);
    let (_b, b) = start_node(bin, dir.path(), "b", &urls, "", login);
    wait_sys(a, "connected", "1");
    wait_sys(b, "connected", "1");
    let (wrong, _) = start_node(
        bin,
        dir.path(),
        "c",
        &urls,
        "",
        "user = \"roost\"\npassword = \"wrong\"\n",
    );
    assert!(
        wrong.wait_log("uthorization", 1, PATIENCE),
        "[{}] a node with the wrong NATS password did not say so:\n{}",
        bin.name(),
        wrong.log()
    );
    drop(wrong);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let target = |port| Target {
        host: "127.0.0.1".into(),
        port,
        transport: Default::default(),
    };
    for (round, version) in [Version::V5, Version::V311].into_iter().enumerate() {
        let connect = Connect::new(version, "roaming");
        let result: Result<(), String> = runtime.block_on(async {
            let (mut old, _) = RawClient::connect(&target(a), &connect)
                .await
                .map_err(|e| e.to_string())?;
            wait_claims(b, round as u64 + 1);
            let (mut new, _) = RawClient::connect(&target(b), &connect)
                .await
                .map_err(|e| e.to_string())?;
            let closed = old
                .expect_close(PATIENCE)
                .await
                .map_err(|e| format!("the old connection on node a: {e}"))?;
            if version == Version::V5 && closed.disconnect_code() != Some(0x8E) {
                return Err(format!(
                    "node a closed without DISCONNECT 0x8E: {:?}",
                    closed.packets
                ));
            }
            new.ping()
                .await
                .map_err(|e| format!("the new connection on node b: {e}"))?;
            new.disconnect()
                .await
                .map_err(|e| format!("the new connection on node b: {e}"))?;
            Ok(())
        });
        result.unwrap_or_else(|e| panic!("[{}] {version:?}: {e}", bin.name()));
    }
}

/// A persistent session moves with its client: messages queued for it on
/// node a while it was offline are delivered when it reconnects to node b
/// (Mosquitto's client, MQTT 3.1.1), and an MQTT 5 client that resumes on
/// another node gets CONNACK session present, its queued QoS 1 and 2
/// messages, and its subscriptions without subscribing again; a takeover
/// while it is connected closes the old connection with 0x8E and moves the
/// session back.
pub fn a_persistent_session_moves_across_nodes(bin: &Binary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start(dir.path(), 1);
    let urls = [nats.url(0)];
    let (_a, a) = node(bin, dir.path(), "a", &urls, "");
    let (_b, b) = node(bin, dir.path(), "b", &urls, "");

    // Mosquitto's client: queued on a, read on b.
    make_session(a, "mover311", &["m311/#"]);
    publish(a, "m311/x", "q1", 1, false);
    publish(a, "m311/x", "q2", 2, false);
    let mut got = read_session(b, "mover311", &["m311/#"], 2, Duration::from_secs(10));
    got.sort();
    assert_eq!(
        got,
        ["m311/x q1", "m311/x q2"],
        "[{}] the queued messages did not move with the session",
        bin.name()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let target = |port| Target {
        host: "127.0.0.1".into(),
        port,
        transport: Default::default(),
    };
    let mut connect = Connect::new(Version::V5, "mover5");
    connect.clean = false;
    connect.props = Properties::new().int(prop::SESSION_EXPIRY, 600);
    let result: Result<(), String> = runtime.block_on(async {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
        let (mut first, ack) = RawClient::connect(&target(a), &connect)
            .await
            .map_err(|e| fail("connect on a", &e))?;
        if ack.session_present {
            return Err("a new client had a session".into());
        }
        first
            .subscribe("m5/#", 2)
            .await
            .map_err(|e| fail("subscribe on a", &e))?;
        first
            .disconnect()
            .await
            .map_err(|e| fail("disconnect", &e))?;
        publish(a, "m5/x", "one", 1, false);
        publish(a, "m5/x", "two", 2, false);

        let (mut on_b, ack) = RawClient::connect(&target(b), &connect)
            .await
            .map_err(|e| fail("connect on b", &e))?;
        if !ack.session_present {
            return Err("CONNACK on b: session present 0".into());
        }
        let mut queued = Vec::new();
        for _ in 0..2 {
            let p = on_b
                .next_publish(PATIENCE)
                .await
                .map_err(|e| fail("the queued messages on b", &e))?;
            queued.push((String::from_utf8_lossy(&p.payload).into_owned(), p.qos));
        }
        queued.sort();
        if queued != [("one".to_owned(), 1), ("two".to_owned(), 2)] {
            return Err(format!("queued messages on b: {queued:?}"));
        }
        // The subscription moved too: a message published on a reaches the
        // client on b, which never subscribed there (once b's interest is
        // known to NATS: probes until one arrives).
        let deadline = Instant::now() + PATIENCE;
        loop {
            if Instant::now() > deadline {
                return Err("nothing published on a reached the session on b".into());
            }
            publish(a, "m5/probe", "probe", 0, false);
            if let Ok(p) = on_b.next_publish(Duration::from_millis(500)).await {
                if p.topic == "m5/probe" {
                    break;
                }
            }
        }
        publish(a, "m5/x", "three", 1, false);
        loop {
            let p = on_b
                .next_publish(PATIENCE)
                .await
                .map_err(|e| fail("a live message on b", &e))?;
            if p.payload == b"three" {
                break;
            }
        }

        // Taken over while connected: back to a, session and all.
        let (mut back, ack) = RawClient::connect(&target(a), &connect)
            .await
            .map_err(|e| fail("connect on a again", &e))?;
        let closed = on_b
            .expect_close(PATIENCE)
            .await
            .map_err(|e| fail("the connection on b", &e))?;
        if closed.disconnect_code() != Some(0x8E) {
            return Err(format!(
                "node b closed without DISCONNECT 0x8E: {:?}",
                closed.packets
            ));
        }
        if !ack.session_present {
            return Err("CONNACK on a after the takeover: session present 0".into());
        }
        publish(a, "m5/x", "four", 1, false);
        loop {
            let p = back
                .next_publish(PATIENCE)
                .await
                .map_err(|e| fail("a message after moving back", &e))?;
            if p.payload == b"four" {
                break;
            }
        }
        back.disconnect()
            .await
            .map_err(|e| fail("disconnect", &e))?;
        Ok(())
    });
    result.unwrap_or_else(|e| panic!("[{}] {e}", bin.name()));
}

/// Two nodes on one machine listen on one port (`reuse_port = true`):
/// the kernel spreads clients over both (each node names itself in
/// `$SYS/broker/cluster/node`), and a message published by a client of one
/// reaches a subscriber of the other.
pub fn two_nodes_share_one_port(bin: &Binary) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start(dir.path(), 1);
    let urls = [nats.url(0)];
    let port = free_port();
    let _a = start_node_on(bin, dir.path(), "a", &urls, "reuse_port = true", "", port);
    let _b = start_node_on(bin, dir.path(), "b", &urls, "reuse_port = true", "", port);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let target = Target {
        host: "127.0.0.1".into(),
        port,
        transport: Default::default(),
    };
    let result: Result<(), String> = runtime.block_on(async {
        // Clients until one has landed on each node (Linux picks by a hash
        // of the client's port: a new connection is a new draw).
        let mut on: [Option<RawClient>; 2] = [None, None];
        let deadline = Instant::now() + PATIENCE;
        let mut n = 0;
        while on.iter().any(Option::is_none) {
            if Instant::now() > deadline {
                return Err(format!("{n} clients, all on one node"));
            }
            n += 1;
            let connect = Connect::new(Version::V5, &format!("c{n}"));
            let Ok((mut client, _)) = RawClient::connect(&target, &connect).await else {
                continue;
            };
            client
                .subscribe("$SYS/broker/cluster/node", 0)
                .await
                .map_err(|e| format!("subscribe: {e}"))?;
            let Ok(p) = client.next_publish(Duration::from_secs(3)).await else {
                continue;
            };
            let slot = match p.payload.as_slice() {
                b"a" => 0,
                b"b" => 1,
                other => return Err(format!("node {:?}", String::from_utf8_lossy(other))),
            };
            if on[slot].is_none() {
                on[slot] = Some(client);
            }
        }
        let [Some(mut sub), Some(mut publisher)] = on else {
            return Err("unreachable".into());
        };
        sub.subscribe("across/#", 1)
            .await
            .map_err(|e| format!("subscribe on a: {e}"))?;
        // Probes until node a's interest is known to NATS.
        let deadline = Instant::now() + PATIENCE;
        let mut i = 0;
        loop {
            if Instant::now() > deadline {
                return Err("nothing published on node b reached node a".into());
            }
            i += 1;
            let payload = format!("m{i}");
            publisher
                .publish(crate::wire::Publish::new("across/x", 1, payload.as_bytes()))
                .await
                .map_err(|e| format!("publish on b: {e}"))?;
            if let Ok(p) = sub.next_publish(Duration::from_millis(500)).await {
                if p.topic == "across/x" && p.payload.starts_with(b"m") {
                    return Ok(());
                }
            }
        }
    });
    result.unwrap_or_else(|e| panic!("[{}] {e}", bin.name()));
}

/// A retained message published on one node is served by the others,
/// including a node started afterwards, and clearing it clears it
/// everywhere; a client's will published on its node reaches a subscriber
/// on another.
pub fn retained_and_wills_across_nodes(bin: &Binary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start(dir.path(), 1);
    let urls = [nats.url(0)];
    let (_a, a) = node(bin, dir.path(), "a", &urls, "");
    let (_b, b) = node(bin, dir.path(), "b", &urls, "");
    publish(a, "keep/1", "kept", 1, true);
    let until = |port: u16, want: Option<&str>, what: &str| {
        let deadline = Instant::now() + PATIENCE;
        while read_retained(port, "keep/1").as_deref() != want {
            assert!(Instant::now() < deadline, "[{}] {what}", bin.name());
        }
    };
    until(b, Some("kept"), "retained keep/1 never reached node b");
    let (_c, c) = node(bin, dir.path(), "c", &urls, "");
    until(c, Some("kept"), "node c, started later, never had keep/1");
    publish(b, "keep/1", "", 1, true);
    until(
        a,
        None,
        "clearing keep/1 on node b never cleared it on node a",
    );
    until(
        c,
        None,
        "clearing keep/1 on node b never cleared it on node c",
    );

    let filters: &[&str] = &["will/#"];
    make_session(b, "will-watch", filters);
    probe(a, "will/probe", &[(b, "will-watch", filters)]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let mut connect = Connect::new(Version::V5, "mortal");
        connect.will = Some(Will {
            topic: "will/mortal".into(),
            payload: b"gone".to_vec(),
            qos: 1,
            ..Default::default()
        });
        let target = Target {
            host: "127.0.0.1".into(),
            port: a,
            transport: Default::default(),
        };
        let (client, _) = RawClient::connect(&target, &connect)
            .await
            .unwrap_or_else(|e| panic!("[{}] connect with a will: {e}", bin.name()));
        // The connection dies without DISCONNECT: the will is due.
        drop(client);
    });
    let got = collect(b, "will-watch", filters, 1);
    assert_eq!(
        got,
        ["will/mortal gone"],
        "[{}] the will on node b",
        bin.name()
    );
}

/// `$share/g/s/#` subscribers on two nodes share the messages published on
/// a third: each message reaches exactly one of them, both get some, and a
/// plain subscriber gets them all.
pub fn shared_subscription_balanced_across_nodes(bin: &Binary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start(dir.path(), 1);
    let urls = [nats.url(0)];
    let (_a, a) = node(bin, dir.path(), "a", &urls, "");
    let (_b, b) = node(bin, dir.path(), "b", &urls, "");
    let (_c, c) = node(bin, dir.path(), "c", &urls, "");
    let shared: &[&str] = &["$share/g/s/#"];
    let plain: &[&str] = &["s/#"];
    make_session(b, "share-b", shared);
    make_session(c, "share-c", shared);
    make_session(b, "plain-b", plain);
    // Each member must be routed a probe: both nodes are in the group.
    probe(a, "s/probe", &[(b, "plain-b", plain)]);
    let mut stray = probe(a, "s/probe", &[(b, "share-b", shared)]);
    stray.extend(probe(a, "s/probe", &[(c, "share-c", shared)]));
    assert!(stray.iter().all(|(_, other)| other.is_empty()), "{stray:?}");
    let n = 40;
    for i in 0..n {
        publish(a, &format!("s/{i}"), &format!("m{i}"), 1, false);
    }
    let all = no_probes(read_session(
        b,
        "plain-b",
        plain,
        n + 100,
        Duration::from_secs(3),
    ));
    let want: Vec<String> = (0..n).map(|i| format!("s/{i} m{i}")).collect();
    assert_eq!(all, want, "[{}] the plain subscriber", bin.name());
    let on_b = no_probes(read_session(
        b,
        "share-b",
        shared,
        n + 100,
        Duration::from_secs(3),
    ));
    let on_c = no_probes(read_session(
        c,
        "share-c",
        shared,
        n + 100,
        Duration::from_secs(3),
    ));
    let mut both: Vec<String> = on_b.iter().chain(&on_c).cloned().collect();
    both.sort_by_key(|l| {
        l.split(' ')
            .next()
            .and_then(|t| t.trim_start_matches("s/").parse::<usize>().ok())
    });
    assert_eq!(
        both,
        want,
        "[{}] each message to exactly one member (b had {}, c had {})",
        bin.name(),
        on_b.len(),
        on_c.len()
    );
    assert!(
        !on_b.is_empty() && !on_c.is_empty(),
        "[{}] not balanced: b had {}, c had {}",
        bin.name(),
        on_b.len(),
        on_c.len()
    );
}

/// A node's ACL applies to messages other nodes forward, as to any
/// publish: node b's ACL lets anonymous clients publish only `public/#`,
/// so an anonymous client's message on `secret/x` published on node a (no
/// ACL there) is not delivered on node b.
pub fn acl_applies_to_messages_from_other_nodes(bin: &Binary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start(dir.path(), 1);
    let urls = [nats.url(0)];
    let acl = dir.path().join("b.acl");
    std::fs::write(
        &acl,
        "topic read #\ntopic read $SYS/#\ntopic write public/#\n",
    )
    .expect("write acl");
    let (_a, a) = node(bin, dir.path(), "a", &urls, "");
    let (_b, b) = node(
        bin,
        dir.path(),
        "b",
        &urls,
        &format!("acl_file = \"{}\"\n", acl.display()),
    );
    let filters: &[&str] = &["#"];
    make_session(b, "all-b", filters);
    make_session(a, "all-a", filters);
    probe(a, "public/probe", &[(b, "all-b", filters)]);
    publish(a, "secret/x", "s", 1, false);
    publish(a, "public/x", "p", 1, false);
    let got = no_probes(read_session(
        b,
        "all-b",
        filters,
        100,
        Duration::from_secs(3),
    ));
    assert_eq!(
        got,
        ["public/x p"],
        "[{}] node b delivered what its ACL refuses",
        bin.name()
    );
    // Node a has no ACL: its own subscriber had both.
    let on_a = no_probes(read_session(
        a,
        "all-a",
        filters,
        100,
        Duration::from_secs(2),
    ));
    assert_eq!(
        on_a,
        ["secret/x s", "public/x p"],
        "[{}] node a",
        bin.name()
    );
}

/// Three NATS servers in a cluster; node a knows only the first. SIGKILL
/// of that server: node a reconnects to another and messages flow again
/// between the nodes, both ways.
pub fn nats_server_killed_traffic_continues(bin: &Binary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nats = Nats::start(dir.path(), 3);
    let (_a, a) = node(bin, dir.path(), "a", &[nats.url(0)], "");
    let (_b, b) = node(bin, dir.path(), "b", &[nats.url(1), nats.url(2)], "");
    let filters: &[&str] = &["k/#"];
    make_session(a, "sub-a", filters);
    make_session(b, "sub-b", filters);
    probe(a, "k/probe", &[(b, "sub-b", filters)]);
    probe(b, "k/probe", &[(a, "sub-a", filters)]);
    nats.kill(0);
    // Node a reconnects through the servers node a learnt from the first.
    probe(a, "k/probe", &[(b, "sub-b", filters)]);
    probe(b, "k/probe", &[(a, "sub-a", filters)]);
    for i in 0..5 {
        publish(a, "k/ab", &format!("m{i}"), 1, false);
        publish(b, "k/ba", &format!("m{i}"), 1, false);
    }
    let on_b = collect(b, "sub-b", filters, 10);
    let on_a = collect(a, "sub-a", filters, 10);
    let ab: Vec<String> = (0..5).map(|i| format!("k/ab m{i}")).collect();
    let ba: Vec<String> = (0..5).map(|i| format!("k/ba m{i}")).collect();
    let only = |lines: &[String], prefix: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    };
    assert_eq!(only(&on_b, "k/ab"), ab, "[{}] a to b", bin.name());
    assert_eq!(only(&on_a, "k/ba"), ba, "[{}] b to a", bin.name());
}

/// A node killed (SIGKILL) and started again under its name is a new run
/// of it: the others take its messages at once (they do not take its new
/// numbering for duplicates of its former run's), and it serves again the
/// retained messages it had published, from the bucket.
pub fn a_killed_node_restarts_as_itself(bin: &Binary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start(dir.path(), 1);
    let urls = [nats.url(0)];
    let (a, a_port) = node(bin, dir.path(), "a", &urls, "");
    let (_b, b) = node(bin, dir.path(), "b", &urls, "");
    let filters: &[&str] = &["r/#"];
    make_session(b, "sub-b", filters);
    probe(a_port, "r/probe", &[(b, "sub-b", filters)]);
    publish(a_port, "r/kept", "by-a", 1, true);
    let deadline = Instant::now() + PATIENCE;
    while read_retained(b, "r/kept").as_deref() != Some("by-a") {
        assert!(
            Instant::now() < deadline,
            "[{}] r/kept never reached b",
            bin.name()
        );
    }
    drop(a);
    let (_a, a_port) = node(bin, dir.path(), "a", &urls, "");
    let deadline = Instant::now() + PATIENCE;
    while read_retained(a_port, "r/kept").as_deref() != Some("by-a") {
        assert!(
            Instant::now() < deadline,
            "[{}] the restarted node a never took back its retained r/kept",
            bin.name()
        );
    }
    // The first messages of the new run (node b's interest is in NATS
    // already): numbered from 1 again, as its former run's first were.
    for i in 0..3 {
        publish(a_port, "r/new", &format!("m{i}"), 1, false);
    }
    let got = collect(b, "sub-b", filters, 3);
    let got: Vec<String> = got.into_iter().filter(|l| l.starts_with("r/new")).collect();
    assert_eq!(
        got,
        ["r/new m0", "r/new m1", "r/new m2"],
        "[{}]",
        bin.name()
    );
}

/// Settings the cluster does not have yet are refused at start, by name,
/// never ignored.
pub fn refuses_what_is_not_implemented(bin: &Binary) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (setting, needle) in [
        ("sessions = \"jetstream\"", "not implemented"),
        // A listener's setting, not the cluster's.
        ("reuse_port = true", "reuse_port"),
    ] {
        let toml = format!(
            "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n\
             [cluster]\nurls = [\"nats://127.0.0.1:4222\"]\nnode = \"a\"\n{setting}\n"
        );
        let config = dir.path().join("roost.toml");
        std::fs::write(&config, toml).expect("write");
        let ran = bin
            .run(
                &["--config".into(), config.into_os_string()],
                Duration::from_secs(10),
            )
            .expect("run");
        assert!(
            ran.status.is_some_and(|s| !s.success()),
            "[{}] started with {setting}",
            bin.name()
        );
        assert!(
            ran.stderr.contains(needle),
            "[{}] {setting}: {}",
            bin.name(),
            ran.stderr
        );
    }
}

/// The cluster CI runs whole, on one runtime (`tests/cluster.rs` of
/// `roost`): a NATS cluster of three servers with JetStream and three roost
/// nodes on loopback, each node given every server with its own first.
/// Cross-node publish/subscribe at QoS 0/1/2 with `mosquitto_pub`/`_sub`
/// and paho-mqtt; the cluster totals and each node's log of its peers; a
/// persistent session that moves with its client; a retained message and a
/// will across nodes; a shared subscription balanced across two nodes;
/// SIGKILL of one NATS server with traffic continuing.
pub fn ci_topology(bin: &Binary) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = bin.name();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nats = Nats::start(dir.path(), 3);
    let urls =
        |first: usize| -> Vec<String> { (0..3).map(|i| nats.url((first + i) % 3)).collect() };
    let (a_node, a) = node(bin, dir.path(), "a", &urls(0), "");
    let (_b_node, b) = node(bin, dir.path(), "b", &urls(1), "");
    let (_c_node, c) = node(bin, dir.path(), "c", &urls(2), "");
    for port in [a, b, c] {
        wait_sys(port, "nodes", "3");
    }
    assert!(
        a_node.wait_log("cluster: peer joined", 2, PATIENCE),
        "[{name}] node a did not log its peers joining:\n{}",
        a_node.log()
    );

    // QoS 0/1/2 from a (Mosquitto) and from c (paho-mqtt) to b.
    let filters: &[&str] = &["ci/#"];
    make_session(b, "ci-sub", filters);
    probe(a, "ci/probe", &[(b, "ci-sub", filters)]);
    for qos in 0..3u8 {
        publish(a, &format!("ci/q{qos}"), &format!("m-{qos}"), qos, false);
    }
    let paho = format!(
        "import paho.mqtt.client as mqtt\n\
         c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='ci-paho', protocol=mqtt.MQTTv5)\n\
         c.connect('127.0.0.1', {c})\n\
         c.loop_start()\n\
         for q in (1, 2):\n    c.publish('ci/paho%d' % q, 'p-%d' % q, qos=q).wait_for_publish(10)\n\
         c.disconnect()\n\
         c.loop_stop()\n"
    );
    let status = Command::new("python3")
        .args(["-c", &paho])
        .status()
        .expect("python3 is installed");
    assert!(
        status.success(),
        "[{name}] paho-mqtt publisher on node c failed"
    );
    let mut got = collect(b, "ci-sub", filters, 5);
    got.sort();
    assert_eq!(
        got,
        [
            "ci/paho1 p-1",
            "ci/paho2 p-2",
            "ci/q0 m-0",
            "ci/q1 m-1",
            "ci/q2 m-2"
        ],
        "[{name}] cross-node publish/subscribe"
    );
    // Clients connected cluster-wide: node a counts those on b and c.
    let mut held: Vec<Child> = [b, c]
        .iter()
        .map(|port| {
            Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "hold/#"])
                .stdout(Stdio::null())
                .spawn()
                .expect("mosquitto_sub is installed")
        })
        .collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let total: u64 = read_retained(a, "$SYS/broker/cluster/clients/connected")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if total >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "[{name}] node a never counted the clients of b and c (says {total})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for child in &mut held {
        let _ = child.kill();
        let _ = child.wait();
    }

    // A persistent session moves from a to c with what was queued for it.
    make_session(a, "ci-mover", &["mv/#"]);
    publish(a, "mv/x", "queued", 1, false);
    let moved = read_session(c, "ci-mover", &["mv/#"], 1, Duration::from_secs(10));
    assert_eq!(moved, ["mv/x queued"], "[{name}] the session moving to c");

    // Retained on b, read on c; a will on a, read on b.
    publish(b, "ci/kept", "kept", 1, true);
    let deadline = Instant::now() + PATIENCE;
    while read_retained(c, "ci/kept").as_deref() != Some("kept") {
        assert!(
            Instant::now() < deadline,
            "[{name}] retained never reached c"
        );
    }
    let wills: &[&str] = &["will/#"];
    make_session(b, "ci-will", wills);
    probe(a, "will/probe", &[(b, "ci-will", wills)]);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(async {
            let mut connect = Connect::new(Version::V5, "ci-mortal");
            connect.will = Some(Will {
                topic: "will/ci".into(),
                payload: b"gone".to_vec(),
                qos: 1,
                ..Default::default()
            });
            let target = Target {
                host: "127.0.0.1".into(),
                port: a,
                transport: Default::default(),
            };
            let (client, _) = RawClient::connect(&target, &connect)
                .await
                .unwrap_or_else(|e| panic!("[{name}] connect with a will: {e}"));
            drop(client);
        });
    assert_eq!(
        collect(b, "ci-will", wills, 1),
        ["will/ci gone"],
        "[{name}] the will across nodes"
    );

    // A shared group with members on b and c, fed from a.
    let shared: &[&str] = &["$share/ci/sh/#"];
    make_session(b, "ci-sh-b", shared);
    make_session(c, "ci-sh-c", shared);
    probe(a, "sh/probe", &[(b, "ci-sh-b", shared)]);
    probe(a, "sh/probe", &[(c, "ci-sh-c", shared)]);
    let n = 20;
    for i in 0..n {
        publish(a, &format!("sh/{i}"), &format!("s{i}"), 1, false);
    }
    let on_b = no_probes(read_session(
        b,
        "ci-sh-b",
        shared,
        n + 50,
        Duration::from_secs(2),
    ));
    let on_c = no_probes(read_session(
        c,
        "ci-sh-c",
        shared,
        n + 50,
        Duration::from_secs(2),
    ));
    let mut both: Vec<String> = on_b.iter().chain(&on_c).cloned().collect();
    both.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("sh/{i} s{i}")).collect();
    want.sort();
    assert_eq!(both, want, "[{name}] each shared message to one member");
    assert!(
        !on_b.is_empty() && !on_c.is_empty(),
        "[{name}] not balanced: b {}, c {}",
        on_b.len(),
        on_c.len()
    );

    // SIGKILL of the NATS server node a was using: a reconnects to another.
    nats.kill(0);
    probe(a, "ci/probe", &[(b, "ci-sub", filters)]);
    for i in 0..5 {
        publish(a, "ci/after", &format!("k{i}"), 1, false);
    }
    let after: Vec<String> = collect(b, "ci-sub", filters, 5)
        .into_iter()
        .filter(|l| l.starts_with("ci/after"))
        .collect();
    let want: Vec<String> = (0..5).map(|i| format!("ci/after k{i}")).collect();
    assert_eq!(
        after, want,
        "[{name}] traffic after a NATS server was killed"
    );
}
