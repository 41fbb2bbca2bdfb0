//! A re-read configuration applied to the running broker (SIGHUP).
//!
//! ```text
//!   handle_reload(config, files)
//!     listeners: matched by (protocol, bind) ── kept: files and settings replaced
//!                                            ├─ gone: Event::Unlisten, its clients closed (0x8B)
//!                                            └─ new:  Event::Listen ──► runtime binds
//!                                                     ──► handle_listening / handle_listen_failed
//!     limits, [mqtt]: Broker::reconfigure (what a CONNACK promised holds)
//!     bridges: matched by name ── gone: DISCONNECT both sides, session kept here
//!                               ├─ changed (beyond TLS files): gone + new, same session
//!                               └─ new: started
//! ```
//!
//! Listener numbers never move: a removed listener's slot stays (closed),
//! and an added one takes the next number, so the runtimes' accept loops
//! and the connections' records keep meaning what they meant.

use super::bridge::Bridge;
use super::files::AclPolicy;
use super::{Driver, engine_capabilities};
use super::{Event, FileError, Files, ListenerState, Phase};
use crate::config::{self, Config};
use roost_core::broker::{self, Authentication, ConnId, Instant};
use std::io;
use std::net::SocketAddr;
use tracing::{info, warn};

/// Who may connect through a listener; listeners alike share an
/// authentication class (see `ConnInfo::auth_class`).
pub(super) type AuthSetup = (
    bool,
    Option<std::path::PathBuf>,
    Option<(config::CertIdentity, std::path::PathBuf)>,
);

/// The authentication class of `l` among `classes` (added if new).
pub(super) fn auth_class(classes: &mut Vec<AuthSetup>, l: &config::Listener) -> u16 {
    let certs = &l.client_certs;
    let setup = (
        l.allows_anonymous(),
        l.password_file.clone(),
        (certs.identity != config::CertIdentity::None)
            .then(|| (certs.identity, certs.ca.clone().unwrap_or_default())),
    );
    let class = match classes.iter().position(|c| *c == setup) {
        Some(i) => i,
        None => {
            classes.push(setup);
            classes.len() - 1
        }
    };
    u16::try_from(class).unwrap_or(u16::MAX)
}

/// Whether two bridge tables differ in more than the TLS files (which a
/// running bridge takes for its next connection).
fn bridge_changed(old: &config::Bridge, new: &config::Bridge) -> bool {
    let mut old = old.clone();
    if let (Some(running), Some(now)) = (&mut old.tls, &new.tls) {
        running.ca.clone_from(&now.ca);
        running.cert.clone_from(&now.cert);
        running.key.clone_from(&now.key);
    }
    old != *new
}

impl Driver {
    /// Applies a re-read configuration (SIGHUP) and the files it names,
    /// already loaded ([`Files::load`]`(config)`). The sections that cannot
    /// change live (`[persistence]`, `[sys]`, `[http]`, `[cluster]`,
    /// `mqtt.random_seed`) are not read: [`Config::reloaded`] names their
    /// changes.
    ///
    /// - Listeners are matched by protocol and bind address. One still
    ///   there takes its new files and settings for its next connections
    ///   (a file that failed to load keeps its previous contents); one that
    ///   is gone stops accepting ([`Event::Unlisten`]) and its clients are
    ///   closed (MQTT 5: DISCONNECT 0x8B); a new one is bound by the
    ///   runtime ([`Event::Listen`]) unless one of its files failed to
    ///   load.
    /// - `[limits]` and `[mqtt]` apply at once, except what an MQTT 5
    ///   client was promised in its CONNACK (see [`broker::Broker::reconfigure`]).
    /// - Bridges are matched by name: a new one starts, a removed one
    ///   disconnects (its session here, with what it has not forwarded yet,
    ///   stays for its expiry), a changed one restarts with its new
    ///   settings and the same session.
    ///
    /// Returns the files that failed to load, for logging (each is also
    /// logged here).
    pub fn handle_reload(&mut self, now: Instant, config: &Config, files: Files) -> Vec<FileError> {
        let now = self.clock(now);
        let mut errors = Vec::new();
        self.reload_listeners(now, config, files.listeners, &mut errors);
        self.reload_limits(now, config);
        self.reload_bridges(now, config, files.bridges, &mut errors);
        for e in &errors {
            warn!("reload: {e}; keeping the previous one");
        }
        self.pump(now);
        errors
    }

    /// The runtime could not bind listener `index` ([`Event::Listen`]): it
    /// is not added (a later reload tries again).
    pub fn handle_listen_failed(&mut self, index: usize, error: &io::Error) {
        if let Some(l) = self.listeners.get_mut(index) {
            warn!(
                "reload: {error}; the {} listener on {} is not added",
                l.config.protocol.name(),
                l.config.bind
            );
            l.removed = true;
        }
    }

    /// Listener `index` stopped accepting (a reload removed it, or its bind
    /// failed), or it was never there.
    pub fn is_listener_removed(&self, index: usize) -> bool {
        self.listeners.get(index).is_none_or(|l| l.removed)
    }

    fn reload_listeners(
        &mut self,
        now: Instant,
        config: &Config,
        files: Vec<super::files::ListenerFiles>,
        errors: &mut Vec<FileError>,
    ) {
        // The running MQTT listeners not yet matched with one of the file.
        let mut unmatched: Vec<usize> = (0..self.listeners.len())
            .filter(|&i| {
                let l = &self.listeners[i];
                !l.removed && l.config.protocol != config::Protocol::Http
            })
            .collect();
        let mut kept = Vec::new();
        let mut added = Vec::new();
        for (j, (l, f)) in config.listeners.iter().zip(files).enumerate() {
            let same = unmatched.iter().position(|&i| {
                let c = &self.listeners[i].config;
                c.protocol == l.protocol && c.bind == l.bind
            });
            match same {
                Some(pos) => kept.push((unmatched.remove(pos), l, f)),
                None => added.push((j, l, f)),
            }
        }
        // Removed first: a listener moving to another protocol on the same
        // address frees it before the new one binds.
        for i in unmatched {
            self.remove_listener(now, i);
        }
        for (i, l, f) in kept {
            let slot = &mut self.listeners[i];
            match f.tls {
                Some(Ok(cfg)) => slot.tls = Some(cfg),
                Some(Err(e)) => errors.push(e),
                None if l.protocol.is_tls() => {}
                None => slot.tls = None,
            }
            match f.passwords {
                Some(Ok(file)) => slot.passwords = Some(file),
                Some(Err(e)) => errors.push(e),
                None => slot.passwords = None,
            }
            match f.acl {
                Some(Ok(acl)) => slot.acl = Some(acl),
                Some(Err(e)) => errors.push(e),
                None => slot.acl = None,
            }
            if slot.config != *l {
                let reuse_port = slot.config.reuse_port;
                slot.config = l.clone();
                // The option is set on the socket before it binds.
                if reuse_port != l.reuse_port {
                    warn!(
                        "reload: reuse_port of the {} listener on {} changed; this takes effect at the next restart",
                        l.protocol.name(),
                        l.bind
                    );
                    slot.config.reuse_port = reuse_port;
                }
                slot.auth_class = auth_class(&mut self.classes, l);
            }
        }
        for (j, l, f) in added {
            let failed = errors.len();
            let tls = f.tls.and_then(|r| r.map_err(|e| errors.push(e)).ok());
            let passwords = f.passwords.and_then(|r| r.map_err(|e| errors.push(e)).ok());
            let acl = f.acl.and_then(|r| r.map_err(|e| errors.push(e)).ok());
            if errors.len() > failed {
                warn!(
                    "reload: listener[{j}] ({} on {}) is not added: a file it names failed to load",
                    l.protocol.name(),
                    l.bind
                );
                continue;
            }
            let index = self.listeners.len();
            self.listeners.push(ListenerState {
                config: l.clone(),
                auth_class: auth_class(&mut self.classes, l),
                tls,
                passwords,
                acl,
                backoff: None,
                accepted: 0,
                bound: None,
                removed: false,
            });
            info!(
                listener = index,
                "reload: adding the {} listener on {}",
                l.protocol.name(),
                l.bind
            );
            self.events.push_back(Event::Listen {
                listener: index,
                bind: l.bind,
                reuse_port: l.reuse_port,
            });
        }
        self.reload_access();
    }

    /// Stops listener `index` and closes its clients.
    fn remove_listener(&mut self, now: Instant, index: usize) {
        let l = &mut self.listeners[index];
        l.removed = true;
        info!(
            listener = index,
            "reload: removing the {} listener on {}; closing its clients",
            l.config.protocol.name(),
            DisplayBound(l.bound, l.config.bind)
        );
        self.events.push_back(Event::Unlisten { listener: index });
        let mut doomed: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, io)| {
                io.listener == index
                    && io.bridge.is_none()
                    && io.http.is_none()
                    && io.phase == Phase::Open
            })
            .map(|(&conn, _)| conn)
            .collect();
        // The table's order is the seed's; closing in id order is the same
        // on every run.
        doomed.sort_unstable();
        for conn in doomed {
            self.broker.close_connection(now, conn);
        }
    }

    /// Puts the listeners' password files and ACLs in force: the engine
    /// asks the driver about CONNECTs when any listener needs it, and the
    /// ACLs (unless the embedding program set its own policy) are one
    /// policy indexed by listener number.
    fn reload_access(&mut self) {
        if !self.external_auth {
            let needs_auth = self
                .listeners
                .iter()
                .filter(|l| !l.removed && l.config.protocol != config::Protocol::Http)
                .any(|l| l.passwords.is_some() || !l.config.allows_anonymous());
            self.broker.set_authentication(if needs_auth {
                Authentication::External
            } else {
                Authentication::AllowAll
            });
        }
        if !self.custom_policy {
            // A removed listener keeps its last ACL: no client comes in
            // through it any more, but the bridges' own connections count
            // as coming through listener 0.
            let acls: Vec<_> = self.listeners.iter().map(|l| l.acl.clone()).collect();
            if acls.iter().any(Option::is_some) {
                self.broker.set_authorization(Box::new(AclPolicy {
                    acls,
                    denied: self.denied,
                }));
            } else {
                self.broker.set_authorization(Box::new(broker::AllowAll));
            }
        }
    }

    fn reload_limits(&mut self, now: Instant, config: &Config) {
        self.broker.reconfigure(now, engine_capabilities(config));
        self.outbound_limit =
            usize::try_from(config.limits.outbound_buffer_bytes).unwrap_or(usize::MAX);
        self.local_queue = usize::try_from(config.limits.max_queued_messages)
            .unwrap_or(1)
            .max(1);
        let denied = super::files::denied_code(config);
        if denied != self.denied {
            self.denied = denied;
            self.reload_access();
        }
    }

    fn reload_bridges(
        &mut self,
        now: Instant,
        config: &Config,
        files: Vec<Option<Result<std::sync::Arc<rustls::ClientConfig>, FileError>>>,
        errors: &mut Vec<FileError>,
    ) {
        let seed = super::engine_seed(&self.broker);
        // Gone, or changed beyond its TLS files: stopped (a changed one
        // starts again below, resuming the same session here).
        let mut b = 0;
        while b < self.bridges.len() {
            let name = self.bridges[b].name().to_owned();
            let stays = config
                .bridges
                .iter()
                .find(|n| n.name == name)
                .is_some_and(|n| !bridge_changed(self.bridges[b].config(), n));
            if stays {
                b += 1;
            } else {
                let changed = config.bridges.iter().any(|n| n.name == name);
                info!(
                    bridge = name.as_str(),
                    "reload: {} the bridge",
                    if changed { "restarting" } else { "removing" }
                );
                self.remove_bridge(now, b, !changed);
            }
        }
        for (new, tls) in config.bridges.iter().zip(files) {
            let tls = match tls {
                Some(Ok(cfg)) => Some(Some(cfg)),
                Some(Err(e)) => {
                    errors.push(e);
                    None
                }
                None => Some(None),
            };
            if let Some(running) = self.bridges.iter_mut().find(|b| b.name() == new.name) {
                // The next connection uses the new TLS files.
                if let Some(tls) = tls {
                    running.tls = tls;
                }
                running.set_config(new);
                continue;
            }
            let Some(tls) = tls else {
                warn!(
                    bridge = new.name.as_str(),
                    "reload: the bridge is not started: its TLS files failed to load"
                );
                continue;
            };
            info!(bridge = new.name.as_str(), "reload: starting the bridge");
            self.next_bridge += 1;
            let mut bridge = Bridge::new(new, self.next_bridge, seed, now);
            bridge.tls = tls;
            self.bridges.push(bridge);
        }
    }

    /// Stops bridge `b` and forgets it: DISCONNECT to the remote and to
    /// this broker (whose session for it keeps what it has not forwarded,
    /// for its expiry). `gone`: publish its state as 0 (a restarted bridge
    /// publishes its own).
    fn remove_bridge(&mut self, now: Instant, b: usize, gone: bool) {
        let local = self.bridges[b].local_conn();
        let (remote_out, local_out, link) = self.bridges[b].stop(now);
        if let Some(conn) = link {
            for bytes in remote_out {
                self.send(conn, bytes);
            }
            self.close_bridge_conn(now, conn);
        }
        if gone {
            self.bridge_state_gone(now, b);
        }
        self.bridges.remove(b);
        if let Some(conn) = local {
            for bytes in local_out {
                self.broker.handle_bytes(now, conn, &bytes);
            }
            // Without its DISCONNECT (the local client was not connected
            // yet), the connection simply ends.
            self.broker.handle_closed(now, conn);
        }
    }
}

/// A listener's address as bound, or as configured before it was.
struct DisplayBound(Option<SocketAddr>, SocketAddr);

impl std::fmt::Display for DisplayBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.unwrap_or(self.1))
    }
}
