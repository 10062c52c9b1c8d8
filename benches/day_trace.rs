//! Replays a synthetic 24-hour load trace (one sample per second) through the scaling policy
//! alone, and prints what a day costs in ACU-hours against running at `max_acu` all day, how many
//! minutes the cluster spent below its need, and how many resizes it made.
//!
//! The trace: a diurnal wave (quiet at night, a morning ramp, a lunchtime peak, an evening
//! tail), short spikes every 47 minutes, and ±15 % deterministic noise. CPU use is capped by the
//! CPU limit in force, as a real compute's is.
//!
//! Usage: cargo bench --bench day_trace

use std::time::Duration;

use pgtide::scaler::policy::{Decision, PolicyConfig, PolicyState, Sample};

fn demand_cores(t: usize) -> f64 {
    let hour = t as f64 / 3600.0;
    let wave = (std::f64::consts::PI * (hour - 7.0) / 14.0).sin().max(0.0);
    let lunch = (-((hour - 12.5) * (hour - 12.5)) / 0.5).exp();
    let spike = if t % 2820 < 40 { 0.8 } else { 0.0 };
    let noise = ((t * 7919) % 61) as f64 / 61.0 * 0.3 - 0.15;
    (0.03 + 1.1 * wave + 0.6 * lunch + spike) * (1.0 + noise)
}

fn main() {
    let config = PolicyConfig {
        min_acu: 0.5,
        max_acu: 8.0,
        step_acu: 0.5,
        cpu_per_acu: 0.25,
        memory_mib_per_acu: 2048.0,
        scale_down_after: Duration::from_secs(30),
    };
    let day = 24 * 3600;
    let mut state = PolicyState::default();
    let mut acu = config.min_acu;
    let (mut acu_seconds, mut below_seconds, mut changes) = (0.0, 0usize, 0usize);
    let mut hourly = [0.0f64; 24];
    for t in 0..day {
        let want = demand_cores(t);
        let limit = acu * config.cpu_per_acu;
        if want > limit + 1e-9 {
            below_seconds += 1;
        }
        let sample = Sample {
            cpu_cores: want.min(limit),
            memory_working_set_mib: 300.0,
            memory_floor_mib: 200.0,
            ..Default::default()
        };
        if let Decision::Up { to, .. } | Decision::Down { to, .. } =
            config.decide(&mut state, &sample, acu, Duration::from_secs(t as u64))
        {
            acu = to;
            changes += 1;
        }
        acu_seconds += acu;
        hourly[t / 3600] += acu / 3600.0;
    }
    let used = acu_seconds / 3600.0;
    let at_max = config.max_acu * 24.0;
    println!("synthetic 24-hour trace through the scaling policy (min 0.5, max 8 ACU, step 0.5, scale_down_after 30s)");
    println!("ACU-hours used:           {used:.1}");
    println!(
        "ACU-hours at max_acu:     {at_max:.1}  (used = {:.0}% of it)",
        used / at_max * 100.0
    );
    println!(
        "minutes below need:       {:.1}  ({:.2}% of the day)",
        below_seconds as f64 / 60.0,
        below_seconds as f64 / day as f64 * 100.0
    );
    println!("resizes:                  {changes}");
    println!(
        "average ACU per hour:     {}",
        hourly
            .iter()
            .map(|h| format!("{h:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}
