//! The base backups of a running compute: `pg_basebackup` into a scratch directory in a copy,
//! then, once the copies hold the WAL up to the backup's end, the tar stored into every member
//! and what older backups needed pruned ([`super::backups`]).
//!
//! It runs as a task off the cluster's own (a backup of a large database takes minutes, and the
//! scaler and pause must not wait for it), and stores under the storage's `backup_store_lock`
//! (a rebuild never reads copies that a prune is changing), without the set's lock: commits go
//! on while the tar is copied.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use super::copies::CopiesView;
use super::image;
use super::wal::Lsn;
use crate::runtime::ComputeEndpoint;

/// How long a finished base backup waits for the copies to hold the WAL up to its end.
const BACKUP_WAL_TIMEOUT: Duration = Duration::from_secs(120);
/// Base backups kept in the copies; older ones, and the WAL only they needed, are deleted.
const KEEP_BASE_BACKUPS: usize = 2;

/// Takes a base backup of the running compute with pg_basebackup (a tar, no WAL: the copies
/// have it) and stores it in every copy that is up, then prunes what the older backups needed.
pub(super) async fn base_backup(
    pg_basebackup: PathBuf,
    dirs: Vec<PathBuf>,
    view: CopiesView,
    quorum: usize,
    store_lock: Arc<Mutex<()>>,
    endpoint: ComputeEndpoint,
    retention: Option<Duration>,
) -> anyhow::Result<Lsn> {
    let scratch_copy = dirs
        .iter()
        .find(|d| d.is_dir())
        .ok_or_else(|| anyhow!("no copy is usable for a base backup"))?
        .clone();
    let scratch = scratch_copy.join("base").join("in-progress.tmp");
    let _ = std::fs::remove_dir_all(&scratch);
    let output = tokio::process::Command::new(&pg_basebackup)
        .arg("-h")
        .arg(&endpoint.socket_dir)
        .args([
            "-p",
            &endpoint.port.to_string(),
            "-U",
            crate::runtime::BOOTSTRAP_SUPERUSER,
        ])
        .arg("-D")
        .arg(&scratch)
        .args(["-Ft", "-X", "none", "-c", "fast", "--no-sync", "-w"])
        .kill_on_drop(true)
        .output()
        .await
        .context("running pg_basebackup")?;
    if !output.status.success() {
        bail!(
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(scratch.join("backup_manifest")).context("reading backup_manifest")?,
    )?;
    let lsn_of = |key: &str| {
        manifest["WAL-Ranges"][0][key]
            .as_str()
            .and_then(Lsn::parse)
            .ok_or_else(|| anyhow!("backup_manifest has no {key}"))
    };
    let start = lsn_of("Start-LSN")?;
    let end = lsn_of("End-LSN")?;
    // A backup is restorable only with the WAL up to its end: store it once the copies hold that.
    let deadline = std::time::Instant::now() + BACKUP_WAL_TIMEOUT;
    while view.durable() < end {
        if std::time::Instant::now() > deadline {
            bail!("the copies did not reach the backup's end {end} within {BACKUP_WAL_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Copying and fsyncing a database-sized file six times is blocking work.
    let stored = tokio::task::spawn_blocking(move || {
        let _storing = store_lock.lock().unwrap_or_else(|e| e.into_inner());
        let stored = view
            .store_backup(&scratch.join("base.tar"), start, end)
            .map_err(|e| anyhow!(e))
            .and_then(|stored| {
                // Fewer than a quorum: not a backup to count on, nor to prune for.
                if stored < quorum {
                    bail!("the base backup at {start} went into {stored} copies only");
                }
                Ok(stored)
            });
        if stored.is_ok() {
            if let Some(kept_from) = view.prune_keeping(KEEP_BASE_BACKUPS, quorum, retention) {
                tracing::info!(%kept_from, "older base backups and the WAL below them pruned");
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
        stored
    })
    .await??;
    tracing::info!(%start, copies = stored, "base backup stored");
    image::keep_image_in_background(scratch_copy, start);
    Ok(start)
}
