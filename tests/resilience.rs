//! Resilience against a real Redis going away: the circuit breaker (opens after
//! `failure_threshold` failures, answers at once, closes again once Redis is back),
//! safe retries (read-only commands and commands that never reached Redis are
//! retried, writes of unknown fate never), and the `retry_attempts` count.

mod support;

use std::time::{Duration, Instant};

use redis_sidecar::config::Config;
use support::{
    parse_info, printable, proxy_config, resp_bulk, resp_cmd, start_proxy, AsyncRawClient,
    RedisServer,
};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits (bounded) until database `index` has at least `n` commands in flight.
async fn wait_in_flight(admin: &mut AsyncRawClient, index: usize, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = admin.cmd(&[b"PROXY", b"INFO", b"databases"]).await;
        let info = support::parse_info_section(&text(&r), "Databases");
        let line = info[&format!("db{index}")].clone();
        let in_flight: u64 = line
            .split(',')
            .find_map(|kv| kv.strip_prefix("in_flight="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no in_flight: {line}"));
        if in_flight >= n {
            return;
        }
        assert!(Instant::now() < deadline, "db{index}: {line}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_answers_at_once_and_closes_when_redis_is_back() {
    let mut redis = RedisServer::start();
    let healthy = RedisServer::start();
    let mut config = proxy_config(&redis);
    for db in &mut config.databases {
        let r = &mut db.upstream.resilience;
        r.retry_attempts = 0;
        r.failure_threshold = 3;
        r.recovery_timeout = Duration::from_secs(1);
        r.success_threshold = 1;
    }
    // Database 5 lives on another, healthy server.
    config.databases[5].upstream.port = healthy.port();
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");

    redis = tokio::task::spawn_blocking(move || {
        redis.kill();
        redis
    })
    .await
    .unwrap();
    // Commands keep failing; the breaker counts failed upstream attempts (connects are
    // paced by a reconnect pause), so it opens within a bounded time, not a count.
    let killed = Instant::now();
    let msg = loop {
        let r = text(&c.cmd(&[b"GET", b"k"]).await);
        if r.starts_with("-CIRCUITOPEN") {
            break r;
        }
        assert!(r.starts_with("-UPSTREAM database 'main' (db 0): "), "{r}");
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the breaker (failure_threshold 3) did not open within 5 s of failures"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        msg.starts_with("-CIRCUITOPEN database 'main' (db 0) is unavailable"),
        "{msg}"
    );
    // While open: answered at once, every time, without touching the network.
    for _ in 0..20 {
        let started = Instant::now();
        let r = text(&c.cmd(&[b"GET", b"k"]).await);
        assert!(r.starts_with("-CIRCUITOPEN"), "{r}");
        assert!(started.elapsed() < Duration::from_millis(100));
    }
    // Another database, on a healthy server, is not affected.
    assert_eq!(c.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"k", b"five"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SELECT", b"0"]).await, b"+OK\r\n");

    // Redis back: within recovery_timeout (+ probing slack), commands work again.
    redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    let back = Instant::now();
    loop {
        let r = c.cmd(&[b"GET", b"k"]).await;
        if r == b"$-1\r\n" {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(4),
            "still failing {:?} after Redis came back: {}",
            back.elapsed(),
            printable(&r)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.cmd(&[b"SET", b"k", b"v2"]).await, b"+OK\r\n");
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&[b"GET", b"k"]).await, resp_bulk(b"v2"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_can_force_the_circuit_open_and_back() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.admin_password = Some(redis_sidecar::config::Secret("adm".into()));
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"PROXY", b"AUTH", b"adm"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(
        c.cmd(&[b"PROXY", b"CIRCUIT", b"0", b"OPEN"]).await,
        b"+OK\r\n"
    );
    let r = text(&c.cmd(&[b"GET", b"k"]).await);
    assert!(
        r.starts_with("-CIRCUITOPEN database 'main' (db 0) is unavailable"),
        "{r}"
    );
    // Other databases are not affected.
    assert_eq!(c.cmd(&[b"SELECT", b"1"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(c.cmd(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    assert_eq!(
        c.cmd(&[b"PROXY", b"CIRCUIT", b"0", b"AUTO"]).await,
        b"+OK\r\n"
    );
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, resp_bulk(b"v"));
    let r = c.cmd(&[b"PROXY", b"CIRCUIT", b"0", b"SIDEWAYS"]).await;
    assert!(r.starts_with(b"-ERR"), "{}", printable(&r));
    let r = c.cmd(&[b"PROXY", b"CIRCUIT", b"42", b"OPEN"]).await;
    assert!(r.starts_with(b"-ERR"), "{}", printable(&r));
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, resp_bulk(b"v"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_retried_across_a_quick_restart_and_writes_are_not() {
    let mut redis = RedisServer::start();
    let mut config: Config = proxy_config(&redis);
    for db in &mut config.databases {
        let r = &mut db.upstream.resilience;
        // Enough retries to span a slow restart (the overall deadline is
        // connect_timeout + command_timeout = 10 s).
        r.retry_attempts = 40;
        r.retry_base_delay = Duration::from_millis(100);
        r.retry_max_delay = Duration::from_millis(250);
        r.failure_threshold = u32::MAX;
    }
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();
    let mut writer = AsyncRawClient::connect(addr).await;
    let mut reader = AsyncRawClient::connect(addr).await;
    let mut admin = AsyncRawClient::connect(addr).await;
    assert_eq!(writer.cmd(&[b"SET", b"k", b"old"]).await, b"+OK\r\n");
    assert_eq!(reader.cmd(&[b"GET", b"k"]).await, resp_bulk(b"old"));

    // Both commands reach Redis, which never answers: then it dies and comes back empty.
    redis.pause();
    writer.send(&resp_cmd(&[b"INCR", b"n"])).await;
    reader.send(&resp_cmd(&[b"GET", b"k"])).await;
    wait_in_flight(&mut admin, 0, 2).await;
    let restart = Instant::now();
    redis = tokio::task::spawn_blocking(move || {
        redis.kill();
        redis.restart();
        redis
    })
    .await
    .unwrap();
    let restart = restart.elapsed();
    let mut direct = AsyncRawClient::connect(redis.addr()).await;

    // The read is repeated on the new (empty) server and answered from it: nil, not
    // the old value and not an error.
    assert_eq!(
        printable(&reader.read_reply().await),
        printable(b"$-1\r\n"),
        "GET is read-only: it should have been retried (Redis restart took {restart:?})"
    );
    // The write may have run on the old server: it is never repeated.
    let r = text(&writer.read_reply().await);
    assert!(r.starts_with("-UPSTREAM database 'main' (db 0): "), "{r}");
    assert!(r.contains("may have been executed"), "{r}");
    assert_eq!(direct.cmd(&[b"EXISTS", b"n"]).await, b":0\r\n");
    let stats = admin.cmd(&[b"PROXY", b"INFO", b"stats"]).await;
    let _ = parse_info(&text(&stats));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_attempts_is_the_number_of_retries() {
    // config: "How many times a failed connect is retried (retry_attempts, default 3;
    // 0 = no retries)". A command to an unreachable Redis never reached it, so it is
    // retried that many times: 1 + retry_attempts attempts in all.
    let port = support::free_port();
    let mut config = Config::for_upstream("127.0.0.1", port);
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    for (i, db) in config.databases.iter_mut().enumerate() {
        let r = &mut db.upstream.resilience;
        r.retry_attempts = i as u32; // db 0: none, db 1: one, db 2: two, db 3: three
        r.retry_base_delay = Duration::from_millis(10);
        r.retry_max_delay = Duration::from_millis(20);
        r.failure_threshold = u32::MAX;
    }
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut failures: Vec<String> = Vec::new();
    for db in 0..4u32 {
        assert_eq!(
            c.cmd(&[b"SELECT", db.to_string().as_bytes()]).await,
            b"+OK\r\n"
        );
        let r = text(&c.cmd(&[b"SET", b"k", b"v"]).await);
        eprintln!("retry_attempts {db}: {r}");
        assert!(r.starts_with("-UPSTREAM "), "{r}");
        let attempts = db + 1;
        let ok = if attempts == 1 {
            !r.contains("attempts)")
        } else {
            r.contains(&format!("(after {attempts} attempts)"))
        };
        if !ok {
            failures.push(format!(
                "retry_attempts {db} should make {attempts} attempts: {r}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    proxy.shutdown().await;
}
