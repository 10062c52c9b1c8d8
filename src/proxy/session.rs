//! Session mode: one compute connection for the client's whole life.
//!
//! The client's startup parameters go to the compute over its private socket, where pgtide is
//! trusted; the compute's ParameterStatus, a BackendKeyData with pgtide's own secret (the real
//! pid, so that `pg_backend_pid()` and NOTIFY's sender pid match) and ReadyForQuery go back to
//! the client. Then [`relay`] copies bytes both ways until one side leaves.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::attach;
use super::auth::flush;
use super::compute::{self, ComputeStartupError};
use super::errors::Fatal;
use super::handshake::Startup;
use super::relay::{self, RelayEnd};
use super::{ClientStream, ProxyShared};
use crate::cluster::ClusterHandle;
use crate::wire;

/// Serves an authenticated client; `out` holds what authentication left to send.
pub async fn serve(
    client: &mut ClientStream,
    cluster: &ClusterHandle,
    shared: &ProxyShared,
    startup: &Startup,
    who: &str,
    out: BytesMut,
) -> Result<(), Fatal> {
    let (endpoint, compute) = attach::connect(cluster, who).await?;
    serve_on(
        client,
        cluster,
        shared,
        &startup.params,
        endpoint,
        compute,
        out,
    )
    .await
}

/// Serves a client of the reader endpoint: a session on the least busy standby in rotation,
/// held for the session's life. With no standby in rotation in time, the session goes to the
/// writer, read-only (as a reader endpoint with no reader does), so that reads never fail
/// while the cluster runs.
pub async fn serve_reader(
    client: &mut ClientStream,
    cluster: &ClusterHandle,
    shared: &ProxyShared,
    startup: &Startup,
    who: &str,
    out: BytesMut,
) -> Result<(), Fatal> {
    let (lease, endpoint, compute, params) = match attach::connect_reader(cluster, who).await? {
        attach::ReaderConnection::Standby(lease, compute) => {
            let endpoint = lease.endpoint.clone();
            (Some(lease), endpoint, compute, startup.params.clone())
        }
        attach::ReaderConnection::Writer(endpoint, compute) => {
            let mut params = startup.params.clone();
            params.retain(|(key, _)| key != "default_transaction_read_only");
            params.push((
                "default_transaction_read_only".to_string(),
                "on".to_string(),
            ));
            (None, endpoint, compute, params)
        }
    };
    let served = serve_on(client, cluster, shared, &params, endpoint, compute, out).await;
    // The standby counts the session until it ends.
    drop(lease);
    served
}

/// The session itself, on a compute connection already made.
async fn serve_on(
    client: &mut ClientStream,
    cluster: &ClusterHandle,
    shared: &ProxyShared,
    params: &[(String, String)],
    endpoint: crate::runtime::ComputeEndpoint,
    mut compute: super::compute_socket::ComputeSocket,
    mut out: BytesMut,
) -> Result<(), Fatal> {
    let hello = match compute::start_session(&mut compute, params).await {
        Ok(hello) => hello,
        Err(ComputeStartupError::Refused(error)) => {
            // The compute's own error, with its own SQLSTATE, is the answer.
            out.extend_from_slice(&error);
            let _ = client.write_all(&out).await;
            let _ = client.flush().await;
            return Err(Fatal::already_sent());
        }
        Err(ComputeStartupError::Io(e)) => return Err(Fatal::unreachable(cluster.name(), e)),
        Err(ComputeStartupError::Protocol(message)) => return Err(Fatal::protocol(message)),
    };
    out.extend_from_slice(&hello.messages);
    let cancel_key = shared
        .cancels
        .register(endpoint.socket_path(), hello.pid, hello.secret);
    wire::backend_key_data(&mut out, cancel_key.pid, cancel_key.secret);
    wire::ready_for_query(&mut out, hello.ready_status);
    flush(client, &mut out).await?;
    tracing::debug!(cluster = %cluster.name(), "session started");

    let end = relay::relay(client, &mut compute, cluster.counters()).await;
    drop(cancel_key);
    match end {
        RelayEnd::ComputeGone { explained: false } => Err(Fatal::compute_lost(cluster.name())),
        _ => Ok(()),
    }
}
