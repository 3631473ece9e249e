//! A Redis Cluster upstream at run time: the slot map, one set of shared
//! multiplexed connections, a pool, a breaker and a health probe **per node**, and
//! the routing of a session's batches over them.
//!
//! # One batch
//!
//! [`Cluster::send`] is called by the session in the order it sends, like a
//! shared slot. Each request of the batch is planned ([`plan`]).
//!
//! * **One node** (the common case: every request has its keys in slots of one
//!   node, or no key): the batch goes to that node's shared connection as the
//!   client sent it, and the node's replies go straight to the session. Only when
//!   a reply is a redirect, or the batch fails, does the connection hand the
//!   answer back here ([`Divert`]) to be finished as below.
//! * **Otherwise** each request becomes one or more *units* (a request for one
//!   node); units for the same node go out as one batch on that node's shared
//!   connection, in the client's order, before `send` returns. A task then gathers
//!   the node replies, follows redirects and merges parts, and answers the session
//!   with the replies back to back, as one node would.
//!
//! # Redirects, in order
//!
//! `-MOVED`, `-ASK`, `-TRYAGAIN` and `-CLUSTERDOWN` mean Redis did not run the
//! command, so it is sent again (`MOVED`: to the named node, and the map is
//! refreshed; `ASK`: to the named node after `ASKING`, map unchanged; the others:
//! after the back-off pause, through the map, until the bound of any retry,
//! `connect_timeout + command_timeout` after the batch was sent, when Redis's
//! error is passed on). Each batch holds a [`Ticket`] in
//! its session's order ([`order`](super::order)): a unit is resent only once every
//! earlier batch of the session is settled, and a batch planned with a newer map
//! than an unsettled earlier one waits for it before it goes out, so a client's
//! commands for one key reach the node that runs them in the order the client
//! sent them, across redirects and map changes. Later commands for the same slot
//! that were already sent got the same redirect (the node does not serve the
//! slot, or does not have the key), so they are resent after.
//!
//! Not kept: the order of a request held by `-TRYAGAIN` (a multi-key command
//! whose keys are split by a slot migration) against *later* requests of the
//! same session for one of its keys still on the old node: those already ran
//! there. Cluster-aware clients resend `-TRYAGAIN` the same way.
//!
//! # Failures
//!
//! A request that fails on a node's connection gets the error, as from a
//! standalone upstream (a write that may have run is never resent; the node's
//! shared connection retries what is safe, `upstream::mux`). A node whose breaker
//! is open answers `-CIRCUITOPEN` at once.
//!
//! # The map
//!
//! Learnt from the seed nodes at the first request, then refreshed on `-MOVED`,
//! on a failure (a connection error or a node's open breaker) and every
//! `health_check_interval`; refreshes are coalesced (one at a time; a caller that
//! sees a newer map than the one it acted on does not start another) and at most
//! one per [`MIN_REFRESH`]. After a failure the map is also asked every
//! [`WATCH_EVERY`] until a shard's primary changes (for at most [`WATCH_FOR`]):
//! Redis promotes a replica only after `cluster-node-timeout` and an election,
//! and requests to a hung node fail only at their deadline. Nodes are asked in
//! turn, healthy ones first, the next one after [`HEDGE`] without an answer, and
//! the first map wins, so a hung node does not hold a refresh for its timeouts.
//!
//! # The home node
//!
//! What does not go by slot (subscribers but shard ones, `PUBLISH`, `PUBSUB`'s
//! counts, `MONITOR`, out-of-band requests, login checks) goes to one node that
//! may serve, the same for every session ([`Cluster::home`]): a node counts only
//! its own subscribers.
//!
//! # Logins
//!
//! An `auth_passthrough` login sees the cluster through a view
//! ([`Cluster::login`]): this cluster's map, probes and breakers, with
//! connections of its own logged in as the user.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::map::{self, split_addr, SlotMap};
use super::merge::{self, Redirect, ASKING};
use super::order::{Orders, Ticket};
use super::plan::{self, Merge, Plan};
use crate::command::{each_request, Descriptor};
use crate::config::{ReadFrom, Secret, UpstreamConfig};
use crate::protocol::reply;
use crate::protocol::request::encode_command;
use crate::resilience::{Backoff, Breaker, BreakerConfig, Policy};
use crate::stats::DbStats;
use crate::upstream::dedicated::{self, Pool};
use crate::upstream::health::{self, HealthState};
use crate::upstream::mux::{Answer, Batch, Divert, MuxHandle, Retry};
use crate::upstream::{Observer, UpstreamError};

/// Least time between two slot-map refreshes.
pub const MIN_REFRESH: Duration = Duration::from_millis(250);
/// How often the map is asked while a failed node may be failed over.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long the map is watched after a node failed.
pub const WATCH_FOR: Duration = Duration::from_secs(30);
/// How long a slot-map question waits for a node before asking the next one too.
pub const HEDGE: Duration = Duration::from_millis(200);
/// Most rounds of redirects one request follows before its last error is passed on
/// (also the most moves of an exclusive connection and of a shard subscription).
pub const MAX_REDIRECTS: u32 = 16;

/// One cluster node's connections.
#[derive(Debug)]
pub struct Node {
    /// `host:port`.
    pub addr: String,
    /// Its circuit breaker (fed by its connections and probe).
    pub breaker: Arc<Breaker>,
    /// What its health probe last found.
    pub health: Arc<HealthState>,
    /// Requests sent to it (by every login's connections).
    pub requests: Arc<AtomicU64>,
    /// Redirects (`MOVED`/`ASK`) it answered.
    pub redirects: Arc<AtomicU64>,
    slots: Vec<MuxHandle>,
    slots3: Vec<MuxHandle>,
    /// One more shared connection of each protocol (RESP2, RESP3), for the
    /// sessions whose slot on some node is held up ([`Cluster::detour`]).
    /// Connected when first used.
    detours: [MuxHandle; 2],
    pool: Pool,
    pool3: Pool,
    probe: CancellationToken,
    /// The last word about the node was a failure (of a request, a probe, or a
    /// connection a session opened): set by [`NodeObserver`] and
    /// [`Cluster::node_failed`], cleared by the next success.
    down: Arc<AtomicBool>,
}

/// Where a session's batch goes on each node: the session's shared slot, or
/// with `detour` the node's detour connection ([`Cluster::detour`]).
#[derive(Debug, Clone, Copy)]
pub struct Via {
    /// The session (which of a node's shared slots is its own).
    pub session: u64,
    /// It speaks RESP3.
    pub resp3: bool,
    /// Its batches take the nodes' detour connections.
    pub detour: bool,
}

/// What a node's connections for several logins have in common.
struct Shared {
    breaker: Arc<Breaker>,
    health: Arc<HealthState>,
    down: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    redirects: Arc<AtomicU64>,
}

/// A node's observer: its breaker's policy, and [`Node::down`] kept.
#[derive(Debug)]
struct NodeObserver {
    policy: Policy,
    down: Arc<AtomicBool>,
}

impl Observer for NodeObserver {
    fn success(&self) {
        // (Called per batch: the flag's cache line is written only on a change.)
        if self.down.load(Ordering::Relaxed) {
            self.down.store(false, Ordering::Relaxed);
        }
        self.policy.success();
    }

    fn failure(&self) {
        self.down.store(true, Ordering::Relaxed);
        self.policy.failure();
    }

    fn upstream_replaced(&self) {
        self.policy.upstream_replaced();
    }

    fn probe(&self, ok: bool) {
        self.down.store(!ok, Ordering::Relaxed);
        self.policy.probe(ok);
    }

    fn probe_interval(&self, configured: Duration) -> Duration {
        self.policy.probe_interval(configured)
    }

    fn admit(&self) -> Result<(), Option<Duration>> {
        self.policy.admit()
    }

    fn retry_delay(&self, retry: u32) -> Duration {
        self.policy.retry_delay(retry)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.probe.cancel();
    }
}

impl Node {
    fn start(
        addr: &str,
        base: &UpstreamConfig,
        stats: &Arc<DbStats>,
        breaker: BreakerConfig,
        shutdown: &CancellationToken,
        held: &Arc<AtomicUsize>,
    ) -> Option<Node> {
        let (host, port) = split_addr(addr)?;
        let cfg = Arc::new(node_config(base, host, port));
        let probe = shutdown.child_token();
        let shared = Shared {
            breaker: Arc::new(Breaker::new(breaker)),
            health: Arc::default(),
            down: Arc::default(),
            requests: Arc::default(),
            redirects: Arc::default(),
        };
        let (node, observer) = Node::build(addr, cfg.clone(), stats, shared, probe.clone(), held);
        health::spawn(
            cfg,
            node.health.clone(),
            observer,
            node.slots.clone(),
            probe,
        );
        Some(node)
    }

    /// The same node's connections logged in as `base`'s user (a login's view,
    /// [`Cluster::login`]): shared connections and pools of their own; the
    /// breaker, health, down flag and counters of `node`, whose probe speaks for
    /// the node.
    fn for_login(
        node: &Node,
        base: &UpstreamConfig,
        stats: &Arc<DbStats>,
        held: &Arc<AtomicUsize>,
    ) -> Option<Node> {
        let (host, port) = split_addr(&node.addr)?;
        let cfg = Arc::new(node_config(base, host, port));
        let shared = Shared {
            breaker: node.breaker.clone(),
            health: node.health.clone(),
            down: node.down.clone(),
            requests: node.requests.clone(),
            redirects: node.redirects.clone(),
        };
        let (login, _) = Node::build(
            &node.addr,
            cfg,
            stats,
            shared,
            CancellationToken::new(),
            held,
        );
        Some(login)
    }

    fn build(
        addr: &str,
        cfg: Arc<UpstreamConfig>,
        stats: &Arc<DbStats>,
        shared: Shared,
        probe: CancellationToken,
        held: &Arc<AtomicUsize>,
    ) -> (Node, Arc<dyn Observer>) {
        let observer: Arc<dyn Observer> = Arc::new(NodeObserver {
            policy: Policy {
                breaker: shared.breaker.clone(),
                backoff: Backoff::from(&cfg.resilience),
            },
            down: shared.down.clone(),
        });
        let spawn = |resp3| -> Vec<MuxHandle> {
            (0..cfg.mux_connections.max(1))
                .map(|_| {
                    let (cfg, stats, observer) = (cfg.clone(), stats.clone(), observer.clone());
                    MuxHandle::spawn_counted(cfg, stats, observer, resp3, held.clone())
                })
                .collect()
        };
        let (slots, slots3) = (spawn(false), spawn(true));
        let detour = |resp3| MuxHandle::spawn(cfg.clone(), stats.clone(), observer.clone(), resp3);
        let detours = [detour(false), detour(true)];
        let node = Node {
            addr: addr.to_string(),
            breaker: shared.breaker,
            health: shared.health,
            requests: shared.requests,
            redirects: shared.redirects,
            pool: dedicated::pool(&cfg, false),
            pool3: dedicated::pool(&cfg, true),
            slots,
            slots3,
            detours,
            probe,
            down: shared.down,
        };
        (node, observer)
    }

    /// Whether it may serve: the last word about it was not a failure, and its
    /// breaker is not open.
    fn may_serve(&self) -> bool {
        !self.down.load(Ordering::Relaxed) && self.breaker.state() != crate::resilience::State::Open
    }

    fn slot(&self, session: u64, resp3: bool) -> &MuxHandle {
        let slots = if resp3 { &self.slots3 } else { &self.slots };
        &slots[(session % slots.len() as u64) as usize]
    }

    /// The shared connection a batch sent `via` takes here.
    fn shared(&self, via: Via) -> &MuxHandle {
        match via.detour {
            true => &self.detours[usize::from(via.resp3)],
            false => self.slot(via.session, via.resp3),
        }
    }

    /// Its pool of exclusive connections.
    pub fn pool(&self, resp3: bool) -> &Pool {
        if resp3 {
            &self.pool3
        } else {
            &self.pool
        }
    }
}

/// The settings of a connection to the node at `host:port` of the cluster `base`.
fn node_config(base: &UpstreamConfig, host: String, port: u16) -> UpstreamConfig {
    let mut cfg = base.clone();
    cfg.host = host;
    cfg.port = port;
    cfg.db = 0;
    // `read_from: replica`: every node's connections send READONLY (a primary
    // accepts it and serves as before; a replica then serves reads of its slots).
    cfg.replica_reads = base
        .cluster
        .as_ref()
        .is_some_and(|c| c.read_from == ReadFrom::Replica);
    cfg.cluster = None;
    cfg.sentinel = None;
    cfg.key_prefix = None;
    cfg.endpoint = base.endpoint.sharing_identity();
    cfg
}

/// The settings of a connection to the first seed node of `base` (before a
/// cluster upstream runs: `--check-config`, the fallback pool); `base` itself if
/// it is not a cluster. At run time see [`Cluster::home_config`].
pub fn seed_config(base: &UpstreamConfig) -> UpstreamConfig {
    match base.cluster.as_ref().and_then(|c| c.nodes.first()) {
        Some((h, p)) => node_config(base, h.clone(), *p),
        None => base.clone(),
    }
}

/// Whether two `host:port` addresses name the same (IPv6 with or without brackets).
fn same_addr(a: &str, b: &str) -> bool {
    // (Without allocating: `home` compares every seed with the map's nodes.)
    fn parts(addr: &str) -> Option<(&str, &str)> {
        let (h, p) = addr.rsplit_once(':')?;
        Some((h.trim_start_matches('[').trim_end_matches(']'), p))
    }
    a == b || parts(a).is_some_and(|a| parts(b) == Some(a))
}

/// The node at `addr` in `topo`'s map, if it is one.
fn map_node<'a>(topo: &'a Topology, addr: &str) -> Option<&'a map::Node> {
    topo.map
        .shards()
        .iter()
        .flat_map(|s| std::iter::once(&s.primary).chain(&s.replicas))
        .find(|n| same_addr(&n.addr, addr))
}

/// The slot map and the node of each shard's primary.
#[derive(Debug)]
pub struct Topology {
    /// The map as Redis gave it.
    pub map: SlotMap,
    /// The primary of each shard of `map`, in shard order.
    pub primaries: Vec<Arc<Node>>,
    /// Which map this is (1 for the first).
    pub generation: u64,
}

impl Topology {
    /// The primary serving `slot` (`None`: any, spread by `session`).
    fn primary(&self, slot: Option<u16>, session: u64) -> Option<&Arc<Node>> {
        let n = self.primaries.len();
        if n == 0 {
            return None;
        }
        let i = match slot {
            Some(s) => self.map.shard_index(s).unwrap_or(usize::from(s) % n),
            None => (session % n as u64) as usize,
        };
        self.primaries.get(i)
    }
}

/// A login's user and password.
type LoginKey = (Option<String>, String);

/// A Redis Cluster upstream.
#[derive(Debug)]
pub struct Cluster {
    base: UpstreamConfig,
    /// The seed nodes, `host:port`, in the configured order.
    seeds: Vec<String>,
    label: String,
    stats: Arc<DbStats>,
    breaker: BreakerConfig,
    backoff: Backoff,
    shutdown: CancellationToken,
    topology: RwLock<Option<Arc<Topology>>>,
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    refreshing: tokio::sync::Mutex<Option<Instant>>,
    /// A background refresh is queued or running ([`Cluster::refresh_soon`]).
    refresh_queued: AtomicBool,
    /// The map is being watched after a failure ([`Cluster::after_failure`]).
    watching: AtomicBool,
    /// Each session's unsettled batches, in order.
    orders: Arc<Orders>,
    /// How many of the nodes' shared slots are held up ([`Cluster::detour`]).
    held: Arc<AtomicUsize>,
    /// Slot-map refreshes made.
    pub refreshes: AtomicU64,
    /// Slot-map refreshes that failed.
    pub refresh_failures: AtomicU64,
    /// `-MOVED` replies followed.
    pub moved: AtomicU64,
    /// `-ASK` replies followed.
    pub asked: AtomicU64,
    /// `-TRYAGAIN`/`-CLUSTERDOWN` replies waited out: requests sent again after
    /// a pause.
    pub again: AtomicU64,
    /// For a login's view ([`Cluster::login`]): the cluster whose map, health
    /// and refreshes it uses.
    parent: Option<Arc<Cluster>>,
    /// The views of the logins that use this cluster, by user and password.
    logins: Mutex<HashMap<LoginKey, Weak<Cluster>>>,
}

/// A request, or part of one, for one node.
struct Unit {
    bytes: Bytes,
    node: Arc<Node>,
    /// The slot it is for (`None`: keyless).
    slot: Option<u16>,
    /// Must go to `node` (a part of a request sent to every primary, or SCAN).
    pinned: bool,
    ask: bool,
    readonly: bool,
    /// Redis may hold it back while answering others (`Batch::may_hold`).
    may_hold: bool,
    reply: Option<Bytes>,
}

/// What the client gets for one request.
enum Item {
    /// The reply of one unit.
    One(usize),
    /// Units merged.
    Merged {
        how: Merge,
        units: Vec<usize>,
        positions: Vec<Vec<usize>>,
    },
    /// `SCAN` from node `index` of `nodes`: one unit per node walked, in
    /// order ([`Cluster::scan_on`]).
    Scan {
        units: Vec<usize>,
        index: usize,
        nodes: usize,
        /// The request's `COUNT` (10 without).
        count: usize,
        /// The request's arguments (the cursor's place is filled per node).
        args: Vec<Bytes>,
    },
    /// Answered without a node.
    Local(Bytes),
}

/// Adds a unit (bytes, node, slot, pinned) and gives its index (`None`: no node).
type AddUnit<'a> = dyn FnMut(Bytes, Option<&Arc<Node>>, Option<u16>, bool) -> Option<usize> + 'a;

/// Units sent to one node, and where their replies come.
struct Flight {
    units: Vec<usize>,
    rx: Result<oneshot::Receiver<Answer>, Bytes>,
}

impl Cluster {
    /// A cluster upstream for the database `label`: nothing is connected until
    /// the first request (or the first periodic refresh).
    pub fn start(
        base: &UpstreamConfig,
        label: String,
        stats: Arc<DbStats>,
        shutdown: &CancellationToken,
    ) -> Arc<Cluster> {
        let cluster = Arc::new(Cluster::new(base.clone(), label, stats, shutdown, None));
        let weak = Arc::downgrade(&cluster);
        let stop = cluster.shutdown.clone();
        let every = base.resilience.health_check_interval.max(MIN_REFRESH);
        tokio::spawn(async move {
            // The first map at once (the first requests wait for it).
            if let Some(c) = weak.upgrade() {
                c.refresh(0).await;
            }
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let Some(c) = weak.upgrade() else { return };
                let seen = c.generation();
                c.refresh(seen).await;
            }
        });
        cluster
    }

    fn new(
        base: UpstreamConfig,
        label: String,
        stats: Arc<DbStats>,
        shutdown: &CancellationToken,
        parent: Option<Arc<Cluster>>,
    ) -> Cluster {
        Cluster {
            seeds: base
                .cluster
                .iter()
                .flat_map(|c| &c.nodes)
                .map(|(h, p)| format!("{h}:{p}"))
                .collect(),
            breaker: BreakerConfig::from(&base.resilience),
            backoff: Backoff::from(&base.resilience),
            base,
            label,
            stats,
            shutdown: shutdown.child_token(),
            topology: RwLock::new(None),
            nodes: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(None),
            refresh_queued: AtomicBool::new(false),
            watching: AtomicBool::new(false),
            orders: Arc::default(),
            held: Arc::default(),
            refreshes: AtomicU64::new(0),
            refresh_failures: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            asked: AtomicU64::new(0),
            again: AtomicU64::new(0),
            parent,
            logins: Mutex::new(HashMap::new()),
        }
    }

    /// The cluster as `user` with `password` sees it (`auth_passthrough`): the
    /// same map, routing, health and breakers, over connections of its own logged
    /// in as that user (shared by the sessions of that login), so Redis's ACL
    /// rules apply to every command. The login needs no permission beyond its
    /// commands: the map and the probes stay this cluster's. Made on first use,
    /// dropped with the last session that uses it.
    pub fn login(self: &Arc<Self>, user: Option<String>, password: Secret) -> Arc<Cluster> {
        if let Some(p) = &self.parent {
            return p.login(user, password);
        }
        let key = (user, password.expose().to_string());
        let mut logins = self.logins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(view) = logins.get(&key).and_then(Weak::upgrade) {
            return view;
        }
        logins.retain(|_, v| v.strong_count() > 0);
        let mut base = self.base.clone();
        base.username.clone_from(&key.0);
        base.password = Some(password);
        base.client_login = true;
        let view = Arc::new(Cluster::new(
            base,
            self.label.clone(),
            self.stats.clone(),
            &self.shutdown,
            Some(self.clone()),
        ));
        logins.insert(key, Arc::downgrade(&view));
        view
    }

    /// Where this cluster's counters (`moved`, `asked`) are kept: a login's view
    /// counts in its parent's, which `PROXY INFO` and the metrics show.
    pub fn counters(&self) -> &Cluster {
        self.parent.as_deref().unwrap_or(self)
    }

    /// Whether this is a login's view of `cluster` ([`Cluster::login`]).
    pub fn is_view_of(&self, cluster: &Arc<Cluster>) -> bool {
        self.parent
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, cluster))
    }

    /// The current map, if one was learnt (a login's view: its parent's, with
    /// the view's nodes).
    pub fn topology(&self) -> Option<Arc<Topology>> {
        let mine = self.topology.read().ok().and_then(|t| t.clone());
        let Some(parent) = &self.parent else {
            return mine;
        };
        let theirs = parent.topology()?;
        if let Some(t) = mine.filter(|t| t.generation == theirs.generation) {
            return Some(t);
        }
        let primaries = theirs
            .map
            .shards()
            .iter()
            .filter_map(|s| self.node(&s.primary.addr))
            .collect();
        let t = Arc::new(Topology {
            map: theirs.map.clone(),
            primaries,
            generation: theirs.generation,
        });
        if let Ok(mut w) = self.topology.write() {
            *w = Some(t.clone());
        }
        if let Ok(mut nodes) = self.nodes.lock() {
            // Nodes no longer in the cluster: their connections close once unused.
            nodes.retain(|addr, _| map_node(&t, addr).is_some());
        }
        Some(t)
    }

    fn generation(&self) -> u64 {
        self.topology().map_or(0, |t| t.generation)
    }

    /// Every node the proxy has connections to, by address.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        let mut v: Vec<Arc<Node>> = self
            .nodes
            .lock()
            .map(|n| n.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.addr.cmp(&b.addr));
        v
    }

    /// The node at `addr`, its connections started on first use.
    fn node(&self, addr: &str) -> Option<Arc<Node>> {
        let mut nodes = self.nodes.lock().ok()?;
        if let Some(n) = nodes.get(addr) {
            return Some(n.clone());
        }
        let n = match &self.parent {
            None => Node::start(
                addr,
                &self.base,
                &self.stats,
                self.breaker,
                &self.shutdown,
                &self.held,
            )?,
            Some(p) => {
                Node::for_login(p.node(addr)?.as_ref(), &self.base, &self.stats, &self.held)?
            }
        };
        let n = Arc::new(n);
        nodes.insert(addr.to_string(), n.clone());
        Some(n)
    }

    /// The pool for a session's exclusive connection whose first keyed request
    /// is for `slot` (a transaction or a blocking command is pinned to that node).
    pub fn pool(&self, slot: Option<u16>, session: u64, resp3: bool) -> Option<Pool> {
        let node = match self.topology() {
            Some(t) => t.primary(slot, session).cloned(),
            None => self.home(),
        }?;
        Some(node.pool(resp3).clone())
    }

    /// The pool of the node at `addr` (where a redirect points), its
    /// connections started on first use.
    pub fn pool_at(&self, addr: &str, resp3: bool) -> Option<Pool> {
        Some(self.node(addr)?.pool(resp3).clone())
    }

    /// The node a request for `slot` goes to: its shard's primary, or with
    /// `read_from: replica` for a read-only request an online replica of the
    /// shard (spread by `session`; the primary when none is online).
    fn target(
        &self,
        topo: &Topology,
        readonly: bool,
        slot: Option<u16>,
        session: u64,
    ) -> Option<Arc<Node>> {
        let replica = match slot {
            Some(s) if readonly && self.replica_reads() => self.replica(topo, s, session),
            _ => None,
        };
        replica.or_else(|| topo.primary(slot, session).cloned())
    }

    /// An online replica of the shard serving `slot`, spread by `session`.
    fn replica(&self, topo: &Topology, slot: u16, session: u64) -> Option<Arc<Node>> {
        let shard = topo.map.shard(slot)?;
        // Not failed in the cluster's view, and answering the proxy's probe (Redis
        // 7.0 reports a synced replica as `loading` in CLUSTER SHARDS, so the
        // probe's PING, which a loading server refuses, decides).
        let serving: Vec<Arc<Node>> = shard
            .replicas
            .iter()
            .filter(|r| r.health != super::map::Health::Failed)
            .filter_map(|r| self.node(&r.addr))
            .filter(|n| n.health.healthy.load(Ordering::Relaxed))
            .collect();
        if serving.is_empty() {
            return None;
        }
        Some(serving[(session % serving.len() as u64) as usize].clone())
    }

    fn replica_reads(&self) -> bool {
        self.base
            .cluster
            .as_ref()
            .is_some_and(|c| c.read_from == ReadFrom::Replica)
    }

    /// The node for what does not go by slot: subscribers (but `SSUBSCRIBE`'s),
    /// `MONITOR`, `PUBLISH`, `PUBSUB CHANNELS/NUMSUB/NUMPAT`, out-of-band requests
    /// and `auth_passthrough` logins. Of the map's nodes, the seed nodes first (in
    /// the configured order), then the primaries (in shard order): the first that
    /// may serve (the last word about it was not a failure, its breaker is not
    /// open, the cluster does not mark it failed, and a replica the map calls
    /// loading answered its probe). A seed that is not a node of the map (not, or
    /// no longer, in the cluster; or named differently) is passed over. So every
    /// session uses the same node while it serves (a node counts only its own
    /// subscribers), and the next one once it fails. If none may serve, the first
    /// of them; before the map is learnt, the first seed.
    pub fn home(&self) -> Option<Arc<Node>> {
        let first_seed = || self.node(self.seeds.first()?);
        let Some(topo) = self.topology() else {
            return first_seed();
        };
        let listed = self.seeds.iter().filter_map(|a| map_node(&topo, a));
        let primaries = topo.map.shards().iter().map(|s| &s.primary);
        let mut fallback = None;
        for entry in listed.chain(primaries) {
            let Some(node) = self.node(&entry.addr) else {
                continue;
            };
            let ok = node.may_serve()
                && match entry.health {
                    map::Health::Online => true,
                    map::Health::Failed => false,
                    // (Redis 7.0 reports a synced replica as loading: its
                    // probe's PING decides.)
                    map::Health::Loading => node.health.healthy.load(Ordering::Relaxed),
                };
            if ok {
                return Some(node);
            }
            fallback.get_or_insert(node);
        }
        fallback.or_else(first_seed)
    }

    /// The settings of a connection to [`Cluster::home`].
    pub fn home_config(&self) -> UpstreamConfig {
        match self.home().and_then(|n| split_addr(&n.addr)) {
            Some((host, port)) => node_config(&self.base, host, port),
            None => seed_config(&self.base),
        }
    }

    /// The settings of a connection to the primary of every shard but the one
    /// the node at `addr` belongs to: where a subscriber whose connection goes
    /// to `addr` also subscribes, for the keyspace notifications of their keys
    /// (`upstream::satellites`; a replica sends the notifications of the writes it
    /// replicates, so a home node that is one stands for its shard). Empty before
    /// the map is learnt.
    pub fn other_primaries(&self, addr: &str) -> Vec<UpstreamConfig> {
        self.primaries_where(|s| {
            !std::iter::once(&s.primary)
                .chain(&s.replicas)
                .any(|n| same_addr(&n.addr, addr))
        })
    }

    /// The settings of a connection to each primary of the map (empty before
    /// it is learnt).
    pub fn primary_configs(&self) -> Vec<UpstreamConfig> {
        self.primaries_where(|_| true)
    }

    /// The settings of a connection to the primary of each shard that `keep`
    /// keeps (empty before the map is learnt).
    fn primaries_where(&self, keep: impl Fn(&map::Shard) -> bool) -> Vec<UpstreamConfig> {
        let Some(topo) = self.topology() else {
            return Vec::new();
        };
        topo.map
            .shards()
            .iter()
            .filter(|s| keep(s))
            .filter_map(|s| split_addr(&s.primary.addr))
            .map(|(host, port)| node_config(&self.base, host, port))
            .collect()
    }

    /// A connection a session opened to the node at `addr` failed (its
    /// subscriber connection could not connect): the node is down until it
    /// answers again, and the map is looked at (it may have been failed over).
    pub fn node_failed(self: &Arc<Self>, addr: &str) {
        let node = self
            .nodes
            .lock()
            .ok()
            .and_then(|n| n.values().find(|n| same_addr(&n.addr, addr)).cloned());
        if let Some(node) = node {
            node.down.store(true, Ordering::Relaxed);
            self.after_failure();
        }
    }

    /// Learns the map again unless it changed since generation `seen` (someone
    /// else refreshed); at most one refresh per [`MIN_REFRESH`].
    pub async fn refresh(&self, seen: u64) {
        if let Some(p) = &self.parent {
            return Box::pin(p.refresh(seen)).await;
        }
        let mut last = self.refreshing.lock().await;
        if self.generation() != seen {
            return;
        }
        if let Some(at) = *last {
            let next = at + MIN_REFRESH;
            if next > Instant::now() {
                tokio::time::sleep_until(next).await;
            }
        }
        *last = Some(Instant::now());
        let mut asked: Vec<(String, bool)> = Vec::new();
        if let Some(t) = self.topology() {
            for s in t.map.shards() {
                for n in std::iter::once(&s.primary).chain(&s.replicas) {
                    asked.push((n.addr.clone(), n.health == map::Health::Failed));
                }
            }
        }
        asked.extend(self.seeds.iter().map(|a| (a.clone(), false)));
        // Nodes in trouble (failed by the cluster's account, or with their breaker
        // not closed) are asked last.
        let troubled = |addr: &str, failed: bool| {
            failed
                || self.nodes.lock().ok().is_some_and(|n| {
                    n.get(addr)
                        .is_some_and(|n| n.breaker.state() != crate::resilience::State::Closed)
                })
        };
        let mut order: Vec<(String, bool)> = Vec::new();
        for (addr, failed) in asked {
            let bad = troubled(&addr, failed);
            match order.iter_mut().find(|(a, _)| *a == addr) {
                Some(o) => o.1 |= bad,
                None => order.push((addr, bad)),
            }
        }
        order.sort_by_key(|(_, bad)| *bad);
        match self
            .fetch_first(order.into_iter().map(|(a, _)| a).collect())
            .await
        {
            Ok(m) => self.install(m),
            Err(why) => {
                self.refresh_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(db = %self.label, error = %why, "cannot learn the cluster's slot map");
            }
        }
    }

    /// The map from the first of `addrs` that gives one. They are asked in
    /// order, the next one as soon as the previous failed or after [`HEDGE`]
    /// without an answer (a hung node would otherwise hold the refresh for its
    /// connect and command timeouts); the first answer wins.
    async fn fetch_first(&self, addrs: Vec<String>) -> Result<SlotMap, String> {
        let base = Arc::new(self.base.clone());
        let mut asking = tokio::task::JoinSet::new();
        let mut next = addrs.into_iter();
        let mut why = String::from("no seed nodes");
        loop {
            if let Some(addr) = next.next() {
                let base = base.clone();
                asking.spawn(async move { map::fetch(&addr, &base).await });
            }
            let done = if next.len() > 0 {
                match tokio::time::timeout(HEDGE, asking.join_next()).await {
                    Ok(done) => done,
                    Err(_) => continue,
                }
            } else {
                asking.join_next().await
            };
            match done {
                Some(Ok(Ok(m))) => return Ok(m),
                Some(Ok(Err(e))) => why = e.to_string(),
                Some(Err(e)) => why = e.to_string(),
                None if next.len() == 0 => return Err(why),
                None => {}
            }
        }
    }

    fn install(&self, m: SlotMap) {
        let primaries: Vec<Arc<Node>> = m
            .shards()
            .iter()
            .filter_map(|s| self.node(&s.primary.addr))
            .collect();
        if self.replica_reads() {
            // Started now, so their probes say whether they serve before reads
            // are sent to them.
            for r in m.shards().iter().flat_map(|s| &s.replicas) {
                let _ = self.node(&r.addr);
            }
        }
        let changed = self.topology().is_none_or(|t| t.map != m);
        let generation = self.generation() + 1;
        if changed {
            tracing::info!(db = %self.label, generation, shards = m.shards().len(), covered = m.covered(), "cluster slot map learnt");
        }
        // (The home node, where subscribers are, is one of them: `home`.)
        let keep: Vec<String> = m
            .shards()
            .iter()
            .flat_map(|s| std::iter::once(&s.primary).chain(&s.replicas))
            .map(|n| n.addr.clone())
            .collect();
        if let Ok(mut t) = self.topology.write() {
            *t = Some(Arc::new(Topology {
                map: m,
                primaries,
                generation,
            }));
        }
        // Nodes no longer in the cluster: their connections close once unused.
        if let Ok(mut nodes) = self.nodes.lock() {
            nodes.retain(|addr, _| keep.contains(addr));
        }
        self.refreshes.fetch_add(1, Ordering::Relaxed);
    }

    /// A refresh in the background (coalesced with any under way; none is
    /// queued while one already is, so a stream of failures spawns one task).
    /// Also called by sessions whose exclusive connection got `-MOVED`.
    pub fn refresh_soon(self: &Arc<Self>) {
        if let Some(p) = &self.parent {
            return p.refresh_soon();
        }
        if self.refresh_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let seen = self.generation();
        let me = self.clone();
        tokio::spawn(async move {
            me.refresh(seen).await;
            me.refresh_queued.store(false, Ordering::Release);
        });
    }

    /// After a node failed: the map, asked again at once, is asked again every
    /// [`WATCH_EVERY`] until a shard's primary (or its slots) changed, for at
    /// most [`WATCH_FOR`]. A failed
    /// primary is replaced only after `cluster-node-timeout` and an election;
    /// meanwhile requests to it may hang (a hung node) and fail only at their
    /// deadline, so without this nothing would look at the map when the replica
    /// takes over. One watch at a time.
    fn after_failure(self: &Arc<Self>) {
        if let Some(p) = &self.parent {
            return p.after_failure();
        }
        self.refresh_soon();
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let stop = self.shutdown.clone();
        // Which node serves which slots (a node's health changes first: the
        // cluster marks it failed before a replica is elected).
        let routing = |c: &Cluster| {
            c.topology().map(|t| {
                t.map
                    .shards()
                    .iter()
                    .map(|s| (s.primary.addr.clone(), s.ranges.clone()))
                    .collect::<Vec<_>>()
            })
        };
        let before = routing(self);
        tokio::spawn(async move {
            let end = Instant::now() + WATCH_FOR;
            while Instant::now() < end {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(WATCH_EVERY) => {}
                }
                let Some(c) = weak.upgrade() else { return };
                c.refresh(c.generation()).await;
                let now = routing(&c);
                if now.is_some() && now != before {
                    break;
                }
            }
            if let Some(c) = weak.upgrade() {
                c.watching.store(false, Ordering::Release);
            }
        });
    }

    /// The map, learnt now if there is none yet.
    pub async fn ready(&self) -> Result<Arc<Topology>, UpstreamError> {
        if let Some(p) = &self.parent {
            Box::pin(p.ready()).await?;
        }
        if let Some(t) = self.topology() {
            return Ok(t);
        }
        self.refresh(0).await;
        self.topology().ok_or_else(|| UpstreamError::Connect {
            addr: self.base.address(),
            reason: "no seed node answered with the cluster's slot map".into(),
        })
    }

    /// Whether one of the shared slots `session` uses is held up by a long script
    /// or a write Redis holds back ([`MuxHandle::busy`]): then the session's
    /// batches go `via` the nodes' detour connections (on every node, so that
    /// its requests to one node stay on one connection) until none is. As on a
    /// standalone server (`Database::detour`), the session changes connection
    /// only with nothing in flight. One load while no slot is held up.
    pub fn detour(&self, session: u64, resp3: bool) -> bool {
        if self.held.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.nodes
            .lock()
            .is_ok_and(|nodes| nodes.values().any(|n| n.slot(session, resp3).busy()))
    }

    /// Sends a session's batch (see the module docs); the answer comes on
    /// `batch.reply` with the replies in the client's order.
    pub async fn send(self: &Arc<Self>, via: Via, batch: Batch) {
        if let Some(topo) = self.topology() {
            let ticket = self.orders.begin(via.session, topo.generation);
            let node = if ticket.must_wait() {
                None
            } else {
                self.one_node(&topo, via.session, &batch.bytes)
            };
            match node {
                Some(node) if node.breaker.check().is_ok() => {
                    return self.send_direct(via, node, batch, ticket).await;
                }
                _ => return Box::pin(self.send_planned(via, batch, Some(ticket))).await,
            }
        }
        Box::pin(self.send_planned(via, batch, None)).await
    }

    /// The node every request of `bytes` goes to, if they all go to one node and
    /// each as it is (one slot, or no key).
    fn one_node(&self, topo: &Topology, session: u64, bytes: &Bytes) -> Option<Arc<Node>> {
        if !self.replica_reads() {
            // Every request to a primary: compared without touching the nodes'
            // reference counts (this runs for every batch).
            let mut one: Option<&Arc<Node>> = None;
            let all = each_request(bytes, |_, args| {
                let d = Descriptor::of(args);
                let Plan::Slot(slot) = plan::plan(d.info, args) else {
                    return false;
                };
                match (topo.primary(slot, session), one) {
                    (Some(node), None) => {
                        one = Some(node);
                        true
                    }
                    (Some(node), Some(n)) => Arc::ptr_eq(n, node),
                    (None, _) => false,
                }
            });
            return one.filter(|_| all).cloned();
        }
        let mut one: Option<Arc<Node>> = None;
        let all = each_request(bytes, |_, args| {
            let d = Descriptor::of(args);
            let Plan::Slot(slot) = plan::plan(d.info, args) else {
                return false;
            };
            match (self.target(topo, d.readonly(), slot, session), &one) {
                (Some(node), None) => one = Some(node),
                (Some(node), Some(n)) => return Arc::ptr_eq(n, &node),
                (None, _) => return false,
            }
            true
        });
        one.filter(|_| all)
    }

    /// Sends a batch whose requests all go to `node` as they are: its replies go
    /// to the session unless one is a redirect or the batch fails
    /// ([`Cluster::diverted`]).
    async fn send_direct(
        self: &Arc<Self>,
        via: Via,
        node: Arc<Node>,
        batch: Batch,
        ticket: Ticket,
    ) {
        node.requests
            .fetch_add(u64::from(batch.count), Ordering::Relaxed);
        let me = self.clone();
        let to = node.clone();
        let divert = Divert(Box::new(move |batch: Batch, answer: Answer| {
            // (No runtime: the proxy is stopping; the client gets the answer as is.)
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    drop(rt.spawn(async move { me.diverted(via, to, batch, answer, ticket).await }))
                }
                Err(_) => drop(batch.reply.send(answer)),
            }
        }));
        node.shared(via)
            .send(Batch {
                block: crate::command::Block::No,
                divert: Some(divert),
                ..batch
            })
            .await;
    }

    /// Finishes a batch sent whole to `node` whose answer holds a redirect or
    /// an error: planned as [`Cluster::send_planned`] would, the node's replies
    /// given to its units, then gathered as any batch.
    async fn diverted(
        self: Arc<Self>,
        via: Via,
        node: Arc<Node>,
        batch: Batch,
        answer: Answer,
        ticket: Ticket,
    ) {
        let topo = self.topology();
        let mut units: Vec<Unit> = Vec::with_capacity(batch.count as usize);
        let mut items: Vec<Item> = Vec::with_capacity(batch.count as usize);
        if let Some(topo) = &topo {
            self.plan_batch(topo, via.session, &batch.bytes, &mut units, &mut items);
        }
        for u in &mut units {
            u.node = node.clone();
        }
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(answer);
        let all: Vec<usize> = (0..units.len()).collect();
        let flights = vec![Flight {
            units: all,
            rx: Ok(rx),
        }];
        self.gather(via, units, items, flights, ticket, batch).await
    }

    /// Sends a batch whose requests are split, merged or spread over nodes (or
    /// that waits for its session's earlier batches): planned into units, sent
    /// per node, and gathered by a task.
    async fn send_planned(self: &Arc<Self>, via: Via, batch: Batch, ticket: Option<Ticket>) {
        let mut topo = match self.ready().await {
            Ok(t) => t,
            Err(e) => {
                let _ = batch.reply.send(Answer::from(Err(e)));
                return;
            }
        };
        let mut ticket = ticket.unwrap_or_else(|| self.orders.begin(via.session, topo.generation));
        if ticket.must_wait() {
            ticket.earlier_settled().await;
            if let Some(t) = self.topology() {
                topo = t;
            }
            ticket.goes_out_with(topo.generation);
        }
        let mut units: Vec<Unit> = Vec::with_capacity(batch.count as usize);
        let mut items: Vec<Item> = Vec::with_capacity(batch.count as usize);
        self.plan_batch(&topo, via.session, &batch.bytes, &mut units, &mut items);
        let all: Vec<usize> = (0..units.len()).collect();
        let flights = self.dispatch(via, &mut units, &all, batch.retry).await;
        let me = self.clone();
        tokio::spawn(async move { me.gather(via, units, items, flights, ticket, batch).await });
    }

    /// Plans every request of `bytes` into units and items.
    fn plan_batch(
        &self,
        topo: &Topology,
        session: u64,
        bytes: &Bytes,
        units: &mut Vec<Unit>,
        items: &mut Vec<Item>,
    ) {
        each_request(bytes, |this, args| {
            let d = Descriptor::of(args);
            let readonly = d.readonly();
            let may_hold = crate::command::may_be_held(d.index());
            let plan = plan::plan(d.info, args);
            let mut unit =
                |bytes: Bytes, node: Option<&Arc<Node>>, slot, pinned| -> Option<usize> {
                    let node = node?.clone();
                    units.push(Unit {
                        bytes,
                        node,
                        slot,
                        pinned,
                        ask: false,
                        readonly,
                        may_hold,
                        reply: None,
                    });
                    Some(units.len() - 1)
                };
            let no_nodes = || {
                let mut out = Vec::new();
                reply::error(
                    &mut out,
                    "CLUSTERDOWN The cluster has no primary serving slots",
                );
                Item::Local(out.into())
            };
            let item = match plan {
                Plan::Slot(slot) => match unit(
                    this,
                    self.target(topo, readonly, slot, session).as_ref(),
                    slot,
                    false,
                ) {
                    Some(u) => Item::One(u),
                    None => no_nodes(),
                },
                Plan::Refuse(text) => {
                    let mut out = Vec::new();
                    reply::error(&mut out, text);
                    Item::Local(out.into())
                }
                Plan::Every(how) | Plan::EveryNode(how) => {
                    let every;
                    let nodes = if matches!(plan, Plan::EveryNode(_)) {
                        every = self.every_node(topo);
                        &every
                    } else {
                        &topo.primaries
                    };
                    let us: Vec<usize> = nodes
                        .iter()
                        .filter_map(|n| unit(this.clone(), Some(n), None, true))
                        .collect();
                    if us.is_empty() {
                        no_nodes()
                    } else {
                        Item::Merged {
                            how,
                            units: us,
                            positions: Vec::new(),
                        }
                    }
                }
                Plan::Split { merge: how, parts } => {
                    let mut us = Vec::new();
                    let mut positions = Vec::new();
                    let head = how.head();
                    for (slot, idx) in parts {
                        let mut sub: Vec<&[u8]> = (0..head).map(|i| args.arg(i)).collect();
                        sub.extend(idx.iter().map(|&i| args.arg(i)));
                        let mut out = Vec::new();
                        encode_command(&sub, &mut out);
                        // MGET: the element of key argument i is element i-1.
                        positions.push(idx.iter().map(|&i| i - head).collect());
                        if let Some(u) = unit(
                            out.into(),
                            topo.primary(Some(slot), session),
                            Some(slot),
                            false,
                        ) {
                            us.push(u);
                        }
                    }
                    Item::Merged {
                        how,
                        units: us,
                        positions,
                    }
                }
                Plan::Scan => self.plan_scan(topo, args, &mut unit),
                Plan::Home => match unit(this, self.home().as_ref(), None, true) {
                    Some(u) => Item::One(u),
                    None => no_nodes(),
                },
            };
            items.push(item);
            true
        });
    }

    /// Every node of the map that may serve (the cluster does not mark it
    /// failed, the last word about it was not a failure, its breaker is not open),
    /// primaries first; if none may, every node the cluster does not mark failed.
    fn every_node(&self, topo: &Topology) -> Vec<Arc<Node>> {
        let shards = topo.map.shards();
        let primaries = shards.iter().map(|s| &s.primary);
        let replicas = shards.iter().flat_map(|s| &s.replicas);
        let mut nodes: Vec<Arc<Node>> = primaries
            .chain(replicas)
            .filter(|n| n.health != map::Health::Failed)
            .filter_map(|n| self.node(&n.addr))
            .collect();
        // When none may serve (every node's last word a failure, e.g. right
        // after its connections were killed), every node is tried: its own
        // error, if any, is truer than a CLUSTERDOWN the cluster never said.
        if nodes.iter().any(|n| n.may_serve()) {
            nodes.retain(|n| n.may_serve());
        }
        nodes
    }

    fn plan_scan(
        &self,
        topo: &Topology,
        args: &dyn crate::command::ArgList,
        unit: &mut AddUnit<'_>,
    ) -> Item {
        let local = |text: &str| {
            let mut out = Vec::new();
            reply::error(&mut out, text);
            Item::Local(out.into())
        };
        let nodes = topo.primaries.len();
        let cursor = std::str::from_utf8(args.arg(1))
            .ok()
            .and_then(|c| c.parse::<u64>().ok());
        let Some(cursor) = cursor else {
            return local("ERR invalid cursor");
        };
        if nodes == 0 {
            return local("CLUSTERDOWN The cluster has no primary serving slots");
        }
        let (index, node_cursor) = plan::scan_position(cursor, nodes);
        let c = node_cursor.to_string();
        let mut sub: Vec<&[u8]> = vec![args.arg(0), c.as_bytes()];
        sub.extend((2..args.count()).map(|i| args.arg(i)));
        let mut out = Vec::new();
        encode_command(&sub, &mut out);
        let count = (2..args.count())
            .find(|&i| args.arg(i).eq_ignore_ascii_case(b"COUNT"))
            .and_then(|i| std::str::from_utf8(args.arg(i + 1)).ok()?.parse().ok())
            .unwrap_or(10usize);
        match unit(out.into(), topo.primaries.get(index), None, true) {
            Some(u) => Item::Scan {
                units: vec![u],
                index,
                nodes,
                count,
                args: (0..args.count())
                    .map(|i| Bytes::copy_from_slice(args.arg(i)))
                    .collect(),
            },
            None => local("ERR invalid cursor"),
        }
    }

    /// `SCAN`: a node walked to its end with fewer keys found than the
    /// request's `COUNT` goes on on the next nodes in the same call, as one
    /// call on a standalone server returns a small keyspace whole (cursor 0).
    /// A node whose walk fails is left for the client's next call.
    async fn scan_on(
        self: &Arc<Self>,
        via: Via,
        units: &mut Vec<Unit>,
        items: &mut [Item],
        retry: Retry,
    ) {
        for item in items.iter_mut() {
            let Item::Scan {
                units: walked,
                index,
                nodes,
                count,
                args,
            } = item
            else {
                continue;
            };
            // The first node's reply, then each next one's: its cursor and keys.
            let mut last = walked
                .last()
                .and_then(|&u| scan_reply(unit_reply(units, u)));
            let mut found = last.as_ref().map_or(0, |(_, keys)| keys.len());
            while last.as_ref().is_some_and(|(cursor, _)| *cursor == 0) && found < *count {
                let next = *index + walked.len();
                let topo = self.topology();
                let node = topo
                    .as_ref()
                    .filter(|t| t.primaries.len() == *nodes)
                    .and_then(|t| t.primaries.get(next).cloned());
                let Some(node) = node else {
                    break;
                };
                let mut sub: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
                if let Some(c) = sub.get_mut(1) {
                    *c = b"0";
                }
                let mut out = Vec::new();
                encode_command(&sub, &mut out);
                units.push(Unit {
                    bytes: out.into(),
                    node,
                    slot: None,
                    pinned: true,
                    ask: false,
                    readonly: true,
                    may_hold: false,
                    reply: None,
                });
                let u = units.len() - 1;
                let flights = self.dispatch(via, units, &[u], retry).await;
                self.collect(flights, units).await;
                last = scan_reply(unit_reply(units, u));
                let Some((_, keys)) = &last else {
                    break;
                };
                found += keys.len();
                walked.push(u);
            }
        }
    }

    /// Sends the units `which` (in that order), one batch per node.
    async fn dispatch(
        &self,
        via: Via,
        units: &mut [Unit],
        which: &[usize],
        retry: Retry,
    ) -> Vec<Flight> {
        let mut groups: Vec<(Arc<Node>, Vec<usize>)> = Vec::new();
        for &u in which {
            let node = &units[u].node;
            match groups.iter_mut().find(|(n, _)| Arc::ptr_eq(n, node)) {
                Some((_, g)) => g.push(u),
                None => groups.push((node.clone(), vec![u])),
            }
        }
        let mut flights = Vec::with_capacity(groups.len());
        for (node, group) in groups {
            if let Err(rejected) = node.breaker.check() {
                let secs = rejected.retry_in.map_or(0, |d| d.as_secs() + 1);
                let mut out = Vec::new();
                reply::error(
                    &mut out,
                    &format!(
                        "CIRCUITOPEN database {} node {} is unavailable; retry in {secs}s",
                        self.label, node.addr
                    ),
                );
                flights.push(Flight {
                    units: group,
                    rx: Err(out.into()),
                });
                continue;
            }
            let size = group
                .iter()
                .map(|&u| units[u].bytes.len() + if units[u].ask { ASKING.len() } else { 0 })
                .sum();
            let mut buf = BytesMut::with_capacity(size);
            let mut count = 0u32;
            let mut readonly = true;
            let mut may_hold = false;
            for &u in &group {
                let unit = &units[u];
                may_hold |= unit.may_hold;
                if unit.ask {
                    buf.extend_from_slice(ASKING);
                    count += 1;
                }
                buf.extend_from_slice(&unit.bytes);
                count += 1;
                readonly &= unit.readonly;
            }
            node.requests
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            node.shared(via)
                .send(Batch {
                    bytes: buf.freeze(),
                    count,
                    reply: tx,
                    block: crate::command::Block::No,
                    retry: Retry {
                        readonly,
                        attempts: 0,
                        ..retry
                    },
                    divert: None,
                    may_hold,
                })
                .await;
            flights.push(Flight {
                units: group,
                rx: Ok(rx),
            });
        }
        flights
    }

    /// Waits for the replies of `flights` and gives each unit its reply.
    async fn collect(self: &Arc<Self>, flights: Vec<Flight>, units: &mut [Unit]) {
        for f in flights {
            let rx = match f.rx {
                Ok(rx) => rx,
                Err(refused) => {
                    for u in f.units {
                        units[u].reply = Some(refused.clone());
                    }
                    // The node's breaker is open: it may have been failed over
                    // (with no other request failing or redirected, nothing
                    // else would look at the map before the periodic refresh).
                    self.after_failure();
                    continue;
                }
            };
            let replies = match rx.await {
                Ok(answer) => whole(answer).await,
                Err(_) => Err(UpstreamError::Connect {
                    addr: String::new(),
                    reason: "the connection task ended".into(),
                }),
            };
            match replies {
                Ok(bytes) => {
                    let mut at = 0;
                    for &u in &f.units {
                        if units[u].ask {
                            // ASKING's +OK.
                            at += frame_len(&bytes[at..]);
                        }
                        let n = frame_len(&bytes[at..]);
                        units[u].reply = Some(bytes.slice(at..at + n));
                        at += n;
                    }
                }
                Err(e) => {
                    let addr = f.units.first().map_or("", |&u| units[u].node.addr.as_str());
                    let mut out = Vec::new();
                    reply::error(
                        &mut out,
                        &format!("UPSTREAM database {} node {addr}: {e}", self.label),
                    );
                    let out = Bytes::from(out);
                    for &u in &f.units {
                        units[u].reply = Some(out.clone());
                    }
                    // A failed node may have been failed over.
                    self.after_failure();
                }
            }
        }
    }

    /// The pause before round `round` of resending what `-TRYAGAIN` or
    /// `-CLUSTERDOWN` refused: the back-off's, at most 1 s (a slot migration or
    /// an election ends within a few).
    pub fn again_pause(&self, round: u32) -> Duration {
        self.backoff.delay(round).min(Duration::from_secs(1))
    }

    #[allow(clippy::too_many_arguments)]
    async fn gather(
        self: Arc<Self>,
        via: Via,
        mut units: Vec<Unit>,
        mut items: Vec<Item>,
        flights: Vec<Flight>,
        mut ticket: Ticket,
        batch: Batch,
    ) {
        self.collect(flights, &mut units).await;
        let mut waited = false;
        for round in 0..MAX_REDIRECTS {
            let mut redo: Vec<(usize, Redirect)> = units
                .iter()
                .enumerate()
                .filter_map(|(i, u)| u.reply.as_deref().and_then(merge::redirect).map(|r| (i, r)))
                .collect();
            // `-TRYAGAIN`/`-CLUSTERDOWN` are waited out within the bound of any
            // retry (`connect_timeout + command_timeout` after the batch was
            // sent); past it, Redis's own error is passed on. Redirects to a node
            // are still followed (a client of a standalone Redis never sees them).
            let pause = self.again_pause(round);
            if Instant::now() + pause >= batch.retry.bound {
                redo.retain(|(_, r)| *r != Redirect::Again);
            }
            if redo.is_empty() {
                break;
            }
            if !std::mem::replace(&mut waited, true) {
                ticket.earlier_settled().await;
            }
            let mut moved = false;
            let mut again = false;
            for (u, r) in &redo {
                let unit = &mut units[*u];
                unit.ask = false;
                match r {
                    Redirect::Moved(addr) | Redirect::Ask(addr) => {
                        if let Some(n) = self.node(addr) {
                            n.redirects.fetch_add(1, Ordering::Relaxed);
                            unit.node = n;
                        }
                        if matches!(r, Redirect::Ask(_)) {
                            unit.ask = true;
                            self.counters().asked.fetch_add(1, Ordering::Relaxed);
                        } else {
                            moved = true;
                            self.counters().moved.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Redirect::Again => {
                        again = true;
                        self.counters().again.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if again {
                tokio::time::sleep(pause).await;
                self.refresh(self.generation()).await;
                if let Some(t) = self.topology() {
                    for (u, r) in &redo {
                        let unit = &mut units[*u];
                        if *r == Redirect::Again && !unit.pinned {
                            if let Some(n) = t.primary(unit.slot, via.session) {
                                unit.node = n.clone();
                            }
                        }
                    }
                }
            }
            if moved {
                self.refresh_soon();
            }
            let which: Vec<usize> = redo.iter().map(|(u, _)| *u).collect();
            let flights = self.dispatch(via, &mut units, &which, batch.retry).await;
            self.collect(flights, &mut units).await;
        }
        if items.iter().any(|i| matches!(i, Item::Scan { .. })) {
            self.scan_on(via, &mut units, &mut items, batch.retry).await;
        }
        let mut out = Vec::new();
        for item in &items {
            render(item, &units, &mut out);
        }
        let _ = batch.reply.send(Answer::from(Ok(Bytes::from(out))));
        // Settled: the session's later batches may resend.
        drop(ticket);
    }
}

/// The length of the reply frame at the start of `bytes` (all of it if it cannot
/// be framed: a node's replies are complete).
fn frame_len(bytes: &[u8]) -> usize {
    match reply::scan(bytes) {
        Ok(Some(f)) => f.len,
        _ => bytes.len(),
    }
}

/// A batch answer with its streamed parts put back together.
async fn whole(answer: Answer) -> Result<Bytes, UpstreamError> {
    let first = answer.reply?;
    let Some(mut rest) = answer.rest else {
        return Ok(first);
    };
    let mut all = BytesMut::from(&first[..]);
    while let Some(part) = rest.recv().await {
        all.extend_from_slice(&part?);
    }
    Ok(all.freeze())
}

fn unit_reply(units: &[Unit], u: usize) -> &[u8] {
    units[u]
        .reply
        .as_deref()
        .unwrap_or(b"-ERR cluster: no reply\r\n")
}

/// Appends the client's reply for `item`.
fn render(item: &Item, units: &[Unit], out: &mut Vec<u8>) {
    match item {
        Item::One(u) => out.extend_from_slice(unit_reply(units, *u)),
        Item::Local(b) => out.extend_from_slice(b),
        Item::Merged {
            how,
            units: us,
            positions,
        } => {
            let parts: Vec<&[u8]> = us.iter().map(|&u| unit_reply(units, u)).collect();
            let pick = fastrand::usize(..);
            merge::merge(*how, &parts, positions, pick, out);
        }
        Item::Scan {
            units: walked,
            index,
            nodes,
            ..
        } => {
            let replies: Vec<&[u8]> = walked.iter().map(|&u| unit_reply(units, u)).collect();
            let parsed: Option<Vec<ScanReply<'_>>> =
                replies.iter().map(|r| scan_reply(r)).collect();
            let Some(parsed) = parsed.filter(|p| !p.is_empty()) else {
                // An error (or what is not a SCAN reply): passed on as it came.
                let odd = replies.iter().find(|r| scan_reply(r).is_none());
                out.extend_from_slice(odd.copied().unwrap_or(b"-ERR cluster: no reply\r\n"));
                return;
            };
            let last = index + walked.len() - 1;
            let next = parsed.last().map_or(0, |(c, _)| *c);
            let cursor = if next == 0 {
                if last + 1 < *nodes {
                    Some(last as u64 + 1)
                } else {
                    Some(0)
                }
            } else {
                plan::scan_cursor(last, *nodes, next)
            };
            match cursor {
                Some(c) => {
                    reply::array_header(out, 2);
                    reply::bulk(out, c.to_string().as_bytes());
                    let keys = parsed.iter().flat_map(|(_, k)| k);
                    reply::array_header(out, keys.clone().count());
                    for k in keys {
                        out.extend_from_slice(k);
                    }
                }
                None => reply::error(out, "ERR cluster: SCAN cursor too large to encode"),
            }
        }
    }
}

/// The next cursor and the keys of a node's `SCAN` reply.
type ScanReply<'a> = (u64, Vec<&'a [u8]>);

/// A node's `SCAN` reply read ([`ScanReply`]).
fn scan_reply(r: &[u8]) -> Option<ScanReply<'_>> {
    let e = merge::elements(r).filter(|e| e.len() == 2)?;
    let c = crate::protocol::value::decode(e[0], 0).ok()??.0.text()?;
    Some((c.parse().ok()?, merge::elements(e[1])?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::value::Value;

    fn bulk(t: &str) -> Value {
        Value::Bulk(Some(t.as_bytes().to_vec()))
    }

    /// `CLUSTER SLOTS` of two primaries on loopback `a` and `b`, half the slots each.
    fn two_shards(a: u16, b: u16) -> SlotMap {
        let range = |from, to, port: u16, id: &str| {
            Value::Array(Some(vec![
                Value::Int(from),
                Value::Int(to),
                Value::Array(Some(vec![
                    bulk("127.0.0.1"),
                    Value::Int(i64::from(port)),
                    bulk(id),
                ])),
            ]))
        };
        let reply = Value::Array(Some(vec![
            range(0, 8191, a, "a"),
            range(8192, 16383, b, "b"),
        ]));
        SlotMap::from_slots(&reply, "127.0.0.1").expect("a map")
    }

    /// The home node: seeds not in the map passed over, the first seed of the
    /// map while it may serve; the next once a session's connection to it failed;
    /// back when it answers again.
    #[tokio::test]
    async fn home_is_the_first_seed_of_the_map_that_may_serve() {
        // Nodes that accept and never answer (their probes stay pending for the
        // test's few milliseconds), and a port nothing listens on.
        let a = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let b = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (pa, pb) = (
            a.local_addr().expect("addr").port(),
            b.local_addr().expect("addr").port(),
        );
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let mut base = crate::config::Config::for_upstream("127.0.0.1", pa).databases[0]
            .upstream
            .clone();
        let seeds = [gone, pb, pa];
        base.cluster = Some(Arc::new(crate::config::ClusterConfig {
            nodes: seeds
                .iter()
                .map(|p| ("127.0.0.1".to_string(), *p))
                .collect(),
            read_from: ReadFrom::Primary,
        }));
        let stop = CancellationToken::new();
        let cluster = Cluster::start(&base, "t".into(), Arc::default(), &stop);
        let home = |c: &Cluster| c.home().map(|n| n.addr.clone());
        assert_eq!(
            home(&cluster),
            Some(format!("127.0.0.1:{gone}")),
            "before the map: the first seed"
        );
        cluster.install(two_shards(pa, pb));
        let (at_a, at_b) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
        assert_eq!(
            home(&cluster),
            Some(at_b.clone()),
            "the first seed in the map"
        );
        cluster.node_failed(&at_b);
        assert_eq!(home(&cluster), Some(at_a.clone()), "the next one");
        cluster.node_failed(&at_a);
        assert_eq!(
            home(&cluster),
            Some(at_b.clone()),
            "none may serve: the first"
        );
        // B answers again (its connections' observer hears a success).
        let node = cluster.node(&at_b).expect("b");
        let observer = NodeObserver {
            policy: Policy {
                breaker: node.breaker.clone(),
                backoff: Backoff::from(&base.resilience),
            },
            down: node.down.clone(),
        };
        observer.failure();
        assert!(!node.may_serve());
        observer.success();
        assert!(node.may_serve());
        assert_eq!(home(&cluster), Some(at_b), "back on the first seed");
        stop.cancel();
        drop((a, b));
    }
}
