//! Connections and the two hot loops: publishing and subscribing.
//!
//! Everything runs on one `current_thread` runtime inside a `LocalSet`, so
//! shared state is `Rc`/`Cell`/`RefCell`: no atomics or locks on the hot path.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

use crate::stats::{self, Receiver, STAMP_LEN, Stats, now_ns};
use crate::wire::{self, Packet, kind};

/// Read buffer sizes: idle clients (10,000 of them in `conns`) stay small; a
/// busy subscriber's buffer grows until it drains many packets per syscall.
const READ_BUF_MIN: usize = 8 * 1024;
const READ_BUF_MAX: usize = 256 * 1024;
/// Aim for writes of about this many bytes: many packets per syscall.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// A stream of bytes from the broker, decoded in place.
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        ReadBuf {
            buf: vec![0; READ_BUF_MIN],
            start: 0,
            end: 0,
        }
    }

    /// Reads at least one more byte; EOF is an error because no scenario
    /// expects the broker to hang up.
    ///
    /// Cancel-safe: if the future is dropped before the read completes, no
    /// bytes were consumed from the socket.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, s: &mut R) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                // One packet larger than the buffer: grow (rare, setup-sized payloads only).
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = s.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "broker closed the connection",
            ));
        }
        if self.end + n == self.buf.len() && self.buf.len() < READ_BUF_MAX {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        self.end += n;
        Ok(())
    }

    /// The next whole packet already buffered, if any.
    pub fn next_packet(&mut self) -> io::Result<Option<Packet<'_>>> {
        match wire::decode(&self.buf[self.start..self.end]) {
            Ok(Some((p, n))) => {
                self.start += n;
                Ok(Some(p))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

/// One MQTT client connection with its reusable buffers.
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes received and not yet decoded.
    pub rd: ReadBuf,
    /// Packets encoded and not yet written.
    pub wbuf: Vec<u8>,
}

impl Conn {
    /// Connects, sends CONNECT and waits for a successful CONNACK.
    pub async fn open(addr: &str, client_id: &str, keep_alive: u16) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        // Batching is done by us; Nagle would only add latency on top.
        stream.set_nodelay(true)?;
        let mut c = Conn {
            stream,
            rd: ReadBuf::new(),
            wbuf: Vec::with_capacity(WRITE_BATCH_BYTES * 2),
        };
        wire::connect(&mut c.wbuf, client_id.as_bytes(), keep_alive);
        c.flush().await?;
        loop {
            c.rd.fill(&mut c.stream).await?;
            if let Some(p) = c.rd.next_packet()? {
                return match p {
                    Packet::Connack { code: 0, .. } => Ok(c),
                    other => Err(io::Error::other(format!(
                        "expected CONNACK 0, got {other:?}"
                    ))),
                };
            }
        }
    }

    /// Writes everything encoded so far.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }

    /// Subscribes to `filters`, `per_packet` filters per SUBSCRIBE, all
    /// packets in one write, and waits for every SUBACK.
    pub async fn subscribe(
        &mut self,
        filters: &[Vec<u8>],
        qos: u8,
        per_packet: usize,
    ) -> io::Result<()> {
        let mut pid = 0u16;
        for chunk in filters.chunks(per_packet.max(1)) {
            pid = pid.wrapping_add(1).max(1);
            wire::subscribe(&mut self.wbuf, pid, chunk.iter().map(|f| f.as_slice()), qos);
        }
        self.flush().await?;
        let mut pending = filters.chunks(per_packet.max(1)).count();
        while pending > 0 {
            // Drain what is buffered before reading more, so anything after
            // the last SUBACK (retained messages) stays for the subscriber loop.
            while pending > 0 {
                match self.rd.next_packet()? {
                    Some(Packet::Suback { codes, .. }) => {
                        if codes.contains(&0x80) {
                            return Err(io::Error::other("broker refused a subscription (0x80)"));
                        }
                        pending -= 1;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            if pending > 0 {
                self.rd.fill(&mut self.stream).await?;
            }
        }
        Ok(())
    }

    /// Sends PINGREQ and waits for PINGRESP. Brokers handle a connection's
    /// packets in order, so this is a barrier: everything sent before it was processed.
    pub async fn ping_barrier(&mut self) -> io::Result<()> {
        wire::pingreq(&mut self.wbuf);
        self.flush().await?;
        loop {
            while let Some(p) = self.rd.next_packet()? {
                if p == Packet::Pingresp {
                    return Ok(());
                }
            }
            self.rd.fill(&mut self.stream).await?;
        }
    }
}

/// State shared by every task of one scenario run.
pub struct Run {
    /// Set when publishers must stop starting new messages (duration elapsed).
    pub stop: Cell<bool>,
    /// PUBLISH packets written by all publishers.
    pub sent: Cell<u64>,
    /// Publisher tasks that have finished (successfully or not).
    pub pubs_done: Cell<usize>,
    /// End-to-end window: deliveries not yet seen by subscribers that
    /// publishers may have outstanding; 0 means open loop.
    pub window: Cell<u64>,
    /// Woken by subscribers after each read batch (publishers wait on it
    /// when the end-to-end window is full).
    pub progress: Notify,
    /// Paced publishers: how late each batch went out relative to schedule (ns).
    pub send_lag: RefCell<Histogram<u64>>,
    /// Times a publisher sent anyway after waiting [`STALL`] on a full window.
    pub stalls: Cell<u64>,
    /// Deliveries expected per sent message (number of matching subscribers).
    pub fanout: Cell<u64>,
    /// If set, the expected delivery count regardless of `sent` (retained).
    pub expected_fixed: Cell<Option<u64>>,
    /// When measurement started (ns since process start).
    pub t_start: Cell<u64>,
    /// Generator and broker CPU at `t_start`.
    pub cpu_start: Cell<(Option<u64>, Option<u64>)>,
    /// What subscribers received.
    pub stats: RefCell<Option<Stats>>,
    /// Scenario-specific measurements.
    pub extra: RefCell<BTreeMap<String, f64>>,
    /// First few client errors.
    pub errors: RefCell<Vec<String>>,
}

impl Run {
    /// A fresh run with empty statistics.
    pub fn new() -> Rc<Self> {
        Rc::new(Run {
            stop: Cell::new(false),
            sent: Cell::new(0),
            pubs_done: Cell::new(0),
            window: Cell::new(0),
            progress: Notify::new(),
            send_lag: RefCell::new(stats::histogram()),
            stalls: Cell::new(0),
            fanout: Cell::new(1),
            expected_fixed: Cell::new(None),
            t_start: Cell::new(0),
            cpu_start: Cell::new((None, None)),
            stats: RefCell::new(Some(Stats::new())),
            extra: RefCell::new(BTreeMap::new()),
            errors: RefCell::new(Vec::new()),
        })
    }

    /// Deliveries the subscribers should see given what was sent so far.
    pub fn expected(&self) -> u64 {
        self.expected_fixed
            .get()
            .unwrap_or(self.sent.get() * self.fanout.get())
    }

    /// Unique deliveries so far.
    pub fn unique(&self) -> u64 {
        self.stats.borrow().as_ref().map_or(0, Stats::unique)
    }

    /// Records a client error (only the first few are kept).
    pub fn error(&self, what: impl std::fmt::Display) {
        let mut e = self.errors.borrow_mut();
        if e.len() < 5 {
            e.push(what.to_string());
        }
    }

    /// Closes the end-to-end window at `--inflight` messages per publisher
    /// per subscriber, unless `--open-loop`. Call after setting `fanout`.
    pub fn close_loop(&self, open_loop: bool, inflight: usize, publishers: usize) {
        let cap = inflight.max(1) as u64 * publishers.max(1) as u64 * self.fanout.get();
        self.window.set(if open_loop { 0 } else { cap });
    }

    /// Records a scenario-specific number.
    pub fn put(&self, key: &str, v: f64) {
        self.extra.borrow_mut().insert(key.to_string(), v);
    }

    /// Marks the start of measurement.
    pub fn start_clock(&self, broker_pid: Option<u32>) {
        self.t_start.set(now_ns());
        self.cpu_start.set((
            stats::cpu_ns(None),
            broker_pid.and_then(|p| stats::cpu_ns(Some(p))),
        ));
    }
}

/// How a publisher chooses each message's topic.
pub enum Topic {
    /// Every message to one topic.
    Fixed(Vec<u8>),
    /// Message `i` goes to `PREFIX/{i / 1000}/{i % 1000}` (distinct topics, for retained).
    Numbered(String),
}

/// What one publisher does.
pub struct PubSpec {
    /// Publisher id stamped into payloads (index into receivers' seen-sets).
    pub id: u32,
    /// Topic choice.
    pub topic: Topic,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// Retain flag on every message.
    pub retain: bool,
    /// Payload size in bytes (at least [`STAMP_LEN`]).
    pub payload: usize,
    /// Unacknowledged QoS 1/2 messages allowed at once.
    pub inflight: usize,
    /// Stop after this many messages (else run until `Run::stop`).
    pub count: Option<u64>,
    /// Messages per second, paced; `None` means as fast as possible.
    pub rate: Option<f64>,
}

fn sleep_until_ns(t: u64) -> tokio::time::Sleep {
    let at = stats::epoch() + Duration::from_nanos(t);
    tokio::time::sleep_until(tokio::time::Instant::from_std(at))
}

/// How long a publisher blocked on the end-to-end window waits for progress
/// before sending anyway: a broker that drops QoS 0 messages would otherwise
/// hold the window shut forever. Each such wait counts as a stall.
const STALL: Duration = Duration::from_millis(100);

/// Publishes per `spec` until done, then waits for outstanding acknowledgements.
/// Returns the connection so a caller can keep using it (e.g. a ping barrier).
///
/// Two windows bound a publisher: `spec.inflight` un-acknowledged QoS 1/2
/// packets (broker acks), and, unless the run is open-loop, the run-wide
/// end-to-end window `Run::window` of deliveries not yet seen by the
/// subscribers. The second keeps a broker that acknowledges on receipt and
/// queues without limit from building a backlog that would turn a throughput
/// test into a test of its queue memory.
pub async fn publish_loop(mut conn: Conn, spec: PubSpec, run: Rc<Run>) -> io::Result<Conn> {
    let mut payload = vec![0u8; spec.payload.max(STAMP_LEN)];
    let mut topic_buf: Vec<u8> = Vec::with_capacity(256);
    if let Topic::Fixed(t) = &spec.topic {
        topic_buf.extend_from_slice(t);
    }
    let packet_len = 8 + topic_buf.len().max(32) + payload.len();
    let batch = (WRITE_BATCH_BYTES / packet_len).clamp(1, 1024) as u64;
    let window = spec.inflight.clamp(1, 65_000);
    let interval_ns = spec.rate.map(|r| 1e9 / r.max(0.001));
    let t0 = now_ns();
    let (mut seq, mut inflight, mut pid) = (0u64, 0usize, 0u16);
    let mut force = false;
    let finished = |seq: u64| run.stop.get() || spec.count.is_some_and(|c| seq >= c);

    loop {
        // Registered before the window is checked, so a delivery between the
        // check and the wait still wakes us.
        let progress = run.progress.notified();
        tokio::pin!(progress);
        progress.as_mut().enable();

        let done = finished(seq);
        let now = now_ns();
        let mut n = 0;
        let mut blocked_e2e = false;
        if !done {
            n = batch;
            if spec.qos > 0 {
                n = n.min((window - inflight) as u64);
            }
            if let Some(c) = spec.count {
                n = n.min(c - seq);
            }
            if let Some(iv) = interval_ns {
                let due = ((now - t0) as f64 / iv) as u64 + 1;
                n = n.min(due.saturating_sub(seq));
            }
            let cap = run.window.get();
            if cap > 0 && n > 0 && !force {
                let outstanding = run.expected().saturating_sub(run.unique());
                let room = cap.saturating_sub(outstanding) / run.fanout.get().max(1);
                if room == 0 {
                    blocked_e2e = true;
                }
                n = n.min(room);
            }
        }
        if n > 0 {
            force = false;
            if let Some(iv) = interval_ns {
                // The stamp is the real send time: tokio's timer is only
                // millisecond-grained and its slack is ours, not the broker's.
                // How far sending fell behind schedule (timer slack, or a
                // window held shut by the broker) is kept apart as send lag.
                let intended = t0 + (seq as f64 * iv) as u64;
                let lag = now.saturating_sub(intended).max(1_000);
                run.send_lag.borrow_mut().saturating_record(lag);
            }
            for _ in 0..n {
                stats::stamp(&mut payload, now, spec.id, seq as u32);
                pid = pid % 65_535 + 1;
                if let Topic::Numbered(prefix) = &spec.topic {
                    topic_buf.clear();
                    let _ = write!(topic_buf, "{prefix}/{}/{}", seq / 1000, seq % 1000);
                }
                wire::publish(
                    &mut conn.wbuf,
                    &topic_buf,
                    spec.qos,
                    spec.retain,
                    pid,
                    &payload,
                );
                seq += 1;
            }
            if spec.qos > 0 {
                inflight += n as usize;
            }
            run.sent.set(run.sent.get() + n);
            conn.flush().await?;
            continue;
        }
        if done && inflight == 0 {
            return Ok(conn);
        }
        let next_due = interval_ns.map_or(0, |iv| t0 + (seq as f64 * iv) as u64);
        let pacing = interval_ns.is_some() && !done && !blocked_e2e;
        tokio::select! {
            r = conn.rd.fill(&mut conn.stream), if inflight > 0 => {
                r?;
                while let Some(p) = conn.rd.next_packet()? {
                    match p {
                        Packet::Puback(_) | Packet::Pubcomp(_) => {
                            inflight = inflight.saturating_sub(1)
                        }
                        Packet::Pubrec(id) => wire::ack(&mut conn.wbuf, kind::PUBREL, id),
                        _ => {}
                    }
                }
                if !conn.wbuf.is_empty() {
                    conn.flush().await?;
                }
            }
            _ = sleep_until_ns(next_due), if pacing && inflight < window => {}
            _ = &mut progress, if blocked_e2e => {}
            _ = tokio::time::sleep(STALL), if blocked_e2e => {
                force = true;
                run.stalls.set(run.stalls.get() + 1);
            }
            // Unreachable by construction (not done ⇒ some wait applies); a
            // yield keeps a mistake from becoming a busy hang.
            else => tokio::task::yield_now().await,
        }
    }
}

/// Receives forever, acknowledging QoS 1/2 and accounting every delivery.
/// Ends only on error; the scenario drops it when done.
pub async fn subscribe_loop(mut conn: Conn, mut rx: Receiver, run: Rc<Run>) -> io::Result<()> {
    loop {
        // One clock read per read batch: the packets arrived together.
        let now = now_ns();
        {
            let mut st = run.stats.borrow_mut();
            let st = st.as_mut().expect("stats live for the whole run");
            while let Some(p) = conn.rd.next_packet()? {
                match p {
                    Packet::Publish {
                        qos, pid, payload, ..
                    } => {
                        rx.record(payload, now, st);
                        match qos {
                            1 => wire::ack(&mut conn.wbuf, kind::PUBACK, pid),
                            2 => wire::ack(&mut conn.wbuf, kind::PUBREC, pid),
                            _ => {}
                        }
                    }
                    Packet::Pubrel(pid) => wire::ack(&mut conn.wbuf, kind::PUBCOMP, pid),
                    _ => {}
                }
            }
        }
        run.progress.notify_waiters();
        if !conn.wbuf.is_empty() {
            conn.flush().await?;
        }
        conn.rd.fill(&mut conn.stream).await?;
    }
}

/// What one request-response client does (see `scenarios::reqres`).
pub struct Request {
    /// Publisher id stamped into payloads.
    pub id: u32,
    /// Its own topic.
    pub topic: Vec<u8>,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// Payload size in bytes (at least [`STAMP_LEN`]).
    pub payload: usize,
    /// It is subscribed to its own topic: each message also comes back.
    pub subscribed: bool,
    /// Stop after this many messages (else run until `Run::stop`).
    pub count: Option<u64>,
}

/// Publishes one message, waits for its acknowledgement (PUBACK, or
/// PUBCOMP at QoS 2) and, when subscribed, for its own copy, then the next:
/// no batching anywhere, as a device that reports and waits does. Each
/// finished round counts as one delivery; latency is the round's time.
pub async fn request_loop(mut conn: Conn, req: Request, run: Rc<Run>) -> io::Result<()> {
    let mut payload = vec![0u8; req.payload.max(STAMP_LEN)];
    let (mut seq, mut pid) = (0u32, 0u16);
    loop {
        if run.stop.get() || req.count.is_some_and(|c| u64::from(seq) >= c) {
            return Ok(());
        }
        let sent_at = now_ns();
        stats::stamp(&mut payload, sent_at, req.id, seq);
        pid = pid % 65_535 + 1;
        wire::publish(&mut conn.wbuf, &req.topic, req.qos, false, pid, &payload);
        conn.flush().await?;
        run.sent.set(run.sent.get() + 1);
        let (mut acked, mut delivered) = (req.qos == 0, !req.subscribed);
        let mut duplicates = 0;
        loop {
            while let Some(p) = conn.rd.next_packet()? {
                match p {
                    Packet::Puback(id) if req.qos == 1 && id == pid => acked = true,
                    Packet::Pubcomp(id) if req.qos == 2 && id == pid => acked = true,
                    Packet::Pubrec(id) => wire::ack(&mut conn.wbuf, kind::PUBREL, id),
                    Packet::Publish {
                        qos,
                        pid: theirs,
                        payload: body,
                        ..
                    } => {
                        let ours = stats::read_stamp(body)
                            .is_some_and(|(_, p, s)| p == req.id && s == seq);
                        if ours && !delivered {
                            delivered = true;
                        } else {
                            duplicates += 1;
                        }
                        match qos {
                            1 => wire::ack(&mut conn.wbuf, kind::PUBACK, theirs),
                            2 => wire::ack(&mut conn.wbuf, kind::PUBREC, theirs),
                            _ => {}
                        }
                    }
                    Packet::Pubrel(id) => wire::ack(&mut conn.wbuf, kind::PUBCOMP, id),
                    _ => {}
                }
            }
            if !conn.wbuf.is_empty() {
                conn.flush().await?;
            }
            if acked && delivered {
                break;
            }
            conn.rd.fill(&mut conn.stream).await?;
        }
        let now = now_ns();
        let mut st = run.stats.borrow_mut();
        let st = st.as_mut().expect("stats live for the whole run");
        st.received += 1 + duplicates;
        st.duplicates += duplicates;
        if st.first_recv == 0 {
            st.first_recv = now;
        }
        st.last_recv = now;
        st.hist
            .saturating_record(now.saturating_sub(sent_at).max(1_000));
        seq = seq.wrapping_add(1);
    }
}

/// Spawns a request-response client; its end (either way) is counted in
/// `run.pubs_done`.
pub fn spawn_requester(conn: Conn, req: Request, run: &Rc<Run>) {
    let run = run.clone();
    tokio::task::spawn_local(async move {
        if let Err(e) = request_loop(conn, req, run.clone()).await {
            run.error(format_args!("client: {e}"));
        }
        run.pubs_done.set(run.pubs_done.get() + 1);
    });
}

/// Opens `n` connections named `{prefix}{i}`, at most `concurrency` at once.
/// Returns, in order, each connection and how long its CONNECT took (ns).
pub async fn open_many(
    addr: &str,
    prefix: &str,
    n: usize,
    concurrency: usize,
    keep_alive: u16,
) -> Vec<io::Result<(Conn, u64)>> {
    let sem = Rc::new(Semaphore::new(concurrency.max(1)));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let sem = sem.clone();
            let addr = addr.to_string();
            let id = format!("{prefix}{i}");
            tokio::task::spawn_local(async move {
                let _permit = sem.acquire().await.expect("semaphore never closed");
                let t = now_ns();
                let c = Conn::open(&addr, &id, keep_alive).await?;
                Ok((c, now_ns() - t))
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await.unwrap_or_else(|e| Err(io::Error::other(e))));
    }
    out
}

/// Like [`open_many`] but fails on the first error.
pub async fn open_all(
    addr: &str,
    prefix: &str,
    n: usize,
    keep_alive: u16,
) -> io::Result<Vec<Conn>> {
    open_many(addr, prefix, n, 256, keep_alive)
        .await
        .into_iter()
        .map(|r| r.map(|(c, _)| c))
        .collect()
}

/// Spawns a publisher; its end (either way) is counted in `run.pubs_done`.
pub fn spawn_publisher(conn: Conn, spec: PubSpec, run: &Rc<Run>) {
    let run = run.clone();
    tokio::task::spawn_local(async move {
        if let Err(e) = publish_loop(conn, spec, run.clone()).await {
            run.error(format_args!("publisher: {e}"));
        }
        run.pubs_done.set(run.pubs_done.get() + 1);
    });
}

/// Spawns a subscriber loop; errors are recorded in the run.
pub fn spawn_subscriber(conn: Conn, rx: Receiver, run: &Rc<Run>) {
    let run = run.clone();
    tokio::task::spawn_local(async move {
        if let Err(e) = subscribe_loop(conn, rx, run.clone()).await {
            run.error(format_args!("subscriber: {e}"));
        }
    });
}
