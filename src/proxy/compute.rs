//! Logging in to a compute over its private socket, where pgtide is trusted: the one startup
//! exchange that both session mode (one compute connection per client) and the transaction
//! pool (shared compute connections) go through; and the one query pgtide runs on a pooled
//! connection before a client uses it.

use super::compute_socket::ComputeSocket;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::wire;

/// Limit for a message from the compute outside the relay (ParameterStatus, notices, errors,
/// pgtide's own small queries).
const MAX_MESSAGE: usize = 1 << 20;

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
    Refused(Bytes),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
}

/// Framed reads from a compute connection outside the relay.
struct Reader<'a> {
    stream: &'a mut ComputeSocket,
    buf: BytesMut,
}

impl Reader<'_> {
    async fn next(&mut self) -> Result<wire::Message, ComputeStartupError> {
        loop {
            match wire::next_message(&mut self.buf, MAX_MESSAGE) {
                Ok(Some(message)) => return Ok(message),
                Ok(None) => {}
                Err(e) => {
                    return Err(ComputeStartupError::Protocol(format!(
                        "unexpected answer from the compute: {e}"
                    )))
                }
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ComputeStartupError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the compute closed the connection",
                )));
            }
        }
    }
}

/// Sends the startup message with `params` and reads the answer up to ReadyForQuery.
pub async fn start_session(
    compute: &mut ComputeSocket,
    params: &[(String, String)],
) -> Result<ComputeHello, ComputeStartupError> {
    compute.write_all(&wire::startup_message(params)).await?;
    let mut reader = Reader {
        stream: compute,
        buf: BytesMut::with_capacity(1024),
    };
    let mut messages = BytesMut::with_capacity(512);
    let mut key = None;
    loop {
        let message = reader.next().await?;
        let body = message.body();
        match message.kind {
            b'R' => {
                if body.get(..4) != Some(&[0, 0, 0, 0][..]) {
                    return Err(ComputeStartupError::Protocol(
                        "the compute asked pgtide for a password; its pg_hba.conf must trust the private socket"
                            .to_string(),
                    ));
                }
            }
            b'K' if body.len() == 8 => {
                let mut data = body;
                key = Some((data.get_i32(), data.get_i32()));
            }
            b'E' => return Err(ComputeStartupError::Refused(message.frame)),
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
            _ => messages.extend_from_slice(&message.frame),
        }
    }
}

/// What one of pgtide's own simple queries returned.
#[derive(Debug, Default)]
pub struct QueryOutcome {
    pub rows: Vec<Vec<Option<String>>>,
    /// ParameterStatus messages the query caused, framed.
    pub parameter_status: BytesMut,
    /// The ErrorResponse, framed, if it failed.
    pub error: Option<Bytes>,
}

/// Runs a simple query on an idle connection and reads its answer up to ReadyForQuery.
pub async fn simple_query(
    compute: &mut ComputeSocket,
    sql: &str,
) -> Result<QueryOutcome, ComputeStartupError> {
    let mut out = BytesMut::new();
    wire::query(&mut out, sql);
    compute.write_all(&out).await?;
    let mut reader = Reader {
        stream: compute,
        buf: BytesMut::with_capacity(1024),
    };
    let mut outcome = QueryOutcome::default();
    loop {
        let message = reader.next().await?;
        match message.kind {
            b'D' => outcome.rows.push(
                wire::parse_data_row(message.body())
                    .map_err(|e| ComputeStartupError::Protocol(e.to_string()))?,
            ),
            b'S' => outcome.parameter_status.extend_from_slice(&message.frame),
            b'E' => outcome.error = Some(message.frame),
            b'Z' => return Ok(outcome),
            _ => {}
        }
    }
}
