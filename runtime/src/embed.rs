//! The embedding API of the async runtimes, written once: a program's
//! [`Handle`] sends [`Command`]s to the broker's loop, and the loop's
//! [`Embedded`] carries them out on the [`Driver`], keeps the in-process
//! subscriptions, and turns the driver's authentication and authorization
//! requests into the hooks' futures.
//!
//! ```text
//!  program ── Handle::publish/subscribe/reload/shutdown ──► Command (bounded channel)
//!                                                              │
//!  runtime loop: Embedded::command(driver, now, cmd) ◄─────────┘
//!                Event::Deliver   ──► Embedded::deliver ──► the subscription's LocalSink
//!                Event::Authenticate/Authorize ──► Embedded::decide ──► future (the runtime spawns it)
//!                                   ──► Driver::handle_decided(now, Decided)
//! ```
//!
//! A runtime contributes only what is its own: spawning the decision
//! futures, and the channel type its users receive messages on (a
//! [`LocalSink`]). The channels here are `async-channel`'s, which work on
//! any executor.

use crate::config::Config;
use crate::driver::{Decided, Driver, Files};
use crate::hooks::{Authenticator, Authorizer, Hooks};
use bytes::Bytes;
use roost_core::broker::{AuthRequest, AuthorizeRequest, Instant, LocalSubscription, Message};
use roost_core::codec::QoS;
use roost_core::topic::{TopicFilter, TopicName};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;

/// How many commands may wait for the loop: a program that publishes
/// faster than the broker routes waits in [`Handle::publish`].
const COMMAND_QUEUE: usize = 1024;

/// What happened to a message offered to an in-process subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for the subscriber.
    Taken,
    /// The subscriber's queue is full: the message is dropped for it.
    Full,
    /// The subscriber has gone: the subscription ends.
    Closed,
}

/// The sending side of an in-process subscription's channel, in whatever
/// channel type the runtime hands its users. It must never block: a full
/// queue answers [`Offer::Full`].
pub trait LocalSink {
    /// Offers one message.
    fn offer(&self, message: Message) -> Offer;
}

impl LocalSink for async_channel::Sender<Message> {
    fn offer(&self, message: Message) -> Offer {
        match self.try_send(message) {
            Ok(()) => Offer::Taken,
            Err(async_channel::TrySendError::Full(_)) => Offer::Full,
            Err(async_channel::TrySendError::Closed(_)) => Offer::Closed,
        }
    }
}

/// A request from a [`Handle`] to the broker's loop.
pub enum Command {
    /// Publish as the broker; the reply is the number of subscriptions
    /// reached.
    Publish(Message, async_channel::Sender<usize>),
    /// Subscribe in-process; the reply says it is in place.
    Subscribe(
        TopicFilter,
        Box<dyn LocalSink + Send>,
        async_channel::Sender<()>,
    ),
    /// Apply `config` and re-read the files it names (see
    /// [`Driver::handle_reload`]).
    Reload(Config),
    /// Shut down; the reply comes once the driver has stopped.
    Shutdown(async_channel::Sender<()>),
}

/// The loop's end of the command channel (`recv().await` yields the next
/// command, an error once every [`Handle`] is gone).
pub type Commands = async_channel::Receiver<Command>;

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the broker has stopped")
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

/// A message the broker publishes itself, validated: a topic with a
/// wildcard or a QoS above 2 is an `InvalidInput` error.
pub fn message(
    topic: &str,
    payload: impl Into<Bytes>,
    qos: u8,
    retain: bool,
) -> io::Result<Message> {
    Ok(Message {
        topic: TopicName::copy_from_str(topic).map_err(invalid)?,
        payload: payload.into(),
        qos: QoS::from_u8(qos).map_err(invalid)?,
        retain,
        properties: Default::default(),
    })
}

/// A topic filter, validated (`InvalidInput` when malformed).
pub fn filter(filter: &str) -> io::Result<TopicFilter> {
    TopicFilter::copy_from_str(filter).map_err(invalid)
}

/// The program's side: sends [`Command`]s to the broker's loop and awaits
/// the replies. Cheap to clone; every method fails with `BrokenPipe` once
/// the broker has stopped.
#[derive(Clone)]
pub struct Handle {
    commands: async_channel::Sender<Command>,
    local_queue: usize,
}

impl Handle {
    /// A handle, and the receiving end the runtime's loop reads.
    /// `local_queue` is the capacity of each in-process subscription
    /// ([`Driver::local_queue_capacity`]).
    pub fn new(local_queue: usize) -> (Handle, Commands) {
        let (commands, rx) = async_channel::bounded(COMMAND_QUEUE);
        (
            Handle {
                commands,
                local_queue,
            },
            rx,
        )
    }

    /// How many messages an in-process subscription's channel should hold.
    pub fn local_queue(&self) -> usize {
        self.local_queue
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
        let message = message(topic, payload, qos, retain)?;
        let (tx, rx) = async_channel::bounded(1);
        self.commands
            .send(Command::Publish(message, tx))
            .await
            .map_err(|_| gone())?;
        rx.recv().await.map_err(|_| gone())
    }

    /// Subscribes in-process with `sink` as the subscription's channel;
    /// returns once the subscription is in place (retained messages are
    /// already in the sink by then).
    pub async fn subscribe(&self, filter: &str, sink: Box<dyn LocalSink + Send>) -> io::Result<()> {
        let filter = self::filter(filter)?;
        let (tx, rx) = async_channel::bounded(1);
        self.commands
            .send(Command::Subscribe(filter, sink, tx))
            .await
            .map_err(|_| gone())?;
        rx.recv().await.map_err(|_| gone())
    }

    /// Asks for a reload (what SIGHUP does); does not wait.
    pub fn reload(&self, config: Config) {
        let _ = self.commands.try_send(Command::Reload(config));
    }

    /// Asks for a shutdown and waits until the driver has stopped (every
    /// connection closed, the store flushed).
    pub async fn shutdown(&self) {
        let (tx, rx) = async_channel::bounded(1);
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.recv().await;
        }
    }
}

/// A decision on its way: the hook's future, whose output goes to
/// [`Driver::handle_decided`]. The runtime spawns it on its executor.
pub type Deciding = Pin<Box<dyn Future<Output = Decided> + Send>>;

/// The loop's side: the hooks and the in-process subscriptions.
pub struct Embedded {
    authenticator: Option<Authenticator>,
    authorizer: Option<Authorizer>,
    subscribers: HashMap<LocalSubscription, Box<dyn LocalSink + Send>>,
    /// The reply owed to [`Handle::shutdown`], sent once the driver says
    /// it has stopped.
    shutdown: Vec<async_channel::Sender<()>>,
}

impl Embedded {
    /// Installs `hooks` on `driver`: the policy decides inline, and each
    /// hook present takes its decisions from the password files and ACLs.
    pub fn new(hooks: Hooks, driver: &mut Driver) -> Embedded {
        if hooks.authenticate.is_some() {
            driver.use_external_authentication();
        }
        if let Some(policy) = hooks.policy {
            driver.set_authorization(policy);
        }
        if hooks.authorize.is_some() {
            driver.use_external_authorization();
        }
        Embedded {
            authenticator: hooks.authenticate,
            authorizer: hooks.authorize,
            subscribers: HashMap::new(),
            shutdown: Vec::new(),
        }
    }

    /// Carries out one command. The caller then drains the driver's events
    /// as after any other input.
    pub fn command(&mut self, driver: &mut Driver, now: Instant, command: Command) {
        match command {
            Command::Publish(message, done) => {
                let matched = driver.handle_publish(now, message);
                let _ = done.try_send(matched);
            }
            Command::Subscribe(filter, sink, done) => {
                let subscription = driver.handle_subscribe(now, filter);
                self.subscribers.insert(subscription, sink);
                let _ = done.try_send(());
            }
            Command::Reload(config) => {
                if driver
                    .handle_reload(now, &config, Files::load(&config))
                    .is_empty()
                {
                    tracing::info!("configuration, certificates, password and ACL files reloaded");
                }
            }
            Command::Shutdown(done) => {
                driver.handle_shutdown(now);
                self.shutdown.push(done);
            }
        }
    }

    /// Hands a delivery ([`crate::driver::Event::Deliver`]) to its
    /// subscription's channel; a subscriber that has gone is unsubscribed.
    pub fn deliver(
        &mut self,
        driver: &mut Driver,
        now: Instant,
        subscription: LocalSubscription,
        message: Message,
    ) {
        let Some(sink) = self.subscribers.get(&subscription) else {
            return;
        };
        match sink.offer(message) {
            Offer::Taken => {}
            Offer::Full => {
                tracing::debug!(?subscription, "in-process queue full, message dropped");
            }
            Offer::Closed => {
                self.subscribers.remove(&subscription);
                driver.handle_unsubscribe(now, subscription);
            }
        }
    }

    /// The hook's future for an authentication request, to spawn; `None`
    /// without an authentication hook (the driver then never asks).
    pub fn authenticate(&self, request: AuthRequest) -> Option<Deciding> {
        let token = request.token;
        let decide = (self.authenticator.as_ref()?)(request);
        Some(Box::pin(async move { Decided::Auth(token, decide.await) }))
    }

    /// The hook's future for an authorization request, to spawn; `None`
    /// without an authorization hook.
    pub fn authorize(&self, request: AuthorizeRequest) -> Option<Deciding> {
        let token = request.token;
        let decide = (self.authorizer.as_ref()?)(request);
        Some(Box::pin(
            async move { Decided::Authorize(token, decide.await) },
        ))
    }

    /// The driver has stopped ([`crate::driver::Event::Stopped`]): every
    /// in-process subscription ends (its receiver sees the channel close)
    /// and [`Handle::shutdown`] returns.
    pub fn stopped(&mut self) {
        self.subscribers.clear();
        for done in self.shutdown.drain(..) {
            let _ = done.try_send(());
        }
    }
}
