//! The reader endpoint's view of the standbys: which ones are in rotation (running, streaming,
//! no further behind than `max_reader_lag`), and how many sessions each serves. The standbys
//! publish here every tick; the proxy picks the least busy one for each new session and holds
//! a [`ReaderLease`] for the session's life.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::runtime::ComputeEndpoint;

/// The standbys the reader endpoint may send a session to.
pub struct ReaderSet {
    zones: Mutex<BTreeMap<String, Reader>>,
    /// Bumped whenever a standby enters or leaves the rotation.
    changed: watch::Sender<u64>,
}

struct Reader {
    /// Where it is reached while it is in rotation.
    endpoint: Option<ComputeEndpoint>,
    sessions: Arc<AtomicUsize>,
}

/// A session on a standby: counted while it lives.
pub struct ReaderLease {
    pub zone: String,
    pub endpoint: ComputeEndpoint,
    sessions: Arc<AtomicUsize>,
}

impl Drop for ReaderLease {
    fn drop(&mut self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for ReaderSet {
    fn default() -> Self {
        ReaderSet {
            zones: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
        }
    }
}

impl ReaderSet {
    /// The standby in `zone` is in rotation at `endpoint`, or (`None`) out of it.
    pub fn publish(&self, zone: &str, endpoint: Option<ComputeEndpoint>) {
        let changed = {
            let mut zones = self.zones.lock().expect("readers lock");
            let reader = zones.entry(zone.to_string()).or_insert_with(|| Reader {
                endpoint: None,
                sessions: Arc::default(),
            });
            let changed = reader.endpoint != endpoint;
            reader.endpoint = endpoint;
            changed
        };
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Sessions the standby in `zone` serves now.
    pub fn sessions(&self, zone: &str) -> usize {
        self.zones
            .lock()
            .expect("readers lock")
            .get(zone)
            .map(|reader| reader.sessions.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The least busy standby in rotation (ties: the first zone), counted at once so that
    /// sessions arriving together spread.
    pub fn pick(&self) -> Option<ReaderLease> {
        let zones = self.zones.lock().expect("readers lock");
        let (zone, reader) = zones
            .iter()
            .filter(|(_, reader)| reader.endpoint.is_some())
            .min_by_key(|(_, reader)| reader.sessions.load(Ordering::Relaxed))?;
        reader.sessions.fetch_add(1, Ordering::Relaxed);
        Some(ReaderLease {
            zone: zone.clone(),
            endpoint: reader.endpoint.clone().expect("filtered"),
            sessions: reader.sessions.clone(),
        })
    }

    /// [`Self::pick`], waiting up to `timeout` for a standby to enter the rotation.
    pub async fn pick_within(&self, timeout: Duration) -> Option<ReaderLease> {
        let mut changed = self.changed.subscribe();
        let waiting = async {
            loop {
                if let Some(lease) = self.pick() {
                    return lease;
                }
                if changed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, waiting).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u16) -> ComputeEndpoint {
        ComputeEndpoint {
            socket_dir: "/tmp".into(),
            port,
        }
    }

    #[test]
    fn sessions_go_to_the_least_busy_standby_in_rotation() {
        let readers = ReaderSet::default();
        assert!(readers.pick().is_none(), "no standby, no pick");
        readers.publish("b", Some(endpoint(1)));
        readers.publish("c", Some(endpoint(2)));
        let first = readers.pick().unwrap();
        let second = readers.pick().unwrap();
        assert_ne!(first.zone, second.zone, "spread over both");
        let third = readers.pick().unwrap();
        assert_eq!(readers.sessions("b") + readers.sessions("c"), 3);
        drop(third);
        readers.publish("b", None);
        let fourth = readers.pick().unwrap();
        assert_eq!(
            fourth.zone, "c",
            "a standby out of rotation gets no session"
        );
        drop((first, second, fourth));
        assert_eq!(readers.sessions("b") + readers.sessions("c"), 0);
    }

    #[tokio::test]
    async fn a_pick_waits_for_a_standby_to_come() {
        let readers = Arc::new(ReaderSet::default());
        let waiting = {
            let readers = readers.clone();
            tokio::spawn(async move { readers.pick_within(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        readers.publish("b", Some(endpoint(1)));
        let lease = waiting.await.unwrap().expect("picked once it came");
        assert_eq!(lease.zone, "b");
        assert!(readers
            .pick_within(Duration::from_millis(10))
            .await
            .is_some());
    }
}
