//! ACU-seconds, saved beside the cluster's data so that the meter survives restarts; also
//! bucketed by UTC day and month, as a bill would be.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How often the meter is written to disk (and always at shutdown).
const SAVE_EVERY: Duration = Duration::from_secs(10);

pub(super) struct Metering {
    path: PathBuf,
    saved: SavedMetering,
    saved_at: Instant,
}

#[derive(Serialize, Deserialize, Default)]
struct SavedMetering {
    acu_seconds: f64,
    #[serde(default)]
    day: String,
    #[serde(default)]
    day_acu_seconds: f64,
    #[serde(default)]
    month: String,
    #[serde(default)]
    month_acu_seconds: f64,
}

impl Metering {
    pub(super) fn load(path: PathBuf) -> Metering {
        let saved = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<SavedMetering>(&b).ok())
            .unwrap_or_default();
        Metering {
            path,
            saved,
            saved_at: Instant::now(),
        }
    }

    pub(super) fn acu_seconds(&self) -> f64 {
        self.saved.acu_seconds
    }

    pub(super) fn acu_hours_today(&self) -> f64 {
        self.saved.day_acu_seconds / 3600.0
    }

    pub(super) fn acu_hours_month(&self) -> f64 {
        self.saved.month_acu_seconds / 3600.0
    }

    /// Adds `acu` held for `elapsed`, in today's and this month's buckets.
    pub(super) fn add(&mut self, acu: f64, elapsed: Duration) {
        self.add_on(&super::now_rfc3339()[..10], acu, elapsed);
        if self.saved_at.elapsed() >= SAVE_EVERY {
            self.save();
        }
    }

    /// [`Self::add`] on the UTC day `today` (`YYYY-MM-DD`).
    fn add_on(&mut self, today: &str, acu: f64, elapsed: Duration) {
        let used = acu * elapsed.as_secs_f64();
        if self.saved.day != today {
            self.saved.day = today.to_string();
            self.saved.day_acu_seconds = 0.0;
        }
        if self.saved.month != today[..7] {
            self.saved.month = today[..7].to_string();
            self.saved.month_acu_seconds = 0.0;
        }
        self.saved.acu_seconds += used;
        self.saved.day_acu_seconds += used;
        self.saved.month_acu_seconds += used;
    }

    /// Writes the meter atomically and privately.
    pub(super) fn save(&mut self) {
        self.saved_at = Instant::now();
        let bytes = serde_json::to_vec(&self.saved).expect("serializable");
        if let Err(e) = crate::files::write_private(&self.path, &bytes) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not save the ACU meter");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_months_start_from_zero_and_the_total_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metering.json");
        let mut meter = Metering::load(path.clone());
        meter.add_on("2026-11-30", 2.0, Duration::from_secs(3600));
        assert_eq!(meter.acu_hours_today(), 2.0);
        meter.add_on("2026-12-01", 1.0, Duration::from_secs(1800));
        assert_eq!(meter.acu_hours_today(), 0.5, "a new day starts at zero");
        assert_eq!(meter.acu_hours_month(), 0.5, "a new month too");
        meter.add_on("2026-12-01", 1.0, Duration::from_secs(1800));
        assert_eq!(meter.acu_hours_month(), 1.0);
        meter.save();
        let again = Metering::load(path);
        assert_eq!(again.acu_seconds(), 2.0 * 3600.0 + 3600.0);
        assert_eq!(again.acu_hours_today(), 1.0);
    }
}
