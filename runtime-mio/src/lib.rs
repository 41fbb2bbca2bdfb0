//! The roost MQTT broker on mio: a blocking readiness loop that a host
//! program can also step.
//!
//! A [`Server`] owns the engine (through `roost-runtime`'s
//! [`Driver`]), its listeners and its connections, all on the calling
//! thread. [`Server::run`] loops until shutdown; a host with an event loop of
//! its own calls [`Server::poll_once`] instead, with a timeout that suits it,
//! and uses the in-process [`Server::publish`], [`Server::subscribe`] and
//! [`Server::take_deliveries`] between steps. Authentication and
//! authorization can be decided by the host too, poll-style
//! ([`Server::take_auth_requests`], [`Server::take_authorize_requests`]). Protocol, TLS, WebSocket and
//! authentication logic all live below; one step is:
//!
//! ```text
//!  poll (readiness, or the driver's next deadline)
//!   ├─ listener readable ──► accept until WouldBlock ──► Driver::handle_accept
//!   ├─ socket readable   ──► read until WouldBlock   ──► Driver::handle_read
//!   ├─ socket writable   ──► Driver::handle_write until drained or WouldBlock
//!   ├─ waker             ──► jobs done on the worker pool ──► Driver::handle_job_done
//!   └─ deadline passed   ──► Driver::handle_timeout
//!  then drain Driver::poll_event: Wake ──► write, and obey Driver::interest;
//!  Job ──► the pool; requests and deliveries ──► queues the host takes
//! ```
//!
//! Sockets are edge-triggered: each is read and written until `WouldBlock`,
//! and is registered for WRITABLE only while it has output the kernel would
//! not take.
//!
//! ```no_run
//! # fn demo() -> std::io::Result<()> {
//! let mut config = roost_runtime::config::Config::default();
//! config.listeners[0].bind = "127.0.0.1:0".parse().unwrap();
//! let mut server = roost_mio::Server::bind(config)?;
//! let sub = server.subscribe("sensors/#")?;
//! server.publish("sensors/1", "21.5", 0, false)?;
//! for (subscription, message) in server.take_deliveries() {
//!     assert_eq!(subscription, sub);
//!     println!("{}: {:?}", message.topic.as_str(), message.payload);
//! }
//! // In a host's own loop: server.poll_once(Some(Duration::from_millis(10)))?;
//! server.shutdown();
//! server.run()?; // flushes the DISCONNECTs and returns
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use roost_core::broker::{
    AccessPolicy, AuthDecision, AuthRequest, AuthToken, AuthorizeDecision, AuthorizeRequest,
    AuthorizeToken, ConnId, LocalSubscription, Message,
};
use roost_runtime::clock::Clock;
use roost_runtime::config::Config;
use roost_runtime::driver::{Driver, Event, FileError, Files, WriteStatus};
use roost_runtime::net::Listeners;
use roost_runtime::pool::Pool;
use roost_runtime::service::Service;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::{info, warn};

const WAKER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
/// Listener number `i` is registered as `Token(LISTENERS + i)`, apart from
/// the connections' tokens (counted up from 0), since a reload adds
/// listeners after connections exist.
const LISTENERS: usize = usize::MAX / 2;

struct Conn {
    stream: TcpStream,
    id: ConnId,
    /// Registered for WRITABLE too (output is waiting for the kernel).
    writable: bool,
    /// Edge-triggered: readiness was reported and not yet read to
    /// `WouldBlock` (paused by backpressure, or out of turns).
    readable: bool,
    shut_write: bool,
    /// A bridge's connection whose non-blocking connect has not completed:
    /// its first readiness says whether it did.
    dialing: bool,
}

/// Stops a [`Server`] from another thread (see [`Server::stopper`]).
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Stopper {
    /// Asks the server to shut down as [`Server::shutdown`] does; it does so
    /// on its next step.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

/// The broker: listeners, connections and the engine, stepped by
/// [`Server::poll_once`] or run by [`Server::run`].
pub struct Server {
    config: Config,
    clock: Clock,
    poll: Poll,
    events: Events,
    driver: Driver,
    /// `None` once the driver said to stop listening.
    listeners: Listeners<TcpListener>,
    addrs: Vec<SocketAddr>,
    conns: HashMap<Token, Conn>,
    tokens: HashMap<ConnId, Token>,
    /// Connections whose `readable` is set, so a step visits only those,
    /// never every connection.
    to_read: Vec<Token>,
    ready: Vec<(Token, bool, bool)>,
    next_token: usize,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    pool: Pool,
    signals: Option<Signals>,
    /// The binary's service, told about the signals [`Server::handle_signals`] handles.
    service: Option<Service>,
    read_buf: Vec<u8>,
    /// In-process deliveries until the host takes them, at most the
    /// driver's local queue capacity per subscription.
    deliveries: VecDeque<(LocalSubscription, Message)>,
    queued: HashMap<LocalSubscription, usize>,
    auth_requests: Vec<AuthRequest>,
    authorize_requests: Vec<AuthorizeRequest>,
    /// When to try accepting again after a failed accept (out of file
    /// descriptors, typically): the listeners are edge-triggered, so the
    /// connections left in the backlog would otherwise wait for a new one.
    accept_retry: Option<Instant>,
    stopped: bool,
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

/// SIGINT, SIGTERM and SIGHUP caught and kept until a [`Server`] handles
/// them ([`Server::handle_caught_signals`]).
pub struct CaughtSignals(Signals);

impl CaughtSignals {
    /// Installs the handlers: from now on these signals no longer stop the
    /// process at once.
    pub fn catch() -> io::Result<CaughtSignals> {
        Signals::new([SIGINT, SIGTERM, SIGHUP]).map(CaughtSignals)
    }
}

impl Server {
    /// Loads the files the configuration names and binds every listener
    /// (errors are returned here). Nothing is accepted until the first
    /// [`Server::poll_once`].
    pub fn bind(config: Config) -> io::Result<Server> {
        let clock = Clock::new();
        let mut driver = Driver::open(&config, clock.now()).map_err(invalid)?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listeners = Listeners::default();
        let mut addrs = Vec::new();
        for (index, l) in driver.listeners().enumerate() {
            let mut listener = TcpListener::from_std(roost_runtime::net::listen_on(l)?);
            poll.registry().register(
                &mut listener,
                Token(LISTENERS + index),
                Interest::READABLE,
            )?;
            addrs.push(listener.local_addr()?);
            listeners.insert(index, listener);
        }
        for (index, addr) in addrs.iter().enumerate() {
            driver.handle_listening(index, *addr);
        }
        for warning in config.warnings() {
            warn!("{warning}");
        }
        let wake = waker.clone();
        let pool = Pool::start(Arc::new(move || {
            let _ = wake.wake();
        }))?;
        Ok(Server {
            next_token: 0,
            config,
            clock,
            poll,
            events: Events::with_capacity(1024),
            driver,
            listeners,
            addrs,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            to_read: Vec::new(),
            ready: Vec::new(),
            waker,
            stop: Arc::new(AtomicBool::new(false)),
            pool,
            signals: None,
            service: None,
            read_buf: vec![0; 64 * 1024],
            deliveries: VecDeque::new(),
            queued: HashMap::new(),
            auth_requests: Vec::new(),
            authorize_requests: Vec::new(),
            accept_retry: None,
            stopped: false,
        })
    }

    /// The address each listener is bound to, in configuration order (the
    /// `[http]` endpoint, if configured, last).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Handles SIGINT and SIGTERM (shut down) and SIGHUP (reload) in this
    /// server's loop. For the `roost-mio` binary; an embedding program
    /// usually handles signals itself.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        self.handle_caught_signals(CaughtSignals::catch()?)
    }

    /// As [`Server::handle_signals`], with handlers installed earlier
    /// ([`CaughtSignals::catch`], before [`Server::bind`]): a signal that
    /// came in between is handled by the first [`Server::poll_once`]
    /// rather than killing the process.
    pub fn handle_caught_signals(&mut self, signals: CaughtSignals) -> io::Result<()> {
        let mut signals = signals.0;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Hands the binary's [`Service`] to the signals [`Server::handle_signals`]
    /// handles: SIGHUP re-reads the configuration through it and reloads
    /// with what it returns, a stop signal tells it the broker is stopping.
    /// It goes (and its pid file with it) when the server is dropped.
    pub fn set_service(&mut self, service: Service) {
        self.service = Some(service);
    }

    /// A handle that stops this server from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            flag: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Steps until the server has shut down (after [`Server::shutdown`], a
    /// [`Stopper`], or a signal) and its connections are closed.
    pub fn run(&mut self) -> io::Result<()> {
        while !self.stopped {
            self.poll_once(None)?;
        }
        Ok(())
    }

    /// Whether the server has shut down, closed every connection and
    /// flushed its store.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// One step: waits for readiness, the driver's next deadline, or
    /// `timeout` (whichever comes first; `None` waits as long as there is
    /// nothing to do), then accepts, reads, writes and runs timers. Returns
    /// early, without error, when a signal interrupts the wait.
    pub fn poll_once(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let wait = self.wait_time(timeout);
        match self.poll.poll(&mut self.events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events.iter().map(|e| {
            (
                e.token(),
                e.is_readable() || e.is_read_closed() || e.is_error(),
                e.is_writable() || e.is_write_closed(),
            )
        }));
        for &(token, readable, writable) in &ready {
            match token {
                WAKER => self.jobs_done(),
                SIGNALS => self.handle_pending_signals(),
                Token(i) if i >= LISTENERS && i - LISTENERS < self.listeners.len() => {
                    self.accept(i - LISTENERS);
                }
                token if self.conns.get(&token).is_some_and(|c| c.dialing) => {
                    self.finish_dial(token);
                }
                token => {
                    if readable {
                        self.mark_readable(token);
                    }
                    if writable {
                        self.flush(token);
                    }
                }
            }
        }
        self.ready = ready;
        if self.accept_retry.is_some_and(|at| at <= Instant::now()) {
            self.accept_retry = None;
            for index in 0..self.listeners.len() {
                self.accept(index);
            }
        }
        if self.stop.swap(false, Ordering::AcqRel) {
            self.shutdown();
        }
        // Sockets with unread input: read now, so a socket that was paused
        // by backpressure or ran out of turns is not forgotten (no new edge
        // will come for bytes already there).
        let readable = std::mem::take(&mut self.to_read);
        for &token in &readable {
            self.read(token);
            if self.conns.get(&token).is_some_and(|c| c.readable) {
                self.to_read.push(token);
            }
        }
        let now = self.clock.now();
        if self.driver.poll_timeout().is_some_and(|at| at <= now) {
            self.driver.handle_timeout(now);
        }
        self.service();
        Ok(())
    }

    /// Closes every connection (MQTT 5 clients get DISCONNECT 0x8B) and
    /// stops accepting. Keep stepping (or call [`Server::run`]) to flush:
    /// the server is stopped once every connection is closed (or the
    /// driver's grace period is over) and the store is flushed.
    pub fn shutdown(&mut self) {
        let now = self.clock.now();
        self.driver.handle_shutdown(now);
        self.service();
    }

    /// Applies the configuration again (what SIGHUP does, after
    /// re-reading the file into it; see
    /// `roost_runtime::driver::Driver::handle_reload`): listeners, limits
    /// and bridges change live, certificates, password and ACL files are
    /// re-read. Returns what failed to load; those keep their previous
    /// contents.
    pub fn reload(&mut self) -> Vec<FileError> {
        let now = self.clock.now();
        let errors = self
            .driver
            .handle_reload(now, &self.config, Files::load(&self.config));
        if errors.is_empty() {
            info!("configuration, certificates, password and ACL files reloaded");
        }
        self.service();
        errors
    }

    /// Publishes a message as the broker itself. Returns how many
    /// subscriptions it reached. Writing to the subscribers' sockets begins
    /// here and continues in later steps.
    pub fn publish(
        &mut self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: u8,
        retain: bool,
    ) -> io::Result<usize> {
        let message = roost_runtime::embed::message(topic, payload, qos, retain)?;
        let now = self.clock.now();
        let matched = self.driver.handle_publish(now, message);
        self.service();
        Ok(matched)
    }

    /// Subscribes in-process: matching messages (retained ones at once)
    /// come from [`Server::take_deliveries`]. At most the session queue
    /// limit (`limits.max_queued_messages`) wait per subscription; beyond
    /// it, messages for it are dropped until the host takes some.
    pub fn subscribe(&mut self, filter: &str) -> io::Result<LocalSubscription> {
        let filter = roost_runtime::embed::filter(filter)?;
        let now = self.clock.now();
        let sub = self.driver.handle_subscribe(now, filter);
        self.service();
        Ok(sub)
    }

    /// Ends an in-process subscription. False when it did not exist.
    pub fn unsubscribe(&mut self, subscription: LocalSubscription) -> bool {
        let now = self.clock.now();
        let found = self.driver.handle_unsubscribe(now, subscription);
        self.queued.remove(&subscription);
        self.deliveries.retain(|(sub, _)| *sub != subscription);
        self.service();
        found
    }

    /// Messages for in-process subscriptions since the last call. Call it
    /// after each step.
    pub fn take_deliveries(&mut self) -> Vec<(LocalSubscription, Message)> {
        self.queued.clear();
        self.deliveries.drain(..).collect()
    }

    /// Decides every publish, subscribe and delivery with `policy` instead
    /// of the ACL files.
    pub fn set_authorization(&mut self, policy: Box<dyn AccessPolicy>) {
        self.driver.set_authorization(policy);
    }

    /// Hands every CONNECT's authentication to the host instead of the
    /// password files: take the requests with [`Server::take_auth_requests`]
    /// after each step and answer with [`Server::resolve_auth`], as late as
    /// suits (the client waits; its connect timeout still runs).
    pub fn use_external_authentication(&mut self) {
        self.driver.use_external_authentication();
    }

    /// Authentication requests since the last call (only after
    /// [`Server::use_external_authentication`]).
    pub fn take_auth_requests(&mut self) -> Vec<AuthRequest> {
        std::mem::take(&mut self.auth_requests)
    }

    /// The host's answer to an authentication request.
    pub fn resolve_auth(&mut self, token: AuthToken, decision: AuthDecision) {
        let now = self.clock.now();
        self.driver.handle_auth_decided(now, token, decision);
        self.service();
    }

    /// Hands the publish and subscribe decisions the policy defers (all of
    /// them, without a policy) to the host: take them with
    /// [`Server::take_authorize_requests`] and answer with
    /// [`Server::resolve_authorize`] within `limits.authorize_timeout`.
    pub fn use_external_authorization(&mut self) {
        self.driver.use_external_authorization();
    }

    /// Authorization requests since the last call (only after
    /// [`Server::use_external_authorization`]).
    pub fn take_authorize_requests(&mut self) -> Vec<AuthorizeRequest> {
        std::mem::take(&mut self.authorize_requests)
    }

    /// The host's answer to an authorization request.
    pub fn resolve_authorize(
        &mut self,
        token: AuthorizeToken,
        decision: impl Into<AuthorizeDecision>,
    ) {
        let now = self.clock.now();
        self.driver.handle_authorize_decided(now, token, decision);
        self.service();
    }

    /// The driver, for statistics and inspection.
    pub fn driver(&self) -> &Driver {
        &self.driver
    }

    fn wait_time(&self, timeout: Option<Duration>) -> Option<Duration> {
        if self.stop.load(Ordering::Acquire)
            || self.stopped
            || self.to_read.iter().any(|t| {
                self.conns
                    .get(t)
                    .is_some_and(|c| self.driver.interest(c.id).read)
            })
        {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let deadlines = self
            .driver
            .poll_timeout()
            .map(|at| self.clock.deadline(at))
            .into_iter()
            .chain(self.accept_retry);
        let until_deadline = deadlines.min().map(|at| at.saturating_duration_since(now));
        match (timeout, until_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn accept(&mut self, index: usize) {
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let (mut stream, remote) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let now = self.clock.now();
                    let until = self.driver.handle_accept_error(now, index, &e);
                    self.accept_retry = Some(self.clock.deadline(until));
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            let token = Token(self.next_token);
            self.next_token += 1;
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE)
            {
                warn!(error = %e, "connection could not be registered");
                continue;
            }
            let now = self.clock.now();
            let id = self.driver.handle_accept(now, index, Some(remote));
            self.tokens.insert(id, token);
            self.conns.insert(
                token,
                Conn {
                    stream,
                    id,
                    writable: false,
                    readable: false,
                    shut_write: false,
                    dialing: false,
                },
            );
            // Bytes may have arrived before registration.
            self.mark_readable(token);
        }
    }

    /// Starts a non-blocking connect for a bridge; [`Server::finish_dial`]
    /// completes it on the socket's first readiness. (The driver gives up on
    /// its own after `DIAL_TIMEOUT`.)
    fn dial(&mut self, id: ConnId, addr: &str) {
        let now = self.clock.now();
        let started = addr
            .to_socket_addrs()
            .and_then(|mut all| {
                all.next().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address"))
                })
            })
            .and_then(TcpStream::connect);
        let mut stream = match started {
            Ok(stream) => stream,
            Err(e) => return self.driver.handle_connect_failed(now, id, &e),
        };
        let token = Token(self.next_token);
        self.next_token += 1;
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.driver.handle_connect_failed(now, id, &e);
        }
        self.tokens.insert(id, token);
        self.conns.insert(
            token,
            Conn {
                stream,
                id,
                writable: true,
                readable: false,
                shut_write: false,
                dialing: true,
            },
        );
    }

    /// The dialled socket became ready: connected, or failed.
    fn finish_dial(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let now = self.clock.now();
        let id = conn.id;
        let outcome = match conn.stream.take_error() {
            Ok(None) => conn.stream.peer_addr(),
            Ok(Some(e)) | Err(e) => Err(e),
        };
        match outcome {
            Ok(remote) => {
                conn.dialing = false;
                let _ = conn.stream.set_nodelay(true);
                self.driver.handle_connected(now, id, Some(remote));
                self.mark_readable(token);
                self.flush(token);
            }
            // Not connected yet (a spurious wake-up): wait for the next.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
            Err(e) => {
                if let Some(mut conn) = self.conns.remove(&token) {
                    let _ = self.poll.registry().deregister(&mut conn.stream);
                }
                self.tokens.remove(&id);
                self.driver.handle_connect_failed(now, id, &e);
            }
        }
    }

    fn mark_readable(&mut self, token: Token) {
        if let Some(conn) = self.conns.get_mut(&token) {
            if !conn.readable {
                conn.readable = true;
                self.to_read.push(token);
            }
        }
    }

    /// Reads until `WouldBlock`, the driver pauses reading, or the end of
    /// this turn.
    fn read(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let id = conn.id;
        for _ in 0..roost_runtime::net::READS_PER_TURN {
            if !self.driver.interest(id).read {
                return;
            }
            match conn.stream.read(&mut self.read_buf) {
                Ok(0) => return self.drop_conn(token),
                Ok(n) => {
                    let now = self.clock.now();
                    self.driver.handle_read(now, id, &self.read_buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.drop_conn(token),
            }
        }
    }

    /// Writes what the driver has for `token`, then does what its interest
    /// says.
    fn flush(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let id = conn.id;
        let stream = &mut conn.stream;
        let now = self.clock.now();
        let status = self
            .driver
            .handle_write(now, id, |bufs| stream.write_vectored(bufs));
        let want_writable = match status {
            Ok(WriteStatus::Drained) => false,
            Ok(WriteStatus::WouldBlock) => true,
            Err(_) => return self.drop_conn(token),
        };
        let interest = self.driver.interest(id);
        if interest.close {
            return self.release(token);
        }
        if interest.shutdown_write && !conn.shut_write {
            conn.shut_write = true;
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
        if want_writable != conn.writable {
            let wanted = if want_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if self
                .poll
                .registry()
                .reregister(&mut conn.stream, token, wanted)
                .is_err()
            {
                return self.drop_conn(token);
            }
            conn.writable = want_writable;
        }
    }

    /// Carries out the driver's events until there are none.
    fn service(&mut self) {
        while let Some(event) = self.driver.poll_event() {
            match event {
                Event::Wake(id) => {
                    if let Some(&token) = self.tokens.get(&id) {
                        self.flush(token);
                    }
                }
                Event::Job(job) => self.pool.submit(job),
                Event::Deliver {
                    subscription,
                    message,
                } => {
                    let queued = self.queued.entry(subscription).or_default();
                    if *queued < self.driver.local_queue_capacity() {
                        *queued += 1;
                        self.deliveries.push_back((subscription, message));
                    } else {
                        tracing::debug!(?subscription, "in-process queue full, message dropped");
                    }
                }
                Event::Authenticate(request) => self.auth_requests.push(request),
                Event::Authorize(request) => self.authorize_requests.push(request),
                Event::StopListening => {
                    // Dropping the listeners refuses new connections at once.
                    for mut l in self.listeners.take_all() {
                        let _ = self.poll.registry().deregister(&mut l);
                    }
                }
                Event::Stopped => {
                    self.stopped = true;
                    self.to_read.clear();
                }
                Event::Listen {
                    listener,
                    bind,
                    reuse_port,
                } => self.listen(listener, bind, reuse_port),
                Event::Unlisten { listener } => {
                    if let Some(mut l) = self.listeners.remove(listener) {
                        let _ = self.poll.registry().deregister(&mut l);
                    }
                }
                Event::Connect { conn, addr } => self.dial(conn, &addr),
                _ => {}
            }
        }
    }

    /// Binds listener number `index` (added by a reload) and accepts on
    /// it from the next step.
    fn listen(&mut self, index: usize, bind: SocketAddr, reuse_port: bool) {
        let registry = self.poll.registry();
        self.listeners
            .listen(&mut self.driver, index, bind, reuse_port, |l| {
                let mut listener = TcpListener::from_std(l);
                registry.register(&mut listener, Token(LISTENERS + index), Interest::READABLE)?;
                Ok(listener)
            });
    }

    fn jobs_done(&mut self) {
        while let Some(done) = self.pool.take_done() {
            let now = self.clock.now();
            self.driver.handle_job_done(now, done);
        }
    }

    fn handle_pending_signals(&mut self) {
        let Some(signals) = &mut self.signals else {
            return;
        };
        let pending: Vec<i32> = signals.pending().collect();
        for signal in pending {
            if signal == SIGHUP {
                info!("SIGHUP: reloading");
                if let Some(service) = &mut self.service {
                    self.config = service.reload();
                }
                self.reload();
                if let Some(service) = &self.service {
                    service.reloaded();
                }
            } else {
                if let Some(service) = &self.service {
                    service.stopping();
                }
                self.shutdown();
            }
        }
    }

    /// The transport is gone (peer closed, or an error).
    fn drop_conn(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.tokens.remove(&conn.id);
            let now = self.clock.now();
            self.driver.handle_closed(now, conn.id);
        }
    }

    /// The driver let go of the connection: drop the socket.
    fn release(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.tokens.remove(&conn.id);
        }
    }
}
