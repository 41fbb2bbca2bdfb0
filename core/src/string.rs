//! The MQTT UTF-8 string: shared bytes that are known to be valid.

use bytes::Bytes;
use core::fmt;

/// A UTF-8 encoded string as MQTT defines it (section 1.5.4 of 5.0, 1.5.3 of
/// 3.1.1): valid UTF-8, no U+0000, at most 65,535 bytes.
///
/// It shares its bytes with the packet it was decoded from, so topic names
/// and client identifiers are never copied on the way through the broker.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MqttStr(Bytes);

/// Why bytes are not an MQTT string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StrError {
    /// Not valid UTF-8 [MQTT-1.5.4-1].
    InvalidUtf8,
    /// Contains U+0000 [MQTT-1.5.4-2].
    NullCharacter,
    /// Longer than the 65,535 bytes a two-byte length prefix can express.
    TooLong,
    /// Contains a code point section 1.5.4 disallows: a control character
    /// (U+0001..U+001F, U+007F..U+009F) or a Unicode non-character. Only
    /// reported where the receiver chose to treat these as malformed (see
    /// [`MqttStr::has_disallowed_code_point`]).
    DisallowedCodePoint,
}

impl fmt::Display for StrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StrError::InvalidUtf8 => "string is not valid UTF-8 [MQTT-1.5.4-1]",
            StrError::NullCharacter => "string contains U+0000 [MQTT-1.5.4-2]",
            StrError::TooLong => "string is longer than 65535 bytes",
            StrError::DisallowedCodePoint => {
                "string contains a control character or non-character (section 1.5.4)"
            }
        })
    }
}

impl core::error::Error for StrError {}

impl MqttStr {
    /// The empty string.
    pub const EMPTY: MqttStr = MqttStr(Bytes::new());

    /// Validates `bytes` as an MQTT string without copying them.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, StrError> {
        if bytes.len() > u16::MAX as usize {
            return Err(StrError::TooLong);
        }
        // ASCII is by far the common case for topics and identifiers; checking
        // it first skips the full UTF-8 decoder.
        if bytes.is_ascii() {
            if bytes.contains(&0) {
                return Err(StrError::NullCharacter);
            }
        } else {
            let text = core::str::from_utf8(&bytes).map_err(|_| StrError::InvalidUtf8)?;
            if text.contains('\0') {
                return Err(StrError::NullCharacter);
            }
        }
        Ok(MqttStr(bytes))
    }

    /// Whether the string holds a code point that section 1.5.4 of MQTT 5
    /// (1.5.3 of 3.1.1) says senders should not use and a receiver may
    /// treat as malformed: U+0001..U+001F, U+007F..U+009F, and the Unicode
    /// non-characters (U+FDD0..U+FDEF and the last two code points of every
    /// plane, U+FFFE, U+FFFF, U+1FFFE...).
    pub fn has_disallowed_code_point(&self) -> bool {
        if self.0.is_ascii() {
            return self.0.iter().any(|&b| b < 0x20 || b == 0x7f);
        }
        self.as_str().chars().any(|c| {
            let c = u32::from(c);
            c < 0x20
                || (0x7f..=0x9f).contains(&c)
                || (0xfdd0..=0xfdef).contains(&c)
                || c & 0xfffe == 0xfffe
        })
    }

    /// Builds a string from a static literal.
    ///
    /// # Panics
    /// If `text` contains U+0000 or is longer than 65,535 bytes: only for
    /// literals written in code, never for input.
    pub fn from_static(text: &'static str) -> Self {
        match Self::from_bytes(Bytes::from_static(text.as_bytes())) {
            Ok(s) => s,
            // Only literals in code reach this; a bad one is a bug in roost.
            #[allow(clippy::panic)]
            Err(e) => panic!("invalid static MQTT string {text:?}: {e}"),
        }
    }

    /// Copies `text` into a new string.
    pub fn copy_from_str(text: &str) -> Result<Self, StrError> {
        Self::from_bytes(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// A copy with an allocation of its own, so that a long-lived string does
    /// not keep alive the (possibly much larger) buffer it was decoded from.
    pub fn detached(&self) -> Self {
        MqttStr(Bytes::copy_from_slice(&self.0))
    }

    /// The string's text.
    pub fn as_str(&self) -> &str {
        // The constructor validated the bytes, so this never falls back.
        core::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The string's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared bytes behind the string (a cheap reference-counted clone).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for MqttStr {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for MqttStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

// Hashing an MqttStr hashes its bytes as a slice, so maps keyed by MqttStr
// can be queried with a plain `&[u8]`.
impl core::borrow::Borrow<[u8]> for MqttStr {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<str> for MqttStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_null_and_bad_utf8() {
        assert_eq!(
            MqttStr::from_bytes(Bytes::from_static(b"a\0b")),
            Err(StrError::NullCharacter)
        );
        assert_eq!(
            MqttStr::from_bytes(Bytes::from_static(&[0xC3, 0x28])),
            Err(StrError::InvalidUtf8)
        );
        assert_eq!(
            MqttStr::from_bytes(Bytes::from_static("é\0".as_bytes())),
            Err(StrError::NullCharacter)
        );
        assert_eq!(MqttStr::from_static("héllo").as_str(), "héllo");
    }

    #[test]
    fn disallowed_code_points_are_the_ranges_of_section_1_5_4() {
        let disallowed = |c: char| {
            let mut buf = [0u8; 4];
            let text = MqttStr::copy_from_str(c.encode_utf8(&mut buf)).unwrap();
            text.has_disallowed_code_point()
        };
        for c in [
            '\u{1}', '\u{1f}', '\u{7f}', '\u{80}', '\u{9f}', '\u{fdd0}', '\u{fdef}',
        ]
        .into_iter()
        .chain(['\u{fffe}', '\u{ffff}', '\u{1fffe}', '\u{10ffff}'])
        {
            assert!(disallowed(c), "{c:?}");
        }
        for c in [
            ' ',
            '~',
            '\u{a0}',
            'é',
            '\u{fdcf}',
            '\u{fdf0}',
            '\u{fffd}',
            '\u{1fffd}',
        ] {
            assert!(!disallowed(c), "{c:?}");
        }
    }

    #[test]
    fn rejects_overlong() {
        let long = Bytes::from(alloc::vec![b'a'; 65_536]);
        assert_eq!(MqttStr::from_bytes(long), Err(StrError::TooLong));
    }
}
