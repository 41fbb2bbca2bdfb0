//! The roost MQTT broker on smol.
//!
//! The same single-threaded design as `roost-tokio`: one thread runs a
//! `LocalExecutor` holding the engine and every connection, so the data
//! path has no locks and no channels. All protocol, TLS, WebSocket and
//! authentication logic lives in `roost-core` and `roost-runtime`; this
//! crate only moves bytes and keeps time:
//!
//! ```text
//!   accept ──► Driver::open          timer ──► Driver::timeout
//!   read   ──► Driver::input   ──►   wake writers of Driver::take_woken
//!   write  ◄── Driver::write_to      close ◄── Driver::wants_close
//! ```
//!
//! Password checks (argon2, slow on purpose) run on smol's blocking pool.
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
//! let server = roost_smol::start(config)?;
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
use roost_core::broker::{ConnId, LocalSubscription, Message};
use roost_core::codec::QoS;
use roost_core::topic::{TopicFilter, TopicName};
use roost_runtime::config::Config;
use roost_runtime::driver::{Driver, LINGER, LINGER_BYTES, WriteStatus};
use smol::channel::{self, Receiver, Sender};
use smol::future::{self, FutureExt as _};
use smol::{Async, LocalExecutor, Task, Timer};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

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
    thread: Option<std::thread::JoinHandle<()>>,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the broker has stopped")
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
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
    pub async fn subscribe(&self, filter: &str) -> io::Result<Receiver<Message>> {
        let filter = TopicFilter::copy_from_str(filter).map_err(invalid)?;
        let (tx, rx) = channel::unbounded();
        let (done, ready) = channel::bounded(1);
        self.commands
            .send(Command::Subscribe(filter, tx, done))
            .await
            .map_err(|_| gone())?;
        ready.recv().await.map_err(|_| gone())?;
        Ok(rx)
    }

    /// Re-reads password and ACL files from `config` (what SIGHUP does).
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

/// Starts a broker on a thread of its own: binds every listener (errors are
/// returned here), then serves until [`ServerHandle::shutdown`].
pub fn start(config: Config) -> io::Result<ServerHandle> {
    let driver = Driver::new(&config)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let listeners = config
        .listeners
        .iter()
        .map(|l| roost_runtime::net::listen(l.bind))
        .collect::<io::Result<Vec<_>>>()?;
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<io::Result<Vec<_>>>()?;
    for (l, addr) in config.listeners.iter().zip(&addrs) {
        info!(protocol = l.protocol.name(), %addr, "listening");
    }
    for warning in config.warnings() {
        warn!("{warning}");
    }
    let (commands, rx) = channel::unbounded();
    let thread = std::thread::Builder::new()
        .name("roost-smol".into())
        .spawn(move || {
            let ex = Rc::new(LocalExecutor::new());
            smol::block_on(ex.run(serve(ex.clone(), driver, listeners, rx)));
        })?;
    Ok(ServerHandle {
        commands,
        addrs,
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
    notifiers: RefCell<HashMap<ConnId, Notify>>,
    /// Wakes the timer task when the next deadline moved earlier.
    timer: Notify,
    armed: Cell<Option<Instant>>,
    read_buf: RefCell<Vec<u8>>,
    woken: RefCell<Vec<ConnId>>,
    subscribers: RefCell<HashMap<LocalSubscription, Sender<Message>>>,
}

impl<'ex> Shared<'ex> {
    /// After every call into the driver: wake writers with new output, start
    /// password checks, hand out in-process deliveries, re-arm the timer.
    fn after(self: &Rc<Self>) {
        let mut woken = self.woken.borrow_mut();
        woken.clear();
        let mut driver = self.driver.borrow_mut();
        driver.take_woken(&mut woken);
        {
            let notifiers = self.notifiers.borrow();
            for id in woken.iter() {
                if let Some(n) = notifiers.get(id) {
                    n.notify();
                }
            }
        }
        for job in driver.take_auth_jobs() {
            let shared = self.clone();
            self.ex
                .spawn(async move {
                    let token = job.token();
                    let decision = smol::unblock(move || job.run()).await;
                    shared.driver.borrow_mut().resolve_auth(token, decision);
                    shared.after();
                })
                .detach();
        }
        let deliveries = driver.take_deliveries();
        if !deliveries.is_empty() {
            let mut subscribers = self.subscribers.borrow_mut();
            for (sub, message) in deliveries {
                if let Some(tx) = subscribers.get(&sub) {
                    if tx.try_send(message).is_err() {
                        subscribers.remove(&sub);
                        driver.unsubscribe(sub);
                    }
                }
            }
        }
        let next = driver.next_deadline();
        if next.is_some() && (self.armed.get().is_none() || next < self.armed.get()) {
            self.timer.notify();
        }
    }
}

async fn serve<'ex>(
    ex: Rc<LocalExecutor<'ex>>,
    driver: Driver,
    listeners: Vec<TcpListener>,
    commands: Receiver<Command>,
) {
    let shared = Rc::new(Shared {
        ex: ex.clone(),
        driver: RefCell::new(driver),
        notifiers: RefCell::new(HashMap::new()),
        timer: Notify::new(),
        armed: Cell::new(None),
        read_buf: RefCell::new(vec![0; 64 * 1024]),
        woken: RefCell::new(Vec::new()),
        subscribers: RefCell::new(HashMap::new()),
    });
    let mut accepts: Vec<Task<()>> = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        match Async::new(listener) {
            Ok(listener) => accepts.push(ex.spawn(accept_loop(shared.clone(), listener, index))),
            Err(e) => warn!(error = %e, "listener could not be registered"),
        }
    }
    let timer = ex.spawn(timer_loop(shared.clone()));
    while let Ok(command) = commands.recv().await {
        match command {
            Command::Publish(message, done) => {
                let matched = shared.driver.borrow_mut().publish(message);
                shared.after();
                let _ = done.try_send(matched);
            }
            Command::Subscribe(filter, tx, done) => {
                let sub = shared.driver.borrow_mut().subscribe(filter);
                shared.subscribers.borrow_mut().insert(sub, tx);
                shared.after();
                let _ = done.try_send(());
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
                // Dropping a task cancels it: no new connections from here.
                drop(accepts);
                shared.driver.borrow_mut().shutdown();
                shared.after();
                // Give writers a moment to flush the DISCONNECTs.
                let deadline = Instant::now() + Duration::from_secs(2);
                while shared.driver.borrow().connection_count() > 0 && Instant::now() < deadline {
                    Timer::after(Duration::from_millis(10)).await;
                }
                drop(timer);
                info!("stopped");
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
                // Out of file descriptors, typically: back off instead of
                // spinning, and keep serving the connections we have.
                warn!(error = %e, "accept failed");
                Timer::after(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.get_ref().set_nodelay(true);
        let id = shared.driver.borrow_mut().open(index, Some(remote));
        let notify = Notify::new();
        shared.notifiers.borrow_mut().insert(id, notify.clone());
        shared.after();
        shared
            .ex
            .spawn(connection(shared.clone(), stream, id, notify))
            .detach();
    }
}

/// What woke a connection task.
enum Wake {
    Notified,
    Writable(io::Result<()>),
    Readable(io::Result<()>),
}

async fn connection(shared: Rc<Shared<'_>>, stream: Async<TcpStream>, id: ConnId, notify: Notify) {
    // Whether the socket may still hold unread bytes: after a read that
    // filled bytes, read again (after yielding) before waiting for
    // readiness, which costs a reactor round trip.
    let mut maybe_readable = false;
    loop {
        let written = shared
            .driver
            .borrow_mut()
            .write_to(id, |bufs| stream.get_ref().write_vectored(bufs));
        shared.after();
        let need_writable = match written {
            Ok(WriteStatus::Drained) => false,
            Ok(WriteStatus::WouldBlock) => true,
            Err(_) => break,
        };
        let (close, paused) = {
            let driver = shared.driver.borrow();
            (driver.wants_close(id), driver.read_paused(id))
        };
        if close {
            break;
        }
        let wake = if maybe_readable && !paused {
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
                if paused {
                    future::pending().await
                } else {
                    Wake::Readable(stream.readable().await)
                }
            };
            notified.or(writable).or(readable).await
        };
        match wake {
            Wake::Notified => {}
            Wake::Writable(ready) => {
                if ready.is_err() {
                    break;
                }
            }
            Wake::Readable(ready) => {
                if ready.is_err() {
                    break;
                }
                let mut buf = shared.read_buf.borrow_mut();
                match stream.get_ref().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        maybe_readable = true;
                        shared.driver.borrow_mut().input(id, &buf[..n]);
                        drop(buf);
                        shared.after();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => maybe_readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
    }
    let lingering = shared.driver.borrow().wants_close(id);
    shared.notifiers.borrow_mut().remove(&id);
    shared.driver.borrow_mut().closed(id);
    shared.after();
    if lingering {
        linger(stream).await;
    }
}

/// The graceful end of a connection the broker closed (see
/// [`roost_runtime::driver::LINGER`]).
async fn linger(stream: Async<TcpStream>) {
    if stream.get_ref().shutdown(Shutdown::Write).is_err() {
        return;
    }
    let drain = async {
        let mut discarded = 0;
        let mut buf = [0u8; 4096];
        while discarded < LINGER_BYTES {
            match stream.get_ref().read(&mut buf) {
                Ok(0) => return,
                Ok(n) => discarded += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if stream.readable().await.is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    };
    drain
        .or(async {
            Timer::after(LINGER).await;
        })
        .await;
}

async fn timer_loop(shared: Rc<Shared<'_>>) {
    loop {
        let deadline = shared.driver.borrow().next_deadline();
        shared.armed.set(deadline);
        match deadline {
            Some(at) => {
                let fired = async {
                    Timer::at(at).await;
                    true
                }
                .or(async {
                    shared.timer.notified().await;
                    false
                })
                .await;
                if fired {
                    shared.driver.borrow_mut().timeout();
                    shared.after();
                }
            }
            None => shared.timer.notified().await,
        }
    }
}
