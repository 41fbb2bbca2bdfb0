//! What every runtime's binary does before it serves: read the command line,
//! run the `passwd` and `store` subcommands, set up logging, raise the
//! descriptor limit.
//! A runtime's `main` is then only its own serving loop and signals.

use crate::config::{Cli, Command, Config, PasswdCommand, StoreCommand};
use crate::service::Service;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

/// What a binary should do after [`start`].
// Built once per process: the size of the configuration costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Start {
    /// Exit with this code (a `passwd` or `store` subcommand ran, or the
    /// configuration is invalid and the reason was printed).
    Exit(ExitCode),
    /// Serve with this configuration ([`Service::config`]); logging is set
    /// up. Call [`Service::ready`] once the listeners are bound.
    Serve(Service),
}

/// Parses the command line (clap prints help and usage errors itself) and
/// prepares to serve. `program` names the binary in messages.
pub fn start(program: &str) -> Start {
    use clap::Parser;
    let cli = Cli::parse();
    let log_format = cli.log_format;
    if let Some(Command::Passwd { action }) = &cli.command {
        return Start::Exit(passwd(program, action, cli.config.as_deref()));
    }
    if let Some(Command::Store { action }) = &cli.command {
        return Start::Exit(store(program, action, &cli));
    }
    let config = match Config::from_cli(cli.clone()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{program}: {e}");
            return Start::Exit(ExitCode::from(2));
        }
    };
    init_logging_as(config.verbosity, log_format);
    // Idle connections cost a file descriptor each: take all the system
    // allows.
    if let Ok(limit) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!(limit, "file descriptor limit");
        reserve_descriptor_table(limit);
    }
    Start::Serve(Service::new(config, Some(cli)))
}

/// The most descriptors [`reserve_descriptor_table`] makes room for:
/// 512 KiB of kernel memory. Past it the table doubles rarely enough.
pub const DESCRIPTOR_TABLE_RESERVE: u64 = 65_536;

/// Grows the process's descriptor table once, now, to hold `limit`
/// descriptors (at most [`DESCRIPTOR_TABLE_RESERVE`]).
///
/// Linux grows the table by doubling as descriptors are opened, and in a
/// process with more than one thread every doubling waits for an RCU grace
/// period: the whole event loop sleeps, uninterruptibly, for 10 to 35 ms
/// (measured here with `perf record -e sched:sched_switch`: the broker in
/// state D, woken by `rcu_preempt`), about ten times on the way to 20,000
/// connections. Growing the table before the broker's threads start costs
/// no grace period at all. Call it early in `main`; embedding programs may
/// call it too. Does nothing where descriptors cannot be duplicated.
pub fn reserve_descriptor_table(limit: u64) {
    let highest = limit.min(DESCRIPTOR_TABLE_RESERVE).saturating_sub(1);
    let Ok(highest) = i32::try_from(highest) else {
        return;
    };
    // Duplicating stderr to the highest descriptor makes the kernel size
    // the table for it; the copy is closed at once, the table stays.
    if let Err(e) = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), highest) {
        tracing::debug!(error = %e, "descriptor table not reserved");
    }
}

/// Logs to stderr, like Mosquitto, as plain text unless stderr is a
/// terminal (no colour codes in files and journald). roost's own crates log
/// at the level `-v` flags choose (info by default); libraries (the store,
/// TLS) only warn unless `-vv` asks for everything.
pub fn init_logging(verbosity: u8) {
    init_logging_as(verbosity, crate::config::LogFormat::Text);
}

/// [`init_logging`] in the given format. `RUST_LOG` (tracing's
/// `EnvFilter` syntax: `info`, `warn,roost_runtime=debug`, …), when set and
/// valid, replaces the levels `-v` chooses.
pub fn init_logging_as(verbosity: u8, format: crate::config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (ours, others) = match verbosity {
        0 => ("info", "warn"),
        1 => ("debug", "warn"),
        _ => ("trace", "trace"),
    };
    let mut default = others.to_owned();
    for target in [
        "roost",
        "roost_tokio",
        "roost_smol",
        "roost_mio",
        "roost_runtime",
        "roost_persistence",
    ] {
        default.push_str(&format!(",{target}={ours}"));
    }
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let json = format == crate::config::LogFormat::Json;
    let text_layer = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_target(false)
            .with_writer(std::io::stderr)
    });
    let _ = tracing_subscriber::registry()
        .with(text_layer)
        .with(json_layer)
        .with(filter)
        .try_init();
}

/// `passwd add|rm`: the default file is the first listener's
/// `password_file`, if the `--config` file names one.
fn passwd(program: &str, action: &PasswdCommand, config: Option<&Path>) -> ExitCode {
    let default_file = config
        .and_then(|path| Config::from_file(path).ok())
        .and_then(|c| c.listeners.iter().find_map(|l| l.password_file.clone()));
    let from_stdin = matches!(
        action,
        PasswdCommand::Add {
            password_stdin: true,
            ..
        }
    ) || !std::io::stdin().is_terminal();
    let read = || {
        if from_stdin {
            read_password_line(&mut std::io::stdin().lock())
        } else {
            rpassword::prompt_password("Password: ")
        }
    };
    match crate::passwd::run_command(action, default_file.as_deref(), read) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{program} passwd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The first line of `input`, without its line ending: a password piped
/// in (`echo "$PW" | roost passwd add alice --password-stdin`).
fn read_password_line(input: &mut impl std::io::BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    input.read_line(&mut line)?;
    let end = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(end);
    Ok(line)
}

/// `store repair`: the directory is `--data-dir` (the subcommand's, then the
/// broker's), else the `--config` file's `persistence.path`.
fn store(program: &str, action: &StoreCommand, cli: &Cli) -> ExitCode {
    let StoreCommand::Repair { data_dir } = action;
    let dir = data_dir
        .clone()
        .or_else(|| cli.data_dir.clone())
        .or_else(|| {
            cli.config
                .as_deref()
                .and_then(|path| Config::from_file(path).ok())
                .and_then(|c| c.persistence.path)
        });
    let Some(dir) = dir else {
        eprintln!("{program} store repair: which store? Pass --data-dir DIR (or --config FILE)");
        return ExitCode::from(2);
    };
    match repair(&dir) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{program} store repair: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Repairs the store in `dir` (see `FjallStore::repair`): what it dropped,
/// as one line for the operator. A missing directory is an error, not a
/// new empty store.
pub fn repair(dir: &Path) -> Result<String, RepairError> {
    if !dir.is_dir() {
        return Err(RepairError::NoStore(dir.to_path_buf()));
    }
    let report = roost_persistence::FjallStore::repair(dir).map_err(RepairError::Store)?;
    Ok(if report.is_clean() {
        format!("store at {}: nothing to repair", dir.display())
    } else {
        format!("store at {}: {report}", dir.display())
    })
}

/// Why `store repair` failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RepairError {
    /// There is no directory there.
    NoStore(std::path::PathBuf),
    /// The store could not be repaired or opened.
    Store(roost_persistence::StoreError),
}

impl std::fmt::Display for RepairError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepairError::NoStore(dir) => write!(f, "{}: no such directory", dir.display()),
            RepairError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RepairError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// `roost passwd add '#'` once printed success and wrote a line that
    /// read back as a comment; now it fails, exits non-zero, and writes
    /// nothing.
    #[test]
    fn passwd_add_refuses_a_name_that_reads_back_as_a_comment() {
        let dir = std::env::temp_dir().join(format!("roost-cli-passwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("passwords");
        for user in ["#", "#admin", "", "a:b", "a\nb", " a", "a "] {
            let add = PasswdCommand::Add {
                user: user.into(),
                password: Some("pw".into()),
                password_stdin: false,
                file: Some(path.clone()),
            };
            assert_eq!(passwd("roost", &add, None), ExitCode::FAILURE, "{user:?}");
            assert!(!path.exists(), "{user:?}: file written");
        }
        let add = PasswdCommand::Add {
            user: "alice".into(),
            password: Some("pw".into()),
            password_stdin: false,
            file: Some(path.clone()),
        };
        assert_eq!(passwd("roost", &add, None), ExitCode::SUCCESS);
        assert!(path.exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn repair_says_what_it_found() {
        let missing = std::env::temp_dir().join("roost-no-such-store-dir");
        assert!(matches!(repair(&missing), Err(RepairError::NoStore(_))));

        let dir = std::env::temp_dir().join(format!("roost-repair-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        drop(
            roost_persistence::FjallStore::open(&dir, roost_persistence::Durability::Sync)
                .expect("store"),
        );
        let message = repair(&dir).expect("repairs");
        assert!(message.ends_with("nothing to repair"), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
