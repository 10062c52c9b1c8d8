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

/// Headless Chromium, bounded to 120 s.
fn headless() -> Command {
    let mut command = Command::new("timeout");
    command.args([
        "120",
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
    ]);
    command
}

fn browser(args: &[&str], url: &str) -> String {
    let out = headless()
        .arg("--virtual-time-budget=4000")
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

/// A headless Chromium driven through the DevTools protocol (a WebSocket, framed here by hand:
/// the test needs text frames only), so that the test can click like a person and read the page.
struct DevTools {
    browser: std::process::Child,
    socket: std::net::TcpStream,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl DevTools {
    fn open(url: &str) -> DevTools {
        let port = free_port();
        let profile = test_dir();
        let browser = headless()
            .arg(format!("--remote-debugging-port={port}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--window-size=1280,900")
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromium runs");
        let mut page = None;
        wait_until(Duration::from_secs(30), || {
            let Ok(response) = ureq::get(&format!("http://127.0.0.1:{port}/json/list")).call()
            else {
                return false;
            };
            let targets: serde_json::Value =
                serde_json::from_str(&response.into_body().read_to_string().unwrap()).unwrap();
            page = targets.as_array().unwrap().iter().find_map(|t| {
                (t["type"] == "page")
                    .then(|| t["webSocketDebuggerUrl"].as_str().map(String::from))
                    .flatten()
            });
            page.is_some()
        });
        let page = page.expect("chromium's page target");
        let path = &page[page.find("/devtools/").expect("a devtools path")..];
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        use std::io::{Read, Write};
        write!(
            socket,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        DevTools {
            browser,
            socket,
            next_id: 0,
            _profile: profile,
        }
    }

    fn send_frame(&mut self, text: &str) {
        use std::io::Write;
        let payload = text.as_bytes();
        let mask = [0x5au8, 0x17, 0xc3, 0x88];
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend((n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend((n as u64).to_be_bytes());
            }
        }
        frame.extend(mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.socket.write_all(&frame).unwrap();
    }

    /// The next whole text message (the server does not mask its frames).
    fn read_message(&mut self) -> String {
        use std::io::Read;
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.socket.read_exact(&mut head).unwrap();
            let length = match head[1] & 0x7f {
                126 => {
                    let mut n = [0u8; 2];
                    self.socket.read_exact(&mut n).unwrap();
                    u16::from_be_bytes(n) as usize
                }
                127 => {
                    let mut n = [0u8; 8];
                    self.socket.read_exact(&mut n).unwrap();
                    u64::from_be_bytes(n) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; length];
            self.socket.read_exact(&mut payload).unwrap();
            message.extend(payload);
            if head[0] & 0x80 != 0 {
                return String::from_utf8(message).unwrap();
            }
        }
    }

    /// Calls a DevTools method and returns its result.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let reply = self.try_call(method, params);
        assert!(reply["error"].is_null(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// Calls a DevTools method and returns its whole reply, an error included (a page being
    /// replaced by the next one answers with one).
    fn try_call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = serde_json::json!({ "id": id, "method": method, "params": params });
        self.send_frame(&request.to_string());
        loop {
            let reply: serde_json::Value = serde_json::from_str(&self.read_message()).unwrap();
            if reply["id"] == id {
                return reply;
            }
        }
    }

    fn evaluate(&mut self, expression: &str) -> serde_json::Value {
        let result = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true }),
        );
        result["result"]["value"].clone()
    }

    /// [`Self::evaluate`] while the page may be navigating: `null` until it is there.
    fn evaluate_when_loaded(&mut self, expression: &str) -> serde_json::Value {
        let reply = self.try_call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true }),
        );
        reply["result"]["result"]["value"].clone()
    }

    /// A left click in the middle of the element `selector` picks, as a mouse would.
    fn click(&mut self, selector: &str) {
        let point = self.evaluate(&format!(
            "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = (point[0].as_f64().unwrap(), point[1].as_f64().unwrap());
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                serde_json::json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            );
        }
    }
}

impl Drop for DevTools {
    fn drop(&mut self) {
        // `timeout` passes the signal on to Chromium, which closes its own processes.
        send_signal(self.browser.id() as i32, Signal::SIGTERM);
        let _ = self.browser.wait();
    }
}

/// The names in the dashboard's list, top to bottom.
const ROW_NAMES: &str =
    "Array.from(document.querySelectorAll('#list tbody tr')).map(r => r.dataset.name).join(',')";

#[test]
fn the_list_shows_every_cluster_sorts_by_a_click_and_links_to_each() {
    let shared_port = free_port();
    let pgtide = Pgtide::start_with(Options {
        top: format!("[tenants]\nlisten = \"127.0.0.1:{shared_port}\"\n"),
        ..Default::default()
    });
    let out = pgtide.cli(&[
        "create",
        "other",
        "--auto-pause-after",
        "1s",
        "--password",
        "other-pw",
    ]);
    assert!(out.status.success(), "{out:?}");
    pgtide.wait_cluster_state(
        "other",
        pgtide::cluster::state::StateName::Paused,
        Duration::from_secs(30),
    );

    let mut page = DevTools::open(&pgtide.admin_url("/dashboard"));
    let mut names = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            names = page.evaluate(ROW_NAMES).as_str().unwrap_or("").to_string();
            names == "main,other"
        }),
        "both clusters listed by name: {names:?}"
    );
    let states = page.evaluate(
        "Array.from(document.querySelectorAll('#list tbody tr .state')).map(s => s.textContent).join(',')",
    );
    assert_eq!(states, "running,paused");
    assert_eq!(
        page.evaluate("document.querySelectorAll('section.cluster').length"),
        0,
        "with two clusters the list comes alone"
    );
    let link = page.evaluate("document.querySelector('#list tr[data-name=other] a').href");
    assert!(
        link.as_str().unwrap().ends_with("/dashboard?cluster=other"),
        "{link}"
    );

    // A click on the state header sorts by state: paused before running.
    page.click("#list th[data-key=state]");
    assert_eq!(page.evaluate(ROW_NAMES), "other,main");
    // A second click reverses it.
    page.click("#list th[data-key=state]");
    assert_eq!(page.evaluate(ROW_NAMES), "main,other");

    // The row's link opens that cluster's own page.
    page.click("#list tr[data-name=other] a");
    assert!(
        wait_until(Duration::from_secs(30), || {
            page
            .evaluate_when_loaded("document.querySelector('section.cluster') ? document.querySelector('section.cluster').id : ''")
            == "cluster-other"
        }),
        "the cluster's page shows it"
    );
    assert_eq!(
        page.evaluate_when_loaded("document.getElementById('list').hidden"),
        true
    );
}

#[test]
fn the_dashboard_shows_the_writer_and_the_standbys_per_zone() {
    let pgtide = Pgtide::start_with(Options {
        cluster: "min_acu = 1\nstandbys = 1".into(),
        copies: true,
        ..Default::default()
    });
    assert!(
        wait_until(Duration::from_secs(60), || pgtide
            .cluster("main")
            .zones
            .standbys
            .iter()
            .any(|s| s.in_rotation)),
        "{:#?}",
        pgtide.cluster("main").zones
    );
    let dom = browser(&["--dump-dom"], &pgtide.admin_url("/dashboard"));
    assert!(
        dom.contains("class=\"zone writer\" data-zone=\"a\""),
        "{dom}"
    );
    assert!(
        dom.contains("class=\"zone standby in-rotation\" data-zone=\"b\""),
        "{dom}"
    );
    assert!(dom.contains("zone b: standby"), "{dom}");
    assert!(dom.contains("class=\"zone\" data-zone=\"c\""), "{dom}");
}
