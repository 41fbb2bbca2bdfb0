//! Embedding roost in a program: a broker on a free port whose logins come
//! from the program's own user table (checked asynchronously) and whose
//! topics are guarded by an [`AccessPolicy`]; the program publishes and
//! subscribes in-process while an MQTT client (rumqttc) talks to it over
//! TCP. Runs to the end by itself:
//!
//! ```text
//! cargo run -p roost-tokio --example embed
//! ```

use roost_core::broker::{
    AccessPolicy, AuthDecision, AuthRequest, ClientRef, PublishDecision, SubscribeDecision, Verdict,
};
use roost_core::codec::{QoS, ReasonCode};
use roost_core::topic::{TopicFilter, TopicName};
use roost_runtime::config::Config;
use roost_tokio::{Authenticator, Hooks};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::RwLock;

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

/// Checks user name and password against `users`, as a database lookup
/// would: asynchronously, away from the broker's event loop.
fn authenticator(users: Arc<RwLock<HashMap<String, String>>>) -> Authenticator {
    Arc::new(move |request: AuthRequest| {
        let users = users.clone();
        Box::pin(async move {
            let (Some(user), Some(password)) = (&request.username, &request.password) else {
                return AuthDecision::Reject(ReasonCode::NotAuthorized);
            };
            let table = users.read().await;
            match table.get(user.as_str()) {
                Some(expected) if expected.as_bytes() == password.as_ref() => AuthDecision::Accept,
                _ => AuthDecision::Reject(ReasonCode::BadUserNameOrPassword),
            }
        })
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let users = Arc::new(RwLock::new(HashMap::from([(
        "sensor1".to_owned(),
        "s3cret".to_owned(),
    )])));
    let config = Config::from_toml_str(
        "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\n[sys]\ninterval_secs = 0\n",
    )?;
    let server = roost_tokio::start(
        config,
        Hooks {
            authenticate: Some(authenticator(users.clone())),
            policy: Some(Box::new(DevicePolicy)),
            authorize: None,
        },
    )?;
    let addr = server.local_addrs()[0];
    println!("broker listening on {addr}");

    // The program listens to everything its devices report.
    let mut reports = server.subscribe("devices/#").await?;

    // A device connects over TCP with its credentials.
    let mut options = MqttOptions::new("sensor1", addr.ip().to_string(), addr.port());
    options.set_credentials("sensor1", "s3cret");
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .subscribe("public/#", rumqttc::QoS::AtLeastOnce)
        .await?;
    client
        .publish(
            "devices/sensor1/temp",
            rumqttc::QoS::AtLeastOnce,
            false,
            "21.5",
        )
        .await?;
    // Not its topic: the policy drops it.
    client
        .publish(
            "devices/sensor2/temp",
            rumqttc::QoS::AtLeastOnce,
            false,
            "spoofed",
        )
        .await?;
    let device = tokio::spawn(async move {
        let mut announcements = 0;
        while announcements < 1 {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    println!("device connected: {:?}", ack.code)
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    println!(
                        "device received {}: {}",
                        p.topic,
                        String::from_utf8_lossy(&p.payload)
                    );
                    announcements += 1;
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(eventloop)
    });

    let wait = Duration::from_secs(10);
    let report = tokio::time::timeout(wait, reports.recv())
        .await?
        .ok_or("broker stopped")?;
    println!(
        "program received {}: {}",
        report.topic.as_str(),
        String::from_utf8_lossy(&report.payload)
    );

    // The program announces something to every device.
    let reached = server
        .publish("public/announcement", "firmware 2.0 available", 1, false)
        .await?;
    println!("announcement reached {reached} subscription(s)");
    let eventloop = tokio::time::timeout(wait, device).await???;
    drop(eventloop);

    // A wrong password is refused, by the program's table.
    let mut options = MqttOptions::new("intruder", addr.ip().to_string(), addr.port());
    options.set_credentials("sensor1", "guess");
    let (_intruder, mut eventloop) = AsyncClient::new(options, 16);
    let refused = tokio::time::timeout(wait, eventloop.poll()).await?;
    println!("wrong password: {}", refused.err().ok_or("accepted!")?);

    server.shutdown().await;
    println!("broker stopped");
    Ok(())
}
