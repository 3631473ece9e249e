//! Hostile input (issue 9): an HTTP request sent to the proxy — what a web page can
//! make a browser do against a port on localhost — is treated as Redis treats it:
//! the client is closed, nothing after the `POST` / `Host:` line runs, and the
//! shared upstream connections that other clients use are never touched.

mod support;

use std::time::Duration;

use support::{proxy_config, start_proxy, AsyncRawClient, RedisServer};

/// Everything the peer sends until it closes (or goes quiet).
async fn until_closed(addr: std::net::SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// An HTTP POST whose body, padded past the proxy's first read, carries commands.
fn http_post(padding: usize) -> Vec<u8> {
    let mut body = vec![b' '; padding];
    body.extend_from_slice(
        b"\r\nSET pwned yes\r\n*3\r\n$3\r\nSET\r\n$6\r\npwned2\r\n$3\r\nyes\r\n",
    );
    let mut req = format!(
        "POST / HTTP/1.1\r\nHost: localhost:6380\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_post_is_refused_as_redis_refuses_it() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    let mut admin = AsyncRawClient::connect(proxy.local_addr()).await;
    // Warm the shared connection and note how many connects it took.
    assert_eq!(admin.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    let connects = |info: &[u8]| -> String {
        let text = String::from_utf8_lossy(info).into_owned();
        text.split(',')
            .find_map(|f| f.strip_prefix("connects=").map(str::to_string))
            .unwrap_or_default()
    };
    let before = connects(&admin.cmd(&[b"PROXY", b"INFO", b"databases"]).await);
    assert!(
        before.parse::<u64>().is_ok_and(|n| n > 0),
        "connects: {before:?}"
    );
    for padding in [0, 200_000, 2_000_000] {
        let bytes = http_post(padding);
        let (to_redis, closed) = until_closed(redis.addr(), &bytes).await;
        assert!(closed && to_redis.is_empty(), "Redis: {to_redis:?}");
        let (to_proxy, closed) = until_closed(proxy.local_addr(), &bytes).await;
        assert!(closed, "the proxy kept the connection open");
        assert_eq!(to_proxy, to_redis, "padding {padding}");
        // A bare `Host:` line is refused the same way, as a multibulk too.
        for bytes in [
            &b"Host: x\r\nSET pwned yes\r\n"[..],
            b"*2\r\n$4\r\nPOST\r\n$1\r\n/\r\n*1\r\n$4\r\nPING\r\n",
        ] {
            let (to_proxy, closed) = until_closed(proxy.local_addr(), bytes).await;
            assert!(closed && to_proxy.is_empty(), "{to_proxy:?}");
        }
    }
    assert_eq!(
        direct.cmd(&[b"EXISTS", b"pwned", b"pwned2"]).await,
        b":0\r\n"
    );
    // The shared connection was never broken: no reconnect, and other clients go on.
    let after = connects(&admin.cmd(&[b"PROXY", b"INFO", b"databases"]).await);
    assert_eq!(
        before, after,
        "the attack broke a shared upstream connection"
    );
    assert_eq!(admin.cmd(&[b"GET", b"k"]).await, b"$1\r\nv\r\n");
    proxy.shutdown().await;
}

/// Bytes Redis refuses as a protocol error are refused by the proxy itself, with
/// Redis's reply, and never reach (and break) a shared upstream connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lengths_are_refused_like_redis_and_never_forwarded() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut admin = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(admin.cmd(&[b"PING"]).await, b"+PONG\r\n");
    let info =
        String::from_utf8_lossy(&admin.cmd(&[b"PROXY", b"INFO", b"databases"]).await).into_owned();
    let connects = |info: &str| -> Option<String> {
        info.split(',')
            .find_map(|f| f.strip_prefix("connects=").map(str::to_string))
    };
    let before = connects(&info).expect("connects field");
    let cases: [&[u8]; 10] = [
        b"*-0\r\n*1\r\n$4\r\nPING\r\n",
        b"*+1\r\n$4\r\nPING\r\n",
        b"*01\r\n$4\r\nPING\r\n",
        b"*1\r\n$-0\r\n",
        b"*1\r\n$+4\r\nPING\r\n",
        b"*1\r\n$04\r\nPING\r\n",
        b"*1\r\n$-1\r\n",
        b"*2147483648\r\n",
        b"*1\r\n+OK\r\n",
        b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n",
    ];
    for bytes in cases {
        let (direct, direct_closed) = until_closed(redis.addr(), bytes).await;
        let (proxied, proxied_closed) = until_closed(proxy.local_addr(), bytes).await;
        assert_eq!(
            (String::from_utf8_lossy(&proxied), proxied_closed),
            (String::from_utf8_lossy(&direct), direct_closed),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    let info =
        String::from_utf8_lossy(&admin.cmd(&[b"PROXY", b"INFO", b"databases"]).await).into_owned();
    assert_eq!(connects(&info).expect("connects field"), before);
    proxy.shutdown().await;
}

/// Password guessing: refused attempts are counted and logged, and a connection
/// is closed after 10 of them; the comparison does not stop at the first
/// differing byte (checked by construction, see `same_secret`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_auth_failures_close_the_connection() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.client_password = Some(redis_sidecar::config::Secret("s3cret-pass".into()));
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    for i in 1..10 {
        let r = c.cmd(&[b"AUTH", format!("guess-{i}").as_bytes()]).await;
        assert_eq!(
            r,
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        );
    }
    // The 10th refusal is the last on this connection.
    c.send(&support::resp_cmd(&[b"AUTH", b"s3cret-pasX"])).await;
    let rest = c.read_until_closed().await;
    assert_eq!(
        rest,
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    // Another connection with the right password is served; the failures show.
    let mut ok = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(ok.cmd(&[b"AUTH", b"s3cret-pass"]).await, b"+OK\r\n");
    let stats = String::from_utf8_lossy(&ok.cmd(&[b"PROXY", b"INFO", b"stats"]).await).into_owned();
    assert!(stats.contains("auth_failures:10\r\n"), "{stats}");
    proxy.shutdown().await;
}

/// Silent connections cannot hold `max_clients` slots: an unauthenticated client is
/// closed after `auth_timeout`, an idle one after `client_idle_timeout` — but not
/// while it waits on a blocking command or is subscribed (as Redis's `timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_closed_after_their_timeouts() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.client_password = Some(redis_sidecar::config::Secret("pw".into()));
    config.auth_timeout = Duration::from_millis(300);
    config.client_idle_timeout = Duration::from_millis(600);
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();

    // Never authenticates: closed at about 300 ms, no reply.
    let started = std::time::Instant::now();
    let (out, closed) = until_closed(addr, b"").await;
    assert!(closed && out.is_empty(), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    // Authenticated, then silent: still open past the auth timeout, closed once
    // idle for 600 ms.
    let mut idle = AsyncRawClient::connect(addr).await;
    assert_eq!(idle.cmd(&[b"AUTH", b"pw"]).await, b"+OK\r\n");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(idle.cmd(&[b"PING"]).await, b"+PONG\r\n");
    let started = std::time::Instant::now();
    assert!(idle.read_until_closed().await.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // Blocked longer than the idle timeout: served, not closed.
    let mut blocked = AsyncRawClient::connect(addr).await;
    assert_eq!(blocked.cmd(&[b"AUTH", b"pw"]).await, b"+OK\r\n");
    assert_eq!(
        blocked.cmd(&[b"BLPOP", b"nothing", b"1.5"]).await,
        b"*-1\r\n"
    );
    // Subscribed longer than the idle timeout: still gets messages.
    let mut sub = AsyncRawClient::connect(addr).await;
    assert_eq!(sub.cmd(&[b"AUTH", b"pw"]).await, b"+OK\r\n");
    sub.cmd(&[b"SUBSCRIBE", b"news"]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut publisher = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(
        publisher.cmd(&[b"PUBLISH", b"news", b"hi"]).await,
        b":1\r\n"
    );
    assert!(sub.read_reply().await.ends_with(b"$2\r\nhi\r\n"));
    // Tracking on the connection it subscribed on, then unsubscribed: out of
    // pub/sub, so closed once idle, as by Redis (the proxy keeps that
    // connection for its tracking).
    let mut tracker = AsyncRawClient::connect(addr).await;
    assert!(tracker
        .cmd(&[b"HELLO", b"3", b"AUTH", b"default", b"pw"])
        .await
        .starts_with(b"%7\r\n"));
    assert_eq!(
        tracker.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await,
        b"+OK\r\n"
    );
    tracker.cmd(&[b"SUBSCRIBE", b"news"]).await;
    tracker.cmd(&[b"UNSUBSCRIBE"]).await;
    let started = std::time::Instant::now();
    assert!(tracker.read_until_closed().await.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    proxy.shutdown().await;
}

/// Before AUTH, a client may send what Redis allows an unauthenticated client: at
/// most 10 arguments and 16 KiB bulk strings (Redis's own errors, then close), so
/// nobody makes the proxy buffer a huge request without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_clients_get_redis_limits() {
    let redis = RedisServer::start_with_args(&["--requirepass", "pw"]);
    let mut config = proxy_config(&redis);
    for db in &mut config.databases {
        db.upstream.password = Some(redis_sidecar::config::Secret("pw".into()));
    }
    config.client_password = Some(redis_sidecar::config::Secret("pw".into()));
    let proxy = start_proxy(config).await;
    let many: Vec<u8> = support::resp_cmd(&[&b"AUTH"[..]; 11]);
    let big = support::resp_cmd(&[b"AUTH", &vec![b'x'; 16 * 1024 + 1]]);
    let fine_then_big = [
        support::resp_cmd(&[b"AUTH", b"pw"]),
        support::resp_cmd(&[b"SET", b"k", &vec![b'x'; 100_000]]),
        support::resp_cmd(&[b"STRLEN", b"k"]),
    ]
    .concat();
    for bytes in [&many, &big, &fine_then_big] {
        let (direct, direct_closed) = until_closed(redis.addr(), bytes).await;
        let (proxied, proxied_closed) = until_closed(proxy.local_addr(), bytes).await;
        assert_eq!(
            (String::from_utf8_lossy(&proxied), proxied_closed),
            (String::from_utf8_lossy(&direct), direct_closed)
        );
    }
    proxy.shutdown().await;
}

/// TCP keepalive is on for client and upstream connections (as Redis's default
/// `tcp-keepalive 300`), so a peer that vanished does not hold a connection
/// forever. Read from the kernel with `ss -o` (its keepalive timer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_upstream_sockets_have_keepalive() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
    // Established TCP sockets matching an `ss` filter, with their timers.
    let ss = |filter: String| -> String {
        let out = std::process::Command::new("ss")
            .args(["-tno", "state", "established", &filter])
            .output()
            .expect("ss (iproute2)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The proxy's side of the client connection (source port: the proxy's).
    let client_side = ss(format!("( sport = :{} )", proxy.local_addr().port()));
    assert!(client_side.contains("keepalive"), "{client_side}");
    // The proxy's upstream connections (destination port: Redis's).
    let upstream_side = ss(format!("( dport = :{} )", redis.port()));
    assert!(upstream_side.contains("keepalive"), "{upstream_side}");
    proxy.shutdown().await;
}

/// Redis's protected mode: with no `client_password`, only clients on 127.0.0.1
/// (or ::1) are served — others (here a client whose source address is
/// 127.0.0.2, which Redis also treats as not loopback) get `-DENIED` and are
/// closed. A password, or `protected_mode: false`, lifts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_mode_serves_only_loopback_without_a_password() {
    async fn from_127_0_0_2(addr: std::net::SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().unwrap())
            .expect("bind 127.0.0.2");
        let mut s = socket.connect(addr).await.expect("connect");
        let _ = s.write_all(bytes).await;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => return (out, false),
            }
        }
    }
    let redis = RedisServer::start();
    let ping = support::resp_cmd(&[b"PING"]);
    // Default: protected.
    let proxy = start_proxy(proxy_config(&redis)).await;
    let (out, closed) = from_127_0_0_2(proxy.local_addr(), &ping).await;
    assert!(
        closed && out.starts_with(b"-DENIED"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    let mut local = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(local.cmd(&[b"PING"]).await, b"+PONG\r\n");
    proxy.shutdown().await;
    // With a password: served (and asked to authenticate).
    let mut config = proxy_config(&redis);
    config.client_password = Some(redis_sidecar::config::Secret("pw".into()));
    let proxy = start_proxy(config).await;
    let (out, _) = from_127_0_0_2(proxy.local_addr(), &ping).await;
    assert!(
        out.starts_with(b"-NOAUTH"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    proxy.shutdown().await;
    // Explicitly off: served.
    let mut config = proxy_config(&redis);
    config.protected_mode = false;
    let proxy = start_proxy(config).await;
    let (out, _) = from_127_0_0_2(proxy.local_addr(), &ping).await;
    assert_eq!(out, b"+PONG\r\n");
    proxy.shutdown().await;
}

/// Refused AUTHs are answered ever more slowly on the same connection (0, 10, 20,
/// 40 … ms, at most 1 s), so guessing costs time as well as connections; only the
/// guessing client waits (another client's PING stays fast meanwhile), a new
/// connection starts again from no delay, and CLIENT KILL or the proxy's shutdown
/// cut a pending pause short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_auths_are_answered_ever_more_slowly() {
    use std::time::Instant;
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.client_password = Some(redis_sidecar::config::Secret("right-pass".into()));
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();

    // Another client PINGs every 5 ms meanwhile; its slowest reply is kept.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinger = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut p = AsyncRawClient::connect(addr).await;
            assert_eq!(p.cmd(&[b"AUTH", b"right-pass"]).await, b"+OK\r\n");
            let mut worst = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                assert_eq!(p.cmd(&[b"PING"]).await, b"+PONG\r\n");
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            worst
        })
    };

    let mut g = AsyncRawClient::connect(addr).await;
    let started = Instant::now();
    let mut each = Vec::new();
    for i in 1..=6 {
        let t = Instant::now();
        let r = g.cmd(&[b"AUTH", format!("guess-{i}").as_bytes()]).await;
        assert!(r.starts_with(b"-WRONGPASS"), "{r:?}");
        each.push(t.elapsed().as_millis());
    }
    let total = started.elapsed();
    // 0 + 10 + 20 + 40 + 80 + 160 ms.
    assert!(total >= Duration::from_millis(310), "{total:?} {each:?}");
    assert!(total < Duration::from_millis(1500), "{total:?} {each:?}");

    // A new connection: one typo costs nothing, and the right password is served.
    let mut n = AsyncRawClient::connect(addr).await;
    let t = Instant::now();
    assert!(n.cmd(&[b"AUTH", b"typo"]).await.starts_with(b"-WRONGPASS"));
    assert_eq!(n.cmd(&[b"AUTH", b"right-pass"]).await, b"+OK\r\n");
    let fresh = t.elapsed();
    assert!(fresh < Duration::from_millis(50), "{fresh:?}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = pinger.await.unwrap();
    assert!(worst < Duration::from_millis(50), "{worst:?}");
    eprintln!("6 refused AUTHs: {total:?} ({each:?} ms each); fresh connection AUTH pair {fresh:?}; other client's slowest PING {worst:?}");

    // CLIENT KILL ends a pending pause at once (the 7th refusal waits 320 ms).
    let g_addr = g.stream_mut().local_addr().unwrap().to_string();
    g.send(&support::resp_cmd(&[b"AUTH", b"guess-7"])).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = Instant::now();
    assert_eq!(
        n.cmd(&[b"CLIENT", b"KILL", b"ADDR", g_addr.as_bytes()])
            .await,
        b":1\r\n"
    );
    let _ = g.read_until_closed().await;
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );

    // So does the shutdown: a connection whose pause is pending does not hold it.
    let mut s = AsyncRawClient::connect(addr).await;
    for i in 1..=7 {
        let _ = s.cmd(&[b"AUTH", format!("x{i}").as_bytes()]).await;
    }
    s.send(&support::resp_cmd(&[b"AUTH", b"x8"])).await; // a 640 ms pause
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = Instant::now();
    assert!(proxy.shutdown().await);
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}
