//! Configuration: the AutoBot `redis-databases.yaml` format plus the proxy's extensions.
//!
//! [`Config::load`] reads YAML, applies environment overrides, validates, and returns
//! a [`Config`] whose `databases` are sorted by client-facing index. Everything below
//! the listener reads only these types.
//!
//! # File format
//!
//! The file existing AutoBot deployments already have is accepted as-is:
//!
//! ```yaml
//! redis_databases:
//!   main:      { db: 0, description: "Main application data" }
//!   knowledge: { db: 1, description: "Knowledge base and documents" }
//! host: localhost
//! port: 6379
//! password: null
//! timeout: 5
//! retry_attempts: 3
//! retry_delay: 1
//! max_connections: 20
//! health_check_interval: 30
//! log_commands: false
//! log_level: INFO
//! ```
//!
//! The proxy's extensions (all optional) are documented in the shipped
//! `config/redis-databases.yaml`. In short:
//!
//! * Top-level keys: `listen` (`null`: no plain listener), `client_tls` (`listen`,
//!   `cert_file`, `key_file`, `ca_file`: a TLS listener, see [`ClientTls`]),
//!   `client_password`, `admin_password`,
//!   `admin_only_info`, `protected_mode`, `auth_passthrough`, `max_clients`,
//!   `shutdown_timeout`, `default_database` (the database a new client starts on: a
//!   configured `db` index or name; default 0),
//!   `log_format` (`text` or `json`), `limits` (`max_bulk_len`, `max_args`,
//!   `max_inline_len`, `pubsub_buffer_limit`, `client_reply_buffer`,
//!   `client_read_ahead`, `client_output_buffer_limit`, `max_client_memory`),
//!   `upstream_databases`.
//! * Upstream keys, allowed at the top level (defaults for every database) and inside
//!   each `redis_databases` entry (overrides for that database): `host`, `port`,
//!   `username`, `password`, `timeout`, `connect_timeout`, `command_timeout`,
//!   `max_connections` (or its synonym `pool_size`), `mux_connections`, and the
//!   resilience keys `retry_attempts`, `retry_base_delay` (or the seed's `retry_delay`),
//!   `retry_max_delay`, `failure_threshold`, `recovery_timeout`, `success_threshold`,
//!   `health_check_interval`, and `tls` (`ca_file`, `cert_file`, `key_file`,
//!   `server_name`, `insecure_skip_verify`; `null` in a database: plain TCP, see
//!   [`UpstreamTls`]), and `sentinel` (`nodes`, `master`, `password`, `username`:
//!   the primary is found through Redis Sentinel instead of `host`/`port`; one level
//!   sets either, and the more specific level wins as a whole, see [`SentinelConfig`]),
//!   and `cluster` (`nodes`, `read_from`: a Redis Cluster learnt from seed nodes, by
//!   the same rules as `sentinel`; it has only db 0, so `upstream_db` other than 0 is
//!   refused and databases sharing one need distinct `key_prefix`es, see
//!   [`ClusterConfig`]).
//! * Per-database keys: `db` (required), `description`, `upstream_db`.
//!
//! # Rules
//!
//! * Times are in seconds; fractions are allowed (`0.25`). Timeouts and intervals
//!   must be positive; retry delays may be zero.
//! * The most specific setting wins: a database's own key, then that database's
//!   `timeout` (for the two timeouts), then the top-level key (after environment
//!   overrides), then the top-level `timeout`, then the built-in default.
//! * `null` (or an empty value) means "not set" — the inherited value or default is
//!   used — except for `username`, `password` and `client_password`, where `null` or
//!   `""` explicitly means "none" (so a database can drop a top-level password).
//! * Client-facing indexes (`db`) may be 0..=9999. The index used on the upstream
//!   server (`upstream_db`, default: `db`) must be below `upstream_databases`
//!   (default 16, Redis's default `databases` setting); raise it if your Redis
//!   server is configured with more databases.
//! * Two names with the same `db` are aliases of one database: the first declared is
//!   the primary name, and per-database settings given by several aliases must agree.
//! * New clients start on `default_database`, which must name a configured database;
//!   without it they start on db 0, so a file with no db 0 must set it.
//! * Unknown keys, duplicate keys, wrongly typed values and out-of-range values are
//!   errors naming the file, the key path (e.g. `redis_databases.cache.db`) and the
//!   line.
//!
//! # Environment overrides
//!
//! `AUTOBOT_REDIS_HOST`, `AUTOBOT_REDIS_PORT` and `AUTOBOT_REDIS_PASSWORD` replace
//! the top-level `host`, `port` and `password` (so every database that does not set
//! its own); an empty `AUTOBOT_REDIS_PASSWORD` means "no password".
//! `REDIS_SIDECAR_LISTEN` replaces `listen` and `REDIS_SIDECAR_CLIENT_PASSWORD`
//! replaces `client_password` (empty: none).

mod cluster;
mod env;
mod error;
mod fields;
mod layer;
mod resolve;
mod sentinel;
mod tls;
mod types;
mod yaml;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use env::{ENV_CLIENT_PASSWORD, ENV_HOST, ENV_LISTEN, ENV_PASSWORD, ENV_PORT};
pub use error::ConfigError;
pub use types::{
    ClientTls, ClusterConfig, DatabaseConfig, Limits, OutputBufferLimit, ReadFrom,
    ResilienceConfig, Secret, SentinelConfig, UpstreamConfig, UpstreamTls, AUTOBOT_DATABASES,
    DEFAULT_DENY_COMMANDS, DEFAULT_METRICS_LISTEN,
};

use env::process_env;
use resolve::parse_config;
use types::{
    DEFAULT_AUTH_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_CLIENTS, DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_SLOWLOG_MAX_LEN, DEFAULT_SLOWLOG_THRESHOLD,
};
use yaml::Node;

/// The whole resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the proxy listens (plain TCP).
    pub listen: SocketAddr,
    /// Whether the plain listener runs: false with YAML `listen: null` (then only
    /// the `client_tls` listener serves).
    pub plain_listener: bool,
    /// The TLS listener for clients (`client_tls`), if any.
    pub client_tls: Option<ClientTls>,
    /// YAML `unixsocket`: a Unix domain socket clients may connect to as well
    /// (Redis's `unixsocket`), e.g. on a volume the application's container
    /// shares; `None` (the default): no such listener.
    pub unixsocket: Option<std::path::PathBuf>,
    /// YAML `unixsocketperm` (octal digits, as Redis's: `700`): the socket
    /// file's permissions; `None`: as the umask leaves them.
    pub unixsocketperm: Option<u32>,
    /// Where the Prometheus endpoint (`GET /metrics`) listens; `None` disables it.
    /// YAML `metrics_listen` (default `127.0.0.1:9180`, `null` disables it).
    pub metrics_listen: Option<SocketAddr>,
    /// Password clients must send with AUTH, if any.
    pub client_password: Option<Secret>,
    /// `protected_mode` (default true): without `client_password`, only clients
    /// connecting from 127.0.0.1 or ::1 are served (Redis's protected mode);
    /// others get `-DENIED …` and are closed.
    pub protected_mode: bool,
    /// `admin_password`: a session that sends `PROXY AUTH <admin_password>` may
    /// change the proxy (`PROXY CIRCUIT`, `PROXY RESETSTATS`); without it no one can.
    pub admin_password: Option<Secret>,
    /// `admin_only_info` (default false): `PROXY INFO`, `HEALTH` and `STATS` need
    /// an admin session too (`PROXY AUTH`), so local processes cannot read the
    /// topology, traffic and error texts.
    pub admin_only_info: bool,
    /// AUTH (and `HELLO … AUTH`) is checked by Redis itself: a client that logs in
    /// gets its own upstream connection authenticated as that user. YAML
    /// `auth_passthrough` (default false; not together with `client_password`).
    pub auth_passthrough: bool,
    /// Log level name, lower case: `trace`, `debug`, `info`, `warn`, `error` or `off`
    /// (the seed's `WARNING` and `CRITICAL` map to `warn` and `error`).
    pub log_level: String,
    /// Log output format: `text` (default) or `json`.
    pub log_format: String,
    /// Log command names (never values).
    pub log_commands: bool,
    /// Request limits.
    pub limits: Limits,
    /// Maximum client connections.
    pub max_clients: usize,
    /// Bounded drain at shutdown.
    pub shutdown_timeout: Duration,
    /// `slowlog_threshold_ms`: batches slower than this go to `PROXY SLOWLOG`
    /// (default 10 ms; 0 logs every batch).
    pub slowlog_threshold: Duration,
    /// `slowlog_max_len`: entries `PROXY SLOWLOG` keeps (default 128; 0 = off).
    pub slowlog_max_len: usize,
    /// `busy_poll_us`: after a read, the runtime keeps polling its sockets this
    /// long before it sleeps (default 50; 0 = off; at most 10000). See
    /// `busy_poll` for what it costs and where it turns itself off.
    pub busy_poll_us: u32,
    /// `client_idle_timeout`: a client that sends nothing for this long is closed,
    /// as with Redis's `timeout` (not while subscribed or waiting on a blocking
    /// command). Zero (the default) = never.
    pub client_idle_timeout: Duration,
    /// `auth_timeout`: with `client_password` set, a client that has not
    /// authenticated this long after connecting is closed (default 10 s; zero =
    /// never), so silent connections cannot hold `max_clients` slots.
    pub auth_timeout: Duration,
    /// Databases sorted by index.
    pub databases: Vec<DatabaseConfig>,
    /// Client-facing index of the database a new client starts on (before any
    /// `SELECT`; also where `RESET` returns). YAML `default_database`: a configured
    /// `db` index or name; default 0, which must then be configured. Validated at
    /// load time to name one of `databases`.
    pub default_database: u32,
    /// The file the config came from.
    pub source: Option<PathBuf>,
}

impl Config {
    /// A config with the 11 AutoBot databases, all on `host:port`.
    pub fn for_upstream(host: &str, port: u16) -> Config {
        let databases = AUTOBOT_DATABASES
            .iter()
            .enumerate()
            .map(|(i, n)| DatabaseConfig {
                index: i as u32,
                names: vec![n.to_string()],
                description: String::new(),
                upstream: UpstreamConfig {
                    database: n.to_string(),
                    ..UpstreamConfig::new(host, port, i as u32)
                },
            })
            .collect();
        Config {
            listen: DEFAULT_LISTEN,
            plain_listener: true,
            client_tls: None,
            unixsocket: None,
            unixsocketperm: None,
            metrics_listen: None,
            client_password: None,
            admin_password: None,
            admin_only_info: false,
            protected_mode: true,
            auth_passthrough: false,
            log_level: "info".into(),
            log_format: "text".into(),
            log_commands: false,
            limits: Limits::default(),
            max_clients: DEFAULT_MAX_CLIENTS,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            slowlog_threshold: DEFAULT_SLOWLOG_THRESHOLD,
            slowlog_max_len: DEFAULT_SLOWLOG_MAX_LEN,
            busy_poll_us: crate::busy_poll::DEFAULT_WINDOW_US,
            client_idle_timeout: Duration::ZERO,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            databases,
            default_database: 0,
            source: None,
        }
    }

    /// Reads the YAML file at `path`, applies the process environment's overrides
    /// (see the module docs) and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, &process_env)
    }

    /// Like [`Config::load`], but environment variables are looked up with `env`
    /// instead of the process environment (for tests).
    pub fn load_with_env(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_yaml_str_with_env(&text, Some(path), env)
    }

    /// Parses YAML `text`, applies the process environment's overrides and validates.
    /// `source` names the file in error messages and is stored in [`Config::source`].
    pub fn from_yaml_str(text: &str, source: Option<&Path>) -> Result<Config, ConfigError> {
        Config::from_yaml_str_with_env(text, source, &process_env)
    }

    /// Like [`Config::from_yaml_str`], but environment variables are looked up with
    /// `env` instead of the process environment (for tests; `&|_| None` means none set).
    pub fn from_yaml_str_with_env(
        text: &str,
        source: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let root: Node = serde_norway::from_str(text).map_err(|e| ConfigError::Yaml {
            file: source.map(Path::to_path_buf),
            line: e.location().map(|l| l.line()),
            message: e.to_string(),
        })?;
        parse_config(&root, source, env).map_err(|fail| fail.into_error(text, source))
    }

    /// The resolved configuration as YAML-like text (for `--check-config`), with every
    /// password replaced by `***`.
    pub fn render_masked(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        match &self.source {
            Some(p) => line(format!("# resolved configuration from {}", p.display())),
            None => line("# resolved configuration".to_string()),
        }
        if self.plain_listener {
            line(format!("listen: {}", self.listen));
        } else {
            line("listen: null".to_string());
        }
        match &self.unixsocket {
            Some(p) => line(format!("unixsocket: {}", p.display())),
            None => line("unixsocket: null".to_string()),
        }
        match self.unixsocketperm {
            Some(m) => line(format!("unixsocketperm: {m:o}")),
            None => line("unixsocketperm: null".to_string()),
        }
        match &self.client_tls {
            Some(t) => {
                line("client_tls:".to_string());
                line(format!("  listen: {}", t.listen));
                line(format!("  cert_file: {}", t.cert_file.display()));
                line(format!("  key_file: {}", t.key_file.display()));
                line(format!("  ca_file: {}", path_or_null(t.ca_file.as_ref())));
            }
            None => line("client_tls: null".to_string()),
        }
        line(format!(
            "metrics_listen: {}",
            self.metrics_listen
                .map_or_else(|| "null".to_string(), |a| a.to_string())
        ));
        line(format!(
            "client_password: {}",
            mask(self.client_password.as_ref())
        ));
        line(format!(
            "admin_password: {}",
            mask(self.admin_password.as_ref())
        ));
        line(format!("admin_only_info: {}", self.admin_only_info));
        line(format!("auth_passthrough: {}", self.auth_passthrough));
        line(format!("protected_mode: {}", self.protected_mode));
        line(format!("log_level: {}", self.log_level));
        line(format!("log_format: {}", self.log_format));
        line(format!("log_commands: {}", self.log_commands));
        line(format!("max_clients: {}", self.max_clients));
        line(format!("shutdown_timeout: {}", secs(self.shutdown_timeout)));
        line(format!(
            "client_idle_timeout: {}",
            secs(self.client_idle_timeout)
        ));
        line(format!("auth_timeout: {}", secs(self.auth_timeout)));
        line(format!(
            "slowlog_threshold_ms: {}",
            self.slowlog_threshold.as_millis()
        ));
        line(format!("slowlog_max_len: {}", self.slowlog_max_len));
        line(format!("busy_poll_us: {}", self.busy_poll_us));
        line(format!("default_database: {}", self.default_database));
        line("limits:".to_string());
        line(format!("  max_bulk_len: {}", self.limits.max_bulk_len));
        line(format!("  max_args: {}", self.limits.max_args));
        line(format!("  max_inline_len: {}", self.limits.max_inline_len));
        line(format!(
            "  pubsub_buffer_limit: {}",
            self.limits.pubsub_buffer_limit
        ));
        line(format!(
            "  client_reply_buffer: {}",
            self.limits.client_reply_buffer
        ));
        line(format!(
            "  client_read_ahead: {}",
            self.limits.client_read_ahead
        ));
        let obl = &self.limits.client_output_buffer_limit;
        line(format!(
            "  client_output_buffer_limit: {{ hard: {}, soft: {}, soft_seconds: {} }}",
            obl.hard,
            obl.soft,
            secs(obl.soft_seconds)
        ));
        line(format!(
            "  max_client_memory: {}",
            self.limits.max_client_memory
        ));
        line("databases:".to_string());
        for db in &self.databases {
            let u = &db.upstream;
            let r = &u.resilience;
            line(format!("  - index: {}", db.index));
            line(format!("    names: [{}]", db.names.join(", ")));
            line(format!("    description: {:?}", db.description));
            if let Some(c) = &u.cluster {
                line("    cluster:".to_string());
                line(format!("      nodes: [{}]", nodes_text(&c.nodes)));
                let read_from = match c.read_from {
                    ReadFrom::Primary => "primary",
                    ReadFrom::Replica => "replica",
                };
                line(format!("      read_from: {read_from}"));
            }
            match &u.sentinel {
                None if u.cluster.is_some() => {}
                None => {
                    line(format!("    host: {}", u.host));
                    line(format!("    port: {}", u.port));
                }
                Some(s) => {
                    line("    sentinel:".to_string());
                    line(format!("      nodes: [{}]", nodes_text(&s.nodes)));
                    line(format!("      master: {}", s.master));
                    match &s.username {
                        Some(name) => line(format!("      username: {name:?}")),
                        None => line("      username: null".to_string()),
                    }
                    line(format!("      password: {}", mask(s.password.as_ref())));
                    let first = s.nodes.first().map_or("", |(h, _)| h.as_str());
                    for l in tls_text("      ", s.tls.as_deref(), first) {
                        line(l);
                    }
                }
            }
            line(format!("    upstream_db: {}", u.db));
            if let Some(prefix) = &u.key_prefix {
                line(format!(
                    "    key_prefix: {:?}",
                    String::from_utf8_lossy(prefix)
                ));
            }
            match &u.username {
                Some(name) => line(format!("    username: {name:?}")),
                None => line("    username: null".to_string()),
            }
            line(format!("    password: {}", mask(u.password.as_ref())));
            line(format!("    pool_size: {}", u.pool_size));
            line(format!("    mux_connections: {}", u.mux_connections));
            line(format!(
                "    deny_commands: [{}]",
                u.deny_commands.join(", ")
            ));
            line(format!("    connect_timeout: {}", secs(u.connect_timeout)));
            line(format!("    command_timeout: {}", secs(u.command_timeout)));
            line(format!("    retry_attempts: {}", r.retry_attempts));
            line(format!(
                "    retry_base_delay: {}",
                secs(r.retry_base_delay)
            ));
            line(format!("    retry_max_delay: {}", secs(r.retry_max_delay)));
            line(format!("    failure_threshold: {}", r.failure_threshold));
            line(format!(
                "    recovery_timeout: {}",
                secs(r.recovery_timeout)
            ));
            line(format!("    success_threshold: {}", r.success_threshold));
            line(format!(
                "    health_check_interval: {}",
                secs(r.health_check_interval)
            ));
            for l in tls_text("    ", u.tls.as_deref(), &u.host) {
                line(l);
            }
        }
        out
    }
}

/// `host:port` nodes for the report, comma-separated.
fn nodes_text(nodes: &[(String, u16)]) -> String {
    let nodes: Vec<String> = nodes.iter().map(|(h, p)| format!("{h}:{p}")).collect();
    nodes.join(", ")
}

/// The `tls` lines of `--check-config` at `indent` (`server_name` defaults to `host`).
fn tls_text(indent: &str, tls: Option<&UpstreamTls>, host: &str) -> Vec<String> {
    let Some(t) = tls else {
        return vec![format!("{indent}tls: null")];
    };
    let mut out = vec![format!("{indent}tls:")];
    for (key, path) in [
        ("ca_file", &t.ca_file),
        ("cert_file", &t.cert_file),
        ("key_file", &t.key_file),
    ] {
        out.push(format!("{indent}  {key}: {}", path_or_null(path.as_ref())));
    }
    out.push(format!(
        "{indent}  server_name: {}",
        t.server_name.as_deref().unwrap_or(host)
    ));
    out.push(format!(
        "{indent}  insecure_skip_verify: {}",
        t.insecure_skip_verify
    ));
    out
}

/// A file path for the report (`null` if not set).
fn path_or_null(path: Option<&PathBuf>) -> String {
    path.map_or_else(|| "null".to_string(), |p| p.display().to_string())
}

/// A password as the report shows it: `"***"` if set, `null` if not.
fn mask(secret: Option<&Secret>) -> &'static str {
    match secret {
        Some(_) => "\"***\"",
        None => "null",
    }
}

/// A duration as seconds, fractions included (`0.5`), for reports and messages.
fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}
