//! An in-memory runtime for the cluster state machine's unit tests: computes that are not
//! Postgres, whose start, stop, kill and resize times, failures, crashes and data directory the
//! test controls. No
//! end-to-end test uses it: those run real Postgres.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::warm::WarmPoolStatus;
use super::{Compute, ComputeEndpoint, ComputeSpec, ExitInfo, Limits, Runtime, Usage};
use crate::acu::ComputeSize;

/// The test's side of the fake runtime.
#[derive(Default)]
pub struct FakeControl {
    /// How long each start takes.
    pub start_time: Mutex<Duration>,
    /// Errors the next starts fail with, in order.
    pub failures: Mutex<VecDeque<String>>,
    /// How long each resize takes.
    pub resize_time: Mutex<Duration>,
    /// How long each clean stop takes before the compute exits.
    pub stop_time: Mutex<Duration>,
    /// How long each kill takes before the compute exits.
    pub kill_time: Mutex<Duration>,
    /// The next `reclaim` hands back the remains of a data directory (files, no PG_VERSION), as
    /// a docker slot does whose container was still being removed when the kill returned.
    pub remains_at_reclaim: std::sync::atomic::AtomicBool,
    /// Usage reported by every compute.
    pub usage: Mutex<Usage>,
    pub starts: AtomicUsize,
    pub stops: AtomicUsize,
    pub kills: AtomicUsize,
    pub resizes: AtomicUsize,
    /// Computes started and not yet stopped or crashed: never more than one per cluster.
    pub live: AtomicUsize,
    pub most_live: AtomicUsize,
    /// The latest compute's exit sender, to crash it.
    current: Mutex<Option<watch::Sender<Option<ExitInfo>>>>,
}

impl FakeControl {
    /// Makes the running compute exit as if killed.
    pub fn crash(&self) {
        if let Some(exit) = self.current.lock().unwrap().take() {
            self.live.fetch_sub(1, Ordering::SeqCst);
            exit.send_replace(Some(ExitInfo {
                description: "exited with signal 9".to_string(),
            }));
        }
    }

    pub fn fail_next_starts(&self, errors: &[&str]) {
        self.failures
            .lock()
            .unwrap()
            .extend(errors.iter().map(|e| e.to_string()));
    }
}

#[derive(Default)]
pub struct FakeRuntime {
    pub control: Arc<FakeControl>,
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn warm_pool(&self) -> WarmPoolStatus {
        WarmPoolStatus::default()
    }

    async fn shutdown(&self) {}

    async fn reclaim(&self, cluster_dir: &std::path::Path) -> anyhow::Result<()> {
        if self
            .control
            .remains_at_reclaim
            .swap(false, Ordering::SeqCst)
        {
            let pgdata = super::pgdata_of(cluster_dir);
            std::fs::create_dir_all(pgdata.join("base"))?;
            std::fs::write(pgdata.join("base").join("remains"), b"half deleted")?;
        }
        Ok(())
    }

    async fn start(&self, spec: &ComputeSpec) -> anyhow::Result<Box<dyn Compute>> {
        let control = &self.control;
        control.starts.fetch_add(1, Ordering::SeqCst);
        let start_time = *control.start_time.lock().unwrap();
        tokio::time::sleep(start_time).await;
        if let Some(error) = control.failures.lock().unwrap().pop_front() {
            anyhow::bail!("{error}");
        }
        let pgdata = super::pgdata_of(&spec.cluster_dir);
        // What Postgres would find: a new cluster gets a data directory.
        std::fs::create_dir_all(pgdata.join("global"))?;
        std::fs::write(pgdata.join("global").join("pg_control"), b"")?;
        std::fs::write(pgdata.join("PG_VERSION"), b"15")?;
        let (exit_tx, exit_rx) = watch::channel(None);
        *control.current.lock().unwrap() = Some(exit_tx);
        let live = control.live.fetch_add(1, Ordering::SeqCst) + 1;
        control.most_live.fetch_max(live, Ordering::SeqCst);
        Ok(Box::new(FakeCompute {
            control: control.clone(),
            endpoint: ComputeEndpoint {
                socket_dir: spec.cluster_dir.join("fake-socket"),
                port: super::COMPUTE_PORT,
            },
            pgdata,
            exited: exit_rx,
        }))
    }
}

pub struct FakeCompute {
    control: Arc<FakeControl>,
    endpoint: ComputeEndpoint,
    pgdata: PathBuf,
    exited: watch::Receiver<Option<ExitInfo>>,
}

#[async_trait]
impl Compute for FakeCompute {
    fn endpoint(&self) -> &ComputeEndpoint {
        &self.endpoint
    }

    fn data_dir(&self) -> PathBuf {
        self.pgdata.clone()
    }

    fn exited(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exited.clone()
    }

    fn warm_started(&self) -> bool {
        false
    }

    async fn apply_size(&mut self, size: ComputeSize) -> anyhow::Result<Limits> {
        let resize_time = *self.control.resize_time.lock().unwrap();
        tokio::time::sleep(resize_time).await;
        if self.exited.borrow().is_some() {
            anyhow::bail!("the compute is gone");
        }
        self.control.resizes.fetch_add(1, Ordering::SeqCst);
        Ok(Limits {
            cpu_cores: size.cpu_cores,
            memory_mib: size.memory_mib,
            enforced: false,
            mechanism: "fake".to_string(),
            applied_at: Vec::new(),
        })
    }

    async fn usage(&mut self) -> anyhow::Result<Usage> {
        Ok(*self.control.usage.lock().unwrap())
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        let stop_time = *self.control.stop_time.lock().unwrap();
        tokio::time::sleep(stop_time).await;
        if self.exit("stopped") {
            self.control.stops.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn kill(&mut self) {
        let kill_time = *self.control.kill_time.lock().unwrap();
        tokio::time::sleep(kill_time).await;
        if self.exit("killed") {
            self.control.kills.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl FakeCompute {
    /// Ends this compute, if it still runs; whether it did.
    fn exit(&self, description: &str) -> bool {
        if self.exited.borrow().is_some() {
            return false;
        }
        if let Some(exit) = self.control.current.lock().unwrap().take() {
            self.control.live.fetch_sub(1, Ordering::SeqCst);
            exit.send_replace(Some(ExitInfo {
                description: description.to_string(),
            }));
        }
        true
    }
}
