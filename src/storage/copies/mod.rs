//! The copy set: the copies of one cluster (a directory each), their writer threads and the
//! quorum over them; this file holds the set itself and its data path.
//!
//! - [`CopySet::open`] looks at every copy before it counts ([`open`]).
//! - [`CopySet::begin_stream`] starts a stream from a compute: whose WAL it is, where it starts,
//!   and the members' WAL beyond the start cut ([`stream`]).
//! - [`CopySet::send`] hands WAL to every member without waiting; a member whose queue exceeds
//!   [`LAG_LIMIT`] leaves the quorum (lagging) while enough others remain, and otherwise the
//!   receiver waits for it ([`CopiesView::backlog`]): memory stays bounded either way.
//! - [`CopySet::tend`] lets copies that caught up by themselves (their writers do it) join again.
//! - [`CopySet::wait_durable`] and [`CopySet::write`] wait for a quorum to hold the WAL.
//!
//! [`CopiesView`] reads the copies' states without the set's lock ([`view`]).

mod open;
mod stream;
#[cfg(test)]
mod tests;
mod view;

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::identity::Identity;
use super::notices::{Notices, StorageNotice};
use super::quorum::{CopyShared, Health, Quorum};
use super::wal::Lsn;
use super::writer::Job;

pub use view::{CopiesView, CopyStatus};

/// A member whose queue holds more WAL than this leaves the quorum (while enough remain).
pub const LAG_LIMIT: u64 = 64 << 20;

/// One copy as the set drives it: its shared state and its writer's job queue.
pub(super) struct Copy {
    pub(super) shared: Arc<Mutex<CopyShared>>,
    jobs: mpsc::Sender<Job>,
}

/// What the set's writers share: the copies' states, whose WAL the set holds, and what the
/// cluster is to be told.
pub(super) struct SetShared {
    /// `<copy dir>/<cluster>` and its state.
    pub(super) copies: Vec<(PathBuf, Arc<Mutex<CopyShared>>)>,
    /// The set's identity (its newest generation and history); `None` until a first stream.
    pub(super) identity: Mutex<Option<Identity>>,
    /// (member, copy) pairs whose base backups are still to be copied after a copy rejoined.
    pub(super) base_repairs: Mutex<Vec<(PathBuf, PathBuf)>>,
    pub(super) notices: Arc<Notices>,
}

pub struct CopySet {
    copies: Vec<Copy>,
    quorum: Arc<Quorum>,
    /// The end of the last batch handed to the copies.
    sent: Lsn,
    view: CopiesView,
    set: Arc<SetShared>,
    lag_limit: u64,
}

impl CopySet {
    pub fn durable(&self) -> Lsn {
        self.quorum.durable()
    }

    /// The durable position and its wake-ups, to wait on without holding the set.
    pub fn quorum(&self) -> Arc<Quorum> {
        self.quorum.clone()
    }

    pub fn copies_up(&self) -> usize {
        self.view.copies_up()
    }

    pub fn view(&self) -> CopiesView {
        self.view.clone()
    }

    /// How much WAL a member may have queued before it leaves the quorum.
    pub fn lag_limit(&self) -> u64 {
        self.lag_limit
    }

    #[cfg(test)]
    pub(super) fn set_lag_limit(&mut self, limit: u64) {
        self.lag_limit = limit;
    }

    fn label(&self, index: usize) -> String {
        let dir = &self.set.copies[index].0;
        dir.parent().unwrap_or(dir).display().to_string()
    }

    /// A member leaves the quorum to catch up by itself.
    fn demote(&self, index: usize, reason: String) {
        let behind = {
            let mut shared = self.copies[index].shared.lock().expect("copy lock");
            let behind = shared.queued;
            shared.leave(Health::Lagging(reason.clone()));
            behind
        };
        tracing::warn!(copy = %self.label(index), %reason, "copy left the write quorum");
        self.set.notices.push(StorageNotice::CopyLagging {
            copy: self.label(index),
            behind_bytes: behind,
        });
    }

    /// Hands `data` (the WAL from `start`) to every member (and copy joining) without waiting:
    /// each copy's writer takes its jobs in order, several at a time when they queue up (one
    /// fdatasync for all of them), and the durable position moves once a quorum has them. A
    /// member whose queue would exceed the lag limit leaves the quorum if enough others remain
    /// (it catches up from them by itself); otherwise it stays, and the receiver waits for it
    /// before it reads more ([`CopiesView::backlog`]).
    pub fn send(&mut self, timeline: u32, start: Lsn, data: Vec<u8>) {
        self.tend();
        let len = data.len() as u64;
        let data = Arc::new(data);
        let mut members = self.quorum.members();
        for (i, copy) in self.copies.iter().enumerate() {
            let mut shared = copy.shared.lock().expect("copy lock");
            if !shared.receives() {
                continue;
            }
            if shared.queued + len > self.lag_limit {
                if shared.joining {
                    // Not caught up after all: it goes on catching up and asks again.
                    shared.epoch += 1;
                    shared.joining = false;
                    shared.join_requested = false;
                    continue;
                }
                if members > self.quorum.quorum {
                    let behind = shared.queued;
                    shared.leave(Health::Lagging(format!(
                        "fell {} MiB of WAL behind the other copies",
                        behind >> 20
                    )));
                    drop(shared);
                    members -= 1;
                    tracing::warn!(copy = %self.label(i), behind, "copy fell behind and left the write quorum");
                    self.set.notices.push(StorageNotice::CopyLagging {
                        copy: self.label(i),
                        behind_bytes: behind,
                    });
                    continue;
                }
            }
            shared.queued += len;
            let _ = copy.jobs.send(Job::Write {
                epoch: shared.epoch,
                timeline,
                start,
                data: data.clone(),
            });
        }
        self.sent = Lsn(start.0 + len);
    }

    /// Lets the copies that caught up join: their WAL is queued again from here on, and their
    /// writers copy what they still lack below it before they count.
    pub fn tend(&mut self) {
        for copy in &self.copies {
            let mut shared = copy.shared.lock().expect("copy lock");
            if shared.join_requested && !shared.joining && shared.health.catching_up() {
                shared.joining = true;
                shared.epoch += 1;
                let _ = copy.jobs.send(Job::Join {
                    epoch: shared.epoch,
                    upto: self.sent,
                });
            }
        }
    }

    /// Waits until `end` is durable on a quorum. Below a quorum it keeps waiting (copies that
    /// caught up join meanwhile) and never returns early: the compute's commits wait meanwhile.
    pub async fn wait_durable(&mut self, end: Lsn) -> Lsn {
        loop {
            let durable = self.durable();
            if durable >= end {
                return durable;
            }
            let quorum = self.quorum.clone();
            let _ = tokio::time::timeout(Duration::from_millis(100), quorum.advanced()).await;
            self.tend();
        }
    }

    /// Sends and waits: the WAL from `start` is durable on a quorum when this returns.
    pub async fn write(&mut self, timeline: u32, start: Lsn, data: Vec<u8>) -> Lsn {
        let end = Lsn(start.0 + data.len() as u64);
        self.send(timeline, start, data);
        self.wait_durable(end).await
    }

    /// Copy directories, for reading backups and WAL.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.set.copies.iter().map(|(dir, _)| dir.clone()).collect()
    }
}
