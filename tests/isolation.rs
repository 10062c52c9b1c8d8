//! End to end: one cluster's superuser cannot reach another cluster's compute or files.
//! (Slow test: starts pgtide and two Postgres.)

mod common;

use common::*;

/// What the superuser of cluster "main" tries against cluster "b" on the same machine: run a
/// program as the compute's OS user (`COPY … TO PROGRAM`) that connects to b's private socket,
/// and read b's files with `pg_read_file`. Against main's own socket the same program works,
/// so the refusal is isolation, not a broken attack.
#[test]
fn a_superuser_of_one_cluster_cannot_reach_another() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: clusters are kept apart by OS users only when pgtide runs as root");
        return;
    }
    let b_port = free_port();
    let pgtide = Pgtide::start_with(Options {
        users: format!(
            "\n[[clusters]]\nname = \"b\"\nlisten = \"127.0.0.1:{b_port}\"\nmax_acu = 2\nmin_acu = 1\n\n\
             [[clusters.users]]\nname = \"postgres\"\npassword = \"{PASSWORD}\"\nsuperuser = true\n"
        ),
        copies: true,
        ..Default::default()
    });
    assert!(wait_until(std::time::Duration::from_secs(60), || {
        pgtide.status()["clusters"][1]["state"] == "running"
    }));
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
