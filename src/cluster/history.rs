//! A cluster's last hour, one point a second: what the dashboard and `pgtide status --watch`
//! draw, served by `GET /history`.
//!
//! Memory is bounded: [`HISTORY_POINTS`] points of [`HistoryPoint`] (88 bytes each) per
//! cluster, about 310 KiB, allocated once.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

/// One hour of one-second points.
pub const HISTORY_POINTS: usize = 3600;

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct HistoryPoint {
    /// Unix time, seconds.
    pub t: u64,
    /// The cluster state's name (`paused`, `running`, …).
    pub state: &'static str,
    pub acu: f64,
    pub acu_target: f64,
    pub cpu_used: f64,
    pub cpu_limit: f64,
    pub memory_used_mib: f64,
    pub memory_limit_mib: f64,
    pub clients: u32,
    pub tps: f64,
}

#[derive(Debug)]
pub struct History {
    ring: Mutex<VecDeque<HistoryPoint>>,
}

impl Default for History {
    fn default() -> Self {
        History {
            ring: Mutex::new(VecDeque::with_capacity(HISTORY_POINTS)),
        }
    }
}

impl History {
    pub fn push(&self, point: HistoryPoint) {
        let mut ring = self.ring.lock().expect("history lock");
        if ring.len() == HISTORY_POINTS {
            ring.pop_front();
        }
        ring.push_back(point);
    }

    /// Points with `t >= since`, oldest first.
    pub fn since(&self, since: u64) -> Vec<HistoryPoint> {
        let ring = self.ring.lock().expect("history lock");
        let start = ring.partition_point(|p| p.t < since);
        ring.range(start..).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: u64) -> HistoryPoint {
        HistoryPoint {
            t,
            state: "running",
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
        assert_eq!(std::mem::size_of::<HistoryPoint>(), 88);
    }
}
