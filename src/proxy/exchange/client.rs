//! What pgtide keeps of a transaction-mode client and of a pooled compute connection between
//! transactions, and the few statements it answers for a client by itself (a refusal while no
//! connection is held, DEALLOCATE, DISCARD ALL), acting on that client's statements only.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{query_text, Settings};
use crate::proxy::sql::{self, Verdict};
use crate::wire::{self, Message};

/// A client statement, as the pool knows it.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The name on compute connections: the same text and types give the same name.
    pub(super) pool_name: Arc<str>,
    /// The Parse body with the pool-wide name, to prepare it on a connection that lacks it.
    pub(super) parse_body: Bytes,
    /// Running it may change session settings (a prepared SET): each Bind of it counts so.
    pub(super) settings: bool,
}

/// What a transaction-mode client carries from one compute connection to the next.
#[derive(Debug, Default)]
pub struct ClientState {
    pub(super) statements: HashMap<Vec<u8>, Statement>,
    /// Its unnamed statement (what follows the empty name in its last unnamed Parse), which a
    /// Bind after a Sync may use on another connection, and whether it may change settings.
    pub(super) unnamed: Option<(Bytes, bool)>,
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
    pub(super) unnamed: Option<Bytes>,
}

/// What [`ClientState::answer_without_server`] made of a message.
#[derive(Debug)]
pub enum IdleAnswer {
    /// Answered here: the bytes for the client.
    Answered(Bytes),
    /// A simple query for the compute, judged already: hand the verdict to the exchange
    /// ([`super::Exchange::judged`]) with the query, so that it is not judged twice.
    Passes { settings: bool },
    /// Not a simple query: the exchange judges it.
    NotJudged,
}

impl ClientState {
    /// Answers a message that needs no compute connection when none is held (the client is
    /// idle): a refused query, DEALLOCATE, DISCARD ALL.
    pub fn answer_without_server(&mut self, message: &Message) -> IdleAnswer {
        if message.kind != b'Q' {
            return IdleAnswer::NotJudged;
        }
        let mut out = BytesMut::new();
        match sql::classify(&query_text(message.body()), true) {
            Verdict::Pass { settings } => return IdleAnswer::Passes { settings },
            Verdict::Refuse(refusal) => {
                wire::error_response(&mut out, b'E', "ERROR", "0A000", &refusal);
                wire::ready_for_query(&mut out, b'I');
            }
            Verdict::Deallocate(name) => self.deallocate(name, b'I', &mut out),
            Verdict::DiscardAll => self.discard_all(b'I', &mut out),
        }
        IdleAnswer::Answered(out.freeze())
    }

    pub(super) fn deallocate(&mut self, name: Option<String>, status: u8, out: &mut BytesMut) {
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

    pub(super) fn discard_all(&mut self, status: u8, out: &mut BytesMut) {
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

pub(super) fn aborted(out: &mut BytesMut) {
    wire::error_response(
        out,
        b'E',
        "ERROR",
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    );
    wire::ready_for_query(out, b'E');
}

pub(super) fn command_complete(out: &mut BytesMut, tag: &str) {
    let start = wire::begin_message(out, b'C');
    wire::put_cstr(out, tag.as_bytes());
    wire::end_message(out, start);
}
