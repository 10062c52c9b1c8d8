//! End to end: what careless clients and attackers do, each against a real pgtide and Postgres:
//! probes and idle sockets, DISCARD ALL beside prepared statements, session state in
//! transaction mode, Terminate right after a COMMIT, large pipelines and slow readers,
//! logins that never start a backend, password changes by any route, channel binding, and
//! cancel requests inside TLS.

mod common;
mod raw;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use raw::Raw;

fn pooled(extra: &str) -> Pgtide {
    Pgtide::start_with(Options {
        cluster: format!("pool_mode = \"transaction\"\nmax_acu = 1\n{extra}"),
        ..Default::default()
    })
}

/// A load balancer's health check (a TCP connect every half second) and `pg_isready` every
/// second: the cluster still pauses after `auto_pause_after`, and no probe counts as a client.
#[test]
fn tcp_probes_and_pg_isready_never_keep_a_cluster_awake() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "auto_pause_after = \"4s\"".into(),
        ..Default::default()
    });
    let port = pgtide.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut probes = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && probes < 200 {
                drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
                if probes % 2 == 0 {
                    let ready = Command::new("pg_isready")
                        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "5"])
                        .output()
                        .unwrap();
                    assert!(ready.status.success(), "{ready:?}");
                }
                probes += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            probes
        }
    });
    let started = Instant::now();
    let mut max_clients = 0;
    let paused = wait_until(Duration::from_secs(30), || {
        let status = pgtide.cluster_status();
        max_clients = max_clients.max(status["clients"].as_u64().unwrap());
        status["state"] == "paused"
    });
    assert!(
        paused,
        "still {} after {:?}",
        pgtide.cluster_status()["state"],
        started.elapsed()
    );
    // Probes go on while paused: they do not resume it.
    let stays = !wait_until(Duration::from_secs(3), || {
        pgtide.cluster_status()["state"] != "paused"
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let probes = prober.join().unwrap();
    assert!(probes >= 8, "{probes} probes");
    assert!(stays, "a probe resumed the cluster");
    assert_eq!(max_clients, 0, "a probe was counted as a client");
}

/// Sockets that never finish their handshake take no client slot: real clients still get in
/// up to `max_client_connections`, and the one past it gets 53300.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_do_not_fill_max_client_connections() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "max_client_connections = 2".into(),
        ..Default::default()
    });
    let idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", pgtide.port)).unwrap())
        .collect();
    let mut half = TcpStream::connect(("127.0.0.1", pgtide.port)).unwrap();
    half.write_all(&[0, 0, 0]).unwrap();
    let a = pgtide.connect().await;
    let b = pgtide.connect().await;
    a.simple_query("SELECT 1").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    assert_eq!(pgtide.cluster_status()["clients"], 2);
    let third = pgtide
        .connect_as("postgres", PASSWORD, "postgres")
        .await
        .unwrap_err();
    assert_eq!(third.code().unwrap().code(), "53300", "{third}");
    drop(idle);
}

/// One client looping DISCARD ALL and DEALLOCATE ALL while pgbench -M prepared runs: each acts
/// on its own client's statements, and pgbench has no failed transaction.
#[test]
fn discard_all_from_one_client_leaves_the_others_statements_alone() {
    let pgtide = pooled("");
    let (ok, out) = pgbench(pgtide.port, &["-i", "-q"]);
    assert!(ok, "{out}");
    let url = pgtide.url("postgres", PASSWORD, "postgres");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let discarder = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                let mut rounds = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && rounds < 20000 {
                    client.simple_query("DISCARD ALL").await.unwrap();
                    client.simple_query("DEALLOCATE ALL").await.unwrap();
                    rounds += 1;
                }
                rounds
            })
        }
    });
    let (ok, out) = pgbench(
        pgtide.port,
        &["-S", "-M", "prepared", "-c", "4", "-j", "4", "-t", "500"],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = discarder.join().unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    assert!(rounds > 10, "{rounds} rounds of DISCARD ALL");
}

fn shown(rows: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

/// Settings follow their client however they were made (SET, set_config, the startup packet's
/// options); what cannot follow is refused however it is sent; what slips through anyway is
/// not handed to the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_follows_its_client_or_is_refused() {
    let pgtide = pooled("");
    let setup = pgtide.connect().await;
    setup
        .batch_execute(
            "CREATE SCHEMA s1; CREATE TABLE s1.t (v text); INSERT INTO s1.t VALUES ('in s1')",
        )
        .await
        .unwrap();
    let a = pgtide.connect().await;
    let b = pgtide.connect().await;
    let c = pgtide.connect().await;
    a.simple_query("SELECT set_config('search_path', 's1', false)")
        .await
        .unwrap();
    // Startup parameters follow their client too.
    let d = pgtide
        .connect_configured(|config| {
            config
                .options("-c statement_timeout=4321")
                .application_name("startup-app");
        })
        .await
        .unwrap();
    for _ in 0..8 {
        let v: String = a.query_one("SELECT v FROM t", &[]).await.unwrap().get(0);
        assert_eq!(v, "in s1");
        assert!(
            b.query_one("SELECT v FROM t", &[]).await.is_err(),
            "b sees no s1"
        );
        let timeout: String = d
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(timeout, "4321ms");
        let app: String = d
            .query_one("SHOW application_name", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(app, "startup-app");
        let other: String = c
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(other, "0");
    }
    // A startup setting the compute refuses fails the login, as Postgres does.
    let refused = pgtide
        .connect_configured(|config| {
            config
                .options("-c statement_timeout=nonsense")
                .application_name("startup-app");
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code().unwrap().code(), "22023", "{refused}");

    // Refused whichever way it comes.
    for sql in [
        "SELECT 1; SET ROLE postgres",
        "SELECT set_config('role', 'postgres', false)",
        "SELECT 1 AS x INTO TEMP leak",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "DO $$ BEGIN PERFORM pg_advisory_lock(1); END $$",
        "SET SESSION AUTHORIZATION postgres",
    ] {
        let err = a.simple_query(sql).await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "0A000", "{sql}: {err}");
    }
    let err = a.prepare("SET ROLE postgres").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000", "through Parse: {err}");
    // Inside a transaction the refusal aborts it, as any error would.
    a.batch_execute("BEGIN").await.unwrap();
    assert!(a.simple_query("LISTEN x").await.is_err());
    let err = a.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "25P02");
    a.batch_execute("ROLLBACK").await.unwrap();

    // A temporary table made where the words do not show it: the connection is not reused.
    a.batch_execute("DO $$ BEGIN EXECUTE format('CREATE %s TABLE leak (a int)', 'TEMP'); END $$")
        .await
        .unwrap();
    for _ in 0..8 {
        let rows = b
            .simple_query("SELECT to_regclass('pg_temp.leak')::text")
            .await
            .unwrap();
        assert_eq!(shown(&rows), None, "another client's temporary table");
    }
}

/// Code pgtide cannot read (a function of the user's, a quoted function name, a role at login)
/// leaves nothing on a pooled connection for the next client: settings changed inside a
/// function follow their client, statements dropped by code do not fail other clients, and a
/// connection left with state that cannot follow a client is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_run_by_a_client_leaves_nothing_for_the_next_one() {
    let pgtide = pooled("");
    let setup = pgtide.connect().await;
    setup
        .batch_execute(
            "CREATE SCHEMA s1; CREATE TABLE s1.t (v text); INSERT INTO s1.t VALUES ('in s1');
             CREATE ROLE someone;
             CREATE FUNCTION public.use_s1() RETURNS text LANGUAGE plpgsql AS
               $$ BEGIN PERFORM set_config('search_path', 's1', false); RETURN 'x'; END $$;
             CREATE FUNCTION public.forget_statements() RETURNS int LANGUAGE plpgsql AS
               $$ BEGIN EXECUTE 'DEALLOCATE ' || 'ALL'; RETURN 1; END $$;
             CREATE FUNCTION public.lock_for_the_session() RETURNS int LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_advisory_lock(4242); RETURN 1; END $$;
             CREATE FUNCTION public.become_someone() RETURNS int LANGUAGE plpgsql AS
               $$ BEGIN EXECUTE 'SET ROLE someone'; RETURN 1; END $$;",
        )
        .await
        .unwrap();
    let a = pgtide.connect().await;
    let b = pgtide.connect().await;
    let path = |rows: Vec<tokio_postgres::SimpleQueryMessage>| shown(&rows).unwrap();

    // A function sets search_path; a quoted set_config does too. Both follow client a only.
    a.simple_query("SELECT public.use_s1()").await.unwrap();
    for _ in 0..6 {
        assert_eq!(
            path(a.simple_query("SHOW search_path").await.unwrap()),
            "s1"
        );
        let other = path(b.simple_query("SHOW search_path").await.unwrap());
        assert_ne!(other, "s1", "client b got a's search_path");
    }
    a.simple_query("RESET search_path").await.unwrap();
    a.simple_query("SELECT \"set_config\"('search_path', 's1', false)")
        .await
        .unwrap();
    for _ in 0..6 {
        assert_eq!(
            path(a.simple_query("SHOW search_path").await.unwrap()),
            "s1"
        );
        let other = path(b.simple_query("SHOW search_path").await.unwrap());
        assert_ne!(
            other, "s1",
            "client b got a's search_path through a quoted name"
        );
    }

    // A session lock and a role taken inside functions: the next client has neither.
    a.simple_query("SELECT public.lock_for_the_session()")
        .await
        .unwrap();
    a.simple_query("SELECT public.become_someone()")
        .await
        .unwrap();
    for _ in 0..6 {
        let user = path(b.simple_query("SELECT current_user::text").await.unwrap());
        assert_eq!(user, "postgres", "client b runs as a's role");
    }
    // The connection that held the lock is closed when it comes back: poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = b
            .simple_query(
                "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242",
            )
            .await
            .unwrap();
        if shown(&rows).as_deref() == Some("0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the advisory lock taken in a function outlived its transaction"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Said in so many words, they are refused.
    for sql in [
        "SELECT \"pg_advisory_lock\"(1)",
        "SET session_authorization = 'someone'",
        "CREATE TABLE pg_temp.leak (a int)",
        "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$",
    ] {
        let err = a.simple_query(sql).await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "0A000", "{sql}: {err}");
    }
    // A role given at login cannot follow a pooled client either.
    let refused = pgtide
        .connect_configured(|config| {
            config.options("-c role=someone");
        })
        .await
        .expect_err("a role at login is refused");
    assert_eq!(refused.code().unwrap().code(), "0A000", "{refused}");

    // A function that drops every prepared statement, looped beside pgbench -M prepared: the
    // connections it ran on are not reused, and pgbench sees no failure.
    let (ok, out) = pgbench(pgtide.port, &["-i", "-q"]);
    assert!(ok, "{out}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forgetter = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && rounds < 5000 {
                a.simple_query("SELECT public.forget_statements()")
                    .await
                    .unwrap();
                rounds += 1;
            }
            rounds
        }
    });
    let port = pgtide.port;
    let (ok, out) = tokio::task::spawn_blocking(move || {
        pgbench(
            port,
            &["-S", "-M", "prepared", "-c", "4", "-j", "4", "-t", "300"],
        )
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = forgetter.await.unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    assert!(rounds > 10, "{rounds} rounds of forget_statements()");
}

/// A COMMIT sent in the same write as Terminate commits, in both pool modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_sent_together_with_terminate_is_kept() {
    for pool_mode in ["session", "transaction"] {
        let pgtide = Pgtide::start_with(Options {
            cluster: format!("pool_mode = \"{pool_mode}\""),
            ..Default::default()
        });
        pgtide.sql("CREATE TABLE kept (v int)");
        for i in 0..20 {
            let mut raw = Raw::login(pgtide.port, "postgres", PASSWORD, false, false)
                .await
                .unwrap();
            raw.send(&raw::query(&format!(
                "BEGIN; INSERT INTO kept VALUES ({i})"
            )))
            .await;
            raw.until_ready().await;
            let mut burst = raw::query("COMMIT");
            burst.extend_from_slice(&raw::terminate());
            raw.send(&burst).await;
            drop(raw);
        }
        let count = pgtide.sql("SELECT count(*) FROM kept");
        assert_eq!(count, "20", "{pool_mode}");
    }
}

/// Transaction mode: a pipeline far larger than the socket buffers both ways completes (the
/// relay reads the compute while it writes to it), and a client that does not read a large
/// result costs pgtide a bounded amount of memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pipelines_flow_and_slow_readers_stay_bounded() {
    let pgtide = pooled("");
    let client = pgtide.connect().await;
    // 10000 queries of 4 kB each way: far more than the sockets hold.
    let statement = client.prepare("SELECT $1::int, $2::text").await.unwrap();
    let payload = "p".repeat(4000);
    let queries = (0..10000).map(|i| {
        let client = &client;
        let statement = &statement;
        let payload = &payload;
        async move {
            let row = client.query_one(statement, &[&i, payload]).await.unwrap();
            assert_eq!(row.get::<_, &str>(1).len(), 4000);
            row.get::<_, i32>(0)
        }
    });
    let results = tokio::time::timeout(
        Duration::from_secs(120),
        futures_util::future::join_all(queries),
    )
    .await
    .expect("the pipeline did not deadlock");
    assert_eq!(results, (0..10000).collect::<Vec<_>>());

    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", pgtide.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    let before = rss();
    let mut slow = Raw::login(pgtide.port, "postgres", PASSWORD, false, false)
        .await
        .unwrap();
    // About 150 MB of rows, not read for a while.
    slow.send(&raw::query(
        "SELECT repeat('y', 1000) FROM generate_series(1, 150000)",
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut peak = before;
    while Instant::now() < deadline {
        peak = peak.max(rss());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        peak < before + 64 * 1024,
        "pgtide grew from {before} kB to {peak} kB for a client that does not read"
    );
    // It still gets every row once it reads.
    let mut rows = 0;
    loop {
        let message = slow.next().await;
        match message.kind {
            b'D' => rows += 1,
            b'Z' => break,
            _ => {}
        }
    }
    assert_eq!(rows, 150000);

    // Answers pgtide gives itself (DEALLOCATE ALL needs no compute) to a client that sends
    // them without end and never reads: pgtide stops reading it, as Postgres would, instead of
    // buffering the answers. 100 MB of queries would be 130 MB of answers.
    let before = rss();
    let mut flood = Raw::login(pgtide.port, "postgres", PASSWORD, false, false)
        .await
        .unwrap();
    let mut burst = BytesMut::new();
    for _ in 0..5000 {
        burst.extend_from_slice(&raw::query("DEALLOCATE ALL"));
    }
    let sent = tokio::time::timeout(Duration::from_secs(5), async {
        for _ in 0..1000 {
            flood.send(&burst).await;
        }
    })
    .await;
    assert!(
        sent.is_err(),
        "pgtide read 100 MB from a client that does not read"
    );
    let after = rss();
    assert!(
        after < before + 64 * 1024,
        "pgtide grew from {before} kB to {after} kB answering a client that does not read"
    );
}

/// Backends the compute started for clients: every "connection received", except pgtide's own
/// (its verifier refresh and resize connections, `application_name=pgtide`, come when they do).
fn connections_logged(pgtide: &Pgtide) -> usize {
    let log = std::fs::read_to_string(pgtide.data_dir().join("clusters/main/postgres.log"))
        .unwrap_or_default();
    let pid_of = |line: &str| {
        line.split('[')
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .map(str::to_string)
    };
    let pgtide_own: std::collections::HashSet<String> = log
        .lines()
        .filter(|l| l.contains("connection authorized") && l.contains("application_name=pgtide"))
        .filter_map(pid_of)
        .collect();
    log.lines()
        .filter(|l| l.contains("connection received"))
        .filter_map(pid_of)
        .filter(|pid| !pgtide_own.contains(pid))
        .count()
}

/// Unknown users and wrong passwords are answered by pgtide alone: no backend starts before a
/// client proved its password, and an unknown user's exchange looks like a known one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_starts_before_a_password_is_proved() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "min_acu = 0.5\nmax_acu = 0.5".into(),
        ..Default::default()
    });
    pgtide.sql("ALTER SYSTEM SET log_connections = on");
    pgtide.sql("SELECT pg_reload_conf()");
    assert!(
        wait_until(Duration::from_secs(10), || {
            pgtide.sql("SELECT 1");
            connections_logged(&pgtide) > 0
        }),
        "log_connections took effect"
    );
    let before = connections_logged(&pgtide);
    for i in 0..10 {
        let unknown = pgtide
            .connect_as(&format!("nobody{i}"), "x", "postgres")
            .await
            .unwrap_err();
        assert_eq!(unknown.code().unwrap().code(), "28P01");
        let wrong = pgtide
            .connect_as("postgres", "wrong", "postgres")
            .await
            .unwrap_err();
        assert_eq!(wrong.code().unwrap().code(), "28P01");
    }
    // One good login: exactly one backend more.
    pgtide
        .connect()
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || connections_logged(
        &pgtide
    ) > before));
    let log = std::fs::read_to_string(pgtide.data_dir().join("clusters/main/postgres.log"))
        .unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("connection")).collect();
    assert_eq!(connections_logged(&pgtide), before + 1, "{lines:#?}");
}

/// A password changed in a DO block through transaction mode, and VALID UNTIL passing, take
/// effect within seconds.
#[test]
fn password_changes_by_any_route_take_effect_within_seconds() {
    let pgtide = pooled("");
    pgtide.sql("CREATE ROLE app LOGIN PASSWORD 'first'");
    let login = |password: &str| {
        psql_as(
            pgtide.port,
            "app",
            password,
            "postgres",
            &["-tA", "-c", "SELECT 1"],
        )
        .status
        .success()
    };
    assert!(
        login("first"),
        "a role created through a pooled connection logs in at once"
    );
    pgtide.sql("DO $$ BEGIN EXECUTE 'ALTER ROLE app PASSWORD ''second'''; END $$");
    assert!(
        wait_until(Duration::from_secs(5), || login("second")
            && !login("first")),
        "the new password works and the old one does not"
    );
    let until = pgtide.sql("SELECT (now() + interval '3 seconds')::text");
    pgtide.sql(&format!("ALTER ROLE app VALID UNTIL '{until}'"));
    assert!(login("second"));
    assert!(
        wait_until(Duration::from_secs(10), || !login("second")),
        "VALID UNTIL holds"
    );
}

/// libpq with channel_binding=require logs in (SCRAM-SHA-256-PLUS), and a CancelRequest sent
/// inside TLS cancels the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_and_cancel_inside_tls() {
    let dir = test_dir();
    let pgtide = Pgtide::start_with(tls_options(dir.path()));
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require channel_binding=require",
            pgtide.port
        ))
        .args(["-X", "-tA", "-c", "SELECT 'bound'"])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bound");
    // SCRAM-SHA-256-PLUS by hand, with the certificate's hash, then a query to cancel.
    let mut raw = Raw::login(pgtide.port, "postgres", PASSWORD, true, true)
        .await
        .unwrap();

    raw.send(&raw::query("SELECT pg_sleep(30)")).await;
    let (mut cancel, _) = raw::open(pgtide.port, true).await;
    use tokio::io::AsyncWriteExt;
    cancel
        .write_all(&pgtide::wire::cancel_request(raw.pid, raw.secret))
        .await
        .unwrap();
    cancel.flush().await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), raw.until_ready())
        .await
        .expect("the query was cancelled");
    let error = answer.iter().find(|m| m.kind == b'E').expect("an error");
    assert_eq!(
        pgtide::wire::error_field(error.body(), b'C'),
        Some(&b"57014"[..])
    );
}
