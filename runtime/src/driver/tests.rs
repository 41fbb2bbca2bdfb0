//! The driver on a virtual clock, without sockets: every bound and policy
//! it owns, driven the way a runtime drives it.

use super::files::ListenerFiles;
use super::*;
use crate::acl::Acl;
use crate::passwd::{HashCost, PasswordFile};
use roost_persistence::{MemoryStore, StoreError};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

mod http;
mod reload;

/// A store that counts commits and flushes and fails on demand: the
/// real stores are tested on disk in `roost-persistence`; here only the
/// driver's use of the trait is under test.
#[derive(Clone, Default)]
struct Probe {
    commits: Arc<AtomicUsize>,
    flushes: Arc<AtomicUsize>,
    fail: Arc<AtomicBool>,
}

struct ProbeStore {
    inner: MemoryStore,
    probe: Probe,
}

impl Store for ProbeStore {
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.inner.apply(ops)
    }
    fn commit(&mut self) -> Result<(), StoreError> {
        if self.probe.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Interrupted { kept: 1 });
        }
        self.probe.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit()
    }
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.probe.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Interrupted { kept: 1 });
        }
        self.probe.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush()
    }
    fn recover(&mut self) -> Result<Recovered, StoreError> {
        self.inner.recover()
    }
}

/// A runtime in miniature: a virtual clock, writers that capture bytes
/// (or refuse them, to make a socket "full"), and jobs kept until the test
/// runs them.
struct Harness {
    driver: Driver,
    now: Instant,
    written: HashMap<ConnId, Vec<u8>>,
    /// Connections whose socket takes nothing (a reader that stopped).
    stalled: Vec<ConnId>,
    /// Connections the driver told the runtime to drop.
    dropped: Vec<ConnId>,
    shut_write: Vec<ConnId>,
    jobs: VecDeque<Job>,
    /// Most jobs out at once, over the whole test.
    most_jobs: usize,
    deliveries: Vec<(LocalSubscription, Message)>,
    stop_listening: bool,
    stopped: bool,
    /// Listeners the driver asked to bind ([`Event::Listen`]) and to close.
    listens: Vec<(usize, SocketAddr)>,
    unlistens: Vec<usize>,
    /// Connections the driver asked to dial ([`Event::Connect`]).
    dials: Vec<(ConnId, String)>,
}

impl Harness {
    fn new(config: &Config, files: Files, store: Option<OpenedStore>) -> Harness {
        let driver = Driver::new(config, files, store, Instant::ZERO).expect("driver");
        Harness {
            driver,
            now: Instant::ZERO,
            written: HashMap::new(),
            stalled: Vec::new(),
            dropped: Vec::new(),
            shut_write: Vec::new(),
            jobs: VecDeque::new(),
            most_jobs: 0,
            deliveries: Vec::new(),
            stop_listening: false,
            stopped: false,
            listens: Vec::new(),
            unlistens: Vec::new(),
            dials: Vec::new(),
        }
    }

    fn plain() -> Harness {
        let config = Config::default();
        let files = Files::load(&config);
        Harness::new(&config, files, None)
    }

    /// Drains the driver's events the way a runtime does.
    fn drain(&mut self) {
        while let Some(event) = self.driver.poll_event() {
            match event {
                Event::Wake(conn) => self.write(conn),
                Event::Job(job) => {
                    self.jobs.push_back(job);
                    self.most_jobs = self.most_jobs.max(self.jobs.len());
                }
                Event::Deliver {
                    subscription,
                    message,
                } => self.deliveries.push((subscription, message)),
                Event::StopListening => self.stop_listening = true,
                Event::Stopped => self.stopped = true,
                Event::Listen { listener, bind, .. } => self.listens.push((listener, bind)),
                Event::Unlisten { listener } => self.unlistens.push(listener),
                Event::Connect { conn, addr } => self.dials.push((conn, addr)),
                _ => {}
            }
        }
    }

    fn write(&mut self, conn: ConnId) {
        let stalled = self.stalled.contains(&conn);
        let sink = self.written.entry(conn).or_default();
        let result = self.driver.handle_write(self.now, conn, |bufs| {
            if stalled {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                sink.extend_from_slice(b);
                n += b.len();
            }
            Ok(n)
        });
        assert!(result.is_ok());
        let interest = self.driver.interest(conn);
        if interest.shutdown_write && !self.shut_write.contains(&conn) {
            self.shut_write.push(conn);
        }
        if interest.close && !self.dropped.contains(&conn) {
            self.dropped.push(conn);
        }
        // Events handle_write queued (a resumed reader's backlog) are taken
        // by the drain loop this was called from.
    }

    fn accept(&mut self) -> ConnId {
        let conn = self.driver.handle_accept(self.now, 0, None);
        self.drain();
        conn
    }

    fn read(&mut self, conn: ConnId, bytes: &[u8]) {
        self.driver.handle_read(self.now, conn, bytes);
        self.drain();
    }

    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some(at) = self.driver.poll_timeout() {
            if at > until {
                break;
            }
            self.now = self.now.max(at);
            self.driver.handle_timeout(self.now);
            self.drain();
        }
        self.now = until;
        self.driver.handle_timeout(self.now);
        self.drain();
    }

    /// Runs the oldest job out and hands its result back.
    fn run_job(&mut self) -> bool {
        let Some(job) = self.jobs.pop_front() else {
            return false;
        };
        let done = job.run();
        self.driver.handle_job_done(self.now, done);
        self.drain();
        true
    }

    fn output(&self, conn: ConnId) -> &[u8] {
        self.written.get(&conn).map_or(&[], Vec::as_slice)
    }
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// An MQTT 3.1.1 CONNECT.
fn connect(client_id: &str, user: Option<(&str, &str)>, clean: bool) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(4);
    let mut flags = if clean { 0x02 } else { 0 };
    if user.is_some() {
        flags |= 0xC0;
    }
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes());
    string(&mut body, client_id.as_bytes());
    if let Some((name, password)) = user {
        string(&mut body, name.as_bytes());
        string(&mut body, password.as_bytes());
    }
    packet(0x10, &body)
}

/// An MQTT 5 CONNECT, no properties.
fn connect_v5(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(5);
    body.push(0x02);
    body.extend_from_slice(&60u16.to_be_bytes());
    body.push(0);
    string(&mut body, client_id.as_bytes());
    packet(0x10, &body)
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// An MQTT 5 QoS 1 PUBLISH, no properties.
fn publish_v5(topic: &str, payload: &[u8], id: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, topic.as_bytes());
    body.extend_from_slice(&id.to_be_bytes());
    body.push(0);
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

fn subscribe(filter: &str, qos: u8) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    string(&mut body, filter.as_bytes());
    body.push(qos);
    packet(0x82, &body)
}

fn publish(topic: &str, payload: &[u8], qos: u8, id: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

fn connack_code(output: &[u8]) -> Option<u8> {
    (output.len() >= 4 && output[0] == 0x20).then(|| output[3])
}

fn cheap_passwords(users: &[(&str, &str)]) -> Arc<PasswordFile> {
    let mut file = PasswordFile::new();
    // Tests check the driver's bounds, not argon2's cost.
    file.set_cost(HashCost {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    });
    for (user, password) in users {
        file.add(user, password).unwrap();
    }
    Arc::new(file)
}

fn password_harness() -> Harness {
    let mut config = Config::default();
    config.listeners[0].allow_anonymous = false;
    let files = Files {
        listeners: vec![ListenerFiles {
            tls: None,
            passwords: Some(Ok(cheap_passwords(&[("alice", "secret")]))),
            acl: None,
        }],
        bridges: Vec::new(),
    };
    Harness::new(&config, files, None)
}

#[test]
fn password_checks_are_bounded_and_the_excess_is_refused_as_busy() {
    let mut h = password_harness();
    let mut conns = Vec::new();
    for i in 0..200 {
        let conn = h.accept();
        h.read(
            conn,
            &connect(&format!("c{i}"), Some(("alice", "wrong")), true),
        );
        conns.push(conn);
    }
    // Two checks run, 64 wait, and everyone else heard "busy" at once
    // (MQTT 3.1.1 return code 3, Server unavailable).
    assert_eq!(h.jobs.len(), MAX_PASSWORD_CHECKS);
    assert_eq!(
        h.driver.password_checks(),
        (MAX_PASSWORD_CHECKS, PASSWORD_QUEUE)
    );
    let busy = conns
        .iter()
        .filter(|c| connack_code(h.output(**c)) == Some(0x03))
        .count();
    assert_eq!(busy, 200 - MAX_PASSWORD_CHECKS - PASSWORD_QUEUE);
    // Everyone still waiting gives up: their checks are never run.
    for conn in &conns[MAX_PASSWORD_CHECKS..] {
        h.driver.handle_closed(h.now, *conn);
        h.drain();
    }
    while h.run_job() {}
    assert_eq!(h.most_jobs, MAX_PASSWORD_CHECKS);
    for conn in &conns[..MAX_PASSWORD_CHECKS] {
        assert_eq!(connack_code(h.output(*conn)), Some(0x04), "bad password");
    }
    assert_eq!(h.driver.password_checks(), (0, 0));
    // The right password is served once the flood is gone.
    let probe = h.accept();
    h.read(probe, &connect("probe", Some(("alice", "secret")), true));
    assert_eq!(h.jobs.len(), 1);
    h.run_job();
    assert_eq!(h.output(probe), CONNACK_OK);
}

fn store_harness(durability: config::Durability, probe: &Probe) -> Harness {
    let mut config = Config::default();
    config.persistence.durability = durability;
    config.persistence.flush_interval_ms = 1000;
    // The first $SYS tick is due at start: keep the timers to the store's.
    config.sys.interval_secs = 0;
    let files = Files::load(&config);
    let store = OpenedStore {
        store: Box::new(ProbeStore {
            inner: MemoryStore::new(),
            probe: probe.clone(),
        }),
        recovered: Recovered::default(),
    };
    Harness::new(&config, files, Some(store))
}

#[test]
fn periodic_durability_flushes_on_a_timer() {
    let probe = Probe::default();
    let mut h = store_harness(config::Durability::Periodic, &probe);
    assert_eq!(h.driver.poll_timeout(), Some(Instant::from_millis(1000)));
    h.advance(Duration::from_millis(999));
    assert!(h.jobs.is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.jobs.len(), 1, "a flush job at the interval");
    h.run_job();
    assert_eq!(probe.flushes.load(Ordering::SeqCst), 1);
    h.advance(Duration::from_millis(3000));
    while h.run_job() {}
    assert!(probe.flushes.load(Ordering::SeqCst) >= 3);
}

#[test]
fn sync_durability_has_no_flush_timer_and_groups_commits() {
    let probe = Probe::default();
    let mut h = store_harness(config::Durability::Sync, &probe);
    h.advance(Duration::from_secs(5));
    assert!(h.jobs.is_empty(), "nothing to store, nothing to flush");
    let sub = h.accept();
    h.read(sub, &connect("sub", None, false));
    // The session's creation is stored first; its CONNACK waits for it.
    assert_eq!(h.jobs.len(), 1);
    let publisher = h.accept();
    h.read(publisher, &connect("pub", None, false));
    // The store is busy: the second session waits for the next commit.
    assert_eq!(h.jobs.len(), 1);
    h.run_job();
    assert_eq!(h.jobs.len(), 1, "what queued meanwhile goes in one job");
    h.run_job();
    assert_eq!(probe.commits.load(Ordering::SeqCst), 2);
    assert_eq!(h.output(sub), CONNACK_OK);
    assert_eq!(h.output(publisher), CONNACK_OK);
}

#[test]
fn a_failed_store_refuses_loudly_then_resumes_when_it_can() {
    let probe = Probe::default();
    let mut h = store_harness(config::Durability::Sync, &probe);
    let sub = h.accept();
    h.read(sub, &connect("sub", None, false));
    h.run_job();
    h.read(sub, &subscribe("t", 1));
    while h.run_job() {}
    let v5 = h.accept();
    h.read(v5, &connect_v5("five"));
    let v3 = h.accept();
    h.read(v3, &connect("three", None, true));
    h.written.clear();
    // The disk fills up.
    probe.fail.store(true, Ordering::SeqCst);
    h.read(v5, &publish_v5("t", b"x", 7));
    while h.run_job() {}
    // MQTT 5: PUBACK 0x97 Quota exceeded, never a success.
    let out = h.output(v5);
    assert_eq!(
        (out[0], out[2], out[3], out[4]),
        (0x40, 0, 7, 0x97),
        "{out:?}"
    );
    // MQTT 3 has no negative PUBACK: the publisher is disconnected.
    h.read(v3, &publish("t", b"y", 1, 8));
    while h.run_job() {}
    assert!(h.output(v3).is_empty(), "no PUBACK for an unstored message");
    assert!(h.driver.interest(v3).shutdown_write || h.driver.interest(v3).close);
    // Space returns: the store is asked again on a back-off, and resumes.
    probe.fail.store(false, Ordering::SeqCst);
    h.advance(STORE_RETRY.0);
    while h.run_job() {}
    h.written.clear();
    h.read(v5, &publish_v5("t", b"z", 9));
    while h.run_job() {}
    let out = h.output(v5);
    assert_eq!((out[0], out[2], out[3]), (0x40, 0, 9), "{out:?}");
    assert!(out[1] == 2 || out[4] == 0, "a PUBACK with success: {out:?}");
}

#[test]
fn a_slow_reader_pauses_and_resumes_with_its_output() {
    let mut config = Config::default();
    config.limits.outbound_buffer_bytes = 64 * 1024;
    let files = Files::load(&config);
    let mut h = Harness::new(&config, files, None);
    let sub = h.accept();
    h.read(sub, &connect("sub", None, true));
    h.read(sub, &subscribe("t", 1));
    h.written.clear();
    h.stalled.push(sub);
    let publisher = h.accept();
    h.read(publisher, &connect("pub", None, true));
    let payload = vec![7u8; 4096];
    for i in 1..=64u16 {
        h.read(publisher, &publish("t", &payload, 1, i));
    }
    assert!(
        !h.driver.interest(sub).read,
        "over the buffer: reading pauses"
    );
    assert!(h.output(sub).is_empty());
    // The socket drains: reading resumes and the queued messages flow.
    h.stalled.clear();
    h.write(sub);
    h.drain();
    assert!(h.driver.interest(sub).read);
    assert!(h.output(sub).len() > 64 * 1024);
}

#[test]
fn a_closed_connection_lingers_then_is_dropped() {
    let mut h = Harness::plain();
    let conn = h.accept();
    h.read(conn, &connect("c", None, true));
    // A second CONNECT is a protocol violation: the broker closes.
    h.read(conn, &connect("c", None, true));
    let interest = h.driver.interest(conn);
    assert!(interest.shutdown_write && interest.read && !interest.close);
    assert_eq!(h.driver.connection_count(), 1);
    // What the peer still sends is discarded, not fed to the engine.
    h.read(conn, &publish("t", b"late", 0, 0));
    h.advance(LINGER - Duration::from_millis(1));
    assert!(!h.driver.interest(conn).close);
    h.advance(Duration::from_millis(1));
    assert!(h.driver.interest(conn).close);
    assert!(
        h.dropped.contains(&conn),
        "the runtime was woken to drop it"
    );
    assert_eq!(h.driver.connection_count(), 0);
}

#[test]
fn a_lingering_peer_that_floods_is_dropped_early() {
    let mut h = Harness::plain();
    let conn = h.accept();
    h.read(conn, &connect("c", None, true));
    h.read(conn, &connect("c", None, true));
    let junk = vec![0u8; 64 * 1024];
    for _ in 0..(LINGER_BYTES / junk.len()) {
        h.read(conn, &junk);
    }
    assert!(h.driver.interest(conn).close);
}

#[test]
fn shutdown_disconnects_waits_for_grace_then_stops() {
    let mut h = Harness::plain();
    let v5 = h.accept();
    h.read(v5, &connect_v5("five"));
    let v3 = h.accept();
    h.read(v3, &connect("three", None, true));
    h.written.clear();
    h.driver.handle_shutdown(h.now);
    h.drain();
    assert!(h.stop_listening);
    // MQTT 5: DISCONNECT 0x8B Server shutting down.
    let out = h.output(v5);
    assert_eq!((out[0], out[2]), (0xE0, 0x8B));
    assert!(!h.stopped, "waits for the peers to go");
    h.advance(SHUTDOWN_GRACE);
    assert!(h.stopped);
    assert_eq!(h.driver.connection_count(), 0);
}

#[test]
fn shutdown_flushes_the_store_before_it_stops() {
    let probe = Probe::default();
    let mut h = store_harness(config::Durability::Periodic, &probe);
    h.driver.handle_shutdown(h.now);
    h.drain();
    assert!(!h.stopped);
    assert_eq!(h.jobs.len(), 1);
    h.run_job();
    assert_eq!(probe.flushes.load(Ordering::SeqCst), 1);
    assert!(h.stopped);
}

#[test]
fn reload_with_a_broken_file_keeps_the_previous_one() {
    let mut config = Config::default();
    config.listeners[0].allow_anonymous = true;
    let deny = Arc::new(Acl::parse("user nobody\ntopic read nothing\n").unwrap());
    let files = Files {
        listeners: vec![ListenerFiles {
            tls: None,
            passwords: None,
            acl: Some(Ok(deny)),
        }],
        bridges: Vec::new(),
    };
    let mut h = Harness::new(&config, files, None);
    let broken = Files {
        listeners: vec![ListenerFiles {
            tls: None,
            passwords: Some(Err(FileError::Passwd {
                listener: 0,
                source: PasswordFile::parse("no colon here\n").unwrap_err(),
            })),
            acl: Some(Err(FileError::Acl {
                listener: 0,
                source: Acl::parse("bogus directive\n").unwrap_err(),
            })),
        }],
        bridges: Vec::new(),
    };
    let errors = h.driver.handle_reload(h.now, &config, broken);
    assert_eq!(errors.len(), 2);
    // The old ACL still denies an anonymous subscriber everything.
    let conn = h.accept();
    h.read(conn, &connect("c", None, true));
    h.written.clear();
    h.read(conn, &subscribe("t", 0));
    assert_eq!(h.output(conn), [0x90, 0x03, 0x00, 0x01, 0x80]);
}

#[test]
fn accept_failures_back_off_doubling_up_to_a_ceiling() {
    let mut h = Harness::plain();
    let e = io::Error::other("too many open files");
    let mut pauses = Vec::new();
    for _ in 0..8 {
        let until = h.driver.handle_accept_error(h.now, 0, &e);
        pauses.push(until.saturating_duration_since(h.now));
    }
    assert_eq!(pauses[0], ACCEPT_BACKOFF.0);
    assert_eq!(pauses[1], ACCEPT_BACKOFF.0 * 2);
    assert_eq!(*pauses.last().unwrap(), ACCEPT_BACKOFF.1);
    // A successful accept forgets the streak.
    h.accept();
    let until = h.driver.handle_accept_error(h.now, 0, &e);
    assert_eq!(until.saturating_duration_since(h.now), ACCEPT_BACKOFF.0);
}

#[test]
fn in_process_subscribers_get_deliveries_as_events() {
    let mut h = Harness::plain();
    let filter = TopicFilter::copy_from_str("a/#").unwrap();
    let sub = h.driver.handle_subscribe(h.now, filter);
    h.drain();
    let message = Message {
        topic: roost_core::topic::TopicName::copy_from_str("a/b").unwrap(),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    };
    assert_eq!(h.driver.handle_publish(h.now, message), 1);
    h.drain();
    assert_eq!(h.deliveries.len(), 1);
    assert_eq!(h.deliveries[0].0, sub);
}

#[test]
fn disallowed_code_points_switch_reaches_the_engine() {
    for (text, allowed) in [
        ("", false),
        ("[mqtt]\nallow_disallowed_code_points = true\n", true),
    ] {
        let config = Config::from_toml_str(text).expect("parses");
        let engine = engine_config(&config, false, None);
        assert_eq!(engine.allow_disallowed_code_points, allowed, "{text:?}");
    }
}

/// The CONNACK an MQTT 5 client without a client identifier gets: it
/// carries the identifier the engine picked from its seed.
fn assigned_connack(config: &Config) -> Vec<u8> {
    let mut h = Harness::new(config, Files::load(config), None);
    let conn = h.accept();
    h.read(conn, &connect_v5(""));
    h.output(conn).to_vec()
}

#[test]
fn the_engine_seed_is_drawn_from_the_os_unless_configured() {
    let fixed = Config::from_toml_str("[mqtt]\nrandom_seed = 42\n").expect("config");
    assert_eq!(fixed.mqtt.random_seed, Some(42));
    let first = assigned_connack(&fixed);
    assert!(first.len() > 20, "no assigned client identifier: {first:?}");
    assert_eq!(first, assigned_connack(&fixed), "one seed, one identifier");
    // Unset: each start draws its own, so two brokers do not hand out the
    // same identifiers.
    let drawn = Config::default();
    assert_eq!(drawn.mqtt.random_seed, None);
    assert_ne!(assigned_connack(&drawn), assigned_connack(&drawn));
    assert_ne!(config::os_seed(), config::os_seed());
    assert!(config::os_seed() <= i64::MAX as u64, "fits a TOML integer");
}

/// Everything a runtime sees from one driver: its events and the bytes
/// written to each connection, in order.
fn shutdown_transcript(seed: u64) -> Vec<String> {
    let config = Config::from_toml_str(&format!("[mqtt]\nrandom_seed = {seed}\n")).expect("config");
    let mut h = Harness::new(&config, Files::load(&config), None);
    let mut conns = Vec::new();
    for i in 0..32 {
        let conn = h.accept();
        if i % 2 == 0 {
            h.read(conn, &connect(&format!("three-{i}"), None, true));
        } else {
            h.read(conn, &connect_v5(&format!("five-{i}")));
        }
        conns.push(conn);
    }
    // Readers that stopped: their goodbyes cannot be written, so they are
    // still there when the grace period ends.
    h.stalled.extend(conns.iter().copied());
    h.driver.handle_shutdown(h.now);
    h.drain();
    h.advance(SHUTDOWN_GRACE);
    assert!(h.stopped);
    let mut transcript: Vec<String> = h.dropped.iter().map(|c| format!("dropped {c}")).collect();
    for conn in conns {
        transcript.push(format!("{conn}: {:?}", h.output(conn)));
    }
    transcript
}

/// The driver's own table of connections is keyed by the engine's seed:
/// at shutdown it drops the connections that did not take their goodbye
/// in the order that table gives, so with one seed that order, and everything the
/// runtime sees, is the same in every run (with a per-process random key
/// the two transcripts differ).
#[test]
fn one_seed_gives_one_transcript_through_the_driver() {
    let first = shutdown_transcript(7);
    assert!(first.iter().filter(|l| l.starts_with("dropped")).count() >= 16);
    assert_eq!(first, shutdown_transcript(7));
}

/// A runtime clock that steps back (the simulator's clock faults): the
/// driver takes an earlier `now` as the latest one it was given, so what it
/// schedules never moves back, and the engine's deadlines stay put.
#[test]
fn a_clock_that_steps_back_moves_nothing_back() {
    let mut h = Harness::plain();
    h.advance(Duration::from_secs(100));
    let latest = h.now;
    let a = h.accept();
    h.read(a, &connect("a", None, true));
    let deadline = h.driver.poll_timeout();
    // The clock steps back 90 s.
    h.now = Instant::from_millis(10_000);
    let b = h.accept();
    assert_eq!(h.driver.now(), latest);
    assert_eq!(h.driver.broker().now(), latest);
    assert!(h.driver.poll_timeout() >= deadline, "a deadline moved back");
    let error = io::Error::other("too many open files");
    let resume = h.driver.handle_accept_error(h.now, 0, &error);
    assert_eq!(resume, latest + ACCEPT_BACKOFF.0);
    // And forward again, far (a machine resumed): every deadline passed is
    // handled in one call; the unanswered connection timed out.
    h.now = latest + Duration::from_secs(7_200);
    h.driver.handle_timeout(h.now);
    h.drain();
    assert!(h.driver.interest(b).close || h.driver.interest(b).shutdown_write);
    assert_eq!(h.driver.now(), h.now);
}
