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
    tokio::time::sleep(Duration::from_secs(4)).await;
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
        let written = pgtide::storage::copies::written_end(&entry.path()) as usize;
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
