//! The scenarios. Each one sets up its clients, starts the clock, and leaves
//! everything it measured in the shared [`Run`], so a hard deadline that
//! cancels it part-way still leaves a partial report to print.

use std::io;
use std::rc::Rc;
use std::time::Duration;

use crate::cli::Common;
use crate::client::{self, Conn, PubSpec, Run, Topic};
use crate::stats::{self, Receiver, now_ns};

const SEC: u64 = 1_000_000_000;

/// How often the controller looks at progress; cheap, and far below any
/// duration worth measuring.
const TICK: Duration = Duration::from_millis(2);

/// Runs publishers until they finish (count) or `--duration` passes, then
/// waits up to `--drain` seconds for outstanding deliveries.
async fn drive(run: &Rc<Run>, publishers: usize, c: &Common) {
    let t_end = c
        .duration_limit()
        .map(|d| run.t_start.get() + (d * SEC as f64) as u64);
    let drain = (c.drain * SEC as f64) as u64;
    let mut stop_at = None;
    while run.pubs_done.get() < publishers {
        let now = now_ns();
        if stop_at.is_none() && t_end.is_some_and(|t| now >= t) {
            run.stop.set(true);
            stop_at = Some(now);
        }
        // Publishers stuck waiting for acknowledgements that never come.
        if stop_at.is_some_and(|s| now - s > drain) {
            run.error("publishers did not finish within --drain after the duration");
            break;
        }
        tokio::time::sleep(TICK).await;
    }
    run.stop.set(true);
    wait_delivered(run, drain).await;
}

/// Waits until every expected delivery arrived or `limit_ns` passes.
async fn wait_delivered(run: &Rc<Run>, limit_ns: u64) {
    let until = now_ns() + limit_ns;
    while run.unique() < run.expected() && now_ns() < until {
        tokio::time::sleep(TICK).await;
    }
}

fn spec(c: &Common, id: u32, publishers: usize, topic: &str, qos: u8) -> PubSpec {
    PubSpec {
        id,
        topic: Topic::Fixed(topic.as_bytes().to_vec()),
        qos,
        retain: false,
        payload: c.payload,
        inflight: c.inflight,
        count: c.count,
        rate: c.rate.map(|r| r / publishers.max(1) as f64),
    }
}

async fn subscriber(
    c: &Common,
    id: &str,
    filters: &[&str],
    qos: u8,
    publishers: usize,
    run: &Rc<Run>,
) -> io::Result<()> {
    let mut conn = Conn::open(&c.sub_addr(), id, 0).await?;
    let f: Vec<Vec<u8>> = filters.iter().map(|f| f.as_bytes().to_vec()).collect();
    conn.subscribe(&f, qos, 100).await?;
    client::spawn_subscriber(conn, Receiver::new(publishers), run);
    Ok(())
}

/// P publishers on `bench/fanin/{i}`, one subscriber on `bench/fanin/+`.
pub async fn fanin(c: &Common, publishers: usize, run: Rc<Run>) -> io::Result<()> {
    let qos = c.qos.unwrap_or(0);
    subscriber(c, "rb-fanin-sub", &["bench/fanin/+"], qos, publishers, &run).await?;
    c.settle().await;
    let pubs = client::open_all(&c.addr(), "rb-fanin-pub", publishers, 0).await?;
    run.close_loop(c.open_loop, c.inflight, publishers);
    run.start_clock(c.broker_pid);
    for (i, conn) in pubs.into_iter().enumerate() {
        let s = spec(c, i as u32, publishers, &format!("bench/fanin/{i}"), qos);
        client::spawn_publisher(conn, s, &run);
    }
    drive(&run, publishers, c).await;
    Ok(())
}

/// One publisher on `bench/fanout`, N subscribers on it.
pub async fn fanout(c: &Common, subscribers: usize, run: Rc<Run>) -> io::Result<()> {
    let qos = c.qos.unwrap_or(0);
    let subs = client::open_all(&c.sub_addr(), "rb-fanout-sub", subscribers, 0).await?;
    for mut conn in subs {
        conn.subscribe(&[b"bench/fanout".to_vec()], qos, 1).await?;
        client::spawn_subscriber(conn, Receiver::new(1), &run);
    }
    c.settle().await;
    run.fanout.set(subscribers as u64);
    run.close_loop(c.open_loop, c.inflight, 1);
    let conn = Conn::open(&c.addr(), "rb-fanout-pub", 0).await?;
    run.start_clock(c.broker_pid);
    client::spawn_publisher(conn, spec(c, 0, 1, "bench/fanout", qos), &run);
    drive(&run, 1, c).await;
    Ok(())
}

/// C publishers each to `bench/pairs/{i}`, each with its own subscriber.
pub async fn pairs(c: &Common, clients: usize, run: Rc<Run>) -> io::Result<()> {
    let qos = c.qos.unwrap_or(1);
    let subs = client::open_all(&c.sub_addr(), "rb-pairs-sub", clients, 0).await?;
    let mut pending = Vec::with_capacity(clients);
    for (i, mut conn) in subs.into_iter().enumerate() {
        let run = run.clone();
        pending.push(tokio::task::spawn_local(async move {
            conn.subscribe(&[format!("bench/pairs/{i}").into_bytes()], qos, 1)
                .await?;
            // Seen-sets grow to the publisher id on first delivery.
            client::spawn_subscriber(conn, Receiver::new(0), &run);
            io::Result::Ok(())
        }));
    }
    for p in pending {
        p.await.map_err(io::Error::other)??;
    }
    c.settle().await;
    let pubs = client::open_all(&c.addr(), "rb-pairs-pub", clients, 0).await?;
    run.close_loop(c.open_loop, c.inflight, clients);
    run.start_clock(c.broker_pid);
    for (i, conn) in pubs.into_iter().enumerate() {
        let s = spec(c, i as u32, clients, &format!("bench/pairs/{i}"), qos);
        client::spawn_publisher(conn, s, &run);
    }
    drive(&run, clients, c).await;
    Ok(())
}

/// C clients, each publishing to `bench/rr/{i}` and waiting for the
/// acknowledgement (and, with `subscribe`, for its own copy: each is
/// subscribed to its own topic) before the next message. Nothing batches:
/// every message costs the broker its own reads, writes and wake-ups.
pub async fn reqres(c: &Common, clients: usize, subscribe: bool, run: Rc<Run>) -> io::Result<()> {
    let qos = c.qos.unwrap_or(1);
    if qos == 0 && !subscribe {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "reqres at QoS 0 waits for nothing without --subscribe",
        ));
    }
    let conns = client::open_all(&c.addr(), "rb-rr-", clients, 0).await?;
    let mut ready = Vec::with_capacity(clients);
    if subscribe {
        let mut pending = Vec::with_capacity(clients);
        for (i, mut conn) in conns.into_iter().enumerate() {
            pending.push(tokio::task::spawn_local(async move {
                conn.subscribe(&[format!("bench/rr/{i}").into_bytes()], qos, 1)
                    .await?;
                io::Result::Ok(conn)
            }));
        }
        for p in pending {
            ready.push(p.await.map_err(io::Error::other)??);
        }
    } else {
        ready = conns;
    }
    let switches = c.broker_pid.and_then(stats::ctx_switches);
    run.start_clock(c.broker_pid);
    for (i, conn) in ready.into_iter().enumerate() {
        let req = client::Request {
            id: i as u32,
            topic: format!("bench/rr/{i}").into_bytes(),
            qos,
            payload: c.payload,
            subscribed: subscribe,
            count: c.count,
        };
        client::spawn_requester(conn, req, &run);
    }
    drive(&run, clients, c).await;
    let after = c.broker_pid.and_then(stats::ctx_switches);
    if let (Some(a), Some(b)) = (switches, after) {
        let done = run.unique().max(1);
        run.put("broker_ctx_switches_per_msg", (b - a) as f64 / done as f64);
    }
    Ok(())
}

/// One paced publisher at `rate` msgs/s to one subscriber.
pub async fn latency(c: &Common, run: Rc<Run>) -> io::Result<()> {
    let qos = c.qos.unwrap_or(0);
    subscriber(c, "rb-lat-sub", &["bench/latency"], qos, 1, &run).await?;
    c.settle().await;
    let conn = Conn::open(&c.addr(), "rb-lat-pub", 0).await?;
    run.close_loop(c.open_loop, c.inflight, 1);
    run.start_clock(c.broker_pid);
    let mut s = spec(c, 0, 1, "bench/latency", qos);
    s.rate = Some(c.rate.unwrap_or(10_000.0));
    client::spawn_publisher(conn, s, &run);
    drive(&run, 1, c).await;
    Ok(())
}

/// How `conns` spreads its connections over processes, and how long it
/// keeps them.
pub struct Spread {
    /// This process and `processes - 1` children.
    pub processes: usize,
    /// Seconds to hold every connection open after measuring.
    pub hold: f64,
}

/// What a `conns --child` process reports on its one line of output.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChildReport {
    opened: usize,
    failed: usize,
    first_error: Option<String>,
}

/// Opens N idle connections; "deliveries" here are CONNACKs and latency is
/// TCP connect → CONNACK (of this process's share, when spread).
pub async fn conns(
    c: &Common,
    n: usize,
    concurrency: usize,
    spread: Spread,
    run: Rc<Run>,
) -> io::Result<()> {
    let processes = spread.processes.max(1);
    let share = n.div_ceil(processes);
    let own = n - share * (processes - 1);
    let (soft, _) = rlimit::Resource::NOFILE.get()?;
    run.put("fd_limit", soft as f64);
    if (share as u64) + 32 > soft {
        run.error(format_args!(
            "RLIMIT_NOFILE {soft} (the hard limit) is below the {share} connections each process is asked for: expect the limit to stop this run (add --processes)"
        ));
    }
    let before = c.broker_pid.and_then(stats::rss_kb);
    run.sent.set(n as u64);
    run.start_clock(c.broker_pid);
    let mut children = Vec::with_capacity(processes - 1);
    for _ in 1..processes {
        children.push(spawn_child(c, share, concurrency)?);
    }
    let results = client::open_many(&c.addr(), "rb-conn-0-", own, concurrency, 0).await;
    let mut held = Vec::with_capacity(own);
    let mut failed = 0;
    {
        let mut st = run.stats.borrow_mut();
        let st = st.as_mut().expect("stats live for the whole run");
        st.first_recv = run.t_start.get();
        for r in results {
            match r {
                Ok((conn, lat)) => {
                    st.received += 1;
                    st.hist.saturating_record(lat.max(1_000));
                    held.push(conn);
                }
                // `Run::error` keeps the first few: later failures repeat the cause.
                Err(e) => {
                    failed += 1;
                    run.error(format_args!("connection {} failed: {e}", held.len()))
                }
            }
        }
    }
    let mut opened = held.len();
    for (index, child) in children.iter_mut().enumerate() {
        let report = read_child(child).await;
        match report {
            Ok(r) => {
                opened += r.opened;
                failed += r.failed;
                if let Some(e) = r.first_error {
                    run.error(format_args!("process {}: {e}", index + 1));
                }
            }
            Err(e) => run.error(format_args!("process {}: {e}", index + 1)),
        }
    }
    {
        let mut st = run.stats.borrow_mut();
        let st = st.as_mut().expect("stats live for the whole run");
        // Children's connections count as delivered; their latencies stay
        // with them (the histogram is this process's share).
        st.received = opened as u64;
        st.last_recv = now_ns();
    }
    run.put("connections_open", opened as f64);
    if failed > 0 {
        run.put("connections_failed", failed as f64);
    }
    if processes > 1 {
        run.put("processes", processes as f64);
    }
    // Let the broker finish whatever it allocates lazily after CONNACK.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let (Some(pid), Some(b)) = (c.broker_pid, before) {
        let after = stats::rss_kb(pid).unwrap_or(b);
        run.put("rss_before_mib", b as f64 / 1024.0);
        run.put("rss_after_mib", after as f64 / 1024.0);
        if opened > 0 {
            let per = (after as f64 - b as f64) * 1024.0 / opened as f64;
            run.put("bytes_per_conn", per);
        }
    }
    if spread.hold > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(spread.hold)).await;
    }
    drop(held);
    for mut child in children {
        // Closing its standard input is the child's signal to end.
        drop(child.stdin.take());
        let _ = child.wait();
    }
    Ok(())
}

fn spawn_child(c: &Common, n: usize, concurrency: usize) -> io::Result<std::process::Child> {
    use std::process::{Command, Stdio};
    Command::new(std::env::current_exe()?)
        .args(["conns", "--child", "--connections", &n.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--host", &c.host, "--port", &c.port.to_string()])
        .args(["--deadline", &c.deadline.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
}

/// Waits (off this thread) for a child's one line.
async fn read_child(child: &mut std::process::Child) -> io::Result<ChildReport> {
    use std::io::BufRead;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no output"))?;
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .map_err(io::Error::other)??;
    serde_json::from_str(&line)
        .map_err(|e| io::Error::other(format!("exited without a report ({e}): {line:?}")))
}

/// A child's part of a spread `conns`: opens `n` connections, reports them
/// on one line, and holds them until standard input closes.
pub async fn conns_child(c: &Common, n: usize, concurrency: usize) -> io::Result<()> {
    let results = client::open_many(
        &c.addr(),
        &format!("rb-conn-{}-", std::process::id()),
        n,
        concurrency,
        0,
    )
    .await;
    let mut report = ChildReport {
        opened: 0,
        failed: 0,
        first_error: None,
    };
    let mut held = Vec::with_capacity(n);
    for r in results {
        match r {
            Ok((conn, _)) => held.push(conn),
            Err(e) => {
                report.failed += 1;
                report.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    report.opened = held.len();
    println!(
        "{}",
        serde_json::to_string(&report).map_err(io::Error::other)?
    );
    tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await
    .map_err(io::Error::other)?;
    drop(held);
    Ok(())
}

/// Stores R retained messages on distinct topics, then one wildcard
/// subscriber receives them all; latency is measured from the SUBSCRIBE.
pub async fn retained(c: &Common, messages: u64, run: Rc<Run>) -> io::Result<()> {
    let qos = c.qos.unwrap_or(0);
    let rss0 = c.broker_pid.and_then(stats::rss_kb);
    let conn = Conn::open(&c.addr(), "rb-ret-pub", 0).await?;
    let t0 = now_ns();
    let spec = PubSpec {
        id: 0,
        topic: Topic::Numbered("bench/ret".into()),
        qos,
        retain: true,
        payload: c.payload,
        inflight: c.inflight,
        count: Some(messages),
        rate: None,
    };
    let mut conn = client::publish_loop(conn, spec, run.clone()).await?;
    conn.ping_barrier().await?;
    let stored_s = (now_ns() - t0) as f64 / SEC as f64;
    run.put("store_msgs_per_s", messages as f64 / stored_s);
    let rss_stored = c.broker_pid.and_then(stats::rss_kb);
    if let Some(rss) = rss_stored {
        run.put("rss_after_store_mib", rss as f64 / 1024.0);
        if let Some(r0) = rss0 {
            run.put(
                "bytes_per_retained",
                rss.saturating_sub(r0) as f64 * 1024.0 / messages.max(1) as f64,
            );
        }
    }
    run.expected_fixed.set(Some(messages));
    // The broker's largest RSS while it sends them, sampled every 5 ms.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = c.broker_pid.map(|pid| {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(stats::rss_kb(pid).unwrap_or(0));
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            peak
        })
    });

    let mut sub = Conn::open(&c.addr(), "rb-ret-sub", 0).await?;
    run.start_clock(c.broker_pid);
    let t_sub = run.t_start.get();
    sub.subscribe(&[b"bench/ret/#".to_vec()], qos, 1).await?;
    let mut rx = Receiver::new(1);
    rx.latency_base = Some(t_sub);
    client::spawn_subscriber(sub, rx, &run);
    // Retained delivery has no publishers to wait for; the deadline bounds it.
    wait_delivered(&run, u64::MAX / 2).await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    if let (Some(peak), Some(stored)) = (sampler.and_then(|t| t.join().ok()), rss_stored) {
        run.put("rss_peak_sending_mib", peak as f64 / 1024.0);
        run.put(
            "rss_growth_sending_mib",
            peak.saturating_sub(stored) as f64 / 1024.0,
        );
    }
    let st = run.stats.borrow();
    let st = st.as_ref().expect("stats live for the whole run");
    if st.received > 0 {
        run.put("first_ms", (st.first_recv - t_sub) as f64 / 1e6);
        run.put("last_ms", (st.last_recv - t_sub) as f64 / 1e6);
    }
    Ok(())
}

/// Creates S subscriptions over `connections` idle clients (filters
/// `bench/subs/{conn}/{j}`), then measures one publisher → one subscriber on
/// `bench/subs/hot` (paced if `--rate` is set).
pub async fn subs(
    c: &Common,
    subscriptions: usize,
    connections: usize,
    run: Rc<Run>,
) -> io::Result<()> {
    let qos = c.qos.unwrap_or(0);
    let connections = connections.clamp(1, subscriptions.max(1));
    let per_conn = subscriptions.div_ceil(connections);
    let rss0 = c.broker_pid.and_then(stats::rss_kb);
    let t0 = now_ns();
    let hay = client::open_all(&c.addr(), "rb-hay-", connections, 0).await?;
    let mut tasks = Vec::with_capacity(connections);
    for (ci, mut conn) in hay.into_iter().enumerate() {
        let n = per_conn.min(subscriptions - (ci * per_conn).min(subscriptions));
        tasks.push(tokio::task::spawn_local(async move {
            let filters: Vec<Vec<u8>> = (0..n)
                .map(|j| format!("bench/subs/{ci}/{j}").into_bytes())
                .collect();
            conn.subscribe(&filters, 0, 100).await?;
            io::Result::Ok(conn)
        }));
    }
    let mut held = Vec::with_capacity(connections);
    for t in tasks {
        held.push(t.await.map_err(io::Error::other)??);
    }
    let setup_s = (now_ns() - t0) as f64 / SEC as f64;
    run.put("subscriptions", subscriptions as f64);
    run.put("subscribe_per_s", subscriptions as f64 / setup_s);
    if let (Some(pid), Some(r0)) = (c.broker_pid, rss0) {
        let r1 = stats::rss_kb(pid).unwrap_or(r0);
        run.put("rss_after_subs_mib", r1 as f64 / 1024.0);
        run.put(
            "bytes_per_sub",
            (r1 as f64 - r0 as f64) * 1024.0 / subscriptions.max(1) as f64,
        );
    }

    subscriber(c, "rb-subs-sub", &["bench/subs/hot"], qos, 1, &run).await?;
    let conn = Conn::open(&c.addr(), "rb-subs-pub", 0).await?;
    run.close_loop(c.open_loop, c.inflight, 1);
    run.start_clock(c.broker_pid);
    client::spawn_publisher(conn, spec(c, 0, 1, "bench/subs/hot", qos), &run);
    drive(&run, 1, c).await;
    drop(held);
    Ok(())
}
