//! One scaler tick on a running compute, and the live resize it leads to.
//!
//! [`ClusterTask::scale`] reads the compute's usage and the proxy's counters, lets the pure
//! policy ([`crate::scaler::policy`]) decide, applies a new size with [`ClusterTask::apply`]
//! (limits, then the reloadable Postgres settings; never a restart), and records the decision
//! with its reason. A refusal that lasts (at `max_acu`, or the memory floor) is one event.
//!
//! Both run on the cluster's task, so both are bounded: a usage sample that takes longer than
//! [`USAGE_TIMEOUT`] skips the tick, and a resize that takes longer than [`RESIZE_TIMEOUT`] is
//! given up with a `resize_timed_out` event (the ACU stays, `acu_target` shows what was wanted,
//! the next tick decides again). Giving up drops the runtime's request half-way: a limit written
//! or not, settings reloaded or not; Postgres is never restarted and no client is dropped.

use std::time::{Duration, Instant};

use super::events::EventKind;
use super::task::{ClusterTask, Phase};
use crate::acu::ComputeSize;
use crate::scaler::policy::Decision;

/// How long a resize may hold the cluster's task (a resize takes milliseconds to a second).
pub(super) const RESIZE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a usage sample may hold the cluster's task (the tick is 1 s).
pub(super) const USAGE_TIMEOUT: Duration = Duration::from_secs(2);

impl ClusterTask {
    /// Applies a size to the running compute; returns whether it took.
    pub(super) async fn apply(&mut self, acu: f64) -> bool {
        let size = ComputeSize::of(acu, &self.shared.capacity);
        let shared = self.shared.clone();
        let Phase::Running(running) = &mut self.phase else {
            return false;
        };
        let name = shared.config.name.clone();
        let applied = tokio::time::timeout(RESIZE_TIMEOUT, running.compute.apply_size(size)).await;
        let Ok(applied) = applied else {
            shared.budget.hold(&name, running.acu);
            shared.events.record(
                EventKind::ResizeTimedOut,
                format!(
                    "applying {acu} ACU did not finish within {} s; given up, the next tick decides again",
                    RESIZE_TIMEOUT.as_secs()
                ),
            );
            return false;
        };
        match applied {
            Ok(limits) => {
                running.acu = acu;
                shared.budget.hold(&name, acu);
                metrics::gauge!("pgtide_cluster_acu", "cluster" => name.clone()).set(acu);
                metrics::gauge!("pgtide_cluster_acu_target", "cluster" => name.clone()).set(acu);
                metrics::gauge!("pgtide_cluster_cpu_limit_cores", "cluster" => name.clone())
                    .set(limits.cpu_cores);
                metrics::gauge!("pgtide_cluster_memory_limit_bytes", "cluster" => name)
                    .set(limits.memory_mib as f64 * 1048576.0);
                let mut status = shared.status.lock().expect("status lock");
                status.acu = acu;
                status.acu_target = acu;
                status.limits = Some(limits);
                true
            }
            Err(e) => {
                shared.budget.hold(&name, running.acu);
                shared.events.record(
                    EventKind::ResizeFailed,
                    format!("applying {acu} ACU failed: {e:#}"),
                );
                false
            }
        }
    }

    /// One scaler tick: measure, decide, apply.
    pub(super) async fn scale(&mut self, now: Instant) {
        let shared = self.shared.clone();
        let Phase::Running(running) = &mut self.phase else {
            return;
        };
        let from = running.acu;
        let usage = match tokio::time::timeout(USAGE_TIMEOUT, running.compute.usage()).await {
            Ok(Ok(usage)) => usage,
            Ok(Err(e)) => {
                tracing::debug!(cluster = %shared.config.name, error = %e, "no usage sample this tick");
                return;
            }
            Err(_) => {
                tracing::debug!(cluster = %shared.config.name, "no usage sample within {USAGE_TIMEOUT:?} this tick");
                return;
            }
        };
        let active = shared.counters.active();
        let waiting = shared.counters.waiting();
        let Some(sample) = self.scaler.sample(usage, active, waiting, now) else {
            return;
        };
        let name = shared.config.name.clone();
        metrics::gauge!("pgtide_cluster_cpu_used_cores", "cluster" => name.clone())
            .set(sample.cpu_cores);
        metrics::gauge!("pgtide_cluster_memory_used_bytes", "cluster" => name.clone())
            .set(sample.memory_working_set_mib * 1048576.0);
        {
            let mut status = shared.status.lock().expect("status lock");
            status.cpu_used_cores = sample.cpu_cores;
            status.memory_used_mib = sample.memory_working_set_mib;
        }
        let (to, kind, signal, reason) = match self.scaler.decide(&sample, from, now) {
            Decision::Hold => {
                self.last_notice = None;
                return;
            }
            Decision::Up { to, signal, reason } => {
                let Some(granted) = self.granted(from, to) else {
                    return;
                };
                if granted < to {
                    let reason = format!("{reason}; capped by the machine budget");
                    (granted, EventKind::ScaledUp, signal, reason)
                } else {
                    self.last_notice = None;
                    (to, EventKind::ScaledUp, signal, reason)
                }
            }
            Decision::Down { to, signal, reason } => {
                self.last_notice = None;
                (to, EventKind::ScaledDown, signal, reason)
            }
            Decision::DownRefused { reason } => {
                return self.notice(EventKind::DownRefused, format!("down refused: {reason}"));
            }
            Decision::AtMax { reason } => {
                return self.notice(EventKind::AtMax, format!("up refused: {reason}"))
            }
        };
        shared.status.lock().expect("status lock").acu_target = to;
        if self.apply(to).await {
            let direction = if kind == EventKind::ScaledUp {
                "up"
            } else {
                "down"
            };
            metrics::counter!("pgtide_cluster_scaling_events_total", "cluster" => name, "direction" => direction, "reason" => signal.label())
                .increment(1);
            shared
                .events
                .record(kind, format!("{direction} {from} → {to} ACU: {reason}"));
        }
    }

    /// Records a refusal once for as long as it lasts.
    pub(super) fn notice(&mut self, kind: EventKind, message: String) {
        if self.last_notice != Some(kind) {
            self.last_notice = Some(kind);
            metrics::counter!("pgtide_cluster_scaling_events_total", "cluster" => self.name().to_string(), "direction" => kind.as_str(), "reason" => "refused")
                .increment(1);
            self.shared.events.record(kind, message);
        }
    }
}
