//! Attacks on the broker's memory and time: WebSocket pings, password
//! checks, trickled packets, pipelined QoS 1/2 publishes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Binary, Login, Report, mib, ms, passwd_line, probe, temp_dir, toml_path};
use crate::client::RecvError;
use crate::wire::{Packet, Publish, Version, kind, put_varint};

/// A plain TCP listener on loopback that lets anonymous clients in
/// (listeners written in a file refuse them unless told).
const PLAIN_TCP: &str =
    "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\n";

/// How long each flood runs.
const FLOOD_TIME: Duration = Duration::from_secs(3);
/// The latency bound of a probe CONNECT during a flood.
const PROBE_BOUND: Duration = Duration::from_millis(100);

/// Reports a setup problem (the broker would not start, a file could not be
/// written) as a violation: an attack that could not run did not pass.
macro_rules! setup {
    ($r:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => {
                $r.violate(format!("setup: {e}"));
                return $r;
            }
        }
    };
}
pub(super) use setup;

// ---------------------------------------------------------------------------
// 1. WebSocket ping flood.

/// A client sends WebSocket pings as fast as it can for 3 s and never reads
/// the pongs: once without and once after an MQTT CONNECT on that
/// connection. A probe CONNECT on plain TCP runs every 200 ms meanwhile.
pub(super) async fn ws_ping_flood(bin: &Binary) -> Report {
    let mut r = Report::new(
        "ws-ping-flood",
        format!(
            "a WebSocket client sends 125-byte pings as fast as it can for {} s and never \
             reads (before, then after, an MQTT CONNECT on it): broker peak RSS < 100 MiB \
             (killed past 300 MiB), and every plain-TCP probe CONNECT made during the \
             flood (one each 200 ms) gets its CONNACK within {}",
            FLOOD_TIME.as_secs(),
            ms(PROBE_BOUND)
        ),
    );
    let dir = setup!(r, temp_dir());
    let toml = format!(
        "{PLAIN_TCP}[[listener]]\nprotocol = \"ws\"\nbind = \"127.0.0.1:0\"\n\
         ws_path = \"/mqtt\"\nallow_anonymous = true\n[sys]\ninterval_secs = 0\n"
    );
    let broker = setup!(r, bin.start(dir.path(), &toml, 2));
    let tcp_addr = setup!(r, broker.addr_of("tcp").ok_or("no tcp listener in the log"));
    let ws_addr = setup!(r, broker.addr_of("ws").ok_or("no ws listener in the log"));
    let watch = broker.watch_memory();
    let mut worst = Duration::ZERO;
    let mut answered = 0;
    let mut late = 0;
    for after_connect in [false, true] {
        let mode = if after_connect {
            "after CONNECT"
        } else {
            "before CONNECT"
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flood = tokio::spawn(ping_flood(ws_addr, after_connect, stop.clone()));
        let end = Instant::now() + FLOOD_TIME;
        // Let the flood fill the socket buffers before the first probe.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while Instant::now() < end && !watch.tripped() {
            match probe(tcp_addr, "ws-probe", None, Duration::from_secs(2)).await {
                Ok((took, 0)) => {
                    answered += 1;
                    worst = worst.max(took);
                    if took > PROBE_BOUND {
                        late += 1;
                    }
                }
                Ok((_, code)) => r.violate(format!("{mode}: probe refused with 0x{code:02x}")),
                Err(e) => r.violate(format!("{mode}: probe unanswered: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop.store(true, Ordering::Relaxed);
        match flood.await {
            Ok(Ok(f)) => r.measure(format!(
                "{mode}: {} pings ({}) written in {:.1} s; {}",
                f.pings,
                mib(f.pings * PING_FRAME_LEN as u64 / 1024),
                f.elapsed.as_secs_f64(),
                f.ended
            )),
            Ok(Err(e)) => r.violate(format!("{mode}: the flood could not start: {e}")),
            Err(e) => r.violate(format!("{mode}: flood task: {e}")),
        }
        if watch.tripped() {
            break;
        }
    }
    let mem = watch.finish();
    r.memory(mem);
    r.measure(format!(
        "{answered} probes answered, slowest CONNACK {}, {late} over {}",
        ms(worst),
        ms(PROBE_BOUND)
    ));
    r.check(late == 0, || {
        format!(
            "{late} probe CONNACKs took longer than {} (slowest {})",
            ms(PROBE_BOUND),
            ms(worst)
        )
    });
    r.check(answered > 0 || mem.tripped, || {
        "no probe was answered".into()
    });
    r
}

/// Length of one masked 125-byte ping frame.
const PING_FRAME_LEN: usize = 2 + 4 + 125;

/// What one ping flood did.
struct PingFlood {
    pings: u64,
    elapsed: Duration,
    ended: String,
}

/// A masked client frame (`opcode` with FIN set) carrying `payload`
/// (at most 125 bytes).
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Upgrades a TCP connection to WebSocket at `/mqtt` by hand.
async fn ws_upgrade(addr: SocketAddr) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let request = format!(
        "GET /mqtt HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write upgrade: {e}"))?;
    let mut head = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut b = [0u8; 1];
        match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
            Ok(Ok(1)) => head.push(b[0]),
            Ok(Ok(_)) => return Err("closed during the upgrade".into()),
            Ok(Err(e)) => return Err(format!("read upgrade: {e}")),
            Err(_) => return Err("no upgrade response in 5 s".into()),
        }
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!(
            "upgrade refused: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(s)
}

/// Sends pings on a fresh WebSocket connection until `stop` or
/// [`FLOOD_TIME`], never reading. Writes whole frames only (a write that
/// would block is retried, not abandoned midway), so the broker never sees
/// a torn frame it could close us for.
async fn ping_flood(
    addr: SocketAddr,
    after_connect: bool,
    stop: Arc<AtomicBool>,
) -> Result<PingFlood, String> {
    let mut s = ws_upgrade(addr).await?;
    if after_connect {
        let connect = Login::new(Version::V311, "ws-flooder").encode();
        s.write_all(&ws_frame(0x2, &connect))
            .await
            .map_err(|e| format!("write CONNECT: {e}"))?;
        // The CONNACK: one binary frame, 0x82 0x04 0x20 0x02 0x00 0x00.
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while got.len() < 6 {
            let mut b = [0u8; 64];
            match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&b[..n]),
                _ => return Err("no CONNACK over WebSocket".into()),
            }
        }
        if got[2..6] != [0x20, 0x02, 0x00, 0x00] {
            return Err(format!("CONNACK frame {:02x?}", &got[..6]));
        }
    }
    let frame = ws_frame(0x9, &[b'p'; 125]);
    let batch: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 512)
        .collect();
    let start = Instant::now();
    let mut written: u64 = 0;
    let mut pos = 0;
    let ended = loop {
        if stop.load(Ordering::Relaxed) || start.elapsed() >= FLOOD_TIME {
            break "still open at the end (the broker kept reading)".to_owned();
        }
        // A write that cannot proceed is cancelled before it writes
        // anything (tokio's write is cancel-safe), so `pos` stays exact.
        match tokio::time::timeout(Duration::from_millis(50), s.write(&batch[pos..])).await {
            Ok(Ok(0)) => break "the broker closed the connection".to_owned(),
            Ok(Ok(n)) => {
                written += n as u64;
                pos = (pos + n) % batch.len();
            }
            Ok(Err(e)) => break format!("the broker closed the connection ({e})"),
            Err(_) => {}
        }
    };
    Ok(PingFlood {
        pings: written / PING_FRAME_LEN as u64,
        elapsed: start.elapsed(),
        ended,
    })
}

// ---------------------------------------------------------------------------
// 2. Password-check flood.

/// Wrong-password CONNECTs in the flood.
const AUTH_FLOOD: usize = 200;
/// Password checks the broker may run at once plus those it may queue
/// (2 + 64); the rest must be answered at once.
const AUTH_CAPACITY: usize = 2 + 64;
/// The hash cost of the password file: 2 MiB, one pass. Far cheaper than
/// `roost passwd`'s default (19 MiB, two passes), which makes the attack
/// harder, not easier: 200 checks at once still need 400 MB, while a
/// compliant broker's queue of 64 drains in about a second on a debug
/// build, so the probe's bound tests the queue, not the machine's speed.
const AUTH_M_KIB: u32 = 2 * 1024;
/// How long the probe during the flood may wait for its CONNACK: a
/// compliant broker may have queued it behind up to 64 checks.
const AUTH_PROBE_WAIT: Duration = Duration::from_secs(5);
/// How long after the flood hangs up the right password must be accepted.
const AUTH_RETRY_WITHIN: Duration = Duration::from_secs(15);

/// 200 simultaneous CONNECTs with a wrong password against a listener with
/// a password file, then a client with the right password.
///
/// The rule, given "at most 2 checks at once, 64 queued, the rest refused
/// as busy": the broker owes the flood's excess (at least 134 of 200) a
/// CONNACK at once, so the probe goes only after 134 flood CONNECTs got
/// one (or 2 s passed, which is itself a violation). The probe must then
/// get a CONNACK within 5 s (it may sit behind up to 64 queued checks),
/// accepting it (0x00) or refusing it as busy (0x03) since the queue may
/// still be full. Then the flood's connections close, and a retry every
/// 250 ms (each answered within 5 s) must be accepted within 15 s.
pub(super) async fn auth_flood(bin: &Binary) -> Report {
    let excess = AUTH_FLOOD - AUTH_CAPACITY;
    let mut r = Report::new(
        "auth-flood",
        format!(
            "{AUTH_FLOOD} simultaneous CONNECTs with a wrong password (argon2id m={AUTH_M_KIB} KiB, \
             t=1): broker peak RSS < 100 MiB (killed past 300 MiB); at least {excess} of them \
             answered with a CONNACK within 2 s (the excess over 2 running + 64 queued checks); \
             then a CONNECT with the right password gets a CONNACK within {} (0x00 accepted \
             or 0x03 busy); after the flood disconnects, a retry every 250 ms is accepted \
             (0x00) within {}",
            ms(AUTH_PROBE_WAIT),
            ms(AUTH_RETRY_WITHIN)
        ),
    );
    let dir = setup!(r, temp_dir());
    let passwd = dir.path().join("passwd");
    setup!(
        r,
        std::fs::write(&passwd, passwd_line("alice", "right-pw", AUTH_M_KIB, 1))
    );
    let toml = format!(
        "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\nallow_anonymous = false\n\
         password_file = {}\n[sys]\ninterval_secs = 0\n[limits]\nconnect_timeout_ms = 60000\n",
        toml_path(&passwd)
    );
    let broker = setup!(r, bin.start(dir.path(), &toml, 1));
    let addr = broker.addr(0);
    let watch = broker.watch_memory();

    let answered = Arc::new(AtomicUsize::new(0));
    let close = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..AUTH_FLOOD {
        let (answered, close) = (answered.clone(), close.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("flood-{i}");
            let login = Login::new(Version::V311, &id).user("alice", "wrong-pw");
            let mut c = crate::client::RawClient::open(&super::tcp(addr), Version::V311)
                .await
                .map_err(|e| e.to_string())?;
            c.send(&login.encode()).await.map_err(|e| e.to_string())?;
            // Wait for the answer until told to hang up.
            loop {
                match c.recv(Duration::from_millis(50)).await {
                    Ok(Packet::Connack(a)) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                        return Ok::<_, String>(Some(a.code));
                    }
                    Ok(_) => {}
                    Err(RecvError::Timeout) if close.load(Ordering::Relaxed) => return Ok(None),
                    Err(RecvError::Timeout) => {}
                    // A close is not the answer the rule asks for
                    // (CONNACK 0x03), so it is not counted as one.
                    Err(_) => return Ok(Some(0xff)),
                }
            }
        }));
    }
    // The excess must be answered at once.
    let deadline = start + Duration::from_secs(2);
    while answered.load(Ordering::Relaxed) < excess && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let early = answered.load(Ordering::Relaxed);
    r.measure(format!(
        "{early} of {AUTH_FLOOD} flood CONNECTs answered with a CONNACK after {}",
        ms(start.elapsed())
    ));
    r.check(early >= excess, || {
        format!("only {early} flood CONNECTs got a CONNACK within 2 s (needed {excess})")
    });

    match probe(
        addr,
        "auth-probe",
        Some(("alice", "right-pw")),
        AUTH_PROBE_WAIT,
    )
    .await
    {
        Ok((took, code)) => {
            r.measure(format!(
                "probe during the flood: CONNACK 0x{code:02x} after {}",
                ms(took)
            ));
            r.check(code == 0 || code == 0x03, || {
                format!("probe during the flood refused with 0x{code:02x} (not 0x00 or 0x03)")
            });
        }
        Err(e) => r.violate(format!("probe during the flood: {e}")),
    }

    close.store(true, Ordering::Relaxed);
    let mut codes = std::collections::BTreeMap::new();
    let mut unanswered = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(Some(code))) => *codes.entry(code).or_insert(0) += 1,
            Ok(Ok(None)) => unanswered += 1,
            Ok(Err(_)) => *codes.entry(0xfe).or_insert(0) += 1,
            Err(_) => unanswered += 1,
        }
    }
    let codes: Vec<String> = codes
        .iter()
        .map(|(c, n)| match c {
            0xff => format!("closed without CONNACK: {n}"),
            0xfe => format!("could not connect: {n}"),
            c => format!("0x{c:02x}: {n}"),
        })
        .collect();
    r.measure(format!(
        "flood answers: {}; unanswered when it hung up: {unanswered}",
        codes.join(", ")
    ));

    let retry_start = Instant::now();
    let mut attempts = 0;
    let mut accepted = None;
    let mut last = String::new();
    while retry_start.elapsed() < AUTH_RETRY_WITHIN && !watch.tripped() {
        attempts += 1;
        match probe(
            addr,
            "auth-probe",
            Some(("alice", "right-pw")),
            AUTH_PROBE_WAIT,
        )
        .await
        {
            Ok((_, 0)) => {
                accepted = Some(retry_start.elapsed());
                break;
            }
            Ok((took, code)) => last = format!("CONNACK 0x{code:02x} after {}", ms(took)),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    match accepted {
        Some(t) => r.measure(format!(
            "retry accepted after {} ({attempts} attempts)",
            ms(t)
        )),
        None => r.violate(format!(
            "the right password was not accepted within {} of the flood ending \
             ({attempts} attempts, last: {last})",
            ms(AUTH_RETRY_WITHIN)
        )),
    }
    r.memory(watch.finish());
    r
}

// ---------------------------------------------------------------------------
// 3. Keep-alive trickle.

/// Trickling clients.
const TRICKLERS: usize = 300;
/// Their keep-alive, seconds.
const TRICKLE_KEEP_ALIVE: u16 = 2;

/// 300 clients with keep-alive 2 s send CONNECT, then the fixed header of a
/// PUBLISH announcing 1,000,000 bytes, then one byte every 500 ms.
pub(super) async fn keepalive_trickle(bin: &Binary) -> Report {
    let limit = Duration::from_millis(u64::from(TRICKLE_KEEP_ALIVE) * 1500 + 1000);
    let mut r = Report::new(
        "keepalive-trickle",
        format!(
            "{TRICKLERS} clients (keep-alive {TRICKLE_KEEP_ALIVE} s) send CONNECT, then a PUBLISH \
             announcing 1,000,000 bytes trickled one byte per 500 ms: each is closed by the \
             broker within 1.5 x keep-alive + 1 s = {} of its CONNACK; broker peak RSS < 100 MiB",
            ms(limit)
        ),
    );
    let dir = setup!(r, temp_dir());
    let toml = format!("{PLAIN_TCP}[sys]\ninterval_secs = 0\n");
    let broker = setup!(r, bin.start(dir.path(), &toml, 1));
    let addr = broker.addr(0);
    let watch = broker.watch_memory();
    let mut tasks = Vec::new();
    for i in 0..TRICKLERS {
        tasks.push(tokio::spawn(async move {
            let id = format!("trickle-{i}");
            let mut login = Login::new(Version::V311, &id);
            login.keep_alive = TRICKLE_KEEP_ALIVE;
            let (mut c, _) = login.connect(addr).await?;
            let connected = Instant::now();
            let mut header = vec![kind::PUBLISH << 4];
            put_varint(&mut header, 1_000_000);
            c.send(&header).await.map_err(|e| e.to_string())?;
            // Sleep on the socket: a close ends the wait at once.
            loop {
                if connected.elapsed() > limit {
                    return Ok::<_, String>(None);
                }
                match c.recv(Duration::from_millis(500)).await {
                    Err(RecvError::Timeout) => {
                        if c.send(b"x").await.is_err() {
                            return Ok(Some(connected.elapsed()));
                        }
                    }
                    Err(_) => return Ok(Some(connected.elapsed())),
                    // A DISCONNECT (5.0) or anything else: the close follows.
                    Ok(_) => {}
                }
            }
        }));
    }
    let mut closed = Vec::new();
    let mut open = 0;
    let mut failed = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(Some(d))) => closed.push(d),
            Ok(Ok(None)) => open += 1,
            Ok(Err(e)) => failed.push(e),
            Err(e) => failed.push(e.to_string()),
        }
    }
    closed.sort();
    let mem = watch.finish();
    r.memory(mem);
    r.measure(format!(
        "{} closed by the broker (median {}, slowest {}), {open} still open after {}, {} \
         could not connect",
        closed.len(),
        closed.get(closed.len() / 2).map_or("-".into(), |d| ms(*d)),
        closed.last().map_or("-".into(), |d| ms(*d)),
        ms(limit),
        failed.len()
    ));
    r.check(open == 0, || {
        format!(
            "{open} of {TRICKLERS} trickling clients still open {} after CONNACK",
            ms(limit)
        )
    });
    r.check(failed.is_empty() || mem.tripped, || {
        format!(
            "{} clients could not connect (first: {})",
            failed.len(),
            failed[0]
        )
    });
    r
}

// ---------------------------------------------------------------------------
// Also: inbound pipelining.

/// QoS 1 PUBLISHes pipelined.
const PIPELINED_QOS1: u16 = 1000;
/// QoS 2 PUBLISHes pipelined (never released).
const PIPELINED_QOS2: u16 = 500;

/// An MQTT 3.1.1 client writes 1,000 QoS 1 and 500 QoS 2 PUBLISHes in one
/// go, without reading and without PUBREL, then a PINGREQ.
pub(super) async fn inbound_pipelining(bin: &Binary) -> Report {
    let mut r = Report::new(
        "inbound-pipelining",
        format!(
            "an MQTT 3.1.1 client writes CONNECT, {PIPELINED_QOS1} QoS 1 and {PIPELINED_QOS2} \
             QoS 2 PUBLISHes (no PUBREL) and a PINGREQ without reading, to a broker with a durable \
             (fjall) store: it is not disconnected (limits 5,000 QoS 1 / 1,000 QoS 2) and gets every PUBACK, every PUBREC and the \
             PINGRESP within 10 s"
        ),
    );
    let dir = setup!(r, temp_dir());
    // A durable store: acknowledgements wait for the commit, so the
    // PUBLISHes really are unacknowledged while they pile up.
    let toml = format!(
        "{PLAIN_TCP}[sys]\ninterval_secs = 0\n\
         [persistence]\nstore = \"fjall\"\npath = {}\n",
        toml_path(&dir.path().join("data"))
    );
    let broker = setup!(r, bin.start(dir.path(), &toml, 1));
    let (mut c, _) = setup!(
        r,
        Login::new(Version::V311, "pipeliner")
            .connect(broker.addr(0))
            .await
    );
    let mut bytes = Vec::new();
    for pid in 1..=PIPELINED_QOS1 + PIPELINED_QOS2 {
        let qos = if pid <= PIPELINED_QOS1 { 1 } else { 2 };
        let mut p = Publish::new("pipeline/x", qos, b"payload");
        p.pid = Some(pid);
        bytes.extend(p.encode(Version::V311));
    }
    bytes.extend(crate::wire::pingreq());
    let (mut pubacks, mut pubrecs, mut pingresp) = (0u16, 0u16, false);
    let mut ended = None;
    if let Err(e) = c.send(&bytes).await {
        ended = Some(e.to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while ended.is_none() && !(pingresp && pubacks == PIPELINED_QOS1 && pubrecs == PIPELINED_QOS2) {
        match c
            .recv(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Ok(Packet::Ack(a)) if a.kind == kind::PUBACK => pubacks += 1,
            Ok(Packet::Ack(a)) if a.kind == kind::PUBREC => pubrecs += 1,
            Ok(Packet::Pingresp) => pingresp = true,
            Ok(other) => ended = Some(format!("unexpected {other}")),
            Err(RecvError::Timeout) => break,
            Err(e) => ended = Some(e.to_string()),
        }
    }
    r.measure(format!(
        "{pubacks} PUBACKs, {pubrecs} PUBRECs, PINGRESP {}; {}",
        if pingresp { "seen" } else { "not seen" },
        ended.as_deref().unwrap_or("connection still open")
    ));
    if let Some(e) = &ended {
        r.violate(format!(
            "the pipelining client was cut off: {e} (after {pubacks} PUBACKs, {pubrecs} PUBRECs)"
        ));
    }
    r.check(pubacks == PIPELINED_QOS1, || {
        format!("{pubacks} of {PIPELINED_QOS1} PUBACKs")
    });
    r.check(pubrecs == PIPELINED_QOS2, || {
        format!("{pubrecs} of {PIPELINED_QOS2} PUBRECs")
    });
    r.check(pingresp, || "no PINGRESP".into());
    r
}
