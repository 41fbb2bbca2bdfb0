//! What a running broker takes from its re-read configuration file
//! (SIGHUP), and what waits for the next restart.
//!
//! Live (the driver applies them, see [`crate::driver::Driver::handle_reload`]):
//! the listeners (added, removed, and every setting of one that stays:
//! its files, `allow_anonymous`, `ws_path`, the certificate-to-user
//! mapping), every `[limits]` field, every `[mqtt]` field but
//! `random_seed`, and the bridges (added, removed, changed). What waits for
//! a restart, named in a warning: `[persistence]`, `[sys]`, `[http]`,
//! `[cluster]`, `mqtt.random_seed` and the pid file, which shape state the
//! running broker already holds (its store, its timers, its sockets to
//! other nodes, its hash tables' seed).

use super::{Config, Http, Limits, Mqtt, Persistence, Sys};

/// Lists the fields of a section whose value differs, as `section.field`,
/// among those named `restart`; those named `live` are taken from the new
/// file. The destructuring is exhaustive: a field added to the section
/// fails the build here until it is classified.
macro_rules! changed_fields {
    ($out:expr, $section:literal, $ty:ident, $old:expr, $new:expr,
     live: [$($live:ident),* $(,)?], restart: [$($field:ident),* $(,)?]) => {{
        let $ty { $($live: _,)* $($field),* } = $old;
        let new = $new;
        let _ = &new;
        $(
            if *$field != new.$field {
                $out.push(concat!($section, ".", stringify!($field)).to_owned());
            }
        )*
    }};
}

impl Config {
    /// The configuration a running broker continues with when its file
    /// now reads `new`: `new`, with the sections that cannot change while
    /// the broker runs kept from `self` (the one in force). Returns it with
    /// one warning per such change.
    pub fn reloaded(&self, new: &Config) -> (Config, Vec<String>) {
        let mut merged = new.clone();
        let mut keys = Vec::new();
        // Every top-level section, so that a new one is classified too.
        let Config {
            listeners: _,
            limits,
            persistence,
            sys,
            mqtt,
            http,
            bridges: _,
            cluster,
            pid_file,
            verbosity: _,
            notes: _,
        } = self;
        changed_fields!(
            keys,
            "limits",
            Limits,
            limits,
            &new.limits,
            live: [
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
            ],
            restart: []
        );
        changed_fields!(
            keys,
            "mqtt",
            Mqtt,
            mqtt,
            &new.mqtt,
            live: [
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
            ],
            // The engine's hash tables are keyed by it.
            restart: [random_seed]
        );
        merged.mqtt.random_seed = mqtt.random_seed;
        changed_fields!(
            keys,
            "persistence",
            Persistence,
            persistence,
            &new.persistence,
            live: [],
            restart: [store, path, durability, flush_interval_ms, recovery]
        );
        merged.persistence = persistence.clone();
        changed_fields!(keys, "sys", Sys, sys, &new.sys, live: [], restart: [interval_secs]);
        merged.sys = sys.clone();
        match (http, &new.http) {
            (Some(Http { bind }), Some(n)) if *bind != n.bind => keys.push("http.bind".to_owned()),
            (None, Some(_)) => keys.push("[http] added".to_owned()),
            (Some(_), None) => keys.push("[http] removed".to_owned()),
            _ => {}
        }
        merged.http = http.clone();
        match (cluster, &new.cluster) {
            (None, Some(_)) => keys.push("[cluster] added".to_owned()),
            (Some(_), None) => keys.push("[cluster] removed".to_owned()),
            (Some(a), Some(b)) if a != b => keys.push("[cluster] changed".to_owned()),
            _ => {}
        }
        merged.cluster = cluster.clone();
        if *pid_file != new.pid_file {
            keys.push("pid_file".to_owned());
        }
        merged.pid_file = pid_file.clone();
        let warnings = keys
            .into_iter()
            .map(|key| {
                let what = if key.ends_with("added")
                    || key.ends_with("removed")
                    || key.ends_with("changed")
                {
                    key
                } else {
                    format!("{key} changed")
                };
                format!("reload: {what}; this takes effect at the next restart")
            })
            .collect();
        (merged, warnings)
    }
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
    fn live_sections_are_taken_and_the_rest_is_named() {
        let running = config(&format!(
            "{TLS}[limits]\nmax_inflight = 10\n[sys]\ninterval_secs = 10\n"
        ));
        let new = config(&format!(
            "{}[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:1884\"\n\
             [limits]\nmax_inflight = 20\n[mqtt]\nmaximum_qos = 1\nrandom_seed = 7\n\
             [sys]\ninterval_secs = 5\n[persistence]\nflush_interval_ms = 7\n\
             [http]\nbind = \"127.0.0.1:8080\"\n",
            TLS.replace("a.crt", "b.crt")
                .replace("a.key", "b.key")
                .replace("p1", "p2")
        ));
        let (merged, warnings) = running.reloaded(&new);
        // Live: the listeners as the file has them, limits, capabilities.
        assert_eq!(merged.listeners, new.listeners);
        assert_eq!(merged.limits.max_inflight, 20);
        assert_eq!(merged.mqtt.maximum_qos, 1);
        // Not live: kept, and named.
        assert_eq!(merged.mqtt.random_seed, running.mqtt.random_seed);
        assert_eq!(merged.sys, running.sys);
        assert_eq!(merged.persistence, running.persistence);
        assert_eq!(merged.http, None);
        let all = warnings.join("\n");
        for needle in [
            "mqtt.random_seed changed",
            "sys.interval_secs changed",
            "persistence.flush_interval_ms changed",
            "[http] added",
        ] {
            assert!(all.contains(needle), "{needle} missing:\n{all}");
        }
        assert_eq!(warnings.len(), 4, "{all}");
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
    fn bridges_are_taken_as_the_file_has_them() {
        let bridge = |keep_alive: u16| {
            format!(
                "{TLS}[[bridge]]\nname = \"up\"\naddress = \"remote:8883\"\n\
                 keep_alive = {keep_alive}\n\
                 [[bridge.topic]]\npattern = \"#\"\ndirection = \"out\"\n"
            )
        };
        let running = config(&bridge(60));
        let (merged, warnings) = running.reloaded(&config(&bridge(30)));
        assert_eq!(merged.bridges[0].keep_alive, 30);
        assert!(warnings.is_empty(), "{warnings:?}");
        let (merged, warnings) = running.reloaded(&config(TLS));
        assert!(merged.bridges.is_empty());
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}
