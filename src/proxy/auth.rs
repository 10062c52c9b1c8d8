//! Phase 3 of a connection: pgtide authenticates the client itself, with SCRAM-SHA-256 (or
//! SCRAM-SHA-256-PLUS over TLS) against the verifiers it keeps, or none for a configured user
//! without a password.
//!
//! The path is the same for every user name: one lookup in pgtide's store, the same messages,
//! the same work, and a made-up verifier (with the iteration count real ones use) for a name it
//! does not know, which fails only at the proof. Nothing here reaches the compute: a wrong
//! password or an unknown user never wakes a paused cluster nor starts a backend.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::errors::Fatal;
use super::scram::{Binding, Mock, ScramError, ScramExchange};
use super::ClientStream;
use crate::cluster::roles::RoleSecret;
use crate::cluster::ClusterHandle;
use crate::wire::{self, Authentication};

/// Limit for one message during authentication (SASL messages are small).
const MAX_AUTH_MESSAGE: usize = 10_000;

/// The iteration count of the made-up verifier when there is no cluster to take it from
/// (Postgres's default `scram_iterations`).
const DEFAULT_ITERATIONS: u32 = 4096;

/// Authenticates `user` against `cluster`; `None` (the shared endpoint was asked for a cluster
/// that does not exist) takes the very steps of an unknown user and fails at the proof, so that
/// the answer tells nothing before a password was checked. On success `out` holds
/// AuthenticationOk (after anything already in it), not yet sent: it goes out together with the
/// startup answer.
pub async fn authenticate(
    stream: &mut ClientStream,
    cluster: Option<&ClusterHandle>,
    tls_binding: Option<&[u8]>,
    user: &str,
    out: &mut BytesMut,
) -> Result<(), Fatal> {
    if let Some(cluster) = cluster {
        super::verifiers::settled(cluster).await;
    }
    let verifier = match cluster.and_then(|cluster| cluster.role_secret(user)) {
        Some(RoleSecret::Trust) => {
            wire::authentication(out, Authentication::Ok);
            return Ok(());
        }
        Some(RoleSecret::Scram(verifier)) => Some(verifier),
        None => None,
    };
    let binding = match (&*stream, tls_binding) {
        (ClientStream::Tls(_), Some(data)) => Binding::Offered(data),
        _ => Binding::Unavailable,
    };
    wire::authentication(out, Authentication::Sasl(binding.mechanisms()));
    flush(stream, out).await?;

    let initial = read_password_message(stream).await?;
    let (mechanism, client_first) = wire::parse_sasl_initial_response(&initial)
        .ok_or_else(|| Fatal::protocol("malformed SASL initial response"))?;
    if !binding.mechanisms().contains(&mechanism) {
        return Err(Fatal::protocol(
            "client selected an invalid SASL authentication mechanism",
        ));
    }
    let mock = Mock {
        seed: user,
        iterations: cluster.map_or(DEFAULT_ITERATIONS, ClusterHandle::typical_iterations),
    };
    let exchange = ScramExchange::start(verifier.as_ref(), mock, mechanism, binding, client_first)
        .map_err(scram_fatal)?;
    wire::authentication(
        out,
        Authentication::SaslContinue(exchange.server_first().as_bytes()),
    );
    flush(stream, out).await?;

    let client_final = read_password_message(stream).await?;
    match exchange.finish(&client_final) {
        Ok(server_final) => {
            wire::authentication(out, Authentication::SaslFinal(server_final.as_bytes()));
            wire::authentication(out, Authentication::Ok);
            Ok(())
        }
        Err(ScramError::WrongPassword) => {
            tracing::info!(user, "password authentication failed");
            Err(Fatal::new(
                "28P01",
                format!("password authentication failed for user \"{user}\""),
            ))
        }
        Err(e) => Err(scram_fatal(e)),
    }
}

fn scram_fatal(e: ScramError) -> Fatal {
    Fatal::protocol(e.to_string())
}

/// Reads a password-family ('p') message, as the SASL exchange sends them.
async fn read_password_message<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, Fatal> {
    let mut header = [0u8; wire::HEADER_LEN];
    stream.read_exact(&mut header).await.map_err(Fatal::io)?;
    let (kind, total) = wire::peek_header(&header, MAX_AUTH_MESSAGE)?.expect("a whole header");
    if kind != b'p' {
        return Err(Fatal::protocol(format!(
            "expected a password (SASL response) message, got type {:?}",
            kind as char
        )));
    }
    let mut body = vec![0u8; total - wire::HEADER_LEN];
    stream.read_exact(&mut body).await.map_err(Fatal::io)?;
    Ok(body)
}

/// Writes `out` and clears it.
pub async fn flush<S: AsyncWrite + Unpin>(stream: &mut S, out: &mut BytesMut) -> Result<(), Fatal> {
    stream.write_all(out).await.map_err(Fatal::io)?;
    stream.flush().await.map_err(Fatal::io)?;
    out.clear();
    Ok(())
}
