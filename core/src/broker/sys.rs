//! `$SYS` topics: periodic broker statistics (retained, like Mosquitto's)
//! and client presence (like Aedes': `$SYS/<id>/new/clients`).

use super::{Broker, Message, Timer};
use crate::MqttStr;
use crate::codec::{PublishProperties, QoS};
use crate::topic::TopicName;
use alloc::format;
use alloc::string::String;
use bytes::Bytes;

impl Broker {
    pub(super) fn sys_timer(&mut self) {
        let Some(interval) = self.config.sys_interval else {
            return;
        };
        self.publish_statistics();
        self.timers.insert((self.now + interval, Timer::Sys));
    }

    /// Publishes the `$SYS/broker/...` statistics now, as retained messages.
    pub fn publish_statistics(&mut self) {
        let uptime = self
            .now
            .saturating_duration_since(self.stats.started)
            .as_secs();
        let stats = self.stats;
        let subscriptions = self.subscription_count();
        let entries: [(&str, String); 11] = [
            ("version", String::from(self.config.version)),
            ("uptime", format!("{uptime} seconds")),
            ("clients/connected", format!("{}", self.connected)),
            ("clients/total", format!("{}", self.sessions.len())),
            ("messages/received", format!("{}", stats.messages_received)),
            ("messages/sent", format!("{}", stats.messages_sent)),
            ("messages/dropped", format!("{}", stats.dropped)),
            ("bytes/received", format!("{}", stats.bytes_received)),
            ("bytes/sent", format!("{}", stats.bytes_sent)),
            ("subscriptions/count", format!("{subscriptions}")),
            (
                "retained messages/count",
                format!("{}", self.retained.len()),
            ),
        ];
        for (name, value) in entries {
            self.publish_sys(
                &format!("$SYS/broker/{name}"),
                Bytes::from(value.into_bytes()),
                true,
            );
        }
    }

    /// `$SYS/<broker-id>/new/clients` or `.../disconnect/clients`, with the
    /// client identifier as payload.
    pub(super) fn presence(&mut self, kind: &str, client_id: &MqttStr) {
        if self.config.sys_interval.is_none() {
            return;
        }
        let topic = format!("$SYS/{}/{kind}/clients", self.config.broker_id);
        self.publish_sys(&topic, client_id.bytes().clone(), false);
    }

    fn publish_sys(&mut self, topic: &str, payload: Bytes, retain: bool) {
        // The broker id is configuration; a bad one only loses $SYS topics.
        let Ok(topic) = TopicName::copy_from_str(topic) else {
            return;
        };
        let message = Message {
            topic,
            payload,
            qos: QoS::AtMostOnce,
            retain,
            properties: PublishProperties::default(),
        };
        self.route_message(message, None);
    }
}
