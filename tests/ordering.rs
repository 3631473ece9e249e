//! The ordering guarantee (issue 8): the commands of one client run upstream in
//! the order the client sent them, always — across retries, reconnects, freezes
//! and restarts of the upstream.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{free_port, proxy_config, resp_cmd, start_proxy, AsyncRawClient, RedisServer};

/// Defect 1: a write waiting for its retry must not be overtaken by a later write
/// of the same client that arrives once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_not_overtaken_by_a_later_one() {
    for round in 0..3 {
        let port = free_port();
        let mut config = redis_sidecar::config::Config::for_upstream("127.0.0.1", port);
        config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        for db in &mut config.databases {
            let r = &mut db.upstream.resilience;
            r.retry_attempts = 3;
            r.retry_base_delay = Duration::from_millis(800);
            r.retry_max_delay = Duration::from_secs(2);
            r.failure_threshold = u32::MAX;
        }
        let proxy = start_proxy(config).await;
        let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
        // Redis is down: the first attempt is refused, a retry is scheduled.
        c.send(&resp_cmd(&[b"SET", b"k", b"1"])).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let redis = tokio::task::spawn_blocking(move || RedisServer::start_on_port(port))
            .await
            .expect("start redis");
        // Redis is back before the retry is due; the same client writes again.
        c.send(&resp_cmd(&[b"SET", b"k", b"2"])).await;
        assert_eq!(c.read_replies(2).await.concat(), b"+OK\r\n+OK\r\n");
        let mut direct = AsyncRawClient::connect(redis.addr()).await;
        assert_eq!(
            direct.cmd(&[b"GET", b"k"]).await,
            b"$1\r\n2\r\n",
            "round {round}: the later SET ran before the earlier one"
        );
        proxy.shutdown().await;
    }
}

/// What one writer saw.
struct Writer {
    /// Values acknowledged with `:n`.
    acked: Vec<u64>,
    /// Values that got an error (may or may not have run).
    failed: Vec<u64>,
    unexpected: Vec<String>,
}

/// Pipelines `RPUSH list:<id> n` with increasing `n` until `stop`, in random batches.
async fn writer(addr: std::net::SocketAddr, id: usize, stop: Arc<AtomicBool>) -> Writer {
    let mut w = Writer {
        acked: Vec::new(),
        failed: Vec::new(),
        unexpected: Vec::new(),
    };
    let Ok(mut c) = AsyncRawClient::try_connect(addr).await else {
        return w;
    };
    c.set_timeout(Duration::from_secs(20));
    let key = format!("list:{id}");
    let mut next = 0u64;
    let mut rng = fastrand::Rng::with_seed(id as u64);
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
        let n = rng.usize(1..8);
        let mut bytes = Vec::new();
        // What each request is: `None` an INCR, `Some(v)` the RPUSH of `v`.
        let mut sent: Vec<Option<u64>> = Vec::new();
        for _ in 0..n {
            // Some INCRs in between: writes of another kind on the same path.
            if rng.bool() {
                bytes.extend(resp_cmd(&[b"INCR", format!("counter:{id}").as_bytes()]));
                sent.push(None);
            }
            bytes.extend(resp_cmd(&[
                b"RPUSH",
                key.as_bytes(),
                next.to_string().as_bytes(),
            ]));
            sent.push(Some(next));
            next += 1;
        }
        if c.try_send(&bytes).await.is_err() {
            break;
        }
        for request in sent {
            let r = match c.try_read_reply().await {
                Ok(r) => r,
                Err(e) => {
                    w.unexpected.push(format!("read: {e}"));
                    return w;
                }
            };
            let failed = r.starts_with(b"-UPSTREAM") || r.starts_with(b"-CIRCUITOPEN");
            match request {
                _ if !r.starts_with(b":") && !failed => {
                    w.unexpected.push(String::from_utf8_lossy(&r).into_owned())
                }
                Some(v) if failed => w.failed.push(v),
                Some(v) => w.acked.push(v),
                None => {}
            }
        }
    }
    w
}

/// The ordering property: random pipelines from several clients while the
/// upstream's connections are killed, the upstream is frozen, and the upstream is
/// killed and restarted (append-only file, fsync always, so nothing acknowledged
/// is lost by the restart). Afterwards every client's list holds its values in
/// send order, each at most once, and every acknowledged value is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_clients_writes_apply_in_send_order_under_faults() {
    let mut redis =
        RedisServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut config = proxy_config(&redis);
    for db in &mut config.databases {
        let u = &mut db.upstream;
        u.connect_timeout = Duration::from_millis(500);
        u.command_timeout = Duration::from_millis(700);
        u.resilience.retry_attempts = 3;
        u.resilience.retry_base_delay = Duration::from_millis(50);
        u.resilience.retry_max_delay = Duration::from_millis(200);
        u.resilience.failure_threshold = 4;
        u.resilience.recovery_timeout = Duration::from_millis(300);
        u.resilience.health_check_interval = Duration::from_millis(200);
    }
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..6)
        .map(|id| tokio::spawn(writer(addr, id, stop.clone())))
        .collect();
    let mut rng = fastrand::Rng::with_seed(8);
    let mut faults: HashMap<&str, u32> = HashMap::new();
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(rng.u64(50..250))).await;
        match rng.u8(0..3) {
            0 => {
                let mut direct = AsyncRawClient::connect(redis.addr()).await;
                direct
                    .cmd(&[b"CLIENT", b"KILL", b"TYPE", b"normal", b"SKIPME", b"yes"])
                    .await;
                *faults.entry("client kill").or_default() += 1;
            }
            1 => {
                redis.pause();
                tokio::time::sleep(Duration::from_millis(rng.u64(100..1200))).await;
                redis.resume();
                *faults.entry("freeze").or_default() += 1;
            }
            _ => {
                redis = tokio::task::spawn_blocking(move || {
                    redis.kill();
                    std::thread::sleep(Duration::from_millis(200));
                    redis.restart();
                    redis
                })
                .await
                .expect("restart");
                *faults.entry("kill+restart").or_default() += 1;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    let (mut acked, mut failed) = (0, 0);
    for (id, w) in writers.into_iter().enumerate() {
        let w = w.await.expect("writer");
        assert!(w.unexpected.is_empty(), "writer {id}: {:?}", w.unexpected);
        let key = format!("list:{id}");
        let list = direct.cmd(&[b"LRANGE", key.as_bytes(), b"0", b"-1"]).await;
        let values = parse_list(&list);
        assert!(
            values.windows(2).all(|p| p[0] < p[1]),
            "writer {id}: list out of send order or duplicated: {values:?}"
        );
        for v in &w.acked {
            assert!(
                values.binary_search(v).is_ok(),
                "writer {id}: acknowledged {v} missing from {values:?}"
            );
        }
        for v in &values {
            assert!(
                w.acked.contains(v) || w.failed.contains(v),
                "writer {id}: {v} in the list was never sent"
            );
        }
        acked += w.acked.len();
        failed += w.failed.len();
    }
    eprintln!("faults {faults:?}; {acked} writes acknowledged, {failed} failed");
    assert!(acked > 100, "too few writes went through: {acked}");
    proxy.shutdown().await;
}

fn parse_list(reply: &[u8]) -> Vec<u64> {
    let text = String::from_utf8_lossy(reply);
    let mut lines = text.split("\r\n");
    let header = lines.next().unwrap_or("");
    assert!(header.starts_with('*'), "not an array: {text}");
    lines
        .filter(|l| !l.starts_with('$') && !l.is_empty())
        .map(|l| l.parse().expect("number"))
        .collect()
}

/// Across databases: a command on another database's shared connection must not
/// overtake one still in flight on the previous database's (the two are
/// different upstream connections to the same server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_on_another_database_waits_for_the_previous_ones() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let pipeline: Vec<u8> = [
        &[&b"SET"[..], b"k", b"v"][..],
        &[b"SELECT", b"1"],
        &[b"FLUSHALL"],
        &[b"SELECT", b"0"],
        &[b"GET", b"k"],
    ]
    .iter()
    .flat_map(|c| resp_cmd(c))
    .collect();
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    direct.send(&pipeline).await;
    let expected = direct.read_replies(5).await.concat();
    assert_eq!(expected, b"+OK\r\n+OK\r\n+OK\r\n+OK\r\n$-1\r\n");
    for round in 0..50 {
        let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
        c.send(&pipeline).await;
        assert_eq!(
            String::from_utf8_lossy(&c.read_replies(5).await.concat()),
            String::from_utf8_lossy(&expected),
            "round {round}"
        );
    }
    proxy.shutdown().await;
}
