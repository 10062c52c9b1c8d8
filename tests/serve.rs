//! End to end: psql, pgbench and tokio-postgres through pgtide onto a real Postgres.
//! (Slow tests: each starts pgtide and Postgres; the suite runs them two at a time.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;

#[test]
fn psql_works_through_the_proxy() {
    let pgtide = Pgtide::start();
    assert_eq!(pgtide.sql("SELECT 1 + 1"), "2");
    // Multi-statement simple query: every result comes back.
    let out = pgtide.psql(&["-tA", "-c", "SELECT 1; SELECT 2; SELECT 'three'"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1\n2\nthree");
    // A notice passes through.
    let out = pgtide.psql(&[
        "-c",
        "DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOTICE:  hello from plpgsql"));
    // An error keeps its SQLSTATE.
    let out = pgtide.psql(&["-v", "VERBOSITY=verbose", "-c", "SELECT 1/0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("22012"),
        "{out:?}"
    );
    // createdb through the proxy, then connect to the new database.
    let created = std::process::Command::new("createdb")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pgtide.port.to_string(),
            "-U",
            "postgres",
            "appdb",
        ])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let out = psql_as(
        pgtide.port,
        "postgres",
        PASSWORD,
        "appdb",
        &["-tA", "-c", "SELECT current_database()"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "appdb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_features_pass_through_unchanged() {
    let pgtide = Pgtide::start();
    let client = pgtide.connect().await;

    // Errors with their SQLSTATE, and the session goes on.
    let err = client
        .simple_query("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42P01");
    client.simple_query("SELECT 1").await.unwrap();

    // Large result sets.
    let rows = client
        .query(
            "SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 200000);
    assert_eq!(rows[199999].get::<_, i32>(0), 200000);

    // COPY in and out.
    copy_round_trip(&client, 10000).await;

    // Pipelined extended-protocol queries: many in flight on one connection at once.
    let statement = client.prepare("SELECT $1::int * 2").await.unwrap();
    let queries = (0..200).map(|i| {
        let client = &client;
        let statement = &statement;
        async move {
            client
                .query_one(statement, &[&i])
                .await
                .unwrap()
                .get::<_, i32>(0)
        }
    });
    let results = futures_util::future::join_all(queries).await;
    assert_eq!(results, (0..200).map(|i| i * 2).collect::<Vec<_>>());

    // pg_backend_pid() matches the BackendKeyData pid, and NOTIFY's sender pid matches it too.
    let (listener, mut connection) = tokio_postgres::connect(
        &pgtide.url("postgres", PASSWORD, "postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n);
            }
        }
    });
    listener.batch_execute("LISTEN events").await.unwrap();
    let sender_pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute("NOTIFY events, 'payload'")
        .await
        .unwrap();
    let notification = tokio::time::timeout(Duration::from_secs(10), notifications.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(notification.channel(), "events");
    assert_eq!(notification.payload(), "payload");
    assert_eq!(notification.process_id(), sender_pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query() {
    let pgtide = Pgtide::start();
    let client = pgtide.connect().await;
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    wait_for_query(&pgtide.connect().await, "SELECT pg_sleep(30)").await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.unwrap_err().code().unwrap().code(), "57014");
}

#[test]
fn pgbench_in_every_mode_has_no_failed_transaction() {
    let pgtide = Pgtide::start();
    let (ok, out) = pgbench(pgtide.port, &["-i", "-s", "1", "-q"]);
    assert!(ok, "pgbench -i failed: {out}");
    pgbench_every_mode(pgtide.port, "4", "2", "150");
    let status = pgtide.cluster_status();
    assert!(
        status["transactions"].as_u64().unwrap() >= 6 * 600,
        "{status}"
    );
}

#[test]
fn roles_created_with_sql_log_in_and_follow_password_changes() {
    let pgtide = Pgtide::start();
    pgtide.sql("CREATE ROLE app LOGIN PASSWORD 'first'");
    let ok = psql_as(
        pgtide.port,
        "app",
        "first",
        "postgres",
        &["-tA", "-c", "SELECT current_user"],
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "app", "{ok:?}");

    pgtide.sql("ALTER ROLE app PASSWORD 'second'");
    let old = psql_as(pgtide.port, "app", "first", "postgres", &["-c", "SELECT 1"]);
    assert!(!old.status.success());
    assert!(String::from_utf8_lossy(&old.stderr)
        .contains("password authentication failed for user \"app\""));
    let new = psql_as(
        pgtide.port,
        "app",
        "second",
        "postgres",
        &["-tA", "-c", "SELECT current_user"],
    );
    assert_eq!(
        String::from_utf8_lossy(&new.stdout).trim(),
        "app",
        "{new:?}"
    );

    // A role without LOGIN cannot log in.
    pgtide.sql("CREATE ROLE nologin PASSWORD 'pw'");
    let refused = psql_as(
        pgtide.port,
        "nologin",
        "pw",
        "postgres",
        &["-c", "SELECT 1"],
    );
    assert!(!refused.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_databases_get_postgres_errors() {
    let pgtide = Pgtide::start();
    let wrong = pgtide
        .connect_as("postgres", "wrong", "postgres")
        .await
        .unwrap_err();
    assert_eq!(wrong.code().unwrap().code(), "28P01");
    let unknown = pgtide
        .connect_as("nobody", "x", "postgres")
        .await
        .unwrap_err();
    assert_eq!(unknown.code().unwrap().code(), "28P01");
    assert_eq!(
        unknown.as_db_error().unwrap().message(),
        "password authentication failed for user \"nobody\""
    );
    let no_db = pgtide
        .connect_as("postgres", PASSWORD, "no_such_db")
        .await
        .unwrap_err();
    assert_eq!(no_db.code().unwrap().code(), "3D000");
    // And the proxy still serves.
    pgtide
        .connect()
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

#[test]
fn max_client_connections_is_enforced_with_53300() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "max_client_connections = 2".into(),
        ..Default::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _a = pgtide.connect().await;
        let _b = pgtide.connect().await;
        let third = pgtide
            .connect_as("postgres", PASSWORD, "postgres")
            .await
            .unwrap_err();
        assert_eq!(third.code().unwrap().code(), "53300", "{third}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_close_only_their_own_connection() {
    let pgtide = Pgtide::start();
    let client = pgtide.connect().await;
    let port = pgtide.port;
    let hostile = tokio::task::spawn_blocking(move || {
        let mut half_open = Vec::new();
        for round in 0..20u32 {
            // Half-open sockets that never finish a startup packet.
            let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
            silent.write_all(&[0, 0]).unwrap();
            half_open.push(silent);
            // Random bytes.
            let mut noise = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let bytes: Vec<u8> = (0..512u32)
                .map(|i| (i.wrapping_mul(2654435761).wrapping_add(round) >> 7) as u8)
                .collect();
            let _ = noise.write_all(&bytes);
            drain(noise);
            // Absurd lengths: in the startup packet, and in a message after the startup.
            let mut absurd = TcpStream::connect(("127.0.0.1", port)).unwrap();
            absurd.write_all(&0x7fff_ffffi32.to_be_bytes()).unwrap();
            absurd.write_all(&196608i32.to_be_bytes()).unwrap();
            drain(absurd);
            let mut negative = TcpStream::connect(("127.0.0.1", port)).unwrap();
            negative.write_all(&(-5i32).to_be_bytes()).unwrap();
            drain(negative);
        }
        half_open
    })
    .await
    .unwrap();
    // The real client is served throughout, and new clients still get in.
    for _ in 0..10 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    pgtide
        .connect()
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
    drop(hostile);
}

fn drain(mut stream: TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
}

#[test]
fn stop_leaves_no_process_and_restart_keeps_the_data() {
    let mut pgtide = Pgtide::start();
    pgtide
        .sql("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('written before the restart')");
    let postmaster = pgtide.postmaster_pid().expect("postmaster.pid");
    assert!(process_alive(postmaster));
    let status = pgtide.stop();
    assert!(status.success(), "pgtide exited with {status}");
    assert!(
        !process_alive(postmaster),
        "Postgres {postmaster} outlived pgtide"
    );
    let data_dir = pgtide.pgdata().display().to_string();
    assert!(
        processes_matching(&data_dir).is_empty(),
        "orphans left: {:?}",
        processes_matching(&data_dir)
    );

    pgtide.restart();
    assert_eq!(
        pgtide.sql("SELECT v FROM kept"),
        "written before the restart"
    );
}

#[test]
fn killed_pgtide_takes_its_postgres_down_and_the_next_start_recovers() {
    let mut pgtide = Pgtide::start();
    pgtide.sql("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)");
    let postmaster = pgtide.postmaster_pid().expect("postmaster.pid");
    send_signal(pgtide.pid() as i32, Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(30), || !process_alive(postmaster)),
        "Postgres outlived a killed pgtide"
    );
    pgtide.restart();
    assert_eq!(pgtide.sql("SELECT v FROM kept"), "42");
}

#[test]
fn tls_is_served_when_configured() {
    let dir = test_dir();
    let pgtide = Pgtide::start_with(tls_options(dir.path()));
    let out = std::process::Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require",
            pgtide.port
        ))
        .args(["-X", "-tA", "-c", "SELECT 'over tls'"])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over tls");
    // Without TLS the same cluster still answers (sslmode=disable).
    let plain = psql_as(
        pgtide.port,
        "postgres",
        PASSWORD,
        "postgres",
        &["-tA", "-c", "SELECT 1"],
    );
    assert!(plain.status.success());
}

#[test]
fn status_and_metrics_describe_the_cluster() {
    let pgtide = Pgtide::start();
    pgtide.sql("SELECT 1");
    let status = pgtide.cluster_status();
    assert_eq!(status["name"], "main");
    assert_eq!(status["state"], "running");
    assert_eq!(status["acu"], 0.5);
    assert_eq!(status["min_acu"], 0.0);
    assert_eq!(status["max_acu"], 8.0);
    assert!(status["storage"]["copies"].is_number());
    assert!(wait_until(Duration::from_secs(10), || pgtide
        .cluster_status()["limits"]["enforced"]
        .is_boolean()));
    assert!(status["events"][0]["message"]
        .as_str()
        .unwrap()
        .contains("resumed"));
    let metrics = pgtide.metrics();
    assert!(
        metrics.contains("pgtide_cluster_acu{cluster=\"main\"} 0.5"),
        "{metrics}"
    );
    assert!(metrics.contains("pgtide_cluster_transactions_total{cluster=\"main\"}"));
    assert!(metrics.contains("pgtide_cluster_clients{cluster=\"main\"}"));
    let cli = pgtide.cli(&["status"]);
    assert!(cli.status.success(), "{cli:?}");
    let table = String::from_utf8_lossy(&cli.stdout);
    assert!(
        table.contains("main") && table.contains("running"),
        "{table}"
    );
    assert!(
        table.contains("process runtime; warm pool: 0 of 0 ready, 1 in use, 0 hits, 1 misses"),
        "{table}"
    );
    let json = pgtide.cli(&["status", "--json"]);
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(parsed["clusters"][0]["name"], "main");
}

#[test]
fn config_errors_name_the_file_line_and_key() {
    let dir = test_dir();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[clusters]]\nname = \"main\"\nlisten = \"127.0.0.1:1\"\nmin_acu = 4\nmax_acu = 2\n[[clusters.users]]\nname = \"u\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgtide"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:5: clusters[0].max_acu"),
        "{stderr}"
    );

    std::fs::write(&path, "[admin]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgtide"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:3") && stderr.contains("bogus"),
        "{stderr}"
    );
}
