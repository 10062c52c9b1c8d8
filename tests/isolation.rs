//! End to end: one cluster's superuser cannot reach another cluster's compute or files.
//! (Slow test: starts pgtide and two Postgres.)

mod common;

use std::time::Duration;

use common::*;
use pgtide::cluster::state::StateName;

/// What the superuser of cluster "main" tries against cluster "b" on the same machine: run a
/// program as the compute's OS user (`COPY … TO PROGRAM`) that connects to b's private socket,
/// and read b's files with `pg_read_file`. Against main's own socket the same program works,
/// so the refusal is isolation, not a broken attack.
#[test]
fn a_superuser_of_one_cluster_cannot_reach_another() {
    let Some((pgtide, _)) = main_and_b(true) else {
        return;
    };
    let clusters = pgtide.data_dir().join("clusters");
    let socket = |name: &str| path_str(&clusters.join(name).join("socket"));
    let try_program = |target: &str| {
        let program = format!(
            "psql -X -h {} -U postgres -d postgres -c \"SELECT 1\"",
            socket(target)
        );
        pgtide.psql(&[
            "-X",
            "-c",
            &format!("COPY (SELECT 1) TO PROGRAM '{program}'"),
        ])
    };
    let own = try_program("main");
    assert!(
        own.status.success(),
        "the program reaches its own cluster: {}",
        String::from_utf8_lossy(&own.stderr)
    );
    let other = try_program("b");
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success(),
        "main's superuser reached b's compute"
    );
    assert!(stderr.contains("failed"), "{stderr}");

    let read_file = |path: std::path::PathBuf| {
        pgtide.psql(&[
            "-X",
            "-c",
            &format!("SELECT pg_read_file('{}')", path_str(&path)),
        ])
    };
    let read = read_file(clusters.join("b").join("pgdata").join("PG_VERSION"));
    let stderr = String::from_utf8_lossy(&read.stderr);
    assert!(
        !read.status.success(),
        "main's superuser read b's data directory"
    );
    assert!(stderr.contains("Permission denied"), "{stderr}");
    // Nor pgtide's own files of b (its verifiers), nor b's WAL in the copies.
    let read = read_file(clusters.join("b").join("roles.json"));
    assert!(
        !read.status.success(),
        "main's superuser read b's verifiers"
    );
    let b_wal = pgtide.data_dir().join("copies/a1/b/wal");
    assert!(b_wal.exists(), "b has copies");
    let listing = pgtide.psql(&[
        "-X",
        "-c",
        &format!("SELECT pg_ls_dir('{}')", path_str(&b_wal)),
    ]);
    let stderr = String::from_utf8_lossy(&listing.stderr);
    assert!(!listing.status.success(), "main's superuser listed b's WAL");
    assert!(stderr.contains("Permission denied"), "{stderr}");
}

/// Cluster b's logs (`postgres.log`, `initdb.log`) hold its statements and errors: main's
/// superuser, running as main's compute user, can read neither by name, by `pg_read_file` nor by
/// a program (`COPY … FROM PROGRAM 'cat …'`). The same program reads a file that main's compute
/// user may read, so the refusal is the file's mode, not a broken attack.
#[test]
fn a_superuser_of_one_cluster_cannot_read_another_clusters_logs() {
    let Some((pgtide, b_port)) = main_and_b(false) else {
        return;
    };
    // Something worth stealing in b's log: an error that quotes b's statement.
    let secret = "b-secret-7f3a";
    let failed = psql_as(
        b_port,
        "postgres",
        PASSWORD,
        "postgres",
        &[
            "-c",
            &format!(
                "SELECT no_such_column_{} FROM pg_class",
                secret.replace('-', "_")
            ),
        ],
    );
    assert!(!failed.status.success(), "the statement was meant to fail");
    let b_dir = pgtide.data_dir().join("clusters/b");
    let b_log = b_dir.join("postgres.log");
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read_to_string(&b_log)
            .is_ok_and(|log| log.contains(&secret.replace('-', "_")))),
        "b's log never showed the failed statement"
    );

    let own_readable = pgtide.data_dir().join("clusters/main/pgdata/PG_VERSION");
    let cat = |path: &std::path::Path| {
        pgtide.psql(&[
            "-c",
            &format!(
                "CREATE TEMP TABLE stolen (line text); \
                 COPY stolen FROM PROGRAM 'cat {}'; SELECT count(*) FROM stolen",
                path_str(path)
            ),
        ])
    };
    let control = cat(&own_readable);
    assert!(
        control.status.success(),
        "the program reads main's own files: {}",
        String::from_utf8_lossy(&control.stderr)
    );
    for log in [b_log, b_dir.join("initdb.log")] {
        assert!(log.exists(), "{} exists", log.display());
        let read = pgtide.psql(&["-c", &format!("SELECT pg_read_file('{}')", path_str(&log))]);
        let stderr = String::from_utf8_lossy(&read.stderr);
        assert!(
            !read.status.success(),
            "main's superuser read {}",
            log.display()
        );
        assert!(stderr.contains("Permission denied"), "{stderr}");

        let read = cat(&log);
        let stderr = String::from_utf8_lossy(&read.stderr);
        let stdout = String::from_utf8_lossy(&read.stdout);
        assert!(
            !read.status.success(),
            "main's superuser read {} with cat: {stdout}",
            log.display()
        );
        assert!(!stdout.contains("b_secret"), "{stdout}");
        assert!(
            stderr.contains("Permission denied") || stderr.contains("failed"),
            "{stderr}"
        );
        // The mode says why: pgtide's own file, which Postgres writes through a descriptor.
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&log).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}", log.display());
    }
}

/// pgtide with cluster "main" and a second cluster "b" (on its own port, running), or `None`
/// where the test cannot mean anything: clusters are kept apart by OS users only as root.
fn main_and_b(copies: bool) -> Option<(Pgtide, u16)> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: clusters are kept apart by OS users only when pgtide runs as root");
        return None;
    }
    let b_port = free_port();
    let pgtide = Pgtide::start_with(Options {
        users: format!(
            "\n[[clusters]]\nname = \"b\"\nlisten = \"127.0.0.1:{b_port}\"\nmax_acu = 2\nmin_acu = 1\n\n\
             [[clusters.users]]\nname = \"postgres\"\npassword = \"{PASSWORD}\"\nsuperuser = true\n"
        ),
        copies,
        ..Default::default()
    });
    pgtide.wait_cluster_state("b", StateName::Running, Duration::from_secs(60));
    Some((pgtide, b_port))
}
