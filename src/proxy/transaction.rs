//! Transaction mode: a client holds a compute connection only while it has a transaction open or
//! an unfinished exchange, so many clients share a few compute connections, and idle clients
//! keep nothing busy (nor the cluster awake).
//!
//! The life of a transaction-mode client, in prose:
//! 1. After authentication it gets the compute's ParameterStatus (from a pooled connection), a
//!    BackendKeyData of pgtide's own and ReadyForQuery — no compute connection is kept.
//! 2. Its messages are framed. The first one that needs the compute takes a connection from the
//!    pool (resuming a paused cluster first), waiting in line if all are busy.
//! 3. Messages are forwarded, rewritten where a client's statement names must become pool-wide
//!    (see below); every Query and Sync forwarded adds one to `pending`; each ReadyForQuery from
//!    the compute takes one away. When nothing is pending and ReadyForQuery says idle, the
//!    connection goes back to the pool.
//! 4. A client that leaves mid-transaction has its connection closed, not reused: Postgres rolls
//!    the transaction back.
//!
//! Named prepared statements (Parse/Bind/Describe/Close, as pgbench `-M prepared`, JDBC,
//! psycopg, asyncpg use them) get a pool-wide name derived from their text and parameter types
//! and are prepared, on whichever connection the client gets, when that connection lacks them:
//! pgtide slips a Parse in front and swallows its ParseComplete. A client's own Parse of a
//! statement the connection already has becomes Close + Parse, whose CloseComplete is swallowed,
//! so every reply the client sees is one it asked for, in order.
//!
//! Session state cannot follow a client across connections: session-level SET, LISTEN, temporary
//! tables, session advisory locks and SQL-level PREPARE/EXECUTE/DEALLOCATE are refused with an
//! error that names `pool_mode = "session"`.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgwire::messages::startup::{BackendKeyData, SecretKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{flush, Fatal};
use super::pool::{AcquireError, Pool, ServerConn};
use super::protocol;
use super::{ClientStream, ProxyShared};
use crate::cluster::{AttachError, ClusterHandle};

/// Statements kept prepared on one compute connection, at most.
const MAX_PREPARED_PER_CONNECTION: usize = 500;

/// The largest message a client may send (Postgres allows 1 GB; a pooler has to buffer it).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024 * 1024;

/// A client statement, as the pool knows it.
struct Statement {
    /// The name on compute connections: the same text and types give the same name.
    pool_name: String,
    /// The Parse body with the pool-wide name, to prepare it on a connection that lacks it.
    parse_body: Bytes,
}

/// A reply the compute owes for an extended-protocol message.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// ParseComplete; `ours`: pgtide slipped the Parse in, the client must not see the reply.
    Parse {
        ours: bool,
    },
    Bind,
    /// CloseComplete; `ours` as for Parse.
    Close {
        ours: bool,
    },
    /// RowDescription or NoData (after ParameterDescription for a statement).
    Describe,
    /// CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
}

/// A compute connection held for the current transaction.
struct Held {
    conn: ServerConn,
    /// Queries and Syncs sent whose ReadyForQuery has not come back.
    pending: usize,
    status: u8,
    /// The replies still expected for extended-protocol messages, in order, each tagged with the
    /// number of Syncs sent before it (an error skips every reply up to the next Sync). While it
    /// is not empty — a Parse/Describe/Flush exchange without a Sync, say — the connection
    /// stays with this client.
    expected: VecDeque<(Expect, u64)>,
    syncs_sent: u64,
    syncs_done: u64,
    read: BytesMut,
}

pub(super) async fn serve(
    client: &mut ClientStream,
    cluster: &ClusterHandle,
    shared: &ProxyShared,
    user: &str,
    database: &str,
    who: &str,
    mut out: BytesMut,
) -> Result<(), Fatal> {
    let pool = shared.pools_of(cluster.name()).pool(user, database);
    // The startup answer comes from a pooled connection, which goes straight back.
    let hello = acquire(cluster, &pool, who).await?;
    out.extend_from_slice(&hello.parameter_status);
    pool.release(hello, true);
    let cancel = shared.cancels.register_pooled();
    protocol::encode(
        BackendKeyData::new(cancel.pid, SecretKey::I32(cancel.secret)),
        &mut out,
    );
    protocol::put_message(&mut out, b'Z', b"I");
    flush(client, &mut out).await?;

    let mut session = Session {
        cluster,
        pool: &pool,
        who,
        statements: HashMap::new(),
        held: None,
        client_buf: BytesMut::with_capacity(1024),
        to_client: BytesMut::new(),
        to_server: BytesMut::new(),
        cancel: &cancel,
    };
    let result = session.run(client).await;
    if let Some(held) = session.held.take() {
        // Mid-transaction or mid-exchange: the connection is closed, never reused.
        let reusable = held.is_done();
        session.end_transaction(held, reusable);
    }
    result
}

struct Session<'a> {
    cluster: &'a ClusterHandle,
    pool: &'a Pool,
    who: &'a str,
    statements: HashMap<String, Statement>,
    held: Option<Held>,
    client_buf: BytesMut,
    to_client: BytesMut,
    to_server: BytesMut,
    cancel: &'a super::cancel::PooledCancelKey,
}

impl Session<'_> {
    async fn run(&mut self, client: &mut ClientStream) -> Result<(), Fatal> {
        loop {
            // Read from the client, and from the compute while a connection is held.
            let client_read = match self.held.as_mut() {
                None => Some(client.read_buf(&mut self.client_buf).await),
                Some(held) => tokio::select! {
                    read = client.read_buf(&mut self.client_buf) => Some(read),
                    read = held.conn.stream.read_buf(&mut held.read) => {
                        match read {
                            Ok(0) | Err(_) => return Err(lost(self.cluster)),
                            Ok(_) => None,
                        }
                    }
                },
            };
            if let Some(read) = client_read {
                match read {
                    Ok(0) | Err(_) => return Ok(()), // the client left
                    Ok(_) => {
                        if self.take_client_messages().await? {
                            return Ok(()); // Terminate
                        }
                    }
                }
            }
            self.take_server_messages()?;
            if !self.to_client.is_empty() {
                flush(client, &mut self.to_client).await?;
            }
            if let Some(held) = &self.held {
                if held.is_done() {
                    let held = self.held.take().expect("held");
                    self.end_transaction(held, true);
                }
            }
        }
    }

    fn end_transaction(&mut self, held: Held, reusable: bool) {
        self.cancel.set_target(None);
        let counters = self.cluster.counters();
        counters.active.fetch_sub(1, Ordering::Relaxed);
        counters.touch();
        self.pool.release(held.conn, reusable);
    }

    /// Handles every complete client message; returns true on Terminate.
    async fn take_client_messages(&mut self) -> Result<bool, Fatal> {
        while let Some((kind, body)) = next_message(&mut self.client_buf, MAX_CLIENT_MESSAGE)? {
            if kind == b'X' {
                return Ok(true);
            }
            if kind == b'Q' {
                if let Some(refusal) = refuse_session_state(&body) {
                    // Answer as Postgres would answer a failing query: an error, then ready.
                    protocol::error_fields(&mut self.to_client, b'E', "ERROR", "0A000", &refusal);
                    let status = self.held.as_ref().map(|h| h.status).unwrap_or(b'I');
                    protocol::put_message(&mut self.to_client, b'Z', &[status]);
                    continue;
                }
            }
            if self.held.is_none() {
                let conn = acquire(self.cluster, self.pool, self.who).await?;
                self.cancel
                    .set_target(Some((conn.endpoint.socket_path(), conn.pid, conn.secret)));
                let counters = self.cluster.counters();
                counters.active.fetch_add(1, Ordering::Relaxed);
                counters.touch();
                self.held = Some(Held {
                    conn,
                    pending: 0,
                    status: b'I',
                    expected: VecDeque::new(),
                    syncs_sent: 0,
                    syncs_done: 0,
                    read: BytesMut::with_capacity(8192),
                });
            }
            self.forward(kind, body);
        }
        if !self.to_server.is_empty() {
            let held = self
                .held
                .as_mut()
                .expect("a connection is held while sending");
            if held.conn.stream.write_all(&self.to_server).await.is_err() {
                return Err(lost(self.cluster));
            }
            self.to_server.clear();
        }
        Ok(false)
    }

    /// Forwards one client message, rewriting statement names to pool-wide ones.
    fn forward(&mut self, kind: u8, body: Bytes) {
        let held = self.held.as_mut().expect("held");
        let counters = self.cluster.counters();
        match kind {
            b'P' => {
                let Some((name, rest)) = split_cstr(&body) else {
                    return protocol::put_message(&mut self.to_server, kind, &body);
                };
                if name.is_empty() {
                    held.expect(Expect::Parse { ours: false });
                    return protocol::put_message(&mut self.to_server, kind, &body);
                }
                let pool_name = pool_statement_name(rest);
                let mut parse_body = BytesMut::with_capacity(body.len() + 24);
                parse_body.put_slice(pool_name.as_bytes());
                parse_body.put_u8(0);
                parse_body.put_slice(rest);
                let parse_body = parse_body.freeze();
                if held.conn.prepared.contains(&pool_name) {
                    // Already there: close it first so that the client's Parse succeeds and its
                    // ParseComplete is a real one, in order.
                    put_close_statement(&mut self.to_server, &pool_name);
                    held.expect(Expect::Close { ours: true });
                }
                if !held.conn.prepared.contains(&pool_name) {
                    held.make_room(&mut self.to_server);
                }
                protocol::put_message(&mut self.to_server, b'P', &parse_body);
                held.expect(Expect::Parse { ours: false });
                held.conn.prepared.insert(pool_name.clone());
                self.statements.insert(
                    String::from_utf8_lossy(name).into_owned(),
                    Statement {
                        pool_name,
                        parse_body,
                    },
                );
            }
            b'B' => {
                // Bind: portal name, then statement name.
                let rewritten = split_cstr(&body).and_then(|(portal, rest)| {
                    let (statement, tail) = split_cstr(rest)?;
                    let known = self.statements.get(std::str::from_utf8(statement).ok()?)?;
                    Some((portal.to_vec(), known, tail.to_vec()))
                });
                match rewritten {
                    Some((portal, statement, tail)) => {
                        ensure_prepared(held, statement, &mut self.to_server, counters);
                        let mut new_body = BytesMut::with_capacity(body.len() + 24);
                        new_body.put_slice(&portal);
                        new_body.put_u8(0);
                        new_body.put_slice(statement.pool_name.as_bytes());
                        new_body.put_u8(0);
                        new_body.put_slice(&tail);
                        protocol::put_message(&mut self.to_server, kind, &new_body);
                    }
                    None => protocol::put_message(&mut self.to_server, kind, &body),
                }
            }
            b'D' | b'C' if body.first() == Some(&b'S') => {
                let name =
                    split_cstr(&body[1..]).map(|(n, _)| String::from_utf8_lossy(n).into_owned());
                let statement = name.as_deref().and_then(|n| self.statements.get(n));
                match statement {
                    Some(statement) => {
                        if kind == b'D' {
                            ensure_prepared(held, statement, &mut self.to_server, counters);
                        } else {
                            held.conn.prepared.remove(&statement.pool_name);
                            held.expect(Expect::Close { ours: false });
                        }
                        let mut new_body = BytesMut::with_capacity(statement.pool_name.len() + 2);
                        new_body.put_u8(b'S');
                        new_body.put_slice(statement.pool_name.as_bytes());
                        new_body.put_u8(0);
                        protocol::put_message(&mut self.to_server, kind, &new_body);
                        if kind == b'C' {
                            self.statements.remove(name.as_deref().unwrap_or_default());
                        }
                    }
                    None => {
                        if kind == b'C' {
                            held.expect(Expect::Close { ours: false });
                        }
                        protocol::put_message(&mut self.to_server, kind, &body);
                    }
                }
            }
            b'C' => {
                held.expect(Expect::Close { ours: false });
                protocol::put_message(&mut self.to_server, kind, &body);
            }
            b'Q' | b'S' => {
                held.pending += 1;
                held.syncs_sent += 1;
                protocol::put_message(&mut self.to_server, kind, &body);
            }
            _ => protocol::put_message(&mut self.to_server, kind, &body),
        }
        // Their replies come after those of any Parse slipped in front of them.
        let held = self.held.as_mut().expect("held");
        match kind {
            b'B' => held.expect(Expect::Bind),
            b'D' => held.expect(Expect::Describe),
            b'E' => held.expect(Expect::Execute),
            _ => {}
        }
    }

    /// Passes the compute's replies on, minus the ones to pgtide's own Parse and Close.
    fn take_server_messages(&mut self) -> Result<(), Fatal> {
        let Some(held) = self.held.as_mut() else {
            return Ok(());
        };
        while let Some((kind, body)) =
            next_message(&mut held.read, usize::MAX).map_err(|_| lost(self.cluster))?
        {
            let swallow = match kind {
                b'1' => {
                    held.reply(|e| matches!(e, Expect::Parse { .. }))
                        == Some(Expect::Parse { ours: true })
                }
                b'3' => {
                    held.reply(|e| matches!(e, Expect::Close { .. }))
                        == Some(Expect::Close { ours: true })
                }
                b'2' => {
                    held.reply(|e| *e == Expect::Bind);
                    false
                }
                b'T' | b'n' => {
                    held.reply(|e| *e == Expect::Describe);
                    false
                }
                b'C' | b'I' | b's' => {
                    held.reply(|e| *e == Expect::Execute);
                    false
                }
                b'E' => {
                    // The compute skips everything up to the next Sync: those replies never come.
                    let batch = held.syncs_done;
                    held.expected.retain(|(_, tag)| *tag > batch);
                    false
                }
                b'Z' => {
                    held.pending = held.pending.saturating_sub(1);
                    held.status = body.first().copied().unwrap_or(b'I');
                    held.syncs_done += 1;
                    let done = held.syncs_done;
                    held.expected.retain(|(_, tag)| *tag >= done);
                    if held.status == b'I' {
                        self.cluster
                            .counters()
                            .transactions
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    false
                }
                _ => false,
            };
            if !swallow {
                protocol::put_message(&mut self.to_client, kind, &body);
            }
        }
        Ok(())
    }
}

impl Held {
    fn expect(&mut self, reply: Expect) {
        self.expected.push_back((reply, self.syncs_sent));
    }

    /// Takes the reply at the head of the queue if it is the kind that just arrived.
    fn reply(&mut self, is: impl Fn(&Expect) -> bool) -> Option<Expect> {
        match self.expected.front() {
            Some((expect, _)) if is(expect) => self.expected.pop_front().map(|(e, _)| e),
            _ => None,
        }
    }

    /// Keeps the statements prepared on a connection under [`MAX_PREPARED_PER_CONNECTION`]: one
    /// is closed (its CloseComplete swallowed) before another is prepared.
    fn make_room(&mut self, to_server: &mut BytesMut) {
        if self.conn.prepared.len() < MAX_PREPARED_PER_CONNECTION {
            return;
        }
        if let Some(victim) = self.conn.prepared.iter().next().cloned() {
            put_close_statement(to_server, &victim);
            self.expect(Expect::Close { ours: true });
            self.conn.prepared.remove(&victim);
        }
    }

    /// Nothing owed, no transaction open: the connection can serve another client.
    fn is_done(&self) -> bool {
        self.pending == 0 && self.expected.is_empty() && self.status == b'I'
    }
}

/// Slips a Parse in front when the held connection lacks the statement.
fn ensure_prepared(
    held: &mut Held,
    statement: &Statement,
    to_server: &mut BytesMut,
    counters: &crate::cluster::LoadCounters,
) {
    if held.conn.prepared.contains(&statement.pool_name) {
        counters.prepared_hits.fetch_add(1, Ordering::Relaxed);
        return;
    }
    counters.prepared_misses.fetch_add(1, Ordering::Relaxed);
    held.make_room(to_server);
    protocol::put_message(to_server, b'P', &statement.parse_body);
    held.expect(Expect::Parse { ours: true });
    held.conn.prepared.insert(statement.pool_name.clone());
}

fn put_close_statement(out: &mut BytesMut, name: &str) {
    let mut body = BytesMut::with_capacity(name.len() + 2);
    body.put_u8(b'S');
    body.put_slice(name.as_bytes());
    body.put_u8(0);
    protocol::put_message(out, b'C', &body);
}

/// The same statement text and parameter types give the same name on every connection.
fn pool_statement_name(text_and_types: &[u8]) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text_and_types.hash(&mut hasher);
    format!("pgtide_{:016x}", hasher.finish())
}

fn split_cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = bytes.iter().position(|b| *b == 0)?;
    Some((&bytes[..nul], &bytes[nul + 1..]))
}

/// The next complete message (type, body) in `buf`, if any.
fn next_message(buf: &mut BytesMut, max: usize) -> Result<Option<(u8, Bytes)>, Fatal> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > max {
        return Err(Fatal::new("08P01", format!("invalid message length {len}")));
    }
    let total = 1 + len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut message = buf.split_to(total);
    let kind = message[0];
    message.advance(5);
    Ok(Some((kind, message.freeze())))
}

/// Statements whose effect would outlive the transaction on a shared connection.
fn refuse_session_state(query: &[u8]) -> Option<String> {
    let text =
        String::from_utf8_lossy(query.strip_suffix(&[0]).unwrap_or(query)).to_ascii_lowercase();
    let words: Vec<&str> = text.split_whitespace().take(4).collect();
    let first = words.first().copied().unwrap_or("");
    let what = match first {
        "set"
            if !matches!(
                words.get(1).copied(),
                Some("local") | Some("transaction") | Some("constraints")
            ) =>
        {
            "session-level SET (use SET LOCAL inside a transaction)"
        }
        "reset" | "listen" => "LISTEN and session-level settings",
        "prepare" | "execute" | "deallocate" => {
            "SQL-level PREPARE/EXECUTE/DEALLOCATE (protocol-level prepared statements work)"
        }
        "create" if words.iter().any(|w| *w == "temp" || *w == "temporary") => "temporary tables",
        _ if text.contains("pg_advisory_lock") || text.contains("pg_try_advisory_lock") => {
            "session advisory locks (pg_advisory_xact_lock works)"
        }
        _ => return None,
    };
    Some(format!(
        "{what} cannot be used through a transaction-mode pool, where the next transaction may run on another connection; use pool_mode = \"session\" for this client"
    ))
}

async fn acquire(cluster: &ClusterHandle, pool: &Pool, who: &str) -> Result<ServerConn, Fatal> {
    let endpoint = cluster.attach(who).await.map_err(|e| match e {
        AttachError::ShuttingDown => Fatal::new(
            "57P01",
            "terminating connection due to administrator command",
        ),
        other => Fatal::new("57P03", other.to_string()),
    })?;
    let timeout = cluster.config().resume_timeout;
    pool.acquire(cluster, &endpoint, timeout)
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

fn lost(cluster: &ClusterHandle) -> Fatal {
    Fatal::new(
        "08006",
        format!(
            "the connection to the compute of cluster \"{}\" was lost; reconnect to continue",
            cluster.name()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_state_is_refused_and_the_rest_passes() {
        for refused in [
            "SET search_path = x",
            "set work_mem='1GB'",
            "LISTEN events",
            "PREPARE p AS SELECT 1",
            "EXECUTE p",
            "CREATE TEMP TABLE t (a int)",
            "create temporary table t (a int)",
            "SELECT pg_advisory_lock(1)",
        ] {
            let message = refuse_session_state(refused.as_bytes());
            assert!(message.is_some(), "{refused}");
            assert!(message.unwrap().contains("pool_mode = \"session\""));
        }
        for allowed in [
            "SELECT 1",
            "SET LOCAL work_mem = '64MB'",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "BEGIN",
            "SELECT pg_advisory_xact_lock(1)",
            "CREATE TABLE t (a int)",
        ] {
            assert!(
                refuse_session_state(allowed.as_bytes()).is_none(),
                "{allowed}"
            );
        }
    }

    #[test]
    fn statement_names_depend_on_text_and_types() {
        assert_eq!(
            pool_statement_name(b"SELECT 1\0\0\0"),
            pool_statement_name(b"SELECT 1\0\0\0")
        );
        assert_ne!(
            pool_statement_name(b"SELECT 1\0\0\0"),
            pool_statement_name(b"SELECT 2\0\0\0")
        );
    }
}
