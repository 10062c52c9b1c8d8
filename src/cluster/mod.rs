//! A cluster: one `[[clusters]]` entry, its compute and its state machine.
//!
//! ```text
//! Paused ⇄ Resuming → Running ⇄ (scaling) → Pausing → Paused      Failed → Resuming
//! ```
//!
//! One task per cluster owns the state and the compute ([`ClusterTask`]); everything else holds a
//! [`ClusterHandle`], which reads the state through a watch channel and asks for transitions
//! through commands. Nobody else touches the compute.
//!
//! The resume path, in prose: a client that authenticated calls [`ClusterHandle::attach`]. If
//! the state is `Running`, it gets the compute's endpoint at once. If it is `Paused` (or
//! `Failed`), it sends `Resume` and waits on the watch channel; clients that arrive meanwhile
//! see `Resuming` and wait for the same resume, so twenty clients cause one start. When the
//! state turns `Running`, they all proceed; if it turns `Failed`, or `resume_timeout` passes,
//! each gets the reason (the proxy answers 57P03).

pub mod events;
pub mod history;
pub mod roles;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::acu::{self, ComputeSize};
use crate::config::{CapacityConfig, ClusterConfig, PoolMode};
use crate::runtime::{Compute, ComputeEndpoint, ComputeSpec, ExitInfo, Limits, Runtime};
use crate::scaler::policy::{Decision, PolicyConfig};
use crate::scaler::Scaler;
use crate::storage::{ClusterStorage, StorageStatus};
use events::EventLog;
use history::{History, HistoryPoint};
use roles::{RoleSecret, RoleStore};

/// Load counters, written by the proxy on its hot path (relaxed atomics, changed per chunk or
/// per transition, never per message) and read by the cluster task and the admin endpoint.
#[derive(Debug)]
pub struct LoadCounters {
    /// Client connections attached or waiting to attach (monitoring never counts here).
    pub clients: AtomicUsize,
    /// Sessions with a request in flight or a transaction open.
    pub active: AtomicUsize,
    /// Finished transactions (ReadyForQuery with status idle).
    pub transactions: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
    /// A CREATE/ALTER/DROP ROLE went through: re-read the verifiers before the next login.
    pub roles_changed: AtomicBool,
    /// Transaction mode: clients waiting for a compute connection, and their total wait.
    pub waiting: AtomicUsize,
    pub wait_micros: AtomicU64,
    /// Transaction mode: Binds/Describes that found their statement on the connection, or not.
    pub prepared_hits: AtomicU64,
    pub prepared_misses: AtomicU64,
    /// Milliseconds since `epoch` of the last client activity, for auto-pause.
    last_activity_ms: AtomicU64,
    epoch: Instant,
}

impl LoadCounters {
    fn new() -> Self {
        LoadCounters {
            clients: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            transactions: AtomicU64::new(0),
            bytes_from_clients: AtomicU64::new(0),
            bytes_to_clients: AtomicU64::new(0),
            roles_changed: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            wait_micros: AtomicU64::new(0),
            prepared_hits: AtomicU64::new(0),
            prepared_misses: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Marks "a client did something now".
    pub fn touch(&self) {
        self.last_activity_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the last client activity.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// The state every handle can watch.
#[derive(Debug, Clone)]
pub enum ClusterState {
    Paused,
    Resuming,
    Running(ComputeEndpoint),
    Pausing,
    Failed(String),
}

impl ClusterState {
    pub fn name(&self) -> &'static str {
        match self {
            ClusterState::Paused => "paused",
            ClusterState::Resuming => "resuming",
            ClusterState::Running(_) => "running",
            ClusterState::Pausing => "pausing",
            ClusterState::Failed(_) => "failed",
        }
    }

    /// The value of the `pgtide_cluster_state` gauge.
    fn gauge(&self) -> f64 {
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
    /// What the scaler wants now (equal to `acu` unless a step was refused or failed).
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

enum Command {
    Resume {
        requested_by: String,
    },
    Pause {
        reply: oneshot::Sender<Result<String, String>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Why a client could not be attached to the compute.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AttachError {
    #[error("cluster \"{cluster}\" could not be resumed: {reason}")]
    ResumeFailed { cluster: String, reason: String },
    #[error("cluster \"{cluster}\" did not resume within {timeout:?}")]
    ResumeTimeout { cluster: String, timeout: Duration },
    #[error("pgtide is shutting down")]
    ShuttingDown,
}

struct Shared {
    config: ClusterConfig,
    capacity: CapacityConfig,
    counters: LoadCounters,
    events: EventLog,
    roles: Mutex<RoleStore>,
    /// Serialises role refreshes so that a burst of logins causes one query.
    roles_refresh: tokio::sync::Mutex<()>,
    status: Mutex<ComputeStatus>,
    history: History,
    /// `None` with `[storage] copies = []`: durability is the compute's local disk.
    storage_status: Mutex<Option<StorageStatus>>,
}

/// A cheap, cloneable handle on a cluster.
#[derive(Clone)]
pub struct ClusterHandle {
    shared: Arc<Shared>,
    state: watch::Receiver<ClusterState>,
    commands: mpsc::Sender<Command>,
}

/// Held by a client for as long as it is connected: it counts as a client of the cluster.
pub struct ClientLease {
    shared: Arc<Shared>,
}

impl Drop for ClientLease {
    fn drop(&mut self) {
        self.shared.counters.clients.fetch_sub(1, Ordering::Relaxed);
        self.shared.counters.touch();
    }
}

impl ClusterHandle {
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

    pub fn storage_status(&self) -> Option<StorageStatus> {
        self.shared
            .storage_status
            .lock()
            .expect("storage status lock")
            .clone()
    }

    pub fn history(&self) -> &History {
        &self.shared.history
    }

    pub fn compute_status(&self) -> ComputeStatus {
        self.shared.status.lock().expect("status lock").clone()
    }

    /// Counts a new client connection (before it authenticates).
    pub fn lease(&self) -> ClientLease {
        self.shared.counters.clients.fetch_add(1, Ordering::Relaxed);
        self.shared.counters.touch();
        ClientLease {
            shared: self.shared.clone(),
        }
    }

    /// Waits until the compute runs (resuming it if paused) and returns how to reach it.
    pub async fn attach(&self, requested_by: &str) -> Result<ComputeEndpoint, AttachError> {
        let timeout = self.shared.config.resume_timeout;
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

    /// The secret for `user`. Re-reads the compute's roles first when they may have changed
    /// (a role DDL went through, or the user is unknown) and the compute is running: a paused
    /// cluster is never woken to check a password.
    pub async fn role_secret(&self, user: &str) -> Option<RoleSecret> {
        let changed = self.shared.counters.roles_changed.load(Ordering::Relaxed);
        let known = self.shared.roles.lock().expect("roles lock").lookup(user);
        if known.is_some() && !changed {
            return known;
        }
        self.refresh_roles().await;
        self.shared.roles.lock().expect("roles lock").lookup(user)
    }

    /// Called after a failed password check, so that a password changed by SQL works at the
    /// next attempt even if the change did not go through pgtide's relay.
    pub async fn refresh_roles(&self) {
        let ClusterState::Running(endpoint) = self.state() else {
            return;
        };
        let _one_at_a_time = self.shared.roles_refresh.lock().await;
        self.shared
            .counters
            .roles_changed
            .store(false, Ordering::Relaxed);
        match read_roles(&endpoint).await {
            Ok(roles) => self
                .shared
                .roles
                .lock()
                .expect("roles lock")
                .replace_compute_roles(roles),
            Err(e) => {
                tracing::warn!(cluster = %self.name(), error = %e, "could not read roles from the compute")
            }
        }
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

    /// Asks for a resume and waits until the compute runs.
    pub async fn resume(&self, requested_by: &str) -> Result<(), AttachError> {
        self.attach(requested_by).await.map(|_| ())
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

async fn read_roles(
    endpoint: &ComputeEndpoint,
) -> anyhow::Result<HashMap<String, crate::proxy::scram::ScramVerifier>> {
    let client = endpoint.admin_connect().await?;
    Ok(roles::read_compute_roles(&client).await?)
}

/// Starts a cluster's task; the compute is started at once (the first client should not wait),
/// and pauses later if `min_acu` is 0 and nobody comes.
pub fn spawn(
    config: ClusterConfig,
    capacity: CapacityConfig,
    runtime: Arc<dyn Runtime>,
    data_dir: PathBuf,
    storage: Option<ClusterStorage>,
) -> ClusterHandle {
    let cluster_dir = data_dir.join("clusters").join(&config.name);
    let _ = std::fs::create_dir_all(&cluster_dir);
    let roles = RoleStore::load(&config.users, cluster_dir.join("roles.json"));
    let shared = Arc::new(Shared {
        events: EventLog::new(&config.name),
        counters: LoadCounters::new(),
        roles: Mutex::new(roles),
        roles_refresh: tokio::sync::Mutex::new(()),
        status: Mutex::new(ComputeStatus {
            acu: 0.0,
            acu_target: 0.0,
            acu_seconds: 0.0,
            acu_hours_today: 0.0,
            acu_hours_month: 0.0,
            cpu_used_cores: 0.0,
            memory_used_mib: 0.0,
            limits: None,
            since: now_rfc3339(),
        }),
        history: History::default(),
        storage_status: Mutex::new(storage.as_ref().map(|s| s.status())),
        config,
        capacity,
    });
    let (state_tx, state_rx) = watch::channel(ClusterState::Paused);
    let (command_tx, command_rx) = mpsc::channel(256);
    let metering = Metering::load(cluster_dir.join("metering.json"));
    let scaler = Scaler::new(PolicyConfig {
        min_acu: shared.config.min_acu,
        max_acu: shared.config.max_acu,
        step_acu: shared.capacity.step_acu,
        cpu_per_acu: shared.capacity.cpu_per_acu,
        memory_mib_per_acu: shared.capacity.memory_mib_per_acu as f64,
        scale_down_after: shared.config.scale_down_after,
    });
    let task = ClusterTask {
        shared: shared.clone(),
        runtime,
        cluster_dir,
        scaler,
        acu: 0.0,
        metering,
        last_tick: Instant::now(),
        last_notice: None,
        last_transactions: 0,
        storage,
        state: state_tx,
        compute: None,
        commands: command_rx,
        users_synced: false,
    };
    shared.status.lock().expect("status lock").acu_seconds = task.metering.acu_seconds();
    tokio::spawn(task.run());
    let handle = ClusterHandle {
        shared,
        state: state_rx,
        commands: command_tx,
    };
    let _ = handle.commands.try_send(Command::Resume {
        requested_by: "pgtide start".to_string(),
    });
    handle
}

struct ClusterTask {
    shared: Arc<Shared>,
    runtime: Arc<dyn Runtime>,
    cluster_dir: PathBuf,
    state: watch::Sender<ClusterState>,
    compute: Option<Box<dyn Compute>>,
    commands: mpsc::Receiver<Command>,
    /// The config's users were created in the compute during this run.
    users_synced: bool,
    scaler: Scaler,
    /// The ACU applied now; 0 while paused.
    acu: f64,
    metering: Metering,
    last_tick: Instant,
    /// The last refusal recorded (so that a refusal that lasts is one event, not one a second).
    last_notice: Option<String>,
    /// The transaction counter at the last tick, for transactions per second.
    last_transactions: u64,
    storage: Option<ClusterStorage>,
}

/// ACU-seconds, saved beside the cluster's data so that the meter survives restarts; also
/// bucketed by UTC day and month, as a bill would be.
struct Metering {
    path: PathBuf,
    saved: SavedMetering,
    saved_at: Instant,
}

#[derive(Serialize, serde::Deserialize, Default)]
struct SavedMetering {
    acu_seconds: f64,
    #[serde(default)]
    day: String,
    #[serde(default)]
    day_acu_seconds: f64,
    #[serde(default)]
    month: String,
    #[serde(default)]
    month_acu_seconds: f64,
}

impl Metering {
    fn load(path: PathBuf) -> Metering {
        let saved = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<SavedMetering>(&b).ok())
            .unwrap_or_default();
        Metering {
            path,
            saved,
            saved_at: Instant::now(),
        }
    }

    fn acu_seconds(&self) -> f64 {
        self.saved.acu_seconds
    }

    fn add(&mut self, acu: f64, elapsed: Duration) {
        let used = acu * elapsed.as_secs_f64();
        let today = now_rfc3339()[..10].to_string();
        if self.saved.day != today {
            self.saved.day = today.clone();
            self.saved.day_acu_seconds = 0.0;
        }
        if self.saved.month != today[..7] {
            self.saved.month = today[..7].to_string();
            self.saved.month_acu_seconds = 0.0;
        }
        self.saved.acu_seconds += used;
        self.saved.day_acu_seconds += used;
        self.saved.month_acu_seconds += used;
        if self.saved_at.elapsed() >= Duration::from_secs(10) {
            self.save();
        }
    }

    fn save(&mut self) {
        self.saved_at = Instant::now();
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&self.saved).expect("serializable");
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &self.path))
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not save the ACU meter");
        }
    }
}

impl ClusterTask {
    fn name(&self) -> &str {
        &self.shared.config.name
    }

    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let has_compute = self.compute.is_some();
            let mut exited = match &self.compute {
                Some(compute) => compute.exited(),
                None => watch::channel(None).1,
            };
            let exit = async move {
                exited
                    .wait_for(|e| e.is_some())
                    .await
                    .ok()
                    .and_then(|e| e.clone())
            };
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Resume { requested_by }) => self.resume(&requested_by).await,
                    Some(Command::Pause { reply }) => {
                        let result = self.pause_on_request().await;
                        let _ = reply.send(result);
                    }
                    Some(Command::Shutdown { reply }) => {
                        self.stop_compute().await;
                        self.metering.save();
                        self.set_state(ClusterState::Paused);
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.stop_compute().await;
                        return;
                    }
                },
                Some(exit) = exit, if has_compute => self.on_compute_exit(exit).await,
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    fn set_state(&self, state: ClusterState) {
        metrics::gauge!("pgtide_cluster_state", "cluster" => self.name().to_string())
            .set(state.gauge());
        self.state.send_replace(state);
    }

    fn is_running(&self) -> bool {
        matches!(*self.state.borrow(), ClusterState::Running(_))
    }

    fn initial_size(&self) -> ComputeSize {
        let config = &self.shared.config;
        let step = self.shared.capacity.step_acu;
        let acu = acu::clamp_running(config.min_acu, config.min_acu, config.max_acu, step);
        ComputeSize::of(acu, &self.shared.capacity)
    }

    async fn resume(&mut self, requested_by: &str) {
        if self.compute.is_some() && self.is_running() {
            return; // an earlier resume already did it
        }
        let started = Instant::now();
        self.set_state(ClusterState::Resuming);
        match self.start_compute().await {
            Ok(endpoint) => {
                let elapsed = started.elapsed();
                let ms = elapsed.as_secs_f64() * 1000.0;
                metrics::counter!("pgtide_cluster_resumes_total", "cluster" => self.name().to_string()).increment(1);
                metrics::histogram!("pgtide_cluster_resume_seconds", "cluster" => self.name().to_string())
                    .record(elapsed.as_secs_f64());
                let slot = match &self.compute {
                    Some(compute) if compute.warm_started() => "a warm slot",
                    _ => "a cold start",
                };
                self.shared.events.record(
                    "resumed",
                    format!("resumed for {requested_by} in {ms:.0} ms from {slot}"),
                );
                self.now_running(endpoint).await;
            }
            Err(e) => {
                let reason = format!("{e:#}");
                self.shared
                    .events
                    .record("resume_failed", format!("resume failed: {reason}"));
                metrics::counter!("pgtide_cluster_resume_failures_total", "cluster" => self.name().to_string())
                    .increment(1);
                self.set_state(ClusterState::Failed(reason));
            }
        }
    }

    /// Starts the compute; returns once it accepts the cluster's users. What can wait (sizing
    /// settings) is done by [`Self::now_running`], after waiting clients are let in.
    async fn start_compute(&mut self) -> anyhow::Result<ComputeEndpoint> {
        let size = self.initial_size();
        let mut postmaster_settings =
            acu::postmaster_settings(self.shared.config.max_acu, &self.shared.capacity);
        // Before anyone decides that the data directory is gone: a runtime may still hold it
        // (a docker slot whose release failed).
        self.runtime.reclaim(&self.cluster_dir).await?;
        if let Some(storage) = &mut self.storage {
            postmaster_settings.extend(ClusterStorage::postmaster_settings());
            // A base backup of the previous compute ends here.
            if let Some(finished) = storage.end_backup().await {
                record_backup(&self.shared, finished);
            }
            let pgdata = crate::runtime::pgdata_of(&self.cluster_dir);
            if !pgdata.exists() && storage.has_backup() {
                // The compute is disposable: its data directory comes back from the copies.
                let started = Instant::now();
                let how = storage
                    .rebuild(&pgdata)
                    .await
                    .context("rebuilding from the copies")?;
                self.shared.events.record(
                    "rebuilt",
                    format!("{how} in {} ms", started.elapsed().as_millis()),
                );
            }
        }
        let spec = ComputeSpec {
            cluster: self.name().to_string(),
            cluster_dir: self.cluster_dir.clone(),
            postmaster_settings,
            size,
        };
        let mut compute = self.runtime.start(&spec).await?;
        let endpoint = compute.endpoint().clone();
        if let Some(storage) = &mut self.storage {
            // Commits wait for the copies from here on: the receiver must stream first.
            if let Err(e) = storage.start_receiver(endpoint.clone()).await {
                let _ = compute.stop().await;
                return Err(e);
            }
        }
        if !self.users_synced {
            // Once per pgtide run: the config's users must exist in the compute before their
            // sessions start there, and the compute's own roles become known for logins.
            let setup = async {
                let client = endpoint.admin_connect().await?;
                roles::sync_config_users(&client, &self.shared.config.users).await?;
                let compute_roles = roles::read_compute_roles(&client).await?;
                self.shared
                    .roles
                    .lock()
                    .expect("roles lock")
                    .replace_compute_roles(compute_roles);
                anyhow::Ok(())
            };
            if let Err(e) = setup.await {
                let _ = compute.stop().await;
                return Err(e.context("creating the configured users"));
            }
            self.users_synced = true;
        }
        self.compute = Some(compute);
        Ok(endpoint)
    }

    /// Lets clients in, then applies the size (settings reload live, so sessions that started a
    /// moment earlier simply pick them up).
    async fn now_running(&mut self, endpoint: ComputeEndpoint) {
        self.shared.counters.touch();
        self.scaler.reset();
        self.last_notice = None;
        // The compute started at this size (its memory limit, and no CPU limit while it
        // started); the CPU limit and the settings follow right after clients are let in.
        let size = self.initial_size();
        self.acu = size.acu;
        {
            let mut status = self.shared.status.lock().expect("status lock");
            status.since = now_rfc3339();
            status.acu = size.acu;
            status.acu_target = size.acu;
        }
        metrics::gauge!("pgtide_cluster_acu", "cluster" => self.name().to_string()).set(size.acu);
        self.set_state(ClusterState::Running(endpoint));
        self.apply(size.acu).await;
    }

    /// Applies a size to the running compute; returns whether it took.
    async fn apply(&mut self, acu: f64) -> bool {
        let size = ComputeSize::of(acu, &self.shared.capacity);
        let Some(compute) = self.compute.as_mut() else {
            return false;
        };
        let name = self.shared.config.name.clone();
        match compute.apply_size(size).await {
            Ok(limits) => {
                self.acu = acu;
                metrics::gauge!("pgtide_cluster_acu", "cluster" => name.clone()).set(acu);
                metrics::gauge!("pgtide_cluster_acu_target", "cluster" => name.clone()).set(acu);
                metrics::gauge!("pgtide_cluster_cpu_limit_cores", "cluster" => name.clone())
                    .set(limits.cpu_cores);
                metrics::gauge!("pgtide_cluster_memory_limit_bytes", "cluster" => name)
                    .set(limits.memory_mib as f64 * 1048576.0);
                let mut status = self.shared.status.lock().expect("status lock");
                status.acu = acu;
                status.acu_target = acu;
                status.limits = Some(limits);
                true
            }
            Err(e) => {
                self.shared
                    .events
                    .record("resize_failed", format!("applying {acu} ACU failed: {e:#}"));
                false
            }
        }
    }

    /// One scaler tick: measure, decide, apply.
    async fn scale(&mut self, now: Instant) {
        let Some(compute) = self.compute.as_mut() else {
            return;
        };
        let usage = match compute.usage().await {
            Ok(usage) => usage,
            Err(e) => {
                tracing::debug!(cluster = %self.name(), error = %e, "no usage sample this tick");
                return;
            }
        };
        let active = self.shared.counters.active.load(Ordering::Relaxed);
        let waiting = self.shared.counters.waiting.load(Ordering::Relaxed);
        let Some(sample) = self.scaler.sample(usage, active, waiting, now) else {
            return;
        };
        let name = self.shared.config.name.clone();
        metrics::gauge!("pgtide_cluster_cpu_used_cores", "cluster" => name.clone())
            .set(sample.cpu_cores);
        metrics::gauge!("pgtide_cluster_memory_used_bytes", "cluster" => name.clone())
            .set(sample.memory_working_set_mib * 1048576.0);
        {
            let mut status = self.shared.status.lock().expect("status lock");
            status.cpu_used_cores = sample.cpu_cores;
            status.memory_used_mib = sample.memory_working_set_mib;
        }
        let from = self.acu;
        let (to, direction, reason) = match self.scaler.decide(&sample, from, now) {
            Decision::Hold => {
                self.last_notice = None;
                return;
            }
            Decision::Up { to, reason } => (to, "up", reason),
            Decision::Down { to, reason } => (to, "down", reason),
            Decision::DownRefused { reason } => {
                return self.notice("down_refused", format!("down refused: {reason}"));
            }
            Decision::AtMax { reason } => {
                return self.notice("at_max", format!("up refused: {reason}"))
            }
        };
        self.last_notice = None;
        self.shared.status.lock().expect("status lock").acu_target = to;
        if self.apply(to).await {
            let signal = if reason.contains("CPU") {
                "cpu"
            } else if reason.contains("memory") {
                "memory"
            } else {
                "queue"
            };
            metrics::counter!("pgtide_cluster_scaling_events_total", "cluster" => name, "direction" => direction, "reason" => signal)
                .increment(1);
            self.shared.events.record(
                &format!("scaled_{direction}"),
                format!("{direction} {from} → {to} ACU: {reason}"),
            );
        }
    }

    /// Repairs returning copies, publishes the storage status and takes a base backup when one
    /// is due (the first one right after the cluster is created).
    async fn tend_storage(&mut self) {
        let Some(storage) = &mut self.storage else {
            return;
        };
        storage.check_copies().await;
        let running = match &*self.state.borrow() {
            ClusterState::Running(endpoint) => Some(endpoint.clone()),
            _ => None,
        };
        // A backup that finished while the cluster paused counts too.
        let finished = match running {
            Some(endpoint) => storage.maybe_base_backup(&endpoint).await.transpose(),
            None => storage.collect_backup().await,
        };
        if let Some(finished) = finished {
            record_backup(&self.shared, finished);
        }
        *self
            .shared
            .storage_status
            .lock()
            .expect("storage status lock") = Some(storage.status());
    }

    /// One point a second for the dashboard.
    fn record_history(&mut self, elapsed: Duration) {
        let transactions = self.shared.counters.transactions.load(Ordering::Relaxed);
        let tps = transactions.saturating_sub(self.last_transactions) as f64
            / elapsed.as_secs_f64().max(0.001);
        self.last_transactions = transactions;
        let status = self.shared.status.lock().expect("status lock").clone();
        let limits = status.limits.as_ref();
        self.shared.history.push(HistoryPoint {
            t: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            state: self.state.borrow().name(),
            acu: status.acu,
            acu_target: status.acu_target,
            cpu_used: status.cpu_used_cores,
            cpu_limit: limits.map(|l| l.cpu_cores).unwrap_or(0.0),
            memory_used_mib: status.memory_used_mib,
            memory_limit_mib: limits.map(|l| l.memory_mib as f64).unwrap_or(0.0),
            clients: self.shared.counters.clients.load(Ordering::Relaxed) as u32,
            tps,
        });
    }

    /// Records a refusal once for as long as it lasts.
    fn notice(&mut self, kind: &str, message: String) {
        if self.last_notice.as_deref() != Some(kind) {
            self.last_notice = Some(kind.to_string());
            metrics::counter!("pgtide_cluster_scaling_events_total", "cluster" => self.name().to_string(), "direction" => kind.to_string(), "reason" => "refused")
                .increment(1);
            self.shared.events.record(kind, message);
        }
    }

    async fn stop_compute(&mut self) {
        self.acu = 0.0;
        if let Some(mut compute) = self.compute.take() {
            if let Err(e) = compute.stop().await {
                tracing::warn!(cluster = %self.name(), error = %e, "stopping the compute failed");
            }
        }
        if let Some(storage) = &mut self.storage {
            // The receiver ends once it has everything up to the shutdown checkpoint.
            storage.stop_receiver().await;
        }
        self.no_compute_status();
    }

    /// No compute runs (stopped, or exited on its own): 0 ACU and no limits in `/status`, until
    /// the next one is running.
    fn no_compute_status(&self) {
        metrics::gauge!("pgtide_cluster_acu", "cluster" => self.name().to_string()).set(0.0);
        let mut status = self.shared.status.lock().expect("status lock");
        status.acu = 0.0;
        status.acu_target = 0.0;
        status.cpu_used_cores = 0.0;
        status.memory_used_mib = 0.0;
        status.limits = None;
        status.since = now_rfc3339();
    }

    async fn pause(&mut self, reason: String) {
        self.set_state(ClusterState::Pausing);
        self.stop_compute().await;
        metrics::counter!("pgtide_cluster_pauses_total", "cluster" => self.name().to_string())
            .increment(1);
        self.shared.events.record("paused", reason);
        self.set_state(ClusterState::Paused);
    }

    async fn pause_on_request(&mut self) -> Result<String, String> {
        let busy = self.busy_clients();
        if busy > 0 {
            let what = match self.shared.config.pool_mode {
                PoolMode::Session => "connected client",
                PoolMode::Transaction => "client in a transaction",
            };
            return Err(format!(
                "cluster \"{}\" has {busy} {what}{}; pause refused",
                self.name(),
                if busy == 1 { "" } else { "s" }
            ));
        }
        match &*self.state.borrow() {
            ClusterState::Paused => {
                return Ok(format!("cluster \"{}\" is already paused", self.name()))
            }
            ClusterState::Failed(_) => {}
            _ => {}
        }
        self.pause("paused on request".to_string()).await;
        Ok(format!("cluster \"{}\" paused", self.name()))
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last_tick);
        self.metering.add(self.acu, elapsed);
        self.last_tick = now;
        let acu_seconds = self.metering.acu_seconds();
        {
            let mut status = self.shared.status.lock().expect("status lock");
            status.acu_seconds = acu_seconds;
            status.acu_hours_today = self.metering.saved.day_acu_seconds / 3600.0;
            status.acu_hours_month = self.metering.saved.month_acu_seconds / 3600.0;
        }
        metrics::gauge!("pgtide_cluster_acu_seconds_total", "cluster" => self.name().to_string())
            .set(acu_seconds);
        if self.is_running() {
            self.scale(now).await;
        }
        self.record_history(elapsed);
        self.tend_storage().await;
        let config = &self.shared.config;
        let counters = &self.shared.counters;
        if self.is_running()
            && config.min_acu == 0.0
            && self.busy_clients() == 0
            && counters.idle_for() >= config.auto_pause_after
        {
            let idle = counters.idle_for().as_secs();
            self.pause(format!("paused after {idle} s idle")).await;
        }
    }

    /// Clients that keep the cluster from pausing: in session mode every connected client; in
    /// transaction mode only those in a transaction (idle connections cost nothing there).
    fn busy_clients(&self) -> usize {
        let counters = &self.shared.counters;
        match self.shared.config.pool_mode {
            PoolMode::Session => counters.clients.load(Ordering::Relaxed),
            PoolMode::Transaction => {
                counters.active.load(Ordering::Relaxed) + counters.waiting.load(Ordering::Relaxed)
            }
        }
    }

    async fn on_compute_exit(&mut self, exit: ExitInfo) {
        self.compute = None;
        self.acu = 0.0;
        self.no_compute_status();
        let started = Instant::now();
        let description = format!("compute {}, restarting", exit.description);
        tracing::warn!(cluster = %self.name(), "{description}");
        self.shared.events.record("compute_exited", description);
        metrics::counter!("pgtide_cluster_compute_exits_total", "cluster" => self.name().to_string()).increment(1);
        self.set_state(ClusterState::Resuming);
        // Postgres's crash recovery brings back everything acknowledged. Clients arriving
        // meanwhile wait as for any resume; only when every attempt failed is the cluster Failed.
        let mut last_error = None;
        for attempt in 0..10u64 {
            match self.start_compute().await {
                Ok(endpoint) => {
                    let ms = started.elapsed().as_millis();
                    self.shared.events.record(
                        "restarted",
                        format!("compute restarted after a crash in {ms} ms"),
                    );
                    self.now_running(endpoint).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(cluster = %self.name(), attempt, error = %format!("{e:#}"), "restart failed");
                    last_error = Some(e);
                    tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                }
            }
        }
        let reason = format!("{:#}", last_error.expect("at least one attempt"));
        self.shared.events.record(
            "resume_failed",
            format!("restart after a crash failed: {reason}"),
        );
        self.set_state(ClusterState::Failed(reason));
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The outcome of a base backup: an event when it is stored, a warning when it failed.
fn record_backup(shared: &Shared, finished: anyhow::Result<crate::storage::wal::Lsn>) {
    match finished {
        Ok(start) => shared.events.record(
            "base_backup",
            format!("base backup taken at {start} into the copies"),
        ),
        Err(e) => {
            tracing::warn!(cluster = %shared.config.name, error = %format!("{e:#}"), "base backup failed")
        }
    }
}
