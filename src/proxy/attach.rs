//! Phase 5 of a connection: wait for the cluster's compute to run (resuming it if paused) and
//! reach it. Both pool modes come through here.

use std::time::Duration;

use super::compute_socket::ComputeSocket;

use super::errors::Fatal;
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
