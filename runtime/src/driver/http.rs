//! The HTTP endpoint (`[http]`): a listener like the MQTT ones, whose bytes
//! the driver answers itself with a small HTTP/1.1 stage, so the runtimes
//! need no HTTP code.
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | every counter and gauge in the Prometheus (OpenMetrics) text format |
//! | `/health` | 200 while the event loop answers |
//! | `/ready` | 200 once every listener is bound and the store recovered; 503 while the store is interrupted or the broker stops |
//! | `/stats.json` | the numbers of the status page |
//! | `/` | the status page (self-contained HTML and JavaScript, polling `/stats.json`) |
//!
//! Bounds: a request head is at most [`MAX_REQUEST_BYTES`] (431 beyond), a
//! connection serves at most [`MAX_REQUESTS`] requests and is closed after
//! [`HTTP_IDLE`] without one, at most [`MAX_HTTP_CONNECTIONS`] are open at
//! once (503 and close beyond). Only GET and HEAD are served (405); a
//! request with a body is answered and the connection closed. Malformed
//! requests get 400 and a close; unknown paths 404.

use super::{ConnIo, Driver, Phase};
use bytes::Bytes;
use roost_core::broker::{ConnId, Instant};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;
use tracing::debug;

/// The most bytes of one request head.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Requests served on one connection before it is closed.
pub const MAX_REQUESTS: u32 = 100;

/// How long a connection may wait for its next request.
pub const HTTP_IDLE: Duration = Duration::from_secs(10);

/// HTTP connections open at once.
pub const MAX_HTTP_CONNECTIONS: usize = 16;

/// The status page.
const STATUS_PAGE: &str = include_str!("status.html");

/// One HTTP connection's parsing state.
pub(super) struct HttpStage {
    buf: Vec<u8>,
    served: u32,
    /// When it is closed unless a request comes first.
    deadline: Instant,
}

/// What a complete request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Request {
    head: bool,
    path: String,
    /// The client asked for the connection to end (or cannot keep it).
    close: bool,
}

/// The next thing in a connection's input.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Parsed {
    /// Not a whole request head yet.
    Incomplete,
    /// A request to answer.
    Request(Request),
    /// A request that cannot be served: answer with this status and close.
    Refused(&'static str),
}

impl HttpStage {
    pub(super) fn new(now: Instant) -> HttpStage {
        HttpStage {
            buf: Vec::new(),
            served: 0,
            deadline: now + HTTP_IDLE,
        }
    }

    /// Takes bytes from the socket.
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        // Past the bound nothing more is kept: the head is refused anyway.
        let room = (MAX_REQUEST_BYTES + 1).saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// The next request in the input, if a whole head is there.
    pub(super) fn next_request(&mut self) -> Parsed {
        if self.buf.is_empty() {
            return Parsed::Incomplete;
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        let len = match request.parse(&self.buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if self.buf.len() > MAX_REQUEST_BYTES => {
                return Parsed::Refused("431 Request Header Fields Too Large");
            }
            Ok(httparse::Status::Partial) => return Parsed::Incomplete,
            Err(httparse::Error::TooManyHeaders) => {
                return Parsed::Refused("431 Request Header Fields Too Large");
            }
            Err(_) => return Parsed::Refused("400 Bad Request"),
        };
        let head = match request.method {
            Some("GET") => false,
            Some("HEAD") => true,
            _ => return Parsed::Refused("405 Method Not Allowed"),
        };
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let has_body = header("transfer-encoding").is_some()
            || header("content-length").is_some_and(|v| v.trim_ascii() != b"0");
        let connection = header("connection").unwrap_or_default();
        let asks_close = connection.eq_ignore_ascii_case(b"close")
            || (request.version == Some(0) && !connection.eq_ignore_ascii_case(b"keep-alive"));
        let path = request.path.unwrap_or("/");
        let path = path.split(['?', '#']).next().unwrap_or("/").to_owned();
        self.buf.drain(..len);
        self.served += 1;
        Parsed::Request(Request {
            head,
            path,
            // A body is not read: the connection ends after the answer.
            close: asks_close || has_body || self.served >= MAX_REQUESTS,
        })
    }
}

/// An HTTP/1.1 response.
fn response(status: &str, content_type: &str, body: &[u8], head: bool, close: bool) -> Bytes {
    let mut out = String::with_capacity(160);
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "Connection: keep-alive\r\n\r\n"
    });
    let mut bytes = out.into_bytes();
    if !head {
        bytes.extend_from_slice(body);
    }
    Bytes::from(bytes)
}

const TEXT: &str = "text/plain; charset=utf-8";

impl Driver {
    /// A connection on the `[http]` listener: served by the driver, never
    /// seen by the engine.
    pub(super) fn http_accept(
        &mut self,
        now: Instant,
        listener: usize,
        remote: Option<SocketAddr>,
    ) -> ConnId {
        let conn = self.broker.reserve_conn_id();
        debug!(%conn, remote = %super::DisplayAddr(remote), "http accepted");
        self.conns.insert(
            conn,
            Box::new(ConnIo {
                listener,
                tls: None,
                ws: None,
                http: Some(Box::new(HttpStage::new(now))),
                out: VecDeque::new(),
                out_len: 0,
                phase: Phase::Open,
                woken: false,
                blocked: false,
                identity_checked: true,
                cert_user: false,
                remote,
                opened: now,
                bridge: None,
            }),
        );
        self.http_open += 1;
        if self.http_open > MAX_HTTP_CONNECTIONS || self.shutdown.is_some() {
            let busy = response(
                "503 Service Unavailable",
                TEXT,
                b"too many connections\n",
                false,
                true,
            );
            self.http_close_after(now, conn, busy);
        } else {
            self.http_idle.push_back((now + HTTP_IDLE, conn));
        }
        conn
    }

    /// Bytes on an HTTP connection: answers every whole request in them.
    pub(super) fn http_read(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        let Some(stage) = self.conns.get_mut(&conn).and_then(|io| io.http.as_mut()) else {
            return;
        };
        stage.feed(bytes);
        loop {
            let Some(stage) = self.conns.get_mut(&conn).and_then(|io| io.http.as_mut()) else {
                return;
            };
            match stage.next_request() {
                Parsed::Incomplete => break,
                Parsed::Refused(status) => {
                    let body = format!("{status}\n");
                    let answer = response(status, TEXT, body.as_bytes(), false, true);
                    self.http_close_after(now, conn, answer);
                    return;
                }
                Parsed::Request(request) => {
                    stage.deadline = now + HTTP_IDLE;
                    self.http_idle.push_back((stage.deadline, conn));
                    self.metrics.http_requests += 1;
                    let close = request.close || self.shutdown.is_some();
                    let answer = self.http_answer(now, &request, close);
                    if close {
                        self.http_close_after(now, conn, answer);
                        return;
                    }
                    self.http_push(conn, answer);
                }
            }
        }
    }

    fn http_answer(&mut self, now: Instant, request: &Request, close: bool) -> Bytes {
        let head = request.head;
        match request.path.as_str() {
            "/metrics" => {
                let body = self.render_metrics(now);
                response(
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body.as_bytes(),
                    head,
                    close,
                )
            }
            "/health" => response("200 OK", TEXT, b"ok\n", head, close),
            "/ready" => match self.readiness() {
                Ok(()) => response("200 OK", TEXT, b"ready\n", head, close),
                Err(why) => {
                    let body = format!("not ready: {why}\n");
                    response(
                        "503 Service Unavailable",
                        TEXT,
                        body.as_bytes(),
                        head,
                        close,
                    )
                }
            },
            "/stats.json" => {
                let body = self.render_stats_json(now);
                response("200 OK", "application/json", body.as_bytes(), head, close)
            }
            "/" | "/index.html" => response(
                "200 OK",
                "text/html; charset=utf-8",
                STATUS_PAGE.as_bytes(),
                head,
                close,
            ),
            _ => response("404 Not Found", TEXT, b"not found\n", head, close),
        }
    }

    /// Whether the broker should be sent traffic. Every listener is bound
    /// once a connection reaches this one (the runtimes bind all of them
    /// before serving any, and a listener that fails to bind stops the
    /// start), and the store was recovered before the driver was built;
    /// what remains to say is an interrupted store or a broker that stops.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.shutdown.is_some() {
            Err("shutting down")
        } else if self.store_outage.is_some() {
            Err("store interrupted")
        } else {
            Ok(())
        }
    }

    fn http_push(&mut self, conn: ConnId, bytes: Bytes) {
        if let Some(io) = self.conns.get_mut(&conn) {
            io.out_len += bytes.len();
            io.out.push_back(bytes);
        }
        self.wake(conn);
    }

    /// Sends `bytes` as the connection's last, then closes it.
    fn http_close_after(&mut self, now: Instant, conn: ConnId, bytes: Bytes) {
        self.http_push(conn, bytes);
        if let Some(io) = self.conns.get_mut(&conn) {
            io.phase = Phase::Closing;
        }
        self.settle_closing(now, conn);
    }

    /// Closes HTTP connections that waited [`HTTP_IDLE`] for a request.
    pub(super) fn http_timeouts(&mut self, now: Instant) {
        while let Some(&(at, conn)) = self.http_idle.front() {
            if at > now {
                break;
            }
            self.http_idle.pop_front();
            let idle = self.conns.get(&conn).is_some_and(|io| {
                io.phase == Phase::Open && io.http.as_ref().is_some_and(|h| h.deadline <= now)
            });
            if idle {
                self.forget(conn);
            }
        }
    }

    /// At shutdown: idle HTTP connections go at once; one with an answer
    /// still to write goes once it is written.
    pub(super) fn http_shutdown(&mut self) {
        let open: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, io)| io.http.is_some() && io.phase == Phase::Open)
            .map(|(id, _)| *id)
            .collect();
        for conn in open {
            if self.has_output(conn) {
                if let Some(io) = self.conns.get_mut(&conn) {
                    io.phase = Phase::Closing;
                }
            } else {
                self.forget(conn);
            }
        }
        self.http_idle.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(stage: &mut HttpStage, bytes: &[u8]) -> Parsed {
        stage.feed(bytes);
        stage.next_request()
    }

    #[test]
    fn requests_are_parsed_in_any_split_and_pipelined() {
        let mut stage = HttpStage::new(Instant::ZERO);
        assert_eq!(parse(&mut stage, b"GET /metr"), Parsed::Incomplete);
        let got = parse(
            &mut stage,
            b"ics?x=1 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /health HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(
            got,
            Parsed::Request(Request {
                head: false,
                path: "/metrics".into(),
                close: false
            })
        );
        assert_eq!(
            stage.next_request(),
            Parsed::Request(Request {
                head: true,
                path: "/health".into(),
                close: true
            })
        );
        assert_eq!(stage.next_request(), Parsed::Incomplete);
    }

    #[test]
    fn bad_oversized_and_unsupported_requests_are_refused() {
        let mut stage = HttpStage::new(Instant::ZERO);
        assert_eq!(
            parse(&mut stage, b"\x16\x03\x01 garbage\r\n\r\n"),
            Parsed::Refused("400 Bad Request")
        );
        let mut stage = HttpStage::new(Instant::ZERO);
        assert_eq!(
            parse(&mut stage, b"POST / HTTP/1.1\r\n\r\n"),
            Parsed::Refused("405 Method Not Allowed")
        );
        let mut stage = HttpStage::new(Instant::ZERO);
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST_BYTES + 100, b'a');
        assert_eq!(
            parse(&mut stage, &big),
            Parsed::Refused("431 Request Header Fields Too Large")
        );
        assert!(
            stage.buf.len() <= MAX_REQUEST_BYTES + 1,
            "input kept past the bound"
        );
        // HTTP/1.0 closes unless asked to keep alive; a body closes.
        let mut stage = HttpStage::new(Instant::ZERO);
        let Parsed::Request(r) = parse(&mut stage, b"GET / HTTP/1.0\r\n\r\n") else {
            panic!("not parsed")
        };
        assert!(r.close);
        let Parsed::Request(r) = parse(&mut stage, b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\n")
        else {
            panic!("not parsed")
        };
        assert!(r.close);
    }

    #[test]
    fn a_connection_serves_a_bounded_number_of_requests() {
        let mut stage = HttpStage::new(Instant::ZERO);
        for i in 1..=MAX_REQUESTS {
            let Parsed::Request(r) = parse(&mut stage, b"GET /health HTTP/1.1\r\n\r\n") else {
                panic!("not parsed")
            };
            assert_eq!(r.close, i == MAX_REQUESTS, "request {i}");
        }
    }
}
