//! End to end: Multi-AZ. Standbys in other zones built from the copies and streaming from the
//! writer; the reader endpoint spreading sessions over them; a failover after a kill -9 of the
//! writer under a commit ledger (every acknowledged id present, writes going on, the old
//! writer's zone getting a new standby); `pgtide failover`; pause and resume taking the
//! standbys along; a lagging standby leaving the rotation. Real Postgres, real psql.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use pgtide::cluster::standbys::{StandbyState, ZonesStatus};

fn multi_az(standbys: usize, extra: &str) -> Pgtide {
    let reader_port = free_port();
    let min_acu = if extra.contains("min_acu") {
        ""
    } else {
        "min_acu = 1\n"
    };
    Pgtide::start_with(Options {
        cluster: format!(
            "{min_acu}max_acu = 4\nstandbys = {standbys}\nreader_listen = \"127.0.0.1:{reader_port}\"\n{extra}"
        ),
        copies: true,
        ..Default::default()
    })
}

fn zones(pgtide: &Pgtide) -> ZonesStatus {
    pgtide.cluster("main").zones
}

fn reader_port(pgtide: &Pgtide) -> u16 {
    let listen = pgtide.cluster("main").reader_listen.expect("reader_listen");
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

/// Waits until every standby streams (and `check` holds of the zones).
fn wait_streaming(pgtide: &Pgtide, count: usize, check: impl Fn(&ZonesStatus) -> bool) {
    let ok = wait_until(Duration::from_secs(90), || {
        let zones = zones(pgtide);
        zones.standbys.len() == count
            && zones
                .standbys
                .iter()
                .all(|s| s.state == StandbyState::Streaming && s.in_rotation)
            && check(&zones)
    });
    assert!(
        ok,
        "the standbys never all streamed: {:#?}\n{:#?}",
        zones(pgtide),
        pgtide.events()
    );
}

async fn reader(pgtide: &Pgtide) -> tokio_postgres::Client {
    let url = format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
        reader_port(pgtide)
    );
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to the reader endpoint");
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_replay_and_the_reader_endpoint_spreads_sessions() {
    let pgtide = multi_az(2, "");
    wait_streaming(&pgtide, 2, |z| z.writer_zone == "a");
    let status = zones(&pgtide);
    assert_eq!(
        status.zones,
        ["a", "b", "c"],
        "zones from the copies' names"
    );
    let standby_zones: Vec<&str> = status.standbys.iter().map(|s| s.zone.as_str()).collect();
    assert_eq!(standby_zones, ["b", "c"], "one standby per other zone");
    assert!(status.standbys.iter().all(|s| s.lag_bytes.is_some()));

    pgtide.sql(
        "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 500)",
    );
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(reader(&pgtide).await);
    }
    for session in &sessions {
        let row = session
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "a reader session runs on a standby");
    }
    // The rows the writer committed reach the standbys.
    let replayed = wait_until_async(Duration::from_secs(30), || async {
        let row = sessions[0]
            .query_one("SELECT count(*) FROM pg_class WHERE relname = 'items'", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0) == 1
    })
    .await;
    assert!(replayed, "the standby never replayed the writer's table");
    let count = wait_until_async(Duration::from_secs(30), || async {
        sessions[0]
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .map(|row| row.get::<_, i64>(0) == 500)
            .unwrap_or(false)
    })
    .await;
    assert!(count, "the standby never showed the 500 rows");
    let write = sessions[1]
        .batch_execute("INSERT INTO items VALUES (501)")
        .await
        .expect_err("a standby refuses writes");
    assert_eq!(
        write.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
    );
    // Four sessions, two standbys: two each (least busy first).
    let spread = wait_until(Duration::from_secs(10), || {
        let zones = zones(&pgtide);
        zones.standbys.iter().all(|s| s.sessions == 2)
    });
    assert!(spread, "sessions were not spread: {:#?}", zones(&pgtide));
    drop(sessions);
}

/// Inserts ids one by one through the writer endpoint, remembering those acknowledged; on an
/// error it reconnects and goes on (the id that failed may or may not be in: it is not counted).
struct Ledger {
    acked: Mutex<Vec<(i64, Instant)>>,
    stop: AtomicBool,
}

impl Ledger {
    fn start(pgtide: &Pgtide, runtime: &tokio::runtime::Handle) -> Arc<Ledger> {
        pgtide.sql("CREATE TABLE IF NOT EXISTS ledger (id bigint PRIMARY KEY)");
        let ledger = Arc::new(Ledger {
            acked: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let url = pgtide.url("postgres", PASSWORD, "postgres");
        let writing = ledger.clone();
        runtime.spawn(async move {
            let mut next = 1i64;
            let mut client: Option<tokio_postgres::Client> = None;
            while !writing.stop.load(Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                        Ok((c, connection)) => {
                            tokio::spawn(connection);
                            client = Some(c);
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    }
                }
                let c = client.as_ref().unwrap();
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&next];
                let insert = c.execute("INSERT INTO ledger VALUES ($1)", &params);
                match tokio::time::timeout(Duration::from_secs(10), insert).await {
                    Ok(Ok(_)) => writing.acked.lock().unwrap().push((next, Instant::now())),
                    _ => {
                        client = None;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                next += 1;
            }
        });
        ledger
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn wait_for_more(&self, than: usize) {
        assert!(
            wait_until(Duration::from_secs(60), || self.acked() > than + 20),
            "the ledger stopped committing at {} acknowledged",
            self.acked()
        );
    }

    /// Stops writing; every acknowledged id must be in the table.
    fn stop_and_check(&self, pgtide: &Pgtide) {
        self.stop.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
        let present: std::collections::HashSet<i64> = pgtide
            .sql("SELECT id FROM ledger")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let acked = self.acked.lock().unwrap();
        let missing: Vec<i64> = acked
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !present.contains(id))
            .collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged commits are missing: {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(20)]
        );
    }

    /// The longest time between two acknowledged commits after `since`.
    fn longest_gap_after(&self, since: Instant) -> Duration {
        let acked = self.acked.lock().unwrap();
        let times: Vec<Instant> = acked.iter().map(|(_, t)| *t).collect();
        let mut gap = Duration::ZERO;
        let mut previous = since;
        for t in times.into_iter().filter(|t| *t >= since) {
            gap = gap.max(t - previous);
            previous = t;
        }
        gap
    }
}

fn failover_events(pgtide: &Pgtide) -> Vec<String> {
    pgtide
        .events()
        .into_iter()
        .filter(|(kind, _)| kind == "failover")
        .map(|(_, message)| message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_fails_over_to_the_standby_with_nothing_lost() {
    let pgtide = multi_az(1, "");
    wait_streaming(&pgtide, 1, |z| z.writer_zone == "a");
    let ledger = Ledger::start(&pgtide, &tokio::runtime::Handle::current());
    ledger.wait_for_more(0);

    let writer = pgtide.postmaster_pid().expect("the writer's postmaster");
    let killed_at = Instant::now();
    send_signal(writer, Signal::SIGKILL);
    let done = wait_until(Duration::from_secs(60), || {
        !failover_events(&pgtide).is_empty()
    });
    assert!(done, "no failover: {:#?}", pgtide.events());
    let event = failover_events(&pgtide).remove(0);
    assert!(
        event.starts_with("unplanned failover from zone a to zone b"),
        "{event}"
    );
    let at = ledger.acked();
    ledger.wait_for_more(at);
    eprintln!(
        "failover: {event}; longest pause in commits {:?}",
        ledger.longest_gap_after(killed_at)
    );
    // The old writer's zone gets a standby, built afresh from the copies; the old data
    // directory is kept aside and never runs again.
    wait_streaming(&pgtide, 1, |z| {
        z.writer_zone == "b" && z.standbys[0].zone == "a"
    });
    assert!(pgtide
        .data_dir()
        .join("clusters/main/pgdata.former-writer")
        .exists());
    ledger.stop_and_check(&pgtide);
    assert_eq!(pgtide.sql("SELECT pg_is_in_recovery()"), "f");
    // The copies follow the new writer: its commits are durable on the quorum.
    assert!(
        wait_until(Duration::from_secs(30), || pgtide
            .cluster("main")
            .storage
            .degraded
            .is_none()),
        "{:?}",
        pgtide.cluster("main").storage
    );

    // The writer's zone is remembered across a restart of pgtide.
    let mut pgtide = pgtide;
    pgtide.restart();
    wait_streaming(&pgtide, 1, |z| z.writer_zone == "b");
    assert!(
        pgtide
            .sql("SELECT count(*) FROM ledger")
            .parse::<usize>()
            .unwrap()
            >= ledger.acked()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_behind_the_copies_takes_over_with_their_wal() {
    let pgtide = multi_az(1, "");
    wait_streaming(&pgtide, 1, |_| true);
    pgtide.sql("CREATE TABLE late (n int)");
    // The standby stops receiving (its WAL receiver is pointed nowhere); the writer goes on
    // committing to the copies. It streamed in sync a moment ago, so it may take over.
    let standby = reader(&pgtide).await;
    standby
        .batch_execute("ALTER SYSTEM SET primary_conninfo = 'host=/nonexistent'")
        .await
        .unwrap();
    standby
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let stopped = wait_until_async(Duration::from_secs(10), || async {
        standby
            .query_one("SELECT count(*) FROM pg_stat_wal_receiver", &[])
            .await
            .map(|row| row.get::<_, i64>(0) == 0)
            .unwrap_or(false)
    })
    .await;
    assert!(stopped, "the standby's WAL receiver did not stop");
    pgtide.sql("INSERT INTO late SELECT generate_series(1, 20000)");
    let writer = pgtide.postmaster_pid().expect("the writer's postmaster");
    send_signal(writer, Signal::SIGKILL);
    let done = wait_until(Duration::from_secs(60), || {
        !failover_events(&pgtide).is_empty()
    });
    assert!(done, "no failover: {:#?}", pgtide.events());
    let event = failover_events(&pgtide).remove(0);
    let laid_in: u64 = event
        .split(" bytes of WAL laid in")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{event}"));
    assert!(laid_in > 100_000, "the copies' WAL was laid in: {event}");
    pgtide.wait_state("running", Duration::from_secs(30));
    assert_eq!(pgtide.sql("SELECT count(*) FROM late"), "20000", "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgtide_failover_moves_the_writer_on_request() {
    let pgtide = multi_az(2, "");
    wait_streaming(&pgtide, 2, |z| z.writer_zone == "a");
    let refused = pgtide.cli(&["failover", "main", "--to", "a"]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("no standby runs in zone a"), "{why}");

    let ledger = Ledger::start(&pgtide, &tokio::runtime::Handle::current());
    ledger.wait_for_more(0);
    let asked = Instant::now();
    let out = pgtide.cli(&["failover", "main", "--to", "c"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("planned failover from zone a to zone c"),
        "{said}"
    );
    let at = ledger.acked();
    ledger.wait_for_more(at);
    eprintln!(
        "{said}; longest pause in commits {:?}",
        ledger.longest_gap_after(asked)
    );
    wait_streaming(&pgtide, 2, |z| {
        z.writer_zone == "c" && z.standbys.iter().any(|s| s.zone == "a")
    });
    ledger.stop_and_check(&pgtide);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_take_the_standbys_along() {
    let pgtide = multi_az(1, "min_acu = 0\n");
    wait_streaming(&pgtide, 1, |_| true);
    let out = pgtide.cli(&["pause", "main"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let zones_now = zones(&pgtide);
    assert_eq!(zones_now.standbys[0].state, StandbyState::Stopped);
    let standby_pgdata = pgtide.data_dir().join("clusters/main/standbys/b/pgdata");
    assert!(
        processes_matching(&path_str(&standby_pgdata)).is_empty(),
        "the standby's Postgres still runs after the pause"
    );
    // A reader wakes the cluster, and lands on the standby once it is back.
    let session = reader(&pgtide).await;
    wait_streaming(&pgtide, 1, |_| true);
    let on_standby = reader(&pgtide).await;
    let row = on_standby
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    drop((session, on_standby));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_standby_leaves_the_rotation() {
    let pgtide = multi_az(1, "max_reader_lag = \"1s\"\n");
    wait_streaming(&pgtide, 1, |_| true);
    let standby = reader(&pgtide).await;
    standby
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    pgtide.sql("CREATE TABLE churn (n int)");
    let out_of_rotation = wait_until(Duration::from_secs(30), || {
        pgtide.sql("INSERT INTO churn VALUES (1)");
        let zones = zones(&pgtide);
        let standby = &zones.standbys[0];
        !standby.in_rotation && standby.lag_seconds.is_some_and(|lag| lag > 1.0)
    });
    assert!(out_of_rotation, "{:#?}", zones(&pgtide));
    // With no standby in rotation a reader goes to the writer, read-only.
    let fallback = reader(&pgtide).await;
    let row = fallback
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0), "on the writer");
    assert_eq!(row.get::<_, String>(1), "on", "read-only there");
    standby
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    wait_streaming(&pgtide, 1, |z| {
        z.standbys[0].lag_seconds.is_some_and(|l| l <= 1.0)
    });
}

async fn wait_until_async<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[test]
fn a_standby_waits_for_room_in_the_machine_budget() {
    let reader_port = free_port();
    let pgtide = Pgtide::start_with(Options {
        top: "[capacity]\nmax_total_acu = 1.5\n".into(),
        cluster: format!(
            "min_acu = 1\nmax_acu = 4\nstandbys = 1\nreader_listen = \"127.0.0.1:{reader_port}\""
        ),
        copies: true,
        ..Default::default()
    });
    let waiting = wait_until(Duration::from_secs(30), || {
        let zones = zones(&pgtide);
        zones.standbys.first().is_some_and(|s| {
            s.state == StandbyState::Stopped
                && s.reason
                    .as_deref()
                    .is_some_and(|r| r.contains("waiting for room in max_total_acu = 1.5"))
        })
    });
    assert!(waiting, "{:#?}", zones(&pgtide));
    let capacity = pgtide.status_typed().capacity.expect("capacity");
    assert!(capacity.held_acu <= 1.5, "{capacity:?}");
    // Its reader sessions go to the writer meanwhile, read-only.
    let out = psql_as(
        reader_port,
        "postgres",
        PASSWORD,
        "postgres",
        &[
            "-tAc",
            "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "f|on");
}
