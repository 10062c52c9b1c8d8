//! The `/status` and `/history` documents, typed: the admin endpoint serialises them and the
//! CLI (`pgtide status`) reads them back into the same structs. Their field names are the
//! contract that DESIGN.md describes; fields are only ever added.

use serde::{Deserialize, Serialize};

use crate::cluster::events::Event;
use crate::cluster::history::HistoryPoint;
use crate::runtime::warm::WarmPoolStatus;
use crate::runtime::Limits;
use crate::storage::StorageStatus;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResponse {
    /// Where computes run: "process" or "docker".
    pub runtime: String,
    /// Compute slots made ready ahead of need (`runtime.warm_pool_size`).
    pub warm_pool: WarmPoolStatus,
    /// The machine budget (`[capacity] max_total_acu`) and what running clusters hold of it.
    #[serde(default)]
    pub capacity: Option<crate::capacity::BudgetStatus>,
    pub clusters: Vec<ClusterStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    pub state: crate::cluster::state::StateName,
    pub acu: f64,
    pub acu_target: f64,
    pub acu_seconds: f64,
    pub cpu_used_cores: f64,
    pub memory_used_mib: f64,
    pub min_acu: f64,
    pub max_acu: f64,
    pub clients: usize,
    pub active: usize,
    pub transactions: u64,
    /// The cluster's own port, else the shared endpoint (`[tenants] listen`).
    pub listen: String,
    /// "config" (a `[[clusters]]` entry) or "created" (at run time, kept in the catalog).
    #[serde(default = "config_source")]
    pub source: crate::tenants::registry::Source,
    pub pool_mode: crate::config::PoolMode,
    pub since: String,
    pub failure: Option<String>,
    pub storage: StorageStatus,
    pub pool: PoolStatus,
    pub metering: MeteringStatus,
    pub limits: Option<Limits>,
    /// The writer's zone and the standbys in the others (Multi-AZ).
    #[serde(default)]
    pub zones: crate::cluster::standbys::ZonesStatus,
    /// The reader endpoint (`reader_listen`), when the cluster has one.
    #[serde(default)]
    pub reader_listen: Option<String>,
    pub events: Vec<Event>,
}

fn config_source() -> crate::tenants::registry::Source {
    crate::tenants::registry::Source::Config
}

/// One cluster of `GET /clusters` (and `pgtide list`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterListing {
    pub name: String,
    pub source: crate::tenants::registry::Source,
    pub state: crate::cluster::state::StateName,
    pub min_acu: f64,
    pub max_acu: f64,
    pub pool_mode: crate::config::PoolMode,
    pub listen: String,
}

/// `GET /clusters`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterList {
    pub clusters: Vec<ClusterListing>,
}

/// Compute connections and the transaction-mode queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Compute connections in use and idle (session mode: one per client, all in use).
    pub server_connections_busy: usize,
    pub server_connections_idle: usize,
    /// Transaction mode: clients waiting for a compute connection now, and their total wait.
    pub waiting: usize,
    pub wait_seconds_total: f64,
    pub prepared_hits: u64,
    pub prepared_misses: u64,
}

/// ACU-hours used, beside what running at `max_acu` all the time would have used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeteringStatus {
    pub acu_hours_today: f64,
    pub acu_hours_month: f64,
    pub max_acu_hours_today: f64,
    pub max_acu_hours_month: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub cluster: String,
    /// The points kept per cluster (an hour, one a second).
    pub capacity: usize,
    pub points: Vec<HistoryPoint>,
}

impl MeteringStatus {
    pub(super) fn new(today: f64, month: f64, max_acu: f64) -> MeteringStatus {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let since_midnight = (now % 86_400) as f64;
        let day_of_month: f64 = crate::cluster::now_rfc3339()[8..10].parse().unwrap_or(1.0);
        let since_month_start = (day_of_month - 1.0) * 86_400.0 + since_midnight;
        MeteringStatus {
            acu_hours_today: today,
            acu_hours_month: month,
            max_acu_hours_today: max_acu * since_midnight / 3600.0,
            max_acu_hours_month: max_acu * since_month_start / 3600.0,
        }
    }
}
