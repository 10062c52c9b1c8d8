//! Capacity units: what one ACU is in cores, memory and Postgres settings.
//!
//! An ACU value is kept as an `f64` rounded to the configured step; 0 means paused. Everything
//! that turns ACUs into something a compute can apply lives here, so that the runtimes, the
//! scaler and the README's table agree.

use serde::Serialize;

use crate::config::CapacityConfig;

/// The fixed shared_buffers: the OS page cache inside the memory limit is the cache that scales
/// (as Neon does), so a resize never needs a restart.
pub const SHARED_BUFFERS_MIB: u64 = 128;

/// CPU and memory that an ACU value grants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ComputeSize {
    pub acu: f64,
    pub cpu_cores: f64,
    pub memory_mib: u64,
}

impl ComputeSize {
    pub fn of(acu: f64, capacity: &CapacityConfig) -> ComputeSize {
        ComputeSize {
            acu,
            cpu_cores: acu * capacity.cpu_per_acu,
            memory_mib: (acu * capacity.memory_mib_per_acu as f64).round() as u64,
        }
    }

    /// Memory-sized settings that Postgres reloads without a restart (ALTER SYSTEM +
    /// pg_reload_conf()), so they can follow the ACUs.
    pub fn reloadable_settings(&self) -> Vec<(&'static str, String)> {
        let memory_mib = self.memory_mib.max(64);
        let cores = self.cpu_cores.max(0.25);
        let work_mem_mib = (memory_mib / 64).clamp(4, 1024);
        let maintenance_mib = (memory_mib / 16).clamp(64, 2048);
        let cache_mib = (memory_mib * 3 / 4).max(SHARED_BUFFERS_MIB);
        let parallel = (cores.floor() as u64).clamp(0, 64);
        vec![
            ("work_mem", format!("{work_mem_mib}MB")),
            ("maintenance_work_mem", format!("{maintenance_mib}MB")),
            ("effective_cache_size", format!("{cache_mib}MB")),
            ("max_parallel_workers", parallel.max(1).to_string()),
            (
                "max_parallel_workers_per_gather",
                (parallel / 2).to_string(),
            ),
            (
                "max_parallel_maintenance_workers",
                (parallel / 2).to_string(),
            ),
        ]
    }
}

/// Settings fixed at the postmaster's start, sized for the cluster's `max_acu` so that no
/// resize within [min, max] ever needs a restart.
pub fn postmaster_settings(max_acu: f64, capacity: &CapacityConfig) -> Vec<(&'static str, String)> {
    let max = ComputeSize::of(max_acu, capacity);
    let max_connections = ((max.memory_mib / 20).clamp(100, 5000)).to_string();
    let workers = (8 + 2 * max.cpu_cores.ceil() as u64).to_string();
    vec![
        ("max_connections", max_connections),
        ("shared_buffers", format!("{SHARED_BUFFERS_MIB}MB")),
        ("max_worker_processes", workers),
    ]
}

/// Rounds an ACU need up to the next step.
pub fn round_up_to_step(acu: f64, step: f64) -> f64 {
    let steps = (acu / step - 1e-9).ceil().max(0.0);
    steps * step
}

/// Clamps an ACU value to the cluster's range and to one step at least while running.
pub fn clamp_running(acu: f64, min_acu: f64, max_acu: f64, step: f64) -> f64 {
    acu.max(min_acu).max(step).min(max_acu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_acu_is_a_quarter_core_and_two_gib() {
        let size = ComputeSize::of(1.0, &CapacityConfig::default());
        assert_eq!(size.cpu_cores, 0.25);
        assert_eq!(size.memory_mib, 2048);
        let settings = size.reloadable_settings();
        assert!(settings.contains(&("work_mem", "32MB".to_string())));
        assert!(settings.contains(&("effective_cache_size", "1536MB".to_string())));
    }

    #[test]
    fn rounding_and_clamping() {
        assert_eq!(round_up_to_step(1.01, 0.5), 1.5);
        assert_eq!(round_up_to_step(1.0, 0.5), 1.0);
        assert_eq!(round_up_to_step(0.0, 0.5), 0.0);
        assert_eq!(clamp_running(0.0, 0.0, 8.0, 0.5), 0.5);
        assert_eq!(clamp_running(12.0, 0.0, 8.0, 0.5), 8.0);
        assert_eq!(clamp_running(1.0, 2.0, 8.0, 0.5), 2.0);
    }

    #[test]
    fn postmaster_settings_follow_max_acu() {
        let capacity = CapacityConfig::default();
        let small = postmaster_settings(0.5, &capacity);
        let big = postmaster_settings(64.0, &capacity);
        assert_eq!(small[0], ("max_connections", "100".to_string()));
        assert_eq!(big[0], ("max_connections", "5000".to_string()));
    }
}
