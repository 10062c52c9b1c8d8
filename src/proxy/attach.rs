//! Phase 5 of a connection: wait for the cluster's compute to run (resuming it if paused) and
//! reach it. Both pool modes come through here.

use std::time::Duration;

use super::compute_socket::ComputeSocket;

use super::errors::Fatal;
use crate::cluster::standbys::readers::ReaderLease;
use crate::cluster::ClusterHandle;
use crate::runtime::ComputeEndpoint;

/// Waits for a running compute, resuming the cluster if needed.
pub async fn attach(cluster: &ClusterHandle, who: &str) -> Result<ComputeEndpoint, Fatal> {
    cluster.attach(who).await.map_err(Fatal::attach)
}

/// Attaches and opens a connection to the compute. A compute that died a moment ago may still
/// look running; its socket refuses, and the client waits for the restart instead of failing.
pub async fn connect(
    cluster: &ClusterHandle,
    who: &str,
) -> Result<(ComputeEndpoint, ComputeSocket), Fatal> {
    let mut last_error = None;
    for _ in 0..3 {
        let endpoint = attach(cluster, who).await?;
        match ComputeSocket::connect(endpoint.socket_path()).await {
            Ok(compute) => return Ok((endpoint, compute)),
            Err(e) => {
                last_error = Some(e);
                cluster
                    .wait_until_not_running_at(&endpoint, Duration::from_secs(2))
                    .await;
            }
        }
    }
    let e = last_error.expect("at least one attempt");
    Err(Fatal::unreachable(cluster.name(), e))
}

/// Where a reader endpoint session goes.
pub enum ReaderConnection {
    /// A standby in rotation, counted against it while the lease lives.
    Standby(ReaderLease, ComputeSocket),
    /// No standby came in time: the writer (the session is made read-only).
    Writer(ComputeEndpoint, ComputeSocket),
}

/// How long a reader waits for a standby in rotation before it is sent to the writer: a
/// resumed cluster's standbys take a second or two to start after the writer.
const READER_WAIT: Duration = Duration::from_secs(5);

/// Wakes the cluster if needed (its standbys run only while the writer does), then connects to
/// the least busy standby in rotation, or to the writer when none comes in time.
pub async fn connect_reader(cluster: &ClusterHandle, who: &str) -> Result<ReaderConnection, Fatal> {
    attach(cluster, who).await?;
    for _ in 0..3 {
        let Some(lease) = cluster.readers().pick_within(READER_WAIT).await else {
            break;
        };
        // A standby that stopped a moment ago may still be listed: try another.
        if let Ok(socket) = ComputeSocket::connect(lease.endpoint.socket_path()).await {
            return Ok(ReaderConnection::Standby(lease, socket));
        }
        cluster.readers().publish(&lease.zone, None);
    }
    let (endpoint, socket) = connect(cluster, who).await?;
    Ok(ReaderConnection::Writer(endpoint, socket))
}
