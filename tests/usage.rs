//! End to end: metering per cluster. `GET /usage` (typed, shared with the CLI), `pgtide usage`
//! as a table and CSV, `--month` with today's row, the ACU-seconds in `/metrics`, and the days
//! kept in the meter's file across a restart.

mod common;

use std::time::Duration;

use common::*;
use pgtide::admin::usage::UsageResponse;

fn cli_text(pgtide: &Pgtide, args: &[&str]) -> String {
    let out = pgtide.cli(args);
    assert!(
        out.status.success(),
        "pgtide {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn usage(pgtide: &Pgtide) -> UsageResponse {
    serde_json::from_str(&pgtide.admin_get("/usage").expect("GET /usage")).unwrap()
}

#[test]
fn usage_is_metered_per_cluster_and_day() {
    let mut pgtide = Pgtide::start();
    assert!(
        wait_until(Duration::from_secs(30), || usage(&pgtide).clusters[0]
            .acu_hours_today
            > 0.0005),
        "main was never metered"
    );
    let response = usage(&pgtide);
    let main = &response.clusters[0];
    assert_eq!(main.name, "main");
    assert!(main.acu_hours_month >= main.acu_hours_today);
    assert!(main.acu_hours_total >= main.acu_hours_month);
    let today = main.days.last().expect("today is kept");
    assert_eq!(today.day, response.today);
    assert!(today.acu_hours > 0.0);

    let table = cli_text(&pgtide, &["usage"]);
    assert!(table.starts_with("cluster"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("main ")), "{table}");
    let csv = cli_text(&pgtide, &["usage", "--csv"]);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("cluster,acu_hours_today,acu_hours_month,acu_hours_total")
    );
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(row[0], "main");
    assert!(row[3].parse::<f64>().unwrap() > 0.0, "{csv}");
    let month = cli_text(&pgtide, &["usage", "--month", "--csv"]);
    assert!(
        month
            .lines()
            .any(|l| l.starts_with(&format!("{},main,", response.today))),
        "{month}"
    );
    assert!(pgtide
        .metrics()
        .contains("pgtide_cluster_acu_seconds_total{cluster=\"main\"}"));

    // The days are saved beside the meter and read back after a restart.
    pgtide.stop();
    let saved = std::fs::read_to_string(pgtide.data_dir().join("clusters/main/metering.json"))
        .expect("the meter is saved");
    assert!(
        saved.contains(&format!("\"{}\"", response.today)),
        "{saved}"
    );
    pgtide.restart();
    let again = usage(&pgtide);
    assert!(again.clusters[0].acu_hours_total >= main.acu_hours_total);
    assert_eq!(again.clusters[0].days[0].day, main.days[0].day);
}
