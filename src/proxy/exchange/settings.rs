//! Session settings follow their client: what a connection is given before a client's
//! transaction ([`Exchange::begin`]), and what is read back after a transaction that may have
//! changed them ([`READ_BACK`], `finish_read_back`), which also tells whether state that cannot
//! follow a client was left on the connection.

use std::collections::BTreeMap;

use bytes::BytesMut;

use super::{ClientState, ConnState, Entry, Exchange, Outbox, Own};
use crate::proxy::sql;
use crate::wire;

/// The name, as seen by pg_settings, and value of each session setting.
pub type Settings = BTreeMap<String, String>;

/// Settings that are never carried to another connection: a role cannot follow a client.
pub(super) const NOT_CARRIED: [&str; 2] = ["role", "session_authorization"];

/// The query that reads back a connection's session settings, and two last rows: `#leaks`
/// counts session state that cannot follow a client (a LISTEN, a WITH HOLD cursor, an advisory
/// lock, a temporary table, an SQL-level prepared statement, a role or session user other than
/// the one the connection logged in as: pg_stat_activity keeps the login user), and
/// `#prepared` counts the protocol-level statements, which must be the ones pgtide prepared
/// (code that ran DEALLOCATE would have dropped other clients' statements).
pub(super) const READ_BACK: &str = "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings \
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

impl Exchange {
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
    pub(super) fn own_query(
        &mut self,
        own: Own,
        sql: &str,
        conn: &mut ConnState,
        to_server: &mut Outbox,
    ) {
        conn.unnamed = None;
        let mut out = BytesMut::new();
        wire::query(&mut out, sql);
        to_server.push(out.freeze());
        self.queue.push_back(Entry::Query {
            own: Some(own),
            refused: None,
        });
    }

    pub(super) fn finish_read_back(&mut self, client: &mut ClientState, conn: &mut ConnState) {
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
