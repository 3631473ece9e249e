//! The database router: client-facing database index -> that database's upstream.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::command::table;
use crate::config::{Config, DatabaseConfig};
use crate::resilience::{Backoff, Breaker, BreakerConfig, Policy, StatsTable};
use crate::stats::DbStats;
use crate::upstream::dedicated::{self, Pool};
use crate::upstream::health::{self, HealthState};
use crate::upstream::mux::MuxHandle;
use crate::upstream::sentinel;
use crate::upstream::Observer;

/// One client-facing database and its shared upstream connections.
#[derive(Debug)]
pub struct Database {
    /// Its configuration.
    pub config: DatabaseConfig,
    /// Its counters.
    pub stats: Arc<DbStats>,
    /// Pool of exclusive connections (transactions, blocking commands).
    pub pool: Pool,
    /// The same for RESP3 sessions.
    pub pool3: Pool,
    /// Circuit breaker, fed by every upstream outcome and the health probe.
    pub breaker: Arc<Breaker>,
    /// What the health probe last found.
    pub health: Arc<HealthState>,
    /// Per-command statistics, indexed by the command table's index (unknown
    /// commands share the last slot).
    pub commands: StatsTable,
    /// Refused commands, by command-table index (`deny_commands`).
    denied: Vec<bool>,
    /// `deny_commands` names `proxy`: the proxy's own admin command is refused.
    denies_proxy: bool,
    /// Shared (multiplexed) connection slots.
    slots: Vec<MuxHandle>,
    /// The same, speaking RESP3 (for sessions that sent `HELLO 3`).
    slots3: Vec<MuxHandle>,
    /// Stops the Sentinel watcher (if any) when the database is dropped.
    _sentinel_watcher: Option<tokio_util::sync::DropGuard>,
}

impl Database {
    /// The shared connection a session uses. A session always uses the same one, so
    /// that its commands run upstream in the order it sent them.
    #[inline]
    pub fn slot(&self, session_id: u64, resp3: bool) -> &MuxHandle {
        let slots = if resp3 { &self.slots3 } else { &self.slots };
        &slots[(session_id % slots.len() as u64) as usize]
    }

    /// The pool of exclusive connections for a RESP2 or RESP3 session.
    pub fn pool(&self, resp3: bool) -> &Pool {
        if resp3 {
            &self.pool3
        } else {
            &self.pool
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
        self.slots.len()
    }

    /// Whether `other` lives on the same upstream server (so db indexes can be
    /// translated between the two).
    pub fn same_server(&self, other: &Database) -> bool {
        let (a, b) = (&self.config.upstream, &other.config.upstream);
        a.host == b.host
            && a.port == b.port
            && a.sentinel == b.sentinel
            && a.username == b.username
            && a.password == b.password
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
        let mut by_index: Vec<Option<Arc<Database>>> = Vec::new();
        let mut all = Vec::new();
        for db in &config.databases {
            let stats = Arc::new(DbStats::default());
            let upstream = Arc::new(db.upstream.clone());
            let breaker = Arc::new(Breaker::new(BreakerConfig::from(&db.upstream.resilience)));
            let observer: Arc<dyn Observer> = Arc::new(Policy {
                breaker: breaker.clone(),
                backoff: Backoff::from(&db.upstream.resilience),
            });
            // A Sentinel-backed database's watcher (follows failovers).
            let sentinel_watcher =
                sentinel::spawn_watcher(upstream.clone(), observer.clone(), shutdown);
            let spawn = |resp3| -> Vec<MuxHandle> {
                (0..db.upstream.mux_connections.max(1))
                    .map(|_| {
                        MuxHandle::spawn(upstream.clone(), stats.clone(), observer.clone(), resp3)
                    })
                    .collect()
            };
            let (slots, slots3) = (spawn(false), spawn(true));
            let health = Arc::new(HealthState::default());
            health::spawn(
                upstream.clone(),
                health.clone(),
                observer,
                // RESP3 slots stay lazy: most deployments never use them.
                slots.clone(),
                shutdown.clone(),
            );
            let d = Arc::new(Database {
                pool: dedicated::pool(&db.upstream, false),
                pool3: dedicated::pool(&db.upstream, true),
                breaker,
                health,
                commands: StatsTable::new(table::COUNT),
                denied: denied(db),
                denies_proxy: db.upstream.deny_commands.iter().any(|n| n == PROXY),
                config: db.clone(),
                stats,
                slots,
                slots3,
                _sentinel_watcher: sentinel_watcher,
            });
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
}

/// The name of the proxy's own admin command in `deny_commands`.
pub const PROXY: &str = "proxy";

/// Checks every database's `deny_commands` against the command table: a name that
/// is not a Redis command (a typo) would protect nothing, so it is a configuration
/// error, not a warning. `proxy` (the proxy's own admin command) is accepted too.
pub fn validate_deny_commands(config: &Config) -> Result<(), String> {
    for db in &config.databases {
        for name in &db.upstream.deny_commands {
            if name != PROXY && deny_index(name).is_none() {
                return Err(format!(
                    "database '{}' (db {}): deny_commands: unknown command '{}' (names are Redis commands, or proxy; subcommands written as \"config|set\")",
                    db.name(),
                    db.index,
                    name
                ));
            }
        }
    }
    Ok(())
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
