//! The proxy's hot path without sockets: what pgtide's own code costs per message and per MB,
//! apart from the system calls that dominate a real run (`scripts/bench.sh syscalls` measures
//! those).
//!
//! - **session mode**: the [`BackendTap`] that follows the compute's framing in every read
//!   (ReadyForQuery for the load counters, role changes for the verifiers);
//! - **transaction mode**: the [`Exchange`] taking a client's query and the compute's reply
//!   (what it forwards, what it swallows, when the connection is free).
//!
//! - **the statement check** of transaction mode ([`pgtide::proxy::sql::classify`]).
//!
//! Run: `cargo bench --bench hot_path` (criterion; reports go to target/criterion).

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;

use pgtide::cluster::LoadCounters;
use pgtide::proxy::exchange::{ClientState, ConnState, Exchange, Outbox};
use pgtide::proxy::relay::{BackendTap, TapEvents};
use pgtide::wire;

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::put_message(&mut out, kind, body);
    out.to_vec()
}

fn data_row(value: &[u8]) -> Vec<u8> {
    let mut body = 1i16.to_be_bytes().to_vec();
    body.extend_from_slice(&(value.len() as i32).to_be_bytes());
    body.extend_from_slice(value);
    message(b'D', &body)
}

/// What Postgres answers to pgbench's select-only query: RowDescription, DataRow,
/// CommandComplete, ReadyForQuery (4 messages, 66 bytes).
fn select_only_reply() -> Vec<u8> {
    let mut field = b"abalance\0".to_vec();
    field.extend_from_slice(&[
        0, 0, 0x40, 0x06, 0, 3, 0, 0, 0, 23, 0, 4, 0xff, 0xff, 0xff, 0xff, 0, 0,
    ]);
    let mut description = 1i16.to_be_bytes().to_vec();
    description.extend_from_slice(&field);
    let mut reply = message(b'T', &description);
    reply.extend(data_row(b"-2315"));
    reply.extend(message(b'C', b"SELECT 1\0"));
    reply.extend(message(b'Z', b"I"));
    reply
}

/// A large result: about 1 MiB of 100-byte DataRows, then CommandComplete and ReadyForQuery.
fn one_mib_result() -> Vec<u8> {
    let row = data_row(&[b'x'; 89]);
    let mut reply = Vec::with_capacity(1 << 20);
    while reply.len() + row.len() < 1 << 20 {
        reply.extend_from_slice(&row);
    }
    reply.extend(message(b'C', b"SELECT 10000\0"));
    reply.extend(message(b'Z', b"I"));
    reply
}

fn tap(c: &mut Criterion) {
    let mut group = c.benchmark_group("session tap");
    let reply = select_only_reply();
    group.throughput(Throughput::Elements(4));
    group.bench_function("select-only reply (4 messages)", |b| {
        let mut tap = BackendTap::default();
        b.iter(|| {
            let mut events = TapEvents::default();
            tap.scan(black_box(&reply), &mut events);
            events
        })
    });
    let big = one_mib_result();
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.bench_function("1 MiB result in 32 KiB reads", |b| {
        let mut tap = BackendTap::default();
        b.iter(|| {
            let mut events = TapEvents::default();
            for chunk in big.chunks(32 * 1024) {
                tap.scan(black_box(chunk), &mut events);
            }
            events
        })
    });
    group.finish();
}

/// One transaction through the exchange: the client's Query in, the compute's reply out.
fn round_trip(query: &[u8], reply: &[u8], chunk: usize, counters: &LoadCounters) -> usize {
    let mut exchange = Exchange::default();
    let mut client = ClientState::default();
    let mut conn = ConnState::default();
    let mut to_server = Outbox::default();
    let mut to_client = Outbox::default();
    exchange.begin(&client, &mut conn, &mut to_server);
    let mut client_in = BytesMut::from(query);
    while let Some(message) = wire::next_message(&mut client_in, 1 << 30).expect("framed") {
        exchange.client_message(
            &mut client,
            &mut conn,
            message,
            &mut to_server,
            &mut to_client,
            counters,
        );
    }
    let mut server_in = BytesMut::with_capacity(chunk);
    for part in reply.chunks(chunk) {
        server_in.extend_from_slice(part);
        exchange
            .server_bytes(
                &mut server_in,
                &mut client,
                &mut conn,
                &mut to_server,
                &mut to_client,
                counters,
            )
            .expect("a well-formed reply");
    }
    assert!(exchange.is_done(), "the reply ends the transaction");
    to_client.len()
}

fn transaction(c: &mut Criterion) {
    let counters = LoadCounters::new();
    let mut group = c.benchmark_group("transaction exchange");
    let query = message(
        b'Q',
        b"SELECT abalance FROM pgbench_accounts WHERE aid = 4711;\0",
    );
    let reply = select_only_reply();
    group.throughput(Throughput::Elements(5));
    group.bench_function("select-only query and reply (5 messages)", |b| {
        b.iter(|| round_trip(black_box(&query), black_box(&reply), 32 * 1024, &counters))
    });
    let big = one_mib_result();
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.bench_function("1 MiB result in 32 KiB reads", |b| {
        b.iter_batched(
            || big.clone(),
            |big| round_trip(&query, &big, 32 * 1024, &counters),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Transaction mode judges every simple query's text (and every Parse) for session state that
/// cannot follow a client; most queries are passed on a substring search alone, those with a
/// `(` are tokenized to tell a built-in or a keyword from a call of the user's code.
fn classify(c: &mut Criterion) {
    let mut group = c.benchmark_group("transaction-mode statement check");
    for (what, text) in [
        (
            "select-only (no tokenizing)",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
        ),
        (
            "tpcb-like INSERT (tokenized)",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 4711, -1234, CURRENT_TIMESTAMP);",
        ),
        (
            "a call of a user function",
            "SELECT app.transfer(4711, 4712, 100.00::numeric(10, 2));",
        ),
    ] {
        group.bench_function(what, |b| {
            b.iter(|| pgtide::proxy::sql::classify(black_box(text), true))
        });
    }
    group.finish();
}

criterion_group!(benches, tap, transaction, classify);
criterion_main!(benches);
