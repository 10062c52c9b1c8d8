//! Prepared statements under pool-wide names: a client's Parse is renamed to a name derived
//! from its text and types, prepared on whichever connection the client gets when that
//! connection lacks it, and kept under [`MAX_PREPARED_PER_CONNECTION`] per connection.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::{
    ClientState, ConnState, Entry, Exchange, Outbox, Statement, REFUSED_NAME, REFUSED_SQL,
};
use crate::cluster::LoadCounters;
use crate::proxy::sql::{self, Verdict};
use crate::wire::{self, Message};

/// Statements kept prepared on one compute connection, at most.
pub const MAX_PREPARED_PER_CONNECTION: usize = 500;

/// The same statement text and parameter types give the same name on every connection.
pub(super) fn pool_statement_name(text_and_types: &[u8]) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text_and_types.hash(&mut hasher);
    format!("pgtide_{:016x}", hasher.finish())
}

pub(super) fn put_close(out: &mut BytesMut, what: u8, name: &[u8]) {
    let start = wire::begin_message(out, b'C');
    out.put_u8(what);
    wire::put_cstr(out, name);
    wire::end_message(out, start);
}

impl Exchange {
    /// The scratch buffer with room for `n` more bytes (taken out so that `self` stays free).
    pub(super) fn take_scratch(&mut self, n: usize) -> BytesMut {
        let mut out = std::mem::take(&mut self.scratch);
        out.reserve(n.max(4096));
        out
    }

    pub(super) fn put_scratch(&mut self, mut out: BytesMut, to_server: &mut Outbox) {
        to_server.push(out.split().freeze());
        self.scratch = out;
    }

    pub(super) fn parse(
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
            return self.queue.push_back(Entry::client_unnamed_parse(None));
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
                self.queue
                    .push_back(Entry::client_unnamed_parse(Some(refusal)));
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
            return self.queue.push_back(Entry::client_unnamed_parse(None));
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
    pub(super) fn ensure_unnamed(
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
    pub(super) fn ensure_prepared(
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
    pub(super) fn make_room(&mut self, conn: &mut ConnState, out: &mut BytesMut) {
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
}
