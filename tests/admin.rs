//! End to end: the admin endpoint against what a hostile web page or a slow client does.
//! (Slow tests: each starts pgtide and Postgres.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// One raw HTTP/1.1 request; the status code of the answer.
fn post(pgtide: &Pgtide, path: &str, extra_headers: &str) -> u16 {
    let mut tcp = TcpStream::connect(("127.0.0.1", pgtide.admin_port)).unwrap();
    write!(
        tcp,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n{extra_headers}\r\n",
        pgtide.admin_port
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

#[test]
fn a_page_of_another_origin_cannot_pause_or_resume() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "min_acu = 0\nauto_pause_after = \"1h\"".into(),
        ..Default::default()
    });
    // What a form or fetch() on http://evil.example sends to a loopback admin endpoint.
    for headers in [
        "Origin: http://evil.example\r\n",
        "Origin: null\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
        "Origin: http://127.0.0.1:1\r\n",
    ] {
        assert_eq!(
            post(&pgtide, "/clusters/main/pause", headers),
            403,
            "{headers}"
        );
        assert_eq!(pgtide.cluster_status()["state"], "running", "{headers}");
    }
    // The dashboard's own buttons (same origin) and tools without an Origin may.
    let same = format!(
        "Origin: http://127.0.0.1:{}\r\nSec-Fetch-Site: same-origin\r\n",
        pgtide.admin_port
    );
    assert_eq!(post(&pgtide, "/clusters/main/pause", &same), 200);
    pgtide.wait_state("paused", Duration::from_secs(30));
    assert_eq!(post(&pgtide, "/clusters/main/resume", ""), 200);
    pgtide.wait_state("running", Duration::from_secs(30));
}

#[test]
fn a_client_that_never_finishes_its_request_is_disconnected() {
    let pgtide = Pgtide::start();
    let mut tcp = TcpStream::connect(("127.0.0.1", pgtide.admin_port)).unwrap();
    tcp.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    // The server answers 408 or just closes; either way the connection ends on its side.
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("still open after {:?}: {e}", started.elapsed()),
        }
    }
    // And the endpoint still serves everyone else.
    assert_eq!(pgtide.status()["clusters"][0]["name"], "main");
}
