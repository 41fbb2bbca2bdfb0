//! Reason strings (MQTT 5): a short explanation with each failure, left out
//! where the client asked for none (Request Problem Information 0) and
//! where it would make a packet larger than the client accepts.

use super::{Broker, CloseReason, ConnId};
use crate::MqttStr;
use crate::codec::{AckProperties, Packet, ReasonCode};
use alloc::format;

/// What a failure reason code means here, for the Reason String property.
pub(super) fn text(code: ReasonCode) -> &'static str {
    match code {
        ReasonCode::UnspecifiedError => "refused",
        ReasonCode::MalformedPacket => "malformed packet",
        ReasonCode::ProtocolError => "protocol error",
        ReasonCode::ImplementationSpecificError => "not supported by this server",
        ReasonCode::UnsupportedProtocolVersion => "unsupported protocol version",
        ReasonCode::ClientIdentifierNotValid => "client identifier not accepted",
        ReasonCode::BadUserNameOrPassword => "bad user name or password",
        ReasonCode::NotAuthorized => "not authorized",
        ReasonCode::ServerUnavailable => "server unavailable",
        ReasonCode::ServerBusy => "server busy: too many connections",
        ReasonCode::BadAuthenticationMethod => "authentication method not supported",
        ReasonCode::KeepAliveTimeout => "nothing received for 1.5 times the keep alive",
        ReasonCode::SessionTakenOver => "another connection took over the session",
        ReasonCode::ServerShuttingDown => "server shutting down",
        ReasonCode::TopicFilterInvalid => "topic filter not accepted",
        ReasonCode::TopicNameInvalid => "topic name not accepted",
        ReasonCode::PacketIdentifierNotFound => "packet identifier not in use",
        ReasonCode::ReceiveMaximumExceeded => {
            "more QoS 2 publishes unacknowledged than Receive Maximum"
        }
        ReasonCode::TopicAliasInvalid => "topic alias 0 or above Topic Alias Maximum",
        ReasonCode::PacketTooLarge => "packet larger than Maximum Packet Size",
        ReasonCode::QuotaExceeded => "quota exceeded",
        ReasonCode::PayloadFormatInvalid => {
            "payload is not UTF-8 as its Payload Format Indicator says"
        }
        ReasonCode::RetainNotSupported => "retained messages not supported",
        ReasonCode::QoSNotSupported => "QoS above Maximum QoS",
        ReasonCode::UseAnotherServer => "use another server",
        ReasonCode::ServerMoved => "server moved",
        ReasonCode::SharedSubscriptionsNotSupported => "shared subscriptions not supported",
        ReasonCode::SubscriptionIdentifiersNotSupported => "subscription identifiers not supported",
        ReasonCode::WildcardSubscriptionsNotSupported => "wildcard subscriptions not supported",
        _ => "failed",
    }
}

impl Broker {
    /// Properties for a PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK or UNSUBACK
    /// reporting `code`: a reason string for a failure, unless the client
    /// refused problem information [MQTT-3.1.2-29].
    pub(super) fn ack_properties(&self, conn: ConnId, code: Option<ReasonCode>) -> AckProperties {
        let wanted = self.conns.get(&conn).is_some_and(|c| c.problem_info);
        AckProperties {
            reason_string: code
                .filter(|c| wanted && c.is_error())
                .map(|c| MqttStr::from_static(text(c))),
            ..AckProperties::default()
        }
    }

    /// The Reason String of the DISCONNECT that closes a connection for
    /// `reason`: `detail` if given, else what the reason says. DISCONNECT may
    /// carry one whatever Request Problem Information said.
    pub(super) fn disconnect_text(reason: CloseReason, detail: Option<&'static str>) -> MqttStr {
        if let Some(detail) = detail {
            return MqttStr::from_static(detail);
        }
        let code = match reason {
            // The decoder says exactly what was wrong.
            CloseReason::Decode(e) => {
                return MqttStr::copy_from_str(&format!("{e}"))
                    .unwrap_or_else(|_| MqttStr::from_static(text(e.reason_code())));
            }
            CloseReason::Protocol(code) => code,
            // Its DISCONNECT says 0x89 Server busy, whose usual text would
            // mislead.
            CloseReason::AuthorizeTimeout => {
                return MqttStr::from_static("no authorization decision in time");
            }
            CloseReason::KeepAliveTimeout => ReasonCode::KeepAliveTimeout,
            // Its DISCONNECT says 0x8D Keep alive timeout, the closest code.
            CloseReason::PacketTimeout => {
                return MqttStr::from_static("a packet was started but not finished in time");
            }
            CloseReason::SessionTakenOver => ReasonCode::SessionTakenOver,
            CloseReason::ServerShutdown => ReasonCode::ServerShuttingDown,
            CloseReason::StoreFailed => {
                return MqttStr::from_static(
                    "the broker could not store a message or subscription",
                );
            }
            _ => ReasonCode::UnspecifiedError,
        };
        MqttStr::from_static(text(code))
    }
}

/// Removes what a server may leave out to fit a client's Maximum Packet
/// Size: reason strings and user properties (MQTT 5 section 3.1.2.11.4).
pub(super) fn strip(packet: &mut Packet) {
    match packet {
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            r.properties.reason_string = None;
            r.properties.user_properties.clear();
        }
        Packet::SubAck(a) => {
            a.properties.reason_string = None;
            a.properties.user_properties.clear();
        }
        Packet::UnsubAck(a) => {
            a.properties.reason_string = None;
            a.properties.user_properties.clear();
        }
        Packet::ConnAck(a) => {
            a.properties.reason_string = None;
            a.properties.user_properties.clear();
        }
        Packet::Disconnect(d) => {
            d.properties.reason_string = None;
            d.properties.user_properties.clear();
        }
        Packet::Auth(a) => {
            a.properties.reason_string = None;
            a.properties.user_properties.clear();
        }
        _ => {}
    }
}
