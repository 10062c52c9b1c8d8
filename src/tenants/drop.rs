//! Dropping a created cluster: out of routing first (no new client reaches it), then its
//! compute stopped (connected clients get Postgres's FATAL 57P01 "terminating connection due
//! to administrator command"), out of the catalog, and its data directory and its WAL and base
//! backups in every copy deleted — or, with `keep_data`, moved aside under `dropped/NAME-<unix
//! seconds>` in the data directory and in each copy, so that nothing is lost.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::catalog::Catalog;
use super::registry::Source;
use super::{TenantError, Tenants};

/// The folder, in `runtime.data_dir` and in each copy, of what a drop moved aside.
pub const DROPPED_DIR: &str = "dropped";

/// What a drop answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dropped {
    pub name: String,
    /// Where the data went with `keep_data` (empty when it was deleted).
    pub kept_at: Vec<String>,
}

impl Tenants {
    pub async fn drop_cluster(&self, name: &str, keep_data: bool) -> Result<Dropped, TenantError> {
        let mut catalog = self.catalog.lock().await;
        match self.registry.get(name) {
            None => return Err(TenantError::NotFound(name.to_string())),
            Some(registered) if registered.source == Source::Config => {
                return Err(TenantError::FromConfig(name.to_string()))
            }
            Some(_) => {}
        }
        self.drop_locked(&mut catalog, name, keep_data).await
    }

    /// The drop itself, with the catalog held (a failed create comes here too).
    pub(super) async fn drop_locked(
        &self,
        catalog: &mut Catalog,
        name: &str,
        keep_data: bool,
    ) -> Result<Dropped, TenantError> {
        if let Some(registered) = self.registry.remove(name) {
            registered.handle.shutdown().await;
        }
        self.proxy.forget(name);
        let cluster_dir = self.spawner.cluster_dir(name);
        // A runtime that keeps the data directory elsewhere while it runs gives it back.
        if let Err(e) = self.spawner.runtime.reclaim(&cluster_dir).await {
            tracing::warn!(cluster = %name, error = %e, "reclaiming the data directory");
        }
        catalog
            .remove(name)
            .map_err(|e| TenantError::Storage(format!("saving the catalog: {e}")))?;
        let mut places = vec![(self.spawner.data_dir.clone(), cluster_dir)];
        places.extend(
            self.spawner
                .copies
                .iter()
                .map(|copy| (copy.clone(), copy.join(name))),
        );
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut kept_at = Vec::new();
        for (root, dir) in places {
            if !dir.exists() {
                continue;
            }
            let done = if keep_data {
                move_aside(&root, &dir, &format!("{name}-{stamp}")).map(|to| {
                    kept_at.push(to.display().to_string());
                })
            } else {
                std::fs::remove_dir_all(&dir)
            };
            done.map_err(|e| {
                TenantError::Storage(format!(
                    "cluster \"{name}\" was dropped but {} could not be {}: {e}",
                    dir.display(),
                    if keep_data { "moved aside" } else { "deleted" }
                ))
            })?;
        }
        tracing::info!(cluster = %name, keep_data, "cluster dropped");
        Ok(Dropped {
            name: name.to_string(),
            kept_at,
        })
    }
}

/// Renames `dir` to `root/dropped/as_name` (a folder only pgtide may enter), on the same file
/// system, so the move is instant and whole.
fn move_aside(root: &Path, dir: &Path, as_name: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dropped = root.join(DROPPED_DIR);
    std::fs::create_dir_all(&dropped)?;
    std::fs::set_permissions(&dropped, std::fs::Permissions::from_mode(0o700))?;
    let to = dropped.join(as_name);
    std::fs::rename(dir, &to)?;
    Ok(to)
}
