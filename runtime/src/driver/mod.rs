//! The driver: everything between the sockets and the engine that is the
//! same on every runtime, as a sans-IO state machine like the engine itself.
//!
//! It owns the engine, each connection's TLS and WebSocket stages and output
//! queue, password files and ACLs, the bounded queue of password checks,
//! store batching and the durability policy, in-process subscribers, the
//! lingering close, accept back-off and the shutdown grace period. It never
//! reads a clock, touches a socket or a file, spawns a thread or blocks:
//! time comes in as `now`, bytes come in from the runtime and go out through
//! a writer the runtime lends, and blocking work leaves as a [`Job`].
//!
//! # The loop
//!
//! ```text
//!   accept ──► handle_accept        read ──► handle_read      job done ──► handle_job_done
//!   socket gone ──► handle_closed   timer ──► handle_timeout  commands ──► handle_publish, …
//!        after any of them: drain poll_event() to None, re-arm poll_timeout()
//!   Event::Wake(conn) ──► handle_write(conn, writer), then obey interest(conn)
//!   Event::Job(job)   ──► run it on a worker, then handle_job_done(result)
//! ```
//!
//! The contract, in full:
//!
//! 1. After any `handle_*` call, drain [`Driver::poll_event`] until it
//!    returns `None`, then arm a timer for [`Driver::poll_timeout`] and call
//!    [`Driver::handle_timeout`] when it passes. Spurious timeouts are
//!    harmless. `now` should not go backwards; if it does (a clock that
//!    steps back), the driver and the engine take it as the latest `now`
//!    they were given, and a jump forward (a suspended machine) fires
//!    every deadline it passed in one `handle_timeout`.
//! 2. [`Event::Wake`] means the connection has output, or must change what
//!    the runtime does with it: call [`Driver::handle_write`] with a writer
//!    for its socket, then look at [`Driver::interest`]: read only while
//!    `read` is set, shut down the write side once `shutdown_write` is set
//!    (keep reading: the driver discards what a closing peer still sends),
//!    drop the socket once `close` is set (no [`Driver::handle_closed`]
//!    then). A write that would block: wait until the socket is writable
//!    and call `handle_write` again.
//! 3. When the peer closes or the socket fails, call
//!    [`Driver::handle_closed`] once and drop the socket.
//! 4. [`Event::Job`]: run it off the event loop ([`Job::run`]) and hand the
//!    result to [`Driver::handle_job_done`]. At most [`MAX_JOBS`] are out at
//!    once.
//! 5. After [`Driver::handle_shutdown`], stop accepting on
//!    [`Event::StopListening`] and keep going until [`Event::Stopped`].
//!
//! A runtime is then readiness, spawning, timers and a worker pool
//! ([`crate::pool::Pool`]); `roost-tokio`, `roost-smol` and `roost-mio` are
//! each that and nothing more.

mod bridge;
mod cluster;
mod files;
pub mod http;
pub(crate) mod jobs;
mod metrics;
mod reload;
#[cfg(test)]
mod tests;

pub use bridge::DIAL_TIMEOUT;
pub use files::{FileError, Files};
pub use jobs::{Job, JobDone};

use crate::config::{self, Config};
use crate::passwd::PasswordFile;
use crate::tls::TlsStage;
use crate::ws::WsStage;
use bytes::Bytes;
use files::AclPolicy;
use jobs::{DoneKind, JobKind, PasswordCheck, StoreJob};
use roost_core::broker::{
    self, AccessPolicy, Action, AuthDecision, AuthRequest, AuthToken, Authentication,
    AuthorizeDecision, AuthorizeRequest, AuthorizeToken, Broker, CloseReason, ConnId, ConnInfo,
    Event as EngineEvent, Instant, LocalSubscription, Message, Operation, PublishDecision, StoreId,
    StoreOp, SubscribeDecision,
};
use roost_core::codec::{QoS, ReasonCode};
use roost_core::hash::SeededState;
use roost_core::topic::TopicFilter;
use roost_persistence::{Recovered, Store};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// How long the driver keeps reading (and discarding) after it has written
/// a connection's last bytes and the runtime shut down its write side: a
/// peer that is still sending when the broker closes would otherwise get a
/// TCP reset, which can destroy the final DISCONNECT before the peer reads
/// it.
pub const LINGER: Duration = Duration::from_secs(2);

/// The most the driver reads and discards during [`LINGER`].
pub const LINGER_BYTES: usize = 1024 * 1024;

/// How long [`Driver::handle_shutdown`] waits for connections to take
/// their final DISCONNECT before it drops them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Password checks (argon2, tens of milliseconds and ~19 MiB each) that run
/// at once. More would only queue inside the CPU and multiply the memory.
pub const MAX_PASSWORD_CHECKS: usize = 2;

/// Password checks that wait for a free slot; a CONNECT beyond them is
/// refused at once with 0x89 Server busy (MQTT 3: 0x03 Server unavailable).
pub const PASSWORD_QUEUE: usize = 64;

/// The most [`Job`]s out at once: the password checks plus one store job.
pub const MAX_JOBS: usize = MAX_PASSWORD_CHECKS + 1;

/// The first and the longest pause of a listener after a failed accept
/// (out of file descriptors, typically): the back-off doubles in between.
pub const ACCEPT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_secs(1));

/// The first and the longest wait between two attempts to resume an
/// interrupted store (a full disk): each attempt re-reads the journal, so
/// the wait doubles in between.
pub const STORE_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// Why a driver could not be built from a configuration.
#[derive(Debug)]
#[non_exhaustive]
pub enum DriverError {
    /// A file the configuration names could not be loaded.
    File(FileError),
    /// A configured feature that this build does not have, or a setting it
    /// needs that is missing.
    Unsupported(&'static str),
    /// The store could not be opened or read.
    Store {
        /// Why.
        source: roost_persistence::StoreError,
    },
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::File(e) => e.fmt(f),
            DriverError::Unsupported(what) => f.write_str(what),
            DriverError::Store { source } => write!(f, "persistence: {source}"),
        }
    }
}

impl std::error::Error for DriverError {}

/// An answer to an [`Event::Authenticate`] or an [`Event::Authorize`], for
/// [`Driver::handle_decided`].
#[derive(Debug)]
pub enum Decided {
    /// The authentication hook's decision.
    Auth(AuthToken, AuthDecision),
    /// The authorization hook's decision.
    Authorize(AuthorizeToken, AuthorizeDecision),
}

/// What the runtime must do next; drained with [`Driver::poll_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// The connection has output, or its [`Driver::interest`] changed:
    /// call [`Driver::handle_write`] for it, then obey the interest.
    Wake(ConnId),
    /// Run this on a worker and hand the result to
    /// [`Driver::handle_job_done`].
    Job(Job),
    /// A message for an in-process subscription. The runtime's queue for
    /// it holds at most [`Driver::local_queue_capacity`] messages; drop the
    /// message when it is full.
    Deliver {
        /// The subscription it matched.
        subscription: LocalSubscription,
        /// The message.
        message: Message,
    },
    /// A CONNECT for the embedding program to decide (only after
    /// [`Driver::use_external_authentication`]); answer with
    /// [`Driver::handle_auth_decided`].
    Authenticate(AuthRequest),
    /// A publish or subscribe for the embedding program to decide (only
    /// after [`Driver::use_external_authorization`]); answer with
    /// [`Driver::handle_authorize_decided`] within the engine's
    /// `limits.authorize_timeout`.
    Authorize(AuthorizeRequest),
    /// Open a TCP connection to `addr` (`host:port`) for a bridge; then
    /// call [`Driver::handle_connected`] with `conn` and serve the socket
    /// like an accepted one, or [`Driver::handle_connect_failed`].
    Connect {
        /// The connection's handle, once established.
        conn: ConnId,
        /// Where to connect.
        addr: String,
    },
    /// Bind a listener a reload added: `bind` with
    /// [`crate::net::listen_with`], accept on it as listener number `listener`
    /// (the `listener` of [`Driver::handle_accept`]), and call
    /// [`Driver::handle_listening`], or [`Driver::handle_listen_failed`].
    Listen {
        /// Its number.
        listener: usize,
        /// Where to bind.
        bind: SocketAddr,
        /// Whether to bind with `SO_REUSEPORT` (the listener's `reuse_port`).
        reuse_port: bool,
    },
    /// Stop accepting on listener number `listener` and close its socket
    /// (a reload removed it); the driver closes its connections.
    Unlisten {
        /// Its number.
        listener: usize,
    },
    /// Stop accepting connections (after [`Driver::handle_shutdown`]).
    StopListening,
    /// Everything is closed and the store is flushed: the runtime may end.
    Stopped,
}

/// What the runtime should do with a connection's socket now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    /// Read from it (false while its output is over the buffer limit: a
    /// fast publisher waits until its own output drains).
    pub read: bool,
    /// Everything is written and the broker is closing: shut down the
    /// write side (once), and keep reading.
    pub shutdown_write: bool,
    /// Drop the socket now.
    pub close: bool,
}

/// What [`Driver::handle_write`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStatus {
    /// Everything pending was written.
    Drained,
    /// The writer would block; call again once the socket is writable.
    WouldBlock,
}

struct ListenerState {
    config: config::Listener,
    /// Listeners with the same authentication share a class; a session
    /// created through one class is never resumed through another (see
    /// `ConnInfo::auth_class`).
    auth_class: u16,
    tls: Option<Arc<rustls::ServerConfig>>,
    passwords: Option<Arc<PasswordFile>>,
    acl: Option<Arc<crate::acl::Acl>>,
    /// A reload removed it (or it never bound): it accepts nothing, and
    /// its number is never reused.
    removed: bool,
    /// The last pause after a failed accept, doubled by the next failure
    /// and forgotten by the next success.
    backoff: Option<Duration>,
    /// Connections accepted on it, for metrics.
    accepted: u64,
    /// The address it is bound to (see [`Driver::handle_listening`]), once
    /// known: `bind` with port 0 becomes the port the system chose.
    bound: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// The broker ended it: write what is left, then linger.
    Closing,
    /// Write side shut; reading and discarding until the deadline.
    Lingering {
        discarded: usize,
    },
}

struct ConnIo {
    listener: usize,
    // Boxed: most connections are plain TCP, and an idle connection should
    // not carry a TLS session's or WebSocket's worth of inline space.
    tls: Option<Box<TlsStage>>,
    ws: Option<Box<WsStage>>,
    /// A connection on the `[http]` listener, answered by the driver.
    http: Option<Box<http::HttpStage>>,
    out: VecDeque<Bytes>,
    out_len: usize,
    phase: Phase,
    /// A [`Event::Wake`] for it is queued and not yet taken.
    woken: bool,
    /// Over the output limit: the engine was told (`handle_blocked`).
    blocked: bool,
    /// The TLS handshake's client certificate has been looked at (on a
    /// listener that maps certificates to user names).
    identity_checked: bool,
    /// A verified client certificate named the user: the engine was told
    /// (`set_identity`), and no password is checked.
    cert_user: bool,
    /// The peer, for the operator's log lines.
    remote: Option<SocketAddr>,
    /// When it was accepted: a disconnect logs how long it lasted.
    opened: Instant,
    /// The bridge whose outbound connection this is.
    bridge: Option<usize>,
}

impl ConnIo {
    /// A plain connection in phase `Open`.
    fn new(listener: usize, now: Instant) -> ConnIo {
        ConnIo {
            listener,
            tls: None,
            ws: None,
            http: None,
            out: VecDeque::new(),
            out_len: 0,
            phase: Phase::Open,
            woken: false,
            blocked: false,
            identity_checked: true,
            cert_user: false,
            remote: None,
            opened: now,
            bridge: None,
        }
    }
}

/// Engine calls that arise while the driver drains the engine's actions:
/// made after the drain, never during it.
enum FollowUp {
    Blocked(ConnId),
    Auth(AuthToken, AuthDecision),
    Authorize(AuthorizeToken, AuthorizeDecision),
}

/// Where the store is: with the driver, out on a job, or never configured.
enum StoreSlot {
    None,
    Idle(Box<dyn Store>),
    Busy,
}

/// An interrupted store (a full disk, an I/O error): every batch meanwhile
/// is answered as failed at once, and the store is asked to resume on a
/// back-off.
struct StoreOutage {
    retry_at: Instant,
    wait: Duration,
}

struct Shutdown {
    grace_until: Instant,
    stage: ShutdownStage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShutdownStage {
    /// Waiting for connections to take their DISCONNECT and go.
    Draining,
    /// Connections are gone; the store's final flush is out (or next).
    Flushing { sent: bool },
    /// [`Event::Stopped`] was said.
    Done,
}

/// The driver: one engine and the I/O state of its connections.
pub struct Driver {
    broker: Broker,
    listeners: Vec<ListenerState>,
    /// Keyed by the engine's seed, like every table in `core`: shutdown
    /// walks it, and the order it walks reaches the wire (which connection
    /// is dropped first), so one seed must give one order. Boxed: an idle
    /// connection costs its record plus one word in the table, not a
    /// record's worth of table slack (the table is between half and seven
    /// eighths full).
    conns: HashMap<ConnId, Box<ConnIo>, SeededState>,
    events: VecDeque<Event>,
    follow_ups: Vec<FollowUp>,
    /// Password checks waiting for a slot, and how many run.
    password_queue: VecDeque<PasswordCheck>,
    passwords_running: usize,
    external_auth: bool,
    external_authorize: bool,
    /// The embedding program set the authorization policy: reloading the
    /// ACL files must not replace it.
    custom_policy: bool,
    store: StoreSlot,
    store_batches: Vec<(StoreId, Vec<StoreOp>)>,
    store_outage: Option<StoreOutage>,
    retry_due: bool,
    /// With periodic durability: how often, and when next, to flush.
    flush_every: Option<Duration>,
    next_flush: Option<Instant>,
    flush_due: bool,
    /// Lingering connections by deadline: every linger lasts [`LINGER`], so
    /// start order is deadline order. Entries of connections that ended
    /// early are skipped.
    lingering: VecDeque<(Instant, ConnId)>,
    shutdown: Option<Shutdown>,
    outbound_limit: usize,
    local_queue: usize,
    denied: ReasonCode,
    scratch: Vec<u8>,
    wire: Vec<u8>,
    /// HTTP connections open, and their idle deadlines in the order they
    /// were set (every one lasts [`http::HTTP_IDLE`]; stale entries are
    /// skipped).
    http_open: usize,
    http_idle: VecDeque<(Instant, ConnId)>,
    metrics: metrics::DriverMetrics,
    bridges: Vec<bridge::Bridge>,
    /// The last bridge id given out.
    next_bridge: usize,
    /// The listeners' authentication classes (see `ListenerState::auth_class`).
    classes: Vec<reload::AuthSetup>,
    /// Reads the engine thread's CPU time for `/metrics`; set by
    /// [`Driver::open`], which every runtime calls on its engine thread's
    /// behalf. `None` keeps [`Driver::new`] free of I/O.
    busy_probe: Option<fn() -> Option<Duration>>,
    /// The link to the other nodes, with `[cluster]`.
    cluster: Option<cluster::ClusterSide>,
    /// The latest `now` given: an earlier one (a clock stepping back) is
    /// taken as this, so time never goes backwards inside the driver.
    clock: Instant,
}

/// A store opened for the driver, with what it held.
pub struct OpenedStore {
    /// The store.
    pub store: Box<dyn Store>,
    /// What it held at start.
    pub recovered: Recovered,
}

impl Driver {
    /// Opens the store a configuration names (the blocking part of start-up,
    /// with [`Files::load`]). `None` for the memory store.
    pub fn open_store(config: &Config) -> Result<Option<OpenedStore>, DriverError> {
        match (&config.persistence.store, &config.persistence.path) {
            (config::Store::Fjall, Some(path)) => {
                let durability = match config.persistence.durability {
                    config::Durability::Sync => roost_persistence::Durability::Sync,
                    config::Durability::Periodic => roost_persistence::Durability::Periodic,
                };
                let recovery = match config.persistence.recovery {
                    config::Recovery::Strict => roost_persistence::Recovery::Strict,
                    config::Recovery::Truncate => roost_persistence::Recovery::Truncate,
                };
                let mut store =
                    roost_persistence::FjallStore::open_with(path, durability, recovery)
                        .map_err(|source| DriverError::Store { source })?;
                if !store.report().is_clean() {
                    warn!(path = %path.display(), "store recovered: {}", store.report());
                }
                let recovered = store
                    .recover()
                    .map_err(|source| DriverError::Store { source })?;
                info!(
                    path = %path.display(),
                    sessions = recovered.sessions.len(),
                    retained = recovered.retained.len(),
                    "store opened"
                );
                Ok(Some(OpenedStore {
                    store: Box::new(store),
                    recovered,
                }))
            }
            (config::Store::Fjall, None) => Err(DriverError::Unsupported(
                "persistence.store = \"fjall\" needs persistence.path (or --data-dir)",
            )),
            (config::Store::Memory, _) => Ok(None),
        }
    }

    /// Loads what the configuration names ([`Files::load`],
    /// [`Driver::open_store`]) and builds the driver: the one blocking call
    /// of a runtime's start-up.
    pub fn open(config: &Config, now: Instant) -> Result<Driver, DriverError> {
        let files = Files::load(config);
        let store = Self::open_store(config)?;
        let mut driver = Driver::new(config, files, store, now)?;
        driver.busy_probe = Some(crate::clock::thread_cpu_time);
        Ok(driver)
    }

    /// Builds the driver from a configuration and what it names, already
    /// loaded. Fails if a file failed to load.
    pub fn new(
        config: &Config,
        files: Files,
        store: Option<OpenedStore>,
        now: Instant,
    ) -> Result<Driver, DriverError> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut classes = Vec::new();
        for (l, f) in config.listeners.iter().zip(files.listeners) {
            let auth_class = reload::auth_class(&mut classes, l);
            let tls = f.tls.transpose().map_err(DriverError::File)?;
            let passwords = f.passwords.transpose().map_err(DriverError::File)?;
            let acl = f.acl.transpose().map_err(DriverError::File)?;
            if let Some(file) = &passwords {
                for warning in file.warnings() {
                    warn!(
                        "{}: {warning}",
                        l.password_file
                            .as_deref()
                            .unwrap_or(std::path::Path::new("-"))
                            .display()
                    );
                }
            }
            listeners.push(ListenerState {
                config: l.clone(),
                auth_class,
                tls,
                passwords,
                acl,
                removed: false,
                backoff: None,
                accepted: 0,
                bound: None,
            });
        }
        let denied = files::denied_code(config);
        let acls: Vec<_> = listeners.iter().map(|l| l.acl.clone()).collect();
        let policy = acls
            .iter()
            .any(Option::is_some)
            .then_some(AclPolicy { acls, denied });
        let needs_auth = listeners
            .iter()
            .any(|l| l.passwords.is_some() || !l.config.allows_anonymous());
        let mut engine = engine_config(config, needs_auth, policy);
        // The HTTP endpoint is a listener after the MQTT ones.
        if let Some(http) = &config.http {
            listeners.push(ListenerState {
                config: http.listener(),
                auth_class: u16::MAX,
                tls: None,
                passwords: None,
                acl: None,
                removed: false,
                backoff: None,
                accepted: 0,
                bound: None,
            });
        }
        engine.cluster = config.cluster.is_some();
        let (broker, store) = match store {
            Some(opened) => {
                // Only a durable store makes the engine emit storage actions
                // and hold acknowledgements for them.
                engine.persistence = true;
                (
                    Broker::restore(engine, now, opened.recovered),
                    StoreSlot::Idle(opened.store),
                )
            }
            None => (Broker::new(engine, now), StoreSlot::None),
        };
        let seed = engine_seed(&broker);
        let mut bridges = Vec::with_capacity(config.bridges.len());
        for ((i, b), tls) in config.bridges.iter().enumerate().zip(files.bridges) {
            let mut bridge = bridge::Bridge::new(b, i + 1, seed, now);
            bridge.tls = tls.transpose().map_err(DriverError::File)?;
            bridges.push(bridge);
        }
        let flush_every = (matches!(store, StoreSlot::Idle(_))
            && config.persistence.durability == config::Durability::Periodic)
            .then(|| Duration::from_millis(config.persistence.flush_interval_ms.max(1)));
        // The cluster link's thread starts with the first events.
        let mut events = VecDeque::new();
        let cluster = config.cluster.as_ref().map(|c| {
            let every = (config.sys.interval_secs > 0)
                .then(|| Duration::from_secs(u64::from(config.sys.interval_secs)));
            let (side, start) = cluster::ClusterSide::new(c, every, now);
            events.push_back(start);
            side
        });
        Ok(Driver {
            broker,
            listeners,
            conns: HashMap::with_hasher(SeededState::new(seed)),
            events,
            follow_ups: Vec::new(),
            password_queue: VecDeque::new(),
            passwords_running: 0,
            external_auth: false,
            external_authorize: false,
            custom_policy: false,
            store,
            store_batches: Vec::new(),
            store_outage: None,
            retry_due: false,
            next_flush: flush_every.map(|every| now + every),
            flush_every,
            flush_due: false,
            lingering: VecDeque::new(),
            shutdown: None,
            outbound_limit: usize::try_from(config.limits.outbound_buffer_bytes)
                .unwrap_or(usize::MAX),
            local_queue: usize::try_from(config.limits.max_queued_messages)
                .unwrap_or(1)
                .max(1),
            denied,
            scratch: Vec::new(),
            wire: Vec::new(),
            http_open: 0,
            http_idle: VecDeque::new(),
            metrics: metrics::DriverMetrics::default(),
            busy_probe: None,
            next_bridge: bridges.len(),
            bridges,
            classes,
            cluster,
            clock: now,
        })
    }

    /// Sends every authentication request to the embedding program
    /// ([`Event::Authenticate`]) instead of the password files.
    pub fn use_external_authentication(&mut self) {
        self.external_auth = true;
        self.broker.set_authentication(Authentication::External);
    }

    /// Replaces the authorization policy (for embedding programs), and the
    /// ACL files with it: [`Driver::handle_reload`] leaves it in place.
    pub fn set_authorization(&mut self, policy: Box<dyn AccessPolicy>) {
        self.custom_policy = true;
        self.broker.set_authorization(policy);
    }

    /// Sends the publish and subscribe decisions the policy defers to the
    /// embedding program ([`Event::Authorize`]). Unless a policy was set
    /// with [`Driver::set_authorization`], every one is deferred
    /// ([`broker::DeferAll`]), replacing the ACL files.
    ///
    /// Without this, a deferred decision has nobody to answer it and is
    /// refused at once (0x87 Not authorized).
    pub fn use_external_authorization(&mut self) {
        self.external_authorize = true;
        if !self.custom_policy {
            self.set_authorization(Box::new(broker::DeferAll));
        }
    }

    // ----- getters -----

    /// The engine (for statistics and inspection).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Every listener the runtime binds at start, in this order (the index
    /// is the `listener` of [`Driver::handle_accept`]): the configured MQTT
    /// listeners, then the `[http]` endpoint if configured. Listeners a
    /// reload adds come later, numbered after these ([`Event::Listen`]);
    /// a removed one keeps its number (see [`Driver::is_listener_removed`]).
    pub fn listeners(&self) -> impl Iterator<Item = &config::Listener> {
        self.listeners.iter().map(|l| &l.config)
    }

    /// The runtime bound listener `index` (in [`Driver::listeners`] order)
    /// to `addr`: logged, and named in the connect lines of its clients.
    pub fn handle_listening(&mut self, index: usize, addr: SocketAddr) {
        if let Some(l) = self.listeners.get_mut(index) {
            l.bound = Some(addr);
            info!(protocol = l.config.protocol.name(), %addr, "listening");
        }
    }

    /// Connections the runtime holds a socket for (lingering ones too).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether this driver persists state (a store is configured).
    pub fn has_store(&self) -> bool {
        !matches!(self.store, StoreSlot::None)
    }

    /// How many messages a runtime's queue for one in-process subscription
    /// holds (the session queue limit); beyond it, drop.
    pub fn local_queue_capacity(&self) -> usize {
        self.local_queue
    }

    /// Password checks running and waiting.
    pub fn password_checks(&self) -> (usize, usize) {
        (self.passwords_running, self.password_queue.len())
    }

    /// The reason code refused subscriptions get.
    pub fn subscribe_denied_code(&self) -> ReasonCode {
        self.denied
    }

    /// What the runtime should do with `conn`'s socket. A connection the
    /// driver no longer knows is to be closed.
    pub fn interest(&self, conn: ConnId) -> Interest {
        match self.conns.get(&conn) {
            None => Interest {
                read: false,
                shutdown_write: false,
                close: true,
            },
            Some(io) => match io.phase {
                Phase::Open => Interest {
                    read: !io.blocked,
                    shutdown_write: false,
                    close: false,
                },
                Phase::Closing => Interest {
                    read: true,
                    shutdown_write: false,
                    close: false,
                },
                Phase::Lingering { .. } => Interest {
                    read: true,
                    shutdown_write: true,
                    close: false,
                },
            },
        }
    }

    /// Whether `conn` has bytes waiting to be written.
    pub fn has_output(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|io| !io.out.is_empty())
    }

    // ----- outputs -----

    /// The next thing the runtime must do, or `None` when there is nothing.
    /// Drain it after every `handle_*` call.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front()?;
        if let Event::Wake(conn) = &event {
            if let Some(io) = self.conns.get_mut(conn) {
                io.woken = false;
            }
        }
        Some(event)
    }

    /// When [`Driver::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let linger = self.lingering.front().map(|&(at, _)| at);
        let grace = self
            .shutdown
            .as_ref()
            .filter(|s| s.stage == ShutdownStage::Draining)
            .map(|s| s.grace_until);
        let retry = self.store_outage.as_ref().map(|o| o.retry_at);
        let http_idle = self.http_idle.front().map(|&(at, _)| at);
        [
            self.broker.poll_timeout(),
            linger,
            http_idle,
            self.next_flush,
            grace,
            retry,
            self.bridges_timeout(),
            self.cluster_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The latest time the driver was given (see [`Driver::new`]'s `now`
    /// and every `handle_*`): it never goes backwards.
    pub fn now(&self) -> Instant {
        self.clock
    }

    /// `now`, or the latest time already given if `now` is earlier: a
    /// runtime whose clock steps back (or that reads it on two threads)
    /// must not move deadlines back or reorder the lingering queue.
    fn clock(&mut self, now: Instant) -> Instant {
        self.clock = self.clock.max(now);
        self.clock
    }

    // ----- inputs -----

    /// A socket was accepted on listener number `listener`.
    pub fn handle_accept(
        &mut self,
        now: Instant,
        listener: usize,
        remote: Option<SocketAddr>,
    ) -> ConnId {
        let now = self.clock(now);
        let index = listener.min(self.listeners.len().saturating_sub(1));
        let l = &mut self.listeners[index];
        l.backoff = None;
        l.accepted += 1;
        if l.config.protocol == config::Protocol::Http {
            let conn = self.http_accept(now, index, remote);
            self.pump(now);
            return conn;
        }
        let mut failed_tls = false;
        let tls = match &l.tls {
            Some(cfg) => match TlsStage::new(cfg.clone()) {
                Ok(stage) => Some(Box::new(stage)),
                Err(e) => {
                    warn!(error = %e, "TLS session could not be created");
                    failed_tls = true;
                    None
                }
            },
            None => {
                failed_tls = l.config.protocol.is_tls();
                None
            }
        };
        let ws = l.config.protocol.is_ws().then(|| {
            Box::new(
                WsStage::new(
                    &l.config.ws_path,
                    self.broker.config().limits.max_packet_size as usize,
                )
                .with_max_outbound(self.outbound_limit),
            )
        });
        let auth_class = l.auth_class;
        let conn = self.broker.handle_open(
            now,
            ConnInfo {
                remote,
                listener: u16::try_from(index).unwrap_or(u16::MAX),
                auth_class,
            },
        );
        debug!(%conn, remote = %DisplayAddr(remote), listener = index, "accepted");
        self.conns.insert(
            conn,
            Box::new(ConnIo {
                listener: index,
                tls,
                ws,
                http: None,
                out: VecDeque::new(),
                out_len: 0,
                phase: Phase::Open,
                woken: false,
                blocked: false,
                identity_checked: false,
                cert_user: false,
                remote,
                opened: now,
                bridge: None,
            }),
        );
        if failed_tls {
            self.fail(now, conn, "TLS unavailable");
        } else if self.listeners[index].removed {
            // Accepted just before the runtime took the listener away.
            self.broker.close_connection(now, conn);
        }
        self.pump(now);
        conn
    }

    /// Accepting on `listener` failed (out of file descriptors, typically).
    /// Returns when the runtime should accept on it again (the pause
    /// doubles with each failure in a row, up to [`ACCEPT_BACKOFF`]'s
    /// longest); connections already open are served meanwhile.
    pub fn handle_accept_error(
        &mut self,
        now: Instant,
        listener: usize,
        error: &io::Error,
    ) -> Instant {
        let now = self.clock(now);
        let Some(l) = self.listeners.get_mut(listener) else {
            return now;
        };
        let pause = match l.backoff {
            Some(last) => (last * 2).min(ACCEPT_BACKOFF.1),
            None => ACCEPT_BACKOFF.0,
        };
        warn!(listener, %error, pause_ms = pause.as_millis() as u64, "accept failed; pausing this listener");
        l.backoff = Some(pause);
        now + pause
    }

    /// Bytes were read from `conn`'s socket.
    pub fn handle_read(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        let now = self.clock(now);
        let Some(io) = self.conns.get_mut(&conn) else {
            return;
        };
        match io.phase {
            Phase::Open if io.http.is_some() => {
                self.http_read(now, conn, bytes);
                self.pump(now);
                return;
            }
            Phase::Open if io.bridge.is_some() => {
                let b = io.bridge.unwrap_or_default();
                match io.tls.as_deref_mut() {
                    None => self.bridge_read(now, b, bytes),
                    Some(tls) => {
                        let mut plain = std::mem::take(&mut self.scratch);
                        plain.clear();
                        let result = tls.feed_ciphertext(bytes);
                        tls.take_plaintext(&mut plain);
                        // Handshake records and alerts for the remote.
                        self.push_stage_output(conn);
                        if !plain.is_empty() {
                            self.bridge_read(now, b, &plain);
                        }
                        self.scratch = plain;
                        if let Err(e) = result {
                            let name = self
                                .bridges
                                .iter()
                                .find(|x| x.id == b)
                                .map_or("", |x| x.name());
                            warn!(bridge = name, error = %e, "bridge TLS failed");
                            self.bridge_closed(now, b);
                            self.close_bridge_conn(now, conn);
                        }
                    }
                }
                self.pump(now);
                return;
            }
            Phase::Open => {}
            Phase::Closing => return,
            Phase::Lingering { ref mut discarded } => {
                *discarded += bytes.len();
                if *discarded >= LINGER_BYTES {
                    self.forget(conn);
                }
                return;
            }
        }
        let mut plain = std::mem::take(&mut self.scratch);
        plain.clear();
        let mut result: Result<(), String> = Ok(());
        match (&mut io.tls, &mut io.ws) {
            (None, None) => {}
            (Some(tls), ws) => {
                result = tls.feed_ciphertext(bytes).map_err(|e| e.to_string());
                tls.take_plaintext(&mut plain);
                if let Some(ws) = ws {
                    if result.is_ok() {
                        result = ws.feed(&plain).map_err(|e| e.to_string());
                    }
                    plain.clear();
                    ws.take_inbound(&mut plain);
                }
            }
            (None, Some(ws)) => {
                result = ws.feed(bytes).map_err(|e| e.to_string());
                ws.take_inbound(&mut plain);
            }
        }
        let staged = io.tls.is_some() || io.ws.is_some();
        if !io.identity_checked && result.is_ok() {
            if let Some(tls) = io.tls.as_deref().filter(|t| !t.is_handshaking()) {
                io.identity_checked = true;
                let mode = self.listeners[io.listener].config.client_certs.identity;
                if let Some(cert) = tls.peer_certificate() {
                    if mode != config::CertIdentity::None {
                        match crate::tls::certificate_identity(cert, mode)
                            .and_then(|name| roost_core::MqttStr::copy_from_str(&name).ok())
                        {
                            Some(name) => {
                                debug!(%conn, user = name.as_str(), "client certificate names the user");
                                io.cert_user = true;
                                self.broker.set_identity(conn, name);
                            }
                            None => {
                                result = Err(match mode {
                                    config::CertIdentity::Subject => {
                                        "client certificate subject is not usable as a user name"
                                    }
                                    _ => "client certificate has no common name (CN) usable as a user name",
                                }
                                .to_owned());
                                // Nothing of this client reaches the engine.
                                plain.clear();
                            }
                        }
                    }
                }
            }
        }
        // Handshake answers (TLS records, the WebSocket upgrade response).
        self.push_stage_output(conn);
        if staged {
            if !plain.is_empty() {
                self.broker.handle_bytes(now, conn, &plain);
            }
        } else {
            self.broker.handle_bytes(now, conn, bytes);
        }
        self.scratch = plain;
        if let Err(e) = result {
            self.fail(now, conn, &e);
        }
        self.pump(now);
    }

    /// Writes what is pending for `conn` with `write`, which is given as
    /// many buffers as are pending and returns how many bytes it wrote (a
    /// vectored socket write). Stops at `WouldBlock`. An error other than
    /// `WouldBlock`/`Interrupted` is returned: the socket is dead, call
    /// [`Driver::handle_closed`].
    pub fn handle_write(
        &mut self,
        now: Instant,
        conn: ConnId,
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<WriteStatus> {
        let now = self.clock(now);
        let Some(io) = self.conns.get_mut(&conn) else {
            return Ok(WriteStatus::Drained);
        };
        let mut status = WriteStatus::Drained;
        while !io.out.is_empty() {
            // On the stack: a write per message must not cost an allocation.
            let mut slices = [IoSlice::new(&[]); 64];
            let mut count = 0;
            for (slot, b) in slices.iter_mut().zip(&io.out) {
                *slot = IoSlice::new(b);
                count += 1;
            }
            match write(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    io.out_len -= n;
                    while n > 0 {
                        let Some(front) = io.out.front_mut() else {
                            break;
                        };
                        if n >= front.len() {
                            n -= front.len();
                            io.out.pop_front();
                        } else {
                            let _ = front.split_to(n);
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    status = WriteStatus::WouldBlock;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // An idle connection should not keep a queue's worth of capacity.
        if io.out.is_empty() && io.out.capacity() > 0 {
            io.out = VecDeque::new();
        }
        // Stage output held back while the queue was full.
        if status == WriteStatus::Drained && (io.tls.is_some() || io.ws.is_some()) {
            self.push_stage_output(conn);
            if self.has_output(conn) {
                self.wake(conn);
            }
        }
        let Some(io) = self.conns.get_mut(&conn) else {
            return Ok(status);
        };
        if io.out.is_empty() && io.phase == Phase::Closing {
            io.phase = Phase::Lingering { discarded: 0 };
            self.lingering.push_back((now + LINGER, conn));
            self.wake(conn);
        }
        // Resume deliveries once the buffer is half empty again, so a slow
        // reader does not flap between blocked and writable.
        let Some(io) = self.conns.get_mut(&conn) else {
            return Ok(status);
        };
        if io.blocked && io.out_len <= self.outbound_limit / 2 {
            io.blocked = false;
            if io.phase == Phase::Open {
                self.broker.handle_writable(now, conn);
                self.wake(conn);
            }
            self.pump(now);
        }
        Ok(status)
    }

    /// `conn`'s socket is gone (closed by the peer, or failed). Call once;
    /// not needed after [`Interest::close`].
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId) {
        let now = self.clock(now);
        if let Some(io) = self.conns.remove(&conn) {
            if io.http.is_some() {
                self.http_open -= 1;
            } else if let Some(b) = io.bridge {
                if io.phase == Phase::Open {
                    self.bridge_closed(now, b);
                }
            } else if io.phase == Phase::Open {
                self.broker.handle_closed(now, conn);
                debug!(%conn, "transport closed");
            }
        }
        self.pump(now);
    }

    /// A deadline passed: call when [`Driver::poll_timeout`] is reached.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock(now);
        self.broker.handle_timeout(now);
        self.bridges_handle_timeout(now);
        self.cluster_handle_timeout(now);
        while let Some(&(until, conn)) = self.lingering.front() {
            let still = self
                .conns
                .get(&conn)
                .is_some_and(|io| matches!(io.phase, Phase::Lingering { .. }));
            if still && until > now {
                break;
            }
            self.lingering.pop_front();
            if still {
                self.forget(conn);
            }
        }
        if self.next_flush.is_some_and(|at| at <= now) {
            self.flush_due = true;
            self.next_flush = self.flush_every.map(|every| now + every);
        }
        self.http_timeouts(now);
        if let Some(outage) = &mut self.store_outage {
            if outage.retry_at <= now {
                self.retry_due = true;
                outage.wait = (outage.wait * 2).min(STORE_RETRY.1);
                outage.retry_at = now + outage.wait;
            }
        }
        self.pump(now);
    }

    /// A [`Job`] finished.
    pub fn handle_job_done(&mut self, now: Instant, done: JobDone) {
        let now = self.clock(now);
        match done.0 {
            DoneKind::Password {
                token,
                conn,
                user,
                decision,
            } => {
                self.passwords_running = self.passwords_running.saturating_sub(1);
                if decision != AuthDecision::Accept {
                    info!(
                        user = %user,
                        remote = %DisplayAddr(self.conns.get(&conn).and_then(|io| io.remote)),
                        reason = %DisplayDecision(&decision),
                        "authentication refused"
                    );
                }
                self.broker.resolve_auth(now, token, decision);
            }
            DoneKind::Store {
                store,
                outcomes,
                error,
            } => {
                self.store = StoreSlot::Idle(store);
                self.metrics.store_done(now);
                for (id, durable) in outcomes {
                    if durable {
                        self.broker.handle_store_done(now, id);
                    } else {
                        self.broker.handle_store_failed(now, id);
                    }
                }
                self.store_settled(now, error);
            }
            DoneKind::Cluster(batch) => self.cluster_received(now, batch),
        }
        self.pump(now);
    }

    /// The answer to an [`Event::Authenticate`].
    pub fn handle_auth_decided(&mut self, now: Instant, token: AuthToken, decision: AuthDecision) {
        let now = self.clock(now);
        self.broker.resolve_auth(now, token, decision);
        self.pump(now);
    }

    /// The answer to an [`Event::Authorize`]: a [`PublishDecision`] or a
    /// [`SubscribeDecision`]. An answer for a connection that has gone is
    /// ignored.
    pub fn handle_authorize_decided(
        &mut self,
        now: Instant,
        token: AuthorizeToken,
        decision: impl Into<AuthorizeDecision>,
    ) {
        let now = self.clock(now);
        self.broker.resolve_authorize(now, token, decision);
        self.pump(now);
    }

    /// A hook's answer, whichever kind ([`crate::embed`] produces these).
    pub fn handle_decided(&mut self, now: Instant, decided: Decided) {
        let now = self.clock(now);
        match decided {
            Decided::Auth(token, decision) => self.handle_auth_decided(now, token, decision),
            Decided::Authorize(token, decision) => {
                self.handle_authorize_decided(now, token, decision)
            }
        }
    }

    /// Publishes from the embedding program. Returns how many subscriptions
    /// it reached.
    pub fn handle_publish(&mut self, now: Instant, message: Message) -> usize {
        let now = self.clock(now);
        let matched = self.broker.publish(now, message);
        self.pump(now);
        matched
    }

    /// Subscribes the embedding program; messages come as
    /// [`Event::Deliver`] (retained ones at once).
    pub fn handle_subscribe(&mut self, now: Instant, filter: TopicFilter) -> LocalSubscription {
        let now = self.clock(now);
        let sub = self.broker.subscribe(now, filter);
        self.pump(now);
        sub
    }

    /// Ends an in-process subscription (the runtime's receiver is gone).
    pub fn handle_unsubscribe(&mut self, now: Instant, subscription: LocalSubscription) -> bool {
        let now = self.clock(now);
        let found = self.broker.unsubscribe(now, subscription);
        self.pump(now);
        found
    }

    /// Closes every connection (MQTT 5 clients get DISCONNECT 0x8B), stops
    /// accepting, waits up to [`SHUTDOWN_GRACE`] for the connections to
    /// take their last bytes, flushes the store, then says
    /// [`Event::Stopped`].
    pub fn handle_shutdown(&mut self, now: Instant) {
        let now = self.clock(now);
        if self.shutdown.is_some() {
            return;
        }
        info!("shutting down");
        self.shutdown = Some(Shutdown {
            grace_until: now + SHUTDOWN_GRACE,
            stage: ShutdownStage::Draining,
        });
        self.events.push_back(Event::StopListening);
        self.http_shutdown();
        self.bridges_shutdown(now);
        self.broker.shutdown(now);
        self.pump(now);
    }

    // ----- internals -----

    /// Queues a wake-up for `conn`, once until it is taken.
    fn wake(&mut self, conn: ConnId) {
        if let Some(io) = self.conns.get_mut(&conn) {
            if !io.woken {
                io.woken = true;
                self.events.push_back(Event::Wake(conn));
            }
        }
    }

    /// The driver is done with `conn`: the runtime drops its socket.
    fn forget(&mut self, conn: ConnId) {
        if let Some(io) = self.conns.remove(&conn) {
            if io.http.is_some() {
                self.http_open -= 1;
            }
            self.events.push_back(Event::Wake(conn));
        }
    }

    /// A stage failed: the connection ends as if the transport died (the
    /// will is published), after whatever the stage still has to say.
    fn fail(&mut self, now: Instant, conn: ConnId, why: &str) {
        debug!(%conn, error = why, "transport error");
        let Some(io) = self.conns.get_mut(&conn) else {
            return;
        };
        if io.phase == Phase::Open {
            io.phase = Phase::Closing;
            self.broker.handle_closed(now, conn);
        }
        self.push_stage_output(conn);
        self.settle_closing(now, conn);
        self.wake(conn);
    }

    /// A closing connection with nothing left to write lingers at once.
    fn settle_closing(&mut self, now: Instant, conn: ConnId) {
        if let Some(io) = self.conns.get_mut(&conn) {
            if io.phase == Phase::Closing && io.out.is_empty() {
                io.phase = Phase::Lingering { discarded: 0 };
                self.lingering.push_back((now + LINGER, conn));
            }
        }
    }

    /// Moves what the stages have for the wire into the output queue, while
    /// the queue is under the output limit: beyond it, stage output (a
    /// WebSocket pong, say) waits in its stage, which bounds it (a peer
    /// that overruns a stage's bound fails the stage), and is moved once
    /// [`Driver::handle_write`] has drained the queue.
    fn push_stage_output(&mut self, conn: ConnId) {
        let Some(io) = self.conns.get_mut(&conn) else {
            return;
        };
        if io.out_len >= self.outbound_limit {
            return;
        }
        let wire = &mut self.wire;
        wire.clear();
        match (&mut io.tls, &mut io.ws) {
            (None, None) => return,
            (Some(tls), ws) => {
                if let Some(ws) = ws {
                    ws.take_outbound_wire(wire);
                    if !wire.is_empty() && tls.write_plaintext(wire).is_err() {
                        io.phase = Phase::Closing;
                    }
                    wire.clear();
                }
                tls.take_ciphertext(wire);
            }
            (None, Some(ws)) => ws.take_outbound_wire(wire),
        }
        if !wire.is_empty() {
            io.out_len += wire.len();
            io.out.push_back(Bytes::copy_from_slice(wire));
            self.wake(conn);
        }
    }

    /// Drains the engine's actions, then makes the engine calls they gave
    /// rise to (never during the drain), until both are empty; then starts
    /// whatever jobs may start.
    fn pump(&mut self, now: Instant) {
        loop {
            while let Some(action) = self.broker.poll_action() {
                self.apply(now, action);
            }
            // Bridges call into the engine: between drains, never during.
            let bridged = self.bridges_step(now);
            if self.follow_ups.is_empty() && !bridged {
                break;
            }
            for follow_up in std::mem::take(&mut self.follow_ups) {
                match follow_up {
                    FollowUp::Blocked(conn) => self.broker.handle_blocked(now, conn),
                    FollowUp::Auth(token, decision) => {
                        self.broker.resolve_auth(now, token, decision)
                    }
                    FollowUp::Authorize(token, decision) => {
                        self.broker.resolve_authorize(now, token, decision)
                    }
                }
            }
        }
        self.start_password_checks();
        self.start_store_job(now);
        self.cluster_flush();
        self.advance_shutdown(now);
    }

    fn apply(&mut self, now: Instant, action: Action) {
        match action {
            Action::Send { conn, bytes } => match self.bridge_of_local(conn) {
                Some(b) => self.bridge_local_bytes(now, b, &bytes),
                None => self.send(conn, bytes),
            },
            Action::Close { conn, .. } if self.bridge_of_local(conn).is_some() => {
                let b = self.bridge_of_local(conn).unwrap_or_default();
                self.bridge_local_closed(now, b);
            }
            Action::Close { conn, reason } => {
                log_close(conn, &reason);
                if let Some(io) = self.conns.get_mut(&conn) {
                    if io.phase == Phase::Open {
                        io.phase = Phase::Closing;
                    }
                    if let Some(tls) = &mut io.tls {
                        tls.close();
                    }
                    if let Some(ws) = &mut io.ws {
                        ws.close();
                    }
                }
                self.push_stage_output(conn);
                self.settle_closing(now, conn);
                self.wake(conn);
            }
            Action::Authenticate(request) => self.authenticate(request),
            Action::Authorize(request) => self.authorize(request),
            Action::Deliver {
                subscription,
                message,
            } => self.events.push_back(Event::Deliver {
                subscription,
                message,
            }),
            Action::Event(event) => self.log_event(now, &event),
            Action::Store { id, ops } => self.store_batches.push((id, ops)),
            Action::Forward {
                message,
                client_id,
                username,
            } => self.cluster_send(crate::cluster::ToLink::Forward {
                message: Box::new(message),
                client_id,
                username,
            }),
            Action::Interest {
                filter,
                group,
                present,
            } => self.cluster_send(crate::cluster::ToLink::Interest {
                filter,
                group,
                present,
            }),
            Action::Claimed {
                client_id,
                clean_start,
            } => self.cluster_send(crate::cluster::ToLink::Claim {
                client_id,
                clean_start,
            }),
            Action::Hosting { client_id, present } => {
                self.cluster_send(crate::cluster::ToLink::Hosting { client_id, present });
            }
            Action::FetchSession {
                token,
                client_id,
                owner,
            } => self.cluster_send(crate::cluster::ToLink::Fetch {
                token,
                client_id,
                owner,
            }),
            _ => {}
        }
    }

    fn send(&mut self, conn: ConnId, bytes: Bytes) {
        let Some(io) = self.conns.get_mut(&conn) else {
            return;
        };
        if io.tls.is_none() && io.ws.is_none() {
            io.out_len += bytes.len();
            io.out.push_back(bytes);
        } else {
            let failed = match &mut io.ws {
                Some(ws) => ws.write_outbound(&bytes).is_err(),
                None => io
                    .tls
                    .as_mut()
                    .is_some_and(|tls| tls.write_plaintext(&bytes).is_err()),
            };
            if failed && io.phase == Phase::Open {
                // The engine still thinks it open: end it as a dead
                // transport once the drain is over.
                io.phase = Phase::Closing;
            }
            self.push_stage_output(conn);
        }
        let Some(io) = self.conns.get_mut(&conn) else {
            return;
        };
        if !io.blocked && io.out_len > self.outbound_limit {
            io.blocked = true;
            if io.phase == Phase::Open {
                self.follow_ups.push(FollowUp::Blocked(conn));
            }
        }
        self.wake(conn);
    }

    fn authenticate(&mut self, request: AuthRequest) {
        // A bridge's own connection: the operator configured it.
        if self.bridge_of_local(request.conn).is_some() {
            self.follow_ups
                .push(FollowUp::Auth(request.token, AuthDecision::Accept));
            return;
        }
        if self.external_auth {
            self.events.push_back(Event::Authenticate(request));
            return;
        }
        let Some(io) = self.conns.get(&request.conn) else {
            return;
        };
        let listener = &self.listeners[io.listener];
        let decision = match (&request.username, &listener.passwords) {
            _ if request.method.is_some() => {
                Some(AuthDecision::Reject(ReasonCode::BadAuthenticationMethod))
            }
            // The engine put the certificate's name in place of the
            // CONNECT's; the handshake verified it.
            _ if io.cert_user => Some(AuthDecision::Accept),
            (None, _) if listener.config.allows_anonymous() => Some(AuthDecision::Accept),
            (None, _) => Some(AuthDecision::Reject(ReasonCode::NotAuthorized)),
            (Some(user), Some(passwords)) => {
                if self.password_queue.len() >= PASSWORD_QUEUE {
                    warn!(client_id = %request.client_id, username = %user, "authentication refused: too many password checks waiting (server busy)");
                    Some(AuthDecision::Reject(ReasonCode::ServerBusy))
                } else {
                    self.password_queue.push_back(PasswordCheck {
                        token: request.token,
                        conn: request.conn,
                        passwords: passwords.clone(),
                        user: user.to_string(),
                        password: request.password.as_deref().unwrap_or_default().to_vec(),
                    });
                    None
                }
            }
            (Some(_), None) if listener.config.allows_anonymous() => Some(AuthDecision::Accept),
            (Some(_), None) => Some(AuthDecision::Reject(ReasonCode::BadUserNameOrPassword)),
        };
        if let Some(decision) = decision {
            if decision != AuthDecision::Accept {
                info!(
                    client_id = %request.client_id,
                    user = %request.username.as_ref().map_or("-", |u| u.as_str()),
                    remote = %DisplayAddr(io.remote),
                    reason = %DisplayDecision(&decision),
                    "authentication refused"
                );
            }
            self.follow_ups
                .push(FollowUp::Auth(request.token, decision));
        }
    }

    fn authorize(&mut self, request: AuthorizeRequest) {
        if self.external_authorize {
            self.events.push_back(Event::Authorize(request));
            return;
        }
        warn!(client_id = %request.client_id, "the authorization policy deferred a decision, but no authorizer is set; refusing");
        let decision: AuthorizeDecision = match request.what {
            Operation::Subscribe { .. } => {
                SubscribeDecision::Deny(ReasonCode::NotAuthorized).into()
            }
            _ => PublishDecision::Deny(ReasonCode::NotAuthorized).into(),
        };
        self.follow_ups
            .push(FollowUp::Authorize(request.token, decision));
    }

    /// Starts queued password checks while slots are free. A check whose
    /// connection has gone is dropped unrun: argon2 for nobody is the
    /// cheapest denial of service there is.
    fn start_password_checks(&mut self) {
        while self.passwords_running < MAX_PASSWORD_CHECKS {
            let Some(check) = self.password_queue.pop_front() else {
                break;
            };
            if !self
                .conns
                .get(&check.conn)
                .is_some_and(|io| io.phase == Phase::Open)
            {
                continue;
            }
            self.passwords_running += 1;
            self.events
                .push_back(Event::Job(Job(JobKind::Password(check))));
        }
    }

    /// Hands the store every batch that queued up while it was busy (one
    /// commit for all of them), or a flush when one is due.
    fn start_store_job(&mut self, now: Instant) {
        if !matches!(self.store, StoreSlot::Idle(_)) {
            return;
        }
        let final_flush = self
            .shutdown
            .as_ref()
            .is_some_and(|s| s.stage == ShutdownStage::Flushing { sent: false });
        if self.store_batches.is_empty() && !self.flush_due && !final_flush && !self.retry_due {
            return;
        }
        let StoreSlot::Idle(store) = std::mem::replace(&mut self.store, StoreSlot::Busy) else {
            return;
        };
        let flush = std::mem::take(&mut self.flush_due) || final_flush;
        let ops = self.store_batches.iter().map(|(_, ops)| ops.len()).sum();
        self.metrics.store_started(now, ops);
        self.events
            .push_back(Event::Job(Job(JobKind::Store(StoreJob {
                store,
                batches: std::mem::take(&mut self.store_batches),
                flush,
                retry: std::mem::take(&mut self.retry_due),
            }))));
        if final_flush {
            if let Some(s) = &mut self.shutdown {
                // Stopped follows when this job is back.
                s.stage = ShutdownStage::Flushing { sent: true };
            }
        }
    }

    /// After a store job: an error that means the store is interrupted
    /// (a full disk) starts an outage, logged once, during which the store
    /// is asked to resume on a back-off; the first job without one ends
    /// it. Errors of a single batch (a key too long) are that batch's alone.
    fn store_settled(&mut self, now: Instant, error: Option<roost_persistence::StoreError>) {
        use roost_persistence::StoreError;
        match error {
            None => {
                if self.store_outage.take().is_some() {
                    info!("store resumed: acknowledgements are sent again");
                }
            }
            Some(
                e @ (StoreError::KeyTooLong { .. }
                | StoreError::Encode { .. }
                | StoreError::Unsupported),
            ) => {
                warn!(error = %e, "store refused a batch; its publishers were told");
            }
            Some(e) => {
                if self.store_outage.is_none() {
                    error!(error = %e, "store interrupted: messages that need it are refused (MQTT 5: 0x97; MQTT 3: disconnect) until it resumes");
                    self.store_outage = Some(StoreOutage {
                        retry_at: now + STORE_RETRY.0,
                        wait: STORE_RETRY.0,
                    });
                }
            }
        }
    }

    fn advance_shutdown(&mut self, now: Instant) {
        let Some(stage) = self.shutdown.as_ref().map(|s| s.stage) else {
            return;
        };
        if stage == ShutdownStage::Draining {
            let grace_over = self.shutdown.as_ref().is_some_and(|s| now >= s.grace_until);
            if !self.conns.is_empty() && !grace_over {
                return;
            }
            let left: Vec<ConnId> = self.conns.keys().copied().collect();
            for conn in left {
                self.forget(conn);
            }
            self.lingering.clear();
            self.set_shutdown_stage(ShutdownStage::Flushing { sent: false });
            self.start_store_job(now);
        }
        let stage = self.shutdown.as_ref().map(|s| s.stage);
        let flushed = match self.store {
            StoreSlot::None => true,
            StoreSlot::Busy => false,
            StoreSlot::Idle(_) => stage == Some(ShutdownStage::Flushing { sent: true }),
        };
        if matches!(stage, Some(ShutdownStage::Flushing { .. })) && flushed {
            self.set_shutdown_stage(ShutdownStage::Done);
            info!("stopped");
            self.cluster_stop();
            self.events.push_back(Event::Stopped);
        }
    }

    fn set_shutdown_stage(&mut self, stage: ShutdownStage) {
        if let Some(s) = &mut self.shutdown {
            s.stage = stage;
        }
    }
}

/// An address for logs: the address, or "-" (never Rust debug output).
struct DisplayAddr(Option<SocketAddr>);

impl fmt::Display for DisplayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A refusal, as an operator reads it.
struct DisplayDecision<'a>(&'a AuthDecision);

impl fmt::Display for DisplayDecision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            AuthDecision::Accept => f.write_str("accepted"),
            AuthDecision::Reject(code) => code.fmt(f),
            AuthDecision::Redirect { reason, .. } => write!(f, "redirected: {reason}"),
            _ => f.write_str("refused"),
        }
    }
}

/// Normal ends are debug; an end an operator may need to explain (a
/// protocol violation, a limit, a timeout) is logged at info with its
/// reason.
fn log_close(conn: ConnId, reason: &CloseReason) {
    match reason {
        CloseReason::ClientDisconnect | CloseReason::ServerShutdown => {
            debug!(%conn, %reason, "closing")
        }
        _ => info!(%conn, %reason, "closing connection"),
    }
}

/// The MQTT version as operators write it.
fn mqtt_version(protocol: roost_core::codec::Protocol) -> &'static str {
    match protocol {
        roost_core::codec::Protocol::V3_1 => "3.1",
        roost_core::codec::Protocol::V3_1_1 => "3.1.1",
        roost_core::codec::Protocol::V5 => "5.0",
    }
}

impl Driver {
    /// One line per connect and per disconnect at the default level, with
    /// what an operator (or fail2ban) needs, and no Rust debug output.
    fn log_event(&self, now: Instant, event: &EngineEvent) {
        let io = |conn: &ConnId| self.conns.get(conn);
        let listener = |conn: &ConnId| {
            io(conn)
                .and_then(|io| self.listeners.get(io.listener))
                .map(|l| (l.config.protocol.name(), l.bound.unwrap_or(l.config.bind)))
        };
        match event {
            EngineEvent::ClientConnected {
                conn,
                client_id,
                username,
            } => {
                let (transport, bind) = listener(conn).unzip();
                let client = self.broker.client_info(*conn);
                info!(
                    %client_id,
                    user = %username.as_ref().map_or("-", |u| u.as_str()),
                    remote = %DisplayAddr(io(conn).and_then(|io| io.remote)),
                    listener = %DisplayAddr(bind),
                    transport = %transport.unwrap_or("-"),
                    protocol = %client.map_or("-", |c| mqtt_version(c.protocol)),
                    session = %client.map_or("-", |c| if c.persistent { "persistent" } else { "clean" }),
                    keep_alive_s = client.map_or(0, |c| c.keep_alive_secs),
                    certificate = io(conn).is_some_and(|io| io.cert_user),
                    "client connected"
                )
            }
            EngineEvent::ClientDisconnected {
                conn,
                client_id,
                reason,
            } => {
                let secs = io(conn).map_or(0.0, |io| {
                    now.saturating_duration_since(io.opened).as_secs_f64()
                });
                info!(
                    %client_id,
                    remote = %DisplayAddr(io(conn).and_then(|io| io.remote)),
                    %reason,
                    duration_s = format_args!("{secs:.1}"),
                    "client disconnected"
                )
            }
            EngineEvent::QueueFull { client_id } => {
                debug!(%client_id, "queue full, message dropped")
            }
            _ => {}
        }
    }
}

/// The engine configuration a runtime configuration describes.
fn engine_config(config: &Config, needs_auth: bool, acl: Option<AclPolicy>) -> broker::Config {
    let m = &config.mqtt;
    // Not in the engine, which never reads the OS: drawn once here.
    let random_seed = m.random_seed.unwrap_or_else(config::os_seed);
    info!("random seed {random_seed} (mqtt.random_seed repeats it)");
    broker::Config {
        random_seed,
        sys_interval: (config.sys.interval_secs > 0)
            .then(|| Duration::from_secs(u64::from(config.sys.interval_secs))),
        // The driver logs every connect and disconnect for the operator.
        events: true,
        authentication: if needs_auth {
            Authentication::External
        } else {
            Authentication::AllowAll
        },
        authorization: match acl {
            Some(policy) => Box::new(policy),
            None => Box::new(broker::AllowAll),
        },
        ..engine_capabilities(config)
    }
}

/// The limits and capabilities a runtime configuration gives the engine
/// (those [`Broker::reconfigure`] takes on reload).
fn engine_capabilities(config: &Config) -> broker::Config {
    let m = &config.mqtt;
    broker::Config {
        limits: config.limits.to_engine(),
        receive_maximum: m.receive_maximum,
        maximum_qos: match m.maximum_qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        },
        retain_available: m.retain_available,
        wildcard_subscription_available: m.wildcard_subscriptions,
        subscription_identifiers_available: m.subscription_identifiers,
        shared_subscription_available: m.shared_subscriptions,
        topic_alias_maximum: m.topic_alias_maximum,
        outbound_topic_aliases: m.outbound_topic_aliases,
        validate_utf8_payloads: m.validate_utf8_payloads,
        allow_disallowed_code_points: m.allow_disallowed_code_points,
        share_sessions_across_identities: m.share_sessions_across_identities,
        ..broker::Config::default()
    }
}

/// The engine's seed, reused for the bridges' back-off jitter.
fn engine_seed(broker: &Broker) -> u64 {
    broker.config().random_seed
}
