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

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};

mod client;
mod outbox;
mod prepared;
mod settings;

pub use client::{ClientState, ConnState, IdleAnswer, Statement};
pub use outbox::Outbox;
use prepared::put_close;
pub use prepared::MAX_PREPARED_PER_CONNECTION;
pub use settings::Settings;
use settings::READ_BACK;

use super::errors::Fatal;
use super::sql::{self, Verdict};
use crate::cluster::LoadCounters;
use crate::wire::{self, Message};

/// The largest compute message pgtide reads whole (ReadyForQuery, its own queries' rows);
/// everything else streams through whatever its size.
const MAX_WHOLE_MESSAGE: usize = 1 << 20;
/// The largest message accepted from the compute at all (Postgres's own limit is 1 GB).
const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// Sent instead of a refused statement: it fails at once, and its error is replaced by pgtide's.
const REFUSED_SQL: &[u8] = b"pgtide refused this statement";
/// The statement name of a refused Parse (a failed Parse of a named statement changes nothing).
const REFUSED_NAME: &[u8] = b"pgtide_refused";
/// The portal a client's Close of a named statement becomes: nobody has it.
const NO_PORTAL: &[u8] = b"pgtide_no_portal";

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

impl Entry {
    /// The client's Parse of its unnamed statement (or of a malformed or refused one, which
    /// prepares nothing pgtide keeps).
    fn client_unnamed_parse(refused: Option<String>) -> Entry {
        Entry::Parse {
            ours: false,
            name: None,
            after_close: false,
            client_name: None,
            refused,
        }
    }
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
    /// The verdict on the next client message, a simple query the relay judged while it waited
    /// for this connection ([`Exchange::judged`]); good for that one message only.
    judged: Option<bool>,
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
            judged: None,
        }
    }
}

fn query_text(body: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body))
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

    /// The next client message is a simple query already judged to pass (and whether it may
    /// touch settings): [`Exchange::client_message`] takes it without judging it again.
    pub fn judged(&mut self, settings: bool) {
        self.judged = Some(settings);
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
        let judged = self.judged.take();
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
                let verdict = match judged {
                    Some(settings) => Verdict::Pass { settings },
                    None => sql::classify(&query_text(body), true),
                };
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
