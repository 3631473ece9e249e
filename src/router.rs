//! The database router: client-facing database index -> that database's upstream.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cluster::{self, Cluster};
use crate::command::table;
use crate::config::{Config, DatabaseConfig, UpstreamConfig};
use crate::resilience::{Backoff, Breaker, BreakerConfig, Policy, StatsTable};
use crate::stats::DbStats;
use crate::upstream::dedicated::{self, Pool};
use crate::upstream::health::{self, HealthState};
use crate::upstream::mux::{Batch, MuxHandle};
use crate::upstream::sentinel;
use crate::upstream::Observer;

/// One client-facing database and its shared upstream connections.
///
/// A configuration reload builds a new `Database` for every database whose
/// settings changed; one that reaches the same upstream ([`UpstreamConfig::same_endpoint`])
/// keeps its statistics, breaker (with the new thresholds) and health state, and its
/// connections too when none of their settings changed. Sessions move to the new
/// one at their next batch; the old one's connections close when the last session
/// and in-flight command let go of it.
#[derive(Debug)]
pub struct Database {
    /// Its configuration.
    pub config: DatabaseConfig,
    /// Its counters.
    pub stats: Arc<DbStats>,
    /// Circuit breaker, fed by every upstream outcome and the health probe.
    pub breaker: Arc<Breaker>,
    /// What the health probe last found.
    pub health: Arc<HealthState>,
    /// Per-command statistics, indexed by the command table's index (unknown
    /// commands share the last slot).
    pub commands: Arc<StatsTable>,
    /// Refused commands, by command-table index (`deny_commands`).
    denied: Vec<bool>,
    /// `deny_commands` names `proxy`: the proxy's own admin command is refused.
    denies_proxy: bool,
    /// Removed from the configuration by a reload (see [`Database::removed`]).
    removed: bool,
    /// Its upstream connections and health probe.
    conns: Arc<Conns>,
}

/// A database's upstream connections: the shared (multiplexed) slots, the pools of
/// exclusive connections, and the health probe, which stops when this is dropped
/// (then the slots' tasks end too, once their last batch is answered).
#[derive(Debug)]
struct Conns {
    /// Shared (multiplexed) connection slots.
    slots: Vec<MuxHandle>,
    /// The same, speaking RESP3 (for sessions that sent `HELLO 3`).
    slots3: Vec<MuxHandle>,
    /// One more slot of each (RESP2, RESP3) for sessions whose own slot is held
    /// up by another client's long script or paused write ([`Database::detour`]);
    /// empty on a cluster (its nodes have theirs). Connected when first used.
    detours: Vec<MuxHandle>,
    /// Pool of exclusive connections (transactions, blocking commands).
    pool: Pool,
    /// The same for RESP3 sessions.
    pool3: Pool,
    /// Stops the health probe (dropped, or retired by a reload).
    probe: StopOnDrop,
    /// Stops the Sentinel watcher (if any) when the connections are dropped.
    _sentinel_watcher: Option<tokio_util::sync::DropGuard>,
    /// A Redis Cluster upstream: its nodes' connections and the slot map (then
    /// `slots` are empty and `pool` is the first seed node's).
    cluster: Option<Arc<Cluster>>,
}

/// Cancels its token when dropped.
#[derive(Debug)]
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// What a database's connections are made with, besides its identity.
struct Shared<'a> {
    stats: &'a Arc<DbStats>,
    breaker: &'a Arc<Breaker>,
    health: &'a Arc<HealthState>,
}

impl Conns {
    /// Starts the shared slots (they connect lazily), the pools and the probe.
    fn start(db: &DatabaseConfig, with: Shared<'_>, shutdown: &CancellationToken) -> Conns {
        if db.upstream.cluster.is_some() {
            let seed = cluster::client::seed_config(&db.upstream);
            let label = format!("'{}' (db {})", db.name(), db.index);
            let cluster = Cluster::start(&db.upstream, label, with.stats.clone(), shutdown);
            let probe = shutdown.child_token();
            watch_cluster_health(&cluster, with.health, &probe);
            return Conns {
                slots: Vec::new(),
                slots3: Vec::new(),
                detours: Vec::new(),
                pool: dedicated::pool(&seed, false),
                pool3: dedicated::pool(&seed, true),
                probe: StopOnDrop(probe),
                _sentinel_watcher: None,
                cluster: Some(cluster),
            };
        }
        let upstream = Arc::new(db.upstream.clone());
        let observer: Arc<dyn Observer> = Arc::new(Policy {
            breaker: with.breaker.clone(),
            backoff: Backoff::from(&db.upstream.resilience),
        });
        let spawn = |resp3, n: u32| -> Vec<MuxHandle> {
            (0..n.max(1))
                .map(|_| {
                    MuxHandle::spawn(
                        upstream.clone(),
                        with.stats.clone(),
                        observer.clone(),
                        resp3,
                    )
                })
                .collect()
        };
        let n = db.upstream.mux_connections;
        let (slots, slots3) = (spawn(false, n), spawn(true, n));
        let detours = [spawn(false, 1), spawn(true, 1)].concat();
        // A Sentinel-backed database's watcher (follows failovers).
        let sentinel_watcher =
            sentinel::spawn_watcher(upstream.clone(), observer.clone(), shutdown);
        let probe = shutdown.child_token();
        health::spawn(
            upstream.clone(),
            with.health.clone(),
            observer,
            // RESP3 slots stay lazy: most deployments never use them.
            slots.clone(),
            probe.clone(),
        );
        Conns {
            pool: dedicated::pool(&db.upstream, false),
            pool3: dedicated::pool(&db.upstream, true),
            slots,
            slots3,
            detours,
            probe: StopOnDrop(probe),
            _sentinel_watcher: sentinel_watcher,
            cluster: None,
        }
    }
}

/// A cluster database's health, from its nodes' probes: healthy while every slot
/// is served and every primary's last probe succeeded (checked every second).
fn watch_cluster_health(
    cluster: &Arc<Cluster>,
    health: &Arc<HealthState>,
    stop: &CancellationToken,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let (weak, health, stop) = (Arc::downgrade(cluster), health.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
            let Some(c) = weak.upgrade() else { return };
            let ok = c.topology().is_some_and(|t| {
                t.map.covered() == cluster::SLOTS
                    && !t.primaries.is_empty()
                    && t.primaries.iter().all(|n| n.health.healthy.load(Relaxed))
            });
            health.healthy.store(ok, Relaxed);
        }
    });
}

/// Whether connections opened for `a` serve `b` as they are: the same endpoint,
/// and the same pool, slot count, timeouts, retries and probe interval (the
/// breaker's thresholds change in place, `deny_commands` is the session's check).
fn same_connections(a: &UpstreamConfig, b: &UpstreamConfig) -> bool {
    let (ra, rb) = (&a.resilience, &b.resilience);
    a.same_endpoint(b)
        && a.pool_size == b.pool_size
        && a.mux_connections == b.mux_connections
        && a.connect_timeout == b.connect_timeout
        && a.command_timeout == b.command_timeout
        && ra.retry_attempts == rb.retry_attempts
        && ra.retry_base_delay == rb.retry_base_delay
        && ra.retry_max_delay == rb.retry_max_delay
        && ra.health_check_interval == rb.health_check_interval
}

impl Database {
    /// Builds `db`; with `old` (the database of the same index before a reload)
    /// on the same endpoint, its statistics, breaker, health state and, if their
    /// settings did not change, its connections are carried over.
    fn build(
        db: &DatabaseConfig,
        old: Option<&Database>,
        shutdown: &CancellationToken,
    ) -> Database {
        let old = old.filter(|o| o.config.upstream.same_endpoint(&db.upstream));
        // The same endpoint: keep the primary the Sentinel watcher found (a fresh
        // config's endpoint is unresolved).
        let mut db = db.clone();
        if let Some(o) = old {
            db.upstream.endpoint = o.config.upstream.endpoint.clone();
        }
        let db = &db;
        let breaker_cfg = BreakerConfig::from(&db.upstream.resilience);
        let (stats, breaker, health, commands) = match old {
            Some(o) => {
                o.breaker.reconfigure(breaker_cfg);
                (
                    o.stats.clone(),
                    o.breaker.clone(),
                    o.health.clone(),
                    o.commands.clone(),
                )
            }
            None => (
                Arc::new(DbStats::default()),
                Arc::new(Breaker::new(breaker_cfg)),
                Arc::new(HealthState::default()),
                Arc::new(StatsTable::new(table::COUNT)),
            ),
        };
        let conns = match old {
            Some(o) if same_connections(&o.config.upstream, &db.upstream) => o.conns.clone(),
            _ => Arc::new(Conns::start(
                db,
                Shared {
                    stats: &stats,
                    breaker: &breaker,
                    health: &health,
                },
                shutdown,
            )),
        };
        Database {
            denied: denied(db),
            denies_proxy: db.upstream.deny_commands.iter().any(|n| n == PROXY),
            removed: false,
            config: db.clone(),
            stats,
            breaker,
            health,
            commands,
            conns,
        }
    }

    /// What a session whose database a reload removed is left on: the same
    /// connections (so replies in flight still arrive), but every command refused
    /// (with a message saying why) except those that leave it: SELECT, AUTH,
    /// HELLO, CLIENT, RESET, QUIT (and PROXY).
    pub fn removed(&self) -> Database {
        const LEAVES: [&str; 6] = ["select", "auth", "hello", "client", "reset", "quit"];
        let denied = (0..=table::COUNT)
            .map(|i| {
                let name = crate::command::table_name(i);
                let base = name.split('|').next().unwrap_or(name);
                !LEAVES.contains(&base)
            })
            .collect();
        Database {
            config: self.config.clone(),
            stats: self.stats.clone(),
            breaker: self.breaker.clone(),
            health: self.health.clone(),
            commands: self.commands.clone(),
            denied,
            denies_proxy: false,
            removed: true,
            conns: self.conns.clone(),
        }
    }

    /// A reload removed this database (see [`Database::removed`]).
    #[inline]
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// The shared connection a session uses. A session always uses the same one, so
    /// that its commands run upstream in the order it sent them.
    #[inline]
    pub fn slot(&self, session_id: u64, resp3: bool) -> &MuxHandle {
        let slots = if resp3 {
            &self.conns.slots3
        } else {
            &self.conns.slots
        };
        &slots[(session_id % slots.len() as u64) as usize]
    }

    /// Whether a session's shared slot is held up by a long script or a paused
    /// write ([`MuxHandle::busy`]): a session with nothing in flight then sends on
    /// the database's detour slot until it is not (on a cluster, the nodes'
    /// detour connections: `Cluster::detour`).
    #[inline]
    pub fn detour(&self, session_id: u64, resp3: bool) -> bool {
        match &self.conns.cluster {
            Some(c) => c.detour(session_id, resp3),
            None => self.slot(session_id, resp3).busy(),
        }
    }

    /// Sends a batch on the session's shared connection (on a cluster, on the
    /// shared connections of the nodes its keys live on); with `detour`, on the
    /// database's detour slot ([`Database::detour`]).
    pub async fn send_shared(&self, session_id: u64, resp3: bool, detour: bool, batch: Batch) {
        match &self.conns.cluster {
            // Boxed: the cluster's future is large, and would otherwise be part
            // of every session's task future, standalone ones included.
            Some(c) => {
                let via = cluster::client::Via {
                    session: session_id,
                    resp3,
                    detour,
                };
                Box::pin(c.send(via, batch)).await
            }
            None => match self
                .conns
                .detours
                .get(usize::from(resp3))
                .filter(|_| detour)
            {
                Some(slot) => slot.send(batch).await,
                None => self.slot(session_id, resp3).send(batch).await,
            },
        }
    }

    /// The Redis Cluster upstream, if this database is on one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.conns.cluster.as_ref()
    }

    /// The pool a session's exclusive connection comes from: on a cluster, the
    /// pool of the node serving `slot` (the slot of the first keyed request).
    pub fn pool_for(&self, resp3: bool, slot: Option<u16>, session_id: u64) -> Pool {
        self.conns
            .cluster
            .as_ref()
            .and_then(|c| c.pool(slot, session_id, resp3))
            .unwrap_or_else(|| self.pool(resp3).clone())
    }

    /// The pool of exclusive connections for a RESP2 or RESP3 session.
    pub fn pool(&self, resp3: bool) -> &Pool {
        if resp3 {
            &self.conns.pool3
        } else {
            &self.conns.pool
        }
    }

    /// Whether the command with this table index is refused for this database.
    #[inline]
    pub fn is_denied(&self, idx: usize) -> bool {
        self.denied.get(idx).copied().unwrap_or(false)
    }

    /// Whether `PROXY …` is refused for this database (`deny_commands: [proxy]`).
    #[inline]
    pub fn denies_proxy(&self) -> bool {
        self.denies_proxy
    }

    /// Number of shared connection slots.
    pub fn slot_count(&self) -> usize {
        self.conns.slots.len()
    }

    /// Whether `other` lives on the same upstream server (so db indexes can be
    /// translated between the two).
    pub fn same_server(&self, other: &Database) -> bool {
        self.config.upstream.same_server(&other.config.upstream)
    }

    /// Whether both use the very same connections (a reload that changed neither).
    pub fn same_connections(&self, other: &Database) -> bool {
        Arc::ptr_eq(&self.conns, &other.conns)
    }

    /// `name (db N)` for messages.
    pub fn label(&self) -> String {
        format!("'{}' (db {})", self.config.name(), self.config.index)
    }
}

/// All databases, indexed by client-facing index.
#[derive(Debug)]
pub struct Router {
    by_index: Vec<Option<Arc<Database>>>,
    all: Vec<Arc<Database>>,
    /// Where a new client starts (`default_database`).
    default: Option<Arc<Database>>,
}

impl Router {
    /// Builds the router, starts every database's shared connection slots (they
    /// connect lazily) and health probe. Must run inside a tokio runtime.
    pub fn new(config: &Config, shutdown: &CancellationToken) -> Router {
        Router::build(config, None, shutdown)
    }

    /// The router for a reloaded `config`: an unchanged database is the same
    /// `Arc` as in `self`; a changed one is new, carrying over what it can (see
    /// `Database::build`); a removed one is left out.
    pub fn reload(&self, config: &Config, shutdown: &CancellationToken) -> Router {
        Router::build(config, Some(self), shutdown)
    }

    fn build(config: &Config, old: Option<&Router>, shutdown: &CancellationToken) -> Router {
        let mut by_index: Vec<Option<Arc<Database>>> = Vec::new();
        let mut all = Vec::new();
        for db in &config.databases {
            let before = old.and_then(|r| r.get(i64::from(db.index)));
            let d = match before {
                // Exactly as it was: the same `Arc`.
                Some(b) if b.config == *db => b.clone(),
                _ => Arc::new(Database::build(db, before.map(|b| &**b), shutdown)),
            };
            let i = db.index as usize;
            if by_index.len() <= i {
                by_index.resize(i + 1, None);
            }
            by_index[i] = Some(d.clone());
            all.push(d);
        }
        let wanted = config.default_database as usize;
        let default = match by_index.get(wanted).and_then(Option::clone) {
            Some(d) => Some(d),
            // Only a config built in code can get here (loading validates it).
            None => {
                let first = all.first().cloned();
                if let Some(d) = &first {
                    tracing::warn!(
                        default_database = wanted,
                        start = %d.label(),
                        "default_database is not a configured database; new clients start on the lowest one"
                    );
                }
                first
            }
        };
        Router {
            by_index,
            all,
            default,
        }
    }

    /// The database a new client starts on (and `RESET` returns to): the
    /// configured `default_database` (db 0 unless set). `None` only for a router
    /// without databases.
    #[inline]
    pub fn default_database(&self) -> Option<&Arc<Database>> {
        self.default.as_ref()
    }

    /// The database a client selects with `SELECT index`.
    #[inline]
    pub fn get(&self, index: i64) -> Option<&Arc<Database>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.by_index.get(i))
            .and_then(Option::as_ref)
    }

    /// Every database, in index order.
    pub fn databases(&self) -> &[Arc<Database>] {
        &self.all
    }

    /// After a reload published `new`: stops the health probes of this (old)
    /// router's connections that `new` does not use. Sessions that still hold
    /// them (pinned to a transaction, a subscription …) finish their work on
    /// them, but the old upstream is no longer probed (nor its breaker fed) on
    /// their account.
    pub fn retire_replaced(&self, new: &Router) {
        for old in &self.all {
            let kept = new.all.iter().any(|n| Arc::ptr_eq(&n.conns, &old.conns));
            if !kept {
                old.conns.probe.0.cancel();
            }
        }
    }
}

/// The name of the proxy's own admin command in `deny_commands`.
pub const PROXY: &str = "proxy";

/// Checks every database's `deny_commands` against the command table: a name that
/// is not a Redis command (a typo) would protect nothing, so it is a configuration
/// error, not a warning. `proxy` (the proxy's own admin command) is accepted too.
pub fn validate_deny_commands(config: &Config) -> Result<(), String> {
    match unknown_deny(config) {
        Some((db, name)) => Err(format!(
            "database '{}' (db {}): deny_commands: unknown command '{}' (names are Redis commands, or proxy; subcommands written as \"config|set\")",
            db.name(),
            db.index,
            name
        )),
        None => Ok(()),
    }
}

/// The first `deny_commands` entry that names no command, if any.
pub fn unknown_deny_command(config: &Config) -> Option<String> {
    unknown_deny(config).map(|(_, name)| name.clone())
}

fn unknown_deny(config: &Config) -> Option<(&DatabaseConfig, &String)> {
    config.databases.iter().find_map(|db| {
        db.upstream
            .deny_commands
            .iter()
            .find(|n| *n != PROXY && deny_index(n).is_none())
            .map(|n| (db, n))
    })
}

/// The command-table index a `deny_commands` entry names (`None` for `proxy` and
/// unknown names).
pub fn deny_index(name: &str) -> Option<u16> {
    let upper = name.to_ascii_uppercase();
    let mut parts = upper.splitn(2, '|');
    let cmd = parts.next().unwrap_or("");
    let info = match parts.next() {
        Some(sub) => table::lookup_sub(cmd.as_bytes(), sub.as_bytes())
            .filter(|i| i.name.eq_ignore_ascii_case(name)),
        None => table::lookup(cmd.as_bytes()),
    };
    info.map(|i| i.index)
}

/// The `deny_commands` of a database as a table-index mask.
fn denied(db: &DatabaseConfig) -> Vec<bool> {
    let mut mask = vec![false; table::COUNT + 1];
    // Unknown names never get here: `validate_deny_commands` refuses them first.
    for i in db
        .upstream
        .deny_commands
        .iter()
        .filter_map(|n| deny_index(n))
    {
        mask[i as usize] = true;
    }
    mask
}
