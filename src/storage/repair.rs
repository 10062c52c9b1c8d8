//! Repair: how a copy that is not a member becomes one again. Run by the copy's own writer
//! thread ([`super::writer`]), never under the set's lock, so commits go on with the members.
//!
//! - `examine`: is a copy that is down usable again? A directory that takes a file, enough free
//!   space (a nearly full disk stays "down: disk full" rather than being written and failing
//!   again), and WAL of this cluster or none (another cluster's is refused).
//! - `prepare`: before a catch-up, what the copy holds that it cannot trust (written before a
//!   stream start it missed) is truncated, and the set's identity recorded in it.
//! - `copy_wal`: copies from a member the segments the copy lacks, in pieces checked against
//!   the member's checksum records: a segment it lacks (or holds with a different start or a
//!   gap) is written whole under a temporary name, synced, renamed and its directory synced; a
//!   segment it holds a prefix of is extended in place, each write with its own checksum record,
//!   so that a crash or a full disk leaves what it held intact.
//! - [`repair_base`]: the base backups a rejoined copy lacks, copied the same atomic way.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::copies::SetShared;
use super::identity::{infer_from_wal, Identity};
use super::private::{create_private, make_copy_dirs};
use super::quorum::Health;
use super::segment::{
    extent, install_segment, list_segments, newest_wal_end, read_sums, read_verified, sync_dir,
    truncate_wal, write_parts, OpenSegment,
};
use super::wal::{segment_file_name, Lsn, SEGMENT_SIZE};
use super::writer::Throttle;

/// What a copy that is down looks like now.
pub(super) enum Returning {
    /// Usable: it is backfilled (the reason says how it came back).
    Ready(String),
    /// It holds another cluster's WAL, or an identity that does not parse.
    Refused(String),
    NotYet(String),
}

pub(super) fn free_space(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0)
}

pub(super) fn holds_wal(dir: &Path) -> bool {
    newest_wal_end(&dir.join("wal")).is_some()
}

/// Whether a copy directory that was down can be written again, and whose WAL it holds.
pub(super) fn examine(dir: &Path, set: Option<&Identity>, need_free: u64) -> Returning {
    let probe = dir.join(".probe");
    let writable = make_copy_dirs(dir)
        .and_then(|()| create_private(&probe)?.write_all(b"ok"))
        .and_then(|()| fs::remove_file(&probe));
    if let Err(e) = writable {
        return Returning::NotYet(e.to_string());
    }
    let free = free_space(dir);
    if free < need_free {
        return Returning::NotYet(format!(
            "disk full: {} MiB free, {} MiB needed",
            free >> 20,
            need_free >> 20
        ));
    }
    match identity_of(dir, set) {
        Err(Refusal(reason)) => Returning::Refused(reason),
        Ok(Some(_)) => Returning::Ready("came back".to_string()),
        Ok(None) if holds_wal(dir) => Returning::Ready("came back without an identity file".into()),
        Ok(None) => Returning::Ready("came back empty".to_string()),
    }
}

pub(super) struct Refusal(pub(super) String);

/// The identity of a copy (from its file, or inferred from its WAL), refused if it is not the
/// set's. `Ok(None)`: it says nothing about whose it is.
pub(super) fn identity_of(dir: &Path, set: Option<&Identity>) -> Result<Option<Identity>, Refusal> {
    let own = match Identity::read(dir).map_err(Refusal)? {
        Some(own) => Some(own),
        None => infer_from_wal(&dir.join("wal")),
    };
    match (own, set) {
        (Some(own), Some(set)) if own.system_identifier != set.system_identifier => {
            Err(Refusal(format!(
                "it holds the WAL of database system {}, not this cluster's {}; it is never written",
                own.system_identifier, set.system_identifier
            )))
        }
        (own, _) => Ok(own),
    }
}

pub(super) enum PrepareError {
    Refused(String),
    Io(std::io::Error),
}

/// Readies a copy for a catch-up under the set's identity: refuses another cluster's WAL,
/// truncates what it holds beyond the start of a stream it missed (that WAL may differ from
/// what the members hold there), and records the set's identity. Returns the end of its WAL.
pub(super) fn prepare(dir: &Path, set: &Identity) -> Result<Lsn, PrepareError> {
    let wal = dir.join("wal");
    fs::create_dir_all(&wal).map_err(PrepareError::Io)?;
    let own = identity_of(dir, Some(set)).map_err(|Refusal(r)| PrepareError::Refused(r))?;
    let generation = own.map(|own| own.generation).unwrap_or(0);
    let end = newest_wal_end(&wal).unwrap_or_default();
    let trusted = set.trusted_end(generation, end);
    if trusted < end {
        tracing::info!(copy = %dir.display(), %end, %trusted, "copy holds WAL from before a stream start it missed; truncated");
        truncate_wal(&wal, trusted).map_err(PrepareError::Io)?;
    }
    set.write(dir).map_err(PrepareError::Io)?;
    Ok(newest_wal_end(&wal).unwrap_or_default())
}

/// A catch-up under way.
pub(super) struct CatchUp {
    /// The set's generation it was prepared for (a stream start since means preparing again).
    pub(super) generation: u64,
    /// The segments below this one are held whole, as the members hold them: not looked at again.
    done_below: u64,
}

impl CatchUp {
    pub(super) fn new(generation: u64) -> CatchUp {
        CatchUp {
            generation,
            done_below: 0,
        }
    }
}

pub(super) enum CopyError {
    /// The member could not be read (or its WAL fails its checksums): try another.
    Source(String),
    /// This copy could not be written.
    Target(std::io::Error),
}

pub(super) struct Copied {
    pub(super) bytes: u64,
    /// Everything the member holds below the given end is now held.
    pub(super) complete: bool,
}

/// The members other than copy `except` that hold WAL up to `at_least`: (directory, flushed),
/// the best last.
pub(super) fn sources(set: &SetShared, except: usize, at_least: Lsn) -> Vec<(PathBuf, Lsn)> {
    let mut sources: Vec<(PathBuf, Lsn)> = set
        .copies
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != except)
        .filter_map(|(_, (dir, shared))| {
            let shared = shared.lock().expect("copy lock");
            (shared.health == Health::Up && shared.flushed >= at_least)
                .then(|| (dir.clone(), shared.flushed))
        })
        .collect();
    sources.sort_by_key(|(_, flushed)| *flushed);
    sources
}

/// Copies into copy `dir` what member `source` holds below `upto` that it lacks, about `budget`
/// bytes at most (a whole segment is never split).
pub(super) fn copy_wal(
    dir: &Path,
    open: &mut Option<OpenSegment>,
    source: &Path,
    upto: Lsn,
    state: &mut CatchUp,
    budget: u64,
    throttle: &mut Throttle,
) -> Result<Copied, CopyError> {
    let target_wal = dir.join("wal");
    let held: HashMap<(u64, u32), Option<(u64, u64)>> = list_segments(&target_wal)
        .into_iter()
        .filter(|s| s.segment >= state.done_below)
        .map(|s| ((s.segment, s.timeline), extent(&read_sums(&s.path))))
        .collect();
    let mut copied = 0u64;
    let mut whole_so_far = true;
    let unreadable = |path: &Path, at: u64| {
        CopyError::Source(format!(
            "{} has no intact WAL at offset {at}",
            path.display()
        ))
    };
    for src in list_segments(&source.join("wal")) {
        let base = src.segment * SEGMENT_SIZE;
        if src.segment < state.done_below {
            continue;
        }
        if base >= upto.0 {
            break;
        }
        let Some((first, end)) = extent(&read_sums(&src.path)) else {
            continue;
        };
        let limit = end.min(upto.0 - base);
        if limit <= first {
            continue;
        }
        if copied >= budget {
            return Ok(Copied {
                bytes: copied,
                complete: false,
            });
        }
        let target = target_wal.join(segment_file_name(src.timeline, src.segment));
        match held.get(&(src.segment, src.timeline)).copied().flatten() {
            Some((own_first, own_end)) if own_first <= first && own_end >= limit => {}
            Some((own_first, own_end)) if own_first <= first && own_end >= first => {
                // A prefix of it: extended in place, one checksum record per piece.
                let want = limit.min(own_end.saturating_add(budget - copied));
                let pieces = read_verified(&src.path, own_end, want)
                    .map_err(|e| CopyError::Source(format!("{}: {e}", src.path.display())))?;
                let got: u64 = pieces.iter().map(|(_, b)| b.len() as u64).sum();
                if got == 0 {
                    return Err(unreadable(&src.path, own_end));
                }
                let parts: Vec<&[u8]> = pieces.iter().map(|(_, b)| b.as_slice()).collect();
                write_parts(&target_wal, open, src.timeline, Lsn(base + own_end), &parts)
                    .map_err(CopyError::Target)?;
                throttle.pause(got as usize);
                copied += got;
                if own_end + got < limit {
                    return Ok(Copied {
                        bytes: copied,
                        complete: false,
                    });
                }
            }
            _ => {
                // Lacking, or held with another start or a gap: the member's, whole and atomic.
                let pieces = read_verified(&src.path, first, limit)
                    .map_err(|e| CopyError::Source(format!("{}: {e}", src.path.display())))?;
                let got: u64 = pieces.iter().map(|(_, b)| b.len() as u64).sum();
                if first + got < limit {
                    return Err(unreadable(&src.path, first + got));
                }
                *open = None;
                install_segment(&target, &pieces).map_err(CopyError::Target)?;
                throttle.pause(got as usize);
                copied += got;
            }
        }
        if whole_so_far && limit == SEGMENT_SIZE {
            state.done_below = src.segment + 1;
        } else {
            whole_so_far = false;
        }
    }
    Ok(Copied {
        bytes: copied,
        complete: true,
    })
}

/// Copies a file durably under its final name: written as `<to>.tmp` (0600), synced, renamed.
/// The caller syncs the directory.
pub(super) fn install_file(from: &Path, to: &Path) -> std::io::Result<()> {
    let tmp = to.with_extension(format!(
        "{}.tmp",
        to.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let result = copy_private(from, &tmp).and_then(|()| fs::rename(&tmp, to));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Copies `from` into a new file `to`, 0600 whatever `from`'s mode (`fs::copy` would take it
/// over), and syncs it.
fn copy_private(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut target = create_private(to)?;
    std::io::copy(&mut File::open(from)?, &mut target)?;
    target.sync_all()
}

/// Copies the base backups of `source` that `target` lacks (or holds with another length):
/// each checksum sidecar first, then its tar, each written under a temporary name, synced and
/// renamed, then the directory synced. A backup is listed only once its tar is in place, so a
/// crash or a full disk never leaves a tar that looks whole and is not.
pub fn repair_base(source: &Path, target: &Path) -> Result<usize, String> {
    let length = |path: &Path| fs::metadata(path).map(|m| m.len()).ok();
    let mut copied = 0;
    let base = target.join("base");
    for start in super::backups::backup_starts(source) {
        let tar = super::backups::backup_tar(source, start);
        let sidecar = tar.with_extension("tar.crc32");
        if !sidecar.exists() {
            continue; // not a finished backup
        }
        let to_tar = super::backups::backup_tar(target, start);
        let to_sidecar = to_tar.with_extension("tar.crc32");
        if length(&to_tar) == length(&tar) && length(&to_sidecar) == length(&sidecar) {
            continue;
        }
        let copy = |from: &Path, to: &Path| {
            install_file(from, to).map_err(|e| format!("repairing {}: {e}", to.display()))
        };
        copy(&sidecar, &to_sidecar)?;
        copy(&tar, &to_tar)?;
        sync_dir(&base).map_err(|e| e.to_string())?;
        copied += 1;
    }
    Ok(copied)
}
