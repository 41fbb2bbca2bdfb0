//! A small blocking MQTT client that speaks raw bytes over `std::net`, so a
//! test sees exactly what the broker sends, plus the helpers every
//! integration test needs (a deadline-bound poll, a self-signed
//! certificate). Shared by the runtime crates' tests and the parity suite
//! ([`crate::parity`]).
//!
//! Every wait has a deadline; nothing sleeps except bounded polling. The
//! helpers panic on failure: they are for tests.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `check` every few milliseconds until it returns `Some` or `timeout`
/// passes.
pub fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as PEM
/// into `dir`.
pub struct TestCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Path of the certificate file.
    pub cert_path: PathBuf,
    /// Path of the private key file.
    pub key_path: PathBuf,
}

impl TestCert {
    /// Generates the certificate and writes `server.crt` and `server.key`
    /// into `dir`.
    pub fn new(dir: &Path) -> TestCert {
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("rcgen");
        let cert_pem = cert.pem();
        let cert_path = dir.join("server.crt");
        let key_path = dir.join("server.key");
        std::fs::write(&cert_path, &cert_pem).expect("write cert");
        std::fs::write(&key_path, signing_key.serialize_pem()).expect("write key");
        TestCert {
            cert_pem,
            cert_path,
            key_path,
        }
    }
}

/// A TOML string literal for a path.
pub fn toml_path(path: &Path) -> String {
    format!("{:?}", path.to_str().expect("utf-8 path"))
}
/// MQTT protocol level: 4 is 3.1.1, 5 is 5.0.
pub const V311: u8 = 4;
/// MQTT 5.0.
pub const V5: u8 = 5;

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&u16::try_from(s.len()).expect("short").to_be_bytes());
    out.extend_from_slice(s);
}

/// A whole packet from its first byte and body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// What a CONNECT carries.
#[derive(Clone, Default)]
pub struct Connect<'a> {
    /// The client identifier.
    pub client_id: &'a str,
    /// The user name, if any.
    pub username: Option<&'a str>,
    /// The password, if any.
    pub password: Option<&'a str>,
    /// Topic, payload, QoS, retain.
    pub will: Option<(&'a str, &'a [u8], u8, bool)>,
    /// Keep-alive in seconds (0: none).
    pub keep_alive: u16,
}

/// A CONNECT packet (clean session / clean start).
pub fn connect_packet(version: u8, c: &Connect<'_>) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(version);
    let mut flags = 0x02;
    if let Some((_, _, qos, retain)) = c.will {
        flags |= 0x04 | (qos << 3) | if retain { 0x20 } else { 0 };
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&c.keep_alive.to_be_bytes());
    if version == V5 {
        body.push(0);
    }
    string(c.client_id.as_bytes(), &mut body);
    if let Some((topic, payload, _, _)) = c.will {
        if version == V5 {
            body.push(0);
        }
        string(topic.as_bytes(), &mut body);
        string(payload, &mut body);
    }
    if let Some(user) = c.username {
        string(user.as_bytes(), &mut body);
    }
    if let Some(password) = c.password {
        string(password.as_bytes(), &mut body);
    }
    packet(0x10, &body)
}

/// A PUBLISH packet.
pub fn publish_packet(
    version: u8,
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
    pid: u16,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(payload.len() + topic.len() + 8);
    string(topic.as_bytes(), &mut body);
    if qos > 0 {
        body.extend_from_slice(&pid.to_be_bytes());
    }
    if version == V5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1) | u8::from(retain), &body)
}

/// A SUBSCRIBE packet for one filter.
pub fn subscribe_packet(version: u8, pid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    if version == V5 {
        body.push(0);
    }
    string(filter.as_bytes(), &mut body);
    body.push(qos);
    packet(0x82, &body)
}

/// A received packet.
#[derive(Debug, Clone)]
pub struct Packet {
    /// The first byte (type and flags).
    pub first: u8,
    /// Everything after the remaining length.
    pub body: Vec<u8>,
}

impl Packet {
    /// The packet type (upper nibble).
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }
}

/// A received PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The topic name.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The QoS (0, 1 or 2).
    pub qos: u8,
    /// The retain flag.
    pub retain: bool,
    /// The packet identifier (0 at QoS 0).
    pub pid: u16,
}

fn read_varint(bytes: &[u8]) -> (usize, usize) {
    let mut value = 0usize;
    for (i, b) in bytes.iter().enumerate().take(4) {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("bad variable byte integer");
}

/// A blocking MQTT client on a TCP stream.
pub struct Raw {
    /// The connection (for raw writes the helpers do not cover).
    pub stream: TcpStream,
    /// The protocol level: [`V311`] or [`V5`].
    pub version: u8,
}

impl Raw {
    /// Opens a TCP connection (no CONNECT yet).
    pub fn open(addr: SocketAddr, version: u8) -> Raw {
        let stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_write_timeout(Some(WAIT)).expect("write timeout");
        Raw { stream, version }
    }

    /// Connects and returns the client with the CONNACK reason / return
    /// code.
    pub fn connect(addr: SocketAddr, version: u8, c: &Connect<'_>) -> (Raw, u8) {
        let mut raw = Raw::open(addr, version);
        raw.send(&connect_packet(version, c));
        let connack = raw.read_packet().expect("CONNACK");
        assert_eq!(connack.kind(), 2, "expected CONNACK, got {connack:?}");
        let code = connack.body[1];
        (raw, code)
    }

    /// Connects and asserts success.
    pub fn connected(addr: SocketAddr, version: u8, c: &Connect<'_>) -> Raw {
        let (raw, code) = Raw::connect(addr, version, c);
        assert_eq!(code, 0, "CONNACK refused for {:?}", c.client_id);
        raw
    }

    /// Writes bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads one packet, waiting at most [`WAIT`].
    pub fn read_packet(&mut self) -> io::Result<Packet> {
        self.read_packet_within(WAIT)
    }

    /// Reads one packet, waiting at most `timeout` for it to begin.
    pub fn read_packet_within(&mut self, timeout: Duration) -> io::Result<Packet> {
        self.stream.set_read_timeout(Some(timeout))?;
        let mut first = [0u8; 1];
        self.stream.read_exact(&mut first)?;
        self.stream.set_read_timeout(Some(WAIT))?;
        let mut len = 0usize;
        for i in 0..4 {
            let mut b = [0u8; 1];
            self.stream.read_exact(&mut b)?;
            len |= usize::from(b[0] & 0x7f) << (7 * i);
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body)?;
        Ok(Packet {
            first: first[0],
            body,
        })
    }

    /// Subscribes to one filter and returns the SUBACK code.
    pub fn subscribe(&mut self, pid: u16, filter: &str, qos: u8) -> u8 {
        self.send(&subscribe_packet(self.version, pid, filter, qos));
        let suback = self.read_packet().expect("SUBACK");
        assert_eq!(suback.kind(), 9, "expected SUBACK, got {suback:?}");
        assert_eq!(suback.body[..2], pid.to_be_bytes());
        let mut at = 2;
        if self.version == V5 {
            let (len, n) = read_varint(&suback.body[2..]);
            at += n + len;
        }
        suback.body[at]
    }

    /// Publishes; for QoS 1 waits for the PUBACK and returns its reason code
    /// (0 for MQTT 3.1.1).
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> u8 {
        self.send(&publish_packet(
            self.version,
            topic,
            payload,
            qos,
            retain,
            1,
        ));
        match qos {
            0 => 0,
            1 => {
                let ack = self.read_packet().expect("PUBACK");
                assert_eq!(ack.kind(), 4, "expected PUBACK, got {ack:?}");
                ack.body.get(2).copied().unwrap_or(0)
            }
            _ => panic!("use QoS 0 or 1 here"),
        }
    }

    /// Reads packets until a PUBLISH arrives (acknowledging QoS 1) and
    /// returns it.
    pub fn expect_publish(&mut self) -> Publish {
        loop {
            let p = self.read_packet().expect("PUBLISH");
            if p.kind() != 3 {
                continue;
            }
            let publish = self.parse_publish(&p);
            if publish.qos == 1 {
                let mut ack = publish.pid.to_be_bytes().to_vec();
                if self.version == V5 {
                    ack.push(0);
                }
                self.send(&packet(0x40, &ack));
            }
            return publish;
        }
    }

    /// Decodes a PUBLISH packet.
    pub fn parse_publish(&self, p: &Packet) -> Publish {
        let b = &p.body;
        let tlen = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let topic = String::from_utf8(b[2..2 + tlen].to_vec()).expect("utf-8 topic");
        let qos = (p.first >> 1) & 3;
        let mut at = 2 + tlen;
        let mut pid = 0;
        if qos > 0 {
            pid = u16::from_be_bytes([b[at], b[at + 1]]);
            at += 2;
        }
        if self.version == V5 {
            let (len, n) = read_varint(&b[at..]);
            at += n + len;
        }
        Publish {
            topic,
            payload: b[at..].to_vec(),
            qos,
            retain: p.first & 1 == 1,
            pid,
        }
    }

    /// Sends DISCONNECT.
    pub fn disconnect(mut self) {
        self.send(&[0xe0, 0]);
    }
}
