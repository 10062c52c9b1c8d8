//! The cluster's task: the one owner of its compute and storage.
//!
//! Its state is one enum, [`Phase`]. Only `Running` holds a compute; a start in progress is a
//! [`StartJob`] and a stop in progress a [`StopJob`] (each has the storage on loan); a restart
//! waiting before its next attempt is `Backoff`. The loop in [`ClusterTask::run`] waits for
//! whichever comes first: a command from a handle, what the phase is waiting for (a start's or a
//! stop's outcome, the compute's exit, the end of a backoff), or the 1 s tick (metering, scaling,
//! storage, auto-pause).
//!
//! A paused cluster's task does not tick: there is nothing to scale, store or pause, it meters 0
//! ACU, and its history is one open run ([`History::push_open`](super::history::History::push_open)).
//! It sleeps until a command comes, or until the next UTC day begins (the meter's day and month
//! then roll over). The first tick after a resume meters and records the paused time, so many
//! paused clusters cost no wake-ups. Nothing in the loop waits for a start or a stop, and a resize or a usage
//! sample is bounded by a timeout, so pause, shutdown and status are always served. Pausing and
//! shutting down, and what each command does while a stop runs, are in `pause.rs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::durability::Durability;
use super::events::EventKind;
use super::handle::Command;
use super::history::HistoryPoint;
use super::standbys::{self, StandbyParts, StandbySet};
use super::start::{self, StartInput, StartJob, StartPurpose, StartResult};
use super::state::ClusterState;
use super::stop::{AfterStop, StopJob, StopKind, StopOutcome};
use super::Shared;
use crate::acu::{self, ComputeSize};
use crate::config::PoolMode;
use crate::runtime::{Compute, ComputeEndpoint, ExitInfo, Runtime};
use crate::scaler::policy::PolicyConfig;
use crate::scaler::Scaler;

/// Where the cluster is; the only place that holds its compute.
pub(super) enum Phase {
    Paused,
    Starting(StartJob),
    Running(Running),
    /// A restart after a crash failed; the next attempt starts at `until`.
    Backoff {
        attempt: u32,
        since: Instant,
        until: tokio::time::Instant,
    },
    /// A start that was cancelled by a pause is stopping; then the cluster is paused.
    Cancelling {
        job: StartJob,
        reply: Option<oneshot::Sender<Result<String, String>>>,
    },
    /// The compute is being stopped (or, when it exited, its receiver ended) off the task; what
    /// follows is the job's [`AfterStop`].
    Stopping(StopJob),
    Failed,
    /// pgtide's shutdown is done: the task ends.
    ShutDown,
}

/// A running compute and the size applied to it.
pub(super) struct Running {
    pub compute: Box<dyn Compute>,
    pub endpoint: ComputeEndpoint,
    pub acu: f64,
}

/// What the phase was waiting for, when it came.
enum PhaseEvent {
    /// A start job ended (`None`: it panicked).
    StartEnded(Option<start::StartOutcome>),
    /// A stop job ended (`None`: it panicked).
    StopEnded(Option<StopOutcome>),
    Exited(ExitInfo),
    BackoffOver,
}

pub(super) struct ClusterTask {
    pub(super) shared: Arc<Shared>,
    runtime: Arc<dyn Runtime>,
    cluster_dir: PathBuf,
    state: watch::Sender<ClusterState>,
    commands: mpsc::Receiver<Command>,
    /// Every handle is gone: no command can come any more.
    commands_closed: bool,
    pub(super) phase: Phase,
    /// The storage, when the cluster has copies; lent to a start or stop job while one runs.
    pub(super) storage: Option<Box<dyn Durability>>,
    /// Whether the cluster has copies (its storage may be on loan, or lost with a panic).
    has_copies: bool,
    /// The config's users were created in the compute during this run.
    users_synced: bool,
    /// The data directory was lost (its compute was killed for it) and no start has succeeded
    /// since: the next start moves whatever came back of it aside before it looks, so that it
    /// rebuilds from the copies instead of trusting remains.
    pub(super) data_lost: bool,
    pub(super) scaler: Scaler,
    last_tick: Instant,
    /// The last refusal recorded (so that a refusal that lasts is one event, not one a second).
    pub(super) last_notice: Option<EventKind>,
    /// The transaction counter at the last tick, for transactions per second.
    last_transactions: u64,
    /// The standbys in other zones (none unless the cluster asks for `standbys`).
    pub(super) standbys: StandbySet,
    /// `pgtide failover` waits for the takeover it asked for.
    pub(super) failover_reply: Option<oneshot::Sender<Result<String, String>>>,
    /// How the writer was last lost, for the failover's event.
    pub(super) writer_lost_because: Option<String>,
}

impl ClusterTask {
    pub(super) fn new(
        shared: Arc<Shared>,
        runtime: Arc<dyn Runtime>,
        cluster_dir: PathBuf,
        storage: Option<Box<dyn Durability>>,
        state: watch::Sender<ClusterState>,
        commands: mpsc::Receiver<Command>,
    ) -> ClusterTask {
        let scaler = Scaler::new(PolicyConfig {
            min_acu: shared.config.min_acu,
            max_acu: shared.config.max_acu,
            step_acu: shared.capacity.step_acu,
            cpu_per_acu: shared.capacity.cpu_per_acu,
            memory_mib_per_acu: shared.capacity.memory_mib_per_acu as f64,
            scale_down_after: shared.config.scale_down_after,
        });
        let mut standby_settings =
            acu::postmaster_settings(shared.config.max_acu, &shared.capacity);
        if let Some(storage) = &storage {
            standby_settings.extend(storage.postmaster_settings());
        }
        standby_settings.extend(standbys::standby_settings());
        let standbys = StandbySet::new(
            StandbyParts {
                shared: shared.clone(),
                runtime: runtime.clone(),
                cluster_dir: cluster_dir.clone(),
                copies: storage.as_ref().and_then(|storage| storage.reader()),
                postmaster_settings: standby_settings,
                zones: shared.zones.clone(),
            },
            shared.readers.clone(),
        );
        ClusterTask {
            standbys,
            failover_reply: None,
            writer_lost_because: None,
            has_copies: storage.is_some(),
            shared,
            runtime,
            cluster_dir,
            state,
            commands,
            commands_closed: false,
            phase: Phase::Paused,
            storage,
            users_synced: false,
            data_lost: false,
            scaler,
            last_tick: Instant::now(),
            last_notice: None,
            last_transactions: 0,
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.shared.config.name
    }

    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Asleep until the first command: the history shows it paused meanwhile.
        self.record_paused_history();
        while !matches!(self.phase, Phase::ShutDown) {
            let paused = matches!(self.phase, Phase::Paused);
            tokio::select! {
                command = self.commands.recv(), if !self.commands_closed => match command {
                    Some(Command::Resume { requested_by }) => self.resume(&requested_by),
                    Some(Command::Pause { reply }) => self.pause_on_request(reply),
                    Some(Command::Shutdown { reply }) => self.shutdown(Some(reply)).await,
                    Some(Command::Reclaim { for_cluster }) => self.reclaim(&for_cluster),
                    Some(Command::Failover { to, reply }) => self.failover_on_request(to, reply),
                    None => {
                        self.commands_closed = true;
                        self.shutdown(None).await;
                    }
                },
                event = phase_event(&mut self.phase) => match event {
                    PhaseEvent::StartEnded(outcome) => self.on_start_ended(outcome).await,
                    PhaseEvent::StopEnded(outcome) => self.on_stop_ended(outcome),
                    PhaseEvent::Exited(exit) => self.on_compute_exit(exit),
                    PhaseEvent::BackoffOver => self.retry_restart(),
                },
                _ = tick.tick(), if !paused => self.on_tick().await,
                _ = tokio::time::sleep(until_next_utc_day()), if paused => self.roll_meter(),
            }
        }
        self.shared.budget.leave(self.name());
    }

    pub(super) fn set_state(&self, state: ClusterState) {
        metrics::gauge!("pgtide_cluster_state", "cluster" => self.name().to_string())
            .set(state.gauge());
        if matches!(state, ClusterState::Paused | ClusterState::Failed(_)) {
            self.shared.budget.release(self.name());
        }
        self.state.send_replace(state);
    }

    pub(super) fn initial_size(&self) -> ComputeSize {
        let config = &self.shared.config;
        let step = self.shared.capacity.step_acu;
        let acu = acu::clamp_running(config.min_acu, config.min_acu, config.max_acu, step);
        ComputeSize::of(acu, &self.shared.capacity)
    }

    /// Starts a start job, lending it the storage.
    pub(super) fn begin_start(&mut self, purpose: StartPurpose) {
        let mut postmaster_settings =
            acu::postmaster_settings(self.shared.config.max_acu, &self.shared.capacity);
        if let Some(storage) = &self.storage {
            postmaster_settings.extend(storage.postmaster_settings());
        }
        let input = StartInput {
            shared: self.shared.clone(),
            runtime: self.runtime.clone(),
            cluster_dir: self.cluster_dir.clone(),
            storage: self.storage.take(),
            users_synced: self.users_synced,
            data_lost: self.data_lost,
            size: self.initial_size(),
            postmaster_settings,
            promotion: match &purpose {
                StartPurpose::Failover { zone, planned, .. } => {
                    Some(Box::pin(self.standbys.promote(zone, *planned)))
                }
                _ => None,
            },
            takeover: None,
        };
        let slot = self.slot_outlook();
        let what = match &purpose {
            StartPurpose::Resume { requested_by } => {
                format!("starting a compute for {requested_by} ({slot})")
            }
            StartPurpose::Restart { attempt, .. } => {
                format!("restarting the compute, attempt {} ({slot})", attempt + 1)
            }
            StartPurpose::Failover { zone, planned, .. } => format!(
                "{} failover: the standby in zone {zone} takes over",
                if *planned { "planned" } else { "unplanned" }
            ),
        };
        self.shared.budget.hold(self.name(), input.size.acu);
        self.shared.events.record(EventKind::Starting, what);
        self.phase = Phase::Starting(StartJob::spawn(input, purpose));
        self.set_state(ClusterState::Resuming);
    }

    /// Whether a start can expect a warm slot, as the runtime's pool says now.
    fn slot_outlook(&self) -> &'static str {
        let pool = self.runtime.warm_pool();
        if pool.ready > 0 {
            "a warm slot is ready"
        } else if pool.size == 0 {
            "no warm pool: a cold start"
        } else {
            "no warm slot ready: a cold start"
        }
    }

    pub(super) fn resume(&mut self, requested_by: &str) {
        match &mut self.phase {
            Phase::Paused | Phase::Failed => {}
            Phase::Stopping(job) => {
                // A pause's stop cannot be taken back: the start follows as soon as it is done.
                // (A restart follows a lost compute's stop anyway, and a shutdown ends all.)
                if let AfterStop::Pause { resume_for, .. } = &mut job.then {
                    resume_for.get_or_insert_with(|| requested_by.to_string());
                }
                return;
            }
            // Running already, or a start (or restart) is under way that this client waits for.
            _ => return,
        }
        if self.storage_lost() {
            return;
        }
        self.begin_start(StartPurpose::Resume {
            requested_by: requested_by.to_string(),
        });
    }

    /// A cluster with copies whose storage was lost with a job that panicked cannot start
    /// without it: it turns `Failed` (and says so) instead.
    pub(super) fn storage_lost(&mut self) -> bool {
        if !(self.has_copies && self.storage.is_none()) {
            return false;
        }
        let reason = "the cluster's storage was lost with a failed start or stop; restart pgtide";
        self.phase = Phase::Failed;
        self.set_state(ClusterState::Failed(reason.to_string()));
        true
    }

    /// A start job ended: take the storage back, then run, retry, or fail.
    async fn on_start_ended(&mut self, outcome: Option<start::StartOutcome>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Paused);
        let (job, reply) = match phase {
            Phase::Starting(job) => (job, None),
            Phase::Cancelling { job, reply } => (job, reply),
            other => {
                self.phase = other;
                return;
            }
        };
        let Some(outcome) = outcome else {
            let reason = "the compute's start failed unexpectedly (see the log)".to_string();
            self.shared
                .events
                .record(EventKind::ResumeFailed, reason.clone());
            self.phase = Phase::Failed;
            self.set_state(ClusterState::Failed(reason));
            return;
        };
        self.storage = outcome.storage;
        self.users_synced = outcome.users_synced;
        self.publish_storage_status();
        // A standby's data directory that took the writer's place is the writer's from now on,
        // whatever became of this start (a pause may have cancelled it after the swap).
        let former_zone = self.standbys.writer_zone().to_string();
        if let (Some(Ok(_)), StartPurpose::Failover { zone, .. }) =
            (&outcome.takeover, &job.purpose)
        {
            self.standbys.promoted(zone);
        }
        if let Some(reply) = reply {
            // A pause asked for while starting: whatever the job did, it stops here.
            self.shared.events.record(
                EventKind::StartCancelled,
                "the start was cancelled by a pause".to_string(),
            );
            let reason = "paused on request, during a start".to_string();
            match outcome.result {
                StartResult::Started(compute) => self.begin_stop(
                    compute,
                    StopKind::Clean,
                    AfterStop::Pause {
                        reason,
                        replies: vec![reply],
                        resume_for: None,
                    },
                ),
                StartResult::Cancelled | StartResult::Failed(_) => {
                    self.paused(reason);
                    let _ = reply.send(Ok(format!("cluster \"{}\" paused", self.name())));
                }
            }
            return;
        }
        let takeover = outcome.takeover;
        match outcome.result {
            StartResult::Started(compute) => {
                self.on_started(job, compute, takeover, &former_zone).await
            }
            StartResult::Cancelled => self.paused("the start was cancelled".to_string()),
            StartResult::Failed(error) => self.on_start_failed(job, error),
        }
    }

    /// A compute is up: record how it went, let clients in, then size it.
    async fn on_started(
        &mut self,
        job: StartJob,
        compute: Box<dyn Compute>,
        takeover: Option<Result<start::Takeover, String>>,
        former_zone: &str,
    ) {
        self.data_lost = false;
        let elapsed = job.started_at.elapsed();
        let ms = elapsed.as_millis();
        let name = self.name().to_string();
        match &job.purpose {
            StartPurpose::Resume { requested_by } => {
                metrics::counter!("pgtide_cluster_resumes_total", "cluster" => name.clone())
                    .increment(1);
                metrics::histogram!("pgtide_cluster_resume_seconds", "cluster" => name)
                    .record(elapsed.as_secs_f64());
                let slot = if compute.warm_started() {
                    "a warm slot"
                } else {
                    "a cold start"
                };
                self.shared.events.record(
                    EventKind::Resumed,
                    format!("resumed for {requested_by} in {ms} ms from {slot}"),
                );
            }
            StartPurpose::Restart { since, .. } => {
                self.shared.events.record(
                    EventKind::Restarted,
                    format!(
                        "compute restarted in {} ms after it was lost",
                        since.elapsed().as_millis()
                    ),
                );
            }
            StartPurpose::Failover {
                zone,
                planned,
                since,
                reason,
            } => self.on_failover_done(
                (former_zone, zone),
                *planned,
                *since,
                reason,
                job.started_at,
                takeover,
            ),
        }
        self.now_running(compute).await;
    }

    /// A takeover's start ended with a writer running: the standby's zone is the writer's now
    /// (or, when the takeover failed, the old writer runs again where it was).
    fn on_failover_done(
        &mut self,
        (from, zone): (&str, &str),
        planned: bool,
        since: Instant,
        reason: &str,
        start_began: Instant,
        takeover: Option<Result<start::Takeover, String>>,
    ) {
        let how = if planned { "planned" } else { "unplanned" };
        let total = since.elapsed();
        let answer = match takeover {
            Some(Ok(done)) => {
                let promoted = &done.promoted;
                let started = start_began.elapsed().saturating_sub(done.swapped_in);
                let text = format!(
                    "{how} failover from zone {from} to zone {zone} in {} ms ({reason}): the old \
                     writer stopped in {} ms, the standby in {} ms, {} bytes of WAL laid in from the \
                     copies in {} ms (up to {}), the new writer started in {} ms",
                    total.as_millis(),
                    start_began.duration_since(since).as_millis(),
                    promoted.stopped_in.as_millis(),
                    promoted.filled.bytes(),
                    promoted.filled_in.as_millis(),
                    promoted.filled.end,
                    started.as_millis(),
                );
                self.shared.events.record(EventKind::Failover, text.clone());
                metrics::counter!("pgtide_cluster_failovers_total", "cluster" => self.name().to_string(), "kind" => how)
                    .increment(1);
                metrics::histogram!("pgtide_cluster_failover_seconds", "cluster" => self.name().to_string(), "kind" => how)
                    .record(total.as_secs_f64());
                Ok(text)
            }
            Some(Err(reason)) => Err(format!(
                "the takeover by zone {zone} failed ({reason}); the writer runs again in zone {}",
                self.standbys.writer_zone()
            )),
            None => Err("the takeover did not run".to_string()),
        };
        if let Some(reply) = self.failover_reply.take() {
            let _ = reply.send(answer);
        }
    }

    fn on_start_failed(&mut self, job: StartJob, error: anyhow::Error) {
        let reason = format!("{error:#}");
        if let Some(reply) = self.failover_reply.take() {
            let _ = reply.send(Err(format!("the failover's start failed: {reason}")));
        }
        match job.purpose {
            StartPurpose::Resume { .. } => {
                self.shared
                    .events
                    .record(EventKind::ResumeFailed, format!("resume failed: {reason}"));
                metrics::counter!("pgtide_cluster_resume_failures_total", "cluster" => self.name().to_string())
                    .increment(1);
                self.phase = Phase::Failed;
                self.set_state(ClusterState::Failed(reason));
            }
            StartPurpose::Restart { attempt, since } => {
                self.restart_failed(attempt, since, reason);
            }
            StartPurpose::Failover { since, .. } => self.restart_failed(0, since, reason),
        }
    }

    /// Lets clients in, then applies the size (settings reload live, so sessions that started a
    /// moment earlier simply pick them up).
    async fn now_running(&mut self, compute: Box<dyn Compute>) {
        self.shared.counters.touch();
        self.scaler.reset();
        self.last_notice = None;
        // The compute started at this size (its memory limit, and no CPU limit while it
        // started); the CPU limit and the settings follow right after clients are let in.
        let size = self.initial_size();
        {
            let mut status = self.shared.status.lock().expect("status lock");
            status.since = super::now_rfc3339();
            status.acu = size.acu;
            status.acu_target = size.acu;
        }
        metrics::gauge!("pgtide_cluster_acu", "cluster" => self.name().to_string()).set(size.acu);
        let endpoint = compute.endpoint().clone();
        self.phase = Phase::Running(Running {
            compute,
            endpoint: endpoint.clone(),
            acu: size.acu,
        });
        self.set_state(ClusterState::Running(endpoint.clone()));
        self.standbys.writer_running(endpoint);
        self.publish_zones();
        self.apply(size.acu).await;
    }

    /// The writer's zone and the standbys, for `/status`.
    pub(super) fn publish_zones(&self) {
        *self.shared.zones_status.lock().expect("zones lock") = self.standbys.status();
    }

    /// No compute runs (stopped, or exited on its own): 0 ACU and no limits in `/status`, until
    /// the next one is running.
    pub(super) fn no_compute_status(&self) {
        metrics::gauge!("pgtide_cluster_acu", "cluster" => self.name().to_string()).set(0.0);
        let mut status = self.shared.status.lock().expect("status lock");
        status.acu = 0.0;
        status.acu_target = 0.0;
        status.cpu_used_cores = 0.0;
        status.memory_used_mib = 0.0;
        status.limits = None;
        status.since = super::now_rfc3339();
    }

    async fn on_tick(&mut self) {
        self.shared
            .ticks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("pgtide_cluster_ticks_total", "cluster" => self.name().to_string())
            .increment(1);
        let now = Instant::now();
        let elapsed = now.duration_since(self.last_tick);
        self.last_tick = now;
        self.meter(elapsed);
        if matches!(self.phase, Phase::Running(_)) {
            self.scale(now).await;
            self.check_data_directory();
        }
        self.record_history(elapsed);
        self.publish_zones();
        self.tend_storage().await;
        let config = &self.shared.config;
        let idle = self.shared.counters.idle_for();
        if matches!(self.phase, Phase::Running(_))
            && config.min_acu == 0.0
            && self.busy_clients() == 0
            && idle >= config.auto_pause_after
        {
            self.pause(format!("paused after {} s idle", idle.as_secs()));
        }
    }

    /// A paused cluster's one wake-up a day: the meter's day (and month) roll over.
    fn roll_meter(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last_tick);
        self.last_tick = now;
        self.meter(elapsed);
    }

    fn meter(&mut self, elapsed: Duration) {
        // The standbys' ACUs are billed too, as Aurora bills its readers'.
        let writer = match &self.phase {
            Phase::Running(running) => running.acu,
            _ => 0.0,
        };
        let acu = writer + self.standbys.running_acu();
        let (acu_seconds, today, month) = {
            let mut metering = self.shared.metering.lock().expect("metering lock");
            metering.add(acu, elapsed);
            (
                metering.acu_seconds(),
                metering.acu_hours_today(),
                metering.acu_hours_month(),
            )
        };
        {
            let mut status = self.shared.status.lock().expect("status lock");
            status.acu_seconds = acu_seconds;
            status.acu_hours_today = today;
            status.acu_hours_month = month;
        }
        metrics::gauge!("pgtide_cluster_acu_seconds_total", "cluster" => self.name().to_string())
            .set(acu_seconds);
    }

    /// Repairs returning copies, publishes the storage status and takes a base backup when one
    /// is due.
    async fn tend_storage(&mut self) {
        let running = match &self.phase {
            Phase::Running(running) => Some(running.endpoint.clone()),
            _ => None,
        };
        let Some(storage) = &mut self.storage else {
            return;
        };
        if let Some(finished) = storage.tend(running.as_ref()).await {
            start::record_backup(&self.shared, finished);
        }
        for notice in storage.take_notices() {
            self.shared
                .events
                .record(EventKind::from(&notice), notice.to_string());
        }
        self.publish_storage_status();
    }

    pub(super) fn publish_storage_status(&self) {
        if let Some(storage) = &self.storage {
            *self
                .shared
                .storage_status
                .lock()
                .expect("storage status lock") = Some(storage.status());
        }
    }

    /// One point a second for the dashboard.
    fn record_history(&mut self, elapsed: Duration) {
        let point = self.history_point(elapsed);
        self.shared.history.push(point);
    }

    /// The last point before the task sleeps, paused: it holds until the next tick.
    pub(super) fn record_paused_history(&mut self) {
        let point = self.history_point(self.last_tick.elapsed());
        self.shared.history.push_open(point);
    }

    fn history_point(&mut self, elapsed: Duration) -> HistoryPoint {
        let counters = &self.shared.counters;
        let transactions = counters.transactions();
        let tps = transactions.saturating_sub(self.last_transactions) as f64
            / elapsed.as_secs_f64().max(0.001);
        self.last_transactions = transactions;
        let status = self.shared.status.lock().expect("status lock").clone();
        let limits = status.limits.as_ref();
        HistoryPoint {
            t: super::unix_now(),
            state: self.state.borrow().name(),
            acu: status.acu,
            acu_target: status.acu_target,
            cpu_used: status.cpu_used_cores,
            cpu_limit: limits.map(|l| l.cpu_cores).unwrap_or(0.0),
            memory_used_mib: status.memory_used_mib,
            memory_limit_mib: limits.map(|l| l.memory_mib as f64).unwrap_or(0.0),
            clients: counters.clients() as u32,
            tps,
        }
    }

    /// Clients that keep the cluster from pausing: in session mode every connected client; in
    /// transaction mode only those in a transaction (idle connections cost nothing there).
    pub(super) fn busy_clients(&self) -> usize {
        let counters = &self.shared.counters;
        match self.shared.config.pool_mode {
            PoolMode::Session => counters.clients(),
            PoolMode::Transaction => counters.active() + counters.waiting(),
        }
    }
}

/// How long until the next UTC day begins.
fn until_next_utc_day() -> Duration {
    const DAY: u64 = 24 * 3600;
    Duration::from_secs(DAY - super::unix_now() % DAY)
}

/// Waits for what the phase waits for; never resolves in a phase that waits for nothing.
async fn phase_event(phase: &mut Phase) -> PhaseEvent {
    match phase {
        Phase::Starting(job) | Phase::Cancelling { job, .. } => {
            PhaseEvent::StartEnded(job.finished().await)
        }
        Phase::Stopping(job) => PhaseEvent::StopEnded(job.finished().await),
        Phase::Running(running) => {
            let mut exited = running.compute.exited();
            let exit = exited.wait_for(|e| e.is_some()).await.map(|e| e.clone());
            match exit {
                Ok(exit) => PhaseEvent::Exited(exit.expect("waited for Some")),
                // A compute that stopped reporting without an exit is left to the tick's checks.
                Err(_) => std::future::pending().await,
            }
        }
        Phase::Backoff { until, .. } => {
            tokio::time::sleep_until(*until).await;
            PhaseEvent::BackoffOver
        }
        Phase::Paused | Phase::Failed | Phase::ShutDown => std::future::pending().await,
    }
}

impl ClusterTask {
    pub(super) fn has_copies(&self) -> bool {
        self.has_copies
    }
}
