//! AUTH, CLIENT INFO and a lost subscriber connection behave as on Redis (found by
//! redis-py's own test suite, see docs/compatibility.md).

mod support;

use std::time::Duration;

use support::{proxy_config, resp_cmd, start_proxy, AsyncRawClient, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_without_any_password_answers_like_redis() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    for args in [
        &[&b"AUTH"[..], b"x"][..],
        &[b"AUTH", b"default", b"anything"],
        &[b"AUTH", b"nobody", b"pw"],
        &[b"HELLO", b"2", b"AUTH", b"nobody", b"pw"],
    ] {
        let want = direct.cmd(args).await;
        assert_eq!(
            c.cmd(args).await,
            want,
            "{}",
            String::from_utf8_lossy(&want)
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_info_has_redis_fields_for_this_session() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"CLIENT", b"SETNAME", b"me"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SELECT", b"3"]).await, b"+OK\r\n");
    let info = String::from_utf8_lossy(&c.cmd(&[b"CLIENT", b"INFO"]).await).into_owned();
    for field in ["name=me ", "db=3 ", "user=default ", "resp=2 "] {
        assert!(info.contains(field), "{field} missing in {info}");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_upstream_dies_is_disconnected() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut sub = AsyncRawClient::connect(proxy.local_addr()).await;
    assert!(sub.cmd(&[b"SUBSCRIBE", b"ch"]).await.starts_with(b"*3"));
    // Kill the subscriber's upstream connection from a direct client.
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    direct
        .send(&resp_cmd(&[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]))
        .await;
    assert!(direct.read_reply().await.starts_with(b":"));
    // Like a direct Redis connection: the client's connection closes (no
    // error message posing as a pub/sub message).
    sub.set_timeout(Duration::from_secs(5));
    assert!(sub.read_until_closed().await.is_empty());
    proxy.shutdown().await;
}
