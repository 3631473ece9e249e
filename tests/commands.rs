//! Everyday commands through the proxy, with a raw client (byte-for-byte against Redis),
//! with redis-rs through a bb8-redis pool, and with `redis-cli`.
//!
//! The reference is the same Redis server the proxy forwards to: the proxy's traffic
//! goes to upstream db 0 (client db 0), the direct reference connection uses db 15,
//! which the proxy never touches. Both start empty and run the same commands in the
//! same order, so every reply (even SMEMBERS order) must be identical.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bb8_redis::redis::{self, AsyncCommands};
use support::upstream::{Backend, Upstream};
use support::{
    bb8_pool, parse_info, printable, proxy_config, redis_cli, resp_array, resp_bulk, resp_cmd,
    start_proxy, AsyncRawClient, RedisServer,
};

// Each runs against a standalone Redis and a Redis Cluster (`NAME::standalone`,
// `NAME::cluster`); the reference is a standalone Redis either way.
upstream_tests!(
    raw_replies_are_byte_for_byte_what_redis_answers,
    pipelined_script_gets_the_same_replies_as_redis,
    scan_with_match_and_count_through_the_proxy,
    bb8_redis_pool_through_the_proxy,
    redis_cli_output_matches_redis,
);

/// Runs `redis-cli` on a blocking thread (the proxy runs on this test's runtime).
async fn cli(port: u16, args: &[&str]) -> (String, std::process::ExitStatus) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        redis_cli(port, &refs)
    })
    .await
    .expect("redis-cli thread")
}

/// A command and the reply Redis is expected to give (`None`: only compare).
type Step<'a> = (Vec<&'a [u8]>, Option<&'a [u8]>);

fn cmd_text(args: &[&[u8]]) -> String {
    args.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

async fn raw_replies_are_byte_for_byte_what_redis_answers(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut via_proxy = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = up.reference().await;

    // (command, the reply Redis is expected to give, or None to only compare).
    let script: Vec<Step> = vec![
        (vec![b"PING"], Some(b"+PONG\r\n")),
        (vec![b"PING", b"hello"], Some(b"$5\r\nhello\r\n")),
        (vec![b"GET", b"missing"], Some(b"$-1\r\n")),
        (vec![b"SET", b"k", b"v"], Some(b"+OK\r\n")),
        (vec![b"GET", b"k"], Some(b"$1\r\nv\r\n")),
        (vec![b"SET", b"k", b"v2", b"NX"], Some(b"$-1\r\n")),
        (vec![b"SET", b"k", b"v3", b"XX"], Some(b"+OK\r\n")),
        (vec![b"GET", b"k"], Some(b"$2\r\nv3\r\n")),
        (vec![b"SET", b"newk", b"v", b"XX"], Some(b"$-1\r\n")),
        (vec![b"SET", b"newk", b"v", b"NX"], Some(b"+OK\r\n")),
        (vec![b"SET", b"k", b"old", b"GET"], Some(b"$2\r\nv3\r\n")),
        (vec![b"SET", b"ex", b"1", b"EX", b"100"], Some(b"+OK\r\n")),
        (vec![b"TTL", b"ex"], Some(b":100\r\n")),
        (
            vec![b"SET", b"px", b"1", b"PX", b"100000"],
            Some(b"+OK\r\n"),
        ),
        (vec![b"TTL", b"px"], Some(b":100\r\n")),
        (vec![b"SET", b"bad", b"1", b"EX", b"0"], None),
        (vec![b"SET", b"bad", b"1", b"EX", b"soon"], None),
        (
            vec![b"SET", b"bad", b"1", b"NX", b"XX"],
            Some(b"-ERR syntax error\r\n"),
        ),
        (vec![b"TTL", b"newk"], Some(b":-1\r\n")),
        (vec![b"TTL", b"missing"], Some(b":-2\r\n")),
        (vec![b"EXPIRE", b"newk", b"50"], Some(b":1\r\n")),
        (vec![b"TTL", b"newk"], Some(b":50\r\n")),
        (vec![b"EXPIRE", b"missing", b"50"], Some(b":0\r\n")),
        (
            vec![b"EXISTS", b"k", b"newk", b"missing", b"k"],
            Some(b":3\r\n"),
        ),
        (vec![b"DEL", b"k", b"missing"], Some(b":1\r\n")),
        (vec![b"EXISTS", b"k"], Some(b":0\r\n")),
        (
            vec![b"HSET", b"h", b"f1", b"a", b"f2", b"bb"],
            Some(b":2\r\n"),
        ),
        (vec![b"HSET", b"h", b"f1", b"A"], Some(b":0\r\n")),
        (vec![b"HGET", b"h", b"f1"], Some(b"$1\r\nA\r\n")),
        (vec![b"HGET", b"h", b"nope"], Some(b"$-1\r\n")),
        (
            vec![b"HGETALL", b"h"],
            Some(b"*4\r\n$2\r\nf1\r\n$1\r\nA\r\n$2\r\nf2\r\n$2\r\nbb\r\n"),
        ),
        (vec![b"HGETALL", b"nohash"], Some(b"*0\r\n")),
        (vec![b"LPUSH", b"l", b"a", b"b", b"c"], Some(b":3\r\n")),
        (vec![b"RPUSH", b"l", b"d", b"e"], Some(b":5\r\n")),
        (vec![b"LPOP", b"l"], Some(b"$1\r\nc\r\n")),
        (vec![b"RPOP", b"l"], Some(b"$1\r\ne\r\n")),
        (vec![b"LLEN", b"l"], Some(b":3\r\n")),
        (
            vec![b"LPOP", b"l", b"2"],
            Some(b"*2\r\n$1\r\nb\r\n$1\r\na\r\n"),
        ),
        (vec![b"LPOP", b"nolist"], Some(b"$-1\r\n")),
        (
            vec![b"LRANGE", b"l", b"0", b"-1"],
            Some(b"*1\r\n$1\r\nd\r\n"),
        ),
        (vec![b"SADD", b"s", b"a", b"b", b"c", b"a"], Some(b":3\r\n")),
        (
            vec![b"SADD", b"s", b"x1", b"x2", b"x3", b"x4"],
            Some(b":4\r\n"),
        ),
        (vec![b"SREM", b"s", b"b", b"zz"], Some(b":1\r\n")),
        (vec![b"SCARD", b"s"], Some(b":6\r\n")),
        // Order is the server's hash order: identical for identical histories.
        (vec![b"SMEMBERS", b"s"], None),
        (vec![b"SMEMBERS", b"noset"], Some(b"*0\r\n")),
        (
            vec![b"GET", b"h"],
            Some(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"),
        ),
        (vec![b"LPUSH", b"h", b"x"], None),
        (vec![b"FOOBAR", b"a"], None),
        (
            vec![b"GET"],
            Some(b"-ERR wrong number of arguments for 'get' command\r\n"),
        ),
        (vec![b"INCR", b"ctr"], Some(b":1\r\n")),
        (vec![b"INCRBY", b"ctr", b"41"], Some(b":42\r\n")),
        (vec![b"INCR", b"h"], None),
        // Nested arrays.
        (
            vec![b"SCAN", b"0", b"MATCH", b"nomatch*", b"COUNT", b"1000"],
            Some(b"*2\r\n$1\r\n0\r\n*0\r\n"),
        ),
        (
            vec![b"XADD", b"st", b"1-1", b"f", b"v"],
            Some(b"$3\r\n1-1\r\n"),
        ),
        (
            vec![b"XRANGE", b"st", b"-", b"+"],
            Some(b"*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"),
        ),
        (
            vec![b"ZADD", b"z", b"1.5", b"m1", b"2", b"m2"],
            Some(b":2\r\n"),
        ),
        (
            vec![b"ZRANGE", b"z", b"0", b"-1", b"WITHSCORES"],
            Some(b"*4\r\n$2\r\nm1\r\n$3\r\n1.5\r\n$2\r\nm2\r\n$1\r\n2\r\n"),
        ),
        (vec![b"COMMAND", b"INFO", b"GET"], None),
        // Scripting: nested arrays, integers and nil from Lua.
        (
            vec![
                b"EVAL",
                b"return {1, 'two', {3, 'four'}, redis.call('GET', KEYS[1])}",
                b"1",
                b"newk",
            ],
            Some(b"*4\r\n:1\r\n$3\r\ntwo\r\n*2\r\n:3\r\n$4\r\nfour\r\n$1\r\nv\r\n"),
        ),
        (
            vec![b"EVAL", b"return redis.call('GET', 'nothing')", b"0"],
            Some(b"$-1\r\n"),
        ),
        (
            vec![b"EVAL", b"return redis.error_reply('MYERR custom')", b"0"],
            Some(b"-MYERR custom\r\n"),
        ),
        (vec![b"TYPE", b"h"], Some(b"+hash\r\n")),
        (vec![b"DBSIZE"], None),
    ];

    for (args, expected) in &script {
        // Cluster: its databases have a key_prefix, which refuses an unknown command
        // until the cluster's version is known (README "Key prefixes"); checked
        // below, once it is.
        if kind == Upstream::Cluster && args[0] == b"FOOBAR" {
            continue;
        }
        let p = kind.comparable(args, &via_proxy.cmd(args).await);
        let d = kind.comparable(args, &direct.cmd(args).await);
        assert_eq!(
            printable(&p),
            printable(&d),
            "`{}`: proxy and Redis disagree",
            cmd_text(args)
        );
        if let Some(expected) = expected {
            assert_eq!(
                printable(&p),
                printable(&kind.comparable(args, expected)),
                "`{}`: unexpected reply",
                cmd_text(args)
            );
        }
    }
    // Spot checks on the compared-only replies: they are what they should be.
    let smembers = via_proxy.cmd(&[b"SMEMBERS", b"s"]).await;
    assert!(smembers.starts_with(b"*6\r\n"), "{}", printable(&smembers));
    // An unknown command: Redis's words, also on a prefixed cluster database once
    // the proxy knows the cluster's version (it then knows the command cannot
    // exist there: `prefix::unknown`).
    support::upstream_learnt(&mut via_proxy).await;
    let unknown = via_proxy.cmd(&[b"FOOBAR", b"a"]).await;
    let refusal: &[u8] = b"-ERR unknown command 'FOOBAR', with args beginning with: 'a' \r\n";
    assert_eq!(unknown, refusal, "{}", printable(&unknown));
    let command_info = via_proxy.cmd(&[b"COMMAND", b"INFO", b"GET"]).await;
    assert!(
        command_info.starts_with(b"*1\r\n*"),
        "COMMAND INFO is a nested array: {}",
        printable(&command_info)
    );
    // The writes really went to client db 0's upstream, and only there.
    let mut db0 = up.direct(0).await;
    assert_eq!(db0.cmd(&[b"HGET", b"h", b"f2"]).await, resp_bulk(b"bb"));
    assert_eq!(up.direct(1).await.dbsize().await, 0);
    proxy.shutdown().await;
}

async fn pipelined_script_gets_the_same_replies_as_redis(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut via_proxy = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = up.reference().await;

    let commands: Vec<Vec<&[u8]>> = vec![
        vec![b"SET", b"a", b"1"],
        vec![b"INCR", b"a"],
        vec![b"GET", b"a"],
        vec![b"RPUSH", b"q", b"x", b"y", b"z"],
        vec![b"LRANGE", b"q", b"0", b"-1"],
        vec![b"HSET", b"a", b"f", b"v"],
        vec![b"GET", b"nope"],
        vec![b"MGET", b"a", b"nope", b"q"],
        vec![b"DEL", b"a", b"q"],
        vec![b"PING"],
    ];
    let mut bytes = Vec::new();
    for c in &commands {
        bytes.extend(resp_cmd(c));
    }
    via_proxy.send(&bytes).await;
    direct.send(&bytes).await;
    let p = via_proxy.read_replies(commands.len()).await;
    let d = direct.read_replies(commands.len()).await;
    assert_eq!(p, d);
    assert_eq!(
        p[7],
        resp_array(&[resp_bulk(b"2"), b"$-1\r\n".to_vec(), b"$-1\r\n".to_vec()])
    );
    proxy.shutdown().await;
}

async fn scan_with_match_and_count_through_the_proxy(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut bytes = Vec::new();
    let mut expected = HashSet::new();
    for i in 0..300 {
        let key = format!("user:{i}");
        bytes.extend(resp_cmd(&[b"SET", key.as_bytes(), b"1"]));
        expected.insert(key);
    }
    for i in 0..100 {
        bytes.extend(resp_cmd(&[b"SET", format!("other:{i}").as_bytes(), b"1"]));
    }
    c.send(&bytes).await;
    for r in c.read_replies(400).await {
        assert_eq!(r, b"+OK\r\n");
    }

    // Full iteration with a small COUNT: several round trips, every matching key once.
    let scan_all = |count: &'static str| {
        let addr = proxy.local_addr();
        async move {
            let mut c = AsyncRawClient::connect(addr).await;
            let mut cursor = String::from("0");
            let mut found = HashSet::new();
            let mut calls = 0;
            loop {
                calls += 1;
                assert!(calls <= 2000, "SCAN did not finish within 2000 calls");
                let r = c
                    .cmd(&[
                        b"SCAN",
                        cursor.as_bytes(),
                        b"MATCH",
                        b"user:*",
                        b"COUNT",
                        count.as_bytes(),
                    ])
                    .await;
                let text = String::from_utf8_lossy(&r).into_owned();
                let parts: Vec<&str> = text.split("\r\n").collect();
                assert_eq!(parts[0], "*2", "{text}");
                cursor = parts[2].to_string();
                let n: usize = parts[3].trim_start_matches('*').parse().expect("array len");
                for i in 0..n {
                    let key = parts[5 + 2 * i];
                    assert!(key.starts_with("user:"), "MATCH ignored: {key}");
                    found.insert(key.to_string());
                }
                if cursor == "0" {
                    break;
                }
            }
            (found, calls)
        }
    };
    let (found, small_calls) = scan_all("5").await;
    assert_eq!(found, expected);
    let (found, big_calls) = scan_all("10000").await;
    assert_eq!(found, expected);
    assert_eq!(
        big_calls, 1,
        "COUNT 10000 covers 400 keys in one call, as on one server (on a cluster a \
         node walked to its end goes on on the next in the same call)"
    );
    assert!(
        small_calls > 10,
        "COUNT 5 needs many calls for 400 keys, took {small_calls}"
    );
    proxy.shutdown().await;
}

/// Malformed requests of commands the proxy answers itself get Redis's own errors,
/// and change nothing (a RESET with an argument keeps the name and database).
// Standalone only: SWAPDB/SELECT of upstream dbs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_commands_the_proxy_answers_get_redis_errors() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut p = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut d = AsyncRawClient::connect(redis.addr()).await;
    let cases: [(&[&[u8]], &str); 8] = [
        (
            &[b"AUTH"],
            "-ERR wrong number of arguments for 'auth' command\r\n",
        ),
        (
            &[b"RESET", b"x"],
            "-ERR wrong number of arguments for 'reset' command\r\n",
        ),
        (&[b"SWAPDB", b"a", b"b"], "-ERR invalid first DB index\r\n"),
        (
            &[b"SWAPDB", b"99", b"b"],
            "-ERR invalid second DB index\r\n",
        ),
        (
            &[b"SWAPDB", b"0", b"99"],
            "-ERR DB index is out of range\r\n",
        ),
        (
            &[b"CLIENT", b"ID", b"x"],
            "-ERR wrong number of arguments for 'client|id' command\r\n",
        ),
        (
            &[b"CLIENT", b"GETNAME", b"x"],
            "-ERR wrong number of arguments for 'client|getname' command\r\n",
        ),
        (
            &[b"SELECT", b"abc"],
            "-ERR value is not an integer or out of range\r\n",
        ),
    ];
    for c in [&mut p, &mut d] {
        assert_eq!(c.cmd(&[b"CLIENT", b"SETNAME", b"kept"]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&[b"SELECT", b"3"]).await, b"+OK\r\n");
    }
    for (args, want) in cases {
        let (got, direct) = (p.cmd(args).await, d.cmd(args).await);
        assert_eq!(printable(&got), printable(&direct), "{}", cmd_text(args));
        assert_eq!(
            printable(&got),
            printable(want.as_bytes()),
            "{}",
            cmd_text(args)
        );
    }
    assert_eq!(p.cmd(&[b"CLIENT", b"GETNAME"]).await, resp_bulk(b"kept"));
    assert_eq!(p.cmd(&[b"SET", b"here", b"1"]).await, b"+OK\r\n");
    assert_eq!(
        d.cmd(&[b"GET", b"here"]).await,
        resp_bulk(b"1"),
        "still db 3"
    );
    proxy.shutdown().await;
}

// Standalone only: on a cluster INFO is one node's (its port, its keyspace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_is_redis_info_of_the_upstream() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    let info = c.cmd(&[b"INFO", b"server"]).await;
    let text = String::from_utf8_lossy(&info).into_owned();
    assert!(text.starts_with('$'), "{text}");
    let fields = parse_info(&text);
    assert!(
        fields
            .get("redis_version")
            .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit())),
        "{text}"
    );
    assert_eq!(
        fields.get("tcp_port").map(String::as_str),
        Some(redis.port().to_string().as_str()),
        "INFO must come from the upstream Redis: {text}"
    );
    let keyspace = c.cmd(&[b"INFO", b"keyspace"]).await;
    let text = String::from_utf8_lossy(&keyspace).into_owned();
    assert!(text.contains("db0:keys=1,"), "{text}");
    let all = c.cmd(&[b"INFO"]).await;
    let text = String::from_utf8_lossy(&all).into_owned();
    for section in ["# Server", "# Clients", "# Memory", "# Stats", "# Keyspace"] {
        assert!(text.contains(section), "INFO lacks {section}: {text}");
    }
    proxy.shutdown().await;
}

async fn bb8_redis_pool_through_the_proxy(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let pool = bb8_pool(proxy.local_addr(), 0, 4).await;

    let mut tasks = Vec::new();
    for t in 0..8 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.get().await.expect("pool.get");
            let k = |s: &str| format!("t{t}:{s}");
            let pong: String = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
            assert_eq!(pong, "PONG");
            let none: Option<String> = conn.get(k("missing")).await.unwrap();
            assert_eq!(none, None);
            let () = conn.set(k("s"), format!("v{t}")).await.unwrap();
            let got: Option<String> = conn.get(k("s")).await.unwrap();
            assert_eq!(got, Some(format!("v{t}")));
            // SET NX on an existing key: nil (not set); XX on a missing key: nil.
            let nx: Option<String> = redis::cmd("SET")
                .arg(k("s"))
                .arg("other")
                .arg("NX")
                .query_async(&mut *conn)
                .await
                .unwrap();
            assert_eq!(nx, None);
            let xx: Option<String> = redis::cmd("SET")
                .arg(k("absent"))
                .arg("x")
                .arg("XX")
                .query_async(&mut *conn)
                .await
                .unwrap();
            assert_eq!(xx, None);
            let () = redis::cmd("SET")
                .arg(k("ex"))
                .arg("1")
                .arg("EX")
                .arg(100)
                .query_async(&mut *conn)
                .await
                .unwrap();
            let ttl: i64 = redis::cmd("TTL")
                .arg(k("ex"))
                .query_async(&mut *conn)
                .await
                .unwrap();
            assert!((99..=100).contains(&ttl), "ttl {ttl}");
            let () = redis::cmd("SET")
                .arg(k("px"))
                .arg("1")
                .arg("PX")
                .arg(100_000)
                .query_async(&mut *conn)
                .await
                .unwrap();
            let pttl: i64 = redis::cmd("PTTL")
                .arg(k("px"))
                .query_async(&mut *conn)
                .await
                .unwrap();
            assert!((90_000..=100_000).contains(&pttl), "pttl {pttl}");
            let set: bool = conn.expire(k("s"), 50).await.unwrap();
            assert!(set);
            let set: bool = conn.expire(k("missing"), 50).await.unwrap();
            assert!(!set);
            let ttl: i64 = redis::cmd("TTL")
                .arg(k("s"))
                .query_async(&mut *conn)
                .await
                .unwrap();
            assert!((49..=50).contains(&ttl), "ttl {ttl}");
            let exists: bool = conn.exists(k("s")).await.unwrap();
            assert!(exists);
            let n: i64 = redis::cmd("EXISTS")
                .arg(&[k("s"), k("ex"), k("missing")])
                .query_async(&mut *conn)
                .await
                .unwrap();
            assert_eq!(n, 2);
            let n: usize = conn.del(&[k("ex"), k("missing")]).await.unwrap();
            assert_eq!(n, 1);
            let exists: bool = conn.exists(k("ex")).await.unwrap();
            assert!(!exists);

            let () = conn
                .hset_multiple(k("h"), &[("a", "1"), ("b", "2")])
                .await
                .unwrap();
            let n: usize = conn.hset(k("h"), "c", "3").await.unwrap();
            assert_eq!(n, 1);
            let a: Option<String> = conn.hget(k("h"), "a").await.unwrap();
            assert_eq!(a, Some("1".to_string()));
            let zz: Option<String> = conn.hget(k("h"), "zz").await.unwrap();
            assert_eq!(zz, None);
            let all: HashMap<String, String> = conn.hgetall(k("h")).await.unwrap();
            assert_eq!(
                all,
                HashMap::from([
                    ("a".to_string(), "1".to_string()),
                    ("b".to_string(), "2".to_string()),
                    ("c".to_string(), "3".to_string()),
                ])
            );

            let n: usize = conn.lpush(k("l"), &["b", "a"]).await.unwrap();
            assert_eq!(n, 2);
            let n: usize = conn.rpush(k("l"), &["c", "d"]).await.unwrap();
            assert_eq!(n, 4);
            let first: String = conn.lpop(k("l"), None).await.unwrap();
            assert_eq!(first, "a");
            let last: String = conn.rpop(k("l"), None).await.unwrap();
            assert_eq!(last, "d");
            let n: usize = conn.llen(k("l")).await.unwrap();
            assert_eq!(n, 2);
            let rest: Vec<String> = conn.lrange(k("l"), 0, -1).await.unwrap();
            assert_eq!(rest, ["b", "c"]);
            let none: Option<String> = conn.lpop(k("nolist"), None).await.unwrap();
            assert_eq!(none, None);

            let n: usize = conn.sadd(k("set"), &["x", "y", "z", "x"]).await.unwrap();
            assert_eq!(n, 3);
            let n: usize = conn.srem(k("set"), &["y", "nope"]).await.unwrap();
            assert_eq!(n, 1);
            let members: HashSet<String> = conn.smembers(k("set")).await.unwrap();
            assert_eq!(members, HashSet::from(["x".to_string(), "z".to_string()]));
            let n: usize = conn.scard(k("set")).await.unwrap();
            assert_eq!(n, 2);

            // A server error comes back as an error, and the connection keeps working.
            let err = conn.get::<_, String>(k("h")).await.unwrap_err();
            assert_eq!(err.code(), Some("WRONGTYPE"), "{err}");
            let got: String = conn.get(k("s")).await.unwrap();
            assert_eq!(got, format!("v{t}"));
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("bb8 task timed out")
            .expect("bb8 task panicked");
    }

    // Typed SCAN iteration with MATCH/COUNT sees every task's hash, nothing else.
    let mut conn = pool.get().await.unwrap();
    let mut cursor: u64 = 0;
    let mut keys = HashSet::new();
    for _ in 0..1000 {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("t*:h")
            .arg("COUNT")
            .arg(3)
            .query_async(&mut *conn)
            .await
            .unwrap();
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(cursor, 0, "SCAN did not finish");
    let expected: HashSet<String> = (0..8).map(|t| format!("t{t}:h")).collect();
    assert_eq!(keys, expected);
    drop(conn);

    // What the pool wrote is in client db 0's upstream, as Redis sees it.
    let mut direct = up.direct(0).await;
    for t in 0..8 {
        assert_eq!(
            direct.cmd(&[b"GET", format!("t{t}:s").as_bytes()]).await,
            resp_bulk(format!("v{t}").as_bytes())
        );
        assert_eq!(
            direct.cmd(&[b"LLEN", format!("t{t}:l").as_bytes()]).await,
            b":2\r\n"
        );
    }
    drop(pool);
    proxy.shutdown().await;
}

async fn redis_cli_output_matches_redis(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let pport = proxy.local_addr().port();
    let rport = up.reference_port();
    let scripts: &[&[&str]] = &[
        &["PING"],
        &["GET", "missing"],
        &["SET", "k", "hello world"],
        &["GET", "k"],
        &["SET", "k", "x", "NX"],
        &["SET", "k", "x", "XX", "GET"],
        &["SET", "e", "1", "EX", "100"],
        &["TTL", "e"],
        &["SET", "p", "1", "PX", "100000"],
        &["TTL", "p"],
        &["EXPIRE", "k", "77"],
        &["TTL", "k"],
        &["EXISTS", "k", "e", "nope"],
        &["DEL", "e", "nope"],
        &["HSET", "h", "f", "v", "g", "w"],
        &["HGET", "h", "g"],
        &["HGETALL", "h"],
        &["LPUSH", "l", "1", "2", "3"],
        &["RPUSH", "l", "4"],
        &["LPOP", "l"],
        &["RPOP", "l"],
        &["LLEN", "l"],
        &["SADD", "s", "1", "2", "3"],
        &["SREM", "s", "2"],
        &["SMEMBERS", "s"],
        &["SCARD", "s"],
        &["GET", "h"],
        &["SCAN", "0", "MATCH", "nomatch*", "COUNT", "100"],
    ];
    for args in scripts {
        let (p, pstatus) = cli(pport, args).await;
        let mut direct_args = vec!["-n", "15"];
        direct_args.extend_from_slice(args);
        let (d, dstatus) = cli(rport, &direct_args).await;
        let (p, d) = (kind.comparable_cli(args, &p), kind.comparable_cli(args, &d));
        assert_eq!(p, d, "redis-cli {args:?}: proxy vs Redis output");
        assert_eq!(
            pstatus.code(),
            dstatus.code(),
            "redis-cli {args:?}: exit code"
        );
    }
    assert_eq!(cli(pport, &["PING"]).await.0, "PONG\n");
    assert_eq!(cli(pport, &["GET", "k"]).await.0, "x\n");
    assert_eq!(cli(pport, &["HGET", "h", "f"]).await.0, "v\n");
    let wrongtype = cli(pport, &["GET", "h"]).await.0;
    assert!(wrongtype.contains("WRONGTYPE"), "{wrongtype:?}");

    // --scan: SCAN with MATCH, iterated by redis-cli.
    for i in 0..50 {
        let (out, _) = cli(pport, &["SET", &format!("scan:{i}"), "v"]).await;
        assert_eq!(out, "OK\n");
    }
    let (out, status) = cli(pport, &["--scan", "--pattern", "scan:*"]).await;
    assert!(status.success(), "redis-cli --scan: {out}");
    let got: HashSet<&str> = out.lines().collect();
    let want: HashSet<String> = (0..50).map(|i| format!("scan:{i}")).collect();
    assert_eq!(got, want.iter().map(String::as_str).collect::<HashSet<_>>());

    let (info, status) = cli(pport, &["INFO", "server"]).await;
    assert!(status.success());
    assert!(
        info.lines().any(|l| up
            .ports()
            .iter()
            .any(|port| l.trim_end() == format!("tcp_port:{port}"))),
        "redis-cli INFO through the proxy shows the upstream: {info}"
    );

    // -n 3 sends SELECT 3 through the proxy: the write lands in client db 3's upstream.
    let (out, _) = cli(pport, &["-n", "3", "SET", "in3", "yes"]).await;
    assert_eq!(out, "OK\n");
    assert_eq!(
        up.direct(3).await.cmd(&[b"GET", b"in3"]).await,
        resp_bulk(b"yes")
    );
    assert_eq!(up.direct(0).await.cmd(&[b"GET", b"in3"]).await, b"$-1\r\n");
    let started = Instant::now();
    proxy.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(10));
}
