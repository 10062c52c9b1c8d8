//! The newest base backup kept unpacked, beside its tar, where the copies' file system can clone
//! files (reflink): a branch then clones each file of the image into its data directory
//! ([`super::reflink::clone_tree`]) — metadata only, a second or so for a gigabyte — instead of
//! unpacking the tar, which writes the whole database again.
//!
//! Why an image: the copies keep base backups as tar files (pg_basebackup's), whose members sit
//! at 512-byte offsets, so no file of a tar can be cloned out of it (a clone needs whole blocks
//! at block-aligned offsets). The image is written once, when its backup is stored, at
//! background priority; it is never modified (a branch writes to its clones, whose blocks the
//! file system copies on write), and it is removed when a newer image replaces it or its
//! backup is pruned. One per cluster, in the copy that took the backup: `base/<start>.image`.
//! It is made under `<start>.image.tmp`, every file synced, then renamed: an image under its
//! name is whole.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::backups::backup_tar;
use super::wal::Lsn;
use crate::runtime::background::PacedWriter;

/// Where the copy at `dir` keeps the image of the backup that starts at `start`.
pub fn image_dir(dir: &Path, start: Lsn) -> PathBuf {
    backup_tar(dir, start).with_extension("image")
}

/// The image of the backup at `start` in any of these copies, if one is whole.
pub fn find_image(dirs: &[PathBuf], start: Lsn) -> Option<PathBuf> {
    dirs.iter()
        .map(|dir| image_dir(dir, start))
        .find(|image| image.is_dir())
}

/// One image is made at a time in the whole pgtide: it is background work, and two of one
/// cluster must not race (the older one finishing last would remove the newer).
static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`keep_image`] of the backup just stored at `start` in the copy at `dir`, on a thread of its
/// own at background priority, not waited for: a new cluster's first backup (part of its
/// creation) and a periodic one are done once they are in the copies; a branch that comes
/// before the image is whole unpacks the tar instead.
pub fn keep_image_in_background(dir: PathBuf, start: Lsn) {
    // Most file systems do not clone: no thread then (many clusters start at once).
    if !super::reflink::supported(&dir.join("base")) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("bg-image".into())
        .spawn(move || {
            let _ = crate::runtime::background::lower_this_thread();
            let tar = backup_tar(&dir, start);
            match keep_image(&dir, &tar, start) {
                Ok(true) => tracing::info!(copy = %dir.display(), %start, "base backup kept unpacked for copy-on-write branches"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(copy = %dir.display(), %start, error = %e, "keeping the base backup unpacked failed");
                    let _ = fs::remove_dir_all(image_dir(&dir, start).with_extension("image.tmp"));
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread to keep the base backup unpacked");
    }
}

/// At a cluster's start: the image of the newest backup of the first copy that holds one, if it
/// is missing (a pgtide stopped while making it), made as after a backup.
pub fn keep_newest_image_in_background(dirs: &[PathBuf]) {
    let newest = dirs.iter().find_map(|dir| {
        let start = super::backups::backup_starts(dir).into_iter().max()?;
        Some((dir.clone(), start))
    });
    if let Some((dir, start)) = newest {
        if !image_dir(&dir, start).is_dir() {
            keep_image_in_background(dir, start);
        }
    }
}

/// Unpacks the backup `tar` (stored at `start` in the copy at `dir`) as that copy's image, if
/// the copy's file system clones files and the backup is still the copy's newest, and removes
/// the copy's older images. Background work: call it on a background thread
/// ([`crate::runtime::background`]). Returns whether an image was made.
pub fn keep_image(dir: &Path, tar: &Path, start: Lsn) -> io::Result<bool> {
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let newest = super::backups::backup_starts(dir).into_iter().max();
    let base = dir.join("base");
    let image = image_dir(dir, start);
    if newest != Some(start)
        || image.is_dir()
        || !tar.is_file()
        || !super::reflink::supported(&base)
    {
        return Ok(false);
    }
    // Images half made by a pgtide that stopped meanwhile (none is being made: the lock).
    for entry in fs::read_dir(&base)?.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".image.tmp") {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let tmp = image.with_extension("image.tmp");
    fs::create_dir(&tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700))?;
    unpack_tar(tar, &tmp, true)?;
    fs::rename(&tmp, &image)?;
    super::segment::sync_dir(&base)?;
    remove_stale(dir, Some(start));
    Ok(true)
}

/// Removes the copy's images other than `keep`'s (and any left half made).
pub fn remove_stale(dir: &Path, keep: Option<Lsn>) {
    let keep = keep.map(|start| image_dir(dir, start));
    for entry in fs::read_dir(dir.join("base"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if (name.ends_with(".image") || name.ends_with(".image.tmp"))
            && Some(&path) != keep.as_ref()
        {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Unpacks a base backup's tar into the existing directory `into`: directories, symbolic links
/// and files with their modes. Files are written with [`PacedWriter`] (written back as they go,
/// at the thread's I/O priority) and, with `durable`, synced.
pub fn unpack_tar(tar: &Path, into: &Path, durable: bool) -> io::Result<u64> {
    let mut archive = tar::Archive::new(File::open(tar)?);
    archive.set_preserve_permissions(true);
    let mut bytes = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let relative = entry.path()?.into_owned();
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a path out of the backup: {}", relative.display()),
            ));
        }
        if !entry.header().entry_type().is_file() {
            entry.unpack_in(into)?;
            continue;
        }
        let path = into.join(&relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mode = entry.header().mode()? & 0o7777;
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        let mut writer = PacedWriter::new(file);
        bytes += io::copy(&mut entry, &mut writer)?;
        let file = writer.finish()?;
        if durable {
            file.sync_all()?;
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_backup_tar(path: &Path) {
        let mut builder = tar::Builder::new(File::create(path).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o700);
        header.set_size(0);
        builder
            .append_data(&mut header, "base/1", io::empty())
            .unwrap();
        let data = vec![5u8; 20 * 1024 * 1024];
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o600);
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, "base/1/16384", &data[..])
            .unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o600);
        header.set_size(3);
        builder
            .append_data(&mut header, "PG_VERSION", &b"15\n"[..])
            .unwrap();
        builder.finish().unwrap();
    }

    #[test]
    fn a_tar_unpacks_with_its_modes() {
        let root = tempfile::tempdir().unwrap();
        let tar = root.path().join("b.tar");
        a_backup_tar(&tar);
        let into = root.path().join("into");
        fs::create_dir(&into).unwrap();
        assert_eq!(
            unpack_tar(&tar, &into, false).unwrap(),
            20 * 1024 * 1024 + 3
        );
        let relation = into.join("base/1/16384");
        assert_eq!(fs::read(&relation).unwrap().len(), 20 * 1024 * 1024);
        let mode = fs::metadata(&relation).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read(into.join("PG_VERSION")).unwrap(), b"15\n");
    }

    #[test]
    fn an_image_is_kept_only_where_files_clone_and_only_the_newest() {
        let root = tempfile::tempdir().unwrap();
        let copy = root.path().join("c0");
        fs::create_dir_all(copy.join("base")).unwrap();
        let (old, new) = (Lsn(0x200_0028), Lsn(0x400_0028));
        a_backup_tar(&backup_tar(&copy, old));
        let made = keep_image(&copy, &backup_tar(&copy, old), old).unwrap();
        if !made {
            println!("{} cannot clone files: no image is kept", copy.display());
            assert!(find_image(std::slice::from_ref(&copy), old).is_none());
            return;
        }
        // Made once: asked again, nothing is redone.
        assert!(!keep_image(&copy, &backup_tar(&copy, old), old).unwrap());
        a_backup_tar(&backup_tar(&copy, new));
        // Not the copy's newest backup any more: no image of it.
        assert!(!keep_image(&copy, &backup_tar(&copy, old), old).unwrap());
        assert!(keep_image(&copy, &backup_tar(&copy, new), new).unwrap());
        let dirs = [copy.clone()];
        assert!(
            find_image(&dirs, old).is_none(),
            "the older image is removed"
        );
        let image = find_image(&dirs, new).unwrap();
        assert_eq!(fs::read(image.join("PG_VERSION")).unwrap(), b"15\n");
        remove_stale(&copy, None);
        assert!(find_image(&dirs, new).is_none());
    }
}
