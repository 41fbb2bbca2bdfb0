//! roost-smol on real sockets, checked with rumqttc.

mod common;

use std::time::{Duration, Instant};

fn start() -> roost_smol::ServerHandle {
    roost_smol::start(common::local_config(), roost_smol::Hooks::default()).expect("broker starts")
}

#[tokio::test]
async fn qos_0_1_2_round_trips() {
    let server = start();
    common::qos_round_trips(server.local_addrs()[0]).await;
    server.shutdown().await;
}

#[tokio::test]
async fn retained_message_reaches_a_later_subscriber() {
    let server = start();
    common::retained(server.local_addrs()[0]).await;
    server.shutdown().await;
}

#[tokio::test]
async fn will_is_published_on_abrupt_drop() {
    let server = start();
    common::will_on_abrupt_drop(server.local_addrs()[0]).await;
    server.shutdown().await;
}

#[tokio::test]
async fn keepalive_expiry_closes_and_publishes_the_will() {
    let server = start();
    common::keepalive_expiry(server.local_addrs()[0]).await;
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_sends_disconnect_0x8b_and_stops() {
    let server = start();
    let addr = server.local_addrs()[0];
    let stream = tokio::task::spawn_blocking(move || common::connect_v5(addr, "shut"))
        .await
        .unwrap();
    let client = tokio::task::spawn_blocking(move || common::wait_disconnect(stream));
    let started = Instant::now();
    server.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(client.await.unwrap(), Some(0x8B));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn password_file_admits_the_right_password_only() {
    let server = roost_smol::start(
        common::password_config("smol"),
        roost_smol::Hooks::default(),
    )
    .expect("broker starts");
    common::password_check(server.local_addrs()[0]).await;
    server.shutdown().await;
}

#[test]
fn binary_reloads_on_sighup_and_stops_on_sigterm() {
    common::binary_signals(env!("CARGO_BIN_EXE_roost-smol"));
}

#[tokio::test]
async fn slow_subscriber_catches_up() {
    let server = roost_smol::start(common::backlog_config(), roost_smol::Hooks::default())
        .expect("broker starts");
    common::slow_subscriber_catches_up(server.local_addrs()[0]).await;
    server.shutdown().await;
}
