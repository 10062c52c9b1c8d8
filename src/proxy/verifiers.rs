//! Keeps a cluster's SCRAM verifiers current while its compute runs.
//!
//! Logins never look at the compute (a lookup must take the same path for a known and an unknown
//! user, and must not start a backend for someone who has not proved a password). Instead one
//! admin connection per running compute re-reads `pg_authid` every [`REFRESH_EVERY`], and at
//! once after a relay saw a role change go through: a password changed by any route (ALTER ROLE
//! in a DO block or a function, through either pool mode) takes effect within that time. After
//! a change a relay saw, logins wait for that refresh (all of them alike), so a role created
//! through session mode can log in at once.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::roles::read_compute_roles;
use crate::cluster::{ClusterHandle, ClusterState};

pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// While the compute runs but refuses the refresher's connection (it is just starting), try
/// again after this.
const RETRY_CONNECT: Duration = Duration::from_millis(200);
/// How long a login waits at most for a refresh after a role change.
const LOGIN_WAIT: Duration = Duration::from_secs(2);

/// Waits (briefly) until the verifiers cover every role change a relay saw.
pub async fn settled(cluster: &ClusterHandle) {
    let deadline = Instant::now() + LOGIN_WAIT;
    while cluster.counters().roles_pending() && Instant::now() < deadline {
        if !matches!(cluster.state(), ClusterState::Running(_)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Follows the cluster until its task ends (a shutdown or a drop) or `shutdown` says stop.
/// While no compute runs it sleeps on the cluster's state watch and costs nothing: with many
/// tenants on one machine, most of them are paused.
pub async fn keep_fresh(cluster: ClusterHandle, mut shutdown: watch::Receiver<bool>) {
    let mut state = cluster.watch_state();
    let mut connection: Option<(crate::runtime::ComputeEndpoint, tokio_postgres::Client)> = None;
    let mut last = Instant::now();
    loop {
        let current = state.borrow_and_update().clone();
        let ClusterState::Running(endpoint) = current else {
            connection = None;
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                _ = super::stopped(&mut shutdown) => return,
            }
            continue;
        };
        if connection.as_ref().is_some_and(|(e, _)| *e != endpoint) {
            connection = None;
        }
        let counters = cluster.counters();
        let marks = counters.roles_marks();
        let due = counters.roles_pending() || last.elapsed() >= REFRESH_EVERY;
        if due || connection.is_none() {
            refresh(&cluster, &endpoint, &mut connection, marks, &mut last).await;
        }
        let wait = if connection.is_some() {
            REFRESH_EVERY.saturating_sub(last.elapsed())
        } else {
            RETRY_CONNECT
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cluster.counters().roles_marked() => {}
            changed = state.changed() => if changed.is_err() { return },
            _ = super::stopped(&mut shutdown) => return,
        }
    }
}

/// One read of `pg_authid` into the cluster's store, connecting first if needed.
async fn refresh(
    cluster: &ClusterHandle,
    endpoint: &crate::runtime::ComputeEndpoint,
    connection: &mut Option<(crate::runtime::ComputeEndpoint, tokio_postgres::Client)>,
    marks: u64,
    last: &mut Instant,
) {
    if connection.is_none() {
        match endpoint.admin_connect().await {
            Ok(client) => *connection = Some((endpoint.clone(), client)),
            Err(e) => {
                tracing::debug!(cluster = %cluster.name(), error = %e, "verifier refresh cannot connect yet");
                return;
            }
        }
    }
    let (_, client) = connection.as_ref().expect("connected");
    match read_compute_roles(client).await {
        Ok(roles) => {
            cluster.set_compute_roles(roles);
            cluster.counters().roles_refreshed_to(marks);
            *last = Instant::now();
        }
        Err(e) => {
            tracing::debug!(cluster = %cluster.name(), error = %e, "verifier refresh failed");
            *connection = None;
        }
    }
}
