//! Pipelining: very long pipelines answered complete and in order, pipelines that mix
//! databases and proxy-answered commands, huge single requests and replies, and many
//! concurrent clients.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bb8_redis::redis::{self, Value};
use support::upstream::{Backend, Upstream};
use support::{
    fd_soft_limit, open_fds, parse_info, printable, raw_pipeline, redis_rs_conn, resp_bulk,
    resp_cmd, start_proxy, AsyncRawClient, RedisServer,
};

const N: usize = 100_000;

// Each runs against a standalone Redis and a Redis Cluster (`NAME::standalone`,
// `NAME::cluster`).
upstream_tests!(
    a_pipeline_of_100k_incr_is_answered_in_order,
    a_redis_rs_pipeline_of_100k_set_and_get_commands,
    a_pipeline_mixing_databases_and_local_commands_is_answered_in_order,
    one_request_with_200k_arguments_and_its_200k_element_reply,
    five_hundred_concurrent_clients,
);

async fn a_pipeline_of_100k_incr_is_answered_in_order(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let one = resp_cmd(&[b"INCR", b"counter"]);
    let request: Vec<u8> = one.repeat(N);
    let started = Instant::now();
    let replies = raw_pipeline(proxy.local_addr(), request, N, Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    assert_eq!(replies.len(), N);
    for (i, r) in replies.iter().enumerate() {
        let want = format!(":{}\r\n", i + 1);
        assert_eq!(
            printable(r),
            printable(want.as_bytes()),
            "reply #{i} out of order"
        );
    }
    let mut direct = up.direct(0).await;
    assert_eq!(
        direct.cmd(&[b"GET", b"counter"]).await,
        resp_bulk(b"100000")
    );
    eprintln!("100k INCR pipeline through the proxy: {elapsed:?}");
    proxy.shutdown().await;
}

async fn a_redis_rs_pipeline_of_100k_set_and_get_commands(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut conn = redis_rs_conn(proxy.local_addr(), 0, Duration::from_secs(60)).await;
    let mut pipe = redis::pipe();
    for i in 0..N / 2 {
        pipe.cmd("SET")
            .arg(format!("key:{i}"))
            .arg(format!("value:{i}:{}", i * 7));
        pipe.cmd("GET").arg(format!("key:{i}"));
    }
    let replies: Vec<Value> =
        tokio::time::timeout(Duration::from_secs(90), pipe.query_async(&mut conn))
            .await
            .expect("pipeline timed out")
            .expect("pipeline failed");
    assert_eq!(replies.len(), N);
    for i in 0..N / 2 {
        assert_eq!(replies[2 * i], Value::Okay, "SET #{i}");
        assert_eq!(
            replies[2 * i + 1],
            Value::BulkString(format!("value:{i}:{}", i * 7).into_bytes()),
            "GET #{i}"
        );
    }
    let mut direct = up.direct(0).await;
    assert_eq!(direct.dbsize().await, (N / 2) as u64);
    assert_eq!(
        direct.cmd(&[b"GET", b"key:49999"]).await,
        resp_bulk(format!("value:49999:{}", 49999 * 7).as_bytes())
    );
    proxy.shutdown().await;
}

async fn a_pipeline_mixing_databases_and_local_commands_is_answered_in_order(kind: Upstream) {
    let up = Backend::start(kind);
    // Distinct values per client db, written directly to its upstream.
    for db in 0..=10 {
        let v = format!("in-db-{db}");
        let mut direct = up.direct(db).await;
        assert_eq!(direct.cmd(&[b"SET", b"k", v.as_bytes()]).await, b"+OK\r\n");
    }
    let proxy = start_proxy(up.config()).await;

    let mut request = Vec::new();
    let mut expected: Vec<Vec<u8>> = Vec::new();
    let mut counters = [0u32; 11];
    for round in 0..3 {
        for db in [3usize, 0, 10, 7, 7, 1] {
            request.extend(resp_cmd(&[b"SELECT", db.to_string().as_bytes()]));
            expected.push(b"+OK\r\n".to_vec());
            request.extend(resp_cmd(&[b"GET", b"k"]));
            expected.push(resp_bulk(format!("in-db-{db}").as_bytes()));
            request.extend(resp_cmd(&[b"PING"]));
            expected.push(b"+PONG\r\n".to_vec());
            // A proxy-answered command between forwarded ones.
            request.extend(resp_cmd(&[b"CLIENT", b"GETNAME"]));
            expected.push(b"$-1\r\n".to_vec());
            // An error reply does not shift anything.
            request.extend(resp_cmd(&[b"LPUSH", b"k", b"x"]));
            expected.push(
                b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n".to_vec(),
            );
            // An inline command inside the pipeline.
            request.extend(format!("ECHO r{round}d{db}\r\n").into_bytes());
            expected.push(resp_bulk(format!("r{round}d{db}").as_bytes()));
            request.extend(resp_cmd(&[b"SELECT", b"99"]));
            expected.push(b"-ERR DB index is out of range\r\n".to_vec());
            request.extend(resp_cmd(&[b"INCR", b"n"]));
            counters[db] += 1;
            expected.push(format!(":{}\r\n", counters[db]).into_bytes());
        }
    }
    // Send it all in one write, and also byte by byte, and compare.
    let replies = raw_pipeline(
        proxy.local_addr(),
        request.clone(),
        expected.len(),
        Duration::from_secs(20),
    )
    .await;
    for (i, (got, want)) in replies.iter().zip(&expected).enumerate() {
        assert_eq!(printable(got), printable(want), "reply #{i}");
    }
    // The same bytes dribbled in small pieces give the same answers (after resetting n).
    for db in 0..=10 {
        let existed = if [0, 1, 3, 7, 10].contains(&db) {
            &b":1\r\n"[..]
        } else {
            &b":0\r\n"[..]
        };
        let mut direct = up.direct(db).await;
        assert_eq!(direct.cmd(&[b"DEL", b"n"]).await, existed, "db {db}");
    }
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    for piece in request.chunks(7) {
        c.send(piece).await;
    }
    let replies = c.read_replies(expected.len()).await;
    for (i, (got, want)) in replies.iter().zip(&expected).enumerate() {
        assert_eq!(printable(got), printable(want), "dribbled reply #{i}");
    }
    c.assert_no_reply(Duration::from_millis(100)).await;
    proxy.shutdown().await;
}

async fn one_request_with_200k_arguments_and_its_200k_element_reply(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    const ELEMS: usize = 200_000;
    let values: Vec<Vec<u8>> = (0..ELEMS).map(|i| format!("e{i}").into_bytes()).collect();
    let mut args: Vec<&[u8]> = vec![b"RPUSH", b"biglist"];
    args.extend(values.iter().map(Vec::as_slice));
    let started = Instant::now();
    let replies = raw_pipeline(
        proxy.local_addr(),
        resp_cmd(&args),
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(replies[0], format!(":{ELEMS}\r\n").into_bytes());
    let push_time = started.elapsed();

    let started = Instant::now();
    let replies = raw_pipeline(
        proxy.local_addr(),
        resp_cmd(&[b"LRANGE", b"biglist", b"0", b"-1"]),
        1,
        Duration::from_secs(30),
    )
    .await;
    let range_time = started.elapsed();
    let mut want = format!("*{ELEMS}\r\n").into_bytes();
    for v in &values {
        want.extend(resp_bulk(v));
    }
    assert!(
        replies[0] == want,
        "LRANGE reply differs from the list pushed"
    );
    eprintln!("RPUSH of {ELEMS} args: {push_time:?}; LRANGE of {ELEMS}: {range_time:?}");
    proxy.shutdown().await;
}

async fn five_hundred_concurrent_clients(kind: Upstream) {
    // Each client costs two descriptors in this process (its socket and the proxy's),
    // plus a few per upstream connection; stay well under the soft limit.
    let wanted = 500usize;
    let limit = fd_soft_limit().unwrap_or(1024);
    let base = open_fds().unwrap_or(64) as u64;
    let budget = limit.saturating_sub(base + 200) / 2;
    let clients = wanted.min(budget as usize);
    if clients < wanted {
        eprintln!(
            "open-files soft limit {limit} (ulimit -n) allows only {clients} clients here; \
             raise it to run the full {wanted}"
        );
    }
    assert!(clients >= 200, "fd limit {limit} is too low for this test");

    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let addr = proxy.local_addr();

    // Connect them all first, so they really are open at the same time.
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(AsyncRawClient::connect(addr).await);
    }
    let mut admin = AsyncRawClient::connect(addr).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = admin.cmd(&[b"PROXY", b"INFO", b"clients"]).await;
        let fields = parse_info(&String::from_utf8_lossy(&info));
        let connected: usize = fields
            .get("connected_clients")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if connected > clients {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "proxy reports {connected} connected clients, expected {}",
            clients + 1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let start = Arc::new(tokio::sync::Barrier::new(clients));
    let mut tasks = Vec::with_capacity(clients);
    for (i, mut c) in conns.into_iter().enumerate() {
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let db = (i % 11).to_string();
            let key = format!("client:{i}");
            let value = format!("value-{i}-{}", i * 31);
            let mut req = resp_cmd(&[b"SELECT", db.as_bytes()]);
            req.extend(resp_cmd(&[b"SET", key.as_bytes(), value.as_bytes()]));
            req.extend(resp_cmd(&[b"GET", key.as_bytes()]));
            req.extend(resp_cmd(&[b"INCR", b"shared-counter"]));
            req.extend(resp_cmd(&[b"CLIENT", b"SETNAME", key.as_bytes()]));
            req.extend(resp_cmd(&[b"ECHO", value.as_bytes()]));
            req.extend(resp_cmd(&[b"CLIENT", b"GETNAME"]));
            c.send(&req).await;
            let r = c.read_replies(7).await;
            assert_eq!(r[0], b"+OK\r\n", "client {i}");
            assert_eq!(r[1], b"+OK\r\n", "client {i}");
            assert_eq!(r[2], resp_bulk(value.as_bytes()), "client {i}");
            assert!(r[3].starts_with(b":"), "client {i}: {}", printable(&r[3]));
            assert_eq!(r[4], b"+OK\r\n", "client {i}");
            assert_eq!(r[5], resp_bulk(value.as_bytes()), "client {i}");
            assert_eq!(r[6], resp_bulk(key.as_bytes()), "client {i}");
            // A second round on the same connection.
            let r = c.cmd(&[b"GET", key.as_bytes()]).await;
            assert_eq!(r, resp_bulk(value.as_bytes()), "client {i}");
            c
        }));
    }
    let mut conns = Vec::with_capacity(clients);
    for t in tasks {
        let c = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a client timed out")
            .expect("a client failed");
        conns.push(c);
    }
    // Every client's write landed in its database; the shared counters add up.
    let mut total = 0usize;
    for db in 0..11usize {
        let mut direct = up.direct(db).await;
        let n = direct.cmd(&[b"GET", b"shared-counter"]).await;
        let expected = (0..clients).filter(|i| i % 11 == db).count();
        assert_eq!(n, resp_bulk(expected.to_string().as_bytes()), "db {db}");
        total += expected;
        let i = db; // client `db` used database `db`
        assert_eq!(
            direct
                .cmd(&[b"GET", format!("client:{i}").as_bytes()])
                .await,
            resp_bulk(format!("value-{i}-{}", i * 31).as_bytes())
        );
    }
    assert_eq!(total, clients);
    drop(conns);
    proxy.shutdown().await;
}

/// The shipped binary (single-threaded runtime by default) under the same load.
/// Standalone only: `BinaryProxy` runs the binary on one server's configuration.
#[test]
fn the_binary_serves_a_100k_pipeline_and_concurrent_clients() {
    use std::io::{Read, Write};
    let redis = RedisServer::start();
    let proxy = support::BinaryProxy::start(&redis);

    let stream = std::net::TcpStream::connect(proxy.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let request = resp_cmd(&[b"INCR", b"bin-counter"]).repeat(N);
    let w = std::thread::spawn(move || writer.write_all(&request));
    let mut reader = stream;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut next = 1usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while next <= N {
        assert!(Instant::now() < deadline, "only {} replies", next - 1);
        let n = reader.read(&mut chunk).expect("read");
        assert!(n > 0, "closed after {} replies", next - 1);
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Ok(Some(len)) = support::resp_frame_len(&buf[start..]) {
            assert_eq!(
                &buf[start..start + len],
                format!(":{next}\r\n").as_bytes(),
                "reply #{next}"
            );
            next += 1;
            start += len;
        }
        buf.drain(..start);
    }
    w.join().unwrap().unwrap();

    let addr = proxy.addr();
    let threads: Vec<_> = (0..100)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = support::RawClient::connect(addr);
                let db = (i % 11).to_string();
                assert_eq!(c.cmd(&[b"SELECT", db.as_bytes()]), b"+OK\r\n");
                for j in 0..20 {
                    let k = format!("t{i}:{j}");
                    let mut req = resp_cmd(&[b"SET", k.as_bytes(), k.as_bytes()]);
                    req.extend(resp_cmd(&[b"GET", k.as_bytes()]));
                    c.send(&req);
                    assert_eq!(c.read_reply(), b"+OK\r\n");
                    assert_eq!(c.read_reply(), resp_bulk(k.as_bytes()));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let mut direct = redis.client();
    assert_eq!(direct.cmd(&[b"GET", b"bin-counter"]), resp_bulk(b"100000"));
    assert_eq!(direct.cmd(&[b"SELECT", b"10"]), b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"t10:19"]), resp_bulk(b"t10:19"));
}
