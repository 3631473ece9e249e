//! The live status page on the metrics listener (README "Status page"): `GET
//! /status.json` checked field by field while traffic flows, and `GET /` loaded in a
//! real headless Chromium (`--dump-dom` and `--screenshot`) after an operator forced
//! a circuit open. `scripts/test.sh` installs Debian's `chromium`; without it the
//! browser test fails and says so.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Sampling interval in these tests (the default is 5 s).
const INTERVAL: Duration = Duration::from_millis(200);
const ADMIN: &str = "admin-secret";

async fn start() -> (RedisServer, redis_sidecar::server::Proxy, SocketAddr) {
    redis_sidecar::status::set_sample_interval(INTERVAL);
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.admin_password = Some(redis_sidecar::config::Secret(ADMIN.into()));
    let proxy = start_proxy(config).await;
    let http = proxy
        .metrics_addr()
        .expect("metrics_addr with metrics_listen set");
    (redis, proxy, http)
}

/// Clients doing SET/GET on db 0 (main) and GET on db 5 (cache) until `stop`.
fn traffic(proxy: SocketAddr, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..3)
        .map(|i| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = AsyncRawClient::connect(proxy).await;
                if i == 2 {
                    assert_eq!(c.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
                }
                let key = format!("status-{i}");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Replies are not checked: with the circuit open they are errors.
                    c.cmd(&[b"SET", key.as_bytes(), b"v"]).await;
                    c.cmd(&[b"GET", key.as_bytes()]).await;
                    n += 2;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                n
            })
        })
        .collect()
}

async fn status_json(http: SocketAddr) -> Value {
    let (code, head, body) = http_get(http, "/status.json").await;
    let head = head.to_ascii_lowercase();
    assert_eq!(code, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("invalid JSON ({e}): {body}"))
}

/// Polls `/status.json` until `ok` holds for the database `name` (at most 10 s).
async fn wait_db(http: SocketAddr, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let j = status_json(http).await;
        let db = db(&j, name).clone();
        if ok(&db) {
            return j;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name}: waited 10 s for {what}; last: {db:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn db<'a>(j: &'a Value, name: &str) -> &'a Value {
    j["databases"]
        .as_array()
        .expect("databases array")
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no database {name} in {j:#}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v:#}"))
}

async fn force_open(proxy: SocketAddr, name: &str) {
    let mut admin = AsyncRawClient::connect(proxy).await;
    assert_eq!(
        admin.cmd(&[b"PROXY", b"AUTH", ADMIN.as_bytes()]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        admin
            .cmd(&[b"PROXY", b"CIRCUIT", name.as_bytes(), b"OPEN"])
            .await,
        b"+OK\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_reports_rates_latency_history_and_forced_open_circuit() {
    let (_redis, proxy, http) = start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = traffic(proxy.local_addr(), &stop);

    let j = wait_db(http, "main", "traffic in the history", |d| {
        d["history"].as_array().is_some_and(|h| h.len() >= 3) && num(d, "ops_per_sec") > 0.0
    })
    .await;
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        (num(&j, "sample_interval_seconds") - 0.2).abs() < 1e-9,
        "{j:#}"
    );
    assert!(
        (num(&j, "history_seconds") - 24.0).abs() < 1e-9,
        "120 samples × 0.2 s"
    );
    assert!(
        num(&j, "clients_connected") >= 3.0,
        "{}",
        j["clients_connected"]
    );
    let dbs = j["databases"].as_array().expect("databases");
    let names: Vec<&str> = dbs.iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, DATABASE_NAMES, "11 databases in index order");
    for (i, d) in dbs.iter().enumerate() {
        assert_eq!(d["db"], i, "{d:#}");
        assert_eq!(d["circuit"], "closed", "{d:#}");
    }
    let main = db(&j, "main");
    let (p50, p99) = (num(main, "p50_ms"), num(main, "p99_ms"));
    assert!(
        p50 > 0.0 && p50 <= p99 && p99 < 1000.0,
        "p50 {p50} p99 {p99}"
    );
    assert_eq!(num(main, "error_rate"), 0.0);
    assert!(
        num(&j, "ops_per_sec") >= num(main, "ops_per_sec"),
        "the sum over databases"
    );
    assert_eq!(main["upstream"], format!("127.0.0.1:{}", _redis.port()));
    let history = main["history"].as_array().expect("history");
    let ts: Vec<f64> = history.iter().map(|h| num(h, "t")).collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "times increase: {ts:?}");
    assert!(history
        .iter()
        .any(|h| num(h, "ops") > 0.0 && h["p99_ms"].is_number()));
    // A database without traffic: zero rates, no latency (null), but probed.
    let idle = wait_db(http, "backup", "a health probe", |d| d["healthy"] == true).await;
    let idle = db(&idle, "backup");
    assert_eq!(num(idle, "ops_per_sec"), 0.0);
    assert!(idle["p99_ms"].is_null(), "{idle:#}");
    assert!(num(idle, "probe_latency_ms") > 0.0, "{idle:#}");
    // cache (db 5) has its own traffic.
    wait_db(http, "cache", "traffic", |d| num(d, "ops_per_sec") > 0.0).await;

    // Forced open: rejected commands are errors, the history records the state.
    force_open(proxy.local_addr(), "main").await;
    let j = wait_db(http, "main", "an open circuit with errors", |d| {
        d["circuit"] == "open"
            && num(d, "error_rate") > 0.5
            && d["history"]
                .as_array()
                .is_some_and(|h| h.iter().any(|s| s["circuit"] == "open"))
    })
    .await;
    let main = db(&j, "main");
    assert_eq!(main["circuit_override"], "forced_open");
    assert!(num(main, "circuit_since_seconds") < 10.0, "{main:#}");
    assert_eq!(db(&j, "cache")["circuit"], "closed");

    // RESETSTATS makes the counters go backwards: never a negative rate.
    let mut admin = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(
        admin.cmd(&[b"PROXY", b"AUTH", ADMIN.as_bytes()]).await,
        b"+OK\r\n"
    );
    assert_eq!(admin.cmd(&[b"PROXY", b"RESETSTATS"]).await, b"+OK\r\n");
    tokio::time::sleep(INTERVAL * 3).await;
    let j = status_json(http).await;
    for d in j["databases"].as_array().expect("databases") {
        for h in d["history"].as_array().expect("history") {
            assert!(num(h, "ops") >= 0.0 && num(h, "errors") >= 0.0, "{h:#}");
        }
    }

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        assert!(c.await.expect("client task") > 0);
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_is_html_with_a_row_and_chart_per_database() {
    let (_redis, proxy, http) = start().await;
    let (code, head, body) = http_get(http, "/").await;
    let head = head.to_ascii_lowercase();
    assert_eq!(code, 200);
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(body.starts_with("<!doctype html>"), "{body}");
    assert_eq!(body.matches("<tr class=\"db ").count(), 11, "{body}");
    assert_eq!(body.matches("<svg class=\"chart\"").count(), 11);
    // Self-contained: no external scripts, styles, images or fonts.
    for external in ["src=", "<link", "@import", "url("] {
        assert!(
            !body.contains(external),
            "external asset ({external}) in {body}"
        );
    }
    // /metrics is still there; others are 404.
    assert_eq!(http_get(http, "/metrics").await.0, 200);
    assert_eq!(http_get(http, "/nope").await.0, 404);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Headless Chromium
// ---------------------------------------------------------------------------------------

/// Chromium's path: `chromium` or `chromium-browser` on PATH. Fails the test if neither.
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        if let Some(dir) = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .find(|d| d.join(name).is_file())
        {
            return dir.join(name);
        }
    }
    panic!(
        "chromium not found (looked for `chromium` and `chromium-browser` on PATH): the status \
         page test loads the page in a real headless browser. Run scripts/test.sh (installs it) \
         or `apt-get install -y chromium`."
    );
}

/// Runs headless Chromium with `args` then `url`; returns stdout. At most 60 s.
fn run_chromium(browser: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let started = Instant::now();
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out.reopen().expect("reopen temp file"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", browser.display()));
    loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            assert!(status.success(), "chromium {args:?} exited with {status}");
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(out.path()).expect("chromium output")
}

/// The `<tr …>…</tr>` of database `index` in a DOM dump.
fn row_of(dom: &str, index: u32) -> &str {
    let id = format!("id=\"db-{index}\"");
    let at = dom
        .find(&id)
        .unwrap_or_else(|| panic!("no row {id} in the DOM: {dom}"));
    let start = dom[..at].rfind("<tr").expect("row start");
    let end = at + dom[at..].find("</tr>").expect("row end");
    &dom[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_headless_chromium_with_an_open_circuit() {
    let browser = chromium();
    let (_redis, proxy, http) = start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = traffic(proxy.local_addr(), &stop);
    wait_db(http, "main", "latency samples", |d| {
        d["history"]
            .as_array()
            .is_some_and(|h| h.iter().filter(|s| s["p99_ms"].is_number()).count() >= 3)
    })
    .await;
    force_open(proxy.local_addr(), "main").await;
    wait_db(http, "main", "open in the history", |d| {
        d["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|s| s["circuit"] == "open"))
    })
    .await;

    let url = format!("http://{http}/");
    let profile = tempfile::tempdir().expect("temp dir");
    let shot = profile.path().join("status.png");
    let started = Instant::now();
    let (dom, png) = tokio::task::spawn_blocking({
        let (browser, profile, shot, url) = (
            browser.clone(),
            profile.path().to_owned(),
            shot.clone(),
            url.clone(),
        );
        move || {
            let dom = run_chromium(&browser, &profile, &["--dump-dom"], &url);
            let arg = format!("--screenshot={}", shot.display());
            run_chromium(&browser, &profile, &[&arg, "--window-size=1280,900"], &url);
            (dom, std::fs::read(&shot).unwrap_or_default())
        }
    })
    .await
    .expect("chromium task");
    eprintln!("chromium: dump-dom + screenshot in {:?}", started.elapsed());

    assert_eq!(
        dom.matches("<tr class=\"db ").count(),
        11,
        "11 database rows: {dom}"
    );
    assert_eq!(
        dom.matches("<svg class=\"chart\"").count(),
        11,
        "a chart per row"
    );
    let main = row_of(&dom, 0);
    assert!(main.contains("class=\"db circuit-open\""), "{main}");
    assert!(
        main.contains("<span class=\"state circuit-open\">open</span>"),
        "{main}"
    );
    assert!(
        main.contains("<polyline"),
        "main's chart draws its latency: {main}"
    );
    let cache = row_of(&dom, 5);
    assert!(
        cache.contains("<span class=\"state circuit-closed\">closed</span>"),
        "{cache}"
    );
    assert!(dom.contains("1 circuit open"), "summary badge");

    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG ({} bytes)",
        png.len()
    );
    assert!(png.len() > 10 * 1024, "screenshot only {} bytes", png.len());
    // For the README: STATUS_SCREENSHOT=docs/status-page.png keeps a copy.
    if let Some(keep) = std::env::var_os("STATUS_SCREENSHOT") {
        std::fs::write(&keep, &png).expect("write STATUS_SCREENSHOT");
    }

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    proxy.shutdown().await;
}
