//! Blocking commands (BLPOP and friends, XREAD BLOCK, WAIT) run on an exclusive
//! upstream connection: they block only their own client, get Redis's replies, keep
//! the client's order, and a client that leaves while blocked does not steal data.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::upstream::{Backend, Upstream};
use support::{printable, resp_bulk, resp_cmd, start_proxy, AsyncRawClient};

// Each runs against a standalone Redis and a Redis Cluster (`NAME::standalone`,
// `NAME::cluster`; on the cluster one at a time, as they count blocked clients).
upstream_tests!(
    blpop_blocks_only_its_own_client,
    blocking_commands_answer_like_redis,
    commands_pipelined_after_a_blocking_one_wait_for_it,
    blocking_in_another_database_waits_on_that_database,
    a_client_leaving_while_blocked_does_not_steal_later_data,
    many_blocked_clients_each_get_one_item,
    blocking_commands_are_not_cut_by_the_command_timeout,
);

/// A blocking command, the reply its own timeout gives, and that timeout.
type BlockCase<'a> = (&'a [&'a [u8]], &'a [u8], Duration);

/// Clients blocked on the upstream (every node of a cluster).
async fn blocked_clients(up: &Backend) -> u64 {
    up.info_sum("clients", "blocked_clients").await
}

async fn wait_blocked(up: &Backend, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let b = blocked_clients(up).await;
        if b == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Redis has {b} blocked clients, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn blpop_blocks_only_its_own_client(kind: Upstream) {
    let up = Backend::start_alone(kind).await;
    let proxy = start_proxy(up.config()).await;
    let mut a = AsyncRawClient::connect(proxy.local_addr()).await;
    // Several other clients, so both shared connections of db 0 are exercised.
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(AsyncRawClient::connect(proxy.local_addr()).await);
    }

    a.send(&resp_cmd(&[b"BLPOP", b"q", b"0"])).await;
    wait_blocked(&up, 1).await;
    a.assert_no_reply(Duration::from_millis(200)).await;
    for (i, o) in others.iter_mut().enumerate() {
        let started = Instant::now();
        assert_eq!(o.cmd(&[b"PING"]).await, b"+PONG\r\n");
        let k = format!("k{i}");
        assert_eq!(o.cmd(&[b"SET", k.as_bytes(), b"v"]).await, b"+OK\r\n");
        assert_eq!(o.cmd(&[b"GET", k.as_bytes()]).await, resp_bulk(b"v"));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "client {i} was slowed down by another client's BLPOP: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(others[0].cmd(&[b"RPUSH", b"q", b"hello"]).await, b":1\r\n");
    assert_eq!(
        a.read_reply().await,
        b"*2\r\n$1\r\nq\r\n$5\r\nhello\r\n".to_vec()
    );
    // Back to normal for A, and the list was consumed exactly once.
    assert_eq!(a.cmd(&[b"LLEN", b"q"]).await, b":0\r\n");
    assert_eq!(a.cmd(&[b"SET", b"after", b"1"]).await, b"+OK\r\n");
    proxy.shutdown().await;
}

async fn blocking_commands_answer_like_redis(kind: Upstream) {
    let up = Backend::start_alone(kind).await;
    let proxy = start_proxy(up.config()).await;
    let mut p = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut d = up.reference().await;
    let (src, dst) = (kind.tagged("src"), kind.tagged("dst"));
    let (none1, none2) = (kind.tagged("none1"), kind.tagged("none2"));
    let (src, dst, none1, none2) = (
        src.as_bytes(),
        dst.as_bytes(),
        none1.as_bytes(),
        none2.as_bytes(),
    );

    let script: &[&[&[u8]]] = &[
        &[b"RPUSH", b"l", b"a", b"b"],
        &[b"BLPOP", b"l", b"0"],
        &[b"BRPOP", b"l", b"0"],
        &[b"BLPOP", b"l", b"0.1"],
        &[b"BRPOP", none1, none2, b"0.1"],
        &[b"RPUSH", src, b"x"],
        &[b"BLMOVE", src, dst, b"LEFT", b"RIGHT", b"0"],
        &[b"BRPOPLPUSH", dst, src, b"0"],
        &[b"ZADD", b"z", b"1", b"m"],
        &[b"BZPOPMIN", b"z", b"0"],
        &[b"BZPOPMAX", b"z", b"0.1"],
        &[b"BLMPOP", b"0.1", b"1", b"nolist", b"LEFT"],
        &[b"XADD", b"s", b"1-1", b"f", b"v"],
        &[b"XREAD", b"BLOCK", b"100", b"STREAMS", b"s", b"0"],
        &[b"XREAD", b"BLOCK", b"100", b"STREAMS", b"s", b"$"],
        &[b"XREAD", b"COUNT", b"1", b"STREAMS", b"s", b"0"],
        &[b"WAIT", b"0", b"100"],
        &[b"BLPOP", b"l"],
        &[b"BLPOP", b"l", b"-1"],
        &[b"GET", b"l"],
    ];
    for args in script {
        // Cluster: its primaries have a replica each, and `WAIT 0` counts the acks
        // so far (the WAIT that waits is checked in `…not_cut_by_the_command_timeout`).
        if kind == Upstream::Cluster && args[0] == b"WAIT" {
            continue;
        }
        let started = Instant::now();
        let got = p.cmd(args).await;
        let took = started.elapsed();
        let want = d.cmd(args).await;
        let shown: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert_eq!(printable(&got), printable(&want), "{shown:?}");
        assert!(took < Duration::from_secs(2), "{shown:?} took {took:?}");
    }
    proxy.shutdown().await;
}

async fn commands_pipelined_after_a_blocking_one_wait_for_it(kind: Upstream) {
    let up = Backend::start_alone(kind).await;
    let proxy = start_proxy(up.config()).await;
    let mut a = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut b = AsyncRawClient::connect(proxy.local_addr()).await;

    let req = [
        resp_cmd(&[b"SET", b"before", b"1"]),
        resp_cmd(&[b"BLPOP", b"q", b"0"]),
        resp_cmd(&[b"SET", b"after", b"1"]),
        resp_cmd(&[b"GET", b"before"]),
        resp_cmd(&[b"CLIENT", b"GETNAME"]),
    ]
    .concat();
    a.send(&req).await;
    wait_blocked(&up, 1).await;
    // Redis runs a client's commands one after another: nothing after BLPOP yet.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(b.cmd(&[b"EXISTS", b"before"]).await, b":1\r\n");
    assert_eq!(
        b.cmd(&[b"EXISTS", b"after"]).await,
        b":0\r\n",
        "a command pipelined after BLPOP ran before BLPOP returned"
    );
    assert_eq!(b.cmd(&[b"RPUSH", b"q", b"item"]).await, b":1\r\n");
    let r = a.read_replies(5).await;
    assert_eq!(
        r,
        [
            b"+OK\r\n".to_vec(),
            b"*2\r\n$1\r\nq\r\n$4\r\nitem\r\n".to_vec(),
            b"+OK\r\n".to_vec(),
            resp_bulk(b"1"),
            b"$-1\r\n".to_vec(),
        ]
    );
    assert_eq!(b.cmd(&[b"EXISTS", b"after"]).await, b":1\r\n");
    proxy.shutdown().await;
}

async fn blocking_in_another_database_waits_on_that_database(kind: Upstream) {
    let up = Backend::start_alone(kind).await;
    let mut config = up.config();
    if kind == Upstream::Standalone {
        // (On a cluster, client db 4 is apart by its key prefix.)
        config.databases[4].upstream.db = 14;
    }
    let proxy = start_proxy(config).await;
    let mut a = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut b = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(a.cmd(&[b"SELECT", b"4"]).await, b"+OK\r\n");
    a.send(&resp_cmd(&[b"BLPOP", b"q", b"0"])).await;
    wait_blocked(&up, 1).await;
    // A push to db 0 does not wake it.
    assert_eq!(b.cmd(&[b"RPUSH", b"q", b"wrong-db"]).await, b":1\r\n");
    a.assert_no_reply(Duration::from_millis(200)).await;
    // A push to client db 4 (upstream db 14) does.
    assert_eq!(b.cmd(&[b"SELECT", b"4"]).await, b"+OK\r\n");
    assert_eq!(b.cmd(&[b"RPUSH", b"q", b"right-db"]).await, b":1\r\n");
    assert_eq!(
        a.read_reply().await,
        b"*2\r\n$1\r\nq\r\n$8\r\nright-db\r\n".to_vec()
    );
    assert_eq!(b.cmd(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    assert_eq!(b.cmd(&[b"LLEN", b"q"]).await, b":1\r\n");
    proxy.shutdown().await;
}

async fn a_client_leaving_while_blocked_does_not_steal_later_data(kind: Upstream) {
    let up = Backend::start_alone(kind).await;
    let mut config = up.config();
    config.databases[0].upstream.pool_size = 1;
    let proxy = start_proxy(config).await;

    let mut a = AsyncRawClient::connect(proxy.local_addr()).await;
    a.send(&resp_cmd(&[b"BLPOP", b"q", b"0"])).await;
    wait_blocked(&up, 1).await;
    drop(a);
    // The proxy must close that upstream connection (as Redis drops a client that
    // disconnects while blocked), or Redis hands it the next item and nobody gets it.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut still_blocked = blocked_clients(&up).await;
    while still_blocked > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        still_blocked = blocked_clients(&up).await;
    }
    let mut b = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(b.cmd(&[b"RPUSH", b"q", b"precious"]).await, b":1\r\n");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let left = b.cmd(&[b"LRANGE", b"q", b"0", b"-1"]).await;
    assert_eq!(
        printable(&left),
        printable(b"*1\r\n$8\r\nprecious\r\n"),
        "the item pushed after the client left was consumed by its abandoned BLPOP \
         (Redis still had {still_blocked} blocked client(s) 3 s after the client left)"
    );
    assert_eq!(
        still_blocked, 0,
        "the abandoned BLPOP is still blocked upstream"
    );
    // The pool (size 1) is usable again: another blocking command works.
    let started = Instant::now();
    assert_eq!(
        b.cmd(&[b"BLPOP", b"q", b"0"]).await,
        b"*2\r\n$1\r\nq\r\n$8\r\nprecious\r\n".to_vec()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    proxy.shutdown().await;
}

async fn many_blocked_clients_each_get_one_item(kind: Upstream) {
    let up = Backend::start_alone(kind).await;
    let proxy = start_proxy(up.config()).await;
    let n = 10;
    let mut waiters = Vec::new();
    for _ in 0..n {
        let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
        c.send(&resp_cmd(&[b"BLPOP", b"jobs", b"0"])).await;
        waiters.push(c);
    }
    wait_blocked(&up, n as u64).await;
    let mut pusher = AsyncRawClient::connect(proxy.local_addr()).await;
    for i in 0..n {
        let job = format!("job{i}");
        assert!(pusher
            .cmd(&[b"RPUSH", b"jobs", job.as_bytes()])
            .await
            .starts_with(b":"));
    }
    let mut got = HashSet::new();
    for w in &mut waiters {
        let r = w.read_reply().await;
        let t = String::from_utf8_lossy(&r).into_owned();
        let job = t
            .split("\r\n")
            .nth(4)
            .unwrap_or_else(|| panic!("{t}"))
            .to_string();
        assert!(got.insert(job.clone()), "{job} delivered twice");
    }
    assert_eq!(got.len(), n);
    assert_eq!(pusher.cmd(&[b"LLEN", b"jobs"]).await, b":0\r\n");
    proxy.shutdown().await;
}

async fn blocking_commands_are_not_cut_by_the_command_timeout(kind: Upstream) {
    let up = Backend::start_alone(kind).await;
    let mut config = up.config();
    for db in &mut config.databases {
        db.upstream.command_timeout = Duration::from_millis(300);
    }
    let proxy = start_proxy(config).await;
    let mut a = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut b = AsyncRawClient::connect(proxy.local_addr()).await;

    // WAIT for one replica more than a primary has, so it waits its timeout out.
    let replicas = kind.replicas().to_string();
    let more = (kind.replicas() + 1).to_string();
    let acked = format!(":{replicas}\r\n");
    // Their own timeouts (longer than command_timeout) run out normally.
    let cases: &[BlockCase] = &[
        (&[b"BLPOP", b"q", b"1"], b"*-1\r\n", Duration::from_secs(1)),
        (
            &[b"XREAD", b"BLOCK", b"800", b"STREAMS", b"s", b"$"],
            b"*-1\r\n",
            Duration::from_millis(800),
        ),
        (
            &[b"WAIT", more.as_bytes(), b"800"],
            acked.as_bytes(),
            Duration::from_millis(800),
        ),
        (
            &[b"BLMPOP", b"0.9", b"1", b"q", b"LEFT"],
            b"*-1\r\n",
            Duration::from_millis(900),
        ),
    ];
    for (args, want, wait) in cases {
        let started = Instant::now();
        let got = a.cmd(args).await;
        let took = started.elapsed();
        assert_eq!(printable(&got), printable(want), "{:?}", printable(args[0]));
        assert!(
            took >= *wait - Duration::from_millis(50) && took < *wait + Duration::from_secs(1),
            "{} took {took:?}",
            printable(args[0])
        );
    }
    // Timeout 0 waits as long as it takes.
    a.send(&resp_cmd(&[b"BLPOP", b"q", b"0"])).await;
    wait_blocked(&up, 1).await;
    a.assert_no_reply(Duration::from_millis(1200)).await;
    assert_eq!(b.cmd(&[b"RPUSH", b"q", b"late"]).await, b":1\r\n");
    assert_eq!(
        a.read_reply().await,
        b"*2\r\n$1\r\nq\r\n$4\r\nlate\r\n".to_vec()
    );
    // A command pipelined behind a blocking one is not cut either.
    a.send(&[resp_cmd(&[b"BLPOP", b"q", b"1"]), resp_cmd(&[b"PING"])].concat())
        .await;
    assert_eq!(
        a.read_replies(2).await,
        [b"*-1\r\n".to_vec(), b"+PONG\r\n".to_vec()]
    );
    proxy.shutdown().await;
}
