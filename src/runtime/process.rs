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
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid};
use tokio::sync::watch;

use super::binaries::PostgresBinaries;
use super::cgroup::{Cgroup, MemoryUse};
use super::Usage;
use super::{
    Compute, ComputeEndpoint, ComputeSpec, ExitInfo, Limits, Runtime, BOOTSTRAP_SUPERUSER,
};
use crate::acu::ComputeSize;
use crate::config::RuntimeConfig;

const COMPUTE_PORT: u16 = 5432;
/// How often readiness is polled while Postgres starts.
const READY_POLL: Duration = Duration::from_millis(5);
/// Crash recovery may replay a lot of WAL; give it time before calling the start failed.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(60);
const FAST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// The OS user Postgres runs as when pgtide is root (Postgres refuses to run as root).
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: Uid,
    gid: Gid,
}

pub struct ProcessRuntime {
    binaries: PostgresBinaries,
    run_as: Option<RunAs>,
}

impl ProcessRuntime {
    pub fn new(config: &RuntimeConfig) -> anyhow::Result<ProcessRuntime> {
        let binaries = PostgresBinaries::find(config.postgres_bin_dir.as_deref())?;
        let run_as = if Uid::effective().is_root() {
            let user = nix::unistd::User::from_name(&config.run_as)
                .context("looking up runtime.run_as")?
                .ok_or_else(|| {
                    anyhow!(
                        "pgtide runs as root and Postgres refuses to: runtime.run_as names the OS user \
                         \"{0}\", which does not exist. Create it (useradd --system --user-group {0}) \
                         or set runtime.run_as to another user",
                        config.run_as
                    )
                })?;
            if user.uid.is_root() {
                bail!(
                    "runtime.run_as = \"{}\" is root, and Postgres refuses to run as root",
                    config.run_as
                );
            }
            Some(RunAs {
                name: user.name,
                uid: user.uid,
                gid: user.gid,
            })
        } else {
            None
        };
        Ok(ProcessRuntime { binaries, run_as })
    }

    fn chown(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(run_as) = &self.run_as {
            nix::unistd::chown(path, Some(run_as.uid), Some(run_as.gid))
                .with_context(|| format!("chown {} to {}", path.display(), run_as.name))?;
        }
        Ok(())
    }

    fn command(&self, program: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        command.stdin(Stdio::null()).process_group(0);
        if let Some(run_as) = &self.run_as {
            command.uid(run_as.uid.as_raw()).gid(run_as.gid.as_raw());
        }
        command
    }

    /// Gives a whole directory tree to `run_as`, unless it already is.
    fn own_tree(&self, path: &Path) -> anyhow::Result<()> {
        let Some(run_as) = &self.run_as else {
            return Ok(());
        };
        if std::fs::metadata(path)?.uid() == run_as.uid.as_raw() {
            return Ok(());
        }
        fn walk(path: &Path, uid: Uid, gid: Gid) -> std::io::Result<()> {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                path,
                Some(uid),
                Some(gid),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(std::io::Error::from)?;
            if path.is_dir() && !path.is_symlink() {
                for entry in std::fs::read_dir(path)? {
                    walk(&entry?.path(), uid, gid)?;
                }
            }
            Ok(())
        }
        walk(path, run_as.uid, run_as.gid)
            .with_context(|| format!("handing {} to {}", path.display(), run_as.name))
    }

    /// Postgres (running as `run_as`) must be able to walk down to the cluster's directory.
    fn check_reachable(&self, dir: &Path) -> anyhow::Result<()> {
        let Some(run_as) = &self.run_as else {
            return Ok(());
        };
        for ancestor in dir.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                continue;
            };
            let mode = meta.permissions().mode();
            let reachable = mode & 0o001 != 0
                || (meta.uid() == run_as.uid.as_raw() && mode & 0o100 != 0)
                || (meta.gid() == run_as.gid.as_raw() && mode & 0o010 != 0);
            if !reachable {
                bail!(
                    "Postgres runs as \"{}\" and cannot reach {}: {} is mode {:o}; \
                     allow it (chmod o+x {}) or move runtime.data_dir",
                    run_as.name,
                    dir.display(),
                    ancestor.display(),
                    mode & 0o777,
                    ancestor.display()
                );
            }
        }
        Ok(())
    }

    async fn initdb(&self, pgdata: &Path, log: &Path) -> anyhow::Result<()> {
        let started = Instant::now();
        let output = self
            .command(&self.binaries.initdb())
            .arg("-D")
            .arg(pgdata)
            .args(["-U", BOOTSTRAP_SUPERUSER, "--encoding=UTF8", "--no-locale"])
            .args(["--auth-local=trust", "--auth-host=reject"])
            .output()
            .await
            .context("running initdb")?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        let _ = std::fs::write(log.with_file_name("initdb.log"), &text);
        if !output.status.success() {
            bail!("initdb of {} failed: {}", pgdata.display(), text.trim());
        }
        tracing::info!(pgdata = %pgdata.display(), ms = started.elapsed().as_millis() as u64, "initdb done");
        Ok(())
    }

    /// The private socket directory. Unix socket paths are limited to 107 bytes, so a deep data
    /// directory falls back to a short one under /tmp named after it.
    fn socket_dir(&self, cluster_dir: &Path) -> anyhow::Result<PathBuf> {
        let preferred = cluster_dir.join("socket");
        let dir = if preferred.as_os_str().len() + 16 < 100 {
            preferred
        } else {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            cluster_dir.hash(&mut hasher);
            PathBuf::from(format!("/tmp/pgtide-{:016x}", hasher.finish()))
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        self.chown(&dir)?;
        Ok(dir)
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: &ComputeSpec) -> anyhow::Result<Box<dyn Compute>> {
        let started = Instant::now();
        let cluster_dir = &spec.cluster_dir;
        std::fs::create_dir_all(cluster_dir)
            .with_context(|| format!("creating {}", cluster_dir.display()))?;
        self.chown(cluster_dir)?;
        self.check_reachable(cluster_dir)?;
        let pgdata = super::pgdata_of(cluster_dir);
        let log_path = cluster_dir.join("postgres.log");
        if !pgdata.exists() {
            // initdb into a scratch directory and rename it into place, so that a directory
            // named pgdata is always a complete cluster and pgtide never has to guess whether
            // it may delete one.
            let scratch = cluster_dir.join("pgdata.initdb");
            if scratch.exists() {
                std::fs::remove_dir_all(&scratch)?;
            }
            self.initdb(&scratch, &log_path).await?;
            std::fs::rename(&scratch, &pgdata)?;
        } else if !pgdata.join("PG_VERSION").exists() {
            bail!(
                "{} exists but is not a Postgres data directory (no PG_VERSION); \
                 pgtide leaves it alone: move it away to start afresh",
                pgdata.display()
            );
        } else {
            // A directory rebuilt from the copies (or brought from elsewhere) is handed over.
            self.own_tree(&pgdata)?;
        }
        stop_leftover_postmaster(&pgdata).await?;
        let socket_dir = self.socket_dir(cluster_dir)?;
        let endpoint = ComputeEndpoint {
            socket_dir: socket_dir.clone(),
            port: COMPUTE_PORT,
        };

        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut command = self.command(&self.binaries.postgres());
        command.arg("-D").arg(&pgdata);
        let fixed = [
            ("listen_addresses", String::new()),
            ("unix_socket_directories", socket_dir.display().to_string()),
            ("unix_socket_permissions", "0700".to_string()),
            ("port", COMPUTE_PORT.to_string()),
            ("cluster_name", format!("pgtide-{}", spec.cluster)),
            ("logging_collector", "off".to_string()),
        ];
        for (key, value) in fixed.iter().chain(spec.postmaster_settings.iter()) {
            command.arg("-c").arg(format!("{key}={value}"));
        }
        command.stdout(log.try_clone()?).stderr(log);

        // One cgroup per compute, named after the cluster and its directory (several pgtides
        // may run clusters of the same name on one machine).
        let (cgroup, cgroup_problem) =
            match Cgroup::create(&cgroup_name(&spec.cluster, cluster_dir)) {
                // No CPU limit while Postgres starts: a start throttled to the smallest size takes
                // ten times longer. The size's limit is applied once it is ready.
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
            pid,
            exited: exit_rx,
            log_path,
            cgroup,
            cgroup_problem,
        };
        if let Err(e) = compute.wait_ready().await {
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

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let socket = self.endpoint.socket_path();
        loop {
            if let Some(exit) = self.exited.borrow().clone() {
                bail!(
                    "postgres {} while starting; the end of {}:\n{}",
                    exit.description,
                    self.log_path.display(),
                    tail(&self.log_path, 10)
                );
            }
            if socket.exists() {
                match self.endpoint.admin_connect().await {
                    Ok(_) => return Ok(()),
                    Err(e) if is_starting_up(&e) => {}
                    Err(e) if e.as_db_error().is_some() => return Err(e.into()),
                    Err(_) => {} // the socket is not accepting yet
                }
            }
            if Instant::now() > deadline {
                bail!("postgres did not accept connections within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let mut exited = self.exited.clone();
        let finished = tokio::time::timeout(timeout, exited.wait_for(|e| e.is_some())).await;
        finished.is_ok()
    }

    async fn kill_now(&mut self) -> anyhow::Result<()> {
        let _ = kill(self.pid, Signal::SIGKILL);
        self.wait_exit(Duration::from_secs(10)).await;
        Ok(())
    }
}

#[async_trait]
impl Compute for ProcessCompute {
    fn endpoint(&self) -> &ComputeEndpoint {
        &self.endpoint
    }

    fn exited(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exited.clone()
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
        let client = self.endpoint.admin_connect().await?;
        // One statement per query: ALTER SYSTEM refuses to run inside a (multi-statement) block.
        for (key, value) in size.reloadable_settings() {
            client
                .batch_execute(&format!("ALTER SYSTEM SET {key} = '{value}'"))
                .await
                .with_context(|| format!("ALTER SYSTEM SET {key}"))?;
        }
        client.batch_execute("SELECT pg_reload_conf()").await?;
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
        // The checkpoint makes the fast shutdown short and the next start skip recovery.
        if let Ok(client) = self.endpoint.admin_connect().await {
            if let Err(e) =
                tokio::time::timeout(CHECKPOINT_TIMEOUT, client.batch_execute("CHECKPOINT")).await
            {
                tracing::warn!(error = %e, "CHECKPOINT before stop timed out");
            }
        }
        let _ = kill(self.pid, Signal::SIGINT);
        if !self.wait_exit(FAST_SHUTDOWN_TIMEOUT).await {
            tracing::warn!(
                pid = self.pid.as_raw(),
                "fast shutdown timed out, sending SIGQUIT"
            );
            let _ = kill(self.pid, Signal::SIGQUIT);
            if !self.wait_exit(Duration::from_secs(5)).await {
                self.kill_now().await?;
            }
        }
        tracing::info!(
            pid = self.pid.as_raw(),
            ms = started.elapsed().as_millis() as u64,
            "compute stopped"
        );
        Ok(())
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

fn is_starting_up(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW)
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
    let is_postgres = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("postgres"))
        .unwrap_or(false);
    if !is_postgres {
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

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
