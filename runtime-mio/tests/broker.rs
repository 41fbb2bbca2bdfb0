//! roost-mio on real sockets, checked with rumqttc: the server runs on a
//! thread of its own (`Server::run`), or is stepped by the test itself
//! (`Server::poll_once`), as a host program would.

#[path = "../../runtime-smol/tests/common/mod.rs"]
mod common;

use roost_mio::{Server, Stopper};
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A server running on its own thread until stopped.
struct Running {
    addr: SocketAddr,
    stopper: Stopper,
    thread: JoinHandle<()>,
}

impl Running {
    fn start(config: roost_runtime::config::Config) -> Running {
        let mut server = Server::bind(config).expect("broker starts");
        let addr = server.local_addrs()[0];
        let stopper = server.stopper();
        let thread = std::thread::spawn(move || server.run().expect("server runs"));
        Running {
            addr,
            stopper,
            thread,
        }
    }

    fn stop(self) {
        self.stopper.stop();
        self.thread.join().expect("server thread ends");
    }
}

fn start() -> Running {
    Running::start(common::local_config())
}

#[tokio::test]
async fn qos_0_1_2_round_trips() {
    let server = start();
    common::qos_round_trips(server.addr).await;
    server.stop();
}

#[tokio::test]
async fn retained_message_reaches_a_later_subscriber() {
    let server = start();
    common::retained(server.addr).await;
    server.stop();
}

#[tokio::test]
async fn will_is_published_on_abrupt_drop() {
    let server = start();
    common::will_on_abrupt_drop(server.addr).await;
    server.stop();
}

#[tokio::test]
async fn keepalive_expiry_closes_and_publishes_the_will() {
    let server = start();
    common::keepalive_expiry(server.addr).await;
    server.stop();
}

#[tokio::test]
async fn shutdown_sends_disconnect_0x8b_and_stops() {
    let server = start();
    let addr = server.addr;
    let stream = tokio::task::spawn_blocking(move || common::connect_v5(addr, "shut"))
        .await
        .unwrap();
    let client = tokio::task::spawn_blocking(move || common::wait_disconnect(stream));
    let started = Instant::now();
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(client.await.unwrap(), Some(0x8B));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting"
    );
}

/// A host steps the server from its own loop and uses the in-process API
/// between steps, while a rumqttc client talks to it over TCP.
#[test]
fn a_host_steps_the_server_and_exchanges_messages_in_process() {
    let mut server = Server::bind(common::local_config()).unwrap();
    let addr = server.local_addrs()[0];
    let sub = server.subscribe("host/in/#").unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            use rumqttc::QoS;
            let (client, mut events) = common::connect(addr, "host-client").await;
            client
                .subscribe("host/out", QoS::AtLeastOnce)
                .await
                .unwrap();
            client
                .publish("host/in/1", QoS::AtLeastOnce, false, "from client")
                .await
                .unwrap();
            let p = common::next_publish(&mut events).await;
            assert_eq!(p.topic, "host/out");
            assert_eq!(&p.payload[..], b"from host");
        });
        let _ = done_tx.send(());
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered = false;
    while done_rx.try_recv().is_err() {
        assert!(Instant::now() < deadline, "no exchange within 10 s");
        server.poll_once(Some(Duration::from_millis(10))).unwrap();
        for (subscription, message) in server.take_deliveries() {
            assert_eq!(subscription, sub);
            assert_eq!(message.topic.as_str(), "host/in/1");
            assert_eq!(&message.payload[..], b"from client");
            assert_eq!(
                server.publish("host/out", "from host", 1, false).unwrap(),
                1
            );
            answered = true;
        }
    }
    client.join().unwrap();
    assert!(answered);
    server.shutdown();
    server.run().unwrap();
    assert!(server.is_stopped());
    assert_eq!(server.driver().connection_count(), 0);
}

#[tokio::test]
async fn password_file_admits_the_right_password_only() {
    let server = Running::start(common::password_config("mio"));
    common::password_check(server.addr).await;
    server.stop();
}

#[test]
fn binary_reloads_on_sighup_and_stops_on_sigterm() {
    common::binary_signals(env!("CARGO_BIN_EXE_roost-mio"));
}

#[tokio::test]
async fn slow_subscriber_catches_up() {
    let server = Running::start(common::backlog_config());
    common::slow_subscriber_catches_up(server.addr).await;
    server.stop();
}
