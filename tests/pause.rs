//! End to end: pause to zero when idle, resume on the next connection, crashes of the compute.
//! (Slow tests: each starts pgtide and Postgres.)

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn assert_no_postgres_left(pgtide: &Pgtide, postmaster: i32) {
    assert!(
        !process_alive(postmaster),
        "postmaster {postmaster} still runs"
    );
    let pgdata = pgtide.pgdata().display().to_string();
    assert!(processes_matching(&pgdata).is_empty());
}

#[test]
fn pauses_when_idle_and_resumes_for_the_next_client_keeping_data() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "auto_pause_after = \"1s\"".into(),
        ..Default::default()
    });
    pgtide.sql("CREATE TABLE cycles (n int)");
    for cycle in 1..=5 {
        let postmaster = pgtide.postmaster_pid().expect("running compute");
        pgtide.wait_state("paused", Duration::from_secs(30));
        let status = pgtide.cluster_status();
        assert_eq!(status["acu"], 0.0);
        assert_no_postgres_left(&pgtide, postmaster);
        // The next client resumes it and does not notice.
        pgtide.sql(&format!("INSERT INTO cycles VALUES ({cycle})"));
    }
    assert_eq!(pgtide.sql("SELECT count(*) FROM cycles"), "5");
    let events = pgtide.events();
    assert!(
        events
            .iter()
            .any(|(k, m)| k == "paused" && m.starts_with("paused after")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(k, m)| k == "resumed" && m.contains("for postgres@127.0.0.1 in")),
        "{events:?}"
    );
    let metrics = pgtide.metrics();
    assert!(
        metrics.contains("pgtide_cluster_pauses_total{cluster=\"main\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgtide_cluster_resume_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgtide_cluster_state{cluster=\"main\"}"),
        "{metrics}"
    );
}

#[test]
fn monitoring_does_not_keep_a_cluster_awake() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "auto_pause_after = \"2s\"".into(),
        ..Default::default()
    });
    // Poll status and metrics all the time: the cluster pauses anyway.
    let paused = wait_until(Duration::from_secs(30), || {
        let _ = ureq::get(&pgtide.admin_url("/metrics")).call();
        pgtide.cluster_status()["state"] == "paused"
    });
    assert!(paused, "{}", pgtide.cluster_status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_at_once_share_one_resume() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "auto_pause_after = \"1h\"".into(),
        ..Default::default()
    });
    let out = pgtide.cli(&["pause", "main"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(pgtide.cluster_status()["state"], "paused");
    let resumes_before = pgtide
        .events()
        .iter()
        .filter(|(k, _)| k == "resumed")
        .count();

    let clients = (0..20).map(|i| {
        let pgtide = &pgtide;
        async move {
            let client = pgtide.connect().await;
            let row = client.query_one("SELECT $1::int", &[&i]).await.unwrap();
            row.get::<_, i32>(0)
        }
    });
    let answers = futures_util::future::join_all(clients).await;
    assert_eq!(answers, (0..20).collect::<Vec<_>>());
    let resumes_after = pgtide
        .events()
        .iter()
        .filter(|(k, _)| k == "resumed")
        .count();
    assert_eq!(resumes_after, resumes_before + 1, "{:?}", pgtide.events());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_cli_refuses_while_clients_are_connected() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "auto_pause_after = \"1h\"".into(),
        ..Default::default()
    });
    let client = pgtide.connect().await;
    let refused = pgtide.cli(&["pause", "main"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("has 1 connected client"), "{stderr}");
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    assert!(wait_until(Duration::from_secs(10), || pgtide
        .cluster_status()["clients"]
        == 0));

    let paused = pgtide.cli(&["pause", "main"]);
    assert!(paused.status.success(), "{paused:?}");
    assert_eq!(pgtide.cluster_status()["state"], "paused");
    let resumed = pgtide.cli(&["resume", "main"]);
    assert!(resumed.status.success(), "{resumed:?}");
    assert_eq!(pgtide.cluster_status()["state"], "running");
    let unknown = pgtide.cli(&["pause", "nope"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no cluster named \"nope\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_resume_answers_57p03_and_the_next_client_tries_again() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "auto_pause_after = \"1h\"".into(),
        ..Default::default()
    });
    assert!(pgtide.cli(&["pause", "main"]).status.success());
    let conf = pgtide.pgdata().join("postgresql.conf");
    let original = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{original}\nthis line is not valid\n")).unwrap();

    let err = pgtide
        .connect_as("postgres", PASSWORD, "postgres")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "57P03");
    assert_eq!(db.severity(), "FATAL");
    assert!(
        db.message().contains("could not be resumed"),
        "{}",
        db.message()
    );
    assert_eq!(pgtide.cluster_status()["state"], "failed");

    std::fs::write(&conf, original).unwrap();
    let client = pgtide.connect().await;
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_slower_than_resume_timeout_answers_57p03() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "auto_pause_after = \"1h\"\nresume_timeout = \"1s\"".into(),
        ..Default::default()
    });
    assert!(pgtide.cli(&["pause", "main"]).status.success());
    // A stuck old postmaster (it ignores SIGINT) holds the data directory: the resume waits for it.
    // It runs in the data directory, as a real postmaster does (pgtide checks that).
    let mut stuck = Command::new("bash")
        .args(["-c", "trap '' INT; exec -a postgres-stuck sleep 120"])
        .current_dir(pgtide.pgdata())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{}/cmdline", stuck.id()))
            .is_ok_and(|cmdline| cmdline.starts_with("postgres-stuck"))
    }));
    std::fs::write(
        pgtide.pgdata().join("postmaster.pid"),
        format!("{}\n", stuck.id()),
    )
    .unwrap();

    let err = pgtide
        .connect_as("postgres", PASSWORD, "postgres")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "57P03");
    assert!(
        db.message().contains("did not resume within 1s"),
        "{}",
        db.message()
    );

    stuck.kill().unwrap();
    stuck.wait().unwrap();
    pgtide.wait_state("running", Duration::from_secs(60));
    pgtide
        .connect()
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_compute_mid_query_is_noticed_and_recovered() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "auto_pause_after = \"1h\"".into(),
        ..Default::default()
    });
    let writer = pgtide.connect().await;
    writer
        .batch_execute("CREATE TABLE acked (n int)")
        .await
        .unwrap();
    for n in 0..100 {
        writer
            .execute("INSERT INTO acked VALUES ($1)", &[&n])
            .await
            .unwrap();
    }
    let sleeper = pgtide.connect().await;
    let in_flight = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(60)").await });
    wait_for_query(&writer, "SELECT pg_sleep(60)").await;

    let postmaster = pgtide.postmaster_pid().unwrap();
    send_signal(postmaster, Signal::SIGKILL);
    let result = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the client in flight hears of it within seconds")
        .unwrap();
    let err = result.unwrap_err();
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_else(|| err.to_string());
    assert!(
        message.contains("connection to the compute") || message.contains("closed"),
        "{message}"
    );

    pgtide.wait_state("running", Duration::from_secs(60));
    let reader = pgtide.connect().await;
    let count: i64 = reader
        .query_one("SELECT count(*) FROM acked", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 100);
    let events = pgtide.events();
    assert!(
        events
            .iter()
            .any(|(k, m)| k == "compute_exited" && m == "compute exited with signal 9"),
        "{events:?}"
    );
    assert_ne!(pgtide.postmaster_pid().unwrap(), postmaster);
}
