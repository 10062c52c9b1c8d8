//! pgtide: serverless PostgreSQL you run yourself.
//!
//! `pgtide serve` runs the proxy, the clusters and the admin endpoint; `status`, `pause`,
//! `resume`, `create`, `drop` and `list` are clients of the admin endpoint.

use pgtide::{admin, cluster, config, proxy, runtime, tenants};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use config::{Config, RuntimeKind};

#[derive(Parser)]
#[command(
    name = "pgtide",
    version,
    about = "Serverless PostgreSQL you run yourself"
)]
struct Cli {
    #[command(subcommand)]
    command: CommandLine,
}

#[derive(Subcommand)]
enum CommandLine {
    /// Run the proxy, the clusters and the admin endpoint.
    Serve {
        #[arg(long, default_value = "config/pgtide.toml")]
        config: PathBuf,
    },
    /// Show every cluster's state (asks a running pgtide).
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the raw JSON of GET /status.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Refresh every second, with a sparkline of each cluster's ACU over the last minutes.
        #[arg(long)]
        watch: bool,
    },
    /// Pause a cluster now (refused while clients are connected).
    Pause {
        cluster: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Resume a paused cluster and wait until it runs.
    Resume {
        cluster: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Planned failover: the writer stops cleanly and a standby takes over (the one in sync
    /// least behind, or the one in --to ZONE); waits until the new writer runs.
    Failover {
        cluster: String,
        /// The zone of the standby that takes over.
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create a cluster now, served on the [tenants] endpoint and kept across restarts.
    Create {
        /// A DNS label: lowercase letters, digits and '-', starting with a letter.
        name: String,
        #[arg(long)]
        min_acu: Option<f64>,
        #[arg(long)]
        max_acu: Option<f64>,
        #[arg(long, value_enum)]
        pool_mode: Option<config::PoolMode>,
        /// e.g. 90s, 5m, 1h.
        #[arg(long)]
        auto_pause_after: Option<String>,
        /// The postgres user's password (made up and shown once when left out).
        #[arg(long)]
        password: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Drop a created cluster: its compute, its data and its copies (config clusters cannot).
    Drop {
        name: String,
        /// Move the data and the copies aside (under dropped/NAME-SECONDS) instead of deleting.
        #[arg(long)]
        keep_data: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// ACU-hours per cluster: today, this month and in all (GET /usage).
    Usage {
        #[arg(long)]
        config: Option<PathBuf>,
        /// One row per cluster and day of this month instead.
        #[arg(long)]
        month: bool,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// Branch a cluster: a new cluster with SOURCE's data as of now, a moment or an LSN, made
    /// from SOURCE's copies while SOURCE keeps running.
    Branch {
        source: String,
        /// The new cluster's name.
        name: String,
        /// A moment: RFC 3339 or Postgres's now() text, e.g. "2026-12-07 00:12:34+00".
        #[arg(long, conflicts_with = "lsn")]
        at: Option<String>,
        /// A WAL position, e.g. 0/3000060.
        #[arg(long)]
        lsn: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Restore a cluster to a point in time: as a new cluster (--to, a branch under Aurora's
    /// name), or in place (--in-place, keeping the state before as another cluster).
    Restore {
        source: String,
        /// The new cluster's name.
        #[arg(
            long,
            required_unless_present = "in_place",
            conflicts_with = "in_place"
        )]
        to: Option<String>,
        #[arg(long, conflicts_with = "lsn", required_unless_present = "lsn")]
        at: Option<String>,
        #[arg(long)]
        lsn: Option<String>,
        /// Restore SOURCE itself (a created cluster); its state before is kept as a cluster.
        #[arg(long)]
        in_place: bool,
        /// With --in-place: the name the state before is kept under (default
        /// SOURCE-before-<unix seconds>).
        #[arg(long, requires = "in_place")]
        keep_as: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List every cluster, config and created.
    List {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the raw JSON of GET /clusters.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        CommandLine::Serve { config } => serve_blocking(&config),
        CommandLine::Status {
            config,
            json,
            watch,
        } => admin_client::status(config.as_deref(), json, watch),
        CommandLine::Pause { cluster, config } => {
            admin_client::action(config.as_deref(), &cluster, "pause")
        }
        CommandLine::Resume { cluster, config } => {
            admin_client::action(config.as_deref(), &cluster, "resume")
        }
        CommandLine::Failover {
            cluster,
            to,
            config,
        } => admin_client::failover(config.as_deref(), &cluster, to),
        CommandLine::Create {
            name,
            min_acu,
            max_acu,
            pool_mode,
            auto_pause_after,
            password,
            config,
        } => {
            let request = tenants::CreateRequest {
                name,
                min_acu,
                max_acu,
                pool_mode,
                auto_pause_after,
                password,
            };
            admin_client::create(config.as_deref(), &request)
        }
        CommandLine::Drop {
            name,
            keep_data,
            config,
        } => admin_client::drop_cluster(config.as_deref(), &name, keep_data),
        CommandLine::List { config, json } => admin_client::list(config.as_deref(), json),
        CommandLine::Usage { config, month, csv } => {
            admin_client::usage(config.as_deref(), month, csv)
        }
        CommandLine::Branch {
            source,
            name,
            at,
            lsn,
            config,
        }
        | CommandLine::Restore {
            source,
            to: Some(name),
            at,
            lsn,
            config,
            ..
        } => admin_client::branch(
            config.as_deref(),
            &source,
            &pgtide::branch::BranchRequest { name, at, lsn },
        ),
        CommandLine::Restore {
            source,
            to: None,
            at,
            lsn,
            keep_as,
            config,
            ..
        } => admin_client::restore_in_place(
            config.as_deref(),
            &source,
            &pgtide::branch::in_place::RestoreRequest { at, lsn, keep_as },
        ),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgtide: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve_blocking(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGTIDE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // One thread by default: on a small machine the proxy shares the cores with Postgres, and a
    // single thread forwards with no cross-thread wake-ups. PGTIDE_THREADS=N picks a
    // multi-thread runtime instead (scripts/bench.sh compares them).
    let threads: usize = std::env::var("PGTIDE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(config))
}

/// A proxy holds one socket per client: take all the file descriptors the system allows.
fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            tracing::debug!(from = soft, to = hard, "raised the open-file limit");
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    raise_file_limit();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let compute_runtime: Arc<dyn runtime::Runtime> = match config.runtime.kind {
        RuntimeKind::Process => Arc::new(runtime::process::ProcessRuntime::new(&config.runtime)?),
        RuntimeKind::Docker => {
            Arc::new(runtime::docker::DockerRuntime::new(&config.runtime).await?)
        }
    };
    std::fs::create_dir_all(&config.runtime.data_dir).with_context(|| {
        format!(
            "creating runtime.data_dir {}",
            config.runtime.data_dir.display()
        )
    })?;

    // Bind everything first, so that a port in use fails the start before any compute runs.
    let mut listeners = Vec::new();
    for cluster in &config.clusters {
        let Some(listen) = cluster.listen else {
            listeners.push(None);
            continue;
        };
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cluster \"{}\": cannot listen on {listen}", cluster.name))?;
        let tls = cluster.tls.as_ref().map(proxy::tls::acceptor).transpose()?;
        let reader = match cluster.reader_listen {
            Some(reader_listen) => {
                Some(TcpListener::bind(reader_listen).await.with_context(|| {
                    format!(
                        "cluster \"{}\": cannot listen on {reader_listen} (reader_listen)",
                        cluster.name
                    )
                })?)
            }
            None => None,
        };
        listeners.push(Some((listener, tls, reader)));
    }
    let shared_listener = match &config.tenants {
        Some(tenants) => {
            let listener = TcpListener::bind(tenants.listen)
                .await
                .with_context(|| format!("[tenants]: cannot listen on {}", tenants.listen))?;
            let tls = tenants.tls.as_ref().map(proxy::tls::acceptor).transpose()?;
            Some((listener, tls))
        }
        None => None,
    };
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("admin: cannot listen on {}", config.admin.listen))?;

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let proxy_shared = Arc::new(proxy::ProxyShared::default());
    let spawner =
        tenants::spawner::Spawner::new(&config, compute_runtime.clone(), shutdown_rx.clone())?;
    let registry = Arc::new(tenants::registry::Registry::new(
        config.tenants.as_ref().map(|t| t.listen),
    ));
    for (cluster_config, listener) in config.clusters.iter().zip(listeners) {
        let handle = spawner.spawn(cluster_config.clone(), cluster::Initially::Started);
        registry.insert(handle.clone(), tenants::registry::Source::Config);
        if let Some((listener, tls, reader)) = listener {
            tracing::info!(cluster = %cluster_config.name, listen = ?cluster_config.listen, "accepting clients");
            if let Some(reader) = reader {
                tracing::info!(cluster = %cluster_config.name, listen = ?cluster_config.reader_listen, "accepting readers");
                tokio::spawn(proxy::serve(
                    reader,
                    proxy::client::Serves::Readers(handle.clone()),
                    tls.clone(),
                    proxy_shared.clone(),
                    shutdown_rx.clone(),
                ));
            }
            tokio::spawn(proxy::serve(
                listener,
                proxy::client::Serves::One(handle),
                tls,
                proxy_shared.clone(),
                shutdown_rx.clone(),
            ));
        }
    }
    let tenants = Arc::new(tenants::Tenants::open(
        registry.clone(),
        spawner,
        proxy_shared.clone(),
    )?);
    if let (Some((listener, tls)), Some(shared)) = (shared_listener, &config.tenants) {
        tracing::info!(listen = %shared.listen, "accepting clients of every cluster");
        tokio::spawn(proxy::serve(
            listener,
            proxy::client::Serves::Routed(registry.clone()),
            tls,
            proxy_shared.clone(),
            shutdown_rx.clone(),
        ));
    }

    let admin_state = Arc::new(admin::AdminState {
        tenants: tenants.clone(),
        metrics,
        token: config.admin.token.clone(),
        listen: config.admin.listen,
        runtime: compute_runtime.clone(),
        proxy: proxy_shared.clone(),
    });
    tracing::info!(listen = %config.admin.listen, "admin endpoint up");
    let admin_task = tokio::spawn(admin::server::serve(
        admin_listener,
        admin_state,
        shutdown_rx.clone(),
    ));

    wait_for_signal().await;
    tracing::info!("shutting down: stopping every compute");
    let _ = shutdown_tx.send(true);
    let mut stops = tokio::task::JoinSet::new();
    for registered in registry.all() {
        stops.spawn(async move { registered.handle.shutdown().await });
    }
    let all_stopped = async { while stops.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(90), all_stopped)
        .await
        .is_err()
    {
        tracing::error!("some computes did not stop within 90 s");
    }
    compute_runtime.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}

/// The CLI side of the admin API.
mod admin_client {
    use std::path::Path;

    use anyhow::{bail, Context};

    use pgtide::admin::{HistoryResponse, StatusResponse};
    use pgtide::config::{Config, DEFAULT_CONFIG};

    fn load(config: Option<&Path>) -> anyhow::Result<Config> {
        match config {
            Some(path) => Ok(Config::load(path)?),
            None if Path::new("config/pgtide.toml").exists() => {
                Ok(Config::load(Path::new("config/pgtide.toml"))?)
            }
            None => Ok(Config::parse(
                DEFAULT_CONFIG,
                "(built-in config)",
                Path::new("."),
            )?),
        }
    }

    fn request(config: &Config, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        send(config, method, path, None)
    }

    /// The request with the admin token, when the config has one.
    fn authorized<B>(
        request: ureq::RequestBuilder<B>,
        authorization: Option<&str>,
    ) -> ureq::RequestBuilder<B> {
        match authorization {
            Some(value) => request.header("authorization", value),
            None => request,
        }
    }

    /// One call of the admin API; `body` is sent as JSON (POST only).
    fn send(
        config: &Config,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, String)> {
        let url = format!("http://{}{}", config.admin.listen, path);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(120)))
            .build()
            .into();
        let authorization = config
            .admin
            .token
            .as_ref()
            .map(|token| format!("Bearer {token}"));
        let authorization = authorization.as_deref();
        let response = match method {
            "POST" => {
                let request = authorized(agent.post(&url), authorization);
                match body {
                    Some(body) => request.send_json(body),
                    None => request.send_empty(),
                }
            }
            "DELETE" => authorized(agent.delete(&url), authorization).call(),
            _ => authorized(agent.get(&url), authorization).call(),
        }
        .with_context(|| {
            format!("cannot reach pgtide's admin endpoint at {url} (is `pgtide serve` running?)")
        })?;
        let status = response.status().as_u16();
        let body = response.into_body().read_to_string()?;
        Ok((status, body))
    }

    pub fn status(config: Option<&Path>, json: bool, watch: bool) -> anyhow::Result<()> {
        let config = load(config)?;
        if !watch {
            let body = get(&config, "/status")?;
            if json {
                println!("{body}");
            } else {
                print!("{}", table(&parse(&body)?));
            }
            return Ok(());
        }
        loop {
            let mut screen = String::from("\x1b[2J\x1b[H");
            let status: StatusResponse = parse(&get(&config, "/status")?)?;
            screen.push_str(&format!("pgtide status — {}\n\n", status_time()));
            screen.push_str(&table(&status));
            screen.push('\n');
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
                .saturating_sub(SPARKLINE_SECONDS);
            for cluster in &status.clusters {
                let name = &cluster.name;
                let history: HistoryResponse = parse(&get(
                    &config,
                    &format!("/history?cluster={name}&since={since}"),
                )?)?;
                let acus: Vec<f64> = history.points.iter().map(|p| p.acu).collect();
                let max = cluster.max_acu;
                screen.push_str(&format!(
                    "{name:<16} ACU, last {} min (max {max}): {}\n",
                    SPARKLINE_SECONDS / 60,
                    sparkline(&acus, max)
                ));
            }
            print!("{screen}");
            std::io::Write::flush(&mut std::io::stdout())?;
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }

    /// `pgtide usage`: GET /usage, as a table or CSV.
    pub fn usage(config: Option<&Path>, month: bool, csv: bool) -> anyhow::Result<()> {
        use pgtide::admin::usage::{self, UsageResponse, UsageView};
        let config = load(config)?;
        let response: UsageResponse = parse(&get(&config, "/usage")?)?;
        let view = if month {
            UsageView::Month
        } else {
            UsageView::Summary
        };
        if csv {
            print!("{}", usage::csv(&response, view));
        } else {
            print!("{}", usage::table(&response, view));
        }
        Ok(())
    }

    const SPARKLINE_SECONDS: u64 = 300;

    fn status_time() -> String {
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
    }

    /// One character per sample, from ▁ (0) to █ (max); a pause shows as a space.
    pub fn sparkline(values: &[f64], max: f64) -> String {
        const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        // At most 100 columns: each column is the largest value of its slice of samples.
        let width = values.len().clamp(1, 100);
        let per_column = values.len().div_ceil(width).max(1);
        values
            .chunks(per_column)
            .map(|chunk| {
                let value = chunk.iter().cloned().fold(0.0, f64::max);
                if value <= 0.0 {
                    ' '
                } else {
                    let level = ((value / max.max(f64::EPSILON)) * 7.0)
                        .round()
                        .clamp(0.0, 7.0) as usize;
                    BARS[level]
                }
            })
            .collect()
    }

    fn get(config: &Config, path: &str) -> anyhow::Result<String> {
        let (code, body) = request(config, "GET", path)?;
        if code != 200 {
            bail!("{}", body.trim());
        }
        Ok(body)
    }

    /// A document of the admin endpoint, read into the structs it was written from.
    fn parse<T: serde::de::DeserializeOwned>(body: &str) -> anyhow::Result<T> {
        serde_json::from_str(body)
            .context("the admin endpoint's answer is not what this pgtide expects")
    }

    fn table(status: &StatusResponse) -> String {
        let mut out = format!(
            "{:<16} {:<9} {:>5} {:>6} {:>9} {:>8} {:>7} {:<22} LAST EVENT\n",
            "CLUSTER", "STATE", "ACU", "TARGET", "MIN-MAX", "CLIENTS", "BUSY", "LISTEN"
        );
        for cluster in &status.clusters {
            out.push_str(&format!(
                "{:<16} {:<9} {:>5.1} {:>6.1} {:>9} {:>8} {:>7} {:<22} {}\n",
                cluster.name,
                cluster.state.as_str(),
                cluster.acu,
                cluster.acu_target,
                format!("{}-{}", cluster.min_acu, cluster.max_acu),
                cluster.clients,
                cluster.active,
                cluster.listen,
                cluster
                    .events
                    .first()
                    .map(|e| e.message.as_str())
                    .unwrap_or("")
            ));
        }
        let warm = &status.warm_pool;
        out.push_str(&format!(
            "\n{} runtime; warm pool: {} of {} ready, {} in use, {} hits, {} misses, {} refills{}\n",
            status.runtime,
            warm.ready,
            warm.size,
            warm.in_use,
            warm.hits,
            warm.misses,
            warm.refills,
            warm.last_error
                .as_deref()
                .map(|e| format!(" (refill failing: {e})"))
                .unwrap_or_default()
        ));
        if let Some(budget) = &status.capacity {
            out.push_str(&format!(
                "machine budget: running clusters hold {} of {} ACU (max_total_acu, from the {})\n",
                budget.held_acu,
                budget.max_total_acu,
                match budget.source {
                    pgtide::capacity::BudgetSource::Config => "config",
                    pgtide::capacity::BudgetSource::Machine => "machine",
                }
            ));
        }
        out
    }

    pub fn create(
        config: Option<&Path>,
        request: &pgtide::tenants::CreateRequest,
    ) -> anyhow::Result<()> {
        let config = load(config)?;
        let body = serde_json::to_value(request)?;
        let (code, text) = send(&config, "POST", "/clusters", Some(&body))?;
        if code != 201 {
            bail!("{}", text.trim());
        }
        let created: pgtide::tenants::Created = parse(&text)?;
        println!(
            "cluster \"{}\" created and running ({} ms)",
            created.name, created.started_ms
        );
        if let Some(password) = &created.password {
            println!(
                "user {}, password {password} (shown only now)",
                created.user
            );
        }
        if let Some(listen) = &created.listen {
            let (host, port) = listen.rsplit_once(':').unwrap_or((listen, "5432"));
            println!(
                "psql \"host={host} port={port} user={} dbname=postgres options=endpoint={}\"",
                created.user, created.name
            );
        }
        Ok(())
    }

    /// POSTs `request` as JSON to `path` and reads the answer, which must come with `expected`.
    fn post_json<T: serde::de::DeserializeOwned>(
        config: Option<&Path>,
        path: &str,
        request: &impl serde::Serialize,
        expected: u16,
    ) -> anyhow::Result<T> {
        let config = load(config)?;
        let body = serde_json::to_value(request)?;
        let (code, text) = send(&config, "POST", path, Some(&body))?;
        if code != expected {
            bail!("{}", text.trim());
        }
        parse(&text)
    }

    pub fn failover(
        config: Option<&Path>,
        cluster: &str,
        to: Option<String>,
    ) -> anyhow::Result<()> {
        let config = load(config)?;
        let body = serde_json::to_value(pgtide::admin::FailoverRequest { to })?;
        let (code, text) = send(
            &config,
            "POST",
            &format!("/clusters/{cluster}/failover"),
            Some(&body),
        )?;
        if code != 200 {
            bail!("{}", text.trim());
        }
        println!("{}", text.trim());
        Ok(())
    }

    pub fn branch(
        config: Option<&Path>,
        source: &str,
        request: &pgtide::branch::BranchRequest,
    ) -> anyhow::Result<()> {
        let branched: pgtide::branch::Branched =
            post_json(config, &format!("/clusters/{source}/branch"), request, 201)?;
        println!(
            "cluster \"{}\" branched from \"{}\" at {} (base backup {}, promoted at {}): \
             laid out in {} ms{}, replayed in {} ms, started in {} ms",
            branched.name,
            branched.source,
            branched.target,
            branched.base_backup,
            branched.promoted_at,
            branched.lay_out_ms,
            if branched.copy_on_write {
                " (cloned, copy-on-write)"
            } else {
                ""
            },
            branched.replay_ms,
            branched.start_ms
        );
        if let Some(listen) = &branched.listen {
            let (host, port) = listen.rsplit_once(':').unwrap_or((listen, "5432"));
            println!(
                "psql \"host={host} port={port} dbname=postgres options=endpoint={}\"",
                branched.name
            );
        }
        Ok(())
    }

    pub fn restore_in_place(
        config: Option<&Path>,
        name: &str,
        request: &pgtide::branch::in_place::RestoreRequest,
    ) -> anyhow::Result<()> {
        let restored: pgtide::branch::in_place::RestoredInPlace =
            post_json(config, &format!("/clusters/{name}/restore"), request, 200)?;
        println!(
            "cluster \"{}\" restored in place at {} (base backup {}, promoted at {}); its state \
             before is kept as cluster \"{}\"",
            restored.name,
            restored.target,
            restored.base_backup,
            restored.promoted_at,
            restored.kept_as
        );
        Ok(())
    }

    pub fn drop_cluster(config: Option<&Path>, name: &str, keep_data: bool) -> anyhow::Result<()> {
        let config = load(config)?;
        let path = format!("/clusters/{name}?keep_data={keep_data}");
        let (code, text) = request(&config, "DELETE", &path)?;
        if code != 200 {
            bail!("{}", text.trim());
        }
        let dropped: pgtide::tenants::Dropped = parse(&text)?;
        println!("cluster \"{}\" dropped", dropped.name);
        for place in &dropped.kept_at {
            println!("data kept at {place}");
        }
        Ok(())
    }

    pub fn list(config: Option<&Path>, json: bool) -> anyhow::Result<()> {
        let config = load(config)?;
        let body = get(&config, "/clusters")?;
        if json {
            println!("{body}");
            return Ok(());
        }
        let list: pgtide::admin::ClusterList = parse(&body)?;
        println!(
            "{:<24} {:<8} {:<9} {:>9} {:<12} LISTEN",
            "CLUSTER", "SOURCE", "STATE", "MIN-MAX", "POOL"
        );
        for cluster in &list.clusters {
            println!(
                "{:<24} {:<8} {:<9} {:>9} {:<12} {}",
                cluster.name,
                serde_json::to_value(cluster.source)?.as_str().unwrap_or(""),
                cluster.state.as_str(),
                format!("{}-{}", cluster.min_acu, cluster.max_acu),
                serde_json::to_value(cluster.pool_mode)?
                    .as_str()
                    .unwrap_or(""),
                cluster.listen
            );
        }
        Ok(())
    }

    pub fn action(config: Option<&Path>, cluster: &str, action: &str) -> anyhow::Result<()> {
        let config = load(config)?;
        let (code, body) = request(&config, "POST", &format!("/clusters/{cluster}/{action}"))?;
        if code != 200 {
            bail!("{}", body.trim());
        }
        println!("{}", body.trim());
        Ok(())
    }
}
