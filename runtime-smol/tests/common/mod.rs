//! Checks shared by the runtime crates' integration tests: each takes the
//! address of a running broker, whatever runs it. `roost-mio` includes this
//! file too (`#[path]`), so both runtimes pass the very same checks.
#![allow(dead_code)]

use roost_runtime::config::Config;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Anonymous access on 127.0.0.1, on a port the system picks.
pub fn local_config() -> Config {
    let mut config = Config::default();
    config.listeners[0].bind = "127.0.0.1:0".parse().unwrap();
    config
}

/// `conformance/paho.toml` (what the suite assumes of a broker) on a port
/// the system picks.
pub fn paho_config() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/paho.toml");
    let mut config = Config::from_file(&path).expect("conformance/paho.toml loads");
    config.listeners[0].bind = "127.0.0.1:0".parse().unwrap();
    config
}

/// A listener that admits only `alice` with password `secret`, checked
/// against a password file (so through the runtime's auth jobs).
pub fn password_config(name: &str) -> Config {
    use roost_runtime::passwd::PasswordFile;
    let dir = std::env::temp_dir().join(format!("roost-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("passwd");
    let mut file = PasswordFile::new();
    file.add("alice", "secret").unwrap();
    file.save(&path).unwrap();
    let mut config = local_config();
    config.listeners[0].allow_anonymous = false;
    config.listeners[0].password_file = Some(path);
    config
}

/// The right password is accepted and a wrong one refused (the argon2
/// check runs off the event loop, and its answer comes back to it).
pub async fn password_check(addr: SocketAddr) {
    let mut options = MqttOptions::new("auth-good", addr.ip().to_string(), addr.port());
    options.set_credentials("alice", "secret");
    let (client, mut events) = connect_with(options).await;
    client.subscribe("auth/#", QoS::AtMostOnce).await.unwrap();
    until_suback(&mut events).await;
    let mut options = MqttOptions::new("auth-bad", addr.ip().to_string(), addr.port());
    options.set_credentials("alice", "wrong");
    let (_client, mut events) = AsyncClient::new(options, 16);
    match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
        Ok(Err(rumqttc::ConnectionError::ConnectionRefused(code))) => {
            assert_eq!(code, rumqttc::ConnectReturnCode::BadUserNamePassword)
        }
        other => panic!("wrong password not refused: {other:?}"),
    }
}

/// A connected rumqttc client; its event loop has seen the CONNACK.
pub async fn connect(addr: SocketAddr, id: &str) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    connect_with(options).await
}

async fn connect_with(options: MqttOptions) -> (AsyncClient, EventLoop) {
    let (client, mut events) = AsyncClient::new(options, 16);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return (client, events),
            Ok(Ok(_)) => {}
            other => panic!("no CONNACK: {other:?}"),
        }
    }
}

/// Drives `events` until a PUBLISH arrives (and is acknowledged by rumqttc).
pub async fn next_publish(events: &mut EventLoop) -> Publish {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => return p,
            Ok(Ok(_)) => {}
            other => panic!("no PUBLISH: {other:?}"),
        }
    }
}

/// Drives `events` until the SUBACK.
async fn until_suback(events: &mut EventLoop) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => return,
            Ok(Ok(_)) => {}
            other => panic!("no SUBACK: {other:?}"),
        }
    }
}

/// Drives a publisher's event loop in the background, so its QoS 1/2
/// handshakes complete.
fn drive(mut events: EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while events.poll().await.is_ok() {} })
}

/// QoS 0, 1 and 2 messages reach a QoS 2 subscriber at their own QoS.
pub async fn qos_round_trips(addr: SocketAddr) {
    let (sub, mut sub_events) = connect(addr, "rt-sub").await;
    sub.subscribe("rt/#", QoS::ExactlyOnce).await.unwrap();
    until_suback(&mut sub_events).await;
    let (publisher, pub_events) = connect(addr, "rt-pub").await;
    let driver = drive(pub_events);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let payload = format!("{qos:?}");
        publisher
            .publish("rt/x", qos, false, payload.clone())
            .await
            .unwrap();
        let p = next_publish(&mut sub_events).await;
        assert_eq!(p.topic, "rt/x");
        assert_eq!(p.qos, qos);
        assert_eq!(&p.payload[..], payload.as_bytes());
    }
    driver.abort();
}

/// A retained message reaches a later subscriber, flagged retained.
pub async fn retained(addr: SocketAddr) {
    let (publisher, pub_events) = connect(addr, "ret-pub").await;
    let driver = drive(pub_events);
    publisher
        .publish("ret/a", QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    // The subscriber retries until the retained message is stored: the
    // publisher's PUBLISH may still be on its way.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (sub, mut events) = connect(addr, "ret-sub").await;
        sub.subscribe("ret/#", QoS::AtLeastOnce).await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), next_publish(&mut events)).await;
        if let Ok(p) = got {
            assert!(p.retain);
            assert_eq!(p.topic, "ret/a");
            assert_eq!(&p.payload[..], b"kept");
            break;
        }
        assert!(Instant::now() < deadline, "no retained message");
    }
    driver.abort();
}

/// A client that vanishes without DISCONNECT has its will published.
pub async fn will_on_abrupt_drop(addr: SocketAddr) {
    let (sub, mut sub_events) = connect(addr, "will-sub").await;
    sub.subscribe("will/#", QoS::AtLeastOnce).await.unwrap();
    until_suback(&mut sub_events).await;
    let mut options = MqttOptions::new("will-dying", addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_last_will(LastWill::new("will/dying", "gone", QoS::AtLeastOnce, false));
    let (client, events) = connect_with(options).await;
    // Dropping the event loop closes the socket with no DISCONNECT.
    drop(events);
    drop(client);
    let p = next_publish(&mut sub_events).await;
    assert_eq!(p.topic, "will/dying");
    assert_eq!(&p.payload[..], b"gone");
}

/// Room for a backlog far larger than the sockets' buffers, so the slow
/// subscriber below loses nothing.
pub fn backlog_config() -> Config {
    let mut config = local_config();
    config.limits.max_inflight = 1000;
    config.limits.max_queued_bytes = 64 * 1024 * 1024;
    config
}

/// Messages that reach the broker while their subscriber reads nothing
/// pile up past every socket buffer; once it reads, all arrive, in order.
/// Exercises writing until `WouldBlock`, waiting for writability and
/// resuming the engine's output.
pub async fn slow_subscriber_catches_up(addr: SocketAddr) {
    const COUNT: usize = 250;
    const SIZE: usize = 64 * 1024;
    let options = |id: &str| {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(60));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o
    };
    let (sub, mut sub_events) = connect_with(options("slow-sub")).await;
    sub.subscribe("slow/#", QoS::AtLeastOnce).await.unwrap();
    until_suback(&mut sub_events).await;
    let (publisher, mut pub_events) = connect_with(options("slow-pub")).await;
    let sending = tokio::spawn(async move {
        for i in 0..COUNT {
            let mut payload = vec![0u8; SIZE];
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            publisher
                .publish("slow/x", QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        publisher
    });
    // Every PUBACK means the broker holds the message; the subscriber has
    // read none of them yet.
    let mut acked = 0;
    while acked < COUNT {
        match tokio::time::timeout(Duration::from_secs(20), pub_events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("publisher: {other:?} after {acked} PUBACKs"),
        }
    }
    let _publisher = sending.await.unwrap();
    for i in 0..COUNT {
        let p = next_publish(&mut sub_events).await;
        assert_eq!(p.payload.len(), SIZE);
        assert_eq!(p.payload[..8], (i as u64).to_be_bytes(), "message {i}");
    }
}

/// An MQTT 3.1.1 CONNECT with clean session, `keepalive` seconds and an
/// optional QoS 0 will.
fn connect_311(id: &str, keepalive: u16, will: Option<(&str, &[u8])>) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(4);
    body.push(if will.is_some() { 0x06 } else { 0x02 });
    body.extend_from_slice(&keepalive.to_be_bytes());
    string(&mut body, id.as_bytes());
    if let Some((topic, message)) = will {
        string(&mut body, topic.as_bytes());
        string(&mut body, message);
    }
    assert!(body.len() < 128);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

/// A client that goes silent past 1.5 × its keep alive is disconnected,
/// and its will is published.
pub async fn keepalive_expiry(addr: SocketAddr) {
    let (sub, mut sub_events) = connect(addr, "ka-sub").await;
    sub.subscribe("ka/#", QoS::AtMostOnce).await.unwrap();
    until_suback(&mut sub_events).await;
    let started = Instant::now();
    let closed = tokio::task::spawn_blocking(move || {
        let mut silent = TcpStream::connect(addr).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        silent
            .write_all(&connect_311(
                "ka-silent",
                1,
                Some(("ka/silent", b"expired")),
            ))
            .unwrap();
        let mut connack = [0u8; 4];
        silent.read_exact(&mut connack).unwrap();
        assert_eq!(connack, [0x20, 2, 0, 0]);
        // Never send again: the broker must close the socket.
        let mut rest = Vec::new();
        let _ = silent.read_to_end(&mut rest);
        started.elapsed()
    });
    let p = next_publish(&mut sub_events).await;
    assert_eq!(p.topic, "ka/silent");
    assert_eq!(&p.payload[..], b"expired");
    let elapsed = closed.await.unwrap();
    assert!(
        elapsed >= Duration::from_millis(1000) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
}

/// Connects an MQTT 5 client on a plain socket; `wait_disconnect` then
/// returns the reason code of the DISCONNECT the broker sends on shutdown.
pub fn connect_v5(addr: SocketAddr, id: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // CONNECT, protocol 5, clean start, keep alive 60, no properties.
    let mut connect = vec![
        0x10,
        13 + id.len() as u8,
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        5,
        0x02,
        0,
        60,
        0,
    ];
    connect.extend_from_slice(&(id.len() as u16).to_be_bytes());
    connect.extend_from_slice(id.as_bytes());
    stream.write_all(&connect).unwrap();
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).unwrap();
    assert_eq!(header[0], 0x20, "CONNACK");
    let mut body = vec![0u8; usize::from(header[1])];
    stream.read_exact(&mut body).unwrap();
    assert_eq!(body[1], 0, "CONNACK reason code");
    stream
}

/// Reads until the broker closes `stream`: the reason code of its
/// DISCONNECT, if it sent one.
pub fn wait_disconnect(mut stream: TcpStream) -> Option<u8> {
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    match rest.as_slice() {
        [0xE0, len, code, ..] if *len > 0 => Some(*code),
        _ => None,
    }
}

/// Runs a broker binary on a port the system picks, as `roost` would be
/// run: returns the child and the address it logged (on stderr, where every
/// roost binary logs, like Mosquitto).
pub fn spawn_binary(path: &str) -> (KillOnDrop, SocketAddr) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = KillOnDrop(
        Command::new(path)
            .args(["--port", "0"])
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts"),
    );
    let log = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep reading (and so never block the broker's logging) after the
    // address line.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(log).lines() {
            let Ok(line) = line else { return };
            if let Some(at) = line.find("addr=") {
                let addr: String = line[at + 5..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the binary logs its address");
    (child, addr.parse().expect("a socket address"))
}

/// A spawned broker that is killed if the test ends early (a failed
/// assertion), so a failing test never leaves it running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `signal` (a `kill` name: HUP, TERM, INT) to `child`.
pub fn signal(child: &std::process::Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// SIGHUP reloads and keeps serving; SIGTERM sends MQTT 5 clients
/// DISCONNECT 0x8B and exits with status 0.
pub fn binary_signals(path: &str) {
    let (mut child, addr) = spawn_binary(path);
    let client = connect_v5(addr, "sig-kept");
    signal(&child.0, "HUP");
    let other = connect_v5(addr, "sig-after-hup");
    drop(other);
    let waiter = std::thread::spawn(move || wait_disconnect(client));
    signal(&child.0, "TERM");
    assert_eq!(waiter.join().unwrap(), Some(0x8B));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// Runs the whole black-box suite against `addr` (configured as
/// [`paho_config`]), printing every failure, and returns the failure count.
pub async fn conformance(addr: SocketAddr) -> usize {
    use roost_conformance::{runner, scenario};
    let mut config = scenario::Config::new(&addr.ip().to_string(), addr.port());
    config.max_packet_size = 10_000;
    let started = Instant::now();
    let report = runner::run(&config, &runner::Selection::default(), |v| {
        if v.result.is_err() {
            eprintln!("{}", v.line());
        }
    })
    .await;
    println!(
        "conformance: {} in {:.0?}",
        report.summary(),
        started.elapsed()
    );
    report.failed()
}
