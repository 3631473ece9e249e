//! Client-side caching through the proxy: `CLIENT TRACKING` puts the session on a
//! connection of its own, invalidation messages reach the client as Redis sends
//! them (RESP3 pushes, also while the client is idle; RESP2 `message`s on another
//! client subscribed to `__redis__:invalidate` via REDIRECT), and the tracking
//! queries answer as on Redis. Each scenario runs against redis-server directly and
//! then through the proxy, and the two transcripts must be equal.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{proxy_config, resp_cmd, start_proxy, AsyncRawClient, RedisServer};

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).into_owned()
}

/// How long an invalidation may take to arrive at an idle client.
const PROMPT: Duration = Duration::from_secs(1);

/// The `flags=` and `redir=` fields of a `CLIENT INFO` reply.
fn flags_and_redir(reply: &[u8]) -> String {
    text(reply)
        .split_whitespace()
        .filter(|f| f.starts_with("flags=") || f.starts_with("redir="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads one frame that must arrive within [`PROMPT`] without the client asking.
async fn pushed(c: &mut AsyncRawClient) -> String {
    let started = Instant::now();
    c.set_timeout(PROMPT * 2);
    let frame = c.read_reply().await;
    c.set_timeout(support::DEFAULT_TIMEOUT);
    assert!(
        started.elapsed() < PROMPT,
        "arrived after {:?}",
        started.elapsed()
    );
    text(&frame)
}

async fn id_of(c: &mut AsyncRawClient) -> u64 {
    let r = text(&c.cmd(&[b"CLIENT", b"ID"]).await);
    r.trim_start_matches(':').trim_end().parse().unwrap()
}

/// Runs `scenario` on a flushed server, first against Redis at `redis`, then
/// through the proxy at `proxy`, and asserts the two transcripts are equal.
async fn same_as_redis<F, Fut>(redis: SocketAddr, proxy: SocketAddr, scenario: F)
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = Vec<String>>,
{
    let mut transcripts = Vec::new();
    for addr in [redis, proxy] {
        let mut admin = AsyncRawClient::connect(redis).await;
        assert_eq!(admin.cmd(&[b"FLUSHALL"]).await, b"+OK\r\n");
        transcripts.push(scenario(addr).await);
    }
    assert_eq!(
        transcripts[1], transcripts[0],
        "proxy (left) vs redis (right)"
    );
}

/// A RESP3 client with tracking on.
async fn resp3_tracking(
    addr: SocketAddr,
    options: &[&[u8]],
    log: &mut Vec<String>,
) -> AsyncRawClient {
    let mut c = AsyncRawClient::connect(addr).await;
    assert!(c.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
    let mut on: Vec<&[u8]> = vec![b"CLIENT", b"TRACKING", b"ON"];
    on.extend_from_slice(options);
    log.push(text(&c.cmd(&on).await));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_invalidations_reach_an_idle_client_and_are_never_taken_for_replies() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut c = resp3_tracking(addr, &[], &mut log).await;
        let mut w = AsyncRawClient::connect(addr).await;
        log.push(text(&c.cmd(&[b"GET", b"k"]).await));
        // Another client's write: the push arrives while c is idle.
        log.push(text(&w.cmd(&[b"SET", b"k", b"v1"]).await));
        log.push(pushed(&mut c).await);
        // Later commands get their own replies.
        log.push(text(&c.cmd(&[b"PING"]).await));
        log.push(text(&c.cmd(&[b"GET", b"k"]).await));
        // A push Redis sent before the replies of a pipeline comes before them,
        // however the proxy read it (idle, or with the pipeline's replies).
        for i in 0..30 {
            let v = format!("v{i}");
            w.cmd(&[b"SET", b"k", v.as_bytes()]).await;
            c.send(&[resp_cmd(&[b"GET", b"k"]), resp_cmd(&[b"PING"])].concat())
                .await;
            for _ in 0..3 {
                log.push(text(&c.read_reply().await));
            }
        }
        // Its own write: Redis's reply, then the push (not NOLOOP).
        log.push(text(&c.cmd(&[b"SET", b"k", b"mine"]).await));
        log.push(pushed(&mut c).await);
        // A key it never read: nothing.
        w.cmd(&[b"SET", b"other", b"x"]).await;
        c.assert_no_reply(Duration::from_millis(200)).await;
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await));
        log.push(text(&c.cmd(&[b"CLIENT", b"GETREDIR"]).await));
        log
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcast_with_prefixes() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut c = resp3_tracking(
            addr,
            &[b"BCAST", b"PREFIX", b"user:", b"PREFIX", b"job:"],
            &mut log,
        )
        .await;
        let mut w = AsyncRawClient::connect(addr).await;
        // Never read by c: BCAST reports every key under its prefixes.
        w.cmd(&[b"SET", b"user:1", b"a"]).await;
        log.push(pushed(&mut c).await);
        w.cmd(&[b"SET", b"other", b"a"]).await;
        c.assert_no_reply(Duration::from_millis(200)).await;
        w.cmd(&[b"MSET", b"job:1", b"a", b"job:2", b"b"]).await;
        log.push(pushed(&mut c).await);
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await));
        // Overlapping prefixes and a mode switch: Redis's errors.
        log.push(text(
            &c.cmd(&[
                b"CLIENT",
                b"TRACKING",
                b"ON",
                b"BCAST",
                b"PREFIX",
                b"user:1",
            ])
            .await,
        ));
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await));
        log.push(text(
            &c.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"PREFIX", b"x"])
                .await,
        ));
        log
    })
    .await;
    // CLIENT LIST shows the tracking flags of the proxy's session.
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(
        c.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST"]).await,
        b"+OK\r\n"
    );
    let info = text(&c.cmd(&[b"CLIENT", b"INFO"]).await);
    assert!(
        info.contains(" flags=tB ") && info.contains(" redir=0 "),
        "{info}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optin_with_client_caching_yes() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut c = resp3_tracking(addr, &[b"OPTIN"], &mut log).await;
        let mut w = AsyncRawClient::connect(addr).await;
        log.push(text(&c.cmd(&[b"GET", b"a"]).await));
        log.push(text(&c.cmd(&[b"CLIENT", b"CACHING", b"yes"]).await));
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await));
        log.push(text(&c.cmd(&[b"CLIENT", b"CACHING", b"yes"]).await));
        log.push(text(&c.cmd(&[b"GET", b"b"]).await));
        // Only b was cached on purpose.
        w.cmd(&[b"SET", b"a", b"1"]).await;
        c.assert_no_reply(Duration::from_millis(200)).await;
        w.cmd(&[b"SET", b"b", b"1"]).await;
        log.push(pushed(&mut c).await);
        log.push(text(&c.cmd(&[b"CLIENT", b"CACHING", b"no"]).await));
        log.push(text(&c.cmd(&[b"CLIENT", b"CACHING", b"maybe"]).await));
        log
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noloop_skips_the_clients_own_writes() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut c = resp3_tracking(addr, &[b"NOLOOP"], &mut log).await;
        let mut w = AsyncRawClient::connect(addr).await;
        log.push(text(&c.cmd(&[b"GET", b"k"]).await));
        log.push(text(&c.cmd(&[b"SET", b"k", b"mine"]).await));
        c.assert_no_reply(Duration::from_millis(200)).await;
        log.push(text(&c.cmd(&[b"GET", b"k"]).await));
        w.cmd(&[b"SET", b"k", b"theirs"]).await;
        log.push(pushed(&mut c).await);
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await));
        log
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_redirect_to_a_client_subscribed_to_the_invalidate_channel() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut s = AsyncRawClient::connect(addr).await;
        let sid = id_of(&mut s).await;
        log.push(text(&s.cmd(&[b"SUBSCRIBE", b"__redis__:invalidate"]).await));
        let mut t = AsyncRawClient::connect(addr).await;
        let tid = id_of(&mut t).await;
        let sid_arg = sid.to_string();
        log.push(text(
            &t.cmd(&[
                b"CLIENT",
                b"TRACKING",
                b"ON",
                b"REDIRECT",
                sid_arg.as_bytes(),
            ])
            .await,
        ));
        log.push(text(&t.cmd(&[b"GET", b"k"]).await));
        log.push(text(&t.cmd(&[b"MGET", b"k2", b"k3"]).await));
        let mut w = AsyncRawClient::connect(addr).await;
        w.cmd(&[b"SET", b"k", b"v"]).await;
        log.push(pushed(&mut s).await);
        w.cmd(&[b"DEL", b"k2", b"k3"]).await;
        w.cmd(&[b"SET", b"k2", b"v"]).await;
        log.push(pushed(&mut s).await);
        // Nothing reaches t itself (RESP2).
        t.assert_no_reply(Duration::from_millis(100)).await;
        // The redirect is the session id the client gave, through the proxy too.
        let sid_reply = format!(":{sid}\r\n");
        log.push(text(&t.cmd(&[b"CLIENT", b"GETREDIR"]).await).replace(&sid_reply, ":<sid>\r\n"));
        log.push(
            text(&t.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await).replace(&sid_reply, ":<sid>\r\n"),
        );
        let tid_arg = tid.to_string();
        let list = text(
            &t.cmd(&[b"CLIENT", b"LIST", b"ID", tid_arg.as_bytes()])
                .await,
        );
        assert!(list.contains(&format!(" redir={sid} ")), "{list}");
        assert!(list.contains(" flags=t "), "{list}");
        // OFF: no more messages.
        log.push(text(&t.cmd(&[b"CLIENT", b"TRACKING", b"OFF"]).await));
        log.push(text(&t.cmd(&[b"GET", b"k"]).await));
        w.cmd(&[b"SET", b"k", b"again"]).await;
        s.assert_no_reply(Duration::from_millis(200)).await;
        log.push(text(&t.cmd(&[b"CLIENT", b"GETREDIR"]).await));
        log.push(text(&t.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await));
        log
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_redirect_to_another_tracking_client_and_to_itself() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let redis_addr = redis.addr();
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        // b tracks too, so it has a connection of its own that gets pushes while idle.
        let mut b = resp3_tracking(addr, &[b"BCAST", b"PREFIX", b"b:"], &mut log).await;
        let bid = id_of(&mut b).await.to_string();
        let mut a = AsyncRawClient::connect(addr).await;
        assert!(a.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        log.push(text(
            &a.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", bid.as_bytes()])
                .await,
        ));
        log.push(text(&a.cmd(&[b"GET", b"k"]).await));
        let mut w = AsyncRawClient::connect(addr).await;
        w.cmd(&[b"SET", b"k", b"v"]).await;
        // a's invalidation goes to b.
        log.push(pushed(&mut b).await);
        a.assert_no_reply(Duration::from_millis(100)).await;
        // b goes away: Redis tells a (RESP3) that its redirect is broken, naming
        // the id a gave.
        log.push(text(&a.cmd(&[b"GET", b"k"]).await));
        drop(b);
        let mut direct = AsyncRawClient::connect(redis_addr).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while text(&direct.cmd(&[b"CLIENT", b"LIST"]).await).contains(" flags=tB ") {
            assert!(Instant::now() < deadline, "b's connection is still open");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        w.cmd(&[b"SET", b"k", b"v2"]).await;
        let b_reply = format!(":{bid}\r\n");
        log.push(pushed(&mut a).await.replace(&b_reply, ":<b>\r\n"));
        log.push(text(&a.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await).replace(&b_reply, ":<b>\r\n"));
        // To itself.
        let aid = id_of(&mut a).await.to_string();
        log.push(text(
            &a.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", aid.as_bytes()])
                .await,
        ));
        log.push(text(&a.cmd(&[b"GET", b"k"]).await));
        w.cmd(&[b"SET", b"k", b"w"]).await;
        log.push(pushed(&mut a).await);
        let redir = text(&a.cmd(&[b"CLIENT", b"GETREDIR"]).await);
        assert_eq!(redir, format!(":{aid}\r\n"));
        log
    })
    .await;
    proxy.shutdown().await;
}

/// Waits until Redis's `CLIENT LIST` (asked through `direct`) satisfies `done`
/// (a connection has gone), at most until `deadline`.
async fn until_client_list(
    direct: &mut AsyncRawClient,
    deadline: Instant,
    done: impl Fn(String) -> bool,
) {
    while !done(text(&direct.cmd(&[b"CLIENT", b"LIST"]).await)) {
        assert!(Instant::now() < deadline, "the connection stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `CLIENT TRACKING ON REDIRECT id`, then `GET foo` (tracked), on `t`; both
/// replies logged.
async fn track_to(t: &mut AsyncRawClient, id: &str, log: &mut Vec<String>) {
    let on: [&[u8]; 5] = [b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", id.as_bytes()];
    log.push(text(&t.cmd(&on).await));
    log.push(text(&t.cmd(&[b"GET", b"foo"]).await));
}

/// A RESP3 client that neither tracks nor subscribes, named by another client's
/// REDIRECT, gets the invalidation pushes, also while idle and while its
/// replies are off (Redis's own `RESP3 based basic redirect invalidation with
/// client reply off`, unit/tracking.tcl); a RESP2 one does not (it would need a
/// subscription). When the target leaves, the tracking client is told its
/// redirect is broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_redirect_to_a_client_that_neither_tracks_nor_subscribes() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let redis_addr = redis.addr();
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut redir = AsyncRawClient::connect(addr).await;
        assert!(redir.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        let rid = id_of(&mut redir).await.to_string();
        // Idle long enough for the proxy to park its session (the push
        // connection then wakes it).
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut t = AsyncRawClient::connect(addr).await;
        assert!(t.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        let mut w = AsyncRawClient::connect(addr).await;
        w.cmd(&[b"SET", b"foo", b"bar"]).await;
        track_to(&mut t, &rid, &mut log).await;
        // Idle: the push arrives unasked.
        w.cmd(&[b"SET", b"foo", b"bar2"]).await;
        log.push(pushed(&mut redir).await);
        log.push(text(&t.cmd(&[b"GET", b"foo"]).await));
        redir.send(&resp_cmd(&[b"CLIENT", b"REPLY", b"OFF"])).await;
        w.cmd(&[b"SET", b"foo", b"bar3"]).await;
        log.push(pushed(&mut redir).await);
        log.push(text(&redir.cmd(&[b"CLIENT", b"REPLY", b"ON"]).await));
        log.push(text(&redir.cmd(&[b"PING"]).await));
        // A RESP2 target that is not subscribed gets nothing.
        let mut r2 = AsyncRawClient::connect(addr).await;
        let r2id = id_of(&mut r2).await.to_string();
        track_to(&mut t, &r2id, &mut log).await;
        w.cmd(&[b"SET", b"foo", b"bar4"]).await;
        r2.assert_no_reply(Duration::from_millis(200)).await;
        log.push(text(&r2.cmd(&[b"PING"]).await));
        // Back to the RESP3 one, which then leaves (r2 too, so that the push
        // connections opened for the two are the ones to go).
        track_to(&mut t, &rid, &mut log).await;
        drop(r2);
        drop(redir);
        let mut direct = AsyncRawClient::connect(redis_addr).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        // Its connection (through the proxy, the push connection opened for it:
        // the only RESP3 one whose last command was its setup's CLIENT ID).
        let gone = |list: String| {
            list.lines().all(|l| match addr == redis_addr {
                true => !l.starts_with(&format!("id={rid} ")),
                false => !(l.contains(" resp=3") && l.contains(" cmd=client|id ")),
            })
        };
        until_client_list(&mut direct, deadline, gone).await;
        w.cmd(&[b"SET", b"foo", b"bar5"]).await;
        let r_reply = format!(":{rid}\r\n");
        log.push(pushed(&mut t).await.replace(&r_reply, ":<r>\r\n"));
        log
    })
    .await;
    proxy.shutdown().await;
}

/// A redirect names a client, not the connection it has at that moment: a RESP2
/// target gets the invalidations as messages once it subscribes (to any channel),
/// also when it subscribes after the redirect, when it redirects to itself, and
/// after a switch from RESP3; a RESP3 tracking client is told when a RESP2 target
/// that never subscribed leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp2_target_gets_invalidations_once_it_subscribes_whenever_that_is() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let redis_addr = redis.addr();
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut w = AsyncRawClient::connect(addr).await;
        // Another client, subscribed after the redirect (to some other channel).
        let mut target = AsyncRawClient::connect(addr).await;
        let target_id = id_of(&mut target).await.to_string();
        let mut t = AsyncRawClient::connect(addr).await;
        track_to(&mut t, &target_id, &mut log).await;
        log.push(text(&target.cmd(&[b"SUBSCRIBE", b"news"]).await));
        w.cmd(&[b"SET", b"foo", b"1"]).await;
        log.push(pushed(&mut target).await);
        log.push(text(&t.cmd(&[b"GET", b"foo"]).await));
        w.cmd(&[b"FLUSHALL"]).await;
        log.push(pushed(&mut target).await);
        // Itself, subscribed afterwards.
        let mut me = AsyncRawClient::connect(addr).await;
        let my_id = id_of(&mut me).await.to_string();
        track_to(&mut me, &my_id, &mut log).await;
        log.push(text(&me.cmd(&[b"SSUBSCRIBE", b"shard"]).await));
        w.cmd(&[b"SET", b"foo", b"2"]).await;
        log.push(pushed(&mut me).await);
        // A RESP3 target that goes back to RESP2 and subscribes.
        let mut back = AsyncRawClient::connect(addr).await;
        assert!(back.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        let back_id = id_of(&mut back).await.to_string();
        track_to(&mut t, &back_id, &mut log).await;
        assert!(back.cmd(&[b"HELLO", b"2"]).await.starts_with(b"*14\r\n"));
        log.push(text(&back.cmd(&[b"SUBSCRIBE", b"news"]).await));
        w.cmd(&[b"SET", b"foo", b"3"]).await;
        log.push(pushed(&mut back).await);
        // A RESP3 tracking client whose RESP2 target (never subscribed) leaves.
        let mut t3 = AsyncRawClient::connect(addr).await;
        assert!(t3.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        let mut gone = AsyncRawClient::connect(addr).await;
        let gone_id = id_of(&mut gone).await.to_string();
        track_to(&mut t3, &gone_id, &mut log).await;
        let connections = |list: String| list.lines().count();
        let mut direct = AsyncRawClient::connect(redis_addr).await;
        let before = connections(text(&direct.cmd(&[b"CLIENT", b"LIST"]).await));
        drop(gone);
        let deadline = Instant::now() + Duration::from_secs(5);
        until_client_list(&mut direct, deadline, |l| connections(l) < before).await;
        w.cmd(&[b"SET", b"foo", b"4"]).await;
        let gone_reply = format!(":{gone_id}\r\n");
        log.push(pushed(&mut t3).await.replace(&gone_reply, ":<gone>\r\n"));
        // A flush seen by a RESP3 tracking client: Redis writes that client's
        // null (`_`) to the RESP2 target as it is (a RESP2 one's is `$-1`, above).
        let mut target3 = AsyncRawClient::connect(addr).await;
        let target3_id = id_of(&mut target3).await.to_string();
        let mut t4 = AsyncRawClient::connect(addr).await;
        assert!(t4.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        track_to(&mut t4, &target3_id, &mut log).await;
        log.push(text(&target3.cmd(&[b"SUBSCRIBE", b"news"]).await));
        log.push(text(&t4.cmd(&[b"GET", b"foo"]).await));
        w.cmd(&[b"FLUSHALL"]).await;
        log.push(pushed(&mut target3).await);
        log
    })
    .await;
    proxy.shutdown().await;
}

/// A redirect target whose stand-in connection to Redis is lost is closed, as a
/// target Redis itself disconnects, and the tracking client is told that its
/// redirect is broken: on Redis the target is killed, through the proxy the push
/// connection opened for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_target_whose_connection_is_lost_is_closed() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let redis_addr = redis.addr();
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut target = AsyncRawClient::connect(addr).await;
        let target_id = id_of(&mut target).await.to_string();
        let mut t = AsyncRawClient::connect(addr).await;
        assert!(t.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        track_to(&mut t, &target_id, &mut log).await;
        log.push(text(&target.cmd(&[b"SUBSCRIBE", b"news"]).await));
        let mut direct = AsyncRawClient::connect(redis_addr).await;
        let victim = if addr == redis_addr {
            target_id.clone()
        } else {
            let list = text(&direct.cmd(&[b"CLIENT", b"LIST"]).await);
            let line = list
                .lines()
                .find(|l| l.contains(" resp=3") && l.contains(" cmd=client|id "))
                .unwrap_or_else(|| panic!("no push connection in {list}"))
                .to_string();
            line["id=".len()..line.find(' ').unwrap_or(line.len())].to_string()
        };
        let killed = direct
            .cmd(&[b"CLIENT", b"KILL", b"ID", victim.as_bytes()])
            .await;
        assert_eq!(killed, b":1\r\n");
        target.set_timeout(Duration::from_secs(3));
        log.push(format!(
            "closed: {}",
            text(&target.read_until_closed().await)
        ));
        let mut w = AsyncRawClient::connect(addr).await;
        w.cmd(&[b"SET", b"foo", b"changed"]).await;
        let target_reply = format!(":{target_id}\r\n");
        log.push(pushed(&mut t).await.replace(&target_reply, ":<target>\r\n"));
        log
    })
    .await;
    proxy.shutdown().await;
}

/// redis-py 8.1.0's `test_client_tracking` (tests/test_commands.py), as the commands
/// it sends, in RESP2 and RESP3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_test_client_tracking_sequence() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    for proto in [&b"2"[..], b"3"] {
        same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
            let mut log = Vec::new();
            let mut r = AsyncRawClient::connect(addr).await;
            let mut r2 = AsyncRawClient::connect(addr).await;
            r.cmd(&[b"HELLO", proto]).await;
            r2.cmd(&[b"HELLO", proto]).await;
            // simple case
            log.push(text(&r.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await));
            log.push(text(&r.cmd(&[b"CLIENT", b"TRACKING", b"OFF"]).await));
            // id based
            let rid = id_of(&mut r).await.to_string();
            let id = rid.as_bytes();
            log.push(text(
                &r.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", id])
                    .await,
            ));
            log.push(text(
                &r.cmd(&[b"CLIENT", b"TRACKING", b"OFF", b"REDIRECT", id])
                    .await,
            ));
            // id exists
            let r2id = id_of(&mut r2).await.to_string();
            let id2 = r2id.as_bytes();
            log.push(text(
                &r.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", id2])
                    .await,
            ));
            log.push(text(
                &r2.cmd(&[b"CLIENT", b"TRACKING", b"OFF", b"REDIRECT", id2])
                    .await,
            ));
            // (prefixes without BCAST are refused by redis-py itself.)
            let redir = text(&r.cmd(&[b"CLIENT", b"GETREDIR"]).await);
            assert_eq!(redir, format!(":{r2id}\r\n"));
            // An id that does not exist, and malformed requests: Redis's errors.
            for args in [
                &[&b"CLIENT"[..], b"TRACKING", b"ON", b"REDIRECT", b"99999"][..],
                &[b"CLIENT", b"TRACKING", b"OFF", b"REDIRECT", b"99999"],
                &[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", b"abc"],
                &[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", b"0"],
                &[
                    b"CLIENT",
                    b"TRACKING",
                    b"ON",
                    b"BOGUS",
                    b"REDIRECT",
                    b"99999",
                ],
                &[
                    b"CLIENT",
                    b"TRACKING",
                    b"ON",
                    b"REDIRECT",
                    id2,
                    b"REDIRECT",
                    id2,
                ],
                &[b"CLIENT", b"TRACKING", b"MAYBE"],
                &[b"CLIENT", b"TRACKING"],
            ] {
                log.push(text(&r.cmd(args).await));
            }
            // Still redirecting to r2 after the refusals.
            let r2_reply = format!(":{r2id}\r\n");
            log.push(
                text(&r.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await).replace(&r2_reply, ":<r2>\r\n"),
            );
            log
        })
        .await;
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_survives_hello_and_pushes_survive_client_reply_off() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut c = AsyncRawClient::connect(addr).await;
        let mut w = AsyncRawClient::connect(addr).await;
        // Tracking on in RESP2, then HELLO 3: what Redis tracks is kept.
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await));
        log.push(text(&c.cmd(&[b"GET", b"k"]).await));
        assert!(c.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        w.cmd(&[b"SET", b"k", b"1"]).await;
        log.push(pushed(&mut c).await);
        // CLIENT REPLY OFF drops replies, not invalidations.
        log.push(text(&c.cmd(&[b"GET", b"k"]).await));
        c.send(&resp_cmd(&[b"CLIENT", b"REPLY", b"OFF"])).await;
        c.send(&resp_cmd(&[b"SET", b"k", b"mine"])).await;
        log.push(pushed(&mut c).await);
        log.push(text(&c.cmd(&[b"CLIENT", b"REPLY", b"ON"]).await));
        log.push(text(&c.cmd(&[b"GET", b"k"]).await));
        log
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_off_returns_to_shared_connections_and_a_lost_tracking_connection_closes_the_client(
) {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    // The tracking connection, as Redis lists it (polled: connections come and go
    // a moment after the proxy's sessions change).
    async fn tracking_conns(direct: &mut AsyncRawClient, want: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let list = text(&direct.cmd(&[b"CLIENT", b"LIST"]).await);
            let ids: Vec<String> = list
                .lines()
                .filter(|l| l.contains(" flags=t "))
                .filter_map(|l| l.strip_prefix("id=")?.split(' ').next().map(str::to_string))
                .collect();
            if ids.len() == want {
                return ids;
            }
            assert!(Instant::now() < deadline, "{list}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await, b"+OK\r\n");
    tracking_conns(&mut direct, 1).await;
    assert_eq!(c.cmd(&[b"CLIENT", b"TRACKING", b"OFF"]).await, b"+OK\r\n");
    tracking_conns(&mut direct, 0).await;
    assert_eq!(c.cmd(&[b"CLIENT", b"GETREDIR"]).await, b":-1\r\n");
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");

    // In a transaction: refused, as a command Redis refuses while queueing (the
    // transaction stays open; EXEC discards it).
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    let refused = text(&c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await);
    assert!(
        refused.starts_with("-ERR CLIENT TRACKING inside a transaction"),
        "{refused}"
    );
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, b"+QUEUED\r\n");
    let r = text(&c.cmd(&[b"EXEC"]).await);
    assert!(r.starts_with("-EXECABORT"), "{r}");

    // RESET turns tracking off, as on Redis.
    assert_eq!(c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"RESET"]).await, b"+RESET\r\n");
    tracking_conns(&mut direct, 0).await;
    // The session knows it too (found by Redis's own suite: after RESET, AUTH was
    // refused "while CLIENT TRACKING is on" and CLIENT INFO showed flags=t).
    let info = text(&c.cmd(&[b"CLIENT", b"INFO"]).await);
    assert!(info.contains(" flags=N "), "{info}");

    // Transactions and blocking commands run on the tracking connection.
    assert_eq!(c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await, b"+OK\r\n");
    let ids = tracking_conns(&mut direct, 1).await;
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*1\r\n$1\r\nv\r\n");
    assert_eq!(c.cmd(&[b"BLPOP", b"nolist", b"0.01"]).await, b"*-1\r\n");
    assert_eq!(tracking_conns(&mut direct, 1).await, ids);

    // Its tracking connection is killed: the client's connection closes (its
    // cache could never be invalidated again).
    let killed = direct
        .cmd(&[b"CLIENT", b"KILL", b"ID", ids[0].as_bytes()])
        .await;
    assert_eq!(killed, b":1\r\n");
    assert!(c.read_until_closed().await.is_empty());
    let mut fresh = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(fresh.cmd(&[b"GET", b"k"]).await, b"$1\r\nv\r\n");
    proxy.shutdown().await;
}

/// Redis keeps the keys it tracked for a client after `CLIENT TRACKING OFF` (a key
/// leaves its table only when written), and once tracking is on again it reports
/// a write of any of them, whatever the database. Found by the multi-session tool
/// (seed 9246): the proxy closed the tracking connection at OFF and opened a new
/// one at ON, so those invalidations never came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_turned_on_again_reports_keys_read_before_it_was_turned_off() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut c = resp3_tracking(addr, &[], &mut log).await;
        let mut w = AsyncRawClient::connect(addr).await;
        for key in [&b"k1"[..], b"k2", b"k3", b"k4"] {
            log.push(text(&c.cmd(&[b"GET", key]).await));
        }
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKING", b"OFF"]).await));
        // Written while tracking is off: no message, and the key leaves the table
        // (a key of that name in any database, by any client).
        log.push(text(&w.cmd(&[b"SET", b"k2", b"x"]).await));
        log.push(text(&c.cmd(&[b"SELECT", b"1"]).await));
        log.push(text(&c.cmd(&[b"SET", b"k3", b"in db 1"]).await));
        c.assert_no_reply(Duration::from_millis(100)).await;
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await));
        // Keys read before OFF, written in db 0 by another client.
        log.push(text(&w.cmd(&[b"SET", b"k1", b"x"]).await));
        log.push(pushed(&mut c).await);
        log.push(text(&w.cmd(&[b"SET", b"k2", b"y"]).await));
        log.push(text(&w.cmd(&[b"SET", b"k3", b"y"]).await));
        log.push(text(&w.cmd(&[b"SET", b"k4", b"y"]).await));
        log.push(pushed(&mut c).await);
        log.push(text(&c.cmd(&[b"PING"]).await));
        // Reported once: the table forgot them.
        log.push(text(&w.cmd(&[b"SET", b"k1", b"z"]).await));
        log.push(text(&c.cmd(&[b"GET", b"k4"]).await));
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKING", b"OFF"]).await));
        // A RESP2 client now, with a redirect to a subscriber of the channel.
        // (Its numbers masked: the id, the version.)
        let hello = text(&c.cmd(&[b"HELLO", b"2"]).await);
        let mut masked = String::new();
        for ch in hello.chars() {
            if !ch.is_ascii_digit() {
                masked.push(ch);
            } else if !masked.ends_with('N') {
                masked.push('N');
            }
        }
        log.push(masked);
        let mut s = AsyncRawClient::connect(addr).await;
        let sid = id_of(&mut s).await.to_string();
        log.push(text(&s.cmd(&[b"SUBSCRIBE", b"__redis__:invalidate"]).await));
        let on = [
            &b"CLIENT"[..],
            b"TRACKING",
            b"ON",
            b"REDIRECT",
            sid.as_bytes(),
        ];
        log.push(text(&c.cmd(&on).await));
        log.push(text(&w.cmd(&[b"SET", b"k4", b"read in db 1"]).await));
        log.push(pushed(&mut s).await);
        c.assert_no_reply(Duration::from_millis(100)).await;
        log.push(text(&c.cmd(&[b"PING"]).await));
        log
    })
    .await;

    // The kept connection is lost while tracking is off: tracking comes back
    // on a new one, tracking what is read from then on.
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut w = AsyncRawClient::connect(proxy.local_addr()).await;
    assert!(c.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
    assert_eq!(c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await, b"+OK\r\n");
    let list = text(&direct.cmd(&[b"CLIENT", b"LIST"]).await);
    let tracking: Vec<&str> = list
        .lines()
        .filter(|l| l.contains(" flags=t "))
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next())
        .collect();
    assert_eq!(tracking.len(), 1, "{list}");
    assert_eq!(c.cmd(&[b"CLIENT", b"TRACKING", b"OFF"]).await, b"+OK\r\n");
    let killed = direct
        .cmd(&[b"CLIENT", b"KILL", b"ID", tracking[0].as_bytes()])
        .await;
    assert_eq!(killed, b":1\r\n", "the connection is kept after OFF");
    // (Tracking is off: the client is not told.)
    c.assert_no_reply(Duration::from_millis(200)).await;
    assert_eq!(c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k9"]).await, b"_\r\n");
    assert_eq!(w.cmd(&[b"SET", b"k9", b"v"]).await, b"+OK\r\n");
    assert_eq!(
        pushed(&mut c).await,
        ">2\r\n$10\r\ninvalidate\r\n*1\r\n$2\r\nk9\r\n"
    );
    proxy.shutdown().await;
}

/// The same wherever tracking was turned off: on a RESP3 subscriber's
/// connection (tracking turned on before or after subscribing; turned on again
/// unsubscribed, or after subscribing again; turned off before subscribing),
/// by `RESET`, under a `WATCH`, and
/// after Redis refused the `CLIENT TRACKING ON`. Steps: `a:`/`b:` a command of
/// client `a` (RESP3) or `b` and its reply; `a<` a push `a` gets unasked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_turned_off_anywhere_reports_keys_read_before_once_on_again() {
    const SCENARIOS: &[&str] = &[
        // Tracking turned on, then subscribed (the same connection).
        "a:CLIENT TRACKING ON|a:GET k|a:SUBSCRIBE ch|a:UNSUBSCRIBE ch|a:CLIENT TRACKING OFF\
         |a:CLIENT TRACKING ON|b:SET k 1|a<|a:PING",
        // Subscribed, then tracking; on again in another database.
        "a:SUBSCRIBE ch|a:CLIENT TRACKING ON|a:GET k|a:CLIENT TRACKING OFF|a:UNSUBSCRIBE ch\
         |a:SELECT 2|a:CLIENT TRACKING ON|a:SET x 1|b:SET k 1|a<|b:SELECT 2|b:GET x|a:PING",
        // Subscribed again before tracking is on again.
        "a:CLIENT TRACKING ON|a:GET k|a:SUBSCRIBE ch|a:UNSUBSCRIBE ch|a:CLIENT TRACKING OFF\
         |a:SUBSCRIBE ch2|a:CLIENT TRACKING ON|b:SET k 1|a<|b:PUBLISH ch2 m|a<\
         |a:UNSUBSCRIBE|a:PING",
        // Tracking off, then subscribed: on again while subscribed, or after.
        "a:CLIENT TRACKING ON|a:GET k|a:CLIENT TRACKING OFF|a:SUBSCRIBE ch\
         |a:CLIENT TRACKING ON|b:SET k 1|a<|a:PING",
        "a:CLIENT TRACKING ON|a:GET k|a:CLIENT TRACKING OFF|a:SUBSCRIBE ch|b:SET k 1\
         |a:UNSUBSCRIBE ch|a:CLIENT TRACKING ON|b:SET k 2|a:PING",
        "a:CLIENT TRACKING ON|a:GET k|a:RESET|a:HELLO 3|a:CLIENT TRACKING ON|b:SET k 1|a<|a:PING",
        "a:CLIENT TRACKING ON|a:GET k|a:WATCH x|a:CLIENT TRACKING OFF|a:UNWATCH\
         |a:CLIENT TRACKING ON|b:SET k 1|a<|a:PING",
        // Redis refuses the ON: tracking stays off (CLIENT INFO's flags too).
        "a:CLIENT TRACKING ON|a:GET k|a:SUBSCRIBE ch|a:UNSUBSCRIBE ch|a:CLIENT TRACKING OFF\
         |a:CLIENT TRACKING ON REDIRECT 999999|a:CLIENT INFO|a:CLIENT TRACKING ON|b:SET k 2\
         |a<|a:PING",
    ];
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    for steps in SCENARIOS {
        same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
            let mut log = Vec::new();
            let mut a = AsyncRawClient::connect(addr).await;
            assert!(a.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
            let mut b = AsyncRawClient::connect(addr).await;
            for step in steps.split('|') {
                let (who, command) = step.split_at(2);
                let args: Vec<&[u8]> = command.split(' ').map(str::as_bytes).collect();
                let got = match who {
                    "a<" => pushed(&mut a).await,
                    "a:" => text(&a.cmd(&args).await),
                    _ => text(&b.cmd(&args).await),
                };
                // (Only what is the same on every connection: flags, redirect.)
                let got = match command {
                    "HELLO 3" => got.starts_with("%7").to_string(),
                    "CLIENT INFO" => flags_and_redir(got.as_bytes()),
                    _ => got,
                };
                log.push(format!("{step} -> {got}"));
            }
            log
        })
        .await;
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_needs_authentication_and_a_blocked_tracking_client_can_be_unblocked() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.client_password = Some(redis_sidecar::config::Secret("pw".into()));
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    for args in [
        &[&b"CLIENT"[..], b"TRACKING", b"ON"][..],
        &[b"CLIENT", b"TRACKING", b"OFF"],
        &[b"CLIENT", b"GETREDIR"],
    ] {
        assert_eq!(
            text(&c.cmd(args).await),
            "-NOAUTH Authentication required.\r\n",
            "{args:?}"
        );
    }
    assert_eq!(c.cmd(&[b"AUTH", b"pw"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await, b"+OK\r\n");
    // CLIENT UNBLOCK reaches a tracking session blocked on its own connection.
    let id = id_of(&mut c).await.to_string();
    let mut other = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(other.cmd(&[b"AUTH", b"pw"]).await, b"+OK\r\n");
    c.send(&resp_cmd(&[b"BLPOP", b"q", b"0"])).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = other.cmd(&[b"CLIENT", b"UNBLOCK", id.as_bytes()]).await;
        if got == b":1\r\n" {
            break;
        }
        assert_eq!(got, b":0\r\n");
        assert!(Instant::now() < deadline, "never unblocked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.read_reply().await, b"*-1\r\n");
    assert_eq!(c.cmd(&[b"CLIENT", b"GETREDIR"]).await, b":0\r\n");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_in_user_tracks_on_its_own_connection() {
    let redis = RedisServer::start();
    let (out, _) = support::redis_cli(
        redis.port(),
        &["ACL", "SETUSER", "alice", "on", ">pw", "~*", "&*", "+@all"],
    );
    assert!(out.contains("OK"), "{out}");
    let mut config = proxy_config(&redis);
    config.auth_passthrough = true;
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert!(c
        .cmd(&[b"HELLO", b"3", b"AUTH", b"alice", b"pw"])
        .await
        .starts_with(b"%7"));
    assert_eq!(c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"ACL", b"WHOAMI"]).await, b"$5\r\nalice\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, b"_\r\n");
    let mut w = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(w.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(
        pushed(&mut c).await,
        ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
    );
    // Logging in again runs on the tracking connection, as on Redis: tracking
    // is kept (it used to be refused).
    assert_eq!(c.cmd(&[b"AUTH", b"alice", b"pw"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, b"$1\r\nv\r\n");
    assert_eq!(w.cmd(&[b"SET", b"k", b"v2"]).await, b"+OK\r\n");
    assert_eq!(
        pushed(&mut c).await,
        ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
    );
    // Tracking off: still alice, on the same connection.
    assert_eq!(c.cmd(&[b"CLIENT", b"TRACKING", b"OFF"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"ACL", b"WHOAMI"]).await, b"$5\r\nalice\r\n");
    assert_eq!(c.cmd(&[b"AUTH", b"alice", b"pw"]).await, b"+OK\r\n");
    proxy.shutdown().await;
}

/// A RESP3 client that subscribes, then turns tracking on (on its subscriber
/// connection, as on Redis), then unsubscribes from everything: Redis keeps
/// tracking on that connection, so the client keeps getting invalidations and
/// the tracking queries still say `on`. (The proxy used to close the subscriber
/// connection at the last unsubscribe, and the tracking with it, unseen.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_turned_on_while_subscribed_outlives_the_subscriptions() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut c = AsyncRawClient::connect(addr).await;
        let mut w = AsyncRawClient::connect(addr).await;
        assert!(c.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        log.push(text(&c.cmd(&[b"SSUBSCRIBE", b"ch"]).await));
        log.push(text(
            &c.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"OPTIN"]).await,
        ));
        log.push(flags_and_redir(&c.cmd(&[b"CLIENT", b"INFO"]).await));
        log.push(text(&c.cmd(&[b"SUNSUBSCRIBE"]).await));
        log.push(flags_and_redir(&c.cmd(&[b"CLIENT", b"INFO"]).await));
        log.push(text(&c.cmd(&[b"CLIENT", b"CACHING", b"YES"]).await));
        log.push(text(&c.cmd(&[b"GET", b"k"]).await));
        log.push(text(&w.cmd(&[b"SET", b"k", b"1"]).await));
        log.push(pushed(&mut c).await);
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await));
        // A different mode while tracking is on: Redis's refusal.
        log.push(text(
            &c.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST"]).await,
        ));
        // Subscribed again and left again: still tracking.
        log.push(text(&c.cmd(&[b"SUBSCRIBE", b"ch2"]).await));
        log.push(text(&c.cmd(&[b"UNSUBSCRIBE"]).await));
        log.push(text(&c.cmd(&[b"CLIENT", b"CACHING", b"YES"]).await));
        log.push(text(&c.cmd(&[b"GET", b"k"]).await));
        w.cmd(&[b"SET", b"k", b"2"]).await;
        log.push(pushed(&mut c).await);
        // Off: nothing more is pushed.
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKING", b"OFF"]).await));
        log.push(text(&c.cmd(&[b"GET", b"k"]).await));
        w.cmd(&[b"SET", b"k", b"3"]).await;
        c.assert_no_reply(Duration::from_millis(200)).await;
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await));
        log
    })
    .await;
    proxy.shutdown().await;
}

/// A RESP3 client that turns tracking on, then subscribes: on Redis it is one
/// connection, so what it reads while subscribed is tracked, `CLIENT CACHING`
/// and `TRACKINGINFO` answer as for a tracking client, `NOLOOP` skips its own
/// writes while subscribed, and after the last unsubscribe it still tracks.
/// (Until session 35 the proxy subscribed on a connection of its own beside the
/// tracking one: reads there went untracked, `CLIENT CACHING` was refused, and
/// its own writes came back as invalidations.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_then_subscribing_stays_on_one_connection() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut c = AsyncRawClient::connect(addr).await;
        let mut w = AsyncRawClient::connect(addr).await;
        assert!(c.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        log.push(text(
            &c.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"OPTIN", b"NOLOOP"])
                .await,
        ));
        log.push(text(&c.cmd(&[b"CLIENT", b"CACHING", b"YES"]).await));
        log.push(text(&c.cmd(&[b"GET", b"a"]).await));
        log.push(text(&c.cmd(&[b"SUBSCRIBE", b"ch"]).await));
        // Read while subscribed: tracked.
        log.push(text(&c.cmd(&[b"CLIENT", b"CACHING", b"YES"]).await));
        log.push(text(&c.cmd(&[b"GET", b"b"]).await));
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await));
        log.push(flags_and_redir(&c.cmd(&[b"CLIENT", b"INFO"]).await));
        log.push(text(&w.cmd(&[b"SET", b"b", b"1"]).await));
        log.push(pushed(&mut c).await);
        // Read before subscribing: still tracked.
        log.push(text(&w.cmd(&[b"SET", b"a", b"1"]).await));
        log.push(pushed(&mut c).await);
        log.push(text(&w.cmd(&[b"PUBLISH", b"ch", b"m"]).await));
        log.push(pushed(&mut c).await);
        // NOLOOP: its own write of a key it reads is not sent back.
        log.push(text(&c.cmd(&[b"CLIENT", b"CACHING", b"YES"]).await));
        log.push(text(&c.cmd(&[b"GET", b"own"]).await));
        log.push(text(&c.cmd(&[b"SET", b"own", b"1"]).await));
        log.push(text(&c.cmd(&[b"PING"]).await));
        // A different mode while tracking is on: Redis's refusal.
        log.push(text(
            &c.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST"]).await,
        ));
        // Unsubscribed: still tracking.
        log.push(text(&c.cmd(&[b"UNSUBSCRIBE"]).await));
        log.push(flags_and_redir(&c.cmd(&[b"CLIENT", b"INFO"]).await));
        log.push(text(&c.cmd(&[b"CLIENT", b"CACHING", b"YES"]).await));
        log.push(text(&c.cmd(&[b"GET", b"b"]).await));
        w.cmd(&[b"SET", b"b", b"2"]).await;
        log.push(pushed(&mut c).await);
        // Off: nothing more is pushed.
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKING", b"OFF"]).await));
        log.push(text(&c.cmd(&[b"GET", b"b"]).await));
        w.cmd(&[b"SET", b"b", b"3"]).await;
        c.assert_no_reply(Duration::from_millis(200)).await;
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await));
        log.push(flags_and_redir(&c.cmd(&[b"CLIENT", b"INFO"]).await));
        log
    })
    .await;
    // BCAST, subscribed: CLIENT INFO's flags say so.
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut c = AsyncRawClient::connect(addr).await;
        assert!(c.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        c.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST"]).await;
        c.cmd(&[b"SUBSCRIBE", b"ch"]).await;
        let mut log = vec![flags_and_redir(&c.cmd(&[b"CLIENT", b"INFO"]).await)];
        c.cmd(&[b"UNSUBSCRIBE"]).await;
        log.push(flags_and_redir(&c.cmd(&[b"CLIENT", b"INFO"]).await));
        log
    })
    .await;
    // A WATCH on the tracking connection holds across the SUBSCRIBE: the
    // transaction after it sees the other client's write.
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut c = AsyncRawClient::connect(addr).await;
        let mut w = AsyncRawClient::connect(addr).await;
        assert!(c.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await));
        log.push(text(&c.cmd(&[b"WATCH", b"k"]).await));
        log.push(text(&c.cmd(&[b"SUBSCRIBE", b"ch"]).await));
        log.push(text(&w.cmd(&[b"SET", b"k", b"1"]).await));
        log.push(text(&c.cmd(&[b"MULTI"]).await));
        log.push(text(&c.cmd(&[b"SET", b"k", b"2"]).await));
        log.push(text(&c.cmd(&[b"EXEC"]).await));
        log.push(text(&c.cmd(&[b"GET", b"k"]).await));
        log
    })
    .await;
    proxy.shutdown().await;
}

/// A RESP3 subscriber's `REDIRECT`s name proxy sessions, as they do for any
/// client: a tracking client with a redirect that subscribes keeps it (on the
/// connection that becomes its subscriber connection), a subscriber may turn
/// tracking on with a redirect or change it, and `GETREDIR`, `TRACKINGINFO`,
/// `CLIENT INFO` and `tracking-redir-broken` name the session it gave. (Until
/// session 35 the id went to Redis untranslated while subscribed: `The client
/// ID you want redirect to does not exist`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribers_redirects_name_proxy_sessions() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let redis_addr = redis.addr();
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut b = resp3_tracking(addr, &[b"BCAST", b"PREFIX", b"b:"], &mut log).await;
        let bid = id_of(&mut b).await.to_string();
        let mut c = resp3_tracking(addr, &[b"BCAST", b"PREFIX", b"c:"], &mut log).await;
        let cid = id_of(&mut c).await.to_string();
        let masked = |s: String| {
            s.replace(&format!(":{bid}\r\n"), ":<b>\r\n")
                .replace(&format!(":{cid}\r\n"), ":<c>\r\n")
                .replace(&format!("redir={bid}"), "redir=<b>")
        };
        let mut w = AsyncRawClient::connect(addr).await;
        let mut a = AsyncRawClient::connect(addr).await;
        assert!(a.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        log.push(text(
            &a.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", bid.as_bytes()])
                .await,
        ));
        log.push(text(&a.cmd(&[b"SUBSCRIBE", b"ch"]).await));
        log.push(masked(text(&a.cmd(&[b"CLIENT", b"GETREDIR"]).await)));
        log.push(masked(text(&a.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await)));
        log.push(masked(flags_and_redir(&a.cmd(&[b"CLIENT", b"INFO"]).await)));
        // Read while subscribed: its invalidation goes to b.
        log.push(text(&a.cmd(&[b"GET", b"k"]).await));
        w.cmd(&[b"SET", b"k", b"1"]).await;
        log.push(pushed(&mut b).await);
        // Redirected to c from here; c goes away: Redis tells a, naming c.
        log.push(text(
            &a.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", cid.as_bytes()])
                .await,
        ));
        log.push(masked(text(&a.cmd(&[b"CLIENT", b"GETREDIR"]).await)));
        log.push(text(&a.cmd(&[b"GET", b"k"]).await));
        drop(c);
        let mut direct = AsyncRawClient::connect(redis_addr).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        // (b's tracking connection stays.)
        until_client_list(&mut direct, deadline, |l| {
            l.matches(" flags=tB ").count() == 1
        })
        .await;
        w.cmd(&[b"SET", b"k", b"2"]).await;
        log.push(masked(pushed(&mut a).await));
        // Off, and out of pub/sub.
        log.push(text(&a.cmd(&[b"CLIENT", b"TRACKING", b"OFF"]).await));
        log.push(text(&a.cmd(&[b"CLIENT", b"GETREDIR"]).await));
        log.push(text(&a.cmd(&[b"UNSUBSCRIBE"]).await));
        log.push(flags_and_redir(&a.cmd(&[b"CLIENT", b"INFO"]).await));
        // Subscribed first, then tracking with a redirect.
        let mut d = AsyncRawClient::connect(addr).await;
        assert!(d.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        log.push(text(&d.cmd(&[b"SUBSCRIBE", b"ch"]).await));
        log.push(text(
            &d.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", bid.as_bytes()])
                .await,
        ));
        log.push(masked(text(&d.cmd(&[b"CLIENT", b"GETREDIR"]).await)));
        log.push(text(&d.cmd(&[b"GET", b"k2"]).await));
        w.cmd(&[b"SET", b"k2", b"1"]).await;
        log.push(pushed(&mut b).await);
        log
    })
    .await;
    proxy.shutdown().await;
}

/// `CLIENT TRACKING ON` under a `WATCH` (outside `MULTI`) is Redis's: the watching
/// connection, taken out of the pool, becomes the session's own and tracks there,
/// and the watch holds. (Until session 37 the proxy refused it, `CLIENT TRACKING
/// inside a transaction is not supported`, found by the multi-session tool, seed
/// 6766.) The pool gets a new connection in its place: with a pool of one, other
/// clients' transactions still run while the tracking client lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_turned_on_under_watch_tracks_on_the_watching_connection() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.databases[0].upstream.pool_size = 1;
    let proxy = start_proxy(config).await;
    // RESP3: the watch holds, and the key read after it is tracked.
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut c = AsyncRawClient::connect(addr).await;
        let mut w = AsyncRawClient::connect(addr).await;
        assert!(c.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        log.push(text(&c.cmd(&[b"WATCH", b"k"]).await));
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await));
        log.push(text(&c.cmd(&[b"GET", b"k"]).await));
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await));
        log.push(text(&w.cmd(&[b"SET", b"k", b"1"]).await));
        log.push(pushed(&mut c).await);
        log.push(text(&c.cmd(&[b"MULTI"]).await));
        log.push(text(&c.cmd(&[b"SET", b"k", b"2"]).await));
        log.push(text(&c.cmd(&[b"EXEC"]).await));
        // Tracking goes on after the transaction.
        log.push(text(&c.cmd(&[b"GET", b"k"]).await));
        log.push(text(&w.cmd(&[b"SET", b"k", b"3"]).await));
        log.push(pushed(&mut c).await);
        log
    })
    .await;
    // RESP2, pipelined in one write; then tracking off under a new watch, which
    // still holds.
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut c = AsyncRawClient::connect(addr).await;
        let mut w = AsyncRawClient::connect(addr).await;
        let mut batch = resp_cmd(&[b"WATCH", b"k"]);
        batch.extend(resp_cmd(&[b"CLIENT", b"TRACKING", b"ON"]));
        batch.extend(resp_cmd(&[b"GET", b"k"]));
        batch.extend(resp_cmd(&[b"CLIENT", b"TRACKINGINFO"]));
        c.send(&batch).await;
        for _ in 0..4 {
            log.push(text(&c.read_reply().await));
        }
        log.push(text(&c.cmd(&[b"UNWATCH"]).await));
        log.push(text(&c.cmd(&[b"WATCH", b"j"]).await));
        log.push(text(&c.cmd(&[b"CLIENT", b"TRACKING", b"OFF"]).await));
        log.push(text(&w.cmd(&[b"SET", b"j", b"1"]).await));
        log.push(text(&c.cmd(&[b"MULTI"]).await));
        log.push(text(&c.cmd(&[b"SET", b"j", b"2"]).await));
        log.push(text(&c.cmd(&[b"EXEC"]).await));
        log.push(text(&c.cmd(&[b"GET", b"j"]).await));
        log
    })
    .await;
    // Two clients tracking on connections that left the pool of one; a third
    // client's transaction gets the pool's new connection.
    let addr = proxy.local_addr();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = AsyncRawClient::connect(addr).await;
        assert_eq!(c.cmd(&[b"WATCH", b"k"]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await, b"+OK\r\n");
        held.push(c);
    }
    let mut t = AsyncRawClient::connect(addr).await;
    assert_eq!(t.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(t.cmd(&[b"INCR", b"n"]).await, b"+QUEUED\r\n");
    assert_eq!(t.cmd(&[b"EXEC"]).await, b"*1\r\n:1\r\n");
    for c in &mut held {
        assert_eq!(c.cmd(&[b"GET", b"n"]).await, b"$1\r\n1\r\n");
    }
    proxy.shutdown().await;
}

/// A redirect names a client for as long as it is connected, whatever becomes of
/// the connection it had when it was named: a RESP2 target that unsubscribes
/// (its last `UNSUBSCRIBE`, or `RESET`) and subscribes again, a RESP3 target
/// that unsubscribes, and a RESP3 target that stops tracking, keep receiving what
/// Redis sends them, and the redirecting client's redirect is never broken.
/// (Through the proxy the connection the target had when it was named is its
/// own, let go when it unsubscribed or stopped tracking: `CLIENT TRACKINGINFO`
/// then showed `broken_redirect`. Found by the multi-session tool, seed 7935.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_target_keeps_its_id_after_it_lets_go_of_its_connection() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let redis_addr = redis.addr();
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut w = AsyncRawClient::connect(addr).await;
        // RESP2, subscribed when named; then RESET, then subscribed again.
        let mut r2 = AsyncRawClient::connect(addr).await;
        let r2id = id_of(&mut r2).await.to_string();
        log.push(text(&r2.cmd(&[b"SUBSCRIBE", b"ch1"]).await));
        let mut t = AsyncRawClient::connect(addr).await;
        track_to(&mut t, &r2id, &mut log).await;
        log.push(text(&r2.cmd(&[b"RESET"]).await));
        w.cmd(&[b"SET", b"foo", b"1"]).await;
        let tracking_info = [&b"CLIENT"[..], b"TRACKINGINFO"];
        let masked = |s: String, id: &str| s.replace(&format!(":{id}\r\n"), ":<id>\r\n");
        log.push(masked(text(&t.cmd(&tracking_info).await), &r2id));
        r2.assert_no_reply(Duration::from_millis(200)).await;
        log.push(text(&r2.cmd(&[b"SUBSCRIBE", b"ch2"]).await));
        log.push(text(&t.cmd(&[b"GET", b"foo"]).await));
        w.cmd(&[b"SET", b"foo", b"2"]).await;
        log.push(pushed(&mut r2).await);
        // The same with the last UNSUBSCRIBE.
        log.push(text(&r2.cmd(&[b"UNSUBSCRIBE"]).await));
        log.push(text(&t.cmd(&[b"GET", b"foo"]).await));
        w.cmd(&[b"SET", b"foo", b"3"]).await;
        log.push(masked(text(&t.cmd(&tracking_info).await), &r2id));
        log.push(text(&r2.cmd(&[b"PING"]).await));
        log.push(text(&r2.cmd(&[b"PSUBSCRIBE", b"p*"]).await));
        log.push(text(&t.cmd(&[b"GET", b"foo"]).await));
        w.cmd(&[b"SET", b"foo", b"4"]).await;
        log.push(pushed(&mut r2).await);
        // RESP3, subscribed when named, then unsubscribed.
        let mut r3 = AsyncRawClient::connect(addr).await;
        assert!(r3.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        let r3id = id_of(&mut r3).await.to_string();
        log.push(text(&r3.cmd(&[b"SUBSCRIBE", b"ch1"]).await));
        track_to(&mut t, &r3id, &mut log).await;
        log.push(text(&r3.cmd(&[b"UNSUBSCRIBE"]).await));
        w.cmd(&[b"SET", b"foo", b"5"]).await;
        log.push(pushed(&mut r3).await);
        log.push(masked(text(&t.cmd(&tracking_info).await), &r3id));
        // RESP3, tracking when named, then not.
        let mut own = resp3_tracking(addr, &[], &mut log).await;
        let own_id = id_of(&mut own).await.to_string();
        track_to(&mut t, &own_id, &mut log).await;
        log.push(text(&own.cmd(&[b"CLIENT", b"TRACKING", b"OFF"]).await));
        w.cmd(&[b"SET", b"foo", b"6"]).await;
        log.push(pushed(&mut own).await);
        log.push(text(&t.cmd(&[b"GET", b"foo"]).await));
        log.push(text(&own.cmd(&[b"RESET"]).await));
        assert!(own.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        w.cmd(&[b"SET", b"foo", b"7"]).await;
        log.push(pushed(&mut own).await);
        log.push(masked(text(&t.cmd(&tracking_info).await), &own_id));
        // Tracking when named, back to RESP2, then not tracking, then
        // subscribed: Redis sends it the invalidations as messages.
        let mut back = resp3_tracking(addr, &[], &mut log).await;
        let back_id = id_of(&mut back).await.to_string();
        track_to(&mut t, &back_id, &mut log).await;
        assert!(back.cmd(&[b"HELLO", b"2"]).await.starts_with(b"*14\r\n"));
        log.push(text(&back.cmd(&[b"CLIENT", b"TRACKING", b"OFF"]).await));
        log.push(text(&back.cmd(&[b"SUBSCRIBE", b"ch1"]).await));
        w.cmd(&[b"SET", b"foo", b"9"]).await;
        log.push(pushed(&mut back).await);
        // RESET inside MULTI: its own tracking ends (its read of `bar` no longer
        // invalidated), the redirected one goes on.
        let mut in_multi = resp3_tracking(addr, &[], &mut log).await;
        let in_multi_id = id_of(&mut in_multi).await.to_string();
        track_to(&mut t, &in_multi_id, &mut log).await;
        log.push(text(&in_multi.cmd(&[b"GET", b"bar"]).await));
        log.push(text(&in_multi.cmd(&[b"MULTI"]).await));
        log.push(text(&in_multi.cmd(&[b"RESET"]).await));
        assert!(in_multi.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        w.cmd(&[b"SET", b"bar", b"1"]).await;
        w.cmd(&[b"SET", b"foo", b"8"]).await;
        log.push(pushed(&mut in_multi).await);
        log.push(text(&in_multi.cmd(&[b"PING"]).await));
        log.push(masked(text(&t.cmd(&tracking_info).await), &in_multi_id));
        // The connections kept for them (RESP3, last command their
        // setup's `HELLO 3`) close when they leave.
        // (Directly, `own`'s connection is one of them.)
        let set_up = |list: String| {
            list.lines()
                .filter(|l| l.contains(" resp=3") && l.contains(" cmd=hello"))
                .count()
        };
        let mut direct = AsyncRawClient::connect(redis_addr).await;
        assert!(set_up(text(&direct.cmd(&[b"CLIENT", b"LIST"]).await)) >= 1);
        drop((r2, r3, own, in_multi, back));
        let deadline = Instant::now() + Duration::from_secs(5);
        until_client_list(&mut direct, deadline, |list| set_up(list) == 0).await;
        log
    })
    .await;
    proxy.shutdown().await;
}

/// `FLUSHDB` then `RESET` (or `QUIT`) in one write from a RESP3 tracking client:
/// Redis writes the flush's invalidation between the two replies, and so does
/// the proxy. (Until session 38 the session let go of its tracking connection at
/// `RESET` without waiting for what Redis pushed there after `FLUSHDB`'s reply:
/// the invalidation was lost. Found by the multi-session tool, seed 8021.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_before_reset_or_quit_reach_the_client() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let bcast: &[&[u8]] = &[b"BCAST"];
        for (options, end) in [(&[][..], &b"RESET"[..]), (&[], b"QUIT"), (bcast, b"RESET")] {
            let mut c = resp3_tracking(addr, options, &mut log).await;
            log.push(text(&c.cmd(&[b"GET", b"k"]).await));
            let mut pipeline = resp_cmd(&[b"FLUSHDB"]);
            pipeline.extend(resp_cmd(&[end]));
            c.send(&pipeline).await;
            for _ in 0..3 {
                log.push(text(&c.read_reply().await));
            }
        }
        // A BCAST client's own write right before: Redis would send its
        // invalidation once it has run the whole read, RESET and QUIT too, so
        // it does not.
        for end in [&b"RESET"[..], b"QUIT"] {
            let mut c = resp3_tracking(addr, bcast, &mut log).await;
            let mut pipeline = resp_cmd(&[b"SET", b"k", b"1"]);
            pipeline.extend(resp_cmd(&[end]));
            c.send(&pipeline).await;
            for _ in 0..2 {
                log.push(text(&c.read_reply().await));
            }
            if end == b"RESET" {
                log.push(text(&c.cmd(&[b"PING"]).await));
            } else {
                log.push(text(&c.read_until_closed().await));
            }
        }
        log
    })
    .await;
    proxy.shutdown().await;
}

/// A push Redis writes right after a reply (a flush's invalidation after
/// `FLUSHDB`'s `+OK`) comes before what the proxy answers itself next (`CLIENT
/// SETNAME`, `CLIENT ID` …), as from Redis. (Until session 38 it could come a
/// reply later: it was read with the reply but handed on apart. Found by the
/// multi-session tool, seed 8428.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_right_after_a_reply_comes_before_the_next_local_answer() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let mut c = resp3_tracking(addr, &[], &mut log).await;
        for _ in 0..20 {
            log.push(text(&c.cmd(&[b"GET", b"k"]).await));
            let mut pipeline = resp_cmd(&[b"FLUSHDB"]);
            pipeline.extend(resp_cmd(&[b"CLIENT", b"SETNAME", b"n"]));
            pipeline.extend(resp_cmd(&[b"CLIENT", b"GETNAME"]));
            c.send(&pipeline).await;
            for _ in 0..4 {
                log.push(text(&c.read_reply().await));
            }
        }
        log
    })
    .await;
    proxy.shutdown().await;
}

/// Sends `pipeline` in one write and logs its `frames` frames (a `HELLO`
/// reply's connection id masked), then a `PING`'s reply: nothing else was
/// pending (an invalidation sent twice would be).
async fn log_pipeline(
    c: &mut AsyncRawClient,
    pipeline: &[u8],
    frames: usize,
    log: &mut Vec<String>,
) {
    c.send(pipeline).await;
    for _ in 0..frames {
        let t = text(&c.read_reply().await);
        log.push(match t.find("id\r\n:") {
            Some(at) => {
                let end = at + t[at..].find("\r\n$4").unwrap_or(t.len() - at);
                format!("{}id\r\n:ID{}", &t[..at], &t[end..])
            }
            None => t,
        });
    }
    log.push(text(&c.cmd(&[b"PING"]).await));
}

/// Requests written with their arguments separated by spaces, encoded.
fn spaced(requests: &[&[u8]]) -> Vec<u8> {
    requests
        .iter()
        .flat_map(|r| resp_cmd(&r.split(|&b| b == b' ').collect::<Vec<_>>()))
        .collect()
}

/// The keys a `BCAST` client's read wrote come in one invalidation per prefix of
/// the client's, keys in byte order, each once, as Redis builds them once it has
/// run the whole read (`trackingBroadcastInvalidationMessages`), also where the
/// proxy sends the read to Redis in several batches: a `SELECT` or `HELLO` waits
/// for the replies before it, `CLIENT REPLY OFF` ends a batch. Until session 47
/// each batch's invalidation came on its own. Prefixes add up over `CLIENT
/// TRACKING ON`s (one without a prefix adds `""`, so a key can be named twice,
/// in two pushes, as in the last case: multi-session tool, seed 9559).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bcast_clients_read_sent_in_batches_gets_one_invalidation_per_prefix() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        type Case<'a> = (&'a [&'a [&'a [u8]]], &'a [&'a [u8]], usize);
        let split: &[&[u8]] = &[
            b"SET b1 1",
            b"SET a1 1",
            b"SELECT 1",
            b"SET a0 2",
            b"SET c 1",
            b"SELECT 0",
        ];
        let cases: [Case; 6] = [
            (
                &[&[]],
                &[b"SET b 1", b"SELECT 1", b"SET a 2", b"SELECT 0"],
                5,
            ),
            (
                &[&[]],
                &[b"MSET c 1 b 2", b"HELLO 3", b"DEL a b", b"SET a 1"],
                5,
            ),
            (
                &[&[]],
                &[
                    b"SET z 1",
                    b"CLIENT REPLY OFF",
                    b"SET y 1",
                    b"CLIENT REPLY ON",
                    b"SET x 1",
                ],
                4,
            ),
            (&[&[b"PREFIX", b"b", b"PREFIX", b"a"]], split, 8),
            (&[&[b"PREFIX", b"b"], &[b"PREFIX", b"a"]], split, 8),
            (&[&[b"PREFIX", b"b"], &[]], split, 8),
        ];
        for (ons, requests, frames) in cases {
            let mut c = resp3_tracking(addr, &[b"BCAST"], &mut log).await;
            c.cmd(&[b"CLIENT", b"TRACKING", b"OFF"]).await;
            for on in ons {
                let mut args: Vec<&[u8]> = vec![b"CLIENT", b"TRACKING", b"ON", b"BCAST"];
                args.extend_from_slice(on);
                log.push(text(&c.cmd(&args).await));
            }
            log_pipeline(&mut c, &spaced(requests), frames, &mut log).await;
        }
        // Another client's write of a key under both prefixes: Redis's two
        // pushes, passed on one at a time, each keep their one prefix (this
        // session's first merge named the key under both for each: four).
        let mut c = resp3_tracking(addr, &[b"BCAST", b"PREFIX", b"a"], &mut log).await;
        log.push(text(
            &c.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST"]).await,
        ));
        let mut other = AsyncRawClient::connect(addr).await;
        log.push(text(&other.cmd(&[b"SET", b"a", b"8"]).await));
        log_pipeline(&mut c, b"", 2, &mut log).await;
        log
    })
    .await;
    proxy.shutdown().await;
}

/// The same for a RESP3 client subscribed on the connection it tracks on
/// (tracking turned on before or after subscribing): the requests it sends
/// there are written one by one, and Redis answered each on its own, so the
/// invalidation of a write came right after its reply, before the rest of the
/// read's (also before a `PING`'s `+PONG` in the same pipeline). Now they are
/// held until every reply of the read is in, and come as one (session 47).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bcast_subscribers_invalidations_follow_the_whole_read() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let cases: [(&[&[u8]], usize); 4] = [
            (&[b"SET b 1", b"SELECT 1", b"SET a 2", b"SELECT 0"], 5),
            (&[b"SET b 1", b"CLIENT GETNAME", b"SET a 2"], 4),
            (
                &[
                    b"SET z 1",
                    b"CLIENT REPLY OFF",
                    b"SET y 1",
                    b"CLIENT REPLY ON",
                    b"SET x 1",
                ],
                4,
            ),
            (&[b"SET k 1", b"PING"], 3),
        ];
        for subscribe_first in [true, false] {
            for (requests, frames) in cases {
                let mut c = AsyncRawClient::connect(addr).await;
                assert!(c.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
                let subscribe: &[&[u8]] = &[b"SUBSCRIBE", b"ch"];
                let track: &[&[u8]] = &[b"CLIENT", b"TRACKING", b"ON", b"BCAST"];
                let setup = match subscribe_first {
                    true => [subscribe, track],
                    false => [track, subscribe],
                };
                for request in setup {
                    log.push(text(&c.cmd(request).await));
                }
                log_pipeline(&mut c, &spaced(requests), frames, &mut log).await;
            }
        }
        // Another client's REDIRECT names this one: its invalidations come on
        // the same connection, Redis's default mode's, and stay where Redis put
        // them (multi-session tool, seed 8864: merged with the client's own).
        let mut c = AsyncRawClient::connect(addr).await;
        assert!(c.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%7\r\n"));
        log.push(text(
            &c.cmd(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST"]).await,
        ));
        log.push(text(&c.cmd(&[b"SUBSCRIBE", b"ch"]).await));
        let id = text(&c.cmd(&[b"CLIENT", b"ID"]).await);
        let id = id.trim_start_matches(':').trim_end().to_string();
        let mut other = AsyncRawClient::connect(addr).await;
        let on: &[&[u8]] = &[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", id.as_bytes()];
        log.push(text(&other.cmd(on).await));
        log.push(text(&other.cmd(&[b"GET", b"c"]).await));
        log_pipeline(&mut c, &spaced(&[b"SET c 7"]), 3, &mut log).await;
        log
    })
    .await;
    proxy.shutdown().await;
}

/// A `BCAST` client's invalidations of keys come after every reply of the read
/// that wrote them, as Redis sends them once it has run the whole read
/// (`beforeSleep`), also where the proxy answers part of the read itself or
/// sends it to Redis in several batches (a `HELLO` or `SELECT` waits for the
/// replies before it). Until session 46 they came right after the reply of the
/// write's batch (multi-session tool, seed 8762). A flush's invalidation, sent
/// at once, keeps its place; a `CLIENT TRACKING OFF` in the read means none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bcast_clients_invalidations_follow_the_whole_read() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    same_as_redis(redis.addr(), proxy.local_addr(), |addr| async move {
        let mut log = Vec::new();
        let cases: [(&[&[&[u8]]], usize); 6] = [
            (
                &[
                    &[b"SET", b"k", b"1"],
                    &[b"CLIENT", b"GETNAME"],
                    &[b"ECHO", b"x"],
                ],
                4,
            ),
            (
                &[
                    &[b"SET", b"k", b"1"],
                    &[b"CLIENT", b"SETNAME", b"n"],
                    &[b"GET", b"k"],
                ],
                4,
            ),
            (
                &[
                    &[b"DBSIZE"],
                    &[b"SET", b"b", b"1"],
                    &[b"HELLO", b"3", b"SETNAME", b"h"],
                ],
                4,
            ),
            (
                &[&[b"SET", b"b", b"2"], &[b"SELECT", b"0"], &[b"GET", b"b"]],
                4,
            ),
            (
                &[
                    &[b"SET", b"k", b"1"],
                    &[b"FLUSHDB"],
                    &[b"CLIENT", b"GETNAME"],
                ],
                5,
            ),
            (
                &[
                    &[b"SET", b"k", b"1"],
                    &[b"CLIENT", b"TRACKING", b"OFF"],
                    &[b"PING"],
                ],
                3,
            ),
        ];
        for (requests, frames) in cases {
            let mut c = resp3_tracking(addr, &[b"BCAST"], &mut log).await;
            let pipeline: Vec<u8> = requests.iter().flat_map(|r| resp_cmd(r)).collect();
            log_pipeline(&mut c, &pipeline, frames, &mut log).await;
        }
        log
    })
    .await;
    proxy.shutdown().await;
}
