//! A cluster's last hour, one point a second: what the dashboard and `pgtide status --watch`
//! draw, served by `GET /history`.
//!
//! Memory is bounded and follows what happened, not the clock: consecutive points that differ
//! only in their time (a paused cluster's seconds, all zeros) are kept as one run. A cluster
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
    /// Points over all runs.
    points: usize,
}

#[derive(Debug, Default)]
pub struct History {
    ring: Mutex<Ring>,
}

impl History {
    pub fn push(&self, point: HistoryPoint) {
        let mut ring = self.ring.lock().expect("history lock");
        match ring.runs.back_mut() {
            Some(last) if last.end() == point.t && last.first.same_as(&point) => last.seconds += 1,
            _ => ring.runs.push_back(Run {
                first: point,
                seconds: 1,
            }),
        }
        ring.points += 1;
        while ring.points > HISTORY_POINTS {
            let oldest = ring.runs.front_mut().expect("points are in runs");
            oldest.first.t += 1;
            oldest.seconds -= 1;
            if oldest.seconds == 0 {
                ring.runs.pop_front();
            }
            ring.points -= 1;
        }
        // Give back room an hour of activity left behind once runs have replaced it.
        if ring.runs.capacity() > 64 && ring.runs.len() < ring.runs.capacity() / 4 {
            let keep = ring.runs.len() * 2;
            ring.runs.shrink_to(keep);
        }
    }

    /// Points with `t >= since`, oldest first, one a second.
    pub fn since(&self, since: u64) -> Vec<HistoryPoint> {
        let ring = self.ring.lock().expect("history lock");
        let start = ring.runs.partition_point(|run| run.end() <= since);
        let mut points = Vec::new();
        for run in ring.runs.range(start..) {
            for t in run.first.t.max(since)..run.end() {
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
