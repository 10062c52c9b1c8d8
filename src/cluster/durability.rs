//! The storage as the cluster sees it: what a start, a stop and a tick ask of the six copies.
//!
//! A trait rather than [`ClusterStorage`] itself so that the state machine's tests can stand a
//! controllable storage in (a rebuild that takes as long as the test wants); pgtide runs only
//! [`ClusterStorage`].

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

use crate::runtime::ComputeEndpoint;
use crate::storage::notices::StorageNotice;
use crate::storage::wal::Lsn;
use crate::storage::{ClusterStorage, CopiesReader, StorageStatus};

/// How often a base backup that a start waits for is looked at.
const BACKUP_POLL: Duration = Duration::from_millis(50);
/// How long a start waits for the first base backup of a new cluster.
const BACKUP_WAIT: Duration = Duration::from_secs(120);

#[async_trait]
pub trait Durability: Send + 'static {
    /// Settings the compute needs so that its commits wait for the copies.
    fn postmaster_settings(&self) -> Vec<(&'static str, String)>;

    /// Whether the copies hold a base backup to rebuild from.
    fn has_backup(&self) -> bool;

    /// Whether the copies hold WAL of this cluster (it has accepted commits).
    fn holds_wal(&self) -> bool;

    /// Ends the previous compute's base backup before a new compute starts; its outcome.
    async fn end_backup(&mut self) -> Option<anyhow::Result<Lsn>>;

    /// Puts a missing data directory back at `pgdata` from the copies; says how.
    async fn rebuild(&mut self, pgdata: &Path) -> anyhow::Result<String>;

    /// Starts streaming a compute's WAL into the copies; returns once it streams.
    async fn start_receiver(&mut self, endpoint: ComputeEndpoint) -> anyhow::Result<()>;

    /// The compute is about to be stopped on purpose (pause, shutdown): its stream's end is
    /// no loss.
    fn compute_stopping(&mut self);

    /// Waits for the receiver to end after its compute stopped.
    async fn stop_receiver(&mut self);

    /// Takes a base backup of the running compute and waits until the copies hold it.
    async fn backup_now(&mut self, endpoint: &ComputeEndpoint) -> anyhow::Result<Lsn>;

    /// The periodic work: repair returning copies, start a base backup when one is due (only
    /// with a compute `running`), and collect one that finished.
    async fn tend(&mut self, running: Option<&ComputeEndpoint>) -> Option<anyhow::Result<Lsn>>;

    fn status(&self) -> StorageStatus;

    /// What the storage has to tell since the last call (the receiver lost or back, copies down,
    /// lagging, refused, back), for the cluster's events.
    fn take_notices(&mut self) -> Vec<StorageNotice>;

    /// What the standbys read the copies with (none for a storage that has no files).
    fn reader(&self) -> Option<CopiesReader> {
        None
    }
}

#[async_trait]
impl Durability for ClusterStorage {
    fn postmaster_settings(&self) -> Vec<(&'static str, String)> {
        ClusterStorage::postmaster_settings()
    }

    fn has_backup(&self) -> bool {
        ClusterStorage::has_backup(self)
    }

    fn holds_wal(&self) -> bool {
        ClusterStorage::status(self).durable_lsn.is_some()
    }

    async fn end_backup(&mut self) -> Option<anyhow::Result<Lsn>> {
        ClusterStorage::end_backup(self).await
    }

    async fn rebuild(&mut self, pgdata: &Path) -> anyhow::Result<String> {
        ClusterStorage::rebuild(self, pgdata).await
    }

    async fn start_receiver(&mut self, endpoint: ComputeEndpoint) -> anyhow::Result<()> {
        ClusterStorage::start_receiver(self, endpoint).await
    }

    fn compute_stopping(&mut self) {
        ClusterStorage::compute_stopping(self)
    }

    async fn stop_receiver(&mut self) {
        ClusterStorage::stop_receiver(self).await
    }

    async fn backup_now(&mut self, endpoint: &ComputeEndpoint) -> anyhow::Result<Lsn> {
        let status = ClusterStorage::status(self);
        if status.copies_up < status.write_quorum {
            anyhow::bail!(
                "only {} of {} copies are up, below the write quorum of {}: no base backup can be stored",
                status.copies_up,
                status.copies,
                status.write_quorum
            );
        }
        if let Some(finished) = self.maybe_base_backup(endpoint).await.transpose() {
            return finished;
        }
        let waiting = async {
            loop {
                if let Some(finished) = self.collect_backup().await {
                    return finished;
                }
                tokio::time::sleep(BACKUP_POLL).await;
            }
        };
        tokio::time::timeout(BACKUP_WAIT, waiting)
            .await
            .map_err(|_| anyhow::anyhow!("no base backup was stored within {BACKUP_WAIT:?}"))?
    }

    async fn tend(&mut self, running: Option<&ComputeEndpoint>) -> Option<anyhow::Result<Lsn>> {
        self.check_copies().await;
        // A backup that finished while the cluster paused counts too.
        match running {
            Some(endpoint) => self.maybe_base_backup(endpoint).await.transpose(),
            None => self.collect_backup().await,
        }
    }

    fn status(&self) -> StorageStatus {
        ClusterStorage::status(self)
    }

    fn take_notices(&mut self) -> Vec<StorageNotice> {
        ClusterStorage::take_notices(self)
    }

    fn reader(&self) -> Option<CopiesReader> {
        Some(ClusterStorage::reader(self))
    }
}
