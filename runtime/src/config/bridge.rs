//! `[[bridge]]` tables: connections from this broker to other brokers, with
//! Mosquitto's topic rules (`topic pattern direction qos local_prefix
//! remote_prefix`).

use super::{ConfigError, ranged};
use roost_core::topic::TopicFilter;
use serde::Deserialize;
use std::path::PathBuf;

/// The MQTT version a bridge speaks to its remote broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeProtocol {
    /// MQTT 3.1.1 (`"3.1.1"`).
    V3_1_1,
    /// MQTT 5.0 (`"5"`).
    V5,
}

/// Which way a topic rule forwards messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Local messages go to the remote broker.
    Out,
    /// Remote messages come to this broker.
    In,
    /// Both.
    Both,
}

impl Direction {
    /// Forwards local messages out.
    pub fn is_out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    /// Brings remote messages in.
    pub fn is_in(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// One `[[bridge.topic]]` rule: `local_prefix + pattern` here is
/// `remote_prefix + pattern` there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    /// The filter, without prefixes (`#` if empty in the file, as in
    /// Mosquitto).
    pub pattern: String,
    /// Which way.
    pub direction: Direction,
    /// The QoS of the subscriptions the rule makes (the highest forwarded).
    pub qos: u8,
    /// Prepended to the pattern on this broker.
    pub local_prefix: String,
    /// Prepended to the pattern on the remote broker.
    pub remote_prefix: String,
}

impl TopicRule {
    /// The filter on this broker.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The filter on the remote broker.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }
}

/// TLS to the remote broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeTls {
    /// CA certificates (PEM) that vouch for the remote: a private CA, or
    /// the system's bundle (`/etc/ssl/certs/ca-certificates.crt`) for a
    /// public broker. Required, as Mosquitto's `bridge_cafile` is.
    pub ca: PathBuf,
    /// A client certificate chain (PEM), with `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// The server name to verify (and send as SNI); the address's host
    /// when absent.
    pub sni: Option<String>,
}

/// One `[[bridge]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    /// Its name: in logs, and in `$SYS/broker/connection/<name>/state`.
    pub name: String,
    /// `host:port` of the remote broker; more than one is fail-over,
    /// tried in turn.
    pub addresses: Vec<String>,
    /// MQTT version to the remote.
    pub protocol_version: BridgeProtocol,
    /// The client identifier on the remote.
    pub client_id: String,
    /// Start a new session on every connection (default false: the remote
    /// keeps the session, so in-flight messages survive a reconnect).
    pub clean_session: bool,
    /// MQTT 5 session expiry interval, seconds.
    pub session_expiry: u32,
    /// Keep-alive, seconds.
    pub keep_alive: u16,
    /// User name on the remote.
    pub username: Option<String>,
    /// Password on the remote.
    pub password: Option<String>,
    /// TLS, when `tls = true`.
    pub tls: Option<BridgeTls>,
    /// The user name the bridge has on this broker, for ACLs: what it may
    /// publish (`in` rules) and read (`out` rules). Anonymous when absent.
    pub local_username: Option<String>,
    /// Outgoing QoS 1/2 messages in flight at once.
    pub max_inflight: u16,
    /// Outgoing messages the bridge's client holds beyond the in-flight
    /// window (while the remote is down); beyond it they are dropped and
    /// counted. The bridge's session on this broker hands it at most
    /// `[limits] max_inflight` unacknowledged messages and keeps the rest
    /// itself (in the store, with persistence), so this bound only matters
    /// when set lower than that.
    pub max_queued_messages: usize,
    /// Outgoing payload and topic bytes queued.
    pub max_queued_bytes: usize,
    /// The first and the longest pause between connection attempts (the
    /// pause doubles in between, with jitter), milliseconds.
    pub reconnect_min_ms: u64,
    /// See `reconnect_min_ms`.
    pub reconnect_max_ms: u64,
    /// The topic rules, at least one.
    pub topics: Vec<TopicRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBridge {
    name: String,
    address: Option<String>,
    addresses: Option<Vec<String>>,
    protocol_version: Option<String>,
    client_id: Option<String>,
    clean_session: Option<bool>,
    session_expiry: Option<i64>,
    keep_alive: Option<i64>,
    username: Option<String>,
    password: Option<String>,
    tls: Option<bool>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    sni: Option<String>,
    local_username: Option<String>,
    max_inflight: Option<i64>,
    max_queued_messages: Option<i64>,
    max_queued_bytes: Option<i64>,
    reconnect_min_ms: Option<i64>,
    reconnect_max_ms: Option<i64>,
    #[serde(default)]
    topic: Vec<RawTopic>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopic {
    pattern: Option<String>,
    direction: Option<Direction>,
    qos: Option<i64>,
    local_prefix: Option<String>,
    remote_prefix: Option<String>,
}

fn invalid(key: String, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

pub(super) fn bridges_from_raw(raw: Vec<RawBridge>) -> Result<Vec<Bridge>, ConfigError> {
    let mut bridges: Vec<Bridge> = Vec::with_capacity(raw.len());
    for (i, b) in raw.into_iter().enumerate() {
        let bridge = bridge_from_raw(i, b)?;
        if bridges.iter().any(|o| o.name == bridge.name) {
            return Err(invalid(
                format!("bridge[{i}].name"),
                format!("{:?} is the name of an earlier bridge", bridge.name),
            ));
        }
        bridges.push(bridge);
    }
    Ok(bridges)
}

fn bridge_from_raw(i: usize, b: RawBridge) -> Result<Bridge, ConfigError> {
    let key = |k: &str| format!("bridge[{i}].{k}");
    if b.name.is_empty() || b.name.contains(['/', '+', '#']) || b.name.chars().any(char::is_control)
    {
        return Err(invalid(
            key("name"),
            "a bridge name is a non-empty topic level (no '/', '+' or '#')",
        ));
    }
    let addresses = match (b.address, b.addresses) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                key("addresses"),
                "give address or addresses, not both",
            ));
        }
        (Some(a), None) => vec![a],
        (None, Some(list)) => list,
        (None, None) => {
            return Err(ConfigError::Required {
                key: key("address"),
                because: "for a bridge".into(),
            });
        }
    };
    if addresses.is_empty() {
        return Err(invalid(key("addresses"), "at least one host:port"));
    }
    for a in &addresses {
        let port = a.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        if !matches!(port, Some(Ok(p)) if p > 0) {
            return Err(invalid(
                key("address"),
                format!("{a:?} is not host:port such as \"broker.example.com:1883\""),
            ));
        }
    }
    let protocol_version = match b.protocol_version.as_deref() {
        None | Some("5") | Some("5.0") => BridgeProtocol::V5,
        Some("3.1.1") => BridgeProtocol::V3_1_1,
        Some(other) => {
            return Err(invalid(
                key("protocol_version"),
                format!("{other:?}: \"3.1.1\" or \"5\""),
            ));
        }
    };
    let client_id = b.client_id.unwrap_or_else(|| format!("roost-{}", b.name));
    if client_id.is_empty() || client_id.len() > 65_535 {
        return Err(invalid(key("client_id"), "1 to 65535 bytes"));
    }
    let tls = if b.tls.unwrap_or(false) {
        if b.cert.is_some() != b.key.is_some() {
            return Err(ConfigError::Required {
                key: key(if b.cert.is_some() { "key" } else { "cert" }),
                because: "a client certificate needs both cert and key".into(),
            });
        }
        let Some(ca) = b.ca else {
            return Err(ConfigError::Required {
                key: key("ca"),
                because: "tls = true verifies the remote against these CAs \
                          (/etc/ssl/certs/ca-certificates.crt for a public broker)"
                    .into(),
            });
        };
        Some(BridgeTls {
            ca,
            cert: b.cert,
            key: b.key,
            sni: b.sni,
        })
    } else {
        for (k, set) in [
            ("ca", b.ca.is_some()),
            ("cert", b.cert.is_some()),
            ("key", b.key.is_some()),
            ("sni", b.sni.is_some()),
        ] {
            if set {
                return Err(invalid(key(k), "needs tls = true"));
            }
        }
        None
    };
    if b.password.is_some() && b.username.is_none() {
        return Err(ConfigError::Required {
            key: key("username"),
            because: "a password needs a user name".into(),
        });
    }
    let reconnect_min_ms = ranged(
        b.reconnect_min_ms,
        &key("reconnect_min_ms"),
        10,
        3_600_000,
        1_000,
    )?;
    let reconnect_max_ms = ranged(
        b.reconnect_max_ms,
        &key("reconnect_max_ms"),
        10,
        3_600_000,
        60_000u64.max(reconnect_min_ms),
    )?;
    if reconnect_max_ms < reconnect_min_ms {
        return Err(invalid(
            key("reconnect_max_ms"),
            "must not be below reconnect_min_ms",
        ));
    }
    if b.topic.is_empty() {
        return Err(ConfigError::Required {
            key: key("topic"),
            because: "a bridge forwards at least one [[bridge.topic]]".into(),
        });
    }
    let mut topics = Vec::with_capacity(b.topic.len());
    for (j, t) in b.topic.into_iter().enumerate() {
        let tkey = |k: &str| format!("bridge[{i}].topic[{j}].{k}");
        let pattern = t
            .pattern
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "#".into());
        let rule = TopicRule {
            pattern,
            direction: t.direction.unwrap_or(Direction::Out),
            qos: ranged(t.qos, &tkey("qos"), 0, 2, 0)?,
            local_prefix: t.local_prefix.unwrap_or_default(),
            remote_prefix: t.remote_prefix.unwrap_or_default(),
        };
        for (k, prefix) in [
            ("local_prefix", &rule.local_prefix),
            ("remote_prefix", &rule.remote_prefix),
        ] {
            if prefix.contains(['+', '#']) {
                return Err(invalid(tkey(k), "a prefix has no wildcards"));
            }
        }
        for (k, filter) in [
            ("pattern", rule.local_filter()),
            ("remote_prefix", rule.remote_filter()),
        ] {
            if let Err(e) = TopicFilter::copy_from_str(&filter) {
                return Err(invalid(
                    tkey(k),
                    format!("{filter:?} is not a topic filter: {e}"),
                ));
            }
        }
        topics.push(rule);
    }
    Ok(Bridge {
        name: b.name,
        addresses,
        protocol_version,
        client_id,
        clean_session: b.clean_session.unwrap_or(false),
        session_expiry: ranged(
            b.session_expiry,
            &key("session_expiry"),
            0,
            i64::from(u32::MAX),
            3600,
        )?,
        keep_alive: ranged(b.keep_alive, &key("keep_alive"), 0, 65_535, 60)?,
        username: b.username,
        password: b.password,
        tls,
        local_username: b.local_username,
        max_inflight: ranged(b.max_inflight, &key("max_inflight"), 1, 65_535, 20)?,
        max_queued_messages: ranged(
            b.max_queued_messages,
            &key("max_queued_messages"),
            1,
            10_000_000,
            10_000,
        )?,
        max_queued_bytes: ranged(
            b.max_queued_bytes,
            &key("max_queued_bytes"),
            1024,
            i64::from(u32::MAX),
            64 * 1024 * 1024,
        )?,
        reconnect_min_ms,
        reconnect_max_ms,
        topics,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn err(text: &str) -> String {
        Config::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn a_full_bridge_table_parses() {
        let c = Config::from_toml_str(
            r#"
            [[bridge]]
            name = "cloud"
            addresses = ["a.example.com:8883", "b.example.com:8883"]
            protocol_version = "3.1.1"
            client_id = "edge-7"
            clean_session = true
            keep_alive = 30
            username = "edge"
            password = "secret"
            tls = true
            ca = "/etc/ca.pem"
            sni = "mqtt.example.com"
            local_username = "bridge"
            [[bridge.topic]]
            pattern = "sensors/#"
            direction = "out"
            qos = 1
            remote_prefix = "site7/"
            [[bridge.topic]]
            pattern = "cmd/#"
            direction = "in"
            qos = 2
            local_prefix = "remote/"
            "#,
        )
        .unwrap();
        let b = &c.bridges[0];
        assert_eq!(b.name, "cloud");
        assert_eq!(b.addresses.len(), 2);
        assert_eq!(b.protocol_version, BridgeProtocol::V3_1_1);
        assert_eq!(b.keep_alive, 30);
        assert!(b.clean_session);
        assert_eq!(
            b.tls.as_ref().unwrap().sni.as_deref(),
            Some("mqtt.example.com")
        );
        assert_eq!(b.topics[0].remote_filter(), "site7/sensors/#");
        assert_eq!(b.topics[1].local_filter(), "remote/cmd/#");
        assert_eq!(b.topics[1].direction, Direction::In);
        assert_eq!(b.topics[1].qos, 2);
    }

    #[test]
    fn defaults_are_mosquitto_like() {
        let c = Config::from_toml_str(
            "[[bridge]]\nname = \"b\"\naddress = \"127.0.0.1:1883\"\n[[bridge.topic]]\n",
        )
        .unwrap();
        let b = &c.bridges[0];
        assert_eq!(b.protocol_version, BridgeProtocol::V5);
        assert_eq!(b.client_id, "roost-b");
        assert!(!b.clean_session);
        assert_eq!(b.keep_alive, 60);
        assert_eq!(b.topics[0].pattern, "#");
        assert_eq!(b.topics[0].direction, Direction::Out);
        assert_eq!(b.topics[0].qos, 0);
    }

    #[test]
    fn errors_name_the_key() {
        let base = "[[bridge]]\nname = \"b\"\naddress = \"h:1883\"\n";
        for (extra, expected) in [
            ("[[bridge.topic]]\nqos = 3\n", "bridge[0].topic[0].qos"),
            (
                "[[bridge.topic]]\npattern = \"a/#/b\"\n",
                "bridge[0].topic[0].pattern",
            ),
            (
                "[[bridge.topic]]\nremote_prefix = \"x/+/\"\n",
                "bridge[0].topic[0].remote_prefix",
            ),
            (
                "protocol_version = \"4\"\n[[bridge.topic]]\n",
                "bridge[0].protocol_version",
            ),
            (
                "keep_alive = 70000\n[[bridge.topic]]\n",
                "bridge[0].keep_alive",
            ),
            ("ca = \"x\"\n[[bridge.topic]]\n", "bridge[0].ca"),
            ("tls = true\n[[bridge.topic]]\n", "bridge[0].ca"),
            (
                "tls = true\ncert = \"c\"\n[[bridge.topic]]\n",
                "bridge[0].key",
            ),
            ("password = \"p\"\n[[bridge.topic]]\n", "bridge[0].username"),
            ("", "bridge[0].topic"),
        ] {
            let e = err(&format!("{base}{extra}"));
            assert!(e.starts_with(expected), "{e:?} should name {expected}");
        }
        assert!(
            err("[[bridge]]\nname = \"b\"\n[[bridge.topic]]\n").starts_with("bridge[0].address")
        );
        assert!(
            err("[[bridge]]\nname = \"b\"\naddress = \"nohost\"\n[[bridge.topic]]\n")
                .starts_with("bridge[0].address")
        );
        assert!(
            err("[[bridge]]\nname = \"a/b\"\naddress = \"h:1\"\n[[bridge.topic]]\n")
                .starts_with("bridge[0].name")
        );
        let twice = format!("{base}[[bridge.topic]]\n{base}[[bridge.topic]]\n");
        assert!(err(&twice).starts_with("bridge[1].name"));
    }
}
