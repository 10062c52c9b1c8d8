//! CPU and memory limits (and usage) for a process-runtime compute, through cgroups.
//!
//! Written here because what pgtide needs is small and machine-specific: one group per compute,
//! nested under pgtide's own group (so the compute stays inside whatever limits pgtide itself
//! runs under), on cgroup v2 (`cpu.max`, `memory.max`, `cpu.stat`, `memory.stat`) or the v1
//! controllers (`cpu.cfs_quota_us`, `memory.limit_in_bytes`, `cpuacct.usage`). Whether the
//! limits are enforced is found out at run time and reported in `/status`, never assumed.
//!
//! The postmaster joins its group before it executes (see `ProcessRuntime::start`), so every
//! backend it forks is inside from the first instruction.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone)]
enum Layout {
    V2 {
        dir: PathBuf,
    },
    V1 {
        cpu: PathBuf,
        cpuacct: PathBuf,
        memory: PathBuf,
    },
}

#[derive(Debug, Clone)]
pub struct Cgroup {
    layout: Layout,
}

/// Memory of the group, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MemoryUse {
    /// In use less the inactive page cache (what must stay resident to run well).
    pub working_set_mib: f64,
    /// Anonymous memory plus shared memory: what the kernel cannot reclaim.
    pub floor_mib: f64,
}

impl Cgroup {
    /// Creates (or reuses) the group `name` under pgtide's own group. Errors say why limits
    /// cannot be enforced here.
    pub fn create(name: &str) -> Result<Cgroup, String> {
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let path = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
            let parent = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
            // Controllers must be enabled for the children of pgtide's group.
            fs::write(parent.join("cgroup.subtree_control"), "+cpu +memory").map_err(|e| {
                format!(
                    "cannot enable cpu and memory controllers in {}: {e}",
                    parent.display()
                )
            })?;
            let dir = parent.join(name);
            make_dir(&dir)?;
            return Ok(Cgroup {
                layout: Layout::V2 { dir },
            });
        }
        let v1_dir = |controller: &str| -> Result<PathBuf, String> {
            let path = own
                .lines()
                .filter_map(|l| {
                    let mut parts = l.splitn(3, ':');
                    let _id = parts.next()?;
                    let controllers = parts.next()?;
                    let path = parts.next()?;
                    controllers
                        .split(',')
                        .any(|c| c == controller)
                        .then_some((controllers, path))
                })
                .next()
                .ok_or_else(|| format!("no cgroup v1 {controller} controller"))?;
            let (controllers, own_path) = path;
            let mount = [
                Path::new("/sys/fs/cgroup").join(controller),
                Path::new("/sys/fs/cgroup").join(controllers),
            ]
            .into_iter()
            .find(|p| p.is_dir())
            .ok_or_else(|| {
                format!("the {controller} controller is not mounted under /sys/fs/cgroup")
            })?;
            let dir = mount.join(own_path.trim_start_matches('/')).join(name);
            make_dir(&dir)?;
            Ok(dir)
        };
        Ok(Cgroup {
            layout: Layout::V1 {
                cpu: v1_dir("cpu")?,
                cpuacct: v1_dir("cpuacct")?,
                memory: v1_dir("memory")?,
            },
        })
    }

    pub fn version(&self) -> &'static str {
        match self.layout {
            Layout::V2 { .. } => "cgroup v2",
            Layout::V1 { .. } => "cgroup v1",
        }
    }

    /// The `cgroup.procs` files a process writes "0" to in order to join the group.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2 { dir } => vec![dir.join("cgroup.procs")],
            Layout::V1 {
                cpu,
                cpuacct,
                memory,
            } => {
                vec![
                    cpu.join("cgroup.procs"),
                    cpuacct.join("cgroup.procs"),
                    memory.join("cgroup.procs"),
                ]
            }
        }
    }

    /// Sets the limits; `cpu_cores: None` lifts the CPU limit (used while Postgres starts and
    /// stops, which are short and should not be throttled down to the smallest size).
    pub fn set_limits(&self, cpu_cores: Option<f64>, memory_mib: u64) -> io::Result<()> {
        let quota =
            cpu_cores.map(|cores| ((cores * CPU_PERIOD_US as f64).round() as u64).max(1000));
        let bytes = memory_mib * 1024 * 1024;
        match &self.layout {
            Layout::V2 { dir } => {
                let max = quota
                    .map(|q| q.to_string())
                    .unwrap_or_else(|| "max".to_string());
                fs::write(dir.join("cpu.max"), format!("{max} {CPU_PERIOD_US}"))?;
                fs::write(dir.join("memory.max"), bytes.to_string())
            }
            Layout::V1 { cpu, memory, .. } => {
                let quota = quota
                    .map(|q| q.to_string())
                    .unwrap_or_else(|| "-1".to_string());
                fs::write(cpu.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                fs::write(cpu.join("cpu.cfs_quota_us"), quota)?;
                fs::write(memory.join("memory.limit_in_bytes"), bytes.to_string())
            }
        }
    }

    /// Lifts the CPU limit and leaves memory as it is.
    pub fn lift_cpu_limit(&self) -> io::Result<()> {
        match &self.layout {
            Layout::V2 { dir } => fs::write(dir.join("cpu.max"), format!("max {CPU_PERIOD_US}")),
            Layout::V1 { cpu, .. } => fs::write(cpu.join("cpu.cfs_quota_us"), "-1"),
        }
    }

    /// Reads the limits back: (cores, MiB).
    pub fn limits(&self) -> io::Result<(f64, u64)> {
        let (quota, period, bytes) = match &self.layout {
            Layout::V2 { dir } => {
                let max = fs::read_to_string(dir.join("cpu.max"))?;
                let mut parts = max.split_whitespace();
                let quota = parts
                    .next()
                    .unwrap_or("max")
                    .parse::<f64>()
                    .unwrap_or(f64::INFINITY);
                let period = parts
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(CPU_PERIOD_US as f64);
                (
                    quota,
                    period,
                    read_u64(&dir.join("memory.max")).unwrap_or(u64::MAX),
                )
            }
            Layout::V1 { cpu, memory, .. } => {
                let quota = fs::read_to_string(cpu.join("cpu.cfs_quota_us"))?
                    .trim()
                    .parse::<f64>()
                    .unwrap_or(-1.0);
                let quota = if quota < 0.0 { f64::INFINITY } else { quota };
                let period = read_u64(&cpu.join("cpu.cfs_period_us"))? as f64;
                (
                    quota,
                    period,
                    read_u64(&memory.join("memory.limit_in_bytes"))?,
                )
            }
        };
        Ok((quota / period, bytes / (1024 * 1024)))
    }

    /// CPU time used by the group since it was created.
    pub fn cpu_usage(&self) -> io::Result<Duration> {
        match &self.layout {
            Layout::V2 { dir } => {
                let stat = fs::read_to_string(dir.join("cpu.stat"))?;
                let usec = stat_field(&stat, "usage_usec").unwrap_or(0);
                Ok(Duration::from_micros(usec))
            }
            Layout::V1 { cpuacct, .. } => Ok(Duration::from_nanos(read_u64(
                &cpuacct.join("cpuacct.usage"),
            )?)),
        }
    }

    pub fn memory(&self) -> io::Result<MemoryUse> {
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        match &self.layout {
            Layout::V2 { dir } => {
                let current = read_u64(&dir.join("memory.current"))?;
                let stat = fs::read_to_string(dir.join("memory.stat"))?;
                let inactive = stat_field(&stat, "inactive_file").unwrap_or(0);
                let floor = stat_field(&stat, "anon").unwrap_or(0)
                    + stat_field(&stat, "shmem").unwrap_or(0);
                Ok(MemoryUse {
                    working_set_mib: mib(current.saturating_sub(inactive)),
                    floor_mib: mib(floor),
                })
            }
            Layout::V1 { memory, .. } => {
                let usage = read_u64(&memory.join("memory.usage_in_bytes"))?;
                let stat = fs::read_to_string(memory.join("memory.stat"))?;
                let inactive = stat_field(&stat, "total_inactive_file").unwrap_or(0);
                let floor = stat_field(&stat, "total_rss").unwrap_or(0)
                    + stat_field(&stat, "total_shmem").unwrap_or(0);
                Ok(MemoryUse {
                    working_set_mib: mib(usage.saturating_sub(inactive)),
                    floor_mib: mib(floor),
                })
            }
        }
    }

    /// Removes the group (it must be empty: call after the compute has exited).
    pub fn remove(&self) {
        let dirs: Vec<&PathBuf> = match &self.layout {
            Layout::V2 { dir } => vec![dir],
            Layout::V1 {
                cpu,
                cpuacct,
                memory,
            } => vec![cpu, cpuacct, memory],
        };
        for dir in dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn make_dir(dir: &Path) -> Result<(), String> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    }
}

fn read_u64(path: &Path) -> io::Result<u64> {
    fs::read_to_string(path)?.trim().parse().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

fn stat_field(stat: &str, name: &str) -> Option<u64> {
    stat.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        let stat = "anon 100\nfile 5\ninactive_file 7\n";
        assert_eq!(stat_field(stat, "anon"), Some(100));
        assert_eq!(stat_field(stat, "inactive_file"), Some(7));
        assert_eq!(stat_field(stat, "file_dirty"), None);
    }
}
