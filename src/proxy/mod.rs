//! The Postgres-wire proxy: one listener per cluster.
//!
//! A client connection goes through phases, one module each:
//! accept (here) → handshake and authentication ([`client`]: SSLRequest/TLS, StartupMessage,
//! SCRAM against pgtide's own verifiers) → attach to the cluster (resuming it if paused) →
//! compute startup → relay ([`relay`]: plain byte copying with a framing tap). Cancel requests
//! are matched to the right compute connection by [`cancel`].

pub mod cancel;
pub mod client;
pub mod compute;
pub mod pool;
pub mod protocol;
pub mod relay;
pub mod scram;
pub mod tls;
pub mod transaction;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::cluster::ClusterHandle;

/// What every connection of every cluster shares.
#[derive(Default)]
pub struct ProxyShared {
    pub cancels: cancel::CancelRegistry,
    /// Transaction-mode pools, by cluster name.
    pools: std::sync::Mutex<std::collections::HashMap<String, Arc<pool::ClusterPools>>>,
}

impl ProxyShared {
    pub fn pools_of(&self, cluster: &str) -> Arc<pool::ClusterPools> {
        self.pools
            .lock()
            .expect("pools lock")
            .entry(cluster.to_string())
            .or_default()
            .clone()
    }
}

/// Accepts clients of one cluster until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    cluster: ClusterHandle,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<ProxyShared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let connection = client::ClientConnection {
                        cluster: cluster.clone(),
                        tls: tls.clone(),
                        shared: shared.clone(),
                        peer,
                    };
                    tokio::spawn(connection.serve(stream));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off a little instead of spinning.
                    tracing::warn!(cluster = %cluster.name(), error = %e, "accept failed");
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
