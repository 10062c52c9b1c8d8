//! A standby takes over as the writer: the WAL it did not receive from the lost writer is laid
//! into its `pg_wal` from the copies, so that nothing a client was told is committed is lost.
//!
//! A standby streams from the writer on its own, behind the copies or ahead of them; a commit
//! was acknowledged once a write quorum of copies held it. Every copy holds a prefix of the one
//! WAL stream the writer wrote, and so does the standby, so the longest of them is a superset of
//! every other: [`fill_standby_wal`] makes the standby's WAL at least as long as the furthest
//! copy's (read from at least 3 copies, which overlap every write quorum). The standby then
//! starts without `standby.signal`, and Postgres's crash recovery replays that WAL to its end on
//! the same timeline; the copies go on streaming from where they are, with no fork to mend.
//!
//! The segment holding the standby's received position keeps the standby's bytes before it
//! and takes the copies' after it; later segments are the copies' whole; any segment of the
//! standby's beyond the new end is removed, so that no stale page with a matching address can
//! ever be replayed after a later crash.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{anyhow, Context};

use super::identity::Identity;
use super::read;
use super::receiver::segment_start;
use super::wal::{parse_segment_file_name, segment_file_name, Lsn, SEGMENT_SIZE};

/// What the fill did, for the failover's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filled {
    /// Where the standby's own WAL ended.
    pub received: Lsn,
    /// Where its WAL ends now (`received` when the copies held nothing beyond it).
    pub end: Lsn,
}

impl Filled {
    pub fn bytes(&self) -> u64 {
        self.end.0.saturating_sub(self.received.0)
    }
}

/// Lays the copies' WAL beyond `received` into `pgdata/pg_wal` (blocking work). `received` is
/// the end of the WAL the standby flushed (`pg_last_wal_receive_lsn()`, or its replay position
/// when it never streamed).
pub fn fill_standby_wal(
    dirs: &[std::path::PathBuf],
    identity: Option<&Identity>,
    pgdata: &Path,
    received: Lsn,
) -> anyhow::Result<Filled> {
    let readable = read::readable_quorum(dirs, identity, "a takeover").map_err(|e| anyhow!(e))?;
    let timeline = identity
        .map(|identity| identity.timeline)
        .ok_or_else(|| anyhow!("the copies hold no WAL yet"))?;
    let pg_wal = pgdata.join("pg_wal");
    let scratch = pgdata.with_extension("takeover-wal");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    let first = segment_start(received);
    let restored = read::restore_wal(&readable, timeline, first, &scratch);
    let result = restored
        .map_err(|e| anyhow!(e))
        .and_then(|end| place(&scratch, &pg_wal, timeline, received, end));
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// Moves what was restored into `scratch` over the standby's segments.
fn place(
    scratch: &Path,
    pg_wal: &Path,
    timeline: u32,
    received: Lsn,
    end: Lsn,
) -> anyhow::Result<Filled> {
    if end <= received {
        // The standby holds as much as any copy (or more): its own WAL is the longest.
        return Ok(Filled {
            received,
            end: received,
        });
    }
    for segment in received.segment()..=last_segment(end) {
        let name = segment_file_name(timeline, segment);
        let from = scratch.join(&name);
        let to = pg_wal.join(&name);
        if segment == received.segment() && to.exists() {
            // The standby's bytes before `received`, the copies' from there on.
            let offset = received.0 - segment * SEGMENT_SIZE;
            let mut bytes = fs::read(&from).with_context(|| format!("reading {name}"))?;
            bytes.resize(SEGMENT_SIZE as usize, 0);
            let file = OpenOptions::new().write(true).open(&to)?;
            file.write_all_at(&bytes[offset as usize..], offset)?;
            file.set_len(SEGMENT_SIZE)?;
            file.sync_all()?;
        } else {
            fs::rename(&from, &to).with_context(|| format!("placing {name}"))?;
        }
    }
    // Nothing of the standby's may lie beyond the new end.
    for entry in fs::read_dir(pg_wal)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((_, segment)) = parse_segment_file_name(&name) {
            if segment > last_segment(end) && !name.contains('.') {
                fs::remove_file(entry.path())?;
            }
        }
    }
    File::open(pg_wal)?.sync_all()?;
    Ok(Filled { received, end })
}

/// The segment holding the last byte before `end`.
fn last_segment(end: Lsn) -> u64 {
    Lsn(end.0.saturating_sub(1)).segment()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_with(bytes: &[(u64, u8)]) -> Vec<u8> {
        let mut segment = vec![0u8; SEGMENT_SIZE as usize];
        for (offset, byte) in bytes {
            segment[*offset as usize] = *byte;
        }
        segment
    }

    #[test]
    fn the_standby_keeps_its_prefix_takes_the_rest_and_loses_what_lies_beyond() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch");
        let pg_wal = dir.path().join("pg_wal");
        fs::create_dir_all(&scratch).unwrap();
        fs::create_dir_all(&pg_wal).unwrap();
        let first = segment_file_name(1, 3);
        let second = segment_file_name(1, 4);
        let stale = segment_file_name(1, 5);
        // The standby: segment 3 up to offset 100 (its byte 7 at 10), and a stale segment 5.
        fs::write(pg_wal.join(&first), segment_with(&[(10, 7), (150, 9)])).unwrap();
        fs::write(pg_wal.join(&stale), segment_with(&[(0, 1)])).unwrap();
        // The copies: segment 3 whole (byte 8 at 10 would be the same stream; 5 after 100), 4.
        fs::write(scratch.join(&first), segment_with(&[(10, 8), (120, 5)])).unwrap();
        fs::write(scratch.join(&second), segment_with(&[(0, 6)])).unwrap();
        let received = Lsn(3 * SEGMENT_SIZE + 100);
        let end = Lsn(4 * SEGMENT_SIZE + 50);
        let filled = place(&scratch, &pg_wal, 1, received, end).unwrap();
        assert_eq!(filled.bytes(), end.0 - received.0);
        let kept = fs::read(pg_wal.join(&first)).unwrap();
        assert_eq!(kept[10], 7, "the standby's prefix stays");
        assert_eq!(kept[120], 5, "the copies' bytes follow");
        assert_eq!(
            kept[150], 0,
            "the standby's bytes past its received end are replaced"
        );
        assert_eq!(fs::read(pg_wal.join(&second)).unwrap()[0], 6);
        assert!(!pg_wal.join(&stale).exists(), "nothing beyond the new end");
    }

    #[test]
    fn a_standby_ahead_of_every_copy_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let pg_wal = dir.path().join("pg_wal");
        fs::create_dir_all(&pg_wal).unwrap();
        let name = segment_file_name(1, 3);
        fs::write(pg_wal.join(&name), segment_with(&[(500, 2)])).unwrap();
        let received = Lsn(3 * SEGMENT_SIZE + 600);
        let filled = place(dir.path(), &pg_wal, 1, received, Lsn(3 * SEGMENT_SIZE + 10)).unwrap();
        assert_eq!(filled.end, received);
        assert_eq!(fs::read(pg_wal.join(&name)).unwrap()[500], 2);
    }
}
