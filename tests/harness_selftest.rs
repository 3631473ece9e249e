//! Tests of the test harness itself (tests/support), against a real redis-server only.

mod support;

use std::time::Duration;

use support::{
    free_port, redis_cli, resp_array, resp_bulk, resp_cmd, resp_frame_len, AsyncRawClient,
    RawClient, RedisServer,
};

#[test]
fn redis_server_starts_and_answers_ping() {
    let redis = RedisServer::start();
    assert_ne!(redis.port(), 0);
    assert_eq!(redis.addr().port(), redis.port());
    let mut c = RawClient::connect(redis.addr());
    assert_eq!(c.cmd(&[b"PING"]), b"+PONG\r\n");
    assert_eq!(c.cmd(&[b"ECHO", b"hi"]), b"$2\r\nhi\r\n");
}

#[test]
fn raw_client_reads_arrays_nested_arrays_and_nil() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    assert_eq!(c.cmd(&[b"RPUSH", b"l", b"a", b"bb", b"ccc"]), b":3\r\n");
    assert_eq!(
        c.cmd(&[b"LRANGE", b"l", b"0", b"-1"]),
        resp_array(&[resp_bulk(b"a"), resp_bulk(b"bb"), resp_bulk(b"ccc")])
    );
    // Nil bulk and empty array.
    assert_eq!(c.cmd(&[b"GET", b"missing"]), b"$-1\r\n");
    assert_eq!(c.cmd(&[b"LRANGE", b"nope", b"0", b"-1"]), b"*0\r\n");
    // Nested: EXEC returns an array whose second element is an array.
    assert_eq!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"LLEN", b"l"]), b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"LRANGE", b"l", b"0", b"1"]), b"+QUEUED\r\n");
    assert_eq!(
        c.cmd(&[b"EXEC"]),
        b"*2\r\n:3\r\n*2\r\n$1\r\na\r\n$2\r\nbb\r\n".to_vec()
    );
    // Error replies are one frame too.
    let err = c.cmd(&[b"LPUSH"]);
    assert!(
        err.starts_with(b"-ERR"),
        "{:?}",
        String::from_utf8_lossy(&err)
    );
}

#[test]
fn raw_client_splits_pipelined_replies_and_reads_resp3() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    let mut pipeline = resp_cmd(&[b"SET", b"k", b"v"]);
    pipeline.extend(resp_cmd(&[b"GET", b"k"]));
    pipeline.extend(resp_cmd(&[b"HSET", b"h", b"f1", b"x", b"f2", b"y"]));
    pipeline.extend(resp_cmd(&[b"PING"]));
    c.send(&pipeline);
    assert_eq!(
        c.read_replies(4),
        vec![
            b"+OK\r\n".to_vec(),
            b"$1\r\nv\r\n".to_vec(),
            b":2\r\n".to_vec(),
            b"+PONG\r\n".to_vec()
        ]
    );
    // RESP3: HELLO 3 replies with a map; HGETALL then returns a map, GET of a missing key _.
    let hello = c.cmd(&[b"HELLO", b"3"]);
    assert!(
        hello.starts_with(b"%"),
        "{:?}",
        String::from_utf8_lossy(&hello)
    );
    let map = c.cmd(&[b"HGETALL", b"h"]);
    assert!(
        map.starts_with(b"%2\r\n"),
        "{:?}",
        String::from_utf8_lossy(&map)
    );
    assert_eq!(resp_frame_len(&map), Ok(Some(map.len())));
    assert_eq!(c.cmd(&[b"GET", b"missing"]), b"_\r\n");
    assert_eq!(c.cmd(&[b"PING"]), b"+PONG\r\n");
    c.assert_no_reply(Duration::from_millis(100));
}

#[test]
fn read_until_closed_returns_the_last_bytes() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    c.send(&resp_cmd(&[b"QUIT"]));
    assert_eq!(c.read_until_closed(), b"+OK\r\n");
}

#[test]
fn restart_keeps_the_port_and_starts_empty() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    assert_eq!(redis.client().cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    redis.restart();
    assert_eq!(redis.port(), port);
    let mut c = redis.client();
    assert_eq!(c.cmd(&[b"PING"]), b"+PONG\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]), b"$-1\r\n");

    // After a SIGKILL the old connection is dead and a restart brings it back.
    redis.kill();
    assert!(!redis.is_running());
    assert!(c.try_read_reply().is_err());
    redis.restart();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.client().cmd(&[b"PING"]), b"+PONG\r\n");
}

#[test]
fn stop_then_restart() {
    let mut redis = RedisServer::start();
    redis.stop();
    assert!(!redis.is_running());
    assert!(RawClient::try_connect_timeout(redis.addr(), Duration::from_millis(500)).is_err());
    redis.restart();
    assert_eq!(redis.client().cmd(&[b"PING"]), b"+PONG\r\n");
}

#[test]
fn pause_and_resume() {
    let mut redis = RedisServer::start();
    let mut c = redis.client();
    assert_eq!(c.cmd(&[b"PING"]), b"+PONG\r\n");
    redis.pause();
    c.send(&resp_cmd(&[b"PING"]));
    c.assert_no_reply(Duration::from_millis(300));
    redis.resume();
    assert_eq!(c.read_reply(), b"+PONG\r\n");
}

#[test]
fn extra_args_are_passed() {
    let redis = RedisServer::start_with_args(&["--requirepass", "s3cret"]);
    let mut c = redis.client();
    let reply = c.cmd(&[b"GET", b"k"]);
    assert!(
        reply.starts_with(b"-NOAUTH"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(c.cmd(&[b"AUTH", b"s3cret"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]), b"$-1\r\n");
}

#[test]
fn redis_cli_works() {
    let redis = RedisServer::start();
    let (out, status) = redis_cli(redis.port(), &["PING"]);
    assert!(status.success());
    assert_eq!(out.trim(), "PONG");
    let (out, status) = redis_cli(redis.port(), &["SET", "k", "hello"]);
    assert!(status.success());
    assert_eq!(out.trim(), "OK");
    let (out, _) = redis.cli(&["GET", "k"]);
    assert_eq!(out.trim(), "hello");
}

#[test]
fn free_port_is_bindable_and_unique() {
    let a = free_port();
    let b = free_port();
    assert_ne!(a, b);
    std::net::TcpListener::bind(("127.0.0.1", a)).expect("free port should be bindable");
}

#[tokio::test]
async fn async_raw_client_works() {
    let redis = RedisServer::start();
    let mut c = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
    let mut pipeline = resp_cmd(&[b"RPUSH", b"l", b"x", b"y"]);
    pipeline.extend(resp_cmd(&[b"LRANGE", b"l", b"0", b"-1"]));
    pipeline.extend(resp_cmd(&[b"GET", b"nil"]));
    c.send(&pipeline).await;
    assert_eq!(
        c.read_replies(3).await,
        vec![
            b":2\r\n".to_vec(),
            b"*2\r\n$1\r\nx\r\n$1\r\ny\r\n".to_vec(),
            b"$-1\r\n".to_vec()
        ]
    );
    c.assert_no_reply(Duration::from_millis(100)).await;
    c.send(&resp_cmd(&[b"QUIT"])).await;
    assert_eq!(c.read_until_closed().await, b"+OK\r\n");
}

#[test]
fn frame_scanner() {
    let ok = |b: &[u8]| resp_frame_len(b);
    // Simple types.
    for f in [
        &b"+OK\r\n"[..],
        b"-ERR x\r\n",
        b":12\r\n",
        b"_\r\n",
        b",1.5\r\n",
        b"#t\r\n",
        b"(123456789012345678901234567890\r\n",
    ] {
        assert_eq!(ok(f), Ok(Some(f.len())), "{f:?}");
    }
    // Bulk-like, nil, empty.
    assert_eq!(ok(b"$3\r\nabc\r\n"), Ok(Some(9)));
    assert_eq!(ok(b"$0\r\n\r\n"), Ok(Some(6)));
    assert_eq!(ok(b"$-1\r\n"), Ok(Some(5)));
    assert_eq!(ok(b"*-1\r\n"), Ok(Some(5)));
    assert_eq!(ok(b"=8\r\ntxt:abcd\r\n"), Ok(Some(14)));
    assert_eq!(ok(b"!5\r\nERR x\r\n"), Ok(Some(11)));
    // Binary bulk containing CRLF.
    assert_eq!(ok(b"$4\r\n\r\n\r\n\r\n"), Ok(Some(10)));
    // Aggregates.
    let nested = b"*2\r\n*1\r\n:1\r\n%1\r\n+k\r\n~2\r\n:1\r\n:2\r\n";
    assert_eq!(ok(nested), Ok(Some(nested.len())));
    let push = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n";
    assert_eq!(ok(push), Ok(Some(push.len())));
    // Attribute followed by the real reply.
    let attr = b"|1\r\n+key\r\n:1\r\n*1\r\n:7\r\n";
    assert_eq!(ok(attr), Ok(Some(attr.len())));
    // Only the first frame is measured.
    assert_eq!(ok(b"+A\r\n+B\r\n"), Ok(Some(4)));
    // Incomplete frames at every cut point.
    for cut in 0..nested.len() {
        assert_eq!(ok(&nested[..cut]), Ok(None), "cut at {cut}");
    }
    assert_eq!(ok(b"$3\r\nabc"), Ok(None));
    // Junk.
    assert!(ok(b"hello\r\n").is_err());
    assert!(ok(b"$x\r\n").is_err());
    assert!(ok(b"$-2\r\n").is_err());
    assert!(ok(b"$3\r\nabcd\r\n").is_err());
}

#[test]
fn drop_kills_even_a_paused_server() {
    let mut redis = RedisServer::start();
    let pid = redis.pid().expect("pid");
    let addr = redis.addr();
    redis.pause();
    drop(redis);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "redis-server {pid} survived drop"
    );
    assert!(RawClient::try_connect_timeout(addr, Duration::from_millis(500)).is_err());
}
