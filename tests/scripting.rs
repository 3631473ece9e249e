//! Lua scripts and functions through the proxy: EVAL/EVALSHA/EVAL_RO, SCRIPT,
//! FUNCTION/FCALL, NOSCRIPT unchanged so clients' EVALSHA fallback works — also
//! for a database that lives on another Redis server (its own script cache).

mod support;

use std::time::Duration;

use support::{proxy_config, redis_rs_conn, start_proxy, AsyncRawClient, RedisServer};

const SCRIPT: &[u8] = b"return redis.call('INCRBY', KEYS[1], ARGV[1])";

fn sha(reply: &[u8]) -> Vec<u8> {
    // $40\r\n<sha>\r\n
    reply[5..45].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evalsha_noscript_and_fallback_match_redis() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&[b"SELECT", b"15"]).await, b"+OK\r\n");

    // Unknown sha: NOSCRIPT exactly as Redis words it.
    let unknown = b"ffffffffffffffffffffffffffffffffffffffff";
    let want = direct.cmd(&[b"EVALSHA", unknown, b"1", b"k", b"1"]).await;
    assert!(want.starts_with(b"-NOSCRIPT"));
    assert_eq!(c.cmd(&[b"EVALSHA", unknown, b"1", b"k", b"1"]).await, want);

    let loaded = c.cmd(&[b"SCRIPT", b"LOAD", SCRIPT]).await;
    let s = sha(&loaded);
    assert_eq!(c.cmd(&[b"SCRIPT", b"EXISTS", &s]).await, b"*1\r\n:1\r\n");
    assert_eq!(
        c.cmd(&[b"EVALSHA", &s, b"1", b"counter", b"5"]).await,
        b":5\r\n"
    );
    assert_eq!(
        c.cmd(&[b"EVAL", SCRIPT, b"1", b"counter", b"2"]).await,
        b":7\r\n"
    );
    assert_eq!(
        c.cmd(&[
            b"EVAL_RO",
            b"return redis.call('GET', KEYS[1])",
            b"1",
            b"counter"
        ])
        .await,
        b"$1\r\n7\r\n"
    );
    // A write in EVAL_RO is refused by Redis, and the refusal reaches the client.
    let ro = c.cmd(&[b"EVAL_RO", SCRIPT, b"1", b"counter", b"1"]).await;
    assert!(ro.starts_with(b"-"), "{}", String::from_utf8_lossy(&ro));

    // Functions (Redis 7).
    let lib = b"#!lua name=sidecar\nredis.register_function('double', function(keys, args) return args[1] * 2 end)";
    assert_eq!(
        c.cmd(&[b"FUNCTION", b"LOAD", b"REPLACE", lib]).await,
        b"$7\r\nsidecar\r\n"
    );
    assert_eq!(c.cmd(&[b"FCALL", b"double", b"0", b"21"]).await, b":42\r\n");

    // redis-rs's Script: EVALSHA first, EVAL on NOSCRIPT, through the proxy.
    assert_eq!(c.cmd(&[b"SCRIPT", b"FLUSH"]).await, b"+OK\r\n");
    let mut conn = redis_rs_conn(proxy.local_addr(), 0, Duration::from_secs(5)).await;
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let v: i64 = script
        .key("rs")
        .arg(3)
        .invoke_async(&mut conn)
        .await
        .expect("invoke");
    assert_eq!(v, 3);
    let v: i64 = script
        .key("rs")
        .arg(4)
        .invoke_async(&mut conn)
        .await
        .expect("invoke");
    assert_eq!(v, 7);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_on_another_server_has_its_own_script_cache() {
    let first = RedisServer::start();
    let second = RedisServer::start();
    let mut config = proxy_config(&first);
    config.databases[5].upstream.port = second.port();
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let s = sha(&c.cmd(&[b"SCRIPT", b"LOAD", SCRIPT]).await);
    assert_eq!(c.cmd(&[b"EVALSHA", &s, b"1", b"k", b"1"]).await, b":1\r\n");
    assert_eq!(c.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    // Not loaded on the second server: NOSCRIPT reaches the client unchanged...
    let r = c.cmd(&[b"EVALSHA", &s, b"1", b"k", b"1"]).await;
    assert!(
        r.starts_with(b"-NOSCRIPT"),
        "{}",
        String::from_utf8_lossy(&r)
    );
    // ...so the client's fallback (EVAL) works, and then EVALSHA does.
    assert_eq!(c.cmd(&[b"EVAL", SCRIPT, b"1", b"k", b"1"]).await, b":1\r\n");
    assert_eq!(c.cmd(&[b"EVALSHA", &s, b"1", b"k", b"1"]).await, b":2\r\n");
    let mut direct = AsyncRawClient::connect(second.addr()).await;
    assert_eq!(direct.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"k"]).await, b"$1\r\n2\r\n");
    proxy.shutdown().await;
}
