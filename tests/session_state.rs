//! Session state under faults (issue 8, defects 2–5): a runaway script can be
//! killed through the proxy, mixed SUBSCRIBE/SSUBSCRIBE keep their subscriptions,
//! RESET undoes CLIENT REPLY OFF, and replies the proxy gives itself never overtake
//! pub/sub confirmations. Each expectation is what `redis-server` does with the
//! same bytes, checked side by side where the bytes are deterministic.

mod support;

use std::time::{Duration, Instant};

use support::{proxy_config, resp_cmd, start_proxy, AsyncRawClient, RedisServer};

/// Sends `bytes` to `addr` and reads until the connection has been quiet for a
/// while (or closed): everything the server answered.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    exchange_on(AsyncRawClient::connect(addr).await, bytes).await
}

/// [`exchange`] on a connection already open.
async fn exchange_on(mut c: AsyncRawClient, bytes: &[u8]) -> Vec<u8> {
    c.send(bytes).await;
    let mut out = Vec::new();
    while let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(400), c.try_read_reply()).await
    {
        out.extend_from_slice(&r);
    }
    out
}

fn cmds(list: &[&[&[u8]]]) -> Vec<u8> {
    list.iter().flat_map(|c| resp_cmd(c)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_turns_replies_back_on_as_redis_does() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let bytes = cmds(&[&[b"CLIENT", b"REPLY", b"OFF"], &[b"RESET"], &[b"PING"]]);
    let direct = exchange(redis.addr(), &bytes).await;
    assert_eq!(direct, b"+RESET\r\n+PONG\r\n");
    assert_eq!(exchange(proxy.local_addr(), &bytes).await, direct);
    // SKIP, too.
    let bytes = cmds(&[&[b"CLIENT", b"REPLY", b"SKIP"], &[b"RESET"], &[b"PING"]]);
    let direct = exchange(redis.addr(), &bytes).await;
    assert_eq!(exchange(proxy.local_addr(), &bytes).await, direct);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_wait_for_pubsub_confirmations() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    // Pipelined in one write: the confirmations of SUBSCRIBE come from Redis, the
    // answers to QUIT / RESET from the proxy; Redis's order must hold.
    let cases: Vec<Vec<u8>> = vec![
        cmds(&[&[b"SUBSCRIBE", b"a", b"b", b"c"], &[b"QUIT"]]),
        cmds(&[&[b"SUBSCRIBE", b"a", b"b"], &[b"RESET"], &[b"PING"]]),
        cmds(&[
            &[b"SUBSCRIBE", b"a"],
            &[b"SSUBSCRIBE", b"s1", b"s2"],
            &[b"PSUBSCRIBE", b"p*"],
            &[b"RESET"],
            &[b"GET", b"x"],
        ]),
    ];
    for bytes in &cases {
        let direct = exchange(redis.addr(), bytes).await;
        let proxied = exchange(proxy.local_addr(), bytes).await;
        assert_eq!(
            String::from_utf8_lossy(&proxied),
            String::from_utf8_lossy(&direct),
            "request {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // PROXY (which Redis does not have) is answered after the confirmations too.
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    c.send(&cmds(&[&[b"SUBSCRIBE", b"a", b"b"], &[b"PROXY", b"HELP"]]))
        .await;
    assert!(c
        .read_reply()
        .await
        .starts_with(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na"));
    assert!(c
        .read_reply()
        .await
        .starts_with(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb"));
    let help = c.read_reply().await;
    assert!(!help.starts_with(b"*3\r\n$9\r\nsubscribe"), "{help:?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_subscriptions_survive_unsubscribing_the_last_channel() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut sub = AsyncRawClient::connect(proxy.local_addr()).await;
    sub.send(&cmds(&[
        &[b"SUBSCRIBE", b"a"],
        &[b"SSUBSCRIBE", b"b"],
        &[b"UNSUBSCRIBE", b"a"],
    ]))
    .await;
    assert_eq!(
        sub.read_replies(3).await.concat(),
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n\
          *3\r\n$10\r\nssubscribe\r\n$1\r\nb\r\n:1\r\n\
          *3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n"
    );
    let mut publisher = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(
        publisher.cmd(&[b"SPUBLISH", b"b", b"hello"]).await,
        b":1\r\n"
    );
    assert_eq!(
        sub.read_reply().await,
        b"*3\r\n$8\r\nsmessage\r\n$1\r\nb\r\n$5\r\nhello\r\n"
    );
    // Still in pub/sub mode, as on Redis: GET is refused by Redis itself.
    let refused = sub.cmd(&[b"GET", b"x"]).await;
    assert!(
        refused.starts_with(b"-ERR Can't execute 'get'"),
        "{refused:?}"
    );
    // The last shard channel gone: back to request/reply.
    assert_eq!(
        sub.cmd(&[b"SUNSUBSCRIBE"]).await,
        b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\nb\r\n:0\r\n"
    );
    assert_eq!(sub.cmd(&[b"GET", b"x"]).await, b"$-1\r\n");
    proxy.shutdown().await;
}

/// A Lua loop that runs until killed.
const RUNAWAY: &[u8] = b"while true do end";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_script_is_killed_through_the_proxy() {
    let redis = RedisServer::start_with_args(&["--busy-reply-threshold", "100"]);
    let mut config = proxy_config(&redis);
    for db in &mut config.databases {
        // One shared connection: the killer's session is on the script's slot.
        db.upstream.mux_connections = 1;
        db.upstream.resilience.failure_threshold = 2;
        db.upstream.command_timeout = Duration::from_secs(30);
    }
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();
    let mut script = AsyncRawClient::connect(addr).await;
    script.send(&resp_cmd(&[b"EVAL", RUNAWAY, b"0"])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Other clients meet Redis's -BUSY (through a fresh connection of their own, as
    // the shared one is running the script): not a reason to open the breaker.
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    for _ in 0..5 {
        let busy = direct.cmd(&[b"GET", b"x"]).await;
        assert!(busy.starts_with(b"-BUSY"), "{busy:?}");
    }
    let mut killer = AsyncRawClient::connect(addr).await;
    let started = Instant::now();
    assert_eq!(killer.cmd(&[b"SCRIPT", b"KILL"]).await, b"+OK\r\n");
    assert!(started.elapsed() < Duration::from_secs(3));
    let killed = script.read_reply().await;
    assert!(
        killed.starts_with(b"-ERR") && String::from_utf8_lossy(&killed).contains("killed"),
        "{:?}",
        String::from_utf8_lossy(&killed)
    );
    assert_eq!(killer.cmd(&[b"SET", b"after", b"1"]).await, b"+OK\r\n");

    // Again from a database other than 0 (found by Redis's own suite, which runs in
    // db 9): the kill's connection used to SELECT first, which a busy Redis refuses
    // (-BUSY), so the kill never got there. SCRIPT KILL is server-wide: no SELECT.
    script.send(&resp_cmd(&[b"EVAL", RUNAWAY, b"0"])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(killer.cmd(&[b"SELECT", b"9"]).await, b"+OK\r\n");
    assert_eq!(killer.cmd(&[b"SCRIPT", b"KILL"]).await, b"+OK\r\n");
    let killed = script.read_reply().await;
    assert!(killed.starts_with(b"-ERR"), "{killed:?}");
    assert_eq!(killer.cmd(&[b"SET", b"after", b"1"]).await, b"+OK\r\n");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_replies_do_not_open_the_breaker() {
    let redis = RedisServer::start_with_args(&["--busy-reply-threshold", "100"]);
    let mut config = proxy_config(&redis);
    for db in &mut config.databases {
        db.upstream.resilience.failure_threshold = 2;
        db.upstream.resilience.retry_attempts = 0;
    }
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();
    // The runaway script comes straight to Redis; proxy clients see -BUSY.
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    direct.send(&resp_cmd(&[b"EVAL", RUNAWAY, b"0"])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = AsyncRawClient::connect(addr).await;
    for _ in 0..6 {
        let r = c.cmd(&[b"GET", b"x"]).await;
        assert!(r.starts_with(b"-BUSY"), "{:?}", String::from_utf8_lossy(&r));
    }
    let mut admin = AsyncRawClient::connect(addr).await;
    let info =
        String::from_utf8_lossy(&admin.cmd(&[b"PROXY", b"INFO", b"circuits"]).await).into_owned();
    assert!(
        info.contains("circuit_db0:name=main,state=closed,"),
        "{info}"
    );
    // In another database a new connection's SELECT is refused while the script
    // runs: the client gets that -BUSY as Redis would give it to the command.
    let mut c9 = AsyncRawClient::connect(addr).await;
    assert_eq!(c9.cmd(&[b"SELECT", b"9"]).await, b"+OK\r\n");
    let mut direct9 = AsyncRawClient::connect(redis.addr()).await;
    let busy = direct9.cmd(&[b"BLPOP", b"q", b"1"]).await;
    assert!(busy.starts_with(b"-BUSY"), "{busy:?}");
    for args in [&[&b"BLPOP"[..], b"q", b"1"][..], &[b"GET", b"x"]] {
        assert_eq!(
            String::from_utf8_lossy(&c9.cmd(args).await),
            String::from_utf8_lossy(&busy),
            "{args:?}"
        );
    }
    assert_eq!(c.cmd(&[b"SCRIPT", b"KILL"]).await, b"+OK\r\n");
    let killed = direct.read_reply().await;
    assert!(killed.starts_with(b"-ERR"), "{killed:?}");
    assert_eq!(c.cmd(&[b"GET", b"x"]).await, b"$-1\r\n");
    proxy.shutdown().await;
}

/// `blocked_clients` of Redis's `INFO clients`.
async fn blocked_on(redis: &RedisServer) -> u64 {
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    let info = String::from_utf8_lossy(&direct.cmd(&[b"INFO", b"clients"]).await).into_owned();
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no blocked_clients in {info}"))
}

/// Waits (bounded) until Redis has `n` blocked clients.
async fn wait_blocked_on(redis: &RedisServer, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while blocked_on(redis).await != n {
        assert!(Instant::now() < deadline, "never {n} blocked clients");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `admin` pauses writes for 30 s; `w` sends `SET k after` + `GET k`, and Redis
/// holds the SET back (a blocked client).
async fn pause_and_write(admin: &mut AsyncRawClient, w: &mut AsyncRawClient, redis: &RedisServer) {
    let paused = admin.cmd(&[b"CLIENT", b"PAUSE", b"30000", b"WRITE"]).await;
    assert_eq!(paused, b"+OK\r\n");
    let pipeline = [
        resp_cmd(&[b"SET", b"k", b"after"]),
        resp_cmd(&[b"GET", b"k"]),
    ]
    .concat();
    w.send(&pipeline).await;
    wait_blocked_on(redis, 1).await;
}

/// `CLIENT PAUSE … WRITE` through the proxy: as on Redis, a write is held back
/// (a blocked client) while the reads of other clients — in its database and in
/// another on the same server — are answered at once; the writer's pipeline
/// keeps its order, and `CLIENT UNPAUSE` lets it go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_write_does_not_hold_up_other_clients_reads() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let addr = proxy.local_addr();
    let (mut admin, mut w, mut r) = (
        AsyncRawClient::connect(addr).await,
        AsyncRawClient::connect(addr).await,
        AsyncRawClient::connect(addr).await,
    );
    let mut r5 = AsyncRawClient::connect(addr).await;
    assert_eq!(r5.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_eq!(r.cmd(&[b"SET", b"k", b"before"]).await, b"+OK\r\n");
    // Reads that wait behind a paused write would not come back in time.
    r.set_timeout(Duration::from_secs(3));
    r5.set_timeout(Duration::from_secs(3));

    pause_and_write(&mut admin, &mut w, &redis).await;
    for _ in 0..3 {
        assert_eq!(r.cmd(&[b"GET", b"k"]).await, b"$6\r\nbefore\r\n");
        assert_eq!(r5.cmd(&[b"EXISTS", b"k"]).await, b":0\r\n");
    }
    // A write in the other database on that server is held back too.
    r5.send(&resp_cmd(&[b"SET", b"k5", b"v"])).await;
    wait_blocked_on(&redis, 2).await;
    assert_eq!(r.cmd(&[b"PING"]).await, b"+PONG\r\n");
    w.assert_no_reply(Duration::from_millis(100)).await;

    assert_eq!(admin.cmd(&[b"CLIENT", b"UNPAUSE"]).await, b"+OK\r\n");
    assert_eq!(
        w.read_replies(2).await,
        [&b"+OK\r\n"[..], b"$5\r\nafter\r\n"]
    );
    assert_eq!(r5.read_reply().await, b"+OK\r\n");
    assert_eq!(r.cmd(&[b"GET", b"k"]).await, b"$5\r\nafter\r\n");
    assert_eq!(blocked_on(&redis).await, 0);
    proxy.shutdown().await;
}

/// A proxy with one shared connection per database (every session of a database
/// on it) and a command timeout far beyond the tests' waits.
async fn one_slot_proxy(redis: &RedisServer) -> redis_sidecar::server::Proxy {
    let mut config = proxy_config(redis);
    for db in &mut config.databases {
        db.upstream.mux_connections = 1;
        db.upstream.command_timeout = Duration::from_secs(30);
    }
    start_proxy(config).await
}

/// A long script on the shared connection: Redis answers the other clients
/// (`-BUSY` past its `busy-reply-threshold`) but not the script's connection, so
/// clients on the same shared connection meet `-BUSY` through the proxy as they
/// would directly, instead of waiting for the script (or the proxy's timeout);
/// once it is killed, every client goes on, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_a_long_script_get_busy_as_on_redis() {
    let redis = RedisServer::start_with_args(&["--busy-reply-threshold", "100"]);
    let proxy = one_slot_proxy(&redis).await;
    let addr = proxy.local_addr();
    let mut script = AsyncRawClient::connect(addr).await;
    let mut other = AsyncRawClient::connect(addr).await;
    let mut other9 = AsyncRawClient::connect(addr).await;
    assert_eq!(other9.cmd(&[b"SELECT", b"9"]).await, b"+OK\r\n");
    for c in [&mut other, &mut other9] {
        assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
        // Waiting for the script would take 30 s.
        c.set_timeout(Duration::from_secs(3));
    }
    script.send(&resp_cmd(&[b"EVAL", RUNAWAY, b"0"])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    let busy = direct.cmd(&[b"GET", b"k"]).await;
    assert!(busy.starts_with(b"-BUSY"), "{busy:?}");
    for c in [&mut other, &mut other9] {
        for args in [&[&b"GET"[..], b"k"][..], &[b"PING"]] {
            let r = c.cmd(args).await;
            assert_eq!(String::from_utf8_lossy(&r), String::from_utf8_lossy(&busy));
        }
    }
    assert_eq!(other.cmd(&[b"SCRIPT", b"KILL"]).await, b"+OK\r\n");
    let killed = script.read_reply().await;
    assert!(killed.starts_with(b"-ERR"), "{killed:?}");
    // Everyone goes on, each in order.
    for c in [&mut script, &mut other, &mut other9] {
        let pipeline = [
            resp_cmd(&[b"SET", b"k", b"w"]),
            resp_cmd(&[b"GET", b"k"]),
            resp_cmd(&[b"EVAL", b"return 7", b"0"]),
        ]
        .concat();
        c.send(&pipeline).await;
        assert_eq!(
            c.read_replies(3).await,
            [&b"+OK\r\n"[..], b"$1\r\nw\r\n", b":7\r\n"]
        );
    }
    proxy.shutdown().await;
}

/// A pause made outside the proxy (another Redis client, or `FAILOVER`): the
/// proxy does not know of it, and a write Redis holds back keeps the shared
/// connection waiting. Once it has waited 100 ms, the other sessions on it send
/// on the detour connection, so their reads are answered during the pause as
/// Redis answers its own clients'; the writer's pipeline stays in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_during_a_pause_made_elsewhere() {
    let redis = RedisServer::start();
    let proxy = one_slot_proxy(&redis).await;
    let addr = proxy.local_addr();
    let (mut w, mut r) = (
        AsyncRawClient::connect(addr).await,
        AsyncRawClient::connect(addr).await,
    );
    assert_eq!(r.cmd(&[b"SET", b"k", b"before"]).await, b"+OK\r\n");
    r.set_timeout(Duration::from_secs(3));
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    pause_and_write(&mut direct, &mut w, &redis).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        assert_eq!(r.cmd(&[b"GET", b"k"]).await, b"$6\r\nbefore\r\n");
    }
    w.assert_no_reply(Duration::from_millis(100)).await;
    assert_eq!(direct.cmd(&[b"CLIENT", b"UNPAUSE"]).await, b"+OK\r\n");
    assert_eq!(
        w.read_replies(2).await,
        [&b"+OK\r\n"[..], b"$5\r\nafter\r\n"]
    );
    assert_eq!(r.cmd(&[b"GET", b"k"]).await, b"$5\r\nafter\r\n");
    proxy.shutdown().await;
}

/// `pool_open` of database 0 in `PROXY INFO`: connections of its own that a
/// session took (writes during a pause the proxy knows of go on such).
async fn pool_open(c: &mut AsyncRawClient) -> u64 {
    let info = String::from_utf8_lossy(&c.cmd(&[b"PROXY", b"INFO"]).await).into_owned();
    let at = info.find("pool_open=").expect("pool_open in PROXY INFO") + "pool_open=".len();
    info[at..]
        .split(|ch: char| !ch.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

/// A `CLIENT PAUSE` that Redis refuses (the proxy's user may not pause) pauses
/// nothing: writes keep going on the shared connection, as before it, instead of
/// each taking a connection of its own for the pause the proxy noted when it
/// sent the request (30 s here). One that Redis accepts still moves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_redis_refuses_changes_nothing() {
    let redis = RedisServer::start();
    let (out, st) = support::redis_cli(
        redis.port(),
        &[
            "ACL",
            "SETUSER",
            "limited",
            "on",
            ">pw",
            "~*",
            "&*",
            "+@all",
            "-client|pause",
        ],
    );
    assert!(st.success() && out.trim() == "OK", "{out}");
    let mut config = proxy_config(&redis);
    for db in config.databases.iter_mut() {
        db.upstream.username = Some("limited".into());
        db.upstream.password = Some(redis_sidecar::config::Secret("pw".into()));
    }
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();
    let (mut admin, mut w) = (
        AsyncRawClient::connect(addr).await,
        AsyncRawClient::connect(addr).await,
    );
    let refused = admin.cmd(&[b"CLIENT", b"PAUSE", b"30000", b"WRITE"]).await;
    assert!(
        refused.starts_with(b"-NOPERM"),
        "{}",
        String::from_utf8_lossy(&refused)
    );
    for i in 0..3 {
        let v = format!("v{i}");
        assert_eq!(w.cmd(&[b"SET", b"k", v.as_bytes()]).await, b"+OK\r\n");
    }
    assert_eq!(pool_open(&mut admin).await, 0);
    proxy.shutdown().await;

    // The same with a user that may pause: the writes take connections of their own.
    let proxy = start_proxy(proxy_config(&redis)).await;
    let addr = proxy.local_addr();
    let (mut admin, mut w) = (
        AsyncRawClient::connect(addr).await,
        AsyncRawClient::connect(addr).await,
    );
    assert_eq!(
        admin.cmd(&[b"CLIENT", b"PAUSE", b"300", b"WRITE"]).await,
        b"+OK\r\n"
    );
    assert_eq!(w.cmd(&[b"SET", b"k", b"paused"]).await, b"+OK\r\n");
    assert!(pool_open(&mut admin).await >= 1);
    proxy.shutdown().await;
}

/// Requests, each written as its words separated by spaces.
fn script(lines: &[&str]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| {
            let words: Vec<&[u8]> = l.split(' ').map(str::as_bytes).collect();
            resp_cmd(&words)
        })
        .collect()
}

/// As [`exchange`], on a connection that said `HELLO 3` first (its reply, which
/// holds the connection's id, is left out).
async fn exchange_resp3(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut c = AsyncRawClient::connect(addr).await;
    c.send(&script(&["HELLO 3"])).await;
    assert!(c.read_reply().await.starts_with(b"%"));
    exchange_on(c, bytes).await
}

/// Each request list, pipelined in one write, to Redis and to the proxy: the
/// same bytes back (`resp3`: after `HELLO 3`).
async fn same_as_redis(
    redis: &RedisServer,
    proxy: std::net::SocketAddr,
    resp3: bool,
    cases: &[Vec<u8>],
) {
    for bytes in cases {
        let (direct, proxied) = match resp3 {
            true => (
                exchange_resp3(redis.addr(), bytes).await,
                exchange_resp3(proxy, bytes).await,
            ),
            false => (
                exchange(redis.addr(), bytes).await,
                exchange(proxy, bytes).await,
            ),
        };
        assert!(!direct.is_empty());
        assert_eq!(
            String::from_utf8_lossy(&proxied),
            String::from_utf8_lossy(&direct),
            "request {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// A RESP3 client may run any command while subscribed, a transaction too: on
/// the subscriber connection, where a barrier PING would be queued. Before, a
/// command the proxy answers itself inside such a MULTI (CLIENT SETNAME, WAIT …)
/// waited for a barrier that never came: EXEC was never answered, and the
/// session never noticed its client leave. And a SELECT while subscribed changed
/// the session's database while its commands still ran on the subscriber
/// connection's: `GET` read, and `SET` wrote, the old database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp3_subscriber_runs_transactions_and_selects_as_on_redis() {
    let redis = RedisServer::start();
    let other = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.databases.truncate(4);
    // Database 3 lives on another server.
    config.databases[3].upstream.port = other.port();
    config.databases[3].upstream.db = 0;
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();
    let cases = vec![
        script(&[
            "SUBSCRIBE ch",
            "MULTI",
            "PING",
            "SET k 1",
            "EXEC",
            "GET k",
            "UNSUBSCRIBE",
            "PING",
        ]),
        script(&["SUBSCRIBE ch", "MULTI", "PING", "WAIT 0 0", "EXEC", "PING"]),
        script(&["SUBSCRIBE ch", "MULTI", "PING", "RESET", "PING"]),
        script(&[
            "SET a 1",
            "SUBSCRIBE ch",
            "SELECT 2",
            "GET a",
            "SET a 2",
            "SELECT 0",
            "GET a",
            "SELECT 2",
            "GET a",
            "DEL a",
        ]),
        script(&[
            "SUBSCRIBE ch",
            "SELECT 1",
            "UNWATCH",
            "EXEC",
            "DISCARD",
            "WAIT 0 0",
            "SELECT 0",
            "UNWATCH",
        ]),
        // A MOVE runs on the shared connection; the GET after it waits for it.
        script(&[
            "SET b 3",
            "SUBSCRIBE ch",
            "MOVE b 2",
            "GET b",
            "SELECT 2",
            "GET b",
            "DEL b",
        ]),
        // CLIENT REPLY SKIP before SUBSCRIBE is used up by it.
        script(&[
            "CLIENT REPLY SKIP",
            "SUBSCRIBE x",
            "PING",
            "PING",
            "UNSUBSCRIBE",
        ]),
        // CLIENT REPLY SKIP while subscribed skips the next reply, not a later one.
        script(&[
            "SUBSCRIBE y",
            "CLIENT REPLY SKIP",
            "PING",
            "GET k",
            "UNSUBSCRIBE",
            "PING",
        ]),
    ];
    same_as_redis(&redis, addr, true, &cases).await;
    // What the proxy answers itself is queued inside such a transaction and
    // runs at EXEC (CLIENT SETNAME, a SELECT on the same server, MOVE and
    // SWAPDB of databases there, indexes translated), also when a
    // request it answers itself is pipelined right after EXEC (its barrier then
    // follows EXEC on the subscriber connection). Byte for byte as Redis.
    let queued = vec![
        script(&[
            "SUBSCRIBE ch",
            "MULTI",
            "CLIENT SETNAME x",
            "PING",
            "EXEC",
            "CLIENT GETNAME",
            "PING",
        ]),
        script(&[
            "SUBSCRIBE ch",
            "MULTI",
            "SELECT 2",
            "SET sk 1",
            "EXEC",
            "CLIENT GETNAME",
            "GET sk",
            "DEL sk",
            "SELECT 0",
            "GET sk",
        ]),
        script(&[
            "SET mk 1",
            "SUBSCRIBE ch",
            "MULTI",
            "MOVE mk 2",
            "SWAPDB 1 2",
            "EXEC",
            "SELECT 1",
            "GET mk",
            "SWAPDB 1 2",
            "SELECT 2",
            "GET mk",
            "DEL mk",
        ]),
    ];
    same_as_redis(&redis, addr, true, &queued).await;
    // A blocking command after a SELECT of a database on another server is
    // refused (the subscriber connection cannot follow it there); on the same
    // server it runs there (the subscriber connection follows the SELECT). One
    // with a wrong number of arguments gets Redis's refusal, which comes first
    // (a `DISCARD x` got the proxy's: the multi-session tool, cluster, seed 9355).
    let bytes = script(&[
        "SUBSCRIBE ch",
        "SELECT 3",
        "BLPOP q 0.01",
        "BLPOP q",
        "DISCARD x",
        "SELECT 1",
        "BLPOP q 0.01",
        "SELECT 0",
        "BLPOP q 0.01",
    ]);
    let got = String::from_utf8_lossy(&exchange_resp3(addr, &bytes).await).into_owned();
    assert!(got.contains("-ERR BLPOP while subscribed, after a SELECT of another database than the subscriptions' (db 0), is not supported by redis-sidecar"), "{got}");
    assert!(got.contains("redis-sidecar: SELECT 0 or unsubscribe first\r\n-ERR wrong number of arguments for 'blpop' command\r\n-ERR wrong number of arguments for 'discard' command\r\n+OK\r\n"), "{got}");
    assert!(got.ends_with("+OK\r\n_\r\n+OK\r\n_\r\n"), "{got}");
    proxy.shutdown().await;
}

/// Redis sends pub/sub confirmations also under CLIENT REPLY OFF (they are
/// pushes); a SELECT pipelined after the UNSUBSCRIBE that leaves no
/// subscriptions is the session's (Redis runs it: the client left pub/sub); an
/// UNSUBSCRIBE inside MULTI is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_replies_under_reply_off_after_unsubscribing_and_in_multi_as_on_redis() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.databases.truncate(3);
    let proxy = start_proxy(config).await;
    let cases = vec![
        script(&[
            "CLIENT REPLY OFF",
            "UNSUBSCRIBE",
            "PING",
            "PSUBSCRIBE a*",
            "PING",
            "PUNSUBSCRIBE",
            "CLIENT REPLY ON",
            "PING",
        ]),
        script(&[
            "SET c 1",
            "SSUBSCRIBE ch",
            "SUNSUBSCRIBE",
            "SELECT 2",
            "GET c",
            "SELECT 0",
            "DEL c",
        ]),
        script(&[
            "SUBSCRIBE ch",
            "SELECT 2",
            "UNSUBSCRIBE",
            "CLIENT SETNAME n",
            "CLIENT GETNAME",
        ]),
        script(&["MULTI", "UNSUBSCRIBE", "PUNSUBSCRIBE a", "EXEC", "PING"]),
    ];
    same_as_redis(&redis, proxy.local_addr(), false, &cases).await;
    let cases = vec![script(&[
        "CLIENT REPLY OFF",
        "SUBSCRIBE y",
        "PING",
        "GET a",
        "UNSUBSCRIBE",
        "PING",
        "CLIENT REPLY ON",
        "PING",
    ])];
    same_as_redis(&redis, proxy.local_addr(), true, &cases).await;
    proxy.shutdown().await;
}

/// With CLIENT TRACKING on (the session's own connection), CLIENT SETNAME,
/// GETNAME and NO-EVICT inside MULTI were answered at once (`+OK`) instead of
/// queued; now as without tracking, and as Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_sessions_queue_client_commands_inside_multi() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let cases = vec![script(&[
        "CLIENT TRACKING ON",
        "MULTI",
        "CLIENT SETNAME x",
        "CLIENT GETNAME",
        "CLIENT NO-EVICT ON",
        "GET a",
        "EXEC",
        "CLIENT GETNAME",
    ])];
    same_as_redis(&redis, proxy.local_addr(), false, &cases).await;
    same_as_redis(&redis, proxy.local_addr(), true, &cases).await;
    proxy.shutdown().await;
}

/// On a `key_prefix` database a RESP2 subscriber's BLPOP, DBSIZE or FLUSHDB got
/// the proxy's own refusal ("not supported on a database with key_prefix");
/// Redis refuses every such command to a RESP2 subscriber with its own words,
/// and the proxy now answers the same. After the last UNSUBSCRIBE they run (on
/// the prefixed keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp2_subscriber_on_a_prefixed_database_gets_redis_refusals() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.databases[0].upstream.key_prefix = Some(bytes::Bytes::from_static(b"p0:"));
    let proxy = start_proxy(config).await;
    let cases = vec![script(&[
        "SUBSCRIBE ch",
        "BLPOP q 1",
        "DBSIZE",
        "FLUSHDB",
        "UNSUBSCRIBE",
        "BLPOP q 0.01",
        "DBSIZE",
    ])];
    same_as_redis(&redis, proxy.local_addr(), false, &cases).await;
    proxy.shutdown().await;
}

/// `CLIENT PAUSE … ALL` through the proxy: Redis holds every command back, reads
/// included, until the pause ends — longer than the command timeout here — and
/// then answers them. Through the proxy the pausing client and another one get
/// those answers too (not a timeout error), in order, when the pause ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_of_everything_longer_than_the_command_timeout_is_waited_out() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    for db in &mut config.databases {
        db.upstream.command_timeout = Duration::from_millis(800);
        db.upstream.resilience.health_check_interval = Duration::from_millis(300);
    }
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();
    let (mut admin, mut other) = (
        AsyncRawClient::connect(addr).await,
        AsyncRawClient::connect(addr).await,
    );
    assert_eq!(other.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    let started = Instant::now();
    let paused = admin.cmd(&[b"CLIENT", b"PAUSE", b"2000", b"ALL"]).await;
    assert_eq!(paused, b"+OK\r\n");
    admin
        .send(&cmds(&[
            &[b"GET", b"k"],
            &[b"CLIENT", b"UNPAUSE"],
            &[b"PING"],
        ]))
        .await;
    other.send(&resp_cmd(&[b"GET", b"k"])).await;
    assert_eq!(other.read_reply().await, b"$1\r\nv\r\n");
    assert_eq!(
        admin.read_replies(3).await,
        [&b"$1\r\nv\r\n"[..], b"+OK\r\n", b"+PONG\r\n"]
    );
    // Redis held them back for the pause (not answered before it ended).
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    // The health probes' PINGs were held back too, and not taken for failures.
    let health = other.cmd(&[b"PROXY", b"HEALTH"]).await;
    let health = String::from_utf8_lossy(&health);
    assert!(health.contains("overall_healthy:1"), "{health}");
    assert!(!health.contains("no reply"), "{health}");
    proxy.shutdown().await;
}
