//! [`ClusterHandle`]: what the proxy and the admin endpoint hold of a cluster. It reads the
//! state through a watch channel and asks the cluster's task for transitions through commands;
//! it never touches the compute.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::events::EventLog;
use super::history::History;
use super::load::LoadCounters;
use super::roles::RoleSecret;
use super::state::{ClusterState, ComputeStatus};
use super::Shared;
use crate::config::ClusterConfig;
use crate::runtime::ComputeEndpoint;
use crate::storage::StorageStatus;

/// What a handle asks of the cluster's task.
pub(super) enum Command {
    Resume {
        requested_by: String,
    },
    Pause {
        reply: oneshot::Sender<Result<String, String>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// The machine budget asks this cluster to pause, if it may, for another's resume.
    Reclaim {
        for_cluster: String,
    },
    /// `pgtide failover [--to ZONE]`.
    Failover {
        to: Option<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

/// Why a client could not be attached to the compute.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AttachError {
    #[error("cluster \"{cluster}\" could not be resumed: {reason}")]
    ResumeFailed { cluster: String, reason: String },
    #[error("cluster \"{cluster}\" did not resume within {timeout:?}")]
    ResumeTimeout { cluster: String, timeout: Duration },
    #[error(
        "cluster \"{cluster}\" could not resume: no capacity (SQLSTATE 53000): it needs \
         {need} ACU, running clusters hold all of max_total_acu = {max_total_acu}, and none \
         could be paused in time"
    )]
    NoCapacity {
        cluster: String,
        need: f64,
        max_total_acu: f64,
    },
    #[error("pgtide is shutting down")]
    ShuttingDown,
}

/// A cheap, cloneable handle on a cluster.
#[derive(Clone)]
pub struct ClusterHandle {
    pub(super) shared: Arc<Shared>,
    state: watch::Receiver<ClusterState>,
    commands: mpsc::Sender<Command>,
}

impl ClusterHandle {
    pub(super) fn new(
        shared: Arc<Shared>,
        state: watch::Receiver<ClusterState>,
        commands: mpsc::Sender<Command>,
    ) -> ClusterHandle {
        ClusterHandle {
            shared,
            state,
            commands,
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.shared.config
    }

    pub fn counters(&self) -> &LoadCounters {
        &self.shared.counters
    }

    pub fn events(&self) -> &EventLog {
        &self.shared.events
    }

    pub fn state(&self) -> ClusterState {
        self.state.borrow().clone()
    }

    /// The state as a watch: `changed()` wakes at each transition and fails once the
    /// cluster's task has ended (a shutdown or a drop), so a follower costs nothing between.
    pub fn watch_state(&self) -> watch::Receiver<ClusterState> {
        self.state.clone()
    }

    pub fn storage_status(&self) -> Option<StorageStatus> {
        self.shared
            .storage_status
            .lock()
            .expect("storage status lock")
            .clone()
    }

    /// Ticks the cluster's task has done since it started (none while paused).
    pub fn ticks(&self) -> u64 {
        self.shared.ticks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The ACU meter as of today (UTC): total, today, this month, and each day kept.
    pub fn usage(&self) -> super::MeterReading {
        let today = &super::now_rfc3339()[..10];
        self.shared
            .metering
            .lock()
            .expect("metering lock")
            .reading(today)
    }

    pub fn history(&self) -> &History {
        &self.shared.history
    }

    pub fn compute_status(&self) -> ComputeStatus {
        self.shared.status.lock().expect("status lock").clone()
    }

    /// Asks for a resume without waiting for it (a full queue means one is asked for already).
    pub(super) fn request_resume(&self, requested_by: &str) {
        let _ = self.commands.try_send(Command::Resume {
            requested_by: requested_by.to_string(),
        });
    }

    /// Waits until the compute runs (resuming it if paused) and returns how to reach it.
    pub async fn attach(&self, requested_by: &str) -> Result<ComputeEndpoint, AttachError> {
        self.attach_within(requested_by, self.shared.config.resume_timeout)
            .await
    }

    /// [`Self::attach`], waiting at most `timeout` instead of the cluster's `resume_timeout`.
    pub async fn attach_within(
        &self,
        requested_by: &str,
        timeout: Duration,
    ) -> Result<ComputeEndpoint, AttachError> {
        // Every transaction of a transaction-mode client comes here: a running cluster is
        // answered without a clock read or a receiver of its own.
        if let ClusterState::Running(endpoint) = &*self.state.borrow() {
            return Ok(endpoint.clone());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut state = self.state.clone();
        let mut waited_for_resume = false;
        loop {
            let current = state.borrow_and_update().clone();
            match current {
                ClusterState::Running(endpoint) => return Ok(endpoint),
                ClusterState::Failed(reason) if waited_for_resume => {
                    return Err(AttachError::ResumeFailed {
                        cluster: self.name().to_string(),
                        reason,
                    })
                }
                ClusterState::Paused | ClusterState::Failed(_) => {
                    waited_for_resume = true;
                    self.make_room(deadline).await?;
                    let command = Command::Resume {
                        requested_by: requested_by.to_string(),
                    };
                    if self.commands.send(command).await.is_err() {
                        return Err(AttachError::ShuttingDown);
                    }
                }
                ClusterState::Resuming => waited_for_resume = true,
                ClusterState::Pausing => {}
            }
            match tokio::time::timeout_at(deadline, state.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(AttachError::ShuttingDown),
                Err(_) => {
                    return Err(AttachError::ResumeTimeout {
                        cluster: self.name().to_string(),
                        timeout,
                    })
                }
            }
        }
    }

    /// Waits (at most `timeout`) until the cluster is no longer running at `endpoint`: used when
    /// that compute refuses connections, i.e. it has just died and its exit is being noticed.
    pub async fn wait_until_not_running_at(&self, endpoint: &ComputeEndpoint, timeout: Duration) {
        let mut state = self.state.clone();
        let moved_on = state.wait_for(|s| !matches!(s, ClusterState::Running(e) if e == endpoint));
        let _ = tokio::time::timeout(timeout, moved_on).await;
    }

    /// The secret for `user`, as pgtide knows it now: a lookup only, the same for known and
    /// unknown users, which never reaches the compute (the proxy's verifier refresher keeps the
    /// store current while the compute runs).
    pub fn role_secret(&self, user: &str) -> Option<RoleSecret> {
        self.shared.roles.lock().expect("roles lock").lookup(user)
    }

    /// Pauses now (refused while clients are connected). Returns what happened.
    pub async fn pause(&self) -> Result<String, String> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Pause { reply })
            .await
            .map_err(|_| "pgtide is shutting down".to_string())?;
        rx.await
            .map_err(|_| "pgtide is shutting down".to_string())?
    }

    /// `pgtide failover [--to ZONE]`: a standby takes over from the running writer; answered
    /// once the new writer runs (or the takeover failed, with why).
    pub async fn failover(&self, to: Option<String>) -> Result<String, String> {
        if let ClusterState::Running(writer) = self.state() {
            let standbys = self.zones().standbys;
            let standby = crate::cluster::standbys::choose(&standbys, to.as_deref())
                .ok()
                .and_then(|zone| standbys.into_iter().find(|s| s.zone == zone))
                .and_then(|standby| standby.endpoint);
            if let Some(standby) = standby {
                crate::cluster::standbys::prepare_takeover(&writer, &standby).await;
            }
        }
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Failover { to, reply })
            .await
            .map_err(|_| "pgtide is shutting down".to_string())?;
        rx.await
            .map_err(|_| "pgtide is shutting down".to_string())?
    }

    /// Where the writer runs and what its standbys do.
    pub fn zones(&self) -> crate::cluster::standbys::ZonesStatus {
        self.shared.zones_status.lock().expect("zones lock").clone()
    }

    /// The standbys the reader endpoint may send sessions to.
    pub fn readers(&self) -> &crate::cluster::standbys::readers::ReaderSet {
        &self.shared.readers
    }

    /// Asks for a resume and waits until the compute runs.
    pub async fn resume(&self, requested_by: &str) -> Result<(), AttachError> {
        self.attach(requested_by).await.map(|_| ())
    }

    /// [`Self::resume`], waiting at most `timeout`.
    pub async fn resume_within(
        &self,
        requested_by: &str,
        timeout: Duration,
    ) -> Result<(), AttachError> {
        self.attach_within(requested_by, timeout).await.map(|_| ())
    }

    /// Stops the compute cleanly and ends the cluster's task.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }
}
