//! Base backups in the copies: `base/<start>.tar` with a `<start>.tar.crc32` sidecar (the tar's
//! checksum, then the WAL position a restore must reach), stored into every member, listed, and
//! pruned with the WAL only older backups needed.
//!
//! Both files are written under temporary names, synced and renamed, the sidecar first: a tar
//! listed under its name always has its sidecar. A backup counts (for the newest one, and for
//! what a prune keeps) only once a quorum of copies holds both.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::copies::CopiesView;
use super::private::create_private;
use super::quorum::Health;
use super::repair::install_file;
use super::segment::sync_dir;
use super::wal::{parse_segment_file_name, Lsn};

impl CopiesView {
    /// Copies a finished base backup (a tar file) into every copy that is up, with its checksum.
    /// Streams the file (a backup is as large as the database) and takes no lock on the set:
    /// commits go on meanwhile. Returns how many copies hold it.
    pub fn store_backup(&self, tar: &Path, start: Lsn, end: Lsn) -> Result<usize, String> {
        let sum = file_crc32(tar).map_err(|e| format!("reading {}: {e}", tar.display()))?;
        let up: Vec<&PathBuf> = self
            .copies()
            .iter()
            .filter(|(_, shared)| shared.lock().expect("copy lock").health == Health::Up)
            .map(|(dir, _)| dir)
            .collect();
        // One thread per copy: each waits on its own writes and fsyncs, side by side (on
        // separate disks they would not even share a queue).
        let stored = std::thread::scope(|scope| {
            let writers: Vec<_> = up
                .iter()
                .map(|dir| scope.spawn(move || store_in(dir, tar, start, end, sum)))
                .collect();
            writers
                .into_iter()
                .map(|writer| writer.join())
                .filter(|stored| matches!(stored, Ok(true)))
                .count()
        });
        Ok(stored)
    }

    /// Keeps the newest `keep` base backups that a quorum of copies holds whole (a tar and its
    /// sidecar) and deletes, in every member, the older ones and the WAL segments wholly below
    /// the oldest kept backup's start (a rebuild from it needs nothing older). A backup that
    /// reached fewer copies, or lacks its sidecar, is never counted: pruning for it could leave
    /// no backup a rebuild can use. Returns that start, if there was anything to prune below.
    pub fn prune(&self, keep: usize, quorum: usize) -> Option<Lsn> {
        self.prune_keeping(keep, quorum, None)
    }

    /// [`Self::prune`], keeping also, with a `retention`, every backup stored within it and
    /// the newest one stored before it: a branch or a restore can then go back that far
    /// ([`oldest_to_keep`]).
    pub fn prune_keeping(
        &self,
        keep: usize,
        quorum: usize,
        retention: Option<std::time::Duration>,
    ) -> Option<Lsn> {
        let dirs: Vec<PathBuf> = self.copies().iter().map(|(dir, _)| dir.clone()).collect();
        let counted: Vec<(Lsn, std::time::SystemTime)> = counted_backups(&dirs, quorum)
            .into_iter()
            .filter_map(|start| Some((start, stored_at(&dirs, start)?)))
            .collect();
        let oldest_kept = oldest_to_keep(&counted, keep, retention, std::time::SystemTime::now())?;
        for (dir, shared) in self.copies() {
            if shared.lock().expect("copy lock").health != Health::Up {
                continue; // pruned once it is back
            }
            for start in backup_starts(dir).into_iter().filter(|&s| s < oldest_kept) {
                let tar = backup_tar(dir, start);
                let _ = fs::remove_file(&tar);
                let _ = fs::remove_file(tar.with_extension("tar.crc32"));
                let _ = fs::remove_dir_all(super::image::image_dir(dir, start));
            }
            for entry in fs::read_dir(dir.join("wal"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if parse_segment_file_name(&name)
                    .is_some_and(|(_, segment)| segment < oldest_kept.segment())
                {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Some(oldest_kept)
    }
}

/// When the backup at `start` was stored: its sidecar's time in the first copy holding it.
fn stored_at(dirs: &[PathBuf], start: Lsn) -> Option<std::time::SystemTime> {
    dirs.iter().find_map(|dir| {
        fs::metadata(backup_tar(dir, start).with_extension("tar.crc32"))
            .and_then(|m| m.modified())
            .ok()
    })
}

/// The start of the oldest backup a prune keeps, from `counted` (start, stored at), newest
/// first: the newest `keep`, and with a `retention`, every one stored since `now - retention`
/// and the newest one stored before it. `None` when there are fewer than `keep` (nothing to
/// prune yet).
pub fn oldest_to_keep(
    counted: &[(Lsn, std::time::SystemTime)],
    keep: usize,
    retention: Option<std::time::Duration>,
    now: std::time::SystemTime,
) -> Option<Lsn> {
    let mut oldest = counted.get(keep.checked_sub(1)?)?.0;
    if let Some(since) = retention.and_then(|r| now.checked_sub(r)) {
        let within = counted.iter().take_while(|(_, at)| *at >= since).count();
        // The newest one before the retention began reaches back to it.
        let reach = (within + 1).min(counted.len());
        oldest = oldest.min(counted[reach - 1].0);
    }
    Some(oldest)
}

/// The CRC-32 of a whole file, read in pieces (a base backup is as large as the database).
/// Stores one base backup into the copy at `dir`: its sidecar (checksum and end), then the
/// tar, each synced and renamed into place. Whether it is there whole.
fn store_in(dir: &Path, tar: &Path, start: Lsn, end: Lsn, sum: u32) -> bool {
    let target = backup_tar(dir, start);
    let sidecar = target.with_extension("tar.crc32");
    let write = || -> std::io::Result<()> {
        // The checksum, then the WAL position a restore must reach (the backup's end).
        let tmp = sidecar.with_extension("crc32.tmp");
        let mut file = create_private(&tmp)?;
        file.write_all(format!("{sum:08x}\n{end}\n").as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &sidecar)?;
        install_file(tar, &target)?;
        sync_dir(&dir.join("base"))
    };
    match write() {
        Ok(()) => true,
        Err(e) => {
            // A backup that does not fit (disk full) must not take the copy's WAL down with it:
            // the copy stays up for commits and the backup counts one fewer.
            let _ = fs::remove_file(target.with_extension("tar.tmp"));
            let _ = fs::remove_file(sidecar.with_extension("crc32.tmp"));
            let _ = fs::remove_file(&sidecar);
            tracing::warn!(copy = %dir.display(), error = %e, "storing a base backup failed");
            false
        }
    }
}

pub(super) fn file_crc32(path: &Path) -> std::io::Result<u32> {
    let mut file = File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buffer[..n]);
    }
}

/// The starts of the base backups that at least `quorum` of these copy directories hold whole
/// (a tar and its sidecar), newest first (a cheap listing, no checksums).
pub fn counted_backups(dirs: &[PathBuf], quorum: usize) -> Vec<Lsn> {
    let mut held: std::collections::BTreeMap<Lsn, usize> = Default::default();
    for dir in dirs {
        for start in backup_starts(dir) {
            if backup_tar(dir, start).with_extension("tar.crc32").is_file() {
                *held.entry(start).or_default() += 1;
            }
        }
    }
    held.into_iter()
        .rev()
        .filter(|(_, copies)| *copies >= quorum)
        .map(|(start, _)| start)
        .collect()
}

/// The start of the newest base backup a quorum of copies holds whole.
pub fn newest_backup_start(dirs: &[PathBuf], quorum: usize) -> Option<Lsn> {
    counted_backups(dirs, quorum).first().copied()
}

/// Where a copy keeps the base backup that starts at `start`.
pub fn backup_tar(dir: &Path, start: Lsn) -> PathBuf {
    dir.join("base").join(format!("{:016X}.tar", start.0))
}

/// The start positions of the base backups a copy holds (`base/<start>.tar`).
pub fn backup_starts(dir: &Path) -> Vec<Lsn> {
    fs::read_dir(dir.join("base"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.strip_suffix(".tar")?;
            u64::from_str_radix(hex, 16).ok().map(Lsn)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::copies::CopySet;
    use super::super::notices::Notices;
    use super::super::wal::segment_file_name;
    use super::*;

    #[test]
    fn retention_keeps_every_backup_since_then_and_the_one_before() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let counted = [
            (Lsn(0x900), at(900)),
            (Lsn(0x700), at(700)),
            (Lsn(0x500), at(500)),
            (Lsn(0x300), at(300)),
            (Lsn(0x100), at(100)),
        ];
        let now = at(1000);
        assert_eq!(oldest_to_keep(&counted, 2, None, now), Some(Lsn(0x700)));
        // Back to 400 s: 900 and 700 and 500 are within, 300 reaches back to 400.
        let six_hundred = Some(Duration::from_secs(600));
        assert_eq!(
            oldest_to_keep(&counted, 2, six_hundred, now),
            Some(Lsn(0x300))
        );
        // A short retention never keeps fewer than `keep`.
        let short = Some(Duration::from_secs(10));
        assert_eq!(oldest_to_keep(&counted, 2, short, now), Some(Lsn(0x700)));
        // Longer than every backup: all are kept.
        let long = Some(Duration::from_secs(5000));
        assert_eq!(oldest_to_keep(&counted, 2, long, now), Some(Lsn(0x100)));
        assert_eq!(oldest_to_keep(&counted[..1], 2, long, now), None);
    }

    #[tokio::test]
    async fn prune_counts_only_backups_a_quorum_holds_whole() {
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..6).map(|i| root.path().join(format!("c{i}"))).collect();
        let set = CopySet::open(&dirs, "main", 4, Arc::new(Notices::default()));
        let copies = set.dirs();
        let (a, b, c, d) = (
            Lsn(0x200_0028),
            Lsn(0x400_0028),
            Lsn(0x600_0028),
            Lsn(0x800_0028),
        );
        let put = |dir: &Path, start: Lsn, sidecar: bool| {
            let tar = backup_tar(dir, start);
            fs::write(&tar, b"tar").unwrap();
            if sidecar {
                fs::write(tar.with_extension("tar.crc32"), "00000000\n0/0\n").unwrap();
            }
        };
        for dir in &copies {
            put(dir, a, true);
            put(dir, b, true);
            put(dir, d, false); // its sidecar never written: not a whole backup
            for segment in 1..10 {
                fs::write(dir.join("wal").join(segment_file_name(1, segment)), b"").unwrap();
            }
        }
        for dir in &copies[..2] {
            put(dir, c, true); // stored into two copies only
        }
        assert_eq!(counted_backups(&copies, 4), vec![b, a]);
        assert_eq!(newest_backup_start(&copies, 4), Some(b));
        // The two newest backups a quorum holds are kept, and all the WAL they need.
        assert_eq!(set.view().prune(2, 4), Some(a));
        for dir in &copies {
            assert!(backup_tar(dir, a).exists(), "{}", dir.display());
            assert!(backup_tar(dir, b).exists());
            assert!(!dir.join("wal").join(segment_file_name(1, 1)).exists());
            assert!(dir.join("wal").join(segment_file_name(1, 2)).exists());
        }
    }

    #[tokio::test]
    async fn a_stored_backup_has_its_sidecar_and_no_temporary_file() {
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..6).map(|i| root.path().join(format!("c{i}"))).collect();
        let set = CopySet::open(&dirs, "main", 4, Arc::new(Notices::default()));
        let tar = root.path().join("base.tar");
        fs::write(&tar, vec![7u8; 100_000]).unwrap();
        let start = Lsn(0x200_0028);
        assert_eq!(set.view().store_backup(&tar, start, Lsn(0x200_0100)), Ok(6));
        for dir in set.dirs() {
            let stored = backup_tar(&dir, start);
            assert_eq!(fs::read(&stored).unwrap().len(), 100_000);
            let sidecar = fs::read_to_string(stored.with_extension("tar.crc32")).unwrap();
            assert_eq!(
                sidecar,
                format!("{:08x}\n0/2000100\n", file_crc32(&tar).unwrap())
            );
            let names: Vec<String> = fs::read_dir(dir.join("base"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        }
    }
}
