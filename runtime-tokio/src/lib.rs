//! The roost MQTT broker on tokio.
//!
//! One thread runs the engine and every connection on a single-threaded
//! tokio runtime, like Mosquitto's event loop: no locks, no channels on the
//! data path, and the other cores stay free for whatever else the machine
//! does. All protocol, TLS, WebSocket and authentication logic lives in
//! `roost-core` and `roost-runtime`; this crate only moves bytes and keeps
//! time:
//!
//! ```text
//!   accept ──► Driver::open          timer ──► Driver::timeout
//!   read   ──► Driver::input   ──►   wake writers of Driver::take_woken
//!   write  ◄── Driver::write_to      close ◄── Driver::wants_close
//! ```
//!
//! Embedding: [`start`] runs a broker on its own thread and returns a
//! [`ServerHandle`] to publish, subscribe in-process and stop it.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let mut config = roost_runtime::config::Config::default();
//! config.listeners[0].bind = "127.0.0.1:0".parse().unwrap();
//! let server = roost_tokio::start(config, roost_tokio::Hooks::default())?;
//! let mut messages = server.subscribe("sensors/#").await?;
//! server.publish("sensors/1", "21.5", 0, false).await?;
//! let message = messages.recv().await;
//! server.shutdown().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use bytes::Bytes;
use roost_core::broker::{
    AccessPolicy, AuthDecision, AuthRequest, AuthorizeDecision, AuthorizeRequest, ConnId,
    LocalSubscription, Message,
};
use roost_core::codec::QoS;
use roost_core::topic::{TopicFilter, TopicName};
use roost_runtime::config::Config;
use roost_runtime::driver::{Driver, WriteStatus};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{info, warn};

/// An authentication hook: decides a CONNECT, as late as it likes.
pub type Authenticator =
    Arc<dyn Fn(AuthRequest) -> Pin<Box<dyn Future<Output = AuthDecision> + Send>> + Send + Sync>;

/// An authorization hook: decides a publish or subscribe the policy
/// deferred, as late as it likes (within `limits.authorize_timeout`, 10 s by
/// default, after which the client's connection is closed). Answer an
/// [`roost_core::broker::Operation::Publish`] with a
/// [`roost_core::broker::PublishDecision`] and an
/// [`roost_core::broker::Operation::Subscribe`] with a
/// [`roost_core::broker::SubscribeDecision`], each `.into()` an
/// [`AuthorizeDecision`].
pub type Authorizer = Arc<
    dyn Fn(AuthorizeRequest) -> Pin<Box<dyn Future<Output = AuthorizeDecision> + Send>>
        + Send
        + Sync,
>;

/// Extension points for embedding programs.
#[derive(Default)]
pub struct Hooks {
    /// Decides every CONNECT (replacing the password files).
    pub authenticate: Option<Authenticator>,
    /// Decides every publish, subscribe and delivery inline (replacing the
    /// ACLs). It may defer publish and subscribe decisions
    /// ([`roost_core::broker::Verdict::Defer`]) to [`Hooks::authorize`];
    /// without that hook, a deferred decision is refused.
    pub policy: Option<Box<dyn AccessPolicy>>,
    /// Decides publishes and subscribes asynchronously (an ACL in a
    /// database, say). Alone, it is asked about every PUBLISH and SUBSCRIBE
    /// (replacing the ACLs); with [`Hooks::policy`], about those the policy
    /// defers. While a decision is pending, that client's later packets
    /// wait, in order; other clients are not held up. Deliveries are
    /// always decided inline, by the policy.
    pub authorize: Option<Authorizer>,
}

enum Command {
    Publish(Message, oneshot::Sender<usize>),
    Subscribe(TopicFilter, mpsc::Sender<Message>, oneshot::Sender<()>),
    Reload(Config),
    Shutdown(oneshot::Sender<()>),
}

/// A running broker.
pub struct ServerHandle {
    commands: mpsc::UnboundedSender<Command>,
    addrs: Vec<SocketAddr>,
    /// Capacity of an in-process subscription's channel.
    local_queue: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the broker has stopped")
}

impl ServerHandle {
    /// The address each listener is bound to, in configuration order.
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
        let topic = TopicName::copy_from_str(topic)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let qos = QoS::from_u8(qos).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let message = Message {
            topic,
            payload: payload.into(),
            qos,
            retain,
            properties: Default::default(),
        };
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Publish(message, tx))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// Subscribes in-process: matching messages (retained ones first) arrive
    /// on the returned channel until it is dropped or the broker stops.
    ///
    /// The channel holds at most `limits.max_queued_messages` messages, like
    /// a client's session queue: while it is full, further messages for it
    /// are dropped, so a subscriber that stops reading cannot make the
    /// broker's memory grow.
    pub async fn subscribe(&self, filter: &str) -> io::Result<mpsc::Receiver<Message>> {
        let filter = TopicFilter::copy_from_str(filter)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (tx, rx) = mpsc::channel(self.local_queue);
        let (done, ready) = oneshot::channel();
        self.commands
            .send(Command::Subscribe(filter, tx, done))
            .map_err(|_| gone())?;
        ready.await.map_err(|_| gone())?;
        Ok(rx)
    }

    /// Re-reads password and ACL files from `config` (what SIGHUP does).
    pub fn reload(&self, config: Config) {
        let _ = self.commands.send(Command::Reload(config));
    }

    /// Stops the broker: closes every connection (MQTT 5 clients get
    /// DISCONNECT 0x8B), flushes, and waits for its thread to end.
    pub async fn shutdown(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Blocks the calling thread until the broker stops.
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts a broker on a thread of its own: binds every listener (errors are
/// returned here), then serves until [`ServerHandle::shutdown`].
pub fn start(config: Config, hooks: Hooks) -> io::Result<ServerHandle> {
    let mut driver = Driver::new(&config)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let authenticator = hooks.authenticate;
    if authenticator.is_some() {
        driver.use_external_authentication();
    }
    if let Some(policy) = hooks.policy {
        driver.set_authorization(policy);
    }
    let authorizer = hooks.authorize;
    if authorizer.is_some() {
        driver.use_external_authorization();
    }
    let std_listeners = config
        .listeners
        .iter()
        .map(|l| roost_runtime::net::listen(l.bind))
        .collect::<io::Result<Vec<_>>>()?;
    let addrs = std_listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<io::Result<Vec<_>>>()?;
    for (l, addr) in config.listeners.iter().zip(&addrs) {
        info!(protocol = l.protocol.name(), %addr, "listening");
    }
    for warning in config.warnings() {
        warn!("{warning}");
    }
    // The configuration keeps this between 1 and 10,000,000; tokio's channel
    // allocates its slots as they fill, not up front.
    let local_queue = usize::try_from(config.limits.max_queued_messages)
        .unwrap_or(1)
        .max(1);
    let (commands, rx) = mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name("roost".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!(error = %e, "cannot start the tokio runtime");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(
                &runtime,
                serve(driver, std_listeners, rx, authenticator, authorizer),
            );
        })?;
    Ok(ServerHandle {
        commands,
        addrs,
        local_queue,
        thread: Some(thread),
    })
}

struct Shared {
    driver: RefCell<Driver>,
    /// One wake-up slot per connection: set by whoever produced output for
    /// it, awaited by its task (see [`woken`]).
    wakeups: RefCell<HashMap<ConnId, Wakeup>>,
    /// Wakes the timer task when the next deadline moved earlier.
    timer: Notify,
    armed: Cell<Option<std::time::Instant>>,
    read_buf: RefCell<Vec<u8>>,
    woken: RefCell<Vec<ConnId>>,
    subscribers: RefCell<HashMap<LocalSubscription, mpsc::Sender<Message>>>,
    authenticator: Option<Authenticator>,
    authorizer: Option<Authorizer>,
}

impl Shared {
    /// Whether `id`'s slot was woken since the last call; if not, `cx`'s
    /// waker is kept for the next wake-up. `None` if the slot is gone.
    fn take_wakeup(&self, id: ConnId, cx: &std::task::Context<'_>) -> Option<bool> {
        let mut wakeups = self.wakeups.borrow_mut();
        let slot = wakeups.get_mut(&id)?;
        if std::mem::take(&mut slot.woken) {
            return Some(true);
        }
        if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            slot.waker = Some(cx.waker().clone());
        }
        Some(false)
    }

    /// After every call into the driver: wake writers with new output, start
    /// password checks, hand out in-process deliveries, re-arm the timer.
    fn after(self: &Rc<Self>) {
        let mut woken = self.woken.borrow_mut();
        woken.clear();
        let mut driver = self.driver.borrow_mut();
        driver.take_woken(&mut woken);
        {
            let mut wakeups = self.wakeups.borrow_mut();
            for id in woken.iter() {
                if let Some(slot) = wakeups.get_mut(id) {
                    slot.wake();
                }
            }
        }
        for job in driver.take_auth_jobs() {
            let shared = self.clone();
            tokio::task::spawn_local(async move {
                let token = job.token();
                let decision = tokio::task::spawn_blocking(move || job.run())
                    .await
                    .unwrap_or(AuthDecision::Reject(
                        roost_core::codec::ReasonCode::UnspecifiedError,
                    ));
                shared.driver.borrow_mut().resolve_auth(token, decision);
                shared.after();
            });
        }
        if let Some(auth) = &self.authenticator {
            for request in driver.take_auth_requests() {
                let shared = self.clone();
                let decide = auth(request.clone());
                tokio::task::spawn_local(async move {
                    let decision = decide.await;
                    shared
                        .driver
                        .borrow_mut()
                        .resolve_auth(request.token, decision);
                    shared.after();
                });
            }
        }
        if let Some(authorize) = &self.authorizer {
            for request in driver.take_authorize_requests() {
                let shared = self.clone();
                let token = request.token;
                let decide = authorize(request);
                tokio::task::spawn_local(async move {
                    let decision = decide.await;
                    shared
                        .driver
                        .borrow_mut()
                        .resolve_authorize(token, decision);
                    shared.after();
                });
            }
        }
        let deliveries = driver.take_deliveries();
        if !deliveries.is_empty() {
            let mut subscribers = self.subscribers.borrow_mut();
            for (sub, message) in deliveries {
                if let Some(tx) = subscribers.get(&sub) {
                    match tx.try_send(message) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::debug!(?sub, "in-process queue full, message dropped");
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            subscribers.remove(&sub);
                            driver.unsubscribe(sub);
                        }
                    }
                }
            }
        }
        let next = driver.next_deadline();
        if next.is_some() && (self.armed.get().is_none() || next < self.armed.get()) {
            self.timer.notify_one();
        }
    }
}

async fn serve(
    driver: Driver,
    listeners: Vec<std::net::TcpListener>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    authenticator: Option<Authenticator>,
    authorizer: Option<Authorizer>,
) {
    let shared = Rc::new(Shared {
        driver: RefCell::new(driver),
        wakeups: RefCell::new(HashMap::new()),
        timer: Notify::new(),
        armed: Cell::new(None),
        read_buf: RefCell::new(vec![0; 64 * 1024]),
        woken: RefCell::new(Vec::new()),
        subscribers: RefCell::new(HashMap::new()),
        authenticator,
        authorizer,
    });
    let mut accepts = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        match TcpListener::from_std(listener) {
            Ok(listener) => accepts.push(tokio::task::spawn_local(accept_loop(
                shared.clone(),
                listener,
                index,
            ))),
            Err(e) => warn!(error = %e, "listener could not be registered"),
        }
    }
    let timer = tokio::task::spawn_local(timer_loop(shared.clone()));
    // The store thread wakes this task whenever more batches are durable.
    let stored = Arc::new(Notify::new());
    let waker = stored.clone();
    let started = shared
        .driver
        .borrow_mut()
        .start_store_worker(Arc::new(move || waker.notify_one()));
    if let Err(e) = started {
        warn!(error = %e, "store thread could not start; storing inline");
    }
    let progress = {
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            loop {
                stored.notified().await;
                shared.driver.borrow_mut().store_progress();
                shared.after();
            }
        })
    };
    while let Some(command) = commands.recv().await {
        match command {
            Command::Publish(message, done) => {
                let matched = shared.driver.borrow_mut().publish(message);
                shared.after();
                let _ = done.send(matched);
            }
            Command::Subscribe(filter, tx, done) => {
                let sub = shared.driver.borrow_mut().subscribe(filter);
                shared.subscribers.borrow_mut().insert(sub, tx);
                shared.after();
                let _ = done.send(());
            }
            Command::Reload(config) => {
                let errors = shared.driver.borrow_mut().reload(&config);
                for e in &errors {
                    warn!("reload: {e}");
                }
                if errors.is_empty() {
                    info!("password and ACL files reloaded");
                }
            }
            Command::Shutdown(done) => {
                for accept in &accepts {
                    accept.abort();
                }
                shared.driver.borrow_mut().shutdown();
                shared.after();
                // Give writers a moment to flush the DISCONNECTs.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                while shared.driver.borrow().connection_count() > 0
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                timer.abort();
                progress.abort();
                shared.driver.borrow_mut().finish_store();
                info!("stopped");
                let _ = done.send(());
                return;
            }
        }
    }
}

async fn accept_loop(shared: Rc<Shared>, listener: TcpListener, index: usize) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, typically: back off instead of
                // spinning, and keep serving the connections we have.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = shared.driver.borrow_mut().open(index, Some(remote));
        shared.wakeups.borrow_mut().insert(id, Wakeup::default());
        shared.after();
        tokio::task::spawn_local(Connection::new(shared.clone(), stream, id));
    }
}

/// A connection's wake-up: a flag and the waker of its task. Lighter than a
/// `Notify` (an allocation per connection, and a larger future in every
/// connection's task) because only one task ever waits on it.
#[derive(Default)]
struct Wakeup {
    woken: bool,
    waker: Option<std::task::Waker>,
}

impl Wakeup {
    fn wake(&mut self) {
        self.woken = true;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// A connection's task: writes what the driver has for it, reads what the
/// socket has, until either side closes.
///
/// Written as a future by hand, not as an `async fn` with `select!`: it
/// waits through the socket's own readiness slots (`poll_read_ready`,
/// `poll_write_ready`) and its [`Wakeup`], so it holds no readiness future
/// and an idle connection's task is a few words, not hundreds of bytes.
struct Connection {
    shared: Rc<Shared>,
    /// Taken when the connection ends (to linger, or to be dropped).
    stream: Option<TcpStream>,
    id: ConnId,
}

impl Connection {
    fn new(shared: Rc<Shared>, stream: TcpStream, id: ConnId) -> Self {
        Connection {
            shared,
            stream: Some(stream),
            id,
        }
    }

    /// Serves until the connection should end.
    fn serve(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let Some(stream) = &self.stream else {
            return Poll::Ready(());
        };
        let (shared, id) = (&self.shared, self.id);
        loop {
            let written = shared
                .driver
                .borrow_mut()
                .write_to(id, |bufs| stream.try_write_vectored(bufs));
            shared.after();
            let need_writable = match written {
                Ok(WriteStatus::Drained) => false,
                Ok(WriteStatus::WouldBlock) => true,
                Err(_) => return Poll::Ready(()),
            };
            let (close, paused) = {
                let driver = shared.driver.borrow();
                (driver.wants_close(id), driver.read_paused(id))
            };
            if close {
                return Poll::Ready(());
            }
            // The wake-up slot first: new output is written before more
            // input is read, as the output may be what a slow reader waits
            // for.
            match shared.take_wakeup(id, cx) {
                Some(true) => continue,
                Some(false) => {}
                None => return Poll::Ready(()),
            }
            if need_writable {
                match stream.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
            }
            if !paused {
                match stream.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let mut buf = shared.read_buf.borrow_mut();
                        match stream.try_read(&mut buf) {
                            Ok(0) => return Poll::Ready(()),
                            Ok(n) => {
                                shared.driver.borrow_mut().input(id, &buf[..n]);
                                drop(buf);
                                shared.after();
                            }
                            // Readiness was stale; it is cleared now, and
                            // the next poll waits for the real thing.
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(_) => return Poll::Ready(()),
                        }
                        continue;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
            }
            return Poll::Pending;
        }
    }

    /// Tells the driver the connection is gone, and lingers if the broker
    /// was the one to close it.
    fn finish(&mut self) {
        let shared = &self.shared;
        let lingering = shared.driver.borrow().wants_close(self.id);
        shared.wakeups.borrow_mut().remove(&self.id);
        shared.driver.borrow_mut().closed(self.id);
        shared.after();
        if let Some(stream) = self.stream.take().filter(|_| lingering) {
            // A task of its own, so linger's timer and buffer are not part
            // of every connection's task.
            tokio::task::spawn_local(linger(stream));
        }
    }
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.stream.is_none() {
            return Poll::Ready(());
        }
        match this.serve(cx) {
            Poll::Ready(()) => {
                this.finish();
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The graceful end of a connection the broker closed (see
/// [`roost_runtime::driver::LINGER`]).
async fn linger(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut discarded = 0;
    // On the heap: an array here would sit in every connection's future for
    // its whole life, lingering or not (4 KiB per idle connection).
    let mut buf = vec![0u8; 4096];
    let _ = tokio::time::timeout(roost_runtime::driver::LINGER, async {
        while discarded < roost_runtime::driver::LINGER_BYTES {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => discarded += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

async fn timer_loop(shared: Rc<Shared>) {
    loop {
        let deadline = shared.driver.borrow().next_deadline();
        shared.armed.set(deadline);
        match deadline {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {
                        shared.driver.borrow_mut().timeout();
                        shared.after();
                    }
                    _ = shared.timer.notified() => {}
                }
            }
            None => shared.timer.notified().await,
        }
    }
}
