//! The connection driver: everything a runtime does between its sockets and
//! the engine, except touching the sockets.
//!
//! A runtime accepts a socket and calls [`Driver::open`], hands every read to
//! [`Driver::input`], writes what [`Driver::write_to`] gives it, closes the
//! socket once [`Driver::wants_close`] says so, and calls [`Driver::closed`]
//! when the socket is gone for any reason. It calls [`Driver::timeout`] when
//! [`Driver::next_deadline`] passes. After every call it asks
//! [`Driver::take_woken`] which connections have new output, and wakes their
//! writers. TLS and WebSocket stages, authentication against password files,
//! ACLs and backpressure all live here, so a runtime stays a loop around
//! these calls.

use crate::acl::{Access, Acl};
use crate::config::{self, Config, DeniedCode};
use crate::passwd::PasswordFile;
use crate::store_worker::{StoreWorker, Wake};
use crate::tls::{self, TlsStage};
use crate::ws::WsStage;
use bytes::Bytes;
use roost_core::broker::{
    self, AccessPolicy, Action, AuthDecision, AuthRequest, AuthToken, Authentication,
    AuthorizeDecision, AuthorizeRequest, AuthorizeToken, Broker, ClientRef, ConnId, ConnInfo,
    Event, Instant, LocalSubscription, Message, Operation, PublishDecision, SubscribeDecision,
    Verdict,
};
use roost_core::codec::{QoS, ReasonCode};
use roost_core::topic::{TopicFilter, TopicName};
use roost_persistence::Store;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// How long a runtime keeps reading (and discarding) after it has written a
/// connection's last bytes and shut down its write side: a peer that is
/// still sending when the broker closes would otherwise get a TCP reset,
/// which can destroy the final DISCONNECT before the peer reads it.
pub const LINGER: Duration = Duration::from_secs(2);

/// The most a runtime reads and discards during [`LINGER`].
pub const LINGER_BYTES: usize = 1024 * 1024;

/// Why a driver could not be built from a configuration.
#[derive(Debug)]
#[non_exhaustive]
pub enum DriverError {
    /// A listener's TLS certificate or key could not be loaded.
    Tls {
        /// Which listener (index in the configuration).
        listener: usize,
        /// Why.
        source: tls::TlsError,
    },
    /// A password file could not be loaded.
    Passwd {
        /// Which listener.
        listener: usize,
        /// Why.
        source: crate::passwd::PasswdError,
    },
    /// An ACL file could not be loaded.
    Acl {
        /// Which listener.
        listener: usize,
        /// Why.
        source: crate::acl::AclError,
    },
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
            DriverError::Tls { listener, source } => write!(f, "listener[{listener}]: {source}"),
            DriverError::Passwd { listener, source } => {
                write!(f, "listener[{listener}].password_file: {source}")
            }
            DriverError::Acl { listener, source } => {
                write!(f, "listener[{listener}].acl_file: {source}")
            }
            DriverError::Unsupported(what) => f.write_str(what),
            DriverError::Store { source } => write!(f, "persistence: {source}"),
        }
    }
}

impl std::error::Error for DriverError {}

/// A password check to run away from the event loop: argon2 is slow on
/// purpose, far too slow to run between socket reads.
pub struct AuthJob {
    token: AuthToken,
    passwords: Arc<PasswordFile>,
    user: String,
    password: Vec<u8>,
}

impl AuthJob {
    /// Runs the check (tens of milliseconds of CPU): the decision to hand to
    /// [`Driver::resolve_auth`] with [`AuthJob::token`].
    pub fn run(&self) -> AuthDecision {
        let ok = std::str::from_utf8(&self.password)
            .is_ok_and(|password| self.passwords.verify(&self.user, password));
        if ok {
            AuthDecision::Accept
        } else {
            AuthDecision::Reject(ReasonCode::BadUserNameOrPassword)
        }
    }

    /// The request this job answers.
    pub fn token(&self) -> AuthToken {
        self.token
    }
}

/// What [`Driver::write_to`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStatus {
    /// Everything pending was written.
    Drained,
    /// The writer would block; wait until the socket is writable.
    WouldBlock,
}

struct ListenerState {
    config: config::Listener,
    tls: Option<Arc<rustls::ServerConfig>>,
    passwords: Option<Arc<PasswordFile>>,
}

struct ConnIo {
    listener: usize,
    // Boxed: most connections are plain TCP, and an idle connection should
    // not carry a TLS session's or WebSocket's worth of inline space.
    tls: Option<Box<TlsStage>>,
    ws: Option<Box<WsStage>>,
    out: VecDeque<Bytes>,
    out_len: usize,
    /// The engine (or a stage) asked to close once the output is written.
    closing: bool,
    woken: bool,
    blocked: bool,
}

/// The ACL files of the listeners, as the engine's authorization policy.
struct AclPolicy {
    acls: Vec<Option<Arc<Acl>>>,
    denied: ReasonCode,
}

impl AclPolicy {
    fn check(&self, client: ClientRef<'_>, topic: &str, access: Access) -> bool {
        match self.acls.get(usize::from(client.listener)) {
            Some(Some(acl)) => acl.check(
                client.username.map(|u| u.as_str()),
                client.client_id.as_str(),
                topic,
                access,
            ),
            _ => true,
        }
    }
}

// The ACL is in memory: every answer is inline, no round trip.
impl AccessPolicy for AclPolicy {
    fn authorize_publish(
        &self,
        client: ClientRef<'_>,
        topic: &TopicName,
    ) -> Verdict<PublishDecision> {
        Verdict::Decided(if self.check(client, topic.as_str(), Access::Publish) {
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
        Verdict::Decided(if self.check(client, filter.as_str(), Access::Subscribe) {
            SubscribeDecision::Grant(qos)
        } else {
            SubscribeDecision::Deny(self.denied)
        })
    }

    fn authorize_delivery(&self, client: ClientRef<'_>, topic: &TopicName) -> bool {
        // Like Mosquitto: a wildcard subscription does not grant reading a
        // topic the ACL hides.
        self.check(client, topic.as_str(), Access::Subscribe)
    }
}

/// The driver: one engine and the I/O state of its connections.
pub struct Driver {
    broker: Broker,
    /// The store until a worker thread takes it (see
    /// [`Driver::start_store_worker`]); used inline meanwhile.
    store: Option<Box<dyn Store>>,
    store_worker: Option<StoreWorker>,
    flush_every: Option<Duration>,
    epoch: std::time::Instant,
    listeners: Vec<ListenerState>,
    conns: HashMap<ConnId, ConnIo>,
    woken: Vec<ConnId>,
    auth_jobs: Vec<AuthJob>,
    /// With an external authenticator, every request goes to the embedding
    /// program instead of the password files.
    external_auth: bool,
    auth_requests: Vec<AuthRequest>,
    /// Whether deferred authorization requests go to the embedding program
    /// (otherwise they are refused: nobody would answer them).
    external_authorize: bool,
    authorize_requests: Vec<AuthorizeRequest>,
    /// The embedding program set the authorization policy: reloading the
    /// ACL files must not replace it.
    custom_policy: bool,
    deliveries: Vec<(LocalSubscription, Message)>,
    outbound_limit: usize,
    denied: ReasonCode,
    scratch: Vec<u8>,
    wire: Vec<u8>,
}

impl Driver {
    /// Builds the engine and loads every file the configuration names
    /// (certificates, password files, ACLs).
    pub fn new(config: &Config) -> Result<Driver, DriverError> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for (i, l) in config.listeners.iter().enumerate() {
            let tls = match (&l.cert, &l.key) {
                (Some(cert), Some(key)) if l.protocol.is_tls() => Some(Arc::new(
                    tls::load_server_config(cert, key).map_err(|source| DriverError::Tls {
                        listener: i,
                        source,
                    })?,
                )),
                _ => None,
            };
            let passwords = match &l.password_file {
                Some(path) => Some(Arc::new(PasswordFile::load(path).map_err(|source| {
                    DriverError::Passwd {
                        listener: i,
                        source,
                    }
                })?)),
                None => None,
            };
            listeners.push(ListenerState {
                config: l.clone(),
                tls,
                passwords,
            });
        }
        let denied = match config.mqtt.subscribe_denied {
            DeniedCode::NotAuthorized => ReasonCode::NotAuthorized,
            DeniedCode::UnspecifiedError => ReasonCode::UnspecifiedError,
        };
        let policy = Self::load_acls(config)?;
        let needs_auth = listeners
            .iter()
            .any(|l| l.passwords.is_some() || !l.config.allow_anonymous);
        let mut engine = engine_config(config, needs_auth, policy, denied);
        // "memory" keeps nothing across restarts, so the engine emits nothing
        // to store and holds no acknowledgement: no cost at all.
        let (broker, store) = match (&config.persistence.store, &config.persistence.path) {
            (config::Store::Fjall, Some(path)) => {
                let durability = match config.persistence.durability {
                    config::Durability::Sync => roost_persistence::Durability::Sync,
                    config::Durability::Periodic => roost_persistence::Durability::Periodic,
                };
                let mut store = roost_persistence::FjallStore::open(path, durability)
                    .map_err(|source| DriverError::Store { source })?;
                let recovered = store
                    .recover()
                    .map_err(|source| DriverError::Store { source })?;
                info!(
                    path = %path.display(),
                    sessions = recovered.sessions.len(),
                    retained = recovered.retained.len(),
                    "store opened"
                );
                engine.persistence = true;
                let store: Box<dyn Store> = Box::new(store);
                (
                    Broker::restore(engine, Instant::ZERO, recovered),
                    Some(store),
                )
            }
            (config::Store::Fjall, None) => {
                return Err(DriverError::Unsupported(
                    "persistence.store = \"fjall\" needs persistence.path (or --data-dir)",
                ));
            }
            (config::Store::Memory, _) => (Broker::new(engine, Instant::ZERO), None),
        };
        let flush_every = (config.persistence.durability == config::Durability::Periodic)
            .then(|| Duration::from_millis(config.persistence.flush_interval_ms));
        Ok(Driver {
            broker,
            store,
            store_worker: None,
            flush_every,
            epoch: std::time::Instant::now(),
            listeners,
            conns: HashMap::new(),
            woken: Vec::new(),
            auth_jobs: Vec::new(),
            external_auth: false,
            auth_requests: Vec::new(),
            external_authorize: false,
            authorize_requests: Vec::new(),
            custom_policy: false,
            deliveries: Vec::new(),
            outbound_limit: usize::try_from(config.limits.outbound_buffer_bytes)
                .unwrap_or(usize::MAX),
            denied,
            scratch: Vec::new(),
            wire: Vec::new(),
        })
    }

    fn load_acls(config: &Config) -> Result<Option<AclPolicy>, DriverError> {
        if config.listeners.iter().all(|l| l.acl_file.is_none()) {
            return Ok(None);
        }
        let mut acls = Vec::with_capacity(config.listeners.len());
        for (i, l) in config.listeners.iter().enumerate() {
            acls.push(match &l.acl_file {
                Some(path) => Some(Arc::new(Acl::load(path).map_err(|source| {
                    DriverError::Acl {
                        listener: i,
                        source,
                    }
                })?)),
                None => None,
            });
        }
        let denied = match config.mqtt.subscribe_denied {
            DeniedCode::NotAuthorized => ReasonCode::NotAuthorized,
            DeniedCode::UnspecifiedError => ReasonCode::UnspecifiedError,
        };
        Ok(Some(AclPolicy { acls, denied }))
    }

    /// Sends every authentication request to the embedding program (see
    /// [`Driver::take_auth_requests`]) instead of the password files.
    pub fn use_external_authentication(&mut self) {
        self.external_auth = true;
        self.broker.set_authentication(Authentication::External);
    }

    /// Replaces the authorization policy (for embedding programs), and the
    /// ACL files with it: [`Driver::reload`] leaves it in place.
    pub fn set_authorization(&mut self, policy: Box<dyn AccessPolicy>) {
        self.custom_policy = true;
        self.broker.set_authorization(policy);
    }

    /// Sends the publish and subscribe decisions the policy defers to the
    /// embedding program (see [`Driver::take_authorize_requests`]). Unless a
    /// policy was set with [`Driver::set_authorization`], every one is
    /// deferred ([`broker::DeferAll`]), replacing the ACL files.
    ///
    /// Without this, a deferred decision has nobody to answer it and is
    /// refused at once (0x87 Not authorized).
    pub fn use_external_authorization(&mut self) {
        self.external_authorize = true;
        if !self.custom_policy {
            self.set_authorization(Box::new(broker::DeferAll));
        }
    }

    /// Re-reads the password and ACL files (SIGHUP). A file that fails to
    /// load keeps its previous contents; the errors are returned for logging.
    /// Connections are not touched.
    pub fn reload(&mut self, config: &Config) -> Vec<String> {
        let mut errors = Vec::new();
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if let Some(path) = &l.config.password_file {
                match PasswordFile::load(path) {
                    Ok(file) => l.passwords = Some(Arc::new(file)),
                    Err(e) => errors.push(format!(
                        "listener[{i}].password_file: {e}; keeping the previous one"
                    )),
                }
            }
        }
        match Self::load_acls(config) {
            Ok(Some(_)) if self.custom_policy => {}
            Ok(Some(policy)) => self.broker.set_authorization(Box::new(policy)),
            Ok(None) => {}
            Err(e) => errors.push(format!("{e}; keeping the previous ACLs")),
        }
        errors
    }

    /// The engine's time now.
    pub fn now(&self) -> Instant {
        let ms = self.epoch.elapsed().as_millis();
        Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// The engine (for statistics and inspection).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Configured listeners.
    pub fn listeners(&self) -> impl Iterator<Item = &config::Listener> {
        self.listeners.iter().map(|l| &l.config)
    }

    /// A socket was accepted on listener number `listener`.
    pub fn open(&mut self, listener: usize, remote: Option<SocketAddr>) -> ConnId {
        let now = self.now();
        let l = &self.listeners[listener.min(self.listeners.len() - 1)];
        let tls = l
            .tls
            .as_ref()
            .and_then(|cfg| match TlsStage::new(cfg.clone()) {
                Ok(stage) => Some(Box::new(stage)),
                Err(e) => {
                    warn!(error = %e, "TLS session could not be created");
                    None
                }
            });
        let failed_tls = l.config.protocol.is_tls() && tls.is_none();
        let ws = l.config.protocol.is_ws().then(|| {
            Box::new(WsStage::new(
                &l.config.ws_path,
                self.broker.config().limits.max_packet_size as usize,
            ))
        });
        let conn = self.broker.handle_open(
            now,
            ConnInfo {
                remote,
                listener: u16::try_from(listener).unwrap_or(u16::MAX),
            },
        );
        debug!(%conn, ?remote, listener, "accepted");
        self.conns.insert(
            conn,
            ConnIo {
                listener,
                tls,
                ws,
                out: VecDeque::new(),
                out_len: 0,
                closing: false,
                woken: false,
                blocked: false,
            },
        );
        if failed_tls {
            self.fail(conn, "TLS unavailable");
        }
        self.dispatch();
        conn
    }

    /// Bytes were read from the socket of `conn`.
    pub fn input(&mut self, conn: ConnId, bytes: &[u8]) {
        let now = self.now();
        let Some(io) = self.conns.get_mut(&conn) else {
            return;
        };
        if io.closing {
            return;
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
        // Handshake answers (TLS records, the WebSocket upgrade response).
        self.push_stage_output(conn);
        let plain_input = self
            .conns
            .get(&conn)
            .is_some_and(|io| io.tls.is_some() || io.ws.is_some());
        if plain_input {
            if !plain.is_empty() {
                self.broker.handle_bytes(now, conn, &plain);
            }
        } else {
            self.broker.handle_bytes(now, conn, bytes);
        }
        self.scratch = plain;
        if let Err(e) = result {
            self.fail(conn, &e);
        }
        self.dispatch();
    }

    /// The socket of `conn` is gone (closed by the peer, failed, or closed
    /// by the runtime after [`Driver::wants_close`]). Call exactly once.
    pub fn closed(&mut self, conn: ConnId) {
        if let Some(io) = self.conns.remove(&conn) {
            if !io.closing {
                let now = self.now();
                self.broker.handle_closed(now, conn);
                debug!(%conn, "transport closed");
            }
        }
        self.dispatch();
    }

    /// Deadlines passed: call when [`Driver::next_deadline`] is reached.
    pub fn timeout(&mut self) {
        let now = self.now();
        self.broker.handle_timeout(now);
        self.dispatch();
    }

    /// When [`Driver::timeout`] should next be called.
    pub fn next_deadline(&self) -> Option<std::time::Instant> {
        self.broker
            .poll_timeout()
            .map(|at| self.epoch + Duration::from_millis(at.as_millis()))
    }

    /// Closes every connection (MQTT 5 clients get DISCONNECT 0x8B) and stops
    /// accepting CONNECTs. Flush the output afterwards.
    pub fn shutdown(&mut self) {
        let now = self.now();
        self.broker.shutdown(now);
        self.dispatch();
    }

    /// Connections with new output or a close to carry out since the last
    /// call; wake their writers.
    pub fn take_woken(&mut self, into: &mut Vec<ConnId>) {
        for conn in self.woken.drain(..) {
            if let Some(io) = self.conns.get_mut(&conn) {
                io.woken = false;
                into.push(conn);
            }
        }
    }

    /// Whether `conn` has bytes waiting to be written.
    pub fn has_output(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|io| !io.out.is_empty())
    }

    /// Whether the runtime should close `conn`'s socket now: the engine (or
    /// a stage) ended it and everything has been written. Close gracefully:
    /// shut down the write side, read and discard for up to [`LINGER`] (at
    /// most [`LINGER_BYTES`]) or until the peer closes, then close.
    pub fn wants_close(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_none_or(|io| io.closing && io.out.is_empty())
    }

    /// Whether reading from `conn` should pause: its output is over the
    /// configured buffer, so this client (a fast publisher, say) waits until
    /// its own output drains.
    pub fn read_paused(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|io| io.blocked)
    }

    /// Writes pending output of `conn` with `write`, which is given as many
    /// buffers as are pending and returns how many bytes it wrote (a
    /// vectored socket write). Stops at `WouldBlock`.
    pub fn write_to(
        &mut self,
        conn: ConnId,
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<WriteStatus> {
        let Some(io) = self.conns.get_mut(&conn) else {
            return Ok(WriteStatus::Drained);
        };
        let mut status = WriteStatus::Drained;
        while !io.out.is_empty() {
            let slices: Vec<IoSlice<'_>> =
                io.out.iter().take(64).map(|b| IoSlice::new(b)).collect();
            match write(&slices) {
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
        // Resume deliveries once the buffer is half empty again, so a slow
        // reader does not flap between blocked and writable.
        if io.blocked && io.out_len <= self.outbound_limit / 2 {
            io.blocked = false;
            let now = self.now();
            self.broker.handle_writable(now, conn);
            self.dispatch();
        }
        Ok(status)
    }

    /// Moves the store to a thread of its own; `wake` is called from that
    /// thread whenever more batches are durable, and the runtime then calls
    /// [`Driver::store_progress`]. Without a worker, batches are stored
    /// inline (correct, but every commit then stalls the event loop).
    pub fn start_store_worker(&mut self, wake: Wake) -> io::Result<()> {
        if let Some(store) = self.store.take() {
            self.store_worker = Some(StoreWorker::start(store, self.flush_every, wake)?);
        }
        Ok(())
    }

    /// Whether this driver persists state (a store is configured).
    pub fn has_store(&self) -> bool {
        self.store.is_some() || self.store_worker.is_some()
    }

    /// Hands the engine what the store worker has made durable, releasing
    /// the acknowledgements that waited for it.
    pub fn store_progress(&mut self) {
        let Some(id) = self
            .store_worker
            .as_ref()
            .and_then(StoreWorker::take_durable)
        else {
            return;
        };
        let now = self.now();
        self.broker.handle_store_done(now, id);
        self.dispatch();
    }

    /// Stores everything still queued and stops the store worker (at
    /// shutdown, after [`Driver::shutdown`]).
    pub fn finish_store(&mut self) {
        if let Some(worker) = &mut self.store_worker {
            worker.finish();
        }
        if let Some(store) = &mut self.store {
            if let Err(e) = store.flush() {
                tracing::error!(error = %e, "store flush at shutdown failed");
            }
        }
    }

    fn store_batch(
        &mut self,
        id: roost_core::broker::StoreId,
        ops: Vec<roost_core::broker::StoreOp>,
    ) {
        if let Some(worker) = &self.store_worker {
            worker.submit(id, ops);
            return;
        }
        let Some(store) = &mut self.store else {
            return;
        };
        match store.apply(&ops).and_then(|()| store.commit()) {
            Ok(()) => {
                let now = self.now();
                self.broker.handle_store_done(now, id);
            }
            Err(e) => {
                tracing::error!(error = %e, "store failed; dropping the store: no further acknowledgements will be sent");
                self.store = None;
            }
        }
    }

    /// Password checks to run off the event loop; hand each result to
    /// [`Driver::resolve_auth`].
    pub fn take_auth_jobs(&mut self) -> Vec<AuthJob> {
        std::mem::take(&mut self.auth_jobs)
    }

    /// Authentication requests for the embedding program (only after
    /// [`Driver::use_external_authentication`]).
    pub fn take_auth_requests(&mut self) -> Vec<AuthRequest> {
        std::mem::take(&mut self.auth_requests)
    }

    /// The answer to an [`AuthJob`] or an authentication request.
    pub fn resolve_auth(&mut self, token: AuthToken, decision: AuthDecision) {
        let now = self.now();
        self.broker.resolve_auth(now, token, decision);
        self.dispatch();
    }

    /// Authorization requests for the embedding program (only after
    /// [`Driver::use_external_authorization`]). Each must be answered with
    /// [`Driver::resolve_authorize`] within the engine's
    /// `limits.authorize_timeout`, or its connection is closed.
    pub fn take_authorize_requests(&mut self) -> Vec<AuthorizeRequest> {
        std::mem::take(&mut self.authorize_requests)
    }

    /// The answer to an authorization request: a [`PublishDecision`] or a
    /// [`SubscribeDecision`]. An answer for a connection that has gone is
    /// ignored.
    pub fn resolve_authorize(
        &mut self,
        token: AuthorizeToken,
        decision: impl Into<AuthorizeDecision>,
    ) {
        let now = self.now();
        self.broker.resolve_authorize(now, token, decision);
        self.dispatch();
    }

    /// Publishes from the embedding program.
    pub fn publish(&mut self, message: Message) -> usize {
        let now = self.now();
        let matched = self.broker.publish(now, message);
        self.dispatch();
        matched
    }

    /// Subscribes the embedding program; deliveries come from
    /// [`Driver::take_deliveries`].
    pub fn subscribe(&mut self, filter: TopicFilter) -> LocalSubscription {
        let now = self.now();
        let sub = self.broker.subscribe(now, filter);
        self.dispatch();
        sub
    }

    /// Ends an in-process subscription.
    pub fn unsubscribe(&mut self, subscription: LocalSubscription) -> bool {
        let now = self.now();
        self.broker.unsubscribe(now, subscription)
    }

    /// Messages for in-process subscriptions since the last call.
    pub fn take_deliveries(&mut self) -> Vec<(LocalSubscription, Message)> {
        std::mem::take(&mut self.deliveries)
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn wake(&mut self, conn: ConnId) {
        if let Some(io) = self.conns.get_mut(&conn) {
            if !io.woken {
                io.woken = true;
                self.woken.push(conn);
            }
        }
    }

    /// A stage failed: the connection ends as if the transport died (the
    /// will is published), after whatever the stage still has to say.
    fn fail(&mut self, conn: ConnId, why: &str) {
        debug!(%conn, error = why, "transport error");
        let Some(io) = self.conns.get_mut(&conn) else {
            return;
        };
        if !io.closing {
            io.closing = true;
            let now = self.now();
            self.broker.handle_closed(now, conn);
        }
        self.push_stage_output(conn);
        self.wake(conn);
    }

    /// Moves what the stages have for the wire into the output queue.
    fn push_stage_output(&mut self, conn: ConnId) {
        let Some(io) = self.conns.get_mut(&conn) else {
            return;
        };
        let wire = &mut self.wire;
        wire.clear();
        match (&mut io.tls, &mut io.ws) {
            (None, None) => return,
            (Some(tls), ws) => {
                if let Some(ws) = ws {
                    ws.take_outbound_wire(wire);
                    if !wire.is_empty() && tls.write_plaintext(wire).is_err() {
                        io.closing = true;
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

    /// Applies the engine's actions.
    fn dispatch(&mut self) {
        while let Some(action) = self.broker.poll_action() {
            match action {
                Action::Send { conn, bytes } => self.send(conn, bytes),
                Action::Close { conn, reason } => {
                    debug!(%conn, %reason, "closing");
                    if let Some(io) = self.conns.get_mut(&conn) {
                        io.closing = true;
                        if let Some(tls) = &mut io.tls {
                            tls.close();
                        }
                        if let Some(ws) = &mut io.ws {
                            ws.close();
                        }
                    }
                    self.push_stage_output(conn);
                    self.wake(conn);
                }
                Action::Authenticate(request) => self.authenticate(request),
                Action::Authorize(request) => self.authorize(request),
                Action::Deliver {
                    subscription,
                    message,
                } => self.deliveries.push((subscription, message)),
                Action::Event(event) => log_event(&event),
                Action::Store { id, ops } => self.store_batch(id, ops),
                _ => {}
            }
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
            if failed {
                io.closing = true;
            }
            self.push_stage_output(conn);
        }
        let Some(io) = self.conns.get_mut(&conn) else {
            return;
        };
        if !io.blocked && io.out_len > self.outbound_limit {
            io.blocked = true;
            let now = self.now();
            self.broker.handle_blocked(now, conn);
        }
        self.wake(conn);
    }

    fn authenticate(&mut self, request: AuthRequest) {
        if self.external_auth {
            self.auth_requests.push(request);
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
            (None, _) if listener.config.allow_anonymous => Some(AuthDecision::Accept),
            (None, _) => Some(AuthDecision::Reject(ReasonCode::NotAuthorized)),
            (Some(user), Some(passwords)) => {
                self.auth_jobs.push(AuthJob {
                    token: request.token,
                    passwords: passwords.clone(),
                    user: user.to_string(),
                    password: request.password.as_deref().unwrap_or_default().to_vec(),
                });
                None
            }
            (Some(_), None) if listener.config.allow_anonymous => Some(AuthDecision::Accept),
            (Some(_), None) => Some(AuthDecision::Reject(ReasonCode::BadUserNameOrPassword)),
        };
        if let Some(decision) = decision {
            if decision != AuthDecision::Accept {
                info!(client_id = %request.client_id, username = ?request.username, ?decision, "authentication refused");
            }
            let now = self.now();
            self.broker.resolve_auth(now, request.token, decision);
        }
    }

    fn authorize(&mut self, request: AuthorizeRequest) {
        if self.external_authorize {
            self.authorize_requests.push(request);
            return;
        }
        warn!(client_id = %request.client_id, "the authorization policy deferred a decision, but no authorizer is set; refusing");
        let decision: AuthorizeDecision = match request.what {
            Operation::Subscribe { .. } => {
                SubscribeDecision::Deny(ReasonCode::NotAuthorized).into()
            }
            _ => PublishDecision::Deny(ReasonCode::NotAuthorized).into(),
        };
        let now = self.now();
        self.broker.resolve_authorize(now, request.token, decision);
    }

    /// The reason code refused subscriptions get.
    pub fn subscribe_denied_code(&self) -> ReasonCode {
        self.denied
    }
}

fn log_event(event: &Event) {
    match event {
        Event::ClientConnected {
            conn,
            client_id,
            username,
        } => {
            debug!(%conn, %client_id, ?username, "client connected")
        }
        Event::ClientDisconnected {
            conn,
            client_id,
            reason,
        } => {
            debug!(%conn, %client_id, %reason, "client disconnected")
        }
        Event::QueueFull { client_id } => debug!(%client_id, "queue full, message dropped"),
        other => tracing::trace!(?other, "event"),
    }
}

/// The engine configuration a runtime configuration describes.
fn engine_config(
    config: &Config,
    needs_auth: bool,
    acl: Option<AclPolicy>,
    _denied: ReasonCode,
) -> broker::Config {
    let l = &config.limits;
    let m = &config.mqtt;
    broker::Config {
        limits: broker::Limits {
            max_packet_size: l.max_packet_size,
            max_inflight: l.max_inflight,
            max_queued_messages: l.max_queued_messages as usize,
            max_queued_bytes: usize::try_from(l.max_queued_bytes).unwrap_or(usize::MAX),
            queue_qos0_offline: l.queue_qos0_offline,
            max_client_id_len: usize::from(l.max_client_id_len),
            max_topic_levels: usize::from(l.max_topic_levels),
            max_subscriptions_per_client: l.max_subscriptions_per_client as usize,
            max_connections: l.max_connections as usize,
            connect_timeout: Duration::from_millis(l.connect_timeout_ms),
            max_keepalive: l.max_keepalive_secs,
            outbound_buffer_bytes: usize::try_from(l.outbound_buffer_bytes).unwrap_or(usize::MAX),
            ..broker::Limits::default()
        },
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
        sys_interval: (config.sys.interval_secs > 0)
            .then(|| Duration::from_secs(u64::from(config.sys.interval_secs))),
        events: config.verbosity > 0,
        authentication: if needs_auth {
            Authentication::External
        } else {
            Authentication::AllowAll
        },
        authorization: match acl {
            Some(policy) => Box::new(policy),
            None => Box::new(broker::AllowAll),
        },
        ..broker::Config::default()
    }
}
