//! The six copies of a cluster's WAL and base backups, and the write quorum over them.
//!
//! Each copy is a directory (`[storage] copies`, zone by zone) holding, per cluster,
//! `wal/<segment>` files whose first 16 MiB are the segment exactly as Postgres names and lays it
//! out, followed by one checksum record per write (offset, length, CRC-32), so that a corrupted
//! range in one copy is found and read from another. Data and record share the file, so one
//! `fdatasync` makes both durable. Each copy has a writer thread of its own, so the six
//! `fdatasync`s run in parallel; [`CopySet::send`] hands WAL to every writer without waiting,
//! a writer joins the jobs that queued up into one write and one `fdatasync`, and after each it
//! recomputes the set's durable position (the highest one `write_quorum` copies that are up hold),
//! waking the receiver when it moved. Nothing is reported durable before a quorum has it. The
//! copies that are up beyond the first `write_quorum` are spares: they gather WAL for 5 ms before
//! each sync, so they sync far less often while commits wait only for the first `write_quorum`;
//! when a copy goes down, a spare moves up and syncs at once again. A copy that fails is marked down with the
//! reason; writes go on while a quorum is up and wait below it. A copy that becomes usable again
//! is repaired from a peer (whole files) and rejoins.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::wal::{parse_segment_file_name, segment_file_name, Lsn, SEGMENT_SIZE};

/// The state of one copy, as `/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CopyStatus {
    pub dir: String,
    pub state: &'static str,
    pub reason: Option<String>,
    /// The WAL position this copy has made durable.
    pub flushed_lsn: String,
    /// Bytes behind the durable position of the set.
    pub lag_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum Health {
    Up,
    Down(String),
}

struct CopyShared {
    health: Health,
    flushed: Lsn,
}

struct Copy {
    /// `<copy dir>/<cluster>`.
    dir: PathBuf,
    shared: Arc<Mutex<CopyShared>>,
    jobs: mpsc::Sender<WriteJob>,
}

struct WriteJob {
    timeline: u32,
    start: Lsn,
    data: Arc<Vec<u8>>,
}

/// The durable position of the set: the highest position `quorum` copies that are up have
/// made durable. Each writer recomputes it after its fdatasync, so the copy that completes the
/// quorum wakes the receiver itself, with no hop through the set.
pub struct Quorum {
    quorum: usize,
    copies: Vec<Arc<Mutex<CopyShared>>>,
    durable: Arc<AtomicU64>,
    advanced: tokio::sync::Notify,
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

    fn position(&self) -> Lsn {
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

    /// Whether copy `index` is a spare: `quorum` copies that are up come before it.
    fn is_spare(&self, index: usize) -> bool {
        let up_before = self.copies[..index]
            .iter()
            .filter(|c| c.lock().expect("copy lock").health == Health::Up)
            .count();
        up_before >= self.quorum
    }

    /// Called whenever a copy's flushed position or health changed.
    fn recompute(&self) {
        let position = self.position();
        if self.durable.fetch_max(position.0, Ordering::AcqRel) < position.0 {
            self.advanced.notify_one();
        }
    }
}

pub struct CopySet {
    copies: Vec<Copy>,
    quorum: Arc<Quorum>,
    /// The end of the last batch handed to the copies.
    sent: Lsn,
    view: CopiesView,
    /// (peer, copy) pairs whose base backups are still to be copied after a repair: done
    /// outside the set's lock by [`CopySet::take_base_repairs`]'s caller, because a backup is as
    /// large as the database and commits wait while the set is held.
    base_repairs: Vec<(PathBuf, PathBuf)>,
}

/// A read-only view of the copies' states that needs no lock on the set: status readers never
/// wait behind a write that is waiting for its quorum.
#[derive(Clone)]
pub struct CopiesView {
    copies: Vec<(PathBuf, Arc<Mutex<CopyShared>>)>,
    durable: Arc<AtomicU64>,
}

impl CopiesView {
    pub fn durable(&self) -> Lsn {
        Lsn(self.durable.load(Ordering::Acquire))
    }

    /// How many copies are configured.
    pub fn count(&self) -> usize {
        self.copies.len()
    }

    pub fn copies_up(&self) -> usize {
        self.copies
            .iter()
            .filter(|(_, s)| s.lock().expect("copy lock").health == Health::Up)
            .count()
    }

    pub fn status(&self) -> Vec<CopyStatus> {
        let durable = self.durable();
        self.copies
            .iter()
            .map(|(dir, shared)| {
                let shared = shared.lock().expect("copy lock");
                let (state, reason) = match &shared.health {
                    Health::Up => ("up", None),
                    Health::Down(reason) => ("down", Some(reason.clone())),
                };
                CopyStatus {
                    dir: dir.display().to_string(),
                    state,
                    reason,
                    flushed_lsn: shared.flushed.to_string(),
                    lag_bytes: durable.0.saturating_sub(shared.flushed.0),
                }
            })
            .collect()
    }

    /// Copies a finished base backup (a tar file) into every copy that is up, with its checksum.
    /// Streams the file (a backup is as large as the database) and takes no lock on the set:
    /// commits go on meanwhile. Returns how many copies hold it.
    pub fn store_backup(&self, tar: &Path, start: Lsn, end: Lsn) -> Result<usize, String> {
        let sum = file_crc32(tar).map_err(|e| format!("reading {}: {e}", tar.display()))?;
        let mut stored = 0;
        for (dir, shared) in &self.copies {
            if shared.lock().expect("copy lock").health != Health::Up {
                continue;
            }
            let target = backup_tar(dir, start);
            let tmp = target.with_extension("tar.tmp");
            let write = || -> std::io::Result<()> {
                copy_synced(tar, &tmp)?;
                fs::rename(&tmp, &target)?;
                // The checksum, then the WAL position a restore must reach (the backup's end).
                fs::write(
                    target.with_extension("tar.crc32"),
                    format!("{sum:08x}\n{end}\n"),
                )?;
                File::open(dir.join("base"))?.sync_all()
            };
            match write() {
                Ok(()) => stored += 1,
                Err(e) => {
                    // A backup that does not fit (disk full) must not take the copy's WAL down
                    // with it: the copy stays up for commits and the backup counts one fewer.
                    let _ = fs::remove_file(&tmp);
                    tracing::warn!(copy = %dir.display(), error = %e, "storing a base backup failed");
                }
            }
        }
        Ok(stored)
    }

    /// Keeps the newest `keep` base backups and deletes, in every copy that is up, the older
    /// ones and the WAL segments wholly below the oldest kept backup's start (a rebuild from it
    /// needs nothing older). Returns that start, if there was anything to prune below.
    pub fn prune(&self, keep: usize) -> Option<Lsn> {
        let listed: Vec<Vec<Lsn>> = self
            .copies
            .iter()
            .map(|(dir, _)| backup_starts(dir))
            .collect();
        let mut starts: Vec<Lsn> = listed.iter().flatten().copied().collect();
        starts.sort_unstable_by(|a, b| b.cmp(a));
        starts.dedup();
        let oldest_kept = *starts.get(keep.checked_sub(1)?)?;
        for ((dir, shared), backups) in self.copies.iter().zip(&listed) {
            if shared.lock().expect("copy lock").health != Health::Up {
                continue; // pruned once it is back
            }
            for &start in backups.iter().filter(|&&start| start < oldest_kept) {
                let tar = backup_tar(dir, start);
                let _ = fs::remove_file(tar.with_extension("tar.crc32"));
                let _ = fs::remove_file(tar);
            }
            for entry in fs::read_dir(dir.join("wal"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if parse_segment_file_name(&name)
                    .is_some_and(|(_, segment)| segment < oldest_kept.segment())
                {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Some(oldest_kept)
    }
}

impl CopySet {
    /// Opens the copies for one cluster (creating their directories) and starts their writers.
    pub fn open(dirs: &[PathBuf], cluster: &str, quorum: usize) -> CopySet {
        let states: Vec<(PathBuf, Arc<Mutex<CopyShared>>)> = dirs
            .iter()
            .map(|dir| {
                let dir = dir.join(cluster);
                let health = match fs::create_dir_all(dir.join("wal"))
                    .and_then(|()| fs::create_dir_all(dir.join("base")))
                {
                    Ok(()) => Health::Up,
                    Err(e) => Health::Down(format!("{}: {e}", dir.display())),
                };
                let flushed = newest_wal_end(&dir.join("wal")).unwrap_or_default();
                (dir, Arc::new(Mutex::new(CopyShared { health, flushed })))
            })
            .collect();
        let quorum = Arc::new(Quorum {
            quorum,
            copies: states.iter().map(|(_, s)| s.clone()).collect(),
            durable: Arc::new(AtomicU64::new(0)),
            advanced: tokio::sync::Notify::new(),
        });
        quorum.recompute();
        let copies = states
            .iter()
            .enumerate()
            .map(|(index, (dir, shared))| {
                let (jobs, receiver) = mpsc::channel::<WriteJob>();
                let writer = (dir.clone(), shared.clone(), quorum.clone());
                std::thread::Builder::new()
                    .name("pgtide-copy".into())
                    .spawn(move || copy_writer(index, writer.0, writer.1, writer.2, receiver))
                    .expect("spawning a copy writer");
                Copy {
                    dir: dir.clone(),
                    shared: shared.clone(),
                    jobs,
                }
            })
            .collect();
        let view = CopiesView {
            copies: states,
            durable: quorum.durable.clone(),
        };
        CopySet {
            copies,
            sent: quorum.durable(),
            quorum,
            view,
            base_repairs: Vec::new(),
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

    /// Hands `data` (the WAL from `start`) to every copy that is up, without waiting: each
    /// copy's writer takes its jobs in order, several at a time when they queue up (one
    /// fdatasync for all of them), and the durable position moves once a quorum has them.
    pub fn send(&mut self, timeline: u32, start: Lsn, data: Vec<u8>) {
        let end = Lsn(start.0 + data.len() as u64);
        let data = Arc::new(data);
        for copy in &self.copies {
            if copy.shared.lock().expect("copy lock").health != Health::Up {
                continue;
            }
            let _ = copy.jobs.send(WriteJob {
                timeline,
                start,
                data: data.clone(),
            });
        }
        self.sent = end;
    }

    /// Waits until `end` is durable on a quorum. Below a quorum it keeps waiting (repairing
    /// copies that come back) and never returns early: the compute's commits wait meanwhile.
    pub async fn wait_durable(&mut self, end: Lsn) -> Lsn {
        loop {
            let durable = self.durable();
            if durable >= end {
                return durable;
            }
            let advanced = self.quorum.clone();
            if tokio::time::timeout(Duration::from_millis(500), advanced.advanced())
                .await
                .is_err()
            {
                self.below_quorum_check().await;
            }
        }
    }

    /// Sends and waits: the WAL from `start` is durable on a quorum when this returns.
    pub async fn write(&mut self, timeline: u32, start: Lsn, data: Vec<u8>) -> Lsn {
        let end = Lsn(start.0 + data.len() as u64);
        self.send(timeline, start, data);
        self.wait_durable(end).await
    }

    /// Called when WAL that was sent has not become durable for a while: below the quorum,
    /// says so and repairs the copies that came back.
    pub async fn below_quorum_check(&mut self) {
        if self.durable() >= self.sent {
            return;
        }
        let up = self.copies_up();
        if up < self.quorum.quorum {
            tracing::warn!(
                up,
                quorum = self.quorum.quorum,
                "WAL write below the write quorum: commits wait until copies come back"
            );
        }
        self.repair_returning_copies().await;
    }

    /// Brings back copies that are usable again: waits for in-flight writes to settle, copies
    /// the WAL files a healthy peer has and this copy lacks, then marks it up.
    pub async fn repair_returning_copies(&mut self) {
        let returning: Vec<usize> = (0..self.copies.len())
            .filter(|&i| {
                let copy = &self.copies[i];
                matches!(
                    copy.shared.lock().expect("copy lock").health,
                    Health::Down(_)
                ) && usable(&copy.dir)
            })
            .collect();
        if returning.is_empty() {
            return;
        }
        // In-flight writes must settle so that the peer's files hold everything sent (no job
        // reaches the copies meanwhile: repairing holds the set).
        let mut settled = false;
        for _ in 0..200 {
            settled = self.copies.iter().all(|c| {
                let shared = c.shared.lock().expect("copy lock");
                shared.health != Health::Up || shared.flushed >= self.sent
            });
            if settled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !settled {
            return; // a copy is slow to finish: try again later
        }
        let Some(peer) = self
            .copies
            .iter()
            .filter(|c| c.shared.lock().expect("copy lock").health == Health::Up)
            .max_by_key(|c| c.shared.lock().expect("copy lock").flushed)
        else {
            return;
        };
        let peer_dir = peer.dir.clone();
        let peer_flushed = peer.shared.lock().expect("copy lock").flushed;
        for i in returning {
            let target = self.copies[i].dir.clone();
            let source = peer_dir.clone();
            let result = tokio::task::spawn_blocking(move || repair_from(&source, &target, "wal"))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            let mut shared = self.copies[i].shared.lock().expect("copy lock");
            match result {
                Ok(files) => {
                    self.base_repairs
                        .push((peer_dir.clone(), self.copies[i].dir.clone()));
                    tracing::info!(copy = %self.copies[i].dir.display(), files, "copy's WAL repaired from a peer; it rejoins");
                    shared.health = Health::Up;
                    shared.flushed = peer_flushed;
                }
                Err(reason) => shared.health = Health::Down(reason),
            }
        }
        self.quorum.recompute();
    }

    /// The base backups that repaired copies still lack, to copy without holding the set.
    pub fn take_base_repairs(&mut self) -> Vec<(PathBuf, PathBuf)> {
        std::mem::take(&mut self.base_repairs)
    }

    /// Copy directories, for reading backups and WAL.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.copies.iter().map(|c| c.dir.clone()).collect()
    }
}

/// The CRC-32 of a whole file, read in pieces (a base backup is as large as the database).
fn file_crc32(path: &Path) -> std::io::Result<u32> {
    let mut file = File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buffer[..n]);
    }
}

/// The start of the newest base backup any of these copy directories lists (a cheap listing,
/// no checksums).
pub fn newest_backup_start(dirs: &[PathBuf]) -> Option<Lsn> {
    dirs.iter().flat_map(|dir| backup_starts(dir)).max()
}

/// Where a copy keeps the base backup that starts at `start`.
fn backup_tar(dir: &Path, start: Lsn) -> PathBuf {
    dir.join("base").join(format!("{:016X}.tar", start.0))
}

/// Copies a file and makes the copy durable.
fn copy_synced(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::copy(from, to)?;
    File::open(to)?.sync_all()
}

/// The start positions of the base backups a copy holds (`base/<start>.tar`).
fn backup_starts(dir: &Path) -> Vec<Lsn> {
    fs::read_dir(dir.join("base"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.strip_suffix(".tar")?;
            u64::from_str_radix(hex, 16).ok().map(Lsn)
        })
        .collect()
}

/// A copy directory that can be written again (it exists, is a directory, takes a file).
fn usable(dir: &Path) -> bool {
    let probe = dir.join(".probe");
    fs::create_dir_all(dir.join("wal")).is_ok()
        && fs::create_dir_all(dir.join("base")).is_ok()
        && fs::write(&probe, b"ok").is_ok()
        && fs::remove_file(&probe).is_ok()
}

/// Copies the files of `source`'s `sub` directory ("wal" or "base") that `target` lacks or
/// holds shorter.
pub fn repair_from(source: &Path, target: &Path, sub: &str) -> Result<usize, String> {
    let copy = |from: &Path, to: &Path| {
        copy_synced(from, to).map_err(|e| format!("repairing {}: {e}", to.display()))
    };
    let length = |path: &Path| fs::metadata(path).map(|m| m.len()).ok();
    let mut copied = 0;
    let entries = fs::read_dir(source.join(sub)).map_err(|e| e.to_string())?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            continue;
        }
        let from = entry.path();
        let to = target.join(sub).join(&name);
        if parse_segment_file_name(&name).is_some() {
            // Segments are full-size from their first write: what they hold shows in their
            // checksum records, one more with every write.
            if !to.exists() || read_sums(&to).len() != read_sums(&from).len() {
                copy(&from, &to)?;
                copied += 1;
            }
        } else if length(&to) != length(&from) {
            copy(&from, &to)?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// Jobs a writer joins into one write and one fdatasync, up to this many bytes.
const MAX_GROUP: usize = 8 << 20;
/// How long a spare copy gathers WAL before it syncs.
const SPARE_DELAY: Duration = Duration::from_millis(5);

/// The writer thread of one copy: takes every job that has queued up, writes them and their
/// checksum records, syncs once, then publishes its new flushed position to the quorum.
fn copy_writer(
    index: usize,
    dir: PathBuf,
    shared: Arc<Mutex<CopyShared>>,
    quorum: Arc<Quorum>,
    jobs: mpsc::Receiver<WriteJob>,
) {
    let wal_dir = dir.join("wal");
    let mut open: Option<OpenSegment> = None;
    let mut next = None;
    let mut joined: Vec<u8> = Vec::new();
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return, // the set is gone
            },
        };
        // Join the contiguous jobs that are already waiting; a spare copy (beyond the first
        // `quorum` that are up) also waits a little for more, syncing far less often: commits
        // wait for the first `quorum` copies, and the spares follow close behind.
        let (timeline, start) = (first.timeline, first.start);
        let mut group = vec![first];
        let mut end = start.0 + group[0].data.len() as u64;
        let mut bytes = group[0].data.len();
        if quorum.is_spare(index) {
            // Asleep rather than woken by every job that arrives meanwhile.
            std::thread::sleep(SPARE_DELAY);
        }
        while bytes < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) if job.timeline == timeline && job.start.0 == end => {
                    end += job.data.len() as u64;
                    bytes += job.data.len();
                    group.push(job);
                }
                Ok(job) => {
                    next = Some(job);
                    break;
                }
                Err(_) => break,
            }
        }
        if shared.lock().expect("copy lock").health != Health::Up {
            continue; // down: what it missed comes back by repair
        }
        let data: &[u8] = if group.len() == 1 {
            &group[0].data
        } else {
            joined.clear();
            for job in &group {
                joined.extend_from_slice(&job.data);
            }
            &joined
        };
        let result = write_range(&wal_dir, &mut open, timeline, start, data);
        {
            let mut shared = shared.lock().expect("copy lock");
            match result {
                Ok(()) => shared.flushed = shared.flushed.max(Lsn(end)),
                Err(e) => {
                    let reason = e.to_string();
                    tracing::warn!(copy = %dir.display(), %reason, "copy marked down");
                    shared.health = Health::Down(reason);
                    open = None;
                }
            }
        }
        quorum.recompute();
    }
}

/// The segment file a writer is filling, kept open between writes.
struct OpenSegment {
    timeline: u32,
    segment: u64,
    file: File,
    path: PathBuf,
    /// The file's inode: after each sync the path must still lead to it (a copy whose directory
    /// was deleted or replaced would otherwise go on writing into an unlinked file).
    inode: u64,
    len: u64,
    /// The slot of the next checksum record.
    next_record: u64,
    /// The WAL area is written (zeros at least) up to here; everything written lies below it.
    zeroed: u64,
}

/// Writes zeros over `[from, to)` of a file: its blocks are then allocated, so that a later
/// write there changes no block map and its fdatasync flushes data alone (no inode write).
fn zero_fill(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

impl OpenSegment {
    /// Opens (creating it full-size if need be) a segment file and finds its next record slot.
    fn open(wal_dir: &Path, timeline: u32, segment: u64) -> std::io::Result<OpenSegment> {
        let path = wal_dir.join(segment_file_name(timeline, segment));
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        let mut len = file.metadata()?.len();
        if len < SUMS_AT + SUMS_CHUNK {
            // Full size from the start, with zeroed room for records: later writes then rarely
            // change the file's size. The WAL area is zero-filled a little at a time ahead of
            // the writes (all 16 MiB at once would stall a commit).
            file.set_len(SUMS_AT)?;
            zero_fill(&file, SUMS_AT, SUMS_AT + SUMS_CHUNK)?;
            file.sync_all()?;
            len = SUMS_AT + SUMS_CHUNK;
            // A new file: its directory entry must be durable too.
            File::open(wal_dir)?.sync_all()?;
        }
        let records = sum_records(&file);
        let next_record = records.len() as u64;
        let zeroed = records
            .iter()
            .map(|r| r.offset as u64 + r.len as u64)
            .max()
            .unwrap_or(0);
        let inode = file.metadata()?.ino();
        Ok(OpenSegment {
            timeline,
            segment,
            file,
            path,
            inode,
            len,
            next_record,
            zeroed,
        })
    }
}

/// Writes WAL bytes at their place in the segment files and, in the same file, a checksum
/// record for each: one fdatasync per file makes both durable together.
fn write_range(
    wal_dir: &Path,
    open: &mut Option<OpenSegment>,
    timeline: u32,
    start: Lsn,
    data: &[u8],
) -> std::io::Result<()> {
    let mut position = start.0;
    let mut rest = data;
    while !rest.is_empty() {
        let lsn = Lsn(position);
        let room = (SEGMENT_SIZE - lsn.offset_in_segment()) as usize;
        let (chunk, tail) = rest.split_at(room.min(rest.len()));
        if !open
            .as_ref()
            .is_some_and(|o| o.timeline == timeline && o.segment == lsn.segment())
        {
            *open = None;
            *open = Some(OpenSegment::open(wal_dir, timeline, lsn.segment())?);
        }
        let segment = open.as_mut().expect("opened");
        let end = lsn.offset_in_segment() + chunk.len() as u64;
        if end > segment.zeroed {
            let ahead = (end + ZERO_AHEAD).min(SEGMENT_SIZE);
            zero_fill(&segment.file, segment.zeroed, ahead)?;
            segment.zeroed = ahead;
        }
        segment.file.write_all_at(chunk, lsn.offset_in_segment())?;
        let record = SumRecord {
            offset: lsn.offset_in_segment() as u32,
            len: chunk.len() as u32,
            crc: crc32fast::hash(chunk),
        };
        let at = SUMS_AT + segment.next_record * RECORD_SIZE;
        if at + RECORD_SIZE > segment.len {
            zero_fill(&segment.file, segment.len, segment.len + SUMS_CHUNK)?;
            segment.len += SUMS_CHUNK;
        }
        segment.file.write_all_at(&record.encode(), at)?;
        segment.file.sync_data()?;
        if fs::metadata(&segment.path)?.ino() != segment.inode {
            return Err(std::io::Error::other(format!(
                "{} was replaced under the writer",
                segment.path.display()
            )));
        }
        segment.next_record += 1;
        position += chunk.len() as u64;
        rest = tail;
    }
    Ok(())
}

/// The end of the WAL a copy holds, from its newest segment's checksum records.
fn newest_wal_end(wal_dir: &Path) -> Option<Lsn> {
    let mut segments: Vec<(u64, PathBuf)> = fs::read_dir(wal_dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            parse_segment_file_name(&name).map(|(_, segment)| (segment, entry.path()))
        })
        .collect();
    segments.sort_by_key(|s| std::cmp::Reverse(s.0));
    segments.into_iter().find_map(|(segment, path)| {
        let end = written_end(&path);
        (end > 0).then(|| Lsn(segment * SEGMENT_SIZE + end))
    })
}

/// Where a segment file's checksum records begin: after the segment's WAL, in the same file.
const SUMS_AT: u64 = SEGMENT_SIZE;
/// offset, length, CRC-32 of the bytes, CRC-32 of those 12 bytes (a slot that fails it ends the
/// records: zeros, or a record torn by a crash).
const RECORD_SIZE: u64 = 16;
/// Room for records is added this much at a time (4096 records).
const SUMS_CHUNK: u64 = 4096 * RECORD_SIZE;
/// The WAL area is zero-filled this far ahead of the writes.
const ZERO_AHEAD: u64 = 1 << 20;

#[derive(Debug, Clone, Copy)]
struct SumRecord {
    offset: u32,
    len: u32,
    crc: u32,
}

impl SumRecord {
    fn encode(&self) -> [u8; RECORD_SIZE as usize] {
        let mut out = [0u8; RECORD_SIZE as usize];
        out[0..4].copy_from_slice(&self.offset.to_le_bytes());
        out[4..8].copy_from_slice(&self.len.to_le_bytes());
        out[8..12].copy_from_slice(&self.crc.to_le_bytes());
        let check = crc32fast::hash(&out[0..12]);
        out[12..16].copy_from_slice(&check.to_le_bytes());
        out
    }

    fn decode(slot: &[u8]) -> Option<SumRecord> {
        let word = |i: usize| u32::from_le_bytes(slot[i..i + 4].try_into().expect("4 bytes"));
        (crc32fast::hash(&slot[0..12]) == word(12)).then(|| SumRecord {
            offset: word(0),
            len: word(4),
            crc: word(8),
        })
    }
}

/// The checksum records of a segment file, in the order they were written.
fn sum_records(file: &File) -> Vec<SumRecord> {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = vec![0u8; len.saturating_sub(SUMS_AT) as usize];
    if file.read_exact_at(&mut bytes, SUMS_AT).is_err() {
        return Vec::new();
    }
    bytes
        .chunks_exact(RECORD_SIZE as usize)
        .map_while(SumRecord::decode)
        .collect()
}

fn read_sums(path: &Path) -> Vec<SumRecord> {
    File::open(path)
        .map(|f| sum_records(&f))
        .unwrap_or_default()
}

/// Where the WAL written into a segment file ends (0 when nothing is recorded).
pub fn written_end(segment: &Path) -> u64 {
    read_sums(segment)
        .iter()
        .map(|r| r.offset as u64 + r.len as u64)
        .max()
        .unwrap_or(0)
}

/// Reading the copies back, for a rebuild.
pub mod read {
    use super::*;

    /// A base backup found in the copies.
    #[derive(Debug, Clone)]
    pub struct Backup {
        pub start: Lsn,
        /// The WAL position a restore must reach (not recorded by builds before it was).
        pub end: Option<Lsn>,
        pub tar: PathBuf,
    }

    /// Copies that can be read now; a rebuild needs at least 3 (any 3 overlap every write quorum
    /// of 4 out of 6).
    pub fn readable(dirs: &[PathBuf]) -> Vec<PathBuf> {
        dirs.iter()
            .filter(|d| d.join("wal").is_dir())
            .cloned()
            .collect()
    }

    /// The newest base backup whose checksum holds, in any copy.
    pub fn newest_backup(dirs: &[PathBuf]) -> Option<Backup> {
        let mut candidates: Vec<(Lsn, PathBuf)> = dirs
            .iter()
            .flat_map(|dir| {
                super::backup_starts(dir)
                    .into_iter()
                    .map(|start| (start, super::backup_tar(dir, start)))
            })
            .collect();
        candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
        candidates.into_iter().find_map(|(start, tar)| {
            let sidecar = fs::read_to_string(tar.with_extension("tar.crc32")).ok()?;
            let mut lines = sidecar.lines();
            let expected = lines.next()?.trim().to_string();
            let end = lines.next().and_then(|l| Lsn::parse(l.trim()));
            let sum = super::file_crc32(&tar).ok()?;
            if format!("{sum:08x}") == expected {
                Some(Backup { start, end, tar })
            } else {
                tracing::warn!(tar = %tar.display(), "base backup fails its checksum; trying another");
                None
            }
        })
    }

    /// Assembles every WAL segment of `timeline` from `start`'s segment on into `pg_wal`, each
    /// range taken from a copy where its checksum holds. Returns the end of the WAL written.
    pub fn restore_wal(
        dirs: &[PathBuf],
        timeline: u32,
        start: Lsn,
        pg_wal: &Path,
    ) -> Result<Lsn, String> {
        let mut segments: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
        for dir in dirs {
            for entry in fs::read_dir(dir.join("wal"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some((tli, segment)) = parse_segment_file_name(&name) {
                    if tli == timeline && segment >= start.segment() {
                        segments.entry(segment).or_default().push(entry.path());
                    }
                }
            }
        }
        let mut end = start;
        let mut expected_segment = start.segment();
        for (segment, files) in segments {
            if segment != expected_segment {
                return Err(format!(
                    "WAL segment {} is missing from every copy",
                    segment_file_name(timeline, expected_segment)
                ));
            }
            let (bytes, verified_end) = assemble_segment(&files)?;
            let target = pg_wal.join(segment_file_name(timeline, segment));
            let mut file = File::create(&target).map_err(|e| e.to_string())?;
            file.write_all(&bytes).map_err(|e| e.to_string())?;
            file.set_len(SEGMENT_SIZE).map_err(|e| e.to_string())?;
            file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
            file.sync_all().map_err(|e| e.to_string())?;
            end = Lsn(segment * SEGMENT_SIZE + verified_end);
            expected_segment = segment + 1;
            if verified_end < SEGMENT_SIZE {
                break; // the last segment: WAL ends here
            }
        }
        Ok(end)
    }

    /// One segment from its copies: every recorded range from a copy whose bytes match the
    /// range's checksum. Returns the bytes and the end of the contiguous verified prefix.
    fn assemble_segment(files: &[PathBuf]) -> Result<(Vec<u8>, u64), String> {
        let mut ranges: BTreeMap<u32, (u32, Vec<u8>)> = BTreeMap::new();
        let mut corrupt = 0;
        for path in files {
            let Ok(file) = File::open(path) else { continue };
            let sums = sum_records(&file);
            for record in sums {
                if ranges
                    .get(&record.offset)
                    .is_some_and(|(len, _)| *len >= record.len)
                {
                    continue;
                }
                let mut bytes = vec![0u8; record.len as usize];
                if file.read_exact_at(&mut bytes, record.offset as u64).is_ok()
                    && crc32fast::hash(&bytes) == record.crc
                {
                    ranges.insert(record.offset, (record.len, bytes));
                } else {
                    corrupt += 1;
                }
            }
        }
        if corrupt > 0 {
            tracing::warn!(segment = %files[0].display(), corrupt, "ranges failing their checksum were read from other copies");
        }
        let mut segment = Vec::new();
        let mut end = 0u64;
        for (offset, (_, bytes)) in ranges {
            if offset as u64 > end {
                if end == 0 && segment.is_empty() {
                    // The stream began inside this segment (the first one): leave zeros before it.
                    segment.resize(offset as usize, 0);
                    end = offset as u64;
                } else {
                    break; // a hole no copy can fill: the WAL ends before it
                }
            }
            let overlap = (end - offset as u64) as usize;
            if overlap < bytes.len() {
                segment.extend_from_slice(&bytes[overlap..]);
                end = offset as u64 + bytes.len() as u64;
            }
        }
        Ok((segment, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn quorum_writes_survive_two_lost_copies_and_rebuild_reads_around_corruption() {
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..6).map(|i| root.path().join(format!("c{i}"))).collect();
        let mut set = CopySet::open(&dirs, "main", 4);
        let start = Lsn(3 * SEGMENT_SIZE + 100);
        let first: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            set.write(1, start, first.clone()).await,
            Lsn(start.0 + 5000)
        );
        // Two copies become unusable: writes go on with four.
        for dir in &dirs[..2] {
            fs::remove_dir_all(dir).unwrap();
            fs::write(dir, b"not a directory").unwrap();
        }
        let second = vec![7u8; 3000];
        let end = set.write(1, Lsn(start.0 + 5000), second.clone()).await;
        assert_eq!(end, Lsn(start.0 + 8000));
        assert_eq!(set.copies_up(), 4);
        // Corrupt one copy's bytes: the rebuild reads that range elsewhere.
        let segment = segment_file_name(1, 3);
        let victim = dirs[2].join("main/wal").join(&segment);
        let file = OpenOptions::new().write(true).open(&victim).unwrap();
        file.write_all_at(b"garbage", 200).unwrap();
        let pg_wal = root.path().join("pg_wal");
        fs::create_dir_all(&pg_wal).unwrap();
        let copy_dirs: Vec<PathBuf> = dirs.iter().map(|d| d.join("main")).collect();
        let restored_end = read::restore_wal(
            &read::readable(&copy_dirs),
            1,
            Lsn(3 * SEGMENT_SIZE),
            &pg_wal,
        )
        .unwrap();
        assert_eq!(restored_end, end);
        let bytes = fs::read(pg_wal.join(&segment)).unwrap();
        assert_eq!(bytes.len() as u64, SEGMENT_SIZE);
        assert_eq!(&bytes[100..5100], &first[..]);
        assert_eq!(&bytes[5100..8100], &second[..]);
        // The lost copies come back and are repaired to the same content.
        for dir in &dirs[..2] {
            fs::remove_file(dir).unwrap();
        }
        set.repair_returning_copies().await;
        assert_eq!(set.copies_up(), 6);
        let repaired = fs::read(dirs[0].join("main/wal").join(&segment)).unwrap();
        assert_eq!(&repaired[100..8100], &bytes[100..8100]);
    }
}
