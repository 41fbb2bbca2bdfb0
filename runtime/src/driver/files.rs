//! The files a configuration names (certificates, password files, ACLs),
//! loaded before they reach the driver: the driver itself never touches the
//! file system. A runtime loads them at start and again on reload.

use crate::acl::{Access, Acl};
use crate::config::{Config, DeniedCode};
use crate::passwd::PasswordFile;
use crate::tls;
use roost_core::broker::{AccessPolicy, ClientRef, PublishDecision, SubscribeDecision, Verdict};
use roost_core::codec::{QoS, ReasonCode};
use roost_core::topic::{TopicFilter, TopicName};
use std::fmt;
use std::sync::Arc;

/// A file of the configuration that could not be loaded.
#[derive(Debug)]
#[non_exhaustive]
pub enum FileError {
    /// A listener's TLS certificate, key, client CA or CRL.
    Tls {
        /// Which listener (index in the configuration).
        listener: usize,
        /// Its address.
        bind: std::net::SocketAddr,
        /// The key naming the file that failed (`cert`, `key`, `client_ca`,
        /// `crl_file`), or `cert/key` when they do not fit together.
        key: &'static str,
        /// Why (boxed: the error stays small on the success path).
        source: Box<tls::TlsError>,
    },
    /// A bridge's CA, client certificate or key.
    BridgeTls {
        /// The bridge's name.
        bridge: String,
        /// The key naming the file that failed (`ca`, `cert`, `key`), or
        /// `cert/key` when they do not fit together.
        key: &'static str,
        /// Why.
        source: Box<tls::TlsError>,
    },
    /// A listener's password file.
    Passwd {
        /// Which listener.
        listener: usize,
        /// Why.
        source: crate::passwd::PasswdError,
    },
    /// A listener's ACL file.
    Acl {
        /// Which listener.
        listener: usize,
        /// Why.
        source: crate::acl::AclError,
    },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Tls {
                listener,
                bind,
                key,
                source,
            } => write!(f, "listener[{listener}].{key} ({bind}): {source}"),
            FileError::BridgeTls {
                bridge,
                key,
                source,
            } => write!(f, "bridge \"{bridge}\".{key}: {source}"),
            FileError::Passwd { listener, source } => {
                write!(f, "listener[{listener}].password_file: {source}")
            }
            FileError::Acl { listener, source } => {
                write!(f, "listener[{listener}].acl_file: {source}")
            }
        }
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FileError::Tls { source, .. } | FileError::BridgeTls { source, .. } => Some(&**source),
            FileError::Passwd { source, .. } => Some(source),
            FileError::Acl { source, .. } => Some(source),
        }
    }
}

/// One listener's files. Each is `None` when the configuration names none,
/// and holds the error when it names one that could not be loaded.
pub(crate) struct ListenerFiles {
    pub(crate) tls: Option<Result<Arc<rustls::ServerConfig>, FileError>>,
    pub(crate) passwords: Option<Result<Arc<PasswordFile>, FileError>>,
    pub(crate) acl: Option<Result<Arc<Acl>, FileError>>,
}

/// Every file a configuration names, loaded (see [`Files::load`]).
pub struct Files {
    pub(crate) listeners: Vec<ListenerFiles>,
    /// Each bridge's TLS client configuration, in configuration order
    /// (`None`: plain TCP).
    pub(crate) bridges: Vec<Option<Result<Arc<rustls::ClientConfig>, FileError>>>,
}

impl Files {
    /// Reads every certificate, password file and ACL file `config` names.
    /// This is the blocking part of starting or reloading a broker; call it
    /// off the event loop if the files may be slow to read.
    pub fn load(config: &Config) -> Files {
        let listeners = config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| ListenerFiles {
                tls: match (&l.cert, &l.key) {
                    (Some(cert), Some(key)) if l.protocol.is_tls() => Some(
                        tls::load_server_config_with(cert, key, &l.client_certs)
                            .map(Arc::new)
                            .map_err(|source| FileError::Tls {
                                listener: i,
                                bind: l.bind,
                                key: tls_key(l, &source),
                                source: Box::new(source),
                            }),
                    ),
                    _ => None,
                },
                passwords: l.password_file.as_ref().map(|path| {
                    PasswordFile::load(path)
                        .map(Arc::new)
                        .map_err(|source| FileError::Passwd {
                            listener: i,
                            source,
                        })
                }),
                acl: l.acl_file.as_ref().map(|path| {
                    Acl::load(path)
                        .map(Arc::new)
                        .map_err(|source| FileError::Acl {
                            listener: i,
                            source,
                        })
                }),
            })
            .collect();
        let bridges = config
            .bridges
            .iter()
            .map(|b| {
                let t = b.tls.as_ref()?;
                let cert_and_key = t.cert.as_deref().zip(t.key.as_deref());
                Some(
                    tls::load_client_config(&t.ca, cert_and_key)
                        .map(Arc::new)
                        .map_err(|source| {
                            let key = match &source {
                                tls::TlsError::Read { path, .. }
                                | tls::TlsError::Pem { path, .. }
                                | tls::TlsError::Anchor { path, .. } => {
                                    if *path == t.ca {
                                        "ca"
                                    } else if t.key.as_ref() == Some(path) {
                                        "key"
                                    } else {
                                        "cert"
                                    }
                                }
                                _ => "cert/key",
                            };
                            FileError::BridgeTls {
                                bridge: b.name.clone(),
                                key,
                                source: Box::new(source),
                            }
                        }),
                )
            })
            .collect();
        Files { listeners, bridges }
    }

    /// The first file that failed to load, if any: at start, any failure
    /// is fatal.
    pub fn first_error(&self) -> Option<&FileError> {
        self.listeners
            .iter()
            .find_map(|l| {
                l.tls
                    .as_ref()
                    .and_then(|r| r.as_ref().err())
                    .or_else(|| l.passwords.as_ref().and_then(|r| r.as_ref().err()))
                    .or_else(|| l.acl.as_ref().and_then(|r| r.as_ref().err()))
            })
            .or_else(|| {
                self.bridges
                    .iter()
                    .find_map(|b| b.as_ref().and_then(|r| r.as_ref().err()))
            })
    }

    /// Every file that failed to load.
    pub fn errors(&self) -> impl Iterator<Item = &FileError> {
        self.listeners
            .iter()
            .flat_map(|l| {
                [
                    l.tls.as_ref().and_then(|r| r.as_ref().err()),
                    l.passwords.as_ref().and_then(|r| r.as_ref().err()),
                    l.acl.as_ref().and_then(|r| r.as_ref().err()),
                ]
                .into_iter()
                .flatten()
            })
            .chain(
                self.bridges
                    .iter()
                    .filter_map(|b| b.as_ref().and_then(|r| r.as_ref().err())),
            )
    }
}

/// Which of a listener's TLS keys names the file an error is about.
fn tls_key(l: &crate::config::Listener, error: &tls::TlsError) -> &'static str {
    let path = match error {
        tls::TlsError::Read { path, .. }
        | tls::TlsError::Pem { path, .. }
        | tls::TlsError::ClientCa { path, .. }
        | tls::TlsError::Anchor { path, .. } => path,
        _ => return "cert/key",
    };
    let is = |p: &Option<std::path::PathBuf>| p.as_deref() == Some(path.as_path());
    if is(&l.cert) {
        "cert"
    } else if is(&l.key) {
        "key"
    } else if is(&l.client_certs.crl) {
        "crl_file"
    } else if is(&l.client_certs.ca) {
        "client_ca"
    } else {
        "cert/key"
    }
}

/// The reason code a refused subscription gets.
pub(crate) fn denied_code(config: &Config) -> ReasonCode {
    match config.mqtt.subscribe_denied {
        DeniedCode::NotAuthorized => ReasonCode::NotAuthorized,
        DeniedCode::UnspecifiedError => ReasonCode::UnspecifiedError,
    }
}

/// The ACL files of the listeners, as the engine's authorization policy.
pub(crate) struct AclPolicy {
    pub(crate) acls: Vec<Option<Arc<Acl>>>,
    pub(crate) denied: ReasonCode,
}

impl AclPolicy {
    fn check(&self, client: ClientRef<'_>, topic: &str, access: Access) -> bool {
        match self.acls.get(usize::from(client.listener)) {
            Some(Some(acl)) => acl.check(
                client.username.map(|u| u.as_str()),
                client.client_id.as_str(),
                topic,
                access,
            ),
            _ => true,
        }
    }
}

// The ACL is in memory: every answer is inline, no round trip.
impl AccessPolicy for AclPolicy {
    fn authorize_publish(
        &self,
        client: ClientRef<'_>,
        topic: &TopicName,
    ) -> Verdict<PublishDecision> {
        Verdict::Decided(if self.check(client, topic.as_str(), Access::Publish) {
            PublishDecision::Allow
        } else {
            PublishDecision::Deny(ReasonCode::NotAuthorized)
        })
    }

    fn authorize_subscribe(
        &self,
        client: ClientRef<'_>,
        filter: &TopicFilter,
        qos: QoS,
    ) -> Verdict<SubscribeDecision> {
        Verdict::Decided(if self.check(client, filter.as_str(), Access::Subscribe) {
            SubscribeDecision::Grant(qos)
        } else {
            SubscribeDecision::Deny(self.denied)
        })
    }

    fn authorize_delivery(&self, client: ClientRef<'_>, topic: &TopicName) -> bool {
        // Like Mosquitto: a wildcard subscription does not grant reading a
        // topic the ACL hides.
        self.check(client, topic.as_str(), Access::Subscribe)
    }
}
