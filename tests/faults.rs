//! End to end: a compute whose data directory is lost, and a cluster that must not start empty.
//! (Slow tests: each starts pgtide and Postgres.)

mod common;

use std::time::Duration;

use common::*;

fn with_copies() -> Pgtide {
    let pgtide = Pgtide::start_with(Options {
        cluster: "min_acu = 1\nauto_pause_after = \"1h\"".into(),
        copies: true,
        ..Default::default()
    });
    pgtide.wait_state("running", Duration::from_secs(60));
    pgtide
}

/// What a user saw: the compute killed, its data directory deleted half a second later (after
/// pgtide already restarted it on the old directory). It must be noticed and rebuilt.
#[test]
fn a_data_directory_deleted_under_a_restarted_compute_is_rebuilt_from_the_copies() {
    let pgtide = with_copies();
    pgtide.sql("CREATE TABLE acked (n int); INSERT INTO acked SELECT generate_series(1, 5000)");
    let postmaster = pgtide.postmaster_pid().expect("a running compute");
    send_signal(postmaster, Signal::SIGKILL);
    assert!(wait_until(Duration::from_secs(10), || pgtide
        .events()
        .iter()
        .any(|(kind, _)| kind == "restarted")));
    std::fs::remove_dir_all(pgtide.pgdata()).unwrap();
    pgtide.wait_for_data_directory_lost();
    assert_eq!(
        pgtide.sql("SELECT count(*), max(n) FROM acked"),
        "5000|5000"
    );
    pgtide.assert_rebuilt_from_a_backup();
    assert!(pgtide.pgdata().join("PG_VERSION").exists());
}

/// A cluster without copies whose data directory is gone is refused, with the reason, rather
/// than started as a new, empty database.
#[test]
fn without_copies_a_lost_data_directory_is_refused_not_initialised() {
    let mut pgtide = Pgtide::start_with(Options {
        cluster: "min_acu = 1\nauto_pause_after = \"1h\"".into(),
        ..Default::default()
    });
    pgtide.wait_state("running", Duration::from_secs(60));
    pgtide.sql("CREATE TABLE precious (v int)");
    pgtide.stop();
    std::fs::remove_dir_all(pgtide.pgdata()).unwrap();
    pgtide.restart_into("failed");
    let out = pgtide.psql(&["-c", "SELECT 1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("refusing to initialise"), "{stderr}");
    assert!(!pgtide.pgdata().exists(), "no empty database was made");
}
