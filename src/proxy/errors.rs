//! The errors that end a client connection, with what the client is told: one place for each
//! message, whichever phase or pool mode meets it.

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::cluster::AttachError;
use crate::wire;

/// A failure that ends the connection: the SQLSTATE and message of the FATAL error sent.
#[derive(Debug)]
pub struct Fatal {
    pub code: &'static str,
    pub message: String,
}

impl Fatal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Fatal {
        Fatal {
            code,
            message: message.into(),
        }
    }

    /// The client already has its error (the compute's own); send nothing more.
    pub fn already_sent() -> Fatal {
        Fatal::new("", String::new())
    }

    /// Attaching to the cluster failed (it could not resume, or pgtide is stopping).
    pub fn attach(e: AttachError) -> Fatal {
        match e {
            AttachError::ShuttingDown => Fatal::new(
                "57P01",
                "terminating connection due to administrator command",
            ),
            AttachError::NoCapacity { .. } => Fatal::new("53000", e.to_string()),
            other => Fatal::new("57P03", other.to_string()),
        }
    }

    /// The shared endpoint was asked for a cluster that does not exist: Postgres's answer for
    /// a database that does not exist, with no hint of the names that do.
    pub fn unknown_cluster(name: &str) -> Fatal {
        Fatal::new("3D000", format!("database \"{name}\" does not exist"))
    }

    /// The compute closed or broke a connection the client was using.
    pub fn compute_lost(cluster: &str) -> Fatal {
        Fatal::new(
            "08006",
            format!(
                "the connection to the compute of cluster \"{cluster}\" was lost; reconnect to continue"
            ),
        )
    }

    /// The compute could not be reached at all.
    pub fn unreachable(cluster: &str, e: impl std::fmt::Display) -> Fatal {
        Fatal::new(
            "08006",
            format!("could not reach the compute of cluster \"{cluster}\": {e}"),
        )
    }

    /// The client's own socket failed.
    pub fn io(e: std::io::Error) -> Fatal {
        Fatal::new("08006", e.to_string())
    }

    /// The client broke the protocol.
    pub fn protocol(message: impl Into<String>) -> Fatal {
        Fatal::new("08P01", message)
    }

    /// Sends it to the client, best effort (the client may be gone already).
    pub async fn send<S: AsyncWrite + Unpin>(&self, stream: &mut S) {
        if !self.code.is_empty() {
            send_fatal(stream, self.code, &self.message).await;
        }
    }
}

impl From<wire::BadLength> for Fatal {
    fn from(e: wire::BadLength) -> Fatal {
        Fatal::protocol(e.to_string())
    }
}

/// Sends a FATAL error, best effort.
pub async fn send_fatal<S: AsyncWrite + Unpin>(stream: &mut S, code: &str, message: &str) {
    let mut out = bytes::BytesMut::new();
    wire::error_response(&mut out, b'E', "FATAL", code, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
}
