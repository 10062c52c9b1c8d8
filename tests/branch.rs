//! End to end: branches and point-in-time restores from the six copies. Rows written before
//! and after a moment (and an LSN) taken between two committed inserts; a branch at that
//! moment, at that LSN and at now holds exactly what was committed by then; a branch of a
//! branch; the source serving pgbench throughout with no failed transaction; and the refusals
//! (before the window, in the future, an unknown source, a taken name).
//! (Slow tests: each starts pgtide with copies, and every branch runs Postgres twice.)

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use pgtide::cluster::state::StateName;
use pgtide::tenants::registry::Source;

/// A pgtide with copies on, cluster "main" from the file, and the shared endpoint (no TLS) on
/// its own port for the branches.
fn start() -> (Pgtide, u16) {
    let port = free_port();
    let pgtide = Pgtide::start_with(Options {
        top: format!("[tenants]\nlisten = \"127.0.0.1:{port}\"\n"),
        copies: true,
        ..Default::default()
    });
    (pgtide, port)
}

/// A call of the admin API: status and body.
fn post(pgtide: &Pgtide, path: &str, body: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let response = agent
        .post(&pgtide.admin_url(path))
        .header("content-type", "application/json")
        .send(body)
        .expect("the admin endpoint answers");
    let status = response.status().as_u16();
    (status, response.into_body().read_to_string().unwrap())
}

fn cli(pgtide: &Pgtide, args: &[&str]) -> (bool, String) {
    let out = pgtide.cli(args);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn cli_ok(pgtide: &Pgtide, args: &[&str]) -> String {
    let (ok, text) = cli(pgtide, args);
    assert!(ok, "pgtide {args:?}: {text}\n{}", pgtide.log());
    text
}

/// The rows of table `t` as "id:phase" in id order.
fn rows(port: u16, cluster: &str) -> String {
    branch_sql(
        port,
        cluster,
        "SELECT string_agg(id || ':' || phase, ',' ORDER BY id) FROM t",
    )
}

#[test]
fn branches_hold_exactly_what_was_committed_at_their_point() {
    let (mut pgtide, port) = start();
    pgtide.sql("CREATE TABLE t (id int PRIMARY KEY, phase text)");
    pgtide.sql("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 3) g");
    // Between the two committed inserts: a moment and a WAL position.
    let moment = pgtide.sql("SELECT now()");
    let lsn = pgtide.sql("SELECT pg_current_wal_lsn()");
    pgtide.sql("INSERT INTO t SELECT g, 'after' FROM generate_series(4, 6) g");
    let before = "1:before,2:before,3:before";
    let all = "1:before,2:before,3:before,4:after,5:after,6:after";

    // At the moment, under Aurora's name.
    let out = cli_ok(
        &pgtide,
        &["restore", "main", "--to", "at-time", "--at", &moment],
    );
    assert!(
        out.contains("cluster \"at-time\" branched from \"main\""),
        "{out}"
    );
    assert_eq!(rows(port, "at-time"), before);

    // At the LSN, by the API.
    let (code, body) = post(
        &pgtide,
        "/clusters/main/branch",
        &format!(r#"{{"name": "at-lsn", "lsn": "{lsn}"}}"#),
    );
    assert_eq!(code, 201, "{body}\n{}", pgtide.log());
    let branched: pgtide::branch::Branched = serde_json::from_str(&body).unwrap();
    assert_eq!(branched.target, format!("LSN {lsn}"));
    assert_eq!(rows(port, "at-lsn"), before);

    // At now: everything, on a timeline of its own, a created cluster like any other.
    let out = cli_ok(&pgtide, &["branch", "main", "now-copy"]);
    assert!(out.contains("at now ("), "{out}");
    assert_eq!(rows(port, "now-copy"), all);
    let timeline: u32 = branch_sql(
        port,
        "now-copy",
        "SELECT timeline_id FROM pg_control_checkpoint()",
    )
    .parse()
    .unwrap();
    assert!(
        timeline >= 2,
        "a branch promotes onto a new timeline, got {timeline}"
    );
    let now_copy = pgtide.cluster("now-copy");
    assert_eq!(now_copy.source, Source::Created);
    assert_eq!(now_copy.max_acu, pgtide.cluster("main").max_acu);
    assert!(
        now_copy
            .events
            .iter()
            .any(|e| e.message.contains("first base backup")),
        "the branch's own copies start with a base backup: {:?}",
        now_copy.events
    );

    // The branch writes on its own; a branch of it sees that, and the source does not.
    branch_sql(port, "now-copy", "INSERT INTO t VALUES (7, 'branch')");
    cli_ok(&pgtide, &["branch", "now-copy", "grandchild"]);
    assert_eq!(rows(port, "grandchild"), format!("{all},7:branch"));
    let grand_timeline: u32 = branch_sql(
        port,
        "grandchild",
        "SELECT timeline_id FROM pg_control_checkpoint()",
    )
    .parse()
    .unwrap();
    assert!(
        grand_timeline > timeline,
        "{grand_timeline} after {timeline}"
    );
    assert_eq!(rows(port, "main"), all);
    assert_eq!(pgtide.sql("SELECT count(*) FROM t"), "6");

    // The restore window in /status: from the oldest backup to the durable position.
    let main = pgtide.status();
    let cluster = main["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "main")
        .unwrap()
        .clone();
    let window = &cluster["storage"]["restore_window"];
    assert!(window["earliest_lsn"].is_string(), "{cluster}");
    assert!(window["latest_lsn"].is_string(), "{cluster}");
    assert!(window["copies_bytes"].as_u64().unwrap() > 0, "{cluster}");

    // Refusals, in Postgres's words.
    let (ok, text) = cli(
        &pgtide,
        &[
            "branch",
            "main",
            "too-early",
            "--at",
            "2000-01-01 00:00:00+00",
        ],
    );
    assert!(
        !ok && text.contains("is before the restore window"),
        "{text}"
    );
    assert!(text.contains("22023"), "{text}");
    let (ok, text) = cli(
        &pgtide,
        &[
            "branch",
            "main",
            "too-late",
            "--at",
            "2999-01-01 00:00:00+00",
        ],
    );
    assert!(!ok && text.contains("is in the future"), "{text}");
    let (code, body) = post(&pgtide, "/clusters/nope/branch", r#"{"name": "x"}"#);
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains("cluster \"nope\" does not exist") && body.contains("3D000"),
        "{body}"
    );
    let (code, body) = post(&pgtide, "/clusters/main/branch", r#"{"name": "at-lsn"}"#);
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("cluster \"at-lsn\" already exists") && body.contains("42P04"),
        "{body}"
    );
    let (code, body) = post(&pgtide, "/clusters/main/branch", r#"{"name": "main"}"#);
    assert_eq!(code, 409, "{body}");
    let (code, body) = post(
        &pgtide,
        "/clusters/main/branch",
        r#"{"name": "bad-lsn", "lsn": "zz"}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("pg_lsn"), "{body}");
    // Nothing was left of the refused branches.
    for name in ["too-early", "too-late", "x", "bad-lsn"] {
        assert!(
            !pgtide.data_dir().join("clusters").join(name).exists(),
            "{name}"
        );
    }

    // A branch drops like any created cluster.
    cli_ok(&pgtide, &["drop", "at-lsn"]);
    assert!(!pgtide.data_dir().join("clusters/at-lsn").exists());

    // Branches outlive a restart: back paused, then resumed on their own data.
    pgtide.restart();
    assert_eq!(pgtide.cluster("grandchild").state, StateName::Paused);
    assert_eq!(rows(port, "grandchild"), format!("{all},7:branch"));

    // A paused source is branched from its copies alone: it stays paused.
    cli_ok(&pgtide, &["pause", "main"]);
    pgtide.wait_cluster_state("main", StateName::Paused, Duration::from_secs(60));
    cli_ok(&pgtide, &["branch", "main", "from-paused"]);
    assert_eq!(rows(port, "from-paused"), all);
    assert_eq!(pgtide.cluster("main").state, StateName::Paused);
}

#[test]
fn the_source_serves_pgbench_undisturbed_while_it_is_branched() {
    let (pgtide, port) = start();
    let (ok, text) = pgbench(pgtide.port, &["-i", "-s", "2", "-q"]);
    assert!(ok, "{text}");
    let mut bench = pgbench_command(pgtide.port, PASSWORD)
        .args(["-c", "2", "-j", "2", "-T", "40", "postgres"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgbench runs");
    // Branch once pgbench's transactions are landing.
    assert!(wait_until(Duration::from_secs(30), || {
        pgtide.sql("SELECT count(*) > 0 FROM pgbench_history") == "t"
    }));
    let out = cli_ok(&pgtide, &["branch", "main", "busy-copy"]);
    assert!(out.contains("branched"), "{out}");
    let still_running = bench.try_wait().unwrap().is_none();
    let output = bench.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        still_running,
        "pgbench ended before the branch did, so it says nothing: {text}"
    );
    assert!(output.status.success(), "{text}");
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    // The branch is a consistent copy: every account, and no more history than the source.
    assert_eq!(
        branch_sql(port, "busy-copy", "SELECT count(*) FROM pgbench_accounts"),
        "200000"
    );
    let branch_history: u64 = branch_sql(port, "busy-copy", "SELECT count(*) FROM pgbench_history")
        .parse()
        .unwrap();
    let source_history: u64 = pgtide
        .sql("SELECT count(*) FROM pgbench_history")
        .parse()
        .unwrap();
    assert!(
        branch_history > 0 && branch_history <= source_history,
        "{branch_history} of {source_history}"
    );
    // Every transaction in the branch is whole: the balances add up to the history's deltas.
    assert_eq!(
        branch_sql(
            port,
            "busy-copy",
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = \
             (SELECT sum(delta) FROM pgbench_history)"
        ),
        "t"
    );
}

#[test]
fn a_created_cluster_is_restored_in_place_and_its_state_before_is_kept() {
    let (pgtide, port) = start();
    cli_ok(&pgtide, &["create", "shop", "--password", PASSWORD]);
    branch_sql(
        port,
        "shop",
        "CREATE TABLE t (id int PRIMARY KEY, phase text)",
    );
    branch_sql(port, "shop", "INSERT INTO t VALUES (1, 'before')");
    let moment = branch_sql(port, "shop", "SELECT now()");
    branch_sql(port, "shop", "INSERT INTO t VALUES (2, 'after')");

    let out = cli_ok(
        &pgtide,
        &[
            "restore",
            "shop",
            "--at",
            &moment,
            "--in-place",
            "--keep-as",
            "shop-old",
        ],
    );
    assert!(out.contains("kept as cluster \"shop-old\""), "{out}");
    assert_eq!(rows(port, "shop"), "1:before");
    assert_eq!(rows(port, "shop-old"), "1:before,2:after");
    // The restored cluster writes on; its state before is untouched.
    branch_sql(port, "shop", "INSERT INTO t VALUES (3, 'restored')");
    assert_eq!(rows(port, "shop"), "1:before,3:restored");
    assert_eq!(rows(port, "shop-old"), "1:before,2:after");
    let list = cli_ok(&pgtide, &["list"]);
    assert!(!list.contains("shop-restoring"), "{list}");

    // A config cluster's name belongs to the file: restore it to a new cluster instead.
    let (ok, text) = cli(&pgtide, &["restore", "main", "--at", &moment, "--in-place"]);
    assert!(
        !ok && text.contains("cannot be restored in place"),
        "{text}"
    );
}
