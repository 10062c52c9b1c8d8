//! The WAL receiver: pgtide as the compute's synchronous standby.
//!
//! The WAL path, in prose: the compute runs with `synchronous_standby_names = 'pgtide'` and
//! `synchronous_commit = on`, so a COMMIT returns only when the standby named `pgtide` reports
//! the commit's WAL as flushed. This receiver is that standby. It logs in over the compute's
//! private socket in physical replication mode, makes sure a physical slot exists (so the compute
//! keeps the WAL the copies have not got), has the copies check whose WAL it is and where it
//! stands ([`CopySet::begin_stream`]), and streams from the copies' durable position. Every
//! read drains all the WAL that has arrived and hands it to the [`CopySet`] at once, without
//! waiting for earlier batches: the receiver keeps reading while the copies sync, and each copy's
//! writer joins whatever queued up meanwhile into its next write and fdatasync (group commit).
//! The writer that completes the quorum wakes the receiver, which then reports the new durable
//! position as flushed straight away (the walsender releases the waiting commits on it), and
//! never anything beyond it. Keepalives that ask for a reply are answered at once. When a
//! member's queue is full and it cannot leave the quorum, the receiver stops reading until it
//! drains: the compute's walsender waits, and pgtide's memory stays bounded.
//!
//! The receiver is supervised ([`run`]): a connection that ends while the compute runs (a
//! terminated walsender, `wal_sender_timeout`, a restart of the compute's processes after a
//! crash) is made again within a second, from the durable position.
//!
//! tokio-postgres has no CopyBoth and no replication mode, so the protocol is framed here: it is
//! a handful of messages.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};

use super::copies::CopySet;
use super::notices::{Notices, StorageNotice};
use super::wal::{Lsn, SEGMENT_SIZE};
use crate::runtime::{ComputeEndpoint, BOOTSTRAP_SUPERUSER};
use crate::wire as protocol;

/// The name the compute knows its synchronous standby by, and the slot's name.
pub const STANDBY_NAME: &str = "pgtide";
/// Send a status update at least this often, even when idle.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// How often the stream wakes up when nothing arrives (status updates are due from it).
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// A compute that ends the stream cleanly is shutting down: its stop follows at once, so the
/// loss is told only if it lasts longer than this.
const CLEAN_END_GRACE: Duration = Duration::from_secs(2);
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Microseconds between the Unix epoch and Postgres's epoch (2000-01-01).
const POSTGRES_EPOCH_OFFSET_US: u64 = 946_684_800_000_000;

/// The receiver's state, as `/status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ReceiverStatus {
    /// `streaming`, `reconnecting` (its connection ended while the compute runs: commits wait),
    /// or `stopped` (no compute).
    pub state: std::borrow::Cow<'static, str>,
    /// Why it is reconnecting (or why it stopped).
    pub reason: Option<String>,
    /// Connections it made again after losing one, since pgtide started.
    pub reconnects: u64,
    /// Where the current stream began.
    pub streaming_from: Option<String>,
    /// A loss that was told and not followed by a return before its supervisor stopped (the
    /// compute exited): the next compute's stream is that return.
    #[serde(skip)]
    unanswered_loss: Option<Instant>,
}

impl Default for ReceiverStatus {
    fn default() -> Self {
        ReceiverStatus {
            state: "stopped".into(),
            reason: None,
            reconnects: 0,
            streaming_from: None,
            unanswered_loss: None,
        }
    }
}

/// What the cluster wants of the receiver's supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Supervision {
    /// Stream, and connect again whenever the stream ends.
    Stream,
    /// The compute is being stopped on purpose (a pause, a shutdown): keep streaming what it
    /// still sends, but an end of the stream from now on is that stop, however it looks (a
    /// walsender at shutdown may reset the connection rather than end it), never a loss.
    ComputeStopping,
    /// The compute stopped: end.
    Stop,
}

/// Whether the supervisor is told to end (or its cluster side is gone).
fn told_to_stop(
    changed: Result<(), watch::error::RecvError>,
    stop: &watch::Receiver<Supervision>,
) -> bool {
    changed.is_err() || *stop.borrow() == Supervision::Stop
}

/// How a stream ended without an error.
struct End {
    /// The compute ended it (a shutdown), rather than the connection dropping.
    clean: bool,
    reason: String,
}

/// A loss of the stream, while it lasts.
struct Lost {
    at: Instant,
    clean: bool,
    told: bool,
}

/// Supervises the receiver for one compute: streams, and whenever the connection ends while
/// the compute runs (until `stop` says [`Supervision::Stop`]), connects again with a small
/// backoff (at most a second between attempts) and streams from the copies' durable position; the status says
/// why meanwhile, and the loss and the return are told as notices. `started` is told once the
/// first stream began, or why it could not (the supervisor then ends).
pub async fn run(
    endpoint: ComputeEndpoint,
    copies: Arc<tokio::sync::Mutex<CopySet>>,
    status: Arc<Mutex<ReceiverStatus>>,
    notices: Arc<Notices>,
    mut stop: watch::Receiver<Supervision>,
    started: oneshot::Sender<Result<Lsn, String>>,
) {
    let set_status = |state: &'static str, reason: Option<String>, from: Option<Lsn>| {
        let mut status = status.lock().unwrap_or_else(|e| e.into_inner());
        status.state = state.into();
        status.reason = reason;
        if let Some(from) = from {
            status.streaming_from = Some(from.to_string());
        }
    };
    let mut started = Some(started);
    let mut lost: Option<Lost> = None;
    let mut attempt = 0u32;
    loop {
        let mut streamed = false;
        let outcome = {
            let mut on_streaming = |position: Lsn| {
                streamed = true;
                let mut returned = lost.take().map(|l| (l.at, l.told));
                if let Some(started) = started.take() {
                    let _ = started.send(Ok(position));
                    let mut status = status.lock().unwrap_or_else(|e| e.into_inner());
                    returned = status.unanswered_loss.take().map(|at| (at, true));
                }
                if let Some((at, told)) = returned {
                    let reconnects = {
                        let mut status = status.lock().unwrap_or_else(|e| e.into_inner());
                        status.reconnects += 1;
                        status.reconnects
                    };
                    let after_ms = at.elapsed().as_millis() as u64;
                    tracing::info!(from = %position, after_ms, "WAL receiver streams again");
                    if told {
                        notices.push(StorageNotice::ReceiverBack {
                            after_ms,
                            reconnects,
                        });
                    }
                }
                set_status("streaming", None, Some(position));
            };
            stream(&endpoint, &copies, &mut stop, &mut on_streaming).await
        };
        let (clean, reason) = match outcome {
            Ok(end) => (end.clean, end.reason),
            Err(e) => (false, format!("{e:#}")),
        };
        if let Some(started) = started.take() {
            // The first stream never began: the compute's start fails with the reason.
            let _ = started.send(Err(reason.clone()));
            set_status("stopped", Some(reason), None);
            return;
        }
        if *stop.borrow() == Supervision::Stop {
            break;
        }
        let stopping = *stop.borrow() == Supervision::ComputeStopping;
        if streamed && stopping {
            attempt = 0;
            tracing::info!(%reason, "WAL receiver's stream ended with the compute's stop");
        } else if streamed {
            attempt = 0;
            tracing::warn!(%reason, "WAL receiver lost its stream; reconnecting");
            lost = Some(Lost {
                at: Instant::now(),
                clean,
                told: false,
            });
        }
        set_status("reconnecting", Some(reason.clone()), None);
        if let Some(lost) = lost.as_mut().filter(|l| !l.told && !stopping) {
            if !lost.clean || lost.at.elapsed() >= CLEAN_END_GRACE {
                lost.told = true;
                notices.push(StorageNotice::ReceiverLost { reason });
            }
        }
        let backoff = Duration::from_millis(25 << attempt.min(6)).min(MAX_BACKOFF);
        attempt += 1;
        tokio::select! {
            changed = stop.changed() => if told_to_stop(changed, &stop) { break },
            () = tokio::time::sleep(backoff) => {}
        }
    }
    set_status("stopped", None, None);
    if let Some(lost) = lost.filter(|l| l.told) {
        status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unanswered_loss = Some(lost.at);
    }
}

async fn stream(
    endpoint: &ComputeEndpoint,
    copies: &tokio::sync::Mutex<CopySet>,
    stop: &mut watch::Receiver<Supervision>,
    on_streaming: &mut dyn FnMut(Lsn),
) -> anyhow::Result<End> {
    let mut conn = Connection::open(endpoint).await?;
    let system = conn.query("IDENTIFY_SYSTEM").await?;
    let row = system
        .first()
        .ok_or_else(|| anyhow!("IDENTIFY_SYSTEM returned no row"))?;
    let system_identifier: u64 = row
        .first()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no systemid"))?;
    let timeline: u32 = row
        .get(1)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| anyhow!("no timeline"))?;
    let server_end = row
        .get(2)
        .and_then(|l| Lsn::parse(l))
        .ok_or_else(|| anyhow!("no xlogpos"))?;
    match conn
        .query(&format!(
            "CREATE_REPLICATION_SLOT {STANDBY_NAME} PHYSICAL RESERVE_WAL"
        ))
        .await
    {
        Ok(_) => {}
        Err(e) if e.to_string().contains("already exists") => {}
        Err(e) => return Err(e.context("creating the replication slot")),
    }
    // Whose WAL and from where: refused (fails closed) for another system's compute, or one
    // whose WAL ends before what the copies hold.
    let position = copies
        .lock()
        .await
        .begin_stream(system_identifier, timeline, server_end)
        .await
        .map_err(|e| anyhow!(e))?;
    // A little of the WAL below the start is streamed too and compared with the copies': a
    // data directory of this system that ran on by itself differs there (see overlap.rs).
    let mut overlap = copies.lock().await.overlap_before(position, timeline);
    let asked = overlap.as_ref().map_or(position, |o| o.from);
    conn.start_replication(asked, timeline).await?;
    tracing::info!(from = %position, timeline, compared_from = %asked, "WAL receiver streaming");
    // The stream counts as begun (a compute's start succeeds on it) once the overlap matched.
    let mut announced = false;
    if overlap.is_none() {
        on_streaming(position);
        announced = true;
    }

    let (quorum, view, lag_limit) = {
        let set = copies.lock().await;
        (set.quorum(), set.view(), set.lag_limit())
    };
    let mut received = position; // the end of the WAL handed to the copies
    let mut reported = Lsn(0);
    let mut batch: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = tokio::time::Instant::now();
    // A member's queue is full (and it cannot leave the quorum): read no more until it drains.
    let mut waiting_for_copies = false;
    // The compute said the stream is done (CommandComplete): it is shutting down.
    let mut completed = false;
    // WAL may already wait in the buffer: sent with the CopyBothResponse, in the same read.
    let mut buffered = true;
    loop {
        let mut reply_now = false;
        if !buffered {
            tokio::select! {
                biased;
                changed = stop.changed() => if told_to_stop(changed, stop) {
                    return Ok(End { clean: true, reason: "stopped".into() });
                },
                // A writer completed the quorum: report it at once (the walsender wakes the
                // committing backends on it).
                () = quorum.advanced() => {}
                () = quorum.progressed(), if waiting_for_copies => {
                    waiting_for_copies = view.backlog() > lag_limit;
                }
                read = conn.fill(), if !waiting_for_copies => {
                    if read? == 0 {
                        // The compute closed the stream: a stop (after it said the stream is
                        // done, and once everything it sent was reported durable), or a loss.
                        return Ok(End {
                            clean: completed,
                            reason: if completed {
                                "the compute ended the stream (it is shutting down)".into()
                            } else {
                                "the compute closed the replication connection".into()
                            },
                        });
                    }
                    buffered = true;
                }
                _ = tick.tick() => {}
            }
        }
        if std::mem::take(&mut buffered) {
            let mut batch_start = None;
            while let Some((kind, body)) = conn.next_message()? {
                match kind {
                    b'd' => match body.first() {
                        Some(b'w') if body.len() >= 25 => {
                            let mut start =
                                Lsn(u64::from_be_bytes(body[1..9].try_into().expect("8 bytes")));
                            let mut wal = &body[25..];
                            if let Some(compared) = &overlap {
                                let below = compared
                                    .compare(start, wal)
                                    .map_err(|at| diverged(at, position))?;
                                wal = &wal[below..];
                                start = Lsn(start.0 + below as u64);
                                if start >= compared.end() {
                                    tracing::debug!(from = %compared.from, to = %position, "the compute's WAL below the start is the copies'");
                                    overlap = None;
                                }
                                if wal.is_empty() {
                                    continue;
                                }
                            }
                            let expected = batch_start.map(|s: Lsn| Lsn(s.0 + batch.len() as u64));
                            if let Some(s) = batch_start.filter(|_| expected != Some(start)) {
                                // Not contiguous (a new timeline's start): its own job.
                                let data = std::mem::take(&mut batch);
                                copies.lock().await.send(timeline, s, data);
                                batch_start = None;
                            }
                            batch_start.get_or_insert(start);
                            batch.extend_from_slice(wal);
                        }
                        Some(b'k') if body.len() >= 18 => reply_now |= body[17] == 1,
                        _ => bail!(
                            "unexpected replication message {:?}",
                            body.first().map(|b| *b as char)
                        ),
                    },
                    b'c' => {
                        // CopyDone: the server ends the stream.
                        if let Some(s) = batch_start {
                            let data = std::mem::take(&mut batch);
                            copies.lock().await.send(timeline, s, data);
                        }
                        return Ok(End {
                            clean: true,
                            reason: "the compute ended the stream".into(),
                        });
                    }
                    b'C' => completed = true,
                    b'E' => bail!("replication error: {}", error_text(&body)),
                    _ => {}
                }
            }
            if let Some(s) = batch_start {
                // Handed over at once, while the copies may still sync the previous batches:
                // a writer joins whatever queued up into its next fdatasync.
                let data = std::mem::replace(&mut batch, Vec::with_capacity(64 * 1024));
                received = Lsn(s.0 + data.len() as u64);
                copies.lock().await.send(timeline, s, data);
                waiting_for_copies = view.backlog() > lag_limit;
            }
        }
        if !announced && overlap.is_none() {
            on_streaming(position);
            announced = true;
        }
        // Never beyond what this stream handed over and a quorum made durable.
        let durable = quorum.durable().min(received);
        if durable > reported || reply_now || last_status.elapsed() >= STATUS_INTERVAL {
            conn.send_status(received, durable).await?;
            reported = durable;
            last_status = tokio::time::Instant::now();
        }
    }
}

/// The stream's refusal when the compute's WAL below the start is not the copies'.
fn diverged(at: Lsn, start: Lsn) -> anyhow::Error {
    anyhow!(
        "this compute's WAL differs from the copies' at {at}, below the durable position \
         {start}: its data directory ran on by itself (a copy of it started outside pgtide?) \
         and holds another history; refusing to stream it into the copies"
    )
}

fn error_text(body: &[u8]) -> String {
    protocol::error_text(body)
}

/// A replication connection: framing over a unix socket with one read buffer.
struct Connection {
    socket: UnixStream,
    buf: BytesMut,
}

impl Connection {
    async fn open(endpoint: &ComputeEndpoint) -> anyhow::Result<Connection> {
        let mut socket = UnixStream::connect(endpoint.socket_path())
            .await
            .context("connecting to the compute for replication")?;
        let params = [
            ("user", BOOTSTRAP_SUPERUSER),
            ("replication", "true"),
            ("application_name", STANDBY_NAME),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        socket
            .write_all(&protocol::startup_message(&params))
            .await?;
        let mut conn = Connection {
            socket,
            buf: BytesMut::with_capacity(1 << 20),
        };
        loop {
            conn.fill_one().await?;
            while let Some((kind, body)) = conn.next_message()? {
                match kind {
                    b'R' if body.get(..4) != Some(&[0, 0, 0, 0][..]) => {
                        bail!("the compute asked for a password")
                    }
                    b'E' => bail!("replication login refused: {}", error_text(&body)),
                    b'Z' => return Ok(conn),
                    _ => {}
                }
            }
        }
    }

    /// Reads what the socket has (at least one byte); 0 at EOF.
    async fn fill(&mut self) -> anyhow::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 64 * 1024 {
            self.buf.reserve(1 << 20);
        }
        Ok(self.socket.read_buf(&mut self.buf).await?)
    }

    async fn fill_one(&mut self) -> anyhow::Result<()> {
        if self.fill().await? == 0 {
            bail!("the compute closed the replication connection");
        }
        Ok(())
    }

    /// The next complete message in the buffer, if any.
    fn next_message(&mut self) -> anyhow::Result<Option<(u8, Bytes)>> {
        match protocol::next_message(&mut self.buf, MAX_MESSAGE) {
            Ok(message) => Ok(message.map(|m| (m.kind, m.body_bytes()))),
            Err(e) => bail!("{e} from the compute"),
        }
    }

    /// A simple query; returns the rows as text (replication commands answer that way).
    async fn query(&mut self, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
        let mut out = BytesMut::new();
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        protocol::put_message(&mut out, b'Q', &body);
        self.socket.write_all(&out).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            while let Some((kind, body)) = self.next_message()? {
                match kind {
                    b'D' => rows.push(parse_data_row(&body)?),
                    b'E' => error = Some(error_text(&body)),
                    b'Z' => {
                        return match error {
                            Some(e) => Err(anyhow!("{sql}: {e}")),
                            None => Ok(rows),
                        }
                    }
                    _ => {}
                }
            }
            self.fill_one().await?;
        }
    }

    async fn start_replication(&mut self, from: Lsn, timeline: u32) -> anyhow::Result<()> {
        let sql =
            format!("START_REPLICATION SLOT {STANDBY_NAME} PHYSICAL {from} TIMELINE {timeline}");
        let mut out = BytesMut::new();
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        protocol::put_message(&mut out, b'Q', &body);
        self.socket.write_all(&out).await?;
        loop {
            while let Some((kind, body)) = self.next_message()? {
                match kind {
                    b'W' => return Ok(()),
                    b'E' => bail!("{sql}: {}", error_text(&body)),
                    _ => {}
                }
            }
            self.fill_one().await?;
        }
    }

    /// Standby status update: written up to what the copies were handed, flushed and applied
    /// up to the durable position (what a synchronous commit waits for).
    async fn send_status(&mut self, written: Lsn, durable: Lsn) -> anyhow::Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut payload = BytesMut::with_capacity(34);
        payload.put_u8(b'r');
        payload.put_u64(written.0);
        payload.put_u64(durable.0);
        payload.put_u64(durable.0);
        payload.put_u64(now.saturating_sub(POSTGRES_EPOCH_OFFSET_US));
        payload.put_u8(0);
        let mut out = BytesMut::with_capacity(40);
        protocol::put_message(&mut out, b'd', &payload);
        self.socket.write_all(&out).await?;
        Ok(())
    }
}

fn parse_data_row(body: &[u8]) -> anyhow::Result<Vec<String>> {
    let row = protocol::parse_data_row(body).map_err(|_| anyhow!("short DataRow"))?;
    Ok(row.into_iter().map(Option::unwrap_or_default).collect())
}

/// The segment a position falls in starts here.
pub fn segment_start(lsn: Lsn) -> Lsn {
    Lsn(lsn.0 - lsn.0 % SEGMENT_SIZE)
}
