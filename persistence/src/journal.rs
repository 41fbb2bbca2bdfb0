//! Checking fjall's journal before fjall replays it.
//!
//! fjall 3 replays its journal (`N.jnl` files in the store's directory) at
//! open and, when it meets bytes it cannot read, truncates the file there
//! and carries on without an error (its `RecoveryMode` has one mode,
//! "tolerate corrupt tail", and no strict one yet). That is right for the
//! torn last batch a crash leaves behind, and silently wrong for damage in
//! the middle: everything after it is thrown away. So the store reads the
//! journal itself first, read-only, and tells the two apart:
//!
//! - **torn tail**: the bytes after the last intact batch hold no intact
//!   batch (a write cut short, then the zeros fjall preallocates), and no
//!   later journal file holds one either. Normal after a crash; fjall drops
//!   it, and so do we.
//! - **damage**: an intact batch follows the unreadable bytes, in the same
//!   file or in a later one. Batches that were written (and maybe
//!   acknowledged) would be lost, so the store refuses to open unless asked
//!   to truncate ([`crate::Recovery::Truncate`]).
//!
//! The format read here is fjall 3's journal (format version 3): entries
//! `Start {count u32, seqno u64}`, `count` × (`Item` | `Clear`), `End
//! {xxh3 u64, "FJL\x03"}`, little-endian, the checksum over the encoded
//! items. A batch is intact when all of it parses and the checksum matches.

use std::fs;
use std::hash::Hasher;
use std::io;
use std::path::{Path, PathBuf};

const TAG_START: u8 = 1;
const TAG_ITEM: u8 = 2;
const TAG_END: u8 = 3;
const TAG_CLEAR: u8 = 4;
const TRAILER: &[u8] = b"FJL\x03";

/// One journal file as read.
#[derive(Debug)]
pub(crate) struct JournalFile {
    pub path: PathBuf,
    /// One past its last non-zero byte (fjall preallocates with zeros).
    pub data_end: u64,
    /// Where the intact batches from the start end.
    pub intact_end: u64,
    /// Intact batches from the start, and their records.
    pub batches: u64,
    pub records: u64,
    /// What stopped the reading at `intact_end`, if it stopped before the
    /// end of the file (zero padding after the last batch does not count).
    pub problem: Option<Problem>,
    /// Intact batches (and their records) found after `intact_end`.
    pub batches_after: u64,
    pub records_after: u64,
}

impl JournalFile {
    /// Every intact batch in the file.
    pub fn batches_total(&self) -> u64 {
        self.batches + self.batches_after
    }

    /// The records of every intact batch in the file.
    pub fn records_total(&self) -> u64 {
        self.records + self.records_after
    }
}

/// Why a batch could not be read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Problem {
    pub reason: &'static str,
}

/// Every journal file of the store at `dir`, in replay order.
pub(crate) fn scan(dir: &Path) -> io::Result<Vec<JournalFile>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        files.push((id, entry.path()));
    }
    files.sort_unstable_by_key(|(id, _)| *id);
    files
        .into_iter()
        .map(|(_, path)| {
            let bytes = fs::read(&path)?;
            Ok(read_file(path, &bytes))
        })
        .collect()
}

fn read_file(path: PathBuf, bytes: &[u8]) -> JournalFile {
    let mut pos = 0;
    let mut problem = None;
    let (mut batches, mut records) = (0, 0);
    while pos < bytes.len() {
        match batch(bytes, pos) {
            Ok((end, n)) => {
                pos = end;
                batches += 1;
                records += n;
            }
            Err(p) => {
                // Zeros after the last batch are fjall's preallocation.
                if bytes[pos..].iter().any(|&b| b != 0) {
                    problem = Some(p);
                }
                break;
            }
        }
    }
    let intact_end = pos as u64;
    let (mut batches_after, mut records_after) = (0, 0);
    if problem.is_some() {
        // Look for intact batches anywhere after the damage: each is work
        // that truncating here would throw away.
        let mut at = pos + 1;
        while let Some(off) = bytes[at.min(bytes.len())..]
            .iter()
            .position(|&b| b == TAG_START)
        {
            let start = at + off;
            match batch(bytes, start) {
                Ok((end, records)) => {
                    batches_after += 1;
                    records_after += records;
                    at = end;
                }
                Err(_) => at = start + 1,
            }
        }
    }
    JournalFile {
        path,
        data_end: bytes
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |i| i as u64 + 1),
        intact_end,
        batches,
        records,
        problem,
        batches_after,
        records_after,
    }
}

/// Reads one whole batch at `pos`: where it ends and how many records it
/// holds.
fn batch(bytes: &[u8], pos: usize) -> Result<(usize, u64), Problem> {
    // Where in the batch it failed matters less than where the batch
    // starts: that is where a truncation cuts.
    let fail = |_at: usize, reason| Problem { reason };
    let mut r = Reader { bytes, pos };
    let tag = r.u8().ok_or(fail(pos, "unexpected end of file"))?;
    if tag != TAG_START {
        return Err(fail(pos, "no batch starts here"));
    }
    let count = r.u32().ok_or(fail(pos, "batch header cut short"))?;
    r.u64().ok_or(fail(pos, "batch header cut short"))?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for _ in 0..count {
        let start = r.pos;
        match r.u8() {
            Some(TAG_ITEM) => {
                let ok = (|| {
                    let value_type = r.u8()?;
                    let compression = r.u8()?;
                    r.u64()?; // keyspace
                    let key_len = r.u16()?;
                    r.u32()?; // value length, uncompressed
                    let stored_len = r.u32()?;
                    r.skip(usize::from(key_len))?;
                    r.skip(stored_len as usize)?;
                    // Value, tombstone, weak tombstone; no compression, LZ4.
                    Some((0..=2).contains(&value_type) && compression <= 1)
                })();
                match ok {
                    Some(true) => {}
                    Some(false) => return Err(fail(start, "record of an unknown kind")),
                    None => return Err(fail(start, "record cut short")),
                }
            }
            Some(TAG_CLEAR) => {
                r.u64().ok_or(fail(start, "record cut short"))?;
            }
            Some(TAG_END) => return Err(fail(start, "batch shorter than its header says")),
            Some(_) => return Err(fail(start, "unreadable record")),
            None => return Err(fail(start, "batch cut short")),
        }
        hasher.update(&bytes[start..r.pos]);
    }
    let end = r.pos;
    if r.u8() != Some(TAG_END) {
        return Err(fail(end, "batch has no end marker"));
    }
    let checksum = r.u64().ok_or(fail(end, "end marker cut short"))?;
    let trailer = r
        .take(TRAILER.len())
        .ok_or(fail(end, "end marker cut short"))?;
    if trailer != TRAILER {
        return Err(fail(end, "end marker damaged"));
    }
    if checksum != hasher.finish() {
        return Err(fail(pos, "checksum mismatch"));
    }
    Ok((r.pos, u64::from(count)))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
}

/// What the journal check found, and whether it is damage rather than a
/// torn tail.
#[derive(Debug)]
pub(crate) struct Verdict {
    pub files: Vec<JournalFile>,
    /// Index into `files` of the first file with damage (intact work after
    /// the unreadable bytes), if any.
    pub damaged: Option<usize>,
}

pub(crate) fn check(dir: &Path) -> io::Result<Verdict> {
    let files = scan(dir)?;
    let mut damaged = None;
    for (i, f) in files.iter().enumerate() {
        if f.problem.is_none() {
            continue;
        }
        let later_work =
            f.batches_after > 0 || files[i + 1..].iter().any(|g| g.batches_total() > 0);
        if later_work {
            damaged = Some(i);
            break;
        }
    }
    Ok(Verdict { files, damaged })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, FjallStore, Store};
    use roost_core::MqttStr;
    use roost_core::broker::StoreOp;

    fn filled(batches: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FjallStore::open(dir.path(), Durability::Sync).unwrap();
        for i in 0..batches {
            let id = format!("client-{i}");
            store
                .apply(&[StoreOp::SessionPut {
                    client_id: MqttStr::copy_from_str(&id).unwrap(),
                    expiry_interval: 60,
                    owner: None,
                }])
                .unwrap();
            store.commit().unwrap();
        }
        dir
    }

    #[test]
    fn an_intact_journal_reads_to_its_end() {
        let dir = filled(20);
        let v = check(dir.path()).unwrap();
        assert!(v.damaged.is_none());
        let written: u64 = v.files.iter().map(|f| f.intact_end).sum();
        assert!(written > 0);
        assert!(v.files.iter().all(|f| f.problem.is_none()), "{v:?}");
    }

    #[test]
    fn a_torn_last_batch_is_no_damage() {
        let dir = filled(20);
        let v = check(dir.path()).unwrap();
        let last = v.files.last().unwrap();
        let mut bytes = fs::read(&last.path).unwrap();
        // Half a batch after the last one, then the zeros that follow.
        let end = last.intact_end as usize;
        bytes[end..end + 10].copy_from_slice(&[1, 1, 0, 0, 0, 9, 0, 0, 0, 0]);
        fs::write(&last.path, &bytes).unwrap();
        let v = check(dir.path()).unwrap();
        assert!(v.damaged.is_none(), "{v:?}");
        assert!(v.files.last().unwrap().problem.is_some());
    }
}
