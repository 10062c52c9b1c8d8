//! The life of one client connection, phase by phase:
//!
//! 1. **Handshake**: SSLRequest (TLS if the cluster has a certificate, else 'N'), GSSENCRequest
//!    ('N'), CancelRequest (forwarded, then the connection closes), StartupMessage. All of it
//!    within [`STARTUP_TIMEOUT`], so a silent socket costs nothing for long.
//! 2. **Authentication** by pgtide itself: SCRAM-SHA-256 against the cluster's verifiers (or
//!    none for a configured user without a password). A paused cluster stays paused until the
//!    password is right.
//! 3. **Attach**: wait for the cluster's compute to run, resuming it if needed.
//! 4. **Compute startup**: the client's startup parameters go to the compute over its private
//!    socket, where pgtide is trusted; the compute's ParameterStatus, BackendKeyData (with
//!    pgtide's own secret) and ReadyForQuery go back to the client.
//! 5. **Relay** until either side leaves.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, SecretKey,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::compute::{self, ComputeStartupError};
use super::protocol::{self, ProtocolError, StartupPacket};
use super::relay::{self, RelayEnd};
use super::scram::{ScramError, ScramExchange};
use super::{ClientStream, ProxyShared};
use crate::cluster::roles::RoleSecret;
use crate::cluster::{AttachError, ClusterHandle};
use crate::config::PoolMode;
use crate::runtime::ComputeEndpoint;

/// Handshake and authentication must finish within this (Postgres's authentication_timeout is
/// 60 s; a proxy facing many clients should be quicker to drop silent sockets).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

pub struct ClientConnection {
    pub cluster: ClusterHandle,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub shared: Arc<ProxyShared>,
    pub peer: SocketAddr,
}

/// A failure that ends the connection, with what the client is told.
pub(super) struct Fatal {
    code: &'static str,
    message: String,
}

impl Fatal {
    pub(super) fn new(code: &'static str, message: impl Into<String>) -> Fatal {
        Fatal {
            code,
            message: message.into(),
        }
    }
}

impl From<ProtocolError> for Fatal {
    fn from(e: ProtocolError) -> Fatal {
        Fatal::new(e.sqlstate(), e.to_string())
    }
}

struct Startup {
    user: String,
    database: String,
    /// What goes to the compute: the client's parameters less the ones pgtide handles itself.
    params: Vec<(String, String)>,
    minor: u16,
    unsupported_options: Vec<String>,
}

impl ClientConnection {
    pub async fn serve(self, tcp: TcpStream) {
        let _lease = self.cluster.lease();
        let handshake = tokio::time::timeout(STARTUP_TIMEOUT, self.handshake(tcp)).await;
        let (mut stream, startup) = match handshake {
            Ok(Some(done)) => done,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!(peer = %self.peer, "startup timed out");
                return;
            }
        };
        if let Err(fatal) = self.serve_session(&mut stream, startup).await {
            if !fatal.code.is_empty() {
                protocol::send_fatal(&mut stream, fatal.code, &fatal.message).await;
            }
        }
    }

    /// Phase 1. Returns `None` when the connection is done (a cancel request, or garbage).
    async fn handshake(&self, mut tcp: TcpStream) -> Option<(ClientStream, Startup)> {
        let mut tls_offered = false;
        let mut stream = loop {
            match protocol::read_startup_packet(&mut tcp).await {
                Ok(StartupPacket::SslRequest) if !tls_offered => {
                    tls_offered = true;
                    match &self.tls {
                        Some(acceptor) => {
                            tcp.write_all(b"S").await.ok()?;
                            match acceptor.accept(tcp).await {
                                Ok(tls) => break ClientStream::Tls(Box::new(tls)),
                                Err(e) => {
                                    tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                                    return None;
                                }
                            }
                        }
                        None => tcp.write_all(b"N").await.ok()?,
                    }
                }
                Ok(StartupPacket::GssEncRequest) => tcp.write_all(b"N").await.ok()?,
                Ok(StartupPacket::Cancel { pid, secret }) => {
                    self.shared.cancels.cancel(pid, secret).await;
                    return None;
                }
                Ok(StartupPacket::Startup { minor, params }) => {
                    return self.startup(ClientStream::Plain(tcp), minor, params).await;
                }
                Ok(StartupPacket::SslRequest) => {
                    let mut plain = ClientStream::Plain(tcp);
                    protocol::send_fatal(&mut plain, "08P01", "SSLRequest sent twice").await;
                    return None;
                }
                Err(e) => return self.reject(ClientStream::Plain(tcp), e).await,
            }
        };
        // Under TLS, only a StartupMessage may follow.
        match protocol::read_startup_packet(&mut stream).await {
            Ok(StartupPacket::Startup { minor, params }) => {
                self.startup(stream, minor, params).await
            }
            Ok(_) => {
                protocol::send_fatal(
                    &mut stream,
                    "08P01",
                    "expected a startup message after the TLS handshake",
                )
                .await;
                None
            }
            Err(e) => self.reject(stream, e).await,
        }
    }

    async fn reject(
        &self,
        mut stream: ClientStream,
        e: ProtocolError,
    ) -> Option<(ClientStream, Startup)> {
        tracing::debug!(peer = %self.peer, error = %e, "bad startup packet");
        if !matches!(e, ProtocolError::Io(_)) {
            protocol::send_fatal(&mut stream, e.sqlstate(), &e.to_string()).await;
        }
        None
    }

    async fn startup(
        &self,
        mut stream: ClientStream,
        minor: u16,
        params: Vec<(String, String)>,
    ) -> Option<(ClientStream, Startup)> {
        let mut user = None;
        let mut database = None;
        let mut forwarded = Vec::with_capacity(params.len());
        let mut unsupported_options = Vec::new();
        for (key, value) in params {
            match key.as_str() {
                "user" => user = Some(value.clone()),
                "database" => database = Some(value.clone()),
                "replication" if !matches!(value.as_str(), "false" | "off" | "no" | "0") => {
                    protocol::send_fatal(
                        &mut stream,
                        "28000",
                        "replication connections are not served through pgtide's proxy",
                    )
                    .await;
                    return None;
                }
                _ if key.starts_with("_pq_.") => {
                    unsupported_options.push(key);
                    continue;
                }
                _ => {}
            }
            forwarded.push((key, value));
        }
        let Some(user) = user.filter(|u| !u.is_empty()) else {
            protocol::send_fatal(
                &mut stream,
                "28000",
                "no PostgreSQL user name specified in startup packet",
            )
            .await;
            return None;
        };
        let database = database
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| user.clone());
        if !forwarded.iter().any(|(k, _)| k == "database") {
            forwarded.push(("database".to_string(), database.clone()));
        }
        Some((
            stream,
            Startup {
                user,
                database,
                params: forwarded,
                minor,
                unsupported_options,
            },
        ))
    }

    /// Phases 2 to 5.
    async fn serve_session(
        &self,
        stream: &mut ClientStream,
        startup: Startup,
    ) -> Result<(), Fatal> {
        let config = self.cluster.config();
        let clients = self.cluster.counters().clients.load(Ordering::Relaxed);
        if clients > config.max_client_connections {
            return Err(Fatal::new("53300", "sorry, too many clients already"));
        }
        let mut out = BytesMut::with_capacity(512);
        if startup.minor > 0 || !startup.unsupported_options.is_empty() {
            protocol::encode(
                NegotiateProtocolVersion::new(0, startup.unsupported_options.clone()),
                &mut out,
            );
        }
        tokio::time::timeout(
            STARTUP_TIMEOUT,
            self.authenticate(stream, &startup.user, &mut out),
        )
        .await
        .map_err(|_| Fatal::new("08006", "authentication timed out"))??;

        let who = format!("{}@{}", startup.user, self.peer.ip());
        if self.cluster.config().pool_mode == PoolMode::Transaction {
            return super::transaction::serve(
                stream,
                &self.cluster,
                &self.shared,
                &startup.user,
                &startup.database,
                &who,
                out,
            )
            .await;
        }
        let (endpoint, mut compute) = self.attach_and_connect(&who).await?;
        let cancel_key = self
            .compute_startup(stream, &mut compute, &endpoint, &startup, &mut out)
            .await?;
        tracing::debug!(peer = %self.peer, user = %startup.user, database = %startup.database, "session started");

        let end = relay::relay(stream, &mut compute, self.cluster.counters()).await;
        drop(cancel_key);
        if let RelayEnd::ComputeGone { explained: false } = end {
            return Err(Fatal::new(
                "08006",
                format!(
                    "the connection to the compute of cluster \"{}\" was lost; reconnect to continue",
                    self.cluster.name()
                ),
            ));
        }
        Ok(())
    }

    /// Phase 3: waits for a running compute (resuming it if needed) and opens a connection to it.
    /// A compute that died a moment ago may still look running; its socket refuses, and the
    /// client waits for the restart instead of failing.
    async fn attach_and_connect(&self, who: &str) -> Result<(ComputeEndpoint, UnixStream), Fatal> {
        let mut last_error = None;
        for _ in 0..3 {
            let endpoint = self.cluster.attach(who).await.map_err(|e| match e {
                AttachError::ShuttingDown => Fatal::new(
                    "57P01",
                    "terminating connection due to administrator command",
                ),
                other => Fatal::new("57P03", other.to_string()),
            })?;
            match UnixStream::connect(endpoint.socket_path()).await {
                Ok(compute) => return Ok((endpoint, compute)),
                Err(e) => {
                    last_error = Some(e);
                    self.cluster
                        .wait_until_not_running_at(&endpoint, Duration::from_secs(2))
                        .await;
                }
            }
        }
        let e = last_error.expect("at least one attempt");
        Err(Fatal::new(
            "08006",
            format!(
                "could not reach the compute of cluster \"{}\": {e}",
                self.cluster.name()
            ),
        ))
    }

    /// Phase 2. On success `out` holds AuthenticationOk (after anything already in it), not yet
    /// sent: it goes out together with the compute's startup answer.
    async fn authenticate(
        &self,
        stream: &mut ClientStream,
        user: &str,
        out: &mut BytesMut,
    ) -> Result<(), Fatal> {
        let secret = self.cluster.role_secret(user).await;
        let verifier = match &secret {
            Some(RoleSecret::Trust) => {
                protocol::encode(Authentication::Ok, out);
                return Ok(());
            }
            Some(RoleSecret::Scram(verifier)) => Some(verifier),
            None => None,
        };
        protocol::encode(Authentication::SASL(vec!["SCRAM-SHA-256".to_string()]), out);
        flush(stream, out).await?;

        let mut buf = BytesMut::with_capacity(256);
        protocol::read_password_message(stream, &mut buf).await?;
        let (mechanism, client_first) = protocol::parse_sasl_initial_response(&buf)
            .ok_or_else(|| Fatal::new("08P01", "malformed SASL initial response"))?;
        if mechanism != "SCRAM-SHA-256" {
            return Err(Fatal::new(
                "08P01",
                "client selected an invalid SASL authentication mechanism",
            ));
        }
        let exchange = ScramExchange::start(verifier, user, client_first).map_err(scram_fatal)?;
        protocol::encode(
            Authentication::SASLContinue(exchange.server_first().to_string().into()),
            out,
        );
        flush(stream, out).await?;

        protocol::read_password_message(stream, &mut buf).await?;
        match exchange.finish(&buf) {
            Ok(server_final) => {
                protocol::encode(Authentication::SASLFinal(server_final.into()), out);
                protocol::encode(Authentication::Ok, out);
                Ok(())
            }
            Err(ScramError::WrongPassword) => {
                tracing::info!(peer = %self.peer, user, "password authentication failed");
                // The password may have been changed in a way the relay did not see; look again
                // so that the next attempt is checked against the current one.
                if verifier.is_some() {
                    self.cluster.refresh_roles().await;
                }
                Err(Fatal::new(
                    "28P01",
                    format!("password authentication failed for user \"{user}\""),
                ))
            }
            Err(e) => Err(scram_fatal(e)),
        }
    }

    /// Phase 4: log in to the compute as the client's user and hand its startup answer to the
    /// client, with a cancel key of pgtide's own. Returns the session's cancel key.
    async fn compute_startup(
        &self,
        stream: &mut ClientStream,
        compute: &mut UnixStream,
        endpoint: &ComputeEndpoint,
        startup: &Startup,
        out: &mut BytesMut,
    ) -> Result<super::cancel::CancelKey, Fatal> {
        let hello = match compute::start_session(compute, &startup.params).await {
            Ok(hello) => hello,
            Err(ComputeStartupError::Refused(error)) => {
                // The compute's own error, with its own SQLSTATE, is the answer.
                out.extend_from_slice(&error);
                let _ = stream.write_all(out).await;
                let _ = stream.flush().await;
                return Err(Fatal::already_sent());
            }
            Err(ComputeStartupError::Io(e)) => {
                return Err(Fatal::new(
                    "08006",
                    format!(
                        "could not reach the compute of cluster \"{}\": {e}",
                        self.cluster.name()
                    ),
                ))
            }
            Err(ComputeStartupError::Protocol(message)) => {
                return Err(Fatal::new("08P01", message))
            }
        };
        out.extend_from_slice(&hello.messages);
        let cancel_key =
            self.shared
                .cancels
                .register(endpoint.socket_path(), hello.pid, hello.secret);
        protocol::encode(
            BackendKeyData::new(cancel_key.pid, SecretKey::I32(cancel_key.secret)),
            out,
        );
        protocol::put_message(out, b'Z', &[hello.ready_status]);
        flush(stream, out).await?;
        Ok(cancel_key)
    }
}

impl Fatal {
    /// The client already has its error (the compute's own); send nothing more.
    pub(super) fn already_sent() -> Fatal {
        Fatal::new("", String::new())
    }
}

fn scram_fatal(e: ScramError) -> Fatal {
    match e {
        ScramError::ChannelBinding => Fatal::new(
            "08P01",
            "channel binding is not supported; use SCRAM-SHA-256",
        ),
        other => Fatal::new("08P01", other.to_string()),
    }
}

pub(super) async fn flush<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut BytesMut,
) -> Result<(), Fatal> {
    stream
        .write_all(out)
        .await
        .and(stream.flush().await)
        .map_err(|e| Fatal::new("08006", e.to_string()))?;
    out.clear();
    Ok(())
}
