//! The segment file format of a copy: `wal/<segment>` files whose first 16 MiB are the segment
//! exactly as Postgres names and lays it out, followed by one checksum record per write (offset,
//! length, CRC-32), so that a corrupted range in one copy is found and read from another. Data
//! and record share the file, so one `fdatasync` makes both durable.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::private::{create_private, private_options};
use super::wal::{parse_segment_file_name, segment_file_name, Lsn, SEGMENT_SIZE};

/// The segment file a writer is filling, kept open between writes.
pub(super) struct OpenSegment {
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
        let file = private_options()
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

/// Writes WAL (`parts`, contiguous from `start`) at its place in the segment files and, in the
/// same file, a checksum record for each part: one fdatasync per file makes both durable
/// together.
pub(super) fn write_parts(
    wal_dir: &Path,
    open: &mut Option<OpenSegment>,
    timeline: u32,
    start: Lsn,
    parts: &[&[u8]],
) -> std::io::Result<()> {
    let mut position = start.0;
    let mut unsynced = false;
    for part in parts {
        let mut rest = *part;
        while !rest.is_empty() {
            let lsn = Lsn(position);
            let room = (SEGMENT_SIZE - lsn.offset_in_segment()) as usize;
            let (chunk, tail) = rest.split_at(room.min(rest.len()));
            if !open
                .as_ref()
                .is_some_and(|o| o.timeline == timeline && o.segment == lsn.segment())
            {
                if std::mem::take(&mut unsynced) {
                    open.as_ref().expect("a segment written").sync()?;
                }
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
            segment.next_record += 1;
            unsynced = true;
            position += chunk.len() as u64;
            rest = tail;
        }
    }
    if unsynced {
        open.as_ref().expect("a segment written").sync()?;
    }
    Ok(())
}

impl OpenSegment {
    /// Makes what was written durable, and checks the path still leads to this file.
    fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()?;
        if fs::metadata(&self.path)?.ino() != self.inode {
            return Err(std::io::Error::other(format!(
                "{} was replaced under the writer",
                self.path.display()
            )));
        }
        Ok(())
    }
}

/// The end of the WAL a copy holds, from its newest segment's checksum records.
pub(super) fn newest_wal_end(wal_dir: &Path) -> Option<Lsn> {
    list_segments(wal_dir).into_iter().rev().find_map(|s| {
        let (_, end) = extent(&read_sums(&s.path))?;
        Some(Lsn(s.segment * SEGMENT_SIZE + end))
    })
}

/// A segment file of a copy.
#[derive(Debug, Clone)]
pub(super) struct SegmentFile {
    pub(super) segment: u64,
    pub(super) timeline: u32,
    pub(super) path: PathBuf,
}

/// The segment files of a WAL directory, by segment number (then timeline).
pub(super) fn list_segments(wal_dir: &Path) -> Vec<SegmentFile> {
    let mut segments: Vec<SegmentFile> = fs::read_dir(wal_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            parse_segment_file_name(&name).map(|(timeline, segment)| SegmentFile {
                segment,
                timeline,
                path: entry.path(),
            })
        })
        .collect();
    segments.sort_by_key(|s| (s.segment, s.timeline));
    segments
}

/// The WAL a segment file's records describe: from the lowest recorded offset, as far as the
/// records are contiguous (offsets in the segment).
pub(super) fn extent(records: &[SumRecord]) -> Option<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = records
        .iter()
        .map(|r| (r.offset as u64, r.offset as u64 + r.len as u64))
        .collect();
    ranges.sort_unstable();
    let (first, mut end) = *ranges.first()?;
    for (offset, range_end) in ranges {
        if offset > end {
            break;
        }
        end = end.max(range_end);
    }
    Some((first, end))
}

/// The WAL of a segment file from `from` towards `to` (offsets in the segment), in contiguous
/// pieces, each checked against its record's checksum. Stops at a gap, or at a range that fails
/// its checksum in every record that covers it.
pub(super) fn read_verified(
    path: &Path,
    from: u64,
    to: u64,
) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    let file = File::open(path)?;
    let records = sum_records(&file);
    let mut pieces = Vec::new();
    let mut at = from;
    while at < to {
        let mut covering: Vec<&SumRecord> = records
            .iter()
            .filter(|r| (r.offset as u64) <= at && at < r.offset as u64 + r.len as u64)
            .collect();
        covering.sort_by_key(|r| std::cmp::Reverse(r.offset as u64 + r.len as u64));
        let piece = covering.into_iter().find_map(|r| {
            let mut bytes = vec![0u8; r.len as usize];
            file.read_exact_at(&mut bytes, r.offset as u64).ok()?;
            (crc32fast::hash(&bytes) == r.crc).then_some((r.offset as u64, bytes))
        });
        let Some((offset, mut bytes)) = piece else {
            break;
        };
        let end = (offset + bytes.len() as u64).min(to);
        bytes.truncate((end - offset) as usize);
        bytes.drain(..(at - offset) as usize);
        pieces.push((at, bytes));
        at = end;
    }
    Ok(pieces)
}

/// Records are written for at most this many bytes each when a file is written whole, so that
/// a reader verifies a piece without reading much more than it needs.
const PIECE: usize = 1 << 20;

/// Writes a new segment file at `path` holding `pieces` (offset, bytes) with their checksum
/// records, and makes it durable (not its directory entry: see [`install_segment`]).
fn write_segment_file(path: &Path, pieces: &[(u64, Vec<u8>)]) -> std::io::Result<()> {
    let file = create_private(path)?;
    let mut records = Vec::new();
    for (offset, bytes) in pieces {
        for (i, chunk) in bytes.chunks(PIECE).enumerate() {
            let at = offset + (i * PIECE) as u64;
            file.write_all_at(chunk, at)?;
            records.push(SumRecord {
                offset: at as u32,
                len: chunk.len() as u32,
                crc: crc32fast::hash(chunk),
            });
        }
    }
    let room = (records.len() as u64 * RECORD_SIZE)
        .div_ceil(SUMS_CHUNK)
        .max(1)
        * SUMS_CHUNK;
    file.set_len(SUMS_AT + room)?;
    let mut area = Vec::with_capacity(records.len() * RECORD_SIZE as usize);
    for record in &records {
        area.extend_from_slice(&record.encode());
    }
    file.write_all_at(&area, SUMS_AT)?;
    file.sync_all()
}

/// Puts a segment file holding `pieces` in place atomically: written whole under a temporary
/// name, synced, renamed over `path`, and the directory synced. A reader, or a crash, sees the
/// old file or the new one, never a part of it.
pub(super) fn install_segment(path: &Path, pieces: &[(u64, Vec<u8>)]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let result = write_segment_file(&tmp, pieces).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a copy's WAL at and beyond `at`: later segment files are deleted and the one that
/// holds `at` is rewritten to end there (atomically). Returns whether anything was removed.
pub(super) fn truncate_wal(wal_dir: &Path, at: Lsn) -> std::io::Result<bool> {
    let mut changed = false;
    for entry in fs::read_dir(wal_dir)?.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            fs::remove_file(entry.path())?;
        }
    }
    for segment in list_segments(wal_dir) {
        if segment.segment < at.segment() {
            continue;
        }
        let keep = if segment.segment == at.segment() {
            at.offset_in_segment()
        } else {
            0
        };
        let Some((first, end)) = extent(&read_sums(&segment.path)) else {
            if keep == 0 {
                fs::remove_file(&segment.path)?;
                changed = true;
            }
            continue;
        };
        if end <= keep {
            continue;
        }
        if keep <= first {
            fs::remove_file(&segment.path)?;
        } else if !cut_records(&segment.path, keep)? {
            let pieces = read_verified(&segment.path, first, keep)?;
            install_segment(&segment.path, &pieces)?;
        }
        changed = true;
    }
    if changed {
        sync_dir(wal_dir)?;
    }
    Ok(changed)
}

/// Ends a segment file's WAL at `keep` (an offset) in place, by its checksum records alone:
/// the records from the first one that reaches beyond `keep` are cleared, and that one comes
/// back trimmed to end at `keep` (its range checked first, then summed again). The WAL bytes
/// beyond stay in the file but no record covers them, so nothing reads or counts them, and the
/// writer zero-fills over them as it goes. Every state a crash can leave is a prefix of the
/// records (a cleared slot ends the list), each covering bytes that are there: the file then
/// holds at most what it held, never a range its record does not sum to. Rewriting the segment
/// whole instead costs up to 16 MiB read, written and synced per copy at every stream start.
/// Returns `false` (nothing changed) when the records are not in order (a record below `keep`
/// after one beyond it) or the trimmed range fails its checksum: the caller rewrites the file.
fn cut_records(path: &Path, keep: u64) -> std::io::Result<bool> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let records = sum_records(&file);
    let end_of = |r: &SumRecord| r.offset as u64 + r.len as u64;
    let Some(first_beyond) = records.iter().position(|r| end_of(r) > keep) else {
        return Ok(true);
    };
    if records[first_beyond + 1..]
        .iter()
        .any(|r| end_of(r) <= keep)
    {
        return Ok(false);
    }
    let beyond = &records[first_beyond];
    let trimmed = if (beyond.offset as u64) < keep {
        let mut bytes = vec![0u8; beyond.len as usize];
        file.read_exact_at(&mut bytes, beyond.offset as u64)?;
        if crc32fast::hash(&bytes) != beyond.crc {
            return Ok(false);
        }
        bytes.truncate((keep - beyond.offset as u64) as usize);
        Some(SumRecord {
            offset: beyond.offset,
            len: bytes.len() as u32,
            crc: crc32fast::hash(&bytes),
        })
    } else {
        None
    };
    let slot = |i: usize| SUMS_AT + i as u64 * RECORD_SIZE;
    // The slots after the trimmed one first (a cleared slot hides every later one), then the
    // trimmed record itself, or a cleared slot where it was.
    let after = records.len() - first_beyond - 1;
    file.write_all_at(
        &vec![0u8; after * RECORD_SIZE as usize],
        slot(first_beyond + 1),
    )?;
    let record = trimmed.map_or([0u8; RECORD_SIZE as usize], |r| r.encode());
    file.write_all_at(&record, slot(first_beyond))?;
    file.sync_data()?;
    Ok(true)
}

/// Whether an I/O error says the file system is full (or the quota reached).
pub(super) fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
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
pub(super) struct SumRecord {
    pub(super) offset: u32,
    pub(super) len: u32,
    pub(super) crc: u32,
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
pub(super) fn sum_records(file: &File) -> Vec<SumRecord> {
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

pub(super) fn read_sums(path: &Path) -> Vec<SumRecord> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn wal(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// The verified WAL of segment 0 from its start.
    fn held(wal_dir: &Path) -> Vec<u8> {
        let path = wal_dir.join(segment_file_name(1, 0));
        read_verified(&path, 0, SEGMENT_SIZE)
            .unwrap()
            .into_iter()
            .flat_map(|(_, bytes)| bytes)
            .collect()
    }

    #[test]
    fn truncating_in_a_record_keeps_the_file_and_trims_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut open = None;
        let written = wal(30_000, 1);
        for (i, part) in written.chunks(10_000).enumerate() {
            write_parts(dir.path(), &mut open, 1, Lsn(i as u64 * 10_000), &[part]).unwrap();
        }
        open = None;
        let path = dir.path().join(segment_file_name(1, 0));
        let inode = fs::metadata(&path).unwrap().ino();
        assert!(truncate_wal(dir.path(), Lsn(15_000)).unwrap());
        // In place: the same file, its records ending at the cut, the bytes below it intact.
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
        assert_eq!(extent(&read_sums(&path)), Some((0, 15_000)));
        assert_eq!(held(dir.path()), written[..15_000]);
        // A second cut at a record's end, then writing goes on from there.
        assert!(truncate_wal(dir.path(), Lsn(10_000)).unwrap());
        assert_eq!(extent(&read_sums(&path)), Some((0, 10_000)));
        let next = wal(5_000, 9);
        write_parts(dir.path(), &mut open, 1, Lsn(10_000), &[&next]).unwrap();
        let mut expected = written[..10_000].to_vec();
        expected.extend_from_slice(&next);
        assert_eq!(held(dir.path()), expected);
        assert!(!truncate_wal(dir.path(), Lsn(20_000)).unwrap());
    }

    #[test]
    fn records_out_of_order_or_a_corrupt_range_are_rewritten_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut open = None;
        let written = wal(30_000, 2);
        // The last 10,000 bytes first: a record below the cut comes after one beyond it.
        write_parts(dir.path(), &mut open, 1, Lsn(20_000), &[&written[20_000..]]).unwrap();
        write_parts(dir.path(), &mut open, 1, Lsn(0), &[&written[..20_000]]).unwrap();
        drop(open);
        let path = dir.path().join(segment_file_name(1, 0));
        let inode = fs::metadata(&path).unwrap().ino();
        assert!(truncate_wal(dir.path(), Lsn(25_000)).unwrap());
        assert_ne!(fs::metadata(&path).unwrap().ino(), inode);
        assert_eq!(held(dir.path()), written[..25_000]);

        // A flipped byte in the range to be trimmed: not summed again, read around instead.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let records = read_sums(&path);
        let last = records.iter().max_by_key(|r| r.offset).unwrap();
        file.write_all_at(&[0xff ^ written[last.offset as usize]], last.offset as u64)
            .unwrap();
        assert!(!cut_records(&path, last.offset as u64 + 10).unwrap());
    }
}
