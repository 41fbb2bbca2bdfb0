//! MQTT 5 reason codes (section 2.4), and their MQTT 3 equivalents.

use super::PacketType;

/// An MQTT 5 reason code.
///
/// `0x00` means Success, Normal disconnection or Granted QoS 0 depending on
/// the packet; it is [`ReasonCode::Success`] here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
#[allow(missing_docs)] // each name is the specification's
pub enum ReasonCode {
    Success = 0x00,
    GrantedQoS1 = 0x01,
    GrantedQoS2 = 0x02,
    DisconnectWithWillMessage = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8A,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9A,
    QoSNotSupported = 0x9B,
    UseAnotherServer = 0x9C,
    ServerMoved = 0x9D,
    SharedSubscriptionsNotSupported = 0x9E,
    ConnectionRateExceeded = 0x9F,
    MaximumConnectTime = 0xA0,
    SubscriptionIdentifiersNotSupported = 0xA1,
    WildcardSubscriptionsNotSupported = 0xA2,
}

use ReasonCode::*;

const ALL: [ReasonCode; 43] = [
    Success,
    GrantedQoS1,
    GrantedQoS2,
    DisconnectWithWillMessage,
    NoMatchingSubscribers,
    NoSubscriptionExisted,
    ContinueAuthentication,
    ReAuthenticate,
    UnspecifiedError,
    MalformedPacket,
    ProtocolError,
    ImplementationSpecificError,
    UnsupportedProtocolVersion,
    ClientIdentifierNotValid,
    BadUserNameOrPassword,
    NotAuthorized,
    ServerUnavailable,
    ServerBusy,
    Banned,
    ServerShuttingDown,
    BadAuthenticationMethod,
    KeepAliveTimeout,
    SessionTakenOver,
    TopicFilterInvalid,
    TopicNameInvalid,
    PacketIdentifierInUse,
    PacketIdentifierNotFound,
    ReceiveMaximumExceeded,
    TopicAliasInvalid,
    PacketTooLarge,
    MessageRateTooHigh,
    QuotaExceeded,
    AdministrativeAction,
    PayloadFormatInvalid,
    RetainNotSupported,
    QoSNotSupported,
    UseAnotherServer,
    ServerMoved,
    SharedSubscriptionsNotSupported,
    ConnectionRateExceeded,
    MaximumConnectTime,
    SubscriptionIdentifiersNotSupported,
    WildcardSubscriptionsNotSupported,
];

impl ReasonCode {
    /// The reason code with this value, if MQTT 5 defines one.
    pub fn from_u8(code: u8) -> Option<Self> {
        ALL.iter().copied().find(|c| *c as u8 == code)
    }

    /// Whether this is a failure (0x80 and above).
    pub fn is_error(self) -> bool {
        self as u8 >= 0x80
    }

    /// Whether the specification allows this code in `packet` (the tables of
    /// sections 3.2.2.2, 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1, 3.9.3, 3.11.3,
    /// 3.14.2.1 and 3.15.2.1).
    pub fn allowed_in(self, packet: PacketType) -> bool {
        match packet {
            PacketType::ConnAck => matches!(
                self,
                Success
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | UnsupportedProtocolVersion
                    | ClientIdentifierNotValid
                    | BadUserNameOrPassword
                    | NotAuthorized
                    | ServerUnavailable
                    | ServerBusy
                    | Banned
                    | BadAuthenticationMethod
                    | TopicNameInvalid
                    | PacketTooLarge
                    | QuotaExceeded
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QoSNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | ConnectionRateExceeded
            ),
            PacketType::PubAck | PacketType::PubRec => matches!(
                self,
                Success
                    | NoMatchingSubscribers
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicNameInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | PayloadFormatInvalid
            ),
            PacketType::PubRel | PacketType::PubComp => {
                matches!(self, Success | PacketIdentifierNotFound)
            }
            PacketType::SubAck => matches!(
                self,
                Success
                    | GrantedQoS1
                    | GrantedQoS2
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | SharedSubscriptionsNotSupported
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            PacketType::UnsubAck => matches!(
                self,
                Success
                    | NoSubscriptionExisted
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
            ),
            PacketType::Disconnect => !matches!(
                self,
                GrantedQoS1
                    | GrantedQoS2
                    | NoMatchingSubscribers
                    | NoSubscriptionExisted
                    | ContinueAuthentication
                    | ReAuthenticate
                    | UnsupportedProtocolVersion
                    | ClientIdentifierNotValid
                    | BadUserNameOrPassword
                    | ServerUnavailable
                    | Banned
                    | BadAuthenticationMethod
                    | PacketIdentifierInUse
                    | PacketIdentifierNotFound
            ),
            PacketType::Auth => matches!(self, Success | ContinueAuthentication | ReAuthenticate),
            _ => false,
        }
    }

    /// The specification's name of the code, in lower case words (for
    /// logs: `Display` adds the value).
    pub fn name(self) -> &'static str {
        match self {
            Success => "success",
            GrantedQoS1 => "granted QoS 1",
            GrantedQoS2 => "granted QoS 2",
            DisconnectWithWillMessage => "disconnect with will message",
            NoMatchingSubscribers => "no matching subscribers",
            NoSubscriptionExisted => "no subscription existed",
            ContinueAuthentication => "continue authentication",
            ReAuthenticate => "re-authenticate",
            UnspecifiedError => "unspecified error",
            MalformedPacket => "malformed packet",
            ProtocolError => "protocol error",
            ImplementationSpecificError => "implementation specific error",
            UnsupportedProtocolVersion => "unsupported protocol version",
            ClientIdentifierNotValid => "client identifier not valid",
            BadUserNameOrPassword => "bad user name or password",
            NotAuthorized => "not authorized",
            ServerUnavailable => "server unavailable",
            ServerBusy => "server busy",
            Banned => "banned",
            ServerShuttingDown => "server shutting down",
            BadAuthenticationMethod => "bad authentication method",
            KeepAliveTimeout => "keep alive timeout",
            SessionTakenOver => "session taken over",
            TopicFilterInvalid => "topic filter invalid",
            TopicNameInvalid => "topic name invalid",
            PacketIdentifierInUse => "packet identifier in use",
            PacketIdentifierNotFound => "packet identifier not found",
            ReceiveMaximumExceeded => "receive maximum exceeded",
            TopicAliasInvalid => "topic alias invalid",
            PacketTooLarge => "packet too large",
            MessageRateTooHigh => "message rate too high",
            QuotaExceeded => "quota exceeded",
            AdministrativeAction => "administrative action",
            PayloadFormatInvalid => "payload format invalid",
            RetainNotSupported => "retain not supported",
            QoSNotSupported => "QoS not supported",
            UseAnotherServer => "use another server",
            ServerMoved => "server moved",
            SharedSubscriptionsNotSupported => "shared subscriptions not supported",
            ConnectionRateExceeded => "connection rate exceeded",
            MaximumConnectTime => "maximum connect time",
            SubscriptionIdentifiersNotSupported => "subscription identifiers not supported",
            WildcardSubscriptionsNotSupported => "wildcard subscriptions not supported",
        }
    }

    /// The MQTT 3.1/3.1.1 CONNACK return code closest to this reason
    /// (section 3.2.2.3 of 3.1.1); codes without an equivalent become
    /// 0x03 Server unavailable.
    pub fn to_v3_connack(self) -> u8 {
        match self {
            Success => 0x00,
            UnsupportedProtocolVersion => 0x01,
            ClientIdentifierNotValid => 0x02,
            BadUserNameOrPassword => 0x04,
            NotAuthorized | Banned | BadAuthenticationMethod => 0x05,
            _ => 0x03,
        }
    }

    /// The reason an MQTT 3 CONNACK return code stands for.
    pub fn from_v3_connack(code: u8) -> Option<Self> {
        Some(match code {
            0x00 => Success,
            0x01 => UnsupportedProtocolVersion,
            0x02 => ClientIdentifierNotValid,
            0x03 => ServerUnavailable,
            0x04 => BadUserNameOrPassword,
            0x05 => NotAuthorized,
            _ => return None,
        })
    }
}

/// The name and the value, as `not authorized (0x87)`.
impl core::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} (0x{:02X})", self.name(), *self as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_value() {
        for code in ALL {
            assert_eq!(ReasonCode::from_u8(code as u8), Some(code));
        }
        assert_eq!(ReasonCode::from_u8(0x03), None);
        assert_eq!(ReasonCode::from_u8(0xFF), None);
    }
}
