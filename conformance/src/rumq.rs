//! Thin wrappers over `rumqttc` for scenarios made of ordinary flows.
//!
//! A second, independent client implementation keeps the suite honest: a
//! behaviour that works with both our raw client and rumqttc is not an
//! artefact of either. The event loop is polled inside the scenario's own
//! future (never in a spawned task), so when a scenario ends or times out the
//! connection is dropped with it.

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::v5 as r5;
use tokio::time::{Instant, timeout_at};

use crate::client::REPLY_WAIT;
use crate::scenario::{Failure, Target};
use crate::transport::rumqttc_endpoint;

/// A message as either rumqttc flavour delivered it.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// Topic name.
    pub topic: String,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// Payload.
    pub payload: Vec<u8>,
    /// MQTT 5 publish properties (None for 3.1.1 or when absent).
    pub props: Option<r5::mqttbytes::v5::PublishProperties>,
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> r5::mqttbytes::QoS {
    match q {
        0 => r5::mqttbytes::QoS::AtMostOnce,
        1 => r5::mqttbytes::QoS::AtLeastOnce,
        _ => r5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// An MQTT 3.1.1 rumqttc connection.
pub struct Client311 {
    client: rumqttc::AsyncClient,
    events: rumqttc::EventLoop,
    inbox: VecDeque<Delivered>,
}

impl Client311 {
    /// Connects and returns the CONNACK's session-present flag.
    pub async fn connect(target: &Target, id: &str, clean: bool) -> Result<(Self, bool), Failure> {
        let (addr, port, transport) = rumqttc_endpoint(target);
        let mut opts = rumqttc::MqttOptions::new(id, addr, port);
        opts.set_transport(transport);
        opts.set_clean_session(clean);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, events) = rumqttc::AsyncClient::new(opts, 64);
        let mut me = Client311 {
            client,
            events,
            inbox: VecDeque::new(),
        };
        let present = me
            .poll_until(REPLY_WAIT, "CONNACK (rumqttc)", |p| match p {
                rumqttc::Packet::ConnAck(c) if c.code == rumqttc::ConnectReturnCode::Success => {
                    Some(Ok(c.session_present))
                }
                rumqttc::Packet::ConnAck(c) => Some(Err(format!("{:?}", c.code))),
                _ => None,
            })
            .await?
            .map_err(|code| Failure::new("CONNACK success", code))?;
        Ok((me, present))
    }

    async fn poll_until<T>(
        &mut self,
        within: Duration,
        what: &str,
        mut pick: impl FnMut(&rumqttc::Packet) -> Option<T>,
    ) -> Result<T, Failure> {
        let deadline = Instant::now() + within;
        loop {
            match timeout_at(deadline, self.events.poll()).await {
                Err(_) => return Err(Failure::new(what, "nothing (timed out)")),
                Ok(Err(e)) => return Err(Failure::new(what, format!("rumqttc error: {e}"))),
                Ok(Ok(rumqttc::Event::Incoming(p))) => {
                    if let Some(t) = pick(&p) {
                        return Ok(t);
                    }
                    if let rumqttc::Packet::Publish(p) = p {
                        self.inbox.push_back(Delivered {
                            topic: p.topic.clone(),
                            qos: p.qos as u8,
                            retain: p.retain,
                            payload: p.payload.to_vec(),
                            props: None,
                        });
                    }
                }
                Ok(Ok(rumqttc::Event::Outgoing(_))) => {}
            }
        }
    }

    /// Subscribes and returns the granted QoS (or 0x80).
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> Result<u8, Failure> {
        self.client
            .subscribe(filter, qos4(qos))
            .await
            .map_err(|e| Failure::new("rumqttc to queue SUBSCRIBE", e.to_string()))?;
        self.poll_until(REPLY_WAIT, &format!("SUBACK for {filter:?}"), |p| match p {
            rumqttc::Packet::SubAck(s) => Some(match s.return_codes.first() {
                Some(rumqttc::SubscribeReasonCode::Success(q)) => *q as u8,
                _ => 0x80,
            }),
            _ => None,
        })
        .await
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&mut self, filter: &str) -> Result<(), Failure> {
        self.client
            .unsubscribe(filter)
            .await
            .map_err(|e| Failure::new("rumqttc to queue UNSUBSCRIBE", e.to_string()))?;
        self.poll_until(REPLY_WAIT, "UNSUBACK", |p| {
            matches!(p, rumqttc::Packet::UnsubAck(_)).then_some(())
        })
        .await
    }

    /// Publishes and waits until the QoS flow completes (PUBACK/PUBCOMP), or
    /// until the packet is written for QoS 0.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: &[u8],
    ) -> Result<(), Failure> {
        self.client
            .publish(topic, qos4(qos), retain, payload.to_vec())
            .await
            .map_err(|e| Failure::new("rumqttc to queue PUBLISH", e.to_string()))?;
        let deadline = Instant::now() + REPLY_WAIT;
        loop {
            let what = format!("acknowledgement of QoS {qos} PUBLISH to {topic:?}");
            match timeout_at(deadline, self.events.poll()).await {
                Err(_) => return Err(Failure::new(what, "nothing (timed out)")),
                Ok(Err(e)) => return Err(Failure::new(what, format!("rumqttc error: {e}"))),
                Ok(Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(_)))) if qos == 0 => {
                    return Ok(());
                }
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) if qos == 1 => {
                    return Ok(());
                }
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubComp(_)))) if qos == 2 => {
                    return Ok(());
                }
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                    self.inbox.push_back(Delivered {
                        topic: p.topic.clone(),
                        qos: p.qos as u8,
                        retain: p.retain,
                        payload: p.payload.to_vec(),
                        props: None,
                    })
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next delivered message within `within`.
    pub async fn next(&mut self, within: Duration) -> Result<Delivered, Failure> {
        if let Some(d) = self.inbox.pop_front() {
            return Ok(d);
        }
        self.poll_until(within, "a PUBLISH (rumqttc)", |p| match p {
            rumqttc::Packet::Publish(p) => Some(Delivered {
                topic: p.topic.clone(),
                qos: p.qos as u8,
                retain: p.retain,
                payload: p.payload.to_vec(),
                props: None,
            }),
            _ => None,
        })
        .await
    }

    /// Every message delivered within `within`.
    pub async fn collect(&mut self, within: Duration) -> Vec<Delivered> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while let Ok(d) = self
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            out.push(d);
        }
        out
    }

    /// Sends DISCONNECT and drives the loop until it is written.
    pub async fn disconnect(mut self) -> Result<(), Failure> {
        self.client
            .disconnect()
            .await
            .map_err(|e| Failure::new("rumqttc to queue DISCONNECT", e.to_string()))?;
        let deadline = Instant::now() + REPLY_WAIT;
        loop {
            match timeout_at(deadline, self.events.poll()).await {
                Err(_) => return Err(Failure::new("DISCONNECT written", "timed out")),
                Ok(Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) => {
                    return Ok(());
                }
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// An MQTT 5 rumqttc connection.
pub struct Client5 {
    client: r5::AsyncClient,
    events: r5::EventLoop,
    inbox: VecDeque<Delivered>,
}

fn delivered5(p: &r5::mqttbytes::v5::Publish) -> Delivered {
    Delivered {
        topic: String::from_utf8_lossy(&p.topic).into_owned(),
        qos: p.qos as u8,
        retain: p.retain,
        payload: p.payload.to_vec(),
        props: p.properties.clone(),
    }
}

impl Client5 {
    /// Connects with clean start and no session expiry.
    pub async fn connect(target: &Target, id: &str) -> Result<Self, Failure> {
        let (addr, port, transport) = rumqttc_endpoint(target);
        let mut opts = r5::MqttOptions::new(id, addr, port);
        opts.set_transport(transport);
        opts.set_clean_start(true);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, events) = r5::AsyncClient::new(opts, 64);
        let mut me = Client5 {
            client,
            events,
            inbox: VecDeque::new(),
        };
        me.poll_until(REPLY_WAIT, "CONNACK (rumqttc v5)", |p| match p {
            r5::mqttbytes::v5::Packet::ConnAck(c) => Some(c.code),
            _ => None,
        })
        .await
        .and_then(|code| {
            if code == r5::mqttbytes::v5::ConnectReturnCode::Success {
                Ok(())
            } else {
                Err(Failure::new("CONNACK success", format!("{code:?}")))
            }
        })?;
        Ok(me)
    }

    async fn poll_until<T>(
        &mut self,
        within: Duration,
        what: &str,
        mut pick: impl FnMut(&r5::mqttbytes::v5::Packet) -> Option<T>,
    ) -> Result<T, Failure> {
        let deadline = Instant::now() + within;
        loop {
            match timeout_at(deadline, self.events.poll()).await {
                Err(_) => return Err(Failure::new(what, "nothing (timed out)")),
                Ok(Err(e)) => return Err(Failure::new(what, format!("rumqttc error: {e}"))),
                Ok(Ok(r5::Event::Incoming(p))) => {
                    if let Some(t) = pick(&p) {
                        return Ok(t);
                    }
                    if let r5::mqttbytes::v5::Packet::Publish(p) = &p {
                        self.inbox.push_back(delivered5(p));
                    }
                }
                Ok(Ok(r5::Event::Outgoing(_))) => {}
            }
        }
    }

    /// Subscribes and returns the reason code of the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> Result<u8, Failure> {
        self.client
            .subscribe(filter, qos5(qos))
            .await
            .map_err(|e| Failure::new("rumqttc to queue SUBSCRIBE", e.to_string()))?;
        self.poll_until(REPLY_WAIT, &format!("SUBACK for {filter:?}"), |p| match p {
            r5::mqttbytes::v5::Packet::SubAck(s) => Some(match s.return_codes.first() {
                Some(r5::mqttbytes::v5::SubscribeReasonCode::Success(q)) => *q as u8,
                _ => 0x80,
            }),
            _ => None,
        })
        .await
    }

    /// Publishes with properties and waits for the QoS flow to complete.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: u8,
        payload: &[u8],
        props: r5::mqttbytes::v5::PublishProperties,
    ) -> Result<(), Failure> {
        self.client
            .publish_with_properties(topic, qos5(qos), false, payload.to_vec(), props)
            .await
            .map_err(|e| Failure::new("rumqttc to queue PUBLISH", e.to_string()))?;
        let deadline = Instant::now() + REPLY_WAIT;
        use r5::mqttbytes::v5::Packet as P;
        loop {
            let what = format!("acknowledgement of QoS {qos} PUBLISH to {topic:?}");
            match timeout_at(deadline, self.events.poll()).await {
                Err(_) => return Err(Failure::new(what, "nothing (timed out)")),
                Ok(Err(e)) => return Err(Failure::new(what, format!("rumqttc error: {e}"))),
                Ok(Ok(r5::Event::Outgoing(rumqttc::Outgoing::Publish(_)))) if qos == 0 => {
                    return Ok(());
                }
                Ok(Ok(r5::Event::Incoming(P::PubAck(_)))) if qos == 1 => return Ok(()),
                Ok(Ok(r5::Event::Incoming(P::PubComp(_)))) if qos == 2 => return Ok(()),
                Ok(Ok(r5::Event::Incoming(P::Publish(p)))) => self.inbox.push_back(delivered5(&p)),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next delivered message within `within`.
    pub async fn next(&mut self, within: Duration) -> Result<Delivered, Failure> {
        if let Some(d) = self.inbox.pop_front() {
            return Ok(d);
        }
        self.poll_until(within, "a PUBLISH (rumqttc v5)", |p| match p {
            r5::mqttbytes::v5::Packet::Publish(p) => Some(delivered5(p)),
            _ => None,
        })
        .await
    }

    /// Collects up to `count` messages within `within`.
    pub async fn collect_n(&mut self, count: usize, within: Duration) -> Vec<Delivered> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < count {
            match self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Ok(d) => out.push(d),
                Err(_) => break,
            }
        }
        out
    }
}

/// A well-behaved pair of clients used after a bad-input scenario: a
/// subscriber connected *before* the misbehaving client, and a publisher
/// connected *after* it. A round trip between them shows the broker both kept
/// an existing connection and accepts new ones.
pub struct Health {
    target: Target,
    id: String,
    topic: String,
    sub: Client311,
}

impl Health {
    /// Connects the subscriber (MQTT 3.1.1 via rumqttc, whatever version the
    /// misbehaving client speaks: the broker must keep serving everyone).
    pub async fn start(target: &Target, id: &str, topic: &str) -> Result<Self, Failure> {
        let (mut sub, _) = Client311::connect(target, &format!("{id}s"), true)
            .await
            .map_err(|f| f.during("healthy subscriber before the bad input"))?;
        sub.subscribe(topic, 1).await?;
        Ok(Health {
            target: target.clone(),
            id: id.to_owned(),
            topic: topic.to_owned(),
            sub,
        })
    }

    /// A fresh publisher sends one QoS 1 message; the subscriber must get it.
    pub async fn check(mut self) -> Result<(), Failure> {
        let step = "broker still serving other clients after the bad input";
        let (mut publisher, _) = Client311::connect(&self.target, &format!("{}p", self.id), true)
            .await
            .map_err(|f| f.during(step))?;
        publisher
            .publish(&self.topic, 1, false, b"still alive")
            .await
            .map_err(|f| f.during(step))?;
        let got = self
            .sub
            .next(REPLY_WAIT)
            .await
            .map_err(|f| f.during(step))?;
        if got.payload != b"still alive" {
            return Err(Failure::new(
                format!("{step}: the health-check message"),
                format!("{:?}", String::from_utf8_lossy(&got.payload)),
            ));
        }
        publisher.disconnect().await.ok();
        self.sub.disconnect().await.ok();
        Ok(())
    }
}
