//! What every runtime that runs the machine's own Postgres binaries shares: finding them, the OS
//! user Postgres runs as when pgtide is root (Postgres refuses to run as root), handing
//! directories to that user, `initdb`, and the private socket directory.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use nix::unistd::{Gid, Uid};

use super::binaries::PostgresBinaries;
use super::BOOTSTRAP_SUPERUSER;
use crate::config::RuntimeConfig;

/// The OS user Postgres runs as when pgtide is root (Postgres refuses to run as root).
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: Uid,
    gid: Gid,
}

/// The machine's Postgres binaries and the user they run as.
pub struct Host {
    pub binaries: PostgresBinaries,
    pub owner: Owner,
}

/// How every runtime initialises a cluster (after `-D DIR`): pgtide's bootstrap superuser, UTF8
/// without a locale, trust on the private unix socket only and no TCP login at all.
pub const INITDB_OPTIONS: [&str; 6] = [
    "-U",
    BOOTSTRAP_SUPERUSER,
    "--encoding=UTF8",
    "--no-locale",
    "--auth-local=trust",
    "--auth-host=reject",
];

/// Who owns what Postgres reads and writes: `runtime.run_as` when pgtide is root, else pgtide's
/// own user (nothing to hand over). The docker runtime uses it alone, without host binaries: its
/// image's postgres user has the same uid.
#[derive(Debug, Clone)]
pub struct Owner {
    run_as: Option<RunAs>,
}

impl Owner {
    /// Checks that an existing `pgdata` is a Postgres data directory and hands it to the user
    /// Postgres runs as (a directory rebuilt from the copies, or brought from elsewhere).
    pub fn adopt_pgdata(&self, pgdata: &Path) -> anyhow::Result<()> {
        if !pgdata.join("PG_VERSION").exists() {
            bail!(
                "{} exists but is not a Postgres data directory (no PG_VERSION); \
                 pgtide leaves it alone: move it away to start afresh",
                pgdata.display()
            );
        }
        self.own_tree(pgdata)
    }
}

impl Host {
    pub fn new(config: &RuntimeConfig) -> anyhow::Result<Host> {
        let binaries = PostgresBinaries::find(config.postgres_bin_dir.as_deref())?;
        let owner = Owner::new(config)?;
        Ok(Host { binaries, owner })
    }

    pub fn command(&self, program: &Path) -> tokio::process::Command {
        self.command_as(program, &self.owner)
    }

    /// A command of the machine's Postgres binaries, run as `owner`.
    pub fn command_as(&self, program: &Path, owner: &Owner) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        command.stdin(Stdio::null()).process_group(0);
        if let Some(run_as) = &owner.run_as {
            // std drops root's supplementary groups when it switches the uid.
            command.uid(run_as.uid.as_raw()).gid(run_as.gid.as_raw());
        }
        command
    }

    pub async fn initdb(&self, pgdata: &Path, log: &Path) -> anyhow::Result<()> {
        self.initdb_as(pgdata, log, &self.owner).await
    }

    /// `initdb` of `pgdata` as `owner`. The directory is made here, owned by `owner`, so that
    /// its parent need not be writable by `owner`.
    pub async fn initdb_as(&self, pgdata: &Path, log: &Path, owner: &Owner) -> anyhow::Result<()> {
        let started = Instant::now();
        std::fs::create_dir_all(pgdata)
            .with_context(|| format!("creating {}", pgdata.display()))?;
        std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700))?;
        owner.chown(pgdata)?;
        let output = self
            .command_as(&self.binaries.initdb(), owner)
            .arg("-D")
            .arg(pgdata)
            .args(INITDB_OPTIONS)
            .output()
            .await
            .context("running initdb")?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        let _ = crate::files::write_private_log(&log.with_file_name("initdb.log"), text.as_bytes());
        if !output.status.success() {
            bail!("initdb of {} failed: {}", pgdata.display(), text.trim());
        }
        tracing::info!(pgdata = %pgdata.display(), ms = started.elapsed().as_millis() as u64, "initdb done");
        Ok(())
    }

    /// The private socket directory. Unix socket paths are limited to 107 bytes, so a deep data
    /// directory falls back to a short one under /tmp named after it.
    pub fn socket_dir(&self, cluster_dir: &Path) -> anyhow::Result<PathBuf> {
        self.socket_dir_for(cluster_dir, &self.owner)
    }

    /// [`Self::socket_dir`], owned by `owner`.
    pub fn socket_dir_for(&self, cluster_dir: &Path, owner: &Owner) -> anyhow::Result<PathBuf> {
        let preferred = cluster_dir.join("socket");
        let dir = if preferred.as_os_str().len() + 16 < 100 {
            preferred
        } else {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            cluster_dir.hash(&mut hasher);
            PathBuf::from(format!("/tmp/pgtide-{:016x}", hasher.finish()))
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        owner.chown(&dir)?;
        Ok(dir)
    }
}

impl Owner {
    pub fn new(config: &RuntimeConfig) -> anyhow::Result<Owner> {
        let run_as = if Uid::effective().is_root() {
            let user = nix::unistd::User::from_name(&config.run_as)
                .context("looking up runtime.run_as")?
                .ok_or_else(|| {
                    anyhow!(
                        "pgtide runs as root and Postgres refuses to: runtime.run_as names the OS user \
                         \"{0}\", which does not exist. Create it (useradd --system --user-group {0}) \
                         or set runtime.run_as to another user",
                        config.run_as
                    )
                })?;
            if user.uid.is_root() {
                bail!(
                    "runtime.run_as = \"{}\" is root, and Postgres refuses to run as root",
                    config.run_as
                );
            }
            Some(RunAs {
                name: user.name,
                uid: user.uid,
                gid: user.gid,
            })
        } else {
            None
        };
        Ok(Owner { run_as })
    }

    /// The owner of one cluster's Postgres. As root, each cluster runs as an OS user of its own,
    /// `<run_as>-<cluster>` (created on first use, without a home or a login shell): its data
    /// directory and socket directory are 0700 and its, so the superuser of one cluster —
    /// who can run programs as that OS user (`COPY … TO PROGRAM`) — can neither open another
    /// cluster's socket nor read its files. Not root: every cluster runs as pgtide's own user
    /// and cannot be kept apart this way ([`Self::isolated`] says so).
    pub fn for_cluster(&self, cluster: &str) -> anyhow::Result<Owner> {
        let Some(base) = &self.run_as else {
            return Ok(self.clone());
        };
        let name = cluster_user_name(&base.name, cluster);
        let user =
            match nix::unistd::User::from_name(&name).context("looking up a cluster's OS user")? {
                Some(user) => user,
                None => create_cluster_user(&name, cluster)?,
            };
        if user.uid.is_root() {
            bail!("the OS user {name} is root, and Postgres refuses to run as root");
        }
        Ok(Owner {
            run_as: Some(RunAs {
                name: user.name,
                uid: user.uid,
                gid: user.gid,
            }),
        })
    }

    /// Whether clusters run as OS users of their own (only when pgtide is root).
    pub fn isolated(&self) -> bool {
        self.run_as.is_some()
    }

    /// The uid and gid Postgres runs as (`None`: pgtide's own).
    pub fn ids(&self) -> Option<(u32, u32)> {
        self.run_as
            .as_ref()
            .map(|r| (r.uid.as_raw(), r.gid.as_raw()))
    }

    pub fn chown(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(run_as) = &self.run_as {
            nix::unistd::chown(path, Some(run_as.uid), Some(run_as.gid))
                .with_context(|| format!("chown {} to {}", path.display(), run_as.name))?;
        }
        Ok(())
    }

    /// Gives a whole directory tree to `run_as`, unless it already is.
    pub fn own_tree(&self, path: &Path) -> anyhow::Result<()> {
        let Some(run_as) = &self.run_as else {
            return Ok(());
        };
        if std::fs::metadata(path)?.uid() == run_as.uid.as_raw() {
            return Ok(());
        }
        fn walk(path: &Path, uid: Uid, gid: Gid) -> std::io::Result<()> {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                path,
                Some(uid),
                Some(gid),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(std::io::Error::from)?;
            if path.is_dir() && !path.is_symlink() {
                for entry in std::fs::read_dir(path)? {
                    walk(&entry?.path(), uid, gid)?;
                }
            }
            Ok(())
        }
        walk(path, run_as.uid, run_as.gid)
            .with_context(|| format!("handing {} to {}", path.display(), run_as.name))
    }

    /// Postgres (running as `run_as`) must be able to walk down to the cluster's directory.
    pub fn check_reachable(&self, dir: &Path) -> anyhow::Result<()> {
        let Some(run_as) = &self.run_as else {
            return Ok(());
        };
        for ancestor in dir.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                continue;
            };
            let mode = meta.permissions().mode();
            let reachable = mode & 0o001 != 0
                || (meta.uid() == run_as.uid.as_raw() && mode & 0o100 != 0)
                || (meta.gid() == run_as.gid.as_raw() && mode & 0o010 != 0);
            if !reachable {
                bail!(
                    "Postgres runs as \"{}\" and cannot reach {}: {} is mode {:o}; \
                     allow it (chmod o+x {}) or move runtime.data_dir",
                    run_as.name,
                    dir.display(),
                    ancestor.display(),
                    mode & 0o777,
                    ancestor.display()
                );
            }
        }
        Ok(())
    }
}

/// Serialises `useradd` across every pgtide on this machine (the tests run several at once).
/// Two `useradd`s at the same moment can each rewrite /etc/passwd from what they read: the
/// uid the first one handed out then vanishes, and Postgres fails with "could not look up
/// effective user ID". The lock guards /etc/passwd, so it lives beside it.
const USERADD_LOCK: &str = "/etc/.pgtide-useradd.lock";

/// Creates the OS user `name` for `cluster` (a system user without a home or a login shell),
/// unless another pgtide made it while this one waited for the lock.
fn create_cluster_user(name: &str, cluster: &str) -> anyhow::Result<nix::unistd::User> {
    use nix::fcntl::{Flock, FlockArg};
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(USERADD_LOCK)
        .with_context(|| format!("opening {USERADD_LOCK}"))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("locking {USERADD_LOCK}"))?;
    if let Some(user) = nix::unistd::User::from_name(name)? {
        return Ok(user);
    }
    let output = std::process::Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home"])
        .args(["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
        .args(["--comment", &format!("pgtide cluster {cluster}")])
        .arg(name)
        .output()
        .context("running useradd for the cluster's OS user")?;
    nix::unistd::User::from_name(name)?.ok_or_else(|| {
        anyhow!(
            "could not create the OS user {name} for cluster \"{cluster}\": {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })
}

/// `<run_as>-<cluster>`, or, past the 32 bytes a Linux user name may have, `<run_as>-` and a
/// hash of the cluster's name.
fn cluster_user_name(run_as: &str, cluster: &str) -> String {
    let name = format!("{run_as}-{cluster}");
    if name.len() <= 32 {
        return name;
    }
    // FNV-1a: stable across runs and Rust versions (std's hasher is neither).
    let hash = cluster.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    let prefix: String = run_as.chars().take(14).collect();
    format!("{prefix}-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_user_names_fit_and_stay_apart() {
        assert_eq!(cluster_user_name("postgres", "main"), "postgres-main");
        let long = cluster_user_name("postgres", &"x".repeat(63));
        let other = cluster_user_name("postgres", &"y".repeat(63));
        assert!(long.len() <= 32 && other.len() <= 32, "{long}");
        assert_ne!(long, other);
        assert_eq!(long, cluster_user_name("postgres", &"x".repeat(63)));
    }

    /// Several pgtides making the same cluster's OS user at once all get one user, and it
    /// stays (without the lock, a uid handed out to one of them could vanish). Needs root.
    #[test]
    fn users_made_at_once_are_one_user_that_stays() {
        if !Uid::effective().is_root() {
            eprintln!("skipped: needs root to create OS users");
            return;
        }
        let name = format!("pgtide-race-{}", std::process::id() % 100_000);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let name = name.clone();
                std::thread::spawn(move || create_cluster_user(&name, "race").map(|u| u.uid))
            })
            .collect();
        let uids: Vec<Uid> = threads
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        let found = nix::unistd::User::from_uid(uids[0])
            .unwrap()
            .map(|u| u.name);
        let _ = std::process::Command::new("userdel").arg(&name).output();
        assert!(uids.iter().all(|uid| *uid == uids[0]), "{uids:?}");
        assert_eq!(found.as_deref(), Some(name.as_str()));
    }
}
