//! A third-party client, rumqttc, against the embedded broker over every
//! transport (TCP, TLS, WebSocket, WebSocket over TLS) in MQTT 3.1.1 and
//! 5.0: connect, subscribe, publish at QoS 0/1/2, receive, retained
//! messages and the will of a client that vanishes.

mod common;

use common::{TestCert, WAIT, toml_path};
use roost_runtime::config::Config;
use roost_tokio::{Hooks, ServerHandle};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Tcp,
    Tls,
    Ws,
    Wss,
}

/// A broker with one listener of each kind, in the order of [`Kind`].
struct Env {
    server: Option<ServerHandle>,
    cert_pem: String,
    _dir: tempfile::TempDir,
}

impl Env {
    fn start() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = TestCert::new(dir.path());
        let tls = format!(
            "cert = {}\nkey = {}\n",
            toml_path(&cert.cert_path),
            toml_path(&cert.key_path)
        );
        let listener = |protocol: &str, extra: &str| {
            format!(
                "[[listener]]\nprotocol = \"{protocol}\"\nbind = \"127.0.0.1:0\"\n\
                 allow_anonymous = true\n{extra}"
            )
        };
        let text = [
            listener("tcp", ""),
            listener("tls", &tls),
            listener("ws", ""),
            listener("wss", &tls),
            "[sys]\ninterval_secs = 0\n".to_owned(),
        ]
        .concat();
        let config = Config::from_toml_str(&text).expect("config");
        let server = roost_tokio::start(config, Hooks::default()).expect("start broker");
        Env {
            server: Some(server),
            cert_pem: cert.cert_pem,
            _dir: dir,
        }
    }

    fn port(&self, kind: Kind) -> u16 {
        self.server.as_ref().expect("server").local_addrs()[kind as usize].port()
    }

    fn tls(&self) -> TlsConfiguration {
        TlsConfiguration::Simple {
            ca: self.cert_pem.clone().into_bytes(),
            alpn: None,
            client_auth: None,
        }
    }

    /// Host (a URL for WebSocket), port and transport for `kind`.
    fn endpoint(&self, kind: Kind) -> (String, u16, Transport) {
        let port = self.port(kind);
        match kind {
            Kind::Tcp => ("127.0.0.1".into(), port, Transport::Tcp),
            Kind::Tls => ("127.0.0.1".into(), port, Transport::Tls(self.tls())),
            Kind::Ws => (format!("ws://127.0.0.1:{port}/mqtt"), port, Transport::Ws),
            Kind::Wss => (
                format!("wss://127.0.0.1:{port}/mqtt"),
                port,
                Transport::Wss(self.tls()),
            ),
        }
    }

    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(WAIT, server.shutdown())
                .await
                .expect("shutdown in time");
        }
    }
}

/// Receives from `rx` until `pick` accepts something, within [`WAIT`].
async fn wait_for<P: std::fmt::Debug, T>(
    rx: &mut mpsc::UnboundedReceiver<Result<P, String>>,
    what: &str,
    mut pick: impl FnMut(&P) -> Option<T>,
) -> T {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Some(Ok(p)) => {
                    if let Some(t) = pick(&p) {
                        return t;
                    }
                }
                Some(Err(e)) => panic!("connection failed while waiting for {what}: {e}"),
                None => panic!("event loop ended while waiting for {what}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

mod v311 {
    use super::*;
    use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};

    type Rx = mpsc::UnboundedReceiver<Result<Packet, String>>;

    fn drive(mut eventloop: EventLoop) -> (Rx, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        (rx, task)
    }

    fn options(env: &Env, kind: Kind, id: &str) -> MqttOptions {
        let (host, port, transport) = env.endpoint(kind);
        let mut options = MqttOptions::new(id, host, port);
        options.set_transport(transport);
        options
    }

    async fn connect(options: MqttOptions) -> (AsyncClient, Rx, JoinHandle<()>) {
        let (client, eventloop) = AsyncClient::new(options, 16);
        let (mut rx, task) = drive(eventloop);
        let code = wait_for(&mut rx, "CONNACK", |p| match p {
            Packet::ConnAck(c) => Some(c.code),
            _ => None,
        })
        .await;
        assert_eq!(code, rumqttc::ConnectReturnCode::Success);
        (client, rx, task)
    }

    async fn subscribe(client: &AsyncClient, rx: &mut Rx, filter: &str, qos: QoS) {
        client.subscribe(filter, qos).await.expect("subscribe");
        let codes = wait_for(rx, "SUBACK", |p| match p {
            Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
        assert_eq!(codes, [rumqttc::SubscribeReasonCode::Success(qos)]);
    }

    async fn next_publish(rx: &mut Rx) -> rumqttc::Publish {
        wait_for(rx, "PUBLISH", |p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    pub async fn scenario(kind: Kind) {
        let env = Env::start();
        let tag = format!("v311/{kind:?}");
        let (sub, mut sub_rx, _sub_task) = connect(options(&env, kind, "v311-sub")).await;
        subscribe(&sub, &mut sub_rx, &format!("{tag}/#"), QoS::ExactlyOnce).await;
        let (publisher, _pub_rx, _pub_task) = connect(options(&env, kind, "v311-pub")).await;

        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let topic = format!("{tag}/q{}", qos as u8);
            publisher
                .publish(&topic, qos, false, format!("payload {qos:?}"))
                .await
                .expect("publish");
            let got = next_publish(&mut sub_rx).await;
            assert_eq!(got.topic, topic);
            assert_eq!(got.payload, format!("payload {qos:?}").as_bytes());
            assert_eq!(got.qos, qos);
            assert!(!got.retain);
        }

        // Retained: a later subscriber gets it, marked as retained.
        let retained = format!("{tag}/retained");
        publisher
            .publish(&retained, QoS::AtLeastOnce, true, "kept")
            .await
            .expect("publish retained");
        assert_eq!(next_publish(&mut sub_rx).await.topic, retained);
        let (late, mut late_rx, _late_task) = connect(options(&env, kind, "v311-late")).await;
        subscribe(&late, &mut late_rx, &retained, QoS::AtLeastOnce).await;
        let got = next_publish(&mut late_rx).await;
        assert_eq!(got.topic, retained);
        assert_eq!(got.payload, "kept".as_bytes());
        assert!(
            got.retain,
            "a retained message sent on subscribe has RETAIN set"
        );

        // Will: the client vanishes without DISCONNECT.
        let will_topic = format!("{tag}/will");
        let mut options = options(&env, kind, "v311-will");
        options.set_last_will(LastWill::new(&will_topic, "gone", QoS::AtLeastOnce, false));
        let (_client, _rx, task) = connect(options).await;
        task.abort();
        let _ = task.await;
        let got = next_publish(&mut sub_rx).await;
        assert_eq!(got.topic, will_topic);
        assert_eq!(got.payload, "gone".as_bytes());
        assert_eq!(got.qos, QoS::AtLeastOnce);

        env.stop().await;
    }
}

mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{
        ConnectReturnCode, LastWill, Packet, Publish, SubscribeReasonCode,
    };
    use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

    type Rx = mpsc::UnboundedReceiver<Result<Packet, String>>;

    fn drive(mut eventloop: EventLoop) -> (Rx, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        (rx, task)
    }

    fn options(env: &Env, kind: Kind, id: &str) -> MqttOptions {
        let (host, port, transport) = env.endpoint(kind);
        let mut options = MqttOptions::new(id, host, port);
        options.set_transport(transport);
        options
    }

    async fn connect(options: MqttOptions) -> (AsyncClient, Rx, JoinHandle<()>) {
        let (client, eventloop) = AsyncClient::new(options, 16);
        let (mut rx, task) = drive(eventloop);
        let code = wait_for(&mut rx, "CONNACK", |p| match p {
            Packet::ConnAck(c) => Some(c.code),
            _ => None,
        })
        .await;
        assert_eq!(code, ConnectReturnCode::Success);
        (client, rx, task)
    }

    async fn subscribe(client: &AsyncClient, rx: &mut Rx, filter: &str, qos: QoS) {
        client.subscribe(filter, qos).await.expect("subscribe");
        let codes = wait_for(rx, "SUBACK", |p| match p {
            Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
        assert_eq!(codes, [SubscribeReasonCode::Success(qos)]);
    }

    async fn next_publish(rx: &mut Rx) -> Publish {
        wait_for(rx, "PUBLISH", |p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    pub async fn scenario(kind: Kind) {
        let env = Env::start();
        let tag = format!("v5/{kind:?}");
        let (sub, mut sub_rx, _sub_task) = connect(options(&env, kind, "v5-sub")).await;
        subscribe(&sub, &mut sub_rx, &format!("{tag}/#"), QoS::ExactlyOnce).await;
        let (publisher, _pub_rx, _pub_task) = connect(options(&env, kind, "v5-pub")).await;

        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let topic = format!("{tag}/q{}", qos as u8);
            publisher
                .publish(&topic, qos, false, format!("payload {qos:?}"))
                .await
                .expect("publish");
            let got = next_publish(&mut sub_rx).await;
            assert_eq!(got.topic, topic.as_bytes());
            assert_eq!(got.payload, format!("payload {qos:?}").as_bytes());
            assert_eq!(got.qos, qos);
            assert!(!got.retain);
        }

        let retained = format!("{tag}/retained");
        publisher
            .publish(&retained, QoS::AtLeastOnce, true, "kept")
            .await
            .expect("publish retained");
        assert_eq!(next_publish(&mut sub_rx).await.topic, retained.as_bytes());
        let (late, mut late_rx, _late_task) = connect(options(&env, kind, "v5-late")).await;
        subscribe(&late, &mut late_rx, &retained, QoS::AtLeastOnce).await;
        let got = next_publish(&mut late_rx).await;
        assert_eq!(got.topic, retained.as_bytes());
        assert_eq!(got.payload, "kept".as_bytes());
        assert!(
            got.retain,
            "a retained message sent on subscribe has RETAIN set"
        );

        let will_topic = format!("{tag}/will");
        let mut options = options(&env, kind, "v5-will");
        options.set_last_will(LastWill::new(
            &will_topic,
            "gone",
            QoS::AtLeastOnce,
            false,
            None,
        ));
        let (_client, _rx, task) = connect(options).await;
        task.abort();
        let _ = task.await;
        let got = next_publish(&mut sub_rx).await;
        assert_eq!(got.topic, will_topic.as_bytes());
        assert_eq!(got.payload, "gone".as_bytes());
        assert_eq!(got.qos, QoS::AtLeastOnce);

        env.stop().await;
    }
}

#[tokio::test]
async fn v311_tcp() {
    v311::scenario(Kind::Tcp).await;
}

#[tokio::test]
async fn v311_tls() {
    v311::scenario(Kind::Tls).await;
}

#[tokio::test]
async fn v311_ws() {
    v311::scenario(Kind::Ws).await;
}

#[tokio::test]
async fn v311_wss() {
    v311::scenario(Kind::Wss).await;
}

#[tokio::test]
async fn v5_tcp() {
    v5::scenario(Kind::Tcp).await;
}

#[tokio::test]
async fn v5_tls() {
    v5::scenario(Kind::Tls).await;
}

#[tokio::test]
async fn v5_ws() {
    v5::scenario(Kind::Ws).await;
}

#[tokio::test]
async fn v5_wss() {
    v5::scenario(Kind::Wss).await;
}

/// The TLS tests above prove something only if the client really checks
/// the certificate: with another CA it must refuse the broker.
#[tokio::test]
async fn tls_with_an_untrusted_certificate_fails() {
    let env = Env::start();
    let other = tempfile::tempdir().expect("temp dir");
    let untrusted = TestCert::new(other.path()).cert_pem;
    for kind in [Kind::Tls, Kind::Wss] {
        let (host, port, _) = env.endpoint(kind);
        let tls = TlsConfiguration::Simple {
            ca: untrusted.clone().into_bytes(),
            alpn: None,
            client_auth: None,
        };
        let mut options = rumqttc::MqttOptions::new("untrusted", host, port);
        options.set_transport(match kind {
            Kind::Tls => Transport::Tls(tls),
            _ => Transport::Wss(tls),
        });
        let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
        let result = tokio::time::timeout(WAIT, eventloop.poll())
            .await
            .expect("the handshake ends in time");
        let e = result.expect_err("an untrusted certificate must be refused");
        assert!(
            e.to_string().contains("certificate") || e.to_string().contains("Tls"),
            "{kind:?}: {e}"
        );
    }
    env.stop().await;
}
