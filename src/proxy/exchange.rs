//! What a transaction-mode client and one compute connection owe each other: a pure state
//! machine, fed the client's messages and the compute's bytes, with no I/O (the relay in
//! [`super::transaction`] does that), so that it is tested with recorded message sequences.
//!
//! **The expected-reply queue.** Every message forwarded that the compute answers adds an entry,
//! in the order the compute reads them: Parse, Bind, Describe, Execute, Close, Sync, Query (and
//! FunctionCall). Replies take entries off the front. The connection can serve another client
//! only when the queue is empty, no transaction is open (ReadyForQuery said idle) and the
//! compute is not skipping messages. The protocol's corners are followed as Postgres does:
//! - an error in an extended-protocol message makes the compute skip everything up to the next
//!   Sync: those entries are dropped, and what pgtide had assumed about them is undone (a Parse
//!   that did not happen leaves no statement, a Close that did not happen leaves it in place);
//! - during COPY FROM STDIN the compute ignores Sync (and Flush) until CopyDone or CopyFail: the
//!   Syncs the client sent in between expect no ReadyForQuery;
//! - a failed Parse is not recorded as prepared, neither for the client nor for the connection.
//!
//! **Prepared statements** get a pool-wide name derived from their text and parameter types and
//! are prepared, on whichever connection the client gets, when that connection lacks them: pgtide
//! slips a Parse in front and swallows its ParseComplete. A client's own Parse of a statement the
//! connection already has becomes Close + Parse, whose CloseComplete is swallowed. A client's
//! Close of a named statement forgets it for that client and becomes a Close of a portal nobody
//! has, so that its CloseComplete comes back in order; the connection keeps the statement for
//! other clients. DEALLOCATE and DISCARD ALL act on the client's statements only.
//!
//! **Session settings follow the client** (see [`super::sql`] for what is refused instead). The
//! client's settings (from its startup packet, then from what it SETs) are kept here; a
//! connection given to it first gets them (`RESET ALL` and `set_config`, only when they differ
//! from what the connection has). After a transaction that may have changed settings, pgtide
//! reads the connection's session settings back (`pg_settings`, source `session`): that is the
//! truth for the client and the connection alike, and it also tells whether something that
//! cannot follow a client slipped through (a role, a temporary table, a LISTEN, an advisory
//! lock, a WITH HOLD cursor, an SQL-level prepared statement): such a connection is closed
//! rather than reused. pgtide's own queries and their replies never reach the client.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::errors::Fatal;
use super::sql::{self, Verdict};
use crate::cluster::LoadCounters;
use crate::wire::{self, Message};

/// Statements kept prepared on one compute connection, at most.
pub const MAX_PREPARED_PER_CONNECTION: usize = 500;
/// The largest compute message pgtide reads whole (ReadyForQuery, its own queries' rows);
/// everything else streams through whatever its size.
const MAX_WHOLE_MESSAGE: usize = 1 << 20;
/// The largest message accepted from the compute at all (Postgres's own limit is 1 GB).
const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// The name, as seen by pg_settings, and value of each session setting.
pub type Settings = BTreeMap<String, String>;

/// Settings that are never carried to another connection: a role cannot follow a client.
const NOT_CARRIED: [&str; 2] = ["role", "session_authorization"];

/// The query that reads back a connection's session settings, and two last rows: `#leaks`
/// counts session state that cannot follow a client (a LISTEN, a WITH HOLD cursor, an advisory
/// lock, a temporary table, an SQL-level prepared statement, a role or session user other than
/// the one the connection logged in as: pg_stat_activity keeps the login user), and
/// `#prepared` counts the protocol-level statements, which must be the ones pgtide prepared
/// (code that ran DEALLOCATE would have dropped other clients' statements).
const READ_BACK: &str = "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings \
     WHERE source = 'session' UNION ALL SELECT '#leaks', (\
     (SELECT count(*) FROM pg_catalog.pg_listening_channels()) + \
     (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable) + \
     (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()) + \
     (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()) + \
     (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql) + \
     (CASE WHEN current_user = session_user THEN 0 ELSE 1 END) + \
     (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid() \
       AND usename IS DISTINCT FROM session_user))::text \
     UNION ALL SELECT '#prepared', \
     (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql)::text";

/// Sent instead of a refused statement: it fails at once, and its error is replaced by pgtide's.
const REFUSED_SQL: &[u8] = b"pgtide refused this statement";
/// The statement name of a refused Parse (a failed Parse of a named statement changes nothing).
const REFUSED_NAME: &[u8] = b"pgtide_refused";
/// The portal a client's Close of a named statement becomes: nobody has it.
const NO_PORTAL: &[u8] = b"pgtide_no_portal";

/// A client statement, as the pool knows it.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The name on compute connections: the same text and types give the same name.
    pool_name: Arc<str>,
    /// The Parse body with the pool-wide name, to prepare it on a connection that lacks it.
    parse_body: Bytes,
    /// Running it may change session settings (a prepared SET): each Bind of it counts so.
    settings: bool,
}

/// What a transaction-mode client carries from one compute connection to the next.
#[derive(Debug, Default)]
pub struct ClientState {
    statements: HashMap<Vec<u8>, Statement>,
    /// Its unnamed statement (what follows the empty name in its last unnamed Parse), which a
    /// Bind after a Sync may use on another connection, and whether it may change settings.
    unnamed: Option<(Bytes, bool)>,
    /// The session settings the client has now.
    pub settings: Settings,
    /// Its settings right after startup: what DISCARD ALL goes back to.
    pub startup_settings: Settings,
}

impl ClientState {
    /// A client that logged in with `settings` (what the compute made of its startup
    /// parameters): they are its settings now and what DISCARD ALL goes back to.
    pub fn starting_with(settings: Settings) -> ClientState {
        ClientState {
            startup_settings: settings.clone(),
            settings,
            ..ClientState::default()
        }
    }
}

/// What pgtide knows of one compute connection; kept with it in the pool.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Pool-wide names of the statements prepared on it.
    pub prepared: HashSet<String>,
    /// The session settings pgtide gave it.
    pub settings: Settings,
    /// What its unnamed statement was parsed from, if pgtide knows.
    unnamed: Option<Bytes>,
}

/// Bytes waiting to be written, as a queue of chunks (written with vectored writes, never
/// copied into one buffer).
#[derive(Debug, Default)]
pub struct Outbox {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Outbox {
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.chunks.push_back(bytes);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    /// Up to `slices.len()` chunks, for a vectored write; returns how many were filled.
    pub fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, chunk) in slices.iter_mut().zip(&self.chunks) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }

    /// Drops `n` written bytes from the front.
    pub fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let front = self.chunks.front_mut().expect("advance within the queue");
            if front.len() <= n {
                n -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Everything, joined (for tests and small answers).
    pub fn concat(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }
}

/// pgtide's own simple queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Own {
    /// Gives the connection the client's settings.
    Settings,
    /// Reads the connection's settings back after a transaction that may have changed them.
    ReadBack,
}

/// A reply the compute owes, in the order it will come.
#[derive(Debug)]
enum Entry {
    /// ParseComplete. `name`: the pool-wide name it prepares (assumed prepared from now on);
    /// `after_close`: pgtide closed the same name just before; `client_name`: the client's
    /// name for it; `ours`: pgtide slipped it in, its reply is swallowed; `refused`: it stands
    /// for a refused Parse, whose error pgtide replaces.
    Parse {
        ours: bool,
        name: Option<String>,
        after_close: bool,
        client_name: Option<Vec<u8>>,
        refused: Option<String>,
    },
    Bind,
    /// RowDescription or NoData (after ParameterDescription for a statement).
    Describe,
    /// CommandComplete, EmptyQueryResponse or PortalSuspended (rows and COPY before).
    Execute,
    /// CloseComplete. `ours` with `name`: pgtide closed that name to make room;
    /// `forgotten`: the client's statement this Close made it forget.
    Close {
        ours: bool,
        name: Option<String>,
        forgotten: Option<(Vec<u8>, Statement)>,
    },
    /// ReadyForQuery; `ours`: pgtide's own Sync, which ends an exchange the client left
    /// without one.
    Sync {
        ours: bool,
    },
    /// Everything up to ReadyForQuery.
    Query {
        own: Option<Own>,
        refused: Option<String>,
    },
    /// Where the client ended a COPY (CopyDone or CopyFail): no reply of its own.
    CopyEnd,
}

/// What became of one client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Forwarded (possibly rewritten) or answered.
    Taken,
    /// It must wait until the connection owes nothing (it depends on the transaction status).
    Wait(Message),
    /// Terminate: the client is leaving.
    Terminate,
}

/// What to do with a compute message, decided from its type.
enum Action {
    Pass,
    Swallow,
    /// Swallow it and send this instead.
    Replace(Bytes),
    /// The whole message is needed to decide.
    Whole,
}

/// One compute connection held by one client.
#[derive(Debug)]
pub struct Exchange {
    queue: VecDeque<Entry>,
    status: u8,
    /// The compute discards every message until the next Sync (an extended-protocol error).
    skipping: bool,
    /// The compute is in COPY FROM STDIN and ignores Sync until the client's CopyDone/CopyFail.
    copy_in: bool,
    /// An extended-protocol message went out after the last Sync: its implicit transaction is
    /// open until one comes.
    unsynced: bool,
    /// The transaction may have changed session settings: read them back when it ends.
    settings_touched: bool,
    /// Rows of a read-back in progress.
    read_back: Vec<(String, String)>,
    /// Session state that cannot follow a client is on the connection, or pgtide's own query
    /// failed: close it rather than reuse it.
    poisoned: bool,
    /// A CREATE/ALTER/DROP ROLE completed: it counts once its transaction ended.
    role_changed: bool,
    /// A compute message being streamed (or skipped) across reads: its action and bytes left.
    partial: Option<(bool, usize)>,
    /// Where rewritten client messages are written (split off, so that its space is reused).
    scratch: BytesMut,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            queue: VecDeque::new(),
            status: b'I',
            skipping: false,
            copy_in: false,
            unsynced: false,
            settings_touched: false,
            read_back: Vec::new(),
            poisoned: false,
            role_changed: false,
            partial: None,
            scratch: BytesMut::new(),
        }
    }
}

impl ClientState {
    /// Answers a message that needs no compute connection when none is held (the client is
    /// idle): a refused query, DEALLOCATE, DISCARD ALL.
    pub fn answer_without_server(&mut self, message: &Message) -> Option<Bytes> {
        if message.kind != b'Q' {
            return None;
        }
        let mut out = BytesMut::new();
        match sql::classify(&query_text(message.body()), true) {
            Verdict::Pass { .. } => return None,
            Verdict::Refuse(refusal) => {
                wire::error_response(&mut out, b'E', "ERROR", "0A000", &refusal);
                wire::ready_for_query(&mut out, b'I');
            }
            Verdict::Deallocate(name) => self.deallocate(name, b'I', &mut out),
            Verdict::DiscardAll => self.discard_all(b'I', &mut out),
        }
        Some(out.freeze())
    }

    fn deallocate(&mut self, name: Option<String>, status: u8, out: &mut BytesMut) {
        if status == b'E' {
            return aborted(out);
        }
        match name {
            None => {
                self.statements.clear();
                command_complete(out, "DEALLOCATE ALL");
                wire::ready_for_query(out, status);
            }
            Some(name) if self.statements.remove(name.as_bytes()).is_some() => {
                command_complete(out, "DEALLOCATE");
                wire::ready_for_query(out, status);
            }
            Some(name) => {
                let message = format!("prepared statement \"{name}\" does not exist");
                wire::error_response(out, b'E', "ERROR", "26000", &message);
                wire::ready_for_query(out, if status == b'T' { b'E' } else { status });
            }
        }
    }

    fn discard_all(&mut self, status: u8, out: &mut BytesMut) {
        match status {
            b'I' => {
                self.statements.clear();
                self.settings = self.startup_settings.clone();
                command_complete(out, "DISCARD ALL");
                wire::ready_for_query(out, b'I');
            }
            b'T' => {
                wire::error_response(
                    out,
                    b'E',
                    "ERROR",
                    "25001",
                    "DISCARD ALL cannot run inside a transaction block",
                );
                wire::ready_for_query(out, b'E');
            }
            _ => aborted(out),
        }
    }
}

fn aborted(out: &mut BytesMut) {
    wire::error_response(
        out,
        b'E',
        "ERROR",
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    );
    wire::ready_for_query(out, b'E');
}

fn command_complete(out: &mut BytesMut, tag: &str) {
    let start = wire::begin_message(out, b'C');
    wire::put_cstr(out, tag.as_bytes());
    wire::end_message(out, start);
}

fn query_text(body: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body))
}

/// The same statement text and parameter types give the same name on every connection.
fn pool_statement_name(text_and_types: &[u8]) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text_and_types.hash(&mut hasher);
    format!("pgtide_{:016x}", hasher.finish())
}

fn put_close(out: &mut BytesMut, what: u8, name: &[u8]) {
    let start = wire::begin_message(out, b'C');
    out.put_u8(what);
    wire::put_cstr(out, name);
    wire::end_message(out, start);
}

impl Exchange {
    /// Nothing owed, no transaction open: the connection can go back to the pool.
    pub fn is_done(&self) -> bool {
        self.queue.is_empty()
            && self.status == b'I'
            && !self.skipping
            && !self.copy_in
            && !self.unsynced
    }

    /// Everything answered and no transaction open, but the client's last extended-protocol
    /// messages had no Sync after them (asyncpg prepares with Parse, Describe, Flush): the
    /// compute's implicit transaction is still open.
    pub fn idle_unsynced(&self) -> bool {
        self.queue.is_empty()
            && self.status == b'I'
            && !self.skipping
            && !self.copy_in
            && self.unsynced
    }

    /// Ends such an exchange with pgtide's own Sync (its ReadyForQuery is swallowed), so that
    /// the connection can go back to the pool.
    pub fn sync_now(&mut self, to_server: &mut Outbox) {
        let mut out = BytesMut::new();
        wire::put_message(&mut out, b'S', b"");
        to_server.push(out.freeze());
        self.unsynced = false;
        self.queue.push_back(Entry::Sync { ours: true });
    }

    /// The compute waits for the client's COPY data.
    pub fn in_copy_in(&self) -> bool {
        self.copy_in
    }

    /// No reply is owed (a transaction may still be open).
    pub fn owes_nothing(&self) -> bool {
        self.queue.is_empty()
    }

    /// Done, and fit for another client.
    pub fn reusable(&self) -> bool {
        self.is_done() && !self.poisoned
    }

    /// The transaction status of the last ReadyForQuery.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Called when the client gets the connection: gives it the client's settings if it has
    /// others.
    pub fn begin(&mut self, client: &ClientState, conn: &mut ConnState, to_server: &mut Outbox) {
        if client.settings != conn.settings {
            let mut sql = String::from("RESET ALL");
            if !client.settings.is_empty() {
                sql.push_str("; SELECT ");
                let calls: Vec<String> = client
                    .settings
                    .iter()
                    .map(|(name, value)| {
                        format!(
                            "pg_catalog.set_config({}, {}, false)",
                            sql::literal(name),
                            sql::literal(value)
                        )
                    })
                    .collect();
                sql.push_str(&calls.join(", "));
            }
            self.own_query(Own::Settings, &sql, conn, to_server);
        }
    }

    /// (A simple query drops the connection's unnamed statement, whoever sends it.)
    fn own_query(&mut self, own: Own, sql: &str, conn: &mut ConnState, to_server: &mut Outbox) {
        conn.unnamed = None;
        let mut out = BytesMut::new();
        wire::query(&mut out, sql);
        to_server.push(out.freeze());
        self.queue.push_back(Entry::Query {
            own: Some(own),
            refused: None,
        });
    }

    /// Handles one complete client message: forwards it (rewritten where statement names must
    /// become pool-wide), answers it, or says it must wait.
    pub fn client_message(
        &mut self,
        client: &mut ClientState,
        conn: &mut ConnState,
        message: Message,
        to_server: &mut Outbox,
        to_client: &mut Outbox,
        counters: &LoadCounters,
    ) -> Step {
        let kind = message.kind;
        if kind == b'X' {
            return Step::Terminate;
        }
        if self.skipping && kind != b'S' {
            // The compute discards it: it owes nothing for it, and it changes nothing.
            to_server.push(message.frame);
            return Step::Taken;
        }
        let body = message.body();
        if matches!(kind, b'P' | b'B' | b'D' | b'E' | b'C' | b'H') {
            self.unsynced = true;
        }
        match kind {
            b'Q' => {
                // A simple query drops the unnamed statement, the client's and the connection's.
                client.unnamed = None;
                conn.unnamed = None;
                let verdict = sql::classify(&query_text(body), true);
                match verdict {
                    Verdict::Pass { settings } => {
                        // A simple query ends an unsynced extended exchange's transaction.
                        self.unsynced = false;
                        self.settings_touched |= settings;
                        self.queue.push_back(Entry::Query {
                            own: None,
                            refused: None,
                        });
                        to_server.push(message.frame);
                    }
                    Verdict::Refuse(refusal) if self.queue.is_empty() && self.status == b'I' => {
                        let mut out = BytesMut::new();
                        wire::error_response(&mut out, b'E', "ERROR", "0A000", &refusal);
                        wire::ready_for_query(&mut out, b'I');
                        to_client.push(out.freeze());
                    }
                    Verdict::Refuse(refusal) => {
                        // Sent as a query that fails, so that the compute's transaction state
                        // (an open transaction is now aborted) stays Postgres's own.
                        let mut out = BytesMut::new();
                        wire::put_message(&mut out, b'Q', &[REFUSED_SQL, b"\0"].concat());
                        to_server.push(out.freeze());
                        self.queue.push_back(Entry::Query {
                            own: None,
                            refused: Some(refusal),
                        });
                    }
                    Verdict::Deallocate(_) | Verdict::DiscardAll if !self.queue.is_empty() => {
                        return Step::Wait(message);
                    }
                    Verdict::Deallocate(name) => {
                        let mut out = BytesMut::new();
                        client.deallocate(name, self.status, &mut out);
                        to_client.push(out.freeze());
                    }
                    Verdict::DiscardAll => {
                        let mut out = BytesMut::new();
                        client.discard_all(self.status, &mut out);
                        to_client.push(out.freeze());
                        if self.status == b'I' {
                            self.begin(client, conn, to_server);
                        }
                    }
                }
            }
            b'P' => self.parse(client, conn, message, to_server),
            b'B' => {
                let rewritten = wire::split_cstr(body).and_then(|(portal, rest)| {
                    let (name, tail) = wire::split_cstr(rest)?;
                    let statement = client.statements.get(name)?;
                    Some((portal, statement.clone(), tail))
                });
                match rewritten {
                    Some((portal, statement, tail)) => {
                        self.settings_touched |= statement.settings;
                        let mut out = self.take_scratch(body.len() + 32);
                        self.ensure_prepared(conn, &statement, &mut out, counters);
                        let start = wire::begin_message(&mut out, b'B');
                        wire::put_cstr(&mut out, portal);
                        wire::put_cstr(&mut out, statement.pool_name.as_bytes());
                        out.put_slice(tail);
                        wire::end_message(&mut out, start);
                        self.put_scratch(out, to_server);
                    }
                    None => {
                        let unnamed = wire::split_cstr(body)
                            .and_then(|(_, rest)| wire::split_cstr(rest))
                            .is_some_and(|(name, _)| name.is_empty());
                        if unnamed {
                            self.settings_touched |= client.unnamed.as_ref().is_some_and(|u| u.1);
                            self.ensure_unnamed(client, conn, to_server);
                        }
                        to_server.push(message.frame)
                    }
                }
                self.queue.push_back(Entry::Bind);
            }
            b'D' => {
                let statement = match body.split_first() {
                    Some((b'S', rest)) => wire::split_cstr(rest)
                        .and_then(|(name, _)| client.statements.get(name))
                        .cloned(),
                    _ => None,
                };
                match statement {
                    Some(statement) => {
                        let mut out = self.take_scratch(64);
                        self.ensure_prepared(conn, &statement, &mut out, counters);
                        let start = wire::begin_message(&mut out, b'D');
                        out.put_u8(b'S');
                        wire::put_cstr(&mut out, statement.pool_name.as_bytes());
                        wire::end_message(&mut out, start);
                        self.put_scratch(out, to_server);
                    }
                    None => {
                        if body == b"S\0" {
                            self.ensure_unnamed(client, conn, to_server);
                        }
                        to_server.push(message.frame)
                    }
                }
                self.queue.push_back(Entry::Describe);
            }
            b'C' => {
                let named = match body.split_first() {
                    Some((b'S', rest)) => wire::split_cstr(rest)
                        .map(|(name, _)| name)
                        .filter(|n| !n.is_empty()),
                    _ => None,
                };
                match named {
                    Some(name) => {
                        // The connection keeps the statement for other clients; this client
                        // forgets it.
                        let forgotten = client
                            .statements
                            .remove(name)
                            .map(|statement| (name.to_vec(), statement));
                        let mut out = BytesMut::new();
                        put_close(&mut out, b'P', NO_PORTAL);
                        to_server.push(out.freeze());
                        self.queue.push_back(Entry::Close {
                            ours: false,
                            name: None,
                            forgotten,
                        });
                    }
                    None => {
                        to_server.push(message.frame);
                        self.queue.push_back(Entry::Close {
                            ours: false,
                            name: None,
                            forgotten: None,
                        });
                    }
                }
            }
            b'E' => {
                to_server.push(message.frame);
                self.queue.push_back(Entry::Execute);
            }
            b'S' => {
                to_server.push(message.frame);
                self.skipping = false;
                self.unsynced = false;
                if !self.copy_in {
                    self.queue.push_back(Entry::Sync { ours: false });
                }
            }
            b'F' => {
                to_server.push(message.frame);
                self.queue.push_back(Entry::Query {
                    own: None,
                    refused: None,
                });
            }
            b'c' | b'f' => {
                to_server.push(message.frame);
                if self.copy_in {
                    self.copy_in = false;
                } else {
                    self.queue.push_back(Entry::CopyEnd);
                }
            }
            // Flush, CopyData and anything else: no reply of their own.
            _ => to_server.push(message.frame),
        }
        Step::Taken
    }

    /// The scratch buffer with room for `n` more bytes (taken out so that `self` stays free).
    fn take_scratch(&mut self, n: usize) -> BytesMut {
        let mut out = std::mem::take(&mut self.scratch);
        out.reserve(n.max(4096));
        out
    }

    fn put_scratch(&mut self, mut out: BytesMut, to_server: &mut Outbox) {
        to_server.push(out.split().freeze());
        self.scratch = out;
    }

    fn parse(
        &mut self,
        client: &mut ClientState,
        conn: &mut ConnState,
        message: Message,
        to_server: &mut Outbox,
    ) {
        let body = message.body();
        let Some((name, rest)) = wire::split_cstr(body) else {
            // Malformed: the compute will say so.
            to_server.push(message.frame);
            return self.queue.push_back(Entry::Parse {
                ours: false,
                name: None,
                after_close: false,
                client_name: None,
                refused: None,
            });
        };
        let text = wire::split_cstr(rest).map(|(text, _)| text).unwrap_or(rest);
        let settings = match sql::classify(&String::from_utf8_lossy(text), false) {
            Verdict::Refuse(refusal) => {
                let mut out = BytesMut::new();
                let start = wire::begin_message(&mut out, b'P');
                wire::put_cstr(&mut out, REFUSED_NAME);
                wire::put_cstr(&mut out, REFUSED_SQL);
                out.put_i16(0);
                wire::end_message(&mut out, start);
                to_server.push(out.freeze());
                self.queue.push_back(Entry::Parse {
                    ours: false,
                    name: None,
                    after_close: false,
                    client_name: None,
                    refused: Some(refusal),
                });
                return;
            }
            Verdict::Pass { settings } => settings,
            Verdict::Deallocate(_) | Verdict::DiscardAll => unreachable!("simple protocol only"),
        };
        if name.is_empty() {
            let rest = message.body_bytes().slice(1..);
            client.unnamed = Some((rest.clone(), settings));
            conn.unnamed = Some(rest);
            to_server.push(message.frame);
            return self.queue.push_back(Entry::Parse {
                ours: false,
                name: None,
                after_close: false,
                client_name: None,
                refused: None,
            });
        }
        let pool_name: Arc<str> = pool_statement_name(rest).into();
        let mut parse_body = BytesMut::with_capacity(body.len() + 24);
        wire::put_cstr(&mut parse_body, pool_name.as_bytes());
        parse_body.put_slice(rest);
        let parse_body = parse_body.freeze();
        let mut out = BytesMut::with_capacity(parse_body.len() + 32);
        let after_close = conn.prepared.contains(&*pool_name);
        if after_close {
            // Already there: closed first, so that the client's Parse succeeds and its
            // ParseComplete is a real one, in order.
            put_close(&mut out, b'S', pool_name.as_bytes());
            self.queue.push_back(Entry::Close {
                ours: true,
                name: None,
                forgotten: None,
            });
        } else {
            self.make_room(conn, &mut out);
        }
        wire::put_message(&mut out, b'P', &parse_body);
        to_server.push(out.freeze());
        conn.prepared.insert(pool_name.to_string());
        self.queue.push_back(Entry::Parse {
            ours: false,
            name: Some(pool_name.to_string()),
            after_close,
            client_name: Some(name.to_vec()),
            refused: None,
        });
        client.statements.insert(
            name.to_vec(),
            Statement {
                pool_name,
                parse_body,
                settings,
            },
        );
    }

    /// Slips a Parse of the client's unnamed statement in front when the connection's unnamed
    /// statement is another one (the client parsed it on another connection, before a Sync).
    fn ensure_unnamed(
        &mut self,
        client: &ClientState,
        conn: &mut ConnState,
        to_server: &mut Outbox,
    ) {
        let Some((rest, _)) = &client.unnamed else {
            return;
        };
        if conn.unnamed.as_ref() == Some(rest) {
            return;
        }
        let mut out = BytesMut::with_capacity(rest.len() + 6);
        let start = wire::begin_message(&mut out, b'P');
        out.put_u8(0);
        out.put_slice(rest);
        wire::end_message(&mut out, start);
        to_server.push(out.freeze());
        conn.unnamed = Some(rest.clone());
        self.queue.push_back(Entry::Parse {
            ours: true,
            name: None,
            after_close: false,
            client_name: None,
            refused: None,
        });
    }

    /// Slips a Parse in front when the connection lacks the statement.
    fn ensure_prepared(
        &mut self,
        conn: &mut ConnState,
        statement: &Statement,
        out: &mut BytesMut,
        counters: &LoadCounters,
    ) {
        if conn.prepared.contains(&*statement.pool_name) {
            counters.prepared_hit();
            return;
        }
        counters.prepared_miss();
        self.make_room(conn, out);
        wire::put_message(out, b'P', &statement.parse_body);
        conn.prepared.insert(statement.pool_name.to_string());
        self.queue.push_back(Entry::Parse {
            ours: true,
            name: Some(statement.pool_name.to_string()),
            after_close: false,
            client_name: None,
            refused: None,
        });
    }

    /// Keeps a connection's statements under [`MAX_PREPARED_PER_CONNECTION`]: one is closed
    /// (its CloseComplete swallowed) before another is prepared.
    fn make_room(&mut self, conn: &mut ConnState, out: &mut BytesMut) {
        if conn.prepared.len() < MAX_PREPARED_PER_CONNECTION {
            return;
        }
        if let Some(victim) = conn.prepared.iter().next().cloned() {
            put_close(out, b'S', victim.as_bytes());
            conn.prepared.remove(&victim);
            self.queue.push_back(Entry::Close {
                ours: true,
                name: Some(victim),
                forgotten: None,
            });
        }
    }

    /// Takes the compute's bytes off the front of `buf` (all complete messages, and the part
    /// of a streamed one that is there) and queues what the client must see, without copying:
    /// runs of messages that pass are split off `buf` whole.
    pub fn server_bytes(
        &mut self,
        buf: &mut BytesMut,
        client: &mut ClientState,
        conn: &mut ConnState,
        to_server: &mut Outbox,
        to_client: &mut Outbox,
        counters: &LoadCounters,
    ) -> Result<(), Fatal> {
        let mut pass = 0; // bytes at the front of `buf` that go to the client as they are
        loop {
            if let Some((passing, left)) = self.partial {
                let n = left.min(buf.len() - pass);
                if passing {
                    pass += n;
                } else {
                    flush_run(buf, &mut pass, to_client);
                    buf.advance(n);
                }
                if n < left {
                    self.partial = Some((passing, left - n));
                    break;
                }
                self.partial = None;
                continue;
            }
            let Some((kind, total)) = wire::peek_header(&buf[pass..], MAX_SERVER_MESSAGE)? else {
                break;
            };
            match self.server_header(kind, client, conn) {
                Action::Pass => self.partial = Some((true, total)),
                Action::Swallow => self.partial = Some((false, total)),
                Action::Replace(bytes) => {
                    flush_run(buf, &mut pass, to_client);
                    to_client.push(bytes);
                    self.partial = Some((false, total));
                }
                Action::Whole => {
                    if total > MAX_WHOLE_MESSAGE {
                        return Err(Fatal::protocol("oversized message from the compute"));
                    }
                    if buf.len() - pass < total {
                        buf.reserve(total);
                        break;
                    }
                    let body = &buf[pass + wire::HEADER_LEN..pass + total];
                    if self.server_message(kind, body, client, conn, to_server, counters) {
                        pass += total;
                    } else {
                        flush_run(buf, &mut pass, to_client);
                        buf.advance(total);
                    }
                }
            }
        }
        flush_run(buf, &mut pass, to_client);
        Ok(())
    }

    /// Pops leading CopyEnd markers (a CopyDone or CopyFail sent outside COPY, which the
    /// compute drops) and returns the entry the next reply belongs to.
    fn head(&mut self) -> Option<&Entry> {
        while matches!(self.queue.front(), Some(Entry::CopyEnd)) {
            self.queue.pop_front();
        }
        self.queue.front()
    }

    fn head_is_own(&mut self) -> bool {
        matches!(self.head(), Some(Entry::Query { own: Some(_), .. }))
    }

    fn server_header(
        &mut self,
        kind: u8,
        client: &mut ClientState,
        conn: &mut ConnState,
    ) -> Action {
        let own = self.head_is_own();
        let pass_or_own = if own { Action::Swallow } else { Action::Pass };
        match kind {
            b'1' => match self.pop_if(|e| matches!(e, Entry::Parse { .. })) {
                Some(Entry::Parse { ours: true, .. }) => Action::Swallow,
                _ => Action::Pass,
            },
            b'2' => {
                self.pop_if(|e| matches!(e, Entry::Bind));
                Action::Pass
            }
            b'3' => match self.pop_if(|e| matches!(e, Entry::Close { .. })) {
                Some(Entry::Close { ours: true, .. }) => Action::Swallow,
                _ => Action::Pass,
            },
            b'T' | b'n' => {
                self.pop_if(|e| matches!(e, Entry::Describe));
                pass_or_own
            }
            // CommandComplete is read whole, for role DDL tags.
            b'C' if !own => Action::Whole,
            b'C' | b'I' | b's' => {
                self.pop_if(|e| matches!(e, Entry::Execute));
                pass_or_own
            }
            b'G' => {
                self.copy_in_started();
                pass_or_own
            }
            b'E' => self.error(client, conn),
            b'Z' => Action::Whole,
            b'D' if matches!(
                self.head(),
                Some(Entry::Query {
                    own: Some(Own::ReadBack),
                    ..
                })
            ) =>
            {
                Action::Whole
            }
            b'A' => Action::Pass,
            _ => pass_or_own,
        }
    }

    fn pop_if(&mut self, is: impl Fn(&Entry) -> bool) -> Option<Entry> {
        match self.head() {
            Some(entry) if is(entry) => self.queue.pop_front(),
            _ => None,
        }
    }

    /// CopyInResponse: the compute ignores Sync until the client's CopyDone or CopyFail.
    fn copy_in_started(&mut self) {
        let mut i = 1;
        while i < self.queue.len() {
            match self.queue[i] {
                Entry::Sync { .. } => {
                    self.queue.remove(i);
                }
                Entry::CopyEnd => {
                    self.queue.remove(i);
                    return;
                }
                _ => i += 1,
            }
        }
        self.copy_in = true;
    }

    /// An ErrorResponse.
    fn error(&mut self, client: &mut ClientState, conn: &mut ConnState) -> Action {
        match self.head() {
            Some(Entry::Query {
                refused: Some(refusal),
                ..
            }) => {
                let mut out = BytesMut::new();
                wire::error_response(&mut out, b'E', "ERROR", "0A000", refusal);
                Action::Replace(out.freeze())
            }
            Some(Entry::Query { own: Some(own), .. }) => {
                tracing::warn!(
                    ?own,
                    "pgtide's own query failed on a pooled connection; it will be closed"
                );
                self.poisoned = true;
                Action::Swallow
            }
            Some(Entry::Query { .. }) | Some(Entry::Sync { .. }) | None => Action::Pass,
            Some(_) => {
                // An extended-protocol message failed: the compute skips to the next Sync.
                let replace = match self.queue.front() {
                    Some(Entry::Parse {
                        refused: Some(refusal),
                        ..
                    }) => {
                        let mut out = BytesMut::new();
                        wire::error_response(&mut out, b'E', "ERROR", "0A000", refusal);
                        Some(out.freeze())
                    }
                    _ => None,
                };
                let mut failed = true;
                while let Some(entry) = self.queue.front() {
                    if matches!(entry, Entry::Sync { .. }) {
                        break;
                    }
                    let entry = self.queue.pop_front().expect("front");
                    undo(entry, failed, client, conn);
                    failed = false;
                }
                if self.queue.is_empty() {
                    self.skipping = true;
                }
                match replace {
                    Some(bytes) => Action::Replace(bytes),
                    None => Action::Pass,
                }
            }
        }
    }

    /// A whole message (ReadyForQuery, or a row of a read-back); returns whether it passes.
    fn server_message(
        &mut self,
        kind: u8,
        body: &[u8],
        client: &mut ClientState,
        conn: &mut ConnState,
        to_server: &mut Outbox,
        counters: &LoadCounters,
    ) -> bool {
        if kind == b'C' {
            self.pop_if(|e| matches!(e, Entry::Execute));
            self.role_changed |= [&b"CREATE ROLE"[..], b"ALTER ROLE", b"DROP ROLE"]
                .iter()
                .any(|tag| body.starts_with(tag));
            return true;
        }
        if kind == b'D' {
            if let Ok(row) = wire::parse_data_row(body) {
                if let [Some(name), Some(value)] = &row[..] {
                    self.read_back.push((name.clone(), value.clone()));
                }
            }
            return false;
        }
        // ReadyForQuery ends a Sync or a Query; anything still before it was skipped.
        self.status = body.first().copied().unwrap_or(b'I');
        let mut own = None;
        let mut our_sync = false;
        while let Some(entry) = self.queue.pop_front() {
            match entry {
                Entry::Sync { ours } => {
                    our_sync = ours;
                    break;
                }
                Entry::Query { own: o, .. } => {
                    own = o;
                    break;
                }
                other => undo(other, false, client, conn),
            }
        }
        if our_sync {
            return false;
        }
        match own {
            Some(Own::Settings) => {
                if !self.poisoned {
                    conn.settings = client.settings.clone();
                }
            }
            Some(Own::ReadBack) => self.finish_read_back(client, conn),
            None => {
                if self.status == b'I' {
                    counters.add_transactions(1);
                    if std::mem::take(&mut self.role_changed) {
                        counters.mark_roles_changed();
                    }
                }
            }
        }
        // Between transactions, with nothing of the client's in flight: read the settings back
        // if they may have changed, and give the connection the client's if they differ.
        if self.queue.is_empty() && self.status == b'I' && !self.poisoned {
            if std::mem::take(&mut self.settings_touched) {
                self.own_query(Own::ReadBack, READ_BACK, conn, to_server);
            } else {
                self.begin(client, conn, to_server);
            }
        }
        own.is_none()
    }

    fn finish_read_back(&mut self, client: &mut ClientState, conn: &mut ConnState) {
        let mut settings = Settings::new();
        for (name, value) in std::mem::take(&mut self.read_back) {
            if name == "#leaks" {
                if value != "0" {
                    tracing::info!(
                        "session state that cannot follow a client was left on a pooled connection; it is closed"
                    );
                    self.poisoned = true;
                }
            } else if name == "#prepared" {
                if value != conn.prepared.len().to_string() {
                    tracing::info!(
                        found = %value,
                        expected = conn.prepared.len(),
                        "the prepared statements of a pooled connection are not the ones pgtide made; it is closed"
                    );
                    self.poisoned = true;
                }
            } else if !NOT_CARRIED.contains(&name.as_str()) {
                settings.insert(name, value);
            } else {
                self.poisoned = true;
            }
        }
        if !self.poisoned {
            conn.settings = settings.clone();
        }
        // RESET (and SET … TO DEFAULT) return a setting to its startup value in Postgres; on a
        // pooled connection they went to the server's default, so the client's startup value
        // is given back (see `server_message`).
        for (name, value) in &client.startup_settings {
            settings
                .entry(name.clone())
                .or_insert_with(|| value.clone());
        }
        client.settings = settings;
    }
}

/// Undoes what was assumed of an entry whose message failed (`failed`) or was skipped.
fn undo(entry: Entry, failed: bool, client: &mut ClientState, conn: &mut ConnState) {
    match entry {
        Entry::Parse {
            name: None,
            ours,
            refused: None,
            ..
        } => {
            // An unnamed Parse that did not happen leaves no unnamed statement.
            conn.unnamed = None;
            if !ours {
                client.unnamed = None;
            }
        }
        Entry::Parse {
            name: Some(name),
            after_close,
            client_name,
            ..
        } => {
            // Skipped right after pgtide's own Close of the same name, which was skipped too:
            // the statement is still there.
            if failed || !after_close {
                conn.prepared.remove(&name);
            }
            if let Some(client_name) = client_name {
                if client
                    .statements
                    .get(&client_name)
                    .is_some_and(|s| *s.pool_name == *name)
                {
                    client.statements.remove(&client_name);
                }
            }
        }
        Entry::Close {
            ours: true,
            name: Some(name),
            ..
        } => {
            conn.prepared.insert(name);
        }
        Entry::Close {
            forgotten: Some((name, statement)),
            ..
        } => {
            client.statements.entry(name).or_insert(statement);
        }
        _ => {}
    }
}

/// Moves the run of passing bytes at the front of `buf` to the client's outbox.
fn flush_run(buf: &mut BytesMut, pass: &mut usize, to_client: &mut Outbox) {
    if *pass > 0 {
        to_client.push(buf.split_to(*pass).freeze());
        *pass = 0;
    }
}

#[cfg(test)]
mod tests;
