//! Attacks on authorization: wills, offline queues, session takeover, ACL
//! pattern injection, anonymous access on a public address.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::floods::setup;
use super::{Binary, Broker, Login, Report, passwd_line, temp_dir, toml_path};
use crate::client::RawClient;
use crate::wire::{Publish, Version};

/// How long a client listens for a message that must not come.
const QUIET: Duration = Duration::from_millis(1000);

/// Cheap hashes: these attacks are about who may do what, not hash cost.
fn cheap(user: &str, password: &str) -> String {
    passwd_line(user, password, 64, 1)
}

/// The "not authorized" CONNACK code of `version`.
fn not_authorized(version: Version) -> u8 {
    match version {
        Version::V311 => 0x05,
        Version::V5 => 0x87,
    }
}

/// Starts a broker with listener 0 authenticated (`passwd`, and `acl` when
/// given) and listener 1 anonymous without ACL, both on 127.0.0.1.
fn two_listeners(
    bin: &Binary,
    dir: &Path,
    passwd: &str,
    acl: Option<&str>,
) -> Result<Broker, String> {
    let pw = dir.join("passwd");
    std::fs::write(&pw, passwd).map_err(|e| format!("write passwd: {e}"))?;
    let acl_line = match acl {
        Some(text) => {
            let path = dir.join("acl");
            std::fs::write(&path, text).map_err(|e| format!("write acl: {e}"))?;
            format!("acl_file = {}\n", toml_path(&path))
        }
        None => String::new(),
    };
    let toml = format!(
        "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = false\n\
         password_file = {}\n{acl_line}\
         [[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n\
         [sys]\ninterval_secs = 0\n",
        toml_path(&pw)
    );
    bin.start(dir, &toml, 2)
}

/// The topics of publishes, for messages.
fn topics(ps: &[Publish]) -> Vec<String> {
    ps.iter()
        .map(|p| format!("{} {:?}", p.topic, String::from_utf8_lossy(&p.payload)))
        .collect()
}

// ---------------------------------------------------------------------------
// 4. Wills.

/// Wills are authorized like PUBLISHes at CONNECT: alice may not publish
/// to `bob/#`, so a CONNECT with will `bob/will` is refused; a will on a
/// `$` topic is refused even where no ACL applies.
pub(super) async fn will_authorization(bin: &Binary) -> Report {
    let mut r = Report::new(
        "will-authorization",
        "alice (ACL: alice/# only) CONNECTs with will topic bob/will: refused with 0x05 (3.1.1) \
         / 0x87 (5.0); an anonymous client (no ACL) with will topic $SYS/broker/version: \
         refused the same way; and no will payload ever reaches a subscriber of bob/# or $SYS/#",
    );
    let dir = setup!(r, temp_dir());
    let passwd = cheap("alice", "a-pw") + &cheap("bob", "b-pw");
    let acl = "user alice\ntopic readwrite alice/#\nuser bob\ntopic readwrite bob/#\n";
    let broker = setup!(r, two_listeners(bin, dir.path(), &passwd, Some(acl)));
    let (auth, anon) = (broker.addr(0), broker.addr(1));

    let (mut bob, _) = setup!(
        r,
        Login::new(Version::V311, "bob")
            .user("bob", "b-pw")
            .connect(auth)
            .await
    );
    setup!(r, bob.subscribe("bob/#", 0).await);
    let (mut watcher, _) = setup!(
        r,
        Login::new(Version::V311, "sys-watch").connect(anon).await
    );
    setup!(r, watcher.subscribe("$SYS/#", 0).await);

    let marker: &[u8] = b"forged will";
    let mut accepted = Vec::new();
    for version in [Version::V311, Version::V5] {
        let cases = [
            ("alice", Some(("alice", "a-pw")), "bob/will", auth),
            ("anonymous", None, "$SYS/broker/version", anon),
        ];
        for (who, user, topic, addr) in cases {
            let id = format!("will-{who}-{}", version.level());
            let mut login = Login::new(version, &id);
            if let Some((u, p)) = user {
                login = login.user(u, p);
            }
            login.will = Some((topic, marker));
            match login.attempt(addr, Duration::from_secs(5)).await {
                Ok((c, code, _)) => {
                    r.measure(format!(
                        "{version} {who}, will on {topic}: CONNACK 0x{code:02x}"
                    ));
                    r.check(code == not_authorized(version), || {
                        format!(
                            "{version} {who} with will on {topic}: CONNACK 0x{code:02x}, not \
                             0x{:02x}",
                            not_authorized(version)
                        )
                    });
                    if code == 0 {
                        // Keep it to drop without DISCONNECT: the will fires.
                        accepted.push(c);
                    }
                }
                Err(e) => r.violate(format!("{version} {who} with will on {topic}: {e}")),
            }
        }
    }
    // Abrupt closes publish the wills of every CONNECT that was accepted.
    drop(accepted);
    for (name, c) in [("bob/#", &mut bob), ("$SYS/#", &mut watcher)] {
        let forged: Vec<Publish> = c
            .collect_publishes(QUIET)
            .await
            .into_iter()
            .filter(|p| p.payload == marker)
            .collect();
        r.measure(format!(
            "forged wills seen by the {name} subscriber: {}",
            forged.len()
        ));
        r.check(forged.is_empty(), || {
            format!(
                "the {name} subscriber received forged wills: {:?}",
                topics(&forged)
            )
        });
    }
    r
}

// ---------------------------------------------------------------------------
// 5. Offline queue against the ACL of the moment.

/// Alice's persistent session queues `sensors/secret` and `sensors/ok`
/// while she is away; the ACL then denies her `sensors/secret` (SIGHUP);
/// more of both are queued; on reconnecting she must get `sensors/ok` only.
pub(super) async fn offline_queue_acl(bin: &Binary) -> Report {
    let mut r = Report::new(
        "offline-queue-acl",
        "alice subscribes sensors/# (QoS 1, persistent) and disconnects; bob publishes \
         sensors/secret and sensors/ok; the ACL is changed to deny alice sensors/secret and \
         reloaded (SIGHUP); bob publishes both again; alice reconnects: she receives the two \
         sensors/ok messages and no sensors/secret",
    );
    let dir = setup!(r, temp_dir());
    let passwd = cheap("alice", "a-pw") + &cheap("bob", "b-pw");
    let acl_v1 = "user alice\ntopic read sensors/#\nuser bob\ntopic write sensors/#\n";
    let acl_v2 = "user alice\ntopic read sensors/#\ntopic deny sensors/secret\n\
                  user bob\ntopic write sensors/#\n";
    let broker = setup!(r, two_listeners(bin, dir.path(), &passwd, Some(acl_v1)));
    let addr = broker.addr(0);
    let alice = Login::new(Version::V311, "alice-q")
        .user("alice", "a-pw")
        .persistent();

    let (mut a, _) = setup!(r, alice.connect(addr).await);
    setup!(r, a.subscribe("sensors/#", 1).await);
    setup!(r, a.disconnect().await);
    let (mut bob, _) = setup!(
        r,
        Login::new(Version::V311, "bob-q")
            .user("bob", "b-pw")
            .connect(addr)
            .await
    );
    for (topic, payload) in [("sensors/secret", "s1"), ("sensors/ok", "ok1")] {
        setup!(
            r,
            bob.publish(Publish::new(topic, 1, payload.as_bytes()))
                .await
        );
    }
    setup!(
        r,
        std::fs::write(dir.path().join("acl"), acl_v2).map_err(|e| e.to_string())
    );
    setup!(r, broker.signal("HUP"));
    let reloaded = broker.wait_log("reloaded", 1, Duration::from_secs(5));
    r.measure(format!(
        "ACL reload after SIGHUP {}",
        if reloaded { "logged" } else { "NOT logged" }
    ));
    r.check(reloaded, || "the broker did not log the ACL reload".into());
    for (topic, payload) in [("sensors/secret", "s2"), ("sensors/ok", "ok2")] {
        setup!(
            r,
            bob.publish(Publish::new(topic, 1, payload.as_bytes()))
                .await
        );
    }
    let (mut a, present) = setup!(r, alice.connect(addr).await);
    r.check(present, || {
        "alice's session was not present on reconnecting".into()
    });
    let got = a.collect_publishes(QUIET).await;
    r.measure(format!("alice received {:?}", topics(&got)));
    let secret: Vec<&Publish> = got.iter().filter(|p| p.topic == "sensors/secret").collect();
    r.check(secret.is_empty(), || {
        format!(
            "alice received {} sensors/secret messages the ACL denies her ({})",
            secret.len(),
            secret
                .iter()
                .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    let ok = got.iter().filter(|p| p.topic == "sensors/ok").count();
    r.check(ok == 2, || {
        format!("alice received {ok} sensors/ok messages, not 2")
    });
    r
}

// ---------------------------------------------------------------------------
// 6. Sessions belong to an identity.

/// Bob, then an anonymous client on another listener, connect with alice's
/// client id: each must get a fresh session and nothing of alice's.
pub(super) async fn session_identity(bin: &Binary) -> Report {
    let mut r = Report::new(
        "session-identity",
        "alice (client id `shared`, persistent) subscribes inbox/alice/# and leaves a queued \
         message; bob connecting with client id `shared` gets session present 0 and none of \
         alice's messages, queued or published while he is connected; the same for an \
         anonymous client with client id `shared` on a second, anonymous listener",
    );
    let dir = setup!(r, temp_dir());
    let passwd = cheap("alice", "a-pw") + &cheap("bob", "b-pw");
    let broker = setup!(r, two_listeners(bin, dir.path(), &passwd, None));
    let (auth, anon) = (broker.addr(0), broker.addr(1));
    let (mut publisher, _) = setup!(r, Login::new(Version::V311, "pub").connect(anon).await);
    let alice = Login::new(Version::V311, "shared")
        .user("alice", "a-pw")
        .persistent();
    let intruders = [
        (
            "bob",
            Login::new(Version::V311, "shared")
                .user("bob", "b-pw")
                .persistent(),
            auth,
        ),
        (
            "anonymous",
            Login::new(Version::V311, "shared").persistent(),
            anon,
        ),
    ];
    for (round, (who, login, addr)) in intruders.into_iter().enumerate() {
        let (mut a, _) = setup!(r, alice.connect(auth).await);
        setup!(r, a.subscribe("inbox/alice/#", 1).await);
        setup!(r, a.disconnect().await);
        let queued = format!("inbox/alice/queued-{round}");
        setup!(r, publisher.publish(Publish::new(&queued, 1, b"q")).await);
        let (mut c, present) = setup!(r, login.connect(addr).await);
        r.measure(format!(
            "{who} with alice's client id: session present {present}"
        ));
        r.check(!present, || {
            format!("{who} took over alice's session (session present 1)")
        });
        let live = format!("inbox/alice/live-{round}");
        setup!(r, publisher.publish(Publish::new(&live, 1, b"l")).await);
        let got = c.collect_publishes(QUIET).await;
        r.measure(format!("{who} received {:?}", topics(&got)));
        r.check(got.is_empty(), || {
            format!("{who} received alice's messages: {:?}", topics(&got))
        });
        let _ = c.disconnect().await;
    }
    r
}

// ---------------------------------------------------------------------------
// 7. ACL pattern injection.

/// A user literally named `%c`, with client id `bob`, against
/// `pattern readwrite users/%u/#`.
pub(super) async fn acl_pattern_injection(bin: &Binary) -> Report {
    let mut r = Report::new(
        "acl-pattern-injection",
        "with `pattern readwrite users/%u/#`, a user named `%c` connecting with client id \
         `bob` is refused a subscription to users/bob/# (SUBACK 0x80), receives nothing bob \
         gets on users/bob/secret, and cannot publish into users/bob/#",
    );
    let dir = setup!(r, temp_dir());
    let passwd = cheap("%c", "c-pw") + &cheap("bob", "b-pw");
    let acl = "pattern readwrite users/%u/#\n";
    let broker = setup!(r, two_listeners(bin, dir.path(), &passwd, Some(acl)));
    let addr = broker.addr(0);
    let (mut mallory, _) = setup!(
        r,
        Login::new(Version::V311, "bob")
            .user("%c", "c-pw")
            .connect(addr)
            .await
    );
    let (mut bob, _) = setup!(
        r,
        Login::new(Version::V311, "bob-real")
            .user("bob", "b-pw")
            .connect(addr)
            .await
    );
    setup!(r, bob.subscribe("users/bob/#", 0).await);
    let ack = setup!(
        r,
        mallory
            .subscribe_with(
                &[crate::wire::Sub::new("users/bob/#", 0)],
                &crate::wire::Properties::new()
            )
            .await
    );
    r.measure(format!(
        "user `%c` (client id bob) SUBSCRIBE users/bob/#: SUBACK {:02x?}",
        ack.codes
    ));
    r.check(ack.codes == [0x80], || {
        format!(
            "user `%c` was granted users/bob/# (SUBACK {:02x?})",
            ack.codes
        )
    });
    setup!(
        r,
        bob.publish(Publish::new("users/bob/secret", 0, b"secret"))
            .await
    );
    setup!(
        r,
        mallory
            .publish(Publish::new("users/bob/forged", 0, b"forged"))
            .await
    );
    let stolen = mallory.collect_publishes(QUIET).await;
    let stolen: Vec<Publish> = stolen
        .into_iter()
        .filter(|p| p.topic.starts_with("users/bob/"))
        .collect();
    r.measure(format!("`%c` received {:?}", topics(&stolen)));
    r.check(stolen.is_empty(), || {
        format!("user `%c` read bob's messages: {:?}", topics(&stolen))
    });
    let at_bob = bob.collect_publishes(QUIET).await;
    let forged: Vec<Publish> = at_bob
        .into_iter()
        .filter(|p| p.topic == "users/bob/forged")
        .collect();
    r.measure(format!(
        "bob received {} messages published by `%c`",
        forged.len()
    ));
    r.check(forged.is_empty(), || {
        "user `%c` published into users/bob/#".into()
    });
    r
}

// ---------------------------------------------------------------------------
// 9. Anonymous clients on a public address.

/// `--bind 0.0.0.0 --port P` with no configuration file: anonymous
/// CONNECTs to 127.0.0.1:P are refused, and the log says why.
pub(super) async fn anonymous_public_bind(bin: &Binary) -> Report {
    let mut r = Report::new(
        "anonymous-public-bind",
        "the broker started with `--bind 0.0.0.0 --port P` (no configuration): an anonymous \
         CONNECT to 127.0.0.1:P is refused with 0x05 (3.1.1) / 0x87 (5.0), and the start-up \
         log names allow_anonymous",
    );
    let port = setup!(r, free_port());
    let broker = setup!(
        r,
        bin.spawn(
            &[
                "--bind".into(),
                "0.0.0.0".into(),
                "--port".into(),
                port.to_string().into()
            ],
            1
        )
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], broker.addr(0).port()));
    for version in [Version::V311, Version::V5] {
        let id = format!("anon-{}", version.level());
        match Login::new(version, &id)
            .attempt(addr, Duration::from_secs(5))
            .await
        {
            Ok((c, code, _)) => {
                r.measure(format!("{version} anonymous CONNECT: CONNACK 0x{code:02x}"));
                r.check(code == not_authorized(version), || {
                    format!(
                        "{version} anonymous CONNECT on 0.0.0.0: CONNACK 0x{code:02x}, not 0x{:02x}",
                        not_authorized(version)
                    )
                });
                drop::<RawClient>(c);
            }
            Err(e) => r.violate(format!("{version} anonymous CONNECT: {e}")),
        }
    }
    let log = broker.log();
    let explained = log.contains("allow_anonymous");
    r.measure(format!(
        "start-up log {} allow_anonymous",
        if explained { "names" } else { "does not name" }
    ));
    r.check(explained, || {
        "the log does not say why anonymous clients are refused (allow_anonymous)".into()
    });
    r
}

/// A TCP port free on every address at the moment of asking.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}
