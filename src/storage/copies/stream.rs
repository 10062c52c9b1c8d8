//! A stream's start: the copies decide whether a compute may stream into them, and from where.
//!
//! Every (re)connection of the receiver comes through [`CopySet::begin_stream`]. The members
//! first finish what they were handed. The compute must be the copies' own database system, on
//! their timeline or a later one, and hold at least all the WAL the members hold: anything else
//! is another cluster's or an older data directory, and acknowledging its WAL would be a lie,
//! so the stream is refused (it fails closed). The start is the quorum's durable position (the
//! start of the compute's segment for copies that hold nothing). The members' WAL beyond it is
//! cut, by each copy's own writer (`Job::Restart`, through `segment::truncate_wal`), so that
//! nothing counts as durable beyond the start but this stream's writes; a start below WAL that
//! some copy may hold is recorded as a new generation of the set's identity, so that a copy
//! that missed it will not trust what it holds beyond it.
//!
//! [`CopySet::overlap_before`] then gives the receiver the members' WAL just below the start,
//! to compare with what the compute streams there ([`Overlap`]).

use std::time::Duration;

use tokio::sync::oneshot;

use super::super::identity::{Identity, IDENTITY_FILE};
use super::super::overlap::Overlap;
use super::super::quorum::Health;
use super::super::segment::{list_segments, read_verified};
use super::super::wal::{Lsn, WAL_PAGE};
use super::super::writer::Job;
use super::CopySet;

/// How long a stream start waits for the members to finish what they were handed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

impl CopySet {
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
        self.call_off_joins();
        self.drain_members().await;
        let identity = self.set.identity.lock().expect("identity lock").clone();
        if let Some(identity) = &identity {
            check_compute(identity, system_identifier, timeline)?;
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
        let start = self.stream_start(&members, held, server_end);
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
        self.restart_members(start, &next, changed).await;
        self.sent = start;
        self.quorum.recompute();
        tracing::info!(%start, generation = next.generation, members = self.copies_up(), "copies ready for a stream");
        Ok(start)
    }

    /// Joins under way are called off: those copies catch up again under the new stream.
    fn call_off_joins(&self) {
        for copy in &self.copies {
            let mut shared = copy.shared.lock().expect("copy lock");
            if shared.joining || shared.join_requested {
                shared.epoch += 1;
                shared.joining = false;
                shared.join_requested = false;
            }
        }
    }

    /// What the members were handed is written first; one too slow to finish leaves.
    async fn drain_members(&mut self) {
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
    }

    /// Where the stream starts, given the members' flushed positions and the most they hold.
    fn stream_start(&self, members: &[(usize, Lsn)], held: Lsn, server_end: Lsn) -> Lsn {
        let durable = self.quorum.durable();
        if held.0 == 0 {
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
        }
    }

    /// The stream-start truncation: every member's writer cuts its WAL at `start` (the stream
    /// sends what lies beyond again) and records `next` when the identity changed or the copy
    /// lacks it. A member that fails has gone down by itself; one too slow to answer leaves.
    async fn restart_members(&mut self, start: Lsn, next: &Identity, changed: bool) {
        let mut restarts: Vec<(usize, oneshot::Receiver<Result<(), String>>)> = Vec::new();
        for (i, copy) in self.copies.iter().enumerate() {
            let shared = copy.shared.lock().expect("copy lock");
            if shared.health != Health::Up {
                continue;
            }
            let record = changed
                || shared.generation != next.generation
                || !self.set.copies[i].0.join(IDENTITY_FILE).exists();
            let (reply, done) = oneshot::channel();
            let _ = copy.jobs.send(Job::Restart {
                at: start,
                identity: record.then(|| next.clone()),
                reply,
            });
            restarts.push((i, done));
        }
        for (i, done) in restarts {
            // One too slow to answer may still report the previous stream's flushed position.
            if tokio::time::timeout(DRAIN_TIMEOUT, done).await.is_err()
                && self.copies[i].shared.lock().expect("copy lock").health == Health::Up
            {
                self.demote(i, "it did not restart its WAL within 10 s".to_string());
            }
        }
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
}

/// Refuses a compute of another database system, or on an older timeline than the copies'.
fn check_compute(identity: &Identity, system_identifier: u64, timeline: u32) -> Result<(), String> {
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
    Ok(())
}
