//! What a running broker takes from its re-read configuration file
//! (SIGHUP), and what waits for the next restart.
//!
//! Live: the files a listener names (`cert`, `key`, `client_ca`,
//! `crl_file` with `require_certificate`, `password_file`, `acl_file`) and
//! a bridge's TLS files (`ca`, `cert`, `key`) are read again, from the
//! paths the new file gives. Everything else (the
//! listeners themselves, limits, MQTT capabilities, persistence, `[http]`,
//! bridges, `[cluster]`, the pid file) keeps its running value until the broker
//! restarts, and each such change is named in a warning.

use super::{Config, Http, Limits, Listener, Mqtt, Persistence, Sys};

/// Lists the fields of a section whose value differs, as `section.field`.
/// The destructuring is exhaustive: a field added to the section fails the
/// build here until it is listed, so no change goes unnamed.
macro_rules! changed_fields {
    ($out:expr, $section:literal, $ty:ident, $old:expr, $new:expr, [$($field:ident),* $(,)?]) => {{
        let $ty { $($field),* } = $old;
        let new = $new;
        $(
            if *$field != new.$field {
                $out.push(concat!($section, ".", stringify!($field)).to_owned());
            }
        )*
    }};
}

impl Config {
    /// The configuration a running broker continues with when its file
    /// now reads `new`: `self` (the one in force), with the files of each
    /// listener that is still there taken from `new`. Returns it with one
    /// warning per change that waits for the next restart.
    pub fn reloaded(&self, new: &Config) -> (Config, Vec<String>) {
        let mut merged = self.clone();
        let mut warnings = Vec::new();
        let mut later = |what: String| {
            warnings.push(format!(
                "reload: {what}; this takes effect at the next restart"
            ))
        };

        for (i, (old, new)) in self.listeners.iter().zip(&new.listeners).enumerate() {
            if old.protocol != new.protocol || old.bind != new.bind {
                later(format!(
                    "listener[{i}] changed from {} on {} to {} on {}",
                    old.protocol.name(),
                    old.bind,
                    new.protocol.name(),
                    new.bind
                ));
                continue;
            }
            let live = &mut merged.listeners[i];
            for key in listener_changes(old, new, live) {
                later(format!("listener[{i}].{key} changed"));
            }
        }
        for (i, l) in new.listeners.iter().enumerate().skip(self.listeners.len()) {
            later(format!(
                "listener[{i}] ({} on {}) added",
                l.protocol.name(),
                l.bind
            ));
        }
        for (i, l) in self.listeners.iter().enumerate().skip(new.listeners.len()) {
            later(format!(
                "listener[{i}] ({} on {}) removed",
                l.protocol.name(),
                l.bind
            ));
        }

        let mut keys = Vec::new();
        changed_fields!(
            keys,
            "limits",
            Limits,
            &self.limits,
            &new.limits,
            [
                max_packet_size,
                max_inflight,
                max_queued_messages,
                max_queued_bytes,
                queue_qos0_offline,
                connect_timeout_ms,
                authorize_timeout_ms,
                max_keepalive_secs,
                max_connections,
                max_client_id_len,
                max_topic_levels,
                max_topic_length,
                max_subscriptions_per_client,
                max_retained_messages,
                outbound_buffer_bytes,
                packet_timeout_ms,
                mqtt3_max_pending_acks,
                mqtt3_max_pending_qos2,
            ]
        );
        changed_fields!(
            keys,
            "mqtt",
            Mqtt,
            &self.mqtt,
            &new.mqtt,
            [
                receive_maximum,
                maximum_qos,
                retain_available,
                wildcard_subscriptions,
                subscription_identifiers,
                shared_subscriptions,
                topic_alias_maximum,
                outbound_topic_aliases,
                validate_utf8_payloads,
                allow_disallowed_code_points,
                share_sessions_across_identities,
                subscribe_denied,
                random_seed,
            ]
        );
        changed_fields!(
            keys,
            "persistence",
            Persistence,
            &self.persistence,
            &new.persistence,
            [store, path, durability, flush_interval_ms, recovery]
        );
        changed_fields!(keys, "sys", Sys, &self.sys, &new.sys, [interval_secs]);
        match (&self.http, &new.http) {
            (Some(Http { bind }), Some(n)) if *bind != n.bind => keys.push("http.bind".to_owned()),
            (None, Some(_)) => keys.push("[http] added".to_owned()),
            (Some(_), None) => keys.push("[http] removed".to_owned()),
            _ => {}
        }
        for b in &new.bridges {
            let Some(j) = self.bridges.iter().position(|o| o.name == b.name) else {
                keys.push(format!("bridge {:?} added", b.name));
                continue;
            };
            // A bridge's TLS client configuration is built again from its
            // files on reload (the next connection uses it); the server
            // name it verifies is not.
            let live = &mut merged.bridges[j];
            if let (Some(running), Some(now)) = (&mut live.tls, &b.tls) {
                if running.sni == now.sni {
                    running.clone_from(now);
                }
            }
            if *live != *b {
                keys.push(format!("bridge {:?} changed", b.name));
            }
        }
        for b in &self.bridges {
            if !new.bridges.iter().any(|n| n.name == b.name) {
                keys.push(format!("bridge {:?} removed", b.name));
            }
        }
        match (&self.cluster, &new.cluster) {
            (None, Some(_)) => keys.push("[cluster] added".to_owned()),
            (Some(_), None) => keys.push("[cluster] removed".to_owned()),
            (Some(a), Some(b)) if a != b => keys.push("[cluster] changed".to_owned()),
            _ => {}
        }
        if self.pid_file != new.pid_file {
            keys.push("pid_file".to_owned());
        }
        for key in keys {
            if key.ends_with("added") || key.ends_with("removed") || key.ends_with("changed") {
                later(key);
            } else {
                later(format!("{key} changed"));
            }
        }
        (merged, warnings)
    }
}

/// Puts into `live` what of `new` a running listener takes; returns the
/// keys of the other changes.
fn listener_changes(old: &Listener, new: &Listener, live: &mut Listener) -> Vec<&'static str> {
    let mut later = Vec::new();
    // The TLS configuration is built again from these files on reload:
    // certificate, key, the client CAs, the CRL and whether a certificate
    // is required all live in it.
    if old.cert.is_some() && new.cert.is_some() && old.key.is_some() && new.key.is_some() {
        live.cert.clone_from(&new.cert);
        live.key.clone_from(&new.key);
        live.client_certs.ca.clone_from(&new.client_certs.ca);
        live.client_certs.crl.clone_from(&new.client_certs.crl);
        live.client_certs.required = new.client_certs.required;
    } else if old.cert != new.cert || old.key != new.key {
        later.push("cert/key");
    }
    if old.client_certs.identity != new.client_certs.identity {
        later.push("use_identity_as_username/use_subject_as_username");
    }
    // A file replaces a file; a listener without one (or one that loses
    // its file) changes who may connect, which is set up at start.
    if old.password_file.is_some() == new.password_file.is_some() {
        live.password_file.clone_from(&new.password_file);
    } else {
        later.push("password_file");
    }
    if old.acl_file.is_some() == new.acl_file.is_some() {
        live.acl_file.clone_from(&new.acl_file);
    } else {
        later.push("acl_file");
    }
    if old.allows_anonymous() != new.allows_anonymous() {
        later.push("allow_anonymous");
    }
    if old.ws_path != new.ws_path {
        later.push("ws_path");
    }
    if old.reuse_port != new.reuse_port {
        later.push("reuse_port");
    }
    later
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml_str(text).expect("config")
    }

    const TLS: &str = "[[listener]]\nprotocol = \"tls\"\nbind = \"127.0.0.1:8883\"\n\
                       cert = \"a.crt\"\nkey = \"a.key\"\npassword_file = \"p1\"\n";

    #[test]
    fn files_are_taken_and_the_rest_is_named() {
        let running = config(&format!("{TLS}[limits]\nmax_inflight = 10\n"));
        let new = config(&format!(
            "{}[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:1884\"\n\
             [limits]\nmax_inflight = 20\n[mqtt]\nmaximum_qos = 1\n",
            TLS.replace("a.crt", "b.crt")
                .replace("a.key", "b.key")
                .replace("p1", "p2")
        ));
        let (merged, warnings) = running.reloaded(&new);
        let l = &merged.listeners[0];
        assert_eq!(l.cert.as_deref(), Some(std::path::Path::new("b.crt")));
        assert_eq!(l.key.as_deref(), Some(std::path::Path::new("b.key")));
        assert_eq!(l.password_file.as_deref(), Some(std::path::Path::new("p2")));
        // Not live: kept, and named.
        assert_eq!(merged.listeners.len(), 1);
        assert_eq!(merged.limits.max_inflight, 10);
        assert_eq!(merged.mqtt.maximum_qos, 2);
        let all = warnings.join("\n");
        for needle in [
            "listener[1] (tcp on 127.0.0.1:1884) added",
            "limits.max_inflight changed",
            "mqtt.maximum_qos changed",
        ] {
            assert!(all.contains(needle), "{needle} missing:\n{all}");
        }
        assert_eq!(warnings.len(), 3, "{all}");
        assert!(warnings.iter().all(|w| w.ends_with("at the next restart")));
    }

    #[test]
    fn an_unchanged_file_warns_of_nothing() {
        let running = config(TLS);
        let (merged, warnings) = running.reloaded(&config(TLS));
        assert_eq!(merged, running);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_listener_moved_keeps_its_files_and_is_named() {
        let running = config(TLS);
        let new = config(
            &TLS.replace("8883", "8884")
                .replace("p1", "p2")
                .replace("password_file", "acl_file = \"acl\"\npassword_file"),
        );
        let (merged, warnings) = running.reloaded(&new);
        assert_eq!(merged, running);
        assert_eq!(
            warnings,
            [
                "reload: listener[0] changed from tls on 127.0.0.1:8883 to tls on \
              127.0.0.1:8884; this takes effect at the next restart"
            ]
        );
    }

    #[test]
    fn a_bridge_takes_new_tls_files_and_names_the_rest() {
        let bridge = |ca: &str, keep_alive: u16| {
            format!(
                "{TLS}[[bridge]]\nname = \"up\"\naddress = \"remote:8883\"\n\
                 keep_alive = {keep_alive}\ntls = true\nca = \"{ca}\"\n\
                 [[bridge.topic]]\npattern = \"#\"\ndirection = \"out\"\n"
            )
        };
        let running = config(&bridge("ca1.crt", 60));
        let (merged, warnings) = running.reloaded(&config(&bridge("ca2.crt", 60)));
        assert_eq!(
            merged.bridges[0].tls.as_ref().map(|t| t.ca.clone()),
            Some(std::path::PathBuf::from("ca2.crt"))
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        let (merged, warnings) = running.reloaded(&config(&bridge("ca2.crt", 30)));
        assert_eq!(merged.bridges[0].keep_alive, 60);
        assert_eq!(
            warnings,
            ["reload: bridge \"up\" changed; this takes effect at the next restart"]
        );
    }

    #[test]
    fn gaining_a_password_file_waits_for_a_restart() {
        let running = config(&TLS.replace("password_file = \"p1\"\n", ""));
        let (merged, warnings) = running.reloaded(&config(TLS));
        assert_eq!(merged.listeners[0].password_file, None);
        assert_eq!(
            warnings,
            ["reload: listener[0].password_file changed; this takes effect at the next restart"]
        );
    }
}
