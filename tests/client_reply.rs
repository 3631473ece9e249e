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
        for _ in 0..4 {
            replies.extend(c.read_reply().await);
        }
        c.assert_no_reply(Duration::from_millis(200)).await;
        got.push(replies);
    }
    assert_eq!(
        got[1],
        b"+OK\r\n$1\r\n1\r\n$1\r\n2\r\n$4\r\nseen\r\n".to_vec(),
        "{}",
        String::from_utf8_lossy(&got[1])
    );
    assert_eq!(got[0], got[1]);
    proxy.shutdown().await;
}
