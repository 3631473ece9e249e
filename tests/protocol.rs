//! The client protocol as the proxy speaks it: inline commands, malformed requests
//! (answered like Redis, then closed), request limits, HELLO, per-session CLIENT
//! state, refused transactions, PROXY INFO and QUIT.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::{
    info_sections, parse_info, printable, proxy_config, redis_cli, resp_bulk, resp_cmd,
    start_proxy, AsyncRawClient, RedisServer,
};

/// Sends `bytes` on a fresh connection and returns everything received until the
/// peer closes (panics if it does not close within 5 s).
async fn send_and_read_until_closed(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut c = AsyncRawClient::connect(addr).await;
    // The peer may close (and reset) before everything is written; that is fine.
    let _ = c.try_send(bytes).await;
    c.read_until_closed().await
}

async fn proxy_info(c: &mut AsyncRawClient, section: &str) -> HashMap<String, String> {
    let r = c.cmd(&[b"PROXY", b"INFO", section.as_bytes()]).await;
    assert!(r.starts_with(b"$"), "PROXY INFO: {}", printable(&r));
    parse_info(&String::from_utf8_lossy(&r))
}

fn num(m: &HashMap<String, String>, key: &str) -> u64 {
    m.get(key)
        .unwrap_or_else(|| panic!("PROXY INFO lacks {key}: {m:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number: {m:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands_work_like_on_redis() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut p = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut d = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(d.cmd(&[b"SELECT", b"15"]).await, b"+OK\r\n");

    let lines: &[&[u8]] = &[
        b"PING\r\n",
        b"SET k \"a b\"\r\n",
        b"GET k\r\n",
        b"SET k2 \"tab\\there\\x00nul\\r\\n\"\r\n",
        b"GET k2\r\n",
        b"SET k3 'single \\' quoted'\r\n",
        b"GET k3\r\n",
        b"  ECHO   spaced   \r\n",
        b"ping\n",
        b"GET nope\r\n",
        b"NOSUCHCMD x\r\n",
        b"RPUSH l a b c\r\nLRANGE l 0 -1\r\n",
    ];
    for line in lines {
        let n = line.windows(1).filter(|w| w[0] == b'\n').count();
        p.send(line).await;
        d.send(line).await;
        let got = p.read_replies(n).await;
        let want = d.read_replies(n).await;
        assert_eq!(got, want, "inline {}", printable(line));
    }
    assert_eq!(p.cmd(&[b"GET", b"k"]).await, resp_bulk(b"a b"));
    assert_eq!(
        p.cmd(&[b"GET", b"k2"]).await,
        resp_bulk(b"tab\there\0nul\r\n")
    );
    // Empty lines get no reply (Redis ignores them), the next command still works.
    p.send(b"\r\n\r\n\n").await;
    p.assert_no_reply(Duration::from_millis(150)).await;
    p.send(b"PING\r\n").await;
    assert_eq!(p.read_reply().await, b"+PONG\r\n");
    // Proxy-answered commands work inline too.
    p.send(b"SELECT 4\r\n").await;
    assert_eq!(p.read_reply().await, b"+OK\r\n");
    p.send(b"SET in4 yes\r\n").await;
    assert_eq!(p.read_reply().await, b"+OK\r\n");
    p.send(b"CLIENT SETNAME inline-name\r\nCLIENT GETNAME\r\n")
        .await;
    assert_eq!(
        p.read_replies(2).await,
        [b"+OK\r\n".to_vec(), resp_bulk(b"inline-name")]
    );
    assert_eq!(d.cmd(&[b"SELECT", b"4"]).await, b"+OK\r\n");
    assert_eq!(d.cmd(&[b"GET", b"in4"]).await, resp_bulk(b"yes"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_redis_s_protocol_error_and_are_closed() {
    let redis = RedisServer::start();
    // Redis's own answers come from a second, untouched server with the same state.
    let reference = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    // A bystander connected before, used after every bad client.
    let mut bystander = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(bystander.cmd(&[b"SET", b"b", b"0"]).await, b"+OK\r\n");

    let mut too_big_inline = vec![b'a'; 70_000];
    too_big_inline.extend_from_slice(b"bcd");
    let mut too_big_count = b"*".to_vec();
    too_big_count.extend(vec![b'1'; 70_000]);
    let mut too_big_bulk_count = b"*2\r\n$3\r\nGET\r\n$".to_vec();
    too_big_bulk_count.extend(vec![b'1'; 70_000]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad multibulk count", b"*x\r\n".to_vec()),
        ("negative-ish count", b"*-5x\r\n".to_vec()),
        ("simple string inside a request", b"*1\r\n+foo\r\n".to_vec()),
        (
            "integer inside a request",
            b"*2\r\n$3\r\nGET\r\n:1\r\n".to_vec(),
        ),
        ("negative bulk length", b"*1\r\n$-5\r\n".to_vec()),
        ("non-numeric bulk length", b"*1\r\n$x\r\n".to_vec()),
        ("bulk length over 512 MiB", b"*1\r\n$600000000\r\n".to_vec()),
        ("multibulk count over INT_MAX", b"*3000000000\r\n".to_vec()),
        ("unbalanced quotes", b"SET k \"abc\r\n".to_vec()),
        (
            "closing quote not followed by a space",
            b"SET k \"a\"b\r\n".to_vec(),
        ),
        ("inline request over 64 KiB", too_big_inline),
        ("multibulk count line over 64 KiB", too_big_count),
        ("bulk length line over 64 KiB", too_big_bulk_count),
        (
            "good commands, then junk",
            [
                resp_cmd(&[b"PING"]),
                resp_cmd(&[b"INCR", b"before-junk"]),
                b"*1\r\n+junk\r\n".to_vec(),
                resp_cmd(&[b"INCR", b"after-junk"]),
            ]
            .concat(),
        ),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let from_redis = send_and_read_until_closed(reference.addr(), bytes).await;
        let from_proxy = send_and_read_until_closed(proxy.local_addr(), bytes).await;
        assert!(
            from_redis.starts_with(b"-ERR Protocol error: ")
                || from_redis
                    .windows(21)
                    .any(|w| w == b"-ERR Protocol error: "),
            "{what}: Redis itself answered {}",
            printable(&from_redis)
        );
        assert_eq!(
            printable(&from_proxy),
            printable(&from_redis),
            "{what}: the proxy's answer differs from Redis's"
        );
        // Somebody else is still served.
        let n = (i + 1).to_string();
        assert_eq!(
            bystander.cmd(&[b"INCR", b"b"]).await,
            format!(":{n}\r\n").into_bytes(),
            "after {what}"
        );
    }
    // The request after the junk was never executed (by either).
    for server in [&redis, &reference] {
        let mut direct = AsyncRawClient::connect(server.addr()).await;
        assert_eq!(direct.cmd(&[b"GET", b"before-junk"]).await, resp_bulk(b"1"));
        assert_eq!(direct.cmd(&[b"EXISTS", b"after-junk"]).await, b":0\r\n");
    }
    // And the errors were counted.
    let stats = proxy_info(&mut bystander, "stats").await;
    assert_eq!(num(&stats, "protocol_errors"), cases.len() as u64);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_configured_limits_are_refused_and_closed() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.limits.max_bulk_len = 1024;
    config.limits.max_args = 8;
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();
    let mut bystander = AsyncRawClient::connect(addr).await;

    // At the limit: fine.
    let ok = vec![b'x'; 1024];
    assert_eq!(bystander.cmd(&[b"SET", b"k", &ok]).await, b"+OK\r\n");
    assert_eq!(bystander.cmd(&[b"GET", b"k"]).await, resp_bulk(&ok));

    // One byte over: a protocol error, then the connection is closed.
    let big = vec![b'y'; 1025];
    let mut c = AsyncRawClient::connect(addr).await;
    assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
    let _ = c.try_send(&resp_cmd(&[b"SET", b"k", &big])).await;
    let got = c.read_until_closed().await;
    assert_eq!(
        printable(&got),
        printable(b"-ERR Protocol error: invalid bulk length\r\n")
    );
    // Far over (a client announcing 100 MiB must not make the proxy wait for it).
    let started = Instant::now();
    let got =
        send_and_read_until_closed(addr, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$104857600\r\n").await;
    assert_eq!(
        printable(&got),
        printable(b"-ERR Protocol error: invalid bulk length\r\n")
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Too many arguments.
    let args: Vec<&[u8]> = vec![b"MSET", b"a", b"1", b"b", b"2", b"c", b"3", b"d", b"4"];
    let got = send_and_read_until_closed(addr, &resp_cmd(&args)).await;
    assert!(
        got.starts_with(b"-ERR Protocol error: invalid multibulk length"),
        "{}",
        printable(&got)
    );
    assert_eq!(
        bystander.cmd(&[b"MSET", b"a", b"1", b"b", b"2"]).await,
        b"+OK\r\n"
    );
    // The oversized value never reached Redis.
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&[b"STRLEN", b"k"]).await, b":1024\r\n");
    assert_eq!(bystander.cmd(&[b"PING"]).await, b"+PONG\r\n");
    proxy.shutdown().await;
}

/// `reply` with the value of its `id` field replaced by 0 (each connection has its own).
fn without_id(reply: &[u8]) -> Vec<u8> {
    const KEY: &[u8] = b"$2\r\nid\r\n:";
    let at = reply
        .windows(KEY.len())
        .position(|w| w == KEY)
        .unwrap_or_else(|| panic!("no id in {}", printable(reply)))
        + KEY.len();
    let end = at + reply[at..].iter().position(|&b| b == b'\r').expect("CRLF");
    [&reply[..at], b"0", &reply[end..]].concat()
}

/// Clients decide what to use by HELLO's `server`, `version` and `modules`: through
/// the proxy they are Redis's own (found by ioredis's suite: `server` was
/// `redis-sidecar`, `version` the proxy's 0.1.0). Until the upstream has answered
/// (it was down at start), the proxy names itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_names_the_upstream_redis_as_redis_itself_does() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
    support::upstream_learnt(&mut c).await;
    for args in [&[&b"HELLO"[..]][..], &[b"HELLO", b"3"], &[b"HELLO", b"2"]] {
        let want = without_id(&direct.cmd(args).await);
        let got = without_id(&c.cmd(args).await);
        assert_eq!(got, want, "{}", printable(&want));
        assert!(
            String::from_utf8_lossy(&got).contains("$6\r\nserver\r\n$5\r\nredis\r\n"),
            "{}",
            printable(&got)
        );
    }
    proxy.shutdown().await;

    // A standalone upstream that is a replica says so (`role`), as Redis would.
    let replica = RedisServer::start();
    let mut r = AsyncRawClient::connect(replica.addr()).await;
    let port = redis.port().to_string();
    let ok = r.cmd(&[b"REPLICAOF", b"127.0.0.1", port.as_bytes()]).await;
    assert_eq!(ok, b"+OK\r\n");
    let proxy = start_proxy(proxy_config(&replica)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
    support::upstream_learnt(&mut c).await;
    let want = without_id(&r.cmd(&[b"HELLO", b"3"]).await);
    assert!(
        String::from_utf8_lossy(&want).contains("$4\r\nrole\r\n$7\r\nreplica\r\n"),
        "{}",
        printable(&want)
    );
    assert_eq!(without_id(&c.cmd(&[b"HELLO", b"3"]).await), want);
    proxy.shutdown().await;

    // An upstream never reached: the proxy's own name.
    let dead = redis_sidecar::config::Config::for_upstream("127.0.0.1", support::free_port());
    let mut config = dead;
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let got = c.cmd(&[b"HELLO", b"3"]).await;
    assert!(
        String::from_utf8_lossy(&got).contains("$6\r\nserver\r\n$13\r\nredis-sidecar\r\n"),
        "{}",
        printable(&got)
    );
    proxy.shutdown().await;
}

/// A client's very first `HELLO`, sent as soon as the proxy listens, names the
/// upstream Redis too: the proxy asks what its upstreams are before it listens
/// (for at most a second). It named itself in 7 of 10 starts before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_hello_after_start_names_the_upstream() {
    let redis = RedisServer::start();
    for start in 0..5 {
        let proxy = start_proxy(proxy_config(&redis)).await;
        let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
        let got = c.cmd(&[b"HELLO", b"3"]).await;
        assert!(
            String::from_utf8_lossy(&got).contains("$6\r\nserver\r\n$5\r\nredis\r\n"),
            "start {start}: {}",
            printable(&got)
        );
        proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_switches_to_resp3_and_hello_2_back() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;

    let got = c.cmd(&[b"HELLO", b"3"]).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("%7\r\n"), "{text}");
    assert!(text.contains("$5\r\nproto\r\n:3\r\n"), "{text}");
    assert!(direct.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%"));
    // The direct comparison runs in db 15, apart from the proxy's db 0.
    assert_eq!(direct.cmd(&[b"SELECT", b"15"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"HSET", b"h", b"f", b"v"]).await, b":1\r\n");
    // RESP3 replies exactly as Redis sends them: maps, sets, nulls, doubles.
    assert_eq!(c.cmd(&[b"HSET", b"h", b"f", b"v"]).await, b":1\r\n");
    for args in [
        &[&b"HGETALL"[..], b"h"][..],
        &[b"GET", b"nope"],
        &[b"SMEMBERS", b"nope"],
        &[b"ZADD", b"z", b"1.5", b"m"],
        &[b"ZSCORE", b"z", b"m"],
        &[b"CONFIG", b"GET", b"maxmemory"],
    ] {
        let want = direct.cmd(args).await;
        assert_eq!(c.cmd(args).await, want, "{}", printable(&want));
    }
    assert_eq!(
        c.cmd(&[b"HGETALL", b"h"]).await,
        b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n".to_vec()
    );
    assert_eq!(c.cmd(&[b"GET", b"nope"]).await, b"_\r\n");
    assert_eq!(c.cmd(&[b"CLIENT", b"GETNAME"]).await, b"_\r\n");
    // Transactions on RESP3 exclusive connections.
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"nope"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*1\r\n_\r\n");

    // Back to RESP2: a map-typed reply is a flat array, nil is $-1.
    let hello = c.cmd(&[b"HELLO", b"2"]).await;
    assert!(hello.starts_with(b"*14\r\n"), "{}", printable(&hello));
    assert_eq!(
        c.cmd(&[b"HGETALL", b"h"]).await,
        b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n".to_vec()
    );
    assert_eq!(c.cmd(&[b"GET", b"nope"]).await, b"$-1\r\n");

    let hello = c.cmd(&[b"HELLO", b"2"]).await;
    let text = String::from_utf8_lossy(&hello).into_owned();
    assert!(text.starts_with("*14\r\n"), "{text}");
    assert!(text.contains("$5\r\nproto\r\n:2\r\n"), "{text}");
    assert!(text.contains("$2\r\nid\r\n:"), "{text}");
    let plain = c.cmd(&[b"HELLO"]).await;
    assert!(plain.starts_with(b"*14\r\n"), "{}", printable(&plain));
    // HELLO 2 SETNAME sets the session's name.
    let r = c.cmd(&[b"HELLO", b"2", b"SETNAME", b"via-hello"]).await;
    assert!(r.starts_with(b"*"), "{}", printable(&r));
    assert_eq!(
        c.cmd(&[b"CLIENT", b"GETNAME"]).await,
        resp_bulk(b"via-hello")
    );
    // Bad versions, like Redis.
    let r = c.cmd(&[b"HELLO", b"4"]).await;
    assert!(r.starts_with(b"-NOPROTO"), "{}", printable(&r));
    let r = c.cmd(&[b"HELLO", b"x"]).await;
    assert!(r.starts_with(b"-ERR"), "{}", printable(&r));
    assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_names_and_ids_are_per_session() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut a = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut b = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;

    assert_eq!(a.cmd(&[b"CLIENT", b"GETNAME"]).await, b"$-1\r\n");
    assert_eq!(a.cmd(&[b"CLIENT", b"SETNAME", b"alice"]).await, b"+OK\r\n");
    assert_eq!(b.cmd(&[b"CLIENT", b"SETNAME", b"bob"]).await, b"+OK\r\n");
    // Both sessions share upstream connections, yet each sees its own name.
    for _ in 0..3 {
        assert_eq!(a.cmd(&[b"CLIENT", b"GETNAME"]).await, resp_bulk(b"alice"));
        assert_eq!(b.cmd(&[b"CLIENT", b"GETNAME"]).await, resp_bulk(b"bob"));
        assert_eq!(a.cmd(&[b"SET", b"x", b"1"]).await, b"+OK\r\n");
        assert_eq!(b.cmd(&[b"GET", b"x"]).await, resp_bulk(b"1"));
    }
    let ida = a.cmd(&[b"CLIENT", b"ID"]).await;
    let idb = b.cmd(&[b"CLIENT", b"ID"]).await;
    assert!(ida.starts_with(b":") && idb.starts_with(b":"));
    assert_ne!(ida, idb);
    assert_eq!(
        a.cmd(&[b"CLIENT", b"ID"]).await,
        ida,
        "stable within a session"
    );
    let info = a.cmd(&[b"CLIENT", b"INFO"]).await;
    let text = String::from_utf8_lossy(&info).into_owned();
    assert!(text.contains(" name=alice "), "{text}");
    let id = String::from_utf8_lossy(&ida[1..ida.len() - 2]).into_owned();
    assert!(text.contains(&format!("id={id} ")), "{text}");
    assert_eq!(a.cmd(&[b"SELECT", b"6"]).await, b"+OK\r\n");
    let text = String::from_utf8_lossy(&a.cmd(&[b"CLIENT", b"INFO"]).await).into_owned();
    assert!(text.contains(" db=6 "), "{text}");
    // SETINFO is kept too (redis-rs and redis-py send it on connect).
    assert_eq!(
        a.cmd(&[b"CLIENT", b"SETINFO", b"LIB-NAME", b"mylib"]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        a.cmd(&[b"CLIENT", b"SETINFO", b"lib-ver", b"1.2.3"]).await,
        b"+OK\r\n"
    );
    let text = String::from_utf8_lossy(&a.cmd(&[b"CLIENT", b"INFO"]).await).into_owned();
    assert!(
        text.contains("lib-name=mylib") && text.contains("lib-ver=1.2.3"),
        "{text}"
    );
    // Invalid names are rejected like Redis does; clearing with "" works.
    let bad = a.cmd(&[b"CLIENT", b"SETNAME", b"has space"]).await;
    let redis_bad = direct.cmd(&[b"CLIENT", b"SETNAME", b"has space"]).await;
    assert_eq!(printable(&bad), printable(&redis_bad));
    assert_eq!(a.cmd(&[b"CLIENT", b"GETNAME"]).await, resp_bulk(b"alice"));
    assert_eq!(a.cmd(&[b"CLIENT", b"SETNAME", b""]).await, b"+OK\r\n");
    assert_eq!(a.cmd(&[b"CLIENT", b"GETNAME"]).await, b"$-1\r\n");
    assert_eq!(b.cmd(&[b"CLIENT", b"GETNAME"]).await, resp_bulk(b"bob"));
    // The names never reached Redis's (shared) connections.
    let list = direct.cmd(&[b"CLIENT", b"LIST"]).await;
    let text = String::from_utf8_lossy(&list).into_owned();
    assert!(
        !text.contains("name=bob") && !text.contains("name=alice"),
        "{text}"
    );
    // Tracking moves the session to a connection of its own, and the name stays
    // the proxy's (tests/tracking.rs has the rest).
    assert_eq!(a.cmd(&[b"CLIENT", b"TRACKING", b"on"]).await, b"+OK\r\n");
    assert_eq!(a.cmd(&[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(a.cmd(&[b"CLIENT", b"GETNAME"]).await, b"$-1\r\n");
    // CLIENT LIST describes the proxy's own sessions, names included.
    let list = a.cmd(&[b"CLIENT", b"LIST"]).await;
    let t = String::from_utf8_lossy(&list).into_owned();
    assert!(t.starts_with('$') && t.contains("cmd=client|list"), "{t}");
    // (a cleared its name above.)
    assert!(t.contains("name=bob ") && !t.contains("name=alice"), "{t}");
    // A new session starts without a name.
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"CLIENT", b"GETNAME"]).await, b"$-1\r\n");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_commands_are_refused_clearly_and_the_session_keeps_working() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let cases: &[(&[&[u8]], &str, &str)] = &[
        (&[b"SYNC"], "SYNC", "replication"),
        (&[b"PSYNC", b"?", b"-1"], "PSYNC", "replication"),
    ];
    for (args, name, family) in cases {
        let got = c.cmd(args).await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(
            text.starts_with(&format!(
                "-ERR '{name}' is not supported by redis-sidecar: "
            )),
            "{text}"
        );
        assert!(text.contains(family), "{text}");
        assert!(
            text.ends_with("\r\n") && text.matches('\n').count() == 1,
            "{text}"
        );
        // Not monitoring: ordinary commands still get ordinary replies.
        assert_eq!(c.cmd(&[b"SET", b"k", name.as_bytes()]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&[b"GET", b"k"]).await, resp_bulk(name.as_bytes()));
    }
    // PUBLISH is stateless and goes through.
    assert_eq!(c.cmd(&[b"PUBLISH", b"ch", b"hi"]).await, b":0\r\n");
    // Redis never saw the refused commands.
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    let stats = direct.cmd(&[b"INFO", b"commandstats"]).await;
    let text = String::from_utf8_lossy(&stats).into_owned();
    assert!(text.contains("cmdstat_publish:"), "{text}");
    for name in ["sync", "psync"] {
        assert!(
            !text.contains(&format!("cmdstat_{name}:")),
            "{name} reached Redis: {text}"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_info_reports_sections_and_counters_that_move() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let addr = proxy.local_addr();
    let mut c = AsyncRawClient::connect(addr).await;

    let all = c.cmd(&[b"PROXY", b"INFO"]).await;
    let text = String::from_utf8_lossy(&all).into_owned();
    // These four, in this order (other sections may sit between them).
    let sections = info_sections(&text);
    let mut pos = 0;
    for want in ["Server", "Clients", "Databases", "Stats"] {
        match sections[pos..].iter().position(|s| s == want) {
            Some(i) => pos += i + 1,
            None => panic!("no '# {want}' section in order: {sections:?}\n{text}"),
        }
    }
    assert!(text.contains("\r\n"), "CRLF lines like Redis INFO");
    let f = parse_info(&text);
    assert!(f.contains_key("proxy_version"), "{text}");
    assert_eq!(num(&f, "process_id"), std::process::id() as u64);
    let _ = num(&f, "uptime_in_seconds");
    assert_eq!(
        f.get("listen_address").map(String::as_str),
        Some(addr.to_string().as_str())
    );
    assert_eq!(num(&f, "connected_clients"), 1);
    assert_eq!(num(&f, "max_clients"), 10_000);
    // Section-aware: another section may use `dbN` keys too.
    let dbs = support::parse_info_section(&text, "Databases");
    for (i, name) in support::DATABASE_NAMES.iter().enumerate() {
        let line = dbs
            .get(&format!("db{i}"))
            .unwrap_or_else(|| panic!("no db{i} line: {text}"));
        assert!(line.starts_with(&format!("name={name},")), "{line}");
        assert!(
            line.contains(&format!(",upstream=127.0.0.1:{},", redis.port())),
            "{line}"
        );
        assert!(line.contains(&format!(",upstream_db={i},")), "{line}");
    }
    for key in [
        "total_commands_processed",
        "commands_forwarded",
        "commands_local",
        "error_replies",
        "protocol_errors",
        "instantaneous_ops_per_sec",
    ] {
        let _ = num(&f, key);
    }

    // Only the requested section; an unknown section is empty, like Redis INFO.
    let server = c.cmd(&[b"PROXY", b"INFO", b"server"]).await;
    assert_eq!(info_sections(&String::from_utf8_lossy(&server)), ["Server"]);
    let clients = c.cmd(&[b"proxy", b"info", b"CLIENTS"]).await;
    assert_eq!(
        info_sections(&String::from_utf8_lossy(&clients)),
        ["Clients"]
    );
    assert_eq!(c.cmd(&[b"PROXY", b"INFO", b"nosuch"]).await, b"$0\r\n\r\n");
    let help = c.cmd(&[b"PROXY", b"HELP"]).await;
    assert!(help.starts_with(b"*"), "{}", printable(&help));
    let bad = c.cmd(&[b"PROXY", b"FROB"]).await;
    assert!(bad.starts_with(b"-ERR"), "{}", printable(&bad));

    // Counters move with traffic.
    let before = proxy_info(&mut c, "stats").await;
    let dbs_before = proxy_info(&mut c, "databases").await;
    assert_eq!(c.cmd(&[b"SELECT", b"3"]).await, b"+OK\r\n");
    for i in 0..10 {
        let k = format!("k{i}");
        assert_eq!(c.cmd(&[b"SET", k.as_bytes(), b"v"]).await, b"+OK\r\n");
    }
    let e = c.cmd(&[b"LPUSH", b"k0", b"x"]).await;
    assert!(e.starts_with(b"-WRONGTYPE"));
    let after = proxy_info(&mut c, "stats").await;
    let dbs_after = proxy_info(&mut c, "databases").await;
    assert!(
        num(&after, "commands_forwarded") >= num(&before, "commands_forwarded") + 11,
        "{before:?} -> {after:?}"
    );
    assert!(
        num(&after, "total_commands_processed") >= num(&before, "total_commands_processed") + 12,
        "{before:?} -> {after:?}"
    );
    assert!(num(&after, "commands_local") > num(&before, "commands_local"));
    assert!(num(&after, "error_replies") > num(&before, "error_replies"));
    let db3 = |m: &HashMap<String, String>, key: &str| -> u64 {
        let line = m.get("db3").expect("db3 line");
        line.split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("db3 has no {key}: {line}"))
            .parse()
            .expect("number")
    };
    assert_eq!(
        db3(&dbs_after, "commands"),
        db3(&dbs_before, "commands") + 11
    );
    assert_eq!(db3(&dbs_after, "errors"), db3(&dbs_before, "errors") + 1);
    assert!(db3(&dbs_after, "shared_open") >= 1);

    // Connected and total clients follow connections.
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut o = AsyncRawClient::connect(addr).await;
        assert_eq!(o.cmd(&[b"PING"]).await, b"+PONG\r\n");
        others.push(o);
    }
    let cl = proxy_info(&mut c, "clients").await;
    assert_eq!(num(&cl, "connected_clients"), 4);
    assert_eq!(num(&cl, "total_connections_received"), 4);
    drop(others);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cl = proxy_info(&mut c, "clients").await;
        if num(&cl, "connected_clients") == 1 {
            assert_eq!(num(&cl, "total_connections_received"), 4);
            break;
        }
        assert!(Instant::now() < deadline, "clients did not go away: {cl:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // instantaneous_ops_per_sec follows a burst within a couple of seconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    while Instant::now() < deadline && seen == 0 {
        let mut burst = Vec::new();
        for _ in 0..200 {
            burst.extend(resp_cmd(&[b"INCR", b"ops"]));
        }
        c.send(&burst).await;
        let _ = c.read_replies(200).await;
        seen = num(
            &proxy_info(&mut c, "stats").await,
            "instantaneous_ops_per_sec",
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen > 0, "instantaneous_ops_per_sec stayed 0");

    // PROXY is answered by the proxy (Redis does not know it), also for redis-cli.
    let (out, status) =
        tokio::task::spawn_blocking(move || redis_cli(addr.port(), &["PROXY", "INFO", "stats"]))
            .await
            .unwrap();
    assert!(status.success());
    assert!(out.contains("total_commands_processed:"), "{out}");
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    let r = direct.cmd(&[b"PROXY", b"INFO"]).await;
    assert!(r.starts_with(b"-ERR unknown command"), "{}", printable(&r));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_replies_ok_and_closes() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    // Pipelined work before QUIT is answered; nothing after it runs.
    let bytes = [
        resp_cmd(&[b"SET", b"before", b"1"]),
        resp_cmd(&[b"QUIT"]),
        resp_cmd(&[b"SET", b"after", b"1"]),
    ]
    .concat();
    let got = send_and_read_until_closed(proxy.local_addr(), &bytes).await;
    assert_eq!(printable(&got), printable(b"+OK\r\n+OK\r\n"));
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&[b"GET", b"before"]).await, resp_bulk(b"1"));
    assert_eq!(direct.cmd(&[b"EXISTS", b"after"]).await, b":0\r\n");
    // Same bytes to Redis: same answer.
    let from_redis = send_and_read_until_closed(
        redis.addr(),
        &[resp_cmd(&[b"SELECT", b"15"]), bytes.clone()].concat(),
    )
    .await;
    assert_eq!(printable(&from_redis), printable(b"+OK\r\n+OK\r\n+OK\r\n"));
    // Inline QUIT, lower case.
    let got = send_and_read_until_closed(proxy.local_addr(), b"quit\r\n").await;
    assert_eq!(got, b"+OK\r\n");
    // The proxy counts the session as gone.
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cl = proxy_info(&mut c, "clients").await;
        if num(&cl, "connected_clients") == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "sessions not closed: {cl:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_max_clients_are_refused() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.max_clients = 3;
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();
    let mut admitted = Vec::new();
    for _ in 0..3 {
        let mut c = AsyncRawClient::connect(addr).await;
        assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
        admitted.push(c);
    }
    for _ in 0..2 {
        let got = send_and_read_until_closed(addr, &resp_cmd(&[b"PING"])).await;
        assert_eq!(
            printable(&got),
            printable(b"-ERR max number of clients reached\r\n")
        );
    }
    let info = proxy_info(&mut admitted[0], "clients").await;
    assert_eq!(num(&info, "connected_clients"), 3);
    assert_eq!(num(&info, "rejected_connections"), 2);
    assert_eq!(num(&info, "max_clients"), 3);
    // When one leaves, a newcomer is admitted.
    drop(admitted.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = AsyncRawClient::connect(addr).await;
        let r = c.cmd(&[b"PING"]).await;
        if r == b"+PONG\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "{}", printable(&r));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in &mut admitted {
        assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
    }
    proxy.shutdown().await;
}
