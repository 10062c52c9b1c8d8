//! Storage: a cluster's WAL and base backups on six copies, with a 4-of-6 write quorum, and the
//! rebuild of a compute from them.
//!
//! **The copies.** Each `[storage] copies` directory (two per zone, three zones) holds, per
//! cluster, `wal/<segment>` files, `base/<start>.tar` base backups, and an `identity` file: the
//! database system and timeline whose WAL it holds, and the stream starts it took part in
//! ([`identity`]). A segment file's first 16 MiB are the segment exactly as Postgres names and
//! lays it out; after them come one checksum record per write, in the same file, so that one
//! `fdatasync` makes data and record durable together and a corrupted range in one copy is read
//! from another ([`segment`]). Only pgtide may read a copy: its directories are 0700 and every
//! file pgtide creates in it 0600 (`private.rs`).
//!
//! **Which copies count.** [`copies::CopySet::open`] looks at every copy first: one holding
//! another cluster's WAL is refused and never written; one that comes back empty, replaced,
//! behind the others, or that missed a stream start is *backfilling* and does not count toward
//! the quorum until its writer has copied what it lacks from the members ([`repair`]).
//!
//! **How a commit travels.** The compute runs with pgtide as its synchronous standby, so a
//! COMMIT returns once the standby reports its WAL flushed. The [`receiver`] connects, and
//! [`copies::CopySet::begin_stream`] checks that the compute is the copies' own system and holds
//! all the WAL the members hold (it refuses an older or foreign data directory rather than
//! acknowledge WAL it did not write), removes the members' WAL beyond the start, and says where
//! to stream from. The receiver then hands every batch that arrived to
//! [`copies::CopySet::send`], which queues it to each member's writer thread ([`writer`])
//! without waiting. A writer joins whatever queued up into one write and one `fdatasync` (group
//! commit), publishes its new flushed position and recomputes the [`quorum`]'s durable position:
//! the highest one that `write_quorum` members hold. The writer that completes the quorum wakes
//! the receiver, which reports that position (never more, and never beyond what this stream
//! handed over) to the compute as flushed, releasing the waiting commits. Members beyond the
//! first `write_quorum` are spares and sync less often. Below the quorum the receiver keeps
//! waiting: nothing is acknowledged that fewer copies hold.
//!
//! **Bounded memory.** A member whose queue would pass [`copies::LAG_LIMIT`] (64 MiB of WAL)
//! leaves the quorum as *lagging* while enough members remain, its queue is dropped, and it
//! catches up from the members' files by itself; when it cannot leave, the receiver stops
//! reading until the queue drains.
//!
//! **A supervised receiver.** A replication connection that ends while the compute runs (a
//! terminated walsender, `wal_sender_timeout`, the compute's processes restarted after a crash)
//! is made again within a second, from the durable position, until
//! [`ClusterStorage::stop_receiver`]; meanwhile the status says so and commits wait. Its loss and
//! return, and copies going down, lagging, refused or back, are [`StorageNotice`]s, which the
//! cluster drains into its events ([`ClusterStorage::take_notices`]).
//!
//! **Catching up and rejoining.** A copy whose write fails is down with the reason (a full disk
//! says "disk full" and is left alone until space is free); its writer looks at it every second
//! and, once usable, backfills it. A copy that is not a member is caught up by its own writer,
//! never under the set's lock (commits go on with the members): whole segments it lacks are put
//! in place atomically (temporary file, fsync, rename, directory fsync), a segment it holds a
//! prefix of is extended in place, each piece with its checksum. Close to the members it asks to
//! join; [`copies::CopySet::tend`] queues its WAL again from there and its writer copies the last
//! stretch before taking those jobs, so it counts again with no gap. Its base backups follow
//! outside the set's lock ([`ClusterStorage::check_copies`]).
//!
//! **Base backups.** [`ClusterStorage::maybe_base_backup`] runs `pg_basebackup` off the
//! cluster's task (`basebackup.rs`); once the copies hold the WAL up to the backup's end,
//! [`backups`] stores the tar into every member (streamed, without the set's lock) with a
//! checksum sidecar, both synced and renamed into place, and prunes older backups and the WAL
//! only they needed, counting only backups that a quorum of copies holds whole.
//!
//! **Rebuild.** [`ClusterStorage::rebuild`] puts a missing data directory back, as blocking work
//! (`rebuild.rs`): [`read`] finds the newest intact base backup in the readable copies of this
//! cluster (at least 3, which overlap every write quorum), extracts it, and assembles every WAL
//! segment after it, each range from a copy whose checksum holds (and only as far as that copy's
//! WAL is the set's history), into `pg_wal`; the result is synced before it takes pgdata's name.
//! Postgres's own recovery from the backup label replays to the end of that WAL. No archive
//! recovery happens, so the timeline does not change.
//!
//! **Where things are.** This file is the front the cluster talks to ([`ClusterStorage`]);
//! `copies/` is the set and its data path (`open.rs`, `stream.rs`, `view.rs`), `writer.rs` and
//! `repair.rs` what each copy's thread does, `segment.rs` the file format, `quorum.rs` the
//! durable position, `receiver.rs` the replication connection, `backups.rs`, `basebackup.rs`,
//! `read.rs` and `rebuild.rs` the base backups and the way back from them. The stories in prose,
//! function by function, are `docs/commit.md` and `docs/rebuild.md`.

pub mod backups;
mod basebackup;
pub mod copies;
pub mod identity;
pub mod image;
pub mod notices;
pub mod overlap;
mod private;
pub mod quorum;
pub mod read;
mod rebuild;
pub mod receiver;
pub mod reflink;
pub mod repair;
pub mod segment;
pub mod takeover;
pub mod wal;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::runtime::ComputeEndpoint;
use copies::{CopiesView, CopySet, CopyStatus};
use notices::Notices;
pub use notices::StorageNotice;
pub use receiver::ReceiverStatus;
use wal::Lsn;

/// How long a started compute may take to begin streaming to the receiver.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(30);

/// What `/status` shows of a cluster's storage.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct StorageStatus {
    pub copies: usize,
    pub copies_up: usize,
    pub write_quorum: usize,
    pub durable_lsn: Option<String>,
    /// "six copies" or, with `copies = []`, "local" (the compute's own disk only).
    pub mode: std::borrow::Cow<'static, str>,
    /// Why the cluster is degraded (the receiver reconnecting, copies down or catching up, or
    /// fewer members than the write quorum).
    pub degraded: Option<String>,
    pub last_base_backup: Option<String>,
    pub copy_states: Vec<CopyStatus>,
    /// The WAL receiver (absent with `copies = []`).
    pub receiver: Option<ReceiverStatus>,
    /// How far back a branch or a restore can go, and the space the copies use
    /// ([`crate::branch::window`]); absent until the copies hold a base backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_window: Option<RestoreWindowStatus>,
}

/// The restore window as `/status` shows it: earliest and latest point, as times (RFC 3339)
/// and LSNs, and the bytes of WAL and base backups the cluster's copies hold together.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default, PartialEq)]
pub struct RestoreWindowStatus {
    pub earliest_time: String,
    pub earliest_lsn: String,
    pub latest_time: String,
    pub latest_lsn: String,
    pub copies_bytes: u64,
}

pub struct ClusterStorage {
    copies: Arc<tokio::sync::Mutex<CopySet>>,
    view: CopiesView,
    dirs: Vec<PathBuf>,
    quorum: usize,
    status: Arc<Mutex<StorageStatus>>,
    /// The receiver's supervisor, while a compute runs: its stop signal, and what resolves when
    /// its thread has finished.
    receiver: Option<(watch::Sender<receiver::Supervision>, oneshot::Receiver<()>)>,
    receiver_status: Arc<Mutex<ReceiverStatus>>,
    notices: Arc<Notices>,
    pg_basebackup: PathBuf,
    /// Take a new base backup once this much WAL was written since the last one.
    base_backup_every: u64,
    last_backup_start: Option<Lsn>,
    /// A base backup being taken, off the cluster's task (it may take minutes on a large
    /// database; the scaler and pause must not wait for it, nor commits for its copying).
    backup_task: Option<tokio::task::JoinHandle<anyhow::Result<Lsn>>>,
    /// Held while a base backup is stored and pruned, and while a rebuild reads the copies.
    backup_store_lock: Arc<Mutex<()>>,
    /// How far back base backups and WAL are kept (`[storage] retention`); none: the newest
    /// two backups.
    retention: Option<Duration>,
}

impl ClusterStorage {
    pub fn open(
        copy_dirs: &[PathBuf],
        cluster: &str,
        quorum: usize,
        bin_dir: &Path,
        base_backup_every: u64,
    ) -> ClusterStorage {
        let notices = Arc::new(Notices::default());
        let set = CopySet::open(copy_dirs, cluster, quorum, notices.clone());
        let dirs = set.dirs();
        let view = set.view();
        // A listing, not a checksum of database-sized files: a rebuild verifies what it uses.
        let last_backup_start = backups::newest_backup_start(&dirs, quorum);
        if last_backup_start.is_some() {
            // The image a branch clones from, if a stop interrupted its making.
            image::keep_newest_image_in_background(&dirs);
        }
        let storage = ClusterStorage {
            copies: Arc::new(tokio::sync::Mutex::new(set)),
            view,
            dirs,
            quorum,
            status: Arc::new(Mutex::new(StorageStatus::default())),
            receiver: None,
            receiver_status: Arc::new(Mutex::new(ReceiverStatus::default())),
            notices,
            pg_basebackup: bin_dir.join("pg_basebackup"),
            base_backup_every,
            last_backup_start,
            backup_task: None,
            backup_store_lock: Arc::new(Mutex::new(())),
            retention: None,
        };
        storage.refresh_status();
        storage
    }

    /// Keeps base backups and WAL back as far as `retention` (a branch or a restore can go
    /// back that far), besides the newest two.
    pub fn with_retention(mut self, retention: Option<Duration>) -> ClusterStorage {
        self.retention = retention;
        self
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
        let receiver = self
            .receiver_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut status = self.status.lock().expect("storage status lock");
        fill_status(&mut status, &self.view, self.quorum, receiver);
        status.last_base_backup = self.last_backup_start.map(|l| l.to_string());
    }

    /// What storage has to tell since the last call (the receiver lost or back, copies down,
    /// lagging, refused, backfilling or back), oldest first, for the cluster's events.
    pub fn take_notices(&self) -> Vec<StorageNotice> {
        self.notices.take()
    }

    /// Lets copies that caught up by themselves join the quorum again (unless a write holds the
    /// set: the next write lets them in), and copies the base backups that rejoined copies lack.
    pub async fn check_copies(&self) {
        if let Ok(mut set) = self.copies.try_lock() {
            set.tend();
        }
        let base_repairs = self.view.take_base_repairs();
        if !base_repairs.is_empty() {
            // The copies' base backups, without the set's lock (commits go on), and never while
            // a backup is being stored or pruned, or a rebuild reads.
            let store_lock = self.backup_store_lock.clone();
            tokio::task::spawn_blocking(move || {
                let _storing = store_lock.lock().unwrap_or_else(|e| e.into_inner());
                for (peer, copy) in base_repairs {
                    match repair::repair_base(&peer, &copy) {
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
        self.last_backup_start.is_some() || backups::newest_backup_start(&self.dirs, 1).is_some()
    }

    /// Starts the receiver for a compute that just started; returns once it streams. The
    /// receiver is supervised from then on: a connection that ends while the compute runs is
    /// made again (within a second), until [`Self::stop_receiver`]. Fails with the reason when
    /// the copies refuse the compute (another cluster's, or older than the copies).
    pub async fn start_receiver(&mut self, endpoint: ComputeEndpoint) -> anyhow::Result<()> {
        self.stop_receiver().await;
        let (started_tx, started_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = watch::channel(receiver::Supervision::Stream);
        let copies = self.copies.clone();
        let status = self.receiver_status.clone();
        let notices = self.notices.clone();
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
                    Ok(runtime) => runtime.block_on(receiver::run(
                        endpoint, copies, status, notices, stop_rx, started_tx,
                    )),
                    Err(e) => {
                        tracing::error!(error = %e, "could not start the WAL receiver's runtime")
                    }
                }
                let _ = done_tx.send(());
            })
            .context("starting the WAL receiver thread")?;
        self.receiver = Some((stop_tx, done_rx));
        let started = match tokio::time::timeout(STREAMING_TIMEOUT, started_rx).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(anyhow!("the WAL receiver could not start: {e}")),
            Ok(Err(_)) => Err(anyhow!("the WAL receiver ended before streaming")),
            Err(_) => Err(anyhow!(
                "the compute did not start streaming WAL within {STREAMING_TIMEOUT:?}"
            )),
        };
        if started.is_err() {
            self.stop_receiver().await;
        }
        self.refresh_status();
        started
    }

    /// The compute is about to be stopped on purpose: the end of its stream that follows is
    /// that stop, not a loss (no `receiver_lost` is told for it).
    pub fn compute_stopping(&self) {
        if let Some((stop, _)) = &self.receiver {
            let _ = stop.send(receiver::Supervision::ComputeStopping);
        }
    }

    /// Stops the receiver's supervisor and waits for it (after the compute stopped: it has then
    /// received and made durable everything up to the shutdown checkpoint, which the compute's
    /// walsender waits for before it exits).
    pub async fn stop_receiver(&mut self) {
        if let Some((stop, done)) = self.receiver.take() {
            let _ = stop.send(receiver::Supervision::Stop);
            if tokio::time::timeout(Duration::from_secs(30), done)
                .await
                .is_err()
            {
                tracing::warn!("the WAL receiver did not finish within 30 s of the compute's stop");
            }
        }
        self.refresh_status();
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
            self.backup_task = Some(tokio::spawn(basebackup::base_backup(
                self.pg_basebackup.clone(),
                self.dirs.clone(),
                self.view.clone(),
                self.quorum,
                self.backup_store_lock.clone(),
                endpoint.clone(),
                self.retention,
            )));
        }
        Ok(None)
    }

    /// Rebuilds a missing data directory at `pgdata` from the copies. Files end up owned like
    /// `pgdata`'s parent (the runtime gave it to the user Postgres runs as).
    pub async fn rebuild(&self, pgdata: &Path) -> anyhow::Result<String> {
        self.reader().rebuild(pgdata).await
    }

    /// What reads the copies for the cluster's standbys, off the cluster's task.
    pub fn reader(&self) -> CopiesReader {
        CopiesReader {
            dirs: self.dirs.clone(),
            view: self.view.clone(),
            store_lock: self.backup_store_lock.clone(),
        }
    }
}

/// Reads a cluster's copies to build a data directory from them (a rebuild, a standby) or to
/// give a standby the WAL it lacks before it takes over ([`takeover`]). Cheap to clone; safe to
/// use while the copies are written (it reads only what their checksums cover, under the lock
/// that base backups are stored and pruned under).
#[derive(Clone)]
pub struct CopiesReader {
    dirs: Vec<PathBuf>,
    view: CopiesView,
    store_lock: Arc<Mutex<()>>,
}

impl CopiesReader {
    /// Builds a missing data directory at `pgdata` from the newest base backup and the WAL
    /// after it (see [`rebuild`]).
    pub async fn rebuild(&self, pgdata: &Path) -> anyhow::Result<String> {
        let reader = self.clone();
        let pgdata = pgdata.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let _reading = reader.store_lock.lock().unwrap_or_else(|e| e.into_inner());
            rebuild::rebuild_blocking(&reader.dirs, reader.view.identity().as_ref(), &pgdata)
        })
        .await?
    }

    /// Lays the copies' WAL beyond `received` into a stopped standby's `pg_wal`
    /// ([`takeover::fill_standby_wal`]).
    pub async fn fill_standby_wal(
        &self,
        pgdata: &Path,
        received: Lsn,
    ) -> anyhow::Result<takeover::Filled> {
        let reader = self.clone();
        let pgdata = pgdata.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let _reading = reader.store_lock.lock().unwrap_or_else(|e| e.into_inner());
            takeover::fill_standby_wal(
                &reader.dirs,
                reader.view.identity().as_ref(),
                &pgdata,
                received,
            )
        })
        .await?
    }
}

fn fill_status(
    status: &mut StorageStatus,
    set: &CopiesView,
    quorum: usize,
    receiver: ReceiverStatus,
) {
    use quorum::Health;
    status.copies = set.count();
    status.copies_up = set.copies_up();
    status.write_quorum = quorum;
    status.mode = "six copies".into();
    let durable = set.durable();
    if durable.0 > 0 {
        status.durable_lsn = Some(durable.to_string());
    }
    status.copy_states = set.status();
    let mut degraded = Vec::new();
    if receiver.state == "reconnecting" {
        degraded.push(format!(
            "the WAL receiver is reconnecting to the compute ({}): commits wait",
            receiver.reason.as_deref().unwrap_or("its connection ended")
        ));
    }
    let total = status.copies;
    let down = set.count_where(|h| matches!(h, Health::Down(_) | Health::Refused(_)));
    let catching_up = set.count_where(Health::catching_up);
    if status.copies_up < quorum {
        degraded.push(format!(
            "only {} of {total} copies are up, below the write quorum of {quorum}: commits wait",
            status.copies_up
        ));
    }
    if down > 0 {
        degraded.push(format!("{down} of {total} copies are down"));
    }
    if catching_up > 0 {
        degraded.push(format!(
            "{catching_up} of {total} copies are catching up and do not count yet"
        ));
    }
    status.degraded = (!degraded.is_empty()).then(|| degraded.join("; "));
    status.receiver = Some(receiver);
}
