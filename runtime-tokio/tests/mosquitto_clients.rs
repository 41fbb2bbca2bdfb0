//! Eclipse Mosquitto's command-line clients against the `roost` binary:
//! QoS 0/1/2, retained messages and wills, in MQTT 3.1.1 and 5.0, over TCP
//! and TLS (`--cafile`).
//!
//! WebSocket is not covered here: Debian's mosquitto-clients (2.0.11) has no
//! WebSocket client (`-L` accepts only `mqtt://` and `mqtts://` URLs, and
//! `mosquitto_sub -L ws://…` answers "unsupported URL scheme"). The rumqttc
//! tests cover WS and WSS.
//!
//! The clients are required: when they are missing the tests fail and say
//! how to install them.

mod common;

use common::{BrokerProcess, TestCert, WAIT, poll, start_roost, toml_path};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

fn require_clients() {
    for tool in ["mosquitto_sub", "mosquitto_pub"] {
        if let Err(e) = Command::new(tool)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            panic!(
                "{tool} is needed by this test but could not be run ({e}). \
                 Install it with `apt-get install mosquitto-clients`."
            );
        }
    }
}

/// A mosquitto client process whose stdout is collected line by line;
/// killed when dropped.
struct Client {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Client {
    fn spawn(tool: &str, args: &[String], stdin: bool) -> Client {
        // The clients write through stdio, which holds everything back
        // while stdout is a pipe; `stdbuf -oL` (coreutils) makes them print
        // each line as it happens, so the tests can see a SUBACK or CONNACK
        // when it arrives.
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg(tool)
            .args(args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `stdbuf -oL {tool}` ({e}): install mosquitto-clients \
                     (`apt-get install mosquitto-clients`) and coreutils"
                )
            });
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lines").push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().expect("stderr");
                s.push_str(&line);
                s.push('\n');
            }
        });
        Client {
            child,
            lines,
            stderr,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) {
        if poll(WAIT, || self.lines().iter().any(|l| pred(l)).then_some(())).is_none() {
            panic!(
                "waited in vain for {what}; stdout:\n{}\nstderr:\n{}",
                self.lines().join("\n"),
                self.stderr.lock().expect("stderr")
            );
        }
    }

    /// Waits for the process to end by itself and asserts it succeeded.
    fn finish(mut self, what: &str) -> Vec<String> {
        let status = poll(WAIT, || self.child.try_wait().expect("try_wait"));
        let Some(status) = status else {
            panic!(
                "{what} did not exit in time; stdout:\n{}",
                self.lines().join("\n")
            );
        };
        // The reader threads see EOF once the process is gone.
        let _ = poll(WAIT, || {
            (Arc::strong_count(&self.lines) == 1 && Arc::strong_count(&self.stderr) == 1)
                .then_some(())
        });
        assert!(
            status.success(),
            "{what} failed ({status}); stdout:\n{}\nstderr:\n{}",
            self.lines().join("\n"),
            self.stderr.lock().expect("stderr")
        );
        self.lines()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where and how the clients connect.
struct Target {
    args: Vec<String>,
    version: &'static str,
}

impl Target {
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = self.args.clone();
        args.extend(["-V".to_owned(), self.version.to_owned()]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    fn publish(&self, extra: &[&str]) {
        Client::spawn("mosquitto_pub", &self.args(extra), false).finish("mosquitto_pub");
    }
}

struct Env {
    broker: BrokerProcess,
    cafile: PathBuf,
    _dir: tempfile::TempDir,
}

fn start() -> Env {
    require_clients();
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = TestCert::new(dir.path());
    let config = dir.path().join("roost.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n\
             [[listener]]\nprotocol = \"tls\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n\
             cert = {}\nkey = {}\n[sys]\ninterval_secs = 0\n",
            toml_path(&cert.cert_path),
            toml_path(&cert.key_path)
        ),
    )
    .expect("write config");
    Env {
        broker: start_roost(&config, 2),
        cafile: cert.cert_path,
        _dir: dir,
    }
}

fn tcp(env: &Env, version: &'static str) -> Target {
    Target {
        args: vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            env.broker.addrs[0].port().to_string(),
        ],
        version,
    }
}

fn tls(env: &Env, version: &'static str) -> Target {
    Target {
        args: vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            env.broker.addrs[1].port().to_string(),
            "--cafile".into(),
            env.cafile.to_str().expect("utf-8").into(),
        ],
        version,
    }
}

/// The messages a `mosquitto_sub -F '>>%t|%q|%r|%p'` printed, without its
/// debug lines.
fn messages(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(">>"))
        .map(str::to_owned)
        .collect()
}

fn scenario(target: &Target, tag: &str) {
    // `-d` makes the subscriber report its SUBACK, so we publish only once
    // it is subscribed; `-W` ends it whatever happens.
    let filter = format!("{tag}/#");
    let sub = Client::spawn(
        "mosquitto_sub",
        &target.args(&[
            "-t",
            &filter,
            "-q",
            "2",
            "-d",
            "-F",
            ">>%t|%q|%r|%p",
            "-C",
            "5",
            "-W",
            "10",
        ]),
        false,
    );
    sub.wait_line("SUBACK", |l| l.contains("received SUBACK"));

    for qos in ["0", "1", "2"] {
        target.publish(&["-t", &format!("{tag}/q{qos}"), "-m", "b", "-q", qos]);
    }
    let retained = format!("{tag}/retained");
    target.publish(&["-t", &retained, "-m", "kept", "-q", "1", "-r"]);

    // A publisher with a will, killed while connected.
    let will_topic = format!("{tag}/will");
    let doomed = Client::spawn(
        "mosquitto_pub",
        &target.args(&[
            "-t",
            "unused",
            "-l",
            "-d",
            "--will-topic",
            &will_topic,
            "--will-payload",
            "gone",
            "--will-qos",
            "1",
        ]),
        true,
    );
    doomed.wait_line("CONNACK", |l| l.contains("received CONNACK"));
    drop(doomed); // SIGKILL: no DISCONNECT

    let got = messages(&sub.finish("mosquitto_sub"));
    assert_eq!(
        got,
        [
            format!("{tag}/q0|0|0|b"),
            format!("{tag}/q1|1|0|b"),
            format!("{tag}/q2|2|0|b"),
            format!("{retained}|1|0|kept"),
            format!("{will_topic}|1|0|gone"),
        ]
    );

    // A later subscriber gets the retained message, flagged as retained.
    let late = Client::spawn(
        "mosquitto_sub",
        &target.args(&[
            "-t",
            &retained,
            "-q",
            "1",
            "-F",
            ">>%t|%q|%r|%p",
            "-C",
            "1",
            "-W",
            "10",
        ]),
        false,
    );
    let got = messages(&late.finish("late mosquitto_sub"));
    assert_eq!(got, [format!("{retained}|1|1|kept")]);
}

#[test]
fn tcp_mqtt311() {
    let env = start();
    scenario(&tcp(&env, "mqttv311"), "tcp311");
}

#[test]
fn tcp_mqtt5() {
    let env = start();
    scenario(&tcp(&env, "mqttv5"), "tcp5");
}

#[test]
fn tls_mqtt311() {
    let env = start();
    scenario(&tls(&env, "mqttv311"), "tls311");
}

#[test]
fn tls_mqtt5() {
    let env = start();
    scenario(&tls(&env, "mqttv5"), "tls5");
}

/// `mosquitto_sub -t '#' -v`, the way people try a broker first.
#[test]
fn hash_subscription_with_v_output() {
    let env = start();
    let target = tcp(&env, "mqttv311");
    let sub = Client::spawn(
        "mosquitto_sub",
        &target.args(&["-t", "#", "-v", "-d", "-C", "2", "-W", "10"]),
        false,
    );
    sub.wait_line("SUBACK", |l| l.contains("received SUBACK"));
    target.publish(&["-t", "a", "-m", "b"]);
    target.publish(&["-t", "a/deeper", "-m", "c", "-q", "2"]);
    let lines = sub.finish("mosquitto_sub");
    let got: Vec<&String> = lines
        .iter()
        .filter(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed"))
        .collect();
    assert_eq!(got, ["a b", "a/deeper c"]);
}
