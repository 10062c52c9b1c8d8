//! The machine budget: how many ACUs all running clusters may hold together
//! (`[capacity] max_total_acu`, by default what the machine's cores and memory make).
//!
//! One [`Budget`] is shared by every cluster (by `Arc`; no global state). Each cluster's task
//! tells it what it holds ([`Budget::hold`], [`Budget::release`]) and asks it before a
//! scale-up ([`Budget::grow`]); a client waking a paused cluster asks it before the resume
//! ([`Budget::admit`]), which may ask another cluster to pause through the [`Tenant`] trait
//! and, otherwise, tells it to wait for [`Budget::changes`]. The decisions themselves are the
//! pure functions of [`policy`]; [`machine`] reads the default.
//!
//! The ledger is one lock held only to read or write it; a tenant's standing is read and a
//! pause is asked for without waiting on anything.

pub mod machine;
pub mod policy;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::CapacityConfig;
pub use policy::{Admission, Growth, Holder, WaitReason};

/// What the budget needs to know of a cluster, and the one thing it may ask of it.
pub trait Tenant: Send + Sync {
    /// How the cluster stands now; `None` once it is gone.
    fn standing(&self) -> Option<Standing>;
    /// Asks the cluster to pause to make room for `for_cluster`; it pauses only if it still
    /// may (idle, `min_acu` = 0), and never waits here.
    fn reclaim(&self, for_cluster: &str);
}

/// A cluster's standing, as its [`Tenant`] reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    pub min_acu: f64,
    pub idle_for: Duration,
    pub busy: bool,
    pub pausing: bool,
}

/// Where `max_total_acu` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetSource {
    /// `[capacity] max_total_acu` in the config file.
    Config,
    /// The machine's cores and memory, read at start.
    Machine,
}

/// The budget in `/status` (`"capacity"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BudgetStatus {
    pub max_total_acu: f64,
    pub source: BudgetSource,
    /// What running and resuming clusters hold now.
    pub held_acu: f64,
}

struct Member {
    tenant: Arc<dyn Tenant>,
    held: f64,
}

/// The machine budget shared by every cluster.
pub struct Budget {
    max_total_acu: f64,
    source: BudgetSource,
    step_acu: f64,
    members: Mutex<BTreeMap<String, Member>>,
    /// Bumped whenever ACUs are given back, so that waiting resumes look again.
    changed: watch::Sender<u64>,
}

impl Budget {
    /// The budget the config asks for, else the machine's.
    pub fn from_config(capacity: &CapacityConfig) -> Budget {
        match capacity.max_total_acu {
            Some(max) => Budget::new(max, BudgetSource::Config, capacity.step_acu),
            None => Budget::new(
                machine::Machine::this().acu(capacity),
                BudgetSource::Machine,
                capacity.step_acu,
            ),
        }
    }

    pub fn new(max_total_acu: f64, source: BudgetSource, step_acu: f64) -> Budget {
        Budget {
            max_total_acu,
            source,
            step_acu,
            members: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
        }
    }

    /// A budget nothing exceeds (tests of one cluster).
    pub fn unlimited() -> Budget {
        Budget::new(f64::INFINITY, BudgetSource::Config, 0.5)
    }

    pub fn max_total_acu(&self) -> f64 {
        self.max_total_acu
    }

    pub fn status(&self) -> BudgetStatus {
        let members = self.members.lock().expect("budget lock");
        BudgetStatus {
            max_total_acu: self.max_total_acu,
            source: self.source,
            held_acu: members.values().map(|m| m.held).sum(),
        }
    }

    /// A cluster joins, holding nothing.
    pub fn join(&self, name: &str, tenant: Arc<dyn Tenant>) {
        self.members
            .lock()
            .expect("budget lock")
            .insert(name.to_string(), Member { tenant, held: 0.0 });
    }

    /// A cluster is gone (shut down or dropped): what it held is free.
    pub fn leave(&self, name: &str) {
        self.members.lock().expect("budget lock").remove(name);
        self.changed.send_modify(|n| *n += 1);
    }

    /// The cluster holds `acu` now (it started, or a resize took).
    pub fn hold(&self, name: &str, acu: f64) {
        let lowered = {
            let mut members = self.members.lock().expect("budget lock");
            let Some(member) = members.get_mut(name) else {
                return;
            };
            let lowered = acu < member.held;
            member.held = acu;
            lowered
        };
        if lowered {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// The cluster holds nothing any more (paused or failed).
    pub fn release(&self, name: &str) {
        self.hold(name, 0.0);
    }

    /// Wakes whenever ACUs are given back.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether `name` may resume with `need` ACUs now. When it fits, `need` is reserved for it
    /// at once; when a cluster is to be paused for it, that cluster is asked to. A cluster that
    /// holds ACUs already (another client's resume reserved them) fits.
    pub fn admit(&self, name: &str, need: f64) -> Admission {
        let (admission, victim) = {
            let mut members = self.members.lock().expect("budget lock");
            if members.get(name).is_some_and(|m| m.held > 0.0) {
                return Admission::Fits;
            }
            let holders: Vec<Holder> = members
                .iter()
                .filter(|(_, m)| m.held > 0.0)
                .filter_map(|(n, m)| {
                    let standing = m.tenant.standing()?;
                    Some(Holder {
                        name: n.clone(),
                        held_acu: m.held,
                        min_acu: standing.min_acu,
                        idle_for: standing.idle_for,
                        busy: standing.busy,
                        pausing: standing.pausing,
                    })
                })
                .collect();
            let admission = policy::admit(self.max_total_acu, &holders, name, need);
            let mut victim = None;
            match &admission {
                Admission::Fits => {
                    if let Some(member) = members.get_mut(name) {
                        member.held = need;
                    }
                }
                Admission::Pause { victim: v } => {
                    victim = members.get(v).map(|m| m.tenant.clone());
                }
                Admission::Wait(_) => {}
            }
            (admission, victim)
        };
        if let Some(victim) = victim {
            victim.reclaim(name);
        }
        admission
    }

    /// A running cluster at `from` wants `to`: how far it may go. What it is granted is held
    /// at once; if the resize then fails, the cluster holds `from` again through [`Self::hold`].
    pub fn grow(&self, name: &str, from: f64, to: f64) -> Growth {
        let mut members = self.members.lock().expect("budget lock");
        let others: f64 = members
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .map(|(_, m)| m.held)
            .sum();
        let growth = policy::grow(self.max_total_acu, others, from, to, self.step_acu);
        let granted = match growth {
            Growth::Full => to,
            Growth::Capped { to, .. } => to,
            Growth::Refused { .. } => from,
        };
        if let Some(member) = members.get_mut(name) {
            member.held = granted;
        }
        growth
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Idle {
        idle_secs: u64,
        reclaims: AtomicUsize,
    }

    impl Tenant for Idle {
        fn standing(&self) -> Option<Standing> {
            Some(Standing {
                min_acu: 0.0,
                idle_for: Duration::from_secs(self.idle_secs),
                busy: false,
                pausing: false,
            })
        }
        fn reclaim(&self, _for_cluster: &str) {
            self.reclaims.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn idle(secs: u64) -> Arc<Idle> {
        Arc::new(Idle {
            idle_secs: secs,
            reclaims: AtomicUsize::new(0),
        })
    }

    #[test]
    fn a_resume_reserves_and_the_next_asks_the_longest_idle_to_pause() {
        let budget = Budget::new(1.0, BudgetSource::Config, 0.5);
        let (a, b, c) = (idle(100), idle(5), idle(0));
        budget.join("a", a.clone());
        budget.join("b", b.clone());
        budget.join("c", c.clone());
        assert_eq!(budget.admit("a", 0.5), Admission::Fits);
        assert_eq!(budget.admit("b", 0.5), Admission::Fits);
        assert_eq!(budget.status().held_acu, 1.0);
        assert_eq!(
            budget.admit("c", 0.5),
            Admission::Pause {
                victim: "a".to_string()
            }
        );
        assert_eq!(a.reclaims.load(Ordering::SeqCst), 1);
        assert_eq!(b.reclaims.load(Ordering::SeqCst), 0);
        let changes = budget.changes();
        budget.release("a");
        assert!(
            changes.has_changed().unwrap(),
            "a release wakes the waiters"
        );
        assert_eq!(budget.admit("c", 0.5), Admission::Fits);
    }

    #[test]
    fn growth_is_held_and_a_failed_resize_gives_it_back() {
        let budget = Budget::new(1.5, BudgetSource::Config, 0.5);
        budget.join("a", idle(0));
        budget.join("b", idle(0));
        budget.hold("a", 0.5);
        budget.hold("b", 0.5);
        assert_eq!(
            budget.grow("b", 0.5, 2.0),
            Growth::Capped { to: 1.0, free: 0.5 }
        );
        assert_eq!(budget.status().held_acu, 1.5);
        assert_eq!(
            budget.grow("a", 0.5, 1.0),
            Growth::Refused { free: 0.0 },
            "b took the rest: a cannot take b's share"
        );
        budget.hold("b", 0.5);
        assert_eq!(budget.grow("a", 0.5, 1.0), Growth::Full);
    }
}
