//! The soak: nothing acknowledged is lost and nothing hangs.
//!
//! For `PGTIDE_SOAK_MINUTES` (default 2; `scripts/soak.sh` runs 10) a cluster with six copies
//! carries two loads at once:
//! - pgbench tpcb-like (`-c 4 -j 2` in runs of 5 s, started again whenever a run ends), whose
//!   failed transactions, aborted clients and printed errors are counted;
//! - a commit ledger: `INSERT INTO ledger VALUES (id)` in a loop over tokio-postgres,
//!   reconnecting on error, which keeps every id whose COMMIT was acknowledged (and writes it to
//!   `ledger.acked` in the test directory), the time of every successful commit, and every
//!   client error's SQLSTATE and message;
//!
//! while a schedule drawn from `PGTIDE_SOAK_SEED` hits it with one fault at a time, each kind
//! several times (rounds of every kind in a shuffled order, random gaps and durations), waiting
//! after each one for the cluster to commit again:
//! the compute killed with SIGKILL; pgtide killed with SIGKILL and started again; the walsender
//! terminated; two copies made unusable (a file in place of the directory) and restored; the
//! copy that lives on a 64 MiB tmpfs filled to the last byte and freed (it also fills by itself
//! with WAL and base backups); the compute's data directory deleted under it; pause and resume
//! (pause is refused while clients are connected in session mode, so the loads step back while
//! the cluster pauses, and come back to wake it, or the CLI resumes it); the load raised to 8
//! clients and dropped to 1, for the scaler; and a few hundred hostile connections (garbage,
//! absurd lengths, half-open sockets, wrong passwords).
//!
//! Then the faults and the loads stop, the cluster must be running, every acknowledged ledger id
//! must be in the database (one missing fails the soak), the copies that are up must hold the
//! same WAL bytes wherever their checksum records say that they all hold WAL, and they must hold
//! the compute's own WAL there too. A last data directory deletion checks that a rebuild from the
//! copies alone still has every acknowledged id. A report per fault kind gives the longest time
//! without a successful commit, the errors clients saw and pgbench's failures. Timings are
//! reported, never asserted: this machine is shared and noisy; correctness is asserted.
//!
//! Both runtimes: `process` always, `docker` (a shorter run, `PGTIDE_SOAK_DOCKER_MINUTES`,
//! default a quarter of the process run but at least 1) where `docker info` works. Everything the
//! soak starts is stopped by a guard, and a watchdog ends the whole test process (after the same
//! cleanup) if a run overstays its time by more than ten minutes.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

const DEFAULT_MINUTES: f64 = 2.0;
const DEFAULT_SEED: u64 = 20_240_611;
const ZONES: [&str; 6] = ["a1", "a2", "b1", "b2", "c1", "c2"];
/// The copy that lives on a small tmpfs.
const SMALL_ZONE: &str = "c2";
/// pgbench runs this long, then starts again (short, so that a change of client count, or the
/// loads stepping back for a pause, takes effect soon).
const PGBENCH_RUN_SECS: u64 = 5;
/// A fault after which nothing commits for this long has hung the cluster.
const HANG_AFTER: Duration = Duration::from_secs(30);
/// The soak's two runs never overlap (each one runs a Postgres and loads it).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn soak_process_runtime() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let settings = Settings::from_env(Runtime::Process);
    soak(settings);
}

#[test]
fn soak_docker_runtime() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(why) = docker_usable() {
        if std::env::var("PGTIDE_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!("PGTIDE_REQUIRE_DOCKER=1 but Docker is not usable: {why}");
        }
        println!("SKIPPED: the docker soak: Docker is not usable here ({why})");
        return;
    }
    let settings = Settings::from_env(Runtime::Docker);
    soak(settings);
}

// ---------------------------------------------------------------------------------------------
// Settings, the seeded generator, the fault kinds

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Runtime {
    Process,
    Docker,
}

impl Runtime {
    fn name(self) -> &'static str {
        match self {
            Runtime::Process => "process",
            Runtime::Docker => "docker",
        }
    }
}

#[derive(Clone, Debug)]
struct Settings {
    runtime: Runtime,
    minutes: f64,
    seed: u64,
    tmpfs_mib: u64,
    keep: bool,
    /// The fault kinds drawn (`PGTIDE_SOAK_FAULTS=compute_kill,hostile`; all by default).
    faults: Vec<Fault>,
}

impl Settings {
    fn from_env(runtime: Runtime) -> Settings {
        let number = |name: &str| -> Option<f64> {
            let text = std::env::var(name).ok()?;
            Some(
                text.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
            )
        };
        let process_minutes = number("PGTIDE_SOAK_MINUTES").unwrap_or(DEFAULT_MINUTES);
        let minutes = match runtime {
            Runtime::Process => process_minutes,
            Runtime::Docker => {
                number("PGTIDE_SOAK_DOCKER_MINUTES").unwrap_or((process_minutes / 4.0).max(1.0))
            }
        };
        let seed = match std::env::var("PGTIDE_SOAK_SEED") {
            Ok(text) => {
                let text = text.trim();
                match text.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => text.parse(),
                }
                .unwrap_or_else(|_| panic!("PGTIDE_SOAK_SEED={text:?} is not a number"))
            }
            Err(_) => DEFAULT_SEED,
        };
        Settings {
            runtime,
            minutes,
            // The docker run draws its own schedule from the same seed.
            seed: if runtime == Runtime::Docker {
                seed ^ 0xd0c4e7
            } else {
                seed
            },
            tmpfs_mib: number("PGTIDE_SOAK_TMPFS_MIB").unwrap_or(64.0) as u64,
            keep: std::env::var("PGTIDE_SOAK_KEEP").as_deref() == Ok("1"),
            faults: match std::env::var("PGTIDE_SOAK_FAULTS") {
                Ok(list) if !list.trim().is_empty() => list
                    .split(',')
                    .map(|name| {
                        FAULTS
                            .into_iter()
                            .find(|f| f.name() == name.trim())
                            .unwrap_or_else(|| panic!("PGTIDE_SOAK_FAULTS: no fault {name:?}"))
                    })
                    .collect(),
                _ => FAULTS.to_vec(),
            },
        }
    }
}

/// SplitMix64: small, deterministic for a seed, and ours (the schedule must not change when a
/// dependency's generator does).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (self.next() >> 11) as f64 / (1u64 << 53) as f64 * (high - low)
    }

    fn seconds(&mut self, low: f64, high: f64) -> Duration {
        Duration::from_secs_f64(self.between(low, high))
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
enum Fault {
    ComputeKill,
    PgtideKill,
    WalsenderKill,
    TwoCopies,
    DiskFull,
    DataDirectory,
    PauseResume,
    Scale,
    Hostile,
}

const FAULTS: [Fault; 9] = [
    Fault::ComputeKill,
    Fault::PgtideKill,
    Fault::WalsenderKill,
    Fault::TwoCopies,
    Fault::DiskFull,
    Fault::DataDirectory,
    Fault::PauseResume,
    Fault::Scale,
    Fault::Hostile,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::ComputeKill => "compute_kill",
            Fault::PgtideKill => "pgtide_kill",
            Fault::WalsenderKill => "walsender_kill",
            Fault::TwoCopies => "two_copies",
            Fault::DiskFull => "disk_full",
            Fault::DataDirectory => "data_dir_deleted",
            Fault::PauseResume => "pause_resume",
            Fault::Scale => "scale",
            Fault::Hostile => "hostile",
        }
    }

    /// The issue's aim for the longest stretch without a commit (reported, not asserted).
    fn aim(self) -> Option<f64> {
        match self {
            Fault::ComputeKill | Fault::WalsenderKill => Some(1.0),
            Fault::PgtideKill => Some(2.0),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the loads and the monitor record

#[derive(Default)]
struct Ledger {
    /// Ids whose COMMIT was acknowledged, with when.
    acked: Vec<(i64, f64)>,
    /// Ids sent whose outcome the client never learnt (an error or a timeout at the COMMIT).
    in_doubt: Vec<(i64, f64)>,
    errors: Vec<ClientError>,
}

struct ClientError {
    at: f64,
    /// The SQLSTATE, or what kind of failure it was when the server sent none.
    code: String,
    message: String,
}

struct PgbenchRun {
    ended: f64,
    processed: u64,
    failed: u64,
    aborted_clients: u64,
    /// Killed because it outlived its run by far (a commit that never returned).
    killed: bool,
}

#[derive(Default)]
struct Monitor {
    last: Option<serde_json::Value>,
    state: String,
    /// Per copy directory: "up" or "down: reason".
    copies: BTreeMap<String, String>,
    acu: Vec<(f64, f64)>,
    events_seen: HashSet<String>,
    /// (observed at, kind, message).
    events: Vec<(f64, String, String)>,
}

struct Shared {
    t0: Instant,
    /// The loads end.
    stop: AtomicBool,
    /// The monitor ends (after the final checks).
    monitor_stop: AtomicBool,
    /// The loads step back (hold no connection): a pause is refused while clients are connected.
    hold: AtomicBool,
    ledger_idle: AtomicBool,
    pgbench_idle: AtomicBool,
    pgbench_clients: AtomicUsize,
    pgbench_pid: AtomicI32,
    pgtide_pid: AtomicI32,
    ledger: Mutex<Ledger>,
    pgbench: Mutex<Vec<PgbenchRun>>,
    pgbench_errors: Mutex<Vec<(f64, String)>>,
    monitor: Mutex<Monitor>,
    log: Mutex<std::fs::File>,
}

impl Shared {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// A line of the soak's timeline: printed and kept in `soak.log`.
    fn note(&self, text: impl AsRef<str>) {
        let line = format!("[{:8.3}] {}", self.now(), text.as_ref());
        println!("{line}");
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(log, "{line}");
    }

    fn last_commit(&self) -> Option<f64> {
        self.ledger.lock().unwrap().acked.last().map(|a| a.1)
    }

    fn state(&self) -> String {
        self.monitor.lock().unwrap().state.clone()
    }

    fn last_status(&self) -> Option<serde_json::Value> {
        self.monitor.lock().unwrap().last.clone()
    }
}

/// One fault as it happened.
struct Occurrence {
    fault: Fault,
    at: f64,
    /// Where the stretch without a commit is measured from (the fault itself, or for a pause,
    /// the moment the loads came back).
    measure_from: f64,
    detail: String,
    notes: Vec<String>,
    /// Seconds from the end of the fault until the cluster committed again (None: it did not).
    recovered_in: Option<f64>,
}

// ---------------------------------------------------------------------------------------------
// The soak

fn soak(settings: Settings) {
    let mut soak = Soak::start(settings);
    soak.run_schedule();
    let report = soak.finish();
    println!("{}", report.text);
    assert!(
        report.failures.is_empty(),
        "the soak failed:\n{}",
        report.failures.join("\n")
    );
}

struct Report {
    text: String,
    failures: Vec<String>,
}

struct Soak {
    settings: Settings,
    shared: Arc<Shared>,
    pgtide: Option<Pgtide>,
    /// The tmpfs mount point that holds the small copy (its own temporary directory).
    small_mount: Option<PathBuf>,
    /// Unmounts the tmpfs when dropped (after `Drop for Soak` has stopped pgtide).
    small_disk: SmallDisk,
    threads: Vec<JoinHandle<()>>,
    hostile_runtime: Option<tokio::runtime::Runtime>,
    hostile_tally: Arc<Mutex<BTreeMap<String, usize>>>,
    rng: Rng,
    occurrences: Vec<Occurrence>,
    /// Zones whose directory is currently replaced by a file.
    broken: Vec<&'static str>,
    fillers: Vec<PathBuf>,
    hung: Vec<String>,
    /// A hang that no remedy cured: the schedule ends.
    lost: bool,
    watchdog_done: Arc<AtomicBool>,
    load_started: f64,
    load_stopped: f64,
    pgbench_init: String,
}

impl Soak {
    fn pgtide(&self) -> &Pgtide {
        self.pgtide.as_ref().expect("pgtide")
    }

    fn pgtide_mut(&mut self) -> &mut Pgtide {
        self.pgtide.as_mut().expect("pgtide")
    }

    fn start(settings: Settings) -> Soak {
        let started = Instant::now();
        let small_root = test_dir();
        let mut small_disk = SmallDisk {
            root: Some(small_root),
            mount: None,
        };
        let small_mount = small_disk
            .root
            .as_ref()
            .expect("a root")
            .path()
            .join(SMALL_ZONE);
        std::fs::create_dir_all(&small_mount).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={}m,mode=0755", settings.tmpfs_mib))
            .arg("tmpfs")
            .arg(&small_mount)
            .output();
        let small_mounted = match &mounted {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                println!(
                    "SKIPPED: the disk-full fault: cannot mount a tmpfs ({})",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                false
            }
            Err(e) => {
                println!("SKIPPED: the disk-full fault: no mount command ({e})");
                false
            }
        };
        if small_mounted {
            small_disk.mount = Some(small_mount.clone());
        }
        let copies: Vec<String> = ZONES
            .iter()
            .map(|zone| {
                if *zone == SMALL_ZONE && small_mounted {
                    format!("\"{}\"", small_mount.display())
                } else {
                    format!("\"data/copies/{zone}\"")
                }
            })
            .collect();
        let runtime = match settings.runtime {
            Runtime::Process => String::new(),
            Runtime::Docker => "kind = \"docker\"".to_string(),
        };
        let options = Options {
            cluster:
                "min_acu = 0\nmax_acu = 4\nauto_pause_after = \"1h\"\nscale_down_after = \"5s\""
                    .into(),
            copies: true,
            storage: format!(
                "copies = [{}]\nbase_backup_after_mib = 64",
                copies.join(", ")
            ),
            runtime,
            ..Default::default()
        };
        println!(
            "soak ({} runtime): {} min, seed {}, small copy {} on a {} MiB tmpfs",
            settings.runtime.name(),
            settings.minutes,
            settings.seed,
            SMALL_ZONE,
            if small_mounted { settings.tmpfs_mib } else { 0 }
        );
        let pgtide = Pgtide::start_with(options);
        let log = std::fs::File::create(pgtide.dir.path().join("soak.log")).unwrap();
        let shared = Arc::new(Shared {
            t0: started,
            stop: AtomicBool::new(false),
            monitor_stop: AtomicBool::new(false),
            hold: AtomicBool::new(false),
            ledger_idle: AtomicBool::new(true),
            pgbench_idle: AtomicBool::new(true),
            pgbench_clients: AtomicUsize::new(4),
            pgbench_pid: AtomicI32::new(0),
            pgtide_pid: AtomicI32::new(pgtide.pid() as i32),
            ledger: Mutex::new(Ledger::default()),
            pgbench: Mutex::new(Vec::new()),
            pgbench_errors: Mutex::new(Vec::new()),
            monitor: Mutex::new(Monitor::default()),
            log: Mutex::new(log),
        });
        let watchdog_done = Arc::new(AtomicBool::new(false));
        let mut soak = Soak {
            rng: Rng(settings.seed),
            settings,
            shared: shared.clone(),
            pgtide: Some(pgtide),
            small_mount: small_mounted.then_some(small_mount),
            small_disk,
            threads: Vec::new(),
            hostile_runtime: Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap(),
            ),
            hostile_tally: Arc::new(Mutex::new(BTreeMap::new())),
            occurrences: Vec::new(),
            broken: Vec::new(),
            fillers: Vec::new(),
            hung: Vec::new(),
            lost: false,
            watchdog_done: watchdog_done.clone(),
            load_started: 0.0,
            load_stopped: 0.0,
            pgbench_init: String::new(),
        };
        soak.start_watchdog();
        shared.note(format!(
            "pgtide is running (data in {})",
            soak.pgtide().dir.path().display()
        ));
        let admin_port = soak.pgtide().admin_port;
        let monitor = shared.clone();
        soak.threads.push(
            std::thread::Builder::new()
                .name("soak-monitor".into())
                .spawn(move || monitor_loop(monitor, admin_port))
                .unwrap(),
        );

        // The data the loads work on.
        let port = soak.pgtide().port;
        psql_bounded(
            port,
            "CREATE TABLE ledger (id bigint PRIMARY KEY)",
            Duration::from_secs(60),
        )
        .expect("creating the ledger table");
        let (ok, out) = pgbench(port, &["-i", "-q", "-s", "1"]);
        assert!(ok, "pgbench -i failed: {out}");
        soak.pgbench_init = out.lines().last().unwrap_or("").to_string();

        let ledger = shared.clone();
        let url = soak.pgtide().url("postgres", PASSWORD, "postgres");
        let ledger_file = soak.pgtide().dir.path().join("ledger.acked");
        soak.threads.push(
            std::thread::Builder::new()
                .name("soak-ledger".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(ledger_writer(ledger, url, ledger_file));
                })
                .unwrap(),
        );
        let bench = shared.clone();
        soak.threads.push(
            std::thread::Builder::new()
                .name("soak-pgbench".into())
                .spawn(move || pgbench_loop(bench, port))
                .unwrap(),
        );
        soak.load_started = shared.now();
        shared.note("loads started: pgbench -c 4 -j 2 and the commit ledger");
        soak
    }

    /// Ends the whole process if the soak overstays by far (a hang in the soak itself): the
    /// same cleanup as the guard's, then exit.
    fn start_watchdog(&self) {
        // PGTIDE_SOAK_WATCHDOG_SECS replaces the limit (to try the watchdog itself).
        let limit = match std::env::var("PGTIDE_SOAK_WATCHDOG_SECS") {
            Ok(secs) => {
                Duration::from_secs(secs.trim().parse().expect("PGTIDE_SOAK_WATCHDOG_SECS"))
            }
            Err(_) => {
                Duration::from_secs_f64(self.settings.minutes * 60.0) + Duration::from_secs(600)
            }
        };
        let shared = self.shared.clone();
        let done = self.watchdog_done.clone();
        let data_dir = self.pgtide().data_dir();
        let mount = self.small_mount.clone();
        let keep = self.settings.keep;
        std::thread::Builder::new()
            .name("soak-watchdog".into())
            .spawn(move || {
                let deadline = Instant::now() + limit;
                while Instant::now() < deadline {
                    if done.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                shared.note(format!(
                    "WATCHDOG: the soak overstayed {limit:?}: killing what it started and exiting"
                ));
                shared.stop.store(true, Ordering::SeqCst);
                for pid in [&shared.pgbench_pid, &shared.pgtide_pid] {
                    let pid = pid.load(Ordering::SeqCst);
                    if pid > 0 {
                        send_signal(pid, Signal::SIGKILL);
                    }
                }
                // Postgres follows pgtide (PR_SET_PDEATHSIG); whatever still runs on this data
                // goes too, until nothing does (bounded: the watchdog must exit).
                let data = path_str(&data_dir);
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                loop {
                    let left = processes_matching(&data);
                    if left.is_empty() || std::time::Instant::now() > deadline {
                        break;
                    }
                    for pid in left {
                        send_signal(pid, Signal::SIGKILL);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                remove_containers_of(&data_dir);
                if let Some(mount) = &mount {
                    unmount(mount);
                }
                if !keep {
                    let _ = std::fs::remove_dir_all(data_dir.parent().expect("the test directory"));
                    if let Some(root) = mount.as_ref().and_then(|m| m.parent()) {
                        let _ = std::fs::remove_dir_all(root);
                    }
                }
                std::process::exit(101);
            })
            .unwrap();
    }

    // -----------------------------------------------------------------------------------------
    // The schedule

    fn run_schedule(&mut self) {
        let deadline = self.load_started + self.settings.minutes * 60.0;
        // Let the loads settle before the first fault.
        self.wait_for_commits(self.shared.now(), Duration::from_secs(30));
        std::thread::sleep(self.rng.seconds(2.0, 4.0));
        let mut round: Vec<Fault> = Vec::new();
        // A hang that a remedy cured does not end the schedule (the other faults still tell
        // something); one that nothing cured does.
        while self.shared.now() < deadline && !self.lost {
            if round.is_empty() {
                round = self.settings.faults.clone();
                if self.small_mount.is_none() {
                    round.retain(|f| *f != Fault::DiskFull);
                }
                self.rng.shuffle(&mut round);
            }
            let fault = round.pop().expect("a fault");
            self.inject(fault);
            if self.lost {
                break;
            }
            std::thread::sleep(self.rng.seconds(1.0, 4.0));
        }
        self.shared.note(format!(
            "schedule over: {} faults{}",
            self.occurrences.len(),
            if self.lost {
                " (stopped early: nothing brought the cluster back)"
            } else {
                ""
            }
        ));
    }

    fn inject(&mut self, fault: Fault) {
        let at = self.shared.now();
        let mut occurrence = Occurrence {
            fault,
            at,
            measure_from: at,
            detail: String::new(),
            notes: Vec::new(),
            recovered_in: None,
        };
        self.shared.note(format!("FAULT {} begins", fault.name()));
        match fault {
            Fault::ComputeKill => self.compute_kill(&mut occurrence),
            Fault::PgtideKill => self.pgtide_kill(&mut occurrence),
            Fault::WalsenderKill => self.walsender_kill(&mut occurrence),
            Fault::TwoCopies => self.two_copies(&mut occurrence),
            Fault::DiskFull => self.disk_full(&mut occurrence),
            Fault::DataDirectory => self.data_directory(&mut occurrence),
            Fault::PauseResume => self.pause_resume(&mut occurrence),
            Fault::Scale => self.scale(&mut occurrence),
            Fault::Hostile => self.hostile(&mut occurrence),
        }
        self.shared.note(format!(
            "FAULT {} applied: {}",
            fault.name(),
            occurrence.detail
        ));
        self.recover(&mut occurrence);
        self.occurrences.push(occurrence);
    }

    /// After a fault: the cluster must commit again (a ledger commit after now) and be running;
    /// the copies that were made unusable must be back. A cluster that does not commit within
    /// [`HANG_AFTER`] has hung: the soak says so, tries a compute kill and then a pgtide restart
    /// to go on to its checks, and fails.
    fn recover(&mut self, occurrence: &mut Occurrence) {
        if matches!(occurrence.fault, Fault::ComputeKill | Fault::DataDirectory) {
            // Backends outlive a killed postmaster for a moment (and may still commit): the
            // cluster counts as recovered only once it was seen to lose its compute.
            let lost = wait_until(Duration::from_secs(10), || {
                self.shared.state() != "running"
                    || self
                        .shared
                        .monitor
                        .lock()
                        .unwrap()
                        .events
                        .iter()
                        .any(|(t, k, _)| {
                            *t >= occurrence.at
                                && ["compute_exited", "data_directory_lost"].contains(&k.as_str())
                        })
            });
            if !lost {
                occurrence
                    .notes
                    .push("the cluster was never seen to lose its compute".into());
            }
        }
        let since = self.shared.now();
        if self.wait_for_commits(since, HANG_AFTER) {
            occurrence.recovered_in = Some(self.shared.now() - since);
        } else {
            let what = format!(
                "{} at {:.1} s: no commit for {:?} after it (state {})",
                occurrence.fault.name(),
                occurrence.at,
                HANG_AFTER,
                self.shared.state()
            );
            self.shared.note(format!("HANG: {what}"));
            occurrence
                .notes
                .push(format!("HANG: no commit within {HANG_AFTER:?}"));
            self.hung.push(what);
            self.unhang(occurrence);
        }
        // Copies other than the small one must all be up again (the small one may be full).
        let others_up = wait_until(Duration::from_secs(30), || {
            let monitor = self.shared.monitor.lock().unwrap();
            monitor.copies.len() == ZONES.len()
                && monitor
                    .copies
                    .iter()
                    .filter(|(dir, _)| !is_small_copy(dir, self.small_mount.as_deref()))
                    .all(|(_, state)| state == "up")
        });
        if !others_up {
            let copies = self.shared.monitor.lock().unwrap().copies.clone();
            let note = format!("copies not all back within 30 s: {copies:?}");
            self.shared.note(&note);
            occurrence.notes.push(note);
        }
        if let Some(small) = &self.small_mount {
            let monitor = self.shared.monitor.lock().unwrap();
            if let Some((_, state)) = monitor
                .copies
                .iter()
                .find(|(d, _)| is_small_copy(d, Some(small)))
            {
                if state != "up" {
                    occurrence.notes.push(format!("small copy {state}"));
                }
            }
        }
    }

    /// Brings a hung cluster back so that the soak can still check what was acknowledged.
    fn unhang(&mut self, occurrence: &mut Occurrence) {
        self.mend_all();
        self.shared.hold.store(false, Ordering::SeqCst);
        self.shared.note("remedy: killing the compute");
        self.kill_compute();
        let since = self.shared.now();
        if self.wait_for_commits(since, HANG_AFTER) {
            occurrence
                .notes
                .push("remedy: a compute kill brought it back".into());
            return;
        }
        self.shared
            .note("remedy: killing pgtide and starting it again");
        self.pgtide_mut().kill_hard();
        remove_containers_of(&self.pgtide().data_dir());
        self.pgtide_mut().respawn();
        let pid = self.pgtide().pid() as i32;
        self.shared.pgtide_pid.store(pid, Ordering::SeqCst);
        let since = self.shared.now();
        if self.wait_for_commits(since, Duration::from_secs(90)) {
            occurrence
                .notes
                .push("remedy: a pgtide restart brought it back".into());
        } else {
            occurrence
                .notes
                .push("remedy: nothing brought it back".into());
            self.lost = true;
            self.shared.note("remedy: nothing brought the cluster back");
        }
    }

    /// Waits for a ledger commit after `since` while the cluster is running.
    fn wait_for_commits(&self, since: f64, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.shared.last_commit().is_some_and(|t| t > since) && self.shared.state() == "running"
        })
    }

    // -----------------------------------------------------------------------------------------
    // The faults

    fn kill_compute(&mut self) -> String {
        match self.settings.runtime {
            Runtime::Process => match self.pgtide().postmaster_pid() {
                Some(pid) if process_alive(pid) => {
                    send_signal(pid, Signal::SIGKILL);
                    format!("SIGKILL to postmaster {pid}")
                }
                other => format!("no live postmaster to kill ({other:?})"),
            },
            Runtime::Docker => match self.compute_container() {
                Some(name) => {
                    let out = Command::new("docker").args(["kill", &name]).output();
                    match out {
                        Ok(out) if out.status.success() => format!("docker kill {name}"),
                        Ok(out) => format!(
                            "docker kill {name} failed: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                        Err(e) => format!("docker kill {name}: {e}"),
                    }
                }
                None => "no compute container to kill".to_string(),
            },
        }
    }

    fn compute_kill(&mut self, occurrence: &mut Occurrence) {
        occurrence.measure_from = self.shared.now();
        occurrence.detail = self.kill_compute();
    }

    fn pgtide_kill(&mut self, occurrence: &mut Occurrence) {
        let old = self.pgtide().pid();
        occurrence.measure_from = self.shared.now();
        self.pgtide_mut().kill_hard();
        self.pgtide_mut().respawn();
        let new = self.pgtide().pid();
        self.shared.pgtide_pid.store(new as i32, Ordering::SeqCst);
        occurrence.detail = format!("SIGKILL to pgtide {old}; started again as {new}");
    }

    fn walsender_kill(&mut self, occurrence: &mut Occurrence) {
        occurrence.measure_from = self.shared.now();
        let result = psql_bounded(
            self.pgtide().port,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'walsender'",
            Duration::from_secs(30),
        );
        occurrence.detail = match result {
            Ok(n) => format!("{n} walsender(s) terminated"),
            Err(e) => format!("terminating the walsender failed: {e}"),
        };
    }

    fn zone_dir(&self, zone: &str) -> PathBuf {
        self.pgtide().data_dir().join("copies").join(zone)
    }

    fn break_copy(&mut self, zone: &'static str) -> Result<(), String> {
        let dir = self.zone_dir(zone);
        std::fs::rename(&dir, dir.with_extension("saved"))
            .map_err(|e| format!("renaming {}: {e}", dir.display()))?;
        self.broken.push(zone);
        std::fs::write(&dir, b"not a directory").map_err(|e| e.to_string())
    }

    fn mend_all(&mut self) {
        for zone in std::mem::take(&mut self.broken) {
            let dir = self.zone_dir(zone);
            let _ = std::fs::remove_file(&dir);
            if let Err(e) = std::fs::rename(dir.with_extension("saved"), &dir) {
                self.shared
                    .note(format!("could not restore copy {zone}: {e}"));
            }
        }
    }

    fn two_copies(&mut self, occurrence: &mut Occurrence) {
        let mut zones: Vec<&'static str> = ZONES
            .iter()
            .copied()
            .filter(|z| !(*z == SMALL_ZONE && self.small_mount.is_some()))
            .collect();
        self.rng.shuffle(&mut zones);
        let hold = self.rng.seconds(2.0, 6.0);
        let up_before = self.copies_up();
        occurrence.measure_from = self.shared.now();
        let mut detail = Vec::new();
        for zone in &zones[..2] {
            if let Err(e) = self.break_copy(zone) {
                detail.push(format!("{zone}: {e}"));
            }
        }
        std::thread::sleep(hold);
        let up_during = self.copies_up();
        self.mend_all();
        occurrence.detail =
            format!(
            "{} and {} unusable for {:.1} s (copies up before {up_before}, during {up_during}){}",
            zones[0],
            zones[1],
            hold.as_secs_f64(),
            if detail.is_empty() { String::new() } else { format!("; {}", detail.join("; ")) }
        );
        if up_during < 4 {
            occurrence.notes.push(format!(
                "below the write quorum while broken ({up_during} up)"
            ));
        }
    }

    fn small_copy_state(&self) -> Option<String> {
        let small = self.small_mount.as_deref()?;
        let monitor = self.shared.monitor.lock().unwrap();
        monitor
            .copies
            .iter()
            .find(|(d, _)| is_small_copy(d, Some(small)))
            .map(|(_, s)| s.clone())
    }

    fn disk_full(&mut self, occurrence: &mut Occurrence) {
        let Some(mount) = self.small_mount.clone() else {
            occurrence.detail = "skipped: no tmpfs".into();
            return;
        };
        let before = self.small_copy_state().unwrap_or_default();
        occurrence.measure_from = self.shared.now();
        // Fill what is left of the tmpfs, to the last byte.
        let filler = mount.join(format!("filler-{}", self.occurrences.len()));
        let mut filled = 0u64;
        if let Ok(mut file) = std::fs::File::create(&filler) {
            self.fillers.push(filler.clone());
            let chunk = vec![0x5au8; 1 << 20];
            loop {
                match file.write(&chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => filled += n as u64,
                }
                if filled > (self.settings.tmpfs_mib + 1) << 20 {
                    break;
                }
            }
            // The last partial pages.
            while let Ok(n) = file.write(&chunk[..4096]) {
                if n == 0 {
                    break;
                }
                filled += n as u64;
            }
        }
        let down = wait_until(Duration::from_secs(15), || {
            self.small_copy_state().is_some_and(|s| s != "up")
        });
        let state_full = self.small_copy_state().unwrap_or_default();
        let hold = self.rng.seconds(2.0, 5.0);
        std::thread::sleep(hold);
        for filler in std::mem::take(&mut self.fillers) {
            let _ = std::fs::remove_file(filler);
        }
        let freed_at = Instant::now();
        let back = wait_until(Duration::from_secs(10), || {
            self.small_copy_state().as_deref() == Some("up")
        });
        occurrence.detail = format!(
            "{SMALL_ZONE} filled ({} MiB more; it was {before:?}); {}; freed after {:.1} s; {}",
            filled >> 20,
            if down {
                format!("marked {state_full:?}")
            } else {
                "NOT marked down within 15 s".to_string()
            },
            hold.as_secs_f64(),
            if back {
                format!(
                    "up again {:.1} s after the space was freed",
                    freed_at.elapsed().as_secs_f64()
                )
            } else {
                format!(
                    "still {:?} 10 s after the space was freed",
                    self.small_copy_state().unwrap_or_default()
                )
            }
        );
        if !down && before == "up" {
            occurrence
                .notes
                .push("the full copy was not marked down".into());
        }
        if down && !state_full.contains("disk full") {
            occurrence
                .notes
                .push("the reason does not say \"disk full\"".into());
        }
        if !back {
            occurrence
                .notes
                .push("the small copy did not come back".into());
        }
    }

    /// The compute's data directory now (the process runtime keeps it in the cluster's
    /// directory; the docker runtime in the slot the container mounts).
    fn compute_pgdata(&self) -> Option<PathBuf> {
        match self.settings.runtime {
            Runtime::Process => Some(self.pgtide().pgdata()).filter(|p| p.exists()),
            Runtime::Docker => std::fs::read_dir(self.pgtide().data_dir().join("slots"))
                .ok()?
                .flatten()
                .map(|e| e.path().join("pgdata"))
                .find(|p| p.join("PG_VERSION").exists() && p.join("postmaster.pid").exists()),
        }
    }

    fn compute_container(&self) -> Option<String> {
        self.shared.last_status()?["clusters"][0]["limits"]["applied_at"][0]
            .as_str()
            .map(str::to_string)
    }

    fn delete_data_directory(&mut self) -> String {
        let Some(pgdata) = self.compute_pgdata() else {
            return "no data directory to delete".into();
        };
        // What Postgres cannot run without goes first, so that the loss shows at once even if
        // the rest races with files Postgres is creating.
        let _ = std::fs::remove_file(pgdata.join("global/pg_control"));
        let _ = std::fs::remove_file(pgdata.join("PG_VERSION"));
        let started = Instant::now();
        let mut last = None;
        let mut vanished = false;
        for _ in 0..5 {
            match std::fs::remove_dir_all(&pgdata) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Gone from under the deletion: something else moved or removed it.
                    vanished = true;
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut text = match last {
            None => format!(
                "{} deleted in {} ms",
                pgdata.display(),
                started.elapsed().as_millis()
            ),
            Some(e) => format!("{} deleted in part ({e})", pgdata.display()),
        };
        // The docker runtime keeps the data in a slot and moves it home when its compute exits:
        // a compute that died while it was being deleted may have taken the remains home.
        let home = self.pgtide().pgdata();
        if home != pgdata && home.exists() {
            text.push_str(&format!(
                "; {} exists now{}",
                home.display(),
                if home.join("PG_VERSION").exists() {
                    ""
                } else {
                    " without PG_VERSION (the remains were moved home while being deleted)"
                }
            ));
        } else if vanished {
            text.push_str("; it vanished while being deleted");
        }
        text
    }

    fn data_directory(&mut self, occurrence: &mut Occurrence) {
        let events_before = self.shared.monitor.lock().unwrap().events.len();
        occurrence.measure_from = self.shared.now();
        occurrence.detail = self.delete_data_directory();
        let rebuilt = wait_until(Duration::from_secs(120), || {
            self.shared.monitor.lock().unwrap().events[events_before..]
                .iter()
                .any(|(_, kind, _)| kind == "rebuilt" || kind == "resume_failed")
        });
        let events: Vec<String> = self.shared.monitor.lock().unwrap().events[events_before..]
            .iter()
            .filter(|(_, k, _)| {
                [
                    "data_directory_lost",
                    "rebuilt",
                    "resume_failed",
                    "compute_exited",
                    "restarted",
                ]
                .contains(&k.as_str())
            })
            .map(|(_, k, m)| format!("{k}: {m}"))
            .collect();
        if !rebuilt {
            occurrence.notes.push("no rebuild within 120 s".into());
        }
        occurrence.notes.extend(events);
    }

    fn pause_resume(&mut self, occurrence: &mut Occurrence) {
        let paused_for = self.rng.seconds(1.0, 3.0);
        let by_connection = self.rng.below(2) == 0;
        // The loads step back: in session mode a pause is refused while clients are connected.
        let held_at = self.shared.now();
        self.shared.hold.store(true, Ordering::SeqCst);
        let stepped_back = wait_until(Duration::from_secs(PGBENCH_RUN_SECS + 25), || {
            self.shared.ledger_idle.load(Ordering::SeqCst)
                && self.shared.pgbench_idle.load(Ordering::SeqCst)
        });
        let mut refusals = 0;
        let mut answer = String::new();
        let paused = wait_until(Duration::from_secs(25), || {
            let out = self.pgtide().cli(&["pause", "main"]);
            answer = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            if !out.status.success() {
                refusals += 1;
                std::thread::sleep(Duration::from_millis(200));
                return false;
            }
            true
        });
        let in_state =
            paused && wait_until(Duration::from_secs(30), || self.shared.state() == "paused");
        let pause_took = self.shared.now() - held_at;
        std::thread::sleep(paused_for);
        let processes_left = match self.settings.runtime {
            Runtime::Process => self
                .pgtide()
                .postmaster_pid()
                .filter(|p| process_alive(*p))
                .is_some(),
            Runtime::Docker => {
                self.compute_container().is_some()
                    && docker_running(&self.compute_container().unwrap_or_default())
            }
        };
        let how = if by_connection {
            "the loads' next connection"
        } else {
            let out = self.pgtide().cli(&["resume", "main"]);
            if !out.status.success() {
                occurrence.notes.push(format!(
                    "pgtide resume failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            "pgtide resume"
        };
        occurrence.measure_from = self.shared.now();
        self.shared.hold.store(false, Ordering::SeqCst);
        occurrence.detail = format!(
            "loads stepped back{}; pause {} after {refusals} refusal(s) ({answer:?}), paused {:.1} s after the hold; \
             resumed by {how} after {:.1} s",
            if stepped_back { "" } else { " (NOT within the bound)" },
            if in_state { "done" } else { "NOT reached" },
            pause_took,
            paused_for.as_secs_f64()
        );
        if !in_state {
            occurrence.notes.push("the cluster did not pause".into());
        }
        if processes_left && in_state {
            occurrence
                .notes
                .push("a compute still ran while paused".into());
        }
    }

    fn scale(&mut self, occurrence: &mut Occurrence) {
        let high = self.rng.seconds(6.0, 10.0);
        let low = self.rng.seconds(6.0, 10.0);
        occurrence.measure_from = self.shared.now();
        let acu_at = |shared: &Shared| {
            shared
                .monitor
                .lock()
                .unwrap()
                .acu
                .last()
                .map(|a| a.1)
                .unwrap_or(0.0)
        };
        let start_acu = acu_at(&self.shared);
        self.shared.pgbench_clients.store(8, Ordering::SeqCst);
        let t_high = self.shared.now();
        std::thread::sleep(high);
        let t_low = self.shared.now();
        self.shared.pgbench_clients.store(1, Ordering::SeqCst);
        std::thread::sleep(low);
        let t_end = self.shared.now();
        self.shared.pgbench_clients.store(4, Ordering::SeqCst);
        let monitor = self.shared.monitor.lock().unwrap();
        let max_high = monitor
            .acu
            .iter()
            .filter(|(t, _)| *t >= t_high && *t < t_low)
            .map(|a| a.1)
            .fold(0.0, f64::max);
        let end_low = monitor.acu.last().map(|a| a.1).unwrap_or(0.0);
        let ups = monitor
            .events
            .iter()
            .filter(|(t, k, _)| *t >= t_high && *t < t_end && k == "scaled_up")
            .count();
        let downs = monitor
            .events
            .iter()
            .filter(|(t, k, _)| *t >= t_high && *t < t_end && k == "scaled_down")
            .count();
        occurrence.detail = format!(
            "ACU {start_acu} → 8 clients for {:.0} s (ACU up to {max_high}) → 1 client for {:.0} s (ACU {end_low} at the end); {ups} scale-up and {downs} scale-down events",
            high.as_secs_f64(),
            low.as_secs_f64()
        );
    }

    fn hostile(&mut self, occurrence: &mut Occurrence) {
        let port = self.pgtide().port;
        let seed = self.rng.next();
        let total = 250 + self.rng.below(100);
        occurrence.measure_from = self.shared.now();
        let tally = self.hostile_tally.clone();
        let runtime = self.hostile_runtime.as_ref().expect("the hostile runtime");
        let quick = runtime.block_on(async move {
            tokio::time::timeout(
                Duration::from_secs(60),
                hostile_burst(port, seed, total, tally),
            )
            .await
        });
        let pgtide_alive = self.pgtide_mut().running();
        occurrence.detail = match quick {
            Ok(summary) => {
                format!("{total} hostile connections: {summary}; pgtide alive: {pgtide_alive}")
            }
            Err(_) => format!("{total} hostile connections: the burst did not finish within 60 s"),
        };
        if !pgtide_alive {
            occurrence.notes.push("pgtide died".into());
        }
    }

    fn copies_up(&self) -> usize {
        self.shared
            .monitor
            .lock()
            .unwrap()
            .copies
            .values()
            .filter(|s| *s == "up")
            .count()
    }

    // -----------------------------------------------------------------------------------------
    // The end: checks and the report

    fn stop_loads(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(PGBENCH_RUN_SECS + 30);
        // The monitor stays; the loads end.
        let mut keep = Vec::new();
        for thread in self.threads.drain(..) {
            if thread.thread().name() == Some("soak-monitor") {
                keep.push(thread);
                continue;
            }
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                let pid = self.shared.pgbench_pid.load(Ordering::SeqCst);
                if pid > 0 {
                    send_signal(pid, Signal::SIGKILL);
                }
                self.shared
                    .note(format!("{:?} did not end in time", thread.thread().name()));
            }
        }
        self.threads = keep;
    }

    fn finish(&mut self) -> Report {
        let mut failures = Vec::new();
        for filler in std::mem::take(&mut self.fillers) {
            let _ = std::fs::remove_file(filler);
        }
        self.mend_all();
        self.shared.hold.store(false, Ordering::SeqCst);
        self.shared.note("stopping the loads");
        // The last fault's window ends here, not once pgbench's last run has ended.
        self.load_stopped = self.shared.now();
        self.stop_loads();
        let port = self.pgtide().port;
        let running = wait_until(Duration::from_secs(90), || self.shared.state() == "running")
            || psql_bounded(port, "SELECT 1", Duration::from_secs(60)).is_ok();
        if !running {
            failures.push(format!(
                "the cluster is not running at the end (state {})",
                self.shared.state()
            ));
        }
        failures.extend(self.hung.iter().map(|h| format!("hung: {h}")));
        // A stretch without commits as long as a hang is one, even when the fault's own wait
        // (a rebuild, a copy coming back) outlasted it before the recovery was looked at.
        {
            let commits: Vec<f64> = self
                .shared
                .ledger
                .lock()
                .unwrap()
                .acked
                .iter()
                .map(|a| a.1)
                .collect();
            for (o, (_, to)) in self.occurrences.iter().zip(self.windows()) {
                let (stretch, _) = longest_stretch(&commits, o.measure_from, to);
                let hung_already = o.recovered_in.is_none();
                if stretch > HANG_AFTER.as_secs_f64() && !hung_already {
                    failures.push(format!(
                        "hung: {} at {:.1} s: no commit for {stretch:.1} s",
                        o.fault.name(),
                        o.at
                    ));
                }
            }
        }

        // 1. Every acknowledged id is in the database.
        let (acked, in_doubt) = {
            let ledger = self.shared.ledger.lock().unwrap();
            (ledger.acked.clone(), ledger.in_doubt.clone())
        };
        let check = self.check_ledger(&acked, &in_doubt);
        match &check {
            Ok(found) => {
                if !found.missing.is_empty() {
                    failures.push(format!(
                        "{} acknowledged ledger ids are missing, e.g. {:?}",
                        found.missing.len(),
                        &found.missing[..found.missing.len().min(20)]
                    ));
                }
            }
            Err(e) => failures.push(format!("could not read the ledger: {e}")),
        }

        // 2. The copies agree with each other and with the compute's WAL.
        wait_until(Duration::from_secs(20), || {
            self.shared.last_status().is_some_and(|s| {
                s["clusters"][0]["storage"]["copy_states"]
                    .as_array()
                    .is_some_and(|c| c.iter().all(|c| c["state"] != "up" || c["lag_bytes"] == 0))
            })
        });
        let comparison = self.compare_copies();
        failures.extend(comparison.failures.iter().cloned());

        // 3. A rebuild from the copies alone still has every acknowledged id.
        let events_before = self.shared.monitor.lock().unwrap().events.len();
        let deleted = self.delete_data_directory();
        self.shared.note(format!("final rebuild check: {deleted}"));
        let rebuilt =
            wait_until(Duration::from_secs(180), || {
                self.shared.monitor.lock().unwrap().events[events_before..]
                    .iter()
                    .any(|(_, kind, _)| kind == "rebuilt")
            }) && wait_until(Duration::from_secs(60), || self.shared.state() == "running");
        let rebuild_line = if !rebuilt {
            failures.push("the final rebuild from the copies did not happen within 180 s".into());
            "the final rebuild did not happen".to_string()
        } else {
            match self.check_ledger(&acked, &[]) {
                Ok(found) if found.missing.is_empty() => {
                    format!(
                        "rebuilt from the copies; all {} acknowledged ids present",
                        acked.len()
                    )
                }
                Ok(found) => {
                    failures.push(format!(
                        "after a rebuild from the copies, {} acknowledged ids are missing, e.g. {:?}",
                        found.missing.len(),
                        &found.missing[..found.missing.len().min(20)]
                    ));
                    format!(
                        "{} acknowledged ids MISSING after the rebuild",
                        found.missing.len()
                    )
                }
                Err(e) => {
                    failures.push(format!("after the rebuild, could not read the ledger: {e}"));
                    format!("could not read the ledger after the rebuild: {e}")
                }
            }
        };
        let text = self.report(
            &acked,
            &in_doubt,
            &check,
            &comparison,
            &rebuild_line,
            &failures,
        );
        let _ = std::fs::write(self.pgtide().dir.path().join("report.txt"), &text);
        self.save_artifacts();
        Report { text, failures }
    }

    fn check_ledger(
        &self,
        acked: &[(i64, f64)],
        in_doubt: &[(i64, f64)],
    ) -> Result<LedgerCheck, String> {
        let port = self.pgtide().port;
        let mut text = Err(String::new());
        for _ in 0..3 {
            text = psql_bounded(port, "SELECT id FROM ledger", Duration::from_secs(120));
            if text.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        let text = text?;
        let present: HashSet<i64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        let missing: Vec<i64> = acked
            .iter()
            .map(|a| a.0)
            .filter(|id| !present.contains(id))
            .collect();
        let doubtful_committed = in_doubt.iter().filter(|d| present.contains(&d.0)).count();
        Ok(LedgerCheck {
            rows: present.len(),
            missing,
            doubtful_committed,
        })
    }

    fn compare_copies(&self) -> Comparison {
        let mut comparison = Comparison::default();
        let Some(status) = self.shared.last_status() else {
            comparison
                .failures
                .push("no status to find the copies that are up".into());
            return comparison;
        };
        let up: Vec<PathBuf> = status["clusters"][0]["storage"]["copy_states"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["state"] == "up")
            .filter_map(|c| c["dir"].as_str().map(PathBuf::from))
            // `/status` names the copy (`…/a1`) or the cluster's directory in it (`…/a1/main`).
            .map(|dir| {
                if dir.join("wal").is_dir() {
                    dir
                } else {
                    dir.join("main")
                }
            })
            .collect();
        comparison.copies_up = up.len();
        let compute_wal = self.compute_pgdata().map(|p| p.join("pg_wal"));
        compare_wal(&up, compute_wal.as_deref(), &mut comparison);
        comparison
    }

    fn save_artifacts(&self) {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("soak-{}", self.settings.runtime.name()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        for name in ["report.txt", "soak.log", "ledger.acked", "pgtide.log"] {
            let _ = std::fs::copy(self.pgtide().dir.path().join(name), dir.join(name));
        }
        self.shared.note(format!(
            "report, timeline, ledger and pgtide's log kept in {}",
            dir.display()
        ));
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        acked: &[(i64, f64)],
        in_doubt: &[(i64, f64)],
        check: &Result<LedgerCheck, String>,
        comparison: &Comparison,
        rebuild_line: &str,
        failures: &[String],
    ) -> String {
        let mut out = String::new();
        let s = &self.settings;
        let ledger = self.shared.ledger.lock().unwrap();
        let runs = self.shared.pgbench.lock().unwrap();
        let bench_errors = self.shared.pgbench_errors.lock().unwrap();
        let monitor = self.shared.monitor.lock().unwrap();
        let commit_times: Vec<f64> = acked.iter().map(|a| a.1).collect();
        let _ = writeln!(
            out,
            "\n==== pgtide soak report: {} runtime ====",
            s.runtime.name()
        );
        let _ = writeln!(
            out,
            "seed {}  planned {} min  load ran {:.0} s  faults {}  small copy on a {} tmpfs",
            s.seed,
            s.minutes,
            self.load_stopped - self.load_started,
            self.occurrences.len(),
            if self.small_mount.is_some() {
                format!("{} MiB", s.tmpfs_mib)
            } else {
                "NO (skipped)".into()
            }
        );
        let _ = writeln!(
            out,
            "result: {}",
            if failures.is_empty() {
                "PASS".to_string()
            } else {
                format!("FAIL ({} problems)", failures.len())
            }
        );
        for f in failures {
            let _ = writeln!(out, "  FAIL: {f}");
        }
        // The ledger.
        let _ = writeln!(
            out,
            "\nledger: {} commits acknowledged, {} in doubt (client error at COMMIT)",
            acked.len(),
            in_doubt.len()
        );
        match check {
            Ok(c) => {
                let _ = writeln!(
                    out,
                    "  in the database: {} rows; acknowledged but missing: {} (must be 0); in doubt and committed: {} of {}",
                    c.rows,
                    c.missing.len(),
                    c.doubtful_committed,
                    in_doubt.len()
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  could not read: {e}");
            }
        }
        let _ = writeln!(out, "  {rebuild_line}");
        // The copies.
        let _ = writeln!(
            out,
            "copies: {} up at the end; {} segments held by all of them compared over {:.1} MiB of WAL they all hold: {} differing ranges; checksum records failing: {}; compared with the compute's pg_wal over {:.1} MiB: {} differing ranges",
            comparison.copies_up,
            comparison.segments_compared,
            comparison.bytes_compared as f64 / 1048576.0,
            comparison.mismatches,
            comparison.bad_records,
            comparison.compute_bytes as f64 / 1048576.0,
            comparison.compute_mismatches
        );
        for line in &comparison.lines {
            let _ = writeln!(out, "  {line}");
        }
        // pgbench.
        let processed: u64 = runs.iter().map(|r| r.processed).sum();
        let failed: u64 = runs.iter().map(|r| r.failed).sum();
        let aborted: u64 = runs.iter().map(|r| r.aborted_clients).sum();
        let killed = runs.iter().filter(|r| r.killed).count();
        let _ = writeln!(
            out,
            "pgbench: {} runs, {} transactions, {:.0} tps over the load, {} failed transactions, {} aborted clients, {} error lines, {} runs killed for hanging ({})",
            runs.len(),
            processed,
            processed as f64 / (self.load_stopped - self.load_started).max(1.0),
            failed,
            aborted,
            bench_errors.len(),
            killed,
            self.pgbench_init
        );
        // Per fault kind.
        let _ = writeln!(out, "\nper fault (stretch = longest time without a successful ledger commit, from the fault on; aims are reported, not asserted):");
        let _ = writeln!(
            out,
            "{:<17}{:>3}  {:>9}  {:<7}  {:<30}  {:<34}  pgbench failed/aborted/errors",
            "fault", "n", "longest s", "aim", "each s", "client errors (SQLSTATE: n)",
        );
        let windows = self.windows();
        for fault in FAULTS {
            let occurrences: Vec<(usize, &Occurrence)> = self
                .occurrences
                .iter()
                .enumerate()
                .filter(|(_, o)| o.fault == fault)
                .collect();
            if occurrences.is_empty() {
                let _ = writeln!(out, "{:<17}{:>3}  (not drawn in this run)", fault.name(), 0);
                continue;
            }
            let mut each = Vec::new();
            let mut codes: BTreeMap<String, usize> = BTreeMap::new();
            let (mut b_failed, mut b_aborted, mut b_errors) = (0u64, 0u64, 0usize);
            for (i, o) in &occurrences {
                let (from, to) = windows[*i];
                let (stretch, open) = longest_stretch(&commit_times, o.measure_from, to);
                each.push(format!("{stretch:.2}{}", if open { "+" } else { "" }));
                for e in ledger.errors.iter().filter(|e| e.at >= from && e.at < to) {
                    *codes.entry(e.code.clone()).or_default() += 1;
                }
                for r in runs.iter().filter(|r| r.ended >= from && r.ended < to) {
                    b_failed += r.failed;
                    b_aborted += r.aborted_clients;
                }
                b_errors += bench_errors
                    .iter()
                    .filter(|e| e.0 >= from && e.0 < to)
                    .count();
            }
            let longest = each
                .iter()
                .map(|e| e.trim_end_matches('+').parse::<f64>().unwrap_or(0.0))
                .fold(0.0, f64::max);
            let aim = match fault.aim() {
                Some(aim) => format!("≤{aim:.0}{}", if longest <= aim { " ok" } else { " MISS" }),
                None => "-".into(),
            };
            let codes = if codes.is_empty() {
                "none".to_string()
            } else {
                codes
                    .iter()
                    .map(|(c, n)| format!("{c}:{n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let _ = writeln!(
                out,
                "{:<17}{:>3}  {:>9.2}  {:<7}  {:<30}  {:<34}  {}/{}/{}",
                fault.name(),
                occurrences.len(),
                longest,
                aim,
                each.join(" "),
                codes,
                b_failed,
                b_aborted,
                b_errors
            );
        }
        // Outside any fault window (before the first one).
        let first = self.occurrences.first().map(|o| o.at).unwrap_or(f64::MAX);
        let quiet_errors = ledger.errors.iter().filter(|e| e.at < first).count();
        let _ = writeln!(out, "before the first fault: {quiet_errors} client errors");

        // Messages clients saw, per SQLSTATE (one example each).
        let _ = writeln!(
            out,
            "\nclient errors seen by the ledger (SQLSTATE: count, an example):"
        );
        let mut by_code: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
        for e in &ledger.errors {
            let entry = by_code.entry(&e.code).or_insert((0, &e.message));
            entry.0 += 1;
        }
        for (code, (n, example)) in by_code {
            let _ = writeln!(out, "  {code}: {n}  e.g. {:?}", truncate(example, 140));
        }
        let _ = writeln!(out, "pgbench error lines (by kind, digits folded):");
        let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
        for (_, line) in bench_errors.iter() {
            *by_kind
                .entry(fold_digits(&truncate(line, 110)))
                .or_default() += 1;
        }
        let mut by_kind: Vec<(String, usize)> = by_kind.into_iter().collect();
        by_kind.sort_by_key(|k| std::cmp::Reverse(k.1));
        for (kind, n) in by_kind.iter().take(12) {
            let _ = writeln!(out, "  {n:>5}  {kind}");
        }
        let hostile = self.hostile_tally.lock().unwrap();
        if !hostile.is_empty() {
            let _ = writeln!(out, "hostile connections, by what the server did:");
            for (what, n) in hostile.iter() {
                let _ = writeln!(out, "  {n:>5}  {what}");
            }
        }

        // Every fault, in order.
        let _ = writeln!(
            out,
            "\nthe faults in order (at s: what; recovered in s; notes):"
        );
        for (i, o) in self.occurrences.iter().enumerate() {
            let (_, to) = windows[i];
            let (stretch, open) = longest_stretch(&commit_times, o.measure_from, to);
            let _ = writeln!(
                out,
                "  {:7.1} {:<17} stretch {:.2}{} s; {}; recovered in {}{}",
                o.at,
                o.fault.name(),
                stretch,
                if open { "+" } else { "" },
                o.detail,
                o.recovered_in
                    .map(|r| format!("{r:.2} s"))
                    .unwrap_or_else(|| "never (hung)".into()),
                if o.notes.is_empty() {
                    String::new()
                } else {
                    format!("; {}", o.notes.join("; "))
                }
            );
        }
        // The cluster's events, by kind, and the ones that are not about sizing, in order.
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, k, _) in &monitor.events {
            *kinds.entry(k.as_str()).or_default() += 1;
        }
        let _ = writeln!(
            out,
            "cluster events seen: {}",
            kinds
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let sizing = [
            "scaled_up",
            "scaled_down",
            "at_max",
            "down_refused",
            "resize_failed",
        ];
        let told: Vec<&(f64, String, String)> = monitor
            .events
            .iter()
            .filter(|(_, k, _)| !sizing.contains(&k.as_str()))
            .collect();
        let _ = writeln!(
            out,
            "the events other than sizing ({}; the first 40):",
            told.len()
        );
        for (t, k, m) in told.iter().take(40) {
            let _ = writeln!(out, "  {t:7.1} {k}: {}", truncate(m, 150));
        }
        out
    }

    /// Each fault's window: from its start to the next fault's start (the last one to the end
    /// of the loads).
    fn windows(&self) -> Vec<(f64, f64)> {
        let starts: Vec<f64> = self.occurrences.iter().map(|o| o.at).collect();
        (0..starts.len())
            .map(|i| {
                (
                    starts[i],
                    starts.get(i + 1).copied().unwrap_or(self.load_stopped),
                )
            })
            .collect()
    }
}

impl Drop for Soak {
    /// Stops everything the soak started, whatever happened: the loads, pgbench, pgtide (and
    /// with it Postgres; docker containers it left), the tmpfs.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.hold.store(false, Ordering::SeqCst);
        let pid = self.shared.pgbench_pid.load(Ordering::SeqCst);
        if pid > 0 {
            send_signal(pid, Signal::SIGKILL);
        }
        for filler in std::mem::take(&mut self.fillers) {
            let _ = std::fs::remove_file(filler);
        }
        if self.pgtide.is_some() {
            self.mend_all();
        }
        self.shared.monitor_stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        for thread in self.threads.drain(..) {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
        if let Some(runtime) = self.hostile_runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
        if let Some(mut pgtide) = self.pgtide.take() {
            if std::thread::panicking() {
                let log = pgtide.log();
                let tail: Vec<&str> = log.lines().rev().take(80).collect();
                eprintln!("---- the last lines of pgtide's log ----");
                for line in tail.iter().rev() {
                    eprintln!("{}", strip_ansi(line));
                }
            }
            // The test directory outlives pgtide's stop, so that the tmpfs under it… is not under
            // it (it has its own directory) and the artifacts can be kept.
            let dir = std::mem::replace(&mut pgtide.dir, test_dir());
            let data_dir = dir.path().join("data");
            drop(pgtide); // SIGINT, up to 30 s, then SIGKILL
            remove_containers_of(&data_dir);
            if self.settings.keep {
                println!("kept the soak's directory {}", dir.keep().display());
            } else {
                drop(dir);
            }
        }
        self.small_disk.release();
        self.shared.monitor_stop.store(true, Ordering::SeqCst);
        self.watchdog_done.store(true, Ordering::SeqCst);
    }
}

/// The small copy's tmpfs and the directory it is mounted in.
struct SmallDisk {
    root: Option<tempfile::TempDir>,
    mount: Option<PathBuf>,
}

impl SmallDisk {
    fn release(&mut self) {
        if let Some(mount) = self.mount.take() {
            unmount(&mount);
        }
        drop(self.root.take());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        self.release();
    }
}

#[derive(Default)]
struct LedgerCheck {
    rows: usize,
    missing: Vec<i64>,
    doubtful_committed: usize,
}

#[derive(Default)]
struct Comparison {
    copies_up: usize,
    segments_compared: usize,
    bytes_compared: u64,
    mismatches: usize,
    bad_records: usize,
    compute_bytes: u64,
    compute_mismatches: usize,
    lines: Vec<String>,
    failures: Vec<String>,
}

/// pgtide's log without its colours.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn is_small_copy(dir: &str, small: Option<&Path>) -> bool {
    small.is_some_and(|s| Path::new(dir).starts_with(s))
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

fn fold_digits(text: &str) -> String {
    let mut out = String::new();
    let mut last_digit = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('#');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
    }
    out
}

/// The longest time without a commit in `[from, to)`: the gaps between consecutive commit
/// times, the first one counted from `from`. Also whether the stretch is still open at `to`
/// (nothing committed after the fault at all).
fn longest_stretch(commits: &[f64], from: f64, to: f64) -> (f64, bool) {
    let first = commits.partition_point(|&t| t <= from);
    let mut longest = 0.0f64;
    let mut previous = from;
    for &t in &commits[first..] {
        if t >= to {
            break;
        }
        longest = longest.max(t - previous);
        previous = t;
    }
    // Nothing committed after `previous` within the window: the stretch runs at least to its end.
    let tail = to - previous;
    if tail > longest {
        (tail, true)
    } else {
        (longest, false)
    }
}

// ---------------------------------------------------------------------------------------------
// The loads

async fn ledger_writer(shared: Arc<Shared>, url: String, file: PathBuf) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    let mut id: i64 = 1;
    let mut client: Option<(tokio_postgres::Client, tokio_postgres::Statement)> = None;
    let record = |code: String, message: String| {
        shared.ledger.lock().unwrap().errors.push(ClientError {
            at: shared.now(),
            code,
            message,
        });
    };
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.hold.load(Ordering::SeqCst) {
            client = None;
            shared.ledger_idle.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        shared.ledger_idle.store(false, Ordering::SeqCst);
        if client.is_none() {
            let connected = tokio::time::timeout(Duration::from_secs(60), async {
                let (c, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                let statement = c.prepare("INSERT INTO ledger VALUES ($1)").await?;
                Ok::<_, tokio_postgres::Error>((c, statement))
            })
            .await;
            match connected {
                Ok(Ok(c)) => client = Some(c),
                Ok(Err(e)) => {
                    let (code, message) = describe(&e);
                    record(format!("connect:{code}"), message);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(_) => {
                    record("connect:timeout".into(), "no connection within 60 s".into());
                    continue;
                }
            }
        }
        let (c, statement) = client.as_ref().expect("connected");
        let this = id;
        id += 1;
        let result =
            tokio::time::timeout(Duration::from_secs(60), c.execute(statement, &[&this])).await;
        match result {
            Ok(Ok(_)) => {
                let now = shared.now();
                shared.ledger.lock().unwrap().acked.push((this, now));
                let _ = writeln!(file, "{this}");
            }
            Ok(Err(e)) => {
                let (code, message) = describe(&e);
                let now = shared.now();
                {
                    let mut ledger = shared.ledger.lock().unwrap();
                    ledger.in_doubt.push((this, now));
                    ledger.errors.push(ClientError {
                        at: now,
                        code,
                        message,
                    });
                }
                // Whatever it was, the next id goes over a new connection.
                client = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                let now = shared.now();
                let mut ledger = shared.ledger.lock().unwrap();
                ledger.in_doubt.push((this, now));
                ledger.errors.push(ClientError {
                    at: now,
                    code: "timeout".into(),
                    message: "the INSERT did not return within 60 s".into(),
                });
                client = None;
            }
        }
    }
    shared.ledger_idle.store(true, Ordering::SeqCst);
}

/// A client error's SQLSTATE (or the kind of failure when the server sent none) and message.
fn describe(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(db) => (
            db.code().code().to_string(),
            format!("{}: {}", db.severity(), db.message()),
        ),
        None => {
            let text = e.to_string();
            let source = std::error::Error::source(e)
                .map(|s| s.to_string())
                .unwrap_or_default();
            let kind = if e.is_closed() || text.contains("closed") {
                "closed"
            } else if source.contains("refused") {
                "refused"
            } else if source.contains("reset") {
                "reset"
            } else {
                "io"
            };
            (
                kind.to_string(),
                format!("{text} {source}").trim().to_string(),
            )
        }
    }
}

fn pgbench_loop(shared: Arc<Shared>, port: u16) {
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.hold.load(Ordering::SeqCst) {
            shared.pgbench_idle.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        shared.pgbench_idle.store(false, Ordering::SeqCst);
        let clients = shared.pgbench_clients.load(Ordering::SeqCst);
        let jobs = clients.min(2);
        let started = Instant::now();
        let child = Command::new("pgbench")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-n",
            ])
            .args(["-c", &clients.to_string(), "-j", &jobs.to_string()])
            .args(["-T", &PGBENCH_RUN_SECS.to_string()])
            .arg("postgres")
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "30")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                shared.note(format!("pgbench did not start: {e}"));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        shared
            .pgbench_pid
            .store(child.id() as i32, Ordering::SeqCst);
        let mut stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let lines = shared.clone();
        let reader = std::thread::spawn(move || {
            let mut aborted = 0u64;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("aborted in command") || line.contains("aborted while") {
                    aborted += 1;
                }
                if line.trim().is_empty() || line.contains("Run was aborted") {
                    continue;
                }
                lines
                    .pgbench_errors
                    .lock()
                    .unwrap()
                    .push((lines.now(), line));
            }
            aborted
        });
        let out_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        // A run lasts PGBENCH_RUN_SECS; one that outlives it by far waits on a commit that does
        // not return.
        let limit = Duration::from_secs(PGBENCH_RUN_SECS + 25);
        let mut killed = false;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) => {}
                Err(_) => break,
            }
            if started.elapsed() > limit
                || (shared.stop.load(Ordering::SeqCst)
                    && started.elapsed() > Duration::from_secs(PGBENCH_RUN_SECS + 5))
            {
                let _ = child.kill();
                let _ = child.wait();
                killed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        shared.pgbench_pid.store(0, Ordering::SeqCst);
        let aborted_clients = reader.join().unwrap_or(0);
        let text = out_reader.join().unwrap_or_default();
        let number = |prefix: &str| -> u64 {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let run = PgbenchRun {
            ended: shared.now(),
            processed: number("number of transactions actually processed:"),
            failed: number("number of failed transactions:"),
            aborted_clients,
            killed,
        };
        if killed {
            shared.note(format!(
                "pgbench (-c {clients}) killed after {:?}: it outlived its run",
                started.elapsed()
            ));
        }
        shared.pgbench.lock().unwrap().push(run);
        if started.elapsed() < Duration::from_secs(1) {
            // Could not connect, most likely: not a busy loop meanwhile.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    shared.pgbench_idle.store(true, Ordering::SeqCst);
}

fn monitor_loop(shared: Arc<Shared>, admin_port: u16) {
    let mut unreachable_since: Option<f64> = None;
    while !shared.monitor_stop.load(Ordering::SeqCst) {
        let Some(status) = try_status(admin_port) else {
            if unreachable_since.is_none() {
                unreachable_since = Some(shared.now());
                let mut monitor = shared.monitor.lock().unwrap();
                if monitor.state != "unreachable" {
                    monitor.state = "unreachable".into();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        unreachable_since = None;
        let cluster = &status["clusters"][0];
        let now = shared.now();
        let mut notes = Vec::new();
        {
            let mut monitor = shared.monitor.lock().unwrap();
            let state = cluster["state"].as_str().unwrap_or("?").to_string();
            if state != monitor.state {
                notes.push(format!("state {} → {state}", monitor.state));
                monitor.state = state;
            }
            let acu = cluster["acu"].as_f64().unwrap_or(0.0);
            if monitor.acu.last().is_none_or(|a| a.1 != acu) {
                monitor.acu.push((now, acu));
            }
            for copy in cluster["storage"]["copy_states"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let dir = copy["dir"].as_str().unwrap_or("?").to_string();
                let state = match copy["state"].as_str() {
                    Some("up") => "up".to_string(),
                    other => format!(
                        "{}: {}",
                        other.unwrap_or("?"),
                        copy["reason"].as_str().unwrap_or("")
                    ),
                };
                if monitor.copies.get(&dir) != Some(&state) {
                    notes.push(format!("copy {dir} {state}"));
                    monitor.copies.insert(dir, state);
                }
            }
            for event in cluster["events"].as_array().into_iter().flatten() {
                let key = format!("{}|{}|{}", event["at"], event["kind"], event["message"]);
                if monitor.events_seen.insert(key) {
                    let kind = event["kind"].as_str().unwrap_or("?").to_string();
                    let message = event["message"].as_str().unwrap_or("").to_string();
                    monitor.events.push((now, kind, message));
                }
            }
            monitor.last = Some(status.clone());
        }
        for note in notes {
            shared.note(note);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile connections

/// A few hundred connections that are not clients: garbage bytes, absurd lengths, wrong
/// passwords, and half-open sockets (these stay open in the background, to see whether the
/// server closes them itself). Returns a summary of the quick ones; everything goes to `tally`.
async fn hostile_burst(
    port: u16,
    seed: u64,
    total: usize,
    tally: Arc<Mutex<BTreeMap<String, usize>>>,
) -> String {
    let mut rng = Rng(seed);
    let gate = Arc::new(tokio::sync::Semaphore::new(24));
    let mut quick = tokio::task::JoinSet::new();
    let mine: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let count = |tally: &Arc<Mutex<BTreeMap<String, usize>>>, what: String| {
        *tally.lock().unwrap().entry(what).or_default() += 1;
    };
    for n in 0..total {
        let kind = rng.below(100);
        let bytes_seed = rng.next();
        let tally = tally.clone();
        let gate = gate.clone();
        let mine = mine.clone();
        if kind < 15 {
            // Half-open: connect, then nothing, or half a startup message; kept in the background.
            tokio::spawn(async move {
                let what = half_open(port, bytes_seed).await;
                count(&tally, what);
            });
            continue;
        }
        quick.spawn(async move {
            let _permit = gate.acquire().await;
            let what = if kind < 45 {
                garbage(port, bytes_seed).await
            } else if kind < 70 {
                absurd_length(port, bytes_seed).await
            } else {
                wrong_password(port, n).await
            };
            // "garbage: error 08P01 then closed" → "error 08P01 then closed", for the summary.
            let outcome = what.rsplit(": ").next().unwrap_or("").to_string();
            count(&mine, outcome);
            count(&tally, what);
        });
    }
    while quick.join_next().await.is_some() {}
    let mine = mine.lock().unwrap();
    let outcomes: Vec<String> = mine.iter().map(|(what, n)| format!("{n} {what}")).collect();
    format!(
        "the quick ones: {} (half-open ones are left open in the background)",
        outcomes.join(", ")
    )
}

async fn read_answer(stream: &mut tokio::net::TcpStream, wait: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(wait, stream.read(&mut buf)).await {
        Ok(Ok(0)) => "closed".into(),
        Ok(Ok(n)) => match buf[0] {
            b'E' => {
                // ErrorResponse: find the SQLSTATE field ('C').
                let body = &buf[5.min(n)..n];
                let code = body
                    .split(|b| *b == 0)
                    .find(|f| f.first() == Some(&b'C'))
                    .map(|f| String::from_utf8_lossy(&f[1..]).to_string())
                    .unwrap_or_else(|| "?".into());
                format!("error {code} then closed")
            }
            b'N' => "refused SSL".into(),
            b'R' => "asked to authenticate".into(),
            other => format!("answered {:?}", other as char),
        },
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => "closed (reset)".into(),
        Ok(Err(e)) => format!("error {}", e.kind()),
        Err(_) => "left open".into(),
    }
}

async fn garbage(port: u16, seed: u64) -> String {
    use tokio::io::AsyncWriteExt;
    let mut rng = Rng(seed);
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return "garbage: connect failed".into();
    };
    let len = 1 + rng.below(2048);
    let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    let _ = stream.write_all(&bytes).await;
    format!(
        "garbage: {}",
        read_answer(&mut stream, Duration::from_secs(3)).await
    )
}

async fn absurd_length(port: u16, seed: u64) -> String {
    use tokio::io::AsyncWriteExt;
    let mut rng = Rng(seed);
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return "absurd length: connect failed".into();
    };
    let variant = rng.below(6);
    let mut message = Vec::new();
    let name = match variant {
        0 => {
            // A startup message that says it is 2 GiB long.
            message.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
            message.extend_from_slice(&196608u32.to_be_bytes());
            message.extend_from_slice(b"user\0postgres\0");
            "2 GiB startup"
        }
        1 => {
            message.extend_from_slice(&4u32.to_be_bytes());
            "length 4"
        }
        2 => {
            message.extend_from_slice(&0xffff_ffffu32.to_be_bytes());
            message.extend_from_slice(&[0; 4]);
            "length -1"
        }
        3 => {
            message.extend_from_slice(&8u32.to_be_bytes());
            message.extend_from_slice(&0xdead_beefu32.to_be_bytes());
            "unknown protocol"
        }
        4 => {
            // SSLRequest, then garbage where the TLS handshake or a startup should be.
            message.extend_from_slice(&8u32.to_be_bytes());
            message.extend_from_slice(&80877103u32.to_be_bytes());
            message.extend((0..300).map(|_| rng.next() as u8));
            "SSLRequest then garbage"
        }
        _ => {
            // A startup with a million-byte parameter, announced and not all sent.
            message.extend_from_slice(&(1_000_008u32).to_be_bytes());
            message.extend_from_slice(&196608u32.to_be_bytes());
            message.extend_from_slice(b"user\0");
            message.extend(std::iter::repeat_n(b'x', 60_000));
            "1 MB parameter, cut short"
        }
    };
    let _ = stream.write_all(&message).await;
    format!(
        "absurd length ({name}): {}",
        read_answer(&mut stream, Duration::from_secs(3)).await
    )
}

async fn wrong_password(port: u16, n: usize) -> String {
    let user = if n.is_multiple_of(5) {
        "nosuchuser"
    } else {
        "postgres"
    };
    let url = format!("postgres://{user}:wrong-{n}@127.0.0.1:{port}/postgres?connect_timeout=10");
    match tokio::time::timeout(
        Duration::from_secs(20),
        tokio_postgres::connect(&url, tokio_postgres::NoTls),
    )
    .await
    {
        Ok(Ok(_)) => "wrong password: ACCEPTED".into(),
        Ok(Err(e)) => match e.code() {
            Some(code) => format!("wrong password ({user}): error {}", code.code()),
            None => format!("wrong password ({user}): {}", truncate(&e.to_string(), 60)),
        },
        Err(_) => "wrong password: no answer in 20 s".into(),
    }
}

async fn half_open(port: u16, seed: u64) -> String {
    use tokio::io::AsyncWriteExt;
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return "half-open: connect failed".into();
    };
    let partial = seed.is_multiple_of(2);
    if partial {
        let mut message = Vec::new();
        message.extend_from_slice(&40u32.to_be_bytes());
        message.extend_from_slice(&196608u32.to_be_bytes());
        message.extend_from_slice(b"user\0po");
        let _ = stream.write_all(&message).await;
    }
    let opened = Instant::now();
    let answer = read_answer(&mut stream, Duration::from_secs(25)).await;
    let took = opened.elapsed().as_secs();
    let what = if partial {
        "half a startup"
    } else {
        "nothing sent"
    };
    if answer == "left open" {
        format!("half-open ({what}): still open after 25 s")
    } else {
        // Rounded to 5 s, so that the tally groups them.
        format!(
            "half-open ({what}): {answer} after ~{} s",
            (took + 2) / 5 * 5
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The copies' WAL, compared

/// One checksum record of a segment file (see src/storage/segment.rs: after the segment's
/// 16 MiB, 16-byte records: offset, length, CRC-32 of the bytes, CRC-32 of those 12 bytes; the
/// first slot that fails its own check ends them). The records differ between copies (each one
/// groups its writes its own way), so files are never compared whole: only the WAL bytes that
/// every copy's valid records cover.
struct Record {
    offset: u64,
    len: u64,
    crc: u32,
}

const SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

fn records_of(file: &std::fs::File) -> Vec<Record> {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len <= SEGMENT_SIZE {
        return Vec::new();
    }
    let mut bytes = vec![0u8; (len - SEGMENT_SIZE) as usize];
    if file.read_exact_at(&mut bytes, SEGMENT_SIZE).is_err() {
        return Vec::new();
    }
    let word = |s: &[u8], i: usize| u32::from_le_bytes(s[i..i + 4].try_into().unwrap());
    bytes
        .chunks_exact(16)
        .map_while(|slot| {
            (crc32fast::hash(&slot[..12]) == word(slot, 12)).then(|| Record {
                offset: word(slot, 0) as u64,
                len: word(slot, 4) as u64,
                crc: word(slot, 8),
            })
        })
        .collect()
}

/// Merged, sorted intervals.
fn merge(mut intervals: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    intervals.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, b) in intervals {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let low = a[i].0.max(b[j].0);
        let high = a[i].1.min(b[j].1);
        if low < high {
            out.push((low, high));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

fn compare_wal(copies: &[PathBuf], compute_wal: Option<&Path>, comparison: &mut Comparison) {
    if copies.len() < 2 {
        comparison.lines.push(format!(
            "only {} copies up: nothing to compare",
            copies.len()
        ));
        return;
    }
    let names = |dir: &Path| -> HashSet<String> {
        std::fs::read_dir(dir.join("wal"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect()
    };
    let all: Vec<HashSet<String>> = copies.iter().map(|c| names(c)).collect();
    let mut common: Vec<String> = all[0]
        .iter()
        .filter(|n| all.iter().all(|s| s.contains(*n)))
        .cloned()
        .collect();
    common.sort();
    let union: HashSet<&String> = all.iter().flatten().collect();
    if union.len() != common.len() {
        comparison.lines.push(format!(
            "{} segment files are held by some up copies and not others (pruned while a copy was down, or not yet written); per copy: {}",
            union.len() - common.len(),
            copies
                .iter()
                .zip(&all)
                .map(|(c, s)| format!("{}={}", short(c), s.len()))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    for name in &common {
        let mut files = Vec::new();
        let mut covered: Option<Vec<(u64, u64)>> = None;
        for copy in copies {
            let Ok(file) = std::fs::File::open(copy.join("wal").join(name)) else {
                continue;
            };
            let mut valid = Vec::new();
            for record in records_of(&file) {
                if record.offset + record.len > SEGMENT_SIZE {
                    comparison.bad_records += 1;
                    continue;
                }
                let mut bytes = vec![0u8; record.len as usize];
                if file.read_exact_at(&mut bytes, record.offset).is_ok()
                    && crc32fast::hash(&bytes) == record.crc
                {
                    valid.push((record.offset, record.offset + record.len));
                } else {
                    comparison.bad_records += 1;
                    if comparison.bad_records <= 5 {
                        comparison.lines.push(format!(
                            "{}: {name} record at {} (+{}) fails its checksum",
                            short(copy),
                            record.offset,
                            record.len
                        ));
                    }
                }
            }
            let valid = merge(valid);
            covered = Some(match covered {
                None => valid,
                Some(c) => intersect(&c, &valid),
            });
            files.push((copy.clone(), file));
        }
        let covered = covered.unwrap_or_default();
        if covered.is_empty() || files.len() != copies.len() {
            continue;
        }
        comparison.segments_compared += 1;
        let compute = compute_wal.and_then(|w| std::fs::File::open(w.join(name)).ok());
        for &(low, high) in &covered {
            let len = (high - low) as usize;
            let read = |file: &std::fs::File| {
                let mut bytes = vec![0u8; len];
                file.read_exact_at(&mut bytes, low).ok().map(|_| bytes)
            };
            let first = read(&files[0].1);
            comparison.bytes_compared += len as u64;
            for (copy, file) in &files[1..] {
                if read(file) != first {
                    comparison.mismatches += 1;
                    let line = format!(
                        "{name} [{low}, {high}): {} and {} differ",
                        short(&files[0].0),
                        short(copy)
                    );
                    comparison.lines.push(line.clone());
                    comparison
                        .failures
                        .push(format!("the copies disagree: {line}"));
                }
            }
            if let (Some(compute), Some(first)) = (&compute, &first) {
                let mut bytes = vec![0u8; len];
                if compute.read_exact_at(&mut bytes, low).is_ok() {
                    comparison.compute_bytes += len as u64;
                    if &bytes != first {
                        comparison.compute_mismatches += 1;
                        let line = format!(
                            "{name} [{low}, {high}): the copies differ from the compute's pg_wal"
                        );
                        comparison.lines.push(line.clone());
                        comparison.failures.push(line);
                    }
                }
            }
        }
    }
}

fn short(copy: &Path) -> String {
    // `<…>/copies/a1/main` or `<tmpfs>/c2/main`: the zone.
    let copy = if copy.file_name().is_some_and(|n| n == "main") {
        copy.parent().unwrap_or(copy)
    } else {
        copy
    };
    copy.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| copy.display().to_string())
}

// ---------------------------------------------------------------------------------------------
// Docker and the machine

fn docker_running(name: &str) -> bool {
    Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", name])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
}

/// Removes the containers (running or not) whose slot lies under `data_dir`: what a pgtide that
/// was killed, or did not stop in time, left behind.
fn remove_containers_of(data_dir: &Path) {
    let Ok(out) = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=pgtide.slot"])
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        return;
    }
    let Ok(out) = Command::new("docker").arg("inspect").args(&ids).output() else {
        return;
    };
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let data_dir = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let data_dir = data_dir.display().to_string();
    for container in all {
        let ours = container["HostConfig"]["Binds"][0]
            .as_str()
            .is_some_and(|b| b.starts_with(&data_dir));
        if let (true, Some(id)) = (ours, container["Id"].as_str()) {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

fn unmount(mount: &Path) {
    for _ in 0..10 {
        match Command::new("umount").arg(mount).output() {
            Ok(out) if out.status.success() => return,
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
    // Something still holds it: detach it, it goes once released.
    let _ = Command::new("umount").arg("-l").arg(mount).output();
}
