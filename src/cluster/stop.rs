//! The stop of a compute, as a job that runs off the cluster's task.
//!
//! Stopping takes time: a clean stop checkpoints and waits for Postgres's fast shutdown, killing
//! a lost compute may take tens of seconds (its runtime gives up after about 40 s), and the WAL
//! receiver then waits, up to 30 s, until a quorum of copies holds everything the compute sent.
//! None of it may hold up the cluster's task, which must go on answering pause, resume,
//! shutdown and ticks. So [`StopJob::spawn`] takes the compute and the storage (lent, as a start
//! job borrows it) and runs, in order:
//! 1. the stop itself, by [`StopKind`]: [`Compute::stop`] (the storage told first that the
//!    stream's end is no loss), [`Compute::kill`] bounded by [`LOST_KILL_TIMEOUT`], or nothing
//!    for a compute that exited on its own;
//! 2. the compute is dropped (its runtime releases its slot);
//! 3. [`Durability::stop_receiver`]: the receiver ends with everything durable.
//!
//! The job carries [`AfterStop`], what the task does when it reports back: pause, restart, or
//! end the task for pgtide's shutdown. Commands that arrive meanwhile change that plan (see
//! `pause.rs`); the stop itself is never cancelled: a compute half-stopped is worse than one
//! stopped a little later.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::durability::Durability;
use crate::runtime::Compute;

/// How long killing a compute that lost its data directory may take before pgtide goes on
/// without it (the runtimes' own kill gives up after about as long).
const LOST_KILL_TIMEOUT: Duration = Duration::from_secs(40);

/// How a compute is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopKind {
    /// On purpose (a pause, a shutdown, a cancelled start): CHECKPOINT, then a fast shutdown.
    Clean,
    /// Its data directory is gone: it can neither checkpoint nor be found by `pg_ctl`, and left
    /// running it would keep serving (and holding) sessions. Killed at once.
    Lost,
    /// It exited on its own: only its WAL receiver is left to end.
    Exited,
}

impl StopKind {
    /// For events: what the stop does.
    fn describe(self) -> &'static str {
        match self {
            StopKind::Clean => "stopping the compute cleanly (CHECKPOINT, then a fast shutdown)",
            StopKind::Lost => "killing the compute that lost its data directory",
            StopKind::Exited => "ending the WAL receiver of the compute that exited",
        }
    }
}

/// The answer a pause waits for.
pub(super) type PauseReply = oneshot::Sender<Result<String, String>>;

/// What the task does once the stop is done.
pub(super) enum AfterStop {
    /// The cluster is paused; `replies` are the pauses that wait to hear it; `resume_for` names
    /// who asked for a resume meanwhile (a start begins as soon as the cluster is paused).
    Pause {
        reason: String,
        replies: Vec<PauseReply>,
        resume_for: Option<String>,
    },
    /// The compute was lost (it exited, or its data directory went): a restart follows.
    Restart,
    /// pgtide is stopping: the task ends, then these hear it.
    Shutdown { replies: Vec<oneshot::Sender<()>> },
    /// `pgtide failover`: the writer stopped cleanly; the standby in `zone` takes over.
    Failover { zone: String },
}

/// What a finished stop gives back to the task.
pub(super) struct StopOutcome {
    pub storage: Option<Box<dyn Durability>>,
}

/// A stop under way.
pub(super) struct StopJob {
    pub kind: StopKind,
    pub then: AfterStop,
    pub started_at: Instant,
    handle: JoinHandle<StopOutcome>,
}

impl StopJob {
    pub(super) fn spawn(
        compute: Box<dyn Compute>,
        storage: Option<Box<dyn Durability>>,
        kind: StopKind,
        then: AfterStop,
        cluster: String,
        standbys_stopped: Vec<oneshot::Receiver<()>>,
    ) -> StopJob {
        StopJob {
            kind,
            then,
            started_at: Instant::now(),
            handle: tokio::spawn(async move {
                let outcome = run(compute, storage, kind, cluster).await;
                // A pause or a shutdown stops the standbys too, beside the writer.
                for stopped in standbys_stopped {
                    let _ = stopped.await;
                }
                outcome
            }),
        }
    }

    /// For the `Stopping` event.
    pub(super) fn description(&self) -> &'static str {
        self.kind.describe()
    }

    /// Waits for the job's outcome; `None` if it panicked (the storage is lost with it).
    pub(super) async fn finished(&mut self) -> Option<StopOutcome> {
        match (&mut self.handle).await {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                tracing::error!(error = %e, "a compute stop panicked");
                None
            }
        }
    }
}

async fn run(
    mut compute: Box<dyn Compute>,
    mut storage: Option<Box<dyn Durability>>,
    kind: StopKind,
    cluster: String,
) -> StopOutcome {
    match kind {
        StopKind::Clean => {
            if let Some(storage) = &mut storage {
                storage.compute_stopping();
            }
            if let Err(e) = compute.stop().await {
                tracing::warn!(%cluster, error = %e, "stopping the compute failed");
            }
        }
        StopKind::Lost => {
            if tokio::time::timeout(LOST_KILL_TIMEOUT, compute.kill())
                .await
                .is_err()
            {
                tracing::warn!(%cluster, "a compute without its data directory could not be killed in time");
            }
        }
        StopKind::Exited => {}
    }
    // The runtime releases what the compute held (a docker slot puts its data directory back).
    drop(compute);
    if let Some(storage) = &mut storage {
        // The receiver ends with its compute; a new one starts with the next.
        storage.stop_receiver().await;
    }
    StopOutcome { storage }
}
