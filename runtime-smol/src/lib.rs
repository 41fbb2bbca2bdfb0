//! The roost MQTT broker on smol.
//!
//! The same single-threaded design as `roost-tokio`: one thread runs a
//! `LocalExecutor` holding the engine and every connection, so the data
//! path has no locks and no channels. All protocol, TLS, WebSocket and
//! authentication logic lives in `roost-core` and `roost-runtime`; this
//! crate only moves bytes and keeps time:
//!
//! ```text
//!   accept ──► Driver::handle_accept     timer ──► Driver::handle_timeout
//!   read   ──► Driver::handle_read       pool  ──► Driver::handle_job_done
//!   then Driver::poll_event: Wake ──► the connection's task writes
//!   (Driver::handle_write) and obeys Driver::interest; Job ──► the pool
//! ```
//!
//! Password checks and store commits run on the driver's worker pool
//! ([`roost_runtime::pool::Pool`]), bounded by the driver, as on every
//! runtime. [`start`] takes the same [`Hooks`] as `roost-tokio`.
//!
//! Embedding: [`start`] runs a broker on its own thread and returns a
//! [`ServerHandle`] to publish, subscribe in-process and stop it. Its
//! methods are async but executor-agnostic (smol channels), so any executor,
//! or `smol::block_on`, can call them.
//!
//! ```no_run
//! # fn demo() -> std::io::Result<()> {
//! let mut config = roost_runtime::config::Config::default();
//! config.listeners[0].bind = "127.0.0.1:0".parse().unwrap();
//! let server = roost_smol::start(config, roost_smol::Hooks::default())?;
//! smol::block_on(async {
//!     let messages = server.subscribe("sensors/#").await?;
//!     server.publish("sensors/1", "21.5", 0, false).await?;
//!     let message = messages.recv().await;
//!     server.shutdown().await;
//!     Ok(())
//! })
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use bytes::Bytes;
use roost_core::broker::{AuthRequest, AuthorizeRequest, ConnId, LocalSubscription, Message};
use roost_core::codec::QoS;
use roost_core::topic::{TopicFilter, TopicName};
use roost_runtime::clock::Clock;
use roost_runtime::config::Config;
use roost_runtime::driver::{Driver, Event, Files, WriteStatus};
use roost_runtime::pool::Pool;
use smol::channel::{self, Receiver, Sender};
use smol::future::{self, FutureExt as _};
use smol::{Async, LocalExecutor, Task, Timer};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use tracing::{info, warn};

pub use roost_runtime::hooks::{Authenticator, Authorizer, Hooks};

enum Command {
    Publish(Message, Sender<usize>),
    Subscribe(TopicFilter, Sender<Message>, Sender<()>),
    Reload(Config),
    Shutdown(Sender<()>),
}

/// A running broker.
pub struct ServerHandle {
    commands: Sender<Command>,
    addrs: Vec<SocketAddr>,
    /// Capacity of an in-process subscription's channel.
    local_queue: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the broker has stopped")
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

impl ServerHandle {
    /// The address each listener is bound to, in configuration order (the
    /// `[http]` endpoint, if configured, last).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Publishes a message as the broker itself. Returns how many
    /// subscriptions it reached.
    pub async fn publish(
        &self,
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
        let (tx, rx) = channel::bounded(1);
        self.commands
            .send(Command::Publish(message, tx))
            .await
            .map_err(|_| gone())?;
        rx.recv().await.map_err(|_| gone())
    }

    /// Subscribes in-process: matching messages (retained ones first) arrive
    /// on the returned channel until it is dropped or the broker stops.
    ///
    /// The channel holds at most `limits.max_queued_messages` messages, like
    /// a client's session queue: while it is full, further messages for it
    /// are dropped, so a subscriber that stops reading cannot make the
    /// broker's memory grow.
    pub async fn subscribe(&self, filter: &str) -> io::Result<Receiver<Message>> {
        let filter = TopicFilter::copy_from_str(filter).map_err(invalid)?;
        let (tx, rx) = channel::bounded(self.local_queue);
        let (done, ready) = channel::bounded(1);
        self.commands
            .send(Command::Subscribe(filter, tx, done))
            .await
            .map_err(|_| gone())?;
        ready.recv().await.map_err(|_| gone())?;
        Ok(rx)
    }

    /// Re-reads certificates, password and ACL files from `config` (what
    /// SIGHUP does); a file that fails to load keeps its previous contents.
    pub fn reload(&self, config: Config) {
        let _ = self.commands.try_send(Command::Reload(config));
    }

    /// Stops the broker: closes every connection (MQTT 5 clients get
    /// DISCONNECT 0x8B), flushes, and waits for its thread to end.
    pub async fn shutdown(mut self) {
        let (tx, rx) = channel::bounded(1);
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.recv().await;
        }
        if let Some(thread) = self.thread.take() {
            let _ = smol::unblock(move || thread.join()).await;
        }
    }

    /// Blocks the calling thread until the broker stops.
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts a broker on a thread of its own: loads what the configuration
/// names and binds every listener (errors are returned here), then serves
/// until [`ServerHandle::shutdown`]. The hooks' futures run on the broker's
/// executor.
pub fn start(config: Config, hooks: Hooks) -> io::Result<ServerHandle> {
    let clock = Clock::new();
    let mut driver = Driver::open(&config, clock.now())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    if hooks.authenticate.is_some() {
        driver.use_external_authentication();
    }
    if let Some(policy) = hooks.policy {
        driver.set_authorization(policy);
    }
    if hooks.authorize.is_some() {
        driver.use_external_authorization();
    }
    let listeners = driver
        .listeners()
        .map(|l| roost_runtime::net::listen(l.bind))
        .collect::<io::Result<Vec<_>>>()?;
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<io::Result<Vec<_>>>()?;
    for (l, addr) in driver.listeners().zip(&addrs) {
        info!(protocol = l.protocol.name(), %addr, "listening");
    }
    for warning in config.warnings() {
        warn!("{warning}");
    }
    let local_queue = driver.local_queue_capacity();
    let jobs_done = Notify::new();
    let wake = jobs_done.clone();
    let pool = Pool::start(Arc::new(move || wake.notify()))?;
    let (commands, rx) = channel::unbounded();
    let (authenticator, authorizer) = (hooks.authenticate, hooks.authorize);
    let thread = std::thread::Builder::new()
        .name("roost-smol".into())
        .spawn(move || {
            let ex = Rc::new(LocalExecutor::new());
            let shared = Rc::new(Shared {
                ex: ex.clone(),
                driver: RefCell::new(driver),
                clock,
                notifiers: RefCell::new(HashMap::new()),
                timer: Notify::new(),
                armed: Cell::new(None),
                read_buf: RefCell::new(vec![0; 64 * 1024]),
                subscribers: RefCell::new(HashMap::new()),
                pool,
                jobs_done,
                accepts: RefCell::new(Vec::new()),
                stopped: Notify::new(),
                authenticator,
                authorizer,
            });
            smol::block_on(ex.run(serve(shared, listeners, rx)));
        })?;
    Ok(ServerHandle {
        commands,
        addrs,
        local_queue,
        thread: Some(thread),
    })
}

/// A wake-up that is remembered until taken, like `tokio::sync::Notify`:
/// a channel with room for one message, sent to without waiting.
#[derive(Clone)]
struct Notify(Sender<()>, Receiver<()>);

impl Notify {
    fn new() -> Notify {
        let (tx, rx) = channel::bounded(1);
        Notify(tx, rx)
    }

    fn notify(&self) {
        let _ = self.0.try_send(());
    }

    async fn notified(&self) {
        let _ = self.1.recv().await;
    }
}

struct Shared<'ex> {
    ex: Rc<LocalExecutor<'ex>>,
    driver: RefCell<Driver>,
    clock: Clock,
    notifiers: RefCell<HashMap<ConnId, Notify>>,
    /// Wakes the timer task when the next deadline moved earlier.
    timer: Notify,
    armed: Cell<Option<roost_core::broker::Instant>>,
    read_buf: RefCell<Vec<u8>>,
    subscribers: RefCell<HashMap<LocalSubscription, Sender<Message>>>,
    pool: Pool,
    jobs_done: Notify,
    accepts: RefCell<Vec<Task<()>>>,
    stopped: Notify,
    authenticator: Option<Authenticator>,
    authorizer: Option<Authorizer>,
}

impl<'ex> Shared<'ex> {
    /// After every call into the driver: carry out its events, then re-arm
    /// the timer.
    fn after(self: &Rc<Self>) {
        loop {
            let Some(event) = self.driver.borrow_mut().poll_event() else {
                break;
            };
            match event {
                Event::Wake(id) => {
                    if let Some(n) = self.notifiers.borrow().get(&id) {
                        n.notify();
                    }
                }
                Event::Job(job) => self.pool.submit(job),
                Event::Deliver {
                    subscription,
                    message,
                } => self.deliver(subscription, message),
                Event::Authenticate(request) => self.authenticate(request),
                Event::Authorize(request) => self.authorize(request),
                // Dropping a task cancels it: no new connections from here.
                Event::StopListening => self.accepts.borrow_mut().clear(),
                Event::Stopped => self.stopped.notify(),
                Event::Connect { conn, addr } => {
                    self.ex.spawn(dial(self.clone(), conn, addr)).detach();
                }
                _ => {}
            }
        }
        let next = self.driver.borrow().poll_timeout();
        if next.is_some() && (self.armed.get().is_none() || next < self.armed.get()) {
            self.timer.notify();
        }
    }

    fn deliver(&self, subscription: LocalSubscription, message: Message) {
        let mut subscribers = self.subscribers.borrow_mut();
        let Some(tx) = subscribers.get(&subscription) else {
            return;
        };
        match tx.try_send(message) {
            Ok(()) => {}
            Err(channel::TrySendError::Full(_)) => {
                tracing::debug!(?subscription, "in-process queue full, message dropped");
            }
            Err(channel::TrySendError::Closed(_)) => {
                subscribers.remove(&subscription);
                drop(subscribers);
                let now = self.clock.now();
                self.driver
                    .borrow_mut()
                    .handle_unsubscribe(now, subscription);
            }
        }
    }

    fn authenticate(self: &Rc<Self>, request: AuthRequest) {
        let Some(auth) = &self.authenticator else {
            return;
        };
        let shared = self.clone();
        let token = request.token;
        let decide = auth(request);
        self.ex
            .spawn(async move {
                let decision = decide.await;
                let now = shared.clock.now();
                shared
                    .driver
                    .borrow_mut()
                    .handle_auth_decided(now, token, decision);
                shared.after();
            })
            .detach();
    }

    fn authorize(self: &Rc<Self>, request: AuthorizeRequest) {
        let Some(authorize) = &self.authorizer else {
            return;
        };
        let shared = self.clone();
        let token = request.token;
        let decide = authorize(request);
        self.ex
            .spawn(async move {
                let decision = decide.await;
                let now = shared.clock.now();
                shared
                    .driver
                    .borrow_mut()
                    .handle_authorize_decided(now, token, decision);
                shared.after();
            })
            .detach();
    }
}

async fn serve(shared: Rc<Shared<'_>>, listeners: Vec<TcpListener>, commands: Receiver<Command>) {
    for (index, listener) in listeners.into_iter().enumerate() {
        match Async::new(listener) {
            Ok(listener) => {
                let task = shared
                    .ex
                    .spawn(accept_loop(shared.clone(), listener, index));
                shared.accepts.borrow_mut().push(task);
            }
            Err(e) => warn!(error = %e, "listener could not be registered"),
        }
    }
    let timer = shared.ex.spawn(timer_loop(shared.clone()));
    let jobs = {
        let shared = shared.clone();
        shared.ex.clone().spawn(async move {
            loop {
                shared.jobs_done.notified().await;
                while let Some(done) = shared.pool.take_done() {
                    let now = shared.clock.now();
                    shared.driver.borrow_mut().handle_job_done(now, done);
                    shared.after();
                }
            }
        })
    };
    // The first deadlines ($SYS, periodic flush) are known from the start.
    shared.after();
    while let Ok(command) = commands.recv().await {
        let now = shared.clock.now();
        match command {
            Command::Publish(message, done) => {
                let matched = shared.driver.borrow_mut().handle_publish(now, message);
                shared.after();
                let _ = done.try_send(matched);
            }
            Command::Subscribe(filter, tx, done) => {
                let sub = shared.driver.borrow_mut().handle_subscribe(now, filter);
                shared.subscribers.borrow_mut().insert(sub, tx);
                shared.after();
                let _ = done.try_send(());
            }
            Command::Reload(config) => {
                let errors = shared
                    .driver
                    .borrow_mut()
                    .handle_reload(now, Files::load(&config));
                shared.after();
                if errors.is_empty() {
                    info!("certificates, password and ACL files reloaded");
                }
            }
            Command::Shutdown(done) => {
                shared.driver.borrow_mut().handle_shutdown(now);
                shared.after();
                shared.stopped.notified().await;
                drop(timer);
                drop(jobs);
                // In-process subscriptions end with the broker (their
                // receivers see the channel close), whatever tasks still
                // hold `shared`.
                shared.subscribers.borrow_mut().clear();
                let _ = done.try_send(());
                return;
            }
        }
    }
}

async fn accept_loop(shared: Rc<Shared<'_>>, listener: Async<TcpListener>, index: usize) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                let now = shared.clock.now();
                let until = shared
                    .driver
                    .borrow_mut()
                    .handle_accept_error(now, index, &e);
                Timer::at(shared.clock.deadline(until)).await;
                continue;
            }
        };
        let _ = stream.get_ref().set_nodelay(true);
        let now = shared.clock.now();
        let id = shared
            .driver
            .borrow_mut()
            .handle_accept(now, index, Some(remote));
        let notify = Notify::new();
        shared.notifiers.borrow_mut().insert(id, notify.clone());
        shared.after();
        shared
            .ex
            .spawn(connection(shared.clone(), stream, id, notify))
            .detach();
    }
}

/// Dials for a bridge, then serves the socket like an accepted one.
async fn dial(shared: Rc<Shared<'_>>, id: ConnId, addr: String) {
    let connected = async {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for a in smol::net::resolve(addr.as_str()).await? {
            match Async::<TcpStream>::connect(a).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    match connected.await {
        Ok(stream) => {
            let _ = stream.get_ref().set_nodelay(true);
            let now = shared.clock.now();
            let remote = stream.get_ref().peer_addr().ok();
            let notify = Notify::new();
            shared.notifiers.borrow_mut().insert(id, notify.clone());
            shared.driver.borrow_mut().handle_connected(now, id, remote);
            shared.after();
            shared
                .ex
                .spawn(connection(shared.clone(), stream, id, notify))
                .detach();
        }
        Err(e) => {
            let now = shared.clock.now();
            shared
                .driver
                .borrow_mut()
                .handle_connect_failed(now, id, &e);
            shared.after();
        }
    }
}

/// What woke a connection task.
enum Wake {
    Notified,
    Writable(io::Result<()>),
    Readable(io::Result<()>),
}

/// A connection's task: writes what the driver has for it and reads what
/// the socket has, as [`Driver::interest`] says, until the driver or the
/// peer ends it.
async fn connection(shared: Rc<Shared<'_>>, stream: Async<TcpStream>, id: ConnId, notify: Notify) {
    // Whether the socket may still hold unread bytes: after a read that
    // filled bytes, read again (after yielding) before waiting for
    // readiness, which costs a reactor round trip.
    let mut maybe_readable = false;
    let mut shut_write = false;
    let gone = loop {
        let now = shared.clock.now();
        let written = shared
            .driver
            .borrow_mut()
            .handle_write(now, id, |bufs| stream.get_ref().write_vectored(bufs));
        shared.after();
        let need_writable = match written {
            Ok(WriteStatus::Drained) => false,
            Ok(WriteStatus::WouldBlock) => true,
            Err(_) => break true,
        };
        let interest = shared.driver.borrow().interest(id);
        if interest.close {
            break false;
        }
        if interest.shutdown_write && !shut_write {
            shut_write = true;
            let _ = stream.get_ref().shutdown(Shutdown::Write);
        }
        let wake = if maybe_readable && interest.read {
            // Let the other connections run between two reads of this one.
            future::yield_now().await;
            Wake::Readable(Ok(()))
        } else {
            let notified = async {
                notify.notified().await;
                Wake::Notified
            };
            let writable = async {
                if need_writable {
                    Wake::Writable(stream.writable().await)
                } else {
                    future::pending().await
                }
            };
            let readable = async {
                if interest.read {
                    Wake::Readable(stream.readable().await)
                } else {
                    future::pending().await
                }
            };
            notified.or(writable).or(readable).await
        };
        match wake {
            Wake::Notified => {}
            Wake::Writable(ready) => {
                if ready.is_err() {
                    break true;
                }
            }
            Wake::Readable(ready) => {
                if ready.is_err() {
                    break true;
                }
                let mut buf = shared.read_buf.borrow_mut();
                match stream.get_ref().read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => {
                        maybe_readable = true;
                        let now = shared.clock.now();
                        shared.driver.borrow_mut().handle_read(now, id, &buf[..n]);
                        drop(buf);
                        shared.after();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => maybe_readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break true,
                }
            }
        }
    };
    shared.notifiers.borrow_mut().remove(&id);
    if gone {
        let now = shared.clock.now();
        shared.driver.borrow_mut().handle_closed(now, id);
        shared.after();
    }
}

async fn timer_loop(shared: Rc<Shared<'_>>) {
    loop {
        let deadline = shared.driver.borrow().poll_timeout();
        shared.armed.set(deadline);
        match deadline {
            Some(at) => {
                let fired = async {
                    Timer::at(shared.clock.deadline(at)).await;
                    true
                }
                .or(async {
                    shared.timer.notified().await;
                    false
                })
                .await;
                if fired {
                    let now = shared.clock.now();
                    shared.driver.borrow_mut().handle_timeout(now);
                    shared.after();
                }
            }
            None => shared.timer.notified().await,
        }
    }
}
