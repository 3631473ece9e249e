//! Large replies are passed on in parts as they arrive (cut-through): the bytes the
//! client gets are still exactly Redis's, in order, whatever their size.

mod support;

use support::{proxy_config, resp_cmd, start_proxy, AsyncRawClient, RedisServer};

/// Reads exactly `n` bytes.
async fn read_exact(c: &mut AsyncRawClient, n: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = vec![0u8; n];
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        c.stream_mut().read_exact(&mut out),
    )
    .await
    .expect("reply in time")
    .expect("read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_replies_arrive_whole_and_in_order() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    // A 300,000-element list (~5 MB as a reply) and a 3 MB string.
    for start in (0..300_000).step_by(50_000) {
        let mut args: Vec<Vec<u8>> = vec![b"RPUSH".to_vec(), b"big".to_vec()];
        args.extend((start..start + 50_000).map(|i| format!("element-{i}").into_bytes()));
        let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
        direct.cmd(&refs).await;
    }
    let blob = vec![b'x'; 3 << 20];
    assert_eq!(direct.cmd(&[b"SET", b"blob", &blob]).await, b"+OK\r\n");
    // A pipeline mixing small and large replies, several times over.
    let mut pipeline = Vec::new();
    for _ in 0..3 {
        pipeline.extend(resp_cmd(&[b"PING"]));
        pipeline.extend(resp_cmd(&[b"LRANGE", b"big", b"0", b"-1"]));
        pipeline.extend(resp_cmd(&[b"GET", b"blob"]));
        pipeline.extend(resp_cmd(&[b"LLEN", b"big"]));
    }
    direct.send(&pipeline).await;
    let expected = direct.read_replies(12).await.concat();
    assert!(expected.len() > 20 << 20);
    // Two clients at once, so parts of their replies interleave on the shared
    // connection's reader.
    let addr = proxy.local_addr();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let pipeline = pipeline.clone();
            let n = expected.len();
            tokio::spawn(async move {
                let mut c = AsyncRawClient::connect(addr).await;
                c.send(&pipeline).await;
                read_exact(&mut c, n).await
            })
        })
        .collect();
    for c in clients {
        let got = c.await.expect("client");
        assert!(got == expected, "a large reply differs from Redis's");
    }
    // Replies off: the parts are dropped, and the next reply is still right.
    let mut c = AsyncRawClient::connect(addr).await;
    c.send(&resp_cmd(&[b"CLIENT", b"REPLY", b"SKIP"])).await;
    c.send(&resp_cmd(&[b"LRANGE", b"big", b"0", b"-1"])).await;
    assert_eq!(c.cmd(&[b"LLEN", b"big"]).await, b":300000\r\n");
    proxy.shutdown().await;
}
