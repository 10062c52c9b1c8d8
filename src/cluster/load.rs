//! Load counters: what the proxy tells the cluster about its clients, on the hot path.
//!
//! The counters that go up and down (clients, active sessions, clients waiting for a pooled
//! connection) change only through guards: taking one counts, dropping it uncounts, so an early
//! return or an error can never leave a count behind. The rest only go up, through methods.
//! Readers (the cluster task, `/status`, `/metrics`) use the plain accessors.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ClusterHandle, Shared};

/// Relaxed atomics, changed per chunk or per transition (never per message).
#[derive(Debug)]
pub struct LoadCounters {
    clients: AtomicUsize,
    active: AtomicUsize,
    transactions: AtomicU64,
    bytes_from_clients: AtomicU64,
    bytes_to_clients: AtomicU64,
    /// Role changes seen by a relay, and how many of them a verifier refresh has covered.
    roles_marked: AtomicU64,
    roles_refreshed: AtomicU64,
    roles_notify: tokio::sync::Notify,
    waiting: AtomicUsize,
    wait_micros: AtomicU64,
    prepared_hits: AtomicU64,
    prepared_misses: AtomicU64,
    /// Milliseconds since `epoch` of the last client activity, for auto-pause.
    last_activity_ms: AtomicU64,
    epoch: Instant,
}

impl Default for LoadCounters {
    fn default() -> Self {
        LoadCounters::new()
    }
}

impl LoadCounters {
    /// Fresh counters (a cluster makes its own; public for the benchmarks of the hot path).
    pub fn new() -> Self {
        LoadCounters {
            clients: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            transactions: AtomicU64::new(0),
            bytes_from_clients: AtomicU64::new(0),
            bytes_to_clients: AtomicU64::new(0),
            roles_marked: AtomicU64::new(0),
            roles_refreshed: AtomicU64::new(0),
            roles_notify: tokio::sync::Notify::new(),
            waiting: AtomicUsize::new(0),
            wait_micros: AtomicU64::new(0),
            prepared_hits: AtomicU64::new(0),
            prepared_misses: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Authenticated client connections (a socket still in its handshake is not one).
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Sessions with a request in flight or a transaction open.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Transaction mode: clients waiting for a compute connection.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Finished transactions (ReadyForQuery with status idle).
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    pub fn bytes_from_clients(&self) -> u64 {
        self.bytes_from_clients.load(Ordering::Relaxed)
    }

    pub fn bytes_to_clients(&self) -> u64 {
        self.bytes_to_clients.load(Ordering::Relaxed)
    }

    /// Transaction mode: the total time clients waited for a compute connection.
    pub fn wait_time(&self) -> Duration {
        Duration::from_micros(self.wait_micros.load(Ordering::Relaxed))
    }

    /// Transaction mode: Binds/Describes that found their statement on the connection, or not.
    pub fn prepared_hits(&self) -> u64 {
        self.prepared_hits.load(Ordering::Relaxed)
    }

    pub fn prepared_misses(&self) -> u64 {
        self.prepared_misses.load(Ordering::Relaxed)
    }

    /// How long since the last activity of an authenticated client.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Marks "a client did something now" (resets the auto-pause timer).
    pub fn touch(&self) {
        self.last_activity_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn add_transactions(&self, n: u64) {
        if n > 0 {
            self.transactions.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn add_bytes_from_clients(&self, n: usize) {
        self.bytes_from_clients
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_bytes_to_clients(&self, n: usize) {
        self.bytes_to_clients.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn prepared_hit(&self) {
        self.prepared_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn prepared_miss(&self) {
        self.prepared_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// A CREATE/ALTER/DROP ROLE went through a relay: verifiers must be re-read before the
    /// next login is checked.
    pub fn mark_roles_changed(&self) {
        self.roles_marked.fetch_add(1, Ordering::AcqRel);
        self.roles_notify.notify_one();
    }

    /// Resolves at the next [`Self::mark_roles_changed`] (or at once if one came since the
    /// last wait).
    pub async fn roles_marked(&self) {
        self.roles_notify.notified().await
    }

    /// The role changes marked so far; pass it to [`Self::roles_refreshed_to`] once a refresh
    /// that started after this call is stored.
    pub fn roles_marks(&self) -> u64 {
        self.roles_marked.load(Ordering::Acquire)
    }

    pub fn roles_refreshed_to(&self, marks: u64) {
        self.roles_refreshed.fetch_max(marks, Ordering::AcqRel);
    }

    /// A role change was marked that no refresh has covered yet.
    pub fn roles_pending(&self) -> bool {
        self.roles_refreshed.load(Ordering::Acquire) < self.roles_marked.load(Ordering::Acquire)
    }

    /// Counts an active session until the guard is dropped.
    pub fn active_guard(&self) -> ActiveGuard<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.touch();
        ActiveGuard { counters: self }
    }

    /// Counts a client waiting for a pooled connection until the guard is dropped; the time it
    /// waited is added to the total then.
    pub fn waiting_guard(&self) -> WaitingGuard<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        WaitingGuard {
            counters: self,
            since: Instant::now(),
        }
    }
}

/// One active session (a request in flight or a transaction open).
#[must_use]
pub struct ActiveGuard<'a> {
    counters: &'a LoadCounters,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
        self.counters.touch();
    }
}

/// One client waiting for a pooled compute connection.
#[must_use]
pub struct WaitingGuard<'a> {
    counters: &'a LoadCounters,
    since: Instant,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
        self.counters
            .wait_micros
            .fetch_add(self.since.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

/// Held by an authenticated client for as long as it is connected: it counts as a client of
/// the cluster (toward `max_client_connections`, the idle timer and, in session mode, pause
/// blocking).
#[must_use]
pub struct ClientLease {
    shared: Arc<Shared>,
}

impl Drop for ClientLease {
    fn drop(&mut self) {
        self.shared.counters.clients.fetch_sub(1, Ordering::Relaxed);
        self.shared.counters.touch();
    }
}

impl ClusterHandle {
    /// Counts an authenticated client, unless the cluster already has `max_client_connections`.
    pub fn try_lease(&self) -> Option<ClientLease> {
        let counters = &self.shared.counters;
        let max = self.shared.config.max_client_connections;
        counters
            .clients
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        counters.touch();
        Some(ClientLease {
            shared: self.shared.clone(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Counters of no cluster, for other modules' tests.
    pub(crate) fn counters() -> LoadCounters {
        LoadCounters::new()
    }

    #[test]
    fn guards_pair_their_changes() {
        let counters = LoadCounters::new();
        {
            let _a = counters.active_guard();
            let _b = counters.active_guard();
            let _w = counters.waiting_guard();
            assert_eq!((counters.active(), counters.waiting()), (2, 1));
        }
        assert_eq!((counters.active(), counters.waiting()), (0, 0));
        assert!(!counters.roles_pending());
        counters.mark_roles_changed();
        let marks = counters.roles_marks();
        assert!(counters.roles_pending());
        counters.mark_roles_changed();
        counters.roles_refreshed_to(marks);
        assert!(
            counters.roles_pending(),
            "a change during the refresh is still pending"
        );
        counters.roles_refreshed_to(counters.roles_marks());
        assert!(!counters.roles_pending());
    }
}
