//! Access control lists in Mosquitto's `acl_file` format.
//!
//! ```text
//! # Rules before any `user` line apply to anonymous clients.
//! topic read $SYS/#
//!
//! user alice
//! topic readwrite sensors/#
//! topic deny sensors/secret
//!
//! # `pattern` rules apply to every client, wherever they appear.
//! pattern write clients/%c/status
//! pattern readwrite users/%u/#
//! ```
//!
//! Semantics, chosen to be Mosquitto's where Mosquitto defines them:
//!
//! * `read` grants [`Access::Subscribe`] (and delivery), `write` grants
//!   [`Access::Publish`], `readwrite` both; the access word may be omitted and
//!   then means `readwrite`.
//! * Anything not granted is denied. A matching `deny` rule wins over any
//!   grant, whatever the order of the lines (Mosquitto's result depends on the
//!   order; roost's does not).
//! * `%u` is the user name and `%c` the client id, both replaced in one pass
//!   (a user named `%c` is not given the client id's rights). A `pattern`
//!   rule is skipped when the identity it needs is missing (`%u` for an
//!   anonymous client) or contains `+`, `#`, `/`, NUL or another control
//!   character, so a client cannot widen its own access by choosing its
//!   name.
//! * Subscriptions are allowed when the rule covers every topic the filter can
//!   match: rule `a/#` allows `a/+/b`, rule `a/+` does not allow `a/#`.
//!   Rules starting with a wildcard never cover `$`-topics, as in
//!   topic matching ([MQTT-4.7.2-1]). `$share/GROUP/` is stripped from
//!   subscribe checks, so a shared subscription needs the same rights as the
//!   plain one.
//! * Lines starting with `#` are comments. A `#` later in a line is part of
//!   the topic, because topics use `#` as the multi-level wildcard.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Publish to a topic name (needs `write`).
    Publish,
    /// Subscribe to a topic filter, or receive a message on a topic name
    /// (needs `read`).
    Subscribe,
}

/// The access word of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Grant::Read | Grant::ReadWrite, Access::Subscribe)
                | (Grant::Write | Grant::ReadWrite, Access::Publish)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    grant: Grant,
    pattern: String,
}

/// A parsed ACL file. Build with [`Acl::parse`] or [`Acl::load`]; ask with
/// [`Acl::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

/// Why an ACL file could not be loaded.
#[derive(Debug)]
#[non_exhaustive]
pub enum AclError {
    /// The file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A line is malformed.
    Syntax {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: AclProblem,
    },
}

/// What is wrong with one line of an ACL file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AclProblem {
    /// The first word is not `user`, `topic` or `pattern`.
    UnknownKeyword(String),
    /// `user` without a name.
    MissingUser,
    /// `topic`/`pattern` without a topic.
    MissingTopic,
    /// The topic is not a valid MQTT topic filter.
    InvalidTopic(&'static str),
}

impl fmt::Display for AclProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AclProblem::UnknownKeyword(word) => write!(
                f,
                "unknown keyword {word:?} (expected user, topic or pattern)"
            ),
            AclProblem::MissingUser => f.write_str("user needs a name"),
            AclProblem::MissingTopic => f.write_str("rule needs a topic"),
            AclProblem::InvalidTopic(why) => write!(f, "invalid topic: {why}"),
        }
    }
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AclError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            AclError::Syntax {
                path,
                line,
                problem,
            } => {
                if let Some(path) = path {
                    write!(f, "{}:", path.display())?;
                }
                write!(f, "line {line}: {problem}")
            }
        }
    }
}

impl std::error::Error for AclError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AclError::Io { source, .. } => Some(source),
            AclError::Syntax { .. } => None,
        }
    }
}

impl Acl {
    /// Reads and parses an ACL file.
    pub fn load(path: impl AsRef<Path>) -> Result<Acl, AclError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Acl::parse(&text).map_err(|err| match err {
            AclError::Syntax { line, problem, .. } => AclError::Syntax {
                path: Some(path.to_path_buf()),
                line,
                problem,
            },
            other => other,
        })
    }

    /// Parses the text of an ACL file; errors carry the 1-based line number.
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut current_user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let fail = |problem| AclError::Syntax {
                path: None,
                line: index + 1,
                problem,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(fail(AclProblem::MissingUser));
                    }
                    acl.users.entry(rest.to_owned()).or_default();
                    current_user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let (word, after) = split_word(rest);
                    let (grant, pattern) = match word {
                        "read" => (Grant::Read, after),
                        "write" => (Grant::Write, after),
                        "readwrite" => (Grant::ReadWrite, after),
                        "deny" => (Grant::Deny, after),
                        _ => (Grant::ReadWrite, rest),
                    };
                    if pattern.is_empty() {
                        return Err(fail(AclProblem::MissingTopic));
                    }
                    validate_filter(pattern).map_err(|why| fail(AclProblem::InvalidTopic(why)))?;
                    let rule = Rule {
                        grant,
                        pattern: pattern.to_owned(),
                    };
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(user) = &current_user {
                        acl.users.entry(user.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                other => return Err(fail(AclProblem::UnknownKeyword(other.to_owned()))),
            }
        }
        Ok(acl)
    }

    /// Whether `user` (None for an anonymous client) connected as `client_id`
    /// may publish to `topic_or_filter` ([`Access::Publish`]) or subscribe to
    /// it ([`Access::Subscribe`]). Anything no rule grants is denied.
    pub fn check(
        &self,
        user: Option<&str>,
        client_id: &str,
        topic_or_filter: &str,
        access: Access,
    ) -> bool {
        let wanted = match access {
            Access::Publish => {
                // A topic name with wildcards is a protocol error, never a grant.
                if topic_or_filter.contains(['+', '#']) || topic_or_filter.is_empty() {
                    return false;
                }
                topic_or_filter
            }
            Access::Subscribe => {
                let filter = strip_share(topic_or_filter);
                if validate_filter(filter).is_err() {
                    return false;
                }
                filter
            }
        };

        let fixed = match user {
            Some(name) => self.users.get(name).map(Vec::as_slice).unwrap_or(&[]),
            None => &self.anonymous,
        };
        let mut granted = false;
        for rule in fixed {
            if covers(&rule.pattern, wanted) {
                if rule.grant == Grant::Deny {
                    return false;
                }
                granted |= rule.grant.allows(access);
            }
        }
        for rule in &self.patterns {
            let Some(pattern) = substitute(&rule.pattern, user, client_id) else {
                continue;
            };
            if covers(&pattern, wanted) {
                if rule.grant == Grant::Deny {
                    return false;
                }
                granted |= rule.grant.allows(access);
            }
        }
        granted
    }
}

/// Splits off the first whitespace-separated word; the rest is trimmed.
fn split_word(s: &str) -> (&str, &str) {
    match s.find(char::is_whitespace) {
        Some(at) => (&s[..at], s[at..].trim()),
        None => (s, ""),
    }
}

/// `$share/GROUP/FILTER` → `FILTER`; anything else unchanged.
fn strip_share(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, inner)| inner)
}

/// Whether `id` may be put into a pattern: substituting it must never make
/// the rule cover more than the one level its placeholder stands for. A `/`
/// would add levels, `+` or `#` would turn into wildcards, and NUL or another
/// control character cannot appear in a topic a client may use anyway.
fn substitutable(id: &str) -> bool {
    !id.is_empty()
        && !id
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#') || c.is_control())
}

/// Replaces `%u` and `%c` in one pass over `pattern`, so text that came from
/// one identity is never scanned for the other's placeholder (a user named
/// `%c` must not become the client id). `None` when the rule cannot apply to
/// this client: it needs an identity that is missing (`%u` for an anonymous
/// client) or not [`substitutable`].
fn substitute(pattern: &str, user: Option<&str>, client_id: &str) -> Option<String> {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let value = match after.as_bytes().first() {
            Some(b'u') => Some(user.filter(|u| substitutable(u))?),
            Some(b'c') => Some(Some(client_id).filter(|c| substitutable(c))?),
            _ => None,
        };
        match value {
            Some(value) => {
                out.push_str(value);
                rest = &after[1..];
            }
            None => {
                out.push('%');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Some(out)
}

/// Checks the MQTT topic filter rules: non-empty, `#` only as the whole last
/// level, `+` only as a whole level.
pub(crate) fn validate_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("empty");
    }
    if filter.contains('\0') {
        return Err("contains NUL");
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err("'#' must be a whole level and the last one");
        }
        if level.contains('+') && level != "+" {
            return Err("'+' must be a whole level");
        }
    }
    Ok(())
}

/// Whether every topic that `inner` matches is matched by `outer`. With a
/// topic name as `inner` this is ordinary MQTT topic matching: `+` is one
/// level, `#` the rest including the parent level, and wildcards at the start
/// never match a `$`-topic.
pub(crate) fn covers(outer: &str, inner: &str) -> bool {
    if inner.starts_with('$') && outer.starts_with(['+', '#']) {
        return false;
    }
    let mut outer_levels = outer.split('/');
    let mut inner_levels = inner.split('/');
    loop {
        match (outer_levels.next(), inner_levels.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(o), Some(i)) => {
                if o != i || i == "+" {
                    return false;
                }
            }
            // `a/#` also matches `a`: the inner side ran out exactly where the
            // outer one has a final `#`.
            (Some(o), None) => return o == "#" && outer_levels.next().is_none(),
            (None, Some(_)) => return false,
            (None, None) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite sensors/#
topic deny sensors/secret
topic write commands/+

user bob
topic sensors/bob

pattern write clients/%c/status
pattern readwrite users/%u/#
";

    fn acl() -> Acl {
        Acl::parse(EXAMPLE).expect("example parses")
    }

    #[test]
    fn topic_matching() {
        assert!(covers("a/b", "a/b"));
        assert!(!covers("a/b", "a/c"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a/b/c"));
        assert!(!covers("a/+", "a"));
        assert!(covers("a/+", "a/"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/b/c"));
        assert!(covers("#", "a/b"));
        assert!(covers("+/+", "/x"));
        assert!(!covers("#", "$SYS/broker"));
        assert!(!covers("+/broker", "$SYS/broker"));
        assert!(covers("$SYS/#", "$SYS/broker"));
        assert!(!covers("a/b", "a/b/c"));
    }

    #[test]
    fn filter_coverage() {
        assert!(covers("a/#", "a/+/b"));
        assert!(covers("a/#", "a/#"));
        assert!(covers("a/#", "a"));
        assert!(!covers("a/+", "a/#"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/b", "a/+"));
        assert!(covers("+/b", "x/b"));
        assert!(covers("#", "#"));
        assert!(!covers("#", "$SYS/#"));
        assert!(!covers("a/+/c", "a/+/#"));
        assert!(covers("a/+/#", "a/+/c/#"));
    }

    #[test]
    fn anonymous_rules_apply_only_to_anonymous_clients() {
        let acl = acl();
        assert!(acl.check(None, "c1", "public/news", Access::Subscribe));
        assert!(!acl.check(None, "c1", "public/news", Access::Publish));
        assert!(!acl.check(Some("alice"), "c1", "public/news", Access::Subscribe));
    }

    #[test]
    fn user_rules_and_deny() {
        let acl = acl();
        assert!(acl.check(Some("alice"), "c", "sensors/t1", Access::Publish));
        assert!(acl.check(Some("alice"), "c", "sensors/+/t", Access::Subscribe));
        assert!(!acl.check(Some("alice"), "c", "sensors/secret", Access::Subscribe));
        assert!(!acl.check(Some("alice"), "c", "sensors/secret", Access::Publish));
        assert!(acl.check(Some("alice"), "c", "commands/x", Access::Publish));
        assert!(!acl.check(Some("alice"), "c", "commands/x", Access::Subscribe));
        assert!(!acl.check(Some("alice"), "c", "commands/#", Access::Subscribe));
        // The default access word is readwrite.
        assert!(acl.check(Some("bob"), "c", "sensors/bob", Access::Publish));
        assert!(acl.check(Some("bob"), "c", "sensors/bob", Access::Subscribe));
        assert!(!acl.check(Some("bob"), "c", "sensors/t1", Access::Subscribe));
        assert!(!acl.check(Some("mallory"), "c", "sensors/t1", Access::Subscribe));
    }

    #[test]
    fn deny_wins_even_under_a_wider_subscription() {
        // `sensors/#` would deliver `sensors/secret`; a deny rule the filter
        // overlaps does not block the subscribe itself (delivery is checked per
        // topic), but a filter the deny rule covers is refused.
        let acl = acl();
        assert!(acl.check(Some("alice"), "c", "sensors/#", Access::Subscribe));
        assert!(!acl.check(Some("alice"), "c", "sensors/secret", Access::Subscribe));
    }

    #[test]
    fn patterns_substitute_and_refuse_wildcard_identities() {
        let acl = acl();
        assert!(acl.check(
            Some("carol"),
            "dev7",
            "clients/dev7/status",
            Access::Publish
        ));
        assert!(!acl.check(
            Some("carol"),
            "dev7",
            "clients/dev8/status",
            Access::Publish
        ));
        assert!(acl.check(None, "dev7", "clients/dev7/status", Access::Publish));
        assert!(acl.check(Some("carol"), "x", "users/carol/a/b", Access::Subscribe));
        assert!(!acl.check(None, "x", "users//a", Access::Subscribe));
        // Identities that would widen the pattern are refused.
        assert!(!acl.check(Some("#"), "x", "users/a/b", Access::Subscribe));
        assert!(!acl.check(Some("+"), "x", "users/a", Access::Publish));
        assert!(!acl.check(Some("a/b"), "x", "users/a/b/c", Access::Publish));
        assert!(!acl.check(Some("c"), "+", "clients/x/status", Access::Publish));
        assert!(!acl.check(Some("c"), "#", "clients/#", Access::Subscribe));
    }

    #[test]
    fn substitution_is_one_pass() {
        // A user named `%c` must not pick up the client id's level: before
        // one-pass substitution, `users/%u/#` became `users/%c/#`, then
        // `users/bob/#`.
        let acl = Acl::parse("pattern readwrite users/%u/#\n").expect("parses");
        assert!(!acl.check(Some("%c"), "bob", "users/bob/x", Access::Publish));
        assert!(!acl.check(Some("%c"), "bob", "users/bob/#", Access::Subscribe));
        // The name is taken literally instead.
        assert!(acl.check(Some("%c"), "bob", "users/%c/x", Access::Publish));

        // Both placeholders in one rule, each identity looking like the other.
        let acl = Acl::parse("pattern write %c/%u/x\n").expect("parses");
        assert!(acl.check(Some("%c"), "%u", "%u/%c/x", Access::Publish));
        assert!(!acl.check(Some("%c"), "%u", "%u/%u/x", Access::Publish));
        assert!(!acl.check(Some("%u"), "%c", "%c/%c/x", Access::Publish));
        assert!(acl.check(Some("ann"), "dev", "dev/ann/x", Access::Publish));

        // A `%` before anything else is literal.
        let acl = Acl::parse("pattern write a%b/%%u/%\n").expect("parses");
        assert!(acl.check(Some("ann"), "c", "a%b/%ann/%", Access::Publish));
    }

    #[test]
    fn identities_with_topic_syntax_or_control_characters_never_match_patterns() {
        let acl = Acl::parse("pattern readwrite users/%u/#\npattern readwrite dev/%c/#\n")
            .expect("parses");
        // Sanity: the plain identities are granted.
        assert!(acl.check(Some("ann"), "d1", "users/ann/t", Access::Publish));
        assert!(acl.check(Some("ann"), "d1", "dev/d1/t", Access::Publish));
        for bad in [
            "/", "+", "#", "\0", "\n", "\r", "\t", "\x01", "\x7f", "\u{85}",
        ] {
            let name = format!("a{bad}b");
            // The topic the substituted rule would have granted, made of
            // what the identity looks like. None may be granted.
            let as_user = format!("users/{name}/t");
            let as_client = format!("dev/{name}/t");
            for (topic, access) in [(&as_user, Access::Publish), (&as_user, Access::Subscribe)] {
                assert!(
                    !acl.check(Some(&name), "d1", topic, access),
                    "user {name:?} on {topic:?}"
                );
            }
            for (topic, access) in [
                (&as_client, Access::Publish),
                (&as_client, Access::Subscribe),
            ] {
                assert!(
                    !acl.check(Some("ann"), &name, topic, access),
                    "client id {name:?} on {topic:?}"
                );
            }
            // The whole rule is skipped, not just the odd topic: the same
            // client is not granted its plain level either.
            assert!(!acl.check(Some(&name), "d1", "users/a/t", Access::Publish));
            assert!(!acl.check(Some("ann"), &name, "dev/a/t", Access::Publish));
            // The other rule, whose identity is fine, still applies.
            assert!(acl.check(Some(&name), "d1", "dev/d1/t", Access::Publish));
            assert!(acl.check(Some("ann"), &name, "users/ann/t", Access::Publish));
        }
    }

    #[test]
    fn malformed_requests_are_denied() {
        let acl = Acl::parse("topic #\n").expect("parses");
        assert!(acl.check(None, "c", "a/b", Access::Publish));
        assert!(!acl.check(None, "c", "a/+", Access::Publish));
        assert!(!acl.check(None, "c", "", Access::Publish));
        assert!(!acl.check(None, "c", "a/#/b", Access::Subscribe));
        assert!(!acl.check(None, "c", "$SYS/uptime", Access::Subscribe));
    }

    #[test]
    fn shared_subscriptions_are_checked_on_the_inner_filter() {
        let acl = acl();
        assert!(acl.check(Some("alice"), "c", "$share/g/sensors/#", Access::Subscribe));
        assert!(!acl.check(Some("alice"), "c", "$share/g/other/#", Access::Subscribe));
    }

    #[test]
    fn empty_acl_denies_everything() {
        let acl = Acl::parse("# nothing\n\n").expect("parses");
        assert!(!acl.check(None, "c", "a", Access::Publish));
        assert!(!acl.check(Some("u"), "c", "a", Access::Subscribe));
    }

    #[test]
    fn topics_may_contain_spaces_and_hashes_are_wildcards_not_comments() {
        let acl = Acl::parse("topic read room 1/#\n").expect("parses");
        assert!(acl.check(None, "c", "room 1/temp", Access::Subscribe));
    }

    #[test]
    fn errors_name_the_line() {
        let err = Acl::parse("topic a\nuser\n").expect_err("bad");
        assert_eq!(err.to_string(), "line 2: user needs a name");
        let err = Acl::parse("\n\nfoo bar\n").expect_err("bad");
        assert!(
            err.to_string()
                .starts_with("line 3: unknown keyword \"foo\"")
        );
        let err = Acl::parse("topic read\n").expect_err("bad");
        assert_eq!(err.to_string(), "line 1: rule needs a topic");
        let err = Acl::parse("topic read a/#/b\n").expect_err("bad");
        assert_eq!(
            err.to_string(),
            "line 1: invalid topic: '#' must be a whole level and the last one"
        );
        let err = Acl::parse("pattern write a+\n").expect_err("bad");
        assert!(matches!(
            err,
            AclError::Syntax {
                line: 1,
                problem: AclProblem::InvalidTopic(_),
                ..
            }
        ));
    }

    #[test]
    fn load_names_the_file() {
        let err = Acl::load("/nonexistent/roost.acl").expect_err("missing");
        assert!(err.to_string().starts_with("/nonexistent/roost.acl: "));
    }
}
