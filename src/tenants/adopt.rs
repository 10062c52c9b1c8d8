//! Taking in a cluster whose data directory someone else made: a branch
//! ([`crate::branch`]) prepares `clusters/NAME/pgdata` from another cluster's copies, then
//! hands it here to become a created cluster like any other (catalog entry, routing on the
//! shared endpoint, pause, scale, drop). The name is checked before that work begins
//! ([`Tenants::check_new_name`]) and again, with the catalog held, when it is claimed
//! ([`Tenants::adopt`]).

use std::path::PathBuf;
use std::time::Instant;

use super::catalog::CatalogEntry;
use super::create::Created;
use super::registry::{Registered, Source};
use super::{name, TenantError, Tenants};
use crate::cluster::Initially;

/// How long the first start of an adopted data directory (a branch) may take.
const ADOPTED_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

impl Tenants {
    /// Whether `name` may be taken by a new cluster now: a DNS label, not served, not in the
    /// catalog, no data left under it.
    pub async fn check_new_name(&self, name: &str) -> Result<(), TenantError> {
        name::check(name)?;
        let catalog = self.catalog.lock().await;
        if self.registry.contains(name) || catalog.get(name).is_some() {
            return Err(TenantError::Exists(name.to_string()));
        }
        self.refuse_leftovers(name)
    }

    /// A served cluster, or 3D000 "cluster \"X\" does not exist".
    pub fn find(&self, name: &str) -> Result<Registered, TenantError> {
        self.registry
            .get(name)
            .ok_or_else(|| TenantError::NotFound(name.to_string()))
    }

    /// The catalog's entry of a created cluster (`None` for a config cluster).
    pub async fn catalog_entry(&self, name: &str) -> Option<CatalogEntry> {
        self.catalog.lock().await.get(name).cloned()
    }

    /// The folder a new cluster's data directory is prepared in, and its copies' folders.
    pub fn new_cluster_dirs(&self, name: &str) -> (PathBuf, Vec<PathBuf>) {
        (self.spawner.cluster_dir(name), self.spawner.copy_dirs(name))
    }

    /// How many copies make a write durable.
    pub fn write_quorum(&self) -> usize {
        self.spawner.write_quorum
    }

    /// The runtime's settings (which OS user Postgres runs as, its binaries).
    pub fn runtime_config(&self) -> &crate::config::RuntimeConfig {
        &self.spawner.runtime_config
    }

    /// Makes `entry` a created cluster whose data directory is already in place: saved in the
    /// catalog, started, and answered once its compute runs (with copies, after its first base
    /// backup). A start that fails drops it again (its data with it).
    pub async fn adopt(&self, entry: CatalogEntry) -> Result<Created, TenantError> {
        let started = Instant::now();
        let mut catalog = self.catalog.lock().await;
        let name = entry.name.clone();
        if self.registry.contains(&name) || catalog.get(&name).is_some() {
            return Err(TenantError::Exists(name));
        }
        let config = entry.cluster_config();
        let user = entry.users.first().map(|u| u.name.clone());
        catalog
            .add(entry)
            .map_err(|e| TenantError::Storage(format!("saving the catalog: {e}")))?;
        let handle = self.spawner.spawn(config, Initially::Paused);
        self.registry.insert(handle.clone(), Source::Created);
        // Not the cluster's resume_timeout (30 s by default): this first start takes the
        // branch's first base backup into its six copies, as long as writing the database six
        // times takes; a branch dropped for being big would be lost work.
        if let Err(e) = handle
            .resume_within("pgtide branch", ADOPTED_START_TIMEOUT)
            .await
        {
            tracing::error!(cluster = %name, error = %e, "the branch did not start; dropping it");
            let _ = self.drop_locked(&mut catalog, &name, false).await;
            return Err(TenantError::Unavailable(e.to_string()));
        }
        Ok(Created {
            name,
            user: user.unwrap_or_else(|| super::create::FIRST_USER.to_string()),
            password: None,
            listen: self.registry.listen_of(&handle).map(|l| l.to_string()),
            started_ms: started.elapsed().as_millis() as u64,
        })
    }
}

impl Tenants {
    /// Gives the created cluster `from` the name `to` (which must be free): out of routing,
    /// its compute stopped (connected clients get 57P01), its folder and its copies' folders
    /// renamed (the same file systems: instant and whole), its catalog entry renamed, and
    /// started again paused under the new name (its data is handed to `to`'s OS user at its
    /// next start). A restore in place swaps names with it.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), TenantError> {
        name::check(to)?;
        let mut catalog = self.catalog.lock().await;
        let Some(entry) = catalog.get(from).cloned() else {
            return Err(match self.registry.get(from) {
                Some(_) => TenantError::FromConfig(from.to_string()),
                None => TenantError::NotFound(from.to_string()),
            });
        };
        if self.registry.contains(to) || catalog.get(to).is_some() {
            return Err(TenantError::Exists(to.to_string()));
        }
        self.refuse_leftovers(to)?;
        if let Some(registered) = self.registry.remove(from) {
            registered.handle.shutdown().await;
        }
        self.proxy.forget(from);
        let from_dir = self.spawner.cluster_dir(from);
        if let Err(e) = self.spawner.runtime.reclaim(&from_dir).await {
            tracing::warn!(cluster = %from, error = %e, "reclaiming the data directory");
        }
        let mut moves = vec![(from_dir, self.spawner.cluster_dir(to))];
        moves.extend(
            self.spawner
                .copy_dirs(from)
                .into_iter()
                .zip(self.spawner.copy_dirs(to)),
        );
        for (old, new) in moves.iter().filter(|(old, _)| old.exists()) {
            std::fs::rename(old, new).map_err(|e| {
                TenantError::Storage(format!(
                    "renaming {} to {}: {e}",
                    old.display(),
                    new.display()
                ))
            })?;
        }
        let renamed = CatalogEntry {
            name: to.to_string(),
            ..entry
        };
        catalog
            .remove(from)
            .and_then(|()| catalog.add(renamed.clone()))
            .map_err(|e| TenantError::Storage(format!("saving the catalog: {e}")))?;
        let handle = self
            .spawner
            .spawn(renamed.cluster_config(), Initially::Paused);
        self.registry.insert(handle, Source::Created);
        tracing::info!(from, to, "cluster renamed");
        Ok(())
    }
}
