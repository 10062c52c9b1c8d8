//! A cluster: one `[[clusters]]` entry, its compute and its state machine.
//!
//! ```text
//! Paused ⇄ Resuming → Running ⇄ (scaling) → Pausing → Paused      Failed → Resuming
//!           (Phase::Starting)                 (Phase::Stopping)
//! ```
//!
//! One task per cluster owns the state and the compute ([`task::ClusterTask`]); everything else
//! holds a [`ClusterHandle`], which reads the state through a watch channel and asks for
//! transitions through commands. Nobody else touches the compute.
//!
//! The files, one job each:
//! - [`handle`]: what the proxy and the admin endpoint hold — attach (resume if paused), pause,
//!   shutdown, role look-ups.
//! - [`task`]: the cluster's task. Its state is one enum, [`task::Phase`], whose `Running`
//!   variant owns the compute; the loop serves commands, what the phase waits for (a job's
//!   outcome, the compute's exit) and a 1 s tick.
//! - [`start`]: the start sequence (put the data directory back from the copies if it is gone,
//!   start the compute, start the WAL receiver, create the config's users) as a job that runs
//!   off the cluster's task (`Phase::Starting`): a start, a rebuild or a restart never blocks
//!   pause, shutdown or status; they are cancelled, and report their progress as events.
//! - [`stop`]: the stop of a compute ([`Compute::stop`](crate::runtime::Compute::stop), or
//!   `kill` for a lost one, then the WAL receiver's end) as a job off the task
//!   (`Phase::Stopping`), with what follows it ([`stop::AfterStop`]: pause, restart, shutdown).
//! - [`pause`]: pausing and shutting down through that job, and what each command does while a
//!   stop runs (a pause is already satisfied, a resume starts again after it, a shutdown waits
//!   for it, status always answers).
//! - [`restart`]: what happens when the compute exits on its own or loses its data directory.
//! - [`scaling`]: one scaler tick, the live resize and its metrics; the resize and the usage
//!   sample are bounded by timeouts, so that they never hold the task for long.
//! - [`metering`]: ACU-seconds, by day and month, kept across restarts.
//! - [`durability`]: the storage as the cluster sees it (a trait, so that tests can stand in).
//! - [`compute_roles`]: creating the config's users in the compute and reading its verifiers.
//! - [`load`]: the counters the proxy keeps for the cluster; [`events`], [`history`], [`roles`].
//!
//! The resume path, in prose: a client that authenticated calls [`ClusterHandle::attach`]. If
//! the state is `Running`, it gets the compute's endpoint at once. If it is `Paused` (or
//! `Failed`), it sends `Resume` and waits on the watch channel; clients that arrive meanwhile
//! see `Resuming` and wait for the same resume, so twenty clients cause one start. The task
//! turns `Resume` into a [`start::StartJob`] (a `starting` event) and goes on serving; when the
//! job reports back, [`task::ClusterTask::on_started`] installs the compute and turns the state
//! `Running`: they all proceed. If it turns `Failed`, or `resume_timeout` passes, each gets the
//! reason (the proxy answers 57P03). A resume asked for while a pause's [`stop::StopJob`] runs
//! waits for it, then starts. `docs/resume.md` tells it with every function on the way.

mod budget;
mod compute_roles;
pub mod durability;
pub mod events;
pub mod handle;
pub mod history;
pub mod load;
mod metering;
mod pause;
mod restart;
pub mod roles;
mod scaling;
pub mod standbys;
mod start;
pub mod state;
mod stop;
mod task;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::capacity::Budget;
use crate::config::{CapacityConfig, ClusterConfig};
use crate::runtime::Runtime;
use crate::storage::StorageStatus;
use events::EventLog;
use history::History;
use roles::RoleStore;

pub use durability::Durability;
pub use handle::{AttachError, ClusterHandle};
pub use load::{ClientLease, LoadCounters};
pub use metering::MeterReading;
pub use state::{ClusterState, ComputeStatus};

/// What the task and every handle share: read freely, written by the task (status, events,
/// history) or by the proxy (counters).
pub(crate) struct Shared {
    config: ClusterConfig,
    capacity: CapacityConfig,
    /// The machine budget every cluster shares.
    budget: Arc<Budget>,
    counters: LoadCounters,
    events: EventLog,
    roles: Mutex<RoleStore>,
    /// How the cluster reads and creates roles in its compute.
    compute_roles: Arc<dyn compute_roles::ComputeRoles>,
    status: Mutex<ComputeStatus>,
    history: History,
    /// ACU-seconds by day and month: added to by the task, read by `/usage`.
    metering: Mutex<metering::Metering>,
    /// Ticks the task has done: none while paused (`pgtide_cluster_ticks_total`).
    ticks: std::sync::atomic::AtomicU64,
    /// `None` with `[storage] copies = []`: durability is the compute's local disk.
    storage_status: Mutex<Option<StorageStatus>>,
    /// The machine's zones, in config order.
    zones: Vec<String>,
    /// The writer's zone and the standbys, as the task last published them.
    zones_status: Mutex<standbys::ZonesStatus>,
    /// The standbys in the reader endpoint's rotation.
    readers: Arc<standbys::readers::ReaderSet>,
}

/// How a cluster's task begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initially {
    /// The compute starts at once (the first client should not wait), and pauses later if
    /// `min_acu` is 0 and nobody comes: config clusters at pgtide's start.
    Started,
    /// No compute until a client comes: clusters created at run time, after a pgtide restart
    /// (many tenants on one machine must not all start at once).
    Paused,
}

/// What every cluster shares of the machine: the size of an ACU and the budget of them all.
#[derive(Clone)]
pub struct MachineShare {
    pub capacity: CapacityConfig,
    pub budget: Arc<Budget>,
    /// The zones computes may run in (`[[zones]]`), in config order.
    pub zones: Vec<String>,
}

/// Starts a cluster's task, its compute started or not as `initially` says.
pub fn spawn(
    initially: Initially,
    config: ClusterConfig,
    machine: MachineShare,
    runtime: Arc<dyn Runtime>,
    data_dir: PathBuf,
    storage: Option<Box<dyn Durability>>,
) -> ClusterHandle {
    spawn_with(
        initially,
        config,
        machine,
        runtime,
        data_dir,
        storage,
        Arc::new(compute_roles::PostgresRoles),
    )
}

/// [`spawn`], with the way roles are read from the compute given (tests use computes that are
/// not Postgres).
pub(crate) fn spawn_with(
    initially: Initially,
    config: ClusterConfig,
    machine: MachineShare,
    runtime: Arc<dyn Runtime>,
    data_dir: PathBuf,
    storage: Option<Box<dyn Durability>>,
    compute_roles: Arc<dyn compute_roles::ComputeRoles>,
) -> ClusterHandle {
    let cluster_dir = data_dir.join("clusters").join(&config.name);
    let _ = std::fs::create_dir_all(&cluster_dir);
    let roles = RoleStore::load(&config.users, cluster_dir.join("roles.json"));
    let metering = metering::Metering::load(cluster_dir.join("metering.json"));
    let shared = Arc::new(Shared {
        events: EventLog::new(&config.name),
        counters: LoadCounters::new(),
        roles: Mutex::new(roles),
        compute_roles,
        status: Mutex::new(ComputeStatus {
            acu_seconds: metering.acu_seconds(),
            ..ComputeStatus::idle()
        }),
        history: History::default(),
        metering: Mutex::new(metering),
        ticks: Default::default(),
        storage_status: Mutex::new(storage.as_ref().map(|s| s.status())),
        config,
        capacity: machine.capacity,
        budget: machine.budget,
        zones: machine.zones,
        zones_status: Mutex::default(),
        readers: Arc::default(),
    });
    let (state_tx, state_rx) = watch::channel(ClusterState::Paused);
    let (command_tx, command_rx) = mpsc::channel(256);
    let task = task::ClusterTask::new(
        shared.clone(),
        runtime,
        cluster_dir,
        storage,
        state_tx,
        command_rx,
    );
    tokio::spawn(task.run());
    shared.budget.join(
        &shared.config.name,
        Arc::new(budget::Member {
            shared: Arc::downgrade(&shared),
            state: state_rx.clone(),
            commands: command_tx.downgrade(),
        }),
    );
    let handle = ClusterHandle::new(shared, state_rx, command_tx);
    if initially == Initially::Started {
        handle.request_resume("pgtide start");
    }
    handle
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
