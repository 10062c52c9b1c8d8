//! The exchange fed the message sequences real clients send (as pgbench `-M prepared`, asyncpg,
//! psycopg's pipelines and COPY inside an extended batch send them) and the compute's replies,
//! at any chunking: what reaches each side, and when the connection is free.

use super::*;

fn m(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::put_message(&mut out, kind, body);
    out.to_vec()
}

fn cstrs(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(part);
        out.push(0);
    }
    out
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cstrs(&[name.as_bytes(), sql.as_bytes()]);
    body.extend_from_slice(&0i16.to_be_bytes());
    m(b'P', &body)
}

fn bind(portal: &str, statement: &str) -> Vec<u8> {
    let mut body = cstrs(&[portal.as_bytes(), statement.as_bytes()]);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    m(b'B', &body)
}

fn describe(what: u8, name: &str) -> Vec<u8> {
    let mut body = vec![what];
    body.extend(cstrs(&[name.as_bytes()]));
    m(b'D', &body)
}

fn close(what: u8, name: &str) -> Vec<u8> {
    let mut body = vec![what];
    body.extend(cstrs(&[name.as_bytes()]));
    m(b'C', &body)
}

fn execute() -> Vec<u8> {
    m(b'E', &[0, 0, 0, 0, 0])
}

fn sync() -> Vec<u8> {
    m(b'S', b"")
}

fn query(sql: &str) -> Vec<u8> {
    m(b'Q', &cstrs(&[sql.as_bytes()]))
}

fn z(status: u8) -> Vec<u8> {
    m(b'Z', &[status])
}

fn complete(tag: &str) -> Vec<u8> {
    m(b'C', &cstrs(&[tag.as_bytes()]))
}

fn row(values: &[&str]) -> Vec<u8> {
    let mut body = (values.len() as i16).to_be_bytes().to_vec();
    for v in values {
        body.extend_from_slice(&(v.len() as i32).to_be_bytes());
        body.extend_from_slice(v.as_bytes());
    }
    m(b'D', &body)
}

fn error(code: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::error_response(&mut out, b'E', "ERROR", code, "failed");
    out.to_vec()
}

/// One exchange on one connection, with the client's state beside it.
struct Harness {
    exchange: Exchange,
    client: ClientState,
    conn: ConnState,
    to_server: Outbox,
    to_client: Outbox,
    server_in: BytesMut,
    counters: LoadCounters,
    /// Feed the compute's bytes this many at a time.
    chunk: usize,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            exchange: Exchange::default(),
            client: ClientState::default(),
            conn: ConnState::default(),
            to_server: Outbox::default(),
            to_client: Outbox::default(),
            server_in: BytesMut::new(),
            counters: crate::cluster::load::tests::counters(),
            chunk: usize::MAX,
        }
    }

    /// The client gets a new connection (its state carries over, the exchange does not).
    fn new_connection(&mut self) {
        assert!(self.exchange.is_done());
        self.exchange = Exchange::default();
        self.conn = ConnState::default();
        self.exchange
            .begin(&self.client, &mut self.conn, &mut self.to_server);
    }

    fn client(&mut self, messages: &[Vec<u8>]) -> Vec<Step> {
        let mut steps = Vec::new();
        for bytes in messages {
            let mut buf = BytesMut::from(&bytes[..]);
            let message = wire::next_message(&mut buf, 1 << 20).unwrap().unwrap();
            steps.push(self.exchange.client_message(
                &mut self.client,
                &mut self.conn,
                message,
                &mut self.to_server,
                &mut self.to_client,
                &self.counters,
            ));
        }
        steps
    }

    fn server(&mut self, messages: &[Vec<u8>]) {
        let bytes: Vec<u8> = messages.concat();
        for piece in bytes.chunks(self.chunk.min(bytes.len().max(1))) {
            self.server_in.extend_from_slice(piece);
            self.exchange
                .server_bytes(
                    &mut self.server_in,
                    &mut self.client,
                    &mut self.conn,
                    &mut self.to_server,
                    &mut self.to_client,
                    &self.counters,
                )
                .unwrap();
        }
    }

    /// The messages sent to the compute since the last call, as (type, body).
    fn sent(&mut self) -> Vec<(u8, Vec<u8>)> {
        drain(&mut self.to_server)
    }

    /// The types of the messages the client got since the last call.
    fn got(&mut self) -> Vec<u8> {
        drain(&mut self.to_client)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    fn got_messages(&mut self) -> Vec<(u8, Vec<u8>)> {
        drain(&mut self.to_client)
    }
}

fn drain(outbox: &mut Outbox) -> Vec<(u8, Vec<u8>)> {
    let mut buf = BytesMut::from(&outbox.concat()[..]);
    outbox.clear();
    let mut messages = Vec::new();
    while let Some(message) = wire::next_message(&mut buf, 1 << 30).unwrap() {
        messages.push((message.kind, message.body().to_vec()));
    }
    assert!(buf.is_empty(), "only whole messages are queued");
    messages
}

fn kinds(messages: &[(u8, Vec<u8>)]) -> Vec<u8> {
    messages.iter().map(|(k, _)| *k).collect()
}

const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

#[test]
fn pgbench_prepared_on_one_connection_then_another() {
    for chunk in [usize::MAX, 1, 3, 7] {
        let mut h = Harness::new();
        h.chunk = chunk;
        // PQprepare: Parse + Sync.
        h.client(&[parse("P_0", SELECT), sync()]);
        let sent = h.sent();
        assert_eq!(kinds(&sent), b"PS");
        assert!(sent[0].1.starts_with(b"pgtide_"), "pool-wide name");
        assert!(!h.exchange.is_done());
        h.server(&[m(b'1', b""), z(b'I')]);
        assert_eq!(h.got(), b"1Z");
        assert!(h.exchange.is_done());
        // PQsendQueryPrepared: Bind, Describe portal, Execute, Sync.
        let run = [bind("", "P_0"), describe(b'P', ""), execute(), sync()];
        h.client(&run);
        assert_eq!(kinds(&h.sent()), b"BDES");
        h.server(&[m(b'2', b""), m(b'T', &[0, 0])]);
        assert!(!h.exchange.is_done(), "mid-result");
        h.server(&[row(&["1"]), complete("SELECT 1")]);
        assert!(!h.exchange.is_done(), "no ReadyForQuery yet");
        h.server(&[z(b'I')]);
        assert!(h.exchange.is_done());
        assert_eq!(h.got(), b"2TDCZ");

        // The next transaction on a connection that never saw P_0: pgtide prepares it first
        // and the client sees only its own replies.
        h.new_connection();
        h.client(&run);
        assert_eq!(kinds(&h.sent()), b"PBDES");
        h.server(&[
            m(b'1', b""),
            m(b'2', b""),
            m(b'n', b""),
            complete("SELECT 0"),
        ]);
        assert!(!h.exchange.is_done());
        h.server(&[z(b'I')]);
        assert_eq!(h.got(), b"2nCZ");
        assert!(h.exchange.is_done());
        assert_eq!(h.counters.prepared_misses(), 1);
        assert_eq!(h.counters.transactions(), 3);
    }
}

#[test]
fn asyncpg_prepare_and_bind_execute() {
    let mut h = Harness::new();
    // asyncpg's prepare: Parse, Describe statement, Sync.
    h.client(&[
        parse("__asyncpg_stmt_1__", "SELECT $1::int * 3"),
        describe(b'S', "__asyncpg_stmt_1__"),
        sync(),
    ]);
    let sent = h.sent();
    assert_eq!(kinds(&sent), b"PDS");
    assert_eq!(
        &sent[1].1[1..8],
        b"pgtide_",
        "the Describe names the pool-wide statement"
    );
    h.server(&[
        m(b'1', b""),
        m(b't', &[0, 1, 0, 0, 0, 23]),
        m(b'T', &[0, 1]),
    ]);
    assert!(!h.exchange.is_done());
    h.server(&[z(b'I')]);
    assert!(h.exchange.is_done());
    assert_eq!(h.got(), b"1tTZ");
    // Bind + Execute + Sync, rows, then a second one pipelined before the first's replies.
    h.client(&[bind("", "__asyncpg_stmt_1__"), execute(), sync()]);
    h.client(&[bind("", "__asyncpg_stmt_1__"), execute(), sync()]);
    h.server(&[m(b'2', b""), row(&["3"]), complete("SELECT 1"), z(b'I')]);
    assert!(!h.exchange.is_done(), "the second one is still owed");
    h.server(&[m(b'2', b""), row(&["6"]), complete("SELECT 1"), z(b'I')]);
    assert!(h.exchange.is_done());
    assert_eq!(h.got(), b"2DCZ2DCZ");
}

#[test]
fn an_error_in_a_pipeline_skips_to_sync_and_undoes_what_was_assumed() {
    let mut h = Harness::new();
    h.client(&[parse("a", "SELECT 1"), parse("b", "SELECT 2"), sync()]);
    h.server(&[m(b'1', b""), m(b'1', b""), z(b'I')]);
    h.got();
    h.sent();
    // On a new connection: a's Execute fails, so the Parse pgtide slipped in for b is skipped.
    h.new_connection();
    h.client(&[bind("", "a"), execute(), bind("", "b"), execute(), sync()]);
    assert_eq!(kinds(&h.sent()), b"PBEPBES");
    assert_eq!(h.conn.prepared.len(), 2);
    h.server(&[m(b'1', b""), m(b'2', b""), error("22012")]);
    assert!(!h.exchange.is_done());
    h.server(&[z(b'I')]);
    assert!(
        h.exchange.is_done(),
        "the skipped replies are not waited for"
    );
    assert_eq!(h.got(), b"2EZ");
    assert_eq!(
        h.conn.prepared.len(),
        1,
        "b was never prepared on this connection"
    );
    // b is prepared again next time.
    h.client(&[bind("", "b"), execute(), sync()]);
    assert_eq!(kinds(&h.sent()), b"PBES");
}

#[test]
fn an_error_without_a_sync_yet_makes_the_compute_skip_what_follows() {
    let mut h = Harness::new();
    h.client(&[
        parse("", "SELECT 1/0"),
        bind("", ""),
        execute(),
        m(b'H', b""),
    ]);
    h.server(&[m(b'1', b""), m(b'2', b""), error("22012")]);
    assert!(!h.exchange.is_done(), "the compute skips until a Sync");
    // Sent while the compute skips: nothing is owed for them.
    h.client(&[bind("", ""), execute()]);
    assert!(!h.exchange.is_done());
    h.client(&[sync()]);
    h.server(&[z(b'I')]);
    assert!(h.exchange.is_done());
}

#[test]
fn psycopg_pipeline_with_many_statements_and_one_sync() {
    let mut h = Harness::new();
    let mut messages = Vec::new();
    for i in 0..50 {
        messages.push(parse(&format!("_pg3_{i}"), &format!("SELECT {i}")));
        messages.push(bind("", &format!("_pg3_{i}")));
        messages.push(describe(b'P', ""));
        messages.push(execute());
    }
    messages.push(sync());
    h.client(&messages);
    let mut replies = Vec::new();
    for i in 0..50 {
        replies.extend([
            m(b'1', b""),
            m(b'2', b""),
            m(b'T', &[0, 1]),
            row(&[&i.to_string()]),
            complete("SELECT 1"),
        ]);
    }
    h.server(&replies);
    assert!(!h.exchange.is_done());
    h.server(&[z(b'I')]);
    assert!(h.exchange.is_done());
    assert_eq!(h.got().len(), 50 * 5 + 1);
}

#[test]
fn copy_inside_an_extended_batch_ignores_the_syncs_sent_during_it() {
    // All at once: the first Sync arrives while the compute is in COPY and is ignored.
    let mut h = Harness::new();
    h.client(&[
        parse("", "COPY t FROM STDIN"),
        bind("", ""),
        execute(),
        sync(),
        m(b'd', b"1\n"),
        m(b'c', b""),
        sync(),
    ]);
    h.server(&[m(b'1', b""), m(b'2', b""), m(b'G', &[0, 0, 0])]);
    assert!(!h.exchange.is_done());
    h.server(&[complete("COPY 1")]);
    assert!(!h.exchange.is_done());
    h.server(&[z(b'I')]);
    assert!(h.exchange.is_done(), "one ReadyForQuery for the two Syncs");

    // The data after CopyInResponse, as libpq sends it.
    let mut h = Harness::new();
    h.client(&[
        parse("", "COPY t FROM STDIN"),
        bind("", ""),
        execute(),
        sync(),
    ]);
    h.server(&[m(b'1', b""), m(b'2', b""), m(b'G', &[0, 0, 0])]);
    h.client(&[m(b'd', b"1\n"), m(b'c', b""), sync()]);
    assert!(!h.exchange.is_done());
    h.server(&[complete("COPY 1"), z(b'I')]);
    assert!(h.exchange.is_done());

    // In a simple query.
    let mut h = Harness::new();
    h.client(&[query("COPY t FROM STDIN")]);
    h.server(&[m(b'G', &[0, 0, 0])]);
    h.client(&[m(b'd', b"1\n"), m(b'c', b"")]);
    assert!(!h.exchange.is_done());
    h.server(&[complete("COPY 1"), z(b'I')]);
    assert!(h.exchange.is_done());
    assert_eq!(h.got(), b"GCZ");
}

#[test]
fn a_failed_parse_is_not_recorded() {
    let mut h = Harness::new();
    h.client(&[parse("s1", "SELEC oops"), sync()]);
    h.server(&[error("42601"), z(b'I')]);
    assert!(h.exchange.is_done());
    assert!(h.conn.prepared.is_empty());
    // The client's Bind of it names it as the client did: Postgres says it does not exist.
    h.client(&[bind("", "s1"), execute(), sync()]);
    let sent = h.sent();
    assert_eq!(kinds(&sent), b"PSBES");
    assert_eq!(sent[2].1, bind("", "s1")[5..].to_vec());
}

#[test]
fn unnamed_statements_and_extended_messages_hold_the_connection_until_sync() {
    let mut h = Harness::new();
    h.client(&[parse("", "SELECT 1"), describe(b'S', ""), m(b'H', b"")]);
    h.server(&[m(b'1', b""), m(b't', &[0, 0]), m(b'T', &[0, 1])]);
    assert!(
        !h.exchange.is_done(),
        "its implicit transaction is open until a Sync"
    );
    h.client(&[bind("", ""), execute(), sync()]);
    h.server(&[m(b'2', b""), row(&["1"]), complete("SELECT 1"), z(b'I')]);
    assert!(h.exchange.is_done());
}

#[test]
fn deallocate_and_discard_all_touch_only_the_clients_statements() {
    let mut h = Harness::new();
    h.client(&[parse("P_0", SELECT), sync()]);
    h.server(&[m(b'1', b""), z(b'I')]);
    h.got();
    h.sent();
    assert_eq!(h.conn.prepared.len(), 1);
    // Answered by pgtide: nothing reaches the shared connection.
    assert_eq!(h.client(&[query("DEALLOCATE ALL")]), vec![Step::Taken]);
    assert!(h.sent().is_empty());
    let got = h.got_messages();
    assert_eq!(kinds(&got), b"CZ");
    assert_eq!(got[0].1, b"DEALLOCATE ALL\0");
    assert_eq!(h.conn.prepared.len(), 1, "other clients keep using it");
    // Binding it now names P_0 as the client does (and Postgres would say it does not exist).
    h.client(&[bind("", "P_0"), sync()]);
    assert_eq!(&h.sent()[0].1[..4], b"\0P_0");
    h.server(&[error("26000"), z(b'I')]);
    h.got();

    h.client(&[parse("P_0", SELECT), sync()]);
    h.server(&[m(b'1', b""), z(b'I')]);
    h.got();
    h.sent();
    assert_eq!(h.client(&[query("DISCARD ALL")]), vec![Step::Taken]);
    assert!(h.sent().is_empty());
    assert_eq!(h.got(), b"CZ");
    assert_eq!(h.conn.prepared.len(), 1);

    // While replies are owed it waits; in a transaction, DISCARD ALL is refused as by Postgres.
    h.client(&[query("BEGIN")]);
    let steps = h.client(&[query("DISCARD ALL")]);
    assert!(matches!(steps[0], Step::Wait(_)));
    h.server(&[complete("BEGIN"), z(b'T')]);
    h.got();
    h.client(&[query("DISCARD ALL")]);
    let got = h.got_messages();
    assert_eq!(kinds(&got), b"EZ");
    assert_eq!(wire::error_field(&got[0].1, b'C'), Some(&b"25001"[..]));
    assert_eq!(got[1].1, b"E");
}

#[test]
fn a_clients_close_of_a_statement_keeps_it_on_the_connection() {
    let mut h = Harness::new();
    h.client(&[parse("s", "SELECT 1"), sync()]);
    h.server(&[m(b'1', b""), z(b'I')]);
    h.sent();
    h.got();
    h.client(&[close(b'S', "s"), sync()]);
    let sent = h.sent();
    assert_eq!(sent[0].1, [&b"P"[..], NO_PORTAL, b"\0"].concat());
    h.server(&[m(b'3', b""), z(b'I')]);
    assert_eq!(h.got(), b"3Z");
    assert_eq!(h.conn.prepared.len(), 1);
    assert!(h.exchange.is_done());
}

#[test]
fn refused_statements_get_0a000_in_order_and_in_the_transactions_state() {
    let mut h = Harness::new();
    // Idle and nothing owed: answered at once.
    h.client(&[query("SET ROLE admin")]);
    assert!(h.sent().is_empty());
    let got = h.got_messages();
    assert_eq!(kinds(&got), b"EZ");
    assert_eq!(wire::error_field(&got[0].1, b'C'), Some(&b"0A000"[..]));
    // Pipelined behind a query: sent as a failing query, its error replaced, in order.
    h.client(&[query("BEGIN"), query("SELECT 1; LISTEN x")]);
    let sent = h.sent();
    assert_eq!(sent[1].1, [REFUSED_SQL, b"\0"].concat());
    h.server(&[complete("BEGIN"), z(b'T'), error("42601"), z(b'E')]);
    let got = h.got_messages();
    assert_eq!(kinds(&got), b"CZEZ");
    assert_eq!(wire::error_field(&got[2].1, b'C'), Some(&b"0A000"[..]));
    assert_eq!(
        got[3].1, b"E",
        "the transaction is aborted, as Postgres would have it"
    );
    // Through the extended protocol.
    let mut h = Harness::new();
    h.client(&[
        parse("", "SELECT pg_advisory_lock(1)"),
        bind("", ""),
        execute(),
        sync(),
    ]);
    let sent = h.sent();
    assert!(sent[0].1.starts_with(REFUSED_NAME));
    h.server(&[error("42601"), z(b'I')]);
    let got = h.got_messages();
    assert_eq!(kinds(&got), b"EZ");
    assert_eq!(wire::error_field(&got[0].1, b'C'), Some(&b"0A000"[..]));
    assert!(h.exchange.is_done());
    assert!(h.client.statements.is_empty());
}

#[test]
fn settings_are_read_back_and_follow_the_client() {
    let mut h = Harness::new();
    h.client(&[query("SET search_path = app")]);
    h.server(&[complete("SET"), z(b'I')]);
    assert_eq!(h.got(), b"CZ");
    assert!(!h.exchange.is_done(), "the read-back is owed");
    let sent = h.sent();
    assert_eq!(sent.last().unwrap().0, b'Q');
    assert!(String::from_utf8_lossy(&sent.last().unwrap().1).contains("pg_settings"));
    h.server(&[
        m(b'T', &[0, 2]),
        row(&["search_path", "app"]),
        row(&["#leaks", "0"]),
        complete("SELECT 2"),
        z(b'I'),
    ]);
    assert!(h.got().is_empty(), "pgtide's own replies are swallowed");
    assert!(h.exchange.reusable());
    assert_eq!(
        h.client.settings.get("search_path").map(String::as_str),
        Some("app")
    );
    assert_eq!(h.conn.settings, h.client.settings);
    // Another connection gets them first, and their replies are swallowed too.
    h.new_connection();
    let sent = h.sent();
    let sql = String::from_utf8_lossy(&sent[0].1).into_owned();
    assert!(
        sql.starts_with("RESET ALL; SELECT pg_catalog.set_config('search_path', 'app', false)"),
        "{sql}"
    );
    h.client(&[query("SELECT 1")]);
    h.server(&[
        complete("RESET"),
        m(b'T', &[0, 1]),
        row(&["app"]),
        complete("SELECT 1"),
        z(b'I'),
    ]);
    assert!(h.got().is_empty());
    assert!(!h.exchange.is_done());
    h.server(&[m(b'T', &[0, 1]), row(&["1"]), complete("SELECT 1"), z(b'I')]);
    assert_eq!(h.got(), b"TDCZ");
    assert!(h.exchange.is_done());
    assert_eq!(h.conn.settings, h.client.settings);
    // A connection with the same settings gets nothing.
    h.sent();
    h.exchange = Exchange::default();
    h.exchange.begin(&h.client, &mut h.conn, &mut h.to_server);
    assert!(h.sent().is_empty());
}

#[test]
fn state_that_slipped_through_closes_the_connection() {
    let mut h = Harness::new();
    h.client(&[query("SELECT set_config('search_path', 'x', false)")]);
    h.server(&[m(b'T', &[0, 1]), row(&["x"]), complete("SELECT 1"), z(b'I')]);
    h.server(&[
        m(b'T', &[0, 2]),
        row(&["search_path", "x"]),
        row(&["#leaks", "1"]),
        complete("SELECT 2"),
        z(b'I'),
    ]);
    assert!(h.exchange.is_done());
    assert!(!h.exchange.reusable());
}

#[test]
fn statements_dropped_by_code_close_the_connection() {
    // A function ran DEALLOCATE ALL: the connection no longer has the statements pgtide
    // prepared on it for other clients, so it must not be reused.
    for (on_the_compute, reusable) in [("0", true), ("1", false)] {
        let mut h = Harness::new();
        h.client(&[query("SELECT app.reset_everything()")]);
        h.server(&[m(b'T', &[0, 1]), row(&[""]), complete("SELECT 1"), z(b'I')]);
        assert!(!h.exchange.is_done(), "a call of unknown code is read back");
        h.server(&[
            m(b'T', &[0, 2]),
            row(&["#leaks", "0"]),
            row(&["#prepared", on_the_compute]),
            complete("SELECT 2"),
            z(b'I'),
        ]);
        assert!(h.exchange.is_done());
        assert_eq!(h.exchange.reusable(), reusable, "{on_the_compute}");
    }
}

#[test]
fn large_rows_stream_through_without_being_buffered() {
    let mut h = Harness::new();
    h.client(&[query("SELECT big")]);
    let big = m(b'D', &vec![7u8; 100_000]);
    h.server_in.extend_from_slice(&big[..10]);
    let mut fed = 10;
    while fed < big.len() {
        let end = (fed + 1000).min(big.len());
        h.server_in.extend_from_slice(&big[fed..end]);
        fed = end;
        h.exchange
            .server_bytes(
                &mut h.server_in,
                &mut h.client,
                &mut h.conn,
                &mut h.to_server,
                &mut h.to_client,
                &h.counters,
            )
            .unwrap();
        assert!(h.server_in.len() < 1000, "the row is not gathered whole");
    }
    assert_eq!(h.to_client.concat(), big);
}

#[test]
fn hostile_lengths_from_the_compute_are_errors() {
    let mut h = Harness::new();
    h.client(&[query("SELECT 1")]);
    h.server_in.extend_from_slice(&[b'D', 0, 0, 0, 1]);
    assert!(h
        .exchange
        .server_bytes(
            &mut h.server_in,
            &mut h.client,
            &mut h.conn,
            &mut h.to_server,
            &mut h.to_client,
            &h.counters,
        )
        .is_err());
}

#[test]
fn asyncpg_prepare_with_flush_holds_until_pgtide_syncs_it() {
    let mut h = Harness::new();
    h.client(&[
        parse("__asyncpg_stmt_1__", "SELECT 1"),
        describe(b'S', "__asyncpg_stmt_1__"),
        m(b'H', b""),
    ]);
    h.server(&[m(b'1', b""), m(b't', &[0, 0]), m(b'T', &[0, 1])]);
    assert!(!h.exchange.is_done(), "its implicit transaction is open");
    assert!(h.exchange.idle_unsynced());
    h.sent();
    h.exchange.sync_now(&mut h.to_server);
    assert_eq!(kinds(&h.sent()), b"S");
    h.server(&[z(b'I')]);
    assert_eq!(h.got(), b"1tT", "pgtide's own ReadyForQuery is swallowed");
    assert!(h.exchange.is_done());
    assert_eq!(h.counters.transactions(), 0);
}

#[test]
fn an_unnamed_statement_follows_the_client_across_a_sync() {
    let mut h = Harness::new();
    h.client(&[parse("", "SELECT $1::int"), describe(b'S', ""), sync()]);
    h.server(&[m(b'1', b""), m(b't', &[0, 0]), m(b'T', &[0, 1]), z(b'I')]);
    h.got();
    h.sent();
    h.new_connection();
    h.client(&[bind("", ""), execute(), sync()]);
    let sent = h.sent();
    assert_eq!(kinds(&sent), b"PBES", "parsed again where it is missing");
    assert_eq!(sent[0].1, parse("", "SELECT $1::int")[5..].to_vec());
    h.server(&[
        m(b'1', b""),
        m(b'2', b""),
        row(&["1"]),
        complete("SELECT 1"),
        z(b'I'),
    ]);
    assert_eq!(h.got(), b"2DCZ");
    // Where it is the connection's own, nothing is added.
    h.client(&[bind("", ""), execute(), sync()]);
    assert_eq!(kinds(&h.sent()), b"BES");
}

#[test]
fn a_prepared_set_run_again_is_read_back_again() {
    let mut h = Harness::new();
    h.client(&[parse("_pg3_0", "SET search_path = public"), sync()]);
    h.server(&[m(b'1', b""), z(b'I')]);
    h.server(&[
        m(b'T', &[0, 2]),
        row(&["#leaks", "0"]),
        complete("SELECT 1"),
        z(b'I'),
    ]);
    assert!(h.exchange.is_done());
    h.sent();
    // Only a Bind this time: it still changes a setting.
    h.client(&[bind("", "_pg3_0"), execute(), sync()]);
    h.server(&[m(b'2', b""), complete("SET"), z(b'I')]);
    assert!(!h.exchange.is_done(), "read back again");
    assert!(String::from_utf8_lossy(&h.sent().last().unwrap().1).contains("pg_settings"));
}

#[test]
fn role_ddl_marks_the_verifiers_stale_once_committed() {
    let mut h = Harness::new();
    h.client(&[query("BEGIN; CREATE ROLE app LOGIN PASSWORD 'x'")]);
    h.server(&[complete("BEGIN"), complete("CREATE ROLE"), z(b'T')]);
    assert!(!h.counters.roles_pending(), "not committed yet");
    h.client(&[query("COMMIT")]);
    h.server(&[complete("COMMIT"), z(b'I')]);
    assert!(h.counters.roles_pending());
    assert_eq!(h.got(), b"CCZCZ");
}

#[test]
fn reset_returns_to_the_startup_value_as_in_postgres() {
    let mut h = Harness::new();
    h.client.startup_settings =
        Settings::from([("application_name".to_string(), "app".to_string())]);
    h.client.settings = h.client.startup_settings.clone();
    h.conn.settings = h.client.settings.clone();
    h.client(&[query("RESET ALL")]);
    h.server(&[complete("RESET"), z(b'I')]);
    // The connection went to the server's default: nothing of the client's is left on it.
    h.server(&[
        m(b'T', &[0, 2]),
        row(&["#leaks", "0"]),
        complete("SELECT 1"),
        z(b'I'),
    ]);
    assert_eq!(h.client.settings, h.client.startup_settings);
    assert!(h.conn.settings.is_empty());
    assert!(
        !h.exchange.is_done(),
        "the startup value is given back at once"
    );
    let sql = String::from_utf8_lossy(&h.sent().last().unwrap().1).into_owned();
    assert!(
        sql.contains("set_config('application_name', 'app', false)"),
        "{sql}"
    );
    h.server(&[
        complete("RESET"),
        m(b'T', &[0, 1]),
        row(&["app"]),
        complete("SELECT 1"),
        z(b'I'),
    ]);
    assert!(h.exchange.is_done());
    assert_eq!(h.conn.settings, h.client.settings);
    assert_eq!(h.got(), b"CZ");
}
