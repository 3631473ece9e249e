//! CLIENT LIST, CLIENT KILL and CLIENT UNBLOCK act on the proxy's own client
//! sessions (the clients see the proxy as their Redis), and the tracking queries
//! answer as Redis does for a client with tracking off.

mod support;

use std::time::Duration;

use support::{printable, proxy_config, resp_cmd, start_proxy, AsyncRawClient, RedisServer};

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).into_owned()
}

/// The `field=` value of the CLIENT LIST line naming `name`.
fn field_of(list: &str, name: &str, field: &str) -> Option<String> {
    let line = list
        .lines()
        .find(|l| l.contains(&format!(" name={name} ")))?;
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
        .map(str::to_string)
}

async fn id_of(c: &mut AsyncRawClient) -> String {
    let r = c.cmd(&[b"CLIENT", b"ID"]).await;
    text(&r[1..r.len() - 2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_list_shows_the_proxy_sessions_and_filters_like_redis() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut a = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut b = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut sub = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(a.cmd(&[b"CLIENT", b"SETNAME", b"c-a"]).await, b"+OK\r\n");
    assert_eq!(b.cmd(&[b"CLIENT", b"SETNAME", b"c-b"]).await, b"+OK\r\n");
    assert_eq!(b.cmd(&[b"SELECT", b"3"]).await, b"+OK\r\n");
    assert_eq!(b.cmd(&[b"GET", b"x"]).await, b"$-1\r\n");
    assert_eq!(
        sub.cmd(&[b"CLIENT", b"SETNAME", b"c-sub"]).await,
        b"+OK\r\n"
    );
    assert!(sub.cmd(&[b"SUBSCRIBE", b"ch"]).await.starts_with(b"*3"));

    let list = text(&a.cmd(&[b"CLIENT", b"LIST"]).await);
    assert!(list.starts_with('$'), "{list}");
    let a_addr = a.stream_mut().local_addr().unwrap().to_string();
    assert_eq!(field_of(&list, "c-a", "addr"), Some(a_addr));
    assert_eq!(
        field_of(&list, "c-a", "laddr"),
        Some(proxy.local_addr().to_string())
    );
    assert_eq!(field_of(&list, "c-a", "id"), Some(id_of(&mut a).await));
    assert_eq!(
        field_of(&list, "c-a", "cmd").as_deref(),
        Some("client|list")
    );
    assert_eq!(field_of(&list, "c-b", "db").as_deref(), Some("3"));
    assert_eq!(field_of(&list, "c-b", "cmd").as_deref(), Some("get"));
    assert_eq!(field_of(&list, "c-sub", "flags").as_deref(), Some("P"));
    assert_eq!(field_of(&list, "c-b", "user").as_deref(), Some("default"));
    // No upstream connection is listed: exactly our three sessions.
    assert_eq!(list.matches("id=").count(), 3, "{list}");

    // ID filter, several ids.
    let (ida, idb) = (id_of(&mut a).await, id_of(&mut b).await);
    let list = text(
        &a.cmd(&[
            b"CLIENT",
            b"LIST",
            b"ID",
            ida.as_bytes(),
            idb.as_bytes(),
            b"999999",
        ])
        .await,
    );
    assert_eq!(list.matches("id=").count(), 2, "{list}");
    // TYPE filter.
    let list = text(&a.cmd(&[b"CLIENT", b"LIST", b"TYPE", b"pubsub"]).await);
    assert!(
        list.contains("name=c-sub ") && list.matches("id=").count() == 1,
        "{list}"
    );
    let list = text(&a.cmd(&[b"CLIENT", b"LIST", b"TYPE", b"normal"]).await);
    assert_eq!(list.matches("id=").count(), 2, "{list}");
    assert_eq!(
        a.cmd(&[b"CLIENT", b"LIST", b"TYPE", b"replica"]).await,
        b"$0\r\n\r\n"
    );
    // Errors as Redis words them.
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    for args in [
        &[&b"CLIENT"[..], b"LIST", b"TYPE", b"nonsense"][..],
        &[b"CLIENT", b"LIST", b"ID", b"abc"],
        &[b"CLIENT", b"LIST", b"BOGUS"],
    ] {
        assert_eq!(
            printable(&a.cmd(args).await),
            printable(&direct.cmd(args).await)
        );
    }
    // CLIENT INFO in RESP3 is a verbatim string, as Redis sends it.
    assert_eq!(a.cmd(&[b"HELLO", b"3"]).await[0], b'%');
    let info = a.cmd(&[b"CLIENT", b"INFO"]).await;
    assert!(info.starts_with(b"="), "{}", printable(&info));
    assert!(text(&info).contains("\r\ntxt:id="), "{}", printable(&info));
    assert!(text(&info).contains(" resp=3 "), "{}", printable(&info));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_closes_the_chosen_sessions_only() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut killer = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut by_addr = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut by_id = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut survivor = AsyncRawClient::connect(proxy.local_addr()).await;
    // Answered: the proxy has accepted it (a connect alone may still sit in the
    // listen backlog when the LADDR kill below runs).
    assert_eq!(survivor.cmd(&[b"PING"]).await, b"+PONG\r\n");
    // by_id waits in a transaction: killing it must leave nothing behind (its
    // id asked first: inside MULTI, CLIENT ID is queued, as on Redis).
    let id = id_of(&mut by_id).await;
    assert_eq!(by_id.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(by_id.cmd(&[b"INCR", b"n"]).await, b"+QUEUED\r\n");

    // The old form: one address, +OK.
    let addr = by_addr.stream_mut().local_addr().unwrap().to_string();
    assert_eq!(
        killer.cmd(&[b"CLIENT", b"KILL", addr.as_bytes()]).await,
        b"+OK\r\n"
    );
    assert!(by_addr.read_until_closed().await.is_empty());
    assert_eq!(
        text(&killer.cmd(&[b"CLIENT", b"KILL", addr.as_bytes()]).await),
        "-ERR No such client\r\n"
    );
    // The filter form: a count.
    assert_eq!(
        killer
            .cmd(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()])
            .await,
        b":1\r\n"
    );
    assert!(by_id.read_until_closed().await.is_empty());
    assert_eq!(
        killer
            .cmd(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()])
            .await,
        b":0\r\n"
    );
    // The killed transaction never ran.
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&[b"GET", b"n"]).await, b"$-1\r\n");
    // SKIPME (default yes): killing by our own laddr spares the caller.
    let laddr = proxy.local_addr().to_string();
    assert_eq!(
        killer
            .cmd(&[b"CLIENT", b"KILL", b"LADDR", laddr.as_bytes()])
            .await,
        b":1\r\n"
    );
    assert!(survivor.read_until_closed().await.is_empty());
    assert_eq!(killer.cmd(&[b"PING"]).await, b"+PONG\r\n");
    // Errors as Redis words them.
    for args in [
        &[&b"CLIENT"[..], b"KILL", b"ID", b"0"][..],
        &[b"CLIENT", b"KILL", b"TYPE", b"nonsense"],
        &[b"CLIENT", b"KILL", b"SKIPME", b"maybe"],
        &[b"CLIENT", b"KILL", b"ID"],
        &[b"CLIENT", b"KILL"],
        // A user Redis does not know, and one it knows that nobody is logged in as.
        &[b"CLIENT", b"KILL", b"USER", b"nosuchuser"],
        &[b"CLIENT", b"KILL", b"USER", b"idle-user"],
    ] {
        if args.ends_with(&[b"idle-user"]) {
            let made = direct
                .cmd(&[b"ACL", b"SETUSER", b"idle-user", b"on", b">pw"])
                .await;
            assert_eq!(made, b"+OK\r\n");
        }
        assert_eq!(
            printable(&killer.cmd(args).await),
            printable(&direct.cmd(args).await),
            "{args:?}"
        );
    }
    // SKIPME no: the caller gets its reply, then its connection closes.
    let me = id_of(&mut killer).await;
    killer
        .send(&resp_cmd(&[
            b"CLIENT",
            b"KILL",
            b"ID",
            me.as_bytes(),
            b"SKIPME",
            b"no",
        ]))
        .await;
    assert_eq!(killer.read_until_closed().await, b":1\r\n");
    // Redis's own connections (the proxy's upstream) were never touched.
    let mut fresh = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(fresh.cmd(&[b"SET", b"n", b"1"]).await, b"+OK\r\n");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_unblock_wakes_a_session_blocked_on_its_exclusive_connection() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut blocked = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut other = AsyncRawClient::connect(proxy.local_addr()).await;
    let id = id_of(&mut blocked).await;
    // Not blocked: 0, as on Redis.
    assert_eq!(
        other.cmd(&[b"CLIENT", b"UNBLOCK", id.as_bytes()]).await,
        b":0\r\n"
    );
    for (reason, want) in [
        (&b"TIMEOUT"[..], &b"*-1\r\n"[..]),
        (
            b"ERROR",
            b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n",
        ),
    ] {
        blocked.send(&resp_cmd(&[b"BLPOP", b"q", b"0"])).await;
        // Wait until the BLPOP is waiting on Redis (flags=b in CLIENT LIST).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let list = text(&other.cmd(&[b"CLIENT", b"LIST", b"ID", id.as_bytes()]).await);
            if list.contains("flags=b") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never blocked: {list}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The BLPOP reached Redis's connection only after CLIENT ID was known;
        // retry briefly while the unblock races the BLPOP's arrival upstream.
        let mut got = Vec::new();
        for _ in 0..100 {
            got = other
                .cmd(&[b"CLIENT", b"UNBLOCK", id.as_bytes(), reason])
                .await;
            if got == b":1\r\n" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(got, b":1\r\n");
        assert_eq!(printable(&blocked.read_reply().await), printable(want));
        assert_eq!(blocked.cmd(&[b"PING"]).await, b"+PONG\r\n");
    }
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(
        printable(
            &other
                .cmd(&[b"CLIENT", b"UNBLOCK", id.as_bytes(), b"LATER"])
                .await
        ),
        printable(&direct.cmd(&[b"CLIENT", b"UNBLOCK", b"1", b"LATER"]).await)
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_queries_answer_like_redis_with_tracking_off() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    for resp in [&b"2"[..], b"3"] {
        c.cmd(&[b"HELLO", resp]).await;
        direct.cmd(&[b"HELLO", resp]).await;
        for args in [
            &[&b"CLIENT"[..], b"TRACKINGINFO"][..],
            &[b"CLIENT", b"GETREDIR"],
            &[b"CLIENT", b"CACHING", b"yes"],
            &[b"CLIENT", b"TRACKING", b"off"],
        ] {
            assert_eq!(
                printable(&c.cmd(args).await),
                printable(&direct.cmd(args).await),
                "{args:?} in RESP{resp:?}"
            );
        }
    }
    proxy.shutdown().await;
}
