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
//!   accept ──► Driver::handle_accept     timer ──► Driver::handle_timeout
//!   read   ──► Driver::handle_read       pool  ──► Driver::handle_job_done
//!   then Driver::poll_event: Wake ──► the connection's task writes
//!   (Driver::handle_write) and obeys Driver::interest; Job ──► the pool
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
use roost_core::broker::{ConnId, Message};
use roost_runtime::clock::Clock;
use roost_runtime::config::Config;
use roost_runtime::driver::{Driver, Event, WriteStatus};
use roost_runtime::embed::{self, Command, Deciding, Embedded, LocalSink, Offer};
use roost_runtime::net::Listeners;
use roost_runtime::pool::Pool;
use roost_runtime::wakeup::Wakeups;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::warn;

pub use roost_runtime::hooks::{Authenticator, Authorizer, Hooks};

/// A running broker.
pub struct ServerHandle {
    handle: embed::Handle,
    addrs: Vec<SocketAddr>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// An in-process subscription's channel, as tokio users expect it.
struct Sink(mpsc::Sender<Message>);

impl LocalSink for Sink {
    fn offer(&self, message: Message) -> Offer {
        match self.0.try_send(message) {
            Ok(()) => Offer::Taken,
            Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }
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
    pub async fn subscribe(&self, filter: &str) -> io::Result<mpsc::Receiver<Message>> {
        let (tx, rx) = mpsc::channel(self.handle.local_queue());
        self.handle.subscribe(filter, Box::new(Sink(tx))).await?;
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

/// Starts a broker on a thread of its own: loads what the configuration
/// names and binds every listener (errors are returned here), then serves
/// until [`ServerHandle::shutdown`].
pub fn start(config: Config, hooks: Hooks) -> io::Result<ServerHandle> {
    let clock = Clock::new();
    let mut driver = Driver::open(&config, clock.now())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let embedded = Embedded::new(hooks, &mut driver);
    let std_listeners = driver
        .listeners()
        .map(roost_runtime::net::listen_on)
        .collect::<io::Result<Vec<_>>>()?;
    let addrs = std_listeners
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
    // The workers wake the loop whenever a job is done.
    let jobs_done = Arc::new(Notify::new());
    let wake = jobs_done.clone();
    let pool = Pool::start(Arc::new(move || wake.notify_one()))?;
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
            let shared = Rc::new(Shared {
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
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, serve(shared, std_listeners, commands));
        })?;
    Ok(ServerHandle {
        handle,
        addrs,
        thread: Some(thread),
    })
}

struct Shared {
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
    jobs_done: Arc<Notify>,
    /// The listening sockets by listener number; the accept loops take
    /// them from here, so dropping one closes it at once.
    listeners: RefCell<Listeners<TcpListener>>,
    accepts: RefCell<HashMap<usize, JoinHandle<()>>>,
    stopped: Notify,
}

impl Shared {
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
                Event::StopListening => {
                    self.listeners.borrow_mut().take_all();
                    for (_, accept) in self.accepts.borrow_mut().drain() {
                        accept.abort();
                    }
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
                        TcpListener::from_std,
                    );
                    if listening {
                        self.start_accepting(listener);
                    }
                }
                Event::Unlisten { listener } => {
                    self.listeners.borrow_mut().remove(listener);
                    if let Some(accept) = self.accepts.borrow_mut().remove(&listener) {
                        accept.abort();
                    }
                }
                Event::Stopped => {
                    self.embedded.borrow_mut().stopped();
                    self.stopped.notify_one();
                }
                Event::Connect { conn, addr } => {
                    tokio::task::spawn_local(dial(self.clone(), conn, addr));
                }
                _ => {}
            }
        }
        let next = self.driver.borrow().poll_timeout();
        if next.is_some() && (self.armed.get().is_none() || next < self.armed.get()) {
            self.timer.notify_one();
        }
    }

    /// Accepts on listener number `index`.
    fn start_accepting(self: &Rc<Self>, index: usize) {
        let task = tokio::task::spawn_local(accept_loop(self.clone(), index));
        self.accepts.borrow_mut().insert(index, task);
    }

    /// Runs a hook's decision on this thread's executor and hands it to
    /// the driver when it comes.
    fn decide(self: &Rc<Self>, deciding: Option<Deciding>) {
        let Some(deciding) = deciding else {
            return;
        };
        let shared = self.clone();
        tokio::task::spawn_local(async move {
            let decided = deciding.await;
            let now = shared.clock.now();
            shared.driver.borrow_mut().handle_decided(now, decided);
            shared.after();
        });
    }
}

async fn serve(
    shared: Rc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    commands: embed::Commands,
) {
    for (index, listener) in listeners.into_iter().enumerate() {
        match TcpListener::from_std(listener) {
            Ok(listener) => {
                shared.listeners.borrow_mut().insert(index, listener);
                shared.start_accepting(index);
            }
            Err(e) => warn!(error = %e, "listener could not be registered"),
        }
    }
    let timer = tokio::task::spawn_local(timer_loop(shared.clone()));
    let jobs = {
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
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
            timer.abort();
            jobs.abort();
            return;
        }
    }
}

async fn accept_loop(shared: Rc<Shared>, index: usize) {
    loop {
        // The socket stays in `Shared`: a reload that removes the listener
        // drops it there, closing it at once.
        let accepted = std::future::poll_fn(|cx| match shared.listeners.borrow().get(index) {
            Some(listener) => listener.poll_accept(cx).map(Some),
            None => Poll::Ready(None),
        })
        .await;
        let Some(accepted) = accepted else {
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
                tokio::time::sleep_until(shared.clock.deadline(until).into()).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let now = shared.clock.now();
        let id = shared
            .driver
            .borrow_mut()
            .handle_accept(now, index, Some(remote));
        shared.wakeups.borrow_mut().insert(id);
        shared.after();
        tokio::task::spawn_local(Connection::new(shared.clone(), stream, id));
    }
}

/// Dials for a bridge, then serves the socket like an accepted one.
async fn dial(shared: Rc<Shared>, id: ConnId, addr: String) {
    match TcpStream::connect(addr.as_str()).await {
        Ok(stream) => {
            let _ = stream.set_nodelay(true);
            let now = shared.clock.now();
            let remote = stream.peer_addr().ok();
            shared.wakeups.borrow_mut().insert(id);
            shared.driver.borrow_mut().handle_connected(now, id, remote);
            shared.after();
            tokio::task::spawn_local(Connection::new(shared.clone(), stream, id));
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

/// A connection's task: writes what the driver has for it and reads what
/// the socket has, as [`Driver::interest`] says, until the driver or the
/// peer ends it.
///
/// Written as a future by hand, not as an `async fn` with `select!`: it
/// waits through the socket's own readiness slots (`poll_read_ready`,
/// `poll_write_ready`) and its wake-up slot ([`Wakeups`]), so it holds no readiness future
/// and an idle connection's task is a few words, not hundreds of bytes.
struct Connection {
    shared: Rc<Shared>,
    stream: TcpStream,
    id: ConnId,
    shut_write: bool,
    /// A flooding peer's turn is over: the task waits for this first.
    pause: Option<Pin<Box<dyn Future<Output = ()>>>>,
}

/// How a connection's task ended.
enum End {
    /// The driver let go of it: drop the socket.
    Released,
    /// The peer closed or the socket failed: tell the driver.
    Gone,
}

impl Connection {
    /// Connection `id` (accepted or dialled) on `stream`, to be spawned.
    fn new(shared: Rc<Shared>, stream: TcpStream, id: ConnId) -> Connection {
        Connection {
            shared,
            stream,
            id,
            shut_write: false,
            pause: None,
        }
    }

    /// Serves until the connection ends.
    fn serve(&mut self, cx: &mut std::task::Context<'_>) -> Poll<End> {
        let (shared, id) = (&self.shared, self.id);
        let mut reads = 0;
        loop {
            let now = shared.clock.now();
            let stream = &self.stream;
            let written = shared
                .driver
                .borrow_mut()
                .handle_write(now, id, |bufs| stream.try_write_vectored(bufs));
            shared.after();
            let need_writable = match written {
                Ok(WriteStatus::Drained) => false,
                Ok(WriteStatus::WouldBlock) => true,
                Err(_) => return Poll::Ready(End::Gone),
            };
            let interest = shared.driver.borrow().interest(id);
            if interest.close {
                return Poll::Ready(End::Released);
            }
            if interest.shutdown_write && !self.shut_write {
                self.shut_write = true;
                use tokio::io::AsyncWrite;
                let _ = Pin::new(&mut self.stream).poll_shutdown(cx);
            }
            let stream = &self.stream;
            // The wake-up slot first: new output is written before more
            // input is read, as the output may be what a slow reader waits
            // for.
            match shared.wakeups.borrow_mut().take(id, cx) {
                Some(true) => continue,
                Some(false) => {}
                None => return Poll::Ready(End::Released),
            }
            if need_writable {
                match stream.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(_)) => return Poll::Ready(End::Gone),
                    Poll::Pending => {}
                }
            }
            if interest.read && reads == roost_runtime::net::READS_PER_TURN {
                // A peer that floods must not starve everyone else on this
                // thread. A self-wake (or yield_now) is not enough: the
                // LocalSet polls a woken task again up to 61 times before
                // the I/O driver runs, so new connections would wait for
                // 61 turns of the flooder. A timer fires only after the
                // driver has run: at most READS_PER_TURN reads (1 MiB) per
                // millisecond for one connection, far above any real
                // client's rate.
                let mut pause: Pin<Box<dyn Future<Output = ()>>> =
                    Box::pin(tokio::time::sleep(std::time::Duration::from_millis(1)));
                if pause.as_mut().poll(cx).is_ready() {
                    continue;
                }
                self.pause = Some(pause);
                return Poll::Pending;
            }
            if interest.read {
                reads += 1;
                match stream.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let mut buf = shared.read_buf.borrow_mut();
                        match stream.try_read(&mut buf) {
                            Ok(0) => return Poll::Ready(End::Gone),
                            Ok(n) => {
                                let now = shared.clock.now();
                                shared.driver.borrow_mut().handle_read(now, id, &buf[..n]);
                                drop(buf);
                                shared.after();
                            }
                            // Readiness was stale; it is cleared now, and
                            // the next poll waits for the real thing.
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(_) => return Poll::Ready(End::Gone),
                        }
                        continue;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(End::Gone),
                    Poll::Pending => {}
                }
            }
            return Poll::Pending;
        }
    }
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.shared.wakeups.borrow_mut().running(this.id);
        if let Some(pause) = &mut this.pause {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.pause = None;
        }
        match this.serve(cx) {
            Poll::Ready(end) => {
                let shared = &this.shared;
                shared.wakeups.borrow_mut().remove(this.id);
                if let End::Gone = end {
                    let now = shared.clock.now();
                    shared.driver.borrow_mut().handle_closed(now, this.id);
                    shared.after();
                }
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

async fn timer_loop(shared: Rc<Shared>) {
    loop {
        let deadline = shared.driver.borrow().poll_timeout();
        shared.armed.set(deadline);
        match deadline {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(shared.clock.deadline(at).into()) => {
                        let now = shared.clock.now();
                        shared.driver.borrow_mut().handle_timeout(now);
                        shared.after();
                    }
                    _ = shared.timer.notified() => {}
                }
            }
            None => shared.timer.notified().await,
        }
    }
}
