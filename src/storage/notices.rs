//! What storage has to tell the cluster's event log: the receiver's losses and returns, copies
//! that go down, fall behind, are refused or come back. Storage cannot reach the cluster's events,
//! so it queues these and the cluster drains them ([`super::ClusterStorage::take_notices`]).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;

/// Notices kept while nobody drains them (the oldest are dropped first).
const KEEP: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageNotice {
    /// The receiver's replication connection ended while the compute runs: commits wait.
    ReceiverLost { reason: String },
    /// The receiver streams again, `after_ms` after it was lost.
    ReceiverBack { after_ms: u64, reconnects: u64 },
    /// A copy's write failed: it no longer counts toward the quorum.
    CopyDown { copy: String, reason: String },
    /// A live copy fell too far behind and left the quorum; it catches up from its peers.
    CopyLagging { copy: String, behind_bytes: u64 },
    /// A copy came back (empty, replaced, behind, or usable again): it is backfilled from its
    /// peers before it counts.
    CopyBackfilling { copy: String, reason: String },
    /// A copy holds another cluster's WAL: it is never written.
    CopyRefused { copy: String, reason: String },
    /// A copy caught up and counts toward the quorum again.
    CopyBack { copy: String, after_ms: u64 },
}

impl StorageNotice {
    /// A stable word for machines, as the cluster's event kinds are.
    pub fn kind(&self) -> &'static str {
        match self {
            StorageNotice::ReceiverLost { .. } => "receiver_lost",
            StorageNotice::ReceiverBack { .. } => "receiver_back",
            StorageNotice::CopyDown { .. } => "copy_down",
            StorageNotice::CopyLagging { .. } => "copy_lagging",
            StorageNotice::CopyBackfilling { .. } => "copy_backfilling",
            StorageNotice::CopyRefused { .. } => "copy_refused",
            StorageNotice::CopyBack { .. } => "copy_back",
        }
    }
}

impl fmt::Display for StorageNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageNotice::ReceiverLost { reason } => write!(
                f,
                "the WAL receiver lost its connection to the compute ({reason}); reconnecting, commits wait"
            ),
            StorageNotice::ReceiverBack {
                after_ms,
                reconnects,
            } => write!(
                f,
                "the WAL receiver streams again after {after_ms} ms (reconnect {reconnects})"
            ),
            StorageNotice::CopyDown { copy, reason } => {
                write!(f, "copy {copy} is down: {reason}")
            }
            StorageNotice::CopyLagging { copy, behind_bytes } => write!(
                f,
                "copy {copy} fell {} MiB behind and left the write quorum; it catches up from its peers",
                behind_bytes >> 20
            ),
            StorageNotice::CopyBackfilling { copy, reason } => write!(
                f,
                "copy {copy} {reason}: backfilled from its peers before it counts toward the quorum"
            ),
            StorageNotice::CopyRefused { copy, reason } => {
                write!(f, "copy {copy} refused: {reason}")
            }
            StorageNotice::CopyBack { copy, after_ms } => write!(
                f,
                "copy {copy} caught up and counts toward the quorum again (after {after_ms} ms)"
            ),
        }
    }
}

/// The queue the receiver, the writers and the set push into.
#[derive(Default)]
pub struct Notices {
    queue: Mutex<VecDeque<StorageNotice>>,
}

impl Notices {
    pub fn push(&self, notice: StorageNotice) {
        tracing::info!(kind = notice.kind(), "{notice}");
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() == KEEP {
            queue.pop_front();
        }
        queue.push_back(notice);
    }

    pub fn take(&self) -> Vec<StorageNotice> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }
}
