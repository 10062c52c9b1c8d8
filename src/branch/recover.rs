//! Postgres replays a branch's laid-out data directory to its target and promotes, run by
//! pgtide itself beside the cluster (as the branch's own OS user, on its private socket, no
//! TCP), then stopped cleanly: the directory the cluster then starts on is a plain,
//! checkpointed Postgres on a new timeline, and the usual start (its fresh copies, its first
//! base backup) applies unchanged.
//!
//! Recovery settings go on the command line, never into a file the branch keeps:
//! `recovery.signal` (written by [`super::prepare`]) asks for archive recovery,
//! `restore_command = 'false'` makes Postgres read `pg_wal` only, `recovery_target_lsn` or
//! `recovery_target_time` with `recovery_target_action = 'promote'` (and Postgres's default
//! `recovery_target_inclusive`) says where to stop. A target after the last transaction in the
//! WAL ("recovery ended before configured recovery target was reached") means the state at the
//! target is the state at the end of that WAL: the replay goes on without a target.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::target::format_for_postgres;
use super::window::Recovery;
use super::BranchError;
use crate::runtime::host::{Host, Owner};
use crate::runtime::{ComputeEndpoint, COMPUTE_PORT};

/// How long a replay may take before the branch is called failed.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the replaying Postgres is asked whether it has promoted.
const POLL: Duration = Duration::from_millis(20);
/// How long a clean stop may take before Postgres is stopped immediately.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Postgres's words when the WAL ends before a recovery target.
const TARGET_NOT_REACHED: &str = "recovery ended before configured recovery target was reached";

/// What a replay did.
#[derive(Debug)]
pub struct Replayed {
    /// The branch's WAL position right after promotion.
    pub promoted_at: String,
    /// Whether the target lay beyond the last transaction (replayed to the end instead).
    pub target_beyond_wal: bool,
}

/// Replays `pgdata` (laid out, with `recovery.signal`) as `owner` until it promotes, then stops
/// it cleanly. `cluster_dir` holds its socket and log (`branch-recovery.log`).
pub async fn replay(
    host: &Host,
    owner: &Owner,
    cluster_dir: &Path,
    pgdata: &Path,
    recovery: Recovery,
) -> Result<Replayed, BranchError> {
    owner
        .own_tree(pgdata)
        .map_err(|e| BranchError::Failed(format!("{e:#}")))?;
    let socket_dir = host
        .socket_dir_for(cluster_dir, owner)
        .map_err(|e| BranchError::Failed(format!("{e:#}")))?;
    let endpoint = ComputeEndpoint {
        socket_dir,
        port: COMPUTE_PORT,
    };
    let log = cluster_dir.join("branch-recovery.log");
    match run_once(host, owner, &endpoint, pgdata, &log, recovery).await {
        Ok(promoted_at) => Ok(Replayed {
            promoted_at,
            target_beyond_wal: false,
        }),
        Err(Ended::Exited(text))
            if recovery != Recovery::ToEnd && text.contains(TARGET_NOT_REACHED) =>
        {
            tracing::info!(pgdata = %pgdata.display(), "the target is after the last transaction: replaying to the end");
            match run_once(host, owner, &endpoint, pgdata, &log, Recovery::ToEnd).await {
                Ok(promoted_at) => Ok(Replayed {
                    promoted_at,
                    target_beyond_wal: true,
                }),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// How a replay run ended without promoting.
enum Ended {
    /// Postgres exited; the log it wrote meanwhile.
    Exited(String),
    Other(String),
}

impl From<Ended> for BranchError {
    fn from(ended: Ended) -> BranchError {
        match ended {
            Ended::Exited(log) => BranchError::Failed(format!(
                "Postgres stopped while replaying the branch's WAL:\n{}",
                last_lines(&log, 8)
            )),
            Ended::Other(text) => BranchError::Failed(text),
        }
    }
}

/// The postmaster's settings for a replay toward `recovery`.
pub fn replay_settings(socket_dir: &str, recovery: Recovery) -> Vec<(&'static str, String)> {
    let mut settings = vec![
        ("listen_addresses", String::new()),
        ("unix_socket_directories", socket_dir.to_string()),
        ("unix_socket_permissions", "0700".to_string()),
        ("port", COMPUTE_PORT.to_string()),
        ("logging_collector", "off".to_string()),
        ("hot_standby", "off".to_string()),
        ("archive_mode", "off".to_string()),
        ("synchronous_standby_names", String::new()),
        ("restore_command", "false".to_string()),
    ];
    match recovery {
        Recovery::ToEnd => {}
        Recovery::Lsn(lsn) => settings.push(("recovery_target_lsn", lsn.to_string())),
        Recovery::Time(time) => settings.push(("recovery_target_time", format_for_postgres(time))),
    }
    if recovery != Recovery::ToEnd {
        settings.push(("recovery_target_action", "promote".to_string()));
    }
    settings
}

/// One run of Postgres on `pgdata`: until it promotes (then stopped cleanly) or exits.
async fn run_once(
    host: &Host,
    owner: &Owner,
    endpoint: &ComputeEndpoint,
    pgdata: &Path,
    log_path: &Path,
    recovery: Recovery,
) -> Result<String, Ended> {
    let other = |e: &dyn std::fmt::Display| Ended::Other(e.to_string());
    let log = crate::files::open_private_log(log_path).map_err(|e| other(&e))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut command = host.command_as(&host.binaries.postgres(), owner);
    command.arg("-D").arg(pgdata);
    for (key, value) in replay_settings(&endpoint.socket_dir.display().to_string(), recovery) {
        command.arg("-c").arg(format!("{key}={value}"));
    }
    command
        .stdout(log.try_clone().map_err(|e| other(&e))?)
        .stderr(log)
        // A backstop: every path below stops it, and the branch runs in a task of its own.
        .kill_on_drop(true);
    // SAFETY: prctl, sched_setscheduler and ioprio_set only, all async-signal-safe. The death
    // signal is set after the uid switch, which would otherwise clear it: a pgtide that dies
    // takes the replay with it. The replay is background work beside a source that keeps
    // serving clients on the same cores and disk, so it runs at background priority
    // (SCHED_IDLE and the idle I/O class, inherited by its child processes; a nice value would
    // weigh it only against pgtide's own threads, not the source's compute cgroup).
    unsafe {
        command.pre_exec(|| {
            let _ = crate::runtime::background::lower_this_thread();
            nix::sys::prctl::set_pdeathsig(Signal::SIGINT).map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| Ended::Other(format!("starting postgres for the branch's replay: {e}")))?;
    let pid = Pid::from_raw(child.id().unwrap_or(0) as i32);
    let deadline = Instant::now() + REPLAY_TIMEOUT;
    let outcome = loop {
        if let Ok(Some(_)) = child.try_wait() {
            let text = std::fs::read(log_path).unwrap_or_default();
            let text = String::from_utf8_lossy(&text[(log_start as usize).min(text.len())..]);
            return Err(Ended::Exited(text.into_owned()));
        }
        if let Ok(client) = endpoint.admin_connect().await {
            // With hot_standby off, a connection is only accepted once it has promoted.
            match client
                .query_one(
                    "SELECT pg_is_in_recovery(), pg_current_wal_lsn()::text",
                    &[],
                )
                .await
            {
                Ok(row) if !row.get::<_, bool>(0) => {
                    let _ = client.batch_execute("CHECKPOINT").await;
                    break Ok(row.get::<_, String>(1));
                }
                Ok(_) => {}
                Err(e) => break Err(Ended::Other(format!("asking the replay: {e}"))),
            }
        }
        if Instant::now() > deadline {
            break Err(Ended::Other(format!(
                "the branch's replay did not end within {REPLAY_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(POLL).await;
    };
    // Fast shutdown (a shutdown checkpoint: the next start needs no recovery); immediate if
    // it does not end in time, or if the replay failed.
    let signal = if outcome.is_ok() {
        Signal::SIGINT
    } else {
        Signal::SIGQUIT
    };
    let _ = kill(pid, signal);
    if tokio::time::timeout(STOP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        let _ = kill(pid, Signal::SIGQUIT);
        let _ = child.wait().await;
        if outcome.is_ok() {
            return Err(Ended::Other(
                "the branch's Postgres did not stop cleanly after promoting".into(),
            ));
        }
    }
    outcome
}

fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::wal::Lsn;

    #[test]
    fn a_target_asks_for_promotion_and_reading_pg_wal_only() {
        let settings = replay_settings("/s", Recovery::Lsn(Lsn(0x300_0060)));
        assert!(settings.contains(&("recovery_target_lsn", "0/3000060".to_string())));
        assert!(settings.contains(&("recovery_target_action", "promote".to_string())));
        assert!(settings.contains(&("restore_command", "false".to_string())));
        assert!(!settings
            .iter()
            .any(|(k, _)| *k == "recovery_target_inclusive"));
        let to_end = replay_settings("/s", Recovery::ToEnd);
        assert!(!to_end.iter().any(|(k, _)| k.starts_with("recovery_target")));
    }
}
