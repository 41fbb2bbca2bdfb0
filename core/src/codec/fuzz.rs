//! The decoder's self-check, shared by the fuzz target and the test that
//! replays its corpus. Not part of the API.
//!
//! This is a checker: its assertions failing (as panics) are exactly what it
//! reports, so the crate's no-panic lints do not apply here. Nothing in the
//! broker calls it.
#![allow(
    clippy::indexing_slicing,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic
)]

use super::{DecodeError, Packet, Protocol, decode, decode_slice};
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};

/// Generous maximum packet size for the self-check.
const LARGE_MAX: usize = 1 << 20;
/// Small maximum packet size, to exercise the size limit.
const SMALL_MAX: usize = 64;

/// Decodes `data` as a stream in each protocol version and checks what the
/// codec must guarantee for any input; panics (which is what a fuzzer
/// looks for) if it does not:
///
/// - decoding the whole input with [`decode_slice`] and decoding it fed in
///   small chunks with [`decode`] give the same packets, the same error (if
///   any) and leave the same number of bytes;
/// - no packet is larger than the bytes it came from, nor than the maximum;
/// - every decoded packet re-encodes into exactly [`Packet::encoded_len`]
///   bytes that decode back to an equal packet, and re-encoding that packet
///   gives the same bytes again;
/// - with a smaller maximum, every packet is either decoded the same or
///   refused with [`DecodeError::PacketTooLarge`].
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    for protocol in [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5] {
        let whole = decode_all(data, protocol, LARGE_MAX);
        let chunked = decode_chunked(data, protocol, LARGE_MAX);
        assert_eq!(whole, chunked, "whole and chunked decoding differ");
        for (packet, size) in &whole.packets {
            assert!(*size <= LARGE_MAX && *size >= 2);
            check_reencode(packet, *size, protocol);
        }
        let small = decode_all(data, protocol, SMALL_MAX);
        let same = small.packets.len();
        assert_eq!(small.packets[..], whole.packets[..same]);
        if let Some(Err(e)) = small.end {
            if same < whole.packets.len() {
                let size = whole.packets[same].1;
                assert!(size > SMALL_MAX, "{e:?} on a packet of {size} bytes");
                assert!(matches!(e, DecodeError::PacketTooLarge { .. }));
            } else if !matches!(e, DecodeError::PacketTooLarge { .. }) {
                assert_eq!(small.end, whole.end);
            }
        } else {
            assert_eq!(small, whole);
        }
    }
}

/// What decoding a stream gave: its packets with their sizes, then how it
/// ended (`Ok(n)`: `n` bytes left waiting for more; `Err`: the error).
#[derive(Debug, PartialEq)]
struct Outcome {
    packets: Vec<(Packet, usize)>,
    end: Option<Result<usize, DecodeError>>,
}

fn decode_all(data: &[u8], protocol: Protocol, max: usize) -> Outcome {
    let input = Bytes::copy_from_slice(data);
    let mut offset = 0;
    let mut packets = Vec::new();
    loop {
        let rest = input.slice(offset..);
        match decode_slice(&rest, protocol, max) {
            Ok(Some((packet, n))) => {
                assert!(n <= rest.len(), "packet larger than its input");
                offset += n;
                packets.push((packet, n));
            }
            Ok(None) => {
                return Outcome {
                    packets,
                    end: Some(Ok(rest.len())),
                };
            }
            Err(e) => {
                return Outcome {
                    packets,
                    end: Some(Err(e)),
                };
            }
        }
    }
}

fn decode_chunked(data: &[u8], protocol: Protocol, max: usize) -> Outcome {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut fed = 0;
    let mut step = 0;
    loop {
        // Decode everything the buffer holds, then feed the next chunk.
        loop {
            let before = buf.len();
            match decode(&mut buf, protocol, max) {
                Ok(Some(packet)) => {
                    let n = before - buf.len();
                    assert!(n > 0 && n <= before, "packet larger than its input");
                    packets.push((packet, n));
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "decode consumed without a packet");
                    break;
                }
                Err(e) => {
                    return Outcome {
                        packets,
                        end: Some(Err(e)),
                    };
                }
            }
        }
        if fed == data.len() {
            return Outcome {
                packets,
                end: Some(Ok(buf.len())),
            };
        }
        // Chunks of 1, 2, 3, .. 7 bytes, then a large one, and again.
        step += 1;
        let chunk = if step % 8 == 0 { 97 } else { step % 8 };
        let end = (fed + chunk).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
    }
}

fn check_reencode(packet: &Packet, size: usize, protocol: Protocol) {
    let mut out = BytesMut::new();
    packet
        .encode(protocol, &mut out)
        .expect("a decoded packet encodes");
    assert_eq!(
        out.len(),
        packet.encoded_len(protocol),
        "encoded_len is wrong"
    );
    assert!(out.len() <= size, "re-encoding is longer than the original");
    let bytes = out.freeze();
    let (again, n) = decode_slice(&bytes, protocol, LARGE_MAX)
        .expect("a re-encoded packet decodes")
        .expect("a re-encoded packet is complete");
    assert_eq!(n, bytes.len(), "re-encoded packet has trailing bytes");
    assert_eq!(&again, packet, "re-encoded packet decodes differently");
    let mut twice = BytesMut::new();
    again.encode(protocol, &mut twice).expect("encodes again");
    assert_eq!(twice, bytes, "encoding is not canonical");
}
