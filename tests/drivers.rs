//! End to end: real drivers of other languages through pgtide, in both pool modes — Python's
//! asyncpg, psycopg 3 and pg8000 (tests/clients/session_clients.py), Java's pgjdbc
//! (tests/clients/JdbcPool.java, compiled here with javac) and node-postgres
//! (tests/clients/node_pool.js). scripts/test.sh installs them all; a driver that is missing
//! where its language is present fails its test rather than skipping it, so a broken install
//! cannot pass unseen.
//! (Slow tests: each starts pgtide and Postgres.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use pgtide::config::PoolMode;

/// max_acu = 1 in transaction mode: at most 4 compute connections for the drivers' 8 or more.
fn cluster(mode: PoolMode) -> Pgtide {
    let mode = match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    };
    Pgtide::start_with(Options {
        cluster: format!("pool_mode = \"{mode}\"\nmax_acu = 1"),
        ..Default::default()
    })
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs a client program to its end (bounded: `timeout -s KILL`); returns its stdout once it
/// succeeded, and panics with its output and `hint` otherwise.
fn run_client(command: &mut Command, hint: &str) -> String {
    let out = command.output().expect("the client program runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{stdout}\n{}\n({hint})",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn bounded(program: &str) -> Command {
    let mut command = Command::new("timeout");
    command.args(["-s", "KILL", "300", program]);
    command
}

fn python_drivers(pgtide: &Pgtide, mode: &str) -> String {
    run_client(
        bounded("python3")
            .arg(clients_dir().join("session_clients.py"))
            .arg(pgtide.port.to_string())
            .arg(PASSWORD)
            .arg(mode),
        "asyncpg, psycopg and pg8000 come from PyPI: scripts/test.sh installs them",
    )
}

#[test]
fn python_drivers_in_session_mode() {
    let pgtide = cluster(PoolMode::Session);
    let stdout = python_drivers(&pgtide, "session");
    for driver in ["ok asyncpg", "ok psycopg", "ok pg8000"] {
        assert!(stdout.contains(driver), "{driver}: {stdout}");
    }
}

/// The same program in transaction mode: everything but LISTEN works, and LISTEN is refused
/// with 0A000 (the script checks the SQLSTATE through each driver's own error type).
#[test]
fn python_drivers_in_transaction_mode_with_listen_refused() {
    let pgtide = cluster(PoolMode::Transaction);
    let stdout = python_drivers(&pgtide, "transaction");
    for driver in ["ok asyncpg", "ok psycopg", "ok pg8000"] {
        assert!(stdout.contains(driver), "{driver}: {stdout}");
    }
    let pool = pgtide.cluster("main").pool;
    assert!(
        pool.server_connections_busy + pool.server_connections_idle <= 4,
        "{pool:?}"
    );
}

/// pgjdbc, compiled against Debian's /usr/share/java/postgresql.jar (libpostgresql-jdbc-java).
fn jdbc(pgtide: &Pgtide) -> String {
    let driver = std::env::var("PGTIDE_JDBC_JAR")
        .unwrap_or_else(|_| "/usr/share/java/postgresql.jar".into());
    assert!(
        Path::new(&driver).exists(),
        "{driver} is missing: scripts/test.sh installs libpostgresql-jdbc-java"
    );
    let classes = tempfile::tempdir().unwrap();
    run_client(
        bounded("javac")
            .arg("-d")
            .arg(classes.path())
            .arg("-cp")
            .arg(&driver)
            .arg(clients_dir().join("JdbcPool.java")),
        "javac comes with openjdk-17-jdk-headless",
    );
    let classpath = format!("{}:{driver}", classes.path().display());
    run_client(
        bounded("java")
            .args(["-cp", &classpath, "JdbcPool"])
            .arg(pgtide.port.to_string())
            .arg(PASSWORD),
        "JdbcPool.java",
    )
}

/// Server-side prepared statements from the first use, batches and transactions, from 8
/// connections over 4 compute connections.
#[test]
fn jdbc_in_transaction_mode() {
    if !java_present() {
        return;
    }
    let pgtide = cluster(PoolMode::Transaction);
    let stdout = jdbc(&pgtide);
    assert!(stdout.contains("ok jdbc"), "{stdout}");
    let pool = pgtide.cluster("main").pool;
    assert!(
        pool.server_connections_busy + pool.server_connections_idle <= 4,
        "{pool:?}"
    );
    assert!(
        pool.prepared_hits + pool.prepared_misses > 0,
        "pgjdbc's named statements went through the pool's statement tracking: {pool:?}"
    );
}

#[test]
fn jdbc_in_session_mode() {
    if !java_present() {
        return;
    }
    let pgtide = cluster(PoolMode::Session);
    let stdout = jdbc(&pgtide);
    assert!(stdout.contains("ok jdbc"), "{stdout}");
}

/// Java is optional on a machine; where `javac` is, the JDBC tests must run.
fn java_present() -> bool {
    let present = Command::new("javac")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("skipped: no javac on this machine");
    }
    present
}

/// Where Node finds `pg`: PGTIDE_NODE_PATH, or Debian's /usr/share/nodejs and the directory
/// that scripts/test.sh unpacks node-pg into when the system's Node is not Debian's.
fn node_path() -> String {
    std::env::var("PGTIDE_NODE_PATH").unwrap_or_else(|_| {
        format!(
            "/usr/share/nodejs:{}/target/test-deps/node/usr/share/nodejs",
            env!("CARGO_MANIFEST_DIR")
        )
    })
}

/// node-postgres's Pool in transaction mode: unnamed and named prepared statements, a
/// transaction and a session setting, from 12 pooled connections over 4 compute connections.
#[test]
fn node_postgres_pool_in_transaction_mode() {
    let node_present = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_present {
        eprintln!("skipped: no node on this machine");
        return;
    }
    let node_path = node_path();
    let found = Command::new("node")
        .args(["-e", "require('pg')"])
        .env("NODE_PATH", &node_path)
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "node is here but not node-postgres (NODE_PATH={node_path}): scripts/test.sh installs \
         Debian's node-pg\n{}",
        String::from_utf8_lossy(&found.stderr)
    );
    let pgtide = cluster(PoolMode::Transaction);
    let stdout = run_client(
        bounded("node")
            .arg(clients_dir().join("node_pool.js"))
            .arg(pgtide.port.to_string())
            .arg(PASSWORD)
            .env("NODE_PATH", &node_path),
        "node_pool.js",
    );
    assert!(stdout.contains("ok node-postgres pool"), "{stdout}");
    // The pool's connections all went back: nothing is left busy once the clients are gone.
    assert!(
        wait_until(Duration::from_secs(30), || pgtide
            .cluster("main")
            .pool
            .server_connections_busy
            == 0),
        "{:?}",
        pgtide.cluster("main").pool
    );
}
