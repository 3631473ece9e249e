//! Lifecycle: Redis absent at start, Redis dying and coming back while the proxy runs,
//! a hung Redis, graceful shutdown with replies still in flight (in-process and the
//! binary under SIGTERM/SIGINT), and `--check-config`.

mod support;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bb8_redis::redis::{self, AsyncCommands};
use redis_sidecar::config::Config;
use support::{
    bb8_pool, databases_yaml, free_port, parse_info, printable, proxy_config, redis_rs_conn,
    resp_bulk, resp_cmd, run_binary, start_proxy, without_retries_or_breaker, AsyncRawClient,
    BinaryProxy, RawClient, RedisServer,
};

/// How long after Redis comes back commands may still fail (a reconnect pause).
const RECOVERY: Duration = Duration::from_secs(2);

/// Upstream at 127.0.0.1:port, without retries or breaker (tested in resilience.rs):
/// these tests see each failure as it happens.
fn config_for_port(port: u16) -> Config {
    let mut config = Config::for_upstream("127.0.0.1", port);
    config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    without_retries_or_breaker(&mut config);
    config
}

fn config_for(redis: &RedisServer) -> Config {
    config_for_port(redis.port())
}

/// `key=value,...` fields of database `index`'s line in PROXY INFO databases.
async fn db_stats(c: &mut AsyncRawClient, index: usize) -> HashMap<String, String> {
    let r = c.cmd(&[b"PROXY", b"INFO", b"databases"]).await;
    let info = parse_info(&String::from_utf8_lossy(&r));
    let line = info
        .get(&format!("db{index}"))
        .unwrap_or_else(|| panic!("no db{index} line: {}", printable(&r)))
        .clone();
    line.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field(m: &HashMap<String, String>, key: &str) -> u64 {
    m.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {m:?}"))
}

/// Waits (bounded) until database `index` has at least `n` commands in flight upstream.
async fn wait_in_flight(admin: &mut AsyncRawClient, index: usize, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = db_stats(admin, index).await;
        if field(&s, "in_flight") >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "db{index} never had {n} commands in flight: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_absent_at_start_then_started_without_restarting_the_proxy() {
    let port = free_port();
    let proxy = start_proxy(config_for_port(port)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;

    // Nothing listens: a clear error, quickly, naming the database and the address.
    for _ in 0..3 {
        let started = Instant::now();
        let got = text(&c.cmd(&[b"SET", b"k", b"v"]).await);
        assert!(
            got.starts_with(&format!(
                "-UPSTREAM database 'main' (db 0): cannot connect to 127.0.0.1:{port}"
            )),
            "{got}"
        );
        assert!(
            got.ends_with("\r\n") && got.matches('\n').count() == 1,
            "{got}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
    }
    // A pipeline gets one error per command, in order, and local commands still work.
    let mut p = resp_cmd(&[b"GET", b"a"]);
    p.extend(resp_cmd(&[b"CLIENT", b"SETNAME", b"x"]));
    p.extend(resp_cmd(&[b"GET", b"b"]));
    p.extend(resp_cmd(&[b"SELECT", b"5"]));
    p.extend(resp_cmd(&[b"GET", b"c"]));
    c.send(&p).await;
    let r = c.read_replies(5).await;
    assert!(
        text(&r[0]).starts_with("-UPSTREAM database 'main' (db 0): "),
        "{}",
        text(&r[0])
    );
    assert_eq!(r[1], b"+OK\r\n");
    assert!(
        text(&r[2]).starts_with("-UPSTREAM database 'main' (db 0): "),
        "{}",
        text(&r[2])
    );
    assert_eq!(r[3], b"+OK\r\n");
    assert!(
        text(&r[4]).starts_with("-UPSTREAM database 'cache' (db 5): "),
        "{}",
        text(&r[4])
    );

    // Redis appears on that port: the very next command works, on the same session
    // (README: "succeed again as soon as Redis is back, with no proxy restart"). Db 0
    // failed several times in a row above, so a reconnect back-off, if any, is long now.
    assert_eq!(c.cmd(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    let redis = tokio::task::spawn_blocking(move || RedisServer::start_on_port(port))
        .await
        .unwrap();
    assert_eq!(
        printable(&c.cmd(&[b"SET", b"k", b"in-main"]).await),
        printable(b"+OK\r\n"),
        "first command on db 0 after Redis started"
    );
    assert_eq!(c.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_eq!(
        printable(&c.cmd(&[b"SET", b"k", b"in-cache"]).await),
        printable(b"+OK\r\n"),
        "first command on db 5 after Redis started"
    );
    assert_eq!(c.cmd(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, resp_bulk(b"in-main"));
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&[b"GET", b"k"]).await, resp_bulk(b"in-main"));
    assert_eq!(direct.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"k"]).await, resp_bulk(b"in-cache"));
    // A client that connects now just works too.
    let mut fresh = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(fresh.cmd(&[b"GET", b"k"]).await, resp_bulk(b"in-main"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_failed_for_an_unreachable_upstream_are_counted() {
    let port = free_port();
    let proxy = start_proxy(config_for_port(port)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut p = Vec::new();
    for _ in 0..5 {
        p.extend(resp_cmd(&[b"GET", b"k"]));
    }
    c.send(&p).await;
    for r in c.read_replies(5).await {
        assert!(text(&r).starts_with("-UPSTREAM "), "{}", text(&r));
    }
    // PROXY INFO: `upstream_failures` = "commands that failed because the upstream could
    // not be reached or was lost"; `errors` = "error replies ... plus commands failed by
    // the proxy" (src/stats.rs).
    let s = db_stats(&mut c, 0).await;
    assert_eq!(field(&s, "commands"), 5, "{s:?}");
    assert!(field(&s, "connect_failures") >= 1, "{s:?}");
    assert_eq!(field(&s, "connects"), 0, "{s:?}");
    assert_eq!(field(&s, "upstream_failures"), 5, "{s:?}");
    assert_eq!(field(&s, "errors"), 5, "{s:?}");
    let r = c.cmd(&[b"PROXY", b"INFO", b"stats"]).await;
    let stats = parse_info(&text(&r));
    assert_eq!(stats["error_replies"], "5", "{}", text(&r));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_while_the_proxy_runs() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    let proxy = start_proxy(config_for(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    // A bb8 pool (it PINGs on checkout, so it is only used while Redis is up) and one
    // redis-rs connection that is held through the outage.
    let pool = bb8_pool(proxy.local_addr(), 0, 2).await;
    let mut held = redis_rs_conn(proxy.local_addr(), 0, Duration::from_secs(5)).await;
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    {
        let mut conn = pool.get().await.unwrap();
        let v: String = conn.get("k").await.unwrap();
        assert_eq!(v, "v");
    }
    let v: String = held.get("k").await.unwrap();
    assert_eq!(v, "v");
    let total_before = {
        let r = c.cmd(&[b"PROXY", b"INFO", b"clients"]).await;
        parse_info(&text(&r))["total_connections_received"].clone()
    };

    redis = tokio::task::spawn_blocking(move || {
        redis.kill();
        redis
    })
    .await
    .unwrap();
    // While it is down: errors (not hangs), on every session, for several commands.
    for _ in 0..5 {
        let started = Instant::now();
        let got = text(&c.cmd(&[b"GET", b"k"]).await);
        assert!(
            got.starts_with("-UPSTREAM database 'main' (db 0): "),
            "{got}"
        );
        assert!(got.contains(&format!("127.0.0.1:{port}")), "{got}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let err = held.get::<_, String>("k").await.unwrap_err();
    assert_eq!(err.code(), Some("UPSTREAM"), "{err}");
    assert_eq!(c.cmd(&[b"PING", b"local?"]).await.first(), Some(&b'-'));
    assert_eq!(
        c.cmd(&[b"CLIENT", b"SETNAME", b"still-here"]).await,
        b"+OK\r\n"
    );

    // Back on the same port (empty: no persistence): commands work again, same sessions.
    redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    // Recovery may take a reconnect pause, but no longer than RECOVERY.
    let back = Instant::now();
    loop {
        let r = c.cmd(&[b"GET", b"k"]).await;
        if r == b"$-1\r\n" {
            break;
        }
        assert!(
            r.starts_with(b"-UPSTREAM") && back.elapsed() < RECOVERY,
            "{:?} after Redis came back: {}",
            back.elapsed(),
            printable(&r)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        match held.get::<_, Option<String>>("k").await {
            Ok(v) => {
                assert_eq!(v, None);
                break;
            }
            Err(e) => assert!(
                e.code() == Some("UPSTREAM") && back.elapsed() < RECOVERY,
                "{:?} after Redis came back: {e}",
                back.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("recovered {:?} after Redis came back", back.elapsed());
    assert_eq!(c.cmd(&[b"SET", b"k", b"v2"]).await, b"+OK\r\n");
    assert_eq!(
        c.cmd(&[b"CLIENT", b"GETNAME"]).await,
        resp_bulk(b"still-here")
    );
    {
        let mut conn = pool.get().await.unwrap();
        let v: String = conn.get("k").await.unwrap();
        assert_eq!(v, "v2");
        let pong: String = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
        assert_eq!(pong, "PONG");
    }
    // The connection held through the outage works again, without reconnecting.
    let v: String = held.get("k").await.unwrap();
    assert_eq!(v, "v2");
    // No client had to reconnect to the proxy.
    let r = c.cmd(&[b"PROXY", b"INFO", b"clients"]).await;
    assert_eq!(
        parse_info(&text(&r))["total_connections_received"],
        total_before
    );
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&[b"GET", b"k"]).await, resp_bulk(b"v2"));
    drop(pool);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_in_flight_when_redis_dies_gets_an_error_saying_it_may_have_run() {
    let mut redis = RedisServer::start();
    let proxy = start_proxy(config_for(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut admin = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");

    redis.pause();
    c.send(&[resp_cmd(&[b"INCR", b"n"]), resp_cmd(&[b"GET", b"k"])].concat())
        .await;
    wait_in_flight(&mut admin, 0, 2).await;
    redis = tokio::task::spawn_blocking(move || {
        redis.kill();
        redis
    })
    .await
    .unwrap();
    let r = c.read_replies(2).await;
    for reply in &r {
        let t = text(reply);
        assert!(t.starts_with("-UPSTREAM database 'main' (db 0): "), "{t}");
        assert!(t.contains("may have been executed"), "{t}");
    }
    let s = db_stats(&mut admin, 0).await;
    assert_eq!(field(&s, "in_flight"), 0, "{s:?}");
    assert!(field(&s, "upstream_failures") >= 2, "{s:?}");
    drop(redis);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_times_out_after_command_timeout() {
    // `command_timeout` (config: "per-command timeout") bounds how long a client waits;
    // with retries (default settings) all attempts together stay within
    // connect_timeout + command_timeout.
    let mut redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    for db in &mut config.databases {
        db.upstream.command_timeout = Duration::from_millis(500);
        db.upstream.connect_timeout = Duration::from_millis(500);
    }
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    redis.pause();
    let started = Instant::now();
    c.send(&resp_cmd(&[b"GET", b"k"])).await;
    c.set_timeout(Duration::from_secs(3));
    let got = c.try_read_reply().await;
    redis.resume();
    let got = got.unwrap_or_else(|e| {
        panic!(
            "no reply {:?} after Redis hung, with command_timeout = connect_timeout = 500ms: {e}",
            started.elapsed()
        )
    });
    let t = text(&got);
    assert!(t.starts_with("-UPSTREAM database 'main' (db 0): "), "{t}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}: {t}",
        started.elapsed()
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_delivers_replies_in_flight() {
    let mut redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let addr = proxy.local_addr();
    let mut a = AsyncRawClient::connect(addr).await;
    let mut b = AsyncRawClient::connect(addr).await;
    let mut idle = AsyncRawClient::connect(addr).await;
    let mut admin = AsyncRawClient::connect(addr).await;
    // Open the shared connections of db 0 and db 2 first.
    assert_eq!(a.cmd(&[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(b.cmd(&[b"SELECT", b"2"]).await, b"+OK\r\n");
    assert_eq!(b.cmd(&[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(idle.cmd(&[b"PING"]).await, b"+PONG\r\n");

    // Redis stops answering; both clients send pipelines that stay in flight.
    redis.pause();
    let n_a = 1000;
    a.send(&resp_cmd(&[b"INCR", b"ctr"]).repeat(n_a)).await;
    let mut pb = Vec::new();
    for i in 0..250 {
        let k = format!("key{i}");
        pb.extend(resp_cmd(&[b"SET", k.as_bytes(), k.as_bytes()]));
        pb.extend(resp_cmd(&[b"GET", k.as_bytes()]));
    }
    b.send(&pb).await;
    wait_in_flight(&mut admin, 0, n_a as u64).await;
    wait_in_flight(&mut admin, 2, 500).await;
    drop(admin);

    let shutdown = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown must wait for replies in flight"
    );
    // No new clients once shutdown began.
    let refused =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .expect("connect attempt hung");
    assert!(
        refused.is_err(),
        "the listener still accepts during shutdown"
    );
    // The idle client is let go.
    assert_eq!(idle.read_until_closed().await, b"");

    redis.resume();
    let ra = a.read_replies(n_a).await;
    for (i, r) in ra.iter().enumerate() {
        assert_eq!(r, format!(":{}\r\n", i + 1).as_bytes(), "reply #{i}");
    }
    let rb = b.read_replies(500).await;
    for i in 0..250 {
        let k = format!("key{i}");
        assert_eq!(rb[2 * i], b"+OK\r\n");
        assert_eq!(rb[2 * i + 1], resp_bulk(k.as_bytes()));
    }
    // Then each connection is closed, and shutdown reports a full drain.
    assert_eq!(a.read_until_closed().await, b"");
    assert_eq!(b.read_until_closed().await, b"");
    let drained = tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown did not finish")
        .unwrap();
    assert!(drained, "shutdown reported an incomplete drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_after_the_drain_timeout() {
    let mut redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.shutdown_timeout = Duration::from_millis(800);
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
    redis.pause();
    c.send(&resp_cmd(&[b"GET", b"k"])).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let drained = tokio::time::timeout(Duration::from_secs(10), proxy.shutdown())
        .await
        .expect("shutdown ignored its drain timeout");
    let took = started.elapsed();
    redis.resume();
    assert!(
        !drained,
        "a reply was still missing, the drain cannot be complete"
    );
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "shutdown took {took:?} with shutdown_timeout = 800ms"
    );
}

#[test]
fn the_binary_exits_0_on_sigterm_and_sigint() {
    let redis = RedisServer::start();
    for signal in ["TERM", "INT"] {
        let mut proxy = BinaryProxy::start(&redis);
        let mut c = proxy.client();
        assert_eq!(c.cmd(&[b"SET", b"sig", signal.as_bytes()]), b"+OK\r\n");
        assert_eq!(c.cmd(&[b"GET", b"sig"]), resp_bulk(signal.as_bytes()));
        proxy.send_signal(signal);
        let status = proxy.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| {
            panic!("still running 10s after SIG{signal}; log:\n{}", proxy.log())
        });
        assert!(
            status.success(),
            "SIG{signal}: exit status {status}; log:\n{}",
            proxy.log()
        );
        // The connected client was closed, and nothing listens any more.
        assert_eq!(c.read_until_closed(), b"");
        assert!(RawClient::try_connect_timeout(proxy.addr(), Duration::from_millis(500)).is_err());
    }
}

#[test]
fn the_binary_drains_in_flight_replies_on_sigterm() {
    let mut redis = RedisServer::start();
    let mut proxy = BinaryProxy::start(&redis);
    let mut c = proxy.client();
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    redis.pause();
    c.send(&[resp_cmd(&[b"INCR", b"n"]), resp_cmd(&[b"GET", b"k"])].concat());
    // Until both are in flight upstream.
    let mut admin = proxy.client();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = admin.cmd(&[b"PROXY", b"INFO", b"databases"]);
        let info = parse_info(&text(&r));
        if info["db0"].contains(",in_flight=2,") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", text(&r));
        std::thread::sleep(Duration::from_millis(10));
    }
    proxy.send_signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        proxy.wait_exit(Duration::from_millis(1)).is_none(),
        "exited with replies in flight; log:\n{}",
        proxy.log()
    );
    redis.resume();
    assert_eq!(c.read_replies(2), [b":1\r\n".to_vec(), resp_bulk(b"v")]);
    assert_eq!(c.read_until_closed(), b"");
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("did not exit after draining");
    assert!(status.success(), "{status}; log:\n{}", proxy.log());
}

#[test]
fn check_config_prints_the_resolved_config_with_passwords_masked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redis-databases.yaml");
    let yaml = format!(
        "{}password: s3cret\nclient_password: hunter2\n",
        databases_yaml("127.0.0.1", 6379)
    )
    .replace(
        "  cache:\n    db: 5\n",
        "  cache:\n    db: 5\n    port: 7777\n    password: per-db-secret\n",
    );
    std::fs::write(&path, &yaml).unwrap();
    let path_s = path.to_str().unwrap();
    let started = Instant::now();
    let (out, err, status) = run_binary(
        &["--config", path_s, "--check-config"],
        &[],
        Duration::from_secs(10),
    );
    assert!(status.success(), "{status}: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "--check-config must not serve"
    );
    for secret in ["s3cret", "hunter2", "per-db-secret"] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} leaked:\n{out}{err}"
        );
    }
    assert!(out.contains("\"***\""), "{out}");
    // The resolution is shown: all 11 databases, the per-database port, the file.
    for name in support::DATABASE_NAMES {
        assert!(out.contains(&format!("[{name}]")), "{name} missing:\n{out}");
    }
    assert!(out.contains("port: 7777"), "{out}");
    assert!(out.contains(path_s), "{out}");
    // --listen on the command line is part of the resolved config.
    let (out, _, status) = run_binary(
        &[
            "--config",
            path_s,
            "--listen",
            "127.0.0.1:7444",
            "--check-config",
        ],
        &[],
        Duration::from_secs(10),
    );
    assert!(status.success());
    assert!(out.contains("listen: 127.0.0.1:7444"), "{out}");
    // A password from the environment is masked too.
    std::fs::write(&path, databases_yaml("127.0.0.1", 6379)).unwrap();
    let (out, err, status) = run_binary(
        &["--config", path_s, "--check-config"],
        &[("AUTOBOT_REDIS_PASSWORD", "env-secret-42")],
        Duration::from_secs(10),
    );
    assert!(status.success(), "{err}");
    assert!(
        !out.contains("env-secret-42") && !err.contains("env-secret-42"),
        "{out}"
    );
    assert!(out.contains("password: \"***\""), "{out}");
    // An invalid file: non-zero exit, the problem named, nothing printed as config.
    std::fs::write(
        &path,
        format!("{}bogus_key: 1\n", databases_yaml("127.0.0.1", 6379)),
    )
    .unwrap();
    let (out, err, status) = run_binary(
        &["--config", path_s, "--check-config"],
        &[],
        Duration::from_secs(10),
    );
    assert!(!status.success());
    assert!(err.contains("bogus_key"), "{err}");
    assert!(!out.contains("databases:"), "{out}");
}

#[test]
fn check_config_refuses_deny_commands_that_name_no_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redis-databases.yaml");
    let path_s = path.to_str().unwrap();
    for (list, bad) in [
        ("[flushal]", "flushal"),
        ("[proxies]", "proxies"),
        ("[flushall, \"config|sett\"]", "config|sett"),
    ] {
        std::fs::write(
            &path,
            format!(
                "{}deny_commands: {list}\n",
                databases_yaml("127.0.0.1", 6379)
            ),
        )
        .unwrap();
        let (out, err, status) = run_binary(
            &["--config", path_s, "--check-config"],
            &[],
            Duration::from_secs(10),
        );
        assert_eq!(status.code(), Some(2), "{list}: {out}{err}");
        assert!(
            err.contains(&format!("unknown command '{bad}'")) && err.contains(path_s),
            "{err}"
        );
    }
    // Real names, subcommands included, and the proxy's own PROXY are accepted.
    std::fs::write(
        &path,
        format!(
            "{}deny_commands: [flushall, \"config|set\", keys, proxy]\n",
            databases_yaml("127.0.0.1", 6379)
        ),
    )
    .unwrap();
    let (_, err, status) = run_binary(
        &["--config", path_s, "--check-config"],
        &[],
        Duration::from_secs(10),
    );
    assert!(status.success(), "{err}");
}

#[test]
fn sighup_reloads_without_killing_and_command_names_are_logged_escaped() {
    let redis = RedisServer::start();
    let yaml = format!(
        "{}log_commands: true\n",
        support::databases_yaml("127.0.0.1", redis.port())
    );
    let mut proxy = BinaryProxy::start_with(&yaml, &[], &[]);
    let mut c = proxy.client();
    assert_eq!(c.cmd(&[b"PING"]), b"+PONG\r\n");
    // SIGHUP (logrotate) used to kill the proxy (exit 129, no drain); now it
    // reloads the (unchanged) file.
    proxy.send_signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        proxy.wait_exit(Duration::from_millis(1)).is_none(),
        "SIGHUP killed the proxy"
    );
    assert_eq!(c.cmd(&[b"PING"]), b"+PONG\r\n");
    // A command name with a newline and an escape byte, and a huge one: logged
    // escaped and cut, never as a forged line or a raw terminal sequence.
    let forged = b"GET\nFORGED-LINE level=ERROR \x1b[31mred";
    let reply = c.cmd(&[forged, b"k"]);
    assert!(reply.starts_with(b"-ERR unknown command"), "{reply:?}");
    let huge = vec![b'A'; 100_000];
    let _ = c.cmd(&[&huge]);
    proxy.send_signal("TERM");
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status}");
    let log = proxy.log();
    assert!(log.contains("SIGHUP received"), "{log}");
    assert!(log.contains("configuration reloaded: no change"), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED-LINE")),
        "a forged log line:\n{log}"
    );
    assert!(!log.contains('\x1b'), "raw escape byte in the log:\n{log}");
    assert!(log.contains("\\n") && log.contains("\\x1b"), "{log}");
    assert!(log.contains("(100000 bytes)"), "{log}");
    assert!(
        log.lines().all(|l| l.len() < 2_000),
        "an oversized log line"
    );
}

/// `PROXY LOGLEVEL`: shows the filter in force; an admin session changes it at run
/// time (debug lines appear, then info lines stop); a bad filter changes nothing.
#[test]
fn the_log_level_changes_at_run_time() {
    let redis = RedisServer::start();
    let mut yaml = support::databases_yaml("127.0.0.1", redis.port());
    yaml.push_str("admin_password: loglevel-admin\n");
    let proxy = BinaryProxy::start_with(&yaml, &[], &[]);
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !proxy.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut c = proxy.client();
    assert_eq!(c.cmd(&[b"PROXY", b"LOGLEVEL"]), b"$4\r\ninfo\r\n");
    assert!(c
        .cmd(&[b"PROXY", b"LOGLEVEL", b"debug"])
        .starts_with(b"-NOPERM"));
    assert_eq!(c.cmd(&[b"PROXY", b"AUTH", b"loglevel-admin"]), b"+OK\r\n");
    assert!(c
        .cmd(&[b"PROXY", b"LOGLEVEL", b"a=b=c"])
        .starts_with(b"-ERR invalid log filter"));
    assert!(!proxy.log().contains("shared upstream connection open"));

    // debug: the shared connection's debug line appears.
    assert_eq!(c.cmd(&[b"PROXY", b"LOGLEVEL", b"debug"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"PROXY", b"LOGLEVEL"]), b"$5\r\ndebug\r\n");
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    wait_for("shared upstream connection open");

    // warn: an info line (a protocol error) is no longer written.
    assert_eq!(c.cmd(&[b"PROXY", b"LOGLEVEL", b"warn"]), b"+OK\r\n");
    let mut bad = proxy.client();
    bad.send(b"*abc\r\n");
    let _ = bad.read_until_closed();
    // A warning after it, to know the log has caught up.
    assert_eq!(c.cmd(&[b"PROXY", b"LOGLEVEL", b"warn"]), b"+OK\r\n");
    wait_for("filter=\"warn\"");
    let log = proxy.log();
    let last = log.rfind("filter=\"warn\"").unwrap_or(0);
    assert!(
        !log[..last].contains("closing client after protocol error"),
        "an info line was written at warn:\n{log}"
    );
}

/// `--log-json`: a warning inside a session carries the session id and its
/// database as fields (the session span), and one from an upstream connection
/// task the database and the upstream address (the upstream span).
#[test]
fn json_log_lines_carry_session_database_and_upstream() {
    let redis = RedisServer::start();
    let dead = support::free_port();
    let yaml = support::databases_yaml("127.0.0.1", redis.port()).replace(
        "  knowledge:\n    db: 1\n",
        &format!("  knowledge:\n    db: 1\n    host: 127.0.0.1\n    port: {dead}\n    retry_attempts: 0\n"),
    ) + "client_password: json-secret\n";
    let mut proxy = BinaryProxy::start_with(&yaml, &["--log-json"], &[]);
    let mut c = proxy.client();
    assert_eq!(c.cmd(&[b"AUTH", b"json-secret"]), b"+OK\r\n");
    let id = String::from_utf8_lossy(&c.cmd(&[b"CLIENT", b"ID"]))
        .trim()
        .trim_start_matches(':')
        .to_string();
    assert_eq!(c.cmd(&[b"SELECT", b"1"]), b"+OK\r\n");
    assert!(c.cmd(&[b"AUTH", b"wrong"]).starts_with(b"-WRONGPASS"));
    assert!(c.cmd(&[b"GET", b"k"]).starts_with(b"-"));
    proxy.send_signal("TERM");
    proxy.wait_exit(Duration::from_secs(10)).expect("exits");
    let log = proxy.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |message: &str| {
        lines
            .iter()
            .find(|v| v["fields"]["message"].as_str() == Some(message))
            .unwrap_or_else(|| panic!("no {message:?} line in:\n{log}"))
    };
    let refused = find("AUTH refused");
    assert_eq!(refused["level"], "WARN");
    assert_eq!(refused["span"]["name"], "session");
    assert_eq!(refused["span"]["session"].to_string(), id);
    // The database the session had selected when it was refused.
    assert_eq!(refused["span"]["db"], "knowledge");
    assert_eq!(refused["span"]["upstream"], format!("127.0.0.1:{dead}"));
    let failed = find("upstream connection failed");
    assert_eq!(failed["span"]["name"], "upstream");
    assert_eq!(failed["span"]["db"], "knowledge");
    assert_eq!(failed["span"]["upstream"], format!("127.0.0.1:{dead}"));
}

/// `unixsocket`: clients reach the proxy over a Unix domain socket as they reach
/// Redis over its own: `redis-cli -s`, a pipeline answered in order, `CLIENT
/// LIST` showing `addr=PATH:0 laddr=PATH:0 flags=U` as Redis does; the file has
/// `unixsocketperm`'s mode, a socket left by an earlier run is replaced, and the
/// file goes at shutdown. A regular file at the path is not replaced: the proxy
/// does not start, and says why.
#[test]
fn unix_socket_listener_serves_clients_as_redis_does() {
    use std::io::{Read, Write};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("sidecar.sock");
    // A socket file an earlier run left behind.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind a stale socket"));
    assert!(sock.exists());
    let yaml = databases_yaml("127.0.0.1", redis.port())
        + &format!("unixsocket: {}\nunixsocketperm: 770\n", sock.display());
    let mut proxy = BinaryProxy::start_with(&yaml, &[], &[]);
    let meta = std::fs::metadata(&sock).expect("socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o770);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .arg("-s")
            .arg(&sock)
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["SET", "unix:k", "v"]), "OK");
    assert_eq!(cli(&["GET", "unix:k"]), "v");
    // Through TCP too: the same database.
    assert_eq!(proxy.client().cmd(&[b"GET", b"unix:k"]), b"$1\r\nv\r\n");
    // A pipeline, in order, and the client's own view of itself.
    let mut c = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(&resp_cmd(&[b"CLIENT", b"ID"])).expect("write");
    let mut buf = vec![0u8; 64];
    let n = c.read(&mut buf).expect("read");
    let id = String::from_utf8_lossy(&buf[1..n - 2]).into_owned();
    let mut out = Vec::new();
    for i in 0..3 {
        out.extend(resp_cmd(&[b"ECHO", format!("m{i}").as_bytes()]));
    }
    out.extend(resp_cmd(&[b"CLIENT", b"LIST", b"ID", id.as_bytes()]));
    c.write_all(&out).expect("write");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&got).contains("lib-ver=") {
        assert!(Instant::now() < deadline, "{}", printable(&got));
        let n = c.read(&mut buf).expect("read");
        assert!(n > 0, "closed: {}", printable(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("$2\r\nm0\r\n$2\r\nm1\r\n$2\r\nm2\r\n"),
        "{text}"
    );
    let path = sock.display();
    assert!(
        text.contains(&format!(" addr={path}:0 laddr={path}:0 ")),
        "{text}"
    );
    assert!(text.contains(" flags=U "), "{text}");
    drop(c);
    proxy.send_signal("TERM");
    proxy.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!sock.exists(), "the socket file is removed at shutdown");

    // A regular file where the socket should go: not replaced.
    std::fs::write(&sock, "keep me").expect("write file");
    let config = dir.path().join("proxy.yaml");
    std::fs::write(&config, &yaml).expect("write config");
    let config = config.display().to_string();
    let (stdout, stderr, status) = run_binary(
        &[
            "--config",
            &config,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
        Duration::from_secs(10),
    );
    assert!(!status.success());
    let err = stderr + &stdout;
    assert!(
        err.contains(&format!("cannot listen on Unix socket {path}"))
            && err.contains("not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&sock).expect("kept"), "keep me");
}
