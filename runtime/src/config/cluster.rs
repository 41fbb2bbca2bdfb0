//! `[cluster]`: this broker as one node of a roost cluster joined through
//! NATS (see [`crate::cluster`]).

use super::{ConfigError, ranged};
use serde::Deserialize;
use std::path::PathBuf;

/// The `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// NATS servers to connect to (`nats://host:port`, or `tls://`), tried
    /// in turn; more are learnt from a NATS cluster itself.
    pub urls: Vec<String>,
    /// This node's name, unique in the cluster (letters, digits, `-`, `_`).
    pub node: String,
    /// The first token of every NATS subject the cluster uses, so that
    /// several roost clusters can share one NATS.
    pub prefix: String,
    /// NATS user name and password.
    pub user: Option<(String, String)>,
    /// NATS token.
    pub token: Option<String>,
    /// A NATS credentials file (JWT and NKey seed).
    pub credentials: Option<PathBuf>,
    /// CA certificates (PEM) for TLS to NATS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for TLS to NATS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Require TLS to NATS.
    pub require_tls: bool,
    /// The listener whose ACL applies to messages other nodes forward here
    /// (the publisher's client identifier and user name are checked as on
    /// that listener).
    pub acl_listener: u16,
    /// Messages that may wait between the broker's loop and NATS, in each
    /// direction (see [`crate::cluster`] for what happens at the bound).
    pub queue: usize,
    /// Keep retained messages cluster-wide in a JetStream key-value bucket
    /// (needs JetStream on the NATS servers).
    pub retained: bool,
    /// JetStream replicas of the retained bucket (1 to 5; at most the
    /// number of NATS servers).
    pub replicas: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    urls: Option<Vec<String>>,
    node: Option<String>,
    prefix: Option<String>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    credentials: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    require_tls: Option<bool>,
    acl_listener: Option<i64>,
    queue: Option<i64>,
    retained: Option<String>,
    replicas: Option<i64>,
    sessions: Option<String>,
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("cluster.{key}"),
        problem: problem.into(),
    }
}

pub(super) fn cluster_from_raw(
    raw: Option<RawCluster>,
    listeners: usize,
) -> Result<Option<Box<Cluster>>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let urls = raw.urls.unwrap_or_default();
    if urls.is_empty() {
        return Err(ConfigError::Required {
            key: "cluster.urls".into(),
            because: "to join a cluster (the NATS servers)".into(),
        });
    }
    for url in &urls {
        let scheme_ok =
            ["nats://", "tls://"].iter().any(|s| url.starts_with(s)) || !url.contains("://");
        if !scheme_ok || url.trim().is_empty() {
            return Err(invalid(
                "urls",
                format!("{url:?}: expected nats://host:port, tls://host:port or host:port"),
            ));
        }
    }
    let Some(node) = raw.node else {
        return Err(ConfigError::Required {
            key: "cluster.node".into(),
            because: "to join a cluster (this node's unique name)".into(),
        });
    };
    if !name_ok(&node) {
        return Err(invalid(
            "node",
            "1 to 64 letters, digits, '-' or '_' (it is a NATS subject token)",
        ));
    }
    let prefix = raw.prefix.unwrap_or_else(|| "roost".into());
    if !name_ok(&prefix) {
        return Err(invalid(
            "prefix",
            "1 to 64 letters, digits, '-' or '_' (it is a NATS subject token)",
        ));
    }
    let user = match (raw.user, raw.password) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::Required {
                key: "cluster.password".into(),
                because: "with cluster.user".into(),
            });
        }
        (None, Some(_)) => {
            return Err(ConfigError::Required {
                key: "cluster.user".into(),
                because: "with cluster.password".into(),
            });
        }
    };
    let methods = usize::from(user.is_some())
        + usize::from(raw.token.is_some())
        + usize::from(raw.credentials.is_some());
    if methods > 1 {
        return Err(invalid(
            "credentials",
            "use one of user/password, token or credentials",
        ));
    }
    let tls_client = match (raw.tls_cert, raw.tls_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::Required {
                key: "cluster.tls_key".into(),
                because: "with cluster.tls_cert".into(),
            });
        }
        (None, Some(_)) => {
            return Err(ConfigError::Required {
                key: "cluster.tls_cert".into(),
                because: "with cluster.tls_key".into(),
            });
        }
    };
    let last_listener = i64::try_from(listeners.saturating_sub(1)).unwrap_or(0);
    let acl_listener: u16 = ranged(
        raw.acl_listener,
        "cluster.acl_listener",
        0,
        last_listener,
        0,
    )?;
    let queue: usize = ranged(raw.queue, "cluster.queue", 16, 1 << 20, 8192)?;
    let retained = match raw.retained.as_deref() {
        None | Some("jetstream") => true,
        Some("local") => false,
        Some(other) => {
            return Err(invalid(
                "retained",
                format!("{other:?}: expected \"jetstream\" or \"local\""),
            ));
        }
    };
    let replicas: usize = ranged(raw.replicas, "cluster.replicas", 1, 5, 1)?;
    match raw.sessions.as_deref() {
        None | Some("local") => {}
        Some("jetstream") => {
            return Err(invalid(
                "sessions",
                "\"jetstream\" (sessions that survive a node) is not implemented yet; \
                 only \"local\" is",
            ));
        }
        Some(other) => {
            return Err(invalid(
                "sessions",
                format!("{other:?}: expected \"local\""),
            ));
        }
    }
    Ok(Some(Box::new(Cluster {
        urls,
        node,
        prefix,
        user,
        token: raw.token,
        credentials: raw.credentials,
        tls_ca: raw.tls_ca,
        tls_client,
        require_tls: raw.require_tls.unwrap_or(false),
        acl_listener,
        queue,
        retained,
        replicas,
    })))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(text: &str) -> String {
        Config::from_toml_str(text)
            .expect_err("should be invalid")
            .to_string()
    }

    const BASE: &str =
        "[cluster]\nurls = [\"nats://127.0.0.1:4222\", \"tls://n2:4222\"]\nnode = \"a-1\"\n";

    #[test]
    fn without_the_table_there_is_no_cluster() {
        assert_eq!(Config::from_toml_str("").expect("empty").cluster, None);
    }

    #[test]
    fn the_table_with_its_defaults() {
        let config = Config::from_toml_str(BASE).expect("valid");
        let c = config.cluster.expect("configured");
        assert_eq!(c.urls.len(), 2);
        assert_eq!(c.node, "a-1");
        assert_eq!(c.prefix, "roost");
        assert_eq!(c.queue, 8192);
        assert!(c.retained);
        assert_eq!(c.replicas, 1);
        assert_eq!(c.acl_listener, 0);
        assert_eq!(c.user, None);
    }

    #[test]
    fn what_is_missing_wrong_or_not_built_is_refused_by_name() {
        assert!(err("[cluster]\nnode = \"a\"\n").contains("cluster.urls"));
        assert!(err("[cluster]\nurls = []\nnode = \"a\"\n").contains("cluster.urls"));
        assert!(err("[cluster]\nurls = [\"n:4222\"]\n").contains("cluster.node"));
        assert!(err("[cluster]\nurls = [\"http://n\"]\nnode = \"a\"\n").contains("cluster.urls"));
        assert!(err("[cluster]\nurls = [\"n:4222\"]\nnode = \"a.b\"\n").contains("cluster.node"));
        assert!(err(&format!("{BASE}prefix = \"r>\"\n")).contains("cluster.prefix"));
        assert!(err(&format!("{BASE}user = \"u\"\n")).contains("cluster.password"));
        assert!(
            err(&format!(
                "{BASE}user = \"u\"\npassword = \"p\"\ntoken = \"t\"\n"
            ))
            .contains("one of")
        );
        assert!(err(&format!("{BASE}tls_cert = \"c.pem\"\n")).contains("cluster.tls_key"));
        assert!(err(&format!("{BASE}acl_listener = 1\n")).contains("cluster.acl_listener"));
        assert!(err(&format!("{BASE}queue = 1\n")).contains("cluster.queue"));
        assert!(err(&format!("{BASE}replicas = 7\n")).contains("cluster.replicas"));
        assert!(err(&format!("{BASE}retained = \"redis\"\n")).contains("cluster.retained"));
        let not_built = err(&format!("{BASE}sessions = \"jetstream\"\n"));
        assert!(not_built.contains("not implemented"), "{not_built}");
        assert!(err(&format!("{BASE}reuse_port = true\n")).contains("reuse_port"));
    }

    #[test]
    fn credentials_and_tls_are_read() {
        let config = Config::from_toml_str(&format!(
            "{BASE}user = \"u\"\npassword = \"p\"\ntls_ca = \"ca.pem\"\n\
             tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nrequire_tls = true\nretained = \"local\"\n"
        ))
        .expect("valid");
        let c = config.cluster.expect("configured");
        assert_eq!(c.user, Some(("u".into(), "p".into())));
        assert!(c.tls_client.is_some() && c.tls_ca.is_some() && c.require_tls);
        assert!(!c.retained);
    }
}
