//! How a cluster is brought to life, whether the config file or `pgtide create` asked for it:
//! its storage over the copies, its task, and the task that keeps its verifiers fresh.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::capacity::Budget;
use crate::cluster::{self, ClusterHandle, Durability, Initially};
use crate::config::{CapacityConfig, ClusterConfig, Config};
use crate::runtime::Runtime;
use crate::storage;

/// What every cluster's start shares.
pub struct Spawner {
    pub capacity: CapacityConfig,
    /// The machine budget every cluster shares.
    pub budget: Arc<Budget>,
    pub runtime: Arc<dyn Runtime>,
    pub data_dir: PathBuf,
    /// The copies' directories; empty with `[storage] copies = []`.
    pub copies: Vec<PathBuf>,
    pub write_quorum: usize,
    pub base_backup_every: u64,
    /// Postgres's binaries (`pg_basebackup`), when there are copies.
    pub bin_dir: Option<PathBuf>,
    pub shutdown: watch::Receiver<bool>,
    /// The runtime's settings, for work done beside a cluster's runtime (a branch's recovery).
    pub runtime_config: crate::config::RuntimeConfig,
    /// `[storage] retention`: how far back the copies keep base backups and WAL.
    pub retention: Option<std::time::Duration>,
    /// The machine's zones, in config order.
    pub zones: Vec<String>,
}

impl Spawner {
    pub fn new(
        config: &Config,
        runtime: Arc<dyn Runtime>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Spawner> {
        let copies = config.storage_copies();
        let bin_dir = if copies.is_empty() {
            None
        } else {
            Some(
                crate::runtime::binaries::PostgresBinaries::find(
                    config.runtime.postgres_bin_dir.as_deref(),
                )?
                .bin_dir,
            )
        };
        Ok(Spawner {
            capacity: config.capacity,
            budget: Arc::new(Budget::from_config(&config.capacity)),
            runtime,
            data_dir: config.runtime.data_dir.clone(),
            copies,
            write_quorum: config.storage.write_quorum,
            base_backup_every: config.storage.base_backup_after_mib * 1024 * 1024,
            bin_dir,
            shutdown,
            runtime_config: config.runtime.clone(),
            retention: config.storage.retention,
            zones: config.zones().into_iter().map(|zone| zone.name).collect(),
        })
    }

    /// Starts the cluster's task (and its verifier refresher, which sleeps while it is paused).
    pub fn spawn(&self, config: ClusterConfig, initially: Initially) -> ClusterHandle {
        let storage = self.bin_dir.as_ref().map(|bin_dir| -> Box<dyn Durability> {
            Box::new(
                storage::ClusterStorage::open(
                    &self.copies,
                    &config.name,
                    self.write_quorum,
                    bin_dir,
                    self.base_backup_every,
                )
                .with_retention(self.retention),
            )
        });
        let handle = cluster::spawn(
            initially,
            config,
            cluster::MachineShare {
                capacity: self.capacity,
                budget: self.budget.clone(),
                zones: self.zones.clone(),
            },
            self.runtime.clone(),
            self.data_dir.clone(),
            storage,
        );
        tokio::spawn(crate::proxy::verifiers::keep_fresh(
            handle.clone(),
            self.shutdown.clone(),
        ));
        handle
    }

    /// The folder of the cluster's own files and data directory.
    pub fn cluster_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("clusters").join(name)
    }

    /// The cluster's folder in each copy.
    pub fn copy_dirs(&self, name: &str) -> Vec<PathBuf> {
        self.copies.iter().map(|copy| copy.join(name)).collect()
    }
}
