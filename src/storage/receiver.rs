//! The WAL receiver: pgtide as the compute's synchronous standby.
//!
//! The WAL path, in prose: the compute runs with `synchronous_standby_names = 'pgtide'` and
//! `synchronous_commit = on`, so a COMMIT returns only when the standby named `pgtide` reports
//! the commit's WAL as flushed. This receiver is that standby. It logs in over the compute's
//! private socket in physical replication mode, makes sure a physical slot exists (so the compute
//! keeps the WAL the copies have not got), and streams from the copies' durable position. Every
//! read drains all the WAL that has arrived (group commit: one batch, one write and one fsync per
//! copy for many commits), hands it to the [`CopySet`], and only once `write_quorum` copies have
//! made it durable reports it as flushed. Keepalives that ask for a reply are answered at once.
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
    let mut position = if durable.0 > 0 && durable <= server_end {
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

    let mut batch: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut last_status = tokio::time::Instant::now();
    loop {
        let mut reply_now = false;
        let mut batch_start = None;
        batch.clear();
        let received = tokio::time::timeout(STATUS_INTERVAL, conn.fill()).await;
        match received {
            Ok(Ok(0)) => {
                // The compute closed the stream: a stop (or a crash). Everything received is durable.
                return Ok(position);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => reply_now = true, // idle: time for a status update anyway
        }
        while let Some((kind, body)) = conn.next_message()? {
            match kind {
                b'd' => match body.first() {
                    Some(b'w') if body.len() >= 25 => {
                        let start =
                            Lsn(u64::from_be_bytes(body[1..9].try_into().expect("8 bytes")));
                        let data = &body[25..];
                        let expected = batch_start.map(|s: Lsn| Lsn(s.0 + batch.len() as u64));
                        if expected.is_some_and(|e| e != start) {
                            // Not contiguous (a new timeline's start): make the batch durable first.
                            position =
                                write(copies, timeline, batch_start.expect("set"), &mut batch)
                                    .await;
                            batch_start = None;
                        }
                        batch_start.get_or_insert(start);
                        batch.extend_from_slice(data);
                    }
                    Some(b'k') if body.len() >= 18 => reply_now |= body[17] == 1,
                    _ => bail!(
                        "unexpected replication message {:?}",
                        body.first().map(|b| *b as char)
                    ),
                },
                b'c' => return Ok(position), // CopyDone: the server ends the stream
                b'E' => bail!("replication error: {}", error_text(&body)),
                _ => {}
            }
        }
        if let Some(start) = batch_start {
            position = write(copies, timeline, start, &mut batch).await;
            reply_now = true;
        }
        if reply_now || last_status.elapsed() >= STATUS_INTERVAL {
            conn.send_status(position).await?;
            last_status = tokio::time::Instant::now();
        }
    }
}

async fn write(
    copies: &tokio::sync::Mutex<CopySet>,
    timeline: u32,
    start: Lsn,
    batch: &mut Vec<u8>,
) -> Lsn {
    let data = std::mem::take(batch);
    copies.lock().await.write(timeline, start, data).await
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

    /// Standby status update: written, flushed and applied all at the durable position.
    async fn send_status(&mut self, durable: Lsn) -> anyhow::Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut payload = BytesMut::with_capacity(34);
        payload.put_u8(b'r');
        for _ in 0..3 {
            payload.put_u64(durable.0);
        }
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
