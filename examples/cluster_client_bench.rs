//! What a cluster-aware client gets, for issue #10's comparison: redis-rs's async
//! cluster client straight at a Redis Cluster, and redis-rs's plain clients
//! through the proxy, with the same load: `-c` concurrent tasks, each sending one
//! command and waiting for its reply (P1), `-n` commands in all, random keys
//! `key:NNNNNNNNNNNN` out of 100,000 (as `redis-benchmark -r 100000`), 3-byte values.
//!
//! ```text
//! cargo run --release --example cluster_client_bench -- MODE ADDR [-c 50] [-n 100000] [-t get|set]
//! MODE: cluster    redis-rs ClusterConnection (one multiplexed connection per node, shared by the tasks)
//!       mux        redis-rs MultiplexedConnection to ADDR (one connection shared by the tasks)
//!       conns      one redis-rs MultiplexedConnection per task (like redis-benchmark's clients)
//! ```
//! Prints `MODE TEST requests/s`. `scripts/bench-cluster.sh` runs it next to
//! redis-benchmark.

use std::time::Instant;

use redis::aio::ConnectionLike;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Cluster,
    Mux,
    Conns,
}

struct Args {
    mode: Mode,
    addr: String,
    clients: usize,
    requests: usize,
    set: bool,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mode = match it.next().as_deref() {
        Some("cluster") => Mode::Cluster,
        Some("mux") => Mode::Mux,
        Some("conns") => Mode::Conns,
        other => return Err(format!("MODE: cluster, mux or conns, not {other:?}")),
    };
    let addr = it.next().ok_or("ADDR (host:port) missing")?;
    let mut a = Args {
        mode,
        addr,
        clients: 50,
        requests: 100_000,
        set: false,
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "-c" => a.clients = value.parse().map_err(|e| format!("-c: {e}"))?,
            "-n" => a.requests = value.parse().map_err(|e| format!("-n: {e}"))?,
            "-t" => a.set = value.eq_ignore_ascii_case("set"),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.clients == 0 {
        return Err("-c must be at least 1".into());
    }
    Ok(a)
}

/// `n` commands on `con`, one at a time.
async fn work<C: ConnectionLike>(
    mut con: C,
    n: usize,
    set: bool,
    seed: u64,
) -> redis::RedisResult<()> {
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..n {
        let key = format!("key:{:012}", rng.u32(0..100_000));
        let mut cmd = if set {
            redis::cmd("SET")
        } else {
            redis::cmd("GET")
        };
        cmd.arg(&key);
        if set {
            cmd.arg("xxx");
        }
        let _: redis::Value = cmd.query_async(&mut con).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args()?;
    let url = format!("redis://{}/", a.addr);
    let per = a.requests / a.clients;
    let mut tasks = Vec::with_capacity(a.clients);
    let cluster = match a.mode {
        Mode::Cluster => Some(
            redis::cluster::ClusterClient::new(vec![url.as_str()])?
                .get_async_connection()
                .await?,
        ),
        _ => None,
    };
    let client = redis::Client::open(url.as_str())?;
    let shared = match a.mode {
        Mode::Mux => Some(client.get_multiplexed_async_connection().await?),
        _ => None,
    };
    let mut own = Vec::new();
    if a.mode == Mode::Conns {
        for _ in 0..a.clients {
            own.push(client.get_multiplexed_async_connection().await?);
        }
    }
    let started = Instant::now();
    for i in 0..a.clients {
        let seed = i as u64;
        tasks.push(match (&cluster, &shared, own.pop()) {
            (Some(c), _, _) => tokio::spawn(work(c.clone(), per, a.set, seed)),
            (_, Some(m), _) => tokio::spawn(work(m.clone(), per, a.set, seed)),
            (_, _, Some(m)) => tokio::spawn(work(m, per, a.set, seed)),
            _ => return Err("no connection".into()),
        });
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let mode = match a.mode {
        Mode::Cluster => "cluster",
        Mode::Mux => "mux",
        Mode::Conns => "conns",
    };
    let test = if a.set { "SET" } else { "GET" };
    println!("{mode} {test} {:.0}", (per * a.clients) as f64 / secs);
    Ok(())
}
