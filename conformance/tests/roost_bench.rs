//! roost-bench end to end, against its own sink: the scenarios a benchmark
//! run depends on report what they did.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_roost-bench");

/// The sink on a free port, killed when dropped.
struct Sink {
    child: Child,
    port: u16,
}

/// A port nothing listens on (free a moment ago).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sink {
    fn start() -> Sink {
        let port = free_port();
        let child = Command::new(BENCH)
            .args(["sink", "--port", &port.to_string(), "--deadline", "120"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sink did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sink { child, port }
    }

    /// Runs a scenario against the sink and returns its JSON report.
    fn run(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(BENCH)
            .args(args)
            .args([
                "--port",
                &self.port.to_string(),
                "--deadline",
                "60",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn conns_spread_over_processes_counts_every_connection() {
    let sink = Sink::start();
    let report = sink.run(&["conns", "--connections", "301", "--processes", "3"]);
    assert_eq!(report["extra"]["connections_open"], 301.0, "{report}");
    assert_eq!(report["extra"]["processes"], 3.0, "{report}");
    assert_eq!(report["received"], 301, "{report}");
    assert_eq!(report["loss"], 0, "{report}");
    assert!(report["errors"].as_array().unwrap().is_empty(), "{report}");
}

#[test]
fn conns_reports_failures_when_nothing_listens() {
    let port = free_port();
    let out = Command::new(BENCH)
        .args(["conns", "--connections", "10", "--processes", "2", "--json"])
        .args(["--port", &port.to_string(), "--deadline", "30"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["extra"]["connections_open"], 0.0, "{report}");
    assert_eq!(report["extra"]["connections_failed"], 10.0, "{report}");
    assert!(!report["errors"].as_array().unwrap().is_empty(), "{report}");
}

#[test]
fn fanin_delivers_everything_it_sends() {
    let sink = Sink::start();
    let report = sink.run(&[
        "fanin",
        "--publishers",
        "2",
        "--qos",
        "1",
        "--count",
        "2000",
    ]);
    assert_eq!(report["sent"], 4000, "{report}");
    assert_eq!(report["received"], 4000, "{report}");
    assert_eq!(report["loss"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
}
