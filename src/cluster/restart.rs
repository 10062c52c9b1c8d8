//! When the compute is lost: it exited on its own (a crash, `docker kill`, the OOM killer), or
//! its data directory disappeared from under it (a lost disk).
//!
//! Either way the cluster goes back to `Resuming` and a restart job starts at once: Postgres's
//! crash recovery brings back everything acknowledged, and a missing data directory is rebuilt
//! from the copies by the start itself. Clients arriving meanwhile wait as for any resume. A
//! restart that fails is tried again after a growing pause ([`backoff`]), up to
//! [`RESTART_ATTEMPTS`] times; only then is the cluster `failed`, and the next client retries.

use std::path::Path;
use std::time::{Duration, Instant};

use super::events::EventKind;
use super::start::StartPurpose;
use super::state::ClusterState;
use super::task::{ClusterTask, Phase};
use crate::runtime::ExitInfo;

/// Restart attempts after a crash before the cluster is `failed`.
pub(super) const RESTART_ATTEMPTS: u32 = 10;

/// How long killing a compute that lost its data directory may take before pgtide goes on
/// without it (the runtimes' own kill gives up after about as long).
const LOST_KILL_TIMEOUT: Duration = Duration::from_secs(40);

/// The wait before restart attempt `attempt + 1`: 200 ms, 400 ms, … (1.8 s before the tenth).
pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200 * (u64::from(attempt) + 1))
}

/// Whether a data directory still looks like one: Postgres cannot run without these.
pub(super) fn data_directory_present(pgdata: &Path) -> bool {
    pgdata.join("global").join("pg_control").exists() && pgdata.join("PG_VERSION").exists()
}

impl ClusterTask {
    pub(super) async fn on_compute_exit(&mut self, exit: ExitInfo) {
        let Phase::Running(_) = std::mem::replace(&mut self.phase, Phase::Paused) else {
            return;
        };
        self.no_compute_status();
        let description = format!("compute {}, restarting", exit.description);
        tracing::warn!(cluster = %self.name(), "{description}");
        self.shared
            .events
            .record(EventKind::ComputeExited, description);
        metrics::counter!("pgtide_cluster_compute_exits_total", "cluster" => self.name().to_string()).increment(1);
        if let Some(storage) = &mut self.storage_mut() {
            // The receiver ends with its compute; a new one starts with the next.
            storage.stop_receiver().await;
        }
        self.begin_start(StartPurpose::Restart {
            attempt: 0,
            since: Instant::now(),
        });
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

    /// A running compute whose data directory is gone is lost: it is stopped, what is left of
    /// the directory is moved aside (never deleted), and a restart rebuilds it from the copies.
    pub(super) async fn check_data_directory(&mut self) {
        let Phase::Running(running) = &self.phase else {
            return;
        };
        let pgdata = running.compute.data_dir();
        if data_directory_present(&pgdata) {
            return;
        }
        let Phase::Running(mut running) = std::mem::replace(&mut self.phase, Phase::Paused) else {
            unreachable!("matched above");
        };
        self.set_state(ClusterState::Resuming);
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
        // No clean stop: with its directory gone it can neither checkpoint nor be found by
        // `pg_ctl`, and a compute left running would keep serving (and holding) sessions.
        if tokio::time::timeout(LOST_KILL_TIMEOUT, running.compute.kill())
            .await
            .is_err()
        {
            tracing::warn!(cluster = %self.name(), "a compute without its data directory could not be killed in time");
        }
        if let Some(storage) = &mut self.storage_mut() {
            storage.stop_receiver().await;
        }
        self.no_compute_status();
        // The runtime has put back (renamed) whatever it held; what remains is moved aside so
        // that the start sees a missing directory and rebuilds it.
        let home = crate::runtime::pgdata_of(self.cluster_dir());
        if home.exists() {
            let aside = home.with_extension(format!(
                "lost-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            ));
            if let Err(e) = std::fs::rename(&home, &aside) {
                tracing::warn!(cluster = %self.name(), error = %e, "could not move the remains of the data directory aside");
            }
        }
        self.begin_start(StartPurpose::Restart {
            attempt: 0,
            since: Instant::now(),
        });
    }
}
