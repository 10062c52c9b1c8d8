//! End to end: transaction pooling — more clients than compute connections, prepared statements
//! across connections, COPY, cancel, session state, and pausing with idle clients connected.
//! (Slow tests: each starts pgtide and Postgres.)

mod common;

use std::time::Duration;

use common::*;

/// max_acu = 1: at most 4 compute connections for 8 clients.
fn pooled(extra: &str) -> Pgtide {
    Pgtide::start_with(Options {
        cluster: format!("pool_mode = \"transaction\"\nmax_acu = 1\n{extra}"),
        ..Default::default()
    })
}

#[test]
fn pgbench_in_every_mode_with_more_clients_than_connections() {
    let pgtide = pooled("");
    let (ok, out) = pgbench(pgtide.port, &["-i", "-q"]);
    assert!(ok, "{out}");
    // One pgbench thread per client: with -M prepared, pgbench prepares with a blocking call,
    // and a thread blocked waiting for a connection would stall the other clients of its thread
    // that hold one mid-transaction (any transaction pooler would wait there).
    pgbench_every_mode(pgtide.port, "8", "8", "100");
    let status = pgtide.cluster_status();
    let pool = &status["pool"];
    assert!(
        pool["server_connections_busy"].as_u64().unwrap()
            + pool["server_connections_idle"].as_u64().unwrap()
            <= 4,
        "{pool}"
    );
    assert!(pool["prepared_hits"].as_u64().unwrap() > 0, "{pool}");
}

#[test]
fn python_clients_with_prepared_statements_and_pipelines() {
    let pgtide = pooled("");
    let stdout = python_client(&pgtide, "pooled_clients.py");
    assert!(
        stdout.contains("ok psycopg") && stdout.contains("ok asyncpg"),
        "{stdout}"
    );
}

/// Runs `tests/clients/SCRIPT PORT PASSWORD` with python3; returns its stdout once it passed.
fn python_client(pgtide: &Pgtide, script: &str) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(pgtide.port.to_string())
        .arg(PASSWORD)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}\n(psycopg, psycopg-pool and asyncpg come from PyPI: scripts/test.sh installs them)",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The drivers' own pools on top of pgtide's, with their statement caches on: asyncpg's and
/// psycopg 3's (node-postgres's and JDBC's are in tests/drivers.rs).
#[test]
fn driver_pools_with_statement_caches() {
    let pgtide = pooled("");
    let stdout = python_client(&pgtide, "client_pools.py");
    assert!(
        stdout.contains("ok asyncpg pool") && stdout.contains("ok psycopg pool"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_through_the_pool() {
    let pgtide = pooled("");
    let client = pgtide.connect().await;
    copy_round_trip(&client, 5000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_hits_the_right_query_under_load() {
    let pgtide = pooled("min_acu = 1");
    let sleeper = pgtide.connect().await;
    let token = sleeper.cancel_token();
    let sleeping = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(30)").await });
    // Others keep the remaining connections busy meanwhile.
    let mut others = Vec::new();
    for _ in 0..4 {
        let client = pgtide.connect().await;
        others.push(tokio::spawn(async move {
            for _ in 0..50 {
                client
                    .query_one("SELECT pg_sleep(0.005), 1", &[])
                    .await
                    .unwrap();
            }
        }));
    }
    wait_for_query(&pgtide.connect().await, "SELECT pg_sleep(30)").await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let cancelled = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled.unwrap_err().code().unwrap().code(), "57014");
    for other in others {
        other.await.expect("no other client's query was cancelled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_does_not_leak_between_clients() {
    let pgtide = pooled("");
    let a = pgtide.connect().await;
    let b = pgtide.connect().await;
    // A session-level SET follows its client and only its client, over many transactions
    // on whichever connections they get (two here, for two clients).
    a.simple_query("SET work_mem = '77MB'").await.unwrap();
    for _ in 0..10 {
        let mine: String = a.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
        assert_eq!(mine, "77MB");
        let other: String = b.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
        assert_ne!(other, "77MB");
    }
    // SET LOCAL inside a transaction stays there.
    let rows = b
        .simple_query("BEGIN; SET LOCAL work_mem = '55MB'; SHOW work_mem; COMMIT")
        .await
        .unwrap();
    let shown = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(shown.as_deref(), Some("55MB"));
    let after: String = b.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_ne!(after, "55MB");
    // What cannot follow a client is refused, naming the way out.
    for refused in [
        "LISTEN events",
        "PREPARE p AS SELECT 1",
        "CREATE TEMP TABLE t (a int)",
        "SET ROLE postgres",
    ] {
        let err = a.simple_query(refused).await.unwrap_err();
        let db = err.as_db_error().unwrap();
        assert_eq!(db.code().code(), "0A000", "{refused}");
        assert!(
            db.message().contains("pool_mode = \"session\""),
            "{}",
            db.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_pauses_with_idle_clients_and_resumes_for_their_next_query() {
    let pgtide = pooled("auto_pause_after = \"1s\"");
    let client = pgtide.connect().await;
    let statement = client.prepare("SELECT $1::int + 100").await.unwrap();
    assert_eq!(
        client
            .query_one(&statement, &[&1])
            .await
            .unwrap()
            .get::<_, i32>(0),
        101
    );
    // The client stays connected, idle: the cluster pauses anyway.
    let paused = tokio::task::spawn_blocking({
        let port = pgtide.admin_port;
        move || {
            wait_until(Duration::from_secs(30), || {
                ureq::get(&format!("http://127.0.0.1:{port}/status"))
                    .call()
                    .ok()
                    .and_then(|r| r.into_body().read_to_string().ok())
                    .is_some_and(|b| b.contains("\"state\":\"paused\""))
            })
        }
    })
    .await
    .unwrap();
    assert!(paused, "{}", pgtide.cluster_status());
    assert_eq!(pgtide.cluster_status()["clients"], 1);
    // Its next query resumes the cluster, and its prepared statement still works.
    assert_eq!(
        client
            .query_one(&statement, &[&2])
            .await
            .unwrap()
            .get::<_, i32>(0),
        102
    );
    assert_eq!(pgtide.cluster_status()["state"], "running");
}

/// The startup answer a login gets is kept for a few seconds and reused by the next logins
/// with the same startup settings (no compute round trip): each still gets its own settings,
/// and a setting the compute refuses is refused every time (never kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_startup_answers_give_each_login_its_settings() {
    let pgtide = pooled("");
    let login = |work_mem: &'static str| {
        pgtide.connect_configured(move |config| {
            config
                .options(format!("-c work_mem={work_mem}"))
                .application_name("kept");
        })
    };
    for _ in 0..3 {
        let client = login("3MB").await.unwrap();
        let shown: String = client.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
        assert_eq!(shown, "3MB");
        let name: String = client
            .query_one("SHOW application_name", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, "kept");
        let other = login("5MB").await.unwrap();
        let shown: String = other.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
        assert_eq!(shown, "5MB");
    }
    for _ in 0..2 {
        let refused = login("lots").await.unwrap_err();
        assert_eq!(refused.code().map(|c| c.code()), Some("22023"), "{refused}");
    }
}
