//! The raw-bytes client: one connection (TCP, TLS, WebSocket or WebSocket
//! over TLS, see [`crate::transport`]), exact bytes out, decoded packets in,
//! every read bounded by a timeout.
//!
//! Its helpers (`connect`, `subscribe`, `publish`, `next_publish`) speak
//! ordinary MQTT so scenarios stay short, but nothing stops a scenario from
//! writing arbitrary bytes with [`RawClient::send`] in between.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

use crate::scenario::{Failure, Target, secs};
use crate::transport::{self, Io};
use crate::wire::{
    self, Connack, Connect, Packet, Properties, Publish, Sub, SubAck, Version, kind,
};

/// How long helpers wait for an answer the broker owes at once (CONNACK,
/// SUBACK, PUBACK...).
pub const REPLY_WAIT: Duration = secs(5);

/// Why [`RawClient::recv`] returned no packet.
#[derive(Debug)]
pub enum RecvError {
    /// Nothing complete arrived in time; the connection is still open.
    Timeout,
    /// The broker closed the connection (orderly close or reset).
    Closed(String),
    /// The broker sent bytes that do not decode.
    Decode(wire::DecodeError),
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecvError::Timeout => f.write_str("nothing (timed out)"),
            RecvError::Closed(how) => write!(f, "connection closed ({how})"),
            RecvError::Decode(e) => write!(f, "undecodable bytes ({e})"),
        }
    }
}

/// How a connection ended, as seen by [`RawClient::expect_close`].
#[derive(Debug)]
pub struct Closed {
    /// Packets that arrived before the close (a DISCONNECT, typically).
    pub packets: Vec<Packet>,
    /// How the close was seen (`EOF` or the reset error).
    pub how: String,
}

impl Closed {
    /// The reason code of a DISCONNECT among the packets, if any.
    pub fn disconnect_code(&self) -> Option<u8> {
        self.packets.iter().find_map(|p| match p {
            Packet::Disconnect { code, .. } => Some(*code),
            _ => None,
        })
    }
}

/// One raw connection to the broker.
pub struct RawClient {
    stream: Box<dyn Io>,
    buf: Vec<u8>,
    version: Version,
    /// Packets read while a helper waited for something else.
    inbox: VecDeque<Packet>,
    next_pid: u16,
    /// When true, [`RawClient::next_publish`] acknowledges what it returns.
    pub auto_ack: bool,
}

impl RawClient {
    /// Opens a connection over the target's transport (no MQTT yet).
    pub async fn open(target: &Target, version: Version) -> Result<Self, Failure> {
        let what = || format!("a {} connection", target.transport.name());
        let stream = timeout(REPLY_WAIT, transport::connect(target))
            .await
            .map_err(|_| Failure::new(what(), "connect timed out"))?
            .map_err(|e| Failure::new(what(), e))?;
        Ok(RawClient {
            stream,
            buf: Vec::new(),
            version,
            inbox: VecDeque::new(),
            next_pid: 0,
            auto_ack: true,
        })
    }

    /// Opens a connection and completes CONNECT/CONNACK, requiring success.
    pub async fn connect(target: &Target, connect: &Connect) -> Result<(Self, Connack), Failure> {
        let mut c = Self::open(target, connect.version).await?;
        let ack = c.handshake(connect).await?;
        if ack.code != 0 {
            return Err(Failure::new(
                format!("CONNACK success for client {:?}", connect.client_id),
                format!("code 0x{:02x}", ack.code),
            ));
        }
        Ok((c, ack))
    }

    /// Sends CONNECT and returns the CONNACK, whatever its code.
    pub async fn handshake(&mut self, connect: &Connect) -> Result<Connack, Failure> {
        self.send(&connect.encode()).await?;
        match self.recv(REPLY_WAIT).await {
            Ok(Packet::Connack(c)) => Ok(c),
            Ok(other) => Err(Failure::new("CONNACK", other.to_string())),
            Err(e) => Err(Failure::new("CONNACK", e.to_string())),
        }
    }

    /// The protocol version this connection speaks.
    pub fn version(&self) -> Version {
        self.version
    }

    /// A fresh non-zero packet identifier.
    pub fn pid(&mut self) -> u16 {
        self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
        self.next_pid
    }

    /// Writes bytes as they are (and flushes them: TLS and WebSocket
    /// buffer).
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match timeout(REPLY_WAIT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::new(
                "the connection to accept our bytes",
                format!("write failed: {e}"),
            )),
            Err(_) => Err(Failure::new(
                "the broker to read our bytes",
                "write blocked for 5 s",
            )),
        }
    }

    /// The next packet, within `within`.
    pub async fn recv(&mut self, within: Duration) -> Result<Packet, RecvError> {
        if let Some(p) = self.inbox.pop_front() {
            return Ok(p);
        }
        let deadline = Instant::now() + within;
        loop {
            match wire::frame_len(&self.buf) {
                Err(e) => return Err(RecvError::Decode(e)),
                Ok(Some((header, total))) => {
                    let packet =
                        Packet::decode(self.buf[0], &self.buf[header..total], self.version)
                            .map_err(RecvError::Decode);
                    self.buf.drain(..total);
                    return packet;
                }
                Ok(None) => {}
            }
            let mut chunk = [0u8; 8192];
            match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(RecvError::Timeout),
                Ok(Ok(0)) => return Err(RecvError::Closed("EOF".into())),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(RecvError::Closed(describe_io(e.kind()))),
            }
        }
    }

    /// Waits for a packet that `pick` accepts, keeping the others in the
    /// inbox for later. Fails with `what` if none arrives in time.
    pub async fn wait_for<T>(
        &mut self,
        within: Duration,
        what: &str,
        mut pick: impl FnMut(&Packet) -> Option<T>,
    ) -> Result<T, Failure> {
        let deadline = Instant::now() + within;
        let mut skipped = VecDeque::new();
        // Only look at packets that were already queued once, then read new
        // ones; otherwise a non-matching queued packet would be seen forever.
        let mut queued: VecDeque<Packet> = std::mem::take(&mut self.inbox);
        let result = loop {
            let next = match queued.pop_front() {
                Some(p) => Ok(p),
                None => {
                    self.recv(deadline.saturating_duration_since(Instant::now()))
                        .await
                }
            };
            match next {
                Ok(p) => {
                    if let Packet::Ack(a) = &p
                        && a.kind == kind::PUBREL
                        && self.auto_ack
                    {
                        // The broker completes a QoS 2 delivery we took.
                        let pubcomp = wire::ack(self.version, kind::PUBCOMP, a.pid, 0);
                        self.send(&pubcomp).await?;
                        continue;
                    }
                    if let Some(t) = pick(&p) {
                        break Ok(t);
                    }
                    skipped.push_back(p);
                }
                Err(e) => break Err(Failure::new(what, e.to_string())),
            }
        };
        skipped.extend(queued);
        skipped.extend(self.inbox.drain(..));
        self.inbox = skipped;
        result
    }

    /// SUBSCRIBE with these subscriptions and properties; returns the SUBACK.
    pub async fn subscribe_with(
        &mut self,
        subs: &[Sub],
        props: &Properties,
    ) -> Result<SubAck, Failure> {
        let pid = self.pid();
        self.send(&wire::subscribe(self.version, pid, subs, props))
            .await?;
        self.wait_for(
            REPLY_WAIT,
            &format!("SUBACK for packet id {pid}"),
            |p| match p {
                Packet::Suback(s) if s.pid == pid => Some(s.clone()),
                _ => None,
            },
        )
        .await
    }

    /// SUBSCRIBE to one filter and require the granted QoS to be `qos`.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> Result<(), Failure> {
        let ack = self
            .subscribe_with(&[Sub::new(filter, qos)], &Properties::new())
            .await?;
        if ack.codes != [qos] {
            return Err(Failure::new(
                format!("SUBACK granting QoS {qos} on {filter:?}"),
                format!("codes {:02x?}", ack.codes),
            ));
        }
        Ok(())
    }

    /// UNSUBSCRIBE and wait for the UNSUBACK.
    pub async fn unsubscribe(&mut self, filters: &[&str]) -> Result<SubAck, Failure> {
        let pid = self.pid();
        self.send(&wire::unsubscribe(self.version, pid, filters))
            .await?;
        self.wait_for(REPLY_WAIT, "UNSUBACK", |p| match p {
            Packet::Unsuback(s) if s.pid == pid => Some(s.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes and completes the QoS flow: PUBACK for 1, PUBREC/PUBREL/
    /// PUBCOMP for 2. Returns the final acknowledgement (None at QoS 0).
    pub async fn publish(&mut self, mut publish: Publish) -> Result<Option<wire::Ack>, Failure> {
        if publish.qos > 0 && publish.pid.is_none() {
            publish.pid = Some(self.pid());
        }
        self.send(&publish.encode(self.version)).await?;
        let Some(pid) = publish.pid else {
            return Ok(None);
        };
        let first = if publish.qos == 1 {
            kind::PUBACK
        } else {
            kind::PUBREC
        };
        let ack = self.wait_ack(first, pid).await?;
        if publish.qos == 1 || ack.code >= 0x80 {
            return Ok(Some(ack));
        }
        self.send(&wire::ack(self.version, kind::PUBREL, pid, 0))
            .await?;
        self.wait_ack(kind::PUBCOMP, pid).await.map(Some)
    }

    async fn wait_ack(&mut self, ack_kind: u8, pid: u16) -> Result<wire::Ack, Failure> {
        let name = match ack_kind {
            kind::PUBACK => "PUBACK",
            kind::PUBREC => "PUBREC",
            _ => "PUBCOMP",
        };
        self.wait_for(
            REPLY_WAIT,
            &format!("{name} for packet id {pid}"),
            |p| match p {
                Packet::Ack(a) if a.kind == ack_kind && a.pid == pid => Some(a.clone()),
                _ => None,
            },
        )
        .await
    }

    /// The next PUBLISH within `within`, acknowledged when `auto_ack` is on.
    pub async fn next_publish(&mut self, within: Duration) -> Result<Publish, Failure> {
        let p = self
            .wait_for(within, "a PUBLISH", |p| match p {
                Packet::Publish(p) => Some(p.clone()),
                _ => None,
            })
            .await?;
        if self.auto_ack {
            self.ack_publish(&p).await?;
        }
        Ok(p)
    }

    /// Acknowledges a received PUBLISH (PUBACK, or PUBREC for QoS 2; the
    /// PUBREL that follows is answered inside [`RawClient::wait_for`]).
    pub async fn ack_publish(&mut self, p: &Publish) -> Result<(), Failure> {
        match (p.qos, p.pid) {
            (1, Some(pid)) => {
                self.send(&wire::ack(self.version, kind::PUBACK, pid, 0))
                    .await
            }
            (2, Some(pid)) => {
                self.send(&wire::ack(self.version, kind::PUBREC, pid, 0))
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Every PUBLISH that arrives within `within` (acknowledged per `auto_ack`).
    /// Ends early, with what it has, if the connection closes.
    pub async fn collect_publishes(&mut self, within: Duration) -> Vec<Publish> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while let Ok(p) = self
            .next_publish(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            out.push(p);
        }
        out
    }

    /// Collects publishes until `count` have arrived (or `within` passes),
    /// then keeps listening for `grace` to catch extras.
    pub async fn collect_n(
        &mut self,
        count: usize,
        within: Duration,
        grace: Duration,
    ) -> Vec<Publish> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < count {
            match self
                .next_publish(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Ok(p) => out.push(p),
                Err(_) => return out,
            }
        }
        out.extend(self.collect_publishes(grace).await);
        out
    }

    /// PINGREQ/PINGRESP round trip: proves the connection is open and the
    /// broker is processing it.
    pub async fn ping(&mut self) -> Result<(), Failure> {
        self.send(&wire::pingreq()).await?;
        self.wait_for(REPLY_WAIT, "PINGRESP", |p| {
            matches!(p, Packet::Pingresp).then_some(())
        })
        .await
    }

    /// Sends DISCONNECT (reason 0 in MQTT 5) and closes the socket.
    pub async fn disconnect(mut self) -> Result<(), Failure> {
        self.send(&wire::disconnect(self.version, 0, &Properties::new()))
            .await?;
        timeout(REPLY_WAIT, self.stream.shutdown()).await.ok();
        Ok(())
    }

    /// Sends DISCONNECT with properties (MQTT 5) and closes the socket.
    pub async fn disconnect_with(mut self, code: u8, props: &Properties) -> Result<(), Failure> {
        self.send(&wire::disconnect(self.version, code, props))
            .await?;
        timeout(REPLY_WAIT, self.stream.shutdown()).await.ok();
        Ok(())
    }

    /// Reads until the broker closes the connection; fails if it is still
    /// open after `within`. Returns the packets seen on the way.
    pub async fn expect_close(&mut self, within: Duration) -> Result<Closed, Failure> {
        let deadline = Instant::now() + within;
        let mut packets: Vec<Packet> = self.inbox.drain(..).collect();
        loop {
            match self
                .recv(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Ok(p) => packets.push(p),
                Err(RecvError::Closed(how)) => return Ok(Closed { packets, how }),
                Err(RecvError::Decode(e)) => {
                    return Err(Failure::new(
                        "the connection to close",
                        format!("undecodable bytes ({e})"),
                    ));
                }
                Err(RecvError::Timeout) => {
                    let seen: Vec<String> = packets.iter().map(|p| p.to_string()).collect();
                    return Err(Failure::new(
                        format!(
                            "the broker to close the connection within {} s",
                            within.as_secs_f32()
                        ),
                        if seen.is_empty() {
                            "it still open".to_owned()
                        } else {
                            format!("it still open after {}", seen.join(", "))
                        },
                    ));
                }
            }
        }
    }

    /// Fails if any PUBLISH arrives within `within`.
    pub async fn expect_no_publish(&mut self, within: Duration, why: &str) -> Result<(), Failure> {
        match self.next_publish(within).await {
            Ok(p) => Err(Failure::new(
                format!("no PUBLISH ({why})"),
                Packet::Publish(p).to_string(),
            )),
            Err(_) => Ok(()),
        }
    }
}

/// What [`RawClient::flood`] saw.
#[derive(Debug, Default)]
pub struct Flood {
    /// Packets received while writing and settling.
    pub packets: Vec<Packet>,
    /// Set when the broker closed the connection (how).
    pub closed: Option<String>,
    /// Set when our write failed (the broker had closed, usually).
    pub write_error: Option<String>,
    /// Set when the overall limit passed before the write finished.
    pub write_stalled: bool,
    /// Set when the broker sent bytes that do not decode.
    pub decode_error: Option<wire::DecodeError>,
}

impl RawClient {
    /// Writes `bytes` while reading whatever the broker sends, so neither side
    /// can deadlock on a full socket buffer. Returns once the broker closes,
    /// or the write is done and nothing arrives for `settle`, or `limit`
    /// passes.
    pub async fn flood(&mut self, bytes: &[u8], settle: Duration, limit: Duration) -> Flood {
        let deadline = Instant::now() + limit;
        let mut out = Flood::default();
        let (mut rd, mut wr) = tokio::io::split(&mut self.stream);
        let mut write = std::pin::pin!(async move {
            wr.write_all(bytes).await?;
            wr.flush().await
        });
        let mut write_done = false;
        let mut chunk = vec![0u8; 65536];
        loop {
            loop {
                match wire::frame_len(&self.buf) {
                    Ok(Some((header, total))) => {
                        match Packet::decode(self.buf[0], &self.buf[header..total], self.version) {
                            Ok(p) => out.packets.push(p),
                            Err(e) => {
                                out.decode_error = Some(e);
                                return out;
                            }
                        }
                        self.buf.drain(..total);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        out.decode_error = Some(e);
                        return out;
                    }
                }
            }
            let read_deadline = if write_done {
                (Instant::now() + settle).min(deadline)
            } else {
                deadline
            };
            tokio::select! {
                r = &mut write, if !write_done => {
                    write_done = true;
                    out.write_error = r.err().map(|e| e.to_string());
                }
                r = timeout_at(read_deadline, rd.read(&mut chunk)) => match r {
                    Err(_) => {
                        out.write_stalled = !write_done;
                        return out;
                    }
                    Ok(Ok(0)) => {
                        out.closed = Some("EOF".into());
                        return out;
                    }
                    Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                    Ok(Err(e)) => {
                        out.closed = Some(describe_io(e.kind()));
                        return out;
                    }
                },
            }
        }
    }
}

fn describe_io(kind: ErrorKind) -> String {
    match kind {
        ErrorKind::ConnectionReset => "reset".into(),
        ErrorKind::ConnectionAborted => "aborted".into(),
        ErrorKind::BrokenPipe => "broken pipe".into(),
        other => format!("{other:?}"),
    }
}
