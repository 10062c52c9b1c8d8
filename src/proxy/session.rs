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
    mut out: BytesMut,
) -> Result<(), Fatal> {
    let (endpoint, mut compute) = attach::connect(cluster, who).await?;
    let hello = match compute::start_session(&mut compute, &startup.params).await {
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
    tracing::debug!(user = %startup.user, database = %startup.database, "session started");

    let end = relay::relay(client, &mut compute, cluster.counters()).await;
    drop(cancel_key);
    match end {
        RelayEnd::ComputeGone { explained: false } => Err(Fatal::compute_lost(cluster.name())),
        _ => Ok(()),
    }
}
