//! The start sequence of a compute, as a job that runs off the cluster's task.
//!
//! [`StartJob::spawn`] takes what a start needs (the runtime, the cluster's directory, the
//! storage, which it lends back when it ends) and runs, in order:
//! 1. [`Runtime::reclaim`]: a runtime that still holds the data directory gives it back; after
//!    a lost data directory, whatever came back of it is moved aside
//!    ([`move_lost_data_directory_aside`](super::restart::move_lost_data_directory_aside));
//!    a takeover first has the standby stop and take the copies' WAL, then moves the old
//!    writer's data directory aside (`pgdata.former-writer`, never started again) and the
//!    standby's into its place ([`super::standbys`]); a takeover that fails leaves the writer's
//!    data directory as it was, and the start goes on with it;
//! 2. the previous compute's base backup is ended;
//! 3. a missing data directory is rebuilt from the copies ([`Durability::rebuild`]) — or, when
//!    the cluster has existed and nothing can rebuild it, the start fails saying so: a cluster
//!    that accepted commits is never initialised afresh;
//! 4. [`Runtime::start`] (from a warm slot or cold), which returns once Postgres accepts
//!    connections;
//! 5. the WAL receiver streams (commits wait for the copies from here on);
//! 6. once per pgtide run, the config's users are created in the compute and its verifiers read;
//! 7. a cluster with copies but no base backup yet (a new one) takes its first, so that the
//!    copies can always rebuild it.
//!
//! The cluster's task keeps serving while the job runs. Cancelling (a pause, a shutdown) is
//! cooperative: the job stops at the next step, and stops a compute it already started before
//! it ends. A rebuild is not waited for: its blocking work goes on in the background in a staging
//! directory that is renamed into place only when complete (a later start finds either no
//! `pgdata` and rebuilds, or a whole one). Each step that takes time is an event.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::durability::Durability;
use super::events::EventKind;
use super::Shared;
use crate::acu::ComputeSize;
use crate::runtime::{Compute, ComputeSpec, Runtime};

/// Why a compute is being started.
#[derive(Debug, Clone)]
pub(super) enum StartPurpose {
    /// For clients (or pgtide's own start): `requested_by` names who asked.
    Resume { requested_by: String },
    /// After the compute exited on its own or lost its data directory; `attempt` counts from 0.
    Restart { attempt: u32, since: Instant },
    /// A standby takes over: after the writer was lost (`planned: false`) or stopped for
    /// `pgtide failover`.
    Failover {
        zone: String,
        planned: bool,
        since: Instant,
        /// Why: how the writer was lost, or who asked.
        reason: String,
    },
}

/// How a start ended.
pub(super) enum StartResult {
    Started(Box<dyn Compute>),
    Cancelled,
    Failed(anyhow::Error),
}

/// What a finished job gives back to the task.
pub(super) struct StartOutcome {
    pub storage: Option<Box<dyn Durability>>,
    pub users_synced: bool,
    pub result: StartResult,
    /// How the takeover went, when the start was one.
    pub takeover: Option<Result<Takeover, String>>,
}

/// A standby's data directory took the writer's place.
#[derive(Debug)]
pub(super) struct Takeover {
    pub promoted: super::standbys::actor::Promoted,
    /// From the start job's begin until the data directory was in place.
    pub swapped_in: std::time::Duration,
}

/// What has the standby stop and take the copies' WAL ([`super::standbys::StandbySet::promote`]).
pub(super) type Promotion = std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<super::standbys::actor::Promoted>> + Send>,
>;

/// Everything a start needs, moved into its job.
pub(super) struct StartInput {
    pub shared: Arc<Shared>,
    pub runtime: Arc<dyn Runtime>,
    pub cluster_dir: PathBuf,
    pub storage: Option<Box<dyn Durability>>,
    pub users_synced: bool,
    /// The last compute lost its data directory: what is there now is remains, moved aside.
    pub data_lost: bool,
    pub size: ComputeSize,
    pub postmaster_settings: Vec<(&'static str, String)>,
    /// A takeover: the standby's promotion, awaited first.
    pub promotion: Option<Promotion>,
    pub takeover: Option<Result<Takeover, String>>,
}

/// A start under way.
pub(super) struct StartJob {
    pub purpose: StartPurpose,
    pub started_at: Instant,
    cancel: watch::Sender<bool>,
    handle: JoinHandle<StartOutcome>,
}

impl StartJob {
    pub(super) fn spawn(input: StartInput, purpose: StartPurpose) -> StartJob {
        let (cancel, cancelled) = watch::channel(false);
        let handle = tokio::spawn(run(input, cancelled));
        StartJob {
            purpose,
            started_at: Instant::now(),
            cancel,
            handle,
        }
    }

    /// Asks the job to stop at its next step.
    pub(super) fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    /// Waits for the job's outcome; `None` if it panicked (what it held is lost with it).
    pub(super) async fn finished(&mut self) -> Option<StartOutcome> {
        match (&mut self.handle).await {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                tracing::error!(error = %e, "a compute start panicked");
                None
            }
        }
    }
}

/// The markers of a cluster that has had a data directory: `pgdata` going missing afterwards is
/// a loss, not a new cluster.
/// Moves the old writer's data directory aside (replacing an older one: what it may hold
/// beyond the copies was never acknowledged) and the promoted standby's into its place.
fn swap_in(cluster_dir: &Path, pgdata: &Path, standby: &Path) -> anyhow::Result<()> {
    let former = cluster_dir.join("pgdata.former-writer");
    if former.exists() {
        // A whole data directory takes seconds to delete: renamed at once, deleted after,
        // off the takeover's path.
        let discarded = cluster_dir.join(format!(
            "pgdata.former-writer.discarded-{}",
            super::unix_now()
        ));
        std::fs::rename(&former, &discarded)
            .with_context(|| format!("moving {} away", former.display()))?;
        std::thread::spawn(move || {
            if let Err(e) = std::fs::remove_dir_all(&discarded) {
                tracing::warn!(path = %discarded.display(), error = %e, "could not delete an older writer's data directory");
            }
        });
    }
    if pgdata.exists() {
        std::fs::rename(pgdata, &former)
            .with_context(|| format!("moving {} aside", pgdata.display()))?;
    }
    std::fs::rename(standby, pgdata)
        .with_context(|| format!("moving {} into place", standby.display()))?;
    std::fs::File::open(cluster_dir)?.sync_all()?;
    Ok(())
}

pub(super) fn initialised_marker(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("initialised")
}

async fn run(mut input: StartInput, cancelled: watch::Receiver<bool>) -> StartOutcome {
    let result = match steps(&mut input, &cancelled).await {
        Ok(Some(compute)) => StartResult::Started(compute),
        Ok(None) => StartResult::Cancelled,
        Err(e) => StartResult::Failed(e),
    };
    StartOutcome {
        storage: input.storage,
        users_synced: input.users_synced,
        result,
        takeover: input.takeover,
    }
}

/// The steps; `Ok(None)` when cancelled (having stopped whatever it started).
async fn steps(
    input: &mut StartInput,
    cancelled: &watch::Receiver<bool>,
) -> anyhow::Result<Option<Box<dyn Compute>>> {
    let is_cancelled = || *cancelled.borrow();
    let shared = input.shared.clone();
    let events = &shared.events;
    input.runtime.reclaim(&input.cluster_dir).await?;
    // Only now: a runtime may hand the remains of a lost directory back as late as `reclaim`
    // (a docker slot whose container was still being removed when the kill returned).
    if input.data_lost {
        super::restart::move_lost_data_directory_aside(&input.cluster_dir);
    }
    let pgdata = crate::runtime::pgdata_of(&input.cluster_dir);
    if let Some(promotion) = input.promotion.take() {
        let began = Instant::now();
        let taken = match promotion.await {
            Ok(promoted) => swap_in(&input.cluster_dir, &pgdata, &promoted.pgdata)
                .map(|()| Takeover {
                    promoted,
                    swapped_in: began.elapsed(),
                })
                .map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("{e:#}")),
        };
        if let Err(reason) = &taken {
            events.record(
                EventKind::FailoverFailed,
                format!("the takeover failed ({reason}); starting the writer where it was instead"),
            );
        }
        input.takeover = Some(taken);
    }
    let marker = initialised_marker(&input.cluster_dir);
    if let Some(storage) = &mut input.storage {
        // A base backup of the previous compute ends here.
        if let Some(finished) = storage.end_backup().await {
            record_backup(&shared, finished);
        }
        // A directory that is not a data directory (no PG_VERSION or pg_control), when the
        // copies can rebuild one: the remains of a lost one, however the compute ended (it may
        // exit on its own before the loss is seen, and a runtime may hand the remains back
        // only now). They are moved aside, never deleted, and the directory is rebuilt.
        if pgdata.exists()
            && !super::restart::data_directory_present(&pgdata)
            && storage.has_backup()
        {
            if let Some(aside) = super::restart::move_lost_data_directory_aside(&input.cluster_dir)
            {
                events.record(
                    EventKind::DataDirectoryLost,
                    format!(
                        "{} is not a whole data directory (no PG_VERSION or pg_control): moved aside to {}; rebuilding it from the copies",
                        pgdata.display(),
                        aside.display()
                    ),
                );
            }
        }
        if !pgdata.exists() {
            if storage.has_backup() {
                if is_cancelled() {
                    return Ok(None);
                }
                // The compute is disposable: its data directory comes back from the copies.
                let started = Instant::now();
                events.record(
                    EventKind::Rebuilding,
                    "the data directory is missing: rebuilding it from the copies".to_string(),
                );
                let mut gave_up = cancelled.clone();
                tokio::select! {
                    how = storage.rebuild(&pgdata) => {
                        let how = how.context("rebuilding from the copies")?;
                        events.record(
                            EventKind::Rebuilt,
                            format!("{how} in {} ms", started.elapsed().as_millis()),
                        );
                    }
                    // The rebuild works in a staging directory renamed into place when whole:
                    // the next start finds pgdata missing or complete, never half-made.
                    _ = gave_up.wait_for(|c| *c) => return Ok(None),
                }
            } else if storage.holds_wal() {
                anyhow::bail!(
                    "the data directory {} is missing and the copies hold this cluster's WAL but \
                     no base backup to rebuild it from; refusing to initialise a new, empty \
                     database over them",
                    pgdata.display()
                );
            }
        }
    }
    if !pgdata.exists() && marker.exists() {
        // The cluster has had a data directory and nothing could rebuild it: the copies are
        // off, or they hold no backup (replaced, or not mounted).
        anyhow::bail!(
            "the data directory {} is gone and {}; refusing to initialise a new, empty database \
             (remove {} to start afresh)",
            pgdata.display(),
            if input.storage.is_some() {
                "the copies hold no base backup to rebuild it from"
            } else {
                "the cluster has no copies to rebuild it from"
            },
            marker.display()
        );
    }
    if is_cancelled() {
        return Ok(None);
    }
    let spec = ComputeSpec {
        cluster: shared.config.name.clone(),
        cluster_dir: input.cluster_dir.clone(),
        postmaster_settings: input.postmaster_settings.clone(),
        size: input.size,
    };
    let mut compute = input.runtime.start(&spec).await?;
    if !marker.exists() {
        // Not fatal: the marker only guards against a later loss.
        if let Err(e) = std::fs::write(&marker, b"") {
            tracing::warn!(path = %marker.display(), error = %e, "could not write the cluster's marker");
        }
    }
    match prepare(input, compute.as_ref(), &is_cancelled).await {
        Ok(true) => Ok(Some(compute)),
        outcome => {
            let _ = compute.stop().await;
            if let Some(storage) = &mut input.storage {
                storage.stop_receiver().await;
            }
            outcome.map(|_| None)
        }
    }
}

/// Steps 5–7 on a started compute; `Ok(false)` when cancelled.
async fn prepare(
    input: &mut StartInput,
    compute: &dyn Compute,
    is_cancelled: &impl Fn() -> bool,
) -> anyhow::Result<bool> {
    let shared = input.shared.clone();
    let endpoint = compute.endpoint().clone();
    if let Some(storage) = &mut input.storage {
        // Commits wait for the copies from here on: the receiver must stream first.
        storage.start_receiver(endpoint.clone()).await?;
    }
    if is_cancelled() {
        return Ok(false);
    }
    if !input.users_synced {
        // Once per pgtide run: the config's users must exist in the compute before their
        // sessions start there, and the compute's own roles become known for logins.
        let roles = shared
            .compute_roles
            .sync_and_read(&endpoint, &shared.config.users)
            .await
            .context("creating the configured users")?;
        shared
            .roles
            .lock()
            .expect("roles lock")
            .replace_compute_roles(roles);
        input.users_synced = true;
    }
    if let Some(storage) = &mut input.storage {
        if !storage.has_backup() {
            // A new cluster: its copies must be able to rebuild it before anyone commits.
            let started = Instant::now();
            let start = storage
                .backup_now(&endpoint)
                .await
                .context("taking the cluster's first base backup")?;
            shared.events.record(
                EventKind::BaseBackup,
                format!(
                    "first base backup taken at {start} into the copies in {} ms",
                    started.elapsed().as_millis()
                ),
            );
        }
    }
    Ok(!is_cancelled())
}

/// The outcome of a base backup: an event either way.
pub(super) fn record_backup(shared: &Shared, finished: anyhow::Result<crate::storage::wal::Lsn>) {
    match finished {
        Ok(start) => shared.events.record(
            EventKind::BaseBackup,
            format!("base backup taken at {start} into the copies"),
        ),
        Err(e) => shared.events.record(
            EventKind::BaseBackupFailed,
            format!("base backup failed: {e:#}"),
        ),
    }
}
