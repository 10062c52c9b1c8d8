//! The writer thread of one copy: the only thread that writes the copy's WAL files.
//!
//! As a member it joins the WAL jobs that queued up into one write and one `fdatasync`, then
//! publishes the copy's new flushed position to the quorum. A copy that is not a member is
//! brought back by its own writer too, so that nothing else ever writes its files and commits
//! never wait for it: a copy that is down is looked at every second until it is usable again
//! (a directory back, space free again, the right cluster's WAL); then, backfilling or lagging,
//! it copies the WAL it lacks from a member ([`super::repair`]); once close to the members it
//! asks to join, the set queues its WAL again from where it stands, and the writer copies the
//! last stretch before taking those jobs: it is a member again with no gap.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::copies::SetShared;
use super::identity::{Identity, IDENTITY_FILE};
use super::notices::StorageNotice;
use super::quorum::{CopyShared, Health, Quorum};
use super::repair::{self, CatchUp, CopyError, PrepareError, Returning};
use super::segment::{is_disk_full, newest_wal_end, truncate_wal, write_parts, OpenSegment};
use super::wal::{Lsn, SEGMENT_SIZE};

pub(super) enum Job {
    /// WAL from `start`, for the membership `epoch` (dropped if that ended).
    Write {
        epoch: u64,
        timeline: u32,
        start: Lsn,
        data: Arc<Vec<u8>>,
    },
    /// Everything queued before it is written: replies with the copy's flushed position.
    Barrier { reply: oneshot::Sender<Lsn> },
    /// A stream starts at `at`: the copy's WAL beyond it is removed (the stream sends it again)
    /// and `identity`, if given, recorded.
    Restart {
        at: Lsn,
        identity: Option<Identity>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// The set queues this copy's WAL again from `upto` on: finish the catch-up up to there,
    /// then become a member (for `epoch`).
    Join { epoch: u64, upto: Lsn },
}

/// Jobs a writer joins into one write and one fdatasync, up to this many bytes.
const MAX_GROUP: usize = 8 << 20;
/// How long a spare copy gathers WAL before it syncs.
const SPARE_DELAY: Duration = Duration::from_millis(5);
/// How often a copy that is down is looked at, and an idle member's directory checked.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// A catch-up copies this much at a time between looks at its queue.
const CATCH_UP_STEP: u64 = 8 << 20;
/// How long a join may wait for a member to hold the WAL up to where the copy's jobs resume.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Free space a copy needs before it is written again.
const MIN_FREE: u64 = 2 * SEGMENT_SIZE;
/// After a disk was found full, it is looked at again no sooner than this.
const DISK_FULL_PAUSE: Duration = Duration::from_secs(5);

pub(super) struct Writer {
    pub(super) index: usize,
    /// `<copy dir>/<cluster>`.
    pub(super) dir: PathBuf,
    pub(super) shared: Arc<Mutex<CopyShared>>,
    pub(super) quorum: Arc<Quorum>,
    pub(super) set: Arc<SetShared>,
    pub(super) jobs: mpsc::Receiver<Job>,
}

struct State {
    w: Writer,
    open: Option<OpenSegment>,
    next: Option<Job>,
    catch_up: Option<CatchUp>,
    throttle: Throttle,
    /// The inode of the copy's directory while it is a member, and whether it held an identity
    /// file: a directory replaced under it (an emptied disk mounted again, another directory
    /// moved in) is noticed when idle.
    dir_inode: Option<u64>,
    identity_seen: bool,
    /// Free space seen when the disk was found full, and when.
    disk_full: Option<(u64, Instant)>,
    last_look: Instant,
}

impl Writer {
    pub(super) fn run(self) {
        let throttle = Throttle::new(&self.dir);
        let dir_inode = inode(&self.dir);
        let identity_seen = self.dir.join(IDENTITY_FILE).exists();
        let mut state = State {
            w: self,
            open: None,
            next: None,
            catch_up: None,
            throttle,
            dir_inode,
            identity_seen,
            disk_full: None,
            last_look: Instant::now(),
        };
        state.run();
    }
}

impl State {
    fn label(&self) -> String {
        self.w
            .dir
            .parent()
            .unwrap_or(&self.w.dir)
            .display()
            .to_string()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CopyShared> {
        self.w.shared.lock().expect("copy lock")
    }

    fn run(&mut self) {
        loop {
            let (receives, health) = {
                let shared = self.lock();
                (shared.receives(), shared.health.clone())
            };
            let job = if let Some(job) = self.next.take() {
                Some(job)
            } else if receives {
                match self.w.jobs.recv_timeout(LOOK_EVERY) {
                    Ok(job) => Some(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.check_member_dir();
                        None
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else if health.catching_up() {
                match self.w.jobs.try_recv() {
                    Ok(job) => Some(job),
                    Err(mpsc::TryRecvError::Disconnected) => return,
                    Err(mpsc::TryRecvError::Empty) => {
                        if !self.catch_up_step() {
                            match self.w.jobs.recv_timeout(Duration::from_millis(100)) {
                                Ok(job) => Some(job),
                                Err(mpsc::RecvTimeoutError::Timeout) => None,
                                Err(mpsc::RecvTimeoutError::Disconnected) => return,
                            }
                        } else {
                            None
                        }
                    }
                }
            } else {
                match self.w.jobs.recv_timeout(LOOK_EVERY) {
                    Ok(job) => Some(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            };
            if let Some(job) = job {
                self.handle(job);
            }
            if matches!(health, Health::Down(_) | Health::Refused(_))
                && self.last_look.elapsed() >= LOOK_EVERY
            {
                self.last_look = Instant::now();
                self.look_at_returning();
            }
        }
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::Write {
                epoch,
                timeline,
                start,
                data,
            } => self.write(epoch, timeline, start, data),
            Job::Barrier { reply } => {
                let _ = reply.send(self.lock().flushed);
            }
            Job::Restart {
                at,
                identity,
                reply,
            } => {
                let _ = reply.send(self.restart(at, identity));
            }
            Job::Join { epoch, upto } => self.join(epoch, upto),
        }
    }

    /// Takes every write that queued up behind `first`, writes them and their checksum records,
    /// syncs once, then publishes the new flushed position.
    fn write(&mut self, epoch: u64, timeline: u32, start: Lsn, first: Arc<Vec<u8>>) {
        // Join the contiguous jobs that are already waiting; a spare copy (beyond the first
        // `quorum` members) also waits a little for more, syncing far less often: commits wait
        // for the first `quorum` copies, and the spares follow close behind.
        let current = {
            let shared = self.lock();
            shared.epoch == epoch && shared.health == Health::Up
        };
        let mut group = vec![first];
        let mut end = start.0 + group[0].len() as u64;
        let mut bytes = group[0].len();
        if current && self.w.quorum.is_spare(self.w.index) {
            // Asleep rather than woken by every job that arrives meanwhile.
            std::thread::sleep(SPARE_DELAY);
        }
        while bytes < MAX_GROUP {
            match self.w.jobs.try_recv() {
                Ok(Job::Write {
                    epoch: e,
                    timeline: t,
                    start: s,
                    data,
                }) if e == epoch && t == timeline && s.0 == end => {
                    end += data.len() as u64;
                    bytes += data.len();
                    group.push(data);
                }
                Ok(job) => {
                    self.next = Some(job);
                    break;
                }
                Err(_) => break,
            }
        }
        let result = if current {
            let parts: Vec<&[u8]> = group.iter().map(|d| d.as_slice()).collect();
            write_parts(
                &self.w.dir.join("wal"),
                &mut self.open,
                timeline,
                start,
                &parts,
            )
        } else {
            Ok(()) // its membership ended: what it missed comes back by its catch-up
        };
        if current {
            self.throttle.pause(bytes);
        }
        {
            let mut shared = self.lock();
            shared.queued = shared.queued.saturating_sub(bytes as u64);
            match result {
                Ok(()) if current && shared.epoch == epoch => {
                    shared.flushed = shared.flushed.max(Lsn(end));
                }
                Ok(()) => {}
                Err(e) => {
                    drop(shared);
                    self.fail(&e);
                }
            }
        }
        self.w.quorum.recompute();
        self.w.quorum.progress.notify_one();
    }

    /// A write failed: the copy is down (a full disk says so) and looked at again later.
    fn fail(&mut self, e: &std::io::Error) {
        self.open = None;
        self.catch_up = None;
        let reason = if is_disk_full(e) {
            self.disk_full = Some((repair::free_space(&self.w.dir), Instant::now()));
            format!("disk full: {e}")
        } else {
            e.to_string()
        };
        self.go_down(Health::Down(reason));
    }

    fn go_down(&mut self, health: Health) {
        let changed = {
            let mut shared = self.lock();
            let changed = shared.health != health;
            if changed {
                shared.leave(health.clone());
            }
            changed
        };
        self.w.quorum.recompute();
        if changed {
            let copy = self.label();
            let reason = health.reason().unwrap_or_default().to_string();
            tracing::warn!(%copy, %reason, state = health.name(), "copy left the write quorum");
            self.w.set.notices.push(match health {
                Health::Refused(_) => StorageNotice::CopyRefused { copy, reason },
                _ => StorageNotice::CopyDown { copy, reason },
            });
        }
    }

    fn restart(&mut self, at: Lsn, identity: Option<Identity>) -> Result<(), String> {
        self.open = None;
        let wal = self.w.dir.join("wal");
        let result = truncate_wal(&wal, at).and_then(|_| match &identity {
            Some(identity) => identity.write(&self.w.dir),
            None => Ok(()),
        });
        match result {
            Ok(()) => {
                let mut shared = self.lock();
                shared.flushed = at;
                if let Some(identity) = &identity {
                    shared.generation = identity.generation;
                }
                drop(shared);
                self.dir_inode = inode(&self.w.dir);
                self.identity_seen = self.w.dir.join(IDENTITY_FILE).exists();
                Ok(())
            }
            Err(e) => {
                let reason = format!("restarting its WAL at {at}: {e}");
                self.fail(&e);
                Err(reason)
            }
        }
    }

    /// An idle member checks that its directory is still the one it writes.
    fn check_member_dir(&mut self) {
        if self.lock().health != Health::Up {
            return;
        }
        let gone = !self.w.dir.join("wal").is_dir()
            || inode(&self.w.dir) != self.dir_inode
            || (self.identity_seen && !self.w.dir.join(IDENTITY_FILE).exists());
        if gone {
            self.go_down(Health::Down(
                "its directory is gone, emptied or replaced".to_string(),
            ));
        }
    }

    /// A copy that is down or refused: usable again (a directory, free space, this cluster's
    /// WAL or none)? Then it is backfilled.
    fn look_at_returning(&mut self) {
        let need = match self.disk_full {
            Some((free, at)) => {
                if at.elapsed() < DISK_FULL_PAUSE {
                    return;
                }
                MIN_FREE.max(free + SEGMENT_SIZE)
            }
            None => MIN_FREE,
        };
        let set_identity = self.w.set.identity.lock().expect("identity lock").clone();
        match repair::examine(&self.w.dir, set_identity.as_ref(), need) {
            Returning::NotYet(why) => {
                tracing::debug!(copy = %self.label(), %why, "copy not usable yet")
            }
            Returning::Refused(reason) => self.go_down(Health::Refused(reason)),
            Returning::Ready(reason) => {
                self.disk_full = None;
                self.start_backfill(reason);
            }
        }
    }

    fn start_backfill(&mut self, reason: String) {
        self.catch_up = None;
        self.lock().leave(Health::Backfilling(reason.clone()));
        self.w.set.notices.push(StorageNotice::CopyBackfilling {
            copy: self.label(),
            reason,
        });
    }

    /// One step of a catch-up; false when there was nothing to do now.
    fn catch_up_step(&mut self) -> bool {
        let Some(set_identity) = self.w.set.identity.lock().expect("identity lock").clone() else {
            // No stream ever started: the members hold nothing this copy could lack (one that
            // holds WAL waits until the set knows whose WAL it keeps).
            if !repair::holds_wal(&self.w.dir) {
                self.lock().join_requested = true;
            }
            return false;
        };
        if self
            .catch_up
            .as_ref()
            .is_none_or(|c| c.generation != set_identity.generation)
        {
            // A new catch-up, or a stream started since: what to trust is decided again.
            self.open = None;
            match repair::prepare(&self.w.dir, &set_identity) {
                Ok(end) => {
                    let mut shared = self.lock();
                    shared.flushed = end;
                    shared.generation = set_identity.generation;
                    shared.join_requested = false;
                    drop(shared);
                    self.catch_up = Some(CatchUp::new(set_identity.generation));
                }
                Err(PrepareError::Refused(reason)) => {
                    self.go_down(Health::Refused(reason));
                    return false;
                }
                Err(PrepareError::Io(e)) => {
                    self.fail(&e);
                    return false;
                }
            }
        }
        if self.lock().join_requested {
            return false; // waiting for the set to let it join
        }
        let mut sources = repair::sources(&self.w.set, self.w.index, Lsn(0));
        while let Some((source, source_end)) = sources.pop() {
            let state = self.catch_up.as_mut().expect("catching up");
            match repair::copy_wal(
                &self.w.dir,
                &mut self.open,
                &source,
                source_end,
                state,
                CATCH_UP_STEP,
                &mut self.throttle,
            ) {
                Ok(copied) => {
                    self.publish_end();
                    if copied.complete {
                        // Everything the member held when the step began: the rest comes
                        // with the join, while the set queues this copy's WAL again.
                        self.lock().join_requested = true;
                        return false;
                    }
                    return copied.bytes > 0;
                }
                Err(CopyError::Source(e)) => {
                    tracing::warn!(copy = %self.label(), source = %source.display(), error = %e, "catch-up source unreadable; trying another");
                }
                Err(CopyError::Target(e)) => {
                    self.fail(&e);
                    return false;
                }
            }
        }
        false
    }

    fn publish_end(&mut self) {
        let end = newest_wal_end(&self.w.dir.join("wal")).unwrap_or_default();
        self.lock().flushed = end;
    }

    /// The set queues this copy's WAL from `upto` on: copy what it lacks below that from a
    /// member holding it, then count toward the quorum.
    fn join(&mut self, epoch: u64, upto: Lsn) {
        if self.lock().epoch != epoch {
            return; // a join the set called off
        }
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let mut outcome: Result<PathBuf, String> = Err("no member holds the WAL yet".into());
        let wal = self.w.dir.join("wal");
        if newest_wal_end(&wal).is_some_and(|end| end > upto) {
            self.open = None;
            if let Err(e) = truncate_wal(&wal, upto) {
                self.fail(&e);
                return;
            }
        }
        // With no stream under way, as far as the best member holds.
        let target = match upto.0 {
            0 => repair::sources(&self.w.set, self.w.index, Lsn(0))
                .pop()
                .map_or(Lsn(0), |(_, end)| end),
            _ => upto,
        };
        let has_identity = self.w.set.identity.lock().expect("identity lock").is_some();
        if !has_identity || target.0 == 0 {
            outcome = Ok(PathBuf::new()); // the members hold nothing it could lack
        }
        while outcome.is_err() && Instant::now() < deadline {
            if self.lock().epoch != epoch {
                return;
            }
            let mut sources = repair::sources(&self.w.set, self.w.index, target);
            let Some((source, _)) = sources.pop() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let generation = self.lock().generation;
            let state = self
                .catch_up
                .get_or_insert_with(|| CatchUp::new(generation));
            match repair::copy_wal(
                &self.w.dir,
                &mut self.open,
                &source,
                target,
                state,
                u64::MAX,
                &mut self.throttle,
            ) {
                Ok(_) => outcome = Ok(source),
                Err(CopyError::Source(e)) => outcome = Err(e),
                Err(CopyError::Target(e)) => {
                    self.fail(&e);
                    return;
                }
            }
        }
        let end = newest_wal_end(&wal).unwrap_or_default();
        let mut shared = self.lock();
        if shared.epoch != epoch {
            return;
        }
        match outcome {
            Ok(source) if end >= target => {
                let after_ms = shared.since.elapsed().as_millis() as u64;
                shared.health = Health::Up;
                shared.flushed = target;
                shared.joining = false;
                shared.join_requested = false;
                shared.since = Instant::now();
                drop(shared);
                self.catch_up = None;
                self.dir_inode = inode(&self.w.dir);
                self.identity_seen = self.w.dir.join(IDENTITY_FILE).exists();
                if !source.as_os_str().is_empty() {
                    self.w
                        .set
                        .base_repairs
                        .lock()
                        .expect("base repairs lock")
                        .push((source, self.w.dir.clone()));
                }
                tracing::info!(copy = %self.label(), at = %target, "copy caught up; it counts toward the quorum again");
                self.w.set.notices.push(StorageNotice::CopyBack {
                    copy: self.label(),
                    after_ms,
                });
                self.w.quorum.recompute();
            }
            outcome => {
                // Called off: it goes on catching up and asks again.
                shared.epoch += 1;
                shared.joining = false;
                shared.join_requested = false;
                shared.flushed = end;
                drop(shared);
                let why = outcome
                    .err()
                    .unwrap_or_else(|| format!("its WAL ends at {end}"));
                tracing::info!(copy = %self.label(), reason = %why, "join called off; the catch-up goes on");
            }
        }
    }
}

fn inode(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

/// A test-only fault: with `PGTIDE_TEST_HOOKS` set in pgtide's environment (or in unit tests), a file
/// `test-throttle` in a copy's cluster directory holding a number of bytes per second slows
/// that copy's writes (and its catch-up) to that rate. Looked at a few times a second.
pub(super) struct Throttle {
    path: Option<PathBuf>,
    rate: u64,
    checked: Option<Instant>,
}

impl Throttle {
    fn new(dir: &std::path::Path) -> Throttle {
        let enabled = cfg!(test) || std::env::var_os("PGTIDE_TEST_HOOKS").is_some();
        Throttle {
            path: enabled.then(|| dir.join("test-throttle")),
            rate: 0,
            checked: None,
        }
    }

    pub(super) fn pause(&mut self, bytes: usize) {
        if self.path.is_none() {
            return;
        }
        // Slept in slices, so that a throttle lifted meanwhile takes effect at once.
        let mut owed = bytes as f64;
        while owed > 0.0 {
            self.refresh();
            if self.rate == 0 {
                return;
            }
            let slice = (owed / self.rate as f64).min(0.1);
            std::thread::sleep(Duration::from_secs_f64(slice));
            owed -= slice * self.rate as f64;
        }
    }

    fn refresh(&mut self) {
        let Some(path) = &self.path else { return };
        if self
            .checked
            .is_none_or(|at| at.elapsed() >= Duration::from_millis(100))
        {
            self.rate = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            self.checked = Some(Instant::now());
        }
    }
}
