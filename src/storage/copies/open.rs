//! Opening a cluster's copy set: every copy is looked at before it counts.
//!
//! The copies vote on whose WAL the set holds (the database system most of them name; on a tie,
//! the one holding the most WAL), and the set takes the identity of the newest generation of
//! that system. Then each copy is sorted: a *member* (up, counting toward the quorum), a copy
//! that is *backfilling* (empty, replaced, behind the position a quorum holds, or that missed a
//! stream start: its writer copies what it lacks from the members before it counts), *refused*
//! (another cluster's WAL, never written) or *down* (its directories cannot be made). Last, one
//! writer thread per copy is started ([`super::super::writer`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex};

use super::super::identity::{infer_from_wal, Identity};
use super::super::notices::{Notices, StorageNotice};
use super::super::private::make_copy_dirs;
use super::super::quorum::{CopyShared, Health, Quorum};
use super::super::segment::newest_wal_end;
use super::super::wal::Lsn;
use super::super::writer::{Job, Writer};
use super::{CopiesView, Copy, CopySet, SetShared, LAG_LIMIT};

/// What a copy directory holds, looked at when the set opens.
struct Found {
    dir: PathBuf,
    created: Result<(), String>,
    identity: Result<Option<Identity>, String>,
    /// The identity comes from the WAL itself (no identity file).
    inferred: bool,
    end: Option<Lsn>,
}

impl Found {
    fn label(&self) -> String {
        self.dir.parent().unwrap_or(&self.dir).display().to_string()
    }
}

/// Whose WAL the set holds, as the copies tell it.
struct Vote {
    /// The system most copies name (on a tie, the one holding the most WAL).
    system: Option<u64>,
    /// Its identity, from the copy with the newest generation (a file over an inferred one).
    identity: Option<Identity>,
}

impl Vote {
    fn generation(&self) -> u64 {
        self.identity.as_ref().map_or(0, |i| i.generation)
    }

    /// Whether a copy may be a member: made, of the set's system and newest generation (or,
    /// with no identity known yet, saying nothing either).
    fn candidate(&self, f: &Found) -> bool {
        f.created.is_ok()
            && match &f.identity {
                Ok(Some(i)) => {
                    Some(i.system_identifier) == self.system && i.generation == self.generation()
                }
                Ok(None) => self.identity.is_none(),
                Err(_) => false,
            }
    }
}

impl CopySet {
    /// Opens the copies for one cluster (creating their directories), decides which count
    /// toward the quorum, and starts their writers.
    pub fn open(dirs: &[PathBuf], cluster: &str, quorum: usize, notices: Arc<Notices>) -> CopySet {
        let found: Vec<Found> = dirs.iter().map(|dir| look_at(dir.join(cluster))).collect();
        let vote = vote(&found);
        let agreed = agreed_end(&found, &vote, quorum);
        let mut states = Vec::new();
        for f in &found {
            let health = sort(f, &vote, agreed);
            announce(&notices, f.label(), &health);
            let own_generation = match &f.identity {
                Ok(Some(i)) => i.generation,
                _ => 0,
            };
            states.push((
                f.dir.clone(),
                Arc::new(Mutex::new(CopyShared::new(
                    health,
                    f.end.unwrap_or_default(),
                    own_generation,
                ))),
            ));
        }
        let set = Arc::new(SetShared {
            copies: states.clone(),
            identity: Mutex::new(vote.identity),
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
        let copies = start_writers(&states, &quorum, &set);
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
}

/// Makes a copy's directories for the cluster (`dir` is `<copy>/<cluster>`) and reads what it
/// holds: the end of its WAL and its identity (from its file, or else inferred from the WAL).
fn look_at(dir: PathBuf) -> Found {
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
}

/// The set's system: the one most copies name (on a tie, the one holding the most WAL); its
/// identity: from the copy with the newest generation (a file over an inferred one).
fn vote(found: &[Found]) -> Vote {
    let mut votes: HashMap<u64, (usize, Lsn)> = HashMap::new();
    for f in found {
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
    let identity = found
        .iter()
        .filter_map(|f| {
            let identity = f.identity.as_ref().ok()?.as_ref()?;
            (Some(identity.system_identifier) == system).then_some((identity, !f.inferred))
        })
        .max_by_key(|(identity, from_file)| (identity.generation, *from_file))
        .map(|(identity, _)| identity.clone());
    Vote { system, identity }
}

/// The position a quorum of candidates holds (with fewer candidates than a quorum, the
/// furthest one): copies below it are backfilled before they count.
fn agreed_end(found: &[Found], vote: &Vote, quorum: usize) -> Lsn {
    let mut ends: Vec<Lsn> = found
        .iter()
        .filter(|f| vote.candidate(f))
        .map(|f| f.end.unwrap_or_default())
        .collect();
    ends.sort_unstable_by(|a, b| b.cmp(a));
    match ends.get(quorum.saturating_sub(1)) {
        Some(end) => *end,
        None => ends.first().copied().unwrap_or_default(),
    }
}

/// Where a copy starts: down, refused, backfilling (with why) or a member.
fn sort(f: &Found, vote: &Vote, agreed: Lsn) -> Health {
    let end = f.end.unwrap_or_default();
    let generation = vote.generation();
    match (&f.created, &f.identity) {
        (Err(e), _) => Health::Down(e.clone()),
        (_, Err(e)) => Health::Refused(e.clone()),
        (_, Ok(Some(i))) if Some(i.system_identifier) != vote.system => Health::Refused(format!(
            "it holds the WAL of database system {}, not this cluster's {}; it is never written",
            i.system_identifier,
            vote.system.unwrap_or_default()
        )),
        (_, Ok(None)) if vote.identity.is_some() => Health::Backfilling(match f.end {
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
    }
}

/// Tells the cluster's events about a copy that does not start as a member.
fn announce(notices: &Notices, copy: String, health: &Health) {
    match health {
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
}

/// Starts one writer thread (`pgtide-copy`) per copy, each fed by its own channel.
fn start_writers(
    states: &[(PathBuf, Arc<Mutex<CopyShared>>)],
    quorum: &Arc<Quorum>,
    set: &Arc<SetShared>,
) -> Vec<Copy> {
    states
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
        .collect()
}
