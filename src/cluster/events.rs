//! A cluster's recent decisions and transitions, with their reasons: kept in a bounded ring for
//! `/status`, written to the log, and counted in `/metrics`.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

/// How many events `/status` keeps per cluster.
const KEEP: usize = 200;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// RFC 3339, UTC.
    pub at: String,
    /// A stable word for machines: `resumed`, `paused`, `compute_exited`, `scaled_up`, …
    pub kind: String,
    /// The reason, for people.
    pub message: String,
}

#[derive(Debug)]
pub struct EventLog {
    cluster: String,
    ring: Mutex<VecDeque<Event>>,
}

impl EventLog {
    pub fn new(cluster: &str) -> EventLog {
        EventLog {
            cluster: cluster.to_string(),
            ring: Mutex::new(VecDeque::with_capacity(KEEP)),
        }
    }

    pub fn record(&self, kind: &str, message: String) {
        tracing::info!(cluster = %self.cluster, event = kind, "{message}");
        metrics::counter!("pgtide_cluster_events_total", "cluster" => self.cluster.clone(), "kind" => kind.to_string())
            .increment(1);
        let mut ring = self.ring.lock().expect("event lock");
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(Event {
            at: super::now_rfc3339(),
            kind: kind.to_string(),
            message,
        });
    }

    /// Newest first.
    pub fn recent(&self, limit: usize) -> Vec<Event> {
        self.ring
            .lock()
            .expect("event lock")
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }
}
