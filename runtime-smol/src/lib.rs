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
use roost_core::broker::{ConnId, Message};
use roost_runtime::clock::Clock;
use roost_runtime::config::Config;
use roost_runtime::driver::{Driver, Event, WriteStatus};
use roost_runtime::embed::{self, Command, Deciding, Embedded};
use roost_runtime::net::Listeners;
use roost_runtime::pool::Pool;
use roost_runtime::wakeup::Wakeups;
use smol::channel::{self, Receiver, Sender};
use smol::future::{self, FutureExt as _};
use smol::{Async, LocalExecutor, Task, Timer};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use tracing::warn;

pub use roost_runtime::hooks::{Authenticator, Authorizer, Hooks};

/// A running broker.
pub struct ServerHandle {
    handle: embed::Handle,
    addrs: Vec<SocketAddr>,
    thread: Option<std::thread::JoinHandle<()>>,
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
        self.handle.publish(topic, payload, qos, retain).await
    }

    /// Subscribes in-process: matching messages (retained ones first) arrive
    /// on the returned channel until it is dropped or the broker stops.
    ///
    /// The channel holds at most `limits.max_queued_messages` messages, like
    /// a client's session queue: while it is full, further messages for it
    /// are dropped, so a subscriber that stops reading cannot make the
    /// broker's memory grow.
    pub async fn subscribe(&self, filter: &str) -> io::Result<Receiver<Message>> {
        let (tx, rx) = channel::bounded(self.handle.local_queue());
        self.handle.subscribe(filter, Box::new(tx)).await?;
        Ok(rx)
    }

    /// Applies `config` as SIGHUP does (see
    /// `roost_runtime::driver::Driver::handle_reload`): listeners, limits
    /// and bridges change live, certificates, password and ACL files are
    /// re-read; a file that fails to load keeps its previous contents.
    pub fn reload(&self, config: Config) {
        self.handle.reload(config);
    }

    /// Stops the broker: closes every connection (MQTT 5 clients get
    /// DISCONNECT 0x8B), flushes, and waits for its thread to end.
    pub async fn shutdown(mut self) {
        self.handle.shutdown().await;
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
    let embedded = Embedded::new(hooks, &mut driver);
    let listeners = driver
        .listeners()
        .map(roost_runtime::net::listen_on)
        .collect::<io::Result<Vec<_>>>()?;
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<io::Result<Vec<_>>>()?;
    for (index, addr) in addrs.iter().enumerate() {
        driver.handle_listening(index, *addr);
    }
    for warning in config.warnings() {
        warn!("{warning}");
    }
    let (handle, commands) = embed::Handle::new(driver.local_queue_capacity());
    let jobs_done = Notify::new();
    let wake = jobs_done.clone();
    let pool = Pool::start(Arc::new(move || wake.notify()))?;
    let thread = std::thread::Builder::new()
        .name("roost-smol".into())
        .spawn(move || {
            let ex = Rc::new(LocalExecutor::new());
            let shared = Rc::new(Shared {
                ex: ex.clone(),
                driver: RefCell::new(driver),
                clock,
                wakeups: RefCell::new(Wakeups::new()),
                timer: Notify::new(),
                armed: Cell::new(None),
                read_buf: RefCell::new(vec![0; 64 * 1024]),
                embedded: RefCell::new(embedded),
                pool,
                jobs_done,
                listeners: RefCell::default(),
                accepts: RefCell::new(HashMap::new()),
                stopped: Notify::new(),
            });
            smol::block_on(ex.run(serve(shared, listeners, commands)));
        })?;
    Ok(ServerHandle {
        handle,
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
    clock: Clock,
    /// One wake-up slot per connection: set when the driver wakes it,
    /// awaited by its task.
    wakeups: RefCell<Wakeups>,
    /// Wakes the timer task when the next deadline moved earlier.
    timer: Notify,
    armed: Cell<Option<roost_core::broker::Instant>>,
    read_buf: RefCell<Vec<u8>>,
    /// The embedding API's side of the loop: hooks and in-process
    /// subscriptions.
    embedded: RefCell<Embedded>,
    pool: Pool,
    jobs_done: Notify,
    /// The listening sockets by listener number; the accept loops take
    /// them from here, so dropping one closes it at once.
    listeners: RefCell<Listeners<Async<TcpListener>>>,
    accepts: RefCell<HashMap<usize, Task<()>>>,
    stopped: Notify,
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
                Event::Wake(id) => self.wakeups.borrow_mut().wake(id),
                Event::Job(job) => self.pool.submit(job),
                Event::Deliver {
                    subscription,
                    message,
                } => self.embedded.borrow_mut().deliver(
                    &mut self.driver.borrow_mut(),
                    self.clock.now(),
                    subscription,
                    message,
                ),
                Event::Authenticate(request) => {
                    let deciding = self.embedded.borrow().authenticate(request);
                    self.decide(deciding);
                }
                Event::Authorize(request) => {
                    let deciding = self.embedded.borrow().authorize(request);
                    self.decide(deciding);
                }
                // Dropping a task cancels it: no new connections from here.
                Event::StopListening => {
                    self.listeners.borrow_mut().take_all();
                    self.accepts.borrow_mut().clear();
                }
                Event::Listen {
                    listener,
                    bind,
                    reuse_port,
                } => {
                    let listening = self.listeners.borrow_mut().listen(
                        &mut self.driver.borrow_mut(),
                        listener,
                        bind,
                        reuse_port,
                        Async::new,
                    );
                    if listening {
                        self.start_accepting(listener);
                    }
                }
                Event::Unlisten { listener } => {
                    self.listeners.borrow_mut().remove(listener);
                    self.accepts.borrow_mut().remove(&listener);
                }
                Event::Stopped => {
                    self.embedded.borrow_mut().stopped();
                    self.stopped.notify();
                }
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

    /// Accepts on listener number `index`.
    fn start_accepting(self: &Rc<Self>, index: usize) {
        let task = self.ex.spawn(accept_loop(self.clone(), index));
        self.accepts.borrow_mut().insert(index, task);
    }

    /// Runs a hook's decision on this thread's executor and hands it to
    /// the driver when it comes.
    fn decide(self: &Rc<Self>, deciding: Option<Deciding>) {
        let Some(deciding) = deciding else {
            return;
        };
        let shared = self.clone();
        self.ex
            .spawn(async move {
                let decided = deciding.await;
                let now = shared.clock.now();
                shared.driver.borrow_mut().handle_decided(now, decided);
                shared.after();
            })
            .detach();
    }
}

async fn serve(shared: Rc<Shared<'_>>, listeners: Vec<TcpListener>, commands: embed::Commands) {
    for (index, listener) in listeners.into_iter().enumerate() {
        match Async::new(listener) {
            Ok(listener) => {
                shared.listeners.borrow_mut().insert(index, listener);
                shared.start_accepting(index);
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
        let shutting_down = matches!(command, Command::Shutdown(_));
        let now = shared.clock.now();
        shared
            .embedded
            .borrow_mut()
            .command(&mut shared.driver.borrow_mut(), now, command);
        shared.after();
        if shutting_down {
            shared.stopped.notified().await;
            drop(timer);
            drop(jobs);
            return;
        }
    }
}

/// An accepted connection and its peer.
type Accepted = (Async<TcpStream>, SocketAddr);

/// Accepts one connection on listener `index`; `None` once it is gone.
fn poll_accept(
    shared: &Shared<'_>,
    index: usize,
    cx: &mut std::task::Context<'_>,
) -> Poll<Option<io::Result<Accepted>>> {
    let listeners = shared.listeners.borrow();
    let Some(listener) = listeners.get(index) else {
        return Poll::Ready(None);
    };
    loop {
        match listener.get_ref().accept() {
            Ok((stream, remote)) => {
                return Poll::Ready(Some(Async::new(stream).map(|s| (s, remote))));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match listener.poll_readable(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Poll::Ready(Some(Err(e))),
        }
    }
}

async fn accept_loop(shared: Rc<Shared<'_>>, index: usize) {
    loop {
        // The socket stays in `Shared`: a reload that removes the listener
        // drops it there, closing it at once.
        let Some(accepted) = std::future::poll_fn(|cx| poll_accept(&shared, index, cx)).await
        else {
            return;
        };
        let (stream, remote) = match accepted {
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
        shared.wakeups.borrow_mut().insert(id);
        shared.after();
        shared
            .ex
            .spawn(connection(shared.clone(), stream, id))
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
            shared.wakeups.borrow_mut().insert(id);
            shared.driver.borrow_mut().handle_connected(now, id, remote);
            shared.after();
            shared
                .ex
                .spawn(connection(shared.clone(), stream, id))
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
async fn connection(shared: Rc<Shared<'_>>, stream: Async<TcpStream>, id: ConnId) {
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
            // The wake-up slot, polled like a future: its flag, or its
            // waker kept for the next wake-up.
            let notified = future::poll_fn(|cx| match shared.wakeups.borrow_mut().take(id, cx) {
                Some(false) => Poll::Pending,
                _ => Poll::Ready(Wake::Notified),
            });
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
        // Until it waits again, a wake-up this task causes itself is only
        // the flag, not a second poll.
        shared.wakeups.borrow_mut().running(id);
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
    shared.wakeups.borrow_mut().remove(id);
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
