//! A store's first start, and what an unfinished one leaves behind.
//!
//! fjall creates a database by writing its lock file, its first journal,
//! its `keyspaces` folder and, last, its `version` file; at the next start
//! a `version` file means "a database lives here". A first start that
//! fails part-way (a full disk) used to leave a `version` file of 0 bytes
//! (or none and a journal), after which every start failed
//! (`InvalidVersion(None)`, or a journal that already exists) until
//! someone deleted the directory by hand.
//!
//! fjall writes that file itself, so the store cannot make the write
//! atomic; it makes the whole first start undoable instead:
//!
//! - a first start that fails removes what it created ([`clear`]);
//! - a directory whose `version` file is missing, empty or unreadable, and
//!   whose fjall files hold no data (journals of zeros, no tables), is such
//!   an unfinished start: it is cleared and created afresh, and the
//!   [`RecoveryReport`] says so;
//! - the same with data in it is refused ([`StoreError::Unrecognized`]):
//!   guessing could destroy a store whose `version` file alone was
//!   damaged.
//!
//! Files that are not fjall's (a `lost+found`, a README) are left alone
//! and never count as data.

use crate::{RecoveryReport, StoreError};
use std::fs;
use std::io::{self, Read};
use std::path::Path;

const VERSION: &str = "version";
const LOCK: &str = "lock";
const KEYSPACES: &str = "keyspaces";

fn is_fjall(name: &str) -> bool {
    name == VERSION || name == LOCK || name == KEYSPACES || name.ends_with(".jnl")
}

/// Gets `path` ready for fjall: whether the store is created there now
/// (rather than reopened).
pub(crate) fn prepare(path: &Path, report: &mut RecoveryReport) -> Result<bool, StoreError> {
    let io_err = |action| {
        move |source| StoreError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    };
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(io_err("read the directory")(e)),
    };
    let mut fjall_files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("read the directory"))?;
        if let Some(name) = entry.file_name().to_str().filter(|n| is_fjall(n)) {
            fjall_files.push(name.to_owned());
        }
    }
    if fjall_files.is_empty() {
        return Ok(true);
    }
    let what = match fs::read(path.join(VERSION)) {
        // "FJL" and a format version; fjall itself says which it reads.
        Ok(bytes) if bytes.len() == 4 && bytes.starts_with(b"FJL") => return Ok(false),
        Ok(bytes) if bytes.is_empty() => "the version file is empty",
        Ok(_) => "the version file is damaged",
        Err(e) if e.kind() == io::ErrorKind::NotFound => "there is no version file",
        Err(e) => return Err(io_err("read the version file")(e)),
    };
    if holds_data(path, &fjall_files).map_err(io_err("read the directory"))? {
        return Err(StoreError::Unrecognized {
            path: path.to_path_buf(),
            what,
        });
    }
    clear(path, false);
    report.reinitialized = true;
    Ok(true)
}

/// Whether any of fjall's files holds data: a journal with a non-zero
/// byte, a non-empty file under `keyspaces`.
fn holds_data(path: &Path, fjall_files: &[String]) -> io::Result<bool> {
    for name in fjall_files {
        let full = path.join(name);
        if name.ends_with(".jnl") {
            let mut file = fs::File::open(&full)?;
            let mut buf = vec![0; 64 * 1024];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                if buf[..n].iter().any(|&b| b != 0) {
                    return Ok(true);
                }
            }
        } else if name == KEYSPACES && tree_has_bytes(&full)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn tree_has_bytes(dir: &Path) -> io::Result<bool> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if tree_has_bytes(&entry.path())? {
                return Ok(true);
            }
        } else if entry.metadata()?.len() > 0 || !kind.is_file() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes fjall's files from `path` (and `path` itself, if `remove_dir`
/// and nothing else is in it). Best effort: it runs after something failed
/// already, and what it cannot remove the next start recognizes.
pub(crate) fn clear(path: &Path, remove_dir: bool) {
    let Ok(entries) = fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_fjall(&name) {
            continue;
        }
        let full = entry.path();
        let _ = if name == KEYSPACES {
            fs::remove_dir_all(&full)
        } else {
            fs::remove_file(&full)
        };
    }
    if remove_dir {
        let _ = fs::remove_dir(path);
    } else {
        let _ = sync_dir(path);
    }
}

/// Makes the directory's entries (creations, removals) durable.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    fs::File::open(path)?.sync_all()
}
