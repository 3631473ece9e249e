//! `key_prefix` on a standalone upstream: the 11 AutoBot databases all mapped to
//! upstream db 0, each with its own prefix (`main:`, `knowledge:` …), through a
//! real redis-server. Each database sees only its keys, unprefixed; Redis holds
//! them as `prefix:key`.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use redis_sidecar::config::Config;
use support::{proxy_config, resp_cmd, start_proxy, AsyncRawClient, RedisServer, DATABASE_NAMES};

/// The proxy with every database on upstream db 0 under `<name>:`.
async fn prefixed_proxy(redis: &RedisServer) -> redis_sidecar::server::Proxy {
    let mut config = proxy_config(redis);
    for db in &mut config.databases {
        db.upstream.db = 0;
        db.upstream.key_prefix = Some(Bytes::from(format!("{}:", db.name())));
    }
    start_proxy(config).await
}

async fn client(proxy: &redis_sidecar::server::Proxy, db: usize) -> AsyncRawClient {
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    c.set_timeout(Duration::from_secs(20));
    let n = db.to_string();
    assert_eq!(c.cmd(&[b"SELECT", n.as_bytes()]).await, b"+OK\r\n");
    c
}

async fn direct(redis: &RedisServer) -> AsyncRawClient {
    let mut c = AsyncRawClient::connect(redis.addr()).await;
    c.set_timeout(Duration::from_secs(20));
    c
}

fn value(reply: &[u8]) -> Value {
    redis::parse_redis_value(reply)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(reply)))
}

/// The bulk strings of an array reply (nested arrays flattened).
fn strings(reply: &[u8]) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => out.push(s.clone()),
            Value::Array(items) | Value::Set(items) => items.iter().for_each(|i| walk(i, out)),
            Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
                walk(k, out);
                walk(v, out)
            }),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&value(reply), &mut out);
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A full SCAN loop with extra arguments; every key returned, in order.
async fn scan_all(c: &mut AsyncRawClient, extra: &[&[u8]]) -> Vec<String> {
    let mut cursor = b"0".to_vec();
    let mut keys = Vec::new();
    for _ in 0..100_000 {
        let mut args: Vec<&[u8]> = vec![b"SCAN", &cursor];
        args.extend_from_slice(extra);
        let reply = c.cmd(&args).await;
        let Value::Array(parts) = value(&reply) else {
            panic!("SCAN reply {}", String::from_utf8_lossy(&reply));
        };
        let (Value::BulkString(next), Value::Array(batch)) = (&parts[0], &parts[1]) else {
            panic!("SCAN reply shape");
        };
        for k in batch {
            if let Value::BulkString(k) = k {
                keys.push(String::from_utf8_lossy(k).into_owned());
            }
        }
        if next == b"0" {
            return keys;
        }
        cursor = next.clone();
    }
    panic!("SCAN did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_databases_on_one_upstream_db_are_isolated() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    let mut clients = Vec::new();
    for i in 0..11 {
        let mut c = client(&proxy, i).await;
        let v = format!("v{i}");
        assert_eq!(c.cmd(&[b"SET", b"shared", v.as_bytes()]).await, b"+OK\r\n");
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let v = format!("v{i}");
        assert_eq!(strings(&c.cmd(&[b"GET", b"shared"]).await), [v]);
        assert_eq!(strings(&c.cmd(&[b"KEYS", b"*"]).await), ["shared"]);
        assert_eq!(c.cmd(&[b"DBSIZE"]).await, b":1\r\n");
    }
    // Redis holds them as `prefix:key`, all in db 0.
    let mut d = direct(&redis).await;
    for (i, name) in DATABASE_NAMES.iter().enumerate() {
        let k = format!("{name}:shared");
        assert_eq!(
            strings(&d.cmd(&[b"GET", k.as_bytes()]).await),
            [format!("v{i}")]
        );
    }
    assert_eq!(d.cmd(&[b"DBSIZE"]).await, b":11\r\n");
    // A key written via db 1 is invisible via db 2.
    assert_eq!(clients[1].cmd(&[b"SET", b"only1", b"x"]).await, b"+OK\r\n");
    assert_eq!(clients[2].cmd(&[b"GET", b"only1"]).await, b"$-1\r\n");
    assert_eq!(clients[2].cmd(&[b"EXISTS", b"only1"]).await, b":0\r\n");
    assert_eq!(clients[1].cmd(&[b"DEL", b"shared"]).await, b":1\r\n");
    assert_eq!(strings(&clients[2].cmd(&[b"GET", b"shared"]).await), ["v2"]);
    assert_eq!(strings(&d.cmd(&[b"GET", b"knowledge:only1"]).await), ["x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_scan_name_every_key_once_without_the_prefix() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    let mut c = client(&proxy, 1).await;
    let mut noise = client(&proxy, 2).await;
    // 2,000 keys of ~210 bytes: KEYS' reply (~430 KB) is passed on in parts
    // upstream, so the rewrite gathers it whole.
    let pad = "x".repeat(200);
    let mut want = Vec::new();
    let mut pipeline = Vec::new();
    for i in 0..2000 {
        let k = format!("k{i:04}:{pad}");
        if i % 2 == 0 {
            pipeline.extend(resp_cmd(&[b"SET", k.as_bytes(), b"v"]));
        } else {
            pipeline.extend(resp_cmd(&[b"HSET", k.as_bytes(), b"f", b"v"]));
        }
        want.push(k);
    }
    c.send(&pipeline).await;
    for _ in 0..2000 {
        let r = c.read_reply().await;
        assert!(r == b"+OK\r\n" || r == b":1\r\n", "{r:?}");
    }
    for i in 0..500 {
        let k = format!("k{i:04}:{pad}");
        noise.cmd(&[b"SET", k.as_bytes(), b"other"]).await;
    }
    let mut d = direct(&redis).await;
    d.cmd(&[b"SET", b"k0000-unprefixed", b"x"]).await;

    let want = sorted(want);
    assert_eq!(sorted(strings(&c.cmd(&[b"KEYS", b"*"]).await)), want);
    let k1: Vec<String> = want
        .iter()
        .filter(|k| k.starts_with("k1"))
        .cloned()
        .collect();
    assert_eq!(sorted(strings(&c.cmd(&[b"KEYS", b"k1*"]).await)), k1);

    let plain = scan_all(&mut c, &[]).await;
    assert_eq!(plain.len(), 2000, "every key exactly once");
    assert_eq!(sorted(plain), want);
    let counted = scan_all(&mut c, &[b"COUNT", b"7"]).await;
    assert_eq!(sorted(counted), want);
    let big = scan_all(&mut c, &[b"COUNT", b"5000"]).await;
    assert_eq!(sorted(big), want, "one SCAN reply of ~430 KB, gathered");
    let matched = scan_all(&mut c, &[b"MATCH", b"k1*", b"COUNT", b"50"]).await;
    assert_eq!(sorted(matched), k1);
    let hashes = scan_all(&mut c, &[b"TYPE", b"hash"]).await;
    let odd: Vec<String> = want
        .iter()
        .filter(|k| k[1..5].parse::<u32>().is_ok_and(|n| n % 2 == 1))
        .cloned()
        .collect();
    assert_eq!(sorted(hashes), odd);
    assert_eq!(c.cmd(&[b"DBSIZE"]).await, b":2000\r\n");
    assert_eq!(noise.cmd(&[b"DBSIZE"]).await, b":500\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomkey_returns_only_keys_of_its_prefix() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    let mut c = client(&proxy, 1).await;
    assert_eq!(c.cmd(&[b"RANDOMKEY"]).await, b"$-1\r\n", "empty");
    let mut other = client(&proxy, 2).await;
    let mut pipeline = Vec::new();
    for i in 0..3000 {
        pipeline.extend(resp_cmd(&[b"SET", format!("o{i}").as_bytes(), b"v"]));
    }
    other.send(&pipeline).await;
    for _ in 0..3000 {
        other.read_reply().await;
    }
    assert_eq!(
        c.cmd(&[b"RANDOMKEY"]).await,
        b"$-1\r\n",
        "others' keys only"
    );
    c.cmd(&[b"SET", b"mine", b"v"]).await;
    for _ in 0..5 {
        // One key in 3,001: found by the SCAN fallback.
        assert_eq!(c.cmd(&[b"RANDOMKEY"]).await, b"$4\r\nmine\r\n");
    }
    let r = strings(&other.cmd(&[b"RANDOMKEY"]).await);
    assert!(r[0].starts_with('o') && !r[0].contains(':'), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop_and_stream_replies_name_unprefixed_keys() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    let mut a = client(&proxy, 3).await;
    let mut b = client(&proxy, 3).await;

    // BLPOP blocked, then served.
    a.send(&resp_cmd(&[b"BLPOP", b"nothing", b"jobs", b"5"]))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.cmd(&[b"RPUSH", b"jobs", b"j1"]).await, b":1\r\n");
    assert_eq!(a.read_reply().await, b"*2\r\n$4\r\njobs\r\n$2\r\nj1\r\n");
    b.cmd(&[b"RPUSH", b"jobs", b"j2", b"j3"]).await;
    assert_eq!(
        a.cmd(&[b"BRPOP", b"jobs", b"1"]).await,
        b"*2\r\n$4\r\njobs\r\n$2\r\nj3\r\n"
    );
    assert_eq!(
        a.cmd(&[b"BLMPOP", b"1", b"2", b"none", b"jobs", b"LEFT"])
            .await,
        b"*2\r\n$4\r\njobs\r\n*1\r\n$2\r\nj2\r\n"
    );
    b.cmd(&[b"RPUSH", b"l2", b"x"]).await;
    assert_eq!(
        a.cmd(&[b"LMPOP", b"1", b"l2", b"RIGHT"]).await,
        b"*2\r\n$2\r\nl2\r\n*1\r\n$1\r\nx\r\n"
    );
    assert_eq!(a.cmd(&[b"LMPOP", b"1", b"l2", b"RIGHT"]).await, b"*-1\r\n");
    b.cmd(&[b"ZADD", b"z", b"1", b"m1", b"2", b"m2"]).await;
    assert_eq!(
        a.cmd(&[b"ZMPOP", b"1", b"z", b"MIN"]).await,
        b"*2\r\n$1\r\nz\r\n*1\r\n*2\r\n$2\r\nm1\r\n$1\r\n1\r\n"
    );
    assert_eq!(
        a.cmd(&[b"BZPOPMAX", b"z", b"1"]).await,
        b"*3\r\n$1\r\nz\r\n$2\r\nm2\r\n$1\r\n2\r\n"
    );
    assert_eq!(a.cmd(&[b"BLPOP", b"jobs", b"0.1"]).await, b"*-1\r\n");

    // Streams.
    b.cmd(&[b"XADD", b"s", b"1-0", b"f", b"v"]).await;
    assert_eq!(
        a.cmd(&[b"XREAD", b"COUNT", b"5", b"STREAMS", b"s", b"0"])
            .await,
        b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    a.send(&resp_cmd(&[
        b"XREAD", b"BLOCK", b"5000", b"STREAMS", b"s", b"$",
    ]))
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.cmd(&[b"XADD", b"s", b"2-0", b"g", b"w"]).await;
    assert_eq!(
        a.read_reply().await,
        b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n2-0\r\n*2\r\n$1\r\ng\r\n$1\r\nw\r\n"
    );
    assert_eq!(
        a.cmd(&[b"XGROUP", b"CREATE", b"s", b"grp", b"0"]).await,
        b"+OK\r\n"
    );
    let r = a
        .cmd(&[
            b"XREADGROUP",
            b"GROUP",
            b"grp",
            b"c1",
            b"COUNT",
            b"1",
            b"STREAMS",
            b"s",
            b">",
        ])
        .await;
    assert!(r.starts_with(b"*1\r\n*2\r\n$1\r\ns\r\n"), "{r:?}");
    let mut d = direct(&redis).await;
    assert_eq!(d.cmd(&[b"XLEN", b"agents:s"]).await, b":2\r\n");
    assert_eq!(
        strings(&a.cmd(&[b"OBJECT", b"ENCODING", b"s"]).await),
        ["stream"]
    );
    assert_eq!(
        strings(&a.cmd(&[b"XINFO", b"STREAM", b"s"]).await)[0],
        "length"
    );
    let usage = a.cmd(&[b"MEMORY", b"USAGE", b"s"]).await;
    assert!(usage.starts_with(b":"), "{usage:?}");
    // Redis's NOGROUP error names the key: as the client named it.
    let nogroup: &[&[u8]] = &[
        b"XREADGROUP",
        b"GROUP",
        b"nogrp",
        b"c1",
        b"STREAMS",
        b"s",
        b">",
    ];
    let through = a.cmd(nogroup).await;
    assert_eq!(
        through,
        d.cmd(nogroup).await,
        "{:?}",
        String::from_utf8_lossy(&through)
    );
    assert!(through.starts_with(b"-NOGROUP"), "{through:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_commands_scripts_sort_and_hash_tags() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    let mut c = client(&proxy, 1).await;
    let mut d = direct(&redis).await;
    assert_eq!(
        c.cmd(&[b"MSET", b"a", b"1", b"b", b"2", b"{user1}:x", b"3"])
            .await,
        b"+OK\r\n"
    );
    assert_eq!(
        strings(&c.cmd(&[b"MGET", b"a", b"b", b"zz", b"{user1}:x"]).await),
        ["1", "2", "3"]
    );
    // The prefix goes in front, outside the hash tag.
    assert_eq!(
        strings(&d.cmd(&[b"GET", b"knowledge:{user1}:x"]).await),
        ["3"]
    );
    assert_eq!(
        strings(
            &c.cmd(&[b"EVAL", b"return redis.call('GET', KEYS[1])", b"1", b"a"])
                .await
        ),
        ["1"]
    );
    c.cmd(&[
        b"EVAL",
        b"return redis.call('SET', KEYS[1], ARGV[1])",
        b"1",
        b"fromlua",
        b"a",
    ])
    .await;
    assert_eq!(
        strings(&d.cmd(&[b"GET", b"knowledge:fromlua"]).await),
        ["a"]
    );
    // SORT … BY / GET patterns and STORE.
    c.cmd(&[b"RPUSH", b"ids", b"1", b"2", b"3"]).await;
    c.cmd(&[b"MSET", b"w_1", b"3", b"w_2", b"1", b"w_3", b"2"])
        .await;
    c.cmd(&[b"MSET", b"o_1", b"one", b"o_2", b"two", b"o_3", b"three"])
        .await;
    assert_eq!(
        strings(
            &c.cmd(&[b"SORT", b"ids", b"BY", b"w_*", b"GET", b"#", b"GET", b"o_*"])
                .await
        ),
        ["2", "two", "3", "three", "1", "one"]
    );
    assert_eq!(
        strings(
            &c.cmd(&[b"SORT", b"ids", b"BY", b"nosort", b"GET", b"o_*"])
                .await
        ),
        ["one", "two", "three"]
    );
    assert_eq!(
        c.cmd(&[b"SORT", b"ids", b"BY", b"w_*", b"STORE", b"sorted"])
            .await,
        b":3\r\n"
    );
    assert_eq!(
        strings(&d.cmd(&[b"LRANGE", b"knowledge:sorted", b"0", b"-1"]).await),
        ["2", "3", "1"]
    );
    assert_eq!(c.cmd(&[b"DEL", b"a", b"b", b"nope"]).await, b":2\r\n");
    assert_eq!(d.cmd(&[b"EXISTS", b"knowledge:a"]).await, b":0\r\n");
    assert_eq!(
        c.cmd(&[b"ZUNIONSTORE", b"u", b"2", b"z1", b"z2"]).await,
        b":0\r\n"
    );
    c.cmd(&[b"SADD", b"s1", b"a", b"b"]).await;
    c.cmd(&[b"SADD", b"s2", b"b"]).await;
    assert_eq!(c.cmd(&[b"SINTERCARD", b"2", b"s1", b"s2"]).await, b":1\r\n");
    assert_eq!(c.cmd(&[b"RENAME", b"s2", b"s3"]).await, b"+OK\r\n");
    assert_eq!(d.cmd(&[b"SCARD", b"knowledge:s3"]).await, b":1\r\n");
    // Transactions: the queued commands are prefixed.
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"t", b"1"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"INCR", b"t"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*2\r\n+OK\r\n:2\r\n");
    assert_eq!(strings(&d.cmd(&[b"GET", b"knowledge:t"]).await), ["2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushdb_and_dbsize_touch_only_their_prefix() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    let mut one = client(&proxy, 1).await;
    let mut two = client(&proxy, 2).await;
    let mut pipeline = Vec::new();
    for i in 0..2500 {
        pipeline.extend(resp_cmd(&[b"SET", format!("k{i}").as_bytes(), b"v"]));
    }
    for c in [&mut one, &mut two] {
        c.send(&pipeline).await;
        for _ in 0..2500 {
            c.read_reply().await;
        }
    }
    let mut d = direct(&redis).await;
    d.cmd(&[b"SET", b"bare", b"v"]).await;
    assert_eq!(one.cmd(&[b"DBSIZE"]).await, b":2500\r\n");
    assert_eq!(one.cmd(&[b"FLUSHDB"]).await, b"+OK\r\n");
    assert_eq!(one.cmd(&[b"DBSIZE"]).await, b":0\r\n");
    assert_eq!(one.cmd(&[b"KEYS", b"*"]).await, b"*0\r\n");
    assert_eq!(two.cmd(&[b"DBSIZE"]).await, b":2500\r\n");
    assert_eq!(d.cmd(&[b"DBSIZE"]).await, b":2501\r\n");
    assert_eq!(two.cmd(&[b"FLUSHDB", b"ASYNC"]).await, b"+OK\r\n");
    assert_eq!(d.cmd(&[b"DBSIZE"]).await, b":1\r\n");
    // Redis's own refusal for a bad argument, nothing flushed.
    two.cmd(&[b"SET", b"kept", b"v"]).await;
    let r = two.cmd(&[b"FLUSHDB", b"NOW"]).await;
    assert!(r.starts_with(b"-ERR"), "{r:?}");
    assert_eq!(d.cmd(&[b"DBSIZE"]).await, b":2\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commands_name_themselves() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    let mut c = client(&proxy, 1).await;
    let mut d = direct(&redis).await;
    d.cmd(&[b"SET", b"bare", b"v"]).await;
    assert_eq!(
        c.cmd(&[b"FLUSHALL"]).await,
        b"-ERR 'FLUSHALL' is not supported on a database with key_prefix (it would delete the keys of every database sharing the upstream; use FLUSHDB)\r\n"
    );
    assert_eq!(
        c.cmd(&[b"swapdb", b"1", b"2"]).await,
        b"-ERR 'SWAPDB' is not supported on a database with key_prefix (a database here is a key prefix: keys cannot move between databases)\r\n"
    );
    c.cmd(&[b"SET", b"k", b"v"]).await;
    let moved = c.cmd(&[b"MOVE", b"k", b"2"]).await;
    assert!(
        moved.starts_with(b"-ERR 'MOVE' is not supported"),
        "{moved:?}"
    );
    // Not commands of this Redis (7.0, no modules: its HELLO says so): refused in
    // Redis's own words, byte for byte (found by ioredis's suite), never sent.
    support::upstream_learnt(&mut c).await;
    let long = "x".repeat(100);
    for args in [
        &[&b"NOSUCHCOMMAND"[..], b"k", b"v"][..],
        &[b"nosuch"],
        &[
            "áéűáű".as_bytes(),
            long.as_bytes(),
            long.as_bytes(),
            b"more",
        ],
        &[b"bad\nname", b"a\r\nb"],
        &[b"OBJECT", b"NOSUCH", b"k"],
        &[b"config", b"nosuch\nsub"],
    ] {
        let want = d.cmd(args).await;
        assert!(want.starts_with(b"-ERR unknown "), "{want:?}");
        assert_eq!(
            c.cmd(args).await,
            want,
            "{}",
            String::from_utf8_lossy(&want)
        );
    }
    let tracking = c.cmd(&[b"CLIENT", b"TRACKING", b"on"]).await;
    assert!(
        tracking.starts_with(b"-ERR 'CLIENT' is not supported"),
        "{tracking:?}"
    );
    // Inside MULTI what runs over SCAN: refused while queueing, the
    // transaction is discarded.
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(
        c.cmd(&[b"DBSIZE"]).await,
        b"-ERR 'DBSIZE' inside MULTI is not supported on a database with key_prefix (its reply names keys or it runs over SCAN)\r\n"
    );
    assert_eq!(c.cmd(&[b"SET", b"x", b"1"]).await, b"+QUEUED\r\n");
    let r = c.cmd(&[b"EXEC"]).await;
    assert!(r.starts_with(b"-EXECABORT"), "{r:?}");
    assert_eq!(d.cmd(&[b"EXISTS", b"knowledge:x"]).await, b":0\r\n");
    // Inline requests are rewritten too; a container alone gets Redis's error.
    c.send(b"SET inline 1\r\n").await;
    assert_eq!(c.read_reply().await, b"+OK\r\n");
    assert_eq!(strings(&d.cmd(&[b"GET", b"knowledge:inline"]).await), ["1"]);
    c.send(b"KEYS inl*\r\n").await;
    assert_eq!(c.read_reply().await, b"*1\r\n$6\r\ninline\r\n");
    assert_eq!(
        c.cmd(&[b"OBJECT"]).await,
        b"-ERR wrong number of arguments for 'object' command\r\n"
    );
    // Nothing unprefixed was touched.
    assert_eq!(strings(&d.cmd(&[b"GET", b"bare"]).await), ["v"]);
    assert_eq!(strings(&d.cmd(&[b"GET", b"knowledge:k"]).await), ["v"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_sessions_get_rewritten_replies() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    let mut c = client(&proxy, 4).await;
    let hello = c.cmd(&[b"HELLO", b"3"]).await;
    assert!(hello.starts_with(b"%"), "{hello:?}");
    assert_eq!(c.cmd(&[b"RANDOMKEY"]).await, b"_\r\n");
    c.cmd(&[b"XADD", b"s", b"1-0", b"f", b"v"]).await;
    assert_eq!(
        c.cmd(&[b"XREAD", b"STREAMS", b"s", b"0"]).await,
        b"%1\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    assert_eq!(c.cmd(&[b"KEYS", b"*"]).await, b"*1\r\n$1\r\ns\r\n");
    assert_eq!(c.cmd(&[b"RANDOMKEY"]).await, b"$1\r\ns\r\n");
    assert_eq!(
        c.cmd(&[b"SCAN", b"0"]).await,
        b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\ns\r\n"
    );
    c.cmd(&[b"ZADD", b"z", b"1.5", b"m"]).await;
    assert_eq!(
        c.cmd(&[b"BZPOPMIN", b"z", b"1"]).await,
        b"*3\r\n$1\r\nz\r\n$1\r\nm\r\n,1.5\r\n"
    );
    assert_eq!(c.cmd(&[b"DBSIZE"]).await, b":1\r\n");
    // A KEYS reply large enough to come in parts, RESP3.
    let pad = "y".repeat(400);
    let mut pipeline = Vec::new();
    for i in 0..3000 {
        pipeline.extend(resp_cmd(&[b"SET", format!("{pad}{i}").as_bytes(), b"v"]));
    }
    c.send(&pipeline).await;
    for _ in 0..3000 {
        c.read_reply().await;
    }
    let keys = strings(&c.cmd(&[b"KEYS", b"y*"]).await);
    assert_eq!(keys.len(), 3000);
    assert!(keys.iter().all(|k| k.starts_with(&pad)), "unprefixed");
    assert_eq!(
        strings(&c.cmd(&[b"PING"]).await),
        ["PONG"],
        "in step after it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_keeps_its_order_with_rewritten_replies() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    let mut c = client(&proxy, 5).await;
    let cmds: Vec<Vec<&[u8]>> = vec![
        vec![b"SET", b"a", b"1"],
        vec![b"KEYS", b"*"],
        vec![b"RPUSH", b"l", b"x"],
        vec![b"DBSIZE"],
        vec![b"LMPOP", b"1", b"l", b"LEFT"],
        vec![b"GET", b"a"],
        vec![b"RANDOMKEY"],
        vec![b"SCAN", b"0", b"COUNT", b"100"],
        vec![b"FLUSHDB"],
        vec![b"GET", b"a"],
        vec![b"SET", b"b", b"2"],
        vec![b"KEYS", b"*"],
        vec![b"DBSIZE"],
    ];
    let mut bytes = Vec::new();
    for cmd in &cmds {
        bytes.extend(resp_cmd(cmd));
    }
    c.send(&bytes).await;
    let got: Vec<Vec<u8>> = {
        let mut v = Vec::new();
        for _ in 0..cmds.len() {
            v.push(c.read_reply().await);
        }
        v
    };
    let want: Vec<&[u8]> = vec![
        b"+OK\r\n",
        b"*1\r\n$1\r\na\r\n",
        b":1\r\n",
        b":2\r\n",
        b"*2\r\n$1\r\nl\r\n*1\r\n$1\r\nx\r\n",
        b"$1\r\n1\r\n",
        b"$1\r\na\r\n",
        b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\na\r\n",
        b"+OK\r\n",
        b"$-1\r\n",
        b"+OK\r\n",
        b"*1\r\n$1\r\nb\r\n",
        b":1\r\n",
    ];
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            String::from_utf8_lossy(g),
            String::from_utf8_lossy(w),
            "reply {i} to {:?}",
            String::from_utf8_lossy(&cmds[i].concat())
        );
    }
}

/// Generated commands through the proxy (prefixed db) and directly against Redis
/// with the keys prefixed by hand get the same replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_commands_match_redis_with_keys_prefixed_by_hand() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    let mut c = client(&proxy, 6).await;
    let mut d = direct(&redis).await;
    assert_eq!(d.cmd(&[b"SELECT", b"9"]).await, b"+OK\r\n");
    let mut rng = fastrand::Rng::with_seed(10);
    let keys = ["a", "b", "c", "{t}1", "{t}2"];
    let mut mismatches = Vec::new();
    for step in 0..600 {
        let k = |rng: &mut fastrand::Rng| keys[rng.usize(..keys.len())].to_string();
        let (k1, k2, k3) = (k(&mut rng), k(&mut rng), k(&mut rng));
        let n = rng.u8(..20).to_string();
        let cmd: Vec<String> = match rng.u8(..16) {
            0 => vec!["SET".into(), k1, n],
            1 => vec!["GET".into(), k1],
            2 => vec!["MSET".into(), k1, n.clone(), k2, n],
            3 => vec!["MGET".into(), k1, k2, k3],
            4 => vec!["DEL".into(), k1, k2],
            5 => vec!["RPUSH".into(), k1, n],
            6 => vec!["LMPOP".into(), "2".into(), k1, k2, "LEFT".into()],
            7 => vec!["SADD".into(), k1, n],
            8 => vec!["SUNIONSTORE".into(), k1, k2, k3],
            9 => vec!["ZADD".into(), k1, n.clone(), n],
            10 => vec!["ZUNIONSTORE".into(), k1, "2".into(), k2, k3],
            11 => vec!["ZMPOP".into(), "1".into(), k1, "MAX".into()],
            12 => vec!["EXISTS".into(), k1, k2, k3],
            13 => vec!["TYPE".into(), k1],
            14 => vec!["COPY".into(), k1, k2, "REPLACE".into()],
            _ => vec![
                "EVAL".into(),
                "return redis.call('EXISTS', KEYS[1], KEYS[2])".into(),
                "2".into(),
                k1,
                k2,
            ],
        };
        let via_proxy = {
            let args: Vec<&[u8]> = cmd.iter().map(|s| s.as_bytes()).collect();
            c.cmd(&args).await
        };
        let by_hand: Vec<String> = {
            let mut c2 = cmd.clone();
            let (_, info) = redis_sidecar::command::identify(&c2);
            let mut found = redis_sidecar::command::keys::KeyArgs::new();
            redis_sidecar::command::keys::locate(info, &c2, &mut found).expect("locatable");
            for k in found {
                c2[k.index] = format!("sessions:{}", c2[k.index]);
            }
            c2
        };
        let direct_reply = {
            let args: Vec<&[u8]> = by_hand.iter().map(|s| s.as_bytes()).collect();
            d.cmd(&args).await
        };
        // Pop replies name the key: Redis's names carry the prefix.
        let direct_reply =
            String::from_utf8_lossy(&direct_reply).replace("$10\r\nsessions:", "$1\r\n");
        let direct_reply = direct_reply.replace("$13\r\nsessions:{t}", "$4\r\n{t}");
        if String::from_utf8_lossy(&via_proxy) != direct_reply {
            mismatches.push(format!(
                "step {step} {cmd:?}: proxy {:?} direct {direct_reply:?}",
                String::from_utf8_lossy(&via_proxy)
            ));
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    // The same keyspace on both sides.
    let mut proxied = strings(&c.cmd(&[b"KEYS", b"*"]).await);
    proxied.sort();
    let mut by_hand: Vec<String> = strings(&d.cmd(&[b"KEYS", b"sessions:*"]).await)
        .into_iter()
        .map(|k| k["sessions:".len()..].to_string())
        .collect();
    by_hand.sort();
    assert_eq!(proxied, by_hand);
}

// ---- configuration ------------------------------------------------------------------

fn load(yaml: &str) -> Result<Config, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("redis-databases.yaml");
    std::fs::write(&path, yaml).expect("write");
    Config::load_with_env(&path, &|_: &str| None).map_err(|e| e.to_string())
}

#[test]
fn key_prefix_is_configured_per_database_or_as_a_default() {
    let c = load(
        "redis_databases:\n  main: { db: 0, key_prefix: \"main:\" }\n  knowledge: { db: 1, upstream_db: 0 }\nkey_prefix: \"shared:\"\n",
    )
    .expect("valid");
    let prefixes: HashMap<&str, Option<&[u8]>> = c
        .databases
        .iter()
        .map(|d| (d.name(), d.upstream.key_prefix.as_deref()))
        .collect();
    assert_eq!(prefixes["main"], Some(&b"main:"[..]));
    assert_eq!(prefixes["knowledge"], Some(&b"shared:"[..]));
    let report = c.render_masked();
    assert!(report.contains("key_prefix: \"main:\""), "{report}");
    let none = load("redis_databases:\n  main: { db: 0 }\n").expect("valid");
    assert!(none.databases[0].upstream.key_prefix.is_none());
    assert!(!none.render_masked().contains("key_prefix"));
}

#[test]
fn bad_key_prefixes_are_refused_with_file_key_and_line() {
    for (value, words) in [
        ("\"\"", "must not be empty"),
        ("\"a{b}:\"", "must not contain `{`"),
        ("[a]", "expected a string"),
    ] {
        let yaml = format!("redis_databases:\n  main:\n    db: 0\n    key_prefix: {value}\n");
        let err = load(&yaml).expect_err("refused");
        assert!(err.contains("redis_databases.main.key_prefix"), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains(words), "{err}");
        assert!(err.contains(&*Path::new("redis-databases.yaml").display().to_string()));
    }
}

/// Random command sequences (`support::commands`: ~60 commands of every type,
/// transactions, WATCH blocks, whole SCAN loops) get the same replies, byte for
/// byte, through a `key_prefix` database as from Redis on its own keys, RESP2
/// and RESP3. (This found the consumer-group errors and the MULTI refusals
/// below.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_command_sequences_match_redis() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    let (at_redis, at_proxy) = (redis.addr(), proxy.local_addr());
    let played = tokio::task::spawn_blocking(move || {
        for seed in 1..=16u64 {
            let protocol: &[u8] = if seed % 2 == 0 { b"3" } else { b"2" };
            let mut d = support::RawClient::connect(at_redis);
            assert_eq!(d.cmd(&[b"SELECT", b"11"]), b"+OK\r\n");
            let mut p = support::RawClient::connect(at_proxy);
            assert_eq!(p.cmd(&[b"SELECT", b"1"]), b"+OK\r\n");
            for c in [&mut d, &mut p] {
                assert!(!c.cmd(&[b"HELLO", protocol]).starts_with(b"-"));
            }
            support::commands::differ(&mut [d, p], seed, 150, false)?;
        }
        Ok::<(), String>(())
    });
    if let Err(e) = played.await.expect("player") {
        panic!("{e}");
    }
}

/// Every consumer-group command's `-NOGROUP` names the key as the client did
/// (the same bytes as from Redis for the same request on its own keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_group_errors_name_the_key_as_sent() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    let mut a = client(&proxy, 3).await;
    let mut d = direct(&redis).await;
    // Redis's own keys in a db the proxy does not use.
    assert_eq!(d.cmd(&[b"SELECT", b"11"]).await, b"+OK\r\n");
    for c in [&mut a, &mut d] {
        assert_eq!(
            c.cmd(&[b"XADD", b"s", b"1-1", b"f", b"v"]).await,
            b"$3\r\n1-1\r\n"
        );
    }
    let requests: &[&[&[u8]]] = &[
        &[b"XPENDING", b"s", b"g"],
        &[b"XPENDING", b"s", b"g", b"-", b"+", b"10"],
        &[b"XAUTOCLAIM", b"s", b"g", b"c", b"0", b"0"],
        &[b"XCLAIM", b"s", b"g", b"c", b"0", b"1-1"],
        &[b"XGROUP", b"SETID", b"s", b"g", b"0"],
        &[b"XGROUP", b"CREATECONSUMER", b"s", b"g", b"c"],
        &[b"XGROUP", b"DELCONSUMER", b"s", b"g", b"c"],
        &[b"XINFO", b"CONSUMERS", b"s", b"g"],
        &[b"XPENDING", b"missing", b"g"],
        // A group named like a prefixed key stays as named.
        &[b"XGROUP", b"SETID", b"s", b"agents:g", b"0"],
    ];
    for req in requests {
        let through = a.cmd(req).await;
        assert!(
            through.starts_with(b"-NOGROUP"),
            "{:?}",
            String::from_utf8_lossy(&through)
        );
        assert_eq!(
            String::from_utf8_lossy(&through),
            String::from_utf8_lossy(&d.cmd(req).await),
            "{:?}",
            String::from_utf8_lossy(req[0])
        );
    }
}

/// Inside MULTI, the replies that name keys (`KEYS`, `SCAN`, `LMPOP`, `BLPOP`,
/// `XREAD`, a `-NOGROUP` error …) come in EXEC's reply without the prefix, each
/// with the prefix of the database it ran on (a SELECT inside the transaction
/// changes it), among the replies of the commands the proxy answers itself; the
/// same bytes as Redis gives, RESP2 and RESP3. (They were refused.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_inside_multi_name_unprefixed_keys() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    for protocol in [&b"2"[..], b"3"] {
        let mut a = client(&proxy, 1).await;
        let mut d = direct(&redis).await;
        assert_eq!(d.cmd(&[b"SELECT", b"11"]).await, b"+OK\r\n");
        let select_in_multi: &[u8] = b"2";
        let select_direct: &[u8] = b"12";
        let mut replies = Vec::new();
        for (c, other) in [(&mut a, select_in_multi), (&mut d, select_direct)] {
            c.cmd(&[b"HELLO", protocol]).await;
            let steps: Vec<Vec<&[u8]>> = vec![
                vec![b"RPUSH", b"list", b"a", b"b"],
                vec![b"XADD", b"s", b"1-1", b"f", b"v"],
                vec![b"MULTI"],
                vec![b"KEYS", b"l*"],
                vec![b"SCAN", b"0", b"MATCH", b"l*"],
                vec![b"CLIENT", b"SETNAME", b"inside"],
                vec![b"LMPOP", b"1", b"list", b"LEFT"],
                vec![b"BLPOP", b"list", b"0"],
                vec![b"XREAD", b"STREAMS", b"s", b"0"],
                vec![b"XPENDING", b"s", b"nogroup"],
                vec![b"SELECT", other],
                vec![b"RPUSH", b"other", b"x"],
                vec![b"BRPOP", b"other", b"0"],
                vec![b"EXEC"],
                vec![b"CLIENT", b"GETNAME"],
            ];
            let mut got = Vec::new();
            for step in &steps {
                got.push(String::from_utf8_lossy(&c.cmd(step).await).into_owned());
            }
            // Clean for the next protocol.
            c.cmd(&[b"DEL", b"list", b"s", b"other"]).await;
            replies.push(got);
        }
        assert_eq!(replies[0], replies[1], "RESP{}", protocol[0] as char);
        let exec = &replies[0][13];
        assert!(
            exec.contains("\r\nlist\r\n") && exec.contains("\r\nother\r\n"),
            "{exec}"
        );
        assert!(
            !exec.contains("knowledge:") && !exec.contains("prompts:"),
            "{exec}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_after_select_inside_multi_get_the_selected_prefix() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    let mut c = client(&proxy, 1).await;
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"before", b"1"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"SELECT", b"2"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"SET", b"after", b"2"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*3\r\n+OK\r\n+OK\r\n+OK\r\n");
    let mut d = direct(&redis).await;
    assert_eq!(strings(&d.cmd(&[b"GET", b"knowledge:before"]).await), ["1"]);
    assert_eq!(strings(&d.cmd(&[b"GET", b"prompts:after"]).await), ["2"]);
    assert_eq!(strings(&c.cmd(&[b"KEYS", b"*"]).await), ["after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_notifications_show_only_this_prefix_unprefixed() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    let mut d = direct(&redis).await;
    assert_eq!(
        d.cmd(&[b"CONFIG", b"SET", b"notify-keyspace-events", b"KEA"])
            .await,
        b"+OK\r\n"
    );
    let mut sub = client(&proxy, 1).await;
    assert_eq!(
        sub.cmd(&[b"PSUBSCRIBE", b"__keyspace@*__:*"]).await,
        b"*3\r\n$10\r\npsubscribe\r\n$16\r\n__keyspace@*__:*\r\n:1\r\n"
    );
    assert_eq!(
        sub.cmd(&[b"SUBSCRIBE", b"__keyevent@0__:set"]).await,
        b"*3\r\n$9\r\nsubscribe\r\n$18\r\n__keyevent@0__:set\r\n:2\r\n"
    );
    let mut other = client(&proxy, 2).await;
    let mut mine = client(&proxy, 1).await;
    other.cmd(&[b"SET", b"k", b"theirs"]).await;
    mine.cmd(&[b"SET", b"k", b"mine"]).await;
    // Only this database's events, in Redis's order (keyspace, then keyevent).
    assert_eq!(
        sub.read_reply().await,
        b"*4\r\n$8\r\npmessage\r\n$16\r\n__keyspace@*__:*\r\n$16\r\n__keyspace@0__:k\r\n$3\r\nset\r\n"
    );
    assert_eq!(
        sub.read_reply().await,
        b"*3\r\n$7\r\nmessage\r\n$18\r\n__keyevent@0__:set\r\n$1\r\nk\r\n"
    );
    sub.send(&resp_cmd(&[b"PUNSUBSCRIBE"])).await;
    assert_eq!(
        sub.read_reply().await,
        b"*3\r\n$12\r\npunsubscribe\r\n$16\r\n__keyspace@*__:*\r\n:1\r\n"
    );
    // Still subscribed (RESP2): refused with Redis's own words.
    assert_eq!(
        String::from_utf8_lossy(&sub.cmd(&[b"KEYS", b"*"]).await),
        "-ERR Can't execute 'keys': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
    );
    // A RESP3 subscriber may send it (Redis would run it): refused, its reply would
    // name prefixed keys in the subscriber connection's stream.
    let mut sub3 = client(&proxy, 1).await;
    assert!(sub3.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%"));
    assert!(sub3.cmd(&[b"SUBSCRIBE", b"c"]).await.starts_with(b">3"));
    assert_eq!(
        sub3.cmd(&[b"KEYS", b"*"]).await,
        b"-ERR 'KEYS' while subscribed is not supported on a database with key_prefix (its reply names keys or it runs over SCAN)\r\n"
    );
}

/// The key positions `command::keys` finds are the ones Redis itself reports
/// (`COMMAND GETKEYS`), for every kind of key spec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn located_keys_match_command_getkeys() {
    use redis_sidecar::command::keys::{locate, KeyKind};
    let redis = RedisServer::start();
    let mut d = direct(&redis).await;
    let corpus: &[&str] = &[
        "GET k",
        "SET k v EX 10 GET",
        "MSET a 1 b 2 c 3",
        "MGET a b c",
        "DEL a b",
        "EVAL s 2 a b x",
        "EVALSHA_RO 0123 1 a x",
        "FCALL f 1 a x",
        "ZUNIONSTORE d 2 a b WEIGHTS 1 2",
        "ZINTER 2 a b",
        "ZDIFFSTORE d 2 a b",
        "LMPOP 2 a b LEFT",
        "BLMPOP 0 2 a b LEFT COUNT 2",
        "ZMPOP 1 a MIN",
        "BZMPOP 0 1 a MIN",
        "SINTERCARD 2 a b LIMIT 1",
        "ZINTERCARD 2 a b",
        "XREAD COUNT 1 STREAMS s1 s2 0 0",
        "XREADGROUP GROUP g c COUNT 1 STREAMS s1 s2 > >",
        "GEORADIUS g 0 0 1 km STORE d",
        "GEORADIUSBYMEMBER g m 1 km STOREDIST d",
        "GEOSEARCHSTORE d s FROMMEMBER m BYRADIUS 1 km",
        "SORT l BY w_* GET o_* LIMIT 0 10 STORE d",
        "SORT_RO l ALPHA",
        "MIGRATE h 1 k 0 5 COPY",
        "OBJECT ENCODING k",
        "MEMORY USAGE k",
        "XINFO STREAM s",
        "XAUTOCLAIM s g c 0 0",
        "BITOP AND d a b",
        "BITFIELD k GET u8 0",
        "LMOVE a b LEFT RIGHT",
        "BLMOVE a b LEFT RIGHT 0",
        "RENAME a b",
        "COPY a b REPLACE",
        "PFMERGE d a b",
        "BLPOP a b 0",
        "BZPOPMIN a b 0",
        "WATCH a b",
        "TOUCH a b",
        "LCS a b",
        "SMOVE a b m",
        "RESTORE k 0 x",
        "GETEX k PERSIST",
    ];
    for line in corpus {
        let args: Vec<&str> = line.split(' ').collect();
        let mut getkeys: Vec<&[u8]> = vec![b"COMMAND", b"GETKEYS"];
        getkeys.extend(args.iter().map(|a| a.as_bytes()));
        let redis_says = strings(&d.cmd(&getkeys).await);
        let (_, info) = redis_sidecar::command::identify(&args);
        let mut found = redis_sidecar::command::keys::KeyArgs::new();
        locate(info, &args, &mut found).expect("locatable");
        let ours: Vec<String> = found
            .iter()
            .filter(|k| k.kind == KeyKind::Key)
            .map(|k| args[k.index].to_string())
            .collect();
        assert_eq!(ours, redis_says, "{line}");
    }
}

#[test]
fn databases_sharing_an_upstream_db_must_keep_their_keys_apart() {
    // Unprefixed sharing (as before key_prefix) and distinct prefixes are fine.
    load("redis_databases:\n  main: { db: 0 }\n  knowledge: { db: 1, upstream_db: 0 }\n")
        .expect("valid");
    load("redis_databases:\n  main: { db: 0, key_prefix: \"a:\" }\n  knowledge: { db: 1, upstream_db: 0, key_prefix: \"b:\" }\n")
        .expect("valid");
    load("redis_databases:\n  main: { db: 0 }\n  knowledge: { db: 1, key_prefix: \"b:\" }\n")
        .expect("valid: different upstream dbs");
    let err = load("redis_databases:\n  main: { db: 0 }\n  knowledge:\n    db: 1\n    upstream_db: 0\n    key_prefix: \"kb:\"\n")
        .expect_err("an unprefixed database would see the other's keys");
    assert!(
        err.contains("`main` (no key_prefix) and `knowledge` (key_prefix \"kb:\") share upstream"),
        "{err}"
    );
    assert!(
        err.contains("redis_databases.knowledge.key_prefix") && err.contains("line 6"),
        "{err}"
    );
    let err = load("redis_databases:\n  main: { db: 0, key_prefix: \"kb:\" }\n  knowledge: { db: 1, upstream_db: 0, key_prefix: \"kb:x:\" }\n")
        .expect_err("overlapping prefixes");
    assert!(err.contains("none the start of another"), "{err}");
}

/// A reload that changes only a database's `key_prefix` takes effect for the next
/// command of a connected client (the database is rebuilt, its connections kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_prefix_for_the_next_command() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    for db in &mut config.databases {
        db.upstream.db = 0;
        db.upstream.key_prefix = Some(Bytes::from(format!("{}:", db.name())));
    }
    let proxy = start_proxy(config.clone()).await;
    let mut c = client(&proxy, 1).await;
    assert_eq!(c.cmd(&[b"SET", b"doc", b"old"]).await, b"+OK\r\n");
    let mut next = config.clone();
    next.databases[1].upstream.key_prefix = Some(Bytes::from_static(b"kb2:"));
    proxy.reload_with(next).await.expect("reload");
    assert_eq!(c.cmd(&[b"SET", b"doc", b"new"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"KEYS", b"*"]).await, b"*1\r\n$3\r\ndoc\r\n");
    let mut d = direct(&redis).await;
    assert_eq!(d.cmd(&[b"GET", b"knowledge:doc"]).await, b"$3\r\nold\r\n");
    assert_eq!(d.cmd(&[b"GET", b"kb2:doc"]).await, b"$3\r\nnew\r\n");
    proxy.shutdown().await;
}

/// `SLOWLOG GET` names the keys as the client sent them: the logged command's
/// key arguments (by the command table) lose the database's prefix, its other
/// arguments stay as they are; Redis logged them prefixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowlog_entries_show_unprefixed_keys() {
    let redis = RedisServer::start();
    let proxy = prefixed_proxy(&redis).await;
    let mut d = direct(&redis).await;
    let set = |d: &'static [u8]| [&b"CONFIG"[..], b"SET", b"slowlog-log-slower-than", d];
    assert_eq!(d.cmd(&set(b"0")).await, b"+OK\r\n");
    assert_eq!(d.cmd(&[b"SLOWLOG", b"RESET"]).await, b"+OK\r\n");
    let mut c = client(&proxy, 1).await;
    assert_eq!(c.cmd(&[b"SET", b"slowk", b"v"]).await, b"+OK\r\n");
    let mset: [&[u8]; 5] = [b"MSET", b"slowa", b"knowledge:x", b"slowb", b"2"];
    assert_eq!(c.cmd(&mset).await, b"+OK\r\n");
    let commands = |reply: &[u8]| -> Vec<Vec<String>> {
        let Value::Array(entries) = value(reply) else {
            panic!("SLOWLOG GET: {}", String::from_utf8_lossy(reply));
        };
        entries
            .iter()
            .filter_map(|e| match e {
                Value::Array(fields) => fields.get(3).map(strings_of),
                _ => None,
            })
            .collect()
    };
    let shown = commands(&c.cmd(&[b"SLOWLOG", b"GET", b"100"]).await);
    let stored = commands(&d.cmd(&[b"SLOWLOG", b"GET", b"100"]).await);
    assert_eq!(d.cmd(&set(b"10000")).await, b"+OK\r\n");
    let has = |log: &[Vec<String>], args: &[&str]| log.iter().any(|a| a == args);
    assert!(has(&shown, &["SET", "slowk", "v"]), "{shown:?}");
    assert!(
        has(&shown, &["MSET", "slowa", "knowledge:x", "slowb", "2"]),
        "values keep what looks like the prefix: {shown:?}"
    );
    assert!(has(&stored, &["SET", "knowledge:slowk", "v"]), "{stored:?}");
    assert!(
        has(
            &stored,
            &[
                "MSET",
                "knowledge:slowa",
                "knowledge:x",
                "knowledge:slowb",
                "2"
            ]
        ),
        "{stored:?}"
    );
    assert!(
        !shown.iter().flatten().any(|a| a == "knowledge:slowk"),
        "{shown:?}"
    );
}

fn strings_of(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => format!("{other:?}"),
            })
            .collect(),
        _ => Vec::new(),
    }
}
