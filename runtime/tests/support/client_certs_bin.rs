//! Client certificates against a real broker binary (`roost`, `roost-smol`,
//! `roost-mio`), with Mosquitto's command-line clients and Python's
//! paho-mqtt: a certificate of the client CA is accepted and its CN is the
//! user name an ACL sees; no certificate, another CA's and a revoked one
//! are refused. Each runtime's `tests/client_certs.rs` runs [`run`] with its
//! own binary. Every wait is bounded.
#![allow(dead_code)]

use super::pki::Pki;
use rcgen::DnType;
use roost_conformance::process::{self, Broker, Ran};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

/// Runs `program args` to its end, at most [`WAIT`] (then kills it).
pub fn run_bounded(program: &str, args: &[String], stdin: Option<&str>) -> Ran {
    let mut command = Command::new(program);
    command.args(args);
    process::run(command, stdin, WAIT).unwrap_or_else(|e| {
        panic!(
            "{e}: run scripts/install-test-deps.sh \
             (mosquitto-clients, python3 with paho-mqtt 2)"
        )
    })
}

fn text(out: &Ran) -> String {
    format!(
        "status {}; stdout:\n{}\nstderr:\n{}",
        out.status
            .map_or("none (killed)".to_owned(), |s| s.to_string()),
        out.stdout,
        out.stderr
    )
}

/// The files of one test: CAs, certificates, the CRL, the ACL.
struct Files {
    dir: tempfile_dir::Dir,
    server_ca: PathBuf,
    client_ca: PathBuf,
    good: (PathBuf, PathBuf),
    revoked: (PathBuf, PathBuf),
    stranger: (PathBuf, PathBuf),
    config: PathBuf,
}

mod tempfile_dir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

fn files(tag: &str) -> Files {
    let dir = std::env::temp_dir().join(format!("roost-client-certs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let server_pki = Pki::new("roost test server CA");
    let client_pki = Pki::new("roost test client CA");
    let server = server_pki.leaf(
        1,
        &[(DnType::CommonName, "localhost")],
        &["localhost", "127.0.0.1"],
    );
    let (server_cert, server_key) = server.write(&dir, "server");
    let server_ca = dir.join("server-ca.crt");
    std::fs::write(&server_ca, &server_pki.ca_pem).expect("write");
    let client_ca = dir.join("client-ca.crt");
    std::fs::write(&client_ca, &client_pki.ca_pem).expect("write");
    let good = client_pki.client(10, "sensor-1").write(&dir, "good");
    let revoked = client_pki.client(20, "sensor-2").write(&dir, "revoked");
    let stranger = Pki::new("someone else's CA")
        .client(10, "sensor-1")
        .write(&dir, "stranger");
    let crl = dir.join("clients.crl");
    std::fs::write(&crl, client_pki.crl(&[20])).expect("write");
    let acl = dir.join("acl");
    // The CN is the user name: the user rule and the %u pattern see it.
    std::fs::write(
        &acl,
        "user sensor-1\ntopic readwrite fleet/status\n\npattern readwrite devices/%u/#\n",
    )
    .expect("write");
    let config = dir.join("roost.toml");
    let mut toml = String::new();
    for protocol in ["tls", "wss"] {
        toml.push_str(&format!(
            "[[listener]]\nprotocol = \"{protocol}\"\nbind = \"127.0.0.1:0\"\n\
             cert = {:?}\nkey = {:?}\nclient_ca = {:?}\ncrl_file = {:?}\n\
             require_certificate = true\nuse_identity_as_username = true\nacl_file = {:?}\n\n",
            path_str(&server_cert),
            path_str(&server_key),
            path_str(&client_ca),
            path_str(&crl),
            path_str(&acl),
        ));
    }
    toml.push_str("[sys]\ninterval_secs = 0\n");
    std::fs::write(&config, toml).expect("write config");
    Files {
        dir: tempfile_dir::Dir(dir),
        server_ca,
        client_ca,
        good,
        revoked,
        stranger,
        config,
    }
}

fn mosquitto_args(f: &Files, port: u16, cert: Option<&(PathBuf, PathBuf)>) -> Vec<String> {
    let mut args = vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "--cafile".into(),
        path_str(&f.server_ca),
    ];
    if let Some((cert, key)) = cert {
        args.extend([
            "--cert".into(),
            path_str(cert),
            "--key".into(),
            path_str(key),
        ]);
    }
    args
}

fn strs(extra: &[&str]) -> Vec<String> {
    extra.iter().map(|s| (*s).to_owned()).collect()
}

/// paho-mqtt: connects over TLS or WSS with an optional client
/// certificate, subscribes to an allowed and a denied filter, publishes to
/// both, and prints what came back, one fact per line.
const PAHO: &str = r#"
import sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, transport, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-" + transport, transport=transport,
                protocol=mqtt.MQTTv5)
c.tls_set(ca_certs=ca, certfile=cert or None, keyfile=key or None)
connected, subacks, got = threading.Event(), [], []
def on_connect(client, userdata, flags, reason, props):
    print("connack", reason.value, flush=True)
    connected.set()
def on_subscribe(client, userdata, mid, reasons, props):
    subacks.append([r.value for r in reasons])
def on_message(client, userdata, msg):
    got.append(msg.topic)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
try:
    c.connect("127.0.0.1", port, keepalive=10)
except Exception as e:
    print("refused", type(e).__name__, flush=True)
    sys.exit(0)
c.loop_start()
if not connected.wait(5):
    print("refused no-connack", flush=True)
    c.loop_stop()
    sys.exit(0)
c.subscribe([("devices/sensor-1/#", 1), ("admin/#", 1)])
deadline = time.time() + 5
while not subacks and time.time() < deadline:
    time.sleep(0.02)
print("suback", *subacks[0], flush=True)
c.publish("admin/x", b"no", qos=1).wait_for_publish(5)
c.publish("devices/sensor-1/t", b"yes", qos=1).wait_for_publish(5)
while "devices/sensor-1/t" not in got and time.time() < deadline:
    time.sleep(0.02)
print("received", *sorted(got), flush=True)
c.disconnect()
c.loop_stop()
"#;

fn paho(f: &Files, port: u16, transport: &str, cert: Option<&(PathBuf, PathBuf)>) -> String {
    let (c, k) = cert.map_or((String::new(), String::new()), |(c, k)| {
        (path_str(c), path_str(k))
    });
    let mut args = strs(&["-", &port.to_string(), transport]);
    args.extend([path_str(&f.server_ca), c, k]);
    let out = run_bounded("python3", &args, Some(PAHO));
    assert!(out.success(), "paho script failed: {}", text(&out));
    out.stdout
}

/// The whole scenario against `binary`.
pub fn run(binary: &Path, tag: &str) {
    let f = files(tag);
    let broker = Broker::start(Broker::command(binary, &f.config), 2, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let tls = broker.addrs[0].port();
    let wss = broker.addrs[1].port();

    // mosquitto_sub with the good certificate, on the %u pattern topic; a
    // claimed user name and password are ignored: the certificate decides.
    let mut sub_args = mosquitto_args(&f, tls, Some(&f.good));
    sub_args.extend(strs(&[
        "-u",
        "admin",
        "-P",
        "wrong",
        "-V",
        "mqttv311",
        "-t",
        "devices/sensor-1/#",
        "-C",
        "1",
        "-W",
        "10",
        "-i",
        "mosq-sub",
    ]));
    let sub = std::thread::spawn(move || run_bounded("mosquitto_sub", &sub_args, None));
    // Publish until the subscriber has it (its SUBACK may not be back yet).
    let mut pub_args = mosquitto_args(&f, tls, Some(&f.good));
    pub_args.extend(strs(&[
        "-V",
        "mqttv311",
        "-t",
        "devices/sensor-1/temp",
        "-m",
        "21.5",
        "-q",
        "1",
    ]));
    let deadline = Instant::now() + WAIT;
    while !sub.is_finished() && Instant::now() < deadline {
        let out = run_bounded("mosquitto_pub", &pub_args, None);
        assert!(
            out.success(),
            "publish with a good certificate: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = sub.join().expect("subscriber");
    assert!(out.success(), "subscriber: {}", text(&out));
    assert_eq!(out.stdout.trim(), "21.5");

    // The user rule of the ACL names the CN.
    let mut args = mosquitto_args(&f, tls, Some(&f.good));
    args.extend(strs(&["-t", "fleet/status", "-m", "up", "-q", "1"]));
    let out = run_bounded("mosquitto_pub", &args, None);
    assert!(out.success(), "{}", text(&out));

    // Refused: no certificate, another CA's, a revoked one.
    for (what, cert) in [
        ("no certificate", None),
        ("another CA's certificate", Some(&f.stranger)),
        ("a revoked certificate", Some(&f.revoked)),
    ] {
        let mut args = mosquitto_args(&f, tls, cert);
        args.extend(strs(&["-t", "devices/sensor-1/t", "-m", "x", "-q", "1"]));
        let out = run_bounded("mosquitto_pub", &args, None);
        assert!(!out.success(), "{what} was accepted: {}", text(&out));
    }

    // paho-mqtt over TLS and over WebSocket-over-TLS: the CN's topics are
    // granted (0x01), another's denied (0x87), and only the allowed
    // publish comes back.
    for (transport, port) in [("tcp", tls), ("websockets", wss)] {
        let got = paho(&f, port, transport, Some(&f.good));
        assert!(got.contains("connack 0"), "{transport}: {got}");
        assert!(got.contains("suback 1 135"), "{transport}: {got}");
        assert!(
            got.contains("received devices/sensor-1/t\n"),
            "{transport}: {got}"
        );
        let got = paho(&f, port, transport, None);
        assert!(
            got.starts_with("refused"),
            "{transport} without a certificate: {got}"
        );
        let got = paho(&f, port, transport, Some(&f.revoked));
        assert!(got.starts_with("refused"), "{transport} revoked: {got}");
    }
    drop(broker);
    drop(f);
}
