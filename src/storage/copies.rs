//! The six copies of a cluster's WAL and base backups, and the write quorum over them.
//!
//! Each copy is a directory (`[storage] copies`, zone by zone) holding, per cluster,
//! `wal/<segment>` files exactly as Postgres names and lays them out, plus `wal/<segment>.sums`:
//! one record per write (offset, length, CRC-32), so that a corrupted range in one copy is found
//! and read from another. Each copy has a writer thread of its own, so the six `fdatasync`s of a
//! batch run in parallel; [`CopySet::write`] returns once `write_quorum` copies have made the
//! batch durable, and never before. A copy that fails is marked down with the reason; writes go
//! on while a quorum is up and wait below it. A copy that becomes usable again is repaired from a
//! peer (whole files, sums included) and rejoins.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
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
    done: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
}

pub struct CopySet {
    copies: Vec<Copy>,
    quorum: usize,
    durable: Lsn,
    /// The end of the last batch handed to the copies.
    sent: Lsn,
    view: CopiesView,
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
}

impl CopySet {
    /// Opens the copies for one cluster (creating their directories) and starts their writers.
    pub fn open(dirs: &[PathBuf], cluster: &str, quorum: usize) -> CopySet {
        let copies = dirs
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
                let shared = Arc::new(Mutex::new(CopyShared { health, flushed }));
                let (jobs, receiver) = mpsc::channel::<WriteJob>();
                let writer_dir = dir.clone();
                let writer_shared = shared.clone();
                std::thread::Builder::new()
                    .name("pgtide-copy".into())
                    .spawn(move || copy_writer(writer_dir, writer_shared, receiver))
                    .expect("spawning a copy writer");
                Copy { dir, shared, jobs }
            })
            .collect::<Vec<_>>();
        let view = CopiesView {
            copies: copies
                .iter()
                .map(|c| (c.dir.clone(), c.shared.clone()))
                .collect(),
            durable: Arc::new(AtomicU64::new(0)),
        };
        let mut set = CopySet {
            copies,
            quorum,
            durable: Lsn(0),
            sent: Lsn(0),
            view,
        };
        set.durable = set.quorum_position();
        set.sent = set.durable;
        set.view.durable.store(set.durable.0, Ordering::Release);
        set
    }

    /// The highest position that `quorum` copies hold.
    fn quorum_position(&self) -> Lsn {
        let mut positions: Vec<Lsn> = self
            .copies
            .iter()
            .map(|c| c.shared.lock().expect("copy lock").flushed)
            .collect();
        positions.sort_unstable_by(|a, b| b.cmp(a));
        positions
            .get(self.quorum.saturating_sub(1))
            .copied()
            .unwrap_or_default()
    }

    pub fn durable(&self) -> Lsn {
        self.durable
    }

    pub fn copies_up(&self) -> usize {
        self.view.copies_up()
    }

    pub fn view(&self) -> CopiesView {
        self.view.clone()
    }

    /// Writes `data` (the WAL from `start`) to every copy that is up and returns once a quorum
    /// has made it durable. Below a quorum it keeps trying (repairing copies that come back)
    /// and never returns early: the compute's commits wait meanwhile.
    pub async fn write(&mut self, timeline: u32, start: Lsn, data: Vec<u8>) -> Lsn {
        let end = Lsn(start.0 + data.len() as u64);
        let data = Arc::new(data);
        loop {
            let (done, mut acks) = tokio::sync::mpsc::unbounded_channel();
            let mut sent_to = 0;
            for copy in &self.copies {
                if copy.shared.lock().expect("copy lock").health != Health::Up {
                    continue;
                }
                let job = WriteJob {
                    timeline,
                    start,
                    data: data.clone(),
                    done: done.clone(),
                };
                if copy.jobs.send(job).is_ok() {
                    sent_to += 1;
                }
            }
            drop(done);
            self.sent = end;
            let mut ok = 0;
            while ok < self.quorum {
                match acks.recv().await {
                    Some(Ok(())) => ok += 1,
                    Some(Err(_)) => {} // the copy marked itself down
                    None => break,     // every copy answered
                }
            }
            if ok >= self.quorum {
                self.durable = self.durable.max(end);
                self.view.durable.store(self.durable.0, Ordering::Release);
                return self.durable;
            }
            tracing::warn!(
                up = self.copies_up(),
                sent_to,
                quorum = self.quorum,
                "WAL write below the write quorum: commits wait until copies come back"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.repair_returning_copies().await;
            // Copies that already hold this batch answer at once the next time (idempotent).
        }
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
        // In-flight writes must settle so that the peer's files are a consistent prefix.
        for _ in 0..200 {
            let settled = self.copies.iter().all(|c| {
                let shared = c.shared.lock().expect("copy lock");
                shared.health != Health::Up || shared.flushed >= self.sent
            });
            if settled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
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
            let result = tokio::task::spawn_blocking(move || repair_from(&source, &target))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            let mut shared = self.copies[i].shared.lock().expect("copy lock");
            match result {
                Ok(files) => {
                    tracing::info!(copy = %self.copies[i].dir.display(), files, "copy repaired from a peer; it rejoins");
                    shared.health = Health::Up;
                    shared.flushed = peer_flushed;
                }
                Err(reason) => shared.health = Health::Down(reason),
            }
        }
    }

    /// Copy directories, for reading backups and WAL.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.copies.iter().map(|c| c.dir.clone()).collect()
    }

    /// Copies a finished base backup (a tar file) into every copy that is up, with its checksum.
    pub fn store_backup(&self, tar: &Path, start: Lsn) -> Result<usize, String> {
        let bytes = fs::read(tar).map_err(|e| format!("reading {}: {e}", tar.display()))?;
        let sum = crc32fast::hash(&bytes);
        let name = format!("{:016X}", start.0);
        let mut stored = 0;
        for copy in &self.copies {
            if copy.shared.lock().expect("copy lock").health != Health::Up {
                continue;
            }
            let write = || -> std::io::Result<()> {
                let dir = copy.dir.join("base");
                let tmp = dir.join(format!("{name}.tar.tmp"));
                let mut file = File::create(&tmp)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
                fs::rename(&tmp, dir.join(format!("{name}.tar")))?;
                fs::write(
                    dir.join(format!("{name}.tar.crc32")),
                    format!("{sum:08x}\n"),
                )?;
                File::open(&dir)?.sync_all()
            };
            match write() {
                Ok(()) => stored += 1,
                Err(e) => {
                    copy.shared.lock().expect("copy lock").health =
                        Health::Down(format!("storing a base backup: {e}"))
                }
            }
        }
        Ok(stored)
    }
}

/// A copy directory that can be written again (it exists, is a directory, takes a file).
fn usable(dir: &Path) -> bool {
    let probe = dir.join(".probe");
    fs::create_dir_all(dir.join("wal")).is_ok()
        && fs::create_dir_all(dir.join("base")).is_ok()
        && fs::write(&probe, b"ok").is_ok()
        && fs::remove_file(&probe).is_ok()
}

/// Copies the WAL files (and sums) that `source` has and `target` lacks or holds shorter.
fn repair_from(source: &Path, target: &Path) -> Result<usize, String> {
    let copy = |from: &Path, to: &Path| -> Result<(), String> {
        fs::copy(from, to).map_err(|e| format!("repairing {}: {e}", to.display()))?;
        File::open(to)
            .and_then(|f| f.sync_all())
            .map_err(|e| e.to_string())
    };
    let length = |path: &Path| fs::metadata(path).map(|m| m.len()).ok();
    let mut copied = 0;
    for sub in ["wal", "base"] {
        let entries = fs::read_dir(source.join(sub)).map_err(|e| e.to_string())?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") || name.ends_with(".sums") {
                continue; // sums travel with their segment
            }
            let from = entry.path();
            let to = target.join(sub).join(&name);
            if parse_segment_file_name(&name).is_some() {
                // Segments are full-size from their first write: what they hold shows in the
                // length of their sums, which grows with every write.
                let (from_sums, to_sums) = (wal_sums(&from), wal_sums(&to));
                if length(&to_sums) != length(&from_sums) || !to.exists() {
                    copy(&from, &to)?;
                    copy(&from_sums, &to_sums)?;
                    copied += 1;
                }
            } else if length(&to) != length(&from) {
                copy(&from, &to)?;
                copied += 1;
            }
        }
    }
    Ok(copied)
}

fn wal_sums(segment: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sums", segment.display()))
}

/// The writer thread of one copy.
fn copy_writer(dir: PathBuf, shared: Arc<Mutex<CopyShared>>, jobs: mpsc::Receiver<WriteJob>) {
    for job in jobs {
        let end = Lsn(job.start.0 + job.data.len() as u64);
        let result = write_range(&dir.join("wal"), job.timeline, job.start, &job.data)
            .map_err(|e| e.to_string());
        {
            let mut shared = shared.lock().expect("copy lock");
            match &result {
                Ok(()) => shared.flushed = shared.flushed.max(end),
                Err(reason) => {
                    tracing::warn!(copy = %dir.display(), %reason, "copy marked down");
                    shared.health = Health::Down(reason.clone());
                }
            }
        }
        let _ = job.done.send(result);
    }
}

/// Writes WAL bytes at their place in the segment files, records their checksums, syncs both.
fn write_range(wal_dir: &Path, timeline: u32, start: Lsn, data: &[u8]) -> std::io::Result<()> {
    let mut position = start.0;
    let mut rest = data;
    while !rest.is_empty() {
        let lsn = Lsn(position);
        let room = (SEGMENT_SIZE - lsn.offset_in_segment()) as usize;
        let (chunk, tail) = rest.split_at(room.min(rest.len()));
        let name = segment_file_name(timeline, lsn.segment());
        let segment = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(wal_dir.join(&name))?;
        if segment.metadata()?.len() < SEGMENT_SIZE {
            // Full size from the start, as Postgres does: later writes then change no file size,
            // and each fdatasync has only data to flush.
            segment.set_len(SEGMENT_SIZE)?;
        }
        segment.write_all_at(chunk, lsn.offset_in_segment())?;
        let mut record = Vec::with_capacity(12);
        record.extend_from_slice(&(lsn.offset_in_segment() as u32).to_le_bytes());
        record.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(chunk).to_le_bytes());
        let mut sums = OpenOptions::new()
            .create(true)
            .append(true)
            .open(wal_dir.join(format!("{name}.sums")))?;
        sums.write_all(&record)?;
        segment.sync_data()?;
        sums.sync_data()?;
        position += chunk.len() as u64;
        rest = tail;
    }
    Ok(())
}

/// The end of the WAL a copy holds, from its newest segment's sums.
fn newest_wal_end(wal_dir: &Path) -> Option<Lsn> {
    let mut newest: Option<(u64, String)> = None;
    for entry in fs::read_dir(wal_dir).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((_, segment)) = parse_segment_file_name(&name) {
            if newest.as_ref().is_none_or(|(s, _)| segment > *s) {
                newest = Some((segment, name));
            }
        }
    }
    let (segment, name) = newest?;
    let sums = read_sums(&wal_dir.join(format!("{name}.sums")));
    let end = sums.iter().map(|r| r.offset as u64 + r.len as u64).max()?;
    Some(Lsn(segment * SEGMENT_SIZE + end))
}

#[derive(Debug, Clone, Copy)]
struct SumRecord {
    offset: u32,
    len: u32,
    crc: u32,
}

fn read_sums(path: &Path) -> Vec<SumRecord> {
    let mut bytes = Vec::new();
    if File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .is_err()
    {
        return Vec::new();
    }
    bytes
        .chunks_exact(12)
        .map(|r| SumRecord {
            offset: u32::from_le_bytes(r[0..4].try_into().expect("4 bytes")),
            len: u32::from_le_bytes(r[4..8].try_into().expect("4 bytes")),
            crc: u32::from_le_bytes(r[8..12].try_into().expect("4 bytes")),
        })
        .collect()
}

/// Reading the copies back, for a rebuild.
pub mod read {
    use super::*;

    /// A base backup found in the copies.
    #[derive(Debug, Clone)]
    pub struct Backup {
        pub start: Lsn,
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
        let mut candidates: Vec<(Lsn, PathBuf)> = Vec::new();
        for dir in dirs {
            for entry in fs::read_dir(dir.join("base"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(hex) = name.strip_suffix(".tar") {
                    if let Ok(start) = u64::from_str_radix(hex, 16) {
                        candidates.push((Lsn(start), entry.path()));
                    }
                }
            }
        }
        candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
        candidates.into_iter().find_map(|(start, tar)| {
            let expected = fs::read_to_string(tar.with_extension("tar.crc32")).ok()?;
            let bytes = fs::read(&tar).ok()?;
            if format!("{:08x}", crc32fast::hash(&bytes)) == expected.trim() {
                Some(Backup { start, tar })
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
            let sums = read_sums(&PathBuf::from(format!("{}.sums", path.display())));
            let Ok(file) = File::open(path) else { continue };
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
