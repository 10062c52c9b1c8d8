//! Small files pgtide keeps for itself (verifiers, the ACU meter, slot markers): written whole
//! or not at all, and readable by pgtide alone. The computes' logs (`postgres.log`,
//! `initdb.log`) are private too: pgtide opens them and hands Postgres the open descriptor, so
//! that the compute writes its log without any OS user being able to open it by name — another
//! cluster's compute runs as another user, and a log holds statements and their errors.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `bytes` to `path` atomically and durably, mode 0600: a temporary file beside it,
/// fsync, rename over the old one, fsync of the directory. After a crash or a power cut the file
/// is the old one or the new one, never a mix; nobody but its owner (pgtide) may read it — a
/// cluster's verifiers must not be readable by the OS user another cluster's Postgres runs as.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // A temporary file left by an older pgtide keeps its mode: set it either way.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Opens `path` for appending, mode 0600, creating it if needed. A log made by an older pgtide
/// keeps the mode it was created with, so the mode is set either way.
pub fn open_private_log(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(file)
}

/// Replaces the contents of `path` with `bytes`, mode 0600 (a log written once, such as
/// initdb's; no atomicity needed).
pub fn write_private_log(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_file_is_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roles.json");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    #[test]
    fn logs_are_private_even_when_an_older_one_was_not() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let log = dir.path().join("postgres.log");
        std::fs::write(&log, b"old line\n").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
        open_private_log(&log)
            .unwrap()
            .write_all(b"new line\n")
            .unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"old line\nnew line\n");
        assert_eq!(mode(&log), 0o600);
        let fresh = dir.path().join("fresh.log");
        open_private_log(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);

        let initdb = dir.path().join("initdb.log");
        std::fs::write(&initdb, b"a longer old text").unwrap();
        std::fs::set_permissions(&initdb, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private_log(&initdb, b"new").unwrap();
        assert_eq!(std::fs::read(&initdb).unwrap(), b"new");
        assert_eq!(mode(&initdb), 0o600);
    }
}
