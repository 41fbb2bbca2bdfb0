//! A broker binary (`roost`, `roost-smol`, `roost-mio`, `roost-std`) run as
//! a service: the pid file, systemd's notification protocol over a socket
//! the test binds, and SIGHUP re-reading the configuration file. Each
//! runtime's `tests/service.rs` runs these with its own binary. Every wait
//! is bounded.
#![allow(dead_code)]

use roost_conformance::blocking::{Connect, Raw, V311};
use roost_conformance::process::{self, Broker, Ran};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// `binary args` with `env` added, and none of the test's own
/// `NOTIFY_SOCKET` or `RUST_LOG`.
fn command(binary: &Path, args: &[&str], env: &[(&str, &Path)]) -> Command {
    let mut command = Command::new(binary);
    command
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Starts `binary args` with `env` added, without waiting.
pub fn spawn(binary: &Path, args: &[&str], env: &[(&str, &Path)]) -> Broker {
    Broker::spawn(command(binary, args, env)).unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `binary args` and waits for `listeners` "listening" lines.
pub fn start(binary: &Path, args: &[&str], env: &[(&str, &Path)], listeners: usize) -> Broker {
    Broker::start(command(binary, args, env), listeners, WAIT).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits for the broker to exit (it is killed, when dropped, if it does
/// not within [`WAIT`]).
pub fn exit_status(roost: &Broker) -> ExitStatus {
    roost
        .wait_exit(WAIT)
        .unwrap_or_else(|| panic!("the broker did not exit; log:\n{}", roost.log()))
}

fn poll<T>(mut check: impl FnMut() -> Option<T>) -> Option<T> {
    roost_conformance::blocking::poll(WAIT, &mut check)
}

/// A directory of its own, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new empty directory for the check `tag`.
pub fn temp(tag: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("roost-service-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    TempDir(dir)
}

const LISTENER: &str =
    "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n";

/// `pid_file` in the configuration (relative to the file) and
/// `--pid-file`: written once listening, a stale file overwritten, removed
/// at a clean exit; an unwritable path stops the start with a message
/// naming it.
pub fn pid_file(binary: &Path) {
    let dir = temp("pid");
    let config = dir.path().join("roost.toml");
    std::fs::write(&config, format!("pid_file = \"roost.pid\"\n{LISTENER}")).expect("config");
    let pid_path = dir.path().join("roost.pid");
    std::fs::write(&pid_path, "4194303\n").expect("stale pid file");

    let roost = start(binary, &["--config", config.to_str().unwrap()], &[], 1);
    let expected = format!("{}\n", roost.pid());
    let written = poll(|| {
        std::fs::read_to_string(&pid_path)
            .ok()
            .filter(|c| *c == expected)
    });
    assert!(
        written.is_some(),
        "pid file not written; log:\n{}",
        roost.log()
    );
    // The listener is bound when the pid file is there.
    Raw::connected(
        roost.addrs[0],
        V311,
        &Connect {
            client_id: "pid-check",
            ..Default::default()
        },
    )
    .disconnect();
    roost.signal("TERM").expect("signal");
    assert!(exit_status(&roost).success(), "{}", roost.log());
    assert!(!pid_path.exists(), "pid file left behind");

    // The flag wins over the file.
    let flag_path = dir.path().join("flag.pid");
    let roost = start(
        binary,
        &[
            "--config",
            config.to_str().unwrap(),
            "--pid-file",
            flag_path.to_str().unwrap(),
        ],
        &[],
        1,
    );
    let expected = format!("{}\n", roost.pid());
    assert!(
        poll(|| std::fs::read_to_string(&flag_path)
            .ok()
            .filter(|c| *c == expected))
        .is_some(),
        "--pid-file not written; log:\n{}",
        roost.log()
    );
    assert!(!pid_path.exists(), "the configuration's pid_file was used");
    roost.signal("INT").expect("signal");
    assert!(exit_status(&roost).success(), "{}", roost.log());
    assert!(!flag_path.exists(), "pid file left behind");

    // An unwritable path: a clear start-up error, a failing exit.
    let bad = dir.path().join("no-such-dir").join("roost.pid");
    let roost = spawn(
        binary,
        &[
            "--config",
            config.to_str().unwrap(),
            "--pid-file",
            bad.to_str().unwrap(),
        ],
        &[],
    );
    let status = exit_status(&roost);
    let log = roost.log();
    assert!(
        !status.success(),
        "started with an unwritable pid file:\n{log}"
    );
    let message = format!(
        "pid_file {}: cannot write it: No such file or directory",
        bad.display()
    );
    assert!(log.contains(&message), "no {message:?} in:\n{log}");
    assert!(!log.contains("Os {"), "Rust debug output in:\n{log}");
}

/// A socket standing in for systemd's `$NOTIFY_SOCKET`.
struct Systemd {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Systemd {
    fn bind(dir: &Path) -> Systemd {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket.set_read_timeout(Some(WAIT)).expect("timeout");
        Systemd { socket, path }
    }

    /// The next notification, as text.
    fn next(&self, log: impl Fn() -> String) -> String {
        let mut buf = [0; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => panic!("no notification ({e}); log:\n{}", log()),
        }
    }
}

/// `Type=notify`: READY=1 once listening, RELOADING=1 (with
/// MONOTONIC_USEC) then READY=1 around a SIGHUP, STOPPING=1 at SIGTERM,
/// sent to the socket `$NOTIFY_SOCKET` names.
pub fn systemd_notify(binary: &Path) {
    let dir = temp("notify");
    let config = dir.path().join("roost.toml");
    std::fs::write(&config, LISTENER).expect("config");
    let systemd = Systemd::bind(dir.path());
    let roost = spawn(
        binary,
        &["--config", config.to_str().unwrap()],
        &[("NOTIFY_SOCKET", &systemd.path)],
    );
    let ready = systemd.next(|| roost.log());
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // Ready means listening: the address is logged (the broker wrote it
    // before READY=1; the test's reader of its stderr may lag) and takes
    // clients.
    let addr: SocketAddr = poll(|| {
        roost
            .log()
            .lines()
            .find(|l| l.contains("listening"))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
            .and_then(|a| a.parse().ok())
    })
    .unwrap_or_else(|| panic!("READY=1 but no listening line:\n{}", roost.log()));
    Raw::connected(
        addr,
        V311,
        &Connect {
            client_id: "notify-check",
            ..Default::default()
        },
    )
    .disconnect();

    roost.signal("HUP").expect("signal");
    let reloading = systemd.next(|| roost.log());
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(usec.is_some_and(|u| u > 0), "{reloading:?}");
    let ready = systemd.next(|| roost.log());
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");

    roost.signal("TERM").expect("signal");
    let stopping = systemd.next(|| roost.log());
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(exit_status(&roost).success(), "{}", roost.log());
}

/// The SUBACK code a new anonymous client gets for `filter`.
fn suback(addr: SocketAddr, filter: &str) -> u8 {
    let mut client = Raw::connected(
        addr,
        V311,
        &Connect {
            client_id: "acl-probe",
            ..Default::default()
        },
    );
    let code = client.subscribe(1, filter, 0);
    client.disconnect();
    code
}

/// SIGHUP re-reads the configuration file: a changed `acl_file` takes
/// effect for new subscriptions; a broken file is logged and the running
/// configuration keeps serving.
pub fn reload_configuration(binary: &Path) {
    let dir = temp("reload");
    std::fs::write(dir.path().join("acl-a"), "topic readwrite a/#\n").expect("acl");
    std::fs::write(dir.path().join("acl-b"), "topic readwrite b/#\n").expect("acl");
    let config = dir.path().join("roost.toml");
    let with_acl = |acl: &str| format!("{LISTENER}acl_file = \"{acl}\"\n");
    std::fs::write(&config, with_acl("acl-a")).expect("config");
    let roost = start(binary, &["--config", config.to_str().unwrap()], &[], 1);
    let addr = roost.addrs[0];
    assert_eq!(suback(addr, "a/x"), 0);
    assert_eq!(suback(addr, "b/x"), 0x80);

    std::fs::write(&config, with_acl("acl-b")).expect("config");
    roost.signal("HUP").expect("signal");
    assert!(
        poll(|| (suback(addr, "b/x") == 0).then_some(())).is_some(),
        "the new acl_file was not applied; log:\n{}",
        roost.log()
    );
    assert_eq!(suback(addr, "a/x"), 0x80);

    // A broken file: logged on one line, the running configuration stays.
    std::fs::write(&config, format!("{}\nlimits = [", with_acl("acl-a"))).expect("config");
    roost.signal("HUP").expect("signal");
    assert!(
        roost.wait_log("keeping the running configuration", 1, WAIT),
        "{}",
        roost.log()
    );
    let log = roost.log();
    let line = log
        .lines()
        .find(|l| l.contains("keeping the running configuration"))
        .expect("line");
    assert!(line.contains(&config.display().to_string()), "{line}");
    assert_eq!(suback(addr, "b/x"), 0, "{log}");
    assert_eq!(suback(addr, "a/x"), 0x80, "{log}");
}

/// Runs `binary args` to its exit, as an operator starting it would, and
/// returns its status and what it wrote to stderr.
fn start_fails(binary: &Path, config: &Path) -> String {
    let roost = spawn(binary, &["--config", config.to_str().unwrap()], &[]);
    let status = exit_status(&roost);
    let log = roost.log();
    assert!(!status.success(), "started anyway:\n{log}");
    log
}

/// What an operator reads is words, not Rust's debug output.
fn assert_no_debug_output(log: &str) {
    for debug in [
        "Os {",
        "kind: ",
        "Some(",
        "FjallError",
        "LsmTreeError",
        "Error {",
    ] {
        assert!(
            !log.contains(debug),
            "Rust debug output {debug:?} in:\n{log}"
        );
    }
}

/// Start-up errors name the key at fault and say what is wrong in words:
/// a store another broker holds, a store path under a file, a missing
/// certificate, a key that does not belong to its certificate, a CRL that
/// does not parse.
pub fn startup_errors(binary: &Path) {
    let dir = temp("errors");
    let d = dir.path();
    let store_at = |path: &str| {
        format!(
            "{LISTENER}[persistence]\nstore = \"fjall\"\npath = \"{path}\"\n[sys]\ninterval_secs = 0\n"
        )
    };

    // The store directory is in use by another broker.
    let holder_config = d.join("holder.toml");
    std::fs::write(&holder_config, store_at("data")).expect("config");
    let holder = start(
        binary,
        &["--config", holder_config.to_str().unwrap()],
        &[],
        1,
    );
    let log = start_fails(binary, &holder_config);
    assert!(
        log.contains("another process (another roost?) has it open"),
        "{log}"
    );
    assert!(log.contains(&d.join("data").display().to_string()), "{log}");
    assert_no_debug_output(&log);
    drop(holder);

    // The store path runs through a file.
    std::fs::write(d.join("file"), "x").expect("file");
    let config = d.join("under-file.toml");
    std::fs::write(&config, store_at("file/data")).expect("config");
    let log = start_fails(binary, &config);
    assert!(log.contains("Not a directory"), "{log}");
    assert_no_debug_output(&log);

    // A missing certificate on the second listener.
    let tls = |cert: &str, key: &str, extra: &str| {
        format!(
            "{LISTENER}[[listener]]\nprotocol = \"tls\"\nbind = \"127.0.0.1:0\"\n\
             allow_anonymous = true\ncert = \"{cert}\"\nkey = \"{key}\"\n{extra}"
        )
    };
    let config = d.join("no-cert.toml");
    std::fs::write(&config, tls("missing.crt", "missing.key", "")).expect("config");
    let log = start_fails(binary, &config);
    assert!(
        log.contains("listener[1].cert (127.0.0.1:0): ")
            && log.contains("missing.crt: No such file or directory"),
        "{log}"
    );
    assert_no_debug_output(&log);

    // A key that belongs to another certificate.
    let pki = crate::pki::Pki::new("startup errors CA");
    let (cert, _) = pki.client(1, "a").write(d, "a");
    let (_, key) = pki.client(2, "b").write(d, "b");
    let config = d.join("mismatch.toml");
    std::fs::write(
        &config,
        tls(cert.to_str().unwrap(), key.to_str().unwrap(), ""),
    )
    .expect("config");
    let log = start_fails(binary, &config);
    assert!(
        log.contains("listener[1].cert/key (127.0.0.1:0): ")
            && log.contains("the key does not belong to the certificate"),
        "{log}"
    );
    assert_no_debug_output(&log);

    // A CRL whose PEM holds no CRL a parser can read.
    let (cert, key) = pki.client(3, "c").write(d, "c");
    std::fs::write(d.join("ca.crt"), &pki.ca_pem).expect("ca");
    std::fs::write(
        d.join("bad.crl"),
        "-----BEGIN X509 CRL-----\nAAAAAAAA\n-----END X509 CRL-----\n",
    )
    .expect("crl");
    let config = d.join("bad-crl.toml");
    std::fs::write(
        &config,
        tls(
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            "client_ca = \"ca.crt\"\ncrl_file = \"bad.crl\"\n",
        ),
    )
    .expect("config");
    let log = start_fails(binary, &config);
    assert!(
        log.contains("listener[1].crl_file (127.0.0.1:0): ") && log.contains("unusable CRL"),
        "{log}"
    );
    assert_no_debug_output(&log);
}

/// SIGHUP: what cannot change while the broker runs (`[sys]`, the random
/// seed, `[http]` added) is named in a warning and keeps its running value,
/// and the rest of the file (an MQTT capability) is applied.
pub fn reload_names_what_waits_for_a_restart(binary: &Path) {
    let dir = temp("reload-later");
    let d = dir.path();
    let config = d.join("roost.toml");
    std::fs::write(&config, format!("{LISTENER}[sys]\ninterval_secs = 10\n")).expect("config");
    let roost = start(binary, &["--config", config.to_str().unwrap()], &[], 1);
    std::fs::write(
        &config,
        format!(
            "{LISTENER}[sys]\ninterval_secs = 5\n[mqtt]\nmaximum_qos = 1\nrandom_seed = 7\n\
             [http]\nbind = \"127.0.0.1:0\"\n"
        ),
    )
    .expect("config");
    roost.signal("HUP").expect("signal");
    assert!(
        roost.wait_log("configuration file re-read", 1, WAIT),
        "{}",
        roost.log()
    );
    let log = roost.log();
    for needle in [
        "reload: sys.interval_secs changed; this takes effect at the next restart",
        "reload: mqtt.random_seed changed; this takes effect at the next restart",
        "reload: [http] added; this takes effect at the next restart",
    ] {
        let line = log.lines().find(|l| l.contains(needle));
        assert!(
            line.is_some_and(|l| l.contains(" WARN ")),
            "no warning {needle:?} in:\n{log}"
        );
    }
    // Not bound: still one listener.
    assert_eq!(
        log.lines().filter(|l| l.contains("listening")).count(),
        1,
        "{log}"
    );
    // Live: QoS 1 is the most granted now.
    let mut client = Raw::connected(
        roost.addrs[0],
        V311,
        &Connect {
            client_id: "qos-probe",
            ..Default::default()
        },
    );
    assert_eq!(client.subscribe(1, "q/#", 2), 1, "{log}");
    client.disconnect();
    assert_no_debug_output(&log);
}

/// Runs mosquitto_pub to its end (bounded); whether it succeeded, and
/// what it said.
fn mosquitto_pub(args: &[String]) -> (bool, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_with("mosquitto_pub", &args, None);
    (out.success(), format!("{}{}", out.stdout, out.stderr))
}

/// SIGHUP swaps the server certificate: a client connected before keeps
/// its connection (and receives), a new client is served the new
/// certificate (it verifies against the new one's CA only), with
/// mosquitto_sub and mosquitto_pub.
pub fn reload_certificate(binary: &Path) {
    use roost_conformance::blocking::TestCert;
    let dir = temp("reload-cert");
    let d = dir.path();
    let old_dir = d.join("old");
    let new_dir = d.join("new");
    std::fs::create_dir_all(&old_dir).expect("dir");
    std::fs::create_dir_all(&new_dir).expect("dir");
    let old = TestCert::new(&old_dir);
    let new = TestCert::new(&new_dir);
    let served = d.join("served");
    std::fs::create_dir_all(&served).expect("dir");
    let serve = |cert: &TestCert| {
        std::fs::copy(&cert.cert_path, served.join("server.crt")).expect("copy");
        std::fs::copy(&cert.key_path, served.join("server.key")).expect("copy");
    };
    serve(&old);
    let config = d.join("roost.toml");
    std::fs::write(
        &config,
        "[[listener]]\nprotocol = \"tls\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n\
         cert = \"served/server.crt\"\nkey = \"served/server.key\"\n[sys]\ninterval_secs = 0\n",
    )
    .expect("config");
    let roost = start(binary, &["--config", config.to_str().unwrap()], &[], 1);
    let port = roost.addrs[0].port().to_string();
    let args = |ca: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["-h", "127.0.0.1", "-p", &port, "--cafile"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        a.push(ca.to_str().unwrap().to_owned());
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };

    // Before: the old certificate is served.
    let (ok, said) = mosquitto_pub(&args(&new.cert_path, &["-t", "t", "-m", "x"]));
    assert!(!ok, "the new CA verified the old certificate: {said}");
    // The broker wrapper serves any child: stdout kept, killed when dropped.
    let mut sub = Command::new("mosquitto_sub");
    sub.args(args(
        &old.cert_path,
        &["-i", "keeper", "-t", "swap/t", "-q", "1", "-W", "30"],
    ));
    let sub = Broker::spawn(sub).unwrap_or_else(|e| panic!("{e}: install mosquitto-clients"));
    // Publish until the subscriber has one (its SUBACK may not be back).
    let subscribed = poll(|| {
        let (ok, said) = mosquitto_pub(&args(
            &old.cert_path,
            &["-t", "swap/t", "-m", "before-swap", "-q", "1"],
        ));
        assert!(ok, "publish with the old certificate: {said}");
        sub.stdout().contains("before-swap").then_some(())
    });
    assert!(
        subscribed.is_some(),
        "subscriber: {}\nlog:\n{}",
        sub.stdout(),
        roost.log()
    );

    serve(&new);
    roost.signal("HUP").expect("signal");
    assert!(
        roost.wait_log("certificates, password and ACL files reloaded", 1, WAIT),
        "{}",
        roost.log()
    );

    // A new client sees the new certificate: the old CA no longer
    // verifies it, the new one does.
    let (ok, said) = mosquitto_pub(&args(&old.cert_path, &["-t", "t", "-m", "x"]));
    assert!(!ok, "the old certificate is still served: {said}");
    let (ok, said) = mosquitto_pub(&args(
        &new.cert_path,
        &[
            "-i",
            "newcomer",
            "-t",
            "swap/t",
            "-m",
            "after-swap",
            "-q",
            "1",
        ],
    ));
    assert!(
        ok,
        "the new certificate is not served: {said}\n{}",
        roost.log()
    );

    // The subscriber connected before the swap is still on its connection
    // (it could not reconnect: it trusts only the old CA) and receives.
    assert!(
        poll(|| sub.stdout().contains("after-swap").then_some(())).is_some(),
        "subscriber: {}\nlog:\n{}",
        sub.stdout(),
        roost.log()
    );
    let log = roost.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("client connected") && l.contains("client_id=keeper"))
            .count(),
        1,
        "{log}"
    );
}

/// Runs `program args` with `stdin` to its end, at most [`WAIT`] (then
/// kills it).
fn run_with(program: &str, args: &[&str], stdin: Option<&str>) -> Ran {
    let mut command = Command::new(program);
    command.args(args);
    process::run(command, stdin, WAIT)
        .unwrap_or_else(|e| panic!("{e}: apt-get install mosquitto mosquitto-clients"))
}

/// The hash `user` has in the password file at `path`.
fn hash_of(path: &Path, user: &str) -> String {
    std::fs::read_to_string(path)
        .expect("read the password file")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{user}:")).map(str::to_owned))
        .unwrap_or_else(|| panic!("no {user} in the password file"))
}

/// Migrating from Mosquitto: a password file made by the real
/// `mosquitto_passwd` works unchanged, `passwd` takes passwords from
/// standard input (no terminal needed) and refuses empty ones, and a
/// Mosquitto hash becomes Argon2id in the file at its user's first
/// successful login (not at a failed one).
pub fn mosquitto_password_file(binary: &Path) {
    let dir = temp("mosquitto-passwd");
    let file = dir.path().join("passwd");
    let f = file.to_str().expect("utf-8");
    // $7$ (PBKDF2-SHA512, Mosquitto 2's default) and $6$ (SHA-512).
    let made = run_with(
        "mosquitto_passwd",
        &["-c", "-b", f, "alice", "s3cret"],
        None,
    );
    assert!(made.success(), "mosquitto_passwd: {made:?}");
    let made = run_with(
        "mosquitto_passwd",
        &["-H", "sha512", "-b", f, "bob", "hunter2"],
        None,
    );
    assert!(made.success(), "mosquitto_passwd: {made:?}");
    assert!(hash_of(&file, "alice").starts_with("$7$"));
    assert!(hash_of(&file, "bob").starts_with("$6$"));

    // passwd, password on stdin: the explicit flag, and a pipe alone.
    let roost = binary.to_str().expect("utf-8");
    let out = run_with(
        roost,
        &["passwd", "add", "carol", "--password-stdin", "--file", f],
        Some("pw carol\n"),
    );
    assert!(out.success(), "{out:?}");
    let out = run_with(
        roost,
        &["passwd", "add", "dave", "--file", f],
        Some("pw dave\n"),
    );
    assert!(out.success(), "no terminal: stdin is read: {out:?}");
    let out = run_with(
        roost,
        &["passwd", "add", "erin", "--password-stdin", "--file", f],
        Some("\n"),
    );
    assert!(!out.success(), "an empty password is refused");
    assert!(out.stderr.contains("must not be empty"));
    let out = run_with(
        roost,
        &["passwd", "add", "erin", "--password", "", "--file", f],
        None,
    );
    assert!(!out.success(), "an empty --password is refused");
    // upgrade names the users still on Mosquitto hashes.
    let out = run_with(roost, &["passwd", "upgrade", "--file", f], None);
    let said = &out.stdout;
    assert!(
        out.success() && said.contains("2 of 4 users") && said.ends_with("alice, bob\n"),
        "{out:?}"
    );

    let config = dir.path().join("roost.toml");
    std::fs::write(
        &config,
        "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\npassword_file = \"passwd\"\n\
         [sys]\ninterval_secs = 0\n",
    )
    .expect("config");
    let roost = start(binary, &["--config", config.to_str().unwrap()], &[], 1);
    let port = roost.addrs[0].port().to_string();
    let publish = |user: &str, password: &str| {
        run_with(
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
        .success()
    };
    // Wrong passwords change nothing.
    assert!(!publish("alice", "s3cret!"), "$7$ hash, wrong password");
    assert!(!publish("bob", "hunter"), "$6$ hash, wrong password");
    assert!(hash_of(&file, "alice").starts_with("$7$"));
    assert!(hash_of(&file, "bob").starts_with("$6$"));
    // The right ones log in, and the hash is Argon2id from then on.
    assert!(publish("alice", "s3cret"), "$7$ hash, right password");
    assert!(publish("bob", "hunter2"), "$6$ hash, right password");
    for user in ["alice", "bob"] {
        assert!(
            poll(|| hash_of(&file, user).starts_with("$argon2id$").then_some(())).is_some(),
            "{user}'s hash was not upgraded; log:\n{}",
            roost.log()
        );
    }
    assert!(
        roost.wait_log(
            "password hash upgraded from Mosquitto's to Argon2id",
            2,
            WAIT
        ),
        "{}",
        roost.log()
    );
    assert!(
        publish("carol", "pw carol"),
        "added through --password-stdin"
    );
    assert!(publish("dave", "pw dave"), "added through a pipe");
    assert!(!publish("erin", ""), "never added");
    // The new hashes: after a reload (the file read again) and before.
    assert!(publish("alice", "s3cret"), "{}", roost.log());
    roost.signal("HUP").expect("signal");
    assert!(roost.wait_log("files reloaded", 1, WAIT), "{}", roost.log());
    assert!(publish("alice", "s3cret"), "{}", roost.log());
    assert!(publish("bob", "hunter2"), "{}", roost.log());
    assert!(!publish("bob", "hunter"), "{}", roost.log());
    let out = run_with(
        binary.to_str().unwrap(),
        &["passwd", "upgrade", "--file", f],
        None,
    );
    assert!(
        out.stdout.contains("every user has an Argon2id hash"),
        "{out:?}"
    );
    assert_no_debug_output(&roost.log());
}

/// What an operator reads on stderr at the default level: one line per
/// connect (with the listener's bound address, the MQTT version, the
/// session kind and the keep-alive), disconnect and refused
/// authentication, with the fields named in README, and no Rust debug
/// output.
pub fn operator_log_lines(binary: &Path) {
    let dir = temp("operator-logs");
    let mut file = roost_runtime::passwd::PasswordFile::new();
    file.set("alice", "right").expect("set");
    file.save(dir.path().join("passwd")).expect("save");
    let config = dir.path().join("roost.toml");
    std::fs::write(
        &config,
        "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\npassword_file = \"passwd\"\n\
         [sys]\ninterval_secs = 0\n",
    )
    .expect("config");
    let roost = start(binary, &["--config", config.to_str().unwrap()], &[], 1);
    let port = roost.addrs[0].port().to_string();
    let publish = |id: &str, password: &str, extra: &[&str]| {
        let mut args = vec![
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            id,
            "-u",
            "alice",
            "-P",
            password,
            "-t",
            "t",
            "-m",
            "x",
        ];
        args.extend_from_slice(extra);
        run_with("mosquitto_pub", &args, None).success()
    };
    assert!(publish("good-client", "right", &[]));
    assert!(publish(
        "kept-client",
        "right",
        &["-V", "mqttv5", "-c", "-x", "300", "-k", "30"]
    ));
    assert!(!publish("bad-client", "wrong", &[]));
    assert!(
        roost.wait_log("authentication refused", 1, WAIT),
        "{}",
        roost.log()
    );
    assert!(
        roost.wait_log("client disconnected", 2, WAIT),
        "{}",
        roost.log()
    );
    let log = roost.log();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} line in:\n{log}"))
    };
    let connected = line("client connected client_id=good-client");
    for field in [
        "user=alice",
        "remote=127.0.0.1:",
        // The address the listener is bound to, not the configured port 0.
        &format!("listener=127.0.0.1:{port} "),
        "transport=tcp",
        // mosquitto_pub's defaults: MQTT 3.1.1, clean session, 60 s.
        "protocol=3.1.1",
        "session=clean",
        "keep_alive_s=60",
        " INFO ",
    ] {
        assert!(connected.contains(field), "{field} missing: {connected}");
    }
    let kept = line("client connected client_id=kept-client");
    for field in ["protocol=5.0", "session=persistent", "keep_alive_s=30"] {
        assert!(kept.contains(field), "{field} missing: {kept}");
    }
    let disconnected = line("client disconnected client_id=good-client");
    for field in ["reason=", "duration_s=", "remote=127.0.0.1:", " INFO "] {
        assert!(
            disconnected.contains(field),
            "{field} missing: {disconnected}"
        );
    }
    let refused = line("authentication refused");
    for field in ["user=alice", "remote=127.0.0.1:", "reason="] {
        assert!(refused.contains(field), "{field} missing: {refused}");
    }
    assert_no_debug_output(&log);
    assert!(!log.contains("None"), "Rust debug output in:\n{log}");
}

/// One `#[test]` per service check above, against the binary `$binary`
/// returns (a `&Path`); every runtime's `tests/service.rs` declares them
/// with this, after `#[macro_use] mod service_bin;`.
macro_rules! service_tests {
    ($binary:expr) => {
        service_tests!(@each $binary;
            pid_file, systemd_notify, reload_configuration, startup_errors,
            reload_names_what_waits_for_a_restart, reload_certificate,
            mosquitto_password_file, operator_log_lines);
    };
    (@each $binary:expr; $($check:ident),*) => {
        $(
            #[test]
            fn $check() {
                service_bin::$check($binary);
            }
        )*
    };
}
