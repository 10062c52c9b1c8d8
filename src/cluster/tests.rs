//! The cluster state machine against the fake runtime and a fake storage: resume storms, a pause
//! during a start, a crash during a resize, a shutdown during a rebuild, restarts and their
//! backoff, a lost data directory, and the refusals to initialise a cluster afresh; and that a
//! slow stop, kill or resize never keeps pause, resume, shutdown or status waiting. Time is
//! tokio's paused clock, so a 10-minute start costs nothing; each test takes milliseconds.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::compute_roles::ComputeRoles;
use super::durability::Durability;
use super::events::EventKind;
use super::state::{ClusterState, StateName};
use super::{spawn_with, ClusterHandle, Initially};
use crate::config::{CapacityConfig, ClusterConfig, PoolMode, UserConfig};
use crate::runtime::fake::{FakeControl, FakeRuntime};
use crate::runtime::ComputeEndpoint;
use crate::storage::wal::Lsn;
use crate::storage::StorageStatus;

const LONG: Duration = Duration::from_secs(600);

struct NoRoles;

#[async_trait]
impl ComputeRoles for NoRoles {
    async fn sync_and_read(
        &self,
        _: &ComputeEndpoint,
        _: &[UserConfig],
    ) -> anyhow::Result<HashMap<String, super::roles::ComputeRole>> {
        Ok(HashMap::new())
    }
}

/// A storage whose rebuild takes as long as the test says, and that counts what it was asked.
#[derive(Default)]
struct StorageControl {
    has_backup: AtomicBool,
    holds_wal: AtomicBool,
    rebuild_time: Mutex<Duration>,
    rebuilds_started: AtomicUsize,
    rebuilds_finished: AtomicUsize,
    receivers: AtomicUsize,
    backups: AtomicUsize,
}

struct FakeStorage(Arc<StorageControl>);

#[async_trait]
impl Durability for FakeStorage {
    fn postmaster_settings(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    fn has_backup(&self) -> bool {
        self.0.has_backup.load(Ordering::SeqCst)
    }
    fn holds_wal(&self) -> bool {
        self.0.holds_wal.load(Ordering::SeqCst)
    }
    async fn end_backup(&mut self) -> Option<anyhow::Result<Lsn>> {
        None
    }
    async fn rebuild(&mut self, pgdata: &Path) -> anyhow::Result<String> {
        self.0.rebuilds_started.fetch_add(1, Ordering::SeqCst);
        let rebuild_time = *self.0.rebuild_time.lock().unwrap();
        tokio::time::sleep(rebuild_time).await;
        std::fs::create_dir_all(pgdata.join("global"))?;
        std::fs::write(pgdata.join("global").join("pg_control"), b"")?;
        std::fs::write(pgdata.join("PG_VERSION"), b"15")?;
        self.0.rebuilds_finished.fetch_add(1, Ordering::SeqCst);
        Ok("rebuilt from the fake copies".to_string())
    }
    async fn start_receiver(&mut self, _: ComputeEndpoint) -> anyhow::Result<()> {
        self.0.receivers.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn compute_stopping(&mut self) {}

    async fn stop_receiver(&mut self) {}
    async fn backup_now(&mut self, _: &ComputeEndpoint) -> anyhow::Result<Lsn> {
        self.0.backups.fetch_add(1, Ordering::SeqCst);
        self.0.has_backup.store(true, Ordering::SeqCst);
        Ok(Lsn(0x1000000))
    }
    async fn tend(&mut self, _: Option<&ComputeEndpoint>) -> Option<anyhow::Result<Lsn>> {
        None
    }
    fn status(&self) -> StorageStatus {
        StorageStatus::default()
    }
    fn take_notices(&mut self) -> Vec<crate::storage::notices::StorageNotice> {
        Vec::new()
    }
}

struct Cluster {
    handle: ClusterHandle,
    compute: Arc<FakeControl>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn pgdata(&self) -> std::path::PathBuf {
        self.dir.path().join("clusters").join("t").join("pgdata")
    }

    fn events(&self, kind: EventKind) -> usize {
        self.handle
            .events()
            .recent(1000)
            .iter()
            .filter(|e| e.kind == kind)
            .count()
    }

    async fn wait_for(&self, name: StateName) {
        let mut waited = Duration::ZERO;
        while self.handle.state().name() != name {
            assert!(
                waited < LONG * 10,
                "never {name}: {:?}",
                self.handle.state()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += Duration::from_millis(10);
        }
    }
}

fn config() -> ClusterConfig {
    ClusterConfig {
        name: "t".to_string(),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        min_acu: 0.0,
        max_acu: 4.0,
        auto_pause_after: Duration::from_secs(3600),
        scale_down_after: Duration::from_secs(30),
        pool_mode: PoolMode::Session,
        resume_timeout: LONG * 100,
        max_client_connections: 100,
        tls: None,
        users: Vec::new(),
        standbys: 0,
        reader_listen: None,
        max_reader_lag: crate::config::default_max_reader_lag(),
    }
}

/// A cluster on the fake runtime; `prepare` sets the runtime up before the first start.
fn cluster(storage: Option<Arc<StorageControl>>, prepare: impl FnOnce(&FakeControl)) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let runtime = FakeRuntime::default();
    prepare(&runtime.control);
    let compute = runtime.control.clone();
    let storage = storage.map(|s| Box::new(FakeStorage(s)) as Box<dyn Durability>);
    let handle = spawn_with(
        Initially::Started,
        config(),
        super::MachineShare {
            capacity: CapacityConfig::default(),
            budget: Arc::new(crate::capacity::Budget::unlimited()),
            zones: vec!["a".to_string()],
        },
        Arc::new(runtime),
        dir.path().to_path_buf(),
        storage,
        Arc::new(NoRoles),
    );
    Cluster {
        handle,
        compute,
        dir,
    }
}

#[tokio::test(start_paused = true)]
async fn a_resume_storm_starts_one_compute() {
    let c = cluster(None, |fake| {
        *fake.start_time.lock().unwrap() = Duration::from_millis(80)
    });
    c.wait_for(StateName::Running).await;
    c.handle.pause().await.unwrap();
    assert_eq!(c.compute.live.load(Ordering::SeqCst), 0);
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let handle = c.handle.clone();
            tokio::spawn(async move { handle.attach(&format!("client {i}")).await })
        })
        .collect();
    for client in clients {
        client
            .await
            .unwrap()
            .expect("every client gets the compute");
    }
    assert_eq!(
        c.compute.starts.load(Ordering::SeqCst),
        2,
        "pgtide's start, then one resume"
    );
    assert_eq!(c.compute.most_live.load(Ordering::SeqCst), 1);
    assert_eq!(c.events(EventKind::Resumed), 2);
}

#[tokio::test(start_paused = true)]
async fn a_pause_during_a_start_is_served_at_once_and_leaves_no_compute() {
    let c = cluster(None, |fake| *fake.start_time.lock().unwrap() = LONG);
    c.wait_for(StateName::Resuming).await;
    let asked = tokio::time::Instant::now();
    let first = tokio::spawn({
        let handle = c.handle.clone();
        async move { handle.pause().await }
    });
    c.wait_for(StateName::Pausing).await;
    // While the start winds down the task still answers: a second pause is told at once.
    let second = c.handle.pause().await;
    assert_eq!(second, Err("a pause is already under way".to_string()));
    assert!(
        asked.elapsed() < LONG,
        "answered while the start was still running"
    );
    assert_eq!(first.await.unwrap(), Ok("cluster \"t\" paused".to_string()));
    assert_eq!(c.handle.state().name(), StateName::Paused);
    assert_eq!(
        c.compute.live.load(Ordering::SeqCst),
        0,
        "the started compute was stopped"
    );
    assert_eq!(c.compute.stops.load(Ordering::SeqCst), 1);
    assert_eq!(c.events(EventKind::StartCancelled), 1);
    assert_eq!(c.events(EventKind::Resumed), 0);
}

#[tokio::test(start_paused = true)]
async fn a_crash_during_a_resize_restarts_the_compute_once() {
    let c = cluster(None, |fake| {
        *fake.resize_time.lock().unwrap() = Duration::from_secs(5)
    });
    c.wait_for(StateName::Running).await;
    // The first resize (to the initial size) is under way for 5 s: the compute dies meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.compute.crash();
    while c.events(EventKind::Restarted) == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.wait_for(StateName::Running).await;
    assert_eq!(
        c.events(EventKind::ResizeFailed),
        1,
        "the resize on the dead compute failed"
    );
    assert_eq!(c.events(EventKind::ComputeExited), 1);
    assert_eq!(c.compute.starts.load(Ordering::SeqCst), 2);
    assert_eq!(
        c.compute.most_live.load(Ordering::SeqCst),
        1,
        "never two computes"
    );
    assert!(matches!(c.handle.state(), ClusterState::Running(_)));
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_during_a_rebuild_gives_the_rebuild_up_at_once() {
    let storage = Arc::new(StorageControl::default());
    storage.has_backup.store(true, Ordering::SeqCst);
    *storage.rebuild_time.lock().unwrap() = LONG * 6;
    let c = cluster(Some(storage.clone()), |_| {});
    // pgdata is missing and the copies have a backup: the start rebuilds, for an hour.
    while storage.rebuilds_started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.events(EventKind::Rebuilding), 1);
    let asked = tokio::time::Instant::now();
    c.handle.shutdown().await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(storage.rebuilds_finished.load(Ordering::SeqCst), 0);
    assert_eq!(
        c.compute.starts.load(Ordering::SeqCst),
        0,
        "no compute after a given-up rebuild"
    );
    assert_eq!(c.events(EventKind::StartCancelled), 1);
    assert!(!c.pgdata().exists());
}

#[tokio::test(start_paused = true)]
async fn failed_restarts_back_off_then_the_cluster_fails_and_a_client_retries() {
    let c = cluster(None, |_| {});
    c.wait_for(StateName::Running).await;
    c.compute.fail_next_starts(&["no slot"; 2]);
    c.compute.crash();
    while c.events(EventKind::Restarted) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        c.compute.starts.load(Ordering::SeqCst),
        4,
        "start, two failures, success"
    );
    // Every attempt fails now: after RESTART_ATTEMPTS the cluster is failed, with the reason.
    c.compute
        .fail_next_starts(&["disk on fire"; super::restart::RESTART_ATTEMPTS as usize]);
    let before = tokio::time::Instant::now();
    c.compute.crash();
    c.wait_for(StateName::Failed).await;
    let waited: Duration = (0..super::restart::RESTART_ATTEMPTS - 1)
        .map(super::restart::backoff)
        .sum();
    assert!(
        before.elapsed() >= waited,
        "{:?} < {waited:?}",
        before.elapsed()
    );
    let ClusterState::Failed(reason) = c.handle.state() else {
        unreachable!()
    };
    assert!(reason.contains("disk on fire"), "{reason}");
    assert_eq!(c.events(EventKind::ResumeFailed), 1);
    // The next client retries, and the compute comes back.
    c.handle.attach("app").await.expect("a retry after failed");
    assert_eq!(c.compute.most_live.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lost_data_directory_is_rebuilt_from_the_copies() {
    let storage = Arc::new(StorageControl::default());
    let c = cluster(Some(storage.clone()), |_| {});
    c.wait_for(StateName::Running).await;
    assert_eq!(
        storage.backups.load(Ordering::SeqCst),
        1,
        "a new cluster's first base backup"
    );
    assert_eq!(c.events(EventKind::BaseBackup), 1);
    std::fs::remove_dir_all(c.pgdata()).unwrap();
    while c.events(EventKind::Restarted) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.wait_for(StateName::Running).await;
    assert_eq!(c.events(EventKind::DataDirectoryLost), 1);
    assert_eq!(storage.rebuilds_finished.load(Ordering::SeqCst), 1);
    assert!(c.pgdata().join("PG_VERSION").exists());
    assert_eq!(c.compute.most_live.load(Ordering::SeqCst), 1);
    assert_eq!(
        storage.backups.load(Ordering::SeqCst),
        1,
        "no second first backup"
    );
}

/// The runtime gives the remains of the lost directory back only at the next start's reclaim
/// (a docker container still being removed when its kill returned): they are moved aside then,
/// and the directory is rebuilt from the copies, not started from the remains.
#[tokio::test(start_paused = true)]
async fn remains_given_back_late_are_moved_aside_and_the_directory_rebuilt() {
    let storage = Arc::new(StorageControl::default());
    let c = cluster(Some(storage.clone()), |_| {});
    c.wait_for(StateName::Running).await;
    c.compute.remains_at_reclaim.store(true, Ordering::SeqCst);
    std::fs::remove_dir_all(c.pgdata()).unwrap();
    while c.events(EventKind::Restarted) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.wait_for(StateName::Running).await;
    assert!(
        !c.compute.remains_at_reclaim.load(Ordering::SeqCst),
        "reclaim ran"
    );
    assert_eq!(
        storage.rebuilds_finished.load(Ordering::SeqCst),
        1,
        "rebuilt from the copies, not started on the remains"
    );
    assert!(!c.pgdata().join("base").join("remains").exists());
    let parent = c.pgdata().parent().unwrap().to_path_buf();
    let aside = std::fs::read_dir(&parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("pgdata.lost-"))
        .count();
    assert_eq!(aside, 1, "the remains are kept aside, never deleted");
}

/// The compute exits on its own (Postgres notices its files gone) before the loss of its data
/// directory is seen, and the runtime hands the remains back at the restart's reclaim: they are
/// not a data directory, so they are moved aside and the directory is rebuilt.
#[tokio::test(start_paused = true)]
async fn remains_after_an_exit_are_moved_aside_when_the_copies_can_rebuild() {
    let storage = Arc::new(StorageControl::default());
    let c = cluster(Some(storage.clone()), |_| {});
    c.wait_for(StateName::Running).await;
    c.compute.remains_at_reclaim.store(true, Ordering::SeqCst);
    std::fs::remove_dir_all(c.pgdata()).unwrap();
    c.compute.crash();
    while c.events(EventKind::Restarted) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.wait_for(StateName::Running).await;
    assert_eq!(storage.rebuilds_finished.load(Ordering::SeqCst), 1);
    assert!(!c.pgdata().join("base").join("remains").exists());
    assert_eq!(
        c.events(EventKind::DataDirectoryLost),
        1,
        "the start said why"
    );
}

#[tokio::test(start_paused = true)]
async fn copies_with_wal_but_no_backup_are_never_initialised_over() {
    let storage = Arc::new(StorageControl::default());
    storage.holds_wal.store(true, Ordering::SeqCst);
    let c = cluster(Some(storage), |_| {});
    c.wait_for(StateName::Failed).await;
    let ClusterState::Failed(reason) = c.handle.state() else {
        unreachable!()
    };
    assert!(reason.contains("refusing to initialise"), "{reason}");
    assert_eq!(c.compute.starts.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn without_copies_a_lost_data_directory_fails_instead_of_starting_empty() {
    let c = cluster(None, |_| {});
    c.wait_for(StateName::Running).await;
    c.handle.pause().await.unwrap();
    std::fs::remove_dir_all(c.pgdata()).unwrap();
    let error = c.handle.attach("app").await.unwrap_err();
    assert!(
        error.to_string().contains("refusing to initialise"),
        "{error}"
    );
    assert_eq!(
        c.compute.starts.load(Ordering::SeqCst),
        1,
        "no start on a lost directory"
    );
}

#[tokio::test(start_paused = true)]
async fn copies_that_came_back_empty_never_initialise_over_a_cluster_that_existed() {
    let storage = Arc::new(StorageControl::default());
    let c = cluster(Some(storage.clone()), |_| {});
    c.wait_for(StateName::Running).await;
    c.handle.pause().await.unwrap();
    // The data directory is lost and the copies were replaced by empty ones.
    std::fs::remove_dir_all(c.pgdata()).unwrap();
    storage.has_backup.store(false, Ordering::SeqCst);
    let error = c.handle.attach("app").await.unwrap_err();
    assert!(
        error.to_string().contains("refusing to initialise"),
        "{error}"
    );
    assert!(error.to_string().contains("no base backup"), "{error}");
    assert_eq!(c.compute.starts.load(Ordering::SeqCst), 1);
    assert!(!c.pgdata().exists());
}

/// Waits (on the paused clock) until `kind` has been recorded `count` times.
async fn wait_for_events(c: &Cluster, kind: EventKind, count: usize) {
    let mut waited = Duration::ZERO;
    while c.events(kind) < count {
        assert!(waited < LONG * 10, "never {count} {kind} events");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
}

/// What a command must be answered within while a slow stop or resize runs.
const AT_ONCE: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn a_pause_during_a_slow_stop_is_answered_at_once_and_the_state_reported() {
    let c = cluster(None, |fake| *fake.stop_time.lock().unwrap() = LONG);
    c.wait_for(StateName::Running).await;
    let first = tokio::spawn({
        let handle = c.handle.clone();
        async move { handle.pause().await }
    });
    c.wait_for(StateName::Pausing).await;
    assert_eq!(
        c.events(EventKind::Stopping),
        1,
        "the stop's start is shown"
    );
    assert_eq!(c.events(EventKind::Stopped), 0);
    let second = tokio::time::timeout(AT_ONCE, c.handle.pause())
        .await
        .expect("a pause is answered while the stop runs");
    assert_eq!(
        second,
        Ok("cluster \"t\" is pausing: its compute is stopping".to_string())
    );
    assert_eq!(c.handle.state().name(), StateName::Pausing);
    assert_eq!(
        c.compute.live.load(Ordering::SeqCst),
        1,
        "the compute is still stopping"
    );
    assert_eq!(first.await.unwrap(), Ok("cluster \"t\" paused".to_string()));
    assert_eq!(c.handle.state().name(), StateName::Paused);
    assert_eq!(c.compute.live.load(Ordering::SeqCst), 0);
    assert_eq!(c.compute.stops.load(Ordering::SeqCst), 1);
    assert_eq!(c.events(EventKind::Stopped), 1);
    assert_eq!(c.events(EventKind::Paused), 1);
    assert_eq!(c.handle.compute_status().acu, 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_resume_during_a_pause_s_slow_stop_ends_running_again() {
    let c = cluster(None, |fake| {
        *fake.stop_time.lock().unwrap() = Duration::from_secs(60)
    });
    c.wait_for(StateName::Running).await;
    let pause = tokio::spawn({
        let handle = c.handle.clone();
        async move { handle.pause().await }
    });
    c.wait_for(StateName::Pausing).await;
    c.handle.request_resume("app");
    // The stop is not taken back, and nothing starts beside the stopping compute.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(c.handle.state().name(), StateName::Pausing);
    assert_eq!(c.compute.starts.load(Ordering::SeqCst), 1);
    assert_eq!(pause.await.unwrap(), Ok("cluster \"t\" paused".to_string()));
    c.wait_for(StateName::Running).await;
    assert_eq!(c.compute.starts.load(Ordering::SeqCst), 2, "started again");
    assert_eq!(c.compute.stops.load(Ordering::SeqCst), 1);
    assert_eq!(c.compute.most_live.load(Ordering::SeqCst), 1);
    assert_eq!(c.events(EventKind::Paused), 1);
    assert_eq!(c.events(EventKind::Resumed), 2);
    assert_eq!(
        c.events(EventKind::Starting),
        2,
        "each start is shown as it begins"
    );
}

#[tokio::test(start_paused = true)]
async fn status_and_pause_are_answered_while_a_slow_resize_runs() {
    let c = cluster(None, |fake| *fake.resize_time.lock().unwrap() = LONG);
    // The first resize (to the initial size, right after clients are let in) hangs.
    c.wait_for(StateName::Running).await;
    let status = c.handle.compute_status();
    assert_eq!(status.acu, 0.5, "the size it started at");
    assert!(status.limits.is_none(), "no resize has finished");
    let asked = tokio::time::Instant::now();
    let paused = tokio::time::timeout(super::scaling::RESIZE_TIMEOUT + AT_ONCE, c.handle.pause())
        .await
        .expect("a pause waits for a hung resize no longer than its timeout");
    assert_eq!(paused, Ok("cluster \"t\" paused".to_string()));
    assert!(asked.elapsed() <= super::scaling::RESIZE_TIMEOUT + AT_ONCE);
    assert_eq!(c.events(EventKind::ResizeTimedOut), 1);
    assert_eq!(c.compute.resizes.load(Ordering::SeqCst), 0);
    assert_eq!(c.compute.stops.load(Ordering::SeqCst), 1);
    assert_eq!(c.handle.state().name(), StateName::Paused);
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_during_a_slow_stop_completes_when_the_stop_does_and_leaves_no_compute() {
    let stop_time = Duration::from_secs(60);
    let c = cluster(None, |fake| *fake.stop_time.lock().unwrap() = stop_time);
    c.wait_for(StateName::Running).await;
    let pause = tokio::spawn({
        let handle = c.handle.clone();
        async move { handle.pause().await }
    });
    c.wait_for(StateName::Pausing).await;
    let stop_began = tokio::time::Instant::now();
    let shutdown = tokio::spawn({
        let handle = c.handle.clone();
        async move { handle.shutdown().await }
    });
    // The shutdown waits for the stop; the task still answers meanwhile.
    tokio::time::sleep(AT_ONCE).await;
    assert!(!shutdown.is_finished());
    let refused = tokio::time::timeout(AT_ONCE, c.handle.pause())
        .await
        .expect("a pause is answered while the shutdown's stop runs");
    assert_eq!(refused, Err("pgtide is shutting down".to_string()));
    shutdown.await.unwrap();
    assert!(stop_began.elapsed() >= stop_time - AT_ONCE);
    assert_eq!(c.compute.live.load(Ordering::SeqCst), 0, "no compute left");
    assert_eq!(
        c.compute.stops.load(Ordering::SeqCst),
        1,
        "one stop, shared"
    );
    assert_eq!(c.events(EventKind::Stopped), 1);
    assert_eq!(c.handle.state().name(), StateName::Paused);
    assert_eq!(
        pause.await.unwrap(),
        Err("pgtide is shutting down".to_string())
    );
    assert!(c.handle.pause().await.is_err(), "the task has ended");
}

#[tokio::test(start_paused = true)]
async fn a_lost_data_directory_with_a_slow_kill_does_not_block_pause_or_status_and_is_rebuilt() {
    let storage = Arc::new(StorageControl::default());
    let c = cluster(Some(storage.clone()), |fake| {
        *fake.kill_time.lock().unwrap() = Duration::from_secs(30)
    });
    c.wait_for(StateName::Running).await;
    std::fs::remove_dir_all(c.pgdata()).unwrap();
    wait_for_events(&c, EventKind::Stopping, 1).await;
    // The kill takes 30 s; meanwhile the state says what happens and a pause is answered.
    assert_eq!(c.events(EventKind::DataDirectoryLost), 1);
    assert_eq!(c.handle.state().name(), StateName::Resuming);
    assert_eq!(
        c.handle.compute_status().acu,
        0.5,
        "until the compute is gone"
    );
    let paused = tokio::time::timeout(AT_ONCE, c.handle.pause())
        .await
        .expect("a pause is answered while the lost compute is killed");
    assert_eq!(
        paused,
        Ok("cluster \"t\" is pausing: its compute is stopping".to_string())
    );
    assert_eq!(c.handle.state().name(), StateName::Pausing);
    assert_eq!(
        c.compute.live.load(Ordering::SeqCst),
        1,
        "still being killed"
    );
    c.wait_for(StateName::Paused).await;
    assert_eq!(c.compute.kills.load(Ordering::SeqCst), 1);
    assert_eq!(c.compute.live.load(Ordering::SeqCst), 0);
    assert_eq!(
        c.events(EventKind::Restarted),
        0,
        "the pause won over the restart"
    );
    // The next client's start rebuilds the directory from the copies.
    c.handle.attach("app").await.expect("resumed");
    assert_eq!(storage.rebuilds_finished.load(Ordering::SeqCst), 1);
    assert!(c.pgdata().join("PG_VERSION").exists());
    assert_eq!(c.compute.most_live.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lost_data_directory_with_a_slow_kill_restarts_once_the_kill_is_done() {
    let storage = Arc::new(StorageControl::default());
    let kill_time = Duration::from_secs(30);
    let c = cluster(Some(storage.clone()), |fake| {
        *fake.kill_time.lock().unwrap() = kill_time
    });
    c.wait_for(StateName::Running).await;
    std::fs::remove_dir_all(c.pgdata()).unwrap();
    wait_for_events(&c, EventKind::Stopping, 1).await;
    let lost_at = tokio::time::Instant::now();
    assert_eq!(c.handle.state().name(), StateName::Resuming);
    assert_eq!(
        c.compute.starts.load(Ordering::SeqCst),
        1,
        "no start beside it"
    );
    wait_for_events(&c, EventKind::Restarted, 1).await;
    assert!(lost_at.elapsed() >= kill_time - AT_ONCE);
    c.wait_for(StateName::Running).await;
    assert_eq!(c.compute.kills.load(Ordering::SeqCst), 1);
    assert_eq!(storage.rebuilds_finished.load(Ordering::SeqCst), 1);
    assert_eq!(c.events(EventKind::Stopped), 1);
    assert_eq!(c.compute.most_live.load(Ordering::SeqCst), 1);
}

/// A paused cluster's task sleeps: an hour of (virtual) time passes without one tick, and the
/// next client still wakes it at once, after which it ticks again.
#[tokio::test(start_paused = true)]
async fn a_paused_cluster_does_no_tick_work_for_an_hour() {
    let c = cluster(None, |_| {});
    c.wait_for(StateName::Running).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let running_ticks = c.handle.ticks();
    assert!(
        running_ticks >= 2,
        "a running cluster ticks: {running_ticks}"
    );
    c.handle.pause().await.unwrap();
    let paused_ticks = c.handle.ticks();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(c.handle.ticks(), paused_ticks, "no tick while paused");
    assert_eq!(c.handle.state().name(), StateName::Paused);
    let asked = tokio::time::Instant::now();
    c.handle.attach("a client").await.unwrap();
    assert!(asked.elapsed() < AT_ONCE, "the command woke the task");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        c.handle.ticks() > paused_ticks,
        "ticking again once running"
    );
}
