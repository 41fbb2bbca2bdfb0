//! The poll-driven embedding API of `roost_mio`: a host steps the server
//! from its own loop and decides authentication and authorization itself,
//! as late as suits it (`take_auth_requests` / `resolve_auth`,
//! `take_authorize_requests` / `resolve_authorize`), and reads in-process
//! deliveries, which are bounded. The same behaviours the async runtimes'
//! hooks give (`runtime/tests/async_embedding`), in mio's idiom.

use roost_conformance::blocking::{Connect, Raw, V5, V311, publish_packet};
use roost_core::broker::{
    AuthDecision, AuthRequest, AuthorizeRequest, Operation, PublishDecision, SubscribeDecision,
};
use roost_core::codec::{QoS, ReasonCode};
use roost_mio::Server;
use roost_runtime::config::Config;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn config(limits: &str) -> Config {
    Config::from_toml_str(&format!(
        "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n\
         [sys]\ninterval_secs = 0\n[limits]\n{limits}\n"
    ))
    .expect("config")
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

/// Runs `client` on a thread while the host steps `server` and calls `step`
/// after each step, until the client is done (within 20 s). Returns what the
/// client returned.
fn host<T: Send + 'static>(
    server: &mut Server,
    client: impl FnOnce() -> T + Send + 'static,
    mut step: impl FnMut(&mut Server),
) -> T {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let out = client();
        let _ = tx.send(());
        out
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.try_recv().is_err() {
        assert!(Instant::now() < deadline, "the client did not finish");
        server
            .poll_once(Some(Duration::from_millis(5)))
            .expect("step");
        step(server);
        if thread.is_finished() {
            break;
        }
    }
    thread.join().expect("client thread")
}

/// The host answers CONNECTs itself, each a few steps after it was asked
/// (a database would take a while): the client waits for its CONNACK, and
/// gets the code the host chose, in 3.1.1 and 5.0.
#[test]
fn host_decides_authentication_later() {
    let mut server = Server::bind(config("")).expect("bind");
    server.use_external_authentication();
    let addr = server.local_addrs()[0];
    let mut waiting: Vec<(AuthRequest, u32)> = Vec::new();
    let mut asked = 0;
    let codes = host(
        &mut server,
        move || {
            let anonymous = Connect {
                client_id: "anon",
                keep_alive: 60,
                ..Connect::default()
            };
            let started = Instant::now();
            let ok = Raw::connect(addr, V311, &login("a", "alice", "alice-pw")).1;
            let waited = started.elapsed();
            vec![
                (ok, waited),
                (
                    Raw::connect(addr, V5, &login("a5", "alice", "alice-pw")).1,
                    waited,
                ),
                (
                    Raw::connect(addr, V311, &login("b", "alice", "nope")).1,
                    waited,
                ),
                (
                    Raw::connect(addr, V5, &login("b5", "alice", "nope")).1,
                    waited,
                ),
                (Raw::connect(addr, V311, &anonymous).1, waited),
                (Raw::connect(addr, V5, &anonymous).1, waited),
            ]
        },
        |server| {
            for request in server.take_auth_requests() {
                asked += 1;
                waiting.push((request, 0));
            }
            // Each request is answered on its 20th step (about 100 ms).
            for (_, steps) in waiting.iter_mut() {
                *steps += 1;
            }
            let (ready, still): (Vec<_>, Vec<_>) = waiting.drain(..).partition(|(_, s)| *s >= 20);
            waiting = still;
            for (request, _) in ready {
                let decision = match (&request.username, &request.password) {
                    (Some(user), Some(password))
                        if user.as_str() == "alice" && password.as_ref() == b"alice-pw" =>
                    {
                        AuthDecision::Accept
                    }
                    (Some(_), _) => AuthDecision::Reject(ReasonCode::BadUserNameOrPassword),
                    (None, _) => AuthDecision::Reject(ReasonCode::NotAuthorized),
                };
                server.resolve_auth(request.token, decision);
            }
        },
    );
    let got: Vec<u8> = codes.iter().map(|(code, _)| *code).collect();
    assert_eq!(got, [0x00, 0x00, 0x04, 0x86, 0x05, 0x87]);
    assert!(
        codes[0].1 >= Duration::from_millis(50),
        "the CONNACK waited for the host's decision ({:?})",
        codes[0].1
    );
    assert_eq!(asked, 6, "every CONNECT was asked of the host");
    server.shutdown();
    server.run().expect("stops");
}

/// The host decides every PUBLISH and SUBSCRIBE: users may use
/// `devices/<name>/`, subscriptions are granted at most QoS 1, and a
/// publish to `slow/` is held for a while. Denials reach the client with
/// 0x87; a held publish holds back what the client sent after it.
#[test]
fn host_decides_authorization_later() {
    let mut server = Server::bind(config("")).expect("bind");
    server.use_external_authentication();
    server.use_external_authorization();
    let addr = server.local_addrs()[0];
    let sub = server.subscribe("#").expect("in-process subscribe");
    let mut held: Vec<(AuthorizeRequest, u32)> = Vec::new();
    let mut asked = 0;
    let mut seen = Vec::new();
    let answers = host(
        &mut server,
        move || {
            let mut alice = Raw::connected(addr, V5, &login("a", "alice", "pw"));
            let own = alice.subscribe(1, "devices/alice/#", 2);
            let other = alice.subscribe(2, "devices/bob/#", 1);
            let denied = alice.publish("devices/bob/cmd", b"no", 1, false);
            // Allowed: alice gets it back too, so read up to the PUBACK.
            alice.send(&publish_packet(V5, "devices/alice/t", b"21", 1, false, 3));
            let allowed = loop {
                let p = alice.read_packet().expect("PUBACK");
                if p.kind() == 4 {
                    break p.body.get(2).copied().unwrap_or(0);
                }
            };
            // Held: the PINGREQ behind it is answered after its PUBACK.
            alice.send(&publish_packet(V5, "slow/x", b"late", 1, false, 7));
            alice.send(&[0xc0, 0]);
            let mut order = Vec::new();
            while order.len() < 2 {
                let p = alice.read_packet().expect("PUBACK and PINGRESP");
                if p.kind() != 3 {
                    order.push(p.kind());
                }
            }
            (own, other, denied, allowed, order)
        },
        |server| {
            for request in server.take_auth_requests() {
                server.resolve_auth(request.token, AuthDecision::Accept);
            }
            for request in server.take_authorize_requests() {
                asked += 1;
                held.push((request, 0));
            }
            for (_, steps) in held.iter_mut() {
                *steps += 1;
            }
            let (ready, still): (Vec<_>, Vec<_>) = held.drain(..).partition(|(r, s)| {
                let slow = matches!(&r.what, Operation::Publish { topic, .. }
                    if topic.as_str().starts_with("slow/"));
                *s >= if slow { 40 } else { 2 }
            });
            held = still;
            for (request, _) in ready {
                let own = |t: &str| t.starts_with("devices/alice/") || t.starts_with("slow/");
                let mine = request
                    .username
                    .as_ref()
                    .is_some_and(|u| u.as_str() == "alice");
                match &request.what {
                    Operation::Publish { topic, .. } => server.resolve_authorize(
                        request.token,
                        if mine && own(topic.as_str()) {
                            PublishDecision::Allow
                        } else {
                            PublishDecision::Deny(ReasonCode::NotAuthorized)
                        },
                    ),
                    Operation::Subscribe { filter, qos } => server.resolve_authorize(
                        request.token,
                        if mine && own(filter.as_str()) {
                            SubscribeDecision::Grant((*qos).min(QoS::AtLeastOnce))
                        } else {
                            SubscribeDecision::Deny(ReasonCode::NotAuthorized)
                        },
                    ),
                    _ => server.resolve_authorize(
                        request.token,
                        PublishDecision::Deny(ReasonCode::NotAuthorized),
                    ),
                }
            }
            for (subscription, message) in server.take_deliveries() {
                assert_eq!(subscription, sub);
                seen.push(message.topic.as_str().to_owned());
            }
        },
    );
    let (own, other, denied, allowed, order) = answers;
    assert_eq!(own, 1, "granted, downgraded to QoS 1");
    assert_eq!(other, 0x87);
    assert_eq!(denied, 0x87);
    assert_eq!(allowed, 0);
    assert_eq!(order, [4, 13], "PUBACK of the held publish, then PINGRESP");
    assert_eq!(asked, 5, "every publish and subscribe was asked");
    // Deliveries reach the host on the steps after the client finished.
    for _ in 0..20 {
        server
            .poll_once(Some(Duration::from_millis(5)))
            .expect("step");
        seen.extend(
            server
                .take_deliveries()
                .into_iter()
                .map(|(_, m)| m.topic.as_str().to_owned()),
        );
    }
    assert_eq!(
        seen,
        ["devices/alice/t", "slow/x"],
        "only allowed publishes"
    );
    server.shutdown();
    server.run().expect("stops");
}

/// A host that does not take its deliveries holds at most
/// `limits.max_queued_messages` per subscription; the rest are dropped.
#[test]
fn in_process_deliveries_are_bounded() {
    let mut server = Server::bind(config("max_queued_messages = 10")).expect("bind");
    let addr = server.local_addrs()[0];
    let _sub = server.subscribe("public/#").expect("subscribe");
    host(
        &mut server,
        move || {
            let mut alice = Raw::connected(
                addr,
                V311,
                &Connect {
                    client_id: "a",
                    keep_alive: 60,
                    ..Connect::default()
                },
            );
            for i in 0..50u8 {
                alice.publish("public/n", &[i], 0, false);
            }
            alice.send(&[0xc0, 0]);
            assert_eq!(alice.read_packet().expect("PINGRESP").kind(), 13);
        },
        |_| {},
    );
    let got: Vec<u8> = server
        .take_deliveries()
        .into_iter()
        .map(|(_, m)| m.payload[0])
        .collect();
    assert_eq!(
        got,
        (0..10).collect::<Vec<u8>>(),
        "the first ten, then none"
    );
    server.shutdown();
    server.run().expect("stops");
}
