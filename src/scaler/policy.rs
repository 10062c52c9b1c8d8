//! The scaling policy: a pure function of the recent samples, the current ACU and the time.
//!
//! Needed ACU = the largest of three needs, rounded up to a step and clamped to
//! [min, max] (and one step at least while running):
//! - **CPU**: cores used over the last tick, divided by the target utilisation (70 %), in ACUs.
//!   A compute pinned at its CPU limit cannot show how much more it wants, so a saturated
//!   compute (≥ 90 % of its limit) needs at least twice what it has.
//! - **Memory**: the working set (memory in use less reclaimable page cache) divided by the target
//!   (75 % of the limit, as Neon aims).
//! - **Queue**: sessions with a query in flight or a transaction open, plus clients waiting for a
//!   compute connection, at [`CORES_PER_ACTIVE_SESSION`] each.
//!
//! Up happens at once, to the needed level. Down happens one step at a time, and only after the
//! need stayed lower for the whole `scale_down_after`; a step that would put the memory limit
//! under what the compute cannot give back (anon + shmem, plus headroom) is refused. Noise
//! therefore costs little: a spike goes up once and comes back one step per delay.

use std::time::Duration;

/// Target share of the CPU limit in use.
pub const TARGET_CPU_UTILISATION: f64 = 0.7;
/// Target share of the memory limit in the working set.
pub const TARGET_MEMORY_UTILISATION: f64 = 0.75;
/// Share of the CPU limit above which the compute counts as saturated.
pub const SATURATED_CPU: f64 = 0.9;
/// Cores one busy session is assumed to want, for the queue-based need.
pub const CORES_PER_ACTIVE_SESSION: f64 = 0.125;
/// Memory kept free above the unreclaimable floor when stepping down.
pub const MEMORY_HEADROOM_MIB: f64 = 64.0;

/// One tick's measurements.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    /// Cores used on average over the last tick.
    pub cpu_cores: f64,
    /// Memory in use less reclaimable page cache.
    pub memory_working_set_mib: f64,
    /// Memory the kernel cannot reclaim (anon + shmem): the limit never goes below it.
    pub memory_floor_mib: f64,
    /// Sessions with a request in flight or a transaction open.
    pub active_sessions: usize,
    /// Clients waiting for a compute connection.
    pub waiting_clients: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyConfig {
    pub min_acu: f64,
    pub max_acu: f64,
    pub step_acu: f64,
    pub cpu_per_acu: f64,
    pub memory_mib_per_acu: f64,
    pub scale_down_after: Duration,
}

/// What the policy decided this tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Stay where we are.
    Hold,
    Up {
        to: f64,
        signal: Signal,
        reason: String,
    },
    Down {
        to: f64,
        signal: Signal,
        reason: String,
    },
    /// Need is lower, but the step down would cut into memory that cannot be reclaimed.
    DownRefused { reason: String },
    /// Need is above `max_acu` and we are there already.
    AtMax { reason: String },
}

/// What the policy remembers between ticks.
#[derive(Debug, Clone, Default)]
pub struct PolicyState {
    /// Since when the need has been below the current ACU.
    lower_since: Option<Duration>,
}

/// Which of the three needs set the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Cpu,
    Memory,
    Queue,
}

impl Signal {
    /// The `reason` label of `pgtide_cluster_scaling_events_total`.
    pub fn label(self) -> &'static str {
        match self {
            Signal::Cpu => "cpu",
            Signal::Memory => "memory",
            Signal::Queue => "queue",
        }
    }
}

/// The needed ACU, the signal that set it, and that signal's reading for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    pub acu: f64,
    pub signal: Signal,
    pub reason: String,
}

impl PolicyConfig {
    fn round_and_clamp(&self, acu: f64) -> f64 {
        let stepped = crate::acu::round_up_to_step(acu, self.step_acu);
        crate::acu::clamp_running(stepped, self.min_acu, self.max_acu, self.step_acu)
    }

    /// The largest of the CPU, memory and queue needs (not yet rounded or clamped).
    pub fn need(&self, sample: &Sample, current_acu: f64) -> Need {
        let cpu_limit = current_acu * self.cpu_per_acu;
        let memory_limit = current_acu * self.memory_mib_per_acu;
        let mut cpu_need = sample.cpu_cores / TARGET_CPU_UTILISATION / self.cpu_per_acu;
        let saturated = cpu_limit > 0.0 && sample.cpu_cores >= SATURATED_CPU * cpu_limit;
        if saturated {
            cpu_need = cpu_need.max(current_acu * 2.0);
        }
        let memory_need =
            sample.memory_working_set_mib / TARGET_MEMORY_UTILISATION / self.memory_mib_per_acu;
        let busy = sample.active_sessions + sample.waiting_clients;
        let queue_need = busy as f64 * CORES_PER_ACTIVE_SESSION / self.cpu_per_acu;
        let percent = |used: f64, limit: f64| {
            if limit > 0.0 {
                used / limit * 100.0
            } else {
                0.0
            }
        };
        if cpu_need >= memory_need && cpu_need >= queue_need {
            Need {
                acu: cpu_need,
                signal: Signal::Cpu,
                reason: format!(
                    "CPU {:.0}% of limit ({:.2} of {:.2} cores)",
                    percent(sample.cpu_cores, cpu_limit),
                    sample.cpu_cores,
                    cpu_limit
                ),
            }
        } else if memory_need >= queue_need {
            Need {
                acu: memory_need,
                signal: Signal::Memory,
                reason: format!(
                    "memory {:.0}% of limit ({:.0} of {:.0} MiB)",
                    percent(sample.memory_working_set_mib, memory_limit),
                    sample.memory_working_set_mib,
                    memory_limit
                ),
            }
        } else {
            Need {
                acu: queue_need,
                signal: Signal::Queue,
                reason: format!(
                    "{} busy session{}{}",
                    busy,
                    if busy == 1 { "" } else { "s" },
                    if sample.waiting_clients > 0 {
                        format!(" ({} waiting for a connection)", sample.waiting_clients)
                    } else {
                        String::new()
                    }
                ),
            }
        }
    }

    /// Decides this tick. `now` is any monotonic clock (a trace's offset in tests).
    pub fn decide(
        &self,
        state: &mut PolicyState,
        sample: &Sample,
        current_acu: f64,
        now: Duration,
    ) -> Decision {
        let need = self.need(sample, current_acu);
        let target = self.round_and_clamp(need.acu);
        if target > current_acu + 1e-9 {
            state.lower_since = None;
            return Decision::Up {
                to: target,
                signal: need.signal,
                reason: need.reason,
            };
        }
        if target >= current_acu - 1e-9 {
            state.lower_since = None;
            if need.acu > self.max_acu && current_acu >= self.max_acu {
                return Decision::AtMax {
                    reason: format!(
                        "need {:.1} ACU but max_acu is {}: {}",
                        need.acu, self.max_acu, need.reason
                    ),
                };
            }
            return Decision::Hold;
        }
        let since = *state.lower_since.get_or_insert(now);
        if now.saturating_sub(since) < self.scale_down_after {
            return Decision::Hold;
        }
        let to = (current_acu - self.step_acu).max(target);
        let new_limit = to * self.memory_mib_per_acu;
        let floor = sample.memory_floor_mib + MEMORY_HEADROOM_MIB;
        if new_limit < floor {
            return Decision::DownRefused {
                reason: format!(
                    "memory floor {:.0} MiB (anon + shmem + headroom) is above the {:.0} MiB of {to} ACU",
                    floor, new_limit
                ),
            };
        }
        // The next step down needs another full delay of lower need.
        state.lower_since = Some(now);
        Decision::Down {
            to,
            signal: need.signal,
            reason: format!(
                "need {:.2} ACU for {}: {}",
                need.acu,
                humantime::format_duration(self.scale_down_after),
                need.reason
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PolicyConfig {
        PolicyConfig {
            min_acu: 0.5,
            max_acu: 8.0,
            step_acu: 0.5,
            cpu_per_acu: 0.25,
            memory_mib_per_acu: 2048.0,
            scale_down_after: Duration::from_secs(30),
        }
    }

    fn cpu(cores: f64) -> Sample {
        Sample {
            cpu_cores: cores,
            memory_working_set_mib: 200.0,
            memory_floor_mib: 150.0,
            ..Default::default()
        }
    }

    /// Replays a trace of one sample per second; returns the ACU after each tick and the number
    /// of changes. The compute's CPU use cannot exceed its limit, as in real life.
    fn replay(
        config: &PolicyConfig,
        demand_cores: impl Fn(usize) -> f64,
        seconds: usize,
    ) -> (Vec<f64>, usize) {
        let mut state = PolicyState::default();
        let mut acu = config.min_acu.max(config.step_acu);
        let mut history = Vec::with_capacity(seconds);
        let mut changes = 0;
        for t in 0..seconds {
            let limit = acu * config.cpu_per_acu;
            let sample = cpu(demand_cores(t).min(limit));
            match config.decide(&mut state, &sample, acu, Duration::from_secs(t as u64)) {
                Decision::Up { to, .. } | Decision::Down { to, .. } => {
                    acu = to;
                    changes += 1;
                }
                _ => {}
            }
            assert!(acu >= config.min_acu && acu <= config.max_acu && acu >= config.step_acu);
            history.push(acu);
        }
        (history, changes)
    }

    #[test]
    fn idle_stays_at_the_minimum() {
        let (history, changes) = replay(&config(), |_| 0.0, 600);
        assert!(history.iter().all(|a| *a == 0.5));
        assert_eq!(changes, 0);
    }

    #[test]
    fn a_spike_goes_up_within_one_tick_and_down_only_after_the_delay() {
        let config = config();
        // 1.5 cores wanted from t = 10 to t = 40.
        let (history, _) = replay(
            &config,
            |t| if (10..40).contains(&t) { 1.5 } else { 0.02 },
            200,
        );
        assert!(
            history[10] > 0.5,
            "up within the tick: {:?}",
            &history[8..14]
        );
        let peak = history.iter().cloned().fold(0.0, f64::max);
        assert!(
            peak >= (1.5 / 0.7 / 0.25 - 0.5f64).min(8.0),
            "reaches the need: {peak}"
        );
        // No step down before 30 s of lower need after the load ended at t = 40.
        assert!(
            history[40..69].iter().all(|a| *a == history[39]),
            "{:?}",
            &history[38..72]
        );
        assert!(history[70] < history[39]);
        // One step at a time.
        for pair in history.windows(2) {
            assert!(pair[1] >= pair[0] - 0.5 - 1e-9);
        }
    }

    #[test]
    fn saturation_doubles_until_the_need_shows() {
        let config = config();
        let (history, _) = replay(&config, |_| 2.0, 10);
        // 2 cores wanted: 0.5 → 1 → 2 → 4 → 8 ACU (2 cores) and more is clamped at max.
        assert_eq!(&history[..5], &[1.0, 2.0, 4.0, 8.0, 8.0]);
    }

    #[test]
    fn a_ramp_follows_the_load_and_the_bounds_hold() {
        let config = config();
        let (history, _) = replay(&config, |t| t as f64 / 100.0, 300);
        assert_eq!(*history.last().unwrap(), 8.0);
        for (t, acu) in history.iter().enumerate() {
            let demand: f64 = (t as f64 / 100.0).min(2.0);
            // Never more than one step below what the load needs, within max.
            let needed = (demand / 0.7 / 0.25).min(8.0);
            assert!(*acu + 0.5 + 1e-9 >= needed, "t={t} acu={acu} need={needed}");
        }
    }

    #[test]
    fn a_noisy_plateau_changes_little() {
        let config = config();
        // 0.5 cores ± 20 % noise, deterministic.
        let noise = |t: usize| ((t * 7919) % 41) as f64 / 41.0 * 0.2 - 0.1;
        let (history, changes) = replay(&config, |t| 0.5 + noise(t), 1800);
        assert!(
            changes <= 12,
            "{changes} changes in 30 minutes of a noisy plateau"
        );
        assert!(
            history[1799] >= 2.5 && history[1799] <= 4.0,
            "{}",
            history[1799]
        );
    }

    #[test]
    fn a_sawtooth_does_not_flap_faster_than_the_delay() {
        let config = config();
        // 0 → 1 core over 20 s, then drop, repeated.
        let (_, changes) = replay(&config, |t| (t % 20) as f64 / 20.0, 600);
        // At most an up per tooth plus one down per scale_down_after.
        assert!(changes <= 30 + 20, "{changes}");
    }

    #[test]
    fn a_diurnal_day_uses_far_less_than_max() {
        let config = config();
        let day = 24 * 3600;
        let demand = |t: usize| {
            let hour = t as f64 / 3600.0;
            let wave = (std::f64::consts::PI * (hour - 6.0) / 12.0).sin().max(0.0);
            0.05 + 1.2 * wave
        };
        let (history, _) = replay(&config, demand, day);
        let acu_hours: f64 = history.iter().sum::<f64>() / 3600.0;
        assert!(acu_hours < 8.0 * 24.0 * 0.6, "{acu_hours} ACU-hours");
        let below = history
            .iter()
            .enumerate()
            .filter(|(t, acu)| **acu * 0.25 < demand(*t) - 1e-9)
            .count();
        assert!(below < day / 100, "{below} s below need");
    }

    #[test]
    fn memory_and_queue_needs_count() {
        let config = config();
        let mut state = PolicyState::default();
        let memory = Sample {
            memory_working_set_mib: 3000.0,
            ..Default::default()
        };
        match config.decide(&mut state, &memory, 0.5, Duration::ZERO) {
            Decision::Up { to, signal, reason } => {
                assert_eq!(to, 2.0);
                assert_eq!(signal, Signal::Memory);
                assert!(reason.starts_with("memory"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let queue = Sample {
            active_sessions: 8,
            ..Default::default()
        };
        match config.decide(&mut state, &queue, 0.5, Duration::ZERO) {
            Decision::Up { to, signal, reason } => {
                assert_eq!(to, 4.0);
                assert_eq!(signal, Signal::Queue);
                assert_eq!(reason, "8 busy sessions");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn memory_floor_refuses_a_step_down() {
        let config = config();
        let mut state = PolicyState::default();
        let sample = Sample {
            memory_working_set_mib: 100.0,
            memory_floor_mib: 2000.0,
            ..Default::default()
        };
        assert_eq!(
            config.decide(&mut state, &sample, 1.5, Duration::ZERO),
            Decision::Hold
        );
        match config.decide(&mut state, &sample, 1.5, Duration::from_secs(31)) {
            Decision::DownRefused { reason } => {
                assert!(reason.contains("memory floor 2064 MiB"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn max_reached_is_reported() {
        let config = config();
        let mut state = PolicyState::default();
        let decision = config.decide(&mut state, &cpu(2.0), 8.0, Duration::ZERO);
        assert!(matches!(decision, Decision::AtMax { .. }), "{decision:?}");
    }
}
