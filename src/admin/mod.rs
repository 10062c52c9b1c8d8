//! The admin endpoint: `GET /status` (JSON), `GET /metrics` (Prometheus text),
//! `GET /history?cluster=NAME&since=UNIX_SECONDS` (the last hour, one point a second),
//! `GET /dashboard` (a live page built on those), and `POST /clusters/{name}/pause|resume`,
//! which `pgtide status/pause/resume` and the page's buttons call.
//!
//! Nothing here counts as client activity: reading status never wakes or keeps a cluster awake.
//! When `[admin] token` is set every call needs it, as `Authorization: Bearer TOKEN` or, for a
//! browser opening the page, `?token=TOKEN`; without a token, pause and resume are refused unless
//! the admin address is loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::cluster::events::Event;
use crate::cluster::history::HistoryPoint;
use crate::cluster::{ClusterHandle, ClusterState};
use crate::runtime::warm::WarmPoolStatus;
use crate::runtime::Limits;
use crate::storage::StorageStatus;

pub struct AdminState {
    pub clusters: Vec<ClusterHandle>,
    pub metrics: PrometheusHandle,
    pub token: Option<String>,
    pub listen: SocketAddr,
    pub runtime: Arc<dyn crate::runtime::Runtime>,
    /// The proxy's shared state, for the transaction pools' figures.
    pub proxy: Arc<crate::proxy::ProxyShared>,
}

#[derive(Serialize)]
pub struct StatusResponse {
    /// Where computes run: "process" or "docker".
    pub runtime: &'static str,
    /// Compute slots made ready ahead of need (`runtime.warm_pool_size`).
    pub warm_pool: WarmPoolStatus,
    pub clusters: Vec<ClusterStatus>,
}

#[derive(Serialize)]
pub struct ClusterStatus {
    pub name: String,
    pub state: &'static str,
    pub acu: f64,
    pub acu_target: f64,
    pub acu_seconds: f64,
    pub cpu_used_cores: f64,
    pub memory_used_mib: f64,
    pub min_acu: f64,
    pub max_acu: f64,
    pub clients: usize,
    pub active: usize,
    pub transactions: u64,
    pub listen: String,
    pub pool_mode: crate::config::PoolMode,
    pub since: String,
    pub failure: Option<String>,
    pub storage: StorageStatus,
    pub pool: PoolStatus,
    pub metering: MeteringStatus,
    pub limits: Option<Limits>,
    pub events: Vec<Event>,
}

/// Compute connections and the transaction-mode queue.
#[derive(Serialize)]
pub struct PoolStatus {
    /// Compute connections in use and idle (session mode: one per client, all in use).
    pub server_connections_busy: usize,
    pub server_connections_idle: usize,
    /// Transaction mode: clients waiting for a compute connection now, and their total wait.
    pub waiting: usize,
    pub wait_seconds_total: f64,
    pub prepared_hits: u64,
    pub prepared_misses: u64,
}

/// ACU-hours used, beside what running at `max_acu` all the time would have used.
#[derive(Serialize)]
pub struct MeteringStatus {
    pub acu_hours_today: f64,
    pub acu_hours_month: f64,
    pub max_acu_hours_today: f64,
    pub max_acu_hours_month: f64,
}

impl MeteringStatus {
    fn new(today: f64, month: f64, max_acu: f64) -> MeteringStatus {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let since_midnight = (now % 86_400) as f64;
        let day_of_month: f64 = crate::cluster::now_rfc3339()[8..10].parse().unwrap_or(1.0);
        let since_month_start = (day_of_month - 1.0) * 86_400.0 + since_midnight;
        MeteringStatus {
            acu_hours_today: today,
            acu_hours_month: month,
            max_acu_hours_today: max_acu * since_midnight / 3600.0,
            max_acu_hours_month: max_acu * since_month_start / 3600.0,
        }
    }
}

pub fn status(state: &AdminState) -> StatusResponse {
    let clusters = state
        .clusters
        .iter()
        .map(|cluster| {
            let config = cluster.config();
            let counters = cluster.counters();
            let compute = cluster.compute_status();
            let cluster_state = cluster.state();
            ClusterStatus {
                name: config.name.clone(),
                state: cluster_state.name(),
                acu: compute.acu,
                acu_target: compute.acu_target,
                acu_seconds: compute.acu_seconds,
                cpu_used_cores: compute.cpu_used_cores,
                memory_used_mib: compute.memory_used_mib,
                min_acu: config.min_acu,
                max_acu: config.max_acu,
                clients: counters.clients.load(Ordering::Relaxed),
                active: counters.active.load(Ordering::Relaxed),
                transactions: counters.transactions.load(Ordering::Relaxed),
                listen: config.listen.to_string(),
                pool_mode: config.pool_mode,
                since: compute.since,
                failure: match cluster_state {
                    ClusterState::Failed(reason) => Some(reason),
                    _ => None,
                },
                storage: cluster.storage_status().unwrap_or_else(|| StorageStatus {
                    mode: "local",
                    ..Default::default()
                }),
                pool: pool_status(state, cluster),
                metering: MeteringStatus::new(
                    compute.acu_hours_today,
                    compute.acu_hours_month,
                    config.max_acu,
                ),
                limits: compute.limits,
                events: cluster.events().recent(50),
            }
        })
        .collect();
    StatusResponse {
        runtime: state.runtime.kind(),
        warm_pool: state.runtime.warm_pool(),
        clusters,
    }
}

fn pool_status(state: &AdminState, cluster: &ClusterHandle) -> PoolStatus {
    let counters = cluster.counters();
    let (busy, idle) = match cluster.config().pool_mode {
        crate::config::PoolMode::Transaction => state.proxy.pools_of(cluster.name()).connections(),
        crate::config::PoolMode::Session => match cluster.state() {
            ClusterState::Running(_) => (counters.clients.load(Ordering::Relaxed), 0),
            _ => (0, 0),
        },
    };
    PoolStatus {
        server_connections_busy: busy,
        server_connections_idle: idle,
        waiting: counters.waiting.load(Ordering::Relaxed),
        wait_seconds_total: counters.wait_micros.load(Ordering::Relaxed) as f64 / 1e6,
        prepared_hits: counters.prepared_hits.load(Ordering::Relaxed),
        prepared_misses: counters.prepared_misses.load(Ordering::Relaxed),
    }
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/status", get(get_status))
        .route("/metrics", get(get_metrics))
        .route("/history", get(get_history))
        .route("/dashboard", get(get_dashboard))
        .route("/assets/d3.min.js", get(get_d3))
        .route("/clusters/{name}/pause", post(post_pause))
        .route("/clusters/{name}/resume", post(post_resume))
        .with_state(state)
}

/// A refusal: status and reason.
type Denied = (StatusCode, String);

fn authorized(state: &AdminState, headers: &HeaderMap) -> Result<(), Denied> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(token.as_str()) {
        Ok(())
    } else {
        Err((
            StatusCode::UNAUTHORIZED,
            "an admin token is required: Authorization: Bearer TOKEN\n".to_string(),
        ))
    }
}

/// For the page, which a browser opens by URL: the token may come as `?token=`.
fn authorized_by_query(
    state: &AdminState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<(), Denied> {
    match (&state.token, query.get("token")) {
        (Some(token), Some(given)) if constant_time_eq(given.as_bytes(), token.as_bytes()) => {
            Ok(())
        }
        _ => authorized(state, headers),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn actions_allowed(state: &AdminState, headers: &HeaderMap) -> Result<(), Denied> {
    authorized(state, headers)?;
    if state.token.is_none() && !state.listen.ip().is_loopback() {
        return Err((
            StatusCode::FORBIDDEN,
            "pause and resume need [admin] token when the admin endpoint is not on loopback\n"
                .to_string(),
        ));
    }
    Ok(())
}

async fn get_status(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorized(&state, &headers) {
        return denied.into_response();
    }
    Json(status(&state)).into_response()
}

#[derive(Serialize)]
struct HistoryResponse {
    cluster: String,
    /// The points kept per cluster (an hour, one a second).
    capacity: usize,
    points: Vec<HistoryPoint>,
}

async fn get_history(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(denied) = authorized_by_query(&state, &headers, &query) {
        return denied.into_response();
    }
    let Some(name) = query.get("cluster") else {
        return (
            StatusCode::BAD_REQUEST,
            "the cluster parameter is required: /history?cluster=NAME\n",
        )
            .into_response();
    };
    let since = match query.get("since").map(|s| s.parse::<u64>()) {
        None => 0,
        Some(Ok(since)) => since,
        Some(Err(_)) => {
            return (
                StatusCode::BAD_REQUEST,
                "since must be a Unix time in seconds, e.g. since=1767225600\n",
            )
                .into_response()
        }
    };
    let cluster = match find(&state, name) {
        Ok(cluster) => cluster,
        Err((_, message)) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    Json(HistoryResponse {
        cluster: name.clone(),
        capacity: crate::cluster::history::HISTORY_POINTS,
        points: cluster.history().since(since),
    })
    .into_response()
}

/// The page and its one script are compiled into the binary: it works offline.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");
/// d3 7, vendored from Debian's libjs-d3 (BSD-3-Clause); see assets/README.md.
const D3_JS: &str = include_str!("../../assets/d3.min.js");

async fn get_dashboard(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(denied) = authorized_by_query(&state, &headers, &query) {
        return denied.into_response();
    }
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DASHBOARD_HTML,
    )
        .into_response()
}

async fn get_d3() -> Response {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/javascript; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "max-age=86400"),
        ],
        D3_JS,
    )
        .into_response()
}

async fn get_metrics(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorized(&state, &headers) {
        return denied.into_response();
    }
    let warm = state.runtime.warm_pool();
    metrics::gauge!("pgtide_warm_pool_size").set(warm.size as f64);
    metrics::gauge!("pgtide_warm_pool_ready").set(warm.ready as f64);
    metrics::gauge!("pgtide_warm_pool_in_use").set(warm.in_use as f64);
    // The pool keeps its own counts (they are in /status too); exported here at each scrape.
    metrics::counter!("pgtide_warm_pool_hits_total").absolute(warm.hits);
    metrics::counter!("pgtide_warm_pool_misses_total").absolute(warm.misses);
    metrics::counter!("pgtide_warm_pool_refills_total").absolute(warm.refills);
    metrics::counter!("pgtide_warm_pool_refill_failures_total").absolute(warm.refill_failures);
    for cluster in &state.clusters {
        let name = cluster.name().to_string();
        let counters = cluster.counters();
        metrics::gauge!("pgtide_cluster_clients", "cluster" => name.clone())
            .set(counters.clients.load(Ordering::Relaxed) as f64);
        metrics::gauge!("pgtide_cluster_active_sessions", "cluster" => name.clone())
            .set(counters.active.load(Ordering::Relaxed) as f64);
        metrics::counter!("pgtide_cluster_transactions_total", "cluster" => name.clone())
            .absolute(counters.transactions.load(Ordering::Relaxed));
        metrics::counter!("pgtide_cluster_client_bytes_received_total", "cluster" => name.clone())
            .absolute(counters.bytes_from_clients.load(Ordering::Relaxed));
        metrics::counter!("pgtide_cluster_client_bytes_sent_total", "cluster" => name.clone())
            .absolute(counters.bytes_to_clients.load(Ordering::Relaxed));
        let server_connections = match cluster.state() {
            // Session mode: one compute connection per attached client.
            ClusterState::Running(_) => counters.clients.load(Ordering::Relaxed),
            _ => 0,
        };
        metrics::gauge!("pgtide_cluster_server_connections", "cluster" => name.clone())
            .set(server_connections as f64);
        metrics::gauge!("pgtide_cluster_acu", "cluster" => name).set(cluster.compute_status().acu);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}

fn find<'a>(state: &'a AdminState, name: &str) -> Result<&'a ClusterHandle, Denied> {
    let found = state.clusters.iter().find(|c| c.name() == name);
    found.ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("no cluster named \"{name}\"\n"),
        )
    })
}

/// The cluster a pause or resume is for, once the caller may act.
fn action_target<'a>(
    state: &'a AdminState,
    headers: &HeaderMap,
    name: &str,
) -> Result<&'a ClusterHandle, Denied> {
    actions_allowed(state, headers)?;
    find(state, name)
}

async fn post_pause(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let cluster = match action_target(&state, &headers, &name) {
        Ok(cluster) => cluster,
        Err(denied) => return denied.into_response(),
    };
    match cluster.pause().await {
        Ok(message) => (StatusCode::OK, format!("{message}\n")).into_response(),
        Err(message) => (StatusCode::CONFLICT, format!("{message}\n")).into_response(),
    }
}

async fn post_resume(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let cluster = match action_target(&state, &headers, &name) {
        Ok(cluster) => cluster,
        Err(denied) => return denied.into_response(),
    };
    let started = std::time::Instant::now();
    match cluster.resume("pgtide resume").await {
        Ok(()) => (
            StatusCode::OK,
            format!(
                "cluster \"{name}\" is running ({} ms)\n",
                started.elapsed().as_millis()
            ),
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}
