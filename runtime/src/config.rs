//! Broker configuration: one TOML file plus command-line flags that override it.
//!
//! Every key is documented in `runtime/roost.example.toml`, which a test
//! parses. The defaults follow Mosquitto 2.x: with no file and no flags, roost
//! listens with plain TCP on `127.0.0.1:1883` and allows anonymous clients,
//! so a fresh install is reachable only from the same machine. Listeners
//! written in a file default to `allow_anonymous = false`, as Mosquitto's do.
//! A listener bound to a non-loopback address accepts anonymous clients only
//! when `allow_anonymous = true` is written for it: moving the built-in
//! listener with `--bind 0.0.0.0` does not open it to anonymous clients from
//! the network, and [`Config::warnings`] says so, once per listener, with
//! how to allow them (Mosquitto 2's rule). [`Listener::allows_anonymous`] is
//! the answer the runtime uses.
//!
//! Flags win over the file: `--port`/`--bind` change the first listener (the
//! built-in one when the file has none), `--data-dir` sets
//! `persistence.path`, `--recover-truncate` sets `persistence.recovery`.
//!
//! Loading is two steps: serde reads the TOML into a loose shape (unknown
//! keys are errors), then [`Config`] is built from it with every range and
//! cross-field rule checked, each failure a [`ConfigError`] naming the key.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Deserialize;

mod bridge;
mod cluster;
mod reload;
pub use bridge::{Bridge, BridgeProtocol, BridgeTls, Direction, TopicRule};
pub use cluster::Cluster;

use roost_core::broker::Limits as EngineLimits;

/// Command-line flags (`roost --help`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Parser)]
#[command(name = "roost", version, about = "An MQTT broker")]
pub struct Cli {
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Port of the first listener (default 1883).
    #[arg(short, long, value_name = "N")]
    pub port: Option<u16>,
    /// Address of the first listener (default 127.0.0.1). On any other than
    /// a loopback address, anonymous clients are refused unless the
    /// --config file writes allow_anonymous = true for that listener.
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<IpAddr>,
    /// Keep sessions, queued and retained messages on disk in DIR, across
    /// restarts (sets persistence.path and persistence.store = "fjall").
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// If the store's journal is damaged, cut it at the damage and start
    /// with what precedes it, logging what was dropped, instead of refusing
    /// to start (sets persistence.recovery = "truncate").
    #[arg(long)]
    pub recover_truncate: bool,
    /// Write the broker's process id to FILE once its listeners are bound,
    /// and remove it at a clean exit (sets pid_file).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// More logging: -v for debug, -vv for trace. RUST_LOG, when set,
    /// takes over (e.g. RUST_LOG=info,roost_runtime=debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log lines as plain text (default) or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// A maintenance command instead of running the broker.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `TIMESTAMP LEVEL message key=value …`
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`).
    Json,
}

/// Maintenance subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Manage the password file.
    Passwd {
        /// What to do.
        #[command(subcommand)]
        action: PasswdCommand,
    },
    /// Maintain the persistent store.
    Store {
        /// What to do.
        #[command(subcommand)]
        action: StoreCommand,
    },
}

/// `roost store …`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum StoreCommand {
    /// Repair a store whose journal is damaged: cut the journal at the
    /// first damaged batch, keep what precedes it, and say what was
    /// dropped. Run it with the broker stopped.
    Repair {
        /// The store's directory (default: --data-dir, or the
        /// configuration's persistence.path).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

/// `roost passwd …`, carried out by [`crate::passwd::run_command`].
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum PasswdCommand {
    /// Add a user, or change their password.
    Add {
        /// User name: not empty, no ':' or control characters, not starting
        /// with '#', no leading or trailing spaces.
        user: String,
        /// The password (visible in shell history and `ps`: prefer the
        /// prompt or --password-stdin). Must not be empty.
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from the first line of standard input (also
        /// done without this flag when standard input is not a terminal).
        #[arg(long)]
        password_stdin: bool,
        /// Password file (default: the configured listener's password_file).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// List the users whose hash is still Mosquitto's ($6$ or $7$). They
    /// log in as they are; a hash cannot be converted without its
    /// password, so the broker makes it Argon2id at the user's next login
    /// (when it may write the file), or set theirs again with `add`.
    Upgrade {
        /// Password file (default: the configured listener's password_file).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Remove a user.
    Rm {
        /// User name.
        user: String,
        /// Password file (default: the configured listener's password_file).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

/// The transport a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
    /// The HTTP endpoint for metrics, health and the status page: the
    /// listener an `[http]` table becomes (never written in `[[listener]]`).
    #[serde(skip_deserializing)]
    Http,
}

impl Protocol {
    /// Whether this transport needs a certificate and key.
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Tls | Protocol::Wss)
    }

    /// Whether this transport is WebSocket.
    pub fn is_ws(self) -> bool {
        matches!(self, Protocol::Ws | Protocol::Wss)
    }

    /// The name used in configuration files (`tcp`, `tls`, `ws`, `wss`;
    /// `http` for the `[http]` endpoint).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Ws => "ws",
            Protocol::Wss => "wss",
            Protocol::Http => "http",
        }
    }
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Transport.
    pub protocol: Protocol,
    /// Address and port to bind.
    pub bind: SocketAddr,
    /// TLS certificate chain, PEM (tls and wss only).
    pub cert: Option<PathBuf>,
    /// TLS private key, PEM (tls and wss only).
    pub key: Option<PathBuf>,
    /// HTTP path of the WebSocket endpoint (ws and wss only).
    pub ws_path: String,
    /// Whether clients without a user name may connect: the value written
    /// in the file, or else the default (true only for the built-in local
    /// listener). Loading clears it for a listener on a non-loopback address
    /// unless it was written ([`Listener::allow_anonymous_explicit`]); ask
    /// [`Listener::allows_anonymous`], which applies that rule whatever was
    /// changed since.
    pub allow_anonymous: bool,
    /// Whether the configuration file wrote `allow_anonymous` for this
    /// listener. Only a written `true` opens a non-loopback listener to
    /// anonymous clients.
    pub allow_anonymous_explicit: bool,
    /// Password file for clients with a user name.
    pub password_file: Option<PathBuf>,
    /// ACL file; when set, anything it does not grant is denied.
    pub acl_file: Option<PathBuf>,
    /// Client certificates (tls and wss only): which CAs sign them, whether
    /// one is required, and whether it names the user.
    pub client_certs: ClientCerts,
    /// `SO_REUSEPORT` (Linux and other Unix systems): several processes
    /// listen on the same address and port, and the kernel spreads new
    /// connections among them (on Linux, by a hash of the client's address
    /// and port). This is how several roost nodes of one cluster share one
    /// port on one machine, one core each. Every process on the port must
    /// set it.
    pub reuse_port: bool,
}

/// Client certificates on a TLS listener, with Mosquitto's names.
///
/// With `client_ca` set, the listener asks every client for a certificate
/// and verifies one that is presented against these CAs (and the CRL);
/// an invalid certificate fails the handshake. Without
/// `require_certificate`, a client may present none and authenticates as
/// usual (password file, anonymous rules).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCerts {
    /// PEM file of the CAs that sign client certificates (`client_ca`).
    pub ca: Option<PathBuf>,
    /// PEM file of certificate revocation lists (`crl_file`).
    pub crl: Option<PathBuf>,
    /// A client without a valid certificate fails the handshake
    /// (`require_certificate`).
    pub required: bool,
    /// What of a verified certificate becomes the client's user name.
    pub identity: CertIdentity,
}

/// What of a verified client certificate becomes the user name. When one
/// does, the CONNECT's user name and password are ignored and the client
/// is authenticated by its certificate alone; ACLs see this name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CertIdentity {
    /// Nothing: the client authenticates as usual.
    #[default]
    None,
    /// The subject's common name (`use_identity_as_username = true`).
    CommonName,
    /// The whole subject, RFC 2253 style as Mosquitto prints it, e.g.
    /// `CN=dev1,O=Acme,C=GB` (`use_subject_as_username = true`).
    Subject,
}

impl Listener {
    /// The listener used when the configuration names none: plain TCP on
    /// `127.0.0.1:1883`, anonymous clients allowed (Mosquitto 2.x's local-only
    /// mode).
    pub fn default_local() -> Listener {
        Listener {
            protocol: Protocol::Tcp,
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1883),
            cert: None,
            key: None,
            ws_path: DEFAULT_WS_PATH.to_owned(),
            allow_anonymous: true,
            allow_anonymous_explicit: false,
            password_file: None,
            acl_file: None,
            client_certs: ClientCerts::default(),
            reuse_port: false,
        }
    }

    /// Whether this listener accepts clients that send no user name. A
    /// listener on a non-loopback address (`0.0.0.0`, `::`, or any address
    /// but `127.0.0.0/8` and `::1`) does only when `allow_anonymous = true`
    /// was written for it; otherwise this is [`Listener::allow_anonymous`].
    /// The runtime refuses an anonymous CONNECT on a listener where this is
    /// false (CONNACK 0x87 Not authorized / 3.1.1 return code 0x05).
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous && (self.allow_anonymous_explicit || self.is_loopback())
    }

    /// Whether the listener is bound to a loopback address, reachable only
    /// from this machine (an IPv4-mapped `::ffff:127.0.0.1` counts).
    pub fn is_loopback(&self) -> bool {
        self.bind.ip().to_canonical().is_loopback()
    }

    /// Applies the non-loopback rule to the stored value, so that
    /// [`Listener::allow_anonymous`] reads as what [`Listener::allows_anonymous`]
    /// answers right after loading.
    fn settle_anonymous(&mut self) {
        self.allow_anonymous = self.allows_anonymous();
    }

    /// Whether the non-loopback rule turned anonymous clients away here:
    /// they would be allowed on loopback, but the address is not and
    /// `allow_anonymous` was not written.
    fn anonymous_refused_by_address(&self) -> bool {
        !self.allow_anonymous_explicit && !self.is_loopback()
    }
}

const DEFAULT_WS_PATH: &str = "/mqtt";

/// Resource limits: every field of the engine's [`EngineLimits`], in the
/// units the `[limits]` table uses (`*_ms`, `*_secs`, fixed-width integers).
/// What happens at each limit is the engine's to document; these are the
/// numbers. The defaults are the engine's ([`EngineLimits::default`]), so
/// there is one source of truth, and [`Limits::to_engine`] is the one
/// conversion back.
///
/// A new engine field is mapped in four places, one line each: a field
/// here, [`Limits::from_engine`], [`Limits::to_engine`] (both exhaustive,
/// so the build fails until it is), and a key in `RawLimits` read in
/// `Config::from_raw`; then `roost.example.toml` documents the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest MQTT packet accepted, in bytes (whole packet).
    pub max_packet_size: u32,
    /// QoS 1/2 messages in flight to one client (MQTT 5 Receive Maximum).
    pub max_inflight: u16,
    /// Messages queued for one session beyond the in-flight window.
    pub max_queued_messages: u32,
    /// Payload bytes queued for one session.
    pub max_queued_bytes: u64,
    /// Whether QoS 0 messages are queued for offline persistent sessions.
    pub queue_qos0_offline: bool,
    /// Time a new connection has to send CONNECT, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Time the embedding program has to answer an authorization request
    /// (a PUBLISH or SUBSCRIBE it decides), in milliseconds.
    pub authorize_timeout_ms: u64,
    /// Largest keep-alive granted to a client, in seconds; `None` (the
    /// default) caps nothing. MQTT 5 clients asking for more (or for none)
    /// are told this one as Server Keep Alive; MQTT 3 clients asking for more
    /// are refused, as Mosquitto does.
    pub max_keepalive_secs: Option<u16>,
    /// Simultaneous connections across all listeners (the default, the
    /// engine's, is no limit).
    pub max_connections: u64,
    /// Longest client identifier accepted, in bytes.
    pub max_client_id_len: u16,
    /// Most levels in a topic name or filter.
    pub max_topic_levels: u16,
    /// Longest topic name or filter, in bytes.
    pub max_topic_length: u32,
    /// Most subscriptions one session may hold.
    pub max_subscriptions_per_client: u32,
    /// Retained messages the broker keeps; a new retained topic beyond it is
    /// delivered but not retained.
    pub max_retained_messages: u64,
    /// Bytes buffered for writing to one connection before deliveries to
    /// it stop (QoS 0 dropped, QoS 1/2 and retained queued) until it
    /// drains to half; the engine holds one input's output to it too. A
    /// packet larger than this is still written whole, after which the
    /// connection counts as blocked.
    pub outbound_buffer_bytes: u64,
    /// Milliseconds a packet may take to arrive once its first byte has:
    /// a client trickling a packet is closed after it, keep-alive or not.
    pub packet_timeout_ms: u64,
    /// QoS 1 PUBLISHes an MQTT 3 client may have waiting for their PUBACK
    /// (for durability) before it is disconnected (Mosquitto: 5,000).
    pub mqtt3_max_pending_acks: u32,
    /// QoS 2 PUBLISHes an MQTT 3 client may leave unreleased (no PUBREL
    /// yet) before it is disconnected (Mosquitto: 1,000).
    pub mqtt3_max_pending_qos2: u32,
}

impl Default for Limits {
    /// The engine's defaults, [`EngineLimits::default`].
    fn default() -> Self {
        Limits::from_engine(&EngineLimits::default())
    }
}

/// `value` as `T`, or `max` when it does not fit (only "no limit" values
/// such as `usize::MAX` are that large).
fn saturate<T: TryFrom<U>, U>(value: U, max: T) -> T {
    T::try_from(value).unwrap_or(max)
}

/// A duration in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    saturate(d.as_millis(), u64::MAX)
}

impl Limits {
    /// The engine's limits in configuration terms. Values too large for a
    /// field's type (only "no limit" defaults) saturate, and
    /// [`Limits::to_engine`] maps them back to the engine's maximum.
    pub fn from_engine(e: &EngineLimits) -> Limits {
        Limits {
            max_packet_size: e.max_packet_size,
            max_inflight: e.max_inflight,
            max_queued_messages: saturate(e.max_queued_messages, u32::MAX),
            max_queued_bytes: saturate(e.max_queued_bytes, u64::MAX),
            queue_qos0_offline: e.queue_qos0_offline,
            connect_timeout_ms: millis(e.connect_timeout),
            authorize_timeout_ms: millis(e.authorize_timeout),
            max_keepalive_secs: e.max_keepalive,
            max_connections: saturate(e.max_connections, u64::MAX),
            max_client_id_len: saturate(e.max_client_id_len, u16::MAX),
            max_topic_levels: saturate(e.max_topic_levels, u16::MAX),
            max_topic_length: saturate(e.max_topic_length, u32::MAX),
            max_subscriptions_per_client: saturate(e.max_subscriptions_per_client, u32::MAX),
            max_retained_messages: saturate(e.max_retained_messages, u64::MAX),
            packet_timeout_ms: millis(e.packet_timeout),
            mqtt3_max_pending_acks: saturate(e.mqtt3_max_pending_acks, u32::MAX),
            mqtt3_max_pending_qos2: saturate(e.mqtt3_max_pending_qos2, u32::MAX),
            outbound_buffer_bytes: saturate(e.outbound_buffer_bytes, u64::MAX),
        }
    }

    /// The engine's [`EngineLimits`] for these numbers: every field, so the
    /// runtime builds `roost_core::broker::Config::limits` from this call
    /// alone.
    pub fn to_engine(&self) -> EngineLimits {
        EngineLimits {
            max_packet_size: self.max_packet_size,
            max_inflight: self.max_inflight,
            max_queued_messages: saturate(self.max_queued_messages, usize::MAX),
            max_queued_bytes: saturate(self.max_queued_bytes, usize::MAX),
            queue_qos0_offline: self.queue_qos0_offline,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            authorize_timeout: Duration::from_millis(self.authorize_timeout_ms),
            max_keepalive: self.max_keepalive_secs,
            max_connections: saturate(self.max_connections, usize::MAX),
            max_client_id_len: usize::from(self.max_client_id_len),
            max_topic_levels: usize::from(self.max_topic_levels),
            max_topic_length: saturate(self.max_topic_length, usize::MAX),
            max_subscriptions_per_client: saturate(self.max_subscriptions_per_client, usize::MAX),
            max_retained_messages: saturate(self.max_retained_messages, usize::MAX),
            outbound_buffer_bytes: saturate(self.outbound_buffer_bytes, usize::MAX),
            packet_timeout: Duration::from_millis(self.packet_timeout_ms),
            mqtt3_max_pending_acks: saturate(self.mqtt3_max_pending_acks, usize::MAX),
            mqtt3_max_pending_qos2: saturate(self.mqtt3_max_pending_qos2, usize::MAX),
        }
    }
}

/// Where sessions and messages are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    /// In memory; lost on restart.
    #[default]
    Memory,
    /// The embedded fjall database under `persistence.path`.
    Fjall,
}

/// When stored data is made durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Before acknowledging (group commit).
    #[default]
    Sync,
    /// Every `flush_interval_ms`; a crash loses at most that much.
    Periodic,
}

/// What to do at start with a damaged store journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recovery {
    /// Refuse to start, naming the file and offset (`roost store repair`
    /// fixes it).
    #[default]
    Strict,
    /// Cut the journal at the damage, start with what precedes it, and log
    /// what was dropped.
    Truncate,
}

/// Persistence settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    /// Which store.
    pub store: Store,
    /// Data directory (required for fjall).
    pub path: Option<PathBuf>,
    /// When data is made durable.
    pub durability: Durability,
    /// Flush period for `periodic`, in milliseconds.
    pub flush_interval_ms: u64,
    /// What to do with a damaged journal at start.
    pub recovery: Recovery,
}

impl Default for Persistence {
    fn default() -> Self {
        Persistence {
            store: Store::Memory,
            path: None,
            durability: Durability::Sync,
            flush_interval_ms: 1000,
            recovery: Recovery::Strict,
        }
    }
}

/// `$SYS` topic settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sys {
    /// Seconds between `$SYS` updates; 0 turns them off.
    pub interval_secs: u32,
}

impl Default for Sys {
    fn default() -> Self {
        Sys { interval_secs: 10 }
    }
}

/// What the broker offers MQTT 5 clients (announced in CONNACK and
/// enforced), and how it answers refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mqtt {
    /// Inbound QoS 1/2 messages a client may have unacknowledged.
    pub receive_maximum: u16,
    /// Highest QoS accepted from clients (0, 1 or 2).
    pub maximum_qos: u8,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// Whether wildcard subscriptions are accepted.
    pub wildcard_subscriptions: bool,
    /// Whether subscription identifiers are accepted.
    pub subscription_identifiers: bool,
    /// Whether `$share/` subscriptions are accepted.
    pub shared_subscriptions: bool,
    /// Topic aliases a client may use toward the broker.
    pub topic_alias_maximum: u16,
    /// Whether the broker uses topic aliases toward clients that allow them.
    pub outbound_topic_aliases: bool,
    /// Whether payloads marked as UTF-8 must be valid UTF-8.
    pub validate_utf8_payloads: bool,
    /// Whether strings from clients (client id, user name, topics, filters,
    /// string properties) may hold control characters (U+0001..U+001F,
    /// U+007F..U+009F) or Unicode non-characters. Off (the default, as
    /// Mosquitto): such a packet is malformed and closes the connection.
    pub allow_disallowed_code_points: bool,
    /// Whether another identity (user name, or listener authentication
    /// setup) using a client id resumes that id's session, as Mosquitto
    /// does. Off: it takes over the connection but gets a fresh session.
    pub share_sessions_across_identities: bool,
    /// SUBACK reason code for a subscription the ACL refuses.
    pub subscribe_denied: DeniedCode,
    /// The seed of everything the engine picks (its hash tables' key,
    /// assigned client identifiers): the same seed and the same inputs
    /// give the same outputs. `None` (the default): drawn from the
    /// operating system at start ([`os_seed`]) and logged, so a run can be
    /// repeated by setting it.
    pub random_seed: Option<u64>,
}

/// A seed from the operating system's randomness (through the standard
/// library's hash keys), below 2^63 so it can be written back into a TOML
/// file as `mqtt.random_seed`.
pub fn os_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x0072_6f6f_7374);
    h.finish() >> 1
}

impl Default for Mqtt {
    fn default() -> Self {
        Mqtt {
            receive_maximum: 100,
            maximum_qos: 2,
            retain_available: true,
            wildcard_subscriptions: true,
            subscription_identifiers: true,
            shared_subscriptions: true,
            topic_alias_maximum: 10,
            outbound_topic_aliases: true,
            validate_utf8_payloads: true,
            allow_disallowed_code_points: false,
            share_sessions_across_identities: false,
            subscribe_denied: DeniedCode::NotAuthorized,
            random_seed: None,
        }
    }
}

/// The MQTT 5 reason code for an ACL refusal (MQTT 3 clients always see
/// 0x80).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeniedCode {
    /// 0x87 Not authorized (Mosquitto's answer).
    NotAuthorized,
    /// 0x80 Unspecified error (what the Paho interoperability suite's MQTT 5
    /// client accepts).
    UnspecifiedError,
}

/// The HTTP endpoint (`[http]`): Prometheus metrics, health and
/// readiness, and a status page. Off unless configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http {
    /// Address and port to bind.
    pub bind: SocketAddr,
}

impl Http {
    /// The listener the runtimes bind for it (after the MQTT listeners).
    pub fn listener(&self) -> Listener {
        Listener {
            protocol: Protocol::Http,
            bind: self.bind,
            cert: None,
            key: None,
            ws_path: String::new(),
            allow_anonymous: false,
            allow_anonymous_explicit: false,
            password_file: None,
            acl_file: None,
            client_certs: ClientCerts::default(),
            reuse_port: false,
        }
    }
}

/// The whole, validated broker configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Listeners, at least one.
    pub listeners: Vec<Listener>,
    /// Resource limits.
    pub limits: Limits,
    /// Persistence.
    pub persistence: Persistence,
    /// `$SYS` topics.
    pub sys: Sys,
    /// MQTT capabilities.
    pub mqtt: Mqtt,
    /// The HTTP endpoint, if configured.
    pub http: Option<Http>,
    /// Bridges to other brokers (`[[bridge]]`).
    pub bridges: Vec<Bridge>,
    /// This broker as a node of a cluster (`[cluster]`), if configured.
    pub cluster: Option<Box<Cluster>>,
    /// Where the broker writes its process id once listening (`pid_file`,
    /// `--pid-file`); the binaries remove it at a clean exit.
    pub pid_file: Option<PathBuf>,
    /// Log verbosity from `-v` flags (0 = info).
    pub verbosity: u8,
    /// Notes found while loading that are not errors (see [`Config::warnings`]).
    notes: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: vec![Listener::default_local()],
            limits: Limits::default(),
            persistence: Persistence::default(),
            sys: Sys::default(),
            mqtt: Mqtt::default(),
            http: None,
            bridges: Vec::new(),
            cluster: None,
            pid_file: None,
            verbosity: 0,
            notes: Vec::new(),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong
    /// type. The message from the TOML reader names the key and line.
    Parse {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// The reader's error.
        source: Box<toml::de::Error>,
    },
    /// A number is outside its range.
    OutOfRange {
        /// The key, e.g. `limits.max_inflight`.
        key: String,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A key is required by another setting.
    Required {
        /// The missing key, e.g. `listener[1].cert`.
        key: String,
        /// Why, e.g. `for protocol "tls"`.
        because: String,
    },
    /// Any other invalid value.
    Invalid {
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => write!(f, "{}: {source}", path.display()),
            ConfigError::Parse { path, source } => {
                if let Some(path) = path {
                    write!(f, "{}: ", path.display())?;
                }
                write!(f, "{}", source.to_string().trim_end())
            }
            ConfigError::OutOfRange { key, min, max } => {
                write!(f, "{key}: must be between {min} and {max}")
            }
            ConfigError::Required { key, because } => write!(f, "{key}: required {because}"),
            ConfigError::Invalid { key, problem } => write!(f, "{key}: {problem}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Parse { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

// The loose shape serde reads. Numbers are i64 so that an out-of-range value
// gets our message naming the range rather than the TOML reader's "expected u16".

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listener: Vec<RawListener>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    persistence: RawPersistence,
    #[serde(default)]
    sys: RawSys,
    #[serde(default)]
    mqtt: RawMqtt,
    http: Option<RawHttp>,
    #[serde(default)]
    bridge: Vec<bridge::RawBridge>,
    cluster: Option<cluster::RawCluster>,
    pid_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    bind: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    receive_maximum: Option<i64>,
    maximum_qos: Option<i64>,
    retain_available: Option<bool>,
    wildcard_subscriptions: Option<bool>,
    subscription_identifiers: Option<bool>,
    shared_subscriptions: Option<bool>,
    topic_alias_maximum: Option<i64>,
    outbound_topic_aliases: Option<bool>,
    validate_utf8_payloads: Option<bool>,
    allow_disallowed_code_points: Option<bool>,
    share_sessions_across_identities: Option<bool>,
    subscribe_denied: Option<DeniedCode>,
    random_seed: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    protocol: Protocol,
    bind: String,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ws_path: Option<String>,
    allow_anonymous: Option<bool>,
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    require_certificate: Option<bool>,
    client_ca: Option<PathBuf>,
    crl_file: Option<PathBuf>,
    use_identity_as_username: Option<bool>,
    use_subject_as_username: Option<bool>,
    reuse_port: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_packet_size: Option<i64>,
    max_inflight: Option<i64>,
    max_queued_messages: Option<i64>,
    max_queued_bytes: Option<i64>,
    queue_qos0_offline: Option<bool>,
    connect_timeout_ms: Option<i64>,
    authorize_timeout_ms: Option<i64>,
    max_keepalive_secs: Option<i64>,
    max_connections: Option<i64>,
    max_client_id_len: Option<i64>,
    max_topic_levels: Option<i64>,
    max_topic_length: Option<i64>,
    max_subscriptions_per_client: Option<i64>,
    max_retained_messages: Option<i64>,
    packet_timeout_ms: Option<i64>,
    mqtt3_max_pending_acks: Option<i64>,
    mqtt3_max_pending_qos2: Option<i64>,
    outbound_buffer_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPersistence {
    store: Option<Store>,
    path: Option<PathBuf>,
    durability: Option<Durability>,
    flush_interval_ms: Option<i64>,
    recovery: Option<Recovery>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSys {
    interval_secs: Option<i64>,
}

/// Reads an optional integer key, checking `min..=max`.
fn ranged<T: TryFrom<i64>>(
    value: Option<i64>,
    key: &str,
    min: i64,
    max: i64,
    default: T,
) -> Result<T, ConfigError> {
    let Some(v) = value else {
        return Ok(default);
    };
    let out_of_range = || ConfigError::OutOfRange {
        key: key.to_owned(),
        min: min.unsigned_abs(),
        max: max.unsigned_abs(),
    };
    if !(min..=max).contains(&v) {
        return Err(out_of_range());
    }
    T::try_from(v).map_err(|_| out_of_range())
}

const MAX_MQTT_PACKET: i64 = 268_435_460; // 1 + 4 + 268_435_455
const MIB: i64 = 1024 * 1024;
const U32_MAX: i64 = u32::MAX as i64;

impl Config {
    /// Parses the process's command line and loads the configuration.
    /// Exits the process with clap's message on a bad command line (as every
    /// clap program does); configuration problems are returned.
    pub fn from_args() -> Result<Config, ConfigError> {
        Config::from_cli(Cli::parse())
    }

    /// Loads the file named by `--config` (if any) and applies the flags.
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let mut config = match &cli.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply_cli(&cli)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a TOML file. Relative paths in it are taken
    /// relative to the file's folder.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::from_toml_str(&text).map_err(|err| match err {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: Some(path.to_path_buf()),
                source,
            },
            other => other,
        })?;
        // Relative paths in a file mean "next to this file", so a config
        // works from any working directory.
        if let Some(dir) = path.parent() {
            let anchor = |p: &mut Option<PathBuf>| {
                if let Some(p) = p.as_mut().filter(|p| p.is_relative()) {
                    *p = dir.join(&*p);
                }
            };
            for l in &mut config.listeners {
                anchor(&mut l.cert);
                anchor(&mut l.key);
                anchor(&mut l.password_file);
                anchor(&mut l.acl_file);
                anchor(&mut l.client_certs.ca);
                anchor(&mut l.client_certs.crl);
            }
            for t in config.bridges.iter_mut().filter_map(|b| b.tls.as_mut()) {
                if t.ca.is_relative() {
                    t.ca = dir.join(&t.ca);
                }
                anchor(&mut t.cert);
                anchor(&mut t.key);
            }
            anchor(&mut config.persistence.path);
            anchor(&mut config.pid_file);
        }
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: None,
            source: Box::new(source),
        })?;
        Config::from_raw(raw)
    }

    /// Applies flags on top of the loaded file.
    fn apply_cli(&mut self, cli: &Cli) -> Result<(), ConfigError> {
        self.verbosity = cli.verbose;
        if cli.port.is_some() || cli.bind.is_some() {
            // `listeners` is never empty: from_raw falls back to the default.
            let first = self
                .listeners
                .first_mut()
                .ok_or_else(|| ConfigError::Invalid {
                    key: "listener".into(),
                    problem: "no listener to apply --port/--bind to".into(),
                })?;
            if let Some(port) = cli.port {
                first.bind.set_port(port);
            }
            if let Some(ip) = cli.bind {
                first.bind.set_ip(ip);
            }
            // `--bind 0.0.0.0` on the built-in listener must not open it to
            // anonymous clients from the network.
            first.settle_anonymous();
            check_duplicate_binds(&self.listeners)?;
        }
        if let Some(dir) = &cli.data_dir {
            // A data directory only means something with a store that writes
            // to it.
            self.persistence.path = Some(dir.clone());
            self.persistence.store = Store::Fjall;
        }
        if cli.recover_truncate {
            self.persistence.recovery = Recovery::Truncate;
        }
        if let Some(path) = &cli.pid_file {
            self.pid_file = Some(path.clone());
        }
        Ok(())
    }

    fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut notes = Vec::new();
        let mut listeners = Vec::with_capacity(raw.listener.len());
        for (i, l) in raw.listener.into_iter().enumerate() {
            listeners.push(listener_from_raw(i, l, &mut notes)?);
        }
        if listeners.is_empty() {
            listeners.push(Listener::default_local());
        }
        for l in &mut listeners {
            l.settle_anonymous();
        }
        check_duplicate_binds(&listeners)?;

        let d = Limits::default();
        let r = raw.limits;
        let limits = Limits {
            max_packet_size: ranged(
                r.max_packet_size,
                "limits.max_packet_size",
                16,
                MAX_MQTT_PACKET,
                d.max_packet_size,
            )?,
            max_inflight: ranged(
                r.max_inflight,
                "limits.max_inflight",
                1,
                65_535,
                d.max_inflight,
            )?,
            max_queued_messages: ranged(
                r.max_queued_messages,
                "limits.max_queued_messages",
                1,
                10_000_000,
                d.max_queued_messages,
            )?,
            max_queued_bytes: ranged(
                r.max_queued_bytes,
                "limits.max_queued_bytes",
                1,
                64 * 1024 * MIB,
                d.max_queued_bytes,
            )?,
            queue_qos0_offline: r.queue_qos0_offline.unwrap_or(d.queue_qos0_offline),
            connect_timeout_ms: ranged(
                r.connect_timeout_ms,
                "limits.connect_timeout_ms",
                100,
                3_600_000,
                d.connect_timeout_ms,
            )?,
            authorize_timeout_ms: ranged(
                r.authorize_timeout_ms,
                "limits.authorize_timeout_ms",
                100,
                3_600_000,
                d.authorize_timeout_ms,
            )?,
            max_keepalive_secs: match r.max_keepalive_secs {
                None => d.max_keepalive_secs,
                some => Some(ranged(some, "limits.max_keepalive_secs", 1, 65_535, 0u16)?),
            },
            max_connections: ranged(
                r.max_connections,
                "limits.max_connections",
                1,
                U32_MAX,
                d.max_connections,
            )?,
            // MQTT servers must accept ids of 1 to 23 bytes [MQTT-3.1.3-5].
            max_client_id_len: ranged(
                r.max_client_id_len,
                "limits.max_client_id_len",
                23,
                65_535,
                d.max_client_id_len,
            )?,
            max_topic_levels: ranged(
                r.max_topic_levels,
                "limits.max_topic_levels",
                1,
                65_535,
                d.max_topic_levels,
            )?,
            // A topic is an MQTT string: at most 65,535 bytes.
            max_topic_length: ranged(
                r.max_topic_length,
                "limits.max_topic_length",
                1,
                65_535,
                d.max_topic_length,
            )?,
            max_subscriptions_per_client: ranged(
                r.max_subscriptions_per_client,
                "limits.max_subscriptions_per_client",
                1,
                1_000_000,
                d.max_subscriptions_per_client,
            )?,
            max_retained_messages: ranged(
                r.max_retained_messages,
                "limits.max_retained_messages",
                0,
                U32_MAX,
                d.max_retained_messages,
            )?,
            outbound_buffer_bytes: ranged(
                r.outbound_buffer_bytes,
                "limits.outbound_buffer_bytes",
                4096,
                64 * 1024 * MIB,
                d.outbound_buffer_bytes,
            )?,
            packet_timeout_ms: ranged(
                r.packet_timeout_ms,
                "limits.packet_timeout_ms",
                100,
                3_600_000,
                d.packet_timeout_ms,
            )?,
            mqtt3_max_pending_acks: ranged(
                r.mqtt3_max_pending_acks,
                "limits.mqtt3_max_pending_acks",
                1,
                1_000_000,
                d.mqtt3_max_pending_acks,
            )?,
            mqtt3_max_pending_qos2: ranged(
                r.mqtt3_max_pending_qos2,
                "limits.mqtt3_max_pending_qos2",
                1,
                1_000_000,
                d.mqtt3_max_pending_qos2,
            )?,
        };
        // No rule ties outbound_buffer_bytes to max_packet_size: the engine
        // writes a packet larger than the buffer whole and only then counts
        // the connection as blocked (the engine's own defaults are 2 MiB and
        // 16 MiB).
        if limits.max_queued_bytes < u64::from(limits.max_packet_size) {
            notes.push(format!(
                "limits.max_queued_bytes ({}) is below limits.max_packet_size ({}): \
                 the largest messages can never be queued for offline clients",
                limits.max_queued_bytes, limits.max_packet_size
            ));
        }

        let d = Persistence::default();
        let r = raw.persistence;
        let persistence = Persistence {
            store: r.store.unwrap_or(d.store),
            path: r.path,
            durability: r.durability.unwrap_or(d.durability),
            flush_interval_ms: ranged(
                r.flush_interval_ms,
                "persistence.flush_interval_ms",
                1,
                3_600_000,
                d.flush_interval_ms,
            )?,
            recovery: r.recovery.unwrap_or(d.recovery),
        };
        if persistence
            .path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError::Invalid {
                key: "persistence.path".into(),
                problem: "must not be empty".into(),
            });
        }
        if r.flush_interval_ms.is_some() && persistence.durability != Durability::Periodic {
            notes.push(
                "persistence.flush_interval_ms is ignored unless durability = \"periodic\"".into(),
            );
        }
        if persistence.store == Store::Memory && persistence.path.is_some() {
            notes.push("persistence.path is ignored with store = \"memory\"".into());
        }

        let sys = Sys {
            interval_secs: ranged(
                raw.sys.interval_secs,
                "sys.interval_secs",
                0,
                86_400,
                Sys::default().interval_secs,
            )?,
        };

        let d = Mqtt::default();
        let r = raw.mqtt;
        let mqtt = Mqtt {
            receive_maximum: ranged(
                r.receive_maximum,
                "mqtt.receive_maximum",
                1,
                65_535,
                d.receive_maximum,
            )?,
            maximum_qos: ranged(r.maximum_qos, "mqtt.maximum_qos", 0, 2, d.maximum_qos)?,
            retain_available: r.retain_available.unwrap_or(d.retain_available),
            wildcard_subscriptions: r.wildcard_subscriptions.unwrap_or(d.wildcard_subscriptions),
            subscription_identifiers: r
                .subscription_identifiers
                .unwrap_or(d.subscription_identifiers),
            shared_subscriptions: r.shared_subscriptions.unwrap_or(d.shared_subscriptions),
            topic_alias_maximum: ranged(
                r.topic_alias_maximum,
                "mqtt.topic_alias_maximum",
                0,
                65_535,
                d.topic_alias_maximum,
            )?,
            outbound_topic_aliases: r.outbound_topic_aliases.unwrap_or(d.outbound_topic_aliases),
            validate_utf8_payloads: r.validate_utf8_payloads.unwrap_or(d.validate_utf8_payloads),
            allow_disallowed_code_points: r
                .allow_disallowed_code_points
                .unwrap_or(d.allow_disallowed_code_points),
            share_sessions_across_identities: r
                .share_sessions_across_identities
                .unwrap_or(d.share_sessions_across_identities),
            subscribe_denied: r.subscribe_denied.unwrap_or(d.subscribe_denied),
            random_seed: r.random_seed,
        };

        let http = match raw.http {
            None => None,
            Some(h) => {
                let bind: SocketAddr = h.bind.parse().map_err(|_| ConfigError::Invalid {
                    key: "http.bind".into(),
                    problem: format!(
                        "{:?} is not an address:port such as \"127.0.0.1:9090\"",
                        h.bind
                    ),
                })?;
                if bind.port() != 0 {
                    if let Some(j) = listeners.iter().position(|l| l.bind == bind) {
                        return Err(ConfigError::Invalid {
                            key: "http.bind".into(),
                            problem: format!("{bind} is already used by listener[{j}]"),
                        });
                    }
                }
                if !bind.ip().to_canonical().is_loopback() {
                    notes.push(format!(
                        "http.bind {bind} is not a loopback address: anyone who can reach it \
                         reads the metrics and the status page (no authentication)"
                    ));
                }
                Some(Http { bind })
            }
        };

        let bridges = bridge::bridges_from_raw(raw.bridge)?;
        let cluster = cluster::cluster_from_raw(raw.cluster, listeners.len())?;
        let config = Config {
            listeners,
            limits,
            persistence,
            sys,
            mqtt,
            http,
            bridges,
            cluster,
            pid_file: raw.pid_file,
            verbosity: 0,
            notes,
        };
        Ok(config)
    }

    /// Checks rules that involve flags as well as the file; [`Config::from_cli`]
    /// calls it. Today: fjall needs a path (from the file or `--data-dir`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.persistence.store == Store::Fjall && self.persistence.path.is_none() {
            return Err(ConfigError::Required {
                key: "persistence.path".into(),
                because: "for store \"fjall\" (or pass --data-dir)".into(),
            });
        }
        Ok(())
    }

    /// Human-readable warnings about a configuration that loads but is
    /// probably not what was meant. The runtime logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = self.notes.clone();
        for (i, l) in self.listeners.iter().enumerate() {
            let name = format!("listener[{i}] ({} on {})", l.protocol.name(), l.bind);
            let anonymous = l.allows_anonymous();
            if anonymous && l.password_file.is_none() && !l.is_loopback() {
                out.push(format!(
                    "{name} accepts anonymous clients from the network and has no password_file"
                ));
            } else if !anonymous && l.anonymous_refused_by_address() {
                // One line per listener: why, and how to allow them.
                let mut line = format!(
                    "{name} refuses anonymous clients: it is bound to a non-loopback address \
                     and allow_anonymous is not set; to accept them, write \
                     allow_anonymous = true in its [[listener]] table (with --config)"
                );
                if l.password_file.is_none() && l.client_certs.identity == CertIdentity::None {
                    line.push_str(
                        "; it has no password_file either: no client can connect unless \
                         the embedding program authenticates",
                    );
                }
                out.push(line);
            } else if !anonymous
                && l.password_file.is_none()
                && l.client_certs.identity == CertIdentity::None
            {
                out.push(format!(
                    "{name} refuses anonymous clients and has no password_file: no client \
                     can connect unless the embedding program authenticates"
                ));
            }
        }
        out
    }
}

fn listener_from_raw(
    i: usize,
    raw: RawListener,
    notes: &mut Vec<String>,
) -> Result<Listener, ConfigError> {
    let key = |name: &str| format!("listener[{i}].{name}");
    let bind: SocketAddr = raw.bind.parse().map_err(|_| ConfigError::Invalid {
        key: key("bind"),
        problem: format!(
            "{:?} is not an address:port such as \"127.0.0.1:1883\" or \"[::]:1883\"",
            raw.bind
        ),
    })?;
    let client_certs = client_certs_from_raw(i, &raw)?;
    let reuse_port = raw.reuse_port.unwrap_or(false);
    if reuse_port && !cfg!(unix) {
        return Err(ConfigError::Invalid {
            key: key("reuse_port"),
            problem: "SO_REUSEPORT exists on Linux and other Unix systems only".into(),
        });
    }
    if raw.protocol.is_tls() {
        for (name, value) in [("cert", &raw.cert), ("key", &raw.key)] {
            if value.is_none() {
                return Err(ConfigError::Required {
                    key: key(name),
                    because: format!("for protocol {:?}", raw.protocol.name()),
                });
            }
        }
    } else if raw.cert.is_some() || raw.key.is_some() {
        notes.push(format!(
            "listener[{i}]: cert/key are ignored for protocol {:?}",
            raw.protocol.name()
        ));
    }
    let ws_path = match raw.ws_path {
        Some(path) => {
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::Invalid {
                    key: key("ws_path"),
                    problem: format!("{path:?} must start with '/' and contain no spaces"),
                });
            }
            if !raw.protocol.is_ws() {
                notes.push(format!(
                    "listener[{i}]: ws_path is ignored for protocol {:?}",
                    raw.protocol.name()
                ));
            }
            path
        }
        None => DEFAULT_WS_PATH.to_owned(),
    };
    Ok(Listener {
        protocol: raw.protocol,
        bind,
        cert: raw.cert,
        key: raw.key,
        ws_path,
        allow_anonymous: raw.allow_anonymous.unwrap_or(false),
        allow_anonymous_explicit: raw.allow_anonymous.is_some(),
        password_file: raw.password_file,
        acl_file: raw.acl_file,
        client_certs,
        reuse_port,
    })
}

fn client_certs_from_raw(i: usize, raw: &RawListener) -> Result<ClientCerts, ConfigError> {
    let key = |name: &str| format!("listener[{i}].{name}");
    let required = raw.require_certificate.unwrap_or(false);
    let by_cn = raw.use_identity_as_username.unwrap_or(false);
    let by_subject = raw.use_subject_as_username.unwrap_or(false);
    let set: Vec<&str> = [
        ("require_certificate", raw.require_certificate.is_some()),
        ("client_ca", raw.client_ca.is_some()),
        ("crl_file", raw.crl_file.is_some()),
        (
            "use_identity_as_username",
            raw.use_identity_as_username.is_some(),
        ),
        (
            "use_subject_as_username",
            raw.use_subject_as_username.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if let Some(first) = set.first() {
        if !raw.protocol.is_tls() {
            return Err(ConfigError::Invalid {
                key: key(first),
                problem: format!(
                    "client certificates need protocol \"tls\" or \"wss\", not {:?}",
                    raw.protocol.name()
                ),
            });
        }
    }
    if by_cn && by_subject {
        return Err(ConfigError::Invalid {
            key: key("use_subject_as_username"),
            problem: "use_identity_as_username and use_subject_as_username exclude each other"
                .into(),
        });
    }
    let needs_ca = [
        ("require_certificate", required),
        ("crl_file", raw.crl_file.is_some()),
        ("use_identity_as_username", by_cn),
        ("use_subject_as_username", by_subject),
    ]
    .into_iter()
    .find(|(_, on)| *on);
    if let (Some((name, _)), None) = (needs_ca, &raw.client_ca) {
        return Err(ConfigError::Required {
            key: key("client_ca"),
            because: format!("for {name} (the CAs that sign client certificates)"),
        });
    }
    Ok(ClientCerts {
        ca: raw.client_ca.clone(),
        crl: raw.crl_file.clone(),
        required,
        identity: if by_cn {
            CertIdentity::CommonName
        } else if by_subject {
            CertIdentity::Subject
        } else {
            CertIdentity::None
        },
    })
}

fn check_duplicate_binds(listeners: &[Listener]) -> Result<(), ConfigError> {
    for (i, l) in listeners.iter().enumerate() {
        // Port 0 asks the system for a free port: every such listener gets
        // its own, so the same address with port 0 is no clash.
        if l.bind.port() == 0 {
            continue;
        }
        if let Some(j) = listeners[..i].iter().position(|o| o.bind == l.bind) {
            return Err(ConfigError::Invalid {
                key: format!("listener[{i}].bind"),
                problem: format!("{} is already used by listener[{j}]", l.bind),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::from_toml_str(text)
            .expect_err("should be invalid")
            .to_string()
    }

    #[test]
    fn defaults_are_mosquitto_like() {
        let config = Config::from_cli(Cli::default()).expect("defaults");
        assert_eq!(config.listeners, [Listener::default_local()]);
        let l = &config.listeners[0];
        assert_eq!(l.bind, "127.0.0.1:1883".parse().expect("addr"));
        assert!(l.allow_anonymous);
        assert_eq!(config.limits.max_inflight, 32);
        assert_eq!(config.limits.connect_timeout_ms, 10_000);
        assert_eq!(config.persistence.store, Store::Memory);
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
        assert_eq!(Config::from_toml_str("").expect("empty"), config);
    }

    #[test]
    fn http_endpoint_is_off_unless_configured() {
        assert_eq!(Config::default().http, None);
        let config = Config::from_toml_str("[http]\nbind = \"127.0.0.1:9090\"\n").expect("http");
        let http = config.http.as_ref().expect("configured");
        assert_eq!(http.bind, "127.0.0.1:9090".parse().expect("addr"));
        assert_eq!(http.listener().protocol, Protocol::Http);
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
        let open = Config::from_toml_str("[http]\nbind = \"0.0.0.0:9090\"\n").expect("http");
        assert!(open.warnings().iter().any(|w| w.contains("http.bind")));
        assert!(err("[http]\nbind = \"nowhere\"\n").contains("http.bind"));
        assert!(err("[http]\nbind = \"127.0.0.1:1883\"\n").contains("listener[0]"));
        assert!(err("[http]\nbind = \"127.0.0.1:9090\"\npath = \"/\"\n").contains("path"));
        // `http` is no MQTT listener's protocol.
        assert!(
            Config::from_toml_str("[[listener]]\nprotocol = \"http\"\nbind = \"127.0.0.1:1\"\n")
                .is_err()
        );
    }

    #[test]
    fn client_certificate_keys() {
        let base = "[[listener]]\nprotocol = \"tls\"\nbind = \"127.0.0.1:8883\"\ncert = \"c\"\nkey = \"k\"\n";
        let config = Config::from_toml_str(&format!(
            "{base}client_ca = \"ca.pem\"\ncrl_file = \"crl.pem\"\nrequire_certificate = true\nuse_identity_as_username = true\n"
        ))
        .expect("valid");
        let certs = &config.listeners[0].client_certs;
        assert_eq!(certs.ca.as_deref(), Some(Path::new("ca.pem")));
        assert_eq!(certs.crl.as_deref(), Some(Path::new("crl.pem")));
        assert!(certs.required);
        assert_eq!(certs.identity, CertIdentity::CommonName);
        // A listener that maps certificates to users has a way in.
        assert!(
            !config
                .warnings()
                .iter()
                .any(|w| w.contains("no client can connect")),
            "{:?}",
            config.warnings()
        );
        let subject = Config::from_toml_str(&format!(
            "{base}client_ca = \"ca.pem\"\nuse_subject_as_username = true\n"
        ))
        .expect("valid");
        assert_eq!(
            subject.listeners[0].client_certs.identity,
            CertIdentity::Subject
        );
        assert_eq!(
            err(&format!("{base}require_certificate = true\n")),
            "listener[0].client_ca: required for require_certificate (the CAs that sign client certificates)"
        );
        assert_eq!(
            err(&format!(
                "{base}client_ca = \"ca\"\nuse_identity_as_username = true\nuse_subject_as_username = true\n"
            )),
            "listener[0].use_subject_as_username: use_identity_as_username and use_subject_as_username exclude each other"
        );
        assert_eq!(
            err(
                "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:1883\"\nclient_ca = \"ca\"\n"
            ),
            "listener[0].client_ca: client certificates need protocol \"tls\" or \"wss\", not \"tcp\""
        );
    }

    #[test]
    fn example_file_parses_and_documents_every_key() {
        let text = include_str!("../roost.example.toml");
        let config = Config::from_toml_str(text).expect("example parses");
        assert_eq!(config.listeners.len(), 4);
        assert_eq!(config.listeners[2].protocol, Protocol::Ws);
        assert_eq!(config.listeners[2].ws_path, "/mqtt");
        assert_eq!(config.persistence.store, Store::Fjall);
        config.validate().expect("example validates");
        // The limits shown are the defaults, except where the file says
        // "Default:".
        let shown = Limits {
            max_keepalive_secs: None,
            max_connections: Limits::default().max_connections,
            ..config.limits.clone()
        };
        assert_eq!(shown, Limits::default());
        for key in [
            "protocol",
            "bind",
            "cert",
            "key",
            "ws_path",
            "allow_anonymous",
            "password_file",
            "acl_file",
            "client_ca",
            "crl_file",
            "require_certificate",
            "use_identity_as_username",
            "use_subject_as_username",
            "reuse_port",
            "max_packet_size",
            "max_inflight",
            "max_queued_messages",
            "max_queued_bytes",
            "queue_qos0_offline",
            "connect_timeout_ms",
            "authorize_timeout_ms",
            "max_keepalive_secs",
            "max_connections",
            "max_client_id_len",
            "max_topic_levels",
            "max_topic_length",
            "max_subscriptions_per_client",
            "max_retained_messages",
            "outbound_buffer_bytes",
            "packet_timeout_ms",
            "mqtt3_max_pending_acks",
            "mqtt3_max_pending_qos2",
            "store",
            "path",
            "durability",
            "flush_interval_ms",
            "recovery",
            "interval_secs",
            "allow_disallowed_code_points",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{key} ="))),
                "example does not set {key}"
            );
        }
    }

    /// `Limits { a: 1, b: Some(2) }` → `[("a", "1"), ("b", "Some(2)")]`.
    /// The engine's `Limits` has no `PartialEq`; its `Debug` names every
    /// field, so comparing it compares fields the test need not list.
    fn fields(limits: &EngineLimits) -> Vec<(String, String)> {
        let text = format!("{limits:?}");
        let inner = text
            .strip_prefix("Limits { ")
            .and_then(|t| t.strip_suffix(" }"))
            .expect("Debug shape");
        inner
            .split(", ")
            .map(|field| {
                let (name, value) = field.split_once(": ").expect("name: value");
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    #[test]
    fn default_limits_are_the_engines() {
        let engine = fields(&EngineLimits::default());
        assert!(engine.len() >= 15, "{engine:?}");
        for config in [
            Config::default(),
            Config::from_toml_str("").expect("empty"),
            Config::from_cli(Cli::default()).expect("no flags"),
        ] {
            assert_eq!(fields(&config.limits.to_engine()), engine);
        }
        // And back: nothing is lost either way.
        assert_eq!(
            Limits::from_engine(&Limits::default().to_engine()),
            Limits::default()
        );
    }

    #[test]
    fn every_limits_key_reaches_its_engine_field() {
        let config = Config::from_toml_str(
            "[limits]\n\
             max_packet_size = 5000\n\
             max_inflight = 7\n\
             max_queued_messages = 11\n\
             max_queued_bytes = 13000\n\
             queue_qos0_offline = true\n\
             connect_timeout_ms = 1700\n\
             authorize_timeout_ms = 1900\n\
             max_keepalive_secs = 23\n\
             max_connections = 29\n\
             max_client_id_len = 31\n\
             max_topic_levels = 37\n\
             max_topic_length = 41\n\
             max_subscriptions_per_client = 43\n\
             max_retained_messages = 47\n\
             outbound_buffer_bytes = 5300\n\
             packet_timeout_ms = 5900\n\
             mqtt3_max_pending_acks = 61\n\
             mqtt3_max_pending_qos2 = 67\n",
        )
        .expect("parses");
        // Exhaustive on purpose: a new engine field fails to compile here
        // until the test (and the configuration) covers it.
        let expected = EngineLimits {
            max_packet_size: 5000,
            max_inflight: 7,
            max_queued_messages: 11,
            max_queued_bytes: 13_000,
            queue_qos0_offline: true,
            connect_timeout: Duration::from_millis(1700),
            authorize_timeout: Duration::from_millis(1900),
            max_keepalive: Some(23),
            max_connections: 29,
            max_client_id_len: 31,
            max_topic_levels: 37,
            max_topic_length: 41,
            max_subscriptions_per_client: 43,
            max_retained_messages: 47,
            outbound_buffer_bytes: 5300,
            packet_timeout: Duration::from_millis(5900),
            mqtt3_max_pending_acks: 61,
            mqtt3_max_pending_qos2: 67,
        };
        let got = fields(&config.limits.to_engine());
        assert_eq!(got, fields(&expected));
        // Every field moved off its default, so none reached the engine by
        // falling through to it.
        for ((name, value), (_, default)) in got.iter().zip(fields(&EngineLimits::default())) {
            assert_ne!(*value, default, "{name} kept its default");
        }
    }

    #[test]
    fn journal_recovery_is_strict_unless_asked() {
        assert_eq!(Config::default().persistence.recovery, Recovery::Strict);
        let config =
            Config::from_toml_str("[persistence]\nrecovery = \"truncate\"\n").expect("parses");
        assert_eq!(config.persistence.recovery, Recovery::Truncate);
        assert!(Config::from_toml_str("[persistence]\nrecovery = \"skip\"\n").is_err());
        let cli =
            Cli::try_parse_from(["roost", "--data-dir", "/d", "--recover-truncate"]).expect("cli");
        let config = Config::from_cli(cli).expect("config");
        assert_eq!(config.persistence.recovery, Recovery::Truncate);
    }

    #[test]
    fn store_repair_is_a_subcommand() {
        let cli =
            Cli::try_parse_from(["roost", "store", "repair", "--data-dir", "/d"]).expect("cli");
        assert_eq!(
            cli.command,
            Some(Command::Store {
                action: StoreCommand::Repair {
                    data_dir: Some(PathBuf::from("/d"))
                }
            })
        );
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Cli::try_parse_from([
            "roost",
            "--port",
            "1884",
            "--bind",
            "0.0.0.0",
            "--data-dir",
            "/var/lib/roost",
            "-vv",
        ])
        .expect("cli");
        let config = Config::from_cli(cli).expect("config");
        assert_eq!(config.listeners[0].bind, "0.0.0.0:1884".parse().expect("a"));
        assert_eq!(
            config.persistence.path.as_deref(),
            Some(Path::new("/var/lib/roost"))
        );
        assert_eq!(config.verbosity, 2);
        // Moved off loopback, the built-in listener no longer takes
        // anonymous clients (see anonymous_needs_an_explicit_yes_off_loopback).
        assert!(!config.listeners[0].allows_anonymous());
        assert_eq!(
            config.persistence.store,
            Store::Fjall,
            "--data-dir turns on the disk store"
        );

        let mut config = Config::from_toml_str(
            "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:1883\"\n\
             [[listener]]\nprotocol = \"ws\"\nbind = \"127.0.0.1:8080\"\n",
        )
        .expect("two listeners");
        let cli = Cli::try_parse_from(["roost", "-p", "8080"]).expect("cli");
        let e = config.apply_cli(&cli).expect_err("clash");
        assert_eq!(
            e.to_string(),
            "listener[1].bind: 127.0.0.1:8080 is already used by listener[0]"
        );
    }

    #[test]
    fn config_file_flag_reads_the_file() {
        let dir = std::env::temp_dir().join(format!("roost-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("roost.toml");
        std::fs::write(&path, "[limits]\nmax_inflight = 7\n").expect("write");
        let cli =
            Cli::try_parse_from(["roost", "--config", path.to_str().expect("utf8")]).expect("cli");
        assert_eq!(Config::from_cli(cli).expect("load").limits.max_inflight, 7);
        std::fs::write(&path, "[limits]\nmax_inflite = 7\n").expect("write");
        let e = Config::from_file(&path).expect_err("typo").to_string();
        assert!(e.starts_with(&format!("{}: ", path.display())), "{e}");
        assert!(e.contains("max_inflite"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        let e = Config::from_file(&dir.join("missing.toml")).expect_err("missing");
        assert!(matches!(e, ConfigError::Read { .. }));
    }

    #[test]
    fn passwd_subcommands_parse() {
        let cli = Cli::try_parse_from(["roost", "passwd", "add", "alice", "--password", "pw"])
            .expect("add");
        assert_eq!(
            cli.command,
            Some(Command::Passwd {
                action: PasswdCommand::Add {
                    user: "alice".into(),
                    password: Some("pw".into()),
                    password_stdin: false,
                    file: None
                }
            })
        );
        let cli =
            Cli::try_parse_from(["roost", "passwd", "rm", "bob", "--file", "/etc/pw"]).expect("rm");
        assert_eq!(
            cli.command,
            Some(Command::Passwd {
                action: PasswdCommand::Rm {
                    user: "bob".into(),
                    file: Some("/etc/pw".into())
                }
            })
        );
        assert!(Cli::try_parse_from(["roost", "--port", "70000"]).is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(err("[limits]\nmax_inflite = 3\n").contains("max_inflite"));
        assert!(err("colour = \"blue\"\n").contains("colour"));
        assert!(
            err("[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:1\"\nport = 3\n")
                .contains("port")
        );
        assert!(
            err("[[listener]]\nprotocol = \"quic\"\nbind = \"127.0.0.1:1\"\n").contains("quic")
        );
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            err(
                "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:1883\"\n\
                 [[listener]]\nprotocol = \"tls\"\nbind = \"127.0.0.1:8883\"\nkey = \"k.pem\"\n"
            ),
            "listener[1].cert: required for protocol \"tls\""
        );
        assert_eq!(
            err("[[listener]]\nprotocol = \"wss\"\nbind = \"127.0.0.1:8883\"\ncert = \"c.pem\"\n"),
            "listener[0].key: required for protocol \"wss\""
        );
        assert_eq!(
            err("[limits]\nmax_inflight = 0\n"),
            "limits.max_inflight: must be between 1 and 65535"
        );
        assert_eq!(
            err("[limits]\nmax_inflight = 65536\n"),
            "limits.max_inflight: must be between 1 and 65535"
        );
        assert_eq!(
            err("[limits]\nmax_client_id_len = 5\n"),
            "limits.max_client_id_len: must be between 23 and 65535"
        );
        assert_eq!(
            err("[sys]\ninterval_secs = -1\n"),
            "sys.interval_secs: must be between 0 and 86400"
        );
        assert!(
            err("[[listener]]\nprotocol = \"tcp\"\nbind = \"localhost\"\n")
                .starts_with("listener[0].bind: \"localhost\" is not an address:port")
        );
        assert!(
            err("[[listener]]\nprotocol = \"ws\"\nbind = \"127.0.0.1:80\"\nws_path = \"mqtt\"\n")
                .starts_with("listener[0].ws_path:")
        );
        assert_eq!(
            err("[limits]\nmax_topic_length = 65536\n"),
            "limits.max_topic_length: must be between 1 and 65535"
        );
        assert_eq!(
            err("[limits]\nauthorize_timeout_ms = 99\n"),
            "limits.authorize_timeout_ms: must be between 100 and 3600000"
        );
        assert_eq!(
            err("[limits]\nmax_retained_messages = -1\n"),
            "limits.max_retained_messages: must be between 0 and 4294967295"
        );
        assert_eq!(
            err(
                "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:1883\"\n\
                 [[listener]]\nprotocol = \"ws\"\nbind = \"127.0.0.1:1883\"\n"
            ),
            "listener[1].bind: 127.0.0.1:1883 is already used by listener[0]"
        );
        assert!(err("[persistence]\nstore = \"sqlite\"\n").contains("sqlite"));
        // Port 0 means "any free port": several listeners may ask for it.
        let config = Config::from_toml_str(
            "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
             [[listener]]\nprotocol = \"ws\"\nbind = \"127.0.0.1:0\"\n",
        )
        .expect("two listeners on port 0");
        assert_eq!(config.listeners.len(), 2);
    }

    #[test]
    fn fjall_needs_a_path_from_file_or_flag() {
        let config = Config::from_toml_str("[persistence]\nstore = \"fjall\"\n").expect("parses");
        assert_eq!(
            config.validate().expect_err("no path").to_string(),
            "persistence.path: required for store \"fjall\" (or pass --data-dir)"
        );
        let mut config = config;
        let cli = Cli::try_parse_from(["roost", "--data-dir", "/d"]).expect("cli");
        config.apply_cli(&cli).expect("apply");
        config.validate().expect("path from flag");
    }

    /// Every path a file names is relative to the file: the client CA and
    /// CRL too (they were taken from the working directory), and pid_file;
    /// --pid-file wins over the file.
    #[test]
    fn paths_in_a_file_are_relative_to_it() {
        let dir = std::env::temp_dir().join(format!("roost-anchor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("roost.toml");
        std::fs::write(
            &path,
            "pid_file = \"roost.pid\"\n[[listener]]\nprotocol = \"tls\"\nbind = \"127.0.0.1:8883\"\n\
             cert = \"s.crt\"\nkey = \"s.key\"\nclient_ca = \"ca.crt\"\ncrl_file = \"c.crl\"\n",
        )
        .expect("write");
        let config = Config::from_file(&path).expect("config");
        assert_eq!(config.pid_file, Some(dir.join("roost.pid")));
        let certs = &config.listeners[0].client_certs;
        assert_eq!(certs.ca, Some(dir.join("ca.crt")));
        assert_eq!(certs.crl, Some(dir.join("c.crl")));
        let flagged = cli(&[
            "-c",
            path.to_str().expect("utf-8"),
            "--pid-file",
            "/run/r.pid",
        ]);
        assert_eq!(flagged.pid_file, Some(PathBuf::from("/run/r.pid")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The configurations shipped for systemd and the container image
    /// parse, listen on every interface, and refuse anonymous clients in
    /// favour of a password file.
    #[test]
    fn packaged_configurations_refuse_anonymous_clients() {
        for (name, text, passwd) in [
            (
                "packaging/roost.toml",
                include_str!("../../packaging/roost.toml"),
                "passwd",
            ),
            (
                "packaging/docker/roost.toml",
                include_str!("../../packaging/docker/roost.toml"),
                "/data/passwd",
            ),
        ] {
            let config = Config::from_toml_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let l = &config.listeners[0];
            assert_eq!(l.bind, "0.0.0.0:1883".parse().expect("addr"), "{name}");
            assert!(!l.allows_anonymous(), "{name}");
            assert_eq!(l.password_file, Some(PathBuf::from(passwd)), "{name}");
        }
    }

    fn cli(args: &[&str]) -> Config {
        let cli =
            Cli::try_parse_from(std::iter::once("roost").chain(args.iter().copied())).expect("cli");
        Config::from_cli(cli).expect("config")
    }

    #[test]
    fn anonymous_needs_an_explicit_yes_off_loopback() {
        // The built-in listener on loopback allows anonymous clients.
        let config = cli(&[]);
        assert!(config.listeners[0].allows_anonymous());
        assert!(config.warnings().is_empty());
        for ip in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            let config = cli(&["--bind", ip]);
            assert!(config.listeners[0].allows_anonymous(), "{ip}");
            assert!(
                config.warnings().is_empty(),
                "{ip}: {:?}",
                config.warnings()
            );
        }
        // `--bind` off loopback: refused, and said once, with the remedy.
        for ip in [
            "0.0.0.0",
            "::",
            "192.168.1.5",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            let config = cli(&["--bind", ip]);
            let l = &config.listeners[0];
            assert!(!l.allows_anonymous(), "{ip}");
            assert!(!l.allow_anonymous, "{ip}: the stored value is settled too");
            let warnings = config.warnings();
            assert_eq!(warnings.len(), 1, "{ip}: {warnings:?}");
            assert!(
                warnings[0].starts_with(&format!("listener[0] (tcp on {})", l.bind))
                    && warnings[0].contains("refuses anonymous clients")
                    && warnings[0].contains("non-loopback")
                    && warnings[0].contains("allow_anonymous = true"),
                "{ip}: {warnings:?}"
            );
        }

        let file = |text: &str| Config::from_toml_str(text).expect("parses");
        // Written true opens a listener anywhere; not written keeps it shut.
        let config = file(
            "[[listener]]\nprotocol = \"tcp\"\nbind = \"0.0.0.0:1883\"\nallow_anonymous = true\n\
             [[listener]]\nprotocol = \"ws\"\nbind = \"[::]:8080\"\n\
             password_file = \"/etc/roost/passwd\"\n\
             [[listener]]\nprotocol = \"tcp\"\nbind = \"10.1.2.3:1883\"\nallow_anonymous = false\n\
             password_file = \"/etc/roost/passwd\"\n\
             [[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:1884\"\n\
             password_file = \"/etc/roost/passwd\"\n",
        );
        let allows: Vec<bool> = config
            .listeners
            .iter()
            .map(Listener::allows_anonymous)
            .collect();
        assert_eq!(allows, [true, false, false, false]);
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("listener[0]"), "{warnings:?}");
        assert!(
            warnings[0].contains("accepts anonymous clients from the network"),
            "{warnings:?}"
        );
        // Only the listener whose default the address changed gets the
        // note; it has a password file, so no "no client can connect".
        assert!(
            warnings[1].starts_with("listener[1] (ws on [::]:8080) refuses anonymous")
                && !warnings[1].contains("no client can connect"),
            "{warnings:?}"
        );

        // A written `true` survives `--bind`; the rule follows the address
        // if the embedding program moves a listener after loading.
        let mut config = file(
            "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:1883\"\nallow_anonymous = true\n",
        );
        let flags = Cli::try_parse_from(["roost", "--bind", "0.0.0.0"]).expect("cli");
        config.apply_cli(&flags).expect("apply");
        assert!(config.listeners[0].allows_anonymous());
        let mut local = Listener::default_local();
        local.bind.set_ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert!(local.allow_anonymous && !local.allows_anonymous());
    }

    #[test]
    fn file_listeners_default_to_no_anonymous_and_warn() {
        let config =
            Config::from_toml_str("[[listener]]\nprotocol = \"tcp\"\nbind = \"0.0.0.0:1883\"\n")
                .expect("parses");
        assert!(!config.listeners[0].allow_anonymous);
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("no client can connect"));

        let config = Config::from_toml_str(
            "[[listener]]\nprotocol = \"tcp\"\nbind = \"[::]:1883\"\nallow_anonymous = true\n\
             password_file = \"/etc/roost/passwd\"\n",
        )
        .expect("parses");
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());

        let config = Config::from_toml_str(
            "[[listener]]\nprotocol = \"tcp\"\nbind = \"[::]:1883\"\nallow_anonymous = true\n\
             ws_path = \"/x\"\n[persistence]\nflush_interval_ms = 5\n",
        )
        .expect("parses");
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
    }
}
