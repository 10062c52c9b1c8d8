//! The end-to-end harness: each test starts a real `pgtide serve` (which starts a real
//! Postgres) in a temporary directory of its own, on free loopback ports, and stops it at the end.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

pub const PASSWORD: &str = "postgres";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary directory that the `postgres` OS user can walk into (pgtide runs Postgres as that
/// user when the tests run as root).
pub fn test_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pgtide-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

pub struct Pgtide {
    child: Option<Child>,
    /// The admin token, when the config sets one.
    pub token: Option<String>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
}

/// Extra TOML for the test's config.
#[derive(Default, Clone)]
pub struct Options {
    /// Lines added to the `[[clusters]]` table of the cluster "main".
    pub cluster: String,
    /// Lines added at the top level (before the clusters).
    pub top: String,
    /// Lines added to the `[runtime]` table (`kind`, `warm_pool_size`, …). Without a
    /// `warm_pool_size` line the pool is off (0), so that tests do not pay for refills they do
    /// not look at.
    pub runtime: String,
    /// Extra `[[clusters.users]]` tables of "main".
    pub users: String,
    /// Keep the six WAL copies on (the default config's six directories under `data/copies`);
    /// off otherwise, for speed.
    pub copies: bool,
    /// Lines added to the `[storage]` table.
    pub storage: String,
    /// Where the data (clusters and copies) lives instead of the test's own directory: `data`
    /// is then a symbolic link to it (a test on a file system of its own).
    pub data_on: Option<PathBuf>,
}

impl Pgtide {
    pub fn start() -> Pgtide {
        Pgtide::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Pgtide {
        let dir = test_dir();
        let port = free_port();
        let admin_port = free_port();
        let config = format!(
            r#"{top}
[admin]
listen = "127.0.0.1:{admin_port}"

[runtime]
data_dir = "data"
{warm_pool_size}
{runtime}

[storage]
copies = []
{storage}

[[clusters]]
name = "main"
listen = "127.0.0.1:{port}"
{max_acu}
{cluster}

[[clusters.users]]
name = "postgres"
password = "{PASSWORD}"
superuser = true
{users}
"#,
            top = options.top,
            warm_pool_size = if options.runtime.contains("warm_pool_size") {
                ""
            } else {
                "warm_pool_size = 0"
            },
            runtime = options.runtime,
            max_acu = if options.cluster.contains("max_acu") {
                ""
            } else {
                "max_acu = 8"
            },
            cluster = options.cluster,
            users = options.users,
            storage = options.storage,
        );
        let config = if options.copies {
            config.replace("copies = []\n", "")
        } else {
            config
        };
        let config_path = dir.path().join("pgtide.toml");
        std::fs::write(&config_path, config).unwrap();
        if let Some(target) = &options.data_on {
            std::os::unix::fs::symlink(target, dir.path().join("data")).unwrap();
        }
        let mut pgtide = Pgtide {
            child: None,
            token: None,
            dir,
            port,
            admin_port,
            config_path,
        };
        pgtide.spawn();
        pgtide.wait_state("running", Duration::from_secs(60));
        pgtide
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgtide"))
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env("PGTIDE_LOG", "info,pgtide=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("pgtide.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pgdata(&self) -> PathBuf {
        self.data_dir().join("clusters/main/pgdata")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGINT, as Ctrl-C does; waits for pgtide to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("pgtide is running");
        send_signal(child.id() as i32, Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "pgtide did not stop within 60 s after SIGINT:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts pgtide again on the same config and data.
    pub fn restart(&mut self) {
        self.restart_into("running");
    }

    /// Restarts pgtide and waits until its cluster is in `state`.
    pub fn restart_into(&mut self, state: &str) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
        self.wait_state(state, Duration::from_secs(60));
    }

    /// Rewrites the config file (takes effect at the next restart).
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let config = std::fs::read_to_string(&self.config_path).unwrap();
        std::fs::write(&self.config_path, edit(config)).unwrap();
    }

    /// The body of a GET on the admin endpoint, `None` when it fails.
    pub fn admin_get(&self, path: &str) -> Option<String> {
        let mut request = ureq::get(&self.admin_url(path));
        if let Some(token) = &self.token {
            request = request.header("authorization", &format!("Bearer {token}"));
        }
        request.call().ok()?.into_body().read_to_string().ok()
    }

    pub fn url(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port, path)
    }

    pub fn status(&self) -> serde_json::Value {
        let body = self.admin_get("/status").expect("GET /status");
        serde_json::from_str(&body).unwrap()
    }

    pub fn cluster_status(&self) -> serde_json::Value {
        self.status()["clusters"][0].clone()
    }

    /// `GET /status` read into the structs pgtide serialises it from: a renamed or retyped
    /// field fails here, at the contract, rather than as a `Value::Null` deep in a test.
    pub fn status_typed(&self) -> pgtide::admin::StatusResponse {
        let body = self.admin_get("/status").expect("GET /status");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status: {e}: {body}"))
    }

    /// The typed `/status` entry of the cluster called `name`.
    pub fn cluster(&self, name: &str) -> pgtide::admin::ClusterStatus {
        let status = self.status_typed();
        let names: Vec<String> = status.clusters.iter().map(|c| c.name.clone()).collect();
        status
            .clusters
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster {name:?} in /status (there are {names:?})"))
    }

    /// Waits (at most `timeout`) until the cluster called `name` is in `state`; panics with
    /// pgtide's log otherwise.
    pub fn wait_cluster_state(
        &self,
        name: &str,
        state: pgtide::cluster::state::StateName,
        timeout: Duration,
    ) {
        let reached = wait_until(timeout, || {
            self.admin_get("/status")
                .and_then(|body| serde_json::from_str::<pgtide::admin::StatusResponse>(&body).ok())
                .is_some_and(|s| {
                    s.clusters
                        .iter()
                        .any(|c| c.name == name && c.state == state)
                })
        });
        assert!(
            reached,
            "cluster {name} not {} after {timeout:?}; log:\n{}",
            state.as_str(),
            self.log()
        );
    }

    /// The cluster's recent events, as (kind, message).
    /// Waits (30 s at most) until the cluster has noticed that its compute's data directory is
    /// gone.
    pub fn wait_for_data_directory_lost(&self) {
        assert!(
            wait_until(Duration::from_secs(30), || self
                .events()
                .iter()
                .any(|(kind, _)| kind == "data_directory_lost")),
            "the loss was never noticed:\n{}",
            self.log()
        );
    }

    /// The cluster's data directory was rebuilt from a base backup in the copies.
    pub fn assert_rebuilt_from_a_backup(&self) {
        let events = self.events();
        assert!(
            events
                .iter()
                .any(|(kind, message)| kind == "rebuilt" && message.contains("base backup")),
            "{events:?}"
        );
    }

    pub fn events(&self) -> Vec<(String, String)> {
        self.cluster_status()["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["kind"].as_str().unwrap().to_string(),
                    e["message"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Runs the pgtide CLI (`pause main`, `status --json`, …) against this pgtide's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_pgtide"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .unwrap()
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics(&self) -> String {
        self.admin_get("/metrics").expect("GET /metrics")
    }

    pub fn wait_state(&self, state: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let current = self
                .admin_get("/status")
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                .and_then(|s| s["clusters"][0]["state"].as_str().map(str::to_string));
            if current.as_deref() == Some(state) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "cluster not {state} after {timeout:?} (now {current:?}); log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs psql against the cluster as `postgres`, with `-X -v ON_ERROR_STOP=1`.
    pub fn psql(&self, args: &[&str]) -> Output {
        psql_as(self.port, "postgres", PASSWORD, "postgres", args)
    }

    /// Runs psql and returns its output, panicking with stderr on failure.
    pub fn sql(&self, sql: &str) -> String {
        let out = self.psql(&["-tA", "-c", sql]);
        assert!(
            out.status.success(),
            "psql -c {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        self.connect_as("postgres", PASSWORD, "postgres")
            .await
            .expect("connect through pgtide")
    }

    /// Connects as postgres with the settings `configure` adds (startup options,
    /// application_name, …).
    pub async fn connect_configured(
        &self,
        configure: impl FnOnce(&mut tokio_postgres::Config),
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config: tokio_postgres::Config = self
            .url("postgres", PASSWORD, "postgres")
            .parse()
            .expect("a valid url");
        configure(&mut config);
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        database: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) =
            tokio_postgres::connect(&self.url(user, password, database), tokio_postgres::NoTls)
                .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Postgres processes whose command line names this test's data directory or cluster.
    pub fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pgdata().join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
    }
}

impl Drop for Pgtide {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id() as i32, Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- pgtide log ----\n{}", self.log());
        }
    }
}

pub fn psql_as(port: u16, user: &str, password: &str, database: &str, args: &[&str]) -> Output {
    Command::new("psql")
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-d",
            database,
        ])
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "60")
        .stdin(Stdio::null())
        .output()
        .expect("psql runs")
}

/// pgbench as user postgres with `password`, at 127.0.0.1:`port`; the caller adds its options
/// and the database, then runs or spawns it.
pub fn pgbench_command(port: u16, password: &str) -> Command {
    let mut command = Command::new("pgbench");
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .env("PGPASSWORD", password)
        .stdin(Stdio::null());
    command
}

/// Runs pgbench against `database`; returns (success, stdout + stderr).
pub fn pgbench_on(port: u16, password: &str, database: &str, args: &[&str]) -> (bool, String) {
    let out = pgbench_command(port, password)
        .args(args)
        .arg(database)
        .output()
        .expect("pgbench runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs pgbench against the cluster's postgres database; returns (success, stdout + stderr).
pub fn pgbench(port: u16, args: &[&str]) -> (bool, String) {
    pgbench_on(port, PASSWORD, "postgres", args)
}

pub fn process_alive(pid: i32) -> bool {
    pgtide::runtime::process::is_alive(nix::unistd::Pid::from_raw(pid))
}

/// pgbench in `-M simple`, `extended` and `prepared`, select-only and tpcb-like, each with no
/// failed transaction.
pub fn pgbench_every_mode(port: u16, clients: &str, jobs: &str, transactions: &str) {
    for mode in ["simple", "extended", "prepared"] {
        for select_only in [true, false] {
            let mut args = vec!["-M", mode, "-c", clients, "-j", jobs, "-t", transactions];
            if select_only {
                args.push("-S");
            }
            let (ok, out) = pgbench(port, &args);
            assert!(ok, "pgbench {args:?} failed: {out}");
            assert!(
                out.contains("number of failed transactions: 0"),
                "pgbench {args:?}: {out}"
            );
        }
    }
}

/// Processes whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let mut cmdline = Vec::new();
        if std::fs::File::open(entry.path().join("cmdline"))
            .and_then(|mut f| f.read_to_end(&mut cmdline))
            .is_ok()
            && String::from_utf8_lossy(&cmdline).contains(needle)
            && process_alive(pid)
        {
            found.push(pid);
        }
    }
    found
}

pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

pub fn send_signal(pid: i32, signal: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

pub fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// Creates a table, COPYs `rows` rows in and reads them back out with COPY: both directions
/// must carry the bytes unchanged.
pub async fn copy_round_trip(client: &tokio_postgres::Client, rows: usize) {
    use futures_util::{SinkExt, StreamExt};
    client
        .batch_execute("CREATE TABLE items (id int, name text)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY items FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let data: String = (0..rows).map(|i| format!("{i}\titem {i}\n")).collect();
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), rows as u64);
    let stream = client.copy_out("COPY items TO STDOUT").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut copied = Vec::new();
    while let Some(chunk) = stream.next().await {
        copied.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(copied).unwrap(), data);
}

/// Waits (at most 30 s) until the compute runs a query whose text is `query`, as seen through
/// `observer` (another session): a test that cancels or kills something mid-query waits for
/// that, not for a fixed time.
pub async fn wait_for_query(observer: &tokio_postgres::Client, query: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                &[&query],
            )
            .await
            .expect("reading pg_stat_activity");
        if row.get::<_, i64>(0) > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{query:?} never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- For long tests that kill and restart pgtide themselves (tests/soak.rs) ----

impl Pgtide {
    /// SIGKILL to pgtide (it cleans nothing up), then reaps it. Its Postgres goes with it
    /// (the process runtime sets PR_SET_PDEATHSIG); docker containers outlive it.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts pgtide again on the same config and data without waiting for its cluster, so that
    /// the caller can measure how long clients wait.
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "pgtide still runs");
        self.spawn();
    }

    /// Whether the pgtide this harness started is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// `GET /status` of the pgtide whose admin endpoint is on `admin_port`, or None when it does not
/// answer within 2 s (pgtide is down or restarting).
pub fn try_status(admin_port: u16) -> Option<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let body = agent
        .get(&format!("http://127.0.0.1:{admin_port}/status"))
        .call()
        .ok()?
        .into_body()
        .read_to_string()
        .ok()?;
    serde_json::from_str(&body).ok()
}

/// Runs psql like [`psql_as`], killed after `timeout` (coreutils' timeout): returns its
/// trimmed stdout, or why it failed.
pub fn psql_bounded(port: u16, sql: &str, timeout: Duration) -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["-s", "KILL", &format!("{}", timeout.as_secs().max(1))])
        .args([
            "psql",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .arg(port.to_string())
        .args(["-U", "postgres", "-d", "postgres", "-tA", "-c", sql])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", timeout.as_secs().max(1).to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "psql ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether the Docker engine answers here, with the docker runtime's image built (by
/// scripts/build-image.sh, which does nothing when it is already there); why not otherwise.
pub fn docker_usable() -> Result<(), String> {
    match Command::new("docker").arg("info").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Err(format!(
                "docker info failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Err(e) => return Err(format!("no docker command: {e}")),
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-image.sh");
    let out = Command::new(script).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "scripts/build-image.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Options for a cluster served over TLS, with a self-signed certificate for `localhost` made
/// in `dir` by openssl.
pub fn tls_options(dir: &std::path::Path) -> Options {
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(made.status.success(), "{made:?}");
    Options {
        cluster: format!(
            "[clusters.tls]\ncert = \"{}\"\nkey = \"{}\"",
            cert.display(),
            key.display()
        ),
        ..Default::default()
    }
}

/// `psql -tA -c sql` on a created cluster through the shared endpoint.
pub fn branch_sql(port: u16, cluster: &str, sql: &str) -> String {
    let out = psql_on(port, cluster, sql);
    assert!(
        out.status.success(),
        "psql on {cluster}: {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn psql_on(port: u16, cluster: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-w", "-tA", "-c", sql])
        .arg(format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable \
             options='endpoint={cluster}' connect_timeout=60"
        ))
        .env("PGPASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .output()
        .expect("psql runs")
}
