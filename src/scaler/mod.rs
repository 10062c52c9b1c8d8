//! The scaler: every tick, usage in → target ACU out.
//!
//! The scaling loop, in prose: each second the cluster task reads its compute's usage (CPU time
//! and memory from the cgroup, or /proc without one) and the proxy's counters (busy sessions,
//! waiting clients). [`Scaler::sample`] turns the CPU time delta into cores; the pure
//! [`policy`] decides; the cluster task applies a new size live (limits, then the reloadable
//! Postgres settings) and records the decision with its reason. ACU-seconds are metered on the
//! same tick.

pub mod policy;

use std::time::{Duration, Instant};

use crate::runtime::Usage;
use policy::{Decision, PolicyConfig, PolicyState, Sample};

pub struct Scaler {
    pub config: PolicyConfig,
    state: PolicyState,
    started: Instant,
    last: Option<(Instant, Duration)>,
}

impl Scaler {
    pub fn new(config: PolicyConfig) -> Scaler {
        Scaler {
            config,
            state: PolicyState::default(),
            started: Instant::now(),
            last: None,
        }
    }

    /// Forgets the previous CPU reading (a new compute starts its counters at zero).
    pub fn reset(&mut self) {
        self.last = None;
        self.state = PolicyState::default();
    }

    /// Turns raw usage into a sample; `None` on the first reading after a (re)start.
    pub fn sample(
        &mut self,
        usage: Usage,
        active_sessions: usize,
        waiting_clients: usize,
        now: Instant,
    ) -> Option<Sample> {
        let previous = self.last.replace((now, usage.cpu_time));
        let (then, cpu_then) = previous?;
        let elapsed = now.duration_since(then).as_secs_f64();
        if elapsed <= 0.0 {
            return None;
        }
        let cpu_cores = usage.cpu_time.saturating_sub(cpu_then).as_secs_f64() / elapsed;
        Some(Sample {
            cpu_cores,
            memory_working_set_mib: usage.memory.working_set_mib,
            memory_floor_mib: usage.memory.floor_mib,
            active_sessions,
            waiting_clients,
        })
    }

    pub fn decide(&mut self, sample: &Sample, current_acu: f64, now: Instant) -> Decision {
        let at = now.duration_since(self.started);
        self.config.decide(&mut self.state, sample, current_acu, at)
    }
}
