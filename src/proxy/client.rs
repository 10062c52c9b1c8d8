//! One client connection from accept to close: the phases in order (see the story in
//! [`super`]). Each phase is its own module; this one only strings them together, and is the
//! one place where a connection becomes a client of the cluster. On the shared endpoint the
//! cluster is known only after the handshake ([`route`](super::route)); a name that is no
//! cluster gets the same password exchange as a known cluster's unknown user, then 3D000.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::errors::Fatal;
use super::handshake::{self, STARTUP_TIMEOUT};
use super::route::{self, Directory};
use super::tls::TlsServer;
use super::{auth, session, transaction, ProxyShared};
use crate::cluster::ClusterHandle;
use crate::config::PoolMode;
use crate::wire;

/// Which clusters a listener serves.
#[derive(Clone)]
pub enum Serves {
    /// A cluster's own port.
    One(ClusterHandle),
    /// A cluster's reader endpoint (`reader_listen`): sessions on its standbys.
    Readers(ClusterHandle),
    /// The shared endpoint: the cluster is looked up by route after the handshake.
    Routed(std::sync::Arc<dyn Directory>),
}

pub struct ClientConnection {
    pub serves: Serves,
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
        let (mut stream, startup, cluster) = match started {
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
        let Some(_lease) = cluster.try_lease() else {
            Fatal::new("53300", "sorry, too many clients already")
                .send(&mut stream)
                .await;
            return;
        };
        let who = format!("{}@{}", startup.user, self.peer.ip());
        let readers = matches!(self.serves, Serves::Readers(_));
        let served = match cluster.config().pool_mode {
            _ if readers => {
                session::serve_reader(&mut stream, &cluster, &self.shared, &startup, &who, out)
                    .await
            }
            PoolMode::Session => {
                session::serve(&mut stream, &cluster, &self.shared, &startup, &who, out).await
            }
            PoolMode::Transaction => {
                transaction::serve(&mut stream, &cluster, &self.shared, &startup, &who, out).await
            }
        };
        if let Err(fatal) = served {
            fatal.send(&mut stream).await;
        }
    }

    /// Handshake, routing and authentication. `None`: the connection is done (a cancel
    /// request, or garbage already answered).
    #[allow(clippy::type_complexity)]
    async fn start(
        &self,
        tcp: TcpStream,
        out: &mut BytesMut,
    ) -> Result<
        Option<(super::ClientStream, handshake::Startup, ClusterHandle)>,
        (super::ClientStream, Fatal),
    > {
        let Some((mut stream, mut startup)) =
            handshake::handshake(tcp, self.tls.as_ref(), &self.shared).await
        else {
            return Ok(None);
        };
        let (cluster, asked_for) = match &self.serves {
            Serves::One(cluster) | Serves::Readers(cluster) => (Some(cluster.clone()), None),
            Serves::Routed(directory) => {
                let sni = match &stream {
                    super::ClientStream::Tls(tls) => tls.get_ref().1.server_name(),
                    super::ClientStream::Plain(_) => None,
                };
                match route::resolve(sni, &mut startup) {
                    Ok(found) => (directory.find(&found.cluster), Some(found.cluster)),
                    Err(e) => return Err((stream, Fatal::new("08P01", e.to_string()))),
                }
            }
        };
        if startup.minor > 0 || !startup.unsupported_options.is_empty() {
            wire::negotiate_protocol_version(out, 0, &startup.unsupported_options);
        }
        let binding = self
            .tls
            .as_ref()
            .and_then(|tls| tls.server_end_point.as_deref());
        let authenticated =
            auth::authenticate(&mut stream, cluster.as_ref(), binding, &startup.user, out).await;
        match (authenticated, cluster) {
            (Ok(()), Some(cluster)) => Ok(Some((stream, startup, cluster))),
            // Only a made-up verifier was there to fail against: now the client may learn that
            // the cluster does not exist, as Postgres says of a database.
            (Err(fatal), None) if fatal.code == "28P01" => {
                let name = asked_for.unwrap_or_default();
                Err((stream, Fatal::unknown_cluster(&name)))
            }
            (Err(fatal), _) => Err((stream, fatal)),
            (Ok(()), None) => unreachable!("an unknown cluster has no verifier to pass"),
        }
    }
}
