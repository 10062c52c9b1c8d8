//! Storage: a cluster's WAL and base backups on six copies, with a 4-of-6 write quorum, and the
//! rebuild of a compute from them.
//!
//! - [`copies`]: the copy directories, their writer threads, the quorum, checksums, repair.
//! - [`receiver`]: the synchronous standby that streams the compute's WAL into the copies.
//! - this module: the per-cluster handle the cluster task uses — start the receiver with a
//!   compute, take base backups, rebuild a missing data directory.
//!
//! A rebuild extracts the newest intact base backup and puts every WAL segment after it (each
//! range from a copy whose checksum holds, reading at least 3 copies) into `pg_wal`; Postgres's
//! own recovery from the backup label then replays to the end of that WAL. No archive recovery
//! happens, so the timeline does not change.

pub mod copies;
pub mod receiver;
pub mod wal;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::runtime::ComputeEndpoint;
use copies::{CopiesView, CopySet, CopyStatus};
use wal::Lsn;

/// How long a finished base backup waits for the copies to hold the WAL up to its end.
const BACKUP_WAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Base backups kept in the copies; older ones, and the WAL only they needed, are deleted.
const KEEP_BASE_BACKUPS: usize = 2;

/// How long a started compute may take to begin streaming to the receiver.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(30);

/// What `/status` shows of a cluster's storage.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StorageStatus {
    pub copies: usize,
    pub copies_up: usize,
    pub write_quorum: usize,
    pub durable_lsn: Option<String>,
    /// "six copies" or, with `copies = []`, "local" (the compute's own disk only).
    pub mode: &'static str,
    /// Why the cluster is degraded (fewer copies up than all, or below the write quorum).
    pub degraded: Option<String>,
    pub last_base_backup: Option<String>,
    pub copy_states: Vec<CopyStatus>,
}

pub struct ClusterStorage {
    copies: Arc<tokio::sync::Mutex<CopySet>>,
    view: CopiesView,
    dirs: Vec<PathBuf>,
    quorum: usize,
    status: Arc<Mutex<StorageStatus>>,
    /// Resolves when the receiver's thread has finished.
    receiver: Option<oneshot::Receiver<()>>,
    pg_basebackup: PathBuf,
    /// Take a new base backup once this much WAL was written since the last one.
    base_backup_every: u64,
    last_backup_start: Option<Lsn>,
    /// A base backup being taken, off the cluster's task (it may take minutes on a large
    /// database; the scaler and pause must not wait for it, nor commits for its copying).
    backup_task: Option<tokio::task::JoinHandle<anyhow::Result<Lsn>>>,
    /// Held while a base backup is stored and pruned, and while a rebuild reads the copies.
    backup_store_lock: Arc<Mutex<()>>,
}

impl ClusterStorage {
    pub fn open(
        copy_dirs: &[PathBuf],
        cluster: &str,
        quorum: usize,
        bin_dir: &Path,
        base_backup_every: u64,
    ) -> ClusterStorage {
        let set = CopySet::open(copy_dirs, cluster, quorum);
        let dirs = set.dirs();
        let view = set.view();
        // A listing, not a checksum of database-sized files: a rebuild verifies what it uses.
        let last_backup_start = copies::newest_backup_start(&dirs);
        let storage = ClusterStorage {
            copies: Arc::new(tokio::sync::Mutex::new(set)),
            view,
            dirs,
            quorum,
            status: Arc::new(Mutex::new(StorageStatus::default())),
            receiver: None,
            pg_basebackup: bin_dir.join("pg_basebackup"),
            base_backup_every,
            last_backup_start,
            backup_task: None,
            backup_store_lock: Arc::new(Mutex::new(())),
        };
        storage.refresh_status();
        storage
    }

    /// Settings the compute needs so that its commits wait for the copies.
    pub fn postmaster_settings() -> Vec<(&'static str, String)> {
        vec![
            (
                "synchronous_standby_names",
                receiver::STANDBY_NAME.to_string(),
            ),
            ("synchronous_commit", "on".to_string()),
            ("wal_level", "replica".to_string()),
            ("max_wal_senders", "10".to_string()),
            // What a rebuild just replayed stays until the receiver streams from its end again.
            ("wal_keep_size", "256MB".to_string()),
        ]
    }

    pub fn status(&self) -> StorageStatus {
        self.refresh_status();
        self.status.lock().expect("storage status lock").clone()
    }

    fn refresh_status(&self) {
        let mut status = self.status.lock().expect("storage status lock");
        fill_status(&mut status, &self.view, self.quorum);
        status.last_base_backup = self.last_backup_start.map(|l| l.to_string());
    }

    /// Repairs copies that are usable again, unless a write holds the set (a write below the
    /// quorum repairs by itself while it waits).
    pub async fn check_copies(&self) {
        let base_repairs = match self.copies.try_lock() {
            Ok(mut set) => {
                set.repair_returning_copies().await;
                set.take_base_repairs()
            }
            Err(_) => Vec::new(),
        };
        if !base_repairs.is_empty() {
            // The copies' base backups, without the set's lock (commits go on), and never while
            // a backup is being stored or pruned, or a rebuild reads.
            let store_lock = self.backup_store_lock.clone();
            tokio::task::spawn_blocking(move || {
                let _storing = store_lock.lock().unwrap_or_else(|e| e.into_inner());
                for (peer, copy) in base_repairs {
                    match copies::repair_from(&peer, &copy, "base") {
                        Ok(files) => {
                            tracing::info!(copy = %copy.display(), files, "base backups repaired from a peer")
                        }
                        Err(e) => {
                            tracing::warn!(copy = %copy.display(), error = %e, "repairing base backups")
                        }
                    }
                }
            });
        }
    }

    /// The outcome of a background base backup that has finished since the last call, if any.
    /// Called on every tick whatever the cluster's state, so that `has_backup` is never stale.
    pub async fn collect_backup(&mut self) -> Option<anyhow::Result<Lsn>> {
        if !self.backup_task.as_ref()?.is_finished() {
            return None;
        }
        Some(self.finish_backup().await)
    }

    /// Ends a background base backup before a new compute starts: collects it if it finished,
    /// cancels it otherwise (its compute is gone, so it cannot finish). A store into the copies
    /// already under way completes under `backup_store_lock`, which a rebuild also takes, so a
    /// rebuild never reads copies that a prune is changing.
    pub async fn end_backup(&mut self) -> Option<anyhow::Result<Lsn>> {
        let task = self.backup_task.as_ref()?;
        if !task.is_finished() {
            task.abort();
        }
        Some(self.finish_backup().await)
    }

    async fn finish_backup(&mut self) -> anyhow::Result<Lsn> {
        let task = self.backup_task.take().expect("a backup task");
        let start = task.await.context("the base backup task")??;
        self.last_backup_start = Some(start);
        self.refresh_status();
        Ok(start)
    }

    /// Whether the copies hold a base backup to rebuild from.
    /// Also looks at the copies themselves: a backup stored by a task that was cancelled before
    /// it reported counts, so that a lost data directory is rebuilt, never initialised afresh.
    pub fn has_backup(&self) -> bool {
        self.last_backup_start.is_some() || copies::newest_backup_start(&self.dirs).is_some()
    }

    /// Starts the receiver for a compute that just started; returns once it streams.
    pub async fn start_receiver(&mut self, endpoint: ComputeEndpoint) -> anyhow::Result<()> {
        self.stop_receiver().await;
        let (started_tx, started_rx) = oneshot::channel();
        let copies = self.copies.clone();
        let (done_tx, done_rx) = oneshot::channel();
        // A thread of its own: every commit waits on this path, and it must not queue behind the
        // proxy's work on pgtide's main thread.
        std::thread::Builder::new()
            .name("pgtide-wal-receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => match runtime
                        .block_on(receiver::run(endpoint, copies, started_tx))
                    {
                        Ok(end) => tracing::info!(%end, "WAL receiver stopped with the compute"),
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "WAL receiver stopped"),
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "could not start the WAL receiver's runtime")
                    }
                }
                let _ = done_tx.send(());
            })
            .context("starting the WAL receiver thread")?;
        self.receiver = Some(done_rx);
        match tokio::time::timeout(STREAMING_TIMEOUT, started_rx).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => bail!("the WAL receiver could not start: {e}"),
            Ok(Err(_)) => bail!("the WAL receiver ended before streaming"),
            Err(_) => bail!("the compute did not start streaming WAL within {STREAMING_TIMEOUT:?}"),
        }
    }

    /// Waits for the receiver to finish (after the compute stopped: it has then received and
    /// made durable everything up to the shutdown checkpoint).
    pub async fn stop_receiver(&mut self) {
        if let Some(handle) = self.receiver.take() {
            if tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .is_err()
            {
                tracing::warn!("the WAL receiver did not finish within 30 s of the compute's stop");
            }
        }
    }

    /// Starts a base backup in the background if there is none yet or enough WAL went by since
    /// the last one; returns the start of one that finished since the last call.
    pub async fn maybe_base_backup(
        &mut self,
        endpoint: &ComputeEndpoint,
    ) -> anyhow::Result<Option<Lsn>> {
        if let Some(finished) = self.collect_backup().await {
            return finished.map(Some);
        }
        if self.backup_task.is_some() || self.view.copies_up() < self.quorum {
            return Ok(None); // one at a time; or it could not be stored durably now
        }
        let durable = self.view.durable();
        let due = match self.last_backup_start {
            None => true,
            Some(last) => durable.0.saturating_sub(last.0) >= self.base_backup_every,
        };
        if due {
            self.backup_task = Some(tokio::spawn(base_backup(
                self.pg_basebackup.clone(),
                self.dirs.clone(),
                self.view.clone(),
                self.quorum,
                self.backup_store_lock.clone(),
                endpoint.clone(),
            )));
        }
        Ok(None)
    }

    /// Rebuilds a missing data directory at `pgdata` from the copies. Files end up owned like
    /// `pgdata`'s parent (the runtime gave it to the user Postgres runs as).
    pub async fn rebuild(&self, pgdata: &Path) -> anyhow::Result<String> {
        let dirs = self.dirs.clone();
        let pgdata = pgdata.to_path_buf();
        let store_lock = self.backup_store_lock.clone();
        tokio::task::spawn_blocking(move || {
            let _reading = store_lock.lock().unwrap_or_else(|e| e.into_inner());
            rebuild_blocking(&dirs, &pgdata)
        })
        .await?
    }
}

fn fill_status(status: &mut StorageStatus, set: &CopiesView, quorum: usize) {
    status.copies = set.count();
    status.copies_up = set.copies_up();
    status.write_quorum = quorum;
    status.mode = "six copies";
    let durable = set.durable();
    if durable.0 > 0 {
        status.durable_lsn = Some(durable.to_string());
    }
    status.copy_states = set.status();
    status.degraded = if status.copies_up < quorum {
        Some(format!(
            "only {} of {} copies are up, below the write quorum of {quorum}: commits wait",
            status.copies_up, status.copies
        ))
    } else if status.copies_up < status.copies {
        Some(format!(
            "{} of {} copies are down",
            status.copies - status.copies_up,
            status.copies
        ))
    } else {
        None
    };
}

/// Takes a base backup of the running compute with pg_basebackup (a tar, no WAL: the copies
/// have it) and stores it in every copy that is up, then prunes what the older backups needed.
async fn base_backup(
    pg_basebackup: PathBuf,
    dirs: Vec<PathBuf>,
    view: CopiesView,
    quorum: usize,
    store_lock: Arc<Mutex<()>>,
    endpoint: ComputeEndpoint,
) -> anyhow::Result<Lsn> {
    let scratch = dirs
        .iter()
        .find(|d| d.is_dir())
        .ok_or_else(|| anyhow!("no copy is usable for a base backup"))?
        .join("base")
        .join("in-progress.tmp");
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
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
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
            if let Some(kept_from) = view.prune(KEEP_BASE_BACKUPS) {
                tracing::info!(%kept_from, "older base backups and the WAL below them pruned");
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
        stored
    })
    .await??;
    tracing::info!(%start, copies = stored, "base backup stored");
    Ok(start)
}

fn rebuild_blocking(dirs: &[PathBuf], pgdata: &Path) -> anyhow::Result<String> {
    let readable = copies::read::readable(dirs);
    if readable.len() < 3 {
        bail!(
            "only {} of {} copies are readable; a rebuild needs 3 (any 3 overlap every write quorum)",
            readable.len(),
            dirs.len()
        );
    }
    let backup = copies::read::newest_backup(&readable)
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
    let timeline: u32 = label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE: "))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1);
    let pg_wal = staging.join("pg_wal");
    std::fs::create_dir_all(&pg_wal)?;
    let end = copies::read::restore_wal(
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
    // Ownership is the runtime's business: it hands the directory to the user Postgres runs as.
    std::fs::rename(&staging, pgdata)?;
    Ok(format!(
        "rebuilt from the base backup at {} and WAL up to {end} from {} copies",
        backup.start,
        readable.len()
    ))
}
