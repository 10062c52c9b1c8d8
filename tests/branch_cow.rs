//! End to end: a branch made by copy-on-write. pgtide's data (clusters and copies) on an XFS
//! file system with reflink, made for the test on a loop device: the copies keep the newest
//! base backup unpacked beside its tar, and a branch clones its files from there instead of
//! unpacking the tar. The branch holds exactly the source's rows, writes on its own, and the
//! image it was cloned from is untouched by its writes.
//!
//! Needs root, `mkfs.xfs` and loop devices; skipped with the reason printed otherwise.
//! (Slow-ish: one pgtide with copies and one branch, about 20 s.)

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// An XFS file system with reflink on a loop device, unmounted when dropped.
struct ReflinkMount {
    dir: tempfile::TempDir,
}

impl ReflinkMount {
    fn make() -> Result<ReflinkMount, String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err("not root: cannot mount a loop device".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("pgtide-reflink-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let image = dir.path().join("xfs.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(2 << 30))
            .map_err(|e| e.to_string())?;
        run("mkfs.xfs", &["-q", "-m", "reflink=1"], &[&image])?;
        run("mount", &["-o", "loop"], &[&image, &mount])?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&mount, std::fs::Permissions::from_mode(0o755)).unwrap();
        Ok(ReflinkMount { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for ReflinkMount {
    fn drop(&mut self) {
        for _ in 0..50 {
            let done = Command::new("umount").arg(self.path()).status();
            if done.is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

fn run(program: &str, args: &[&str], paths: &[&Path]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .args(paths)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program} is not available: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The images (`base/<start>.image`) in the copies under `data`.
fn images(data: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![data.join("copies")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "image") {
                found.push(path);
            } else if path.is_dir() && !path.ends_with("wal") {
                pending.push(path);
            }
        }
    }
    found
}

#[test]
fn a_branch_on_a_reflink_file_system_is_cloned_from_the_backup_image() {
    let mount = match ReflinkMount::make() {
        Ok(mount) => mount,
        Err(reason) => {
            println!("skipped: {reason}");
            return;
        }
    };
    let port = free_port();
    let pgtide = Pgtide::start_with(Options {
        top: format!("[tenants]\nlisten = \"127.0.0.1:{port}\"\n"),
        copies: true,
        data_on: Some(mount.path()),
        ..Default::default()
    });
    pgtide.sql("CREATE TABLE t (id int PRIMARY KEY, phase text)");
    pgtide.sql("INSERT INTO t SELECT g, 'source' FROM generate_series(1, 1000) g");

    // The first base backup is kept unpacked in the background, once it is in the copies.
    let deadline = Instant::now() + Duration::from_secs(60);
    while images(&pgtide.data_dir()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no image of the base backup in the copies:\n{}",
            pgtide.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let image = images(&pgtide.data_dir()).remove(0);
    let version_before = std::fs::read(image.join("PG_VERSION")).unwrap();

    let out = pgtide.cli(&["branch", "main", "cow"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        pgtide.log()
    );
    assert!(text.contains("(cloned, copy-on-write)"), "{text}");
    let sql = |cluster: &str, sql: &str| branch_sql(port, cluster, sql);
    assert_eq!(sql("cow", "SELECT count(*) FROM t"), "1000");
    sql("cow", "UPDATE t SET phase = 'branch'");
    sql("cow", "CHECKPOINT");
    assert_eq!(
        pgtide.sql("SELECT count(*) FROM t WHERE phase = 'source'"),
        "1000"
    );
    // The image is the backup's, whatever the branch wrote to its clones.
    assert_eq!(
        std::fs::read(image.join("PG_VERSION")).unwrap(),
        version_before
    );
    drop(pgtide);
    drop(mount);
}
