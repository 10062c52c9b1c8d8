//! End to end with `runtime.kind = "docker"`: real Docker, real Postgres in the container, real
//! psql and pgbench through pgtide. Each test skips (with a note) when Docker is not usable here,
//! and fails instead when PGTIDE_REQUIRE_DOCKER=1 (scripts/test.sh sets it when `docker info`
//! works). The image is built once, by scripts/build-image.sh (which does nothing when it exists).

mod common;

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;

/// Docker is usable and the image is there, or why not.
fn docker_ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(docker_usable);
    match ready {
        Ok(()) => true,
        Err(why) if std::env::var("PGTIDE_REQUIRE_DOCKER").as_deref() == Ok("1") => {
            panic!("PGTIDE_REQUIRE_DOCKER=1 but Docker is not usable: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: Docker is not usable here ({why})");
            false
        }
    }
}

fn docker_options(runtime: &str, cluster: &str) -> Options {
    Options {
        runtime: format!("kind = \"docker\"\n{runtime}"),
        cluster: cluster.into(),
        ..Default::default()
    }
}

/// One container of this test's pgtide, as `docker inspect` shows it.
#[derive(Debug)]
struct Container {
    name: String,
    running: bool,
    cluster_label: String,
    inspect: serde_json::Value,
}

/// The containers (running or not) whose slot directory lies under this test's data directory.
fn containers(pgtide: &Pgtide) -> Vec<Container> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=pgtide.slot"])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let out = Command::new("docker")
        .arg("inspect")
        .args(&ids)
        .output()
        .unwrap();
    // A container removed between ps and inspect makes inspect fail for it alone.
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let data_dir = path_str(&pgtide.data_dir().canonicalize().unwrap());
    all.into_iter()
        .filter(|c| {
            c["HostConfig"]["Binds"][0]
                .as_str()
                .is_some_and(|b| b.starts_with(&data_dir))
        })
        .map(|c| Container {
            name: c["Name"].as_str().unwrap().trim_start_matches('/').into(),
            running: c["State"]["Running"].as_bool().unwrap(),
            cluster_label: c["Config"]["Labels"]["pgtide.cluster"]
                .as_str()
                .unwrap_or("?")
                .into(),
            inspect: c,
        })
        .collect()
}

/// The container running the cluster's compute (named in `/status` limits).
fn compute_container(pgtide: &Pgtide) -> Container {
    // The limits (naming the container) are applied a moment after the compute is ready.
    wait_until(Duration::from_secs(10), || {
        pgtide.cluster_status()["limits"]["applied_at"][0].is_string()
    });
    let status = pgtide.cluster_status();
    let name = status["limits"]["applied_at"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no container in {status}"))
        .to_string();
    containers(pgtide)
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} is not among the containers"))
}

/// `docker kill`: the container's processes die at once (SIGKILL), as on a host that fails.
fn docker_kill(container: &str) {
    let out = Command::new("docker")
        .args(["kill", container])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn warm_pool(pgtide: &Pgtide) -> serde_json::Value {
    pgtide.status()["warm_pool"].clone()
}

fn pause(pgtide: &Pgtide) {
    ureq::post(&pgtide.admin_url("/clusters/main/pause"))
        .send_empty()
        .expect("POST pause");
    pgtide.wait_state("paused", Duration::from_secs(30));
}

#[test]
fn psql_and_pgbench_run_in_a_container_whose_limits_follow_the_acu() {
    if !docker_ready() {
        return;
    }
    let pgtide = Pgtide::start_with(docker_options(
        "",
        "min_acu = 1\nmax_acu = 4\nscale_down_after = \"2s\"",
    ));
    assert_eq!(pgtide.status()["runtime"], "docker");
    pgtide.sql("CREATE TABLE notes (id int PRIMARY KEY, body text)");
    pgtide.sql("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 100) g");
    assert_eq!(pgtide.sql("SELECT count(*) FROM notes"), "100");

    let container = compute_container(&pgtide);
    assert!(container.running);
    assert_eq!(
        container.cluster_label, "main",
        "a cold container is labelled"
    );
    let host_config = &container.inspect["HostConfig"];
    assert_eq!(host_config["NetworkMode"], "none");
    assert_eq!(host_config["NanoCpus"], 0, "CpuQuota/CpuPeriod only");
    assert!(host_config["ShmSize"].as_i64().unwrap() >= 1 << 30);
    let labels = &container.inspect["Config"]["Labels"];
    assert!(labels["pgtide.instance"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert!(labels["pgtide.slot"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));

    let (ok, out) = pgbench(pgtide.port, &["-i", "-s", "2", "-q"]);
    assert!(ok, "pgbench -i: {out}");
    for args in [
        &["-c", "4", "-j", "2", "-T", "5"][..],
        &["-S", "-M", "prepared", "-c", "4", "-j", "2", "-T", "3"][..],
    ] {
        let (ok, out) = pgbench(pgtide.port, args);
        assert!(ok, "pgbench {args:?}: {out}");
        assert!(
            out.contains("number of failed transactions: 0"),
            "pgbench {args:?}: {out}"
        );
    }

    // The container's limits are the ACU's, read back from the engine: under load and again
    // after the load is gone (the scaler comes back down to min_acu).
    let mut seen = Vec::new();
    let matched = wait_until(Duration::from_secs(30), || {
        let status = pgtide.cluster_status();
        let acu = status["acu"].as_f64().unwrap();
        let host_config = compute_container(&pgtide).inspect["HostConfig"].clone();
        let cores =
            host_config["CpuQuota"].as_f64().unwrap() / host_config["CpuPeriod"].as_f64().unwrap();
        let memory_mib = host_config["Memory"].as_i64().unwrap() / (1024 * 1024);
        seen.push((acu, cores, memory_mib));
        acu == 1.0
            && (cores - acu * 0.25).abs() < 1e-6
            && memory_mib == (acu * 2048.0) as i64
            && host_config["MemorySwap"] == host_config["Memory"]
            && status["limits"]["mechanism"] == "docker"
    });
    assert!(matched, "limits never matched the ACU: {seen:?}");
    let scaled: Vec<_> = pgtide
        .events()
        .into_iter()
        .filter(|(k, _)| k == "scaled_up" || k == "scaled_down")
        .collect();
    assert!(!scaled.is_empty(), "the load moved the ACU");
    // Usage comes from the engine's streamed stats.
    assert!(
        wait_until(Duration::from_secs(10), || {
            pgtide.cluster_status()["memory_used_mib"].as_f64().unwrap() > 0.0
        }),
        "{}",
        pgtide.cluster_status()
    );
}

#[test]
fn without_a_pool_pause_leaves_no_container_and_resumes_are_misses_keeping_data() {
    if !docker_ready() {
        return;
    }
    let pgtide = Pgtide::start_with(docker_options(
        "warm_pool_size = 0",
        "auto_pause_after = \"1h\"",
    ));
    pgtide.sql("CREATE TABLE cycles (n int)");
    for cycle in 1..=2 {
        pause(&pgtide);
        assert!(
            containers(&pgtide).is_empty(),
            "paused: {:?}",
            containers(&pgtide)
        );
        assert!(
            pgtide.pgdata().join("PG_VERSION").exists(),
            "data is back in place"
        );
        pgtide.sql(&format!("INSERT INTO cycles VALUES ({cycle})"));
    }
    assert_eq!(pgtide.sql("SELECT count(*) FROM cycles"), "2");
    let pool = warm_pool(&pgtide);
    assert_eq!(pool["hits"], 0, "{pool}");
    assert_eq!(pool["misses"], 3, "the first start and two resumes: {pool}");
}

#[test]
fn with_a_pool_a_resume_takes_a_started_container_and_a_refill_follows() {
    if !docker_ready() {
        return;
    }
    let pgtide = Pgtide::start_with(docker_options(
        "warm_pool_size = 1",
        "auto_pause_after = \"1h\"",
    ));
    assert!(
        wait_until(Duration::from_secs(30), || warm_pool(&pgtide)["ready"] == 1),
        "{}",
        warm_pool(&pgtide)
    );
    pgtide.sql("CREATE TABLE cycles (n int)");
    for cycle in 1..=2 {
        pause(&pgtide);
        // Only the warm container runs: idle, with no cluster and no data.
        let running: Vec<Container> = containers(&pgtide)
            .into_iter()
            .filter(|c| c.running)
            .collect();
        assert_eq!(running.len(), 1, "{running:?}");
        assert_eq!(running[0].cluster_label, "");
        assert!(pgtide.pgdata().join("PG_VERSION").exists());
        let before = warm_pool(&pgtide);
        pgtide.sql(&format!("INSERT INTO cycles VALUES ({cycle})"));
        let after = warm_pool(&pgtide);
        assert_eq!(
            after["hits"].as_u64().unwrap(),
            before["hits"].as_u64().unwrap() + 1,
            "{before} → {after}"
        );
        assert_eq!(compute_container(&pgtide).name, running[0].name);
        let refilled = wait_until(Duration::from_secs(30), || {
            let now = warm_pool(&pgtide);
            now["ready"] == 1 && now["refills"].as_u64() > before["refills"].as_u64()
        });
        assert!(refilled, "{}", warm_pool(&pgtide));
    }
    assert_eq!(pgtide.sql("SELECT count(*) FROM cycles"), "2");
    let resumed = pgtide
        .events()
        .into_iter()
        .filter(|(k, m)| k == "resumed" && m.contains("a warm slot"))
        .count();
    assert_eq!(resumed, 2, "{:?}", pgtide.events());

    // A warm container that died while waiting (removed by hand here) is not used: the resume
    // starts cold and still works.
    pause(&pgtide);
    let warm = containers(&pgtide)
        .into_iter()
        .find(|c| c.running)
        .expect("a warm container");
    let removed = std::process::Command::new("docker")
        .args(["rm", "-f", &warm.name])
        .output()
        .unwrap();
    assert!(removed.status.success(), "{removed:?}");
    assert_eq!(pgtide.sql("SELECT count(*) FROM cycles"), "2");
    assert_ne!(compute_container(&pgtide).name, warm.name);
}

#[test]
fn a_killed_container_is_restarted_and_acknowledged_rows_survive() {
    if !docker_ready() {
        return;
    }
    let pgtide = Pgtide::start_with(docker_options("", "auto_pause_after = \"1h\""));
    pgtide.sql("CREATE TABLE acked (n int)");
    pgtide.sql("INSERT INTO acked SELECT generate_series(1, 500)");
    let victim = compute_container(&pgtide).name;
    docker_kill(&victim);
    let restarted = wait_until(Duration::from_secs(60), || {
        pgtide.events().iter().any(|(k, _)| k == "restarted")
            && pgtide.cluster_status()["state"] == "running"
    });
    assert!(restarted, "{:?}", pgtide.events());
    assert!(
        pgtide
            .events()
            .iter()
            .any(|(k, m)| k == "compute_exited" && m.contains(&victim)),
        "{:?}",
        pgtide.events()
    );
    assert_eq!(pgtide.sql("SELECT count(*) FROM acked"), "500");
    let now = compute_container(&pgtide).name;
    assert_ne!(now, victim);
    assert!(
        containers(&pgtide).iter().all(|c| c.name != victim),
        "the killed container is removed"
    );
}

/// A lost disk under a running container: its data directory deleted while Postgres runs.
/// The loss is noticed, the container is removed (not left serving the sessions it holds), and
/// the cluster is rebuilt from the copies with every acknowledged row.
#[test]
fn a_data_directory_deleted_under_a_running_container_is_rebuilt_and_the_container_removed() {
    if !docker_ready() {
        return;
    }
    let pgtide = Pgtide::start_with(Options {
        copies: true,
        ..docker_options("", "auto_pause_after = \"1h\"")
    });
    pgtide.sql("CREATE TABLE acked (n int); INSERT INTO acked SELECT generate_series(1, 5000)");
    let victim = compute_container(&pgtide);
    let slot = victim.inspect["HostConfig"]["Binds"][0]
        .as_str()
        .and_then(|bind| bind.split(':').next())
        .expect("the slot's bind mount")
        .to_string();
    let pgdata = std::path::Path::new(&slot).join("pgdata");
    // What Postgres cannot run without goes first; the rest may race with files it creates.
    std::fs::remove_file(pgdata.join("global/pg_control")).unwrap();
    std::fs::remove_file(pgdata.join("PG_VERSION")).unwrap();
    for _ in 0..5 {
        if std::fs::remove_dir_all(&pgdata).is_ok() || !pgdata.exists() {
            break;
        }
    }
    pgtide.wait_for_data_directory_lost();
    // The next commit waits for the rebuild, and lands.
    pgtide.sql("INSERT INTO acked VALUES (5001)");
    assert_eq!(
        pgtide.sql("SELECT count(*), max(n) FROM acked"),
        "5001|5001"
    );
    pgtide.assert_rebuilt_from_a_backup();
    assert!(
        containers(&pgtide).iter().all(|c| c.name != victim.name),
        "the lost container is removed: {:?}",
        containers(&pgtide)
            .iter()
            .map(|c| &c.name)
            .collect::<Vec<_>>()
    );
    assert_ne!(compute_container(&pgtide).name, victim.name);
}

/// A killed container leaves its postmaster.pid behind, naming a pid of that container's pid
/// namespace; in the next container that pid may be alive (here: 1, the container's init), and
/// Postgres would refuse to start ("lock file already exists") restart after restart.
#[test]
fn a_stale_postmaster_pid_from_another_container_does_not_block_the_start() {
    if !docker_ready() {
        return;
    }
    let pgtide = Pgtide::start_with(docker_options("", "auto_pause_after = \"1h\""));
    pgtide.sql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)");
    pause(&pgtide);
    std::fs::write(
        pgtide.pgdata().join("postmaster.pid"),
        "1\n/pgtide/pgdata\n1764700000\n5432\n/pgtide/socket\n\n  5432001     0\nready   \n",
    )
    .unwrap();
    assert_eq!(pgtide.sql("SELECT n FROM kept"), "7");
}

#[test]
fn leftovers_of_a_killed_pgtide_are_removed_and_their_data_put_back() {
    if !docker_ready() {
        return;
    }
    let mut pgtide = Pgtide::start_with(docker_options(
        "warm_pool_size = 1",
        "auto_pause_after = \"1h\"",
    ));
    pgtide.sql("CREATE TABLE acked (n int)");
    pgtide.sql("INSERT INTO acked SELECT generate_series(1, 300)");
    assert!(wait_until(Duration::from_secs(30), || warm_pool(&pgtide)
        ["ready"]
        == 1));
    let before: Vec<String> = containers(&pgtide).into_iter().map(|c| c.name).collect();
    assert_eq!(before.len(), 2, "the compute and a warm one: {before:?}");

    let pid = pgtide.pid() as i32;
    send_signal(pid, Signal::SIGKILL);
    assert!(wait_until(Duration::from_secs(10), || !process_alive(pid)));
    // The containers outlive it, and the data is still in the compute's slot.
    assert_eq!(containers(&pgtide).len(), 2);
    assert!(!pgtide.pgdata().exists());

    pgtide.restart();
    let after: Vec<String> = containers(&pgtide).into_iter().map(|c| c.name).collect();
    assert!(
        after.iter().all(|name| !before.contains(name)),
        "{before:?} → {after:?}"
    );
    assert_eq!(pgtide.sql("SELECT count(*) FROM acked"), "300");
    assert!(pgtide
        .log()
        .contains("removing a container left by an earlier pgtide"));
    assert!(pgtide
        .log()
        .contains("putting back data an earlier pgtide left in a slot"));
    // Only this run's slots remain.
    let slots: Vec<_> = std::fs::read_dir(pgtide.data_dir().join("slots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(slots.len() <= 2, "{slots:?}");
}

/// Multi-AZ on the docker runtime: the standby is a container of its own that reaches the
/// writer through the relay socket in its mount; killing the writer's container promotes it,
/// with every acknowledged row, and the old writer's zone gets a new standby container.
#[test]
fn a_standby_container_takes_over_when_the_writer_container_is_killed() {
    if !docker_ready() {
        return;
    }
    let reader_port = free_port();
    let pgtide = Pgtide::start_with(Options {
        runtime: "kind = \"docker\"".into(),
        cluster: format!(
            "min_acu = 1\nauto_pause_after = \"1h\"\nstandbys = 1\nreader_listen = \"127.0.0.1:{reader_port}\""
        ),
        copies: true,
        ..Default::default()
    });
    let streaming = |writer_zone: &'static str| {
        move |pgtide: &Pgtide| {
            let zones = pgtide.cluster("main").zones;
            zones.writer_zone == writer_zone
                && zones.standbys.len() == 1
                && zones.standbys[0].in_rotation
        }
    };
    let streams_from_a = streaming("a");
    assert!(
        wait_until(Duration::from_secs(90), || streams_from_a(&pgtide)),
        "{:#?}\n{:#?}",
        pgtide.cluster("main").zones,
        pgtide.events()
    );
    assert_eq!(
        containers(&pgtide).len(),
        2,
        "the writer's and the standby's"
    );
    pgtide.sql("CREATE TABLE acked (n int)");
    pgtide.sql("INSERT INTO acked SELECT generate_series(1, 500)");
    let on_standby = psql_as(
        reader_port,
        "postgres",
        PASSWORD,
        "postgres",
        &["-tAc", "SELECT pg_is_in_recovery()"],
    );
    assert_eq!(String::from_utf8_lossy(&on_standby.stdout).trim(), "t");

    let victim = compute_container(&pgtide).name;
    docker_kill(&victim);
    let failed_over = wait_until(Duration::from_secs(60), || {
        pgtide.events().iter().any(|(k, _)| k == "failover")
            && pgtide.cluster_status()["state"] == "running"
    });
    assert!(failed_over, "{:#?}", pgtide.events());
    for (_, message) in pgtide.events().iter().filter(|(k, _)| k == "failover") {
        eprintln!("{message}");
    }
    assert_eq!(pgtide.sql("SELECT count(*) FROM acked"), "500");
    pgtide.sql("INSERT INTO acked VALUES (501)");
    let streams_from_b = streaming("b");
    assert!(
        wait_until(Duration::from_secs(90), || streams_from_b(&pgtide)),
        "{:#?}",
        pgtide.events()
    );
    assert_eq!(pgtide.cluster("main").zones.standbys[0].zone, "a");
    assert!(
        containers(&pgtide).iter().all(|c| c.name != victim),
        "the killed container is removed"
    );
}
