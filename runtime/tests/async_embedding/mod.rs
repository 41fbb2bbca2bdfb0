//! The embedding API of the async runtimes (`roost-tokio`, `roost-smol`):
//! `start(config, hooks)`, in-process publish and subscribe through
//! `ServerHandle`, asynchronous authentication and authorization hooks and
//! an authorization policy: the behaviours `examples/embed.rs` shows, with
//! assertions. One suite for both: each runtime's `tests/embedding.rs`
//! includes this file beside a module `rt` that names its crate's items
//! (`start`, `ServerHandle`, `Receiver`) and adapts its channel
//! (`recv`, `is_empty`).

use super::rt::{self, ServerHandle};
use roost_conformance::blocking::{Connect, Raw, V5, V311, WAIT, publish_packet};
use roost_core::broker::{
    AccessPolicy, AuthDecision, AuthRequest, AuthorizeRequest, ClientRef, Message, Operation,
    PublishDecision, SubscribeDecision, Verdict,
};
use roost_core::codec::{QoS, ReasonCode};
use roost_core::topic::{TopicFilter, TopicName};
use roost_runtime::config::Config;
use roost_runtime::hooks::{Authenticator, Authorizer, Hooks};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
// Executor-agnostic: the hooks run on whichever runtime embeds the broker.
use tokio::sync::{RwLock, Semaphore};

/// Users may use `devices/<their name>/#`; everyone may use `public/#`.
struct DevicePolicy;

impl DevicePolicy {
    fn allowed(client: ClientRef<'_>, topic: &str) -> bool {
        if topic == "public" || topic.starts_with("public/") {
            return true;
        }
        let Some(user) = client.username else {
            return false;
        };
        let own = format!("devices/{}", user.as_str());
        topic == own || topic.starts_with(&format!("{own}/"))
    }
}

impl AccessPolicy for DevicePolicy {
    fn authorize_publish(
        &self,
        client: ClientRef<'_>,
        topic: &TopicName,
    ) -> Verdict<PublishDecision> {
        Verdict::Decided(if Self::allowed(client, topic.as_str()) {
            PublishDecision::Allow
        } else {
            PublishDecision::Deny(ReasonCode::NotAuthorized)
        })
    }

    fn authorize_subscribe(
        &self,
        client: ClientRef<'_>,
        filter: &TopicFilter,
        qos: QoS,
    ) -> Verdict<SubscribeDecision> {
        Verdict::Decided(if Self::allowed(client, filter.as_str()) {
            SubscribeDecision::Grant(qos)
        } else {
            SubscribeDecision::Deny(ReasonCode::NotAuthorized)
        })
    }
}

type Users = Arc<RwLock<HashMap<String, String>>>;

struct Env {
    server: ServerHandle,
    users: Users,
    /// How many CONNECTs the hook decided.
    asked: Arc<AtomicUsize>,
}

fn start() -> Env {
    start_with("")
}

fn start_with(limits: &str) -> Env {
    let users: Users = Arc::new(RwLock::new(HashMap::from([(
        "alice".to_owned(),
        "alice-pw".to_owned(),
    )])));
    let asked = Arc::new(AtomicUsize::new(0));
    let (table, count) = (users.clone(), asked.clone());
    let authenticate: Authenticator = Arc::new(move |request: AuthRequest| {
        let (table, count) = (table.clone(), count.clone());
        Box::pin(async move {
            count.fetch_add(1, Ordering::SeqCst);
            // The table is behind an async lock, as a database would be
            // behind a query: the decision comes after an await.
            let users = table.read().await;
            match (&request.username, &request.password) {
                (Some(user), Some(password))
                    if users
                        .get(user.as_str())
                        .is_some_and(|p| p.as_bytes() == password.as_ref()) =>
                {
                    AuthDecision::Accept
                }
                (Some(_), _) => AuthDecision::Reject(ReasonCode::BadUserNameOrPassword),
                (None, _) => AuthDecision::Reject(ReasonCode::NotAuthorized),
            }
        })
    });
    let config = Config::from_toml_str(&format!(
        "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n\
         [sys]\ninterval_secs = 0\n[limits]\n{limits}\n"
    ))
    .expect("config");
    let server = rt::start(
        config,
        Hooks {
            authenticate: Some(authenticate),
            policy: Some(Box::new(DevicePolicy)),
            authorize: None,
        },
    )
    .expect("start");
    Env {
        server,
        users,
        asked,
    }
}

fn login<'a>(id: &'a str, user: &'a str, password: &'a str) -> Connect<'a> {
    Connect {
        client_id: id,
        username: Some(user),
        password: Some(password),
        keep_alive: 60,
        ..Connect::default()
    }
}

async fn recv(rx: &mut rt::Receiver) -> Message {
    tokio::time::timeout(WAIT, rt::recv(rx))
        .await
        .expect("in-process delivery in time")
        .expect("subscription open")
}

async fn shutdown(server: ServerHandle) {
    tokio::time::timeout(WAIT, server.shutdown())
        .await
        .expect("shutdown in time");
}

#[tokio::test]
async fn authenticate_hook_decides_after_an_await() {
    let env = start();
    let addr = env.server.local_addrs()[0];
    assert_eq!(env.server.local_addrs().len(), 1);
    assert_ne!(addr.port(), 0, "local_addrs reports the bound port");

    Raw::connected(addr, V311, &login("a", "alice", "alice-pw")).disconnect();
    Raw::connected(addr, V5, &login("a5", "alice", "alice-pw")).disconnect();
    assert_eq!(
        Raw::connect(addr, V311, &login("b", "alice", "nope")).1,
        0x04
    );
    assert_eq!(
        Raw::connect(addr, V5, &login("b5", "alice", "nope")).1,
        0x86
    );
    assert_eq!(
        Raw::connect(addr, V311, &login("c", "bob", "bob-pw")).1,
        0x04
    );
    let anonymous = Connect {
        client_id: "anon",
        keep_alive: 60,
        ..Connect::default()
    };
    // The hook replaces allow_anonymous: it refuses clients without a name.
    assert_eq!(Raw::connect(addr, V311, &anonymous).1, 0x05);
    assert_eq!(Raw::connect(addr, V5, &anonymous).1, 0x87);
    assert_eq!(env.asked.load(Ordering::SeqCst), 7, "every CONNECT asks");

    // The table is read at each CONNECT: a user added now can log in.
    env.users
        .write()
        .await
        .insert("bob".to_owned(), "bob-pw".to_owned());
    Raw::connected(addr, V311, &login("c2", "bob", "bob-pw")).disconnect();
    shutdown(env.server).await;
}

#[tokio::test]
async fn authorize_policy_guards_subscribe_and_publish() {
    let env = start();
    let addr = env.server.local_addrs()[0];
    let mut everything = env.server.subscribe("#").await.expect("subscribe");
    let mut alice = Raw::connected(addr, V311, &login("a", "alice", "alice-pw"));
    env.users
        .write()
        .await
        .insert("bob".to_owned(), "bob-pw".to_owned());
    let mut bob = Raw::connected(addr, V5, &login("b", "bob", "bob-pw"));

    assert_eq!(alice.subscribe(1, "devices/alice/#", 1), 1);
    assert_eq!(
        alice.subscribe(2, "devices/bob/#", 1),
        0x80,
        "3.1.1 refusal"
    );
    assert_eq!(alice.subscribe(3, "#", 0), 0x80, "3.1.1 refusal");
    assert_eq!(bob.subscribe(1, "devices/alice/#", 1), 0x87, "5.0 refusal");
    assert_eq!(bob.subscribe(2, "public/#", 1), 1);

    // Bob's publish into alice's tree is acknowledged (0x87 in 5.0) but
    // goes nowhere: the in-process subscriber on '#' sees the next one first.
    assert_eq!(bob.publish("devices/alice/cmd", b"spoofed", 1, false), 0x87);
    assert_eq!(bob.publish("devices/bob/temp", b"20", 1, false), 0);
    let got = recv(&mut everything).await;
    assert_eq!(got.topic.as_str(), "devices/bob/temp");
    assert_eq!(got.payload.as_ref(), b"20");
    assert_eq!(got.qos, QoS::AtLeastOnce);

    alice.publish("public/hello", b"hi", 1, false);
    let got = bob.expect_publish();
    assert_eq!(got.topic, "public/hello");
    assert_eq!(recv(&mut everything).await.topic.as_str(), "public/hello");
    shutdown(env.server).await;
}

#[tokio::test]
async fn in_process_publish_and_subscribe_meet_mqtt_clients() {
    let env = start();
    let addr = env.server.local_addrs()[0];
    let mut reports = env.server.subscribe("devices/+/temp").await.expect("sub");
    let mut alice = Raw::connected(addr, V311, &login("a", "alice", "alice-pw"));
    assert_eq!(alice.subscribe(1, "public/#", 2), 2);

    // The program sees client publishes.
    alice.publish("devices/alice/temp", b"21.5", 1, false);
    let got = recv(&mut reports).await;
    assert_eq!(got.topic.as_str(), "devices/alice/temp");
    assert_eq!(got.payload.as_ref(), b"21.5");
    assert!(!got.retain);

    // Clients see the program's publishes, at the QoS it asked for; the
    // return value counts the subscriptions reached.
    let reached = env
        .server
        .publish("public/news", "extra", 1, false)
        .await
        .expect("publish");
    assert_eq!(reached, 1);
    let got = alice.expect_publish();
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice(), got.qos),
        ("public/news", &b"extra"[..], 1)
    );
    assert_eq!(
        env.server
            .publish("nobody/listens", "x", 0, false)
            .await
            .expect("publish"),
        0
    );

    // A retained in-process publish reaches later subscribers, client and
    // in-process alike, marked retained.
    env.server
        .publish("public/motd", "welcome", 0, true)
        .await
        .expect("retained");
    assert_eq!(alice.expect_publish().topic, "public/motd");
    let mut late = Raw::connected(addr, V5, &login("a2", "alice", "alice-pw"));
    assert_eq!(late.subscribe(1, "public/motd", 1), 1);
    let got = late.expect_publish();
    assert_eq!(got.payload, b"welcome");
    assert!(got.retain);
    let mut local = env.server.subscribe("public/motd").await.expect("sub");
    let got = recv(&mut local).await;
    assert_eq!(got.payload.as_ref(), b"welcome");
    assert!(got.retain);

    // Bad input is an error, not a panic.
    assert!(env.server.publish("a/+", "x", 0, false).await.is_err());
    assert!(env.server.publish("a", "x", 3, false).await.is_err());
    assert!(env.server.subscribe("a/#/b").await.is_err());

    // Shutdown: MQTT 5 clients get DISCONNECT 0x8B, in-process
    // subscriptions end.
    shutdown_and_check(env.server, &mut late, &mut reports).await;
}

async fn shutdown_and_check(server: ServerHandle, client: &mut Raw, local: &mut rt::Receiver) {
    shutdown(server).await;
    let p = client.read_packet().expect("DISCONNECT");
    assert_eq!((p.kind(), p.body.first()), (14, Some(&0x8b)));
    let end = tokio::time::timeout(WAIT, rt::recv(local))
        .await
        .expect("channel closes in time");
    assert!(
        end.is_none(),
        "in-process subscription ends with the broker"
    );
}

/// An in-process subscriber that stops reading holds at most
/// `limits.max_queued_messages` messages; the rest are dropped, so it
/// cannot grow the broker's memory, and it gets messages again once it
/// reads.
#[tokio::test]
async fn in_process_subscription_is_bounded() {
    let env = start_with("max_queued_messages = 10");
    let addr = env.server.local_addrs()[0];
    let mut idle = env.server.subscribe("public/#").await.expect("sub");
    let mut alice = Raw::connected(addr, V311, &login("a", "alice", "alice-pw"));
    for i in 0..50u8 {
        alice.publish("public/n", &[i], 0, false);
    }
    // PINGRESP: the broker has handled (and delivered) all fifty.
    alice.send(&[0xc0, 0]);
    assert_eq!(alice.read_packet().expect("PINGRESP").kind(), 13);
    for i in 0..10u8 {
        assert_eq!(recv(&mut idle).await.payload.as_ref(), [i]);
    }
    assert!(
        rt::is_empty(&idle),
        "more than max_queued_messages were kept"
    );
    alice.publish("public/n", b"again", 1, false);
    assert_eq!(recv(&mut idle).await.payload.as_ref(), b"again");
    shutdown(env.server).await;
}

/// The asynchronous authorization hook, alone (no policy): every PUBLISH
/// and SUBSCRIBE is asked of it, and it answers after awaits — an ACL table
/// behind an async lock, and for `slow/` topics a gate the test opens. The
/// client waits meanwhile, and what it sent behind the publish is answered
/// after it, in order.
#[tokio::test]
async fn authorize_hook_decides_after_an_await() {
    // user -> the topic prefix it may use.
    let acl: Arc<RwLock<HashMap<String, String>>> = Arc::new(RwLock::new(HashMap::from([(
        "alice".to_owned(),
        "devices/alice/".to_owned(),
    )])));
    let gate = Arc::new(Semaphore::new(0));
    let asked = Arc::new(AtomicUsize::new(0));
    let (table, opened, count) = (acl.clone(), gate.clone(), asked.clone());
    let authorize: Authorizer = Arc::new(move |request: AuthorizeRequest| {
        let (table, opened, count) = (table.clone(), opened.clone(), count.clone());
        Box::pin(async move {
            count.fetch_add(1, Ordering::SeqCst);
            let prefix = match &request.username {
                Some(user) => table.read().await.get(user.as_str()).cloned(),
                None => None,
            };
            let own = |t: &str| prefix.as_deref().is_some_and(|p| t.starts_with(p));
            match request.what {
                Operation::Publish { topic, .. } if topic.as_str().starts_with("slow/") => {
                    opened.acquire().await.expect("gate").forget();
                    PublishDecision::Allow.into()
                }
                Operation::Publish { topic, .. } if own(topic.as_str()) => {
                    PublishDecision::Allow.into()
                }
                Operation::Subscribe { filter, qos } if own(filter.as_str()) => {
                    YieldOnce(false).await;
                    // Granted, but at most QoS 1.
                    SubscribeDecision::Grant(qos.min(QoS::AtLeastOnce)).into()
                }
                Operation::Subscribe { .. } => {
                    SubscribeDecision::Deny(ReasonCode::NotAuthorized).into()
                }
                _ => PublishDecision::Deny(ReasonCode::NotAuthorized).into(),
            }
        })
    });
    let authenticate: Authenticator =
        Arc::new(|_: AuthRequest| Box::pin(async { AuthDecision::Accept }));
    let config = Config::from_toml_str(
        "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\n[sys]\ninterval_secs = 0\n",
    )
    .expect("config");
    let server = rt::start(
        config,
        Hooks {
            authenticate: Some(authenticate),
            authorize: Some(authorize),
            ..Hooks::default()
        },
    )
    .expect("start");
    let addr = server.local_addrs()[0];
    let mut everything = server.subscribe("#").await.expect("subscribe");
    let mut alice = Raw::connected(addr, V5, &login("a", "alice", "pw"));

    assert_eq!(alice.subscribe(1, "devices/alice/#", 2), 1, "downgraded");
    assert_eq!(alice.subscribe(2, "devices/bob/#", 1), 0x87);
    assert_eq!(alice.publish("devices/bob/cmd", b"no", 1, false), 0x87);
    // Allowed: acknowledged with success, then routed (alice gets it back
    // at the granted QoS 1, after the PUBACK, as Mosquitto orders them).
    alice.send(&publish_packet(V5, "devices/alice/t", b"21", 1, false, 3));
    let ack = alice.read_packet().expect("PUBACK");
    assert_eq!((ack.kind(), &ack.body[..2]), (4, &[0, 3][..]));
    assert_eq!(ack.body.get(2).copied().unwrap_or(0), 0, "success");
    let second = alice.read_packet().expect("PUBLISH");
    let got = alice.parse_publish(&second);
    assert_eq!((got.topic.as_str(), got.qos), ("devices/alice/t", 1));
    assert_eq!(
        recv(&mut everything).await.topic.as_str(),
        "devices/alice/t"
    );

    // A publish the hook holds back: the PINGREQ behind it waits too.
    alice.send(&publish_packet(V5, "slow/x", b"late", 1, false, 7));
    alice.send(&[0xc0, 0]);
    let early = alice.read_packet_within(Duration::from_millis(300));
    assert!(early.is_err(), "answered before the decision: {early:?}");
    gate.add_permits(1);
    let ack = alice.read_packet().expect("PUBACK");
    assert_eq!((ack.kind(), &ack.body[..2]), (4, &7u16.to_be_bytes()[..]));
    assert_eq!(alice.read_packet().expect("PINGRESP").kind(), 13);
    let got = recv(&mut everything).await;
    assert_eq!(
        (got.topic.as_str(), got.payload.as_ref()),
        ("slow/x", &b"late"[..])
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        5,
        "every publish and subscribe asks"
    );
    alice.disconnect();
    shutdown(server).await;
}

/// Yields to the executor once: a decision that is not ready at the first
/// poll, on any executor (a timer would tie the hook to one runtime).
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
