//! End to end: pgbench load moves the ACUs up and down, live, without a failed transaction.
//! (Slow test: about a minute.)

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn scale_events(pgtide: &Pgtide) -> Vec<String> {
    pgtide.cluster_status()["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("scaled_"))
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn load_moves_the_acus_without_a_failed_transaction() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "min_acu = 0.5\nscale_down_after = \"1s\"".into(),
        ..Default::default()
    });
    let (ok, out) = pgbench(pgtide.port, &["-i", "-s", "1", "-q"]);
    assert!(ok, "{out}");
    // Loading the data may have raised the ACUs; start the trace from the bottom.
    assert!(wait_until(Duration::from_secs(30), || pgtide
        .cluster_status()["acu"]
        == 0.5));

    // A steady, light pgbench runs through everything; bursts of heavy load come and go.
    let steady = pgbench_command(pgtide.port, PASSWORD)
        .args([
            "-M", "prepared", "-c", "2", "-R", "40", "-T", "45", "postgres",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0.0f64;
    let started = Instant::now();
    for _ in 0..3 {
        let (ok, out) = pgbench(pgtide.port, &["-S", "-c", "8", "-j", "2", "-T", "5"]);
        assert!(
            ok && out.contains("number of failed transactions: 0"),
            "{out}"
        );
        peak = peak.max(pgtide.cluster_status()["acu"].as_f64().unwrap());
        // The load's shape (bursts and gaps), not a wait for a condition.
        std::thread::sleep(Duration::from_secs(6));
    }
    let steady = steady.wait_with_output().unwrap();
    let steady_out = format!(
        "{}{}",
        String::from_utf8_lossy(&steady.stdout),
        String::from_utf8_lossy(&steady.stderr)
    );
    assert!(steady.status.success(), "{steady_out}");
    assert!(
        steady_out.contains("number of failed transactions: 0"),
        "{steady_out}"
    );
    let events = scale_events(&pgtide);
    assert!(
        peak > 1.0,
        "load raised the ACUs: peak {peak}, events {events:?}"
    );
    assert!(
        events.len() >= 10,
        "{} scale events in {:?}: {events:?}",
        events.len(),
        started.elapsed()
    );
    assert!(events.iter().any(|e| e.starts_with("up ")), "{events:?}");
    assert!(events.iter().any(|e| e.starts_with("down ")), "{events:?}");

    // The end of the load lowers them again, one step per second here.
    assert!(
        wait_until(Duration::from_secs(40), || pgtide.cluster_status()["acu"]
            == 0.5),
        "ACU did not come back down: {}",
        pgtide.cluster_status()
    );

    // Read back what is in force: the cgroup's limits and Postgres's settings at 0.5 ACU.
    let status = pgtide.cluster_status();
    let limits = &status["limits"];
    assert_eq!(limits["cpu_cores"], 0.125, "{limits}");
    assert_eq!(limits["memory_mib"], 1024, "{limits}");
    assert_eq!(pgtide.sql("SHOW work_mem"), "16MB");
    assert_eq!(pgtide.sql("SHOW effective_cache_size"), "768MB");
    if limits["enforced"] == true {
        let dirs: Vec<String> = limits["applied_at"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect();
        let quota = dirs
            .iter()
            .map(|d| read(&format!("{d}/cpu.cfs_quota_us")))
            .chain(dirs.iter().map(|d| read(&format!("{d}/cpu.max"))))
            .find(|v| !v.is_empty())
            .expect("a CPU quota file");
        assert!(
            quota == "12500" || quota.starts_with("12500 "),
            "quota {quota}"
        );
        let memory = dirs
            .iter()
            .map(|d| read(&format!("{d}/memory.limit_in_bytes")))
            .chain(dirs.iter().map(|d| read(&format!("{d}/memory.max"))))
            .find(|v| !v.is_empty())
            .expect("a memory limit file");
        assert_eq!(memory, (1024u64 * 1024 * 1024).to_string());
    } else {
        eprintln!(
            "cgroup limits are not enforced on this machine: {}",
            limits["mechanism"]
        );
    }
    assert!(status["acu_seconds"].as_f64().unwrap() > 0.0);
    let metrics = pgtide.metrics();
    assert!(
        metrics.contains("pgtide_cluster_scaling_events_total{"),
        "{metrics}"
    );
    assert!(metrics.contains("pgtide_cluster_acu_target{cluster=\"main\"}"));
    assert!(metrics.contains("pgtide_cluster_acu_seconds_total{cluster=\"main\"}"));
    // Every resize reloads the configuration: none of them finds a setting it cannot apply.
    let log = std::fs::read_to_string(pgtide.data_dir().join("clusters/main/postgres.log"))
        .unwrap_or_default();
    for noise in ["cannot be changed without restarting", "contains errors"] {
        let found: Vec<&str> = log.lines().filter(|l| l.contains(noise)).collect();
        assert!(found.is_empty(), "{found:#?}");
    }
}

#[test]
fn acu_seconds_survive_a_restart() {
    let mut pgtide = Pgtide::start_with(Options {
        cluster: "min_acu = 1".into(),
        ..Default::default()
    });
    assert!(wait_until(Duration::from_secs(10), || pgtide
        .cluster_status()["acu_seconds"]
        .as_f64()
        .unwrap()
        >= 2.0));
    let before = pgtide.cluster_status()["acu_seconds"].as_f64().unwrap();
    pgtide.restart();
    let after = pgtide.cluster_status()["acu_seconds"].as_f64().unwrap();
    assert!(after >= before, "{after} < {before}");
}
