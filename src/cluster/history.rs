//! A cluster's last hour, one point a second: what the dashboard and `pgtide status --watch`
//! draw, served by `GET /history`.
//!
//! Memory is bounded and follows what happened, not the clock: consecutive points that differ
//! only in their time (a paused cluster's seconds, all zeros) are kept as one run. A paused
//! cluster's task does not tick at all: it pushes one point with [`History::push_open`], whose run
//! lasts until the next point, and queries read it up to now. A cluster
//! busy for the whole hour holds [`HISTORY_POINTS`] runs of 80 bytes (about 281 KiB); one that
//! sat paused holds a handful, and the ring gives back what it no longer needs. Queries see one
//! point per second either way.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::state::StateName;

/// One hour of one-second points.
pub const HISTORY_POINTS: usize = 3600;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct HistoryPoint {
    /// Unix time, seconds.
    pub t: u64,
    /// The cluster state's name (`paused`, `running`, …).
    pub state: StateName,
    pub acu: f64,
    pub acu_target: f64,
    pub cpu_used: f64,
    pub cpu_limit: f64,
    pub memory_used_mib: f64,
    pub memory_limit_mib: f64,
    pub clients: u32,
    pub tps: f64,
}

impl HistoryPoint {
    /// The same values, `t` aside.
    fn same_as(&self, other: &HistoryPoint) -> bool {
        HistoryPoint {
            t: other.t,
            ..*self
        } == *other
    }
}

/// `seconds` points, one a second from `first.t`, all with `first`'s values.
#[derive(Debug, Clone, Copy)]
struct Run {
    first: HistoryPoint,
    seconds: u32,
}

impl Run {
    fn end(&self) -> u64 {
        self.first.t + u64::from(self.seconds)
    }
}

#[derive(Debug, Default)]
struct Ring {
    runs: VecDeque<Run>,
    /// Points over all runs (an open run counts the seconds it was closed at).
    points: usize,
    /// The last run lasts until the next point (the cluster is paused and its task asleep).
    open: bool,
}

#[derive(Debug, Default)]
pub struct History {
    ring: Mutex<Ring>,
}

impl History {
    pub fn push(&self, point: HistoryPoint) {
        let mut ring = self.ring.lock().expect("history lock");
        if std::mem::take(&mut ring.open) {
            // The open run held every second until this point.
            if let Some(last) = ring.runs.back_mut() {
                let gap = point.t.saturating_sub(last.end());
                last.seconds += u32::try_from(gap).unwrap_or(u32::MAX / 2);
                ring.points += gap as usize;
            }
        }
        match ring.runs.back_mut() {
            Some(last) if last.end() == point.t && last.first.same_as(&point) => last.seconds += 1,
            _ => ring.runs.push_back(Run {
                first: point,
                seconds: 1,
            }),
        }
        ring.points += 1;
        while ring.points > HISTORY_POINTS {
            let excess = ring.points - HISTORY_POINTS;
            let oldest = ring.runs.front_mut().expect("points are in runs");
            let cut = excess.min(oldest.seconds as usize);
            oldest.first.t += cut as u64;
            oldest.seconds -= cut as u32;
            if oldest.seconds == 0 {
                ring.runs.pop_front();
            }
            ring.points -= cut;
        }
        // Give back room an hour of activity left behind once runs have replaced it.
        if ring.runs.capacity() > 64 && ring.runs.len() < ring.runs.capacity() / 4 {
            let keep = ring.runs.len() * 2;
            ring.runs.shrink_to(keep);
        }
    }

    /// Pushes `point` as a run that lasts until the next push: the last point before the
    /// cluster's task goes to sleep (paused).
    pub fn push_open(&self, point: HistoryPoint) {
        self.push(point);
        self.ring.lock().expect("history lock").open = true;
    }

    /// Points with `t >= since`, oldest first, one a second.
    pub fn since(&self, since: u64) -> Vec<HistoryPoint> {
        self.since_at(since, super::unix_now())
    }

    /// [`Self::since`] at Unix time `now`: an open run is read up to now, and then only the
    /// last hour is.
    fn since_at(&self, since: u64, now: u64) -> Vec<HistoryPoint> {
        let ring = self.ring.lock().expect("history lock");
        let last = ring.runs.len().saturating_sub(1);
        let open_end = |i: usize, run: &Run| {
            if ring.open && i == last {
                run.end().max(now + 1)
            } else {
                run.end()
            }
        };
        let since = match ring.runs.back() {
            Some(run) if ring.open => {
                since.max(open_end(last, run).saturating_sub(HISTORY_POINTS as u64))
            }
            _ => since,
        };
        let mut start = ring.runs.partition_point(|run| run.end() <= since);
        if ring.open {
            start = start.min(last);
        }
        let mut points = Vec::new();
        for (i, run) in ring.runs.iter().enumerate().skip(start) {
            for t in run.first.t.max(since)..open_end(i, run) {
                points.push(HistoryPoint { t, ..run.first });
            }
        }
        points
    }

    /// Bytes the ring holds now (its allocation): what one cluster's history costs.
    pub fn allocated_bytes(&self) -> usize {
        let ring = self.ring.lock().expect("history lock");
        ring.runs.capacity() * std::mem::size_of::<Run>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: u64) -> HistoryPoint {
        HistoryPoint {
            t,
            state: StateName::Running,
            acu: 1.0,
            acu_target: 1.0,
            cpu_used: 0.1,
            cpu_limit: 0.25,
            memory_used_mib: 100.0,
            memory_limit_mib: 2048.0,
            clients: 1,
            tps: 10.0,
        }
    }

    #[test]
    fn the_ring_is_bounded_and_queried_by_time() {
        let history = History::default();
        for t in 0..(HISTORY_POINTS as u64 + 500) {
            history.push(point(t));
        }
        let all = history.since(0);
        assert_eq!(all.len(), HISTORY_POINTS);
        assert_eq!(all[0].t, 500);
        assert_eq!(history.since(4000).len(), 100);
        assert!(history.since(u64::MAX).is_empty());
        assert_eq!(std::mem::size_of::<HistoryPoint>(), 72);
        assert_eq!(std::mem::size_of::<Run>(), 80);
    }

    fn paused(t: u64) -> HistoryPoint {
        HistoryPoint {
            state: StateName::Paused,
            acu: 0.0,
            cpu_used: 0.0,
            cpu_limit: 0.0,
            memory_used_mib: 0.0,
            memory_limit_mib: 0.0,
            clients: 0,
            tps: 0.0,
            ..point(t)
        }
    }

    /// An hour busy, then an hour paused: the paused seconds are one run, queries still see a
    /// point a second, and the ring gives back the room the busy hour took.
    #[test]
    fn paused_seconds_cost_one_run_and_read_back_as_points() {
        let history = History::default();
        for t in 0..HISTORY_POINTS as u64 {
            let mut busy = point(t);
            busy.tps = t as f64; // every second differs
            history.push(busy);
        }
        let busy_bytes = history.allocated_bytes();
        assert!(busy_bytes >= HISTORY_POINTS * 80, "{busy_bytes}");
        for t in HISTORY_POINTS as u64..2 * HISTORY_POINTS as u64 {
            history.push(paused(t));
        }
        let all = history.since(0);
        assert_eq!(all.len(), HISTORY_POINTS);
        assert_eq!(all[0], paused(HISTORY_POINTS as u64));
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, p)| p.t == (HISTORY_POINTS + i) as u64));
        assert!(
            history.allocated_bytes() <= 64 * 1024,
            "{} bytes while paused",
            history.allocated_bytes()
        );
        // Half an hour after a resume: the paused run was cut at the front, in place.
        for t in 2 * HISTORY_POINTS as u64..2 * HISTORY_POINTS as u64 + 1800 {
            let mut busy = point(t);
            busy.tps = t as f64;
            history.push(busy);
        }
        let all = history.since(0);
        assert_eq!(all.len(), HISTORY_POINTS);
        assert_eq!(all[0], paused(HISTORY_POINTS as u64 + 1800));
        assert_eq!(history.since(2 * HISTORY_POINTS as u64 + 1799).len(), 1);
        // An open run (a paused cluster's task asleep) reads up to now, and is closed by the
        // next point.
        history.push_open(paused(9_000));
        assert_eq!(history.since_at(9_000, 9_009).len(), 10);
        assert_eq!(
            history.since_at(0, 20_000).len(),
            HISTORY_POINTS,
            "only the last hour"
        );
        assert_eq!(
            history.since_at(0, 20_000)[0].t,
            20_001 - HISTORY_POINTS as u64
        );
        let mut back = point(9_100);
        back.tps = 1.0;
        history.push(back);
        let after = history.since_at(9_000, 99_999);
        assert_eq!(after.len(), 101, "the paused run held until the next point");
        assert!(after[..100].iter().all(|p| p.state == StateName::Paused));
        assert_eq!(after[100], back);
        assert_eq!(history.since(0).len(), HISTORY_POINTS);
        // A gap in time (pgtide was not running) starts a new run.
        history.push(paused(10_000));
        history.push(paused(10_005));
        assert_eq!(
            history
                .since(10_000)
                .iter()
                .map(|p| p.t)
                .collect::<Vec<_>>(),
            [10_000, 10_005]
        );
    }
}
