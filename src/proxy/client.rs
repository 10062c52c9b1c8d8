//! One client connection from accept to close: the phases in order (see the story in
//! [`super`]). Each phase is its own module; this one only strings them together, and is the
//! one place where a connection becomes a client of the cluster.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::errors::Fatal;
use super::handshake::{self, STARTUP_TIMEOUT};
use super::tls::TlsServer;
use super::{auth, session, transaction, ProxyShared};
use crate::cluster::ClusterHandle;
use crate::config::PoolMode;
use crate::wire;

pub struct ClientConnection {
    pub cluster: ClusterHandle,
    pub tls: Option<TlsServer>,
    pub shared: std::sync::Arc<ProxyShared>,
    pub peer: SocketAddr,
}

impl ClientConnection {
    /// `handshake_slot` bounds the connections in their handshake; it is given back once the
    /// client authenticated (or left).
    pub async fn serve(self, tcp: TcpStream, handshake_slot: OwnedSemaphorePermit) {
        let mut out = BytesMut::with_capacity(512);
        let started = tokio::time::timeout(STARTUP_TIMEOUT, self.start(tcp, &mut out)).await;
        drop(handshake_slot);
        let (mut stream, startup) = match started {
            Ok(Ok(Some(started))) => started,
            Ok(Ok(None)) => return,
            Ok(Err((mut stream, fatal))) => {
                fatal.send(&mut stream).await;
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "startup timed out");
                return;
            }
        };
        // Only an authenticated connection is a client of the cluster.
        let Some(_lease) = self.cluster.try_lease() else {
            Fatal::new("53300", "sorry, too many clients already")
                .send(&mut stream)
                .await;
            return;
        };
        let who = format!("{}@{}", startup.user, self.peer.ip());
        let served = match self.cluster.config().pool_mode {
            PoolMode::Session => {
                session::serve(
                    &mut stream,
                    &self.cluster,
                    &self.shared,
                    &startup,
                    &who,
                    out,
                )
                .await
            }
            PoolMode::Transaction => {
                transaction::serve(
                    &mut stream,
                    &self.cluster,
                    &self.shared,
                    &startup,
                    &who,
                    out,
                )
                .await
            }
        };
        if let Err(fatal) = served {
            fatal.send(&mut stream).await;
        }
    }

    /// Handshake and authentication. `None`: the connection is done (a cancel request, or
    /// garbage already answered).
    #[allow(clippy::type_complexity)]
    async fn start(
        &self,
        tcp: TcpStream,
        out: &mut BytesMut,
    ) -> Result<Option<(super::ClientStream, handshake::Startup)>, (super::ClientStream, Fatal)>
    {
        let Some((mut stream, startup)) =
            handshake::handshake(tcp, self.tls.as_ref(), &self.shared).await
        else {
            return Ok(None);
        };
        if startup.minor > 0 || !startup.unsupported_options.is_empty() {
            wire::negotiate_protocol_version(out, 0, &startup.unsupported_options);
        }
        let binding = self
            .tls
            .as_ref()
            .and_then(|tls| tls.server_end_point.as_deref());
        match auth::authenticate(&mut stream, &self.cluster, binding, &startup.user, out).await {
            Ok(()) => Ok(Some((stream, startup))),
            Err(fatal) => Err((stream, fatal)),
        }
    }
}
