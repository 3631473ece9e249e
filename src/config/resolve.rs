//! From the YAML tree to a [`Config`]: the top-level keys, the `redis_databases` entries
//! grouped by `db` (names sharing an index are aliases of one database), each database's
//! upstream resolved from its own [`Layer`] over the top level's (after environment
//! overrides) and the built-in defaults, the cross-key checks (retry delays, upstream db
//! range, `auth_passthrough` with `client_password`) and the start database.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::env::apply_env;
use super::error::{Fail, Origin};
use super::fields::{
    nonnegative_secs, parse_bool, parse_listen, parse_log_format, parse_log_level, parse_secret,
    parse_size, parse_socket_path, parse_socket_perm, parse_string, parse_u32, parse_u32_in,
    parse_usize, positive_secs, set_nullable, suggest, type_error, Map, Set,
};
use super::layer::{Layer, UPSTREAM_KEYS};
use super::secs;
use super::tls::parse_client_tls;
use super::types::{
    ClusterConfig, DatabaseConfig, Limits, OutputBufferLimit, ResilienceConfig, SentinelConfig,
    UpstreamConfig, DEFAULT_AUTH_TIMEOUT, DEFAULT_DENY_COMMANDS, DEFAULT_HOST, DEFAULT_LISTEN,
    DEFAULT_MAX_CLIENTS, DEFAULT_METRICS_LISTEN, DEFAULT_MUX_CONNECTIONS, DEFAULT_POOL_SIZE,
    DEFAULT_PORT, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_SLOWLOG_MAX_LEN, DEFAULT_SLOWLOG_THRESHOLD,
    DEFAULT_TIMEOUT, DEFAULT_UPSTREAM_DATABASES, MAX_CLIENT_DB,
};
use super::yaml::{KeyPath, Node};
use super::Config;
use crate::endpoint::Endpoint;

/// Keys allowed only at the top level (besides [`UPSTREAM_KEYS`]).
const TOP_ONLY_KEYS: &[&str] = &[
    "redis_databases",
    "listen",
    "unixsocket",
    "unixsocketperm",
    "client_tls",
    "metrics_listen",
    "client_password",
    "admin_password",
    "admin_only_info",
    "protected_mode",
    "auth_passthrough",
    "log_commands",
    "log_level",
    "log_format",
    "max_clients",
    "shutdown_timeout",
    "client_idle_timeout",
    "auth_timeout",
    "slowlog_threshold_ms",
    "slowlog_max_len",
    "busy_poll_us",
    "limits",
    "upstream_databases",
    "default_database",
];

/// Keys allowed only in a `redis_databases` entry (besides [`UPSTREAM_KEYS`]).
const DATABASE_ONLY_KEYS: &[&str] = &["db", "description", "upstream_db"];

/// The keys of `limits`.
const LIMIT_KEYS: &[&str] = &[
    "max_bulk_len",
    "max_args",
    "max_inline_len",
    "pubsub_buffer_limit",
    "client_reply_buffer",
    "client_read_ahead",
    "client_output_buffer_limit",
    "max_client_memory",
];

/// The keys of `limits.client_output_buffer_limit` (as a mapping).
const OUTPUT_BUFFER_KEYS: &[&str] = &["hard", "soft", "soft_seconds"];

/// Validates the whole document `root` and resolves it into a [`Config`].
pub(super) fn parse_config(
    root: &Node,
    source: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Fail> {
    let root_path = KeyPath::root();
    if *root == Node::Null {
        return Err(Fail::at(
            &root_path,
            "the file is empty; expected a mapping with a `redis_databases` key",
        ));
    }
    let allowed: Vec<&str> = TOP_ONLY_KEYS.iter().chain(UPSTREAM_KEYS).copied().collect();
    let top = Map::new(
        root,
        &root_path,
        "a mapping with a `redis_databases` key at the top level",
        Some(&allowed),
    )?;

    let mut layer = Layer::parse(&top)?;
    let (env_listen, env_client_password) = apply_env(&mut layer, env)?;

    // `listen: null` turns the plain listener off (with `client_tls`, TLS only).
    let (listen, plain_listener) = match env_listen {
        Some(addr) => (addr, true),
        None => match set_nullable(&top, "listen", |p, n| parse_listen(p, n).map(Some))? {
            None => (DEFAULT_LISTEN, true),
            Some(s) => (s.value.unwrap_or(DEFAULT_LISTEN), s.value.is_some()),
        },
    };
    let client_tls = set_nullable(&top, "client_tls", parse_client_tls)?.and_then(|s| s.value);
    let unixsocket = set_nullable(&top, "unixsocket", |p, n| parse_socket_path(p, n).map(Some))?
        .and_then(|s| s.value);
    let unixsocketperm = set_nullable(&top, "unixsocketperm", |p, n| {
        parse_socket_perm(p, n).map(Some)
    })?
    .and_then(|s| s.value);
    if !plain_listener && client_tls.is_none() && unixsocket.is_none() {
        return Err(Fail::at(
            &root_path.child("listen"),
            "null turns the plain listener off, but neither client_tls nor unixsocket is set: there would be nothing to listen on",
        ));
    }
    let metrics_listen =
        match set_nullable(&top, "metrics_listen", |p, n| parse_listen(p, n).map(Some))? {
            None => Some(DEFAULT_METRICS_LISTEN),
            Some(s) => s.value,
        };
    let client_password = match env_client_password {
        Some(p) => p,
        None => set_nullable(&top, "client_password", parse_secret)?.and_then(|s| s.value),
    };
    let admin_password = set_nullable(&top, "admin_password", parse_secret)?.and_then(|s| s.value);
    let admin_only_info = top
        .set("admin_only_info", parse_bool)?
        .is_some_and(|s| s.value);
    let protected_mode = top
        .set("protected_mode", parse_bool)?
        .is_none_or(|s| s.value);
    let auth_passthrough = match top.set("auth_passthrough", parse_bool)? {
        Some(s) if s.value && client_password.is_some() => {
            return Err(Fail::at(
                &root_path.child("auth_passthrough"),
                "cannot be true while client_password is set: either the proxy checks AUTH (client_password) or Redis does (auth_passthrough)",
            ));
        }
        s => s.is_some_and(|s| s.value),
    };
    let log_level = top
        .set("log_level", parse_log_level)?
        .map_or_else(|| "info".to_string(), |s| s.value);
    let log_format = top
        .set("log_format", parse_log_format)?
        .map_or_else(|| "text".to_string(), |s| s.value);
    let log_commands = top
        .set("log_commands", parse_bool)?
        .is_some_and(|s| s.value);
    let max_clients = top
        .set("max_clients", parse_usize)?
        .map_or(DEFAULT_MAX_CLIENTS, |s| s.value);
    let shutdown_timeout = top
        .set("shutdown_timeout", positive_secs)?
        .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |s| s.value);
    let client_idle_timeout = top
        .set("client_idle_timeout", nonnegative_secs)?
        .map_or(Duration::ZERO, |s| s.value);
    let auth_timeout = top
        .set("auth_timeout", nonnegative_secs)?
        .map_or(DEFAULT_AUTH_TIMEOUT, |s| s.value);
    let slowlog_threshold = top
        .set("slowlog_threshold_ms", parse_u32(0))?
        .map_or(DEFAULT_SLOWLOG_THRESHOLD, |s| {
            Duration::from_millis(u64::from(s.value))
        });
    let slowlog_max_len = top
        .set("slowlog_max_len", parse_usize)?
        .map_or(DEFAULT_SLOWLOG_MAX_LEN, |s| s.value);
    let busy_poll_us = top
        .set("busy_poll_us", parse_u32_in(0, 10_000))?
        .map_or(crate::busy_poll::DEFAULT_WINDOW_US, |s| s.value);
    let limits = match top.get("limits") {
        None => Limits::default(),
        Some((p, n)) => parse_limits(n, &p)?,
    };
    let upstream_databases = top
        .set("upstream_databases", parse_u32(1))?
        .map_or(DEFAULT_UPSTREAM_DATABASES, |s| s.value);

    let dbs_path = root_path.child("redis_databases");
    let Some((_, dbs_node)) = top.get("redis_databases") else {
        return Err(Fail::at(
            &dbs_path,
            "missing or empty: list at least one database, e.g. `main: { db: 0 }`",
        ));
    };
    let dbs = Map::new(
        dbs_node,
        &dbs_path,
        "a mapping of database names to { db: N, description: \"...\" }",
        None,
    )?;
    if dbs.entries.is_empty() {
        return Err(Fail::at(
            &dbs_path,
            "no databases: list at least one, e.g. `main: { db: 0 }`",
        ));
    }
    let entries = dbs
        .entries
        .iter()
        .map(|(name, node)| parse_entry(name, node, &dbs_path.child(name)))
        .collect::<Result<Vec<_>, _>>()?;
    let groups = group_entries(entries)?;
    let mut databases = groups
        .iter()
        .map(|g| {
            Ok(DatabaseConfig {
                index: g.index,
                names: g.names.clone(),
                description: g.description.clone(),
                upstream: resolve_upstream(g, &layer, upstream_databases)?,
            })
        })
        .collect::<Result<Vec<_>, Fail>>()?;
    check_key_prefixes(&groups, &layer, &databases)?;
    databases.sort_by_key(|d| d.index);
    let default_database = resolve_default_database(&top, &dbs_path, &databases)?;

    Ok(Config {
        listen,
        plain_listener,
        client_tls,
        unixsocket,
        unixsocketperm,
        metrics_listen,
        client_password,
        admin_password,
        admin_only_info,
        protected_mode,
        auth_passthrough,
        log_level,
        log_format,
        log_commands,
        limits,
        max_clients,
        shutdown_timeout,
        slowlog_threshold,
        slowlog_max_len,
        busy_poll_us,
        client_idle_timeout,
        auth_timeout,
        databases,
        default_database,
        source: source.map(Path::to_path_buf),
    })
}

/// A `redis_databases` entry as written.
struct Entry {
    name: String,
    path: KeyPath,
    index: Set<u32>,
    description: String,
    upstream_db: Option<Set<u32>>,
    layer: Layer,
}

fn parse_entry(name: &str, node: &Node, path: &KeyPath) -> Result<Entry, Fail> {
    if name.trim().is_empty() {
        return Err(Fail::at(path, "database names must not be empty"));
    }
    let allowed: Vec<&str> = DATABASE_ONLY_KEYS
        .iter()
        .chain(UPSTREAM_KEYS)
        .copied()
        .collect();
    let map = Map::new(
        node,
        path,
        "a mapping like { db: 0, description: \"...\" }",
        Some(&allowed),
    )?;
    let Some(index) = map.set("db", parse_u32(0))? else {
        return Err(Fail::At {
            key: path.child("db"),
            locate: path.clone(),
            occurrence: 0,
            message: format!(
                "missing required key `db` (the client-facing database index) for `{name}`"
            ),
        });
    };
    if index.value > MAX_CLIENT_DB {
        return Err(index.origin.fail(format!(
            "db must be between 0 and {MAX_CLIENT_DB}, got {}",
            index.value
        )));
    }
    let description = match map.get("description") {
        None => String::new(),
        Some((p, n)) => parse_string(&p, n)?,
    };
    Ok(Entry {
        name: name.to_string(),
        path: path.clone(),
        upstream_db: map.set("upstream_db", parse_u32(0))?,
        description,
        index,
        layer: Layer::parse(&map)?,
    })
}

/// Database entries grouped by `db` (aliases), in document order.
struct Group {
    index: u32,
    names: Vec<String>,
    description: String,
    db_origin: Origin,
    upstream_db: Option<Set<u32>>,
    layer: Layer,
}

fn group_entries(entries: Vec<Entry>) -> Result<Vec<Group>, Fail> {
    let mut groups: Vec<Group> = Vec::new();
    for e in entries {
        match groups.iter_mut().find(|g| g.index == e.index.value) {
            None => groups.push(Group {
                index: e.index.value,
                names: vec![e.name],
                description: e.description,
                db_origin: Origin::Key(e.path.child("db")),
                upstream_db: e.upstream_db,
                layer: e.layer,
            }),
            Some(g) => {
                let primary = g.names.first().cloned().unwrap_or_default();
                match (&g.upstream_db, e.upstream_db) {
                    (_, None) => {}
                    (None, Some(theirs)) => g.upstream_db = Some(theirs),
                    (Some(ours), Some(theirs)) => {
                        if ours.value != theirs.value {
                            return Err(theirs.origin.fail(format!(
                                "conflicts with {}: names sharing db {} are aliases of `{primary}` \
                                 and must agree on per-database settings",
                                ours.origin, g.index
                            )));
                        }
                    }
                }
                g.layer.merge_alias(e.layer, &primary, g.index)?;
                if g.description.is_empty() {
                    g.description = e.description;
                }
                g.names.push(e.name);
            }
        }
    }
    Ok(groups)
}

fn value_or<T: Clone>(set: &Option<Set<T>>, default: T) -> T {
    set.as_ref().map_or(default, |s| s.value.clone())
}

/// Resolves one database's upstream from its own layer over the top level's.
fn resolve_upstream(
    group: &Group,
    top: &Layer,
    upstream_databases: u32,
) -> Result<UpstreamConfig, Fail> {
    let own = &group.layer;
    let eff = own.over(top);
    // Timeouts: own key, own `timeout`, top key, top `timeout`, default.
    let timeout = |key: &Option<Set<Duration>>, top_key: &Option<Set<Duration>>| {
        key.as_ref()
            .or(own.timeout.as_ref())
            .or(top_key.as_ref())
            .or(top.timeout.as_ref())
            .map_or(DEFAULT_TIMEOUT, |s| s.value)
    };
    let defaults = ResilienceConfig::default();
    let resilience = ResilienceConfig {
        retry_attempts: value_or(&eff.retry_attempts, defaults.retry_attempts),
        retry_base_delay: value_or(&eff.retry_base_delay, defaults.retry_base_delay),
        retry_max_delay: value_or(&eff.retry_max_delay, defaults.retry_max_delay),
        failure_threshold: value_or(&eff.failure_threshold, defaults.failure_threshold),
        recovery_timeout: value_or(&eff.recovery_timeout, defaults.recovery_timeout),
        success_threshold: value_or(&eff.success_threshold, defaults.success_threshold),
        health_check_interval: value_or(&eff.health_check_interval, defaults.health_check_interval),
    };
    if resilience.retry_max_delay < resilience.retry_base_delay {
        let message = format!(
            "retry_max_delay ({}s) must not be less than retry_base_delay ({}s)",
            secs(resilience.retry_max_delay),
            secs(resilience.retry_base_delay)
        );
        // Blame the more specific of the two settings (the one this database sets).
        let blame = match (&eff.retry_max_delay, &eff.retry_base_delay) {
            (Some(max), Some(base)) => {
                if own.retry_base_delay.is_some() && own.retry_max_delay.is_none() {
                    base.origin.fail(format!(
                        "{message}; retry_max_delay is set at {}",
                        max.origin
                    ))
                } else {
                    max.origin.fail(format!(
                        "{message}; retry_base_delay is set at {}",
                        base.origin
                    ))
                }
            }
            (Some(max), None) => max
                .origin
                .fail(format!("{message} (the default base delay)")),
            (None, Some(base)) => base
                .origin
                .fail(format!("{message} (the default max delay)")),
            (None, None) => Fail::at(&KeyPath::root(), message),
        };
        return Err(blame);
    }
    let cluster = resolve_cluster(own, top, group.upstream_db.as_ref())?;
    let db = match &group.upstream_db {
        Some(s) => s.clone(),
        None => Set {
            // A cluster has only db 0 (`resolve_cluster` refuses another).
            value: if cluster.is_some() { 0 } else { group.index },
            origin: group.db_origin.clone(),
        },
    };
    if db.value >= upstream_databases {
        let how = if group.upstream_db.is_some() {
            ""
        } else {
            " (the upstream db defaults to `db`; set `upstream_db` to map it)"
        };
        return Err(db.origin.fail(format!(
            "upstream db index {} must be below upstream_databases ({upstream_databases}){how}",
            db.value
        )));
    }
    let sentinel = resolve_sentinel(own, top)?.filter(|_| cluster.is_none());
    Ok(UpstreamConfig {
        sentinel,
        cluster,
        replica_reads: false,
        client_login: false,
        endpoint: Endpoint::new(),
        host: value_or(&eff.host, DEFAULT_HOST.to_string()),
        port: value_or(&eff.port, DEFAULT_PORT),
        username: value_or(&eff.username, None),
        password: value_or(&eff.password, None),
        db: db.value,
        pool_size: value_or(&eff.pool_size, DEFAULT_POOL_SIZE),
        mux_connections: value_or(&eff.mux_connections, DEFAULT_MUX_CONNECTIONS),
        deny_commands: value_or(
            &eff.deny_commands,
            DEFAULT_DENY_COMMANDS
                .iter()
                .map(|c| c.to_string())
                .collect(),
        ),
        connect_timeout: timeout(&own.connect_timeout, &top.connect_timeout),
        command_timeout: timeout(&own.command_timeout, &top.command_timeout),
        resilience,
        tls: value_or(&eff.tls, None),
        database: group.names.first().cloned().unwrap_or_default(),
        key_prefix: eff
            .key_prefix
            .as_ref()
            .map(|p| bytes::Bytes::from(p.value.clone())),
    })
}

/// Whether a database finds its primary through sentinels. One level (the top
/// level or a database) names its upstream either with `sentinel` or with
/// `host`/`port`, never both. The more specific level wins as a whole: a database
/// with its own `sentinel` ignores a top-level `host`/`port`, and a database with
/// its own `host`/`port` (or `sentinel: null`) is standalone under a top-level
/// `sentinel` — it must then give `host`, as there is no top-level host to inherit.
fn resolve_sentinel(own: &Layer, top: &Layer) -> Result<Option<Arc<SentinelConfig>>, Fail> {
    for layer in [own, top] {
        if let (Some(s), Some((key, origin))) = (&layer.sentinel, fixed(layer)) {
            if s.value.is_some() {
                return Err(origin.fail(format!(
                    "`{key}` cannot be set together with `sentinel` ({}): the primary is either \
                     found through the sentinels or given by host/port; remove one",
                    s.origin
                )));
            }
        }
    }
    if let Some(s) = &own.sentinel {
        return Ok(s.value.clone());
    }
    if let Some((key, origin)) = fixed(own) {
        let top_sentinel = top.sentinel.as_ref().filter(|s| s.value.is_some());
        if let (Some(s), None) = (top_sentinel, &own.host) {
            return Err(origin.fail(format!(
                "this database sets `{key}` but not `host`, under the top-level `sentinel` \
                 ({}): a database leaving the sentinels must give its own host",
                s.origin
            )));
        }
        return Ok(None);
    }
    Ok(top.sentinel.as_ref().and_then(|s| s.value.clone()))
}

/// The `host` (or else `port`) a level sets, with its origin.
fn fixed(l: &Layer) -> Option<(&'static str, Origin)> {
    l.host
        .as_ref()
        .map(|s| ("host", s.origin.clone()))
        .or_else(|| l.port.as_ref().map(|s| ("port", s.origin.clone())))
}

/// Whether a database is on a Redis Cluster, by the rules of [`resolve_sentinel`]:
/// one level names its upstream with `cluster`, `sentinel` or `host`/`port`, never
/// two; the more specific level wins as a whole (a database with its own `sentinel`,
/// `host`/`port` or `cluster: null` leaves a top-level `cluster`, and without its
/// own `sentinel` it must then give `host`). A cluster has only db 0: `upstream_db`
/// is refused next to a database's own `cluster`, and must be 0 under a top-level one.
fn resolve_cluster(
    own: &Layer,
    top: &Layer,
    upstream_db: Option<&Set<u32>>,
) -> Result<Option<Arc<ClusterConfig>>, Fail> {
    let set = |l: &Layer| l.cluster.clone().filter(|c| c.value.is_some());
    let own_sentinel = own.sentinel.as_ref().is_some_and(|s| s.value.is_some());
    for layer in [own, top] {
        let Some(c) = set(layer) else { continue };
        if let Some((key, origin)) = fixed(layer) {
            return Err(origin.fail(format!(
                "`{key}` cannot be set together with `cluster` ({}): a cluster's nodes are \
                 learnt from its seed `nodes`, not given by host/port; remove one",
                c.origin
            )));
        }
        if let Some(s) = layer.sentinel.as_ref().filter(|s| s.value.is_some()) {
            return Err(s.origin.fail(format!(
                "`sentinel` cannot be set together with `cluster` ({}): the upstream is \
                 either a cluster or found through sentinels; remove one",
                c.origin
            )));
        }
    }
    let leaving = own
        .cluster
        .as_ref()
        .map(|c| ("cluster: null", c.origin.clone()))
        .or_else(|| fixed(own));
    let cluster = match (&own.cluster, leaving) {
        (Some(c), _) if c.value.is_some() => c.value.clone(),
        _ if own_sentinel => None,
        (_, Some((key, origin))) => {
            if let (Some(c), None) = (set(top), &own.host) {
                return Err(origin.fail(format!(
                    "this database sets `{key}` but not `host`, under the top-level `cluster` \
                     ({}): a database leaving the cluster must give its own host",
                    c.origin
                )));
            }
            None
        }
        (_, None) => set(top).and_then(|c| c.value),
    };
    if let (Some(_), Some(db)) = (&cluster, upstream_db) {
        if let Some(c) = set(own) {
            return Err(db.origin.fail(format!(
                "`upstream_db` cannot be set together with `cluster` ({}): a cluster has \
                 only db 0; use key_prefix to keep databases apart",
                c.origin
            )));
        }
        if let (Some(c), true) = (set(top), db.value != 0) {
            return Err(db.origin.fail(format!(
                "upstream db {} under the top-level `cluster` ({}): a cluster has only db 0; \
                 use key_prefix to keep databases apart",
                db.value, c.origin
            )));
        }
    }
    Ok(cluster)
}

fn parse_limits(node: &Node, path: &KeyPath) -> Result<Limits, Fail> {
    let map = Map::new(node, path, "a mapping", Some(LIMIT_KEYS))?;
    let defaults = Limits::default();
    let get = |key: &str, default: usize| -> Result<usize, Fail> {
        Ok(map.set(key, parse_usize)?.map_or(default, |s| s.value))
    };
    Ok(Limits {
        max_bulk_len: get("max_bulk_len", defaults.max_bulk_len)?,
        max_args: get("max_args", defaults.max_args)?,
        max_inline_len: get("max_inline_len", defaults.max_inline_len)?,
        pubsub_buffer_limit: get("pubsub_buffer_limit", defaults.pubsub_buffer_limit)?,
        client_reply_buffer: match map.set("client_reply_buffer", parse_size)? {
            None => defaults.client_reply_buffer,
            Some(s) if s.value < 1024 => {
                return Err(Fail::at(
                    &path.child("client_reply_buffer"),
                    format!("must be at least 1024 bytes, got {}", s.value),
                ))
            }
            Some(s) => s.value,
        },
        client_read_ahead: map
            .set("client_read_ahead", parse_size)?
            .map_or(defaults.client_read_ahead, |s| s.value),
        client_output_buffer_limit: match map.get("client_output_buffer_limit") {
            None => defaults.client_output_buffer_limit,
            Some((p, n)) => parse_output_buffer_limit(n, &p)?,
        },
        max_client_memory: map
            .set("max_client_memory", parse_size)?
            .map_or(defaults.max_client_memory, |s| s.value),
        unauthenticated: false,
    })
}

/// `client_output_buffer_limit`: `{ hard: 64mb, soft: 16mb, soft_seconds: 60 }`, or
/// Redis's own form as one string, `"64mb 16mb 60"` (hard, soft, seconds).
fn parse_output_buffer_limit(node: &Node, path: &KeyPath) -> Result<OutputBufferLimit, Fail> {
    if let Node::Str(text) = node {
        let words: Vec<&str> = text.split_whitespace().collect();
        let [hard, soft, seconds] = words[..] else {
            return Err(Fail::at(
                path,
                format!("expected `<hard> <soft> <soft_seconds>` (e.g. \"64mb 16mb 60\"), found {text:?}"),
            ));
        };
        let size = |w: &str| parse_size(path, &Node::Str(w.to_string()));
        let soft_seconds = seconds
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| {
                Fail::at(
                    path,
                    format!("soft_seconds must be a whole number of seconds, got {seconds:?}"),
                )
            })?;
        return Ok(OutputBufferLimit {
            hard: size(hard)?,
            soft: size(soft)?,
            soft_seconds,
        });
    }
    let map = Map::new(
        node,
        path,
        "a mapping { hard, soft, soft_seconds } or a string \"<hard> <soft> <soft_seconds>\"",
        Some(OUTPUT_BUFFER_KEYS),
    )?;
    Ok(OutputBufferLimit {
        hard: map.set("hard", parse_size)?.map_or(0, |s| s.value),
        soft: map.set("soft", parse_size)?.map_or(0, |s| s.value),
        soft_seconds: map
            .set("soft_seconds", nonnegative_secs)?
            .map_or(Duration::ZERO, |s| s.value),
    })
}

/// The client-facing index of the start database: `default_database` (an index or a
/// name of a configured database) or, when it is not set, db 0, which must exist.
fn resolve_default_database(
    top: &Map<'_>,
    dbs_path: &KeyPath,
    databases: &[DatabaseConfig],
) -> Result<u32, Fail> {
    let configured = databases
        .iter()
        .map(|d| format!("{} (db {})", d.name(), d.index))
        .collect::<Vec<_>>()
        .join(", ");
    let by_index = |i: i128| {
        databases
            .iter()
            .find(|d| i128::from(d.index) == i)
            .map(|d| d.index)
    };
    let Some((path, node)) = top.get("default_database") else {
        return by_index(0).ok_or_else(|| Fail::At {
            key: KeyPath::root().child("default_database"),
            locate: dbs_path.clone(),
            occurrence: 0,
            message: format!(
                "no database has db 0, where new clients start: set `default_database` to \
                 the index or name of the database they should start on (configured: \
                 {configured})"
            ),
        });
    };
    match node {
        Node::Int(i) => by_index(*i).ok_or_else(|| {
            Fail::at(
                &path,
                format!("db {i} is not a configured database (configured: {configured})"),
            )
        }),
        Node::Str(text) => {
            let name = text.trim();
            if let Some(d) = databases.iter().find(|d| d.names.iter().any(|n| n == name)) {
                return Ok(d.index);
            }
            // A quoted index (`default_database: "3"`).
            if let Some(i) = name.parse::<u32>().ok().and_then(|i| by_index(i.into())) {
                return Ok(i);
            }
            let mut message = format!("no configured database is named {name:?}");
            let names: Vec<&str> = databases
                .iter()
                .flat_map(|d| d.names.iter().map(String::as_str))
                .collect();
            if let Some(s) = suggest(name, &names) {
                message.push_str(&format!(" (did you mean `{s}`?)"));
            }
            message.push_str(&format!("; configured: {configured}"));
            Err(Fail::at(&path, message))
        }
        _ => Err(type_error(&path, "a database index or name", node)),
    }
}

/// Databases sharing one upstream db must keep apart: either none has a
/// `key_prefix`, or each has one and no prefix starts another (an unprefixed or
/// shorter-prefixed database would see, and its FLUSHDB delete, the other's keys).
/// Databases on one cluster (a seed node in common) share its only db, and not by
/// choice (there is no `upstream_db` to give them another): there each needs a prefix.
/// `groups` and `databases` are in the same (file) order.
fn check_key_prefixes(
    groups: &[Group],
    top: &Layer,
    databases: &[DatabaseConfig],
) -> Result<(), Fail> {
    for (j, (gb, b)) in groups.iter().zip(databases).enumerate() {
        for a in &databases[..j] {
            let (ua, ub) = (&a.upstream, &b.upstream);
            let (place, same) = match (&ua.cluster, &ub.cluster) {
                (Some(ca), Some(cb)) => (
                    format!("{} (a cluster has only db 0)", ub.address()),
                    ca.nodes.iter().any(|n| cb.nodes.contains(n)),
                ),
                (None, None) => (
                    format!("upstream {}:{} db {}", ub.host, ub.port, ub.db),
                    (ua.host.as_str(), ua.port, ua.db) == (ub.host.as_str(), ub.port, ub.db),
                ),
                _ => (String::new(), false),
            };
            if !same {
                continue;
            }
            let describe = |d: &DatabaseConfig| match &d.upstream.key_prefix {
                Some(p) => format!(
                    "`{}` (key_prefix {:?})",
                    d.name(),
                    String::from_utf8_lossy(p)
                ),
                None => format!("`{}` (no key_prefix)", d.name()),
            };
            let overlap = match (&ua.key_prefix, &ub.key_prefix) {
                (None, None) => ub.cluster.is_some(),
                (Some(x), Some(y)) => x.starts_with(y) || y.starts_with(x),
                _ => true,
            };
            if overlap {
                let origin = gb
                    .layer
                    .key_prefix
                    .as_ref()
                    .or(top.key_prefix.as_ref())
                    .map_or(&gb.db_origin, |s| &s.origin);
                return Err(origin.fail(format!(
                    "{} and {} share {place} and their keys would mix: give each a \
                     key_prefix, none the start of another",
                    describe(a),
                    describe(b),
                )));
            }
        }
    }
    Ok(())
}
