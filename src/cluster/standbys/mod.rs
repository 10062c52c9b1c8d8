//! Multi-AZ: a cluster's standbys, hot standby computes in zones other than the writer's.
//!
//! The story:
//! - **Placement.** The machine's zones come from `[[zones]]` (or the copies' names). The writer
//!   runs in one (remembered in `<cluster_dir>/writer_zone`, the first zone at first); the
//!   cluster's `standbys` run in the next zones, one each. The writer's data directory is always
//!   `<cluster_dir>/pgdata`; a standby's is `<cluster_dir>/standbys/<zone>/pgdata`.
//! - **Life.** Each standby is a task of its own ([`actor`]) that the cluster's task commands
//!   without waiting: `Run` once the writer runs, `Stop` with a pause or a shutdown (the stop job
//!   waits for them), `Promote` for a takeover. A standby is built from the copies' newest base
//!   backup and WAL (the writer is never asked for a backup), started with `standby.signal`,
//!   and streams from the writer through a relay socket that pgtide serves ([`relay`]).
//! - **Readers.** Every second each standby publishes its lag (the writer's
//!   `pg_stat_replication`) and whether it is in the reader endpoint's rotation
//!   ([`readers::ReaderSet`], which the proxy picks from, least busy first), and scales itself
//!   by its own load.
//! - **Takeover.** When the writer is lost (or on `pgtide failover`), the start job asks the
//!   chosen standby to `Promote`: it stops, the copies' WAL beyond what it received is laid
//!   into its `pg_wal` ([`crate::storage::takeover`]), `standby.signal` goes, and the start job
//!   moves the old writer's data directory aside and this one into its place. Postgres's crash
//!   recovery replays to the end of the WAL on the same timeline, and the copies go on
//!   streaming from the new writer. The zone it came from is now the writer's; the old writer's
//!   zone gets a new standby, built from the copies: the old data directory never runs again.
//! - **One writer.** Only the cluster's task starts a writer, only after the old one is gone
//!   (exited, or stopped by the stop job), and only on `<cluster_dir>/pgdata`; a standby follows
//!   only the compute the task calls the writer. README's "Multi-AZ" says what this rests on.

pub mod actor;
pub mod lag;
pub mod readers;
pub mod relay;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::Shared;
use crate::runtime::{ComputeEndpoint, Runtime};
use crate::storage::CopiesReader;
use actor::{Promoted, StandbyCommand, StandbyInput};
use readers::ReaderSet;

/// Where a standby is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StandbyState {
    /// Not running (the cluster is paused, or the writer is not up yet).
    #[default]
    Stopped,
    /// Its data directory is being built from the copies.
    Creating,
    Starting,
    /// Running, not (yet) streaming from the writer.
    CatchingUp,
    Streaming,
    /// Its start failed or its compute exited; tried again while wanted.
    Failed,
}

/// One standby in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct StandbyStatus {
    pub zone: String,
    pub state: StandbyState,
    pub acu: f64,
    #[serde(default)]
    pub cpu_used_cores: f64,
    /// Bytes of WAL the writer wrote that the standby has not replayed (none while it is not
    /// streaming).
    pub lag_bytes: Option<u64>,
    /// Postgres's `replay_lag`: how long ago the writer wrote what the standby replays now.
    pub lag_seconds: Option<f64>,
    /// Whether the reader endpoint sends new sessions to it.
    pub in_rotation: bool,
    /// Reader endpoint sessions on it now.
    pub sessions: usize,
    pub reason: Option<String>,
    /// When it last streamed from the writer, and how far behind it was then: a takeover
    /// right after the writer died must not depend on a sample taken after its death.
    #[serde(skip)]
    pub last_in_sync: Option<(std::time::Instant, u64)>,
    /// Where pgtide reaches it while it runs.
    #[serde(skip)]
    pub endpoint: Option<ComputeEndpoint>,
}

/// How recently a standby must have streamed in sync to take over. Safe to be generous: what
/// it lacks is laid in from the copies, and a gap they cannot fill fails the takeover, after
/// which the writer restarts where it was.
const IN_SYNC_WITHIN: Duration = Duration::from_secs(30);

impl StandbyStatus {
    /// Whether it can take over now: running, and streaming in sync a moment ago.
    fn promotable(&self) -> Option<u64> {
        let running = matches!(
            self.state,
            StandbyState::Streaming | StandbyState::CatchingUp
        );
        let (at, lag) = self.last_in_sync?;
        (running && at.elapsed() <= IN_SYNC_WITHIN && lag <= actor::PROMOTABLE_LAG_BYTES)
            .then_some(lag)
    }
}

/// The standby a takeover would use among `standbys`: the one in zone `to`, or the one least
/// behind of those streaming in sync; why none can, otherwise. The one rule both the takeover
/// and `pgtide failover`'s preparation follow.
pub(crate) fn choose(standbys: &[StandbyStatus], to: Option<&str>) -> Result<String, String> {
    if standbys.is_empty() {
        return Err("the cluster has no standby".to_string());
    }
    let candidates: Vec<&StandbyStatus> = standbys
        .iter()
        .filter(|standby| to.is_none_or(|zone| standby.zone == zone))
        .collect();
    if candidates.is_empty() {
        let zones: Vec<&str> = standbys.iter().map(|s| s.zone.as_str()).collect();
        return Err(format!(
            "no standby runs in zone {}; the standbys are in {}",
            to.unwrap_or_default(),
            zones.join(", ")
        ));
    }
    candidates
        .iter()
        .filter_map(|status| status.promotable().map(|lag| (lag, status)))
        .min_by_key(|(lag, _)| *lag)
        .map(|(_, status)| status.zone.clone())
        .ok_or_else(|| {
            let states: Vec<String> = candidates
                .iter()
                .map(|s| format!("{} is {:?}", s.zone, s.state).to_lowercase())
                .collect();
            format!("no standby is streaming in sync ({})", states.join(", "))
        })
}

/// The cluster's zones in `/status`: where the writer runs and its standbys.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct ZonesStatus {
    pub writer_zone: String,
    pub zones: Vec<String>,
    pub standbys: Vec<StandbyStatus>,
}

/// A standby's task, from the cluster's side.
struct StandbyHandle {
    zone: String,
    commands: mpsc::Sender<StandbyCommand>,
    status: Arc<Mutex<StandbyStatus>>,
}

/// What a standby's task is made from (everything but its zone).
pub(super) struct StandbyParts {
    pub shared: Arc<Shared>,
    pub runtime: Arc<dyn Runtime>,
    pub cluster_dir: PathBuf,
    pub copies: Option<CopiesReader>,
    pub postmaster_settings: Vec<(&'static str, String)>,
    pub zones: Vec<String>,
}

/// The cluster task's side of its standbys.
pub(super) struct StandbySet {
    parts: StandbyParts,
    writer_zone: String,
    standbys: Vec<StandbyHandle>,
    writer: watch::Sender<Option<ComputeEndpoint>>,
    readers: Arc<ReaderSet>,
}

/// Settings a standby runs with, besides the writer's: it reports its replay position every
/// second (the lag in `/status`), retries a lost connection to the writer soon, and makes a
/// restartpoint at the writer's checkpoints at least every 30 s (a takeover's crash recovery
/// replays from the last one: the default 5 min would make it replay up to 5 min of WAL).
pub(super) fn standby_settings() -> Vec<(&'static str, String)> {
    vec![
        ("hot_standby", "on".to_string()),
        ("wal_receiver_status_interval", "1s".to_string()),
        ("wal_retrieve_retry_interval", "200ms".to_string()),
        ("checkpoint_timeout", "30s".to_string()),
    ]
}

/// How long a takeover waits for the standby to stop and take the copies' WAL.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(20);

impl StandbySet {
    pub(super) fn new(parts: StandbyParts, readers: Arc<ReaderSet>) -> StandbySet {
        let writer_zone = read_writer_zone(&parts.cluster_dir)
            .filter(|zone| parts.zones.contains(zone))
            .unwrap_or_else(|| parts.zones.first().cloned().unwrap_or_default());
        StandbySet {
            parts,
            writer_zone,
            standbys: Vec::new(),
            writer: watch::channel(None).0,
            readers,
        }
    }

    /// The zones the standbys should be in now: the first `standbys` zones that are not the
    /// writer's.
    fn wanted_zones(&self) -> Vec<String> {
        if self.parts.copies.is_none() {
            return Vec::new();
        }
        self.parts
            .zones
            .iter()
            .filter(|zone| **zone != self.writer_zone)
            .take(self.parts.shared.config.standbys)
            .cloned()
            .collect()
    }

    /// The writer runs at `endpoint`: standbys start (or go on) and follow it.
    pub(super) fn writer_running(&mut self, endpoint: ComputeEndpoint) {
        self.writer.send_replace(Some(endpoint));
        let wanted = self.wanted_zones();
        // A standby in a zone no longer wanted (the writer's now) is let go: its task stops it.
        self.standbys
            .retain(|standby| wanted.contains(&standby.zone));
        for zone in wanted {
            if !self.standbys.iter().any(|standby| standby.zone == zone) {
                let standby = self.spawn(zone);
                self.standbys.push(standby);
            }
        }
        for standby in &self.standbys {
            let _ = standby.commands.try_send(StandbyCommand::Run);
        }
    }

    /// The writer is gone (stopped or lost): relayed connections are cut.
    pub(super) fn writer_gone(&mut self) {
        self.writer.send_replace(None);
    }

    /// Stops every standby; each receiver resolves once its standby stopped.
    pub(super) fn stop_all(&self) -> Vec<oneshot::Receiver<()>> {
        self.standbys
            .iter()
            .filter_map(|standby| {
                let (reply, stopped) = oneshot::channel();
                standby
                    .commands
                    .try_send(StandbyCommand::Stop(reply))
                    .ok()
                    .map(|_| stopped)
            })
            .collect()
    }

    /// The standby a takeover would use: the one named, or the streaming one least behind.
    pub(super) fn promotable(&self, to: Option<&str>) -> Result<String, String> {
        let statuses: Vec<StandbyStatus> = self
            .standbys
            .iter()
            .map(|standby| standby.status.lock().expect("standby status lock").clone())
            .collect();
        choose(&statuses, to)
    }

    /// Asks the standby in `zone` to stop and take the copies' WAL, for a takeover.
    pub(super) fn promote(
        &self,
        zone: &str,
        planned: bool,
    ) -> impl std::future::Future<Output = anyhow::Result<Promoted>> + Send + 'static {
        let commands = self
            .standbys
            .iter()
            .find(|standby| standby.zone == zone)
            .map(|standby| standby.commands.clone());
        async move {
            let commands =
                commands.ok_or_else(|| anyhow::anyhow!("no standby in that zone any more"))?;
            let (reply, promoted) = oneshot::channel();
            let deadline = Instant::now() + PROMOTE_TIMEOUT;
            commands
                .send(StandbyCommand::Promote {
                    planned,
                    deadline,
                    reply,
                })
                .await
                .map_err(|_| anyhow::anyhow!("the standby's task is gone"))?;
            match tokio::time::timeout(PROMOTE_TIMEOUT, promoted).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => anyhow::bail!("the standby's task ended during the takeover"),
                Err(_) => anyhow::bail!("the standby did not stop within {PROMOTE_TIMEOUT:?}"),
            }
        }
    }

    /// The standby in `zone` is the writer now; its old zone-mate handles go.
    pub(super) fn promoted(&mut self, zone: &str) {
        self.writer_zone = zone.to_string();
        if let Err(e) = crate::files::write_private(
            &self.parts.cluster_dir.join(WRITER_ZONE_FILE),
            zone.as_bytes(),
        ) {
            tracing::warn!(error = %e, "could not save the writer's zone");
        }
        self.standbys.retain(|standby| standby.zone != zone);
        self.readers.publish(zone, None);
    }

    /// What the standbys run at now, together (metered with the writer's).
    pub(super) fn running_acu(&self) -> f64 {
        self.standbys
            .iter()
            .map(|standby| standby.status.lock().expect("standby status lock").acu)
            .sum()
    }

    pub(super) fn writer_zone(&self) -> &str {
        &self.writer_zone
    }

    pub(super) fn status(&self) -> ZonesStatus {
        ZonesStatus {
            writer_zone: self.writer_zone.clone(),
            zones: self.parts.zones.clone(),
            standbys: self
                .standbys
                .iter()
                .map(|standby| standby.status.lock().expect("standby status lock").clone())
                .collect(),
        }
    }

    fn spawn(&self, zone: String) -> StandbyHandle {
        let status = Arc::new(Mutex::new(StandbyStatus {
            zone: zone.clone(),
            ..StandbyStatus::default()
        }));
        let (commands, receiver) = mpsc::channel(16);
        let shared = &self.parts.shared;
        shared.budget.join(
            &actor::budget_name(&shared.config.name, &zone),
            Arc::new(actor::StandbyTenant {
                min_acu: shared.config.min_acu,
            }),
        );
        let input = StandbyInput {
            dir: self.parts.cluster_dir.join("standbys").join(&zone),
            zone: zone.clone(),
            shared: self.parts.shared.clone(),
            runtime: self.parts.runtime.clone(),
            copies: self.parts.copies.clone().expect("standbys need copies"),
            writer: self.writer.subscribe(),
            postmaster_settings: self.parts.postmaster_settings.clone(),
            readers: self.readers.clone(),
            status: status.clone(),
        };
        tokio::spawn(actor::run(input, receiver));
        StandbyHandle {
            zone,
            commands,
            status,
        }
    }
}

/// Before a planned takeover, while clients carry on: a checkpoint on the writer, then a
/// restartpoint on the standby at it once replayed. The takeover then replays seconds of WAL,
/// not everything since the standby's last restartpoint, and its stops flush little. Best
/// effort: a failure here only makes the takeover slower.
pub async fn prepare_takeover(writer: &ComputeEndpoint, standby: &ComputeEndpoint) {
    let prepare = async {
        let writer = writer.admin_connect().await?;
        writer.batch_execute("CHECKPOINT").await?;
        let row = writer
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?;
        let checkpointed = crate::storage::wal::Lsn::parse(&row.get::<_, String>(0))
            .ok_or_else(|| anyhow::anyhow!("the writer's position does not parse"))?;
        let standby = standby.admin_connect().await?;
        loop {
            let row = standby
                .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
                .await?;
            let replayed = row
                .get::<_, Option<String>>(0)
                .and_then(|text| crate::storage::wal::Lsn::parse(&text));
            if replayed.is_some_and(|replayed| replayed >= checkpointed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        standby.batch_execute("CHECKPOINT").await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(60), prepare).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "preparing the takeover failed; going on"),
        Err(_) => tracing::warn!("preparing the takeover took over 60 s; going on"),
    }
}

const WRITER_ZONE_FILE: &str = "writer_zone";

fn read_writer_zone(cluster_dir: &Path) -> Option<String> {
    std::fs::read_to_string(cluster_dir.join(WRITER_ZONE_FILE))
        .ok()
        .map(|zone| zone.trim().to_string())
        .filter(|zone| !zone.is_empty())
}
