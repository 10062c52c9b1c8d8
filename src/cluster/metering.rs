//! ACU-seconds, saved beside the cluster's data so that the meter survives restarts; also
//! bucketed by UTC day and month, as a bill would be, with every day of this month and the
//! previous one kept (`pgtide usage --month`). The file is rewritten atomically
//! (`files::write_private`), so a crash leaves the old meter or the new one.

use std::collections::BTreeMap;
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
    /// ACU-seconds by UTC day (`YYYY-MM-DD`), this month's and the previous month's.
    #[serde(default)]
    days: BTreeMap<String, f64>,
}

/// What the meter says on a given day, for `/usage`.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterReading {
    pub acu_seconds_total: f64,
    pub acu_seconds_today: f64,
    pub acu_seconds_month: f64,
    /// ACU-seconds by UTC day, oldest first: this month's and the previous month's days.
    pub days: Vec<(String, f64)>,
}

impl Metering {
    pub(super) fn load(path: PathBuf) -> Metering {
        let saved = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<SavedMetering>(&bytes).unwrap_or_else(|e| {
                // Loud: the next save would start this cluster's meter again from zero.
                tracing::warn!(path = %path.display(), error = %e, "the saved ACU meter cannot be read; it starts from zero");
                SavedMetering::default()
            }),
            Err(_) => SavedMetering::default(),
        };
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
        if used > 0.0 || !self.saved.days.contains_key(today) {
            *self.saved.days.entry(today.to_string()).or_default() += used;
        }
        let keep_from = format!("{}-01", previous_month(&today[..7]));
        self.saved
            .days
            .retain(|day, _| day.as_str() >= keep_from.as_str());
    }

    /// The meter as of `today` (`YYYY-MM-DD`): buckets of another day or month read as 0.
    pub(super) fn reading(&self, today: &str) -> MeterReading {
        let saved = &self.saved;
        MeterReading {
            acu_seconds_total: saved.acu_seconds,
            acu_seconds_today: if saved.day == today {
                saved.day_acu_seconds
            } else {
                0.0
            },
            acu_seconds_month: if saved.month == today[..7] {
                saved.month_acu_seconds
            } else {
                0.0
            },
            days: saved.days.iter().map(|(d, s)| (d.clone(), *s)).collect(),
        }
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

/// The month before `month` (`YYYY-MM`).
fn previous_month(month: &str) -> String {
    let year: i32 = month[..4].parse().unwrap_or(1970);
    let number: u32 = month[5..7].parse().unwrap_or(1);
    if number <= 1 {
        format!("{:04}-12", year - 1)
    } else {
        format!("{year:04}-{:02}", number - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_of_this_month_and_the_previous_are_kept_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metering.json");
        let mut meter = Metering::load(path.clone());
        meter.add_on("2026-10-31", 1.0, Duration::from_secs(3600));
        meter.add_on("2026-11-02", 2.0, Duration::from_secs(1800));
        meter.add_on("2026-11-02", 2.0, Duration::from_secs(1800));
        meter.add_on("2026-12-01", 0.0, Duration::from_secs(60));
        let reading = meter.reading("2026-12-01");
        assert_eq!(
            reading.days,
            [
                ("2026-11-02".to_string(), 7200.0),
                ("2026-12-01".to_string(), 0.0)
            ],
            "October is gone, November is kept, a paused day is listed"
        );
        assert_eq!(reading.acu_seconds_total, 3600.0 + 7200.0);
        assert_eq!(reading.acu_seconds_month, 0.0);
        meter.save();
        let again = Metering::load(path).reading("2026-12-02");
        assert_eq!(again.days.len(), 2);
        assert_eq!(
            again.acu_seconds_today, 0.0,
            "a day not metered yet reads 0"
        );
        assert_eq!(previous_month("2027-01"), "2026-12");
        assert_eq!(previous_month("2026-10"), "2026-09");
    }

    /// The meter is saved as JSON text: a total read back one unit in the last place lower
    /// than it was saved would make a bill go backwards across a restart (serde_json parses
    /// floats exactly only with its `float_roundtrip` feature).
    #[test]
    fn every_saved_total_reads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metering.json");
        let mut meter = Metering::load(path.clone());
        for i in 0..2000 {
            meter.add_on(
                "2026-12-07",
                0.5 + f64::from(i) * 1e-3,
                Duration::from_millis(1001),
            );
            let before = meter.reading("2026-12-07");
            meter.save();
            let after = Metering::load(path.clone()).reading("2026-12-07");
            assert_eq!(after, before, "after {i} ticks");
        }
    }

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
