//! A Redis Cluster changing under load, through the proxy: slots resharded while 50
//! clients write, a replica promoted by `CLUSTER FAILOVER`, a primary killed. The
//! proxy must follow `-MOVED`/`-ASK`/`-TRYAGAIN` and learn the new primaries
//! without a restart; acknowledged writes must not be lost (a killed primary may
//! lose what it had not replicated: counted, not asserted) nor applied twice.
//!
//! Every client appends its own increasing numbers to its own lists (`RPUSH`), so
//! afterwards each list must hold every acknowledged number once, in order, and
//! nothing else but numbers whose reply the client never got.
//!
//! One cluster for the binary ([`Cluster::shared`]); the tests change its topology,
//! so they take [`SERIAL`] and run one at a time. Each leaves the cluster serving
//! all slots; the killed node stays dead (its replica took over).
//!
//! The figures (writes acknowledged, lost, duplicated; time to recover) are
//! printed on stderr (`cargo test --test cluster_faults -- --nocapture`);
//! `CLUSTER_FAULTS_TRACE=1` also prints the proxy's map while a primary is down
//! and the first writer's slow or failed writes.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis_sidecar::cluster::key_slot;
use redis_sidecar::server::Proxy;
use support::cluster::Cluster;
use support::{redis_cli, redis_cli_with_timeout, resp_cmd, AsyncRawClient};

/// The tests change the shared cluster's topology: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Client tasks writing at once.
const CLIENTS: usize = 50;
/// Lists per client.
const KEYS: usize = 8;
/// How long a writer waits for a reply (longer than any proxy timeout).
const PATIENCE: Duration = Duration::from_secs(20);
/// Most writes one client makes in one test.
const MAX_OPS: u64 = 200_000;

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    port: u16,
    primary: bool,
    failed: bool,
    /// The primary's id, for a replica.
    of: Option<String>,
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// The cluster as the first node that answers sees it.
fn nodes(cluster: &Cluster) -> Vec<NodeLine> {
    for port in cluster.ports() {
        let (text, status) = redis_cli(port, &["CLUSTER", "NODES"]);
        if !status.success() || text.trim().is_empty() || text.contains("ERR") {
            continue;
        }
        return text.lines().filter_map(parse_node).collect();
    }
    panic!("no cluster node answers CLUSTER NODES");
}

fn parse_node(line: &str) -> Option<NodeLine> {
    let f: Vec<&str> = line.split(' ').collect();
    let port = f
        .get(1)?
        .split('@')
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    let flags = f.get(2)?;
    let slots = f
        .iter()
        .skip(8)
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|a| (a, a)),
        })
        .collect();
    Some(NodeLine {
        id: f.first()?.to_string(),
        port,
        primary: flags.contains("master"),
        failed: flags.contains("fail"),
        of: f.get(3).filter(|s| **s != "-").map(|s| s.to_string()),
        slots,
    })
}

/// [`healthy_within`], or a panic saying what is wrong.
fn wait_healthy(cluster: &Cluster, within: Duration) {
    if let Err(why) = healthy_within(cluster, within) {
        panic!("{why}");
    }
}

/// Who is a primary and which slots it serves, as one node's `CLUSTER NODES`
/// says it (nodes it holds failed left out: a stopped node's flags differ from
/// view to view).
fn roles(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter_map(parse_node)
        .filter(|n| !n.failed)
        .map(|n| format!("{} {} {:?}", n.id, n.primary, n.slots))
        .collect();
    v.sort();
    v
}

/// Waits (bounded) until every live node says the cluster is ok, with all slots
/// and no open (migrating/importing) slot, and every node sees the same primaries
/// serving the same slots.
fn healthy_within(cluster: &Cluster, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let live: Vec<NodeLine> = nodes(cluster).into_iter().filter(|n| !n.failed).collect();
        let mut views = Vec::new();
        let mut states = Vec::new();
        let ok = live.iter().all(|n| {
            let (info, _) = redis_cli(n.port, &["CLUSTER", "INFO"]);
            let (all, _) = redis_cli(n.port, &["CLUSTER", "NODES"]);
            views.push(roles(&all));
            states.push((
                n.port,
                info.lines()
                    .find(|l| l.starts_with("cluster_state"))
                    .map(str::to_string),
                all.clone(),
            ));
            info.contains("cluster_state:ok")
                && info.contains("cluster_slots_ok:16384")
                && !all.contains("->-")
                && !all.contains("-<-")
        });
        // Every node sees the same primaries serving the same slots: a primary
        // killed and started again claims its old slots until it learns that its
        // replica took over and becomes a replica itself, and a slot given to it
        // meanwhile would be dropped with its claims.
        if ok && views.windows(2).all(|w| w[0] == w[1]) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            // Each node's own state and view, so that a view that disagrees can
            // be told apart (the nodes checked before the first one not ok).
            return Err(format!(
                "the cluster is not healthy after {within:?}: {:?}\nviews: {states:#?}",
                nodes(cluster)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Puts right what a test that failed half way through a slot move leaves:
/// slots in migration made stable again, and slots no primary claims given to
/// one (`redis-cli --cluster fix` would ask before doing so).
fn repair(cluster: &Cluster) {
    let mut to: Option<NodeLine> = None;
    let mut claimed = vec![false; 16384];
    for port in cluster.ports() {
        let (text, status) = redis_cli(port, &["CLUSTER", "NODES"]);
        let Some(me) = text.lines().find(|l| l.contains("myself")) else {
            continue;
        };
        if !status.success() || !me.contains("master") {
            continue;
        }
        for open in me.split(' ').filter(|f| f.starts_with('[')) {
            if let Some(slot) = open.trim_start_matches('[').split('-').next() {
                let _ = redis_cli(port, &["CLUSTER", "SETSLOT", slot, "STABLE"]);
            }
        }
        if let Some(n) = parse_node(me) {
            for &(a, b) in &n.slots {
                for slot in a..=b {
                    claimed[usize::from(slot)] = true;
                }
            }
            to.get_or_insert(n);
        }
    }
    let lost: Vec<u16> = (0..16384u16)
        .filter(|&s| !claimed[usize::from(s)])
        .collect();
    eprintln!("slots no primary claims: {lost:?}");
    assert!(
        lost.len() <= 64,
        "too many slots lost to put right: {}",
        lost.len()
    );
    let to = to.expect("a primary");
    for slot in lost {
        give_slot(cluster, slot, &to);
    }
}

/// Whether the node at `port` says it is a primary (another node's view of it
/// may lag behind a failover).
fn is_primary(port: u16) -> bool {
    redis_cli(port, &["ROLE"]).0.starts_with("master")
}

/// Gives `slot` (holding no keys, or with its keys migrated) to the primary `to`:
/// `CLUSTER SETSLOT … NODE` on `to` first, then on every other primary, then
/// `CLUSTER BUMPEPOCH` on `to` so that its claim outranks any other in every
/// node's view (a `SETSLOT NODE` without a migration does not bump the epoch, and
/// a view that lagged behind a failover could otherwise give the slot back, or
/// to no one). Returns once every node that answers says `to` serves the slot
/// (bounded: 15 s), so that a test does not go on with the move half known.
fn give_slot(cluster: &Cluster, slot: u16, to: &NodeLine) {
    let s = slot.to_string();
    assert!(is_primary(to.port), "{} is not a primary", to.port);
    let assign = || {
        cli_ok(to.port, &["CLUSTER", "SETSLOT", &s, "NODE", &to.id]);
        for n in nodes(cluster)
            .iter()
            .filter(|n| n.primary && !n.failed && n.id != to.id)
        {
            let _ = redis_cli(n.port, &["CLUSTER", "SETSLOT", &s, "NODE", &to.id]);
        }
        let (bumped, _) = redis_cli(to.port, &["CLUSTER", "BUMPEPOCH"]);
        assert!(
            bumped.starts_with("BUMPED") || bumped.starts_with("STILL"),
            "{bumped}"
        );
    };
    assign();
    // A view that learns of a newer epoch (a failover an earlier test set off
    // ending just now) can take the slot back: then it is given again.
    let mut again = Instant::now() + Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut views = Vec::new();
        for port in cluster.ports() {
            let (text, status) = redis_cli(port, &["CLUSTER", "NODES"]);
            if !status.success() || text.trim().is_empty() || text.contains("ERR") {
                continue; // a node stopped by a test
            }
            let owner = text
                .lines()
                .filter_map(parse_node)
                .find(|n| n.serves(slot))
                .map(|n| n.id);
            views.push((port, owner));
        }
        if views
            .iter()
            .all(|(_, o)| o.as_deref() == Some(to.id.as_str()))
        {
            return;
        }
        if Instant::now() >= again && is_primary(to.port) {
            assign();
            again = Instant::now() + Duration::from_secs(2);
        }
        assert!(
            Instant::now() < deadline,
            "slot {slot} given to {} ({}), but the nodes say: {views:?}",
            to.port,
            to.id
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What happened to one write.
#[derive(Debug, Clone)]
enum Outcome {
    /// `:len`: the list's length after it.
    Acked(i64),
    /// An error reply (Redis did not run it, or said so).
    Error(String),
    /// No reply (connection lost or timed out): it may have run.
    Unknown(String),
}

#[derive(Debug, Clone)]
struct Op {
    key: usize,
    n: u64,
    sent: Instant,
    done: Instant,
    outcome: Outcome,
}

/// A proxy (in process) on the shared cluster, and its runtime.
struct Env {
    rt: tokio::runtime::Runtime,
    proxy: Proxy,
}

fn start() -> Env {
    let (rt, proxy) = Cluster::start_proxy(Cluster::shared().proxy_config());
    Env { rt, proxy }
}

/// How a test on the shared cluster starts: the serial lock, the cluster once
/// healthy, and a proxy in front of it.
fn on_shared_cluster() -> (MutexGuard<'static, ()>, &'static Cluster, Env) {
    let serial = serial();
    let cluster = Cluster::shared();
    if let Err(why) = healthy_within(cluster, Duration::from_secs(20)) {
        // An earlier test failed half way through a slot move (its own failure is
        // reported): put the cluster right, so that one failure does not fail
        // every test after it.
        eprintln!("{why}; putting it right");
        repair(cluster);
        wait_healthy(cluster, Duration::from_secs(20));
    }
    (serial, cluster, start())
}

impl Env {
    /// The cluster upstream of database 0 (where the clients write).
    fn upstream(&self) -> Arc<redis_sidecar::cluster::Cluster> {
        let live = self.proxy.context().live();
        let db = live.router.get(0).expect("database 0");
        db.cluster().expect("database 0 is on a cluster").clone()
    }

    /// One command through the proxy.
    fn cmd(&self, args: &[&[u8]]) -> Vec<u8> {
        let addr = self.proxy.local_addr();
        self.rt.block_on(async move {
            let mut c = AsyncRawClient::connect(addr).await;
            c.cmd(args).await
        })
    }
}

/// `clients` × `KEYS` list names, `{test:client:key:n}`: the even ones in a slot
/// `hot` accepts, the odd ones too if `all_hot`, else anywhere.
fn key_names(
    test: &str,
    clients: usize,
    hot: &dyn Fn(u16) -> bool,
    all_hot: bool,
) -> Vec<Vec<String>> {
    (0..clients)
        .map(|c| {
            (0..KEYS)
                .map(|k| {
                    let mut t = 0u32;
                    loop {
                        // Braced: its twin list (`twin`) is in the same slot.
                        let name = format!("{{{test}:{c}:{k}:{t}}}");
                        let any = k % 2 == 1 && !all_hot;
                        if any || hot(key_slot(name.as_bytes())) || t > 100_000 {
                            break name;
                        }
                        t += 1;
                    }
                })
                .collect()
        })
        .collect()
}

/// Writers that append with a two-key script ([`TWIN_PUSH`]): a quarter.
fn twin(client: usize) -> bool {
    client % 4 == 3
}

/// The list a [`twin`] writer appends to with each of its lists.
fn twin_of(name: &str) -> String {
    format!("{name}:twin")
}

/// Appends `ARGV[1]` to `KEYS[2]` and `KEYS[1]` (one slot); the length of
/// `KEYS[1]` after. Redis answers `-TRYAGAIN` while a migration has split them.
const TWIN_PUSH: &[u8] =
    b"redis.call('RPUSH', KEYS[2], ARGV[1]); return redis.call('RPUSH', KEYS[1], ARGV[1])";

/// One writer per element of `keys`, through the proxy until `stop` (or `limit`).
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Op>>>,
    keys: Arc<Vec<Vec<String>>>,
}

impl Load {
    /// Writers give up on a reply after `patience` (and reconnect).
    fn start(env: &Env, keys: Vec<Vec<String>>, limit: Duration, patience: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let keys = Arc::new(keys);
        let addr = env.proxy.local_addr();
        let end = Instant::now() + limit;
        let tasks = (0..keys.len())
            .map(|c| {
                let stop = stop.clone();
                let keys = keys.clone();
                env.rt.spawn(async move {
                    let mut ops = Vec::new();
                    let mut conn: Option<AsyncRawClient> = None;
                    for n in 0..MAX_OPS {
                        if stop.load(Ordering::Relaxed) || Instant::now() >= end {
                            break;
                        }
                        let key = (n as usize) % KEYS;
                        let sent = Instant::now();
                        if conn.is_none() {
                            match AsyncRawClient::try_connect(addr).await {
                                Ok(mut c) => {
                                    c.set_timeout(patience);
                                    conn = Some(c);
                                }
                                Err(e) => {
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                    ops.push(Op {
                                        key,
                                        n,
                                        sent,
                                        done: Instant::now(),
                                        outcome: Outcome::Error(format!("connect: {e}")),
                                    });
                                    continue;
                                }
                            }
                        }
                        let Some(cl) = conn.as_mut() else { continue };
                        let v = n.to_string();
                        let name = keys[c][key].as_bytes();
                        let req = if twin(c) {
                            let other = twin_of(&keys[c][key]);
                            resp_cmd(&[
                                b"EVAL",
                                TWIN_PUSH,
                                b"2",
                                name,
                                other.as_bytes(),
                                v.as_bytes(),
                            ])
                        } else {
                            resp_cmd(&[b"RPUSH", name, v.as_bytes()])
                        };
                        let got = match cl.try_send(&req).await {
                            Ok(()) => cl.try_read_reply().await,
                            Err(e) => Err(e),
                        };
                        let outcome = match got {
                            Ok(r) if r.first() == Some(&b':') => {
                                match std::str::from_utf8(&r[1..r.len() - 2])
                                    .ok()
                                    .and_then(|s| s.parse().ok())
                                {
                                    Some(len) => Outcome::Acked(len),
                                    None => Outcome::Unknown(String::from_utf8_lossy(&r).into()),
                                }
                            }
                            Ok(r) => {
                                let text = String::from_utf8_lossy(&r).trim().to_string();
                                if text.contains("may have been executed") {
                                    Outcome::Unknown(text)
                                } else {
                                    Outcome::Error(text)
                                }
                            }
                            Err(e) => {
                                conn = None;
                                if std::env::var("CLUSTER_FAULTS_TRACE").is_ok() {
                                    eprintln!(
                                        "client {c} {} {n}: {e} after {:?}",
                                        keys[c][key],
                                        sent.elapsed()
                                    );
                                }
                                Outcome::Unknown(e.to_string())
                            }
                        };
                        if !matches!(outcome, Outcome::Acked(_)) {
                            // Not a busy loop while a shard is down.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        ops.push(Op {
                            key,
                            n,
                            sent,
                            done: Instant::now(),
                            outcome,
                        });
                    }
                    ops
                })
            })
            .collect();
        Load { stop, tasks, keys }
    }

    /// Stops the writers and gives each one's log.
    fn finish(self, env: &Env) -> (Arc<Vec<Vec<String>>>, Vec<Vec<Op>>) {
        self.stop.store(true, Ordering::Relaxed);
        let logs = env.rt.block_on(async {
            let mut out = Vec::new();
            for t in self.tasks {
                out.push(t.await.expect("a writer task panicked"));
            }
            out
        });
        (self.keys, logs)
    }
}

/// What the lists say about the writes.
#[derive(Debug, Default)]
struct Audit {
    acked: usize,
    errors: Vec<String>,
    unknown: Vec<String>,
    /// Acknowledged numbers missing from their list.
    lost: Vec<String>,
    /// Numbers in a list more than once.
    duplicated: Vec<String>,
    /// Numbers in a list that the client never sent, or sent and got an error for.
    unexpected: Vec<String>,
    /// Lists whose acknowledged elements are not in increasing order.
    out_of_order: Vec<String>,
    /// Acknowledged writes whose reply length is not their place in the list.
    misplaced: usize,
    /// Lists whose twin (appended to by the same script) differs.
    twins_differ: Vec<String>,
    /// Lists that could not be read back (the error).
    unreadable: Vec<String>,
}

impl Audit {
    /// Every list readable; nothing in one twice, out of order, or never sent.
    fn assert_consistent(&self) {
        assert!(
            self.unreadable.is_empty(),
            "unreadable: {:?}",
            first(&self.unreadable)
        );
        assert!(
            self.duplicated.is_empty(),
            "twice: {:?}",
            first(&self.duplicated)
        );
        assert!(
            self.unexpected.is_empty(),
            "unsent: {:?}",
            first(&self.unexpected)
        );
        assert!(
            self.twins_differ.is_empty(),
            "twins: {:?}",
            first(&self.twins_differ)
        );
        assert!(
            self.out_of_order.is_empty(),
            "order: {:?}",
            first(&self.out_of_order)
        );
    }

    /// Consistent, and every write acknowledged, in its list, at the place its
    /// reply said.
    fn assert_clean(&self) {
        assert!(self.acked > 1000, "the load ran: {} writes", self.acked);
        assert!(self.errors.is_empty(), "errors: {}", summary(&self.errors));
        assert!(
            self.unknown.is_empty(),
            "no replies: {}",
            summary(&self.unknown)
        );
        assert!(self.lost.is_empty(), "lost: {:?}", first(&self.lost));
        assert_eq!(self.misplaced, 0, "RPUSH lengths match the places");
        self.assert_consistent();
    }
}

fn int_list(reply: &[u8]) -> Result<Vec<u64>, String> {
    match redis::parse_redis_value(reply) {
        Ok(redis::Value::Array(items)) => Ok(items
            .iter()
            .filter_map(|v| match v {
                redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
                _ => None,
            })
            .collect()),
        _ => Err(String::from_utf8_lossy(reply).trim().to_string()),
    }
}

/// Reads every list back through the proxy and checks it against the logs.
fn audit(env: &Env, keys: &[Vec<String>], logs: &[Vec<Op>]) -> Audit {
    let mut a = Audit::default();
    let addr = env.proxy.local_addr();
    type Lists = (Result<Vec<u64>, String>, Result<Vec<u64>, String>);
    let lists: Vec<Vec<Lists>> = env.rt.block_on(async {
        let mut c = AsyncRawClient::connect(addr).await;
        // The audit is about data, not latency: right after a fault a read may
        // wait out the proxy's own command timeout (5 s) and get its error, which
        // the audit reports; the client must not give up first.
        c.set_timeout(Duration::from_secs(30));
        let mut all = Vec::new();
        for names in keys {
            let mut mine = Vec::new();
            for name in names {
                let r = c.cmd(&[b"LRANGE", name.as_bytes(), b"0", b"-1"]).await;
                let t = c
                    .cmd(&[b"LRANGE", twin_of(name).as_bytes(), b"0", b"-1"])
                    .await;
                mine.push((int_list(&r), int_list(&t)));
            }
            all.push(mine);
        }
        all
    });
    for (c, log) in logs.iter().enumerate() {
        for (k, (list, twins)) in lists[c].iter().enumerate() {
            let name = &keys[c][k];
            let expected_twins = if twin(c) { list } else { &Ok(Vec::new()) };
            if twins != expected_twins {
                a.twins_differ.push(name.clone());
            }
            let mine: Vec<&Op> = log.iter().filter(|o| o.key == k).collect();
            for o in &mine {
                match &o.outcome {
                    Outcome::Acked(_) => a.acked += 1,
                    Outcome::Error(e) => a.errors.push(e.clone()),
                    Outcome::Unknown(e) => a.unknown.push(e.clone()),
                }
            }
            let list = match list {
                Ok(l) => l,
                Err(e) => {
                    a.unreadable.push(format!("{name}: {e}"));
                    continue;
                }
            };
            let mut count: HashMap<u64, usize> = HashMap::new();
            for &v in list.iter() {
                *count.entry(v).or_default() += 1;
            }
            for (&v, &times) in &count {
                if times > 1 {
                    a.duplicated.push(format!("{name}: {v} ×{times}"));
                }
            }
            // Acknowledged writes in the order they were sent (a write the client
            // gave up on may run at any time, as on any Redis).
            let acked: HashSet<u64> = mine
                .iter()
                .filter(|o| matches!(o.outcome, Outcome::Acked(_)))
                .map(|o| o.n)
                .collect();
            let in_order: Vec<u64> = list.iter().copied().filter(|v| acked.contains(v)).collect();
            if in_order.windows(2).any(|w| w[0] >= w[1]) {
                a.out_of_order.push(name.clone());
            }
            let place: HashMap<u64, usize> =
                list.iter().enumerate().map(|(i, &v)| (v, i + 1)).collect();
            let maybe: HashSet<u64> = mine
                .iter()
                .filter(|o| !matches!(o.outcome, Outcome::Error(_)))
                .map(|o| o.n)
                .collect();
            for &v in list.iter() {
                if !maybe.contains(&v) {
                    a.unexpected.push(format!("{name}: {v}"));
                }
            }
            for o in &mine {
                if let Outcome::Acked(len) = o.outcome {
                    match place.get(&o.n) {
                        None => a.lost.push(format!("{name}: {}", o.n)),
                        Some(&p) if p as i64 != len => a.misplaced += 1,
                        Some(_) => {}
                    }
                }
            }
        }
    }
    a
}

/// The distinct error texts, with counts (for messages and the report).
fn summary(texts: &[String]) -> String {
    let mut m: HashMap<&str, usize> = HashMap::new();
    for t in texts {
        *m.entry(t.as_str()).or_default() += 1;
    }
    let mut v: Vec<String> = m.into_iter().map(|(t, n)| format!("{n}× {t}")).collect();
    v.sort();
    v.join("; ")
}

fn first<T>(v: &[T]) -> &[T] {
    &v[..v.len().min(10)]
}

/// 1000 slots moved from the largest primary to another with `redis-cli --cluster
/// reshard` while 50 clients append to lists (a quarter of them with a two-key
/// script), half of the lists in the slots that move: nothing lost, nothing twice,
/// no error, every list in order; the proxy followed `-MOVED` (and the few `-ASK`
/// a key caught mid-move gets).
#[test]
fn resharding_under_load_loses_and_duplicates_nothing() {
    let (_serial, cluster, env) = on_shared_cluster();
    let topo = nodes(cluster);
    let from = topo
        .iter()
        .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
        .max_by_key(|n| n.slots.iter().map(|(a, b)| b - a + 1).sum::<u16>())
        .expect("a primary with slots")
        .clone();
    let to = topo
        .iter()
        .find(|n| n.primary && !n.failed && n.id != from.id)
        .expect("another primary")
        .clone();
    // redis-cli takes the source's lowest slots first: the first 1000 it serves.
    let mut owned: Vec<u16> = (0..16384u16).filter(|&s| from.serves(s)).collect();
    owned.truncate(1000);
    let moving: HashSet<u16> = owned.into_iter().collect();
    let keys = key_names("reshard", CLIENTS, &|s| moving.contains(&s), false);
    assert_eq!(env.cmd(&[b"PING"]), b"+PONG\r\n");
    let up = env.upstream();
    let (moved0, asked0) = (
        up.moved.load(Ordering::Relaxed),
        up.asked.load(Ordering::Relaxed),
    );
    let load = Load::start(&env, keys, Duration::from_secs(40), PATIENCE);
    std::thread::sleep(Duration::from_millis(500));
    let began = Instant::now();
    let target = format!("127.0.0.1:{}", from.port);
    let (out, status) = redis_cli_with_timeout(
        from.port,
        &[
            "--cluster",
            "reshard",
            &target,
            "--cluster-from",
            &from.id,
            "--cluster-to",
            &to.id,
            "--cluster-slots",
            "1000",
            "--cluster-yes",
        ],
        Duration::from_secs(40),
    );
    let took = began.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (keys, logs) = load.finish(&env);
    assert!(
        status.success(),
        "redis-cli --cluster reshard failed: {}",
        &out[out.len().saturating_sub(2000)..]
    );
    wait_healthy(cluster, Duration::from_secs(10));
    // The slots really moved, with keys of the load in them.
    let after = nodes(cluster);
    let now_to = after.iter().find(|n| n.id == to.id).expect("target node");
    assert!(
        moving.iter().all(|&s| now_to.serves(s)),
        "the 1000 slots are served by the target now"
    );
    let a = audit(&env, &keys, &logs);
    let (moved, asked) = (
        up.moved.load(Ordering::Relaxed) - moved0,
        up.asked.load(Ordering::Relaxed) - asked0,
    );
    eprintln!(
        "reshard: 1000 slots in {took:?}; {} writes acknowledged, {} errors, {} unknown, \
         {} lost, {} duplicated; proxy followed {moved} MOVED and {asked} ASK",
        a.acked,
        a.errors.len(),
        a.unknown.len(),
        a.lost.len(),
        a.duplicated.len()
    );
    a.assert_clean();
    assert!(moved > 0, "the proxy followed MOVED ({moved})");
    // ASK needs a write between a key's MIGRATE and its slot's SETSLOT NODE: a
    // few per run here (reported); slot_in_migration_… asserts it.
}

/// A primary that has a live replica, and that replica, once the replica is in
/// sync (a replica that never synced does not fail over: its data is "too old"
/// for `cluster-replica-validity-factor`).
fn primary_with_replica(cluster: &Cluster) -> (NodeLine, NodeLine) {
    let topo = nodes(cluster);
    let (p, r) = topo
        .iter()
        .filter(|p| p.primary && !p.failed && !p.slots.is_empty())
        .find_map(|p| {
            let r = topo
                .iter()
                .find(|r| !r.primary && !r.failed && r.of.as_deref() == Some(&p.id))?;
            Some((p.clone(), r.clone()))
        })
        .expect("a primary with a live replica");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (info, _) = redis_cli(r.port, &["INFO", "replication"]);
        if info.contains("master_link_status:up") && info.contains("master_sync_in_progress:0") {
            return (p, r);
        }
        assert!(
            Instant::now() < deadline,
            "replica {} not in sync: {info}",
            r.port
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) until `node` is a primary serving slots, by its own account.
fn wait_promoted(cluster: &Cluster, node: &NodeLine, within: Duration) -> Duration {
    let began = Instant::now();
    loop {
        let (role, _) = redis_cli(node.port, &["ROLE"]);
        let (mine, _) = redis_cli(node.port, &["CLUSTER", "NODES"]);
        let serving = mine
            .lines()
            .filter(|l| l.contains("myself"))
            .filter_map(parse_node)
            .any(|n| n.primary && !n.slots.is_empty());
        if role.starts_with("master") && serving {
            return began.elapsed();
        }
        assert!(
            began.elapsed() < within,
            "{} not promoted within {within:?}: {:?}",
            node.port,
            nodes(cluster)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `CLUSTER FAILOVER` on a replica while 50 clients write, half of them to the
/// shard that changes primary: the old primary stops writes until its replica has
/// caught up, then answers `-MOVED`; the proxy follows: nothing lost, nothing
/// twice, no error.
#[test]
fn graceful_failover_under_load_loses_nothing() {
    let _serial = serial();
    let cluster = Cluster::shared();
    wait_healthy(cluster, Duration::from_secs(20));
    // During a manual failover the primary holds writes until its replica has
    // caught up (Redis's own pause, up to its 5 s manual-failover timeout, longer
    // on a loaded machine): a command timeout above that lets them finish (then
    // -MOVED, followed) instead of failing as "may have been executed".
    let mut config = cluster.proxy_config();
    for db in &mut config.databases {
        db.upstream.command_timeout = Duration::from_secs(15);
    }
    let (rt, proxy) = Cluster::start_proxy(config);
    let env = Env { rt, proxy };
    let (primary, replica) = primary_with_replica(cluster);
    let keys = key_names("graceful", CLIENTS, &|s| primary.serves(s), false);
    assert_eq!(env.cmd(&[b"PING"]), b"+PONG\r\n");
    let up = env.upstream();
    let moved0 = up.moved.load(Ordering::Relaxed);
    let load = Load::start(&env, keys, Duration::from_secs(30), PATIENCE);
    std::thread::sleep(Duration::from_millis(700));
    let (out, status) = redis_cli(replica.port, &["CLUSTER", "FAILOVER"]);
    assert!(
        status.success() && out.contains("OK"),
        "CLUSTER FAILOVER: {out}"
    );
    let took = wait_promoted(cluster, &replica, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500));
    let (keys, logs) = load.finish(&env);
    let a = audit(&env, &keys, &logs);
    let moved = up.moved.load(Ordering::Relaxed) - moved0;
    eprintln!(
        "graceful failover: promoted in {took:?}; {} writes acknowledged, {} errors, \
         {} unknown, {} lost, {} duplicated; proxy followed {moved} MOVED",
        a.acked,
        a.errors.len(),
        a.unknown.len(),
        a.lost.len(),
        a.duplicated.len()
    );
    wait_healthy(cluster, Duration::from_secs(10));
    a.assert_clean();
    assert!(moved > 0, "the proxy followed MOVED to the new primary");
}

/// How long after `since` writes to the hot keys (all if `all_hot`) failed for the last time,
/// and whether some succeeded after that.
fn recovery(logs: &[Vec<Op>], all_hot: bool, since: Instant) -> (Option<Duration>, bool) {
    let hot = |o: &Op| all_hot || o.key % 2 == 0;
    let last_bad = logs
        .iter()
        .flatten()
        .filter(|o| hot(o) && !matches!(o.outcome, Outcome::Acked(_)) && o.done >= since)
        .map(|o| o.done)
        .max();
    let good_after = logs.iter().flatten().any(|o| {
        hot(o)
            && matches!(o.outcome, Outcome::Acked(_))
            && last_bad.is_none_or(|b| o.sent > b)
            && o.sent > since
    });
    (last_bad.map(|b| b - since), good_after)
}

/// What a primary's SIGKILL under load did.
struct Killed {
    audit: Audit,
    /// From the kill until the replica called itself primary (polled).
    promoted: Duration,
    /// From the kill until the last failed write to the dead shard's keys.
    last_bad: Option<Duration>,
    /// Writes to the dead shard's keys succeeded after that.
    good_after: bool,
    /// From the fault until the proxy's map named the replica as primary.
    learnt: Option<Duration>,
    /// After a kill: the killed node was the first seed, where the proxy's
    /// subscribers were; from the kill until a client subscribed again through
    /// the proxy heard a message published through it.
    pubsub_back: Option<Duration>,
}

/// How a primary fails.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL: connections reset, connects refused.
    Kill,
    /// SIGSTOP: connections accepted (by the kernel) and never answered; resumed
    /// (it rejoins as a replica) once the test has its figures.
    Pause,
}

/// Fails a primary (that has a replica) while `clients` write, half of their
/// lists (all, if `all_hot`) in its shard; runs until the proxy's map names the
/// replica as primary (and 1 s more), or 25 s after the fault.
fn kill_a_primary(test: &str, clients: usize, all_hot: bool, fault: Fault) -> Killed {
    let cluster = Cluster::shared();
    wait_healthy(cluster, Duration::from_secs(20));
    let (primary, replica) = primary_with_replica(cluster);
    // The node to fail is the first seed: where subscribers and PUBLISH go.
    let mut config = Cluster::shared().proxy_config();
    for db in &mut config.databases {
        if let Some(cc) = &mut db.upstream.cluster {
            Arc::make_mut(cc)
                .nodes
                .sort_by_key(|(_, p)| *p != primary.port);
        }
    }
    let (rt, proxy) = Cluster::start_proxy(config);
    let env = Env { rt, proxy };
    let channel = format!("news:{test}");
    let subscriber = (fault == Fault::Kill).then(|| {
        assert!(env.pubsub_node().ends_with(&format!(":{}", primary.port)));
        env.rt
            .block_on(subscribe(env.proxy.local_addr(), channel.as_bytes()))
    });
    let keys = key_names(test, clients, &|s| primary.serves(s), all_hot);
    assert_eq!(env.cmd(&[b"PING"]), b"+PONG\r\n");
    // A hung node holds requests until their deadline (connect_timeout +
    // command_timeout): the writers give up sooner, as real clients do, so
    // their next requests show when the proxy routes around it.
    let patience = match fault {
        Fault::Kill => PATIENCE,
        Fault::Pause => Duration::from_secs(2),
    };
    let load = Load::start(&env, keys, Duration::from_secs(40), patience);
    std::thread::sleep(Duration::from_millis(500));
    // When the proxy's map first names the replica as primary.
    let new_primary = format!(":{}", replica.port);
    let up = env.upstream();
    let watched = new_primary.clone();
    let killed = Instant::now();
    let learnt_at = env.rt.spawn(async move {
        while killed.elapsed() < Duration::from_secs(30) {
            let t = up.topology();
            if t.is_some_and(|t| t.primaries.iter().any(|n| n.addr.ends_with(&watched))) {
                return Some(killed.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    });
    match fault {
        Fault::Kill => cluster.kill_node(primary.port),
        Fault::Pause => cluster.pause_node(primary.port),
    }
    let pubsub_back = subscriber.map(|old| {
        let proxy = env.proxy.local_addr();
        env.rt
            .spawn(pubsub_after_kill(proxy, old, channel.clone(), killed))
    });
    let promoted = wait_promoted(cluster, &replica, Duration::from_secs(20));
    let deadline = killed + Duration::from_secs(25);
    while Instant::now() < deadline {
        let learnt = env
            .upstream()
            .topology()
            .is_some_and(|t| t.primaries.iter().any(|n| n.addr.ends_with(&new_primary)));
        if std::env::var("CLUSTER_FAULTS_TRACE").is_ok() {
            let up = env.upstream();
            let t = up.topology();
            eprintln!(
                "{:?} gen {:?} refreshes {} failures {} primaries {:?}",
                killed.elapsed(),
                t.as_ref().map(|t| t.generation),
                up.refreshes.load(Ordering::Relaxed),
                up.refresh_failures.load(Ordering::Relaxed),
                t.map(|t| t
                    .primaries
                    .iter()
                    .map(|n| n.addr.clone())
                    .collect::<Vec<_>>())
            );
        }
        if learnt {
            // Writes sent after any the writers may still give up on.
            let more = match fault {
                Fault::Kill => Duration::ZERO,
                Fault::Pause => patience,
            };
            std::thread::sleep(Duration::from_secs(1) + more);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (keys, logs) = load.finish(&env);
    if fault == Fault::Pause {
        cluster.resume_node(primary.port);
    }
    if std::env::var("CLUSTER_FAULTS_TRACE").is_ok() {
        for o in logs[0].iter().filter(|o| o.done >= killed) {
            if !matches!(o.outcome, Outcome::Acked(_))
                || o.done - o.sent > Duration::from_millis(200)
            {
                eprintln!(
                    "client 0 key {} sent {:?} took {:?}: {:?}",
                    o.key,
                    o.sent.saturating_duration_since(killed),
                    o.done - o.sent,
                    o.outcome
                );
            }
        }
    }
    let (last_bad, good_after) = recovery(&logs, all_hot, killed);
    let learnt = env.rt.block_on(learnt_at).ok().flatten();
    let pubsub_back = pubsub_back.and_then(|t| env.rt.block_on(t).ok().flatten());
    let audit = audit(&env, &keys, &logs);
    eprintln!(
        "{test}: replica promoted {promoted:?} after the fault (polled), in the proxy's \
         map {learnt:?} after it; pub/sub back {pubsub_back:?} after it; last failed write {last_bad:?} after it, writes succeeding after that: {good_after}; {} writes \
         acknowledged, {} lost, {} duplicated, {} errors ({}), {} maybe run ({})",
        audit.acked,
        audit.lost.len(),
        audit.duplicated.len(),
        audit.errors.len(),
        summary(&audit.errors),
        audit.unknown.len(),
        summary(&audit.unknown),
    );
    wait_healthy(cluster, Duration::from_secs(15));
    Killed {
        audit,
        promoted,
        last_bad,
        good_after,
        learnt,
        pubsub_back,
    }
}

impl Env {
    /// `pubsub_node` of database 0 in `PROXY INFO databases`.
    fn pubsub_node(&self) -> String {
        let info = self.cmd(&[b"PROXY", b"INFO", b"databases"]);
        let info = String::from_utf8_lossy(&info);
        info.lines()
            .find(|l| l.starts_with("db0:"))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("pubsub_node=")))
            .unwrap_or_else(|| panic!("no pubsub_node: {info}"))
            .to_string()
    }
}

/// A client of `proxy` subscribed to `ch`.
async fn subscribe(proxy: std::net::SocketAddr, ch: &[u8]) -> AsyncRawClient {
    let mut c = AsyncRawClient::connect(proxy).await;
    let ok = c.cmd(&[b"SUBSCRIBE", ch]).await;
    let want = format!(
        "*3\r\n$9\r\nsubscribe\r\n${}\r\n{}\r\n:1\r\n",
        ch.len(),
        String::from_utf8_lossy(ch)
    );
    assert_eq!(String::from_utf8_lossy(&ok), want);
    c
}

/// After the node of `old`'s subscriber connection was killed: `old` stays
/// connected and subscribed (the proxy subscribes it again on the next home
/// node), so a message published through the proxy reaches it; how long after
/// `killed` (`None`: not within 25 s). A new subscriber then hears one too.
async fn pubsub_after_kill(
    proxy: std::net::SocketAddr,
    mut old: AsyncRawClient,
    ch: String,
    killed: Instant,
) -> Option<Duration> {
    let ch = ch.as_bytes();
    let message = format!(
        "*3\r\n$7\r\nmessage\r\n${}\r\n{}\r\n$5\r\nhello\r\n",
        ch.len(),
        String::from_utf8_lossy(ch)
    );
    old.set_timeout(Duration::from_secs(3));
    let mut publisher = AsyncRawClient::connect(proxy).await;
    publisher.set_timeout(Duration::from_secs(3));
    while killed.elapsed() < Duration::from_secs(25) {
        publisher.send(&resp_cmd(&[b"PUBLISH", ch, b"hello"])).await;
        match publisher.try_read_reply().await {
            Ok(r) if r == b":1\r\n" => {
                let back = killed.elapsed();
                // Nothing but the message: no confirmation of the proxy's own
                // SUBSCRIBE, no close.
                let got = old.try_read_reply().await;
                assert_eq!(
                    got.as_deref().map(String::from_utf8_lossy).ok(),
                    Some(message.as_str().into()),
                    "the subscriber stays subscribed: {got:?}"
                );
                assert!(
                    heard(proxy, ch, message.as_bytes()).await,
                    "a new subscriber hears too"
                );
                return Some(back);
            }
            Ok(_) => {}
            Err(_) => {
                publisher = AsyncRawClient::connect(proxy).await;
                publisher.set_timeout(Duration::from_secs(3));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Whether a new client of `proxy` subscribes to `ch` and gets `message` after
/// another publishes it (each step within 3 s; other subscribers may hear it too).
async fn heard(proxy: std::net::SocketAddr, ch: &[u8], message: &[u8]) -> bool {
    let mut sub = AsyncRawClient::connect(proxy).await;
    sub.set_timeout(Duration::from_secs(3));
    let mut publisher = AsyncRawClient::connect(proxy).await;
    publisher.set_timeout(Duration::from_secs(3));
    sub.send(&resp_cmd(&[b"SUBSCRIBE", ch])).await;
    if !sub
        .try_read_reply()
        .await
        .is_ok_and(|r| r.starts_with(b"*3\r\n$9\r\nsubscribe"))
    {
        return false;
    }
    publisher.send(&resp_cmd(&[b"PUBLISH", ch, b"hello"])).await;
    // (Heard by this subscriber and maybe others.)
    publisher
        .try_read_reply()
        .await
        .is_ok_and(|r| r.starts_with(b":") && r != b":0\r\n")
        && sub.try_read_reply().await.is_ok_and(|r| r == message)
}

fn assert_recovered(k: &Killed) {
    let a = &k.audit;
    assert!(a.acked > 100, "the load ran: {} writes", a.acked);
    assert!(
        k.good_after,
        "writes to the dead shard's keys succeed again"
    );
    // 15 s, unless Redis itself took longer than 11 s to promote the replica
    // (a loaded machine): then 4 s after that.
    let bound = Duration::from_secs(15).max(k.promoted + Duration::from_secs(4));
    assert!(
        k.last_bad.is_some_and(|d| d < bound),
        "writes succeed again within {bound:?} of the fault (last failure {:?}, promoted {:?})",
        k.last_bad,
        k.promoted
    );
    assert!(k.learnt.is_some(), "the proxy learnt the new primary");
    a.assert_consistent();
}

/// After a kill of the first seed: subscribers (still connected) and PUBLISH
/// moved to another node within 15 s, without a restart.
fn assert_pubsub_moved(k: &Killed) {
    assert!(
        k.pubsub_back.is_some_and(|d| d < Duration::from_secs(15)),
        "pub/sub works again within 15 s of the kill: {:?}",
        k.pubsub_back
    );
}

/// SIGKILL to a primary while 50 clients write, half of them to its shard: the
/// replica is promoted after `cluster-node-timeout` (5 s in the helper) and the
/// proxy must find it without a restart. Writes to the dead shard fail meanwhile
/// (with errors, never hanging past the client's timeout); they succeed again
/// within 15 s of the kill; no acknowledged write is applied twice or out of
/// order. Acknowledged writes the primary had not replicated are lost: counted.
#[test]
fn killed_primary_writes_resume_on_the_promoted_replica() {
    let _serial = serial();
    let k = kill_a_primary("killed", CLIENTS, false, Fault::Kill);
    assert_recovered(&k);
    assert_pubsub_moved(&k);
}

/// As above, but every client writes only to the dead shard's keys: no request
/// reaches a live node (whose `-CLUSTERDOWN` or `-MOVED` would make the proxy
/// look at the map again), so the proxy must refresh its map because the node
/// fails, also once that node's circuit breaker is open.
#[test]
fn killed_primary_alone_in_use_is_replaced_without_other_traffic() {
    let _serial = serial();
    let k = kill_a_primary("killed-alone", 5, true, Fault::Kill);
    assert_recovered(&k);
    assert_pubsub_moved(&k);
}

/// SIGSTOP to a primary while 50 clients write, half of them to its shard: its
/// connections hang (each request in flight fails after `command_timeout`, 5 s);
/// the replica is promoted and writes succeed again within 15 s, nothing twice.
#[test]
fn hung_primary_writes_resume_on_the_promoted_replica() {
    let _serial = serial();
    let k = kill_a_primary("hung", CLIENTS, false, Fault::Pause);
    assert_recovered(&k);
}

/// `redis-cli -p port args…`, asserting it says OK.
fn cli_ok(port: u16, args: &[&str]) {
    let (out, status) = redis_cli(port, args);
    assert!(
        status.success() && out.trim() == "OK",
        "{port} {args:?}: {out}"
    );
}

/// The primary serving `slot` and another primary (to move it to).
fn migration_ends(cluster: &Cluster, slot: u16) -> (NodeLine, NodeLine) {
    let topo = nodes(cluster);
    let from = topo
        .iter()
        .find(|n| n.primary && !n.failed && n.serves(slot))
        .expect("the slot's primary")
        .clone();
    let to = topo
        .iter()
        .find(|n| {
            n.primary && !n.failed && !n.slots.is_empty() && n.id != from.id && is_primary(n.port)
        })
        .expect("another primary")
        .clone();
    (from, to)
}

/// One slot moved by hand, one key at a time, with clients using it in between:
/// a key already moved is reached with `ASKING` (alone and several in one
/// pipeline, in order), a key not yet moved on the old node, a new key on the new
/// node; a command whose keys are split between the two nodes (`-TRYAGAIN` from
/// Redis) is held and resent until the slot has moved, then runs once.
#[test]
fn slot_in_migration_asks_and_holds_split_multi_key_commands() {
    let (_serial, cluster, env) = on_shared_cluster();
    let slot = key_slot(b"{mig}");
    let (from, to) = migration_ends(cluster, slot);
    let up = env.upstream();
    let addr = env.proxy.local_addr();
    let s = slot.to_string();
    let (asked0, moved0) = (
        up.asked.load(Ordering::Relaxed),
        up.moved.load(Ordering::Relaxed),
    );
    let mut c = env.rt.block_on(AsyncRawClient::connect(addr));
    let mut cmd = |args: &[&[u8]]| env.rt.block_on(c.cmd(args));
    assert_eq!(cmd(&[b"DEL", b"{mig}a", b"{mig}b", b"{mig}new"]), b":0\r\n");
    assert_eq!(cmd(&[b"RPUSH", b"{mig}a", b"1"]), b":1\r\n");
    assert_eq!(cmd(&[b"RPUSH", b"{mig}b", b"1"]), b":1\r\n");

    cli_ok(to.port, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from.id]);
    cli_ok(from.port, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to.id]);
    let to_port = to.port.to_string();
    let migrate = |key: &str| {
        let args = [
            "MIGRATE",
            "127.0.0.1",
            &to_port,
            "",
            "0",
            "5000",
            "KEYS",
            key,
        ];
        cli_ok(from.port, &args);
    };
    migrate("{mig}a");
    // Moved: ASK; not moved: the old node; new: ASK to the new node.
    assert_eq!(cmd(&[b"RPUSH", b"{mig}a", b"2"]), b":2\r\n");
    assert_eq!(cmd(&[b"RPUSH", b"{mig}b", b"2"]), b":2\r\n");
    assert_eq!(cmd(&[b"RPUSH", b"{mig}new", b"1"]), b":1\r\n");
    assert!(
        up.asked.load(Ordering::Relaxed) >= asked0 + 2,
        "ASK followed"
    );
    // Several ASKs in one pipeline, between requests the old node runs.
    let mut req = Vec::new();
    req.extend(resp_cmd(&[b"RPUSH", b"{mig}a", b"3"]));
    req.extend(resp_cmd(&[b"RPUSH", b"{mig}b", b"3"]));
    req.extend(resp_cmd(&[b"RPUSH", b"{mig}new", b"2"]));
    req.extend(resp_cmd(&[b"LRANGE", b"{mig}a", b"0", b"-1"]));
    req.extend(resp_cmd(&[b"LLEN", b"{mig}b"]));
    let replies = env.rt.block_on(async {
        let mut p = AsyncRawClient::connect(addr).await;
        p.send(&req).await;
        p.read_replies(5).await
    });
    assert_eq!(
        replies,
        vec![
            b":3\r\n".to_vec(),
            b":3\r\n".to_vec(),
            b":2\r\n".to_vec(),
            b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n".to_vec(),
            b":3\r\n".to_vec(),
        ]
    );
    // Keys on both nodes: Redis answers -TRYAGAIN; the proxy holds it.
    let split = env.rt.spawn(async move {
        let mut p = AsyncRawClient::connect(addr).await;
        p.set_timeout(Duration::from_secs(20));
        let sent = Instant::now();
        let r = p
            .cmd(&[b"LMOVE", b"{mig}b", b"{mig}a", b"LEFT", b"RIGHT"])
            .await;
        (r, sent.elapsed())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!split.is_finished(), "the split LMOVE waits for the slot");
    migrate("{mig}b");
    give_slot(cluster, slot, &to);
    let (moved, waited) = env.rt.block_on(split).expect("LMOVE task");
    assert_eq!(moved, b"$1\r\n1\r\n", "LMOVE ran once the slot moved");
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    let mut cmd = |args: &[&[u8]]| env.rt.block_on(c.cmd(args));
    assert_eq!(
        cmd(&[b"LRANGE", b"{mig}a", b"0", b"-1"]),
        b"*4\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n$1\r\n1\r\n"
    );
    assert_eq!(
        cmd(&[b"LRANGE", b"{mig}b", b"0", b"-1"]),
        b"*2\r\n$1\r\n2\r\n$1\r\n3\r\n"
    );
    assert_eq!(cmd(&[b"DEL", b"{mig}a", b"{mig}b", b"{mig}new"]), b":3\r\n");
    // The proxy's map has the slot on the new node (learnt on -MOVED, or on the
    // refresh a -TRYAGAIN asks for).
    let owner = up
        .topology()
        .and_then(|t| t.map.shard(slot).map(|s| s.primary.addr.clone()));
    assert_eq!(owner, Some(format!("127.0.0.1:{}", to.port)));
    assert_eq!(cmd(&[b"RPUSH", b"{mig}a", b"x"]), b":1\r\n");
    assert_eq!(cmd(&[b"DEL", b"{mig}a"]), b":1\r\n");
    eprintln!(
        "slot migration: split LMOVE held {waited:?}; proxy followed {} ASK, {} MOVED",
        up.asked.load(Ordering::Relaxed) - asked0,
        up.moved.load(Ordering::Relaxed) - moved0
    );
    wait_healthy(cluster, Duration::from_secs(10));
}

/// A slot moved without the proxy being told (its keys none, `CLUSTER SETSLOT …
/// NODE` on every primary), then a blocking command, a transaction and `WATCH`
/// for a key in it: a client of a standalone Redis must never see `-MOVED`.
/// The shared connections follow it; so do the exclusive ones (pinned to the node
/// the proxy's map names): the client sees what the slot's new node answers.
#[test]
fn exclusive_connections_follow_a_moved_slot() {
    let (_serial, cluster, env) = on_shared_cluster();
    move_slot_behind_the_proxys_back(cluster, &env, "tx", &[b"{tx}k", b"{tx}l"]);
    let addr = env.proxy.local_addr();
    let replies = env.rt.block_on(async {
        let mut c = AsyncRawClient::connect(addr).await;
        let mut v = Vec::new();
        for cmd in [
            &[&b"BLPOP"[..], b"{tx}l", b"1"][..],
            &[b"MULTI"],
            &[b"SET", b"{tx}k", b"1"],
            &[b"EXEC"],
            &[b"WATCH", b"{tx}k"],
            &[b"GET", b"{tx}k"],
            &[b"UNWATCH"],
            &[b"DEL", b"{tx}k"],
        ] {
            v.push(String::from_utf8_lossy(&c.cmd(cmd).await).into_owned());
        }
        v
    });
    wait_healthy(cluster, Duration::from_secs(10));
    assert_eq!(
        replies,
        [
            "*-1\r\n",
            "+OK\r\n",
            "+QUEUED\r\n",
            "*1\r\n+OK\r\n",
            "+OK\r\n",
            "$1\r\n1\r\n",
            "+OK\r\n",
            ":1\r\n"
        ]
    );
}

/// `CLIENT UNBLOCK <id>` (the id `CLIENT ID` gave the blocked client through the
/// proxy) unblocks it on the node its connection is on: one blocked on each
/// primary, and one whose `BLPOP` was sent again to the node a slot moved to
/// behind the proxy's back. (Ids are per node: sent to another node, the
/// translated id would name no connection, or another client's.)
#[test]
fn client_unblock_reaches_the_node_of_the_blocked_connection() {
    let (_serial, cluster, env) = on_shared_cluster();
    let addr = env.proxy.local_addr();
    // A tag on each primary, and one whose slot moves.
    let mut tags: Vec<(String, u16)> = Vec::new();
    for i in 0..200 {
        let tag = format!("ub{i}");
        let port = owner(cluster, &tag);
        if !tags.iter().any(|(_, p)| *p == port) {
            tags.push((tag, port));
        }
        if tags.len() == 3 {
            break;
        }
    }
    assert_eq!(tags.len(), 3, "{tags:?}");
    let moved = free_tag(cluster, "ubm");
    let list = format!("{{{moved}}}l");
    move_slot_behind_the_proxys_back(cluster, &env, &moved, &[list.as_bytes()]);
    tags.push((moved.clone(), owner(cluster, &moved)));
    for (tag, port) in &tags {
        let key = format!("{{{tag}}}l");
        let (got, unblocked) = env.rt.block_on(async {
            let mut blocked = AsyncRawClient::connect(addr).await;
            blocked.set_timeout(Duration::from_secs(20));
            let id = blocked.cmd(&[b"CLIENT", b"ID"]).await;
            let id = String::from_utf8_lossy(&id[1..id.len() - 2]).into_owned();
            blocked
                .send(&resp_cmd(&[b"BLPOP", key.as_bytes(), b"0"]))
                .await;
            // Blocked on the node (polled, bounded).
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (info, _) = redis_cli(*port, &["INFO", "clients"]);
                if info.lines().any(|l| {
                    l.starts_with("blocked_clients:") && l.trim_end() != "blocked_clients:0"
                }) {
                    break;
                }
                assert!(Instant::now() < deadline, "never blocked on {port}: {info}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut other = AsyncRawClient::connect(addr).await;
            let unblocked = other
                .cmd(&[b"CLIENT", b"UNBLOCK", id.as_bytes(), b"ERROR"])
                .await;
            (blocked.read_reply().await, unblocked)
        });
        assert_eq!(unblocked, b":1\r\n", "{tag} on {port}");
        assert_eq!(
            String::from_utf8_lossy(&got),
            "-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n",
            "{tag} on {port}"
        );
    }
    wait_healthy(cluster, Duration::from_secs(10));
}

/// An `auth_passthrough` login's own connections follow a slot moved behind the
/// proxy's back, as the proxy's do: the login's view shares the proxy's map and
/// its refreshes, and its connections to the new node are logged in as the user.
#[test]
fn a_logins_connections_follow_a_moved_slot() {
    let _serial = serial();
    let cluster = Cluster::shared();
    wait_healthy(cluster, Duration::from_secs(20));
    let live: Vec<u16> = nodes(cluster)
        .iter()
        .filter(|n| !n.failed)
        .map(|n| n.port)
        .collect();
    let acl = [
        "ACL",
        "SETUSER",
        "mover",
        "on",
        ">pw",
        "~{lg}*",
        "+@read",
        "+@write",
        "+@transaction",
        "+@blocking",
    ];
    for port in &live {
        cli_ok(*port, &acl);
    }
    let mut config = Cluster::shared().proxy_config();
    config.auth_passthrough = true;
    let (rt, proxy) = Cluster::start_proxy(config);
    let env = Env { rt, proxy };
    let addr = env.proxy.local_addr();
    let mut c = env.rt.block_on(async {
        let mut c = AsyncRawClient::connect(addr).await;
        assert_eq!(c.cmd(&[b"AUTH", b"mover", b"pw"]).await, b"+OK\r\n");
        // The view's map and connections exist before the move.
        assert_eq!(c.cmd(&[b"GET", b"{lg}k"]).await, b"$-1\r\n");
        c
    });
    move_slot_behind_the_proxys_back(cluster, &env, "lg", &[b"{lg}k", b"{lg}l"]);
    let replies = env.rt.block_on(async {
        let mut v = Vec::new();
        for cmd in [
            &[&b"SET"[..], b"{lg}k", b"1"][..],
            &[b"GET", b"{lg}k"],
            &[b"BLPOP", b"{lg}l", b"0.5"],
            &[b"MULTI"],
            &[b"INCR", b"{lg}k"],
            &[b"EXEC"],
            &[b"SET", b"other", b"1"],
            &[b"DEL", b"{lg}k"],
        ] {
            let r = c.cmd(cmd).await;
            v.push(String::from_utf8_lossy(&r).into_owned());
        }
        v
    });
    for port in &live {
        redis_cli(*port, &["ACL", "DELUSER", "mover"]);
    }
    wait_healthy(cluster, Duration::from_secs(10));
    assert_eq!(
        &replies[..6],
        [
            "+OK\r\n",
            "$1\r\n1\r\n",
            "*-1\r\n",
            "+OK\r\n",
            "+QUEUED\r\n",
            "*1\r\n:2\r\n"
        ]
    );
    assert!(replies[6].starts_with("-NOPERM"), "{replies:?}");
    assert_eq!(replies[7], ":1\r\n");
}

/// The proxy learns the map (a DEL of `keys`, which must not exist), then the
/// empty slot of hash tag `{tag}` is given to another primary without its knowing.
fn move_slot_behind_the_proxys_back(cluster: &Cluster, env: &Env, tag: &str, keys: &[&[u8]]) {
    let slot = key_slot(tag.as_bytes());
    let topo = nodes(cluster);
    let to = topo
        .iter()
        .find(|n| {
            n.primary && !n.failed && !n.slots.is_empty() && !n.serves(slot) && is_primary(n.port)
        })
        .expect("a primary not serving the slot")
        .clone();
    let mut del: Vec<&[u8]> = vec![b"DEL"];
    del.extend_from_slice(keys);
    assert_eq!(env.cmd(&del), b":0\r\n");
    give_slot(cluster, slot, &to);
}

/// A client's writes: `|` between writes, `;` between the commands pipelined in
/// one, spaces between arguments; `T` in `{T}` stands for the hash tag.
fn script(text: &str, tag: &str) -> Vec<Vec<Vec<Vec<u8>>>> {
    text.split('|')
        .map(|write| {
            write
                .split(';')
                .map(|cmd| {
                    cmd.split_whitespace()
                        .map(|a| a.replace("{T}", &format!("{{{tag}}}")).into_bytes())
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// Sends each write of `script` (its commands pipelined) and reads their
/// replies; a RESP3 client says `HELLO 3` first.
async fn run_script(
    addr: std::net::SocketAddr,
    resp3: bool,
    script: &[Vec<Vec<Vec<u8>>>],
) -> Vec<String> {
    let mut c = AsyncRawClient::connect(addr).await;
    c.set_timeout(Duration::from_secs(20));
    if resp3 {
        let hello = c.cmd(&[b"HELLO", b"3"]).await;
        assert!(
            hello.starts_with(b"%"),
            "{}",
            String::from_utf8_lossy(&hello)
        );
    }
    let mut out = Vec::new();
    for write in script {
        let mut bytes = Vec::new();
        for cmd in write {
            let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_slice()).collect();
            bytes.extend_from_slice(&resp_cmd(&args));
        }
        c.send(&bytes).await;
        for r in c.read_replies(write.len()).await {
            out.push(String::from_utf8_lossy(&r).into_owned());
        }
    }
    out
}

/// The port of the primary serving `tag`'s slot now, as the nodes themselves say
/// (one's view of the others may lag behind a `CLUSTER SETSLOT`).
fn owner(cluster: &Cluster, tag: &str) -> u16 {
    let key = format!("{{{tag}}}");
    for port in cluster.ports() {
        let (got, status) = redis_cli(port, &["GET", &key]);
        let (role, _) = redis_cli(port, &["ROLE"]);
        if status.success() && !got.contains("MOVED") && role.starts_with("master") {
            return port;
        }
    }
    panic!("no primary serves {key}");
}

/// A hash tag starting with `base` whose slot holds no key (earlier tests leave
/// keys behind; a slot with keys cannot be given away by `CLUSTER SETSLOT`).
fn free_tag(cluster: &Cluster, base: &str) -> String {
    for i in 0..100 {
        let tag = format!("{base}{i}");
        let slot = key_slot(tag.as_bytes()).to_string();
        let (n, _) = redis_cli(owner(cluster, &tag), &["CLUSTER", "COUNTKEYSINSLOT", &slot]);
        if n.trim() == "0" {
            return tag;
        }
    }
    panic!("no free slot for a tag {base}…");
}

/// Transactions and WATCH on a slot moved behind the proxy's back, in every shape
/// a client sends them (pipelined whole, MULTI typed alone so that it is sent
/// ahead of the first command, a transaction left open across writes, WATCH),
/// RESP2 and RESP3: the client reads exactly what the slot's new node answers to
/// the same bytes, never a `-MOVED` or `-EXECABORT`, and every command ran once.
#[test]
fn transactions_follow_a_moved_slot_as_a_node_answers() {
    let (_serial, cluster, env) = on_shared_cluster();
    let addr = env.proxy.local_addr();
    let up = env.upstream();
    let scripts = [
        "MULTI; SET {T}a 1; INCR {T}a; EXEC",
        "MULTI | SET {T}a 1 | INCR {T}a | EXEC | GET {T}a",
        "MULTI; RPUSH {T}l x | RPUSH {T}l y; EXEC | LRANGE {T}l 0 -1",
        "WATCH {T}a | GET {T}a | MULTI | INCR {T}a | EXEC | GET {T}a",
    ];
    let mut round = 0;
    for resp3 in [false, true] {
        for text in scripts {
            // A slot not moved before in this test: the proxy's map of it is right
            // until the move (a slot moved back and forth could be where a map not
            // yet refreshed after the last round says, and see no -MOVED).
            round += 1;
            let tag = free_tag(cluster, &format!("f{round}-"));
            let script = script(text, &tag);
            let names = [format!("{{{tag}}}a"), format!("{{{tag}}}l")];
            let keys: Vec<&[u8]> = names.iter().map(|k| k.as_bytes()).collect();
            let moved0 = up.moved.load(Ordering::Relaxed);
            move_slot_behind_the_proxys_back(cluster, &env, &tag, &keys);
            let proxied = env.rt.block_on(run_script(addr, resp3, &script));
            let moved = up.moved.load(Ordering::Relaxed) - moved0;
            // The same bytes straight to the node that serves the slot now.
            let mut del: Vec<&[u8]> = vec![b"DEL"];
            del.extend_from_slice(&keys);
            let deleted = env.cmd(&del);
            assert!(
                deleted.starts_with(b":"),
                "{text} resp3={resp3}: DEL answered {:?} (proxied: {proxied:?})",
                String::from_utf8_lossy(&deleted)
            );
            let node = std::net::SocketAddr::from(([127, 0, 0, 1], owner(cluster, &tag)));
            let direct = env.rt.block_on(run_script(node, resp3, &script));
            assert_eq!(proxied, direct, "{text} resp3={resp3}");
            assert!(
                proxied.iter().all(|r| !r.starts_with("-")),
                "{text}: {proxied:?}"
            );
            assert!(
                moved >= 1,
                "{text}: the exclusive connection followed -MOVED"
            );
            assert!(env.cmd(&del).starts_with(b":"));
        }
    }
    wait_healthy(cluster, Duration::from_secs(10));
}

/// A WATCH accepted by the node that served the slot then, and the slot moved
/// behind the proxy's back before EXEC: the watch cannot come along (the key
/// may have changed on the new node), so the transaction aborts exactly as
/// Redis aborts one whose watched key changed (the same bytes as a node sends
/// for a real conflict), whether the commands after WATCH are pipelined or
/// sent one by one; the commands before EXEC are answered by the new node,
/// nothing of the transaction ran, and the client's retry succeeds. The same
/// after requests Redis refuses and that leave the watch in force (`EXEC` and
/// `DISCARD` without `MULTI`, `UNWATCH` with an argument), sent on the old node
/// before the moved slot is seen (until session 42 they were taken for the
/// end of the watch, and the transaction ran unwatched on the new node).
#[test]
fn a_watch_left_behind_by_a_moved_slot_aborts_its_transaction() {
    let (_serial, cluster, env) = on_shared_cluster();
    let addr = env.proxy.local_addr();
    let up = env.upstream();
    let mut round = 0;
    for (resp3, pipelined, refused_first) in [false, true]
        .into_iter()
        .flat_map(|r| [true, false].map(|p| (r, p)))
        .flat_map(|(r, p)| [false, true].map(|f| (r, p, f)))
    {
        round += 1;
        let tag = free_tag(cluster, &format!("w{round}-"));
        let key = format!("{{{tag}}}a");
        let k = key.as_bytes();
        let moved0 = up.moved.load(Ordering::Relaxed);
        let (mut c, watched) = env.rt.block_on(async {
            let mut c = AsyncRawClient::connect(addr).await;
            c.set_timeout(Duration::from_secs(20));
            if resp3 {
                c.cmd(&[b"HELLO", b"3"]).await;
            }
            let w = c.cmd(&[b"WATCH", k]).await;
            (c, w)
        });
        assert_eq!(watched, b"+OK\r\n");
        move_slot_behind_the_proxys_back(cluster, &env, &tag, &[k]);
        let refused: [&[&[u8]]; 3] = [&[b"EXEC"], &[b"UNWATCH", b"x"], &[b"DISCARD"]];
        let tx: [&[&[u8]]; 4] = [&[b"GET", k], &[b"MULTI"], &[b"INCR", k], &[b"EXEC"]];
        let cmds: Vec<&[&[u8]]> = match refused_first {
            true => refused.iter().chain(&tx).copied().collect(),
            false => tx.to_vec(),
        };
        let got: Vec<String> = env.rt.block_on(async {
            let mut out = Vec::new();
            if pipelined {
                c.send(
                    &cmds
                        .iter()
                        .map(|a| resp_cmd(a))
                        .collect::<Vec<_>>()
                        .concat(),
                )
                .await;
                out = c.read_replies(cmds.len()).await;
            } else {
                for a in cmds {
                    out.push(c.cmd(a).await);
                }
            }
            out.into_iter()
                .map(|r| String::from_utf8_lossy(&r).into_owned())
                .collect()
        });
        // What the slot's node answers to EXEC after a watched key changed.
        let node = std::net::SocketAddr::from(([127, 0, 0, 1], owner(cluster, &tag)));
        let conflict = env.rt.block_on(async {
            let mut d = AsyncRawClient::connect(node).await;
            let mut other = AsyncRawClient::connect(node).await;
            if resp3 {
                d.cmd(&[b"HELLO", b"3"]).await;
            }
            // (A key of the same slot, served there.)
            let x = format!("{{{tag}}}x");
            let x = x.as_bytes();
            d.cmd(&[b"WATCH", x]).await;
            other.cmd(&[b"SET", x, b"1"]).await;
            other.cmd(&[b"DEL", x]).await;
            d.cmd(&[b"MULTI"]).await;
            d.cmd(&[b"SET", x, b"2"]).await;
            String::from_utf8_lossy(&d.cmd(&[b"EXEC"]).await).into_owned()
        });
        let nil = if resp3 { "_\r\n" } else { "$-1\r\n" };
        let mut want = vec![];
        if refused_first {
            want.extend([
                "-ERR EXEC without MULTI\r\n",
                "-ERR wrong number of arguments for 'unwatch' command\r\n",
                "-ERR DISCARD without MULTI\r\n",
            ]);
        }
        want.extend([nil, "+OK\r\n", "+QUEUED\r\n", conflict.as_str()]);
        assert_eq!(
            got, want,
            "resp3={resp3} pipelined={pipelined} refused_first={refused_first}"
        );
        assert!(conflict == "*-1\r\n" || conflict == "_\r\n", "{conflict}");
        assert!(
            up.moved.load(Ordering::Relaxed) > moved0,
            "the connection moved"
        );
        // Nothing ran; the retry does.
        assert_eq!(env.cmd(&[b"EXISTS", k]), b":0\r\n");
        let retry: Vec<Vec<u8>> = env.rt.block_on(async {
            let script: [&[&[u8]]; 4] = [&[b"WATCH", k], &[b"MULTI"], &[b"INCR", k], &[b"EXEC"]];
            let mut out = Vec::new();
            for a in script {
                out.push(c.cmd(a).await);
            }
            out
        });
        assert_eq!(retry[3], b"*1\r\n:1\r\n", "{retry:?}");
        assert_eq!(env.cmd(&[b"DEL", k]), b":1\r\n");
    }
    wait_healthy(cluster, Duration::from_secs(10));
}

/// A slot in migration (its keys not on the old node yet): the old node answers
/// `-ASK`, and an exclusive connection goes to the new node with `ASKING` in front,
/// for a blocking command and for a whole pipelined transaction; the client sees
/// what a cluster-aware client gets there.
#[test]
fn exclusive_connections_follow_ask_during_a_migration() {
    let (_serial, cluster, env) = on_shared_cluster();
    let tag = free_tag(cluster, "a");
    let slot = key_slot(tag.as_bytes());
    let (ka, kl) = (format!("{{{tag}}}a"), format!("{{{tag}}}l"));
    let (from, to) = migration_ends(cluster, slot);
    let up = env.upstream();
    let addr = env.proxy.local_addr();
    assert_eq!(env.cmd(&[b"DEL", ka.as_bytes(), kl.as_bytes()]), b":0\r\n");
    let s = slot.to_string();
    cli_ok(to.port, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from.id]);
    cli_ok(from.port, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to.id]);
    let asked0 = up.asked.load(Ordering::Relaxed);
    let script = script("BLPOP {T}l 1 | MULTI; SET {T}a 1; INCR {T}a; EXEC", &tag);
    let replies = env.rt.block_on(run_script(addr, false, &script));
    let asked = up.asked.load(Ordering::Relaxed) - asked0;
    // Where the value is: on the new node, reached with ASKING.
    let mut c = env
        .rt
        .block_on(AsyncRawClient::connect(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            to.port,
        ))));
    let there = env.rt.block_on(async {
        c.send(&[resp_cmd(&[b"ASKING"]), resp_cmd(&[b"GET", ka.as_bytes()])].concat())
            .await;
        c.read_replies(2).await
    });
    give_slot(cluster, slot, &to);
    assert_eq!(env.cmd(&[b"DEL", ka.as_bytes()]), b":1\r\n");
    wait_healthy(cluster, Duration::from_secs(10));
    assert_eq!(
        replies,
        [
            "*-1\r\n",
            "+OK\r\n",
            "+QUEUED\r\n",
            "+QUEUED\r\n",
            "*2\r\n+OK\r\n:2\r\n"
        ]
    );
    assert!(asked >= 2, "ASK followed: {asked}");
    assert_eq!(there[1], b"$1\r\n2\r\n");
}

/// A sharded subscriber (RESP2 and RESP3) whose channel's slot moves to another
/// node: Redis tells it `sunsubscribe` (seen by a subscriber connected to the node
/// directly), the proxy subscribes it again on the new node instead, and the
/// client keeps getting what is published (through the proxy, and on the new
/// node directly) without seeing the sunsubscribe.
#[test]
fn a_sharded_subscription_follows_its_slot() {
    let (_serial, cluster, env) = on_shared_cluster();
    let addr = env.proxy.local_addr();
    for resp3 in [false, true] {
        let tag = free_tag(cluster, "s");
        let channel = format!("{{{tag}}}x");
        let ch = channel.as_bytes();
        let (push, n) = (if resp3 { ">3" } else { "*3" }, ch.len());
        let node = std::net::SocketAddr::from(([127, 0, 0, 1], owner(cluster, &tag)));
        // One subscriber through the proxy, one on the slot's node directly.
        let (mut sub, mut watcher) = env.rt.block_on(async {
            (
                ssubscribe(addr, resp3, ch).await,
                ssubscribe(node, resp3, ch).await,
            )
        });
        move_slot_behind_the_proxys_back(cluster, &env, &tag, &[ch]);
        let moved_at = Instant::now();
        let new_owner = owner(cluster, &tag);
        let (dropped, got, direct_count) = env.rt.block_on(async {
            // What Redis tells a subscriber of the old node.
            let dropped = watcher.read_reply().await;
            // Published through the proxy until the subscriber is there again.
            publish_until_heard(addr, ch).await;
            eprintln!(
                "sharded subscription (resp3={resp3}) subscribed again within {:?} of the move",
                moved_at.elapsed()
            );
            let mut d =
                AsyncRawClient::connect(std::net::SocketAddr::from(([127, 0, 0, 1], new_owner)))
                    .await;
            let direct_count = d.cmd(&[b"SPUBLISH", ch, b"there"]).await;
            let got = sub.read_replies(2).await;
            // Still subscribed: SUNSUBSCRIBE is confirmed as Redis does.
            let off = sub.cmd(&[b"SUNSUBSCRIBE", ch]).await;
            (dropped, (got, off), direct_count)
        });
        let sunsubscribe = format!("{push}\r\n$12\r\nsunsubscribe\r\n${n}\r\n{channel}\r\n:0\r\n");
        assert_eq!(String::from_utf8_lossy(&dropped), sunsubscribe);
        assert_eq!(direct_count, b":1\r\n");
        let message = |m: &str| {
            format!(
                "{push}\r\n$8\r\nsmessage\r\n${n}\r\n{channel}\r\n${}\r\n{m}\r\n",
                m.len()
            )
        };
        let (got, off) = got;
        let got: Vec<String> = got
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect();
        assert_eq!(got, [message("hello"), message("there")], "resp3={resp3}");
        assert_eq!(String::from_utf8_lossy(&off), sunsubscribe);
    }
    wait_healthy(cluster, Duration::from_secs(10));
}

/// A shard subscriber's connection that Redis closes while a reply is due on it:
/// here a `PING` sent after a script keeps the node busy and a `CLIENT KILL` is
/// queued before it, so Redis closes the connection without answering. The proxy
/// used to subscribe the channel again on a new connection, where that reply
/// never comes: the client waited forever. Now it is disconnected, as by Redis
/// (an idle subscriber is still followed: `a_sharded_subscription_follows_its_slot`).
#[test]
fn a_shard_subscriber_closed_with_a_reply_due_is_disconnected_not_left_waiting() {
    let (_serial, cluster, env) = on_shared_cluster();
    let addr = env.proxy.local_addr();
    let tag = free_tag(cluster, "due");
    let channel = format!("{{{tag}}}x");
    let node = std::net::SocketAddr::from(([127, 0, 0, 1], owner(cluster, &tag)));
    // Busy for half a second (Redis reads nothing else meanwhile).
    const BUSY: &[u8] = b"local s = redis.call('TIME') local t0 = s[1] * 1000000 + s[2] \
        while true do local n = redis.call('TIME') \
        if n[1] * 1000000 + n[2] - t0 > 500000 then break end end return 1";
    let (rest, waited) = env.rt.block_on(async {
        let mut sub = ssubscribe(addr, false, channel.as_bytes()).await;
        let mut busy = AsyncRawClient::connect(node).await;
        let mut killer = AsyncRawClient::connect(node).await;
        busy.send(&resp_cmd(&[b"EVAL", BUSY, b"0"])).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        killer
            .send(&resp_cmd(&[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        sub.send(&resp_cmd(&[b"PING"])).await;
        let started = Instant::now();
        sub.set_timeout(Duration::from_secs(10));
        let rest = sub.read_until_closed().await;
        assert_eq!(busy.read_reply().await, b":1\r\n");
        (rest, started.elapsed())
    });
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    wait_healthy(cluster, Duration::from_secs(10));
}

/// A client of `addr` (RESP3 after `HELLO 3`) subscribed to the shard channel
/// `ch`, with the confirmation Redis gives.
async fn ssubscribe(addr: std::net::SocketAddr, resp3: bool, ch: &[u8]) -> AsyncRawClient {
    let mut c = AsyncRawClient::connect(addr).await;
    c.set_timeout(Duration::from_secs(20));
    if resp3 {
        c.cmd(&[b"HELLO", b"3"]).await;
    }
    let ok = c.cmd(&[b"SSUBSCRIBE", ch]).await;
    let push = if resp3 { ">3" } else { "*3" };
    let channel = String::from_utf8_lossy(ch);
    assert_eq!(
        String::from_utf8_lossy(&ok),
        format!(
            "{push}\r\n$10\r\nssubscribe\r\n${}\r\n{channel}\r\n:1\r\n",
            ch.len()
        )
    );
    c
}

/// Publishes `hello` on `ch` through the proxy until one subscriber gets it
/// (bounded).
async fn publish_until_heard(proxy: std::net::SocketAddr, ch: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut c = AsyncRawClient::connect(proxy).await;
    loop {
        let r = c.cmd(&[b"SPUBLISH", ch, b"hello"]).await;
        if r == b":1\r\n" {
            return;
        }
        assert!(Instant::now() < deadline, "never subscribed again: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sharded subscriber whose upstream connection is lost (killed on the node,
/// as a failover would lose it): the proxy subscribes it again on the slot's
/// primary, and the client, still connected, gets the next message.
#[test]
fn a_sharded_subscription_survives_the_loss_of_its_connection() {
    let (_serial, cluster, env) = on_shared_cluster();
    let addr = env.proxy.local_addr();
    for resp3 in [false, true] {
        let tag = free_tag(cluster, "k");
        let channel = format!("{{{tag}}}x");
        let ch = channel.as_bytes();
        let push = if resp3 { ">3" } else { "*3" };
        let mut sub = env.rt.block_on(ssubscribe(addr, resp3, ch));
        let (killed, _) = redis_cli(owner(cluster, &tag), &["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert_ne!(killed.trim(), "0", "the subscriber's connection was killed");
        let killed_at = Instant::now();
        let got = env.rt.block_on(async {
            publish_until_heard(addr, ch).await;
            eprintln!(
                "sharded subscription (resp3={resp3}) subscribed again within {:?} of the kill",
                killed_at.elapsed()
            );
            sub.read_reply().await
        });
        assert_eq!(
            String::from_utf8_lossy(&got),
            format!(
                "{push}\r\n$8\r\nsmessage\r\n${}\r\n{channel}\r\n$5\r\nhello\r\n",
                ch.len()
            ),
            "resp3={resp3}"
        );
    }
}

/// The port of the subscribers' home node.
fn home_port(env: &Env) -> u16 {
    env.pubsub_node()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

/// A [`free_tag`] whose slot the node on `port` serves.
fn free_tag_on(cluster: &Cluster, port: u16, base: &str) -> String {
    (0..100)
        .map(|i| free_tag(cluster, &format!("{base}{i}x")))
        .find(|t| owner(cluster, t) == port)
        .expect("a tag on that node")
}

/// A RESP3 subscriber's `MULTI` goes to its subscriber connection, and so must
/// the commands after it until `EXEC`: Redis queues them there. Before, on a
/// cluster, commands with keys went by slot as outside a transaction, so each
/// ran at once (`GET` answered `_` where Redis answers `+QUEUED`), and `EXEC`
/// ran an empty transaction. (Found by the multi-session tool on a cluster.)
#[test]
fn a_resp3_subscribers_transaction_queues_its_commands() {
    let (_serial, cluster, env) = on_shared_cluster();
    let addr = env.proxy.local_addr();
    let home = home_port(&env);
    let tag = free_tag_on(cluster, home, "subtx");
    let key = format!("{{{tag}}}k");
    let key = key.as_bytes();
    let got = env.rt.block_on(async {
        let mut c = AsyncRawClient::connect(addr).await;
        c.cmd(&[b"HELLO", b"3"]).await;
        let ok = c.cmd(&[b"SUBSCRIBE", b"subtx"]).await;
        assert!(ok.starts_with(b">3\r\n$9\r\nsubscribe"), "{ok:?}");
        let mut out = Vec::new();
        for args in [
            &[&b"MULTI"[..]][..],
            &[b"SET", key, b"1"],
            &[b"INCR", key],
            &[b"GET", key],
            &[b"EXEC"],
            &[b"DEL", key],
        ] {
            out.push(String::from_utf8_lossy(&c.cmd(args).await).into_owned());
        }
        out
    });
    assert_eq!(
        got,
        [
            "+OK\r\n",
            "+QUEUED\r\n",
            "+QUEUED\r\n",
            "+QUEUED\r\n",
            "*3\r\n+OK\r\n:2\r\n$1\r\n2\r\n",
            ":1\r\n"
        ]
    );
}

/// A RESP3 shard subscriber that sent `MULTI` (or `WATCH`) on its subscriber
/// connection, which is then lost: the proxy must not replace that connection
/// as it does for a plain subscriber (the queued commands would then run on
/// their own, or the transaction without its watch); the client is
/// disconnected, as Redis's own client would be, and nothing it sent after the
/// loss runs. (Found by the multi-session tool with `KILL` on a cluster: the
/// `SET`s of a transaction got `+OK` each and `EXEC` `-ERR EXEC without MULTI`.)
#[test]
fn a_lost_subscriber_connection_with_a_transaction_is_not_replaced() {
    let (_serial, cluster, env) = on_shared_cluster();
    let addr = env.proxy.local_addr();
    let home = home_port(&env);
    for (shard, watch) in [(true, false), (true, true), (false, false), (false, true)] {
        // (A home subscriber's WATCH and MULTI go to its connection: its keys
        // are on the home node.)
        let tag = match shard {
            true => free_tag(cluster, "txsub"),
            false => free_tag_on(cluster, home, "txsub"),
        };
        let channel = format!("{{{tag}}}ch");
        let key = format!("{{{tag}}}key");
        let key = key.as_bytes();
        let mut sub = if shard {
            env.rt.block_on(ssubscribe(addr, true, channel.as_bytes()))
        } else {
            // A channel on the home node (whose connection is replaced too).
            env.rt.block_on(async {
                let mut c = AsyncRawClient::connect(addr).await;
                c.set_timeout(Duration::from_secs(20));
                c.cmd(&[b"HELLO", b"3"]).await;
                let ok = c.cmd(&[b"SUBSCRIBE", channel.as_bytes()]).await;
                assert!(ok.starts_with(b">3\r\n$9\r\nsubscribe"), "{ok:?}");
                c
            })
        };
        let first: &[u8] = if watch { b"WATCH" } else { b"MULTI" };
        let args: Vec<&[u8]> = if watch { vec![first, key] } else { vec![first] };
        assert_eq!(env.rt.block_on(sub.cmd(&args)), b"+OK\r\n");
        let node = if shard { owner(cluster, &tag) } else { home };
        let (killed, _) = redis_cli(node, &["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert_ne!(killed.trim(), "0", "the subscriber's connection was killed");
        let rest = env.rt.block_on(async {
            // Another client changes the watched key: a transaction still
            // under its watch would be aborted.
            let mut other = AsyncRawClient::connect(addr).await;
            assert_eq!(other.cmd(&[b"SET", key, b"other"]).await, b"+OK\r\n");
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut bytes = Vec::new();
            if watch {
                bytes.extend(resp_cmd(&[b"MULTI"]));
            }
            bytes.extend(resp_cmd(&[b"SET", key, b"tx"]));
            bytes.extend(resp_cmd(&[b"EXEC"]));
            sub.send(&bytes).await;
            let rest = sub.read_until_closed().await;
            (rest, other.cmd(&[b"GET", key]).await)
        });
        let (rest, value) = (String::from_utf8_lossy(&rest.0).into_owned(), rest.1);
        assert_eq!(
            String::from_utf8_lossy(&value),
            "$5\r\nother\r\n",
            "watch={watch}: the transaction's SET ran; the client got {rest:?}"
        );
        assert!(
            !rest.contains("EXEC without MULTI"),
            "watch={watch}: {rest:?}"
        );
    }
}

/// A subscriber (a channel and a pattern) whose connection to the home node is
/// lost (killed on the node, as the node's failure would lose it): the proxy
/// subscribes it again on the home node, and the client, still connected, gets
/// what is published next on both, without any confirmation it did not ask
/// for; it is still subscribed to both (its UNSUBSCRIBE is confirmed as by Redis).
#[test]
fn a_subscription_survives_the_loss_of_its_home_connection() {
    let (_serial, _cluster, env) = on_shared_cluster();
    let addr = env.proxy.local_addr();
    let home = env.pubsub_node();
    let home: u16 = home
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port");
    for resp3 in [false, true] {
        let channel = format!("home-news-{resp3}");
        let ch = channel.as_bytes();
        let push = if resp3 { ">" } else { "*" };
        let mut sub = env.rt.block_on(async {
            let mut c = AsyncRawClient::connect(addr).await;
            c.set_timeout(Duration::from_secs(20));
            if resp3 {
                c.cmd(&[b"HELLO", b"3"]).await;
            }
            c.send(&resp_cmd(&[b"SUBSCRIBE", ch])).await;
            c.send(&resp_cmd(&[b"PSUBSCRIBE", b"home-news-*"])).await;
            let got = c.read_replies(2).await;
            assert!(
                got[1].ends_with(b":2\r\n"),
                "{:?}",
                String::from_utf8_lossy(&got[1])
            );
            c
        });
        let (killed, _) = redis_cli(home, &["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert_ne!(killed.trim(), "0", "the subscriber's connection was killed");
        let killed_at = Instant::now();
        let (got, off) = env.rt.block_on(async {
            // Published through the proxy until both subscriptions hear it.
            let mut p = AsyncRawClient::connect(addr).await;
            let mut n = 0;
            loop {
                n += 1;
                let r = p.cmd(&[b"PUBLISH", ch, format!("m{n}").as_bytes()]).await;
                if r == b":2\r\n" {
                    break;
                }
                assert!(
                    killed_at.elapsed() < Duration::from_secs(10),
                    "never subscribed again: {r:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            eprintln!(
                "subscriber (resp3={resp3}) subscribed again within {:?} of the kill",
                killed_at.elapsed()
            );
            let last = format!("m{n}");
            let mut got = Vec::new();
            while !got.last().is_some_and(|f: &String| {
                f.ends_with(&format!("{last}\r\n")) && f.contains("pmessage")
            }) {
                assert!(got.len() < 100, "{got:?}");
                got.push(String::from_utf8_lossy(&sub.read_reply().await).into_owned());
            }
            (got, sub.cmd(&[b"UNSUBSCRIBE", ch]).await)
        });
        // Only messages (a message published between the two subscriptions
        // may come on the channel alone); the last on both.
        for f in &got {
            assert!(
                f.starts_with(&format!("{push}3\r\n$7\r\nmessage\r\n"))
                    || f.starts_with(&format!("{push}4\r\n$8\r\npmessage\r\n")),
                "resp3={resp3}: {got:?}"
            );
        }
        let n = got.len();
        assert!(
            n >= 2 && got[n - 2].contains("$7\r\nmessage"),
            "resp3={resp3}: {got:?}"
        );
        assert_eq!(
            String::from_utf8_lossy(&off),
            format!(
                "{push}3\r\n$11\r\nunsubscribe\r\n${}\r\n{channel}\r\n:1\r\n",
                ch.len()
            )
        );
    }
}

/// A RESP3 client subscribed to a shard channel sends ordinary commands on the
/// same connection: those with keys go by slot (here to another node than the
/// subscriber's, which would answer `-MOVED`), in order with the pushes; an
/// `SPUBLISH` of its own channel goes on the subscriber connection.
#[test]
fn resp3_commands_while_subscribed_go_by_slot() {
    let (_serial, cluster, env) = on_shared_cluster();
    let addr = env.proxy.local_addr();
    let sub_tag = free_tag(cluster, "r");
    let home = owner(cluster, &sub_tag);
    let key_tag = (0..100)
        .map(|i| format!("q{i}"))
        .find(|t| owner(cluster, t) != home)
        .expect("a tag on another node");
    let channel = format!("{{{sub_tag}}}x");
    let key = format!("{{{key_tag}}}k");
    let replies = env.rt.block_on(async {
        let mut c = ssubscribe(addr, true, channel.as_bytes()).await;
        let mut bytes = resp_cmd(&[b"SET", key.as_bytes(), b"v"]);
        bytes.extend_from_slice(&resp_cmd(&[b"GET", key.as_bytes()]));
        bytes.extend_from_slice(&resp_cmd(&[b"PING"]));
        bytes.extend_from_slice(&resp_cmd(&[b"SPUBLISH", channel.as_bytes(), b"hi"]));
        bytes.extend_from_slice(&resp_cmd(&[b"DEL", key.as_bytes()]));
        c.send(&bytes).await;
        c.read_replies(6).await
    });
    let replies: Vec<String> = replies
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    let n = channel.len();
    // The push comes before SPUBLISH's reply, as from one node: the SPUBLISH of
    // the subscriber's own shard channel goes on the subscriber connection
    // (until session 40 by slot on another, and the push came after the reply).
    let push = format!(">3\r\n$8\r\nsmessage\r\n${n}\r\n{channel}\r\n$2\r\nhi\r\n");
    let at = replies.iter().position(|r| *r == push);
    assert_eq!(at, Some(3), "{replies:?}");
    let others: Vec<&String> = replies.iter().filter(|r| **r != push).collect();
    assert_eq!(
        others,
        ["+OK\r\n", "$1\r\nv\r\n", "+PONG\r\n", ":1\r\n", ":1\r\n"]
    );
}

/// Moves `slot` from `from` to `to` as `redis-cli --cluster reshard` does: importing
/// and migrating states, its keys `MIGRATE`d, then the new owner told to every
/// primary (the new owner first).
fn migrate_slot(cluster: &Cluster, slot: u16, from: &NodeLine, to: &NodeLine) {
    let s = slot.to_string();
    cli_ok(to.port, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from.id]);
    cli_ok(from.port, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to.id]);
    let to_port = to.port.to_string();
    for _ in 0..100 {
        let (keys, _) = redis_cli(from.port, &["CLUSTER", "GETKEYSINSLOT", &s, "100"]);
        let keys: Vec<&str> = keys.split_whitespace().collect();
        if keys.is_empty() {
            break;
        }
        let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
        args.extend(keys);
        cli_ok(from.port, &args);
    }
    give_slot(cluster, slot, to);
}

/// One client pipelines `RPUSH` to one list, in batches of 1 to 13 commands,
/// while the list's slot is migrated to another primary and back several times:
/// its batches meet `-ASK` (the list already moved), `-MOVED` (the slot moved) and
/// the proxy's map changing between them. Every reply must be the list's length
/// after that push (`:1`, `:2`, … in order: each ran once, in the order sent, and
/// none failed), and the list must hold 0..N in order. Every other batch also
/// reads absent keys of other slots after each push (each `$-1` in its place), so
/// batches sent to one node as they came and batches spread over the primaries
/// both meet the redirects. (The reorder windows this
/// guards are narrow: it passed on the build before `cluster::order` too; that
/// module's unit tests prove its rules.)
#[test]
fn one_clients_pipelined_writes_stay_in_order_while_their_slot_moves() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const N: usize = 20_000;
    let (_serial, cluster, env) = on_shared_cluster();
    let slot = key_slot(b"{ord}");
    env.cmd(&[b"DEL", b"{ord}l"]);
    // Every other batch also reads keys of other slots (absent: `$-1`), so it is
    // spread over the primaries instead of going to one node as it came.
    let others: Vec<String> = (0..6).map(|i| format!("ord:other:{i}")).collect();
    for k in &others {
        env.cmd(&[b"DEL", k.as_bytes()]);
    }
    let mut batches: Vec<Vec<u8>> = Vec::new();
    let mut expected: Vec<String> = Vec::new();
    let mut i = 0;
    while i < N {
        let k = (1 + batches.len() * 7 % 13).min(N - i);
        let spread = batches.len() % 2 == 1;
        let mut out = Vec::new();
        for n in i..i + k {
            out.extend(resp_cmd(&[b"RPUSH", b"{ord}l", n.to_string().as_bytes()]));
            expected.push(format!(":{}", n + 1));
            if spread {
                out.extend(resp_cmd(&[b"GET", others[n % others.len()].as_bytes()]));
                expected.push("$-1".into());
            }
        }
        batches.push(out);
        i += k;
    }
    let total = expected.len();
    let addr = env.proxy.local_addr();
    let done = Arc::new(AtomicBool::new(false));
    let finished = done.clone();
    let client = env.rt.spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            for (b, out) in batches.iter().enumerate() {
                wr.write_all(out).await.expect("write");
                // Spread the writes over the moves (a few seconds).
                if b % 4 == 3 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            wr
        });
        let mut replies = Vec::with_capacity(total);
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while replies.len() < total {
            let n = tokio::time::timeout_at(deadline, rd.read(&mut chunk))
                .await
                .expect("every reply within 120 s")
                .expect("read");
            assert!(n > 0, "the proxy closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            // Integer, nil or error replies: one line each.
            while let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                replies.push(String::from_utf8_lossy(&buf[..end]).into_owned());
                buf.drain(..end + 2);
            }
        }
        finished.store(true, Ordering::SeqCst);
        let _wr = writer.await;
        replies
    });
    let mut moves = 0;
    let started = Instant::now();
    while (moves < 2 || !done.load(Ordering::SeqCst)) && started.elapsed() < Duration::from_secs(90)
    {
        let (from, to) = migration_ends(cluster, slot);
        migrate_slot(cluster, slot, &from, &to);
        moves += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let replies = env.rt.block_on(client).expect("the client task");
    let wrong: Vec<(usize, &String)> = replies
        .iter()
        .enumerate()
        .filter(|(i, r)| **r != expected[*i])
        .collect();
    let list = env.cmd(&[b"LRANGE", b"{ord}l", b"0", b"-1"]);
    let list = int_list(&list).expect("LRANGE's array");
    let up = env.upstream();
    eprintln!(
        "order under moves: {N} pushes, {moves} moves, {} MOVED, {} ASK followed",
        up.moved.load(Ordering::Relaxed),
        up.asked.load(Ordering::Relaxed)
    );
    env.cmd(&[b"DEL", b"{ord}l"]);
    wait_healthy(cluster, Duration::from_secs(10));
    assert!(moves >= 2, "the slot moved while the client wrote");
    assert!(
        wrong.is_empty(),
        "{} replies out of place, first: {:?}",
        wrong.len(),
        first(&wrong)
    );
    assert_eq!(
        list,
        (0..N as u64).collect::<Vec<_>>(),
        "the list in the order sent"
    );
}

/// A proxy on the shared cluster with keyspace notifications on (`E$`, every
/// node), and a client subscribed to `__keyevent@0__:set` through it.
struct Notified {
    env: Env,
    sub: support::RawClient,
}

impl Notified {
    fn start(cluster: &Cluster) -> Notified {
        wait_healthy(cluster, Duration::from_secs(20));
        let (rt, proxy) = Cluster::start_proxy(cluster.proxy_config());
        let env = Env { rt, proxy };
        let on = env.cmd(&[b"CONFIG", b"SET", b"notify-keyspace-events", b"E$"]);
        assert_eq!(on, b"+OK\r\n");
        let mut sub = support::RawClient::connect(env.proxy.local_addr());
        sub.send(&resp_cmd(&[b"SUBSCRIBE", b"__keyevent@0__:set"]));
        assert!(sub.read_reply().starts_with(b"*3\r\n$9\r\nsubscribe\r\n"));
        Notified { env, sub }
    }

    /// Sets `key` through the proxy until its notification arrives (`true`),
    /// or `within` passed (`false`).
    fn set_until_notified(&mut self, key: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        self.sub.set_timeout(Duration::from_millis(300));
        let notified = loop {
            // (A write to a failed-over node also makes the proxy learn its
            // replacement, from -MOVED.)
            let _ = self.env.cmd(&[b"SET", key.as_bytes(), b"1"]);
            let got = self.sub.try_read_reply();
            if got.is_ok_and(|f| f.windows(key.len()).any(|w| w == key.as_bytes())) {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
        };
        // Later ones (of earlier attempts) are not waited for.
        while self.sub.try_read_reply().is_ok() {}
        self.sub.set_timeout(Duration::from_secs(5));
        notified
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        let _ = self
            .env
            .cmd(&[b"CONFIG", b"SET", b"notify-keyspace-events", b""]);
    }
}

/// A key of the slots `node` serves.
fn key_of(node: &NodeLine, test: &str) -> String {
    (0..10_000)
        .map(|i| format!("{test}:{i}"))
        .find(|k| node.serves(key_slot(k.as_bytes())))
        .unwrap()
}

/// A subscriber's keyspace notifications of a shard go on across a failover
/// (`CLUSTER FAILOVER` on its replica), without the client doing anything.
#[test]
fn keyspace_notifications_follow_a_failover() {
    let _serial = serial();
    let cluster = Cluster::shared();
    let mut n = Notified::start(cluster);
    let (primary, replica) = primary_with_replica(cluster);
    let key = key_of(&primary, "ksfail");
    assert!(
        n.set_until_notified(&key, Duration::from_secs(10)),
        "before"
    );
    let (out, status) = redis_cli(replica.port, &["CLUSTER", "FAILOVER"]);
    assert!(
        status.success() && out.contains("OK"),
        "CLUSTER FAILOVER: {out}"
    );
    wait_promoted(cluster, &replica, Duration::from_secs(15));
    let promoted = Instant::now();
    assert!(
        n.set_until_notified(&key, Duration::from_secs(15)),
        "no notification from the new primary {} within 15 s",
        replica.port
    );
    eprintln!(
        "keyspace notifications {:?} after the promotion of {} (home node {})",
        promoted.elapsed(),
        replica.port,
        n.env.pubsub_node()
    );
    drop(n);
    wait_healthy(cluster, Duration::from_secs(10));
}

/// A satellite connection (where a subscriber's keyspace subscriptions are
/// repeated on another primary) that breaks is opened again, with the
/// subscriptions: `CLIENT KILL TYPE pubsub` on that primary (not the subscriber's
/// home node), and its notifications come back within a few seconds.
#[test]
fn a_lost_satellite_connection_is_opened_again() {
    let _serial = serial();
    let cluster = Cluster::shared();
    let mut n = Notified::start(cluster);
    let home = n.env.pubsub_node();
    let other = nodes(cluster)
        .into_iter()
        .find(|p| {
            p.primary
                && !p.failed
                && !p.slots.is_empty()
                && !home.ends_with(&format!(":{}", p.port))
        })
        .expect("a primary that is not the home node");
    let key = key_of(&other, "ksgone");
    assert!(
        n.set_until_notified(&key, Duration::from_secs(10)),
        "before"
    );
    let (out, _) = redis_cli(other.port, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(out.trim().parse::<u32>().unwrap_or(0) >= 1, "killed: {out}");
    let killed = Instant::now();
    assert!(
        n.set_until_notified(&key, Duration::from_secs(10)),
        "no notification from {} within 10 s of its satellite's loss",
        other.port
    );
    eprintln!(
        "notifications back {:?} after the satellite's loss",
        killed.elapsed()
    );
}

/// The harness's own repair (`repair`, run when a test starts on a cluster an
/// earlier failure left broken): a slot no node serves any more is served again.
#[test]
fn the_harness_puts_a_lost_slot_right() {
    let (_serial, cluster, _env) = on_shared_cluster();
    let tag = free_tag(cluster, "lost");
    let slot = key_slot(tag.as_bytes()).to_string();
    for port in cluster.ports() {
        let _ = redis_cli(port, &["CLUSTER", "DELSLOTS", &slot]);
    }
    assert!(healthy_within(cluster, Duration::from_secs(2)).is_err());
    repair(cluster);
    wait_healthy(cluster, Duration::from_secs(20));
    assert_ne!(owner(cluster, &tag), 0);
}

/// Right after every connection of the proxy's to the cluster was killed (each
/// node's last word a failure), a command that goes to every node (`CLIENT
/// UNPAUSE`) is tried on them all, not refused with a `-CLUSTERDOWN` the cluster
/// never said.
#[test]
fn a_command_for_every_node_right_after_a_kill_is_tried_not_refused() {
    let (_serial, cluster, env) = on_shared_cluster();
    // Connections to every node.
    assert_eq!(env.cmd(&[b"CLIENT", b"UNPAUSE"]), b"+OK\r\n");
    for node in cluster.nodes() {
        let r = node.client().cmd(&[b"CLIENT", b"KILL", b"TYPE", b"normal"]);
        assert!(r.starts_with(b":"), "{}", support::printable(&r));
    }
    std::thread::sleep(Duration::from_millis(100));
    let r = env.cmd(&[b"CLIENT", b"UNPAUSE"]);
    assert_eq!(r, b"+OK\r\n", "{}", support::printable(&r));
}

/// A MULTI held back on a cluster (no key yet) is opened on a node by the first
/// request after it; when that is one the proxy queues itself (`ASKING`,
/// `READONLY`: a standalone server's refusal in EXEC's reply), EXEC is the first
/// request sent on the connection after MULTI. If the connection was lost
/// meanwhile, EXEC tells the client so; until session 40 it answered "EXEC
/// without MULTI" (the proxy took the batch for one sent outside MULTI), so the
/// client took its transaction for never begun.
#[test]
fn exec_after_only_local_requests_on_a_lost_connection_is_told_as_lost() {
    let (_serial, cluster, env) = on_shared_cluster();
    let addr = env.proxy.local_addr();
    for queued in [&b"ASKING"[..], b"READONLY"] {
        let replies = env.rt.block_on(async {
            let mut c = AsyncRawClient::connect(addr).await;
            let mut out = vec![c.cmd(&[b"MULTI"]).await, c.cmd(&[queued]).await];
            for node in cluster.nodes() {
                let r = node.client().cmd(&[b"CLIENT", b"KILL", b"TYPE", b"normal"]);
                assert!(r.starts_with(b":"), "{}", support::printable(&r));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            out.push(c.cmd(&[b"EXEC"]).await);
            // The session goes on: a transaction after it runs.
            out.push(c.cmd(&[b"MULTI"]).await);
            out.push(c.cmd(&[b"SET", b"{lostexec}k", b"v"]).await);
            out.push(c.cmd(&[b"EXEC"]).await);
            out
        });
        let text: Vec<String> = replies.iter().map(|r| support::printable(r)).collect();
        assert_eq!(&replies[..2], [&b"+OK\r\n"[..], b"+QUEUED\r\n"], "{text:?}");
        assert!(
            replies[2].starts_with(b"-UPSTREAM")
                && replies[2].ends_with(b"was lost (the command may have been executed)\r\n"),
            "{text:?}"
        );
        assert_eq!(
            &replies[3..],
            [&b"+OK\r\n"[..], b"+QUEUED\r\n", b"*1\r\n+OK\r\n"],
            "{text:?}"
        );
    }
}
