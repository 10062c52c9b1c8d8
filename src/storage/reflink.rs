//! Copy-on-write clones of files (the `FICLONE` ioctl: XFS with reflink, btrfs, bcachefs,
//! OCFS2), with a plain copy wherever the file system cannot clone.
//!
//! A clone is metadata only: the new file shares the old one's blocks until either is written,
//! and the file system copies a block when it is. A gigabyte is cloned in well under a second,
//! where a copy writes the gigabyte again. Hard links would be no substitute: Postgres rewrites
//! its relation files in place, so a hard-linked file would change under the file it was
//! linked from.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use crate::runtime::background::PacedWriter;

/// How a tree was reproduced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cloned {
    /// Files cloned (their blocks shared).
    pub cloned: usize,
    /// Files copied byte for byte (the file system cannot clone, or not across these two).
    pub copied: usize,
    /// Bytes of the files copied.
    pub copied_bytes: u64,
}

/// Clones `from` into a new file `to` (mode `mode`), or copies it when cloning is not possible
/// here. Returns whether it was cloned.
pub fn clone_file(from: &Path, to: &Path, mode: u32) -> io::Result<bool> {
    let source = File::open(from)?;
    let target = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    target.set_permissions(fs::Permissions::from_mode(mode))?;
    // SAFETY: FICLONE takes the source's descriptor as its argument; both are open.
    let cloned = unsafe {
        nix::libc::ioctl(
            target.as_raw_fd(),
            nix::libc::FICLONE,
            source.as_raw_fd() as nix::libc::c_int,
        )
    };
    if cloned == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if !cannot_clone(&e) {
        return Err(e);
    }
    let mut source = source;
    let mut writer = PacedWriter::new(target);
    io::copy(&mut source, &mut writer)?;
    writer.finish()?;
    Ok(false)
}

/// The errors that mean "this file system (or this pair of them) does not clone", as opposed to
/// a failure of the file itself: the caller copies instead.
fn cannot_clone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EOPNOTSUPP | nix::libc::EXDEV | nix::libc::EINVAL | nix::libc::ENOTTY)
    )
}

/// Reproduces the tree at `from` in `to` (which must not exist): directories and symbolic
/// links made anew, files cloned where possible and copied where not, modes kept.
pub fn clone_tree(from: &Path, to: &Path) -> io::Result<Cloned> {
    let mut done = Cloned::default();
    clone_dir(from, to, &mut done)?;
    Ok(done)
}

fn clone_dir(from: &Path, to: &Path, done: &mut Cloned) -> io::Result<()> {
    let mode = fs::symlink_metadata(from)?.permissions().mode() & 0o7777;
    fs::create_dir(to)?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let meta = fs::symlink_metadata(&source)?;
        if meta.is_dir() {
            clone_dir(&source, &target, done)?;
        } else if meta.file_type().is_symlink() {
            symlink(fs::read_link(&source)?, &target)?;
        } else if clone_file(&source, &target, meta.permissions().mode() & 0o7777)? {
            done.cloned += 1;
        } else {
            done.copied += 1;
            done.copied_bytes += meta.len();
        }
    }
    Ok(())
}

/// Whether files in `dir` can be cloned: tried once per file system (by device), on a scratch
/// file in the first directory asked about. Asked at every cluster's start, after every base
/// backup and by every branch: the answer does not change while the file system is mounted.
pub fn supported(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    static KNOWN: std::sync::Mutex<Vec<(u64, bool)>> = std::sync::Mutex::new(Vec::new());
    let Ok(device) = fs::metadata(dir).map(|m| m.dev()) else {
        return false;
    };
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, answer)) = known.iter().find(|(d, _)| *d == device) {
        return answer;
    }
    let answer = probe(dir);
    known.push((device, answer));
    answer
}

fn probe(dir: &Path) -> bool {
    let probe = dir.join(format!(".reflink-probe-{}", std::process::id()));
    let clone = probe.with_extension("clone");
    let cloned = fs::write(&probe, b"probe")
        .and_then(|_| clone_file(&probe, &clone, 0o600))
        .unwrap_or(false);
    let _ = fs::remove_file(&probe);
    let _ = fs::remove_file(&clone);
    cloned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_reproduced_cloned_or_copied() {
        let root = tempfile::tempdir().unwrap();
        let from = root.path().join("from");
        fs::create_dir_all(from.join("base/1")).unwrap();
        fs::write(from.join("base/1/1259"), vec![3u8; 3 * 8192]).unwrap();
        fs::set_permissions(from.join("base/1/1259"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(from.join("PG_VERSION"), b"15\n").unwrap();
        symlink("/elsewhere", from.join("link")).unwrap();
        let to = root.path().join("to");
        let done = clone_tree(&from, &to).unwrap();
        assert_eq!(done.cloned + done.copied, 2);
        // Whichever way it went, the bytes and modes are the same, and the source is untouched
        // by writes to the clone.
        assert_eq!(
            fs::read(to.join("base/1/1259")).unwrap(),
            vec![3u8; 3 * 8192]
        );
        let mode = fs::metadata(to.join("base/1/1259"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            fs::read_link(to.join("link")).unwrap(),
            Path::new("/elsewhere")
        );
        fs::write(to.join("PG_VERSION"), b"16\n").unwrap();
        assert_eq!(fs::read(from.join("PG_VERSION")).unwrap(), b"15\n");
        // A file system that clones clones every file; one that does not copies every file.
        if supported(root.path()) {
            assert_eq!(done.copied, 0, "{done:?}");
        } else {
            println!(
                "{} cannot clone: the copy fallback was tested",
                root.path().display()
            );
            assert_eq!(done.cloned, 0, "{done:?}");
            assert_eq!(done.copied_bytes, 3 * 8192 + 3);
        }
    }

    #[test]
    fn cloning_onto_an_existing_file_fails_rather_than_overwrites() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("a"), b"a").unwrap();
        fs::write(root.path().join("b"), b"b").unwrap();
        assert!(clone_file(&root.path().join("a"), &root.path().join("b"), 0o600).is_err());
        assert_eq!(fs::read(root.path().join("b")).unwrap(), b"b");
    }
}
