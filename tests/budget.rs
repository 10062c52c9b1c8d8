//! End to end: the machine budget (`[capacity] max_total_acu`). Three clusters share 1.5 ACU:
//! a second cluster's load cannot take the first's share (its scale-up is capped, with a
//! `budget_capped` event); a third's resume pauses the longest-idle cluster; and when every
//! running cluster has a client, a resume waits `resume_timeout` and fails with "no capacity"
//! (SQLSTATE 53000). (Slow: starts pgtide and three Postgres.)

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use pgtide::capacity::BudgetSource;
use pgtide::cluster::state::StateName;

const TENANT_PASSWORD: &str = "tenant-pw";

fn has_event(pgtide: &Pgtide, cluster: &str, kind: &str) -> bool {
    pgtide
        .cluster(cluster)
        .events
        .iter()
        .any(|e| e.kind.as_str() == kind)
}

/// A session that keeps `cluster` busy until it is killed.
fn hold_session(port: u16, cluster: &str) -> Child {
    Command::new("psql")
        .args(["-X", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-U",
            "postgres",
            "-d",
            cluster,
            "-c",
            "SELECT pg_sleep(120)",
        ])
        .env("PGPASSWORD", TENANT_PASSWORD)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql runs")
}

fn pgbench_routed(port: u16, cluster: &str, args: &[&str]) -> (bool, String) {
    pgbench_on(port, TENANT_PASSWORD, cluster, args)
}

fn create(pgtide: &Pgtide, name: &str, max_acu: &str) {
    let out = pgtide.cli(&[
        "create",
        name,
        "--max-acu",
        max_acu,
        "--password",
        TENANT_PASSWORD,
    ]);
    assert!(
        out.status.success(),
        "pgtide create {name}: {}{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        pgtide.log()
    );
}

#[test]
fn clusters_share_the_machine_budget() {
    let shared_port = free_port();
    let pgtide = Pgtide::start_with(Options {
        top: format!(
            "[capacity]\nmax_total_acu = 1.5\n\n[tenants]\nlisten = \"127.0.0.1:{shared_port}\"\n"
        ),
        cluster: "auto_pause_after = \"1h\"\nresume_timeout = \"5s\"".into(),
        users: format!("[[clusters.users]]\nname = \"tenant\"\npassword = \"{TENANT_PASSWORD}\"\n"),
        ..Default::default()
    });
    let capacity = pgtide.status_typed().capacity.expect("the budget is shown");
    assert_eq!(capacity.max_total_acu, 1.5);
    assert_eq!(capacity.source, BudgetSource::Config);
    assert_eq!(capacity.held_acu, 0.5, "main runs at its start size");
    let table = pgtide.cli(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("machine budget: running clusters hold 0.5 of 1.5 ACU"),
        "{table}"
    );

    // The second cluster's load cannot take the first's share.
    create(&pgtide, "one", "4");
    let (ok, out) = pgbench_routed(shared_port, "one", &["-i", "-s", "1", "-q"]);
    assert!(ok, "{out}");
    let (ok, out) = pgbench_routed(shared_port, "one", &["-S", "-c", "8", "-j", "2", "-T", "8"]);
    assert!(ok, "{out}");
    assert!(
        wait_until(Duration::from_secs(30), || has_event(
            &pgtide,
            "one",
            "budget_capped"
        )),
        "one's scale-up was not capped: {:?}",
        pgtide.cluster("one").events
    );
    let one = pgtide.cluster("one");
    assert!(
        one.acu <= 1.0,
        "one holds {} ACU of 1.5 beside main",
        one.acu
    );
    let main = pgtide.cluster("main");
    assert_eq!(main.state, StateName::Running);
    assert_eq!(main.acu, 0.5, "main keeps its share");
    assert!(pgtide.status_typed().capacity.unwrap().held_acu <= 1.5);

    // A third cluster's resume pauses the longest idle: main, untouched since it started.
    create(&pgtide, "two", "1");
    pgtide.wait_cluster_state("main", StateName::Paused, Duration::from_secs(30));
    assert!(has_event(&pgtide, "main", "budget_paused"));
    assert!(has_event(&pgtide, "two", "budget_waiting"));
    assert_eq!(pgtide.cluster("one").state, StateName::Running);
    assert_eq!(pgtide.cluster("two").state, StateName::Running);

    // Every running cluster has a client: main cannot resume, and says why.
    let mut sessions = vec![
        hold_session(shared_port, "one"),
        hold_session(shared_port, "two"),
    ];
    assert!(wait_until(Duration::from_secs(30), || {
        pgtide.cluster("one").clients == 1 && pgtide.cluster("two").clients == 1
    }));
    let refused = psql_as(
        pgtide.port,
        "tenant",
        TENANT_PASSWORD,
        "postgres",
        &["-c", "SELECT 1"],
    );
    assert!(!refused.status.success(), "main should not have resumed");
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains("no capacity") && error.contains("53000"),
        "{error}"
    );
    assert_eq!(pgtide.cluster("main").state, StateName::Paused);

    // Once a client leaves, the next resume pauses its idle cluster and goes on.
    for session in &mut sessions {
        session.kill().unwrap();
        session.wait().unwrap();
    }
    let out = psql_as(
        pgtide.port,
        "tenant",
        TENANT_PASSWORD,
        "postgres",
        &["-tA", "-c", "SELECT 'back'"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "back");
}
