//! `auth_passthrough: true`: AUTH and `HELLO … AUTH` are checked by Redis itself,
//! and a client that logs in runs its commands on a connection of its own, logged
//! in as that user (Redis's ACL rules apply to it).

mod support;

use support::{
    printable, proxy_config, redis_cli, resp_bulk, start_proxy, AsyncRawClient, RedisServer,
};

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).into_owned()
}

async fn passthrough_proxy(redis: &RedisServer) -> redis_sidecar::server::Proxy {
    let mut config = proxy_config(redis);
    config.auth_passthrough = true;
    start_proxy(config).await
}

/// The ACL user `u1` (password `pw1`, every right) on `redis`, and the proxy in
/// front of it.
async fn u1_and_proxy(redis: &RedisServer) -> redis_sidecar::server::Proxy {
    let (out, _) = redis_cli(
        redis.port(),
        &["ACL", "SETUSER", "u1", "on", ">pw1", "+@all", "~*", "&*"],
    );
    assert!(out.contains("OK"), "{out}");
    passthrough_proxy(redis).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_users_log_in_through_the_proxy_and_keep_their_rights() {
    let redis = RedisServer::start();
    let (out, status) = redis_cli(
        redis.port(),
        &[
            "ACL",
            "SETUSER",
            "alice",
            "on",
            ">alice-pw",
            "~*",
            "&*",
            "+@all",
        ],
    );
    assert!(status.success() && out.contains("OK"), "{out}");
    let (out, _) = redis_cli(
        redis.port(),
        &[
            "ACL",
            "SETUSER",
            "reader",
            "on",
            ">reader-pw",
            "~*",
            "+get",
            "+acl|whoami",
            "+ping",
        ],
    );
    assert!(out.contains("OK"), "{out}");
    let proxy = passthrough_proxy(&redis).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;

    // Refusals are Redis's own, byte for byte.
    for args in [
        &[&b"AUTH"[..], b"alice", b"wrong"][..],
        &[b"AUTH", b"nobody", b"pw"],
        &[b"AUTH", b"some-password"],
    ] {
        assert_eq!(
            printable(&c.cmd(args).await),
            printable(&direct.cmd(args).await),
            "{args:?}"
        );
    }
    // Before logging in, the session runs as the proxy's own upstream user.
    assert_eq!(c.cmd(&[b"ACL", b"WHOAMI"]).await, resp_bulk(b"default"));

    assert_eq!(c.cmd(&[b"AUTH", b"alice", b"alice-pw"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"ACL", b"WHOAMI"]).await, resp_bulk(b"alice"));
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    // A pipeline after the login, a transaction and SELECT all run as alice.
    assert_eq!(c.cmd(&[b"SELECT", b"3"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"ACL", b"WHOAMI"]).await, b"+QUEUED\r\n");
    assert_eq!(
        c.cmd(&[b"EXEC"]).await,
        [&b"*1\r\n"[..], &resp_bulk(b"alice")].concat()
    );
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, b"$-1\r\n", "db 3 has no k");
    assert_eq!(c.cmd(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, resp_bulk(b"v"));
    // CLIENT LIST shows the user.
    let list = text(&c.cmd(&[b"CLIENT", b"LIST"]).await);
    assert!(list.contains(" user=alice "), "{list}");
    // A failed AUTH keeps the earlier login, as on Redis.
    assert!(c
        .cmd(&[b"AUTH", b"alice", b"nope"])
        .await
        .starts_with(b"-WRONGPASS"));
    assert_eq!(c.cmd(&[b"ACL", b"WHOAMI"]).await, resp_bulk(b"alice"));

    // A restricted user gets Redis's NOPERM for what it may not do.
    let mut r = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(r.cmd(&[b"AUTH", b"reader", b"reader-pw"]).await, b"+OK\r\n");
    assert_eq!(r.cmd(&[b"GET", b"k"]).await, resp_bulk(b"v"));
    let denied = text(&r.cmd(&[b"SET", b"k", b"other"]).await);
    assert!(denied.starts_with("-NOPERM"), "{denied}");
    assert_eq!(r.cmd(&[b"GET", b"k"]).await, resp_bulk(b"v"));

    // HELLO 3 AUTH logs in and switches to RESP3.
    let mut h = AsyncRawClient::connect(proxy.local_addr()).await;
    let hello = h
        .cmd(&[
            b"HELLO",
            b"3",
            b"AUTH",
            b"alice",
            b"alice-pw",
            b"SETNAME",
            b"h",
        ])
        .await;
    assert!(hello.starts_with(b"%7\r\n"), "{}", printable(&hello));
    assert_eq!(h.cmd(&[b"ACL", b"WHOAMI"]).await, resp_bulk(b"alice"));
    assert_eq!(h.cmd(&[b"HGETALL", b"nohash"]).await, b"%0\r\n");
    // RESET logs out: back to the proxy's user.
    assert_eq!(h.cmd(&[b"RESET"]).await, b"+RESET\r\n");
    assert_eq!(h.cmd(&[b"ACL", b"WHOAMI"]).await, resp_bulk(b"default"));

    // Each logged-in session holds one connection of its own: c, r and the one
    // reopened for h's RESP3 are gone or counted below; sessions that did not
    // log in share the proxy's connections.
    // (Closed connections leave Redis's list a moment later: poll, bounded.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let users = text(&direct.cmd(&[b"CLIENT", b"LIST"]).await);
        let (alice, reader) = (
            users.matches(" user=alice ").count(),
            users.matches(" user=reader ").count(),
        );
        if (alice, reader) == (1, 1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{users}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Pub/sub runs as the user too: reader has no channel rights.
    let sub = text(&r.cmd(&[b"SUBSCRIBE", b"ch"]).await);
    assert!(sub.starts_with("-NOPERM"), "{sub}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirepass_on_redis_is_enforced_through_the_proxy() {
    let redis = RedisServer::start();
    let proxy = passthrough_proxy(&redis).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(
        c.cmd(&[b"CONFIG", b"SET", b"requirepass", b"s3cret"]).await,
        b"+OK\r\n"
    );
    let wrong = c.cmd(&[b"AUTH", b"guess"]).await;
    assert!(
        text(&wrong).starts_with("-WRONGPASS"),
        "{}",
        printable(&wrong)
    );
    assert_eq!(c.cmd(&[b"AUTH", b"s3cret"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"AUTH", b"default", b"s3cret"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
    // Put Redis back (the direct connection logged in before the change).
    assert_eq!(
        c.cmd(&[b"CONFIG", b"SET", b"requirepass", b""]).await,
        b"+OK\r\n"
    );
    assert_eq!(direct.cmd(&[b"PING"]).await, b"+PONG\r\n");
    proxy.shutdown().await;
}

/// A logged-in client whose user's connection Redis closes (`CLIENT KILL USER`,
/// `ACL DELUSER`) is closed at once, without sending anything, as Redis closes
/// that client (found with redis-rs's suite: the proxy kept the client open and
/// answered its next command with an error). Never silently downgraded to the
/// proxy's own user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_in_session_whose_connection_dies_is_closed() {
    let redis = RedisServer::start();
    let proxy = passthrough_proxy(&redis).await;
    let mut admin = AsyncRawClient::connect(redis.addr()).await;
    let setuser: &[&[u8]] = &[
        b"ACL", b"SETUSER", b"alice", b"on", b">pw", b"~*", b"&*", b"+@all",
    ];
    for kill in [
        &[&b"CLIENT"[..], b"KILL", b"USER", b"alice"][..],
        &[b"ACL", b"DELUSER", b"alice"],
    ] {
        assert_eq!(admin.cmd(setuser).await, b"+OK\r\n");
        let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
        let mut direct = AsyncRawClient::connect(redis.addr()).await;
        for s in [&mut c, &mut direct] {
            assert_eq!(s.cmd(&[b"AUTH", b"alice", b"pw"]).await, b"+OK\r\n");
            s.set_timeout(std::time::Duration::from_secs(3));
        }
        let killed = admin.cmd(kill).await;
        assert!(killed.starts_with(b":"), "{}", printable(&killed));
        assert!(direct.read_until_closed().await.is_empty(), "{kill:?}");
        assert!(c.read_until_closed().await.is_empty(), "{kill:?}");
    }
    proxy.shutdown().await;
}

/// A user without `SELECT` logs in on a numbered database: Redis keeps the
/// connection's database across `AUTH`, so the user works there (and may not
/// leave it). The proxy's login connection selects it before logging in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_select_logs_in_on_the_database_selected_before() {
    let redis = RedisServer::start();
    let (out, _) = redis_cli(
        redis.port(),
        &[
            "ACL", "SETUSER", "bob", "on", ">123", "~*", "+@all", "-select",
        ],
    );
    assert!(out.contains("OK"), "{out}");
    let proxy = passthrough_proxy(&redis).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    for (key, client) in [(&b"direct"[..], &mut direct), (b"proxied", &mut c)] {
        assert_eq!(client.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
        assert_eq!(client.cmd(&[b"AUTH", b"bob", b"123"]).await, b"+OK\r\n");
        assert_eq!(client.cmd(&[b"SET", key, b"v"]).await, b"+OK\r\n");
        assert_eq!(client.cmd(&[b"ACL", b"WHOAMI"]).await, resp_bulk(b"bob"));
    }
    // Both keys are in database 5.
    let (out, _) = redis_cli(redis.port(), &["-n", "5", "MGET", "direct", "proxied"]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["v", "v"],
        "{out}"
    );
    // Leaving it is refused alike, and the session stays where it was.
    let refused = direct.cmd(&[b"SELECT", b"6"]).await;
    assert!(refused.starts_with(b"-NOPERM"), "{}", printable(&refused));
    assert_eq!(
        printable(&c.cmd(&[b"SELECT", b"6"]).await),
        printable(&refused)
    );
    assert_eq!(c.cmd(&[b"GET", b"proxied"]).await, resp_bulk(b"v"));
    // Switching to RESP3 (a new login connection) keeps it there too.
    let hello = c.cmd(&[b"HELLO", b"3"]).await;
    assert!(hello.starts_with(b"%7\r\n"), "{}", printable(&hello));
    assert_eq!(c.cmd(&[b"GET", b"proxied"]).await, resp_bulk(b"v"));
    assert_eq!(c.cmd(&[b"ACL", b"WHOAMI"]).await, resp_bulk(b"bob"));
    // A wrong password is still Redis's refusal, and keeps the login.
    let mut w = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(w.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    let wrong = w.cmd(&[b"AUTH", b"bob", b"nope"]).await;
    assert!(wrong.starts_with(b"-WRONGPASS"), "{}", printable(&wrong));
    assert_eq!(w.cmd(&[b"ACL", b"WHOAMI"]).await, resp_bulk(b"default"));
    proxy.shutdown().await;
}

/// A session logged in on a connection of its own that logs in again does so on
/// that connection, as a client of Redis does on its own: it keeps its database
/// (also for a user that may not `SELECT`, also once the proxy's own user was
/// turned off) and its tracking, and a refused `AUTH` keeps the login before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_login_runs_on_the_sessions_own_connection_as_on_redis() {
    let redis = RedisServer::start();
    for user in [
        &["ACL", "SETUSER", "u1", "on", ">pw1", "+acl", "+get", "~*"][..],
        &["ACL", "SETUSER", "u2", "on", ">pw2", "+@all", "~*", "&*"],
    ] {
        let (out, _) = redis_cli(redis.port(), user);
        assert!(out.contains("OK"), "{out}");
    }
    let (out, _) = redis_cli(redis.port(), &["-n", "2", "SET", "k", "in-db-2"]);
    assert!(out.contains("OK"), "{out}");
    let proxy = passthrough_proxy(&redis).await;
    let script: &[&[&[u8]]] = &[
        &[b"SELECT", b"2"],
        &[b"AUTH", b"u2", b"pw2"],
        &[b"AUTH", b"u1", b"pw1"],
        &[b"ACL", b"WHOAMI"],
        &[b"AUTH", b"u1", b"wrong"],
        &[b"ACL", b"WHOAMI"],
        &[b"GET", b"k"],
        &[b"AUTH", b"u2", b"pw2"],
        // The proxy's own upstream user (Redis's default) turned off: logging in
        // again still works on the connection there is.
        &[b"ACL", b"SETUSER", b"default", b"off"],
        &[b"AUTH", b"u1", b"pw1"],
        &[b"ACL", b"WHOAMI"],
        &[b"GET", b"k"],
        &[b"ACL", b"SETUSER", b"default", b"on"],
    ];
    let mut replies = Vec::new();
    for addr in [redis.addr(), proxy.local_addr()] {
        let mut c = AsyncRawClient::connect(addr).await;
        let mut got = Vec::new();
        for args in script {
            got.push(printable(&c.cmd(args).await));
        }
        replies.push(got);
    }
    assert_eq!(replies[1], replies[0]);
    assert_eq!(replies[0][11], printable(&resp_bulk(b"in-db-2")));

    // Tracking is kept across a login (it was refused while tracking).
    let (out, _) = redis_cli(redis.port(), &["SET", "k", "in-db-0"]);
    assert!(out.contains("OK"), "{out}");
    let script: &[&[&[u8]]] = &[
        &[b"HELLO", b"3"],
        &[b"CLIENT", b"TRACKING", b"ON"],
        &[b"GET", b"k"],
        &[b"AUTH", b"u2", b"pw2"],
        &[b"ACL", b"WHOAMI"],
        &[b"CLIENT", b"TRACKINGINFO"],
    ];
    let mut replies = Vec::new();
    for addr in [redis.addr(), proxy.local_addr()] {
        let mut c = AsyncRawClient::connect(addr).await;
        c.cmd(script[0]).await;
        let mut got = Vec::new();
        for args in &script[1..] {
            got.push(printable(&c.cmd(args).await));
        }
        // Another client's write: the tracking client is told, as before the login.
        let (out, _) = redis_cli(redis.port(), &["SET", "k", "in-db-0"]);
        assert!(out.contains("OK"), "{out}");
        let push = c.read_reply().await;
        got.push(printable(&push));
        replies.push(got);
    }
    assert_eq!(replies[1], replies[0]);
    assert!(replies[0][2].contains("OK"), "{:?}", replies[0]);
    assert!(replies[0][5].contains("invalidate"), "{:?}", replies[0]);
    proxy.shutdown().await;
}

/// A login's connection is set up without commands its user may not run: Redis's
/// ACL LOG shows what the client did, as when it is connected directly (the setup's
/// `PING` used to add a `command` entry for a user without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_leaves_in_the_acl_log_only_what_the_client_did() {
    let redis = RedisServer::start();
    let (out, _) = redis_cli(
        redis.port(),
        &[
            "ACL", "SETUSER", "fu", "on", ">pass1", "+get", "+set", "+select", "~cache:*",
        ],
    );
    assert!(out.contains("OK"), "{out}");
    let proxy = passthrough_proxy(&redis).await;
    let mut logs = Vec::new();
    for addr in [redis.addr(), proxy.local_addr()] {
        let (out, _) = redis_cli(redis.port(), &["ACL", "LOG", "RESET"]);
        assert!(out.contains("OK"), "{out}");
        let mut c = AsyncRawClient::connect(addr).await;
        assert_eq!(c.cmd(&[b"SELECT", b"2"]).await, b"+OK\r\n");
        let wrong = c.cmd(&[b"AUTH", b"fu", b"xxx"]).await;
        assert!(wrong.starts_with(b"-WRONGPASS"), "{}", printable(&wrong));
        assert_eq!(c.cmd(&[b"AUTH", b"fu", b"pass1"]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&[b"SET", b"cache:0", b"1"]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&[b"GET", b"cache:0"]).await, resp_bulk(b"1"));
        let (out, _) = redis_cli(redis.port(), &["ACL", "LOG"]);
        let reasons: Vec<_> = out
            .lines()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "reason" || w[0] == "object")
            .map(|w| w[1].to_string())
            .collect();
        logs.push(reasons);
    }
    assert_eq!(logs[0], ["auth", "AUTH"], "{logs:?}");
    assert_eq!(logs[1], logs[0]);
    proxy.shutdown().await;
}

/// A RESP3 subscriber that logs in (`AUTH`, as a client does when its credentials
/// are renewed) stays subscribed, as on Redis: messages published after the login
/// reach it, and after its last unsubscribe it runs as the new user. (Until session
/// 37 the login's new connection replaced the subscriber connection: the
/// subscriptions were dropped without a word. Found by the multi-session tool with
/// logins, seed 7223.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_logs_in_stays_subscribed() {
    let redis = RedisServer::start();
    let proxy = u1_and_proxy(&redis).await;
    let mut replies = Vec::new();
    for addr in [redis.addr(), proxy.local_addr()] {
        let mut c = AsyncRawClient::connect(addr).await;
        let mut p = AsyncRawClient::connect(addr).await;
        let mut got = Vec::new();
        got.push(printable(&c.cmd(&[b"AUTH", b"u1", b"pw1"]).await));
        c.cmd(&[b"HELLO", b"3"]).await;
        got.push(printable(&c.cmd(&[b"SUBSCRIBE", b"ch"]).await));
        got.push(printable(&c.cmd(&[b"AUTH", b"u1", b"wrong"]).await));
        got.push(printable(&c.cmd(&[b"AUTH", b"u1", b"pw1"]).await));
        got.push(printable(&p.cmd(&[b"PUBLISH", b"ch", b"m"]).await));
        got.push(printable(&c.read_reply().await));
        got.push(printable(&c.cmd(&[b"UNSUBSCRIBE"]).await));
        got.push(printable(&c.cmd(&[b"ACL", b"WHOAMI"]).await));
        replies.push(got);
    }
    assert_eq!(replies[1], replies[0]);
    assert!(replies[0][2].contains("WRONGPASS"), "{:?}", replies[0]);
    assert!(replies[0][4].contains(":1"), "{:?}", replies[0]);
    assert!(replies[0][5].contains("message"), "{:?}", replies[0]);
    proxy.shutdown().await;
}

/// A logged-in client that tracks keys and subscribes (its tracking connection
/// waits apart while it is subscribed) and turns tracking off while subscribed:
/// no invalidation comes after that, nor once it is back on that connection, as on
/// Redis. (Until session 37 the `OFF` went to the subscriber connection only, and
/// the parked one went on tracking. Found by the multi-session tool, seed 7282.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_in_subscribers_tracking_off_holds_after_it_unsubscribes() {
    let redis = RedisServer::start();
    let proxy = u1_and_proxy(&redis).await;
    let mut replies = Vec::new();
    for addr in [redis.addr(), proxy.local_addr()] {
        let mut c = AsyncRawClient::connect(addr).await;
        let mut w = AsyncRawClient::connect(addr).await;
        let mut got = Vec::new();
        got.push(printable(&c.cmd(&[b"AUTH", b"u1", b"pw1"]).await));
        // (Its reply names the connection's id.)
        assert!(c.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%"));
        for args in [
            &[&b"CLIENT"[..], b"TRACKING", b"ON"][..],
            &[b"GET", b"tk"],
            &[b"SUBSCRIBE", b"ch"],
            &[b"CLIENT", b"TRACKING", b"OFF"],
        ] {
            got.push(printable(&c.cmd(args).await));
        }
        w.cmd(&[b"SET", b"tk", b"1"]).await;
        got.push(printable(&c.cmd(&[b"PING"]).await));
        got.push(printable(&c.cmd(&[b"UNSUBSCRIBE"]).await));
        got.push(printable(&c.cmd(&[b"GET", b"tk"]).await));
        w.cmd(&[b"SET", b"tk", b"2"]).await;
        got.push(printable(&c.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await));
        got.push(printable(&c.cmd(&[b"DEL", b"tk"]).await));
        replies.push(got);
    }
    assert_eq!(replies[1], replies[0]);
    assert!(
        replies[0].iter().all(|r| !r.contains("invalidate")),
        "{:?}",
        replies[0]
    );
    assert!(replies[0][5].contains("PONG"), "{:?}", replies[0]);
    proxy.shutdown().await;
}

/// A logged-in client's `WATCH` and a subscription: in RESP2 the login's
/// connection, watching, waits while the client is subscribed (Redis refuses
/// transactions there) and the watch holds after it unsubscribes, as on Redis;
/// in RESP3, where a subscriber's transaction would run on its subscriber
/// connection, which does not watch, the `SUBSCRIBE` is refused and the watch
/// holds. (Until session 38 it was accepted and the transaction then ran
/// although the watched key had changed. Found by the multi-session tool, seed
/// 8230.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_in_watch_is_never_lost_to_a_subscription() {
    let redis = RedisServer::start();
    let proxy = u1_and_proxy(&redis).await;
    let mut replies = Vec::new();
    for addr in [redis.addr(), proxy.local_addr()] {
        let mut c = AsyncRawClient::connect(addr).await;
        let mut got = Vec::new();
        got.push(printable(&c.cmd(&[b"AUTH", b"u1", b"pw1"]).await));
        got.push(printable(&c.cmd(&[b"WATCH", b"wk"]).await));
        got.push(printable(&c.cmd(&[b"SET", b"wk", b"1"]).await));
        got.push(printable(&c.cmd(&[b"SUBSCRIBE", b"ch"]).await));
        got.push(printable(&c.cmd(&[b"UNSUBSCRIBE"]).await));
        got.push(printable(&c.cmd(&[b"MULTI"]).await));
        got.push(printable(&c.cmd(&[b"EXEC"]).await));
        replies.push(got);
    }
    assert_eq!(replies[1], replies[0]);
    assert!(replies[0][6].contains("*-1"), "{:?}", replies[0]);
    // RESP3, through the proxy.
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    c.cmd(&[b"AUTH", b"u1", b"pw1"]).await;
    assert!(c.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%"));
    assert_eq!(c.cmd(&[b"WATCH", b"wk"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"wk", b"2"]).await, b"+OK\r\n");
    let refused = printable(&c.cmd(&[b"SUBSCRIBE", b"ch"]).await);
    assert!(refused.contains("SUBSCRIBE under WATCH"), "{refused}");
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"_\r\n");
    // Once the watch is over, it subscribes.
    let subscribed = printable(&c.cmd(&[b"SUBSCRIBE", b"ch"]).await);
    assert!(subscribed.contains("subscribe"), "{subscribed}");
    proxy.shutdown().await;
}
