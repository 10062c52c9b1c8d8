//! The catalog: the clusters created at run time, kept in `<runtime.data_dir>/catalog.json` so
//! that they outlive a restart. Written whole or not at all ([`crate::files::write_private`]:
//! a temporary file, fsync, rename, fsync of the directory), mode 0600. It holds SCRAM-SHA-256
//! verifiers only, never a password: a verifier lets pgtide check a password, not log in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{self, ClusterConfig, PoolMode, UserConfig};
use crate::proxy::scram::ScramVerifier;

/// The file's name under `runtime.data_dir`.
pub const FILE_NAME: &str = "catalog.json";

/// A cluster created at run time, as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub name: String,
    pub min_acu: f64,
    pub max_acu: f64,
    pub pool_mode: PoolMode,
    #[serde(with = "humantime_serde")]
    pub auto_pause_after: Duration,
    /// RFC 3339, when it was created.
    pub created_at: String,
    pub users: Vec<CatalogUser>,
}

/// A login the cluster was created with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogUser {
    pub name: String,
    /// `SCRAM-SHA-256$…`, as Postgres keeps it in `pg_authid`.
    pub verifier: String,
    pub superuser: bool,
}

impl CatalogEntry {
    /// The cluster's settings, as a config entry would give them (no port of its own: it is
    /// reached through the shared endpoint).
    pub fn cluster_config(&self) -> ClusterConfig {
        ClusterConfig {
            name: self.name.clone(),
            listen: None,
            min_acu: self.min_acu,
            max_acu: self.max_acu,
            auto_pause_after: self.auto_pause_after,
            scale_down_after: config::default_scale_down_after(),
            pool_mode: self.pool_mode,
            resume_timeout: config::default_resume_timeout(),
            max_client_connections: config::default_max_client_connections(),
            tls: None,
            users: self
                .users
                .iter()
                .map(|user| UserConfig {
                    name: user.name.clone(),
                    password: Some(user.verifier.clone()),
                    superuser: user.superuser,
                })
                .collect(),
            // Created clusters are single-zone for now: no standbys, no reader endpoint.
            standbys: 0,
            reader_listen: None,
            max_reader_lag: config::default_max_reader_lag(),
        }
    }
}

/// The file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    clusters: Vec<CatalogEntry>,
}

/// The catalog in memory, and where it is saved.
#[derive(Debug)]
pub struct Catalog {
    path: PathBuf,
    entries: Vec<CatalogEntry>,
}

impl Catalog {
    /// Reads the catalog in `data_dir`; no file is an empty catalog. A file that cannot be read
    /// is an error: starting without the clusters it lists would hide them, and the next save
    /// would lose them.
    pub fn load(data_dir: &Path) -> anyhow::Result<Catalog> {
        let path = data_dir.join(FILE_NAME);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: CatalogFile = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("the catalog {} cannot be read: {e}", path.display())
                })?;
                for entry in &file.clusters {
                    for user in &entry.users {
                        if ScramVerifier::parse(&user.verifier).is_none() {
                            anyhow::bail!(
                                "the catalog {}: cluster \"{}\", user \"{}\": not a SCRAM-SHA-256 verifier",
                                path.display(),
                                entry.name,
                                user.name
                            );
                        }
                    }
                }
                file.clusters
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => anyhow::bail!("reading the catalog {}: {e}", path.display()),
        };
        Ok(Catalog { path, entries })
    }

    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&CatalogEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Adds an entry and saves; on a failed save the catalog is as before.
    pub fn add(&mut self, entry: CatalogEntry) -> std::io::Result<()> {
        self.entries.push(entry);
        let saved = self.save();
        if saved.is_err() {
            self.entries.pop();
        }
        saved
    }

    /// Removes an entry and saves; on a failed save the catalog is as before.
    pub fn remove(&mut self, name: &str) -> std::io::Result<()> {
        let Some(at) = self.entries.iter().position(|e| e.name == name) else {
            return Ok(());
        };
        let entry = self.entries.remove(at);
        let saved = self.save();
        if saved.is_err() {
            self.entries.insert(at, entry);
        }
        saved
    }

    fn save(&self) -> std::io::Result<()> {
        let file = CatalogFile {
            clusters: self.entries.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("the catalog serialises");
        crate::files::write_private(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn entry(name: &str, password: &str) -> CatalogEntry {
        CatalogEntry {
            name: name.to_string(),
            min_acu: 0.0,
            max_acu: 2.0,
            pool_mode: PoolMode::Transaction,
            auto_pause_after: Duration::from_secs(90),
            created_at: "2026-01-01T00:00:00Z".to_string(),
            users: vec![CatalogUser {
                name: "postgres".to_string(),
                verifier: ScramVerifier::from_password(password).to_text(),
                superuser: true,
            }],
        }
    }

    #[test]
    fn entries_survive_a_reload_and_the_file_is_private_and_holds_no_password() {
        let dir = tempfile::tempdir().unwrap();
        let mut catalog = Catalog::load(dir.path()).unwrap();
        assert!(catalog.entries().is_empty());
        catalog.add(entry("alpha", "pw-alpha-secret")).unwrap();
        catalog.add(entry("beta", "pw-beta-secret")).unwrap();
        catalog.remove("alpha").unwrap();
        let again = Catalog::load(dir.path()).unwrap();
        assert_eq!(again.entries(), &[entry_like(&catalog, "beta")]);
        let path = dir.path().join(FILE_NAME);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("pw-beta-secret"), "{text}");
        assert!(text.contains("SCRAM-SHA-256$"), "{text}");
        assert!(!dir.path().join("catalog.tmp").exists());
        let config = again.get("beta").unwrap().cluster_config();
        assert_eq!(config.listen, None);
        assert_eq!(config.pool_mode, PoolMode::Transaction);
        assert_eq!(config.auto_pause_after, Duration::from_secs(90));
        let verifier = ScramVerifier::from_config(config.users[0].password.as_ref().unwrap());
        assert_eq!(
            verifier.to_text(),
            again.get("beta").unwrap().users[0].verifier
        );
    }

    fn entry_like(catalog: &Catalog, name: &str) -> CatalogEntry {
        catalog.get(name).unwrap().clone()
    }

    #[test]
    fn a_damaged_catalog_is_an_error_not_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"{\"clusters\": [").unwrap();
        let err = Catalog::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cannot be read"), "{err}");
    }
}
