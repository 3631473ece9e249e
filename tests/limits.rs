//! Process limits (issue 9, defect 7): the open-file limit against `max_clients`,
//! as Redis handles it. The real binary is run under `prlimit`: with a hard limit
//! too low for `max_clients` it lowers `max_clients` with Redis's warning and
//! refuses the client beyond it with Redis's error (not a hang); with room under
//! the hard limit it raises the soft limit. When the process does run out of
//! descriptors, accept errors are neither a busy loop nor a log flood, and failed
//! upstream connects do not count toward the circuit breaker.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{parse_info_section, BinaryProxy, RawClient, RedisServer};

/// One database, two exclusive and one shared connection: the upstream reserve is
/// 2 x 2 (both pools) + 2 x 1 (both slot sets) + 4 headroom = 10, plus the 32
/// descriptors kept for the proxy itself (Redis's CONFIG_MIN_RESERVED_FDS).
fn small_yaml(redis: &RedisServer, extra: &str) -> String {
    format!(
        "redis_databases:\n  main: {{ db: 0 }}\nhost: 127.0.0.1\nport: {}\nmax_connections: 2\nmux_connections: 1\nmax_clients: 100\n{extra}",
        redis.port()
    )
}

const RESERVED: u64 = 42;

fn clients_info(c: &mut RawClient) -> std::collections::HashMap<String, String> {
    let r = c.cmd(&[b"PROXY", b"INFO", b"clients"]);
    parse_info_section(&String::from_utf8_lossy(&r), "Clients")
}

fn num(info: &std::collections::HashMap<String, String>, key: &str) -> u64 {
    info.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing in {info:?}"))
}

/// Opens clients until `n` are connected in all (counting `already`), each
/// answering PING, then checks that one more gets Redis's error at once.
fn fill_and_overflow(proxy: &BinaryProxy, already: usize, n: usize) -> Vec<RawClient> {
    let mut held = Vec::new();
    for i in already..n {
        let mut c = proxy.client();
        c.set_timeout(Duration::from_secs(5));
        assert_eq!(c.cmd(&[b"PING"]), b"+PONG\r\n", "client {i} of {n}");
        held.push(c);
    }
    let mut extra = proxy.client();
    extra.set_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let r = extra
        .try_read_reply()
        .expect("the client beyond max_clients hears why");
    assert_eq!(r, b"-ERR max number of clients reached\r\n");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    held
}

#[test]
fn a_hard_limit_below_max_clients_lowers_it_with_redis_warning() {
    let redis = RedisServer::start();
    let proxy = BinaryProxy::start_wrapped(
        &["prlimit", "--nofile=64:64"],
        &small_yaml(&redis, ""),
        &[],
        &[],
    );
    let log = proxy.log();
    assert!(
        log.contains(&format!(
            "You requested max_clients of 100 requiring at least {} max file descriptors",
            100 + RESERVED
        )),
        "{log}"
    );
    let effective = 64 - RESERVED;
    assert!(
        log.contains(&format!(
            "Current maximum open files is 64 (hard limit 64). max_clients has been reduced to {effective}"
        )),
        "{log}"
    );
    let mut c = proxy.client();
    let info = clients_info(&mut c);
    assert_eq!(num(&info, "max_clients"), effective);
    assert_eq!(num(&info, "max_clients_configured"), 100);
    assert_eq!(num(&info, "fd_limit"), 64);
    assert_eq!(num(&info, "fd_reserved"), RESERVED);
    let _held = fill_and_overflow(&proxy, 1, effective as usize);
    let info = clients_info(&mut c);
    assert_eq!(num(&info, "rejected_connections"), 1);
    assert_eq!(num(&info, "accept_errors"), 0);
}

#[test]
fn the_soft_limit_is_raised_when_the_hard_limit_allows() {
    let redis = RedisServer::start();
    let proxy = BinaryProxy::start_wrapped(
        &["prlimit", "--nofile=64:4096"],
        &small_yaml(&redis, ""),
        &[],
        &[],
    );
    let log = proxy.log();
    assert!(log.contains("raised the open files limit"), "{log}");
    assert!(!log.contains("max_clients has been reduced"), "{log}");
    let mut c = proxy.client();
    let info = clients_info(&mut c);
    assert_eq!(num(&info, "fd_limit"), 100 + RESERVED);
    assert_eq!(num(&info, "fd_limit_hard"), 4096);
    assert_eq!(num(&info, "max_clients"), 100);
    let _held = fill_and_overflow(&proxy, 1, 100);
}

fn set_soft_limit(pid: u32, soft: u32) {
    let out = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={soft}:"))
        .output()
        .expect("run prlimit");
    assert!(out.status.success(), "{out:?}");
}

/// The proxy runs out of descriptors (its soft limit is cut to 3 while it runs,
/// so no new descriptor can be opened): clients still connected get a clear error
/// for commands that need a new upstream connection, the breaker stays closed
/// (failure_threshold 2 would otherwise open it after two commands), new clients
/// wait in the backlog while accept is retried every 100 ms and logged once per
/// 5 s, and everything recovers when descriptors are available again.
#[test]
fn running_out_of_descriptors_neither_opens_the_breaker_nor_floods_the_log() {
    let redis = RedisServer::start();
    let proxy = BinaryProxy::start_with(
        &small_yaml(
            &redis,
            "retry_attempts: 0\nfailure_threshold: 2\nhealth_check_interval: 0.2\n",
        ),
        &[],
        &[],
    );
    let pid = proxy.pid().expect("running");
    let mut a = proxy.client();
    a.set_timeout(Duration::from_secs(5));
    // Let the health probe open its connection first.
    std::thread::sleep(Duration::from_millis(300));
    set_soft_limit(pid, 3);

    for _ in 0..5 {
        let r = String::from_utf8_lossy(&a.cmd(&[b"GET", b"k"])).into_owned();
        assert!(
            r.starts_with("-ERR proxy out of file descriptors") && r.contains("'main' (db 0)"),
            "{r}"
        );
    }
    // Clients that arrive now wait in the backlog.
    let mut waiting: Vec<RawClient> = (0..3).map(|_| proxy.client()).collect();
    for w in &mut waiting {
        w.send(&support::resp_cmd(&[b"PING"]));
    }
    let watch = Duration::from_secs(3);
    std::thread::sleep(watch);

    let r = String::from_utf8_lossy(&a.cmd(&[b"PROXY", b"INFO", b"circuits"])).into_owned();
    assert!(
        r.contains("state=closed") && r.contains("consecutive_failures=0"),
        "{r}"
    );
    let info = clients_info(&mut a);
    let accept_errors = num(&info, "accept_errors");
    // One attempt per 100 ms pause (not a busy loop): about 30 in 3 s.
    assert!((5..=45).contains(&accept_errors), "{accept_errors}");
    let log = proxy.log();
    let lines = log.matches("accept failed").count();
    assert!(
        lines <= 2,
        "{lines} accept warnings for {accept_errors} errors:\n{log}"
    );
    assert!(
        !log.contains("circuit opened") && !log.contains("breaker opened"),
        "{log}"
    );
    eprintln!("{accept_errors} failed accepts in {watch:?}, {lines} log line(s)");

    set_soft_limit(pid, 1024);
    for w in &mut waiting {
        w.set_timeout(Duration::from_secs(3));
        assert_eq!(w.read_reply(), b"+PONG\r\n");
    }
    assert_eq!(a.cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    let r = String::from_utf8_lossy(&a.cmd(&[b"PROXY", b"HEALTH"])).into_owned();
    assert!(
        r.contains("overall_healthy:1") && r.contains("circuit=closed"),
        "{r}"
    );
}
