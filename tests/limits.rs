//! End to end: the proxy's bounds on connections that have not logged in yet, against what a
//! careless or hostile client does — open a socket and send nothing, or open hundreds of them.
//! A socket is not a client until it authenticated: it holds one of [`MAX_HANDSHAKES`] slots
//! for at most [`STARTUP_TIMEOUT`], and is never counted in `clients`.
//! (Slow tests: each starts pgtide and Postgres; the first waits out the 15 s startup timeout.)

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use pgtide::proxy::handshake::STARTUP_TIMEOUT;
use pgtide::proxy::MAX_HANDSHAKES;

/// How `read` on a socket that pgtide should close ended.
#[derive(Debug, PartialEq)]
enum ReadEnd {
    /// pgtide closed it (EOF or reset).
    Closed,
    /// Nothing arrived within the read timeout: still open.
    StillOpen,
}

fn read_until_closed(tcp: &mut TcpStream, timeout: Duration) -> ReadEnd {
    tcp.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return ReadEnd::Closed,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return ReadEnd::Closed,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return ReadEnd::StillOpen
            }
            Err(e) => panic!("reading the idle socket: {e}"),
        }
    }
}

/// Slow (waits out the 15 s STARTUP_TIMEOUT): a socket that connects and sends nothing is
/// closed by pgtide once the startup timeout is up, and never counts as a client meanwhile.
#[test]
fn slow_a_silent_socket_is_closed_after_the_startup_timeout() {
    let pgtide = Pgtide::start();
    let mut silent = TcpStream::connect(("127.0.0.1", pgtide.port)).unwrap();
    let opened = Instant::now();
    // Half the timeout: still open (the bound is the timeout, not an early drop)…
    assert_eq!(
        read_until_closed(&mut silent, STARTUP_TIMEOUT / 2),
        ReadEnd::StillOpen,
        "closed after {:?}, before the startup timeout",
        opened.elapsed()
    );
    assert_eq!(
        pgtide.cluster("main").clients,
        0,
        "a socket is not a client"
    );
    // …and closed by pgtide once it is up (slack for a loaded machine).
    assert_eq!(
        read_until_closed(&mut silent, STARTUP_TIMEOUT + Duration::from_secs(10)),
        ReadEnd::Closed,
        "still open {:?} after connecting",
        opened.elapsed()
    );
    assert!(
        opened.elapsed() >= STARTUP_TIMEOUT,
        "{:?}",
        opened.elapsed()
    );
    // The cluster is unharmed: a real client logs in.
    assert_eq!(pgtide.sql("SELECT 1"), "1");
}

/// MAX_HANDSHAKES sockets that connect and say nothing fill the handshake slots: the next
/// connection is refused at once with 53300 and a message that says why (by a driver and by
/// psql, which asks for TLS first), and once the silent sockets go, psql logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_slots_once_full_refuse_with_53300_then_free_up() {
    let pgtide = Pgtide::start();
    let silent: Vec<TcpStream> = (0..MAX_HANDSHAKES)
        .map(|_| TcpStream::connect(("127.0.0.1", pgtide.port)).unwrap())
        .collect();

    // pgtide accepts in order, so by the time it accepts this one the silent ones hold every
    // slot (each for STARTUP_TIMEOUT, far longer than this takes).
    let refused = pgtide
        .connect_as("postgres", PASSWORD, "postgres")
        .await
        .expect_err("a connection past MAX_HANDSHAKES was refused");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS),
        "{refused:?}"
    );
    let message = refused.as_db_error().map(|e| e.message().to_string());
    assert_eq!(
        message.as_deref(),
        Some(
            format!(
                "sorry, too many connections are starting at once \
                 ({MAX_HANDSHAKES} are still logging in); try again shortly"
            )
            .as_str()
        ),
        "{refused:?}"
    );
    // The rest is blocking (psql, /status): off the runtime's worker, borrowing pgtide.
    tokio::task::block_in_place(|| {
        let why = psql_bounded(pgtide.port, "SELECT 1", Duration::from_secs(10))
            .expect_err("psql logged in past MAX_HANDSHAKES");
        assert!(
            why.contains("too many connections are starting at once"),
            "{why}"
        );
        assert_eq!(
            pgtide.cluster("main").clients,
            0,
            "sockets in their handshake are not clients"
        );

        drop(silent);
        // pgtide sees each socket close and gives its slot back: psql gets in within a
        // bounded poll.
        let mut last = Err(String::new());
        let logged_in = wait_until(Duration::from_secs(30), || {
            last = psql_bounded(pgtide.port, "SELECT 1", Duration::from_secs(10));
            last.as_deref() == Ok("1")
        });
        assert!(logged_in, "psql never logged in: {last:?}");
    });
}
