//! The machine budget's policy, as pure functions of the clusters that hold ACUs: whether a
//! resume fits, and if not which cluster to pause for it ([`admit`]); how far a scale-up may go
//! ([`grow`]). No clock, no locks: the tests give them synthetic cluster sets.
//!
//! The policy, in words:
//! - Running clusters hold their ACUs (a resuming one holds its start size). Their sum never
//!   goes above `max_total_acu` through a scale-up or a resume.
//! - A scale-up that does not fit is capped at what fits, in whole steps; with less than a
//!   step free it is refused. Either way the cluster says `budget_capped`.
//! - A resume needs its start size (`min_acu`, or one step when `min_acu` is 0). When it does
//!   not fit, the longest-idle running cluster that may pause (`min_acu` = 0, no client in a
//!   transaction, in session mode no client at all, not the one resuming) is paused for it.
//!   While clusters asked to pause are stopping and their ACUs would make room, it waits for
//!   them; when nothing can be paused, it waits for room (up to its `resume_timeout`).

use std::time::Duration;

/// Two budgets that differ by less than this are equal (sums of halves and quarters).
const EPSILON: f64 = 1e-9;

/// A cluster holding ACUs, as the policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    pub name: String,
    /// What it holds now: its running size, or its start size while it resumes.
    pub held_acu: f64,
    pub min_acu: f64,
    /// How long since its last client activity.
    pub idle_for: Duration,
    /// Clients that a pause would cut: in a transaction (any client, in session mode).
    pub busy: bool,
    /// Its compute is already stopping: its ACUs come back soon.
    pub pausing: bool,
}

impl Holder {
    /// Whether the policy may pause it for another cluster.
    fn pausable(&self) -> bool {
        self.min_acu == 0.0 && !self.busy && !self.pausing && self.held_acu > 0.0
    }
}

/// What a resume may do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// It fits: start.
    Fits,
    /// Pause this cluster, then ask again.
    Pause { victim: String },
    /// Nothing to do now but wait, for the reason given.
    Wait(WaitReason),
}

/// Why a resume waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// Clusters are pausing whose ACUs will make room.
    VictimsPausing,
    /// Every running cluster is busy or keeps a minimum: no cluster can be paused.
    NothingPausable,
}

impl WaitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::VictimsPausing => "waiting for paused clusters to stop",
            WaitReason::NothingPausable => {
                "no running cluster can be paused (each has clients, a transaction or min_acu > 0)"
            }
        }
    }
}

/// Whether `asking` may start with `need` ACUs within `max_total` beside `holders` (which may
/// include `asking` itself; its own holding does not count against it).
pub fn admit(max_total: f64, holders: &[Holder], asking: &str, need: f64) -> Admission {
    let others = || holders.iter().filter(|h| h.name != asking);
    let held: f64 = others().map(|h| h.held_acu).sum();
    if held + need <= max_total + EPSILON {
        return Admission::Fits;
    }
    let freeing: f64 = others().filter(|h| h.pausing).map(|h| h.held_acu).sum();
    if held - freeing + need <= max_total + EPSILON {
        return Admission::Wait(WaitReason::VictimsPausing);
    }
    let victim = others()
        .filter(|h| h.pausable())
        .max_by(|a, b| a.idle_for.cmp(&b.idle_for).then(b.name.cmp(&a.name)));
    match victim {
        Some(victim) => Admission::Pause {
            victim: victim.name.clone(),
        },
        None if freeing > 0.0 => Admission::Wait(WaitReason::VictimsPausing),
        None => Admission::Wait(WaitReason::NothingPausable),
    }
}

/// How far a scale-up may go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Growth {
    /// All the way.
    Full,
    /// Only to `to`, all that fits in whole steps.
    Capped { to: f64, free: f64 },
    /// Not even a step fits.
    Refused { free: f64 },
}

/// A cluster at `from` wants `to`; the others hold `others_held` of `max_total`.
pub fn grow(max_total: f64, others_held: f64, from: f64, to: f64, step: f64) -> Growth {
    let free = (max_total - others_held - from).max(0.0);
    if to - from <= free + EPSILON {
        return Growth::Full;
    }
    let steps = ((free + EPSILON) / step).floor();
    if steps < 1.0 {
        return Growth::Refused { free };
    }
    Growth::Capped {
        to: from + steps * step,
        free,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(name: &str, held: f64, idle_secs: u64) -> Holder {
        Holder {
            name: name.to_string(),
            held_acu: held,
            min_acu: 0.0,
            idle_for: Duration::from_secs(idle_secs),
            busy: false,
            pausing: false,
        }
    }

    #[test]
    fn a_resume_that_fits_starts() {
        let holders = [holder("a", 0.5, 10)];
        assert_eq!(admit(1.5, &holders, "b", 0.5), Admission::Fits);
        assert_eq!(admit(1.0, &holders, "b", 0.5), Admission::Fits);
    }

    #[test]
    fn the_asking_cluster_does_not_count_against_itself() {
        let holders = [holder("a", 1.0, 10), holder("b", 0.5, 0)];
        assert_eq!(admit(1.5, &holders, "b", 0.5), Admission::Fits);
    }

    #[test]
    fn the_longest_idle_pausable_cluster_is_paused() {
        let holders = [
            holder("a", 0.5, 30),
            holder("b", 0.5, 300),
            holder("c", 0.5, 5),
        ];
        assert_eq!(
            admit(1.5, &holders, "d", 0.5),
            Admission::Pause {
                victim: "b".to_string()
            }
        );
    }

    #[test]
    fn busy_clusters_and_those_with_a_minimum_are_never_paused() {
        let mut busy = holder("busy", 0.5, 900);
        busy.busy = true;
        let mut kept = holder("kept", 0.5, 800);
        kept.min_acu = 0.5;
        let holders = [busy.clone(), kept.clone(), holder("idle", 0.5, 10)];
        assert_eq!(
            admit(1.5, &holders, "new", 0.5),
            Admission::Pause {
                victim: "idle".to_string()
            }
        );
        assert_eq!(
            admit(1.0, &[busy, kept], "new", 0.5),
            Admission::Wait(WaitReason::NothingPausable)
        );
    }

    #[test]
    fn a_pause_under_way_that_makes_room_is_waited_for() {
        let mut stopping = holder("a", 1.0, 100);
        stopping.pausing = true;
        let holders = [stopping, holder("b", 0.5, 500)];
        assert_eq!(
            admit(1.5, &holders, "c", 0.5),
            Admission::Wait(WaitReason::VictimsPausing),
            "b is not paused too: a's 1 ACU will do"
        );
        // Not enough coming back: one more is paused.
        assert_eq!(
            admit(1.5, &holders, "c", 1.5),
            Admission::Pause {
                victim: "b".to_string()
            }
        );
    }

    #[test]
    fn ties_in_idleness_pick_the_first_name() {
        let holders = [holder("b", 0.5, 60), holder("a", 0.5, 60)];
        assert_eq!(
            admit(1.0, &holders, "c", 0.5),
            Admission::Pause {
                victim: "a".to_string()
            }
        );
    }

    #[test]
    fn scale_ups_are_capped_at_what_fits_in_steps() {
        assert_eq!(grow(4.0, 1.0, 1.0, 2.0, 0.5), Growth::Full);
        assert_eq!(
            grow(4.0, 1.0, 1.0, 4.0, 0.5),
            Growth::Capped { to: 3.0, free: 2.0 }
        );
        assert_eq!(
            grow(1.5, 0.5, 0.5, 1.0, 0.5),
            Growth::Full,
            "exactly the budget fits"
        );
        assert_eq!(grow(1.5, 1.0, 0.5, 2.0, 0.5), Growth::Refused { free: 0.0 });
        assert_eq!(
            grow(1.75, 0.5, 0.5, 2.0, 0.5),
            Growth::Capped {
                to: 1.0,
                free: 0.75
            },
            "three quarters free is one step"
        );
    }

    #[test]
    fn a_budget_already_exceeded_refuses_growth() {
        assert_eq!(grow(1.0, 2.0, 0.5, 1.0, 0.5), Growth::Refused { free: 0.0 });
    }
}
