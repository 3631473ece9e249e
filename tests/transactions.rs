//! MULTI/EXEC/DISCARD/WATCH run on an exclusive upstream connection taken from the
//! database's pool: same replies as Redis, order kept with the shared connection's
//! commands, and the connection cleaned before anyone else gets it.

mod support;

use std::time::{Duration, Instant};

use bb8_redis::redis::{self, Value};
use support::upstream::{Backend, Upstream};
use support::{
    printable, proxy_config, redis_rs_conn, resp_bulk, resp_cmd, start_proxy, AsyncRawClient,
    RedisServer,
};

// Each runs against a standalone Redis and a Redis Cluster (`NAME::standalone`,
// `NAME::cluster`); the reference is a standalone Redis either way. Keys that share a
// transaction are hash-tagged on the cluster, as Redis Cluster requires.
upstream_tests!(
    a_pipeline_around_a_transaction_keeps_its_order,
    redis_rs_atomic_pipelines_work_through_the_proxy,
    multi_exec_discard_and_errors_answer_like_redis,
    watch_detects_a_write_from_another_client,
    a_client_leaving_mid_transaction_leaves_no_state_behind,
    commands_the_proxy_answers_are_queued_inside_multi_as_on_redis,
    a_command_the_proxy_refuses_inside_multi_aborts_the_transaction,
    transaction_commands_refused_for_their_arity_act_as_on_redis,
);

/// Sends the same commands to both, one at a time, and checks identical replies.
async fn same_replies(
    via_proxy: &mut AsyncRawClient,
    direct: &mut AsyncRawClient,
    script: &[&[&[u8]]],
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for args in script {
        let p = via_proxy.cmd(args).await;
        let d = direct.cmd(args).await;
        let shown: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert_eq!(printable(&p), printable(&d), "{shown:?}: proxy vs Redis");
        out.push(p);
    }
    out
}

async fn multi_exec_discard_and_errors_answer_like_redis(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut p = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut d = up.reference().await;
    let (a, b) = (kind.tagged("a"), kind.tagged("b"));
    let (a, b) = (a.as_bytes(), b.as_bytes());

    let r = same_replies(
        &mut p,
        &mut d,
        &[
            &[b"SET", a, b"1"],
            &[b"MULTI"],
            &[b"INCR", a],
            &[b"SET", b, b"x"],
            &[b"LPUSH", a, b"oops"],
            &[b"GET", b],
            &[b"EXEC"],
            &[b"GET", a],
        ],
    )
    .await;
    assert_eq!(r[1], b"+OK\r\n");
    assert_eq!(r[2], b"+QUEUED\r\n");
    assert!(
        r[6].starts_with(b"*4\r\n:2\r\n+OK\r\n-WRONGTYPE"),
        "{}",
        printable(&r[6])
    );
    assert_eq!(r[7], resp_bulk(b"2"));

    let r = same_replies(
        &mut p,
        &mut d,
        &[
            &[b"MULTI"],
            &[b"INCR", a],
            &[b"DISCARD"],
            &[b"GET", a],
            &[b"EXEC"],
            &[b"DISCARD"],
            // A queuing error aborts the transaction.
            &[b"MULTI"],
            &[b"SET", a],
            &[b"INCR", a],
            &[b"EXEC"],
            &[b"GET", a],
            // Nested MULTI.
            &[b"MULTI"],
            &[b"MULTI"],
            &[b"EXEC"],
            // EXEC and DISCARD without MULTI are refused and leave a WATCH as it
            // is: the client's own write then makes its next EXEC fail.
            &[b"WATCH", a],
            &[b"EXEC"],
            &[b"DISCARD"],
            &[b"SET", a, b"5"],
            &[b"MULTI"],
            &[b"GET", a],
            &[b"EXEC"],
        ],
    )
    .await;
    assert_eq!(r[20], b"*-1\r\n", "{}", printable(&r[20]));
    assert_eq!(r[3], resp_bulk(b"2"), "DISCARD dropped the INCR");
    assert!(
        r[4].starts_with(b"-ERR EXEC without MULTI"),
        "{}",
        printable(&r[4])
    );
    assert!(r[9].starts_with(b"-EXECABORT"), "{}", printable(&r[9]));
    assert_eq!(r[10], resp_bulk(b"2"));
    assert_eq!(r[13], b"*0\r\n");
    proxy.shutdown().await;
}

/// `MULTI`, `EXEC`, `DISCARD`, `WATCH` and `UNWATCH` with a wrong number of
/// arguments: Redis refuses them as it refuses any command so (inside `MULTI`
/// the transaction then aborts at `EXEC`), except that an `EXEC` so refused
/// ends the transaction and the `WATCH`. Same replies and same writes as Redis,
/// typed one by one or pipelined, RESP2 and RESP3, with another client's write
/// to the watched key where `OTHER` stands; and what is left on the upstream
/// connections lets another client's transaction run as usual. Until session 42
/// a `DISCARD x` inside `MULTI` ended the transaction in the proxy: the queued
/// write after it ran at once (Redis: `+QUEUED`, then `-EXECABORT`), and the
/// connection went back to the pool still inside `MULTI`, where the next client's
/// `WATCH` got `-ERR WATCH inside MULTI is not allowed`.
async fn transaction_commands_refused_for_their_arity_act_as_on_redis(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let key = kind.tagged("arity");
    let k = key.as_bytes();
    let scripts = [
        "SET K 0|WATCH K|OTHER|EXEC x|MULTI|SET K 1|EXEC",
        "SET K 0|WATCH K|OTHER|DISCARD x|MULTI|SET K 1|EXEC",
        "SET K 0|WATCH K|OTHER|UNWATCH x|MULTI|SET K 1|EXEC",
        "SET K 0|WATCH K|OTHER|MULTI|UNWATCH x|EXEC",
        "SET K 0|WATCH K|OTHER|MULTI|MULTI x|SET K 1|EXEC",
        "SET K 0|WATCH K|OTHER|MULTI|EXEC x|MULTI|SET K 1|EXEC",
        "SET K 0|WATCH|MULTI|SET K 1|EXEC",
        "SET K 0|MULTI|DISCARD x|SET K 1|EXEC|GET K",
        "SET K 0|MULTI|DISCARD x|SET K 1|DISCARD|MULTI|SET K 2|EXEC",
        "SET K 0|MULTI|EXEC x|SET K 1|GET K",
        "SET K 0|MULTI x|SET K 1|EXEC",
    ];
    let args = |step: &str| -> Vec<Vec<u8>> {
        step.split(' ')
            .map(|w| {
                if w == "K" {
                    k.to_vec()
                } else {
                    w.as_bytes().to_vec()
                }
            })
            .collect()
    };
    // One script on one side: its replies, then the key's value. `other_at`:
    // another client writes the key before that step; `pipelined`: the steps
    // from there (or from the second one) are sent at once.
    async fn run(
        me: &mut AsyncRawClient,
        other: &mut AsyncRawClient,
        steps: &[Vec<Vec<u8>>],
        other_at: Option<usize>,
        pipelined: bool,
        k: &[u8],
    ) -> Vec<String> {
        let split = other_at.unwrap_or(1);
        let mut out = Vec::new();
        for (i, a) in steps.iter().enumerate() {
            if other_at == Some(i) {
                assert_eq!(other.cmd(&[b"SET", k, b"other"]).await, b"+OK\r\n");
            }
            if pipelined && i == split {
                let rest = &steps[i..];
                let bytes: Vec<u8> = rest
                    .iter()
                    .flat_map(|a| resp_cmd(&a.iter().map(|x| &x[..]).collect::<Vec<_>>()))
                    .collect();
                me.send(&bytes).await;
                out.extend(me.read_replies(rest.len()).await);
                break;
            }
            out.push(me.cmd(&a.iter().map(|x| &x[..]).collect::<Vec<_>>()).await);
        }
        out.push(other.cmd(&[b"GET", k]).await);
        out.iter().map(|r| printable(r)).collect()
    }
    let mut checked = 0;
    for resp3 in [false, true] {
        for pipelined in [false, true] {
            for script in scripts {
                let mut steps: Vec<Vec<Vec<u8>>> = Vec::new();
                let mut other_at = None;
                for step in script.split('|') {
                    match step {
                        "OTHER" => other_at = Some(steps.len()),
                        _ => steps.push(args(step)),
                    }
                }
                let mut sides = Vec::new();
                for direct in [false, true] {
                    let (mut me, mut other) = if direct {
                        (up.reference().await, up.reference().await)
                    } else {
                        (
                            AsyncRawClient::connect(proxy.local_addr()).await,
                            AsyncRawClient::connect(proxy.local_addr()).await,
                        )
                    };
                    if resp3 {
                        me.cmd(&[b"HELLO", b"3"]).await;
                    }
                    sides.push(run(&mut me, &mut other, &steps, other_at, pipelined, k).await);
                }
                assert_eq!(
                    sides[0], sides[1],
                    "{script} resp3={resp3} pipelined={pipelined}: proxy vs Redis"
                );
                // A new client's transaction on what the pool holds now.
                let mut next = AsyncRawClient::connect(proxy.local_addr()).await;
                let tx = [
                    resp_cmd(&[b"WATCH", k]),
                    resp_cmd(&[b"MULTI"]),
                    resp_cmd(&[b"SET", k, b"next"]),
                    resp_cmd(&[b"EXEC"]),
                ]
                .concat();
                next.send(&tx).await;
                let got: Vec<String> = next
                    .read_replies(4)
                    .await
                    .iter()
                    .map(|r| printable(r))
                    .collect();
                assert_eq!(
                    got,
                    [
                        &b"+OK\r\n"[..],
                        b"+OK\r\n",
                        b"+QUEUED\r\n",
                        b"*1\r\n+OK\r\n"
                    ]
                    .map(printable),
                    "after {script} resp3={resp3} pipelined={pipelined}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 4 * scripts.len());
    proxy.shutdown().await;
}

async fn watch_detects_a_write_from_another_client(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut a = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut b = AsyncRawClient::connect(proxy.local_addr()).await;

    assert_eq!(a.cmd(&[b"SET", b"w", b"0"]).await, b"+OK\r\n");
    assert_eq!(a.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    // Another client (shared connection) changes it.
    assert_eq!(b.cmd(&[b"SET", b"w", b"changed"]).await, b"+OK\r\n");
    assert_eq!(a.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(a.cmd(&[b"SET", b"w", b"mine"]).await, b"+QUEUED\r\n");
    assert_eq!(
        a.cmd(&[b"EXEC"]).await,
        b"*-1\r\n",
        "EXEC must fail after the write"
    );
    assert_eq!(b.cmd(&[b"GET", b"w"]).await, resp_bulk(b"changed"));

    // Without interference the same thing succeeds.
    assert_eq!(a.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    assert_eq!(a.cmd(&[b"GET", b"w"]).await, resp_bulk(b"changed"));
    assert_eq!(a.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(a.cmd(&[b"SET", b"w", b"mine"]).await, b"+QUEUED\r\n");
    assert_eq!(a.cmd(&[b"EXEC"]).await, b"*1\r\n+OK\r\n");
    assert_eq!(b.cmd(&[b"GET", b"w"]).await, resp_bulk(b"mine"));

    // UNWATCH releases the watch.
    assert_eq!(a.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    assert_eq!(a.cmd(&[b"UNWATCH"]).await, b"+OK\r\n");
    assert_eq!(b.cmd(&[b"SET", b"w", b"again"]).await, b"+OK\r\n");
    assert_eq!(a.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(a.cmd(&[b"GET", b"w"]).await, b"+QUEUED\r\n");
    assert_eq!(a.cmd(&[b"EXEC"]).await, b"*1\r\n$5\r\nagain\r\n");
    proxy.shutdown().await;
}

async fn a_pipeline_around_a_transaction_keeps_its_order(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut p = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut d = up.reference().await;
    let mut bytes = Vec::new();
    let script: Vec<Vec<&[u8]>> = vec![
        vec![b"SET", b"a", b"1"],
        vec![b"INCR", b"a"],
        vec![b"MULTI"],
        vec![b"INCR", b"a"],
        vec![b"GET", b"a"],
        vec![b"EXEC"],
        vec![b"INCR", b"a"],
        vec![b"CLIENT", b"SETNAME", b"pipeliner"],
        vec![b"MULTI"],
        vec![b"INCRBY", b"a", b"10"],
        vec![b"EXEC"],
        vec![b"GET", b"a"],
        vec![b"WATCH", b"a"],
        vec![b"GET", b"a"],
        vec![b"MULTI"],
        vec![b"INCR", b"a"],
        vec![b"EXEC"],
        vec![b"GET", b"a"],
    ];
    for c in &script {
        bytes.extend(resp_cmd(c));
    }
    p.send(&bytes).await;
    let got = p.read_replies(script.len()).await;
    // Redis answers the same bytes (CLIENT SETNAME aside) the same way.
    d.send(&bytes).await;
    let want = d.read_replies(script.len()).await;
    assert_eq!(
        got.iter().map(|r| printable(r)).collect::<Vec<_>>(),
        want.iter().map(|r| printable(r)).collect::<Vec<_>>()
    );
    assert_eq!(got[5], b"*2\r\n:3\r\n$1\r\n3\r\n");
    assert_eq!(got[6], b":4\r\n");
    assert_eq!(got[10], b"*1\r\n:14\r\n");
    assert_eq!(got[17], resp_bulk(b"15"));
    assert_eq!(
        p.cmd(&[b"CLIENT", b"GETNAME"]).await,
        resp_bulk(b"pipeliner")
    );
    proxy.shutdown().await;
}

async fn redis_rs_atomic_pipelines_work_through_the_proxy(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut conn = redis_rs_conn(proxy.local_addr(), 3, Duration::from_secs(5)).await;
    let (ctr, key_s) = (kind.tagged("ctr"), kind.tagged("s"));
    let (shared, log) = (kind.tagged("shared"), kind.tagged("log"));
    let (a, b, c): (i64, i64, String) = redis::pipe()
        .atomic()
        .cmd("INCR")
        .arg(&ctr)
        .cmd("INCRBY")
        .arg(&ctr)
        .arg(5)
        .cmd("SET")
        .arg(&key_s)
        .arg("v")
        .ignore()
        .cmd("GET")
        .arg(&key_s)
        .query_async(&mut conn)
        .await
        .expect("atomic pipeline");
    assert_eq!((a, b, c.as_str()), (1, 6, "v"));
    // Many concurrent atomic pipelines on one multiplexed connection.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut conn = conn.clone();
        let (shared, log) = (shared.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let r: Vec<Value> = redis::pipe()
                .atomic()
                .cmd("INCR")
                .arg(&shared)
                .cmd("RPUSH")
                .arg(&log)
                .arg(i)
                .query_async(&mut conn)
                .await
                .expect("atomic pipeline");
            assert_eq!(r.len(), 2);
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("timed out")
            .expect("failed");
    }
    let n: i64 = redis::cmd("GET")
        .arg(&shared)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 20);
    // Written in client db 3's upstream.
    let mut direct = up.direct(3).await;
    assert_eq!(direct.cmd(&[b"LLEN", log.as_bytes()]).await, b":20\r\n");
    proxy.shutdown().await;
}

/// CLIENT SETNAME/GETNAME, AUTH, a SELECT out of range: answered by the proxy, but
/// inside MULTI queued as Redis queues them, run by EXEC (not by DISCARD or a
/// WATCH conflict), their replies in their places in EXEC's array.
async fn commands_the_proxy_answers_are_queued_inside_multi_as_on_redis(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut p = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut d = up.reference().await;
    let a = kind.tagged("a");
    let a = a.as_bytes();

    let r = same_replies(
        &mut p,
        &mut d,
        &[
            &[b"MULTI"],
            &[b"CLIENT", b"SETNAME", b"n1"],
            &[b"SET", a, b"1"],
            &[b"CLIENT", b"GETNAME"],
            &[b"SELECT", b"99"],
            &[b"AUTH", b"nopass"],
            &[b"INCR", a],
            &[b"CLIENT", b"SETNAME", b"has space"],
            &[b"EXEC"],
            &[b"CLIENT", b"GETNAME"],
            &[b"GET", a],
            // Refused while queueing (arity): EXEC discards it all.
            &[b"MULTI"],
            &[b"CLIENT", b"SETNAME", b"n2"],
            &[b"CLIENT", b"GETNAME", b"extra"],
            &[b"INCR", a],
            &[b"EXEC"],
            &[b"CLIENT", b"GETNAME"],
            &[b"GET", a],
            // DISCARD: nothing runs.
            &[b"MULTI"],
            &[b"CLIENT", b"SETNAME", b"n3"],
            &[b"DISCARD"],
            &[b"CLIENT", b"GETNAME"],
            // Only commands the proxy answers.
            &[b"MULTI"],
            &[b"CLIENT", b"SETNAME", b"n4"],
            &[b"CLIENT", b"GETNAME"],
            &[b"EXEC"],
        ],
    )
    .await;
    assert_eq!(r[1], b"+QUEUED\r\n");
    assert_eq!(
        printable(&r[8]),
        printable(
            b"*7\r\n+OK\r\n+OK\r\n$2\r\nn1\r\n-ERR DB index is out of range\r\n-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n:2\r\n-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
        )
    );
    assert_eq!(r[9], resp_bulk(b"n1"));
    assert_eq!(r[10], resp_bulk(b"2"));
    assert!(r[13].starts_with(b"-ERR wrong number of arguments"));
    assert!(r[15].starts_with(b"-EXECABORT"), "{}", printable(&r[15]));
    assert_eq!(r[16], resp_bulk(b"n1"));
    assert_eq!(r[17], resp_bulk(b"2"));
    assert_eq!(r[21], resp_bulk(b"n1"));
    assert_eq!(r[25], b"*2\r\n+OK\r\n$2\r\nn4\r\n");

    // A WATCH conflict: EXEC runs nothing, the proxy's commands included.
    let mut writer = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(p.cmd(&[b"WATCH", a]).await, b"+OK\r\n");
    assert_eq!(writer.cmd(&[b"SET", a, b"changed"]).await, b"+OK\r\n");
    assert_eq!(p.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(p.cmd(&[b"CLIENT", b"SETNAME", b"n5"]).await, b"+QUEUED\r\n");
    assert_eq!(p.cmd(&[b"EXEC"]).await, b"*-1\r\n");
    assert_eq!(p.cmd(&[b"CLIENT", b"GETNAME"]).await, resp_bulk(b"n4"));

    // A client that counts EXEC's elements (redis-rs's atomic pipeline) gets one
    // per command.
    let mut conn = redis_rs_conn(proxy.local_addr(), 0, Duration::from_secs(5)).await;
    let (set, name, got): (String, String, i64) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(a)
        .arg(7)
        .cmd("CLIENT")
        .arg("SETNAME")
        .arg("rs")
        .ignore()
        .cmd("CLIENT")
        .arg("GETNAME")
        .cmd("GET")
        .arg(a)
        .query_async(&mut conn)
        .await
        .expect("atomic pipeline");
    assert_eq!((set.as_str(), name.as_str(), got), ("OK", "rs", 7));
    proxy.shutdown().await;
}

/// What the proxy cannot run inside MULTI (SUBSCRIBE, CLIENT REPLY, HELLO, CLIENT
/// TRACKING) is refused as Redis refuses a command while queueing: the
/// transaction stays open and EXEC discards it, so nothing of it runs.
async fn a_command_the_proxy_refuses_inside_multi_aborts_the_transaction(kind: Upstream) {
    let up = Backend::start(kind);
    let proxy = start_proxy(up.config()).await;
    let mut p = AsyncRawClient::connect(proxy.local_addr()).await;
    let a = kind.tagged("a");
    let a = a.as_bytes();
    assert_eq!(p.cmd(&[b"SET", a, b"0"]).await, b"+OK\r\n");
    let refused: [&[&[u8]]; 4] = [
        &[b"SUBSCRIBE", b"ch"],
        &[b"CLIENT", b"REPLY", b"OFF"],
        &[b"HELLO", b"3"],
        &[b"CLIENT", b"TRACKING", b"ON"],
    ];
    for cmd in refused {
        assert_eq!(p.cmd(&[b"MULTI"]).await, b"+OK\r\n");
        assert_eq!(p.cmd(&[b"INCR", a]).await, b"+QUEUED\r\n");
        let r = p.cmd(cmd).await;
        let text = String::from_utf8_lossy(&r);
        // (On the cluster's prefixed database, CLIENT TRACKING is refused for
        // the prefix first.)
        assert!(
            text.starts_with("-ERR ") && text.contains(" not supported "),
            "{text}"
        );
        assert_eq!(p.cmd(&[b"INCR", a]).await, b"+QUEUED\r\n");
        let r = p.cmd(&[b"EXEC"]).await;
        assert!(r.starts_with(b"-EXECABORT"), "{}", printable(&r));
        assert_eq!(p.cmd(&[b"GET", a]).await, resp_bulk(b"0"));
    }
    proxy.shutdown().await;
}

/// Reads `key` in upstream db `db` straight from Redis.
async fn direct_get(redis: &RedisServer, db: &[u8], key: &[u8]) -> Vec<u8> {
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&[b"SELECT", db]).await, b"+OK\r\n");
    direct.cmd(&[b"GET", key]).await
}

// Standalone only: SELECT of upstream dbs on one connection (a cluster has db 0 only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_inside_a_transaction_runs_at_exec_as_on_redis() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    // One pooled exclusive connection: the next transaction reuses it.
    for db in &mut config.databases {
        db.upstream.pool_size = 1;
    }
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"SELECT", b"2"]).await, b"+OK\r\n");
    // Pipelined, as clients send transactions: the GET after EXEC must already
    // run in db 4.
    c.send(
        &[
            resp_cmd(&[b"MULTI"]),
            resp_cmd(&[b"SET", b"k", b"in2"]),
            resp_cmd(&[b"SELECT", b"4"]),
            resp_cmd(&[b"SET", b"k", b"in4"]),
            resp_cmd(&[b"EXEC"]),
            resp_cmd(&[b"GET", b"k"]),
        ]
        .concat(),
    )
    .await;
    let replies = c.read_replies(6).await;
    assert_eq!(replies[2], b"+QUEUED\r\n");
    assert_eq!(replies[4], b"*3\r\n+OK\r\n+OK\r\n+OK\r\n");
    assert_eq!(
        replies[5],
        resp_bulk(b"in4"),
        "the session is in db 4 after EXEC"
    );
    assert_eq!(direct_get(&redis, b"2", b"k").await, resp_bulk(b"in2"));
    assert_eq!(direct_get(&redis, b"4", b"k").await, resp_bulk(b"in4"));
    let info = String::from_utf8_lossy(&c.cmd(&[b"CLIENT", b"INFO"]).await).into_owned();
    assert!(info.contains(" db=4 "), "{info}");

    // The pooled connection went back selecting its own db again: another
    // session's transaction on db 2 lands in db 2, not in db 4.
    let mut other = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(other.cmd(&[b"SELECT", b"2"]).await, b"+OK\r\n");
    assert_eq!(other.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(other.cmd(&[b"SET", b"after", b"x"]).await, b"+QUEUED\r\n");
    assert_eq!(other.cmd(&[b"EXEC"]).await, b"*1\r\n+OK\r\n");
    assert_eq!(direct_get(&redis, b"2", b"after").await, resp_bulk(b"x"));
    assert_eq!(direct_get(&redis, b"4", b"after").await, b"$-1\r\n");
    proxy.shutdown().await;
}

// Standalone only: SELECT queued in a transaction (a cluster has db 0 only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_in_a_discarded_or_aborted_transaction_leaves_the_db_unchanged() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut writer = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"SET", b"where", b"db0"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"where", b"db5"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SELECT", b"0"]).await, b"+OK\r\n");

    // DISCARD: the queued SELECT never runs.
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SELECT", b"5"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"DISCARD"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"where"]).await, resp_bulk(b"db0"));

    // A WATCH conflict: EXEC runs nothing, SELECT included.
    assert_eq!(c.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    assert_eq!(writer.cmd(&[b"SET", b"w", b"changed"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SELECT", b"5"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*-1\r\n");
    assert_eq!(c.cmd(&[b"GET", b"where"]).await, resp_bulk(b"db0"));

    // EXECABORT: nothing runs either.
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SELECT", b"5"]).await, b"+QUEUED\r\n");
    assert!(c
        .cmd(&[b"NOSUCHCOMMAND"])
        .await
        .starts_with(b"-ERR unknown command"));
    assert!(c.cmd(&[b"EXEC"]).await.starts_with(b"-EXECABORT"));
    assert_eq!(c.cmd(&[b"GET", b"where"]).await, resp_bulk(b"db0"));

    // Under WATCH, outside MULTI, SELECT runs at once (as on Redis).
    assert_eq!(c.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"where"]).await, resp_bulk(b"db5"));
    assert_eq!(c.cmd(&[b"UNWATCH"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"where"]).await, resp_bulk(b"db5"));
    proxy.shutdown().await;
}

// Standalone only: two standalone servers by design.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_inside_a_transaction_across_servers_is_refused_and_the_transaction_aborts() {
    let redis = RedisServer::start();
    let other = RedisServer::start();
    let mut config = proxy_config(&redis);
    let moved = config
        .databases
        .iter_mut()
        .find(|d| d.index == 4)
        .expect("db 4");
    moved.upstream.port = other.port();
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"SELECT", b"2"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    let r = c.cmd(&[b"SELECT", b"4"]).await;
    assert!(
        r.starts_with(b"-ERR SELECT inside a transaction across upstream servers"),
        "{}",
        printable(&r)
    );
    // As a command Redis refuses while queueing: the transaction stays open, and
    // EXEC discards it (the SET meant for db 4 does not land in db 2).
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+QUEUED\r\n");
    let r = c.cmd(&[b"EXEC"]).await;
    assert!(r.starts_with(b"-EXECABORT"), "{}", printable(&r));
    assert_eq!(direct_get(&redis, b"2", b"k").await, b"$-1\r\n");
    assert_eq!(direct_get(&other, b"4", b"k").await, b"$-1\r\n");
    // Still in db 2.
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(direct_get(&redis, b"2", b"k").await, resp_bulk(b"v"));
    proxy.shutdown().await;
}

async fn a_client_leaving_mid_transaction_leaves_no_state_behind(kind: Upstream) {
    let up = Backend::start(kind);
    let mut config = up.config();
    // One exclusive connection: every transaction below reuses the same one.
    config.databases[0].upstream.pool_size = 1;
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();

    // Left inside MULTI with a queued write.
    let mut a = AsyncRawClient::connect(addr).await;
    assert_eq!(a.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(a.cmd(&[b"SET", b"ghost", b"1"]).await, b"+QUEUED\r\n");
    drop(a);
    // Left while WATCHing a key that is then changed.
    let mut w = AsyncRawClient::connect(addr).await;
    assert_eq!(w.cmd(&[b"WATCH", b"watched"]).await, b"+OK\r\n");
    drop(w);
    // Left via QUIT and via RESET inside MULTI.
    let mut q = AsyncRawClient::connect(addr).await;
    assert_eq!(q.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(q.cmd(&[b"SET", b"ghost2", b"1"]).await, b"+QUEUED\r\n");
    assert_eq!(q.cmd(&[b"QUIT"]).await, b"+OK\r\n");
    let mut r = AsyncRawClient::connect(addr).await;
    assert_eq!(r.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(r.cmd(&[b"SET", b"ghost3", b"1"]).await, b"+QUEUED\r\n");
    assert_eq!(r.cmd(&[b"RESET"]).await, b"+RESET\r\n");
    assert_eq!(r.cmd(&[b"GET", b"ghost3"]).await, b"$-1\r\n");

    // Left WATCHing after EXEC and DISCARD without MULTI (Redis refuses both,
    // and the WATCH stays on the connection).
    let mut e = AsyncRawClient::connect(addr).await;
    assert_eq!(e.cmd(&[b"WATCH", b"watched"]).await, b"+OK\r\n");
    assert!(e
        .cmd(&[b"EXEC"])
        .await
        .starts_with(b"-ERR EXEC without MULTI"));
    assert!(e
        .cmd(&[b"DISCARD"])
        .await
        .starts_with(b"-ERR DISCARD without MULTI"));
    drop(e);
    let mut other = AsyncRawClient::connect(addr).await;
    assert_eq!(
        other.cmd(&[b"SET", b"watched", b"changed"]).await,
        b"+OK\r\n"
    );

    // A new client gets the one exclusive connection: not in MULTI, not watching.
    let mut b = AsyncRawClient::connect(addr).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let m = b.cmd(&[b"MULTI"]).await;
        if m == b"+OK\r\n" {
            break;
        }
        // Only "pool busy" is acceptable, briefly, while the cleanup runs.
        assert!(
            m.starts_with(b"-UPSTREAM") && Instant::now() < deadline,
            "attempt {attempt}: {}",
            printable(&m)
        );
    }
    assert_eq!(b.cmd(&[b"SET", b"fresh", b"1"]).await, b"+QUEUED\r\n");
    assert_eq!(
        b.cmd(&[b"EXEC"]).await,
        b"*1\r\n+OK\r\n",
        "a leftover MULTI or WATCH would change this"
    );
    let mut direct = up.direct(0).await;
    for ghost in [&b"ghost"[..], b"ghost2", b"ghost3"] {
        assert_eq!(
            direct.cmd(&[b"EXISTS", ghost]).await,
            b":0\r\n",
            "{}",
            printable(ghost)
        );
    }
    proxy.shutdown().await;
}

// Standalone only: one pool per database (a cluster has one per node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_exclusive_pool_gives_a_clear_error_then_recovers() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.databases[0].upstream.pool_size = 1;
    config.databases[0].upstream.connect_timeout = Duration::from_millis(500);
    let proxy = start_proxy(config).await;
    let mut a = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut b = AsyncRawClient::connect(proxy.local_addr()).await;

    assert_eq!(a.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    let started = Instant::now();
    let r = b.cmd(&[b"MULTI"]).await;
    let t = String::from_utf8_lossy(&r).into_owned();
    assert!(t.starts_with("-UPSTREAM database 'main' (db 0): "), "{t}");
    assert!(t.contains("pool"), "{t}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // MULTI failed, so B is not in a transaction: its commands run at once, as usual.
    assert_eq!(
        printable(&b.cmd(&[b"SET", b"k", b"v"]).await),
        printable(b"+OK\r\n"),
        "after a failed MULTI"
    );
    assert_eq!(a.cmd(&[b"EXEC"]).await, b"*0\r\n");
    assert_eq!(b.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(b.cmd(&[b"GET", b"k"]).await, b"+QUEUED\r\n");
    assert_eq!(b.cmd(&[b"EXEC"]).await, b"*1\r\n$1\r\nv\r\n");
    proxy.shutdown().await;
}

// Standalone only: stops and restarts its one server.
/// A proxy whose Redis is not up (on the port returned) and a client of it.
/// Raw failures: with retries and the breaker on, retries would open the
/// circuit and commands would (rightly) get -CIRCUITOPEN instead of the cause.
async fn proxy_to_nothing() -> (u16, redis_sidecar::server::Proxy, AsyncRawClient) {
    let port = support::free_port();
    let mut config = redis_sidecar::config::Config::for_upstream("127.0.0.1", port);
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    support::without_retries_or_breaker(&mut config);
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    c.set_timeout(Duration::from_secs(15));
    (port, proxy, c)
}

/// A transaction command with a wrong number of arguments outside MULTI is
/// refused by Redis without changing anything: the proxy answers it itself, as
/// Redis does, so it needs no connection and its answer holds while Redis is
/// unreachable (until session 42 it took an exclusive connection, and `UNWATCH
/// x` got `+OK` when that failed). The same bytes, sent to Redis once it is up,
/// get the same replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_commands_refused_for_their_arity_need_no_connection() {
    let (port, proxy, mut c) = proxy_to_nothing().await;
    let script: [&[&[u8]]; 6] = [
        &[b"DISCARD", b"x"],
        &[b"UNWATCH", b"x"],
        &[b"MULTI", b"x"],
        &[b"WATCH"],
        &[b"exec", b"x"],
        &[b"GET", b"k"],
    ];
    let mut proxied = Vec::new();
    for a in script {
        proxied.push(printable(&c.cmd(a).await));
    }
    // Redis is down: only the GET needed it.
    assert!(proxied[5].contains("-UPSTREAM"), "{proxied:?}");
    let redis = tokio::task::spawn_blocking(move || RedisServer::start_on_port(port))
        .await
        .unwrap();
    let mut d = AsyncRawClient::connect(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await;
    let mut direct = Vec::new();
    for a in &script[..5] {
        direct.push(printable(&d.cmd(a).await));
    }
    assert_eq!(proxied[..5], direct[..]);
    assert!(direct[0].contains("wrong number of arguments for 'discard'"));
    assert!(direct[4].starts_with("\"-EXECABORT"), "{direct:?}");
    // And inside MULTI (Redis up now): the refusal aborts the transaction.
    let tx: [&[&[u8]]; 4] = [
        &[b"MULTI"],
        &[b"DISCARD", b"x"],
        &[b"SET", b"k", b"1"],
        &[b"EXEC"],
    ];
    let mut got = Vec::new();
    for a in tx {
        got.push(printable(&c.cmd(a).await));
    }
    let mut want = Vec::new();
    for a in tx {
        want.push(printable(&d.cmd(a).await));
    }
    assert_eq!(got, want);
    assert!(got[3].contains("EXECABORT"), "{got:?}");
    assert_eq!(d.cmd(&[b"EXISTS", b"k"]).await, b":0\r\n");
    drop(redis);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_while_redis_is_down_fails_fast_with_the_real_cause_and_leaves_no_transaction() {
    let (port, proxy, mut c) = proxy_to_nothing().await;

    // The shared path answers at once with the cause; MULTI should do no worse.
    let shared = String::from_utf8_lossy(&c.cmd(&[b"GET", b"k"]).await).into_owned();
    assert!(
        shared.starts_with(&format!(
            "-UPSTREAM database 'main' (db 0): cannot connect to 127.0.0.1:{port}"
        )),
        "{shared}"
    );
    let started = Instant::now();
    let multi = String::from_utf8_lossy(&c.cmd(&[b"MULTI"]).await).into_owned();
    let took = started.elapsed();
    assert!(
        multi.starts_with("-UPSTREAM database 'main' (db 0): "),
        "{multi}"
    );
    assert!(
        multi.contains(&format!("127.0.0.1:{port}")),
        "MULTI's error should name the unreachable upstream, not a busy pool: {multi}"
    );
    assert!(
        took < Duration::from_secs(2),
        "MULTI took {took:?} to fail while GET failed at once"
    );

    // Redis comes back: MULTI failed, so the client is not in a transaction.
    let redis = tokio::task::spawn_blocking(move || RedisServer::start_on_port(port))
        .await
        .unwrap();
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*1\r\n$1\r\nv\r\n");
    drop(redis);
    proxy.shutdown().await;
}

// Standalone only: pauses its one server (the cluster is shared by the binary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_on_a_hung_redis_times_out_and_the_session_recovers() {
    let mut redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    for db in &mut config.databases {
        db.upstream.command_timeout = Duration::from_millis(500);
    }
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"t", b"1"]).await, b"+QUEUED\r\n");
    redis.pause();
    let started = Instant::now();
    c.send(&resp_cmd(&[b"EXEC"])).await;
    let got = c.try_read_reply().await;
    let took = started.elapsed();
    redis.resume();
    let got = got.expect("EXEC on a hung Redis must be answered");
    let t = String::from_utf8_lossy(&got).into_owned();
    assert!(t.starts_with("-UPSTREAM database 'main' (db 0): "), "{t}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Redis is back; the session is usable, not stuck in the dead transaction.
    assert_eq!(
        printable(&c.cmd(&[b"SET", b"after", b"1"]).await),
        printable(b"+OK\r\n")
    );
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"after"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*1\r\n$1\r\n1\r\n");
    proxy.shutdown().await;
}

/// Kills every client connection of `redis` (the proxy's shared and exclusive ones).
async fn kill_upstream_connections(direct: &mut AsyncRawClient) {
    let r = direct.cmd(&[b"CLIENT", b"KILL", b"TYPE", b"normal"]).await;
    assert!(
        r.starts_with(b":") && r != b":0\r\n",
        "CLIENT KILL: {}",
        printable(&r)
    );
}

/// The exclusive connection of a transaction under way is lost (`CLIENT KILL` on
/// Redis): nothing the client sends for the transaction runs outside it, and EXEC
/// fails as Redis's would — `-EXECABORT` when the MULTI or a queued command was
/// lost (or a command was refused while queueing), a WATCH conflict's null when
/// only the WATCH was (the watched key may have changed unseen). Before, the
/// session dropped back to shared connections: the rest of a MULTI ran at once,
/// one command at a time, and an EXEC after a lost WATCH succeeded although
/// another client had changed the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_connection_is_lost_never_runs_outside_it() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut other = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    let lost = |r: Vec<u8>| {
        assert!(r.starts_with(b"-UPSTREAM "), "{}", printable(&r));
        assert!(
            String::from_utf8_lossy(&r).contains("was lost"),
            "{}",
            printable(&r)
        );
    };
    let abort = b"-EXECABORT Transaction discarded because of previous errors.\r\n";

    // Lost inside MULTI: the commands after the loss are queued by the proxy and
    // never run; EXEC aborts. CLIENT LIST shows the client in MULTI until then.
    let id = c.cmd(&[b"CLIENT", b"ID"]).await;
    let id = String::from_utf8_lossy(&id[1..id.len() - 2]).into_owned();
    let mut flags = async || {
        let list = other.cmd(&[b"CLIENT", b"LIST", b"ID", id.as_bytes()]).await;
        let list = String::from_utf8_lossy(&list).into_owned();
        let at = list.find(" flags=").expect("flags") + 7;
        list[at..].split(' ').next().unwrap_or_default().to_string()
    };
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"a", b"1"]).await, b"+QUEUED\r\n");
    kill_upstream_connections(&mut direct).await;
    lost(c.cmd(&[b"SET", b"b", b"2"]).await);
    assert_eq!(flags().await, "x");
    assert_eq!(c.cmd(&[b"SET", b"c", b"3"]).await, b"+QUEUED\r\n");
    assert_eq!(
        c.cmd(&[b"SET", b"c"]).await,
        b"-ERR wrong number of arguments for 'set' command\r\n"
    );
    assert_eq!(
        c.cmd(&[b"MULTI"]).await,
        b"-ERR MULTI calls can not be nested\r\n"
    );
    assert_eq!(
        c.cmd(&[b"SAVE"]).await,
        b"-ERR Command not allowed inside a transaction\r\n"
    );
    assert_eq!(c.cmd(&[b"EXEC"]).await, abort);
    assert_eq!(flags().await, "N");
    assert_eq!(
        direct.cmd(&[b"MGET", b"a", b"b", b"c"]).await,
        b"*3\r\n$-1\r\n$-1\r\n$-1\r\n"
    );
    // The session goes on: a new transaction runs.
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"-ERR EXEC without MULTI\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"a", b"1"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*1\r\n+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"a"]).await, resp_bulk(b"1"));

    // Lost while only a WATCH is in force, and another client changes the key:
    // EXEC answers as for a WATCH conflict, and the write does not happen.
    assert_eq!(c.cmd(&[b"SET", b"w", b"0"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    kill_upstream_connections(&mut direct).await;
    // (A read first: the proxy resends a read whose shared connection was lost,
    // never a write, which could otherwise meet the killed connection.)
    assert_eq!(other.cmd(&[b"GET", b"w"]).await, resp_bulk(b"0"));
    assert_eq!(other.cmd(&[b"SET", b"w", b"changed"]).await, b"+OK\r\n");
    lost(c.cmd(&[b"GET", b"w"]).await);
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"-ERR EXEC without MULTI\r\n");
    assert_eq!(c.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(
        c.cmd(&[b"WATCH", b"w"]).await,
        b"-ERR WATCH inside MULTI is not allowed\r\n"
    );
    assert_eq!(c.cmd(&[b"SET", b"w", b"mine"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*-1\r\n");
    assert_eq!(c.cmd(&[b"GET", b"w"]).await, resp_bulk(b"changed"));
    // Without a loss the same transaction runs.
    assert_eq!(c.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"w", b"mine"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*1\r\n+OK\r\n");

    // A lost WATCH: UNWATCH ends it (the next transaction is Redis's again); a
    // command refused while queueing makes EXEC abort; DISCARD ends it too.
    assert_eq!(c.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    kill_upstream_connections(&mut direct).await;
    lost(c.cmd(&[b"GET", b"w"]).await);
    assert_eq!(c.cmd(&[b"UNWATCH"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"w", b"u"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*1\r\n+OK\r\n");
    assert_eq!(c.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    kill_upstream_connections(&mut direct).await;
    lost(c.cmd(&[b"GET", b"w"]).await);
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(
        c.cmd(&[b"GET"]).await,
        b"-ERR wrong number of arguments for 'get' command\r\n"
    );
    assert_eq!(c.cmd(&[b"SET", b"w", b"v"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, abort);
    assert_eq!(c.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    kill_upstream_connections(&mut direct).await;
    lost(c.cmd(&[b"GET", b"w"]).await);
    // (MONITOR is refused, saying why: until session 44 "inside a
    // transaction", which it is not; the multi-session tool, seed 8847, where
    // the client had not been told of the loss. A subscription and tracking go
    // on, see `a_subscription_under_a_lost_watch_goes_on_as_on_redis` and
    // `tracking_under_a_lost_watch_goes_on_as_on_redis`.)
    let why = "under a WATCH whose connection was lost is not supported by redis-sidecar: UNWATCH first (EXEC would fail as for a changed key)\r\n";
    assert_eq!(
        String::from_utf8_lossy(&c.cmd(&[b"MONITOR"]).await),
        format!("-ERR MONITOR {why}")
    );
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"DISCARD"]).await, b"+OK\r\n");
    assert_eq!(
        c.cmd(&[b"DISCARD"]).await,
        b"-ERR DISCARD without MULTI\r\n"
    );
    assert_eq!(c.cmd(&[b"GET", b"w"]).await, resp_bulk(b"u"));

    // DISCARD, or UNWATCH outside MULTI, sent on the lost connection: Redis's +OK,
    // since what they ask for holds all the same.
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"d", b"1"]).await, b"+QUEUED\r\n");
    kill_upstream_connections(&mut direct).await;
    assert_eq!(c.cmd(&[b"DISCARD"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"d"]).await, b"$-1\r\n");
    assert_eq!(c.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    kill_upstream_connections(&mut direct).await;
    assert_eq!(
        c.cmd(&[b"DISCARD"]).await,
        b"-ERR DISCARD without MULTI\r\n",
        "a DISCARD outside MULTI is refused whatever became of its connection"
    );
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*-1\r\n", "the WATCH was lost");
    assert_eq!(c.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    kill_upstream_connections(&mut direct).await;
    assert_eq!(c.cmd(&[b"UNWATCH"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"d", b"2"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*1\r\n+OK\r\n");
    // The same with a RESET pipelined behind the DISCARD: RESET lets the held
    // connection go only once the DISCARD's fate is known (it answered `+OK`
    // outside MULTI when the loss came after RESET had let it go).
    for (before, discard) in [
        (
            &[&b"WATCH"[..], b"w"][..],
            &b"-ERR DISCARD without MULTI\r\n"[..],
        ),
        (&[&b"MULTI"[..]][..], &b"+OK\r\n"[..]),
    ] {
        assert_eq!(c.cmd(before).await, b"+OK\r\n");
        kill_upstream_connections(&mut direct).await;
        c.send(b"DISCARD\r\nRESET\r\n").await;
        assert_eq!(
            c.read_replies(2).await,
            [discard, b"+RESET\r\n"],
            "{before:?}"
        );
    }
    // And with a MULTI further on in the same write: each is answered as at its
    // own place (DISCARD and EXEC outside MULTI, refused by Redis), not as if
    // the MULTI sent after them had come first (they got `+OK` and the
    // lost-connection error: the multi-session tool, seed 5667).
    assert_eq!(c.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    kill_upstream_connections(&mut direct).await;
    let pipeline: Vec<u8> = [&[&b"DISCARD"[..]][..], &[b"EXEC"], &[b"MULTI"], &[b"PING"]]
        .iter()
        .flat_map(|r| resp_cmd(r))
        .collect();
    c.send(&pipeline).await;
    let replies = c.read_replies(4).await;
    assert_eq!(
        [&replies[0][..], &replies[1]],
        [
            &b"-ERR DISCARD without MULTI\r\n"[..],
            b"-ERR EXEC without MULTI\r\n"
        ]
    );
    lost(replies[2].clone());
    lost(replies[3].clone());
    assert_eq!(c.cmd(&[b"RESET"]).await, b"+RESET\r\n");

    // RESP3: the WATCH conflict's null is `_`; RESET ends a lost transaction.
    let hello = c.cmd(&[b"HELLO", b"3"]).await;
    assert!(hello.starts_with(b"%"), "{}", printable(&hello));
    assert_eq!(c.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    kill_upstream_connections(&mut direct).await;
    lost(c.cmd(&[b"GET", b"w"]).await);
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"w", b"3"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"_\r\n");
    assert_eq!(c.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
    kill_upstream_connections(&mut direct).await;
    lost(c.cmd(&[b"GET", b"w"]).await);
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"RESET"]).await, b"+RESET\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"w", b"r"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*1\r\n+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"w"]).await, resp_bulk(b"r"));
    proxy.shutdown().await;
}

/// A subscription under a WATCH whose connection was lost goes on, and so does
/// the lost WATCH, as the WATCH does on Redis: a RESP3 subscriber's transaction
/// fails at EXEC as for a changed key (the proxy answers it: nothing queued runs);
/// a RESP2 subscriber's EXEC is refused by Redis with `-EXECABORT`, which ends
/// the watch, and otherwise the watch is still in force after the last
/// unsubscribe. Compared byte for byte with Redis ([`under_a_lost_watch`]).
/// Until session 45 the proxy refused `SUBSCRIBE` there (the multi-session tool,
/// seeds 8847 and 9114).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_under_a_lost_watch_goes_on_as_on_redis() {
    under_a_lost_watch(&[
        // RESP2: the refused EXEC ends the watch; the next transaction runs.
        (false, "SUBSCRIBE ch; EXEC; UNSUBSCRIBE"),
        // RESP2: UNWATCH and MULTI are refused; the watch outlives the
        // subscription, and the transaction after it fails.
        (false, "PSUBSCRIBE p*; UNWATCH; MULTI; PUNSUBSCRIBE; EXEC"),
        // RESP3: the transaction on the subscribed connection fails, and the
        // UNSUBSCRIBE queued in it never runs; the EXEC ends the watch.
        (
            true,
            "SUBSCRIBE ch; MULTI; SET w mine; UNSUBSCRIBE; EXEC; GET w; UNSUBSCRIBE",
        ),
        // RESP3: EXEC without MULTI keeps the watch, and so do transaction
        // commands refused for their arity (Redis's refusals); UNWATCH ends it.
        (true, "SUBSCRIBE ch; EXEC; WATCH; MULTI x; DISCARD x; UNWATCH"),
        // RESP3: still watched after the last unsubscribe.
        (true, "SUBSCRIBE ch; PING; UNSUBSCRIBE ch"),
        // RESP3, in one write: what the proxy answers comes after the replies to
        // what went to the subscriber connection before it.
        (
            true,
            "SUBSCRIBE ch ch2 | MULTI | SET w mine | EXEC | UNSUBSCRIBE ch | WATCH w | PING | MULTI | EXEC +1",
        ),
    ])
    .await;
}

/// `CLIENT TRACKING ON` under a WATCH whose connection was lost turns tracking on
/// (invalidations come), and the lost WATCH goes on, as the WATCH does on Redis:
/// a transaction fails at EXEC as for a changed key (the proxy answers it on the
/// tracking connection too: nothing queued runs), `EXEC` without `MULTI` keeps
/// it, `UNWATCH` ends it, also after tracking is off again. Until session 47 the
/// proxy refused `CLIENT TRACKING ON` there (the multi-session tool, seeds 8352
/// and 9117).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_under_a_lost_watch_goes_on_as_on_redis() {
    under_a_lost_watch(&[
        // RESP3: tracking works; the transaction fails; its EXEC ends the watch.
        (
            true,
            "CLIENT TRACKING ON; GET t; OTHER SET t 1; PING; MULTI; SET w mine; GET t; EXEC; GET w",
        ),
        // RESP2: EXEC without MULTI keeps the watch; more keys watched too.
        (false, "CLIENT TRACKING ON; EXEC; WATCH x; GET w"),
        // UNWATCH ends it: the transaction runs on the tracking connection.
        (
            true,
            "CLIENT TRACKING ON BCAST; UNWATCH; MULTI; SET w mine; EXEC; PING",
        ),
        // Still watched once tracking is off again.
        (true, "CLIENT TRACKING ON; CLIENT TRACKING OFF; GET w"),
        // In one write.
        (
            true,
            "CLIENT TRACKING ON | GET t | MULTI | SET t 2 | EXEC | UNWATCH | MULTI | EXEC +0",
        ),
    ])
    .await;
}

/// Runs each case (RESP3?, its steps) against Redis, where another client's
/// write makes the client's `WATCH w` fail, and through the proxy, where the
/// watching connection is killed as well, and compares the replies byte for
/// byte; then a transaction shows whether the watch is still in force: `MULTI;
/// SET w mine; EXEC; GET w`. Steps are split at `;` (one at a time: `OTHER …`
/// is sent by another client, on both sides) or at `|` (one write, ending in
/// `+N` for N frames more than requests; the fifth must be the failed EXEC's
/// `_`).
async fn under_a_lost_watch(cases: &[(bool, &'static str)]) {
    let redis = RedisServer::start();
    let reference = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    let mut other = AsyncRawClient::connect(reference.addr()).await;
    for &(resp3, steps) in cases {
        let mut p = AsyncRawClient::connect(proxy.local_addr()).await;
        let mut r = AsyncRawClient::connect(reference.addr()).await;
        if resp3 {
            for c in [&mut p, &mut r] {
                let hello = c.cmd(&[b"HELLO", b"3"]).await;
                assert!(hello.starts_with(b"%"), "{}", printable(&hello));
            }
        }
        for c in [&mut p, &mut r] {
            assert_eq!(c.cmd(&[b"WATCH", b"w"]).await, b"+OK\r\n");
        }
        kill_upstream_connections(&mut direct).await;
        let told = p.cmd(&[b"GET", b"w"]).await;
        assert!(
            String::from_utf8_lossy(&told).contains("was lost"),
            "{}",
            printable(&told)
        );
        for c in [&mut direct, &mut other] {
            assert_eq!(c.cmd(&[b"SET", b"w", b"changed"]).await, b"+OK\r\n");
        }
        let words = |text: &'static str| -> Vec<Vec<&'static [u8]>> {
            text.split([';', '|'])
                .map(|c| c.split_whitespace().map(str::as_bytes).collect())
                .collect()
        };
        if let Some((steps, more)) = steps.rsplit_once(" +") {
            let more: usize = more.parse().expect("+N");
            let pipeline: Vec<u8> = words(steps).iter().flat_map(|c| resp_cmd(c)).collect();
            let n = words(steps).len() + more;
            let mut replies = Vec::new();
            for c in [&mut p, &mut r] {
                c.send(&pipeline).await;
                let got = c.read_replies(n).await;
                replies.push(got.iter().map(|r| printable(r)).collect::<Vec<_>>());
            }
            assert_eq!(replies[0], replies[1], "{steps}: proxy vs Redis");
            assert_eq!(replies[0][4], printable(b"_\r\n"), "{:?}", replies[0]);
            continue;
        }
        let mut script = words(steps);
        script.extend(words("MULTI; SET w mine; EXEC; GET w"));
        for step in &script {
            if step[0] == b"OTHER" {
                for c in [&mut direct, &mut other] {
                    c.cmd(&step[1..]).await;
                }
                continue;
            }
            same_replies(&mut p, &mut r, &[step.as_slice()]).await;
        }
    }
    proxy.shutdown().await;
}

/// A MULTI or WATCH whose reply the client skipped (`CLIENT REPLY SKIP`, or
/// replies off) is a transaction the client takes as begun. When the connection
/// it needs cannot be had (here Redis refuses new connections: `maxclients`),
/// or is lost before Redis answered anything there, the transaction is lost,
/// not gone: nothing sent for it runs outside it, and EXEC aborts (or fails as
/// for a WATCH conflict). Before, the proxy counted a transaction as known to
/// the client only once a reply came on its connection: it was forgotten, the
/// commands after it ran one by one on the shared connections, and EXEC got
/// `-ERR EXEC without MULTI` (the multi-session tool, `KILL`, seed 8687, session
/// 43: killed between the MULTI's checkout and its reply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_begun_with_its_reply_skipped_is_lost_with_its_connection() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    for db in &mut config.databases {
        db.upstream.connect_timeout = Duration::from_millis(300);
    }
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    let skip = resp_cmd(&[b"CLIENT", b"REPLY", b"SKIP"]);
    let off = resp_cmd(&[b"CLIENT", b"REPLY", b"OFF"]);
    let on = resp_cmd(&[b"CLIENT", b"REPLY", b"ON"]);
    let multi = resp_cmd(&[b"MULTI"]);
    let watch = resp_cmd(&[b"WATCH", b"sk"]);
    let cases: [(&str, Vec<u8>, &[u8]); 3] = [
        (
            "SKIP MULTI",
            [&skip[..], &multi].concat(),
            b"-EXECABORT Transaction discarded because of previous errors.\r\n",
        ),
        ("SKIP WATCH", [&skip[..], &watch].concat(), b"*-1\r\n"),
        ("OFF WATCH ON", [&off[..], &watch, &on].concat(), b"*-1\r\n"),
    ];
    for (name, begin, exec) in cases {
        // (A proxy of its own: no connection of an earlier case idle in its pool.)
        let proxy = start_proxy(config.clone()).await;
        let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
        assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
        // No connection more: the transaction's own cannot be opened.
        let info = String::from_utf8_lossy(&direct.cmd(&[b"INFO", b"clients"]).await).into_owned();
        let clients = info
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .expect("connected_clients");
        let set = |n: &str| resp_cmd(&[b"CONFIG", b"SET", b"maxclients", n.as_bytes()]);
        direct.send(&set(clients)).await;
        assert_eq!(direct.read_replies(1).await, [b"+OK\r\n"], "{name}");
        if name == "SKIP MULTI" {
            // Redis's refusal (sent as it accepts, before it closes) fails the
            // setup: the command was never sent, and the client is told so.
            let r =
                String::from_utf8_lossy(&c.cmd(&[b"BLPOP", b"nolist", b"0.1"]).await).into_owned();
            assert!(
                r.contains("rejected the connection setup: ERR max number of clients reached"),
                "{r}"
            );
        }
        c.send(&begin).await;
        if name.ends_with("ON") {
            assert_eq!(c.read_replies(1).await, [b"+OK\r\n"], "{name}");
        }
        // Past the connect timeout: the connection could not be had.
        tokio::time::sleep(Duration::from_millis(700)).await;
        direct.send(&set("10000")).await;
        assert_eq!(direct.read_replies(1).await, [b"+OK\r\n"], "{name}");
        if name.contains("WATCH") {
            assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n", "{name}");
        }
        assert_eq!(
            c.cmd(&[b"SET", b"sk", b"1"]).await,
            b"+QUEUED\r\n",
            "{name}"
        );
        assert_eq!(
            printable(&c.cmd(&[b"EXEC"]).await),
            printable(exec),
            "{name}"
        );
        assert_eq!(
            direct.cmd(&[b"EXISTS", b"sk"]).await,
            b":0\r\n",
            "{name}: ran outside"
        );
        // The session goes on.
        assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n", "{name}");
        assert_eq!(c.cmd(&[b"EXEC"]).await, b"*0\r\n", "{name}");
        proxy.shutdown().await;
    }
}

/// A `HELLO` under a `WATCH` makes the watching connection the session's own
/// (`owns_watch`); once the watch is over the session has nothing there, and a
/// loss of the proxy's connections afterwards must not reach it: its next
/// command is served (a lost connection retried) as for any client. Every way a
/// watch ends is tried. An `EXEC` with arguments (Redis's `-EXECABORT`, which
/// ends the transaction and the watch) kept the connection, and the next
/// command got `-UPSTREAM … lost before the command was sent` (the
/// multi-session tool, seed 8723, session 44).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ended_after_hello_leaves_no_connection_to_lose() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    let abort_arity =
        &b"-EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command\r\n"[..];
    type Requests<'a> = &'a [&'a [&'a [u8]]];
    let endings: &[(Requests, &[&[u8]])] = &[
        (&[&[b"EXEC", b"x"]], &[abort_arity]),
        (&[&[b"MULTI"], &[b"EXEC", b"x"]], &[b"+OK\r\n", abort_arity]),
        (
            &[&[b"MULTI"], &[b"NOSUCHCMD"], &[b"EXEC"]],
            &[
                b"+OK\r\n",
                b"-ERR unknown command 'NOSUCHCMD', with args beginning with: \r\n",
                b"-EXECABORT Transaction discarded because of previous errors.\r\n",
            ],
        ),
        (&[&[b"MULTI"], &[b"EXEC"]], &[b"+OK\r\n", b"*0\r\n"]),
        (&[&[b"MULTI"], &[b"DISCARD"]], &[b"+OK\r\n", b"+OK\r\n"]),
        (&[&[b"UNWATCH"]], &[b"+OK\r\n"]),
    ];
    for hello in [&b"3"[..], b"2"] {
        for (ending, replies) in endings {
            let label = format!(
                "HELLO {}, then {}",
                String::from_utf8_lossy(hello),
                ending
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r.join(&b' ')).into_owned())
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
            assert_eq!(c.cmd(&[b"WATCH", b"hw"]).await, b"+OK\r\n");
            let reply = c.cmd(&[b"HELLO", hello]).await;
            assert!(
                reply.starts_with(b"%") || reply.starts_with(b"*"),
                "{}",
                printable(&reply)
            );
            for (request, reply) in ending.iter().zip(replies.iter()) {
                assert_eq!(
                    printable(&c.cmd(request).await),
                    printable(reply),
                    "{label}"
                );
            }
            kill_upstream_connections(&mut direct).await;
            assert_eq!(
                printable(&c.cmd(&[b"DEL", b"hw"]).await),
                printable(b":0\r\n"),
                "{label}, then every upstream connection killed"
            );
        }
    }
    // While the watch holds, the loss is the session's: told, as before.
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"WATCH", b"hw"]).await, b"+OK\r\n");
    assert!(c.cmd(&[b"HELLO", b"3"]).await.starts_with(b"%"));
    kill_upstream_connections(&mut direct).await;
    let r = c.cmd(&[b"DEL", b"hw"]).await;
    assert!(r.starts_with(b"-UPSTREAM "), "{}", printable(&r));
    proxy.shutdown().await;
}

/// EXEC and DISCARD outside MULTI, on the shared connections or on one of the
/// session's own (here the tracking one), are refused as Redis refuses them,
/// whatever becomes of the connection. Before, they went to Redis (on the shared
/// connections, by way of a pooled one), and a DISCARD whose connection failed
/// was answered `+OK` as if it had ended a transaction. And a SUBSCRIBE under
/// `CLIENT REPLY OFF` whose connection cannot be opened closes the client (it
/// would not be told, and Redis would have confirmed it); before, the client was
/// left waiting for a confirmation that never came. (Both found with
/// `scripts/session_fuzz/sessions.py` in its `STOP` mode.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_discard_outside_multi_are_refused_whatever_the_connection_does() {
    let mut redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    for db in &mut config.databases {
        db.upstream.command_timeout = Duration::from_millis(300);
        db.upstream.connect_timeout = Duration::from_millis(300);
    }
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut shared = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut off = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await, b"+OK\r\n");
    off.send(&resp_cmd(&[b"CLIENT", b"REPLY", b"OFF"])).await;
    redis.pause();
    let both = [resp_cmd(&[b"DISCARD"]), resp_cmd(&[b"EXEC"])].concat();
    c.send(&both).await;
    shared.send(&both).await;
    off.send(&resp_cmd(&[b"SUBSCRIBE", b"ch"])).await;
    let replies = [
        c.read_reply().await,
        c.read_reply().await,
        shared.read_reply().await,
        shared.read_reply().await,
    ];
    off.set_timeout(Duration::from_secs(3));
    let rest = off.read_until_closed().await;
    redis.resume();
    let refused = [
        printable(b"-ERR DISCARD without MULTI\r\n"),
        printable(b"-ERR EXEC without MULTI\r\n"),
    ];
    assert_eq!(
        replies.map(|r| printable(&r)).to_vec(),
        [refused.clone(), refused].concat()
    );
    assert!(
        rest.is_empty(),
        "closed without a word (replies are off): {}",
        printable(&rest)
    );
    // The session keeps its connection, and tracking.
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, b"$-1\r\n");
    let info = c.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await;
    assert!(
        info.starts_with(b"*6\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n"),
        "{}",
        printable(&info)
    );
    // A wrong number of arguments is still Redis's to answer.
    assert_eq!(
        c.cmd(&[b"DISCARD", b"x"]).await,
        b"-ERR wrong number of arguments for 'discard' command\r\n"
    );
    proxy.shutdown().await;
}
