//! What every handle can watch of a cluster: its state, and the compute's figures for `/status`.

use serde::{Deserialize, Serialize};

use crate::runtime::{ComputeEndpoint, Limits};

/// The state every handle can watch. The task's own, richer state is [`super::task::Phase`];
/// this is what clients and `/status` need of it.
#[derive(Debug, Clone)]
pub enum ClusterState {
    Paused,
    Resuming,
    Running(ComputeEndpoint),
    Pausing,
    Failed(String),
}

/// A state's name in `/status` (`"state"`): part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateName {
    Paused,
    Resuming,
    Running,
    Pausing,
    Failed,
}

impl StateName {
    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Paused => "paused",
            StateName::Resuming => "resuming",
            StateName::Running => "running",
            StateName::Pausing => "pausing",
            StateName::Failed => "failed",
        }
    }
}

impl std::fmt::Display for StateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ClusterState {
    pub fn name(&self) -> StateName {
        match self {
            ClusterState::Paused => StateName::Paused,
            ClusterState::Resuming => StateName::Resuming,
            ClusterState::Running(_) => StateName::Running,
            ClusterState::Pausing => StateName::Pausing,
            ClusterState::Failed(_) => StateName::Failed,
        }
    }

    /// The value of the `pgtide_cluster_state` gauge.
    pub(super) fn gauge(&self) -> f64 {
        match self {
            ClusterState::Paused => 0.0,
            ClusterState::Resuming => 1.0,
            ClusterState::Running(_) => 2.0,
            ClusterState::Pausing => 3.0,
            ClusterState::Failed(_) => 4.0,
        }
    }
}

/// What `/status` shows of a cluster besides its state.
#[derive(Debug, Clone, Serialize)]
pub struct ComputeStatus {
    pub acu: f64,
    /// What the scaler wants now (equal to `acu` unless applying a step failed).
    pub acu_target: f64,
    /// ACU-seconds used since the cluster was created (0 while paused), kept across restarts.
    pub acu_seconds: f64,
    /// ACU-hours used today and this month (UTC).
    pub acu_hours_today: f64,
    pub acu_hours_month: f64,
    pub cpu_used_cores: f64,
    pub memory_used_mib: f64,
    pub limits: Option<Limits>,
    pub since: String,
}

impl ComputeStatus {
    /// No compute: 0 ACU, no usage, no limits (metering kept by the caller).
    pub fn idle() -> ComputeStatus {
        ComputeStatus {
            acu: 0.0,
            acu_target: 0.0,
            acu_seconds: 0.0,
            acu_hours_today: 0.0,
            acu_hours_month: 0.0,
            cpu_used_cores: 0.0,
            memory_used_mib: 0.0,
            limits: None,
            since: super::now_rfc3339(),
        }
    }
}
