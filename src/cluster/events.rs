//! A cluster's recent decisions and transitions, with their reasons: kept in a bounded ring for
//! `/status`, written to the log, and counted in `/metrics`.
//!
//! An event is a kind (an enum: the stable word machines match on, serialised in snake case as
//! `/status` has always shown it) and a message for people that says why.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::storage::notices::StorageNotice;

/// How many events `/status` keeps per cluster.
const KEEP: usize = 200;

/// What happened. The serialised names are part of the `/status` contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A start (a resume or a restart) began; says whether a warm slot was ready for it.
    Starting,
    /// A compute started for waiting clients (or at pgtide's start) and clients were let in.
    Resumed,
    /// A start failed; the cluster is `failed` until the next client retries.
    ResumeFailed,
    /// A start was given up because the cluster was paused or pgtide stopped meanwhile.
    StartCancelled,
    /// A stop began (a pause, a shutdown, a lost compute); the cluster's task goes on serving.
    Stopping,
    /// A stop ended: the compute is gone and the WAL receiver has what it sent.
    Stopped,
    Paused,
    /// The compute stopped without being asked to.
    ComputeExited,
    /// A compute started again after a crash.
    Restarted,
    /// The compute's data directory is gone from under it: it is treated as lost.
    DataDirectoryLost,
    /// A missing data directory is being put back from the copies.
    Rebuilding,
    Rebuilt,
    ScaledUp,
    ScaledDown,
    /// The scaler wanted less, but the memory the compute cannot give back forbids it.
    DownRefused,
    /// The scaler wanted more than `max_acu`.
    AtMax,
    /// A scale-up was capped or refused: running clusters hold all of `max_total_acu`.
    BudgetCapped,
    /// A resume waits for room in `max_total_acu` (a cluster pausing for it, or none pausable).
    BudgetWaiting,
    /// The cluster pauses, idle, to make room for another cluster's resume.
    BudgetPaused,
    ResizeFailed,
    /// A resize did not finish in time and was given up; the next tick decides again.
    ResizeTimedOut,
    BaseBackup,
    BaseBackupFailed,
    /// The WAL receiver's connection to the compute ended; it reconnects, commits wait.
    ReceiverLost,
    ReceiverBack,
    /// A copy's write failed: it left the write quorum.
    CopyDown,
    /// A live copy fell too far behind and left the write quorum.
    CopyLagging,
    /// A copy that came back is being filled from its peers before it counts.
    CopyBackfilling,
    /// A copy holds another cluster's WAL and is never written.
    CopyRefused,
    CopyBack,
    /// A standby's data directory was built from the copies.
    StandbyCreated,
    StandbyStarted,
    StandbyStopped,
    /// A standby's start failed (it is tried again while wanted).
    StandbyFailed,
    /// A standby's compute exited on its own (it is started again).
    StandbyLost,
    StandbyScaled,
    /// A standby took over as the writer: why, and how long each step took.
    Failover,
    /// A takeover could not be done; what the cluster did instead.
    FailoverFailed,
}

impl From<&StorageNotice> for EventKind {
    fn from(notice: &StorageNotice) -> EventKind {
        match notice {
            StorageNotice::ReceiverLost { .. } => EventKind::ReceiverLost,
            StorageNotice::ReceiverBack { .. } => EventKind::ReceiverBack,
            StorageNotice::CopyDown { .. } => EventKind::CopyDown,
            StorageNotice::CopyLagging { .. } => EventKind::CopyLagging,
            StorageNotice::CopyBackfilling { .. } => EventKind::CopyBackfilling,
            StorageNotice::CopyRefused { .. } => EventKind::CopyRefused,
            StorageNotice::CopyBack { .. } => EventKind::CopyBack,
        }
    }
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Starting => "starting",
            EventKind::Resumed => "resumed",
            EventKind::ResumeFailed => "resume_failed",
            EventKind::StartCancelled => "start_cancelled",
            EventKind::Stopping => "stopping",
            EventKind::Stopped => "stopped",
            EventKind::Paused => "paused",
            EventKind::ComputeExited => "compute_exited",
            EventKind::Restarted => "restarted",
            EventKind::DataDirectoryLost => "data_directory_lost",
            EventKind::Rebuilding => "rebuilding",
            EventKind::Rebuilt => "rebuilt",
            EventKind::ScaledUp => "scaled_up",
            EventKind::ScaledDown => "scaled_down",
            EventKind::DownRefused => "down_refused",
            EventKind::AtMax => "at_max",
            EventKind::BudgetCapped => "budget_capped",
            EventKind::BudgetWaiting => "budget_waiting",
            EventKind::BudgetPaused => "budget_paused",
            EventKind::ResizeFailed => "resize_failed",
            EventKind::ResizeTimedOut => "resize_timed_out",
            EventKind::BaseBackup => "base_backup",
            EventKind::BaseBackupFailed => "base_backup_failed",
            EventKind::ReceiverLost => "receiver_lost",
            EventKind::ReceiverBack => "receiver_back",
            EventKind::CopyDown => "copy_down",
            EventKind::CopyLagging => "copy_lagging",
            EventKind::CopyBackfilling => "copy_backfilling",
            EventKind::CopyRefused => "copy_refused",
            EventKind::CopyBack => "copy_back",
            EventKind::StandbyCreated => "standby_created",
            EventKind::StandbyStarted => "standby_started",
            EventKind::StandbyStopped => "standby_stopped",
            EventKind::StandbyFailed => "standby_failed",
            EventKind::StandbyLost => "standby_lost",
            EventKind::StandbyScaled => "standby_scaled",
            EventKind::Failover => "failover",
            EventKind::FailoverFailed => "failover_failed",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// RFC 3339, UTC.
    pub at: String,
    pub kind: EventKind,
    /// The reason, for people.
    pub message: String,
}

#[derive(Debug)]
pub struct EventLog {
    cluster: String,
    ring: Mutex<VecDeque<Event>>,
}

impl EventLog {
    pub fn new(cluster: &str) -> EventLog {
        EventLog {
            cluster: cluster.to_string(),
            ring: Mutex::new(VecDeque::with_capacity(KEEP)),
        }
    }

    pub fn record(&self, kind: EventKind, message: String) {
        tracing::info!(cluster = %self.cluster, event = kind.as_str(), "{message}");
        metrics::counter!("pgtide_cluster_events_total", "cluster" => self.cluster.clone(), "kind" => kind.as_str())
            .increment(1);
        let mut ring = self.ring.lock().expect("event lock");
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(Event {
            at: super::now_rfc3339(),
            kind,
            message,
        });
    }

    /// Newest first.
    pub fn recent(&self, limit: usize) -> Vec<Event> {
        self.ring
            .lock()
            .expect("event lock")
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    /// Whether an event of `kind` was recorded (among those still kept).
    pub fn contains(&self, kind: EventKind) -> bool {
        self.ring
            .lock()
            .expect("event lock")
            .iter()
            .any(|e| e.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_serialise_as_their_stable_words() {
        for kind in [
            EventKind::Starting,
            EventKind::Resumed,
            EventKind::ResumeFailed,
            EventKind::Stopping,
            EventKind::Stopped,
            EventKind::ScaledUp,
            EventKind::ResizeTimedOut,
            EventKind::DataDirectoryLost,
            EventKind::BaseBackupFailed,
            EventKind::ReceiverLost,
            EventKind::CopyBackfilling,
        ] {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), kind);
        }
    }

    #[test]
    fn the_ring_keeps_the_newest() {
        let log = EventLog::new("t");
        for i in 0..(KEEP + 5) {
            log.record(EventKind::Paused, format!("{i}"));
        }
        let recent = log.recent(KEEP + 10);
        assert_eq!(recent.len(), KEEP);
        assert_eq!(recent[0].message, format!("{}", KEEP + 4));
        assert_eq!(recent[KEEP - 1].message, "5");
    }

    #[test]
    fn storage_notices_keep_their_words() {
        let notices = [
            StorageNotice::ReceiverLost { reason: "x".into() },
            StorageNotice::CopyBack {
                copy: "a1".into(),
                after_ms: 1,
            },
        ];
        for notice in &notices {
            assert_eq!(EventKind::from(notice).as_str(), notice.kind());
        }
    }
}
