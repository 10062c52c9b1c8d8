//! The `process` runtime: each compute is a `postgres` process started from the machine's own
//! binaries.
//!
//! Life of a compute here:
//! 1. The cluster's directory holds `pgdata/` (created by `initdb` on first start, with `trust`
//!    for the unix socket only and no TCP listener at all) and `postgres.log`.
//! 2. The socket lives in a private directory (mode 0700, owned by the user Postgres runs as):
//!    only pgtide (root, or that same user) can connect, so `trust` on it is safe.
//! 3. `postgres` is started directly, not through `pg_ctl -w` (which polls every 100 ms): pgtide
//!    polls the socket every 5 ms itself. The child gets its own process group (a Ctrl-C in the
//!    terminal reaches pgtide alone, which then stops Postgres in order) and PR_SET_PDEATHSIG, so
//!    that a pgtide killed with -9 still takes its Postgres down.
//! 4. A task owns the child and `wait()`s for it, so an exit is noticed at once and the process is
//!    reaped (a dead postmaster that nobody reaps blocks the next start on its lock file).
//! 5. Stop is CHECKPOINT then SIGINT (fast shutdown), which also makes the next start skip
//!    recovery.

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::cgroup::{Cgroup, MemoryUse};
use super::host::Host;
use super::warm::{SlotInUse, SlotMaker, WarmPool, WarmPoolStatus};
use super::Usage;
use super::{Compute, ComputeEndpoint, ComputeSpec, ExitInfo, Limits, Runtime, COMPUTE_PORT};
use crate::acu::ComputeSize;
use crate::config::RuntimeConfig;

const FAST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The `initdb` output every template is copied from, in the warm directory.
const GOLDEN: &str = "golden";

pub struct ProcessRuntime {
    host: Arc<Host>,
    slots: Arc<ProcessSlots>,
    pool: WarmPool<ProcessSlots>,
}

impl ProcessRuntime {
    /// Needs a tokio runtime: the warm pool starts filling at once.
    pub fn new(config: &RuntimeConfig) -> anyhow::Result<ProcessRuntime> {
        let host = Arc::new(Host::new(config)?);
        let slots = Arc::new(ProcessSlots::open(host.clone(), &config.data_dir)?);
        // Templates an earlier run made are ready at once: a cgroup is all a slot still needs.
        let adopted = (0..config.warm_pool_size)
            .map_while(|_| slots.slot_from_spare())
            .collect();
        let pool = WarmPool::start(slots.clone(), config.warm_pool_size, adopted);
        Ok(ProcessRuntime { host, slots, pool })
    }
}

/// A process-runtime slot: the compute's cgroup, made ahead, and a freshly initialised data
/// directory for a cluster that has none yet (a new cluster then skips its `initdb`).
pub struct ProcessSlot {
    cgroup: Result<Cgroup, String>,
    template: Option<PathBuf>,
}

/// Makes process slots. Templates live in `<data_dir>/warm/`; one that a resume did not need
/// (its cluster had data) is kept for the next slot rather than thrown away, and so are the
/// complete ones an earlier run left.
pub struct ProcessSlots {
    host: Arc<Host>,
    warm_dir: PathBuf,
    /// Complete templates not held by any slot.
    spare_templates: Mutex<Vec<PathBuf>>,
    next_id: AtomicU64,
    /// Distinguishes the cgroups of several pgtides on one machine.
    cgroup_prefix: String,
}

impl ProcessSlots {
    fn open(host: Arc<Host>, data_dir: &Path) -> anyhow::Result<ProcessSlots> {
        let warm_dir = data_dir.join("warm");
        std::fs::create_dir_all(&warm_dir)
            .with_context(|| format!("creating {}", warm_dir.display()))?;
        let mut spare = Vec::new();
        let mut next_id = 0;
        for entry in std::fs::read_dir(&warm_dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if let Some(id) = name.strip_prefix("template-") {
                if let Ok(id) = id.parse::<u64>() {
                    next_id = next_id.max(id + 1);
                    spare.push(path);
                }
            } else if name.ends_with(".initdb") {
                // An initdb that an earlier run did not finish: only pgtide's own scratch.
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        warm_dir.hash(&mut hasher);
        Ok(ProcessSlots {
            host,
            warm_dir,
            spare_templates: Mutex::new(spare),
            next_id: AtomicU64::new(next_id),
            cgroup_prefix: format!("pgtide-slot-{:08x}", hasher.finish() as u32),
        })
    }

    fn keep_spare(&self, template: PathBuf) {
        self.spare_templates
            .lock()
            .expect("templates lock")
            .push(template);
    }

    fn slot_cgroup(&self, id: u64) -> Result<Cgroup, String> {
        Cgroup::create(&format!("{}-{id}", self.cgroup_prefix))
    }

    /// Makes `scratch` a copy of the golden template (made once, by `initdb`) with an identity
    /// of its own ([`super::template`]).
    async fn copy_golden(&self, scratch: &Path) -> anyhow::Result<()> {
        let golden = self.warm_dir.join(GOLDEN);
        if !golden.exists() {
            let making = golden.with_extension("initdb");
            let _ = std::fs::remove_dir_all(&making);
            self.host
                .initdb(&making, &self.warm_dir.join("initdb.log"))
                .await?;
            std::fs::rename(&making, &golden)?;
        }
        let scratch = scratch.to_path_buf();
        let controldata = self.host.binaries.pg_controldata();
        let owner = self.host.owner.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let _ = std::fs::remove_dir_all(&scratch);
            super::template::copy_tree(&golden, &scratch)
                .with_context(|| format!("copying {}", golden.display()))?;
            owner.own_tree(&scratch)?;
            let identity = super::template::give_identity(&scratch, &controldata)?;
            tracing::debug!(
                system_identifier = identity.system_identifier,
                ms = started.elapsed().as_millis() as u64,
                "template copied from the golden one"
            );
            anyhow::Ok(())
        })
        .await?
    }

    /// A slot around a spare template, if there is one.
    fn slot_from_spare(&self) -> Option<ProcessSlot> {
        let template = self.spare_templates.lock().expect("templates lock").pop()?;
        let id = self.next_id.fetch_add(1, AtomicOrdering::Relaxed);
        Some(ProcessSlot {
            cgroup: self.slot_cgroup(id),
            template: Some(template),
        })
    }
}

#[async_trait]
impl SlotMaker for ProcessSlots {
    type Slot = ProcessSlot;

    async fn make(&self) -> anyhow::Result<ProcessSlot> {
        if let Some(slot) = self.slot_from_spare() {
            return Ok(slot);
        }
        let id = self.next_id.fetch_add(1, AtomicOrdering::Relaxed);
        let template = self.warm_dir.join(format!("template-{id}"));
        let scratch = template.with_extension("initdb");
        self.host.owner.chown(&self.warm_dir)?;
        if let Err(e) = self.copy_golden(&scratch).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "a template could not be copied from the golden one; running initdb"
            );
            let _ = std::fs::remove_dir_all(&scratch);
            self.host
                .initdb(&scratch, &self.warm_dir.join("initdb.log"))
                .await?;
        }
        std::fs::rename(&scratch, &template)?;
        Ok(ProcessSlot {
            cgroup: self.slot_cgroup(id),
            template: Some(template),
        })
    }

    async fn discard(&self, slot: ProcessSlot) {
        // The template stays on disk for the next run; only the cgroup goes.
        if let Ok(cgroup) = slot.cgroup {
            cgroup.remove();
        }
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn warm_pool(&self) -> WarmPoolStatus {
        self.pool.status()
    }

    async fn shutdown(&self) {
        self.pool.drain().await;
    }

    async fn start(&self, spec: &ComputeSpec) -> anyhow::Result<Box<dyn Compute>> {
        let started = Instant::now();
        let host = &self.host;
        let cluster_dir = &spec.cluster_dir;
        std::fs::create_dir_all(cluster_dir)
            .with_context(|| format!("creating {}", cluster_dir.display()))?;
        // The cluster's directory is pgtide's (its verifiers and meter live there, 0600); its
        // Postgres may only pass through it, to its data and socket directories.
        std::fs::set_permissions(cluster_dir, std::fs::Permissions::from_mode(0o711))?;
        let owner = host.owner.for_cluster(&spec.cluster)?;
        owner.check_reachable(cluster_dir)?;
        let pgdata = super::pgdata_of(cluster_dir);
        let log_path = cluster_dir.join("postgres.log");

        let (slot, in_use) = self.pool.take();
        let warm_started = slot.is_some();
        let ProcessSlot { cgroup, template } = match slot {
            Some(slot) => slot,
            None => ProcessSlot {
                // One cgroup per compute, named after the cluster and its directory (several
                // pgtides may run clusters of the same name on one machine).
                cgroup: Cgroup::create(&cgroup_name(&spec.cluster, cluster_dir)),
                template: None,
            },
        };
        // Until the exit task owns the cgroup, a failed start removes it.
        let mut unowned_cgroup = UnownedCgroup(cgroup.as_ref().ok().cloned());
        if !pgdata.exists() {
            // A new cluster. Its data directory is a template initialised ahead of need, or
            // initdb's output now; either way made aside and renamed into place, so that a
            // directory named pgdata is always a complete cluster and pgtide never has to guess
            // whether it may delete one.
            let from_template = match template {
                Some(template) => match std::fs::rename(&template, &pgdata) {
                    Ok(()) => {
                        owner.own_tree(&pgdata)?;
                        true
                    }
                    Err(e) => {
                        // Another file system (EXDEV) or a template gone bad: initdb instead.
                        tracing::warn!(template = %template.display(), error = %e, "cannot use the warm template");
                        false
                    }
                },
                None => false,
            };
            if !from_template {
                let scratch = cluster_dir.join("pgdata.initdb");
                if scratch.exists() {
                    std::fs::remove_dir_all(&scratch)?;
                }
                host.initdb_as(&scratch, &log_path, &owner).await?;
                std::fs::rename(&scratch, &pgdata)?;
            }
        } else {
            if let Some(template) = template {
                self.slots.keep_spare(template);
            }
            owner.adopt_pgdata(&pgdata)?;
        }
        stop_leftover_postmaster(&pgdata).await?;
        let socket_dir = host.socket_dir_for(cluster_dir, &owner)?;
        let endpoint = ComputeEndpoint {
            socket_dir: socket_dir.clone(),
            port: COMPUTE_PORT,
        };

        // pgtide opens the log (0600, its own) and Postgres inherits the descriptor: the
        // compute writes its log, and no other cluster's compute user can read it.
        let log = crate::files::open_private_log(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        super::quiet_postmaster_settings(&pgdata, spec)
            .with_context(|| format!("editing {}/postgresql.conf", pgdata.display()))?;
        let mut command = host.command_as(&host.binaries.postgres(), &owner);
        command.arg("-D").arg(&pgdata);
        command.args(super::postmaster_args(
            &socket_dir.display().to_string(),
            spec,
        ));
        command.stdout(log.try_clone()?).stderr(log);

        // No CPU limit while Postgres starts: a start throttled to the smallest size takes ten
        // times longer. The size's limit is applied once it is ready.
        let (cgroup, cgroup_problem) = match cgroup {
            Ok(cgroup) => match cgroup.set_limits(None, spec.size.memory_mib) {
                Ok(()) => (Some(cgroup), None),
                Err(e) => {
                    cgroup.remove();
                    (
                        None,
                        Some(format!("cannot write {} limits: {e}", cgroup.version())),
                    )
                }
            },
            Err(reason) => (None, Some(reason)),
        };
        let join_files = match &cgroup {
            Some(cgroup) => cgroup
                .procs_files()
                .iter()
                .map(|path| std::fs::OpenOptions::new().write(true).open(path))
                .collect::<Result<Vec<_>, _>>()
                .context("opening the compute's cgroup.procs")?,
            None => Vec::new(),
        };
        let join_fds: Vec<i32> = join_files.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: only async-signal-safe calls (write, prctl) on values prepared before the fork.
        // Writing "0" to cgroup.procs moves the writing process (the future postmaster) into the
        // group before it executes. set_pdeathsig runs after the uid switch, which would
        // otherwise clear it.
        unsafe {
            command.pre_exec(move || {
                for fd in &join_fds {
                    let fd = std::os::fd::BorrowedFd::borrow_raw(*fd);
                    nix::unistd::write(fd, b"0").map_err(std::io::Error::from)?;
                }
                nix::sys::prctl::set_pdeathsig(Signal::SIGINT).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let mut child = command.spawn().context("starting postgres")?;
        unowned_cgroup.0 = None; // the exit task below removes it once Postgres is gone
        drop(join_files);
        let pid = Pid::from_raw(
            child
                .id()
                .ok_or_else(|| anyhow!("postgres exited at once"))? as i32,
        );
        let (exit_tx, exit_rx) = watch::channel(None);
        let exit_cgroup = cgroup.clone();
        tokio::spawn(async move {
            let description = match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(e) => format!("could not be waited for: {e}"),
            };
            // The postmaster led its own process group. After a clean stop the group is empty;
            // after a crash (kill -9, OOM) its backends may linger, holding shared memory that
            // blocks the restart and serving clients with no postmaster: end them now.
            let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
            if let Some(cgroup) = exit_cgroup {
                // The kernel lets go of the group a moment after its last process is reaped.
                for _ in 0..50 {
                    cgroup.remove();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if !cgroup.procs_files()[0].exists() {
                        break;
                    }
                }
            }
            let _ = exit_tx.send(Some(ExitInfo { description }));
        });

        let mut compute = ProcessCompute {
            endpoint,
            pgdata: pgdata.clone(),
            warm_started,
            _slot: in_use,
            pid,
            exited: exit_rx,
            log_path,
            cgroup,
            cgroup_problem,
        };
        let ready = super::wait_ready(
            &compute.endpoint,
            &compute.exited,
            &compute.log_path,
            "postgres",
            "",
        );
        if let Err(e) = ready.await {
            let _ = compute.kill_now().await;
            return Err(e);
        }
        tracing::info!(
            cluster = %spec.cluster,
            pid = pid.as_raw(),
            ms = started.elapsed().as_millis() as u64,
            "compute started"
        );
        Ok(Box::new(compute))
    }
}

pub struct ProcessCompute {
    endpoint: ComputeEndpoint,
    pgdata: PathBuf,
    warm_started: bool,
    /// Counts this compute's slot as in use for as long as it lives.
    _slot: SlotInUse,
    pid: Pid,
    exited: watch::Receiver<Option<ExitInfo>>,
    log_path: PathBuf,
    /// Where the limits are enforced, or why they are not.
    cgroup: Option<Cgroup>,
    cgroup_problem: Option<String>,
}

impl ProcessCompute {
    fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    async fn kill_now(&mut self) -> anyhow::Result<()> {
        let _ = kill(self.pid, Signal::SIGKILL);
        super::wait_exit(&self.exited, Duration::from_secs(10)).await;
        Ok(())
    }

    /// Postgres's immediate shutdown (the postmaster takes its backends down with it), then
    /// SIGKILL if it has not exited within 5 s.
    async fn immediate_shutdown(&mut self) {
        let _ = kill(self.pid, Signal::SIGQUIT);
        if !super::wait_exit(&self.exited, Duration::from_secs(5)).await {
            let _ = self.kill_now().await;
        }
    }
}

#[async_trait]
impl Compute for ProcessCompute {
    fn endpoint(&self) -> &ComputeEndpoint {
        &self.endpoint
    }

    fn data_dir(&self) -> PathBuf {
        self.pgdata.clone()
    }

    fn exited(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exited.clone()
    }

    fn warm_started(&self) -> bool {
        self.warm_started
    }

    async fn apply_size(&mut self, size: ComputeSize) -> anyhow::Result<Limits> {
        // With a cgroup, report what the kernel holds after the write, not what was asked.
        let (cpu_cores, memory_mib, enforced, mechanism, applied_at) = match &self.cgroup {
            Some(cgroup) => {
                cgroup
                    .set_limits(Some(size.cpu_cores), size.memory_mib)
                    .with_context(|| format!("writing {} limits", cgroup.version()))?;
                let (cores, mib) = cgroup.limits()?;
                let paths = cgroup
                    .procs_files()
                    .iter()
                    .filter_map(|p| p.parent())
                    .map(|p| p.display().to_string())
                    .collect();
                (cores, mib, true, cgroup.version().to_string(), paths)
            }
            None => (
                size.cpu_cores,
                size.memory_mib,
                false,
                format!(
                    "not enforced: {}",
                    self.cgroup_problem.as_deref().unwrap_or("no cgroup")
                ),
                Vec::new(),
            ),
        };
        super::apply_reloadable_settings(&self.endpoint, &size).await?;
        Ok(Limits {
            cpu_cores,
            memory_mib,
            enforced,
            mechanism,
            applied_at,
        })
    }

    async fn usage(&mut self) -> anyhow::Result<Usage> {
        match &self.cgroup {
            Some(cgroup) => Ok(Usage {
                cpu_time: cgroup.cpu_usage()?,
                memory: cgroup.memory()?,
            }),
            None => Ok(process_group_usage(self.pid)),
        }
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        if self.has_exited() {
            return Ok(());
        }
        let started = Instant::now();
        if let Some(cgroup) = &self.cgroup {
            // The checkpoint and shutdown are short bursts: do not throttle them.
            let _ = cgroup.lift_cpu_limit();
        }
        super::checkpoint_before_stop(&self.endpoint).await;
        let _ = kill(self.pid, Signal::SIGINT);
        if !super::wait_exit(&self.exited, FAST_SHUTDOWN_TIMEOUT).await {
            tracing::warn!(
                pid = self.pid.as_raw(),
                "fast shutdown timed out, sending SIGQUIT"
            );
            self.immediate_shutdown().await;
        }
        tracing::info!(
            pid = self.pid.as_raw(),
            ms = started.elapsed().as_millis() as u64,
            "compute stopped"
        );
        Ok(())
    }

    async fn kill(&mut self) {
        if self.has_exited() {
            return;
        }
        self.immediate_shutdown().await;
        tracing::info!(pid = self.pid.as_raw(), "lost compute killed");
    }
}

/// A compute's cgroup that nothing will remove yet: removed when dropped (a start that failed).
struct UnownedCgroup(Option<Cgroup>);

impl Drop for UnownedCgroup {
    fn drop(&mut self) {
        if let Some(cgroup) = self.0.take() {
            cgroup.remove();
        }
    }
}

fn cgroup_name(cluster: &str, cluster_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    cluster_dir.hash(&mut hasher);
    format!("pgtide-{cluster}-{:08x}", hasher.finish() as u32)
}

/// Usage without cgroups, from /proc: the CPU time of the postmaster's process group, plus what
/// the postmaster collected from the backends it reaped; memory as anonymous plus the largest
/// shared mapping (shared memory is counted once, not per backend).
fn process_group_usage(postmaster: Pid) -> Usage {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut cpu_ticks = 0u64;
    let mut anon_kib = 0u64;
    let mut shmem_kib = 0u64;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields after the command: state(0) ppid(1) pgrp(2) … utime(11) stime(12) cutime(13) cstime(14).
        if fields.get(2).and_then(|f| f.parse::<i32>().ok()) != Some(postmaster.as_raw()) {
            continue;
        }
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        cpu_ticks += field(11) + field(12);
        if pid == postmaster.as_raw() {
            cpu_ticks += field(13) + field(14);
        }
        if let Ok(status) = std::fs::read_to_string(entry.path().join("status")) {
            let kib = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            anon_kib += kib("RssAnon:");
            shmem_kib = shmem_kib.max(kib("RssShmem:"));
        }
    }
    let floor_mib = (anon_kib + shmem_kib) as f64 / 1024.0;
    Usage {
        cpu_time: Duration::from_secs_f64(cpu_ticks as f64 / ticks),
        memory: MemoryUse {
            working_set_mib: floor_mib,
            floor_mib,
        },
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (_, Some(signal)) => format!("exited with signal {signal}"),
        (Some(code), _) => format!("exited with code {code}"),
        _ => "exited".to_string(),
    }
}

/// A postmaster left running by an earlier pgtide that died (kill -9, power cut of the parent):
/// stop it, then wait until its pid is gone and its lock file is free.
async fn stop_leftover_postmaster(pgdata: &Path) -> anyhow::Result<()> {
    let pid_file = pgdata.join("postmaster.pid");
    let text = match std::fs::read_to_string(&pid_file) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return Ok(());
    };
    let pid = Pid::from_raw(pid);
    if !is_postmaster_of(pid, pgdata) {
        return Ok(()); // a stale file: Postgres removes it itself on start
    }
    tracing::warn!(pid = pid.as_raw(), pgdata = %pgdata.display(), "stopping a Postgres left running by an earlier pgtide");
    let _ = kill(pid, Signal::SIGINT);
    let deadline = Instant::now() + FAST_SHUTDOWN_TIMEOUT;
    while is_alive(pid) {
        if Instant::now() > deadline {
            let _ = kill(pid, Signal::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Whether `pid` is a Postgres running on `pgdata`: its command names postgres and its working
/// directory is that data directory (Postgres changes into it at start). A pid from a stale
/// `postmaster.pid` may, after a reboot, belong to anything — another cluster's postmaster
/// among them — and must not be signalled.
fn is_postmaster_of(pid: Pid, pgdata: &Path) -> bool {
    let is_postgres = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("postgres"))
        .unwrap_or(false);
    let runs_here = match (
        std::fs::canonicalize(format!("/proc/{pid}/cwd")),
        std::fs::canonicalize(pgdata),
    ) {
        (Ok(cwd), Ok(pgdata)) => cwd == pgdata,
        _ => false,
    };
    is_postgres && runs_here
}

/// Alive and not a zombie (a reparented zombie stays in the process table until its new parent
/// reaps it, which some container init processes never do).
pub fn is_alive(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stale `postmaster.pid` naming a live "postgres" that runs elsewhere (after a reboot,
    /// another cluster's postmaster may have that pid): it is left alone.
    #[tokio::test]
    async fn a_stale_pid_file_never_signals_a_postgres_of_another_directory() {
        let pgdata = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let mut imposter = std::process::Command::new("bash")
            .args(["-c", "exec -a postgres sleep 30"])
            .current_dir(elsewhere.path())
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(imposter.id() as i32);
        // Until exec has happened the cmdline is bash's.
        for _ in 0..1000 {
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"));
            if cmdline.unwrap_or_default().starts_with("postgres") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::fs::write(
            pgdata.path().join("postmaster.pid"),
            format!("{pid}\n{}\n", pgdata.path().display()),
        )
        .unwrap();
        assert!(!is_postmaster_of(pid, pgdata.path()));
        stop_leftover_postmaster(pgdata.path()).await.unwrap();
        assert!(
            is_alive(pid),
            "a process of another directory was signalled"
        );
        // The same process in the data directory would count as its postmaster.
        assert!(is_postmaster_of(pid, elsewhere.path()));
        imposter.kill().unwrap();
        imposter.wait().unwrap();
    }
}
