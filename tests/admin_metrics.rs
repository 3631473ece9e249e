//! The admin surface (README "Admin" and "Prometheus metrics"): `PROXY HEALTH`,
//! `PROXY STATS [db]`, `PROXY RESETSTATS`, `PROXY CIRCUIT <db> OPEN|CLOSE|AUTO`, and
//! `GET /metrics` over plain HTTP, all parsed and checked against what was done.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use redis_sidecar::config::Config;
use support::{
    http_get, info_sections, parse_info, parse_info_section, proxy_config, resp_bulk, start_proxy,
    AsyncRawClient, RedisServer,
};

const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Short timeouts and probe interval for every database.
fn fast(config: &mut Config) {
    for db in &mut config.databases {
        let u = &mut db.upstream;
        u.connect_timeout = Duration::from_millis(500);
        u.command_timeout = Duration::from_millis(500);
        let r = &mut u.resilience;
        r.retry_attempts = 1;
        r.retry_base_delay = Duration::from_millis(20);
        r.retry_max_delay = Duration::from_millis(50);
        r.failure_threshold = 3;
        r.recovery_timeout = Duration::from_secs(2);
        r.health_check_interval = HEALTH_INTERVAL;
    }
}

/// The payload of a bulk reply as text (panics on anything else).
fn bulk_text(reply: &[u8]) -> String {
    text(&support::bulk_payload(reply))
}

/// The `key=value` fields of the line `key:…` in an INFO-style report.
fn fields(report: &str, key: &str) -> HashMap<String, String> {
    let line = report
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} line in:\n{report}"));
    line.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn num(f: &HashMap<String, String>, key: &str) -> f64 {
    f.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {f:?}"))
}

/// The admin password the tests configure.
const ADMIN: &[u8] = b"admin-secret";

/// `config` with an admin password.
fn with_admin(mut config: redis_sidecar::config::Config) -> redis_sidecar::config::Config {
    config.admin_password = Some(redis_sidecar::config::Secret(
        String::from_utf8_lossy(ADMIN).into_owned(),
    ));
    config
}

/// Makes `c` an admin session (PROXY CIRCUIT / RESETSTATS need one).
async fn admin(c: &mut AsyncRawClient) {
    assert_eq!(c.cmd(&[b"PROXY", b"AUTH", ADMIN]).await, b"+OK\r\n");
}

async fn proxy_health(c: &mut AsyncRawClient) -> String {
    bulk_text(&c.cmd(&[b"PROXY", b"HEALTH"]).await)
}

// ---------------------------------------------------------------------------------------
// 7. PROXY HEALTH
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_health_reports_probes_and_notices_a_dead_redis() {
    let mut redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    fast(&mut config);
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;

    // The first probe runs at start; wait (bounded) until every database has one.
    let started = Instant::now();
    let report = loop {
        let report = proxy_health(&mut c).await;
        let probed = (0..11).all(|i| num(&fields(&report, &format!("db{i}")), "probes") >= 1.0);
        if probed {
            break report;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "not every database was probed within 3 s:\n{report}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(info_sections(&report), vec!["Health".to_string()]);
    assert_eq!(parse_info(&report)["overall_healthy"], "1", "{report}");
    for i in 0..11 {
        let db = fields(&report, &format!("db{i}"));
        assert_eq!(db["healthy"], "1", "db{i}: {db:?}");
        assert_eq!(db["circuit"], "closed", "db{i}: {db:?}");
        assert_eq!(db["override"], "auto", "db{i}: {db:?}");
        assert_eq!(db["consecutive_failures"], "0", "db{i}: {db:?}");
        assert_eq!(db["last_error"], "", "db{i}: {db:?}");
        assert!(num(&db, "last_probe_latency_ms") > 0.0, "db{i}: {db:?}");
    }
    assert_eq!(fields(&report, "db5")["name"], "cache");

    redis = tokio::task::spawn_blocking(move || {
        redis.kill();
        redis
    })
    .await
    .unwrap();
    // A couple of probe intervals later (bounded wait), the probes have noticed.
    let killed = Instant::now();
    let report = loop {
        tokio::time::sleep(HEALTH_INTERVAL / 2).await;
        let report = proxy_health(&mut c).await;
        let db0 = fields(&report, "db0");
        if parse_info(&report)["overall_healthy"] == "0"
            && num(&db0, "consecutive_failures") > 0.0
            && !db0["last_error"].is_empty()
        {
            break report;
        }
        assert!(
            killed.elapsed() < HEALTH_INTERVAL * 4,
            "PROXY HEALTH did not notice the dead Redis within {:?}:\n{report}",
            HEALTH_INTERVAL * 4
        );
    };
    eprintln!("{report}");
    let db0 = fields(&report, "db0");
    assert_eq!(db0["healthy"], "0", "{db0:?}");
    assert!(
        db0["last_error"].contains(&format!("127.0.0.1:{}", redis.port())),
        "last_error should name the upstream: {db0:?}"
    );
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 8. PROXY STATS / RESETSTATS
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_stats_counts_per_command_selects_a_db_and_resets() {
    let redis = RedisServer::start();
    let proxy = start_proxy(with_admin(proxy_config(&redis))).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    admin(&mut c).await;
    const N: usize = 7;
    const M: usize = 5;
    for i in 0..M {
        let v = i.to_string();
        assert_eq!(c.cmd(&[b"SET", b"k", v.as_bytes()]).await, b"+OK\r\n");
    }
    for _ in 0..N {
        assert_eq!(c.cmd(&[b"GET", b"k"]).await, resp_bulk(b"4"));
    }

    let all = bulk_text(&c.cmd(&[b"PROXY", b"STATS"]).await);
    assert_eq!(info_sections(&all).len(), 11, "{all}");
    let db0 = parse_info_section(&all, "Stats db0 (main)");
    assert!(!db0.is_empty(), "{all}");
    let field = |line: &str| -> HashMap<String, String> {
        line.split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let get = field(&db0["cmd_get"]);
    let set = field(&db0["cmd_set"]);
    let agg = field(&db0["all"]);
    assert_eq!(get["total"], N.to_string(), "{get:?}");
    assert_eq!(get["succeeded"], N.to_string(), "{get:?}");
    assert_eq!(set["total"], M.to_string(), "{set:?}");
    assert_eq!(agg["total"], (N + M).to_string(), "{agg:?}");
    assert_eq!(agg["failed"], "0", "{agg:?}");
    for (name, s) in [("cmd_get", &get), ("cmd_set", &set), ("all", &agg)] {
        let (p50, p99) = (num(s, "p50_ms"), num(s, "p99_ms"));
        assert!(p50 > 0.0 && p99 > 0.0, "{name}: {s:?}");
        assert!(p50 <= p99 && p99 <= num(s, "max_ms"), "{name}: {s:?}");
        assert!(num(s, "avg_ms") > 0.0, "{name}: {s:?}");
    }
    // db 5 saw nothing.
    let db5 = parse_info_section(&all, "Stats db5 (cache)");
    assert_eq!(field(&db5["all"])["total"], "0", "{db5:?}");
    assert!(!db5.contains_key("cmd_get"), "{db5:?}");

    // One database, by name or by index.
    for key in [&b"main"[..], b"0"] {
        let one = bulk_text(&c.cmd(&[b"PROXY", b"STATS", key]).await);
        assert_eq!(info_sections(&one), vec!["Stats db0 (main)".to_string()]);
        assert_eq!(field(&parse_info(&one)["cmd_get"])["total"], N.to_string());
    }
    let five = bulk_text(&c.cmd(&[b"PROXY", b"STATS", b"cache"]).await);
    assert_eq!(info_sections(&five), vec!["Stats db5 (cache)".to_string()]);
    for bad in [&b"nosuchdb"[..], b"42"] {
        let r = text(&c.cmd(&[b"PROXY", b"STATS", bad]).await);
        assert!(r.starts_with("-ERR no such database"), "{r}");
    }

    assert_eq!(c.cmd(&[b"PROXY", b"RESETSTATS"]).await, b"+OK\r\n");
    let after = bulk_text(&c.cmd(&[b"PROXY", b"STATS", b"main"]).await);
    let after = parse_info(&after);
    let agg = field(&after["all"]);
    assert_eq!(agg["total"], "0", "{agg:?}");
    assert_eq!(num(&agg, "p99_ms"), 0.0, "{agg:?}");
    assert!(
        after
            .get("cmd_get")
            .is_none_or(|l| field(l)["total"] == "0"),
        "{after:?}"
    );
    // And counting starts again from zero.
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, resp_bulk(b"4"));
    let again = parse_info(&bulk_text(&c.cmd(&[b"PROXY", b"STATS", b"0"]).await));
    assert_eq!(field(&again["cmd_get"])["total"], "1");
    assert_eq!(field(&again["all"])["total"], "1");
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 9. PROXY CIRCUIT
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_circuit_forces_one_database_open_and_back() {
    let redis = RedisServer::start();
    let proxy = start_proxy(with_admin(proxy_config(&redis))).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    admin(&mut c).await;
    let mut c5 = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c5.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_eq!(c5.cmd(&[b"SET", b"k", b"five"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"k", b"zero"]).await, b"+OK\r\n");

    assert_eq!(
        c.cmd(&[b"PROXY", b"CIRCUIT", b"cache", b"OPEN"]).await,
        b"+OK\r\n"
    );
    for cmd in [&[&b"GET"[..], b"k"][..], &[b"SET", b"k", b"x"]] {
        let r = text(&c5.cmd(cmd).await);
        assert_eq!(
            r,
            "-CIRCUITOPEN database 'cache' (db 5) is unavailable (circuit forced open by an operator)\r\n"
        );
    }
    let health = proxy_health(&mut c).await;
    let db5 = fields(&health, "db5");
    assert_eq!(db5["circuit"], "open", "{db5:?}");
    assert_eq!(db5["override"], "forced_open", "{db5:?}");
    // db 0 is unaffected.
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, resp_bulk(b"zero"));
    assert_eq!(fields(&health, "db0")["circuit"], "closed");

    assert_eq!(
        c.cmd(&[b"PROXY", b"CIRCUIT", b"cache", b"AUTO"]).await,
        b"+OK\r\n"
    );
    // Traffic flows again at once. (From forced open the breaker resumes half-open:
    // `success_threshold` (2) successful trials close it.)
    let db5 = fields(&proxy_health(&mut c).await, "db5");
    assert_eq!(db5["override"], "auto", "{db5:?}");
    assert_ne!(db5["circuit"], "open", "{db5:?}");
    assert_eq!(c5.cmd(&[b"GET", b"k"]).await, resp_bulk(b"five"));
    assert_eq!(c5.cmd(&[b"GET", b"k"]).await, resp_bulk(b"five"));
    let db5 = fields(&proxy_health(&mut c).await, "db5");
    assert_eq!(db5["circuit"], "closed", "{db5:?}");
    assert_eq!(db5["healthy"], "1", "{db5:?}");

    let r = text(&c.cmd(&[b"PROXY", b"CIRCUIT", b"cache", b"HALFWAY"]).await);
    assert!(
        r.starts_with("-ERR PROXY CIRCUIT <db> OPEN|CLOSE|AUTO"),
        "{r}"
    );
    let r = text(&c.cmd(&[b"PROXY", b"CIRCUIT", b"nosuchdb", b"OPEN"]).await);
    assert!(r.starts_with("-ERR no such database"), "{r}");
    // Neither changed anything.
    assert_eq!(c5.cmd(&[b"GET", b"k"]).await, resp_bulk(b"five"));
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 10. GET /metrics
// ---------------------------------------------------------------------------------------

/// A sample's identity: metric name and its labels (sorted).
type Series = (String, BTreeMap<String, String>);

/// Parses `name{k="v",…} value` lines (comments skipped).
fn parse_metrics(body: &str) -> HashMap<Series, f64> {
    let mut out = HashMap::new();
    for line in body.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let rest = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let labels = rest
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv
                            .split_once('=')
                            .unwrap_or_else(|| panic!("bad label in {line:?}"));
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        out.insert((name, labels), value);
    }
    out
}

fn sample(m: &HashMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let key = (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    m.get(&key).copied()
}

async fn scrape(addr: SocketAddr) -> HashMap<Series, f64> {
    let (status, head, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    parse_metrics(&body)
}

const GETS_OK: &str = "redis_sidecar_commands_total";

fn get_succeeded(m: &HashMap<Series, f64>) -> f64 {
    sample(
        m,
        GETS_OK,
        &[("db", "main"), ("command", "get"), ("outcome", "succeeded")],
    )
    .unwrap_or(0.0)
}

/// Scrapes until `name{labels}` equals `want` (bounded: sessions end asynchronously).
async fn wait_sample(addr: SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) {
    let started = Instant::now();
    loop {
        let m = scrape(addr).await;
        let got = sample(&m, name, labels);
        if got == Some(want) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{name}{labels:?} is {got:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_counters_circuit_state_and_client_gauge() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let proxy = start_proxy(with_admin(config)).await;
    let metrics = proxy
        .metrics_addr()
        .expect("metrics_addr with metrics_listen set");
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    admin(&mut c).await;
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, resp_bulk(b"v"));

    let (status, head, _) = http_get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text")
            || head
                .to_ascii_lowercase()
                .contains("content-type: text/plain"),
        "{head}"
    );

    // Command counter: exactly the GETs sent between two scrapes.
    let before = scrape(metrics).await;
    assert_eq!(get_succeeded(&before), 1.0);
    const K: usize = 9;
    for _ in 0..K {
        assert_eq!(c.cmd(&[b"GET", b"k"]).await, resp_bulk(b"v"));
    }
    let after = scrape(metrics).await;
    assert_eq!(
        get_succeeded(&after) - get_succeeded(&before),
        K as f64,
        "redis_sidecar_commands_total{{db=\"main\",command=\"get\",outcome=\"succeeded\"}}"
    );
    let all_ok = sample(
        &after,
        GETS_OK,
        &[("db", "main"), ("command", "all"), ("outcome", "succeeded")],
    );
    assert_eq!(all_ok, Some((K + 2) as f64));
    let p99 = sample(
        &after,
        "redis_sidecar_command_latency_seconds",
        &[("db", "main"), ("command", "get"), ("quantile", "0.99")],
    );
    assert!(p99.is_some_and(|v| v > 0.0), "{p99:?}");

    // Circuit state gauge follows the operator override.
    let cache = [("db", "cache")];
    assert_eq!(
        sample(&after, "redis_sidecar_circuit_state", &cache),
        Some(0.0)
    );
    assert_eq!(
        c.cmd(&[b"PROXY", b"CIRCUIT", b"cache", b"OPEN"]).await,
        b"+OK\r\n"
    );
    let m = scrape(metrics).await;
    assert_eq!(sample(&m, "redis_sidecar_circuit_state", &cache), Some(2.0));
    assert_eq!(
        sample(&m, "redis_sidecar_circuit_state", &[("db", "main")]),
        Some(0.0)
    );
    assert_eq!(
        c.cmd(&[b"PROXY", b"CIRCUIT", b"cache", b"AUTO"]).await,
        b"+OK\r\n"
    );
    // Not open any more; closed once `success_threshold` (2) trials have succeeded
    // (from forced open the breaker resumes half-open).
    let m = scrape(metrics).await;
    let state = sample(&m, "redis_sidecar_circuit_state", &cache);
    assert!(matches!(state, Some(s) if s < 2.0), "{state:?}");
    let mut c5 = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c5.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    for _ in 0..2 {
        assert_eq!(c5.cmd(&[b"GET", b"k"]).await, b"$-1\r\n");
    }
    drop(c5);
    let m = scrape(metrics).await;
    assert_eq!(sample(&m, "redis_sidecar_circuit_state", &cache), Some(0.0));

    // Connected clients gauge.
    let gauge = "redis_sidecar_clients_connected";
    wait_sample(metrics, gauge, &[], 1.0).await;
    let mut extra = Vec::new();
    for _ in 0..3 {
        let mut x = AsyncRawClient::connect(proxy.local_addr()).await;
        assert_eq!(x.cmd(&[b"PING"]).await, b"+PONG\r\n");
        extra.push(x);
    }
    wait_sample(metrics, gauge, &[], 4.0).await;
    extra.truncate(1);
    wait_sample(metrics, gauge, &[], 2.0).await;
    let m = scrape(metrics).await;
    assert_eq!(
        sample(&m, "redis_sidecar_client_connections_total", &[]),
        Some(5.0),
        "c, c5 and 3 extra clients"
    );

    // Unknown paths are 404.
    let (status, _, body) = http_get(metrics, "/nope").await;
    assert_eq!(status, 404, "{body}");
    drop(extra);
    proxy.shutdown().await;
}

/// Without an admin session, nobody can change the proxy: PROXY CIRCUIT and
/// RESETSTATS are refused; a wrong admin password is refused; reading stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_proxy_needs_an_admin_session() {
    let redis = RedisServer::start();
    // No admin_password at all: no one can.
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    for cmd in [
        &[&b"PROXY"[..], b"CIRCUIT", b"main", b"OPEN"][..],
        &[b"PROXY", b"RESETSTATS"],
    ] {
        let r = text(&c.cmd(cmd).await);
        assert!(
            r.starts_with("-NOPERM PROXY CIRCUIT and PROXY RESETSTATS need an admin session"),
            "{r}"
        );
    }
    let r = text(&c.cmd(&[b"PROXY", b"AUTH", b"anything"]).await);
    assert!(r.starts_with("-ERR PROXY AUTH: no admin_password"), "{r}");
    assert!(bulk_text(&c.cmd(&[b"PROXY", b"INFO", b"circuits"]).await).contains("state=closed"));
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    proxy.shutdown().await;
    // With one: a wrong password is refused, the right one makes an admin, and
    // RESET takes it away.
    let proxy = start_proxy(with_admin(proxy_config(&redis))).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let r = text(&c.cmd(&[b"PROXY", b"AUTH", b"guess"]).await);
    assert!(r.starts_with("-WRONGPASS"), "{r}");
    let r = text(&c.cmd(&[b"PROXY", b"CIRCUIT", b"main", b"OPEN"]).await);
    assert!(r.starts_with("-NOPERM"), "{r}");
    admin(&mut c).await;
    assert_eq!(
        c.cmd(&[b"PROXY", b"CIRCUIT", b"main", b"AUTO"]).await,
        b"+OK\r\n"
    );
    assert_eq!(c.cmd(&[b"RESET"]).await, b"+RESET\r\n");
    let r = text(&c.cmd(&[b"PROXY", b"RESETSTATS"]).await);
    assert!(r.starts_with("-NOPERM"), "{r}");
    proxy.shutdown().await;
}

/// `admin_only_info: true`: the reports (PROXY INFO, HEALTH, STATS) need an admin
/// session too; HELP and AUTH stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_only_info_makes_the_reports_need_an_admin_session() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.admin_password = Some(redis_sidecar::config::Secret("admin-pw".into()));
    config.admin_only_info = true;
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    for sub in [
        &[&b"PROXY"[..], b"INFO"][..],
        &[b"PROXY", b"HEALTH"],
        &[b"PROXY", b"STATS"],
    ] {
        let r = text(&c.cmd(sub).await);
        assert!(
            r.starts_with("-NOPERM PROXY INFO, HEALTH and STATS need an admin session"),
            "{r}"
        );
    }
    assert!(c.cmd(&[b"PROXY", b"HELP"]).await.starts_with(b"*"));
    assert_eq!(c.cmd(&[b"PROXY", b"AUTH", b"admin-pw"]).await, b"+OK\r\n");
    assert!(text(&c.cmd(&[b"PROXY", b"INFO", b"clients"]).await).contains("max_clients:"));
    assert!(text(&c.cmd(&[b"PROXY", b"HEALTH"]).await).contains("overall_healthy"));
    proxy.shutdown().await;
}

/// `deny_commands: [proxy]` is a valid name and refuses PROXY (all of it, AUTH
/// included) on that database like any denied command; other databases keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_can_be_denied_like_any_command() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.databases[0]
        .upstream
        .deny_commands
        .push("proxy".into());
    redis_sidecar::router::validate_deny_commands(&config).expect("proxy is a valid name");
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    for sub in [
        &[&b"PROXY"[..], b"INFO"][..],
        &[b"PROXY", b"AUTH", b"x"],
        &[b"PROXY", b"HELP"],
    ] {
        let r = text(&c.cmd(sub).await);
        assert_eq!(
            r,
            "-NOPERM 'proxy' is denied by redis-sidecar's deny_commands for database 'main' (db 0)\r\n"
        );
    }
    assert_eq!(c.cmd(&[b"SELECT", b"1"]).await, b"+OK\r\n");
    assert!(text(&c.cmd(&[b"PROXY", b"INFO", b"clients"]).await).contains("# Clients"));
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// PROXY SLOWLOG
// ---------------------------------------------------------------------------------------

/// Slow batches on the shared connection are logged, newest first, with Redis's
/// SLOWLOG fields (id, time, microseconds, the commands, client address and name)
/// and the database; never argument values. RESET needs an admin session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_slowlog_keeps_slow_batches_without_their_arguments() {
    let redis = RedisServer::start_with_args(&["--enable-debug-command", "yes"]);
    let mut config = proxy_config(&redis);
    config.admin_password = Some(redis_sidecar::config::Secret(text(ADMIN)));
    config.slowlog_threshold = Duration::from_millis(20);
    config.slowlog_max_len = 2;
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let addr = c.stream_mut().local_addr().expect("local addr").to_string();

    // Fast commands are not logged.
    assert_eq!(
        c.cmd(&[b"SET", b"secret-key", b"secret-value"]).await,
        b"+OK\r\n"
    );
    assert_eq!(c.cmd(&[b"PROXY", b"SLOWLOG", b"LEN"]).await, b":0\r\n");

    // A slow one is, with the client's name and the database.
    assert_eq!(c.cmd(&[b"CLIENT", b"SETNAME", b"app"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"DEBUG", b"SLEEP", b"0.03"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"PROXY", b"SLOWLOG", b"LEN"]).await, b":1\r\n");
    let got = text(&c.cmd(&[b"PROXY", b"SLOWLOG", b"GET"]).await);
    let fields: Vec<&str> = got.split("\r\n").collect();
    assert_eq!(&fields[..3], &["*1", "*7", ":0"], "{got}");
    let micros: u64 = fields[4].trim_start_matches(':').parse().expect("micros");
    assert!((30_000..5_000_000).contains(&micros), "{got}");
    assert!(
        got.ends_with(&format!(
            "*1\r\n$5\r\ndebug\r\n${}\r\n{addr}\r\n$3\r\napp\r\n$13\r\n'main' (db 0)\r\n",
            addr.len()
        )),
        "{got}"
    );

    // A slow pipeline is one entry naming its commands; argument values never
    // appear. The log keeps slowlog_max_len entries, newest first.
    let mut pipeline = support::resp_cmd(&[b"GET", b"secret-key"]);
    pipeline.extend(support::resp_cmd(&[b"DEBUG", b"SLEEP", b"0.03"]));
    pipeline.extend(support::resp_cmd(&[b"INCR", b"n"]));
    c.send(&pipeline).await;
    let replies = c.read_replies(3).await;
    assert_eq!(replies[2], b":1\r\n");
    assert_eq!(c.cmd(&[b"DEBUG", b"SLEEP", b"0.03"]).await, b"+OK\r\n");
    let got = text(&c.cmd(&[b"PROXY", b"SLOWLOG", b"GET", b"-1"]).await);
    assert!(got.starts_with("*2\r\n*7\r\n:2\r\n"), "newest first: {got}");
    assert!(
        got.contains("*3\r\n$3\r\nget\r\n$5\r\ndebug\r\n$4\r\nincr\r\n"),
        "{got}"
    );
    assert!(!got.contains("secret"), "argument values leaked: {got}");
    assert_eq!(
        c.cmd(&[b"PROXY", b"SLOWLOG", b"GET", b"1"]).await[..4],
        *b"*1\r\n"
    );

    // RESET is for admins.
    let refused = text(&c.cmd(&[b"PROXY", b"SLOWLOG", b"RESET"]).await);
    assert!(refused.starts_with("-NOPERM"), "{refused}");
    admin(&mut c).await;
    assert_eq!(c.cmd(&[b"PROXY", b"SLOWLOG", b"RESET"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"PROXY", b"SLOWLOG", b"LEN"]).await, b":0\r\n");
}

// ---------------------------------------------------------------------------------------
// PROXY CLIENTS
// ---------------------------------------------------------------------------------------

/// `PROXY CLIENTS`: a line per client with the mode it is in and what the proxy
/// holds for it (pending replies, bytes waiting to be written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_clients_shows_each_clients_mode_and_buffers() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let addr = proxy.local_addr();
    let mut plain = AsyncRawClient::connect(addr).await;
    assert_eq!(
        plain.cmd(&[b"CLIENT", b"SETNAME", b"plain"]).await,
        b"+OK\r\n"
    );
    let mut sub = AsyncRawClient::connect(addr).await;
    assert_eq!(sub.cmd(&[b"CLIENT", b"SETNAME", b"sub"]).await, b"+OK\r\n");
    sub.cmd(&[b"SUBSCRIBE", b"ch"]).await;
    let mut tx = AsyncRawClient::connect(addr).await;
    assert_eq!(tx.cmd(&[b"CLIENT", b"SETNAME", b"tx"]).await, b"+OK\r\n");
    assert_eq!(tx.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    let mut blocked = AsyncRawClient::connect(addr).await;
    assert_eq!(
        blocked.cmd(&[b"CLIENT", b"SETNAME", b"blocked"]).await,
        b"+OK\r\n"
    );
    blocked
        .send(&support::resp_cmd(&[b"BLPOP", b"nothing", b"5"]))
        .await;
    // A slow reader: 64 KiB values, requested and never read.
    let mut slow = AsyncRawClient::connect(addr).await;
    assert_eq!(
        slow.cmd(&[b"CLIENT", b"SETNAME", b"slow"]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        slow.cmd(&[b"SET", b"big", &vec![b'v'; 64 * 1024]]).await,
        b"+OK\r\n"
    );
    let get = support::resp_cmd(&[b"GET", b"big"]);
    let many: Vec<u8> = get.iter().copied().cycle().take(get.len() * 2000).collect();
    let write = tokio::io::AsyncWriteExt::write_all(slow.stream_mut(), &many);
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;

    let mut admin = AsyncRawClient::connect(addr).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let report = bulk_text(&admin.cmd(&[b"PROXY", b"CLIENTS"]).await);
        let lines: HashMap<String, HashMap<String, String>> = report
            .lines()
            .map(|l| {
                let f: HashMap<String, String> = l
                    .split(' ')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (f.get("name").cloned().unwrap_or_default(), f)
            })
            .collect();
        let ready = lines
            .get("blocked")
            .is_some_and(|f| f["mode"] == "blocking")
            && lines
                .get("slow")
                .is_some_and(|f| f["buffered"].parse::<u64>().unwrap_or(0) > 0);
        if ready || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mode = |name: &str| lines[name]["mode"].clone();
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(mode("plain"), "shared");
    assert_eq!(mode("sub"), "subscribed");
    assert_eq!(mode("tx"), "transaction");
    assert_eq!(mode("blocked"), "blocking");
    let slow_line = &lines["slow"];
    // Replies wait for it, about client_reply_buffer (4 MiB) of them: backpressure
    // stopped reading its requests there.
    let buffered: u64 = slow_line["buffered"].parse().unwrap_or(0);
    assert!((64 * 1024..8 << 20).contains(&buffered), "{slow_line:?}");
    assert!(
        slow_line["memory"].parse::<u64>().unwrap_or(0) >= buffered,
        "{slow_line:?}"
    );
    assert_eq!(lines["plain"]["buffered"], "0");
    assert_eq!(lines["plain"]["cmd"], "client|setname");
    assert_eq!(lines["plain"]["db"], "0");
}
