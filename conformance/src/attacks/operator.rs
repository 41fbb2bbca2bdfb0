//! Attacks through the operator's tools: hostile user names for
//! `passwd add`, and a corrupt store journal.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::floods::setup;
use super::{Binary, Login, Report, temp_dir};
use crate::wire::{Publish, Version};

// ---------------------------------------------------------------------------
// 8. `passwd add` with hostile names.

/// Names `passwd add` must refuse, and why.
const HOSTILE_NAMES: &[(&str, &str)] = &[
    ("#", "starts with # (a comment line in the file)"),
    ("#alice", "starts with #"),
    (" alice", "leading whitespace"),
    ("alice ", "trailing whitespace"),
    ("al\nice", "a newline (a second line in the file)"),
    ("al:ice", "contains the field separator ':'"),
    ("", "empty"),
];

/// `BIN passwd add NAME --file F --password x` for each hostile name: it
/// must exit non-zero with a message, and never write the file.
pub(super) fn passwd_hostile_names(bin: &Binary) -> Report {
    let mut r = Report::new(
        "passwd-hostile-names",
        "`passwd add NAME --file F --password x` with NAME `#`, `#alice`, ` alice`, `alice `, \
         a name with a newline, one with ':', or an empty one: exits non-zero with an error \
         message, and F is never created",
    );
    let dir = setup!(r, temp_dir());
    for (i, (name, why)) in HOSTILE_NAMES.iter().enumerate() {
        let file = dir.path().join(format!("passwd-{i}"));
        let args: Vec<OsString> = vec![
            "passwd".into(),
            "add".into(),
            (*name).into(),
            "--file".into(),
            file.clone().into(),
            "--password".into(),
            "x".into(),
        ];
        let ran = setup!(r, bin.run(&args, Duration::from_secs(20)));
        let code = ran
            .status
            .map_or("still running after 20 s".to_owned(), |s| s.to_string());
        let written = file.exists();
        let message = ran.stderr.lines().next().unwrap_or("").trim().to_owned();
        r.measure(format!(
            "{name:?} ({why}): {code}; file {}; stderr {message:?}",
            if written { "WRITTEN" } else { "not written" }
        ));
        let mut wrong = Vec::new();
        if ran.status.is_none_or(|s| s.success()) {
            wrong.push(format!("did not fail ({code})"));
        }
        if written {
            wrong.push("wrote the file".to_owned());
        }
        if message.is_empty() {
            wrong.push("printed no error".to_owned());
        }
        r.check(wrong.is_empty(), || {
            format!("passwd add {name:?} ({why}): {}", wrong.join(", "))
        });
    }
    r
}

// ---------------------------------------------------------------------------
// Store faults.

/// Retained QoS 1 messages written before the corruption.
const STORED_MESSAGES: usize = 200;

/// Fills a `--data-dir` store, stops the broker cleanly, writes garbage in
/// the middle of the written part of the biggest file, and starts again:
/// the broker must refuse to start, naming the file.
pub(super) async fn corrupt_journal(bin: &Binary) -> Report {
    let mut r = Report::new(
        "corrupt-journal",
        format!(
            "after {STORED_MESSAGES} retained QoS 1 messages and a persistent session were \
             stored with --data-dir and the broker stopped cleanly (SIGTERM), 256 bytes of \
             garbage are written in the middle of the written part of the biggest file: the \
             broker then exits non-zero within 10 s, and its message names that file"
        ),
    );
    let dir = setup!(r, temp_dir());
    let data = dir.path().join("data");
    let args: Vec<OsString> = vec![
        "--port".into(),
        "0".into(),
        "--data-dir".into(),
        data.clone().into(),
    ];
    {
        let broker = setup!(r, bin.spawn(&args, 1));
        let (mut c, _) = setup!(
            r,
            Login::new(Version::V311, "keeper")
                .persistent()
                .connect(broker.addr(0))
                .await
        );
        setup!(r, c.subscribe("keep/#", 1).await);
        let payload = vec![b'k'; 1000];
        for i in 0..STORED_MESSAGES {
            setup!(
                r,
                c.publish(Publish::new(&format!("keep/{i}"), 1, &payload).retained())
                    .await
            );
        }
        setup!(r, c.disconnect().await);
        setup!(r, broker.signal("TERM"));
        let status = broker.wait_exit(Duration::from_secs(10));
        r.measure(format!(
            "clean stop: {}",
            status.map_or("did not exit in 10 s".into(), |s| s.to_string())
        ));
        if !status.is_some_and(|s| s.success()) {
            r.violate("the broker did not stop cleanly on SIGTERM within 10 s");
            return r;
        }
    }
    let (file, written) = setup!(r, biggest_written_file(&data));
    let offset = written / 2;
    setup!(r, scribble(&file, offset));
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    r.measure(format!(
        "corrupted {} ({written} bytes written) at offset {offset}",
        file.strip_prefix(&data).unwrap_or(&file).display()
    ));
    let ran = setup!(r, bin.run(&args, Duration::from_secs(10)));
    let tail: Vec<&str> = ran.stderr.lines().rev().take(3).collect();
    r.measure(format!(
        "restart: {}; stderr ends {:?}",
        ran.status
            .map_or("still running after 10 s".into(), |s| s.to_string()),
        tail.into_iter().rev().collect::<Vec<_>>()
    ));
    match ran.status {
        None => r.violate("the broker started and kept running on a corrupt store"),
        Some(s) if s.success() => r.violate("the broker exited with success on a corrupt store"),
        Some(_) => {}
    }
    r.check(ran.stderr.contains(&name), || {
        format!("the refusal does not name the corrupt file {name:?}")
    });
    r
}

/// The file under `dir` with the most written bytes (its length without
/// trailing zeros: fjall preallocates its journal), and that length.
fn biggest_written_file(dir: &Path) -> Result<(PathBuf, u64), String> {
    let mut best: Option<(PathBuf, u64)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for e in entries {
            let path = e.map_err(|e| e.to_string())?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let written = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64;
            if best.as_ref().is_none_or(|(_, n)| written > *n) {
                best = Some((path, written));
            }
        }
    }
    best.filter(|(_, n)| *n > 0)
        .ok_or_else(|| format!("no data written under {}", dir.display()))
}

/// Writes 256 bytes of garbage at `offset` of `file`.
fn scribble(file: &Path, offset: u64) -> Result<(), String> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(64)))
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", file.display()))
}
