//! Stress test of blocking commands: the same sequences, over and over, through the
//! proxy and against Redis directly, side by side, asserting identical replies and a
//! timely unblock (within 2 s of the action that unblocks).
//!
//! Two Redis servers: one behind the proxy, one used directly, so the two sides never
//! see each other's blocked clients, keys or FLUSHALLs. The proxy runs on a runtime
//! of its own, as the binary does. Each round runs every case once, on both sides at
//! the same time; a case waits on `INFO clients` `blocked_clients` (through the proxy
//! on the proxy's side) before it acts, as the external suites (redis-py's, Redis's
//! own) do, and every client does one round trip before it is used, as Redis's
//! `redis_deferring_client` does.
//!
//! What Redis 7.0.15 does, measured directly, and therefore what the cases see on
//! both sides (the test compares the sides; this is only the reference):
//!
//! * `XREADGROUP … BLOCK 0` and then `DEL`, `SET`, `FLUSHDB` or `FLUSHALL` of the
//!   stream: `-UNBLOCKED the stream key no longer exists`; `XGROUP DESTROY`:
//!   `-NOGROUP the consumer group this client was blocked on no longer exists`.
//! * `XREAD … BLOCK 0 … $` and then `DEL`: still blocked (an `XADD` recreating the
//!   stream serves it); `XREAD BLOCK 100` and `DEL`: `*-1` at its timeout.
//! * N clients blocked on one list and one push of N elements: all served, in the
//!   order they blocked; one push of one element: exactly the first is served.
//! * `CLIENT UNBLOCK id TIMEOUT`: `:1`, the blocked client gets its timeout reply;
//!   `ERROR`: `-UNBLOCKED client unblocked via CLIENT UNBLOCK`; not blocked: `:0`.
//!
//! The `Unsynced…` cases send blocking commands from several clients one after the
//! other without waiting in between, as some of Redis's own tests do ("BRPOPLPUSH
//! with multiple blocked clients", "Linked BRPOPLPUSH"). Even Redis does not always
//! see such commands in the order they were sent (measured here: up to ~15 % of
//! runs on a loaded 2-core machine), so each side is checked against the in-order
//! outcome and the proxy may not break the order much more often than Redis does.
//!
//! Knobs: `BLOCKING_STRESS_ROUNDS` (default 150 rounds of every case, about 3,300
//! case runs per side, ~50 s in release), `BLOCKING_STRESS_SECS` (default 50: no
//! new round starts after that), `BLOCKING_STRESS_PROXY_THREADS` (default 1, as the
//! binary), `BLOCKING_STRESS_ONLY` / `BLOCKING_STRESS_SKIP` (comma-separated parts
//! of case names). Failures are collected, printed with the case and the round as
//! they happen, and the test fails at the end if there were any.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{
    parse_info, printable, proxy_config, resp_cmd, AsyncRawClient, ProxyThread, RedisServer,
};

/// How long after the action that should unblock a client its reply may take.
const UNBLOCK_WITHIN: Duration = Duration::from_secs(2);
/// How long a client that must stay blocked is watched for a reply.
const STAYS_BLOCKED_FOR: Duration = Duration::from_millis(30);
/// Bound on one case run (one side).
const CASE_BOUND: Duration = Duration::from_secs(10);

type R<T> = Result<T, String>;

/// One side of the comparison: where the clients connect, and a control client
/// there (actions, `INFO clients`) plus one straight to the Redis behind it (for
/// diagnostics and cleanup; on the direct side both are the same server).
struct Side {
    name: &'static str,
    addr: SocketAddr,
    ctl: AsyncRawClient,
    upstream: AsyncRawClient,
    /// Slowest unblock seen (action to reply).
    worst: Duration,
    /// Sum and count of unblock latencies.
    total: Duration,
    unblocks: u32,
    /// Slowest time from a blocked client leaving to Redis no longer counting it.
    leave_worst: Duration,
}

impl Side {
    async fn new(name: &'static str, addr: SocketAddr, upstream: SocketAddr) -> Side {
        Side {
            name,
            addr,
            ctl: AsyncRawClient::connect(addr).await,
            upstream: AsyncRawClient::connect(upstream).await,
            worst: Duration::ZERO,
            total: Duration::ZERO,
            unblocks: 0,
            leave_worst: Duration::ZERO,
        }
    }

    /// A new client, with one round trip done (as the suites' clients do: Redis's
    /// `redis_deferring_client` sends SELECT and reads the reply), so the server has
    /// accepted it before it sends anything else.
    async fn client(&self) -> AsyncRawClient {
        let mut c = AsyncRawClient::connect(self.addr).await;
        assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n", "{}", self.name);
        c
    }

    /// A control command and its reply (an error if it does not come back).
    async fn ctl(&mut self, args: &[&[u8]]) -> R<Vec<u8>> {
        call(&mut self.ctl, args, UNBLOCK_WITHIN).await
    }

    /// `blocked_clients` as seen where the clients connect (through the proxy on the
    /// proxy's side, as an external suite sees it).
    async fn blocked(&mut self) -> R<u64> {
        blocked_clients(&mut self.ctl).await
    }

    /// Waits (bounded) until `blocked_clients` is exactly `n`, as the suites'
    /// `wait_for_blocked_clients_count` does.
    async fn wait_blocked(&mut self, n: u64) -> R<()> {
        let deadline = Instant::now() + UNBLOCK_WITHIN;
        loop {
            let b = self.blocked().await?;
            if b == n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let list = call(&mut self.upstream, &[b"CLIENT", b"LIST"], UNBLOCK_WITHIN)
                    .await
                    .unwrap_or_default();
                return Err(format!(
                    "blocked_clients is {b}, expected {n} within {UNBLOCK_WITHIN:?}; upstream \
                     CLIENT LIST:\n{}",
                    String::from_utf8_lossy(&list)
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The reply `c` gets for an action taken at `acted`, within [`UNBLOCK_WITHIN`].
    async fn unblocked(&mut self, c: &mut AsyncRawClient, acted: Instant, what: &str) -> R<String> {
        let left = UNBLOCK_WITHIN.saturating_sub(acted.elapsed());
        c.set_timeout(left.max(Duration::from_millis(1)));
        let r = c.try_read_reply().await;
        c.set_timeout(support::DEFAULT_TIMEOUT);
        match r {
            Ok(reply) => {
                let took = acted.elapsed();
                self.worst = self.worst.max(took);
                self.total += took;
                self.unblocks += 1;
                Ok(format!("{what}: {}", printable(&reply)))
            }
            Err(e) => Err(format!(
                "{what}: no reply within {UNBLOCK_WITHIN:?} of the action ({e}); \
                 blocked_clients now {:?}",
                blocked_clients(&mut self.upstream).await
            )),
        }
    }

    /// Has Redis close the proxy's idle pooled connections (nothing on the direct
    /// side): those whose last command only an exclusive connection runs.
    async fn close_idle_pooled(&mut self) -> R<()> {
        if self.name != "proxy" {
            return Ok(());
        }
        let list = call(&mut self.upstream, &[b"CLIENT", b"LIST"], UNBLOCK_WITHIN).await?;
        let pooled = [
            "blpop",
            "brpop",
            "brpoplpush",
            "blmove",
            "blmpop",
            "xread",
            "xreadgroup",
            "client|id",
        ];
        let mut ids = Vec::new();
        for line in String::from_utf8_lossy(&list).lines() {
            let field = |k: &str| list_field(line, k);
            if field("flags=") == "N" && pooled.contains(&field("cmd=").as_str()) {
                ids.push(field("id="));
            }
        }
        for id in ids {
            call(
                &mut self.upstream,
                &[b"CLIENT", b"KILL", b"ID", id.as_bytes()],
                UNBLOCK_WITHIN,
            )
            .await?;
        }
        // Let the proxy see the connections close.
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(())
    }

    /// Unblocks whatever is still blocked on the Redis behind this side (after a
    /// failed case), so the next case starts clean.
    async fn unstick(&mut self) {
        let Ok(list) = call(&mut self.upstream, &[b"CLIENT", b"LIST"], UNBLOCK_WITHIN).await else {
            return;
        };
        for line in String::from_utf8_lossy(&list).lines() {
            let field = |k: &str| list_field(line, k);
            if field("flags=").contains('b') {
                let id = field("id=");
                let _ = call(
                    &mut self.upstream,
                    &[b"CLIENT", b"UNBLOCK", id.as_bytes()],
                    UNBLOCK_WITHIN,
                )
                .await;
            }
        }
        let _ = call(&mut self.upstream, &[b"FLUSHALL"], UNBLOCK_WITHIN).await;
    }
}

/// Sends `args` on `c` and reads one reply within `within`.
async fn call(c: &mut AsyncRawClient, args: &[&[u8]], within: Duration) -> R<Vec<u8>> {
    c.set_timeout(within);
    let r = async {
        c.try_send(&resp_cmd(args)).await?;
        c.try_read_reply().await
    }
    .await;
    c.set_timeout(support::DEFAULT_TIMEOUT);
    r.map_err(|e| format!("{}: {e}", show(args)))
}

/// Reads one reply from `c` within `within`.
async fn call_read(c: &mut AsyncRawClient, within: Duration) -> R<String> {
    c.set_timeout(within);
    let r = c.try_read_reply().await;
    c.set_timeout(support::DEFAULT_TIMEOUT);
    r.map(|b| printable(&b))
        .map_err(|e| format!("no reply within {within:?} ({e})"))
}

async fn blocked_clients(c: &mut AsyncRawClient) -> R<u64> {
    let r = call(c, &[b"INFO", b"clients"], UNBLOCK_WITHIN).await?;
    parse_info(&String::from_utf8_lossy(&r))
        .get("blocked_clients")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no blocked_clients in {}", printable(&r)))
}

/// A field of a `CLIENT LIST` line (`key` with its `=`), or "".
fn list_field(line: &str, key: &str) -> String {
    line.split(' ')
        .find_map(|f| f.strip_prefix(key))
        .unwrap_or("")
        .to_string()
}

fn show(args: &[&[u8]]) -> String {
    args.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What one case run saw, in order: the same on both sides or it is a failure.
#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    fn note(&mut self, line: String) {
        self.0.push(line);
    }
}

/// Runs `args` on the control client and notes its reply.
async fn step(s: &mut Side, t: &mut Transcript, args: &[&[u8]]) -> R<()> {
    let r = s.ctl(args).await?;
    t.note(format!("{}: {}", show(args), printable(&r)));
    Ok(())
}

/// Notes that `c` got nothing for [`STAYS_BLOCKED_FOR`].
async fn stays_blocked(c: &mut AsyncRawClient, t: &mut Transcript, what: &str) {
    c.set_timeout(STAYS_BLOCKED_FOR);
    let r = c.try_read_reply().await;
    c.set_timeout(support::DEFAULT_TIMEOUT);
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            t.note(format!("{what}: still blocked"))
        }
        Err(e) => t.note(format!("{what}: {e}")),
        Ok(reply) => t.note(format!("{what}: {}", printable(&reply))),
    }
}

/// The sequences, each run on both sides.
#[derive(Debug, Clone, Copy)]
enum Case {
    /// XREADGROUP BLOCK 0, then this action on the stream.
    XreadgroupThen(&'static [&'static [u8]]),
    /// XREAD BLOCK 0 … $, DEL (stays blocked), XADD (served).
    XreadDelThenXadd,
    /// XREAD BLOCK 100, DEL: the timeout's nil.
    XreadTimeoutAfterDel,
    /// Five clients (BRPOPLPUSH, BLMOVE, BLPOP, BRPOP, BLMPOP) on one list, one
    /// LPUSH of five elements.
    FanoutAll,
    /// Three clients on one list, one LPUSH of one element (exactly one served),
    /// then one of two (the rest).
    FanoutOneThenRest,
    /// BRPOPLPUSH l1→l2, BRPOPLPUSH l2→l3, BLMOVE l3→l4, BLPOP l4; RPUSH l1.
    Chain,
    /// BRPOPLPUSH a→b and b→a; RPUSH a.
    Circular,
    /// BRPOPLPUSH into a string (WRONGTYPE) and another into a list; one LPUSH.
    WrongTypeTarget,
    /// BLPOP, the client leaves, blocked_clients back to 0, a push: not lost.
    Disconnect,
    /// The same with a command pipelined behind the BLPOP.
    DisconnectPipelined,
    /// CLIENT UNBLOCK (reason) of a client blocked in this command.
    Unblock(&'static [&'static [u8]], Option<&'static [u8]>),
    /// A client leaves while blocked; how long until Redis no longer counts it
    /// (recorded), then another blocks in XREADGROUP, blocked_clients == 1, DEL.
    LeaveThenXreadgroup,
    /// Redis's own "BRPOPLPUSH with multiple blocked clients", as written there: two
    /// clients send BRPOPLPUSH (the first into a string) one after the other, no
    /// wait, and at once one LPUSH. Redis takes commands in the order they arrive:
    /// the first gets WRONGTYPE, the second the element.
    UnsyncedWrongType,
    /// Redis's "Linked BRPOPLPUSH" as written: two chained BRPOPLPUSH sent without
    /// waiting, RPUSH, then at once the lists (the element must be at the end).
    UnsyncedLinked,
    /// Three clients send BLPOP one after the other without waiting; once all three
    /// are blocked, one element: the first sender must get it (FIFO).
    UnsyncedFifo,
    /// The same after Redis closed the proxy's idle pooled connections (as after a
    /// restart or an idle `timeout`): every BLPOP needs a new connection.
    UnsyncedFifoColdPool,
}

const XREADGROUP: &[&[u8]] = &[
    b"XREADGROUP",
    b"GROUP",
    b"g",
    b"alice",
    b"BLOCK",
    b"0",
    b"STREAMS",
    b"s",
    b">",
];

const CASES: &[Case] = &[
    Case::XreadgroupThen(&[b"DEL", b"s"]),
    Case::XreadgroupThen(&[b"SET", b"s", b"x"]),
    Case::XreadgroupThen(&[b"FLUSHDB"]),
    Case::XreadgroupThen(&[b"FLUSHALL"]),
    Case::XreadgroupThen(&[b"XGROUP", b"DESTROY", b"s", b"g"]),
    Case::XreadDelThenXadd,
    Case::XreadTimeoutAfterDel,
    Case::FanoutAll,
    Case::FanoutOneThenRest,
    Case::Chain,
    Case::Circular,
    Case::WrongTypeTarget,
    Case::Disconnect,
    // Case::DisconnectPipelined: a known session bug, in its own (ignored) test.
    Case::Unblock(&[b"BLPOP", b"q", b"0"], Some(b"TIMEOUT")),
    Case::Unblock(&[b"BLPOP", b"q", b"0"], Some(b"ERROR")),
    Case::Unblock(XREADGROUP, None),
    Case::Unblock(&[b"BRPOPLPUSH", b"q", b"d", b"0"], Some(b"ERROR")),
    Case::LeaveThenXreadgroup,
    Case::UnsyncedWrongType,
    Case::UnsyncedLinked,
    Case::UnsyncedFifo,
    Case::UnsyncedFifoColdPool,
];

impl Case {
    fn name(&self) -> String {
        match self {
            Case::XreadgroupThen(a) => format!("XREADGROUP BLOCK 0 then {}", show(a)),
            Case::Unblock(c, r) => format!(
                "CLIENT UNBLOCK {} of {}",
                r.map(|r| String::from_utf8_lossy(r).into_owned())
                    .unwrap_or_default(),
                show(c)
            ),
            other => format!("{other:?}"),
        }
    }

    /// For the cases that send without waiting (racy even against Redis itself:
    /// two loopback writes can reach it out of order), whether the run saw what
    /// Redis does when the commands arrive in the order they were sent. `None` for
    /// the other cases, whose transcripts must simply match.
    fn in_order(&self, r: &R<Transcript>) -> Option<bool> {
        let line = |t: &Transcript, prefix: &str, has: &str| {
            t.0.iter().any(|l| l.starts_with(prefix) && l.contains(has))
        };
        let ok = |f: &dyn Fn(&Transcript) -> bool| Some(r.as_ref().is_ok_and(f));
        match self {
            Case::UnsyncedWrongType => {
                ok(&|t| line(t, "rd1:", "WRONGTYPE") && line(t, "rd2:", "foo"))
            }
            Case::UnsyncedLinked => ok(&|t| {
                line(t, "LRANGE list1", "*0\\r")
                    && line(t, "LRANGE list2", "*0\\r")
                    && line(t, "LRANGE list3", "foo")
                    && line(t, "rd1:", "foo")
                    && line(t, "rd2:", "foo")
            }),
            Case::UnsyncedFifo | Case::UnsyncedFifoColdPool => ok(&|t| line(t, "rd1:", "first")),
            _ => None,
        }
    }

    async fn run(self, s: &mut Side) -> R<Transcript> {
        let mut t = Transcript::default();
        // Every case starts from an empty database and no blocked client.
        step(s, &mut t, &[b"FLUSHALL"]).await?;
        let b = s.blocked().await?;
        if b != 0 {
            return Err(format!("{b} client(s) still blocked before the case"));
        }
        match self {
            Case::XreadgroupThen(action) => {
                step(
                    s,
                    &mut t,
                    &[b"XGROUP", b"CREATE", b"s", b"g", b"$", b"MKSTREAM"],
                )
                .await?;
                let mut a = s.client().await;
                a.send(&resp_cmd(XREADGROUP)).await;
                s.wait_blocked(1).await?;
                let acted = Instant::now();
                step(s, &mut t, action).await?;
                let r = s.unblocked(&mut a, acted, "xreadgroup").await?;
                t.note(r);
                let r = call(&mut a, &[b"PING"], UNBLOCK_WITHIN).await?;
                t.note(format!("then PING: {}", printable(&r)));
            }
            Case::XreadDelThenXadd => {
                step(s, &mut t, &[b"XADD", b"s", b"1-1", b"f", b"v"]).await?;
                let mut a = s.client().await;
                a.send(&resp_cmd(&[
                    b"XREAD", b"BLOCK", b"0", b"STREAMS", b"s", b"$",
                ]))
                .await;
                s.wait_blocked(1).await?;
                step(s, &mut t, &[b"DEL", b"s"]).await?;
                stays_blocked(&mut a, &mut t, "xread after DEL").await;
                t.note(format!("blocked_clients: {}", s.blocked().await?));
                let acted = Instant::now();
                step(s, &mut t, &[b"XADD", b"s", b"2-1", b"f", b"w"]).await?;
                let r = s.unblocked(&mut a, acted, "xread after XADD").await?;
                t.note(r);
            }
            Case::XreadTimeoutAfterDel => {
                step(s, &mut t, &[b"XADD", b"s", b"1-1", b"f", b"v"]).await?;
                let mut a = s.client().await;
                a.send(&resp_cmd(&[
                    b"XREAD", b"BLOCK", b"100", b"STREAMS", b"s", b"$",
                ]))
                .await;
                s.wait_blocked(1).await?;
                let acted = Instant::now();
                step(s, &mut t, &[b"DEL", b"s"]).await?;
                let r = s.unblocked(&mut a, acted, "xread BLOCK 100").await?;
                t.note(r);
            }
            Case::FanoutAll => {
                let cmds: &[&[&[u8]]] = &[
                    &[b"BRPOPLPUSH", b"l", b"d0", b"0"],
                    &[b"BLMOVE", b"l", b"d1", b"RIGHT", b"LEFT", b"0"],
                    &[b"BLPOP", b"l", b"0"],
                    &[b"BRPOP", b"l", b"0"],
                    &[b"BLMPOP", b"0", b"1", b"l", b"LEFT"],
                ];
                let mut waiters = block_in_order(s, cmds).await?;
                let acted = Instant::now();
                step(
                    s,
                    &mut t,
                    &[b"LPUSH", b"l", b"e1", b"e2", b"e3", b"e4", b"e5"],
                )
                .await?;
                for (i, w) in waiters.iter_mut().enumerate() {
                    let r = s.unblocked(w, acted, &show(cmds[i])).await?;
                    t.note(r);
                }
                for k in [&b"l"[..], b"d0", b"d1"] {
                    step(s, &mut t, &[b"LRANGE", k, b"0", b"-1"]).await?;
                }
            }
            Case::FanoutOneThenRest => {
                let cmds: &[&[&[u8]]] = &[
                    &[b"BLPOP", b"l", b"0"],
                    &[b"BRPOPLPUSH", b"l", b"d0", b"0"],
                    &[b"BLMOVE", b"l", b"d1", b"LEFT", b"RIGHT", b"0"],
                ];
                let mut waiters = block_in_order(s, cmds).await?;
                let acted = Instant::now();
                step(s, &mut t, &[b"LPUSH", b"l", b"one"]).await?;
                let r = s.unblocked(&mut waiters[0], acted, &show(cmds[0])).await?;
                t.note(r);
                for (i, w) in waiters.iter_mut().enumerate().skip(1) {
                    stays_blocked(w, &mut t, &show(cmds[i])).await;
                }
                s.wait_blocked(2).await?;
                let acted = Instant::now();
                step(s, &mut t, &[b"LPUSH", b"l", b"two", b"three"]).await?;
                for (i, w) in waiters.iter_mut().enumerate().skip(1) {
                    let r = s.unblocked(w, acted, &show(cmds[i])).await?;
                    t.note(r);
                }
                for k in [&b"l"[..], b"d0", b"d1"] {
                    step(s, &mut t, &[b"LRANGE", k, b"0", b"-1"]).await?;
                }
            }
            Case::Chain => {
                let cmds: &[&[&[u8]]] = &[
                    &[b"BRPOPLPUSH", b"l1", b"l2", b"0"],
                    &[b"BRPOPLPUSH", b"l2", b"l3", b"0"],
                    &[b"BLMOVE", b"l3", b"l4", b"LEFT", b"RIGHT", b"0"],
                    &[b"BLPOP", b"l4", b"0"],
                ];
                let mut waiters = block_in_order(s, cmds).await?;
                let acted = Instant::now();
                step(s, &mut t, &[b"RPUSH", b"l1", b"x"]).await?;
                for (i, w) in waiters.iter_mut().enumerate() {
                    let r = s.unblocked(w, acted, &show(cmds[i])).await?;
                    t.note(r);
                }
                for k in [&b"l1"[..], b"l2", b"l3", b"l4"] {
                    step(s, &mut t, &[b"LRANGE", k, b"0", b"-1"]).await?;
                }
            }
            Case::Circular => {
                let cmds: &[&[&[u8]]] = &[
                    &[b"BRPOPLPUSH", b"a", b"b", b"0"],
                    &[b"BRPOPLPUSH", b"b", b"a", b"0"],
                ];
                let mut waiters = block_in_order(s, cmds).await?;
                let acted = Instant::now();
                step(s, &mut t, &[b"RPUSH", b"a", b"foo"]).await?;
                for (i, w) in waiters.iter_mut().enumerate() {
                    let r = s.unblocked(w, acted, &show(cmds[i])).await?;
                    t.note(r);
                }
                step(s, &mut t, &[b"LRANGE", b"a", b"0", b"-1"]).await?;
                step(s, &mut t, &[b"LRANGE", b"b", b"0", b"-1"]).await?;
            }
            Case::WrongTypeTarget => {
                step(s, &mut t, &[b"SET", b"t1", b"nolist"]).await?;
                let cmds: &[&[&[u8]]] = &[
                    &[b"BRPOPLPUSH", b"bl", b"t1", b"0"],
                    &[b"BRPOPLPUSH", b"bl", b"t2", b"0"],
                ];
                let mut waiters = block_in_order(s, cmds).await?;
                let acted = Instant::now();
                step(s, &mut t, &[b"LPUSH", b"bl", b"foo"]).await?;
                for (i, w) in waiters.iter_mut().enumerate() {
                    let r = s.unblocked(w, acted, &show(cmds[i])).await?;
                    t.note(r);
                }
                step(s, &mut t, &[b"LRANGE", b"t2", b"0", b"-1"]).await?;
            }
            Case::Disconnect | Case::DisconnectPipelined => {
                let mut a = s.client().await;
                let mut req = resp_cmd(&[b"BLPOP", b"q", b"0"]);
                if matches!(self, Case::DisconnectPipelined) {
                    req.extend_from_slice(&resp_cmd(&[b"PING"]));
                }
                a.send(&req).await;
                s.wait_blocked(1).await?;
                drop(a);
                // As the suites do: the client is gone once Redis no longer counts it.
                // If it never goes, push anyway: the transcript shows where the item went.
                if s.wait_blocked(0).await.is_err() {
                    t.note(format!(
                        "the client left {UNBLOCK_WITHIN:?} ago but blocked_clients is {}",
                        s.blocked().await?
                    ));
                }
                step(s, &mut t, &[b"RPUSH", b"q", b"precious"]).await?;
                step(s, &mut t, &[b"LRANGE", b"q", b"0", b"-1"]).await?;
            }
            Case::Unblock(cmd, reason) => {
                let mut a = s.client().await;
                let id = call(&mut a, &[b"CLIENT", b"ID"], UNBLOCK_WITHIN).await?;
                let id = String::from_utf8_lossy(&id)
                    .trim_start_matches(':')
                    .trim_end()
                    .to_string();
                if matches!(cmd.first(), Some(&b"XREADGROUP")) {
                    step(
                        s,
                        &mut t,
                        &[b"XGROUP", b"CREATE", b"s", b"g", b"$", b"MKSTREAM"],
                    )
                    .await?;
                }
                a.send(&resp_cmd(cmd)).await;
                s.wait_blocked(1).await?;
                let mut unblock: Vec<&[u8]> = vec![b"CLIENT", b"UNBLOCK", id.as_bytes()];
                unblock.extend(reason);
                let acted = Instant::now();
                let r = s.ctl(&unblock).await?;
                t.note(format!("CLIENT UNBLOCK: {}", printable(&r)));
                let r = s.unblocked(&mut a, acted, "unblocked").await?;
                t.note(r);
                let r = call(&mut a, &[b"PING"], UNBLOCK_WITHIN).await?;
                t.note(format!("then PING: {}", printable(&r)));
                let r = s.ctl(&[b"CLIENT", b"UNBLOCK", id.as_bytes()]).await?;
                t.note(format!("CLIENT UNBLOCK again: {}", printable(&r)));
            }
            Case::LeaveThenXreadgroup => {
                step(
                    s,
                    &mut t,
                    &[b"XGROUP", b"CREATE", b"s", b"g", b"$", b"MKSTREAM"],
                )
                .await?;
                let mut a = s.client().await;
                a.send(&resp_cmd(&[b"BLPOP", b"q", b"0"])).await;
                s.wait_blocked(1).await?;
                let left = Instant::now();
                drop(a);
                s.wait_blocked(0).await?;
                s.leave_worst = s.leave_worst.max(left.elapsed());
                let mut b = s.client().await;
                b.send(&resp_cmd(XREADGROUP)).await;
                s.wait_blocked(1).await?;
                let acted = Instant::now();
                step(s, &mut t, &[b"DEL", b"s"]).await?;
                let r = s.unblocked(&mut b, acted, "xreadgroup").await?;
                t.note(r);
                s.wait_blocked(0).await?;
            }
            Case::UnsyncedWrongType => {
                step(s, &mut t, &[b"SET", b"target1", b"nolist"]).await?;
                let mut rd1 = s.client().await;
                let mut rd2 = s.client().await;
                rd1.send(&resp_cmd(&[b"BRPOPLPUSH", b"blist", b"target1", b"0"]))
                    .await;
                rd2.send(&resp_cmd(&[b"BRPOPLPUSH", b"blist", b"target2", b"0"]))
                    .await;
                let acted = Instant::now();
                step(s, &mut t, &[b"LPUSH", b"blist", b"foo"]).await?;
                // rd2 gets the element whatever the order; rd1 then has its WRONGTYPE,
                // or (out of order) stays blocked for good: no need to wait for it.
                let r2 = s.unblocked(&mut rd2, acted, "rd2").await;
                if s.blocked().await? == 0 {
                    let r1 = s.unblocked(&mut rd1, acted, "rd1").await;
                    t.note(r1.unwrap_or_else(|e| e));
                } else {
                    t.note("rd1: still blocked".into());
                }
                t.note(r2.unwrap_or_else(|e| e));
                step(s, &mut t, &[b"LRANGE", b"target2", b"0", b"-1"]).await?;
            }
            Case::UnsyncedLinked => {
                let mut rd1 = s.client().await;
                let mut rd2 = s.client().await;
                rd1.send(&resp_cmd(&[b"BRPOPLPUSH", b"list1", b"list2", b"0"]))
                    .await;
                rd2.send(&resp_cmd(&[b"BRPOPLPUSH", b"list2", b"list3", b"0"]))
                    .await;
                step(s, &mut t, &[b"RPUSH", b"list1", b"foo"]).await?;
                for k in [&b"list1"[..], b"list2", b"list3"] {
                    step(s, &mut t, &[b"LRANGE", k, b"0", b"-1"]).await?;
                }
                let acted = Instant::now();
                let r1 = s.unblocked(&mut rd1, acted, "rd1").await;
                let r2 = s.unblocked(&mut rd2, acted, "rd2").await;
                t.note(r1.unwrap_or_else(|e| e));
                t.note(r2.unwrap_or_else(|e| e));
            }
            Case::UnsyncedFifo | Case::UnsyncedFifoColdPool => {
                let mut rds = Vec::new();
                for _ in 0..3 {
                    rds.push(s.client().await);
                }
                if matches!(self, Case::UnsyncedFifoColdPool) {
                    s.close_idle_pooled().await?;
                }
                for rd in &mut rds {
                    rd.send(&resp_cmd(&[b"BLPOP", b"l", b"0"])).await;
                }
                s.wait_blocked(3).await?;
                step(s, &mut t, &[b"RPUSH", b"l", b"first"]).await?;
                // One of them is served at once; if it is not rd1, rd1's read would
                // wait for the next push, so only a short look.
                s.wait_blocked(2).await?;
                let r = call_read(&mut rds[0], Duration::from_millis(200)).await;
                let first_to_rd1 = r.is_ok();
                t.note(format!("rd1: {}", r.unwrap_or_else(|e| e)));
                let acted = Instant::now();
                step(s, &mut t, &[b"RPUSH", b"l", b"second", b"third"]).await?;
                let skip = if first_to_rd1 { 1 } else { 0 };
                for (i, rd) in rds.iter_mut().enumerate().skip(skip) {
                    let r = s.unblocked(rd, acted, &format!("rd{}", i + 1)).await;
                    t.note(r.unwrap_or_else(|e| e));
                }
            }
        }
        // Everyone was served: nothing may still be blocked (a pooled connection
        // left blocked would take a later item).
        let b = s.blocked().await?;
        if b != 0 {
            return Err(format!("{b} client(s) still blocked after the case"));
        }
        Ok(t)
    }
}

/// How one case went over all rounds.
#[derive(Default)]
struct Tally {
    runs: u32,
    failed: u32,
    /// Runs of an unsynchronised case where the side broke the sending order.
    proxy_disorder: u32,
    direct_disorder: u32,
}

/// Connects one client per command and blocks them one after another (each counted
/// by Redis before the next is sent, so Redis serves them in this order).
async fn block_in_order(s: &mut Side, cmds: &[&[&[u8]]]) -> R<Vec<AsyncRawClient>> {
    let mut waiters = Vec::new();
    for (i, cmd) in cmds.iter().enumerate() {
        let mut c = s.client().await;
        c.send(&resp_cmd(cmd)).await;
        s.wait_blocked(i as u64 + 1).await?;
        waiters.push(c);
    }
    Ok(waiters)
}

async fn bounded(case: Case, s: &mut Side) -> R<Transcript> {
    match tokio::time::timeout(CASE_BOUND, case.run(s)).await {
        Ok(r) => r,
        Err(_) => Err(format!("case did not finish within {CASE_BOUND:?}")),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_sequences_match_redis_under_repetition() {
    let rounds = env_u64("BLOCKING_STRESS_ROUNDS", 150);
    let budget = Duration::from_secs(env_u64("BLOCKING_STRESS_SECS", 50));
    // BLOCKING_STRESS_ONLY / BLOCKING_STRESS_SKIP: comma-separated parts of case
    // names, to run only (or all but) those cases.
    let filter = |var: &str| -> Vec<String> {
        std::env::var(var)
            .unwrap_or_default()
            .split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (only, skip) = (
        filter("BLOCKING_STRESS_ONLY"),
        filter("BLOCKING_STRESS_SKIP"),
    );
    let cases: Vec<Case> = CASES
        .iter()
        .copied()
        .filter(|c| only.is_empty() || only.iter().any(|o| c.name().contains(o.as_str())))
        .filter(|c| !skip.iter().any(|o| c.name().contains(o.as_str())))
        .collect();
    stress(&cases, rounds, budget).await;
}

/// A client that leaves while blocked, with a command pipelined behind the blocking
/// one (`BLPOP q 0` + `PING` in one write): Redis frees it, and a later push stays
/// in the list. Through the proxy the item is lost (3 of 3 runs): the PING needs
/// the shared connection while the BLPOP waits on an exclusive one, so dispatch
/// stalls the session (`self.stalled = true`, src/session/mod.rs ~1030), and a
/// stalled session does not read its client (`can_read` requires `!self.stalled`,
/// ~269). It never sees the EOF, so the branch that drops a blocked client's replies
/// and has its pooled connection discarded (~295) never runs: Redis keeps counting
/// that connection as blocked and hands it the next item, which the session then
/// writes to a closed socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_client_with_a_pipelined_command_that_leaves_loses_nothing() {
    stress(
        &[Case::DisconnectPipelined],
        env_u64("BLOCKING_STRESS_ROUNDS", 3),
        Duration::from_secs(30),
    )
    .await;
}

/// Runs `cases` round after round (at most `rounds`, no new round after `budget`)
/// through the proxy and against Redis directly, and fails with every difference.
async fn stress(cases: &[Case], rounds: u64, budget: Duration) {
    let behind = RedisServer::start();
    let direct = RedisServer::start();
    // The proxy on a runtime of its own, as the binary runs it (`--threads`, default
    // 1); BLOCKING_STRESS_PROXY_THREADS changes the worker count.
    let threads = env_u64("BLOCKING_STRESS_PROXY_THREADS", 1) as usize;
    let proxy = ProxyThread::start(proxy_config(&behind), threads);
    let mut p = Side::new("proxy", proxy.local_addr(), behind.addr()).await;
    let mut d = Side::new("direct", direct.addr(), direct.addr()).await;

    let started = Instant::now();
    let mut runs: BTreeMap<String, Tally> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut direct_failures: Vec<String> = Vec::new();
    let mut done_rounds = 0;
    'rounds: for round in 0..rounds {
        for &case in cases {
            if started.elapsed() > budget {
                break 'rounds;
            }
            let (pr, dr) = tokio::join!(bounded(case, &mut p), bounded(case, &mut d));
            let tally = runs.entry(case.name()).or_default();
            tally.runs += 1;
            if let (Some(p_ok), Some(d_ok)) = (case.in_order(&pr), case.in_order(&dr)) {
                tally.proxy_disorder += u32::from(!p_ok);
                tally.direct_disorder += u32::from(!d_ok);
                if !p_ok || !d_ok {
                    let show = |r: &R<Transcript>| match r {
                        Ok(t) => format!("{:?}", t.0),
                        Err(e) => e.clone(),
                    };
                    eprintln!(
                        "OUT OF ORDER round {round}, {}:\n  proxy:  {}\n  direct: {}",
                        case.name(),
                        show(&pr),
                        show(&dr)
                    );
                    p.unstick().await;
                    d.unstick().await;
                }
                continue;
            }
            let failed = match (pr, dr) {
                (Ok(pt), Ok(dt)) if pt.0 == dt.0 => None,
                (Ok(pt), Ok(dt)) => Some(format!(
                    "replies differ\n  proxy:  {:?}\n  direct: {:?}",
                    pt.0, dt.0
                )),
                (Err(e), Ok(_)) => Some(format!("proxy: {e}")),
                (pr, Err(e)) => {
                    direct_failures.push(format!("round {round}, {}: {e}", case.name()));
                    if let Err(pe) = pr {
                        Some(format!("proxy: {pe}"))
                    } else {
                        None
                    }
                }
            };
            if let Some(f) = failed {
                tally.failed += 1;
                let f = format!("round {round}, {}: {f}", case.name());
                eprintln!("FAILED {f}");
                failures.push(f);
                p.unstick().await;
                d.unstick().await;
            }
        }
        done_rounds = round + 1;
    }
    let elapsed = started.elapsed();
    let total: u32 = runs.values().map(|r| r.runs).sum();
    eprintln!(
        "{done_rounds} rounds, {total} case runs per side in {elapsed:?} (budget {budget:?}, \
         proxy on {threads} thread(s))"
    );
    for (name, t) in &runs {
        if t.proxy_disorder + t.direct_disorder > 0 || name.starts_with("Unsynced") {
            eprintln!(
                "  {:4} runs, out of order: proxy {:3}, direct {:3}: {name}",
                t.runs, t.proxy_disorder, t.direct_disorder
            );
        } else {
            eprintln!("  {:4} runs, {:3} failed: {name}", t.runs, t.failed);
        }
    }
    for s in [&p, &d] {
        eprintln!(
            "  {}: slowest unblock {:?}, mean {:?} over {}; slowest leave {:?}",
            s.name,
            s.worst,
            s.total / s.unblocks.max(1),
            s.unblocks,
            s.leave_worst
        );
    }
    // Sent without waiting, the order is not guaranteed even by Redis; the proxy may
    // not make it worse than a small margin (it used to break it in 12-35 % of runs).
    for (name, t) in &runs {
        let margin = 2 + t.runs / 25;
        if t.proxy_disorder > t.direct_disorder + margin {
            failures.push(format!(
                "{name}: the proxy broke the order the commands were sent in {} times in {} \
                 runs, Redis directly {} times (margin {margin})",
                t.proxy_disorder, t.runs, t.direct_disorder
            ));
        }
    }
    drop(proxy);
    assert!(
        direct_failures.is_empty(),
        "Redis itself did not behave as the cases expect ({}):\n{}",
        direct_failures.len(),
        direct_failures.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} of {total} case runs differed from Redis through the proxy:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Idle pooled connections that Redis closed (here: Redis restarted) are noticed at
/// checkout, without a round trip, and never handed to a blocking command or a
/// transaction: each gets a fresh connection and Redis's own reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_that_died_are_not_handed_out() {
    let mut redis = RedisServer::start();
    let proxy = ProxyThread::start(proxy_config(&redis), 1);
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    // Three pooled connections, idle again once their BLPOPs are served.
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
        c.send(&resp_cmd(&[b"BLPOP", b"w", b"0"])).await;
        waiters.push(c);
    }
    let deadline = Instant::now() + UNBLOCK_WITHIN;
    while blocked_clients(&mut direct).await != Ok(3) {
        assert!(Instant::now() < deadline, "the three BLPOPs never blocked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        direct.cmd(&[b"RPUSH", b"w", b"a", b"b", b"c"]).await,
        b":3\r\n"
    );
    for w in &mut waiters {
        assert!(w.read_reply().await.starts_with(b"*2\r\n"));
    }
    drop(direct);

    redis.restart();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    for i in 0..4 {
        let started = Instant::now();
        let r = c.cmd(&[b"BLPOP", b"q", b"0.05"]).await;
        assert_eq!(
            printable(&r),
            printable(b"*-1\r\n"),
            "BLPOP {i} after the restart"
        );
        assert!(
            started.elapsed() < UNBLOCK_WITHIN,
            "BLPOP {i} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*1\r\n+OK\r\n");
}

/// With the pool exhausted, blocking commands waiting for a connection get it in
/// the order they were sent as connections come back, and those that get none
/// answer with the pool error within `connect_timeout` of their own start (waiting
/// in line does not add up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_serves_waiters_in_order_and_answers_on_time() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    let connect_timeout = Duration::from_millis(1000);
    config.databases[0].upstream.pool_size = 1;
    config.databases[0].upstream.connect_timeout = connect_timeout;
    let proxy = ProxyThread::start(config, 1);
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    async fn wait_for(direct: &mut AsyncRawClient, n: u64) {
        let deadline = Instant::now() + UNBLOCK_WITHIN;
        while blocked_clients(direct).await != Ok(n) {
            assert!(Instant::now() < deadline, "never {n} blocked");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
        assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
        clients.push(c);
    }
    // The first holds the only connection; the other two wait for it, in order.
    for c in &mut clients {
        c.send(&resp_cmd(&[b"BLPOP", b"q", b"0"])).await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        wait_for(&mut direct, 1).await;
        let item = format!("x{i}");
        assert_eq!(
            direct.cmd(&[b"RPUSH", b"q", item.as_bytes()]).await,
            b":1\r\n"
        );
        let want = format!("*2\r\n$1\r\nq\r\n$2\r\n{item}\r\n");
        assert_eq!(
            printable(&c.read_reply().await),
            printable(want.as_bytes()),
            "client {i}"
        );
    }
    // One holds it again; two more get the pool's error, each about connect_timeout
    // after it was sent.
    let mut holder = AsyncRawClient::connect(proxy.local_addr()).await;
    holder.send(&resp_cmd(&[b"BLPOP", b"q", b"0"])).await;
    wait_for(&mut direct, 1).await;
    let mut late = Vec::new();
    for _ in 0..2 {
        let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
        c.send(&resp_cmd(&[b"BLPOP", b"q", b"0"])).await;
        late.push((c, Instant::now()));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (i, (c, sent)) in late.iter_mut().enumerate() {
        let r = c.read_reply().await;
        let took = sent.elapsed();
        assert!(
            String::from_utf8_lossy(&r).contains("no exclusive connection free in the pool"),
            "late client {i}: {}",
            printable(&r)
        );
        assert!(
            took >= connect_timeout - Duration::from_millis(50)
                && took < connect_timeout + Duration::from_millis(500),
            "late client {i} got its error after {took:?}"
        );
    }
    assert_eq!(direct.cmd(&[b"RPUSH", b"q", b"last"]).await, b":1\r\n");
    assert!(holder.read_reply().await.ends_with(b"last\r\n"));
}
