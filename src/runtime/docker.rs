//! The `docker` runtime: each compute is a Postgres container driven through the Docker Engine
//! API (bollard), from an image that `scripts/build-image.sh` makes without any registry.
//!
//! A container is disposable; the cluster's data is not. It all turns on the *slot*:
//! 1. A slot is a directory `<data_dir>/slots/<id>/` (mode 0700, owned by the postgres uid, which
//!    is the same in the image and on the host) bind-mounted at `/pgtide` in a container that is
//!    created and started with an idle PID 1 (`sleep infinity` under Docker's init), no network
//!    at all (`network_mode = "none"`), a large `/dev/shm` and SIGINT as its stop signal.
//!    The warm pool keeps `runtime.warm_pool_size` of them ready; a cold start makes one on the
//!    spot. Warm and cold are one code path.
//! 2. Giving a cluster to a slot: write the marker `<slot>/cluster` (the cluster's directory),
//!    then rename `<cluster_dir>/pgdata` into `<slot>/pgdata` (both under `data_dir`: instant).
//!    A new cluster gets an `initdb` run in the container instead.
//! 3. `postgres` runs through the exec API as the postgres user, listening only on the unix
//!    socket `/pgtide/socket/.s.PGSQL.5432`, which pgtide reaches on the host side as
//!    `<slot>/socket/.s.PGSQL.5432`, exactly as in the process runtime; readiness is polled
//!    every 5 ms. The exec's output (Postgres's log) is appended to `<cluster_dir>/postgres.log`.
//! 4. The end of the exec's output stream is the compute's exit, whether asked for (stop:
//!    CHECKPOINT, then SIGINT to the postmaster) or not (`docker kill`, a crash). Then the
//!    container is removed, `pgdata` is renamed back to `<cluster_dir>/pgdata`, the slot
//!    directory goes, and only then is the exit reported: whoever sees a compute gone finds the
//!    data in its place (storage and rebuild only ever look there).
//! 5. Labels: `pgtide.instance` (a hash of the data directory: which pgtide owns it),
//!    `pgtide.slot`, and `pgtide.cluster`, which is empty on a warm container (it does not know
//!    its cluster yet; the slot's marker file holds the assignment) and names the cluster on a
//!    cold one. At start, pgtide removes every container of its instance that an earlier run left
//!    (a pgtide killed with -9) and puts back any data their slots held.
//!
//! Limits are the container's: CpuQuota/CpuPeriod (never NanoCpus: Docker refuses to mix them)
//! and Memory with MemorySwap, changed live with `update_container`; no CPU limit while Postgres
//! starts or stops. Usage comes from one streaming stats request per compute.
//!
//! The bind mounts mean the engine must see pgtide's files at the same paths: a remote engine
//! (`DOCKER_HOST=tcp://…`) only works when it shares this file system.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerStatsResponse, ContainerUpdateBody, ExecConfig, HostConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions, StatsOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::cgroup::MemoryUse;
use super::host::{Owner, INITDB_OPTIONS};
use super::warm::{SlotInUse, SlotMaker, WarmPool, WarmPoolStatus};
use super::{
    Compute, ComputeEndpoint, ComputeSpec, ExitInfo, Limits, Runtime, Usage, COMPUTE_PORT,
};
use crate::acu::ComputeSize;
use crate::config::RuntimeConfig;

pub const DEFAULT_IMAGE: &str = "pgtide/postgres:15";
pub const LABEL_INSTANCE: &str = "pgtide.instance";
pub const LABEL_SLOT: &str = "pgtide.slot";
pub const LABEL_CLUSTER: &str = "pgtide.cluster";
/// Where a slot directory appears inside its container.
const MOUNT: &str = "/pgtide";
const CPU_PERIOD: i64 = 100_000;
/// Postgres needs more than Docker's default 64 MB of /dev/shm under load; it is a tmpfs, so
/// only what is used counts against the memory limit.
const SHM_SIZE: i64 = 1 << 30;
const MIB: i64 = 1024 * 1024;
const FAST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct DockerRuntime {
    slots: Arc<DockerSlots>,
    pool: WarmPool<DockerSlots>,
}

impl DockerRuntime {
    /// Connects to the engine (`runtime.docker_host`, else `DOCKER_HOST`, else the local socket),
    /// checks the image, cleans up after an earlier run, and starts filling the warm pool.
    pub async fn new(config: &RuntimeConfig) -> anyhow::Result<DockerRuntime> {
        let (docker, engine) = connect(config.docker_host.as_deref()).await?;
        let image = config
            .image
            .clone()
            .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
        match docker.inspect_image(&image).await {
            Ok(_) => {}
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => bail!(
                "the image {image} is not on the Docker engine at {engine}: build it with \
                 scripts/build-image.sh (it needs no registry), or set runtime.image to an image \
                 that has PostgreSQL and a postgres user with the host's postgres uid"
            ),
            Err(e) => return Err(anyhow!(e).context(format!("inspecting the image {image}"))),
        }
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let data_dir = config.data_dir.canonicalize()?;
        let slots_dir = data_dir.join("slots");
        std::fs::create_dir_all(&slots_dir)
            .with_context(|| format!("creating {}", slots_dir.display()))?;
        // <slots>/<id>/socket/.s.PGSQL.5432 must fit a unix socket path (107 bytes).
        if slots_dir.as_os_str().len() + 48 > 107 {
            bail!(
                "runtime.data_dir {} is too deep for the compute's unix socket path (at most \
                 about 59 characters with the docker runtime): choose a shorter one",
                data_dir.display()
            );
        }
        let slots = Arc::new(DockerSlots {
            docker,
            image,
            instance: instance_of(&data_dir),
            slots_dir,
            owner: Owner::new(config)?,
            next_id: AtomicU64::new(0),
            id_prefix: format!(
                "{:x}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs()
                    & 0xffffff
            ),
        });
        slots.clean_up_earlier_run().await?;
        let pool = WarmPool::start(slots.clone(), config.warm_pool_size, Vec::new());
        tracing::info!(engine = %engine, image = %slots.image, instance = %slots.instance, "docker runtime ready");
        Ok(DockerRuntime { slots, pool })
    }
}

/// The engine named by `runtime.docker_host` or `DOCKER_HOST` (unix://, tcp://, http://), with
/// the API version agreed with it (older engines refuse newer clients).
async fn connect(docker_host: Option<&str>) -> anyhow::Result<(Docker, String)> {
    let host = docker_host
        .map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
    let docker = Docker::connect_with_host(&host)
        .with_context(|| format!("connecting to the Docker engine at {host}"))?;
    let docker = docker.negotiate_version().await.with_context(|| {
        format!(
            "the Docker engine at {host} does not answer (runtime.kind = \"docker\" needs one; \
             runtime.docker_host or DOCKER_HOST picks it)"
        )
    })?;
    if is_remote(&host) {
        tracing::warn!(
            engine = %host,
            "a remote Docker engine: the compute's data and socket are bind mounts of pgtide's \
             runtime.data_dir, so this only works if that engine sees this file system at the \
             same paths"
        );
    }
    Ok((docker, host))
}

fn is_remote(host: &str) -> bool {
    let Some(rest) = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))
        .or_else(|| host.strip_prefix("https://"))
    else {
        return host.starts_with("ssh://");
    };
    let name = rest.rsplit_once(':').map(|(h, _)| h).unwrap_or(rest);
    !matches!(name, "localhost" | "127.0.0.1" | "[::1]" | "::1")
}

fn instance_of(data_dir: &Path) -> String {
    // Written out (64-bit FNV-1a) rather than std's DefaultHasher, whose output may change
    // between Rust releases: a pgtide rebuilt after a crash must still recognise the containers
    // its predecessor left, or it would start a second Postgres on their data.
    use std::os::unix::ffi::OsStrExt;
    let hash = data_dir
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{hash:016x}")
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn warm_pool(&self) -> WarmPoolStatus {
        self.pool.status()
    }

    async fn shutdown(&self) {
        self.pool.drain().await;
    }

    async fn reclaim(&self, cluster_dir: &Path) -> anyhow::Result<()> {
        if !cluster_dir.exists() {
            return Ok(());
        }
        self.slots.reclaim(&cluster_dir.canonicalize()?).await
    }

    async fn start(&self, spec: &ComputeSpec) -> anyhow::Result<Box<dyn Compute>> {
        let started = Instant::now();
        let slots = &self.slots;
        let cluster_dir = &spec.cluster_dir;
        std::fs::create_dir_all(cluster_dir)
            .with_context(|| format!("creating {}", cluster_dir.display()))?;
        let cluster_dir = cluster_dir.canonicalize()?;
        let pgdata = super::pgdata_of(&cluster_dir);
        // Data a slot still held (a release that failed) is back already: the cluster calls
        // `Runtime::reclaim` before every start, so a missing pgdata here is a new cluster.
        if pgdata.exists() {
            slots.owner.adopt_pgdata(&pgdata)?;
        }

        let (slot, in_use) = self.pool.take();
        let (slot, warm_started) = match slot {
            Some(slot) if slots.is_running(&slot).await => (slot, true),
            Some(dead) => {
                // OOM-killed, removed by hand, lost with an engine restart: start cold instead.
                tracing::warn!(container = %dead.container, "a warm container is not running; starting cold");
                slots.discard(dead).await;
                (slots.make_slot(Some(&spec.cluster)).await?, false)
            }
            None => (slots.make_slot(Some(&spec.cluster)).await?, false),
        };
        let made_ms = started.elapsed().as_millis() as u64;
        let compute = match slots.run(&slot, spec, &cluster_dir).await {
            Ok(running) => running,
            Err(e) => {
                if let Err(release) = slots.release(&slot).await {
                    tracing::error!(slot = %slot.id, error = format!("{release:#}"), "releasing a slot after a failed start");
                }
                return Err(e);
            }
        };
        let Running {
            pid,
            exited,
            stopping,
        } = compute;
        let latest = Arc::new(Mutex::new(None));
        let stats_task = tokio::spawn(follow_stats(
            slots.docker.clone(),
            slot.container.clone(),
            latest.clone(),
        ));
        let mut compute = DockerCompute {
            slots: slots.clone(),
            endpoint: ComputeEndpoint {
                socket_dir: slot.dir.join("socket"),
                port: COMPUTE_PORT,
            },
            slot,
            warm_started,
            _slot: in_use,
            pid,
            exited,
            stopping,
            latest,
            stats_task,
            log_path: cluster_dir.join("postgres.log"),
            memory_mib: spec.size.memory_mib,
        };
        let what = format!("postgres in {}", compute.slot.container);
        let hint = format!(
            " (a remote Docker engine must share pgtide's file system for the socket to appear \
             at {})",
            compute.endpoint.socket_path().display()
        );
        let ready = super::wait_ready(
            &compute.endpoint,
            &compute.exited,
            &compute.log_path,
            &what,
            &hint,
        );
        if let Err(e) = ready.await {
            compute.kill_now().await;
            return Err(e);
        }
        tracing::info!(
            cluster = %spec.cluster,
            container = %compute.slot.container,
            warm = warm_started,
            slot_ms = made_ms,
            ms = started.elapsed().as_millis() as u64,
            "compute started"
        );
        Ok(Box::new(compute))
    }
}

/// One slot: its directory on the host and its container.
pub struct DockerSlot {
    id: String,
    dir: PathBuf,
    container: String,
}

/// Makes, fills and releases docker slots.
pub struct DockerSlots {
    docker: Docker,
    image: String,
    instance: String,
    slots_dir: PathBuf,
    owner: Owner,
    next_id: AtomicU64,
    /// Makes slot ids unique across runs (an earlier run's may linger if it could not clean up).
    id_prefix: String,
}

/// What `run` hands back: the postmaster's exec and its exit watch.
struct Running {
    pid: Option<i32>,
    exited: watch::Receiver<Option<ExitInfo>>,
    stopping: Arc<AtomicBool>,
}

impl DockerSlots {
    async fn is_running(&self, slot: &DockerSlot) -> bool {
        self.docker
            .inspect_container(&slot.container, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.running)
            .unwrap_or(false)
    }

    fn container_name(&self, id: &str) -> String {
        format!("pgtide-{}-{id}", &self.instance[..8])
    }

    fn slot(&self, id: &str) -> DockerSlot {
        DockerSlot {
            id: id.to_string(),
            dir: self.slots_dir.join(id),
            container: self.container_name(id),
        }
    }

    fn image_hint(&self, e: DockerError) -> anyhow::Error {
        match e {
            DockerError::DockerResponseServerError {
                status_code: 404,
                message,
            } if message.contains("image") => anyhow!(
                "{message}: build {} with scripts/build-image.sh",
                self.image
            ),
            e => anyhow!(e),
        }
    }

    /// Creates and starts a slot's container, idle until a cluster is given to it. `cluster`
    /// names the cluster on a cold slot's label (a warm one does not know it yet).
    async fn make_slot(&self, cluster: Option<&str>) -> anyhow::Result<DockerSlot> {
        let started = Instant::now();
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = self.slot(&format!("{}-{n}", self.id_prefix));
        std::fs::create_dir(&slot.dir)
            .with_context(|| format!("creating {}", slot.dir.display()))?;
        let socket_dir = slot.dir.join("socket");
        std::fs::create_dir(&socket_dir)?;
        for dir in [&slot.dir, &socket_dir] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            self.owner.chown(dir)?;
        }
        let labels = HashMap::from([
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
            (LABEL_SLOT.to_string(), slot.id.clone()),
            (LABEL_CLUSTER.to_string(), cluster.unwrap_or("").to_string()),
        ]);
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(vec!["sleep".into(), "infinity".into()]),
            user: Some("postgres".into()),
            // The image has no /etc/localtime: without TZ, initdb guesses the zone by reading
            // and scoring every zone file (5.5 of the 7 s an initdb took here, against 1.2 s
            // with TZ). pgtide's own TZ when it has one, else UTC.
            env: Some(vec![format!(
                "TZ={}",
                std::env::var("TZ")
                    .ok()
                    .filter(|tz| !tz.is_empty())
                    .unwrap_or_else(|| "UTC".into())
            )]),
            labels: Some(labels),
            stop_signal: Some("SIGINT".into()),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{}:{MOUNT}", slot.dir.display())]),
                network_mode: Some("none".into()),
                init: Some(true),
                shm_size: Some(SHM_SIZE),
                cpu_period: Some(CPU_PERIOD),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&slot.container)
            .build();
        let made = async {
            self.docker
                .create_container(Some(options), body)
                .await
                .map_err(|e| self.image_hint(e))
                .with_context(|| format!("creating the container {}", slot.container))?;
            self.docker
                .start_container(&slot.container, None::<StartContainerOptions>)
                .await
                .with_context(|| format!("starting the container {}", slot.container))?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = made {
            let _ = self.release(&slot).await;
            return Err(e);
        }
        tracing::debug!(container = %slot.container, ms = started.elapsed().as_millis() as u64, "slot made");
        Ok(slot)
    }

    /// Gives the cluster to the slot and starts its postmaster (not yet ready).
    async fn run(
        self: &Arc<Self>,
        slot: &DockerSlot,
        spec: &ComputeSpec,
        cluster_dir: &Path,
    ) -> anyhow::Result<Running> {
        // The marker first: whatever happens next, a slot holding data says whose it is.
        let marker = slot.dir.join("cluster");
        crate::files::write_private(&marker, cluster_dir.as_os_str().as_encoded_bytes())
            .with_context(|| format!("writing {}", marker.display()))?;
        let pgdata = super::pgdata_of(cluster_dir);
        let slot_pgdata = slot.dir.join("pgdata");
        if pgdata.exists() {
            std::fs::rename(&pgdata, &slot_pgdata).with_context(|| {
                format!(
                    "moving {} into the slot {} (both must be on one file system)",
                    pgdata.display(),
                    slot.dir.display()
                )
            })?;
            // A postmaster.pid here is stale: data reaches a slot only from the cluster's home,
            // and it gets home only once the container that ran on it is gone. Its pid is from
            // that container's pid namespace and may name a live process in this one (Postgres
            // would then refuse to start: "lock file \"postmaster.pid\" already exists").
            match std::fs::remove_file(slot_pgdata.join("postmaster.pid")) {
                Ok(()) => tracing::debug!(slot = %slot.id, "removed a stale postmaster.pid"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(anyhow!(e).context("removing a stale postmaster.pid")),
            }
        } else {
            self.initdb(slot, cluster_dir).await?;
        }

        super::quiet_postmaster_settings(&slot_pgdata, spec)
            .with_context(|| format!("editing {}/postgresql.conf", slot_pgdata.display()))?;
        let mut cmd: Vec<String> = vec!["postgres".into(), "-D".into(), format!("{MOUNT}/pgdata")];
        cmd.extend(super::postmaster_args(&format!("{MOUNT}/socket"), spec));
        // The size's memory limit now, no CPU limit until Postgres is ready (a throttled start
        // is ten times slower); both at once with creating the exec.
        let limit = self.update(&slot.container, None, spec.size.memory_mib);
        let exec = self.docker.create_exec(
            &slot.container,
            ExecConfig {
                cmd: Some(cmd),
                user: Some("postgres".into()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        );
        let (limit, exec) = tokio::join!(limit, exec);
        limit?;
        let exec_id = exec.context("creating the postgres exec")?.id;
        let output = match self
            .docker
            .start_exec(
                &exec_id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await
            .context("starting postgres in the container")?
        {
            StartExecResults::Attached { output, .. } => output,
            StartExecResults::Detached => bail!("the postgres exec started detached"),
        };
        let (exit_tx, exited) = watch::channel(None);
        let stopping = Arc::new(AtomicBool::new(false));
        tokio::spawn(watch_exit(
            self.clone(),
            self.slot(&slot.id),
            exec_id.clone(),
            output,
            cluster_dir.join("postgres.log"),
            stopping.clone(),
            exit_tx,
        ));
        let pid = self
            .docker
            .inspect_exec(&exec_id)
            .await
            .ok()
            .and_then(|i| i.pid)
            // 0 while the exec has not started yet: unknown, not a pid.
            .filter(|p| *p > 0)
            .map(|p| p as i32);
        Ok(Running {
            pid,
            exited,
            stopping,
        })
    }

    /// A new cluster: `initdb` in the container, into a scratch directory renamed into place, so
    /// that a directory named pgdata is always a complete cluster.
    async fn initdb(&self, slot: &DockerSlot, cluster_dir: &Path) -> anyhow::Result<()> {
        let started = Instant::now();
        let scratch = format!("{MOUNT}/pgdata.initdb");
        let mut cmd = vec!["initdb", "-D", &scratch];
        cmd.extend(INITDB_OPTIONS);
        let (code, text) = self.exec_output(&slot.container, &cmd).await?;
        let _ = crate::files::write_private_log(&cluster_dir.join("initdb.log"), text.as_bytes());
        if code != Some(0) {
            bail!(
                "initdb in {} failed ({code:?}): {}",
                slot.container,
                text.trim()
            );
        }
        std::fs::rename(slot.dir.join("pgdata.initdb"), slot.dir.join("pgdata"))?;
        tracing::info!(container = %slot.container, ms = started.elapsed().as_millis() as u64, "initdb done");
        Ok(())
    }

    /// Runs a command in the container as postgres; its exit code and output.
    async fn exec_output(
        &self,
        container: &str,
        cmd: &[&str],
    ) -> anyhow::Result<(Option<i64>, String)> {
        let exec = self
            .docker
            .create_exec(
                container,
                ExecConfig {
                    cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                    user: Some("postgres".into()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("exec {cmd:?} in {container}"))?;
        let mut text = Vec::new();
        if let StartExecResults::Attached { mut output, .. } =
            self.docker.start_exec(&exec.id, None).await?
        {
            while let Some(Ok(chunk)) = output.next().await {
                text.extend_from_slice(&chunk.into_bytes());
            }
        }
        let code = self.docker.inspect_exec(&exec.id).await?.exit_code;
        Ok((code, String::from_utf8_lossy(&text).into_owned()))
    }

    /// Sets the container's limits: `cpu_cores` None lifts the CPU limit.
    async fn update(
        &self,
        container: &str,
        cpu_cores: Option<f64>,
        memory_mib: u64,
    ) -> anyhow::Result<()> {
        let quota = match cpu_cores {
            Some(cores) => ((cores * CPU_PERIOD as f64).round() as i64).max(1000),
            None => -1,
        };
        let memory = memory_mib as i64 * MIB;
        self.docker
            .update_container(
                container,
                ContainerUpdateBody {
                    cpu_period: Some(CPU_PERIOD),
                    cpu_quota: Some(quota),
                    memory: Some(memory),
                    memory_swap: Some(memory),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("updating the limits of {container}"))
    }

    /// Removes the slot's container, puts any cluster data it held back in place, and removes the
    /// slot directory. Data is moved, never deleted; if it cannot be moved, the slot stays.
    async fn release(&self, slot: &DockerSlot) -> anyhow::Result<()> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self
            .docker
            .remove_container(&slot.container, Some(options))
            .await
        {
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => {
                // A container that may still run must not see its data move away.
                let gone = matches!(
                    self.docker
                        .inspect_container(&slot.container, None::<InspectContainerOptions>)
                        .await,
                    Err(DockerError::DockerResponseServerError {
                        status_code: 404,
                        ..
                    })
                );
                if !gone {
                    return Err(anyhow!(e).context(format!(
                        "removing the container {}; its slot {} keeps any data it holds until \
                         the next start",
                        slot.container,
                        slot.dir.display()
                    )));
                }
            }
        }
        let dir = slot.dir.clone();
        tokio::task::spawn_blocking(move || put_back(&dir)).await?
    }

    /// Puts back data that a slot of this instance still holds for `cluster_dir`.
    async fn reclaim(&self, cluster_dir: &Path) -> anyhow::Result<()> {
        for (id, holder) in self.slot_dirs()? {
            if holder.as_deref() == Some(cluster_dir)
                && self.slots_dir.join(&id).join("pgdata").exists()
            {
                tracing::warn!(slot = %id, cluster_dir = %cluster_dir.display(), "a slot still held the cluster's data: putting it back");
                self.release(&self.slot(&id)).await?;
            }
        }
        Ok(())
    }

    /// Slot directories and the cluster directory each names in its marker.
    fn slot_dirs(&self) -> anyhow::Result<Vec<(String, Option<PathBuf>)>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.slots_dir)? {
            let entry = entry?;
            let id = entry.file_name().to_string_lossy().into_owned();
            let marker = std::fs::read(entry.path().join("cluster"))
                .ok()
                .map(|bytes| PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()));
            found.push((id, marker));
        }
        Ok(found)
    }

    /// An earlier pgtide on this data directory died without cleaning up: remove its containers
    /// (their Postgres is killed; crash recovery brings back every acknowledged commit) and put
    /// the data their slots held back in place.
    async fn clean_up_earlier_run(&self) -> anyhow::Result<()> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_INSTANCE}={}", self.instance)],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let leftovers = self
            .docker
            .list_containers(Some(options))
            .await
            .context("listing containers")?;
        for container in leftovers {
            let Some(id) = container.id else { continue };
            let name = container
                .names
                .and_then(|n| n.first().cloned())
                .unwrap_or_else(|| id.clone());
            tracing::warn!(container = %name, "removing a container left by an earlier pgtide");
            let options = RemoveContainerOptionsBuilder::default().force(true).build();
            self.docker
                .remove_container(&id, Some(options))
                .await
                .with_context(|| format!("removing the leftover container {name}"))?;
        }
        for (id, holder) in self.slot_dirs()? {
            if let Some(cluster_dir) = &holder {
                if self.slots_dir.join(&id).join("pgdata").exists() {
                    tracing::warn!(slot = %id, cluster_dir = %cluster_dir.display(), "putting back data an earlier pgtide left in a slot");
                }
            }
            let dir = self.slots_dir.join(&id);
            tokio::task::spawn_blocking(move || put_back(&dir)).await??;
        }
        Ok(())
    }
}

/// Moves `<slot>/pgdata` back to the cluster directory its marker names, then removes the slot
/// directory (what is left is pgtide's own: the socket, the marker, an unfinished initdb). A
/// cluster directory that has a pgdata again gets the slot's aside, never over it.
fn put_back(slot_dir: &Path) -> anyhow::Result<()> {
    if !slot_dir.exists() {
        return Ok(());
    }
    let pgdata = slot_dir.join("pgdata");
    if pgdata.exists() {
        let marker = slot_dir.join("cluster");
        let cluster_dir = std::fs::read(&marker)
            .map(|bytes| PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()))
            .with_context(|| {
                format!(
                    "{} holds a data directory but {} does not say whose: left in place",
                    slot_dir.display(),
                    marker.display()
                )
            })?;
        // Only a cluster directory of this data directory: a marker that names anything else
        // (damaged, or written by something other than pgtide) must not move data there.
        let clusters = slot_dir
            .parent()
            .and_then(Path::parent)
            .map(|data_dir| data_dir.join("clusters"));
        // A cluster's standby lives in `clusters/<name>/standbys/<zone>`.
        let parent = cluster_dir.parent();
        let standby_of = parent
            .filter(|dir| dir.file_name().is_some_and(|name| name == "standbys"))
            .and_then(Path::parent);
        let plausible = cluster_dir.is_absolute()
            && cluster_dir.components().all(|part| {
                matches!(
                    part,
                    std::path::Component::Normal(_) | std::path::Component::RootDir
                )
            })
            && (parent == clusters.as_deref()
                || standby_of.and_then(Path::parent) == clusters.as_deref());
        if !plausible {
            anyhow::bail!(
                "{} names {}, which is not a cluster directory of this pgtide: its data directory is left in place",
                marker.display(),
                cluster_dir.display()
            );
        }
        let target = super::pgdata_of(&cluster_dir);
        let target = if target.exists() {
            let aside = cluster_dir.join(format!(
                "pgdata.from-slot-{}",
                slot_dir.file_name().unwrap_or_default().to_string_lossy()
            ));
            tracing::error!(slot = %slot_dir.display(), kept = %aside.display(), "the cluster has a pgdata already: the slot's is kept aside");
            aside
        } else {
            target
        };
        std::fs::create_dir_all(&cluster_dir)?;
        std::fs::rename(&pgdata, &target).with_context(|| {
            format!("putting {} back to {}", pgdata.display(), target.display())
        })?;
    }
    std::fs::remove_dir_all(slot_dir)
        .with_context(|| format!("removing the slot directory {}", slot_dir.display()))
}

/// Follows the postmaster's output to the cluster's log until it ends (the postmaster exited, or
/// its container went), then releases the slot and reports the exit.
async fn watch_exit(
    slots: Arc<DockerSlots>,
    slot: DockerSlot,
    exec_id: String,
    mut output: std::pin::Pin<
        Box<
            dyn futures_util::Stream<Item = Result<bollard::container::LogOutput, DockerError>>
                + Send,
        >,
    >,
    log_path: PathBuf,
    stopping: Arc<AtomicBool>,
    exit_tx: watch::Sender<Option<ExitInfo>>,
) {
    let mut log = crate::files::open_private_log(&log_path)
        .ok()
        .map(tokio::fs::File::from_std);
    while let Some(Ok(chunk)) = output.next().await {
        if let Some(log) = log.as_mut() {
            let _ = log.write_all(&chunk.into_bytes()).await;
        }
    }
    let docker = &slots.docker;
    // The stream also ends when the connection to the engine breaks (an engine restart with
    // live-restore, a remote engine's network): only an exec that no longer runs is an exit.
    // Postgres's log after such a break is lost; the compute is not.
    let mut code = None;
    let give_up = Instant::now() + Duration::from_secs(300);
    for attempt in 0u32.. {
        match docker.inspect_exec(&exec_id).await {
            Ok(exec) if exec.running == Some(true) => {}
            Ok(exec) => {
                code = exec.exit_code;
                break;
            }
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => break, // the container, and its exec, are gone
            Err(e) if Instant::now() > give_up => {
                tracing::error!(container = %slot.container, error = %e, "the engine does not answer: taking the compute for gone");
                break;
            }
            Err(_) => {}
        }
        // The engine marks the exec ended a moment after its output ends: look again soon.
        let pause = if attempt < 25 { 20 } else { 500 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    let mut description = match code {
        Some(code) => format!("exited with code {code} (container {}", slot.container),
        None => format!("exited (container {}", slot.container),
    };
    // Not asked to stop, and the container went with it: it was stopped or killed.
    if !stopping.load(Ordering::Relaxed) && !slots.is_running(&slot).await {
        description.push_str(" was stopped or killed");
    }
    description.push(')');
    if let Err(e) = slots.release(&slot).await {
        tracing::error!(error = format!("{e:#}"), "releasing the slot");
        description.push_str(&format!(" (its data is still in {})", slot.dir.display()));
    }
    let _ = exit_tx.send(Some(ExitInfo { description }));
}

/// Keeps the latest sample of one streaming stats request (a one-shot request makes the engine
/// wait for a second sample: about a second per call).
async fn follow_stats(docker: Docker, container: String, latest: Arc<Mutex<Option<Usage>>>) {
    let options = StatsOptionsBuilder::default().stream(true).build();
    let mut stream = docker.stats(&container, Some(options));
    while let Some(Ok(sample)) = stream.next().await {
        if let Some(usage) = usage_of(&sample) {
            *latest.lock().expect("stats lock") = Some(usage);
        }
    }
}

/// CPU time from cpu_stats.cpu_usage.total_usage; memory working set = usage − inactive file
/// cache; floor = anonymous + shared memory (cgroup v2 names, or v1's total_* ones).
fn usage_of(sample: &ContainerStatsResponse) -> Option<Usage> {
    let cpu_ns = sample.cpu_stats.as_ref()?.cpu_usage.as_ref()?.total_usage?;
    let memory = sample.memory_stats.as_ref()?;
    let usage = memory.usage?;
    let stats = memory.stats.clone().unwrap_or_default();
    let field = |v2: &str, v1: &str| stats.get(v2).or_else(|| stats.get(v1)).copied();
    let inactive = field("inactive_file", "total_inactive_file").unwrap_or(0);
    let floor =
        field("anon", "total_rss").unwrap_or(0) + field("shmem", "total_shmem").unwrap_or(0);
    let mib = |bytes: u64| bytes as f64 / MIB as f64;
    Some(Usage {
        cpu_time: Duration::from_nanos(cpu_ns),
        memory: MemoryUse {
            working_set_mib: mib(usage.saturating_sub(inactive)),
            floor_mib: mib(floor),
        },
    })
}

#[async_trait]
impl SlotMaker for DockerSlots {
    type Slot = DockerSlot;

    async fn make(&self) -> anyhow::Result<DockerSlot> {
        self.make_slot(None).await
    }

    async fn discard(&self, slot: DockerSlot) {
        if let Err(e) = self.release(&slot).await {
            tracing::warn!(slot = %slot.id, error = format!("{e:#}"), "discarding a warm slot");
        }
    }
}

pub struct DockerCompute {
    slots: Arc<DockerSlots>,
    endpoint: ComputeEndpoint,
    slot: DockerSlot,
    warm_started: bool,
    /// Counts this compute's slot as in use for as long as it lives.
    _slot: SlotInUse,
    /// The postmaster's pid on the engine's host, when the engine reports it.
    pid: Option<i32>,
    exited: watch::Receiver<Option<ExitInfo>>,
    /// Set by `stop`, so that the exit is not described as a crash.
    stopping: Arc<AtomicBool>,
    latest: Arc<Mutex<Option<Usage>>>,
    stats_task: tokio::task::JoinHandle<()>,
    log_path: PathBuf,
    /// The memory limit in force (kept when the CPU limit is lifted for a stop).
    memory_mib: u64,
}

impl Drop for DockerCompute {
    fn drop(&mut self) {
        self.stats_task.abort();
    }
}

impl DockerCompute {
    fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// Removes the container at once; the exit watch then puts the data back.
    async fn kill_now(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = self
            .slots
            .docker
            .remove_container(&self.slot.container, Some(options))
            .await;
        if !super::wait_exit(&self.exited, Duration::from_secs(30)).await {
            tracing::error!(container = %self.slot.container, "no exit seen after removing the container");
            if let Err(e) = self.slots.release(&self.slot).await {
                tracing::error!(error = format!("{e:#}"), "releasing the slot");
            }
        }
    }

    /// SIGINT (fast shutdown) to the postmaster: directly when the engine runs on this machine
    /// (the exec's pid is a host pid), else through `pg_ctl` in the container.
    async fn fast_shutdown(&self) {
        if let Some(pid) = self.pid {
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&format!("{MOUNT}/pgdata")))
                .unwrap_or(false);
            if ours {
                let pid = nix::unistd::Pid::from_raw(pid);
                if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).is_ok() {
                    return;
                }
            }
        }
        let cmd = [
            "pg_ctl",
            "stop",
            "-m",
            "fast",
            "--no-wait",
            "-D",
            &format!("{MOUNT}/pgdata"),
        ];
        if let Err(e) = self.slots.exec_output(&self.slot.container, &cmd).await {
            tracing::warn!(error = format!("{e:#}"), "pg_ctl stop in the container");
        }
    }
}

#[async_trait]
impl Compute for DockerCompute {
    fn endpoint(&self) -> &ComputeEndpoint {
        &self.endpoint
    }

    fn data_dir(&self) -> PathBuf {
        self.slot.dir.join("pgdata")
    }

    fn socket_dir_in_compute(&self) -> PathBuf {
        PathBuf::from(MOUNT).join("socket")
    }

    fn exited(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exited.clone()
    }

    fn warm_started(&self) -> bool {
        self.warm_started
    }

    async fn apply_size(&mut self, size: ComputeSize) -> anyhow::Result<Limits> {
        let docker = &self.slots.docker;
        let container = &self.slot.container;
        self.slots
            .update(container, Some(size.cpu_cores), size.memory_mib)
            .await?;
        // Report what the engine holds after the update, not what was asked.
        let host_config = docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
            .with_context(|| format!("inspecting {container}"))?
            .host_config
            .unwrap_or_default();
        let period = host_config
            .cpu_period
            .filter(|p| *p > 0)
            .unwrap_or(CPU_PERIOD);
        let cpu_cores = match host_config.cpu_quota {
            Some(quota) if quota > 0 => quota as f64 / period as f64,
            _ => 0.0,
        };
        let memory_mib = host_config.memory.unwrap_or(0).max(0) as u64 / MIB as u64;
        self.memory_mib = size.memory_mib;
        super::apply_reloadable_settings(&self.endpoint, &size).await?;
        Ok(Limits {
            cpu_cores,
            memory_mib,
            enforced: true,
            mechanism: "docker".to_string(),
            applied_at: vec![container.clone()],
        })
    }

    async fn usage(&mut self) -> anyhow::Result<Usage> {
        self.latest
            .lock()
            .expect("stats lock")
            .ok_or_else(|| anyhow!("no stats sample from {} yet", self.slot.container))
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        if self.has_exited() {
            return Ok(());
        }
        let started = Instant::now();
        self.stopping.store(true, Ordering::Relaxed);
        // The checkpoint and shutdown are short bursts: do not throttle them.
        let _ = self
            .slots
            .update(&self.slot.container, None, self.memory_mib)
            .await;
        super::checkpoint_before_stop(&self.endpoint).await;
        self.fast_shutdown().await;
        if !super::wait_exit(&self.exited, FAST_SHUTDOWN_TIMEOUT).await {
            tracing::warn!(container = %self.slot.container, "fast shutdown timed out, removing the container");
            self.kill_now().await;
        }
        tracing::info!(
            container = %self.slot.container,
            ms = started.elapsed().as_millis() as u64,
            "compute stopped"
        );
        Ok(())
    }

    async fn kill(&mut self) {
        if self.has_exited() {
            return;
        }
        // Removing the container ends every process in it; the exit watch puts back what is
        // left of the data.
        self.kill_now().await;
        tracing::info!(container = %self.slot.container, "lost compute removed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_engines_are_told_apart() {
        assert!(!is_remote("unix:///var/run/docker.sock"));
        assert!(!is_remote("tcp://127.0.0.1:2375"));
        assert!(!is_remote("http://localhost:2375"));
        assert!(is_remote("tcp://10.0.0.5:2376"));
        assert!(is_remote("ssh://builder"));
    }

    #[test]
    fn put_back_moves_data_home_and_never_over_other_data() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = dir.path().join("clusters/main");
        std::fs::create_dir_all(&cluster).unwrap();
        let slot = dir.path().join("slots/a-0");
        std::fs::create_dir_all(slot.join("pgdata")).unwrap();
        std::fs::write(slot.join("pgdata/PG_VERSION"), "15").unwrap();
        std::fs::write(slot.join("cluster"), cluster.as_os_str().as_encoded_bytes()).unwrap();
        put_back(&slot).unwrap();
        assert!(cluster.join("pgdata/PG_VERSION").exists());
        assert!(!slot.exists());

        // Data elsewhere already: the slot's goes aside.
        std::fs::create_dir_all(slot.join("pgdata")).unwrap();
        std::fs::write(slot.join("cluster"), cluster.as_os_str().as_encoded_bytes()).unwrap();
        put_back(&slot).unwrap();
        assert!(cluster.join("pgdata.from-slot-a-0").exists());

        // Data that names no cluster stays where it is.
        std::fs::create_dir_all(slot.join("pgdata")).unwrap();
        assert!(put_back(&slot).is_err());
        assert!(slot.join("pgdata").exists());

        // A standby's directory is a cluster's too.
        let standby = cluster.join("standbys/b");
        std::fs::create_dir_all(&standby).unwrap();
        std::fs::create_dir_all(slot.join("pgdata")).unwrap();
        std::fs::write(slot.join("cluster"), standby.as_os_str().as_encoded_bytes()).unwrap();
        put_back(&slot).unwrap();
        assert!(standby.join("pgdata").exists());

        // Nor does data whose marker names a place that is not one of this pgtide's clusters.
        std::fs::create_dir_all(slot.join("pgdata")).unwrap();
        let climbing = cluster.join("standbys/../../../../etc");
        for bogus in ["/etc", "relative/dir", climbing.to_str().unwrap()] {
            std::fs::write(slot.join("cluster"), bogus).unwrap();
            let error = put_back(&slot).unwrap_err().to_string();
            assert!(error.contains("not a cluster directory"), "{error}");
            assert!(slot.join("pgdata").exists());
        }
        let traversal = dir.path().join("clusters/..");
        std::fs::write(
            slot.join("cluster"),
            traversal.as_os_str().as_encoded_bytes(),
        )
        .unwrap();
        assert!(put_back(&slot).is_err());
        assert!(slot.join("pgdata").exists());
    }

    #[test]
    fn stats_give_cpu_time_working_set_and_floor() {
        let sample: ContainerStatsResponse = serde_json::from_value(serde_json::json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000u64}},
            "memory_stats": {"usage": 300 * 1048576u64, "stats": {
                "total_inactive_file": 100 * 1048576u64,
                "total_rss": 50 * 1048576u64,
                "total_shmem": 20 * 1048576u64
            }}
        }))
        .unwrap();
        let usage = usage_of(&sample).unwrap();
        assert_eq!(usage.cpu_time, Duration::from_millis(2500));
        assert_eq!(usage.memory.working_set_mib, 200.0);
        assert_eq!(usage.memory.floor_mib, 70.0);
    }
}
