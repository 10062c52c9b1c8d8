//! Where a cluster's compute (one Postgres instance) runs.
//!
//! A [`Runtime`] starts computes; a [`Compute`] is one running instance that the cluster task
//! owns: it knows how to reach it, how to stop it cleanly, and it reports when it exits on its
//! own through a watch channel (so the cluster task can `select!` on it while it also serves
//! commands). The `process` runtime runs the machine's own Postgres binaries.

pub mod background;
pub mod binaries;
pub mod cgroup;
pub mod docker;
#[cfg(test)]
pub mod fake;
pub mod host;
pub mod process;
pub mod template;
pub mod warm;

use std::path::PathBuf;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::acu::ComputeSize;

/// How pgtide reaches a compute: a unix socket that only pgtide can open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeEndpoint {
    /// The directory holding the socket (what libpq calls the host).
    pub socket_dir: PathBuf,
    pub port: u16,
}

impl ComputeEndpoint {
    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{}", self.port))
    }

    /// A tokio-postgres config for pgtide's own connections (the bootstrap superuser, trusted on
    /// the private socket).
    pub fn admin_config(&self, database: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(BOOTSTRAP_SUPERUSER)
            .dbname(database)
            .application_name("pgtide");
        config
    }

    /// Opens one admin connection and drives it in the background.
    pub async fn admin_connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self
            .admin_config("postgres")
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// Sets the Postgres settings that follow the ACUs (memory-sized, reloadable without restart)
/// for `size`, through `ALTER SYSTEM` and `pg_reload_conf()`: every runtime's `apply_size` ends
/// with this.
pub async fn apply_reloadable_settings(
    endpoint: &ComputeEndpoint,
    size: &ComputeSize,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let client = endpoint.admin_connect().await?;
    // One statement per query: ALTER SYSTEM refuses to run inside a (multi-statement) block.
    for (key, value) in size.reloadable_settings() {
        client
            .batch_execute(&format!("ALTER SYSTEM SET {key} = '{value}'"))
            .await
            .with_context(|| format!("ALTER SYSTEM SET {key}"))?;
    }
    client.batch_execute("SELECT pg_reload_conf()").await?;
    Ok(())
}

/// Where a cluster's Postgres data directory lives inside its directory (every runtime keeps it
/// there, on the machine running pgtide, so that storage can rebuild it).
pub fn pgdata_of(cluster_dir: &std::path::Path) -> PathBuf {
    cluster_dir.join("pgdata")
}

/// The port in every compute's socket name (`.s.PGSQL.5432`): Postgres listens on no TCP port.
pub const COMPUTE_PORT: u16 = 5432;

/// Comments out the lines of `pgdata/postgresql.conf` that set a postmaster setting pgtide gives
/// on the command line (initdb writes `max_connections` and `shared_buffers` there). Postgres
/// starts with the command line's value, but at every reload (each resize) it compares the
/// file's value with the running one and logs "parameter \"max_connections\" cannot be changed
/// without restarting the server" and "configuration file … contains errors". Writes only when
/// a line changes, in place (the file keeps its owner).
pub fn quiet_postmaster_settings(
    pgdata: &std::path::Path,
    spec: &ComputeSpec,
) -> std::io::Result<()> {
    let path = pgdata.join("postgresql.conf");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let keys: Vec<&str> = spec
        .postmaster_settings
        .iter()
        .map(|(key, _)| *key)
        .collect();
    match without_settings(&text, &keys) {
        Some(quiet) => std::fs::write(&path, quiet),
        None => Ok(()),
    }
}

/// `text` with the lines that set one of `keys` commented out, or `None` if none does.
fn without_settings(text: &str, keys: &[&str]) -> Option<String> {
    let mut changed = false;
    let mut out = String::with_capacity(text.len() + 128);
    for line in text.lines() {
        let setting = line.trim_start();
        let key = setting
            .split(|c: char| c == '=' || c.is_whitespace())
            .next()
            .unwrap_or("");
        if !key.is_empty() && keys.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            changed = true;
            out.push('#');
            out.push_str(line);
            out.push_str("\t# pgtide sets it on the command line");
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    changed.then_some(out)
}

/// The postmaster's `-c key=value` arguments: the unix socket in `socket_dir` (as the compute
/// sees it) and nothing else to listen on, pgtide's fixed settings, then the spec's.
pub fn postmaster_args(socket_dir: &str, spec: &ComputeSpec) -> Vec<String> {
    let fixed = [
        ("listen_addresses", String::new()),
        ("unix_socket_directories", socket_dir.to_string()),
        ("unix_socket_permissions", "0700".to_string()),
        ("port", COMPUTE_PORT.to_string()),
        ("cluster_name", format!("pgtide-{}", spec.cluster)),
        ("logging_collector", "off".to_string()),
    ];
    fixed
        .iter()
        .chain(spec.postmaster_settings.iter())
        .flat_map(|(key, value)| ["-c".to_string(), format!("{key}={value}")])
        .collect()
}

/// Waits up to `timeout` for a compute's exit; whether it came.
pub async fn wait_exit(
    exited: &watch::Receiver<Option<ExitInfo>>,
    timeout: std::time::Duration,
) -> bool {
    let mut exited = exited.clone();
    let finished = tokio::time::timeout(timeout, exited.wait_for(|e| e.is_some())).await;
    finished.is_ok()
}

/// The superuser that `initdb` creates; pgtide logs in as it over the private socket.
pub const BOOTSTRAP_SUPERUSER: &str = "postgres";

/// What a runtime needs to start one cluster's compute.
#[derive(Debug, Clone)]
pub struct ComputeSpec {
    pub cluster: String,
    /// The cluster's own directory: its Postgres data directory lives under it.
    pub cluster_dir: PathBuf,
    /// Settings given to the postmaster at start (sized for `max_acu`).
    pub postmaster_settings: Vec<(&'static str, String)>,
    /// The size to run at first.
    pub size: ComputeSize,
}

/// Why a compute stopped without being asked to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    pub description: String,
}

/// Whether CPU and memory limits are really applied on this machine, and what they are.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub cpu_cores: f64,
    pub memory_mib: u64,
    pub enforced: bool,
    /// Why limits are not enforced, or how they are.
    pub mechanism: String,
    /// Where they are applied (cgroup directories), for people and tests to read back.
    pub applied_at: Vec<String>,
}

/// Raw usage of a compute; the scaler turns deltas of `cpu_time` into cores.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// CPU time used since the compute started.
    pub cpu_time: std::time::Duration,
    pub memory: cgroup::MemoryUse,
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> &'static str;

    /// The warm pool's figures.
    fn warm_pool(&self) -> warm::WarmPoolStatus;

    /// pgtide is stopping: release the warm pool's ready slots.
    async fn shutdown(&self);

    /// Puts back a cluster's data directory that the runtime still holds from an earlier
    /// compute (a docker slot whose release failed). The cluster calls it before every start,
    /// before it looks at the data directory (to rebuild it, or to let `start` create it).
    async fn reclaim(&self, _cluster_dir: &std::path::Path) -> anyhow::Result<()> {
        Ok(())
    }

    /// Starts (creating on first use) the compute described by `spec` and waits until it
    /// accepts connections. Draws a slot from the warm pool, or makes one on the spot.
    async fn start(&self, spec: &ComputeSpec) -> anyhow::Result<Box<dyn Compute>>;
}

#[async_trait]
pub trait Compute: Send + Sync {
    fn endpoint(&self) -> &ComputeEndpoint;

    /// The data directory the compute runs on, as pgtide sees it (a lost one is noticed).
    fn data_dir(&self) -> PathBuf;

    /// The endpoint's socket directory as the compute itself sees it (a container sees its
    /// mount, not the host's path): where a socket pgtide serves to the compute is named.
    fn socket_dir_in_compute(&self) -> PathBuf {
        self.endpoint().socket_dir.clone()
    }

    /// Becomes `Some` once the compute has exited (on its own or after `stop`).
    fn exited(&self) -> watch::Receiver<Option<ExitInfo>>;

    /// Whether this compute's slot came ready from the warm pool.
    fn warm_started(&self) -> bool;

    /// Applies CPU and memory limits for `size`, and the Postgres settings that follow the
    /// ACUs; returns what is in force. Never restarts Postgres.
    async fn apply_size(&mut self, size: ComputeSize) -> anyhow::Result<Limits>;

    /// CPU time and memory used now.
    async fn usage(&mut self) -> anyhow::Result<Usage>;

    /// Clean stop: CHECKPOINT, then Postgres's fast shutdown; returns once it has exited.
    async fn stop(&mut self) -> anyhow::Result<()>;

    /// Stops at once, without a checkpoint, for a compute that is lost (its data directory is
    /// gone, so a clean stop can neither checkpoint nor find its postmaster.pid): Postgres's
    /// immediate shutdown, then SIGKILL, or the container removed. Its sessions end with it.
    /// Returns once it has exited (or could not be made to).
    async fn kill(&mut self);
}

/// How often readiness is polled while Postgres starts (`pg_ctl -w` polls every 100 ms).
const READY_POLL: std::time::Duration = std::time::Duration::from_millis(5);
/// Crash recovery may replay a lot of WAL; give it time before calling the start failed.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Waits until a starting compute accepts pgtide's connections, polling its socket every 5 ms;
/// fails at once if it exits meanwhile, with the end of its log. `what` names it in errors
/// ("postgres", "postgres in pgtide-…"); `timeout_hint` is added to the timeout's error.
pub async fn wait_ready(
    endpoint: &ComputeEndpoint,
    exited: &watch::Receiver<Option<ExitInfo>>,
    log_path: &std::path::Path,
    what: &str,
    timeout_hint: &str,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let socket = endpoint.socket_path();
    loop {
        if let Some(exit) = exited.borrow().clone() {
            anyhow::bail!(
                "{what} {} while starting; the end of {}:\n{}",
                exit.description,
                log_path.display(),
                tail(log_path, 10)
            );
        }
        if socket.exists() {
            match endpoint.admin_connect().await {
                Ok(_) => return Ok(()),
                Err(e) if is_starting_up(&e) => {}
                Err(e) if e.as_db_error().is_some() => return Err(e.into()),
                Err(_) => {} // the socket is not accepting yet
            }
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "{what} did not accept connections within {READY_TIMEOUT:?}{timeout_hint}"
            );
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

fn is_starting_up(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW)
}

/// The last `lines` lines of a log file.
fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// CHECKPOINT before a fast shutdown: it makes the shutdown short and the next start skip
/// recovery. A compute that does not answer is stopped all the same.
pub async fn checkpoint_before_stop(endpoint: &ComputeEndpoint) {
    const CHECKPOINT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
    if let Ok(client) = endpoint.admin_connect().await {
        let checkpoint = client.batch_execute("CHECKPOINT");
        if let Err(e) = tokio::time::timeout(CHECKPOINT_TIMEOUT, checkpoint).await {
            tracing::warn!(error = %e, "CHECKPOINT before stop timed out");
        }
    }
}

#[cfg(test)]
mod conf_tests {
    use super::without_settings;

    #[test]
    fn postmaster_settings_in_the_file_are_commented_out_and_nothing_else() {
        let initdb = "# comment about max_connections\nmax_connections = 100\t\t\t# (change requires restart)\nshared_buffers=128MB\n#port = 5432\nwork_mem = 4MB\n";
        let quiet = without_settings(initdb, &["max_connections", "shared_buffers"]).unwrap();
        assert_eq!(
            quiet,
            "# comment about max_connections\n#max_connections = 100\t\t\t# (change requires restart)\t# pgtide sets it on the command line\n#shared_buffers=128MB\t# pgtide sets it on the command line\n#port = 5432\nwork_mem = 4MB\n"
        );
        // Already quiet: nothing to write.
        assert_eq!(
            without_settings(&quiet, &["max_connections", "shared_buffers"]),
            None
        );
    }
}
