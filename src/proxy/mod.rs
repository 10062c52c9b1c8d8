//! The Postgres-wire proxy: one listener per cluster, and the shared endpoint of every cluster.
//!
//! The life of one client connection, phase by phase, one module each; each phase depends only
//! on the ones after it, never back:
//!
//! 1. **Accept** (here). A socket is not a client yet: it costs a handshake slot (at most
//!    [`MAX_HANDSHAKES`] per listener) and nothing else. It is not counted in `clients`, does not
//!    reset the idle timer and cannot keep a cluster awake or fill `max_client_connections`; a
//!    load balancer's TCP probe or `pg_isready` leave no trace.
//! 2. **Handshake** ([`handshake`]): SSLRequest (TLS if the cluster has a certificate),
//!    GSSENCRequest (refused), CancelRequest (forwarded, in clear or inside TLS), the
//!    StartupMessage. Together with authentication, within [`handshake::STARTUP_TIMEOUT`].
//! 3. **Authentication** ([`auth`]): SCRAM-SHA-256, or SCRAM-SHA-256-PLUS over TLS, against the
//!    verifiers pgtide keeps. Known and unknown users take the same steps, and nothing reaches
//!    the compute before a client proved its password: a paused cluster stays paused, no backend
//!    starts. [`verifiers`] keeps the verifiers current while the compute runs.
//! 4. **Lease** ([`client`]): only now the connection counts as a client (`max_client_connections`
//!    is checked here, 53300 past it).
//! 5. **Attach** ([`attach`]): wait for the compute to run, resuming the cluster if needed.
//! 6. **Relay**, by the cluster's pool mode: [`session`] (one compute connection for the client's
//!    life, bytes copied by [`relay`]) or [`transaction`] (compute connections from [`pool`],
//!    held while a transaction is open, with [`exchange`] following what each one still owes).
//!
//! Errors that end a connection are written once, in [`errors`]. Framing is [`crate::wire`].
//!
//! A listener serves one cluster (its own `listen`) or, on the shared endpoint
//! (`[tenants] listen`), every cluster: there [`route`] picks the cluster from the TLS server
//! name, the `endpoint` option or the database name between phases 2 and 3.

pub mod attach;
pub mod auth;
pub mod cancel;
pub mod client;
pub mod compute;
pub mod compute_socket;
pub mod errors;
pub mod exchange;
pub mod handshake;
pub mod pool;
pub mod relay;
pub mod route;
pub mod scram;
pub mod session;
pub mod sql;
pub mod tls;
pub mod transaction;
pub mod verifiers;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Connections of one listener that may be in their handshake or authentication at once.
/// More are answered 53300 at once and closed.
pub const MAX_HANDSHAKES: usize = 512;

/// What every connection of every cluster shares.
#[derive(Default)]
pub struct ProxyShared {
    pub cancels: cancel::CancelRegistry,
    /// Transaction-mode pools, by cluster name.
    pools: std::sync::Mutex<std::collections::HashMap<String, Arc<pool::ClusterPools>>>,
}

impl ProxyShared {
    /// Forgets a dropped cluster's transaction-mode pools.
    pub fn forget(&self, cluster: &str) {
        self.pools.lock().expect("pools lock").remove(cluster);
    }

    pub fn pools_of(&self, cluster: &str) -> Arc<pool::ClusterPools> {
        self.pools
            .lock()
            .expect("pools lock")
            .entry(cluster.to_string())
            .or_default()
            .clone()
    }
}

/// Accepts clients of one cluster, or of every cluster on the shared endpoint, until
/// `shutdown` turns true. (Each cluster's verifiers are kept fresh by
/// [`verifiers::keep_fresh`], which whoever spawns the cluster starts.)
pub async fn serve(
    listener: TcpListener,
    serves: client::Serves,
    tls: Option<tls::TlsServer>,
    shared: Arc<ProxyShared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let Ok(slot) = handshakes.clone().try_acquire_owned() else {
                        tokio::spawn(handshake::refuse_busy(stream));
                        continue;
                    };
                    let connection = client::ClientConnection {
                        serves: serves.clone(),
                        tls: tls.clone(),
                        shared: shared.clone(),
                        peer,
                    };
                    tokio::spawn(connection.serve(stream, slot));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Resolves once `shutdown` says stop (the watch guard does not outlive this function).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A client's socket, in clear or under TLS.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
