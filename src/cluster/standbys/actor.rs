//! One standby's task: the owner of its compute, as the cluster's task is the writer's.
//!
//! It takes [`StandbyCommand`]s from the cluster's task and never blocks it: `Run` (build the
//! data directory from the copies if there is none, start a hot standby on it, point it at the
//! writer through its relay), `Stop` (clean stop, for a pause or a shutdown) and `Promote`
//! (stop it and lay the copies' WAL into it, so that the cluster's start job can make it the
//! writer). Every second while it runs it samples its lag and usage, scales itself between the
//! cluster's min and max ACU by its own load, and publishes whether it is in the reader
//! endpoint's rotation. A standby that exits on its own is started again while it is wanted.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, oneshot, watch};

use super::lag::{self, CachedClient};
use super::readers::ReaderSet;
use super::relay::{ReplicationRelay, RELAY_PORT};
use super::{StandbyState, StandbyStatus};
use crate::acu::{self, ComputeSize};
use crate::cluster::events::EventKind;
use crate::cluster::Shared;
use crate::runtime::{Compute, ComputeSpec, Runtime};
use crate::scaler::policy::{Decision, PolicyConfig};
use crate::scaler::Scaler;
use crate::storage::takeover::Filled;
use crate::storage::CopiesReader;

/// The file that makes Postgres start as a standby.
pub const STANDBY_SIGNAL: &str = "standby.signal";
/// A standby that failed to start is tried again after this long, while wanted.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// A standby that has not streamed this long while a writer ran is built again from the copies.
const REBUILD_AFTER: Duration = Duration::from_secs(120);
/// A standby further behind than this cannot take over: its gap is too long to lay in.
pub const PROMOTABLE_LAG_BYTES: u64 = 256 * 1024 * 1024;

pub(crate) enum StandbyCommand {
    Run,
    Stop(oneshot::Sender<()>),
    /// Stop and hand the data directory over. `planned`: the writer stopped cleanly (stop the
    /// standby cleanly too: no replay at the start). A request picked up after `deadline` is
    /// refused untouched (whoever asked has given up on it).
    Promote {
        planned: bool,
        deadline: Instant,
        reply: oneshot::Sender<anyhow::Result<Promoted>>,
    },
}

/// A standby stopped for the takeover, with the copies' WAL laid in.
#[derive(Debug)]
pub(crate) struct Promoted {
    pub pgdata: PathBuf,
    pub filled: Filled,
    pub stopped_in: Duration,
    pub filled_in: Duration,
}

/// What a standby needs for its whole life.
pub(crate) struct StandbyInput {
    pub zone: String,
    /// `<cluster_dir>/standbys/<zone>`: its `pgdata`, log and socket live here.
    pub dir: PathBuf,
    pub shared: Arc<Shared>,
    pub runtime: Arc<dyn Runtime>,
    pub copies: CopiesReader,
    pub writer: watch::Receiver<Option<crate::runtime::ComputeEndpoint>>,
    pub postmaster_settings: Vec<(&'static str, String)>,
    pub readers: Arc<ReaderSet>,
    pub status: Arc<Mutex<StandbyStatus>>,
}

struct RunningStandby {
    compute: Box<dyn Compute>,
    /// A restartpoint was made since it first streamed.
    restartpoint_made: bool,
    /// Since when it has not streamed while a writer ran.
    not_streaming_since: Option<Instant>,
    _relay: ReplicationRelay,
    acu: f64,
    scaler: Scaler,
    writer_client: CachedClient,
}

/// A standby in the machine budget: it holds its ACUs beside its cluster's writer, and is
/// never paused to make room (it has the writer's clients behind it).
pub(crate) struct StandbyTenant {
    pub min_acu: f64,
}

impl crate::capacity::Tenant for StandbyTenant {
    fn standing(&self) -> Option<crate::capacity::Standing> {
        Some(crate::capacity::Standing {
            min_acu: self.min_acu,
            idle_for: Duration::ZERO,
            busy: true,
            pausing: false,
        })
    }

    fn reclaim(&self, _for_cluster: &str) {}
}

/// The standby's name in the machine budget.
pub(crate) fn budget_name(cluster: &str, zone: &str) -> String {
    format!("{cluster}@{zone}")
}

pub(crate) async fn run(input: StandbyInput, mut commands: mpsc::Receiver<StandbyCommand>) {
    let mut standby = Standby {
        input,
        running: None,
        wanted: false,
        retry_at: None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(StandbyCommand::Run) => {
                    standby.wanted = true;
                    if standby.running.is_none() {
                        standby.start().await;
                    }
                }
                Some(StandbyCommand::Stop(reply)) => {
                    standby.wanted = false;
                    standby.stop().await;
                    let _ = reply.send(());
                }
                Some(StandbyCommand::Promote { planned, deadline, reply }) => {
                    let result = if Instant::now() > deadline {
                        Err(anyhow::anyhow!("the takeover was given up before this standby could stop"))
                    } else {
                        standby.wanted = false;
                        standby.promote(planned).await
                    };
                    let _ = reply.send(result);
                }
                None => {
                    // The cluster is gone: nothing may be left running.
                    standby.stop().await;
                    standby.input.shared.budget.leave(&standby.budget_name());
                    return;
                }
            },
            exit = exited(&standby.running) => standby.on_exit(exit),
            _ = tick.tick() => standby.on_tick().await,
        }
    }
}

/// Resolves when the running standby's compute exits; never without one.
async fn exited(running: &Option<RunningStandby>) -> String {
    let Some(running) = running else {
        return std::future::pending().await;
    };
    let mut exited = running.compute.exited();
    let exit = exited
        .wait_for(|e| e.is_some())
        .await
        .map(|exit| exit.as_ref().expect("waited for Some").description.clone());
    match exit {
        Ok(description) => description,
        Err(_) => std::future::pending().await,
    }
}

struct Standby {
    input: StandbyInput,
    running: Option<RunningStandby>,
    wanted: bool,
    retry_at: Option<Instant>,
}

impl Standby {
    fn zone(&self) -> &str {
        &self.input.zone
    }

    fn budget_name(&self) -> String {
        budget_name(&self.input.shared.config.name, &self.input.zone)
    }

    /// Holds `acu` in the machine budget (0: nothing).
    fn hold(&self, acu: f64) {
        self.input.shared.budget.hold(&self.budget_name(), acu);
    }

    fn event(&self, kind: EventKind, text: String) {
        self.input
            .shared
            .events
            .record(kind, format!("standby in zone {}: {text}", self.zone()));
    }

    fn set_status(&self, edit: impl FnOnce(&mut StandbyStatus)) {
        edit(&mut self.input.status.lock().expect("standby status lock"));
    }

    fn initial_size(&self) -> ComputeSize {
        let config = &self.input.shared.config;
        let step = self.input.shared.capacity.step_acu;
        let acu = acu::clamp_running(config.min_acu, config.min_acu, config.max_acu, step);
        ComputeSize::of(acu, &self.input.shared.capacity)
    }

    async fn start(&mut self) {
        let started = Instant::now();
        let need = self.initial_size().acu;
        match self.input.shared.budget.admit(&self.budget_name(), need) {
            crate::capacity::Admission::Fits => {}
            crate::capacity::Admission::Pause { victim } => {
                return self.wait_for_budget(format!(
                    "cluster \"{victim}\" is asked to pause to make room"
                ));
            }
            crate::capacity::Admission::Wait(why) => {
                return self.wait_for_budget(why.as_str().to_string())
            }
        }
        match self.try_start().await {
            Ok(running) => {
                self.retry_at = None;
                let acu = running.acu;
                self.running = Some(running);
                let endpoint = self.running.as_ref().map(|r| r.compute.endpoint().clone());
                self.set_status(|s| {
                    s.state = StandbyState::CatchingUp;
                    s.acu = acu;
                    s.reason = None;
                    s.endpoint = endpoint;
                });
                self.event(
                    EventKind::StandbyStarted,
                    format!("started in {} ms", started.elapsed().as_millis()),
                );
            }
            Err(e) => {
                self.hold(0.0);
                let reason = format!("{e:#}");
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
                self.set_status(|s| {
                    s.state = StandbyState::Failed;
                    s.reason = Some(reason.clone());
                });
                self.event(
                    EventKind::StandbyFailed,
                    format!("could not start: {reason}"),
                );
            }
        }
    }

    /// No room in `max_total_acu` for the standby now: it waits (and says why), and tries
    /// again in a moment.
    fn wait_for_budget(&mut self, why: String) {
        self.retry_at = Some(Instant::now() + Duration::from_secs(2));
        let max = self.input.shared.budget.max_total_acu();
        self.set_status(|s| {
            s.state = StandbyState::Stopped;
            s.reason = Some(format!("waiting for room in max_total_acu = {max}: {why}"));
        });
    }

    async fn try_start(&mut self) -> anyhow::Result<RunningStandby> {
        let input = &self.input;
        std::fs::create_dir_all(&input.dir)
            .with_context(|| format!("creating {}", input.dir.display()))?;
        input.runtime.reclaim(&input.dir).await?;
        let pgdata = crate::runtime::pgdata_of(&input.dir);
        let usable = crate::cluster::restart::data_directory_present(&pgdata)
            && pgdata.join(STANDBY_SIGNAL).exists();
        if pgdata.exists() && !usable {
            // Half built, or half promoted: never started as a standby; built again.
            std::fs::remove_dir_all(&pgdata)
                .with_context(|| format!("removing {}", pgdata.display()))?;
        }
        if !pgdata.exists() {
            self.set_status(|s| s.state = StandbyState::Creating);
            let built = input
                .copies
                .rebuild(&pgdata)
                .await
                .context("building the standby from the copies")?;
            crate::files::write_private(&pgdata.join(STANDBY_SIGNAL), b"")?;
            self.event(EventKind::StandbyCreated, built);
        }
        self.set_status(|s| s.state = StandbyState::Starting);
        let size = self.initial_size();
        let spec = ComputeSpec {
            cluster: input.shared.config.name.clone(),
            cluster_dir: input.dir.clone(),
            postmaster_settings: input.postmaster_settings.clone(),
            size,
        };
        let mut compute = input.runtime.start(&spec).await?;
        let follow = async {
            let relay =
                ReplicationRelay::start(&compute.endpoint().socket_dir, input.writer.clone())
                    .context("serving the standby's relay socket")?;
            let conninfo = format!(
                "host={} port={RELAY_PORT} user={} application_name={}",
                compute.socket_dir_in_compute().display(),
                crate::runtime::BOOTSTRAP_SUPERUSER,
                lag::application_name(&input.zone)
            );
            let client = compute.endpoint().admin_connect().await?;
            client
                .batch_execute(&format!("ALTER SYSTEM SET primary_conninfo = '{conninfo}'"))
                .await
                .context("setting primary_conninfo")?;
            client.batch_execute("SELECT pg_reload_conf()").await?;
            compute.apply_size(size).await?;
            anyhow::Ok(relay)
        };
        match follow.await {
            Ok(relay) => Ok(RunningStandby {
                compute,
                restartpoint_made: false,
                not_streaming_since: Some(Instant::now()),
                _relay: relay,
                acu: size.acu,
                scaler: Scaler::new(PolicyConfig {
                    min_acu: input.shared.config.min_acu,
                    max_acu: input.shared.config.max_acu,
                    step_acu: input.shared.capacity.step_acu,
                    cpu_per_acu: input.shared.capacity.cpu_per_acu,
                    memory_mib_per_acu: input.shared.capacity.memory_mib_per_acu as f64,
                    scale_down_after: input.shared.config.scale_down_after,
                }),
                writer_client: CachedClient::default(),
            }),
            Err(e) => {
                compute.kill().await;
                Err(e)
            }
        }
    }

    async fn stop(&mut self) {
        self.out_of_rotation();
        if let Some(mut running) = self.running.take() {
            if let Err(e) = running.compute.stop().await {
                tracing::warn!(zone = %self.zone(), error = %e, "stopping a standby failed");
            }
            self.event(EventKind::StandbyStopped, "stopped".to_string());
        }
        self.hold(0.0);
        self.set_status(|s| {
            s.state = StandbyState::Stopped;
            s.acu = 0.0;
            s.lag_bytes = None;
            s.lag_seconds = None;
            s.last_in_sync = None;
            s.endpoint = None;
        });
    }

    fn out_of_rotation(&self) {
        self.input.readers.publish(self.zone(), None);
        self.set_status(|s| s.in_rotation = false);
    }

    fn on_exit(&mut self, description: String) {
        self.out_of_rotation();
        self.running = None;
        self.hold(0.0);
        self.set_status(|s| {
            s.state = StandbyState::Failed;
            s.acu = 0.0;
            s.reason = Some(format!("its compute {description}"));
            s.last_in_sync = None;
            s.endpoint = None;
        });
        self.event(
            EventKind::StandbyLost,
            format!("its compute {description}; starting it again"),
        );
        self.retry_at = Some(Instant::now() + Duration::from_secs(1));
    }

    async fn on_tick(&mut self) {
        if self.running.is_none() {
            if self.wanted && self.retry_at.is_some_and(|at| Instant::now() >= at) {
                self.start().await;
            }
            return;
        }
        self.sample().await;
        let stuck = self
            .running
            .as_ref()
            .and_then(|running| running.not_streaming_since)
            .is_some_and(|since| since.elapsed() >= REBUILD_AFTER);
        if stuck {
            self.rebuild().await;
        }
    }

    /// The copies are the fallback of a standby that cannot stream (the writer no longer holds
    /// the WAL it needs, or its data went bad): it is built again from them.
    async fn rebuild(&mut self) {
        self.event(
            EventKind::StandbyFailed,
            format!(
                "not streaming from the writer for {} s: building it again from the copies",
                REBUILD_AFTER.as_secs()
            ),
        );
        self.out_of_rotation();
        if let Some(mut running) = self.running.take() {
            running.compute.kill().await;
        }
        self.hold(0.0);
        let _ = self.input.runtime.reclaim(&self.input.dir).await;
        let pgdata = crate::runtime::pgdata_of(&self.input.dir);
        if let Err(e) = std::fs::remove_dir_all(&pgdata) {
            tracing::warn!(path = %pgdata.display(), error = %e, "could not remove a stuck standby's data directory");
        }
        self.start().await;
    }

    /// Lag, rotation, usage and scaling; each step bounded so that commands are served.
    async fn sample(&mut self) {
        let zone = self.input.zone.clone();
        let max_lag = self.input.shared.config.max_reader_lag;
        let writer = self.input.writer.borrow().clone();
        let Some(running) = &mut self.running else {
            return;
        };
        let lag = match &writer {
            Some(writer) => match running.writer_client.get(writer).await {
                Some(client) => {
                    let query = lag::from_writer(client, &zone);
                    match tokio::time::timeout(Duration::from_secs(2), query).await {
                        Ok(Ok(lag)) => lag,
                        _ => {
                            running.writer_client.forget();
                            None
                        }
                    }
                }
                None => None,
            },
            None => None,
        };
        if lag.is_some() && !running.restartpoint_made {
            // A new standby's last restartpoint is its base backup's start: one now, at the
            // writer's latest checkpoint, so that a takeover soon after replays from there.
            running.restartpoint_made = true;
            let endpoint = running.compute.endpoint().clone();
            tokio::spawn(async move {
                if let Ok(client) = endpoint.admin_connect().await {
                    let checkpoint = client.batch_execute("CHECKPOINT");
                    let _ = tokio::time::timeout(Duration::from_secs(60), checkpoint).await;
                }
            });
        }
        match (&lag, &writer) {
            (Some(_), _) | (None, None) => running.not_streaming_since = None,
            (None, Some(_)) => {
                running.not_streaming_since.get_or_insert_with(Instant::now);
            }
        }
        let in_rotation = lag.is_some_and(|lag| lag.seconds <= max_lag.as_secs_f64());
        let endpoint = running.compute.endpoint().clone();
        self.input
            .readers
            .publish(&zone, in_rotation.then_some(endpoint));
        let sessions = self.input.readers.sessions(&zone);
        let usage = tokio::time::timeout(Duration::from_secs(2), running.compute.usage()).await;
        let mut resize = None;
        if let Ok(Ok(usage)) = usage {
            if let Some(sample) = running.scaler.sample(usage, sessions, 0, Instant::now()) {
                let decision = running.scaler.decide(&sample, running.acu, Instant::now());
                if let Decision::Up { to, reason, .. } | Decision::Down { to, reason, .. } =
                    decision
                {
                    resize = Some((to, reason));
                }
                self.input
                    .status
                    .lock()
                    .expect("standby status lock")
                    .cpu_used_cores = sample.cpu_cores;
            }
        }
        let budget = self.input.shared.budget.clone();
        let member = budget_name(&self.input.shared.config.name, &zone);
        let resize = resize.and_then(|(to, reason)| {
            if to <= running.acu {
                return Some((to, reason));
            }
            match budget.grow(&member, running.acu, to) {
                crate::capacity::Growth::Full => Some((to, reason)),
                crate::capacity::Growth::Capped { to: capped, .. } => {
                    Some((capped, format!("{reason}; capped by the machine budget")))
                }
                crate::capacity::Growth::Refused { .. } => None,
            }
        });
        if let Some((to, reason)) = resize {
            let size = ComputeSize::of(to, &self.input.shared.capacity);
            let applied =
                tokio::time::timeout(Duration::from_secs(10), running.compute.apply_size(size))
                    .await;
            if let Ok(Ok(_)) = applied {
                let from = running.acu;
                running.acu = to;
                budget.hold(&member, to);
                self.event(
                    EventKind::StandbyScaled,
                    format!("scaled from {from} to {to} ACU: {reason}"),
                );
            } else {
                // What the budget granted for it goes back.
                budget.hold(&member, running.acu);
            }
        }
        let acu = self.running.as_ref().map(|r| r.acu).unwrap_or(0.0);
        self.set_status(|s| {
            s.state = if lag.is_some() {
                StandbyState::Streaming
            } else {
                StandbyState::CatchingUp
            };
            s.acu = acu;
            s.lag_bytes = lag.map(|lag| lag.bytes);
            s.lag_seconds = lag.map(|lag| lag.seconds);
            if let Some(lag) = lag {
                s.last_in_sync = Some((Instant::now(), lag.bytes));
            }
            s.in_rotation = in_rotation;
            s.sessions = sessions;
        });
    }

    /// Stops the standby for the takeover and lays the copies' WAL into it.
    async fn promote(&mut self, planned: bool) -> anyhow::Result<Promoted> {
        let started = Instant::now();
        self.out_of_rotation();
        let Some(mut running) = self.running.take() else {
            anyhow::bail!("the standby in zone {} is not running", self.zone());
        };
        let endpoint = running.compute.endpoint().clone();
        let received = async {
            let client = endpoint.admin_connect().await?;
            // The writer-to-be follows nobody.
            client
                .batch_execute("ALTER SYSTEM RESET primary_conninfo")
                .await?;
            lag::received_end(&client).await
        };
        let received = match tokio::time::timeout(Duration::from_secs(2), received).await {
            Ok(Ok(received)) => received,
            Ok(Err(e)) => {
                running.compute.kill().await;
                return Err(e.context("asking the standby where its WAL ends"));
            }
            Err(_) => {
                running.compute.kill().await;
                anyhow::bail!("the standby did not say where its WAL ends within 2 s");
            }
        };
        if planned {
            if let Err(e) = running.compute.stop().await {
                tracing::warn!(zone = %self.zone(), error = %e, "a clean stop of the standby failed");
                running.compute.kill().await;
            }
        } else {
            running.compute.kill().await;
        }
        drop(running);
        self.hold(0.0);
        // A runtime may hand the data directory back only at the next reclaim (a container
        // whose removal was already under way): take it back now.
        self.input
            .runtime
            .reclaim(&self.input.dir)
            .await
            .context("taking the standby's data directory back")?;
        let stopped_in = started.elapsed();
        self.set_status(|s| {
            s.state = StandbyState::Stopped;
            s.acu = 0.0;
            s.last_in_sync = None;
            s.endpoint = None;
        });
        let pgdata = crate::runtime::pgdata_of(&self.input.dir);
        let filling = Instant::now();
        let filled = self
            .input
            .copies
            .fill_standby_wal(&pgdata, received)
            .await
            .context("laying the copies' WAL into the standby")?;
        std::fs::remove_file(pgdata.join(STANDBY_SIGNAL))
            .context("removing the standby's standby.signal")?;
        Ok(Promoted {
            pgdata,
            filled,
            stopped_in,
            filled_in: filling.elapsed(),
        })
    }
}
