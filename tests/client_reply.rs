//! CLIENT REPLY ON/OFF/SKIP behave per session, exactly as on Redis.

mod support;

use std::time::Duration;

use support::{proxy_config, resp_cmd, start_proxy, AsyncRawClient, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_off_skip_on_match_redis_byte_for_byte() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let script: &[&[&[u8]]] = &[
        &[b"CLIENT", b"REPLY", b"OFF"],
        &[b"SET", b"a", b"1"],
        &[b"GET", b"a"],
        &[b"PING"],
        &[b"CLIENT", b"REPLY", b"ON"],
        &[b"GET", b"a"],
        &[b"CLIENT", b"REPLY", b"SKIP"],
        &[b"INCR", b"a"],
        &[b"GET", b"a"],
        &[b"CLIENT", b"REPLY", b"SKIP"],
        &[b"ECHO", b"skipped"],
        &[b"ECHO", b"seen"],
        // A SKIP is used up by the OFF after it: RESET (which turns replies
        // back on) is answered.
        &[b"CLIENT", b"REPLY", b"SKIP"],
        &[b"CLIENT", b"REPLY", b"OFF"],
        &[b"RESET"],
        &[b"ECHO", b"after"],
    ];
    let mut bytes = Vec::new();
    for args in script {
        bytes.extend(resp_cmd(args));
    }
    let mut got = Vec::new();
    for addr in [redis.addr(), proxy.local_addr()] {
        let mut c = AsyncRawClient::connect(addr).await;
        if addr == redis.addr() {
            // Same data on both sides: the direct run uses db 15.
            assert_eq!(c.cmd(&[b"SELECT", b"15"]).await, b"+OK\r\n");
        }
        c.send(&bytes).await;
        let mut replies = Vec::new();
        for _ in 0..6 {
            replies.extend(c.read_reply().await);
        }
        c.assert_no_reply(Duration::from_millis(200)).await;
        got.push(replies);
    }
    assert_eq!(
        got[1],
        b"+OK\r\n$1\r\n1\r\n$1\r\n2\r\n$4\r\nseen\r\n+RESET\r\n$5\r\nafter\r\n".to_vec(),
        "{}",
        String::from_utf8_lossy(&got[1])
    );
    assert_eq!(got[0], got[1]);
    proxy.shutdown().await;
}

/// Bad `CLIENT REPLY`s and CLIENT subcommands Redis does not have get Redis's own
/// refusals, byte for byte (redis-py 8 sends `CLIENT MAINT_NOTIFICATIONS` on
/// connect and reads the refusal). Before, the proxy answered `CLIENT REPLY` with
/// the wrong number of arguments `-ERR syntax error` (inside MULTI: its own "not
/// supported inside a transaction"), and an unknown subcommand with its own "not
/// supported" text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_reply_and_unknown_client_subcommands_are_refused_as_redis_refuses_them() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let script: &[&[&[u8]]] = &[
        &[b"CLIENT", b"REPLY"],
        &[b"CLIENT", b"REPLY", b"ON", b"OFF"],
        &[b"CLIENT", b"REPLY", b"maybe"],
        &[
            b"CLIENT",
            b"MAINT_NOTIFICATIONS",
            b"on",
            b"moving-endpoint-type",
            b"internal-ip",
        ],
        &[b"client", b"nosuch"],
        // Inside MULTI too (Redis checks the arity before anything else).
        &[b"MULTI"],
        &[b"CLIENT", b"REPLY"],
        &[b"CLIENT", b"NOSUCH"],
        &[b"EXEC"],
        &[b"PING"],
    ];
    let mut bytes = Vec::new();
    for args in script {
        bytes.extend(resp_cmd(args));
    }
    let exchange = |addr| {
        let bytes = bytes.clone();
        async move {
            let mut c = AsyncRawClient::connect(addr).await;
            c.send(&bytes).await;
            let mut replies = Vec::new();
            for _ in 0..script.len() {
                replies.extend(c.read_reply().await);
            }
            replies
        }
    };
    let direct = exchange(redis.addr()).await;
    assert!(
        String::from_utf8_lossy(&direct)
            .contains("-ERR unknown subcommand 'MAINT_NOTIFICATIONS'. Try CLIENT HELP.\r\n"),
        "{}",
        String::from_utf8_lossy(&direct)
    );
    // Redis's own words for an unknown subcommand only once the proxy knows what
    // the upstream is (its first health probe asks; a newer Redis may have it).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let through = loop {
        let got = exchange(proxy.local_addr()).await;
        if got == direct || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        String::from_utf8_lossy(&through),
        String::from_utf8_lossy(&direct)
    );
    proxy.shutdown().await;
}

/// A `CLIENT REPLY SKIP` before a `CLIENT UNBLOCK` of a client blocked in another
/// database (which the proxy sends on that database's connection) is used up by
/// the `UNBLOCK`, as on Redis: until session 39 it was left for the next request,
/// whose reply was then dropped instead, so the client read `:1` as its `PING`'s
/// reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skip_before_an_unblock_in_another_database_skips_the_unblock() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    for addr in [redis.addr(), proxy.local_addr()] {
        let mut blocked = AsyncRawClient::connect(addr).await;
        let id = blocked.cmd(&[b"CLIENT", b"ID"]).await;
        let id = id[1..id.len() - 2].to_vec();
        assert_eq!(blocked.cmd(&[b"SELECT", b"1"]).await, b"+OK\r\n");
        blocked
            .send(&resp_cmd(&[b"BLPOP", b"no-such-list", b"5"]))
            .await;
        let mut other = AsyncRawClient::connect(addr).await;
        // (Blocked once Redis lists it so.)
        let mut listed = false;
        for _ in 0..100 {
            let list = other.cmd(&[b"CLIENT", b"LIST"]).await;
            if String::from_utf8_lossy(&list).contains("cmd=blpop") {
                listed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(listed, "the BLPOP never blocked ({addr})");
        let mut bytes = resp_cmd(&[b"CLIENT", b"REPLY", b"SKIP"]);
        bytes.extend(resp_cmd(&[b"CLIENT", b"UNBLOCK", &id]));
        bytes.extend(resp_cmd(&[b"PING"]));
        other.send(&bytes).await;
        assert_eq!(other.read_reply().await, b"+PONG\r\n", "{addr}");
        other.assert_no_reply(Duration::from_millis(200)).await;
        assert_eq!(blocked.read_reply().await, b"*-1\r\n", "{addr}");
    }
    proxy.shutdown().await;
}
