//! Topic names, topic filters and the rules that match one against the other.
//!
//! Both types are validated on construction, so code that holds a
//! [`TopicName`] never needs to ask whether it has wildcards in it.

use crate::MqttStr;
use bytes::Bytes;
use core::fmt;

pub mod trie;
pub use trie::{SubscriptionTrie, TopicMap, Walked};

/// Why a string is not a valid topic name or filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicError {
    /// A topic name or filter must be at least one character long
    /// [MQTT-4.7.3-1].
    Empty,
    /// A topic name contains `+` or `#` [MQTT-4.7.0-1].
    WildcardInName,
    /// `#` is not the last character of the filter, or shares its level with
    /// other characters [MQTT-4.7.1-2].
    MisplacedMultiLevelWildcard,
    /// `+` shares its level with other characters [MQTT-4.7.1-3].
    MisplacedSingleLevelWildcard,
    /// A `$share/` filter without a valid share name and filter
    /// [MQTT-4.8.2-1], [MQTT-4.8.2-2].
    InvalidSharedSubscription,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopicError::Empty => "topic is empty [MQTT-4.7.3-1]",
            TopicError::WildcardInName => "topic name contains a wildcard [MQTT-4.7.0-1]",
            TopicError::MisplacedMultiLevelWildcard => {
                "'#' must be alone in the last level of a filter [MQTT-4.7.1-2]"
            }
            TopicError::MisplacedSingleLevelWildcard => {
                "'+' must be alone in its level of a filter [MQTT-4.7.1-3]"
            }
            TopicError::InvalidSharedSubscription => {
                "a shared subscription needs '$share/<name>/<filter>' with a name free of '/', '+' and '#' [MQTT-4.8.2-1]"
            }
        })
    }
}

impl core::error::Error for TopicError {}

/// A topic name: what a PUBLISH is sent to. Never contains wildcards.
///
/// The only empty topic name is the one of an MQTT 5 PUBLISH that names its
/// topic by alias alone; the engine replaces it before routing.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TopicName(MqttStr);

impl TopicName {
    /// Validates a topic name (non-empty, no wildcards).
    pub fn new(name: MqttStr) -> Result<Self, TopicError> {
        if name.is_empty() {
            return Err(TopicError::Empty);
        }
        Self::new_allow_empty(name)
    }

    /// Validates a topic name that may be empty because a topic alias stands
    /// in for it (MQTT 5 section 3.3.2.3.4).
    pub fn new_allow_empty(name: MqttStr) -> Result<Self, TopicError> {
        if name.as_bytes().iter().any(|&b| b == b'+' || b == b'#') {
            return Err(TopicError::WildcardInName);
        }
        Ok(TopicName(name))
    }

    /// Builds a topic name from a literal.
    ///
    /// # Panics
    /// If `name` is not a valid topic name: only for literals in code.
    pub fn from_static(name: &'static str) -> Self {
        match Self::new(MqttStr::from_static(name)) {
            Ok(t) => t,
            // Only literals in code reach this; a bad one is a bug in roost.
            #[allow(clippy::panic)]
            Err(e) => panic!("invalid static topic name {name:?}: {e}"),
        }
    }

    /// Copies and validates `name`.
    pub fn copy_from_str(name: &str) -> Result<Self, TopicError> {
        let s = MqttStr::copy_from_str(name).map_err(|_| TopicError::Empty)?;
        Self::new(s)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// A copy with bytes of its own (see [`MqttStr::detached`]).
    pub fn detached(&self) -> Self {
        TopicName(self.0.detached())
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The validated string behind the name.
    pub fn as_mqtt_str(&self) -> &MqttStr {
        &self.0
    }

    /// The shared bytes behind the name.
    pub fn bytes(&self) -> &Bytes {
        self.0.bytes()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether this is the empty name of an alias-only PUBLISH.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the topic starts with `$` (such as `$SYS/...`): filters that
    /// start with a wildcard do not match it [MQTT-4.7.2-1].
    pub fn is_dollar(&self) -> bool {
        self.0.as_bytes().first() == Some(&b'$')
    }

    /// The levels of the name, split at `/`.
    pub fn levels(&self) -> impl Iterator<Item = &[u8]> {
        self.0.as_bytes().split(|&b| b == b'/')
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A topic filter: what a SUBSCRIBE asks for, possibly with `+` and `#`.
///
/// A `$share/{name}/{filter}` string is a valid filter too; use
/// [`TopicFilter::shared`] to split it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicFilter(MqttStr);

impl TopicFilter {
    /// Validates a topic filter.
    pub fn new(filter: MqttStr) -> Result<Self, TopicError> {
        validate_filter(filter.as_bytes())?;
        let filter = TopicFilter(filter);
        if filter.as_bytes().starts_with(SHARE_PREFIX) {
            filter.shared()?;
        }
        Ok(filter)
    }

    /// Builds a filter from a literal.
    ///
    /// # Panics
    /// If `filter` is not a valid topic filter: only for literals in code.
    pub fn from_static(filter: &'static str) -> Self {
        match Self::new(MqttStr::from_static(filter)) {
            Ok(t) => t,
            // Only literals in code reach this; a bad one is a bug in roost.
            #[allow(clippy::panic)]
            Err(e) => panic!("invalid static topic filter {filter:?}: {e}"),
        }
    }

    /// Copies and validates `filter`.
    pub fn copy_from_str(filter: &str) -> Result<Self, TopicError> {
        let s = MqttStr::copy_from_str(filter).map_err(|_| TopicError::Empty)?;
        Self::new(s)
    }

    /// The filter as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The filter's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The validated string behind the filter.
    pub fn as_mqtt_str(&self) -> &MqttStr {
        &self.0
    }

    /// Whether the filter contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.0.as_bytes().iter().any(|&b| b == b'+' || b == b'#')
    }

    /// The levels of the filter, split at `/`.
    pub fn levels(&self) -> impl Iterator<Item = &[u8]> {
        self.0.as_bytes().split(|&b| b == b'/')
    }

    /// Splits a shared subscription `$share/{name}/{filter}` into its share
    /// name and the filter that selects messages; `Ok(None)` for an ordinary
    /// filter.
    pub fn shared(&self) -> Result<Option<(MqttStr, TopicFilter)>, TopicError> {
        let bytes = self.0.bytes();
        if !bytes.starts_with(SHARE_PREFIX) {
            return Ok(None);
        }
        let rest = bytes.slice(SHARE_PREFIX.len()..);
        let slash = rest
            .iter()
            .position(|&b| b == b'/')
            .ok_or(TopicError::InvalidSharedSubscription)?;
        let name = rest.slice(..slash);
        let inner = rest.slice(slash + 1..);
        if name.is_empty() || name.iter().any(|&b| b == b'+' || b == b'#') || inner.is_empty() {
            return Err(TopicError::InvalidSharedSubscription);
        }
        // Both halves are sub-slices of a valid string split at an ASCII '/',
        // so they are valid strings too; re-validating keeps this total.
        let name = MqttStr::from_bytes(name).map_err(|_| TopicError::InvalidSharedSubscription)?;
        let inner =
            MqttStr::from_bytes(inner).map_err(|_| TopicError::InvalidSharedSubscription)?;
        validate_filter(inner.as_bytes())?;
        Ok(Some((name, TopicFilter(inner))))
    }

    /// Whether this filter matches `topic`, by the rules of MQTT section 4.7.
    ///
    /// This is the reference definition, linear in the filter's length. The
    /// broker routes with the subscription trie instead.
    pub fn matches(&self, topic: &TopicName) -> bool {
        matches(self.as_bytes(), topic.as_bytes())
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

const SHARE_PREFIX: &[u8] = b"$share/";

fn validate_filter(filter: &[u8]) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split(|&b| b == b'/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains(&b'#') && (level != b"#" || !last) {
            return Err(TopicError::MisplacedMultiLevelWildcard);
        }
        if level.contains(&b'+') && level != b"+" {
            return Err(TopicError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

/// The order in which a [`TopicMap`] walk visits topics: level by level,
/// each level byte-wise, a topic before the topics below it (`a` < `a/b` <
/// `a/c` < `b`).
pub fn topic_order(a: &[u8], b: &[u8]) -> core::cmp::Ordering {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

/// Whether `filter` matches `topic` (both as bytes, already validated).
///
/// - `+` matches exactly one level, `#` the rest, including the parent level
///   (`a/#` matches `a`) [MQTT-4.7.1-2];
/// - a filter that starts with a wildcard does not match a topic that starts
///   with `$` [MQTT-4.7.2-1].
pub fn matches(filter: &[u8], topic: &[u8]) -> bool {
    if topic.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
        return false;
    }
    let mut f = filter.split(|&b| b == b'/');
    let mut t = topic.split(|&b| b == b'/');
    loop {
        match (f.next(), t.next()) {
            (Some(b"#"), _) => return true,
            (Some(b"+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(s: &str) -> Result<TopicFilter, TopicError> {
        TopicFilter::copy_from_str(s)
    }

    #[test]
    fn filter_validation_follows_section_4_7() {
        for ok in [
            "#",
            "+",
            "a/#",
            "+/+",
            "/+",
            "a//b",
            "sport/+/player1",
            "$SYS/#",
        ] {
            assert!(filter(ok).is_ok(), "{ok} should be valid");
        }
        assert_eq!(filter(""), Err(TopicError::Empty));
        assert_eq!(
            filter("a/#/b"),
            Err(TopicError::MisplacedMultiLevelWildcard)
        );
        assert_eq!(filter("a#"), Err(TopicError::MisplacedMultiLevelWildcard));
        assert_eq!(filter("a+"), Err(TopicError::MisplacedSingleLevelWildcard));
        assert_eq!(
            filter("+a/b"),
            Err(TopicError::MisplacedSingleLevelWildcard)
        );
    }

    #[test]
    fn names_reject_wildcards_and_empty() {
        assert_eq!(
            TopicName::copy_from_str("a/+"),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(
            TopicName::copy_from_str("#"),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(TopicName::copy_from_str(""), Err(TopicError::Empty));
        assert!(TopicName::copy_from_str("/").is_ok());
    }

    #[test]
    fn matching_examples_from_the_specification() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/tournament", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("#", "$SYS/broker", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
        ];
        for (f, t, want) in cases {
            let f = filter(f).unwrap();
            let t = TopicName::copy_from_str(t).unwrap();
            assert_eq!(f.matches(&t), want, "{f} vs {t}");
        }
    }

    #[test]
    fn shared_subscriptions_split() {
        let (name, inner) = filter("$share/g1/a/+").unwrap().shared().unwrap().unwrap();
        assert_eq!(name, "g1");
        assert_eq!(inner.as_str(), "a/+");
        assert_eq!(
            filter("$share/g1"),
            Err(TopicError::InvalidSharedSubscription)
        );
        assert_eq!(
            filter("$share//a"),
            Err(TopicError::InvalidSharedSubscription)
        );
        assert_eq!(
            filter("$share/g+/a"),
            Err(TopicError::MisplacedSingleLevelWildcard)
        );
        assert_eq!(
            filter("$share/g/"),
            Err(TopicError::InvalidSharedSubscription)
        );
        assert!(filter("a/b").unwrap().shared().unwrap().is_none());
    }
}
