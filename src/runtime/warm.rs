//! The warm pool: compute slots made ready ahead of need and refilled in the background, so that
//! a resume or a new cluster does not pay for creating them.
//!
//! What a slot is belongs to each runtime (a started, idle container for `docker`; a cgroup and a
//! pre-initialised data directory for `process`): a runtime implements [`SlotMaker`] and keeps a
//! [`WarmPool`] of its slots. This part only keeps the count: `size` slots ready, a refill
//! after each one taken, and the figures `/status` and `/metrics` show. An empty pool is never an
//! error: the runtime makes a slot on the spot (a miss) and the start goes on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::Notify;

/// After a failed refill, wait this long before trying again (the failure is in `/status`).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// How a runtime makes and throws away its slots.
#[async_trait]
pub trait SlotMaker: Send + Sync + 'static {
    type Slot: Send + 'static;

    /// Makes one slot ready.
    async fn make(&self) -> anyhow::Result<Self::Slot>;

    /// Releases a slot that was never used (pgtide is stopping).
    async fn discard(&self, slot: Self::Slot);
}

/// What `/status` shows of the pool (`runtime.warm_pool`) and `/metrics` exports.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct WarmPoolStatus {
    /// `runtime.warm_pool_size`.
    pub size: usize,
    /// Slots made and waiting.
    pub ready: usize,
    /// Slots holding a running compute (drawn from the pool or made cold).
    pub in_use: u64,
    /// Starts that took a ready slot.
    pub hits: u64,
    /// Starts that found the pool empty and made their slot on the spot.
    pub misses: u64,
    /// Slots made in the background.
    pub refills: u64,
    /// Background refills that failed.
    pub refill_failures: u64,
    /// Why the last refill failed, while the pool cannot refill.
    pub last_error: Option<String>,
}

/// A pool of up to `size` ready slots of one kind.
pub struct WarmPool<M: SlotMaker> {
    shared: Arc<Shared<M>>,
}

struct Shared<M: SlotMaker> {
    maker: Arc<M>,
    size: usize,
    ready: Mutex<VecDeque<M::Slot>>,
    /// Wakes the refill task after a take.
    taken: Arc<Notify>,
    in_use: Arc<AtomicU64>,
    hits: AtomicU64,
    misses: AtomicU64,
    refills: AtomicU64,
    refill_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Held by a running compute for as long as it holds its slot: counts it as in use.
pub struct SlotInUse {
    in_use: Arc<AtomicU64>,
}

impl Drop for SlotInUse {
    fn drop(&mut self) {
        self.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<M: SlotMaker> WarmPool<M> {
    /// Starts filling the pool in the background (needs a tokio runtime). `initial` are slots
    /// found ready from an earlier run (adopted, not made again).
    pub fn start(maker: Arc<M>, size: usize, initial: Vec<M::Slot>) -> WarmPool<M> {
        let shared = Arc::new(Shared {
            maker,
            size,
            ready: Mutex::new(initial.into_iter().collect()),
            taken: Arc::new(Notify::new()),
            in_use: Arc::new(AtomicU64::new(0)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            refills: AtomicU64::new(0),
            refill_failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        if size > 0 {
            tokio::spawn(refill(Arc::downgrade(&shared), shared.taken.clone()));
        }
        WarmPool { shared }
    }

    /// A ready slot, or `None` (a miss: the caller makes one itself). Either way the caller
    /// holds a slot from now on; keep the returned guard as long as it does.
    pub fn take(&self) -> (Option<M::Slot>, SlotInUse) {
        let slot = self
            .shared
            .ready
            .lock()
            .expect("warm pool lock")
            .pop_front();
        match slot {
            Some(_) => {
                self.shared.hits.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.shared.misses.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.shared.taken.notify_one();
        self.shared.in_use.fetch_add(1, Ordering::Relaxed);
        let guard = SlotInUse {
            in_use: self.shared.in_use.clone(),
        };
        (slot, guard)
    }

    pub fn status(&self) -> WarmPoolStatus {
        let s = &self.shared;
        WarmPoolStatus {
            size: s.size,
            ready: s.ready.lock().expect("warm pool lock").len(),
            in_use: s.in_use.load(Ordering::Relaxed),
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            refills: s.refills.load(Ordering::Relaxed),
            refill_failures: s.refill_failures.load(Ordering::Relaxed),
            last_error: s.last_error.lock().expect("warm pool lock").clone(),
        }
    }

    /// Releases every ready slot (pgtide is stopping).
    pub async fn drain(&self) {
        let slots: Vec<M::Slot> = self
            .shared
            .ready
            .lock()
            .expect("warm pool lock")
            .drain(..)
            .collect();
        for slot in slots {
            self.shared.maker.discard(slot).await;
        }
    }
}

/// Keeps the pool at its size, one slot at a time (making slots is heavy: initdb, container
/// start; doing it serially keeps it from competing with running computes for CPU). Holds the
/// pool weakly so that it ends with it.
async fn refill<M: SlotMaker>(pool: std::sync::Weak<Shared<M>>, taken: Arc<Notify>) {
    loop {
        let Some(shared) = pool.upgrade() else {
            return;
        };
        let missing = shared.size > shared.ready.lock().expect("warm pool lock").len();
        if !missing {
            let woken = taken.notified();
            drop(shared);
            // Woken by a take; the timeout re-checks in case the pool itself went away.
            let _ = tokio::time::timeout(Duration::from_secs(1), woken).await;
            continue;
        }
        match shared.maker.make().await {
            Ok(slot) => {
                shared.refills.fetch_add(1, Ordering::Relaxed);
                *shared.last_error.lock().expect("warm pool lock") = None;
                let surplus = {
                    let mut ready = shared.ready.lock().expect("warm pool lock");
                    if ready.len() < shared.size {
                        ready.push_back(slot);
                        None
                    } else {
                        Some(slot)
                    }
                };
                if let Some(slot) = surplus {
                    shared.maker.discard(slot).await;
                }
            }
            Err(e) => {
                shared.refill_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = format!("{e:#}"), "warm pool refill failed");
                *shared.last_error.lock().expect("warm pool lock") = Some(format!("{e:#}"));
                drop(shared);
                tokio::time::sleep(RETRY_AFTER_FAILURE).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        made: AtomicU64,
        discarded: AtomicU64,
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl SlotMaker for Counter {
        type Slot = u64;
        async fn make(&self) -> anyhow::Result<u64> {
            if self.fail.load(Ordering::Relaxed) {
                anyhow::bail!("no room");
            }
            Ok(self.made.fetch_add(1, Ordering::Relaxed))
        }
        async fn discard(&self, _slot: u64) {
            self.discarded.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counter(fail: bool) -> Arc<Counter> {
        Arc::new(Counter {
            made: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            fail: std::sync::atomic::AtomicBool::new(fail),
        })
    }

    async fn until(pool: &WarmPool<Counter>, check: impl Fn(&WarmPoolStatus) -> bool) {
        for _ in 0..200 {
            if check(&pool.status()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("pool never reached the state: {:?}", pool.status());
    }

    #[tokio::test]
    async fn fills_takes_and_refills() {
        let pool = WarmPool::start(counter(false), 2, Vec::new());
        until(&pool, |s| s.ready == 2 && s.refills == 2).await;
        let (slot, guard) = pool.take();
        assert_eq!(slot, Some(0));
        until(&pool, |s| s.ready == 2 && s.refills == 3 && s.hits == 1).await;
        assert_eq!(pool.status().in_use, 1);
        drop(guard);
        assert_eq!(pool.status().in_use, 0);
    }

    #[tokio::test]
    async fn empty_pool_is_a_miss_not_an_error() {
        let pool = WarmPool::start(counter(false), 0, Vec::new());
        let (slot, _guard) = pool.take();
        assert_eq!(slot, None);
        let status = pool.status();
        assert_eq!((status.misses, status.hits, status.in_use), (1, 0, 1));
    }

    #[tokio::test]
    async fn failed_refills_are_reported_and_adopted_slots_count_as_ready() {
        let maker = counter(true);
        let pool = WarmPool::start(maker.clone(), 2, vec![41]);
        until(&pool, |s| s.refill_failures == 1).await;
        let status = pool.status();
        assert_eq!(status.ready, 1);
        assert_eq!(status.last_error.as_deref(), Some("no room"));
        assert_eq!(pool.take().0, Some(41));
        // Stopping releases the ready slots.
        let stopping = WarmPool::start(maker.clone(), 2, vec![43]);
        stopping.drain().await;
        assert_eq!(maker.discarded.load(Ordering::Relaxed), 1);
    }
}
