//! The copy set: the copies of one cluster (a directory each), their writer threads and the
//! quorum over them.
//!
//! - [`CopySet::open`] looks at every copy before it counts: a copy of another cluster is
//!   refused, and one that comes back empty, replaced, behind the others, or that missed a
//!   stream start is backfilled from the members before it counts toward the quorum.
//! - [`CopySet::begin_stream`] starts a stream from a compute: its system must be the copies'
//!   one, it must hold all the WAL the members hold (else it is an older data directory and the
//!   stream is refused), and the members' WAL beyond the start is removed, so that only this
//!   stream's writes make anything durable beyond it.
//! - [`CopySet::send`] hands WAL to every member without waiting; a member whose queue exceeds
//!   [`LAG_LIMIT`] leaves the quorum (lagging) while enough others remain, and otherwise the
//!   receiver waits for it ([`CopiesView::backlog`]): memory stays bounded either way.
//! - [`CopySet::tend`] lets copies that caught up join again.
//!
//! [`CopiesView`] reads the copies' states without the set's lock.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;

use super::identity::{infer_from_wal, Identity};
use super::notices::{Notices, StorageNotice};
use super::overlap::Overlap;
use super::quorum::{CopyShared, Health, Quorum};
use super::segment::{list_segments, newest_wal_end, read_verified};
use super::wal::{Lsn, WAL_PAGE};
use super::writer::{Job, Writer};

/// A member whose queue holds more WAL than this leaves the quorum (while enough remain).
pub const LAG_LIMIT: u64 = 64 << 20;
/// How long a stream start waits for the members to finish what they were handed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A read-only view of the copies' states that needs no lock on the set: status readers never
/// wait behind a write that is waiting for its quorum.
#[derive(Clone)]
pub struct CopiesView {
    pub(super) set: Arc<SetShared>,
    durable: Arc<AtomicU64>,
}

impl CopiesView {
    pub fn durable(&self) -> Lsn {
        Lsn(self.durable.load(Ordering::Acquire))
    }

    pub(super) fn copies(&self) -> &[(PathBuf, Arc<Mutex<CopyShared>>)] {
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

    pub(super) fn count_where(&self, f: impl Fn(&Health) -> bool) -> usize {
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

/// What a copy directory holds, looked at when the set opens.
struct Found {
    dir: PathBuf,
    created: Result<(), String>,
    identity: Result<Option<Identity>, String>,
    /// The identity comes from the WAL itself (no identity file).
    inferred: bool,
    end: Option<Lsn>,
}

impl CopySet {
    /// Opens the copies for one cluster (creating their directories), decides which count
    /// toward the quorum, and starts their writers.
    pub fn open(dirs: &[PathBuf], cluster: &str, quorum: usize, notices: Arc<Notices>) -> CopySet {
        let found: Vec<Found> = dirs
            .iter()
            .map(|dir| {
                let dir = dir.join(cluster);
                let created = make_copy_dirs(&dir).map_err(|e| format!("{}: {e}", dir.display()));
                let end = newest_wal_end(&dir.join("wal"));
                let (identity, inferred) = match Identity::read(&dir) {
                    Ok(None) => (Ok(infer_from_wal(&dir.join("wal"))), true),
                    read => (read, false),
                };
                Found {
                    dir,
                    created,
                    identity,
                    inferred,
                    end,
                }
            })
            .collect();
        // The set's system: the one most copies name (on a tie, the one holding the most WAL).
        let mut votes: HashMap<u64, (usize, Lsn)> = HashMap::new();
        for f in &found {
            if let Ok(Some(identity)) = &f.identity {
                let vote = votes.entry(identity.system_identifier).or_default();
                vote.0 += 1;
                vote.1 = vote.1.max(f.end.unwrap_or_default());
            }
        }
        let system = votes
            .iter()
            .max_by_key(|(_, vote)| **vote)
            .map(|(system, _)| *system);
        // Its identity: from the copy with the newest generation (a file over an inferred one).
        let set_identity = found
            .iter()
            .filter_map(|f| {
                let identity = f.identity.as_ref().ok()?.as_ref()?;
                (Some(identity.system_identifier) == system).then_some((identity, !f.inferred))
            })
            .max_by_key(|(identity, from_file)| (identity.generation, *from_file))
            .map(|(identity, _)| identity.clone());
        let generation = set_identity.as_ref().map_or(0, |i| i.generation);
        let candidate = |f: &Found| {
            f.created.is_ok()
                && match &f.identity {
                    Ok(Some(i)) => {
                        Some(i.system_identifier) == system && i.generation == generation
                    }
                    Ok(None) => set_identity.is_none(),
                    Err(_) => false,
                }
        };
        // The position a quorum of candidates holds (with fewer candidates than a quorum, the
        // furthest one): copies below it are backfilled before they count.
        let mut ends: Vec<Lsn> = found
            .iter()
            .filter(|f| candidate(f))
            .map(|f| f.end.unwrap_or_default())
            .collect();
        ends.sort_unstable_by(|a, b| b.cmp(a));
        let agreed = match ends.get(quorum.saturating_sub(1)) {
            Some(end) => *end,
            None => ends.first().copied().unwrap_or_default(),
        };
        let label = |f: &Found| f.dir.parent().unwrap_or(&f.dir).display().to_string();
        let mut states = Vec::new();
        for f in &found {
            let end = f.end.unwrap_or_default();
            let health = match (&f.created, &f.identity) {
                (Err(e), _) => Health::Down(e.clone()),
                (_, Err(e)) => Health::Refused(e.clone()),
                (_, Ok(Some(i))) if Some(i.system_identifier) != system => {
                    Health::Refused(format!(
                        "it holds the WAL of database system {}, not this cluster's {}; it is never written",
                        i.system_identifier,
                        system.unwrap_or_default()
                    ))
                }
                (_, Ok(None)) if set_identity.is_some() => Health::Backfilling(match f.end {
                    Some(_) => "holds WAL but no identity file".to_string(),
                    None => "came back empty (no identity file)".to_string(),
                }),
                (_, Ok(Some(i))) if i.generation < generation => Health::Backfilling(format!(
                    "missed {} stream start(s) while away",
                    generation - i.generation
                )),
                _ if end < agreed => Health::Backfilling(format!(
                    "holds WAL up to {end}, behind the others' {agreed}"
                )),
                _ => Health::Up,
            };
            let copy = label(f);
            match &health {
                Health::Up | Health::Lagging(_) => {}
                Health::Backfilling(reason) => notices.push(StorageNotice::CopyBackfilling {
                    copy,
                    reason: reason.clone(),
                }),
                Health::Down(reason) => notices.push(StorageNotice::CopyDown {
                    copy,
                    reason: reason.clone(),
                }),
                Health::Refused(reason) => notices.push(StorageNotice::CopyRefused {
                    copy,
                    reason: reason.clone(),
                }),
            }
            let own_generation = match &f.identity {
                Ok(Some(i)) => i.generation,
                _ => 0,
            };
            states.push((
                f.dir.clone(),
                Arc::new(Mutex::new(CopyShared::new(health, end, own_generation))),
            ));
        }
        let set = Arc::new(SetShared {
            copies: states.clone(),
            identity: Mutex::new(set_identity),
            base_repairs: Mutex::new(Vec::new()),
            notices,
        });
        let quorum = Arc::new(Quorum {
            quorum,
            copies: states.iter().map(|(_, s)| s.clone()).collect(),
            durable: Arc::new(AtomicU64::new(0)),
            advanced: tokio::sync::Notify::new(),
            progress: tokio::sync::Notify::new(),
        });
        quorum.recompute();
        let copies = states
            .iter()
            .enumerate()
            .map(|(index, (dir, shared))| {
                let (jobs, receiver) = mpsc::channel::<Job>();
                let writer = Writer {
                    index,
                    dir: dir.clone(),
                    shared: shared.clone(),
                    quorum: quorum.clone(),
                    set: set.clone(),
                    jobs: receiver,
                };
                std::thread::Builder::new()
                    .name("pgtide-copy".into())
                    .spawn(move || writer.run())
                    .expect("spawning a copy writer");
                Copy {
                    shared: shared.clone(),
                    jobs,
                }
            })
            .collect();
        let view = CopiesView {
            set: set.clone(),
            durable: quorum.durable.clone(),
        };
        // What the members hold: a copy that joins before any stream catches up to there.
        let sent = states
            .iter()
            .filter_map(|(_, s)| {
                let s = s.lock().expect("copy lock");
                (s.health == Health::Up).then_some(s.flushed)
            })
            .max()
            .unwrap_or_default();
        CopySet {
            copies,
            sent,
            quorum,
            view,
            set,
            lag_limit: LAG_LIMIT,
        }
    }

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

    /// Starts a stream from a compute whose WAL ends at `server_end`: returns where it must
    /// stream from. Refuses (fails closed) a compute of another system, or one whose WAL ends
    /// before what the members hold (an older data directory: the copies would acknowledge WAL
    /// it never wrote). The members first finish what they were handed; their WAL beyond the
    /// start is removed, so that nothing counts as durable beyond it but this stream's writes.
    pub async fn begin_stream(
        &mut self,
        system_identifier: u64,
        timeline: u32,
        server_end: Lsn,
    ) -> Result<Lsn, String> {
        // Joins under way are called off: those copies catch up again under the new stream.
        for copy in &self.copies {
            let mut shared = copy.shared.lock().expect("copy lock");
            if shared.joining || shared.join_requested {
                shared.epoch += 1;
                shared.joining = false;
                shared.join_requested = false;
            }
        }
        // What the members were handed is written first; one too slow to finish leaves.
        let mut barriers = Vec::new();
        for (i, copy) in self.copies.iter().enumerate() {
            if copy.shared.lock().expect("copy lock").health == Health::Up {
                let (reply, done) = oneshot::channel();
                let _ = copy.jobs.send(Job::Barrier { reply });
                barriers.push((i, done));
            }
        }
        for (i, done) in barriers {
            if !matches!(tokio::time::timeout(DRAIN_TIMEOUT, done).await, Ok(Ok(_))) {
                self.demote(i, "its writes did not finish within 10 s".to_string());
            }
        }
        self.quorum.recompute();

        let identity = self.set.identity.lock().expect("identity lock").clone();
        if let Some(identity) = &identity {
            if identity.system_identifier != system_identifier {
                return Err(format!(
                    "the copies hold the WAL of database system {}, but this compute is database \
                     system {system_identifier}: its data directory is not the one the copies \
                     were written from (created afresh, or another cluster's); refusing to \
                     stream into them",
                    identity.system_identifier
                ));
            }
            if timeline < identity.timeline {
                return Err(format!(
                    "the copies hold WAL of timeline {}, but this compute is on timeline \
                     {timeline}: refusing to stream an older timeline into them",
                    identity.timeline
                ));
            }
        }
        let members: Vec<(usize, Lsn)> = self
            .copies
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let shared = c.shared.lock().expect("copy lock");
                (shared.health == Health::Up).then_some((i, shared.flushed))
            })
            .collect();
        if members.is_empty() {
            return Err("no copy is usable: the receiver waits for one to come back".into());
        }
        let held = members
            .iter()
            .map(|(_, end)| *end)
            .max()
            .unwrap_or_default();
        if held > server_end {
            return Err(format!(
                "the copies hold WAL up to {held}, but this compute's WAL ends at {server_end}: \
                 its data directory is older than the copies (an old copy of it came back?); \
                 refusing to acknowledge WAL it did not write"
            ));
        }
        let durable = self.quorum.durable();
        let start = if held.0 == 0 {
            // Copies that hold nothing yet: from the start of the compute's current segment (a
            // base backup taken now needs nothing older).
            Lsn(server_end.0 - server_end.offset_in_segment())
        } else if durable.0 > 0 {
            durable
        } else {
            // No quorum known yet (fewer members than it): where every member agrees.
            members
                .iter()
                .map(|(_, end)| *end)
                .min()
                .unwrap_or_default()
        };
        for &(i, end) in &members {
            if held.0 > 0 && end < start {
                self.demote(
                    i,
                    format!("holds WAL up to {end}, behind the stream start {start}"),
                );
            }
        }
        // A stream start below WAL that some copy may hold is a new generation: a copy that
        // misses it will not trust what it holds beyond the start.
        let beyond = members.iter().any(|(_, end)| *end > start)
            || self
                .copies
                .iter()
                .any(|c| c.shared.lock().expect("copy lock").health != Health::Up);
        let mut next = identity
            .clone()
            .unwrap_or_else(|| Identity::new(system_identifier, timeline));
        next.timeline = timeline;
        if beyond || identity.is_none() {
            next.fork(start);
        }
        let changed = identity.as_ref() != Some(&next);
        *self.set.identity.lock().expect("identity lock") = Some(next.clone());
        let mut restarts: Vec<(usize, oneshot::Receiver<Result<(), String>>)> = Vec::new();
        for (i, copy) in self.copies.iter().enumerate() {
            let shared = copy.shared.lock().expect("copy lock");
            if shared.health != Health::Up {
                continue;
            }
            let record = changed
                || shared.generation != next.generation
                || !self.set.copies[i]
                    .0
                    .join(super::identity::IDENTITY_FILE)
                    .exists();
            let (reply, done) = oneshot::channel();
            let _ = copy.jobs.send(Job::Restart {
                at: start,
                identity: record.then(|| next.clone()),
                reply,
            });
            restarts.push((i, done));
        }
        for (i, done) in restarts {
            // A member that fails here has gone down by itself; one too slow to answer leaves
            // (its flushed position may still be the previous stream's).
            if tokio::time::timeout(DRAIN_TIMEOUT, done).await.is_err()
                && self.copies[i].shared.lock().expect("copy lock").health == Health::Up
            {
                self.demote(i, "it did not restart its WAL within 10 s".to_string());
            }
        }
        self.sent = start;
        self.quorum.recompute();
        tracing::info!(%start, generation = next.generation, members = self.copies_up(), "copies ready for a stream");
        Ok(start)
    }

    /// What the members hold just below a stream's start, for the receiver to compare with
    /// what the compute streams there ([`Overlap`]): a data directory of this system that ran
    /// on by itself (an old copy of it, started outside pgtide) holds all the WAL the copies
    /// hold and more, and passes every other check, yet its WAL below the start is another
    /// history. The overlap is the start's WAL page up to the start, or the page before when
    /// the start begins a page; `None` when the start is the first byte of a segment (the
    /// compute may no longer hold the segment before it) or no member holds the bytes.
    pub fn overlap_before(&self, start: Lsn, timeline: u32) -> Option<Overlap> {
        if start.offset_in_segment() == 0 {
            return None;
        }
        // A segment is whole pages, so `from` is in the start's segment.
        let in_page = start.0 % WAL_PAGE;
        let from = Lsn(start.0 - if in_page == 0 { WAL_PAGE } else { in_page });
        let segment = start.segment();
        let (lo, hi) = (from.offset_in_segment(), start.offset_in_segment());
        self.copies
            .iter()
            .zip(&self.set.copies)
            .filter(|(c, _)| c.shared.lock().expect("copy lock").health == Health::Up)
            .find_map(|(_, (dir, _))| {
                let file = list_segments(&dir.join("wal"))
                    .into_iter()
                    .find(|s| s.segment == segment && s.timeline == timeline)?;
                let pieces = read_verified(&file.path, lo, hi).ok()?;
                let expected: Vec<u8> = pieces.into_iter().flat_map(|(_, bytes)| bytes).collect();
                (expected.len() as u64 == hi - lo).then_some(Overlap { from, expected })
            })
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

/// A copy's directory for one cluster and its `wal` and `base` inside, 0700: WAL and base
/// backups hold every row of the cluster, and only pgtide may read them (the OS users that
/// clusters' Postgres run as may not).
pub(super) fn make_copy_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir.join("wal"))?;
    fs::create_dir_all(dir.join("base"))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::time::Instant;

    use super::super::read;
    use super::super::segment::{extent, list_segments, read_sums, read_verified};
    use super::super::wal::{segment_file_name, SEGMENT_SIZE};
    use super::*;

    const SYSTEM: u64 = 7_000_000_000_000_000_001;

    fn dirs(root: &Path) -> Vec<PathBuf> {
        (0..6).map(|i| root.join(format!("c{i}"))).collect()
    }

    fn open(dirs: &[PathBuf]) -> CopySet {
        CopySet::open(dirs, "main", 4, Arc::new(Notices::default()))
    }

    fn bytes(seed: u32, len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
            .collect()
    }

    /// Waits (letting copies join) until `done` holds; fails after 30 s.
    async fn until(set: &mut CopySet, what: &str, mut done: impl FnMut(&CopySet) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(set) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                set.view().status()
            );
            set.tend();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every copy that is up flushed `end` (the spares follow the quorum closely).
    async fn settle(set: &mut CopySet, end: Lsn) {
        until(set, "every copy flushed", |s| {
            s.view()
                .status()
                .iter()
                .all(|c| c.state != "up" || c.flushed_lsn == end.to_string())
        })
        .await;
    }

    /// The verified WAL a copy holds in `[from, to)`, read back through its checksums.
    fn held(copy: &Path, from: Lsn, to: Lsn) -> Vec<u8> {
        let mut out = Vec::new();
        for segment in list_segments(&copy.join("main/wal")) {
            let base = segment.segment * SEGMENT_SIZE;
            if base + SEGMENT_SIZE <= from.0 || base >= to.0 {
                continue;
            }
            let lo = from.0.saturating_sub(base);
            let hi = (to.0 - base).min(SEGMENT_SIZE);
            for (_, piece) in read_verified(&segment.path, lo, hi).unwrap() {
                out.extend_from_slice(&piece);
            }
        }
        out
    }

    #[tokio::test]
    async fn quorum_writes_survive_two_lost_copies_and_rebuild_reads_around_corruption() {
        let root = tempfile::tempdir().unwrap();
        let dirs = dirs(root.path());
        let mut set = open(&dirs);
        let start = Lsn(3 * SEGMENT_SIZE + 100);
        let from = set.begin_stream(SYSTEM, 1, start).await.unwrap();
        assert_eq!(
            from,
            Lsn(3 * SEGMENT_SIZE),
            "fresh copies stream from the segment start"
        );
        let first = bytes(1, 5100);
        assert_eq!(set.write(1, from, first.clone()).await, Lsn(from.0 + 5100));
        // Two copies become unusable: writes go on with four.
        for dir in &dirs[..2] {
            fs::remove_dir_all(dir).unwrap();
            fs::write(dir, b"not a directory").unwrap();
        }
        let second = vec![7u8; 3000];
        let end = set.write(1, Lsn(from.0 + 5100), second.clone()).await;
        assert_eq!(end, Lsn(from.0 + 8100));
        until(&mut set, "two copies down", |s| s.copies_up() == 4).await;
        // Corrupt one copy's bytes: the rebuild reads that range elsewhere.
        let segment = segment_file_name(1, 3);
        let victim = dirs[2].join("main/wal").join(&segment);
        let file = fs::OpenOptions::new().write(true).open(&victim).unwrap();
        file.write_all_at(b"garbage", 200).unwrap();
        let pg_wal = root.path().join("pg_wal");
        fs::create_dir_all(&pg_wal).unwrap();
        let copy_dirs: Vec<PathBuf> = dirs.iter().map(|d| d.join("main")).collect();
        let identity = set.view().identity();
        let readable = read::readable(&copy_dirs, identity.as_ref());
        assert_eq!(readable.len(), 4);
        let restored_end = read::restore_wal(&readable, 1, from, &pg_wal).unwrap();
        assert_eq!(restored_end, end);
        let restored = fs::read(pg_wal.join(&segment)).unwrap();
        assert_eq!(restored.len() as u64, SEGMENT_SIZE);
        assert_eq!(&restored[..5100], &first[..]);
        assert_eq!(&restored[5100..8100], &second[..]);
        // The lost copies come back: backfilled from the members, they count again.
        for dir in &dirs[..2] {
            fs::remove_file(dir).unwrap();
        }
        until(&mut set, "six copies", |s| s.copies_up() == 6).await;
        assert_eq!(held(&dirs[0], from, end), held(&dirs[3], from, end));
        assert_eq!(&held(&dirs[0], from, end)[5100..], &second[..]);
    }

    #[tokio::test]
    async fn a_slow_copy_leaves_the_quorum_with_its_queue_bounded_then_catches_up() {
        let root = tempfile::tempdir().unwrap();
        let dirs = dirs(root.path());
        let mut set = open(&dirs);
        let limit = 8 << 20;
        set.set_lag_limit(limit);
        let from = set
            .begin_stream(SYSTEM, 1, Lsn(SEGMENT_SIZE))
            .await
            .unwrap();
        // Copy 5 writes at 1 MiB/s: the others go on without it.
        let throttle = dirs[5].join("main/test-throttle");
        fs::write(&throttle, (1u64 << 20).to_string()).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await; // the throttle is looked at
        let batch = 256 << 10;
        let mut at = from;
        let mut written = Vec::new();
        for i in 0..128 {
            let data = bytes(i, batch);
            written.extend_from_slice(&data);
            set.send(1, at, data);
            at = Lsn(at.0 + batch as u64);
            for copy in set.view().status() {
                assert!(copy.queued_bytes <= limit + batch as u64, "{copy:?}");
            }
            // As the receiver does: no more reading while a member that cannot leave is full.
            while set.view().backlog() > limit {
                let quorum = set.quorum();
                let _ = tokio::time::timeout(Duration::from_millis(50), quorum.progressed()).await;
            }
        }
        assert_eq!(
            set.wait_durable(at).await,
            at,
            "commits go on without the slow copy"
        );
        let slow = &set.view().status()[5];
        assert_eq!(slow.state, "lagging", "{slow:?}");
        assert!(
            slow.reason.as_deref().unwrap().contains("behind"),
            "{slow:?}"
        );
        assert!(set.copies_up() <= 5);
        // Its queue was let go: memory is not held for it.
        until(&mut set, "the lagging copy's queue dropped", |s| {
            s.view().status()[5].queued_bytes == 0
        })
        .await;
        // Fast again: it catches up from its peers and counts again, holding the same WAL.
        fs::remove_file(&throttle).unwrap();
        until(&mut set, "six copies", |s| s.copies_up() == 6).await;
        assert_eq!(held(&dirs[5], from, at), written);
        let more = bytes(99, 1000);
        let end = set.write(1, at, more).await;
        assert_eq!(end, Lsn(at.0 + 1000));
        until(&mut set, "copy 5 flushed the new write", |s| {
            s.view().status()[5].flushed_lsn == end.to_string()
        })
        .await;
    }

    #[tokio::test]
    async fn an_emptied_copy_does_not_count_until_it_is_backfilled() {
        let root = tempfile::tempdir().unwrap();
        let dirs = dirs(root.path());
        let mut set = open(&dirs);
        let from = set
            .begin_stream(SYSTEM, 1, Lsn(2 * SEGMENT_SIZE))
            .await
            .unwrap();
        // Over two segments.
        let data = bytes(5, (SEGMENT_SIZE + (1 << 20)) as usize);
        let end = set.write(1, from, data.clone()).await;
        settle(&mut set, end).await;
        drop(set);
        // A replaced, empty disk where copy 0 was.
        fs::remove_dir_all(&dirs[0]).unwrap();
        fs::create_dir_all(&dirs[0]).unwrap();
        // Slow enough to see it backfilling.
        fs::create_dir_all(dirs[0].join("main")).unwrap();
        fs::write(
            dirs[0].join("main/test-throttle"),
            (32u64 << 20).to_string(),
        )
        .unwrap();
        let mut set = open(&dirs);
        let status = set.view().status();
        assert_eq!(status[0].state, "backfilling", "{status:?}");
        assert!(status[0].reason.as_deref().unwrap().contains("empty"));
        assert_eq!(set.copies_up(), 5, "an empty copy is not counted");
        assert_eq!(set.durable(), end);
        until(&mut set, "six copies", |s| s.copies_up() == 6).await;
        assert_eq!(held(&dirs[0], from, end), data);
        assert!(dirs[0].join("main/identity").exists());
        // Its segments were put in place whole: no temporary file is left.
        let names: Vec<String> = fs::read_dir(dirs[0].join("main/wal"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[tokio::test]
    async fn another_clusters_copy_is_refused_and_so_is_a_compute_behind_the_copies() {
        let root = tempfile::tempdir().unwrap();
        let dirs = dirs(root.path());
        let mut set = open(&dirs);
        let from = set
            .begin_stream(SYSTEM, 1, Lsn(SEGMENT_SIZE))
            .await
            .unwrap();
        let end = set.write(1, from, bytes(1, 10_000)).await;
        settle(&mut set, end).await;
        drop(set);
        // Another cluster's copy directory moved in where copy 2 was.
        let other: Vec<PathBuf> = (0..6).map(|i| root.path().join(format!("o{i}"))).collect();
        let mut other_set = open(&other);
        let other_from = other_set
            .begin_stream(SYSTEM + 1, 1, Lsn(SEGMENT_SIZE))
            .await
            .unwrap();
        let other_end = other_set.write(1, other_from, bytes(2, 20_000)).await;
        settle(&mut other_set, other_end).await;
        drop(other_set);
        fs::remove_dir_all(&dirs[2]).unwrap();
        fs::rename(&other[0], &dirs[2]).unwrap();
        let foreign = dirs[2].join("main/wal").join(segment_file_name(1, 1));
        let foreign_before = fs::read(&foreign).unwrap();

        let mut set = open(&dirs);
        let status = set.view().status();
        assert_eq!(status[2].state, "refused", "{status:?}");
        assert!(
            status[2].reason.as_deref().unwrap().contains("another")
                || status[2]
                    .reason
                    .as_deref()
                    .unwrap()
                    .contains("database system")
        );
        assert_eq!(set.copies_up(), 5);
        // A compute of another system is refused, and one whose WAL ends before the copies'.
        let e = set.begin_stream(SYSTEM + 1, 1, end).await.unwrap_err();
        assert!(e.contains("database system"), "{e}");
        let e = set
            .begin_stream(SYSTEM, 1, Lsn(end.0 - 1))
            .await
            .unwrap_err();
        assert!(e.contains("older than the copies"), "{e}");
        // The right compute streams on; the foreign copy is never written.
        let from = set.begin_stream(SYSTEM, 1, end).await.unwrap();
        assert_eq!(from, end);
        set.write(1, end, bytes(3, 5000)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await; // a look at the refused copy
        assert_eq!(set.view().status()[2].state, "refused");
        assert_eq!(fs::read(&foreign).unwrap(), foreign_before);
    }

    #[tokio::test]
    async fn a_new_stream_drops_what_no_quorum_held_and_never_mixes_it_in() {
        let root = tempfile::tempdir().unwrap();
        let dirs = dirs(root.path());
        let mut set = open(&dirs);
        let from = set
            .begin_stream(SYSTEM, 1, Lsn(SEGMENT_SIZE))
            .await
            .unwrap();
        let first = bytes(1, 50_000);
        let durable = set.write(1, from, first.clone()).await;
        settle(&mut set, durable).await;
        drop(set);
        // Three copies got more that never reached a quorum (a compute that crashed then).
        let mut three = CopySet::open(&dirs[..3], "main", 3, Arc::new(Notices::default()));
        assert_eq!(
            three.begin_stream(SYSTEM, 1, durable).await.unwrap(),
            durable
        );
        let beyond = three.write(1, durable, bytes(2, 30_000)).await;
        settle(&mut three, beyond).await;
        drop(three);

        let mut set = open(&dirs);
        assert_eq!(set.copies_up(), 6);
        assert_eq!(set.durable(), durable);
        // A compute that holds all of it streams from the quorum's position: the members'
        // WAL beyond it is removed and this stream's bytes are written there instead.
        let start = set
            .begin_stream(SYSTEM, 1, Lsn(durable.0 + 30_000))
            .await
            .unwrap();
        assert_eq!(start, durable);
        for dir in &dirs {
            let segment = dirs[0].join("main/wal").join(segment_file_name(1, 1));
            let _ = segment;
            let wal = dir.join("main/wal").join(segment_file_name(1, 1));
            let (_, end) = extent(&read_sums(&wal)).unwrap();
            assert_eq!(SEGMENT_SIZE + end, durable.0, "{}", dir.display());
        }
        assert_eq!(set.durable(), durable);
        let second = bytes(3, 40_000);
        let end = set.write(1, durable, second.clone()).await;
        let pg_wal = root.path().join("pg_wal");
        fs::create_dir_all(&pg_wal).unwrap();
        let copy_dirs: Vec<PathBuf> = dirs.iter().map(|d| d.join("main")).collect();
        let identity = set.view().identity();
        let restored_end = read::restore_wal(
            &read::readable(&copy_dirs, identity.as_ref()),
            1,
            from,
            &pg_wal,
        )
        .unwrap();
        assert_eq!(restored_end, end);
        let restored = fs::read(pg_wal.join(segment_file_name(1, 1))).unwrap();
        assert_eq!(&restored[..50_000], &first[..]);
        assert_eq!(&restored[50_000..90_000], &second[..]);
    }
}
