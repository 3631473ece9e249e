//! Authentication: the proxy's own client password (AUTH / HELLO AUTH answered like
//! Redis's requirepass), and the upstream password the proxy sends on its own
//! connections (never shown to clients).

mod support;

use std::time::Duration;

use bb8_redis::redis::{self, AsyncCommands};
use redis_sidecar::config::Secret;
use support::{
    bb8_pool, printable, proxy_config, redis_cli, resp_bulk, resp_cmd, start_proxy, AsyncRawClient,
    RedisServer,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_password_is_enforced_like_redis_requirepass() {
    let redis = RedisServer::start();
    // Redis with the same password, as the reference for exact replies.
    let reference = RedisServer::start_with_args(&["--requirepass", "pw"]);
    let mut config = proxy_config(&redis);
    config.client_password = Some(Secret("pw".into()));
    let proxy = start_proxy(config).await;
    let mut p = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut d = AsyncRawClient::connect(reference.addr()).await;

    let script: &[&[&[u8]]] = &[
        &[b"GET", b"k"],
        &[b"SELECT", b"1"],
        &[b"AUTH", b"wrong"],
        &[b"AUTH", b"default", b"wrong"],
        &[b"AUTH", b"nosuchuser", b"pw"],
        &[b"GET", b"k"],
        &[b"AUTH", b"pw"],
        &[b"SET", b"k", b"v"],
        &[b"GET", b"k"],
        &[b"AUTH", b"default", b"pw"],
    ];
    for args in script {
        let got = p.cmd(args).await;
        let want = d.cmd(args).await;
        let shown: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert_eq!(printable(&got), printable(&want), "{shown:?}");
    }
    // Nothing reached Redis before AUTH (the NOAUTH was the proxy's own).
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&[b"GET", b"k"]).await, resp_bulk(b"v"));

    // A pipeline: commands before AUTH are refused, those after it run.
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    c.send(
        &[
            resp_cmd(&[b"INCR", b"n"]),
            resp_cmd(&[b"AUTH", b"pw"]),
            resp_cmd(&[b"INCR", b"n"]),
            resp_cmd(&[b"SELECT", b"2"]),
            resp_cmd(&[b"INCR", b"n"]),
        ]
        .concat(),
    )
    .await;
    let r = c.read_replies(5).await;
    assert_eq!(
        r,
        [
            b"-NOAUTH Authentication required.\r\n".to_vec(),
            b"+OK\r\n".to_vec(),
            b":1\r\n".to_vec(),
            b"+OK\r\n".to_vec(),
            b":1\r\n".to_vec(),
        ]
    );
    // HELLO 2 AUTH authenticates too; HELLO without AUTH does not, refused in
    // the words of the upstream's Redis version (once the proxy has learnt it:
    // its probe asks at start).
    let want = AsyncRawClient::connect(reference.addr())
        .await
        .cmd(&[b"HELLO", b"2"])
        .await;
    assert!(want.starts_with(b"-NOAUTH"), "{}", printable(&want));
    let mut h = AsyncRawClient::connect(proxy.local_addr()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = h.cmd(&[b"HELLO", b"2"]).await;
        if r == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} vs Redis's {}",
            printable(&r),
            printable(&want)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = h.cmd(&[b"HELLO", b"2", b"AUTH", b"default", b"bad"]).await;
    assert!(r.starts_with(b"-WRONGPASS"), "{}", printable(&r));
    let r = h.cmd(&[b"HELLO", b"2", b"AUTH", b"default", b"pw"]).await;
    assert!(r.starts_with(b"*"), "{}", printable(&r));
    assert_eq!(h.cmd(&[b"GET", b"k"]).await, resp_bulk(b"v"));
    // RESET forgets the authentication.
    assert_eq!(h.cmd(&[b"RESET"]).await, b"+RESET\r\n");
    let r = h.cmd(&[b"GET", b"k"]).await;
    assert!(r.starts_with(b"-NOAUTH"), "{}", printable(&r));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_authenticate_with_the_client_password() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.client_password = Some(Secret("s3cret-pw".into()));
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();

    let manager = bb8_redis::RedisConnectionManager::new(format!(
        "redis://:s3cret-pw@127.0.0.1:{}/2",
        addr.port()
    ))
    .unwrap();
    let pool = bb8_redis::bb8::Pool::builder()
        .max_size(2)
        .connection_timeout(Duration::from_secs(5))
        .build(manager)
        .await
        .unwrap();
    {
        let mut conn = pool.get().await.expect("authenticated pool connection");
        let () = conn.set("from-rs", "yes").await.unwrap();
        let v: String = conn.get("from-rs").await.unwrap();
        assert_eq!(v, "yes");
    }
    // Without the password, redis-rs's commands are refused.
    let unauth = bb8_pool(addr, 0, 1).await;
    let r = unauth.get().await;
    assert!(
        r.is_err(),
        "a pool without the password must not get a working connection"
    );

    let (out, _) = tokio::task::spawn_blocking(move || {
        redis_cli(
            addr.port(),
            &[
                "-a",
                "s3cret-pw",
                "--no-auth-warning",
                "-n",
                "2",
                "GET",
                "from-rs",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(out, "yes\n");
    let (out, _) = tokio::task::spawn_blocking(move || redis_cli(addr.port(), &["GET", "x"]))
        .await
        .unwrap();
    assert!(out.contains("NOAUTH"), "{out}");
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&[b"SELECT", b"2"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"from-rs"]).await, resp_bulk(b"yes"));
    drop(pool);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_without_a_client_password_answers_like_redis() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut p = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut d = AsyncRawClient::connect(redis.addr()).await;
    let got = p.cmd(&[b"AUTH", b"x"]).await;
    let want = d.cmd(&[b"AUTH", b"x"]).await;
    assert_eq!(printable(&got), printable(&want));
    assert_eq!(p.cmd(&[b"PING"]).await, b"+PONG\r\n");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_password_is_used_on_every_kind_of_connection() {
    let redis = RedisServer::start_with_args(&["--requirepass", "upstream-pw"]);
    let mut config = proxy_config(&redis);
    for db in &mut config.databases {
        db.upstream.password = Some(Secret("upstream-pw".into()));
    }
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    // Clients need no password (none configured for them); shared connections AUTH.
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SELECT", b"7"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"k", b"seven"]).await, b"+OK\r\n");
    // Exclusive connections (transactions, blocking commands) AUTH too.
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*1\r\n$5\r\nseven\r\n");
    assert_eq!(c.cmd(&[b"RPUSH", b"q", b"x"]).await, b":1\r\n");
    assert_eq!(
        c.cmd(&[b"BLPOP", b"q", b"1"]).await,
        b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n".to_vec()
    );
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&[b"AUTH", b"upstream-pw"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"SELECT", b"7"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"k"]).await, resp_bulk(b"seven"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_upstream_password_is_an_upstream_error_that_does_not_show_it() {
    let redis = RedisServer::start_with_args(&["--requirepass", "right-pw"]);
    let mut config = proxy_config(&redis);
    for db in &mut config.databases {
        db.upstream.password = Some(Secret("wrong-pw-123".into()));
    }
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    c.set_timeout(Duration::from_secs(15));
    for args in [&[&b"GET"[..], b"k"][..], &[b"MULTI"]] {
        let r = String::from_utf8_lossy(&c.cmd(args).await).into_owned();
        assert!(r.starts_with("-UPSTREAM database 'main' (db 0): "), "{r}");
        assert!(r.contains("WRONGPASS") || r.contains("rejected"), "{r}");
        assert!(
            !r.contains("wrong-pw-123") && !r.contains("right-pw"),
            "{r}"
        );
    }
    let r = c.cmd(&[b"PROXY", b"INFO"]).await;
    let t = String::from_utf8_lossy(&r);
    assert!(!t.contains("wrong-pw-123"), "{t}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_sees_proxy_errors_as_server_errors() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.client_password = Some(Secret("pw".into()));
    let proxy = start_proxy(config).await;
    let client = redis::Client::open(format!(
        "redis://:wrong@127.0.0.1:{}/0",
        proxy.local_addr().port()
    ))
    .unwrap();
    let err = client
        .get_multiplexed_async_connection()
        .await
        .expect_err("wrong password must fail the connection");
    assert!(
        format!("{err}").to_ascii_uppercase().contains("WRONGPASS")
            || err.kind() == redis::ErrorKind::AuthenticationFailed,
        "{err:?}"
    );
    proxy.shutdown().await;
}

#[test]
fn passwords_never_appear_in_the_logs() {
    let redis = RedisServer::start_with_args(&["--requirepass", "the-right-one"]);
    // Wrong upstream password, a client password, debug logging and command logging.
    let yaml = format!(
        "{}password: wrong-upstream-secret\nclient_password: client-secret-77\nlog_commands: true\n",
        support::databases_yaml("127.0.0.1", redis.port())
    );
    let mut proxy = support::BinaryProxy::start_with(&yaml, &["--log-level", "debug"], &[]);
    let mut c = proxy.client();
    assert!(c
        .cmd(&[b"AUTH", b"bad-guess-secret"])
        .starts_with(b"-WRONGPASS"));
    assert_eq!(c.cmd(&[b"AUTH", b"client-secret-77"]), b"+OK\r\n");
    let r = c.cmd(&[b"SET", b"k", b"value-secret-99"]);
    assert!(r.starts_with(b"-UPSTREAM"), "{}", printable(&r));
    let r = c.cmd(&[b"PROXY", b"INFO"]);
    proxy.send_signal("TERM");
    proxy.wait_exit(Duration::from_secs(10)).expect("exit");
    let log = proxy.log();
    assert!(
        log.contains("SET") || log.contains("set"),
        "log_commands should log names: {log}"
    );
    for secret in [
        "wrong-upstream-secret",
        "client-secret-77",
        "bad-guess-secret",
        "value-secret-99",
        "the-right-one",
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        assert!(!String::from_utf8_lossy(&r).contains(secret));
    }
}
