//! Primitive fields (section 1.5): integers, variable byte integers, strings
//! and binary data, read from shared bytes and written into a `BytesMut`.

use super::{DecodeError, EncodeError};
use crate::MqttStr;
use bytes::{BufMut, Bytes, BytesMut};

/// The largest value a variable byte integer can hold.
pub const MAX_VARINT: u32 = 268_435_455;

/// A cursor over one packet's bytes. Every slice it hands out shares the
/// packet's allocation.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
    /// Strings with a disallowed code point are malformed (section 1.5.4).
    strict_strings: bool,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader {
            buf,
            pos: 0,
            strict_strings: false,
        }
    }

    /// A reader that refuses strings with a disallowed code point
    /// ([`MqttStr::has_disallowed_code_point`]) when `strict`.
    pub(crate) fn with_strict_strings(buf: Bytes, strict: bool) -> Self {
        Reader {
            strict_strings: strict,
            ..Reader::new(buf)
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn has_remaining(&self) -> bool {
        self.pos < self.buf.len()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::UnexpectedEnd)?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }

    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match decode_varint(self.buf.get(self.pos..).unwrap_or_default())? {
            Some((value, len)) => {
                self.pos += len;
                Ok(value)
            }
            None => Err(DecodeError::UnexpectedEnd),
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::UnexpectedEnd);
        }
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    /// Two-byte length, then that many bytes (section 1.5.6).
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    /// A UTF-8 string (section 1.5.4).
    pub(crate) fn string(&mut self) -> Result<MqttStr, DecodeError> {
        let s = MqttStr::from_bytes(self.binary()?)?;
        if self.strict_strings && s.has_disallowed_code_point() {
            return Err(crate::StrError::DisallowedCodePoint.into());
        }
        Ok(s)
    }

    /// Splits off the next `n` bytes as a reader of their own (a property
    /// block).
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        let strict = self.strict_strings;
        Ok(Reader::with_strict_strings(self.take(n)?, strict))
    }

    pub(crate) fn rest(&mut self) -> Bytes {
        let out = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        out
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.has_remaining() {
            Err(DecodeError::TrailingBytes)
        } else {
            Ok(())
        }
    }
}

/// Decodes a variable byte integer from the start of `buf`: `Ok(None)` if
/// `buf` ends before it does.
pub(crate) fn decode_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value = 0u32;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of 0 after a continuation byte adds nothing: the
            // value had a shorter encoding, which is the only one allowed
            // [MQTT-1.5.5-1].
            if byte == 0 && i > 0 {
                return Err(DecodeError::MalformedVarInt);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::MalformedVarInt)
}

pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a fixed header for a body of `body` bytes, with room reserved for
/// the body, or fails if no remaining length can express it.
pub(crate) fn put_fixed_header(
    buf: &mut BytesMut,
    first_byte: u8,
    body: usize,
) -> Result<(), EncodeError> {
    if body > MAX_VARINT as usize {
        return Err(EncodeError::PacketTooLarge);
    }
    buf.reserve(1 + varint_len(body) + body);
    buf.put_u8(first_byte);
    put_varint(buf, body);
    Ok(())
}

pub(crate) fn put_varint(buf: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

pub(crate) fn put_binary(buf: &mut BytesMut, data: &[u8]) {
    // Callers only hand in MqttStr values (at most 65,535 bytes by
    // construction) or binary fields whose length the packet types bound.
    buf.put_u16(data.len() as u16);
    buf.put_slice(data);
}

pub(crate) fn put_str(buf: &mut BytesMut, s: &MqttStr) {
    put_binary(buf, s.as_bytes());
}

/// Encoded size of a string or binary field.
pub(crate) fn binary_len(data: &[u8]) -> usize {
    2 + data.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_examples_from_section_1_5_5() {
        let cases: [(u32, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in cases {
            assert_eq!(decode_varint(bytes), Ok(Some((value, bytes.len()))));
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value as usize);
            assert_eq!(&buf[..], bytes);
            assert_eq!(varint_len(value as usize), bytes.len());
        }
        assert_eq!(
            decode_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::MalformedVarInt)
        );
        assert_eq!(decode_varint(&[0xFF, 0xFF]), Ok(None));
        // Non-minimal encodings of 0 and 127.
        assert_eq!(
            decode_varint(&[0x80, 0x00]),
            Err(DecodeError::MalformedVarInt)
        );
        assert_eq!(
            decode_varint(&[0xFF, 0x80, 0x00]),
            Err(DecodeError::MalformedVarInt)
        );
    }
}
