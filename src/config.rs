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
//! * Top-level keys: `listen`, `client_password`, `auth_passthrough`, `max_clients`,
//!   `shutdown_timeout`, `default_database` (the database a new client starts on: a
//!   configured `db` index or name; default 0),
//!   `log_format` (`text` or `json`), `limits` (`max_bulk_len`, `max_args`,
//!   `max_inline_len`), `upstream_databases`.
//! * Upstream keys, allowed at the top level (defaults for every database) and inside
//!   each `redis_databases` entry (overrides for that database): `host`, `port`,
//!   `username`, `password`, `timeout`, `connect_timeout`, `command_timeout`,
//!   `max_connections` (or its synonym `pool_size`), `mux_connections`, and the
//!   resilience keys `retry_attempts`, `retry_base_delay` (or the seed's `retry_delay`),
//!   `retry_max_delay`, `failure_threshold`, `recovery_timeout`, `success_threshold`,
//!   `health_check_interval`.
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

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Environment variable overriding the top-level upstream `host`.
pub const ENV_HOST: &str = "AUTOBOT_REDIS_HOST";
/// Environment variable overriding the top-level upstream `port`.
pub const ENV_PORT: &str = "AUTOBOT_REDIS_PORT";
/// Environment variable overriding the top-level upstream `password` (empty: none).
pub const ENV_PASSWORD: &str = "AUTOBOT_REDIS_PASSWORD";
/// Environment variable overriding `listen`.
pub const ENV_LISTEN: &str = "REDIS_SIDECAR_LISTEN";
/// Environment variable overriding `client_password` (empty: none).
pub const ENV_CLIENT_PASSWORD: &str = "REDIS_SIDECAR_CLIENT_PASSWORD";

const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6380));
/// The AutoBot databases, in index order (main = 0 … backup = 10).
pub const AUTOBOT_DATABASES: [&str; 11] = [
    "main",
    "knowledge",
    "prompts",
    "agents",
    "metrics",
    "cache",
    "sessions",
    "tasks",
    "logs",
    "temp",
    "backup",
];

/// Commands refused by default: each changes the role or the life of the whole
/// (shared) Redis server, which no single application behind a sidecar should do.
/// `deny_commands: []` allows everything.
pub const DEFAULT_DENY_COMMANDS: &[&str] = &["shutdown", "replicaof", "slaveof", "failover"];

/// Default address of the Prometheus endpoint (`metrics_listen`).
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9180));
const DEFAULT_HOST: &str = "localhost";
const DEFAULT_PORT: u16 = 6379;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_POOL_SIZE: u32 = 20;
const DEFAULT_MUX_CONNECTIONS: u32 = 2;
const DEFAULT_MAX_CLIENTS: usize = 10_000;
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_UPSTREAM_DATABASES: u32 = 16;
const MAX_CLIENT_DB: u32 = 9999;

/// A secret string (password) that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    /// The secret text, for sending to a server. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Limits applied to client requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest bulk string a client may send (Redis's `proto-max-bulk-len`).
    pub max_bulk_len: usize,
    /// Largest number of arguments in one request.
    pub max_args: usize,
    /// Largest inline request line (Redis: 64 KiB).
    pub max_inline_len: usize,
    /// Most bytes of pub/sub messages waiting to be written to one slow subscriber;
    /// past it the client is disconnected (Redis's `client-output-buffer-limit
    /// pubsub 32mb`).
    pub pubsub_buffer_limit: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_args: 1024 * 1024,
            max_inline_len: 64 * 1024,
            pubsub_buffer_limit: 32 * 1024 * 1024,
        }
    }
}

/// Retry, circuit-breaker and health-check settings for one upstream.
///
/// Parsed and validated from the YAML (top-level defaults, per-database overrides);
/// defaults are those of [`ResilienceConfig::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResilienceConfig {
    /// How many times a failed connect is retried (`retry_attempts`, default 3; 0 = no retries).
    pub retry_attempts: u32,
    /// First back-off delay (`retry_base_delay`, or the seed's `retry_delay`; default 0.5 s).
    pub retry_base_delay: Duration,
    /// Largest back-off delay (`retry_max_delay`, default 10 s; never below the base delay).
    pub retry_max_delay: Duration,
    /// Consecutive failures that open the circuit breaker (`failure_threshold`, default 5).
    pub failure_threshold: u32,
    /// How long an open circuit waits before probing again (`recovery_timeout`, default 60 s).
    pub recovery_timeout: Duration,
    /// Consecutive successes that close a half-open circuit (`success_threshold`, default 2).
    pub success_threshold: u32,
    /// Interval between upstream health checks (`health_check_interval`, default 30 s).
    pub health_check_interval: Duration,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        ResilienceConfig {
            retry_attempts: 3,
            retry_base_delay: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(10),
            failure_threshold: 5,
            recovery_timeout: Duration::from_secs(60),
            success_threshold: 2,
            health_check_interval: Duration::from_secs(30),
        }
    }
}

/// Where and how one database's upstream Redis is reached.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Redis host name or address.
    pub host: String,
    /// Redis port.
    pub port: u16,
    /// ACL user name for AUTH, if any.
    pub username: Option<String>,
    /// Password for AUTH, if any.
    pub password: Option<Secret>,
    /// The db index selected on the upstream server.
    pub db: u32,
    /// Commands refused for this database (lower-case names as Redis reports them,
    /// `config|set` for a subcommand). YAML `deny_commands`, top level or per
    /// database; default [`DEFAULT_DENY_COMMANDS`].
    pub deny_commands: Vec<String>,
    /// Size of the pool of exclusive connections (seed: `max_connections`).
    pub pool_size: u32,
    /// Number of shared, multiplexed connections.
    pub mux_connections: u32,
    /// Connect (and handshake) timeout.
    pub connect_timeout: Duration,
    /// Command timeout.
    pub command_timeout: Duration,
    /// Retry, circuit-breaker and health-check settings.
    pub resilience: ResilienceConfig,
}

impl UpstreamConfig {
    /// An upstream at `host:port` selecting `db`, with every other setting at its default
    /// (no credentials, pool 20, 2 multiplexed connections, 5 s timeouts).
    pub fn new(host: &str, port: u16, db: u32) -> UpstreamConfig {
        UpstreamConfig {
            host: host.to_string(),
            port,
            username: None,
            password: None,
            db,
            pool_size: DEFAULT_POOL_SIZE,
            mux_connections: DEFAULT_MUX_CONNECTIONS,
            deny_commands: DEFAULT_DENY_COMMANDS
                .iter()
                .map(|c| c.to_string())
                .collect(),
            connect_timeout: DEFAULT_TIMEOUT,
            command_timeout: DEFAULT_TIMEOUT,
            resilience: ResilienceConfig::default(),
        }
    }

    /// `host:port` as text, for reports.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One client-facing database.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// Client-facing index (what `SELECT n` names).
    pub index: u32,
    /// Names (the first is the primary name; others are aliases).
    pub names: Vec<String>,
    /// Free text from the YAML.
    pub description: String,
    /// The upstream.
    pub upstream: UpstreamConfig,
}

impl DatabaseConfig {
    /// The primary name.
    pub fn name(&self) -> &str {
        self.names.first().map(String::as_str).unwrap_or("")
    }
}

/// The whole resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// Where the Prometheus endpoint (`GET /metrics`) listens; `None` disables it.
    /// YAML `metrics_listen` (default `127.0.0.1:9180`, `null` disables it).
    pub metrics_listen: Option<SocketAddr>,
    /// Password clients must send with AUTH, if any.
    pub client_password: Option<Secret>,
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
                upstream: UpstreamConfig::new(host, port, i as u32),
            })
            .collect();
        Config {
            listen: DEFAULT_LISTEN,
            metrics_listen: None,
            client_password: None,
            auth_passthrough: false,
            log_level: "info".into(),
            log_format: "text".into(),
            log_commands: false,
            limits: Limits::default(),
            max_clients: DEFAULT_MAX_CLIENTS,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
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
        line(format!("listen: {}", self.listen));
        line(format!(
            "metrics_listen: {}",
            self.metrics_listen
                .map_or_else(|| "null".to_string(), |a| a.to_string())
        ));
        line(format!(
            "client_password: {}",
            mask(self.client_password.as_ref())
        ));
        line(format!("auth_passthrough: {}", self.auth_passthrough));
        line(format!("log_level: {}", self.log_level));
        line(format!("log_format: {}", self.log_format));
        line(format!("log_commands: {}", self.log_commands));
        line(format!("max_clients: {}", self.max_clients));
        line(format!("shutdown_timeout: {}", secs(self.shutdown_timeout)));
        line(format!("default_database: {}", self.default_database));
        line("limits:".to_string());
        line(format!("  max_bulk_len: {}", self.limits.max_bulk_len));
        line(format!("  max_args: {}", self.limits.max_args));
        line(format!("  max_inline_len: {}", self.limits.max_inline_len));
        line(format!(
            "  pubsub_buffer_limit: {}",
            self.limits.pubsub_buffer_limit
        ));
        line("databases:".to_string());
        for db in &self.databases {
            let u = &db.upstream;
            let r = &u.resilience;
            line(format!("  - index: {}", db.index));
            line(format!("    names: [{}]", db.names.join(", ")));
            line(format!("    description: {:?}", db.description));
            line(format!("    host: {}", u.host));
            line(format!("    port: {}", u.port));
            line(format!("    upstream_db: {}", u.db));
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
        }
        out
    }
}

fn mask(secret: Option<&Secret>) -> &'static str {
    match secret {
        Some(_) => "\"***\"",
        None => "null",
    }
}

fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// Why a configuration could not be loaded. The message names the file, the key path
/// (e.g. `redis_databases.cache.db`) and, where the YAML gives one, the line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not well-formed YAML.
    #[error("{}: invalid YAML: {message}", file_label(.file))]
    Yaml {
        /// The file, if the text came from one.
        file: Option<PathBuf>,
        /// 1-based line of the problem, if known.
        line: Option<usize>,
        /// The YAML parser's message (it includes the line and column).
        message: String,
    },
    /// A key is unknown, duplicated, missing, wrongly typed or has an invalid value.
    #[error("{}{}: {}{message}", file_label(.file), line_label(.line), key_label(.key))]
    Invalid {
        /// The file, if the text came from one.
        file: Option<PathBuf>,
        /// Dotted key path, e.g. `redis_databases.cache.db` (empty for the whole document).
        key: String,
        /// 1-based line of the key, if known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// An environment override has a bad value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name, e.g. `AUTOBOT_REDIS_PORT`.
        var: String,
        /// What is wrong (never contains a secret).
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line the error refers to, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Yaml { line, .. } | ConfigError::Invalid { line, .. } => *line,
            ConfigError::Read { .. } | ConfigError::Env { .. } => None,
        }
    }

    /// The dotted key path (or environment variable name) the error refers to, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } if !key.is_empty() => Some(key),
            ConfigError::Env { var, .. } => Some(var),
            _ => None,
        }
    }
}

fn file_label(file: &Option<PathBuf>) -> String {
    match file {
        Some(p) => p.display().to_string(),
        None => "<config>".to_string(),
    }
}

fn line_label(line: &Option<usize>) -> String {
    match line {
        Some(n) => format!(", line {n}"),
        None => String::new(),
    }
}

fn key_label(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

// ---------------------------------------------------------------------------------
// Raw YAML tree: like serde_norway::Value, but mappings keep duplicates (so they can be
// reported with a key path) and document order.

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// Describes the node for a type error; `reveal` includes scalar values.
    fn describe(&self, reveal: bool) -> String {
        match (self, reveal) {
            (Node::Null, _) => "null".into(),
            (Node::Bool(b), true) => format!("boolean `{b}`"),
            (Node::Int(i), true) => format!("integer `{i}`"),
            (Node::Float(f), true) => format!("number `{f}`"),
            (Node::Str(s), true) => format!("string {s:?}"),
            (Node::Bool(_), false) => "a boolean".into(),
            (Node::Int(_), false) => "an integer".into(),
            (Node::Float(_), false) => "a number".into(),
            (Node::Str(_), false) => "a string".into(),
            (Node::Seq(_), _) => "a list".into(),
            (Node::Map(_), _) => "a mapping".into(),
        }
    }

    /// The text a scalar key is matched by.
    fn key_text(&self) -> Option<String> {
        match self {
            Node::Null => Some("null".into()),
            Node::Bool(b) => Some(b.to_string()),
            Node::Int(i) => Some(i.to_string()),
            Node::Float(f) => Some(f.to_string()),
            Node::Str(s) => Some(s.clone()),
            Node::Seq(_) | Node::Map(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        i128::try_from(v)
            .map(Node::Int)
            .map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry()? {
            entries.push((k, v));
        }
        Ok(Node::Map(entries))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _data: A) -> Result<Node, A::Error> {
        Err(de::Error::custom(
            "YAML tags (`!name value`) are not supported in this file",
        ))
    }
}

// ---------------------------------------------------------------------------------
// Line lookup: re-parses the text and stops with an error at the wanted key, whose
// location serde_norway fills in.

const LOCATE_MARKER: &str = "\u{0}config-locate\u{0}";

/// The 1-based line of the `occurrence`-th (0-based) appearance of the key at `path`.
fn locate_line(text: &str, path: &[String], occurrence: usize) -> Option<usize> {
    if path.is_empty() {
        return None;
    }
    let de = serde_norway::Deserializer::from_str(text);
    match (Locate { path, occurrence }).deserialize(de) {
        Ok(()) => None,
        Err(e) if e.to_string().contains(LOCATE_MARKER) => e.location().map(|l| l.line()),
        Err(_) => None,
    }
}

struct Locate<'a> {
    path: &'a [String],
    occurrence: usize,
}

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        let mut seen = 0;
        loop {
            let seed = KeySeed {
                target: first,
                raise_at: rest.is_empty().then_some(self.occurrence),
                seen: &mut seen,
            };
            match map.next_key_seed(seed)? {
                None => return Ok(()),
                Some(true) => map.next_value_seed(Locate {
                    path: rest,
                    occurrence: self.occurrence,
                })?,
                Some(false) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
    }
}

/// Deserializes a mapping key; `true` if it is `target`. Fails (so the error carries the
/// key's location) at the `raise_at`-th match.
struct KeySeed<'a> {
    target: &'a str,
    raise_at: Option<usize>,
    seen: &'a mut usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        // The check must fail inside the visitor: only errors raised while the key's
        // scalar is being visited get the key's location.
        d.deserialize_any(self)
    }
}

impl KeySeed<'_> {
    fn check<E: de::Error>(self, key: &str) -> Result<bool, E> {
        if key != self.target {
            return Ok(false);
        }
        let n = *self.seen;
        *self.seen += 1;
        if self.raise_at == Some(n) {
            Err(E::custom(LOCATE_MARKER))
        } else {
            Ok(true)
        }
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        self.check(&Node::Bool(v).key_text().unwrap_or_default())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<bool, E> {
        self.check(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
        self.check(&Node::Float(v).key_text().unwrap_or_default())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        self.check(v)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        self.check(&Node::Null.key_text().unwrap_or_default())
    }
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        self.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

// ---------------------------------------------------------------------------------
// Validation failures, turned into `ConfigError` (with a line) at the end.

#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyPath(Vec<String>);

impl KeyPath {
    fn root() -> KeyPath {
        KeyPath(Vec::new())
    }
    fn child(&self, key: &str) -> KeyPath {
        let mut v = self.0.clone();
        v.push(key.to_string());
        KeyPath(v)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

#[derive(Debug)]
enum Fail {
    /// A problem with the key at `key`; the line is that of the `occurrence`-th
    /// appearance of `locate` (usually `key` itself).
    At {
        key: KeyPath,
        locate: KeyPath,
        occurrence: usize,
        message: String,
    },
    Env {
        var: &'static str,
        message: String,
    },
}

impl Fail {
    fn at(key: &KeyPath, message: impl Into<String>) -> Fail {
        Fail::At {
            key: key.clone(),
            locate: key.clone(),
            occurrence: 0,
            message: message.into(),
        }
    }

    fn into_error(self, text: &str, source: Option<&Path>) -> ConfigError {
        match self {
            Fail::At {
                key,
                locate,
                occurrence,
                message,
            } => ConfigError::Invalid {
                file: source.map(Path::to_path_buf),
                line: locate_line(text, &locate.0, occurrence),
                key: key.to_string(),
                message,
            },
            Fail::Env { var, message } => ConfigError::Env {
                var: var.to_string(),
                message,
            },
        }
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone)]
enum Origin {
    Key(KeyPath),
    Env(&'static str),
}

impl Origin {
    fn fail(&self, message: impl Into<String>) -> Fail {
        match self {
            Origin::Key(k) => Fail::at(k, message),
            Origin::Env(var) => Fail::Env {
                var,
                message: message.into(),
            },
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Key(k) => write!(f, "{k}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// A value set in the file or the environment, with its origin.
#[derive(Debug, Clone)]
struct Set<T> {
    value: T,
    origin: Origin,
}

// ---------------------------------------------------------------------------------
// Typed access to nodes.

/// A mapping with string keys, checked for duplicates and unknown keys.
struct Map<'a> {
    path: KeyPath,
    entries: Vec<(String, &'a Node)>,
}

impl<'a> Map<'a> {
    /// `node` as a mapping at `path`; `allowed` lists the accepted keys (`None`: any).
    fn new(
        node: &'a Node,
        path: &KeyPath,
        what: &str,
        allowed: Option<&[&str]>,
    ) -> Result<Map<'a>, Fail> {
        let Node::Map(raw) = node else {
            return Err(Fail::at(
                path,
                format!("expected {what}, found {}", node.describe(true)),
            ));
        };
        let mut entries: Vec<(String, &Node)> = Vec::with_capacity(raw.len());
        for (k, v) in raw {
            let Some(text) = k.key_text() else {
                return Err(Fail::at(path, "mapping keys must be plain names"));
            };
            let Node::Str(name) = k else {
                return Err(Fail::at(
                    &path.child(&text),
                    format!(
                        "key `{text}` must be a name (a string), not {}",
                        k.describe(false)
                    ),
                ));
            };
            let occurrence = entries.iter().filter(|(n, _)| n == name).count();
            if occurrence > 0 {
                let key = path.child(name);
                return Err(Fail::At {
                    locate: key.clone(),
                    key,
                    occurrence,
                    message: if path.0 == ["redis_databases"] {
                        format!(
                            "duplicate database name `{name}` (to give a database a second \
                             name, use another name with the same db)"
                        )
                    } else {
                        format!("duplicate key `{name}` (each key may appear only once)")
                    },
                });
            }
            if let Some(allowed) = allowed {
                if !allowed.contains(&name.as_str()) {
                    let mut message = format!("unknown key `{name}`");
                    if let Some(s) = suggest(name, allowed) {
                        message.push_str(&format!(" (did you mean `{s}`?)"));
                    }
                    return Err(Fail::at(&path.child(name), message));
                }
            }
            entries.push((name.clone(), v));
        }
        Ok(Map {
            path: path.clone(),
            entries,
        })
    }

    /// The value of `key`, if present and not null.
    fn get(&self, key: &str) -> Option<(KeyPath, &'a Node)> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .filter(|(_, v)| **v != Node::Null)
            .map(|(k, v)| (self.path.child(k), *v))
    }

    /// Whether `key` is present (even if null).
    fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k == key)
    }

    fn set<T>(
        &self,
        key: &str,
        parse: impl Fn(&KeyPath, &Node) -> Result<T, Fail>,
    ) -> Result<Option<Set<T>>, Fail> {
        match self.get(key) {
            None => Ok(None),
            Some((path, node)) => Ok(Some(Set {
                value: parse(&path, node)?,
                origin: Origin::Key(path),
            })),
        }
    }

    /// Either of two synonymous keys (an error if both are given).
    fn set_either<T>(
        &self,
        key: &str,
        synonym: &str,
        parse: impl Fn(&KeyPath, &Node) -> Result<T, Fail>,
    ) -> Result<Option<Set<T>>, Fail> {
        if self.get(key).is_some() && self.get(synonym).is_some() {
            return Err(Fail::at(
                &self.path.child(synonym),
                format!("`{synonym}` and `{key}` are synonyms; give only one"),
            ));
        }
        match self.set(key, &parse)? {
            Some(v) => Ok(Some(v)),
            None => self.set(synonym, &parse),
        }
    }
}

/// The allowed key closest to `name`, if it is a plausible typo.
fn suggest<'a>(name: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (edit_distance(name, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn type_error(path: &KeyPath, expected: &str, node: &Node) -> Fail {
    Fail::at(
        path,
        format!("expected {expected}, found {}", node.describe(true)),
    )
}

fn parse_uint(path: &KeyPath, node: &Node, min: u64, max: u64) -> Result<u64, Fail> {
    let Node::Int(i) = node else {
        return Err(type_error(path, "an integer", node));
    };
    match u64::try_from(*i) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        Ok(v) if v > max && max < u64::from(u32::MAX) => Err(Fail::at(
            path,
            format!("must be between {min} and {max}, got {i}"),
        )),
        Ok(v) if v > max => Err(Fail::at(
            path,
            format!("too large (at most {max}), got {i}"),
        )),
        _ => Err(Fail::at(path, format!("must be at least {min}, got {i}"))),
    }
}

fn parse_u32(min: u32) -> impl Fn(&KeyPath, &Node) -> Result<u32, Fail> {
    move |path, node| {
        let v = parse_uint(path, node, min.into(), u32::MAX.into())?;
        u32::try_from(v).map_err(|_| Fail::at(path, "value too large"))
    }
}

fn parse_usize(path: &KeyPath, node: &Node) -> Result<usize, Fail> {
    let v = parse_uint(path, node, 1, u64::MAX)?;
    usize::try_from(v).map_err(|_| Fail::at(path, "value too large"))
}

fn parse_port(path: &KeyPath, node: &Node) -> Result<u16, Fail> {
    let v = parse_uint(path, node, 1, u16::MAX.into())?;
    u16::try_from(v).map_err(|_| Fail::at(path, "value too large"))
}

fn parse_bool(path: &KeyPath, node: &Node) -> Result<bool, Fail> {
    match node {
        Node::Bool(b) => Ok(*b),
        _ => Err(type_error(path, "true or false", node)),
    }
}

fn parse_string(path: &KeyPath, node: &Node) -> Result<String, Fail> {
    match node {
        Node::Str(s) => Ok(s.clone()),
        _ => Err(type_error(path, "a string", node)),
    }
}

/// A list of command names (`[FLUSHALL, "config|set"]`), stored lower-case.
fn parse_command_list(path: &KeyPath, node: &Node) -> Result<Vec<String>, Fail> {
    let Node::Seq(items) = node else {
        return Err(type_error(path, "a list of command names", node));
    };
    items
        .iter()
        .map(|item| {
            let name = parse_string(path, item)?.trim().to_ascii_lowercase();
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '|' | '-' | '_'));
            if ok {
                Ok(name)
            } else {
                Err(Fail::at(
                    path,
                    format!("{name:?} is not a command name (e.g. FLUSHALL or \"config|set\")"),
                ))
            }
        })
        .collect()
}

fn parse_host(path: &KeyPath, node: &Node) -> Result<String, Fail> {
    let host = parse_string(path, node)?;
    let host = host.trim();
    if host.is_empty() {
        return Err(Fail::at(path, "host must not be empty"));
    }
    Ok(host.to_string())
}

/// A user name: a string (or integer); `""` means none.
fn parse_username(path: &KeyPath, node: &Node) -> Result<Option<String>, Fail> {
    match node {
        Node::Str(s) if s.is_empty() => Ok(None),
        Node::Str(s) => Ok(Some(s.clone())),
        Node::Int(i) => Ok(Some(i.to_string())),
        _ => Err(type_error(path, "a string", node)),
    }
}

/// A password: a string (or integer); `""` means none. Never echoes the value.
fn parse_secret(path: &KeyPath, node: &Node) -> Result<Option<Secret>, Fail> {
    match node {
        Node::Str(s) if s.is_empty() => Ok(None),
        Node::Str(s) => Ok(Some(Secret(s.clone()))),
        Node::Int(i) => Ok(Some(Secret(i.to_string()))),
        _ => Err(Fail::at(
            path,
            format!("expected a string, found {}", node.describe(false)),
        )),
    }
}

/// A user name or password, where an explicit `null` means "none" (not "inherit").
fn set_nullable<T>(
    map: &Map<'_>,
    key: &str,
    parse: impl Fn(&KeyPath, &Node) -> Result<Option<T>, Fail>,
) -> Result<Option<Set<Option<T>>>, Fail> {
    if !map.has(key) {
        return Ok(None);
    }
    match map.get(key) {
        None => Ok(Some(Set {
            value: None,
            origin: Origin::Key(map.path.child(key)),
        })),
        Some((path, node)) => Ok(Some(Set {
            value: parse(&path, node)?,
            origin: Origin::Key(path),
        })),
    }
}

fn parse_duration(path: &KeyPath, node: &Node, allow_zero: bool) -> Result<Duration, Fail> {
    let secs = match node {
        Node::Int(i) => *i as f64,
        Node::Float(f) => *f,
        _ => return Err(type_error(path, "a number of seconds", node)),
    };
    if !secs.is_finite() {
        return Err(Fail::at(path, "must be a finite number of seconds"));
    }
    if secs < 0.0 || (secs == 0.0 && !allow_zero) {
        let need = if allow_zero {
            "zero or more"
        } else {
            "more than zero"
        };
        return Err(Fail::at(
            path,
            format!("must be {need} seconds, got {secs}"),
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| Fail::at(path, "too many seconds"))
}

fn positive_secs(path: &KeyPath, node: &Node) -> Result<Duration, Fail> {
    parse_duration(path, node, false)
}

fn nonnegative_secs(path: &KeyPath, node: &Node) -> Result<Duration, Fail> {
    parse_duration(path, node, true)
}

fn parse_listen(path: &KeyPath, node: &Node) -> Result<SocketAddr, Fail> {
    let text = parse_string(path, node)?;
    text.trim().parse().map_err(|_| {
        Fail::at(
            path,
            format!("invalid listen address {text:?}: expected IP:port, e.g. \"127.0.0.1:6380\""),
        )
    })
}

fn parse_log_level(path: &KeyPath, node: &Node) -> Result<String, Fail> {
    let text = parse_string(path, node)?;
    let level = match text.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "critical" | "fatal" => "error",
        "off" | "none" => "off",
        _ => {
            return Err(Fail::at(
                path,
                format!(
                    "unknown log level {text:?}: expected trace, debug, info, warn, error or off"
                ),
            ))
        }
    };
    Ok(level.to_string())
}

fn parse_log_format(path: &KeyPath, node: &Node) -> Result<String, Fail> {
    let text = parse_string(path, node)?;
    match text.trim().to_ascii_lowercase().as_str() {
        "text" => Ok("text".into()),
        "json" => Ok("json".into()),
        _ => Err(Fail::at(
            path,
            format!("unknown log format {text:?}: expected text or json"),
        )),
    }
}

// ---------------------------------------------------------------------------------
// Settings that the top level provides as defaults and databases may override.

const UPSTREAM_KEYS: &[&str] = &[
    "deny_commands",
    "host",
    "port",
    "username",
    "password",
    "timeout",
    "connect_timeout",
    "command_timeout",
    "max_connections",
    "pool_size",
    "mux_connections",
    "retry_attempts",
    "retry_delay",
    "retry_base_delay",
    "retry_max_delay",
    "failure_threshold",
    "recovery_timeout",
    "success_threshold",
    "health_check_interval",
];

const TOP_ONLY_KEYS: &[&str] = &[
    "redis_databases",
    "listen",
    "metrics_listen",
    "client_password",
    "auth_passthrough",
    "log_commands",
    "log_level",
    "log_format",
    "max_clients",
    "shutdown_timeout",
    "limits",
    "upstream_databases",
    "default_database",
];

const DATABASE_ONLY_KEYS: &[&str] = &["db", "description", "upstream_db"];

const LIMIT_KEYS: &[&str] = &[
    "max_bulk_len",
    "max_args",
    "max_inline_len",
    "pubsub_buffer_limit",
];

/// One level's upstream settings (`None`: not set at this level).
#[derive(Debug, Clone, Default)]
struct Layer {
    host: Option<Set<String>>,
    port: Option<Set<u16>>,
    username: Option<Set<Option<String>>>,
    password: Option<Set<Option<Secret>>>,
    timeout: Option<Set<Duration>>,
    connect_timeout: Option<Set<Duration>>,
    command_timeout: Option<Set<Duration>>,
    pool_size: Option<Set<u32>>,
    mux_connections: Option<Set<u32>>,
    retry_attempts: Option<Set<u32>>,
    retry_base_delay: Option<Set<Duration>>,
    retry_max_delay: Option<Set<Duration>>,
    failure_threshold: Option<Set<u32>>,
    recovery_timeout: Option<Set<Duration>>,
    success_threshold: Option<Set<u32>>,
    health_check_interval: Option<Set<Duration>>,
    deny_commands: Option<Set<Vec<String>>>,
}

/// Applies `$m!(field)` to every field of `Layer`.
macro_rules! layer_fields {
    ($m:ident) => {
        $m!(host);
        $m!(port);
        $m!(username);
        $m!(password);
        $m!(timeout);
        $m!(connect_timeout);
        $m!(command_timeout);
        $m!(pool_size);
        $m!(mux_connections);
        $m!(retry_attempts);
        $m!(retry_base_delay);
        $m!(retry_max_delay);
        $m!(failure_threshold);
        $m!(recovery_timeout);
        $m!(success_threshold);
        $m!(health_check_interval);
        $m!(deny_commands);
    };
}

impl Layer {
    fn parse(map: &Map<'_>) -> Result<Layer, Fail> {
        Ok(Layer {
            host: map.set("host", parse_host)?,
            port: map.set("port", parse_port)?,
            username: set_nullable(map, "username", parse_username)?,
            password: set_nullable(map, "password", parse_secret)?,
            timeout: map.set("timeout", positive_secs)?,
            connect_timeout: map.set("connect_timeout", positive_secs)?,
            command_timeout: map.set("command_timeout", positive_secs)?,
            pool_size: map.set_either("max_connections", "pool_size", parse_u32(1))?,
            mux_connections: map.set("mux_connections", parse_u32(1))?,
            retry_attempts: map.set("retry_attempts", parse_u32(0))?,
            retry_base_delay: map.set_either(
                "retry_base_delay",
                "retry_delay",
                nonnegative_secs,
            )?,
            retry_max_delay: map.set("retry_max_delay", nonnegative_secs)?,
            failure_threshold: map.set("failure_threshold", parse_u32(1))?,
            recovery_timeout: map.set("recovery_timeout", positive_secs)?,
            success_threshold: map.set("success_threshold", parse_u32(1))?,
            health_check_interval: map.set("health_check_interval", positive_secs)?,
            deny_commands: map.set("deny_commands", parse_command_list)?,
        })
    }

    /// Folds an alias's settings into this one; both setting a key differently is an error.
    fn merge_alias(&mut self, other: Layer, primary: &str, index: u32) -> Result<(), Fail> {
        macro_rules! merge {
            ($field:ident) => {
                match (&self.$field, other.$field) {
                    (_, None) => {}
                    (None, Some(theirs)) => self.$field = Some(theirs),
                    (Some(ours), Some(theirs)) => {
                        if ours.value != theirs.value {
                            return Err(theirs.origin.fail(format!(
                                "conflicts with {}: names sharing db {index} are aliases of \
                                 `{primary}` and must agree on per-database settings",
                                ours.origin
                            )));
                        }
                    }
                }
            };
        }
        layer_fields!(merge);
        Ok(())
    }

    /// This layer with `fallback`'s settings filling the gaps.
    fn over(&self, fallback: &Layer) -> Layer {
        let mut out = self.clone();
        macro_rules! fill {
            ($field:ident) => {
                if out.$field.is_none() {
                    out.$field = fallback.$field.clone();
                }
            };
        }
        layer_fields!(fill);
        out
    }
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
    let db = match &group.upstream_db {
        Some(s) => s.clone(),
        None => Set {
            value: group.index,
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
    Ok(UpstreamConfig {
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
    })
}

/// Applies the environment overrides to the top-level layer; returns the overridden
/// `listen` and `client_password`.
#[allow(clippy::type_complexity)]
fn apply_env(
    top: &mut Layer,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Option<SocketAddr>, Option<Option<Secret>>), Fail> {
    if let Some(host) = env(ENV_HOST) {
        let host = host.trim();
        if host.is_empty() {
            return Err(Fail::Env {
                var: ENV_HOST,
                message: "must not be empty (unset it to use the file's host)".into(),
            });
        }
        top.host = Some(Set {
            value: host.to_string(),
            origin: Origin::Env(ENV_HOST),
        });
    }
    if let Some(port) = env(ENV_PORT) {
        let value = match port.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(Fail::Env {
                    var: ENV_PORT,
                    message: format!("expected a port number 1-65535, got {port:?}"),
                })
            }
        };
        top.port = Some(Set {
            value,
            origin: Origin::Env(ENV_PORT),
        });
    }
    if let Some(password) = env(ENV_PASSWORD) {
        top.password = Some(Set {
            value: (!password.is_empty()).then_some(Secret(password)),
            origin: Origin::Env(ENV_PASSWORD),
        });
    }
    let listen = match env(ENV_LISTEN) {
        None => None,
        Some(text) => Some(text.trim().parse::<SocketAddr>().map_err(|_| Fail::Env {
            var: ENV_LISTEN,
            message: format!(
                "invalid listen address {text:?}: expected IP:port, e.g. \"127.0.0.1:6380\""
            ),
        })?),
    };
    let client_password = env(ENV_CLIENT_PASSWORD).map(|p| (!p.is_empty()).then_some(Secret(p)));
    Ok((listen, client_password))
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

fn parse_config(
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

    let listen = match env_listen {
        Some(addr) => addr,
        None => top
            .set("listen", parse_listen)?
            .map_or(DEFAULT_LISTEN, |s| s.value),
    };
    let metrics_listen =
        match set_nullable(&top, "metrics_listen", |p, n| parse_listen(p, n).map(Some))? {
            None => Some(DEFAULT_METRICS_LISTEN),
            Some(s) => s.value,
        };
    let client_password = match env_client_password {
        Some(p) => p,
        None => set_nullable(&top, "client_password", parse_secret)?.and_then(|s| s.value),
    };
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
    databases.sort_by_key(|d| d.index);
    let default_database = resolve_default_database(&top, &dbs_path, &databases)?;

    Ok(Config {
        listen,
        metrics_listen,
        client_password,
        auth_passthrough,
        log_level,
        log_format,
        log_commands,
        limits,
        max_clients,
        shutdown_timeout,
        databases,
        default_database,
        source: source.map(Path::to_path_buf),
    })
}
