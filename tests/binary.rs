//! Binary safety: keys and values with every byte value, empty values, and values
//! from a few bytes up to 64 MiB go through the proxy and come back identical.

mod support;

use std::time::{Duration, Instant};

use bb8_redis::redis::{self, AsyncCommands};
use support::upstream::{Backend, Upstream};
use support::{
    bb8_pool, bulk_payload, printable, raw_pipeline, redis_rs_conn, resp_bulk, resp_cmd,
    start_proxy, AsyncRawClient,
};

// Each runs against a standalone Redis and a Redis Cluster (`NAME::standalone`,
// `NAME::cluster`).
upstream_tests!(
    every_byte_value_in_keys_and_values,
    values_around_buffer_boundaries_in_one_pipeline,
    one_mebibyte_values_through_a_bb8_pool,
    a_64_mebibyte_value_round_trips,
);

/// Deterministic pseudo-random bytes (xorshift), covering every byte value.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn all_bytes() -> Vec<u8> {
    (0..=255u8).collect()
}

async fn every_byte_value_in_keys_and_values(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = up.direct(0).await;

    let all = all_bytes();
    let tricky: Vec<u8> = b"\r\n*3\r\n$3\r\nSET\r\n-ERR x\r\n+OK\r\n\0\0\r".to_vec();
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"all-bytes".to_vec(), all.clone()),
        (all.clone(), b"value under a key made of all bytes".to_vec()),
        (b"empty".to_vec(), Vec::new()),
        (Vec::new(), b"empty key".to_vec()),
        (tricky.clone(), tricky.clone()),
        (b"nul".to_vec(), vec![0u8; 1000]),
        (b"high".to_vec(), vec![0xffu8; 1000]),
    ];
    for (k, v) in &cases {
        assert_eq!(
            c.cmd(&[b"SET", k, v]).await,
            b"+OK\r\n",
            "SET {}",
            printable(k)
        );
    }
    for (k, v) in &cases {
        assert_eq!(
            c.cmd(&[b"GET", k]).await,
            resp_bulk(v),
            "GET {}",
            printable(k)
        );
        assert_eq!(
            c.cmd(&[b"STRLEN", k]).await,
            format!(":{}\r\n", v.len()).into_bytes()
        );
        // Redis holds exactly these bytes.
        assert_eq!(
            direct.cmd(&[b"GET", k]).await,
            resp_bulk(v),
            "direct GET {}",
            printable(k)
        );
    }
    // Binary members and fields in aggregates, and MGET's nested nil.
    assert_eq!(c.cmd(&[b"HSET", b"hb", &all, &tricky]).await, b":1\r\n");
    assert_eq!(
        c.cmd(&[b"HGETALL", b"hb"]).await,
        [b"*2\r\n".to_vec(), resp_bulk(&all), resp_bulk(&tricky)].concat()
    );
    assert_eq!(
        c.cmd(&[b"MGET", b"all-bytes", b"missing", b"empty"]).await,
        [
            b"*3\r\n".to_vec(),
            resp_bulk(&all),
            b"$-1\r\n".to_vec(),
            resp_bulk(b"")
        ]
        .concat()
    );
    // Each single byte as its own value, pipelined.
    let mut req = Vec::new();
    for b in 0..=255u8 {
        req.extend(resp_cmd(&[b"RPUSH", b"bytes", &[b]]));
    }
    req.extend(resp_cmd(&[b"LRANGE", b"bytes", b"0", b"-1"]));
    c.send(&req).await;
    let replies = c.read_replies(257).await;
    let mut want = b"*256\r\n".to_vec();
    for b in 0..=255u8 {
        assert_eq!(
            replies[b as usize],
            format!(":{}\r\n", b as u32 + 1).into_bytes()
        );
        want.extend(resp_bulk(&[b]));
    }
    assert_eq!(replies[256], want);
    proxy.shutdown().await;
}

async fn values_around_buffer_boundaries_in_one_pipeline(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let sizes = [
        0usize,
        1,
        2,
        4095,
        4096,
        4097,
        16 * 1024 - 1,
        16 * 1024,
        16 * 1024 + 1,
        64 * 1024 - 1,
        64 * 1024,
        64 * 1024 + 1,
        256 * 1024 + 3,
        1024 * 1024,
    ];
    let values: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| noise(n, i as u64 + 1))
        .collect();
    let mut req = Vec::new();
    for (i, v) in values.iter().enumerate() {
        req.extend(resp_cmd(&[b"SET", format!("b{i}").as_bytes(), v]));
    }
    for i in 0..values.len() {
        req.extend(resp_cmd(&[b"GET", format!("b{i}").as_bytes()]));
        req.extend(resp_cmd(&[b"PING"]));
    }
    let replies = raw_pipeline(
        proxy.local_addr(),
        req,
        values.len() * 3,
        Duration::from_secs(30),
    )
    .await;
    for r in &replies[..values.len()] {
        assert_eq!(r, b"+OK\r\n");
    }
    for (i, v) in values.iter().enumerate() {
        let got = &replies[values.len() + 2 * i];
        assert!(
            bulk_payload(got) == *v,
            "value of {} bytes came back different",
            v.len()
        );
        assert_eq!(replies[values.len() + 2 * i + 1], b"+PONG\r\n");
    }
    proxy.shutdown().await;
}

async fn one_mebibyte_values_through_a_bb8_pool(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let pool = bb8_pool(proxy.local_addr(), 0, 4).await;
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let v = noise(1024 * 1024, 100 + t);
            let mut conn = pool.get().await.expect("pool.get");
            let () = conn.set(format!("mb{t}"), v.as_slice()).await.unwrap();
            let got: Vec<u8> = conn.get(format!("mb{t}")).await.unwrap();
            assert!(got == v, "1 MiB value #{t} differs");
            let n: usize = redis::cmd("STRLEN")
                .arg(format!("mb{t}"))
                .query_async(&mut *conn)
                .await
                .unwrap();
            assert_eq!(n, v.len());
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("timed out")
            .expect("task failed");
    }
    let got = up.direct(0).await.cmd(&[b"GET", b"mb2"]).await;
    assert!(bulk_payload(&got) == noise(1024 * 1024, 102));
    drop(pool);
    proxy.shutdown().await;
}

async fn a_64_mebibyte_value_round_trips(kind: Upstream) {
    const SIZE: usize = 64 * 1024 * 1024;
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let value = noise(SIZE, 64);

    // Raw client: SET then GET, with a PING behind each to check framing after it.
    let started = Instant::now();
    let mut req = resp_cmd(&[b"SET", b"huge", &value]);
    req.extend(resp_cmd(&[b"PING"]));
    req.extend(resp_cmd(&[b"GET", b"huge"]));
    req.extend(resp_cmd(&[b"PING"]));
    let replies = raw_pipeline(proxy.local_addr(), req, 4, Duration::from_secs(120)).await;
    assert_eq!(replies[0], b"+OK\r\n");
    assert_eq!(replies[1], b"+PONG\r\n");
    assert!(
        bulk_payload(&replies[2]) == value,
        "64 MiB value came back different"
    );
    assert_eq!(replies[3], b"+PONG\r\n");
    let raw_time = started.elapsed();

    // Redis has exactly those bytes.
    let mut direct = up.direct(0).await;
    assert_eq!(
        direct.cmd(&[b"STRLEN", b"huge"]).await,
        format!(":{SIZE}\r\n").into_bytes()
    );
    let tail = direct.cmd(&[b"GETRANGE", b"huge", b"-100", b"-1"]).await;
    assert_eq!(tail, resp_bulk(&value[SIZE - 100..]));

    // redis-rs: the same through a typed client (a generous response timeout).
    let started = Instant::now();
    let mut conn = redis_rs_conn(proxy.local_addr(), 0, Duration::from_secs(120)).await;
    let other = noise(SIZE, 65);
    let () = conn.set("huge2", other.as_slice()).await.unwrap();
    let got: Vec<u8> = conn.get("huge2").await.unwrap();
    assert!(
        got == other,
        "64 MiB value via redis-rs came back different"
    );
    let rs_time = started.elapsed();
    eprintln!("64 MiB round trip: raw {raw_time:?}, redis-rs {rs_time:?}");
    proxy.shutdown().await;
}
