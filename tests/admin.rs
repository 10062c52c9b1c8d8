//! End to end: the admin endpoint against what a hostile web page or a slow client does.
//! (Slow tests: each starts pgtide and Postgres.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// One raw HTTP/1.1 request; the status code of the answer.
fn post(pgtide: &Pgtide, path: &str, extra_headers: &str) -> u16 {
    let host = format!("127.0.0.1:{}", pgtide.admin_port);
    request(pgtide, "POST", path, &host, extra_headers).0
}

/// One raw HTTP/1.1 request with the given `Host`, as a browser or an attacker writes it: the
/// status code and the whole answer.
fn request(
    pgtide: &Pgtide,
    method: &str,
    path: &str,
    host: &str,
    extra_headers: &str,
) -> (u16, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", pgtide.admin_port)).unwrap();
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n{extra_headers}\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    (code, answer)
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

/// DNS rebinding: a page on http://evil.example:PORT whose name the attacker then points at
/// 127.0.0.1. Its requests reach the loopback endpoint with `Host` and `Origin` both naming
/// evil.example, so they are "same origin"; without a token, the endpoint answers only to the
/// names it is known by.
#[test]
fn a_rebound_name_cannot_read_status_or_pause() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "min_acu = 0\nauto_pause_after = \"1h\"".into(),
        ..Default::default()
    });
    let evil = format!("evil.example:{}", pgtide.admin_port);
    let origin = format!("Origin: http://{evil}\r\nSec-Fetch-Site: same-origin\r\n");
    for host in ["evil.example", evil.as_str(), "localhost.evil.example"] {
        let (code, answer) = request(&pgtide, "POST", "/clusters/main/pause", host, &origin);
        assert_eq!(code, 421, "{answer}");
        assert!(answer.contains("set [admin] token"), "{answer}");
        let (code, answer) = request(&pgtide, "GET", "/status", host, &origin);
        assert_eq!(code, 421, "{answer}");
        assert!(!answer.contains("\"clusters\""), "{answer}");
    }
    assert_eq!(
        pgtide.cluster("main").state,
        pgtide::cluster::state::StateName::Running
    );
    // The names the endpoint is known by still work, from tools and the dashboard alike.
    let listen = format!("127.0.0.1:{}", pgtide.admin_port);
    for host in [
        listen.as_str(),
        "localhost",
        &format!("localhost:{}", pgtide.admin_port),
        "127.0.0.1",
    ] {
        let (code, answer) = request(&pgtide, "GET", "/status", host, "");
        assert_eq!(code, 200, "Host: {host}: {answer}");
        assert!(answer.contains("\"name\":\"main\""), "{answer}");
    }
    let dashboard = format!("Origin: http://{listen}\r\nSec-Fetch-Site: same-origin\r\n");
    let (code, answer) = request(&pgtide, "POST", "/clusters/main/pause", &listen, &dashboard);
    assert_eq!(code, 200, "{answer}");
    pgtide.wait_cluster_state(
        "main",
        pgtide::cluster::state::StateName::Paused,
        Duration::from_secs(30),
    );
}

/// A request that announces a body and never sends it all: its connection is answered 408 and
/// closed once the body's time is up, not held until the connection's lifetime ends.
#[test]
fn a_body_that_never_completes_is_cut_off() {
    use pgtide::admin::server::BODY_READ_TIMEOUT;
    let pgtide = Pgtide::start_with(Options {
        cluster: "min_acu = 0\nauto_pause_after = \"1h\"".into(),
        ..Default::default()
    });
    let mut tcp = TcpStream::connect(("127.0.0.1", pgtide.admin_port)).unwrap();
    write!(
        tcp,
        "POST /clusters/main/pause HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 100\r\n\r\n{{\"par",
        pgtide.admin_port
    )
    .unwrap();
    // Bounded by the constant: the answer must come within it (plus slack for a loaded machine),
    // far below the connection's lifetime.
    tcp.set_read_timeout(Some(BODY_READ_TIMEOUT + Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "still open after {:?}: {e}; so far {:?}",
                started.elapsed(),
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    assert!(
        started.elapsed() < pgtide::admin::server::CONNECTION_LIFETIME,
        "held for {:?}",
        started.elapsed()
    );
    // The half-sent pause did nothing, and the endpoint serves everyone else.
    assert_eq!(
        pgtide.cluster("main").state,
        pgtide::cluster::state::StateName::Running
    );
}
