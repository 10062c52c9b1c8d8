//! The copies' states as `/status` and the receiver read them, without the set's lock.
//!
//! The [`super::CopySet`] sits behind an async mutex that a write holds while it waits for its
//! quorum. Status readers, the receiver's backlog check, base backups and the cluster's tick
//! must never wait behind that, so a [`CopiesView`] shares only what the writers publish: each
//! copy's [`CopyShared`] (its own small lock), the set's identity and the durable position.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::super::identity::Identity;
use super::super::quorum::{CopyShared, Health};
use super::super::wal::Lsn;
use super::SetShared;

/// The state of one copy, as `/status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct CopyStatus {
    pub dir: String,
    /// `up` (a member), `lagging` or `backfilling` (catching up from the members before it
    /// counts), `down`, or `refused` (another cluster's WAL).
    pub state: std::borrow::Cow<'static, str>,
    pub reason: Option<String>,
    /// The WAL position this copy has made durable.
    pub flushed_lsn: String,
    /// Bytes behind the durable position of the set.
    pub lag_bytes: u64,
    /// WAL queued in memory for its writer.
    pub queued_bytes: u64,
}

/// A read-only view of the copies' states that needs no lock on the set: status readers never
/// wait behind a write that is waiting for its quorum.
#[derive(Clone)]
pub struct CopiesView {
    pub(in crate::storage) set: Arc<SetShared>,
    pub(super) durable: Arc<AtomicU64>,
}

impl CopiesView {
    pub fn durable(&self) -> Lsn {
        Lsn(self.durable.load(Ordering::Acquire))
    }

    pub(in crate::storage) fn copies(&self) -> &[(PathBuf, Arc<Mutex<CopyShared>>)] {
        &self.set.copies
    }

    /// How many copies are configured.
    pub fn count(&self) -> usize {
        self.set.copies.len()
    }

    /// Members: the copies that count toward the quorum.
    pub fn copies_up(&self) -> usize {
        self.count_where(|h| *h == Health::Up)
    }

    pub(in crate::storage) fn count_where(&self, f: impl Fn(&Health) -> bool) -> usize {
        self.set
            .copies
            .iter()
            .filter(|(_, s)| f(&s.lock().expect("copy lock").health))
            .count()
    }

    /// The most WAL queued in memory for a member.
    pub fn backlog(&self) -> u64 {
        self.set
            .copies
            .iter()
            .map(|(_, s)| {
                let s = s.lock().expect("copy lock");
                if s.health == Health::Up {
                    s.queued
                } else {
                    0
                }
            })
            .max()
            .unwrap_or(0)
    }

    pub fn status(&self) -> Vec<CopyStatus> {
        let durable = self.durable();
        self.set
            .copies
            .iter()
            .map(|(dir, shared)| {
                let shared = shared.lock().expect("copy lock");
                CopyStatus {
                    dir: dir.parent().unwrap_or(dir).display().to_string(),
                    state: shared.health.name().into(),
                    reason: shared.health.reason().map(str::to_string),
                    flushed_lsn: shared.flushed.to_string(),
                    lag_bytes: durable.0.saturating_sub(shared.flushed.0),
                    queued_bytes: shared.queued,
                }
            })
            .collect()
    }

    /// The base backups that rejoined copies still lack, to copy without holding the set.
    pub fn take_base_repairs(&self) -> Vec<(PathBuf, PathBuf)> {
        std::mem::take(&mut *self.set.base_repairs.lock().expect("base repairs lock"))
    }

    /// The set's identity, if a stream ever started (or the copies tell whose WAL they hold).
    pub fn identity(&self) -> Option<Identity> {
        self.set.identity.lock().expect("identity lock").clone()
    }
}
