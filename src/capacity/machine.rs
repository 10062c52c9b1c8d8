//! What the machine itself can give, in ACUs: the default `[capacity] max_total_acu`. Read once
//! at pgtide's start from the cores the process may use and `/proc/meminfo`'s `MemTotal`.

use crate::config::CapacityConfig;

/// The machine's cores and memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Machine {
    pub cores: f64,
    pub memory_mib: u64,
}

impl Machine {
    /// This machine (a machine whose memory cannot be read counts only its cores).
    pub fn this() -> Machine {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| mem_total_mib(&text))
            .unwrap_or(u64::MAX);
        Machine { cores, memory_mib }
    }

    /// min(cores / cpu_per_acu, memory / memory_mib_per_acu), in whole steps.
    pub fn acu(&self, capacity: &CapacityConfig) -> f64 {
        let by_cpu = self.cores / capacity.cpu_per_acu;
        let by_memory = self.memory_mib as f64 / capacity.memory_mib_per_acu as f64;
        let acu = by_cpu.min(by_memory);
        (acu / capacity.step_acu).floor() * capacity.step_acu
    }
}

/// `MemTotal` of `/proc/meminfo`, in MiB.
fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smaller_of_cpu_and_memory_wins() {
        let capacity = CapacityConfig::default();
        let two_cores = Machine {
            cores: 2.0,
            memory_mib: 8192,
        };
        assert_eq!(two_cores.acu(&capacity), 4.0, "memory: 8 GiB / 2 GiB");
        let big_memory = Machine {
            cores: 2.0,
            memory_mib: 1 << 20,
        };
        assert_eq!(big_memory.acu(&capacity), 8.0, "cpu: 2 cores / 0.25");
        let odd = Machine {
            cores: 2.0,
            memory_mib: 5000,
        };
        assert_eq!(odd.acu(&capacity), 2.0, "2.44 ACU rounds down to a step");
    }

    #[test]
    fn meminfo_is_read_in_mib() {
        let text = "MemTotal:        8040564 kB\nMemFree:  100 kB\n";
        assert_eq!(mem_total_mib(text), Some(7852));
        assert_eq!(mem_total_mib("nothing"), None);
    }
}
