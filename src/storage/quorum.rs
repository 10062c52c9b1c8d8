//! The write quorum over a cluster's copies: each copy's health and flushed position, and the
//! set's durable position (the highest one `write_quorum` members hold; a member is a copy that
//! is up). Each writer recomputes it after its fdatasync, so the copy that completes the quorum
//! wakes the receiver itself. The members beyond the first `write_quorum` are spares.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::wal::Lsn;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Health {
    /// A member: it receives the WAL and counts toward the quorum.
    Up,
    /// Live but fallen behind: it left the quorum and catches up from the members.
    Lagging(String),
    /// Came back empty, replaced, behind, or usable again after a failure: it is backfilled from
    /// the members before it counts.
    Backfilling(String),
    /// Its writes fail (the reason says why: a disk full, a directory gone, …).
    Down(String),
    /// It holds another cluster's WAL (or an identity that does not parse): never written.
    Refused(String),
}

impl Health {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Lagging(_) => "lagging",
            Health::Backfilling(_) => "backfilling",
            Health::Down(_) => "down",
            Health::Refused(_) => "refused",
        }
    }

    pub(super) fn reason(&self) -> Option<&str> {
        match self {
            Health::Up => None,
            Health::Lagging(r) | Health::Backfilling(r) | Health::Down(r) | Health::Refused(r) => {
                Some(r)
            }
        }
    }

    /// Lagging or backfilling: its writer copies the WAL from the members.
    pub(super) fn catching_up(&self) -> bool {
        matches!(self, Health::Lagging(_) | Health::Backfilling(_))
    }
}

pub(super) struct CopyShared {
    pub(super) health: Health,
    /// The end of the WAL this copy has made durable. For a member, of the current stream only.
    pub(super) flushed: Lsn,
    /// Changes whenever the copy leaves or joins the members: write jobs of another epoch are
    /// dropped by its writer (they belong to a membership that ended).
    pub(super) epoch: u64,
    /// Bytes of WAL queued to its writer and not yet written or dropped.
    pub(super) queued: u64,
    /// The writer's catch-up came close to the members: the set may let it join.
    pub(super) join_requested: bool,
    /// The set queues its WAL again; its writer finishes the catch-up up to where that begins.
    pub(super) joining: bool,
    /// The generation (stream start) this copy last took part in.
    pub(super) generation: u64,
    /// When the health last changed.
    pub(super) since: Instant,
}

impl CopyShared {
    pub(super) fn new(health: Health, flushed: Lsn, generation: u64) -> CopyShared {
        CopyShared {
            health,
            flushed,
            epoch: 0,
            queued: 0,
            join_requested: false,
            joining: false,
            generation,
            since: Instant::now(),
        }
    }

    /// Leaves the members (or a join under way) with a new health.
    pub(super) fn leave(&mut self, health: Health) {
        self.health = health;
        self.epoch += 1;
        self.joining = false;
        self.join_requested = false;
        self.since = Instant::now();
    }

    /// Whether the set hands this copy the WAL it receives.
    pub(super) fn receives(&self) -> bool {
        self.health == Health::Up || self.joining
    }
}

/// The durable position of the set: the highest position `quorum` members have made durable.
/// Each writer recomputes it after its fdatasync, so the copy that completes the quorum wakes
/// the receiver itself, with no hop through the set. It only grows: a new stream starts
/// at it (or, with no quorum known yet, where the members agree) and counts only its own
/// writes beyond.
pub struct Quorum {
    pub(super) quorum: usize,
    pub(super) copies: Vec<Arc<Mutex<CopyShared>>>,
    pub(super) durable: Arc<AtomicU64>,
    pub(super) advanced: tokio::sync::Notify,
    /// Woken whenever a writer took jobs off its queue (the receiver waits on it when a
    /// member's queue is full).
    pub(super) progress: tokio::sync::Notify,
}

impl Quorum {
    pub fn durable(&self) -> Lsn {
        Lsn(self.durable.load(Ordering::Acquire))
    }

    /// Resolves after the durable position may have moved (a permit is kept if nobody waits,
    /// so no advance is missed between a check and the wait).
    pub async fn advanced(&self) {
        self.advanced.notified().await
    }

    /// Resolves after a writer took WAL off its queue.
    pub async fn progressed(&self) {
        self.progress.notified().await
    }

    pub(super) fn position(&self) -> Lsn {
        let mut positions: Vec<Lsn> = self
            .copies
            .iter()
            .filter_map(|c| {
                let c = c.lock().expect("copy lock");
                (c.health == Health::Up).then_some(c.flushed)
            })
            .collect();
        positions.sort_unstable_by(|a, b| b.cmp(a));
        positions
            .get(self.quorum.saturating_sub(1))
            .copied()
            .unwrap_or_default()
    }

    /// Whether copy `index` is a spare: `quorum` members come before it.
    pub(super) fn is_spare(&self, index: usize) -> bool {
        let up_before = self.copies[..index]
            .iter()
            .filter(|c| c.lock().expect("copy lock").health == Health::Up)
            .count();
        up_before >= self.quorum
    }

    pub(super) fn members(&self) -> usize {
        self.copies
            .iter()
            .filter(|c| c.lock().expect("copy lock").health == Health::Up)
            .count()
    }

    /// Called whenever a copy's flushed position or health changed.
    pub(super) fn recompute(&self) {
        let position = self.position();
        if self.durable.fetch_max(position.0, Ordering::AcqRel) < position.0 {
            self.advanced.notify_one();
        }
    }
}
