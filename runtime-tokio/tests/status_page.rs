//! The status page at `/` of the `[http]` endpoint, rendered by headless
//! Chromium (Debian's /usr/bin/chromium, which scripts/install-test-deps.sh
//! installs) against the real `roost` binary while clients publish: the
//! page must show the live numbers. Its screenshot is kept in
//! `target/test-artifacts/status-page.png`.

use roost_conformance::attacks::Binary;
use roost_conformance::observability::{Mqtt, http_addr, start};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium(args: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new("timeout")
        .arg("60")
        .arg(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1000,700",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("chromium runs (scripts/install-test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn status_page_shows_live_numbers_in_chromium() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start(&Binary::new(env!("CARGO_BIN_EXE_roost")), dir.path()).expect("starts");
    let mqtt = broker.addr_of("tcp").expect("tcp listener");
    let http = http_addr(&broker).expect("http listener");

    let mut sub = Mqtt::connect(mqtt, "page-sub").expect("sub");
    sub.subscribe("page/#", 0).expect("subscribe");
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut publisher = Mqtt::connect(mqtt, "page-pub").expect("pub");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let topic = if n % 4 == 0 { "page/cold" } else { "page/hot" };
                publisher.publish(topic, b"x", 0, 0).expect("publish");
                n += 1;
                if n % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            n
        })
    };

    let url = format!("http://{http}/");
    // The page polls once a second; 3.5 s of virtual time gives it several
    // polls to compute rates from. Virtual seconds pass faster than real
    // ones, so the rates shown are only checked to be live, not exact.
    // On a loaded machine the page's polls can all land between two of
    // the publisher's bursts (virtual time runs ahead of the real one) and
    // show a rate of 0: look again, up to three times, before judging.
    let budget = "--virtual-time-budget=3500".to_string();
    let live = |dom: &str| {
        ["in_rate", "out_rate"].iter().all(|id| {
            dom.split_once(&format!("id=\"{id}\">"))
                .and_then(|(_, rest)| rest.split_once('<'))
                .is_some_and(|(shown, _)| shown != "–" && shown != "0")
        })
    };
    let mut dom = String::new();
    for _ in 0..3 {
        dom = chromium(&[budget.clone(), "--dump-dom".into(), url.clone()]);
        if live(&dom) {
            break;
        }
    }
    let artifacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact dir");
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[budget, format!("--screenshot={}", shot.display()), url]);
    stop.store(true, Ordering::Relaxed);
    let published = publishing.join().expect("publisher");
    drop(sub);

    let text = |id: &str| -> String {
        let start = dom
            .find(&format!("id=\"{id}\">"))
            .unwrap_or_else(|| panic!("#{id} not in the page:\n{dom}"));
        let rest = &dom[start + id.len() + 6..];
        rest[..rest.find('<').expect("closing tag")].to_owned()
    };
    assert!(published > 0);
    assert_eq!(text("connections"), "2", "clients connected");
    assert_eq!(text("subscriptions"), "1");
    assert!(dom.contains("ready · up"), "readiness shown:\n{dom}");
    for id in ["messages_received", "in_rate", "out_rate"] {
        let shown = text(id);
        assert!(
            shown != "–" && shown != "0",
            "#{id} shows no live number ({shown:?}):\n{dom}"
        );
    }
    assert!(dom.contains("page/hot"), "busiest topics listed:\n{dom}");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "a real screenshot"
    );
}
