//! Sentinel-backed databases (issue 10, part 3): the proxy finds the primary through
//! real sentinels (tests/support/sentinel.rs: 1 primary, 1 replica, 3 sentinels per
//! test), follows a failover without a restart, moves on `-READONLY`, answers
//! clearly when no sentinel is up, and refuses bad `sentinel` configuration.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redis_sidecar::config::Config;
use support::sentinel::{SentinelGroup, MASTER};
use support::{free_port, redis_cli, resp_cmd, BinaryProxy, RawClient};

/// One database (`main`, db 0) behind the sentinels `nodes`, plus `extra` YAML.
fn yaml(nodes: &[String], extra: &str) -> String {
    let nodes: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "redis_databases:\n  main:\n    db: 0\n    sentinel:\n      nodes: [{}]\n      master: {MASTER}\n{extra}",
        nodes.join(", ")
    )
}

/// The `# Databases` line of db 0 in `PROXY INFO databases`.
fn info_db0(proxy: &BinaryProxy) -> String {
    let (out, _) = redis_cli(proxy.port(), &["PROXY", "INFO", "databases"]);
    out.lines()
        .find(|l| l.starts_with("db0:"))
        .unwrap_or_default()
        .to_string()
}

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).into_owned()
}

#[test]
fn commands_pipeline_transaction_blocking_and_pubsub_through_sentinel() {
    let group = SentinelGroup::start_with_password(Some("sentinel-secret"));
    let extra = "      password: sentinel-secret\n";
    let proxy = BinaryProxy::start_with(&yaml(&group.nodes(), extra), &[], &[]);
    let mut c = proxy.client();
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]), b"$1\r\nv\r\n");
    // It is the primary that has it.
    let (on_primary, _) = redis_cli(group.primary.port(), &["GET", "k"]);
    assert_eq!(on_primary.trim(), "v");
    // A pipeline, in order.
    let mut bytes = resp_cmd(&[b"RPUSH", b"l", b"a"]);
    bytes.extend(resp_cmd(&[b"RPUSH", b"l", b"b"]));
    bytes.extend(resp_cmd(&[b"LRANGE", b"l", b"0", b"-1"]));
    c.send(&bytes);
    assert_eq!(
        c.read_replies(3),
        vec![
            b":1\r\n".to_vec(),
            b":2\r\n".to_vec(),
            b"*2\r\n$1\r\na\r\n$1\r\nb\r\n".to_vec()
        ]
    );
    // A transaction.
    assert_eq!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"INCR", b"n"]), b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"INCR", b"n"]), b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]), b"*2\r\n:1\r\n:2\r\n");
    // A blocking command, woken by another client.
    let mut blocked = proxy.client();
    blocked.send(&resp_cmd(&[b"BLPOP", b"q", b"5"]));
    thread::sleep(Duration::from_millis(200));
    assert_eq!(c.cmd(&[b"RPUSH", b"q", b"x"]), b":1\r\n");
    assert_eq!(blocked.read_reply(), b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n");
    // Pub/sub.
    let mut sub = proxy.client();
    assert_eq!(
        sub.cmd(&[b"SUBSCRIBE", b"ch"]),
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    assert_eq!(c.cmd(&[b"PUBLISH", b"ch", b"hi"]), b":1\r\n");
    assert_eq!(
        sub.read_reply(),
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
    );
    // PROXY INFO names the master, the primary, no failover.
    let line = info_db0(&proxy);
    let primary = format!("127.0.0.1:{}", group.primary.port());
    assert!(
        line.contains(&format!("sentinel_master={MASTER}")),
        "{line}"
    );
    assert!(line.contains(&format!("primary={primary}")), "{line}");
    assert!(line.contains(&format!("upstream={primary}")), "{line}");
    assert!(line.contains("failovers=0"), "{line}");
    // `redis-sidecar check` finds the primary too.
    let checked = std::process::Command::new(BinaryProxy::bin_path())
        .arg("check")
        .arg("--config")
        .arg(proxy.config_path())
        .output()
        .expect("run redis-sidecar check");
    let out = text(&checked.stdout);
    assert!(out.contains(&primary), "{out}{}", text(&checked.stderr));
    // The sentinels' password never shows in the --check-config report.
    let check = std::process::Command::new(BinaryProxy::bin_path())
        .arg("--config")
        .arg(proxy.config_path())
        .arg("--check-config")
        .output()
        .expect("run --check-config");
    let out = text(&check.stdout);
    assert!(check.status.success(), "{out}");
    assert!(!out.contains("sentinel-secret"), "{out}");
    assert!(out.contains(&format!("master: {MASTER}")), "{out}");
    assert!(out.contains("password: \"***\""), "{out}");
    // A reload that changes only the deny list keeps the primary the watcher
    // found (the new configuration's endpoint would start unresolved) and the
    // connections.
    std::fs::write(
        proxy.config_path(),
        format!("{}deny_commands: [keys]\n", yaml(&group.nodes(), extra)),
    )
    .expect("write config");
    proxy.send_signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.cmd(&[b"KEYS", b"*"]).starts_with(b"-") {
        assert!(
            Instant::now() < deadline,
            "reload not applied: {}",
            proxy.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let line = info_db0(&proxy);
    assert!(line.contains(&format!("primary={primary}")), "{line}");
    assert_eq!(c.cmd(&[b"GET", b"k"]), b"$1\r\nv\r\n");
}

/// What one writer saw.
#[derive(Default)]
struct Writer {
    /// Ids Redis acknowledged (`RPUSH` answered with an integer).
    acked: Vec<(u64, Instant)>,
    /// Ids acknowledged by `WAIT 1` too (on the replica as well).
    replicated: Vec<u64>,
    /// Acknowledged writes after the kill, and when the first was.
    after_kill: usize,
    first_after_kill: Option<Instant>,
    errors: usize,
}

/// Writes ids 0, 1, 2 … to `log:<me>` until `stop`. With `wait`, each write is
/// `WATCH` + `RPUSH` + `WAIT 1 1000` + `UNWATCH` on one held connection, so the
/// WAIT covers it.
fn write_ids(
    addr: std::net::SocketAddr,
    me: usize,
    wait: bool,
    stop: Arc<AtomicBool>,
    killed: Arc<std::sync::Mutex<Option<Instant>>>,
) -> Writer {
    let mut w = Writer::default();
    let key = format!("log:{me}");
    let mut client: Option<RawClient> = None;
    let mut id = 0u64;
    let started = Instant::now();
    while !stop.load(Relaxed) && started.elapsed() < Duration::from_secs(40) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match RawClient::try_connect_timeout(addr, Duration::from_secs(5)) {
                Ok(c) => client.insert(c),
                Err(_) => {
                    w.errors += 1;
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        let sid = id.to_string();
        let mut bytes = Vec::new();
        if wait {
            bytes.extend(resp_cmd(&[b"WATCH", b"guard"]));
        }
        bytes.extend(resp_cmd(&[b"RPUSH", key.as_bytes(), sid.as_bytes()]));
        if wait {
            bytes.extend(resp_cmd(&[b"WAIT", b"1", b"1000"]));
            bytes.extend(resp_cmd(&[b"UNWATCH"]));
        }
        let n = if wait { 4 } else { 1 };
        let replies: std::io::Result<Vec<Vec<u8>>> = c
            .try_send(&bytes)
            .and_then(|()| (0..n).map(|_| c.try_read_reply()).collect());
        id += 1;
        let Ok(replies) = replies else {
            w.errors += 1;
            client = None;
            continue;
        };
        let push = &replies[usize::from(wait)];
        if push.first() == Some(&b':') {
            let now = Instant::now();
            w.acked.push((id - 1, now));
            if killed.lock().unwrap().is_some_and(|k| now > k) {
                w.after_kill += 1;
                w.first_after_kill.get_or_insert(now);
            }
            if wait && replies[2].starts_with(b":") && replies[2] != b":0\r\n" {
                w.replicated.push(id - 1);
            }
        } else {
            w.errors += 1;
            thread::sleep(Duration::from_millis(20));
        }
    }
    w
}

#[test]
fn killing_the_primary_under_load_fails_over_without_restart() {
    failover_under_load(false);
}

/// The primary hangs (SIGSTOP) instead: the writes in flight on it time out and
/// are not resent; once the sentinels have moved, it resumes (and is demoted by
/// them) while the proxy keeps writing to the new primary.
#[test]
fn a_hung_primary_is_failed_over_and_its_return_changes_nothing() {
    failover_under_load(true);
}

fn failover_under_load(hang: bool) {
    let mut group = SentinelGroup::start();
    // The breaker may open while the primary is gone; a new primary resets it.
    let extra = "connect_timeout: 1\ncommand_timeout: 2\n";
    let proxy = BinaryProxy::start_with(&yaml(&group.nodes(), extra), &[], &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(std::sync::Mutex::new(None));
    const PLAIN: usize = 12;
    const WAITING: usize = 12;
    let writers: Vec<_> = (0..PLAIN + WAITING)
        .map(|i| {
            let (stop, killed, addr) = (stop.clone(), killed.clone(), proxy.addr());
            thread::spawn(move || write_ids(addr, i, i >= PLAIN, stop, killed))
        })
        .collect();
    thread::sleep(Duration::from_millis(1500));
    let old = group.primary.port();
    let new = group.replica.port();
    if hang {
        group.primary.pause();
    } else {
        group.primary.kill();
    }
    *killed.lock().unwrap() = Some(Instant::now());
    group.wait_primary(new, Duration::from_secs(30));
    if hang {
        group.primary.resume();
    }
    // Every writer gets writes through again, without a proxy restart.
    let deadline = Instant::now() + Duration::from_secs(15);
    let recovered = || {
        let line = info_db0(&proxy);
        line.contains(&format!("primary=127.0.0.1:{new}"))
    };
    while !recovered() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Relaxed);
    let results: Vec<Writer> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    let killed_at = killed.lock().unwrap().unwrap();

    let line = info_db0(&proxy);
    assert!(line.contains(&format!("primary=127.0.0.1:{new}")), "{line}");
    assert!(line.contains("failovers=1"), "{line}");
    assert!(
        proxy.log().contains("the primary changed"),
        "no log line for the switch:\n{}",
        proxy.log()
    );

    let (mut lost_plain, mut lost_replicated, mut late_losses, mut dups) = (0, 0, 0, 0);
    let (mut acked_total, mut replicated_total) = (0, 0);
    for (i, w) in results.iter().enumerate() {
        assert!(
            w.after_kill > 0,
            "writer {i} never wrote after the failover ({} errors)",
            w.errors
        );
        let (out, _) = redis_cli(new, &["LRANGE", &format!("log:{i}"), "0", "-1"]);
        let mut seen: HashMap<u64, u32> = HashMap::new();
        for l in out.lines().filter(|l| !l.trim().is_empty()) {
            *seen.entry(l.trim().parse().unwrap()).or_default() += 1;
        }
        dups += seen.values().filter(|&&n| n > 1).count();
        acked_total += w.acked.len();
        replicated_total += w.replicated.len();
        for (id, at) in &w.acked {
            if !seen.contains_key(id) {
                lost_plain += 1;
                // Asynchronous replication loses at most what was acknowledged
                // just before the kill; anything older was long replicated.
                if *at + Duration::from_secs(1) < killed_at {
                    late_losses += 1;
                }
            }
        }
        lost_replicated += w
            .replicated
            .iter()
            .filter(|id| !seen.contains_key(id))
            .count();
    }
    let recovered_after: Vec<Duration> = results
        .iter()
        .filter_map(|w| w.first_after_kill.map(|t| t - killed_at))
        .collect();
    println!(
        "failover ({}) {old} -> {new}: {acked_total} acknowledged writes ({replicated_total} also by WAIT 1), \
         lost {lost_plain} acknowledged (of which WAIT-acknowledged {lost_replicated}), duplicates {dups}; \
         first write through after the kill: {:?} .. {:?}",
        if hang { "SIGSTOP, SIGCONT later" } else { "SIGKILL" },
        recovered_after.iter().min(),
        recovered_after.iter().max()
    );
    assert_eq!(dups, 0, "an id was written twice");
    assert_eq!(
        lost_replicated, 0,
        "a write acknowledged by WAIT 1 was lost"
    );
    assert_eq!(
        late_losses, 0,
        "writes acknowledged more than 1 s before the kill were lost"
    );
    assert!(replicated_total > 0);
}

#[test]
fn switch_master_is_followed_after_the_subscribed_sentinel_is_lost() {
    let mut group = SentinelGroup::start();
    // No periodic lookup and no traffic: only +switch-master can move the proxy.
    let extra = "health_check_interval: 60\n";
    let proxy = BinaryProxy::start_with(
        &yaml(&group.nodes(), extra),
        &["--metrics-listen", "127.0.0.1:0"],
        &[],
    );
    let old = format!("primary=127.0.0.1:{}", group.primary.port());
    assert!(
        proxy
            .metrics()
            .contains("redis_sidecar_sentinel_failovers_total{db=\"main\"} 0"),
        "{}",
        proxy.metrics()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !info_db0(&proxy).contains(&old) {
        assert!(Instant::now() < deadline, "{}", info_db0(&proxy));
        thread::sleep(Duration::from_millis(50));
    }
    // The watcher subscribed to the first sentinel; it goes, the next takes over.
    thread::sleep(Duration::from_millis(300));
    group.sentinels[0].kill();
    thread::sleep(Duration::from_millis(500));
    let out = group.ask(1, &["SENTINEL", "FAILOVER", MASTER]);
    assert!(out.contains("OK"), "{out}");
    let new = group.replica.port();
    let moved = format!("primary=127.0.0.1:{new}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !info_db0(&proxy).contains(&moved) {
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            info_db0(&proxy),
            proxy.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let log = proxy.log();
    assert!(log.contains("via=\"+switch-master\""), "{log}");
    assert!(
        log.contains("lost the +switch-master subscription"),
        "{log}"
    );
    assert!(info_db0(&proxy).contains("failovers=1"));
    assert!(
        proxy
            .metrics()
            .contains("redis_sidecar_sentinel_failovers_total{db=\"main\"} 1"),
        "{}",
        proxy.metrics()
    );
    let mut c = proxy.client();
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    let (on_new, _) = redis_cli(new, &["GET", "k"]);
    assert_eq!(on_new.trim(), "v");
}

#[test]
fn a_silent_sentinel_is_left_for_the_next_one() {
    let group = SentinelGroup::start();
    let extra = "health_check_interval: 0.5\nconnect_timeout: 1\n";
    let proxy = BinaryProxy::start_with(&yaml(&group.nodes(), extra), &[], &[]);
    let mut c = proxy.client();
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    thread::sleep(Duration::from_millis(300));
    // The subscribed sentinel hangs: no reset, no answer.
    group.sentinels[0].pause();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.log().contains("no answer to PING") {
        assert!(Instant::now() < deadline, "{}", proxy.log());
        thread::sleep(Duration::from_millis(100));
    }
    // Lookups still answer (from the others), and traffic flows.
    assert_eq!(c.cmd(&[b"GET", b"k"]), b"$1\r\nv\r\n");
}

#[test]
fn readonly_from_a_demoted_primary_moves_the_proxy() {
    let group = SentinelGroup::start();
    // No periodic lookup during the test: only -READONLY can move the proxy.
    let extra = "health_check_interval: 60\n";
    let proxy = BinaryProxy::start_with(&yaml(&group.nodes(), extra), &[], &[]);
    let mut c = proxy.client();
    assert_eq!(c.cmd(&[b"SET", b"before", b"1"]), b"+OK\r\n");
    // A transaction leaves a pooled (exclusive) connection to the old primary idle.
    let mut tx = proxy.client();
    assert_eq!(tx.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(tx.cmd(&[b"INCR", b"t"]), b"+QUEUED\r\n");
    assert_eq!(tx.cmd(&[b"EXEC"]), b"*1\r\n:1\r\n");
    let (a, b) = (group.primary.port(), group.replica.port());
    // Replication is asynchronous: the replica has the INCR before it is promoted
    // (else the counter below starts again on it, as Redis itself would lose it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_cli(b, &["GET", "t"]).0.trim() != "1" {
        assert!(Instant::now() < deadline, "the replica never got t");
        thread::sleep(Duration::from_millis(20));
    }
    // Behind the proxy's back, with no +switch-master: the sentinels forget the
    // master and monitor the replica instead, which becomes the primary.
    for i in 0..3 {
        assert!(group.ask(i, &["SENTINEL", "REMOVE", MASTER]).contains("OK"));
    }
    redis_cli(b, &["REPLICAOF", "NO", "ONE"]);
    redis_cli(a, &["REPLICAOF", "127.0.0.1", &b.to_string()]);
    for i in 0..3 {
        let out = group.ask(
            i,
            &[
                "SENTINEL",
                "MONITOR",
                MASTER,
                "127.0.0.1",
                &b.to_string(),
                "2",
            ],
        );
        assert!(out.contains("OK"), "{out}");
    }
    // The old primary refuses the write, as Redis says it; the proxy asks again.
    let refused = c.cmd(&[b"SET", b"k", b"v"]);
    assert!(refused.starts_with(b"-READONLY"), "{}", text(&refused));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.cmd(&[b"SET", b"k", b"v"]);
        if r == b"+OK\r\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after 10 s: {}\nproxy log:\n{}",
            text(&r),
            proxy.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let (on_new, _) = redis_cli(b, &["GET", "k"]);
    assert_eq!(on_new.trim(), "v");
    // The pooled connection to the old primary is not handed out again.
    assert_eq!(tx.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(tx.cmd(&[b"INCR", b"t"]), b"+QUEUED\r\n");
    assert_eq!(tx.cmd(&[b"EXEC"]), b"*1\r\n:2\r\n");
    let (on_new, _) = redis_cli(b, &["GET", "t"]);
    assert_eq!(on_new.trim(), "2");
    let line = info_db0(&proxy);
    assert!(line.contains(&format!("primary=127.0.0.1:{b}")), "{line}");
    assert!(line.contains("failovers=1"), "{line}");
}

#[test]
fn no_sentinel_up_at_startup_answers_with_a_clear_error() {
    let nodes = vec![
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let extra = "connect_timeout: 1\ncommand_timeout: 1\n";
    let proxy = BinaryProxy::start_with(&yaml(&nodes, extra), &[], &[]);
    let mut c = proxy.client();
    c.set_timeout(Duration::from_secs(15));
    let reply = text(&c.cmd(&[b"SET", b"k", b"v"]));
    assert!(reply.starts_with('-'), "{reply}");
    assert!(reply.contains("sentinel master mymaster"), "{reply}");
    assert!(
        reply.contains("no sentinel could name the primary"),
        "{reply}"
    );
    assert!(
        reply.contains(&nodes[0]) && reply.contains(&nodes[1]),
        "{reply}"
    );
    // And it keeps answering (no hang, no crash).
    let reply = text(&c.cmd(&[b"GET", b"k"]));
    assert!(reply.starts_with('-'), "{reply}");
    assert!(info_db0(&proxy).contains("primary=unknown"));
}

/// `Config` from `text`, or its error message.
fn load(text: &str) -> Result<Config, String> {
    Config::from_yaml_str_with_env(text, Some(std::path::Path::new("s.yaml")), &|_| None)
        .map_err(|e| e.to_string())
}

#[test]
fn bad_sentinel_config_is_refused_with_file_key_and_line() {
    let ok = "redis_databases:\n  main:\n    db: 0\n    sentinel:\n      nodes: [\"127.0.0.1:26379\", \"[::1]:26380\"]\n      master: mymaster\n";
    let c = load(ok).unwrap();
    let s = c.databases[0].upstream.sentinel.as_ref().unwrap();
    assert_eq!(
        s.nodes,
        vec![("127.0.0.1".to_string(), 26379), ("::1".to_string(), 26380)]
    );
    for (yaml, needle) in [
        // host and sentinel in one database.
        (
            "redis_databases:\n  main:\n    db: 0\n    host: x\n    sentinel: { nodes: [\"a:1\"], master: m }\n",
            "s.yaml, line 4: redis_databases.main.host: `host` cannot be set together with `sentinel`",
        ),
        // ... or at the top level.
        (
            "redis_databases:\n  main: { db: 0 }\nport: 7000\nsentinel: { nodes: [\"a:1\"], master: m }\n",
            "s.yaml, line 3: port: `port` cannot be set together with `sentinel`",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    sentinel: { master: m }\n",
            "redis_databases.main.sentinel: missing `nodes`",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    sentinel: { nodes: [], master: m }\n",
            "redis_databases.main.sentinel.nodes: must list at least one sentinel",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    sentinel: { nodes: [\"a:1\"] }\n",
            "missing `master`",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    sentinel:\n      nodes: [localhost]\n      master: m\n",
            "s.yaml, line 5: redis_databases.main.sentinel.nodes: \"localhost\" is not a sentinel address: no port",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    sentinel: { nodes: [\"a:0\"], master: m }\n",
            "the port must be 1-65535",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    sentinel: { nodes: [\"a:1\"], master: m, sentinels: 3 }\n",
            "sentinels",
        ),
        // A database leaving a top-level sentinel must give its host.
        (
            "redis_databases:\n  main:\n    db: 0\n    port: 7000\nsentinel: { nodes: [\"a:1\"], master: m }\n",
            "s.yaml, line 4: redis_databases.main.port: this database sets `port` but not `host`",
        ),
    ] {
        let err = load(yaml).expect_err(yaml);
        assert!(err.contains(needle), "{yaml}\n=> {err}\n(wanted {needle:?})");
    }
    // The environment's host with a top-level sentinel names the variable.
    let err = Config::from_yaml_str_with_env(
        "redis_databases:\n  main: { db: 0 }\nsentinel: { nodes: [\"a:1\"], master: m }\n",
        None,
        &|k| (k == "AUTOBOT_REDIS_HOST").then(|| "10.0.0.9".to_string()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("AUTOBOT_REDIS_HOST"), "{err}");

    // Layering: the more specific level wins as a whole.
    let c = load(
        "redis_databases:\n  main: { db: 0 }\n  cache:\n    db: 1\n    sentinel: { nodes: [\"s:26379\"], master: m }\nhost: h\nport: 7000\n",
    )
    .unwrap();
    assert!(c.databases[0].upstream.sentinel.is_none());
    assert_eq!(c.databases[0].upstream.address(), "h:7000");
    assert_eq!(
        c.databases[1].upstream.sentinel.as_ref().unwrap().master,
        "m"
    );
    let c = load(
        "redis_databases:\n  main: { db: 0 }\n  cache:\n    db: 1\n    host: h\n  temp:\n    db: 2\n    sentinel: null\nsentinel: { nodes: [\"s:26379\"], master: m }\n",
    )
    .unwrap();
    assert!(c.databases[0].upstream.sentinel.is_some());
    assert_eq!(c.databases[0].upstream.address(), "sentinel master m");
    assert!(c.databases[1].upstream.sentinel.is_none());
    assert_eq!(c.databases[1].upstream.address(), "h:6379");
    assert!(c.databases[2].upstream.sentinel.is_none());
}
