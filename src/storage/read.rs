//! Reading the copies back, for a rebuild or a branch.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::backups::{backup_starts, backup_tar, file_crc32};
use super::identity::Identity;
use super::repair::{identity_of, Refusal};
use super::segment::sum_records;
use super::wal::{parse_segment_file_name, segment_file_name, Lsn, SEGMENT_SIZE};

/// A copy a rebuild reads: its directory, and how far its WAL belongs to the set's history
/// (a copy that missed a stream start holds WAL beyond it that may differ from the others').
#[derive(Debug, Clone)]
pub struct ReadCopy {
    pub dir: PathBuf,
    pub trusted_end: Lsn,
}

/// A base backup found in the copies.
#[derive(Debug, Clone)]
pub struct Backup {
    pub start: Lsn,
    /// The WAL position a restore must reach (not recorded by builds before it was).
    pub end: Option<Lsn>,
    pub tar: PathBuf,
}

/// Copies that can be read now and hold the set's WAL (another cluster's never is); a rebuild
/// needs at least 3 (any 3 overlap every write quorum of 4 out of 6).
pub fn readable(dirs: &[PathBuf], set: Option<&Identity>) -> Vec<ReadCopy> {
    dirs.iter()
        .filter(|d| d.join("wal").is_dir())
        .filter_map(|dir| {
            let own = match identity_of(dir, set) {
                Ok(own) => own,
                Err(Refusal(reason)) => {
                    tracing::warn!(copy = %dir.display(), %reason, "not read for a rebuild");
                    return None;
                }
            };
            let generation = own.map_or(0, |own| own.generation);
            let trusted_end = set.map_or(Lsn(u64::MAX), |set| {
                set.trusted_end(generation, Lsn(u64::MAX))
            });
            Some(ReadCopy {
                dir: dir.clone(),
                trusted_end,
            })
        })
        .collect()
}

/// Copies read at once that any write quorum of 4 out of 6 overlaps.
pub const READ_QUORUM: usize = 3;

/// [`readable`], or why there are too few to trust for `what` ("a rebuild", "a branch", …):
/// what a write quorum acknowledged is in at least one of any [`READ_QUORUM`] copies.
pub fn readable_quorum(
    dirs: &[PathBuf],
    set: Option<&Identity>,
    what: &str,
) -> Result<Vec<ReadCopy>, String> {
    let readable = readable(dirs, set);
    if readable.len() < READ_QUORUM {
        return Err(format!(
            "only {} of {} copies are readable; {what} needs {READ_QUORUM} (any {READ_QUORUM} \
             overlap every write quorum)",
            readable.len(),
            dirs.len()
        ));
    }
    Ok(readable)
}

/// The newest base backup whose checksum holds, in any copy.
/// A backup is only taken from a copy whose WAL up to the backup's end is the set's.
pub fn newest_backup(copies: &[ReadCopy]) -> Option<Backup> {
    let mut candidates: Vec<(Lsn, PathBuf, Lsn)> = copies
        .iter()
        .flat_map(|copy| {
            backup_starts(&copy.dir)
                .into_iter()
                .map(|start| (start, backup_tar(&copy.dir, start), copy.trusted_end))
        })
        .collect();
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    candidates
        .into_iter()
        .find_map(|(start, tar, trusted_end)| verified(start, tar, trusted_end))
}

/// The base backup that starts at `start`, from the first copy where its checksum holds (a
/// branch restores from the backup its target needs, not always the newest).
pub fn backup_at(copies: &[ReadCopy], start: Lsn) -> Option<Backup> {
    copies
        .iter()
        .find_map(|copy| verified(start, backup_tar(&copy.dir, start), copy.trusted_end))
}

/// A backup's tar if its checksum holds and its end is within the copy's trusted WAL.
fn verified(start: Lsn, tar: PathBuf, trusted_end: Lsn) -> Option<Backup> {
    let sidecar = fs::read_to_string(tar.with_extension("tar.crc32")).ok()?;
    let mut lines = sidecar.lines();
    let expected = lines.next()?.trim().to_string();
    let end = lines.next().and_then(|l| Lsn::parse(l.trim()));
    if end.unwrap_or(start) > trusted_end {
        return None; // taken after a stream start this copy missed
    }
    let sum = file_crc32(&tar).ok()?;
    if format!("{sum:08x}") == expected {
        Some(Backup { start, end, tar })
    } else {
        tracing::warn!(tar = %tar.display(), "base backup fails its checksum; trying another");
        None
    }
}

/// Where the WAL a copy holds ends: its newest segment's start plus the end of the furthest
/// range its checksum records cover.
pub fn wal_end(dir: &Path) -> Option<Lsn> {
    let newest = fs::read_dir(dir.join("wal"))
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            parse_segment_file_name(&name).map(|(_, segment)| (segment, entry.path()))
        })
        .max_by_key(|(segment, _)| *segment)?;
    let file = File::open(&newest.1).ok()?;
    let end = sum_records(&file)
        .iter()
        .map(|record| record.offset as u64 + record.len as u64)
        .max()?;
    Some(Lsn(newest.0 * SEGMENT_SIZE + end))
}

/// The furthest position that at least `quorum` of these copies hold in their files: what a
/// write quorum acknowledged is below it. Read from the files, so that it is current even for
/// a caller that has only a published (and a tick old) durable position.
pub fn held_by_quorum(dirs: &[PathBuf], quorum: usize) -> Option<Lsn> {
    let mut ends: Vec<Lsn> = dirs.iter().filter_map(|dir| wal_end(dir)).collect();
    ends.sort_by_key(|end| std::cmp::Reverse(*end));
    ends.get(quorum.max(1) - 1).copied()
}

/// Assembles every WAL segment of `timeline` from `start`'s segment on into `pg_wal`, each
/// range taken from a copy where its checksum holds. Returns the end of the WAL written.
pub fn restore_wal(
    copies: &[ReadCopy],
    timeline: u32,
    start: Lsn,
    pg_wal: &Path,
) -> Result<Lsn, String> {
    let mut segments: BTreeMap<u64, Vec<(PathBuf, u64)>> = BTreeMap::new();
    for copy in copies {
        for entry in fs::read_dir(copy.dir.join("wal"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((tli, segment)) = parse_segment_file_name(&name) {
                let base = segment * SEGMENT_SIZE;
                if tli == timeline && segment >= start.segment() && copy.trusted_end.0 > base {
                    let cap = (copy.trusted_end.0 - base).min(SEGMENT_SIZE);
                    segments
                        .entry(segment)
                        .or_default()
                        .push((entry.path(), cap));
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
/// range's checksum, and only below where that copy's WAL is the set's (`cap`, an offset in
/// the segment). Returns the bytes and the end of the contiguous verified prefix.
fn assemble_segment(files: &[(PathBuf, u64)]) -> Result<(Vec<u8>, u64), String> {
    let mut ranges: BTreeMap<u32, (u32, Vec<u8>)> = BTreeMap::new();
    let mut corrupt = 0;
    for (path, cap) in files {
        let Ok(file) = File::open(path) else { continue };
        let sums = sum_records(&file);
        for record in sums {
            if record.offset as u64 >= *cap {
                continue;
            }
            let wanted = (*cap - record.offset as u64).min(record.len as u64) as u32;
            if ranges
                .get(&record.offset)
                .is_some_and(|(len, _)| *len >= wanted)
            {
                continue;
            }
            let mut bytes = vec![0u8; record.len as usize];
            if file.read_exact_at(&mut bytes, record.offset as u64).is_ok()
                && crc32fast::hash(&bytes) == record.crc
            {
                bytes.truncate(wanted as usize);
                ranges.insert(record.offset, (bytes.len() as u32, bytes));
            } else {
                corrupt += 1;
            }
        }
    }
    if corrupt > 0 {
        tracing::warn!(segment = %files[0].0.display(), corrupt, "ranges failing their checksum were read from other copies");
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

/// The timeline a base backup starts on, from its `backup_label` (1 when it does not say).
pub fn start_timeline(backup_label: &str) -> u32 {
    backup_label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE: "))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1)
}
