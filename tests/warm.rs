//! End to end: the process runtime's warm pool. A resume takes a ready slot (a hit) and the pool
//! refills behind it; a new cluster gets an initialised data directory from the pool instead of
//! running initdb; templates made by one run are ready at the next start.
//! (Slow tests: each starts pgtide and Postgres.)

mod common;

use std::time::Duration;

use common::*;

fn warm_pool(pgtide: &Pgtide) -> serde_json::Value {
    pgtide.status()["warm_pool"].clone()
}

fn wait_warm(pgtide: &Pgtide, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let ok = wait_until(Duration::from_secs(60), || check(&warm_pool(pgtide)));
    assert!(
        ok,
        "warm pool never {what}: {}\n{}",
        warm_pool(pgtide),
        pgtide.log()
    );
}

#[test]
fn resumes_and_new_clusters_draw_from_the_pool_and_it_refills() {
    let mut pgtide = Pgtide::start_with(Options {
        runtime: "warm_pool_size = 1".into(),
        cluster: "min_acu = 0\nauto_pause_after = \"1h\"".into(),
        ..Options::default()
    });
    pgtide.wait_state("running", Duration::from_secs(60));
    // The first start raced the first refill: a miss, served cold.
    wait_warm(&pgtide, "filled", |p| p["ready"] == 1 && p["refills"] == 1);
    let pool = warm_pool(&pgtide);
    assert_eq!(pool["size"], 1);
    assert_eq!(pool["misses"], 1, "{pool}");
    assert_eq!(pool["in_use"], 1, "{pool}");
    pgtide.sql("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)");

    // A resume takes the ready slot; the pool makes another behind it.
    assert!(pgtide.cli(&["pause", "main"]).status.success());
    pgtide.wait_state("paused", Duration::from_secs(30));
    assert_eq!(warm_pool(&pgtide)["in_use"], 0);
    assert_eq!(pgtide.sql("SELECT v FROM kept"), "42");
    let pool = warm_pool(&pgtide);
    assert_eq!(
        (pool["hits"].as_u64(), pool["in_use"].as_u64()),
        (Some(1), Some(1)),
        "{pool}"
    );
    let (_, resumed) = pgtide
        .events()
        .into_iter()
        .filter(|(kind, _)| kind == "resumed")
        .find(|(_, message)| !message.contains("pgtide start"))
        .unwrap();
    assert!(resumed.contains("from a warm slot"), "{resumed}");
    wait_warm(&pgtide, "refilled", |p| {
        p["ready"] == 1 && p["refills"] == 2
    });
    let metrics = pgtide.metrics();
    for line in [
        "pgtide_warm_pool_ready 1",
        "pgtide_warm_pool_hits_total 1",
        "pgtide_warm_pool_misses_total 1",
        "pgtide_warm_pool_refills_total 2",
    ] {
        assert!(
            metrics.contains(line),
            "no {line:?} in /metrics:\n{metrics}"
        );
    }

    // A new cluster (its whole directory gone: a lost data directory alone is refused, see
    // the next test) gets the template that the last run left ready: no initdb for it.
    pgtide.stop();
    std::fs::remove_dir_all(pgtide.pgdata().parent().unwrap()).unwrap();
    let log_before = pgtide.log().len();
    pgtide.restart();
    let pool = warm_pool(&pgtide);
    assert_eq!(
        (pool["hits"].as_u64(), pool["misses"].as_u64()),
        (Some(1), Some(0)),
        "{pool}"
    );
    let this_run = pgtide.log()[log_before..].to_string();
    assert!(
        !this_run.contains("clusters/main/pgdata.initdb"),
        "the new cluster ran initdb despite a ready template:\n{this_run}"
    );
    assert_eq!(
        pgtide.sql("SELECT count(*) FROM pg_class WHERE relname = 'kept'"),
        "0"
    );
    assert_eq!(pgtide.sql("SELECT 1"), "1");
    wait_warm(&pgtide, "refilled after the restart", |p| p["ready"] == 1);
}

#[test]
fn without_a_pool_every_start_is_a_miss_and_works() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "min_acu = 0\nauto_pause_after = \"1h\"".into(),
        ..Options::default()
    });
    pgtide.wait_state("running", Duration::from_secs(60));
    assert!(pgtide.cli(&["pause", "main"]).status.success());
    pgtide.wait_state("paused", Duration::from_secs(30));
    assert_eq!(pgtide.sql("SELECT 1"), "1");
    let pool = warm_pool(&pgtide);
    assert_eq!(pool["size"], 0);
    assert_eq!(
        (pool["hits"].as_u64(), pool["misses"].as_u64()),
        (Some(0), Some(2)),
        "{pool}"
    );
    assert_eq!(
        (pool["ready"].as_u64(), pool["refills"].as_u64()),
        (Some(0), Some(0))
    );
}

/// The system identifier `pg_controldata` reads from a data directory.
fn controldata_sysid(pgdata: &std::path::Path) -> String {
    let bin = pgtide::runtime::binaries::PostgresBinaries::find(None)
        .expect("the Postgres binaries")
        .pg_controldata();
    let out = std::process::Command::new(bin)
        .arg(pgdata)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Database system identifier:"))
        .expect("a system identifier")
        .trim()
        .to_string()
}

#[test]
fn templates_are_copies_of_one_golden_initdb_each_with_an_identity_of_its_own() {
    let mut pgtide = Pgtide::start_with(Options {
        runtime: "warm_pool_size = 1".into(),
        cluster: "min_acu = 0\nauto_pause_after = \"1h\"".into(),
        ..Options::default()
    });
    wait_warm(&pgtide, "filled", |p| p["ready"] == 1);
    let golden = controldata_sysid(&pgtide.data_dir().join("warm/golden"));
    let first = pgtide.sql("SELECT system_identifier FROM pg_control_system()");
    // A new cluster takes the ready template, a copy of the golden directory.
    pgtide.stop();
    std::fs::remove_dir_all(pgtide.pgdata().parent().unwrap()).unwrap();
    pgtide.restart();
    let second = pgtide.sql("SELECT system_identifier FROM pg_control_system()");
    assert!(
        golden != first && golden != second && first != second,
        "golden {golden}, first {first}, second {second}"
    );
    assert!(
        !pgtide
            .log()
            .contains("could not be copied from the golden one"),
        "{}",
        pgtide.log()
    );
    // Its WAL carries its own identifier: it writes, checkpoints and recovers from a crash.
    pgtide.sql("CREATE TABLE kept (v int); INSERT INTO kept SELECT generate_series(1, 1000)");
    pgtide.sql("CHECKPOINT");
    pgtide.sql("INSERT INTO kept VALUES (0)");
    send_signal(
        pgtide.postmaster_pid().unwrap(),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(wait_until(Duration::from_secs(60), || pgtide
        .events()
        .iter()
        .any(|(kind, _)| kind == "restarted")));
    pgtide.wait_state("running", Duration::from_secs(60));
    assert_eq!(pgtide.sql("SELECT count(*) FROM kept"), "1001");
}
