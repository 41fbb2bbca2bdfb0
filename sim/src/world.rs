//! One simulated run: the real [`Driver`] (engine, stages, store batching)
//! with a [`SimStore`], simulated clients on simulated connections, a
//! simulated clock, and invariants checked after every step.

use crate::disk::{Disk, SimStore};
use crate::rng::Rng;
use bytes::{Bytes, BytesMut};
use roost_core::MqttStr;
use roost_core::broker::{ConnId, Instant};
use roost_core::codec::{
    Connect, Disconnect, Packet, PacketId, Protocol, PubResponse, Publish, QoS, QosPid, ReasonCode,
    Subscribe, Subscription, SubscriptionOptions, Will, decode,
};
use roost_core::topic::{TopicFilter, TopicName};
use roost_runtime::config::{self, Config};
use roost_runtime::driver::{Driver, Event, Files, Job, JobDone, OpenedStore, WriteStatus};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a run does and checks.
#[derive(Debug, Clone)]
pub struct Options {
    /// Random steps before the final quiet phase.
    pub steps: usize,
    /// Simulated clients (each a client identifier).
    pub clients: usize,
    /// Crash the broker (drop the driver, keep only what the disk made
    /// durable, restart).
    pub crashes: bool,
    /// Failing and slow store jobs.
    pub disk_faults: bool,
    /// Resets, stalls, partial and refused writes.
    pub net_faults: bool,
    /// The runtime's clock misbehaves: it jumps forward (a suspended
    /// machine: one `handle_timeout` far ahead, every deadline passed at
    /// once), steps back (the driver is given a `now` earlier than one it
    /// was given already, for a while) and catches up again.
    pub clock_faults: bool,
    /// Treat a QoS 2 message delivered twice to one subscriber session, or
    /// a packet identifier reused while the subscriber still holds it, as a
    /// failure (on by default: 0 in 1,000 seeds). Off: they are counted and
    /// reported only.
    pub check_qos2_duplicates: bool,
    /// Treat a session lost in a crash after its CONNACK, or a
    /// subscription lost after its SUBACK, as a failure (on by default: 0
    /// in 10,000 seeds). Off: it is reported, and that session is owed
    /// nothing.
    pub check_session_durability: bool,
    /// Break the disk (commits write nothing), to check the checks.
    pub lying_disk: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            steps: 2_000,
            clients: 8,
            crashes: true,
            disk_faults: true,
            net_faults: true,
            clock_faults: true,
            check_qos2_duplicates: true,
            check_session_durability: true,
            lying_disk: false,
        }
    }
}

/// What a run did and found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Steps taken (random ones and the quiet phase's).
    pub steps: usize,
    /// Simulated time at the end.
    pub sim_time: Duration,
    /// Broker crashes and restarts.
    pub crashes: u32,
    /// Connections opened.
    pub connections: u64,
    /// Messages published (all QoS).
    pub published: u64,
    /// QoS 1/2 messages the broker acknowledged (PUBACK / PUBREC).
    pub acknowledged: u64,
    /// PUBLISH packets the clients received.
    pub deliveries: u64,
    /// (message, subscriber session) pairs that had to arrive and did.
    pub guaranteed: u64,
    /// QoS 2 messages a subscriber session got twice (a failure when
    /// [`Options::check_qos2_duplicates`] is on).
    pub qos2_duplicates: Vec<String>,
    /// Sessions (CONNACK) and subscriptions (SUBACK) the broker confirmed
    /// and a crash lost (a failure when
    /// [`Options::check_session_durability`] is on).
    pub sessions_lost: Vec<String>,
    /// Invariants broken; the run stopped at the first.
    pub violations: Vec<String>,
    /// A hash of every byte exchanged, in order: two runs of one seed with
    /// equal traces behaved the same.
    pub trace: u64,
}

impl Outcome {
    /// Whether every invariant held.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// One line: what the run did.
    pub fn summary(&self) -> String {
        format!(
            "seed {}: {} steps, {:.1} s simulated, {} crashes, {} connections, {} published, {} acknowledged, {} deliveries, {} guaranteed deliveries checked, {} QoS 2 duplicates or reused ids, {} sessions or subscriptions lost, trace {:016x}",
            self.seed,
            self.steps,
            self.sim_time.as_secs_f64(),
            self.crashes,
            self.connections,
            self.published,
            self.acknowledged,
            self.deliveries,
            self.guaranteed,
            self.qos2_duplicates.len(),
            self.sessions_lost.len(),
            self.trace
        )
    }
}

/// The command that replays `seed`.
pub fn replay_command(seed: u64, options: &Options) -> String {
    let mut cmd = format!(
        "cargo run -p roost-sim -- --seed {seed} --steps {}",
        options.steps
    );
    if !options.check_qos2_duplicates {
        cmd.push_str(" --report-qos2-duplicates");
    }
    if !options.check_session_durability {
        cmd.push_str(" --report-lost-sessions");
    }
    for (on, flag) in [
        (options.crashes, " --no-crashes"),
        (options.disk_faults, " --no-disk-faults"),
        (options.net_faults, " --no-net-faults"),
        (options.clock_faults, " --no-clock-faults"),
    ] {
        if !on {
            cmd.push_str(flag);
        }
    }
    if options.clients != Options::default().clients {
        let _ = write!(cmd, " --clients {}", options.clients);
    }
    cmd
}

/// Runs one seed. A panic anywhere (the broker's or the simulator's) is
/// a violation, not an unwinding test.
pub fn run(seed: u64, options: &Options) -> Outcome {
    let opts = options.clone();
    let result = std::panic::catch_unwind(move || {
        let mut world = World::new(seed, opts);
        world.run();
        world.outcome
    });
    match result {
        Ok(outcome) => outcome,
        Err(payload) => {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            Outcome {
                seed,
                violations: vec![format!("panic: {why}")],
                ..Outcome::default()
            }
        }
    }
}

/// Topics the clients publish to, and the filters they subscribe to.
const TOPICS: [&str; 4] = ["t/a", "t/b", "t/c/d", "u/x"];
const FILTERS: [&str; 5] = ["t/#", "t/+", "t/a", "u/x", "+/x"];
/// Shared subscriptions, for persistent MQTT 5 clients.
const SHARED: [&str; 2] = ["$share/g1/t/#", "$share/g2/u/#"];
const WILL_TOPIC: &str = "t/will";
/// Unacknowledged publishes a client keeps out at once (below any
/// Receive Maximum the broker announces).
const MAX_OUTGOING: usize = 8;

fn matches(filter: &str, topic: &str) -> bool {
    let filter = filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/').map(|(_, f)| f))
        .unwrap_or(filter);
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Client(usize),
    /// Sends bad input, then leaves.
    Vandal,
}

/// One simulated TCP connection.
struct Link {
    conn: ConnId,
    owner: Owner,
    protocol: Protocol,
    /// Sent by the client, not yet read by the broker.
    to_broker: VecDeque<u8>,
    /// Written by the broker, not yet read by the client.
    to_client: VecDeque<u8>,
    /// The client's decoder input.
    inbox: BytesMut,
    /// The driver has output the last write could not take.
    wants_write: bool,
    /// The runtime dropped the socket (interest.close): nothing more either
    /// way once `to_client` is read.
    dropped: bool,
    /// The runtime shut the write side: the client reads EOF after
    /// `to_client`.
    write_shut: bool,
    /// `handle_closed` was called, or the socket was dropped: the driver
    /// is done with it.
    closed: bool,
    /// The client no longer reads it (it left, or took over elsewhere).
    abandoned: bool,
    /// Close it from the client's side once `to_broker` is read.
    close_when_sent: bool,
    /// Nothing moves either way before this.
    stalled_until: Instant,
}

impl Link {
    fn dead(&self) -> bool {
        self.closed && (self.abandoned || self.to_client.is_empty())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    /// PUBLISH sent, PUBACK / PUBREC awaited.
    Sent,
    /// PUBREC received, PUBREL sent, PUBCOMP awaited.
    Released,
}

#[derive(Debug, Clone)]
struct Outgoing {
    seq: u64,
    state: OutState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Down,
    /// CONNECT sent on `link`.
    Connecting,
    Up,
}

/// A simulated client: one client identifier, its session as it believes
/// it to be, and what it was told and given.
struct Client {
    name: String,
    protocol: Protocol,
    /// Asks for a session that outlives the connection.
    persistent: bool,
    keep_alive: u16,
    /// Its one subscription (one filter, so no message matches twice).
    filter: &'static str,
    sub_qos: QoS,
    /// QoS granted (SUBACK) in the current session.
    granted: Option<QoS>,
    link: Option<usize>,
    conn: Conn,
    /// Numbers the sessions this client has had: a message is owed to the
    /// session that existed when it was published.
    epoch: u32,
    /// The current epoch's session was confirmed by a CONNACK.
    established: bool,
    /// The next CONNECT asks for a clean start (MQTT 5; an MQTT 3
    /// persistent session cannot start clean).
    clean_next: bool,
    /// The CONNECT in flight asked for a clean start.
    sent_clean: bool,
    next_pid: u16,
    outgoing: BTreeMap<u16, Outgoing>,
    /// QoS 2 messages received, PUBREC sent, PUBREL awaited (method B of
    /// the specification: delivered to the application on first receipt).
    held: BTreeMap<u16, (usize, u64)>,
    last_sent: Instant,
    next_seq: u64,
    wills: u64,
}

struct Message {
    publisher: usize,
    topic: &'static str,
    qos: QoS,
    retain: bool,
    /// The publisher sent it again (DUP): the broker may route it again,
    /// after later messages, so it is out of the order check.
    resent: bool,
    acknowledged: bool,
    /// Subscriber sessions (client, epoch) with a granted QoS 1/2
    /// subscription when it was published.
    owed: Vec<(usize, u32)>,
    /// Shared-group members (client, epoch) then: one of them is owed it.
    owed_shared: Vec<Vec<(usize, u32)>>,
}

struct World {
    rng: Rng,
    opts: Options,
    now: Instant,
    config: Config,
    disk: Arc<Mutex<Disk>>,
    driver: Driver,
    links: Vec<Link>,
    clients: Vec<Client>,
    jobs: VecDeque<Job>,
    /// Finished jobs whose completion is delayed until then.
    done: VecDeque<(Instant, JobDone)>,
    messages: BTreeMap<(usize, u64), Message>,
    wills: BTreeSet<String>,
    /// What each session (client, epoch) received, by message.
    received: BTreeMap<(usize, u32), BTreeMap<(usize, u64), u32>>,
    /// The last first-time receipt per (session, publisher, QoS published),
    /// for the order check.
    last_seen: BTreeMap<(usize, u32, usize, u8), u64>,
    /// Sessions whose subscription a crash lost: owed nothing.
    waived: BTreeSet<(usize, u32)>,
    outcome: Outcome,
    trace: u64,
    faults: bool,
    /// How far behind the simulated time the runtime's clock reads: what
    /// the driver is given is `now - skew` (a clock that stepped back).
    skew: Duration,
    /// The latest time given to the driver since it started, and the
    /// engine's time after the last step: neither may go backwards.
    given: Instant,
    engine_now: Instant,
    /// Print what happens (`ROOST_SIM_LOG=1`), for reading a replayed seed.
    log: bool,
}

impl World {
    fn new(seed: u64, opts: Options) -> World {
        let mut rng = Rng::new(seed);
        let mut config = Config::default();
        config.sys.interval_secs = 0;
        config.limits.max_queued_messages = 100_000;
        config.persistence.durability = config::Durability::Sync;
        let mut disk = Disk::default();
        disk.lying = opts.lying_disk;
        let disk = Arc::new(Mutex::new(disk));
        let now = Instant::ZERO;
        let driver = start(&config, &disk, now);
        let mut clients = Vec::new();
        for i in 0..opts.clients.max(2) {
            let protocol = if rng.chance(500) {
                Protocol::V5
            } else {
                Protocol::V3_1_1
            };
            let persistent = rng.chance(600);
            let filter = if protocol == Protocol::V5 && persistent && rng.chance(300) {
                SHARED[rng.index(SHARED.len())]
            } else {
                FILTERS[rng.index(FILTERS.len())]
            };
            clients.push(Client {
                name: format!("c{i}"),
                protocol,
                persistent,
                keep_alive: if rng.chance(500) { 0 } else { 30 },
                filter,
                sub_qos: qos(rng.below(3) as u8),
                granted: None,
                link: None,
                conn: Conn::Down,
                epoch: 0,
                established: false,
                clean_next: true,
                sent_clean: true,
                next_pid: 1,
                outgoing: BTreeMap::new(),
                held: BTreeMap::new(),
                last_sent: now,
                next_seq: 0,
                wills: 0,
            });
        }
        World {
            rng,
            outcome: Outcome {
                seed,
                ..Outcome::default()
            },
            opts,
            now,
            config,
            disk,
            driver,
            links: Vec::new(),
            clients,
            jobs: VecDeque::new(),
            done: VecDeque::new(),
            messages: BTreeMap::new(),
            wills: BTreeSet::new(),
            received: BTreeMap::new(),
            last_seen: BTreeMap::new(),
            waived: BTreeSet::new(),
            trace: 0xcbf2_9ce4_8422_2325,
            faults: true,
            skew: Duration::ZERO,
            given: now,
            engine_now: now,
            log: std::env::var_os("ROOST_SIM_LOG").is_some(),
        }
    }

    fn violation(&mut self, what: String) {
        if self.outcome.violations.is_empty() {
            self.outcome.violations.push(format!(
                "step {} at {} ms: {what}",
                self.outcome.steps,
                self.now.as_millis()
            ));
        }
    }

    fn failed(&self) -> bool {
        !self.outcome.violations.is_empty()
    }

    fn record(&mut self, tag: u64, bytes: &[u8]) {
        for b in tag.to_le_bytes().iter().chain(bytes) {
            self.trace ^= u64::from(*b);
            self.trace = self.trace.wrapping_mul(0x100_0000_01b3);
        }
    }

    fn run(&mut self) {
        for (c, client) in self.clients.iter().enumerate() {
            self.log(|| {
                format!(
                    "c{c}: {:?}, {}, keep-alive {}, subscribes to {} at {:?}",
                    client.protocol,
                    if client.persistent {
                        "persistent"
                    } else {
                        "clean"
                    },
                    client.keep_alive,
                    client.filter,
                    client.sub_qos
                )
            });
        }
        for _ in 0..self.opts.steps {
            self.outcome.steps += 1;
            self.step();
            self.check_step();
            if self.failed() {
                break;
            }
        }
        if !self.failed() {
            self.quiesce();
            self.check_final();
        }
        self.outcome.sim_time = Duration::from_millis(self.now.as_millis());
        self.outcome.trace = self.trace;
        let disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        let _ = (disk.commits, disk.failures);
    }

    // ----- the driver, as a runtime drives it -----

    /// Drains the driver's events the way a runtime does: writes on wake,
    /// queues jobs.
    fn drain(&mut self) {
        while let Some(event) = self.driver.poll_event() {
            match event {
                Event::Wake(conn) => {
                    if let Some(i) = self.link_of(conn) {
                        self.links[i].wants_write = true;
                        self.write(i);
                    }
                }
                Event::Job(job) => self.jobs.push_back(job),
                _ => {}
            }
        }
    }

    fn link_of(&self, conn: ConnId) -> Option<usize> {
        self.links
            .iter()
            .rposition(|l| l.conn == conn && !(l.closed && l.dropped))
    }

    /// The socket is writable: the driver writes what it has, the socket
    /// taking a random amount (a short write, or none: WouldBlock).
    fn write(&mut self, i: usize) {
        let link = &mut self.links[i];
        if link.closed || !link.wants_write {
            return;
        }
        let conn = link.conn;
        let stalled = link.stalled_until > self.now;
        let mut budget: usize = if stalled {
            0
        } else {
            match self.rng.below(4) {
                0 => self.rng.range(1, 64) as usize,
                1 => self.rng.range(1, 4096) as usize,
                _ => usize::MAX,
            }
        };
        let mut taken = Vec::new();
        let t = self.driver_now();
        let status = self.driver.handle_write(t, conn, |bufs| {
            if budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(budget - n);
                taken.extend_from_slice(&b[..take]);
                n += take;
                if n == budget {
                    break;
                }
            }
            budget -= n;
            Ok(n)
        });
        self.record(conn_tag(conn) | 1 << 62, &taken);
        let link = &mut self.links[i];
        link.to_client.extend(taken);
        match status {
            Ok(WriteStatus::Drained) => link.wants_write = false,
            Ok(WriteStatus::WouldBlock) => {}
            Err(_) => unreachable!("the simulated socket never fails a write"),
        }
        let interest = self.driver.interest(conn);
        let link = &mut self.links[i];
        if interest.shutdown_write {
            link.write_shut = true;
        }
        if interest.close {
            link.dropped = true;
            link.closed = true;
        }
    }

    fn accept(&mut self, owner: Owner, protocol: Protocol) -> usize {
        let t = self.driver_now();
        let conn = self.driver.handle_accept(t, 0, None);
        self.outcome.connections += 1;
        self.links.push(Link {
            conn,
            owner,
            protocol,
            to_broker: VecDeque::new(),
            to_client: VecDeque::new(),
            inbox: BytesMut::new(),
            wants_write: false,
            dropped: false,
            write_shut: false,
            closed: false,
            abandoned: false,
            close_when_sent: false,
            stalled_until: Instant::ZERO,
        });
        self.drain();
        self.links.len() - 1
    }

    /// The client's side closes the socket: the runtime reads EOF.
    fn close_link(&mut self, i: usize) {
        let link = &mut self.links[i];
        if !link.closed {
            link.closed = true;
            let conn = link.conn;
            let t = self.driver_now();
            self.driver.handle_closed(t, conn);
            self.drain();
        }
    }

    /// The broker reads a random part of what `i`'s client sent.
    fn deliver_to_broker(&mut self, i: usize, all: bool) -> bool {
        let link = &self.links[i];
        if link.closed
            || link.to_broker.is_empty()
            || link.stalled_until > self.now
            || !self.driver.interest(link.conn).read
        {
            return false;
        }
        let len = link.to_broker.len();
        let n = if all {
            len
        } else {
            self.rng.range(1, len as u64) as usize
        };
        let chunk: Vec<u8> = self.links[i].to_broker.drain(..n).collect();
        let conn = self.links[i].conn;
        self.record(conn_tag(conn), &chunk);
        let t = self.driver_now();
        self.driver.handle_read(t, conn, &chunk);
        self.drain();
        let link = &self.links[i];
        if link.close_when_sent && link.to_broker.is_empty() {
            self.close_link(i);
        }
        true
    }

    /// The client reads a random part of what the broker wrote to `i`.
    fn deliver_to_client(&mut self, i: usize, all: bool) -> bool {
        let link = &self.links[i];
        if link.abandoned || link.stalled_until > self.now {
            return false;
        }
        if link.to_client.is_empty() {
            if link.dropped || link.write_shut {
                // EOF: the client sees the connection end.
                self.link_down(i);
                return true;
            }
            return false;
        }
        let len = link.to_client.len();
        let n = if all {
            len
        } else {
            self.rng.range(1, len as u64) as usize
        };
        let chunk: Vec<u8> = self.links[i].to_client.drain(..n).collect();
        let link = &mut self.links[i];
        link.inbox.extend_from_slice(&chunk);
        let protocol = link.protocol;
        let owner = link.owner;
        let mut packets = Vec::new();
        loop {
            match decode(&mut self.links[i].inbox, protocol, usize::MAX) {
                Ok(Some(p)) => packets.push(p),
                Ok(None) => break,
                Err(e) => {
                    if owner != Owner::Vandal {
                        self.violation(format!("broker sent bytes that do not decode: {e:?}"));
                    }
                    self.links[i].inbox.clear();
                    break;
                }
            }
        }
        if let Owner::Client(c) = owner {
            for p in packets {
                if self.clients[c].link != Some(i) || self.failed() {
                    break;
                }
                self.on_packet(c, p);
            }
        }
        true
    }

    /// The client learns that link `i` is gone.
    fn link_down(&mut self, i: usize) {
        self.log(|| format!("link {i} {} down (EOF)", self.links[i].conn));
        let link = &mut self.links[i];
        link.abandoned = true;
        let owner = link.owner;
        // The client's side closes too.
        self.close_link(i);
        if let Owner::Client(c) = owner {
            if self.clients[c].link == Some(i) {
                self.client_down(c);
            }
        }
    }

    /// A client lost its connection: a clean session ends with it.
    fn client_down(&mut self, c: usize) {
        let client = &mut self.clients[c];
        client.link = None;
        client.conn = Conn::Down;
        if !client.persistent || !client.established {
            self.end_session(c);
        }
    }

    /// The client's session is over (clean, or it was told so): nothing
    /// more is owed to it, and it forgets its state.
    fn end_session(&mut self, c: usize) {
        let client = &mut self.clients[c];
        client.epoch += 1;
        client.established = false;
        client.granted = None;
        client.outgoing.clear();
        client.held.clear();
    }

    /// Runs the oldest store job; its completion reaches the driver at
    /// once or later (a slow disk).
    fn run_job(&mut self) {
        let Some(job) = self.jobs.pop_front() else {
            return;
        };
        let done = job.run();
        if self.log {
            let d = self.disk.lock().unwrap_or_else(|e| e.into_inner());
            let line = format!(
                "job ran: {} commits, {} failures, {} staged",
                d.commits,
                d.failures,
                d.staged()
            );
            drop(d);
            self.log(|| line);
        }
        let delay = if self.opts.disk_faults && self.faults && self.rng.chance(300) {
            Duration::from_millis(self.rng.range(1, 800))
        } else {
            Duration::ZERO
        };
        self.done.push_back((self.now + delay, done));
        self.complete_jobs();
    }

    fn complete_jobs(&mut self) {
        while self.done.front().is_some_and(|(at, _)| *at <= self.now) {
            if let Some((_, done)) = self.done.pop_front() {
                let t = self.driver_now();
                self.driver.handle_job_done(t, done);
                self.drain();
            }
        }
    }

    /// The time the runtime's clock reads, given to the driver.
    fn driver_now(&mut self) -> Instant {
        let t = self.now - self.skew;
        self.given = self.given.max(t);
        t
    }

    /// The runtime's clock misbehaves (see [`Options::clock_faults`]).
    fn clock_fault(&mut self) {
        match self.rng.below(3) {
            0 => {
                // Suspended: time jumps, and the runtime's timer fires
                // once, far past every deadline on the way.
                let by = Duration::from_millis(self.rng.range(60_000, 7_200_000));
                self.log(|| format!("clock jumps {} s forward", by.as_secs()));
                self.now = self.now + by;
                let t = self.driver_now();
                self.driver.handle_timeout(t);
                self.drain();
                self.complete_jobs();
            }
            1 => {
                let back = Duration::from_millis(self.rng.range(1, 60_000));
                self.log(|| format!("clock steps {} ms back", back.as_millis()));
                self.skew = back;
            }
            _ => {
                if !self.skew.is_zero() {
                    self.log(|| "clock catches up".to_string());
                }
                self.skew = Duration::ZERO;
            }
        }
    }

    fn advance(&mut self, to: Instant) {
        let to = to.max(self.now);
        // Stop at every deadline on the way, as a runtime's timer does.
        for round in 0.. {
            if round == 10_000 {
                let at = self.driver.poll_timeout();
                self.violation(format!(
                    "poll_timeout stays at {at:?} after 10,000 handle_timeout calls"
                ));
                return;
            }
            // The driver's deadlines are on its clock, `skew` behind.
            let next = self.driver.poll_timeout().map(|at| at + self.skew);
            let done_at = self.done.front().map(|(at, _)| *at);
            let stop = [next, done_at].into_iter().flatten().min();
            match stop {
                Some(at) if at <= to => {
                    self.now = self.now.max(at);
                    let t = self.driver_now();
                    self.driver.handle_timeout(t);
                    self.drain();
                    self.complete_jobs();
                }
                _ => break,
            }
            if self.failed() {
                return;
            }
        }
        self.now = to;
        let t = self.driver_now();
        self.driver.handle_timeout(t);
        self.drain();
        self.complete_jobs();
    }

    /// The machine dies: the driver, its jobs and every connection go; what
    /// the disk made durable (and a prefix of what it was writing) stays;
    /// the broker restarts from it.
    fn crash(&mut self) {
        self.log(|| "CRASH".to_string());
        self.outcome.crashes += 1;
        self.jobs.clear();
        // A finished job whose completion had not arrived: the disk has it,
        // the broker never heard.
        self.done.clear();
        {
            let mut disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
            let staged = disk.staged();
            let keep = self.rng.index(staged + 1);
            disk.crash(keep);
            disk.failing = false;
        }
        for link in &mut self.links {
            link.closed = true;
            link.dropped = true;
            link.abandoned = true;
        }
        for c in 0..self.clients.len() {
            if self.clients[c].link.is_some() {
                self.client_down(c);
            }
        }
        self.links.clear();
        self.check_recovered();
        self.now = self.now + Duration::from_millis(self.rng.range(1, 3_000));
        // A new process: its clock reads right, until a fault says not.
        self.skew = Duration::ZERO;
        self.given = self.now;
        self.engine_now = self.now;
        self.driver = start(&self.config, &self.disk, self.now);
        self.drain();
    }

    /// After a crash: every subscription a persistent session was
    /// confirmed must be on the disk.
    fn check_recovered(&mut self) {
        let recovered = self
            .disk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recover();
        self.log(|| {
            let names: Vec<String> = recovered
                .sessions
                .iter()
                .map(|s| {
                    format!(
                        "{}{:?}{:?}",
                        s.client_id.as_str(),
                        s.subscriptions
                            .iter()
                            .map(|x| x.0.as_str().to_string())
                            .collect::<Vec<_>>(),
                        s.messages
                            .iter()
                            .map(|m| (
                                String::from_utf8_lossy(&m.message.payload).into_owned(),
                                m.sent.map(|(p, r)| (p.get(), r))
                            ))
                            .collect::<Vec<_>>()
                    )
                })
                .collect();
            format!("recovered sessions: {names:?}")
        });
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            if !client.persistent || !client.established || client.granted.is_none() {
                continue;
            }
            let session = recovered
                .sessions
                .iter()
                .find(|s| s.client_id.as_str() == client.name);
            let kept = session.is_some_and(|s| {
                s.subscriptions
                    .iter()
                    .any(|(f, _, _)| f.as_str() == client.filter)
            });
            if kept || session.is_none() {
                // (A lost session is caught at its next CONNACK.)
                continue;
            }
            let what = format!(
                "{} (session {}): SUBACK for {} was sent, the crash lost the subscription",
                client.name, client.epoch, client.filter
            );
            if self.opts.check_session_durability {
                self.violation(what);
                return;
            }
            self.outcome.sessions_lost.push(what);
            self.waived.insert((c, client.epoch));
            self.clients[c].granted = None;
        }
    }

    // ----- clients -----

    fn log(&self, what: impl FnOnce() -> String) {
        if self.log {
            println!("[{:>8} ms] {}", self.now.as_millis(), what());
        }
    }

    fn send(&mut self, c: usize, packet: &Packet) {
        let Some(i) = self.clients[c].link else {
            return;
        };
        self.log(|| {
            format!(
                "c{c} -> link {} {}: {}",
                i,
                self.links[i].conn,
                brief(packet)
            )
        });
        let mut buf = BytesMut::new();
        packet
            .encode(self.links[i].protocol, &mut buf)
            .expect("the simulated clients send only valid packets");
        self.links[i].to_broker.extend(&buf[..]);
        self.clients[c].last_sent = self.now;
    }

    fn connect(&mut self, c: usize) {
        if let Some(old) = self.clients[c].link {
            // Takeover: the client gives up on the old connection without
            // closing it; the broker must close it.
            self.links[old].abandoned = true;
            self.client_down(c);
        }
        let protocol = self.clients[c].protocol;
        let i = self.accept(Owner::Client(c), protocol);
        let client = &mut self.clients[c];
        client.link = Some(i);
        client.conn = Conn::Connecting;
        let clean = if protocol == Protocol::V5 {
            client.clean_next || !client.persistent
        } else {
            !client.persistent
        };
        client.sent_clean = clean;
        if clean && client.established {
            // A clean start ends the session the broker holds.
            self.end_session(c);
        }
        let will = if self.rng.chance(300) {
            let client = &mut self.clients[c];
            client.wills += 1;
            let payload = format!("w:{}:{}", c, client.wills);
            self.wills.insert(payload.clone());
            Some(Will {
                topic: TopicName::copy_from_str(WILL_TOPIC).expect("topic"),
                payload: Bytes::from(payload.into_bytes()),
                qos: qos(self.rng.below(2) as u8),
                retain: false,
                properties: Default::default(),
            })
        } else {
            None
        };
        let client = &self.clients[c];
        let mut connect = Connect {
            protocol,
            clean_start: clean,
            keep_alive: client.keep_alive,
            client_id: MqttStr::copy_from_str(&client.name).expect("client id"),
            will,
            username: None,
            password: None,
            properties: Default::default(),
        };
        if protocol == Protocol::V5 && client.persistent {
            connect.properties.session_expiry_interval = Some(u32::MAX);
        }
        self.send(c, &Packet::Connect(Box::new(connect)));
    }

    fn publish(&mut self, c: usize) {
        let client = &mut self.clients[c];
        if client.conn != Conn::Up || client.outgoing.len() >= MAX_OUTGOING {
            return;
        }
        let q = qos(self.rng.below(3) as u8);
        let topic = TOPICS[self.rng.index(TOPICS.len())];
        let retain = self.rng.chance(100);
        let client = &mut self.clients[c];
        let seq = client.next_seq;
        client.next_seq += 1;
        let qos_pid = match q {
            QoS::AtMostOnce => QosPid::AtMostOnce,
            _ => {
                let pid = loop {
                    let pid = client.next_pid;
                    client.next_pid = client.next_pid.checked_add(1).unwrap_or(1);
                    if !client.outgoing.contains_key(&pid) {
                        break pid;
                    }
                };
                client.outgoing.insert(
                    pid,
                    Outgoing {
                        seq,
                        state: OutState::Sent,
                    },
                );
                let pid = PacketId::new(pid).expect("nonzero");
                if q == QoS::AtLeastOnce {
                    QosPid::AtLeastOnce(pid)
                } else {
                    QosPid::ExactlyOnce(pid)
                }
            }
        };
        // Who is owed it: every session with a granted QoS 1/2
        // subscription that matches, as the clients know them now.
        let mut owed = Vec::new();
        // A group is owed the message only if every member the broker may
        // pick is known to hold a QoS 1/2 subscription: one with a QoS 0
        // grant, or a SUBACK still on its way, may be picked and lose it.
        let mut groups: BTreeMap<&str, Option<Vec<(usize, u32)>>> = BTreeMap::new();
        for (s, sub) in self.clients.iter().enumerate() {
            if q == QoS::AtMostOnce || !matches(sub.filter, topic) {
                continue;
            }
            let sure = sub.granted.is_some_and(|g| g != QoS::AtMostOnce);
            if sub.filter.starts_with("$share/") {
                let group = groups.entry(sub.filter).or_insert_with(|| Some(Vec::new()));
                match (sure, group.as_mut()) {
                    (true, Some(members)) => members.push((s, sub.epoch)),
                    _ => *group = None,
                }
            } else if sure {
                owed.push((s, sub.epoch));
            }
        }
        let groups: Vec<Vec<(usize, u32)>> = groups
            .into_values()
            .flatten()
            .filter(|members| !members.is_empty())
            .collect();
        self.messages.insert(
            (c, seq),
            Message {
                publisher: c,
                topic,
                qos: q,
                retain,
                resent: false,
                acknowledged: false,
                owed,
                owed_shared: groups,
            },
        );
        self.outcome.published += 1;
        let publish = Publish {
            dup: false,
            qos: qos_pid,
            retain,
            topic: TopicName::copy_from_str(topic).expect("topic"),
            payload: Bytes::from(format!("m:{c}:{seq}").into_bytes()),
            properties: Default::default(),
        };
        self.send(c, &Packet::Publish(publish));
    }

    fn subscribe(&mut self, c: usize) {
        let client = &self.clients[c];
        let subscribe = Subscribe {
            packet_id: PacketId::new(60_000).expect("nonzero"),
            subscriptions: vec![Subscription {
                filter: TopicFilter::copy_from_str(client.filter).expect("filter"),
                options: SubscriptionOptions {
                    qos: client.sub_qos,
                    ..Default::default()
                },
            }],
            properties: Default::default(),
        };
        self.send(c, &Packet::Subscribe(subscribe));
    }

    /// Resends what a resumed session still owes the broker, in order.
    fn resume(&mut self, c: usize) {
        let pending: Vec<(u16, Outgoing)> = self.clients[c]
            .outgoing
            .iter()
            .map(|(p, o)| (*p, o.clone()))
            .collect();
        for (pid, out) in pending {
            let packet_id = PacketId::new(pid).expect("nonzero");
            match out.state {
                OutState::Sent => {
                    let Some(m) = self.messages.get_mut(&(c, out.seq)) else {
                        continue;
                    };
                    m.resent = true;
                    let qos_pid = if m.qos == QoS::AtLeastOnce {
                        QosPid::AtLeastOnce(packet_id)
                    } else {
                        QosPid::ExactlyOnce(packet_id)
                    };
                    let publish = Publish {
                        dup: true,
                        qos: qos_pid,
                        retain: m.retain,
                        topic: TopicName::copy_from_str(m.topic).expect("topic"),
                        payload: Bytes::from(format!("m:{c}:{}", out.seq).into_bytes()),
                        properties: Default::default(),
                    };
                    self.send(c, &Packet::Publish(publish));
                }
                OutState::Released => {
                    self.send(c, &Packet::PubRel(PubResponse::new(packet_id)));
                }
            }
        }
    }

    fn on_packet(&mut self, c: usize, packet: Packet) {
        self.log(|| {
            let conn = self.clients[c].link.map(|i| self.links[i].conn.to_string());
            format!("c{c} <- {} ({})", brief(&packet), conn.unwrap_or_default())
        });
        // Before CONNACK the server sends nothing but CONNACK (or AUTH,
        // which these clients do not use) [MQTT-3.1.4-6, MQTT-3.2.0-1].
        if self.clients[c].conn == Conn::Connecting && !matches!(packet, Packet::ConnAck(_)) {
            self.violation(format!(
                "{}: {:?} before CONNACK",
                self.clients[c].name,
                packet.packet_type()
            ));
            return;
        }
        match packet {
            Packet::ConnAck(ack) => {
                if self.clients[c].conn != Conn::Connecting {
                    self.violation(format!("{}: CONNACK twice", self.clients[c].name));
                    return;
                }
                if ack.reason.is_error() {
                    // Refused (a store outage, say): try again later.
                    return;
                }
                let client = &mut self.clients[c];
                client.conn = Conn::Up;
                client.clean_next = false;
                let name = client.name.clone();
                if ack.session_present {
                    if client.sent_clean {
                        self.violation(format!("{name}: session present on a clean start"));
                        return;
                    }
                    // (An MQTT 3 client whose first CONNACK was lost finds
                    // the session the broker created then.)
                    client.established = true;
                    self.resume(c);
                } else {
                    if client.established && client.persistent {
                        let what = format!(
                            "{name} (session {}): the broker lost a persistent session it had confirmed",
                            client.epoch
                        );
                        if self.opts.check_session_durability {
                            self.violation(what);
                            return;
                        }
                        self.outcome.sessions_lost.push(what);
                        let epoch = client.epoch;
                        self.waived.insert((c, epoch));
                    }
                    if client.established {
                        self.end_session(c);
                    }
                    let client = &mut self.clients[c];
                    client.established = true;
                    client.outgoing.clear();
                    client.held.clear();
                    client.granted = None;
                }
                if self.clients[c].granted.is_none() {
                    self.subscribe(c);
                }
            }
            Packet::SubAck(ack) => {
                let granted = match ack.reasons.first() {
                    Some(ReasonCode::Success) => Some(QoS::AtMostOnce),
                    Some(ReasonCode::GrantedQoS1) => Some(QoS::AtLeastOnce),
                    Some(ReasonCode::GrantedQoS2) => Some(QoS::ExactlyOnce),
                    _ => None,
                };
                self.clients[c].granted = granted;
            }
            Packet::Publish(p) => self.on_publish(c, p),
            Packet::PubAck(ack) => {
                let pid = ack.packet_id.get();
                match self.clients[c].outgoing.get(&pid).map(|o| (o.seq, o.state)) {
                    Some((seq, OutState::Sent))
                        if self.messages[&(c, seq)].qos == QoS::AtLeastOnce =>
                    {
                        self.clients[c].outgoing.remove(&pid);
                        if !ack.reason.is_error() {
                            self.acknowledge(c, seq);
                        }
                    }
                    other => self.violation(format!(
                        "{}: PUBACK for packet id {pid} in state {other:?}",
                        self.clients[c].name
                    )),
                }
            }
            Packet::PubRec(ack) => {
                let pid = ack.packet_id.get();
                match self.clients[c].outgoing.get(&pid).map(|o| (o.seq, o.state)) {
                    Some((seq, OutState::Sent))
                        if self.messages[&(c, seq)].qos == QoS::ExactlyOnce =>
                    {
                        if ack.reason.is_error() {
                            self.clients[c].outgoing.remove(&pid);
                        } else {
                            self.acknowledge(c, seq);
                            if let Some(o) = self.clients[c].outgoing.get_mut(&pid) {
                                o.state = OutState::Released;
                            }
                            self.send(c, &Packet::PubRel(PubResponse::new(ack.packet_id)));
                        }
                    }
                    other => self.violation(format!(
                        "{}: PUBREC for packet id {pid} in state {other:?}",
                        self.clients[c].name
                    )),
                }
            }
            Packet::PubComp(ack) => {
                let pid = ack.packet_id.get();
                match self.clients[c].outgoing.get(&pid).map(|o| o.state) {
                    Some(OutState::Released) => {
                        self.clients[c].outgoing.remove(&pid);
                    }
                    other => self.violation(format!(
                        "{}: PUBCOMP for packet id {pid} in state {other:?}",
                        self.clients[c].name
                    )),
                }
            }
            Packet::PubRel(rel) => {
                self.clients[c].held.remove(&rel.packet_id.get());
                self.send(c, &Packet::PubComp(PubResponse::new(rel.packet_id)));
            }
            Packet::PingResp | Packet::Disconnect(_) | Packet::UnsubAck(_) => {}
            other => self.violation(format!(
                "{}: unexpected {:?} from the broker",
                self.clients[c].name,
                other.packet_type()
            )),
        }
    }

    fn acknowledge(&mut self, c: usize, seq: u64) {
        if let Some(m) = self.messages.get_mut(&(c, seq)) {
            if !m.acknowledged {
                m.acknowledged = true;
                self.outcome.acknowledged += 1;
            }
        }
    }

    fn on_publish(&mut self, c: usize, p: Publish) {
        self.outcome.deliveries += 1;
        let name = self.clients[c].name.clone();
        let payload = String::from_utf8_lossy(&p.payload).into_owned();
        let id = parse_payload(&payload);
        if id.is_none() && !self.wills.contains(&payload) {
            self.violation(format!("{name}: received {payload:?}, which nobody sent"));
            return;
        }
        let first = match p.qos {
            QosPid::AtMostOnce => true,
            QosPid::AtLeastOnce(pid) => {
                self.send(c, &Packet::PubAck(PubResponse::new(pid)));
                true
            }
            QosPid::ExactlyOnce(pid) => {
                let key = pid.get();
                let first = match (self.clients[c].held.get(&key), id) {
                    (Some(held), Some(id)) if *held != id => {
                        let what = format!(
                            "{name}: packet id {key} reused for {payload:?} while the client still held it for m:{}:{}",
                            held.0, held.1
                        );
                        if self.opts.check_qos2_duplicates {
                            self.violation(what);
                            return;
                        }
                        // A real client would take it for a resend and
                        // lose it; this one notes it and takes it.
                        self.outcome.qos2_duplicates.push(what);
                        self.clients[c].held.insert(key, id);
                        true
                    }
                    (Some(_), _) => false,
                    (None, Some(id)) => {
                        self.clients[c].held.insert(key, id);
                        true
                    }
                    (None, None) => true,
                };
                self.send(c, &Packet::PubRec(PubResponse::new(pid)));
                first
            }
        };
        let (Some(id), true) = (id, first) else {
            return;
        };
        if p.retain {
            // A retained message sent on SUBSCRIBE: not a routed delivery.
            return;
        }
        let Some(m) = self.messages.get(&id) else {
            self.violation(format!("{name}: received {payload:?}, never published"));
            return;
        };
        let published = m.qos;
        let delivered = match p.qos {
            QosPid::AtMostOnce => QoS::AtMostOnce,
            QosPid::AtLeastOnce(_) => QoS::AtLeastOnce,
            QosPid::ExactlyOnce(_) => QoS::ExactlyOnce,
        };
        if delivered > published {
            self.violation(format!(
                "{name}: {payload:?} published at {published:?} delivered at {delivered:?}"
            ));
            return;
        }
        let epoch = self.clients[c].epoch;
        let count = self
            .received
            .entry((c, epoch))
            .or_default()
            .entry(id)
            .or_default();
        *count += 1;
        let again = *count > 1;
        if again && delivered == QoS::ExactlyOnce {
            let what = format!("{name} (session {epoch}) got QoS 2 message {payload:?} twice");
            if self.opts.check_qos2_duplicates {
                self.violation(what);
                return;
            }
            self.outcome.qos2_duplicates.push(what);
        }
        if again || m.resent || self.clients[c].filter.starts_with("$share/") {
            return;
        }
        // Order: first receipts from one publisher at one QoS come in the
        // order it published them.
        let key = (c, epoch, id.0, published as u8);
        if let Some(&last) = self.last_seen.get(&key) {
            if id.1 < last {
                self.violation(format!(
                    "{name}: m:{}:{} (QoS {published:?}) arrived after m:{}:{last}",
                    id.0, id.1, id.0
                ));
                return;
            }
        }
        self.last_seen.insert(key, id.1);
    }

    // ----- steps -----

    fn step(&mut self) {
        let faults = self.faults;
        match self.rng.below(100) {
            // The runtime's clock misbehaves.
            0 if faults && self.opts.clock_faults && self.rng.chance(300) => self.clock_fault(),
            // Time.
            0..=9 => {
                let to = match self.rng.below(10) {
                    0..=5 => self.now + Duration::from_millis(self.rng.range(1, 200)),
                    6..=8 => self
                        .driver
                        .poll_timeout()
                        .unwrap_or(self.now)
                        .min(self.now + Duration::from_secs(120)),
                    _ => self.now + Duration::from_millis(self.rng.range(1_000, 40_000)),
                };
                self.advance(to);
            }
            // Bytes move.
            10..=34 if !self.links.is_empty() => {
                let i = self.rng.index(self.links.len());
                let all = self.rng.chance(500);
                self.deliver_to_broker(i, all);
            }
            35..=59 if !self.links.is_empty() => {
                let i = self.rng.index(self.links.len());
                let all = self.rng.chance(500);
                self.deliver_to_client(i, all);
            }
            60..=64 if !self.links.is_empty() => {
                let i = self.rng.index(self.links.len());
                self.write(i);
            }
            // The disk.
            65..=71 => {
                if !self.jobs.is_empty() {
                    self.run_job();
                } else {
                    self.complete_jobs();
                }
            }
            // Clients act.
            72..=91 => {
                let c = self.rng.index(self.clients.len());
                self.client_act(c);
            }
            // Faults.
            92..=94 if faults && self.opts.net_faults && !self.links.is_empty() => {
                let i = self.rng.index(self.links.len());
                if self.rng.chance(500) {
                    // Reset: both sides see the connection die.
                    let owner = self.links[i].owner;
                    self.links[i].to_client.clear();
                    self.close_link(i);
                    if let Owner::Client(c) = owner {
                        if self.clients[c].link == Some(i) {
                            self.links[i].abandoned = true;
                            self.client_down(c);
                        }
                    }
                } else {
                    let pause = Duration::from_millis(self.rng.range(10, 5_000));
                    self.links[i].stalled_until = self.now + pause;
                }
            }
            95..=96 if faults && self.opts.disk_faults => {
                let mut disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
                let was = disk.failing;
                disk.failing = !disk.failing && self.rng.chance(400);
                let now = disk.failing;
                drop(disk);
                if was != now {
                    self.log(|| format!("disk {}", if now { "fails" } else { "works again" }));
                }
            }
            97 if faults && self.opts.crashes && self.rng.chance(150) => self.crash(),
            98 => self.vandal(),
            _ => {}
        }
        self.links.retain(Link::alive_or_owned);
        self.reindex();
    }

    fn client_act(&mut self, c: usize) {
        let client = &self.clients[c];
        match client.conn {
            Conn::Down => {
                if client.persistent && self.rng.chance(50) {
                    self.clients[c].clean_next = true;
                }
                self.connect(c);
            }
            Conn::Connecting => {}
            Conn::Up => match self.rng.below(100) {
                0..=69 => self.publish(c),
                70..=74 if self.clients[c].granted.is_none() => self.subscribe(c),
                75..=79 => {
                    // A clean DISCONNECT.
                    self.send(c, &Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
                    if let Some(i) = self.clients[c].link {
                        self.links[i].close_when_sent = true;
                        self.links[i].abandoned = true;
                    }
                    self.client_down(c);
                }
                80..=82 => self.connect(c),
                83..=89
                    if self.now.saturating_duration_since(client.last_sent)
                        > Duration::from_secs(10) =>
                {
                    self.send(c, &Packet::PingReq);
                }
                _ => {}
            },
        }
    }

    /// A connection that sends bad input: random bytes, or a CONNECT
    /// followed by garbage.
    fn vandal(&mut self) {
        let protocol = if self.rng.chance(500) {
            Protocol::V5
        } else {
            Protocol::V3_1_1
        };
        let i = self.accept(Owner::Vandal, protocol);
        let mut bytes = Vec::new();
        if self.rng.chance(500) {
            let connect = Connect {
                protocol,
                clean_start: true,
                keep_alive: 0,
                client_id: MqttStr::copy_from_str("vandal").expect("id"),
                will: None,
                username: None,
                password: None,
                properties: Default::default(),
            };
            let mut buf = BytesMut::new();
            let _ = Packet::Connect(Box::new(connect)).encode(protocol, &mut buf);
            bytes.extend_from_slice(&buf);
        }
        for _ in 0..self.rng.range(1, 40) {
            bytes.push(self.rng.below(256) as u8);
        }
        let link = &mut self.links[i];
        link.to_broker.extend(bytes);
        link.abandoned = true;
        link.close_when_sent = self.rng.chance(700);
    }

    /// Keeps link indices in the clients right after links were removed.
    fn reindex(&mut self) {
        for c in 0..self.clients.len() {
            if self.clients[c].link.is_some() {
                let pos = self
                    .links
                    .iter()
                    .position(|l| l.owner == Owner::Client(c) && !l.abandoned);
                self.clients[c].link = pos;
                if pos.is_none() {
                    self.client_down(c);
                }
            }
        }
    }

    // ----- invariants -----

    fn check_step(&mut self) {
        if self.failed() {
            return;
        }
        let limits = &self.config.limits;
        let max_queued = limits.max_queued_messages as usize;
        let max_inflight = usize::from(limits.max_inflight);
        let broker = self.driver.broker();
        let mut broken = None;
        for client in &self.clients {
            let queued = broker.queued_count(&client.name);
            let inflight = broker.inflight_count(&client.name);
            if queued > max_queued || inflight > max_inflight {
                broken = Some(format!(
                    "{}: {queued} queued / {inflight} in flight, over the limits {max_queued} / {max_inflight}",
                    client.name
                ));
            }
        }
        let stats = broker.stats();
        if stats.dropped_queue_full > 0 {
            broken = Some(format!(
                "{} messages dropped for full queues (limit {max_queued})",
                stats.dropped_queue_full
            ));
        }
        // Time never goes backwards inside: the driver holds the latest
        // time it was given, the engine no more than that, and neither
        // moves back.
        let (driver_now, engine_now) = (self.driver.now(), broker.now());
        if driver_now != self.given || engine_now > driver_now || engine_now < self.engine_now {
            broken = Some(format!(
                "time went wrong: driver at {} ms (latest given {} ms), engine at {} ms (was {} ms)",
                driver_now.as_millis(),
                self.given.as_millis(),
                engine_now.as_millis(),
                self.engine_now.as_millis()
            ));
        }
        let open = self.links.iter().filter(|l| !l.closed).count();
        if self.driver.connection_count() > open {
            broken = Some(format!(
                "the driver holds {} connections, the runtime {open}",
                self.driver.connection_count()
            ));
        }
        self.engine_now = engine_now;
        if let Some(b) = broken {
            self.violation(b);
        }
    }

    /// Heals every fault, brings every persistent client back, and lets the
    /// system settle: afterwards, everything owed must have arrived.
    fn quiesce(&mut self) {
        self.faults = false;
        self.skew = Duration::ZERO;
        self.disk.lock().unwrap_or_else(|e| e.into_inner()).failing = false;
        for link in &mut self.links {
            link.stalled_until = Instant::ZERO;
        }
        let mut quiet_rounds = 0;
        for _ in 0..5_000 {
            if self.failed() {
                return;
            }
            self.outcome.steps += 1;
            let before = self.trace;
            for c in 0..self.clients.len() {
                let client = &self.clients[c];
                if client.conn == Conn::Down && client.persistent && client.established {
                    self.connect(c);
                }
            }
            for i in 0..self.links.len() {
                self.deliver_to_broker(i, true);
                self.deliver_to_client(i, true);
                self.write(i);
            }
            while !self.jobs.is_empty() {
                self.run_job();
            }
            self.links.retain(Link::alive_or_owned);
            self.reindex();
            let next = self.now + Duration::from_millis(50);
            self.advance(next);
            // Keep-alive.
            for c in 0..self.clients.len() {
                let client = &self.clients[c];
                if client.conn == Conn::Up
                    && client.keep_alive > 0
                    && self.now.saturating_duration_since(client.last_sent) > Duration::from_secs(5)
                {
                    self.send(c, &Packet::PingReq);
                }
            }
            let idle = self.trace == before
                && self.jobs.is_empty()
                && self.done.is_empty()
                && self
                    .links
                    .iter()
                    .all(|l| l.to_broker.is_empty() && (l.to_client.is_empty() || l.abandoned));
            quiet_rounds = if idle { quiet_rounds + 1 } else { 0 };
            if quiet_rounds >= 3 {
                break;
            }
            self.check_step();
        }
    }

    fn check_final(&mut self) {
        if self.failed() {
            return;
        }
        let mut lost = Vec::new();
        let mut guaranteed = 0;
        for (&(p, seq), m) in &self.messages {
            if !m.acknowledged {
                continue;
            }
            for &(s, epoch) in &m.owed {
                if self.clients[s].epoch != epoch || self.waived.contains(&(s, epoch)) {
                    continue;
                }
                let got = self
                    .received
                    .get(&(s, epoch))
                    .is_some_and(|r| r.contains_key(&(p, seq)));
                if got {
                    guaranteed += 1;
                } else {
                    lost.push(format!(
                        "m:{p}:{seq} ({:?} to {}, acknowledged) never reached {} ({}, session {epoch})",
                        m.qos,
                        m.topic,
                        self.clients[s].name,
                        if self.clients[s].persistent { "persistent" } else { "clean" },
                    ));
                }
            }
            for group in &m.owed_shared {
                // A resent message is routed when the resend arrives, maybe
                // to a member whose session ended since.
                if m.resent
                    || group
                        .iter()
                        .any(|&(s, e)| self.clients[s].epoch != e || self.waived.contains(&(s, e)))
                {
                    continue;
                }
                let filter = self.clients[group[0].0].filter;
                let got = self.received.iter().any(|(&(s, _), r)| {
                    self.clients[s].filter == filter && r.contains_key(&(p, seq))
                });
                if got {
                    guaranteed += 1;
                } else {
                    lost.push(format!(
                        "m:{p}:{seq} ({:?}, acknowledged) reached no member of {}",
                        m.qos, self.clients[group[0].0].filter
                    ));
                }
            }
            let _ = m.publisher;
        }
        self.outcome.guaranteed = guaranteed;
        if !lost.is_empty() {
            let mut what = format!("{} acknowledged deliveries lost: ", lost.len());
            for l in lost.iter().take(5) {
                let _ = write!(what, "{l}; ");
            }
            self.violation(what);
        }
    }
}

impl Link {
    /// Links worth keeping: the driver still has it, or its client still
    /// uses it.
    fn alive_or_owned(&self) -> bool {
        !self.dead() || !self.abandoned
    }
}

fn start(config: &Config, disk: &Arc<Mutex<Disk>>, now: Instant) -> Driver {
    let recovered = disk.lock().unwrap_or_else(|e| e.into_inner()).recover();
    let store = OpenedStore {
        store: Box::new(SimStore(disk.clone())),
        recovered,
    };
    Driver::new(config, Files::load(config), Some(store), now).expect("driver")
}

/// A packet in a few words, for the log.
fn brief(packet: &Packet) -> String {
    match packet {
        Packet::Connect(c) => format!(
            "CONNECT {} clean={} {:?}",
            c.client_id.as_str(),
            c.clean_start,
            c.protocol
        ),
        Packet::ConnAck(a) => format!("CONNACK {:?} present={}", a.reason, a.session_present),
        Packet::Publish(p) => format!(
            "PUBLISH {} {:?} dup={} retain={} {}",
            p.topic.as_str(),
            p.qos,
            p.dup,
            p.retain,
            String::from_utf8_lossy(&p.payload)
        ),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            format!(
                "{:?} {} {:?}",
                packet.packet_type(),
                r.packet_id.get(),
                r.reason
            )
        }
        other => format!("{:?}", other.packet_type()),
    }
}

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn conn_tag(conn: ConnId) -> u64 {
    let text = conn.to_string();
    text.bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
}

fn parse_payload(payload: &str) -> Option<(usize, u64)> {
    let rest = payload.strip_prefix("m:")?;
    let (c, s) = rest.split_once(':')?;
    Some((c.parse().ok()?, s.parse().ok()?))
}
