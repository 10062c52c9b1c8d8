//! The WAL receiver: pgtide as the compute's synchronous standby.
//!
//! The WAL path, in prose: the compute runs with `synchronous_standby_names = 'pgtide'` and
//! `synchronous_commit = on`, so a COMMIT returns only when the standby named `pgtide` reports
//! the commit's WAL as flushed. This receiver is that standby. It logs in over the compute's
//! private socket in physical replication mode, makes sure a physical slot exists (so the compute
//! keeps the WAL the copies have not got), and streams from the copies' durable position. Every
//! read drains all the WAL that has arrived and hands it to the [`CopySet`] at once, without
//! waiting for earlier batches: the receiver keeps reading while the copies sync, and each copy's
//! writer joins whatever queued up meanwhile into its next write and fdatasync (group commit).
//! The writer that completes the quorum wakes the receiver, which then reports the new durable
//! position as flushed straight away (the walsender releases the waiting commits on it), and
//! never anything beyond it. Keepalives that ask for a reply are answered at once.
//!
//! tokio-postgres has no CopyBoth and no replication mode, so the protocol is framed here: it is
//! a handful of messages.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use super::copies::CopySet;
use super::wal::{Lsn, SEGMENT_SIZE};
use crate::proxy::protocol;
use crate::runtime::{ComputeEndpoint, BOOTSTRAP_SUPERUSER};

/// The name the compute knows its synchronous standby by, and the slot's name.
pub const STANDBY_NAME: &str = "pgtide";
/// Send a status update at least this often, even when idle.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// How often to look for a stalled quorum (copies to repair) while WAL waits to be durable.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Microseconds between the Unix epoch and Postgres's epoch (2000-01-01).
const POSTGRES_EPOCH_OFFSET_US: u64 = 946_684_800_000_000;

/// Streams until the compute closes the connection (a clean stop ends with all WAL up to the
/// shutdown checkpoint received and durable). `started` is told once streaming began.
pub async fn run(
    endpoint: ComputeEndpoint,
    copies: std::sync::Arc<tokio::sync::Mutex<CopySet>>,
    started: oneshot::Sender<Result<Lsn, String>>,
) -> anyhow::Result<Lsn> {
    let mut started = Some(started);
    let result = stream(&endpoint, &copies, &mut started).await;
    if let (Some(started), Err(e)) = (started.take(), &result) {
        let _ = started.send(Err(format!("{e:#}")));
    }
    result
}

async fn stream(
    endpoint: &ComputeEndpoint,
    copies: &tokio::sync::Mutex<CopySet>,
    started: &mut Option<oneshot::Sender<Result<Lsn, String>>>,
) -> anyhow::Result<Lsn> {
    let mut conn = Connection::open(endpoint).await?;
    let system = conn.query("IDENTIFY_SYSTEM").await?;
    let row = system
        .first()
        .ok_or_else(|| anyhow!("IDENTIFY_SYSTEM returned no row"))?;
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
    let durable = copies.lock().await.durable();
    // The copies' end, or, for copies that hold nothing yet, the start of the compute's current
    // segment (a base backup taken now needs nothing older).
    let position = if durable.0 > 0 && durable <= server_end {
        durable
    } else {
        if durable > server_end {
            tracing::warn!(%durable, %server_end, "the copies are ahead of this compute; streaming from its end");
        }
        Lsn(server_end.0 - server_end.offset_in_segment())
    };
    conn.start_replication(position, timeline).await?;
    tracing::info!(from = %position, timeline, "WAL receiver streaming");
    if let Some(started) = started.take() {
        let _ = started.send(Ok(position));
    }

    let quorum = copies.lock().await.quorum();
    let mut received = position; // the end of the WAL handed to the copies
    let mut reported = Lsn(0);
    let mut batch: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = tokio::time::Instant::now();
    let mut last_advance = tokio::time::Instant::now();
    loop {
        let mut reply_now = false;
        tokio::select! {
            biased;
            // A writer completed the quorum: report it at once (the walsender wakes the
            // committing backends on it).
            () = quorum.advanced() => last_advance = tokio::time::Instant::now(),
            read = conn.fill() => {
                if read? == 0 {
                    // The compute closed the stream: a stop (or a crash). Everything received
                    // becomes durable before the receiver ends.
                    return Ok(copies.lock().await.wait_durable(received).await);
                }
                let mut batch_start = None;
                while let Some((kind, body)) = conn.next_message()? {
                    match kind {
                        b'd' => match body.first() {
                            Some(b'w') if body.len() >= 25 => {
                                let start = Lsn(u64::from_be_bytes(
                                    body[1..9].try_into().expect("8 bytes"),
                                ));
                                let expected =
                                    batch_start.map(|s: Lsn| Lsn(s.0 + batch.len() as u64));
                                if let Some(s) = batch_start.filter(|_| expected != Some(start)) {
                                    // Not contiguous (a new timeline's start): its own job.
                                    let data = std::mem::take(&mut batch);
                                    copies.lock().await.send(timeline, s, data);
                                    batch_start = None;
                                }
                                batch_start.get_or_insert(start);
                                batch.extend_from_slice(&body[25..]);
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
                                received = Lsn(s.0 + data.len() as u64);
                                copies.lock().await.send(timeline, s, data);
                            }
                            return Ok(copies.lock().await.wait_durable(received).await);
                        }
                        b'E' => bail!("replication error: {}", error_text(&body)),
                        _ => {}
                    }
                }
                if let Some(s) = batch_start {
                    // Handed over at once, while the copies may still sync the previous
                    // batches: a writer joins whatever queued up into its next fdatasync.
                    let data = std::mem::replace(&mut batch, Vec::with_capacity(64 * 1024));
                    received = Lsn(s.0 + data.len() as u64);
                    copies.lock().await.send(timeline, s, data);
                }
            }
            _ = tick.tick() => {
                if quorum.durable() < received && last_advance.elapsed() >= CHECK_INTERVAL {
                    // Nothing became durable for a while: below the quorum, repair copies
                    // that came back.
                    copies.lock().await.below_quorum_check().await;
                }
            }
        }
        let durable = quorum.durable().min(received);
        if durable > reported || reply_now || last_status.elapsed() >= STATUS_INTERVAL {
            conn.send_status(received, durable).await?;
            reported = durable;
            last_status = tokio::time::Instant::now();
        }
    }
}

fn error_text(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .filter(|f| f.first() == Some(&b'M'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .next()
        .unwrap_or_else(|| "unknown".to_string())
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
    fn next_message(&mut self) -> anyhow::Result<Option<(u8, BytesMut)>> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = i32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes"));
        if len < 4 || len as usize > MAX_MESSAGE {
            bail!("bad message length {len} from the compute");
        }
        let total = 1 + len as usize;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let mut message = self.buf.split_to(total);
        let kind = message[0];
        message.advance(5);
        Ok(Some((kind, message)))
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
    let mut buf = body;
    if buf.remaining() < 2 {
        bail!("short DataRow");
    }
    let columns = buf.get_i16();
    let mut row = Vec::with_capacity(columns.max(0) as usize);
    for _ in 0..columns {
        if buf.remaining() < 4 {
            bail!("short DataRow");
        }
        let len = buf.get_i32();
        if len < 0 {
            row.push(String::new());
            continue;
        }
        if buf.remaining() < len as usize {
            bail!("short DataRow");
        }
        row.push(String::from_utf8_lossy(&buf[..len as usize]).into_owned());
        buf.advance(len as usize);
    }
    Ok(row)
}

/// The segment a position falls in starts here.
pub fn segment_start(lsn: Lsn) -> Lsn {
    Lsn(lsn.0 - lsn.0 % SEGMENT_SIZE)
}
