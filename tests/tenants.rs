//! End to end: many tenants on one machine. Clusters created and dropped at run time (by the
//! CLI and the admin API), served on one shared endpoint routed by TLS SNI, `options=endpoint=`
//! or the database name; an unknown name answered like a missing database only after the
//! password exchange; passwords and data kept apart; the catalog across a restart.
//! (Slow tests: each starts pgtide and several Postgres.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pgtide::cluster::state::StateName;
use pgtide::tenants::registry::Source;

/// A pgtide with `[tenants]` on its own port (TLS with a self-signed certificate for
/// `localhost`), a warm pool of one, and cluster "main" from the config file.
struct Shared {
    pgtide: Pgtide,
    port: u16,
    _tls_dir: tempfile::TempDir,
}

fn start(copies: bool) -> Shared {
    let tls_dir = test_dir();
    let tls = tls_options(tls_dir.path())
        .cluster
        .replace("[clusters.tls]", "[tenants.tls]");
    let port = free_port();
    let pgtide = Pgtide::start_with(Options {
        top: format!("[tenants]\nlisten = \"127.0.0.1:{port}\"\n{tls}\n"),
        runtime: "warm_pool_size = 1".to_string(),
        copies,
        ..Default::default()
    });
    Shared {
        pgtide,
        port,
        _tls_dir: tls_dir,
    }
}

/// psql with a whole conninfo string, `-tA -c sql`.
fn psql_conninfo(conninfo: &str, password: &str, sql: &str) -> Output {
    Command::new("psql")
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-w",
            "-tA",
            "-c",
            sql,
            conninfo,
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "60")
        .stdin(Stdio::null())
        .output()
        .expect("psql runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "psql should have failed");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A JSON call of the admin API: status and body.
fn api(pgtide: &Pgtide, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let url = pgtide.admin_url(path);
    let authorization = pgtide.token.as_ref().map(|t| format!("Bearer {t}"));
    let response = match method {
        "POST" => {
            let mut request = agent.post(&url).header("content-type", "application/json");
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            request.send(body.unwrap_or(""))
        }
        "DELETE" => {
            let mut request = agent.delete(&url);
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            request.call()
        }
        _ => {
            let mut request = agent.get(&url);
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            request.call()
        }
    }
    .expect("the admin endpoint answers");
    let status = response.status().as_u16();
    (status, response.into_body().read_to_string().unwrap())
}

fn cli_ok(pgtide: &Pgtide, args: &[&str]) -> String {
    let out = pgtide.cli(args);
    assert!(
        out.status.success(),
        "pgtide {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn by_options(port: u16, cluster: &str, options: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable \
         options='{options}' connect_timeout=60 application_name={cluster}"
    )
}

fn by_database(port: u16, database: &str) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname={database} sslmode=disable")
}

#[test]
fn tenants_are_created_routed_kept_apart_and_dropped() {
    let Shared {
        pgtide,
        port,
        _tls_dir,
    } = start(true);

    // Created by the CLI, with a password.
    let out = cli_ok(
        &pgtide,
        &[
            "create",
            "alpha",
            "--max-acu",
            "2",
            "--auto-pause-after",
            "10m",
            "--password",
            "alpha-pw",
        ],
    );
    assert!(out.contains("cluster \"alpha\" created"), "{out}");
    // Created by the API, with a password made up and shown once; timed to its first row.
    let asked = Instant::now();
    let (code, body) = api(
        &pgtide,
        "POST",
        "/clusters",
        Some(r#"{"name": "beta", "pool_mode": "transaction"}"#),
    );
    assert_eq!(code, 201, "{body}");
    let created: pgtide::tenants::Created = serde_json::from_str(&body).unwrap();
    let beta_pw = created.password.clone().expect("a password made up");
    let first = ok(&psql_conninfo(
        &by_options(port, "beta", "endpoint=beta"),
        &beta_pw,
        "SELECT 'first row'",
    ));
    let first_row = asked.elapsed();
    assert_eq!(first, "first row");
    eprintln!(
        "POST /clusters to the first row: {} ms (pgtide says the compute ran after {} ms)",
        first_row.as_millis(),
        created.started_ms
    );
    // With copies, the first base backup is part of the creation.
    let beta = pgtide.cluster("beta");
    assert_eq!(beta.source, Source::Created);
    assert_eq!(beta.listen, format!("127.0.0.1:{port}"));
    assert!(
        beta.events
            .iter()
            .any(|e| e.message.contains("first base backup")),
        "{:?}",
        beta.events
    );

    // Every routing rule reaches alpha.
    let sni = format!(
        "host=alpha.localhost hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres \
         sslmode=require"
    );
    ok(&psql_conninfo(
        &sni,
        "alpha-pw",
        "CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('alpha-only')",
    ));
    assert_eq!(
        ok(&psql_conninfo(&sni, "alpha-pw", "SELECT v FROM secrets")),
        "alpha-only"
    );
    for options in [
        "endpoint=alpha",
        "-c endpoint=alpha",
        "-c endpoint=alpha -c work_mem=7MB",
    ] {
        let conninfo = by_options(port, "alpha", options);
        assert_eq!(
            ok(&psql_conninfo(
                &conninfo,
                "alpha-pw",
                "SELECT v FROM secrets"
            )),
            "alpha-only",
            "{options}"
        );
    }
    // The endpoint option never reaches the compute; the settings beside it do.
    assert_eq!(
        ok(&psql_conninfo(
            &by_options(port, "alpha", "-c endpoint=alpha -c work_mem=7MB"),
            "alpha-pw",
            "SHOW work_mem"
        )),
        "7MB"
    );
    assert_eq!(
        ok(&psql_conninfo(
            &by_database(port, "alpha"),
            "alpha-pw",
            "SELECT current_database() || ':' || (SELECT v FROM secrets)"
        )),
        "postgres:alpha-only"
    );

    // Passwords are per cluster: alpha's does not open beta.
    let wrong = failed(&psql_conninfo(
        &by_database(port, "beta"),
        "alpha-pw",
        "SELECT 1",
    ));
    assert!(
        wrong.contains("password authentication failed for user \"postgres\""),
        "{wrong}"
    );
    // Beta's data is its own.
    let missing = failed(&psql_conninfo(
        &by_database(port, "beta"),
        &beta_pw,
        "SELECT v FROM secrets",
    ));
    assert!(
        missing.contains("relation \"secrets\" does not exist"),
        "{missing}"
    );

    // An unknown name: a password is asked for first (no password: libpq cannot even answer),
    // then, whatever the password, the answer of a missing database.
    let no_password = Command::new("psql")
        .args(["-X", "-w", "-c", "SELECT 1", &by_database(port, "nosuch")])
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = failed(&no_password);
    assert!(stderr.contains("no password supplied"), "{stderr}");
    for rule in [
        by_database(port, "nosuch"),
        by_options(port, "nosuch", "endpoint=nosuch"),
    ] {
        let unknown = failed(&psql_conninfo(&rule, "alpha-pw", "SELECT 1"));
        assert!(
            unknown.contains("database \"nosuch\" does not exist"),
            "{unknown}"
        );
        assert!(
            !unknown.contains("alpha") && !unknown.contains("beta"),
            "{unknown}"
        );
    }
    let unknown_sni = failed(&psql_conninfo(
        &sni.replace("alpha.localhost", "nosuch.localhost"),
        "alpha-pw",
        "SELECT 1",
    ));
    assert!(
        unknown_sni.contains("database \"nosuch\" does not exist"),
        "{unknown_sni}"
    );

    // Names: clashes and bad names are refused.
    let (code, body) = api(&pgtide, "POST", "/clusters", Some(r#"{"name": "alpha"}"#));
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("cluster \"alpha\" already exists"), "{body}");
    let (code, body) = api(&pgtide, "POST", "/clusters", Some(r#"{"name": "main"}"#));
    assert_eq!(code, 409, "{body}");
    for bad in ["Bad", "1abc", "a_b", "x-", "dropped"] {
        let (code, body) = api(
            &pgtide,
            "POST",
            "/clusters",
            Some(&format!(r#"{{"name": "{bad}"}}"#)),
        );
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(body.contains("invalid cluster name"), "{body}");
    }
    let long = "a".repeat(64);
    let refused = pgtide.cli(&["create", &long]);
    assert!(!refused.status.success());
    let (code, body) = api(
        &pgtide,
        "POST",
        "/clusters",
        Some(r#"{"name": "gamma", "min_acu": 4, "max_acu": 2}"#),
    );
    assert_eq!(code, 400, "{body}");

    // The list: config and created clusters.
    let list = cli_ok(&pgtide, &["list"]);
    for line in ["main", "alpha", "beta"] {
        assert!(list.contains(line), "{list}");
    }
    let (code, body) = api(&pgtide, "GET", "/clusters", None);
    assert_eq!(code, 200);
    let listed: pgtide::admin::ClusterList = serde_json::from_str(&body).unwrap();
    let sources: Vec<(String, Source)> = listed
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.source))
        .collect();
    assert_eq!(
        sources,
        vec![
            ("main".to_string(), Source::Config),
            ("alpha".to_string(), Source::Created),
            ("beta".to_string(), Source::Created),
        ]
    );

    // Data isolation: alpha's superuser, running programs as alpha's OS user, reaches neither
    // beta's socket nor its data directory.
    if nix::unistd::Uid::effective().is_root() {
        let clusters = pgtide.data_dir().join("clusters");
        let program = |target: &str| {
            format!(
                "COPY (SELECT 1) TO PROGRAM 'psql -X -h {} -U postgres -d postgres -c \"SELECT 1\"'",
                path_str(&clusters.join(target).join("socket"))
            )
        };
        ok(&psql_conninfo(&sni, "alpha-pw", &program("alpha")));
        let reached = failed(&psql_conninfo(&sni, "alpha-pw", &program("beta")));
        assert!(reached.contains("failed"), "{reached}");
        let cat = |target: &str| {
            format!(
                "CREATE TEMP TABLE t (line text); COPY t FROM PROGRAM 'cat {}'; TABLE t",
                path_str(&clusters.join(target).join("pgdata/PG_VERSION"))
            )
        };
        let own = ok(&psql_conninfo(&sni, "alpha-pw", &cat("alpha")));
        assert_eq!(own.lines().last(), Some("15"), "{own}");
        let read = failed(&psql_conninfo(&sni, "alpha-pw", &cat("beta")));
        assert!(read.contains("failed"), "{read}");
    } else {
        eprintln!("data isolation skipped: it holds only when pgtide runs as root");
    }

    // A config cluster cannot be dropped.
    let refused = pgtide.cli(&["drop", "main"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("defined in the config file"),
        "{refused:?}"
    );

    // Drop beta under a connected client: the client is told, the data and copies are gone.
    let data = pgtide.data_dir();
    assert!(data.join("clusters/beta/pgdata").exists());
    assert!(data.join("copies/a1/beta").exists());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client_error = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={port} user=postgres password={beta_pw} dbname=beta \
                 sslmode=disable"
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect to beta");
        let connection = tokio::spawn(connection);
        client.simple_query("SELECT 1").await.expect("a query");
        let (code, body) = api(&pgtide, "DELETE", "/clusters/beta", None);
        assert_eq!(code, 200, "{body}");
        let after = client.simple_query("SELECT 1").await;
        let _ = connection.await;
        after.expect_err("the session ended with the drop")
    });
    let db_error = client_error.as_db_error();
    assert!(
        db_error.is_some_and(|e| e.code().code() == "57P01"
            && e.message() == "terminating connection due to administrator command")
            || client_error.is_closed(),
        "{client_error:?}"
    );
    assert!(!data.join("clusters/beta").exists());
    for copy in ["a1", "a2", "b1", "b2", "c1", "c2"] {
        assert!(
            !data.join("copies").join(copy).join("beta").exists(),
            "{copy}"
        );
    }
    assert!(pgtide
        .status_typed()
        .clusters
        .iter()
        .all(|c| c.name != "beta"));
    let gone = failed(&psql_conninfo(
        &by_database(port, "beta"),
        &beta_pw,
        "SELECT 1",
    ));
    assert!(gone.contains("database \"beta\" does not exist"), "{gone}");

    // Drop alpha keeping its data: moved aside, nothing lost.
    let out = cli_ok(&pgtide, &["drop", "alpha", "--keep-data"]);
    assert!(out.contains("dropped"), "{out}");
    assert!(!data.join("clusters/alpha").exists());
    let kept = |root: std::path::PathBuf| {
        std::fs::read_dir(root.join("dropped"))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("alpha-"))
            .map(|e| e.path())
            .expect("alpha moved aside")
    };
    assert!(kept(data.clone()).join("pgdata/PG_VERSION").exists());
    for copy in ["a1", "a2", "b1", "b2", "c1", "c2"] {
        let root = data.join("copies").join(copy);
        assert!(!root.join("alpha").exists());
        assert!(kept(root).join("wal").exists(), "{copy}");
    }
    let (code, body) = api(&pgtide, "DELETE", "/clusters/alpha", None);
    assert_eq!(code, 404, "{body}");
    // Config cluster main still works on its own port.
    assert_eq!(pgtide.sql("SELECT 7"), "7");
}

#[test]
fn created_clusters_come_back_paused_and_the_token_guards_the_routes() {
    let Shared {
        mut pgtide,
        port,
        _tls_dir,
    } = start(false);
    let asked = Instant::now();
    let (code, body) = api(
        &pgtide,
        "POST",
        "/clusters",
        Some(r#"{"name": "gamma", "password": "gamma-pw", "auto_pause_after": "1h"}"#),
    );
    assert_eq!(code, 201, "{body}");
    ok(&psql_conninfo(
        &by_database(port, "gamma"),
        "gamma-pw",
        "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)",
    ));
    eprintln!(
        "without copies, POST /clusters to the first statement done: {} ms",
        asked.elapsed().as_millis()
    );
    let catalog = pgtide.data_dir().join("catalog.json");
    let mode = std::fs::metadata(&catalog).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&catalog).unwrap();
    assert!(
        text.contains("\"gamma\"") && text.contains("SCRAM-SHA-256$"),
        "{text}"
    );
    assert!(
        !text.contains("gamma-pw"),
        "the catalog holds a password: {text}"
    );

    pgtide.edit_config(|config| config.replace("[admin]\n", "[admin]\ntoken = \"t0ken\"\n"));
    pgtide.token = Some("t0ken".to_string());
    pgtide.restart();
    let gamma = pgtide.cluster("gamma");
    assert_eq!(gamma.state, StateName::Paused);
    assert_eq!(gamma.source, Source::Created);
    assert!(
        processes_matching(&path_str(&pgtide.data_dir().join("clusters/gamma/pgdata"))).is_empty(),
        "a compute runs for a paused cluster"
    );
    // A client wakes it, with its data.
    assert_eq!(
        ok(&psql_conninfo(
            &by_options(port, "gamma", "endpoint=gamma"),
            "gamma-pw",
            "SELECT v FROM kept"
        )),
        "42"
    );
    pgtide.wait_cluster_state("gamma", StateName::Running, Duration::from_secs(30));

    // Without the token every new route is refused; with it (the CLI reads it from the config
    // file) they work.
    let token = pgtide.token.take();
    for (method, path, body) in [
        ("GET", "/clusters", None),
        ("POST", "/clusters", Some(r#"{"name": "delta"}"#)),
        ("DELETE", "/clusters/gamma", None),
    ] {
        let (code, answer) = api(&pgtide, method, path, body);
        assert_eq!(code, 401, "{method} {path}: {answer}");
    }
    pgtide.token = token;
    assert!(pgtide.cluster("gamma").name == "gamma");
    let list = cli_ok(&pgtide, &["list"]);
    assert!(list.contains("gamma") && list.contains("created"), "{list}");
    cli_ok(&pgtide, &["drop", "gamma"]);
    assert!(!pgtide.data_dir().join("clusters/gamma").exists());
    let text = std::fs::read_to_string(&catalog).unwrap();
    assert!(!text.contains("gamma"), "{text}");
}
