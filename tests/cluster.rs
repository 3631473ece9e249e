//! A database on a Redis Cluster (3 primaries, 3 replicas, `tests/support/cluster.rs`,
//! one per test binary) through the proxy: the client sees one standalone Redis.
//! Keys land on the node that serves their slot; multi-key commands are split and
//! merged; `SCAN` walks every node; `-CROSSSLOT` is Redis's own; pipelines keep
//! their order; transactions, scripts and blocking commands are pinned to their
//! keys' node.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use redis_sidecar::config::Config;
use redis_sidecar::server::Proxy;
use support::cluster::Cluster;
use support::RawClient;

/// The 11 AutoBot databases, each on the shared cluster (`prefixes`: each its
/// own `key_prefix`, `{tag}{name}:`, so tests running at once keep apart).
fn cluster_config(cluster: &Cluster, prefixes: Option<&str>) -> Config {
    let mut config = cluster.proxy_config();
    if let Some(tag) = prefixes {
        for db in &mut config.databases {
            db.upstream.key_prefix = Some(format!("{tag}{}:", db.name()).into_bytes().into());
        }
    }
    config
}

struct Env {
    _rt: tokio::runtime::Runtime,
    proxy: Proxy,
}

/// An in-process proxy on the shared cluster.
fn start(prefixes: Option<&str>) -> Env {
    let (rt, proxy) = Cluster::start_proxy(cluster_config(Cluster::shared(), prefixes));
    Env { _rt: rt, proxy }
}

impl Env {
    fn client(&self) -> RawClient {
        RawClient::connect(self.proxy.local_addr())
    }

    /// A client subscribed to the channel `news` (confirmed).
    fn subscribed_to_news(&self) -> RawClient {
        let mut sub = self.client();
        sub.send(&support::resp_cmd(&[b"SUBSCRIBE", b"news"]));
        assert_eq!(
            sub.read_reply(),
            b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
        );
        sub
    }
}

/// The node (of the shared cluster) that holds `key`, asked directly.
fn owner(cluster: &Cluster, key: &[u8]) -> u16 {
    for n in cluster.nodes() {
        let mut c = n.client();
        let r = c.cmd(&[b"EXISTS", key]);
        if r == b":1\r\n" {
            return n.port();
        }
    }
    0
}

/// The ports of the cluster's primaries (by ROLE).
fn primaries(cluster: &Cluster) -> Vec<u16> {
    cluster
        .nodes()
        .iter()
        .filter(|n| {
            n.client()
                .cmd(&[b"ROLE"])
                .starts_with(b"*3\r\n$6\r\nmaster")
        })
        .map(|n| n.port())
        .collect()
}

/// The primary that serves `key`'s slot, from the cluster itself.
fn serving(cluster: &Cluster, key: &[u8]) -> u16 {
    // A primary serving the slot answers a GET; the others redirect.
    for n in cluster.nodes() {
        let mut c = n.client();
        let r = c.cmd(&[b"GET", key]);
        if !r.starts_with(b"-MOVED") {
            let role = c.cmd(&[b"ROLE"]);
            if role.windows(6).any(|w| w == b"master") {
                return n.port();
            }
        }
    }
    0
}

/// The cursor and keys of a SCAN reply.
fn parse_scan(reply: &[u8]) -> (String, Vec<String>) {
    use redis::Value;
    let v = redis::parse_redis_value(reply)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(reply)));
    let Value::Array(parts) = v else {
        panic!("SCAN reply {}", String::from_utf8_lossy(reply));
    };
    let (Value::BulkString(next), Value::Array(batch)) = (&parts[0], &parts[1]) else {
        panic!("SCAN reply shape");
    };
    let keys = batch
        .iter()
        .filter_map(|k| match k {
            Value::BulkString(k) => Some(String::from_utf8_lossy(k).into_owned()),
            _ => None,
        })
        .collect();
    (String::from_utf8_lossy(next).into_owned(), keys)
}

#[test]
fn commands_land_on_the_node_serving_their_slot() {
    let env = start(None);
    let cluster = Cluster::shared();
    let mut c = env.client();
    let mut ports = HashSet::new();
    for i in 0..60 {
        let key = format!("land:{i}");
        assert_eq!(c.cmd(&[b"SET", key.as_bytes(), b"v"]), b"+OK\r\n", "{key}");
        assert_eq!(c.cmd(&[b"GET", key.as_bytes()]), b"$1\r\nv\r\n");
        let at = owner(cluster, key.as_bytes());
        assert_eq!(at, serving(cluster, key.as_bytes()), "{key}");
        ports.insert(at);
    }
    assert_eq!(
        ports.len(),
        3,
        "keys spread over the 3 primaries: {ports:?}"
    );
    // Hash tags: one slot, one node.
    assert_eq!(
        c.cmd(&[b"MSET", b"{tag}a", b"1", b"{tag}b", b"2"]),
        b"+OK\r\n"
    );
    assert_eq!(owner(cluster, b"{tag}a"), owner(cluster, b"{tag}b"));
    assert_eq!(
        c.cmd(&[b"SUNIONSTORE", b"{tag}s", b"{tag}x", b"{tag}y"]),
        b":0\r\n"
    );
}

#[test]
fn multi_key_commands_are_split_and_merged_in_key_order() {
    let env = start(None);
    let mut c = env.client();
    let keys: Vec<String> = (0..20).map(|i| format!("split:{i}")).collect();
    let mut mset: Vec<&[u8]> = vec![b"MSET"];
    let vals: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
    for (k, v) in keys.iter().zip(&vals) {
        mset.push(k.as_bytes());
        mset.push(v.as_bytes());
    }
    assert_eq!(c.cmd(&mset), b"+OK\r\n");
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(keys.iter().map(|k| k.as_bytes()));
    mget.push(b"split:missing");
    let mut expected = format!("*{}\r\n", keys.len() + 1).into_bytes();
    for v in &vals {
        expected.extend(format!("${}\r\n{v}\r\n", v.len()).into_bytes());
    }
    expected.extend(b"$-1\r\n");
    assert_eq!(c.cmd(&mget), expected);
    let mut exists: Vec<&[u8]> = vec![b"EXISTS"];
    exists.extend(keys.iter().map(|k| k.as_bytes()));
    exists.push(keys[0].as_bytes());
    assert_eq!(c.cmd(&exists), b":21\r\n");
    let mut touch: Vec<&[u8]> = vec![b"TOUCH"];
    touch.extend(keys.iter().map(|k| k.as_bytes()));
    assert_eq!(c.cmd(&touch), b":20\r\n");
    let mut del: Vec<&[u8]> = vec![b"DEL"];
    del.extend(keys[..10].iter().map(|k| k.as_bytes()));
    assert_eq!(c.cmd(&del), b":10\r\n");
    let mut unlink: Vec<&[u8]> = vec![b"UNLINK"];
    unlink.extend(keys.iter().map(|k| k.as_bytes()));
    assert_eq!(c.cmd(&unlink), b":10\r\n");
}

#[test]
fn cross_slot_errors_are_redis_own_bytes() {
    let env = start(None);
    let cluster = Cluster::shared();
    let mut c = env.client();
    // What a cluster node itself answers (keys "a" and "b" are in different slots).
    let mut direct = cluster.nodes()[0].client();
    for cmd in [
        &[&b"SUNION"[..], b"a", b"b"][..],
        &[b"MSETNX", b"a", b"1", b"b", b"2"],
        &[b"RENAME", b"a", b"b"],
        &[b"EVAL", b"return 1", b"2", b"a", b"b"],
    ] {
        let want = direct.cmd(cmd);
        assert!(
            want.starts_with(b"-CROSSSLOT"),
            "{:?}",
            String::from_utf8_lossy(&want)
        );
        assert_eq!(c.cmd(cmd), want);
    }
}

#[test]
fn scan_walks_every_node_and_sees_every_key_once() {
    let env = start(Some("scan-"));
    let mut c = env.client();
    assert_eq!(c.cmd(&[b"SELECT", b"9"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"FLUSHDB"]), b"+OK\r\n");
    let n = 10_000;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let names: Vec<String> = chunk.iter().map(|i| format!("scan:{i}")).collect();
        let mut mset: Vec<&[u8]> = vec![b"MSET"];
        for k in &names {
            mset.push(k.as_bytes());
            mset.push(b"x");
        }
        assert_eq!(c.cmd(&mset), b"+OK\r\n");
    }
    assert_eq!(c.cmd(&[b"DBSIZE"]), format!(":{n}\r\n").into_bytes());
    let mut seen: Vec<String> = Vec::new();
    let mut cursor = b"0".to_vec();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "SCAN did not finish");
        let r = c.cmd(&[b"SCAN", &cursor, b"COUNT", b"200"]);
        let (next, keys) = parse_scan(&r);
        seen.extend(keys);
        cursor = next.into_bytes();
        if cursor == b"0" {
            break;
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), n, "every key");
    assert_eq!(seen.len(), n, "each once");
    assert!(seen.iter().all(|k| k.starts_with("scan:")), "unprefixed");
    assert_eq!(c.cmd(&[b"FLUSHDB"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"DBSIZE"]), b":0\r\n");
}

/// One `SCAN` call whose `COUNT` covers the keyspace returns it whole with
/// cursor 0, as on a standalone server, although its keys are on three nodes: a
/// node walked to its end with fewer keys than `COUNT` found goes on on the next
/// node in the same call (`TYPE` and `MATCH` filters included). Compared with a
/// real standalone server. (`COUNT` is large because other tests' keys share the
/// cluster: the database's keys are found by `SCAN MATCH prefix*`.)
#[test]
fn one_scan_call_returns_a_small_keyspace_whole() {
    let cluster = Cluster::shared();
    let env = start(Some("scansmall-"));
    let standalone = support::RedisServer::start();
    let mut direct = standalone.client();
    let mut c = env.client();
    assert_eq!(c.cmd(&[b"SELECT", b"9"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"FLUSHDB"]), b"+OK\r\n");
    // Three keys whose (prefixed) names are served by three different primaries.
    let mut names: Vec<String> = Vec::new();
    let mut nodes: Vec<u16> = Vec::new();
    for i in 0..200 {
        let name = format!("a{i}");
        let node = serving(cluster, format!("scansmall-temp:{name}").as_bytes());
        if !nodes.contains(&node) {
            nodes.push(node);
            names.push(name);
        }
        if names.len() == 3 {
            break;
        }
    }
    assert_eq!(names.len(), 3, "keys on three primaries");
    for (k, kind) in names.iter().zip(["string", "set", "list"]) {
        let k = k.as_bytes();
        let set: &[&[u8]] = match kind {
            "string" => &[b"SET", k, b"1"],
            "set" => &[b"SADD", k, b"1"],
            _ => &[b"RPUSH", k, b"1"],
        };
        c.cmd(set);
        direct.cmd(set);
    }
    let sorted = |r: &[u8]| {
        let (cursor, mut keys) = parse_scan(r);
        keys.sort();
        (cursor, keys)
    };
    for req in [
        &[&b"SCAN"[..], b"0", b"COUNT", b"1000000"][..],
        &[b"SCAN", b"0", b"MATCH", b"a*", b"COUNT", b"1000000"],
        &[b"SCAN", b"0", b"TYPE", b"set", b"COUNT", b"1000000"],
        &[
            b"SCAN", b"0", b"COUNT", b"1000000", b"MATCH", b"a*", b"TYPE", b"list",
        ],
    ] {
        let got = sorted(&c.cmd(req));
        assert_eq!(got, sorted(&direct.cmd(req)), "{req:?}");
        assert_eq!(got.0, "0");
    }
    let (cursor, keys) = sorted(&c.cmd(&[b"SCAN", b"0", b"COUNT", b"1000000"]));
    assert_eq!((cursor.as_str(), keys.len()), ("0", 3));
    // COUNT 1: the first node's walk does not end with its one call; the
    // client's loop goes on from the cursor.
    let (cursor, keys) = parse_scan(&c.cmd(&[b"SCAN", b"0", b"COUNT", b"1"]));
    assert!(cursor != "0" && keys.len() <= 1, "{cursor} {keys:?}");
    assert_eq!(c.cmd(&[b"FLUSHDB"]), b"+OK\r\n");
}

#[test]
fn pipelines_keep_their_order_across_nodes() {
    let env = start(None);
    let mut c = env.client();
    let mut req = Vec::new();
    let n = 500;
    for i in 0..n {
        let key = format!("pipe:{}", i % 37);
        req.extend(support::resp_cmd(&[b"INCR", key.as_bytes()]));
        req.extend(support::resp_cmd(&[b"GET", key.as_bytes()]));
    }
    c.send(&req);
    let replies = c.read_replies(2 * n);
    let mut counts = [0i64; 37];
    for i in 0..n {
        counts[i % 37] += 1;
        let want = counts[i % 37];
        assert_eq!(
            replies[2 * i],
            format!(":{want}\r\n").into_bytes(),
            "INCR {i}"
        );
        let s = want.to_string();
        assert_eq!(
            replies[2 * i + 1],
            format!("${}\r\n{s}\r\n", s.len()).into_bytes(),
            "GET {i}"
        );
    }
    let mut del: Vec<Vec<u8>> = vec![b"DEL".to_vec()];
    del.extend((0..37).map(|i| format!("pipe:{i}").into_bytes()));
    let del: Vec<&[u8]> = del.iter().map(|v| v.as_slice()).collect();
    assert_eq!(c.cmd(&del), b":37\r\n");
}

#[test]
fn transactions_scripts_and_blocking_commands_run_on_their_keys_node() {
    let env = start(None);
    let mut c = env.client();
    // A pipelined transaction (as pipelining clients send it).
    let mut req = Vec::new();
    req.extend(support::resp_cmd(&[b"MULTI"]));
    req.extend(support::resp_cmd(&[b"SET", b"{tx}k", b"1"]));
    req.extend(support::resp_cmd(&[b"INCR", b"{tx}k"]));
    req.extend(support::resp_cmd(&[b"EXEC"]));
    c.send(&req);
    let r = c.read_replies(4);
    assert_eq!(r[0], b"+OK\r\n");
    assert_eq!(r[3], b"*2\r\n+OK\r\n:2\r\n");
    // WATCH pins too.
    assert_eq!(c.cmd(&[b"WATCH", b"{w}k"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"{w}k", b"x"]), b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]), b"*1\r\n+OK\r\n");
    // A script with its keys.
    assert_eq!(
        c.cmd(&[b"EVAL", b"return redis.call('GET', KEYS[1])", b"1", b"{w}k"]),
        b"$1\r\nx\r\n"
    );
    // A blocking command, woken by another client.
    let addr = env.proxy.local_addr();
    let pusher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut p = RawClient::connect(addr);
        p.cmd(&[b"RPUSH", b"blocked:list", b"hello"])
    });
    assert_eq!(
        c.cmd(&[b"BLPOP", b"blocked:list", b"5"]),
        b"*2\r\n$12\r\nblocked:list\r\n$5\r\nhello\r\n"
    );
    assert_eq!(pusher.join().expect("pusher"), b":1\r\n");
    assert_eq!(c.cmd(&[b"DEL", b"{tx}k", b"{w}k"]), b":2\r\n");
}

#[test]
fn prefixed_databases_on_one_cluster_are_isolated() {
    let env = start(Some(""));
    let mut c = env.client();
    for db in 0..11 {
        assert_eq!(c.cmd(&[b"SELECT", db.to_string().as_bytes()]), b"+OK\r\n");
        assert_eq!(
            c.cmd(&[b"SET", b"shared:name", db.to_string().as_bytes()]),
            b"+OK\r\n"
        );
    }
    for db in 0..11 {
        assert_eq!(c.cmd(&[b"SELECT", db.to_string().as_bytes()]), b"+OK\r\n");
        let s = db.to_string();
        assert_eq!(
            c.cmd(&[b"GET", b"shared:name"]),
            format!("${}\r\n{s}\r\n", s.len()).into_bytes()
        );
        assert_eq!(
            c.cmd(&[b"KEYS", b"shared:*"]),
            b"*1\r\n$11\r\nshared:name\r\n"
        );
        assert_eq!(c.cmd(&[b"RANDOMKEY"]), b"$11\r\nshared:name\r\n");
    }
    // Each database's key is its own, on the node of its prefixed name.
    let cluster = Cluster::shared();
    assert!(owner(cluster, b"knowledge:shared:name") != 0);
    for db in 0..11 {
        assert_eq!(c.cmd(&[b"SELECT", db.to_string().as_bytes()]), b"+OK\r\n");
        assert_eq!(c.cmd(&[b"DEL", b"shared:name"]), b":1\r\n");
    }
}

#[test]
fn dbsize_and_keyless_commands_reach_every_primary() {
    let env = start(None);
    let mut c = env.client();
    assert_eq!(c.cmd(&[b"PING"]), b"+PONG\r\n");
    assert_eq!(c.cmd(&[b"ECHO", b"hi"]), b"$2\r\nhi\r\n");
    let sha = c.cmd(&[b"SCRIPT", b"LOAD", b"return 7"]);
    assert!(sha.starts_with(b"$40\r\n"), "{sha:?}");
    let sha = &sha[5..45];
    // The script is known on every primary: EVALSHA with keys anywhere runs.
    for i in 0..30 {
        let key = format!("evalsha:{i}");
        assert_eq!(c.cmd(&[b"EVALSHA", sha, b"1", key.as_bytes()]), b":7\r\n");
    }
}

/// The `dbN:` line of `field` in an `INFO` reply (`0` when there is none).
fn keyspace_field(info: &[u8], db: &str, field: &str) -> u64 {
    let text = String::from_utf8_lossy(info);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{db}:")))
        .and_then(|l| {
            l.split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `INFO` shows the keyspace of the whole cluster, as one standalone server
/// holding every key would: each primary's `keys` and `expires` summed, not the
/// one node's that answered; the rest of the text, `cluster_enabled:0` and RESP3's
/// verbatim string as before. Keys with an expiry count only this test's: no
/// other test of this binary sets one.
#[test]
fn info_keyspace_counts_the_keys_of_every_primary() {
    let env = start(Some("info-"));
    let mut c = env.client();
    let n = 3000;
    let mut pipe = Vec::new();
    for i in 0..n {
        pipe.extend(support::resp_cmd(&[
            b"SET",
            format!("ttl:{i}").as_bytes(),
            b"v",
            b"EX",
            b"600",
        ]));
    }
    c.send(&pipe);
    assert!(c.read_replies(n).iter().all(|r| r == b"+OK\r\n"));
    let direct: Vec<u64> = primaries(Cluster::shared())
        .iter()
        .map(|&p| {
            let mut d = RawClient::connect(("127.0.0.1", p));
            keyspace_field(&d.cmd(&[b"INFO", b"keyspace"]), "db0", "expires")
        })
        .collect();
    assert_eq!(direct.iter().sum::<u64>(), n as u64, "{direct:?}");
    assert!(direct.iter().all(|&e| e < n as u64), "spread: {direct:?}");
    for req in [
        &[&b"INFO"[..]][..],
        &[b"INFO", b"keyspace"],
        &[b"info", b"ALL"],
    ] {
        let info = c.cmd(req);
        assert_eq!(keyspace_field(&info, "db0", "expires"), n as u64, "{req:?}");
        assert!(keyspace_field(&info, "db0", "keys") >= n as u64, "{req:?}");
        // Redis estimates it in its expiry cycle: 0 until then.
        let avg = keyspace_field(&info, "db0", "avg_ttl");
        assert!(avg <= 600_000, "{req:?}: avg_ttl {avg}");
    }
    let all = String::from_utf8(c.cmd(&[b"INFO"])).unwrap();
    assert!(all.contains("\r\ncluster_enabled:0\r\n"));
    assert!(all.contains("# Server\r\n") && all.contains("# Keyspace\r\n"));
    // A section without the keyspace is one node's, unchanged.
    assert!(!String::from_utf8_lossy(&c.cmd(&[b"INFO", b"server"])).contains("db0:"));
    let mut c3 = env.client();
    assert!(c3.cmd(&[b"HELLO", b"3"]).starts_with(b"%"));
    let info3 = c3.cmd(&[b"INFO", b"keyspace"]);
    assert!(info3.starts_with(b"="), "{info3:?}");
    assert!(support::resp_frame_len(&info3).unwrap() == Some(info3.len()));
    assert_eq!(keyspace_field(&info3, "db0", "expires"), n as u64);
    for i in 0..n {
        pipe.clear();
        pipe.extend(support::resp_cmd(&[b"DEL", format!("ttl:{i}").as_bytes()]));
        c.send(&pipe);
    }
    assert!(c.read_replies(n).iter().all(|r| r == b":1\r\n"));
}

#[test]
fn proxy_info_shows_the_slot_map_and_every_primary() {
    let env = start(None);
    let mut c = env.client();
    for i in 0..30 {
        let key = format!("info:{i}");
        assert_eq!(c.cmd(&[b"SET", key.as_bytes(), b"1"]), b"+OK\r\n");
    }
    let info = String::from_utf8_lossy(&c.cmd(&[b"PROXY", b"INFO"])).into_owned();
    let db0 = info
        .lines()
        .find(|l| l.starts_with("db0:"))
        .unwrap_or_else(|| panic!("{info}"));
    assert!(
        db0.contains(",cluster_shards=3,cluster_slots_covered=16384,"),
        "{db0}"
    );
    let ports = primaries(Cluster::shared());
    let nodes: Vec<&str> = info
        .lines()
        .filter(|l| l.starts_with("node_db0_"))
        .collect();
    assert_eq!(nodes.len(), 3, "{info}");
    for &port in &ports {
        let line = nodes
            .iter()
            .find(|l| l.starts_with(&format!("node_db0_127.0.0.1:{port}:")))
            .unwrap_or_else(|| panic!("primary {port} in {info}"));
        assert!(line.contains(":role=primary,requests="), "{line}");
        assert!(
            !line.contains("requests=0,"),
            "every primary got keys: {line}"
        );
        assert!(line.contains("circuit=closed"), "{line}");
    }
    // The database's health follows its primaries' probes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = String::from_utf8_lossy(&c.cmd(&[b"PROXY", b"INFO", b"circuits"])).into_owned();
        let line = info
            .lines()
            .find(|l| l.starts_with("circuit_db0:"))
            .unwrap_or("")
            .to_string();
        if line.ends_with("healthy=1") {
            break;
        }
        assert!(Instant::now() < deadline, "db 0 never healthy: {line}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // PROXY HEALTH: the database's probes are its nodes' (summed), and a line per
    // node; PROXY STATS: what each node was sent.
    let health = String::from_utf8_lossy(&c.cmd(&[b"PROXY", b"HEALTH"])).into_owned();
    let db0 = health
        .lines()
        .find(|l| l.starts_with("db0:"))
        .unwrap_or_else(|| panic!("{health}"));
    assert!(!db0.contains(",probes=0,"), "{db0}");
    let stats = String::from_utf8_lossy(&c.cmd(&[b"PROXY", b"STATS"])).into_owned();
    for port in ports {
        let node = health
            .lines()
            .find(|l| l.starts_with(&format!("db0_node_127.0.0.1:{port}:")))
            .unwrap_or_else(|| panic!("primary {port} in {health}"));
        assert!(
            node.contains(":role=primary,healthy=1,circuit=closed,"),
            "{node}"
        );
        assert!(!node.contains(",probes=0,"), "{node}");
        let line = stats
            .lines()
            .find(|l| l.starts_with(&format!("node_127.0.0.1:{port}:")))
            .unwrap_or_else(|| panic!("primary {port} in {stats}"));
        assert!(
            line.starts_with(&format!("node_127.0.0.1:{port}:role=primary,requests=")),
            "{line}"
        );
        assert!(
            !line.contains("requests=0,"),
            "every primary got keys: {line}"
        );
    }
    let mut del: Vec<Vec<u8>> = vec![b"DEL".to_vec()];
    del.extend((0..30).map(|i| format!("info:{i}").into_bytes()));
    let del: Vec<&[u8]> = del.iter().map(|v| v.as_slice()).collect();
    assert_eq!(c.cmd(&del), b":30\r\n");
}

#[test]
fn pubsub_sharded_pubsub_and_resp3_work_on_a_cluster() {
    let env = start(None);
    let mut sub = env.subscribed_to_news();
    let mut ssub = env.client();
    // Channels on all three shards: each subscription goes to its shard's node.
    for ch in ["sch:a", "sch:b", "sch:c"] {
        let mut one = env.client();
        one.send(&support::resp_cmd(&[b"SSUBSCRIBE", ch.as_bytes()]));
        let want = format!("*3\r\n$10\r\nssubscribe\r\n${}\r\n{ch}\r\n:1\r\n", ch.len());
        assert_eq!(one.read_reply(), want.into_bytes(), "{ch}");
        let mut p = env.client();
        assert_eq!(
            p.cmd(&[b"SPUBLISH", ch.as_bytes(), b"hi"]),
            b":1\r\n",
            "{ch}"
        );
        let want = format!(
            "*3\r\n$8\r\nsmessage\r\n${}\r\n{ch}\r\n$2\r\nhi\r\n",
            ch.len()
        );
        assert_eq!(one.read_reply(), want.into_bytes(), "{ch}");
    }
    ssub.send(&support::resp_cmd(&[b"PING"]));
    assert_eq!(ssub.read_reply(), b"+PONG\r\n");
    // PUBLISH from any node reaches the subscriber (the cluster broadcasts it).
    let mut p = env.client();
    for i in 0..3 {
        let r = p.cmd(&[b"PUBLISH", b"news", format!("m{i}").as_bytes()]);
        assert!(r.starts_with(b":"), "{r:?}");
        let want = format!("*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nm{i}\r\n");
        assert_eq!(sub.read_reply(), want.into_bytes());
    }
    // A RESP3 subscriber may send any command: a keyless one that spans the
    // cluster (KEYS) is fanned out as unsubscribed, not asked of the subscriber
    // connection's node alone.
    let mut c = env.client();
    for i in 0..12 {
        let k = format!("r3sub:{i}");
        assert_eq!(c.cmd(&[b"SET", k.as_bytes(), b"v"]), b"+OK\r\n");
    }
    let mut s3 = env.client();
    assert!(s3.cmd(&[b"HELLO", b"3"]).starts_with(b"%"));
    s3.send(&support::resp_cmd(&[b"SUBSCRIBE", b"r3sub"]));
    assert!(s3.read_reply().starts_with(b">3\r\n$9\r\nsubscribe"));
    let keys = s3.cmd(&[b"KEYS", b"r3sub:*"]);
    assert!(
        keys.starts_with(b"*12\r\n"),
        "{}",
        String::from_utf8_lossy(&keys)
    );
    // RESP3: the per-node RESP3 connections, merged replies in RESP3.
    let mut c3 = env.client();
    let hello = c3.cmd(&[b"HELLO", b"3"]);
    assert!(hello.starts_with(b"%"), "{hello:?}");
    assert_eq!(c3.cmd(&[b"MSET", b"r3:a", b"1", b"r3:b", b"2"]), b"+OK\r\n");
    assert_eq!(
        c3.cmd(&[b"MGET", b"r3:a", b"r3:b", b"r3:none"]),
        b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n_\r\n"
    );
    assert_eq!(c3.cmd(&[b"DEL", b"r3:a", b"r3:b"]), b":2\r\n");
}

/// A RESP3 subscriber's `CLIENT REPLY SKIP` on a cluster: the next command,
/// which goes by its key's slot (not to the subscriber connection), gets no
/// reply, as on Redis (until session 39 it was answered, and the skip was lost:
/// the client read that reply as its next command's). Keys on every node.
#[test]
fn a_resp3_subscribers_skip_holds_for_a_command_sent_by_slot() {
    let env = start(None);
    let mut s3 = env.client();
    assert!(s3.cmd(&[b"HELLO", b"3"]).starts_with(b"%"));
    s3.send(&support::resp_cmd(&[b"SSUBSCRIBE", b"skipch"]));
    assert!(s3.read_reply().starts_with(b">3\r\n$10\r\nssubscribe"));
    let keys = ["r3skip:a", "r3skip:b", "r3skip:c", "r3skip:d", "r3skip:e"];
    let nodes: HashSet<u16> = keys
        .iter()
        .map(|k| serving(Cluster::shared(), k.as_bytes()))
        .collect();
    assert!(nodes.len() > 1, "the keys are on one node");
    for key in keys {
        let mut bytes = support::resp_cmd(&[b"CLIENT", b"REPLY", b"SKIP"]);
        bytes.extend(support::resp_cmd(&[b"SET", key.as_bytes(), b"v"]));
        bytes.extend(support::resp_cmd(&[b"GET", key.as_bytes()]));
        s3.send(&bytes);
        assert_eq!(s3.read_reply(), b"$1\r\nv\r\n", "{key}");
    }
    assert_eq!(s3.cmd(&[b"PING"]), b"+PONG\r\n");
}

/// A RESP3 subscriber that publishes to its own channel gets the message before
/// `PUBLISH`'s reply, as from one node (which sends both on the one connection);
/// so for `SPUBLISH` of its own shard channel. Until session 40 the proxy sent
/// the `PUBLISH` by slot on a shared connection, and the reply often came first.
#[test]
fn a_resp3_subscriber_gets_its_own_message_before_the_publish_reply() {
    let env = start(None);
    let channel = b"ownmsg{r3own}";
    let node = serving(Cluster::shared(), channel);
    for (who, mut c) in [
        ("node", RawClient::connect(("127.0.0.1", node))),
        ("proxy", env.client()),
    ] {
        assert!(c.cmd(&[b"HELLO", b"3"]).starts_with(b"%"), "{who}");
        // (Shard channel first: the subscriber connection is then on its node.)
        c.send(&support::resp_cmd(&[b"SSUBSCRIBE", channel]));
        assert!(
            c.read_reply().starts_with(b">3\r\n$10\r\nssubscribe"),
            "{who}"
        );
        c.send(&support::resp_cmd(&[b"SUBSCRIBE", channel]));
        assert!(
            c.read_reply().starts_with(b">3\r\n$9\r\nsubscribe"),
            "{who}"
        );
        for i in 0..20 {
            for (publish, kind) in [(&b"PUBLISH"[..], "message"), (b"SPUBLISH", "smessage")] {
                c.send(&support::resp_cmd(&[publish, channel, b"m"]));
                let message = format!(
                    ">3\r\n${}\r\n{kind}\r\n$13\r\nownmsg{{r3own}}\r\n$1\r\nm\r\n",
                    kind.len()
                );
                assert_eq!(c.read_reply(), message.as_bytes(), "{who} {kind} {i}");
                assert_eq!(c.read_reply(), b":1\r\n", "{who} {kind} {i}");
            }
        }
    }
}

/// A MULTI held back on a cluster (no key yet) whose connection cannot be had
/// when the first request after it comes (the breaker open) is a lost
/// transaction: what the client sends for it is queued and never runs, and EXEC
/// aborts. Until session 40 the transaction was forgotten, so once the breaker
/// let requests through again a write queued for it ran at once, outside any
/// transaction, and EXEC answered "EXEC without MULTI".
#[test]
fn a_held_back_multi_refused_by_an_open_breaker_is_a_lost_transaction() {
    let mut config = cluster_config(Cluster::shared(), None);
    config.admin_password = Some(redis_sidecar::config::Secret("adm".into()));
    let (_rt, proxy) = Cluster::start_proxy(config);
    let env = Env { _rt, proxy };
    let mut c = env.client();
    let mut admin = env.client();
    assert_eq!(admin.cmd(&[b"PROXY", b"AUTH", b"adm"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(
        admin.cmd(&[b"PROXY", b"CIRCUIT", b"0", b"OPEN"]),
        b"+OK\r\n"
    );
    let first = c.cmd(&[b"SET", b"{dmulti}a", b"1"]);
    assert_eq!(
        admin.cmd(&[b"PROXY", b"CIRCUIT", b"0", b"AUTO"]),
        b"+OK\r\n"
    );
    let second = c.cmd(&[b"SET", b"{dmulti}b", b"2"]);
    let exec = c.cmd(&[b"EXEC"]);
    let text = |r: &[u8]| support::printable(r);
    assert_eq!(second, b"+QUEUED\r\n", "{} {}", text(&first), text(&second));
    assert!(exec.starts_with(b"-EXECABORT"), "{}", text(&exec));
    let node = serving(Cluster::shared(), b"{dmulti}b");
    let mut direct = RawClient::connect(("127.0.0.1", node));
    assert_eq!(
        direct.cmd(&[b"EXISTS", b"{dmulti}a", b"{dmulti}b"]),
        b":0\r\n"
    );
    // The session goes on.
    assert_eq!(c.cmd(&[b"SET", b"{dmulti}c", b"3"]), b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"{dmulti}c"]), b"$1\r\n3\r\n");
    assert_eq!(direct.cmd(&[b"DEL", b"{dmulti}c"]), b":1\r\n");
}

/// A RESP2 subscriber on a cluster gets Redis's own refusals in Redis's order:
/// an unknown subcommand (and a wrong number of arguments) before "only
/// (P|S)SUBSCRIBE … are allowed in this context" (until session 39 the proxy
/// answered the second for an unknown `CLIENT` subcommand).
#[test]
fn a_resp2_subscriber_gets_redis_refusal_of_an_unknown_subcommand() {
    let env = start(None);
    let node = Cluster::shared().nodes()[0].port();
    for (who, mut c) in [
        ("node", RawClient::connect(("127.0.0.1", node))),
        ("proxy", env.client()),
    ] {
        c.send(&support::resp_cmd(&[b"SUBSCRIBE", b"unknownsub"]));
        assert!(c.read_reply().starts_with(b"*3\r\n$9\r\nsubscribe"));
        assert_eq!(
            c.cmd(&[b"CLIENT", b"NO-SUCH-SUB", b"ON"]),
            b"-ERR unknown subcommand 'NO-SUCH-SUB'. Try CLIENT HELP.\r\n",
            "{who}"
        );
        assert_eq!(
            c.cmd(&[b"CLIENT", b"GETNAME"]),
            b"-ERR Can't execute 'client|getname': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
            "{who}"
        );
    }
}

/// A client's `HELLO` names the cluster's Redis (`server`, `version`, as a node's
/// own `HELLO` says them), not the proxy, as for a standalone upstream: clients
/// decide what to use by them. `mode` stays `standalone` (what the client sees).
#[test]
fn hello_names_the_clusters_redis() {
    let env = start(None);
    let mut c = env.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = String::from_utf8_lossy(&c.cmd(&[b"HELLO", b"2"])).into_owned();
        if got.contains("$5\r\nredis\r\n") {
            break got;
        }
        assert!(std::time::Instant::now() < deadline, "not learnt: {got}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let node = Cluster::shared().nodes()[0].client().cmd(&[b"HELLO", b"2"]);
    let node = String::from_utf8_lossy(&node).into_owned();
    let field = |reply: &str, name: &str| {
        let mut lines = reply.split("\r\n");
        lines.position(|l| l == name)?;
        lines.nth(1).map(str::to_string)
    };
    assert_eq!(field(&got, "version"), field(&node, "version"), "{got}");
    assert!(field(&got, "version").is_some(), "{got}");
    assert_eq!(field(&got, "mode").as_deref(), Some("standalone"), "{got}");
    assert_eq!(field(&node, "mode").as_deref(), Some("cluster"), "{node}");
}

/// `HELLO`'s `role` is `master` whichever node told the proxy what the cluster
/// is: a RESP3 subscriber's home node may be a replica (a seed listed first, as
/// here, or a primary since demoted), and a client of a standalone server that
/// sees `replica` takes it for a read-only one.
#[test]
fn hello_says_master_also_when_a_replica_told_it() {
    let cluster = Cluster::shared();
    let primaries = primaries(cluster);
    let mut config = cluster_config(cluster, None);
    let mut ports = cluster.ports();
    ports.sort_by_key(|p| primaries.contains(p));
    assert!(!primaries.contains(&ports[0]), "{ports:?} {primaries:?}");
    for db in &mut config.databases {
        let mut cc = (**db.upstream.cluster.as_ref().expect("a cluster")).clone();
        cc.nodes = ports
            .iter()
            .map(|p| ("127.0.0.1".to_string(), *p))
            .collect();
        db.upstream.cluster = Some(std::sync::Arc::new(cc));
        // (Redis 7.0's map calls a synced replica loading: it is a home node
        // once its probe has answered.)
        db.upstream.resilience.health_check_interval = Duration::from_millis(100);
    }
    let (_rt, proxy) = Cluster::start_proxy(config);
    // A RESP3 subscriber: its connection (set up with `HELLO 3`) goes to the
    // home node, the replica listed first once it serves.
    let home = cluster
        .nodes()
        .iter()
        .find(|n| n.port() == ports[0])
        .expect("node");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sub = RawClient::connect(proxy.local_addr());
    assert!(sub.cmd(&[b"HELLO", b"3"]).starts_with(b"%"));
    loop {
        sub.send(&support::resp_cmd(&[b"SUBSCRIBE", b"who"]));
        assert_eq!(
            sub.read_reply(),
            b">3\r\n$9\r\nsubscribe\r\n$3\r\nwho\r\n:1\r\n"
        );
        let listed = home.client().cmd(&[b"CLIENT", b"LIST"]);
        let listed = String::from_utf8_lossy(&listed).into_owned();
        if listed.contains("sub=1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not on the replica {}: {listed}",
            ports[0]
        );
        sub.send(&support::resp_cmd(&[b"UNSUBSCRIBE"]));
        assert!(sub.read_reply().starts_with(b">3\r\n$11\r\nunsubscribe"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut c = RawClient::connect(proxy.local_addr());
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = String::from_utf8_lossy(&c.cmd(&[b"HELLO", b"2"])).into_owned();
        if got.contains("$5\r\nredis\r\n") {
            break got;
        }
        assert!(Instant::now() < deadline, "not learnt: {got}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(got.contains("$4\r\nrole\r\n$6\r\nmaster\r\n"), "{got}");
}

/// A subscriber connection is on one node: an `SSUBSCRIBE` of a channel whose
/// slot another node serves gets a refusal naming both nodes, not that node's
/// `-MOVED` (which a client of a standalone server cannot follow); the channels
/// on the connection's node are subscribed and get their messages.
#[test]
fn a_shard_channel_on_another_node_than_the_subscriptions_is_refused_not_redirected() {
    let env = start(None);
    let mut sub = env.subscribed_to_news();
    let channels: Vec<String> = (0..12).map(|i| format!("other:{i}")).collect();
    let (mut subscribed, mut refused) = (Vec::new(), 0);
    for ch in &channels {
        sub.send(&support::resp_cmd(&[b"SSUBSCRIBE", ch.as_bytes()]));
        let r = String::from_utf8_lossy(&sub.read_reply()).into_owned();
        if r.starts_with("*3\r\n$10\r\nssubscribe") {
            subscribed.push(ch.clone());
            assert!(r.ends_with(&format!(":{}\r\n", subscribed.len())), "{r}");
        } else {
            assert!(
                r.starts_with(&format!("-ERR SSUBSCRIBE '{ch}': the channel's slot is served by cluster node 127.0.0.1:")),
                "{r}"
            );
            refused += 1;
        }
    }
    assert!(
        refused > 0 && !subscribed.is_empty(),
        "{refused} refused, {subscribed:?}"
    );
    // Still a working subscriber: messages of the subscribed channels arrive.
    let mut p = env.client();
    let ch = &subscribed[0];
    assert_eq!(p.cmd(&[b"SPUBLISH", ch.as_bytes(), b"hi"]), b":1\r\n");
    let want = format!(
        "*3\r\n$8\r\nsmessage\r\n${}\r\n{ch}\r\n$2\r\nhi\r\n",
        ch.len()
    );
    assert_eq!(String::from_utf8_lossy(&sub.read_reply()), want);
    sub.send(&support::resp_cmd(&[b"PING"]));
    assert_eq!(sub.read_reply(), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
}

/// A seed node that is not a node of the cluster (nothing listens there) listed
/// first: subscribers, `PUBLISH` and `PUBSUB NUMSUB` go to the next seed, one
/// node for all of them (each node counts only its own subscribers), and
/// `PROXY INFO` names it.
#[test]
fn pubsub_passes_over_a_seed_that_is_not_in_the_cluster() {
    let cluster = Cluster::shared();
    let dead = support::free_port();
    let mut config = cluster_config(cluster, None);
    for db in &mut config.databases {
        if let Some(cc) = &mut db.upstream.cluster {
            std::sync::Arc::make_mut(cc)
                .nodes
                .insert(0, ("127.0.0.1".to_string(), dead));
        }
    }
    let (_rt, proxy) = Cluster::start_proxy(config);
    let env = Env { _rt, proxy };
    let ch: &[u8] = b"home:news";
    let mut subs: Vec<RawClient> = (0..2).map(|_| env.client()).collect();
    for s in &mut subs {
        s.send(&support::resp_cmd(&[b"SUBSCRIBE", ch]));
        assert_eq!(
            s.read_reply(),
            b"*3\r\n$9\r\nsubscribe\r\n$9\r\nhome:news\r\n:1\r\n"
        );
    }
    let mut c = env.client();
    assert_eq!(
        c.cmd(&[b"PUBSUB", b"NUMSUB", ch]),
        b"*2\r\n$9\r\nhome:news\r\n:2\r\n",
        "both subscribers on the node PUBSUB asks"
    );
    assert_eq!(c.cmd(&[b"PUBLISH", ch, b"m"]), b":2\r\n");
    for s in &mut subs {
        assert_eq!(
            s.read_reply(),
            b"*3\r\n$7\r\nmessage\r\n$9\r\nhome:news\r\n$1\r\nm\r\n"
        );
    }
    assert_eq!(
        pubsub_node(&mut c),
        cluster.seeds()[0],
        "the first seed that is a node"
    );
}

/// `pubsub_node` of database 0 in `PROXY INFO databases`.
fn pubsub_node(c: &mut RawClient) -> String {
    let info = String::from_utf8_lossy(&c.cmd(&[b"PROXY", b"INFO", b"databases"])).into_owned();
    info.lines()
        .find(|l| l.starts_with("db0:"))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("pubsub_node=")))
        .unwrap_or_else(|| panic!("no pubsub_node: {info}"))
        .to_string()
}

/// Shard channels are not keys: a database's `key_prefix` is not added to them
/// (pub/sub is not per database on Redis either), so `SSUBSCRIBE` must go to the
/// node of the channel as named, where `SPUBLISH` goes.
#[test]
fn sharded_pubsub_on_a_prefixed_database_goes_by_the_channels_own_slot() {
    let env = start(Some("sp"));
    // Channels on all three shards (their slots as named, not as prefixed).
    for ch in ["pch:a", "pch:b", "pch:c", "pch:d", "pch:e"] {
        let mut sub = env.client();
        sub.send(&support::resp_cmd(&[b"SELECT", b"1"]));
        assert_eq!(sub.read_reply(), b"+OK\r\n");
        sub.send(&support::resp_cmd(&[b"SSUBSCRIBE", ch.as_bytes()]));
        let want = format!("*3\r\n$10\r\nssubscribe\r\n${}\r\n{ch}\r\n:1\r\n", ch.len());
        assert_eq!(String::from_utf8_lossy(&sub.read_reply()), want, "{ch}");
        let mut p = env.client();
        assert_eq!(p.cmd(&[b"SELECT", b"1"]), b"+OK\r\n");
        assert_eq!(
            p.cmd(&[b"SPUBLISH", ch.as_bytes(), b"hi"]),
            b":1\r\n",
            "{ch}"
        );
        let want = format!(
            "*3\r\n$8\r\nsmessage\r\n${}\r\n{ch}\r\n$2\r\nhi\r\n",
            ch.len()
        );
        assert_eq!(String::from_utf8_lossy(&sub.read_reply()), want, "{ch}");
    }
}

/// `PUBSUB SHARDNUMSUB` counts each shard channel on its slot's primary (where
/// its subscribers are) and `PUBSUB SHARDCHANNELS` lists every primary's, so the
/// client sees what one standalone Redis would say.
#[test]
fn shard_channel_introspection_covers_every_shard() {
    let env = start(None);
    let channels = ["shnum:a", "shnum:b", "shnum:c", "shnum:d"];
    let slots: std::collections::HashSet<u16> = channels
        .iter()
        .map(|c| redis_sidecar::cluster::key_slot(c.as_bytes()))
        .collect();
    assert!(slots.len() > 1, "channels in several slots");
    let mut subs = Vec::new();
    for ch in channels {
        let mut sub = env.client();
        sub.send(&support::resp_cmd(&[b"SSUBSCRIBE", ch.as_bytes()]));
        assert!(sub.read_reply().starts_with(b"*3\r\n$10\r\nssubscribe"));
        subs.push(sub);
    }
    let mut c = env.client();
    let mut want = String::from("*10\r\n");
    for ch in channels {
        want.push_str(&format!("$7\r\n{ch}\r\n:1\r\n"));
    }
    want.push_str("$7\r\nshnum:z\r\n:0\r\n");
    let mut args: Vec<&[u8]> = vec![b"PUBSUB", b"SHARDNUMSUB"];
    args.extend(channels.iter().map(|c| c.as_bytes()));
    args.push(b"shnum:z");
    assert_eq!(String::from_utf8_lossy(&c.cmd(&args)), want);
    let listed = c.cmd(&[b"PUBSUB", b"SHARDCHANNELS", b"shnum:*"]);
    let mut names: Vec<String> = match redis::parse_redis_value(&listed) {
        Ok(redis::Value::Array(v)) => v
            .iter()
            .filter_map(|n| match n {
                redis::Value::BulkString(n) => Some(String::from_utf8_lossy(n).into_owned()),
                _ => None,
            })
            .collect(),
        other => panic!("SHARDCHANNELS: {other:?}"),
    };
    names.sort();
    assert_eq!(names, channels);
    // RESP3, in the client's order, in the shape a node gives (Redis 7.0: an
    // array; a map where a version sends one).
    let mut node = Cluster::shared().nodes()[0].client();
    assert!(node.cmd(&[b"HELLO", b"3"]).starts_with(b"%"));
    let head = match node.cmd(&[b"PUBSUB", b"SHARDNUMSUB", b"x"]).first() {
        Some(b'%') => "%2",
        _ => "*4",
    };
    let mut c3 = env.client();
    assert!(c3.cmd(&[b"HELLO", b"3"]).starts_with(b"%"));
    let reply = c3.cmd(&[b"PUBSUB", b"SHARDNUMSUB", b"shnum:d", b"shnum:a"]);
    assert_eq!(
        String::from_utf8_lossy(&reply),
        format!("{head}\r\n$7\r\nshnum:d\r\n:1\r\n$7\r\nshnum:a\r\n:1\r\n")
    );
}

#[test]
fn the_readiness_check_asks_the_primary_of_its_test_key() {
    let cluster = Cluster::shared();
    let config = cluster_config(cluster, Some("check-"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let report = rt.block_on(redis_sidecar::check::run(
        &config,
        redis_sidecar::check::CheckOptions { read_only: false },
    ));
    let text = report.render_text();
    assert!(report.ready(), "{text}");
    let primaries = primaries(cluster);
    for db in &report.databases {
        assert_eq!(db.writable, Some(true), "{text}");
        assert_eq!(db.role.as_deref(), Some("master"), "{text}");
        let port: u16 = db
            .upstream
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0);
        assert!(
            primaries.contains(&port),
            "{} is not a primary: {text}",
            db.upstream
        );
    }
}

#[test]
fn a_multi_sent_alone_waits_for_its_first_key_to_pick_the_node() {
    let env = start(None);
    let redis = support::RedisServer::start();
    let mut c = env.client();
    let mut d = redis.client();
    // Typed one at a time (as redis-cli does): the proxy cannot know the node at
    // MULTI, so it answers it and opens the transaction with the first key.
    let script: &[&[&[u8]]] = &[
        &[b"MULTI"],
        &[b"EXEC"],
        &[b"MULTI"],
        &[b"DISCARD"],
        &[b"MULTI"],
        &[b"MULTI"],
        &[b"WATCH", b"x"],
        &[b"DISCARD"],
        &[b"UNWATCH"],
        &[b"MULTI"],
        &[b"SET", b"{alone}a", b"1"],
        &[b"INCR", b"{alone}a"],
        &[b"GET", b"{alone}a"],
        &[b"EXEC"],
        &[b"MULTI"],
        &[b"PING"],
        &[b"EXEC"],
        &[b"DEL", b"{alone}a"],
    ];
    for cmd in script {
        assert_eq!(
            c.cmd(cmd),
            d.cmd(cmd),
            "{:?}",
            cmd.iter()
                .map(|a| String::from_utf8_lossy(a))
                .collect::<Vec<_>>()
        );
    }
    // Keys on every primary, each in a transaction of its own.
    for i in 0..12 {
        let key = format!("alone:{i}");
        assert_eq!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
        assert_eq!(c.cmd(&[b"INCR", key.as_bytes()]), b"+QUEUED\r\n", "{key}");
        assert_eq!(c.cmd(&[b"EXEC"]), b"*1\r\n:1\r\n", "{key}");
        assert_eq!(c.cmd(&[b"DEL", key.as_bytes()]), b":1\r\n");
    }
}

/// `cmdstat_get` calls summed over the nodes on `ports`.
fn get_calls(cluster: &Cluster, ports: &[u16]) -> u64 {
    cluster
        .nodes()
        .iter()
        .filter(|n| ports.contains(&n.port()))
        .map(|n| {
            let info =
                String::from_utf8_lossy(&n.client().cmd(&[b"INFO", b"commandstats"])).into_owned();
            info.lines()
                .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn read_from_replica_sends_reads_to_replicas_and_writes_to_primaries() {
    let cluster = Cluster::shared();
    let mut config = cluster_config(cluster, None);
    let nodes: Vec<(String, u16)> = cluster
        .ports()
        .iter()
        .map(|p| ("127.0.0.1".to_string(), *p))
        .collect();
    let cc = std::sync::Arc::new(redis_sidecar::config::ClusterConfig {
        nodes,
        read_from: redis_sidecar::config::ReadFrom::Replica,
    });
    for db in &mut config.databases {
        db.upstream.cluster = Some(cc.clone());
    }
    let (_rt, proxy) = Cluster::start_proxy(config);
    let mut c = RawClient::connect(proxy.local_addr());
    let primaries = primaries(cluster);
    let replicas: Vec<u16> = cluster
        .ports()
        .into_iter()
        .filter(|p| !primaries.contains(p))
        .collect();
    assert_eq!(replicas.len(), 3);
    let keys: Vec<String> = (0..30).map(|i| format!("replica-read:{i}")).collect();
    for k in &keys {
        assert_eq!(c.cmd(&[b"SET", k.as_bytes(), b"v"]), b"+OK\r\n");
    }
    let before = get_calls(cluster, &replicas);
    // Replication is asynchronous: each key is read until its replica has it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut gets = 0;
    for k in &keys {
        loop {
            gets += 1;
            if c.cmd(&[b"GET", k.as_bytes()]) == b"$1\r\nv\r\n" {
                break;
            }
            assert!(Instant::now() < deadline, "{k} never readable");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let served = get_calls(cluster, &replicas) - before;
    assert!(served >= gets, "replicas served {served} of {gets} GETs");
    // Writes still go to primaries (a replica would answer -MOVED, followed, or
    // -READONLY, passed on: neither happened).
    let mut del: Vec<&[u8]> = vec![b"DEL"];
    del.extend(keys.iter().map(|k| k.as_bytes()));
    assert_eq!(c.cmd(&del), b":30\r\n");
}

/// `auth_passthrough` on a cluster: a client that logs in runs every command as
/// its user (Redis's ACL rules apply), by slot like any other client: keys on
/// every node, `MGET` split, a transaction and a blocking command on their
/// key's node. The user needs no permission beyond its commands (the map and
/// the probes stay the proxy's). `RESET` logs out.
#[test]
fn auth_passthrough_logins_run_as_their_user_on_every_node() {
    let cluster = Cluster::shared();
    let acl = [
        "ACL",
        "SETUSER",
        "app",
        "on",
        ">s3cret",
        "~app:*",
        "+@read",
        "+@write",
        "+@transaction",
        "+@blocking",
    ];
    for port in cluster.ports() {
        let (out, status) = support::redis_cli(port, &acl);
        assert!(status.success() && out.trim() == "OK", "{port}: {out}");
    }
    let mut config = cluster_config(cluster, None);
    config.auth_passthrough = true;
    let (_rt, proxy) = Cluster::start_proxy(config);
    let env = Env { _rt, proxy };
    let mut c = env.client();
    assert_eq!(
        c.cmd(&[b"AUTH", b"app", b"wrong"]),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    // Logging in between two writes of a pipeline: they run in the order sent
    // (as the proxy's user, then as app's, over other connections).
    c.send(&support::resp_cmd(&[b"RPUSH", b"app:order", b"1"]));
    c.send(&support::resp_cmd(&[b"AUTH", b"app", b"s3cret"]));
    c.send(&support::resp_cmd(&[b"RPUSH", b"app:order", b"2"]));
    c.send(&support::resp_cmd(&[b"LRANGE", b"app:order", b"0", b"-1"]));
    assert_eq!(
        c.read_replies(4),
        [
            b":1\r\n".to_vec(),
            b"+OK\r\n".to_vec(),
            b":2\r\n".to_vec(),
            b"*2\r\n$1\r\n1\r\n$1\r\n2\r\n".to_vec()
        ]
    );
    // app:a, app:b, app:c on three different nodes.
    let keys: [&[u8]; 4] = [b"app:a", b"app:b", b"app:c", b"app:d"];
    for (i, k) in keys.iter().enumerate() {
        let v = i.to_string();
        assert_eq!(c.cmd(&[b"SET", k, v.as_bytes()]), b"+OK\r\n");
        assert_eq!(c.cmd(&[b"GET", k]), format!("$1\r\n{v}\r\n").into_bytes());
    }
    assert_eq!(
        c.cmd(&[b"MGET", keys[0], keys[1], keys[2], keys[3]]),
        b"*4\r\n$1\r\n0\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n"
    );
    let denied = c.cmd(&[b"SET", b"other:x", b"1"]);
    assert!(
        denied.starts_with(b"-NOPERM"),
        "{:?}",
        String::from_utf8_lossy(&denied)
    );
    c.send(&support::resp_cmd(&[b"MULTI"]));
    c.send(&support::resp_cmd(&[b"SET", b"app:{t}1", b"1"]));
    c.send(&support::resp_cmd(&[b"INCR", b"app:{t}1"]));
    c.send(&support::resp_cmd(&[b"EXEC"]));
    assert_eq!(
        c.read_replies(4),
        [
            b"+OK\r\n".to_vec(),
            b"+QUEUED\r\n".to_vec(),
            b"+QUEUED\r\n".to_vec(),
            b"*2\r\n+OK\r\n:2\r\n".to_vec()
        ]
    );
    assert_eq!(c.cmd(&[b"BLPOP", b"app:list", b"0.1"]), b"*-1\r\n");
    assert_eq!(
        c.cmd(&[b"CLIENT", b"TRACKING", b"ON"]),
        b"-ERR CLIENT TRACKING on a Redis Cluster database is not supported by redis-sidecar\r\n"
    );
    // The login's requests count on their nodes, as everyone's.
    let info = String::from_utf8_lossy(&c.cmd(&[b"PROXY", b"INFO", b"cluster"])).into_owned();
    let requests: u64 = info
        .lines()
        .filter(|l| l.starts_with("node_db0_"))
        .filter_map(|l| l.split(',').find_map(|f| f.strip_prefix("requests=")))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    assert!(requests >= 12, "{info}");
    // Logged out: the proxy's own user again.
    assert_eq!(c.cmd(&[b"RESET"]), b"+RESET\r\n");
    assert_eq!(c.cmd(&[b"SET", b"other:x", b"1"]), b"+OK\r\n");
    let mut del: Vec<&[u8]> = vec![b"DEL", b"other:x", b"app:{t}1", b"app:order"];
    del.extend(keys);
    assert_eq!(c.cmd(&del), b":7\r\n");
    for port in cluster.ports() {
        support::redis_cli(port, &["ACL", "DELUSER", "app"]);
    }
}

/// The client sees a standalone Redis: what a standalone server refuses for want
/// of cluster support (every `CLUSTER` subcommand, `READONLY`, `READWRITE`,
/// `ASKING`) gets the same bytes from the proxy, never the nodes' addresses or
/// another database's keys (a cluster-aware client would learn the nodes and go
/// around the proxy and its key_prefix); arity and unknown-subcommand errors are
/// Redis's own; `INFO` says `cluster_enabled:0`. Compared with a real standalone
/// server, on a database without and one with a key_prefix.
#[test]
fn the_cluster_is_hidden_as_from_a_standalone_server() {
    let standalone = support::RedisServer::start();
    let mut direct = standalone.client();
    let plain = start(None);
    let prefixed = start(Some("hide"));
    let requests: &[&[&str]] = &[
        &["CLUSTER", "SLOTS"],
        &["CLUSTER", "SHARDS"],
        &["CLUSTER", "NODES"],
        &["CLUSTER", "INFO"],
        &["cluster", "myid"],
        &["CLUSTER", "HELP"],
        &["CLUSTER", "KEYSLOT", "k"],
        &["CLUSTER", "GETKEYSINSLOT", "0", "10"],
        &["CLUSTER", "COUNTKEYSINSLOT", "0"],
        &["READONLY"],
        &["READWRITE"],
        &["ASKING"],
        &["CLUSTER"],
        &["CLUSTER", "KEYSLOT"],
        &["READONLY", "x"],
        &["INFO", "cluster"],
    ];
    for (env, label) in [(&plain, "plain"), (&prefixed, "prefixed")] {
        let mut c = env.client();
        c.cmd(&[b"SELECT", b"3"]);
        for req in requests {
            let args: Vec<&[u8]> = req.iter().map(|a| a.as_bytes()).collect();
            assert_eq!(
                String::from_utf8_lossy(&c.cmd(&args)),
                String::from_utf8_lossy(&direct.cmd(&args)),
                "{label}: {req:?}"
            );
        }
        let info = c.cmd(&[b"INFO"]);
        let text = String::from_utf8_lossy(&info);
        assert!(
            text.contains("\r\ncluster_enabled:0\r\n"),
            "{label}: {text}"
        );
        assert!(!text.contains("cluster_enabled:1"), "{label}");
        // `redis_mode` too (another length: the bulk string's header follows).
        let server = c.cmd(&[b"INFO", b"server"]);
        let server = String::from_utf8_lossy(&server);
        assert!(
            server.contains("\r\nredis_mode:standalone\r\n"),
            "{label}: {server}"
        );
        let (head, body) = server.split_once("\r\n").expect("a header");
        assert_eq!(head, format!("${}", body.len() - 2), "{label}");
        // RESP3: a verbatim string, rewritten the same way.
        let (mut c3, mut direct3) = (env.client(), standalone.client());
        assert!(c3.cmd(&[b"HELLO", b"3"]).starts_with(b"%"));
        assert!(direct3.cmd(&[b"HELLO", b"3"]).starts_with(b"%"));
        let info3 = c3.cmd(&[b"INFO", b"cluster"]);
        assert!(info3.starts_with(b"=34\r\ntxt:"), "{label}");
        assert_eq!(info3, direct3.cmd(&[b"INFO", b"cluster"]), "{label}");
        let server3 = String::from_utf8_lossy(&c3.cmd(&[b"INFO", b"server"])).into_owned();
        assert!(server3.contains("\r\nredis_mode:standalone\r\n"), "{label}");
        let (head, body) = server3.split_once("\r\n").expect("a header");
        assert_eq!(head, format!("={}", body.len() - 2), "{label}");
        // Inside MULTI: queued, as a standalone server queues it (and fails it
        // at EXEC: its refusal is its element of EXEC's reply; the rest runs).
        let disabled = "-ERR This instance has cluster support disabled\r\n";
        let mut t = env.client();
        t.cmd(&[b"SELECT", b"3"]);
        assert_eq!(t.cmd(&[b"MULTI"]), b"+OK\r\n");
        assert_eq!(t.cmd(&[b"CLUSTER", b"SLOTS"]), b"+QUEUED\r\n");
        assert_eq!(t.cmd(&[b"SET", b"hidden:k", b"1"]), b"+QUEUED\r\n");
        assert_eq!(
            String::from_utf8_lossy(&t.cmd(&[b"EXEC"])),
            format!("*2\r\n{disabled}+OK\r\n"),
            "{label}"
        );
        assert_eq!(t.cmd(&[b"DEL", b"hidden:k"]), b":1\r\n", "{label}");
        // The same after a queued command (the transaction's node is picked).
        assert_eq!(t.cmd(&[b"MULTI"]), b"+OK\r\n");
        assert_eq!(t.cmd(&[b"SET", b"hidden:k", b"1"]), b"+QUEUED\r\n");
        assert_eq!(t.cmd(&[b"READONLY"]), b"+QUEUED\r\n");
        assert_eq!(
            String::from_utf8_lossy(&t.cmd(&[b"EXEC"])),
            format!("*2\r\n+OK\r\n{disabled}"),
            "{label}"
        );
        assert_eq!(t.cmd(&[b"DEL", b"hidden:k"]), b":1\r\n", "{label}");
        // And inside a RESP3 subscriber's transaction, on its subscriber
        // connection (refused there at once before, which aborted it).
        let mut s = env.client();
        assert!(s.cmd(&[b"HELLO", b"3"]).starts_with(b"%"));
        s.cmd(&[b"SELECT", b"3"]);
        assert!(s.cmd(&[b"SUBSCRIBE", b"hidden-ch"]).starts_with(b">3"));
        assert_eq!(s.cmd(&[b"MULTI"]), b"+OK\r\n");
        assert_eq!(s.cmd(&[b"READWRITE"]), b"+QUEUED\r\n", "{label}");
        assert_eq!(s.cmd(&[b"ECHO", b"e"]), b"+QUEUED\r\n");
        assert_eq!(s.cmd(&[b"CLUSTER", b"INFO"]), b"+QUEUED\r\n", "{label}");
        assert_eq!(
            String::from_utf8_lossy(&s.cmd(&[b"EXEC"])),
            format!("*3\r\n{disabled}$1\r\ne\r\n{disabled}"),
            "{label}"
        );
    }
    // Without a key_prefix an unknown subcommand is the node's own error, as
    // a standalone server's.
    let mut c = plain.client();
    assert_eq!(
        c.cmd(&[b"CLUSTER", b"NOSUCH"]),
        direct.cmd(&[b"CLUSTER", b"NOSUCH"])
    );
}

/// A command refused while queueing (here by `deny_commands`) aborts the
/// transaction at EXEC, as in Redis, also when it is the first after MULTI (which
/// a cluster database holds back until a key picks the node).
#[test]
fn a_refusal_while_multi_waits_for_its_node_aborts_the_transaction() {
    let mut config = cluster_config(Cluster::shared(), Some("deny"));
    for db in &mut config.databases {
        db.upstream.deny_commands = vec!["flushall".into()];
    }
    let (_rt, proxy) = Cluster::start_proxy(config);
    let mut c = RawClient::connect(proxy.local_addr());
    assert_eq!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert!(c.cmd(&[b"FLUSHALL"]).starts_with(b"-NOPERM"));
    assert_eq!(c.cmd(&[b"SET", b"denied:k", b"1"]), b"+QUEUED\r\n");
    assert_eq!(
        c.cmd(&[b"EXEC"]),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(c.cmd(&[b"EXISTS", b"denied:k"]), b":0\r\n");
    // Nothing left over: the next transaction runs.
    assert_eq!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"denied:k", b"1"]), b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]), b"*1\r\n+OK\r\n");
    assert_eq!(c.cmd(&[b"DEL", b"denied:k"]), b":1\r\n");
    // As Redis: a WATCH without a key is refused for its arity, which discards
    // the transaction; a WATCH of a key only gets its own refusal.
    assert_eq!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(
        c.cmd(&[b"WATCH"]),
        b"-ERR wrong number of arguments for 'watch' command\r\n"
    );
    assert!(c.cmd(&[b"EXEC"]).starts_with(b"-EXECABORT"));
    assert_eq!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(
        c.cmd(&[b"WATCH", b"k"]),
        b"-ERR WATCH inside MULTI is not allowed\r\n"
    );
    assert_eq!(c.cmd(&[b"EXEC"]), b"*0\r\n");
    // READONLY (which a standalone server refuses: the database looks like one)
    // is queued inside MULTI, as Redis queues it, its refusal an element of
    // EXEC's reply, also as the first command of a MULTI held back.
    let disabled = "-ERR This instance has cluster support disabled\r\n";
    assert_eq!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"READONLY"]), b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"SET", b"ro:k", b"1"]), b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"READWRITE"]), b"+QUEUED\r\n");
    assert_eq!(
        String::from_utf8_lossy(&c.cmd(&[b"EXEC"])),
        format!("*3\r\n{disabled}+OK\r\n{disabled}")
    );
    assert_eq!(c.cmd(&[b"DEL", b"ro:k"]), b":1\r\n");
    // A RESP2 subscriber's EXEC: Redis's EXECABORT, in or out of MULTI.
    assert!(c
        .cmd(&[b"SUBSCRIBE", b"x"])
        .starts_with(b"*3\r\n$9\r\nsubscribe"));
    assert_eq!(
        String::from_utf8_lossy(&c.cmd(&[b"EXEC"])),
        "-EXECABORT Transaction discarded because of: Can't execute 'exec': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
    );
}

/// Random command sequences (`support::commands`) through a `key_prefix`
/// database on the cluster get the same replies, byte for byte, as from one
/// standalone Redis: keys of every slot for the commands that split (`MGET`,
/// `MSET`, `DEL` …) and the keyless ones (`KEYS`, `DBSIZE`, whole `SCAN`
/// loops), one hash tag for other multi-key commands and transactions (others
/// get `-CROSSSLOT`, as from Redis Cluster), WATCH blocks with keys of any node
/// before MULTI; RESP2 and RESP3.
#[test]
fn random_command_sequences_match_a_standalone_redis() {
    let env = start(Some("diff"));
    let redis = support::RedisServer::start();
    for seed in 100..=111u64 {
        let protocol: &[u8] = if seed % 2 == 0 { b"3" } else { b"2" };
        let mut d = RawClient::connect(redis.addr());
        let mut p = env.client();
        for c in [&mut d, &mut p] {
            assert!(!c.cmd(&[b"HELLO", protocol]).starts_with(b"-"));
        }
        if let Err(e) = support::commands::differ(&mut [d, p], seed, 150, true) {
            panic!("{e}");
        }
    }
}

/// Between WATCH and MULTI the client reads and writes any key, as on a
/// standalone server: a key of another node than the watched one's is not
/// answered that node's `-MOVED` (the watching connection is pinned to one
/// node). The client's own write to the watched key aborts EXEC, as Redis does.
#[test]
fn commands_between_watch_and_multi_reach_any_node() {
    let env = start(Some("watch"));
    let mut c = env.client();
    // Keys on every node (slots spread over the three primaries).
    let keys: Vec<String> = (0..12).map(|i| format!("w{i}")).collect();
    for k in &keys {
        assert_eq!(c.cmd(&[b"SET", k.as_bytes(), b"v"]), b"+OK\r\n");
    }
    assert_eq!(c.cmd(&[b"WATCH", b"{acct}balance"]), b"+OK\r\n");
    for k in &keys {
        assert_eq!(c.cmd(&[b"GET", k.as_bytes()]), b"$1\r\nv\r\n", "GET {k}");
    }
    assert_eq!(c.cmd(&[b"DBSIZE"]), b":12\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"{acct}balance", b"10"]), b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]), b"*1\r\n+OK\r\n");
    // The client's own write between WATCH and EXEC: the transaction must not run.
    assert_eq!(c.cmd(&[b"WATCH", b"{acct}balance"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"w3", b"x"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"{acct}balance", b"11"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"INCR", b"{acct}balance"]), b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]), b"*-1\r\n");
    assert_eq!(c.cmd(&[b"GET", b"{acct}balance"]), b"$2\r\n11\r\n");
    assert_eq!(c.cmd(&[b"FLUSHDB"]), b"+OK\r\n");
}

/// Inside MULTI a command that acts on every node outside it (`KEYS`, `SCAN`,
/// `DBSIZE`, `FLUSHDB`, `SCRIPT LOAD`, `CONFIG SET` …) would run on the
/// transaction's one node: refused by name, and the transaction is aborted, so
/// nothing partial (a third of the keys flushed) happens. `PUBLISH` runs.
#[test]
fn commands_on_every_node_are_refused_inside_multi() {
    for prefixes in [None, Some("every")] {
        let env = start(prefixes);
        let mut c = env.client();
        let refused: &[&[&[u8]]] = &[
            &[b"KEYS", b"*"],
            &[b"SCAN", b"0"],
            &[b"FLUSHDB"],
            &[b"DBSIZE"],
            &[b"SCRIPT", b"LOAD", b"return 1"],
            &[b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction"],
        ];
        for cmd in refused {
            if cmd[0] == b"FLUSHDB" && prefixes.is_none() {
                // (Were it run, a node of the shared cluster would lose every key.)
                continue;
            }
            assert_eq!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
            assert_eq!(c.cmd(&[b"SET", b"{every}k", b"1"]), b"+QUEUED\r\n");
            let r = c.cmd(cmd);
            let name = String::from_utf8_lossy(cmd[0]);
            assert!(
                r.starts_with(
                    format!(
                        "-ERR '{name}' inside MULTI is not supported on a Redis Cluster database"
                    )
                    .as_bytes()
                ),
                "{prefixes:?} {name}: {}",
                String::from_utf8_lossy(&r)
            );
            assert_eq!(
                c.cmd(&[b"EXEC"]),
                b"-EXECABORT Transaction discarded because of previous errors.\r\n"
            );
            assert_eq!(c.cmd(&[b"EXISTS", b"{every}k"]), b":0\r\n");
        }
        // Sent alone, MULTI waits for a key to pick the node: refused there too.
        assert_eq!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
        assert!(c
            .cmd(&[b"KEYS", b"*"])
            .starts_with(b"-ERR 'KEYS' inside MULTI"));
        assert!(c.cmd(&[b"EXEC"]).starts_with(b"-EXECABORT"));
        assert_eq!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
        assert_eq!(
            c.cmd(&[b"PUBLISH", b"every-multi-ch", b"m"]),
            b"+QUEUED\r\n"
        );
        assert_eq!(c.cmd(&[b"EXEC"]), b"*1\r\n:0\r\n");
    }
}

/// What changes "the server" (its settings, its users, its slow log) reaches
/// every node of the cluster, replicas too, so the database behaves as one
/// server, also after a failover: `CONFIG SET` and `ACL SETUSER`/`DELUSER`
/// through the proxy are seen on each node directly.
#[test]
fn settings_and_users_reach_every_node() {
    let cluster = Cluster::shared();
    let env = start(None);
    let mut c = env.client();
    let on_every_node = |args: &[&[u8]]| -> Vec<Vec<u8>> {
        cluster
            .nodes()
            .iter()
            .map(|n| n.client().cmd(args))
            .collect()
    };
    let max_len =
        |v: &str| format!("*2\r\n$15\r\nslowlog-max-len\r\n${}\r\n{v}\r\n", v.len()).into_bytes();
    let before = on_every_node(&[b"CONFIG", b"GET", b"slowlog-max-len"]);
    assert!(before.iter().all(|r| *r == max_len("128")), "{before:?}");
    assert_eq!(
        c.cmd(&[b"CONFIG", b"SET", b"slowlog-max-len", b"129"]),
        b"+OK\r\n"
    );
    let during = on_every_node(&[b"CONFIG", b"GET", b"slowlog-max-len"]);
    assert_eq!(
        c.cmd(&[b"CONFIG", b"SET", b"slowlog-max-len", b"128"]),
        b"+OK\r\n"
    );
    assert_eq!(during.len(), 6, "3 primaries and 3 replicas");
    assert!(during.iter().all(|r| *r == max_len("129")), "{during:?}");
    let after = on_every_node(&[b"CONFIG", b"GET", b"slowlog-max-len"]);
    assert!(after.iter().all(|r| *r == max_len("128")), "{after:?}");

    assert_eq!(
        c.cmd(&[
            b"ACL",
            b"SETUSER",
            b"everynode",
            b"on",
            b">pw",
            b"~*",
            b"+get"
        ]),
        b"+OK\r\n"
    );
    let users = on_every_node(&[b"ACL", b"USERS"]);
    assert_eq!(c.cmd(&[b"ACL", b"DELUSER", b"everynode"]), b":1\r\n");
    assert!(
        users
            .iter()
            .all(|r| r.windows(11).any(|w| w == b"\r\neverynode")),
        "{users:?}"
    );
    let users = on_every_node(&[b"ACL", b"USERS"]);
    assert!(
        users
            .iter()
            .all(|r| !r.windows(9).any(|w| w == b"everynode")),
        "{users:?}"
    );
}

/// `SLOWLOG GET` shows what every node logged, newest first, as one server's
/// log would (`SLOWLOG LEN` counts them all): here two GETs of keys on two
/// primaries, logged with the threshold at 0 (every node, through the proxy).
#[test]
fn the_slow_log_is_every_nodes() {
    let cluster = Cluster::shared();
    let env = start(None);
    let mut c = env.client();
    let mut keys: Vec<String> = Vec::new();
    let mut nodes: Vec<u16> = Vec::new();
    for i in 0..200 {
        let k = format!("slowlog:{i}");
        let n = serving(cluster, k.as_bytes());
        if !nodes.contains(&n) {
            nodes.push(n);
            keys.push(k);
        }
        if keys.len() == 2 {
            break;
        }
    }
    assert_eq!(
        c.cmd(&[b"CONFIG", b"SET", b"slowlog-log-slower-than", b"0"]),
        b"+OK\r\n"
    );
    // Other tests share the cluster: their commands are logged too, so the
    // entries are looked for at once, a few times at most.
    let mut seen = false;
    for _ in 0..5 {
        for k in &keys {
            c.cmd(&[b"GET", k.as_bytes()]);
        }
        let log = String::from_utf8_lossy(&c.cmd(&[b"SLOWLOG", b"GET", b"-1"])).into_owned();
        if keys.iter().all(|k| log.contains(&format!("\r\n{k}\r\n"))) {
            seen = true;
            break;
        }
    }
    let len = c.cmd(&[b"SLOWLOG", b"LEN"]);
    assert_eq!(
        c.cmd(&[b"CONFIG", b"SET", b"slowlog-log-slower-than", b"10000"]),
        b"+OK\r\n"
    );
    assert!(seen, "both GETs in the proxy's SLOWLOG GET");
    let len: i64 = String::from_utf8_lossy(&len[1..len.len() - 2])
        .parse()
        .expect("an integer");
    assert!(len >= 2, "SLOWLOG LEN {len}");
}

/// Persistence and pauses act on "the server" the client sees, i.e. every node:
/// `BGSAVE` makes every primary save its keys, `LASTSAVE` is the oldest of their
/// saves (the whole keyspace was saved by then), and `CLIENT PAUSE … WRITE` holds
/// writes on every primary, not on the one node a keyless command would reach.
#[test]
fn saves_and_pauses_reach_every_primary() {
    let cluster = Cluster::shared();
    let env = start(None);
    let mut c = env.client();
    let ports = primaries(cluster);
    assert_eq!(ports.len(), 3);
    let lastsave = |p: u16| -> i64 {
        let r = RawClient::connect(("127.0.0.1", p)).cmd(&[b"LASTSAVE"]);
        String::from_utf8_lossy(&r)
            .trim()
            .trim_start_matches(':')
            .parse()
            .unwrap()
    };
    let before: Vec<i64> = ports.iter().map(|&p| lastsave(p)).collect();
    // LASTSAVE counts seconds.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(c.cmd(&[b"BGSAVE"]), b"+Background saving started\r\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let now: Vec<i64> = ports.iter().map(|&p| lastsave(p)).collect();
        if now.iter().zip(&before).all(|(a, b)| a > b) {
            break now;
        }
        assert!(Instant::now() < deadline, "saved: {before:?} -> {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let oldest = after.iter().min().unwrap();
    assert_eq!(c.cmd(&[b"LASTSAVE"]), format!(":{oldest}\r\n").into_bytes());

    // A key of each primary, written straight to it while the proxy's pause runs.
    let keys: Vec<(u16, String)> = ports
        .iter()
        .map(|&p| {
            let k = (0..500)
                .map(|i| format!("pause:{i}"))
                .find(|k| serving(cluster, k.as_bytes()) == p)
                .unwrap();
            (p, k)
        })
        .collect();
    assert_eq!(c.cmd(&[b"CLIENT", b"PAUSE", b"500", b"WRITE"]), b"+OK\r\n");
    let paused = Instant::now();
    let waits: Vec<Duration> = keys
        .into_iter()
        .map(|(p, k)| {
            std::thread::spawn(move || {
                let mut d = RawClient::connect(("127.0.0.1", p));
                assert_eq!(d.cmd(&[b"SET", k.as_bytes(), b"1"]), b"+OK\r\n");
                paused.elapsed()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(
        waits.iter().all(|w| *w >= Duration::from_millis(300)),
        "every primary held the write: {waits:?}"
    );
}

/// Keyspace notifications of every key reach a subscriber, although Redis Cluster
/// sends each only to the subscribers of the node holding the key (the proxy
/// repeats such subscriptions on the other primaries); a `PUBLISH`, which the
/// cluster bus brings to every node, still arrives once. RESP2 with a pattern,
/// RESP3 with a keyevent channel, on a database with a key_prefix (names seen
/// without it).
#[test]
fn keyspace_notifications_of_every_node_reach_a_subscriber() {
    let cluster = Cluster::shared();
    let env = start(Some("ksn-"));
    let mut admin = env.client();
    assert_eq!(
        admin.cmd(&[b"CONFIG", b"SET", b"notify-keyspace-events", b"KE$"]),
        b"+OK\r\n"
    );
    let n = 30;
    // Keys of every primary.
    let owners: HashSet<u16> = (0..n)
        .map(|i| serving(cluster, format!("ksn-main:note:{i}").as_bytes()))
        .collect();
    assert_eq!(owners.len(), 3, "{owners:?}");

    let mut sub = env.client();
    sub.send(&support::resp_cmd(&[b"PSUBSCRIBE", b"__keyspace@0__:*"]));
    sub.send(&support::resp_cmd(&[b"SUBSCRIBE", b"ksn-news"]));
    assert!(sub.read_reply().starts_with(b"*3\r\n$10\r\npsubscribe\r\n"));
    assert!(sub.read_reply().starts_with(b"*3\r\n$9\r\nsubscribe\r\n"));
    let mut sub3 = env.client();
    assert!(sub3.cmd(&[b"HELLO", b"3"]).starts_with(b"%"));
    assert!(sub3
        .cmd(&[b"SUBSCRIBE", b"__keyevent@0__:set"])
        .starts_with(b">3\r\n$9\r\nsubscribe\r\n"));
    // A confirmed subscription is repeated on the other primaries at once; a
    // PING through each subscriber connection orders the writes after it.
    for s in [&mut sub, &mut sub3] {
        s.send(&support::resp_cmd(&[b"PING", b"ready"]));
        let pong = s.read_reply();
        assert!(pong.windows(5).any(|w| w == b"ready"), "{pong:?}");
    }
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..n {
        let key = format!("note:{i}");
        assert_eq!(admin.cmd(&[b"SET", key.as_bytes(), b"v"]), b"+OK\r\n");
    }
    assert_eq!(admin.cmd(&[b"PUBLISH", b"ksn-news", b"hello"]), b":1\r\n");

    let mut keys: Vec<String> = Vec::new();
    let mut news = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while keys.len() < n || news < 1 {
        assert!(Instant::now() < deadline, "got {keys:?}, news {news}");
        let f = String::from_utf8(sub.read_reply()).unwrap();
        if f.contains("\r\nmessage\r\n") {
            assert!(f.ends_with("\r\nhello\r\n"), "{f}");
            news += 1;
        } else {
            let key = f.split("__keyspace@0__:").nth(2).unwrap_or("");
            keys.push(key.split("\r\n").next().unwrap_or("").to_string());
        }
    }
    let mut events: Vec<String> = Vec::new();
    while events.len() < n {
        assert!(Instant::now() < deadline, "RESP3 got {events:?}");
        let f = String::from_utf8(sub3.read_reply()).unwrap();
        assert!(f.starts_with(">3\r\n$7\r\nmessage\r\n"), "{f}");
        events.push(f.rsplit("\r\n").nth(1).unwrap_or("").to_string());
    }
    // Nothing twice.
    sub.assert_no_reply(Duration::from_millis(300));
    sub3.assert_no_reply(Duration::from_millis(100));
    assert_eq!(
        admin.cmd(&[b"CONFIG", b"SET", b"notify-keyspace-events", b""]),
        b"+OK\r\n"
    );
    let want: HashSet<String> = (0..n).map(|i| format!("note:{i}")).collect();
    for (got, label) in [(keys, "keyspace"), (events, "keyevent")] {
        assert_eq!(got.len(), n, "{label}: {got:?}");
        assert_eq!(got.into_iter().collect::<HashSet<_>>(), want, "{label}");
    }
}

/// `MONITOR` shows the commands of every primary, as a standalone server's shows
/// all of its own: each node's stream joins the client's, each command once.
#[test]
fn monitor_shows_the_commands_of_every_primary() {
    let cluster = Cluster::shared();
    let env = start(None);
    // A key of each primary.
    let keys: Vec<String> = primaries(cluster)
        .into_iter()
        .map(|p| {
            (0..1000)
                .map(|i| format!("montest:{i}"))
                .find(|k| serving(cluster, k.as_bytes()) == p)
                .unwrap()
        })
        .collect();
    let mut mon = env.client();
    assert_eq!(mon.cmd(&[b"MONITOR"]), b"+OK\r\n");
    // The other nodes are asked once the home node accepted: a GET through
    // the proxy until each key's shows.
    let mut c = env.client();
    let mut seen: Vec<usize> = vec![0; keys.len()];
    mon.set_timeout(Duration::from_millis(200));
    // A GET of each key, and the monitor's lines read until none comes for
    // 200 ms: how many of them showed each GET.
    let mut round = |seen: &mut Vec<usize>| {
        for k in &keys {
            c.cmd(&[b"GET", k.as_bytes()]);
        }
        while let Ok(line) = mon.try_read_reply() {
            let line = String::from_utf8_lossy(&line).to_string();
            for (i, k) in keys.iter().enumerate() {
                seen[i] += usize::from(line.contains(&format!("\"GET\" \"{k}\"")));
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.contains(&0) {
        assert!(Instant::now() < deadline, "seen {seen:?}");
        round(&mut seen);
    }
    // Each GET once.
    let mut once = vec![0; keys.len()];
    round(&mut once);
    assert_eq!(once, vec![1; keys.len()], "{keys:?}");
}

/// `ACL LOG` shows the refusals of every node (each logs its own), the most
/// recent first, and `ACL LOG RESET` clears every node's.
#[test]
fn the_acl_log_is_every_nodes() {
    let cluster = Cluster::shared();
    let env = start(None);
    let mut c = env.client();
    let names: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| {
            let user = format!("acllog-{}", n.port());
            // Apart in time, so that their ages order them.
            std::thread::sleep(Duration::from_millis(20));
            let r = n.client().cmd(&[b"AUTH", user.as_bytes(), b"wrong"]);
            assert!(r.starts_with(b"-WRONGPASS"), "{r:?}");
            user
        })
        .collect();
    let log = String::from_utf8_lossy(&c.cmd(&[b"ACL", b"LOG", b"1000"])).to_string();
    for user in &names {
        assert!(log.contains(&format!("\r\n{user}\r\n")), "{user} in {log}");
    }
    // The most recent first: the last node's refusal before the first's.
    let at = |u: &String| log.find(&format!("\r\n{u}\r\n")).unwrap();
    assert!(at(&names[names.len() - 1]) < at(&names[0]), "{log}");
    assert_eq!(c.cmd(&[b"ACL", b"LOG", b"RESET"]), b"+OK\r\n");
    for (n, user) in cluster.nodes().iter().zip(&names) {
        let own = n.client().cmd(&[b"ACL", b"LOG", b"1000"]);
        assert!(
            !String::from_utf8_lossy(&own).contains(user.as_str()),
            "{user} still logged"
        );
    }
}

/// A one-node cluster of the test's own, serving every slot, and a proxy on it
/// whose databases have `connect_timeout` 1 s and `command_timeout` 5 s.
fn one_node_cluster() -> (support::RedisServer, tokio::runtime::Runtime, Proxy) {
    let node = support::cluster::start_node();
    let mut c = node.client();
    assert_eq!(
        c.cmd(&[b"CLUSTER", b"ADDSLOTSRANGE", b"0", b"16383"]),
        b"+OK\r\n"
    );
    wait_cluster_state(&mut c, "ok");
    let mut config = support::cluster::proxy_config_on(&node, &[node.port()]);
    for db in &mut config.databases {
        db.upstream.connect_timeout = Duration::from_secs(1);
        db.upstream.command_timeout = Duration::from_secs(5);
    }
    let (rt, proxy) = Cluster::start_proxy(config);
    (node, rt, proxy)
}

/// Waits (at most 10 s) until `CLUSTER INFO` says `cluster_state:{state}`.
fn wait_cluster_state(c: &mut RawClient, state: &str) {
    let want = format!("cluster_state:{state}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = c.cmd(&[b"CLUSTER", b"INFO"]);
        if String::from_utf8_lossy(&info).contains(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "no {want} within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A cluster that answers `-CLUSTERDOWN`: the proxy holds the request and sends
/// it again after pauses (the cluster may be electing a new primary), but no
/// longer than the bound of any retry, `connect_timeout + command_timeout` (6 s
/// here) after it was sent; then the client gets Redis's own error. A cluster
/// serving again within the bound answers the held requests: on the shared
/// connections (`GET`) and on an exclusive one (`WATCH`).
#[test]
fn a_cluster_that_is_down_is_waited_for_within_the_retry_bound() {
    let (node, _rt, proxy) = one_node_cluster();
    let mut admin = node.client();
    let client = || {
        let mut c = RawClient::connect(proxy.local_addr());
        c.set_timeout(Duration::from_secs(20));
        c
    };
    let mut c = client();
    assert_eq!(c.cmd(&[b"SET", b"down:k", b"v"]), b"+OK\r\n");
    // One slot unserved (not the key's): with full coverage required, the node
    // answers every key with -CLUSTERDOWN.
    let slot = redis_sidecar::cluster::key_slot(b"down:other");
    assert_ne!(slot, redis_sidecar::cluster::key_slot(b"down:k"));
    let slot = slot.to_string();
    assert_eq!(
        admin.cmd(&[b"CLUSTER", b"DELSLOTS", slot.as_bytes()]),
        b"+OK\r\n"
    );
    wait_cluster_state(&mut admin, "fail");
    assert_eq!(
        admin.cmd(&[b"GET", b"down:k"]),
        b"-CLUSTERDOWN The cluster is down\r\n",
        "what Redis itself answers"
    );

    let sent = Instant::now();
    let reply = c.cmd(&[b"GET", b"down:k"]);
    let waited = sent.elapsed();
    assert_eq!(reply, b"-CLUSTERDOWN The cluster is down\r\n");
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(7),
        "held, then answered by the bound (6 s): {waited:?}"
    );

    // Serving again 4.5 s after the requests were sent: they run.
    let restore = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(4500));
        assert_eq!(
            admin.cmd(&[b"CLUSTER", b"ADDSLOTS", slot.as_bytes()]),
            b"+OK\r\n"
        );
        wait_cluster_state(&mut admin, "ok");
    });
    let held = |args: &'static [&'static [u8]]| {
        let mut c = client();
        std::thread::spawn(move || {
            let sent = Instant::now();
            let reply = c.cmd(args);
            (
                String::from_utf8_lossy(&reply).into_owned(),
                sent.elapsed(),
                c,
            )
        })
    };
    let get = held(&[b"GET", b"down:k"]);
    let watch = held(&[b"WATCH", b"down:k"]);
    let (got, get_waited, _) = get.join().expect("GET");
    let (watched, watch_waited, mut w) = watch.join().expect("WATCH");
    restore.join().expect("restore");
    assert_eq!(
        got, "$1\r\nv\r\n",
        "GET held until the cluster served ({get_waited:?})"
    );
    assert_eq!(
        watched, "+OK\r\n",
        "WATCH held until the cluster served ({watch_waited:?})"
    );
    for waited in [get_waited, watch_waited] {
        assert!(waited >= Duration::from_millis(4300), "{waited:?}");
    }
    assert_eq!(w.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(w.cmd(&[b"DEL", b"down:k"]), b"+QUEUED\r\n");
    assert_eq!(w.cmd(&[b"EXEC"]), b"*1\r\n:1\r\n");
    // Operators see the waits: every resend after a pause counted, at least
    // three for each of the three requests (pauses of 0.5 s and 1 s before 4.5 s).
    let info = String::from_utf8_lossy(&c.cmd(&[b"PROXY", b"INFO", b"databases"])).into_owned();
    let again: u64 = info
        .lines()
        .find(|l| l.starts_with("db0:"))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("again=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no again= in {info}"));
    assert!(again >= 9, "again={again}");
}

/// A two-node cluster of the test's own (slots 0-8191 on the first node, the
/// rest on the second), each node answering `-BUSY` 100 ms into a script, and a
/// proxy with one shared connection per node (every session on it).
fn two_node_cluster() -> ([support::RedisServer; 2], tokio::runtime::Runtime, Proxy) {
    let nodes = [
        support::cluster::start_node(),
        support::cluster::start_node(),
    ];
    let (mut a, mut b) = (nodes[0].client(), nodes[1].client());
    for (c, range) in [
        (&mut a, [&b"0"[..], b"8191"]),
        (&mut b, [b"8192", b"16383"]),
    ] {
        assert_eq!(
            c.cmd(&[b"CLUSTER", b"ADDSLOTSRANGE", range[0], range[1]]),
            b"+OK\r\n"
        );
        let set = [&b"CONFIG"[..], b"SET", b"busy-reply-threshold", b"100"];
        assert_eq!(c.cmd(&set), b"+OK\r\n");
    }
    let port = nodes[1].port().to_string();
    assert_eq!(
        a.cmd(&[b"CLUSTER", b"MEET", b"127.0.0.1", port.as_bytes()]),
        b"+OK\r\n"
    );
    wait_cluster_state(&mut a, "ok");
    wait_cluster_state(&mut b, "ok");
    let ports = [nodes[0].port(), nodes[1].port()];
    let mut config = support::cluster::proxy_config_on(&nodes[0], &ports);
    for db in &mut config.databases {
        db.upstream.mux_connections = 1;
    }
    let (rt, proxy) = Cluster::start_proxy(config);
    (nodes, rt, proxy)
}

/// A key whose slot is served by the first (`false`) or second (`true`) node of
/// [`two_node_cluster`].
fn key_on(node: &support::RedisServer, second: bool) -> String {
    let mut c = node.client();
    (0..1000)
        .map(|i| format!("held:{i}"))
        .find(|k| {
            let r = c.cmd(&[b"CLUSTER", b"KEYSLOT", k.as_bytes()]);
            let slot: u16 = String::from_utf8_lossy(&r[1..]).trim().parse().unwrap();
            (slot >= 8192) == second
        })
        .unwrap()
}

/// A long script on one node of a cluster, and a write a pause holds back there,
/// hold up only their own client, as on Redis: the other clients sharing the
/// node's connection get what Redis answers its other connections (`-BUSY`
/// for that node's keys, replies for the other node's, in one pipeline too,
/// and reads during a pause), `SCRIPT KILL` reaches the node running the script
/// (not the first seed), and every client's pipeline stays in order afterwards.
#[test]
fn a_long_script_or_a_held_write_on_one_node_holds_up_only_its_client() {
    let (nodes, _rt, proxy) = two_node_cluster();
    let (k1, k2) = (key_on(&nodes[0], false), key_on(&nodes[0], true));
    let (k1, k2) = (k1.as_bytes(), k2.as_bytes());
    let addr = proxy.local_addr();
    let mut script = RawClient::connect(addr);
    let mut other = RawClient::connect(addr);
    let mut other5 = RawClient::connect(addr);
    assert_eq!(other5.cmd(&[b"SELECT", b"5"]), b"+OK\r\n");
    for c in [&mut other, &mut other5] {
        assert_eq!(c.cmd(&[b"SET", k1, b"v"]), b"+OK\r\n");
        assert_eq!(c.cmd(&[b"SET", k2, b"v"]), b"+OK\r\n");
        // Waiting for the script would take 30 s.
        c.set_timeout(Duration::from_secs(3));
    }
    script.send(&support::resp_cmd(&[
        b"EVAL",
        b"while true do end",
        b"1",
        k2,
    ]));
    std::thread::sleep(Duration::from_millis(300));
    let busy = nodes[1].client().cmd(&[b"GET", k2]);
    assert!(busy.starts_with(b"-BUSY"), "{busy:?}");
    for c in [&mut other, &mut other5] {
        assert_eq!(c.cmd(&[b"GET", k2]), busy);
        assert_eq!(c.cmd(&[b"GET", k1]), b"$1\r\nv\r\n");
        let both = [
            support::resp_cmd(&[b"GET", k1]),
            support::resp_cmd(&[b"GET", k2]),
        ]
        .concat();
        c.send(&both);
        assert_eq!(c.read_replies(2), [b"$1\r\nv\r\n".to_vec(), busy.clone()]);
    }
    assert_eq!(other.cmd(&[b"SCRIPT", b"KILL"]), b"+OK\r\n");
    let killed = script.read_reply();
    assert!(killed.starts_with(b"-ERR"), "{killed:?}");
    assert!(other.cmd(&[b"SCRIPT", b"KILL"]).starts_with(b"-NOTBUSY"));

    // A write held back by a pause made on the node itself.
    let mut direct = nodes[1].client();
    assert_eq!(
        direct.cmd(&[b"CLIENT", b"PAUSE", b"10000", b"WRITE"]),
        b"+OK\r\n"
    );
    let held = [
        support::resp_cmd(&[b"SET", k2, b"after"]),
        support::resp_cmd(&[b"GET", k2]),
    ]
    .concat();
    script.send(&held);
    std::thread::sleep(Duration::from_millis(300));
    for c in [&mut other, &mut other5] {
        assert_eq!(c.cmd(&[b"GET", k2]), b"$1\r\nv\r\n");
        assert_eq!(c.cmd(&[b"SET", k1, b"w"]), b"+OK\r\n");
    }
    script.assert_no_reply(Duration::from_millis(100));
    assert_eq!(direct.cmd(&[b"CLIENT", b"UNPAUSE"]), b"+OK\r\n");
    assert_eq!(
        script.read_replies(2),
        [b"+OK\r\n".to_vec(), b"$5\r\nafter\r\n".to_vec()]
    );
    // Everyone goes on, each in order.
    for c in [&mut script, &mut other, &mut other5] {
        let pipeline = [
            support::resp_cmd(&[b"SET", k2, b"x"]),
            support::resp_cmd(&[b"GET", k2]),
            support::resp_cmd(&[b"SET", k1, b"y"]),
            support::resp_cmd(&[b"MGET", k1, k2]),
            support::resp_cmd(&[b"EVAL", b"return 7", b"0"]),
        ]
        .concat();
        c.send(&pipeline);
        assert_eq!(
            c.read_replies(5),
            [
                b"+OK\r\n".to_vec(),
                b"$1\r\nx\r\n".to_vec(),
                b"+OK\r\n".to_vec(),
                b"*2\r\n$1\r\ny\r\n$1\r\nx\r\n".to_vec(),
                b":7\r\n".to_vec()
            ]
        );
    }
}

/// A MULTI the proxy answered itself (deferred until a key names the node) whose
/// connection then cannot be had (the node's pool is exhausted): the client was
/// told `+OK`, so the transaction is not silently gone. Its next commands are
/// queued by the proxy and never run; EXEC aborts. (Before, they ran at once.)
#[test]
fn a_deferred_multi_whose_connection_cannot_be_had_runs_nothing_outside_it() {
    let mut config = cluster_config(Cluster::shared(), None);
    config.databases[0].upstream.pool_size = 1;
    config.databases[0].upstream.connect_timeout = Duration::from_millis(300);
    let (_rt, proxy) = Cluster::start_proxy(config);
    let mut a = RawClient::connect(proxy.local_addr());
    let mut b = RawClient::connect(proxy.local_addr());
    // A holds the node's one exclusive connection.
    assert_eq!(a.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(a.cmd(&[b"SET", b"{lostpool}a", b"1"]), b"+QUEUED\r\n");
    assert_eq!(b.cmd(&[b"MULTI"]), b"+OK\r\n");
    let r = b.cmd(&[b"SET", b"{lostpool}b", b"2"]);
    let t = String::from_utf8_lossy(&r).into_owned();
    assert!(t.starts_with("-UPSTREAM ") && t.contains("pool"), "{t}");
    assert_eq!(b.cmd(&[b"SET", b"{lostpool}c", b"3"]), b"+QUEUED\r\n");
    assert_eq!(
        b.cmd(&[b"EXEC"]),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(a.cmd(&[b"EXEC"]), b"*1\r\n+OK\r\n");
    assert_eq!(
        b.cmd(&[b"MGET", b"{lostpool}a", b"{lostpool}b", b"{lostpool}c"]),
        b"*3\r\n$1\r\n1\r\n$-1\r\n$-1\r\n"
    );
    // The session goes on: its next transaction runs.
    assert_eq!(b.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(b.cmd(&[b"DEL", b"{lostpool}a"]), b"+QUEUED\r\n");
    assert_eq!(b.cmd(&[b"EXEC"]), b"*1\r\n:1\r\n");
}
