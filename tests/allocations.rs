//! Transaction mode forwards a reply without an allocation per message: what it allocates for a
//! transaction does not grow with the rows in the reply. Counted with a global allocator of
//! this test binary's own (a count, not a time: it holds on any machine, loaded or not).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use pgtide::cluster::LoadCounters;
use pgtide::proxy::exchange::{ClientState, ConnState, Exchange, Outbox};
use pgtide::wire;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::put_message(&mut out, kind, body);
    out.to_vec()
}

/// A reply of `rows` DataRows of 100 bytes, then CommandComplete and ReadyForQuery.
fn reply_of(rows: usize) -> Vec<u8> {
    let mut body = 1i16.to_be_bytes().to_vec();
    body.extend_from_slice(&89i32.to_be_bytes());
    body.extend_from_slice(&[b'x'; 89]);
    let row = message(b'D', &body);
    let mut reply = message(b'T', b"\0\0");
    for _ in 0..rows {
        reply.extend_from_slice(&row);
    }
    reply.extend(message(b'C', format!("SELECT {rows}\0").as_bytes()));
    reply.extend(message(b'Z', b"I"));
    reply
}

/// Allocations while one transaction goes through the exchange: the client's Query in, the
/// compute's reply out in 32 KiB reads, the bytes for the client taken off its outbox as the
/// relay would write them. The reply is made before counting starts.
fn allocations_for(rows: usize) -> usize {
    let counters = LoadCounters::new();
    let query = message(b'Q', b"SELECT * FROM t;\0");
    let reply = reply_of(rows);
    let (mut exchange, mut client, mut conn) = (
        Exchange::default(),
        ClientState::default(),
        ConnState::default(),
    );
    let (mut to_server, mut to_client) = (Outbox::default(), Outbox::default());
    let mut server_in = BytesMut::with_capacity(32 * 1024);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    exchange.begin(&client, &mut conn, &mut to_server);
    let mut client_in = BytesMut::from(&query[..]);
    while let Some(message) = wire::next_message(&mut client_in, 1 << 30).expect("framed") {
        exchange.client_message(
            &mut client,
            &mut conn,
            message,
            &mut to_server,
            &mut to_client,
            &counters,
        );
    }
    for part in reply.chunks(32 * 1024) {
        server_in.extend_from_slice(part);
        exchange
            .server_bytes(
                &mut server_in,
                &mut client,
                &mut conn,
                &mut to_server,
                &mut to_client,
                &counters,
            )
            .expect("a well-formed reply");
        to_client.clear();
    }
    assert!(exchange.is_done(), "the reply ends the transaction");
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn a_reply_costs_no_allocation_per_row() {
    allocations_for(10); // once-only work (the statement check's automaton) is not per transaction
    let small = allocations_for(10);
    let large = allocations_for(10_000);
    println!("allocations for a transaction: {small} with 10 rows, {large} with 10,000 rows (1 MiB in 32 KiB reads)");
    // Measured: 6 with 10 rows, 7 with 10,000 (31 reads). Room for a few buffers more, never one
    // per row or per read.
    assert!(
        large <= small + 8,
        "{large} allocations for 10,000 rows against {small} for 10: an allocation per message"
    );
}
