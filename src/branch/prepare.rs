//! A branch's data directory, laid out from the source's copies before Postgres replays it:
//! the chosen base backup unpacked into a staging directory, and the WAL after it up to the
//! source's durable position placed in its `pg_wal`, each range from a copy whose checksum
//! holds — the rebuild's own readers ([`crate::storage::read`]), with a read quorum of 3. The
//! WAL stops at the durable position: nothing a client was not told is committed goes into a
//! branch. Where the copies keep the backup unpacked and the file system clones files, the
//! data files are cloned (copy-on-write, [`image`]) instead of unpacked. Blocking work (a
//! database-sized tar), run on a thread at background priority
//! ([`crate::runtime::background`]): the source keeps serving on the same cores and disk.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::window::Plan;
use super::BranchError;
use crate::storage::identity::Identity;
use crate::storage::receiver::segment_start;
use crate::storage::wal::SEGMENT_SIZE;
use crate::storage::{image, read, reflink};

/// Room left free beyond what a branch writes, so that it does not fill the disk to the brim.
const FREE_SPACE_MARGIN: u64 = 64 * 1024 * 1024;

/// What was laid out.
#[derive(Debug)]
pub struct Prepared {
    /// The base backup's timeline (the branch's new one is the next after promotion).
    pub timeline: u32,
    /// Copies read.
    pub copies: usize,
    /// Whether the data files were cloned from the backup's image (copy-on-write) rather than
    /// unpacked from its tar.
    pub copy_on_write: bool,
}

/// The identity of the source's copies: the one of the newest generation among them.
pub fn source_identity(dirs: &[PathBuf]) -> Option<Identity> {
    dirs.iter()
        .filter_map(|dir| Identity::read(dir).ok().flatten())
        .max_by_key(|identity| identity.generation)
}

/// Unpacks the plan's backup and its WAL into `staging` (removed first if an earlier attempt
/// left it), after checking the file system has room for them.
pub fn lay_out(
    source_dirs: &[PathBuf],
    plan: &Plan,
    staging: &Path,
) -> Result<Prepared, BranchError> {
    let identity = source_identity(source_dirs);
    let mut readable = read::readable_quorum(source_dirs, identity.as_ref(), "a branch")
        .map_err(|e| BranchError::Failed(format!("of the source's copies, {e}")))?;
    // Only what was durable when the branch was asked for.
    for copy in &mut readable {
        copy.trusted_end = copy.trusted_end.min(plan.wal_end);
    }
    let backup = read::backup_at(&readable, plan.backup.start).ok_or_else(|| {
        BranchError::Failed(format!(
            "the base backup at {} fails its checksum in every copy",
            plan.backup.start
        ))
    })?;
    // The backup's image, kept unpacked where the copies' file system clones files: cloned,
    // its blocks are shared, so only the WAL is written anew.
    let parent = staging.parent().unwrap_or(Path::new("."));
    let copy_dirs: Vec<PathBuf> = readable.iter().map(|copy| copy.dir.clone()).collect();
    let image = image::find_image(&copy_dirs, backup.start).filter(|_| reflink::supported(parent));
    let tar_bytes = match image {
        Some(_) => 0,
        None => std::fs::metadata(&backup.tar).map(|m| m.len()).unwrap_or(0),
    };
    let wal_bytes =
        (plan.wal_end.0.saturating_sub(backup.start.0) / SEGMENT_SIZE + 1) * SEGMENT_SIZE;
    check_free_space(parent, tar_bytes + wal_bytes + FREE_SPACE_MARGIN)?;

    let _ = std::fs::remove_dir_all(staging);
    let copy_on_write = match &image {
        Some(image) => {
            let done =
                reflink::clone_tree(image, staging).map_err(|e| failed("cloning", image, e))?;
            tracing::info!(image = %image.display(), cloned = done.cloned, copied = done.copied, "branch cloned from the backup's image");
            done.copied == 0
        }
        None => {
            std::fs::create_dir_all(staging).map_err(|e| failed("creating", staging, e))?;
            // Paced (written back as it goes, at the thread's background priority): a
            // database-sized write must not stall the source's commits.
            image::unpack_tar(&backup.tar, staging, false)
                .map_err(|e| failed("extracting", &backup.tar, e))?;
            false
        }
    };
    let label = std::fs::read_to_string(staging.join("backup_label"))
        .map_err(|e| failed("reading the backup_label of", &backup.tar, e))?;
    let timeline = read::start_timeline(&label);
    let pg_wal = staging.join("pg_wal");
    std::fs::create_dir_all(&pg_wal).map_err(|e| failed("creating", &pg_wal, e))?;
    let end = read::restore_wal(&readable, timeline, segment_start(backup.start), &pg_wal)
        .map_err(BranchError::Failed)?;
    if let Some(needed) = backup.end.filter(|needed| end < *needed) {
        return Err(BranchError::Failed(format!(
            "the copies' WAL ends at {end}, before the end of the base backup at {} ({needed})",
            backup.start
        )));
    }
    // Archive recovery, then a new timeline (Postgres removes the file when it promotes).
    std::fs::write(staging.join("recovery.signal"), b"")
        .map_err(|e| failed("writing recovery.signal in", staging, e))?;
    std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| failed("setting the mode of", staging, e))?;
    Ok(Prepared {
        timeline,
        copies: readable.len(),
        copy_on_write,
    })
}

/// 53100 when the file system holding `dir` has less than `needed` bytes free for pgtide.
pub fn check_free_space(dir: &Path, needed: u64) -> Result<(), BranchError> {
    let stat = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| BranchError::Failed(format!("statvfs {}: {e}", dir.display())))?;
    let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    if free < needed {
        return Err(BranchError::DiskFull(format!(
            "could not extend the branch's data directory in \"{}\": No space left on device \
             (it needs about {} MiB, {} MiB are free)",
            dir.display(),
            needed.div_ceil(1024 * 1024),
            free / (1024 * 1024)
        )));
    }
    Ok(())
}

fn failed(what: &str, path: &Path, e: impl std::fmt::Display) -> BranchError {
    BranchError::Failed(format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_space_than_the_disk_has_is_53100() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_free_space(dir.path(), 1).is_ok());
        let e = check_free_space(dir.path(), u64::MAX / 2).unwrap_err();
        assert_eq!(e.sqlstate(), "53100");
        assert!(e.to_string().contains("No space left on device"), "{e}");
    }
}
