//! Logging in to a compute over its private socket, where pgtide is trusted: the one startup
//! exchange that both session mode (one compute connection per client) and the transaction
//! pool (shared compute connections) go through.

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::protocol::{self, ProtocolError};

/// What the compute said when the session started.
pub struct ComputeHello {
    /// ParameterStatus and NoticeResponse messages, framed, ready to forward to a client.
    pub messages: BytesMut,
    /// The backend's real key, for cancel requests.
    pub pid: i32,
    pub secret: i32,
    /// The ReadyForQuery body (transaction status).
    pub ready_status: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum ComputeStartupError {
    /// The compute refused the session with its own ErrorResponse (unknown database or role,
    /// too many connections, …): the framed message, to hand to the client unchanged.
    #[error("the compute refused the session")]
    Refused(BytesMut),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
}

/// Sends the startup message with `params` and reads the answer up to ReadyForQuery.
pub async fn start_session(
    compute: &mut UnixStream,
    params: &[(String, String)],
) -> Result<ComputeHello, ComputeStartupError> {
    compute
        .write_all(&protocol::startup_message(params))
        .await?;
    let mut body = BytesMut::with_capacity(256);
    let mut messages = BytesMut::with_capacity(512);
    let mut key = None;
    loop {
        let kind =
            protocol::read_message(compute, &mut body, protocol::MAX_COMPUTE_STARTUP_MESSAGE)
                .await
                .map_err(|e| match e {
                    ProtocolError::Io(e) => ComputeStartupError::Io(e),
                    other => ComputeStartupError::Protocol(format!(
                        "unexpected answer from the compute: {other}"
                    )),
                })?;
        match kind {
            b'R' => {
                if body.get(..4) != Some(&[0, 0, 0, 0][..]) {
                    return Err(ComputeStartupError::Protocol(
                        "the compute asked pgtide for a password; its pg_hba.conf must trust the private socket"
                            .to_string(),
                    ));
                }
            }
            b'K' if body.len() == 8 => {
                let mut data = &body[..];
                key = Some((data.get_i32(), data.get_i32()));
            }
            b'E' => {
                let mut refused = BytesMut::new();
                protocol::put_message(&mut refused, b'E', &body);
                return Err(ComputeStartupError::Refused(refused));
            }
            b'Z' => {
                let (pid, secret) = key.ok_or_else(|| {
                    ComputeStartupError::Protocol("the compute sent no BackendKeyData".into())
                })?;
                return Ok(ComputeHello {
                    messages,
                    pid,
                    secret,
                    ready_status: body.first().copied().unwrap_or(b'I'),
                });
            }
            // ParameterStatus, NoticeResponse and anything else pass through as they are.
            other => protocol::put_message(&mut messages, other, &body),
        }
    }
}
