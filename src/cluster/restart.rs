//! When the compute is lost: it exited on its own (a crash, `docker kill`, the OOM killer), or
//! its data directory disappeared from under it (a lost disk).
//!
//! Either way the cluster goes back to `Resuming`, a stop job (`stop.rs`) ends the WAL receiver
//! (and kills a compute that lost its data directory) off the task, and when it is done a
//! restart job starts: Postgres's crash recovery brings back everything acknowledged, and a
//! missing data directory is rebuilt from the copies by the start itself. Clients arriving meanwhile wait as for any resume. A
//! restart that fails is tried again after a growing pause ([`backoff`]), up to
//! [`RESTART_ATTEMPTS`] times; only then is the cluster `failed`, and the next client retries.

use std::path::Path;
use std::time::{Duration, Instant};

use super::events::EventKind;
use super::start::StartPurpose;
use super::state::ClusterState;
use super::stop::{AfterStop, StopKind};
use super::task::{ClusterTask, Phase};
use crate::runtime::ExitInfo;

/// Restart attempts after a crash before the cluster is `failed`.
pub(super) const RESTART_ATTEMPTS: u32 = 10;

/// The wait before restart attempt `attempt + 1`: 200 ms, 400 ms, … (1.8 s before the tenth).
pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200 * (u64::from(attempt) + 1))
}

/// Whether a data directory still looks like one: Postgres cannot run without these.
pub(super) fn data_directory_present(pgdata: &Path) -> bool {
    pgdata.join("global").join("pg_control").exists() && pgdata.join("PG_VERSION").exists()
}

impl ClusterTask {
    /// The compute exited without being asked: its receiver ends off the task, then a restart.
    pub(super) fn on_compute_exit(&mut self, exit: ExitInfo) {
        let running = match std::mem::replace(&mut self.phase, Phase::Paused) {
            Phase::Running(running) => running,
            other => {
                self.phase = other;
                return;
            }
        };
        self.no_compute_status();
        self.standbys.writer_gone();
        self.writer_lost_because = Some(format!("the writer's compute {}", exit.description));
        let description = format!("compute {}", exit.description);
        tracing::warn!(cluster = %self.name(), "{description}");
        self.shared
            .events
            .record(EventKind::ComputeExited, description);
        metrics::counter!("pgtide_cluster_compute_exits_total", "cluster" => self.name().to_string()).increment(1);
        self.begin_stop(running.compute, StopKind::Exited, AfterStop::Restart);
    }

    /// Restart attempt `attempt` failed: wait and try again, or give up.
    pub(super) fn restart_failed(&mut self, attempt: u32, since: Instant, reason: String) {
        tracing::warn!(cluster = %self.name(), attempt, error = %reason, "restart failed");
        if attempt + 1 >= RESTART_ATTEMPTS {
            self.shared.events.record(
                EventKind::ResumeFailed,
                format!("restart after a crash failed: {reason}"),
            );
            self.phase = Phase::Failed;
            self.set_state(ClusterState::Failed(reason));
            return;
        }
        self.phase = Phase::Backoff {
            attempt,
            since,
            until: tokio::time::Instant::now() + backoff(attempt),
        };
        // Clients keep waiting, as for any resume.
        self.set_state(ClusterState::Resuming);
    }

    pub(super) fn retry_restart(&mut self) {
        if let Phase::Backoff { attempt, since, .. } = self.phase {
            self.begin_start(StartPurpose::Restart {
                attempt: attempt + 1,
                since,
            });
        }
    }

    /// A running compute whose data directory is gone is lost: a stop job kills it (no clean
    /// stop: with its directory gone it can neither checkpoint nor be found by `pg_ctl`, and a
    /// compute left running would keep serving, and holding, sessions); when it is done what is
    /// left of the directory is moved aside ([`move_lost_data_directory_aside`], by the next start)
    /// and a restart rebuilds it from the copies.
    pub(super) fn check_data_directory(&mut self) {
        let Phase::Running(running) = &self.phase else {
            return;
        };
        let pgdata = running.compute.data_dir();
        if data_directory_present(&pgdata) {
            return;
        }
        let Phase::Running(running) = std::mem::replace(&mut self.phase, Phase::Paused) else {
            unreachable!("matched above");
        };
        self.shared.events.record(
            EventKind::DataDirectoryLost,
            format!(
                "the compute's data directory {} is gone: stopping it{}",
                pgdata.display(),
                if self.has_copies() {
                    " and rebuilding it from the copies"
                } else {
                    ""
                }
            ),
        );
        self.writer_lost_because = Some(format!(
            "the writer's data directory {} is gone",
            pgdata.display()
        ));
        self.begin_stop(running.compute, StopKind::Lost, AfterStop::Restart);
    }
}

/// After a lost compute's stop: the runtime has put back (renamed) whatever it held; what
/// remains is moved aside, never deleted, so that the next start sees a missing directory and
/// rebuilds it.
pub(super) fn move_lost_data_directory_aside(cluster_dir: &Path) -> Option<std::path::PathBuf> {
    let home = crate::runtime::pgdata_of(cluster_dir);
    if !home.exists() {
        return None;
    }
    let aside = home.with_extension(format!(
        "lost-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    ));
    match std::fs::rename(&home, &aside) {
        Ok(()) => {
            tracing::warn!(aside = %aside.display(), "the remains of a lost data directory were moved aside");
            Some(aside)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not move the remains of the data directory aside");
            None
        }
    }
}
