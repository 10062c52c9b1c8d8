//! Finding the machine's PostgreSQL server binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;

/// The server binaries pgtide runs.
#[derive(Debug, Clone)]
pub struct PostgresBinaries {
    pub bin_dir: PathBuf,
}

impl PostgresBinaries {
    pub fn postgres(&self) -> PathBuf {
        self.bin_dir.join("postgres")
    }
    pub fn initdb(&self) -> PathBuf {
        self.bin_dir.join("initdb")
    }
    pub fn pg_controldata(&self) -> PathBuf {
        self.bin_dir.join("pg_controldata")
    }

    /// `runtime.postgres_bin_dir` if set, else `pg_config --bindir`, else the newest
    /// `/usr/lib/postgresql/*/bin` (Debian's layout).
    pub fn find(configured: Option<&Path>) -> anyhow::Result<PostgresBinaries> {
        if let Some(dir) = configured {
            if has_server(dir) {
                return Ok(PostgresBinaries {
                    bin_dir: dir.to_path_buf(),
                });
            }
            bail!(
                "runtime.postgres_bin_dir = {:?} holds no `postgres` and `initdb`; \
                 install the server (apt-get install postgresql-15) or fix the path",
                dir
            );
        }
        let mut candidates = Vec::new();
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            if out.status.success() {
                candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
            }
        }
        let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
                Some((version, entry.path().join("bin")))
            })
            .collect();
        debian.sort();
        candidates.extend(debian.into_iter().rev().map(|(_, dir)| dir));
        candidates.push(PathBuf::from("/usr/local/pgsql/bin"));
        match candidates.into_iter().find(|dir| has_server(dir)) {
            Some(bin_dir) => Ok(PostgresBinaries { bin_dir }),
            None => bail!(
                "the PostgreSQL server binaries (postgres, initdb) were not found: \
                 install them with `apt-get install postgresql-15` (./scripts/run.sh does), \
                 or set runtime.postgres_bin_dir"
            ),
        }
    }
}

fn has_server(dir: &Path) -> bool {
    dir.join("postgres").is_file() && dir.join("initdb").is_file()
}
