//! End to end: six WAL copies with a 4-of-6 write quorum, and the compute rebuilt from them.
//! (Slow tests: each starts pgtide and Postgres with its copies.)

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

fn with_copies() -> Pgtide {
    let pgtide = Pgtide::start_with(Options {
        cluster: "min_acu = 1\nauto_pause_after = \"1h\"".into(),
        copies: true,
        ..Default::default()
    });
    // The first base backup is taken right after the cluster is created.
    assert!(
        wait_until(Duration::from_secs(60), || !pgtide.cluster_status()
            ["storage"]["last_base_backup"]
            .is_null()),
        "no base backup: {}",
        pgtide.cluster_status()["storage"]
    );
    pgtide
}

fn copy_dir(pgtide: &Pgtide, zone: &str) -> PathBuf {
    pgtide.data_dir().join("copies").join(zone)
}

/// Replaces a copy's directory with a file: every write to it fails from now on.
fn break_copy(pgtide: &Pgtide, zone: &str) {
    let dir = copy_dir(pgtide, zone);
    std::fs::rename(&dir, dir.with_extension("saved")).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
}

fn mend_copy(pgtide: &Pgtide, zone: &str) {
    let dir = copy_dir(pgtide, zone);
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(dir.with_extension("saved"), &dir).unwrap();
}

fn kill_compute_and_delete_its_data(pgtide: &Pgtide) {
    let postmaster = pgtide.postmaster_pid().expect("a running compute");
    send_signal(postmaster, Signal::SIGKILL);
    assert!(wait_until(Duration::from_secs(10), || !process_alive(
        postmaster
    )));
    std::fs::remove_dir_all(pgtide.pgdata()).unwrap();
}

#[test]
fn acknowledged_commits_survive_the_loss_of_the_compute_and_its_data() {
    let pgtide = with_copies();
    pgtide.sql("CREATE TABLE acked (n int)");
    for batch in 0..20 {
        pgtide.sql(&format!(
            "INSERT INTO acked SELECT g FROM generate_series({}, {}) g",
            batch * 100,
            batch * 100 + 99
        ));
    }
    kill_compute_and_delete_its_data(&pgtide);
    // The next client waits for the rebuild and finds every row.
    assert_eq!(
        pgtide.sql("SELECT count(*), max(n) FROM acked"),
        "2000|1999"
    );
    let status = pgtide.cluster_status();
    let events = status["events"].to_string();
    assert!(events.contains("rebuilt from the base backup"), "{events}");
    assert_eq!(status["storage"]["copies_up"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_with_four_copies_and_wait_below_the_quorum() {
    let pgtide = with_copies();
    let client = pgtide.connect().await;
    client
        .batch_execute("CREATE TABLE q (n int)")
        .await
        .unwrap();

    break_copy(&pgtide, "a1");
    break_copy(&pgtide, "b2");
    for n in 0..10 {
        client
            .execute("INSERT INTO q VALUES ($1)", &[&n])
            .await
            .unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || pgtide
        .cluster_status()["storage"]["copies_up"]
        == 4));
    let storage = pgtide.cluster_status()["storage"].clone();
    assert!(
        storage["degraded"]
            .as_str()
            .unwrap()
            .contains("2 of 6 copies are down"),
        "{storage}"
    );

    // A third copy lost: below the quorum of 4, a commit must not return.
    break_copy(&pgtide, "c1");
    let pending = tokio::spawn(async move {
        client
            .execute("INSERT INTO q VALUES (100)", &[])
            .await
            .map(|_| client)
    });
    // Once the commit waits for the copies (its backend says so), it must not have returned.
    let watcher = pgtide.connect().await;
    assert_eq!(
        commits_waiting_for_the_copies(&watcher).await,
        1,
        "the commit waits for the copies"
    );
    assert!(wait_until(Duration::from_secs(10), || pgtide
        .cluster_status()["storage"]["copies_up"]
        == 3));
    assert!(
        !pending.is_finished(),
        "a commit was acknowledged by only 3 copies"
    );
    let storage = pgtide.cluster_status()["storage"].clone();
    assert!(
        storage["degraded"]
            .as_str()
            .unwrap()
            .contains("below the write quorum"),
        "{storage}"
    );

    // The copies come back: the commit completes and the copies are repaired to six.
    for zone in ["a1", "b2", "c1"] {
        mend_copy(&pgtide, zone);
    }
    let client = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("the commit completes once copies are back")
        .unwrap()
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || pgtide
        .cluster_status()["storage"]["copies_up"]
        == 6));
    let count: i64 = client
        .query_one("SELECT count(*) FROM q", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 11);
}

#[test]
fn a_corrupted_copy_is_read_around_by_its_checksums() {
    let pgtide = with_copies();
    pgtide.sql("CREATE TABLE c (v text); INSERT INTO c SELECT repeat('x', 200) FROM generate_series(1, 2000)");
    // Scribble over the WAL of one copy, in the middle of what each segment holds (its checksum
    // records, after the segment's 16 MiB in the same file, tell how far that is).
    let wal = copy_dir(&pgtide, "a1").join("main/wal");
    let mut scribbled = 0;
    for entry in std::fs::read_dir(&wal).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() != 24 {
            continue;
        }
        let written = pgtide::storage::segment::written_end(&entry.path()) as usize;
        if written < 8192 {
            continue;
        }
        let mut bytes = std::fs::read(entry.path()).unwrap();
        let middle = written / 2;
        for b in &mut bytes[middle..middle + 4096] {
            *b ^= 0xff;
        }
        std::fs::write(entry.path(), bytes).unwrap();
        scribbled += 1;
    }
    assert!(scribbled > 0);
    kill_compute_and_delete_its_data(&pgtide);
    assert_eq!(pgtide.sql("SELECT count(*) FROM c"), "2000");
}

#[test]
fn pause_and_resume_keep_working_with_copies() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "auto_pause_after = \"1s\"".into(),
        copies: true,
        ..Default::default()
    });
    pgtide.sql("CREATE TABLE p (n int)");
    for n in 1..=3 {
        pgtide.wait_state("paused", Duration::from_secs(60));
        pgtide.sql(&format!("INSERT INTO p VALUES ({n})"));
    }
    assert_eq!(pgtide.sql("SELECT sum(n) FROM p"), "6");
    let storage = pgtide.cluster_status()["storage"].clone();
    assert_eq!(storage["copies_up"], 6, "{storage}");
    // A pause ends the stream cleanly: that is no loss of the receiver.
    let events = pgtide.events();
    assert!(
        events.iter().filter(|(k, _)| k == "paused").count() >= 3,
        "{events:?}"
    );
    assert!(
        !events.iter().any(|(k, _)| k.starts_with("receiver_")),
        "{events:?}"
    );
}

#[test]
fn pgbench_with_copies_has_no_failed_transaction() {
    let pgtide = with_copies();
    let (ok, out) = pgbench(pgtide.port, &["-i", "-q"]);
    assert!(ok, "{out}");
    let (ok, out) = pgbench(pgtide.port, &["-c", "4", "-j", "2", "-t", "200"]);
    assert!(
        ok && out.contains("number of failed transactions: 0"),
        "{out}"
    );
    let storage = pgtide.cluster_status()["storage"].clone();
    assert_eq!(storage["copies_up"], 6, "{storage}");
    assert!(storage["durable_lsn"].is_string());
}

#[test]
fn old_base_backups_and_the_wal_below_them_are_pruned() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "min_acu = 1\nauto_pause_after = \"1h\"".into(),
        copies: true,
        storage: "base_backup_after_mib = 1".into(),
        ..Default::default()
    });
    let last_backup = || {
        pgtide.cluster_status()["storage"]["last_base_backup"]
            .as_str()
            .map(str::to_string)
    };
    assert!(wait_until(Duration::from_secs(60), || last_backup().is_some()));
    let first = last_backup().unwrap();
    pgtide.sql("CREATE TABLE w (n int)");
    // Each round writes more than 1 MiB of WAL and moves to a new segment: a base backup follows.
    for round in 0..4 {
        let before = last_backup();
        pgtide.sql(&format!(
            "INSERT INTO w SELECT g FROM generate_series({}, {}) g; SELECT pg_switch_wal()",
            round * 30000 + 1,
            (round + 1) * 30000
        ));
        assert!(
            wait_until(Duration::from_secs(60), || last_backup() != before),
            "no new base backup after round {round}"
        );
    }
    let first_segment = pgtide::storage::wal::Lsn::parse(&first).unwrap().segment();
    for zone in ["a1", "a2", "b1", "b2", "c1", "c2"] {
        let copy = copy_dir(&pgtide, zone).join("main");
        let backups: Vec<String> = std::fs::read_dir(copy.join("base"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tar"))
            .collect();
        assert_eq!(backups.len(), 2, "{zone}: {backups:?}");
        // Each backup carries its checksum and the WAL position a restore must reach.
        for backup in &backups {
            let start = u64::from_str_radix(backup.trim_end_matches(".tar"), 16).unwrap();
            let sidecar =
                std::fs::read_to_string(copy.join("base").join(format!("{backup}.crc32"))).unwrap();
            let end = sidecar
                .lines()
                .nth(1)
                .and_then(pgtide::storage::wal::Lsn::parse)
                .unwrap_or_else(|| panic!("{zone}: {backup}.crc32 has no end: {sidecar:?}"));
            assert!(end.0 > start, "{zone}: {backup} ends at {end}");
        }
        let oldest_kept = backups
            .iter()
            .map(|n| u64::from_str_radix(n.trim_end_matches(".tar"), 16).unwrap())
            .min()
            .unwrap()
            / pgtide::storage::wal::SEGMENT_SIZE;
        assert!(oldest_kept > first_segment);
        for entry in std::fs::read_dir(copy.join("wal")).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((_, segment)) = pgtide::storage::wal::parse_segment_file_name(&name) {
                assert!(
                    segment >= oldest_kept,
                    "{zone}: {name} lies below the oldest kept base backup"
                );
            }
        }
    }
    // What is kept still rebuilds the compute with every row.
    kill_compute_and_delete_its_data(&pgtide);
    assert_eq!(pgtide.sql("SELECT count(*) FROM w"), "120000");
}

/// pgtide processes started from this test process honour the test-only hooks (a copy throttled
/// by a `test-throttle` file in its directory).
fn enable_test_hooks() {
    std::env::set_var("PGTIDE_TEST_HOOKS", "1");
}

fn storage_of(pgtide: &Pgtide) -> serde_json::Value {
    pgtide.cluster_status()["storage"].clone()
}

/// The state of one copy in `/status` (by its zone directory's name).
fn copy_state(storage: &serde_json::Value, zone: &str) -> serde_json::Value {
    storage["copy_states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["dir"].as_str().unwrap().ends_with(&format!("/{zone}")))
        .cloned()
        .unwrap_or_else(|| panic!("no copy {zone} in {storage}"))
}

fn has_event(pgtide: &Pgtide, kind: &str, needle: &str) -> bool {
    pgtide
        .events()
        .iter()
        .any(|(k, m)| k == kind && m.contains(needle))
}

/// (segment file name, where its recorded WAL ends) for every segment of a copy.
fn wal_extents(copy: &std::path::Path) -> Vec<(String, u64)> {
    let mut extents: Vec<(String, u64)> = std::fs::read_dir(copy.join("wal"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            pgtide::storage::wal::parse_segment_file_name(&name)?;
            Some((name, pgtide::storage::segment::written_end(&e.path())))
        })
        .collect();
    extents.sort();
    extents
}

fn pgdata_swap(from: &std::path::Path, to: &std::path::Path) {
    std::fs::rename(from, to).unwrap();
}

/// `cp -a`: a directory copied with its owners and modes.
fn copy_all(from: &std::path::Path, to: &std::path::Path) {
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(copied.success());
}

/// With a wrong data directory in place: a client is refused, the cluster fails saying `why`,
/// and with its own data directory (`own`) back nothing was lost: the table still has 200 rows.
fn refused_then_restored(pgtide: &Pgtide, why: &str, own: &std::path::Path) {
    let out = pgtide.psql(&["-tA", "-c", "SELECT count(*) FROM t"]);
    assert!(!out.status.success(), "{out:?}");
    pgtide.wait_state("failed", Duration::from_secs(30));
    let failure = pgtide.cluster_status()["failure"].to_string();
    assert!(failure.contains(why), "{failure}");
    std::fs::remove_dir_all(pgtide.pgdata()).unwrap();
    pgdata_swap(own, &pgtide.pgdata());
    assert_eq!(pgtide.sql("SELECT count(*) FROM t"), "200");
}

fn postgres_bin_dir() -> std::path::PathBuf {
    pgtide::runtime::binaries::PostgresBinaries::find(None)
        .expect("the Postgres server binaries")
        .bin_dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_walsender_is_streamed_again_and_commits_wait_for_it() {
    let pgtide = with_copies();
    let client = pgtide.connect().await;
    client
        .batch_execute("CREATE TABLE r (n int)")
        .await
        .unwrap();
    let terminate = "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE backend_type = 'walsender'";

    // Terminated: the receiver connects again at once and the next commit completes.
    let terminated: bool = client.query_one(terminate, &[]).await.unwrap().get(0);
    assert!(terminated);
    if tokio::time::timeout(
        Duration::from_secs(10),
        client.execute("INSERT INTO r VALUES (1)", &[]),
    )
    .await
    .is_err()
    {
        let other = pgtide.connect().await;
        let rows = other
            .simple_query("SELECT pid, state, sent_lsn, write_lsn, flush_lsn, sync_state, pg_current_wal_lsn() FROM pg_stat_replication")
            .await
            .unwrap();
        for row in rows {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = row {
                eprintln!(
                    "{:?}",
                    (0..7)
                        .map(|i| row.get(i).map(str::to_string))
                        .collect::<Vec<_>>()
                );
            }
        }
        panic!(
            "a commit after the walsender was terminated did not complete: {}",
            storage_of(&pgtide)
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || has_event(
            &pgtide,
            "receiver_back",
            "streams again"
        )),
        "{:?}",
        pgtide.events()
    );
    assert!(has_event(
        &pgtide,
        "receiver_lost",
        "terminating connection"
    ));
    assert!(wait_until(Duration::from_secs(5), || storage_of(&pgtide)
        ["receiver"]["reconnects"]
        .as_u64()
        .unwrap()
        >= 1));
    let receiver = storage_of(&pgtide)["receiver"].clone();
    assert_eq!(receiver["state"], "streaming", "{receiver}");

    // Kept from connecting again (the compute refuses replication for a while): the status
    // says why, and a commit waits until the receiver is back.
    let hba = pgtide.pgdata().join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba).unwrap();
    let refusing: String = original
        .lines()
        .map(|l| {
            if l.starts_with("local") && l.contains("replication") {
                "local replication all reject".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(refusing, original);
    std::fs::write(&hba, refusing).unwrap();
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let terminated: bool = client.query_one(terminate, &[]).await.unwrap().get(0);
    assert!(terminated);
    let pending = tokio::spawn(async move {
        client
            .execute("INSERT INTO r VALUES (2)", &[])
            .await
            .map(|_| client)
    });
    let watcher = pgtide.connect().await;
    assert_eq!(
        commits_waiting_for_the_copies(&watcher).await,
        1,
        "the commit waits for the copies"
    );
    assert!(wait_until(Duration::from_secs(10), || storage_of(&pgtide)
        ["receiver"]["state"]
        == "reconnecting"));
    let storage = storage_of(&pgtide);
    assert!(
        storage["receiver"]["reason"]
            .as_str()
            .unwrap()
            .contains("pg_hba.conf"),
        "{storage}"
    );
    assert!(
        storage["degraded"]
            .as_str()
            .unwrap()
            .contains("reconnecting"),
        "{storage}"
    );
    assert!(
        !pending.is_finished(),
        "a commit was acknowledged with no receiver"
    );

    // Replication allowed again: the receiver is back within a second, the commit completes.
    std::fs::write(&hba, original).unwrap();
    watcher
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let client = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the commit completes once the receiver is back")
        .unwrap()
        .unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM r", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
    // (The status is published once a tick.)
    assert!(wait_until(Duration::from_secs(5), || storage_of(&pgtide)
        ["degraded"]
        .is_null()));
    let storage = storage_of(&pgtide);
    assert_eq!(storage["receiver"]["state"], "streaming", "{storage}");
    assert!(storage["receiver"]["reconnects"].as_u64().unwrap() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_backend_restarts_the_compute_processes_and_the_receiver_streams_again() {
    let pgtide = with_copies();
    let client = pgtide.connect().await;
    client
        .batch_execute("CREATE TABLE k (n int); INSERT INTO k VALUES (1)")
        .await
        .unwrap();
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let postmaster = pgtide.postmaster_pid().unwrap();
    // Postgres restarts all its processes after a backend dies this way (the walsender too).
    send_signal(backend, Signal::SIGKILL);
    let mut inserted = false;
    for _ in 0..300 {
        if let Ok(client) = pgtide.connect_as("postgres", PASSWORD, "postgres").await {
            let insert = client.execute("INSERT INTO k VALUES (2)", &[]);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(10), insert).await {
                inserted = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        inserted,
        "no commit after the compute's processes restarted"
    );
    assert_eq!(
        pgtide.postmaster_pid(),
        Some(postmaster),
        "the same compute"
    );
    assert!(
        wait_until(Duration::from_secs(10), || has_event(
            &pgtide,
            "receiver_back",
            "streams again"
        )),
        "{:?}",
        pgtide.events()
    );
    assert!(has_event(&pgtide, "receiver_lost", ""));
    assert_eq!(pgtide.sql("SELECT count(*) FROM k"), "2");
}

#[test]
fn an_emptied_copy_is_not_counted_until_it_is_backfilled() {
    enable_test_hooks();
    let mut pgtide = with_copies();
    pgtide.sql(
        "CREATE TABLE e AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 60000) g",
    );
    pgtide.stop();
    // The disk of copy a1 is replaced by an empty one (slow, to watch it being backfilled).
    let a1 = copy_dir(&pgtide, "a1").join("main");
    std::fs::remove_dir_all(&a1).unwrap();
    std::fs::create_dir_all(&a1).unwrap();
    let throttle = a1.join("test-throttle");
    std::fs::write(&throttle, (4u64 << 20).to_string()).unwrap();
    pgtide.restart();

    let storage = storage_of(&pgtide);
    let state = copy_state(&storage, "a1");
    assert_eq!(state["state"], "backfilling", "{storage}");
    assert!(
        state["reason"].as_str().unwrap().contains("empty"),
        "{state}"
    );
    assert_eq!(storage["copies_up"], 5, "an empty copy counts: {storage}");
    assert!(
        storage["degraded"]
            .as_str()
            .unwrap()
            .contains("catching up"),
        "{storage}"
    );
    // Commits go on with the other five meanwhile.
    pgtide.sql("INSERT INTO e VALUES (0, 'during')");
    assert_eq!(
        copy_state(&storage_of(&pgtide), "a1")["state"],
        "backfilling"
    );

    std::fs::remove_file(&throttle).unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || storage_of(&pgtide)["copies_up"]
            == 6),
        "{}",
        storage_of(&pgtide)
    );
    assert!(wait_until(Duration::from_secs(10), || has_event(
        &pgtide,
        "copy_back",
        "a1"
    )));
    assert!(has_event(&pgtide, "copy_backfilling", "empty"));
    // It holds the same WAL as its peers, and whose it is.
    let a2 = copy_dir(&pgtide, "a2").join("main");
    assert!(wait_until(Duration::from_secs(10), || wal_extents(&a1)
        == wal_extents(&a2)));
    assert!(wal_extents(&a1).len() >= 2, "{:?}", wal_extents(&a1));
    assert_eq!(
        std::fs::read_to_string(a1.join("identity"))
            .unwrap()
            .lines()
            .next(),
        std::fs::read_to_string(a2.join("identity"))
            .unwrap()
            .lines()
            .next()
    );
    assert_eq!(pgtide.sql("SELECT count(*) FROM e"), "60001");
}

#[test]
fn a_copy_directory_from_another_cluster_is_refused() {
    let mut pgtide = with_copies();
    pgtide.sql("CREATE TABLE mine (n int); INSERT INTO mine VALUES (1)");
    let mut other = with_copies();
    other.sql("CREATE TABLE theirs AS SELECT generate_series(1, 10000) n");
    other.stop();
    pgtide.stop();
    // Another cluster's copy directory (a disk swapped between machines) where b1 was.
    let b1 = copy_dir(&pgtide, "b1").join("main");
    std::fs::remove_dir_all(&b1).unwrap();
    pgdata_swap(&copy_dir(&other, "b1").join("main"), &b1);
    let before = wal_extents(&b1);
    assert!(!before.is_empty());
    pgtide.restart();

    let storage = storage_of(&pgtide);
    let state = copy_state(&storage, "b1");
    assert_eq!(state["state"], "refused", "{storage}");
    assert!(
        state["reason"]
            .as_str()
            .unwrap()
            .contains("database system"),
        "{state}"
    );
    assert_eq!(storage["copies_up"], 5, "{storage}");
    pgtide.sql("INSERT INTO mine SELECT generate_series(2, 5000)");
    assert_eq!(pgtide.sql("SELECT count(*) FROM mine"), "5000");
    assert!(wait_until(Duration::from_secs(10), || has_event(
        &pgtide,
        "copy_refused",
        "b1"
    )));
    // Never written: its WAL is the other cluster's still.
    assert_eq!(wal_extents(&b1), before);
    assert_eq!(copy_state(&storage_of(&pgtide), "b1")["state"], "refused");
}

#[test]
fn a_compute_that_is_not_the_one_the_copies_hold_is_refused() {
    let pgtide = with_copies();
    pgtide.sql("CREATE TABLE t AS SELECT generate_series(1, 100) n");
    let pause = |pgtide: &Pgtide| {
        let out = pgtide.cli(&["pause", "main"]);
        assert!(out.status.success(), "{out:?}");
        pgtide.wait_state("paused", Duration::from_secs(60));
    };
    pause(&pgtide);
    let pgdata = pgtide.pgdata();
    let old = pgdata.with_extension("old");
    let newer = pgdata.with_extension("newer");
    copy_all(&pgdata, &old);
    let old_snapshot = pgdata.with_extension("snapshot");
    copy_all(&old, &old_snapshot);
    pgtide.sql("INSERT INTO t SELECT generate_series(101, 200)");
    pause(&pgtide);

    // An older copy of the data directory comes back: the copies hold WAL it never wrote.
    pgdata_swap(&pgdata, &newer);
    pgdata_swap(&old, &pgdata);
    refused_then_restored(&pgtide, "older than the copies", &newer);
    pause(&pgtide);

    // A data directory of this system that ran on by itself: the old copy again, started
    // outside pgtide and written to until it holds more WAL than the copies. It passes the
    // system and "older" checks; its WAL below the copies' durable position is another history.
    copy_all(&old_snapshot, &old);
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&old).unwrap());
    let owner = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner))
        .unwrap()
        .unwrap();
    let mut single = std::process::Command::new("runuser")
        .args(["-u", &owner.name, "--"])
        .arg(postgres_bin_dir().join("postgres"))
        .arg("--single")
        .arg("-D")
        .arg(&old)
        .arg("postgres")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        single.stdin.as_mut().unwrap(),
        b"INSERT INTO t SELECT -n FROM generate_series(1, 30000) n\n",
    )
    .unwrap();
    let ran = single.wait_with_output().unwrap();
    assert!(ran.status.success(), "{ran:?}");
    pgdata_swap(&pgdata, &newer);
    pgdata_swap(&old, &pgdata);
    refused_then_restored(&pgtide, "differs from the copies'", &newer);
    pause(&pgtide);

    // A data directory of another database system (initdb'd afresh): refused too.
    pgdata_swap(&pgdata, &newer);
    // The cluster's directory is pgtide's (0711): the new data directory is made for initdb.
    std::fs::create_dir(&pgdata).unwrap();
    let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    nix::unistd::chown(&pgdata, Some(postgres.uid), Some(postgres.gid)).unwrap();
    let initdb = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(postgres_bin_dir().join("initdb"))
        .arg("-D")
        .arg(&pgdata)
        .args(pgtide::runtime::host::INITDB_OPTIONS)
        .output()
        .unwrap();
    assert!(initdb.status.success(), "{initdb:?}");
    refused_then_restored(&pgtide, "database system", &newer);
}

/// pgtide's resident memory now and at its peak, in MiB.
fn rss_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn a_slow_copy_leaves_the_quorum_with_memory_bounded_and_catches_up() {
    enable_test_hooks();
    let pgtide = with_copies();
    let throttle = copy_dir(&pgtide, "b2").join("main/test-throttle");
    std::fs::write(&throttle, (512u64 << 10).to_string()).unwrap();
    let (_, rss_before) = rss_mib(pgtide.pid());
    // Watch the copies while a bulk load goes through.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        let url = pgtide.admin_url("/status");
        std::thread::spawn(move || {
            let mut max_queued = 0u64;
            let mut lagging_seen = false;
            let mut min_up = 6u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(status) = ureq::get(&url)
                    .call()
                    .ok()
                    .and_then(|r| r.into_body().read_to_string().ok())
                    .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                {
                    let storage = &status["clusters"][0]["storage"];
                    for copy in storage["copy_states"].as_array().into_iter().flatten() {
                        max_queued = max_queued.max(copy["queued_bytes"].as_u64().unwrap_or(0));
                        if copy["dir"].as_str().unwrap_or("").ends_with("/b2")
                            && copy["state"] == "lagging"
                        {
                            lagging_seen = true;
                        }
                    }
                    min_up = min_up.min(storage["copies_up"].as_u64().unwrap_or(6));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (max_queued, lagging_seen, min_up)
        })
    };
    let started = std::time::Instant::now();
    pgtide.sql(
        "CREATE TABLE bulk AS SELECT g, repeat(md5(g::text), 16) AS pad \
         FROM generate_series(1, 150000) g",
    );
    let took = started.elapsed();
    let wal: u64 = pgtide
        .sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        .parse()
        .unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (max_queued, lagging_seen, min_up) = watcher.join().unwrap();
    let (_, rss_peak) = rss_mib(pgtide.pid());
    eprintln!(
        "bulk load of {} MiB of WAL in {took:?}; most WAL queued for a copy {} MiB; pgtide RSS \
         peak {rss_peak} MiB (before {rss_before} MiB)",
        wal >> 20,
        max_queued >> 20
    );
    assert!(wal > 96 << 20, "the load wrote {wal} bytes of WAL only");
    // (`/status` is published once a tick: the watcher may have missed it during the load.)
    assert!(
        lagging_seen
            || wait_until(Duration::from_secs(5), || copy_state(
                &storage_of(&pgtide),
                "b2"
            )["state"]
                == "lagging"),
        "b2 never left the quorum: {}",
        storage_of(&pgtide)
    );
    assert!(min_up == 5 || storage_of(&pgtide)["copies_up"] == 5);
    assert!(wait_until(Duration::from_secs(5), || has_event(
        &pgtide,
        "copy_lagging",
        "b2"
    )));
    // A member's queue stays within the lag limit (plus one batch).
    assert!(max_queued <= 72 << 20, "{max_queued} bytes queued");
    // The load did not go at the slow copy's pace (512 KiB/s would take minutes).
    assert!(took < Duration::from_secs(90), "{took:?}");
    assert!(rss_peak < 200, "pgtide's RSS peaked at {rss_peak} MiB");

    // Fast again: it catches up from its peers and counts again.
    std::fs::remove_file(&throttle).unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || storage_of(&pgtide)["copies_up"]
            == 6),
        "{}",
        storage_of(&pgtide)
    );
    assert!(wait_until(Duration::from_secs(10), || has_event(
        &pgtide,
        "copy_back",
        "b2"
    )));
    let b2 = copy_dir(&pgtide, "b2").join("main");
    let c1 = copy_dir(&pgtide, "c1").join("main");
    assert!(wait_until(Duration::from_secs(10), || wal_extents(&b2)
        == wal_extents(&c1)));
    assert_eq!(pgtide.sql("SELECT count(*) FROM bulk"), "150000");
}

/// A tmpfs mounted for a test, unmounted at the end.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &std::path::Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_is_down_disk_full_and_left_alone_until_space_is_free() {
    let copies = test_dir();
    let zones = ["a1", "a2", "b1", "b2", "c1", "c2"];
    let Some(small) = Mount::tmpfs(&copies.path().join("b1"), "8m") else {
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    };
    let list: Vec<String> = zones
        .iter()
        .map(|z| format!("{:?}", copies.path().join(z).display().to_string()))
        .collect();
    let pgtide = Pgtide::start_with(Options {
        cluster: "min_acu = 1\nauto_pause_after = \"1h\"".into(),
        copies: true,
        storage: format!("copies = [{}]", list.join(", ")),
        ..Default::default()
    });
    let b1 = copies.path().join("b1/main");
    // More WAL than the 8 MiB disk holds.
    pgtide.sql(
        "CREATE TABLE f AS SELECT g, repeat('y', 300) AS pad FROM generate_series(1, 40000) g",
    );
    assert!(
        wait_until(Duration::from_secs(30), || copy_state(
            &storage_of(&pgtide),
            "b1"
        )["state"]
            == "down"),
        "{}",
        storage_of(&pgtide)
    );
    let state = copy_state(&storage_of(&pgtide), "b1");
    assert!(
        state["reason"].as_str().unwrap().starts_with("disk full"),
        "{state}"
    );
    assert_eq!(storage_of(&pgtide)["copies_up"], 5);
    // Left alone while full: its files are not touched again, tick after tick.
    let held = wal_extents(&b1);
    let sizes = || -> Vec<u64> {
        std::fs::read_dir(b1.join("wal"))
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .collect()
    };
    let before = sizes();
    pgtide.sql("INSERT INTO f SELECT g, 'z' FROM generate_series(1, 1000) g");
    // Longer than the pause after a full disk: its writer has looked at it again meanwhile.
    let acu_seconds = || pgtide.cluster_status()["acu_seconds"].as_f64().unwrap();
    let since = acu_seconds();
    assert!(wait_until(Duration::from_secs(30), || acu_seconds() >= since + 7.0));
    assert_eq!(wal_extents(&b1), held);
    assert_eq!(sizes(), before);
    let downs = pgtide
        .events()
        .iter()
        .filter(|(k, m)| k == "copy_down" && m.contains("b1"))
        .count();
    assert_eq!(downs, 1, "{:?}", pgtide.events());
    assert!(!has_event(&pgtide, "copy_backfilling", "b1"));

    // Room again: it is backfilled and counts again.
    small.resize("256m");
    assert!(
        wait_until(Duration::from_secs(60), || storage_of(&pgtide)["copies_up"]
            == 6),
        "{}",
        storage_of(&pgtide)
    );
    // The event is drained from the storage on the cluster's next tick.
    assert!(wait_until(Duration::from_secs(10), || has_event(
        &pgtide,
        "copy_back",
        "b1"
    )));
    drop(pgtide);
}

/// A measurement, not a check (run it with `--ignored --nocapture`): pgtide's resident memory
/// while a 500 MB COPY (`PGTIDE_COPY_MB`) goes through with one copy throttled to 4 MiB/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_rss_during_a_500_mb_copy_with_one_copy_throttled() {
    use futures_util::SinkExt;
    enable_test_hooks();
    let pgtide = with_copies();
    let throttle = copy_dir(&pgtide, "b2").join("main/test-throttle");
    std::fs::write(&throttle, (4u64 << 20).to_string()).unwrap();
    let client = pgtide.connect().await;
    client
        .batch_execute("CREATE TABLE big (id bigint, pad text)")
        .await
        .unwrap();
    let pid = pgtide.pid();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_mib(pid).0);
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    let (rss_before, _) = rss_mib(pid);
    let started = std::time::Instant::now();
    let sink = client.copy_in("COPY big FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let pad = "p".repeat(1000);
    let mut sent = 0u64;
    let mut id = 0u64;
    // PGTIDE_COPY_MB sets the size (500 MB unless told).
    let target: u64 = std::env::var("PGTIDE_COPY_MB")
        .ok()
        .and_then(|mb| mb.parse().ok())
        .unwrap_or(500)
        * 1_000_000;
    while sent < target {
        let mut chunk = String::with_capacity(1 << 20);
        while chunk.len() < (1 << 20) - 1100 {
            id += 1;
            chunk.push_str(&format!("{id}\t{pad}\n"));
        }
        sent += chunk.len() as u64;
        sink.send(bytes::Bytes::from(chunk)).await.unwrap();
    }
    let rows = sink.finish().await.unwrap();
    let took = started.elapsed();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let (_, hwm) = rss_mib(pid);
    let storage = storage_of(&pgtide);
    eprintln!(
        "COPY of {} MB ({rows} rows) in {took:?}; pgtide RSS before {rss_before} MiB, peak sampled \
         {peak} MiB, high-water mark {hwm} MiB; b2 {}",
        sent / 1_000_000,
        copy_state(&storage, "b2")
    );
    assert_eq!(rows, id);
}

/// How many commits wait for the copies (their backends say `SyncRep`), once one does or after
/// 10 s.
async fn commits_waiting_for_the_copies(watcher: &tokio_postgres::Client) -> i64 {
    let mut waiting = 0i64;
    for _ in 0..500 {
        waiting = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    waiting
}
