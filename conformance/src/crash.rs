//! The crash test: a broker executable with `--data-dir` and `sync`
//! durability is killed with SIGKILL at random moments while QoS 1 and
//! QoS 2 publishers and persistent QoS 2 subscribers keep working, and
//! restarted each time. The clients behave as MQTT 3.1.1 says a client
//! with a persistent session must: they keep their state across the
//! broker's restarts and resend what is unfinished (PUBLISH with DUP,
//! PUBREL).
//!
//! Counted at the end, once every flow has finished:
//!
//! - **lost**: a message the broker acknowledged (PUBACK, PUBREC) that a
//!   subscriber never received;
//! - **duplicated at QoS 2**: a QoS 2 message a subscriber's application
//!   received twice (subscribers receive as MQTT's "method A" does: the
//!   message is passed on at PUBLISH, its packet identifier held until
//!   PUBREL, so a re-sent PUBLISH under it is known);
//! - **reused packet ids**: a PUBLISH under an identifier a subscriber
//!   still held for another message.
//!
//! All three must be 0. The number of kills is `ROOST_CRASH_KILLS`
//! (default 10), the seed of the kill moments `ROOST_CRASH_SEED`.
//! [`crash_tests!`](crate::crash_tests) declares the test for a runtime's
//! test file.

use crate::attacks::{Binary, Broker};
use crate::wire::{Body, Connect, Publish, Version, frame, frame_len};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Messages each publisher keeps unacknowledged at once.
const WINDOW: usize = 16;
/// How long the last phase may take to finish every flow.
const SETTLE: Duration = Duration::from_secs(20);

/// What a crash run measured.
#[derive(Clone, Debug, Default)]
pub struct CrashReport {
    /// Times the broker was killed with SIGKILL.
    pub kills: u32,
    /// Messages the broker acknowledged to a publisher (QoS 1, QoS 2).
    pub acknowledged: (usize, usize),
    /// Acknowledged messages some subscriber never received.
    pub lost: usize,
    /// QoS 2 messages a subscriber's application received more than once.
    pub duplicated_qos2: usize,
    /// PUBLISH packets under an identifier a subscriber still held for
    /// another message.
    pub reused_packet_ids: u32,
    /// Reconnects of a subscriber that found its session gone.
    pub sessions_lost: u32,
    /// QoS 1 messages received more than once (allowed).
    pub duplicated_qos1: usize,
    /// Restarts: the slowest, and the mean, until the listener was up.
    pub restart_max: Duration,
    /// See `restart_max`.
    pub restart_mean: Duration,
    /// Whether every flow finished after the last restart.
    pub settled: bool,
}

impl CrashReport {
    /// Whether the broker kept every promise.
    pub fn passed(&self) -> bool {
        self.settled
            && self.lost == 0
            && self.duplicated_qos2 == 0
            && self.reused_packet_ids == 0
            && self.sessions_lost == 0
    }
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} SIGKILLs; acknowledged QoS 1 {} / QoS 2 {}; lost {}; duplicated at QoS 2 {}; \
             reused packet ids {}; sessions lost {}; (QoS 1 duplicates {}); restart max {} ms, mean {} ms; {}",
            self.kills,
            self.acknowledged.0,
            self.acknowledged.1,
            self.lost,
            self.duplicated_qos2,
            self.reused_packet_ids,
            self.sessions_lost,
            self.duplicated_qos1,
            self.restart_max.as_millis(),
            self.restart_mean.as_millis(),
            if self.settled {
                "every flow finished"
            } else {
                "FLOWS LEFT UNFINISHED"
            }
        )
    }
}

/// One MQTT 3.1.1 connection, read without blocking.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A packet: first byte and body.
struct Packet {
    first: u8,
    body: Vec<u8>,
}

impl Packet {
    fn pid(&self) -> u16 {
        u16::from_be_bytes([self.body[0], self.body[1]])
    }
}

impl Conn {
    /// Connects with a persistent session; returns it with the CONNACK's
    /// session-present flag, or `None` if the broker is not there.
    fn open(addr: SocketAddr, client_id: &str) -> Option<(Conn, bool)> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
        stream.set_nodelay(true).ok()?;
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
        };
        let mut connect = Connect::new(Version::V311, client_id);
        connect.clean = false;
        connect.keep_alive = 0;
        conn.send(&connect.encode());
        let deadline = Instant::now() + Duration::from_secs(10);
        conn.stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .ok()?;
        loop {
            if let Some(p) = conn.next() {
                conn.stream.set_nonblocking(true).ok()?;
                return (p.first >> 4 == 2 && p.body.get(1) == Some(&0))
                    .then(|| p.body[0] & 1 == 1)
                    .map(|present| (conn, present));
            }
            if Instant::now() > deadline || !conn.fill() {
                return None;
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        // A write to a killed broker fails; the flow is redone on reconnect.
        let _ = self.stream.set_nonblocking(false);
        let _ = self.stream.write_all(bytes);
        let _ = self.stream.set_nonblocking(true);
    }

    fn ack(&mut self, kind: u8, pid: u16) {
        let first = (kind << 4) | if kind == 6 { 0x02 } else { 0 };
        self.send(&frame(first, &Body::new().u16(pid)));
    }

    /// Reads what is there; false once the connection is over.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => true,
            Err(_) => false,
        }
    }

    fn next(&mut self) -> Option<Packet> {
        let (header, total) = frame_len(&self.buf).ok()??;
        let packet = Packet {
            first: self.buf[0],
            body: self.buf[header..total].to_vec(),
        };
        self.buf.drain(..total);
        Some(packet)
    }
}

/// A publisher at one QoS; its state outlives the broker's restarts.
struct Publisher {
    client_id: String,
    topic: String,
    qos: u8,
    conn: Option<Conn>,
    next_pid: u16,
    sent: u64,
    /// Unfinished: payload and whether PUBREC came.
    outstanding: BTreeMap<u16, (Vec<u8>, bool)>,
    acknowledged: Vec<Vec<u8>>,
}

impl Publisher {
    fn new(client_id: &str, qos: u8) -> Publisher {
        Publisher {
            client_id: client_id.to_owned(),
            topic: format!("crash/{client_id}"),
            qos,
            conn: None,
            next_pid: 1,
            sent: 0,
            outstanding: BTreeMap::new(),
            acknowledged: Vec::new(),
        }
    }

    fn connect(&mut self, addr: SocketAddr) -> bool {
        let Some((mut conn, _)) = Conn::open(addr, &self.client_id) else {
            return false;
        };
        // Everything unfinished again, in order [MQTT-4.4.0-1].
        for (&pid, (payload, released)) in &self.outstanding {
            if *released {
                conn.ack(6, pid);
            } else {
                let mut p = Publish::new(&self.topic, self.qos, payload);
                p.pid = Some(pid);
                p.dup = true;
                conn.send(&p.encode(Version::V311));
            }
        }
        self.conn = Some(conn);
        true
    }

    fn publish_more(&mut self) {
        let Some(conn) = &mut self.conn else { return };
        while self.outstanding.len() < WINDOW {
            let pid = self.next_pid;
            self.next_pid = if pid == u16::MAX { 1 } else { pid + 1 };
            if self.outstanding.contains_key(&pid) {
                return;
            }
            self.sent += 1;
            let payload = format!("{}-{}", self.client_id, self.sent).into_bytes();
            let mut p = Publish::new(&self.topic, self.qos, &payload);
            p.pid = Some(pid);
            conn.send(&p.encode(Version::V311));
            self.outstanding.insert(pid, (payload, false));
        }
    }

    /// Handles what arrived; false if the connection is over.
    fn poll(&mut self) -> bool {
        let Some(conn) = &mut self.conn else {
            return false;
        };
        let alive = conn.fill();
        while let Some(p) = conn.next() {
            let pid = p.pid();
            match p.first >> 4 {
                4 => {
                    if let Some((payload, _)) = self.outstanding.remove(&pid) {
                        self.acknowledged.push(payload);
                    }
                }
                5 => {
                    if let Some((payload, released)) = self.outstanding.get_mut(&pid) {
                        if !*released {
                            *released = true;
                            self.acknowledged.push(payload.clone());
                        }
                        conn.ack(6, pid);
                    }
                }
                7 => {
                    self.outstanding.remove(&pid);
                }
                _ => {}
            }
        }
        if !alive {
            self.conn = None;
        }
        alive
    }
}

/// A persistent QoS 2 subscriber to `crash/#`.
struct Subscriber {
    client_id: String,
    conn: Option<Conn>,
    held: HashMap<u16, Vec<u8>>,
    /// Times the application received each payload, and its QoS.
    received: HashMap<Vec<u8>, (u8, usize)>,
    reused: u32,
    /// Reconnects that found no session (it was stored before any kill).
    sessions_lost: u32,
    last_message: Instant,
}

impl Subscriber {
    fn connect(&mut self, addr: SocketAddr, subscribe: bool) -> bool {
        let Some((mut conn, present)) = Conn::open(addr, &self.client_id) else {
            return false;
        };
        if subscribe {
            let body = Body::new().u16(1).str("crash/#").u8(2);
            conn.send(&frame(0x82, &body));
        } else if !present {
            // The session was stored before the first kill: it must be back.
            self.sessions_lost += 1;
        }
        self.conn = Some(conn);
        true
    }

    fn poll(&mut self) -> bool {
        let Some(conn) = &mut self.conn else {
            return false;
        };
        let alive = conn.fill();
        while let Some(p) = conn.next() {
            match p.first >> 4 {
                3 => {
                    let qos = (p.first >> 1) & 3;
                    let topic_len = u16::from_be_bytes([p.body[0], p.body[1]]);
                    let at = 2 + usize::from(topic_len);
                    let pid = (qos > 0).then(|| u16::from_be_bytes([p.body[at], p.body[at + 1]]));
                    let payload = p.body[at + if qos > 0 { 2 } else { 0 }..].to_vec();
                    self.last_message = Instant::now();
                    match (qos, pid) {
                        (2, Some(pid)) => {
                            match self.held.get(&pid) {
                                Some(known) if *known != payload => self.reused += 1,
                                Some(_) => {}
                                None => {
                                    self.held.insert(pid, payload.clone());
                                    self.received.entry(payload).or_insert((2, 0)).1 += 1;
                                }
                            }
                            conn.ack(5, pid);
                        }
                        (1, Some(pid)) => {
                            self.received.entry(payload).or_insert((1, 0)).1 += 1;
                            conn.ack(4, pid);
                        }
                        _ => {
                            self.received.entry(payload).or_insert((0, 0)).1 += 1;
                        }
                    }
                }
                6 => {
                    let pid = p.pid();
                    self.held.remove(&pid);
                    conn.ack(7, pid);
                }
                _ => {}
            }
        }
        if !alive {
            self.conn = None;
        }
        alive
    }
}

/// splitmix64, for the kill moments.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

fn start(bin: &Binary, dir: &Path) -> Result<(Broker, Duration), String> {
    let toml = "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
                allow_anonymous = true\n\n[persistence]\ndurability = \"sync\"\n";
    let config = dir.join("roost.toml");
    std::fs::write(&config, toml).map_err(|e| format!("write {}: {e}", config.display()))?;
    let started = Instant::now();
    let broker = bin.spawn(
        &[
            "--config".into(),
            config.into_os_string(),
            "--data-dir".into(),
            dir.join("data").into_os_string(),
        ],
        1,
    )?;
    Ok((broker, started.elapsed()))
}

/// Runs the crash test against `bin`: `kills` SIGKILLs, their moments
/// drawn from `seed`.
pub fn run(bin: &Binary, kills: u32, seed: u64) -> Result<CrashReport, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let mut rng = Rng(seed);
    let mut report = CrashReport::default();
    let mut restarts = Vec::new();
    let mut publishers = [Publisher::new("q1", 1), Publisher::new("q2", 2)];
    let mut subscribers: Vec<Subscriber> = ["sub-a", "sub-b"]
        .iter()
        .map(|id| Subscriber {
            client_id: (*id).to_owned(),
            conn: None,
            held: HashMap::new(),
            received: HashMap::new(),
            reused: 0,
            sessions_lost: 0,
            last_message: Instant::now(),
        })
        .collect();

    // The subscriptions are stored before anything is published: a
    // QoS 1 probe is acknowledged only once the subscribers' copies (and
    // so their sessions) are durable.
    let (mut broker, _) = start(bin, dir.path())?;
    for s in &mut subscribers {
        if !s.connect(broker.addr(0), true) {
            return Err(format!("{}: cannot connect", s.client_id));
        }
    }
    let mut probe = Publisher::new("probe", 1);
    if !probe.connect(broker.addr(0)) {
        return Err("probe: cannot connect".into());
    }
    probe.publish_more();
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe.acknowledged.len() < WINDOW {
        probe.poll();
        for s in &mut subscribers {
            s.poll();
        }
        if Instant::now() > deadline {
            return Err("the probe was not acknowledged".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for p in &mut publishers {
        if !p.connect(broker.addr(0)) {
            return Err(format!("{}: cannot connect", p.client_id));
        }
    }

    for _ in 0..kills {
        // Traffic for a random while, then SIGKILL in the middle of it.
        let until = Instant::now() + Duration::from_millis(20 + rng.below(280));
        while Instant::now() < until {
            for p in &mut publishers {
                p.publish_more();
                p.poll();
            }
            for s in &mut subscribers {
                s.poll();
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        drop(broker);
        report.kills += 1;
        // What the broker wrote before it died is still on its way.
        for p in &mut publishers {
            while p.poll() {}
        }
        for s in &mut subscribers {
            while s.poll() {}
        }
        let (next, took) = start(bin, dir.path())?;
        broker = next;
        restarts.push(took);
        for s in &mut subscribers {
            s.connect(broker.addr(0), false);
        }
        for p in &mut publishers {
            p.connect(broker.addr(0));
        }
    }

    // No more kills: every flow finishes, and nothing more arrives.
    let deadline = Instant::now() + SETTLE;
    loop {
        for p in &mut publishers {
            p.poll();
        }
        for s in &mut subscribers {
            s.poll();
        }
        let quiet = subscribers
            .iter()
            .all(|s| s.last_message.elapsed() > Duration::from_millis(500));
        if publishers.iter().all(|p| p.outstanding.is_empty()) && quiet {
            report.settled = true;
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(broker);

    report.acknowledged = (
        publishers[0].acknowledged.len(),
        publishers[1].acknowledged.len(),
    );
    for s in &subscribers {
        report.reused_packet_ids += s.reused;
        report.sessions_lost += s.sessions_lost;
        for p in &publishers {
            for payload in &p.acknowledged {
                match s.received.get(payload) {
                    None => report.lost += 1,
                    Some((2, n)) if *n > 1 => report.duplicated_qos2 += 1,
                    Some((1, n)) if *n > 1 => report.duplicated_qos1 += 1,
                    Some(_) => {}
                }
            }
        }
    }
    report.restart_max = restarts.iter().copied().max().unwrap_or_default();
    report.restart_mean = restarts
        .iter()
        .sum::<Duration>()
        .checked_div(u32::try_from(restarts.len()).unwrap_or(u32::MAX))
        .unwrap_or_default();
    Ok(report)
}

/// For tests: runs [`run`] with `ROOST_CRASH_KILLS` kills (default 10)
/// and `ROOST_CRASH_SEED` (default a fixed one), prints the report, and
/// panics unless it passed.
pub fn run_blocking(bin: &Binary) {
    let _serial = crate::attacks::SERIAL
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let kills = std::env::var("ROOST_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed = std::env::var("ROOST_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xC0FFEE);
    let report = run(bin, kills, seed).unwrap_or_else(|e| panic!("[{}] {e}", bin.name()));
    eprintln!("[{}] crash test, seed {seed}: {report}", bin.name());
    assert!(report.passed(), "[{}] seed {seed}: {report}", bin.name());
}

/// Declares the crash test (`crash_recovery`) against the broker
/// executable at `$bin` (usually `env!("CARGO_BIN_EXE_roost")`).
#[macro_export]
macro_rules! crash_tests {
    ($bin:expr) => {
        #[test]
        fn crash_recovery() {
            $crate::crash::run_blocking(&$crate::attacks::Binary::new($bin));
        }
    };
}
