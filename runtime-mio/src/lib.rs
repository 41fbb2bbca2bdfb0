//! The roost MQTT broker on mio: a blocking readiness loop that a host
//! program can also step.
//!
//! A [`Server`] owns the engine (through `roost-runtime`'s
//! [`Driver`]), its listeners and its connections, all on the calling
//! thread. [`Server::run`] loops until shutdown; a host with an event loop of
//! its own calls [`Server::poll_once`] instead, with a timeout that suits it,
//! and uses the in-process [`Server::publish`], [`Server::subscribe`] and
//! [`Server::take_deliveries`] between steps. Protocol, TLS, WebSocket and
//! authentication logic all live below; one step is:
//!
//! ```text
//!  poll (readiness, or the next engine/linger deadline)
//!   ├─ listener readable ──► accept until WouldBlock ──► Driver::open
//!   ├─ socket readable   ──► read until WouldBlock   ──► Driver::input
//!   ├─ socket writable   ──► Driver::write_to until drained or WouldBlock
//!   ├─ waker             ──► password checks done on worker threads ──► Driver::resolve_auth
//!   └─ deadline passed   ──► Driver::timeout
//!  then: write for every connection in Driver::take_woken, close what
//!  Driver::wants_close, start password checks from Driver::take_auth_jobs
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
    AccessPolicy, AuthDecision, AuthRequest, AuthToken, ConnId, LocalSubscription, Message,
};
use roost_core::codec::QoS;
use roost_core::topic::{TopicFilter, TopicName};
use roost_runtime::config::Config;
use roost_runtime::driver::{Driver, LINGER, LINGER_BYTES, WriteStatus};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

const WAKER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);

/// Reads of one socket per readiness event before the others get a turn;
/// the rest is read on the next step.
const READS_PER_TURN: usize = 16;

/// How long to wait before accepting again after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long [`Server::shutdown`] waits for the final DISCONNECTs to drain.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

struct Conn {
    stream: TcpStream,
    id: ConnId,
    /// Registered for WRITABLE too (output is waiting for the kernel).
    writable: bool,
    /// Edge-triggered: readiness was reported and not yet read to
    /// `WouldBlock` (paused by backpressure, or out of turns).
    readable: bool,
}

/// A connection the broker closed: its write side is shut, and what the
/// peer still sends is read and discarded until [`LINGER`] ends.
struct Lingering {
    stream: TcpStream,
    discarded: usize,
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
    poll: Poll,
    events: Events,
    driver: Driver,
    listeners: Vec<TcpListener>,
    addrs: Vec<SocketAddr>,
    conns: HashMap<Token, Conn>,
    tokens: HashMap<ConnId, Token>,
    lingering: HashMap<Token, Lingering>,
    /// Lingering sockets by deadline: every linger lasts [`LINGER`], so
    /// start order is deadline order. Entries of sockets that ended early
    /// are skipped (tokens are never reused).
    linger_order: VecDeque<(Instant, Token)>,
    /// Connections whose `readable` is set, so a step visits only those,
    /// never every connection.
    to_read: Vec<Token>,
    ready: Vec<(Token, bool, bool)>,
    next_token: usize,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    auth_tx: mpsc::Sender<(AuthToken, AuthDecision)>,
    auth_rx: mpsc::Receiver<(AuthToken, AuthDecision)>,
    signals: Option<Signals>,
    read_buf: Vec<u8>,
    woken: Vec<ConnId>,
    /// When to try accepting again after a failed accept (out of file
    /// descriptors, typically): the listeners are edge-triggered, so the
    /// connections left in the backlog would otherwise wait for a new one.
    accept_retry: Option<Instant>,
    /// Set by [`Server::shutdown`]: when the server gives up flushing.
    stopping: Option<Instant>,
    stopped: bool,
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

impl Server {
    /// Loads the files the configuration names and binds every listener
    /// (errors are returned here). Nothing is accepted until the first
    /// [`Server::poll_once`].
    pub fn bind(config: Config) -> io::Result<Server> {
        let driver = Driver::new(&config).map_err(invalid)?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut addrs = Vec::with_capacity(config.listeners.len());
        for (index, l) in config.listeners.iter().enumerate() {
            let mut listener = TcpListener::from_std(roost_runtime::net::listen(l.bind)?);
            poll.registry()
                .register(&mut listener, Token(index), Interest::READABLE)?;
            let addr = listener.local_addr()?;
            info!(protocol = l.protocol.name(), %addr, "listening");
            addrs.push(addr);
            listeners.push(listener);
        }
        for warning in config.warnings() {
            warn!("{warning}");
        }
        let (auth_tx, auth_rx) = mpsc::channel();
        Ok(Server {
            next_token: listeners.len(),
            config,
            poll,
            events: Events::with_capacity(1024),
            driver,
            listeners,
            addrs,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            lingering: HashMap::new(),
            linger_order: VecDeque::new(),
            to_read: Vec::new(),
            ready: Vec::new(),
            waker,
            stop: Arc::new(AtomicBool::new(false)),
            auth_tx,
            auth_rx,
            signals: None,
            read_buf: vec![0; 64 * 1024],
            woken: Vec::new(),
            accept_retry: None,
            stopping: None,
            stopped: false,
        })
    }

    /// The address each listener is bound to, in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Handles SIGINT and SIGTERM (shut down) and SIGHUP (reload password
    /// and ACL files) in this server's loop. For the `roost-mio` binary; an
    /// embedding program usually handles signals itself.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
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

    /// Whether the server has shut down and closed every connection.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// One step: waits for readiness, the next engine or linger deadline,
    /// or `timeout` (whichever comes first; `None` waits as long as there is
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
                WAKER => self.drain_auth_results(),
                SIGNALS => self.handle_pending_signals(),
                Token(i) if i < self.listeners.len() => self.accept(i),
                token if self.lingering.contains_key(&token) => self.drain_lingering(token),
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
        if self
            .driver
            .next_deadline()
            .is_some_and(|at| at <= Instant::now())
        {
            self.driver.timeout();
        }
        self.service();
        self.expire_lingering();
        if let Some(until) = self.stopping {
            if self.conns.is_empty() && self.lingering.is_empty() || Instant::now() >= until {
                self.finish();
            }
        }
        Ok(())
    }

    /// Closes every connection (MQTT 5 clients get DISCONNECT 0x8B) and
    /// stops accepting. Keep stepping (or call [`Server::run`]) to flush:
    /// the server is stopped once every connection is closed, or after a
    /// grace period of two seconds.
    pub fn shutdown(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        info!("shutting down");
        // Dropping the listeners refuses new connections at once.
        for mut listener in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.stopping = Some(Instant::now() + SHUTDOWN_GRACE);
        self.driver.shutdown();
        self.service();
    }

    /// Re-reads the password and ACL files (what SIGHUP does). Returns what
    /// failed to load; those files keep their previous contents.
    pub fn reload(&mut self) -> Vec<String> {
        let errors = self.driver.reload(&self.config);
        for e in &errors {
            warn!("reload: {e}");
        }
        if errors.is_empty() {
            info!("password and ACL files reloaded");
        }
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
        let message = Message {
            topic: TopicName::copy_from_str(topic).map_err(invalid)?,
            payload: payload.into(),
            qos: QoS::from_u8(qos).map_err(invalid)?,
            retain,
            properties: Default::default(),
        };
        let matched = self.driver.publish(message);
        self.service();
        Ok(matched)
    }

    /// Subscribes in-process: matching messages (retained ones at once)
    /// come from [`Server::take_deliveries`].
    pub fn subscribe(&mut self, filter: &str) -> io::Result<LocalSubscription> {
        let filter = TopicFilter::copy_from_str(filter).map_err(invalid)?;
        let sub = self.driver.subscribe(filter);
        self.service();
        Ok(sub)
    }

    /// Ends an in-process subscription. False when it did not exist.
    pub fn unsubscribe(&mut self, subscription: LocalSubscription) -> bool {
        self.driver.unsubscribe(subscription)
    }

    /// Messages for in-process subscriptions since the last call. Call it
    /// after each step: they accumulate until taken.
    pub fn take_deliveries(&mut self) -> Vec<(LocalSubscription, Message)> {
        self.driver.take_deliveries()
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
        self.driver.take_auth_requests()
    }

    /// The host's answer to an authentication request.
    pub fn resolve_auth(&mut self, token: AuthToken, decision: AuthDecision) {
        self.driver.resolve_auth(token, decision);
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
                    .is_some_and(|c| !self.driver.read_paused(c.id))
            })
        {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let deadlines = self
            .driver
            .next_deadline()
            .into_iter()
            .chain(self.linger_order.front().map(|&(until, _)| until))
            .chain(self.accept_retry)
            .chain(self.stopping);
        let until_deadline = deadlines.min().map(|at| at.saturating_duration_since(now));
        match (timeout, until_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn accept(&mut self, index: usize) {
        loop {
            let (mut stream, remote) = match self.listeners[index].accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Back off instead of spinning, and keep serving the
                    // connections we have.
                    warn!(error = %e, "accept failed");
                    self.accept_retry = Some(Instant::now() + ACCEPT_BACKOFF);
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
            let id = self.driver.open(index, Some(remote));
            self.tokens.insert(id, token);
            self.conns.insert(
                token,
                Conn {
                    stream,
                    id,
                    writable: false,
                    readable: false,
                },
            );
            // Bytes may have arrived before registration.
            self.mark_readable(token);
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

    /// Reads until `WouldBlock`, backpressure, or the end of this turn.
    fn read(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let id = conn.id;
        for _ in 0..READS_PER_TURN {
            if self.driver.read_paused(id) || self.driver.wants_close(id) {
                return;
            }
            match conn.stream.read(&mut self.read_buf) {
                Ok(0) => return self.drop_conn(token),
                Ok(n) => self.driver.input(id, &self.read_buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.drop_conn(token),
            }
        }
    }

    /// Writes what the driver has for `token`, then closes it if the driver
    /// is done with it.
    fn flush(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let id = conn.id;
        let stream = &mut conn.stream;
        let status = self.driver.write_to(id, |bufs| stream.write_vectored(bufs));
        let want_writable = match status {
            Ok(WriteStatus::Drained) => false,
            Ok(WriteStatus::WouldBlock) => true,
            Err(_) => return self.drop_conn(token),
        };
        if want_writable != conn.writable {
            let interest = if want_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if self
                .poll
                .registry()
                .reregister(&mut conn.stream, token, interest)
                .is_err()
            {
                return self.drop_conn(token);
            }
            conn.writable = want_writable;
        }
        if self.driver.wants_close(id) {
            self.start_linger(token);
        }
    }

    /// Writes for every connection the driver woke, until none is left
    /// (writing can unblock a client, which produces more output), and
    /// starts the password checks the driver asked for.
    fn service(&mut self) {
        loop {
            let mut woken = std::mem::take(&mut self.woken);
            woken.clear();
            self.driver.take_woken(&mut woken);
            if woken.is_empty() {
                self.woken = woken;
                break;
            }
            for id in &woken {
                if let Some(&token) = self.tokens.get(id) {
                    self.flush(token);
                }
            }
            self.woken = woken;
        }
        for job in self.driver.take_auth_jobs() {
            let tx = self.auth_tx.clone();
            let waker = self.waker.clone();
            // A thread per check: CONNECTs with passwords are rare next to
            // everything else, and argon2 would stall the loop.
            let spawned = std::thread::Builder::new()
                .name("roost-auth".into())
                .spawn(move || {
                    let _ = tx.send((job.token(), job.run()));
                    let _ = waker.wake();
                });
            if let Err(e) = spawned {
                warn!(error = %e, "cannot start a password check");
            }
        }
    }

    fn drain_auth_results(&mut self) {
        while let Ok((token, decision)) = self.auth_rx.try_recv() {
            self.driver.resolve_auth(token, decision);
        }
    }

    fn handle_pending_signals(&mut self) {
        let Some(signals) = &mut self.signals else {
            return;
        };
        let pending: Vec<i32> = signals.pending().collect();
        for signal in pending {
            if signal == SIGHUP {
                info!("SIGHUP: reloading password and ACL files");
                self.reload();
            } else {
                self.shutdown();
            }
        }
    }

    /// The transport is gone (peer closed, or an error).
    fn drop_conn(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.tokens.remove(&conn.id);
            self.driver.closed(conn.id);
        }
    }

    /// The broker closed the connection and everything is written: shut the
    /// write side, then read and discard until the peer closes or
    /// [`LINGER`] ends.
    fn start_linger(&mut self, token: Token) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        self.tokens.remove(&conn.id);
        self.driver.closed(conn.id);
        if conn.stream.shutdown(Shutdown::Write).is_err()
            || self
                .poll
                .registry()
                .reregister(&mut conn.stream, token, Interest::READABLE)
                .is_err()
        {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            return;
        }
        debug!(conn = %conn.id, "lingering");
        let until = Instant::now() + LINGER;
        self.linger_order.push_back((until, token));
        self.lingering.insert(
            token,
            Lingering {
                stream: conn.stream,
                discarded: 0,
            },
        );
        self.drain_lingering(token);
    }

    fn drain_lingering(&mut self, token: Token) {
        let Some(l) = self.lingering.get_mut(&token) else {
            return;
        };
        let done = loop {
            if l.discarded >= LINGER_BYTES {
                break true;
            }
            match l.stream.read(&mut self.read_buf) {
                Ok(0) => break true,
                Ok(n) => l.discarded += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        if done {
            self.end_linger(token);
        }
    }

    fn expire_lingering(&mut self) {
        let now = Instant::now();
        while let Some(&(until, token)) = self.linger_order.front() {
            if until > now && self.lingering.contains_key(&token) {
                break;
            }
            self.linger_order.pop_front();
            self.end_linger(token);
        }
    }

    fn end_linger(&mut self, token: Token) {
        if let Some(mut l) = self.lingering.remove(&token) {
            let _ = self.poll.registry().deregister(&mut l.stream);
        }
    }

    /// The end of a shutdown: whatever is still open is dropped.
    fn finish(&mut self) {
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        for token in tokens {
            self.drop_conn(token);
        }
        let tokens: Vec<Token> = self.lingering.keys().copied().collect();
        for token in tokens {
            self.end_linger(token);
        }
        self.linger_order.clear();
        self.to_read.clear();
        self.stopping = None;
        self.stopped = true;
        info!("stopped");
    }
}
