//! Many tenants on one machine: clusters created and dropped at run time beside the config
//! file's, all served on one shared endpoint (`[tenants] listen`) and routed by name
//! ([`crate::proxy::route`]).
//!
//! The files, one job each:
//! - [`name`]: which names a created cluster may take (a DNS label, for SNI routing).
//! - [`registry`]: every cluster served now, config and created: the shared endpoint, the admin
//!   endpoint and the shutdown all read it.
//! - [`catalog`]: the created clusters, kept across restarts in `catalog.json` (verifiers only).
//! - [`spawner`]: how any cluster is started (storage, task, verifier refresher).
//! - [`adopt`]: a cluster whose data directory was made elsewhere (a branch,
//!   [`crate::branch`]) taken in as a created one, and the rename a restore in place swaps
//!   names with.
//! - [`create`] and [`drop`]: [`Tenants::create`] draws a new cluster's data directory from the
//!   warm pool's template and answers once it runs (with copies, after its first base backup);
//!   [`Tenants::drop_cluster`] stops it, forgets it and deletes or moves aside its data and copies.
//!
//! Created clusters come back paused after a restart: no compute until a client comes.
//! `docs/tenants.md` tells it with every function on the way.

pub mod adopt;
pub mod catalog;
pub mod create;
pub mod drop;
pub mod name;
pub mod registry;
pub mod spawner;

use std::sync::Arc;

use crate::cluster::Initially;
use crate::proxy::ProxyShared;
use catalog::Catalog;
use registry::{Registry, Source};
use spawner::Spawner;

pub use create::{CreateRequest, Created};
pub use drop::Dropped;

/// Why a create, a drop or a look-up was refused. Each says what Postgres would say of a
/// database, where it has words for it.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error(transparent)]
    Name(#[from] name::NameError),
    #[error("{0}")]
    Invalid(String),
    #[error("cluster \"{0}\" already exists")]
    Exists(String),
    #[error(
        "cluster \"{0}\" cannot be created: an earlier cluster's data is still at {1}; move it \
         away first"
    )]
    DataLeft(String, std::path::PathBuf),
    #[error("cluster \"{0}\" does not exist")]
    NotFound(String),
    #[error(
        "cluster \"{0}\" is defined in the config file and cannot be dropped; remove it from the \
         file instead"
    )]
    FromConfig(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Storage(String),
}

impl TenantError {
    /// The SQLSTATE Postgres uses for the same kind of refusal.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            TenantError::Name(_) => "42602",
            TenantError::Invalid(_) => "22023",
            TenantError::Exists(_) | TenantError::DataLeft(..) => "42P04",
            TenantError::NotFound(_) => "3D000",
            TenantError::FromConfig(_) => "55006",
            TenantError::Unavailable(_) => "57P03",
            TenantError::Storage(_) => "58030",
        }
    }
}

/// The tenants' side of pgtide: the registry, the catalog and how clusters start.
pub struct Tenants {
    pub registry: Arc<Registry>,
    spawner: Spawner,
    /// Creates and drops one at a time: a name is checked, claimed and saved in one go.
    catalog: tokio::sync::Mutex<Catalog>,
    proxy: Arc<ProxyShared>,
}

impl Tenants {
    /// Loads the catalog and starts its clusters paused, beside the config's clusters already
    /// in `registry`. A created cluster whose name the config file now uses is left out (the
    /// file wins), with an error in the log.
    pub fn open(
        registry: Arc<Registry>,
        spawner: Spawner,
        proxy: Arc<ProxyShared>,
    ) -> anyhow::Result<Tenants> {
        let catalog = Catalog::load(&spawner.data_dir)?;
        for entry in catalog.entries() {
            if registry.contains(&entry.name) {
                tracing::error!(cluster = %entry.name, "a created cluster has the name of a config cluster: it is not served");
                continue;
            }
            let handle = spawner.spawn(entry.cluster_config(), Initially::Paused);
            registry.insert(handle, Source::Created);
        }
        Ok(Tenants {
            registry,
            spawner,
            catalog: tokio::sync::Mutex::new(catalog),
            proxy,
        })
    }

    /// The machine budget every cluster shares.
    pub fn budget(&self) -> &Arc<crate::capacity::Budget> {
        &self.spawner.budget
    }

    /// Every cluster served, config clusters first.
    pub fn list(&self) -> Vec<registry::Registered> {
        self.registry.all()
    }
}
