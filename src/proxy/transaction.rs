//! Transaction mode: a client holds a compute connection only while it has a transaction open
//! or an unfinished exchange, so many clients share a few compute connections, and idle clients
//! keep nothing busy (nor the cluster awake).
//!
//! The life of a transaction-mode client, in prose:
//! 1. After authentication it gets its startup answer from a pooled connection, which first
//!    takes the client's startup settings (a bad one fails the login as Postgres would): the
//!    ParameterStatus it sends, a BackendKeyData of pgtide's own and ReadyForQuery. The
//!    connection goes straight back to the pool.
//! 2. Its messages are framed. The first one that needs the compute takes a connection from the
//!    pool (resuming a paused cluster first), waiting in line if all are busy; the connection
//!    first gets the client's settings if it has others.
//! 3. Both directions are relayed at once by one future in the client's task, as in session
//!    mode: what each side sends is forwarded while the other side is read, through bounded
//!    outboxes (a full one stops reading the side that fills it), so a slow reader of a large
//!    result holds a few hundred KiB, and a large pipelined batch flows as it would to Postgres.
//!    Messages are zero-copy views of the read buffers, written with vectored writes; only the
//!    few that name prepared statements are rewritten. [`exchange`](super::exchange) decides
//!    what each message means and when the connection owes nothing more.
//! 4. Then the connection goes back to the pool. A client that leaves (Terminate, or closing
//!    its socket) has everything it sent before delivered and answered first (a COMMIT sent
//!    together with Terminate commits); a connection left mid-transaction is closed, not
//!    reused: Postgres rolls the transaction back.

use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::attach;
use super::auth::flush;
use super::cancel::PooledCancelKey;
use super::compute::simple_query;
use super::errors::Fatal;
use super::exchange::{ClientState, Exchange, IdleAnswer, Outbox, Settings, Step};
use super::handshake::Startup;
use super::pool::{AcquireError, Pool, ServerConn};
use super::{sql, ClientStream, ProxyShared};
use crate::cluster::load::ActiveGuard;
use crate::cluster::ClusterHandle;
use crate::wire::{self, Message};

/// The largest message a client may send (Postgres allows 1 GB; a pooler has to buffer it).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024 * 1024;
/// An outbox this full stops reading the side that fills it.
const OUTBOX_HIGH: usize = 256 * 1024;
/// Bytes asked for per read.
const READ_CHUNK: usize = 32 * 1024;
/// Chunks per vectored write.
const IOVECS: usize = 64;
/// How long a connection stays with a client whose extended-protocol exchange is answered but
/// has no Sync yet (asyncpg prepares with Flush); then pgtide ends it with a Sync of its own.
const UNSYNCED_HOLD: std::time::Duration = std::time::Duration::from_millis(20);

pub async fn serve(
    client: &mut ClientStream,
    cluster: &ClusterHandle,
    shared: &ProxyShared,
    startup: &Startup,
    who: &str,
    mut out: BytesMut,
) -> Result<(), Fatal> {
    let pool = shared
        .pools_of(cluster.name())
        .pool(&startup.user, &startup.database);
    let startup_settings = startup.settings();
    if let Some(refusal) = sql::refused_startup_setting(&startup_settings) {
        return Err(Fatal::new("0A000", refusal));
    }
    let endpoint = attach::attach(cluster, who).await?;
    let (state, parameter_status) = match pool.welcome(&startup_settings, &endpoint) {
        Some(kept) => (
            ClientState::starting_with(kept.settings),
            kept.parameter_status,
        ),
        None => {
            let mut hello = acquire_at(cluster, &pool, &endpoint).await?;
            let welcome = welcome(&mut hello, &startup_settings, cluster.name()).await;
            let reusable = matches!(welcome, Ok(Ok(_)));
            let endpoint = hello.endpoint.clone();
            pool.release(hello, reusable);
            match welcome {
                Ok(Ok((state, parameter_status))) => {
                    let parameter_status = parameter_status.freeze();
                    pool.keep_welcome(
                        &startup_settings,
                        &endpoint,
                        state.settings.clone(),
                        parameter_status.clone(),
                    );
                    (state, parameter_status)
                }
                Ok(Err(error)) => {
                    // A startup setting the compute refused: the login fails, with Postgres's
                    // error.
                    out.extend_from_slice(&fatal_from_error(&error));
                    let _ = flush(client, &mut out).await;
                    return Err(Fatal::already_sent());
                }
                Err(fatal) => return Err(fatal),
            }
        }
    };
    out.extend_from_slice(&parameter_status);
    let cancel = shared.cancels.register_pooled();
    wire::backend_key_data(&mut out, cancel.pid, cancel.secret);
    wire::ready_for_query(&mut out, b'I');
    flush(client, &mut out).await?;

    let mut relay = Relay {
        cluster,
        pool: &pool,
        who,
        cancel: &cancel,
        state,
        client_in: BytesMut::with_capacity(READ_CHUNK),
        to_client: Outbox::default(),
        held: None,
        waiting: None,
        waiting_judged: None,
        client_done: false,
        client_broken: false,
        unsynced_hold: None,
    };
    let result = relay.run(client).await;
    if let Some(held) = relay.held.take() {
        // Mid-transaction or mid-exchange: the connection is closed, never reused.
        let reusable = held.exchange.reusable() && held.to_server.is_empty();
        relay.release(held, reusable);
    }
    result
}

/// Gives the hello connection the client's startup settings and reads back how the compute
/// spells them. Returns the client's state and the ParameterStatus messages it should get, or
/// the compute's ErrorResponse for a setting it refused.
async fn welcome(
    conn: &mut ServerConn,
    settings: &[(String, String)],
    cluster: &str,
) -> Result<Result<(ClientState, BytesMut), bytes::Bytes>, Fatal> {
    let mut state = ClientState::default();
    let mut status = parameter_map(&conn.parameter_status);
    if !settings.is_empty() || !conn.state.settings.is_empty() {
        let mut sql = String::from("RESET ALL");
        if !settings.is_empty() {
            let calls: Vec<String> = settings
                .iter()
                .map(|(k, v)| {
                    format!(
                        "pg_catalog.set_config({}, {}, false)",
                        sql::literal(k),
                        sql::literal(v)
                    )
                })
                .collect();
            sql.push_str("; SELECT ");
            sql.push_str(&calls.join(", "));
        }
        sql.push_str("; SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session'");
        let outcome = simple_query(&mut conn.stream, &sql)
            .await
            .map_err(|e| Fatal::unreachable(cluster, e))?;
        if let Some(error) = outcome.error {
            return Ok(Err(error));
        }
        let settings: Settings = outcome
            .rows
            .into_iter()
            .filter_map(|row| match &row[..] {
                [Some(name), Some(value)] => Some((name.clone(), value.clone())),
                _ => None,
            })
            .collect();
        conn.state.settings = settings.clone();
        state = ClientState::starting_with(settings);
        status.extend(parameter_map(&outcome.parameter_status));
    }
    let mut out = BytesMut::new();
    for (name, value) in status {
        let start = wire::begin_message(&mut out, b'S');
        wire::put_cstr(&mut out, name.as_bytes());
        wire::put_cstr(&mut out, value.as_bytes());
        wire::end_message(&mut out, start);
    }
    Ok(Ok((state, out)))
}

/// ParameterStatus messages as (name, value), in order, later ones winning.
fn parameter_map(messages: &[u8]) -> Vec<(String, String)> {
    let mut buf = BytesMut::from(messages);
    let mut map: Vec<(String, String)> = Vec::new();
    while let Ok(Some(message)) = wire::next_message(&mut buf, usize::MAX) {
        if message.kind != b'S' {
            continue;
        }
        let Some((name, rest)) = wire::split_cstr(message.body()) else {
            continue;
        };
        let value = wire::split_cstr(rest).map(|(v, _)| v).unwrap_or(rest);
        let name = String::from_utf8_lossy(name).into_owned();
        let value = String::from_utf8_lossy(value).into_owned();
        match map.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => map.push((name, value)),
        }
    }
    map
}

/// An ERROR from the compute, as the FATAL that ends a login.
fn fatal_from_error(error: &[u8]) -> BytesMut {
    let body = &error[wire::HEADER_LEN.min(error.len())..];
    let code = wire::error_field(body, b'C')
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_else(|| "08P01".to_string());
    let mut out = BytesMut::new();
    wire::error_response(&mut out, b'E', "FATAL", &code, &wire::error_text(body));
    out
}

async fn acquire(cluster: &ClusterHandle, pool: &Pool, who: &str) -> Result<ServerConn, Fatal> {
    let endpoint = attach::attach(cluster, who).await?;
    acquire_at(cluster, pool, &endpoint).await
}

/// A pooled connection to the compute at `endpoint` (the cluster attached already).
async fn acquire_at(
    cluster: &ClusterHandle,
    pool: &Pool,
    endpoint: &crate::runtime::ComputeEndpoint,
) -> Result<ServerConn, Fatal> {
    let timeout = cluster.config().resume_timeout;
    pool.acquire(cluster, endpoint, timeout)
        .await
        .map_err(|e| match e {
            AcquireError::Busy { .. } => {
                Fatal::new("53300", format!("{e}; retry later or raise max_acu"))
            }
            AcquireError::Refused(_) => {
                Fatal::new("08006", "the compute refused a pooled connection")
            }
            AcquireError::Failed(message) => Fatal::new("08006", message),
        })
}

/// A compute connection held by the client now.
struct Held<'a> {
    conn: ServerConn,
    exchange: Exchange,
    server_in: BytesMut,
    to_server: Outbox,
    _active: ActiveGuard<'a>,
}

struct Relay<'a> {
    cluster: &'a ClusterHandle,
    pool: &'a Pool,
    who: &'a str,
    cancel: &'a PooledCancelKey,
    state: ClientState,
    client_in: BytesMut,
    to_client: Outbox,
    held: Option<Held<'a>>,
    /// A client message waiting for a connection, or for the held one to owe nothing.
    waiting: Option<Message>,
    /// The verdict on `waiting` when it is a simple query judged while no connection was held.
    waiting_judged: Option<bool>,
    /// The client sent Terminate or closed its side: nothing more is read from it.
    client_done: bool,
    /// Writing to the client failed: nothing more is written to it.
    client_broken: bool,
    /// Runs while the held connection is answered but unsynced.
    unsynced_hold: Option<Pin<Box<tokio::time::Sleep>>>,
}

enum Event {
    NeedConnection,
    Finished,
}

impl<'a> Relay<'a> {
    async fn run(&mut self, client: &mut ClientStream) -> Result<(), Fatal> {
        loop {
            match poll_fn(|cx| self.poll(cx, client)).await? {
                Event::Finished => return Ok(()),
                Event::NeedConnection => {
                    let conn = acquire(self.cluster, self.pool, self.who).await?;
                    self.cancel
                        .set_target(Some((conn.socket_path.clone(), conn.pid, conn.secret)));
                    let mut held = Held {
                        conn,
                        exchange: Exchange::default(),
                        server_in: BytesMut::with_capacity(READ_CHUNK),
                        to_server: Outbox::default(),
                        _active: self.cluster.counters().active_guard(),
                    };
                    held.exchange
                        .begin(&self.state, &mut held.conn.state, &mut held.to_server);
                    self.held = Some(held);
                }
            }
        }
    }

    fn release(&mut self, held: Held<'a>, reusable: bool) {
        self.cancel.set_target(None);
        self.pool.release(held.conn, reusable);
    }

    /// Moves bytes every way it can; returns when a connection is needed or all is done.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut ClientStream,
    ) -> Poll<Result<Event, Fatal>> {
        let counters = self.cluster.counters();
        loop {
            let mut progress = false;

            // Client messages already read.
            if let Some(event) = self.take_client_messages(&mut progress)? {
                return Poll::Ready(Ok(event));
            }
            // More from the client, unless a side it fills is full: the compute's, or its own
            // (pgtide answers some messages itself; a client that sends them and never reads
            // is held as Postgres would hold it, not buffered without end).
            let to_server_full = self
                .held
                .as_ref()
                .is_some_and(|h| h.to_server.len() >= OUTBOX_HIGH);
            let to_client_full = self.to_client.len() >= OUTBOX_HIGH;
            if !self.client_done && self.waiting.is_none() && !to_server_full && !to_client_full {
                match poll_read(client, cx, &mut self.client_in) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        self.client_done = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(n)) => {
                        counters.add_bytes_from_clients(n);
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }

            if let Some(held) = self.held.as_mut() {
                let server = &mut held.conn.stream;
                match poll_write_outbox(server, cx, &mut held.to_server) {
                    Poll::Ready(Ok(true)) => progress = true,
                    Poll::Ready(Ok(false)) | Poll::Pending => {}
                    Poll::Ready(Err(_)) => {
                        return Poll::Ready(Err(Fatal::compute_lost(self.cluster.name())))
                    }
                }
                if self.to_client.len() < OUTBOX_HIGH || self.client_broken {
                    match poll_read(server, cx, &mut held.server_in) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            return Poll::Ready(Err(Fatal::compute_lost(self.cluster.name())))
                        }
                        Poll::Ready(Ok(_)) => {
                            held.exchange.server_bytes(
                                &mut held.server_in,
                                &mut self.state,
                                &mut held.conn.state,
                                &mut held.to_server,
                                &mut self.to_client,
                                counters,
                            )?;
                            if self.client_broken {
                                self.to_client.clear();
                            }
                            progress = true;
                        }
                        Poll::Pending => {}
                    }
                }
            }

            if !self.client_broken {
                let before = self.to_client.len();
                match poll_write_outbox(client, cx, &mut self.to_client) {
                    Poll::Ready(Ok(wrote)) => {
                        if wrote {
                            counters.add_bytes_to_clients(before - self.to_client.len());
                            progress = true;
                        }
                    }
                    Poll::Pending => {}
                    Poll::Ready(Err(_)) => {
                        self.client_broken = true;
                        self.client_done = true;
                        self.to_client.clear();
                        progress = true;
                    }
                }
            }

            // Answered but unsynced for a while: pgtide's own Sync ends it.
            match self.held.as_mut() {
                Some(held) if held.exchange.idle_unsynced() && held.to_server.is_empty() => {
                    let hold = self
                        .unsynced_hold
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(UNSYNCED_HOLD)));
                    if hold.as_mut().poll(cx).is_ready() {
                        self.unsynced_hold = None;
                        held.exchange.sync_now(&mut held.to_server);
                        progress = true;
                    }
                }
                _ => self.unsynced_hold = None,
            }

            // The connection goes back once it owes nothing; a client that left in the middle
            // of a transaction leaves it to be closed.
            if let Some(held) = &self.held {
                let sent = held.to_server.is_empty();
                let idle = sent && held.exchange.is_done();
                // A client gone leaves what it sent to be answered (a COMMIT sent with
                // Terminate commits), but nothing that would wait for it, and nothing at all
                // once its socket broke.
                let abandoned = self.client_broken
                    || self.client_done
                        && sent
                        && (held.exchange.owes_nothing() || held.exchange.in_copy_in());
                if idle || abandoned {
                    let reusable = held.exchange.reusable();
                    let held = self.held.take().expect("held");
                    self.release(held, reusable);
                    progress = true;
                }
            }
            if self.client_done
                && self.held.is_none()
                && self.waiting.is_none()
                && (self.to_client.is_empty() || self.client_broken)
            {
                return Poll::Ready(Ok(Event::Finished));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Hands complete client messages to the exchange, as far as they can go now.
    fn take_client_messages(&mut self, progress: &mut bool) -> Result<Option<Event>, Fatal> {
        let counters = self.cluster.counters();
        loop {
            if self.to_client.len() >= OUTBOX_HIGH && !self.client_broken {
                return Ok(None);
            }
            let (message, judged) = match self.waiting.take() {
                Some(message) => (message, self.waiting_judged.take()),
                None if self.client_done => return Ok(None),
                None => match wire::next_message(&mut self.client_in, MAX_CLIENT_MESSAGE)? {
                    Some(message) => (message, None),
                    None => return Ok(None),
                },
            };
            let Some(held) = self.held.as_mut() else {
                if message.kind == b'X' {
                    self.client_done = true;
                    return Ok(None);
                }
                let judged = match self.state.answer_without_server(&message) {
                    IdleAnswer::Answered(answer) => {
                        self.to_client.push(answer);
                        *progress = true;
                        continue;
                    }
                    IdleAnswer::Passes { settings } => Some(settings),
                    IdleAnswer::NotJudged => None,
                };
                self.waiting = Some(message);
                self.waiting_judged = judged;
                return Ok(Some(Event::NeedConnection));
            };
            if held.to_server.len() >= OUTBOX_HIGH {
                self.waiting = Some(message);
                self.waiting_judged = judged;
                return Ok(None);
            }
            if let Some(settings) = judged {
                held.exchange.judged(settings);
            }
            let step = held.exchange.client_message(
                &mut self.state,
                &mut held.conn.state,
                message,
                &mut held.to_server,
                &mut self.to_client,
                counters,
            );
            match step {
                Step::Taken => *progress = true,
                Step::Wait(message) => {
                    self.waiting = Some(message);
                    return Ok(None);
                }
                Step::Terminate => {
                    self.client_done = true;
                    *progress = true;
                    return Ok(None);
                }
            }
        }
    }
}

/// Reads what the stream has into `buf`; 0 at EOF.
fn poll_read<R: AsyncRead + Unpin>(
    reader: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    buf.reserve(READ_CHUNK);
    tokio_util::io::poll_read_buf(Pin::new(reader), cx, buf)
}

/// Writes as much of the outbox as the stream takes; `true` if anything was written.
fn poll_write_outbox<W: AsyncWrite + Unpin>(
    writer: &mut W,
    cx: &mut Context<'_>,
    outbox: &mut Outbox,
) -> Poll<std::io::Result<bool>> {
    let mut wrote = false;
    while !outbox.is_empty() {
        let mut slices = [IoSlice::new(&[]); IOVECS];
        let n = outbox.slices(&mut slices);
        let written = match Pin::new(&mut *writer).poll_write_vectored(cx, &slices[..n]) {
            Poll::Ready(result) => result?,
            Poll::Pending => return Poll::Ready(Ok(wrote)),
        };
        if written == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        outbox.advance(written);
        wrote = true;
    }
    // Plain sockets flush as a no-op; TLS needs it to push its records out (a pending flush
    // wakes this task when it can go on).
    if let Poll::Ready(Err(e)) = Pin::new(&mut *writer).poll_flush(cx) {
        return Poll::Ready(Err(e));
    }
    Poll::Ready(Ok(wrote))
}
