//! What a broker binary does as a service, the same for every runtime: the
//! pid file, systemd's readiness protocol, and re-reading the configuration
//! file on SIGHUP.
//!
//! ```text
//!   cli::start ──► Start::Serve(service)
//!   bind listeners ──► service.ready()       pid file written, READY=1
//!   SIGHUP ──► service.reload() ──► runtime reloads with the Config it returns
//!          ──► service.reloaded()            READY=1
//!   SIGTERM ──► service.stopping()           STOPPING=1
//!   drop(service)                            pid file removed
//! ```
//!
//! systemd's notifications go to the datagram socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket), as
//! `sd_notify(3)` does; without it they are not sent.

use crate::config::{Cli, Config, ConfigError};
use std::fmt;
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// The broker process as a service: its configuration, where that came
/// from (to re-read it), and its pid file once written.
pub struct Service {
    config: Config,
    /// The command line the configuration was built from: a reload reads
    /// the same file and applies the same flags.
    cli: Option<Cli>,
    pid_file: Option<PidFile>,
}

impl Service {
    /// A service for `config`, re-read on reload from `cli` (its `--config`
    /// file and flags); without `cli`, a reload keeps `config`.
    pub fn new(config: Config, cli: Option<Cli>) -> Service {
        Service {
            config,
            cli,
            pid_file: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Call once the listeners are bound: writes the pid file (if
    /// configured) and tells systemd the broker is ready. A pid file that
    /// cannot be written is an error: the binary should exit.
    pub fn ready(&mut self) -> Result<(), ServiceError> {
        if let Some(path) = &self.config.pid_file {
            self.pid_file = Some(PidFile::write(path)?);
        }
        notify("READY=1\nSTATUS=serving");
        Ok(())
    }

    /// Call on SIGHUP: tells systemd a reload began, re-reads the
    /// configuration file and returns the configuration to reload with
    /// (hand it to `Driver::handle_reload`): the new one, with the sections
    /// that cannot change while the broker runs kept from the running one
    /// (see [`Config::reloaded`]; each such change is logged as waiting
    /// for a restart).
    /// A file that fails to load is logged and the running configuration
    /// is returned, so the runtime still re-reads the certificates,
    /// password and ACL files it names. Call [`Service::reloaded`] after.
    pub fn reload(&mut self) -> Config {
        notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        let Some(cli) = &self.cli else {
            info!("reloading certificates, password and ACL files");
            return self.config.clone();
        };
        match Config::from_cli(cli.clone()) {
            Ok(config) => {
                let (config, later) = self.config.reloaded(&config);
                for warning in later {
                    warn!("{warning}");
                }
                self.config = config;
                info!("configuration file re-read");
            }
            Err(e) => warn!(
                "reload: {}; keeping the running configuration",
                ReloadError(e)
            ),
        }
        self.config.clone()
    }

    /// Call when the reload is done: tells systemd the broker is ready
    /// again.
    pub fn reloaded(&self) {
        notify("READY=1\nSTATUS=serving");
    }

    /// Call when shutting down begins: tells systemd.
    pub fn stopping(&self) {
        notify("STOPPING=1\nSTATUS=shutting down");
    }
}

/// A configuration error met on reload, as one line.
struct ReloadError(ConfigError);

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The TOML reader's message spans lines (the line quoted, a caret):
        // one log line is what an operator greps.
        let text = self.0.to_string();
        let mut first = true;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !first {
                f.write_str(" | ")?;
            }
            first = false;
            f.write_str(line)?;
        }
        Ok(())
    }
}

/// Why the service could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServiceError {
    /// The pid file could not be written.
    PidFile {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::PidFile { path, source } => {
                write!(f, "pid_file {}: cannot write it: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for ServiceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServiceError::PidFile { source, .. } => Some(source),
        }
    }
}

/// A written pid file, removed when dropped if it still names this
/// process (another broker may have taken the path over since).
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    contents: String,
}

impl PidFile {
    /// Writes this process's id to `path`, replacing whatever is there (a
    /// file left by a broker that was killed is stale by definition: this
    /// process now answers to the path).
    pub fn write(path: &Path) -> Result<PidFile, ServiceError> {
        let contents = format!("{}\n", std::process::id());
        std::fs::write(path, &contents).map_err(|source| ServiceError::PidFile {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(PidFile {
            path: path.to_path_buf(),
            contents,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if std::fs::read_to_string(&self.path).is_ok_and(|c| c == self.contents) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Sends `state` to systemd (`sd_notify`), if `$NOTIFY_SOCKET` names a
/// socket; failures are logged at debug level, as systemd's own client
/// ignores them.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notification(Path::new(&socket), state) {
        tracing::debug!(error = %e, socket = %Path::new(&socket).display(), "systemd notification not sent");
    }
}

fn send_notification(socket: &Path, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let sender = UnixDatagram::unbound()?;
    let bytes = socket.as_os_str().as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sender.send_to_addr(state.as_bytes(), &addr)?;
            return Ok(());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "abstract sockets need Linux",
            ));
        }
    }
    sender.send_to(state.as_bytes(), socket)?;
    Ok(())
}

/// `CLOCK_MONOTONIC` in microseconds, which systemd wants with
/// `RELOADING=1` to tell this reload from an earlier one.
fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_is_written_overwritten_and_removed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("roost.pid");
        std::fs::write(&path, "999999\n").expect("stale");
        let file = PidFile::write(&path).expect("written");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("{}\n", std::process::id())
        );
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn a_pid_file_taken_over_by_another_process_is_left_alone() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("roost.pid");
        let file = PidFile::write(&path).expect("written");
        std::fs::write(&path, "12345\n").expect("taken over");
        drop(file);
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), "12345\n");
    }

    #[test]
    fn an_unwritable_pid_file_names_the_path() {
        let e = PidFile::write(Path::new("/nonexistent-dir/roost.pid")).expect_err("fails");
        let text = e.to_string();
        assert!(
            text.starts_with("pid_file /nonexistent-dir/roost.pid: cannot write it: "),
            "{text}"
        );
        assert!(!text.contains("Os {"), "{text}");
    }

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        send_notification(&path, "READY=1").expect("sent");
        let mut buf = [0; 64];
        let n = socket.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn a_broken_configuration_is_one_line() {
        let e = Config::from_toml_str("[[listener]]\nprotocol = 3\n").expect_err("broken");
        let line = ReloadError(e).to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("protocol"), "{line}");
    }
}
