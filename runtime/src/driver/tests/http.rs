//! The `[http]` listener on the virtual clock: the driver answers it
//! itself, the engine never sees it.

use super::*;
use crate::driver::http::{HTTP_IDLE, MAX_HTTP_CONNECTIONS};

fn http_config() -> Config {
    let mut config = Config::from_toml_str("[http]\nbind = \"127.0.0.1:0\"\n").expect("config");
    config.sys.interval_secs = 0;
    config
}

fn http_harness(config: &Config, store: Option<OpenedStore>) -> Harness {
    let files = Files::load(config);
    Harness::new(config, files, store)
}

/// The `[http]` listener's index: after the MQTT listeners.
fn http_index(h: &Harness) -> usize {
    let index = h.driver.listeners().count() - 1;
    assert_eq!(
        h.driver.listeners().nth(index).map(|l| l.protocol),
        Some(config::Protocol::Http)
    );
    index
}

fn accept_http(h: &mut Harness) -> ConnId {
    let index = http_index(h);
    let conn = h.driver.handle_accept(h.now, index, None);
    h.drain();
    conn
}

/// Sends one request and returns the response's status code and body,
/// taking them off what the connection was written.
fn get(h: &mut Harness, conn: ConnId, request: &str) -> (u16, String) {
    h.read(conn, request.as_bytes());
    let out = h.written.remove(&conn).unwrap_or_default();
    let text = String::from_utf8(out).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let status = head[9..12].parse().expect("status code");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .expect("number");
    assert_eq!(body.len(), length, "one response, whole: {text}");
    (status, body.to_owned())
}

/// The value of a sample line `name value` in an exposition.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not in\n{metrics}"))
        .parse()
        .expect("a number")
}

#[test]
fn metrics_health_ready_and_the_page_are_served_with_keep_alive() {
    let config = http_config();
    let mut h = http_harness(&config, None);
    let web = accept_http(&mut h);
    assert_eq!(
        h.driver.broker().connection_count(),
        0,
        "the engine never sees it"
    );
    let (status, before) = get(&mut h, web, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert_eq!(sample(&before, "roost_connections"), 0.0);
    assert_eq!(
        sample(&before, "roost_messages_received_total{qos=\"1\"}"),
        0.0
    );
    assert!(before.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");

    // Real MQTT traffic moves the counters.
    let sub = h.accept();
    h.read(sub, &connect("sub", None, true));
    h.read(sub, &subscribe("t/#", 1));
    let publisher = h.accept();
    h.read(publisher, &connect("pub", None, true));
    h.read(publisher, &publish("t/a", b"0", 0, 0));
    h.read(publisher, &publish("t/a", b"1", 1, 1));
    h.read(publisher, &publish("t/b", b"1", 1, 2));
    let (_, after) = get(&mut h, web, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(sample(&after, "roost_connections"), 2.0);
    assert_eq!(
        sample(&after, "roost_messages_received_total{qos=\"0\"}"),
        1.0
    );
    assert_eq!(
        sample(&after, "roost_messages_received_total{qos=\"1\"}"),
        2.0
    );
    assert_eq!(sample(&after, "roost_messages_sent_total{qos=\"1\"}"), 2.0);
    assert_eq!(sample(&after, "roost_messages_inflight"), 2.0);
    assert_eq!(sample(&after, "roost_subscriptions"), 1.0);
    assert_eq!(
        sample(
            &after,
            "roost_listener_connections_total{listener=\"0\",protocol=\"tcp\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &after,
            "roost_listener_connections_total{listener=\"1\",protocol=\"http\"}"
        ),
        1.0
    );
    assert!(sample(&after, "roost_bytes_received_total") > 0.0);

    assert_eq!(
        get(&mut h, web, "GET /health HTTP/1.1\r\n\r\n"),
        (200, "ok\n".into())
    );
    assert_eq!(
        get(&mut h, web, "GET /ready HTTP/1.1\r\n\r\n"),
        (200, "ready\n".into())
    );
    let (status, page) = get(&mut h, web, "GET / HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
    assert!(page.contains("stats.json") && page.contains("<html"));
    let (status, json) = get(&mut h, web, "GET /stats.json HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
    assert!(json.contains("\"connections\":2"), "{json}");
    assert!(json.contains("\"messages_received\":3"), "{json}");
    assert_eq!(get(&mut h, web, "GET /nope HTTP/1.1\r\n\r\n").0, 404);
    h.read(web, b"HEAD /health HTTP/1.1\r\n\r\n");
    let head = String::from_utf8(h.written.remove(&web).unwrap_or_default()).expect("utf-8");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
        "{head:?}"
    );
    assert!(h.driver.interest(web).read && !h.driver.interest(web).shutdown_write);

    // A malformed request: 400 and the connection ends.
    assert_eq!(get(&mut h, web, "\x16\x03\x01\x02garbage\r\n\r\n").0, 400);
    h.advance(LINGER);
    assert!(h.dropped.contains(&web));
    assert_eq!(h.driver.connection_count(), 2, "the MQTT clients stay");
}

#[test]
fn ready_says_503_while_the_store_is_interrupted_and_while_stopping() {
    let probe = Probe::default();
    let config = {
        let mut c = http_config();
        c.persistence.durability = config::Durability::Sync;
        c
    };
    let store = OpenedStore {
        store: Box::new(ProbeStore {
            inner: MemoryStore::new(),
            probe: probe.clone(),
        }),
        recovered: Recovered::default(),
    };
    let mut h = http_harness(&config, Some(store));
    let web = accept_http(&mut h);
    assert_eq!(get(&mut h, web, "GET /ready HTTP/1.1\r\n\r\n").0, 200);
    let c = h.accept();
    h.read(c, &connect("durable", None, false));
    h.run_job();
    let (_, metrics) = get(&mut h, web, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(sample(&metrics, "roost_store_batch_operations_count"), 1.0);
    assert_eq!(sample(&metrics, "roost_sessions_persistent"), 1.0);

    probe.fail.store(true, Ordering::SeqCst);
    h.read(c, &subscribe("t", 1));
    while h.run_job() {}
    let (status, body) = get(&mut h, web, "GET /ready HTTP/1.1\r\n\r\n");
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: store interrupted\n")
    );
    probe.fail.store(false, Ordering::SeqCst);
    h.advance(STORE_RETRY.0);
    while h.run_job() {}
    assert_eq!(get(&mut h, web, "GET /ready HTTP/1.1\r\n\r\n").0, 200);

    // Shutting down: an idle HTTP connection goes at once, and the broker
    // stops without waiting for it.
    h.driver.handle_shutdown(h.now);
    h.drain();
    assert!(h.dropped.contains(&web) || h.driver.interest(web).close);
    h.advance(SHUTDOWN_GRACE);
    while h.run_job() {}
    assert!(h.stopped);
}

#[test]
fn http_connections_are_bounded_and_idle_ones_closed() {
    let config = http_config();
    let mut h = http_harness(&config, None);
    let open: Vec<ConnId> = (0..MAX_HTTP_CONNECTIONS)
        .map(|_| accept_http(&mut h))
        .collect();
    let extra = accept_http(&mut h);
    let refused = String::from_utf8(h.output(extra).to_vec()).expect("utf-8");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    // One that asks in time stays; the others time out.
    h.advance(HTTP_IDLE - Duration::from_secs(1));
    assert_eq!(get(&mut h, open[0], "GET /health HTTP/1.1\r\n\r\n").0, 200);
    h.advance(Duration::from_secs(1));
    for conn in &open[1..] {
        assert!(h.driver.interest(*conn).close, "idle connection kept");
    }
    assert!(!h.driver.interest(open[0]).close);
    h.advance(HTTP_IDLE);
    assert!(h.driver.interest(open[0]).close);
    // All gone, room again.
    h.advance(LINGER);
    let again = accept_http(&mut h);
    assert_eq!(get(&mut h, again, "GET /health HTTP/1.1\r\n\r\n").0, 200);
}
