//! The rebuild of a lost data directory from the copies, as blocking work (a database-sized
//! tar to unpack and its WAL to assemble): [`rebuild_blocking`] reads at least 3 copies (any 3
//! overlap every write quorum), unpacks the newest intact base backup into a staging directory
//! beside `pgdata`, assembles the WAL after it from whichever copy's checksums hold
//! ([`super::read`]), syncs the result and only then renames it to `pgdata`: a directory named
//! `pgdata` is always complete. Postgres's own recovery from the backup label does the rest.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

use super::identity::Identity;
use super::{read, receiver, segment};

/// Rebuilds `pgdata` (which must be missing) from the copies in `dirs` whose WAL is the set's
/// (`identity`); returns what it did, for the cluster's event.
pub(super) fn rebuild_blocking(
    dirs: &[PathBuf],
    identity: Option<&Identity>,
    pgdata: &Path,
) -> anyhow::Result<String> {
    let readable = read::readable_quorum(dirs, identity, "a rebuild").map_err(|e| anyhow!(e))?;
    let backup = read::newest_backup(&readable)
        .ok_or_else(|| anyhow!("the copies hold no intact base backup"))?;
    let staging = pgdata.with_extension("rebuild");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let mut archive = tar::Archive::new(std::fs::File::open(&backup.tar)?);
    archive.set_preserve_permissions(true);
    archive
        .unpack(&staging)
        .with_context(|| format!("extracting {}", backup.tar.display()))?;
    let label = std::fs::read_to_string(staging.join("backup_label"))
        .context("the base backup has no backup_label")?;
    let timeline = read::start_timeline(&label);
    let pg_wal = staging.join("pg_wal");
    std::fs::create_dir_all(&pg_wal)?;
    let end = read::restore_wal(
        &readable,
        timeline,
        receiver::segment_start(backup.start),
        &pg_wal,
    )
    .map_err(|e| anyhow!(e))?;
    if let Some(needed) = backup.end.filter(|needed| end < *needed) {
        // Postgres could not reach consistency and would refuse to start on this directory,
        // which, once in place, would never be rebuilt again: leave pgdata missing instead.
        let _ = std::fs::remove_dir_all(&staging);
        bail!(
            "the copies' WAL ends at {end}, before the end of the base backup at {} ({needed}); \
             bring back the missing copies",
            backup.start
        );
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))?;
    // Durable before it takes pgdata's name: a crash must not leave a data directory there
    // whose files never reached the disk (it would never be rebuilt again).
    sync_tree(&staging).context("syncing the rebuilt data directory")?;
    // Ownership is the runtime's business: it hands the directory to the user Postgres runs as.
    std::fs::rename(&staging, pgdata)?;
    if let Some(parent) = pgdata.parent() {
        segment::sync_dir(parent)?;
    }
    Ok(format!(
        "rebuilt from the base backup at {} and WAL up to {end} from {} copies",
        backup.start,
        readable.len()
    ))
}

/// Makes everything under `root` durable: one syncfs of its file system (a base backup is
/// thousands of files; one fsync each costs far more).
fn sync_tree(root: &Path) -> std::io::Result<()> {
    nix::unistd::syncfs(std::fs::File::open(root)?).map_err(std::io::Error::from)
}
