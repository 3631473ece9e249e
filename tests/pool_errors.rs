//! Errors of the exclusive-connection pool (transactions, blocking commands) name
//! their real cause, as the shared path does: a rejected AUTH, a refused connection.
//! "All in use" is said only when every pooled connection really is checked out.
//! Real Redis servers (with `requirepass`, or killed) and raw clients throughout.

mod support;

use std::time::{Duration, Instant};

use redis_sidecar::config::{Config, Secret};
use support::{
    free_port, printable, proxy_config, resp_cmd, start_proxy, without_retries_or_breaker,
    AsyncRawClient, RedisServer,
};

/// Comfortably below the default 5 s `connect_timeout`: an error that is immediate
/// (refused, handshake rejected) must reach the client without waiting for it.
const PROMPT: Duration = Duration::from_millis(1500);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The proxy in front of `redis`, every database using `password` upstream, retries
/// and breaker off (so each command sees the upstream's failure as it happens).
fn config_with_password(redis: &RedisServer, password: Option<&str>) -> Config {
    let mut config = proxy_config(redis);
    for db in &mut config.databases {
        db.upstream.password = password.map(|p| Secret(p.to_string()));
    }
    without_retries_or_breaker(&mut config);
    config
}

/// A config pointing at a loopback port where nothing listens.
fn config_for_port(port: u16) -> Config {
    let mut config = Config::for_upstream("127.0.0.1", port);
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    without_retries_or_breaker(&mut config);
    config
}

/// Sends `args`, returns the reply as text and how long it took.
async fn timed(c: &mut AsyncRawClient, args: &[&[u8]]) -> (String, Duration) {
    let started = Instant::now();
    let r = c.cmd(args).await;
    (text(&r), started.elapsed())
}

/// Asserts MULTI and BLPOP both fail at once with a reply starting with `expected`,
/// and that the failed command left no transaction behind.
async fn assert_pool_commands_fail_with(c: &mut AsyncRawClient, expected: &str) {
    let (multi, took) = timed(c, &[b"MULTI"]).await;
    assert!(
        multi.starts_with(expected),
        "MULTI should give the real cause\n  expected: {expected}…\n  got:      {multi}"
    );
    assert!(took < PROMPT, "MULTI took {took:?} to fail: {multi}");
    let (blpop, took) = timed(c, &[b"BLPOP", b"pool-errors:q", b"1"]).await;
    assert!(
        blpop.starts_with(expected),
        "BLPOP should give the real cause\n  expected: {expected}…\n  got:      {blpop}"
    );
    assert!(took < PROMPT, "BLPOP took {took:?} to fail: {blpop}");
    // MULTI failed, so EXEC is not part of a transaction.
    let exec = text(&c.cmd(&[b"EXEC"]).await);
    assert!(
        !exec.starts_with("*"),
        "a transaction was left open: {exec}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_upstream_password_is_named_by_multi_and_blpop_as_by_the_shared_path() {
    let redis = RedisServer::start_with_args(&["--requirepass", "right-pw"]);
    let proxy = start_proxy(config_with_password(&redis, Some("wrong-pw"))).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    c.set_timeout(Duration::from_secs(15));

    let expected = format!(
        "-UPSTREAM database 'main' (db 0): upstream 127.0.0.1:{} rejected the connection setup: WRONGPASS",
        redis.port()
    );
    let shared = text(&c.cmd(&[b"GET", b"k"]).await);
    assert!(shared.starts_with(&expected), "shared path: {shared}");
    assert_pool_commands_fail_with(&mut c, &expected).await;
    // Again, now that the pool has failed before (nothing stale may be reported).
    assert_pool_commands_fail_with(&mut c, &expected).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_upstream_password_is_named_noauth_by_multi_and_blpop() {
    let redis = RedisServer::start_with_args(&["--requirepass", "right-pw"]);
    let proxy = start_proxy(config_with_password(&redis, None)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    c.set_timeout(Duration::from_secs(15));

    // db 0: the connection setup sends nothing Redis could refuse, so the pool must
    // notice on its own that the connection is not logged in.
    let expected = format!(
        "-UPSTREAM database 'main' (db 0): upstream 127.0.0.1:{} rejected the connection setup: NOAUTH",
        redis.port()
    );
    assert_pool_commands_fail_with(&mut c, &expected).await;

    // db 1: SELECT 1 is refused during the setup, on the shared path and in the pool.
    assert_eq!(c.cmd(&[b"SELECT", b"1"]).await, b"+OK\r\n");
    let expected = format!(
        "-UPSTREAM database 'knowledge' (db 1): upstream 127.0.0.1:{} rejected the connection setup: NOAUTH",
        redis.port()
    );
    let shared = text(&c.cmd(&[b"GET", b"k"]).await);
    assert!(shared.starts_with(&expected), "shared path: {shared}");
    assert_pool_commands_fail_with(&mut c, &expected).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_named_cannot_connect_by_multi_and_blpop() {
    let port = free_port();
    let proxy = start_proxy(config_for_port(port)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    c.set_timeout(Duration::from_secs(15));

    let expected = format!("-UPSTREAM database 'main' (db 0): cannot connect to 127.0.0.1:{port}");
    let shared = text(&c.cmd(&[b"GET", b"k"]).await);
    assert!(shared.starts_with(&expected), "shared path: {shared}");
    assert_pool_commands_fail_with(&mut c, &expected).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_gone_after_the_pool_was_used_is_named_cannot_connect() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    let mut config = proxy_config(&redis);
    without_retries_or_breaker(&mut config);
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    c.set_timeout(Duration::from_secs(15));

    // The pool now holds idle connections to a Redis that then goes away.
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*0\r\n");
    assert_eq!(
        c.cmd(&[b"BLPOP", b"pool-errors:q", b"0.01"]).await,
        b"*-1\r\n"
    );
    redis.kill();

    let expected = format!("-UPSTREAM database 'main' (db 0): cannot connect to 127.0.0.1:{port}");
    assert_pool_commands_fail_with(&mut c, &expected).await;

    // Redis is back: the pool serves again.
    let redis = tokio::task::spawn_blocking(move || RedisServer::start_on_port(port))
        .await
        .unwrap();
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*0\r\n");
    drop(redis);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_use_is_said_when_every_pooled_connection_is_checked_out() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.databases[0].upstream.pool_size = 1;
    config.databases[0].upstream.connect_timeout = Duration::from_millis(500);
    let proxy = start_proxy(config).await;
    let mut a = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut b = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;

    // A holds the only pooled connection, blocked in BLPOP.
    a.send(&resp_cmd(&[b"BLPOP", b"pool-errors:a", b"0"])).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info = text(&direct.cmd(&[b"INFO", b"clients"]).await);
        if info.contains("blocked_clients:1") {
            break;
        }
        assert!(Instant::now() < deadline, "A never blocked: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (r, took) = timed(&mut b, &[b"BLPOP", b"pool-errors:b", b"5"]).await;
    assert!(
        r.starts_with("-UPSTREAM database 'main' (db 0): ") && r.contains("all in use"),
        "{r}"
    );
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "B should wait about connect_timeout (0.5 s) for a free connection, took {took:?}"
    );

    // A is served, its connection goes back, and B gets it.
    assert_eq!(b.cmd(&[b"RPUSH", b"pool-errors:a", b"x"]).await, b":1\r\n");
    assert_eq!(
        printable(&a.read_reply().await),
        printable(b"*2\r\n$13\r\npool-errors:a\r\n$1\r\nx\r\n")
    );
    assert_eq!(
        b.cmd(&[b"BLPOP", b"pool-errors:b", b"0.01"]).await,
        b"*-1\r\n"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_under_a_used_pool_is_named_wrongpass_by_multi_and_blpop() {
    let mut redis = RedisServer::start_with_args(&["--requirepass", "old-pw"]);
    let port = redis.port();
    let proxy = start_proxy(config_with_password(&redis, Some("old-pw"))).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    c.set_timeout(Duration::from_secs(15));

    // The pool now holds idle connections, logged in with the old password.
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*0\r\n");
    assert_eq!(
        c.cmd(&[b"BLPOP", b"pool-errors:q", b"0.01"]).await,
        b"*-1\r\n"
    );
    // Redis comes back with another password, which the proxy does not know.
    redis.kill();
    let redis = tokio::task::spawn_blocking(move || {
        RedisServer::start_on_port_with_args(port, &["--requirepass", "new-pw"])
    })
    .await
    .unwrap();

    let expected = format!(
        "-UPSTREAM database 'main' (db 0): upstream 127.0.0.1:{port} rejected the connection setup: WRONGPASS"
    );
    let shared = text(&c.cmd(&[b"GET", b"k"]).await);
    assert!(shared.starts_with(&expected), "shared path: {shared}");
    assert_pool_commands_fail_with(&mut c, &expected).await;
    drop(redis);
    proxy.shutdown().await;
}
