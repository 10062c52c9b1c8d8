//! Owner-only files and directories in the copies.
//!
//! WAL and base backups hold every row of a cluster, and only pgtide may read them: the OS
//! users that clusters' Postgres run as may not, nor anyone else on the machine. A copy's
//! directories are made 0700 and every file pgtide creates in a copy (WAL segments, base
//! backups, their checksum sidecars, identity files, and the temporary files they are written
//! under) 0600, from the moment it exists, whatever the process's umask.

use std::fs::{self, File, OpenOptions, Permissions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every file pgtide creates in a copy.
pub(super) const FILE_MODE: u32 = 0o600;
/// The mode of a copy's cluster directory.
const DIR_MODE: u32 = 0o700;

/// A copy's directory for one cluster and its `wal` and `base` inside, 0700.
pub(super) fn make_copy_dirs(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir.join("wal"))?;
    fs::create_dir_all(dir.join("base"))?;
    fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Options that create a file 0600 (the caller adds how it opens it).
pub(super) fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates (or truncates) a file to write whole, 0600: a file left by an earlier run under the
/// same name (a temporary one, after a crash) is made 0600 too.
pub(super) fn create_private(path: &Path) -> std::io::Result<File> {
    let file = private_options()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::super::copies::CopySet;
    use super::super::notices::Notices;
    use super::super::segment::install_segment;
    use super::super::wal::{segment_file_name, Lsn, SEGMENT_SIZE};
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Every file under `dir`, recursively.
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(files(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    #[tokio::test]
    async fn wal_segments_and_base_backups_in_a_copy_are_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..6).map(|i| root.path().join(format!("c{i}"))).collect();
        let mut set = CopySet::open(&dirs, "main", 4, Arc::new(Notices::default()));
        // WAL through the writers, across a segment boundary (a second file is created).
        let from = set
            .begin_stream(7_000_000_000_000_000_001, 1, Lsn(SEGMENT_SIZE + 100))
            .await
            .unwrap();
        let end = set
            .write(1, from, vec![5u8; SEGMENT_SIZE as usize + 4096])
            .await;
        assert_eq!(end.0, from.0 + SEGMENT_SIZE + 4096);
        // A base backup whose tar is readable by all, as a scratch file may be.
        let tar = root.path().join("base.tar");
        fs::write(&tar, vec![7u8; 10_000]).unwrap();
        fs::set_permissions(&tar, Permissions::from_mode(0o644)).unwrap();
        let stored = set.view().store_backup(&tar, from, end).unwrap();
        assert!(stored >= 4, "stored into {stored} copies");
        // A segment put in place whole, as a catch-up does.
        let copy = dirs[0].join("main");
        install_segment(
            &copy.join("wal").join(segment_file_name(1, 9)),
            &[(0, vec![1u8; 8192])],
        )
        .unwrap();

        let written = files(&copy);
        let count = |what: &str| {
            written
                .iter()
                .filter(|p| p.to_string_lossy().contains(what))
                .count()
        };
        assert_eq!(count("/wal/"), 3, "{written:?}");
        assert_eq!(count(".tar"), 2, "a tar and its sidecar: {written:?}");
        assert_eq!(count("identity"), 1, "{written:?}");
        for path in &written {
            assert_eq!(mode(path), 0o600, "{}", path.display());
        }
        assert_eq!(mode(&copy), 0o700);
    }

    #[test]
    fn a_leftover_file_is_made_owner_only_when_created_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.tmp");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        create_private(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    }
}
