//! A deliberately minimal MQTT 3.1.1 codec for the load generator.
//!
//! It is independent of `roost-core` on purpose: the instrument must not share
//! bugs with the thing it measures. It encodes into caller-owned `Vec<u8>`s
//! (which are reused, so steady-state encoding never allocates) and decodes
//! borrowed views over a read buffer.

use std::fmt;

/// Control packet types (MQTT 3.1.1 §2.2.1).
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
}

/// The largest remaining length MQTT can express (§2.2.3).
const MAX_REMAINING: usize = 268_435_455;

/// Why a byte stream could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The remaining-length field used more than four bytes.
    BadLength,
    /// A packet's body was shorter than its fixed fields require.
    Truncated(u8),
    /// A PUBLISH carried QoS 3.
    BadQos,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadLength => write!(f, "malformed remaining length"),
            WireError::Truncated(t) => write!(f, "packet type {t} shorter than its fixed fields"),
            WireError::BadQos => write!(f, "PUBLISH with QoS 3"),
        }
    }
}

impl std::error::Error for WireError {}

/// A decoded packet borrowing from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// CONNECT; only the client id is kept (the sink needs nothing else).
    Connect { client_id: &'a [u8] },
    /// CONNACK with its return code.
    Connack { session_present: bool, code: u8 },
    /// PUBLISH; `pid` is 0 at QoS 0.
    Publish {
        qos: u8,
        retain: bool,
        pid: u16,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    /// PUBACK.
    Puback(u16),
    /// PUBREC.
    Pubrec(u16),
    /// PUBREL.
    Pubrel(u16),
    /// PUBCOMP.
    Pubcomp(u16),
    /// SUBSCRIBE; `filters` is the raw (filter, options) list.
    Subscribe { pid: u16, filters: &'a [u8] },
    /// SUBACK; one return code per filter.
    Suback { pid: u16, codes: &'a [u8] },
    /// PINGREQ.
    Pingreq,
    /// PINGRESP.
    Pingresp,
    /// DISCONNECT.
    Disconnect,
    /// Anything else the generator never expects; skipped, not fatal.
    Other(u8),
}

fn put_len(buf: &mut Vec<u8>, mut len: usize) {
    debug_assert!(len <= MAX_REMAINING);
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        buf.push(b);
        if len == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s);
}

/// Appends a CONNECT (MQTT 3.1.1, clean session).
pub fn connect(buf: &mut Vec<u8>, client_id: &[u8], keep_alive: u16) {
    buf.push(kind::CONNECT << 4);
    put_len(buf, 10 + 2 + client_id.len());
    put_str(buf, b"MQTT");
    buf.push(4); // protocol level 3.1.1
    buf.push(0x02); // clean session
    buf.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(buf, client_id);
}

/// Appends a CONNACK (used by the sink).
pub fn connack(buf: &mut Vec<u8>, code: u8) {
    buf.extend_from_slice(&[kind::CONNACK << 4, 2, 0, code]);
}

/// Appends a PUBLISH; `pid` is ignored at QoS 0.
pub fn publish(buf: &mut Vec<u8>, topic: &[u8], qos: u8, retain: bool, pid: u16, payload: &[u8]) {
    buf.push(kind::PUBLISH << 4 | qos << 1 | retain as u8);
    let pid_len = if qos > 0 { 2 } else { 0 };
    put_len(buf, 2 + topic.len() + pid_len + payload.len());
    put_str(buf, topic);
    if qos > 0 {
        buf.extend_from_slice(&pid.to_be_bytes());
    }
    buf.extend_from_slice(payload);
}

/// Appends one of the four two-byte acknowledgements (PUBACK, PUBREC, PUBREL, PUBCOMP).
pub fn ack(buf: &mut Vec<u8>, packet_kind: u8, pid: u16) {
    // PUBREL's reserved flags must be 0b0010 (§3.6.1).
    let flags = if packet_kind == kind::PUBREL { 0x02 } else { 0 };
    let [hi, lo] = pid.to_be_bytes();
    buf.extend_from_slice(&[packet_kind << 4 | flags, 2, hi, lo]);
}

/// Appends a SUBSCRIBE for all `filters` at one requested QoS.
pub fn subscribe<'f>(
    buf: &mut Vec<u8>,
    pid: u16,
    filters: impl Iterator<Item = &'f [u8]> + Clone,
    qos: u8,
) {
    let body: usize = 2 + filters.clone().map(|f| 3 + f.len()).sum::<usize>();
    buf.push(kind::SUBSCRIBE << 4 | 0x02);
    put_len(buf, body);
    buf.extend_from_slice(&pid.to_be_bytes());
    for f in filters {
        put_str(buf, f);
        buf.push(qos);
    }
}

/// Appends a SUBACK (used by the sink).
pub fn suback(buf: &mut Vec<u8>, pid: u16, codes: &[u8]) {
    buf.push(kind::SUBACK << 4);
    put_len(buf, 2 + codes.len());
    buf.extend_from_slice(&pid.to_be_bytes());
    buf.extend_from_slice(codes);
}

/// Appends a PINGREQ.
pub fn pingreq(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[kind::PINGREQ << 4, 0]);
}

/// Appends a PINGRESP (used by the sink).
pub fn pingresp(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[kind::PINGRESP << 4, 0]);
}

/// Splits the (filter, requested QoS) pairs of a SUBSCRIBE body.
pub fn subscribe_filters(mut raw: &[u8]) -> impl Iterator<Item = (&[u8], u8)> {
    std::iter::from_fn(move || {
        if raw.len() < 3 {
            return None;
        }
        let n = u16::from_be_bytes([raw[0], raw[1]]) as usize;
        let f = raw.get(2..2 + n)?;
        let q = *raw.get(2 + n)?;
        raw = &raw[3 + n..];
        Some((f, q))
    })
}

fn pid_at(body: &[u8], t: u8) -> Result<u16, WireError> {
    match body {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(WireError::Truncated(t)),
    }
}

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole packet (a normal
/// outcome on a stream), otherwise the packet and how many bytes it used.
pub fn decode(buf: &[u8]) -> Result<Option<(Packet<'_>, usize)>, WireError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(WireError::BadLength);
        }
    }
    let total = i + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[i..total];
    let t = first >> 4;
    let packet = match t {
        kind::CONNECT => {
            // protocol name (2+n), level, flags, keep alive, then the client id.
            let name_len = pid_at(body, t)? as usize;
            let id_at = 2 + name_len + 4;
            let id_len = pid_at(body.get(id_at..).unwrap_or(&[]), t)? as usize;
            let client_id = body
                .get(id_at + 2..id_at + 2 + id_len)
                .ok_or(WireError::Truncated(t))?;
            Packet::Connect { client_id }
        }
        kind::CONNACK => match body {
            [sp, code, ..] => Packet::Connack {
                session_present: sp & 1 == 1,
                code: *code,
            },
            _ => return Err(WireError::Truncated(t)),
        },
        kind::PUBLISH => {
            let qos = (first >> 1) & 3;
            if qos == 3 {
                return Err(WireError::BadQos);
            }
            let tlen = pid_at(body, t)? as usize;
            let topic = body.get(2..2 + tlen).ok_or(WireError::Truncated(t))?;
            let mut at = 2 + tlen;
            let pid = if qos > 0 {
                let p = pid_at(body.get(at..).unwrap_or(&[]), t)?;
                at += 2;
                p
            } else {
                0
            };
            Packet::Publish {
                qos,
                retain: first & 1 == 1,
                pid,
                topic,
                payload: &body[at..],
            }
        }
        kind::PUBACK => Packet::Puback(pid_at(body, t)?),
        kind::PUBREC => Packet::Pubrec(pid_at(body, t)?),
        kind::PUBREL => Packet::Pubrel(pid_at(body, t)?),
        kind::PUBCOMP => Packet::Pubcomp(pid_at(body, t)?),
        kind::SUBSCRIBE => Packet::Subscribe {
            pid: pid_at(body, t)?,
            filters: &body[2..],
        },
        kind::SUBACK => Packet::Suback {
            pid: pid_at(body, t)?,
            codes: &body[2..],
        },
        kind::PINGREQ => Packet::Pingreq,
        kind::PINGRESP => Packet::Pingresp,
        kind::DISCONNECT => Packet::Disconnect,
        other => Packet::Other(other),
    };
    Ok(Some((packet, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_at_every_qos() {
        for qos in 0..=2 {
            let mut b = Vec::new();
            publish(&mut b, b"a/b", qos, true, 7, &[1, 2, 3]);
            let (p, n) = decode(&b).unwrap().unwrap();
            assert_eq!(n, b.len());
            assert_eq!(
                p,
                Packet::Publish {
                    qos,
                    retain: true,
                    pid: if qos > 0 { 7 } else { 0 },
                    topic: b"a/b",
                    payload: &[1, 2, 3],
                }
            );
        }
    }

    #[test]
    fn long_remaining_length_and_partial_input() {
        let mut b = Vec::new();
        publish(&mut b, b"t", 1, false, 1, &vec![9u8; 20_000]);
        for cut in [0, 1, 2, 3, b.len() - 1] {
            assert_eq!(decode(&b[..cut]), Ok(None));
        }
        assert_eq!(decode(&b).unwrap().unwrap().1, b.len());
    }

    #[test]
    fn connect_and_subscribe_decode_as_the_sink_needs() {
        let mut b = Vec::new();
        connect(&mut b, b"me", 30);
        subscribe(&mut b, 3, [&b"x/+"[..], b"y"].into_iter(), 1);
        ack(&mut b, kind::PUBREL, 9);
        let (p, n) = decode(&b).unwrap().unwrap();
        assert_eq!(p, Packet::Connect { client_id: b"me" });
        let (p, m) = decode(&b[n..]).unwrap().unwrap();
        let Packet::Subscribe { pid: 3, filters } = p else {
            panic!("{p:?}")
        };
        let got: Vec<_> = subscribe_filters(filters).collect();
        assert_eq!(got, vec![(&b"x/+"[..], 1), (&b"y"[..], 1)]);
        assert_eq!(b[n + m], 0x62);
        assert_eq!(decode(&b[n + m..]).unwrap().unwrap().0, Packet::Pubrel(9));
    }
}
