//! The admin endpoint: `GET /status` (JSON), `GET /metrics` (Prometheus text),
//! `GET /history?cluster=NAME&since=UNIX_SECONDS` (the last hour, one point a second),
//! `GET /dashboard` (a live page built on those), `POST /clusters/{name}/pause|resume`,
//! which `pgtide status/pause/resume` and the page's buttons call, and the clusters made at run
//! time ([`crate::tenants`]): `GET /clusters`, `POST /clusters` (a JSON body) and
//! `DELETE /clusters/{name}` (`?keep_data=true`), for `pgtide list/create/drop`;
//! `POST /clusters/{name}/branch` and `/restore` ([`crate::branch`]), for `pgtide branch/restore`;
//! and `GET /usage` (ACU-hours by cluster and day, [`usage`]) for `pgtide usage`.
//!
//! Nothing here counts as client activity: reading status never wakes or keeps a cluster awake.
//! When `[admin] token` is set every call needs it, as `Authorization: Bearer TOKEN` or, for a
//! browser opening the page, `?token=TOKEN`; without a token, pause and resume are refused unless
//! the admin address is loopback, and every call must name the endpoint by a loopback address,
//! `localhost` or its listen address in `Host`: a DNS-rebinding page (a name of the attacker's
//! that resolves to 127.0.0.1 after the page loaded) sends its own name there, and its `Origin`
//! matches that name, so the origin check alone would let it read /status and pause clusters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::cluster::{ClusterHandle, ClusterState};
use crate::storage::StorageStatus;
use crate::tenants::{CreateRequest, TenantError, Tenants};

pub mod server;
pub mod status;
pub mod usage;

pub use status::{
    ClusterList, ClusterListing, ClusterStatus, HistoryResponse, MeteringStatus, PoolStatus,
    StatusResponse,
};

pub struct AdminState {
    /// Every cluster (through its registry), and creating and dropping them.
    pub tenants: Arc<Tenants>,
    pub metrics: PrometheusHandle,
    pub token: Option<String>,
    pub listen: SocketAddr,
    pub runtime: Arc<dyn crate::runtime::Runtime>,
    /// The proxy's shared state, for the transaction pools' figures.
    pub proxy: Arc<crate::proxy::ProxyShared>,
}

pub fn status(state: &AdminState) -> StatusResponse {
    let registry = &state.tenants.registry;
    let clusters = registry
        .all()
        .iter()
        .map(|registered| {
            let cluster = &registered.handle;
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
                clients: counters.clients(),
                active: counters.active(),
                transactions: counters.transactions(),
                listen: listen_text(registry.listen_of(cluster)),
                source: registered.source,
                pool_mode: config.pool_mode,
                since: compute.since,
                failure: match cluster_state {
                    ClusterState::Failed(reason) => Some(reason),
                    _ => None,
                },
                storage: crate::branch::window::add_restore_window(
                    cluster.storage_status().unwrap_or_else(|| StorageStatus {
                        mode: "local".into(),
                        ..Default::default()
                    }),
                    &state.tenants.new_cluster_dirs(&config.name).1,
                ),
                pool: pool_status(state, cluster),
                metering: MeteringStatus::new(
                    compute.acu_hours_today,
                    compute.acu_hours_month,
                    config.max_acu,
                ),
                limits: compute.limits,
                zones: cluster.zones(),
                reader_listen: config.reader_listen.map(|l| l.to_string()),
                events: cluster.events().recent(50),
            }
        })
        .collect();
    StatusResponse {
        runtime: state.runtime.kind().to_string(),
        warm_pool: state.runtime.warm_pool(),
        capacity: Some(state.tenants.budget().status()),
        clusters,
    }
}

fn listen_text(listen: Option<SocketAddr>) -> String {
    listen.map(|l| l.to_string()).unwrap_or_default()
}

fn pool_status(state: &AdminState, cluster: &ClusterHandle) -> PoolStatus {
    let counters = cluster.counters();
    let (busy, idle) = match cluster.config().pool_mode {
        crate::config::PoolMode::Transaction => state.proxy.pools_of(cluster.name()).connections(),
        crate::config::PoolMode::Session => match cluster.state() {
            ClusterState::Running(_) => (counters.clients(), 0),
            _ => (0, 0),
        },
    };
    PoolStatus {
        server_connections_busy: busy,
        server_connections_idle: idle,
        waiting: counters.waiting(),
        wait_seconds_total: counters.wait_time().as_secs_f64(),
        prepared_hits: counters.prepared_hits(),
        prepared_misses: counters.prepared_misses(),
    }
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/status", get(get_status))
        .route("/metrics", get(get_metrics))
        .route("/history", get(get_history))
        .route("/dashboard", get(get_dashboard))
        .route("/assets/d3.min.js", get(get_d3))
        .route("/clusters", get(get_clusters).post(post_clusters))
        .route("/clusters/{name}", delete(delete_cluster))
        .route("/clusters/{name}/pause", post(post_pause))
        .route("/clusters/{name}/resume", post(post_resume))
        .route("/clusters/{name}/failover", post(post_failover))
        .route("/usage", get(get_usage))
        .route("/clusters/{name}/branch", post(post_branch))
        .route("/clusters/{name}/restore", post(post_restore))
        .with_state(state)
}

/// A refusal: status and reason.
type Denied = (StatusCode, String);

fn authorized(state: &AdminState, headers: &HeaderMap) -> Result<(), Denied> {
    let Some(token) = &state.token else {
        return host_names_this_endpoint(state, headers);
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|given| token_matches(given, token)) {
        Ok(())
    } else {
        Err((
            StatusCode::UNAUTHORIZED,
            "an admin token is required: Authorization: Bearer TOKEN\n".to_string(),
        ))
    }
}

/// Without a token, the only proof that a request was meant for this endpoint is the name it was
/// sent to: a loopback address, `localhost`, or the configured listen address. Any other name may
/// be a DNS-rebinding attacker's (421 Misdirected Request: this endpoint does not serve that name).
fn host_names_this_endpoint(state: &AdminState, headers: &HeaderMap) -> Result<(), Denied> {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if host_is_trusted(host, state.listen) {
        return Ok(());
    }
    Err((
        StatusCode::MISDIRECTED_REQUEST,
        format!(
            "the admin endpoint answers only to a loopback address, localhost or {} (Host: {host:?}); \
             set [admin] token to reach it by another name\n",
            state.listen
        ),
    ))
}

/// Whether `host` (a Host header: `name`, `name:port`, `1.2.3.4:port`, `[::1]:port`) is a
/// loopback address, `localhost`, or `listen` itself.
fn host_is_trusted(host: &str, listen: SocketAddr) -> bool {
    if host == listen.to_string() {
        return true;
    }
    let name = match host.strip_prefix('[') {
        // [v6] or [v6]:port
        Some(bracketed) => match bracketed.split_once(']') {
            Some((address, rest)) if rest.is_empty() || rest.starts_with(':') => address,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// For the page, which a browser opens by URL: the token may come as `?token=`.
fn authorized_by_query(
    state: &AdminState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<(), Denied> {
    match (&state.token, query.get("token")) {
        (Some(token), Some(given)) if token_matches(given, token) => Ok(()),
        _ => authorized(state, headers),
    }
}

/// Compares in constant time (for a given length), so that response times tell nothing of how
/// much of a guess was right.
fn token_matches(given: &str, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.as_bytes().ct_eq(token.as_bytes()).into()
}

/// State-changing calls made by a web page of another origin are refused: without it, any page
/// open in a local browser could POST pause or resume to a loopback endpoint without a token.
/// Browsers say where a request comes from (`Origin`, `Sec-Fetch-Site`); tools such as curl and
/// `pgtide` send neither.
fn same_origin(headers: &HeaderMap) -> Result<(), Denied> {
    let refused = |why: String| Err((StatusCode::FORBIDDEN, format!("{why}\n")));
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return refused(format!(
                "cross-site requests may not change a cluster (Sec-Fetch-Site: {site})"
            ));
        }
    }
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    if host.is_empty() || origin_host != host {
        return refused(format!(
            "requests from another origin ({origin}) may not change a cluster"
        ));
    }
    Ok(())
}

fn actions_allowed(state: &AdminState, headers: &HeaderMap) -> Result<(), Denied> {
    authorized(state, headers)?;
    same_origin(headers)?;
    if state.token.is_none() && !state.listen.ip().is_loopback() {
        return Err((
            StatusCode::FORBIDDEN,
            "pause, resume, create and drop need [admin] token when the admin endpoint is not \
             on loopback\n"
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
    for registered in state.tenants.registry.all() {
        let cluster = &registered.handle;
        let name = cluster.name().to_string();
        let counters = cluster.counters();
        metrics::gauge!("pgtide_cluster_clients", "cluster" => name.clone())
            .set(counters.clients() as f64);
        metrics::gauge!("pgtide_cluster_active_sessions", "cluster" => name.clone())
            .set(counters.active() as f64);
        metrics::counter!("pgtide_cluster_transactions_total", "cluster" => name.clone())
            .absolute(counters.transactions());
        metrics::counter!("pgtide_cluster_client_bytes_received_total", "cluster" => name.clone())
            .absolute(counters.bytes_from_clients());
        metrics::counter!("pgtide_cluster_client_bytes_sent_total", "cluster" => name.clone())
            .absolute(counters.bytes_to_clients());
        let server_connections = match cluster.state() {
            // Session mode: one compute connection per attached client.
            ClusterState::Running(_) => counters.clients(),
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

fn find(state: &AdminState, name: &str) -> Result<ClusterHandle, Denied> {
    let found = state.tenants.registry.get(name).map(|r| r.handle);
    found.ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("no cluster named \"{name}\"\n"),
        )
    })
}

/// The cluster a pause or resume is for, once the caller may act.
fn action_target(
    state: &AdminState,
    headers: &HeaderMap,
    name: &str,
) -> Result<ClusterHandle, Denied> {
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

/// `POST /clusters/{name}/failover` with an optional `{"to": "ZONE"}`.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverRequest {
    #[serde(default)]
    pub to: Option<String>,
}

async fn post_failover(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let cluster = match action_target(&state, &headers, &name) {
        Ok(cluster) => cluster,
        Err(denied) => return denied.into_response(),
    };
    let request: FailoverRequest = if body.is_empty() {
        FailoverRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("bad failover request: {e}\n"),
                )
                    .into_response()
            }
        }
    };
    match cluster.failover(request.to).await {
        Ok(message) => (StatusCode::OK, format!("{message}\n")).into_response(),
        Err(message) => (StatusCode::CONFLICT, format!("{message}\n")).into_response(),
    }
}

async fn get_usage(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorized(&state, &headers) {
        return denied.into_response();
    }
    let clusters = state.tenants.list();
    Json(usage::usage(clusters.iter().map(|r| &r.handle))).into_response()
}

async fn get_clusters(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorized(&state, &headers) {
        return denied.into_response();
    }
    let registry = &state.tenants.registry;
    let clusters = state
        .tenants
        .list()
        .into_iter()
        .map(|registered| {
            let cluster = &registered.handle;
            let config = cluster.config();
            ClusterListing {
                name: config.name.clone(),
                source: registered.source,
                state: cluster.state().name(),
                min_acu: config.min_acu,
                max_acu: config.max_acu,
                pool_mode: config.pool_mode,
                listen: listen_text(registry.listen_of(cluster)),
            }
        })
        .collect();
    Json(ClusterList { clusters }).into_response()
}

/// A refusal of the tenants' part, as HTTP: the status says what kind, the body says it in
/// Postgres's words, with its SQLSTATE.
fn tenant_refusal(e: TenantError) -> Response {
    let status = match &e {
        TenantError::Name(_) | TenantError::Invalid(_) => StatusCode::BAD_REQUEST,
        TenantError::Exists(_) | TenantError::DataLeft(..) | TenantError::FromConfig(_) => {
            StatusCode::CONFLICT
        }
        TenantError::NotFound(_) => StatusCode::NOT_FOUND,
        TenantError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        TenantError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        format!("ERROR: {} (SQLSTATE {})\n", e, e.sqlstate()),
    )
        .into_response()
}

async fn post_clusters(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(denied) = actions_allowed(&state, &headers) {
        return denied.into_response();
    }
    let request: CreateRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the body must be JSON like {{\"name\": \"shop\", \"max_acu\": 2}}: {e}\n"),
            )
                .into_response()
        }
    };
    match state.tenants.create(request).await {
        Ok(created) => (StatusCode::CREATED, Json(created)).into_response(),
        Err(e) => tenant_refusal(e),
    }
}

async fn delete_cluster(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(denied) = actions_allowed(&state, &headers) {
        return denied.into_response();
    }
    let keep_data = match query.get("keep_data").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("keep_data must be true or false, got {other:?}\n"),
            )
                .into_response()
        }
    };
    match state.tenants.drop_cluster(&name, keep_data).await {
        Ok(dropped) => Json(dropped).into_response(),
        Err(e) => tenant_refusal(e),
    }
}

/// `POST /clusters/{source}/branch` with `{"name", "at"?, "lsn"?}`: a new cluster from the
/// source's copies ([`crate::branch::branch`]); 201 with what was made, or the refusal in
/// Postgres's words with its SQLSTATE.
async fn post_branch(
    State(state): State<Arc<AdminState>>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(denied) = actions_allowed(&state, &headers) {
        return denied.into_response();
    }
    let request: crate::branch::BranchRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the body must be JSON like {{\"name\": \"dev\", \"at\": \"2026-12-07 00:00:00+00\"}}: {e}\n"),
            )
                .into_response()
        }
    };
    // A task of its own: a client that hangs up does not cut a branch short halfway (with a
    // Postgres replaying in its directory).
    let tenants = state.tenants.clone();
    let work = tokio::spawn(async move { crate::branch::branch(&tenants, &source, request).await });
    let outcome = match work.await {
        Ok(outcome) => outcome,
        Err(e) => Err(crate::branch::BranchError::Failed(format!(
            "the branch's task ended: {e}"
        ))),
    };
    match outcome {
        Ok(branched) => (StatusCode::CREATED, Json(branched)).into_response(),
        Err(e) => (
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            format!("ERROR: {} (SQLSTATE {})\n", e, e.sqlstate()),
        )
            .into_response(),
    }
}

/// `POST /clusters/{name}/restore` with `{"at"?, "lsn"?, "keep_as"?}`: the cluster restored in
/// place, its state before kept as another cluster ([`crate::branch::in_place`]).
async fn post_restore(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(denied) = actions_allowed(&state, &headers) {
        return denied.into_response();
    }
    let request: crate::branch::in_place::RestoreRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the body must be JSON like {{\"at\": \"2026-12-07 00:00:00+00\"}}: {e}\n"),
            )
                .into_response()
        }
    };
    let tenants = state.tenants.clone();
    let work = tokio::spawn(async move {
        crate::branch::in_place::restore_in_place(&tenants, &name, request).await
    });
    let outcome = match work.await {
        Ok(outcome) => outcome,
        Err(e) => Err(crate::branch::BranchError::Failed(format!(
            "the restore's task ended: {e}"
        ))),
    };
    match outcome {
        Ok(restored) => Json(restored).into_response(),
        Err(e) => (
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            format!("ERROR: {} (SQLSTATE {})\n", e, e.sqlstate()),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::host_is_trusted;

    #[test]
    fn only_loopback_localhost_and_the_listen_address_are_trusted_hosts() {
        let loopback = "127.0.0.1:9187".parse().unwrap();
        let public = "10.1.2.3:9187".parse().unwrap();
        for host in [
            "127.0.0.1:9187",
            "127.0.0.1",
            "127.5.6.7:1",
            "localhost",
            "LocalHost:9187",
            "[::1]:9187",
            "[::1]",
        ] {
            assert!(host_is_trusted(host, loopback), "{host}");
        }
        assert!(host_is_trusted("10.1.2.3:9187", public));
        for host in [
            "",
            "evil.example",
            "evil.example:9187",
            "localhost.evil.example",
            "127.0.0.1.evil.example:9187",
            "10.1.2.3:9188",
            "10.1.2.3",
            "[::1]x",
            "[::2]:9187",
        ] {
            assert!(!host_is_trusted(host, public), "{host}");
        }
    }
}
