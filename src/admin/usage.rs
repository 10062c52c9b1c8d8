//! `GET /usage` and `pgtide usage`: every cluster's ACU-hours today, this month and in all, with
//! the days kept (this month's and the previous month's), typed here so that the admin endpoint
//! serialises and the CLI reads back the same structs; and the CLI's table and CSV, as pure
//! functions of them.

use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterHandle, MeterReading};

/// `GET /usage`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsageResponse {
    /// The UTC day the figures are for (`YYYY-MM-DD`).
    pub today: String,
    pub clusters: Vec<ClusterUsage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterUsage {
    pub name: String,
    pub acu_hours_today: f64,
    pub acu_hours_month: f64,
    pub acu_hours_total: f64,
    /// Oldest first: the days of this month and the previous one that were metered.
    pub days: Vec<DayUsage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DayUsage {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub acu_hours: f64,
}

impl ClusterUsage {
    fn of(name: &str, reading: MeterReading) -> ClusterUsage {
        ClusterUsage {
            name: name.to_string(),
            acu_hours_today: reading.acu_seconds_today / 3600.0,
            acu_hours_month: reading.acu_seconds_month / 3600.0,
            acu_hours_total: reading.acu_seconds_total / 3600.0,
            days: reading
                .days
                .into_iter()
                .map(|(day, seconds)| DayUsage {
                    day,
                    acu_hours: seconds / 3600.0,
                })
                .collect(),
        }
    }
}

/// The usage of `clusters` now.
pub fn usage<'a>(clusters: impl Iterator<Item = &'a ClusterHandle>) -> UsageResponse {
    UsageResponse {
        today: crate::cluster::now_rfc3339()[..10].to_string(),
        clusters: clusters
            .map(|handle| ClusterUsage::of(handle.name(), handle.usage()))
            .collect(),
    }
}

/// What `pgtide usage` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageView {
    /// One row per cluster: ACU-hours today, this month, in all.
    Summary,
    /// One row per cluster and day of this month.
    Month,
}

/// The rows of a view: a header, then the values as text (ACU-hours with `decimals`).
fn rows(usage: &UsageResponse, view: UsageView, decimals: usize) -> Vec<Vec<String>> {
    let hours = |h: f64| format!("{h:.decimals$}");
    match view {
        UsageView::Summary => {
            let mut rows = vec![vec![
                "cluster".to_string(),
                "acu_hours_today".to_string(),
                "acu_hours_month".to_string(),
                "acu_hours_total".to_string(),
            ]];
            rows.extend(usage.clusters.iter().map(|c| {
                vec![
                    c.name.clone(),
                    hours(c.acu_hours_today),
                    hours(c.acu_hours_month),
                    hours(c.acu_hours_total),
                ]
            }));
            rows
        }
        UsageView::Month => {
            let month = &usage.today[..7];
            let mut rows = vec![vec![
                "day".to_string(),
                "cluster".to_string(),
                "acu_hours".to_string(),
            ]];
            for cluster in &usage.clusters {
                for day in cluster.days.iter().filter(|d| d.day.starts_with(month)) {
                    rows.push(vec![
                        day.day.clone(),
                        cluster.name.clone(),
                        hours(day.acu_hours),
                    ]);
                }
            }
            rows[1..].sort();
            rows
        }
    }
}

/// A table with aligned columns (names left, figures right).
pub fn table(usage: &UsageResponse, view: UsageView) -> String {
    let rows = rows(usage, view, 4);
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let figure = cell.parse::<f64>().is_ok();
                if figure {
                    format!("{cell:>width$}", width = widths[i])
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// The same rows as CSV, with more decimals (RFC 4180: a field with a comma or a quote is
/// quoted).
pub fn csv(usage: &UsageResponse, view: UsageView) -> String {
    let field = |cell: &String| {
        if cell.contains([',', '"', '\n']) {
            format!("\"{}\"", cell.replace('"', "\"\""))
        } else {
            cell.clone()
        }
    };
    rows(usage, view, 6)
        .iter()
        .map(|row| row.iter().map(field).collect::<Vec<_>>().join(",") + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> UsageResponse {
        let day = |day: &str, acu_hours: f64| DayUsage {
            day: day.to_string(),
            acu_hours,
        };
        UsageResponse {
            today: "2026-12-02".to_string(),
            clusters: vec![
                ClusterUsage {
                    name: "main".to_string(),
                    acu_hours_today: 0.5,
                    acu_hours_month: 1.5,
                    acu_hours_total: 10.0,
                    days: vec![
                        day("2026-11-30", 8.5),
                        day("2026-12-01", 1.0),
                        day("2026-12-02", 0.5),
                    ],
                },
                ClusterUsage {
                    name: "alpha".to_string(),
                    acu_hours_today: 0.0,
                    acu_hours_month: 0.25,
                    acu_hours_total: 0.25,
                    days: vec![day("2026-12-01", 0.25)],
                },
            ],
        }
    }

    #[test]
    fn the_summary_has_a_row_per_cluster_aligned() {
        let text = table(&sample(), UsageView::Summary);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("cluster"));
        assert!(lines[1].starts_with("main "), "{text}");
        assert!(lines[1].ends_with("10.0000"), "{text}");
        assert_eq!(lines[1].len(), lines[2].len(), "columns line up:\n{text}");
    }

    #[test]
    fn the_month_lists_this_months_days_only_in_order() {
        let csv = csv(&sample(), UsageView::Month);
        assert_eq!(
            csv,
            "day,cluster,acu_hours\n2026-12-01,alpha,0.250000\n2026-12-01,main,1.000000\n\
             2026-12-02,main,0.500000\n"
        );
    }

    #[test]
    fn csv_quotes_what_needs_it_and_the_json_round_trips() {
        let mut usage = sample();
        usage.clusters[1].name = "a,\"b\"".to_string();
        let csv = csv(&usage, UsageView::Summary);
        assert!(csv.contains("\"a,\"\"b\"\"\",0.000000"), "{csv}");
        let json = serde_json::to_string(&usage).unwrap();
        assert_eq!(serde_json::from_str::<UsageResponse>(&json).unwrap(), usage);
    }
}
