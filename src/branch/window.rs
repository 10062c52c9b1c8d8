//! How far back a cluster can be branched or restored, and which base backup a target needs.
//!
//! The earliest point is the end of the oldest base backup the copies hold (before it, no
//! backup is consistent); the latest is the copies' durable position now. A backup's end time
//! is when its sidecar was stored, a little after Postgres reached its end: a time target is
//! only restored from a backup stored before it, so recovery never stops before the backup is
//! consistent ("requested recovery stop point is before consistent recovery point").

use std::path::PathBuf;
use std::time::SystemTime;

use super::target::{format_time, Target};
use crate::storage::backups::{backup_starts, backup_tar};
use crate::storage::wal::Lsn;
use crate::storage::{RestoreWindowStatus, StorageStatus};

/// A base backup in the copies, as a restore sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupPoint {
    pub start: Lsn,
    /// Where recovery from it becomes consistent.
    pub end: Lsn,
    /// When it was stored in the copies (its sidecar's modification time).
    pub stored_at: SystemTime,
}

/// The span a branch can be taken in: times and LSNs, earliest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreWindow {
    pub earliest_lsn: Lsn,
    pub earliest_time: SystemTime,
    pub latest_lsn: Lsn,
    pub latest_time: SystemTime,
}

impl std::fmt::Display for RestoreWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}) to {} ({})",
            format_time(self.earliest_time),
            self.earliest_lsn,
            format_time(self.latest_time),
            self.latest_lsn
        )
    }
}

/// What a restore replays to, once the backup is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// To the end of the WAL placed (the durable position): no recovery target.
    ToEnd,
    Lsn(Lsn),
    Time(SystemTime),
}

/// A restore's plan: the backup to start from, where to stop replaying, and where the WAL
/// placed ends (the source's durable position when asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub backup: BackupPoint,
    pub recovery: Recovery,
    pub wal_end: Lsn,
}

/// Why a target cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("the copies hold no base backup yet: there is nothing to restore from")]
    NoBackup,
    #[error("{what} is before the restore window, {window}")]
    BeforeWindow { what: String, window: RestoreWindow },
    #[error("{what} is in the future (the latest point is {latest})")]
    Future { what: String, latest: String },
}

/// The window, from the backups the copies hold and their durable position at `now`.
pub fn window(backups: &[BackupPoint], durable: Lsn, now: SystemTime) -> Option<RestoreWindow> {
    let oldest = backups.iter().min_by_key(|b| b.end)?;
    Some(RestoreWindow {
        earliest_lsn: oldest.end,
        earliest_time: oldest.stored_at,
        latest_lsn: durable.max(oldest.end),
        latest_time: now,
    })
}

/// Chooses the newest backup that is consistent before `target`, or says why none is.
pub fn plan(
    backups: &[BackupPoint],
    target: Target,
    durable: Lsn,
    now: SystemTime,
) -> Result<Plan, WindowError> {
    let window = window(backups, durable, now).ok_or(WindowError::NoBackup)?;
    let newest_before = |fits: &dyn Fn(&BackupPoint) -> bool| {
        backups
            .iter()
            .filter(|b| fits(b))
            .max_by_key(|b| b.end)
            .copied()
    };
    let (backup, recovery) = match target {
        Target::Now => (newest_before(&|b| b.end <= durable), Recovery::ToEnd),
        Target::Lsn(lsn) => {
            let what = format!("recovery target LSN {lsn}");
            if lsn > durable {
                return Err(WindowError::Future {
                    what,
                    latest: durable.to_string(),
                });
            }
            let backup = newest_before(&|b| b.end <= lsn);
            if backup.is_none() {
                return Err(WindowError::BeforeWindow { what, window });
            }
            (backup, Recovery::Lsn(lsn))
        }
        Target::Time(time) => {
            let what = format!("recovery target time {}", format_time(time));
            if time > now {
                return Err(WindowError::Future {
                    what,
                    latest: format_time(now),
                });
            }
            let backup = newest_before(&|b| b.stored_at <= time && b.end <= durable);
            if backup.is_none() {
                return Err(WindowError::BeforeWindow { what, window });
            }
            (backup, Recovery::Time(time))
        }
    };
    let backup = backup.ok_or(WindowError::NoBackup)?;
    Ok(Plan {
        backup,
        recovery,
        wal_end: durable,
    })
}

/// `storage` with its restore window filled in from the cluster's copies (`copy_dirs`), for
/// `/status`: nothing changes without a durable position or a base backup.
pub fn add_restore_window(mut storage: StorageStatus, copy_dirs: &[PathBuf]) -> StorageStatus {
    let Some(durable) = storage.durable_lsn.as_deref().and_then(Lsn::parse) else {
        return storage;
    };
    if let Some(window) = window(&backups_in(copy_dirs), durable, SystemTime::now()) {
        storage.restore_window = Some(RestoreWindowStatus {
            earliest_time: format_time(window.earliest_time),
            earliest_lsn: window.earliest_lsn.to_string(),
            latest_time: format_time(window.latest_time),
            latest_lsn: window.latest_lsn.to_string(),
            copies_bytes: copies_bytes(copy_dirs),
        });
    }
    storage
}

/// Every base backup the copies hold whole (a tar and its sidecar, in at least one copy), with
/// its end and when it was stored (the latest of its sidecars' times).
pub fn backups_in(dirs: &[PathBuf]) -> Vec<BackupPoint> {
    let mut found: std::collections::BTreeMap<Lsn, BackupPoint> = Default::default();
    for dir in dirs {
        for start in backup_starts(dir) {
            let sidecar = backup_tar(dir, start).with_extension("tar.crc32");
            let Ok(text) = std::fs::read_to_string(&sidecar) else {
                continue;
            };
            let end = text
                .lines()
                .nth(1)
                .and_then(|l| Lsn::parse(l.trim()))
                .unwrap_or(start);
            let Ok(stored_at) = std::fs::metadata(&sidecar).and_then(|m| m.modified()) else {
                continue;
            };
            let point = found.entry(start).or_insert(BackupPoint {
                start,
                end,
                stored_at,
            });
            point.stored_at = point.stored_at.max(stored_at);
        }
    }
    found.into_values().collect()
}

/// Bytes under the cluster's folders in the copies (its WAL and base backups).
pub fn copies_bytes(dirs: &[PathBuf]) -> u64 {
    fn size(path: &std::path::Path) -> u64 {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| size(&entry.path()))
                .sum(),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        }
    }
    dirs.iter().map(|dir| size(dir)).sum()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn backup(start: u64, end: u64, stored: u64) -> BackupPoint {
        BackupPoint {
            start: Lsn(start),
            end: Lsn(end),
            stored_at: at(stored),
        }
    }

    /// Two backups: one consistent at 0x200 (stored at 100 s), one at 0x900 (stored at 500 s);
    /// the copies are durable to 0x1000 at 1000 s.
    fn two() -> Vec<BackupPoint> {
        vec![backup(0x100, 0x200, 100), backup(0x800, 0x900, 500)]
    }

    #[test]
    fn now_replays_the_newest_backup_to_the_durable_end() {
        let plan = plan(&two(), Target::Now, Lsn(0x1000), at(1000)).unwrap();
        assert_eq!(plan.backup.start, Lsn(0x800));
        assert_eq!(plan.recovery, Recovery::ToEnd);
        assert_eq!(plan.wal_end, Lsn(0x1000));
    }

    #[test]
    fn an_lsn_takes_the_newest_backup_consistent_before_it() {
        let backups = two();
        let p = plan(&backups, Target::Lsn(Lsn(0x500)), Lsn(0x1000), at(1000)).unwrap();
        assert_eq!(
            (p.backup.start, p.recovery),
            (Lsn(0x100), Recovery::Lsn(Lsn(0x500)))
        );
        let p = plan(&backups, Target::Lsn(Lsn(0x900)), Lsn(0x1000), at(1000)).unwrap();
        assert_eq!(p.backup.start, Lsn(0x800));
        let p = plan(&backups, Target::Lsn(Lsn(0x1000)), Lsn(0x1000), at(1000)).unwrap();
        assert_eq!(p.backup.start, Lsn(0x800));
    }

    #[test]
    fn a_time_takes_the_newest_backup_stored_before_it() {
        let backups = two();
        let p = plan(&backups, Target::Time(at(499)), Lsn(0x1000), at(1000)).unwrap();
        assert_eq!(p.backup.start, Lsn(0x100));
        assert_eq!(p.recovery, Recovery::Time(at(499)));
        let p = plan(&backups, Target::Time(at(500)), Lsn(0x1000), at(1000)).unwrap();
        assert_eq!(p.backup.start, Lsn(0x800));
        let p = plan(&backups, Target::Time(at(1000)), Lsn(0x1000), at(1000)).unwrap();
        assert_eq!(p.backup.start, Lsn(0x800));
    }

    #[test]
    fn targets_outside_the_window_say_where_it_is() {
        let backups = two();
        let e = plan(&backups, Target::Time(at(99)), Lsn(0x1000), at(1000)).unwrap_err();
        assert!(matches!(e, WindowError::BeforeWindow { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("1970-01-01T00:01:40")
                && text.contains("0/200")
                && text.contains("0/1000"),
            "{text}"
        );
        let e = plan(&backups, Target::Lsn(Lsn(0x1ff)), Lsn(0x1000), at(1000)).unwrap_err();
        assert!(matches!(e, WindowError::BeforeWindow { .. }), "{e}");
        let e = plan(&backups, Target::Time(at(1001)), Lsn(0x1000), at(1000)).unwrap_err();
        assert!(matches!(e, WindowError::Future { .. }), "{e}");
        let e = plan(&backups, Target::Lsn(Lsn(0x1001)), Lsn(0x1000), at(1000)).unwrap_err();
        assert!(matches!(e, WindowError::Future { .. }), "{e}");
        assert_eq!(
            plan(&[], Target::Now, Lsn(0x1000), at(1000)).unwrap_err(),
            WindowError::NoBackup
        );
    }

    #[test]
    fn the_window_runs_from_the_oldest_backups_end_to_the_durable_position() {
        let w = window(&two(), Lsn(0x1000), at(1000)).unwrap();
        assert_eq!(
            (w.earliest_lsn, w.earliest_time, w.latest_lsn, w.latest_time),
            (Lsn(0x200), at(100), Lsn(0x1000), at(1000))
        );
        assert_eq!(window(&[], Lsn(0x1000), at(1000)), None);
    }

    #[test]
    fn backups_are_listed_from_their_sidecars() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("a1");
        std::fs::create_dir_all(copy.join("base")).unwrap();
        let tar = backup_tar(&copy, Lsn(0x300_0028));
        std::fs::write(&tar, b"tar").unwrap();
        std::fs::write(tar.with_extension("tar.crc32"), "0000abcd\n0/3000138\n").unwrap();
        // A tar without its sidecar is not a backup yet.
        std::fs::write(backup_tar(&copy, Lsn(0x500_0028)), b"tar").unwrap();
        let found = backups_in(std::slice::from_ref(&copy));
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].start, found[0].end),
            (Lsn(0x300_0028), Lsn(0x300_0138))
        );
        assert!(copies_bytes(&[copy]) >= 6 + 19);
    }
}
