//! A `FjallStore` on a real full disk: a small tmpfs, mounted by the test.
//!
//! Mounting needs root (or CAP_SYS_ADMIN); where the test cannot mount, it
//! says so on stderr and passes without checking anything.

use bytes::Bytes;
use roost_core::broker::{StoreOp, StoredMessage};
use roost_core::codec::{PublishProperties, QoS};
use roost_core::topic::TopicName;
use roost_persistence::{Durability, FjallStore, Store, StoreError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Fills the file system up with a ballast file; returns its path.
    fn fill(&self) -> PathBuf {
        self.fill_as("ballast")
    }

    fn fill_as(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        let chunk = vec![0xAB; 64 * 1024];
        let mut f = std::fs::File::create(&path).unwrap();
        use std::io::Write;
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn put(i: usize, payload: usize) -> Vec<StoreOp> {
    vec![StoreOp::RetainedPut {
        topic: TopicName::copy_from_str(&format!("r/{i}")).unwrap(),
        message: StoredMessage {
            topic: TopicName::copy_from_str(&format!("r/{i}")).unwrap(),
            payload: noise(i, payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: PublishProperties::default(),
        },
    }]
}

/// Bytes that do not compress (fjall compresses its journal).
fn noise(seed: usize, len: usize) -> Bytes {
    let mut x = seed as u64 ^ 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn first_start_on_a_full_disk_leaves_nothing_behind() {
    let Some(fs) = Tmpfs::mount("1M") else { return };
    let ballast = fs.fill();
    let data = fs.path().join("data");
    let err = FjallStore::open(&data, Durability::Sync).unwrap_err();
    eprintln!("first start on a full disk: {err}");
    // Whatever part of the start failed, nothing of it is left.
    assert!(
        !data.exists(),
        "{:?}",
        std::fs::read_dir(&data).map(|d| d.count())
    );

    std::fs::remove_file(ballast).unwrap();
    let store = FjallStore::open(&data, Durability::Sync).unwrap();
    assert!(store.report().is_clean(), "{}", store.report());
}

#[test]
fn a_full_disk_interrupts_the_store_and_space_coming_back_resumes_it() {
    let Some(fs) = Tmpfs::mount("4M") else { return };
    let data = fs.path().join("data");
    let mut store = FjallStore::open(&data, Durability::Sync).unwrap();
    let mut applied = 0;
    // Fill the rest of the disk, then write until the store notices.
    let ballast = fs.fill();
    let mut first_error = None;
    while applied < 10_000 {
        let batch = put(applied, 2048);
        let result = store.apply(&batch).and_then(|()| store.commit());
        applied += 1;
        if let Err(e) = result {
            first_error = Some(e);
            break;
        }
    }
    let first_error = first_error.expect("the disk never filled up");
    eprintln!("after {applied} batches: {first_error}");
    assert!(store.is_interrupted());

    // Still full: batches are kept, failed at once, and a retry fails
    // (they are more than a reopen frees: fjall lets go of some pages).
    let ballast2 = fs.fill_as("ballast2");
    for _ in 0..8 {
        match store.apply(&put(applied, 128 * 1024)) {
            Err(StoreError::Interrupted { .. }) => {}
            other => panic!("expected Interrupted, got {other:?}"),
        }
        applied += 1;
    }
    assert!(store.commit().is_err());
    assert!(store.backlog_len() >= 8);

    // Space comes back (the disk grows, the ballast goes): the next commit
    // reopens, writes what was kept, and the store works as before.
    std::fs::remove_file(ballast).unwrap();
    std::fs::remove_file(ballast2).unwrap();
    fs.resize("64M");
    store.commit().unwrap();
    assert!(!store.is_interrupted());
    assert_eq!(store.backlog_len(), 0);
    store.apply(&put(applied, 16)).unwrap();
    store.commit().unwrap();
    applied += 1;

    // Everything the engine emitted is there, once, after a restart too.
    let got = store.recover().unwrap().retained.len();
    assert_eq!(got, applied);
    drop(store);
    let mut store = FjallStore::open(&data, Durability::Sync).unwrap();
    assert_eq!(store.recover().unwrap().retained.len(), applied);
}
