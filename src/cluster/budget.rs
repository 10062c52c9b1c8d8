//! The cluster's side of the machine budget ([`crate::capacity`]): what it reports of itself
//! ([`Member`], its [`Tenant`]), how a client's resume waits for room
//! ([`ClusterHandle::make_room`]), and how a scale-up asks for its ACUs
//! ([`ClusterTask::granted`]).
//!
//! The task keeps the ledger right where its state changes: a start holds the start size, a
//! resize that took holds the new size, and `paused` or `failed` holds nothing
//! (`ClusterTask::set_state`).

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::events::EventKind;
use super::handle::{AttachError, ClusterHandle, Command};
use super::state::ClusterState;
use super::task::ClusterTask;
use super::Shared;
use crate::capacity::{Admission, Growth, Standing, Tenant};
use crate::config::PoolMode;

/// How often a resume waiting for room looks again even when no ACUs were given back (a busy
/// cluster may have become idle, and pausable).
const LOOK_AGAIN: Duration = Duration::from_millis(500);

/// A cluster as the budget sees it: weak references only, so that the budget never keeps a
/// cluster's task or its state alive.
pub(super) struct Member {
    pub(super) shared: Weak<Shared>,
    pub(super) state: watch::Receiver<ClusterState>,
    pub(super) commands: mpsc::WeakSender<Command>,
}

impl Tenant for Member {
    fn standing(&self) -> Option<Standing> {
        let shared = self.shared.upgrade()?;
        let counters = &shared.counters;
        let busy = match shared.config.pool_mode {
            PoolMode::Session => counters.clients() > 0,
            PoolMode::Transaction => counters.active() + counters.waiting() > 0,
        };
        Some(Standing {
            min_acu: shared.config.min_acu,
            idle_for: counters.idle_for(),
            busy,
            pausing: matches!(*self.state.borrow(), ClusterState::Pausing),
        })
    }

    fn reclaim(&self, for_cluster: &str) {
        if let Some(commands) = self.commands.upgrade() {
            let _ = commands.try_send(Command::Reclaim {
                for_cluster: for_cluster.to_string(),
            });
        }
    }
}

impl ClusterHandle {
    /// Waits until the budget lets this cluster start (pausing others for it as the policy
    /// says), at most until `deadline`.
    pub(super) async fn make_room(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<(), AttachError> {
        let budget = &self.shared.budget;
        let need = start_acu(&self.shared);
        let mut changes = budget.changes();
        let mut said = None;
        loop {
            changes.borrow_and_update();
            let admission = budget.admit(self.name(), need);
            let why = match admission {
                Admission::Fits => return Ok(()),
                Admission::Pause { victim } => {
                    format!("pausing cluster \"{victim}\", the longest idle, to make room")
                }
                Admission::Wait(reason) => reason.as_str().to_string(),
            };
            if said.as_ref() != Some(&why) {
                self.shared.events.record(
                    EventKind::BudgetWaiting,
                    format!(
                        "a resume needs {need} ACU beyond max_total_acu = {}: {why}",
                        budget.max_total_acu()
                    ),
                );
                said = Some(why);
            }
            let look_again = (tokio::time::Instant::now() + LOOK_AGAIN).min(deadline);
            let _ = tokio::time::timeout_at(look_again, changes.changed()).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(AttachError::NoCapacity {
                    cluster: self.name().to_string(),
                    need,
                    max_total_acu: budget.max_total_acu(),
                });
            }
        }
    }
}

/// What a resume holds: the task's start size (`min_acu`, or one step when it is 0).
fn start_acu(shared: &Shared) -> f64 {
    crate::acu::clamp_running(
        shared.config.min_acu,
        shared.config.min_acu,
        shared.config.max_acu,
        shared.capacity.step_acu,
    )
}

impl ClusterTask {
    /// How far a scale-up from `from` to `to` may go within the budget: the target to apply,
    /// or `None` when not even a step fits. A cap is one `budget_capped` event while it lasts.
    pub(super) fn granted(&mut self, from: f64, to: f64) -> Option<f64> {
        let budget = self.shared.budget.clone();
        let max = budget.max_total_acu();
        match budget.grow(self.name(), from, to) {
            Growth::Full => Some(to),
            Growth::Capped { to: capped, free } => {
                self.notice(
                    EventKind::BudgetCapped,
                    format!(
                        "up capped at {capped} ACU instead of {to}: {free} of max_total_acu = \
                         {max} is free"
                    ),
                );
                Some(capped)
            }
            Growth::Refused { free } => {
                self.notice(
                    EventKind::BudgetCapped,
                    format!("up refused: {to} ACU wanted, {free} of max_total_acu = {max} is free"),
                );
                None
            }
        }
    }

    /// Another cluster's resume asked this one to pause: it does if it still may.
    pub(super) fn reclaim(&mut self, for_cluster: &str) {
        let may = self.shared.config.min_acu == 0.0 && self.busy_clients() == 0;
        if !may || !matches!(self.phase, super::task::Phase::Running(_)) {
            return;
        }
        let idle = self.shared.counters.idle_for().as_secs();
        self.shared.events.record(
            EventKind::BudgetPaused,
            format!(
                "pausing, idle {idle} s, to make room for cluster \"{for_cluster}\" within \
                 max_total_acu"
            ),
        );
        self.pause(format!(
            "paused for cluster \"{for_cluster}\" (machine budget)"
        ));
    }
}
