//! One test body, two upstreams: a standalone Redis and a Redis Cluster (issue 10: "the
//! existing command, pipeline, transaction, blocking, pub/sub and binary tests run
//! against a cluster-backed database too").
//!
//! * [`Upstream`]: the kind. [`upstream_tests!`](crate::upstream_tests) turns
//!   `async fn body(kind: Upstream)` into two tests, `body::standalone` and
//!   `body::cluster` (`cargo test cluster` runs every cluster variant).
//! * [`Backend`]: one test's upstream. [`Backend::config`] gives the 11 databases on it,
//!   [`Backend::reference`] a standalone Redis connection to compare replies with (it
//!   starts empty), [`Backend::direct`] what the proxy's client db `n` holds, read
//!   straight from the upstream.
//!
//! Standalone: a [`RedisServer`] of the test's own; client db `n` is upstream db `n`;
//! the reference is db 15 of the same server (the proxy never touches it).
//!
//! Cluster: the binary's shared cluster ([`Cluster::shared`]); every database is
//! upstream db 0 with a `key_prefix` of the test's own (`u<N>:<name>:`), so the tests
//! of one binary keep apart while they share the cluster; the reference is db 15 of a
//! standalone server of the test's own, because the client should see one standalone
//! Redis. Channels are not prefixed: tests that count subscribers or blocked clients
//! node-wide use [`Backend::start_alone`].

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use redis_sidecar::config::Config;

use super::cluster::{Cluster, NODES};
use super::{parse_info, proxy_config, resp_frame_len, AsyncRawClient, RedisServer};

/// The db of the reference connection (outside the proxy's 0..=10).
pub const REFERENCE_DB: &[u8] = b"15";

/// Which upstream a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// One `redis-server` of the test's own.
    Standalone,
    /// The binary's shared 6-node cluster, behind per-test key prefixes.
    Cluster,
}

impl Upstream {
    /// How many servers hold the keyspace (what a whole-keyspace `SCAN` walks).
    pub fn primaries(self) -> usize {
        match self {
            Upstream::Standalone => 1,
            Upstream::Cluster => NODES / 2,
        }
    }

    /// Replicas of each primary.
    pub fn replicas(self) -> usize {
        match self {
            Upstream::Standalone => 0,
            Upstream::Cluster => NODES / self.primaries() - 1,
        }
    }

    /// `key` for a test that uses it with other keys in one transaction or one
    /// command: on a cluster with the hash tag `{t}` (Redis Cluster itself refuses
    /// keys of several slots there), standalone as it is.
    pub fn tagged(self, key: &str) -> String {
        match self {
            Upstream::Standalone => key.to_string(),
            Upstream::Cluster => format!("{{t}}{key}"),
        }
    }

    /// `reply` to `args` as it may be compared with the reference's. Standalone: as is.
    /// Cluster, where the reference is another server: a `SCAN` reply without its
    /// cursor (the proxy's folds in the node, and an empty page may have a non-zero
    /// one), `SMEMBERS` members sorted (a hash table's order is its process's own).
    pub fn comparable(self, args: &[&[u8]], reply: &[u8]) -> Vec<u8> {
        let name = args.first().map(|a| a.to_ascii_uppercase());
        match (self, name.as_deref()) {
            (Upstream::Cluster, Some(b"SCAN")) => match elements(reply) {
                Some(parts) if parts.len() == 2 => parts[1].to_vec(),
                _ => reply.to_vec(),
            },
            (Upstream::Cluster, Some(b"SMEMBERS")) => match elements(reply) {
                Some(mut parts) => {
                    parts.sort();
                    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
                    out.extend(parts.concat());
                    out
                }
                None => reply.to_vec(),
            },
            _ => reply.to_vec(),
        }
    }

    /// [`comparable`](Self::comparable) for `redis-cli` output: a `SCAN`'s first line
    /// (the cursor) dropped, `SMEMBERS` lines sorted.
    pub fn comparable_cli(self, args: &[&str], out: &str) -> String {
        let name = args.first().map(|a| a.to_ascii_uppercase());
        match (self, name.as_deref()) {
            (Upstream::Cluster, Some("SCAN")) => out
                .split_once('\n')
                .map_or(out, |(_, rest)| rest)
                .to_string(),
            (Upstream::Cluster, Some("SMEMBERS")) => {
                let mut lines: Vec<&str> = out.lines().collect();
                lines.sort_unstable();
                lines.iter().map(|l| format!("{l}\n")).collect()
            }
            _ => out.to_string(),
        }
    }
}

/// The element frames of an array reply (`None`: not a whole array).
fn elements(reply: &[u8]) -> Option<Vec<&[u8]>> {
    let header_end = reply.windows(2).position(|w| w == b"\r\n")?;
    let n: usize = std::str::from_utf8(reply.get(1..header_end)?)
        .ok()?
        .parse()
        .ok()?;
    if reply.first() != Some(&b'*') {
        return None;
    }
    let mut rest = &reply[header_end + 2..];
    let mut parts = Vec::with_capacity(n);
    for _ in 0..n {
        let len = resp_frame_len(rest).ok()??;
        parts.push(&rest[..len]);
        rest = &rest[len..];
    }
    rest.is_empty().then_some(parts)
}

/// Makes a `standalone` and a `cluster` test (multi-thread tokio runtime, 2 workers)
/// of each `async fn NAME(kind: Upstream)`, in a module `NAME`.
/// `upstream_tests!(standalone_only: NAME, …)` makes only the `standalone` one (for a
/// body whose cluster run waits on a known bug: say which next to it).
#[macro_export]
macro_rules! upstream_tests {
    (standalone_only: $($body:ident),* $(,)?) => {$(
        mod $body {
            use $crate::support::upstream::Upstream;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                super::$body(Upstream::Standalone).await
            }
        }
    )*};
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            use $crate::support::upstream::Upstream;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                super::$body(Upstream::Standalone).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$body(Upstream::Cluster).await
            }
        }
    )*};
}

/// Numbers the cluster tests' key prefixes within the process.
static NEXT_TAG: AtomicUsize = AtomicUsize::new(0);

/// Held by [`Backend::start_alone`] cluster tests, one at a time per binary.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's upstream (see the module docs).
pub struct Backend {
    kind: Upstream,
    /// Standalone: the upstream (and its db 15 the reference). Cluster: the reference.
    server: RedisServer,
    /// Cluster: this test's part of the key prefixes (`u<N>:`).
    tag: String,
    _alone: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl Backend {
    /// Starts the upstream (a server, or the shared cluster on first use).
    pub fn start(kind: Upstream) -> Backend {
        if kind == Upstream::Cluster {
            Cluster::shared();
        }
        Backend {
            kind,
            server: RedisServer::start(),
            tag: format!("u{}:", NEXT_TAG.fetch_add(1, Ordering::Relaxed)),
            _alone: None,
        }
    }

    /// As [`start`](Self::start); on the cluster, also waits until no other
    /// `start_alone` test of this binary runs, so node-wide counts (blocked clients,
    /// subscribers of a channel) are this test's alone.
    pub async fn start_alone(kind: Upstream) -> Backend {
        let guard = match kind {
            Upstream::Standalone => None,
            Upstream::Cluster => Some(ALONE.lock().await),
        };
        Backend {
            _alone: guard,
            ..Backend::start(kind)
        }
    }

    pub fn kind(&self) -> Upstream {
        self.kind
    }

    /// The standalone upstream server (`None` on a cluster).
    pub fn server(&self) -> Option<&RedisServer> {
        match self.kind {
            Upstream::Standalone => Some(&self.server),
            Upstream::Cluster => None,
        }
    }

    /// The key prefix of client db `db` on the upstream (empty when standalone).
    pub fn prefix(&self, db: usize) -> Vec<u8> {
        match self.kind {
            Upstream::Standalone => Vec::new(),
            Upstream::Cluster => {
                let config = proxy_config(&self.server);
                format!("{}{}:", self.tag, config.databases[db].name()).into_bytes()
            }
        }
    }

    /// The 11 AutoBot databases on this upstream, the proxy on 127.0.0.1:0.
    pub fn config(&self) -> Config {
        match self.kind {
            Upstream::Standalone => proxy_config(&self.server),
            Upstream::Cluster => cluster_config(Cluster::shared(), |name| {
                Some(format!("{}{name}:", self.tag).into_bytes())
            }),
        }
    }

    /// A standalone Redis connection, on an empty db, to run the same commands on and
    /// compare replies with.
    pub async fn reference(&self) -> AsyncRawClient {
        let mut c = AsyncRawClient::connect(self.server.addr()).await;
        assert_eq!(c.cmd(&[b"SELECT", REFERENCE_DB]).await, b"+OK\r\n");
        c
    }

    /// The port of the reference server (its db [`REFERENCE_DB`], e.g. for
    /// `redis-cli -n 15`).
    pub fn reference_port(&self) -> u16 {
        self.server.port()
    }

    /// A direct view of what the proxy's client db `db` holds on the upstream.
    pub async fn direct(&self, db: usize) -> Direct {
        let at = match self.kind {
            Upstream::Standalone => self.server.addr(),
            Upstream::Cluster => Cluster::shared().nodes()[0].addr(),
        };
        let mut c = AsyncRawClient::connect(at).await;
        if self.kind == Upstream::Standalone {
            let n = db.to_string();
            assert_eq!(c.cmd(&[b"SELECT", n.as_bytes()]).await, b"+OK\r\n");
        }
        Direct {
            prefix: self.prefix(db),
            at,
            conns: HashMap::from([(at, c)]),
        }
    }

    /// The upstream servers (standalone: one; cluster: every node).
    fn nodes(&self) -> Vec<SocketAddr> {
        match self.kind {
            Upstream::Standalone => vec![self.server.addr()],
            Upstream::Cluster => Cluster::shared()
                .nodes()
                .iter()
                .map(RedisServer::addr)
                .collect(),
        }
    }

    /// The ports of the upstream servers.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes().iter().map(SocketAddr::port).collect()
    }

    /// The sum over the upstream servers of an integer `INFO section` field.
    pub async fn info_sum(&self, section: &str, field: &str) -> u64 {
        let mut sum = 0;
        for addr in self.nodes() {
            let mut c = AsyncRawClient::connect(addr).await;
            let r = c.cmd(&[b"INFO", section.as_bytes()]).await;
            let info = parse_info(&String::from_utf8_lossy(&r));
            sum += info
                .get(field)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("INFO {section} of {addr} has no {field}"));
        }
        sum
    }

    /// `PUBLISH channel message` straight to the upstream, and its reply (a cluster
    /// node counts its own subscribers only: this goes to the first seed node, where
    /// the proxy's subscribers are, README "Redis Cluster").
    pub async fn publish(&self, channel: &[u8], message: &[u8]) -> Vec<u8> {
        let at = self.nodes()[0];
        let mut c = AsyncRawClient::connect(at).await;
        c.cmd(&[b"PUBLISH", channel, message]).await
    }

    /// Clients subscribed to `channel`, summed over the upstream servers.
    pub async fn subscribers(&self, channel: &[u8]) -> u64 {
        let mut sum = 0;
        for addr in self.nodes() {
            let mut c = AsyncRawClient::connect(addr).await;
            let r = c.cmd(&[b"PUBSUB", b"NUMSUB", channel]).await;
            let text = String::from_utf8_lossy(&r).into_owned();
            sum += text
                .lines()
                .last()
                .and_then(|l| l.strip_prefix(':'))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("PUBSUB NUMSUB on {addr}: {text:?}"));
        }
        sum
    }
}

/// The 11 AutoBot databases on `cluster` (seeds: every node; `upstream.db` 0), the
/// proxy on 127.0.0.1:0; `prefix(name)`: each database's `key_prefix`.
pub fn cluster_config(cluster: &Cluster, prefix: impl Fn(&str) -> Option<Vec<u8>>) -> Config {
    let mut config = cluster.proxy_config();
    for db in &mut config.databases {
        db.upstream.key_prefix = prefix(db.name()).map(Into::into);
    }
    config
}

/// What one client db holds, read straight from the upstream: on a cluster the key
/// gets the database's prefix and the command follows `-MOVED`/`-ASK` as a cluster
/// client does.
pub struct Direct {
    prefix: Vec<u8>,
    at: SocketAddr,
    conns: HashMap<SocketAddr, AsyncRawClient>,
}

impl Direct {
    async fn conn(&mut self, addr: SocketAddr) -> &mut AsyncRawClient {
        match self.conns.entry(addr) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(AsyncRawClient::connect(addr).await),
        }
    }

    /// A command whose key is its first argument (`GET k`, `LLEN k`, `SET k v` …).
    pub async fn cmd(&mut self, args: &[&[u8]]) -> Vec<u8> {
        let key = args.get(1).map(|k| [&self.prefix[..], k].concat());
        let mut full: Vec<&[u8]> = args.to_vec();
        if let Some(key) = &key {
            full[1] = key;
        }
        for _ in 0..5 {
            let at = self.at;
            let reply = self.conn(at).await.cmd(&full).await;
            let text = String::from_utf8_lossy(&reply).into_owned();
            let redirect = |kind: &str| {
                text.strip_prefix(kind)
                    .and_then(|rest| rest.trim_end().split(' ').nth(1))
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            };
            if let Some(to) = redirect("-MOVED ") {
                self.at = to;
            } else if let Some(to) = redirect("-ASK ") {
                let c = self.conn(to).await;
                assert_eq!(c.cmd(&[b"ASKING"]).await, b"+OK\r\n");
                return c.cmd(&full).await;
            } else {
                return reply;
            }
        }
        panic!(
            "direct {}: too many redirects",
            String::from_utf8_lossy(args[0])
        );
    }

    /// The number of keys of this db (standalone `DBSIZE`; on a cluster the keys with
    /// the db's prefix on every primary).
    pub async fn dbsize(&mut self) -> u64 {
        if self.prefix.is_empty() {
            let at = self.at;
            let r = self.conn(at).await.cmd(&[b"DBSIZE"]).await;
            return parse_int(&r);
        }
        let pattern = [&self.prefix[..], b"*"].concat();
        let mut sum = 0;
        for node in Cluster::shared().nodes() {
            let c = self.conn(node.addr()).await;
            if !c.cmd(&[b"ROLE"]).await.starts_with(b"*3\r\n$6\r\nmaster") {
                continue;
            }
            let r = c
                .cmd(&[
                    b"EVAL",
                    b"return #redis.call('KEYS', ARGV[1])",
                    b"0",
                    &pattern,
                ])
                .await;
            sum += parse_int(&r);
        }
        sum
    }
}

fn parse_int(reply: &[u8]) -> u64 {
    match redis::parse_redis_value(reply) {
        Ok(redis::Value::Int(n)) if n >= 0 => n as u64,
        other => panic!("not a count: {other:?}"),
    }
}
