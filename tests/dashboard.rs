//! End to end: the dashboard in a real headless Chromium, `/history`, the admin token, and
//! `pgtide status --watch` in a pseudo-terminal. (Slow tests.)

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn chromium() -> &'static str {
    for candidate in ["chromium", "chromium-browser"] {
        if Command::new("which")
            .arg(candidate)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
        {
            return candidate;
        }
    }
    panic!("headless Chromium is needed for this test: apt-get install chromium (scripts/test.sh does)");
}

fn browser(args: &[&str], url: &str) -> String {
    let out = Command::new("timeout")
        .args([
            "120",
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=4000",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn attribute(dom: &str, name: &str) -> Option<String> {
    let start = dom.find(&format!("{name}=\""))? + name.len() + 2;
    Some(dom[start..].split('"').next()?.to_string())
}

/// How many points `/history` holds for the cluster.
fn history_points(pgtide: &Pgtide) -> usize {
    let (_, body) = get(&pgtide.admin_url("/history?cluster=main&since=0"), None);
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|h| h["points"].as_array().map(Vec::len))
        .unwrap_or(0)
}

fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let response = request.call().unwrap();
    let code = response.status().as_u16();
    (code, response.into_body().read_to_string().unwrap())
}

fn post(url: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    agent.post(url).send_empty().unwrap().status().as_u16()
}

#[test]
fn the_dashboard_shows_the_cluster_live_in_a_real_browser() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "min_acu = 0.5\nscale_down_after = \"1s\"".into(),
        ..Default::default()
    });
    let (ok, out) = pgbench(pgtide.port, &["-i", "-q"]);
    assert!(ok, "{out}");
    let (ok, out) = pgbench(pgtide.port, &["-S", "-c", "8", "-j", "2", "-T", "6"]);
    assert!(ok, "{out}");
    assert!(wait_until(Duration::from_secs(30), || history_points(
        &pgtide
    ) >= 8));

    let url = pgtide.admin_url("/dashboard");
    let dom = browser(&["--dump-dom"], &url);
    assert!(dom.contains("id=\"cluster-main\""), "{dom}");
    assert!(dom.contains("class=\"state running\">running<"), "{dom}");
    let points: usize = attribute(&dom, "data-points").unwrap().parse().unwrap();
    assert!(points >= 8, "the chart covers the load: {points} points");
    let first: u64 = attribute(&dom, "data-first").unwrap().parse().unwrap();
    let last: u64 = attribute(&dom, "data-last").unwrap().parse().unwrap();
    assert!(last >= first + 7, "{first}..{last}");
    assert!(dom.contains("data-series=\"acu\""), "an ACU line is drawn");
    assert!(dom.contains("data-series=\"tps\""), "a TPS line is drawn");
    assert!(
        dom.contains("class=\"event scaled_up\""),
        "scaling decisions are listed: {dom}"
    );
    assert!(
        dom.contains(" ACU: CPU ") || dom.contains(" ACU: "),
        "with their reasons"
    );

    // A screenshot for people to look at.
    let screenshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    let arg = format!("--screenshot={}", screenshot.display());
    browser(&[&arg, "--window-size=1280,1100"], &url);
    assert!(std::fs::metadata(&screenshot)
        .map(|m| m.len() > 10_000)
        .unwrap_or(false));
}

#[test]
fn history_checks_its_parameters() {
    let pgtide = Pgtide::start();
    assert!(wait_until(Duration::from_secs(30), || history_points(
        &pgtide
    ) >= 1));
    let (code, body) = get(&pgtide.admin_url("/history?cluster=main&since=0"), None);
    assert_eq!(code, 200, "{body}");
    let history: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(!history["points"].as_array().unwrap().is_empty());
    assert_eq!(history["capacity"], 3600);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (_, later) = get(
        &pgtide.admin_url(&format!("/history?cluster=main&since={}", now + 60)),
        None,
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&later).unwrap()["points"],
        serde_json::json!([])
    );
    for (query, reason) in [
        ("", "cluster parameter is required"),
        ("?cluster=main&since=yesterday", "since must be a Unix time"),
        ("?cluster=nope", "no cluster named \"nope\""),
        ("?cluster=main&since=-1", "since must be a Unix time"),
    ] {
        let (code, body) = get(&pgtide.admin_url(&format!("/history{query}")), None);
        assert_eq!(code, 400, "{query}: {body}");
        assert!(body.contains(reason), "{query}: {body}");
    }
}

#[test]
fn a_token_guards_every_admin_call() {
    let mut pgtide = Pgtide::start();
    pgtide.stop();
    pgtide.edit_config(|config| config.replace("[admin]\n", "[admin]\ntoken = \"s3cret\"\n"));
    pgtide.token = Some("s3cret".to_string());
    pgtide.restart();

    assert_eq!(get(&pgtide.admin_url("/status"), None).0, 401);
    assert_eq!(get(&pgtide.admin_url("/status"), Some("wrong")).0, 401);
    assert_eq!(get(&pgtide.admin_url("/status"), Some("s3cret")).0, 200);
    assert_eq!(get(&pgtide.admin_url("/metrics"), None).0, 401);
    assert_eq!(get(&pgtide.admin_url("/history?cluster=main"), None).0, 401);
    assert_eq!(get(&pgtide.admin_url("/dashboard"), None).0, 401);
    assert_eq!(
        get(&pgtide.admin_url("/dashboard?token=s3cret"), None).0,
        200
    );
    assert_eq!(post(&pgtide.admin_url("/clusters/main/pause")), 401);
    // The CLI takes the token from the config.
    let out = Command::new(env!("CARGO_BIN_EXE_pgtide"))
        .args(["pause", "main", "--config"])
        .arg(&pgtide.config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn pause_and_resume_over_http_need_a_token_off_loopback() {
    let mut pgtide = Pgtide::start();
    pgtide.stop();
    let port = free_port();
    let loopback = format!("127.0.0.1:{}", pgtide.admin_port);
    pgtide.edit_config(|config| config.replace(&loopback, &format!("0.0.0.0:{port}")));
    pgtide.admin_port = port;
    pgtide.restart();
    assert_eq!(get(&pgtide.admin_url("/status"), None).0, 200);
    assert_eq!(post(&pgtide.admin_url("/clusters/main/pause")), 403);
    assert_eq!(post(&pgtide.admin_url("/clusters/main/resume")), 403);
}

#[test]
fn status_watch_draws_in_a_pseudo_terminal() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "min_acu = 1".into(),
        ..Default::default()
    });
    assert!(wait_until(Duration::from_secs(30), || history_points(
        &pgtide
    ) >= 3));
    let command = format!(
        "{} status --watch --config {}",
        env!("CARGO_BIN_EXE_pgtide"),
        pgtide.config_path.display()
    );
    let out = Command::new("timeout")
        .args(["4", "script", "-qfec", &command, "/dev/null"])
        .output()
        .expect("script(1) runs");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        screen.contains("\x1b[2J"),
        "the screen is redrawn: {screen}"
    );
    assert!(
        screen.matches("pgtide status").count() >= 2,
        "refreshed every second: {screen}"
    );
    assert!(
        screen.contains("main") && screen.contains("running"),
        "{screen}"
    );
    assert!(
        screen.contains('▂') || screen.contains('▁'),
        "an ACU sparkline: {screen}"
    );
}
