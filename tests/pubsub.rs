//! Pub/Sub through the proxy: each subscriber gets its own upstream connection,
//! messages stream back in order, UNSUBSCRIBE returns the session to normal
//! request/reply, and a slow subscriber is cut off at the buffer limit.

mod support;

use std::time::{Duration, Instant};

use support::upstream::{Backend, Upstream};
use support::{proxy_config, resp_cmd, start_proxy, AsyncRawClient, RedisServer};

// Each runs against a standalone Redis and a Redis Cluster (`NAME::standalone`,
// `NAME::cluster`).
upstream_tests!(
    unsubscribe_without_subscriptions_answers_like_redis,
    commands_not_allowed_while_subscribed_get_redis_refusal,
    requests_pipelined_after_the_last_unsubscribe_are_answered,
    state_made_after_the_last_unsubscribe_stays_with_the_session,
    a_resp3_subscriber_selects_and_names_its_session,
    a_pipeline_after_unsubscribe_gets_its_replies,
    subscribers_get_messages_published_through_the_proxy_and_directly,
    fan_out_to_100_subscribers,
    resp3_subscribers_get_push_messages,
    a_slow_subscriber_is_disconnected_at_the_buffer_limit,
);

fn push(kind: &[u8], a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = b"*3\r\n".to_vec();
    for x in [kind, a, b] {
        out.extend_from_slice(format!("${}\r\n", x.len()).as_bytes());
        out.extend_from_slice(x);
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn subscribers_get_messages_published_through_the_proxy_and_directly(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut sub = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(
        sub.cmd(&[b"SUBSCRIBE", b"news"]).await,
        b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    assert_eq!(
        sub.cmd(&[b"PSUBSCRIBE", b"n*"]).await,
        b"*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:2\r\n"
    );
    let mut publisher = AsyncRawClient::connect(proxy.local_addr()).await;
    // One subscriber connection (ours) sees it on the channel and the pattern.
    assert_eq!(
        publisher.cmd(&[b"PUBLISH", b"news", b"hello"]).await,
        b":2\r\n"
    );
    assert_eq!(sub.read_reply().await, push(b"message", b"news", b"hello"));
    let p = sub.read_reply().await;
    assert!(
        p.starts_with(b"*4\r\n$8\r\npmessage\r\n"),
        "{:?}",
        String::from_utf8_lossy(&p)
    );
    // Published straight to Redis (a cluster node other than the proxy's), too.
    assert_eq!(up.publish(b"news", b"direct").await, b":2\r\n");
    assert_eq!(sub.read_reply().await, push(b"message", b"news", b"direct"));
    let _ = sub.read_reply().await;
    // PING in subscribed mode is answered by Redis, as Redis does.
    assert_eq!(sub.cmd(&[b"PING"]).await, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    // Unsubscribing everything returns the session to normal request/reply.
    assert_eq!(
        sub.cmd(&[b"UNSUBSCRIBE"]).await,
        b"*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    assert_eq!(
        sub.cmd(&[b"PUNSUBSCRIBE"]).await,
        b"*3\r\n$12\r\npunsubscribe\r\n$2\r\nn*\r\n:0\r\n"
    );
    assert_eq!(sub.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(sub.cmd(&[b"GET", b"k"]).await, b"$1\r\nv\r\n");
    assert_eq!(
        publisher.cmd(&[b"PUBLISH", b"news", b"gone"]).await,
        b":0\r\n"
    );
    proxy.shutdown().await;
}

/// A loopback relay to `target` that holds each new connection for `delay` before
/// connecting it through (a server slow to accept: what a real one cannot be made
/// to be on demand).
async fn slow_to_connect(target: std::net::SocketAddr, delay: Duration) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = l.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    port
}

/// A proxy in front of `redis` through [`slow_to_connect`] (200 ms).
async fn proxy_slow_to_connect(redis: &RedisServer) -> redis_sidecar::server::Proxy {
    let port = slow_to_connect(redis.addr(), Duration::from_millis(200)).await;
    let mut config = redis_sidecar::config::Config::for_upstream("127.0.0.1", port);
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    start_proxy(config).await
}

/// A client subscribes and another publishes right after, without waiting for the
/// confirmation (predis's `testPubSubAgainstRedisServer` does this): Redis runs the
/// SUBSCRIBE first, the subscriber gets the message. The proxy first opens the
/// subscriber's connection (here slowed to 200 ms), and the PUBLISH, on an open
/// shared connection, overtook it (`:0`, the message lost); now it waits until the
/// subscription is in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_right_after_another_clients_subscribe_reaches_it() {
    let redis = RedisServer::start();
    let proxy = proxy_slow_to_connect(&redis).await;
    let mut publisher = AsyncRawClient::connect(proxy.local_addr()).await;
    // (Its shared connection is open and ready.)
    assert_eq!(publisher.cmd(&[b"PING"]).await, b"+PONG\r\n");
    for round in 0..3 {
        let channel = format!("order{round}").into_bytes();
        let mut sub = AsyncRawClient::connect(proxy.local_addr()).await;
        assert_eq!(sub.cmd(&[b"PING"]).await, b"+PONG\r\n");
        sub.send(&resp_cmd(&[b"SUBSCRIBE", &channel])).await;
        // (The proxy's session has read the SUBSCRIBE by then; its connection is
        // still being opened.)
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        assert_eq!(
            publisher.cmd(&[b"PUBLISH", &channel, b"first"]).await,
            b":1\r\n",
            "round {round}: the PUBLISH reached Redis before the SUBSCRIBE"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        let mut confirmed = b"*3\r\n$9\r\nsubscribe\r\n".to_vec();
        confirmed.extend_from_slice(format!("${}\r\n", channel.len()).as_bytes());
        confirmed.extend_from_slice(&channel);
        confirmed.extend_from_slice(b"\r\n:1\r\n");
        assert_eq!(sub.read_reply().await, confirmed);
        assert_eq!(sub.read_reply().await, push(b"message", &channel, b"first"));
        // Once subscribed, publishing waits for nothing.
        let started = Instant::now();
        assert_eq!(
            publisher.cmd(&[b"PUBLISH", &channel, b"second"]).await,
            b":1\r\n"
        );
        assert!(started.elapsed() < Duration::from_millis(150));
        assert_eq!(
            sub.read_reply().await,
            push(b"message", &channel, b"second")
        );
    }
    proxy.shutdown().await;
}

/// The same for keyspace notifications, which the writes publish: a client
/// subscribes to them and another writes right after; the write waits until the
/// subscription is in place (a read does not wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_right_after_another_clients_keyspace_subscribe_is_notified() {
    let redis = RedisServer::start();
    let mut direct = redis.client();
    let events = [&b"CONFIG"[..], b"SET", b"notify-keyspace-events", b"KA"];
    assert_eq!(direct.cmd(&events), b"+OK\r\n");
    let proxy = proxy_slow_to_connect(&redis).await;
    let mut writer = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(writer.cmd(&[b"PING"]).await, b"+PONG\r\n");
    let mut reader = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(reader.cmd(&[b"PING"]).await, b"+PONG\r\n");
    let mut sub = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(sub.cmd(&[b"PING"]).await, b"+PONG\r\n");
    sub.send(&resp_cmd(&[b"PSUBSCRIBE", b"__keyspace@0__:*"]))
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    assert_eq!(reader.cmd(&[b"GET", b"k"]).await, b"$-1\r\n");
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "the read waited"
    );
    assert_eq!(writer.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(
        sub.read_reply().await,
        b"*3\r\n$10\r\npsubscribe\r\n$16\r\n__keyspace@0__:*\r\n:1\r\n"
    );
    assert_eq!(
        sub.read_reply().await,
        b"*4\r\n$8\r\npmessage\r\n$16\r\n__keyspace@0__:*\r\n$16\r\n__keyspace@0__:k\r\n$3\r\nset\r\n",
        "the SET reached Redis before the PSUBSCRIBE"
    );
    proxy.shutdown().await;
}

async fn unsubscribe_without_subscriptions_answers_like_redis(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    // RESP2, then RESP3 (where the channel of the one confirmation is `_`, null).
    for resp3 in [false, true] {
        let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
        let mut direct = up.reference().await;
        if resp3 {
            c.cmd(&[b"HELLO", b"3"]).await;
            direct.cmd(&[b"HELLO", b"3"]).await;
        }
        for args in [
            &[&b"UNSUBSCRIBE"[..]][..],
            &[b"PUNSUBSCRIBE"],
            &[b"UNSUBSCRIBE", b"a", b"b"],
            &[b"PUNSUBSCRIBE", b"x*"],
        ] {
            let n = args.len().saturating_sub(1).max(1);
            direct.send(&resp_cmd(args)).await;
            c.send(&resp_cmd(args)).await;
            for _ in 0..n {
                assert_eq!(c.read_reply().await, direct.read_reply().await, "{args:?}");
            }
        }
        // Still a normal session (not stuck in subscribed mode).
        assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
    }
    proxy.shutdown().await;
}

/// A RESP2 subscriber's commands that Redis does not allow while subscribed get
/// Redis's refusal; on a cluster, not the `-MOVED` of the subscriber's node for
/// a key of another node's slot.
async fn commands_not_allowed_while_subscribed_get_redis_refusal(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = up.reference().await;
    for s in [&mut c, &mut direct] {
        s.cmd(&[b"SUBSCRIBE", b"ch"]).await;
    }
    let keys = ["a", "b", "c", "d", "e", "f", "g", "h", "user:1", "{t}x"];
    for key in keys {
        for args in [
            &[&b"GET"[..], key.as_bytes()][..],
            &[b"SET", key.as_bytes(), b"v"],
            &[b"MGET", key.as_bytes(), b"other"],
        ] {
            let want = direct.cmd(args).await;
            assert!(want.starts_with(b"-ERR Can't execute"), "{want:?}");
            assert_eq!(c.cmd(args).await, want, "{args:?}");
        }
    }
    // Errors Redis gives first (arity, unknown commands) and PING still pass.
    for args in [&[&b"GET"[..]][..], &[b"PING"], &[b"PING", b"x"]] {
        assert_eq!(c.cmd(args).await, direct.cmd(args).await, "{args:?}");
    }
    proxy.shutdown().await;
}

/// Requests pipelined after the UNSUBSCRIBE that leaves no subscription are
/// still answered (found with redis-rs, which sends UNSUBSCRIBE and PUNSUBSCRIBE
/// back to back when a PubSub is dropped: the PUNSUBSCRIBE's reply was lost, and
/// the client waited for it forever). Compared byte for byte with Redis.
async fn requests_pipelined_after_the_last_unsubscribe_are_answered(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let cmd = |args: &[&[u8]]| resp_cmd(args);
    let pipelines: Vec<(Vec<u8>, Vec<u8>, usize)> = vec![
        (
            cmd(&[b"SUBSCRIBE", b"foo"]),
            [cmd(&[b"UNSUBSCRIBE"]), cmd(&[b"PUNSUBSCRIBE"])].concat(),
            2,
        ),
        (
            cmd(&[b"PSUBSCRIBE", b"f*"]),
            [cmd(&[b"PUNSUBSCRIBE"]), cmd(&[b"UNSUBSCRIBE"])].concat(),
            2,
        ),
        (
            cmd(&[b"SUBSCRIBE", b"foo"]),
            cmd(&[b"UNSUBSCRIBE", b"foo", b"bar"]),
            2,
        ),
        (
            cmd(&[b"SUBSCRIBE", b"foo"]),
            [
                cmd(&[b"UNSUBSCRIBE"]),
                cmd(&[b"UNSUBSCRIBE"]),
                cmd(&[b"GET", b"k"]),
            ]
            .concat(),
            3,
        ),
        (
            cmd(&[b"SUBSCRIBE", b"foo"]),
            [cmd(&[b"UNSUBSCRIBE"]), cmd(&[b"PING"])].concat(),
            2,
        ),
    ];
    for resp3 in [false, true] {
        for (subscribe, pipeline, replies) in &pipelines {
            let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
            let mut direct = up.reference().await;
            for s in [&mut c, &mut direct] {
                if resp3 {
                    s.cmd(&[b"HELLO", b"3"]).await;
                }
                s.send(subscribe).await;
                s.read_reply().await;
                s.send(pipeline).await;
            }
            for i in 0..*replies {
                let want = direct.read_reply().await;
                let got = c.read_reply().await;
                assert_eq!(
                    got,
                    want,
                    "reply {i} of {:?}",
                    String::from_utf8_lossy(pipeline)
                );
            }
            // Back to request/reply, as on Redis.
            assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
        }
    }
    // UNSUBSCRIBE then QUIT in one write: +OK after the confirmation, then closed.
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    c.cmd(&[b"SUBSCRIBE", b"foo"]).await;
    c.send(&[cmd(&[b"UNSUBSCRIBE"]), cmd(&[b"QUIT"])].concat())
        .await;
    assert!(c
        .read_reply()
        .await
        .starts_with(b"*3\r\n$11\r\nunsubscribe"));
    assert_eq!(c.read_reply().await, b"+OK\r\n");
    proxy.shutdown().await;
}

/// A MULTI, WATCH or blocking command pipelined after the UNSUBSCRIBE that leaves
/// no subscription (RESP2) runs as on Redis, and its state stays with the
/// session. Before, it ran on the subscriber connection, which closed once the
/// replies were in: the queued commands never ran (`PING` then got `+PONG`,
/// `EXEC` `-ERR EXEC without MULTI`), and a WATCH was silently dropped, so a
/// conflicting EXEC succeeded (found with `scripts/session_fuzz/sessions.py`).
/// Compared byte for byte with Redis.
async fn state_made_after_the_last_unsubscribe_stays_with_the_session(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let cmd = |args: &[&[u8]]| resp_cmd(args);
    // (A pipeline sent after SUBSCRIBE foo, then requests sent one at a time.)
    type Case<'a> = (Vec<u8>, Vec<&'a [&'a [u8]]>);
    let cases: Vec<Case> = vec![
        (
            [
                cmd(&[b"UNSUBSCRIBE"]),
                cmd(&[b"MULTI"]),
                cmd(&[b"INCR", b"n"]),
            ]
            .concat(),
            vec![&[b"PING"], &[b"EXEC"]],
        ),
        (
            [cmd(&[b"UNSUBSCRIBE"]), cmd(&[b"WATCH", b"w"])].concat(),
            vec![
                &[b"SET", b"w", b"mine"],
                &[b"MULTI"],
                &[b"SET", b"w", b"again"],
                &[b"EXEC"],
                &[b"GET", b"w"],
            ],
        ),
        (
            [cmd(&[b"UNSUBSCRIBE"]), cmd(&[b"BLPOP", b"q", b"0.2"])].concat(),
            vec![&[b"PING"]],
        ),
    ];
    for (pipeline, after) in &cases {
        let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
        let mut direct = up.reference().await;
        let mut transcripts = Vec::new();
        for s in [&mut c, &mut direct] {
            let mut log = Vec::new();
            s.cmd(&[b"SUBSCRIBE", b"foo"]).await;
            s.send(pipeline).await;
            log.push(s.read_reply().await);
            log.push(s.read_reply().await);
            if pipeline.windows(4).any(|w| w == b"INCR") {
                log.push(s.read_reply().await);
            }
            for args in after {
                log.push(s.cmd(args).await);
            }
            transcripts.push(
                log.iter()
                    .map(|r| support::printable(r))
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(transcripts[0], transcripts[1], "proxy (left) vs Redis");
    }
    proxy.shutdown().await;
}

/// A RESP3 subscriber may send any command: `SELECT` and `CLIENT SETNAME` change
/// the session (the database of its later writes, its name), not only the
/// subscriber connection (a `SET` after `SELECT 1` while subscribed then
/// `UNSUBSCRIBE` landed in db 0). Compared with Redis's replies.
async fn a_resp3_subscriber_selects_and_names_its_session(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = up.reference().await;
    let steps: &[&[&[u8]]] = &[
        &[b"HELLO", b"3"],
        &[b"SUBSCRIBE", b"r3state"],
        &[b"SELECT", b"1"],
        &[b"CLIENT", b"SETNAME", b"r3name"],
        &[b"UNSUBSCRIBE"],
        &[b"SET", b"r3state:z", b"1"],
        &[b"CLIENT", b"GETNAME"],
        &[b"GET", b"r3state:z"],
        &[b"SELECT", b"0"],
        &[b"GET", b"r3state:z"],
        &[b"SELECT", b"1"],
        &[b"EXISTS", b"r3state:z"],
    ];
    for args in steps {
        let want = direct.cmd(args).await;
        let got = c.cmd(args).await;
        if args[0] == b"HELLO" {
            assert!(got.starts_with(b"%"), "{got:?}");
            continue;
        }
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&args.concat()));
    }
    proxy.shutdown().await;
}

async fn a_pipeline_after_unsubscribe_gets_its_replies(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut bytes = Vec::new();
    for args in [
        &[&b"SUBSCRIBE"[..], b"x"][..],
        &[b"UNSUBSCRIBE"],
        &[b"SET", b"k", b"1"],
        &[b"INCR", b"k"],
    ] {
        bytes.extend(resp_cmd(args));
    }
    c.send(&bytes).await;
    assert!(c.read_reply().await.starts_with(b"*3\r\n$9\r\nsubscribe"));
    assert!(c
        .read_reply()
        .await
        .starts_with(b"*3\r\n$11\r\nunsubscribe"));
    assert_eq!(c.read_reply().await, b"+OK\r\n");
    assert_eq!(c.read_reply().await, b":2\r\n");
    proxy.shutdown().await;
}

async fn fan_out_to_100_subscribers(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut subs = Vec::new();
    for _ in 0..100 {
        let mut s = AsyncRawClient::connect(proxy.local_addr()).await;
        assert!(s
            .cmd(&[b"SUBSCRIBE", b"fan"])
            .await
            .starts_with(b"*3\r\n$9\r\nsubscribe"));
        subs.push(s);
    }
    let mut publisher = AsyncRawClient::connect(proxy.local_addr()).await;
    for i in 0..5 {
        let msg = format!("m{i}");
        assert_eq!(
            publisher.cmd(&[b"PUBLISH", b"fan", msg.as_bytes()]).await,
            b":100\r\n"
        );
    }
    for s in &mut subs {
        for i in 0..5 {
            let msg = format!("m{i}");
            assert_eq!(
                s.read_reply().await,
                push(b"message", b"fan", msg.as_bytes())
            );
        }
    }
    drop(subs);
    // Subscribers leaving closes their upstream connections: Redis forgets them.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = up.subscribers(b"fan").await;
        if r == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "subscribers left behind: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.shutdown().await;
}

async fn resp3_subscribers_get_push_messages(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut sub = AsyncRawClient::connect(proxy.local_addr()).await;
    assert!(sub.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7"));
    assert_eq!(
        sub.cmd(&[b"SUBSCRIBE", b"ch"]).await,
        b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    let mut publisher = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(publisher.cmd(&[b"PUBLISH", b"ch", b"hi"]).await, b":1\r\n");
    assert_eq!(
        sub.read_reply().await,
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
    );
    // RESP3 allows ordinary commands while subscribed (on a cluster, a command
    // with keys goes by the slot of its keys, whichever node the subscriber
    // connection is on).
    for key in [&b"nope"[..], b"a", b"b", b"c", b"d", b"e"] {
        assert_eq!(sub.cmd(&[b"GET", key]).await, b"_\r\n");
    }
    assert_eq!(sub.cmd(&[b"ECHO", b"x"]).await, b"$1\r\nx\r\n");
    proxy.shutdown().await;
}

async fn a_slow_subscriber_is_disconnected_at_the_buffer_limit(kind: Upstream) {
    let up = Backend::start(kind);
    let mut config = up.config();
    config.limits.pubsub_buffer_limit = 256 * 1024;
    let proxy = start_proxy(config).await;
    let mut slow = AsyncRawClient::connect(proxy.local_addr()).await;
    assert!(slow.cmd(&[b"SUBSCRIBE", b"flood"]).await.starts_with(b"*3"));
    let mut publisher = AsyncRawClient::connect(proxy.local_addr()).await;
    let payload = vec![b'x'; 64 * 1024];
    // Publish far more than the limit plus what the sockets can buffer, while
    // the subscriber reads nothing; the proxy must cut it off, not buffer it all.
    let mut cut = false;
    for _ in 0..2000 {
        let r = publisher.cmd(&[b"PUBLISH", b"flood", &payload]).await;
        if r == b":0\r\n" {
            cut = true;
            break;
        }
        assert_eq!(r, b":1\r\n");
    }
    assert!(cut, "the slow subscriber was never disconnected");
    // Its connection is closed by the proxy (after whatever was in flight).
    slow.set_timeout(Duration::from_secs(10));
    let _ = slow.read_until_closed().await;
    // Others are unaffected.
    assert_eq!(publisher.cmd(&[b"PING"]).await, b"+PONG\r\n");
    proxy.shutdown().await;
}

// Standalone only: MONITOR watches one server (a cluster node sees only its slots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_streams_commands_on_its_own_connection() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut mon = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(mon.cmd(&[b"MONITOR"]).await, b"+OK\r\n");
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"SET", b"watched", b"1"]).await, b"+OK\r\n");
    // Redis's own monitor line for the SET, whichever connection sent it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let line = mon.read_reply().await;
        if String::from_utf8_lossy(&line).contains("\"SET\" \"watched\" \"1\"") {
            break;
        }
        assert!(Instant::now() < deadline, "no monitor line for SET");
    }
    // The other client is unaffected.
    assert_eq!(c.cmd(&[b"GET", b"watched"]).await, b"$1\r\n1\r\n");
    proxy.shutdown().await;
}

/// RESET or QUIT pipelined behind MONITOR, as node-redis sends them ("should be
/// able to go back to normal mode"): the proxy answers them itself, and it
/// answered them before Redis's `+OK` to MONITOR had come, which was lost (the
/// client then waited for it forever). They wait for the replies still to come
/// on the MONITOR connection now, and a RESET (or QUIT) is sent there first, so
/// that the stream line of the request before it (which Redis writes after that
/// request's reply) comes before `+RESET` (or QUIT's `+OK`); the bytes are
/// Redis's.
// Standalone only, as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_or_quit_pipelined_behind_monitor_comes_after_its_ok() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    for (side, addr) in [("redis", redis.addr()), ("proxy", proxy.local_addr())] {
        let mut c = AsyncRawClient::connect(addr).await;
        c.send(b"MONITOR\r\nRESET\r\n").await;
        let replies = c.read_replies(2).await;
        assert_eq!(replies, [&b"+OK\r\n"[..], b"+RESET\r\n"], "{side}");
        assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n", "{side}");
        // Redis writes a request's stream line after its reply: the PING's
        // line comes before RESET's answer.
        c.send(b"MONITOR\r\nPING\r\nRESET\r\n").await;
        let replies = c.read_replies(4).await;
        let line = String::from_utf8_lossy(&replies[2]).into_owned();
        assert_eq!(
            [&replies[0][..], &replies[1], &replies[3]],
            [&b"+OK\r\n"[..], b"+PONG\r\n", b"+RESET\r\n"],
            "{side}: {line}"
        );
        assert!(
            line.starts_with('+') && line.contains(" [") && line.ends_with("\"PING\"\r\n"),
            "{side}: {line}"
        );
        assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n", "{side}");
        let mut q = AsyncRawClient::connect(addr).await;
        q.send(b"MONITOR\r\nPING\r\nQUIT\r\n").await;
        let before_close = String::from_utf8_lossy(&q.read_until_closed().await).into_owned();
        // The same with QUIT: the PING's line, then QUIT's `+OK` and the close.
        let replies: Vec<&str> = before_close.split_terminator("\r\n").collect();
        assert_eq!(replies.len(), 4, "{side}: {before_close:?}");
        assert_eq!(
            [replies[0], replies[1], replies[3]],
            ["+OK", "+PONG", "+OK"],
            "{side}: {before_close:?}"
        );
        assert!(
            replies[2].starts_with('+') && replies[2].ends_with(" \"PING\""),
            "{side}: {before_close:?}"
        );
    }
    proxy.shutdown().await;
}

/// A RESP3 subscriber's `HELLO 2`: on Redis the client stays subscribed and
/// speaks RESP2 from then on (messages as arrays, only the pub/sub commands
/// allowed, `PING` answered `["pong", ""]`), as Redis's own Tcl suite does
/// ("Able to redirect to a RESP3 client"). The proxy refused it before. Every
/// reply compared with Redis's (ids masked; each side its own channel).
// Standalone only: on a cluster it is still refused (README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp3_subscriber_switches_to_resp2_and_stays_subscribed() {
    let up = Backend::start(Upstream::Standalone);
    let proxy = start_proxy(up.config()).await;
    // `Some(args)`: the client's request and its reply; `None`: another client
    // publishes, and the client's next frame is the message.
    let steps: &[Option<&[&[u8]]>] = &[
        Some(&[b"HELLO", b"3"]),
        Some(&[b"SUBSCRIBE", b"CH"]),
        None,
        Some(&[b"SELECT", b"2"]),
        Some(&[b"HELLO", b"2"]),
        None,
        Some(&[b"GET", b"k"]),
        Some(&[b"MULTI"]),
        Some(&[b"SELECT", b"0"]),
        Some(&[b"PING"]),
        Some(&[b"HELLO", b"3"]),
        Some(&[b"CLIENT", b"SETNAME", b"x"]),
        Some(&[b"UNSUBSCRIBE"]),
        Some(&[b"PING"]),
        Some(&[b"HELLO", b"3"]),
        Some(&[b"SUBSCRIBE", b"CH"]),
        Some(&[b"HELLO", b"2", b"SETNAME", b"named"]),
        None,
        Some(&[b"CLIENT", b"GETNAME"]),
        Some(&[b"UNSUBSCRIBE"]),
        Some(&[b"CLIENT", b"GETNAME"]),
    ];
    async fn play(
        mut c: AsyncRawClient,
        mut publisher: AsyncRawClient,
        ch: &[u8],
        steps: &[Option<&[&[u8]]>],
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let reply = match step {
                Some(args) => {
                    let args: Vec<&[u8]> = args
                        .iter()
                        .map(|a| if *a == b"CH" { ch } else { a })
                        .collect();
                    c.cmd(&args).await
                }
                None => {
                    let msg = format!("m{i}");
                    assert_eq!(
                        publisher.cmd(&[b"PUBLISH", ch, msg.as_bytes()]).await,
                        b":1\r\n"
                    );
                    c.read_reply().await
                }
            };
            let text = String::from_utf8_lossy(&reply).replace(&*String::from_utf8_lossy(ch), "CH");
            // (Connection ids differ: the proxy gives its session's.)
            let masked = match text.split_once("$2\r\nid\r\n:") {
                Some((a, b)) => format!("{a}$2\r\nid\r\n:ID{}", &b[b.find('\r').unwrap_or(0)..]),
                None => text,
            };
            out.push(masked);
        }
        out
    }
    let direct = play(up.reference().await, up.reference().await, b"h2drct", steps).await;
    let c = AsyncRawClient::connect(proxy.local_addr()).await;
    let publisher = AsyncRawClient::connect(proxy.local_addr()).await;
    let proxied = play(c, publisher, b"h2prxy", steps).await;
    for (i, (want, got)) in direct.iter().zip(&proxied).enumerate() {
        assert_eq!(got, want, "step {i}: {:?}", steps[i]);
    }
    assert!(
        direct[5].starts_with("*3\r\n$7\r\nmessage"),
        "{}",
        direct[5]
    );
    proxy.shutdown().await;
}

/// A RESP3 subscriber's `SELECT` of another database on the same server moves
/// its subscriber connection there too: a transaction, a `WATCH` or a blocking
/// pop after it runs on that database, as on Redis (the proxy refused them
/// before: the subscriber connection stayed on the first database). Every
/// reply compared with Redis's (ids masked).
// Standalone only: on a cluster (one db) a SELECT changes the key prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp3_subscriber_that_selects_runs_its_transactions_there() {
    let up = Backend::start(Upstream::Standalone);
    let proxy = start_proxy(up.config()).await;
    let steps: &[&[&[u8]]] = &[
        &[b"HELLO", b"3"],
        &[b"SUBSCRIBE", b"selch"],
        &[b"SELECT", b"2"],
        &[b"MULTI"],
        &[b"SET", b"selk", b"v2"],
        &[b"GET", b"selk"],
        &[b"EXEC"],
        &[b"BLPOP", b"selq", b"0.01"],
        &[b"WATCH", b"selk"],
        &[b"MULTI"],
        &[b"INCR", b"seln"],
        &[b"EXEC"],
        &[b"SELECT", b"0"],
        &[b"GET", b"selk"],
        &[b"SELECT", b"2"],
        &[b"UNSUBSCRIBE"],
        &[b"GET", b"selk"],
        &[b"GET", b"seln"],
        &[b"DEL", b"selk", b"seln"],
    ];
    async fn play(mut c: AsyncRawClient, steps: &[&[&[u8]]]) -> Vec<String> {
        let mut out = Vec::new();
        for args in steps {
            let text = String::from_utf8_lossy(&c.cmd(args).await).into_owned();
            // (Connection ids differ: the proxy gives its session's.)
            out.push(match text.split_once("$2\r\nid\r\n:") {
                Some((a, b)) => format!("{a}$2\r\nid\r\n:ID{}", &b[b.find('\r').unwrap_or(0)..]),
                None => text,
            });
        }
        out
    }
    let mut direct = up.reference().await;
    // (The reference runs in db 2 of the same server first, and cleans up.)
    assert_eq!(direct.cmd(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    let want = play(direct, steps).await;
    let got = play(AsyncRawClient::connect(proxy.local_addr()).await, steps).await;
    for (i, (want, got)) in want.iter().zip(&got).enumerate() {
        assert_eq!(
            got,
            want,
            "step {i}: {:?}",
            String::from_utf8_lossy(&steps[i].concat())
        );
    }
    assert_eq!(want[6], "*2\r\n+OK\r\n$2\r\nv2\r\n");
    assert_eq!(want[13], "_\r\n", "db 0 has no selk");
    proxy.shutdown().await;
}

/// A RESP3 subscriber's `SELECT` inside its transaction (which runs on the
/// subscriber connection) is queued there by Redis and becomes the session's
/// database when `EXEC` runs the transaction — not after `DISCARD` or an
/// aborted `EXEC`. (The proxy refused it before.) Every reply compared with
/// Redis's (ids masked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp3_subscribers_select_inside_its_transaction_takes_effect_at_exec() {
    let up = Backend::start(Upstream::Standalone);
    let proxy = start_proxy(up.config()).await;
    // Each step: requests sent in one write, and how many replies they get.
    let steps: &[(&[&[&[u8]]], usize)] = &[
        (&[&[b"HELLO", b"3"]], 1),
        (&[&[b"SUBSCRIBE", b"txselch"]], 1),
        (
            &[&[b"MULTI"], &[b"SELECT", b"2"], &[b"SET", b"txk", b"v2"]],
            3,
        ),
        (&[&[b"EXEC"]], 1),
        (&[&[b"GET", b"txk"]], 1),
        (&[&[b"SELECT", b"0"], &[b"GET", b"txk"]], 2),
        (&[&[b"MULTI"], &[b"SELECT", b"2"], &[b"DISCARD"]], 3),
        (&[&[b"GET", b"txk"]], 1),
        (
            &[&[b"MULTI"], &[b"SELECT", b"3"], &[b"SET", b"txk", b"v3"]],
            3,
        ),
        (&[&[b"EXEC"], &[b"GET", b"txk"]], 2),
        (&[&[b"MULTI"], &[b"SELECT", b"0"], &[b"GET"], &[b"EXEC"]], 4),
        (&[&[b"GET", b"txk"]], 1),
        // A SELECT of no database: queued, its error in EXEC's reply.
        (
            &[
                &[b"MULTI"],
                &[b"SELECT", b"99"],
                &[b"SET", b"txk", b"v99"],
                &[b"EXEC"],
            ],
            4,
        ),
        (&[&[b"GET", b"txk"]], 1),
        (&[&[b"UNSUBSCRIBE"]], 1),
        (&[&[b"GET", b"txk"]], 1),
        (
            &[&[b"DEL", b"txk"], &[b"SELECT", b"2"], &[b"DEL", b"txk"]],
            3,
        ),
    ];
    let want = play_steps(up.reference().await, steps).await;
    let mut direct = up.reference().await;
    assert_eq!(direct.cmd(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    let got = play_steps(AsyncRawClient::connect(proxy.local_addr()).await, steps).await;
    assert_eq!(got, want, "proxy (left) vs redis (right)");
    // What it checks: the SELECTs ran at EXEC, and only then.
    assert_eq!(want[5], "*2\r\n+OK\r\n+OK\r\n");
    assert_eq!(want[6], "$2\r\nv2\r\n");
    assert_eq!(want[8], "_\r\n", "db 0 has no txk");
    assert_eq!(want[12], "_\r\n", "DISCARD: still db 0");
    assert_eq!(want[17], "$2\r\nv3\r\n", "pipelined after EXEC: db 3");
    assert!(want[21].starts_with("-EXECABORT"), "{}", want[21]);
    assert_eq!(want[22], "$2\r\nv3\r\n", "aborted: still db 3");
    assert_eq!(want[26], "*2\r\n-ERR DB index is out of range\r\n+OK\r\n");
    assert_eq!(want[27], "$3\r\nv99\r\n", "ran: still db 3");
    proxy.shutdown().await;
}

/// Inside a RESP3 subscriber's transaction (on its subscriber connection),
/// `CLIENT SETNAME`/`GETNAME` — which the proxy answers itself — are queued
/// and run when `EXEC` runs the transaction, their replies in their places in
/// `EXEC`'s array, as on Redis (the proxy refused them before, and `EXEC` then
/// discarded the transaction); not after `DISCARD` or an aborted `EXEC`.
/// Every reply compared with Redis's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp3_subscribers_transaction_queues_client_setname_and_getname() {
    let up = Backend::start(Upstream::Standalone);
    let proxy = start_proxy(up.config()).await;
    let steps: &[(&[&[&[u8]]], usize)] = &[
        (&[&[b"HELLO", b"3"]], 1),
        (&[&[b"SUBSCRIBE", b"txnamech"]], 1),
        (
            &[
                &[b"MULTI"],
                &[b"CLIENT", b"SETNAME", b"n1"],
                &[b"SET", b"txnk", b"v"],
            ],
            3,
        ),
        (
            &[
                &[b"ECHO", b"redis-sidecar:queued:0"],
                &[b"CLIENT", b"GETNAME"],
            ],
            2,
        ),
        (&[&[b"GET", b"txnk"], &[b"EXEC"]], 2),
        (&[&[b"CLIENT", b"GETNAME"]], 1),
        (
            &[&[b"MULTI"], &[b"CLIENT", b"SETNAME", b"n2"], &[b"DISCARD"]],
            3,
        ),
        (&[&[b"CLIENT", b"GETNAME"]], 1),
        (
            &[
                &[b"MULTI"],
                &[b"CLIENT", b"SETNAME", b"n3"],
                &[b"GET"],
                &[b"EXEC"],
            ],
            4,
        ),
        (
            &[
                &[b"CLIENT", b"GETNAME"],
                &[b"UNSUBSCRIBE"],
                &[b"DEL", b"txnk"],
            ],
            3,
        ),
    ];
    let want = play_steps(up.reference().await, steps).await;
    let got = play_steps(AsyncRawClient::connect(proxy.local_addr()).await, steps).await;
    assert_eq!(got, want, "proxy (left) vs redis (right)");
    assert_eq!(
        want[8],
        "*5\r\n+OK\r\n+OK\r\n$22\r\nredis-sidecar:queued:0\r\n$2\r\nn1\r\n$1\r\nv\r\n"
    );
    assert_eq!(want[9], "$2\r\nn1\r\n");
    assert_eq!(want[13], "$2\r\nn1\r\n", "DISCARD: the name kept");
    assert!(want[17].starts_with("-EXECABORT"), "{}", want[17]);
    assert_eq!(want[18], "$2\r\nn1\r\n", "aborted: the name kept");
    proxy.shutdown().await;
}

/// Plays `steps` (requests sent in one write, and how many replies they get)
/// on `c`: every reply as text, connection ids masked (the proxy gives its
/// session's).
async fn play_steps(mut c: AsyncRawClient, steps: &[(&[&[&[u8]]], usize)]) -> Vec<String> {
    let mut out = Vec::new();
    for (requests, replies) in steps {
        let bytes: Vec<u8> = requests.iter().flat_map(|r| resp_cmd(r)).collect();
        c.send(&bytes).await;
        for _ in 0..*replies {
            let text = String::from_utf8_lossy(&c.read_reply().await).into_owned();
            out.push(match text.split_once("$2\r\nid\r\n:") {
                Some((a, b)) => format!("{a}$2\r\nid\r\n:ID{}", &b[b.find('\r').unwrap_or(0)..]),
                None => text,
            });
        }
    }
    out
}

/// A RESP3 subscriber's transaction that publishes to the subscriber itself:
/// Redis 7.0 writes each message between the elements of `EXEC`'s array
/// (`*4 >… :1 +OK >… :1 $2 n1`), out of band. The proxy took such a push for
/// one of the array's elements, so the element a queued `CLIENT GETNAME` stands
/// for was missed (the client got the proxy's placeholder, not its name), and
/// under `CLIENT REPLY OFF` the messages went with the array the client had
/// asked not to get (Redis sends them anyway). Found by the multi-session tool
/// (seed 5227). The whole byte stream compared with Redis's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_a_subscribers_transaction_publishes_to_itself_reach_it() {
    let up = Backend::start(Upstream::Standalone);
    let proxy = start_proxy(up.config()).await;
    let steps: &[&[&[u8]]] = &[
        &[b"HELLO", b"3"],
        &[b"PSUBSCRIBE", b"selfpub*"],
        &[b"MULTI"],
        &[b"PUBLISH", b"selfpub1", b"m1"],
        &[b"CLIENT", b"SETNAME", b"n1"],
        &[b"PUBLISH", b"selfpub2", b"m2"],
        &[b"CLIENT", b"GETNAME"],
        &[b"EXEC"],
        &[b"CLIENT", b"REPLY", b"OFF"],
        &[b"MULTI"],
        &[b"PUBLISH", b"selfpub3", b"m3"],
        &[b"PUBLISH", b"selfpub4", b"m4"],
        &[b"EXEC"],
        &[b"CLIENT", b"REPLY", b"ON"],
        &[b"ECHO", b"selfpub-end"],
    ];
    // Everything until the last ECHO's reply, as bytes (the frames are not
    // split: the test client's own framing counts a push as an element), the
    // connection id of HELLO's map masked.
    async fn play(mut c: AsyncRawClient, steps: &[&[&[u8]]]) -> String {
        for s in steps {
            c.send(&resp_cmd(s)).await;
        }
        let mut out = String::new();
        for _ in 0..100 {
            out.push_str(&String::from_utf8_lossy(&c.read_reply().await));
            if out.ends_with("$11\r\nselfpub-end\r\n") {
                break;
            }
        }
        let (a, b) = out.split_once("$2\r\nid\r\n:").expect("HELLO's id");
        format!("{a}$2\r\nid\r\n:ID{}", &b[b.find('\r').unwrap_or(0)..])
    }
    let want = play(up.reference().await, steps).await;
    // The first side's subscription gone before the second publishes.
    let mut admin = up.reference().await;
    for _ in 0..200 {
        if admin.cmd(&[b"PUBSUB", b"NUMPAT"]).await == b":0\r\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = play(AsyncRawClient::connect(proxy.local_addr()).await, steps).await;
    assert_eq!(got, want, "proxy (left) vs redis (right)");
    let message = |ch: &str, m: &str| {
        format!(">4\r\n$8\r\npmessage\r\n$8\r\nselfpub*\r\n$8\r\n{ch}\r\n$2\r\n{m}\r\n")
    };
    let exec = format!(
        "*4\r\n{}:1\r\n+OK\r\n{}:1\r\n$2\r\nn1\r\n",
        message("selfpub1", "m1"),
        message("selfpub2", "m2")
    );
    assert!(want.contains(&exec), "{want:?}");
    let off = format!(
        "{}{}+OK\r\n$11\r\nselfpub-end\r\n",
        message("selfpub3", "m3"),
        message("selfpub4", "m4")
    );
    assert!(want.ends_with(&off), "{want:?}");
    // A subscription confirmation inside EXEC's array is the reply of a queued
    // command, one of its elements (`UNSUBSCRIBE` of a session without
    // subscriptions: `*2 >3 unsubscribe _ :0 $1 x`): taken for a message out of
    // band at first, which left the array waiting for one more element.
    let steps: &[&[&[u8]]] = &[
        &[b"HELLO", b"3"],
        &[b"MULTI"],
        &[b"UNSUBSCRIBE"],
        &[b"PING", b"x"],
        &[b"EXEC"],
        &[b"ECHO", b"selfpub-end"],
    ];
    let want = play(up.reference().await, steps).await;
    let got = play(AsyncRawClient::connect(proxy.local_addr()).await, steps).await;
    assert_eq!(got, want, "proxy (left) vs redis (right)");
    assert!(
        want.ends_with(
            "*2\r\n>3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n$1\r\nx\r\n$11\r\nselfpub-end\r\n"
        ),
        "{want:?}"
    );
    proxy.shutdown().await;
}

/// A RESP3 subscriber's `WATCH` outlives its last `UNSUBSCRIBE`, as on Redis,
/// where the client keeps its watched keys: the subscriber connection, which
/// holds the watch, stays the session's until `EXEC`, `DISCARD` or `UNWATCH`.
/// (Until session 37 the session went back to shared connections at the last
/// unsubscribe and the watch was lost: a write to the watched key did not fail
/// the `EXEC` after it. Found by the multi-session tool, seed 6804.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp3_subscribers_watch_outlives_its_last_unsubscribe() {
    let up = Backend::start(Upstream::Standalone);
    let proxy = start_proxy(up.config()).await;
    let steps: &[(&[&[&[u8]]], usize)] = &[
        (&[&[b"HELLO", b"3"]], 1),
        (&[&[b"SUBSCRIBE", b"wch"]], 1),
        (&[&[b"WATCH", b"wk"]], 1),
        (&[&[b"SET", b"wk", b"1"]], 1),
        (&[&[b"UNSUBSCRIBE"]], 1),
        (&[&[b"MULTI"], &[b"SET", b"wk", b"2"], &[b"EXEC"]], 3),
        (&[&[b"GET", b"wk"]], 1),
        // Not touched: the transaction runs.
        (&[&[b"SUBSCRIBE", b"wch"], &[b"WATCH", b"wk"]], 2),
        (&[&[b"UNSUBSCRIBE"]], 1),
        (&[&[b"MULTI"], &[b"SET", b"wk", b"3"], &[b"EXEC"]], 3),
        (&[&[b"GET", b"wk"], &[b"DEL", b"wk"]], 2),
    ];
    let want = play_steps(up.reference().await, steps).await;
    let got = play_steps(AsyncRawClient::connect(proxy.local_addr()).await, steps).await;
    assert_eq!(got, want, "proxy (left) vs redis (right)");
    assert_eq!(want[7], "_\r\n", "the watched key was written: EXEC fails");
    assert_eq!(want[8], "$1\r\n1\r\n");
    assert_eq!(want[14], "*1\r\n+OK\r\n");
    proxy.shutdown().await;
}

/// A RESP3 subscriber's `EXEC` or `DISCARD` without `MULTI` is refused by Redis
/// and leaves its `WATCH` in force; so does `UNWATCH` with an argument. The proxy
/// took each for the end of the watch, gave up the watching connection at the
/// last `UNSUBSCRIBE`, and ran the next transaction unwatched: `EXEC` succeeded
/// though the watched key had been written (found by the multi-session tool,
/// `AUTH` run, seed 8514). An `EXEC` refused for its arity does end the watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp3_subscribers_refused_exec_or_discard_keeps_its_watch() {
    let up = Backend::start(Upstream::Standalone);
    let proxy = start_proxy(up.config()).await;
    let mut steps: Vec<(&[&[&[u8]]], usize)> = vec![(&[&[b"HELLO", b"3"]], 1)];
    let refused: [&[&[&[u8]]]; 4] = [
        &[&[b"EXEC"]],
        &[&[b"DISCARD"]],
        &[&[b"UNWATCH", b"x"]],
        &[&[b"EXEC", b"x"]],
    ];
    for r in &refused {
        steps.extend_from_slice(&[
            (&[&[b"SUBSCRIBE", b"rch"]], 1),
            (&[&[b"WATCH", b"rk"]], 1),
            (&[&[b"SET", b"rk", b"1"]], 1),
            (r, 1),
            (&[&[b"UNSUBSCRIBE"]], 1),
            (&[&[b"MULTI"], &[b"SET", b"rk", b"2"], &[b"EXEC"]], 3),
        ]);
    }
    let want = play_steps(up.reference().await, &steps).await;
    let got = play_steps(AsyncRawClient::connect(proxy.local_addr()).await, &steps).await;
    assert_eq!(got, want, "proxy (left) vs redis (right)");
    // Each round's EXEC reply: aborted while the watch holds, run after `EXEC x`.
    let execs: Vec<&str> = (0..4).map(|i| want[1 + 8 * i + 7].as_str()).collect();
    assert_eq!(execs[..3], ["_\r\n"; 3], "{want:?}");
    assert_eq!(execs[3], "*1\r\n+OK\r\n", "{want:?}");
    proxy.shutdown().await;
}

/// A `WATCH`, then `SUBSCRIBE` (RESP2 and RESP3) or `HELLO`: Redis runs them on
/// the watching connection and the watch holds until `EXEC`. The proxy refused
/// them as if inside a transaction until session 37; now the watching connection
/// leaves the pool and becomes the session's own (RESP3: its subscriber
/// connection too; RESP2: parked while subscribed), switching protocol in place
/// for `HELLO`, and goes when the watch ends. Here the client's own write breaks
/// its watch before the `SUBSCRIBE` or `HELLO`: `EXEC` must fail after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_holds_across_subscribe_and_hello() {
    let up = Backend::start(Upstream::Standalone);
    let proxy = start_proxy(up.config()).await;
    let broken: &[&[u8]] = &[b"SET", b"hk", b"1"];
    let tx: &[&[&[u8]]] = &[&[b"MULTI"], &[b"SET", b"hk", b"2"], &[b"EXEC"]];
    let steps: &[(&[&[&[u8]]], usize)] = &[
        // RESP2: subscribed in between.
        (&[&[b"WATCH", b"hk"], broken], 2),
        (&[&[b"SUBSCRIBE", b"hch"]], 1),
        (&[&[b"UNSUBSCRIBE"]], 1),
        (tx, 3),
        // HELLO 3, then subscribed in RESP3 with the transaction sent there.
        (&[&[b"WATCH", b"hk"], broken, &[b"HELLO", b"3"]], 3),
        (&[&[b"SUBSCRIBE", b"hch"]], 1),
        (tx, 3),
        (&[&[b"UNSUBSCRIBE"], &[b"GET", b"hk"]], 2),
        // Not broken: it runs; then HELLO 2 under a watch, in one write.
        (&[&[b"WATCH", b"hk"], &[b"HELLO", b"2"]], 2),
        (tx, 3),
        (&[&[b"WATCH", b"hk"], broken, &[b"HELLO", b"2"]], 3),
        (tx, 3),
        // Pipelined behind a blocking command on the watching connection: the
        // SUBSCRIBE waits for its reply, then takes the connection over.
        (
            &[
                &[b"WATCH", b"hk"],
                broken,
                &[b"BLPOP", b"nolist", b"0.2"],
                &[b"SUBSCRIBE", b"hch"],
            ],
            4,
        ),
        (&[&[b"UNSUBSCRIBE"]], 1),
        (tx, 3),
        (&[&[b"GET", b"hk"], &[b"DEL", b"hk"]], 2),
    ];
    let want = play_steps(up.reference().await, steps).await;
    let got = play_steps(AsyncRawClient::connect(proxy.local_addr()).await, steps).await;
    assert_eq!(got, want, "proxy (left) vs redis (right)");
    assert_eq!(want[6], "*-1\r\n", "RESP2: the watch held across SUBSCRIBE");
    assert_eq!(
        want[13], "_\r\n",
        "RESP3: the watch held across HELLO and SUBSCRIBE"
    );
    assert_eq!(want[15], "$1\r\n1\r\n");
    assert_eq!(want[20], "*1\r\n+OK\r\n");
    assert_eq!(want[26], "*-1\r\n");
    assert_eq!(want[34], "*-1\r\n", "behind BLPOP: the watch held");
    proxy.shutdown().await;
}

/// A RESP2 subscriber's `EXEC` under a `WATCH` made before it subscribed: Redis
/// refuses it in the pub/sub context, and its refusal of an `EXEC` discards the
/// transaction, the watch included, so a later transaction runs whatever was
/// written. The proxy's watching connection, parked while the client is subscribed,
/// is unwatched too (session 37; found by the multi-session tool, seed 7435).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp2_subscribers_refused_exec_ends_its_watch() {
    let up = Backend::start(Upstream::Standalone);
    let proxy = start_proxy(up.config()).await;
    let steps: &[(&[&[&[u8]]], usize)] = &[
        (&[&[b"WATCH", b"xk"]], 1),
        (&[&[b"SUBSCRIBE", b"xch"]], 1),
        (&[&[b"EXEC"]], 1),
        (&[&[b"UNSUBSCRIBE", b"xch"]], 1),
        (&[&[b"SET", b"xk", b"0"]], 1),
        (&[&[b"MULTI"], &[b"EXEC"]], 2),
        (&[&[b"DEL", b"xk"]], 1),
    ];
    let want = play_steps(up.reference().await, steps).await;
    let got = play_steps(AsyncRawClient::connect(proxy.local_addr()).await, steps).await;
    assert_eq!(got, want, "proxy (left) vs redis (right)");
    assert!(want[2].starts_with("-EXECABORT"), "{}", want[2]);
    assert_eq!(want[6], "*0\r\n", "no watch left: the transaction ran");
    proxy.shutdown().await;
}
