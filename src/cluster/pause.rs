//! Pausing and shutting down: how the cluster's task hands its compute to a stop job, what each
//! command does while that job runs, and what follows when it reports back.
//!
//! A stop runs off the task ([`StopJob`], `stop.rs`), so the task goes on answering while it
//! runs. While `Phase::Stopping`:
//! - **status** always answers: the state is `pausing` (or `resuming` when a restart follows)
//!   and the `stopping` event says what is being stopped;
//! - **pause** is already satisfied when the stop is a pause's, and is answered at once ("is
//!   pausing"); a later pause also drops a resume asked for meanwhile. During a lost compute's
//!   stop, a pause turns the restart that would follow into a pause (the next start rebuilds);
//! - **resume** during a pause's stop is remembered: the cluster pauses, then starts again at
//!   once. During a lost compute's stop a restart follows anyway, and during a shutdown nothing
//!   starts;
//! - **shutdown** waits for the same stop, then ends the task; pauses still waiting for that
//!   stop hear that pgtide is shutting down;
//! - the **tick** meters (0 ACU), records history and leaves the storage alone (it is on loan).
//!
//! When the job reports back, [`ClusterTask::on_stop_ended`] takes the storage back, shows no
//! compute in `/status`, records `stopped`, moves a lost data directory's remains aside, then
//! pauses, restarts, or finishes the shutdown, as the job's [`AfterStop`] says.

use std::time::Duration;

use tokio::sync::oneshot;

use super::events::EventKind;
use super::start::{StartPurpose, StartResult};
use super::state::ClusterState;
use super::stop::{AfterStop, PauseReply, StopJob, StopKind, StopOutcome};
use super::task::{ClusterTask, Phase};
use crate::config::PoolMode;
use crate::runtime::Compute;

/// How long a shutdown waits for a cancelled start to stop what it started.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

impl ClusterTask {
    /// Hands the compute and the storage to a stop job; the task goes on serving meanwhile.
    pub(super) fn begin_stop(
        &mut self,
        compute: Box<dyn Compute>,
        kind: StopKind,
        then: AfterStop,
    ) {
        let standbys_stopped = match then {
            AfterStop::Pause { .. } | AfterStop::Shutdown { .. } => self.standbys.stop_all(),
            AfterStop::Restart | AfterStop::Failover { .. } => Vec::new(),
        };
        let job = StopJob::spawn(
            compute,
            self.storage.take(),
            kind,
            then,
            self.name().to_string(),
            standbys_stopped,
        );
        self.shared
            .events
            .record(EventKind::Stopping, job.description().to_string());
        let state = match job.then {
            AfterStop::Restart | AfterStop::Failover { .. } => ClusterState::Resuming,
            AfterStop::Pause { .. } | AfterStop::Shutdown { .. } => ClusterState::Pausing,
        };
        self.phase = Phase::Stopping(job);
        self.set_state(state);
    }

    /// A stop job ended: take the storage back, then do what was planned.
    pub(super) fn on_stop_ended(&mut self, outcome: Option<StopOutcome>) {
        let job = match std::mem::replace(&mut self.phase, Phase::Paused) {
            Phase::Stopping(job) => job,
            other => {
                self.phase = other;
                return;
            }
        };
        let ms = job.started_at.elapsed().as_millis();
        let stopped = match outcome {
            Some(outcome) => {
                self.storage = outcome.storage;
                format!("compute stopped in {ms} ms")
            }
            None => format!("the compute's stop failed unexpectedly after {ms} ms (see the log)"),
        };
        self.no_compute_status();
        self.publish_storage_status();
        self.standbys.writer_gone();
        if job.kind == StopKind::Lost {
            // The next start moves the remains aside, after the runtime gave back all it held.
            self.data_lost = true;
        }
        self.shared.events.record(EventKind::Stopped, stopped);
        match job.then {
            AfterStop::Pause {
                reason,
                replies,
                resume_for,
            } => {
                self.paused(reason);
                for reply in replies {
                    let _ = reply.send(Ok(format!("cluster \"{}\" paused", self.name())));
                }
                if let Some(requested_by) = resume_for {
                    self.resume(&requested_by);
                }
            }
            AfterStop::Restart => {
                if self.storage_lost() {
                    return;
                }
                // A standby in sync takes over; without one the writer restarts where it was.
                let lost_because = self
                    .writer_lost_because
                    .take()
                    .unwrap_or_else(|| "the writer was lost".to_string());
                match self.standbys.promotable(None) {
                    Ok(zone) => self.begin_start(StartPurpose::Failover {
                        zone,
                        planned: false,
                        since: job.started_at,
                        reason: lost_because,
                    }),
                    Err(why) => {
                        if self.shared.config.standbys > 0 {
                            self.shared.events.record(
                                EventKind::FailoverFailed,
                                format!("no standby can take over ({why}); restarting the writer where it was"),
                            );
                        }
                        self.begin_start(StartPurpose::Restart {
                            attempt: 0,
                            since: job.started_at,
                        })
                    }
                }
            }
            AfterStop::Failover { zone } => {
                if !self.storage_lost() {
                    self.begin_start(StartPurpose::Failover {
                        zone,
                        planned: true,
                        since: job.started_at,
                        reason: "asked for by pgtide failover".to_string(),
                    });
                }
            }
            AfterStop::Shutdown { replies } => self.shut_down(replies),
        }
    }

    /// `pgtide failover [--to ZONE]`: the writer stops cleanly and the standby takes over;
    /// answered once the new writer runs (or the takeover failed).
    pub(super) fn failover_on_request(
        &mut self,
        to: Option<String>,
        reply: oneshot::Sender<Result<String, String>>,
    ) {
        if !matches!(self.phase, Phase::Running(_)) {
            let _ = reply.send(Err(format!(
                "cluster \"{}\" is not running: a failover needs a running writer",
                self.name()
            )));
            return;
        }
        let zone = match self.standbys.promotable(to.as_deref()) {
            Ok(zone) => zone,
            Err(reason) => {
                let _ = reply.send(Err(reason));
                return;
            }
        };
        let Phase::Running(running) = std::mem::replace(&mut self.phase, Phase::Paused) else {
            unreachable!("matched above");
        };
        self.failover_reply = Some(reply);
        self.begin_stop(
            running.compute,
            StopKind::Clean,
            AfterStop::Failover { zone },
        );
    }

    /// Stops the running compute, if any, and pauses (the auto-pause of an idle cluster).
    pub(super) fn pause(&mut self, reason: String) {
        match std::mem::replace(&mut self.phase, Phase::Paused) {
            Phase::Running(running) => self.begin_stop(
                running.compute,
                StopKind::Clean,
                AfterStop::Pause {
                    reason,
                    replies: Vec::new(),
                    resume_for: None,
                },
            ),
            other => {
                self.phase = other;
                self.paused(reason);
            }
        }
    }

    /// The compute is gone: the cluster is paused.
    pub(super) fn paused(&mut self, reason: String) {
        self.phase = Phase::Paused;
        metrics::counter!("pgtide_cluster_pauses_total", "cluster" => self.name().to_string())
            .increment(1);
        self.shared.events.record(EventKind::Paused, reason);
        if let Some(reply) = self.failover_reply.take() {
            let _ = reply.send(Err(
                "the cluster was paused during the failover (its events say how far the takeover went)"
                    .to_string(),
            ));
        }
        self.publish_zones();
        self.set_state(ClusterState::Paused);
        self.record_paused_history();
    }

    /// `pgtide pause`: refused while clients are busy; answered once the cluster is paused, or
    /// at once when a stop already under way will pause it.
    pub(super) fn pause_on_request(&mut self, reply: PauseReply) {
        let busy = self.busy_clients();
        if busy > 0 {
            let what = match self.shared.config.pool_mode {
                PoolMode::Session => "connected client",
                PoolMode::Transaction => "client in a transaction",
            };
            let _ = reply.send(Err(format!(
                "cluster \"{}\" has {busy} {what}{}; pause refused",
                self.name(),
                if busy == 1 { "" } else { "s" }
            )));
            return;
        }
        match std::mem::replace(&mut self.phase, Phase::Paused) {
            Phase::Paused => {
                let _ = reply.send(Ok(format!("cluster \"{}\" is already paused", self.name())));
            }
            Phase::Starting(job) => {
                // The reply comes once the start has stopped what it started.
                job.cancel();
                self.phase = Phase::Cancelling {
                    job,
                    reply: Some(reply),
                };
                self.set_state(ClusterState::Pausing);
            }
            Phase::Cancelling { job, reply: None } => {
                self.phase = Phase::Cancelling {
                    job,
                    reply: Some(reply),
                };
            }
            other @ Phase::Cancelling { .. } => {
                self.phase = other;
                let _ = reply.send(Err("a pause is already under way".to_string()));
            }
            Phase::Stopping(mut job) => {
                self.pause_during_stop(&mut job, reply);
                self.phase = Phase::Stopping(job);
            }
            Phase::Running(running) => self.begin_stop(
                running.compute,
                StopKind::Clean,
                AfterStop::Pause {
                    reason: "paused on request".to_string(),
                    replies: vec![reply],
                    resume_for: None,
                },
            ),
            Phase::Backoff { .. } | Phase::Failed => {
                self.paused("paused on request".to_string());
                let _ = reply.send(Ok(format!("cluster \"{}\" paused", self.name())));
            }
            Phase::ShutDown => {
                self.phase = Phase::ShutDown;
                let _ = reply.send(Err("pgtide is shutting down".to_string()));
            }
        }
    }

    /// A pause while a stop runs: answered at once, the plan after the stop made a pause.
    fn pause_during_stop(&mut self, job: &mut StopJob, reply: PauseReply) {
        let pausing = format!(
            "cluster \"{}\" is pausing: its compute is stopping",
            self.name()
        );
        match &mut job.then {
            AfterStop::Pause { resume_for, .. } => {
                // Already what was asked; the later word wins over a resume asked meanwhile.
                *resume_for = None;
                let _ = reply.send(Ok(pausing));
            }
            AfterStop::Restart => {
                job.then = AfterStop::Pause {
                    reason: "paused on request, while a lost compute stopped".to_string(),
                    replies: Vec::new(),
                    resume_for: None,
                };
                self.set_state(ClusterState::Pausing);
                let _ = reply.send(Ok(pausing));
            }
            AfterStop::Shutdown { .. } => {
                let _ = reply.send(Err("pgtide is shutting down".to_string()));
            }
            AfterStop::Failover { .. } => {
                let _ = reply.send(Err(
                    "a failover is under way; pause again once it is done".to_string()
                ));
            }
        }
    }

    /// Stops everything, then ends the task: a start under way is cancelled (and given a grace
    /// to stop what it started), a running compute is stopped cleanly by a stop job, a stop
    /// under way is waited for; then the meter is saved and `reply` answered.
    pub(super) async fn shutdown(&mut self, reply: Option<oneshot::Sender<()>>) {
        let replies: Vec<_> = reply.into_iter().collect();
        match std::mem::replace(&mut self.phase, Phase::Paused) {
            Phase::Starting(mut job) | Phase::Cancelling { mut job, .. } => {
                job.cancel();
                let started = match tokio::time::timeout(SHUTDOWN_GRACE, job.finished()).await {
                    Ok(Some(outcome)) => {
                        self.storage = outcome.storage;
                        match outcome.result {
                            StartResult::Started(compute) => Some(compute),
                            StartResult::Cancelled | StartResult::Failed(_) => None,
                        }
                    }
                    Ok(None) => None,
                    Err(_) => {
                        tracing::warn!(
                            cluster = %self.name(),
                            "a start did not stop within {SHUTDOWN_GRACE:?} of the shutdown; leaving it"
                        );
                        None
                    }
                };
                self.shared.events.record(
                    EventKind::StartCancelled,
                    "the start was cancelled by pgtide's shutdown".to_string(),
                );
                match started {
                    Some(compute) => {
                        self.begin_stop(compute, StopKind::Clean, AfterStop::Shutdown { replies })
                    }
                    None => self.shut_down(replies),
                }
            }
            Phase::Running(running) => self.begin_stop(
                running.compute,
                StopKind::Clean,
                AfterStop::Shutdown { replies },
            ),
            Phase::Stopping(mut job) => {
                // The same stop, then the end. Pauses that waited for it are dropped: they hear
                // that pgtide is shutting down.
                match &mut job.then {
                    AfterStop::Shutdown { replies: waiting } => waiting.extend(replies),
                    then => *then = AfterStop::Shutdown { replies },
                }
                self.phase = Phase::Stopping(job);
                self.set_state(ClusterState::Pausing);
            }
            Phase::Paused | Phase::Backoff { .. } | Phase::Failed | Phase::ShutDown => {
                self.shut_down(replies)
            }
        }
    }

    /// No compute is left: save the meter, answer once the standbys stopped too, and let the
    /// task end.
    fn shut_down(&mut self, replies: Vec<oneshot::Sender<()>>) {
        self.shared.metering.lock().expect("metering lock").save();
        self.phase = Phase::ShutDown;
        self.set_state(ClusterState::Paused);
        let standbys_stopped = self.standbys.stop_all();
        tokio::spawn(async move {
            for stopped in standbys_stopped {
                let _ = stopped.await;
            }
            for reply in replies {
                let _ = reply.send(());
            }
        });
    }
}
