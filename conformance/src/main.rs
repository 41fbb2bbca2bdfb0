//! `roost-conformance`: runs the black-box suite against a broker and prints
//! one line per scenario, then `N passed, M failed, K skipped`.

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use roost_conformance::attacks;
use roost_conformance::runner::{self, Selection};
use roost_conformance::scenario::{Config, Outcome};
use roost_conformance::transport::TlsClient;
use roost_conformance::wire::Version;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum VersionArg {
    #[value(name = "3.1.1")]
    V311,
    #[value(name = "5")]
    V5,
    #[value(name = "all")]
    All,
}

/// Black-box MQTT conformance suite (Paho interoperability cases plus bad
/// input) for any broker at HOST:PORT; with --attacks, the adversarial
/// suite against a broker executable.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker TCP port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Protocol version(s) to test.
    #[arg(long, value_enum, default_value = "all")]
    version: VersionArg,
    /// Only scenarios whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
    /// List the selected scenarios instead of running them.
    #[arg(long)]
    list: bool,
    /// The broker's maximum packet size in bytes (used by the oversize
    /// scenarios when the broker announces none).
    #[arg(long, default_value_t = 268_435_455)]
    max_packet_size: u32,
    /// Print each scenario's note (which allowed behaviour was seen) and time.
    #[arg(long, short)]
    verbose: bool,
    /// Connect over TLS (with --ws: WebSocket over TLS). The broker's
    /// certificate is always verified, against --ca.
    #[arg(long, requires = "ca")]
    tls: bool,
    /// PEM file of the CA (or the broker's self-signed certificate) to
    /// trust for --tls.
    #[arg(long, requires = "tls", value_name = "FILE")]
    ca: Option<String>,
    /// The name the broker's certificate must carry (default: --host).
    #[arg(long, requires = "tls", value_name = "NAME")]
    sni: Option<String>,
    /// Connect over WebSocket (subprotocol `mqtt`) at this HTTP path, for
    /// example /mqtt.
    #[arg(long, value_name = "PATH", value_parser = ws_path)]
    ws: Option<String>,
    /// Run the adversarial attacks instead, each against its own broker
    /// started from this executable (roost, roost-smol, roost-mio or one
    /// with the same flags); --filter selects attacks by name. --host,
    /// --port and the transport flags do not apply.
    #[arg(long, value_name = "BINARY")]
    attacks: Option<std::path::PathBuf>,
}

fn ws_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        Ok(s.to_owned())
    } else {
        Err(format!("a WebSocket path starts with '/' (try /{s})"))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(binary) = &args.attacks {
        return run_attacks(binary, args.filter.as_deref(), args.list).await;
    }
    let selection = Selection {
        version: match args.version {
            VersionArg::V311 => Some(Version::V311),
            VersionArg::V5 => Some(Version::V5),
            VersionArg::All => None,
        },
        filter: args.filter.clone(),
    };
    if args.list {
        for s in runner::all_scenarios()
            .iter()
            .filter(|s| selection.matches(s))
        {
            let mark = if s.expected_mosquitto_difference.is_some() {
                " [differs on Mosquitto]"
            } else {
                ""
            };
            println!("{:<45} {}{mark}", s.name, s.summary);
        }
        return ExitCode::SUCCESS;
    }
    let mut config = Config::new(&args.host, args.port);
    config.max_packet_size = args.max_packet_size;
    if let Some(ca) = &args.ca {
        let name = args.sni.as_deref().unwrap_or(&args.host);
        match TlsClient::from_file(ca, name, &args.host) {
            Ok(tls) => config.target.transport.tls = Some(tls),
            Err(e) => {
                eprintln!("roost-conformance: --ca {e}");
                return ExitCode::from(2);
            }
        }
    }
    config.target.transport.ws_path = args.ws.clone();
    let verbose = args.verbose;
    let report = runner::run(&config, &selection, |v| {
        println!("{}", v.line());
        if verbose {
            if let Ok(Outcome::PassNoted(note)) = &v.result {
                println!("    note: {note}");
            }
            if let (Err(_), Some(why)) = (&v.result, v.expected_mosquitto_difference) {
                println!("    known Mosquitto difference: {why}");
            }
            println!("    took {:.1} s", v.elapsed.as_secs_f32());
        }
    })
    .await;
    println!("{}", report.summary());
    if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `--attacks BINARY`: every attack (or those whose name contains
/// `filter`), one after the other, each report printed as it ends.
async fn run_attacks(binary: &std::path::Path, filter: Option<&str>, list: bool) -> ExitCode {
    let bin = attacks::Binary::new(binary);
    let mut failed = 0;
    let mut ran = 0;
    for name in attacks::ATTACKS
        .iter()
        .filter(|n| filter.is_none_or(|f| n.contains(f)))
    {
        if list {
            println!("{name}");
            continue;
        }
        let report = attacks::run_one(name, &bin).await;
        ran += 1;
        if !report.passed() {
            failed += 1;
        }
        println!("{report}");
    }
    if !list {
        println!("{} attacks held, {failed} broke a bound", ran - failed);
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            "x",
            "--port",
            "18931",
            "--version",
            "3.1.1",
            "--filter",
            "bad",
        ])
        .unwrap();
        assert_eq!(a.port, 18931);
        assert!(matches!(a.version, VersionArg::V311));
        assert!(
            Args::try_parse_from(["x", "--ca", "f"]).is_err(),
            "--ca needs --tls"
        );
        assert!(
            Args::try_parse_from(["x", "--tls"]).is_err(),
            "--tls needs --ca"
        );
        assert!(
            Args::try_parse_from(["x", "--sni", "n"]).is_err(),
            "--sni needs --tls"
        );
        assert!(
            Args::try_parse_from(["x", "--ws", "mqtt"]).is_err(),
            "a path starts with /"
        );
        let a = Args::try_parse_from([
            "x",
            "--tls",
            "--ca",
            "ca.pem",
            "--sni",
            "localhost",
            "--ws",
            "/mqtt",
        ])
        .unwrap();
        assert!(a.tls);
        assert_eq!(a.ca.as_deref(), Some("ca.pem"));
        assert_eq!(a.sni.as_deref(), Some("localhost"));
        assert_eq!(a.ws.as_deref(), Some("/mqtt"));
    }
}
